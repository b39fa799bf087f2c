//! Content-addressed storage. Knows keys, entries and bytes — never compilers.
//!
//! An entry on disk is `MAGIC | blake3(payload) | zstd(payload)`; the checksum is
//! verified on every read, and a bad entry is removed and reported as corrupt (the
//! caller treats it as a miss). Entries are written by temp + rename, so concurrent
//! writers and killed processes never leave a torn entry.
//!
//! Layout: `<dir>/v1/<s>/<xx>/<hex key>.<kind>` where `<s>` is the first hex digit of
//! the key (16 eviction shards) and `<xx>` the next two. Each shard keeps a `size`
//! file ("bytes files") under its `lock`; when a put takes a shard over its share of
//! `max_size`, that shard alone is trimmed, oldest mtime first (hits refresh mtime).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::{self, FileLock};

const MAGIC: &[u8; 8] = b"FARMENT1";
const HEADER: usize = 8 + 32;
const SHARDS: u64 = 16;
/// A hit refreshes an entry's mtime (its LRU clock) only when older than this, to keep
/// the hit path free of writes most of the time.
const TOUCH_AFTER: Duration = Duration::from_secs(600);
/// Temp files older than this are leftovers of killed processes.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// A 256-bit content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        fsutil::hex(&self.0)
    }
}

/// What an entry holds; the suffix of its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A compile result (outputs, stdout, stderr).
    Result,
    /// A direct-mode manifest (which inputs lead to which result).
    Manifest,
}

impl EntryKind {
    fn suffix(self) -> &'static str {
        match self {
            EntryKind::Result => "r",
            EntryKind::Manifest => "m",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache entry {path}: {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    #[error("cache read {path}: {err}")]
    Read { path: PathBuf, err: io::Error },
    #[error("cache write {path}: {err}")]
    Write { path: PathBuf, err: io::Error },
}

/// One storage tier. Local disk now; peers and remote caches implement the same trait.
pub trait Store {
    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError>;
    fn put(&self, kind: EntryKind, key: &CacheKey, payload: &[u8])
        -> Result<PutReport, CacheError>;
}

/// What a put did besides storing.
#[derive(Default, Debug)]
pub struct PutReport {
    pub evicted_files: u64,
    pub cleaned: bool,
}

/// The local disk tier.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    max_size: u64,
}

impl LocalStore {
    pub fn new(cache_dir: &Path, max_size: u64) -> LocalStore {
        LocalStore {
            root: cache_dir.join("v1"),
            max_size,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn shard_dir(&self, key: &CacheKey) -> PathBuf {
        let h = key.hex();
        self.root.join(&h[0..1])
    }

    pub fn entry_path(&self, kind: EntryKind, key: &CacheKey) -> PathBuf {
        let h = key.hex();
        self.root
            .join(&h[0..1])
            .join(&h[1..3])
            .join(format!("{h}.{}", kind.suffix()))
    }

    /// Total (bytes, files) from the shards' size files.
    pub fn usage(&self) -> (u64, u64) {
        let mut total = (0, 0);
        for s in 0..SHARDS {
            let (b, f) = read_size_file(&self.root.join(format!("{s:x}")).join("size"));
            total.0 += b;
            total.1 += f;
        }
        total
    }

    /// Removes every entry. Statistics are kept.
    pub fn clear(&self) -> io::Result<u64> {
        let mut removed = 0;
        for s in 0..SHARDS {
            let dir = self.root.join(format!("{s:x}"));
            if dir.exists() {
                removed += count_files(&dir);
                fs::remove_dir_all(&dir)?;
            }
        }
        Ok(removed)
    }

    fn add_size(&self, shard: &Path, bytes: i64, files: i64) -> io::Result<PutReport> {
        let lock = fsutil::open_cache_file(&shard.join("lock"))?;
        let _guard = FileLock::lock(lock)?;
        let size_path = shard.join("size");
        let (b, f) = read_size_file(&size_path);
        let nb = (b as i64 + bytes).max(0) as u64;
        let nf = (f as i64 + files).max(0) as u64;
        let limit = self.max_size / SHARDS;
        if nb > limit {
            let (kept_b, kept_f, evicted) = trim_shard(shard, limit - limit / 5)?;
            fsutil::write_cache_atomic(&size_path, format!("{kept_b} {kept_f}\n").as_bytes())?;
            return Ok(PutReport {
                evicted_files: evicted,
                cleaned: true,
            });
        }
        fsutil::write_cache_atomic(&size_path, format!("{nb} {nf}\n").as_bytes())?;
        Ok(PutReport::default())
    }
}

fn read_size_file(p: &Path) -> (u64, u64) {
    let Ok(t) = fs::read_to_string(p) else {
        return (0, 0);
    };
    let mut it = t.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += count_files(&e.path()),
                Ok(_) => {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.ends_with(".r") || name.ends_with(".m") {
                        n += 1
                    }
                }
                Err(_) => {}
            }
        }
    }
    n
}

