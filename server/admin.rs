//! The admin listener (`--admin-addr`, loopback by default, never the public intake port):
//! what an orchestrator and a monitoring system ask.
//!
//! | path | answer |
//! |---|---|
//! | `GET /livez` | `200 ok` while the process serves HTTP at all |
//! | `GET /readyz` | `200 ready` when the store is open, replay is done and the writer takes webhooks (on a cluster node also: connected to NATS and at most [`crate::cluster::MAX_READY_LAG`] messages behind the stream); `503` with the reason otherwise (and while shutting down) |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `/ui/` | the console for people ([`crate::console`]) |
//! | `POST /catalog/reload` | reads `--catalog` again and puts it in effect ([`crate::reload`]); `200` with what changed, `422` naming what is wrong with the file, `409` on a cluster node, `503` when the writer cannot; with tokens configured `401` without one (or a console session); `429` within 5 s of the last reload |
//!
//! No request that changes something is taken from another site's page: `403` when the
//! browser marks it cross-origin (`Sec-Fetch-Site`, `Origin`).
//!
//! The store is opened and replayed before any listener serves, so "replay done" holds from
//! the first answer on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::{Held, Progress};
use crate::console::ConsoleState;
use crate::feed::ChangeFeed;
use crate::metrics::{Metrics, Snapshot, flow_labelled};
use crate::net::Admission;
use crate::recovery::RecoveryFigures;
use crate::reload::CatalogHandle;
use crate::reload::{CatalogReloader, ReloadError};
use crate::store::WriterHandle;
use crate::store::{StatusIndex, Store};

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
    /// The catalog in effect: its expectations say which operations are overdue.
    pub(crate) catalog: CatalogHandle,
    pub(crate) store: Store,
    pub(crate) writer: WriterHandle,
    pub(crate) feed: ChangeFeed,
    pub(crate) intake: Admission,
    pub(crate) grpc: Admission,
    pub(crate) stopping: CancellationToken,
    /// A cluster node's progress along the stream.
    pub(crate) cluster: Option<Arc<Progress>>,
    /// What a cluster node holds for its stream.
    pub(crate) held: Option<Arc<Held>>,
    /// When the last catalog reload began: [`MIN_RELOAD_INTERVAL`] apart.
    pub(crate) last_reload: Arc<Mutex<Option<Instant>>>,
    /// The time of day: how long ago the disk was full, what is overdue now.
    pub(crate) clock: Clock,
    /// Recovery's figures, when QI's API is configured.
    pub(crate) recovery: Option<Arc<RecoveryFigures>>,
    /// Host names answered for besides `localhost` and IP addresses (`--admin-host`).
    pub(crate) hosts: Arc<Vec<String>>,
    /// Damage the background scrub found in the log.
    pub(crate) log_damage: Arc<Mutex<Vec<String>>>,
}

