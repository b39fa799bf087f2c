//! Placement: where a job should finish first (home or an executor on a peer), its
//! deadline, and running it there with one retry elsewhere on any failure. Every
//! measurement lives here: home's compile times and load, and per peer its jobs in
//! flight, jobs sent since its advert, job round trips and failures. Executors
//! (`crate::exec`) only carry a job there and back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use farm::protocol::{CompilerAd, Job, JobResult, PathJob, TreeJob, TreeResult};

use crate::activity::{Finish, JobFacts, Role};
use crate::exec::{ExecError, ExecFuture, Executor};
use crate::node::Node;

/// Assumed local compile time before any was measured.
const DEFAULT_JOB_MS: f64 = 500.0;

/// How long a measured job time stays an estimate; after that the place is measured
/// again.
const SAMPLE_TTL: Duration = Duration::from_secs(10);

pub fn ewma(old: f64, sample: f64) -> f64 {
    if old <= 0.0 {
        sample
    } else {
        0.7 * old + 0.3 * sample
    }
}

/// How much longer than on an idle CPU a job takes when `busy` others run on `cpus`.
pub fn contention(busy: u32, cpus: u32) -> f64 {
    ((busy as f64 + 1.0) / cpus.max(1) as f64).max(1.0)
}

/// A place that can take a job: a peer (the address the peer table knows it by) or
/// the REAPI service (`service`), what runs the job there, and its measured RTT.
pub struct Candidate {
    pub addr: String,
    pub executor: Arc<dyn Executor>,
    pub rtt: Duration,
    /// The REAPI service (`reapi_execute`), not a peer: it takes same-path jobs only.
    pub service: bool,
}

/// Where a job should run.
pub enum Place {
    /// Home, with its load factor now.
    Home(f64),
    /// A peer.
    Peer(Candidate),
}

/// Picks home or a peer by estimated finish time, learned from how long jobs really
/// took lately: home's recent compile time (`home_estimate`), a peer's recent job
/// round trip (transfer, queue and compile) × how far its advertised work plus this
/// node's jobs sent since exceed its slots. A peer not measured in the last 10 s gets
/// one job to measure it. Two random peers that run the compiler and have room are
/// compared (power of two choices), then the better one against home. Peers on home's
/// own CPUs, or slower, or farther, lose to home: placement learns what is cheaper at
/// home.
pub fn place(
    node: &Node,
    compiler: &CompilerAd,
    tried: &[String],
    home_ok: bool,
    toolchain_ok: bool,
) -> Result<Place, &'static str> {
    let now = Instant::now();
    let home_est = if home_ok && node.cfg.local_slots > 0 {
        home_estimate(node, now)
    } else {
        f64::INFINITY
    };
    let (mut cands, busy) = peer_candidates(node, compiler, tried, now, toolchain_ok);
    // A same-path job carries its toolchain: the REAPI service can run it too, for
    // a family that has same-path jobs.
    let paths = farm::lang::family_for(&compiler.name).is_some_and(|f| f.path_jobs().is_some());
    if toolchain_ok && paths {
        cands.extend(service_candidate(node, tried, now));
    }
    let best_peer = match cands.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = fastrand_index(n);
            let mut b = fastrand_index(n - 1);
            if b >= a {
                b += 1;
            }
            Some(if cands[a].0 <= cands[b].0 { a } else { b })
        }
    };
    let peer = |cands: &mut Vec<(f64, Candidate)>, i| Ok(Place::Peer(cands.swap_remove(i).1));
    match best_peer {
        Some(i) if cands[i].0 < home_est => peer(&mut cands, i),
        _ if home_est.is_finite() => Ok(Place::Home(home_load(node))),
        Some(i) => peer(&mut cands, i),
        None if busy => Err("peers_busy"),
        None => Err("no_peer"),
    }
}

