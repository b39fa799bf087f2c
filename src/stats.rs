//! Persistent counters behind `farm stats`.
//!
//! Counters live in 16 small text files under `<dir>/stats/`; a process updates the
//! shard picked by its pid, so parallel compiles rarely wait on each other. Each update
//! locks the shard (flock), reads it, adds, and writes it back in place.
//! A damaged shard reads as the counters it can parse: statistics never fail a build.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::fsutil::FileLock;

const SHARDS: u32 = 16;

/// Stable counter names; `passthrough.*` and `not_stored.*` carry a reason suffix.
pub mod names {
    pub const HIT_DIRECT: &str = "hit.direct";
    pub const HIT_PREPROCESSOR: &str = "hit.preprocessor";
    pub const HIT_DEPEND: &str = "hit.depend";
    /// A declared-input compile (javac) found by its inputs' content.
    pub const HIT_DECLARED: &str = "hit.declared";
    /// A miss compiled in farmd's warm compiler process (javac's JVM).
    pub const WARM: &str = "warm.compiled";
    /// A miss that ran a fresh compiler although a warm one was asked, by reason.
    pub const WARM_DECLINED: &str = "warm.declined";
    /// Answered by the farm's cache (the key's home peer).
    pub const HIT_FARM: &str = "hit.farm";
    /// Compiled by a peer's worker.
    pub const FARM_REMOTE: &str = "farm.remote";
    /// Compiled at home although an agent was running, by reason (placement chose
    /// home, or this compile cannot be distributed).
    pub const FARM_HOME: &str = "farm.home";
    /// A farm failure that ended in a local compile, by reason.
    pub const FALLBACK: &str = "fallback";
    pub const MISS: &str = "miss";
    pub const COMPILE_FAILED: &str = "compile_failed";
    pub const CACHE_ERROR: &str = "error.cache";
    pub const CORRUPT_ENTRY: &str = "error.corrupt_entry";
    pub const TIME_SAVED_MS: &str = "time_saved_ms";
    pub const COMPILE_MS: &str = "compile_ms";
    pub const PASSTHROUGH: &str = "passthrough";
    pub const NOT_STORED: &str = "not_stored";
    pub const EVICTED_FILES: &str = "evicted.files";
    pub const CLEANUPS: &str = "evicted.cleanups";
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
                *into.entry(k.to_string()).or_insert(0) += n;
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
    pub fn add(&self, delta: &[(&str, u64)]) -> io::Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        let mut lock = self.open_shard(std::process::id() % SHARDS)?;
        let f = lock.file();
        let mut raw = Vec::with_capacity(1024);
        f.read_to_end(&mut raw)?;
        let mut counters = BTreeMap::new();
        parse_into(&String::from_utf8_lossy(&raw), &mut counters);
        for (k, v) in delta {
            *counters.entry((*k).to_string()).or_insert(0) += v;
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

    /// Sums every shard.
    pub fn read(&self) -> BTreeMap<String, u64> {
        let mut counters = BTreeMap::new();
        for shard in 0..SHARDS {
            if let Ok(text) = fs::read_to_string(self.shard_path(shard)) {
                parse_into(&text, &mut counters);
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
        s.add(&[(names::MISS, 1), ("passthrough.link", 2)]).unwrap();
        s.add(&[(names::MISS, 3)]).unwrap();
        let c = s.read();
        assert_eq!(c[names::MISS], 4);
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
        s.add(&[(names::MISS, 1)]).unwrap();
        assert_eq!(s.read()[names::MISS], 1);
    }
}
