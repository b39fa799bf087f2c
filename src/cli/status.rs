//! `farm status [--json] [--watch]`: the farm as this machine's farmd sees it.

use std::io::Write;
use std::time::Duration;

use super::{err, out};
use crate::agent_client::AgentClient;
use crate::config::Config;
use crate::protocol::{AgentRequest, AgentResponse, StatusReport};

pub(super) fn fetch_status(cfg: &Config) -> Result<StatusReport, String> {
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
    if let Some(h) = &s.http {
        t.pop();
        t.push_str(&format!(
            "  monitor: {} | metrics: {} | health: {}, {}\n\n",
            h.monitor, h.metrics, h.healthz, h.readyz
        ));
    }
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
            // A worker's words: no terminal control sequences reach the screen.
            let f: String = f
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            t.push_str(&format!("  recent failure on {}: {f}\n", p.node));
        }
    }
    t
}

/// `farm status [--json] [--watch]`: the farm as this machine's farmd sees it.
pub(super) fn run(json: bool, watch: bool) -> i32 {
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
