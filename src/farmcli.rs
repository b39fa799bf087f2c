//! `farm cluster …` and `farm status`: the farm commands people run by hand.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent_client::AgentClient;
use crate::config::Config;
use crate::protocol::{AgentRequest, AgentResponse, StatusReport};

fn err(msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "farm: {msg}");
    2
}

fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Value of `--flag VALUE` in `rest`, removing both.
fn take_opt(rest: &mut Vec<String>, flag: &str) -> Result<Option<String>, i32> {
    match rest.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) if i + 1 < rest.len() => {
            let v = rest.remove(i + 1);
            rest.remove(i);
            Ok(Some(v))
        }
        Some(_) => Err(err(format!("{flag} needs a value"))),
    }
}

pub const CLUSTER_HELP: &str = "\
farm cluster init DIR [--name CLUSTER]
    make a cluster CA in DIR (ca.crt, and ca.key readable by you only)
farm cluster issue NAME [--ca DIR] [--out DIR]
    make NAME.crt and NAME.key (0600) for one node, signed by the CA in DIR
    (default: $FARM_CLUSTER_DIR, else the current directory); written to --out
    (default: the CA directory)
";

pub fn cluster(rest: &[String]) -> i32 {
    let mut rest = rest.to_vec();
    let sub = if rest.is_empty() {
        String::new()
    } else {
        rest.remove(0)
    };
    match sub.as_str() {
        "init" => {
            let name = match take_opt(&mut rest, "--name") {
                Ok(n) => n.unwrap_or_else(|| "farm".into()),
                Err(c) => return c,
            };
            let [dir] = rest.as_slice() else {
                return err(format!("usage:\n{CLUSTER_HELP}"));
            };
            match crate::net::cluster_init(&PathBuf::from(dir), &name) {
                Ok(()) => {
                    out(&format!(
                        "cluster CA written to {dir}/{} and {dir}/{} (keep ca.key private)\n",
                        crate::net::CA_CERT,
                        crate::net::CA_KEY
                    ));
                    0
                }
                Err(e) => err(format!("cluster init: {e}")),
            }
        }
        "issue" => {
            let ca = match take_opt(&mut rest, "--ca") {
                Ok(c) => c
                    .or_else(|| std::env::var("FARM_CLUSTER_DIR").ok())
                    .unwrap_or_else(|| ".".into()),
                Err(c) => return c,
            };
            let out_dir = match take_opt(&mut rest, "--out") {
                Ok(o) => o.unwrap_or_else(|| ca.clone()),
                Err(c) => return c,
            };
            let [name] = rest.as_slice() else {
                return err(format!("usage:\n{CLUSTER_HELP}"));
            };
            match crate::net::cluster_issue(&PathBuf::from(&ca), name, &PathBuf::from(&out_dir)) {
                Ok((crt, key)) => {
                    out(&format!(
                        "node {name}: {} and {}\n",
                        crt.display(),
                        key.display()
                    ));
                    0
                }
                Err(e) => err(format!("cluster issue: {e}")),
            }
        }
        "" | "help" | "--help" => {
            out(CLUSTER_HELP);
            0
        }
        other => err(format!(
            "cluster: unknown subcommand `{other}`\n{CLUSTER_HELP}"
        )),
    }
}

fn fetch_status(cfg: &Config) -> Result<StatusReport, String> {
    let Some(sock) = &cfg.agent.value else {
        return Err(
            "the agent is off (config `agent`/FARM_AGENT): farm works as a local cache".into(),
        );
    };
    let mut c = AgentClient::connect(sock).map_err(|e| {
        format!(
            "no farmd agent at {} ({e}): farm works as a local cache",
            sock.display()
        )
    })?;
    match c.call(&AgentRequest::Status) {
        Ok(AgentResponse::Status(s)) => Ok(*s),
        Ok(_) => Err(format!(
            "agent at {} answered something else",
            sock.display()
        )),
        Err(e) => Err(format!("agent at {}: {e}", sock.display())),
    }
}

fn render(s: &StatusReport) -> String {
    let mut t = format!(
        "farm status: node {} ({}), protocol {}, up {} s\n",
        s.node, s.addr, s.version, s.uptime_s
    );
    t.push_str(&format!(
        "  home: {} local slots, {} running | worker: {} slots, {} free, {} jobs served, {} refused | store: {} entries\n\n",
        s.local_slots, s.local_running, s.slots, s.free, s.jobs_served, s.jobs_refused, s.store_entries
    ));
    t.push_str(&format!(
        "  {:<14} {:<22} {:<5} {:>5} {:>5} {:>5} {:>6} {:>9} {:>9} {:>8} {:>9}  {}\n",
        "PEER",
        "ADDRESS",
        "LIVE",
        "SLOTS",
        "FREE",
        "QUEUE",
        "LOAD",
        "FREE MEM",
        "RTT",
        "EST",
        "OK/FAIL",
        "COMPILERS"
    ));
    for p in &s.peers {
        let mut comps = p.compilers.clone();
        comps.sort();
        comps.dedup();
        let shown = if comps.len() > 4 {
            format!("{} +{}", comps[..4].join(","), comps.len() - 4)
        } else {
            comps.join(",")
        };
        t.push_str(&format!(
            "  {:<14} {:<22} {:<5} {:>5} {:>5} {:>5} {:>6.2} {:>6} MB {:>6.1} ms {:>5} ms {:>9}  {}\n",
            p.node,
            p.addr,
            if p.live { "yes" } else { "no" },
            p.slots,
            p.free,
            p.queue,
            p.load_milli as f64 / 1000.0,
            p.free_mem_mb,
            p.rtt_us as f64 / 1000.0,
            // Not measured yet: placement will send it one job to find out.
            if p.est_ms == 0 {
                "-".to_string()
            } else {
                p.est_ms.to_string()
            },
            format!("{}/{}", p.jobs_ok, p.jobs_failed),
            shown
        ));
    }
    if s.peers.is_empty() {
        t.push_str("  (no peers: configure `peers` in farmd's config)\n");
    }
    for p in &s.peers {
        for f in &p.recent_failures {
            t.push_str(&format!("  recent failure on {}: {f}\n", p.node));
        }
    }
    t
}

pub fn status(rest: &[String]) -> i32 {
    for a in rest {
        if !matches!(a.as_str(), "--json" | "--watch" | "-w") {
            return err(format!("status: unknown argument `{a}`"));
        }
    }
    let json = rest.iter().any(|a| a == "--json");
    let watch = rest.iter().any(|a| a == "--watch" || a == "-w");
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    loop {
        let s = match fetch_status(&cfg) {
            Ok(s) => s,
            Err(e) => {
                if watch {
                    out(&format!("\x1b[H\x1b[2Jfarm status: {e}\n"));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                let _ = writeln!(std::io::stderr(), "farm status: {e}");
                return 1;
            }
        };
        let text = if json {
            format!("{}\n", serde_json::to_string_pretty(&s).expect("json"))
        } else {
            render(&s)
        };
        if !watch {
            out(&text);
            return 0;
        }
        // Redraw in place, like top.
        out(&format!("\x1b[H\x1b[2J{text}"));
        std::thread::sleep(Duration::from_secs(1));
    }
}
