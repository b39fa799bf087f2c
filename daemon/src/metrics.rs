//! farmd's metrics, served as Prometheus text at `/metrics` (docs/metrics.md lists
//! every one). Events are counted where they happen (jobs, placement, refusals,
//! sandbox failures, the store role) in one process-wide set of families; levels
//! (slots, jobs in flight, peers, warm compilers, the store's size) and the shims'
//! own counters (`farm stats`: hits, misses, tiers, fallbacks) are read when
//! Prometheus scrapes, so nothing on a shim's hit path talks to farmd.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use farm::stats::{Outcome, ReasonFamily, Stats, TierKind, TierMeasure};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;

/// Labels: `[(name, value)]` pairs; values come from closed sets or from job fields
/// farmd checked (a family name, an allow-listed compiler).
type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Seconds buckets for compiles: 5 ms to about 80 s.
fn compile_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15)
}

/// Seconds buckets for waits: 1 ms to about 16 s.
fn wait_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// The event counters and histograms (one set per process).
pub struct Metrics {
    /// Remote jobs: `role` placed (sent from here) or served (run here for a peer),
    /// `shape` text/tree/paths, `family`, `result`.
    pub jobs: Family<Labels, Counter>,
    /// The compiler's own run time, by `family` and `where`: `peer` (a job placed from
    /// here, as its worker measured it), `worker` (a job run here for a peer), `home`
    /// (a miss this machine's shim compiled itself).
    pub compile: Family<Labels, Histogram>,
    /// Time a job waited for a worker slot here, by `family`.
    pub queue: Family<Labels, Histogram>,
    /// A placed job from hand-off to answer (transfer, queue, compile), by `family`.
    pub job: Family<Labels, Histogram>,
    /// Where the agent put a miss: `decision` peer or home, with the `reason` for home.
    pub placements: Family<Labels, Counter>,
    /// Jobs and connections this node refused, by `reason`.
    pub refusals: Family<Labels, Counter>,
    /// Peer connections refused before any request, by `reason`.
    pub connections_refused: Family<Labels, Counter>,
    /// Jobs the sandbox ended or could not start, by `reason`.
    pub sandbox_failures: Family<Labels, Counter>,
    /// Peers' requests to this node's share of the farm's cache, by `request`, `result`.
    pub store_requests: Family<Labels, Counter>,
    /// Bytes this node's store role sent and received, by `direction`.
    pub store_bytes: Family<Labels, Counter>,
    /// Leases of a REAPI service run here as its bot, by `result`.
    pub reapi_leases: Family<Labels, Counter>,
    /// Same-path jobs answered by a REAPI service (`reapi_execute`), by `result`:
    /// `cached` (its Action Cache) or `executed`.
    pub reapi_executions: Family<Labels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    jobs: Family::default(),
    compile: Family::new_with_constructor(|| Histogram::new(compile_buckets())),
    queue: Family::new_with_constructor(|| Histogram::new(wait_buckets())),
    job: Family::new_with_constructor(|| Histogram::new(compile_buckets())),
    placements: Family::default(),
    refusals: Family::default(),
    connections_refused: Family::default(),
    sandbox_failures: Family::default(),
    store_requests: Family::default(),
    store_bytes: Family::default(),
    reapi_leases: Family::default(),
    reapi_executions: Family::default(),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    pub fn count_job(&self, role: &str, shape: &str, family: &str, result: &str) {
        self.jobs
            .get_or_create(&labels(&[
                ("role", role),
                ("shape", shape),
                ("family", family),
                ("result", result),
            ]))
            .inc();
    }

    pub fn observe_compile(&self, family: &str, place: &str, took: Duration) {
        self.compile
            .get_or_create(&labels(&[("family", family), ("where", place)]))
            .observe(took.as_secs_f64());
    }

    pub fn observe_queue(&self, family: &str, took: Duration) {
        self.queue
            .get_or_create(&labels(&[("family", family)]))
            .observe(took.as_secs_f64());
    }

    pub fn observe_job(&self, family: &str, took: Duration) {
        self.job
            .get_or_create(&labels(&[("family", family)]))
            .observe(took.as_secs_f64());
    }

