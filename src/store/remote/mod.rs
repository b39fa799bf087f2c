//! Remote tiers: a team's shared cache on a server it already runs (Redis, S3,
//! WebDAV/HTTP, the GitHub Actions cache), through opendal. Entries are stored framed
//! as on local disk (checksum, zstd) and verified on every read: a damaged or truncated
//! remote entry is an error, never data. A remote that fails is skipped for a while by
//! every compile of this machine ([`breaker`]). Calls run on a small runtime made on
//! first use: only a local miss gets here; the hit path never does.

pub mod breaker;
pub mod reapi_tier;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use opendal::{services, Operator};

use super::{decode_entry, encode_entry, CacheError, CacheKey, EntryKind, PutReport, Tier};
use breaker::{Breaker, Gate};
pub use spec::{Layout, RemoteSpec, S3Keys, Scheme, SpecError};

/// One remote tier.
pub struct RemoteTier {
    spec: RemoteSpec,
    /// Skips every call after a failed read (the remote is down or hung).
    breaker: Breaker,
    /// Skips writes only, after a failed write (full, or not writable for us).
    write_breaker: Breaker,
    op: OnceLock<Result<Operator, String>>,
    /// A REAPI tier's client (`reapi://`, `grpcs://`), made on first use.
    reapi: OnceLock<Result<std::sync::Arc<crate::reapi::Client>, String>>,
    /// A Redis server's port answered a plain connect (see [`RemoteTier::reachable`]).
    reached: std::sync::atomic::AtomicBool,
    /// This tier is the machine's probe of the remote after a skip.
    probing: std::sync::atomic::AtomicBool,
}

/// The one runtime every remote tier of this process runs on (made on first use,
/// never dropped: exiting must not wait for a resolver thread a timed-out call left
/// behind, and one HTTP client's pooled connections must live on one runtime).
fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .ok()
    })
    .as_ref()
}

/// Remote entries carry their kind and key before the framed payload, so an entry
/// found under another name (a server's mix-up, a copy, a hostile writer's swap) is
/// refused rather than restored.
const REMOTE_MAGIC: &[u8; 8] = b"FARMRMT1";

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Result => b'r',
        EntryKind::Manifest => b'm',
        EntryKind::Blob => b'b',
    }
}

/// An entry as a remote stores it: magic, kind, key, then the payload framed as on
/// disk (checksum, zstd).
pub fn remote_frame(kind: EntryKind, key: &CacheKey, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let body = encode_entry(payload)?;
    let mut out = Vec::with_capacity(8 + 1 + 32 + body.len());
    out.extend_from_slice(REMOTE_MAGIC);
    out.push(kind_byte(kind));
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The payload of a remote entry, when it is this kind's entry for this key and
/// intact.
pub fn remote_unframe(
    kind: EntryKind,
    key: &CacheKey,
    data: &[u8],
) -> Result<Vec<u8>, &'static str> {
    if data.len() < 41 || &data[..8] != REMOTE_MAGIC {
        return Err("bad header");
    }
    if data[8] != kind_byte(kind) || data[9..41] != key.0 {
        return Err("another entry's (kind or key differs)");
    }
    decode_entry(&data[41..])
}

/// Installs what opendal's HTTP services need once per process: rustls on `ring`, and
/// reqwest as opendal's transport.
fn install_http() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

/// The region of an S3 tier without `|region=`: the usual AWS variables, else
/// us-east-1.
pub fn default_region() -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".into())
}

fn operator(spec: &RemoteSpec) -> opendal::Result<Operator> {
    let root = format!("/{}", spec.path);
    let op = match spec.scheme {
        Scheme::Redis | Scheme::Rediss => {
            let mut b = services::Redis::default().endpoint(&spec.endpoint);
            if let Ok(db) = spec.path.parse::<i64>() {
                b = b.db(db);
            }
            if let Some(u) = &spec.username {
                b = b.username(u);
            }
            if let Some(p) = &spec.password {
                b = b.password(p);
            }
            Operator::new(b)?
        }
        Scheme::S3 => {
            install_http();
            let mut b = services::S3::default()
                .bucket(&spec.bucket)
                .root(&root)
                .region(&spec.region.clone().unwrap_or_else(default_region));
            if let Some(e) = &spec.s3_endpoint {
                b = b.endpoint(e);
            }
            if let Some(k) = &spec.s3_keys {
                // The keys a shim sent its agent, and nothing of the agent's own
                // environment, profile files or instance role.
                b = b
                    .disable_config_load()
                    .disable_ec2_metadata()
                    .access_key_id(&k.access_key_id)
                    .secret_access_key(&k.secret_access_key);
                if let Some(t) = &k.session_token {
                    b = b.session_token(t);
                }
            }
            Operator::new(b)?
        }
        Scheme::WebDav | Scheme::Http => {
            install_http();
            // bazel-remote and plain HTTP caches take PUT without MKCOL.
            let mut b = services::Webdav::default()
                .endpoint(&spec.endpoint)
                .root(&root)
                .disable_create_dir(spec.scheme == Scheme::Http);
            if let Some(u) = &spec.username {
                b = b.username(u);
            }
            if let Some(p) = &spec.password {
                b = b.password(p);
            }
            Operator::new(b)?
        }
        Scheme::Gha => {
            install_http();
            Operator::new(services::Ghac::default().root(&root))?
        }
        Scheme::Reapi => {
            return Err(opendal::Error::new(
                opendal::ErrorKind::Unsupported,
                "a REAPI tier has no opendal operator",
            ))
        }
    };
    Ok(op.layer(
        opendal::layers::TimeoutLayer::new()
            .with_timeout(spec.op_timeout)
            .with_io_timeout(spec.op_timeout),
    ))
}

