//! The audit log: one JSON line per remote job this node placed or served (who asked,
//! which peer, which compiler, which job, how it ended), rotated by size
//! (`audit.jsonl` → `audit.jsonl.1` → … → `.N`, the oldest dropped). Writing it never
//! holds a job up for long and never fails one: an error is logged once a minute.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::activity::JobEvent;

pub struct AuditLog {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    state: Mutex<State>,
}

struct State {
    file: Option<File>,
    size: u64,
    last_error: Option<Instant>,
}

impl AuditLog {
    pub fn new(path: PathBuf, max_size: u64, keep: u32) -> AuditLog {
        AuditLog {
            path,
            max_size,
            keep,
            state: Mutex::new(State {
                file: None,
                size: 0,
                last_error: None,
            }),
        }
    }

    fn open(&self) -> std::io::Result<(File, u64)> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        let size = f.metadata()?.len();
        Ok((f, size))
    }

    /// `audit.jsonl.N-1` → `.N`, …, `audit.jsonl` → `.1`.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }

    pub fn write(&self, event: &JobEvent) {
        let mut line = match serde_json::to_vec(&AuditLine::of(event)) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let mut st = self.state.lock().unwrap();
        let r = (|| -> std::io::Result<()> {
            if st.file.is_some() && st.size + line.len() as u64 > self.max_size {
                st.file = None;
                self.rotate()?;
            }
            if st.file.is_none() {
                let (f, size) = self.open()?;
                st.file = Some(f);
                st.size = size;
            }
            st.file.as_mut().expect("opened").write_all(&line)?;
            st.size += line.len() as u64;
            Ok(())
        })();
        if let Err(e) = r {
            st.file = None;
            if st
                .last_error
                .map_or(true, |t| t.elapsed() > Duration::from_secs(60))
            {
                st.last_error = Some(Instant::now());
                tracing::warn!(file = %self.path.display(), error = %e, "cannot write the audit log");
            }
        }
    }
}

/// One line of the audit log (docs/security.md, "Audit log").
#[derive(serde::Serialize)]
struct AuditLine<'a> {
    /// Unix time (ms) the job started.
    ts: u64,
    role: &'static str,
    submitter: &'a str,
    peer: &'a str,
    compiler: &'a str,
    compiler_digest: &'a str,
    job: &'a str,
    shape: &'a str,
    family: &'a str,
    outcome: &'a str,
    compile_ms: Option<u64>,
    total_ms: Option<u64>,
}

impl<'a> AuditLine<'a> {
    fn of(e: &'a JobEvent) -> AuditLine<'a> {
        AuditLine {
            ts: e.start_ms,
            role: e.role.name(),
            submitter: &e.submitter,
            peer: &e.peer,
            compiler: &e.compiler,
            compiler_digest: &e.compiler_digest,
            job: &e.job,
            shape: e.shape,
            family: &e.family,
            outcome: e.outcome.as_deref().unwrap_or(""),
            compile_ms: e.compile_ms,
            total_ms: e.total_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Role;

    fn event(n: u64) -> JobEvent {
        JobEvent {
            id: n,
            role: Role::Served,
            shape: "text",
            family: "gcc".into(),
            compiler: "gcc".into(),
            compiler_digest: "ab".repeat(32),
            submitter: "node:alpha".into(),
            peer: "alpha".into(),
            job: "cd".repeat(32),
            start_ms: 1,
            outcome: Some("ok".into()),
            compile_ms: Some(5),
            queue_ms: Some(0),
            total_ms: Some(6),
        }
    }

    #[test]
    fn lines_are_json_and_the_log_rotates_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::new(path.clone(), 4096, 2);
        for n in 0..100 {
            log.write(&event(n));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["submitter"], "node:alpha");
            assert_eq!(v["outcome"], "ok");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
        let total: usize = ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(dir.path().join(f))
                    .unwrap()
                    .lines()
                    .count()
            })
            .sum();
        assert!(total < 100, "the oldest lines were dropped");
    }

    #[test]
    fn an_unwritable_log_is_skipped_and_resumes_once_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later/audit.jsonl");
        let log = AuditLog::new(path.clone(), 4096, 2);
        log.write(&event(1));
        assert!(!path.exists());
        std::fs::create_dir(dir.path().join("later")).unwrap();
        log.write(&event(2));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"ts\":1"));
    }
}
