//! The admin listener (`--admin-addr`, loopback by default, never the public intake port):
//! what an orchestrator and a monitoring system ask.
//!
//! | path | answer |
//! |---|---|
//! | `GET /livez` | `200 ok` while the process serves HTTP at all |
//! | `GET /readyz` | `200 ready` when the store is open, replay is done and the writer takes webhooks (on a cluster node also: connected to NATS and at most [`crate::cluster::MAX_READY_LAG`] messages behind the stream); `503` with the reason otherwise (and while shutting down) |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `/ui/` | the console for people ([`crate::console`]) |
//! | `POST /catalog/reload` | reads `--catalog` again and puts it in effect ([`crate::reload`]); `200` with what changed, `422` naming what is wrong with the file, `409` on a cluster node, `503` when the writer cannot |
//!
//! The store is opened and replayed before any listener serves, so "replay done" holds from
//! the first answer on.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::cluster::Progress;
use crate::console::ConsoleState;
use crate::feed::ChangeFeed;
use crate::metrics::{Metrics, Snapshot};
use crate::net::Admission;
use crate::reload::{CatalogReloader, ReloadError};
use crate::store::Store;
use crate::store::WriterHandle;

/// How long after an append failed for lack of space `/readyz` still says not ready.
const OUT_OF_SPACE_NOT_READY_MS: i64 = 10_000;

/// The admin listener's own bounds: probes and scrapers must get through however busy the
/// intake is, so the admin listener shares none of the intake's or gRPC's connection budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Most connections open at once (probes, scrapers, people on the console); at the bound
    /// the connection idle longest is closed to admit a new one.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers (also how long a kept-alive
    /// connection may wait for its next request).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a new connection may take to send its first bytes.
    pub handshake_timeout: Duration,
}

impl AdminLimits {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: AdminLimits = AdminLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(10),
    };
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits::DEFAULT
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) reloader: CatalogReloader,
    pub(crate) console: ConsoleState,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Store,
    pub(crate) writer: WriterHandle,
    pub(crate) feed: ChangeFeed,
    pub(crate) intake: Admission,
    pub(crate) grpc: Admission,
    pub(crate) stopping: CancellationToken,
    /// A cluster node's progress along the stream.
    pub(crate) cluster: Option<Arc<Progress>>,
}

/// The admin routes, the console ([`crate::console`]) under `/ui/` among them.
pub(crate) fn router(state: AdminState) -> Router {
    let console = crate::console::router(state.console.clone());
    Router::new()
        .nest_service("/ui", console)
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/catalog/reload", post(reload_catalog))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let not_ready = if state.stopping.is_cancelled() {
        Some("shutting down".to_owned())
    } else if !state.writer.is_alive() {
        Some("the writer has stopped: see the log, then restart to replay".to_owned())
    } else if let Some(since) = state.writer.out_of_space_since()
        && crate::clock::now_millis() - since < OUT_OF_SPACE_NOT_READY_MS
    {
        // Not ready while appends keep failing; ready again a little after the last failure
        // if no webhook comes to try (a probe must not keep traffic away for ever).
        Some("the disk is full: webhooks are refused with 503 until there is room again".to_owned())
    } else {
        state.cluster.as_ref().and_then(|c| c.not_ready())
    };
    match not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// `POST /catalog/reload`.
async fn reload_catalog(State(state): State<AdminState>) -> Result<Response, ReloadError> {
    let report = state.reloader.reload().await?;
    Ok(Json(serde_json::json!({
        "promoted": report.promoted,
        "still_quarantined": report.still_quarantined,
        "operations": report.operations,
        "operations_changed": report.operations_changed,
    }))
    .into_response())
}

/// A reload that changed nothing, as an answer: logged here, once.
impl IntoResponse for ReloadError {
    fn into_response(self) -> Response {
        let status = match &self {
            ReloadError::Catalog(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::Cluster => StatusCode::CONFLICT,
            ReloadError::Writer(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(error = %self, "catalog reload refused; the previous catalog stays in effect");
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Reading the log's size touches the file system: off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let store = &state.store;
        let log_bytes = store.log_size_bytes().unwrap_or(0);
        let head = state.feed.head();
        let compacted = store.compacted_through().unwrap_or(0);
        let applied = store.applied_through().unwrap_or(0);
        let snapshot = Snapshot {
            queue_depth: as_gauge(state.writer.queue_depth() as u64),
            intake_connections: as_gauge(state.intake.open() as u64),
            grpc_connections: as_gauge(state.grpc.open() as u64),
            watchers: as_gauge(state.feed.subscribers() as u64),
            log_bytes: as_gauge(log_bytes),
            oldest_sequence: as_gauge((compacted + 1).min(head.max(1))),
            head_sequence: as_gauge(head),
            view_lag: as_gauge(store.log_last_lsn().saturating_sub(applied)),
            quarantined: as_gauge(store.quarantine_len() as u64),
            stream: state
                .cluster
                .as_ref()
                .map(|c| (as_gauge(c.applied_through()), as_gauge(c.lag()))),
        };
        state.metrics.encode(snapshot)
    })
    .await;
    match encoded {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
