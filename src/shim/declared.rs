//! Declared mode, for families whose every input is named on the command line
//! (javac, csc): the key is computed up front from those inputs' content, with no
//! manifest; outputs are trees of files, found by compiling into fresh directories
//! and restored file by file (each written atomically).

use std::path::{Component, Path, PathBuf};

use super::exec;
use super::farm::Farm;
use super::flow::{self, Lookup, Mode, Ran};
use super::{Ctx, Restored};
use crate::fsutil;
use crate::key::{self, OutputBlob, ResultEntry};
use crate::lang::{self, CompileRun, OutputDir};
use crate::protocol::Item;
use crate::stats::Outcome;
use crate::store::{CacheKey, EntryKind, Tiered};

/// A relative path from a cache entry that stays inside its output directory.
pub(super) fn safe_relative(rel: &str) -> Option<&Path> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then_some(p)
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

/// A declared-input compile: its inputs, key and output directories.
pub(super) struct Declared {
    decl: &'static dyn lang::Declared,
    files: Vec<(PathBuf, [u8; 32])>,
    rkey: CacheKey,
    /// With `base_dir`: the key a result that depends on where the checkout is
    /// goes under (known only once it compiled), looked up after `rkey`.
    pinned_key: Option<CacheKey>,
    outs: Vec<OutputDir>,
    /// The inputs as keyed (for `farm why`).
    key_inputs: Vec<lang::KeyInput>,
}

impl Declared {
    pub fn new(decl: &'static dyn lang::Declared) -> Declared {
        Declared {
            decl,
            files: Vec::new(),
            rkey: CacheKey([0; 32]),
            pinned_key: None,
            outs: Vec::new(),
            key_inputs: Vec::new(),
        }
    }
}

impl Mode for Declared {
    fn key(&mut self, ctx: &mut Ctx, _: &mut Tiered) -> Result<(), i32> {
        let memo = ctx.cfg.dir.value.join("memo");
        let inputs = match self.decl.inputs(&ctx.inv, &memo) {
            Ok(i) => i,
            Err(p) => return Err(ctx.uncached(&p.detail, p.reason)),
        };
        let base = match ctx.base_hasher("declared") {
            Ok(h) => h,
            Err(e) => return Err(ctx.uncached(&e.to_string(), "input_unreadable")),
        };
        self.rkey = key::finish_declared(base, &inputs.key, &ctx.base);
        if !ctx.base.is_empty() {
            let pinned = key::pinned(&self.rkey, &ctx.base);
            // Outputs that record the sources' paths (debug symbols): pinned from
            // the start.
            let recorded = ctx.inv.paths.recorded.as_ref();
            if recorded.is_some_and(|r| !ctx.base.covered_by(r)) {
                self.rkey = pinned;
            } else {
                self.pinned_key = Some(pinned);
            }
        }
        self.files = inputs.files;
        self.key_inputs = inputs.key;
        self.outs = self.decl.output_dirs(&ctx.inv);
        Ok(())
    }

