//! The job sandbox: every compile a worker runs for a peer (and every warm compiler
//! that serves peers) runs under bubblewrap, rootless. Inside, a job sees the
//! toolchain read-only (`/usr`, the `/lib*` and `/bin` links, the few `/etc` files
//! compilers and the JVM read), its own job directory, a minimal `/dev`, and where
//! asked a `/proc` of its own PID namespace; not farmd's state directory, keys, blob store
//! or caches, not other jobs. It has no network (a new, empty network namespace), no
//! capabilities, a new session (no terminal injection), cannot make further user
//! namespaces, and cannot see, signal or ptrace anything outside its PID namespace.
//! Resource limits are rlimits set (by util-linux's `prlimit`) before bubblewrap
//! starts, inherited by the whole tree: CPU time, address space, file size, processes, core dumps. Killing bubblewrap at the
//! deadline kills the whole tree (`--die-with-parent`, and the PID namespace dies with
//! its first process). Output on stdout and stderr is read with a cap.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;

/// `/etc` entries every compiler's loader reads; with each family's own configuration
/// ([`farm::lang::Family::toolchain_config`]) nothing else of `/etc` is visible (it
/// may hold farmd's configuration and keys).
const ETC_PATHS: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
];

/// Top-level toolchain paths, bound read-only (or re-created as the same symlink on a
/// merged-/usr system).
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
];

/// Processes (threads included) farmd's user may have while a job forks: a runaway
/// job stops here rather than at the machine's PID limit. Counted across the user's
/// processes, so far above what farmd, its warm JVMs and its jobs use (the kernel does
/// not apply it to root).
const MAX_PROCESSES: u64 = 16384;

/// Limits of one sandboxed process tree.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// CPU seconds (RLIMIT_CPU); the wall-clock deadline is separate.
    pub cpu: Duration,
    /// Address space in bytes (RLIMIT_AS).
    pub memory: u64,
    /// Largest file a job may write (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Bytes of stdout, and of stderr, kept; more is an error.
    pub output: usize,
}

/// What a job may see besides the toolchain.
pub struct View<'a> {
    /// Bound read-write at the same path.
    pub rw: &'a [&'a Path],
    /// Bound read-only at the same path (after `rw`, so a read-only path inside a
    /// read-write one stays read-only).
    pub ro: &'a [&'a Path],
    pub cwd: &'a Path,
    pub env: &'a [(&'a str, &'a str)],
    /// Mount a /proc of the job's own PID namespace.
    pub proc: bool,
}

/// What a same-path job sees: its own root (the toolchain and the inputs at their
/// paths, read-only) with writable directories bound over it (holding copies of what
/// the root has there).
pub struct RootedView {
    pub root: PathBuf,
    /// Writable directories: (this machine's directory, where the job sees it).
    pub rw: Vec<(PathBuf, String)>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub proc: bool,
}

/// What a REAPI lease sees besides the toolchain: its directories bound read-write at
/// fixed paths (so that no path of this machine, and no per-job name, reaches its
/// outputs: a `-g` compile gives the same bytes on every worker and every run).
pub struct MappedView<'a> {
    /// (this machine's directory, where the job sees it).
    pub rw: &'a [(&'a Path, &'a str)],
    pub cwd: &'a str,
    pub env: &'a [(&'a str, &'a str)],
}

/// bubblewrap and the read-only paths every job sees.
#[derive(Clone, Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    prlimit: PathBuf,
    system: Vec<String>,
}

