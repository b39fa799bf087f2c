//! The flow of declared-input families (javac; csc next): every input is named on the
//! command line, so the key is computed up front from their content, with no
//! manifest; outputs are trees of files, found by compiling into fresh directories
//! and restored file by file (each written atomically).

use std::path::{Component, Path, PathBuf};

use super::{emit, exit_code, Ctx, Tally};
use crate::cache::EntryKind;
use crate::fsutil;
use crate::key::{self, OutputBlob, ResultEntry};
use crate::lang::{CompileRun, Declared, OutputDir, Passthrough, TreeArgs};
use crate::protocol::{AgentRequest, AgentResponse, Blob, Item, Kind, TreeFile, TreeJob};
use crate::stats::names;

/// A relative path from a cache entry that stays inside its output directory.
fn safe_relative(rel: &str) -> Option<&Path> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then_some(p)
}

/// Why a compile that ran outside this process (warm JVM, peer) cannot stand for a
/// fresh compiler here, if it cannot: it failed (the real compiler shows that in its
/// own words), or it printed messages that could differ (paths made absolute, text a
/// non-UTF-8 locale would show otherwise).
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

/// A private directory for one compile's fresh output directories.
struct Scratch(PathBuf);

impl Scratch {
    fn new(cache_dir: &Path) -> std::io::Result<Scratch> {
        let base = cache_dir.join("tmp");
        fsutil::create_cache_dir_all(&base)?;
        for n in 0..1000u32 {
            let d = base.join(format!("tree-{}-{n}", std::process::id()));
            match std::fs::create_dir(&d) {
                Ok(()) => return Ok(Scratch(d)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free scratch directory"))
    }

    /// One fresh directory per output role.
    fn dirs(&self, outs: &[OutputDir]) -> std::io::Result<Vec<PathBuf>> {
        outs.iter()
            .map(|o| {
                let d = self.0.join(o.role);
                std::fs::create_dir_all(&d)?;
                Ok(d)
            })
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Blobs per request to the agent: well under a frame's limit.
const BLOB_BATCH: usize = 16 << 20;

/// How a remote attempt ended.
enum Remote {
    /// A peer compiled it; the outputs are in the scratch directories.
    Done(CompileRun),
    /// Compile at home; `reserved` when the agent counts it against home's slots.
    Home { reserved: bool },
    /// The agent failed: leave it alone for the rest of this compile.
    AgentGone,
}

/// How a miss was compiled.
enum Compiled {
    /// The outputs are in the scratch directories.
    Done(CompileRun),
    /// The compiler failed: its exit code (its messages are already shown).
    Failed(i32),
}

impl Ctx<'_> {
    /// Runs one declared-input compile through the cache.
    pub(super) fn declared_mode(&mut self, decl: &dyn Declared) -> i32 {
        let memo = self.cfg.dir.value.join("memo");
        let inputs = match decl.inputs(&self.inv, &memo) {
            Ok(i) => i,
            Err(p) => return self.uncached(&p.detail, p.reason),
        };
        let base = match key::base_hasher("declared", self.family, &self.identity, &self.inv) {
            Ok(h) => h,
            Err(e) => return self.uncached(&e.to_string(), "input_unreadable"),
        };
        let rkey = key::finish_declared(base, &inputs.key);
        let outs = decl.output_dirs(&self.inv);
        if let Some(data) = self.get(EntryKind::Result, &rkey) {
            if self.restore_tree(&data, &outs, names::HIT_DECLARED) {
                return 0;
            }
            self.tally.add(names::CORRUPT_ENTRY, 1);
            let _ = std::fs::remove_file(self.store.entry_path(EntryKind::Result, &rkey));
        }
        let mut agent = self.farm_agent();
        if let Some(a) = agent.as_mut() {
            match self.farm_fetch(a, Kind::Result, &rkey) {
                Ok(Some(entry)) if self.restore_tree(&entry, &outs, names::HIT_FARM) => {
                    self.put(EntryKind::Result, &rkey, &entry);
                    return 0;
                }
                Ok(Some(_)) => {
                    self.tally.add(format!("{}.bad_entry", names::FALLBACK), 1);
                }
                Ok(None) => {}
                Err(()) => agent = None,
            }
        }
        let scratch = match Scratch::new(&self.cfg.dir.value) {
            Ok(s) => s,
            Err(e) => return self.uncached(&e.to_string(), "scratch_unwritable"),
        };
        let dirs = match scratch.dirs(&outs) {
            Ok(d) => d,
            Err(e) => return self.uncached(&e.to_string(), "scratch_unwritable"),
        };
        let mut reserved = false;
        let run = match self.declared_compile(
            decl,
            &mut agent,
            &inputs.files,
            &dirs,
            &scratch.0,
            &mut reserved,
        ) {
            Compiled::Done(run) => run,
            Compiled::Failed(code) => {
                // Whatever the compiler wrote before failing is where it would be.
                self.place_outputs(&outs, &dirs);
                return code;
            }
        };
        let ms = run.elapsed.as_millis() as u64;
        let payload = match self.tree_payload(&outs, &dirs, &run) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the compile's outputs");
                self.tally
                    .add(format!("{}.missing_output", names::NOT_STORED), 1);
                self.place_outputs(&outs, &dirs);
                return 0;
            }
        };
        if !self.write_tree(&payload, &outs) {
            // The outputs cannot be put in place (an unwritable -d): javac itself
            // must say why, so it runs once more, untouched.
            return self.uncached("output directory unwritable", "output_unwritable");
        }
        if ResultEntry::decode(&payload).is_some_and(|e| e.outputs.is_empty()) && !outs.is_empty() {
            self.tally
                .add(format!("{}.no_output", names::NOT_STORED), 1);
            return 0;
        }
        self.put(EntryKind::Result, &rkey, &payload);
        if let Some(a) = agent.as_mut() {
            let item = Item {
                kind: Kind::Result,
                key: rkey.0,
                data: payload,
            };
            a.tell(&AgentRequest::Publish {
                items: vec![item],
                local_ms: if reserved { ms } else { 0 },
            });
        }
        tracing::info!(source = %self.inv.source.display(), ms, "declared miss stored");
        0
    }

    /// Compiles a miss into `dirs`: in the agent's warm compiler when it can take
    /// it and the result is certain to be what a fresh compiler gives, else here.
    fn declared_compile(
        &mut self,
        decl: &dyn Declared,
        agent: &mut Option<crate::agent_client::AgentClient>,
        files: &[(PathBuf, [u8; 32])],
        dirs: &[PathBuf],
        scratch: &Path,
        reserved: &mut bool,
    ) -> Compiled {
        if let Some(a) = agent.as_mut() {
            let tree = match self.family.tree_jobs() {
                Some(t) => t.tree_args(&self.inv, dirs),
                None => Err(Passthrough::new("family", self.family.name())),
            };
            match tree {
                Err(p) => {
                    tracing::info!(reason = p.reason, detail = %p.detail, "not warm");
                    self.tally
                        .add(format!("{}.{}", names::WARM_DECLINED, p.reason), 1);
                    self.tally
                        .add(format!("{}.{}", names::FARM_HOME, p.reason), 1);
                }
                Ok(tree) => {
                    match self.declared_remote(a, &tree, files, dirs) {
                        Remote::Done(run) => return Compiled::Done(run),
                        Remote::Home { reserved: r } => *reserved = r,
                        Remote::AgentGone => {
                            *agent = None;
                            return self.declared_fresh(decl, dirs, scratch);
                        }
                    }
                    let Some(warm) = self.family.warm() else {
                        return self.declared_fresh(decl, dirs, scratch);
                    };
                    let job = match warm.warm_job(&self.inv, dirs) {
                        Ok(j) => j,
                        Err(p) => {
                            self.tally
                                .add(format!("{}.{}", names::WARM_DECLINED, p.reason), 1);
                            return self.declared_fresh(decl, dirs, scratch);
                        }
                    };
                    let t0 = std::time::Instant::now();
                    let started_ns = fsutil::now_ns();
                    let req = AgentRequest::Warm {
                        home: job.installation.to_string_lossy().into_owned(),
                        args: job.args,
                    };
                    match self.ask(a, &req) {
                        Some(AgentResponse::Compiled(r)) => {
                            let why_not =
                                untrusted(r.exit_code, &r.stdout, &r.stderr, job.paths_rewritten);
                            match why_not {
                                None => {
                                    emit(&r.stdout, &r.stderr);
                                    self.tally.add(names::MISS, 1);
                                    self.tally.add(names::WARM, 1);
                                    self.tally.add(names::COMPILE_MS, r.compile_ms);
                                    return Compiled::Done(CompileRun {
                                        status: std::os::unix::process::ExitStatusExt::from_raw(0),
                                        stdout: r.stdout,
                                        stderr: r.stderr,
                                        elapsed: t0.elapsed(),
                                        started_ns,
                                    });
                                }
                                Some(why) => {
                                    self.tally.add(format!("{}.{why}", names::WARM_DECLINED), 1);
                                    for d in dirs {
                                        let _ = std::fs::remove_dir_all(d);
                                        let _ = std::fs::create_dir_all(d);
                                    }
                                }
                            }
                        }
                        Some(AgentResponse::Local(reason)) => {
                            tracing::info!(reason, "agent: no warm compiler");
                            self.tally
                                .add(format!("{}.{reason}", names::WARM_DECLINED), 1);
                        }
                        Some(_) => {
                            self.off_protocol();
                            *agent = None;
                        }
                        None => *agent = None,
                    }
                }
            }
        }
        self.declared_fresh(decl, dirs, scratch)
    }

    /// Compiles a miss here with a fresh compiler process.
    fn declared_fresh(
        &mut self,
        decl: &dyn Declared,
        dirs: &[PathBuf],
        scratch: &Path,
    ) -> Compiled {
        let run = match decl.compile_into(&self.inv, dirs, scratch) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot run compiler");
                self.tally
                    .add(format!("{}.spawn_failed", names::PASSTHROUGH), 1);
                self.tally.flush(&self.stats);
                self.tally = Tally::default();
                return Compiled::Failed(super::exec_compiler(
                    &self.inv.compiler,
                    &self.inv.arg0,
                    &self.inv.args,
                ));
            }
        };
        emit(&run.stdout, &run.stderr);
        if !run.status.success() {
            self.tally.add(names::COMPILE_FAILED, 1);
            return Compiled::Failed(exit_code(run.status));
        }
        self.tally.add(names::MISS, 1);
        self.tally
            .add(names::COMPILE_MS, run.elapsed.as_millis() as u64);
        Compiled::Done(run)
    }