/// The peers that could take a job of `compiler` now (live, running it, not on this
/// machine unless allowed, not tried yet), each with its estimated finish time (ms);
/// and whether some were left out only because they are full.
fn peer_candidates(
    node: &Node,
    compiler: &CompilerAd,
    tried: &[String],
    now: Instant,
    toolchain_ok: bool,
) -> (Vec<(f64, Candidate)>, bool) {
    let mut cands: Vec<(f64, Candidate)> = Vec::new();
    let mut busy = false;
    let peers = node.peers.lock().unwrap();
    for (addr, p) in peers.iter() {
        // A same-path job carries its toolchain: a peer that takes toolchains runs
        // it without the compiler.
        let runs =
            p.runs(compiler) || (toolchain_ok && p.advert.as_ref().is_some_and(|a| a.toolchains));
        if tried.contains(addr) || !p.live(now) || !runs {
            continue;
        }
        let Some(a) = &p.advert else { continue };
        let Some(executor) = &p.executor else {
            continue;
        };
        // A peer on this machine adds no CPUs: shipping to it only adds cost. It
        // still holds its share of the farm's cache.
        if a.host == node.host && !a.host.is_empty() && !node.cfg.same_host_jobs {
            continue;
        }
        let slots = a.slots.max(1);
        let work = (slots.saturating_sub(a.free) + a.queue + p.sent_since_advert).max(p.inflight);
        // The worker refuses a queue of twice its slots; do not send into that.
        if work >= slots * 3 {
            busy = true;
            continue;
        }
        let fresh = p
            .last_job
            .map(|t| now.duration_since(t) < SAMPLE_TTL)
            .unwrap_or(false);
        let est = match p.job_ms {
            Some(ms) if fresh => ms * contention(work, slots),
            // Not measured lately: one job goes there to measure it (more only
            // when nothing else can take them).
            _ if p.inflight == 0 => 0.0,
            _ => f64::MAX / 2.0,
        };
        cands.push((
            est,
            Candidate {
                addr: addr.clone(),
                executor: executor.clone(),
                rtt: p.rtt,
                service: false,
            },
        ));
    }
    (cands, busy)
}

/// The REAPI service, when configured, not tried yet and not paused after a failure,
/// with its estimated finish time (ms): its recent round trip (it has no slots to
/// fill); one job to measure it when that is stale.
fn service_candidate(node: &Node, tried: &[String], now: Instant) -> Option<(f64, Candidate)> {
    let r = node.reapi.as_ref()?;
    if tried.contains(&r.name) {
        return None;
    }
    let s = r.state.lock().unwrap();
    if !s.available(now) {
        return None;
    }
    let fresh = s
        .last_job
        .is_some_and(|t| now.duration_since(t) < SAMPLE_TTL);
    let est = match s.job_ms {
        Some(ms) if fresh => ms,
        _ if s.inflight == 0 => 0.0,
        Some(ms) => ms,
        None => f64::MAX / 2.0,
    };
    let rtt = Duration::from_micros((s.job_ms.unwrap_or(0.0) * 1000.0 / 8.0) as u64);
    Some((
        est,
        Candidate {
            addr: r.name.clone(),
            executor: r.executor.clone(),
            rtt,
            service: true,
        },
    ))
}

/// How long home would take now: its recent compile time as measured (under the load
/// it had), its uncontended time when nothing runs there, and that too when it has not
/// compiled for a while (the old measurement says nothing about now).
fn home_estimate(node: &Node, now: Instant) -> f64 {
    let base = match *node.local_base_ms.lock().unwrap() {
        b if b > 0.0 => b,
        _ => DEFAULT_JOB_MS,
    };
    let fresh = node
        .local_last
        .lock()
        .unwrap()
        .map(|t| now.duration_since(t) < SAMPLE_TTL)
        .unwrap_or(false);
    let recent = *node.local_ms.lock().unwrap();
    if !fresh || recent <= 0.0 || node.local_running.load(Ordering::Relaxed) == 0 {
        base.min(if recent > 0.0 { recent } else { base })
    } else {
        recent
    }
}

fn fastrand_index(n: usize) -> usize {
    use std::sync::atomic::AtomicU64;
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % n as u64) as usize
}

