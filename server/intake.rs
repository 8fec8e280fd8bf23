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
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower::ServiceBuilder;

use crate::auth::webhook::{AuthError, RequestFacts, WebhookVerifier};
use crate::domain::catalog::Catalog;
use crate::domain::webhook::{MalformedWebhook, normalize};
use crate::store::writer::{Ack, SubmitError, WriterHandle};

/// Limits of the intake.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// Largest accepted body, in bytes.
    pub max_body: usize,
    /// Longest a request may take before it is answered `408`.
    pub request_timeout: Duration,
    /// Most requests handled at once; more wait their turn.
    pub max_concurrent: usize,
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
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(10),
    };
}

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits::DEFAULT
    }
}

/// What the intake handlers share.
#[derive(Debug, Clone)]
pub(crate) struct IntakeState {
    /// The effective catalog.
    pub(crate) catalog: Arc<Catalog>,
    /// Where webhooks go to be stored.
    pub(crate) writer: WriterHandle,
    /// Who may post webhooks.
    pub(crate) verifier: Arc<WebhookVerifier>,
}

/// The intake's HTTP routes with their limits.
pub(crate) fn router(state: IntakeState, limits: IntakeLimits) -> Router {
    Router::new()
        .route("/webhooks", post(receive_webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { IntakeError::NoRoute })
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits.request_timeout,
                ))
                .layer(tower::limit::ConcurrencyLimitLayer::new(
                    limits.max_concurrent,
                ))
                .layer(DefaultBodyLimit::max(limits.max_body)),
        )
}

/// The body of a successful answer.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum IntakeReply {
    Accepted { sequence: u64 },
    Duplicate { sequence: u64 },
    Quarantined { reason: String, quarantine_id: u64 },
}

async fn receive_webhook(
    State(state): State<IntakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IntakeError> {
    let body = body?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        method: method.as_str(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        authorization: header("authorization"),
        api_client_key: header("api-client-key"),
        webhook_id: header("webhook-id"),
        webhook_timestamp: header("webhook-timestamp"),
        webhook_signature: header("webhook-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    // The body itself, or the webhook decoded from an `encoded_body`: no copy of the body.
    let webhook = match state.verifier.verify(&facts, &body, now)? {
        std::borrow::Cow::Borrowed(_) => body,
        std::borrow::Cow::Owned(decoded) => Bytes::from(decoded),
    };
    let normalized = normalize(&state.catalog, &webhook)?;
    let ack = state.writer.submit(normalized, webhook).await?;
    Ok(match ack {
        Ack::Accepted { sequence } => {
            (StatusCode::OK, Json(IntakeReply::Accepted { sequence })).into_response()
        }
        Ack::Duplicate { sequence } => {
            (StatusCode::OK, Json(IntakeReply::Duplicate { sequence })).into_response()
        }
        Ack::Quarantined { id, reason } => (
            StatusCode::ACCEPTED,
            Json(IntakeReply::Quarantined {
                reason,
                quarantine_id: id,
            }),
        )
            .into_response(),
    })
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
    /// The body could not be read (too large, connection dropped).
    #[error("cannot read the request body: {0}")]
    Body(#[from] BytesRejection),
    /// The writer could not take or store the webhook.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// No such route.
    #[error("no such endpoint: webhooks are received at POST /webhooks")]
    NoRoute,
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
            IntakeError::Body(rejection) => (rejection.status(), rejection.body_text()),
            IntakeError::NoRoute => (StatusCode::NOT_FOUND, self.to_string()),
            IntakeError::Submit(SubmitError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "qistatus is busy: retry shortly".to_owned(),
            ),
            IntakeError::Submit(SubmitError::Closed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "qistatus is shutting down: retry shortly".to_owned(),
            ),
            // The writer logged the failure, once for its batch.
            IntakeError::Submit(SubmitError::Store(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the webhook could not be stored: retry later".to_owned(),
            ),
        };
        if status.is_client_error() {
            tracing::debug!(status = status.as_u16(), %message, "webhook refused");
        }
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
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
    use crate::store::Store;
    use crate::store::writer;

    struct Intake {
        app: Router,
        _dir: tempfile::TempDir,
    }

    fn intake(limits: IntakeLimits) -> Intake {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store opens");
        let catalog = Arc::new(Catalog::builtin());
        let (writer, _task) = writer::spawn(store, catalog.clone(), writer::WriterLimits::DEFAULT)
            .expect("the writer starts");
        let state = IntakeState {
            catalog,
            writer,
            verifier: Arc::new(WebhookVerifier::default()),
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
