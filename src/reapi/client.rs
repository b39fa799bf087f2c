//! The async client: one HTTP/2 channel to one server, a deadline on every call and
//! one retry when the server says UNAVAILABLE.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bazel_remote_apis::google::bytestream::{
    byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest,
};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use super::proto::{
    action_cache_client::ActionCacheClient, batch_update_blobs_request,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient, digest_function,
    execution_client::ExecutionClient, ActionResult, BatchReadBlobsRequest,
    BatchUpdateBlobsRequest, Digest, ExecuteRequest, ExecuteResponse, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
    WaitExecutionRequest,
};
use super::{matches, ReapiConfig, ReapiError};
use bazel_remote_apis::google::longrunning::operation;
use prost::Message as _;

/// What the server offers, from GetCapabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The most bytes one BatchUpdateBlobs/BatchReadBlobs may carry (what the server
    /// says, capped at gRPC's usual 4 MiB message; blobs above go through ByteStream).
    pub max_batch_bytes: u64,
    /// The server runs Actions (Execute).
    pub exec_enabled: bool,
    /// Clients may write the Action Cache (UpdateActionResult).
    pub ac_update_enabled: bool,
}

/// gRPC's default message limit: a batch (and a ByteStream chunk) stays below it.
const GRPC_MESSAGE: u64 = 4 * 1024 * 1024;
/// Room left in a batch for the request's framing (digests, field tags).
const BATCH_SLACK: u64 = 64 * 1024;
/// The size of one ByteStream WriteRequest's data.
const CHUNK: usize = 1024 * 1024;

/// A client of one REAPI server. Cheap to share; its channel connects on first use.
pub struct Client {
    cfg: ReapiConfig,
    server: String,
    channel: Channel,
    auth: Option<(AsciiMetadataKey, AsciiMetadataValue)>,
    caps: OnceLock<Capabilities>,
}

fn sha256() -> i32 {
    digest_function::Value::Sha256 as i32
}

impl Client {
    /// A client whose channel connects on the first call. Must run inside a tokio
    /// runtime (the channel's worker is spawned on it). Reads the credential now.
    pub fn new(cfg: &ReapiConfig) -> Result<Client, ReapiError> {
        let server = cfg.server();
        let setup = |detail: String| ReapiError::Setup {
            server: server.clone(),
            detail,
        };
        let scheme = if cfg.tls { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", cfg.authority))
            .map_err(|e| setup(format!("address: {e}")))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true);
        if cfg.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let host = cfg
                .authority
                .rsplit_once(':')
                .map_or(cfg.authority.as_str(), |(h, _)| h)
                .trim_matches(['[', ']']);
            let mut tls = ClientTlsConfig::new()
                .with_webpki_roots()
                .domain_name(host.to_string());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| setup(format!("CA file {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).map_err(|e| setup(format!("TLS: {e}")))?;
        }
        let auth = match &cfg.auth {
            None => None,
            Some(a) => {
                let (h, v) = a.resolve().map_err(setup)?;
                let key = AsciiMetadataKey::from_bytes(h.as_bytes())
                    .map_err(|_| setup(format!("header {h:?} is not a valid header name")))?;
                let mut value = AsciiMetadataValue::try_from(v.as_str()).map_err(|_| {
                    setup(format!("the value of header {h:?} is not printable ASCII"))
                })?;
                value.set_sensitive(true);
                Some((key, value))
            }
        };
        Ok(Client {
            cfg: cfg.clone(),
            channel: ep.connect_lazy(),
            server,
            auth,
            caps: OnceLock::new(),
        })
    }

    /// The server as messages name it.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn instance(&self) -> &str {
        &self.cfg.instance
    }

    /// How long one try of a call may take: connecting (on first use) and answering.
    fn limit(&self) -> Duration {
        self.cfg.connect_timeout + self.cfg.call_timeout
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        self.authorize(&mut r, self.cfg.call_timeout);
        r
    }

