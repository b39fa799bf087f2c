//! The agent role: answers its own machine's shims on a Unix socket, one session per
//! connection, each in its user's scope of the farm's cache. It dispatches: lookups
//! and publications to the keys' homes (`crate::farm_cache`), misses to placement
//! (`crate::placement`: a peer or home, deadlines, one retry elsewhere), warm
//! compiles to this machine's JVMs. It never makes a shim wait past a job's deadline.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use farm::protocol::{self, AgentRequest, AgentResponse, Job, JobResult, TreeJob, MAX_FRAME};
use tokio::net::{UnixListener, UnixStream};

use crate::farm_cache::{lookup, publish};
use crate::node::Node;
use crate::placement::{self, home_load, place, release_home, reserve_home, Place};
use crate::remote_pool::RemotePool;

/// How long a shim may take to send its request after connecting. The preprocessor
/// runs between connect and request, so this is generous.
const SHIM_REQUEST_WAIT: Duration = Duration::from_secs(600);
/// Shim connections served at once, in all and per user: past these a connection is
/// closed at once (that shim compiles at home), so one local user cannot take the agent
/// from the others or grow farmd without bound.
const MAX_SESSIONS: usize = 1024;
const MAX_SESSIONS_PER_USER: usize = 256;

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
        // A name identifies a person across the cluster; a bare uid does not (uid 1000
        // is someone else on every machine, and in a container every host user is
        // nameless): a user without a name gets a scope of this node only.
        let user = match uid {
            Some(uid) => user_name(uid).unwrap_or_else(|| format!("uid:{uid}@{}", node.name)),
            None => format!("unknown@{}", node.name),
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
async fn warm(
    node: &Node,
    peer_uid: Option<u32>,
    family: &str,
    home: &str,
    args: &[String],
) -> AgentResponse {
    use std::os::unix::fs::MetadataExt;
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if peer_uid.is_none() || peer_uid != own_uid {
        return AgentResponse::Local("other_user".into());
    }
    // The installation must be one of an allow-listed compiler of the named family,
    // and that family must have a warm compiler.
    let home = std::path::PathBuf::from(home);
    let family = farm::lang::family_by_name(family).filter(|f| f.warm().is_some());
    let allowed = family.filter(|f| {
        node.compilers.iter().any(|c| {
            let same = farm::lang::family_for(&c.name).is_some_and(|g| g.name() == f.name());
            let canonical = std::fs::canonicalize(&c.path);
            same && canonical.is_ok_and(|p| f.warm().is_some_and(|w| w.installation_of(&p) == home))
        })
    });
    let Some(family) = allowed else {
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
    // Warm clients of the remote tiers shims asked about, for every session.
    let remotes = Arc::new(RemotePool::default());
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
        let remotes = remotes.clone();
        tokio::spawn(async move {
            shim_session(node, remotes, uid, stream).await;
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

/// One shim connection (of user `uid`). A home slot the agent granted is held until
/// the shim says its compile is done or goes away.
async fn shim_session(node: Arc<Node>, remotes: Arc<RemotePool>, uid: u32, mut stream: UnixStream) {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let scope = Scope::of(&node, peer_uid);
    // Who asks, for the audit log.
    let submitter = match peer_uid {
        Some(uid) => format!("uid:{uid}({})", user_name(uid).unwrap_or_default()),
        None => "uid:?".to_string(),
    };
    let mut holds_home = false;
    // Home's load when this shim's compile was sent home.
    let mut home_factor = 1.0;
    // The family of the compiler this shim asked to place (for home compile times).
    let mut family = "";
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
            AgentRequest::Place { compiler } => {
                family = farm::lang::family_for(&compiler.name).map_or("", |f| f.name());
                match place(&node, &compiler, &[], true, true) {
                    // The REAPI service takes same-path jobs only.
                    Ok(Place::Peer(c)) if c.service => {
                        crate::metrics::get().count_placement("reapi", "");
                        AgentResponse::ShipAs(farm::protocol::JobShape::Paths)
                    }
                    Ok(Place::Peer(..)) => {
                        crate::metrics::get().count_placement("peer", "");
                        AgentResponse::ShipAs(node.shapes.choose(&compiler.identity))
                    }
                    Ok(Place::Home(factor)) => {
                        crate::metrics::get().count_placement("home", "placed_home");
                        home_factor = factor;
                        holds_home = reserve_home(&node, holds_home);
                        AgentResponse::Local("placed_home".into())
                    }
                    Err(why) => {
                        crate::metrics::get().count_placement("home", why);
                        home_factor = home_load(&node);
                        holds_home = reserve_home(&node, holds_home);
                        AgentResponse::Local(why.into())
                    }
                }
            }
            AgentRequest::Compile(job) => {
                let r = compile(&node, &job, &submitter).await;
                if matches!(&r, AgentResponse::Local(_)) {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                }
                r
            }
            AgentRequest::Publish { items, local_ms } => {
                observe_home(family, local_ms);
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
                observe_home(family, local_ms);
                if holds_home {
                    release_home(&node, local_ms, home_factor);
                    holds_home = false;
                }
                AgentResponse::Published
            }
            AgentRequest::Warm { family, home, args } => {
                warm(&node, peer_uid, &family, &home, &args).await
            }
            AgentRequest::MissingBlobs(digests) => {
                AgentResponse::MissingBlobs(crate::store_role::missing_blobs(&node, &digests))
            }
            AgentRequest::PutBlobs(blobs) => match node.blobs.put(&blobs) {
                Ok(()) => AgentResponse::Published,
                Err(why) => {
                    tracing::warn!(error = %why, "blobs from a shim refused");
                    AgentResponse::Local("bad_blob".into())
                }
            },
            AgentRequest::CompileTree(job) => {
                let r = compile_tree(&node, &job, &submitter).await;
                if matches!(&r, AgentResponse::Local(_)) {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                }
                r
            }
            AgentRequest::CompilePaths(job) => {
                let r = match placement::run_paths(&node, &job, &submitter).await {
                    Ok(r) => AgentResponse::TreeCompiled(r),
                    Err(why) => AgentResponse::Local(why),
                };
                if matches!(&r, AgentResponse::Local(_)) {
                    home_factor = home_load(&node);
                    holds_home = reserve_home(&node, holds_home);
                }
                r
            }
            AgentRequest::Measured {
                compiler,
                shape,
                ms,
            } => {
                node.shapes.record(&compiler, shape, ms);
                AgentResponse::Published
            }
            AgentRequest::RemoteGet { spec, kind, key } => remotes.get(uid, *spec, kind, key).await,
            AgentRequest::RemoteHave { spec, kind, key } => {
                remotes.have(uid, *spec, kind, key).await
            }
            AgentRequest::RemotePut {
                spec,
                kind,
                key,
                body,
            } => remotes.put(uid, *spec, kind, key, body),
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

/// A miss this machine's shim compiled itself, as it reports it.
fn observe_home(family: &str, local_ms: u64) {
    if local_ms > 0 {
        crate::metrics::get().observe_compile(
            family,
            "home",
            std::time::Duration::from_millis(local_ms),
        );
    }
}

/// A tree job on a peer, one retry on another; `Local` (home) when none could.
async fn compile_tree(node: &Node, job: &TreeJob, submitter: &str) -> AgentResponse {
    // Workers check this too; a shim never sends such a role.
    if !job
        .outputs
        .iter()
        .all(|(r, _)| farm::lang::valid_output_role(r))
    {
        return AgentResponse::Local("bad_request".into());
    }
    match placement::run_tree(node, job, submitter).await {
        Ok(r) => AgentResponse::TreeCompiled(r),
        Err(why) => AgentResponse::Local(why),
    }
}

/// A job on a peer, one retry on another; `Local` (home) when none could.
async fn compile(node: &Node, job: &Job, submitter: &str) -> AgentResponse {
    match placement::run_job(node, job, submitter).await {
        Ok(r) => AgentResponse::Compiled(r),
        Err(why) => AgentResponse::Local(why),
    }
}
