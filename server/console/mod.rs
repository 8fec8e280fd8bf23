//! The console: web pages for the people who ask "what happened to debt X?" (support,
//! operations, finance), served on the admin listener under `/ui/`.
//!
//! | path | page |
//! |---|---|
//! | `GET /ui/` | counts by kind, status and phase; live status changes; a key search |
//! | `GET /ui/operations/{key}[?kind=]` | status, phase, milestones, facts, the timeline of its webhooks |
//! | `GET /ui/operations/{key}/webhooks/{seq}` | one raw webhook, personal data masked |
//! | `POST /ui/operations/{key}/webhooks/{seq}/reveal` | the same, unmasked; logged (who, which operation and webhook; never the values) |
//! | `POST /ui/operations/{key}/resend` | asks QI to resend what qistatus does not hold of it (when QI's API is configured; `crate::recovery`) |
//! | `GET /ui/list?kind=&status=&phase=` | operations by status or phase, paged |
//! | `GET /ui/quarantine` | quarantined webhooks with their reasons, paged |
//! | `GET /ui/live` | server-sent events: status changes as they commit (the dashboard's live list) |
//! | `GET/POST /ui/login`, `POST /ui/logout` | when gRPC tokens are configured, a token signs a person in ([`session`]) |
//!
//! Guarantees: pages are server-rendered and escape every value from a webhook (maud); a
//! Content-Security-Policy allows scripts only from `/ui/assets/`, so even a value that
//! slipped through could not run; bad input gets a page with the reason (404 for an unknown
//! key, 400 for a bad filter), never a 5xx for the person's mistake; nothing here writes to
//! the store (a resend asked of QI arrives at the intake like any webhook). Assets are
//! embedded in the binary.

mod charts;
mod pages;
mod session;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use maud::Markup;
use serde::Deserialize;

use crate::auth::grpc::BearerTokens;
use crate::clock::Clock;
use crate::domain::catalog::canonical_status;
use crate::domain::catalog::{Catalog, StatusClass};
use crate::domain::personal;
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::{check_key, check_name};
use crate::feed::{ChangeFeed, FeedEvent, FeedFilter};
use crate::flow_window::{FlowError, FlowWindow};
use crate::listing::{ListAsk, ListError, ListPage, ListQuery, Lists};
use crate::recovery::{RecoveryError, RecoveryHandle};
use crate::reload::CatalogHandle;
use crate::store::{Lookup, Store, StoreError};
pub(crate) use session::Sessions;
use session::{SignInRefused, Viewer};

/// Operations per list page, quarantined webhooks per quarantine page.
const PAGE: usize = 50;

/// What the console reads.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleState {
    pub(crate) store: Store,
    pub(crate) feed: ChangeFeed,
    pub(crate) catalog: CatalogHandle,
    pub(crate) sessions: Arc<Sessions>,
    /// The lists (`/ui/list`, `/ui/overdue`), as the API reads them.
    pub(crate) lists: Lists,
    /// The live lists (`/ui/live`) open at once: each holds a connection for as long as a
    /// page is open, so they have a bound of their own, below the listener's, and probes and
    /// pages always find a connection.
    pub(crate) live_streams: Arc<tokio::sync::Semaphore>,
    /// Whether the admin listener serves TLS: cookies are then `Secure`.
    pub(crate) secure_cookies: bool,
    /// What "overdue now" is measured against.
    pub(crate) clock: Clock,
    /// Recovery, when QI's API is configured: "ask QI to resend".
    pub(crate) recovery: Option<RecoveryHandle>,
    /// Proxies whose `X-Forwarded-For` names the client of a sign-in.
    pub(crate) trusted_proxies: Arc<Vec<IpAddr>>,
}

/// Who may use the console, and how much of the admin listener it may hold.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleAccess {
    /// The tokens people sign in with (the API's); open when empty.
    pub(crate) tokens: BearerTokens,
    /// Whether the admin listener serves TLS: cookies are then `Secure`.
    pub(crate) secure_cookies: bool,
    /// Most live lists open at once.
    pub(crate) max_live_streams: usize,
    /// Proxies whose `X-Forwarded-For` names the client of a sign-in.
    pub(crate) trusted_proxies: Vec<IpAddr>,
}

