//! The worker role: runs peers' jobs. It executes nothing it did not build itself:
//! the family module validates every argument and builds argv, the compiler is one
//! of this node's allow-listed binaries matched by identity digest, and it runs with
//! a clean environment in a private job directory with fixed file names.

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Instant;

use farm::protocol::{Job, JobResult, PeerResponse, MAX_FRAME};

use crate::node::Node;

fn refuse(node: &Node, why: String) -> PeerResponse {
    node.jobs_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(reason = %why, "job refused");
    PeerResponse::Refused(why)
}

/// Runs one job for `peer`, or says why not.
pub async fn run(node: &Node, peer: &str, job: Job) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, format!("{}: stopping", node.name));
    }
    let Some(family) = farm::lang::family_by_name(&job.family) else {
        return refuse(node, format!("unknown compiler family {:?}", job.family));
    };
    let Some(compiler) = node
        .compilers
        .iter()
        .find(|c| c.identity == job.compiler.identity && c.name == job.compiler.name)
        .cloned()
    else {
        return refuse(
            node,
            format!(
                "compiler {:?} with identity {} is not allowed on {}",
                job.compiler.name,
                farm::fsutil::hex(&job.compiler.identity[..8]),
                node.name
            ),
        );
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
    // Slots cap concurrent jobs; a long queue is refused so the client goes elsewhere.
    let waiting = node.queue.fetch_add(1, Ordering::Relaxed);
    if waiting >= node.cfg.slots * 2 {
        node.queue.fetch_sub(1, Ordering::Relaxed);
        return refuse(node, format!("{}: queue full", node.name));
    }
    let permit = node.slots.clone().acquire_owned().await;
    node.queue.fetch_sub(1, Ordering::Relaxed);
    let Ok(_permit) = permit else {
        return refuse(node, format!("{}: stopping", node.name));
    };
    node.running.fetch_add(1, Ordering::Relaxed);
    node.changed.notify_one();
    let seq = node.job_seq.fetch_add(1, Ordering::Relaxed);
    let dir = node
        .cfg
        .state_dir
        .join("jobs")
        .join(format!("{}-{seq}", std::process::id()));
    let result = run_in(node, &compiler, &dir, &input, &args, &job.source).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    node.running.fetch_sub(1, Ordering::Relaxed);
    node.changed.notify_one();
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
    compiler: &crate::node::AllowedCompiler,
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
