//! A stand-in for QI Tech's API, written from QI's public pages, for the recovery tests: the
//! "Resending notifications" page (`GET /notification/events`, the resend `PATCH`), the
//! "Authentication test" and "Key exchange" pages (every request signed; answers signed with
//! QI's key) and "Possible errors" (QI's error shape and codes). It refuses what QI would:
//! no `API-CLIENT-KEY` (`400 GDF000003`), an unknown one (`404 GDF000018`), a token that does
//! not verify or does not match the request (`401 GDF000014`), a window over 14 days or a
//! malformed date (`400`). Where QI's pages are silent the stand-in does what qistatus's
//! `qitech_api` module says it chose (a `page` parameter, the resend's path), and its own
//! errors for those carry no QI code.
//!
//! A resend does what QI does: it posts the callback's webhook to qistatus, signed with QI's
//! key in QI's signed-request shape, and the callback becomes `sent` on a `200`, `failed`
//! otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest, Md5};
use p521::ecdsa::signature::{Signer, Verifier};
use p521::ecdsa::{Signature, SigningKey, VerifyingKey};
use p521::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use qistatus::Clock;

/// QI's page: "at most 14 days".
const MAX_WINDOW_SECONDS: i64 = 14 * 24 * 3600;
/// QI's page's example: 25 rows a page.
const ROWS_PER_PAGE: usize = 25;

/// A key pair, and its halves in PEM.
pub struct KeyPair {
    pub signing: SigningKey,
    pub private_pem: String,
    pub public_pem: String,
}

impl KeyPair {
    pub fn new() -> KeyPair {
        let signing = SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
        let secret = p521::SecretKey::from_bytes(&signing.to_bytes()).unwrap();
        let private_pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public =
            p521::PublicKey::from_affine(*VerifyingKey::from(&signing).as_affine()).unwrap();
        let public_pem = public.to_public_key_pem(LineEnding::LF).unwrap();
        KeyPair {
            signing,
            private_pem,
            public_pem,
        }
    }
}

/// One callback of an event: the webhook QI sends, and how its delivery went.
#[derive(Debug, Clone)]
pub struct StandInCallback {
    pub callback_key: String,
    pub status: String,
    pub body: Vec<u8>,
}

/// One event QI recorded.
#[derive(Debug, Clone)]
pub struct StandInEvent {
    pub event_key: String,
    pub event_type: String,
    pub origin_key: String,
    /// When it happened, seconds since the epoch.
    pub at: i64,
    pub callbacks: Vec<StandInCallback>,
}

/// A request the stand-in answered: method, path, the query's pairs, and its status.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub query: Vec<(String, String)>,
    pub status: u16,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the stand-in misbehaves, when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mood {
    /// As QI documents.
    Fine,
    /// Every request answered `503`.
    Down,
    /// Every request left unanswered (the caller's timeout ends it).
    Hanging,
}

struct Inner {
    client_key: String,
    client_public: VerifyingKey,
    qi: SigningKey,
    clock: Clock,
    events: Vec<StandInEvent>,
    /// Where resent webhooks go (qistatus's intake).
    target: Option<String>,
    seen: Vec<Seen>,
    resends: Vec<(String, String)>,
    mood: Mood,
}

/// The running stand-in.
#[derive(Clone)]
pub struct QiStandIn {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    /// qistatus's key pair (QI holds the public half).
    pub client: Arc<KeyPair>,
    /// QI's key pair (qistatus holds the public half).
    pub qi: Arc<KeyPair>,
    pub client_key: String,
}

