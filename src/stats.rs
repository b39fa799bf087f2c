//! Persistent counters behind `farm stats`, and the typed outcomes they count.
//!
//! Counters live in 16 small text files under `<dir>/stats/`; a process updates the
//! shard picked by its pid, so parallel compiles rarely wait on each other. Each update
//! locks the shard (flock), reads it, adds, and writes it back in place.
//! A damaged shard reads as the counters it can parse: statistics never fail a build.
//!
//! What is counted is an [`Outcome`]; its [`counter`](Outcome::counter) name is what
//! the shard files, `farm stats` and `farm stats --json` show (docs/stats.md).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::fsutil::FileLock;

const SHARDS: u32 = 16;

/// Bytes of one shard read back, at most.
const MAX_SHARD: u64 = 1 << 20;

/// Why an outcome happened, as its counter names it: mostly a `&'static str` from
/// the compiler family (borrowed, so counting it allocates nothing), sometimes text
/// from farmd's agent (owned).
pub type Reason = Cow<'static, str>;

/// The counters that carry a reason: `<prefix>.<reason>`, one counter per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonFamily {
    /// Invocations farm did not cache and ran untouched.
    Passthrough,
    /// Compiles that ran and succeeded but recorded nothing.
    NotStored,
    /// Compiled at home although an agent was running (placement chose home, or
    /// this compile cannot be distributed).
    FarmHome,
    /// A farm failure that ended in a local compile.
    Fallback,
    /// A miss that ran a fresh compiler although a warm one was asked.
    WarmDeclined,
}

impl ReasonFamily {
    /// Every family.
    pub const ALL: [ReasonFamily; 5] = [
        ReasonFamily::Passthrough,
        ReasonFamily::NotStored,
        ReasonFamily::FarmHome,
        ReasonFamily::Fallback,
        ReasonFamily::WarmDeclined,
    ];

    /// The counter name before `.<reason>`.
    pub const fn prefix(self) -> &'static str {
        match self {
            ReasonFamily::Passthrough => "passthrough",
            ReasonFamily::NotStored => "not_stored",
            ReasonFamily::FarmHome => "farm.home",
            ReasonFamily::Fallback => "fallback",
            ReasonFamily::WarmDeclined => "warm.declined",
        }
    }

    /// The outcome of this family with `reason`.
    pub fn with(self, reason: impl Into<Reason>) -> Outcome {
        let reason = reason.into();
        match self {
            ReasonFamily::Passthrough => Outcome::Passthrough(reason),
            ReasonFamily::NotStored => Outcome::NotStored(reason),
            ReasonFamily::FarmHome => Outcome::FarmHome(reason),
            ReasonFamily::Fallback => Outcome::Fallback(reason),
            ReasonFamily::WarmDeclined => Outcome::WarmDeclined(reason),
        }
    }
}

/// A kind of cache tier, as `farm stats` counts them: the local disk, each kind of
/// remote (every tier of one kind adds to one set of counters), the farm's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierKind {
    Local,
    Redis,
    S3,
    /// Plain HTTP(S) (bazel-remote, a Bazel-layout nginx).
    Http,
    WebDav,
    /// The GitHub Actions cache.
    Gha,
    /// A REAPI server's Action Cache and CAS.
    Reapi,
    Farm,
}

impl TierKind {
    /// Every kind, in the order `farm stats` shows them (nearest tier first).
    pub const ALL: [TierKind; 8] = [
        TierKind::Local,
        TierKind::Redis,
        TierKind::S3,
        TierKind::Http,
        TierKind::WebDav,
        TierKind::Gha,
        TierKind::Reapi,
        TierKind::Farm,
    ];

    /// The kind a remote tier of `scheme` counts as.
    pub const fn of_remote(scheme: crate::store::remote::Scheme) -> TierKind {
        use crate::store::remote::Scheme;
        match scheme {
            Scheme::Redis | Scheme::Rediss => TierKind::Redis,
            Scheme::S3 => TierKind::S3,
            Scheme::Http => TierKind::Http,
            Scheme::WebDav => TierKind::WebDav,
            Scheme::Gha => TierKind::Gha,
            Scheme::Reapi => TierKind::Reapi,
        }
    }

