//! The load: realistic webhooks, a closed-loop driver with HDR latency histograms, and the
//! HTTP and gRPC connections the load goes over.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

/// The seed documents' shapes, each becoming many webhooks with distinct keys.
pub const TEMPLATES: &[&str] = &[
    include_str!("../../tests/fixtures/004_debt_created_waiting_signature.json"),
    include_str!("../../tests/fixtures/004_debt_disbursed.json"),
    include_str!("../../tests/fixtures/004_debt_canceled.json"),
    include_str!("../../tests/fixtures/004_debt_settled.json"),
    include_str!("../../tests/fixtures/001_account_opened.json"),
    include_str!("../../tests/fixtures/002_scr_consulted_complete.json"),
    include_str!("../../tests/fixtures/003_historic_card_settlement_completed.json"),
];

/// Small debt webhooks in four statuses, for filling a store to scale.
pub const SMALL_DEBTS: &[&str] = &[
    include_str!("../../tests/fixtures/000_debt_1_waiting_signature.json"),
    include_str!("../../tests/fixtures/004_debt_disbursed.json"),
    include_str!("../../tests/fixtures/004_debt_canceled.json"),
    include_str!("../../tests/fixtures/004_debt_settled.json"),
];

/// One webhook: its kind, key and body.
#[derive(Clone)]
pub struct Webhook {
    /// Its kind, as the webhook names it.
    pub kind: String,
    /// Its operation key.
    pub key: String,
    /// The body, as posted.
    pub body: Bytes,
}

/// `count` webhooks cycling through `templates`, keyed `{prefix}-{i:08}`.
pub fn webhooks(prefix: &str, count: usize, templates: &[&str]) -> Vec<Webhook> {
    let parsed: Vec<serde_json::Value> = templates
        .iter()
        .map(|t| serde_json::from_str(t).expect("fixture JSON"))
        .collect();
    (0..count)
        .map(|i| {
            let mut value = parsed[i % parsed.len()].clone();
            let key = format!("{prefix}-{i:08}");
            value["key"] = key.clone().into();
            // An SCR query is named by its `data.scr_key` (QI's SCR page), which the seed's
            // example carries too: each webhook its own query, as each is its own operation.
            if value["data"]["scr_key"].is_string() {
                value["data"]["scr_key"] = key.clone().into();
            }
            // As sent: qistatus canonicalizes the kind a request names.
            let kind = value["webhook_type"].as_str().unwrap_or("debt").to_owned();
            Webhook {
                kind,
                key,
                body: Bytes::from(serde_json::to_vec(&value).expect("serializes")),
            }
        })
        .collect()
}

/// Latencies, in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op(i)` for i in 0..total with `concurrency` tasks; returns elapsed time, latencies
/// and how many `op` calls reported failure.
pub async fn drive<F, Fut>(
    concurrency: usize,
    total: usize,
    op: F,
) -> (Duration, Histogram<u64>, u64)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failures, op) = (next.clone(), failures.clone(), op.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return h;
                    }
                    let t = Instant::now();
                    if !op(i).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
            })
        })
        .collect();
    let mut all = histogram();
    for t in tasks {
        all.add(t.await.expect("load task")).expect("same bounds");
    }
    (started.elapsed(), all, failures.load(Ordering::Relaxed))
}

/// The median (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// An HTTP/1.1 client with a large keep-alive pool, as a webhook sender would run.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`].
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// Posts a webhook; returns the sequence of a `200` answer.
pub async fn post(client: &HttpClient, url: &str, body: Bytes) -> Option<u64> {
    post_answer(client, url, body).await?["sequence"].as_u64()
}

/// POSTs a webhook; the JSON of a `200` answer (its `result`: accepted, duplicate, held).
pub async fn post_answer(client: &HttpClient, url: &str, body: Bytes) -> Option<serde_json::Value> {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("valid request");
    let response = client.request(request).await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

/// `n` separate HTTP/2 connections to `url`, so the load is not one connection's.
pub async fn channels(url: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .expect("valid URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect"),
        );
    }
    out
}

/// Throughputs per round, latencies, failures, and what was written.
pub struct Rounds {
    /// Operations per second, one per round.
    pub rates: Vec<f64>,
    /// Every operation's latency.
    pub latency: Histogram<u64>,
    /// Operations that failed.
    pub failures: u64,
    /// The webhooks written, for reads afterwards.
    pub written: Vec<Webhook>,
    /// CPU time per operation, when measured.
    pub cpu: Option<CpuPerOp>,
}

/// CPU time per operation, over warm-up and rounds, on each side of the connection.
#[derive(Debug, Clone, Copy)]
pub struct CpuPerOp {
    /// The server under test (its process; for etcd and qistatus, everything they do).
    pub server: Duration,
    /// The load generator (this harness: its HTTP or gRPC client, building requests).
    pub load: Duration,
}

impl Rounds {
    /// The median of the rounds' rates: what a report shows.
    pub fn median_rate(&self) -> f64 {
        median(self.rates.clone())
    }

    /// No rounds yet.
    pub fn new() -> Self {
        Rounds {
            rates: Vec::new(),
            latency: histogram(),
            failures: 0,
            written: Vec::new(),
            cpu: None,
        }
    }
}
