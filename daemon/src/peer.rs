//! The peer protocol over QUIC: serving peers' requests (store and worker roles),
//! sending requests to peers, dialing them, and the capacity gossip.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use farm::cache::{CacheKey, EntryKind, Store};
use farm::key::manifest;
use farm::protocol::{self, Item, Kind, PeerRequest, PeerResponse, MAX_CONTROL_FRAME, MAX_FRAME};

use crate::node::{Node, Source};

/// How long a peer has to send a whole request once it opened a stream.
const REQUEST_READ: Duration = Duration::from_secs(30);
const GOSSIP_EVERY: Duration = Duration::from_millis(1000);

/// At most one log line a second for events anyone on the network can cause, with
/// the count of those not logged since the last line.
pub struct LogLimit(Mutex<(Option<Instant>, u64)>);

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit(Mutex::new((None, 0)))
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap();
        let now = Instant::now();
        match g.0 {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                g.1 += 1;
                None
            }
            _ => {
                g.0 = Some(now);
                Some(std::mem::take(&mut g.1))
            }
        }
    }
}

/// Refused handshakes and connections: strangers can cause as many as they like.
static REFUSED_LOG: LogLimit = LogLimit::new();
/// Members' bad requests and adverts of addresses they do not connect from.
static BAD_REQUEST_LOG: LogLimit = LogLimit::new();
static ADDR_LOG: LogLimit = LogLimit::new();

/// Whether `addr` (`host:port`) names the IP a peer connects from.
async fn addr_is_from(addr: &str, remote: SocketAddr) -> bool {
    let ip = remote.ip().to_canonical();
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().to_canonical() == ip;
    }
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(addr)).await {
        Ok(Ok(mut found)) => found.any(|sa| sa.ip().to_canonical() == ip),
        _ => false,
    }
}

/// One request on a fresh stream of `conn`, answered within `deadline`.
pub async fn request(
    conn: &quinn::Connection,
    req: &PeerRequest,
    cap: usize,
    deadline: Duration,
) -> Result<PeerResponse> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        protocol::write_async(&mut send, req).await?;
        send.finish()?;
        let resp: PeerResponse = protocol::read_async(&mut recv, cap).await?;
        anyhow::Ok(resp)
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("no answer within {} ms", deadline.as_millis())),
    }
}

/// Accepts peers until the endpoint closes.
pub async fn serve(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let remote = incoming.remote_address();
        // Handshakes count: at most `max_peer_connections` at once, refused beyond.
        let Ok(permit) = node.peer_conns.clone().try_acquire_owned() else {
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
            // A peer that speaks to us is one we speak to as well, at the address it
            // advertises, if that is where it connects from: a member cannot fill the
            // table with addresses of machines it is not.
            // An address this node already reached this peer at needs no new lookup.
            let known = node
                .peers
                .lock()
                .unwrap()
                .get(&a.addr)
                .map(|p| p.connected_once && p.node == peer)
                .unwrap_or(false);
            if known || addr_is_from(&a.addr, remote).await {
                node.learn(&a.addr, Source::Verified);
            } else if let Some(suppressed) = ADDR_LOG.allow() {
                tracing::debug!(peer = %peer, %remote, addr = %a.addr, suppressed,
                    "advertised address is not the one it connects from: ignored");
            }
            PeerResponse::Advert(node.advert())
        }
        PeerRequest::Get { kind, key } => match node.store.get(entry_kind(kind), &CacheKey(key)) {
            Ok(v) => PeerResponse::Entry(v.map(serde_bytes::ByteBuf::from)),
            Err(e) => {
                tracing::warn!(error = %e, "store read failed");
                PeerResponse::Entry(None)
            }
        },
        PeerRequest::Have { kind, key } => PeerResponse::Have(
            node.store
                .entry_path(entry_kind(kind), &CacheKey(key))
                .exists(),
        ),
        PeerRequest::Put(item) => match store_item(node, item) {
            Ok(()) => PeerResponse::Stored,
            Err(why) => PeerResponse::Refused(format!("{}: {why}", node.name)),
        },
        PeerRequest::Job(job) => crate::worker::run(node, peer, job).await,
        PeerRequest::HaveBlobs(digests) => PeerResponse::MissingBlobs(node.blobs.missing(&digests)),
        PeerRequest::PutBlobs(blobs) => match node.blobs.put(&blobs) {
            Ok(()) => PeerResponse::Stored,
            Err(why) => PeerResponse::Refused(format!("{}: {why}", node.name)),
        },
        PeerRequest::TreeJob(job) => crate::worker::run_tree(node, peer, job).await,
    }
}

pub fn entry_kind(kind: Kind) -> EntryKind {
    match kind {
        Kind::Result => EntryKind::Result,
        Kind::Manifest => EntryKind::Manifest,
    }
}