    /// The name in counters (`tier.<name>.<measure>`) and in `farm stats`.
    pub const fn name(self) -> &'static str {
        match self {
            TierKind::Local => "local",
            TierKind::Redis => "redis",
            TierKind::S3 => "s3",
            TierKind::Http => "http",
            TierKind::WebDav => "webdav",
            TierKind::Gha => "gha",
            TierKind::Reapi => "reapi",
            TierKind::Farm => "farm",
        }
    }
}

/// What is counted per tier kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierMeasure {
    /// Compiles this tier answered.
    Hits,
    /// Lookups in this tier that found nothing usable (the compile went on to the
    /// next tier, or compiled).
    Misses,
    /// Failed calls: the tier was down, refused a write, or held a damaged entry.
    Errors,
    /// Entry bytes read from the tier (payloads as stored, before any framing or
    /// compression the tier adds).
    BytesRead,
    /// Entry bytes written to the tier (backfills, new results, manifests).
    BytesWritten,
}

impl TierMeasure {
    pub const ALL: [TierMeasure; 5] = [
        TierMeasure::Hits,
        TierMeasure::Misses,
        TierMeasure::Errors,
        TierMeasure::BytesRead,
        TierMeasure::BytesWritten,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            TierMeasure::Hits => "hits",
            TierMeasure::Misses => "misses",
            TierMeasure::Errors => "errors",
            TierMeasure::BytesRead => "bytes_read",
            TierMeasure::BytesWritten => "bytes_written",
        }
    }
}

/// `tier.<kind>.<measure>` for every kind (in [`TierKind::ALL`] order) and measure
/// (in [`TierMeasure::ALL`] order): static, so counting one allocates nothing.
macro_rules! tier_counter_names {
    ($($kind:literal),*) => {
        [$([
            concat!("tier.", $kind, ".hits"),
            concat!("tier.", $kind, ".misses"),
            concat!("tier.", $kind, ".errors"),
            concat!("tier.", $kind, ".bytes_read"),
            concat!("tier.", $kind, ".bytes_written"),
        ]),*]
    };
}

const TIER_COUNTERS: [[&str; 5]; 8] =
    tier_counter_names!("local", "redis", "s3", "http", "webdav", "gha", "reapi", "farm");

/// One thing `farm stats` counts. Fixed outcomes have one counter each; the others
/// carry a [`Reason`] and count under `<family prefix>.<reason>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `hit.direct`: found by a direct-mode manifest.
    HitDirect,
    /// `hit.preprocessor`: found by the preprocessed text.
    HitPreprocessor,
    /// `hit.depend`: found by a depend-mode manifest.
    HitDepend,
    /// `hit.declared`: a declared-input compile (javac, C#) found by its inputs' content.
    HitDeclared,
    /// `hit.farm`: answered by the farm's cache (the key's home peer).
    HitFarm,
    /// `hit.remote`: answered by a remote tier (`remote_storage`: Redis, S3, WebDAV...).
    HitRemote,
    /// `error.remote`: a remote tier failed (it is then skipped for a while).
    RemoteError,
    /// `error.remote_skipped`: a remote tier not asked, because it failed a moment
    /// ago (its breaker is open).
    RemoteSkipped,
    /// `error.remote_write_dropped`: a write to a remote tier the agent's queue had
    /// no room for (dropped, never waited for).
    RemoteWriteDropped,
    /// `miss`: a cacheable compile that ran the compiler, here or on a peer.
    Miss,
    /// `warm.compiled`: a miss compiled in farmd's warm compiler process (javac's JVM).
    WarmCompiled,
    /// `farm.remote`: a miss compiled by a peer's worker.
    FarmRemote,
    /// `farm.same_path`: of those, compiled at the same paths (a same-path job).
    FarmSamePath,
    /// `compile_failed`: the compiler exited non-zero.
    CompileFailed,
    /// `error.cache`: the cache could not be read or written.
    CacheError,
    /// `error.corrupt_entry`: an entry failed its checksum or format and was removed.
    CorruptEntry,
    /// `time_saved_ms`: per hit, the original compile time minus the hit's own.
    TimeSavedMs,
    /// `compile_ms`: per miss, how long the compile took.
    CompileMs,
    /// `evicted.files`: entries removed to keep the cache under `max_size`.
    EvictedFiles,
    /// `evicted.cleanups`: cleanups run to keep the cache under `max_size`.
    Cleanups,
    /// `passthrough.<reason>`: not cached, the compiler ran untouched.
    Passthrough(Reason),
    /// `not_stored.<reason>`: compiled and succeeded, nothing recorded.
    NotStored(Reason),
    /// `farm.home.<reason>`: compiled at home although an agent was running.
    FarmHome(Reason),
    /// `fallback.<reason>`: a farm failure that ended in a local compile.
    Fallback(Reason),
    /// `warm.declined.<reason>`: a fresh compiler ran although a warm one was asked.
    WarmDeclined(Reason),
    /// `tier.<kind>.<measure>`: one tier kind's hits, misses, errors or bytes.
    Tier(TierKind, TierMeasure),
}

