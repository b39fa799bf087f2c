//! Messages and framing shared by the shim, the agent and the worker (docs/protocol.md).
//!
//! Knows nothing about caching policy: a cache entry travels as opaque bytes under an
//! opaque 32-byte key. Every frame is `u32 length (LE) | u8 flags | payload`, where the
//! payload is postcard, zstd-compressed when flag bit 0 is set. Every read checks the
//! length against a cap before allocating, and every decompression is bounded by the
//! same cap, so a peer cannot make a reader allocate more than it allows.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Protocol version, advertised by every farmd and checked on every advert. 2: jobs
/// name their input and output files (`Job`, `JobResult`). 3: same-path jobs
/// (`PathJob`, toolchains by digest) and `Advert::toolchains`.
pub const VERSION: u32 = 3;
/// TLS application protocol of the peer protocol (its version with it).
pub const ALPN: &[u8] = b"farm/3";
/// Largest frame any reader accepts (a preprocessed source or an object file).
pub const MAX_FRAME: usize = 64 << 20;
/// Largest frame of the control messages (adverts, have, get): a peer that sends more
/// on such a stream is breaking the protocol.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Payloads above this size are compressed on the wire.
const COMPRESS_ABOVE: usize = 4096;
const FLAG_ZSTD: u8 = 1;

pub type Key = [u8; 32];

/// What a key names in the farm's cache: the store's one kind type (its variant
/// order is part of the encoding).
pub use crate::store::EntryKind;

/// A remote tier as a shim configured it (credentials included), for the agent that
/// asks it on the shim's behalf.
pub use crate::store::remote::RemoteSpec;

/// One entry for the farm's cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub kind: EntryKind,
    pub key: Key,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {cap} bytes")]
    TooLarge { len: usize, cap: usize },
    #[error("empty frame")]
    Empty,
    #[error("unknown frame flags {0:#x}")]
    Flags(u8),
    #[error("cannot decompress frame: {0}")]
    Decompress(String),
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A compiler a worker can run: the name it is started as and its identity digest
/// (`key::compiler_identity`), so jobs match compilers by content, never by path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CompilerAd {
    pub name: String,
    pub identity: Key,
}

/// What a farmd tells its peers about itself, about every second.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Advert {
    pub version: u32,
    pub node: String,
    /// Address peers reach this node at (`host:port`).
    pub addr: String,
    pub slots: u32,
    pub free: u32,
    pub queue: u32,
    /// One-minute load average × 1000.
    pub load_milli: u32,
    /// CPUs, and processes running or runnable right now: how much a new job there
    /// would share a CPU.
    pub cores: u32,
    pub runnable: u32,
    /// The running kernel's boot id: peers with this node's id share its CPUs.
    pub host: String,
    pub free_mem_mb: u64,
    pub compilers: Vec<CompilerAd>,
    /// Addresses of this node's live peers: how a farm learns its members.
    pub peers: Vec<String>,
    /// Runs same-path jobs on a toolchain it is sent (not only its own compilers').
    pub toolchains: bool,
}

/// One compile of one shipped text for a worker (a text job). The worker rebuilds
/// argv from these fields after its family module validated them; nothing here is
/// ever run as a command string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Compiler family module (`gcc`).
    pub family: String,
    pub compiler: CompilerAd,
    /// The file name `source` is written to in the job directory: one plain name,
    /// chosen by the family (its extension names the language: `job.i`).
    pub input: String,
    /// Compile arguments, validated again by the worker.
    pub args: Vec<String>,
    #[serde(with = "serde_bytes")]
    pub source: Vec<u8>,
    /// The files the compile writes in the job directory (plain names, `job.o`),
    /// which the worker sends back.
    pub outputs: Vec<String>,
}

/// A worker's answer to a job that ran.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct JobResult {
    pub exit_code: i32,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Every file the job named, by its name, when the compile succeeded (none when
    /// it failed).
    pub outputs: Vec<OutputFile>,
    pub compile_ms: u64,
    pub worker: String,
}

/// Content-addressed bytes: a source or class-path file of a tree job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: Key,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// One input file of a tree job: its absolute path on the sending machine (the
/// worker re-roots it in the job directory) and the digest of its content.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    pub path: String,
    pub digest: Key,
}

