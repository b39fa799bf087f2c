//! What this node's remote jobs do, as they happen: each job placed from here or
//! served here starts and finishes as a [`JobEvent`], which is counted in the metrics
//! (`crate::metrics`), written to the audit log (`crate::audit`) when it finishes, kept
//! in a short history and sent to whoever listens (the live monitor).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::audit::AuditLog;

/// Finished jobs kept for a monitor that connects later.
const HISTORY: usize = 512;

/// Whether this node sent the job or ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Placed from here on a peer (a shim of this machine asked for it).
    Placed,
    /// Run here for a peer.
    Served,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Placed => "placed",
            Role::Served => "served",
        }
    }
}

/// One remote job, as started or finished.
#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    /// This node's number for the job (unique while it runs).
    pub id: u64,
    pub role: Role,
    /// `text`, `tree` or `paths`.
    pub shape: &'static str,
    pub family: String,
    /// The compiler's name as the job gives it, and its identity digest (hex).
    pub compiler: String,
    pub compiler_digest: String,
    /// Who asked: `uid:<n>(<name>)` for a local user, `node:<name>` for a peer (the
    /// name its certificate carries).
    pub submitter: String,
    /// The other node: the worker for a placed job, the sender for a served one.
    pub peer: String,
    /// The job's digest (blake3 of the job as sent, hex): the same job, the same digest.
    pub job: String,
    /// Unix time (ms) the job started here.
    pub start_ms: u64,
    /// Set when it finished: `ok`, `failed` (the compiler exited non-zero), or why it
    /// did not run (`refused`, `timeout`, `peer_error`, `protocol`).
    pub outcome: Option<String>,
    /// The compiler's own run time, as the worker measured it.
    pub compile_ms: Option<u64>,
    /// Time waiting for a worker slot (served jobs).
    pub queue_ms: Option<u64>,
    /// Start to finish, here.
    pub total_ms: Option<u64>,
}

/// Events sent to listeners.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    JobStarted(JobEvent),
    JobFinished(JobEvent),
}

pub struct Activity {
    seq: AtomicU64,
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<JobEvent>>,
    running: Mutex<Vec<JobEvent>>,
    audit: Option<AuditLog>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A job between its start and its end; finish it with [`Activity::finish`].
pub struct Started {
    event: JobEvent,
    t0: Instant,
}

/// How a job ended.
pub struct Finish<'a> {
    pub outcome: &'a str,
    pub compile_ms: Option<u64>,
    pub queue_ms: Option<u64>,
    /// The worker's name as its answer gives it (placed jobs): only compared with the
    /// name in its certificate, never recorded in its place.
    pub worker: Option<&'a str>,
}

/// What a job is, before it starts.
pub struct JobFacts<'a> {
    pub role: Role,
    pub shape: &'static str,
    pub family: &'a str,
    pub compiler: &'a farm::protocol::CompilerAd,
    pub submitter: String,
    pub peer: &'a str,
    /// The job as sent, for its digest.
    pub digest: [u8; 32],
}

impl Activity {
    pub fn new(audit: Option<AuditLog>) -> Activity {
        Activity {
            seq: AtomicU64::new(1),
            tx: broadcast::channel(1024).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            running: Mutex::new(Vec::new()),
            audit,
        }
    }

    /// A listener for events from now on (a slow listener misses events, it never
    /// holds a job up).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Jobs running now, and the last finished ones, oldest first.
    pub fn snapshot(&self) -> (Vec<JobEvent>, Vec<JobEvent>) {
        let running = self.running.lock().unwrap().clone();
        let done = self.history.lock().unwrap().iter().cloned().collect();
        (running, done)
    }

    pub fn start(&self, facts: JobFacts<'_>) -> Started {
        // A job's strings come from its sender: the family becomes one this build
        // knows (metrics labels stay a closed set), the compiler's name is shortened.
        let family = farm::lang::family_by_name(facts.family).map_or("unknown", |f| f.name());
        let event = JobEvent {
            id: self.seq.fetch_add(1, Ordering::Relaxed),
            role: facts.role,
            shape: facts.shape,
            family: family.to_string(),
            compiler: facts.compiler.name.chars().take(64).collect(),
            compiler_digest: farm::fsutil::hex(&facts.compiler.identity),
            submitter: facts.submitter,
            peer: facts.peer.to_string(),
            job: farm::fsutil::hex(&facts.digest),
            start_ms: unix_ms(),
            outcome: None,
            compile_ms: None,
            queue_ms: None,
            total_ms: None,
        };
        self.running.lock().unwrap().push(event.clone());
        let _ = self.tx.send(Event::JobStarted(event.clone()));
        Started {
            event,
            t0: Instant::now(),
        }
    }

    pub fn finish(&self, started: Started, how: Finish<'_>) {
        let Started { mut event, t0 } = started;
        let took = t0.elapsed();
        self.running.lock().unwrap().retain(|e| e.id != event.id);
        // The peer stays the name its certificate carries (placement gave it): the
        // answer's own `worker` is whatever that member chose to write.
        if let Some(w) = how.worker.filter(|w| *w != event.peer) {
            tracing::debug!(peer = %event.peer, claimed = %w.chars().take(64).collect::<String>(),
                "a worker's answer names another node than its certificate");
        }
        event.outcome = Some(how.outcome.to_string());
        event.compile_ms = how.compile_ms;
        event.queue_ms = how.queue_ms;
        event.total_ms = Some(took.as_millis() as u64);
        let m = crate::metrics::get();
        m.count_job(event.role.name(), event.shape, &event.family, how.outcome);
        if let Some(ms) = how.compile_ms {
            let place = match event.role {
                Role::Placed => "peer",
                Role::Served => "worker",
            };
            m.observe_compile(&event.family, place, Duration::from_millis(ms));
        }
        if let Some(ms) = how.queue_ms {
            m.observe_queue(&event.family, Duration::from_millis(ms));
        }
        if event.role == Role::Placed {
            m.observe_job(&event.family, took);
        }
        if let Some(audit) = &self.audit {
            audit.write(&event);
        }
        {
            let mut h = self.history.lock().unwrap();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        let _ = self.tx.send(Event::JobFinished(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A placed job's peer is the name in the worker's certificate, which placement
    /// gives at the start: what the worker's answer says about itself (any member can
    /// write anything there) never replaces it in the monitor or the audit log.
    #[test]
    fn a_workers_claimed_name_never_replaces_its_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let activity = Activity::new(Some(AuditLog::new(audit.clone(), 1 << 20, 1)));
        let compiler = farm::protocol::CompilerAd {
            name: "gcc".into(),
            identity: [7; 32],
        };
        let started = activity.start(JobFacts {
            role: Role::Placed,
            shape: "text",
            family: "gcc",
            compiler: &compiler,
            submitter: "uid:1000(alice)".into(),
            peer: "mallory",
            digest: [1; 32],
        });
        let forged = format!("honest-node{}", "x".repeat(1 << 16));
        activity.finish(
            started,
            Finish {
                outcome: "ok",
                compile_ms: Some(5),
                queue_ms: None,
                worker: Some(&forged),
            },
        );
        let (_, done) = activity.snapshot();
        assert_eq!(done[0].peer, "mallory");
        let line = std::fs::read_to_string(&audit).unwrap();
        assert!(line.contains("\"peer\":\"mallory\""), "{line}");
        assert!(!line.contains("honest-node"), "{line}");
    }
}