impl Outcome {
    /// Every outcome without a reason (with [`ReasonFamily::ALL`], every counter
    /// there can be).
    pub const FIXED: [Outcome; 20] = [
        Outcome::HitDirect,
        Outcome::HitPreprocessor,
        Outcome::HitDepend,
        Outcome::HitDeclared,
        Outcome::HitFarm,
        Outcome::HitRemote,
        Outcome::RemoteError,
        Outcome::RemoteSkipped,
        Outcome::RemoteWriteDropped,
        Outcome::Miss,
        Outcome::WarmCompiled,
        Outcome::FarmRemote,
        Outcome::FarmSamePath,
        Outcome::CompileFailed,
        Outcome::CacheError,
        Outcome::CorruptEntry,
        Outcome::TimeSavedMs,
        Outcome::CompileMs,
        Outcome::EvictedFiles,
        Outcome::Cleanups,
    ];

    /// Every per-tier counter (fixed too, but many: kept apart from [`Self::FIXED`]).
    pub fn tiers() -> impl Iterator<Item = Outcome> {
        TierKind::ALL.into_iter().flat_map(|kind| {
            TierMeasure::ALL
                .into_iter()
                .map(move |measure| Outcome::Tier(kind, measure))
        })
    }

    /// Splits the outcome into its family and reason: a fixed outcome is its own
    /// counter name with no reason; a reasoned one is its family's prefix and the
    /// reason. (Metrics use the first as the name, the second as a label value.)
    pub fn split(&self) -> (&'static str, Option<&str>) {
        match self.reason() {
            Some((family, reason)) => (family.prefix(), Some(reason)),
            None => (self.fixed_name().unwrap_or_default(), None),
        }
    }

    /// The reason's family and the reason, for outcomes that carry one.
    pub fn reason(&self) -> Option<(ReasonFamily, &str)> {
        let (family, reason) = match self {
            Outcome::Passthrough(r) => (ReasonFamily::Passthrough, r),
            Outcome::NotStored(r) => (ReasonFamily::NotStored, r),
            Outcome::FarmHome(r) => (ReasonFamily::FarmHome, r),
            Outcome::Fallback(r) => (ReasonFamily::Fallback, r),
            Outcome::WarmDeclined(r) => (ReasonFamily::WarmDeclined, r),
            _ => return None,
        };
        Some((family, reason))
    }