impl RemoteTier {
    /// A remote tier; `state` is where its breaker lives (the cache directory).
    pub fn new(spec: RemoteSpec, state: &Path) -> RemoteTier {
        let dir = state.join("remote");
        RemoteTier {
            breaker: Breaker::new(&dir, &spec.url),
            write_breaker: Breaker::new(&dir, &format!("{} (writes)", spec.url)),
            spec,
            op: OnceLock::new(),
            reapi: OnceLock::new(),
            reached: std::sync::atomic::AtomicBool::new(false),
            probing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A remote tier whose breakers live in this process only (farmd's agent, which
    /// keeps one per remote and credentials).
    pub fn in_process(spec: RemoteSpec) -> RemoteTier {
        RemoteTier {
            breaker: Breaker::in_memory(),
            write_breaker: Breaker::in_memory(),
            spec,
            op: OnceLock::new(),
            reapi: OnceLock::new(),
            reached: std::sync::atomic::AtomicBool::new(false),
            probing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// `Err` while this remote (or, for a write, its writes) is being skipped after a
    /// failure: one `stat`. When a skip has just ended, one compile of the machine
    /// tries the remote again (this tier, for the rest of its calls) while the
    /// others go on skipping it.
    pub fn check_skip(&self, write: bool) -> Result<(), CacheError> {
        use std::sync::atomic::Ordering;
        if self.probing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let breakers: &[&Breaker] = if write {
            &[&self.breaker, &self.write_breaker]
        } else {
            &[&self.breaker]
        };
        for b in breakers {
            match b.gate() {
                Gate::Closed => {}
                Gate::Probe => self.probing.store(true, Ordering::Relaxed),
                Gate::Open(until) => {
                    let left = until
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    return Err(CacheError::Skipped {
                        tier: self.spec.url.clone(),
                        detail: format!("skipped for {}s after a failure", left.as_secs()),
                    });
                }
            }
        }
        Ok(())
    }

    /// A call answered: when this tier was trying the remote again after a skip,
    /// the skip is over for every compile of the machine.
    pub fn record_success(&self) {
        use std::sync::atomic::Ordering;
        if self.probing.swap(false, Ordering::Relaxed) {
            tracing::info!(remote = %self.spec.url, "remote storage answers again");
            self.breaker.reset();
            self.write_breaker.reset();
        }
    }

    /// How long one call may take in all (connect and operation).
    pub fn call_limit(&self) -> Duration {
        self.spec.connect_timeout + self.spec.op_timeout
    }

    /// The object as the server stores it, unchecked (`None`: not there).
    pub async fn read_stored(
        &self,
        kind: EntryKind,
        key: &CacheKey,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        if self.spec.scheme == Scheme::Reapi {
            return self.reapi_read(kind, key).await;
        }
        let p = self.object(kind, key);
        let data = self
            .call_async("read", false, move |op| {
                Box::pin(async move { op.read(&p).await })
            })
            .await?;
        Ok(data.map(|d| d.to_vec()))
    }

    /// The entry in an object as the server stored it, when it is this kind's entry
    /// for this key and intact; else `Corrupt`, naming the object.
    pub fn verify_stored(
        &self,
        kind: EntryKind,
        key: &CacheKey,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, CacheError> {
        let payload = match kind {
            EntryKind::Blob if blake3::hash(&data).as_bytes() == &key.0 => Ok(data),
            EntryKind::Blob => Err("does not match its key"),
            _ => remote_unframe(kind, key, &data),
        };
        payload.map_err(|what| CacheError::Corrupt {
            path: PathBuf::from(format!("{}/{}", self.spec.url, self.object(kind, key))),
            what,
        })
    }

    /// The object the server stores for an entry.
    pub fn stored_form(
        &self,
        kind: EntryKind,
        key: &CacheKey,
        data: &[u8],
    ) -> Result<Vec<u8>, CacheError> {
        match kind {
            EntryKind::Blob => Ok(data.to_vec()),
            _ => remote_frame(kind, key, data).map_err(|e| self.unavailable(e.to_string())),
        }
    }

    /// Writes an object in its stored form ([`Self::stored_form`]).
    pub async fn write_stored(
        &self,
        kind: EntryKind,
        key: &CacheKey,
        body: Vec<u8>,
    ) -> Result<(), CacheError> {
        if self.spec.scheme == Scheme::Reapi {
            return self.reapi_write(kind, key, body).await;
        }
        let path = self.object(kind, key);
        self.call_async("write", true, move |op| {
            Box::pin(async move { op.write(&path, body).await.map(|_| ()) })
        })
        .await?;
        Ok(())
    }

    /// Whether the server holds the entry's object.
    pub async fn exists(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        if self.spec.scheme == Scheme::Reapi {
            return self.reapi_exists(kind, key).await;
        }
        let path = self.object(kind, key);
        Ok(self
            .call_async("stat", false, move |op| {
                Box::pin(async move { op.exists(&path).await })
            })
            .await?
            .unwrap_or(false))
    }

    /// Runs `f` on this process's remote runtime.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        match runtime() {
            Some(rt) => rt.block_on(f),
            None => Err(self.unavailable("cannot start a runtime")),
        }
    }

    /// `Some(until)` while this machine skips the remote after a failure (reads and
    /// writes), else `Some` of the write skip when only writes are skipped.
    pub fn skipped_until(&self) -> Option<(std::time::SystemTime, &'static str)> {
        self.breaker
            .open_until()
            .map(|t| (t, "all calls"))
            .or_else(|| self.write_breaker.open_until().map(|t| (t, "writes")))
    }

    /// Tries the remote now, whatever an earlier failure said: writes a probe entry
    /// (unless read-only), reads it back, removes it. Each step's time, or the first
    /// failure, named.
    pub fn ping(&self) -> Result<Vec<(&'static str, Duration)>, String> {
        self.breaker.reset();
        self.write_breaker.reset();
        let probe = format!(
            "farm ping {} {:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let key = CacheKey(*blake3::hash(probe.as_bytes()).as_bytes());
        let mut steps = Vec::new();
        let t = std::time::Instant::now();
        if self.writable() {
            self.put(EntryKind::Result, &key, probe.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            steps.push(("write", t.elapsed()));
        }
        let t = std::time::Instant::now();
        let got = self
            .get(EntryKind::Result, &key)
            .map_err(|e| format!("read: {e}"))?;
        steps.push(("read", t.elapsed()));
        if self.writable() {
            if got.as_deref() != Some(probe.as_bytes()) {
                return Err("read: the probe just written did not come back".into());
            }
            let t = std::time::Instant::now();
            self.remove(EntryKind::Result, &key)
                .map_err(|e| format!("delete: {e}"))?;
            steps.push(("delete", t.elapsed()));
        }
        Ok(steps)
    }

    /// The object name of an entry on the server.
    fn object(&self, kind: EntryKind, key: &CacheKey) -> String {
        let hex = key.hex();
        if self.spec.scheme == Scheme::Reapi {
            // The entry's synthetic Action (reapi_tier.rs), as its Command names it.
            return format!("farm-entry/{}/{hex}", reapi_tier::kind_name(kind));
        }
        let p = &self.spec.key_prefix;
        match (self.spec.layout, kind) {
            (Layout::Bazel, EntryKind::Blob) => format!("{p}cas/{hex}"),
            (Layout::Bazel, EntryKind::Result) => format!("{p}ac/{hex}"),
            // The Bazel layout has one action cache (64 hex digits a name): a
            // manifest goes under a key derived from its own.
            (Layout::Bazel, EntryKind::Manifest) => {
                let mut h =
                    blake3::Hasher::new_derive_key("farm manifest in a Bazel action cache v1");
                h.update(&key.0);
                format!("{p}ac/{}", crate::fsutil::hex(h.finalize().as_bytes()))
            }
            (Layout::Farm, _) => {
                let k = match kind {
                    EntryKind::Result => "r",
                    EntryKind::Manifest => "m",
                    EntryKind::Blob => "b",
                };
                format!("{p}farm/{k}/{}/{hex}", &hex[..2])
            }
        }
    }

    fn unavailable(&self, detail: impl Into<String>) -> CacheError {
        CacheError::Unavailable {
            tier: self.spec.url.clone(),
            detail: detail.into(),
        }
    }

    /// Runs one operation on the server with the tier's deadline; a failure trips the
    /// breaker (and is logged by the call that tripped it).
    async fn call_async<T>(
        &self,
        what: &str,
        write: bool,
        f: impl FnOnce(
            Operator,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = opendal::Result<T>> + Send>,
        >,
    ) -> Result<Option<T>, CacheError> {
        self.check_skip(write)?;
        if let Err(why) = self.reachable().await {
            return Err(self.record_failure(what, write, &why));
        }
        let op = match self
            .op
            .get_or_init(|| operator(&self.spec).map_err(|e| e.to_string()))
        {
            Ok(op) => op.clone(),
            Err(e) => return Err(self.record_failure(what, write, e)),
        };
        let limit = self.call_limit();
        match tokio::time::timeout(limit, f(op)).await {
            Ok(Ok(v)) => {
                self.record_success();
                Ok(Some(v))
            }
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => {
                self.record_success();
                Ok(None)
            }
            Ok(Err(e)) => Err(self.record_failure(what, write, &e.to_string())),
            Err(_) => Err(self.record_failure(
                what,
                write,
                &format!("no answer within {} ms", limit.as_millis()),
            )),
        }
    }

    /// Whether a Redis server's port takes a connection at all. Its client retries a
    /// refused connection until the operation's deadline (2 s by default): a plain
    /// connect first fails at once instead. Once per tier, and again after a failure.
    async fn reachable(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        let authority = match self.spec.scheme {
            Scheme::Redis | Scheme::Rediss => self
                .spec
                .endpoint
                .split_once("://")
                .map(|(_, a)| a)
                .unwrap_or(&self.spec.endpoint),
            _ => return Ok(()),
        };
        if self.reached.load(Ordering::Relaxed) {
            return Ok(());
        }
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:6379")
        };
        match tokio::time::timeout(self.call_limit(), tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => {
                self.reached.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!(
                "connect {addr}: no answer within {} ms",
                self.call_limit().as_millis()
            )),
        }
    }

    /// Records a failure: a failed write skips writes only (a full or read-only
    /// server still answers reads), anything else the whole remote. (Also for a
    /// failure farmd's agent met on this remote for the shim.)
    pub fn record_failure(&self, what: &str, write: bool, why: &str) -> CacheError {
        self.reached
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.probing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let detail = format!("{what}: {why}");
        let breaker = if write {
            &self.write_breaker
        } else {
            &self.breaker
        };
        match breaker.trip(&detail) {
            Ok(true) => {
                tracing::warn!(remote = %self.spec.url, error = %detail, skip_s = breaker::SKIP_FOR.as_secs(), "remote storage failed: skipped for a while")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(remote = %self.spec.url, error = %detail, breaker = %e, "remote storage failed, and the skip cannot be recorded: every compile will try it")
            }
        }
        self.unavailable(detail)
    }
}

impl Tier for RemoteTier {
    fn name(&self) -> &str {
        &self.spec.url
    }

    /// One compile's calls may take as long as one call may: a remote that answers,
    /// but slowly, costs a compile at most about twice that, and then the machine
    /// skips it a while.
    fn budget(&self) -> Option<Duration> {
        Some(self.spec.op_timeout)
    }

    fn over_budget(&self, spent: Duration) -> CacheError {
        self.record_failure(
            "calls",
            false,
            &format!("slow: {} ms in one compile", spent.as_millis()),
        )
    }

    fn writable(&self) -> bool {
        !self.spec.read_only
    }

    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        match self.block_on(self.read_stored(kind, key))? {
            Some(data) => self.verify_stored(kind, key, data).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, kind: EntryKind, key: &CacheKey, data: &[u8]) -> Result<PutReport, CacheError> {
        if self.spec.read_only {
            return Ok(PutReport::default());
        }
        let body = self.stored_form(kind, key, data)?;
        self.block_on(self.write_stored(kind, key, body))?;
        Ok(PutReport::default())
    }

    fn have(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        self.block_on(self.exists(kind, key))
    }

    fn remove(&self, kind: EntryKind, key: &CacheKey) -> Result<(), CacheError> {
        if self.spec.read_only {
            return Ok(());
        }
        if self.spec.scheme == Scheme::Reapi {
            return self.block_on(self.reapi_remove(kind, key));
        }
        let path = self.object(kind, key);
        self.block_on(self.call_async("delete", true, move |op| {
            Box::pin(async move { op.delete(&path).await })
        }))?;
        Ok(())
    }
}