/// Stores an entry for the farm's cache. Results must decode as result entries;
/// manifests are merged with the one stored (newest entries first, capped), so every
/// machine's recordings of one source are kept.
pub fn store_item(node: &Node, item: Item) -> Result<(), String> {
    let key = CacheKey(item.key);
    match item.kind {
        Kind::Result => {
            if farm::key::ResultEntry::decode(&item.data).is_none() {
                return Err("not a result entry".into());
            }
            node.store
                .put(EntryKind::Result, &key, &item.data)
                .map_err(|e| format!("store: {e}"))?;
        }
        Kind::Manifest => {
            // One writer at a time per node: merges must not lose entries.
            let _guard = node.manifest_lock.lock().unwrap();
            let stored = node.store.get(EntryKind::Manifest, &key).ok().flatten();
            let Some(merged) = manifest::merge(stored.as_deref(), &item.data) else {
                return Err("not a manifest".into());
            };
            node.store
                .put(EntryKind::Manifest, &key, &merged)
                .map_err(|e| format!("store: {e}"))?;
        }
    }
    Ok(())
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Dials a peer and records the connection, or schedules the next try.
async fn dial(node: Arc<Node>, addr: String) {
    let result = async {
        let sa = resolve(&addr)
            .await
            .ok_or_else(|| anyhow!("cannot resolve {addr}"))?;
        let connecting = node.endpoint.connect(sa, farm::net::SERVER_NAME)?;
        let conn = tokio::time::timeout(Duration::from_secs(3), connecting)
            .await
            .map_err(|_| anyhow!("handshake timed out"))??;
        let name = farm::net::peer_name(&conn).ok_or_else(|| anyhow!("peer has no node name"))?;
        if node.cfg.revoked.contains(&name) {
            conn.close(2u32.into(), b"revoked");
            return Err(anyhow!("peer {name} is revoked"));
        }
        if name == node.name {
            conn.close(3u32.into(), b"self");
            return Err(anyhow!("{addr} is this node"));
        }
        anyhow::Ok((conn, name))
    }
    .await;
    let mut peers = node.peers.lock().unwrap();
    let Some(p) = peers.get_mut(&addr) else {
        return;
    };
    p.dialing = false;
    match result {
        Ok((conn, name)) => {
            tracing::info!(peer = %name, %addr, "connected to peer");
            p.node = name;
            p.conn = Some(conn);
            p.connected_once = true;
            p.touched = Some(Instant::now());
            p.backoff = Duration::from_millis(250);
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "cannot reach peer");
            p.backoff = (p.backoff * 2).min(Duration::from_secs(5));
            p.next_dial = Some(Instant::now() + p.backoff);
        }
    }
}

/// Sends this node's advert to one peer and records its answer.
async fn exchange(node: Arc<Node>, addr: String, conn: quinn::Connection) {
    let t0 = Instant::now();
    let r = request(
        &conn,
        &PeerRequest::Advert(node.advert()),
        MAX_CONTROL_FRAME,
        Duration::from_secs(2),
    )
    .await;
    let mut learned = Vec::new();
    {
        let mut peers = node.peers.lock().unwrap();
        let Some(p) = peers.get_mut(&addr) else {
            return;
        };
        match r {
            Ok(PeerResponse::Advert(a)) => {
                if a.version != protocol::VERSION {
                    tracing::warn!(peer = %p.node, version = a.version, "peer speaks another protocol version");
                }
                p.rtt = conn.rtt().min(t0.elapsed());
                p.last_heard = Some(Instant::now());
                p.touched = p.last_heard;
                learned = a.peers.clone();
                p.advert = Some(a);
                p.sent_since_advert = 0;
            }
            Ok(_) => {
                tracing::warn!(peer = %p.node, "peer answered an advert with something else");
            }
            Err(e) => {
                if conn.close_reason().is_some() {
                    tracing::info!(peer = %p.node, error = %e, "peer connection lost");
                    p.conn = None;
                    p.next_dial = Some(Instant::now());
                }
            }
        }
    }
    for a in learned {
        node.learn(&a, Source::Gossip);
    }
}

/// The gossip loop: keeps a connection to every known peer and exchanges adverts
/// about every second, sooner when this node's free capacity changes.
pub async fn gossip(node: Arc<Node>) {
    for p in &node.cfg.peers {
        node.learn(p, Source::Config);
    }
    let mut last_free = u32::MAX;
    loop {
        let expired = node.expire_peers();
        if expired > 0 {
            tracing::debug!(expired, "learned peers not live for a minute dropped");
        }
        let now = Instant::now();
        let mut dials = Vec::new();
        let mut talks = Vec::new();
        {
            let mut peers = node.peers.lock().unwrap();
            for (addr, p) in peers.iter_mut() {
                if let Some(c) = &p.conn {
                    if c.close_reason().is_some() {
                        tracing::info!(peer = %p.node, "peer connection closed");
                        p.conn = None;
                        p.next_dial = Some(now + p.backoff);
                    }
                }
                match &p.conn {
                    Some(c) => talks.push((addr.clone(), c.clone())),
                    None if !p.dialing && p.next_dial.map(|t| now >= t).unwrap_or(true) => {
                        p.dialing = true;
                        dials.push(addr.clone());
                    }
                    None => {}
                }
            }
        }
        for addr in dials {
            tokio::spawn(dial(node.clone(), addr));
        }
        for (addr, conn) in talks {
            tokio::spawn(exchange(node.clone(), addr, conn));
        }
        if node.stopping.load(Ordering::Relaxed) {
            return;
        }
        // Sooner when capacity changed, but not more than ten times a second.
        let sleep = tokio::time::sleep(GOSSIP_EVERY);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = node.changed.notified() => {
                    let free = node.free_slots();
                    if free != last_free {
                        last_free = free;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    }
}
