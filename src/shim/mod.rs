//! The per-compile flow: parse, key, look up through the tiers, execute (a peer, a
//! warm compiler or home), store and publish. The flow is written once
//! ([`flow::run`]); each mode ([`direct`], [`preprocessor`], [`declared`]) supplies
//! its keys, how a hit is restored and what a miss records.
//!
//! Invariants (DESIGN.md): the hit path starts no runtime and touches no network;
//! every farm failure ends in running the real compiler with a counted reason; the
//! compiler's own exit code, stdout and stderr always reach the caller unchanged.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use crate::config::{Config, Mode};
use crate::fsutil;
use crate::journal;
use crate::key::{self, OutputBlob, ResultEntry};
use crate::lang::{self, Family, Invocation, Keying, Observed};
use crate::stats::{Outcome, Stats, Tally};
use crate::store::{CacheError, PutReport};

mod agent_remote;
mod declared;
mod direct;
mod exec;
mod farm;
mod flow;
mod path_job;
mod preprocessor;
mod why;

pub use why::{predict, Prediction};

/// Replaces this process with the real compiler, argv untouched. Returns only if the
/// exec itself failed.
pub fn exec_compiler(compiler: &Path, arg0: &OsString, args: &[OsString]) -> i32 {
    let err = std::process::Command::new(compiler)
        .arg0(arg0)
        .args(args)
        .exec();
    let _ = writeln!(
        std::io::stderr(),
        "farm: cannot execute compiler {}: {err}",
        compiler.display()
    );
    127
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(1))
}

fn emit(stdout: &[u8], stderr: &[u8]) {
    if !stdout.is_empty() {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(stdout);
        let _ = o.flush();
    }
    if !stderr.is_empty() {
        let _ = std::io::stderr().lock().write_all(stderr);
    }
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty on a constant descriptor.
    unsafe { libc::isatty(2) == 1 }
}

/// One compile's state, shared by the flow, the modes and the executors.
struct Ctx<'a> {
    cfg: &'a Config,
    family: &'static dyn Family,
    /// The family's observing side (gcc), whose observation files a compile that
    /// leaves the flow removes.
    observed: Option<&'static dyn Observed>,
    inv: Invocation,
    identity: [u8; 32],
    stats: Stats,
    tally: Tally,
    /// What the farm tier counted (it counts inside tier calls, which see no `Ctx`).
    farm_counts: Rc<RefCell<Vec<Outcome>>>,
    /// The farm tier's position in this compile's tiers (after the remote ones).
    farm_at: usize,
    /// `base_dir`: where paths enter keys relative.
    base: key::BaseDirs,
    t0: Instant,
    /// The worker's own compile time of the shipped compile that finished this miss
    /// (what placement's cost of a shape leaves out).
    remote_compile_ms: u64,
    /// The peer (its node name) whose worker compiled this miss, for the journal.
    ran_on: Option<String>,
    /// Bytes of the outputs a hit restored or a miss produced, for the journal.
    out_bytes: Option<u64>,
}

