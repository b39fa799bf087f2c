//! The live monitor: a page served at `/` that shows the farm as this node sees it
//! (docs/monitor.md): its peers, the jobs it placed on them and the jobs it ran for
//! them as they happen, and the shims' hit rate and time saved.
//!
//! - `/`: one self-contained page (no asset from anywhere else).
//! - `/api/snapshot`: the state as JSON (the page's first paint; scripts, tests).
//! - `/events`: server-sent events: `snapshot` first, then `job_started` and
//!   `job_finished` as they happen, `status` every second, and `lagged` when this
//!   listener fell behind and skipped events.
//!
//! Memory does not grow with slow or many listeners: job events come from the activity
//! feed's bounded broadcast ring (a listener that falls behind skips, and is told), a
//! stream makes its next event only when the connection takes it, the status is worked
//! out at most once a second whoever asks, and at most [`MAX_STREAMS`] streams are open.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use farm::protocol::StatusReport;
use farm::stats::{Outcome, Summary};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::activity::{Event, JobEvent};
use crate::http::Http;
use crate::node::Node;

const PAGE: &str = include_str!("page.html");

/// Event streams open at once; one more is answered 503.
pub const MAX_STREAMS: usize = 64;

/// How often a stream sends the status (peers, counters).
const TICK: Duration = Duration::from_secs(1);

/// Jobs per second is over this window.
const RATE_WINDOW_MS: u64 = 10_000;

/// The monitor's routes.
pub fn routes() -> Router<Http> {
    Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/events", get(events))
}

/// The shims' counters, as the page shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Hits of every kind (local, farm, remote tiers) and misses (`farm stats`).
    pub hits: u64,
    pub misses: u64,
    /// hits / (hits + misses); `None` before the first compile.
    pub hit_rate: Option<f64>,
    /// Compile time hits saved (`farm stats`: time saved).
    pub time_saved_ms: u64,
    /// Misses a peer compiled.
    pub remote_compiles: u64,
    /// Cache directories read (`shim_stats` in farmd's configuration).
    pub dirs: usize,
}

impl Counters {
    fn of(sum: BTreeMap<String, u64>, dirs: usize) -> Counters {
        let s = Summary { counters: sum };
        let (hits, misses) = (s.hits(), s.get(&Outcome::Miss));
        Counters {
            hits,
            misses,
            hit_rate: (hits.saturating_add(misses) > 0)
                .then(|| hits as f64 / (hits as f64 + misses as f64)),
            time_saved_ms: s.get(&Outcome::TimeSavedMs),
            remote_compiles: s.get(&Outcome::FarmRemote),
            dirs,
        }
    }
}

/// What the page shows besides the jobs, sent every second.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node, its slots and every peer (`farm status`).
    pub status: StatusReport,
    /// This machine's load average ×1000.
    pub load_milli: u32,
    pub counters: Counters,
    /// Remote jobs (placed and served) finished per second over the last 10 s.
    pub jobs_per_s: f64,
    /// Remote jobs running now, placed from here and served here.
    pub placed_running: usize,
    pub served_running: usize,
}

/// The status as sent, with the time it is sent.
#[derive(Serialize)]
struct Stamped<'a> {
    /// Unix time (ms) here: the page lines its timeline up with it, not its own clock.
    now_ms: u64,
    #[serde(flatten)]
    status: &'a Status,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    #[serde(flatten)]
    status: Stamped<'a>,
    /// Jobs running now, and the last finished ones, oldest first.
    running: Vec<JobEvent>,
    finished: Vec<JobEvent>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Jobs per second that finished within [`RATE_WINDOW_MS`] before `now_ms`.
fn jobs_per_s(finished: &[JobEvent], now_ms: u64) -> f64 {
    let since = now_ms.saturating_sub(RATE_WINDOW_MS);
    let n = finished
        .iter()
        .filter(|e| e.start_ms + e.total_ms.unwrap_or(0) >= since)
        .count();
    n as f64 * 1000.0 / RATE_WINDOW_MS as f64
}

