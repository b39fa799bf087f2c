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
use farm::toolchain::valid_path;

use super::root::{job_env, read_output_beneath, Root, Writable};
use super::sandbox::RootedView;
use super::spawn::{abnormal, job_limits};
use super::{refuse, JobSlot, Refusal};
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
    if let Err(why) = node.disk_room() {
        return refuse(node, Refusal::Disk, why);
    }
    let slot = match JobSlot::take(node, &job.family).await {
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
    let env = job_env(&job.env, &job.cwd, &laid.writable.scratch);
    let view = RootedView {
        root: laid.root.clone(),
        rw: laid.writable.rw.clone(),
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
            let Some(host) = laid.writable.output_at.get(o) else {
                continue;
            };
            let left = (MAX_FRAME - (1 << 20)).saturating_sub(total) as u64;
            match read_output_beneath(&host.0, &host.1, left) {
                Ok((data, _)) => {
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
    writable: Writable,
    /// Microseconds to lay out the toolchain, the inputs, and everything.
    timing: [u64; 3],
}

/// Lays out a job's root under `dir`: the toolchain's files (kept by content under
/// the state directory), the inputs from the blob store, the search directories and
/// the cwd, writable directories for the outputs and a scratch one (TMPDIR).
fn lay_out(node: &Node, job: &PathJob, dir: &Path) -> Result<Laid, String> {
    let t0 = Instant::now();
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    let mut root = Root::create(dir)?;
    root.links(
        job.toolchain
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                ToolKind::Link(t) => Some((e.path.as_str(), t.as_str())),
                ToolKind::File { .. } => None,
            })
            .collect(),
    )?;
    // Files go below links laid out above.
    for e in &job.toolchain.entries {
        if let ToolKind::File { digest, exec } = &e.kind {
            let at = root.place(Path::new(&e.path))?;
            // A path laid out twice fails here (the link exists).
            node.toolchains.link_at(digest, *exec, &node.blobs, &at)?;
        }
    }
    let toolchain_us = t0.elapsed().as_micros() as u64;
    let mut placed: HashMap<PathBuf, [u8; 32]> = HashMap::new();
    // The first file of a content is a link into the blob store; the others are
    // copies: files that are distinct at home stay distinct inodes here (clang's
    // `#pragma once` and `#import` tell files apart by inode).
    let mut first_of: HashMap<[u8; 32], PathBuf> = HashMap::new();
    for f in &job.files {
        let at = root.place(Path::new(&f.path))?;
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
        root.dir(Path::new(d))?;
    }
    let outputs: Vec<(String, PathBuf)> = job
        .outputs
        .iter()
        .map(|o| (o.clone(), PathBuf::from(o)))
        .collect();
    let writable = super::root::writable(&root.path, dir, &outputs)?;
    let timing = [toolchain_us, inputs_us, t0.elapsed().as_micros() as u64];
    Ok(Laid {
        root: root.path,
        writable,
        timing,
    })
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
