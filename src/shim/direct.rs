//! Direct and depend modes: keyed by the source and a manifest of what its compiles
//! read (checked by stat stamps and content here, by content alone for the farm's
//! portable entries). No preprocessor runs on a hit.

use super::exec::{self, Remote};
use super::farm::Farm;
use super::flow::{self, Lookup, Mode, Ran, LOCAL};
use super::preprocessor::{preprocessed_key, Preprocessor};
use super::{Ctx, Restored};
use crate::config::Mode as ConfigMode;
use crate::fsutil;
use crate::key::{self, Manifest, ManifestEntry, PreprocessorOnly, RecordError};
use crate::lang::{self, DepSource, Observed};
use crate::protocol::Item;
use crate::stats::Outcome;
use crate::store::{CacheKey, EntryKind, Tiered};

pub(super) struct Direct {
    obs: &'static dyn Observed,
    /// Depend mode: only the compile's own dependency output is trusted, and the
    /// farm takes no part.
    depend: bool,
    /// The manifest key (set by `key`).
    mkey: CacheKey,
    /// Inputs changed after this instant may not be what the key describes.
    keyed_ns: i128,
    source: Vec<u8>,
    /// This machine's manifest for the key, to which new entries are added.
    manifest: Manifest,
    /// With `base_dir`, after a miss by manifest: the key of the preprocessed text
    /// (see [`Direct::text_keys`]), under which the result is also stored.
    text_key: Option<TextKey>,
    /// For `farm why`, set on a miss only: the source's digest, and the entry recorded.
    source_digest: Option<crate::why::Digest>,
    recorded: Option<ManifestEntry>,
}

/// The preprocessor-mode key of a direct-mode compile, and whether its result must
/// be pinned whatever it prints (debug info no map rewrites, a builtin asking for a
/// file name).
#[derive(Clone, Copy)]
struct TextKey {
    key: CacheKey,
    pinned_first: bool,
}

impl Direct {
    pub fn new(obs: &'static dyn Observed, depend: bool) -> Direct {
        Direct {
            obs,
            depend,
            mkey: CacheKey([0; 32]),
            keyed_ns: 0,
            source: Vec::new(),
            manifest: Manifest::default(),
            text_key: None,
            source_digest: None,
            recorded: None,
        }
    }

    /// The keys a result of this preprocessed text may be stored under: the plain
    /// one, then the one pinned to this checkout's base directories.
    fn text_keys(&self, ctx: &Ctx) -> Vec<CacheKey> {
        match self.text_key {
            None => Vec::new(),
            Some(t) if t.pinned_first => vec![key::pinned(&t.key, &ctx.base)],
            Some(t) => vec![t.key, key::pinned(&t.key, &ctx.base)],
        }
    }

    fn hit(&self) -> Outcome {
        if self.depend {
            Outcome::HitDepend
        } else {
            Outcome::HitDirect
        }
    }

    /// The local manifest's entries, checked by stat stamp and content.
    fn lookup_local(&mut self, ctx: &mut Ctx, tiers: &mut Tiered) -> Lookup {
        let data = tiers.get_from(LOCAL, EntryKind::Manifest, &self.mkey, &mut |t, e| {
            flow::count_error(ctx, t, e)
        });
        self.manifest = match data {
            Some(data) => match Manifest::decode(&data) {
                Some(m) => m,
                None => {
                    ctx.tally.count(Outcome::CorruptEntry);
                    Manifest::default()
                }
            },
            None => Manifest::default(),
        };
        if let Some(marker) = self.manifest.preprocessor_only.clone() {
            if !self.depend {
                return Lookup::Done(flow::run(
                    ctx,
                    &mut Preprocessor::new(self.obs, Some(marker)),
                ));
            }
        }
        let mut memo = key::CheckMemo::default();
        let hit = self.hit();
        for e in &self.manifest.entries {
            if key::entry_matches(e, &mut memo, &ctx.base) {
                let r = e.result;
                let looked = flow::lookup_result(ctx, tiers, LOCAL, &r, false, &mut |c, d, _| {
                    c.restore_files(d, hit.clone())
                });
                if let Lookup::Hit = looked {
                    return Lookup::Hit;
                }
            }
        }
        Lookup::Miss
    }

