//! Where a miss runs: the executors the shim chooses from, in order, until one
//! finishes it. A farm peer through the agent (a text job, or a tree job with its
//! input blobs), the agent's warm compiler, and home (a fresh compiler here), which
//! always can. The agent's placement says whether shipping beats home; every way a
//! farm attempt ends short of a result sends the compile home with a counted reason.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use super::farm::Farm;
use super::{emit, exit_code, Ctx};
use crate::fsutil;
use crate::lang::{self, CompileRun, Declared, Observed, TreeArgs};
use crate::protocol::{
    AgentRequest, AgentResponse, Blob, CompilerAd, Job, JobShape, TreeFile, TreeJob,
};
use crate::stats::Outcome;

/// Blobs per request to the agent: well under a frame's limit.
pub(super) const BLOB_BATCH: usize = 16 << 20;

/// How a farm attempt ended.
pub(super) enum Remote<T> {
    /// A peer (or the warm compiler) finished it.
    Done(T),
    /// Compile at home. `prepared`: the farm's preprocessor run already wrote the
    /// dependency file.
    Home { prepared: bool },
}

/// Why a compile that ran outside this process (warm compiler, peer) cannot stand
/// for a fresh compiler here, if it cannot: it failed (the real compiler shows that
/// in its own words), or it printed messages that could differ (paths made absolute,
/// text a non-UTF-8 locale would show otherwise).
fn untrusted(
    exit_code: i32,
    stdout: &[u8],
    stderr: &[u8],
    paths_rewritten: bool,
) -> Option<&'static str> {
    let printed = !stdout.is_empty() || !stderr.is_empty();
    if exit_code != 0 {
        Some("failed")
    } else if printed && paths_rewritten {
        Some("diagnostics_paths")
    } else if printed && !(stdout.is_ascii() && stderr.is_ascii()) {
        Some("non_ascii_output")
    } else {
        None
    }
}

/// Counts the agent's reason for sending a shipped compile home: peers failed
/// (`fallback.<why>`, the agent tried two: one fallback) or placement chose home.
pub(super) fn count_sent_home(ctx: &mut Ctx, reason: &str) {
    let o = match reason.strip_prefix("fallback.") {
        Some(why) => Outcome::Fallback(why.to_string().into()),
        None => Outcome::FarmHome(reason.to_string().into()),
    };
    ctx.tally.count(o);
}