/// Counts one more compile at home (once per shim session); returns that it does.
pub fn reserve_home(node: &Node, already: bool) -> bool {
    if !already {
        node.local_running.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// Home's load factor: processes that would share home's CPUs with one more compile
/// (the compiles it sent home, or every runnable process on the machine if more, such
/// as a peer's jobs on the same CPUs), per home CPU, at least 1.
pub fn home_load(node: &Node) -> f64 {
    let cpus = crate::node::cores().min(node.cfg.local_slots.max(1));
    let busy = node
        .local_running
        .load(Ordering::Relaxed)
        .max(crate::node::runnable());
    contention(busy, cpus)
}

/// A compile at home ended after `local_ms` (0: not measured), under load `factor`.
pub fn release_home(node: &Node, local_ms: u64, factor: f64) {
    node.local_running.fetch_sub(1, Ordering::Relaxed);
    if local_ms > 0 {
        *node.local_last.lock().unwrap() = Some(Instant::now());
        let mut l = node.local_ms.lock().unwrap();
        *l = ewma(*l, local_ms as f64);
        let mut b = node.local_base_ms.lock().unwrap();
        *b = ewma(*b, local_ms as f64 / factor);
    }
}

/// The deadline of one job on a peer: from how long jobs of this size took, with the
/// configured ceiling.
fn deadline(node: &Node, job: &Job, rtt: Duration) -> Duration {
    let per_mib = *node.ms_per_mib.lock().unwrap();
    let local = *node.local_ms.lock().unwrap();
    let mib = job.source.len() as f64 / (1 << 20) as f64;
    let expected = if per_mib > 0.0 {
        per_mib * mib.max(0.05)
    } else if local > 0.0 {
        local
    } else {
        DEFAULT_JOB_MS
    };
    // Generous: a deadline only has to catch a peer that stalls, and a busy peer
    // legitimately takes several times its average.
    let d = Duration::from_millis((expected * 8.0) as u64) + rtt * 4 + Duration::from_secs(5);
    d.min(node.cfg.job_timeout)
}

/// A text job on a peer, one retry on another. `Err` is the reason the shim compiles
/// at home (and counts).
pub async fn run_job(node: &Node, job: &Job, submitter: &str) -> Result<JobResult, String> {
    on_peers(node, &job.compiler, job, false, submitter).await
}

/// A tree job on a peer, one retry on another. `Err` is the reason the shim compiles
/// at home (and counts).
pub async fn run_tree(node: &Node, job: &TreeJob, submitter: &str) -> Result<TreeResult, String> {
    on_peers(node, &job.compiler, job, false, submitter).await
}

/// A same-path job on a peer (one with the compiler, or one that takes toolchains),
/// one retry on another. `Err` is the reason the shim compiles at home.
pub async fn run_paths(node: &Node, job: &PathJob, submitter: &str) -> Result<TreeResult, String> {
    on_peers(node, &job.compiler, job, true, submitter).await
}

/// What goes to an executor: how placement bounds it and runs it there.
trait Work: Sync + serde::Serialize {
    type Done: Send;
    /// The job's shape, as metrics and the audit log name it.
    const SHAPE: &'static str;
    fn family(&self) -> &str;
    /// The compiler's exit code, its run time and the worker's name.
    fn answer(done: &Self::Done) -> (i32, u64, &str);
    /// Its deadline on a peer `rtt` away, and the size it ships (0: not measured).
    fn limit(&self, node: &Node, rtt: Duration) -> (Duration, usize);
    fn run<'a>(
        &'a self,
        node: &'a Node,
        executor: &'a dyn Executor,
        limit: Duration,
    ) -> ExecFuture<'a, Self::Done>;
    /// The worker's own compile time, for the time-per-MiB estimate.
    fn compile_ms(done: &Self::Done) -> Option<u64>;
}

impl Work for Job {
    type Done = JobResult;
    const SHAPE: &'static str = "text";
    fn family(&self) -> &str {
        &self.family
    }
    fn answer(done: &JobResult) -> (i32, u64, &str) {
        (done.exit_code, done.compile_ms, &done.worker)
    }
    fn limit(&self, node: &Node, rtt: Duration) -> (Duration, usize) {
        (deadline(node, self, rtt), self.source.len())
    }
    fn run<'a>(
        &'a self,
        _node: &'a Node,
        executor: &'a dyn Executor,
        limit: Duration,
    ) -> ExecFuture<'a, JobResult> {
        executor.run_job(self, limit)
    }
    fn compile_ms(done: &JobResult) -> Option<u64> {
        Some(done.compile_ms)
    }
}

