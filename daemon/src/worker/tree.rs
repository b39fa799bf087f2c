//! Tree jobs: many inputs (blobs by digest, re-rooted in a private job directory) and
//! many outputs (one directory per role under the job's `out/`). The family module
//! rebuilds the arguments; the compile runs in this node's warm compiler of the
//! allow-listed installation when the family has one, else as a fresh process.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use farm::protocol::{OutputFile, PeerResponse, TreeJob, TreeResult, MAX_FRAME};

use super::sandbox::{Run, Sandbox, View};
use super::spawn::{abnormal, run_compiler};
use super::{allowed, refuse, JobSlot, Refusal};
use crate::node::{AllowedCompiler, Node};

/// Runs one tree job for `peer`: its files re-rooted in a private job directory from
/// the blob store, its arguments rebuilt by the family module, the compile run in
/// this node's warm compiler of the allow-listed installation (or a fresh process of
/// the allow-listed compiler when the family has no warm compiler).
pub async fn run_tree(node: &Node, peer: &str, job: TreeJob) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, Refusal::Stopping, format!("{}: stopping", node.name));
    }
    let Some(family) = farm::lang::family_by_name(&job.family) else {
        return refuse(
            node,
            Refusal::Family,
            format!("unknown tree family {:?}", job.family),
        );
    };
    let Some(tree_jobs) = family.tree_jobs() else {
        return refuse(
            node,
            Refusal::Family,
            format!("unknown tree family {:?}", job.family),
        );
    };
    let compiler = match allowed(node, &job.compiler) {
        Ok(c) => c,
        Err(why) => return refuse(node, Refusal::Compiler, why),
    };
    if let Err(why) = node.disk_room() {
        return refuse(node, Refusal::Disk, why);
    }
    let slot = match JobSlot::take(node, &job.family).await {
        Ok(s) => s,
        Err(why) => return refuse(node, Refusal::Busy, why),
    };
    let Some(sandbox) = &node.sandbox else {
        return refuse(
            node,
            Refusal::NoSandbox,
            format!("{}: no job sandbox", node.name),
        );
    };
    // Checked before a warm compiler is taken: a refused job costs none. An output
    // role is one plain name: `out.join("/etc/farm")` would be /etc/farm, whose files
    // farmd would then send back.
    if let Some((role, _)) = job
        .outputs
        .iter()
        .find(|(r, _)| !farm::lang::valid_output_role(r))
    {
        return refuse(
            node,
            Refusal::Request,
            format!("refused output role {role:?}"),
        );
    }
    if let Err(p) = tree_jobs.worker_tree_args(
        &job.args,
        &job.outputs,
        Path::new("/job/in"),
        Path::new("/job/out"),
    ) {
        return refuse(
            node,
            Refusal::Arguments,
            format!("refused {}: {}", p.reason, p.detail),
        );
    }
    // A warm compiler (sandboxed, this peer's own) has a fixed area: the job goes
    // there. A fresh compiler gets the slot's directory.
    let mut lease = None;
    let area = if let Some(warm) = family.warm() {
        let installation = std::fs::canonicalize(&compiler.path)
            .map(|p| warm.installation_of(&p))
            .unwrap_or_default();
        match node.warm.lease(family, &installation, Some(peer)).await {
            Ok(l) => {
                let a = l.area().map(Path::to_path_buf).unwrap_or_default();
                lease = Some(l);
                a
            }
            Err(why) => return refuse(node, Refusal::Warm, format!("{}: {why}", node.name)),
        }
    } else {
        slot.dir.clone()
    };
    let root = area.join("in").join("job");
    let out = area.join("out").join("job");
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&out);
    };
    cleanup();
    let args = match tree_jobs.worker_tree_args(&job.args, &job.outputs, &root, &out) {
        Ok(a) => a,
        Err(p) => {
            return refuse(
                node,
                Refusal::Arguments,
                format!("refused {}: {}", p.reason, p.detail),
            )
        }
    };
    // Inputs are hard links into the blob store; the job sees them only through a
    // read-only mount, so it cannot write through them.
    for f in &job.files {
        let Some(dest) = farm::lang::reroot(&root, &f.path) else {
            cleanup();
            return refuse(
                node,
                Refusal::Request,
                format!("refused file path {:?}", f.path),
            );
        };
        if let Err(why) = node.blobs.materialize(&f.digest, &dest) {
            cleanup();
            return refuse(node, Refusal::Inputs, format!("{}: {why}", node.name));
        }
    }
    if std::fs::create_dir_all(&root).is_err() {
        return refuse(
            node,
            Refusal::Inputs,
            format!("{}: cannot make {}", node.name, root.display()),
        );
    }
    for (role, _) in &job.outputs {
        if std::fs::create_dir_all(out.join(role)).is_err() {
            cleanup();
            return refuse(
                node,
                Refusal::Request,
                format!("refused output role {role:?}"),
            );
        }
    }
    let t0 = Instant::now();
    let run = match &mut lease {
        Some(l) => node.warm.run_on(l, &args, node.cfg.job_timeout).await,
        None => run_fresh(node, sandbox, &compiler, &slot.dir, &root, &args).await,
    };
    let run = match run {
        Ok(r) => r,
        Err(why) => {
            drop(lease);
            cleanup();
            return refuse(node, Refusal::Sandbox, format!("{}: {why}", node.name));
        }
    };
    if let Some(why) = abnormal(run.exit_code) {
        drop(lease);
        cleanup();
        return refuse(node, Refusal::Sandbox, format!("{}: {why}", node.name));
    }
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
            // Written by the job: no link is followed, and reading stops at the cap.
            let left = (MAX_FRAME - (1 << 20)).saturating_sub(total) as u64;
            let files = match farm::fsutil::collect_tree_capped(&out.join(role), left) {
                Ok(f) => f,
                Err(e) => {
                    cleanup();
                    return refuse(
                        node,
                        Refusal::Outputs,
                        format!("{}: outputs: {e}", node.name),
                    );
                }
            };
            for (rel, data) in files {
                total += data.len();
                outputs.push(OutputFile {
                    path: format!("{role}/{rel}"),
                    data,
                });
            }
        }
    }
    cleanup();
    if let Some(l) = lease {
        node.warm.give_back(l).await;
    }
    if total > MAX_FRAME - (1 << 20) {
        return refuse(
            node,
            Refusal::Outputs,
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

/// Runs a tree job's allow-listed compiler as a fresh process in the sandbox, in the
/// job directory's empty `cwd/`, its inputs (`root`) read-only.
async fn run_fresh(
    node: &Node,
    sandbox: &Sandbox,
    compiler: &AllowedCompiler,
    dir: &Path,
    root: &Path,
    args: &[String],
) -> Result<Run, String> {
    let cwd = dir.join("cwd");
    let tmp = dir.join("tmp");
    for d in [&cwd, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| format!("job directory {}: {e}", d.display()))?;
    }
    let tmp_s = tmp.to_string_lossy().into_owned();
    let view = View {
        rw: &[dir],
        ro: &[root],
        cwd: &cwd,
        env: &[
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", &tmp_s),
            ("TMPDIR", &tmp_s),
            ("LC_ALL", "C.UTF-8"),
        ],
        // Tree-job compilers run on managed runtimes, which read /proc.
        proc: true,
    };
    run_compiler(node, sandbox, compiler, args, &view).await
}