    fn call_error(&self, call: &'static str, s: tonic::Status) -> ReapiError {
        // A transport failure says only "transport error": its causes name what
        // failed (refused, a certificate not trusted).
        let mut detail = format!("{:?}: {}", s.code(), s.message());
        let mut cause = std::error::Error::source(&s);
        while let Some(c) = cause {
            let text = c.to_string();
            if !detail.contains(&text) {
                detail.push_str(&format!(": {text}"));
            }
            cause = c.source();
        }
        ReapiError::Call {
            server: self.server.clone(),
            call,
            detail,
            code: Some(s.code()),
        }
    }

    /// Runs one call with its deadline; once more when the server answers UNAVAILABLE
    /// (a restart, a proxy's hiccup). `NotFound` comes back as `Ok(None)`.
    async fn call<T, Fut>(
        &self,
        call: &'static str,
        mut f: impl FnMut() -> Fut,
    ) -> Result<Option<T>, ReapiError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut retried = false;
        loop {
            match tokio::time::timeout(self.limit(), f()).await {
                Ok(Ok(r)) => return Ok(Some(r.into_inner())),
                Ok(Err(s)) if s.code() == Code::NotFound => return Ok(None),
                Ok(Err(s)) if s.code() == Code::Unavailable && !retried => retried = true,
                Ok(Err(s)) => return Err(self.call_error(call, s)),
                Err(_) => {
                    return Err(ReapiError::Call {
                        server: self.server.clone(),
                        call,
                        detail: format!("no answer within {} ms", self.limit().as_millis()),
                        code: None,
                    })
                }
            }
        }
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(2 * GRPC_MESSAGE as usize)
    }

    /// The server's capabilities (asked once per client). Refuses a server that
    /// does not offer SHA-256.
    pub async fn capabilities(&self) -> Result<Capabilities, ReapiError> {
        if let Some(c) = self.caps.get() {
            return Ok(*c);
        }
        let req = GetCapabilitiesRequest {
            instance_name: self.cfg.instance.clone(),
        };
        let caps = self
            .call("GetCapabilities", || {
                let mut c = CapabilitiesClient::new(self.channel.clone());
                let r = self.request(req.clone());
                async move { c.get_capabilities(r).await }
            })
            .await?
            .unwrap_or_default();
        let cache = caps.cache_capabilities.unwrap_or_default();
        if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256()) {
            return Err(ReapiError::Setup {
                server: self.server.clone(),
                detail: "the server does not offer SHA-256 digests".into(),
            });
        }
        let max = u64::try_from(cache.max_batch_total_size_bytes).unwrap_or(0);
        let c = Capabilities {
            max_batch_bytes: if max == 0 {
                GRPC_MESSAGE
            } else {
                max.min(GRPC_MESSAGE)
            },
            exec_enabled: caps.execution_capabilities.is_some_and(|e| e.exec_enabled),
            ac_update_enabled: cache
                .action_cache_update_capabilities
                .is_some_and(|u| u.update_enabled),
        };
        let _ = self.caps.set(c);
        Ok(c)
    }

    /// The digests among `digests` the server does not hold.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ReapiError> {
        let req = FindMissingBlobsRequest {
            instance_name: self.cfg.instance.clone(),
            blob_digests: digests.to_vec(),
            digest_function: sha256(),
        };
        Ok(self
            .call("FindMissingBlobs", || {
                let mut c = self.cas();
                let r = self.request(req.clone());
                async move { c.find_missing_blobs(r).await }
            })
            .await?
            .map(|r| r.missing_blob_digests)
            .unwrap_or_default())
    }

    /// Whether a blob goes through ByteStream rather than a batch.
    fn streamed(&self, caps: &Capabilities, size: i64) -> bool {
        size as u64 + BATCH_SLACK > caps.max_batch_bytes
    }

    /// Stores blobs the server does not hold yet (FindMissingBlobs first): small ones
    /// in batches within the server's limit, large ones through ByteStream.
    pub async fn upload(&self, blobs: &[(Digest, &[u8])]) -> Result<(), ReapiError> {
        let caps = self.capabilities().await?;
        let mut wanted: Vec<Digest> = blobs
            .iter()
            .filter(|(d, _)| d.size_bytes > 0)
            .map(|(d, _)| d.clone())
            .collect();
        wanted.sort_by(|a, b| a.hash.cmp(&b.hash));
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let missing = self.find_missing(&wanted).await?;
        let mut batch: Vec<batch_update_blobs_request::Request> = Vec::new();
        let mut batch_bytes = 0u64;
        for d in &missing {
            let Some((_, data)) = blobs.iter().find(|(b, _)| b.hash == d.hash) else {
                continue;
            };
            if self.streamed(&caps, d.size_bytes) {
                self.write_stream(d, data).await?;
                continue;
            }
            let size = data.len() as u64 + 128;
            if batch_bytes + size + BATCH_SLACK > caps.max_batch_bytes && !batch.is_empty() {
                self.batch_update(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data: data.to_vec(),
                compressor: 0,
            });
        }
        if !batch.is_empty() {
            self.batch_update(batch).await?;
        }
        Ok(())
    }

    async fn batch_update(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<(), ReapiError> {
        let req = BatchUpdateBlobsRequest {
            instance_name: self.cfg.instance.clone(),
            requests,
            digest_function: sha256(),
        };
        let resp = self
            .call("BatchUpdateBlobs", || {
                let mut c = self.cas();
                let r = self.request(req.clone());
                async move { c.batch_update_blobs(r).await }
            })
            .await?
            .unwrap_or_default();
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let d = r.digest.unwrap_or_default();
                return Err(ReapiError::Call {
                    server: self.server.clone(),
                    call: "BatchUpdateBlobs",
                    detail: format!(
                        "blob {}/{}: code {}: {}",
                        d.hash, d.size_bytes, s.code, s.message
                    ),
                    code: Some(Code::from_i32(s.code)),
                });
            }
        }
        Ok(())
    }

    /// Writes one blob through ByteStream, in chunks.
    pub async fn write_stream(&self, d: &Digest, data: &[u8]) -> Result<(), ReapiError> {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.cfg.resource_prefix(),
            upload_id(),
            d.hash,
            d.size_bytes
        );
        let mut msgs = Vec::with_capacity(data.len() / CHUNK + 1);
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK).min(data.len());
            msgs.push(WriteRequest {
                resource_name: if offset == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: offset as i64,
                finish_write: end == data.len(),
                data: data[offset..end].to_vec(),
            });
            offset = end;
            if offset == data.len() {
                break;
            }
        }
        let resp = self
            .call("ByteStream.Write", || {
                let mut c = ByteStreamClient::new(self.channel.clone());
                let r = self.request(tonic::codegen::tokio_stream::iter(msgs.clone()));
                async move { c.write(r).await }
            })
            .await?
            .unwrap_or_default();
        if resp.committed_size != d.size_bytes {
            return Err(ReapiError::Call {
                server: self.server.clone(),
                call: "ByteStream.Write",
                detail: format!(
                    "blob {}/{}: the server committed {} bytes",
                    d.hash, d.size_bytes, resp.committed_size
                ),
                code: None,
            });
        }
        Ok(())
    }

    /// One blob, checked against its digest; `None` when the server does not hold it.
    pub async fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReapiError> {
        if d.size_bytes == 0 {
            return Ok(Some(Vec::new()));
        }
        // A client that has not asked for capabilities yet (a compile's one read)
        // reads through ByteStream, which takes any size, rather than ask first.
        let batched = self
            .caps
            .get()
            .is_some_and(|c| !self.streamed(c, d.size_bytes));
        let data = if !batched {
            self.read_stream(d).await?
        } else {
            let req = BatchReadBlobsRequest {
                instance_name: self.cfg.instance.clone(),
                digests: vec![d.clone()],
                acceptable_compressors: Vec::new(),
                digest_function: sha256(),
            };
            let resp = self
                .call("BatchReadBlobs", || {
                    let mut c = self.cas();
                    let r = self.request(req.clone());
                    async move { c.batch_read_blobs(r).await }
                })
                .await?
                .unwrap_or_default();
            match resp.responses.into_iter().next() {
                Some(r) => match r.status.map(|s| (s.code, s.message)) {
                    None | Some((0, _)) => Some(r.data),
                    Some((5, _)) => None,
                    Some((code, msg)) => {
                        return Err(ReapiError::Call {
                            server: self.server.clone(),
                            call: "BatchReadBlobs",
                            detail: format!("blob {}/{}: code {code}: {msg}", d.hash, d.size_bytes),
                            code: Some(Code::from_i32(code)),
                        })
                    }
                },
                None => None,
            }
        };
        match data {
            Some(data) if !matches(d, &data) => Err(ReapiError::Corrupt {
                server: self.server.clone(),
                hash: d.hash.clone(),
                size: d.size_bytes,
                what: "the bytes read do not match the digest",
            }),
            other => Ok(other),
        }
    }

    async fn read_stream(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReapiError> {
        let req = ReadRequest {
            resource_name: format!(
                "{}blobs/{}/{}",
                self.cfg.resource_prefix(),
                d.hash,
                d.size_bytes
            ),
            read_offset: 0,
            read_limit: 0,
        };
        let limit = usize::try_from(d.size_bytes).unwrap_or(usize::MAX);
        let result = tokio::time::timeout(self.limit(), async {
            let mut c = ByteStreamClient::new(self.channel.clone())
                .max_decoding_message_size(2 * GRPC_MESSAGE as usize);
            let mut stream = c.read(self.request(req)).await?.into_inner();
            let mut out = Vec::with_capacity(limit.min(64 << 20));
            while let Some(msg) = stream.message().await? {
                out.extend_from_slice(&msg.data);
                if out.len() > limit {
                    break;
                }
            }
            Ok::<_, tonic::Status>(out)
        })
        .await;
        match result {
            Ok(Ok(data)) => Ok(Some(data)),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(None),
            Ok(Err(s)) => Err(self.call_error("ByteStream.Read", s)),
            Err(_) => Err(ReapiError::Call {
                server: self.server.clone(),
                call: "ByteStream.Read",
                detail: format!("no answer within {} ms", self.limit().as_millis()),
                code: None,
            }),
        }
    }

    /// The Action Cache's result for an Action, `None` when it has none.
    pub async fn get_action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<ActionResult>, ReapiError> {
        self.get_action_result_inlined(action, &[]).await
    }

    /// [`Self::get_action_result`], asking the server to inline these output files'
    /// contents (it may not: a caller reads `contents`, checked against the digest,
    /// and falls back to the CAS). Saves a blob read for a small output.
    pub async fn get_action_result_inlined(
        &self,
        action: &Digest,
        inline: &[&str],
    ) -> Result<Option<ActionResult>, ReapiError> {
        let req = GetActionResultRequest {
            instance_name: self.cfg.instance.clone(),
            action_digest: Some(action.clone()),
            inline_stdout: false,
            inline_stderr: false,
            inline_output_files: inline.iter().map(|s| s.to_string()).collect(),
            digest_function: sha256(),
        };
        self.call("GetActionResult", || {
            let mut c = ActionCacheClient::new(self.channel.clone())
                .max_decoding_message_size(2 * GRPC_MESSAGE as usize);
            let r = self.request(req.clone());
            async move { c.get_action_result(r).await }
        })
        .await
    }

    /// Runs an Action (its Command and input root must be in the CAS) and waits for
    /// the server's answer, all within `limit`: the Execute stream's operations until
    /// one is done, and WaitExecution when the server ends the stream before that.
    /// An operation that ends in an error, or a response whose `status` is not OK,
    /// is an error naming the server's words.
    /// `skip_cache_lookup`: run it even when the Action Cache has a result (one whose
    /// outputs the CAS lost).
    pub async fn execute(
        &self,
        action: &Digest,
        limit: Duration,
        skip_cache_lookup: bool,
    ) -> Result<ExecuteResponse, ReapiError> {
        let fail = |detail: String, code: Option<Code>| ReapiError::Call {
            server: self.server.clone(),
            call: "Execute",
            detail,
            code,
        };
        let work = async {
            let mut name: Option<String> = None;
            for _ in 0..100 {
                let mut c = ExecutionClient::new(self.channel.clone())
                    .max_decoding_message_size(2 * GRPC_MESSAGE as usize);
                let stream = match &name {
                    None => {
                        let mut r = tonic::Request::new(ExecuteRequest {
                            instance_name: self.cfg.instance.clone(),
                            skip_cache_lookup,
                            action_digest: Some(action.clone()),
                            execution_policy: None,
                            results_cache_policy: None,
                            digest_function: sha256(),
                            inline_stdout: true,
                            inline_stderr: true,
                            inline_output_files: Vec::new(),
                        });
                        self.authorize(&mut r, limit);
                        c.execute(r).await
                    }
                    Some(n) => {
                        let mut r = tonic::Request::new(WaitExecutionRequest { name: n.clone() });
                        self.authorize(&mut r, limit);
                        c.wait_execution(r).await
                    }
                };
                let mut stream = stream
                    .map_err(|s| self.call_error("Execute", s))?
                    .into_inner();
                while let Some(op) = stream
                    .message()
                    .await
                    .map_err(|s| self.call_error("Execute", s))?
                {
                    if !op.name.is_empty() {
                        name = Some(op.name.clone());
                    }
                    if !op.done {
                        continue;
                    }
                    return match op.result {
                        Some(operation::Result::Response(any)) => {
                            let resp = ExecuteResponse::decode(any.value.as_slice())
                                .map_err(|e| fail(format!("unreadable response: {e}"), None))?;
                            match resp.status.as_ref().filter(|s| s.code != 0) {
                                Some(s) => Err(fail(
                                    format!("code {}: {}", s.code, s.message),
                                    Some(Code::from_i32(s.code)),
                                )),
                                None => Ok(resp),
                            }
                        }
                        Some(operation::Result::Error(s)) => Err(fail(
                            format!("code {}: {}", s.code, s.message),
                            Some(Code::from_i32(s.code)),
                        )),
                        None => Err(fail("a done operation without a result".into(), None)),
                    };
                }
                if name.is_none() {
                    return Err(fail("the stream ended before an operation".into(), None));
                }
            }
            Err(fail("the stream ended 100 times".into(), None))
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(fail(
                format!("no answer within {} ms", limit.as_millis()),
                None,
            )),
        }
    }

    fn authorize<T>(&self, r: &mut tonic::Request<T>, limit: Duration) {
        r.set_timeout(limit);
        if let Some((k, v)) = &self.auth {
            r.metadata_mut().insert(k.clone(), v.clone());
        }
    }

    /// Stores an Action's result in the Action Cache (its blobs must be in the CAS).
    pub async fn update_action_result(
        &self,
        action: &Digest,
        result: ActionResult,
    ) -> Result<(), ReapiError> {
        let req = UpdateActionResultRequest {
            instance_name: self.cfg.instance.clone(),
            action_digest: Some(action.clone()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: sha256(),
        };
        self.call("UpdateActionResult", || {
            let mut c = ActionCacheClient::new(self.channel.clone());
            let r = self.request(req.clone());
            async move { c.update_action_result(r).await }
        })
        .await?;
        Ok(())
    }
}

/// A fresh ByteStream upload id in UUID form (unique per process and call).
fn upload_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = crate::fsutil::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}