/// Toolchain packages travel in same-path jobs (their type lives with the builder).
pub use crate::toolchain::{ToolEntry, ToolKind, Toolchain};

/// A compile that runs on a worker at the same absolute paths as at home (gcc and
/// clang with `-g`, coverage, split DWARF): the source and every header it can read
/// travel as blobs and are laid out where the sender has them, inside a sandbox that
/// holds nothing else but the toolchain, so outputs and diagnostics are the ones a
/// home compile gives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PathJob {
    /// Compiler family module (`gcc`).
    pub family: String,
    /// The compiler's identity (placement prefers peers that have it).
    pub compiler: CompilerAd,
    pub toolchain: Toolchain,
    /// argv[0] as the sender starts the driver.
    pub arg0: String,
    /// The arguments exactly as the sender runs them; validated by the worker's family
    /// module.
    pub args: Vec<String>,
    /// The working directory (absolute).
    pub cwd: String,
    /// Environment variables the family lets a worker set.
    pub env: Vec<(String, String)>,
    /// Inputs at their absolute paths.
    pub files: Vec<TreeFile>,
    /// Directories that exist at home (the include search list), made empty if no
    /// file lies in them.
    pub dirs: Vec<String>,
    /// Absolute paths of the files the compile writes, brought back if written.
    pub outputs: Vec<String>,
}

/// A compile with many inputs and many outputs (javac, csc): its files travel as
/// blobs a peer keeps, so a class path crosses the wire once per farm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TreeJob {
    /// Compiler family module (`javac`, `csc`).
    pub family: String,
    pub compiler: CompilerAd,
    /// Arguments with absolute paths of the sending machine; validated and re-rooted
    /// by the worker's family module.
    pub args: Vec<String>,
    /// Output directories as (role, the path the arguments name).
    pub outputs: Vec<(String, String)>,
    pub files: Vec<TreeFile>,
}

/// One output file and its content: a text job's file by its name, a tree job's as
/// `role/relative/path`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    pub path: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A worker's answer to a tree job that ran. Paths of its job directory are
/// already turned back into the sender's paths in `stdout`/`stderr`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeResult {
    pub exit_code: i32,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    pub outputs: Vec<OutputFile>,
    pub compile_ms: u64,
    pub worker: String,
}

/// Requests between farmd peers, one per QUIC bidirectional stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum PeerRequest {
    Advert(Advert),
    Get {
        kind: EntryKind,
        key: Key,
    },
    Have {
        kind: EntryKind,
        key: Key,
    },
    /// Stores an entry; a manifest is merged with the one already there.
    Put(Item),
    Job(Job),
    /// Which of these blobs the peer lacks.
    HaveBlobs(Vec<Key>),
    PutBlobs(Vec<Blob>),
    TreeJob(TreeJob),
    /// Answered with `TreeDone` (outputs by their absolute paths).
    PathJob(Box<PathJob>),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum PeerResponse {
    Advert(Advert),
    Entry(Option<serde_bytes::ByteBuf>),
    Have(bool),
    Stored,
    Done(JobResult),
    /// The worker will not run this job; the reason names the flag or limit.
    Refused(String),
    MissingBlobs(Vec<Key>),
    TreeDone(TreeResult),
}

