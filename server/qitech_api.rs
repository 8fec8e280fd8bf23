//! QI Tech's own API, the part qistatus calls to fetch back what QI failed to deliver: its
//! "Resending notifications" page (`GET /notification/events`, then a `PATCH` naming an
//! `event_key` and a `callback_key`), signed as its "Key exchange" and "Authentication test"
//! pages say. Everything qistatus knows of QI's API is in this module, with one error enum
//! ([`QiApiError`]); the day QI's sandbox says otherwise, the change is here.
//!
//! # What QI's pages say, and what they leave out (and what was chosen)
//!
//! - **Signing** (documented): every request carries `API-CLIENT-KEY` (the integration's key)
//!   and `AUTHORIZATION`, an ES512 JWT (header `{"alg":"ES512","typ":"JWT"}`) whose claims are
//!   `payload_md5` (MD5 of the body, hex), `timestamp` (UTC, ISO 8601 with microseconds, as
//!   `2023-06-26T19:48:32.759844Z`), `method` and `uri`.
//! - **A body-less request's MD5** (the page: "the MD5 hash for GET and DELETE requests must
//!   be generated with an empty payload"): its complete example hashes `json.dumps({})`, so
//!   a `GET` signs the MD5 of `{}`.
//! - **`uri`** (the examples sign a path with no query): the path *and query* as sent, so
//!   that the filters are signed too.
//! - **Responses** (documented: "all communication with QI is signed, both requests and
//!   responses"): with QI's public key (`--qitech-api-public-key`), an answer must carry an
//!   `AUTHORIZATION` token over its body, method and `uri` in the shape above, or be an
//!   `{"encoded_body": "<JWT>"}` signed by QI; anything else is a [`QiApiError::BadAnswer`].
//!   Without the key an answer is read as it comes (a warning at start says so).
//! - **The listing** (documented): filters `callback_status`, `origin_key`, `event_type`,
//!   `start_datetime` and `end_datetime` (`YYYY-MM-DDTHH:mm:ssZ`, UTC, at most 14 days
//!   apart); answer `{"data": [...], "pagination": {"current_page", "rows_per_page"}}`,
//!   25 rows a page in the page's example. **Not documented**: how to ask for a page and how
//!   to know the last. Chosen: a `page` parameter counted from 1, and a page with fewer rows
//!   than `rows_per_page` is the last.
//! - **The resend** (documented: "pass the event_key and callback_key inside your PATCH
//!   request"). **Not documented**: its path and answer. Chosen: `PATCH /notification/events`
//!   with the JSON body `{"event_key": ..., "callback_key": ...}`; any `2xx` is taken as QI
//!   having queued the resend (the webhook itself then arrives at the intake as any other).
//! - **Errors** (documented on "Possible errors"): `{"title", "description", "translation",
//!   "code"}` with QI's codes (`GDF000014` a token QI cannot decode, `GDF000003` no client key,
//!   `GDF000018` an unknown client key); a refusal is reported with them.
//!
//! # Manners
//!
//! QI's API is never hammered: requests are paced to `--recover-max-rps` across every caller
//! of one [`QiApi`]; `429`, `5xx` and transport failures are tried again a few times with
//! backoff and jitter (`Retry-After` honoured, up to a bound), then reported as
//! [`QiApiError::Unavailable`]; other `4xx` are final ([`QiApiError::Refused`]). Every
//! request has a timeout and every answer a size bound. Keys are never logged, and no
//! webhook content is: QI's answers carry keys and statuses only.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::auth::es512::Es512Signer;
use crate::auth::webhook::{KeyError, RequestFacts, WebhookVerifier};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::metrics::Metrics;

/// The longest window one listing may cover (QI's page: "at most 14 days").
pub(crate) const MAX_WINDOW_MILLIS: i64 = 14 * 24 * 3600 * 1000;

/// The path of the listing and of the resend (see the module docs for the resend's).
const EVENTS_PATH: &str = "/notification/events";

/// Largest answer read from QI's API: a page of 25 events is a few KiB.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Tries of one request that failed for a passing reason (`429`, `5xx`, transport).
const TRIES: u32 = 4;

