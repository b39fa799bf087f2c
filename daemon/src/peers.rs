//! The peer table: which peers this node knows (configured, learned from their own
//! adverts, or second-hand from others' lists), the connection and executor to each,
//! and what they advertise. Dialing, the capacity gossip, learning and expiring
//! entries, and the checks on a peer's advert live here. What placement measures of a
//! peer is kept in its entry but written by `crate::placement` only.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use farm::protocol::{self, Advert, CompilerAd, PeerRequest, PeerResponse, MAX_CONTROL_FRAME};

use crate::exec::peer::{request, QuicPeer};
use crate::exec::Executor;
use crate::node::Node;

/// A peer that has not answered an advert for this long leaves the table's live set.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
const RECENT_FAILURES: usize = 5;
/// Entries in the peer table, configured peers included.
pub const MAX_PEERS: usize = 1024;
/// A learned entry that has not been live for this long leaves the table.
pub const PEER_EXPIRY: Duration = Duration::from_secs(60);
const GOSSIP_EVERY: Duration = Duration::from_millis(1000);

/// Where an address in the peer table comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The configuration's `peers`: kept for good.
    Config,
    /// A peer's advert of its own address, from the address it connected from.
    Verified,
    /// A peer's list of its live peers: second-hand, never trusted over the others.
    Gossip,
}

#[derive(Default)]
pub struct Peer {
    /// The name its certificate carries, once connected.
    pub node: String,
    pub conn: Option<quinn::Connection>,
    /// Runs jobs over `conn`; set and cleared with it.
    pub executor: Option<Arc<dyn Executor>>,
    pub dialing: bool,
    pub next_dial: Option<Instant>,
    pub backoff: Duration,
    pub advert: Option<Advert>,
    pub last_heard: Option<Instant>,
    pub rtt: Duration,
    /// Jobs this node sent there that have not come back.
    pub inflight: u32,
    pub ok: u64,
    pub failed: u64,
    pub recent_failures: VecDeque<String>,
    /// Round-trip time of a job there (ms), smoothed.
    pub job_ms: Option<f64>,
    /// When a job there last came back.
    pub last_job: Option<Instant>,
    /// Jobs sent there since its last advert (which cannot count them yet).
    pub sent_since_advert: u32,
    /// Listed in the configuration: never expires, never evicted.
    pub configured: bool,
    /// Learned from the peer itself (or configured), not from another's list.
    pub firsthand: bool,
    /// This node connected there at least once.
    pub connected_once: bool,
    /// When it was learned, or last connected or answered an advert.
    pub touched: Option<Instant>,
}

impl Peer {
    pub fn live(&self, now: Instant) -> bool {
        self.conn
            .as_ref()
            .map(|c| c.close_reason().is_none())
            .unwrap_or(false)
            && self
                .last_heard
                .map(|t| now.duration_since(t) < LIVE_WINDOW)
                .unwrap_or(false)
            && self
                .advert
                .as_ref()
                .map(|a| a.version == protocol::VERSION)
                .unwrap_or(false)
    }

    pub fn runs(&self, c: &CompilerAd) -> bool {
        self.advert
            .as_ref()
            .map(|a| a.compilers.iter().any(|x| x == c))
            .unwrap_or(false)
    }