/// `farm status` as the page shows it. The HTTP endpoint has no authentication, and
/// a peer's failure messages are free text (a worker's refusal names the flag or the
/// path it refused): only their reason names are shown (docs/security.md).
fn public(mut s: StatusReport) -> StatusReport {
    for p in &mut s.peers {
        for f in &mut p.recent_failures {
            let kind = f.split(':').next().unwrap_or_default();
            *f = match kind {
                "refused" | "timeout" | "protocol" | "peer_error" => kind,
                _ => "other",
            }
            .to_string();
        }
    }
    s
}

/// Works the status out (reads the shims' counter files: call off the async threads).
fn compute(node: &Node) -> Status {
    let (running, finished) = node.activity.snapshot();
    let now_ms = unix_ms();
    let placed_running = running
        .iter()
        .filter(|e| e.role == crate::activity::Role::Placed)
        .count();
    Status {
        status: public(node.status()),
        load_milli: node.advert().load_milli,
        counters: Counters::of(
            crate::metrics::shim_counters(&node.cfg.shim_stats),
            node.cfg.shim_stats.len(),
        ),
        jobs_per_s: jobs_per_s(&finished, now_ms),
        placed_running,
        served_running: running.len() - placed_running,
    }
}

/// The last status worked out, and for which node (a test process may run several).
struct Cached {
    at: Instant,
    node: usize,
    status: Arc<Status>,
}

static CACHE: Mutex<Option<Cached>> = Mutex::new(None);

/// The status, worked out at most about once a second however many listen.
async fn status(node: &Arc<Node>) -> Arc<Status> {
    let key = Arc::as_ptr(node) as usize;
    if let Some(c) = CACHE.lock().unwrap().as_ref() {
        if c.node == key && c.at.elapsed() < TICK - Duration::from_millis(100) {
            return c.status.clone();
        }
    }
    let n = node.clone();
    let s = match tokio::task::spawn_blocking(move || compute(&n)).await {
        Ok(s) => Arc::new(s),
        // The blocking pool is gone (farmd stops): what was known last.
        Err(_) => match CACHE.lock().unwrap().as_ref() {
            Some(c) => return c.status.clone(),
            None => Arc::new(compute(node)),
        },
    };
    *CACHE.lock().unwrap() = Some(Cached {
        at: Instant::now(),
        node: key,
        status: s.clone(),
    });
    s
}

fn snapshot_json(node: &Node, status: &Status) -> String {
    let (running, finished) = node.activity.snapshot();
    let snap = Snapshot {
        status: Stamped {
            now_ms: unix_ms(),
            status,
        },
        running,
        finished,
    };
    serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into())
}

/// The page, with the snapshot in it: the first paint needs no second request.
async fn page(State(s): State<Http>) -> impl IntoResponse {
    let st = status(&s.node).await;
    // In a <script> element: no `<` may close it early (JSON has `<` only in strings,
    // where \u003c means the same).
    let json = snapshot_json(&s.node, &st).replace('<', "\\u003c");
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(PAGE.replacen("/*SNAPSHOT*/", &json, 1)),
    )
}

async fn snapshot(State(s): State<Http>) -> impl IntoResponse {
    let st = status(&s.node).await;
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        snapshot_json(&s.node, &st),
    )
}

static STREAMS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_STREAMS)));

/// One listener's stream.
struct Listener {
    node: Arc<Node>,
    rx: broadcast::Receiver<Event>,
    tick: tokio::time::Interval,
    first: Option<SseEvent>,
    _slot: OwnedSemaphorePermit,
}

fn job_event(e: &Event) -> SseEvent {
    let name = match e {
        Event::JobStarted(_) => "job_started",
        Event::JobFinished(_) => "job_finished",
    };
    SseEvent::default()
        .event(name)
        .data(serde_json::to_string(e).unwrap_or_else(|_| "{}".into()))
}

fn status_event(s: &Status) -> SseEvent {
    SseEvent::default().event("status").data(
        serde_json::to_string(&Stamped {
            now_ms: unix_ms(),
            status: s,
        })
        .unwrap_or_else(|_| "{}".into()),
    )
}