    /// Ships a miss to a peer when the agent's placement says so. Its inputs go as
    /// blobs the agent lacks (the agent forwards those its peer lacks); the outputs
    /// land in `dirs`.
    fn declared_remote(
        &mut self,
        agent: &mut crate::agent_client::AgentClient,
        job: &TreeArgs,
        files: &[(PathBuf, [u8; 32])],
        dirs: &[PathBuf],
    ) -> Remote {
        let compiler = self.compiler_ad();
        let place = AgentRequest::Place {
            compiler: compiler.clone(),
        };
        match self.ask(agent, &place) {
            Some(AgentResponse::Ship) => {}
            Some(AgentResponse::Local(reason)) => {
                self.tally
                    .add(format!("{}.{}", names::FARM_HOME, reason), 1);
                return Remote::Home { reserved: true };
            }
            Some(_) => {
                self.off_protocol();
                return Remote::AgentGone;
            }
            None => return Remote::AgentGone,
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
        let missing = match self.ask(agent, &AgentRequest::MissingBlobs(digests)) {
            Some(AgentResponse::MissingBlobs(m)) => m,
            Some(_) => {
                self.off_protocol();
                return Remote::AgentGone;
            }
            None => return Remote::AgentGone,
        };
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        for d in missing {
            let Some(p) = local_of.get(&d) else { continue };
            let Ok(data) = fsutil::read_file(p) else {
                return Remote::Home { reserved: false };
            };
            if *blake3::hash(&data).as_bytes() != d {
                // Changed since it was keyed: this compile must read it here.
                self.tally
                    .add(format!("{}.input_changed", names::FARM_HOME), 1);
                return Remote::Home { reserved: false };
            }
            batch_bytes += data.len();
            batch.push(Blob { digest: d, data });
            if batch_bytes > BLOB_BATCH {
                if !self.send_blobs(agent, std::mem::take(&mut batch)) {
                    return Remote::AgentGone;
                }
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() && !self.send_blobs(agent, batch) {
            return Remote::AgentGone;
        }
        let tree = TreeJob {
            family: self.family.name().to_string(),
            compiler,
            args: job.args.clone(),
            outputs: self
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
        let r = match self.ask(agent, &AgentRequest::CompileTree(tree)) {
            Some(AgentResponse::TreeCompiled(r)) => r,
            Some(AgentResponse::Local(reason)) => {
                self.count_sent_home(&reason);
                return Remote::Home { reserved: true };
            }
            Some(_) => {
                self.off_protocol();
                return Remote::AgentGone;
            }
            None => return Remote::AgentGone,
        };
        if let Some(why) = untrusted(r.exit_code, &r.stdout, &r.stderr, job.paths_rewritten) {
            tracing::info!(worker = %r.worker, why, "remote compile not used: compiling here");
            self.tally.add(format!("{}.{why}", names::FARM_HOME), 1);
            return Remote::Home { reserved: false };
        }
        for o in &r.outputs {
            let placed = o.path.split_once('/').and_then(|(role, rel)| {
                let i = self.inv.outputs.iter().position(|x| x.role == role)?;
                Some(dirs[i].join(safe_relative(rel)?))
            });
            let Some(path) = placed else {
                self.tally.add(format!("{}.bad_output", names::FALLBACK), 1);
                return Remote::Home { reserved: false };
            };
            let written = path
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(&path, &o.data));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write remote output");
                self.tally
                    .add(format!("{}.write_output", names::FALLBACK), 1);
                return Remote::Home { reserved: false };
            }
        }
        emit(&r.stdout, &r.stderr);
        self.tally.add(names::MISS, 1);
        self.tally.add(names::FARM_REMOTE, 1);
        self.tally.add(names::COMPILE_MS, r.compile_ms);
        tracing::info!(worker = %r.worker, ms = r.compile_ms, files = files.len(), "compiled by a peer");
        Remote::Done(CompileRun {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: r.stdout,
            stderr: r.stderr,
            elapsed: t0.elapsed(),
            started_ns,
        })
    }

    fn send_blobs(
        &mut self,
        agent: &mut crate::agent_client::AgentClient,
        blobs: Vec<Blob>,
    ) -> bool {
        match self.ask(agent, &AgentRequest::PutBlobs(blobs)) {
            Some(AgentResponse::Published) => true,
            Some(_) => {
                self.off_protocol();
                false
            }
            None => false,
        }
    }

    /// The result entry of a compile whose outputs are in `dirs`.
    fn tree_payload(
        &self,
        outs: &[OutputDir],
        dirs: &[PathBuf],
        run: &CompileRun,
    ) -> std::io::Result<Vec<u8>> {
        let mut files = Vec::new();
        for (o, d) in outs.iter().zip(dirs) {
            for (rel, data) in fsutil::collect_tree(d)? {
                files.push((format!("{}/{rel}", o.role), data));
            }
        }
        let entry = ResultEntry {
            stdout: &run.stdout,
            stderr: &run.stderr,
            outputs: files
                .iter()
                .map(|(role, data)| OutputBlob { role, data })
                .collect(),
            compile_ms: run.elapsed.as_millis() as u64,
        };
        Ok(entry.encode())
    }

    /// Writes an entry's files into the output directories. `false` when the entry
    /// is damaged or a file cannot be written.
    fn write_tree(&mut self, data: &[u8], outs: &[OutputDir]) -> bool {
        let Some(entry) = ResultEntry::decode(data) else {
            return false;
        };
        let mut plan = Vec::with_capacity(entry.outputs.len());
        for b in &entry.outputs {
            let Some((role, rel)) = b.role.split_once('/') else {
                return false;
            };
            let Some(out) = outs.iter().find(|o| o.role == role) else {
                return false;
            };
            let Some(rel) = safe_relative(rel) else {
                return false;
            };
            plan.push((out.path.join(rel), b.data));
        }
        for (path, data) in plan {
            if let Some(parent) = path.parent() {
                if let Err(e) = std::fs::create_dir_all(parent) {
                    tracing::warn!(path = %parent.display(), error = %e, "cannot create output directory");
                    return false;
                }
            }
            if let Err(e) = fsutil::write_atomic(&path, data) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write output");
                return false;
            }
        }
        true
    }

    /// A hit: the entry's files written, its messages replayed.
    fn restore_tree(&mut self, data: &[u8], outs: &[OutputDir], hit_counter: &str) -> bool {
        let Some(entry) = ResultEntry::decode(data) else {
            return false;
        };
        // An entry with no files never stands for a compile that writes into output
        // directories (such an entry, from anyone, would otherwise match any compile);
        // such compiles are not stored either.
        if entry.outputs.is_empty() && !outs.is_empty() {
            return false;
        }
        if !self.write_tree(data, outs) {
            return false;
        }
        self.replay_hit(&entry, hit_counter);
        true
    }

    /// Moves what a failed or unstorable compile wrote to where the compiler would
    /// have written it.
    fn place_outputs(&mut self, outs: &[OutputDir], dirs: &[PathBuf]) {
        for (o, d) in outs.iter().zip(dirs) {
            let Ok(files) = fsutil::collect_tree(d) else {
                continue;
            };
            for (rel, data) in files {
                let path = o.path.join(&rel);
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = fsutil::write_atomic(&path, &data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert!(safe_relative("com/x/A.class").is_some());
        assert!(safe_relative("../A.class").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/./b").is_some());
        assert!(safe_relative("").is_none());
    }

    #[test]
    fn trees_are_collected_sorted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("b/c/Z.class"), "z").unwrap();
        std::fs::write(d.path().join("A.class"), "a").unwrap();
        let t = fsutil::collect_tree(d.path()).unwrap();
        assert_eq!(
            t,
            vec![
                ("A.class".to_string(), b"a".to_vec()),
                ("b/c/Z.class".to_string(), b"z".to_vec())
            ]
        );
        assert!(fsutil::collect_tree(&d.path().join("none"))
            .unwrap()
            .is_empty());
    }
}