    pub fn failure(&mut self, why: String) {
        self.failed += 1;
        if self.recent_failures.len() == RECENT_FAILURES {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(why);
    }

    fn connected(&mut self, conn: quinn::Connection) {
        self.executor = Some(Arc::new(QuicPeer::new(conn.clone())));
        self.conn = Some(conn);
    }

    /// The connection is gone: dial again at `redial`.
    fn disconnected(&mut self, redial: Instant) {
        self.conn = None;
        self.executor = None;
        self.next_dial = Some(redial);
    }
}

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

/// Adverts of addresses their members do not connect from.
static ADDR_LOG: LogLimit = LogLimit::new();

/// Adds an address to the table, or refreshes it. The table holds at most
/// [`MAX_PEERS`] entries and keeps room for the configured peers; when it is full,
/// the oldest learned entry this node never connected to makes room (second-hand
/// ones first; a second-hand address only ever replaces another). Returns whether
/// the address is in the table.
pub fn learn(node: &Node, addr: &str, source: Source) -> bool {
    if addr == node.cfg.advertise || addr.is_empty() || addr.len() > 256 {
        return false;
    }
    let now = Instant::now();
    let configured = source == Source::Config || node.cfg.peers.iter().any(|p| p == addr);
    let firsthand = configured || source == Source::Verified;
    let mut peers = node.peers.lock().unwrap();
    if let Some(p) = peers.get_mut(addr) {
        p.configured |= configured;
        if firsthand {
            p.firsthand = true;
            p.touched = Some(now);
        }
        return true;
    }
    if !configured {
        let room = MAX_PEERS.saturating_sub(node.cfg.peers.len());
        let learned = peers.values().filter(|p| !p.configured).count();
        if learned >= room {
            let victim = peers
                .iter()
                .filter(|(_, p)| {
                    !p.configured
                        && !p.connected_once
                        && p.inflight == 0
                        && (firsthand || !p.firsthand)
                })
                .min_by_key(|(_, p)| (p.firsthand, p.touched))
                .map(|(a, _)| a.clone());
            match victim {
                Some(v) => {
                    peers.remove(&v);
                }
                None => return false,
            }
        }
    }
    peers.insert(
        addr.to_string(),
        Peer {
            backoff: Duration::from_millis(250),
            configured,
            firsthand,
            touched: Some(now),
            ..Peer::default()
        },
    );
    true
}

/// Drops learned entries that have not been live for [`PEER_EXPIRY`].
pub fn expire(node: &Node) -> usize {
    let now = Instant::now();
    let mut peers = node.peers.lock().unwrap();
    let before = peers.len();
    peers.retain(|_, p| {
        p.configured
            || p.inflight > 0
            || p.live(now)
            || p.touched
                .map(|t| now.duration_since(t) < PEER_EXPIRY)
                .unwrap_or(false)
    });
    before - peers.len()
}

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

/// A peer's advert, sent to this node from `remote`: answered with this node's.
pub async fn on_advert(node: &Node, peer: &str, remote: SocketAddr, a: Advert) -> Advert {
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
        learn(node, &a.addr, Source::Verified);
    } else if let Some(suppressed) = ADDR_LOG.allow() {
        tracing::debug!(peer = %peer, %remote, addr = %a.addr, suppressed,
            "advertised address is not the one it connects from: ignored");
    }
    node.advert()
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Handshakes with peers that failed (not merely unanswered ones).
static DIAL_LOG: LogLimit = LogLimit::new();

/// Dials a peer and records the connection, or schedules the next try.
async fn dial(node: Arc<Node>, addr: String) {
    // A peer that answers but whose handshake fails (a certificate this node cannot
    // accept, or that refuses this node's: another CA, a clock outside the
    // certificates' validity) is logged at warn: it will not join until someone acts.
    // One that does not answer at all is only debug: peers come and go.
    let mut refused = false;
    let result = async {
        let sa = resolve(&addr)
            .await
            .ok_or_else(|| anyhow!("cannot resolve {addr}"))?;
        let connecting = node.endpoint.connect(sa, farm::net::SERVER_NAME)?;
        let conn = match tokio::time::timeout(Duration::from_secs(3), connecting).await {
            Err(_) => return Err(anyhow!("handshake timed out")),
            Ok(Err(quinn::ConnectionError::TimedOut)) => {
                return Err(anyhow!("handshake timed out"))
            }
            Ok(Err(e)) => {
                refused = true;
                return Err(anyhow!("handshake failed: {e}"));
            }
            Ok(Ok(c)) => c,
        };
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
            p.connected(conn);
            p.connected_once = true;
            p.touched = Some(Instant::now());
            p.backoff = Duration::from_millis(250);
        }
        Err(e) => {
            if !refused {
                tracing::debug!(%addr, error = %e, "cannot reach peer");
            } else if let Some(suppressed) = DIAL_LOG.allow() {
                tracing::warn!(%addr, error = %e, suppressed, "cannot connect to peer");
            }
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
                    p.disconnected(Instant::now());
                }
            }
        }
    }
    for a in learned {
        learn(&node, &a, Source::Gossip);
    }
}

/// The gossip loop: keeps a connection to every known peer and exchanges adverts
/// about every second, sooner when this node's free capacity changes.
pub async fn gossip(node: Arc<Node>) {
    for p in &node.cfg.peers {
        learn(&node, p, Source::Config);
    }
    let mut last_free = u32::MAX;
    loop {
        let expired = expire(&node);
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
                        let redial = now + p.backoff;
                        p.disconnected(redial);
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
