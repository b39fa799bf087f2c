//! The agent role: answers its own machine's shims on a Unix socket. On a miss it
//! asks the key's home peer, then places the job where it should finish first (a peer
//! or home), with one retry elsewhere on any peer failure, and publishes results to
//! the key's home. It never makes a shim wait past a job's deadline.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use farm::cache::{CacheKey, EntryKind, Store};
use farm::protocol::{
    self, AgentRequest, AgentResponse, Job, JobResult, PeerRequest, PeerResponse,
    MAX_CONTROL_FRAME, MAX_FRAME,
};
use tokio::net::{UnixListener, UnixStream};

use crate::node::{ewma, Node};
use crate::peer::request;

/// How long a shim may take to send its request after connecting. The preprocessor
/// runs between connect and request, so this is generous.
const SHIM_REQUEST_WAIT: Duration = Duration::from_secs(600);
/// Remote cache lookups give up after this (plus the peer's RTT).
const LOOKUP_WAIT: Duration = Duration::from_millis(1500);
/// Assumed local compile time before any was measured.
const DEFAULT_JOB_MS: f64 = 500.0;

pub fn bind(node: &Node) -> Result<UnixListener> {
    let path = &node.cfg.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("socket directory {}", dir.display()))?;
    }
    // A socket file left by a farmd that died; a live one answers a connect.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("{}: another farmd is listening there", path.display());
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("agent socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.cfg.socket_mode))
        .with_context(|| format!("agent socket {}", path.display()))?;
    Ok(l)
}

pub async fn serve(node: Arc<Node>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if node.stopping.load(Ordering::Relaxed) {
            return;
        }
        let node = node.clone();
        tokio::spawn(async move { shim_session(node, stream).await });
    }
}

/// One shim connection. A home slot the agent granted is held until the shim says
/// its compile is done or goes away.
async fn shim_session(node: Arc<Node>, mut stream: UnixStream) {
    let mut holds_home = false;
    loop {
        let req: AgentRequest = match tokio::time::timeout(
            SHIM_REQUEST_WAIT,
            protocol::read_async(&mut stream, MAX_FRAME),
        )
        .await
        {
            Ok(Ok(r)) => r,
            // A shim that said what it had to say and exited.
            Ok(Err(protocol::FrameError::Closed | protocol::FrameError::Io(_))) | Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "malformed agent request");
                break;
            }
        };
        node.agent_busy.fetch_add(1, Ordering::Relaxed);
        let resp = match req {
            AgentRequest::Status => AgentResponse::Status(Box::new(node.status())),
            AgentRequest::Lookup { key } => match lookup(&node, &key).await {
                Some((entry, peer)) => AgentResponse::Cached { entry, peer },
                None => AgentResponse::Local("not_distributable".into()),
            },
            AgentRequest::Miss { key, job } => {
                let r = miss(&node, key, job).await;
                if matches!(&r, AgentResponse::Local(_)) {
                    holds_home = true;
                }
                r
            }
            AgentRequest::Publish {
                key,
                entry,
                local_ms,
            } => {
                if holds_home {
                    release_home(&node, local_ms);
                    holds_home = false;
                }
                let node = node.clone();
                tokio::spawn(async move { publish(&node, key, entry).await });
                AgentResponse::Published
            }
            AgentRequest::LocalDone { local_ms } => {
                if holds_home {
                    release_home(&node, local_ms);
                    holds_home = false;
                }
                AgentResponse::Published
            }
        };
        node.agent_busy.fetch_sub(1, Ordering::Relaxed);
        if protocol::write_async(&mut stream, &resp).await.is_err() {
            break;
        }
    }
    if holds_home {
        release_home(&node, 0);
    }
}

fn release_home(node: &Node, local_ms: u64) {
    node.local_running.fetch_sub(1, Ordering::Relaxed);
    if local_ms > 0 {
        let mut l = node.local_ms.lock().unwrap();
        *l = ewma(*l, local_ms as f64);
    }
}

