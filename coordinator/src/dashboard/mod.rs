//! The web dashboard: an HTTP listener in the coordinator's process, behind the same tokens as the gRPC API and
//! read-only (an admin sees every team's experiments, a team token its own, a worker token nothing). The page is
//! embedded in the binary (no CDN, nothing fetched at run time) and draws from the JSON API under `/api`;
//! `/api/experiments/{id}/events` streams the experiment's job changes and metric points as server-sent events,
//! so the page updates without reloading.

mod api;
mod downsample;
mod hub;
mod snapshot;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::auth::Auth;
use crate::scheduler::Scheduler;

pub use downsample::min_max_buckets;

/// What the handlers read.
pub struct Dashboard {
    pub scheduler: Arc<Scheduler>,
    pub auth: Arc<Auth>,
    hub: hub::Hub,
    snapshots: Arc<snapshot::Snapshots>,
}

impl Dashboard {
    /// The dashboard's state; starts the task that gathers the scheduler's events for the pages (so it needs a
    /// Tokio runtime).
    pub fn new(scheduler: Arc<Scheduler>, auth: Arc<Auth>) -> Dashboard {
        let snapshots = Arc::new(snapshot::Snapshots::new(hub::COALESCE));
        let hub = hub::Hub::start(&scheduler, snapshots.clone());
        Dashboard {
            scheduler,
            auth,
            hub,
            snapshots,
        }
    }
}

/// The page: HTML, CSS and script in one file; every stored string is put in the page as text (never as HTML).
pub const PAGE: &str = include_str!("page.html");

/// The dashboard's routes.
pub fn router(state: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/api/experiments", get(api::experiments))
        .route("/api/experiments/{id}", get(api::experiment))
        .route("/api/experiments/{id}/curves", get(api::curves))
        .route("/api/experiments/{id}/series", get(api::series))
        .route("/api/experiments/{id}/tables", get(api::tables))
        .route("/api/experiments/{id}/selections", get(api::selections))
        .route("/api/experiments/{id}/audit", get(api::audit))
        .route("/api/experiments/{id}/verify", get(api::verify))
        .route("/api/experiments/{id}/figures", get(api::figures))
        .route("/api/experiments/{id}/events", get(api::events))
        .route("/api/workers", get(api::workers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            snapshot::share_replies,
        ))
        .with_state(state)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_never_writes_stored_text_as_html() {
        // Job names, errors and manifest text reach the page only through textContent.
        assert!(!super::PAGE.contains("innerHTML"));
        assert!(!super::PAGE.contains("outerHTML"));
        assert!(!super::PAGE.contains("insertAdjacentHTML"));
        assert!(!super::PAGE.contains("document.write"));
        // Nothing fetched from elsewhere: the only absolute URL is the SVG namespace.
        let urls = super::PAGE.matches("http").count();
        assert_eq!(
            urls,
            super::PAGE.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(!super::PAGE.contains("<link") && !super::PAGE.contains(" src="));
    }
}
