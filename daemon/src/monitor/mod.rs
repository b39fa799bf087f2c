//! The live monitor: a page served at `/` that shows the farm as this node sees it.

use axum::Router;

use crate::http::Http;

/// The monitor's routes.
pub fn routes() -> Router<Http> {
    Router::new()
}