impl Listener {
    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(e) = self.first.take() {
            return Some(e);
        }
        tokio::select! {
            r = self.rx.recv() => Some(match r {
                Ok(e) => job_event(&e),
                Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
                Err(RecvError::Closed) => return None,
            }),
            _ = self.tick.tick() => {
                let s = status(&self.node).await;
                Some(status_event(&s))
            }
        }
    }
}

async fn events(State(s): State<Http>) -> Response {
    let Ok(slot) = STREAMS.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many monitors open here (at most {MAX_STREAMS})\n"),
        )
            .into_response();
    };
    // Listen before the snapshot: a job may then show twice (the page keys jobs by
    // id), never not at all.
    let rx = s.node.activity.subscribe();
    let st = status(&s.node).await;
    let first = SseEvent::default()
        .event("snapshot")
        .data(snapshot_json(&s.node, &st));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let listener = Listener {
        node: s.node.clone(),
        rx,
        tick,
        first: Some(first),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(listener, |mut l| async move {
        let e = l.next().await?;
        Some((Ok::<_, Infallible>(e), l))
    });
    (
        [(header::HeaderName::from_static("x-accel-buffering"), "no")],
        Sse::new(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Role;

    fn job(start_ms: u64, total_ms: u64) -> JobEvent {
        JobEvent {
            id: 1,
            role: Role::Placed,
            shape: "text",
            family: "gcc".into(),
            compiler: "gcc".into(),
            compiler_digest: String::new(),
            submitter: "uid:0(root)".into(),
            peer: "p1".into(),
            job: String::new(),
            start_ms,
            outcome: Some("ok".into()),
            compile_ms: None,
            queue_ms: None,
            total_ms: Some(total_ms),
        }
    }

    #[test]
    fn rate_counts_jobs_that_ended_in_the_window() {
        let now = 100_000;
        let jobs = [
            job(80_000, 5_000), // ended 15 s ago
            job(89_000, 2_000), // ended 9 s ago
            job(95_000, 4_000), // ended 1 s ago
            job(99_000, 1_000), // ends now
        ];
        assert_eq!(jobs_per_s(&jobs, now), 0.3);
        assert_eq!(jobs_per_s(&[], now), 0.0);
    }

    #[test]
    fn counters_add_every_kind_of_hit() {
        let sum: BTreeMap<String, u64> = [
            ("hit.direct", 3),
            ("hit.preprocessor", 1),
            ("miss", 4),
            ("time_saved_ms", 1500),
            ("farm.remote", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let c = Counters::of(sum, 1);
        assert_eq!((c.hits, c.misses), (4, 4));
        assert_eq!(c.hit_rate, Some(0.5));
        assert_eq!(c.time_saved_ms, 1500);
        assert_eq!(c.remote_compiles, 2);
        assert_eq!(Counters::of(BTreeMap::new(), 0).hit_rate, None);
    }

    /// Anyone who reaches the HTTP address reads the status: a peer's failure
    /// messages (a worker's refusal names the flag or path it refused) are cut to
    /// their reason.
    #[test]
    fn the_status_shows_failure_reasons_not_messages() {
        let mut st = StatusReport::default();
        st.peers.push(farm::protocol::PeerStatus {
            node: "p1".into(),
            recent_failures: vec![
                "refused: p1: output /home/alice/secret-project/x.o: is a link".into(),
                "timeout: no answer within 1500 ms".into(),
                "\u{1b}[31m/home/alice".into(),
            ],
            ..Default::default()
        });
        let shown = serde_json::to_string(&public(st)).unwrap();
        assert!(!shown.contains("alice"), "{shown}");
        assert!(
            shown.contains(r#""recent_failures":["refused","timeout","other"]"#),
            "{shown}"
        );
    }

    #[test]
    fn the_page_is_self_contained() {
        // No asset from anywhere else: the monitor works with no internet.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "<link", "src=", "@import", "url("] {
            assert!(!page.contains(needle), "page.html contains `{needle}`");
        }
    }
}