    pub fn count_placement(&self, decision: &str, reason: &str) {
        self.placements
            .get_or_create(&labels(&[("decision", decision), ("reason", reason)]))
            .inc();
    }

    pub fn count_refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    pub fn count_connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    pub fn count_sandbox_failure(&self, reason: &str) {
        self.sandbox_failures
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    pub fn count_store(&self, request: &str, result: &str) {
        self.store_requests
            .get_or_create(&labels(&[("request", request), ("result", result)]))
            .inc();
    }

    pub fn count_reapi_lease(&self, result: &str) {
        self.reapi_leases
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    pub fn count_reapi_execute(&self, result: &str) {
        self.reapi_executions
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    pub fn count_store_bytes(&self, direction: &str, n: usize) {
        self.store_bytes
            .get_or_create(&labels(&[("direction", direction)]))
            .inc_by(n as u64);
    }
}

/// The registry `/metrics` encodes: the event families and the scrape-time readers.
pub fn registry(node: &Arc<Node>) -> Registry {
    let m = get();
    // Known label sets start at 0, so a rate or a dashboard panel has a series before
    // the first event.
    for kind in crate::worker::Refusal::ALL {
        let _ = m
            .refusals
            .get_or_create(&labels(&[("reason", kind.name())]));
    }
    for reason in crate::worker::sandbox::Sandbox::FAILURES {
        let _ = m
            .sandbox_failures
            .get_or_create(&labels(&[("reason", reason)]));
    }
    let _ = m
        .placements
        .get_or_create(&labels(&[("decision", "peer"), ("reason", "")]));
    let _ = m
        .placements
        .get_or_create(&labels(&[("decision", "home"), ("reason", "placed_home")]));
    for (request, result) in [
        ("get", "hit"),
        ("get", "miss"),
        ("get", "error"),
        ("put", "stored"),
        ("put", "refused"),
    ] {
        let _ = m
            .store_requests
            .get_or_create(&labels(&[("request", request), ("result", result)]));
    }
    for reason in ["limit", "handshake", "revoked"] {
        let _ = m
            .connections_refused
            .get_or_create(&labels(&[("reason", reason)]));
    }
    for direction in ["in", "out"] {
        let _ = m
            .store_bytes
            .get_or_create(&labels(&[("direction", direction)]));
    }
    if node.cfg.reapi_bot.is_some() {
        let _ = m.reapi_leases.get_or_create(&labels(&[("result", "done")]));
    }
    if node.cfg.reapi_execute.is_some() {
        for result in ["cached", "executed"] {
            let _ = m
                .reapi_executions
                .get_or_create(&labels(&[("result", result)]));
        }
    }
    let mut r = Registry::with_prefix("farm");
    r.register(
        "jobs",
        "Remote jobs by role (placed from here, served here), shape, family and result",
        m.jobs.clone(),
    );
    r.register_with_unit(
        "compile_duration",
        "Compiler run time by family and where it ran (peer, worker, home)",
        Unit::Seconds,
        m.compile.clone(),
    );
    r.register_with_unit(
        "queue_duration",
        "Time a peer's job waited for a worker slot here, by family",
        Unit::Seconds,
        m.queue.clone(),
    );
    r.register_with_unit(
        "job_duration",
        "A job placed on a peer, from hand-off to answer (transfer, queue, compile), by family",
        Unit::Seconds,
        m.job.clone(),
    );
    r.register(
        "placement_decisions",
        "Where the agent put a miss, and why home",
        m.placements.clone(),
    );
    r.register(
        "refusals",
        "Peers' jobs this node refused as a worker, by reason",
        m.refusals.clone(),
    );
    r.register(
        "peer_connections_refused",
        "Peer connections refused before any request: limit (max_peer_connections), handshake (no or wrong certificate), revoked",
        m.connections_refused.clone(),
    );
    r.register(
        "sandbox_failures",
        "Jobs the sandbox ended or could not start, by reason",
        m.sandbox_failures.clone(),
    );
    r.register(
        "store_requests",
        "Peers' requests to this node's share of the farm's cache",
        m.store_requests.clone(),
    );
    r.register(
        "reapi_bot_leases",
        "Leases of a REAPI service this node ran as its bot: done (an ActionResult, any exit code) or the gRPC code it failed with",
        m.reapi_leases.clone(),
    );
    r.register(
        "reapi_executions",
        "Same-path jobs a REAPI service (reapi_execute) answered: cached (from its Action Cache) or executed",
        m.reapi_executions.clone(),
    );
    r.register_with_unit(
        "store",
        "Entry bytes this node's share of the farm's cache sent (out) and stored (in)",
        Unit::Bytes,
        m.store_bytes.clone(),
    );
    r.register_collector(Box::new(Levels(Arc::downgrade(node))));
    r.register_collector(Box::new(ShimCounters(node.cfg.shim_stats.clone())));
    r
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// A gauge or counter with labels, written from a collector.
fn put<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut family = enc.encode_descriptor(name, help, unit, first.metric_type())?;
    for (l, m) in series {
        m.encode(family.encode_family(l)?)?;
    }
    Ok(())
}

/// Levels read from the node when Prometheus scrapes.
struct Levels(Weak<Node>);

impl std::fmt::Debug for Levels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Levels")
    }
}

impl Collector for Levels {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let g = |pairs: &[(&'static str, &str)], v: i64| (labels(pairs), ConstGauge::new(v));
        let placed: u32 = node
            .peers
            .lock()
            .unwrap()
            .values()
            .map(|p| p.inflight)
            .sum();
        put(&mut enc, "jobs_in_flight", "Jobs running now: served (for peers, here), placed (from here, on peers), home (misses compiling here)", None, &[
            g(&[("role", "served")], node.running.load(Ordering::Relaxed) as i64),
            g(&[("role", "placed")], placed as i64),
            g(&[("role", "home")], node.local_running.load(Ordering::Relaxed) as i64),
        ])?;
        put(
            &mut enc,
            "jobs_queued",
            "Peers' jobs waiting for a worker slot here",
            None,
            &[g(&[], node.queue.load(Ordering::Relaxed) as i64)],
        )?;
        put(
            &mut enc,
            "slots",
            "Slots: worker (jobs for peers at once), home (this machine's own misses)",
            None,
            &[
                g(&[("kind", "worker")], node.cfg.slots as i64),
                g(&[("kind", "home")], node.cfg.local_slots as i64),
            ],
        )?;
        put(
            &mut enc,
            "slots_free",
            "Worker slots free now",
            None,
            &[g(&[], node.free_slots() as i64)],
        )?;
        let now = std::time::Instant::now();
        let (live, known) = {
            let peers = node.peers.lock().unwrap();
            (peers.values().filter(|p| p.live(now)).count(), peers.len())
        };
        put(
            &mut enc,
            "peers",
            "Peers in the table, by state (live: advertised within the last few seconds)",
            None,
            &[
                g(&[("state", "live")], live as i64),
                g(&[("state", "known")], known as i64),
            ],
        )?;
        put(
            &mut enc,
            "warm_compilers",
            "Warm compiler servers idle in the pool",
            None,
            &[g(&[], node.warm.idle_count() as i64)],
        )?;
        let (bytes, entries) = node.store.usage();
        put(
            &mut enc,
            "store_entries",
            "Entries in this node's share of the farm's cache",
            None,
            &[g(&[], entries as i64)],
        )?;
        put(
            &mut enc,
            "store_size",
            "Bytes in this node's share of the farm's cache",
            Some(&Unit::Bytes),
            &[g(&[], bytes as i64)],
        )?;
        let start = SystemTime::now()
            .checked_sub(node.started.elapsed())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        put(
            &mut enc,
            "start_time",
            "When this farmd started (Unix time)",
            Some(&Unit::Seconds),
            &[g(&[], start)],
        )?;
        put(
            &mut enc,
            "build_info",
            "This farmd: its node name, version and protocol",
            None,
            &[g(
                &[
                    ("node", node.name.as_str()),
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("protocol", &farm::protocol::VERSION.to_string()),
                ],
                1,
            )],
        )?;
        Ok(())
    }
}

/// The shims' counters (`farm stats`) of the cache directories in `shim_stats`,
/// added up when Prometheus scrapes: hits, misses, tiers, fallbacks. Reading them costs
/// farmd 16 small files per directory; the shims never wait on it.
struct ShimCounters(Vec<PathBuf>);

impl std::fmt::Debug for ShimCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShimCounters")
    }
}

