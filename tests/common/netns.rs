//! Real farmd processes, each in its own network namespace on a private subnet with a
//! round-trip delay between them (scripts/netns.sh sets the namespaces up: netem where
//! the kernel has it, else a delaying user-space switch). Node 0 is the client's home:
//! the shim runs in its namespace and uses its agent socket. Namespaces, links and
//! processes go away on drop, also when a test fails. Needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::farm_bin;
use super::farmd::{farmd_bin, run_ok, Node};
use super::{require, Env};

fn netns_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/netns.sh")
}

/// The namespaces of one run; `netns.sh down` on drop.
pub struct Netns {
    dir: PathBuf,
    pub names: Vec<String>,
    pub ips: Vec<String>,
    /// `netem` or `switch`: which mechanism adds the delay.
    pub delay: String,
    /// Median UDP round trip from node 0 to node 1, measured after setup.
    pub rtt_ms: f64,
}

impl Netns {
    /// `n` namespaces with `rtt_ms` between any two; their names carry this process's
    /// id and a counter, so tests running in parallel do not collide.
    pub fn up(dir: &Path, n: usize, rtt_ms: f64) -> Netns {
        Netns::up_lossy(dir, n, rtt_ms, 0.0)
    }

    /// As [`Netns::up`], with `loss_pct` of the frames dropped each way.
    pub fn up_lossy(dir: &Path, n: usize, rtt_ms: f64, loss_pct: f64) -> Netns {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        require("ip");
        require("python3");
        assert!(
            is_root(),
            "network namespaces need root (run the farm_netns tests as root)"
        );
        let prefix = format!(
            "fn{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Netns {
            dir: dir.to_path_buf(),
            names: Vec::new(),
            ips: Vec::new(),
            delay: String::new(),
            rtt_ms: f64::NAN,
        };
        // `net` exists before the script runs: a half-finished setup is removed too.
        let o = Command::new("bash")
            .arg(netns_script())
            .arg("up")
            .arg(dir)
            .arg(n.to_string())
            .arg(rtt_ms.to_string())
            .arg(&prefix)
            .arg(loss_pct.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "netns.sh up: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let env = fs::read_to_string(dir.join("netns.env")).unwrap();
        for line in env.lines() {
            let (k, v) = line.split_once('=').unwrap();
            let v = v.trim_matches('"');
            match k {
                "NETNS_NODES" => net.names = v.split(' ').map(String::from).collect(),
                "NETNS_IPS" => net.ips = v.split(' ').map(String::from).collect(),
                "NETNS_DELAY" => net.delay = v.to_string(),
                "NETNS_RTT_MS" => net.rtt_ms = v.parse().unwrap_or(f64::NAN),
                _ => {}
            }
        }
        assert_eq!(net.names.len(), n, "{env}");
        net
    }

    /// `program` run inside namespace `i` (`ip netns exec` execs it: same pid).
    pub fn cmd_in(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }

    /// `netns.sh ARGS` on these namespaces, asserting success; its stdout.
    fn script(&self, args: &[&str]) -> String {
        let o = Command::new("bash")
            .arg(netns_script())
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "netns.sh {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Cuts node `i` off: every frame to or from it is dropped from now on (silence,
    /// not errors, as when a cable is pulled).
    pub fn cut(&self, i: usize) {
        self.script(&["cut", &i.to_string()]);
    }

    /// Reconnects node `i`.
    pub fn heal(&self, i: usize) {
        self.script(&["heal", &i.to_string()]);
    }

    /// What the user-space switch delivered and dropped so far (`delivered`,
    /// `dropped_cut`, `dropped_loss`); empty under netem, which counts nothing.
    pub fn switch_stats(&self) -> std::collections::BTreeMap<String, f64> {
        self.script(&["stats"])
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(netns_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

fn is_root() -> bool {
    // No libc call needed: /proc/self/status names the effective uid.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// farmd nodes in namespaces. Fields drop in order: farmd first, then the namespaces,
/// then the directory.
pub struct NetnsCluster {
    pub nodes: Vec<Node>,
    pub net: Netns,
    pub ca: PathBuf,
    pub root: tempfile::TempDir,
}

pub const FARMD_PORT: u16 = 7700;

impl NetnsCluster {
    /// One node per name, node i in namespace i; every node but the first knows only
    /// the first (the rest is learned by gossip). `extra(i)` adds config lines to node i.
    pub fn new(names: &[&str], rtt_ms: f64, extra: impl Fn(usize) -> String) -> NetnsCluster {
        NetnsCluster::with(names, rtt_ms, 0.0, extra, |_, _| Vec::new())
    }

    /// As [`NetnsCluster::new`], with `loss_pct` of the frames lost each way, and node
    /// i's farmd started as `ip netns exec NS <launch(i, node dir)…> farmd --config …`
    /// (a wrapper that execs it: `env`, `sh -c '…; exec "$@"'`), so the node's pid is
    /// still farmd's.
    pub fn with(
        names: &[&str],
        rtt_ms: f64,
        loss_pct: f64,
        extra: impl Fn(usize) -> String,
        launch: impl Fn(usize, &Path) -> Vec<std::ffi::OsString>,
    ) -> NetnsCluster {
        let root = tempfile::Builder::new()
            .prefix("farm-netns")
            .tempdir()
            .unwrap();
        let net = Netns::up_lossy(root.path(), names.len(), rtt_ms, loss_pct);
        let ca = root.path().join("ca");
        run_ok(Command::new(farm_bin()).args(["cluster", "init"]).arg(&ca));
        let mut cl = NetnsCluster {
            nodes: Vec::new(),
            net,
            ca,
            root,
        };
        for (i, name) in names.iter().enumerate() {
            let dir = cl.root.path().join(name);
            fs::create_dir_all(&dir).unwrap();
            run_ok(
                Command::new(farm_bin())
                    .args(["cluster", "issue", name, "--ca"])
                    .arg(&cl.ca)
                    .arg("--out")
                    .arg(&dir),
            );
            let peers = if i == 0 {
                String::new()
            } else {
                format!("\"{}:{FARMD_PORT}\"", cl.net.ips[0])
            };
            let config = dir.join("farmd.toml");
            // The peers share this machine's CPUs (one boot id): same_host_jobs lets
            // them take jobs anyway.
            fs::write(
                &config,
                format!(
                    "listen = \"{ip}:{FARMD_PORT}\"\npeers = [{peers}]\nca = \"{ca}/ca.crt\"\n\
                     cert = \"{name}.crt\"\nkey = \"{name}.key\"\nsocket = \"agent.sock\"\n\
                     state_dir = \"state\"\nslots = 2\nlog = \"farmd.log\"\n\
                     idle_timeout_ms = 1500\nsame_host_jobs = true\n{}\n",
                    extra(i),
                    ip = cl.net.ips[i],
                    ca = cl.ca.display(),
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join("farmd.stderr")).unwrap();
            let wrapper = launch(i, &dir);
            let mut cmd = match wrapper.split_first() {
                Some((first, rest)) => {
                    let mut c = cl.net.cmd_in(i, first);
                    c.args(rest).arg(farmd_bin());
                    c
                }
                None => cl.net.cmd_in(i, farmd_bin()),
            };
            let child = cmd
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            cl.nodes.push(Node {
                name: name.to_string(),
                dir,
                port: FARMD_PORT,
                config,
                child: Some(child),
            });
        }
        cl
    }

    /// Waits until every node sees every other one live.
    pub fn wait_all(&self) {
        let want = self.nodes.len() - 1;
        for n in &self.nodes {
            let t0 = Instant::now();
            loop {
                let live = n.live_peers();
                if live.len() == want {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "node {} sees {live:?}, wanted {want} live peers; log:\n{}",
                    n.name,
                    fs::read_to_string(n.dir.join("farmd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Node `i`'s Prometheus metrics, fetched inside its namespace (farmd serves them on
    /// its loopback, TCP port [`FARMD_PORT`]).
    pub fn metrics(&self, i: usize) -> String {
        let o = self
            .net
            .cmd_in(i, "curl")
            .args(["-sSf", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{FARMD_PORT}/metrics"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "metrics of node {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `program` in the client's (node 0's) namespace, with the test's farm environment
    /// and node 0's agent socket.
    pub fn client_cmd(&self, env: &Env, program: &str) -> Command {
        let mut c = env.cmd("ip");
        c.args(["netns", "exec", &self.net.names[0], program])
            .env("FARM_AGENT", self.nodes[0].socket());
        c
    }
}
