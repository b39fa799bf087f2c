//! Content-addressed input files of tree jobs (sources, jars, class files), kept so
//! a class path crosses the wire once per farm. A blob is stored only when its
//! content hashes to its name; the oldest go first when the store passes its cap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use farm::protocol::Blob;

pub struct BlobStore {
    dir: PathBuf,
    cap: u64,
    /// Bytes written since the last trim: a trim scans the store only now and then.
    written: AtomicU64,
}

impl BlobStore {
    pub fn new(state_dir: &Path, cap: u64) -> BlobStore {
        BlobStore {
            dir: state_dir.join("blobs"),
            cap: cap.max(64 << 20),
            written: AtomicU64::new(0),
        }
    }

    pub fn path(&self, digest: &[u8; 32]) -> PathBuf {
        let hex = farm::fsutil::hex(digest);
        self.dir.join(&hex[..2]).join(hex)
    }

    pub fn has(&self, digest: &[u8; 32]) -> bool {
        self.path(digest).is_file()
    }

    pub fn missing(&self, digests: &[[u8; 32]]) -> Vec<[u8; 32]> {
        digests.iter().filter(|d| !self.has(d)).copied().collect()
    }

    /// Stores blobs whose content matches their digest; the others are refused.
    pub fn put(&self, blobs: &[Blob]) -> Result<(), String> {
        let mut n = 0u64;
        for b in blobs {
            if *blake3::hash(&b.data).as_bytes() != b.digest {
                return Err(format!(
                    "blob {} does not match its content",
                    farm::fsutil::hex(&b.digest[..8])
                ));
            }
            let p = self.path(&b.digest);
            if p.is_file() {
                continue;
            }
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            farm::fsutil::write_atomic(&p, &b.data).map_err(|e| format!("{}: {e}", p.display()))?;
            // Read-only, so even a write by farmd's user through a link fails.
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444));
            n += b.data.len() as u64;
        }
        if self.written.fetch_add(n, Ordering::Relaxed) + n > self.cap / 10 {
            self.written.store(0, Ordering::Relaxed);
            self.trim();
        }
        Ok(())
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        std::fs::read(self.path(digest)).ok()
    }

    /// Puts a blob at `dest`, which must not exist (a hard link when it can, a copy
    /// into a new file when not). Never writes through an existing name: that could be
    /// a link to another blob.
    pub fn materialize(&self, digest: &[u8; 32], dest: &Path) -> Result<(), String> {
        let src = self.path(digest);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let shown = || farm::fsutil::hex(&digest[..8]);
        match std::fs::hard_link(&src, dest) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!("blob {}: {} twice", shown(), dest.display()))
            }
            Err(_) => {}
        }
        let mut from = std::fs::File::open(&src).map_err(|e| format!("blob {}: {e}", shown()))?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| format!("blob {}: {}: {e}", shown(), dest.display()))?;
        std::io::copy(&mut from, &mut to)
            .map(|_| ())
            .map_err(|e| format!("blob {}: {e}", shown()))
    }

    /// Removes the least recently written blobs until the store is under 90 % of its cap.
    fn trim(&self) {
        let mut all = Vec::new();
        let mut total = 0u64;
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for s in shards.flatten() {
            let Ok(files) = std::fs::read_dir(s.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    total += m.len();
                    all.push((m.modified().ok(), m.len(), f.path()));
                }
            }
        }
        if total <= self.cap {
            return;
        }
        all.sort();
        for (_, len, p) in all {
            if total <= self.cap / 10 * 9 {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_matching_content() {
        let d = tempfile::tempdir().unwrap();
        let s = BlobStore::new(d.path(), 1 << 30);
        let good = Blob {
            digest: *blake3::hash(b"class").as_bytes(),
            data: b"class".to_vec(),
        };
        let bad = Blob {
            digest: [7; 32],
            data: b"other".to_vec(),
        };
        assert_eq!(s.missing(&[good.digest]), vec![good.digest]);
        s.put(std::slice::from_ref(&good)).unwrap();
        assert!(s.missing(&[good.digest]).is_empty());
        assert!(s.put(&[bad]).is_err());
        let out = d.path().join("job/x/A.class");
        s.materialize(&good.digest, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"class");
        // A second file at the same name is refused, never written through the first.
        let other = Blob {
            digest: *blake3::hash(b"other").as_bytes(),
            data: b"other".to_vec(),
        };
        s.put(std::slice::from_ref(&other)).unwrap();
        assert!(s.materialize(&other.digest, &out).is_err());
        assert_eq!(std::fs::read(s.path(&good.digest)).unwrap(), b"class");
    }
}