impl Work for TreeJob {
    type Done = TreeResult;
    const SHAPE: &'static str = "tree";
    fn family(&self) -> &str {
        &self.family
    }
    fn answer(done: &TreeResult) -> (i32, u64, &str) {
        (done.exit_code, done.compile_ms, &done.worker)
    }
    fn limit(&self, node: &Node, _rtt: Duration) -> (Duration, usize) {
        // Tree jobs are whole modules: only the configured ceiling bounds them.
        (node.cfg.job_timeout, 0)
    }
    fn run<'a>(
        &'a self,
        node: &'a Node,
        executor: &'a dyn Executor,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        executor.run_tree(self, &node.blobs, limit)
    }
    fn compile_ms(_: &TreeResult) -> Option<u64> {
        None
    }
}

impl Work for PathJob {
    type Done = TreeResult;
    const SHAPE: &'static str = "paths";
    fn family(&self) -> &str {
        &self.family
    }
    fn answer(done: &TreeResult) -> (i32, u64, &str) {
        (done.exit_code, done.compile_ms, &done.worker)
    }
    fn limit(&self, node: &Node, rtt: Duration) -> (Duration, usize) {
        // A compile of one source: bounded like a text job of its inputs' size would
        // be, which the measurements per MiB do not cover; the ceiling, generously.
        let local = *node.local_ms.lock().unwrap();
        let expected = if local > 0.0 { local } else { DEFAULT_JOB_MS };
        let d = Duration::from_millis((expected * 8.0) as u64) + rtt * 8 + Duration::from_secs(10);
        (d.min(node.cfg.job_timeout), 0)
    }
    fn run<'a>(
        &'a self,
        node: &'a Node,
        executor: &'a dyn Executor,
        limit: Duration,
    ) -> ExecFuture<'a, TreeResult> {
        Box::pin(async move {
            let blobs = crate::toolchains::JobBlobs {
                blobs: &node.blobs,
                toolchains: &node.toolchains,
            };
            executor.run_paths(self, &blobs, limit).await
        })
    }
    fn compile_ms(_: &TreeResult) -> Option<u64> {
        None
    }
}

/// Runs work on the peer placement picks, and once more on another after a failure.
/// `Err` is the `Local` reason for the shim: why no peer could.
async fn on_peers<W: Work>(
    node: &Node,
    compiler: &CompilerAd,
    work: &W,
    toolchain_ok: bool,
    submitter: &str,
) -> Result<W::Done, String> {
    let digest = farm::protocol::message_digest(work);
    let mut tried: Vec<String> = Vec::new();
    let mut last_failure = "";
    let mut none = "no_peer";
    for _ in 0..2 {
        let cand = match place(node, compiler, &tried, false, toolchain_ok) {
            Ok(Place::Peer(cand)) => cand,
            Ok(Place::Home(_)) => break,
            Err(why) => {
                none = why;
                break;
            }
        };
        tried.push(cand.addr.clone());
        let peer_name = if cand.service {
            cand.addr.clone()
        } else {
            node.peers
                .lock()
                .unwrap()
                .get(&cand.addr)
                .map(|p| p.node.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| cand.addr.clone())
        };
        let started = node.activity.start(JobFacts {
            role: Role::Placed,
            shape: W::SHAPE,
            family: work.family(),
            compiler,
            submitter: submitter.to_string(),
            peer: &peer_name,
            digest,
        });
        match run_on(node, &cand, work).await {
            Ok(r) => {
                let (exit_code, compile_ms, worker) = W::answer(&r);
                node.activity.finish(
                    started,
                    Finish {
                        outcome: if exit_code == 0 { "ok" } else { "failed" },
                        compile_ms: Some(compile_ms),
                        queue_ms: None,
                        worker: Some(worker),
                    },
                );
                return Ok(r);
            }
            Err(why) => {
                node.activity.finish(
                    started,
                    Finish {
                        outcome: why,
                        compile_ms: None,
                        queue_ms: None,
                        worker: None,
                    },
                );
                last_failure = why
            }
        }
    }
    Err(if tried.is_empty() {
        none.into()
    } else {
        format!("fallback.{last_failure}")
    })
}

/// The reason name the shim counts (`fallback.<reason>`) for an executor's failure.
fn reason(e: &ExecError) -> &'static str {
    match e {
        ExecError::Refused(_) => "refused",
        ExecError::Timeout(_) => "timeout",
        ExecError::Protocol(_) => "protocol",
        ExecError::Transport(_) => "peer_error",
    }
}

