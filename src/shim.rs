//! The per-compile flow: parse, key, look up, restore or compile and store.
//!
//! Invariants (DESIGN.md): the hit path starts no runtime and touches no network;
//! every farm failure ends in running the real compiler with a counted reason; the
//! compiler's own exit code, stdout and stderr always reach the caller unchanged.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::time::Instant;

use crate::agent_client::AgentClient;
use crate::cache::{CacheError, CacheKey, EntryKind, LocalStore, Store};
use crate::config::{Config, Mode};
use crate::fsutil;
use crate::key::{self, Manifest, ManifestEntry, OutputBlob, RecordError, ResultEntry};
use crate::lang::{self, CompileRun, DepSource, Family, Invocation, Keying, Observed};
use crate::protocol::{AgentRequest, AgentResponse, CompilerAd, Item, Job, Kind};
use crate::stats::{names, Stats};

mod declared;

/// Counters gathered during one compile, written once at the end.
#[derive(Default)]
struct Tally(Vec<(String, u64)>);

impl Tally {
    fn add(&mut self, name: impl Into<String>, n: u64) {
        self.0.push((name.into(), n));
    }
    fn flush(&self, stats: &Stats) {
        let refs: Vec<(&str, u64)> = self.0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        if let Err(e) = stats.add(&refs) {
            tracing::warn!(error = %e, "cannot update statistics");
        }
    }
}

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

/// How a miss left the farm.
enum Farmed {
    /// A peer compiled it; the outputs are written. The result entry, and the agent
    /// to publish it through.
    Served(Vec<u8>, AgentClient),
    /// Compile at home.
    Home(Home),
}

/// A compile that runs at home after the farm was consulted.
#[derive(Default)]
struct Home {
    /// The agent, to publish the result through and to tell when it is done.
    agent: Option<AgentClient>,
    /// The farm's preprocessor run already wrote the dependency file.
    prepared: bool,
    /// The agent counts this compile against home's slots until told it is done.
    reserved: bool,
}

impl Home {
    /// Publishes what the compile stored (if anything) and releases home's slot.
    fn done(&mut self, items: Vec<Item>, ms: u64) {
        let Some(a) = self.agent.as_mut() else { return };
        let local_ms = if self.reserved { ms } else { 0 };
        if !items.is_empty() {
            a.tell(&AgentRequest::Publish { items, local_ms });
        } else if self.reserved {
            a.tell(&AgentRequest::LocalDone { local_ms });
        }
    }
}

/// Entries for the farm's cache from one direct-mode result.
fn direct_items(mkey: &CacheKey, entry: Option<ManifestEntry>, payload: &[u8]) -> Vec<Item> {
    let Some(e) = entry else { return Vec::new() };
    let result = e.result;
    let m = Manifest {
        preprocessor_only: None,
        entries: vec![e.portable()],
    };
    vec![
        Item {
            kind: Kind::Result,
            key: result.0,
            data: payload.to_vec(),
        },
        Item {
            kind: Kind::Manifest,
            key: mkey.0,
            data: m.encode(),
        },
    ]
}

struct Ctx<'a> {
    cfg: &'a Config,
    family: &'static dyn Family,
    inv: Invocation,
    identity: [u8; 32],
    store: LocalStore,
    stats: Stats,
    tally: Tally,
    t0: Instant,
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
        let mut t = Tally::default();
        t.add(format!("{}.{reason}", names::PASSTHROUGH), 1);
        t.flush(&stats);
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
        inv,
        identity,
        store: LocalStore::new(&cfg.dir.value, cfg.max_size.value),
        stats,
        tally: Tally::default(),
        t0,
    };
    let code = match (family.keying(), cfg.mode.value) {
        (Keying::Declared(decl), _) => ctx.declared_mode(decl),
        (Keying::Observed(_), Mode::Preprocessor) => ctx.preprocessor_mode(None),
        (Keying::Observed(_), Mode::Direct | Mode::Depend) => ctx.direct_mode(),
    };
    ctx.tally.flush(&ctx.stats);
    code
}

/// The observing side of a family keyed by its declared inputs: nothing to observe.
/// Direct, depend and preprocessor modes run only for families keyed by observation
/// (see the dispatch in [`run`]); steps both flows share (`uncached`) reach this.
struct NothingObserved;

