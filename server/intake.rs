//! Webhook intake over HTTP: `POST /webhooks`.
//!
//! The handler normalizes the body (pure, in the request task), hands it to the single
//! writer, and answers only when the writer says the webhook is on disk:
//!
//! | outcome | status | body |
//! |---|---|---|
//! | new webhook | `200` | `{"result":"accepted","sequence":N}` |
//! | same JSON seen before | `200` | `{"result":"duplicate","sequence":N}` |
//! | JSON object with no readable kind, key or status | `202` | `{"result":"quarantined","reason":"..."}` |
//! | not a JSON object | `400` | `{"error":"..."}` |
//! | signature missing or wrong (when verification is configured) | `401` | `{"error":"..."}` |
//! | body over the limit | `413` | `{"error":"..."}` |
//! | writer queue full, or shutting down | `503` + `Retry-After` | `{"error":"..."}` |
//!
//! Nothing about the payload is logged but its kind, key and status: webhooks carry names,
//! document numbers and emails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::auth::response_signing::ResponseSigner;
use crate::auth::webhook::{AuthError, RequestFacts, Sender, WebhookVerifier};
use crate::clock::Clock;
use crate::cluster::ClusterError;
use crate::domain::webhook::{MalformedWebhook, Normalized, normalize_with_facts};
use crate::metrics::{Metrics, WebhookResult};
use crate::reload::CatalogHandle;
use crate::sequencer::{Receipt, Sequencer, SequencerError};
use crate::store::{Ack, SubmitError};

/// Limits of the intake.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// Longest a request may take before it is answered `408`.
    pub request_timeout: Duration,
    /// Most requests processed at once (verified, read and stored), counted from when a
    /// request's body has arrived whole; more wait their turn, for at most
    /// [`SLOT_WAIT`]. Bodies still arriving take no slot: they are bounded by the
    /// connections and by [`IntakeLimits::body_budgets`].
    pub max_concurrent: usize,
    /// Most bytes of bodies larger than [`SMALL_BODY`] held in memory at once (a body that
    /// would go past it is answered `503` with `Retry-After`): QI's webhooks are a few KiB,
    /// so near-megabyte bodies are the flood this bounds, never a real sender.
    pub large_body_memory: usize,
    /// Most connections open at once; at the bound, the connection idle longest is closed
    /// to make room (or the new one refused when every connection is busy).
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers; also how long a kept-alive
    /// connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a new connection may take to finish its TLS handshake, or to send its first
    /// bytes.
    pub handshake_timeout: Duration,
}

impl IntakeLimits {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: IntakeLimits = IntakeLimits {
        max_body: 1024 * 1024,
        request_timeout: Duration::from_secs(4),
        max_concurrent: 512,
        large_body_memory: 32 * 1024 * 1024,
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(10),
    };
}

impl IntakeLimits {
    /// The request timeout of a cluster node, by default: a webhook published while the
    /// stream elects a new leader (4 to 9 s when the leader's server dies) is held on the
    /// node's disk after `--cluster-hold-after` (5 s, see `crate::cluster`) and answered
    /// then, within QI Tech's 10 s response timeout (seed 004), instead of `503` at 4 s.
    pub const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(9);

    /// Most bytes of bodies held in memory at once, counted as they arrive (a body that
    /// would go past its budget is answered `503`): small bodies (up to [`SMALL_BODY`]) as
    /// many as the request slots could hold, and larger ones `large_body_memory`. Apart, so
    /// that a flood of near-megabyte bodies leaves room for QI's few-KiB webhooks.
    pub fn body_budgets(&self) -> BodyBudgets {
        BodyBudgets {
            small: self
                .max_concurrent
                .saturating_mul(SMALL_BODY.min(self.max_body)),
            large: self.large_body_memory,
        }
    }
}

/// A body up to this size is small: QI's webhooks are a few KiB (the seeds' largest is under
/// 4 KiB).
pub const SMALL_BODY: usize = 64 * 1024;

/// See [`IntakeLimits::body_budgets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyBudgets {
    /// Bytes of bodies up to [`SMALL_BODY`].
    pub small: usize,
    /// Bytes of bodies over [`SMALL_BODY`].
    pub large: usize,
}

/// Longest a request whose body has arrived waits for a slot before it is answered `503`
/// with `Retry-After`: a sender is better told to come back than held.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits::DEFAULT
    }
}

