//! The executor seam: something that runs a shipped job and answers with its result.
//! Placement (`crate::placement`) chooses an executor per job, sets its deadline,
//! retries elsewhere and keeps every measurement; an executor only carries one job
//! there and back. `peer` runs jobs on a farm peer over QUIC. A new kind (a REAPI
//! server, say) is one more file here implementing [`Executor`], plus its
//! construction.

pub mod peer;
pub mod reapi;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use farm::protocol::{Job, JobResult, PathJob, TreeJob, TreeResult};

/// What an executor's calls return: a boxed future, so that `dyn Executor` works.
pub type ExecFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ExecError>> + Send + 'a>>;

/// Something that runs a shipped job: a text job (one source in, one object out) or
/// a tree job (input files by digest in, output directories out).
pub trait Executor: Send + Sync {
    /// Runs a text job, answered within `limit`.
    fn run_job<'a>(&'a self, job: &'a Job, limit: Duration) -> ExecFuture<'a, JobResult>;

    /// Runs a tree job, answered within `limit`: first hands the executor the input
    /// blobs it lacks, from `blobs`.
    fn run_tree<'a>(
        &'a self,
        job: &'a TreeJob,
        blobs: &'a dyn BlobSource,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult>;

    /// Runs a same-path job, answered within `limit`: first hands the executor the
    /// input and toolchain blobs it lacks, from `blobs`.
    fn run_paths<'a>(
        &'a self,
        job: &'a PathJob,
        blobs: &'a dyn BlobSource,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult>;
}

/// Where an executor gets the content of a tree job's input files.
pub trait BlobSource: Sync {
    /// The blob with this digest, if this node has it.
    fn blob(&self, digest: &[u8; 32]) -> Option<Vec<u8>>;
}

impl BlobSource for crate::blobs::BlobStore {
    fn blob(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.get(digest)
    }
}

/// Why an executor did not bring a result back. Each carries the detail that the
/// peer table's recent failures show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// The executor would not run the job (a flag, a limit, a full queue): its words.
    Refused(String),
    /// No answer within the deadline.
    Timeout(String),
    /// It answered the job with something that is not a result.
    Protocol(String),
    /// Anything else on the way there and back: a lost connection, an unreadable
    /// answer, a blob exchange that went wrong.
    Transport(String),
}

impl ExecError {
    /// The detail: the executor's words or what went wrong.
    pub fn detail(&self) -> &str {
        match self {
            ExecError::Refused(s)
            | ExecError::Timeout(s)
            | ExecError::Protocol(s)
            | ExecError::Transport(s) => s,
        }
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for ExecError {}