/// Requests from a shim (or `farm status`) to the agent on its machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AgentRequest {
    /// The farm's cache: the entry from the key's home node.
    Fetch {
        kind: EntryKind,
        key: Key,
    },
    /// A miss this compiler could run on a worker: home or a peer? `Local` reserves a
    /// slot at home; `Ship` asks for the job.
    Place {
        compiler: CompilerAd,
    },
    /// Compile this job on a peer (one retry on another); `Local` if none could.
    Compile(Job),
    /// Entries for the farm's cache (each goes to its key's home); `local_ms` is how
    /// long the home compile took (0: not compiled here), which teaches placement.
    Publish {
        items: Vec<Item>,
        local_ms: u64,
    },
    /// A compile the agent sent home ended with nothing to publish.
    LocalDone {
        local_ms: u64,
    },
    Status,
    /// Run this compile in the warm compiler process of the installation at `home`
    /// (a JDK), on this machine, as the asking user: its outputs go to the
    /// directories the arguments name. `Compiled` (no outputs) or `Local(reason)`.
    /// Appended last: older agents refuse it as an unknown request.
    Warm {
        /// The family whose warm compiler runs it (its registry name).
        family: String,
        home: String,
        args: Vec<String>,
    },
    /// Which of these blobs the agent lacks (the shim then sends them).
    MissingBlobs(Vec<Key>),
    PutBlobs(Vec<Blob>),
    /// Compile this tree job on a peer (one retry on another); `TreeCompiled`, or
    /// `Local` if none could.
    CompileTree(TreeJob),
    /// A remote tier's object for an entry, as the server stores it (the shim checks
    /// it): `RemoteObject`, `RemoteFailed`, or `Local(reason)` when the agent will not
    /// ask this remote (the shim then asks it itself). The agent keeps one client per
    /// distinct `spec`, credentials included. Appended last, like the remote requests
    /// after it: older agents refuse them as unknown requests.
    RemoteGet {
        spec: Box<RemoteSpec>,
        kind: EntryKind,
        key: Key,
    },
    /// Whether the remote holds an entry: `RemoteHas`, `RemoteFailed` or `Local`.
    RemoteHave {
        spec: Box<RemoteSpec>,
        kind: EntryKind,
        key: Key,
    },
    /// Writes an entry's object (in its stored form) in the background: answered at
    /// once with `RemoteQueued`, or `RemoteFailed` (writes skipped after a failure),
    /// or `Local`.
    RemotePut {
        spec: Box<RemoteSpec>,
        kind: EntryKind,
        key: Key,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A same-path job on a peer (its blobs sent before with `PutBlobs`):
    /// `TreeCompiled` (outputs by absolute path) or `Local(reason)`.
    CompilePaths(Box<PathJob>),
    /// What a shipped compile cost the shim end to end (ms), for placement's choice
    /// of shape: answered `Published`.
    Measured {
        compiler: Key,
        shape: JobShape,
        ms: u32,
    },
}

/// How a shipped compile travels, where its family allows both.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobShape {
    /// The preprocessed text (`Job`).
    Text,
    /// The source and its headers at their paths (`PathJob`).
    Paths,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AgentResponse {
    /// The farm had the entry (from the key's home node).
    Cached {
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
        peer: String,
    },
    /// The farm does not have it.
    Missing,
    /// A peer should compile it: send the job (`ShipAs`: in this shape first, where
    /// the family allows both).
    Ship,
    /// A peer compiled the job.
    Compiled(JobResult),
    /// Compile it at home; the reason is counted in `farm stats`.
    Local(String),
    Published,
    Status(Box<StatusReport>),
    MissingBlobs(Vec<Key>),
    TreeCompiled(TreeResult),
    /// The remote's object (`None`: the remote does not hold it), unchecked.
    RemoteObject(Option<serde_bytes::ByteBuf>),
    RemoteHas(bool),
    /// The write was queued (`true`), or dropped because the agent's queue is full.
    RemoteQueued(bool),
    /// The remote failed, or is skipped after a failure: what happened (never a
    /// credential).
    RemoteFailed(String),
    /// A peer should compile it, in this shape first where the family allows both.
    ShipAs(JobShape),
}

/// The farm as one agent sees it (`farm status`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct StatusReport {
    pub node: String,
    pub addr: String,
    pub version: u32,
    pub uptime_s: u64,
    pub slots: u32,
    pub free: u32,
    pub local_slots: u32,
    pub local_running: u32,
    pub jobs_served: u64,
    pub jobs_refused: u64,
    pub store_entries: u64,
    pub peers: Vec<PeerStatus>,
    /// farmd's HTTP endpoints (`http` in its configuration); `None` when it serves none.
    pub http: Option<HttpEndpoints>,
}

