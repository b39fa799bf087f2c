//! A farm run as real Unix users, for the attack suite (tests/security_attacks.rs):
//! farmd as `farmsec-d`, shims as `farmsec-alice`/`farmsec-bob` (group `farmsec`, which
//! may use the agent socket) and `farmsec-eve` (not in it), a cluster member's raw peer
//! client, and raw agent-socket clients connected with a user's credentials.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use farm::protocol::{self, AgentRequest, AgentResponse, CompilerAd, PeerRequest, PeerResponse};

use super::farmd::{farmd_bin, free_port, run_ok};
pub use super::rawpeer::RawPeer;
use super::{farm_bin, farm_cc_bin};

pub const GROUP: &str = "farmsec";
pub const DAEMON: &str = "farmsec-d";
pub const ALICE: &str = "farmsec-alice";
pub const BOB: &str = "farmsec-bob";
pub const EVE: &str = "farmsec-eve";

/// The suite needs root (users, setpriv); without it each test says so and returns.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The attack tests run one at a time: they watch farmd's memory and the worker's
/// processes, which another test's jobs would blur.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[derive(Clone, Copy, Debug)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

pub fn ids(user: &str) -> Ids {
    let num = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, user]).output().unwrap();
        assert!(o.status.success(), "no user {user}");
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    Ids {
        uid: num("-u"),
        gid: num("-g"),
    }
}

pub fn group_gid(group: &str) -> u32 {
    let o = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    assert!(o.status.success(), "no group {group}");
    String::from_utf8_lossy(&o.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Creates (idempotently) the group and users, and installs bubblewrap if it is
/// missing (the worker's sandbox).
pub fn setup_users() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        run_ok(Command::new("groupadd").args(["--system", "-f", GROUP]));
        for (user, member) in [(DAEMON, true), (ALICE, true), (BOB, true), (EVE, false)] {
            if !quiet(Command::new("id").args(["-u", user])) {
                run_ok(Command::new("useradd").args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ]));
            }
            if member {
                run_ok(Command::new("usermod").args(["-a", "-G", GROUP, user]));
            } else {
                // Not in the group, whatever an earlier run did.
                quiet(Command::new("gpasswd").args(["-d", user, GROUP]));
            }
        }
        if which::which("bwrap").is_err() {
            let _ = quiet(Command::new("apt-get").args(["update", "-qq"]));
            run_ok(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "bubblewrap"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            );
        }
    });
}

