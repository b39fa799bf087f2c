//! The worker role: runs peers' jobs. It executes nothing it did not build itself:
//! the family module validates every argument and builds argv, the compiler is one
//! of this node's allow-listed binaries matched by identity digest, and it runs with
//! a clean environment in a private job directory with fixed file names.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Instant;

use farm::protocol::{Job, JobResult, PeerResponse, TreeJob, TreeOutput, TreeResult, MAX_FRAME};

use crate::node::{AllowedCompiler, Node};

fn refuse(node: &Node, why: String) -> PeerResponse {
    node.jobs_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(reason = %why, "job refused");
    PeerResponse::Refused(why)
}

/// A worker slot held for one job, with its private job directory; both are given
/// back on drop.
struct Slot<'a> {
    node: &'a Node,
    _permit: tokio::sync::OwnedSemaphorePermit,
    dir: std::path::PathBuf,
}

impl<'a> Slot<'a> {
    /// Slots cap concurrent jobs; a long queue is refused so the client goes elsewhere.
    async fn take(node: &'a Node) -> Result<Slot<'a>, String> {
        let waiting = node.queue.fetch_add(1, Ordering::Relaxed);
        if waiting >= node.cfg.slots * 2 {
            node.queue.fetch_sub(1, Ordering::Relaxed);
            return Err(format!("{}: queue full", node.name));
        }
        let permit = node.slots.clone().acquire_owned().await;
        node.queue.fetch_sub(1, Ordering::Relaxed);
        let Ok(permit) = permit else {
            return Err(format!("{}: stopping", node.name));
        };
        node.running.fetch_add(1, Ordering::Relaxed);
        node.changed.notify_one();
        let seq = node.job_seq.fetch_add(1, Ordering::Relaxed);
        let dir = node
            .cfg
            .state_dir
            .join("jobs")
            .join(format!("{}-{seq}", std::process::id()));
        Ok(Slot {
            node,
            _permit: permit,
            dir,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.node.running.fetch_sub(1, Ordering::Relaxed);
        self.node.changed.notify_one();
    }
}

/// The allow-listed compiler a job names, by name and identity.
fn allowed(node: &Node, ad: &farm::protocol::CompilerAd) -> Result<AllowedCompiler, String> {
    node.compilers
        .iter()
        .find(|c| c.identity == ad.identity && c.name == ad.name)
        .cloned()
        .ok_or_else(|| {
            format!(
                "compiler {:?} with identity {} is not allowed on {}",
                ad.name,
                farm::fsutil::hex(&ad.identity[..8]),
                node.name
            )
        })
}

/// Runs one tree job (javac) for `peer`: its files re-rooted in a private job
/// directory from the blob store, its arguments rebuilt by the family module, the
/// compile run in this node's warm JVM of the allow-listed JDK.
pub async fn run_tree(node: &Node, peer: &str, job: TreeJob) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, format!("{}: stopping", node.name));
    }
    let Some(decl) = farm::lang::family_by_name(&job.family).and_then(|f| f.declared()) else {
        return refuse(node, format!("unknown tree family {:?}", job.family));
    };
    let compiler = match allowed(node, &job.compiler) {
        Ok(c) => c,
        Err(why) => return refuse(node, why),
    };
    let slot = match Slot::take(node).await {
        Ok(s) => s,
        Err(why) => return refuse(node, why),
    };
    let root = slot.dir.join("root");
    let out = slot.dir.join("out");
    let args = match decl.worker_tree_args(&job.args, &job.outputs, &root, &out) {
        Ok(a) => a,
        Err(p) => return refuse(node, format!("refused {}: {}", p.reason, p.detail)),
    };
    for f in &job.files {
        let Some(dest) = farm::lang::reroot(&root, &f.path) else {
            return refuse(node, format!("refused file path {:?}", f.path));
        };
        if let Err(why) = node.blobs.materialize(&f.digest, &dest) {
            return refuse(node, format!("{}: {why}", node.name));
        }
    }
    for (role, _) in &job.outputs {
        if farm::lang::reroot(&out, &format!("/{role}")).is_none()
            || std::fs::create_dir_all(out.join(role)).is_err()
        {
            return refuse(node, format!("refused output role {role:?}"));
        }
    }
    let t0 = Instant::now();
    let run = if decl.worker_runs_warm() {
        let home = std::fs::canonicalize(&compiler.path)
            .map(|p| farm::lang::javac::java_home_of(&p))
            .unwrap_or_default();
        node.jvms.run(&home, &args, node.cfg.job_timeout).await
    } else {
        run_fresh(node, &compiler, &slot.dir, &args).await
    };
    let run = match run {
        Ok(r) => r,
        Err(why) => return refuse(node, format!("{}: {why}", node.name)),
    };
    let compile_ms = t0.elapsed().as_millis() as u64;
    // The job directory's root in messages becomes the sender's own paths again.
    let root_s = root.to_string_lossy().into_owned();
    let unroot = |b: Vec<u8>| -> Vec<u8> {
        match String::from_utf8(b) {
            Ok(s) => s.replace(&root_s, "").into_bytes(),
            Err(e) => e.into_bytes(),
        }
    };
    let mut outputs = Vec::new();
    let mut total = 0usize;
    if run.exit_code == 0 {
        for (role, _) in &job.outputs {
            let files = match farm::fsutil::collect_tree(&out.join(role)) {
                Ok(f) => f,
                Err(e) => return refuse(node, format!("{}: outputs: {e}", node.name)),
            };
            for (rel, data) in files {
                total += data.len();
                outputs.push(TreeOutput {
                    path: format!("{role}/{rel}"),
                    data,
                });
            }
        }
    }
    if total > MAX_FRAME - (1 << 20) {
        return refuse(
            node,
            format!("{}: outputs of {total} bytes are too large", node.name),
        );
    }
    drop(slot);
    node.jobs_served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        peer,
        ms = compile_ms,
        exit = run.exit_code,
        files = job.files.len(),
        "tree job done"
    );
    PeerResponse::TreeDone(TreeResult {
        exit_code: run.exit_code,
        stdout: unroot(run.stdout),
        stderr: unroot(run.stderr),
        outputs,
        compile_ms,
        worker: node.name.clone(),
    })
}