impl AdminLimits {
    /// The console's live lists open at once: a quarter of the connections, so that probes,
    /// pages and the metrics scrape always find one.
    pub fn max_live_streams(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

/// Shortest time between two catalog reloads through the admin listener: a reload
/// re-reconciles every operation, so a loop of them would hold ingest back.
pub(crate) const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The admin routes, the console ([`crate::console`]) under `/ui/` among them.
pub(crate) fn router(state: AdminState) -> Router {
    let console = crate::console::router(state.console.clone());
    Router::new()
        .nest_service("/ui", console)
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/catalog/reload", post(reload_catalog))
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(axum::middleware::from_fn_with_state(
            state.hosts.clone(),
            known_hosts_only,
        ))
        .with_state(state)
}

/// Every request must name this listener by a host it answers for: an IP address (no DNS
/// was asked, so no rebinding), `localhost`, or a name given with `--admin-host`. A web page
/// of another site can point its own DNS name at this address (DNS rebinding) and have a
/// browser call it as its own origin, with `Host: rebind.attacker.example`: refused, `421`,
/// before the console, the probes or a reload see it. HTTP/2 names the host in
/// `:authority`; a request naming none (HTTP/1.0) comes from no browser and passes.
async fn known_hosts_only(
    State(hosts): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let named = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(request.uri().authority().map(|a| a.as_str()));
    match named {
        Some(host) if !answers_for(host, &hosts) => {
            tracing::warn!("admin: a request naming an unknown host was refused");
            (
                StatusCode::MISDIRECTED_REQUEST,
                "refused: this listener answers only for localhost, its IP addresses and the \
                 names given with --admin-host\n",
            )
                .into_response()
        }
        _ => next.run(request).await,
    }
}

/// Whether `host` (a `Host` header: a name or address, with or without a port) is one the
/// admin listener answers for.
fn answers_for(host: &str, names: &[String]) -> bool {
    let host = host.trim();
    // `[v6]:port`, `[v6]`, `v4:port`, `name:port`, `name`.
    let bare = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let bare = bare.trim_end_matches('.').to_ascii_lowercase();
    bare.parse::<std::net::Ipv4Addr>().is_ok()
        || bare == "localhost"
        || bare.ends_with(".localhost")
        || names
            .iter()
            .any(|n| n.trim().trim_end_matches('.').eq_ignore_ascii_case(&bare))
}

/// Every request that changes something (any method but `GET`, `HEAD` and `OPTIONS`) must
/// come from the admin listener's own pages or from a tool, never from a page of another
/// site a person happens to have open: refused `403` when the browser says it is
/// cross-site (`Sec-Fetch-Site`), or, from a browser that does not say, when its `Origin`
/// is not this listener's `Host`.
/// Tools (curl, the CLI, orchestrators) send neither header and pass; what they may do is
/// then up to the endpoint's own credentials.
async fn same_origin_only(request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if safe {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A browser that sends `Sec-Fetch-Site` says what it knows; an older one only sends
    // `Origin` (`null` from pages with `Referrer-Policy: no-referrer`, as the console's are,
    // is then taken as foreign: such browsers do not exist among the console's).
    let foreign = match text("sec-fetch-site") {
        Some(site) => !matches!(site.to_ascii_lowercase().as_str(), "same-origin" | "none"),
        None => text("origin").is_some_and(|origin| {
            let host = origin.split_once("://").map(|(_, host)| host);
            let own = text("host").or(request.uri().authority().map(|a| a.as_str()));
            host.is_none() || host != own
        }),
    };
    if foreign {
        tracing::warn!(
            path = request.uri().path(),
            "admin: a cross-origin request to change state was refused"
        );
        return (
            StatusCode::FORBIDDEN,
            "refused: a request from another site (Origin / Sec-Fetch-Site) may not change \
             anything here\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let not_ready = if state.stopping.is_cancelled() {
        Some("shutting down".to_owned())
    } else if !state.writer.is_alive() {
        Some("the writer has stopped: see the log, then restart to replay".to_owned())
    } else if let Some(since) = state.writer.out_of_space_since()
        && state.clock.now_millis() - since < OUT_OF_SPACE_NOT_READY_MS
    {
        // Not ready while appends keep failing; ready again a little after the last failure
        // if no webhook comes to try (a probe must not keep traffic away for ever).
        Some("the disk is full: webhooks are refused with 503 until there is room again".to_owned())
    } else {
        state.cluster.as_ref().and_then(|c| c.not_ready())
    };
    // Damage does not stop a node serving (what it can read is served, what it cannot is
    // refused by name), but the probe says it, where an operator looks first.
    let damage = state
        .log_damage
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    match not_ready {
        None if !damage.is_empty() => (
            StatusCode::OK,
            format!(
                "ready\nthe scrub found damage in the log (run qistatus-server verify; see the runbook):\n{}\n",
                damage.join("\n")
            ),
        )
            .into_response(),
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// `POST /catalog/reload`: with the API's bearer token (or a console session) when tokens
/// are configured, at most once every [`MIN_RELOAD_INTERVAL`].
async fn reload_catalog(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let sessions = &state.console.sessions;
    if sessions.required() {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let signed_in = sessions.viewer(text(header::COOKIE)).is_some();
        if !signed_in && !sessions.accepts_bearer(text(header::AUTHORIZATION)) {
            return Err(AdminError::Unauthenticated);
        }
    }
    let before = {
        let mut last = state.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(wait) = last
            .map(|at| at + MIN_RELOAD_INTERVAL)
            .filter(|next| *next > now)
            .map(|next| next - now)
        {
            return Err(AdminError::TooSoon(wait));
        }
        last.replace(now)
    };
    let report = match state.reloader.reload().await {
        Ok(report) => report,
        Err(e) => {
            // A file that does not load costs nothing to try again: only a reload that
            // reached the writer counts.
            if matches!(e, ReloadError::Catalog(_)) {
                *state.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = before;
            }
            return Err(e.into());
        }
    };
    Ok(Json(serde_json::json!({
        "promoted": report.promoted,
        "still_quarantined": report.still_quarantined,
        "operations": report.operations,
        "operations_changed": report.operations_changed,
    }))
    .into_response())
}

/// Why an admin request that changes something did not: answered in one place.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    /// Tokens are configured and the request carried none (nor a console session).
    #[error(
        "send the API's bearer token (`authorization: Bearer <token>`) or sign in to the console"
    )]
    Unauthenticated,
    /// The last reload was too recent.
    #[error("a reload ran less than {}s ago: try again in {} s", MIN_RELOAD_INTERVAL.as_secs(), .0.as_secs().max(1))]
    TooSoon(Duration),
    /// The reload itself changed nothing.
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::TooSoon(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Reload(ReloadError::Catalog(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Reload(ReloadError::Cluster) => StatusCode::CONFLICT,
            AdminError::Reload(ReloadError::Writer(_)) => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(error = %self, "catalog reload refused; the previous catalog stays in effect");
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if let AdminError::TooSoon(wait) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // Reading the log's size touches the file system: off the async workers.
    let reading = state.store.clone();
    let encoded = reading.read_async(move |store| {
        let log_bytes = store.log_size_bytes().unwrap_or(0);
        let head = state.feed.head();
        let compacted = store.compacted_through().unwrap_or(0);
        let applied = store.applied_through().unwrap_or(0);
        let snapshot = Snapshot {
            queue_depth: as_gauge(state.writer.queue_depth() as u64),
            intake_connections: as_gauge(state.intake.open() as u64),
            grpc_connections: as_gauge(state.grpc.open() as u64),
            watchers: as_gauge(state.feed.subscribers() as u64),
            watchers_stalled: as_gauge(state.feed.stalled() as u64),
            log_bytes: as_gauge(log_bytes),
            oldest_sequence: as_gauge((compacted + 1).min(head.max(1))),
            head_sequence: as_gauge(head),
            view_lag: as_gauge(store.log_last_lsn().saturating_sub(applied)),
            quarantined: as_gauge(store.quarantine_len() as u64),
            stream: state
                .cluster
                .as_ref()
                .map(|c| (as_gauge(c.applied_through()), as_gauge(c.lag()))),
            // One range count per expectation of the catalog: the size of the answer.
            overdue: StatusIndex::new(store.clone())
                .overdue_counts(
                    &state.catalog.current().expectations(),
                    state.clock.now_millis(),
                )
                .unwrap_or_default(),
            view_keys_written: store.keys_written(),
            changes_from_log: state.feed.changes_from_log(),
            flow: flow_labelled(&state.catalog.current(), store.flow_seen().snapshot()),
            held: state
                .held
                .as_ref()
                .map(|h| (as_gauge(h.count()), h.damaged())),
            recovery: state
                .recovery
                .as_ref()
                .map(|figures| figures.gauges(state.clock.now_millis())),
        };
        Ok::<_, std::convert::Infallible>(state.metrics.encode(snapshot))
    });
    let Ok(text) = encoded.await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
