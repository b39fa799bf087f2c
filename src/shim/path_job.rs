//! A same-path job: a miss of an observed family (gcc, clang) compiled on a peer at
//! the same absolute paths, so debug information, coverage notes, split DWARF and the
//! compiler's messages are the ones a home compile gives, with no preprocessor run
//! here. The inputs (every file an include can reach) and the compiler's toolchain
//! travel as blobs the farm does not hold yet. A result is used only when every input
//! is still what was sent once it is back: an edit while it ran sends the compile
//! home.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::exec::{count_sent_home, send_blobs, Remote, BLOB_BATCH};
use super::farm::Farm;
use super::{emit, Ctx};
use crate::lang::{Passthrough, PathJobs};
use crate::protocol::{
    AgentRequest, AgentResponse, Blob, CompilerAd, PathJob, ToolKind, TreeFile, MAX_FRAME,
};
use crate::stats::Outcome;
use crate::{digest, fsutil, toolchain};

/// How a same-path attempt ended.
pub(super) enum PathAttempt {
    /// Done on a peer, or sent home (counted).
    Ran(Remote<Vec<u8>>),
    /// This compile cannot be a same-path job (nothing counted): another shape may.
    NotPath(Passthrough),
}

/// Whether messages printed under this process's locale are those of the worker's
/// (which has no locale files): the C locales only.
fn c_locale() -> bool {
    ["LC_ALL", "LC_MESSAGES", "LC_CTYPE", "LANG"]
        .iter()
        .filter_map(std::env::var_os)
        .all(|v| matches!(v.to_str(), Some("" | "C" | "POSIX" | "C.UTF-8" | "C.utf8")))
}

/// The driver as PATH finds `arg0` (what the worker's sandbox will find too), or
/// `None` when that is not the compiler this compile runs.
fn driver_of(ctx: &Ctx) -> Option<PathBuf> {
    let arg0 = Path::new(&ctx.inv.arg0);
    arg0.to_str()?;
    if arg0.components().count() > 1 {
        let cwd = std::env::current_dir().ok()?;
        let p = if arg0.is_absolute() {
            arg0.to_path_buf()
        } else {
            cwd.join(arg0)
        };
        return same(&p, &ctx.inv.compiler).then_some(p);
    }
    (arg0.file_name() == ctx.inv.compiler.file_name() && ctx.inv.compiler.is_absolute())
        .then(|| ctx.inv.compiler.clone())
}

/// `p` with `.` dropped and each `..` taking the name before it away.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The directories a path walks into before each of its `..` (cleaned): `/a/b/../c`
/// gives `/a/b`.
fn parent_prefixes(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = PathBuf::new();
    for c in p.components() {
        if c == std::path::Component::ParentDir && !cur.as_os_str().is_empty() {
            out.push(lexical(&cur));
        }
        cur.push(c);
    }
    out
}

