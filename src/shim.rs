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
use crate::key::{self, Manifest, OutputBlob, RecordError, ResultEntry};
use crate::lang::{self, CompileRun, DepSource, Family, Invocation, RemoteJob};
use crate::protocol::{AgentRequest, AgentResponse, CompilerAd, Job};
use crate::stats::{names, Stats};

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
    /// Outputs are written; the result entry, for the local cache.
    Served(Vec<u8>),
    /// Compile at home.
    Home(Home),
}

enum Prepared {
    Job(CacheKey, AgentClient, RemoteJob),
    Home(Home),
}

/// A compile that runs at home after the farm was consulted: the agent to tell when
/// it is done (it holds one of home's slots meanwhile) and the farm key to publish
/// the result under.
#[derive(Default)]
struct Home {
    agent: Option<AgentClient>,
    key: Option<CacheKey>,
    /// The farm's preprocessor run already wrote the dependency file.
    prepared: bool,
}

impl Home {
    fn publish(&mut self, payload: &[u8], ms: u64) {
        match (self.agent.as_mut(), self.key) {
            (Some(a), Some(k)) => a.tell(&AgentRequest::Publish {
                key: k.0,
                entry: payload.to_vec(),
                local_ms: ms,
            }),
            _ => self.compiled_at_home(ms),
        }
    }

