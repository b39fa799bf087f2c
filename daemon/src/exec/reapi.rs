//! A REAPI service's Execute as an executor (`reapi_execute`): a same-path job
//! becomes a rootfs Action (`farm::reapi::action`), looked up in the service's Action
//! Cache first (a hit runs nothing), else its missing blobs are uploaded and it is
//! executed within the job's deadline; the outputs come back as a peer's same-path
//! answer, so the shim re-checks inputs and writes outputs exactly as for a peer.
//! Text and tree jobs do not map onto Actions yet: they are refused (placement never
//! offers them here). Every failure is an [`ExecError`], so the compile goes to a
//! peer or home; placement keeps a service that failed out of the way for a while
//! ([`ReapiService`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farm::protocol::{Job, JobResult, OutputFile, PathJob, TreeJob, TreeResult};
use farm::reapi::action::{rootfs_action, RootfsAction, Sha256Memo};
use farm::reapi::proto::{ActionResult, Digest};
use farm::reapi::{Client, ReapiConfig, ReapiError};

use super::{BlobSource, ExecError, ExecFuture, Executor};

/// SHA-256 digests remembered per farmd (a toolchain's files are hashed once).
const MEMO_ENTRIES: usize = 200_000;
/// The most output bytes one job brings back (as a peer's answer frame allows).
const MAX_OUTPUT: i64 = (farm::protocol::MAX_FRAME - (1 << 20)) as i64;
/// How long a service that failed is left alone at first, and at most.
const FIRST_PAUSE: Duration = Duration::from_secs(10);
const MAX_PAUSE: Duration = Duration::from_secs(300);
const RECENT_FAILURES: usize = 5;
/// The least deadline of one blob transfer.
const BULK_CALL: Duration = Duration::from_secs(30);
/// How a job this node cannot describe as an Action is refused (that job's matter,
/// not the service's).
const NOT_AN_ACTION: &str = "not an Action";

/// Whether a failure says the service cannot serve now (unreachable, silent,
/// refusing what it is sent), rather than that one job could not be an Action: then
/// placement leaves it alone for a while.
pub fn service_failed(e: &ExecError) -> bool {
    !matches!(e, ExecError::Refused(d) if d.contains(NOT_AN_ACTION))
}

/// Runs same-path jobs on one REAPI service.
pub struct ReapiExecutor {
    /// Small calls (GetActionResult, FindMissingBlobs, Execute's start) with the
    /// configured deadline (`|timeout=`, 2 s): a silent server costs that.
    quick: Client,
    /// Blob transfers (a toolchain's 40 MB): at least [`BULK_CALL`] per call.
    bulk: Client,
    /// `reapi:HOST:PORT`: the name the journal, stats, audit log and monitor show.
    name: String,
    memo: Sha256Memo,
    /// Every Action's `timeout`: one value (farmd's `job_timeout`), not each job's
    /// deadline, which varies with what placement measured and would make the same
    /// compile a new Action each time. The wait for an answer is the job's deadline.
    action_timeout: Duration,
}

/// The name a service goes by where a peer's name would be shown.
pub fn service_name(cfg: &ReapiConfig) -> String {
    format!("reapi:{}", cfg.authority)
}

