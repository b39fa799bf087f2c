//! Warm javac JVMs: farmd keeps javac loaded and JIT-compiled in helper processes
//! (daemon/java/FarmJavacHelper.java, built with the JDK it serves on first use) and
//! runs its own machine's javac misses there. Each compile gets a fresh compiler
//! context and file manager (javax.tools' `Tool.run`); a helper is recycled after
//! [`RECYCLE_AFTER_JOBS`] compiles or when its heap stays over
//! [`RECYCLE_HEAP_FRACTION`] of its maximum, and dropped on any protocol doubt.
//!
//! JVMs that serve peers' tree jobs run in the job sandbox (`crate::sandbox`), one
//! pool per submitting node: such a JVM sees the toolchain, its own area under
//! `state_dir/jobs` (`in/` read-only, where the worker puts a job's inputs; `out/` and
//! `tmp/` writable) and nothing else. JVMs for this machine's own shims (farmd's own
//! user only, see the agent) read and write that user's paths and are kept apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

const HELPER_SOURCE: &str = include_str!("../java/FarmJavacHelper.java");
const HELLO: u32 = 0x4652_4D31;
/// Compiles one JVM serves before it is replaced by a fresh one.
pub const RECYCLE_AFTER_JOBS: u32 = 500;
/// Heap in use after a compile, as a share of the maximum, that retires a JVM.
pub const RECYCLE_HEAP_FRACTION: f64 = 0.7;
/// Largest stdout or stderr a helper may report (the rest is a protocol error).
const MAX_STREAM: usize = 16 << 20;

struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    jobs: u32,
    /// The sandboxed JVM's own directory (removed with it).
    area: Option<PathBuf>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(a) = &self.area {
            let _ = std::fs::remove_dir_all(a);
        }
    }
}

/// Who a warm JVM serves: this machine's farmd user (`None`), or one submitting node.
type PoolKey = (PathBuf, Option<String>);

/// A warm JVM taken from its pool for one compile; [`WarmJvms::run_on`] gives it back.
pub struct Lease {
    helper: Helper,
    key: PoolKey,
    /// Past its compile count or heap share: stopped rather than pooled.
    retire: bool,
}

impl Lease {
    /// The sandboxed JVM's area: a job's inputs go under `in/`, outputs under `out/`.
    pub fn area(&self) -> Option<&Path> {
        self.helper.area.as_deref()
    }
}

/// What one warm compile printed and returned: the same as a sandboxed process run.
pub use crate::sandbox::Run as WarmRun;

pub struct WarmJvms {
    state_dir: PathBuf,
    /// Where sandboxed JVMs get their areas.
    jobs_dir: PathBuf,
    /// The sandbox and limits for JVMs that serve peers; `None`: this node serves none.
    sandbox: Option<(crate::sandbox::Sandbox, crate::sandbox::Limits)>,
    /// Idle helpers by JDK home and submitter.
    idle: Mutex<HashMap<PoolKey, Vec<Helper>>>,
    /// Idle helpers kept per JDK.
    keep: usize,
    /// Serializes building the helper class.
    build: Mutex<()>,
}

impl WarmJvms {
    pub fn new(
        state_dir: &Path,
        keep: usize,
        sandbox: Option<(crate::sandbox::Sandbox, crate::sandbox::Limits)>,
    ) -> WarmJvms {
        WarmJvms {
            state_dir: state_dir.join("jvm"),
            jobs_dir: state_dir.join("jobs"),
            sandbox,
            idle: Mutex::new(HashMap::new()),
            keep: keep.max(1),
            build: Mutex::new(()),
        }
    }

