//! Preprocessor mode: keyed by the preprocessed text. Also where direct mode sends a
//! source it cannot key directly (its manifest holds the marker saying why).

use super::exec::{self, Remote};
use super::farm::Farm;
use super::flow::{self, Lookup, Mode, Ran};
use super::Ctx;
use crate::key::{self, PreprocessorOnly};
use crate::lang::{self, Observed};
use crate::protocol::Item;
use crate::store::{CacheKey, EntryKind, Tiered};

pub(super) struct Preprocessor {
    obs: &'static dyn Observed,
    /// Why direct mode sent this source here, when it did.
    marker: Option<PreprocessorOnly>,
    rkey: CacheKey,
    /// With `base_dir`: the key a result that depends on where the checkout is
    /// goes under (known only once it compiled), looked up after `rkey`.
    pinned_key: Option<CacheKey>,
}

impl Preprocessor {
    pub fn new(obs: &'static dyn Observed, marker: Option<PreprocessorOnly>) -> Preprocessor {
        Preprocessor {
            obs,
            marker,
            rkey: CacheKey([0; 32]),
            pinned_key: None,
        }
    }
}

/// The preprocessor-mode key, and whether the text asks the compiler for a file's
/// path (with `base_dir`); or why there is none.
pub(super) fn preprocessed_key(
    ctx: &mut Ctx,
    obs: &dyn Observed,
) -> Result<(CacheKey, bool), lang::Passthrough> {
    let text = match obs.preprocess(&ctx.inv) {
        Ok(Ok(t)) => t,
        Ok(Err(p)) => return Err(p),
        Err(e) => return Err(lang::Passthrough::new("preprocessor_error", e.to_string())),
    };
    let base = ctx
        .base_hasher("preprocessor")
        .map_err(|e| lang::Passthrough::new("input_unreadable", e.to_string()))?;
    // Line markers name files relative to their base directory; an expanded
    // `__FILE__` in the code stays as it is.
    let names_paths = !ctx.base.is_empty() && obs.text_names_paths(&text);
    Ok((
        key::finish(base, "preprocessed", &ctx.base.line_markers(&text)),
        names_paths,
    ))
}

impl Mode for Preprocessor {
    fn key(&mut self, ctx: &mut Ctx, _: &mut Tiered) -> Result<(), i32> {
        // Its text would differ every second: never worth storing.
        if self.marker.as_ref().is_some_and(|m| m.uses_time) {
            return Err(ctx.uncached("uses __TIME__", "time_macro"));
        }
        match preprocessed_key(ctx, self.obs) {
            Ok((k, names_paths)) => {
                self.rkey = k;
                if !ctx.base.is_empty() {
                    let pinned = key::pinned(&k, &ctx.base);
                    // Debug info that records paths no map rewrites, or a builtin
                    // that takes a path from the (relative) line markers: pinned
                    // from the start.
                    let recorded = ctx.inv.paths.recorded.as_ref();
                    if recorded.is_some_and(|r| !ctx.base.covered_by(r)) || names_paths {
                        self.rkey = pinned;
                    } else {
                        self.pinned_key = Some(pinned);
                    }
                }
                Ok(())
            }
            // A preprocessor error is reported by the compiler in its own words.
            Err(p) => Err(ctx.uncached(&p.detail, p.reason)),
        }
    }

    fn lookup(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup {
        let hit = flow::hit_outcome(ctx, i, crate::stats::Outcome::HitPreprocessor);
        let found = flow::lookup_result(ctx, tiers, i, &self.rkey, false, &mut |c, d, _| {
            c.restore_files(d, hit.clone())
        });
        match (found, self.pinned_key) {
            (Lookup::Miss, Some(pk)) if tiers.usable(i) => {
                flow::lookup_result(ctx, tiers, i, &pk, false, &mut |c, d, _| {
                    c.restore_files(d, hit.clone())
                })
            }
            (found, _) => found,
        }
    }

    fn execute(&mut self, ctx: &mut Ctx, farm: &Farm) -> Result<Ran, i32> {
        if let Remote::Done(payload) = exec::remote_text(ctx, farm) {
            self.obs.cleanup(&ctx.inv);
            return Ok(Ran::remote(payload, 0));
        }
        let run = exec::home_miss(ctx, self.obs, false);
        self.obs.cleanup(&ctx.inv);
        let run = run?;
        let ms = run.elapsed.as_millis() as u64;
        let payload = ctx.payload_from_disk(&run.stdout, &run.stderr, ms);
        Ok(Ran::home(&run, payload))
    }

    fn why_content(&self, _: &Ctx) -> (&'static str, crate::why::Content) {
        let content = crate::why::Content {
            key: Some(crate::why::short(&self.rkey.0)),
            ..Default::default()
        };
        ("preprocessor", content)
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
        vec![Item {
            kind: EntryKind::Result,
            key: key.0,
            data: payload.clone(),
        }]
    }
}