/// Longest `Retry-After` honoured; longer ones end the tries (the next pass comes back).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How to reach QI's API.
#[derive(Clone)]
pub struct QiApiSettings {
    /// The API's base URL (`https://api-auth.sandbox.qitech.app`), without a trailing `/`.
    pub url: String,
    /// The integration's key, sent as `API-CLIENT-KEY`.
    pub client_key: String,
    /// qistatus's P-521 private key (PEM), whose public half QI holds.
    pub private_key_pem: String,
    /// QI's public key (PEM), which checks QI's answers; `None`: answers are not checked.
    pub public_key_pem: Option<String>,
    /// Most requests a second.
    pub max_rps: f64,
    /// Longest a request (and its answer) may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for QiApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("QiApiSettings")
            .field("url", &self.url)
            .field("answers_checked", &self.public_key_pem.is_some())
            .field("max_rps", &self.max_rps)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl QiApiSettings {
    /// Requests a second by default: QI's pages state no limit; ten keeps a three-week
    /// backlog of a few thousand failed callbacks to minutes.
    pub const DEFAULT_MAX_RPS: f64 = 10.0;
    /// A request's timeout by default.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Which call of QI's API (a metric label and a word in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Call {
    /// `GET /notification/events`.
    ListEvents,
    /// The resend `PATCH`.
    Resend,
}

impl Call {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Call::ListEvents => "list_events",
            Call::Resend => "resend",
        }
    }
}

/// How a call to QI's API ended (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CallOutcome {
    /// Answered `2xx` (and, with QI's key, signed).
    Ok,
    /// A try failed for a passing reason and was tried again.
    Retried,
    /// Refused by QI (`4xx` other than `429`).
    Refused,
    /// Failed for a passing reason every try.
    Unavailable,
    /// Answered, but not in QI's shape or not signed by QI.
    BadAnswer,
}

impl CallOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Retried => "retried",
            CallOutcome::Refused => "refused",
            CallOutcome::Unavailable => "unavailable",
            CallOutcome::BadAnswer => "bad_answer",
        }
    }
}

