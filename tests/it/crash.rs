//! Durability, proven by crashing it: the real `qistatus-server` binary is killed under
//! concurrent load and restarted on the same data directory. Every webhook it acknowledged
//! must be there, the operations must equal a rebuild from the log, and the sequence numbers
//! must have no gaps.
//!
//! Cycles alternate two crashes: SIGKILL at a random moment, and an abort right after a
//! random batch reached the log but before the view applied it (the failpoint
//! `QISTATUS_FAILPOINT=abort-after-log-append:N`): the window log-first storage opens, which
//! the restart's replay must close.
//!
//! `QISTATUS_CRASH_CYCLES` sets the number of kill/restart cycles (default 5; for a long run:
//! `QISTATUS_CRASH_CYCLES=100 cargo test --release --test it crash`), `QISTATUS_CRASH_SEED` the
//! random seed (printed on every run).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use crate::process::{ServerCommand, ServerProcess, server_offline};

/// Starts the binary on `dir` and waits until both listeners answer.
async fn start(dir: &Path) -> ServerProcess {
    ServerCommand::new(dir).start().await
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// An acknowledged webhook: what must survive.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    status: &'static str,
    sequence: u64,
}

const STATUSES: [&str; 4] = ["waiting_signature", "signed", "disbursed", "settled"];

/// Posts from `senders` concurrent clients until the server goes away.
fn load(
    server_http: SocketAddr,
    cycle: usize,
    senders: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..senders)
        .map(|sender| {
            let acked = acked.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    // Each key gets a few webhooks, so operations change as well as appear.
                    let key = format!("c{cycle}-s{sender}-k{}", n / STATUSES.len());
                    let status = STATUSES[n % STATUSES.len()];
                    let body = serde_json::json!({
                        "webhook_type": "debt",
                        "key": key,
                        "status": status,
                        "event_datetime": format!("2024-01-0{} 10:00:00", 1 + n % STATUSES.len()),
                    });
                    let response = client
                        .post(format!("http://{server_http}/webhooks"))
                        .json(&body)
                        .send()
                        .await;
                    let Ok(response) = response else { return };
                    if response.status() != 200 {
                        assert_eq!(response.status(), 503, "only 200 or 503 under load");
                        continue;
                    }
                    let Ok(answer) = response.json::<serde_json::Value>().await else {
                        return;
                    };
                    let sequence = answer["sequence"].as_u64().expect("sequence");
                    acked.lock().unwrap().push(Acked {
                        key,
                        status,
                        sequence,
                    });
                }
            })
        })
        .collect()
}

/// Checks, over gRPC, that every acknowledged webhook is there and the log has no gaps.
async fn verify(server: &ServerProcess, acked: &[Acked]) -> u64 {
    let mut grpc = OperationStatusServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    // The head: the first progress of a watch "from now".
    let mut now = grpc
        .watch_operation(pb::WatchOperationRequest::default())
        .await
        .unwrap()
        .into_inner();
    let head = match now.message().await.unwrap().unwrap().event {
        Some(pb::watch_operation_response::Event::Progress(p)) => p.sequence,
        other => panic!("expected progress, got {other:?}"),
    };
    // Every sequence from 1 to the head, each once, in order.
    let mut all = grpc
        .watch_operation(crate::memory::everything_from_zero())
        .await
        .unwrap()
        .into_inner();
    let mut expected = 1;
    while expected <= head {
        if let Some(pb::watch_operation_response::Event::Change(c)) =
            all.message().await.unwrap().unwrap().event
        {
            assert_eq!(c.sequence, expected, "gap or repeat in the log");
            expected += 1;
        }
    }
    for a in acked {
        assert!(
            a.sequence <= head,
            "acknowledged sequence {} beyond the head {head}",
            a.sequence
        );
        let op = grpc
            .get_operation(pb::GetOperationRequest {
                key: a.key.clone(),
                kind: "debt".into(),
                include_raw_payload: false,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {a:?} is missing: {e}"))
            .into_inner()
            .operation
            .unwrap();
        assert!(
            op.history
                .iter()
                .any(|h| h.sequence == a.sequence && h.status == a.status),
            "acknowledged {a:?} is not in the history of {}",
            op.key
        );
    }
    head
}

fn rebuild_changes_nothing(dir: &Path) {
    let store = qistatus::store::Store::open(dir).unwrap();
    assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());
    drop(store);
    let out = server_offline(["--log", "warn", "rebuild"], dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        report.contains("(0 changed)"),
        "the live state differs from a rebuild: {report}"
    );
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_no_acknowledged_webhook() {
    let cycles: usize = std::env::var("QISTATUS_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("QISTATUS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {cycles} cycles, QISTATUS_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));

    let mut total_head = 0;
    for cycle in 0..cycles {
        let senders = if cycle % 2 == 0 {
            let server = start(dir.path()).await;
            // Killed once a random number more were acknowledged: mid-load, whatever the
            // machine's pace.
            let senders = load(server.http, cycle, 16, acked.clone());
            let kill_at = acked.lock().unwrap().len() + 1 + rng.next(3_000) as usize;
            crate::wait::wait_until("the load acknowledged", Duration::from_secs(60), || {
                std::future::ready((acked.lock().unwrap().len() >= kill_at).then_some(()))
            })
            .await;
            server.kill().await;
            senders
        } else {
            let appends = 1 + rng.next(100);
            let server = ServerCommand::new(dir.path())
                .env(
                    "QISTATUS_FAILPOINT",
                    &format!("abort-after-log-append:{appends}"),
                )
                .start()
                .await;
            let senders = load(server.http, cycle, 16, acked.clone());
            let status = server.exit_within(Duration::from_secs(60)).await;
            assert!(
                status.is_some_and(|s| !s.success()),
                "the failpoint aborts the server after {appends} appends: {status:?}"
            );
            senders
        };
        for s in senders {
            s.await.unwrap();
        }
        rebuild_changes_nothing(dir.path());

        let server = start(dir.path()).await;
        let snapshot = acked.lock().unwrap().clone();
        let head = verify(&server, &snapshot).await;
        assert!(head >= total_head, "the log never shrinks");
        total_head = head;
        eprintln!(
            "cycle {cycle}: {} acknowledged so far, head {head}",
            snapshot.len()
        );
        server.kill().await;
    }
    assert!(
        !acked.lock().unwrap().is_empty(),
        "the load acknowledged something"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let server = start(dir.path()).await;
    let senders = load(server.http, 0, 16, acked.clone());
    // SIGTERM while webhooks are in flight: once some were acknowledged.
    crate::wait::wait_until(
        "the server acknowledges webhooks",
        Duration::from_secs(30),
        || std::future::ready((acked.lock().unwrap().len() >= 50).then_some(())),
    )
    .await;
    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM exits 0: {status}");
    for s in senders {
        s.await.unwrap();
    }
    rebuild_changes_nothing(dir.path());
    let server = start(dir.path()).await;
    let snapshot = acked.lock().unwrap().clone();
    assert!(!snapshot.is_empty());
    verify(&server, &snapshot).await;
    server.kill().await;
}