/// What a sandboxed run printed and how it ended.
pub struct Run {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Sandbox {
    /// Finds bubblewrap and checks that it can make a sandbox here (user namespaces
    /// allowed, and so on). `extra` are more read-only paths from farmd's config
    /// (`sandbox_paths`), for toolchains outside `/usr` and `/opt`.
    pub async fn probe(extra: &[PathBuf]) -> Result<Sandbox, String> {
        let bwrap = ["/usr/bin/bwrap", "/usr/local/bin/bwrap"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")?;
        let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("prlimit (util-linux) is not installed")?;
        let mut system = Vec::new();
        for p in SYSTEM_PATHS.iter().chain(ETC_PATHS) {
            let path = Path::new(p);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(path).map_err(|e| format!("{p}: {e}"))?;
                    system.extend(["--symlink".into(), path_str(&target)?, p.to_string()]);
                }
                Ok(_) => system.extend(["--ro-bind".into(), p.to_string(), p.to_string()]),
                Err(_) => {}
            }
        }
        for f in farm::lang::families() {
            for p in f.toolchain_config() {
                let s = path_str(&p)?;
                system.extend(["--ro-bind".into(), s.clone(), s]);
            }
        }
        for p in extra {
            let s = path_str(p)?;
            system.extend(["--ro-bind".into(), s.clone(), s]);
        }
        let sb = Sandbox {
            bwrap,
            prlimit,
            system,
        };
        let view = View {
            rw: &[],
            ro: &[],
            cwd: Path::new("/"),
            env: &[],
            proc: true,
        };
        let limits = Limits {
            cpu: Duration::from_secs(10),
            memory: 1 << 30,
            file_size: 1 << 20,
            output: 1 << 16,
        };
        let run = sb
            .run(
                Path::new("/bin/true"),
                &[],
                &view,
                limits,
                Duration::from_secs(10),
            )
            .await?;
        if run.exit_code != 0 {
            return Err(format!(
                "{} cannot make a sandbox here: {}",
                sb.bwrap.display(),
                String::from_utf8_lossy(&run.stderr).trim()
            ));
        }
        Ok(sb)
    }

    /// prlimit with the job's limits, then bubblewrap with the namespaces, session,
    /// capabilities and parent-death settings every job gets.
    fn bwrap_command(&self, limits: Limits) -> tokio::process::Command {
        // The limits are set by util-linux's prlimit, which then runs bubblewrap:
        // setting them between fork and exec would make farmd fork (copying its page
        // tables, milliseconds per job) where it can otherwise spawn.
        let mut cmd = tokio::process::Command::new(&self.prlimit);
        // SIGXCPU at the limit (a clear reason), SIGKILL a little later if ignored.
        let cpu = limits.cpu.as_secs().max(1);
        cmd.arg(format!("--cpu={cpu}:{}", cpu + 5))
            .arg(format!("--as={}", limits.memory))
            .arg(format!("--fsize={}", limits.file_size))
            .arg(format!("--nproc={MAX_PROCESSES}"))
            .arg("--core=0")
            .arg("--")
            .arg(&self.bwrap);
        cmd.args([
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ]);
        cmd
    }

