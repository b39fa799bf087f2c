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

/// A probe claimed longer ago than this was abandoned (its compile died).
const PROBE_STALE: Duration = Duration::from_secs(30);

/// Whether a call may go to the remote now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// No failure: go.
    Closed,
    /// Skipped until then.
    Open(SystemTime),
    /// The skip is over and this caller is the one that tries the remote again (the
    /// others still skip it until it answers or fails): half-open.
    Probe,
}

/// An in-process breaker's state once tripped: until when, why, and since when one
/// caller probes.
type Tripped = (SystemTime, String, Option<SystemTime>);

pub struct Breaker {
    file: PathBuf,
    memory: Option<Mutex<Option<Tripped>>>,
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

    /// The probe claim beside the breaker's file.
    fn probe_file(&self) -> PathBuf {
        self.file.with_extension("probe")
    }

    /// Whether a call may go now. After a skip ends, one caller of the machine (the
    /// first to claim it) tries the remote again while the others go on skipping it,
    /// so a build's parallel compiles do not all wait on a remote that is still down.
    pub fn gate(&self) -> Gate {
        let now = SystemTime::now();
        if let Some(m) = &self.memory {
            let Ok(mut m) = m.lock() else {
                return Gate::Closed;
            };
            return match m.as_mut() {
                None => Gate::Closed,
                Some((until, _, _)) if *until > now => Gate::Open(*until),
                Some((_, _, Some(since))) if now < *since + PROBE_STALE => {
                    Gate::Open(*since + PROBE_STALE)
                }
                Some((_, _, probing)) => {
                    *probing = Some(now);
                    Gate::Probe
                }
            };
        }
        let Some(until) = fs::metadata(&self.file)
            .ok()
            .and_then(|m| m.modified().ok())
        else {
            return Gate::Closed;
        };
        if until > now {
            return Gate::Open(until);
        }
        let probe = self.probe_file();
        for _ in 0..2 {
            match fs::File::options()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Ok(_) => return Gate::Probe,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let since = fs::metadata(&probe).and_then(|m| m.modified());
                    match since {
                        Ok(t) if now < t + PROBE_STALE => return Gate::Open(t + PROBE_STALE),
                        // Abandoned: taken over.
                        _ => {
                            let _ = fs::remove_file(&probe);
                        }
                    }
                }
                // The claim cannot be recorded: every caller tries, as before.
                Err(_) => return Gate::Probe,
            }
        }
        Gate::Probe
    }

    /// Records a failure: the remote is skipped for [`SKIP_FOR`]. `Ok(true)` when
    /// this call tripped it (the caller logs then, and only then); `Err` when the skip
    /// cannot be recorded (an unwritable cache directory).
    pub fn trip(&self, why: &str) -> std::io::Result<bool> {
        let was_open = self.open_until().is_some();
        if let Some(m) = &self.memory {
            if let Ok(mut m) = m.lock() {
                *m = Some((SystemTime::now() + SKIP_FOR, why.to_string(), None));
            }
            return Ok(!was_open);
        }
        let _ = fs::remove_file(self.probe_file());
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
                let _ = fs::remove_file(self.probe_file());
            }
        }
    }

    /// Why the remote was skipped last (the failure that tripped it).
    pub fn reason(&self) -> Option<String> {
        match &self.memory {
            Some(m) => m.lock().ok()?.as_ref().map(|(_, why, _)| why.clone()),
            None => fs::read_to_string(&self.file).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_skip_one_caller_probes_and_the_others_wait_for_it() {
        let d = tempfile::tempdir().unwrap();
        for b in [
            Breaker::new(d.path(), "redis://127.0.0.1:1"),
            Breaker::in_memory(),
        ] {
            assert_eq!(b.gate(), Gate::Closed);
            b.trip("refused").unwrap();
            assert!(matches!(b.gate(), Gate::Open(_)));
            // The skip ends (its time put in the past).
            match &b.memory {
                Some(m) => m.lock().unwrap().as_mut().unwrap().0 = SystemTime::now(),
                None => fs::File::options()
                    .write(true)
                    .open(&b.file)
                    .unwrap()
                    .set_modified(SystemTime::now() - Duration::from_secs(1))
                    .unwrap(),
            }
            assert_eq!(b.gate(), Gate::Probe, "the first caller probes");
            assert!(matches!(b.gate(), Gate::Open(_)), "the next waits");
            // The probe failed: skipped again, and the claim is gone.
            b.trip("still refused").unwrap();
            assert!(matches!(b.gate(), Gate::Open(_)));
            // Answered: closed for everyone.
            b.reset();
            assert_eq!(b.gate(), Gate::Closed);
        }
    }

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