impl ConsoleState {
    pub(crate) fn new(
        store: Store,
        feed: ChangeFeed,
        catalog: CatalogHandle,
        lists: Lists,
        clock: Clock,
        access: ConsoleAccess,
    ) -> Self {
        ConsoleState {
            lists,
            live_streams: Arc::new(tokio::sync::Semaphore::new(access.max_live_streams.max(1))),
            clock,
            store,
            feed,
            catalog,
            sessions: Arc::new(Sessions::new(access.tokens)),
            secure_cookies: access.secure_cookies,
            recovery: None,
            trusted_proxies: Arc::new(access.trusted_proxies),
        }
    }

    /// This console offering "ask QI to resend" through `recovery`.
    pub(crate) fn with_recovery(mut self, recovery: Option<RecoveryHandle>) -> Self {
        self.recovery = recovery;
        self
    }
}

/// The console's routes, to be nested under `/ui`.
pub(crate) fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/live", get(live))
        .route("/operations", get(search))
        .route("/operations/{key}", get(operation))
        .route("/operations/{key}/resend", post(resend))
        .route("/operations/{key}/webhooks/{sequence}", get(payload))
        .route("/operations/{key}/webhooks/{sequence}/reveal", post(reveal))
        .route("/list", get(list))
        .route("/overdue", get(overdue))
        .route("/flow", get(flow))
        .route("/quarantine", get(quarantine))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .fallback(|| async { ConsoleError::NotFound("no such page".into()) })
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Everything that can go wrong in the console, turned into a page in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// Not signed in: go to the sign-in form.
    #[error("sign in first")]
    SignIn,
    /// The token was not accepted.
    #[error("that token is not accepted")]
    BadToken,
    /// A form that changes something came without its token.
    #[error("this form is stale or comes from another site: reload the page and try again")]
    Forbidden,
    /// Too many wrong tokens from this address.
    #[error("too many wrong tokens from your address: try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// The request names something impossible.
    #[error("{0}")]
    BadRequest(String),
    /// The live list cannot start now (too many watchers, or shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// QI's API refused or could not be reached (its message, which names no personal
    /// data: QI's codes and statuses).
    #[error("QI's API: {0}")]
    Upstream(String),
    /// A list as asked cannot be read: a field is wrong (400), or the store failed.
    #[error(transparent)]
    List(#[from] ListError),
    /// The store failed (logged here, once).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::SignIn => return Redirect::to("/ui/login").into_response(),
            ConsoleError::BadToken => {
                let page = pages::layout("Sign in", None, pages::login(Some(&self.to_string())));
                return (StatusCode::UNAUTHORIZED, page).into_response();
            }
            ConsoleError::Throttled(wait) => {
                let page = pages::layout("Sign in", None, pages::login(Some(&self.to_string())));
                let retry = [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())];
                return (StatusCode::TOO_MANY_REQUESTS, retry, page).into_response();
            }
            ConsoleError::Forbidden => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ConsoleError::List(ListError::Store(e)) | ConsoleError::Store(e) => {
                tracing::error!(error = %e, "console: the store failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ConsoleError::List(_) => StatusCode::BAD_REQUEST,
        };
        let message = match &self {
            ConsoleError::List(ListError::Store(_)) | ConsoleError::Store(_) => {
                "the store could not be read; see the server's log".into()
            }
            other => other.to_string(),
        };
        let page = pages::layout(
            status.canonical_reason().unwrap_or("Error"),
            None,
            pages::error(status.as_u16(), &message),
        );
        let mut response = (status, page).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A browser refused a live list tries again: on a new connection, later, so that
            // this one does not sit idle on the listener's bound meanwhile.
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Who is looking, or a redirect to the sign-in form.
fn viewer(state: &ConsoleState, headers: &HeaderMap) -> Result<Viewer, ConsoleError> {
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    state.sessions.viewer(cookie).ok_or(ConsoleError::SignIn)
}

/// A page for `viewer`.
fn page(viewer: &Viewer, title: &str, body: Markup) -> Markup {
    pages::layout(title, viewer.csrf.as_deref(), body)
}

/// Refuses a form body without the signed-in viewer's token (from another site, or a
/// stale page): its `csrf` field, read as axum's `Form` reads a body (`serde_urlencoded`);
/// an open console (no session) has no token to check, and takes a body of any type.
fn check_form(viewer: &Viewer, form: &[u8]) -> Result<(), ConsoleError> {
    let Some(expected) = &viewer.csrf else {
        return Ok(());
    };
    #[derive(Deserialize)]
    struct Csrf {
        csrf: Option<String>,
    }
    let sent = serde_urlencoded::from_bytes::<Csrf>(form)
        .ok()
        .and_then(|f| f.csrf);
    if sent.as_deref() == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden)
    }
}

