//! The circuit breaker every compile of a machine shares for one remote: after a
//! failure, the remote is skipped until a time written in a small file under the
//! cache directory, so a thousand compiles of a build cost one timeout, not a
//! thousand. Checking it is one `stat`; the compile that trips it logs once.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a remote is skipped after a failure.
pub const SKIP_FOR: Duration = Duration::from_secs(60);

pub struct Breaker {
    file: PathBuf,
}

impl Breaker {
    /// The breaker of the remote at `url`, kept in `dir`.
    pub fn new(dir: &Path, url: &str) -> Breaker {
        let name = crate::fsutil::hex(&blake3::hash(url.as_bytes()).as_bytes()[..8]);
        Breaker {
            file: dir.join(format!("{name}.down")),
        }
    }

    /// `Some(until)` while the remote is being skipped.
    pub fn open_until(&self) -> Option<SystemTime> {
        let until = fs::metadata(&self.file).ok()?.modified().ok()?;
        (until > SystemTime::now()).then_some(until)
    }

    /// Records a failure: the remote is skipped for [`SKIP_FOR`]. `Ok(true)` when
    /// this call tripped it (the caller logs then, and only then); `Err` when the skip
    /// cannot be recorded (an unwritable cache directory).
    pub fn trip(&self, why: &str) -> std::io::Result<bool> {
        let was_open = self.open_until().is_some();
        if let Some(d) = self.file.parent() {
            crate::fsutil::create_cache_dir_all(d)?;
        }
        // Written aside with its time set, then renamed: no reader ever sees the file
        // with a time in the past.
        let until = SystemTime::now() + SKIP_FOR;
        let tmp = self
            .file
            .with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, why.as_bytes())?;
        fs::File::options()
            .write(true)
            .open(&tmp)?
            .set_modified(until)?;
        fs::rename(&tmp, &self.file)?;
        Ok(!was_open)
    }

    /// Closes the breaker (a user asked to try the remote now).
    pub fn reset(&self) {
        let _ = fs::remove_file(&self.file);
    }

    /// Why the remote was skipped last (the failure that tripped it).
    pub fn reason(&self) -> Option<String> {
        fs::read_to_string(&self.file).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_skips_the_remote_and_trips_once() {
        let d = tempfile::tempdir().unwrap();
        let b = Breaker::new(d.path(), "redis://127.0.0.1:1");
        assert!(b.open_until().is_none());
        assert!(b.trip("connection refused").unwrap());
        assert!(b.open_until().is_some());
        assert!(
            !b.trip("connection refused").unwrap(),
            "already open: no second log"
        );
        assert_eq!(b.reason().as_deref(), Some("connection refused"));
        // Another remote is not affected.
        assert!(Breaker::new(d.path(), "redis://127.0.0.1:2")
            .open_until()
            .is_none());
    }
}