    /// The directory holding the helper class built by `home`'s javac.
    async fn helper_classes(&self, home: &Path) -> Result<PathBuf, String> {
        let mut h = blake3::Hasher::new();
        h.update(HELPER_SOURCE.as_bytes());
        h.update(home.as_os_str().as_encoded_bytes());
        let dir = self
            .state_dir
            .join(farm::fsutil::hex(&h.finalize().as_bytes()[..12]));
        if dir.join("FarmJavacHelper.class").is_file() {
            return Ok(dir);
        }
        let _guard = self.build.lock().await;
        if dir.join("FarmJavacHelper.class").is_file() {
            return Ok(dir);
        }
        let tmp = dir.with_extension(format!("build-{}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let src = tmp.join("FarmJavacHelper.java");
        tokio::fs::write(&src, HELPER_SOURCE)
            .await
            .map_err(|e| format!("{}: {e}", src.display()))?;
        let javac = home.join("bin/javac");
        let out = Command::new(&javac)
            .arg("-d")
            .arg(&tmp)
            .arg(&src)
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", javac.display()))?;
        if !out.status.success() {
            return Err(format!(
                "building the javac helper with {} failed: {}",
                javac.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::rename(&tmp, &dir)
            .await
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        tracing::info!(jdk = %home.display(), "built the warm javac helper");
        Ok(dir)
    }

    async fn spawn(&self, home: &Path, submitter: Option<&str>) -> Result<Helper, String> {
        let classes = self.helper_classes(home).await?;
        let java = home.join("bin/java");
        let mut args: Vec<String> = ["-Xshare:auto", "-XX:+UseSerialGC", "-Xss4m", "-Xmx1g"]
            .iter()
            .chain(&["-Duser.language=en", "-Duser.country=US"])
            .map(|s| s.to_string())
            .collect();
        let mut area = None;
        let mut cmd = match (submitter, &self.sandbox) {
            (None, _) => {
                let mut c = Command::new(&java);
                c.current_dir(&classes)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("LC_ALL", "C.UTF-8")
                    .kill_on_drop(true);
                c
            }
            (Some(_), None) => return Err("no sandbox for peers' JVMs".into()),
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
                args.push(format!("-Djava.io.tmpdir={}", tmp.display()));
                let tmp_s = tmp.to_string_lossy().into_owned();
                let view = crate::sandbox::View {
                    rw: &[&dir],
                    ro: &[&dir.join("in"), &classes],
                    cwd: &dir.join("out"),
                    env: &[
                        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
                        ("LC_ALL", "C.UTF-8"),
                        ("HOME", &tmp_s),
                        ("TMPDIR", &tmp_s),
                    ],
                    proc: true,
                };
                args.extend(["-cp".into(), classes.to_string_lossy().into_owned()]);
                args.push("FarmJavacHelper".into());
                // One JVM serves many compiles: its CPU limit is theirs together (each
                // compile's own deadline is the wall-clock limit of `run_on`).
                let limits = crate::sandbox::Limits {
                    cpu: limits.cpu * RECYCLE_AFTER_JOBS,
                    ..*limits
                };
                let c = sandbox.command(&java, &args, &view, limits)?;
                area = Some(dir);
                c
            }
        };
        if area.is_none() {
            cmd.args(&args)
                .arg("-cp")
                .arg(&classes)
                .arg("FarmJavacHelper");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", java.display()))?;
        let stdin = child.stdin.take().ok_or("helper without stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("helper without stdout")?);
        let mut h = Helper {
            child,
            stdin,
            stdout,
            jobs: 0,
            area,
        };
        let hello = tokio::time::timeout(Duration::from_secs(30), h.stdout.read_u32())
            .await
            .map_err(|_| "the javac helper did not start in 30 s".to_string())?
            .map_err(|e| format!("the javac helper did not start: {e}"))?;
        if hello != HELLO {
            return Err(format!("the javac helper said {hello:#x}, not hello"));
        }
        tracing::info!(jdk = %home.display(), pid = h.child.id(), "warm javac started");
        Ok(h)
    }

    /// Runs one compile for this machine's farmd user in a warm JVM of the JDK at `home`.
    pub async fn run(
        &self,
        home: &Path,
        args: &[String],
        limit: Duration,
    ) -> Result<WarmRun, String> {
        let mut lease = self.lease(home, None).await?;
        let run = self.run_on(&mut lease, args, limit).await?;
        self.give_back(lease).await;
        Ok(run)
    }

    /// An idle warm JVM of the JDK at `home` for `submitter` (a node name; `None` is
    /// this machine's farmd user), or a new one. A peer's JVM is sandboxed and serves
    /// only that peer's jobs.
    pub async fn lease(&self, home: &Path, submitter: Option<&str>) -> Result<Lease, String> {
        let key = (home.to_path_buf(), submitter.map(str::to_string));
        let idle = self.idle.lock().await.get_mut(&key).and_then(Vec::pop);
        let helper = match idle {
            Some(h) => h,
            None => self.spawn(home, submitter).await?,
        };
        Ok(Lease {
            helper,
            key,
            retire: false,
        })
    }

    /// Runs one compile on a leased JVM. On an error the lease must be dropped (that
    /// kills the JVM); otherwise [`WarmJvms::give_back`] returns it to its pool.
    pub async fn run_on(
        &self,
        lease: &mut Lease,
        args: &[String],
        limit: Duration,
    ) -> Result<WarmRun, String> {
        let helper = &mut lease.helper;
        let t0 = Instant::now();
        let result = tokio::time::timeout(limit, exchange(helper, args)).await;
        let (run, heap_used, heap_max) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("warm javac: {e}")),
            Err(_) => return Err(format!("warm javac ran past {} s", limit.as_secs())),
        };
        helper.jobs += 1;
        let heavy = heap_max > 0 && heap_used as f64 > RECYCLE_HEAP_FRACTION * heap_max as f64;
        if helper.jobs >= RECYCLE_AFTER_JOBS || heavy {
            tracing::info!(
                jobs = helper.jobs,
                heap_used,
                heap_max,
                "warm javac recycled"
            );
            lease.retire = true;
        }
        Ok(WarmRun {
            elapsed: t0.elapsed(),
            ..run
        })
    }

    /// Returns a JVM to its pool after a compile (a retired one is stopped instead).
    pub async fn give_back(&self, lease: Lease) {
        if lease.retire {
            return;
        }
        let mut idle = self.idle.lock().await;
        // Idle JVMs in all pools are capped too: many submitters must not each keep
        // their own set. The other pools give up one first.
        let total: usize = idle.values().map(Vec::len).sum();
        if total >= self.keep * 2 {
            let other = idle
                .iter_mut()
                .filter(|(k, v)| **k != lease.key && !v.is_empty())
                .max_by_key(|(_, v)| v.len())
                .map(|(k, _)| k.clone());
            match other.and_then(|k| idle.get_mut(&k)) {
                Some(v) => drop(v.remove(0)),
                None => return,
            }
        }
        let list = idle.entry(lease.key).or_default();
        if list.len() < self.keep {
            list.push(lease.helper);
        }
    }
}

async fn exchange(h: &mut Helper, args: &[String]) -> std::io::Result<(WarmRun, u64, u64)> {
    let mut req = Vec::with_capacity(4 + args.iter().map(|a| a.len() + 4).sum::<usize>());
    req.extend_from_slice(&(args.len() as u32).to_be_bytes());
    for a in args {
        req.extend_from_slice(&(a.len() as u32).to_be_bytes());
        req.extend_from_slice(a.as_bytes());
    }
    h.stdin.write_all(&req).await?;
    h.stdin.flush().await?;
    let exit_code = h.stdout.read_i32().await?;
    let stdout = read_blob(&mut h.stdout).await?;
    let stderr = read_blob(&mut h.stdout).await?;
    let used = h.stdout.read_u64().await?;
    let max = h.stdout.read_u64().await?;
    Ok((
        WarmRun {
            exit_code,
            stdout,
            stderr,
            elapsed: Duration::ZERO,
        },
        used,
        max,
    ))
}

async fn read_blob(r: &mut BufReader<ChildStdout>) -> std::io::Result<Vec<u8>> {
    let n = r.read_u32().await? as usize;
    if n > MAX_STREAM {
        return Err(std::io::Error::other(format!("{n} bytes of output")));
    }
    let mut b = vec![0; n];
    r.read_exact(&mut b).await?;
    Ok(b)
}
