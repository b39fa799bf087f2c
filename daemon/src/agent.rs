//! The agent role: answers its own machine's shims on a Unix socket. It fetches
//! entries from their keys' homes (the farm's cache), places a miss where it should
//! finish first (a peer or home), runs it on a peer with one retry elsewhere on any
//! failure, and publishes results and manifests to their homes. It never makes a shim
//! wait past a job's deadline.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use farm::cache::{CacheKey, Store};
use farm::protocol::{
    self, AgentRequest, AgentResponse, Blob, CompilerAd, Item, Job, JobResult, Kind, PeerRequest,
    PeerResponse, TreeJob, MAX_CONTROL_FRAME, MAX_FRAME,
};
use tokio::net::{UnixListener, UnixStream};

use crate::node::{contention, ewma, Node};
use crate::peer::{entry_kind, request, store_item};

/// How long a shim may take to send its request after connecting. The preprocessor
/// runs between connect and request, so this is generous.
const SHIM_REQUEST_WAIT: Duration = Duration::from_secs(600);
/// Remote cache lookups give up after this (plus the peer's RTT).
const LOOKUP_WAIT: Duration = Duration::from_millis(1500);
/// Shim connections served at once, in all and per user: past these a connection is
/// closed at once (that shim compiles at home), so one local user cannot take the agent
/// from the others or grow farmd without bound.
const MAX_SESSIONS: usize = 1024;
const MAX_SESSIONS_PER_USER: usize = 256;
/// Assumed local compile time before any was measured.
const DEFAULT_JOB_MS: f64 = 500.0;

/// Whose entries a shim's request reads and writes in the farm's cache. Entries a shim
/// publishes come from a compile on its user's machine, which farmd cannot check:
/// they are served only to the same user (by name, so one user's machines share
/// them), unless that user is in `trusted_publishers` (a CI account, say), whose
/// entries every user is served. Different users never see each other's entries, so
/// no user can give another a wrong object through the farm's cache.
#[derive(Clone, Debug)]
struct Scope {
    /// The user's own scope: the key every entry is stored under is derived from it.
    user: String,
    /// Entries this user publishes go to the farm-wide scope.
    trusted: bool,
}

impl Scope {
    fn of(node: &Node, uid: Option<u32>) -> Scope {
        let user = match uid {
            Some(uid) => user_name(uid).unwrap_or_else(|| format!("uid:{uid}")),
            None => "unknown".into(),
        };
        let trusted = uid.is_some() && node.cfg.trusted_publishers.contains(&user);
        Scope { user, trusted }
    }

    /// The key an entry of this user's own scope is stored under.
    fn user_key(&self, key: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("farm user-scoped cache key v1");
        h.update(&(self.user.len() as u64).to_le_bytes());
        h.update(self.user.as_bytes());
        h.update(key);
        *h.finalize().as_bytes()
    }

    /// Where this user's publications go.
    fn publish_key(&self, key: &[u8; 32]) -> [u8; 32] {
        if self.trusted {
            *key
        } else {
            self.user_key(key)
        }
    }
}

/// The name of user `uid` on this machine.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 << 10];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both alive and sized as passed.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_string)
}