/// The farm's cache: the key's home node (this one or a peer).
async fn lookup(node: &Node, key: &[u8; 32]) -> Option<(Vec<u8>, String)> {
    match node.home_of(key) {
        None => match node.store.get(EntryKind::Result, &CacheKey(*key)) {
            Ok(Some(e)) => Some((e, node.name.clone())),
            _ => None,
        },
        Some((name, conn)) => {
            let wait = LOOKUP_WAIT + conn.rtt() * 2;
            match request(&conn, &PeerRequest::Get { key: *key }, MAX_FRAME, wait).await {
                Ok(PeerResponse::Entry(Some(e))) => Some((e.into_vec(), name)),
                Ok(_) => None,
                Err(e) => {
                    tracing::info!(peer = %name, error = %e, "remote cache lookup failed");
                    None
                }
            }
        }
    }
}

/// Stores a result at its home; a home that already has it is not sent the bytes.
async fn publish(node: &Node, key: [u8; 32], entry: Vec<u8>) {
    match node.home_of(&key) {
        None => {
            if farm::key::ResultEntry::decode(&entry).is_some() {
                if let Err(e) = node.store.put(EntryKind::Result, &CacheKey(key), &entry) {
                    tracing::warn!(error = %e, "store write failed");
                }
            }
        }
        Some((name, conn)) => {
            let wait = Duration::from_secs(5);
            match request(&conn, &PeerRequest::Have { key }, MAX_CONTROL_FRAME, wait).await {
                Ok(PeerResponse::Have(true)) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(peer = %name, error = %e, "publish: have failed");
                    return;
                }
            }
            let wait = Duration::from_secs(30);
            if let Err(e) = request(
                &conn,
                &PeerRequest::Put { key, entry },
                MAX_CONTROL_FRAME,
                wait,
            )
            .await
            {
                tracing::info!(peer = %name, error = %e, "publish failed");
            }
        }
    }
}

/// Where a job should run.
enum Place {
    Home,
    Peer(String, quinn::Connection, Duration),
}

/// Picks home or a peer by estimated finish time: two random candidates among the
/// peers that run this compiler and have room (power of two choices), against home.
fn place(node: &Node, job: &Job, tried: &[String]) -> Option<Place> {
    let now = Instant::now();
    let local_ms = {
        let l = *node.local_ms.lock().unwrap();
        if l > 0.0 {
            l
        } else {
            DEFAULT_JOB_MS
        }
    };
    let local_slots = node.cfg.local_slots;
    let running = node.local_running.load(Ordering::Relaxed);
    let home_est = if local_slots == 0 {
        f64::INFINITY
    } else if running < local_slots {
        local_ms
    } else {
        local_ms * (1.0 + (running - local_slots + 1) as f64 / local_slots as f64)
    };
    let mut cands: Vec<(f64, String, quinn::Connection, Duration)> = Vec::new();
    {
        let peers = node.peers.lock().unwrap();
        for (addr, p) in peers.iter() {
            if tried.contains(addr) || !p.live(now) || !p.runs(&job.compiler) {
                continue;
            }
            let Some(a) = &p.advert else { continue };
            let Some(conn) = &p.conn else { continue };
            // Work there: what its last advert showed, or at least what this node
            // has in flight there now (the advert may predate those jobs).
            let slots = a.slots.max(1) as f64;
            let advertised = (a.slots.saturating_sub(a.free) + a.queue) as f64;
            let load = advertised.max(p.inflight as f64);
            // The worker refuses a queue of twice its slots; do not send into that.
            if load >= slots * 3.0 {
                continue;
            }
            let ahead = (load + 1.0 - slots).max(0.0);
            // Unmeasured peers are assumed as fast as home plus the round trip.
            let job_ms = p.job_ms.unwrap_or(local_ms + p.rtt.as_secs_f64() * 2000.0);
            let est = job_ms * (1.0 + ahead / slots);
            cands.push((est, addr.clone(), conn.clone(), p.rtt));
        }
    }
    let best_peer = match cands.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = fastrand_index(n);
            let mut b = fastrand_index(n - 1);
            if b >= a {
                b += 1;
            }
            Some(if cands[a].0 <= cands[b].0 { a } else { b })
        }
    };
    match best_peer {
        Some(i) if cands[i].0 < home_est => {
            let (_, addr, conn, rtt) = cands.swap_remove(i);
            Some(Place::Peer(addr, conn, rtt))
        }
        _ if home_est.is_finite() => Some(Place::Home),
        Some(i) => {
            let (_, addr, conn, rtt) = cands.swap_remove(i);
            Some(Place::Peer(addr, conn, rtt))
        }
        None => None,
    }
}