/// What the intake handlers share.
#[derive(Debug, Clone)]
pub(crate) struct IntakeState {
    /// The catalog in effect (a reload swaps it).
    pub(crate) catalog: CatalogHandle,
    /// Where webhooks go to be stored: this node's writer, or the cluster's stream.
    pub(crate) sequencer: Sequencer,
    /// Who may post webhooks.
    pub(crate) verifier: Arc<WebhookVerifier>,
    /// Signs acknowledgements, when configured.
    pub(crate) signer: Option<Arc<ResponseSigner>>,
    /// Where webhooks are counted.
    pub(crate) metrics: Arc<Metrics>,
    /// The time signatures are checked against and acknowledgements signed at.
    pub(crate) clock: Clock,
}

/// The intake's HTTP routes with their limits.
pub(crate) fn router(state: IntakeState, limits: IntakeLimits) -> Router {
    Router::new()
        // QI CaaS sends its card-order webhooks with PUT (its webhook document); its URL is
        // the partner's choice, so it is given this one.
        .route(
            "/webhooks",
            post(receive_webhook)
                .put(receive_webhook)
                .fallback(|| async { IntakeError::MethodNotAllowed }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { IntakeError::NoRoute })
        .with_state(WithLimits {
            state,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_concurrent)),
            bodies: Arc::new(BodyBudget::new(limits.body_budgets())),
        })
}

/// Most request headers, and most bytes of them, the intake reads. QI Tech sends a handful.
pub(crate) const MAX_HEADERS: usize = 64;
/// See [`MAX_HEADERS`].
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The handler's state: what it shares with the server, and its limits.
#[derive(Debug, Clone)]
struct WithLimits {
    state: IntakeState,
    limits: IntakeLimits,
    /// The request slots: [`IntakeLimits::max_concurrent`].
    slots: Arc<Semaphore>,
    /// The bytes of bodies held in memory.
    bodies: Arc<BodyBudget>,
}

/// Bytes of request bodies held in memory, and their bounds (see
/// [`IntakeLimits::body_budgets`]).
#[derive(Debug)]
struct BodyBudget {
    small: Pool,
    large: Pool,
}

/// Bytes held of one bound.
#[derive(Debug)]
struct Pool {
    held: AtomicUsize,
    max: usize,
}