fn chown_r(path: &Path, owner: &str) {
    run_ok(Command::new("chown").arg("-R").arg(owner).arg(path));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub struct SecNode {
    pub name: String,
    pub dir: PathBuf,
    pub sock_dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    pub farmd: PathBuf,
    pub child: Option<Child>,
}

impl SecNode {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn socket(&self) -> PathBuf {
        self.sock_dir.join("agent.sock")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.name))
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn log(&self) -> String {
        let a = fs::read_to_string(self.dir.join("farmd.stderr")).unwrap_or_default();
        let b = fs::read_to_string(self.dir.join("farmd.log")).unwrap_or_default();
        let tail = |s: &str| s.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        format!("stderr (newest first):\n{}\nlog:\n{}", tail(&a), tail(&b))
    }
    /// farmd as farmsec-d, in its own directory, with a clean environment.
    pub fn start(&mut self) {
        let log = fs::File::create(self.dir.join("farmd.stderr")).unwrap();
        let d = ids(DAEMON);
        self.child = Some(
            Command::new("setpriv")
                .arg(format!("--reuid={}", d.uid))
                .arg(format!("--regid={}", d.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(&self.farmd)
                .arg("--config")
                .arg(&self.config)
                .env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", &self.dir)
                .env("LC_ALL", "C.UTF-8")
                .current_dir(&self.dir)
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
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// `farm status --json` on this node's socket (as root).
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let o = Command::new(farm_bin())
            .args(["status", "--json"])
            .env("FARM_AGENT", self.socket())
            .env("FARM_CONFIG", "/nonexistent/farm.toml")
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }
    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|| panic!("farm status on {} failed; {}", self.name, self.log()))
    }
    pub fn live_peers(&self) -> Vec<String> {
        self.try_status()
            .map(|s| {
                s["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["live"].as_bool().unwrap_or(false))
                    .map(|p| p["node"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
    /// A line of /proc/PID/status, in kB (VmRSS, VmHWM).
    pub fn mem_kb(&self, field: &str) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for SecNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct SecFarm {
    pub root: tempfile::TempDir,
    pub bin: PathBuf,
    pub ca: PathBuf,
    pub nodes: Vec<SecNode>,
    /// A cluster member's certificate (the attacker's).
    pub member: PathBuf,
}

impl SecFarm {
    /// Nodes `node-1`…: every node but the first knows the first. `extra(i)` adds
    /// config lines to node i. Waits until every node sees every other.
    /// Every node allows only `compilers` (names on PATH): farmd hashes each at start.
    pub fn new(n: usize, compilers: &[&str], extra: impl Fn(usize) -> String) -> SecFarm {
        let t0 = Instant::now();
        setup_users();
        let root = tempfile::Builder::new()
            .prefix("farmsec")
            .tempdir()
            .unwrap();
        chmod(root.path(), 0o755);
        // The binaries the users run, where they can reach them.
        let bin = root.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        for b in [farm_bin(), farm_cc_bin(), farmd_bin()] {
            let dst = bin.join(b.file_name().unwrap());
            fs::copy(&b, &dst).unwrap();
            chmod(&dst, 0o755);
        }
        chmod(&bin, 0o755);
        let ca = root.path().join("ca");
        run_ok(Command::new(farm_bin()).args(["cluster", "init"]).arg(&ca));
        let member = root.path().join("member");
        run_ok(
            Command::new(farm_bin())
                .args(["cluster", "issue", "mallory", "--ca"])
                .arg(&ca)
                .arg("--out")
                .arg(&member),
        );
        let mut farm = SecFarm {
            root,
            bin,
            ca,
            nodes: Vec::new(),
            member,
        };
        let first = free_port();
        for i in 0..n {
            let port = if i == 0 { first } else { free_port() };
            let peers = if i == 0 {
                String::new()
            } else {
                format!("\"127.0.0.1:{first}\"")
            };
            let node = farm.make_node(
                &format!("node-{}", i + 1),
                port,
                &peers,
                &format!("{}\n{}", compilers_line(compilers), extra(i)),
            );
            farm.nodes.push(node);
        }
        eprintln!("set-up: files in {:?}", t0.elapsed());
        for node in &mut farm.nodes {
            node.start();
        }
        for i in 0..n {
            farm.wait_live(i, n - 1);
        }
        eprintln!("set-up: farm of {n} ready in {:?}", t0.elapsed());
        farm
    }

    /// A node's directory (farmsec-d, 0700: certificate, key, config, state) and its
    /// socket directory (farmsec-d:farmsec, 2750: the socket inherits the group).
    pub fn make_node(&self, name: &str, port: u16, peers: &str, extra: &str) -> SecNode {
        let dir = self.root.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        run_ok(
            Command::new(farm_bin())
                .args(["cluster", "issue", name, "--ca"])
                .arg(&self.ca)
                .arg("--out")
                .arg(&dir),
        );
        fs::copy(self.ca.join("ca.crt"), dir.join("ca.crt")).unwrap();
        let sock_dir = self.root.path().join(format!("{name}-sock"));
        fs::create_dir_all(&sock_dir).unwrap();
        let config = dir.join("farmd.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\npeers = [{peers}]\nca = \"ca.crt\"\n\
                 cert = \"{name}.crt\"\nkey = \"{name}.key\"\nsocket = \"{sock}/agent.sock\"\n\
                 socket_mode = \"0660\"\nstate_dir = \"state\"\nslots = 2\nlog = \"farmd.log\"\n\
                 idle_timeout_ms = 1500\nsame_host_jobs = true\n{extra}\n",
                sock = sock_dir.display(),
            ),
        )
        .unwrap();
        fs::create_dir_all(dir.join("state")).unwrap();
        chown_r(&dir, &format!("{DAEMON}:{DAEMON}"));
        chmod(&dir, 0o700);
        chmod(&dir.join("state"), 0o700);
        chown_r(&sock_dir, &format!("{DAEMON}:{GROUP}"));
        chmod(&sock_dir, 0o2750);
        SecNode {
            name: name.into(),
            dir,
            sock_dir,
            port,
            config,
            farmd: self.bin.join("farmd"),
            child: None,
        }
    }

    pub fn wait_live(&self, i: usize, want: usize) {
        let t0 = Instant::now();
        loop {
            let live = self.nodes[i].live_peers();
            if live.len() >= want {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "set-up: {} sees {live:?}, wanted {want} live peers; {}",
                self.nodes[i].name,
                self.nodes[i].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member's raw peer client, connected to node `i`.
    pub fn member_to(&self, i: usize) -> RawPeer {
        RawPeer::connect(
            &self.ca.join("ca.crt"),
            &self.member.join("mallory.crt"),
            &self.member.join("mallory.key"),
            &self.nodes[i].addr(),
        )
        .expect("the member's certificate is accepted")
    }

    /// A user's own directory (0700): home, cache, work.
    pub fn user_dir(&self, user: &str) -> PathBuf {
        let d = self.root.path().join("users").join(user);
        if !d.exists() {
            fs::create_dir_all(d.join("home")).unwrap();
            fs::create_dir_all(d.join("cache")).unwrap();
            fs::create_dir_all(d.join("work")).unwrap();
            chmod(&self.root.path().join("users"), 0o755);
            chown_r(&d, &format!("{user}:"));
            chmod(&d, 0o700);
        }
        d
    }

    /// A directory several users can write (a shared checkout).
    pub fn shared_dir(&self) -> PathBuf {
        let d = self.root.path().join("shared");
        fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o777);
        d
    }

    /// `program args` as `user` in `cwd`, with the user's own cache, home and agent.
    pub fn run_as(
        &self,
        user: &str,
        agent: &Path,
        cwd: &Path,
        program: &Path,
        args: &[&str],
    ) -> Output {
        let u = ids(user);
        let d = self.user_dir(user);
        Command::new("setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", d.join("home"))
            .env("LC_ALL", "C")
            .env("FARM_DIR", d.join("cache"))
            .env("FARM_CONFIG", "/nonexistent/farm.toml")
            .env("FARM_LOG", d.join("farm.log"))
            .env("FARM_MODE", "preprocessor")
            .env("FARM_CC", "gcc")
            .env("FARM_AGENT", agent)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `farm-cc ARGS` as `user`, asserting the build succeeded.
    pub fn cc_as(&self, user: &str, agent: &Path, cwd: &Path, args: &[&str]) -> Output {
        let o = self.run_as(user, agent, cwd, &self.bin.join("farm-cc"), args);
        assert!(
            o.status.success(),
            "{user}'s farm-cc {args:?} failed (a user build must still succeed): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// `farm stats --json` of a user's own cache.
    pub fn stats_of(&self, user: &str) -> serde_json::Value {
        let d = self.user_dir(user);
        let o = self.run_as(
            user,
            Path::new("off"),
            &d,
            &self.bin.join("farm"),
            &["stats", "--json"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// farmd still serves: status answers on every node, a member's ordinary job runs
    /// on node `worker`, and alice's build through node-1 gives plain gcc's object.
    pub fn assert_still_serving(&mut self, worker: usize, after: &str) {
        for n in &mut self.nodes {
            assert!(
                n.alive(),
                "farmd {} died after {after}; {}",
                n.name,
                n.log()
            );
            assert!(
                n.try_status().is_some(),
                "farmd {} stopped answering `farm status` after {after}; {}",
                n.name,
                n.log()
            );
        }
        let peer = self.member_to(worker);
        match peer.ask(&gcc_job(&["-O2"], b"int answer(void) { return 42; }\n")) {
            Ok(PeerResponse::Done(r)) => {
                assert_eq!(r.exit_code, 0, "ordinary job after {after}: {r:?}");
                assert!(super::rawpeer::job_output(&r).starts_with(b"\x7fELF"));
            }
            other => panic!(
                "an ordinary job no longer runs on {} after {after}: {other:?}",
                self.nodes[worker].name
            ),
        }
        let work = self.user_dir(ALICE).join("work");
        let src = work.join("still.c");
        fs::write(
            &src,
            format!(
                "int still_{}(int x) {{ return x + 7; }}\n",
                std::process::id()
            ),
        )
        .unwrap();
        run_ok(Command::new("chown").arg(format!("{ALICE}:")).arg(&src));
        super::set_mtime(&src, 1_600_000_000);
        let plain_o = self.root.path().join("still-plain.o");
        let o = Command::new("gcc")
            .args(["-O2", "-c", "still.c", "-o"])
            .arg(&plain_o)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let agent = self.nodes[0].socket();
        self.cc_as(
            ALICE,
            &agent,
            &work,
            &["-O2", "-c", "still.c", "-o", "still.o"],
        );
        assert!(
            fs::read(work.join("still.o")).unwrap() == fs::read(&plain_o).unwrap(),
            "after {after}: alice's build through the farm differs from plain gcc's"
        );
        let _ = fs::remove_file(work.join("still.o"));
    }
}

/// A `compilers = [...]` line with the full paths of these compilers.
pub fn compilers_line(names: &[&str]) -> String {
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("{:?}", which::which(n).unwrap().display().to_string()))
        .collect();
    format!("compilers = [{}]", paths.join(", "))
}

impl Drop for SecFarm {
    /// farmd stops before its directories go.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

/// The identity of a compiler as a worker computes it.
pub fn ad(name: &str) -> CompilerAd {
    let path = fs::canonicalize(which::which(name).unwrap()).unwrap();
    let family = farm::lang::family_for(name).unwrap();
    let memo = tempfile::tempdir().unwrap();
    CompilerAd {
        name: name.into(),
        identity: farm::key::compiler_identity(&path, &family.identity_probe(&path), memo.path())
            .unwrap(),
    }
}

pub fn gcc_job(args: &[&str], source: &[u8]) -> PeerRequest {
    compile_job("gcc", "cpp-output", args, source)
}

pub fn compile_job(compiler: &str, lang: &str, args: &[&str], source: &[u8]) -> PeerRequest {
    static ADS: std::sync::Mutex<Vec<CompilerAd>> = std::sync::Mutex::new(Vec::new());
    let ad = {
        let mut ads = ADS.lock().unwrap();
        match ads.iter().find(|a| a.name == compiler) {
            Some(a) => a.clone(),
            None => {
                let a = ad(compiler);
                ads.push(a.clone());
                a
            }
        }
    };
    let (input, outputs) = super::rawpeer::job_files(lang);
    PeerRequest::Job(protocol::Job {
        family: "gcc".into(),
        compiler: ad,
        input,
        args: args.iter().map(|s| s.to_string()).collect(),
        source: source.to_vec(),
        outputs,
    })
}

/// Connects to a Unix socket with `user`'s credentials (uid, gid and supplementary
/// groups as `--init-groups` gives them), as that user's process would: the
/// credentials are changed on a throw-away thread only (raw syscalls act on the
/// calling thread), and the kernel records them on the connection (SO_PEERCRED).
pub fn connect_as(socket: &Path, user: &str) -> io::Result<UnixStream> {
    let u = ids(user);
    let o = Command::new("id").args(["-G", user]).output().unwrap();
    let groups: Vec<libc::gid_t> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: raw credential syscalls on this thread only; it exits right after.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, u.gid, u.gid, u.gid) != 0
                || libc::syscall(libc::SYS_setresuid, u.uid, u.uid, u.uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        UnixStream::connect(&socket)
    })
    .join()
    .unwrap()
}

/// One request on an agent connection.
pub fn agent_ask(s: &mut UnixStream, req: &AgentRequest) -> Result<AgentResponse, String> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    protocol::write_sync(s, req).map_err(|e| e.to_string())?;
    protocol::read_sync(s, protocol::MAX_FRAME).map_err(|e| e.to_string())
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The lines of a secret worth looking for in what a job returns (a PEM body).
pub fn secret_lines(secret: &[u8]) -> Vec<Vec<u8>> {
    String::from_utf8_lossy(secret)
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// How many of the secret's lines show in `what`, ignoring ASCII case (the
/// assembler lower-cases what it takes for a mnemonic when it quotes a line).
pub fn leaks(what: &[u8], secret: &[Vec<u8>]) -> usize {
    let what = what.to_ascii_lowercase();
    secret
        .iter()
        .filter(|l| contains(&what, &l.to_ascii_lowercase()))
        .count()
}

/// Processes named `comm` whose working directory is under `under`.
pub fn procs_under(comm: &str, under: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let c = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if c.trim() != comm {
            continue;
        }
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if cwd.starts_with(under) {
            out.push(pid);
        }
    }
    out
}

/// Kills processes this suite caused (by pid).
pub fn kill_pids(pids: &[u32]) {
    for p in pids {
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(*p as i32, libc::SIGKILL);
        }
    }
}