/// A fixed outcome's `outcome` label on `farm_compiles_total`, or `None` when it is
/// not a compile's outcome.
fn compile_outcome(o: &Outcome) -> Option<&'static str> {
    Some(match o {
        Outcome::HitDirect => "hit_direct",
        Outcome::HitPreprocessor => "hit_preprocessor",
        Outcome::HitDepend => "hit_depend",
        Outcome::HitDeclared => "hit_declared",
        Outcome::HitFarm => "hit_farm",
        Outcome::HitRemote => "hit_remote",
        Outcome::Miss => "miss",
        Outcome::CompileFailed => "compile_failed",
        _ => return None,
    })
}

/// Distinct reasons one family shows at most; the rest add up under `other`.
const MAX_REASONS: usize = 64;

/// The counters of `family` in `sum`, by reason. The stats shards belong to the users
/// whose directories are listed, so a reason is shown only if farm could have written
/// it (a short name of letters, digits, `_`, `.`, `-`), and their number is bounded.
fn reasons(
    sum: &std::collections::BTreeMap<String, u64>,
    family: ReasonFamily,
) -> Vec<(&str, u64)> {
    let prefix = format!("{}.", family.prefix());
    let mut out: Vec<(&str, u64)> = Vec::new();
    let mut other = 0u64;
    for (k, v) in sum {
        let Some(reason) = k.strip_prefix(&prefix) else {
            continue;
        };
        let plausible = !reason.is_empty()
            && reason.len() <= 64
            && reason
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if plausible && out.len() < MAX_REASONS {
            out.push((reason, *v));
        } else {
            other = other.saturating_add(*v);
        }
    }
    if other > 0 {
        out.push(("other", other));
    }
    out
}

