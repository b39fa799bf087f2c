//! Same-path jobs: a compile run at the sender's absolute paths. The job's root holds
//! its toolchain (hard links into the laid-out package) and its inputs (hard links
//! into the blob store) where the sender has them, and nothing else of this machine;
//! the sandbox sees that root read-only as `/`, with a fresh writable directory bound
//! over each directory an output goes to (holding copies of the inputs there) and over
//! a scratch directory of its own (its TMPDIR). What comes back is the outputs the job
//! named, read without following links.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use farm::protocol::{OutputFile, PathJob, PeerResponse, ToolKind, TreeResult, MAX_FRAME};
use farm::toolchain::{resolve_dir_in_root, resolve_in_root, valid_path};

use super::sandbox::RootedView;
use super::spawn::{abnormal, job_limits};
use super::{refuse, Refusal, Slot};
use crate::node::Node;

/// Most input files one job may name.
const MAX_FILES: usize = 100_000;

/// Runs one same-path job for `peer`.
pub async fn run_paths(node: &Node, peer: &str, job: PathJob) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, Refusal::Stopping, format!("{}: stopping", node.name));
    }
    let Some(family) = farm::lang::family_by_name(&job.family) else {
        return refuse(
            node,
            Refusal::Family,
            format!("unknown family {:?}", job.family),
        );
    };
    let Some(path_jobs) = family.path_jobs() else {
        return refuse(
            node,
            Refusal::Family,
            format!("no same-path jobs for {:?}", job.family),
        );
    };
    if let Err(why) = check_job(&job) {
        return refuse(node, Refusal::Request, format!("refused job: {why}"));
    }
    let digest = farm::toolchain::digest(&job.toolchain);
    if !node.toolchains.runs(&job.toolchain, &digest) {
        return refuse(
            node,
            Refusal::Toolchain,
            format!(
                "{}: toolchain {} is not one of this node's (accept_toolchains = false)",
                node.name,
                farm::fsutil::hex(&digest[..8])
            ),
        );
    }
    if let Err(p) = path_jobs.worker_path_check(
        Path::new(&job.toolchain.driver),
        &job.arg0,
        &job.args,
        Path::new(&job.cwd),
        &job.outputs,
        &job.env,
    ) {
        return refuse(
            node,
            Refusal::Arguments,
            format!("refused {}: {}", p.reason, p.detail),
        );
    }
    let Some(sandbox) = node.sandbox.clone() else {
        return refuse(
            node,
            Refusal::NoSandbox,
            format!("{}: no job sandbox", node.name),
        );
    };
    let slot = match Slot::take(node, &job.family).await {
        Ok(s) => s,
        Err(why) => return refuse(node, Refusal::Busy, why),
    };
    let t_setup = Instant::now();
    let laid = tokio::task::block_in_place(|| lay_out(node, &job, &slot.dir));
    let laid = match laid {
        Ok(l) => l,
        Err(why) => return refuse(node, Refusal::Inputs, format!("{}: {why}", node.name)),
    };
    let setup_ms = t_setup.elapsed().as_millis() as u64;
    let mut env: Vec<(String, String)> = job.env.clone();
    env.retain(|(k, _)| !matches!(k.as_str(), "PWD" | "TMPDIR" | "HOME"));
    env.push(("PWD".into(), job.cwd.clone()));
    env.push(("TMPDIR".into(), laid.scratch.clone()));
    env.push(("HOME".into(), laid.scratch.clone()));
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    let view = RootedView {
        root: laid.root.clone(),
        rw: laid.rw.clone(),
        cwd: job.cwd.clone(),
        env,
        // No /proc (a mount less per job): clang then finds its resource directory
        // from argv[0] on PATH, which the package lays out as at home.
        proc: false,
    };
    let t0 = Instant::now();
    let limits = job_limits(&node.cfg);
    let run = sandbox
        .run_rooted(&job.arg0, &job.args, &view, limits, node.cfg.job_timeout)
        .await;
    let run = match run {
        Ok(r) => r,
        Err(why) => return refuse(node, Refusal::Sandbox, format!("{}: {why}", node.name)),
    };
    if let Some(why) = abnormal(run.exit_code) {
        return refuse(node, Refusal::Sandbox, format!("{}: {why}", node.name));
    }
    let compile_ms = t0.elapsed().as_millis() as u64;
    let mut outputs = Vec::new();
    let mut total = 0usize;
    if run.exit_code == 0 {
        for o in &job.outputs {
            let Some(host) = laid.output_at.get(o) else {
                continue;
            };
            let left = (MAX_FRAME - (1 << 20)).saturating_sub(total) as u64;
            match read_output_beneath(&host.0, &host.1, left) {
                Ok(data) => {
                    total += data.len();
                    outputs.push(OutputFile {
                        path: o.clone(),
                        data,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return refuse(
                        node,
                        Refusal::Outputs,
                        format!("{}: output {o}: {e}", node.name),
                    )
                }
            }
        }
    }
    drop(slot);
    node.jobs_served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        peer,
        ms = compile_ms,
        setup_ms,
        toolchain_us = laid.timing[0],
        inputs_us = laid.timing[1],
        layout_us = laid.timing[2],
        exit = run.exit_code,
        files = job.files.len(),
        "same-path job done"
    );
    PeerResponse::TreeDone(TreeResult {
        exit_code: run.exit_code,
        stdout: run.stdout,
        stderr: run.stderr,
        outputs,
        compile_ms,
        worker: node.name.clone(),
    })
}