/// This compile's compiler as jobs name it: argv[0]'s name and its identity.
fn compiler_ad(ctx: &Ctx) -> CompilerAd {
    CompilerAd {
        name: Path::new(&ctx.inv.arg0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        identity: ctx.identity,
    }
}

/// Asks the agent's placement whether this compile should ship, and in which shape
/// first (`None`: the agent does not say). `Err`: compile at home (counted; the
/// agent reserves home's slot when it said so).
fn placed_remote(
    ctx: &mut Ctx,
    farm: &Farm,
    compiler: &CompilerAd,
) -> Result<Option<JobShape>, ()> {
    let place = AgentRequest::Place {
        compiler: compiler.clone(),
    };
    match farm.ask(&place) {
        Some(AgentResponse::Ship) => Ok(None),
        Some(AgentResponse::ShipAs(shape)) => Ok(Some(shape)),
        Some(AgentResponse::Local(reason)) => {
            ctx.tally.count(Outcome::FarmHome(reason.into()));
            farm.set_reserved(true);
            Err(())
        }
        Some(_) => {
            farm.off_protocol();
            Err(())
        }
        None => Err(()),
    }
}

/// A home compile of an observed family, with the observation arguments when
/// `observe`. A spawn failure runs the real compiler as it is (its exit code).
pub(super) fn home_compile(
    ctx: &mut Ctx,
    obs: &dyn Observed,
    observe: bool,
) -> Result<CompileRun, i32> {
    match obs.compile(&ctx.inv, observe) {
        Ok(run) => Ok(run),
        Err(e) => {
            tracing::warn!(error = %e, "cannot run compiler");
            obs.cleanup(&ctx.inv);
            ctx.tally.count(Outcome::Passthrough("spawn_failed".into()));
            Err(ctx.run_real())
        }
    }
}

/// A home compile that passes its output on and is counted. A failed compile ends
/// here with the compiler's exit code (never cached).
pub(super) fn home_miss(
    ctx: &mut Ctx,
    obs: &dyn Observed,
    observe: bool,
) -> Result<CompileRun, i32> {
    let run = home_compile(ctx, obs, observe)?;
    emit(&run.stdout, &run.stderr);
    if !run.status.success() {
        obs.cleanup(&ctx.inv);
        ctx.tally.count(Outcome::CompileFailed);
        return Err(exit_code(run.status));
    }
    ctx.tally.count(Outcome::Miss);
    ctx.tally
        .add(Outcome::CompileMs, run.elapsed.as_millis() as u64);
    Ok(run)
}

/// A miss of an observed family on a peer when placement says so: a same-path job
/// when the family and this compile allow one (no preprocessor run here), else a
/// text job (not when `!text_ok`: depend mode runs no preprocessor). `Done` with the
/// result entry once the outputs are written here.
pub(super) fn remote_observed(ctx: &mut Ctx, farm: &Farm, text_ok: bool) -> Remote<Vec<u8>> {
    let home = |prepared| Remote::Home { prepared };
    if !farm.up() {
        return home(false);
    }
    let path_jobs = ctx
        .family
        .path_jobs()
        .filter(|pj| match pj.path_allowed(&ctx.inv) {
            Ok(()) => true,
            Err(p) => {
                tracing::debug!(reason = p.reason, detail = %p.detail, "no same-path job");
                false
            }
        });
    let text_allowed = match ctx.family.text_jobs() {
        Some(_) if !text_ok => Err(lang::Passthrough::new("depend_mode", "")),
        Some(t) => t.allowed(&ctx.inv),
        None => Err(lang::Passthrough::new("family", ctx.family.name())),
    };
    if path_jobs.is_none() {
        if let Err(p) = &text_allowed {
            tracing::info!(reason = p.reason, detail = %p.detail, "compiled at home");
            ctx.tally.count(Outcome::FarmHome(p.reason.into()));
            return home(false);
        }
    }
    let compiler = compiler_ad(ctx);
    let Ok(shape) = placed_remote(ctx, farm, &compiler) else {
        return home(false);
    };
    let t0 = std::time::Instant::now();
    // What a shape cost this machine: the wall time from placement's answer to the
    // outputs written, less the worker's compile (the same in either shape).
    let measured = |ctx: &Ctx, shape: JobShape, r: &Remote<Vec<u8>>| {
        if let Remote::Done(_) = r {
            let wall = t0.elapsed().as_millis() as u64;
            let ms = wall
                .saturating_sub(ctx.remote_compile_ms)
                .min(u32::MAX as u64) as u32;
            let m = AgentRequest::Measured {
                compiler: ctx.identity,
                shape,
                ms,
            };
            // Only a newer agent knows the request: an older one's answer is ignored.
            let _ = farm.ask(&m);
        }
    };
    // Text first where placement found it cheaper and this compile allows it.
    let text_first = shape == Some(JobShape::Text) && text_allowed.is_ok();
    if text_first {
        let r = ship_text(ctx, farm, compiler);
        measured(ctx, JobShape::Text, &r);
        return r;
    }
    if let Some(pj) = path_jobs {
        match super::path_job::ship(ctx, farm, pj, &compiler) {
            super::path_job::PathAttempt::Ran(r) => {
                measured(ctx, JobShape::Paths, &r);
                return r;
            }
            super::path_job::PathAttempt::NotPath(p) => {
                tracing::info!(reason = p.reason, detail = %p.detail, "no same-path job");
                if text_allowed.is_err() {
                    ctx.tally.count(Outcome::FarmHome(p.reason.into()));
                    return home(false);
                }
            }
        }
    }
    let r = ship_text(ctx, farm, compiler);
    measured(ctx, JobShape::Text, &r);
    r
}

/// A text job on a peer (the family's self-contained text: gcc's preprocessed
/// source): `Done` with the result entry once the outputs are written here.
pub(super) fn remote_text(ctx: &mut Ctx, farm: &Farm) -> Remote<Vec<u8>> {
    let home = |prepared| Remote::Home { prepared };
    if !farm.up() {
        return home(false);
    }
    let text_jobs = ctx.family.text_jobs();
    let allowed = match text_jobs {
        Some(t) => t.allowed(&ctx.inv),
        None => Err(lang::Passthrough::new("family", ctx.family.name())),
    };
    if let Err(p) = allowed {
        tracing::info!(reason = p.reason, detail = %p.detail, "compiled at home");
        ctx.tally.count(Outcome::FarmHome(p.reason.into()));
        return home(false);
    }
    let compiler = compiler_ad(ctx);
    if placed_remote(ctx, farm, &compiler).is_err() {
        return home(false);
    }
    ship_text(ctx, farm, compiler)
}

/// A text job once placement said to ship it.
fn ship_text(ctx: &mut Ctx, farm: &Farm, compiler: CompilerAd) -> Remote<Vec<u8>> {
    let home = |prepared| Remote::Home { prepared };
    let text_jobs = ctx.family.text_jobs();
    let prepared = match text_jobs {
        Some(t) => t.prepare(&ctx.inv),
        None => Ok(Err(lang::Passthrough::new("family", ctx.family.name()))),
    };
    let job = match prepared {
        Ok(Ok(j)) => j,
        // A preprocessor error is the compiler's to report, from a real compile.
        Ok(Err(p)) => {
            ctx.tally.count(Outcome::FarmHome(p.reason.into()));
            return home(false);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run the preprocessor for the farm");
            ctx.tally.count(Outcome::Fallback("preprocessor".into()));
            return home(false);
        }
    };
    let outputs = job.outputs;
    let job = Job {
        family: ctx.family.name().to_string(),
        compiler,
        input: job.input,
        args: job.args,
        source: job.text,
        outputs: outputs.iter().map(|o| o.name.clone()).collect(),
    };
    let asked = ctx.t0.elapsed();
    let answer = farm.ask(&AgentRequest::Compile(job));
    let answered = ctx.t0.elapsed();
    match answer {
        Some(AgentResponse::Compiled(r)) => {
            if r.exit_code != 0 || !r.stdout.is_empty() || !r.stderr.is_empty() {
                // The compiler's messages must be its own, from this machine
                // (source lines, colours, paths): compile here to show them.
                tracing::info!(worker = %r.worker, exit = r.exit_code, "remote compile had diagnostics: compiling here");
                ctx.tally.count(Outcome::FarmHome("diagnostics".into()));
                return home(true);
            }
            // Every file the job named, once, and nothing else.
            let complete = r.outputs.len() == outputs.len()
                && outputs
                    .iter()
                    .all(|o| r.outputs.iter().filter(|f| f.path == o.name).count() == 1);
            if !complete {
                tracing::warn!(worker = %r.worker, "remote outputs do not match the job");
                ctx.tally.count(Outcome::Fallback("bad_output".into()));
                return home(true);
            }
            for o in &outputs {
                let Some(f) = r.outputs.iter().find(|f| f.path == o.name) else {
                    continue;
                };
                if let Err(e) = fsutil::write_atomic(&o.path, &f.data) {
                    tracing::warn!(path = %o.path.display(), error = %e, "cannot write remote output");
                    ctx.tally.count(Outcome::Fallback("write_output".into()));
                    return home(true);
                }
            }
            let Some(payload) = ctx.payload_from_disk(&[], &[], r.compile_ms) else {
                return home(true);
            };
            ctx.tally.count(Outcome::Miss);
            ctx.tally.count(Outcome::FarmRemote);
            ctx.tally.add(Outcome::CompileMs, r.compile_ms);
            ctx.remote_compile_ms = r.compile_ms;
            ctx.ran_on = Some(r.worker.clone());
            tracing::info!(
                worker = %r.worker,
                ms = r.compile_ms,
                asked_at_us = asked.as_micros() as u64,
                answered_at_us = answered.as_micros() as u64,
                "compiled by a peer"
            );
            Remote::Done(payload)
        }
        Some(AgentResponse::Local(reason)) => {
            tracing::info!(reason, "agent: compile at home");
            count_sent_home(ctx, &reason);
            farm.set_reserved(true);
            home(true)
        }
        Some(_) => {
            farm.off_protocol();
            home(true)
        }
        None => home(true),
    }
}

/// Compiles a declared-input miss into `dirs`: on a peer when placement says so, in
/// the agent's warm compiler when it can take it and the result is certain to be what
/// a fresh compiler gives, else here. `Err`: the compiler failed (its exit code).
pub(super) fn declared(
    ctx: &mut Ctx,
    farm: &Farm,
    decl: &dyn Declared,
    files: &[(PathBuf, [u8; 32])],
    dirs: &[PathBuf],
    scratch: &Path,
) -> Result<CompileRun, i32> {
    if farm.up() {
        let tree = match ctx.family.tree_jobs() {
            Some(t) => t.tree_args(&ctx.inv, dirs),
            None => Err(lang::Passthrough::new("family", ctx.family.name())),
        };
        match tree {
            Err(p) => {
                tracing::info!(reason = p.reason, detail = %p.detail, "not warm");
                ctx.tally.count(Outcome::WarmDeclined(p.reason.into()));
                ctx.tally.count(Outcome::FarmHome(p.reason.into()));
            }
            Ok(tree) => {
                if let Remote::Done(run) = remote_tree(ctx, farm, &tree, files, dirs) {
                    return Ok(run);
                }
                if farm.up() {
                    if let Remote::Done(run) = warm(ctx, farm, dirs) {
                        return Ok(run);
                    }
                }
            }
        }
    }
    fresh(ctx, decl, dirs, scratch)
}

/// The agent's warm compiler (this machine's farmd user only), for a family that has
/// one.
fn warm(ctx: &mut Ctx, farm: &Farm, dirs: &[PathBuf]) -> Remote<CompileRun> {
    let home = Remote::Home { prepared: false };
    let Some(warm) = ctx.family.warm() else {
        return home;
    };
    let job = match warm.warm_job(&ctx.inv, dirs) {
        Ok(j) => j,
        Err(p) => {
            ctx.tally.count(Outcome::WarmDeclined(p.reason.into()));
            return home;
        }
    };
    let t0 = std::time::Instant::now();
    let started_ns = fsutil::now_ns();
    let req = AgentRequest::Warm {
        family: ctx.family.name().to_string(),
        home: job.installation.to_string_lossy().into_owned(),
        args: job.args,
    };
    match farm.ask(&req) {
        Some(AgentResponse::Compiled(r)) => {
            match untrusted(r.exit_code, &r.stdout, &r.stderr, job.paths_rewritten) {
                None => {
                    emit(&r.stdout, &r.stderr);
                    ctx.tally.count(Outcome::Miss);
                    ctx.tally.count(Outcome::WarmCompiled);
                    ctx.tally.add(Outcome::CompileMs, r.compile_ms);
                    return Remote::Done(CompileRun {
                        status: ExitStatusExt::from_raw(0),
                        stdout: r.stdout,
                        stderr: r.stderr,
                        elapsed: t0.elapsed(),
                        started_ns,
                    });
                }
                Some(why) => {
                    ctx.tally.count(Outcome::WarmDeclined(why.into()));
                    for d in dirs {
                        let _ = std::fs::remove_dir_all(d);
                        let _ = std::fs::create_dir_all(d);
                    }
                }
            }
        }
        Some(AgentResponse::Local(reason)) => {
            tracing::info!(reason, "agent: no warm compiler");
            ctx.tally.count(Outcome::WarmDeclined(reason.into()));
        }
        Some(_) => farm.off_protocol(),
        None => {}
    }
    Remote::Home { prepared: false }
}

/// Compiles a declared-input miss here with a fresh compiler process.
fn fresh(
    ctx: &mut Ctx,
    decl: &dyn Declared,
    dirs: &[PathBuf],
    scratch: &Path,
) -> Result<CompileRun, i32> {
    let run = match decl.compile_into(&ctx.inv, dirs, scratch) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot run compiler");
            ctx.tally.count(Outcome::Passthrough("spawn_failed".into()));
            return Err(ctx.run_real());
        }
    };
    emit(&run.stdout, &run.stderr);
    if !run.status.success() {
        ctx.tally.count(Outcome::CompileFailed);
        return Err(exit_code(run.status));
    }
    ctx.tally.count(Outcome::Miss);
    ctx.tally
        .add(Outcome::CompileMs, run.elapsed.as_millis() as u64);
    Ok(run)
}

