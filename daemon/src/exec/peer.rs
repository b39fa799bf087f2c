//! A farm peer over QUIC: [`request`], the one call every role makes of a peer
//! (adverts, cache lookups and publications, jobs), and [`QuicPeer`], the executor
//! that runs shipped jobs there.

use std::fmt;
use std::time::Duration;

use farm::protocol::{
    self, Blob, Job, JobResult, PathJob, PeerRequest, PeerResponse, ToolKind, TreeJob, TreeResult,
    MAX_CONTROL_FRAME, MAX_FRAME,
};

use super::{BlobSource, ExecError, ExecFuture, Executor};

/// Why a request to a peer brought no answer.
#[derive(Debug)]
pub enum RequestError {
    /// None within the deadline.
    Timeout(Duration),
    /// The stream or the answer's frame failed.
    Failed(anyhow::Error),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
            RequestError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<RequestError> for ExecError {
    fn from(e: RequestError) -> ExecError {
        match e {
            RequestError::Timeout(_) => ExecError::Timeout(e.to_string()),
            RequestError::Failed(_) => ExecError::Transport(e.to_string()),
        }
    }
}

/// One request on a fresh stream of `conn`, answered within `deadline`.
pub async fn request(
    conn: &quinn::Connection,
    req: &PeerRequest,
    cap: usize,
    deadline: Duration,
) -> Result<PeerResponse, RequestError> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        protocol::write_async(&mut send, req).await?;
        send.finish()?;
        let resp: PeerResponse = protocol::read_async(&mut recv, cap).await?;
        anyhow::Ok(resp)
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r.map_err(RequestError::Failed),
        Err(_) => Err(RequestError::Timeout(deadline)),
    }
}

/// Runs jobs on one farm peer over its QUIC connection.
pub struct QuicPeer {
    conn: quinn::Connection,
}

impl QuicPeer {
    pub fn new(conn: quinn::Connection) -> QuicPeer {
        QuicPeer { conn }
    }

    /// Gives the peer the blobs of a tree job it lacks (from `blobs`), then the job.
    async fn send_tree(
        &self,
        job: &TreeJob,
        blobs: &dyn BlobSource,
        limit: Duration,
    ) -> Result<TreeResult, ExecError> {
        let digests: Vec<[u8; 32]> = job.files.iter().map(|f| f.digest).collect();
        self.send_blobs(digests, blobs, limit).await?;
        match request(
            &self.conn,
            &PeerRequest::TreeJob(job.clone()),
            MAX_FRAME,
            limit,
        )
        .await?
        {
            PeerResponse::TreeDone(r) => Ok(r),
            other => Err(not_a_result(other)),
        }
    }

    /// Gives the peer the blobs of a same-path job it lacks (inputs and toolchain
    /// files), then the job.
    async fn send_paths(
        &self,
        job: &PathJob,
        blobs: &dyn BlobSource,
        limit: Duration,
    ) -> Result<TreeResult, ExecError> {
        let mut digests: Vec<[u8; 32]> = job.files.iter().map(|f| f.digest).collect();
        for e in &job.toolchain.entries {
            if let ToolKind::File { digest, .. } = &e.kind {
                digests.push(*digest);
            }
        }
        self.send_blobs(digests, blobs, limit).await?;
        let req = PeerRequest::PathJob(Box::new(job.clone()));
        match request(&self.conn, &req, MAX_FRAME, limit).await? {
            PeerResponse::TreeDone(r) => Ok(r),
            other => Err(not_a_result(other)),
        }
    }

    /// Asks which of `digests` the peer lacks and sends those from `blobs`.
    async fn send_blobs(
        &self,
        mut digests: Vec<[u8; 32]>,
        blobs: &dyn BlobSource,
        limit: Duration,
    ) -> Result<(), ExecError> {
        let conn = &self.conn;
        // What goes wrong in the blob exchange is a transport failure (`peer_error`)
        // unless the peer refuses; only the job's own answer can break the protocol.
        digests.sort();
        digests.dedup();
        let control = Duration::from_secs(10) + conn.rtt() * 4;
        let missing =
            match request(conn, &PeerRequest::HaveBlobs(digests), MAX_FRAME, control).await? {
                PeerResponse::MissingBlobs(m) => m,
                PeerResponse::Refused(why) => return Err(ExecError::Refused(why)),
                _ => {
                    return Err(ExecError::Transport(
                        "unexpected answer to have-blobs".into(),
                    ))
                }
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
                PeerResponse::Stored => Ok(()),
                PeerResponse::Refused(why) => Err(ExecError::Refused(why)),
                _ => Err(ExecError::Transport(
                    "unexpected answer to put-blobs".into(),
                )),
            }
        };
        for d in missing {
            let Some(data) = blobs.blob(&d) else {
                return Err(ExecError::Transport(format!(
                    "blob {} is not in this node's store",
                    farm::fsutil::hex(&d[..8])
                )));
            };
            bytes += data.len();
            batch.push(Blob { digest: d, data });
            if bytes > 16 << 20 {
                flush(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            flush(batch).await?;
        }
        Ok(())
    }
}

/// A peer's answer to a job that is not its result.
fn not_a_result(resp: PeerResponse) -> ExecError {
    match resp {
        PeerResponse::Refused(why) => ExecError::Refused(why),
        _ => ExecError::Protocol("unexpected answer to a job".into()),
    }
}

impl Executor for QuicPeer {
    fn run_job<'a>(&'a self, job: &'a Job, limit: Duration) -> ExecFuture<'a, JobResult> {
        Box::pin(async move {
            match request(&self.conn, &PeerRequest::Job(job.clone()), MAX_FRAME, limit).await? {
                PeerResponse::Done(r) => Ok(r),
                other => Err(not_a_result(other)),
            }
        })
    }

    fn run_tree<'a>(
        &'a self,
        job: &'a TreeJob,
        blobs: &'a dyn BlobSource,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        Box::pin(self.send_tree(job, blobs, limit))
    }

    fn run_paths<'a>(
        &'a self,
        job: &'a PathJob,
        blobs: &'a dyn BlobSource,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        Box::pin(self.send_paths(job, blobs, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_failures_become_timeouts_or_transport_errors_with_their_words() {
        let t: ExecError = RequestError::Timeout(Duration::from_millis(1500)).into();
        assert_eq!(t, ExecError::Timeout("no answer within 1500 ms".into()));
        let f: ExecError = RequestError::Failed(anyhow::anyhow!("connection lost")).into();
        assert_eq!(f, ExecError::Transport("connection lost".into()));
    }

    #[test]
    fn answers_that_are_not_results() {
        assert_eq!(
            not_a_result(PeerResponse::Refused("w: busy".into())),
            ExecError::Refused("w: busy".into())
        );
        assert_eq!(
            not_a_result(PeerResponse::Stored),
            ExecError::Protocol("unexpected answer to a job".into())
        );
    }
}