/// Checks what a job names before anything is laid out: every path absolute and
/// clean, bounded counts, no output that is also an input or the toolchain's.
fn check_job(job: &PathJob) -> Result<(), String> {
    farm::toolchain::check(&job.toolchain).map_err(|e| e.to_string())?;
    if job.files.len() > MAX_FILES || job.dirs.len() > 4096 || job.outputs.len() > 64 {
        return Err("too many files".into());
    }
    if job.arg0.is_empty() || job.arg0.contains('\0') {
        return Err(format!("argv[0] {:?}", job.arg0));
    }
    for p in job
        .files
        .iter()
        .map(|f| &f.path)
        .chain(&job.dirs)
        .chain(&job.outputs)
        .chain(std::iter::once(&job.cwd))
    {
        if !valid_path(p) {
            return Err(format!("path {p:?}"));
        }
    }
    for o in &job.outputs {
        if job.files.iter().any(|f| f.path == *o)
            || job.toolchain.entries.iter().any(|e| e.path == *o)
        {
            return Err(format!("output {o:?} is an input"));
        }
    }
    Ok(())
}

/// A job's root and the binds over it.
struct Laid {
    root: PathBuf,
    rw: Vec<(PathBuf, String)>,
    /// Each output path of the job: where the job's write of it lands here, as the
    /// writable directory and the path below it (the job may have replaced any
    /// directory below with a link, so it is walked without following links).
    output_at: HashMap<String, (PathBuf, PathBuf)>,
    /// Microseconds to lay out the toolchain, the inputs, and everything.
    timing: [u64; 3],
    /// The job's TMPDIR (a writable directory of its own, in the job's paths).
    scratch: String,
}

