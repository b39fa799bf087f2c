//! Warm compilers: farmd keeps a family's compiler loaded in long-lived server
//! processes (javac's JVM today) and runs compiles there. The family
//! ([`farm::lang::WarmCompiler`]) supplies the server, how to build and start it with
//! an installation's own tools, and the byte protocol; this module owns the pools,
//! the sandbox, the limits and recycling. A server is built on first use into
//! `state_dir/jvm`, recycled after [`RECYCLE_AFTER_JOBS`] compiles or when its
//! memory stays over [`RECYCLE_MEMORY_FRACTION`] of its maximum, and dropped on any
//! protocol doubt.
//!
//! Servers that serve peers' tree jobs run in the job sandbox
//! (`crate::worker::sandbox`), one pool per submitting node: such a server sees the
//! toolchain, its own area under `state_dir/jobs` (`in/` read-only, where the worker
//! puts a job's inputs; `out/` and `tmp/` writable) and nothing else. Servers for this
//! machine's own shims (farmd's own user only, see the agent) read and write that
//! user's paths and are kept apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use farm::lang::{Family, WarmCompiler};
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::worker::sandbox::{Limits, Sandbox, View};

/// Compiles one server serves before it is replaced by a fresh one.
pub const RECYCLE_AFTER_JOBS: u32 = 500;
/// Memory in use after a compile, as a share of the maximum, that retires a server.
pub const RECYCLE_MEMORY_FRACTION: f64 = 0.7;

struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    jobs: u32,
    /// The sandboxed server's own directory (removed with it).
    area: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(a) = &self.area {
            let _ = std::fs::remove_dir_all(a);
        }
    }
}