impl ReapiExecutor {
    /// Must run inside the runtime (the channel's worker is spawned on it); connects
    /// on the first job.
    pub fn new(cfg: &ReapiConfig, action_timeout: Duration) -> Result<ReapiExecutor, ReapiError> {
        let mut bulk = cfg.clone();
        bulk.call_timeout = bulk.call_timeout.max(BULK_CALL);
        Ok(ReapiExecutor {
            quick: Client::new(cfg)?,
            bulk: Client::new(&bulk)?,
            name: service_name(cfg),
            memo: Sha256Memo::new(MEMO_ENTRIES),
            action_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn paths(
        &self,
        job: &PathJob,
        blobs: &dyn BlobSource,
        limit: Duration,
    ) -> Result<TreeResult, ExecError> {
        let t0 = Instant::now();
        let renames = scratch_renames(job);
        let built = tokio::task::block_in_place(|| {
            rootfs_action(
                job,
                &mut |k| self.memo.get(k, || blobs.blob(k)),
                &renames,
                self.action_timeout,
            )
        })
        .map_err(|e| ExecError::Refused(format!("{}: {NOT_AN_ACTION}: {e}", self.name)))?;
        let built_ms = t0.elapsed().as_millis() as u64;
        let cached = self
            .quick
            .get_action_result(&built.action_digest)
            .await
            .map_err(exec_error)?;
        let looked_ms = t0.elapsed().as_millis() as u64;
        let mut uploaded_ms = looked_ms;
        // An Action Cache entry whose outputs the CAS no longer holds is run again.
        let stale = cached.is_some();
        let hit = match cached {
            Some(r) => self.answer(&built, r).await?,
            None => None,
        };
        let (answer, how) = match hit {
            Some(a) => (a, "cached"),
            None => {
                self.upload(&built, blobs).await?;
                uploaded_ms = t0.elapsed().as_millis() as u64;
                let left = limit.saturating_sub(t0.elapsed());
                let resp = self
                    .quick
                    .execute(&built.action_digest, left, stale)
                    .await
                    .map_err(exec_error)?;
                let how = if resp.cached_result {
                    "cached"
                } else {
                    "executed"
                };
                let r = resp.result.ok_or_else(|| {
                    ExecError::Protocol(format!("{}: Execute answered no result", self.name))
                })?;
                let a = self.answer(&built, r).await?.ok_or_else(|| {
                    ExecError::Transport(format!(
                        "{}: the Execute result lacks an output, or the CAS lost one",
                        self.name
                    ))
                })?;
                (a, how)
            }
        };
        crate::metrics::get().count_reapi_execute(how);
        // Where a job's time goes (ms since it reached the executor): the Action
        // built (the first job of a toolchain hashes it), the Action Cache asked,
        // the missing blobs uploaded, the answer back.
        tracing::info!(
            service = %self.name,
            action = %built.action_digest.hash,
            how,
            exit = answer.exit_code,
            built_ms,
            looked_ms,
            uploaded_ms,
            ms = t0.elapsed().as_millis() as u64,
            "REAPI job done"
        );
        Ok(answer)
    }

    /// Uploads what the service lacks: the Action, Command and Directories from
    /// memory, files from `blobs` (read only when missing).
    async fn upload(&self, built: &RootfsAction, blobs: &dyn BlobSource) -> Result<(), ExecError> {
        let mut all: Vec<Digest> = built.messages.iter().map(|(d, _)| d.clone()).collect();
        all.extend(built.files.iter().map(|(d, _)| d.clone()));
        all.retain(|d| d.size_bytes > 0);
        let missing = self.quick.find_missing(&all).await.map_err(exec_error)?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<(Digest, Vec<u8>)> = Vec::new();
        for d in &missing {
            if let Some((_, bytes)) = built.messages.iter().find(|(m, _)| m.hash == d.hash) {
                wanted.push((d.clone(), bytes.clone()));
            } else if let Some((_, b3)) = built.files.iter().find(|(f, _)| f.hash == d.hash) {
                let data = tokio::task::block_in_place(|| blobs.blob(b3)).ok_or_else(|| {
                    ExecError::Transport(format!(
                        "{}: blob {} is not in this node's store",
                        self.name,
                        farm::fsutil::hex(&b3[..8])
                    ))
                })?;
                wanted.push((d.clone(), data));
            }
        }
        let refs: Vec<(Digest, &[u8])> = wanted
            .iter()
            .map(|(d, b)| (d.clone(), b.as_slice()))
            .collect();
        self.bulk.upload(&refs).await.map_err(exec_error)
    }

    /// The service's ActionResult as a peer's answer: exit code, stdout and stderr
    /// byte for byte, the outputs (when it succeeded) at the sender's paths. `None`
    /// when a blob it names is not in the CAS, or it does not hold each output asked
    /// for exactly once.
    async fn answer(
        &self,
        built: &RootfsAction,
        r: ActionResult,
    ) -> Result<Option<TreeResult>, ExecError> {
        let Some(stdout) = self.stream(&r.stdout_raw, r.stdout_digest.as_ref()).await? else {
            return Ok(None);
        };
        let Some(stderr) = self.stream(&r.stderr_raw, r.stderr_digest.as_ref()).await? else {
            return Ok(None);
        };
        let mut outputs = Vec::new();
        if r.exit_code == 0 {
            let mut total = 0i64;
            for o in &built.outputs {
                // Each output asked for, once (others ignored): a result that lacks
                // one, or names one twice, is not this compile's (a cached one is run
                // again; the shim would turn it down and compile at home each time).
                let mut named = r.output_files.iter().filter(|f| f.path == o.action_path);
                let (Some(f), None) = (named.next(), named.next()) else {
                    return Ok(None);
                };
                let d = f.digest.clone().unwrap_or_default();
                // The sizes are the server's: a sum that wrapped would let any size in.
                total = total.saturating_add(d.size_bytes.max(0));
                if total > MAX_OUTPUT {
                    return Err(ExecError::Refused(format!(
                        "{}: outputs over {MAX_OUTPUT} bytes",
                        self.name
                    )));
                }
                let data = if !f.contents.is_empty() && farm::reapi::matches(&d, &f.contents) {
                    f.contents.clone()
                } else {
                    match self.bulk.read_blob(&d).await.map_err(exec_error)? {
                        Some(data) => data,
                        None => return Ok(None),
                    }
                };
                outputs.push(OutputFile {
                    path: o.sender_path.clone(),
                    data,
                });
            }
        }
        let compile_ms = r.execution_metadata.as_ref().map_or(0, run_ms);
        Ok(Some(TreeResult {
            exit_code: r.exit_code,
            stdout,
            stderr,
            outputs,
            compile_ms,
            worker: self.name.clone(),
        }))
    }

    /// stdout or stderr: inline when the server sent it so, else from the CAS
    /// (`None`: not there).
    async fn stream(
        &self,
        raw: &[u8],
        digest: Option<&Digest>,
    ) -> Result<Option<Vec<u8>>, ExecError> {
        match digest {
            Some(d) if d.size_bytes > 0 && !farm::reapi::matches(d, raw) => {
                if d.size_bytes > MAX_OUTPUT {
                    return Err(ExecError::Refused(format!(
                        "{}: output stream over {MAX_OUTPUT} bytes",
                        self.name
                    )));
                }
                self.bulk.read_blob(d).await.map_err(exec_error)
            }
            _ => Ok(Some(raw.to_vec())),
        }
    }
}

/// How long the server says the command ran (ms); 0 when it does not say or says
/// nonsense (the timestamps are the server's: no arithmetic on them may overflow).
fn run_ms(m: &farm::reapi::proto::ExecutedActionMetadata) -> u64 {
    let (Some(a), Some(b)) = (
        m.execution_start_timestamp.as_ref(),
        m.execution_completed_timestamp.as_ref(),
    ) else {
        return 0;
    };
    let nanos = |t: &bazel_remote_apis::google::protobuf::Timestamp| {
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    };
    u64::try_from((nanos(b) - nanos(a)) / 1_000_000).unwrap_or(0)
}

/// A client error as an executor's failure: no answer in time is a timeout, a server
/// that cannot serve (UNAVAILABLE, unreachable, a lost connection) a transport
/// failure, one that will not run this (a precondition, a refused argument) a
/// refusal, bytes that are not what they claim a protocol failure.
fn exec_error(e: ReapiError) -> ExecError {
    use tonic::Code;
    let text = e.to_string();
    match &e {
        ReapiError::Setup { .. } => ExecError::Refused(text),
        ReapiError::Corrupt { .. } => ExecError::Protocol(text),
        ReapiError::Call { code: None, .. } if text.contains("no answer within") => {
            ExecError::Timeout(text)
        }
        ReapiError::Call {
            code: Some(Code::DeadlineExceeded),
            ..
        } => ExecError::Timeout(text),
        ReapiError::Call {
            code:
                Some(
                    Code::FailedPrecondition
                    | Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::ResourceExhausted
                    | Code::Unimplemented,
                ),
            ..
        } => ExecError::Refused(text),
        ReapiError::Call { .. } => ExecError::Transport(text),
    }
}

/// New names for outputs in a sender's private scratch directory
/// (`fsutil::private_temp_dir`: the observation of what a compile reads): such a name
/// is new for every compile, and in the Action it would make every Action new. Only
/// an output that is a whole argument is renamed; it keeps its directory and
/// extension.
fn scratch_renames(job: &PathJob) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (i, o) in job.outputs.iter().enumerate() {
        let p = Path::new(o);
        let Some(dir) = p.parent() else { continue };
        if !farm::fsutil::is_private_temp_dir(dir) {
            continue;
        }
        if job.args.iter().filter(|a| *a == o).count() != 1
            || job.args.iter().any(|a| a != o && a.contains(o.as_str()))
        {
            continue;
        }
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        out.insert(
            o.clone(),
            dir.join(format!("farm-output-{i}{ext}"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    out
}

impl Executor for ReapiExecutor {
    fn run_job<'a>(&'a self, _job: &'a Job, _limit: Duration) -> ExecFuture<'a, JobResult> {
        Box::pin(async move {
            Err(ExecError::Refused(format!(
                "{}: text jobs do not map onto Actions",
                self.name
            )))
        })
    }

    fn run_tree<'a>(
        &'a self,
        _job: &'a TreeJob,
        _blobs: &'a dyn BlobSource,
        _limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        Box::pin(async move {
            Err(ExecError::Refused(format!(
                "{}: tree jobs do not map onto Actions yet",
                self.name
            )))
        })
    }

    fn run_paths<'a>(
        &'a self,
        job: &'a PathJob,
        blobs: &'a dyn BlobSource,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        // The whole job within its deadline: the Execute wait alone is not enough, a
        // server that answers the small calls and stalls blob transfers (each allowed
        // BULK_CALL) would hold the compile far past it.
        Box::pin(async move {
            match tokio::time::timeout(limit, self.paths(job, blobs, limit)).await {
                Ok(r) => r,
                Err(_) => Err(ExecError::Timeout(format!(
                    "{}: no answer within {} ms",
                    self.name,
                    limit.as_millis()
                ))),
            }
        })
    }
}

/// A REAPI service as placement sees it: unbounded slots, its measured round trip,
/// and a pause after a failure (like a dead peer's redial), growing while it fails.
pub struct ReapiService {
    pub name: String,
    pub executor: Arc<dyn Executor>,
    pub state: Mutex<ServiceState>,
}

#[derive(Default)]
pub struct ServiceState {
    pub inflight: u32,
    pub ok: u64,
    pub failed: u64,
    pub recent_failures: VecDeque<String>,
    /// Round-trip time of a job there (ms), smoothed.
    pub job_ms: Option<f64>,
    pub last_job: Option<Instant>,
    /// Not offered to placement before this.
    pub paused_until: Option<Instant>,
    pub pause: Duration,
}

impl ReapiService {
    pub fn new(cfg: &ReapiConfig, action_timeout: Duration) -> Result<ReapiService, ReapiError> {
        let exec = ReapiExecutor::new(cfg, action_timeout)?;
        Ok(ReapiService {
            name: exec.name().to_string(),
            executor: Arc::new(exec),
            state: Mutex::new(ServiceState::default()),
        })
    }
}

impl ServiceState {
    /// Whether placement may offer it a job now.
    pub fn available(&self, now: Instant) -> bool {
        self.paused_until.map_or(true, |t| now >= t)
    }

    /// A job came back after `ms`.
    pub fn succeeded(&mut self, ms: f64, fresh_for: Duration) {
        self.ok += 1;
        let fresh = self.last_job.is_some_and(|t| t.elapsed() < fresh_for);
        self.job_ms = Some(match self.job_ms {
            Some(old) if fresh => crate::placement::ewma(old, ms),
            _ => ms,
        });
        self.last_job = Some(Instant::now());
        self.paused_until = None;
        self.pause = Duration::ZERO;
    }

    /// A job failed with `why`; `down`: the service could not serve (unreachable,
    /// silent, unavailable, refusing), so it is left alone for a while. Returns
    /// whether this started an outage (to log once).
    pub fn failed(&mut self, why: String, down: bool) -> bool {
        self.failed += 1;
        if self.recent_failures.len() == RECENT_FAILURES {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(why);
        if !down {
            return false;
        }
        let first = self.pause.is_zero();
        self.pause = if first {
            FIRST_PAUSE
        } else {
            (self.pause * 2).min(MAX_PAUSE)
        };
        self.paused_until = Some(Instant::now() + self.pause);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use farm::protocol::{CompilerAd, Toolchain};

    fn job(args: &[&str], outputs: &[&str]) -> PathJob {
        PathJob {
            family: "f".into(),
            compiler: CompilerAd {
                name: "cc".into(),
                identity: [0; 32],
            },
            toolchain: Toolchain::default(),
            arg0: "cc".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: "/src".into(),
            env: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn scratch_outputs_get_stable_names_and_others_keep_theirs() {
        let tmp = farm::fsutil::private_temp_dir();
        let d = tmp.join("4711-3.d").to_string_lossy().into_owned();
        let j = job(&["-c", "a.c", "-MF", &d], &["/src/a.o", &d]);
        let r = scratch_renames(&j);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[&d],
            tmp.join("farm-output-1.d").to_string_lossy().into_owned()
        );
        // Named inside another argument: left as it is (a rename would not reach it).
        let j = job(&["-c", "a.c", &format!("-MF{d}"), &d], &["/src/a.o", &d]);
        assert!(scratch_renames(&j).is_empty());
        // Outside a private scratch directory: never renamed.
        let j = job(&["-MF", "/src/a.d"], &["/src/a.d"]);
        assert!(scratch_renames(&j).is_empty());
    }

    #[test]
    fn failures_pause_the_service_growing_and_success_resets() {
        let mut s = ServiceState::default();
        let now = Instant::now();
        assert!(s.available(now));
        assert!(!s.failed("refused: no".into(), false));
        assert!(s.available(Instant::now()));
        assert!(s.failed("peer_error: refused".into(), true));
        assert!(!s.available(Instant::now()));
        assert_eq!(s.pause, FIRST_PAUSE);
        assert!(!s.failed("timeout".into(), true));
        assert_eq!(s.pause, FIRST_PAUSE * 2);
        assert_eq!(s.recent_failures.len(), 3);
        s.succeeded(120.0, Duration::from_secs(10));
        assert!(s.available(Instant::now()));
        assert_eq!(s.job_ms, Some(120.0));
    }

    #[tokio::test]
    async fn a_result_is_used_only_with_each_output_asked_for_once() {
        let exec = ReapiExecutor::new(&ReapiConfig::plain("127.0.0.1:1"), Duration::from_secs(60))
            .unwrap();
        let j = job(&["-c", "a.c", "-o", "a.o"], &["/src/a.o"]);
        let built =
            rootfs_action(&j, &mut |_| None, &HashMap::new(), Duration::from_secs(60)).unwrap();
        let file = |path: &str| farm::reapi::proto::OutputFile {
            path: path.into(),
            digest: Some(farm::reapi::digest_of(b"obj")),
            contents: b"obj".to_vec(),
            ..Default::default()
        };
        let result = |files: Vec<farm::reapi::proto::OutputFile>| ActionResult {
            output_files: files,
            ..Default::default()
        };
        let used = exec
            .answer(&built, result(vec![file("b.o"), file("a.o")]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(used.outputs.len(), 1);
        assert_eq!(used.outputs[0].path, "/src/a.o");
        assert_eq!(used.outputs[0].data, b"obj");
        for files in [vec![], vec![file("b.o")], vec![file("a.o"), file("a.o")]] {
            let r = exec.answer(&built, result(files.clone())).await.unwrap();
            assert_eq!(r, None, "{files:?}");
        }
        // Sizes past the limit together are refused before anything is read, however
        // large the server says they are.
        let two = job(&["-c", "a.c"], &["/src/a.o", "/src/a.d"]);
        let built = rootfs_action(
            &two,
            &mut |_| None,
            &HashMap::new(),
            Duration::from_secs(60),
        )
        .unwrap();
        let mut huge = file("a.o");
        huge.digest = Some(Digest {
            hash: "0".repeat(64),
            size_bytes: i64::MAX,
        });
        huge.contents.clear();
        let r = exec.answer(&built, result(vec![file("a.d"), huge])).await;
        assert!(matches!(r, Err(ExecError::Refused(_))), "{r:?}");
        // A failed compile's result carries no outputs.
        let failed = ActionResult {
            exit_code: 1,
            ..Default::default()
        };
        let r = exec.answer(&built, failed).await.unwrap().unwrap();
        assert_eq!((r.exit_code, r.outputs.len()), (1, 0));
    }

    #[test]
    fn run_time_from_any_timestamps_never_overflows() {
        use bazel_remote_apis::google::protobuf::Timestamp;
        use farm::reapi::proto::ExecutedActionMetadata;
        let ts = |seconds, nanos| Some(Timestamp { seconds, nanos });
        let meta = |a, b| ExecutedActionMetadata {
            execution_start_timestamp: a,
            execution_completed_timestamp: b,
            ..Default::default()
        };
        assert_eq!(
            run_ms(&meta(ts(10, 900_000_000), ts(12, 400_000_000))),
            1500
        );
        assert_eq!(run_ms(&meta(ts(12, 0), ts(10, 0))), 0);
        assert_eq!(run_ms(&meta(None, ts(10, 0))), 0);
        // A hostile server's values: no panic, no wrapped-around time.
        assert_eq!(
            run_ms(&meta(ts(i64::MIN, i32::MIN), ts(i64::MAX, i32::MAX))),
            0
        );
        assert_eq!(
            run_ms(&meta(ts(i64::MAX, i32::MAX), ts(i64::MIN, i32::MIN))),
            0
        );
        assert_eq!(run_ms(&meta(ts(0, i32::MIN), ts(0, i32::MAX))), 4294);
    }

    /// A hostile REAPI server: its Action Cache answers every Action with a result
    /// whose object is to be read from the CAS, and its ByteStream never answers.
    #[derive(Clone, Copy)]
    struct StallingServer;

    #[tonic::async_trait]
    impl farm::reapi::proto::action_cache_server::ActionCache for StallingServer {
        async fn get_action_result(
            &self,
            _: tonic::Request<farm::reapi::proto::GetActionResultRequest>,
        ) -> Result<tonic::Response<ActionResult>, tonic::Status> {
            Ok(tonic::Response::new(ActionResult {
                output_files: vec![farm::reapi::proto::OutputFile {
                    path: "a.o".into(),
                    digest: Some(farm::reapi::digest_of(b"obj")),
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }
        async fn update_action_result(
            &self,
            _: tonic::Request<farm::reapi::proto::UpdateActionResultRequest>,
        ) -> Result<tonic::Response<ActionResult>, tonic::Status> {
            Err(tonic::Status::unimplemented("no"))
        }
    }

    #[tonic::async_trait]
    impl bazel_remote_apis::google::bytestream::byte_stream_server::ByteStream for StallingServer {
        type ReadStream = tonic::codegen::tokio_stream::Empty<
            Result<bazel_remote_apis::google::bytestream::ReadResponse, tonic::Status>,
        >;
        async fn read(
            &self,
            _: tonic::Request<bazel_remote_apis::google::bytestream::ReadRequest>,
        ) -> Result<tonic::Response<Self::ReadStream>, tonic::Status> {
            std::future::pending().await
        }
        async fn write(
            &self,
            _: tonic::Request<
                tonic::Streaming<bazel_remote_apis::google::bytestream::WriteRequest>,
            >,
        ) -> Result<
            tonic::Response<bazel_remote_apis::google::bytestream::WriteResponse>,
            tonic::Status,
        > {
            Err(tonic::Status::unimplemented("no"))
        }
        async fn query_write_status(
            &self,
            _: tonic::Request<bazel_remote_apis::google::bytestream::QueryWriteStatusRequest>,
        ) -> Result<
            tonic::Response<bazel_remote_apis::google::bytestream::QueryWriteStatusResponse>,
            tonic::Status,
        > {
            Err(tonic::Status::unimplemented("no"))
        }
    }

    /// Both services on one port (farmd's tonic has no router).
    #[derive(Clone)]
    struct Routes {
        ac: farm::reapi::proto::action_cache_server::ActionCacheServer<StallingServer>,
        bs: bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer<
            StallingServer,
        >,
    }

    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Routes {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            if req
                .uri()
                .path()
                .starts_with("/google.bytestream.ByteStream/")
            {
                self.bs.call(req)
            } else {
                self.ac.call(req)
            }
        }
    }

    struct NoBlobs;
    impl BlobSource for NoBlobs {
        fn blob(&self, _: &[u8; 32]) -> Option<Vec<u8>> {
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_stalls_blob_reads_costs_no_more_than_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes = Routes {
            ac: farm::reapi::proto::action_cache_server::ActionCacheServer::new(StallingServer),
            bs: bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer::new(
                StallingServer,
            ),
        };
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
            routes,
            tonic::transport::server::TcpIncoming::from(listener),
        ));
        let mut cfg = ReapiConfig::plain(&format!("127.0.0.1:{port}"));
        cfg.call_timeout = Duration::from_secs(2);
        let exec = ReapiExecutor::new(&cfg, Duration::from_secs(60)).unwrap();
        let j = job(&["-c", "a.c", "-o", "a.o"], &["/src/a.o"]);
        let limit = Duration::from_secs(1);
        let t0 = Instant::now();
        let r = exec.run_paths(&j, &NoBlobs, limit).await;
        let took = t0.elapsed();
        assert!(matches!(r, Err(ExecError::Timeout(_))), "{r:?}");
        assert!(took < limit + Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn client_errors_map_to_executor_failures() {
        assert!(!service_failed(&ExecError::Refused(format!(
            "reapi:h:1: {NOT_AN_ACTION}: output \"/\" is outside the input root"
        ))));
        assert!(service_failed(&ExecError::Refused(
            "REAPI reapi://h:1: Execute: code 9: program not allowed".into()
        )));
        let call = |code| ReapiError::Call {
            server: "reapi://h:1".into(),
            call: "Execute",
            detail: "x".into(),
            code,
        };
        use tonic::Code;
        assert!(matches!(
            exec_error(call(Some(Code::Unavailable))),
            ExecError::Transport(_)
        ));
        assert!(matches!(
            exec_error(call(Some(Code::FailedPrecondition))),
            ExecError::Refused(_)
        ));
        assert!(matches!(
            exec_error(call(Some(Code::DeadlineExceeded))),
            ExecError::Timeout(_)
        ));
    }
}