/// Runs one compiler invocation through the cache. `compiler` is the resolved real
/// compiler and `canonical` the file it resolves to; `arg0` what it is started as;
/// `args` the arguments after argv[0].
pub fn run(
    cfg: &Config,
    compiler: &Path,
    canonical: &Path,
    arg0: OsString,
    args: Vec<OsString>,
) -> i32 {
    let t0 = Instant::now();
    let stats = Stats::new(&cfg.dir.value);
    let passthrough = |reason: &str, detail: &str| {
        tracing::info!(compiler = %compiler.display(), reason, detail, "passthrough");
        why::note_passthrough(cfg, compiler, &arg0, &args, reason, detail);
        let mut t = Tally::default();
        t.count(Outcome::Passthrough(reason.to_string().into()));
        t.flush(&stats);
        if let Some(path) = &cfg.journal.value {
            let mut line = journal::Line::begin(t0, compiler);
            line.family = lang::family_for(&line.compiler).map(|f| f.name().to_string());
            line.guess_source(&args);
            line.set_outcomes(t.entries(), journal::Ran::Here, None, None);
            journal::append(path, &line);
        }
        exec_compiler(compiler, &arg0, &args)
    };
    let name = compiler
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(family) = lang::family_for(&name) else {
        return passthrough("unknown_compiler", &name);
    };
    for var in family.unsafe_env() {
        if std::env::var_os(var).is_some() {
            return passthrough("unsafe_environment", var);
        }
    }
    let inv = match family.parse(compiler, &arg0, &args, stderr_is_tty()) {
        Ok(inv) => inv,
        Err(p) => return passthrough(p.reason, &p.detail),
    };
    // A hit replaces outputs by rename: an output that is a device (`-o /dev/null`),
    // a FIFO or a symlink must be written by the compiler itself. A declared-input
    // family's outputs are directories (links to them are followed, as javac does).
    let outputs_are_dirs = matches!(family.keying(), Keying::Declared(_));
    for out in &inv.outputs {
        let meta = if outputs_are_dirs {
            std::fs::metadata(&out.path)
        } else {
            std::fs::symlink_metadata(&out.path)
        };
        if let Ok(m) = meta {
            let fits = if outputs_are_dirs {
                m.is_dir()
            } else {
                m.file_type().is_file()
            };
            if !fits {
                return passthrough("special_output", &out.path.display().to_string());
            }
        }
    }
    let probe = family.identity_probe(canonical);
    let identity = match key::compiler_identity(canonical, &probe, &cfg.dir.value.join("memo")) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify compiler");
            return passthrough("compiler_unidentified", &e.to_string());
        }
    };
    let mut ctx = Ctx {
        cfg,
        family,
        observed: match family.keying() {
            Keying::Observed(o) => Some(o),
            Keying::Declared(_) => None,
        },
        inv,
        identity,
        stats,
        tally: Tally::default(),
        farm_counts: Rc::default(),
        farm_at: usize::MAX,
        base: key::BaseDirs::new(&cfg.base_dir.value),
        t0,
        remote_compile_ms: 0,
        ran_on: None,
        out_bytes: None,
    };
    let code = match (family.keying(), cfg.mode.value) {
        (Keying::Declared(decl), _) => flow::run(&mut ctx, &mut declared::Declared::new(decl)),
        (Keying::Observed(obs), Mode::Preprocessor) => {
            flow::run(&mut ctx, &mut preprocessor::Preprocessor::new(obs, None))
        }
        (Keying::Observed(obs), Mode::Direct) => {
            flow::run(&mut ctx, &mut direct::Direct::new(obs, false))
        }
        (Keying::Observed(obs), Mode::Depend) => {
            flow::run(&mut ctx, &mut direct::Direct::new(obs, true))
        }
    };
    ctx.journal(Some(code));
    ctx.tally.flush(&ctx.stats);
    code
}

/// How restoring an entry into this invocation's outputs went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restored {
    /// The outputs are in place and the messages replayed.
    Hit,
    /// The entry is damaged (it does not decode, or names outputs no compile of this
    /// kind writes).
    Corrupt,
    /// A sound entry that does not fit this invocation (other outputs).
    NotThis,
    /// A sound entry whose outputs could not be written here (an unwritable output
    /// directory, say): the user's error, which the real compiler reports.
    Unwritable,
}

