//! The worker role: runs peers' jobs. It executes nothing it did not build itself:
//! the family module validates every argument and builds argv, the compiler is one
//! of this node's allow-listed binaries matched by identity digest, and it runs with
//! a clean environment in a private job directory with fixed file names, inside the
//! job sandbox (`crate::sandbox`): the job sees the toolchain and its own directory,
//! its inputs read-only.

use std::path::Path;
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
    let Some(sandbox) = &node.sandbox else {
        return refuse(node, format!("{}: no job sandbox", node.name));
    };
    // Checked before a warm JVM is taken: a refused job costs no JVM. An output role
    // is one plain name: `out.join("/etc/farm")` would be /etc/farm, whose files
    // farmd would then send back.
    if let Some((role, _)) = job
        .outputs
        .iter()
        .find(|(r, _)| !farm::lang::valid_output_role(r))
    {
        return refuse(node, format!("refused output role {role:?}"));
    }
    if let Err(p) = decl.worker_tree_args(
        &job.args,
        &job.outputs,
        Path::new("/job/in"),
        Path::new("/job/out"),
    ) {
        return refuse(node, format!("refused {}: {}", p.reason, p.detail));
    }
    // A warm JVM (sandboxed, this peer's own) has a fixed area: the job goes there.
    // A fresh compiler gets the slot's directory.
    let mut lease = None;
    let area = if decl.worker_runs_warm() {
        let home = std::fs::canonicalize(&compiler.path)
            .map(|p| farm::lang::javac::java_home_of(&p))
            .unwrap_or_default();
        match node.jvms.lease(&home, Some(peer)).await {
            Ok(l) => {
                let a = l.area().map(Path::to_path_buf).unwrap_or_default();
                lease = Some(l);
                a
            }
            Err(why) => return refuse(node, format!("{}: {why}", node.name)),
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
    let args = match decl.worker_tree_args(&job.args, &job.outputs, &root, &out) {
        Ok(a) => a,
        Err(p) => return refuse(node, format!("refused {}: {}", p.reason, p.detail)),
    };
    // Inputs are hard links into the blob store; the job sees them only through a
    // read-only mount, so it cannot write through them.
    for f in &job.files {
        let Some(dest) = farm::lang::reroot(&root, &f.path) else {
            cleanup();
            return refuse(node, format!("refused file path {:?}", f.path));
        };
        if let Err(why) = node.blobs.materialize(&f.digest, &dest) {
            cleanup();
            return refuse(node, format!("{}: {why}", node.name));
        }
    }
    if std::fs::create_dir_all(&root).is_err() {
        return refuse(
            node,
            format!("{}: cannot make {}", node.name, root.display()),
        );
    }
    for (role, _) in &job.outputs {
        if std::fs::create_dir_all(out.join(role)).is_err() {
            cleanup();
            return refuse(node, format!("refused output role {role:?}"));
        }
    }
    let t0 = Instant::now();
    let run = match &mut lease {
        Some(l) => node.jvms.run_on(l, &args, node.cfg.job_timeout).await,
        None => run_fresh(node, sandbox, &compiler, &slot.dir, &root, &args).await,
    };
    let run = match run {
        Ok(r) => r,
        Err(why) => {
            drop(lease);
            cleanup();
            return refuse(node, format!("{}: {why}", node.name));
        }
    };
    if let Some(why) = abnormal(run.exit_code) {
        drop(lease);
        cleanup();
        return refuse(node, format!("{}: {why}", node.name));
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
                    return refuse(node, format!("{}: outputs: {e}", node.name));
                }
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
    cleanup();
    if let Some(l) = lease {
        node.jvms.give_back(l).await;
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

/// Reads a file the job wrote: a regular file reached without following a link, at
/// most `cap` bytes.
fn read_output(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > cap {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of at most {cap} bytes",
            path.display()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(meta.len()).read_to_end(&mut data)?;
    Ok(data)
}

/// An exit code other than success or an ordinary compile error (a compiler crash, a
/// limit of the sandbox such as memory) is not passed on as the compile's result: the
/// client compiles at home instead, where the same compile may well succeed.
fn abnormal(exit_code: i32) -> Option<String> {
    (!matches!(exit_code, 0 | 1)).then(|| format!("job ended with exit code {exit_code}"))
}

/// The limits of one job from farmd's configuration.
pub fn job_limits(cfg: &crate::config::DaemonConfig) -> crate::sandbox::Limits {
    crate::sandbox::Limits {
        cpu: cfg.job_timeout,
        memory: cfg.job_memory,
        file_size: cfg.job_file_size,
        output: cfg.job_output_max,
    }
}

/// Runs a tree job's allow-listed compiler as a fresh process in the sandbox, in the
/// job directory's empty `cwd/`, its inputs (`root`) read-only.
async fn run_fresh(
    node: &Node,
    sandbox: &crate::sandbox::Sandbox,
    compiler: &AllowedCompiler,
    dir: &Path,
    root: &Path,
    args: &[String],
) -> Result<crate::sandbox::Run, String> {
    let cwd = dir.join("cwd");
    let tmp = dir.join("tmp");
    for d in [&cwd, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| format!("job directory {}: {e}", d.display()))?;
    }
    let tmp_s = tmp.to_string_lossy().into_owned();
    let view = crate::sandbox::View {
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

/// Runs an allow-listed compiler in the sandbox with this node's job limits.
async fn run_compiler(
    node: &Node,
    sandbox: &crate::sandbox::Sandbox,
    compiler: &AllowedCompiler,
    args: &[String],
    view: &crate::sandbox::View<'_>,
) -> Result<crate::sandbox::Run, String> {
    let limits = job_limits(&node.cfg);
    sandbox
        .run(&compiler.path, args, view, limits, node.cfg.job_timeout)
        .await
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
    // Shipped text is compiler input from someone we do not trust: directives that
    // make the compiler or assembler read files are refused (the sandbox would show
    // them nothing but the toolchain, but such a compile is not worth running here).
    if let Err(p) = family.worker_source_check(&job.source) {
        return refuse(node, format!("refused {}: {}", p.reason, p.detail));
    }
    let slot = match Slot::take(node).await {
        Ok(s) => s,
        Err(why) => return refuse(node, why),
    };
    let Some(sandbox) = &node.sandbox else {
        return refuse(node, format!("{}: no job sandbox", node.name));
    };
    let args: Vec<String> = match args.into_iter().map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(a) => return refuse(node, format!("refused flag: {a:?} is not UTF-8")),
    };
    let result = run_in(
        node,
        sandbox,
        &compiler,
        &slot.dir,
        &input,
        &args,
        &job.source,
    )
    .await;
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

#[allow(clippy::too_many_arguments)]
async fn run_in(
    node: &Node,
    sandbox: &crate::sandbox::Sandbox,
    compiler: &AllowedCompiler,
    dir: &Path,
    input: &str,
    args: &[String],
    source: &[u8],
) -> Result<JobResult, String> {
    let tmp = dir.join("tmp");
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| format!("{}: job directory {}: {e}", node.name, dir.display()))?;
    let input_path = dir.join(input);
    tokio::fs::write(&input_path, source)
        .await
        .map_err(|e| format!("{}: cannot write job input: {e}", node.name))?;
    let tmp_s = tmp.to_string_lossy().into_owned();
    let view = crate::sandbox::View {
        rw: &[dir],
        ro: &[&input_path],
        cwd: dir,
        env: &[
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("TMPDIR", &tmp_s),
            ("LC_ALL", "C"),
        ],
        // Compilers of preprocessed text read nothing of /proc.
        proc: false,
    };
    let out = run_compiler(node, sandbox, compiler, args, &view)
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
    if let Some(why) = abnormal(out.exit_code) {
        return Err(format!("{}: {why}", node.name));
    }
    let compile_ms = out.elapsed.as_millis() as u64;
    let code = out.exit_code;
    let object = if code == 0 {
        read_output(&dir.join("job.o"), (MAX_FRAME - 4096) as u64)
            .map_err(|e| format!("{}: object: {e}", node.name))?
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
