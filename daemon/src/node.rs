//! One farmd's shared state: its identity, its compilers, its store, and the table of
//! peers with what they advertise and what this node measured of them.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farm::cache::LocalStore;
use farm::protocol::{Advert, CompilerAd, PeerStatus, StatusReport, VERSION};
use tokio::sync::{Notify, Semaphore};

use crate::config::DaemonConfig;

/// A peer that has not answered an advert for this long leaves the table's live set.
pub const LIVE_WINDOW: Duration = Duration::from_secs(5);
const RECENT_FAILURES: usize = 5;
/// Entries in the peer table, configured peers included.
pub const MAX_PEERS: usize = 1024;
/// A learned entry that has not been live for this long leaves the table.
pub const PEER_EXPIRY: Duration = Duration::from_secs(60);

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

/// A compiler this node runs for peers.
#[derive(Clone, Debug)]
pub struct AllowedCompiler {
    pub name: String,
    pub path: PathBuf,
    pub identity: [u8; 32],
}

#[derive(Default)]
pub struct Peer {
    /// The name its certificate carries, once connected.
    pub node: String,
    pub conn: Option<quinn::Connection>,
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
                .map(|a| a.version == VERSION)
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
}

pub struct Node {
    pub cfg: DaemonConfig,
    pub name: String,
    /// This machine's boot id (see `Advert::host`).
    pub host: String,
    pub compilers: Vec<AllowedCompiler>,
    /// Warm compilers for this machine's shims and for tree jobs.
    pub warm: crate::warm::WarmPool,
    /// The job sandbox; `None` when it cannot run here (then this node runs no jobs
    /// for peers and advertises no compilers).
    pub sandbox: Option<crate::worker::sandbox::Sandbox>,
    /// Input files of tree jobs, by digest.
    pub blobs: crate::blobs::BlobStore,
    pub store: LocalStore,
    pub endpoint: quinn::Endpoint,
    pub slots: Arc<Semaphore>,
    pub queue: AtomicU32,
    pub running: AtomicU32,
    /// Peers by the address this node dials.
    pub peers: Mutex<HashMap<String, Peer>>,
    /// Compiles the agent sent home that are still running.
    pub local_running: AtomicU32,
    /// Local compile time (ms), smoothed; 0 until measured.
    pub local_ms: Mutex<f64>,
    /// Local compile time on an uncontended CPU (ms), smoothed; 0 until measured.
    pub local_base_ms: Mutex<f64>,
    /// When a home compile last reported its time.
    pub local_last: Mutex<Option<Instant>>,
    /// Worker time per MiB of shipped source (ms), smoothed, for job deadlines.
    pub ms_per_mib: Mutex<f64>,
    pub stopping: AtomicBool,
    pub started: Instant,
    pub jobs_served: AtomicU64,
    pub jobs_refused: AtomicU64,
    pub job_seq: AtomicU64,
    /// Agent requests being answered (SIGTERM waits for them).
    pub agent_busy: AtomicU32,
    /// Wakes the gossip loop early when free capacity changes.
    pub changed: Notify,
    /// Serializes manifest merges in the store.
    pub manifest_lock: Mutex<()>,
    /// Peer connections served at once (`max_peer_connections`).
    pub peer_conns: Arc<Semaphore>,
    /// Bytes of peers' request frames being read at once (`peer_read_budget`).
    pub read_budget: farm::protocol::ReadBudget,
    /// The same for this machine's shims on the agent socket (a budget of its own, so
    /// local users and peers cannot starve each other).
    pub agent_read_budget: farm::protocol::ReadBudget,
}

pub fn ewma(old: f64, sample: f64) -> f64 {
    if old <= 0.0 {
        sample
    } else {
        0.7 * old + 0.3 * sample
    }
}

fn load_milli() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|l| (l * 1000.0) as u32)
        .unwrap_or(0)
}

/// The running kernel's boot id: the same for every farmd on one machine (network
/// namespaces and containers included), different on every other machine.
pub fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Processes running or runnable now (not counting the reader).
pub fn runnable() -> u32 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("procs_running"))
                .and_then(|v| v.trim().parse::<u32>().ok())
        })
        .map(|n| n.saturating_sub(1))
        .unwrap_or(0)
}

pub fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// How much longer than on an idle CPU a job takes when `busy` others run on `cpus`.
pub fn contention(busy: u32, cpus: u32) -> f64 {
    ((busy as f64 + 1.0) / cpus.max(1) as f64).max(1.0)
}

fn free_mem_mb() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

impl Node {
    pub fn free_slots(&self) -> u32 {
        if self.stopping.load(Ordering::Relaxed) {
            0
        } else {
            self.slots.available_permits() as u32
        }
    }

