//! Content digests and stat stamps: below everything that keys (`key`, `lang`).
//!
//! A [`StatStamp`] stands in for a file's content while it is unchanged, so a digest
//! computed once can be reused ([`digest_memo`]) and a manifest entry can be checked
//! without reading its files. Depends on nothing of farm but `fsutil`.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// A file's identity on this machine: device, inode, size and change times. A file
/// whose stamp is unchanged since a recording has unchanged content, provided its
/// ctime was already [`STAMP_TRUST_NS`] old when recorded (ctime cannot be set back
/// by a user, and the margin covers the file system's clock and granularity).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// How old a file's mtime and ctime must be for its stamp to stand in for its content,
/// on a file system that keeps nanoseconds (a ctime with non-zero nanoseconds shows
/// it): two ticks of the coarse kernel clock that stamps files.
pub const STAMP_TRUST_NS: i128 = 20_000_000;
/// The same on a file system with whole-second (or 2 s) timestamps.
pub const STAMP_TRUST_COARSE_NS: i128 = 2_000_000_000;

impl StatStamp {
    pub fn of(meta: &fs::Metadata) -> StatStamp {
        StatStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// The stamp, if the file is old enough for it to be trusted later.
    pub fn trusted(meta: &fs::Metadata, now_ns: i128) -> Option<StatStamp> {
        let s = StatStamp::of(meta);
        let window = if meta.ctime_nsec() != 0 {
            STAMP_TRUST_NS
        } else {
            STAMP_TRUST_COARSE_NS
        };
        let limit = now_ns - window;
        ((s.mtime_ns as i128) < limit && (s.ctime_ns as i128) < limit).then_some(s)
    }

    /// The stamp of what is at `p` now, if anything.
    pub fn current(p: &Path) -> Option<StatStamp> {
        fs::metadata(p).ok().map(|m| StatStamp::of(&m))
    }
}

/// blake3 of a file's content, memoized in `memo_dir` under its path and stat stamp
/// once the stamp can be trusted (see [`StatStamp::trusted`]): class libraries and
/// referenced assemblies are read once, not on every compile.
pub fn digest_memo(path: &Path, memo_dir: &Path) -> io::Result<[u8; 32]> {
    let meta = fs::metadata(path)?;
    let stamp = StatStamp::trusted(&meta, fsutil::now_ns());
    let memo = stamp.map(|s| {
        let mut h = blake3::Hasher::new();
        h.update(b"farm-digest-memo-1\0");
        h.update(path.as_os_str().as_bytes());
        h.update(&postcard::to_allocvec(&s).unwrap_or_default());
        memo_dir.join(format!("d-{}", fsutil::hex(&h.finalize().as_bytes()[..16])))
    });
    if let Some(m) = &memo {
        if let Ok(d) = fs::read(m) {
            if let Ok(d) = <[u8; 32]>::try_from(d.as_slice()) {
                return Ok(d);
            }
        }
    }
    let d = fsutil::hash_file(path)?;
    if let Some(m) = &memo {
        let _ = fsutil::create_cache_dir_all(memo_dir);
        let _ = fsutil::write_cache_atomic(m, &d);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_memo_is_the_content_digest_and_follows_edits() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("lib.dll");
        let memo = d.path().join("memo");
        fs::write(&f, "one").unwrap();
        // Past the trust window, so the stamp can be trusted and a memo is written.
        std::thread::sleep(std::time::Duration::from_millis(60));
        let first = digest_memo(&f, &memo).unwrap();
        assert_eq!(first, *blake3::hash(b"one").as_bytes());
        if fs::metadata(&f).unwrap().ctime_nsec() != 0 {
            assert_eq!(fs::read_dir(&memo).unwrap().count(), 1);
        }
        assert_eq!(digest_memo(&f, &memo).unwrap(), first);
        // A same-size edit changes the stamp (ctime), so the memo is not reused.
        fs::write(&f, "two").unwrap();
        assert_eq!(
            digest_memo(&f, &memo).unwrap(),
            *blake3::hash(b"two").as_bytes()
        );
        assert!(digest_memo(&d.path().join("absent"), &memo).is_err());
    }

    #[test]
    fn fresh_files_get_no_trusted_stamp() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        fs::write(&f, "x").unwrap();
        let meta = fs::metadata(&f).unwrap();
        assert_eq!(StatStamp::trusted(&meta, fsutil::now_ns()), None);
        assert_eq!(
            StatStamp::trusted(&meta, fsutil::now_ns() + STAMP_TRUST_COARSE_NS + 1),
            Some(StatStamp::of(&meta))
        );
        assert_eq!(StatStamp::current(&f), Some(StatStamp::of(&meta)));
        assert_eq!(StatStamp::current(&d.path().join("absent")), None);
    }
}