impl QiStandIn {
    /// Starts on a loopback port, reading the time from `clock` (its signatures' and its
    /// checks').
    pub async fn start(clock: Clock) -> QiStandIn {
        let client = Arc::new(KeyPair::new());
        let qi = Arc::new(KeyPair::new());
        let client_key = "4f8a1c52-2b7e-4d0e-9a61-7c3f0e5b9d21".to_owned();
        let inner = Arc::new(Mutex::new(Inner {
            client_key: client_key.clone(),
            client_public: VerifyingKey::from(&client.signing),
            qi: qi.signing.clone(),
            clock,
            events: Vec::new(),
            target: None,
            seen: Vec::new(),
            resends: Vec::new(),
            mood: Mood::Fine,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route(
                "/notification/events",
                axum::routing::get(list_events).patch(resend),
            )
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        QiStandIn {
            addr,
            inner,
            client,
            qi,
            client_key,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// qistatus's settings to reach this stand-in.
    pub fn settings(&self) -> qistatus::QiApiSettings {
        qistatus::QiApiSettings {
            url: self.url(),
            client_key: self.client_key.clone(),
            private_key_pem: self.client.private_pem.clone(),
            public_key_pem: Some(self.qi.public_pem.clone()),
            max_rps: 1000.0,
            request_timeout: qistatus::QiApiSettings::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The verifier qistatus's intake needs for what this stand-in delivers.
    pub fn webhook_verifier(&self) -> qistatus::WebhookVerifier {
        qistatus::WebhookVerifier::new(
            std::slice::from_ref(&self.qi.public_pem),
            vec![self.client_key.clone()],
            &[],
            Duration::from_secs(300),
        )
        .unwrap()
    }

    pub fn deliver_to(&self, webhooks_url: &str) {
        self.inner.lock().unwrap().target = Some(webhooks_url.to_owned());
    }

    pub fn set_mood(&self, mood: Mood) {
        self.inner.lock().unwrap().mood = mood;
    }

    pub fn add(&self, event: StandInEvent) {
        self.inner.lock().unwrap().events.push(event);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// The listings asked about `origin_key`.
    pub fn asked_about(&self, origin_key: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.param("origin_key") == Some(origin_key))
            .count()
    }

    /// The resends asked for: (event key, callback key).
    pub fn resends(&self) -> Vec<(String, String)> {
        self.inner.lock().unwrap().resends.clone()
    }

    /// The status of a callback now.
    pub fn callback_status(&self, callback_key: &str) -> String {
        let inner = self.inner.lock().unwrap();
        inner
            .events
            .iter()
            .flat_map(|e| &e.callbacks)
            .find(|c| c.callback_key == callback_key)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    /// Posts `body` to `url` as QI does: signed with QI's key. Returns the status.
    pub async fn post_as_qi(&self, url: &str, body: &[u8]) -> u16 {
        let (qi, client_key, now) = {
            let inner = self.inner.lock().unwrap();
            (
                inner.qi.clone(),
                inner.client_key.clone(),
                inner.clock.now_millis(),
            )
        };
        post_signed(&qi, &client_key, now, url, body).await
    }
}

async fn post_signed(qi: &SigningKey, client_key: &str, now: i64, url: &str, body: &[u8]) -> u16 {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    let token = authorization(qi, body, "POST", path, now);
    reqwest::Client::new()
        .post(url)
        .header("AUTHORIZATION", token)
        .header("API-CLIENT-KEY", client_key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn jwt(key: &SigningKey, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES512","typ":"JWT"}"#);
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature: Signature = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// QI's `AUTHORIZATION` token over a message.
fn authorization(key: &SigningKey, body: &[u8], method: &str, uri: &str, now: i64) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(now)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    jwt(
        key,
        &serde_json::json!({
            "payload_md5": hex::encode(Md5::digest(body)),
            "timestamp": timestamp,
            "method": method,
            "uri": uri,
        }),
    )
}

/// QI's error answer ("Possible errors").
fn qi_error(status: u16, code: Option<&str>, title: &str, description: &str) -> Response {
    let mut body = serde_json::json!({
        "title": title,
        "description": description,
        "translation": description,
    });
    if let Some(code) = code {
        body["code"] = code.into();
    }
    (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response()
}

/// QI's refusal of a request: status, code, title, description.
struct Refusal(u16, Option<&'static str>, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        qi_error(self.0, self.1, self.2, &self.3)
    }
}

/// The request's signature, as QI checks it; `Err` is QI's answer.
fn check_signature(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refusal> {
    let Some(client_key) = headers.get("api-client-key").and_then(|v| v.to_str().ok()) else {
        return Err(Refusal(
            400,
            Some("GDF000003"),
            "Bad Request",
            "No API Client Key received".into(),
        ));
    };
    if client_key != inner.client_key {
        return Err(Refusal(
            404,
            Some("GDF000018"),
            "Not Found",
            format!("No ClientIntegration found for api_client_key: {client_key}."),
        ));
    }
    let unauthenticated = |details: &str| {
        Refusal(
            401,
            Some("GDF000014"),
            "QI Unauthenticated",
            format!("Please provide valid credentials as part of the request. Details: {details}"),
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthenticated("Failed while decoding the authentication token"))?;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthenticated(
            "Failed while decoding the authentication token",
        ));
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or_else(|| unauthenticated("Failed while decoding the authentication token"))?;
    inner
        .client_public
        .verify(format!("{header}.{payload}").as_bytes(), &signature)
        .map_err(|_| unauthenticated("Failed while decoding the authentication token"))?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or_else(|| unauthenticated("Failed while decoding the authentication token"))?;
    // "The MD5 hash for GET and DELETE requests must be generated with an empty payload":
    // the page's example hashes `{}`.
    let signed_body: &[u8] = if *method == Method::GET { b"{}" } else { body };
    let expected_uri = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let timestamp = claims["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let fresh = timestamp.is_some_and(|t| (t - inner.clock.now_millis()).abs() <= 300_000);
    if claims["payload_md5"] != hex::encode(Md5::digest(signed_body)).as_str()
        || claims["method"] != method.as_str()
        || claims["uri"] != expected_uri
        || !fresh
    {
        return Err(unauthenticated("the signature does not match the request"));
    }
    Ok(())
}

/// An answer signed as QI signs its own (its `AUTHORIZATION` over the body).
fn signed_answer(inner: &Inner, method: &Method, uri: &Uri, body: String) -> Response {
    let uri = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let token = authorization(
        &inner.qi,
        body.as_bytes(),
        method.as_str(),
        uri,
        inner.clock.now_millis(),
    );
    ([("AUTHORIZATION", token)], body).into_response()
}

fn seen(inner: &Arc<Mutex<Inner>>, method: &Method, uri: &Uri, status: u16) {
    let query = uri
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default();
    inner.lock().unwrap().seen.push(Seen {
        method: method.to_string(),
        query,
        status,
    });
}

async fn moody(inner: &Arc<Mutex<Inner>>) -> Option<Response> {
    let mood = inner.lock().unwrap().mood;
    match mood {
        Mood::Fine => None,
        Mood::Down => Some(qi_error(
            503,
            None,
            "Service Unavailable",
            "try again later",
        )),
        // Never answers: the caller's own timeout is what ends the request.
        Mood::Hanging => std::future::pending().await,
    }
}

/// `YYYY-MM-DDTHH:mm:ssZ`, UTC, as QI's page writes it.
fn qi_time(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

async fn list_events(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let response = list_events_answer(&inner, &method, &uri, &headers).await;
    seen(&inner, &method, &uri, response.status().as_u16());
    response
}

async fn list_events_answer(
    inner: &Arc<Mutex<Inner>>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    if let Some(answer) = moody(inner).await {
        return answer;
    }
    let inner = inner.lock().unwrap();
    if let Err(refused) = check_signature(&inner, method, uri, headers, b"") {
        return refused.into_response();
    }
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(start), Some(end)) = (
        param("start_datetime").and_then(qi_time),
        param("end_datetime").and_then(qi_time),
    ) else {
        return qi_error(
            400,
            None,
            "Bad Request",
            "start_datetime and end_datetime must be YYYY-MM-DDTHH:mm:ssZ",
        );
    };
    if end < start || end - start > MAX_WINDOW_SECONDS {
        return qi_error(
            400,
            None,
            "Bad Request",
            "the window between start_datetime and end_datetime must be at most 14 days",
        );
    }
    let page: usize = match param("page").map(str::parse) {
        None => 1,
        Some(Ok(page)) if page >= 1 => page,
        Some(_) => return qi_error(400, None, "Bad Request", "page must be a positive integer"),
    };
    let selected: Vec<serde_json::Value> = inner
        .events
        .iter()
        .filter(|e| e.at >= start && e.at <= end)
        .filter(|e| param("origin_key").is_none_or(|k| k == e.origin_key))
        .filter(|e| param("event_type").is_none_or(|t| t == e.event_type))
        .filter(|e| {
            param("callback_status").is_none_or(|s| e.callbacks.iter().any(|c| c.status == s))
        })
        .map(|e| {
            serde_json::json!({
                "event_key": e.event_key,
                "event_type": e.event_type,
                "status": "processed",
                "origin_enumerator": "account",
                "origin_key": e.origin_key,
                "callbacks": e.callbacks.iter().map(|c| serde_json::json!({
                    "callback_key": c.callback_key,
                    "callback_status": c.status,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let rows: Vec<_> = selected
        .into_iter()
        .skip((page - 1) * ROWS_PER_PAGE)
        .take(ROWS_PER_PAGE)
        .collect();
    let body = serde_json::json!({
        "data": rows,
        "pagination": {"current_page": page, "rows_per_page": ROWS_PER_PAGE},
    })
    .to_string();
    signed_answer(&inner, method, uri, body)
}

async fn resend(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = resend_answer(&inner, &method, &uri, &headers, &body).await;
    seen(&inner, &method, &uri, response.status().as_u16());
    response
}

async fn resend_answer(
    inner: &Arc<Mutex<Inner>>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(answer) = moody(inner).await {
        return answer;
    }
    let (webhook, target, qi, client_key, now, event_key, callback_key) = {
        let mut guard = inner.lock().unwrap();
        if let Err(refused) = check_signature(&guard, method, uri, headers, body) {
            return refused.into_response();
        }
        #[derive(serde::Deserialize)]
        struct Ask {
            event_key: String,
            callback_key: String,
        }
        let Ok(ask) = serde_json::from_slice::<Ask>(body) else {
            return qi_error(
                400,
                None,
                "Bad Request",
                "event_key and callback_key are required",
            );
        };
        let found = guard
            .events
            .iter()
            .find(|e| e.event_key == ask.event_key)
            .and_then(|e| {
                e.callbacks
                    .iter()
                    .find(|c| c.callback_key == ask.callback_key)
            })
            .map(|c| c.body.clone());
        let Some(webhook) = found else {
            return qi_error(404, None, "Not Found", "no such event and callback");
        };
        guard
            .resends
            .push((ask.event_key.clone(), ask.callback_key.clone()));
        (
            webhook,
            guard.target.clone(),
            guard.qi.clone(),
            guard.client_key.clone(),
            guard.clock.now_millis(),
            ask.event_key,
            ask.callback_key,
        )
    };
    // QI sends the callback again; it is `sent` once the receiver answers 200.
    let delivered = match &target {
        Some(url) => post_signed(&qi, &client_key, now, url, &webhook).await == 200,
        None => false,
    };
    let mut guard = inner.lock().unwrap();
    if let Some(callback) = guard
        .events
        .iter_mut()
        .filter(|e| e.event_key == event_key)
        .flat_map(|e| e.callbacks.iter_mut())
        .find(|c| c.callback_key == callback_key)
    {
        callback.status = if delivered { "sent" } else { "failed" }.to_owned();
    }
    signed_answer(&guard, method, uri, "{}".to_owned())
}
