//! Remote tiers: a team's shared cache on a server it already runs (Redis, S3,
//! WebDAV/HTTP, the GitHub Actions cache), through opendal. Entries are stored framed
//! as on local disk (checksum, zstd) and verified on every read: a damaged or truncated
//! remote entry is an error, never data. A remote that fails is skipped for a while by
//! every compile of this machine ([`breaker`]). Calls run on a small runtime made on
//! first use: only a local miss gets here; the hit path never does.

pub mod breaker;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use opendal::{services, Operator};

use super::{decode_entry, encode_entry, CacheError, CacheKey, EntryKind, PutReport, Tier};
use breaker::Breaker;
pub use spec::{Layout, RemoteSpec, Scheme, SpecError};

/// One remote tier.
pub struct RemoteTier {
    spec: RemoteSpec,
    breaker: Breaker,
    op: OnceLock<Result<Operator, String>>,
    rt: OnceLock<Option<tokio::runtime::Runtime>>,
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

fn operator(spec: &RemoteSpec) -> opendal::Result<Operator> {
    let root = format!("/{}", spec.path);
    let op = match spec.scheme {
        Scheme::Redis | Scheme::Rediss => {
            let mut b = services::Redis::default().endpoint(&spec.endpoint);
            if let Ok(db) = spec.path.parse::<i64>() {
                b = b.db(db);
            }
            Operator::new(b)?
        }
        Scheme::S3 => {
            install_http();
            let mut b = services::S3::default()
                .bucket(&spec.bucket)
                .root(&root)
                .region(spec.region.as_deref().unwrap_or("us-east-1"));
            if let Some(e) = &spec.s3_endpoint {
                b = b.endpoint(e);
            }
            Operator::new(b)?
        }
        Scheme::WebDav | Scheme::Http => {
            install_http();
            // bazel-remote and plain HTTP caches take PUT without MKCOL.
            let b = services::Webdav::default()
                .endpoint(&spec.endpoint)
                .root(&root)
                .disable_create_dir(spec.scheme == Scheme::Http);
            Operator::new(b)?
        }
        Scheme::Gha => {
            install_http();
            Operator::new(services::Ghac::default().root(&root))?
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
        RemoteTier {
            breaker: Breaker::new(&state.join("remote"), &spec.url),
            spec,
            op: OnceLock::new(),
            rt: OnceLock::new(),
        }
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// The object name of an entry on the server.
    fn object(&self, kind: EntryKind, key: &CacheKey) -> String {
        let hex = key.hex();
        let p = &self.spec.key_prefix;
        match (self.spec.layout, kind) {
            (Layout::Bazel, EntryKind::Blob) => format!("{p}cas/{hex}"),
            (Layout::Bazel, EntryKind::Result) => format!("{p}ac/{hex}"),
            // The Bazel layout has one action cache: a manifest key is another key.
            (Layout::Bazel, EntryKind::Manifest) => format!("{p}ac/m{}", &hex[1..]),
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
    fn call<T>(
        &self,
        what: &str,
        f: impl FnOnce(
            Operator,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = opendal::Result<T>> + Send>,
        >,
    ) -> Result<Option<T>, CacheError> {
        if let Some(until) = self.breaker.open_until() {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            return Err(
                self.unavailable(format!("skipped for {}s after a failure", left.as_secs()))
            );
        }
        let op = match self
            .op
            .get_or_init(|| operator(&self.spec).map_err(|e| e.to_string()))
        {
            Ok(op) => op.clone(),
            Err(e) => return Err(self.fail(what, e)),
        };
        let Some(rt) = self.rt.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
        }) else {
            return Err(self.unavailable("cannot start a runtime"));
        };
        let limit: Duration = self.spec.connect_timeout + self.spec.op_timeout;
        match rt.block_on(async { tokio::time::timeout(limit, f(op)).await }) {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(self.fail(what, &e.to_string())),
            Err(_) => Err(self.fail(what, &format!("no answer within {} ms", limit.as_millis()))),
        }
    }

    fn fail(&self, what: &str, why: &str) -> CacheError {
        let detail = format!("{what}: {why}");
        if self.breaker.trip(&detail) {
            tracing::warn!(remote = %self.spec.url, error = %detail, skip_s = breaker::SKIP_FOR.as_secs(), "remote storage failed: skipped for a while");
        }
        self.unavailable(detail)
    }
}

impl Tier for RemoteTier {
    fn name(&self) -> &str {
        &self.spec.url
    }

    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.object(kind, key);
        let p = path.clone();
        let Some(data) = self.call("read", move |op| Box::pin(async move { op.read(&p).await }))?
        else {
            return Ok(None);
        };
        let data = data.to_vec();
        let payload = match kind {
            EntryKind::Blob if blake3::hash(&data).as_bytes() == &key.0 => Ok(data),
            EntryKind::Blob => Err("does not match its key"),
            _ => decode_entry(&data),
        };
        payload.map(Some).map_err(|what| CacheError::Corrupt {
            path: PathBuf::from(format!("{}/{path}", self.spec.url)),
            what,
        })
    }

    fn put(&self, kind: EntryKind, key: &CacheKey, data: &[u8]) -> Result<PutReport, CacheError> {
        if self.spec.read_only {
            return Ok(PutReport::default());
        }
        let body = match kind {
            EntryKind::Blob => data.to_vec(),
            _ => encode_entry(data).map_err(|e| self.unavailable(e.to_string()))?,
        };
        let path = self.object(kind, key);
        self.call("write", move |op| {
            Box::pin(async move { op.write(&path, body).await.map(|_| ()) })
        })?;
        Ok(PutReport::default())
    }

    fn have(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        let path = self.object(kind, key);
        Ok(self
            .call("stat", move |op| {
                Box::pin(async move { op.exists(&path).await })
            })?
            .unwrap_or(false))
    }

    fn remove(&self, kind: EntryKind, key: &CacheKey) -> Result<(), CacheError> {
        if self.spec.read_only {
            return Ok(());
        }
        let path = self.object(kind, key);
        self.call("delete", move |op| {
            Box::pin(async move { op.delete(&path).await })
        })?;
        Ok(())
    }
}