impl Observed for NothingObserved {
    fn preprocess(&self, _: &Invocation) -> std::io::Result<Result<Vec<u8>, lang::Passthrough>> {
        Ok(Err(lang::Passthrough::new("no_preprocessor", "declared")))
    }

    fn compile(&self, _: &Invocation, _: bool) -> std::io::Result<CompileRun> {
        Err(std::io::Error::other(
            "this family compiles through its declared-input flow",
        ))
    }

    fn dependencies(
        &self,
        _: &Invocation,
        _: DepSource,
        _: &Path,
    ) -> Result<lang::DependencyFacts, lang::NotRecordable> {
        Err(lang::NotRecordable {
            reason: "declared_inputs",
            detail: String::new(),
            preprocessor_ok: false,
        })
    }

    fn cleanup(&self, _: &Invocation) {}
}

impl Ctx<'_> {
    /// The family's observing side ([`NothingObserved`] for a declared-input family).
    fn observed(&self) -> &'static dyn Observed {
        match self.family.keying() {
            Keying::Observed(o) => o,
            Keying::Declared(_) => &NothingObserved,
        }
    }

    fn cache_error(&mut self, e: &CacheError) {
        match e {
            CacheError::Corrupt { .. } => {
                tracing::warn!(error = %e, "corrupt cache entry removed");
                self.tally.add(names::CORRUPT_ENTRY, 1);
            }
            _ => {
                tracing::warn!(error = %e, "cache error");
                self.tally.add(names::CACHE_ERROR, 1);
            }
        }
    }

    fn get(&mut self, kind: EntryKind, key: &CacheKey) -> Option<Vec<u8>> {
        match self.store.get(kind, key) {
            Ok(v) => v,
            Err(e) => {
                self.cache_error(&e);
                None
            }
        }
    }

    fn put(&mut self, kind: EntryKind, key: &CacheKey, payload: &[u8]) -> bool {
        match self.store.put(kind, key, payload) {
            Ok(r) => {
                if r.cleaned {
                    self.tally.add(names::CLEANUPS, 1);
                    self.tally.add(names::EVICTED_FILES, r.evicted_files);
                }
                true
            }
            Err(e) => {
                self.cache_error(&e);
                false
            }
        }
    }

    /// Restores a result's outputs and replays its output streams. `false` when the
    /// entry is missing, damaged or does not fit this invocation.
    fn restore(&mut self, rkey: &CacheKey, hit_counter: &str) -> bool {
        let Some(data) = self.get(EntryKind::Result, rkey) else {
            return false;
        };
        if ResultEntry::decode(&data).is_none() {
            self.tally.add(names::CORRUPT_ENTRY, 1);
            let _ = std::fs::remove_file(self.store.entry_path(EntryKind::Result, rkey));
            return false;
        }
        self.restore_bytes(&data, hit_counter)
    }

    /// A hit's outputs are in place: replays what the compile printed, and counts it.
    fn replay_hit(&mut self, entry: &ResultEntry, hit_counter: &str) {
        emit(entry.stdout, entry.stderr);
        let elapsed = self.t0.elapsed().as_millis() as u64;
        self.tally.add(hit_counter, 1);
        self.tally.add(
            names::TIME_SAVED_MS,
            entry.compile_ms.saturating_sub(elapsed),
        );
        tracing::info!(source = %self.inv.source.display(), hit = hit_counter, "hit");
    }

    /// Restores outputs from an encoded result entry (local or from the farm).
    fn restore_bytes(&mut self, data: &[u8], hit_counter: &str) -> bool {
        let Some(entry) = ResultEntry::decode(data) else {
            return false;
        };
        if entry.outputs.len() != self.inv.outputs.len() {
            return false;
        }
        let mut blobs = Vec::with_capacity(self.inv.outputs.len());
        for out in &self.inv.outputs {
            match entry.outputs.iter().find(|b| b.role == out.role) {
                Some(b) => blobs.push((out, b.data)),
                None => return false,
            }
        }
        for (out, data) in &blobs {
            if let Err(e) = fsutil::write_atomic(&out.path, data) {
                // The real compile will report (or fix) whatever stops this write.
                tracing::warn!(path = %out.path.display(), error = %e, "cannot write output on hit");
                return false;
            }
        }
        self.replay_hit(&entry, hit_counter);
        true
    }

    fn compile(&mut self, observe: bool) -> Result<CompileRun, i32> {
        match self.observed().compile(&self.inv, observe) {
            Ok(run) => Ok(run),
            Err(e) => {
                tracing::warn!(error = %e, "cannot run compiler");
                self.observed().cleanup(&self.inv);
                self.tally
                    .add(format!("{}.spawn_failed", names::PASSTHROUGH), 1);
                self.tally.flush(&self.stats);
                self.tally = Tally::default();
                Err(exec_compiler(
                    &self.inv.compiler,
                    &self.inv.arg0,
                    &self.inv.args,
                ))
            }
        }
    }

    /// A miss: runs the compile, passes its output on, and counts it. A failed compile
    /// ends here with the compiler's exit code (never cached).
    fn compile_miss(&mut self, observe: bool) -> Result<CompileRun, i32> {
        let run = self.compile(observe)?;
        emit(&run.stdout, &run.stderr);
        if !run.status.success() {
            self.observed().cleanup(&self.inv);
            self.tally.add(names::COMPILE_FAILED, 1);
            return Err(exit_code(run.status));
        }
        self.tally.add(names::MISS, 1);
        self.tally
            .add(names::COMPILE_MS, run.elapsed.as_millis() as u64);
        Ok(run)
    }

    /// Reads the outputs the compiler wrote and frames them as a result entry.
    fn result_payload(&mut self, run: &CompileRun) -> Option<Vec<u8>> {
        self.payload_from_disk(&run.stdout, &run.stderr, run.elapsed.as_millis() as u64)
    }

    fn payload_from_disk(&mut self, stdout: &[u8], stderr: &[u8], ms: u64) -> Option<Vec<u8>> {
        let mut datas = Vec::with_capacity(self.inv.outputs.len());
        for out in &self.inv.outputs {
            match fsutil::read_file(&out.path) {
                Ok(d) => datas.push(d),
                Err(e) => {
                    tracing::warn!(path = %out.path.display(), error = %e, "expected output missing");
                    self.tally
                        .add(format!("{}.missing_output", names::NOT_STORED), 1);
                    return None;
                }
            }
        }
        let entry = ResultEntry {
            stdout,
            stderr,
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

    fn direct_mode(&mut self) -> i32 {
        let depend = self.cfg.mode.value == Mode::Depend;
        let hit_counter = if depend {
            names::HIT_DEPEND
        } else {
            names::HIT_DIRECT
        };
        let base = match key::base_hasher("direct", self.family, &self.identity, &self.inv) {
            Ok(h) => h,
            Err(e) => return self.uncached(&format!("{e}"), "input_unreadable"),
        };
        // Inputs changed after this instant may not be what the key describes: the
        // too-new check below starts here, before the source is read for the key.
        let keyed_ns = fsutil::now_ns();
        let source = match fsutil::read_file(&self.inv.source) {
            Ok(s) => s,
            // The compiler reports a missing source in its own words.
            Err(_) => return self.uncached("source unreadable", "source_unreadable"),
        };
        let mkey = key::finish(base, "source", &source);
        let manifest = match self.get(EntryKind::Manifest, &mkey) {
            Some(data) => match Manifest::decode(&data) {
                Some(m) => m,
                None => {
                    self.tally.add(names::CORRUPT_ENTRY, 1);
                    Manifest::default()
                }
            },
            None => Manifest::default(),
        };
        if let Some(reason) = manifest.preprocessor_only.clone() {
            if !depend {
                return self.preprocessor_mode(Some(&reason));
            }
        }
        let mut memo = key::CheckMemo::default();
        for e in &manifest.entries {
            if key::entry_matches(e, &mut memo) {
                let r = e.result;
                if self.restore(&r, hit_counter) {
                    return 0;
                }
            }
        }
        // A miss. Text that makes the compiler read files no key covers is never
        // cached nor shipped. (No entry is ever recorded for such a source, since
        // recording scans it and every header: the hit path need not scan.)
        if let Err(p) = self.observed().source_check(&source) {
            return self.uncached(&p.detail, p.reason);
        }
        drop(source);
        // Miss: the farm first (its cache, then a peer), when a farmd runs here.
        let mut home = Home::default();
        if !depend {
            if let Some(mut agent) = self.farm_agent() {
                match self.farm_manifest(&mut agent, &mkey) {
                    Ok(Some((payload, entry))) => {
                        // A farm hit: keep it here too.
                        let mut manifest = manifest;
                        if self.put(EntryKind::Result, &entry.result, &payload) {
                            manifest.add(entry);
                            let m = manifest.encode();
                            self.put(EntryKind::Manifest, &mkey, &m);
                        }
                        return 0;
                    }
                    Ok(None) => match self.farm_compile(agent) {
                        Farmed::Served(payload, agent) => {
                            let entry = self.record_direct(
                                &mkey,
                                manifest,
                                keyed_ns,
                                &payload,
                                DepSource::ScanIfNeeded,
                            );
                            Home {
                                agent: Some(agent),
                                ..Home::default()
                            }
                            .done(direct_items(&mkey, entry, &payload), 0);
                            return 0;
                        }
                        Farmed::Home(h) => home = h,
                    },
                    Err(()) => {}
                }
            }
        }
        // Compile here, observing what the compile reads (unless the farm's
        // preprocessor run already wrote the dependency file).
        let run = match self.compile_miss(!home.prepared) {
            Ok(r) => r,
            Err(code) => {
                home.done(Vec::new(), 0);
                return code;
            }
        };
        let ms = run.elapsed.as_millis() as u64;
        let dep_source = if depend {
            DepSource::CompileOnly
        } else {
            DepSource::ScanIfNeeded
        };
        let Some(payload) = self.result_payload(&run) else {
            self.observed().cleanup(&self.inv);
            home.done(Vec::new(), ms);
            return 0;
        };
        let entry = self.record_direct(
            &mkey,
            manifest,
            keyed_ns.min(run.started_ns),
            &payload,
            dep_source,
        );
        home.done(direct_items(&mkey, entry, &payload), ms);
        0
    }

    /// Records a direct-mode manifest entry for a result whose outputs are on disk.
    fn record_direct(
        &mut self,
        mkey: &CacheKey,
        mut manifest: Manifest,
        started_ns: i128,
        payload: &[u8],
        dep_source: DepSource,
    ) -> Option<ManifestEntry> {
        let facts =
            self.observed()
                .dependencies(&self.inv, dep_source, &self.cfg.dir.value.join("memo"));
        self.observed().cleanup(&self.inv);
        match facts {
            Ok(f) => {
                match key::record_entry(
                    mkey,
                    &self.inv.source,
                    &f.files,
                    &f.missing,
                    &f.not_file,
                    started_ns,
                ) {
                    Ok(entry) => {
                        if self.put(EntryKind::Result, &entry.result, payload) {
                            manifest.add(entry.clone());
                            manifest.preprocessor_only = None;
                            let m = manifest.encode();
                            self.put(EntryKind::Manifest, mkey, &m);
                        }
                        return Some(entry);
                    }
                    Err(RecordError::TooNew(p)) => {
                        tracing::info!(path = %p.display(), "input modified during the compile: not stored");
                        self.tally
                            .add(format!("{}.input_too_new", names::NOT_STORED), 1);
                    }
                    Err(RecordError::Unreadable(p)) => {
                        tracing::info!(path = %p.display(), "input unreadable after the compile: not stored");
                        self.tally
                            .add(format!("{}.input_unreadable", names::NOT_STORED), 1);
                    }
                }
            }
            Err(nr) => {
                tracing::info!(reason = nr.reason, detail = %nr.detail, "no direct-mode entry");
                if nr.preprocessor_ok && self.cfg.mode.value != Mode::Depend {
                    // Key this source by its preprocessed text from the next compile on.
                    // This result is not stored: a key computed now, after the compile,
                    // could describe inputs edited while it ran.
                    let marker = Manifest {
                        preprocessor_only: Some(format!("{}: {}", nr.reason, nr.detail)),
                        entries: Vec::new(),
                    };
                    self.put(EntryKind::Manifest, mkey, &marker.encode());
                    self.tally
                        .add(format!("{}.{}", names::NOT_STORED, nr.reason), 1);
                } else if nr.reason == lang::UNSUPPORTED_CODE_DIRECTIVE {
                    // A header reads files no key covers: counted like the source's case.
                    self.tally
                        .add(format!("{}.{}", names::PASSTHROUGH, nr.reason), 1);
                } else {
                    self.tally
                        .add(format!("{}.{}", names::NOT_STORED, nr.reason), 1);
                }
            }
        }
        None
    }

    /// The preprocessor-mode key, or why there is none.
    fn preprocessed_key(&mut self) -> Result<CacheKey, lang::Passthrough> {
        let text = match self.observed().preprocess(&self.inv) {
            Ok(Ok(t)) => t,
            Ok(Err(p)) => return Err(p),
            Err(e) => return Err(lang::Passthrough::new("preprocessor_error", e.to_string())),
        };
        let base = key::base_hasher("preprocessor", self.family, &self.identity, &self.inv)
            .map_err(|e| lang::Passthrough::new("input_unreadable", e.to_string()))?;
        Ok(key::finish(base, "preprocessed", &text))
    }

    /// Runs the compile without caching it (still counted), output passed through.
    fn uncached(&mut self, detail: &str, reason: &str) -> i32 {
        tracing::info!(detail, reason, "compiling uncached");
        self.tally
            .add(format!("{}.{reason}", names::PASSTHROUGH), 1);
        self.tally.flush(&self.stats);
        self.tally = Tally::default();
        self.observed().cleanup(&self.inv);
        exec_compiler(&self.inv.compiler, &self.inv.arg0, &self.inv.args)
    }

    /// Preprocessor mode; `marker` is set when direct mode sent this source here.
    fn preprocessor_mode(&mut self, marker: Option<&str>) -> i32 {
        if marker.map(|m| m.contains("__TIME__")).unwrap_or(false) {
            return self.uncached("uses __TIME__", "time_macro");
        }
        let rkey = match self.preprocessed_key() {
            Ok(k) => k,
            // A preprocessor error is reported by the compiler in its own words.
            Err(p) => return self.uncached(&p.detail, p.reason),
        };
        if self.restore(&rkey, names::HIT_PREPROCESSOR) {
            return 0;
        }
        let mut home = Home::default();
        if let Some(mut agent) = self.farm_agent() {
            match self.farm_fetch(&mut agent, Kind::Result, &rkey) {
                Ok(Some(entry)) if self.restore_bytes(&entry, names::HIT_FARM) => {
                    self.put(EntryKind::Result, &rkey, &entry);
                    return 0;
                }
                Ok(_) => match self.farm_compile(agent) {
                    Farmed::Served(payload, agent) => {
                        self.observed().cleanup(&self.inv);
                        self.put(EntryKind::Result, &rkey, &payload);
                        let item = Item {
                            kind: Kind::Result,
                            key: rkey.0,
                            data: payload,
                        };
                        Home {
                            agent: Some(agent),
                            ..Home::default()
                        }
                        .done(vec![item], 0);
                        return 0;
                    }
                    Farmed::Home(h) => home = h,
                },
                Err(()) => {}
            }
        }
        let run = match self.compile_miss(false) {
            Ok(r) => r,
            Err(code) => {
                self.observed().cleanup(&self.inv);
                home.done(Vec::new(), 0);
                return code;
            }
        };
        self.observed().cleanup(&self.inv);
        let ms = run.elapsed.as_millis() as u64;
        match self.result_payload(&run) {
            Some(payload) => {
                self.put(EntryKind::Result, &rkey, &payload);
                let item = Item {
                    kind: Kind::Result,
                    key: rkey.0,
                    data: payload,
                };
                home.done(vec![item], ms);
            }
            None => home.done(Vec::new(), ms),
        }
        0
    }

    /// The agent of this machine's farmd, if one answers.
    fn farm_agent(&mut self) -> Option<AgentClient> {
        let path = self.cfg.agent.value.as_ref()?;
        match AgentClient::connect(path) {
            Ok(a) => Some(a),
            Err(e) => {
                // No farmd here: farm is a local cache, silently.
                tracing::debug!(socket = %path.display(), error = %e, "no agent");
                None
            }
        }
    }

    /// This compile's compiler as jobs name it: argv[0]'s name and its identity.
    fn compiler_ad(&self) -> CompilerAd {
        CompilerAd {
            name: Path::new(&self.inv.arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            identity: self.identity,
        }
    }

    /// Counts the agent's reason for sending a shipped compile home: peers failed
    /// (`fallback.<why>`, the agent tried two: one fallback) or placement chose home.
    fn count_sent_home(&mut self, reason: &str) {
        let counter = match reason.strip_prefix("fallback.") {
            Some(why) => format!("{}.{why}", names::FALLBACK),
            None => format!("{}.{}", names::FARM_HOME, reason),
        };
        self.tally.add(counter, 1);
    }

    /// One request to the agent; `None` when the call failed (counted).
    fn ask(&mut self, agent: &mut AgentClient, req: &AgentRequest) -> Option<AgentResponse> {
        match agent.call(req) {
            Ok(r) => Some(r),
            Err(e) => {
                self.agent_failed(&e);
                None
            }
        }
    }

    /// The agent answered something its protocol does not allow here.
    fn off_protocol(&mut self) {
        self.tally
            .add(format!("{}.agent_protocol", names::FALLBACK), 1);
    }

    fn agent_failed(&mut self, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "agent failed");
        self.tally
            .add(format!("{}.agent_error", names::FALLBACK), 1);
    }

    /// The farm's cache. `Err` when the agent failed (the farm is then left alone).
    fn farm_fetch(
        &mut self,
        agent: &mut AgentClient,
        kind: Kind,
        key: &CacheKey,
    ) -> Result<Option<Vec<u8>>, ()> {
        match agent.call(&AgentRequest::Fetch { kind, key: key.0 }) {
            Ok(AgentResponse::Cached { entry, peer }) => {
                tracing::debug!(peer, ?kind, "farm cache entry");
                Ok(Some(entry))
            }
            Ok(AgentResponse::Missing) => Ok(None),
            Ok(_) => {
                self.tally
                    .add(format!("{}.agent_protocol", names::FALLBACK), 1);
                Err(())
            }
            Err(e) => {
                self.agent_failed(&e);
                Err(())
            }
        }
    }

    /// Direct mode's lookup in the farm's cache: the manifest shared under `mkey`,
    /// checked here against this machine's files by content (entries travel without
    /// stat stamps), then the result. No preprocessor runs.
    fn farm_manifest(
        &mut self,
        agent: &mut AgentClient,
        mkey: &CacheKey,
    ) -> Result<Option<(Vec<u8>, ManifestEntry)>, ()> {
        let Some(data) = self.farm_fetch(agent, Kind::Manifest, mkey)? else {
            return Ok(None);
        };
        let Some(m) = Manifest::decode(&data) else {
            return Ok(None);
        };
        let mut memo = key::CheckMemo::default();
        for e in m.entries {
            let e = e.portable();
            if !key::entry_matches(&e, &mut memo) {
                continue;
            }
            if let Some(result) = self.farm_fetch(agent, Kind::Result, &e.result)? {
                if self.restore_bytes(&result, names::HIT_FARM) {
                    return Ok(Some((result, e)));
                }
                self.tally.add(format!("{}.bad_entry", names::FALLBACK), 1);
            }
        }
        Ok(None)
    }

    /// A miss the farm's cache did not answer: ask the agent where it should compile,
    /// and ship it when a peer should.
    fn farm_compile(&mut self, mut agent: AgentClient) -> Farmed {
        let home = |agent, prepared, reserved| {
            Farmed::Home(Home {
                agent,
                prepared,
                reserved,
            })
        };
        let text_jobs = self.family.text_jobs();
        let allowed = match text_jobs {
            Some(t) => t.allowed(&self.inv),
            None => Err(lang::Passthrough::new("family", self.family.name())),
        };
        if let Err(p) = allowed {
            tracing::info!(reason = p.reason, detail = %p.detail, "compiled at home");
            self.tally
                .add(format!("{}.{}", names::FARM_HOME, p.reason), 1);
            return home(Some(agent), false, false);
        }
        let compiler = self.compiler_ad();
        let place = AgentRequest::Place {
            compiler: compiler.clone(),
        };
        match self.ask(&mut agent, &place) {
            Some(AgentResponse::Ship) => {}
            Some(AgentResponse::Local(reason)) => {
                self.tally
                    .add(format!("{}.{}", names::FARM_HOME, reason), 1);
                return home(Some(agent), false, true);
            }
            Some(_) => {
                self.off_protocol();
                return home(None, false, false);
            }
            None => return home(None, false, false),
        }
        let prepared = match text_jobs {
            Some(t) => t.prepare(&self.inv),
            None => Ok(Err(lang::Passthrough::new("family", self.family.name()))),
        };
        let job = match prepared {
            Ok(Ok(j)) => j,
            // A preprocessor error is the compiler's to report, from a real compile.
            Ok(Err(p)) => {
                self.tally
                    .add(format!("{}.{}", names::FARM_HOME, p.reason), 1);
                return home(Some(agent), false, false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot run the preprocessor for the farm");
                self.tally
                    .add(format!("{}.preprocessor", names::FALLBACK), 1);
                return home(Some(agent), false, false);
            }
        };
        let outputs = job.outputs;
        let job = Job {
            family: self.family.name().to_string(),
            compiler,
            input: job.input,
            args: job.args,
            source: job.text,
            outputs: outputs.iter().map(|o| o.name.clone()).collect(),
        };
        let asked = self.t0.elapsed();
        let answer = agent.call(&AgentRequest::Compile(job));
        let answered = self.t0.elapsed();
        match answer {
            Ok(AgentResponse::Compiled(r)) => {
                if r.exit_code != 0 || !r.stdout.is_empty() || !r.stderr.is_empty() {
                    // The compiler's messages must be its own, from this machine
                    // (source lines, colours, paths): compile here to show them.
                    tracing::info!(worker = %r.worker, exit = r.exit_code, "remote compile had diagnostics: compiling here");
                    self.tally
                        .add(format!("{}.diagnostics", names::FARM_HOME), 1);
                    return home(Some(agent), true, false);
                }
                // Every file the job named, once, and nothing else.
                let complete = r.outputs.len() == outputs.len()
                    && outputs
                        .iter()
                        .all(|o| r.outputs.iter().filter(|f| f.path == o.name).count() == 1);
                if !complete {
                    tracing::warn!(worker = %r.worker, "remote outputs do not match the job");
                    self.tally.add(format!("{}.bad_output", names::FALLBACK), 1);
                    return home(Some(agent), true, false);
                }
                for o in &outputs {
                    let Some(f) = r.outputs.iter().find(|f| f.path == o.name) else {
                        continue;
                    };
                    if let Err(e) = fsutil::write_atomic(&o.path, &f.data) {
                        tracing::warn!(path = %o.path.display(), error = %e, "cannot write remote output");
                        self.tally
                            .add(format!("{}.write_output", names::FALLBACK), 1);
                        return home(Some(agent), true, false);
                    }
                }
                let Some(payload) = self.payload_from_disk(&[], &[], r.compile_ms) else {
                    return home(Some(agent), true, false);
                };
                self.tally.add(names::MISS, 1);
                self.tally.add(names::FARM_REMOTE, 1);
                self.tally.add(names::COMPILE_MS, r.compile_ms);
                tracing::info!(
                    worker = %r.worker,
                    ms = r.compile_ms,
                    asked_at_us = asked.as_micros() as u64,
                    answered_at_us = answered.as_micros() as u64,
                    "compiled by a peer"
                );
                Farmed::Served(payload, agent)
            }
            Ok(AgentResponse::Local(reason)) => {
                tracing::info!(reason, "agent: compile at home");
                self.count_sent_home(&reason);
                home(Some(agent), true, true)
            }
            Ok(_) => {
                self.off_protocol();
                home(None, true, false)
            }
            Err(e) => {
                self.agent_failed(&e);
                home(None, true, false)
            }
        }
    }
}