    pub fn advert(&self) -> Advert {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap();
        Advert {
            version: VERSION,
            node: self.name.clone(),
            addr: self.cfg.advertise.clone(),
            slots: self.cfg.slots,
            free: self.free_slots(),
            queue: self.queue.load(Ordering::Relaxed),
            load_milli: load_milli(),
            cores: cores(),
            runnable: runnable(),
            host: self.host.clone(),
            free_mem_mb: free_mem_mb(),
            compilers: self
                .compilers
                .iter()
                .filter(|_| self.sandbox.is_some())
                .map(|c| CompilerAd {
                    name: c.name.clone(),
                    identity: c.identity,
                })
                .collect(),
            peers: peers
                .iter()
                .filter(|(_, p)| p.live(now))
                .map(|(a, _)| a.clone())
                .collect(),
        }
    }

    /// Adds an address to the table, or refreshes it. The table holds at most
    /// [`MAX_PEERS`] entries and keeps room for the configured peers; when it is full,
    /// the oldest learned entry this node never connected to makes room (second-hand
    /// ones first; a second-hand address only ever replaces another). Returns whether
    /// the address is in the table.
    pub fn learn(&self, addr: &str, source: Source) -> bool {
        if addr == self.cfg.advertise || addr.is_empty() || addr.len() > 256 {
            return false;
        }
        let now = Instant::now();
        let configured = source == Source::Config || self.cfg.peers.iter().any(|p| p == addr);
        let firsthand = configured || source == Source::Verified;
        let mut peers = self.peers.lock().unwrap();
        if let Some(p) = peers.get_mut(addr) {
            p.configured |= configured;
            if firsthand {
                p.firsthand = true;
                p.touched = Some(now);
            }
            return true;
        }
        if !configured {
            let room = MAX_PEERS.saturating_sub(self.cfg.peers.len());
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
    pub fn expire_peers(&self) -> usize {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap();
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

    /// The node that holds `key` in the farm's cache: rendezvous hashing over this
    /// node and its live peers. `None` means this node.
    pub fn home_of(&self, key: &[u8; 32]) -> Option<(String, quinn::Connection)> {
        let score = |name: &str| {
            let mut h = blake3::Hasher::new();
            h.update(key);
            h.update(name.as_bytes());
            u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
        };
        let now = Instant::now();
        let mut best = score(&self.name);
        let mut home = None;
        for p in self.peers.lock().unwrap().values() {
            if !p.live(now) {
                continue;
            }
            let s = score(&p.node);
            if s > best {
                best = s;
                home = p.conn.clone().map(|c| (p.node.clone(), c));
            }
        }
        home
    }

    pub fn status(&self) -> StatusReport {
        let now = Instant::now();
        let local_ms = *self.local_ms.lock().unwrap();
        let peers = self.peers.lock().unwrap();
        let mut list: Vec<PeerStatus> = peers
            .iter()
            .map(|(addr, p)| {
                let a = p.advert.clone().unwrap_or_default();
                PeerStatus {
                    node: if p.node.is_empty() {
                        "?".into()
                    } else {
                        p.node.clone()
                    },
                    addr: addr.clone(),
                    live: p.live(now),
                    slots: a.slots,
                    free: a.free,
                    queue: a.queue,
                    load_milli: a.load_milli,
                    free_mem_mb: a.free_mem_mb,
                    rtt_us: p.rtt.as_micros() as u64,
                    compilers: a.compilers.iter().map(|c| c.name.clone()).collect(),
                    jobs_ok: p.ok,
                    jobs_failed: p.failed,
                    recent_failures: p.recent_failures.iter().cloned().collect(),
                    est_ms: p.job_ms.unwrap_or(local_ms) as u64,
                    inflight: p.inflight,
                    bytes_sent: p.conn.as_ref().map(|c| c.stats().udp_tx.bytes).unwrap_or(0),
                    bytes_received: p.conn.as_ref().map(|c| c.stats().udp_rx.bytes).unwrap_or(0),
                }
            })
            .collect();
        list.sort_by(|a, b| a.node.cmp(&b.node).then(a.addr.cmp(&b.addr)));
        StatusReport {
            node: self.name.clone(),
            addr: self.cfg.advertise.clone(),
            version: VERSION,
            uptime_s: self.started.elapsed().as_secs(),
            slots: self.cfg.slots,
            free: self.free_slots(),
            local_slots: self.cfg.local_slots,
            local_running: self.local_running.load(Ordering::Relaxed),
            jobs_served: self.jobs_served.load(Ordering::Relaxed),
            jobs_refused: self.jobs_refused.load(Ordering::Relaxed),
            store_entries: self.store.usage().1,
            peers: list,
        }
    }
}