impl Pool {
    fn new(max: usize) -> Pool {
        Pool {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `bytes`, unless that would go past the bound.
    fn take(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.max {
            self.held.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl BodyBudget {
    fn new(budgets: BodyBudgets) -> BodyBudget {
        BodyBudget {
            small: Pool::new(budgets.small),
            large: Pool::new(budgets.large),
        }
    }
}

/// Bytes one request holds of the [`BodyBudget`], given back when dropped: of the small
/// bodies' pool while it holds up to [`SMALL_BODY`], of the large ones' from then on.
struct BodyHold {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyHold {
    /// Takes `more` bytes, unless that would go past the bound.
    fn take(&mut self, more: usize) -> Result<(), IntakeError> {
        let (budget, total) = (&self.budget, self.bytes.saturating_add(more));
        let taken = if total <= SMALL_BODY {
            budget.small.take(more)
        } else if self.bytes <= SMALL_BODY {
            // Grown large: what it held moves to the large bodies' pool.
            let moved = budget.large.take(total);
            if moved {
                budget.small.give_back(self.bytes);
            }
            moved
        } else {
            budget.large.take(more)
        };
        if !taken {
            return Err(IntakeError::Busy(if total <= SMALL_BODY {
                "too many request bodies held in memory"
            } else {
                "too many large request bodies held in memory (QI's webhooks are small)"
            }));
        }
        self.bytes = total;
        Ok(())
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        if self.bytes <= SMALL_BODY {
            self.budget.small.give_back(self.bytes);
        } else {
            self.budget.large.give_back(self.bytes);
        }
    }
}

/// Reads a body whole: at most `max` bytes, held in `hold` as they arrive (what is allocated
/// for them, exactly: a body in several frames is copied into one buffer sized from its
/// declared length, or grown by doubling, and its growth is held before it happens).
async fn read_body(
    body: axum::body::Body,
    max: usize,
    hold: &mut BodyHold,
) -> Result<Bytes, IntakeError> {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    // A declared length over the limit is refused before a byte of it is read.
    let declared = body.size_hint().lower();
    if declared > max as u64 {
        return Err(IntakeError::BodyTooLarge(max));
    }
    let declared = declared as usize;
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IntakeError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        let needed = so_far + data.len();
        if needed > max {
            return Err(IntakeError::BodyTooLarge(max));
        }
        // Most bodies come in one frame: kept as it came, without a copy.
        if so_far == 0 {
            hold.take(data.len())?;
            first = Some(data);
            continue;
        }
        if needed > rest.capacity() {
            let target = needed
                .max(declared)
                .max(rest.capacity().saturating_mul(2))
                .min(max);
            // The first frame's bytes were held as they came; the buffer replaces them.
            let held_already = first.as_ref().map_or(rest.capacity(), Bytes::len);
            hold.take(target.saturating_sub(held_already))?;
            rest.reserve_exact(target - rest.len());
        }
        if let Some(f) = first.take() {
            rest.extend_from_slice(&f);
        }
        rest.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

/// The body of a successful answer.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum IntakeReply {
    Accepted {
        sequence: u64,
    },
    Duplicate {
        sequence: u64,
    },
    Quarantined {
        reason: String,
        quarantine_id: u64,
    },
    /// A cluster node holds it until its stream takes it: kept, not shown yet.
    Held,
}

/// How far a request got, read when it runs out of time.
struct Progress {
    /// The kind to count it under in the metrics.
    kind: String,
    /// Whether its body had arrived whole.
    body_received: bool,
}

/// `POST /webhooks`: the whole request, body included, within `request_timeout`.
async fn receive_webhook(
    State(WithLimits {
        state,
        limits,
        slots,
        bodies,
    }): State<WithLimits>,
    request: Request,
) -> Result<Response, IntakeError> {
    let started = std::time::Instant::now();
    let (metrics, clock) = (state.metrics.clone(), state.clock.clone());
    // What a signed acknowledgement binds, kept only when acknowledgements are signed.
    let signing = state.signer.clone().map(|signer| {
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        (signer, request.method().to_string(), path.to_owned())
    });
    let mut progress = Progress {
        kind: OTHER_KIND.to_owned(),
        body_received: false,
    };
    let deadline = limits.request_timeout;
    let outcome = match tokio::time::timeout(
        deadline,
        store_webhook(state, limits, (&slots, bodies), request, &mut progress),
    )
    .await
    {
        Ok(outcome) => outcome,
        // Whose delay it was decides the answer: the sender's body (408), or storing it (503).
        Err(_) if progress.body_received => Err(IntakeError::NotConfirmed(deadline)),
        Err(_) => Err(IntakeError::Timeout(deadline)),
    };
    let kind = progress.kind;
    let result = match &outcome {
        Ok(Receipt::Stored(Ack::Accepted { .. })) => WebhookResult::Accepted,
        Ok(Receipt::Stored(Ack::Duplicate { .. })) => WebhookResult::Duplicate,
        Ok(Receipt::Stored(Ack::Quarantined { .. })) => WebhookResult::Quarantined,
        Ok(Receipt::Held) => WebhookResult::Held,
        Err(IntakeError::Unauthorized(_)) => WebhookResult::Unauthorized,
        Err(IntakeError::Submit(_) | IntakeError::Cluster(_) | IntakeError::NotConfirmed(_)) => {
            WebhookResult::Failed
        }
        Err(_) => WebhookResult::Refused,
    };
    metrics.webhook(&kind, result, started.elapsed().as_secs_f64());
    let (status, reply) = match outcome? {
        Receipt::Stored(Ack::Accepted { sequence }) => {
            (StatusCode::OK, IntakeReply::Accepted { sequence })
        }
        Receipt::Stored(Ack::Duplicate { sequence }) => {
            (StatusCode::OK, IntakeReply::Duplicate { sequence })
        }
        Receipt::Held => (StatusCode::OK, IntakeReply::Held),
        Receipt::Stored(Ack::Quarantined { id, reason }) => (
            StatusCode::ACCEPTED,
            IntakeReply::Quarantined {
                reason,
                quarantine_id: id,
            },
        ),
    };
    let Some((signer, method, path)) = signing else {
        return Ok((status, Json(reply)).into_response());
    };
    let reply = serde_json::to_vec(&reply).expect("the reply is a JSON object of plain fields");
    let signed = signer.sign(&reply, &method, &path, clock.now_seconds());
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        signed.body,
    )
        .into_response();
    let headers = response.headers_mut();
    let value = |text: String| {
        HeaderValue::try_from(text).expect("a JWT and a configured key are visible ASCII")
    };
    headers.insert(header::AUTHORIZATION, value(signed.authorization));
    if let Some(key) = signed.api_client_key {
        headers.insert("api-client-key", value(key));
    }
    Ok(response)
}

/// The kind label of webhooks whose kind is not one the catalog knows (or not read yet).
const OTHER_KIND: &str = "other";

/// Stores the webhook; sets `kind` (the metrics label) once it is known to the catalog.
async fn store_webhook(
    state: IntakeState,
    limits: IntakeLimits,
    (slots, bodies): (&Semaphore, Arc<BodyBudget>),
    request: Request,
    progress: &mut Progress,
) -> Result<Receipt, IntakeError> {
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Err(IntakeError::HeadersTooLarge {
            count: headers.len(),
            bytes: header_bytes,
        });
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes())
            .trim()
            .to_ascii_lowercase();
        if encoding != "identity" {
            return Err(IntakeError::UnsupportedEncoding(encoding));
        }
    }
    let mut hold = BodyHold {
        budget: bodies,
        bytes: 0,
    };
    let body = read_body(body, limits.max_body, &mut hold).await?;
    progress.body_received = true;
    // Only now, its body here, does the request take a slot, and it does not wait long.
    let _slot = tokio::time::timeout(SLOT_WAIT, slots.acquire())
        .await
        .map_err(|_| IntakeError::Busy("every request slot stayed taken"))?
        .expect("the slots' semaphore is never closed");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        method: method.as_str(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        authorization: header("authorization"),
        api_client_key: header("api-client-key"),
        webhook_id: header("webhook-id"),
        webhook_timestamp: header("webhook-timestamp"),
        webhook_signature: header("webhook-signature"),
        signature: header("signature"),
        // HTTP/2 carries the host in `:authority` (the URI's), HTTP/1.1 in `Host`.
        host: header("host").or(uri.authority().map(|a| a.as_str())),
    };
    let now = state.clock.now_seconds();
    // The body itself, or the webhook decoded from an `encoded_body`: no copy of the body.
    let verified = state.verifier.verify(&facts, &body, now)?;
    let sender = verified.sender;
    let webhook = match verified.body {
        std::borrow::Cow::Borrowed(_) => body,
        std::borrow::Cow::Owned(decoded) => Bytes::from(decoded),
    };
    // The catalog's facts come from the same parse, here in the request's task rather than
    // on the single writer's thread.
    let catalog = state.catalog.current();
    let (normalized, facts) = normalize_with_facts(&catalog, &webhook)?;
    // A key that vouches for one sender's kinds only (QI DTVM's binds no body; QI CaaS's is
    // QI CaaS's): anything else it signs is refused.
    let senders_kinds = match sender {
        Sender::QiDtvm => Some(("QI DTVM", "qi_dtvm_kinds", &catalog.qi_dtvm_kinds)),
        Sender::QiCaas => Some(("QI CaaS", "qi_caas_kinds", &catalog.qi_caas_kinds)),
        Sender::Unverified | Sender::QiTech | Sender::Relay => None,
    };
    if let Some((who, list, kinds)) = senders_kinds {
        let kind = match &normalized {
            Normalized::Event(envelope) => envelope.kind.as_str(),
            Normalized::Quarantine { .. } => "",
        };
        if !kinds.iter().any(|k| k == kind) {
            let what = if kind.is_empty() {
                "a webhook of no known kind".to_owned()
            } else {
                format!("a `{kind}` webhook")
            };
            return Err(AuthError::NotTheSendersKind {
                sender: who,
                list,
                what,
            }
            .into());
        }
    }
    if let Normalized::Event(envelope) = &normalized
        && catalog.kind(&envelope.kind).is_some()
    {
        progress.kind.clone_from(&envelope.kind);
    }
    // A date past what the catalog believes is ordered at its receipt (the reconciler does
    // that); here it is counted, where monitoring looks.
    if let Normalized::Event(envelope) = &normalized
        && let Some(event_time) = envelope.event_time
        && event_time
            > (now * 1000).saturating_add(i64::from(catalog.max_event_time_ahead_seconds) * 1000)
    {
        state.metrics.event_time_ahead();
        tracing::warn!(
            kind = %envelope.kind,
            "a webhook's event time is ahead of its receipt: ordered at its receive time"
        );
    }
    Ok(state.sequencer.submit(normalized, webhook, facts).await?)
}

/// Everything that can go wrong at the intake, turned into an HTTP answer in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// The body is not a webhook.
    #[error(transparent)]
    Malformed(#[from] MalformedWebhook),
    /// The sender could not be verified.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// The body is larger than the limit.
    #[error("the body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The intake is at one of its bounds (named) and answers `503` rather than wait.
    #[error("qistatus is busy ({0}): retry shortly")]
    Busy(&'static str),
    /// The body could not be read (the connection dropped or broke the protocol).
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// The body is compressed, which the intake does not decode.
    #[error("Content-Encoding {0:?} is not supported: send the body uncompressed")]
    UnsupportedEncoding(String),
    /// Too many headers, or too long.
    #[error(
        "request headers too large: {count} headers, {bytes} bytes; at most {MAX_HEADERS} \
         headers and {MAX_HEADER_BYTES} bytes"
    )]
    HeadersTooLarge {
        /// How many headers.
        count: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// The body did not arrive within the limit.
    #[error("the request took longer than {}: send it again", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The body arrived, but storing it was not confirmed within the limit (the writer or the
    /// cluster's stream is slow). It may still be stored: sending it again is safe, a stored
    /// webhook is answered as a duplicate.
    #[error(
        "the webhook was received but not confirmed stored within {}: send it again (if it \
         was stored meanwhile, the answer is `duplicate`)",
        humantime::format_duration(*.0)
    )]
    NotConfirmed(Duration),
    /// A method other than POST or PUT on /webhooks.
    #[error(
        "method not allowed: webhooks are received at POST /webhooks (or PUT, as QI CaaS sends them)"
    )]
    MethodNotAllowed,
    /// The writer could not take or store the webhook.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A cluster node could not replicate the webhook or apply it.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// No such route.
    #[error(
        "no such endpoint: webhooks are received at POST /webhooks (or PUT, as QI CaaS sends them)"
    )]
    NoRoute,
}

