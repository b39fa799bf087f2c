//! `farm stats [--json] [--zero]`: the counters, grouped for people or as JSON
//! (docs/stats.md).

use std::collections::BTreeMap;
use std::fmt::Display;

use super::{err, load, out};
use crate::config::{format_size, Config};
use crate::stats::{Outcome, ReasonFamily, Stats, Summary, TierKind, TierMeasure};
use crate::store::LocalStore;

pub(super) fn run(json_out: bool, zero: bool) -> i32 {
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    let st = Stats::new(&cfg.dir.value);
    if zero {
        if let Err(e) = st.zero() {
            return err(format!(
                "cannot zero statistics in {}: {e}",
                cfg.dir.value.display()
            ));
        }
        if !json_out {
            out("statistics zeroed\n");
            return 0;
        }
    }
    let s = Summary {
        counters: st.read(),
    };
    let store = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
    let usage = store.usage();
    if json_out {
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json(&cfg, &s, usage)).expect("json")
        ));
    } else {
        out(&text(&cfg, &s, usage));
    }
    0
}

/// `farm stats --json`; `usage` is the cache's (bytes, files).
fn json(cfg: &Config, s: &Summary, (bytes, files): (u64, u64)) -> serde_json::Value {
    serde_json::json!({
        "cache_dir": cfg.dir.value,
        "hits": {
            "direct": s.get(&Outcome::HitDirect),
            "preprocessor": s.get(&Outcome::HitPreprocessor),
            "depend": s.get(&Outcome::HitDepend),
            "declared": s.get(&Outcome::HitDeclared),
            "farm": s.get(&Outcome::HitFarm),
            "remote": s.get(&Outcome::HitRemote),
            "total": s.hits(),
        },
        "farm": {
            "remote": s.get(&Outcome::FarmRemote),
            "same_path": s.get(&Outcome::FarmSamePath),
            "home": s.group(ReasonFamily::FarmHome),
            "fallback": s.group(ReasonFamily::Fallback),
        },
        "misses": s.get(&Outcome::Miss),
        "warm": {
            "compiled": s.get(&Outcome::WarmCompiled),
            "declined": s.group(ReasonFamily::WarmDeclined),
        },
        "passthrough": s.group(ReasonFamily::Passthrough),
        "not_stored": s.group(ReasonFamily::NotStored),
        "compile_failed": s.get(&Outcome::CompileFailed),
        "errors": {
            "cache": s.get(&Outcome::CacheError),
            "corrupt_entries": s.get(&Outcome::CorruptEntry),
            "remote": s.get(&Outcome::RemoteError),
            "remote_skipped": s.get(&Outcome::RemoteSkipped),
            "remote_write_dropped": s.get(&Outcome::RemoteWriteDropped),
        },
        "evicted_files": s.get(&Outcome::EvictedFiles),
        "cleanups": s.get(&Outcome::Cleanups),
        "entries": files,
        "size_bytes": bytes,
        "max_size_bytes": cfg.max_size.value,
        "time_saved_ms": s.get(&Outcome::TimeSavedMs),
        "compile_ms": s.get(&Outcome::CompileMs),
        "tiers": tiers_json(s),
    })
}

/// `tiers.<kind>.<measure>` for every tier kind.
fn tiers_json(s: &Summary) -> serde_json::Value {
    let mut kinds = serde_json::Map::new();
    for kind in TierKind::ALL {
        let measures: serde_json::Map<String, serde_json::Value> = TierMeasure::ALL
            .iter()
            .map(|&m| (m.name().to_string(), s.tier(kind, m).into()))
            .collect();
        kinds.insert(kind.name().to_string(), measures.into());
    }
    kinds.into()
}

/// The tier kinds `farm stats` shows a line for: the local disk, every kind that
/// is configured or ever counted something.
fn shown_tiers(cfg: &Config, s: &Summary) -> Vec<TierKind> {
    let configured = |kind: TierKind| {
        cfg.remote_storage
            .value
            .iter()
            .any(|r| TierKind::of_remote(r.scheme) == kind)
    };
    TierKind::ALL
        .into_iter()
        .filter(|&k| k == TierKind::Local || configured(k) || s.tier_used(k))
        .collect()
}