/// Runs a job on one candidate and records how it went. `Err` is a short reason
/// name, counted by the shim.
async fn run_on<W: Work>(node: &Node, cand: &Candidate, work: &W) -> Result<W::Done, &'static str> {
    if cand.service {
        return run_on_service(node, cand, work).await;
    }
    let addr = cand.addr.as_str();
    let (limit, size) = work.limit(node, cand.rtt);
    {
        let mut peers = node.peers.lock().unwrap();
        if let Some(p) = peers.get_mut(addr) {
            p.inflight += 1;
            p.sent_since_advert += 1;
        }
    }
    let t0 = Instant::now();
    let outcome = work.run(node, cand.executor.as_ref(), limit).await;
    let took = t0.elapsed();
    let mut peers = node.peers.lock().unwrap();
    let Some(p) = peers.get_mut(addr) else {
        return outcome.map_err(|e| reason(&e));
    };
    p.inflight = p.inflight.saturating_sub(1);
    // A finished job no longer adds to the work its last advert showed.
    p.sent_since_advert = p.sent_since_advert.saturating_sub(1);
    match outcome {
        Ok(done) => {
            p.ok += 1;
            let ms = took.as_secs_f64() * 1000.0;
            // A stale sample says little about now: start over from this one.
            let fresh = p
                .last_job
                .map(|t| t.elapsed() < SAMPLE_TTL)
                .unwrap_or(false);
            p.job_ms = Some(match p.job_ms {
                Some(old) if fresh => ewma(old, ms),
                _ => ms,
            });
            p.last_job = Some(Instant::now());
            drop(peers);
            if let Some(compile_ms) = W::compile_ms(&done) {
                let mib = (size as f64 / (1 << 20) as f64).max(0.05);
                let mut per = node.ms_per_mib.lock().unwrap();
                *per = ewma(*per, compile_ms as f64 / mib);
            }
            Ok(done)
        }
        Err(e) => {
            let kind = reason(&e);
            tracing::warn!(peer = %p.node, %addr, reason = kind, detail = %e, "remote job failed");
            p.failure(format!("{kind}: {e}"));
            // A failing peer looks slower, so placement prefers others for a while.
            p.job_ms = Some(p.job_ms.unwrap_or(DEFAULT_JOB_MS) * 2.0);
            p.last_job = Some(Instant::now());
            Err(kind)
        }
    }
}

/// Runs a job on the REAPI service and records how it went: its round trip, or a
/// failure that pauses it when it could not serve (logged once per outage).
async fn run_on_service<W: Work>(
    node: &Node,
    cand: &Candidate,
    work: &W,
) -> Result<W::Done, &'static str> {
    let Some(service) = node.reapi.as_ref() else {
        return Err("no_peer");
    };
    let (limit, _) = work.limit(node, cand.rtt);
    service.state.lock().unwrap().inflight += 1;
    let t0 = Instant::now();
    let outcome = work.run(node, cand.executor.as_ref(), limit).await;
    let mut s = service.state.lock().unwrap();
    s.inflight = s.inflight.saturating_sub(1);
    match outcome {
        Ok(done) => {
            s.succeeded(t0.elapsed().as_secs_f64() * 1000.0, SAMPLE_TTL);
            Ok(done)
        }
        Err(e) => {
            let kind = reason(&e);
            let down = crate::exec::reapi::service_failed(&e);
            if s.failed(format!("{kind}: {e}"), down) {
                tracing::warn!(service = %service.name, reason = kind, detail = %e, pause_s = s.pause.as_secs(), "REAPI service failed: jobs go elsewhere for a while");
            } else {
                tracing::info!(service = %service.name, reason = kind, detail = %e, "REAPI job failed");
            }
            Err(kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_failures_keep_their_reason_names() {
        let cases = [
            (ExecError::Refused("busy".into()), "refused"),
            (
                ExecError::Timeout("no answer within 5 ms".into()),
                "timeout",
            ),
            (ExecError::Protocol("unexpected answer".into()), "protocol"),
            (ExecError::Transport("connection lost".into()), "peer_error"),
        ];
        for (e, name) in cases {
            assert_eq!(reason(&e), name);
        }
    }
}