    /// The command that runs `program` in a sandbox whose file system `mounts` sets
    /// up (after the limits and namespaces every job gets), in `cwd` with only `env`;
    /// stdin is /dev/null, stdout and stderr are pipes, and dropping the child kills
    /// the whole tree. Every kind of job view is built here.
    fn sandboxed<'e>(
        &self,
        limits: Limits,
        mounts: impl FnOnce(&mut tokio::process::Command) -> Result<(), String>,
        cwd: &std::ffi::OsStr,
        env: impl IntoIterator<Item = (&'e str, &'e str)>,
        program: &std::ffi::OsStr,
        args: &[String],
    ) -> Result<tokio::process::Command, String> {
        let mut cmd = self.bwrap_command(limits);
        mounts(&mut cmd)?;
        cmd.arg("--chdir").arg(cwd);
        cmd.arg("--clearenv");
        for (k, v) in env {
            cmd.args(["--setenv", k, v]);
        }
        cmd.arg("--").arg(program).args(args);
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// The command that runs `program` in the sandbox: the toolchain and `view`.
    pub fn command(
        &self,
        program: &Path,
        args: &[String],
        view: &View,
        limits: Limits,
    ) -> Result<tokio::process::Command, String> {
        let mounts = |cmd: &mut tokio::process::Command| {
            cmd.args(["--dev", "/dev"]);
            // A private /proc costs a mount per job (about a millisecond); only what
            // reads /proc (a JVM, mono) gets one.
            if view.proc {
                cmd.args(["--proc", "/proc"]);
            }
            cmd.args(&self.system);
            // The sandbox's root is an empty tmpfs: the job's directories are created
            // in it.
            for p in view.rw {
                let s = path_str(p)?;
                cmd.args(["--bind", &s, &s]);
            }
            for p in view.ro {
                let s = path_str(p)?;
                cmd.args(["--ro-bind", &s, &s]);
            }
            Ok(())
        };
        let env = view.env.iter().copied();
        self.sandboxed(
            limits,
            mounts,
            view.cwd.as_os_str(),
            env,
            program.as_os_str(),
            args,
        )
    }

    /// The command that runs `program` (found by the sandbox's PATH when it names no
    /// directory) in a sandbox whose `/` is `view.root` read-only: nothing of this
    /// machine's own files is visible, only what the root holds.
    pub fn command_rooted(
        &self,
        program: &str,
        args: &[String],
        view: &RootedView,
        limits: Limits,
    ) -> Result<tokio::process::Command, String> {
        let mounts = |cmd: &mut tokio::process::Command| {
            cmd.arg("--ro-bind").arg(&view.root).arg("/");
            cmd.args(["--dev", "/dev"]);
            if view.proc {
                cmd.args(["--proc", "/proc"]);
            }
            for (host, dest) in &view.rw {
                cmd.arg("--bind").arg(host).arg(dest);
            }
            Ok(())
        };
        let env = view.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.sandboxed(
            limits,
            mounts,
            view.cwd.as_ref(),
            env,
            program.as_ref(),
            args,
        )
    }

    /// The command that runs `program` with the toolchain and `view`'s directories at
    /// their fixed paths; no `/proc`.
    pub fn command_mapped(
        &self,
        program: &Path,
        args: &[String],
        view: &MappedView,
        limits: Limits,
    ) -> Result<tokio::process::Command, String> {
        let mounts = |cmd: &mut tokio::process::Command| {
            cmd.args(["--dev", "/dev"]);
            cmd.args(&self.system);
            for (host, dest) in view.rw {
                cmd.arg("--bind").arg(host).arg(dest);
            }
            Ok(())
        };
        let env = view.env.iter().copied();
        self.sandboxed(
            limits,
            mounts,
            view.cwd.as_ref(),
            env,
            program.as_os_str(),
            args,
        )
    }

    /// Runs `program` in a sandbox with `view`'s fixed-path directories.
    pub async fn run_mapped(
        &self,
        program: &Path,
        args: &[String],
        view: &MappedView<'_>,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Run, String> {
        let cmd = self.command_mapped(program, args, view, limits)?;
        self.run_command(cmd, limits, deadline).await
    }

    /// Runs `program` in the sandbox to its end, its deadline or its output cap.
    pub async fn run(
        &self,
        program: &Path,
        args: &[String],
        view: &View<'_>,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Run, String> {
        let cmd = self.command(program, args, view, limits)?;
        self.run_command(cmd, limits, deadline).await
    }

    /// Runs a same-path job's `program` in a sandbox rooted at `view.root`.
    pub async fn run_rooted(
        &self,
        program: &str,
        args: &[String],
        view: &RootedView,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Run, String> {
        let cmd = self.command_rooted(program, args, view, limits)?;
        self.run_command(cmd, limits, deadline).await
    }

    async fn run_command(
        &self,
        cmd: tokio::process::Command,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Run, String> {
        let r = self.run_counted(cmd, limits, deadline).await;
        if let Err((reason, _)) = &r {
            crate::metrics::get().count_sandbox_failure(reason);
        }
        r.map_err(|(_, why)| why)
    }

    /// Every reason [`Sandbox::run_counted`] gives.
    pub const FAILURES: [&'static str; 6] = [
        "start",
        "output",
        "deadline",
        "cpu_limit",
        "file_size_limit",
        "signal",
    ];

    /// [`Sandbox::run_command`], its failures with their `farm_sandbox_failures_total`
    /// reason (one of [`Sandbox::FAILURES`]).
    async fn run_counted(
        &self,
        mut cmd: tokio::process::Command,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Run, (&'static str, String)> {
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            (
                "start",
                format!("cannot start {}: {e}", self.bwrap.display()),
            )
        })?;
        let pipe = |what: &str| ("start", format!("no {what} pipe"));
        let out = child.stdout.take().ok_or_else(|| pipe("stdout"))?;
        let err = child.stderr.take().ok_or_else(|| pipe("stderr"))?;
        let work = async {
            let (o, e) = tokio::join!(
                read_capped(out, limits.output, "stdout"),
                read_capped(err, limits.output, "stderr")
            );
            let (o, e) = (o?, e?);
            let status = child
                .wait()
                .await
                .map_err(|e| format!("compiler failed: {e}"))?;
            Ok::<_, String>((status, o, e))
        };
        // On an error or the deadline the child is dropped here: bubblewrap is killed and
        // with it the job's whole PID namespace.
        let (status, stdout, stderr) = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r.map_err(|e| ("output", e))?,
            Err(_) => return Err(("deadline", format!("job ran past {} s", deadline.as_secs()))),
        };
        use std::os::unix::process::ExitStatusExt as _;
        // bubblewrap exits with 128 + the signal that ended the job's process.
        let signal = match (status.code(), status.signal()) {
            (Some(c), _) if c > 128 && c < 128 + 65 => Some(c - 128),
            (None, s) => s,
            _ => None,
        };
        let exit_code = match signal {
            Some(libc::SIGXCPU) => {
                return Err((
                    "cpu_limit",
                    format!("job used more than {} s of CPU", limits.cpu.as_secs()),
                ))
            }
            Some(libc::SIGXFSZ) => {
                return Err((
                    "file_size_limit",
                    format!("job wrote a file larger than {} bytes", limits.file_size),
                ))
            }
            Some(s) => return Err(("signal", format!("job killed by signal {s}"))),
            None => status.code().unwrap_or(-1),
        };
        Ok(Run {
            exit_code,
            stdout,
            stderr,
            elapsed: t0.elapsed(),
        })
    }
}