impl From<SequencerError> for IntakeError {
    fn from(e: SequencerError) -> Self {
        match e {
            SequencerError::Writer(e) => IntakeError::Submit(e),
            SequencerError::Stream(e) => IntakeError::Cluster(e),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            IntakeError::Malformed(e) => (StatusCode::BAD_REQUEST, e.to_string()),
            IntakeError::Unauthorized(e) => {
                tracing::warn!(reason = %e, "webhook refused: not verified");
                (StatusCode::UNAUTHORIZED, e.to_string())
            }
            IntakeError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            IntakeError::Body(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            IntakeError::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, self.to_string())
            }
            IntakeError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                self.to_string(),
            ),
            IntakeError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, self.to_string()),
            IntakeError::NotConfirmed(_) => {
                tracing::warn!("a webhook was not confirmed stored within the request timeout");
                (StatusCode::SERVICE_UNAVAILABLE, self.to_string())
            }
            IntakeError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, self.to_string()),
            IntakeError::NoRoute => (StatusCode::NOT_FOUND, self.to_string()),
            IntakeError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            IntakeError::Submit(SubmitError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "qistatus is busy: retry shortly".to_owned(),
            ),
            IntakeError::Submit(SubmitError::Closed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "qistatus is shutting down: retry shortly".to_owned(),
            ),
            // Space runs out and comes back: the sender retries, as QI Tech does.
            IntakeError::Submit(SubmitError::Store(e)) if e.is_out_of_space() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "qistatus's disk is full: the webhook was not stored; retry later".to_owned(),
            ),
            // The writer logged the failure, once for its batch.
            IntakeError::Submit(SubmitError::Store(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the webhook could not be stored: retry later".to_owned(),
            ),
            IntakeError::Cluster(e) => {
                tracing::warn!(error = %e, "webhook not replicated");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}: retry shortly"),
                )
            }
        };
        if status.is_client_error() {
            tracing::debug!(status = status.as_u16(), %message, "webhook refused");
        }
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    //! The status mapping, through the router itself (axum's `oneshot` testing pattern),
    //! against a real writer on a temporary store.

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::domain::catalog::Catalog;
    use crate::store::{Store, WriterLimits, spawn_writer};

    #[test]
    fn small_and_large_bodies_have_budgets_of_their_own() {
        let budget = Arc::new(BodyBudget::new(BodyBudgets {
            small: 2 * SMALL_BODY,
            large: 3 * SMALL_BODY,
        }));
        let hold = |bytes| BodyHold {
            budget: budget.clone(),
            bytes,
        };
        let mut large = hold(0);
        large.take(SMALL_BODY).unwrap();
        assert_eq!(budget.small.held.load(Ordering::Acquire), SMALL_BODY);
        large.take(SMALL_BODY).unwrap();
        assert_eq!(
            (
                budget.small.held.load(Ordering::Acquire),
                budget.large.held.load(Ordering::Acquire)
            ),
            (0, 2 * SMALL_BODY),
            "grown large, it moved to the large bodies' pool"
        );
        let mut another = hold(0);
        another.take(SMALL_BODY).unwrap();
        assert!(
            matches!(another.take(1), Err(IntakeError::Busy(m)) if m.contains("large")),
            "the large pool is full"
        );
        assert_eq!(budget.small.held.load(Ordering::Acquire), SMALL_BODY);
        let mut small = hold(0);
        small.take(SMALL_BODY).unwrap();
        assert!(
            matches!(hold(0).take(1), Err(IntakeError::Busy(_))),
            "the small pool is full too"
        );
        drop((large, another, small));
        assert_eq!(budget.small.held.load(Ordering::Acquire), 0);
        assert_eq!(budget.large.held.load(Ordering::Acquire), 0);
    }

    struct Intake {
        app: Router,
        _dir: tempfile::TempDir,
    }

    fn intake(limits: IntakeLimits) -> Intake {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store opens");
        let catalog = Arc::new(Catalog::builtin());
        let metrics = Arc::new(Metrics::new());
        let (writer, _task) = spawn_writer(
            store,
            catalog.clone(),
            WriterLimits::DEFAULT,
            metrics.clone(),
            Clock::system(),
        )
        .expect("the writer starts");
        let state = IntakeState {
            catalog: CatalogHandle::new(Catalog::builtin()),
            sequencer: Sequencer::writer(writer),
            verifier: Arc::new(WebhookVerifier::default()),
            signer: None,
            metrics,
            clock: Clock::system(),
        };
        Intake {
            app: router(state, limits),
            _dir: dir,
        }
    }

    async fn send(app: &Router, method: &str, uri: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a valid request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    const DEBT: &[u8] =
        br#"{"webhook_type":"debt","key":"k1","status":"disbursed","event_datetime":"2024-01-01 10:00:00"}"#;

    #[tokio::test]
    async fn each_outcome_has_its_status_and_body() {
        let intake = intake(IntakeLimits::DEFAULT);
        let app = &intake.app;

        let (status, body) = send(app, "POST", "/webhooks", DEBT).await;
        assert_eq!(
            (status, &body["result"]),
            (200, &"accepted".into()),
            "{body}"
        );
        assert_eq!(body["sequence"], 1);

        // The same JSON value, spelled differently: a duplicate of the first.
        let respelled = br#"{ "status":"disbursed", "key":"k1", "webhook_type":"debt", "event_datetime":"2024-01-01 10:00:00" }"#;
        let (status, body) = send(app, "POST", "/webhooks", respelled).await;
        assert_eq!(
            (status, &body["result"]),
            (200, &"duplicate".into()),
            "{body}"
        );
        assert_eq!(body["sequence"], 1);

        let (status, body) = send(app, "POST", "/webhooks", br#"{"hello":"world"}"#).await;
        assert_eq!(
            (status, &body["result"]),
            (202, &"quarantined".into()),
            "{body}"
        );
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );

        let (status, body) = send(app, "POST", "/webhooks", b"{not json").await;
        assert_eq!(status, 400);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );

        let (status, body) = send(app, "POST", "/nowhere", DEBT).await;
        assert_eq!(status, 404);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("POST /webhooks")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413() {
        let intake = intake(IntakeLimits {
            max_body: 64,
            ..IntakeLimits::DEFAULT
        });
        let (status, _) = send(&intake.app, "POST", "/webhooks", DEBT).await;
        assert_eq!(status, 413);
    }
}