/// Ships a declared-input miss to a peer when the agent's placement says so. Its
/// inputs go as blobs the agent lacks (the agent forwards those its peer lacks); the
/// outputs land in `dirs`.
fn remote_tree(
    ctx: &mut Ctx,
    farm: &Farm,
    job: &TreeArgs,
    files: &[(PathBuf, [u8; 32])],
    dirs: &[PathBuf],
) -> Remote<CompileRun> {
    let home = Remote::Home { prepared: false };
    let compiler = compiler_ad(ctx);
    if placed_remote(ctx, farm, &compiler).is_err() {
        return home;
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut tree_files = Vec::with_capacity(files.len());
    let mut local_of = std::collections::HashMap::new();
    for (p, d) in files {
        let abs = fsutil::clean_path(&cwd.join(p));
        tree_files.push(TreeFile {
            path: abs.to_string_lossy().into_owned(),
            digest: *d,
        });
        local_of.insert(*d, p.clone());
    }
    let mut digests: Vec<[u8; 32]> = local_of.keys().copied().collect();
    digests.sort();
    let missing = match farm.ask(&AgentRequest::MissingBlobs(digests)) {
        Some(AgentResponse::MissingBlobs(m)) => m,
        Some(_) => {
            farm.off_protocol();
            return home;
        }
        None => return home,
    };
    let mut batch = Vec::new();
    let mut batch_bytes = 0usize;
    for d in missing {
        let Some(p) = local_of.get(&d) else { continue };
        let Ok(data) = fsutil::read_file(p) else {
            return home;
        };
        if *blake3::hash(&data).as_bytes() != d {
            // Changed since it was keyed: this compile must read it here.
            ctx.tally.count(Outcome::FarmHome("input_changed".into()));
            return home;
        }
        batch_bytes += data.len();
        batch.push(Blob { digest: d, data });
        if batch_bytes > BLOB_BATCH {
            if !send_blobs(farm, std::mem::take(&mut batch)) {
                return home;
            }
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() && !send_blobs(farm, batch) {
        return home;
    }
    let tree = TreeJob {
        family: ctx.family.name().to_string(),
        compiler,
        args: job.args.clone(),
        outputs: ctx
            .inv
            .outputs
            .iter()
            .zip(dirs)
            .map(|(o, d)| (o.role.to_string(), d.to_string_lossy().into_owned()))
            .collect(),
        files: tree_files,
    };
    let t0 = std::time::Instant::now();
    let started_ns = fsutil::now_ns();
    let r = match farm.ask(&AgentRequest::CompileTree(tree)) {
        Some(AgentResponse::TreeCompiled(r)) => r,
        Some(AgentResponse::Local(reason)) => {
            count_sent_home(ctx, &reason);
            farm.set_reserved(true);
            return home;
        }
        Some(_) => {
            farm.off_protocol();
            return home;
        }
        None => return home,
    };
    if let Some(why) = untrusted(r.exit_code, &r.stdout, &r.stderr, job.paths_rewritten) {
        tracing::info!(worker = %r.worker, why, "remote compile not used: compiling here");
        ctx.tally.count(Outcome::FarmHome(why.into()));
        farm.set_reserved(false);
        return home;
    }
    for o in &r.outputs {
        let placed = o.path.split_once('/').and_then(|(role, rel)| {
            let i = ctx.inv.outputs.iter().position(|x| x.role == role)?;
            Some(dirs[i].join(super::declared::safe_relative(rel)?))
        });
        let Some(path) = placed else {
            ctx.tally.count(Outcome::Fallback("bad_output".into()));
            farm.set_reserved(false);
            return home;
        };
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(&path, &o.data));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write remote output");
            ctx.tally.count(Outcome::Fallback("write_output".into()));
            farm.set_reserved(false);
            return home;
        }
    }
    emit(&r.stdout, &r.stderr);
    ctx.tally.count(Outcome::Miss);
    ctx.tally.count(Outcome::FarmRemote);
    ctx.tally.add(Outcome::CompileMs, r.compile_ms);
    ctx.ran_on = Some(r.worker.clone());
    tracing::info!(worker = %r.worker, ms = r.compile_ms, files = files.len(), "compiled by a peer");
    Remote::Done(CompileRun {
        status: ExitStatusExt::from_raw(0),
        stdout: r.stdout,
        stderr: r.stderr,
        elapsed: t0.elapsed(),
        started_ns,
    })
}

pub(super) fn send_blobs(farm: &Farm, blobs: Vec<Blob>) -> bool {
    match farm.ask(&AgentRequest::PutBlobs(blobs)) {
        Some(AgentResponse::Published) => true,
        Some(_) => {
            farm.off_protocol();
            false
        }
        None => false,
    }
}