fn path_str(p: &Path) -> Result<String, String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// Reads a pipe to its end, keeping at most `cap` bytes; past that the job is an
/// error (its output would not fit a reply anyway, and memory stays bounded).
pub async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = r
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the job's {what}: {e}"))?;
        if n == 0 {
            return Ok(buf);
        }
        if buf.len() + n > cap {
            return Err(format!("the job wrote more than {cap} bytes to {what}"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cpu: Duration::from_secs(20),
            memory: 2 << 30,
            file_size: 1 << 30,
            output: 1 << 20,
        }
    }

    /// The suite installs bubblewrap (scripts/install-deps.sh): no silent skips.
    async fn sandbox() -> Option<Sandbox> {
        Some(Sandbox::probe(&[]).await.expect("the job sandbox"))
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn sees_only_its_job_directory_and_the_toolchain() {
        let Some(sb) = sandbox().await else { return };
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "key").unwrap();
        let job = tempfile::tempdir().unwrap();
        let input = job.path().join("in");
        std::fs::write(&input, "data").unwrap();
        let view = View {
            rw: &[job.path()],
            ro: &[&input],
            cwd: job.path(),
            env: &[("PATH", "/usr/bin:/bin")],
            proc: true,
        };
        let script = format!(
            "cat {secret} 2>/dev/null && echo LEAK; \
             ls /etc/hostname /etc/passwd /root 2>/dev/null && echo LEAK; \
             echo x > in 2>/dev/null && echo WROTE; \
             echo out > out && cat in && echo; \
             ls /proc | grep -c '^[0-9]'",
            secret = outside.path().join("secret").display()
        );
        let r = sb
            .run(
                Path::new("/bin/sh"),
                &sh(&script),
                &view,
                limits(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(!out.contains("LEAK"), "{out}");
        assert!(!out.contains("WROTE"), "read-only input was written: {out}");
        assert!(out.starts_with("data"), "{out}");
        // Its own PID namespace: only the sandbox's few processes.
        let procs: u32 = out.lines().last().unwrap().trim().parse().unwrap();
        assert!(procs < 10, "sees {procs} processes");
        assert_eq!(
            std::fs::read_to_string(job.path().join("out")).unwrap(),
            "out\n"
        );
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "data");
    }

    /// Runs `program` in a sandbox whose only writable place is a fresh directory.
    async fn in_job(
        program: &str,
        args: &[String],
        limits: Limits,
        deadline: Duration,
    ) -> (tempfile::TempDir, Result<Run, String>) {
        let sb = Sandbox::probe(&[]).await.expect("the job sandbox");
        let job = tempfile::tempdir().unwrap();
        let view = View {
            rw: &[job.path()],
            ro: &[],
            cwd: job.path(),
            env: &[("PATH", "/usr/bin:/bin")],
            proc: true,
        };
        let r = sb
            .run(Path::new(program), args, &view, limits, deadline)
            .await;
        (job, r)
    }

    #[tokio::test]
    async fn has_no_network() {
        let args = ["/proc/net/dev".to_string()];
        let (_job, r) = in_job("/bin/cat", &args, limits(), Duration::from_secs(20)).await;
        let r = r.unwrap();
        let out = String::from_utf8_lossy(&r.stdout);
        let ifaces: Vec<&str> = out
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "{out}");
    }

    #[tokio::test]
    async fn the_deadline_kills_the_whole_tree() {
        let marker = format!("farm-sandbox-test-{}", std::process::id());
        // A grandchild that ignores SIGTERM and outlives its parent shell.
        let script = format!("(trap '' TERM; exec -a {marker} sleep 300) & sleep 300");
        let t0 = Instant::now();
        let (_job, r) = in_job("/bin/sh", &sh(&script), limits(), Duration::from_secs(1)).await;
        assert!(r.is_err());
        assert!(t0.elapsed() < Duration::from_secs(10));
        // The kernel needs a moment to tear the namespace down.
        let mut left = true;
        for _ in 0..50 {
            left = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            });
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!left, "a process of the killed job is still running");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_an_error() {
        let script = sh("yes warning >&2");
        let (_job, r) = in_job("/bin/sh", &script, limits(), Duration::from_secs(20)).await;
        let e = r.err().expect("unbounded stderr accepted");
        assert!(e.contains("stderr"), "{e}");
    }

    #[tokio::test]
    async fn cpu_time_is_limited() {
        let mut l = limits();
        l.cpu = Duration::from_secs(1);
        let script = sh("while :; do :; done");
        let (_job, r) = in_job("/bin/sh", &script, l, Duration::from_secs(30)).await;
        let e = r.err().expect("a CPU-bound job ran past its CPU limit");
        assert!(e.contains("CPU"), "{e}");
    }

    #[tokio::test]
    async fn file_size_is_limited() {
        let mut l = limits();
        l.file_size = 1 << 20;
        let script = sh("head -c 5000000 /dev/zero > big; echo $?");
        let (job, r) = in_job("/bin/sh", &script, l, Duration::from_secs(20)).await;
        let r = r.unwrap();
        assert!(std::fs::metadata(job.path().join("big")).unwrap().len() <= 1 << 20);
        assert_ne!(String::from_utf8_lossy(&r.stdout).trim(), "0");
    }

    #[tokio::test]
    async fn memory_is_limited() {
        let mut l = limits();
        l.memory = 256 << 20;
        // 512 MiB in one allocation: refused by the address-space limit (and
        // granted without it).
        let script = sh("python3 -c 'bytearray(512 << 20)' 2>/dev/null; echo $?");
        let (_job, r) = in_job("/bin/sh", &script, l, Duration::from_secs(60)).await;
        let out = String::from_utf8_lossy(&r.unwrap().stdout)
            .trim()
            .to_string();
        assert_eq!(out, "1", "512 MiB allocated under a 256 MiB limit");
        l.memory = 4 << 30;
        let (_job, r) = in_job("/bin/sh", &script, l, Duration::from_secs(60)).await;
        let out = String::from_utf8_lossy(&r.unwrap().stdout)
            .trim()
            .to_string();
        assert_eq!(out, "0", "512 MiB refused under a 4 GiB limit");
    }
}