/// Headers on every console answer: no caching of pages with personal data, no framing, and
/// scripts and styles only from the console's own assets.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
}

/// `GET /ui/`.
async fn overview(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let (counts, quarantined) = state
        .store
        .read_async(|store| Ok::<_, StoreError>((store.counts()?, store.quarantine_len())))
        .await?;
    let counts: Vec<_> = counts.into_iter().filter(|c| c.operations > 0).collect();
    let recovery = state.recovery.as_ref().map(|r| r.figures.shown());
    Ok(page(
        &viewer,
        "Overview",
        pages::overview(&counts, state.feed.head(), quarantined, recovery.as_ref()),
    ))
}

#[derive(Debug, Deserialize)]
struct KeyQuery {
    key: Option<String>,
    kind: Option<String>,
}

/// `GET /ui/operations?key=`: the search box.
async fn search(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<KeyQuery>,
) -> Result<Redirect, ConsoleError> {
    viewer(&state, &headers)?;
    let key = query.key.unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        return Err(ConsoleError::BadRequest("type an operation key".into()));
    }
    check_key(key).map_err(ConsoleError::BadRequest)?;
    let mut to = format!("/ui/operations/{}", pages::encode(key));
    if let Some(kind) = query.kind.filter(|k| !k.trim().is_empty()) {
        to.push_str(&format!("?kind={}", pages::encode(&kind)));
    }
    Ok(Redirect::to(&to))
}

/// What a key (and kind) names.
fn find(state: &ConsoleState, key: &str, kind: Option<&str>) -> Result<Lookup, ConsoleError> {
    check_key(key).map_err(ConsoleError::BadRequest)?;
    let kind = match kind.map(str::trim).filter(|k| !k.is_empty()) {
        Some(raw) => {
            let kind = state.catalog.current().resolve_kind(raw);
            check_name("kind", &kind).map_err(ConsoleError::BadRequest)?;
            Some(kind)
        }
        None => None,
    };
    Ok(state.store.lookup(key, kind.as_deref())?)
}

/// `GET /ui/operations/{key}`.
async fn operation(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<KeyQuery>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    // A point read, in place (see `Store::read_async`).
    let body = match find(&state, &key, query.kind.as_deref())? {
        Lookup::Several(kinds) => pages::choose_kind(&key, &kinds),
        Lookup::Found(mut op) => {
            // What the page shows outside the payloads is masked as the payloads are.
            let catalog = state.catalog.current();
            let masked = personal::mask_operation(
                &mut op,
                &catalog.personal_fields,
                &catalog.personal_facts,
            );
            let (parts, parts_omitted) =
                state
                    .store
                    .parts_of(&op.kind, &op.key, crate::store::MOST_PARTS_LISTED)?;
            pages::operation(
                &op,
                masked,
                state
                    .recovery
                    .as_ref()
                    .map(|_| viewer.csrf.as_deref().unwrap_or("")),
                (&parts, parts_omitted),
            )
        }
        Lookup::Missing(what) => return Err(ConsoleError::NotFound(what)),
    };
    Ok(page(&viewer, &key, body))
}

