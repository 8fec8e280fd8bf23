//! qistatus-bench: qistatus against etcd, on the same machine, in the same run, at the same
//! durability (both fsync before acknowledging a write).
//!
//! A team without qistatus would keep operation statuses in etcd: a put per webhook, a get
//! per question, a prefix watch to react. This harness starts both servers on loopback with
//! fresh data directories, drives the same realistic load at each (the seed documents'
//! webhook shapes, the ~13 KB debt creation among them, with distinct keys), and writes
//! `BENCHMARKS.md`: medians over rounds, p50/p99 from HDR histograms, and the ratios.
//!
//! `benches/run.sh` is the way to run it; `--quick` (what CI runs) uses small counts and
//! skips etcd when it is not installed.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

mod etcdpb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("etcdserverpb");
}

use etcdpb::kv_client::KvClient;
use etcdpb::watch_client::WatchClient;

/// qistatus-bench: qistatus against etcd on this machine.
#[derive(Debug, Parser)]
struct Args {
    /// The qistatus-server binary to benchmark.
    #[arg(long)]
    server_bin: PathBuf,
    /// The etcd binary; without it, only qistatus is measured.
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// Small counts and short rounds (for CI: it checks the harness works, not timings).
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Log filter of the qistatus servers the harness starts (their logs go to stderr).
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Only these scenarios (ingest, reads, watch, scale); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Counts for one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    concurrency: usize,
    warmup: usize,
    rounds: usize,
    ingest_per_round: usize,
    reads_per_round: usize,
    watch_keys: usize,
    watch_steps: usize,
    watch_rate: u64,
    key_watchers: usize,
    filter_watchers: usize,
    scale_small: usize,
    scale_large: usize,
    list_pages: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                concurrency: 16,
                warmup: 100,
                rounds: 2,
                ingest_per_round: 500,
                reads_per_round: 1000,
                watch_keys: 20,
                watch_steps: 10,
                watch_rate: 400,
                key_watchers: 20,
                filter_watchers: 20,
                scale_small: 1_000,
                scale_large: 5_000,
                list_pages: 50,
            }
        } else {
            Sizes {
                concurrency: 64,
                warmup: 2_000,
                rounds: 5,
                ingest_per_round: 20_000,
                reads_per_round: 50_000,
                watch_keys: 500,
                watch_steps: 20,
                watch_rate: 2_000,
                key_watchers: 500,
                filter_watchers: 500,
                scale_small: 1_000,
                scale_large: 1_000_000,
                list_pages: 1_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Payloads

/// The seed documents' shapes, each becoming many webhooks with distinct keys.
const TEMPLATES: &[&str] = &[
    include_str!("../tests/fixtures/004_debt_created_waiting_signature.json"),
    include_str!("../tests/fixtures/004_debt_disbursed.json"),
    include_str!("../tests/fixtures/004_debt_canceled.json"),
    include_str!("../tests/fixtures/004_debt_settled.json"),
    include_str!("../tests/fixtures/001_account_opened.json"),
    include_str!("../tests/fixtures/002_scr_consulted_complete.json"),
    include_str!("../tests/fixtures/003_historic_card_settlement_completed.json"),
];

/// One webhook: its kind, key and body.
#[derive(Clone)]
struct Webhook {
    kind: String,
    key: String,
    body: Bytes,
}

fn webhooks(prefix: &str, count: usize, templates: &[&str]) -> Vec<Webhook> {
    let parsed: Vec<serde_json::Value> = templates
        .iter()
        .map(|t| serde_json::from_str(t).expect("fixture JSON"))
        .collect();
    (0..count)
        .map(|i| {
            let mut value = parsed[i % parsed.len()].clone();
            let key = format!("{prefix}-{i:08}");
            value["key"] = key.clone().into();
            let kind = qistatus::domain::catalog::canonical_kind(
                value["webhook_type"].as_str().unwrap_or("debt"),
            );
            Webhook {
                kind,
                key,
                body: Bytes::from(serde_json::to_vec(&value).expect("serializes")),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Processes

struct Server {
    child: Child,
    http: String,
    grpc: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn wait_until<F, Fut>(what: &str, mut ready: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// The `--server-log` of this run.
fn server_log() -> String {
    SERVER_LOG.get().cloned().unwrap_or_else(|| "warn".into())
}

static SERVER_LOG: OnceLock<String> = OnceLock::new();

async fn start_qistatus(bin: &Path, dir: &Path, ports: Option<(u16, u16)>) -> (Server, Duration) {
    let (http_port, grpc_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args([
            "--log",
            &server_log(),
            "--writer-queue",
            "8192",
            "--max-concurrent-requests",
            "4096",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start qistatus-server");
    let server = Server {
        child,
        http: format!("http://127.0.0.1:{http_port}"),
        grpc: format!("http://127.0.0.1:{grpc_port}"),
    };
    let grpc = server.grpc.clone();
    wait_until("qistatus", || {
        let grpc = grpc.clone();
        async move {
            match OperationStatusServiceClient::connect(grpc).await {
                Ok(mut c) => c
                    .get_operation(pb::GetOperationRequest {
                        key: "readiness-probe".into(),
                        ..Default::default()
                    })
                    .await
                    .map_or_else(|s| s.code() == tonic::Code::NotFound, |_| true),
                Err(_) => false,
            }
        }
    })
    .await;
    (server, started.elapsed())
}

async fn start_etcd(bin: &Path, dir: &Path) -> Server {
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args([
            "--quota-backend-bytes",
            &(8u64 << 30).to_string(),
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start etcd");
    let server = Server {
        child,
        http: String::new(),
        grpc: client_url.clone(),
    };
    wait_until("etcd", || {
        let url = client_url.clone();
        async move {
            match KvClient::connect(url).await {
                Ok(mut kv) => kv
                    .range(etcdpb::RangeRequest {
                        key: b"probe".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    server
}

// ---------------------------------------------------------------------------------------
// Load

/// Latencies, in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op(i)` for i in 0..total with `concurrency` tasks; returns elapsed time and
/// latencies. `op` returns whether the operation succeeded; failures are counted.
async fn drive<F, Fut>(concurrency: usize, total: usize, op: F) -> (Duration, Histogram<u64>, u64)
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

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn http_client() -> HttpClient<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    HttpClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

async fn post(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Bytes,
) -> Option<u64> {
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
    let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
    answer["sequence"].as_u64()
}

async fn channels(url: &str, n: usize) -> Vec<Channel> {
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

/// The put an etcd user would do for a webhook: the payload under `ops/<kind>/<key>`.
fn etcd_key(w: &Webhook) -> Vec<u8> {
    format!("ops/{}/{}", w.kind, w.key).into_bytes()
}

// ---------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    rows: Vec<[String; 6]>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        qistatus: String,
        etcd: Option<String>,
        ratio: Option<f64>,
        target: &str,
    ) {
        let ratio_text = ratio.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        self.rows.push([
            scenario.to_owned(),
            metric.to_owned(),
            qistatus,
            etcd.unwrap_or_else(|| "—".into()),
            ratio_text,
            target.to_owned(),
        ]);
        let last = self.rows.last().expect("just pushed");
        eprintln!(
            "{} | {} | qistatus {} | etcd {} | {} | {}",
            last[0], last[1], last[2], last[3], last[4], last[5]
        );
    }
}

impl Report {
    /// A throughput row and its latency rows, for qistatus and (when measured) etcd.
    fn compare(
        &mut self,
        scenario: &str,
        metric: &str,
        q: &Rounds,
        e: Option<&Rounds>,
        target: &str,
    ) {
        let (qr, er) = (median(q.rates.clone()), e.map(|e| median(e.rates.clone())));
        self.row(
            scenario,
            metric,
            format!("{qr:.0}/s"),
            er.map(|e| format!("{e:.0}/s")),
            er.map(|e| qr / e),
            target,
        );
        for (label, quantile) in [("latency p50", 0.5), ("latency p99", 0.99)] {
            self.row(
                scenario,
                label,
                ms(q.latency.value_at_quantile(quantile)),
                e.map(|e| ms(e.latency.value_at_quantile(quantile))),
                None,
                "",
            );
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// A system under test, as the load generator talks to it.
#[derive(Clone)]
enum Target {
    /// Webhooks over HTTP, reads and watches over gRPC.
    Qistatus {
        http: Box<HttpClient<HttpConnector, Full<Bytes>>>,
        url: Arc<str>,
        chans: Arc<Vec<Channel>>,
    },
    /// Puts, serializable ranges and watches over etcd's gRPC API.
    Etcd {
        chans: Arc<Vec<Channel>>,
        /// The revision before the run: a put's index is its revision minus this.
        base_revision: i64,
    },
}

impl Target {
    async fn qistatus(server: &Server) -> Target {
        Target::Qistatus {
            http: Box::new(http_client()),
            url: format!("{}/webhooks", server.http).into(),
            chans: Arc::new(channels(&server.grpc, 8).await),
        }
    }

    async fn etcd(server: &Server) -> Target {
        let chans = channels(&server.grpc, 8).await;
        let base_revision = KvClient::new(chans[0].clone())
            .range(etcdpb::RangeRequest {
                key: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        Target::Etcd {
            chans: Arc::new(chans),
            base_revision,
        }
    }

    fn channel(&self, i: usize) -> Channel {
        let chans = match self {
            Target::Qistatus { chans, .. } | Target::Etcd { chans, .. } => chans,
        };
        chans[i % chans.len()].clone()
    }

    /// Stores a webhook durably; returns its position (sequence, or revision past the base).
    async fn write(&self, i: usize, w: &Webhook) -> Option<u64> {
        match self {
            Target::Qistatus { http, url, .. } => post(http, url, w.body.clone()).await,
            Target::Etcd { base_revision, .. } => {
                let response = KvClient::new(self.channel(i))
                    .put(etcdpb::PutRequest {
                        key: etcd_key(w),
                        value: w.body.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let revision = response.into_inner().header?.revision;
                Some((revision - base_revision).max(0) as u64)
            }
        }
    }

    /// Reads the current state of `w`'s operation; whether it was found.
    async fn read(&self, i: usize, w: &Webhook) -> bool {
        match self {
            Target::Qistatus { .. } => OperationStatusServiceClient::new(self.channel(i))
                .get_operation(pb::GetOperationRequest {
                    key: w.key.clone(),
                    kind: w.kind.clone(),
                    include_raw_payload: false,
                })
                .await
                .is_ok(),
            Target::Etcd { .. } => KvClient::new(self.channel(i))
                .range(etcdpb::RangeRequest {
                    key: etcd_key(w),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.into_inner().kvs.len() == 1),
        }
    }

    /// Opens a watch of one key, or of a share of all keys (a status in qistatus, a key
    /// prefix in etcd); returns once the server has registered it.
    async fn watch(&self, i: usize, spec: WatchSpec) -> WatchFeed {
        match self {
            Target::Qistatus { .. } => {
                let request = match spec {
                    WatchSpec::Key(key) => pb::WatchOperationRequest {
                        key,
                        ..Default::default()
                    },
                    WatchSpec::Share { status, .. } => pb::WatchOperationRequest {
                        kinds: vec!["bench".into()],
                        statuses: vec![status],
                        ..Default::default()
                    },
                };
                let mut stream = OperationStatusServiceClient::new(self.channel(i))
                    .watch_operation(request)
                    .await
                    .expect("watch")
                    .into_inner();
                // The first message is the starting progress: the watcher is registered.
                stream.message().await.expect("watch").expect("progress");
                WatchFeed::Qistatus(stream)
            }
            Target::Etcd { base_revision, .. } => {
                let create = match spec {
                    WatchSpec::Key(key) => etcdpb::WatchCreateRequest {
                        key: format!("ops/bench/{key}").into_bytes(),
                        ..Default::default()
                    },
                    WatchSpec::Share { key_prefix, .. } => {
                        let prefix = format!("ops/bench/{key_prefix}").into_bytes();
                        etcdpb::WatchCreateRequest {
                            range_end: prefix_end(&prefix),
                            key: prefix,
                            ..Default::default()
                        }
                    }
                };
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(etcdpb::WatchRequest {
                    request_union: Some(etcdpb::watch_request::RequestUnion::CreateRequest(create)),
                })
                .await
                .expect("queue");
                let mut stream = WatchClient::new(self.channel(i))
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("watch")
                    .into_inner();
                let created = stream.message().await.expect("watch").expect("created");
                assert!(created.created, "etcd created the watch");
                WatchFeed::Etcd {
                    stream,
                    _requests: tx,
                    base_revision: *base_revision,
                }
            }
        }
    }
}

/// What one watcher watches.
enum WatchSpec {
    Key(String),
    Share { status: String, key_prefix: String },
}

/// An open watch stream of either system.
enum WatchFeed {
    Qistatus(tonic::Streaming<pb::WatchOperationResponse>),
    Etcd {
        stream: tonic::Streaming<etcdpb::WatchResponse>,
        /// Kept open: etcd ends the watch when its request stream closes.
        _requests: tokio::sync::mpsc::Sender<etcdpb::WatchRequest>,
        base_revision: i64,
    },
}

impl WatchFeed {
    /// The positions of the next delivered writes; `None` when the stream ends.
    async fn next(&mut self) -> Option<Vec<u64>> {
        match self {
            WatchFeed::Qistatus(stream) => {
                let message = stream.message().await.ok()??;
                Some(match message.event {
                    Some(pb::watch_operation_response::Event::Change(c)) => vec![c.sequence],
                    _ => Vec::new(),
                })
            }
            WatchFeed::Etcd {
                stream,
                base_revision,
                ..
            } => {
                let message = stream.message().await.ok()??;
                Some(
                    message
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .map(|kv| (kv.mod_revision - *base_revision).max(0) as u64)
                        .collect(),
                )
            }
        }
    }
}

/// Throughputs per round, latencies, failures, and what was written.
struct Rounds {
    rates: Vec<f64>,
    latency: Histogram<u64>,
    failures: u64,
    written: Vec<Webhook>,
}

impl Rounds {
    fn new() -> Self {
        Rounds {
            rates: Vec::new(),
            latency: histogram(),
            failures: 0,
            written: Vec::new(),
        }
    }
}

/// A warm-up, then `rounds` rounds of durable writes of distinct realistic webhooks.
async fn ingest(target: &Target, sizes: Sizes) -> Rounds {
    let write_all = |batch: Arc<Vec<Webhook>>| {
        let target = target.clone();
        move |i: usize| {
            let (target, batch) = (target.clone(), batch.clone());
            async move { target.write(i, &batch[i]).await.is_some() }
        }
    };
    let warm = Arc::new(webhooks("warm", sizes.warmup, TEMPLATES));
    drive(sizes.concurrency, warm.len(), write_all(warm)).await;
    let mut out = Rounds::new();
    for round in 0..sizes.rounds {
        let batch = Arc::new(webhooks(
            &format!("r{round}"),
            sizes.ingest_per_round,
            TEMPLATES,
        ));
        let (elapsed, h, failed) =
            drive(sizes.concurrency, batch.len(), write_all(batch.clone())).await;
        out.failures += failed;
        out.rates.push(batch.len() as f64 / elapsed.as_secs_f64());
        out.latency.add(h).expect("same bounds");
        out.written.extend(batch.iter().cloned());
    }
    out
}

/// `rounds` rounds of point reads of the written operations, in a scattered order.
async fn reads(target: &Target, sizes: Sizes, written: &[Webhook]) -> Rounds {
    let keys = Arc::new(written.to_vec());
    let mut out = Rounds::new();
    for round in 0..sizes.rounds {
        let (target, keys) = (target.clone(), keys.clone());
        let (elapsed, h, failed) = drive(sizes.concurrency, sizes.reads_per_round, move |i| {
            let (target, keys) = (target.clone(), keys.clone());
            async move {
                let w = &keys[(i * 7919 + round * 104_729) % keys.len()];
                target.read(i, w).await
            }
        })
        .await;
        out.failures += failed;
        out.rates
            .push(sizes.reads_per_round as f64 / elapsed.as_secs_f64());
        out.latency.add(h).expect("same bounds");
    }
    out
}

/// The fan-out workload: `keys` operations, each moving through `steps` statuses in order.
/// Keys are `f{group}-k{index}`, where the group (index % steps) lets a prefix watch in etcd
/// receive the same share of events as a status watcher in qistatus.
fn fanout_webhook(key: usize, step: usize, steps: usize) -> Webhook {
    let key_text = format!("f{:02}-k{key:05}", key % steps);
    let body = serde_json::json!({
        "webhook_type": "bench",
        "key": key_text,
        "status": format!("s{step:02}"),
        "event_datetime": format!("2024-01-01T{:02}:{:02}:00Z", step / 60, step % 60),
        "data": {"settlement_amount": 3429.38, "step": step},
    });
    Webhook {
        kind: "bench".into(),
        key: key_text,
        body: Bytes::from(serde_json::to_vec(&body).expect("serializes")),
    }
}

struct FanoutResult {
    latency: Histogram<u64>,
    from_send: Histogram<u64>,
    expected: u64,
    delivered: u64,
    sent_rate: f64,
}

/// Paces `total` sends at `rate` per second; `send(i)` returns the write's position, whose
/// send and ack times are recorded in `acks`.
async fn paced_sends<F, Fut>(total: usize, rate: u64, acks: Acks, send: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<u64>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (send, acks) = (send.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            if let Some(seq) = send(i).await
                && let Some(slot) = acks.get(seq as usize)
            {
                let _ = slot.set(Acked {
                    sent,
                    acked: Instant::now(),
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// When a write was sent and acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acked {
    sent: Instant,
    acked: Instant,
}

type Acks = Arc<Vec<OnceLock<Acked>>>;

/// Delivery latencies of one watcher: from the write's acknowledgement, and from its sending.
struct Deliveries {
    from_ack: Histogram<u64>,
    from_send: Histogram<u64>,
    pending: Vec<(u64, Instant)>,
}

impl Deliveries {
    fn new() -> Self {
        Deliveries {
            from_ack: histogram(),
            from_send: histogram(),
            pending: Vec::new(),
        }
    }

    /// Records the delivery of write `seq` at `at`. One that arrives before its writer saw
    /// the ack is measured once the ack is known (and counts as 0 from the ack).
    fn record(&mut self, acks: &[OnceLock<Acked>], seq: u64, at: Instant) {
        match acks.get(seq as usize).and_then(OnceLock::get) {
            Some(a) => {
                let micros =
                    |from: Instant| at.saturating_duration_since(from).as_micros().max(1) as u64;
                let _ = self.from_ack.record(micros(a.acked));
                let _ = self.from_send.record(micros(a.sent));
            }
            None => self.pending.push((seq, at)),
        }
    }

    /// Adds this watcher's latencies to `into` (from ack, from send).
    fn finish(mut self, acks: &[OnceLock<Acked>], into: &Mutex<(Histogram<u64>, Histogram<u64>)>) {
        for (seq, at) in std::mem::take(&mut self.pending) {
            if acks.get(seq as usize).and_then(OnceLock::get).is_some() {
                self.record(acks, seq, at);
            }
        }
        let mut into = into.lock().expect("not poisoned");
        into.0.add(self.from_ack).expect("same bounds");
        into.1.add(self.from_send).expect("same bounds");
    }
}

/// Opens the watchers, sends the fan-out workload at its rate, and measures deliveries.
async fn fanout(target: &Target, sizes: Sizes) -> FanoutResult {
    let total = sizes.watch_keys * sizes.watch_steps;
    let acks: Acks = Arc::new((0..total + 64).map(|_| OnceLock::new()).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new((histogram(), histogram())));
    let (done_tx, _) = tokio::sync::watch::channel(false);
    let mut expected = 0u64;
    let mut watchers = Vec::new();
    for w in 0..sizes.key_watchers + sizes.filter_watchers {
        let spec = if w < sizes.key_watchers {
            let key = w % sizes.watch_keys;
            expected += sizes.watch_steps as u64;
            WatchSpec::Key(format!("f{:02}-k{key:05}", key % sizes.watch_steps))
        } else {
            // Status s{g} in qistatus and key group f{g} in etcd: each 1/steps of the writes.
            let group = w % sizes.watch_steps;
            expected += sizes.watch_keys as u64;
            WatchSpec::Share {
                status: format!("s{group:02}"),
                key_prefix: format!("f{group:02}-"),
            }
        };
        let mut feed = target.watch(w, spec).await;
        let (acks, delivered, latencies, mut done) = (
            acks.clone(),
            delivered.clone(),
            latencies.clone(),
            done_tx.subscribe(),
        );
        watchers.push(tokio::spawn(async move {
            let mut d = Deliveries::new();
            loop {
                let positions = tokio::select! {
                    p = feed.next() => p,
                    _ = done.changed() => break,
                };
                let Some(positions) = positions else { break };
                let at = Instant::now();
                for position in positions {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    d.record(&acks, position, at);
                }
            }
            d.finish(&acks, &latencies);
        }));
    }
    let (steps, keys, sender) = (sizes.watch_steps, sizes.watch_keys, target.clone());
    let sent_rate = paced_sends(total, sizes.watch_rate, acks.clone(), move |i| {
        let sender = sender.clone();
        async move {
            sender
                .write(i, &fanout_webhook(i % keys, i / keys, steps))
                .await
        }
    })
    .await;
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done_tx.send(true);
    for w in watchers {
        let _ = w.await;
    }
    let (latency, from_send) = latencies.lock().expect("not poisoned").clone();
    FanoutResult {
        latency,
        from_send,
        expected,
        delivered: delivered.load(Ordering::Relaxed),
        sent_rate,
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Posts `count` small operations (spread over four statuses), 64 at a time.
async fn populate(server: &Server, from: usize, to: usize, concurrency: usize) -> f64 {
    const SMALL: &[&str] = &[
        include_str!("../tests/fixtures/000_debt_1_waiting_signature.json"),
        include_str!("../tests/fixtures/004_debt_disbursed.json"),
        include_str!("../tests/fixtures/004_debt_canceled.json"),
        include_str!("../tests/fixtures/004_debt_settled.json"),
    ];
    let templates: Arc<Vec<serde_json::Value>> = Arc::new(
        SMALL
            .iter()
            .map(|t| serde_json::from_str(t).expect("fixture"))
            .collect(),
    );
    let client = http_client();
    let url = format!("{}/webhooks", server.http);
    let (elapsed, _, _) = drive(concurrency, to - from, move |i| {
        let (client, url, templates) = (client.clone(), url.clone(), templates.clone());
        async move {
            let n = from + i;
            let mut value = templates[n % templates.len()].clone();
            value["key"] = format!("scale-{n:08}").into();
            let body = Bytes::from(serde_json::to_vec(&value).expect("serializes"));
            post(&client, &url, body).await.is_some()
        }
    })
    .await;
    (to - from) as f64 / elapsed.as_secs_f64()
}

/// Walks `pages` pages of 100 `disbursed` debts (restarting at the end); returns latencies.
async fn list_pages(server: &Server, pages: usize) -> Histogram<u64> {
    let mut client = OperationStatusServiceClient::new(channels(&server.grpc, 1).await.remove(0));
    let mut h = histogram();
    let mut token = String::new();
    for _ in 0..pages {
        let t = Instant::now();
        let page = client
            .list_by_status(pb::ListByStatusRequest {
                kind: "debt".into(),
                statuses: vec!["disbursed".into()],
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        assert!(!page.operations.is_empty(), "pages are not empty");
        token = page.next_page_token;
    }
    h
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_size(&path)
                    } else {
                        // Allocated blocks, not apparent size: sled preallocates sparsely.
                        std::os::unix::fs::MetadataExt::blocks(&e.metadata().expect("metadata"))
                            * 512
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn stop(mut server: Server) {
    if let Some(pid) = server.child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await;
}

// ---------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {memory} memory")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = SERVER_LOG.set(args.server_log.clone());
    let sizes = Sizes::new(args.quick);
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let etcd_bin = args.etcd_bin.clone().filter(|b| b.exists());
    let tmp = std::env::temp_dir().join(format!("qistatus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut report = Report::default();
    if etcd_bin.is_none() {
        report
            .notes
            .push("etcd was not available: only qistatus was measured.".into());
    }

    if wants("ingest") || wants("reads") {
        eprintln!(
            "== durable ingest, {} concurrent senders; point reads",
            sizes.concurrency
        );
        let (q_server, _) = start_qistatus(&args.server_bin, &tmp.join("q-ingest"), None).await;
        let q_target = Target::qistatus(&q_server).await;
        let q_ingest = ingest(&q_target, sizes).await;
        let etcd = match &etcd_bin {
            Some(bin) => {
                let server = start_etcd(bin, &tmp.join("e-ingest")).await;
                let target = Target::etcd(&server).await;
                let rounds = ingest(&target, sizes).await;
                Some((server, target, rounds))
            }
            None => None,
        };
        if wants("ingest") {
            let e = etcd.as_ref().map(|(_, _, r)| r);
            report.compare(
                "durable ingest",
                "webhooks acknowledged per second (median of rounds)",
                &q_ingest,
                e,
                "≥ 2× etcd",
            );
            let mean_body = q_ingest.written.iter().map(|w| w.body.len()).sum::<usize>()
                / q_ingest.written.len().max(1);
            report.notes.push(format!(
                "ingest: {} rounds of {} webhooks after {} warm-up, {} concurrent senders, the seed shapes in turn (mean body {mean_body} bytes); failures: qistatus {}, etcd {}.",
                sizes.rounds,
                sizes.ingest_per_round,
                sizes.warmup,
                sizes.concurrency,
                q_ingest.failures,
                e.map_or("—".into(), |e| e.failures.to_string()),
            ));
        }
        if wants("reads") {
            let q = reads(&q_target, sizes, &q_ingest.written).await;
            let e = match &etcd {
                Some((_, target, rounds)) => Some(reads(target, sizes, &rounds.written).await),
                None => None,
            };
            report.compare(
                "point reads",
                "GetOperation vs serializable Range per second",
                &q,
                e.as_ref(),
                "≥ 1.5× etcd",
            );
            report.notes.push(format!(
                "reads: {} rounds of {} reads over the ingested keys, {} concurrent; GetOperation returns the operation with its history and each webhook's data, Range the stored payload; failures: qistatus {}, etcd {}.",
                sizes.rounds,
                sizes.reads_per_round,
                sizes.concurrency,
                q.failures,
                e.as_ref().map_or("—".into(), |e| e.failures.to_string()),
            ));
        }
        if let Some((server, ..)) = etcd {
            stop(server).await;
        }
        stop(q_server).await;
    }

    if wants("watch") {
        eprintln!("== watch fan-out");
        let (server, _) = start_qistatus(&args.server_bin, &tmp.join("q-watch"), None).await;
        let q = fanout(&Target::qistatus(&server).await, sizes).await;
        stop(server).await;
        let e = match &etcd_bin {
            Some(bin) => {
                let server = start_etcd(bin, &tmp.join("e-watch")).await;
                let r = fanout(&Target::etcd(&server).await, sizes).await;
                stop(server).await;
                Some(r)
            }
            None => None,
        };
        let quantile = |r: &FanoutResult, send: bool, q: f64| {
            ms(if send { &r.from_send } else { &r.latency }.value_at_quantile(q))
        };
        for (label, send, quant, target) in [
            ("delivery latency p50 (ack to receipt)", false, 0.5, ""),
            (
                "delivery latency p99 (ack to receipt)",
                false,
                0.99,
                "p99 ≤ 10 ms",
            ),
            ("delivery latency p50 (send to receipt)", true, 0.5, ""),
            ("delivery latency p99 (send to receipt)", true, 0.99, ""),
        ] {
            report.row(
                "watch fan-out",
                label,
                quantile(&q, send, quant),
                e.as_ref().map(|e| quantile(e, send, quant)),
                None,
                target,
            );
        }
        let lost = |r: &FanoutResult| r.expected.saturating_sub(r.delivered).to_string();
        report.row(
            "watch fan-out",
            "changes lost",
            lost(&q),
            e.as_ref().map(lost),
            None,
            "0",
        );
        report.notes.push(format!(
            "watch: {} watchers ({} by key, {} by status filter in qistatus and by key prefix in etcd, each receiving the same share), {} webhooks sent at {}/s (achieved: qistatus {:.0}/s, etcd {}); deliveries expected {}, received: qistatus {}, etcd {}. A change can reach a watcher before its writer reads the acknowledgement: such a delivery counts as 0 ms from the ack.",
            sizes.key_watchers + sizes.filter_watchers,
            sizes.key_watchers,
            sizes.filter_watchers,
            sizes.watch_keys * sizes.watch_steps,
            sizes.watch_rate,
            q.sent_rate,
            e.as_ref().map_or("—".into(), |e| format!("{:.0}/s", e.sent_rate)),
            q.expected,
            q.delivered,
            e.as_ref().map_or("—".into(), |e| e.delivered.to_string()),
        ));
    }

    if wants("scale") {
        eprintln!("== scale");
        let dir = tmp.join("q-scale");
        let (server, _) = start_qistatus(&args.server_bin, &dir, None).await;
        populate(&server, 0, sizes.scale_small, sizes.concurrency).await;
        let small = list_pages(&server, sizes.list_pages).await;
        let rate = populate(
            &server,
            sizes.scale_small,
            sizes.scale_large,
            sizes.concurrency,
        )
        .await;
        let large = list_pages(&server, sizes.list_pages).await;
        let pid = server.child.id().unwrap_or(0);
        let rss = rss_bytes(pid);
        let ports = (
            server
                .http
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            server
                .grpc
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        );
        stop(server).await;
        let size = dir_size(&dir);
        let (server, ready) = start_qistatus(&args.server_bin, &dir, Some(ports)).await;
        stop(server).await;
        let (s99, l99) = (small.value_at_quantile(0.99), large.value_at_quantile(0.99));
        report.row(
            "scale",
            &format!("ListByStatus page of 100, p99, at {}", sizes.scale_small),
            ms(s99),
            None,
            None,
            "",
        );
        report.row(
            "scale",
            &format!("ListByStatus page of 100, p99, at {}", sizes.scale_large),
            ms(l99),
            None,
            Some(l99 as f64 / s99 as f64),
            "within 2× of the small store",
        );
        report.row(
            "scale",
            &format!("server RSS at {} operations", sizes.scale_large),
            format!("{:.0} MB", rss as f64 / 1e6),
            None,
            None,
            "≤ 500 MB",
        );
        report.row(
            "scale",
            "data directory size",
            format!("{:.0} MB", size as f64 / 1e6),
            None,
            None,
            "",
        );
        report.row(
            "scale",
            "restart to ready",
            format!("{:.2} s", ready.as_secs_f64()),
            None,
            None,
            "≤ 5 s",
        );
        report.notes.push(format!(
            "scale: {} operations posted over HTTP ({rate:.0}/s) in four statuses; {} pages of 100 `disbursed` debts walked at each size.",
            sizes.scale_large, sizes.list_pages
        ));
    }

    let _ = std::fs::remove_dir_all(&tmp);
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "qistatus against etcd on the same machine, in the same run (`benches/run.sh`).\n"
    );
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(
        md,
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        md,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        md,
        "- mode: {}\n",
        if args.quick {
            "quick (small counts: a check that the harness works, not a measurement)"
        } else {
            "full"
        }
    );
    let _ = writeln!(
        md,
        "| scenario | metric | qistatus | etcd | ratio | target |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    let _ = writeln!(
        md,
        "\nRatios are qistatus over etcd for rates (higher is better) and large over small for the scale p99.\n"
    );
    for n in &report.notes {
        let _ = writeln!(md, "- {n}");
    }
    // The hand-written analysis of misses and fixes travels with every report.
    if let Ok(analysis) = std::fs::read_to_string("benches/ANALYSIS.md") {
        let _ = writeln!(md, "\n{analysis}");
    }
    std::fs::write(&args.out, md).expect("write the report");
    eprintln!("report written to {}", args.out.display());
}