    /// The counter name of a fixed outcome; `None` for one with a reason.
    pub const fn fixed_name(&self) -> Option<&'static str> {
        Some(match self {
            Outcome::HitDirect => "hit.direct",
            Outcome::HitPreprocessor => "hit.preprocessor",
            Outcome::HitDepend => "hit.depend",
            Outcome::HitDeclared => "hit.declared",
            Outcome::HitFarm => "hit.farm",
            Outcome::HitRemote => "hit.remote",
            Outcome::RemoteError => "error.remote",
            Outcome::RemoteSkipped => "error.remote_skipped",
            Outcome::RemoteWriteDropped => "error.remote_write_dropped",
            Outcome::Miss => "miss",
            Outcome::WarmCompiled => "warm.compiled",
            Outcome::FarmRemote => "farm.remote",
            Outcome::FarmSamePath => "farm.same_path",
            Outcome::CompileFailed => "compile_failed",
            Outcome::CacheError => "error.cache",
            Outcome::CorruptEntry => "error.corrupt_entry",
            Outcome::TimeSavedMs => "time_saved_ms",
            Outcome::CompileMs => "compile_ms",
            Outcome::EvictedFiles => "evicted.files",
            Outcome::Cleanups => "evicted.cleanups",
            Outcome::Tier(kind, measure) => TIER_COUNTERS[*kind as usize][*measure as usize],
            Outcome::Passthrough(_)
            | Outcome::NotStored(_)
            | Outcome::FarmHome(_)
            | Outcome::Fallback(_)
            | Outcome::WarmDeclined(_) => return None,
        })
    }

    /// The counter name in the stats files and `farm stats --json`: borrowed (no
    /// allocation) for a fixed outcome, `<prefix>.<reason>` for the others.
    pub fn counter(&self) -> Cow<'static, str> {
        match self.split() {
            (name, None) => Cow::Borrowed(name),
            (prefix, Some(reason)) => Cow::Owned(format!("{prefix}.{reason}")),
        }
    }

    /// The outcome a counter name stands for; `None` for a name farm never writes.
    pub fn parse(counter: &str) -> Option<Outcome> {
        if let Some(o) = Outcome::FIXED
            .iter()
            .find(|o| o.fixed_name() == Some(counter))
        {
            return Some(o.clone());
        }
        if let Some(o) = Outcome::tiers().find(|o| o.fixed_name() == Some(counter)) {
            return Some(o);
        }
        ReasonFamily::ALL.into_iter().find_map(|family| {
            let reason = counter.strip_prefix(family.prefix())?.strip_prefix('.')?;
            (!reason.is_empty()).then(|| family.with(reason.to_string()))
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.split() {
            (name, None) => f.write_str(name),
            (prefix, Some(reason)) => write!(f, "{prefix}.{reason}"),
        }
    }
}

/// Outcomes gathered during one compile, written once at the end.
#[derive(Default)]
pub struct Tally(Vec<(Outcome, u64)>);

impl Tally {
    /// Counts one `outcome`.
    pub fn count(&mut self, outcome: Outcome) {
        self.add(outcome, 1);
    }

    /// Adds `n` to `outcome`'s counter (milliseconds, files).
    pub fn add(&mut self, outcome: Outcome, n: u64) {
        self.0.push((outcome, n));
    }

    /// The reason of the last outcome counted in `family`, if one was.
    pub fn last_reason(&self, family: ReasonFamily) -> Option<&str> {
        self.0.iter().rev().find_map(|(o, _)| match o.reason() {
            Some((f, r)) if f == family => Some(r),
            _ => None,
        })
    }

    /// What was gathered, in the order counted.
    pub fn entries(&self) -> &[(Outcome, u64)] {
        &self.0
    }

    /// Adds what was gathered to `stats`; a failure is logged, never the build's.
    pub fn flush(&self, stats: &Stats) {
        if let Err(e) = stats.add(&self.0) {
            tracing::warn!(error = %e, "cannot update statistics");
        }
    }
}

/// Counters as read back, grouped for display.
pub struct Summary {
    pub counters: BTreeMap<String, u64>,
}

impl Summary {
    /// A fixed outcome's count (0 when never counted); a reasoned outcome's count for
    /// its one reason.
    pub fn get(&self, outcome: &Outcome) -> u64 {
        self.counters
            .get(outcome.counter().as_ref())
            .copied()
            .unwrap_or(0)
    }

    /// The counts of one reason family, by reason.
    pub fn group(&self, family: ReasonFamily) -> BTreeMap<String, u64> {
        let p = format!("{}.", family.prefix());
        self.counters
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|r| (r.to_string(), *v)))
            .collect()
    }

    /// One tier kind's count of `measure`.
    pub fn tier(&self, kind: TierKind, measure: TierMeasure) -> u64 {
        self.get(&Outcome::Tier(kind, measure))
    }

    /// Whether anything was ever counted for tier `kind`.
    pub fn tier_used(&self, kind: TierKind) -> bool {
        TierMeasure::ALL.into_iter().any(|m| self.tier(kind, m) > 0)
    }

    /// Hits of every kind.
    pub fn hits(&self) -> u64 {
        [
            Outcome::HitDirect,
            Outcome::HitPreprocessor,
            Outcome::HitDepend,
            Outcome::HitDeclared,
            Outcome::HitFarm,
            Outcome::HitRemote,
        ]
        .iter()
        .fold(0u64, |n, o| n.saturating_add(self.get(o)))
    }
}