/// Why a call to QI's API failed.
#[derive(Debug, thiserror::Error)]
pub enum QiApiError {
    /// A setting is unusable (a key that is not P-521 PEM, a URL that is not one).
    #[error(transparent)]
    Settings(#[from] KeyError),
    /// QI refused the request (a `4xx` other than `429`): final, with QI's code.
    #[error("QI refused {call} with {status}{}: {description}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// The call.
        call: &'static str,
        /// The HTTP status.
        status: u16,
        /// QI's error code (`GDF000014`, ...), when it gave one.
        code: Option<String>,
        /// QI's description, or the status's reason.
        description: String,
    },
    /// QI's API could not be reached or answered `429`/`5xx`, every try.
    #[error("QI's API is unavailable for {call}: {reason}")]
    Unavailable {
        /// The call.
        call: &'static str,
        /// The last try's failure.
        reason: String,
    },
    /// An answer that is not QI's: unsigned or wrongly signed (with QI's key), not JSON of
    /// the documented shape, or too large.
    #[error("QI's answer to {call} is not acceptable: {reason}")]
    BadAnswer {
        /// The call.
        call: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A listing's filters, as QI's page names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventQuery {
    /// `callback_status` (`failed`, `sent`, ...).
    pub(crate) callback_status: Option<String>,
    /// `origin_key`: the operation's key.
    pub(crate) origin_key: Option<String>,
    /// `event_type` (`debt_disbursed`, ...).
    pub(crate) event_type: Option<String>,
    /// `start_datetime`, ms since the epoch (sent in whole seconds, rounded down).
    pub(crate) start: i64,
    /// `end_datetime`, ms since the epoch (sent in whole seconds, rounded down); at most
    /// [`MAX_WINDOW_MILLIS`] after `start` once both are rounded.
    pub(crate) end: i64,
}

/// One event of a listing: which origin it is of, and its callbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NotificationEvent {
    /// `event_key`.
    pub(crate) event_key: String,
    /// `event_type` (`debt_disbursed`).
    #[serde(default)]
    pub(crate) event_type: String,
    /// `status` of the event (`processed`).
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// `origin_key`: the key of the operation it is about.
    #[serde(default)]
    pub(crate) origin_key: Option<String>,
    /// `callbacks`: each delivery of the event and how it went.
    #[serde(default)]
    pub(crate) callbacks: Vec<CallbackState>,
}

/// One callback of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CallbackState {
    /// `callback_key`.
    pub(crate) callback_key: String,
    /// `callback_status` (`failed`, `sent`, ...).
    #[serde(default)]
    pub(crate) callback_status: String,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventPage {
    /// Its events.
    pub(crate) events: Vec<NotificationEvent>,
    /// `pagination.current_page`.
    pub(crate) current_page: u32,
    /// `pagination.rows_per_page`.
    pub(crate) rows_per_page: u32,
}

impl EventPage {
    /// Whether no page follows (see the module docs: a page shorter than its size).
    pub(crate) fn is_last(&self) -> bool {
        self.events.len() < self.rows_per_page.max(1) as usize
    }
}

#[derive(Deserialize)]
struct Listing {
    data: Vec<NotificationEvent>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    current_page: Option<u32>,
    #[serde(default)]
    rows_per_page: Option<u32>,
}

#[derive(Deserialize, Default)]
struct QiError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

/// A client of QI's API. Cheap to clone; the pace is shared by every clone.
#[derive(Clone)]
pub(crate) struct QiApi {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: String,
    client_key: String,
    signer: Es512Signer,
    answers: Option<WebhookVerifier>,
    pace: Mutex<Instant>,
    interval: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl QiApi {
    /// A client with `settings`, reading the time of its signatures from `clock` and counting
    /// its calls in `metrics`.
    pub(crate) fn new(
        settings: &QiApiSettings,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<QiApi, QiApiError> {
        let signer = Es512Signer::from_pem(&settings.private_key_pem, "--qitech-api-private-key")?;
        let answers = match &settings.public_key_pem {
            Some(pem) => Some(
                WebhookVerifier::new(
                    std::slice::from_ref(pem),
                    Vec::new(),
                    &[],
                    crate::auth::webhook::DEFAULT_MAX_CLOCK_SKEW,
                )
                .map_err(|e| KeyError {
                    what: "--qitech-api-public-key".into(),
                    reason: e.reason,
                })?,
            ),
            None => None,
        };
        let url = settings.url.trim().trim_end_matches('/').to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(KeyError {
                what: "--qitech-api-url".into(),
                reason: format!("{url:?} is not an http(s) URL"),
            }
            .into());
        }
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build()
            .map_err(|e| KeyError {
                what: "QI API client".into(),
                reason: e.to_string(),
            })?;
        let rps = if settings.max_rps.is_finite() && settings.max_rps > 0.0 {
            settings.max_rps
        } else {
            QiApiSettings::DEFAULT_MAX_RPS
        };
        Ok(QiApi {
            inner: Arc::new(Inner {
                http,
                url,
                client_key: settings.client_key.clone(),
                signer,
                answers,
                pace: Mutex::new(Instant::now()),
                interval: Duration::from_secs_f64(1.0 / rps),
                clock,
                metrics,
            }),
        })
    }

    /// One page (counted from 1) of the events `query` selects.
    pub(crate) async fn list_events(
        &self,
        query: &EventQuery,
        page: u32,
    ) -> Result<EventPage, QiApiError> {
        let call = Call::ListEvents;
        let (start, end) = (query.start.div_euclid(1000), query.end.div_euclid(1000));
        if end < start || (end - start) * 1000 > MAX_WINDOW_MILLIS {
            // A caller's mistake, never sent: QI would refuse it.
            return Err(QiApiError::Refused {
                call: call.as_str(),
                status: 400,
                code: None,
                description: "the window is longer than QI's 14 days (not sent)".into(),
            });
        }
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(status) = &query.callback_status {
            pairs.push(("callback_status", status.clone()));
        }
        if let Some(key) = &query.origin_key {
            pairs.push(("origin_key", key.clone()));
        }
        if let Some(kind) = &query.event_type {
            pairs.push(("event_type", kind.clone()));
        }
        pairs.push(("start_datetime", qi_datetime(query.start)));
        pairs.push(("end_datetime", qi_datetime(query.end)));
        pairs.push(("page", page.to_string()));
        let query_text =
            serde_urlencoded::to_string(&pairs).expect("pairs of strings always encode as a query");
        let uri = format!("{EVENTS_PATH}?{query_text}");
        let body = self.request(call, reqwest::Method::GET, &uri, None).await?;
        let listing: Listing = serde_json::from_slice(&body)
            .map_err(|e| self.bad_answer(call, format!("not the documented listing: {e}")))?;
        let pagination = listing.pagination.unwrap_or(Pagination {
            current_page: None,
            rows_per_page: None,
        });
        Ok(EventPage {
            current_page: pagination.current_page.unwrap_or(page),
            rows_per_page: pagination.rows_per_page.unwrap_or(25),
            events: listing.data,
        })
    }

    /// Asks QI to send `callback_key` of `event_key` again.
    pub(crate) async fn resend(
        &self,
        event_key: &str,
        callback_key: &str,
    ) -> Result<(), QiApiError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "event_key": event_key,
            "callback_key": callback_key,
        }))
        .expect("a JSON object of strings serializes");
        self.request(
            Call::Resend,
            reqwest::Method::PATCH,
            EVENTS_PATH,
            Some(body),
        )
        .await
        .map(drop)
    }

    fn bad_answer(&self, call: Call, reason: String) -> QiApiError {
        self.inner
            .metrics
            .qitech_api_call(call.as_str(), CallOutcome::BadAnswer.as_str());
        QiApiError::BadAnswer {
            call: call.as_str(),
            reason,
        }
    }

    /// Waits for this client's next slot: at most `max_rps` requests a second, over every
    /// caller.
    async fn paced(&self) {
        let at = {
            let mut next = self.inner.pace.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.inner.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Sends a signed request, tries it again while it fails for a passing reason, and
    /// returns the answer's body (an `encoded_body`'s payload, decoded), checked with QI's
    /// key when there is one.
    async fn request(
        &self,
        call: Call,
        method: reqwest::Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, QiApiError> {
        let inner = &self.inner;
        let mut backoff = Backoff::up_to(Duration::from_secs(5));
        let mut tries = 0;
        loop {
            tries += 1;
            self.paced().await;
            // Signed anew each try: the timestamp is part of it.
            let signed_body = body.as_deref().unwrap_or(b"{}");
            let timestamp = chrono::DateTime::from_timestamp_millis(inner.clock.now_millis())
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            let authorization =
                inner
                    .signer
                    .authorization(signed_body, method.as_str(), uri, &timestamp);
            let mut request = inner
                .http
                .request(method.clone(), format!("{}{uri}", inner.url))
                .header("AUTHORIZATION", authorization)
                .header("API-CLIENT-KEY", &inner.client_key);
            if let Some(body) = &body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.clone());
            }
            let passing = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(crate::backoff::retry_after);
                    let headers = response.headers().clone();
                    match read_bounded(response).await {
                        Err(reason) => reason,
                        Ok(answer) if status.is_success() => {
                            let checked = self.checked(call, &method, uri, &headers, answer)?;
                            inner
                                .metrics
                                .qitech_api_call(call.as_str(), CallOutcome::Ok.as_str());
                            return Ok(checked);
                        }
                        Ok(answer) if status.as_u16() == 429 || status.is_server_error() => {
                            if let Some(wait) = retry_after {
                                if wait > MAX_RETRY_AFTER {
                                    return Err(self.unavailable(
                                        call,
                                        format!("{status}, retry after {}s", wait.as_secs()),
                                    ));
                                }
                                if tries < TRIES {
                                    inner.metrics.qitech_api_call(
                                        call.as_str(),
                                        CallOutcome::Retried.as_str(),
                                    );
                                    tokio::time::sleep(wait).await;
                                    continue;
                                }
                            }
                            format!("{status}{}", qi_error_text(&answer))
                        }
                        Ok(answer) => {
                            let error: QiError =
                                serde_json::from_slice(&decoded(&answer)).unwrap_or_default();
                            inner
                                .metrics
                                .qitech_api_call(call.as_str(), CallOutcome::Refused.as_str());
                            return Err(QiApiError::Refused {
                                call: call.as_str(),
                                status: status.as_u16(),
                                code: error.code,
                                description: error.description.or(error.title).unwrap_or_else(
                                    || status.canonical_reason().unwrap_or("").to_owned(),
                                ),
                            });
                        }
                    }
                }
                Err(e) => without_url(&e),
            };
            if tries >= TRIES {
                return Err(self.unavailable(call, passing));
            }
            inner
                .metrics
                .qitech_api_call(call.as_str(), CallOutcome::Retried.as_str());
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn unavailable(&self, call: Call, reason: String) -> QiApiError {
        self.inner
            .metrics
            .qitech_api_call(call.as_str(), CallOutcome::Unavailable.as_str());
        QiApiError::Unavailable {
            call: call.as_str(),
            reason,
        }
    }

    /// A `2xx` answer's content: checked with QI's key when there is one (its `AUTHORIZATION`
    /// over the body, or an `encoded_body` signed by QI), an `encoded_body` decoded.
    fn checked(
        &self,
        call: Call,
        method: &reqwest::Method,
        uri: &str,
        headers: &reqwest::header::HeaderMap,
        answer: Vec<u8>,
    ) -> Result<Vec<u8>, QiApiError> {
        let Some(verifier) = &self.inner.answers else {
            return Ok(decoded(&answer));
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let facts = RequestFacts {
            method: method.as_str(),
            path_and_query: uri,
            authorization: header("authorization"),
            api_client_key: header("api-client-key"),
            webhook_id: None,
            webhook_timestamp: None,
            webhook_signature: None,
            signature: None,
            host: None,
        };
        let now = self.inner.clock.now_seconds();
        match verifier.verify(&facts, &answer, now) {
            Ok(verified) => {
                let body = verified.body.into_owned();
                // A signed answer may still wrap its content.
                Ok(decoded(&body))
            }
            Err(e) => Err(self.bad_answer(call, format!("not signed by QI's key: {e}"))),
        }
    }
}

/// The payload of an `{"encoded_body": "<JWT>"}` (unchecked: checking is the verifier's), or
/// `answer` itself.
fn decoded(answer: &[u8]) -> Vec<u8> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Encoded {
        encoded_body: String,
    }
    serde_json::from_slice::<Encoded>(answer)
        .ok()
        .and_then(|e| {
            let payload = e.encoded_body.split('.').nth(1)?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .unwrap_or_else(|| answer.to_vec())
}

/// QI's code and description in an error answer, for a message (empty when none).
fn qi_error_text(answer: &[u8]) -> String {
    let error: QiError = serde_json::from_slice(&decoded(answer)).unwrap_or_default();
    match (error.code, error.description.or(error.title)) {
        (Some(code), Some(text)) => format!(" ({code}): {text}"),
        (Some(code), None) => format!(" ({code})"),
        (None, Some(text)) => format!(": {text}"),
        (None, None) => String::new(),
    }
}

/// A transport failure in a few words, without the URL (whose query may name an operation).
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    }
    .to_owned()
}