    fn compiled_at_home(&mut self, ms: u64) {
        if let Some(a) = self.agent.as_mut() {
            a.tell(&AgentRequest::LocalDone { local_ms: ms });
        }
    }
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
    // a FIFO or a symlink must be written by the compiler itself.
    for out in &inv.outputs {
        if let Ok(m) = std::fs::symlink_metadata(&out.path) {
            if !m.file_type().is_file() {
                return passthrough("special_output", &out.path.display().to_string());
            }
        }
    }
    let identity = match key::compiler_identity(canonical, &cfg.dir.value.join("memo")) {
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
    let code = match cfg.mode.value {
        Mode::Preprocessor => ctx.preprocessor_mode(None),
        Mode::Direct | Mode::Depend => ctx.direct_mode(),
    };
    ctx.tally.flush(&ctx.stats);
    code
}

impl Ctx<'_> {
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
        emit(entry.stdout, entry.stderr);
        let elapsed = self.t0.elapsed().as_millis() as u64;
        self.tally.add(hit_counter, 1);
        self.tally.add(
            names::TIME_SAVED_MS,
            entry.compile_ms.saturating_sub(elapsed),
        );
        tracing::info!(source = %self.inv.source.display(), hit = hit_counter, "hit");
        true
    }

    fn compile(&mut self, observe: bool) -> Result<CompileRun, i32> {
        match self.family.compile(&self.inv, observe) {
            Ok(run) => Ok(run),
            Err(e) => {
                tracing::warn!(error = %e, "cannot run compiler");
                self.family.cleanup(&self.inv);
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
            self.family.cleanup(&self.inv);
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
        drop(source);
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
        // Miss: the farm first (its cache, then a peer), when a farmd runs here.
        let mut home = Home::default();
        if !depend {
            match self.farm_try() {
                Farmed::Served(payload) => {
                    self.record_direct(
                        &mkey,
                        manifest,
                        keyed_ns,
                        &payload,
                        DepSource::ScanIfNeeded,
                    );
                    return 0;
                }
                Farmed::Home(h) => home = h,
            }
        }
        // Compile here, observing what the compile reads (unless the farm's
        // preprocessor run already wrote the dependency file).
        let run = match self.compile_miss(!home.prepared) {
            Ok(r) => r,
            Err(code) => {
                home.compiled_at_home(0);
                return code;
            }
        };
        let dep_source = if depend {
            DepSource::CompileOnly
        } else {
            DepSource::ScanIfNeeded
        };
        let Some(payload) = self.result_payload(&run) else {
            self.family.cleanup(&self.inv);
            home.compiled_at_home(run.elapsed.as_millis() as u64);
            return 0;
        };
        home.publish(&payload, run.elapsed.as_millis() as u64);
        self.record_direct(
            &mkey,
            manifest,
            keyed_ns.min(run.started_ns),
            &payload,
            dep_source,
        );
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
    ) {
        let facts =
            self.family
                .dependencies(&self.inv, dep_source, &self.cfg.dir.value.join("memo"));
        self.family.cleanup(&self.inv);
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
                            manifest.add(entry);
                            manifest.preprocessor_only = None;
                            let m = manifest.encode();
                            self.put(EntryKind::Manifest, mkey, &m);
                        }
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
                } else {
                    self.tally
                        .add(format!("{}.{}", names::NOT_STORED, nr.reason), 1);
                }
            }
        }
    }

    /// The preprocessor-mode key, or why there is none.
    fn preprocessed_key(&mut self) -> Result<CacheKey, lang::Passthrough> {
        let text = match self.family.preprocess(&self.inv) {
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
        self.family.cleanup(&self.inv);
        exec_compiler(&self.inv.compiler, &self.inv.arg0, &self.inv.args)
    }

    /// Preprocessor mode; `marker` is set when direct mode sent this source here.
    fn preprocessor_mode(&mut self, marker: Option<&str>) -> i32 {
        if marker.map(|m| m.contains("__TIME__")).unwrap_or(false) {
            return self.uncached("uses __TIME__", "time_macro");
        }
        let mut home = Home::default();
        let rkey = match self.farm_agent() {
            // With a farm, one preprocessor run gives both the key and the job.
            Some(agent) => match self.farm_prepare(agent) {
                Prepared::Job(rkey, agent, job) => {
                    if self.restore(&rkey, names::HIT_PREPROCESSOR) {
                        return 0;
                    }
                    match self.farm_send(rkey, agent, job) {
                        Farmed::Served(payload) => {
                            self.put(EntryKind::Result, &rkey, &payload);
                            return 0;
                        }
                        Farmed::Home(h) => home = h,
                    }
                    rkey
                }
                Prepared::Home(h) => {
                    home = h;
                    match self.preprocessed_key() {
                        Ok(k) => k,
                        Err(p) => return self.uncached(&p.detail, p.reason),
                    }
                }
            },
            None => match self.preprocessed_key() {
                Ok(k) => k,
                // A preprocessor error is reported by the compiler in its own words.
                Err(p) => return self.uncached(&p.detail, p.reason),
            },
        };
        if home.agent.is_none() && self.restore(&rkey, names::HIT_PREPROCESSOR) {
            return 0;
        }
        let run = match self.compile_miss(false) {
            Ok(r) => r,
            Err(code) => {
                home.compiled_at_home(0);
                return code;
            }
        };
        self.family.cleanup(&self.inv);
        let ms = run.elapsed.as_millis() as u64;
        match self.result_payload(&run) {
            Some(payload) => {
                home.publish(&payload, ms);
                self.put(EntryKind::Result, &rkey, &payload);
            }
            None => home.compiled_at_home(ms),
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

    /// Runs the family's preparation for a worker and computes the farm key.
    fn farm_prepare(&mut self, agent: AgentClient) -> Prepared {
        let job = match self.family.remote_prepare(&self.inv) {
            Ok(Ok(j)) => j,
            Ok(Err(p)) => {
                tracing::info!(reason = p.reason, detail = %p.detail, "compiled at home");
                self.tally
                    .add(format!("{}.{}", names::FARM_HOME, p.reason), 1);
                // No key: nothing to look up or publish, but the agent still counts
                // this compile against home's slots.
                return Prepared::Home(Home {
                    agent: Some(agent),
                    key: None,
                    prepared: false,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot run the preprocessor for the farm");
                self.tally
                    .add(format!("{}.preprocessor", names::FALLBACK), 1);
                return Prepared::Home(Home::default());
            }
        };
        match key::base_hasher("preprocessor", self.family, &self.identity, &self.inv) {
            Ok(base) => Prepared::Job(key::finish(base, "preprocessed", &job.text), agent, job),
            Err(e) => {
                tracing::info!(error = %e, "no farm key");
                self.tally
                    .add(format!("{}.input_unreadable", names::FARM_HOME), 1);
                Prepared::Home(Home {
                    agent: Some(agent),
                    key: None,
                    prepared: true,
                })
            }
        }
    }

    /// A direct-mode miss with a farm: prepare, then ask the agent.
    fn farm_try(&mut self) -> Farmed {
        let Some(agent) = self.farm_agent() else {
            return Farmed::Home(Home::default());
        };
        match self.farm_prepare(agent) {
            Prepared::Job(key, agent, job) => self.farm_send(key, agent, job),
            Prepared::Home(h) => Farmed::Home(h),
        }
    }

    /// Asks the agent for `key`: the farm's cache, else a peer's compile. Outputs are
    /// written only from a complete, checked answer.
    fn farm_send(&mut self, key: CacheKey, mut agent: AgentClient, job: RemoteJob) -> Farmed {
        if let Some(p) = job.home_only {
            return match agent.call(&AgentRequest::Lookup { key: key.0 }) {
                Ok(AgentResponse::Cached { entry, peer })
                    if self.restore_bytes(&entry, names::HIT_FARM) =>
                {
                    tracing::info!(peer, "answered by the farm's cache");
                    Farmed::Served(entry)
                }
                Ok(_) => {
                    tracing::info!(reason = p.reason, detail = %p.detail, "compiled at home");
                    self.tally
                        .add(format!("{}.{}", names::FARM_HOME, p.reason), 1);
                    Farmed::Home(Home {
                        agent: Some(agent),
                        key: Some(key),
                        prepared: true,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "agent failed");
                    self.tally
                        .add(format!("{}.agent_error", names::FALLBACK), 1);
                    Farmed::Home(Home {
                        agent: None,
                        key: None,
                        prepared: true,
                    })
                }
            };
        }
        let invoked_as = Path::new(&self.inv.arg0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let req = AgentRequest::Miss {
            key: key.0,
            job: Job {
                family: self.family.name().to_string(),
                compiler: CompilerAd {
                    name: invoked_as,
                    identity: self.identity,
                },
                lang: job.lang,
                args: job.args,
                source: job.text,
            },
        };
        let home = |agent: Option<AgentClient>| {
            Farmed::Home(Home {
                agent,
                key: Some(key),
                prepared: true,
            })
        };
        let asked = self.t0.elapsed();
        let answer = agent.call(&req);
        let answered = self.t0.elapsed();
        match answer {
            Ok(AgentResponse::Cached { entry, peer }) => {
                if self.restore_bytes(&entry, names::HIT_FARM) {
                    tracing::info!(peer, "answered by the farm's cache");
                    return Farmed::Served(entry);
                }
                tracing::warn!(peer, "farm entry does not fit this compile");
                self.tally.add(format!("{}.bad_entry", names::FALLBACK), 1);
                home(Some(agent))
            }
            Ok(AgentResponse::Compiled(r)) => {
                if r.exit_code != 0 || !r.stdout.is_empty() || !r.stderr.is_empty() {
                    // The compiler's messages must be its own, from this machine
                    // (source lines, colours, paths): compile here to show them.
                    tracing::info!(worker = %r.worker, exit = r.exit_code, "remote compile had diagnostics: compiling here");
                    self.tally
                        .add(format!("{}.diagnostics", names::FARM_HOME), 1);
                    return home(Some(agent));
                }
                let object = &self.inv.outputs[0].path;
                if let Err(e) = fsutil::write_atomic(object, &r.object) {
                    tracing::warn!(path = %object.display(), error = %e, "cannot write remote object");
                    self.tally
                        .add(format!("{}.write_output", names::FALLBACK), 1);
                    return home(Some(agent));
                }
                let Some(payload) = self.payload_from_disk(&[], &[], r.compile_ms) else {
                    return home(Some(agent));
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
                agent.tell(&AgentRequest::Publish {
                    key: key.0,
                    entry: payload.clone(),
                    local_ms: 0,
                });
                Farmed::Served(payload)
            }
            Ok(AgentResponse::Local(reason)) => {
                tracing::info!(reason, "agent: compile at home");
                self.tally
                    .add(format!("{}.{}", names::FARM_HOME, reason), 1);
                home(Some(agent))
            }
            Ok(other) => {
                tracing::warn!(answer = ?std::mem::discriminant(&other), "unexpected agent answer");
                self.tally
                    .add(format!("{}.agent_protocol", names::FALLBACK), 1);
                home(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "agent failed");
                self.tally
                    .add(format!("{}.agent_error", names::FALLBACK), 1);
                home(None)
            }
        }
    }
}