/// The URLs of farmd's HTTP endpoints, so scripts find them without reading its
/// configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HttpEndpoints {
    /// Prometheus metrics (text format).
    pub metrics: String,
    /// 200 while the process serves requests (liveness).
    pub healthz: String,
    /// 200 while it accepts work (readiness); 503 with the reason otherwise.
    pub readyz: String,
    /// The live monitor page.
    pub monitor: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PeerStatus {
    pub node: String,
    pub addr: String,
    pub live: bool,
    pub slots: u32,
    pub free: u32,
    pub queue: u32,
    pub load_milli: u32,
    pub free_mem_mb: u64,
    pub rtt_us: u64,
    pub compilers: Vec<String>,
    /// Jobs this node sent there that came back with a result.
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    /// The most recent failures, newest last.
    pub recent_failures: Vec<String>,
    /// Estimated milliseconds per job there (placement's view).
    pub est_ms: u64,
    /// Jobs this node has running there now.
    pub inflight: u32,
    /// UDP bytes this node sent to / received from it on its connection there.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A message's digest (blake3 of its encoding, before framing): the same message,
/// the same digest. The audit log names jobs by it.
pub fn message_digest<T: Serialize>(msg: &T) -> Key {
    let body = postcard::to_stdvec(msg).expect("postcard encoding to a Vec cannot fail");
    *blake3::hash(&body).as_bytes()
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(msg).expect("postcard encoding to a Vec cannot fail");
    let (flags, payload) = if body.len() > COMPRESS_ABOVE {
        match zstd::bulk::compress(&body, 1) {
            Ok(c) if c.len() < body.len() => (FLAG_ZSTD, c),
            _ => (0, body),
        }
    } else {
        (0, body)
    };
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&payload);
    out
}

/// Checks a frame header's length against `cap`; returns the body length.
pub fn body_len(header: [u8; 4], cap: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    // The compressed body can never need more than the cap either.
    if len > cap + 1 {
        return Err(FrameError::TooLarge { len, cap });
    }
    Ok(len)
}

/// Decodes a frame body (flags byte and payload).
pub fn decode<T: DeserializeOwned>(body: &[u8], cap: usize) -> Result<T, FrameError> {
    let (&flags, payload) = body.split_first().ok_or(FrameError::Empty)?;
    match flags {
        0 => Ok(postcard::from_bytes(payload)?),
        FLAG_ZSTD => {
            let plain = zstd::bulk::decompress(payload, cap)
                .map_err(|e| FrameError::Decompress(e.to_string()))?;
            Ok(postcard::from_bytes(&plain)?)
        }
        f => Err(FrameError::Flags(f)),
    }
}

/// End of stream before a frame starts is a closed connection, not an error.
fn header_error(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Reads one frame from a blocking reader (the shim's side of the agent socket).
pub fn read_sync<T: DeserializeOwned>(
    r: &mut impl std::io::Read,
    cap: usize,
) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).map_err(header_error)?;
    let len = body_len(header, cap)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body, cap)
}

/// Writes one frame to a blocking writer.
pub fn write_sync<T: Serialize>(w: &mut impl std::io::Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from an async reader (QUIC streams, the agent's Unix socket).
pub async fn read_async<T: DeserializeOwned>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    cap: usize,
) -> Result<T, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await.map_err(header_error)?;
    let len = body_len(header, cap)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body, cap)
}

/// Frames needing at most this many bytes (body plus inflated payload) are read
/// without taking from a [`ReadBudget`]: small control messages never wait behind
/// large frames.
pub const SMALL_FRAME: usize = 16 << 10;