/// Which servers are interchangeable: one family's, of one installation, serving this
/// machine's farmd user (`None`) or one submitting node.
type PoolKey = (&'static str, PathBuf, Option<String>);

/// A warm server taken from its pool for one compile; [`WarmPool::run_on`] runs it,
/// [`WarmPool::give_back`] returns it.
pub struct Lease {
    server: Server,
    warm: &'static dyn WarmCompiler,
    key: PoolKey,
    /// Past its compile count or memory share: stopped rather than pooled.
    retire: bool,
}

impl Lease {
    /// The sandboxed server's area: a job's inputs go under `in/`, outputs under `out/`.
    pub fn area(&self) -> Option<&Path> {
        self.server.area.as_deref()
    }
}

/// What one warm compile printed and returned: the same as a sandboxed process run.
pub use crate::worker::sandbox::Run as WarmRun;

pub struct WarmPool {
    /// Where servers are built, one directory per server source and installation.
    state_dir: PathBuf,
    /// Where sandboxed servers get their areas.
    jobs_dir: PathBuf,
    /// The sandbox and limits for servers that serve peers; `None`: this node serves
    /// none.
    sandbox: Option<(Sandbox, Limits)>,
    /// Idle servers by family, installation and submitter.
    idle: Mutex<HashMap<PoolKey, Vec<Server>>>,
    /// Servers in `idle`, all pools together (for the metrics, which cannot wait).
    idle_total: std::sync::atomic::AtomicUsize,
    /// Idle servers kept per pool.
    keep: usize,
    /// Serializes building servers.
    build: Mutex<()>,
}

impl WarmPool {
    /// Servers idle in the pool now.
    pub fn idle_count(&self) -> usize {
        self.idle_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(state_dir: &Path, keep: usize, sandbox: Option<(Sandbox, Limits)>) -> WarmPool {
        WarmPool {
            state_dir: state_dir.join("jvm"),
            jobs_dir: state_dir.join("jobs"),
            sandbox,
            idle: Mutex::new(HashMap::new()),
            idle_total: 0.into(),
            keep: keep.max(1),
            build: Mutex::new(()),
        }
    }

    /// The directory holding `warm`'s server built with `installation`'s tools.
    async fn built(&self, warm: &dyn WarmCompiler, installation: &Path) -> Result<PathBuf, String> {
        let mut h = blake3::Hasher::new();
        for (_, text) in warm.server_sources() {
            h.update(text.as_bytes());
        }
        h.update(installation.as_os_str().as_encoded_bytes());
        let dir = self
            .state_dir
            .join(farm::fsutil::hex(&h.finalize().as_bytes()[..12]));
        if dir.join(warm.server_built()).is_file() {
            return Ok(dir);
        }
        let _guard = self.build.lock().await;
        if dir.join(warm.server_built()).is_file() {
            return Ok(dir);
        }
        let tmp = dir.with_extension(format!("build-{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        for (name, text) in warm.server_sources() {
            let src = tmp.join(name);
            tokio::fs::write(&src, text)
                .await
                .map_err(|e| format!("{}: {e}", src.display()))?;
        }
        let cmd = warm.server_build(installation, &tmp, &tmp);
        let out = Command::new(&cmd.program)
            .args(&cmd.args)
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", cmd.program.display()))?;
        if !out.status.success() {
            return Err(format!(
                "building the warm compiler with {} failed: {}",
                cmd.program.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::rename(&tmp, &dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        tracing::info!(installation = %installation.display(), "built a warm compiler");
        Ok(dir)
    }

    async fn spawn(
        &self,
        warm: &dyn WarmCompiler,
        installation: &Path,
        submitter: Option<&str>,
    ) -> Result<Server, String> {
        let built = self.built(warm, installation).await?;
        let (mut cmd, program, area) = match (submitter, &self.sandbox) {
            (None, _) => {
                let c = warm.server_command(installation, &built, None);
                let mut cmd = Command::new(&c.program);
                cmd.args(&c.args)
                    .current_dir(&built)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("LC_ALL", "C.UTF-8")
                    .kill_on_drop(true);
                (cmd, c.program, None)
            }
            (Some(_), None) => return Err("no sandbox for peers' warm compilers".into()),
            (Some(_), Some((sandbox, limits))) => {
                static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = self
                    .jobs_dir
                    .join(format!("jvm-{}-{seq}", std::process::id()));
                for sub in ["in", "out", "tmp"] {
                    std::fs::create_dir_all(dir.join(sub))
                        .map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let tmp = dir.join("tmp");
                let c = warm.server_command(installation, &built, Some(&tmp));
                let tmp_s = tmp.to_string_lossy().into_owned();
                let view = View {
                    rw: &[&dir],
                    ro: &[&dir.join("in"), &built],
                    cwd: &dir.join("out"),
                    env: &[
                        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                        ("LC_ALL", "C.UTF-8"),
                        ("HOME", &tmp_s),
                        ("TMPDIR", &tmp_s),
                    ],
                    proc: true,
                };
                // One server runs many compiles: its CPU limit is theirs together
                // (each compile's own deadline is the wall-clock limit of `run_on`).
                let limits = Limits {
                    cpu: limits.cpu * RECYCLE_AFTER_JOBS,
                    ..*limits
                };
                let cmd = sandbox.command(&c.program, &c.args, &view, limits)?;
                (cmd, c.program, Some(dir))
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let stdin = child.stdin.take().ok_or("warm compiler without stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("warm compiler without stdout")?);
        let mut s = Server {
            child,
            stdin,
            stdout,
            jobs: 0,
            area,
        };
        tokio::time::timeout(Duration::from_secs(30), warm.ready(&mut s.stdout))
            .await
            .map_err(|_| "the warm compiler did not start in 30 s".to_string())?
            .map_err(|e| format!("the warm compiler did not start: {e}"))?;
        tracing::info!(installation = %installation.display(), pid = s.child.id(), "warm compiler started");
        Ok(s)
    }

    /// Runs one compile for this machine's farmd user in a warm server of `family`
    /// for `installation`.
    pub async fn run(
        &self,
        family: &'static dyn Family,
        installation: &Path,
        args: &[String],
        limit: Duration,
    ) -> Result<WarmRun, String> {
        let mut lease = self.lease(family, installation, None).await?;
        let run = self.run_on(&mut lease, args, limit).await?;
        self.give_back(lease).await;
        Ok(run)
    }

    /// An idle warm server of `family` for `installation` and `submitter` (a node
    /// name; `None` is this machine's farmd user), or a new one. A peer's server is
    /// sandboxed and serves only that peer's jobs.
    pub async fn lease(
        &self,
        family: &'static dyn Family,
        installation: &Path,
        submitter: Option<&str>,
    ) -> Result<Lease, String> {
        let Some(warm) = family.warm() else {
            return Err(format!("{} has no warm compiler", family.name()));
        };
        let key = (
            family.name(),
            installation.to_path_buf(),
            submitter.map(str::to_string),
        );
        let idle = {
            let mut pools = self.idle.lock().await;
            let server = pools.get_mut(&key).and_then(Vec::pop);
            self.count_idle(&pools);
            server
        };
        let server = match idle {
            Some(s) => s,
            None => self.spawn(warm, installation, submitter).await?,
        };
        Ok(Lease {
            server,
            warm,
            key,
            retire: false,
        })
    }

    /// Runs one compile on a leased server. On an error the lease must be dropped
    /// (that kills the server); otherwise [`WarmPool::give_back`] returns it to its
    /// pool.
    pub async fn run_on(
        &self,
        lease: &mut Lease,
        args: &[String],
        limit: Duration,
    ) -> Result<WarmRun, String> {
        let s = &mut lease.server;
        let t0 = Instant::now();
        let exchange = lease.warm.exchange(&mut s.stdin, &mut s.stdout, args);
        let reply = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("warm compiler: {e}")),
            Err(_) => return Err(format!("warm compiler ran past {} s", limit.as_secs())),
        };
        s.jobs += 1;
        let heavy = reply.memory_max > 0
            && reply.memory_used as f64 > RECYCLE_MEMORY_FRACTION * reply.memory_max as f64;
        if s.jobs >= RECYCLE_AFTER_JOBS || heavy {
            tracing::info!(
                jobs = s.jobs,
                memory_used = reply.memory_used,
                memory_max = reply.memory_max,
                "warm compiler recycled"
            );
            lease.retire = true;
        }
        Ok(WarmRun {
            exit_code: reply.exit_code,
            stdout: reply.stdout,
            stderr: reply.stderr,
            elapsed: t0.elapsed(),
        })
    }

    /// Returns a server to its pool after a compile (a retired one is stopped
    /// instead).
    pub async fn give_back(&self, lease: Lease) {
        if lease.retire {
            return;
        }
        let mut idle = self.idle.lock().await;
        // Idle servers in all pools are capped too: many submitters must not each
        // keep their own set. The other pools give up one first.
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= self.keep * 2 {
            let other = idle
                .iter_mut()
                .filter(|(k, v)| **k != lease.key && !v.is_empty())
                .max_by_key(|(_, v)| v.len())
                .map(|(k, _)| k.clone());
            match other.and_then(|k| idle.get_mut(&k)) {
                Some(v) => drop(v.remove(0)),
                None => {
                    self.count_idle(&idle);
                    return;
                }
            }
        }
        let list = idle.entry(lease.key).or_default();
        if list.len() < self.keep {
            list.push(lease.server);
        }
        self.count_idle(&idle);
    }

    fn count_idle(&self, pools: &HashMap<PoolKey, Vec<Server>>) {
        let n = pools.values().map(Vec::len).sum();
        self.idle_total
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}