fn same(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Tries a same-path job (placement already said to ship).
pub(super) fn ship(
    ctx: &mut Ctx,
    farm: &Farm,
    pj: &dyn PathJobs,
    compiler: &CompilerAd,
) -> PathAttempt {
    let home = || PathAttempt::Ran(Remote::Home { prepared: false });
    let not_path = |reason: &'static str, detail: String| {
        PathAttempt::NotPath(Passthrough::new(reason, detail))
    };
    let scratch = ctx.cfg.dir.value.join("memo");
    let Some(driver) = driver_of(ctx) else {
        return not_path("driver", ctx.inv.arg0.to_string_lossy().into_owned());
    };
    let spec = match pj.path_job(&ctx.inv, &scratch) {
        Ok(s) => s,
        Err(p) => return PathAttempt::NotPath(p),
    };
    let mut memo_key = blake3::Hasher::new();
    memo_key.update(&ctx.identity);
    memo_key.update(driver.as_os_str().as_encoded_bytes());
    let toolchain =
        match toolchain::memoized(memo_key.finalize().as_bytes(), &scratch, &driver, || {
            pj.toolchain_files(&driver, &ctx.inv.arg0)
        }) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "no toolchain package");
                return not_path("toolchain", e.to_string());
            }
        };
    // Every input by its path as the compiler opens it, with its digest now.
    let mut files = Vec::with_capacity(spec.inputs.len());
    let mut local_of: HashMap<[u8; 32], PathBuf> = HashMap::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Directories of inputs that are what they say: a worker lays out real
    // directories, and gcc writes system headers' real paths into dependency files.
    let mut real_dirs: HashMap<PathBuf, bool> = HashMap::new();
    for p in &spec.inputs {
        // `a/b/../c` is `a/c` in the worker's tree, whose directories are no links:
        // only when it is the same file here too. The worker makes `a/b` so that
        // the compiler's own `a/b/../c` finds it.
        let placed = if toolchain::has_parent_component(p) {
            let clean = lexical(p);
            if !same(p, &clean) {
                return not_path("path_alias", p.display().to_string());
            }
            dirs.extend(parent_prefixes(p));
            clean
        } else {
            p.clone()
        };
        let Some(path) = placed.to_str() else {
            return not_path("path", p.display().to_string());
        };
        if let Some(dir) = placed.parent() {
            let real = *real_dirs
                .entry(dir.to_path_buf())
                .or_insert_with(|| std::fs::canonicalize(dir).is_ok_and(|c| c == dir));
            if !real {
                return not_path("linked_directory", dir.display().to_string());
            }
        }
        let d = match digest::digest_memo(p, &scratch) {
            Ok(d) => d,
            Err(e) => return not_path("input_unreadable", format!("{}: {e}", p.display())),
        };
        files.push(TreeFile {
            path: path.to_string(),
            digest: d,
        });
        local_of.insert(d, p.clone());
    }
    for e in &toolchain.entries {
        if let ToolKind::File { digest, .. } = &e.kind {
            local_of.insert(*digest, PathBuf::from(&e.path));
        }
    }
    let mut digests: Vec<[u8; 32]> = local_of.keys().copied().collect();
    digests.sort();
    let missing = match farm.ask(&AgentRequest::MissingBlobs(digests)) {
        Some(AgentResponse::MissingBlobs(m)) => m,
        Some(_) => {
            farm.off_protocol();
            return home();
        }
        None => return home(),
    };
    let mut batch = Vec::new();
    let mut batch_bytes = 0usize;
    for d in missing {
        let Some(p) = local_of.get(&d) else { continue };
        if std::fs::metadata(p).is_ok_and(|m| m.len() > (MAX_FRAME - (1 << 20)) as u64) {
            // A file no frame holds (a compiler's 100 MB library): only peers that
            // have this toolchain already could run it.
            ctx.tally
                .count(Outcome::FarmHome("toolchain_too_large".into()));
            return home();
        }
        let Ok(data) = fsutil::read_file(p) else {
            return home();
        };
        if *blake3::hash(&data).as_bytes() != d {
            // Changed since it was hashed: this compile must read it here.
            ctx.tally.count(Outcome::FarmHome("input_changed".into()));
            return home();
        }
        if data.len() > MAX_FRAME - (1 << 20) {
            ctx.tally
                .count(Outcome::FarmHome("toolchain_too_large".into()));
            return home();
        }
        if batch_bytes + data.len() > BLOB_BATCH && !batch.is_empty() {
            if !send_blobs(farm, std::mem::take(&mut batch)) {
                return home();
            }
            batch_bytes = 0;
        }
        batch_bytes += data.len();
        batch.push(Blob { digest: d, data });
    }
    if !batch.is_empty() && !send_blobs(farm, batch) {
        return home();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let outputs: Vec<String> = spec
        .outputs
        .iter()
        .map(|o| o.to_string_lossy().into_owned())
        .collect();
    let job = PathJob {
        family: ctx.family.name().to_string(),
        compiler: compiler.clone(),
        toolchain,
        arg0: ctx.inv.arg0.to_string_lossy().into_owned(),
        args: spec.args,
        cwd: cwd.to_string_lossy().into_owned(),
        env: spec.env,
        files,
        dirs: {
            for d in &spec.dirs {
                dirs.extend(parent_prefixes(d));
                dirs.push(lexical(d));
            }
            dirs.sort();
            dirs.dedup();
            dirs.iter()
                .filter_map(|d| d.to_str().map(str::to_string))
                .collect()
        },
        outputs,
    };
    let sent = job.files.clone();
    let asked = ctx.t0.elapsed();
    let answer = farm.ask(&AgentRequest::CompilePaths(Box::new(job)));
    let answered = ctx.t0.elapsed();
    let r = match answer {
        Some(AgentResponse::TreeCompiled(r)) => r,
        Some(AgentResponse::Local(reason)) => {
            tracing::info!(reason, "agent: compile at home");
            count_sent_home(ctx, &reason);
            farm.set_reserved(true);
            return home();
        }
        Some(_) => {
            farm.off_protocol();
            return home();
        }
        None => return home(),
    };
    let printed = !r.stdout.is_empty() || !r.stderr.is_empty();
    let why = if r.exit_code != 0 {
        // A failed compile is reported by the compiler here, in its own words.
        Some("failed")
    } else if printed && !c_locale() {
        Some("diagnostics_locale")
    } else {
        None
    };
    if let Some(why) = why {
        tracing::info!(
            worker = %r.worker,
            why,
            exit = r.exit_code,
            stderr = %String::from_utf8_lossy(&r.stderr[..r.stderr.len().min(2000)]),
            "same-path job not used: compiling here"
        );
        ctx.tally.count(Outcome::FarmHome(why.into()));
        farm.set_reserved(false);
        return home();
    }
    // Every file the job named, once, and nothing else: a file left out would be read
    // stale from disk (an empty observation file would record no header at all).
    let mut seen = std::collections::HashSet::new();
    let expected = |p: &str| spec.outputs.iter().any(|o| o.as_os_str() == p);
    let exact = r
        .outputs
        .iter()
        .all(|o| expected(&o.path) && seen.insert(o.path.clone()))
        && seen.len() == spec.outputs.len();
    if !exact {
        tracing::warn!(worker = %r.worker, "remote outputs do not match the job");
        ctx.tally.count(Outcome::Fallback("bad_output".into()));
        farm.set_reserved(false);
        return home();
    }
    // The compile read what was sent only if every input is still that now.
    for f in &sent {
        let now = digest::digest_memo(Path::new(&f.path), &scratch).ok();
        if now != Some(f.digest) {
            tracing::info!(path = %f.path, "input changed while the job ran: compiling here");
            ctx.tally.count(Outcome::FarmHome("input_changed".into()));
            farm.set_reserved(false);
            return home();
        }
    }
    for o in &r.outputs {
        if let Err(e) = fsutil::write_atomic(Path::new(&o.path), &o.data) {
            tracing::warn!(path = %o.path, error = %e, "cannot write remote output");
            ctx.tally.count(Outcome::Fallback("write_output".into()));
            farm.set_reserved(false);
            return home();
        }
    }
    let Some(payload) = ctx.payload_from_disk(&r.stdout, &r.stderr, r.compile_ms) else {
        farm.set_reserved(false);
        return home();
    };
    emit(&r.stdout, &r.stderr);
    ctx.tally.count(Outcome::Miss);
    ctx.tally.count(Outcome::FarmRemote);
    ctx.tally.count(Outcome::FarmSamePath);
    ctx.tally.add(Outcome::CompileMs, r.compile_ms);
    ctx.remote_compile_ms = r.compile_ms;
    ctx.ran_on = Some(r.worker.clone());
    tracing::info!(
        worker = %r.worker,
        ms = r.compile_ms,
        files = sent.len(),
        asked_at_us = asked.as_micros() as u64,
        answered_at_us = answered.as_micros() as u64,
        "compiled by a peer at the same paths"
    );
    PathAttempt::Ran(Remote::Done(payload))
}
