//! Warm javac JVMs: farmd keeps javac loaded and JIT-compiled in helper processes
//! (daemon/java/FarmJavacHelper.java, built with the JDK it serves on first use) and
//! runs its own machine's javac misses there. Each compile gets a fresh compiler
//! context and file manager (javax.tools' `Tool.run`); a helper is recycled after
//! [`RECYCLE_AFTER_JOBS`] compiles or when its heap stays over
//! [`RECYCLE_HEAP_FRACTION`] of its maximum, and dropped on any protocol doubt.

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
}

/// What one warm compile printed and returned.
pub struct WarmRun {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

pub struct WarmJvms {
    state_dir: PathBuf,
    /// Idle helpers by JDK home.
    idle: Mutex<HashMap<PathBuf, Vec<Helper>>>,
    /// Idle helpers kept per JDK.
    keep: usize,
    /// Serializes building the helper class.
    build: Mutex<()>,
}

impl WarmJvms {
    pub fn new(state_dir: &Path, keep: usize) -> WarmJvms {
        WarmJvms {
            state_dir: state_dir.join("jvm"),
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

    async fn spawn(&self, home: &Path) -> Result<Helper, String> {
        let classes = self.helper_classes(home).await?;
        let java = home.join("bin/java");
        let mut child = Command::new(&java)
            .args(["-Xshare:auto", "-XX:+UseSerialGC", "-Xss4m", "-Xmx1g"])
            .args(["-Duser.language=en", "-Duser.country=US"])
            .arg("-cp")
            .arg(&classes)
            .arg("FarmJavacHelper")
            .current_dir(&classes)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", java.display()))?;
        let stdin = child.stdin.take().ok_or("helper without stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("helper without stdout")?);
        let mut h = Helper {
            child,
            stdin,
            stdout,
            jobs: 0,
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

    /// Runs one compile in a warm JVM of the JDK at `home`.
    pub async fn run(
        &self,
        home: &Path,
        args: &[String],
        limit: Duration,
    ) -> Result<WarmRun, String> {
        let idle = self.idle.lock().await.get_mut(home).and_then(Vec::pop);
        let mut helper = match idle {
            Some(h) => h,
            None => self.spawn(home).await?,
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(limit, exchange(&mut helper, args)).await;
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
        } else {
            let mut idle = self.idle.lock().await;
            let list = idle.entry(home.to_path_buf()).or_default();
            if list.len() < self.keep {
                list.push(helper);
            }
        }
        Ok(WarmRun {
            elapsed: t0.elapsed(),
            ..run
        })
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