/// Runs a tree job's allow-listed compiler as a fresh process in the job directory
/// (`cwd/` inside it, empty), with a clean environment.
async fn run_fresh(
    node: &Node,
    compiler: &AllowedCompiler,
    dir: &std::path::Path,
    args: &[String],
) -> Result<crate::jvm::WarmRun, String> {
    let cwd = dir.join("cwd");
    tokio::fs::create_dir_all(&cwd)
        .await
        .map_err(|e| format!("job directory {}: {e}", cwd.display()))?;
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(&compiler.path);
    cmd.as_std_mut().arg0(&compiler.name);
    cmd.args(args)
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", compiler.path.display()))?;
    let out = match tokio::time::timeout(node.cfg.job_timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("compiler failed: {e}")),
        Err(_) => return Err(format!("job ran past {} s", node.cfg.job_timeout.as_secs())),
    };
    Ok(crate::jvm::WarmRun {
        exit_code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: t0.elapsed(),
    })
}

/// Runs one job for `peer`, or says why not.
pub async fn run(node: &Node, peer: &str, job: Job) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, format!("{}: stopping", node.name));
    }
    let Some(family) = farm::lang::family_by_name(&job.family) else {
        return refuse(node, format!("unknown compiler family {:?}", job.family));
    };
    let compiler = match allowed(node, &job.compiler) {
        Ok(c) => c,
        Err(why) => return refuse(node, why),
    };
    let ext = match job.lang.as_str() {
        "cpp-output" => "i",
        "c++-cpp-output" => "ii",
        "objective-c-cpp-output" => "mi",
        _ => "mii",
    };
    let input = format!("job.{ext}");
    let args = match family.worker_args(
        &job.lang,
        &job.args,
        std::path::Path::new(&input),
        std::path::Path::new("job.o"),
    ) {
        Ok(a) => a,
        Err(p) => return refuse(node, format!("refused {}: {}", p.reason, p.detail)),
    };
    let slot = match Slot::take(node).await {
        Ok(s) => s,
        Err(why) => return refuse(node, why),
    };
    let result = run_in(node, &compiler, &slot.dir, &input, &args, &job.source).await;
    drop(slot);
    match result {
        Ok(r) => {
            node.jobs_served.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer, ms = r.compile_ms, exit = r.exit_code, "job done");
            PeerResponse::Done(r)
        }
        Err(why) => refuse(node, why),
    }
}

async fn run_in(
    node: &Node,
    compiler: &AllowedCompiler,
    dir: &std::path::Path,
    input: &str,
    args: &[std::ffi::OsString],
    source: &[u8],
) -> Result<JobResult, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("{}: job directory {}: {e}", node.name, dir.display()))?;
    tokio::fs::write(dir.join(input), source)
        .await
        .map_err(|e| format!("{}: cannot write job input: {e}", node.name))?;
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(&compiler.path);
    cmd.as_std_mut().arg0(&compiler.name);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TMPDIR", dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        format!(
            "{}: cannot start {}: {e}",
            node.name,
            compiler.path.display()
        )
    })?;
    let out = match tokio::time::timeout(node.cfg.job_timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("{}: compiler failed: {e}", node.name)),
        Err(_) => {
            return Err(format!(
                "{}: job ran past {} s",
                node.name,
                node.cfg.job_timeout.as_secs()
            ))
        }
    };
    let compile_ms = t0.elapsed().as_millis() as u64;
    let code = out.status.code().unwrap_or(-1);
    let object = if code == 0 {
        let meta = tokio::fs::metadata(dir.join("job.o"))
            .await
            .map_err(|e| format!("{}: no object: {e}", node.name))?;
        if meta.len() as usize > MAX_FRAME - 4096 {
            return Err(format!(
                "{}: object of {} bytes is too large",
                node.name,
                meta.len()
            ));
        }
        tokio::fs::read(dir.join("job.o"))
            .await
            .map_err(|e| format!("{}: cannot read object: {e}", node.name))?
    } else {
        Vec::new()
    };
    Ok(JobResult {
        exit_code: code,
        stdout: out.stdout,
        stderr: out.stderr,
        object,
        compile_ms,
        worker: node.name.clone(),
    })
}
