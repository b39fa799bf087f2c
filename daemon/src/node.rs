//! One farmd's shared state: its identity, its compilers, its stores, its slots, the
//! table of peers (`crate::peers`) with what they advertise and what placement
//! measured of them, home's measurements, and the status report of it all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use farm::protocol::{Advert, CompilerAd, PeerStatus, StatusReport, VERSION};
use farm::store::LocalStore;
use tokio::sync::{Notify, Semaphore};

use crate::config::DaemonConfig;
use crate::peers::Peer;

/// A compiler this node runs for peers.
#[derive(Clone, Debug)]
pub struct AllowedCompiler {
    pub name: String,
    pub path: PathBuf,
    pub identity: [u8; 32],
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
    /// What each shape of shipped compile cost this machine's shims, per compiler.
    pub shapes: crate::shapes::Shapes,
    /// Toolchains for same-path jobs: this node's own, and those peers send.
    pub toolchains: crate::toolchains::Toolchains,
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
    /// `state_dir`'s file system had less than [`crate::worker::MIN_FREE`] free at the
    /// last look: no jobs are taken, and none advertised (see [`Node::disk_room`]).
    pub disk_full: AtomicBool,
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
    /// Remote jobs as they start and finish (metrics, audit log, monitor).
    pub activity: crate::activity::Activity,
    /// Where farmd serves HTTP (metrics, health, monitor), if it does.
    pub http: Option<std::net::SocketAddr>,
    /// A REAPI service that runs same-path jobs (`reapi_execute`), beside the peers.
    pub reapi: Option<crate::exec::reapi::ReapiService>,
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

    /// Whether `state_dir`'s file system has room for a job (at least
    /// [`crate::worker::MIN_FREE`] bytes available); `Err` says how little it has. A
    /// change either way is logged once.
    pub fn disk_room(&self) -> Result<(), String> {
        let free = crate::worker::free_bytes(&self.cfg.state_dir);
        let full = free.is_some_and(|f| f < crate::worker::MIN_FREE);
        let was = self.disk_full.swap(full, Ordering::Relaxed);
        let dir = self.cfg.state_dir.display();
        let free = free.unwrap_or(0);
        if full && !was {
            tracing::warn!(state_dir = %dir, free_bytes = free, "state directory's disk is full: no jobs taken or advertised until it has room");
        } else if !full && was {
            tracing::info!(state_dir = %dir, free_bytes = free, "state directory's disk has room again: taking jobs");
        }
        if full {
            Err(format!(
                "{}: disk full: {} KiB free in {dir} (a job needs {} MiB)",
                self.name,
                free >> 10,
                crate::worker::MIN_FREE >> 20
            ))
        } else {
            Ok(())
        }
    }

    pub fn advert(&self) -> Advert {
        let now = Instant::now();
        // A node whose disk is full offers no compilers (as one without a sandbox),
        // so peers stop sending it jobs it could only refuse.
        let room = self.disk_room().is_ok();
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
                .filter(|_| self.sandbox.is_some() && room)
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
            toolchains: self.sandbox.is_some() && self.toolchains.accept,
        }
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
        if let Some(r) = &self.reapi {
            // The service as one more row: unbounded slots, what placement measured.
            let s = r.state.lock().unwrap();
            list.push(PeerStatus {
                node: r.name.clone(),
                addr: self
                    .cfg
                    .reapi_execute
                    .as_ref()
                    .map(|c| c.server())
                    .unwrap_or_default(),
                live: s.available(now),
                jobs_ok: s.ok,
                jobs_failed: s.failed,
                recent_failures: s.recent_failures.iter().cloned().collect(),
                est_ms: s.job_ms.unwrap_or(local_ms) as u64,
                inflight: s.inflight,
                ..Default::default()
            });
        }
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
            http: self.http.map(crate::http::endpoints),
        }
    }
}