/// An answer's body, refused past [`MAX_ANSWER_BYTES`].
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!("an answer over {MAX_ANSWER_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(without_url(&e)),
        }
    }
}

/// A time as QI's listing takes it: `YYYY-MM-DDTHH:mm:ssZ`, UTC, in whole seconds (rounded
/// down: a window whose ends are whole seconds is sent as it is).
pub(crate) fn qi_datetime(millis: i64) -> String {
    chrono::DateTime::from_timestamp(millis.div_euclid(1000), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times_are_whole_utc_seconds() {
        assert_eq!(qi_datetime(1_700_000_000_500), "2023-11-14T22:13:20Z");
        assert_eq!(qi_datetime(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_page_shorter_than_its_size_is_the_last() {
        let event = NotificationEvent {
            event_key: "e".into(),
            event_type: "debt_disbursed".into(),
            status: None,
            origin_key: None,
            callbacks: Vec::new(),
        };
        let page = |n: usize| EventPage {
            events: vec![event.clone(); n],
            current_page: 1,
            rows_per_page: 25,
        };
        assert!(page(0).is_last());
        assert!(page(24).is_last());
        assert!(!page(25).is_last());
    }

    #[test]
    fn encoded_answers_are_unwrapped_and_plain_ones_kept() {
        let plain = br#"{"data":[]}"#;
        assert_eq!(decoded(plain), plain.to_vec());
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"data":[]}"#,
        );
        let wrapped = format!(r#"{{"encoded_body":"h.{payload}.s"}}"#);
        assert_eq!(decoded(wrapped.as_bytes()), plain.to_vec());
    }

    #[test]
    fn qi_errors_are_quoted_with_their_code() {
        let answer = br#"{"title":"QI Unauthenticated","description":"bad token","translation":"x","code":"GDF000014"}"#;
        assert_eq!(qi_error_text(answer), " (GDF000014): bad token");
        assert_eq!(qi_error_text(b"<html>"), "");
    }
}