fn fastrand_index(n: usize) -> usize {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % n as u64) as usize
}

/// The deadline of one job on a peer: from how long jobs of this size took, with the
/// configured ceiling.
fn deadline(node: &Node, job: &Job, rtt: Duration) -> Duration {
    let per_mib = *node.ms_per_mib.lock().unwrap();
    let local = *node.local_ms.lock().unwrap();
    let mib = job.source.len() as f64 / (1 << 20) as f64;
    let expected = if per_mib > 0.0 {
        per_mib * mib.max(0.05)
    } else if local > 0.0 {
        local
    } else {
        DEFAULT_JOB_MS
    };
    // Generous: a deadline only has to catch a peer that stalls, and a busy peer
    // legitimately takes several times its average.
    let d = Duration::from_millis((expected * 8.0) as u64) + rtt * 4 + Duration::from_secs(5);
    d.min(node.cfg.job_timeout)
}

async fn miss(node: &Node, key: [u8; 32], job: Job) -> AgentResponse {
    if let Some((entry, peer)) = lookup(node, &key).await {
        return AgentResponse::Cached { entry, peer };
    }
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure = String::new();
    // The first try and one retry on another peer; then home.
    for _ in 0..2 {
        match place(node, &job, &tried) {
            None => break,
            Some(Place::Home) => {
                node.local_running.fetch_add(1, Ordering::Relaxed);
                return AgentResponse::Local(if tried.is_empty() {
                    "placed_home".into()
                } else {
                    format!("fallback.{last_failure}")
                });
            }
            Some(Place::Peer(addr, conn, rtt)) => {
                tried.push(addr.clone());
                match run_remote(node, &addr, &conn, &job, rtt).await {
                    Ok(r) => return AgentResponse::Compiled(r),
                    Err(why) => last_failure = why,
                }
            }
        }
    }
    node.local_running.fetch_add(1, Ordering::Relaxed);
    AgentResponse::Local(if tried.is_empty() {
        "no_peer".into()
    } else {
        format!("fallback.{last_failure}")
    })
}

/// Sends a job to one peer. `Err` is a short reason name, counted by the shim.
async fn run_remote(
    node: &Node,
    addr: &str,
    conn: &quinn::Connection,
    job: &Job,
    rtt: Duration,
) -> Result<JobResult, String> {
    let limit = deadline(node, job, rtt);
    let size = job.source.len();
    {
        let mut peers = node.peers.lock().unwrap();
        if let Some(p) = peers.get_mut(addr) {
            p.inflight += 1;
        }
    }
    let t0 = Instant::now();
    let r = request(conn, &PeerRequest::Job(job.clone()), MAX_FRAME, limit).await;
    let took = t0.elapsed();
    let mut peers = node.peers.lock().unwrap();
    let p = peers.get_mut(addr);
    let outcome = match r {
        Ok(PeerResponse::Done(res)) => Ok(res),
        Ok(PeerResponse::Refused(why)) => Err(("refused", why)),
        Ok(_) => Err(("protocol", "unexpected answer to a job".to_string())),
        Err(e) => {
            let s = e.to_string();
            if s.starts_with("no answer within") {
                Err(("timeout", s))
            } else {
                Err(("peer_error", s))
            }
        }
    };
    let Some(p) = p else {
        return outcome.map_err(|(k, _)| k.to_string());
    };
    p.inflight = p.inflight.saturating_sub(1);
    match outcome {
        Ok(res) => {
            p.ok += 1;
            let ms = took.as_secs_f64() * 1000.0;
            p.job_ms = Some(ewma(p.job_ms.unwrap_or(0.0), ms));
            drop(peers);
            let mib = (size as f64 / (1 << 20) as f64).max(0.05);
            let mut per = node.ms_per_mib.lock().unwrap();
            *per = ewma(*per, res.compile_ms as f64 / mib);
            Ok(res)
        }
        Err((kind, why)) => {
            tracing::warn!(peer = %p.node, %addr, reason = kind, detail = %why, "remote job failed");
            p.failure(format!("{kind}: {why}"));
            // A failing peer looks slower, so placement prefers others for a while.
            p.job_ms = Some(p.job_ms.unwrap_or(DEFAULT_JOB_MS) * 2.0);
            Err(kind.to_string())
        }
    }
}
