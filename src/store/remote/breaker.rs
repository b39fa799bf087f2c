//! The circuit breaker every compile of a machine shares for one remote: after a
//! failure, the remote is skipped until a time written in a small file under the
//! cache directory, so a thousand compiles of a build cost one timeout, not a
//! thousand. Checking it is one `stat`; the compile that trips it logs once. farmd's
//! agent, which asks remotes for its shims from one process, keeps its breakers in
//! memory instead (one per remote and credentials: never shared between users who
//! do not share both).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How long a remote is skipped after a failure.
pub const SKIP_FOR: Duration = Duration::from_secs(60);

pub struct Breaker {
    file: PathBuf,
    /// In-process breakers: until when, and why.
    memory: Option<Mutex<Option<(SystemTime, String)>>>,
}

impl Breaker {
    /// The breaker of the remote at `url`, kept in `dir`.
    pub fn new(dir: &Path, url: &str) -> Breaker {
        let name = crate::fsutil::hex(&blake3::hash(url.as_bytes()).as_bytes()[..8]);
        Breaker {
            file: dir.join(format!("{name}.down")),
            memory: None,
        }
    }

    /// A breaker kept in this process only.
    pub fn in_memory() -> Breaker {
        Breaker {
            file: PathBuf::new(),
            memory: Some(Mutex::new(None)),
        }
    }

    /// `Some(until)` while the remote is being skipped.
    pub fn open_until(&self) -> Option<SystemTime> {
        let until = match &self.memory {
            Some(m) => m.lock().ok()?.as_ref()?.0,
            None => fs::metadata(&self.file).ok()?.modified().ok()?,
        };
        (until > SystemTime::now()).then_some(until)
    }

    /// Records a failure: the remote is skipped for [`SKIP_FOR`]. `Ok(true)` when
    /// this call tripped it (the caller logs then, and only then); `Err` when the skip
    /// cannot be recorded (an unwritable cache directory).
    pub fn trip(&self, why: &str) -> std::io::Result<bool> {
        let was_open = self.open_until().is_some();
        if let Some(m) = &self.memory {
            if let Ok(mut m) = m.lock() {
                *m = Some((SystemTime::now() + SKIP_FOR, why.to_string()));
            }
            return Ok(!was_open);
        }
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
        match &self.memory {
            Some(m) => {
                if let Ok(mut m) = m.lock() {
                    *m = None;
                }
            }
            None => {
                let _ = fs::remove_file(&self.file);
            }
        }
    }

    /// Why the remote was skipped last (the failure that tripped it).
    pub fn reason(&self) -> Option<String> {
        match &self.memory {
            Some(m) => m.lock().ok()?.as_ref().map(|(_, why)| why.clone()),
            None => fs::read_to_string(&self.file).ok(),
        }
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

    #[test]
    fn an_in_memory_breaker_trips_once_and_resets() {
        let b = Breaker::in_memory();
        assert!(b.open_until().is_none());
        assert!(b.trip("refused").unwrap());
        assert!(!b.trip("refused").unwrap());
        assert!(b.open_until().is_some());
        assert_eq!(b.reason().as_deref(), Some("refused"));
        b.reset();
        assert!(b.open_until().is_none());
    }
}