/// `POST /ui/operations/{key}/resend`: asks QI at once (no backoff) for the operation's
/// events and to resend those qistatus does not hold. A POST with the form token, so that no
/// link, prefetch or other site asks QI anything.
async fn resend(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(query): Query<KeyQuery>,
    form: axum::body::Bytes,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    check_form(&viewer, &form)?;
    let Some(recovery) = &state.recovery else {
        return Err(ConsoleError::NotFound(
            "QI's API is not configured on this server (--qitech-api-url)".into(),
        ));
    };
    let op = match find(&state, &key, query.kind.as_deref())? {
        Lookup::Found(op) => *op,
        Lookup::Several(kinds) => {
            return Err(ConsoleError::BadRequest(Lookup::ambiguous(&key, &kinds)));
        }
        Lookup::Missing(what) => return Err(ConsoleError::NotFound(what)),
    };
    let report = recovery.ask(&op.kind, &op.key).await.map_err(|e| match e {
        RecoveryError::Busy(_) | RecoveryError::LostLease => {
            ConsoleError::Unavailable(e.to_string())
        }
        RecoveryError::Store(e) => ConsoleError::Store(e),
        other => ConsoleError::Upstream(other.to_string()),
    })?;
    tracing::info!(
        target: "qistatus::audit",
        who = %viewer.who,
        kind = %op.kind,
        key = %op.key,
        resent = report.resent,
        "console: QI asked to resend"
    );
    Ok(page(
        &viewer,
        "Asked QI to resend",
        pages::resent(&op, report.events, report.held, report.resent),
    ))
}

/// The operation's webhook at `sequence`, pretty-printed, masked unless `reveal`: a point
/// read, in place (see `Store::read_async`).
fn webhook_page(
    state: &ConsoleState,
    viewer: &Viewer,
    key: &str,
    kind: Option<&str>,
    sequence: u64,
    reveal: bool,
) -> Result<(Operation, Markup), ConsoleError> {
    let op = match find(state, key, kind)? {
        Lookup::Found(op) => *op,
        Lookup::Several(kinds) => {
            return Err(ConsoleError::BadRequest(Lookup::ambiguous(key, &kinds)));
        }
        Lookup::Missing(what) => return Err(ConsoleError::NotFound(what)),
    };
    if !op.history.iter().any(|e| e.sequence == sequence) {
        return Err(ConsoleError::NotFound(format!(
            "webhook {sequence} is not one of this operation's"
        )));
    }
    let bodies = state.store.bodies(&op.kind, &op.key)?;
    let id = op
        .history
        .iter()
        .find(|e| e.sequence == sequence)
        .map(|e| e.event_id)
        .expect("checked above: the sequence is one of the operation's");
    let raw = state.store.body_checked(&bodies, sequence, &id)?.ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "webhook {sequence} is no longer kept (log retention); its summary is in the timeline"
        ))
    })?;
    let (pretty, masked) = match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(mut value) => {
            let masked = (!reveal)
                .then(|| personal::mask(&mut value, &state.catalog.current().personal_fields));
            (
                serde_json::to_string_pretty(&value).expect("a JSON value serializes"),
                masked,
            )
        }
        // Stored webhooks are JSON objects; anything else is shown only when revealed.
        Err(_) if reveal => (String::from_utf8_lossy(&raw).into_owned(), None),
        Err(_) => (personal::MASK.to_owned(), Some(1)),
    };
    let body = pages::payload(&op, sequence, &pretty, masked, viewer.csrf.as_deref());
    Ok((op, body))
}

/// `GET /ui/operations/{key}/webhooks/{sequence}`.
async fn payload(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path((key, sequence)): Path<(String, u64)>,
    Query(query): Query<KeyQuery>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let (_, body) = webhook_page(
        &state,
        &viewer,
        &key,
        query.kind.as_deref(),
        sequence,
        false,
    )?;
    Ok(page(&viewer, &format!("Webhook {sequence}"), body))
}

