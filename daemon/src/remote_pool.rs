//! The remote tiers (Redis, S3, WebDAV/HTTP) the agent asks for its shims: one warm
//! client per distinct remote as a shim configured it (its connections and breakers
//! outlive the compiles), and writes in the background from a bounded queue, so a
//! shim is answered at once and never waits for a remote's write.
//!
//! A shim sends its whole remote spec, credentials included, over the agent's socket.
//! A client is shared only by requests whose spec is byte-identical (credentials
//! included), whoever sends them: no user's credentials or connections ever serve
//! another user's differing spec. The agent never adds anything of its own: an S3
//! remote is asked only with the keys the shim sent (never farmd's environment,
//! profile files or instance role), and the GitHub Actions cache (credentials from the
//! runner's environment) is never asked here. Objects go back unchecked: the shim
//! verifies them exactly as when it asks the remote itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farm::protocol::{AgentResponse, EntryKind, Key, RemoteSpec};
use farm::store::remote::{RemoteTier, Scheme};
use farm::store::{CacheError, CacheKey};
use tokio::sync::{mpsc, Semaphore};

/// Distinct remotes the agent keeps clients for, in all and created per user.
const MAX_REMOTES: usize = 64;
const MAX_REMOTES_PER_USER: usize = 16;
/// A client unused this long makes room for another.
const IDLE: Duration = Duration::from_secs(600);
/// Writes waiting per remote, and bytes waiting for all remotes together: past
/// either, a write is dropped (the shim counts it) rather than held.
const QUEUE_WRITES: usize = 256;
const QUEUE_BYTES: usize = 256 << 20;
/// Writes in flight per remote.
const WRITES_AT_ONCE: usize = 4;

struct Write {
    kind: EntryKind,
    key: Key,
    body: Vec<u8>,
}

struct Pooled {
    tier: Arc<RemoteTier>,
    writes: mpsc::Sender<Write>,
    last_used: Mutex<Instant>,
    /// The user whose request made it (for the per-user limit).
    creator: u32,
}

#[derive(Default)]
pub struct RemotePool {
    remotes: Mutex<HashMap<[u8; 32], Arc<Pooled>>>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: AtomicU64,
    /// When a dropped write was last logged.
    dropped_logged: Mutex<Option<Instant>>,
}

/// A spec's identity: every field, credentials included.
fn identity(spec: &RemoteSpec) -> [u8; 32] {
    *blake3::hash(&farm::protocol::encode(spec)).as_bytes()
}

/// What failed, for the shim (which names the remote itself).
fn failure(e: CacheError) -> AgentResponse {
    AgentResponse::RemoteFailed(match e {
        CacheError::Unavailable { detail, .. } | CacheError::Skipped { detail, .. } => detail,
        e => e.to_string(),
    })
}

/// Why the agent will not ask this remote itself (the shim then does).
fn refusal(spec: &RemoteSpec) -> Option<&'static str> {
    match spec.scheme {
        Scheme::Gha => Some("remote_scheme"),
        Scheme::S3 if spec.s3_keys.is_none() => Some("remote_credentials"),
        // Nothing of the agent's own files or environment: a credential comes
        // resolved by the shim, and a CA file is read by the shim itself.
        Scheme::Reapi => match spec.reapi.as_ref().map(|r| (&r.auth, &r.ca_file)) {
            Some((None | Some(farm::reapi::AuthSource::Resolved { .. }), None)) => None,
            _ => Some("remote_credentials"),
        },
        _ => None,
    }
}