#[derive(Clone, Debug)]
pub struct Stats {
    dir: PathBuf,
}

fn parse_into(text: &str, into: &mut BTreeMap<String, u64>) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) {
            if let Ok(n) = v.parse::<u64>() {
                let c = into.entry(k.to_string()).or_insert(0);
                *c = c.saturating_add(n);
            }
        }
    }
}

impl Stats {
    pub fn new(cache_dir: &Path) -> Stats {
        Stats {
            dir: cache_dir.join("stats"),
        }
    }

    fn shard_path(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("{shard:x}"))
    }

    fn open_shard(&self, shard: u32) -> io::Result<FileLock> {
        let path = self.shard_path(shard);
        let open = || crate::fsutil::open_cache_file(&path);
        let f = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::fsutil::create_cache_dir_all(&self.dir)?;
                open()?
            }
            Err(e) => return Err(e),
        };
        FileLock::lock(f)
    }

    /// Adds `delta` to the counters. The shard is updated in place under its lock
    /// (one small `pwrite`, no rename: this runs on every compile). Errors are
    /// returned for logging; callers never fail a compile on them.
    pub fn add(&self, delta: &[(Outcome, u64)]) -> io::Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        let mut lock = self.open_shard(std::process::id() % SHARDS)?;
        let f = lock.file();
        let mut raw = Vec::with_capacity(1024);
        f.read_to_end(&mut raw)?;
        let mut counters = BTreeMap::new();
        parse_into(&String::from_utf8_lossy(&raw), &mut counters);
        for (outcome, n) in delta {
            let name = outcome.counter();
            match counters.get_mut(name.as_ref()) {
                Some(v) => *v += n,
                None => {
                    counters.insert(name.into_owned(), *n);
                }
            }
        }
        let mut out = String::with_capacity(counters.len() * 24);
        for (k, v) in &counters {
            out.push_str(k);
            out.push(' ');
            out.push_str(&v.to_string());
            out.push('\n');
        }
        f.write_all_at(out.as_bytes(), 0)?;
        if out.len() < raw.len() {
            f.set_len(out.len() as u64)?;
        }
        Ok(())
    }

    /// Sums every shard. A shard is read up to [`MAX_SHARD`] bytes (a real one holds a
    /// few hundred counters), so a damaged or planted file cannot make the reader
    /// (`farm stats`, farmd's metrics) grow; and only if it is a regular file, opened
    /// without blocking, so a FIFO or device planted by the directory's owner cannot
    /// hang farmd's `/metrics` and monitor, which read other users' shards.
    pub fn read(&self) -> BTreeMap<String, u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut counters = BTreeMap::new();
        for shard in 0..SHARDS {
            let Ok(f) = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(self.shard_path(shard))
            else {
                continue;
            };
            if !f.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let mut raw = Vec::new();
            if f.take(MAX_SHARD).read_to_end(&mut raw).is_ok() {
                parse_into(&String::from_utf8_lossy(&raw), &mut counters);
            }
        }
        counters
    }

    /// Zeroes every counter (under each shard's lock, so no update is half-lost).
    pub fn zero(&self) -> io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        for shard in 0..SHARDS {
            self.open_shard(shard)?.file().set_len(0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_read_zero() {
        let d = tempfile::tempdir().unwrap();
        let s = Stats::new(d.path());
        s.add(&[(Outcome::Miss, 1), (Outcome::Passthrough("link".into()), 2)])
            .unwrap();
        s.add(&[(Outcome::Miss, 3)]).unwrap();
        let c = s.read();
        assert_eq!(c["miss"], 4);
        assert_eq!(c["passthrough.link"], 2);
        s.zero().unwrap();
        assert!(s.read().is_empty());
    }

    #[test]
    fn garbage_shard_is_tolerated() {
        let d = tempfile::tempdir().unwrap();
        let s = Stats::new(d.path());
        fs::create_dir_all(d.path().join("stats")).unwrap();
        fs::write(
            s.shard_path(std::process::id() % SHARDS),
            b"miss x\n\xff\xfe junk",
        )
        .unwrap();
        s.add(&[(Outcome::Miss, 1)]).unwrap();
        assert_eq!(s.read()["miss"], 1);
    }

    /// Every outcome's counter name, as the stats files and `farm stats --json` have
    /// always written it (changing one breaks every existing stats directory).
    const NAMES: [(Outcome, &str); 25] = [
        (Outcome::HitDirect, "hit.direct"),
        (Outcome::HitPreprocessor, "hit.preprocessor"),
        (Outcome::HitDepend, "hit.depend"),
        (Outcome::HitDeclared, "hit.declared"),
        (Outcome::HitFarm, "hit.farm"),
        (Outcome::HitRemote, "hit.remote"),
        (Outcome::RemoteError, "error.remote"),
        (Outcome::RemoteSkipped, "error.remote_skipped"),
        (Outcome::RemoteWriteDropped, "error.remote_write_dropped"),
        (Outcome::Miss, "miss"),
        (Outcome::WarmCompiled, "warm.compiled"),
        (Outcome::FarmRemote, "farm.remote"),
        (Outcome::FarmSamePath, "farm.same_path"),
        (Outcome::CompileFailed, "compile_failed"),
        (Outcome::CacheError, "error.cache"),
        (Outcome::CorruptEntry, "error.corrupt_entry"),
        (Outcome::TimeSavedMs, "time_saved_ms"),
        (Outcome::CompileMs, "compile_ms"),
        (Outcome::EvictedFiles, "evicted.files"),
        (Outcome::Cleanups, "evicted.cleanups"),
        (
            Outcome::Passthrough(Cow::Borrowed("link")),
            "passthrough.link",
        ),
        (
            Outcome::NotStored(Cow::Borrowed("input_too_new")),
            "not_stored.input_too_new",
        ),
        (
            Outcome::FarmHome(Cow::Borrowed("placed_home")),
            "farm.home.placed_home",
        ),
        (
            Outcome::Fallback(Cow::Borrowed("timeout")),
            "fallback.timeout",
        ),
        (
            Outcome::WarmDeclined(Cow::Borrowed("locale")),
            "warm.declined.locale",
        ),
    ];

    #[test]
    fn every_outcome_keeps_its_counter_name() {
        for (outcome, name) in &NAMES {
            assert_eq!(outcome.counter(), *name);
            assert_eq!(outcome.to_string(), *name);
            assert_eq!(Outcome::parse(name).as_ref(), Some(outcome), "{name}");
        }
        // The table covers every fixed outcome and every family.
        for o in &Outcome::FIXED {
            assert!(NAMES.iter().any(|(n, _)| n == o), "{o}");
            assert!(matches!(o.counter(), Cow::Borrowed(_)), "{o}");
        }
        for f in ReasonFamily::ALL {
            assert!(NAMES
                .iter()
                .any(|(n, _)| n.reason().map(|r| r.0) == Some(f)));
        }
        // Per-tier counters: `tier.<kind>.<measure>`, static, parsed back, all distinct.
        let tiers: Vec<Outcome> = Outcome::tiers().collect();
        assert_eq!(tiers.len(), TierKind::ALL.len() * TierMeasure::ALL.len());
        for o in &tiers {
            let Outcome::Tier(kind, measure) = o else {
                unreachable!()
            };
            let name = format!("tier.{}.{}", kind.name(), measure.name());
            assert_eq!(o.counter(), name);
            assert!(matches!(o.counter(), Cow::Borrowed(_)), "{o}");
            assert_eq!(Outcome::parse(&name).as_ref(), Some(o), "{name}");
        }
        assert_eq!(
            Outcome::Tier(TierKind::Redis, TierMeasure::BytesRead).counter(),
            "tier.redis.bytes_read"
        );
        assert_eq!(Outcome::parse("tier.ftp.hits"), None);
        assert_eq!(
            Outcome::FarmHome(Cow::Owned("no_peer".to_string())).counter(),
            "farm.home.no_peer"
        );
    }

    #[test]
    fn outcomes_split_into_family_and_reason() {
        assert_eq!(Outcome::HitFarm.split(), ("hit.farm", None));
        assert_eq!(
            Outcome::Fallback("peer_error".into()).split(),
            ("fallback", Some("peer_error"))
        );
        assert_eq!(
            Outcome::WarmDeclined("failed".into()).reason(),
            Some((ReasonFamily::WarmDeclined, "failed"))
        );
        assert_eq!(Outcome::Miss.reason(), None);
        for f in ReasonFamily::ALL {
            assert_eq!(f.with("x").split(), (f.prefix(), Some("x")));
        }
        // Fixed names are never mistaken for a family's reason, nor the reverse.
        assert_eq!(Outcome::parse("farm.remote"), Some(Outcome::FarmRemote));
        assert_eq!(Outcome::parse("warm.compiled"), Some(Outcome::WarmCompiled));
        assert_eq!(Outcome::parse("passthrough"), None);
        assert_eq!(Outcome::parse("passthrough."), None);
        assert_eq!(Outcome::parse("passthroughx.link"), None);
        assert_eq!(Outcome::parse("hit.nothing"), None);
    }

    /// docs/stats.md's counter table names every fixed counter and every family,
    /// and nothing else.
    #[test]
    fn docs_list_every_counter() {
        let doc = include_str!("../docs/stats.md");
        let table = doc
            .split("## Counter names")
            .nth(1)
            .expect("docs/stats.md has a `## Counter names` section");
        let documented: Vec<&str> = table
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let mut expected: Vec<String> = Outcome::FIXED
            .iter()
            .map(|o| o.counter().into_owned())
            .collect();
        expected.extend(
            ReasonFamily::ALL
                .iter()
                .map(|f| format!("{}.<reason>", f.prefix())),
        );
        expected.extend(
            TierMeasure::ALL
                .iter()
                .map(|m| format!("tier.<kind>.{}", m.name())),
        );
        let mut documented: Vec<String> = documented.iter().map(|s| s.to_string()).collect();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected);
        // ... and `<kind>` is spelled out: every tier kind, and no other.
        let kinds: Vec<String> = TierKind::ALL
            .iter()
            .map(|k| format!("`{}`", k.name()))
            .collect();
        let sentence = format!("`<kind>` is one of {}.", kinds.join(", "));
        assert!(table.contains(&sentence), "docs/stats.md: {sentence}");
    }

    #[test]
    fn summary_groups_by_family() {
        let s = Summary {
            counters: [
                ("hit.direct", 2),
                ("hit.farm", 3),
                ("farm.home.no_peer", 4),
                ("farm.remote", 5),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        assert_eq!(s.hits(), 5);
        assert_eq!(s.get(&Outcome::FarmRemote), 5);
        assert_eq!(s.get(&Outcome::Miss), 0);
        assert_eq!(s.get(&Outcome::FarmHome("no_peer".into())), 4);
        let home = s.group(ReasonFamily::FarmHome);
        assert_eq!(home.len(), 1);
        assert_eq!(home["no_peer"], 4);
    }
}
