//! The local disk tier.
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
//!
//! Blobs (tree jobs' inputs, in farmd's blob store) are stored raw, read-only, under
//! the digest of their content, so a worker can hard-link them into a job; they are
//! checked against their key when written and when read.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{CacheError, CacheKey, EntryKind, PutReport, Tier, Usage};
use crate::fsutil::{self, FileLock};

/// The file-name suffix of each kind.
fn suffix(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Result => "r",
        EntryKind::Manifest => "m",
        EntryKind::Blob => "b",
    }
}

const MAGIC: &[u8; 8] = b"FARMENT1";
const HEADER: usize = 8 + 32;
const SHARDS: u64 = 16;
/// A hit refreshes an entry's mtime (its LRU clock) only when older than this, to keep
/// the hit path free of writes most of the time.
const TOUCH_AFTER: Duration = Duration::from_secs(600);
/// Temp files older than this are leftovers of killed processes.
const STALE_TMP: Duration = Duration::from_secs(3600);

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

    fn entry_path(&self, kind: EntryKind, key: &CacheKey) -> PathBuf {
        let h = key.hex();
        self.root
            .join(&h[0..1])
            .join(&h[1..3])
            .join(format!("{h}.{}", suffix(kind)))
    }

    /// Puts a blob at `dest`, which must not exist (a hard link when it can, a copy
    /// into a new file when not). Never writes through an existing name: that could be
    /// a link to another blob.
    pub fn link_blob(&self, key: &CacheKey, dest: &Path) -> Result<(), String> {
        let src = self.entry_path(EntryKind::Blob, key);
        let shown = || fsutil::hex(&key.0[..8]);
        // The link first: a job's hundreds of inputs mostly go into directories that
        // are there already (one syscall each, not a walk up the path first).
        let mut linked = fs::hard_link(&src, dest);
        if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            if let Some(d) = dest.parent() {
                fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            linked = fs::hard_link(&src, dest);
        }
        match linked {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(format!("blob {}: {} twice", shown(), dest.display()))
            }
            Err(_) => {}
        }
        let mut from = fs::File::open(&src).map_err(|e| format!("blob {}: {e}", shown()))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| format!("blob {}: {}: {e}", shown(), dest.display()))?;
        io::copy(&mut from, &mut to)
            .map(|_| ())
            .map_err(|e| format!("blob {}: {e}", shown()))
    }

    /// Stores a blob raw and read-only (even a write by its owner through a hard link
    /// fails), when its content matches its key.
    fn put_blob(&self, key: &CacheKey, data: &[u8]) -> Result<PutReport, CacheError> {
        if blake3::hash(data).as_bytes() != &key.0 {
            return Err(CacheError::Mismatch {
                key: fsutil::hex(&key.0[..8]),
            });
        }
        let path = self.entry_path(EntryKind::Blob, key);
        if path.is_file() {
            return Ok(PutReport::default());
        }
        self.write(&path, data)?;
        use std::os::unix::fs::PermissionsExt as _;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o444));
        let shard = self.shard_dir(key);
        self.add_size(&shard, data.len() as i64, 1, &path)
            .map_err(|err| CacheError::Write { path: shard, err })
    }

    /// Writes `data` at an entry path atomically, making its directory when needed.
    fn write(&self, path: &Path, data: &[u8]) -> Result<(), CacheError> {
        let werr = |path: &Path, err| CacheError::Write {
            path: path.to_path_buf(),
            err,
        };
        let dir = path.parent().expect("entry has a parent");
        if let Err(e) = fsutil::write_cache_atomic(path, data) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(werr(path, e));
            }
            fsutil::create_cache_dir_all(dir).map_err(|e| werr(dir, e))?;
            fsutil::write_cache_atomic(path, data).map_err(|e| werr(path, e))?;
        }
        Ok(())
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

    /// Accounts a write to `shard`, trimming it when it passes its share; `written`
    /// (the entry just stored) is never what the trim removes.
    fn add_size(
        &self,
        shard: &Path,
        bytes: i64,
        files: i64,
        written: &Path,
    ) -> io::Result<PutReport> {
        let lock = fsutil::open_cache_file(&shard.join("lock"))?;
        let _guard = FileLock::lock(lock)?;
        let size_path = shard.join("size");
        let (b, f) = read_size_file(&size_path);
        let nb = (b as i64 + bytes).max(0) as u64;
        let nf = (f as i64 + files).max(0) as u64;
        let limit = self.max_size / SHARDS;
        if nb > limit {
            let (kept_b, kept_f, evicted) = trim_shard(shard, limit - limit / 5, written)?;
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
                    if name.ends_with(".r") || name.ends_with(".m") || name.ends_with(".b") {
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
/// temp files left by killed writers, never `keep` (the entry whose write asked for the
/// trim: an entry larger than its shard's share must not evict itself). Returns (bytes
/// kept, files kept, files removed).
fn trim_shard(shard: &Path, target: u64, keep: &Path) -> io::Result<(u64, u64, u64)> {
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
        if path == keep {
            continue;
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
    // Memory follows what the frame holds, not what its header claims: a damaged
    // header claiming gigabytes must cost nothing until that much has decompressed
    // (reserving it up front aborts the shim where memory is limited).
    use std::io::Read as _;
    let mut payload = Vec::with_capacity((size as usize).min(body.len().saturating_mul(64)));
    let mut frame = zstd::stream::read::Decoder::with_buffer(body)
        .map_err(|_| "decompression failed")?
        .single_frame();
    (&mut frame)
        .take(size + 1)
        .read_to_end(&mut payload)
        .map_err(|_| "decompression failed")?;
    // Exactly the size the frame states, and nothing after the frame.
    if payload.len() as u64 != size || !frame.finish().is_empty() {
        return Err("decompression failed");
    }
    if blake3::hash(&payload).as_bytes() != &data[8..HEADER] {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

impl Tier for LocalStore {
    fn name(&self) -> &str {
        "local"
    }

    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.entry_path(kind, key);
        let (data, meta) = match fsutil::read_file_meta(&path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(CacheError::Read { path, err }),
        };
        let decoded = match kind {
            EntryKind::Blob if blake3::hash(&data).as_bytes() == &key.0 => Ok(data),
            EntryKind::Blob => Err("does not match its key"),
            _ => decode_entry(&data),
        };
        match decoded {
            Ok(payload) => {
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .map(|age| age > TOUCH_AFTER)
                    .unwrap_or(false);
                if old && kind != EntryKind::Blob {
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
        if kind == EntryKind::Blob {
            return self.put_blob(key, payload);
        }
        let path = self.entry_path(kind, key);
        let data = encode_entry(payload).map_err(|err| CacheError::Write {
            path: path.clone(),
            err,
        })?;
        let old_len = fs::metadata(&path).map(|m| m.len() as i64).ok();
        self.write(&path, &data)?;
        let (db, df) = match old_len {
            Some(old) => (data.len() as i64 - old, 0),
            None => (data.len() as i64, 1),
        };
        let shard = self.shard_dir(key);
        self.add_size(&shard, db, df, &path)
            .map_err(|err| CacheError::Write { path: shard, err })
    }

    fn have(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        Ok(self.entry_path(kind, key).is_file())
    }

    fn remove(&self, kind: EntryKind, key: &CacheKey) -> Result<(), CacheError> {
        let path = self.entry_path(kind, key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(CacheError::Write { path, err }),
        }
    }

    fn usage(&self) -> Option<Usage> {
        let (bytes, entries) = LocalStore::usage(self);
        Some(Usage { bytes, entries })
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
    fn blobs_are_stored_raw_only_under_their_digest() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new(d.path(), 1 << 30);
        let good = CacheKey(*blake3::hash(b"class").as_bytes());
        assert!(matches!(
            s.put(EntryKind::Blob, &good, b"other"),
            Err(CacheError::Mismatch { .. })
        ));
        assert!(!s.have(EntryKind::Blob, &good).unwrap());
        s.put(EntryKind::Blob, &good, b"class").unwrap();
        assert!(s.have(EntryKind::Blob, &good).unwrap());
        assert_eq!(s.get(EntryKind::Blob, &good).unwrap().unwrap(), b"class");
        let dest = d.path().join("job/in/A.class");
        s.link_blob(&good, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"class");
        // Never through an existing name.
        assert!(s.link_blob(&good, &dest).is_err());
        s.remove(EntryKind::Blob, &good).unwrap();
        assert!(!s.have(EntryKind::Blob, &good).unwrap());
    }

    #[test]
    fn an_entry_larger_than_its_share_does_not_evict_itself() {
        let d = tempfile::tempdir().unwrap();
        // 16 shards x 4 KiB; a blob of 16 KiB is four times its shard's share.
        let s = LocalStore::new(d.path(), 16 * 4096);
        let big: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 251) as u8).collect();
        let k = CacheKey(*blake3::hash(&big).as_bytes());
        s.put(EntryKind::Blob, &k, &big).unwrap();
        assert!(s.have(EntryKind::Blob, &k).unwrap());
        assert_eq!(s.get(EntryKind::Blob, &k).unwrap().unwrap(), big);
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