/// One line per tier kind: hits, misses, errors, bytes read and written.
fn tier_table(cfg: &Config, s: &Summary) -> String {
    let mut t = format!(
        "  {:<10}{:>9}{:>9}{:>9}{:>12}{:>12}\n",
        "tier", "hits", "misses", "errors", "read", "written"
    );
    for kind in shown_tiers(cfg, s) {
        let n = |m| s.tier(kind, m);
        t.push_str(&format!(
            "  {:<10}{:>9}{:>9}{:>9}{:>12}{:>12}\n",
            kind.name(),
            n(TierMeasure::Hits),
            n(TierMeasure::Misses),
            n(TierMeasure::Errors),
            format_size(n(TierMeasure::BytesRead)),
            format_size(n(TierMeasure::BytesWritten)),
        ));
    }
    t
}

/// The table people read: one right-aligned number per line.
struct Table(String);

impl Table {
    fn line(&mut self, k: &str, v: impl Display) {
        self.0.push_str(&format!("  {k:<24}{v:>12}\n"));
    }

    /// One line per reason, under a line of their sum that the caller wrote.
    fn reasons(&mut self, indent: &str, group: &BTreeMap<String, u64>) {
        for (k, v) in group {
            self.line(&format!("{indent}{k}"), v);
        }
    }

    /// A line of a group's sum, then one per reason.
    fn group(&mut self, k: &str, group: &BTreeMap<String, u64>) {
        self.line(k, group.values().sum::<u64>());
        self.reasons("  ", group);
    }
}

/// `farm stats`; `usage` is the cache's (bytes, files).
fn text(cfg: &Config, s: &Summary, (bytes, files): (u64, u64)) -> String {
    let mut t = Table(format!(
        "farm statistics  (cache {})\n",
        cfg.dir.value.display()
    ));
    hits_and_misses(&mut t, s);
    t.group("farm fallbacks", &s.group(ReasonFamily::Fallback));
    let (hits, misses) = (s.hits(), s.get(&Outcome::Miss));
    if hits + misses > 0 {
        let rate = 100.0 * hits as f64 / (hits + misses) as f64;
        t.line("hit rate", format!("{rate:.1} %"));
    }
    let passthrough = s.group(ReasonFamily::Passthrough);
    t.group("pass-through", &passthrough);
    t.group("compiled, not stored", &s.group(ReasonFamily::NotStored));
    t.line("compile failed", s.get(&Outcome::CompileFailed));
    let errors = s.get(&Outcome::CacheError);
    t.line("cache errors", errors);
    t.line("corrupt entries", s.get(&Outcome::CorruptEntry));
    t.line("remote errors", s.get(&Outcome::RemoteError));
    t.line("remote calls skipped", s.get(&Outcome::RemoteSkipped));
    t.line("remote writes dropped", s.get(&Outcome::RemoteWriteDropped));
    t.line("evicted files", s.get(&Outcome::EvictedFiles));
    t.line("entries", files);
    let size = format!(
        "{} / {}",
        format_size(bytes),
        format_size(cfg.max_size.value)
    );
    t.line("size", size);
    let saved_s = s.get(&Outcome::TimeSavedMs) as f64 / 1000.0;
    t.line("time saved (est.)", format!("{saved_s:.1} s"));
    t.0.push_str(&tier_table(cfg, s));
    t.0.push_str(&format!(
        "summary: hits={hits} misses={misses} passthrough={} errors={errors}\n",
        passthrough.values().sum::<u64>()
    ));
    t.0
}

/// Hits by mode, then misses by where they were compiled.
fn hits_and_misses(t: &mut Table, s: &Summary) {
    t.line("hits", s.hits());
    t.line("  direct", s.get(&Outcome::HitDirect));
    t.line("  preprocessor", s.get(&Outcome::HitPreprocessor));
    t.line("  depend", s.get(&Outcome::HitDepend));
    t.line("  declared", s.get(&Outcome::HitDeclared));
    t.line("  farm", s.get(&Outcome::HitFarm));
    t.line("  remote", s.get(&Outcome::HitRemote));
    t.line("misses", s.get(&Outcome::Miss));
    t.line("  compiled by peers", s.get(&Outcome::FarmRemote));
    t.line("    at the same paths", s.get(&Outcome::FarmSamePath));
    t.line("  in a warm JVM", s.get(&Outcome::WarmCompiled));
    t.reasons("    cold: ", &s.group(ReasonFamily::WarmDeclined));
    let home = s.group(ReasonFamily::FarmHome);
    if !home.is_empty() {
        t.line("  compiled at home", home.values().sum::<u64>());
        t.reasons("    ", &home);
    }
}
