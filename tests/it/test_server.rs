//! Starts the real qistatus server in-process on ephemeral loopback ports, and talks to it
//! over real HTTP and real gRPC. Shared by every integration test file.

use std::net::SocketAddr;
use std::path::Path;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;
use qistatus::{ServerError, Settings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server; stop it with [`TestServer::stop`] to check it drains cleanly.
pub struct TestServer {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// The admin endpoints (`/livez`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _tmp: Option<tempfile::TempDir>,
    http_client: reqwest::Client,
}

impl TestServer {
    /// A server on a fresh temporary data directory.
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_with(Settings::new(tmp.path())).await;
        server._tmp = Some(tmp);
        server
    }

    /// A server on a fresh temporary data directory, with settings adjusted by `configure`.
    pub async fn start_configured(configure: impl FnOnce(&mut Settings)) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::new(tmp.path());
        configure(&mut settings);
        let mut server = TestServer::start_with(settings).await;
        server._tmp = Some(tmp);
        server
    }

    /// A server on `dir` (which outlives it, for restart tests).
    pub async fn start_in(dir: &Path) -> TestServer {
        TestServer::start_with(Settings::new(dir)).await
    }

    /// A server with explicit settings.
    pub async fn start_with(settings: Settings) -> TestServer {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        TestServer::start_at(settings, any, any).await
    }

    /// A server on given addresses (to restart one where clients expect it).
    pub async fn start_at(settings: Settings, http: SocketAddr, grpc: SocketAddr) -> TestServer {
        let http = TcpListener::bind(http).await.expect("bind http");
        let grpc = TcpListener::bind(grpc).await.expect("bind grpc");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let admin_addr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = qistatus::Listeners {
            http,
            grpc,
            admin: Some(admin),
        };
        let task = tokio::spawn(qistatus::run(settings, listeners, async {
            let _ = stopped.await;
        }));
        TestServer {
            http: http_addr,
            grpc: grpc_addr,
            admin: admin_addr,
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
            http_client: reqwest::Client::new(),
        }
    }

    /// Signals shutdown and waits for `run` to return; panics if it returned an error.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.task
            .take()
            .unwrap()
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }

    pub fn webhooks_url(&self) -> String {
        format!("http://{}/webhooks", self.http)
    }

    /// POSTs a body to /webhooks; returns the status and the JSON answer.
    pub async fn post(&self, body: impl Into<Vec<u8>>) -> (u16, serde_json::Value) {
        let response = self
            .http_client
            .post(self.webhooks_url())
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("POST /webhooks");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
        (status, json)
    }

    /// POSTs a body and asserts it was stored (accepted or duplicate); returns its sequence.
    pub async fn post_ok(&self, body: impl Into<Vec<u8>>) -> u64 {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 200, "answer: {answer}");
        answer["sequence"].as_u64().expect("sequence")
    }

    /// The Rust client library, connected to this server.
    pub async fn client(&self) -> qistatus::client::Client {
        qistatus::client::Client::connect(&format!("http://{}", self.grpc))
            .await
            .expect("connect client")
    }

    /// Posts one `status` debt webhook for each key `{prefix}{i}`, i in `range`; returns
    /// their sequences.
    pub async fn post_debts(
        &self,
        prefix: &str,
        range: std::ops::Range<usize>,
        status: &str,
    ) -> Vec<u64> {
        let mut sequences = Vec::new();
        for i in range {
            let body = webhook(
                "debt",
                &format!("{prefix}{i}"),
                status,
                "2024-01-01 10:00:00",
            );
            sequences.push(self.post_ok(body).await);
        }
        sequences
    }

    pub async fn grpc(&self) -> OperationStatusServiceClient<Channel> {
        OperationStatusServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect gRPC")
    }

    /// GetOperation over gRPC.
    pub async fn get(&self, key: &str, kind: &str) -> Result<pb::Operation, tonic::Status> {
        get_operation(self.grpc, key, kind, false).await
    }

    /// GetOperation over gRPC, with each webhook's raw body.
    pub async fn get_with_raw(&self, key: &str, kind: &str) -> pb::Operation {
        get_operation(self.grpc, key, kind, true)
            .await
            .expect("the operation")
    }
}

/// GetOperation of the server at `grpc`, with the raw webhooks if `include_raw_payload`.
pub async fn get_operation(
    grpc: SocketAddr,
    key: &str,
    kind: &str,
    include_raw_payload: bool,
) -> Result<pb::Operation, tonic::Status> {
    let response = OperationStatusServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect gRPC")
        .get_operation(pb::GetOperationRequest {
            key: key.into(),
            kind: kind.into(),
            include_raw_payload,
            ..Default::default()
        })
        .await?;
    Ok(response.into_inner().operation.expect("operation"))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestServer {
    /// The text of a page of the admin listener (`/ui/...`), as a browser without a session
    /// gets it (the test server has no tokens).
    pub async fn admin_page(&self, path: &str) -> String {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The names of the milestones an operation reached, in the catalog's order.
pub fn milestones(op: &pb::Operation) -> Vec<String> {
    op.milestones.iter().map(|m| m.name.clone()).collect()
}

/// The bytes of `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The phase of an operation, as a name.
pub fn phase(op: &pb::Operation) -> &'static str {
    match pb::Phase::try_from(op.phase).expect("known phase") {
        pb::Phase::Unspecified => "unspecified",
        pb::Phase::Pending => "pending",
        pb::Phase::Active => "active",
        pb::Phase::Succeeded => "succeeded",
        pb::Phase::Failed => "failed",
    }
}

/// RFC 3339 text (UTC, whole seconds when exact) of a protobuf timestamp, as the CLI prints
/// it; empty when unset.
pub use qistatus::client::rfc3339;

/// A JSON webhook body.
pub fn webhook(kind: &str, key: &str, status: &str, event_datetime: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "webhook_type": kind,
        "key": key,
        "status": status,
        "event_datetime": event_datetime,
        "data": {"n": 1},
    }))
    .unwrap()
}
