//! Real farmd processes for the tests: a cluster CA, one certificate, config, state
//! directory and agent socket per node, on loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::farm_bin;

/// farmd is another package's binary: `cargo test` does not build it, so the tests
/// do, once (a no-op when it is current; never a stale binary).
pub fn farmd_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cargo = Command::new(env!("CARGO"));
            // What `cargo test` sets for this test binary (CARGO_MANIFEST_DIR,
            // CARGO_PKG_*) is also what build scripts (ring's) watch with
            // rerun-if-env-changed: inherited, it rebuilds them on every run.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy().into_owned();
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || k.starts_with("CARGO_CRATE_")
                    || k.starts_with("CARGO_BIN_")
                    || k == "CARGO_PRIMARY_PACKAGE"
                    || k == "CARGO_TARGET_TMPDIR"
                    || k == "OUT_DIR"
                {
                    cargo.env_remove(k);
                }
            }
            let o = cargo
                .args(["build", "-p", "farmd"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            farm_bin().with_file_name("farmd")
        })
        .clone()
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn farm(args: &[&str], agent: &Path) -> std::process::Output {
    Command::new(farm_bin())
        .args(args)
        .env("FARM_AGENT", agent)
        .env("FARM_CONFIG", "/nonexistent/farm.toml")
        .output()
        .unwrap()
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn status(&self) -> serde_json::Value {
        let o = farm(&["status", "--json"], &self.socket());
        assert!(
            o.status.success(),
            "farm status: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let o = farm(&["status", "--json"], &self.socket());
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }
    pub fn live_peers(&self) -> Vec<String> {
        self.try_status()
            .map(|s| {
                s["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["live"].as_bool().unwrap())
                    .map(|p| p["node"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn start(&mut self) {
        let log = fs::File::create(self.dir.join("farmd.stderr")).unwrap();
        self.child = Some(
            Command::new(farmd_bin())
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn rss_kb(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub ca: PathBuf,
    pub nodes: Vec<Node>,
}

pub fn run_ok(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Cluster {
    /// `names.len()` nodes; every node but the first knows only the first (the rest is
    /// learned by gossip). `extra(i)` adds config lines to node i.
    pub fn new(names: &[&str], extra: impl Fn(usize) -> String) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("farm-cluster")
            .tempdir()
            .unwrap();
        let ca = root.path().join("ca");
        run_ok(Command::new(farm_bin()).args(["cluster", "init"]).arg(&ca));
        let mut nodes: Vec<Node> = Vec::new();
        let first_port = free_port();
        for (i, name) in names.iter().enumerate() {
            let dir = root.path().join(name);
            fs::create_dir_all(&dir).unwrap();
            run_ok(
                Command::new(farm_bin())
                    .args(["cluster", "issue", name, "--ca"])
                    .arg(&ca)
                    .arg("--out")
                    .arg(&dir),
            );
            let port = if i == 0 { first_port } else { free_port() };
            let peers = if i == 0 {
                String::new()
            } else {
                format!("\"127.0.0.1:{first_port}\"")
            };
            let config = dir.join("farmd.toml");
            fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\npeers = [{peers}]\nca = \"{ca}/ca.crt\"\n\
                     cert = \"{name}.crt\"\nkey = \"{name}.key\"\nsocket = \"agent.sock\"\n\
                     state_dir = \"state\"\nslots = 2\nlog = \"farmd.log\"\n\
                     idle_timeout_ms = 1500\nsame_host_jobs = true\n{}\n",
                    extra(i),
                    ca = ca.display(),
                ),
            )
            .unwrap();
            nodes.push(Node {
                name: name.to_string(),
                dir,
                port,
                config,
                child: None,
            });
        }
        for n in &mut nodes {
            n.start();
        }
        Cluster { root, ca, nodes }
    }

    /// Two nodes that see each other; home (node 0) offers no CPUs of its own, so every
    /// miss its shims place goes to the peer.
    pub fn home_and_peer() -> Cluster {
        let c = Cluster::new(&["home", "peer"], |i| {
            if i == 0 {
                "local_slots = 0".into()
            } else {
                String::new()
            }
        });
        c.wait_all();
        c
    }

    /// Waits until node `i` sees `want` live peers.
    pub fn wait_live(&self, i: usize, want: usize) {
        let t0 = Instant::now();
        loop {
            let live = self.nodes[i].live_peers();
            if live.len() == want {
                return;
            }
            // Generous: on a loaded two-core CI machine a farmd's start (its compilers'
            // identities and packages, hashed cold) can take a while.
            assert!(
                t0.elapsed() < Duration::from_secs(40),
                "node {} sees {live:?}, wanted {want} live peers; log:\n{}\nstderr:\n{}",
                self.nodes[i].name,
                fs::read_to_string(self.nodes[i].dir.join("farmd.log")).unwrap_or_default(),
                fs::read_to_string(self.nodes[i].dir.join("farmd.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_all(&self) {
        for i in 0..self.nodes.len() {
            self.wait_live(i, self.nodes.len() - 1);
        }
    }
}