/// Deletes the oldest entries of one shard until it holds at most `target` bytes, and
/// temp files left by killed writers. Returns (bytes kept, files kept, files removed).
fn trim_shard(shard: &Path, target: u64) -> io::Result<(u64, u64, u64)> {
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let now = SystemTime::now();
    for sub in fs::read_dir(shard)?.flatten() {
        if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        for e in fs::read_dir(sub.path())?.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            let mtime = meta.modified().unwrap_or(now);
            if name.contains(".farm-tmp.") {
                if now.duration_since(mtime).unwrap_or_default() > STALE_TMP {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            entries.push((mtime, meta.len(), e.path()));
        }
    }
    entries.sort_by_key(|e| e.0);
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    let mut files = entries.len() as u64;
    let mut removed = 0;
    for (_, len, path) in &entries {
        if total <= target {
            break;
        }
        if fs::remove_file(path).is_ok() {
            total -= len;
            files -= 1;
            removed += 1;
        }
    }
    Ok((total, files, removed))
}

/// Frames a payload as an entry (magic, checksum, zstd level 1).
pub fn encode_entry(payload: &[u8]) -> io::Result<Vec<u8>> {
    let sum = blake3::hash(payload);
    let mut out = Vec::with_capacity(HEADER + payload.len() / 2 + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(sum.as_bytes());
    let compressed = zstd::bulk::compress(payload, 1)?;
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Checks and unframes an entry; `None` when it is damaged.
pub fn decode_entry(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err("bad header");
    }
    let body = &data[HEADER..];
    let size = zstd::zstd_safe::get_frame_content_size(body)
        .ok()
        .flatten()
        .ok_or("bad compressed frame")?;
    // A frame claiming more than 4 GiB is damage, not an object file.
    if size > 4 << 30 {
        return Err("implausible size");
    }
    let payload =
        zstd::bulk::decompress(body, size as usize).map_err(|_| "decompression failed")?;
    if blake3::hash(&payload).as_bytes() != &data[8..HEADER] {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

impl Store for LocalStore {
    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.entry_path(kind, key);
        let (data, meta) = match fsutil::read_file_meta(&path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(CacheError::Read { path, err }),
        };
        match decode_entry(&data) {
            Ok(payload) => {
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .map(|age| age > TOUCH_AFTER)
                    .unwrap_or(false);
                if old {
                    // LRU clock; failure (read-only cache) only weakens eviction order.
                    if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
                Ok(Some(payload))
            }
            Err(what) => {
                let _ = fs::remove_file(&path);
                Err(CacheError::Corrupt { path, what })
            }
        }
    }

    fn put(
        &self,
        kind: EntryKind,
        key: &CacheKey,
        payload: &[u8],
    ) -> Result<PutReport, CacheError> {
        let path = self.entry_path(kind, key);
        let werr = |path: &Path, err| CacheError::Write {
            path: path.to_path_buf(),
            err,
        };
        let data = encode_entry(payload).map_err(|e| werr(&path, e))?;
        let dir = path.parent().expect("entry has a parent");
        let old_len = fs::metadata(&path).map(|m| m.len() as i64).ok();
        if let Err(e) = fsutil::write_cache_atomic(&path, &data) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(werr(&path, e));
            }
            fsutil::create_cache_dir_all(dir).map_err(|e| werr(dir, e))?;
            fsutil::write_cache_atomic(&path, &data).map_err(|e| werr(&path, e))?;
        }
        let (db, df) = match old_len {
            Some(old) => (data.len() as i64 - old, 0),
            None => (data.len() as i64, 1),
        };
        let shard = self.shard_dir(key);
        self.add_size(&shard, db, df).map_err(|e| werr(&shard, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey(*blake3::hash(&[n]).as_bytes())
    }

    #[test]
    fn roundtrip_and_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path(), 1 << 30);
        assert!(s.get(EntryKind::Result, &key(1)).unwrap().is_none());
        s.put(EntryKind::Result, &key(1), b"hello").unwrap();
        assert_eq!(
            s.get(EntryKind::Result, &key(1)).unwrap().unwrap(),
            b"hello"
        );
        assert!(s.get(EntryKind::Manifest, &key(1)).unwrap().is_none());
        s.put(EntryKind::Result, &key(1), b"hello again").unwrap();
        assert_eq!(s.usage().1, 1);
    }

    #[test]
    fn corrupt_entry_is_reported_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path(), 1 << 30);
        s.put(EntryKind::Result, &key(2), &vec![7u8; 10_000])
            .unwrap();
        let p = s.entry_path(EntryKind::Result, &key(2));
        let mut data = fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] ^= 0x55;
        fs::write(&p, &data).unwrap();
        assert!(matches!(
            s.get(EntryKind::Result, &key(2)),
            Err(CacheError::Corrupt { .. })
        ));
        assert!(!p.exists());
        assert!(s.get(EntryKind::Result, &key(2)).unwrap().is_none());
    }

    #[test]
    fn eviction_keeps_shard_under_its_share() {
        let d = tempfile::tempdir().unwrap();
        // 16 shards x 64 KiB.
        let s = LocalStore::new(d.path(), 16 * 64 * 1024);
        // Incompressible payloads so the sizes are real.
        for i in 0..=255u8 {
            let payload: Vec<u8> = (0..8192u32)
                .map(|j| blake3::hash(&[i, (j % 251) as u8, (j / 251) as u8]).as_bytes()[0])
                .collect();
            s.put(EntryKind::Result, &key(i), &payload).unwrap();
        }
        let (bytes, _) = s.usage();
        assert!(bytes <= 16 * 64 * 1024, "usage {bytes}");
        for sh in 0..16 {
            let dir = s.root().join(format!("{sh:x}"));
            let mut real = 0;
            for sub in fs::read_dir(&dir).unwrap().flatten() {
                if sub.file_type().unwrap().is_dir() {
                    for e in fs::read_dir(sub.path()).unwrap().flatten() {
                        real += e.metadata().unwrap().len();
                    }
                }
            }
            assert!(real <= 64 * 1024, "shard {sh} holds {real}");
        }
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(decode_entry(b"").is_err());
        assert!(decode_entry(&[0u8; 100]).is_err());
        let mut ok = encode_entry(b"abc").unwrap();
        assert_eq!(decode_entry(&ok).unwrap(), b"abc");
        ok[10] ^= 1;
        assert!(decode_entry(&ok).is_err());
    }
}
