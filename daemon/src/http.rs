//! farmd's HTTP side (`http` in its configuration; loopback by default): Prometheus
//! metrics at `/metrics`, liveness at `/healthz`, readiness at `/readyz`
//! (docs/metrics.md says what each means for systemd and load balancers), and the live
//! monitor (`crate::monitor`). It only reads: nothing here changes what farmd does.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use farm::protocol::HttpEndpoints;
use prometheus_client::registry::Registry;

use crate::config::HttpListen;
use crate::node::Node;

/// Binds farmd's HTTP address: `None` when it is off, or is the default and taken.
pub fn bind(listen: &HttpListen) -> Result<Option<std::net::TcpListener>> {
    let (addr, configured) = match listen {
        HttpListen::Off => return Ok(None),
        HttpListen::Default(a) => (*a, false),
        HttpListen::Configured(a) => (*a, true),
    };
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            l.set_nonblocking(true)
                .context("http listener: non-blocking")?;
            Ok(Some(l))
        }
        Err(e) if !configured => {
            tracing::warn!(%addr, error = %e, "no metrics or monitor: the default http address is taken (set `http`)");
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on tcp {addr} (key `http`)")),
    }
}

/// The URLs of the endpoints served at `addr`.
pub fn endpoints(addr: SocketAddr) -> HttpEndpoints {
    let base = format!("http://{addr}");
    HttpEndpoints {
        metrics: format!("{base}/metrics"),
        healthz: format!("{base}/healthz"),
        readyz: format!("{base}/readyz"),
        monitor: format!("{base}/"),
    }
}

#[derive(Clone)]
pub struct Http {
    pub node: Arc<Node>,
    registry: Arc<Registry>,
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve(node: Arc<Node>, listener: std::net::TcpListener) {
    let registry = Arc::new(crate::metrics::registry(&node));
    let state = Http { node, registry };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::monitor::routes())
        .with_state(state);
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "http listener");
            return;
        }
    };
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

async fn metrics(State(s): State<Http>) -> impl IntoResponse {
    // The shims' counters are files: read off the async threads.
    let registry = s.registry.clone();
    let text = tokio::task::spawn_blocking(move || crate::metrics::encode(&registry))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
}

/// Liveness: the process answers requests.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: farmd accepts work (shims' requests, peers' jobs and lookups). 503 while
/// it stops, so a load balancer or a supervisor takes it out before it goes.
async fn readyz(State(s): State<Http>) -> impl IntoResponse {
    let node = &s.node;
    if node.stopping.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_string());
    }
    let jobs = if node.sandbox.is_some() {
        format!(
            "{} of {} worker slots free",
            node.free_slots(),
            node.cfg.slots
        )
    } else {
        "no job sandbox: runs no jobs for peers".to_string()
    };
    (StatusCode::OK, format!("ready: {jobs}\n"))
}
