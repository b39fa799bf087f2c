//! Content-addressed storage: entries and blobs by key, in tiers. Knows keys, kinds
//! and bytes, never compilers or how a key was made.
//!
//! A [`Tier`] is one place entries live: the local disk ([`LocalStore`]), the farm's
//! cache through this machine's farmd (the shim's agent tier), a peer's store (farmd),
//! and the remote caches to come (Redis, S3, WebDAV, GHA, a REAPI CAS) — each a file
//! behind this trait. [`Tiered`] asks them in order and backfills a hit into the tiers
//! before it, so the next lookup stops earlier.

mod local;
pub mod remote;
mod tiered;

pub use local::{decode_entry, encode_entry, LocalStore};
pub use tiered::{Found, TierTraffic, Tiered};

use std::io;
use std::path::PathBuf;

use crate::fsutil;

/// A 256-bit content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        fsutil::hex(&self.0)
    }
}

/// What a key names. The one kind type: the local layout, the wire (the farm's
/// protocol carries it; its order is part of the encoding) and every tier use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    /// A compile result (outputs, stdout, stderr), under its result key.
    Result,
    /// A direct-mode manifest (which inputs lead to which result), under its
    /// manifest key.
    Manifest,
    /// An input file of a tree job, under the digest of its own content: stored raw
    /// (a worker hard-links it into a job) and accepted only when it matches its key.
    Blob,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache entry {path}: {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    #[error("cache read {path}: {err}")]
    Read { path: PathBuf, err: io::Error },
    #[error("cache write {path}: {err}")]
    Write { path: PathBuf, err: io::Error },
    /// A blob whose content does not hash to its key.
    #[error("blob {key}: does not match its content")]
    Mismatch { key: String },
    /// A tier that is not on disk failed (it names itself in `tier`).
    #[error("{tier}: {detail}")]
    Unavailable { tier: String, detail: String },
    /// A tier skipped after an earlier failure (its breaker is open): nothing was
    /// asked. Skipped for the rest of the compile like an unavailable one.
    #[error("{tier}: {detail}")]
    Skipped { tier: String, detail: String },
}

/// What a put did besides storing.
#[derive(Default, Debug)]
pub struct PutReport {
    pub evicted_files: u64,
    pub cleaned: bool,
}

/// How much a tier holds, when it knows.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

/// One storage tier. Reads verify what they return (a damaged entry is an error,
/// never data); writes are whole (no reader sees half an entry).
pub trait Tier {
    /// A short name for logs and statistics (`local`, `farm`, a server's URL).
    fn name(&self) -> &str;

    /// The entry, or `None` when this tier does not hold it.
    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores (or replaces) an entry.
    fn put(&self, kind: EntryKind, key: &CacheKey, data: &[u8]) -> Result<PutReport, CacheError>;

    /// Whether this tier holds the entry, without reading it where the tier can.
    fn have(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.get(kind, key)?.is_some())
    }

    /// Forgets an entry (a good one the caller found unusable, say). Missing is fine.
    fn remove(&self, kind: EntryKind, key: &CacheKey) -> Result<(), CacheError>;

    /// Whether writes reach the tier (a `read-only` remote takes none).
    fn writable(&self) -> bool {
        true
    }

    /// What the tier holds; `None` when it cannot tell.
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// The time one compile may spend in this tier's calls; `None`: no limit (it
    /// answers from this machine).
    fn budget(&self) -> Option<std::time::Duration> {
        None
    }

    /// One compile spent `spent` (more than its [`Tier::budget`]) in this tier's
    /// calls, each of which answered in time: the tier is too slow to be worth
    /// asking. The error to count; the tier is skipped for the rest of the compile.
    fn over_budget(&self, spent: std::time::Duration) -> CacheError {
        CacheError::Unavailable {
            tier: self.name().to_string(),
            detail: format!("slow: {} ms in one compile", spent.as_millis()),
        }
    }
}