    fn lookup(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup {
        let hit = flow::hit_outcome(ctx, i, Outcome::HitDeclared);
        let outs = &self.outs;
        let found = flow::lookup_result(ctx, tiers, i, &self.rkey, true, &mut |c, d, _| {
            c.restore_tree(d, outs, hit.clone())
        });
        match (found, self.pinned_key) {
            (Lookup::Miss, Some(pk)) if tiers.usable(i) => {
                flow::lookup_result(ctx, tiers, i, &pk, true, &mut |c, d, _| {
                    c.restore_tree(d, outs, hit.clone())
                })
            }
            (found, _) => found,
        }
    }

    fn execute(&mut self, ctx: &mut Ctx, farm: &Farm) -> Result<Ran, i32> {
        let scratch = match Scratch::new(&ctx.cfg.dir.value) {
            Ok(s) => s,
            Err(e) => return Err(ctx.uncached(&e.to_string(), "scratch_unwritable")),
        };
        let dirs = match scratch.dirs(&self.outs) {
            Ok(d) => d,
            Err(e) => return Err(ctx.uncached(&e.to_string(), "scratch_unwritable")),
        };
        let run = exec::declared(ctx, farm, self.decl, &self.files, &dirs, &scratch.0);
        let run = match run {
            Ok(run) => run,
            Err(code) => {
                // Whatever the compiler wrote before failing is where it would be.
                ctx.place_outputs(&self.outs, &dirs);
                return Err(code);
            }
        };
        let payload = match ctx.tree_payload(&self.outs, &dirs, &run) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the compile's outputs");
                ctx.tally.count(Outcome::NotStored("missing_output".into()));
                ctx.place_outputs(&self.outs, &dirs);
                return Ok(Ran::home(&run, None));
            }
        };
        if !ctx.write_tree(&payload, &self.outs) {
            // The outputs cannot be put in place (an unwritable -d): the compiler
            // itself must say why, so it runs once more, untouched.
            return Err(ctx.uncached("output directory unwritable", "output_unwritable"));
        }
        let empty = ResultEntry::decode(&payload).is_some_and(|e| e.outputs.is_empty());
        if empty && !self.outs.is_empty() {
            ctx.tally.count(Outcome::NotStored("no_output".into()));
            return Ok(Ran::home(&run, None));
        }
        Ok(Ran::home(&run, Some(payload)))
    }

    fn why_content(&self, ctx: &Ctx) -> (&'static str, crate::why::Content) {
        let content = crate::why::Content {
            declared: super::why::declared_content(&self.key_inputs, &ctx.base),
            ..Default::default()
        };
        ("declared", content)
    }

    fn store(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, ran: &Ran) -> Vec<Item> {
        let Some(payload) = &ran.payload else {
            return Vec::new();
        };
        let key = match self.pinned_key {
            Some(pk) if ctx.pinned_result(payload, None) => pk,
            _ => self.rkey,
        };
        flow::put_local(ctx, tiers, EntryKind::Result, &key, payload);
        tracing::info!(source = %ctx.inv.source.display(), ms = ran.local_ms, "declared miss stored");
        vec![Item {
            kind: EntryKind::Result,
            key: key.0,
            data: payload.clone(),
        }]
    }
}

impl Ctx<'_> {
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
        self.out_bytes = Some(entry.outputs.iter().map(|o| o.data.len() as u64).sum());
        match self.tree_plan(&entry, outs) {
            Some(plan) => write_planned(plan),
            None => false,
        }
    }

    /// Where each file of an entry goes; `None` when one would leave its output
    /// directory or names no output role of this compile (a damaged entry).
    fn tree_plan<'e>(
        &self,
        entry: &ResultEntry<'e>,
        outs: &[OutputDir],
    ) -> Option<Vec<(PathBuf, &'e [u8])>> {
        let mut plan = Vec::with_capacity(entry.outputs.len());
        for b in &entry.outputs {
            let (role, rel) = b.role.split_once('/')?;
            let out = outs.iter().find(|o| o.role == role)?;
            plan.push((out.path.join(safe_relative(rel)?), b.data));
        }
        Some(plan)
    }

    /// A hit: the entry's files written, its messages replayed.
    fn restore_tree(&mut self, data: &[u8], outs: &[OutputDir], hit: Outcome) -> Restored {
        let Some(entry) = ResultEntry::decode(data) else {
            return Restored::Corrupt;
        };
        // An entry with no files never stands for a compile that writes into output
        // directories (such an entry, from anyone, would otherwise match any compile);
        // such compiles are not stored either.
        if entry.outputs.is_empty() && !outs.is_empty() {
            return Restored::Corrupt;
        }
        match self.tree_plan(&entry, outs) {
            None => return Restored::Corrupt,
            Some(plan) => {
                if !write_planned(plan) {
                    return Restored::Unwritable;
                }
            }
        }
        self.replay_hit(&entry, hit);
        Restored::Hit
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

/// Writes planned files, each atomically. `false` when one cannot be written.
fn write_planned(plan: Vec<(PathBuf, &[u8])>) -> bool {
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