/// `POST /ui/operations/{key}/webhooks/{sequence}/reveal`: a POST, so that no link, prefetch
/// or crawler reveals anything; the cookie is `SameSite=Strict`, so no other site can post it.
async fn reveal(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path((key, sequence)): Path<(String, u64)>,
    Query(query): Query<KeyQuery>,
    form: axum::body::Bytes,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    check_form(&viewer, &form)?;
    let (op, body) = webhook_page(&state, &viewer, &key, query.kind.as_deref(), sequence, true)?;
    // The audit record: who, which operation and webhook. Never the values.
    tracing::warn!(
        target: "qistatus::audit",
        who = %viewer.who,
        kind = %op.kind,
        key = %op.key,
        sequence,
        "console: personal data revealed"
    );
    Ok(page(&viewer, &format!("Webhook {sequence}"), body))
}

/// What `/ui/list` and `/ui/overdue` take: the form's fields, and the page token of a
/// "next page" link (the API's: one cursor for both edges).
#[derive(Debug, Deserialize)]
struct ListForm {
    kind: Option<String>,
    status: Option<String>,
    phase: Option<String>,
    page: Option<String>,
}

impl ListForm {
    /// The form's fields, trimmed, empty ones left out.
    fn field(value: &Option<String>) -> Option<String> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// The phase named, if one is.
    fn phase(&self) -> Result<Option<Phase>, ConsoleError> {
        Self::field(&self.phase)
            .map(|p| {
                Phase::ALL
                    .into_iter()
                    .find(|phase| phase.as_str() == p.to_ascii_lowercase())
                    .ok_or_else(|| {
                        ConsoleError::BadRequest(format!(
                            "unknown phase {p:?}: one of pending, active, succeeded, failed"
                        ))
                    })
            })
            .transpose()
    }
}

/// A page of the list `ask` describes (after `form.page`, when given), and the link to the
/// next one, whose address keeps the form's fields.
async fn list_page(
    state: &ConsoleState,
    catalog: Arc<Catalog>,
    ask: ListAsk<'_>,
    form: &ListForm,
    path: &str,
) -> Result<(ListQuery, ListPage, Option<String>), ConsoleError> {
    let query = ListQuery::new(&catalog, ask)?;
    let token = ListForm::field(&form.page).unwrap_or_default();
    let page = state
        .lists
        .page(&query, catalog, &token, state.clock.now_millis())
        .await?;
    let next = page.next_page_token.as_ref().map(|token| {
        let mut href = format!("{path}?");
        for (name, value) in [
            ("kind", &form.kind),
            ("status", &form.status),
            ("phase", &form.phase),
        ] {
            if let Some(value) = ListForm::field(value) {
                href.push_str(&format!("{name}={}&", pages::encode(&value)));
            }
        }
        href.push_str(&format!("page={}", pages::encode(token)));
        href
    });
    Ok((query, page, next))
}

/// `GET /ui/list`.
async fn list(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(form): Query<ListForm>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let catalog = state.catalog.current();
    let statuses: Vec<String> = ListForm::field(&form.status).into_iter().collect();
    let kind = ListForm::field(&form.kind).unwrap_or_default();
    let ask = ListAsk {
        kind: &kind,
        statuses: &statuses,
        phase: form.phase()?,
        page_size: PAGE,
        ..ListAsk::default()
    };
    let shown = pages::ListForm {
        kind: Some(kind.trim())
            .filter(|k| !k.is_empty())
            .map(|k| catalog.resolve_kind(k)),
        status: statuses.first().map(|s| canonical_status(s)),
        phase: ask.phase,
    };
    let kinds: Vec<String> = catalog.kinds.keys().cloned().collect();
    // The form alone, until it says what to list.
    let (operations, next) = match list_page(&state, catalog, ask, &form, "/ui/list").await {
        Ok((_, page, next)) => (
            page.operations.into_iter().map(|(op, _)| op).collect(),
            next,
        ),
        Err(ConsoleError::List(ListError::NothingToList)) => (Vec::new(), None),
        Err(e) => return Err(e),
    };
    Ok(page(
        &viewer,
        "Lists",
        pages::list(&kinds, &shown, &operations, next),
    ))
}