impl RemotePool {
    /// The client for `spec`, made on first use. `Err(reason)`: not asked here.
    fn client(&self, uid: u32, spec: RemoteSpec) -> Result<Arc<Pooled>, &'static str> {
        if let Some(why) = refusal(&spec) {
            return Err(why);
        }
        let id = identity(&spec);
        let mut remotes = self.remotes.lock().map_err(|_| "remote_pool")?;
        if let Some(p) = remotes.get(&id) {
            if let Ok(mut t) = p.last_used.lock() {
                *t = Instant::now();
            }
            return Ok(p.clone());
        }
        let now = Instant::now();
        let idle = |p: &Pooled| {
            p.last_used
                .lock()
                .is_ok_and(|t| now.duration_since(*t) > IDLE)
        };
        if remotes.len() >= MAX_REMOTES
            || remotes.values().filter(|p| p.creator == uid).count() >= MAX_REMOTES_PER_USER
        {
            // Idle clients make room (their queued writes still finish).
            remotes.retain(|_, p| !idle(p));
        }
        if remotes.len() >= MAX_REMOTES
            || remotes.values().filter(|p| p.creator == uid).count() >= MAX_REMOTES_PER_USER
        {
            return Err("remote_pool_full");
        }
        let tier = Arc::new(RemoteTier::in_process(spec));
        let (tx, rx) = mpsc::channel(QUEUE_WRITES);
        tokio::spawn(drain(tier.clone(), rx, self.queued_bytes.clone()));
        let p = Arc::new(Pooled {
            tier,
            writes: tx,
            last_used: Mutex::new(now),
            creator: uid,
        });
        remotes.insert(id, p.clone());
        Ok(p)
    }

    /// The remote's object for an entry, unchecked.
    pub async fn get(
        &self,
        uid: u32,
        spec: RemoteSpec,
        kind: EntryKind,
        key: Key,
    ) -> AgentResponse {
        let p = match self.client(uid, spec) {
            Ok(p) => p,
            Err(why) => return AgentResponse::Local(why.into()),
        };
        match p.tier.read_stored(kind, &CacheKey(key)).await {
            Ok(data) => AgentResponse::RemoteObject(data.map(serde_bytes::ByteBuf::from)),
            Err(e) => failure(e),
        }
    }

    pub async fn have(
        &self,
        uid: u32,
        spec: RemoteSpec,
        kind: EntryKind,
        key: Key,
    ) -> AgentResponse {
        let p = match self.client(uid, spec) {
            Ok(p) => p,
            Err(why) => return AgentResponse::Local(why.into()),
        };
        match p.tier.exists(kind, &CacheKey(key)).await {
            Ok(has) => AgentResponse::RemoteHas(has),
            Err(e) => failure(e),
        }
    }

    /// Queues a write and answers at once: `RemoteQueued(false)` when the queue is
    /// full (the write is dropped), `RemoteFailed` while writes to the remote are
    /// skipped after a failure.
    pub fn put(
        &self,
        uid: u32,
        spec: RemoteSpec,
        kind: EntryKind,
        key: Key,
        body: Vec<u8>,
    ) -> AgentResponse {
        if spec.read_only {
            return AgentResponse::RemoteQueued(true);
        }
        let p = match self.client(uid, spec) {
            Ok(p) => p,
            Err(why) => return AgentResponse::Local(why.into()),
        };
        if let Err(e) = p.tier.check_skip(true) {
            return failure(e);
        }
        let n = body.len();
        if self.queued_bytes.fetch_add(n, Ordering::Relaxed) + n > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            return self.drop_write(&p);
        }
        match p.writes.try_send(Write { kind, key, body }) {
            Ok(()) => AgentResponse::RemoteQueued(true),
            Err(_) => {
                self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
                self.drop_write(&p)
            }
        }
    }

    /// A write the queue had no room for: counted, logged at most once a minute.
    fn drop_write(&self, p: &Pooled) -> AgentResponse {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.dropped_logged.lock() {
            if last.map_or(true, |t| t.elapsed() > Duration::from_secs(60)) {
                *last = Some(Instant::now());
                tracing::warn!(remote = %p.tier.spec().url, dropped = n, "remote write queue full: writes dropped");
            }
        }
        AgentResponse::RemoteQueued(false)
    }
}

/// Writes one remote's queue, a few at once. A failed write trips the remote's
/// write breaker (logged once), and the writes after it are skipped at once until it
/// closes. Ends when the client is dropped and its queue is empty.
async fn drain(tier: Arc<RemoteTier>, mut rx: mpsc::Receiver<Write>, bytes: Arc<AtomicUsize>) {
    let slots = Arc::new(Semaphore::new(WRITES_AT_ONCE));
    while let Some(w) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let tier = tier.clone();
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let n = w.body.len();
            if let Err(e) = tier.write_stored(w.kind, &CacheKey(w.key), w.body).await {
                tracing::debug!(error = %e, "remote write");
            }
            bytes.fetch_sub(n, Ordering::Relaxed);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> RemoteSpec {
        farm::store::remote::spec::parse_one(s).unwrap()
    }

    #[test]
    fn a_client_is_shared_only_by_identical_specs() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = RemotePool::default();
            let a = pool.client(1, spec("redis://u:one@127.0.0.1:1")).unwrap();
            let same = pool.client(2, spec("redis://u:one@127.0.0.1:1")).unwrap();
            let other = pool.client(2, spec("redis://u:two@127.0.0.1:1")).unwrap();
            assert!(Arc::ptr_eq(&a, &same));
            assert!(!Arc::ptr_eq(&a, &other), "another password, another client");
            // Nothing of the agent's own: S3 without the shim's keys, and GHA, are
            // left to the shim.
            assert_eq!(
                pool.client(1, spec("s3://bucket/p")).err(),
                Some("remote_credentials")
            );
            assert_eq!(pool.client(1, spec("gha")).err(), Some("remote_scheme"));
            assert_eq!(
                pool.client(1, spec("reapi://127.0.0.1:1|token-file=/etc/shadow"))
                    .err(),
                Some("remote_credentials")
            );
            assert!(pool
                .client(1, spec("reapi://127.0.0.1:1|instance=x"))
                .is_ok());
            // One user cannot take every client.
            for i in 0..MAX_REMOTES_PER_USER {
                let _ = pool.client(3, spec(&format!("redis://127.0.0.1:{}", 10 + i)));
            }
            assert_eq!(
                pool.client(3, spec("redis://127.0.0.1:9")).err(),
                Some("remote_pool_full")
            );
            assert!(pool.client(4, spec("redis://127.0.0.1:9")).is_ok());
        });
    }
}