/// The shims' counters of the cache directories `dirs`, added up (the live monitor's
/// hit rate and time saved come from here too).
pub fn shim_counters(dirs: &[PathBuf]) -> std::collections::BTreeMap<String, u64> {
    let mut sum = std::collections::BTreeMap::<String, u64>::new();
    for dir in dirs {
        for (k, v) in Stats::new(dir).read() {
            // Shards are other users' files: their counts may add up past u64.
            let c = sum.entry(k).or_insert(0);
            *c = c.saturating_add(v);
        }
    }
    sum
}

impl Collector for ShimCounters {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sum = shim_counters(&self.0);
        let get = |o: &Outcome| sum.get(o.counter().as_ref()).copied().unwrap_or(0);
        let c = |pairs: &[(&'static str, &str)], v: u64| (labels(pairs), ConstCounter::new(v));
        let mut compiles = Vec::new();
        for o in Outcome::FIXED.iter() {
            if let Some(name) = compile_outcome(o) {
                compiles.push(c(&[("outcome", name)], get(o)));
            }
        }
        let passthrough: u64 = sum
            .iter()
            .filter(|(k, _)| k.starts_with("passthrough."))
            .map(|(_, v)| v)
            .sum();
        compiles.push(c(&[("outcome", "passthrough")], passthrough));
        put(
            &mut enc,
            "compiles",
            "Compiles the shims ran, by outcome (farm stats)",
            None,
            &compiles,
        )?;
        let mut requests = Vec::new();
        let mut bytes = Vec::new();
        for kind in TierKind::ALL {
            for (measure, result) in [
                (TierMeasure::Hits, "hit"),
                (TierMeasure::Misses, "miss"),
                (TierMeasure::Errors, "error"),
            ] {
                requests.push(c(
                    &[("tier", kind.name()), ("result", result)],
                    get(&Outcome::Tier(kind, measure)),
                ));
            }
            for (measure, direction) in [
                (TierMeasure::BytesRead, "in"),
                (TierMeasure::BytesWritten, "out"),
            ] {
                bytes.push(c(
                    &[("tier", kind.name()), ("direction", direction)],
                    get(&Outcome::Tier(kind, measure)),
                ));
            }
        }
        put(
            &mut enc,
            "cache_requests",
            "Cache lookups the shims made, by tier and result",
            None,
            &requests,
        )?;
        put(
            &mut enc,
            "cache",
            "Entry bytes the shims read from (in) and wrote to (out) each tier",
            Some(&Unit::Bytes),
            &bytes,
        )?;
        for (family, name, help) in [
            (
                ReasonFamily::Fallback,
                "fallbacks",
                "Farm failures that ended in a compile at home, by reason",
            ),
            (
                ReasonFamily::FarmHome,
                "home_compiles",
                "Misses compiled at home although farmd was running, by reason",
            ),
            (
                ReasonFamily::Passthrough,
                "passthroughs",
                "Invocations run untouched as the real compiler, by reason",
            ),
            (
                ReasonFamily::NotStored,
                "not_stored",
                "Compiles that succeeded and stored nothing, by reason",
            ),
        ] {
            let series: Vec<_> = reasons(&sum, family)
                .into_iter()
                .map(|(reason, v)| c(&[("reason", reason)], v))
                .collect();
            put(&mut enc, name, help, None, &series)?;
        }
        let secs = |o: &Outcome| (Vec::new(), ConstCounter::new(get(o) as f64 / 1000.0));
        put(
            &mut enc,
            "time_saved",
            "Compile time hits saved (each hit: the original compile's time less the hit's)",
            Some(&Unit::Seconds),
            &[secs(&Outcome::TimeSavedMs)],
        )?;
        put(
            &mut enc,
            "miss_compile",
            "Compile time of the shims' misses, wherever they ran",
            Some(&Unit::Seconds),
            &[secs(&Outcome::CompileMs)],
        )?;
        put(
            &mut enc,
            "remote_compiles",
            "Misses a peer compiled (same_path: of those, same-path jobs)",
            None,
            &[
                c(&[("shape", "any")], get(&Outcome::FarmRemote)),
                c(&[("shape", "same_path")], get(&Outcome::FarmSamePath)),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_or_too_many_reasons_add_up_under_other() {
        let mut sum = std::collections::BTreeMap::new();
        sum.insert("fallback.refused".to_string(), 3);
        sum.insert("fallback.evil\"} 1\nfarm_x{a=\"".to_string(), 5);
        sum.insert("farm.home.placed_home".to_string(), 7);
        for i in 0..100 {
            sum.insert(format!("passthrough.r{i:03}"), 1);
        }
        let fallbacks = reasons(&sum, ReasonFamily::Fallback);
        assert_eq!(fallbacks, vec![("refused", 3), ("other", 5)]);
        assert_eq!(
            reasons(&sum, ReasonFamily::FarmHome),
            vec![("placed_home", 7)]
        );
        let pass = reasons(&sum, ReasonFamily::Passthrough);
        assert_eq!(pass.len(), MAX_REASONS + 1);
        assert_eq!(pass.last(), Some(&("other", 100 - MAX_REASONS as u64)));
        assert!(reasons(&sum, ReasonFamily::NotStored).is_empty());
    }

    #[test]
    fn a_planted_stats_shard_does_not_break_the_exposition() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("stats")).unwrap();
        std::fs::write(
            dir.path().join("stats/0"),
            "miss 4\nfallback.a\"b 2\nhit.direct 9\n",
        )
        .unwrap();
        let mut r = Registry::with_prefix("farm");
        r.register_collector(Box::new(ShimCounters(vec![dir.path().to_path_buf()])));
        let text = encode(&r);
        assert!(
            text.contains("farm_compiles_total{outcome=\"miss\"} 4"),
            "{text}"
        );
        assert!(text.contains("farm_compiles_total{outcome=\"hit_direct\"} 9"));
        assert!(
            text.contains("farm_fallbacks_total{reason=\"other\"} 2"),
            "{text}"
        );
        assert!(!text.contains("a\"b"));
    }
}