/// Runs a compile in a warm compiler for a shim of this machine. Only for shims of
/// the user farmd runs as: the server reads and writes the paths the arguments name
/// with farmd's rights, so another user's request could reach files that user cannot.
async fn warm(node: &Node, peer_uid: Option<u32>, home: &str, args: &[String]) -> AgentResponse {
    use std::os::unix::fs::MetadataExt;
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if peer_uid.is_none() || peer_uid != own_uid {
        return AgentResponse::Local("other_user".into());
    }
    // The installation must be one of an allow-listed compiler whose family farmd
    // keeps warm.
    let home = std::path::PathBuf::from(home);
    let family = node.compilers.iter().find_map(|c| {
        let family = farm::lang::family_for(&c.name)?;
        let warm = family.warm()?;
        let canonical = std::fs::canonicalize(&c.path).ok()?;
        (warm.installation_of(&canonical) == home).then_some(family)
    });
    let Some(family) = family else {
        tracing::warn!(installation = %home.display(), "warm compile refused: installation not allow-listed");
        return AgentResponse::Local("jdk_not_allowed".into());
    };
    node.local_running.fetch_add(1, Ordering::Relaxed);
    let r = node
        .warm
        .run(family, &home, args, node.cfg.job_timeout)
        .await;
    node.local_running.fetch_sub(1, Ordering::Relaxed);
    match r {
        Ok(r) => AgentResponse::Compiled(JobResult {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            outputs: Vec::new(),
            compile_ms: r.elapsed.as_millis() as u64,
            worker: node.name.clone(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, installation = %home.display(), "warm compile failed");
            AgentResponse::Local("warm_failed".into())
        }
    }
}

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
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    let per_user: Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>> = Default::default();
    let mut refused_log = RateLimitedLog::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: shims compile at home meanwhile.
                tracing::warn!(error = %e, "agent socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if node.stopping.load(Ordering::Relaxed) {
            return;
        }
        // Entries are scoped by user: a connection whose user is unknown is not served.
        let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else {
            refused_log.warn(u32::MAX, "agent connection refused: no peer credentials");
            continue;
        };
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            refused_log.warn(uid, "agent connection refused: too many connections");
            continue;
        };
        {
            let mut m = per_user.lock().unwrap();
            let n = m.entry(uid).or_default();
            if *n >= MAX_SESSIONS_PER_USER {
                drop(m);
                refused_log.warn(uid, "agent connection refused: too many from this user");
                continue;
            }
            *n += 1;
        }
        let node = node.clone();
        let per_user = per_user.clone();
        tokio::spawn(async move {
            shim_session(node, stream).await;
            drop(permit);
            let mut m = per_user.lock().unwrap();
            if let Some(n) = m.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&uid);
                }
            }
        });
    }
}

/// One warning per second at most, with the count of those it held back.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    held: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, uid: u32, what: &str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.held += 1;
            return;
        }
        tracing::warn!(uid, suppressed = self.held, "{what}");
        self.last = Some(now);
        self.held = 0;
    }
}

/// One shim connection. A home slot the agent granted is held until the shim says
/// its compile is done or goes away.
async fn shim_session(node: Arc<Node>, mut stream: UnixStream) {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let scope = Scope::of(&node, peer_uid);
    let mut holds_home = false;
    // Home's load when this shim's compile was sent home.
    let mut home_factor = 1.0;
    loop {
        let req: AgentRequest = match tokio::time::timeout(
            SHIM_REQUEST_WAIT,
            protocol::read_async_budget(&mut stream, MAX_FRAME, &node.agent_read_budget),
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
            AgentRequest::Fetch { kind, key } => {
                // The user's own entries first, then the farm-wide ones, at once.
                let own_key = scope.user_key(&key);
                let (own, farm) =
                    tokio::join!(lookup(&node, kind, &own_key), lookup(&node, kind, &key));
                match own.or(farm) {
                    Some((entry, peer)) => AgentResponse::Cached { entry, peer },
                    None => AgentResponse::Missing,
                }
            }
            AgentRequest::Place { compiler } => match place(&node, &compiler, &[], true) {
                Ok(Place::Peer(..)) => AgentResponse::Ship,
                Ok(Place::Home(factor)) => {
                    home_factor = factor;
                    holds_home = reserve_home(&node, holds_home);
                    AgentResponse::Local("placed_home".into())
                }
                Err(why) => {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                    AgentResponse::Local(why.into())
                }
            },
            AgentRequest::Compile(job) => {
                let r = compile(&node, &job).await;
                if matches!(&r, AgentResponse::Local(_)) {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                }
                r
            }
            AgentRequest::Publish { items, local_ms } => {
                if holds_home {
                    release_home(&node, local_ms, home_factor);
                    holds_home = false;
                }
                let node = node.clone();
                let scope = scope.clone();
                tokio::spawn(async move {
                    for mut item in items {
                        item.key = scope.publish_key(&item.key);
                        publish(&node, item).await;
                    }
                });
                AgentResponse::Published
            }
            AgentRequest::LocalDone { local_ms } => {
                if holds_home {
                    release_home(&node, local_ms, home_factor);
                    holds_home = false;
                }
                AgentResponse::Published
            }
            AgentRequest::Warm { home, args } => warm(&node, peer_uid, &home, &args).await,
            AgentRequest::MissingBlobs(digests) => {
                AgentResponse::MissingBlobs(node.blobs.missing(&digests))
            }
            AgentRequest::PutBlobs(blobs) => match node.blobs.put(&blobs) {
                Ok(()) => AgentResponse::Published,
                Err(why) => {
                    tracing::warn!(error = %why, "blobs from a shim refused");
                    AgentResponse::Local("bad_blob".into())
                }
            },
            AgentRequest::CompileTree(job) => {
                let r = compile_tree(&node, &job).await;
                if matches!(&r, AgentResponse::Local(_)) {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                }
                r
            }
        };
        node.agent_busy.fetch_sub(1, Ordering::Relaxed);
        if protocol::write_async(&mut stream, &resp).await.is_err() {
            break;
        }
    }
    if holds_home {
        release_home(&node, 0, 1.0);
    }
}