    /// Direct mode's lookup in a shared tier (the farm's cache): the manifest shared
    /// under the key, checked here against this machine's files by content (shared
    /// entries travel without stat stamps), then the result from the same tier. A hit
    /// is kept here too.
    fn lookup_shared(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup {
        let Some(data) = tiers.get_from(i, EntryKind::Manifest, &self.mkey, &mut |t, e| {
            flow::count_error(ctx, t, e)
        }) else {
            return Lookup::Miss;
        };
        let Some(m) = Manifest::decode(&data) else {
            return Lookup::Miss;
        };
        let mut memo = key::CheckMemo::default();
        for e in m.entries {
            let e = e.portable();
            // A shared manifest's entry must name the result its own inputs lead to:
            // one filed under the wrong key (a server's mix-up, a hostile writer)
            // would otherwise pass the content check and serve another compile's
            // object.
            if e.result != e.expected_result(&self.mkey) {
                ctx.tally.count(Outcome::Fallback("bad_entry".into()));
                continue;
            }
            if !key::entry_matches(&e, &mut memo, &ctx.base) {
                continue;
            }
            let Some(result) = tiers.get_from(i, EntryKind::Result, &e.result, &mut |t, err| {
                flow::count_error(ctx, t, err)
            }) else {
                if !tiers.usable(i) {
                    return Lookup::Miss;
                }
                continue;
            };
            let hit = flow::hit_outcome(ctx, i, self.hit());
            if ctx.restore_files(&result, hit) != Restored::Hit {
                ctx.tally.count(Outcome::Fallback("bad_entry".into()));
                continue;
            }
            // A shared hit: keep it in the nearer tiers too. The local manifest gains
            // the entry (not where its result could not be kept); shared tiers before
            // this one get the result, and the entry merged into their manifest (never
            // this machine's whole manifest, which would replace other machines').
            if flow::backfill(ctx, tiers, i, EntryKind::Result, &e.result, &result) {
                let portable = Manifest {
                    preprocessor_only: None,
                    entries: vec![e.clone()],
                }
                .encode();
                self.manifest.add(e);
                let m = self.manifest.encode();
                flow::put_local(ctx, tiers, EntryKind::Manifest, &self.mkey, &m);
                flow::merge_into_shared(ctx, tiers, i, &self.mkey, &portable);
            }
            return Lookup::Hit;
        }
        Lookup::Miss
    }

    /// Records a manifest entry for a result whose outputs are on disk, and stores
    /// both here. The entry, when one could be recorded.
    fn record(
        &mut self,
        ctx: &mut Ctx,
        tiers: &mut Tiered,
        started_ns: i128,
        payload: &[u8],
        dep_source: DepSource,
    ) -> Option<ManifestEntry> {
        let facts = self.obs.dependencies(
            &ctx.inv,
            dep_source,
            &ctx.cfg.dir.value.join("memo"),
            &ctx.base.location_lookalikes(),
        );
        self.obs.cleanup(&ctx.inv);
        let nr = match facts {
            Ok(f) => {
                let reads_name_base = !f.files_naming.is_empty();
                let pinned =
                    ctx.pinned_result(payload, Some(reads_name_base)) || pinned_by_reads(ctx, &f);
                match key::record_entry(
                    &self.mkey,
                    &ctx.inv.source,
                    &f.files,
                    &f.missing,
                    &f.not_file,
                    &f.present,
                    started_ns,
                    &ctx.base,
                    pinned,
                ) {
                    Ok(entry) => {
                        if flow::put_local(ctx, tiers, EntryKind::Result, &entry.result, payload) {
                            self.manifest.add(entry.clone());
                            self.manifest.preprocessor_only = None;
                            let m = self.manifest.encode();
                            flow::put_local(ctx, tiers, EntryKind::Manifest, &self.mkey, &m);
                        }
                        return Some(entry);
                    }
                    Err(RecordError::TooNew(p)) => {
                        tracing::info!(path = %p.display(), "input modified during the compile: not stored");
                        ctx.tally.count(Outcome::NotStored("input_too_new".into()));
                        return None;
                    }
                    Err(RecordError::Unreadable(p)) => {
                        tracing::info!(path = %p.display(), "input unreadable after the compile: not stored");
                        ctx.tally
                            .count(Outcome::NotStored("input_unreadable".into()));
                        return None;
                    }
                }
            }
            Err(nr) => nr,
        };
        tracing::info!(reason = nr.reason, detail = %nr.detail, "no direct-mode entry");
        if nr.preprocessor_ok && !self.depend {
            // Key this source by its preprocessed text from the next compile on.
            // This result is not stored: a key computed now, after the compile,
            // could describe inputs edited while it ran.
            let marker = Manifest {
                preprocessor_only: Some(PreprocessorOnly {
                    reason: format!("{}: {}", nr.reason, nr.detail),
                    uses_time: nr.uses_time,
                }),
                entries: Vec::new(),
            };
            flow::put_local(
                ctx,
                tiers,
                EntryKind::Manifest,
                &self.mkey,
                &marker.encode(),
            );
            ctx.tally.count(Outcome::NotStored(nr.reason.into()));
        } else if nr.reason == lang::UNSUPPORTED_CODE_DIRECTIVE {
            // A header reads files no key covers: counted like the source's case.
            ctx.tally.count(Outcome::Passthrough(nr.reason.into()));
        } else {
            ctx.tally.count(Outcome::NotStored(nr.reason.into()));
        }
        None
    }
}

/// Whether what the compile read makes its result depend on where the checkout is:
/// a file names `__FILE__` or kin (expanded where it is used, it is that file's path,
/// and the code may compute with it; the family leaves out its compiler's own
/// headers, which pass it on as a string) unless a macro prefix map rewrites every
/// base directory; an include directive names a file under a base directory by its
/// absolute path, or a file there computes one (read there whatever the checkout);
/// an include directory in or into a base directory is a link or goes through `..`
/// (the compiler may name its headers by the real path, which is not relative).
fn pinned_by_reads(ctx: &Ctx, facts: &lang::DependencyFacts) -> bool {
    let base = &ctx.base;
    if base.is_empty() {
        return false;
    }
    let why = if !facts.path_macros.is_empty() && !base.covered_by(&ctx.inv.paths.macro_maps) {
        Some(format!(
            "{} names __FILE__ or kin",
            facts.path_macros[0].display()
        ))
    } else if let Some(p) = facts.absolute_includes.iter().find(|p| base.contains(p)) {
        Some(format!(
            "an include names {} by its absolute path",
            p.display()
        ))
    } else if let Some(p) = facts.computed_includes.iter().find(|p| base.contains(p)) {
        Some(format!("{} computes an include", p.display()))
    } else {
        facts
            .resolved_dirs
            .iter()
            .find(|(named, real)| base.contains(named) || base.contains(real))
            .map(|(named, real)| {
                format!(
                    "include directory {} is {}",
                    named.display(),
                    real.display()
                )
            })
    };
    if let Some(why) = &why {
        tracing::info!(source = %ctx.inv.source.display(), why, "result pinned to this checkout's base directories");
    }
    why.is_some()
}

impl Mode for Direct {
    fn key(&mut self, ctx: &mut Ctx, _: &mut Tiered) -> Result<(), i32> {
        debug_assert_eq!(self.depend, ctx.cfg.mode.value == ConfigMode::Depend);
        let base = match ctx.base_hasher("direct") {
            Ok(h) => h,
            Err(e) => return Err(ctx.uncached(&format!("{e}"), "input_unreadable")),
        };
        // The too-new check of what a miss records starts here, before the source is
        // read for the key.
        self.keyed_ns = fsutil::now_ns();
        self.source = match fsutil::read_file(&ctx.inv.source) {
            Ok(s) => s,
            // The compiler reports a missing source in its own words.
            Err(_) => return Err(ctx.uncached("source unreadable", "source_unreadable")),
        };
        self.mkey = key::finish(base, "source", &self.source);
        Ok(())
    }

