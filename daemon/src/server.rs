//! The QUIC server: accepts peers (authenticated, not revoked, within
//! `max_peer_connections`), reads each request within its size cap and deadline, and
//! hands it to its role: the peer table (adverts), the store role, the worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use farm::protocol::{self, PeerRequest, PeerResponse, MAX_FRAME};

use crate::activity::{Finish, JobFacts, Role, Started};
use crate::node::Node;
use crate::peers::{self, LogLimit};
use crate::store_role;

/// How long a peer has to send a whole request once it opened a stream.
const REQUEST_READ: Duration = Duration::from_secs(30);

/// Refused handshakes and connections: strangers can cause as many as they like.
static REFUSED_LOG: LogLimit = LogLimit::new();
/// Members' bad requests.
static BAD_REQUEST_LOG: LogLimit = LogLimit::new();

/// Accepts peers until the endpoint closes.
pub async fn serve(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let remote = incoming.remote_address();
        // Handshakes count: at most `max_peer_connections` at once, refused beyond.
        let Ok(permit) = node.peer_conns.clone().try_acquire_owned() else {
            crate::metrics::get().count_connection_refused("limit");
            if let Some(suppressed) = REFUSED_LOG.allow() {
                tracing::warn!(%remote, suppressed, "connection refused: max_peer_connections reached");
            }
            incoming.refuse();
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Wrong CA, no certificate, wrong ALPN, garbage: refused here,
                    // before any application byte.
                    crate::metrics::get().count_connection_refused("handshake");
                    if let Some(suppressed) = REFUSED_LOG.allow() {
                        tracing::warn!(%remote, error = %e, suppressed, "handshake refused");
                    }
                    return;
                }
            };
            let Some(name) = farm::net::peer_name(&conn) else {
                conn.close(1u32.into(), b"no node name");
                return;
            };
            if node.cfg.revoked.contains(&name) {
                crate::metrics::get().count_connection_refused("revoked");
                if let Some(suppressed) = REFUSED_LOG.allow() {
                    tracing::warn!(%remote, peer = %name, suppressed, "revoked node refused");
                }
                conn.close(2u32.into(), b"revoked");
                return;
            }
            tracing::info!(%remote, peer = %name, "peer connected");
            let remote = conn.remote_address();
            while let Ok((send, recv)) = conn.accept_bi().await {
                let node = node.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_stream(&node, &name, remote, send, recv).await {
                        if let Some(suppressed) = BAD_REQUEST_LOG.allow() {
                            tracing::warn!(peer = %name, error = %e, suppressed, "bad request");
                        }
                    }
                });
            }
        });
    }
}

async fn handle_stream(
    node: &Node,
    peer: &str,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    // Frames are read within the node's read budget: many peers sending large frames
    // at once wait for each other instead of growing this process.
    let req: Result<PeerRequest, _> = match tokio::time::timeout(
        REQUEST_READ,
        protocol::read_async_budget(&mut recv, MAX_FRAME, &node.read_budget),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            let _ = send.reset(1u32.into());
            return Err(anyhow!(
                "request not complete within {} s",
                REQUEST_READ.as_secs()
            ));
        }
    };
    let resp = match req {
        Ok(r) => answer(node, peer, remote, r).await,
        Err(e) => {
            // Garbage or an oversized frame: one clear answer, then the stream ends.
            let msg = format!("{}: malformed request: {e}", node.name);
            let _ = protocol::write_async(&mut send, &PeerResponse::Refused(msg.clone())).await;
            let _ = send.finish();
            return Err(anyhow!(msg));
        }
    };
    protocol::write_async(&mut send, &resp).await?;
    send.finish()?;
    // Let the answer drain before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(30), send.stopped()).await;
    Ok(())
}

async fn answer(node: &Node, peer: &str, remote: SocketAddr, req: PeerRequest) -> PeerResponse {
    match req {
        PeerRequest::Advert(a) => {
            PeerResponse::Advert(peers::on_advert(node, peer, remote, a).await)
        }
        PeerRequest::Get { kind, key } => store_role::get(node, kind, key),
        PeerRequest::Have { kind, key } => store_role::have(node, kind, key),
        PeerRequest::Put(item) => store_role::put(node, item),
        PeerRequest::Job(job) => {
            let started = served(node, peer, "text", &job.family, &job.compiler, &job);
            let r = crate::worker::run(node, peer, job).await;
            finish_served(node, started, r)
        }
        PeerRequest::HaveBlobs(digests) => store_role::have_blobs(node, &digests),
        PeerRequest::PutBlobs(blobs) => store_role::put_blobs(node, &blobs),
        PeerRequest::TreeJob(job) => {
            let started = served(node, peer, "tree", &job.family, &job.compiler, &job);
            let r = crate::worker::run_tree(node, peer, job).await;
            finish_served(node, started, r)
        }
        PeerRequest::PathJob(job) => {
            let started = served(node, peer, "paths", &job.family, &job.compiler, &*job);
            let r = crate::worker::run_paths(node, peer, *job).await;
            finish_served(node, started, r)
        }
    }
}

/// A peer's job starting here, as the activity feed records it.
fn served<T: serde::Serialize>(
    node: &Node,
    peer: &str,
    shape: &'static str,
    family: &str,
    compiler: &farm::protocol::CompilerAd,
    job: &T,
) -> Started {
    node.activity.start(JobFacts {
        role: Role::Served,
        shape,
        family,
        compiler,
        submitter: format!("node:{peer}"),
        peer,
        digest: farm::protocol::message_digest(job),
    })
}

fn finish_served(node: &Node, started: Started, r: PeerResponse) -> PeerResponse {
    let (outcome, compile_ms) = match &r {
        PeerResponse::Done(d) => (d.exit_code, Some(d.compile_ms)),
        PeerResponse::TreeDone(d) => (d.exit_code, Some(d.compile_ms)),
        _ => (-1, None),
    };
    let outcome = match (&r, outcome) {
        (PeerResponse::Refused(_), _) => "refused",
        (_, 0) => "ok",
        (_, -1) if compile_ms.is_none() => "protocol",
        _ => "failed",
    };
    node.activity.finish(
        started,
        Finish {
            outcome,
            compile_ms,
            queue_ms: None,
            worker: None,
        },
    );
    r
}