impl Ctx<'_> {
    /// Appends this compile's line to the build journal, when one is named (nothing
    /// else happens when none is: the hit path pays one branch).
    fn journal(&self, exit: Option<i32>) {
        let Some(path) = &self.cfg.journal.value else {
            return;
        };
        let mut line = journal::Line::begin(self.t0, &self.inv.compiler);
        line.set_source(&self.inv.source);
        line.family = Some(self.family.name().to_string());
        let ran = match &self.ran_on {
            Some(peer) => journal::Ran::Peer(peer),
            None => journal::Ran::Here,
        };
        line.set_outcomes(self.tally.entries(), ran, self.out_bytes, exit);
        journal::append(path, &line);
    }

    /// Every field of this compile's key but its main content, in `class`'s scheme.
    fn base_hasher(&self, class: &str) -> Result<blake3::Hasher, key::KeyError> {
        let scheme = key::KeyScheme {
            family: self.family.name(),
            env: self.family.key_env(),
        };
        key::base_hasher(class, scheme, &self.identity, &self.inv, &self.base)
    }

    /// Whether a result depends on where the checkout is beyond what its key shows:
    /// the outputs record paths under a base directory (debug info or coverage notes
    /// no prefix map rewrites), or an output or message holds one (an expanded
    /// `__FILE__`, a message's text naming a file). Such a result is stored pinned to
    /// this checkout's base directories. Dependency files and messages are stored
    /// relative (see [`Ctx::payload_from_disk`]) and are checked as stored (a base
    /// directory left anywhere but a location pins). Messages with relative
    /// locations serve another checkout only when no file the compile read has a line
    /// that would look like a location (`reads_name_base == Some(false)`): a quoted
    /// source line must stay as that file has it.
    fn pinned_result(&self, payload: &[u8], reads_name_base: Option<bool>) -> bool {
        let why = self.pinned_why(payload, reads_name_base);
        if let Some(why) = why {
            tracing::info!(source = %self.inv.source.display(), why, "result pinned to this checkout's base directories");
        }
        why.is_some()
    }

    /// Why [`Ctx::pinned_result`] pins, if it does.
    fn pinned_why(&self, payload: &[u8], reads_name_base: Option<bool>) -> Option<&'static str> {
        if self.base.is_empty() {
            return None;
        }
        if let Some(rewritten) = &self.inv.paths.recorded {
            if !self.base.covered_by(rewritten) {
                return Some("debug info or coverage records paths no prefix map rewrites");
            }
        }
        let Some(e) = ResultEntry::decode(payload) else {
            return Some("undecodable entry");
        };
        let relative_messages = key::BaseDirs::messages_relative(e.stdout)
            || key::BaseDirs::messages_relative(e.stderr);
        if relative_messages && reads_name_base != Some(false) {
            Some("messages name files, and a file read has a line naming the checkout")
        } else if self.base.appears_in(e.stdout) || self.base.appears_in(e.stderr) {
            Some("a message's text names the checkout")
        } else if e.outputs.iter().any(|o| self.base.appears_in(o.data)) {
            Some("an output holds the checkout's path")
        } else {
            None
        }
    }

    /// Counts a local tier error.
    fn cache_error(&mut self, e: &CacheError) {
        match e {
            CacheError::Corrupt { .. } => {
                tracing::warn!(error = %e, "corrupt cache entry removed");
                self.tally.count(Outcome::CorruptEntry);
            }
            _ => {
                tracing::warn!(error = %e, "cache error");
                self.tally.count(Outcome::CacheError);
            }
        }
    }

    /// Counts what a local write did besides storing.
    fn put_report(&mut self, r: &PutReport) {
        if r.cleaned {
            self.tally.count(Outcome::Cleanups);
            self.tally.add(Outcome::EvictedFiles, r.evicted_files);
        }
    }

    /// A hit's outputs are in place: replays what the compile printed, and counts it.
    fn replay_hit(&mut self, entry: &ResultEntry, hit: Outcome) {
        self.replay_messages(entry, entry.stdout, entry.stderr, hit);
    }

    /// [`Ctx::replay_hit`] with the messages as this checkout prints them.
    fn replay_messages(&mut self, entry: &ResultEntry, stdout: &[u8], stderr: &[u8], hit: Outcome) {
        emit(stdout, stderr);
        self.out_bytes = Some(entry.outputs.iter().map(|o| o.data.len() as u64).sum());
        let elapsed = self.t0.elapsed().as_millis() as u64;
        tracing::info!(source = %self.inv.source.display(), hit = %hit.counter(), "hit");
        self.tally.count(hit);
        self.tally.add(
            Outcome::TimeSavedMs,
            entry.compile_ms.saturating_sub(elapsed),
        );
    }

    /// Restores a result entry whose outputs are this invocation's files.
    fn restore_files(&mut self, data: &[u8], hit: Outcome) -> Restored {
        let Some(entry) = ResultEntry::decode(data) else {
            return Restored::Corrupt;
        };
        if entry.outputs.len() != self.inv.outputs.len() {
            return Restored::NotThis;
        }
        // Messages stored with relative locations: with this checkout's paths.
        let (Some(stdout), Some(stderr)) = (
            self.base.fill_messages(entry.stdout),
            self.base.fill_messages(entry.stderr),
        ) else {
            return Restored::NotThis;
        };
        let mut blobs = Vec::with_capacity(self.inv.outputs.len());
        for out in &self.inv.outputs {
            match entry.outputs.iter().find(|b| b.role == out.role) {
                // A list of paths stored relative: with this checkout's directories.
                Some(b) if out.lists_paths.is_some() => match self.base.fill(b.data) {
                    Some(data) => blobs.push((out, data)),
                    None => return Restored::NotThis,
                },
                Some(b) => blobs.push((out, std::borrow::Cow::Borrowed(b.data))),
                None => return Restored::NotThis,
            }
        }
        for (out, data) in &blobs {
            if let Err(e) = fsutil::write_atomic(&out.path, data) {
                // The real compile will report (or fix) whatever stops this write.
                tracing::warn!(path = %out.path.display(), error = %e, "cannot write output on hit");
                return Restored::Unwritable;
            }
        }
        self.replay_messages(&entry, &stdout, &stderr, hit);
        Restored::Hit
    }

    /// Reads the output files the compiler wrote and frames them as a result entry.
    fn payload_from_disk(&mut self, stdout: &[u8], stderr: &[u8], ms: u64) -> Option<Vec<u8>> {
        let mut datas = Vec::with_capacity(self.inv.outputs.len());
        for out in &self.inv.outputs {
            match fsutil::read_file(&out.path) {
                // A list of paths is stored relative to the base directories.
                Ok(d) => match out.lists_paths {
                    Some(wrap) => datas.push(self.base.template(&d, wrap).unwrap_or(d)),
                    None => datas.push(d),
                },
                Err(e) => {
                    tracing::warn!(path = %out.path.display(), error = %e, "expected output missing");
                    self.tally
                        .count(Outcome::NotStored("missing_output".into()));
                    return None;
                }
            }
        }
        self.out_bytes = Some(datas.iter().map(|d| d.len() as u64).sum());
        // Messages name this checkout's files where they locate something: stored
        // relative to the base directories (see [`Ctx::pinned_result`]).
        let stdout_rel = self.base.template_messages(stdout);
        let stderr_rel = self.base.template_messages(stderr);
        let entry = ResultEntry {
            stdout: stdout_rel.as_deref().unwrap_or(stdout),
            stderr: stderr_rel.as_deref().unwrap_or(stderr),
            outputs: self
                .inv
                .outputs
                .iter()
                .zip(&datas)
                .map(|(o, d)| OutputBlob {
                    role: o.role,
                    data: d,
                })
                .collect(),
            compile_ms: ms,
        };
        Some(entry.encode())
    }

    /// Runs the compile without caching it (still counted), output passed through.
    fn uncached(&mut self, detail: &str, reason: &str) -> i32 {
        tracing::info!(detail, reason, "compiling uncached");
        self.note_uncached(reason, detail);
        self.tally
            .count(Outcome::Passthrough(reason.to_string().into()));
        self.run_real()
    }

    /// Moves what the farm tier counted into this compile's tally.
    fn take_farm_counts(&mut self) {
        let counts = std::mem::take(&mut *self.farm_counts.borrow_mut());
        for o in counts {
            self.tally.count(o);
        }
    }

    /// Flushes the counts and replaces this process with the real compiler.
    fn run_real(&mut self) -> i32 {
        self.take_farm_counts();
        self.journal(None);
        self.tally.flush(&self.stats);
        self.tally = Tally::default();
        if let Some(obs) = self.observed {
            obs.cleanup(&self.inv);
        }
        exec_compiler(&self.inv.compiler, &self.inv.arg0, &self.inv.args)
    }
}