/// `GET /ui/overdue`.
async fn overdue(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(form): Query<ListForm>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let catalog = state.catalog.current();
    let kind = ListForm::field(&form.kind).unwrap_or_default();
    let ask = ListAsk {
        kind: &kind,
        overdue: true,
        page_size: PAGE,
        ..ListAsk::default()
    };
    let kinds: Vec<String> = catalog.kinds.keys().cloned().collect();
    let now = state.clock.now_millis();
    let (query, listed, next) =
        list_page(&state, catalog.clone(), ask, &form, "/ui/overdue").await?;
    let count = query.expectations(&catalog).len();
    let operations: Vec<_> = listed
        .operations
        .into_iter()
        .filter_map(|(op, late)| Some((op, late?)))
        .collect();
    Ok(page(
        &viewer,
        "Overdue",
        pages::overdue(&kinds, query.kind.as_deref(), count, &operations, now, next),
    ))
}

/// What `/ui/flow` was asked: a kind (by default `debt`, else the catalog's first), and how
/// many days up to today (one of [`pages::FLOW_DAYS`], 7 by default).
#[derive(Debug, Deserialize)]
struct FlowForm {
    kind: Option<String>,
    days: Option<String>,
}

/// `GET /ui/flow`.
async fn flow(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(form): Query<FlowForm>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let catalog = state.catalog.current();
    let kinds: Vec<String> = catalog.kinds.keys().cloned().collect();
    let kind = match ListForm::field(&form.kind) {
        Some(kind) => catalog.resolve_kind(&kind),
        None if catalog.kind("debt").is_some() => "debt".to_owned(),
        None => kinds.first().cloned().unwrap_or_default(),
    };
    let days = match ListForm::field(&form.days) {
        None => 7,
        Some(days) => days
            .parse::<i32>()
            .ok()
            .filter(|d| pages::FLOW_DAYS.contains(d))
            .ok_or_else(|| {
                ConsoleError::BadRequest(format!(
                    "days must be one of {:?}, not {days:?}",
                    pages::FLOW_DAYS
                ))
            })?,
    };
    let now = state.clock.now_millis();
    let since = now - i64::from(days - 1) * crate::domain::flow::DAY_MS;
    let window = FlowWindow::new(&kind, Some(since), Some(now), now)
        .map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
    let report = window.answer(&state.store).await.map_err(|e| match e {
        FlowError::Off => ConsoleError::NotFound(e.to_string()),
        FlowError::Store(e) => ConsoleError::from(e),
    })?;
    let counts = state.store.read_async(|store| store.counts()).await?;
    // Now, by status: the catalog's stages in their order, then its end statuses, then
    // statuses it does not know.
    let mut now_by_status: Vec<(String, Phase, u64)> = counts
        .into_iter()
        .filter(|c| c.kind == window.kind)
        .map(|c| (c.status, c.phase, c.operations))
        .collect();
    now_by_status.sort_by_key(
        |(status, _, _)| match catalog.classify(&window.kind, status) {
            StatusClass::Stage(i) => (0, i),
            StatusClass::End { .. } => (1, 0),
            StatusClass::Unknown => (2, 0),
        },
    );
    let view = pages::FlowView {
        kinds: &kinds,
        kind: &window.kind,
        days,
        first_day: window.first_day,
        last_day: window.last_day,
        now: &now_by_status,
        report: &report,
    };
    Ok(page(&viewer, "Flow", pages::flow(&view)))
}

#[derive(Debug, Deserialize)]
struct AfterQuery {
    after: Option<u64>,
}