    fn lookup(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup {
        match i {
            LOCAL => self.lookup_local(ctx, tiers),
            _ => self.lookup_shared(ctx, tiers, i),
        }
    }

    /// Text that makes the compiler read files no key covers is never cached nor
    /// shipped. (No entry is ever recorded for such a source, since recording scans
    /// it and every header: the hit path need not scan.)
    fn before_miss(&mut self, ctx: &mut Ctx) -> Result<(), i32> {
        let source = std::mem::take(&mut self.source);
        self.source_digest = Some(crate::why::short(blake3::hash(&source).as_bytes()));
        match self.obs.source_check(&source) {
            Ok(()) => Ok(()),
            Err(p) => Err(ctx.uncached(&p.detail, p.reason)),
        }
    }

    fn uses_farm(&self) -> bool {
        !self.depend
    }

    /// Depend mode too: a same-path job runs no preprocessor here.
    fn uses_peers(&self) -> bool {
        true
    }

    /// With `base_dir`, a compile no manifest entry matches is looked up by its
    /// preprocessed text too, as preprocessor mode would: another checkout's
    /// generated headers may differ from this one's only in where the checkout is
    /// (a `config.h` naming its source directory) while the text compiled is the
    /// same. Costs a preprocessor run on such a miss. Not in depend mode, which
    /// runs nothing but the compile.
    fn fallback(&mut self, ctx: &mut Ctx, tiers: &mut Tiered) -> (Lookup, usize) {
        let miss = (Lookup::Miss, LOCAL);
        if self.depend || ctx.base.is_empty() {
            return miss;
        }
        let (k, names_paths) = match preprocessed_key(ctx, self.obs) {
            Ok(k) => k,
            // The compile reports a preprocessor error in its own words.
            Err(p) => {
                tracing::debug!(reason = p.reason, "no lookup by preprocessed text");
                return miss;
            }
        };
        let recorded = ctx.inv.paths.recorded.as_ref();
        self.text_key = Some(TextKey {
            key: k,
            pinned_first: names_paths || recorded.is_some_and(|r| !ctx.base.covered_by(r)),
        });
        for i in 0..tiers.len() {
            for key in self.text_keys(ctx) {
                if !tiers.usable(i) {
                    break;
                }
                let hit = flow::hit_outcome(ctx, i, Outcome::HitPreprocessor);
                let looked = flow::lookup_result(ctx, tiers, i, &key, false, &mut |c, d, _| {
                    c.restore_files(d, hit.clone())
                });
                if !matches!(looked, Lookup::Miss) {
                    return (looked, i);
                }
            }
        }
        miss
    }

    fn execute(&mut self, ctx: &mut Ctx, farm: &Farm) -> Result<Ran, i32> {
        let prepared = match exec::remote_observed(ctx, farm, !self.depend) {
            Remote::Done(payload) => return Ok(Ran::remote(payload, self.keyed_ns)),
            Remote::Home { prepared } => prepared,
        };
        // Compile here, observing what the compile reads (unless the farm's
        // preprocessor run already wrote the dependency file).
        let run = exec::home_miss(ctx, self.obs, !prepared)?;
        let ms = run.elapsed.as_millis() as u64;
        let payload = ctx.payload_from_disk(&run.stdout, &run.stderr, ms);
        if payload.is_none() {
            self.obs.cleanup(&ctx.inv);
        }
        Ok(Ran::home(&run, payload))
    }

    fn why_content(&self, ctx: &Ctx) -> (&'static str, crate::why::Content) {
        let content = match &self.recorded {
            Some(e) => super::why::entry_content(e, &ctx.base, self.source_digest),
            None => crate::why::Content {
                source: self.source_digest,
                ..Default::default()
            },
        };
        ("direct", content)
    }

    fn store(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, ran: &Ran) -> Vec<Item> {
        let Some(payload) = &ran.payload else {
            return Vec::new();
        };
        let dep_source = if self.depend {
            DepSource::CompileOnly
        } else {
            DepSource::ScanIfNeeded
        };
        let started = if ran.remote {
            self.keyed_ns
        } else {
            self.keyed_ns.min(ran.started_ns)
        };
        let entry = self.record(ctx, tiers, started, payload, dep_source);
        let Some(e) = entry else { return Vec::new() };
        self.recorded = Some(e.clone());
        // Entries for the farm's cache: the result, and a manifest of this entry
        // alone (the key's home merges it into the one it holds).
        let result = e.result;
        let pinned = e.pinned.is_some();
        let m = Manifest {
            preprocessor_only: None,
            entries: vec![e.portable()],
        };
        let mut items = Vec::with_capacity(3);
        // Looked up by its text as well: stored under that key too (pinned as the
        // manifest entry is).
        if let Some(t) = self.text_key {
            let key = if pinned || t.pinned_first {
                key::pinned(&t.key, &ctx.base)
            } else {
                t.key
            };
            flow::put_local(ctx, tiers, EntryKind::Result, &key, payload);
            items.push(Item {
                kind: EntryKind::Result,
                key: key.0,
                data: payload.clone(),
            });
        }
        items.extend([
            Item {
                kind: EntryKind::Result,
                key: result.0,
                data: payload.clone(),
            },
            Item {
                kind: EntryKind::Manifest,
                key: self.mkey.0,
                data: m.encode(),
            },
        ]);
        items
    }
}