/// Lays out a job's root under `dir`: the toolchain's files (kept by content under
/// the state directory), the inputs from the blob store, the search directories and
/// the cwd, writable directories for the outputs and a scratch one (TMPDIR).
fn lay_out(node: &Node, job: &PathJob, dir: &Path) -> Result<Laid, String> {
    let t0 = Instant::now();
    let root = dir.join("root");
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
    for d in ["dev", "proc"] {
        std::fs::create_dir(root.join(d)).map_err(|e| io(&root, e))?;
    }
    // Links first, shallowest first, so that paths below them resolve through them.
    let mut links: Vec<(&str, &str)> = job
        .toolchain
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            ToolKind::Link(t) => Some((e.path.as_str(), t.as_str())),
            ToolKind::File { .. } => None,
        })
        .collect();
    links.sort_by_key(|(p, _)| p.matches('/').count());
    for (path, target) in links {
        let p = Path::new(path);
        let at = resolve_in_root(&root, p, true).map_err(|e| io(p, e))?;
        if std::fs::symlink_metadata(&at).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &at).map_err(|e| io(p, e))?;
    }
    // Files go below links laid out above: each directory is resolved once.
    let mut dirs_at: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut place = |path: &Path| -> std::io::Result<PathBuf> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return resolve_in_root(&root, path, true);
        };
        if let Some(d) = dirs_at.get(parent) {
            return Ok(d.join(name));
        }
        let d = resolve_dir_in_root(&root, parent, true)?;
        let at = d.join(name);
        dirs_at.insert(parent.to_path_buf(), d);
        Ok(at)
    };
    for e in &job.toolchain.entries {
        if let ToolKind::File { digest, exec } = &e.kind {
            let file = node.toolchains.file_at(digest, *exec, &node.blobs)?;
            let at = place(Path::new(&e.path)).map_err(|err| io(Path::new(&e.path), err))?;
            // A path laid out twice fails here (the link exists).
            std::fs::hard_link(&file, &at).map_err(|err| io(&at, err))?;
        }
    }
    let toolchain_us = t0.elapsed().as_micros() as u64;
    let mut placed: HashMap<PathBuf, [u8; 32]> = HashMap::new();
    // The first file of a content is a link into the blob store; the others are
    // copies: files that are distinct at home stay distinct inodes here (clang's
    // `#pragma once` and `#import` tell files apart by inode).
    let mut first_of: HashMap<[u8; 32], PathBuf> = HashMap::new();
    for f in &job.files {
        let at = place(Path::new(&f.path)).map_err(|e| io(Path::new(&f.path), e))?;
        if let Some(d) = placed.get(&at) {
            if *d != f.digest {
                return Err(format!("input {} is two different files", f.path));
            }
            continue;
        }
        match first_of.get(&f.digest) {
            Some(first) => {
                if std::fs::symlink_metadata(&at).is_ok() {
                    return Err(format!("input {} is a toolchain file", f.path));
                }
                std::fs::copy(first, &at).map_err(|e| io(&at, e))?;
            }
            // Laid out already (a toolchain file): the link fails with "twice".
            None => {
                node.blobs
                    .materialize(&f.digest, &at)
                    .map_err(|e| format!("input {}: {e}", f.path))?;
                first_of.insert(f.digest, at.clone());
            }
        }
        if !node.toolchains.accept && is_elf(&at) {
            return Err(format!(
                "input {} is an executable or library (accept_toolchains = false: \
                 jobs run only this node's own code)",
                f.path
            ));
        }
        placed.insert(at, f.digest);
    }
    let inputs_us = t0.elapsed().as_micros() as u64 - toolchain_us;
    for d in job.dirs.iter().chain(std::iter::once(&job.cwd)) {
        resolve_dir_in_root(&root, Path::new(d), true).map_err(|e| io(Path::new(d), e))?;
    }
    // Writable directories: the scratch one, and each output's directory not inside
    // another.
    // The compiler's own scratch directory (TMPDIR): a fresh name no path of the
    // sender's can be, so that a source tree under /tmp is not made writable (and
    // copied) with it.
    let scratch = format!(
        "/tmp/.farm-job-{}",
        farm::fsutil::hex(&blake3::hash(dir.as_os_str().as_encoded_bytes()).as_bytes()[..8])
    );
    let scratch_at =
        resolve_dir_in_root(&root, Path::new(&scratch), true).map_err(|e| io(&root, e))?;
    let mut out_dirs: Vec<PathBuf> = vec![scratch_at];
    let mut output_parent: Vec<(String, PathBuf)> = Vec::new();
    for o in &job.outputs {
        let p = Path::new(o);
        let parent = resolve_dir_in_root(&root, p.parent().unwrap_or(Path::new("/")), true)
            .map_err(|e| io(p, e))?;
        output_parent.push((o.clone(), parent.join(p.file_name().unwrap_or_default())));
        out_dirs.push(parent);
    }
    out_dirs.sort_by_key(|d| d.as_os_str().len());
    let mut bound: Vec<PathBuf> = Vec::new();
    for d in out_dirs {
        if !bound.iter().any(|b| d.starts_with(b)) {
            bound.push(d);
        }
    }
    let mut rw = Vec::new();
    let mut copied = 0u64;
    let mut host_of: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (n, d) in bound.iter().enumerate() {
        let host = dir.join(format!("w{n}"));
        std::fs::create_dir(&host).map_err(|e| io(&host, e))?;
        let inside = in_job(&root, d);
        // What the root holds there stays visible: directories and links made, files
        // copied.
        mirror(d, &host, &mut copied)?;
        rw.push((host.clone(), inside));
        host_of.push((d.clone(), host));
    }
    let timing = [toolchain_us, inputs_us, t0.elapsed().as_micros() as u64];
    let mut output_at = HashMap::new();
    for (o, at) in output_parent {
        if let Some((d, host)) = host_of.iter().find(|(d, _)| at.starts_with(d)) {
            if let Ok(rel) = at.strip_prefix(d) {
                output_at.insert(o, (host.clone(), rel.to_path_buf()));
            }
        }
    }
    Ok(Laid {
        root,
        rw,
        output_at,
        timing,
        scratch,
    })
}