/// `GET /ui/quarantine`.
async fn quarantine(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<AfterQuery>,
) -> Result<Markup, ConsoleError> {
    let viewer = viewer(&state, &headers)?;
    let after = query.after.unwrap_or(0);
    let mut entries = state
        .store
        .read_async(move |store| {
            store
                .quarantined_after(after)
                .take(PAGE + 1)
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    let next = (entries.len() > PAGE).then(|| {
        entries.truncate(PAGE);
        format!("/ui/quarantine?after={}", entries[PAGE - 1].0)
    });
    Ok(page(
        &viewer,
        "Quarantine",
        pages::quarantine(&entries, next),
    ))
}

/// `GET /ui/live`: status changes from now on, as server-sent events whose data is JSON
/// (the page writes it with `textContent`, never as HTML).
async fn live(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ConsoleError> {
    viewer(&state, &headers)?;
    let open = state
        .live_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ConsoleError::Unavailable(
                "too many live lists are open on this server: close one, or reload later".into(),
            )
        })?;
    let subscription = state
        .feed
        .subscribe(FeedFilter::default(), None, None)
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    // The permit goes with the stream: given back when the page closes it.
    let stream = futures_util::stream::unfold(
        (subscription, open),
        |(mut subscription, open)| async move {
            loop {
                match subscription.recv().await {
                    Some(Ok(FeedEvent::Change { sequence, change })) => {
                        let op = &change.operation;
                        let data = serde_json::json!({
                            "sequence": sequence,
                            "kind": op.kind,
                            "key": op.key,
                            "status": op.status,
                            "phase": op.phase.as_str(),
                            "href": pages::operation_href(&op.kind, &op.key),
                        });
                        let event = Event::default().event("change").data(data.to_string());
                        return Some((Ok(event), (subscription, open)));
                    }
                    // Progress: the keep-alive already tells the browser the stream is alive.
                    Some(Ok(_)) => {}
                    // Shutting down, or the store failed: the browser reconnects.
                    Some(Err(_)) | None => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /ui/login`.
async fn login_form(State(state): State<ConsoleState>) -> Response {
    if !state.sessions.required() {
        return Redirect::to("/ui/").into_response();
    }
    pages::layout("Sign in", None, pages::login(None)).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`.
async fn login(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ConsoleError> {
    let client = client_address(peer.ip(), &headers, &state.trusted_proxies);
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let signed = state
        .sessions
        .sign_in(&form.token, client, session::device_id(cookies))
        .map_err(|refused| match refused {
            SignInRefused::BadToken => ConsoleError::BadToken,
            SignInRefused::Throttled(wait) => ConsoleError::Throttled(wait),
        })?;
    let mut response = Redirect::to("/ui/").into_response();
    for cookie in [
        session::session_cookie(&signed.session, state.secure_cookies),
        session::device_cookie(&signed.device, state.secure_cookies),
    ] {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::try_from(cookie).expect("a hex id and fixed text are a valid header"),
        );
    }
    Ok(response)
}

/// The address a sign-in comes from: the peer's, or, when the peer is one of the configured
/// proxies (`--trusted-proxy`), the last address in `X-Forwarded-For` that is not one of
/// them. From anyone else, `X-Forwarded-For` is whatever they chose to write, and ignored.
fn client_address(peer: IpAddr, headers: &HeaderMap, proxies: &[IpAddr]) -> IpAddr {
    if !proxies.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .find(|hop| !proxies.contains(hop))
        .unwrap_or(peer)
}

/// `POST /ui/logout`.
async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    if let Some(viewer) = state.sessions.viewer(cookie) {
        check_form(&viewer, &form)?;
    }
    state.sessions.sign_out(cookie);
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::try_from(session::cleared_cookie())
            .expect("a cookie of fixed text is a valid header"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_address_is_read_only_from_configured_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"),
        );
        // Not from a proxy: the header is the sender's own writing.
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(
            client_address(stranger, &headers, &[proxy, inner]),
            stranger
        );
        // From the proxies: the last hop that is not one of them (what the client wrote
        // before it, 6.6.6.6, is not believed).
        assert_eq!(
            client_address(proxy, &headers, &[proxy, inner]),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }
}
