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
}

impl Preprocessor {
    pub fn new(obs: &'static dyn Observed, marker: Option<PreprocessorOnly>) -> Preprocessor {
        Preprocessor {
            obs,
            marker,
            rkey: CacheKey([0; 32]),
        }
    }
}

/// The preprocessor-mode key, or why there is none.
fn preprocessed_key(ctx: &mut Ctx, obs: &dyn Observed) -> Result<CacheKey, lang::Passthrough> {
    let text = match obs.preprocess(&ctx.inv) {
        Ok(Ok(t)) => t,
        Ok(Err(p)) => return Err(p),
        Err(e) => return Err(lang::Passthrough::new("preprocessor_error", e.to_string())),
    };
    let base = ctx
        .base_hasher("preprocessor")
        .map_err(|e| lang::Passthrough::new("input_unreadable", e.to_string()))?;
    Ok(key::finish(base, "preprocessed", &text))
}

impl Mode for Preprocessor {
    fn key(&mut self, ctx: &mut Ctx, _: &mut Tiered) -> Result<(), i32> {
        // Its text would differ every second: never worth storing.
        if self.marker.as_ref().is_some_and(|m| m.uses_time) {
            return Err(ctx.uncached("uses __TIME__", "time_macro"));
        }
        match preprocessed_key(ctx, self.obs) {
            Ok(k) => {
                self.rkey = k;
                Ok(())
            }
            // A preprocessor error is reported by the compiler in its own words.
            Err(p) => Err(ctx.uncached(&p.detail, p.reason)),
        }
    }

    fn lookup(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup {
        let hit = flow::hit_outcome(ctx, i, crate::stats::Outcome::HitPreprocessor);
        flow::lookup_result(ctx, tiers, i, &self.rkey, false, &mut |c, d, _| {
            c.restore_files(d, hit.clone())
        })
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

    fn store(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, ran: &Ran) -> Vec<Item> {
        let Some(payload) = &ran.payload else {
            return Vec::new();
        };
        flow::put_local(ctx, tiers, EntryKind::Result, &self.rkey, payload);
        vec![Item {
            kind: EntryKind::Result,
            key: self.rkey.0,
            data: payload.clone(),
        }]
    }
}