/// Bytes of request frames being read and decoded at once, shared by every peer
/// connection of one farmd. A reader takes a frame's declared length from it before
/// allocating the body, and the inflated size (from the zstd frame header, the cap
/// when absent) before decompressing; both are given back once the frame is decoded.
#[derive(Clone)]
pub struct ReadBudget {
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> ReadBudget {
        let total = bytes.clamp(1, u32::MAX as usize >> 1) as u32;
        ReadBudget {
            sem: std::sync::Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes not taken now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Takes `bytes`, less what this frame already holds if that would be more than
    /// the whole budget: a frame larger than the budget waits for all of it.
    async fn take(
        &self,
        bytes: usize,
        held: Option<&tokio::sync::OwnedSemaphorePermit>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let held = held.map(|p| p.num_permits()).unwrap_or(0);
        let n = bytes.min((self.total as usize).saturating_sub(held)) as u32;
        if n == 0 {
            return None;
        }
        self.sem.clone().acquire_many_owned(n).await.ok()
    }
}

/// [`read_async`] within a [`ReadBudget`]: at most the budget's bytes are allocated for
/// frames read this way at once, however many streams send large frames.
pub async fn read_async_budget<T: DeserializeOwned>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    cap: usize,
    budget: &ReadBudget,
) -> Result<T, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await.map_err(header_error)?;
    let len = body_len(header, cap)?;
    let body_permit = if len > SMALL_FRAME {
        budget.take(len, None).await
    } else {
        None
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if body[0] != FLAG_ZSTD {
        return decode(&body, cap);
    }
    // The inflated payload is bounded by what its header declares (a frame that
    // inflates past it fails), else by the cap.
    let inflated = zstd::zstd_safe::get_frame_content_size(&body[1..])
        .ok()
        .flatten()
        .map(|n| n.min(cap as u64) as usize)
        .unwrap_or(cap);
    let _inflate_permit = if len + inflated > SMALL_FRAME {
        budget.take(inflated, body_permit.as_ref()).await
    } else {
        None
    };
    let r = decode(&body, inflated);
    drop(body_permit);
    r
}

/// Writes one frame to an async writer.
pub async fn write_async<T: Serialize>(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    msg: &T,
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt;
    w.write_all(&encode(msg)).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small_and_compressed() {
        let job = Job {
            family: "gcc".into(),
            compiler: CompilerAd {
                name: "gcc".into(),
                identity: [7; 32],
            },
            input: "job.i".into(),
            args: vec!["-O2".into()],
            source: b"int x;\n".repeat(5000),
            outputs: vec!["job.o".into()],
        };
        let msg = PeerRequest::Job(job);
        let frame = encode(&msg);
        assert!(frame.len() < 5000, "large repetitive payload is compressed");
        let len = body_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: PeerRequest = decode(&frame[4..], MAX_FRAME).unwrap();
        assert_eq!(back, msg);
    }

    /// Two large frames within a budget that holds one: the second is not read (nor
    /// allocated) until the first is decoded; small frames never wait.
    #[test]
    fn read_budget_bounds_frames_read_at_once() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let budget = ReadBudget::new(3 << 20);
            let big = encode(&PeerRequest::Put(Item {
                kind: EntryKind::Result,
                key: [1; 32],
                data: {
                    // Incompressible: the frame is as large as its payload.
                    let mut x = 0x9e3779b97f4a7c15u64;
                    (0..(2u32 << 20))
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                },
            }));
            assert!(big.len() > 2 << 20);
            // The first frame arrives whole; the second declares its length and stalls.
            let (mut w1, mut r1) = tokio::io::duplex(8 << 20);
            let (mut w2, mut r2) = tokio::io::duplex(8 << 20);
            w2.write_all(&big[..4]).await.unwrap();
            let second = tokio::spawn({
                let budget = budget.clone();
                async move { read_async_budget::<PeerRequest>(&mut r2, MAX_FRAME, &budget).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(
                budget.available() < 1 << 20,
                "the second frame took its length"
            );
            w1.write_all(&big).await.unwrap();
            let first = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                read_async_budget::<PeerRequest>(&mut r1, MAX_FRAME, &budget).await
            })
            .await;
            assert!(first.is_err(), "the first frame waits for the budget");
            // A small frame is read whatever the budget holds.
            let (mut w3, mut r3) = tokio::io::duplex(1 << 16);
            w3.write_all(&encode(&PeerRequest::Have {
                kind: EntryKind::Result,
                key: [2; 32],
            }))
            .await
            .unwrap();
            let small: PeerRequest = read_async_budget(&mut r3, MAX_FRAME, &budget)
                .await
                .unwrap();
            assert!(matches!(small, PeerRequest::Have { .. }));
            // The second frame completes; its bytes go back to the budget.
            w2.write_all(&big[4..]).await.unwrap();
            assert!(second.await.unwrap().is_ok());
            assert_eq!(budget.available(), 3 << 20);
        });
    }

    #[test]
    fn caps_are_checked_before_allocation() {
        assert!(matches!(
            body_len(u32::MAX.to_le_bytes(), MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            body_len(0u32.to_le_bytes(), MAX_FRAME),
            Err(FrameError::Empty)
        ));
        // A compressed frame that inflates past the cap is refused.
        let big = vec![0u8; 100_000];
        let c = zstd::bulk::compress(&big, 1).unwrap();
        let mut body = vec![FLAG_ZSTD];
        body.extend_from_slice(&c);
        assert!(decode::<PeerRequest>(&body, 1000).is_err());
    }
}
