//! Content-addressed input files of tree jobs (sources, jars, class files), kept so
//! a class path crosses the wire once per farm: the store's local tier holding
//! entries of kind [`EntryKind::Blob`] (raw, read-only, accepted only when the
//! content hashes to its key, oldest first out past the cap). This adapts it to the
//! protocol's batches of blobs and to placing a blob in a job directory.

use std::path::Path;

use farm::protocol::Blob;
use farm::store::{CacheKey, EntryKind, LocalStore, Tier};

pub struct BlobStore(LocalStore);

impl BlobStore {
    pub fn new(state_dir: &Path, cap: u64) -> BlobStore {
        let dir = state_dir.join("blobs");
        remove_old_layout(&dir);
        BlobStore(LocalStore::new(&dir, cap.max(64 << 20)))
    }

    pub fn has(&self, digest: &[u8; 32]) -> bool {
        self.0
            .have(EntryKind::Blob, &CacheKey(*digest))
            .unwrap_or(false)
    }

    pub fn missing(&self, digests: &[[u8; 32]]) -> Vec<[u8; 32]> {
        digests.iter().filter(|d| !self.has(d)).copied().collect()
    }

    /// Stores blobs whose content matches their digest; the others are refused.
    /// Stores `blobs`, each checked against its digest (`CacheError::Mismatch`).
    pub fn put(&self, blobs: &[Blob]) -> Result<(), farm::store::CacheError> {
        for b in blobs {
            self.0.put(EntryKind::Blob, &CacheKey(b.digest), &b.data)?;
        }
        Ok(())
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.0
            .get(EntryKind::Blob, &CacheKey(*digest))
            .ok()
            .flatten()
    }

    /// Puts a blob at `dest`, which must not exist (see [`LocalStore::link_blob`]).
    pub fn materialize(&self, digest: &[u8; 32], dest: &Path) -> Result<(), String> {
        self.0.link_blob(&CacheKey(*digest), dest)
    }
}

/// Removes blobs a farmd before the store's tier layout kept (`blobs/<xx>/<hex>`):
/// nothing reads or trims them any more, so they would hold their disk for good.
fn remove_old_layout(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let old = name.len() == 2
            && name
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_layout_is_removed_and_the_new_kept() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("blobs/ab");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("ab01"), "old").unwrap();
        let s = BlobStore::new(d.path(), 1 << 30);
        let b = Blob {
            digest: *blake3::hash(b"kept").as_bytes(),
            data: b"kept".to_vec(),
        };
        s.put(std::slice::from_ref(&b)).unwrap();
        assert!(!old.exists());
        let again = BlobStore::new(d.path(), 1 << 30);
        assert_eq!(again.get(&b.digest).unwrap(), b"kept");
    }

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
        assert_eq!(s.get(&good.digest).unwrap(), b"class");
    }
}