/// The path inside the job of `at`, a path under `root`.
fn in_job(root: &Path, at: &Path) -> String {
    let rel = at.strip_prefix(root).unwrap_or(Path::new(""));
    format!("/{}", rel.display())
}

/// Re-creates under `host` what the root holds under `dir`: directories and links as
/// they are, each file as an empty one with the root's file bound read-only over it.
/// Bytes of copies one job's writable directories may hold before it runs: an output
/// in `/` or a toolchain directory would otherwise copy the whole root per job.
const MIRROR_MAX: u64 = 256 << 20;

fn mirror(dir: &Path, host: &Path, copied: &mut u64) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let from = e.path();
        let to = host.join(e.file_name());
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(|e| format!("{}: {e}", to.display()))?;
            mirror(&from, &to, copied)?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&from).map_err(|e| format!("{}: {e}", from.display()))?;
            std::os::unix::fs::symlink(t, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        } else {
            // A copy, never a link: the job may write here, and a link would write
            // through to the blob store. A bind mount per file would cost bubblewrap
            // a mount each (a source tree under /tmp holds hundreds).
            *copied += std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
            if *copied > MIRROR_MAX {
                return Err(format!(
                    "output directories hold more than {MIRROR_MAX} bytes of inputs"
                ));
            }
        }
    }
    Ok(())
}

/// Reads the output at `rel` below the writable directory `base` (a directory this
/// node made), following no link on the way: the job ran with that directory writable
/// and may have turned any directory below it, or the file itself, into a link to a
/// file of this machine (its key), which farmd could read where the job cannot.
/// Only a regular file of at most `cap` bytes is read.
fn read_output_beneath(base: &Path, rel: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::ffi::CString;
    use std::io::Read as _;
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let cstr = |p: &std::ffi::OsStr| {
        CString::new(p.as_bytes()).map_err(|_| std::io::Error::other("NUL in a path"))
    };
    let open = |dir: libc::c_int, name: &CString, flags: libc::c_int| {
        // SAFETY: `name` is a valid C string; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    };
    use std::os::fd::AsRawFd as _;
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(std::io::Error::other(format!(
                "output path {} is not plain",
                rel.display()
            ))),
        })
        .collect::<Result<_, _>>()?;
    let Some((file, dirs)) = names.split_last() else {
        return Err(std::io::Error::other("empty output path"));
    };
    let mut dir = open(
        libc::AT_FDCWD,
        &cstr(base.as_os_str())?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )?;
    for d in dirs {
        dir = open(
            dir.as_raw_fd(),
            &cstr(d)?,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
    }
    // O_NONBLOCK: a FIFO the job left there must not block farmd's open.
    let fd = open(
        dir.as_raw_fd(),
        &cstr(file)?,
        libc::O_RDONLY | libc::O_NONBLOCK,
    )?;
    let f = std::fs::File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > cap {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of at most {cap} bytes",
            base.join(rel).display()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(meta.len()).read_to_end(&mut data)?;
    Ok(data)
}

/// Whether the file at `p` is an ELF object: what the loader (`/etc/ld.so.preload`),
/// libc (iconv modules) or a compiler (plugins named in a `specs` file) could be made
/// to load as code if a job laid it out where they look.
fn is_elf(p: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}