fn reserve_home(node: &Node, already: bool) -> bool {
    if !already {
        node.local_running.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Home's load factor: processes that would share home's CPUs with one more compile
/// (the compiles it sent home, or every runnable process on the machine if more, such
/// as a peer's jobs on the same CPUs), per home CPU, at least 1.
fn home_load(node: &Node) -> f64 {
    let cpus = crate::node::cores().min(node.cfg.local_slots.max(1));
    let busy = node
        .local_running
        .load(Ordering::Relaxed)
        .max(crate::node::runnable());
    contention(busy, cpus)
}

fn release_home(node: &Node, local_ms: u64, factor: f64) {
    node.local_running.fetch_sub(1, Ordering::Relaxed);
    if local_ms > 0 {
        *node.local_last.lock().unwrap() = Some(Instant::now());
        let mut l = node.local_ms.lock().unwrap();
        *l = ewma(*l, local_ms as f64);
        let mut b = node.local_base_ms.lock().unwrap();
        *b = ewma(*b, local_ms as f64 / factor);
    }
}

/// The farm's cache: the key's home node (this one or a peer).
async fn lookup(node: &Node, kind: Kind, key: &[u8; 32]) -> Option<(Vec<u8>, String)> {
    match node.home_of(key) {
        None => match node.store.get(entry_kind(kind), &CacheKey(*key)) {
            Ok(Some(e)) => Some((e, node.name.clone())),
            _ => None,
        },
        Some((name, conn)) => {
            let wait = LOOKUP_WAIT + conn.rtt() * 2;
            let req = PeerRequest::Get { kind, key: *key };
            match request(&conn, &req, MAX_FRAME, wait).await {
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

/// Stores an entry at its key's home. A result the home already has is not sent
/// again; a manifest is always sent (the home merges it).
async fn publish(node: &Node, item: Item) {
    match node.home_of(&item.key) {
        None => {
            if let Err(e) = store_item(node, item) {
                tracing::warn!(error = %e, "store write failed");
            }
        }
        Some((name, conn)) => {
            if item.kind == Kind::Result {
                let have = PeerRequest::Have {
                    kind: item.kind,
                    key: item.key,
                };
                match request(&conn, &have, MAX_CONTROL_FRAME, Duration::from_secs(5)).await {
                    Ok(PeerResponse::Have(true)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(peer = %name, error = %e, "publish: have failed");
                        return;
                    }
                }
            }
            let put = PeerRequest::Put(item);
            if let Err(e) = request(&conn, &put, MAX_CONTROL_FRAME, Duration::from_secs(30)).await {
                tracing::info!(peer = %name, error = %e, "publish failed");
            }
        }
    }
}

/// Where a job should run.
enum Place {
    /// Home, with its load factor now.
    Home(f64),
    /// A peer.
    Peer(String, quinn::Connection, Duration),
}

/// How long a measured job time stays an estimate; after that the place is measured
/// again.
const SAMPLE_TTL: Duration = Duration::from_secs(10);

/// Picks home or a peer by estimated finish time, learned from how long jobs really
/// took lately: home's recent compile time (`home_estimate`), a peer's recent job
/// round trip (transfer, queue and compile) × how far its advertised work plus this
/// node's jobs sent since exceed its slots. A peer not measured in the last 10 s gets
/// one job to measure it. Two random peers that run the compiler and have room are
/// compared (power of two choices), then the better one against home. Peers on home's
/// own CPUs, or slower, or farther, lose to home: placement learns what is cheaper at
/// home.
fn place(
    node: &Node,
    compiler: &CompilerAd,
    tried: &[String],
    home_ok: bool,
) -> Result<Place, &'static str> {
    let now = Instant::now();
    let home_est = if home_ok && node.cfg.local_slots > 0 {
        home_estimate(node, now)
    } else {
        f64::INFINITY
    };
    let mut cands: Vec<(f64, String, quinn::Connection, Duration)> = Vec::new();
    let mut busy = false;
    {
        let peers = node.peers.lock().unwrap();
        for (addr, p) in peers.iter() {
            if tried.contains(addr) || !p.live(now) || !p.runs(compiler) {
                continue;
            }
            let Some(a) = &p.advert else { continue };
            let Some(conn) = &p.conn else { continue };
            // A peer on this machine adds no CPUs: shipping to it only adds cost. It
            // still holds its share of the farm's cache.
            if a.host == node.host && !a.host.is_empty() && !node.cfg.same_host_jobs {
                continue;
            }
            let slots = a.slots.max(1);
            let work =
                (slots.saturating_sub(a.free) + a.queue + p.sent_since_advert).max(p.inflight);
            // The worker refuses a queue of twice its slots; do not send into that.
            if work >= slots * 3 {
                busy = true;
                continue;
            }
            let fresh = p
                .last_job
                .map(|t| now.duration_since(t) < SAMPLE_TTL)
                .unwrap_or(false);
            let est = match p.job_ms {
                Some(ms) if fresh => ms * contention(work, slots),
                // Not measured lately: one job goes there to measure it (more only
                // when nothing else can take them).
                _ if p.inflight == 0 => 0.0,
                _ => f64::MAX / 2.0,
            };
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
    let peer = |cands: &mut Vec<(f64, String, quinn::Connection, Duration)>, i| {
        let (_, addr, conn, rtt) = cands.swap_remove(i);
        Ok(Place::Peer(addr, conn, rtt))
    };
    match best_peer {
        Some(i) if cands[i].0 < home_est => peer(&mut cands, i),
        _ if home_est.is_finite() => Ok(Place::Home(home_load(node))),
        Some(i) => peer(&mut cands, i),
        None if busy => Err("peers_busy"),
        None => Err("no_peer"),
    }
}

/// How long home would take now: its recent compile time as measured (under the load
/// it had), its uncontended time when nothing runs there, and that too when it has not
/// compiled for a while (the old measurement says nothing about now).
fn home_estimate(node: &Node, now: Instant) -> f64 {
    let base = match *node.local_base_ms.lock().unwrap() {
        b if b > 0.0 => b,
        _ => DEFAULT_JOB_MS,
    };
    let fresh = node
        .local_last
        .lock()
        .unwrap()
        .map(|t| now.duration_since(t) < SAMPLE_TTL)
        .unwrap_or(false);
    let recent = *node.local_ms.lock().unwrap();
    if !fresh || recent <= 0.0 || node.local_running.load(Ordering::Relaxed) == 0 {
        base.min(if recent > 0.0 { recent } else { base })
    } else {
        recent
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

/// A tree job on a peer, one retry on another; `Local` (home) when none could.
async fn compile_tree(node: &Node, job: &TreeJob) -> AgentResponse {
    // Workers check this too; a shim never sends such a role.
    if !job
        .outputs
        .iter()
        .all(|(r, _)| farm::lang::valid_output_role(r))
    {
        return AgentResponse::Local("bad_request".into());
    }
    match on_peers(node, &job.compiler, Work::Tree(job)).await {
        Ok(PeerResponse::TreeDone(r)) => AgentResponse::TreeCompiled(r),
        Ok(_) => AgentResponse::Local("fallback.protocol".into()),
        Err(local) => local,
    }
}

/// Gives the peer the blobs of a tree job it lacks (from this node's blob store),
/// then the job.
async fn send_tree(
    node: &Node,
    conn: &quinn::Connection,
    job: &TreeJob,
    limit: Duration,
) -> anyhow::Result<PeerResponse> {
    let mut digests: Vec<[u8; 32]> = job.files.iter().map(|f| f.digest).collect();
    digests.sort();
    digests.dedup();
    let control = Duration::from_secs(10) + conn.rtt() * 4;
    let missing = match request(conn, &PeerRequest::HaveBlobs(digests), MAX_FRAME, control).await? {
        PeerResponse::MissingBlobs(m) => m,
        PeerResponse::Refused(why) => return Ok(PeerResponse::Refused(why)),
        _ => anyhow::bail!("unexpected answer to have-blobs"),
    };
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let flush = |batch: Vec<Blob>| async move {
        match request(
            conn,
            &PeerRequest::PutBlobs(batch),
            MAX_CONTROL_FRAME,
            limit,
        )
        .await?
        {
            PeerResponse::Stored => Ok(None),
            PeerResponse::Refused(why) => Ok(Some(PeerResponse::Refused(why))),
            _ => anyhow::bail!("unexpected answer to put-blobs"),
        }
    };
    for d in missing {
        let Some(data) = node.blobs.get(&d) else {
            anyhow::bail!(
                "blob {} is not in this node's store",
                farm::fsutil::hex(&d[..8])
            );
        };
        bytes += data.len();
        batch.push(Blob { digest: d, data });
        if bytes > 16 << 20 {
            if let Some(r) = flush(std::mem::take(&mut batch)).await? {
                return Ok(r);
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        if let Some(r) = flush(batch).await? {
            return Ok(r);
        }
    }
    request(conn, &PeerRequest::TreeJob(job.clone()), MAX_FRAME, limit).await
}

/// What goes to a peer.
#[derive(Clone, Copy)]
enum Work<'a> {
    Job(&'a Job),
    Tree(&'a TreeJob),
}

/// A job on a peer, one retry on another; `Local` (home) when none could.
async fn compile(node: &Node, job: &Job) -> AgentResponse {
    match on_peers(node, &job.compiler, Work::Job(job)).await {
        Ok(PeerResponse::Done(r)) => AgentResponse::Compiled(r),
        Ok(_) => AgentResponse::Local("fallback.protocol".into()),
        Err(local) => local,
    }
}

/// Runs work on the peer placement picks, and once more on another after a failure.
/// `Err` is the `Local` answer for the shim: why no peer could.
async fn on_peers(
    node: &Node,
    compiler: &CompilerAd,
    work: Work<'_>,
) -> Result<PeerResponse, AgentResponse> {
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure = String::new();
    let mut none = "no_peer";
    for _ in 0..2 {
        let (addr, conn, rtt) = match place(node, compiler, &tried, false) {
            Ok(Place::Peer(addr, conn, rtt)) => (addr, conn, rtt),
            Ok(Place::Home(_)) => break,
            Err(why) => {
                none = why;
                break;
            }
        };
        tried.push(addr.clone());
        match run_remote(node, &addr, &conn, work, rtt).await {
            Ok(r) => return Ok(r),
            Err(why) => last_failure = why,
        }
    }
    Err(AgentResponse::Local(if tried.is_empty() {
        none.into()
    } else {
        format!("fallback.{last_failure}")
    }))
}

/// Sends a job to one peer. `Err` is a short reason name, counted by the shim.
async fn run_remote(
    node: &Node,
    addr: &str,
    conn: &quinn::Connection,
    work: Work<'_>,
    rtt: Duration,
) -> Result<PeerResponse, String> {
    let (limit, size) = match work {
        Work::Job(job) => (deadline(node, job, rtt), job.source.len()),
        // Tree jobs are whole modules: only the configured ceiling bounds them.
        Work::Tree(_) => (node.cfg.job_timeout, 0),
    };
    {
        let mut peers = node.peers.lock().unwrap();
        if let Some(p) = peers.get_mut(addr) {
            p.inflight += 1;
            p.sent_since_advert += 1;
        }
    }
    let t0 = Instant::now();
    let r = match work {
        Work::Job(job) => request(conn, &PeerRequest::Job(job.clone()), MAX_FRAME, limit).await,
        Work::Tree(job) => send_tree(node, conn, job, limit).await,
    };
    let took = t0.elapsed();
    let mut peers = node.peers.lock().unwrap();
    let p = peers.get_mut(addr);
    let outcome = match r {
        Ok(res @ (PeerResponse::Done(_) | PeerResponse::TreeDone(_))) => Ok(res),
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
    // A finished job no longer adds to the work its last advert showed.
    p.sent_since_advert = p.sent_since_advert.saturating_sub(1);
    match outcome {
        Ok(res) => {
            p.ok += 1;
            let ms = took.as_secs_f64() * 1000.0;
            // A stale sample says little about now: start over from this one.
            let fresh = p
                .last_job
                .map(|t| t.elapsed() < SAMPLE_TTL)
                .unwrap_or(false);
            p.job_ms = Some(match p.job_ms {
                Some(old) if fresh => ewma(old, ms),
                _ => ms,
            });
            p.last_job = Some(Instant::now());
            drop(peers);
            if let PeerResponse::Done(r) = &res {
                let mib = (size as f64 / (1 << 20) as f64).max(0.05);
                let mut per = node.ms_per_mib.lock().unwrap();
                *per = ewma(*per, r.compile_ms as f64 / mib);
            }
            Ok(res)
        }
        Err((kind, why)) => {
            tracing::warn!(peer = %p.node, %addr, reason = kind, detail = %why, "remote job failed");
            p.failure(format!("{kind}: {why}"));
            // A failing peer looks slower, so placement prefers others for a while.
            p.job_ms = Some(p.job_ms.unwrap_or(DEFAULT_JOB_MS) * 2.0);
            p.last_job = Some(Instant::now());
            Err(kind.to_string())
        }
    }
}
