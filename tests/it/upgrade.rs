//! A data directory a previous format's build wrote is upgraded in place at start, and
//! answers as before: its operations, their webhooks' bodies, its change feed, and
//! deduplication of what it already holds.
//!
//! `tests/stores/store-format-2.tgz` was written by the release build of main before
//! format 3 (`9e5b699`, session 16): two webhooks of debt `fx-1` (`waiting_signature`, then
//! `disbursed`), one quarantined body (`{"no":"key"}`), one `canceled` debt `fx-2`, then a
//! clean stop.
//!
//! `tests/stores/store-format-3.tgz` was written by the release build of main before
//! format 4 (`070f32f`, session 17): the same four webhooks, then 150 debts `bulk-0` to
//! `bulk-149` in `waiting_signature` (sequences 4 to 153, dated 2024-01-03), then `bulk-7`
//! `signed` (sequence 154, 2024-01-04), then a clean stop.

use std::time::Duration;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use crate::process::{SERVER_BIN, ServerCommand};
use crate::test_server::{TestServer, get_operation, webhook};

/// Unpacks fixture `name` into `dir`; returns its data directory.
fn unpack(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = format!("{}/tests/stores/{name}", env!("CARGO_MANIFEST_DIR"));
    let untar = std::process::Command::new("tar")
        .args(["xzf", &fixture, "-C"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(untar.success());
    dir.join("store")
}

#[tokio::test]
async fn a_format_2_directory_is_upgraded_in_place_and_still_knows_its_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack("store-format-2.tgz", dir.path());

    let server = TestServer::start_in(&data).await;
    // Phase lists are read from the status index now: the same answer as the phase index
    // gave.
    let failed = server
        .grpc()
        .await
        .list_by_status(qistatus::pb::ListByStatusRequest {
            phase: qistatus::pb::Phase::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = failed.operations.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["fx-2"], "the canceled debt");
    let op = server.get("fx-1", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), op.version), ("disbursed", 2));
    assert_eq!(server.get("fx-2", "debt").await.unwrap().status, "canceled");
    // What it held is still recognized: a repeat is a duplicate of the first delivery, a
    // quarantined body is the same quarantine entry.
    let first = br#"{"webhook_type":"debt","key":"fx-1","status":"waiting_signature","event_datetime":"2024-01-01 10:00:00"}"#;
    let (code, answer) = server.post(&first[..]).await;
    assert_eq!(code, 200);
    assert_eq!(
        (answer["result"].as_str(), answer["sequence"].as_u64()),
        (Some("duplicate"), Some(1)),
        "{answer}"
    );
    let (code, answer) = server.post(&br#"{"no":"key"}"#[..]).await;
    assert_eq!(
        code, 202,
        "a quarantined webhook is accepted, not stored as an event"
    );
    assert_eq!(
        (answer["result"].as_str(), answer["quarantine_id"].as_u64()),
        (Some("quarantined"), Some(1)),
        "{answer}"
    );
    // And it goes on from where it was.
    let sequence = server
        .post_ok(webhook("debt", "fx-1", "settled", "2024-01-03 10:00:00"))
        .await;
    assert_eq!(sequence, 4);
    server.stop().await;

    // Opened again, it is the current format and says the same.
    let server = TestServer::start_in(&data).await;
    let (_, answer) = server
        .post(webhook("debt", "fx-1", "settled", "2024-01-03 10:00:00"))
        .await;
    assert_eq!(answer["sequence"].as_u64(), Some(4), "{answer}");
    assert_eq!(server.get("fx-1", "debt").await.unwrap().status, "settled");
    server.stop().await;
}

/// The changes a watcher from sequence 0 hears, until it has `count`: (sequence, key,
/// status, previous status).
async fn feed_from_zero(
    grpc: std::net::SocketAddr,
    count: usize,
) -> Vec<(u64, String, String, String)> {
    let mut client = OperationStatusServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest {
            start_after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut heard = Vec::new();
    while heard.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the feed goes on")
            .unwrap()
            .expect("the stream stays open");
        if let Some(pb::watch_operation_response::Event::Change(change)) = message.event {
            let op = change.operation.unwrap_or_default();
            heard.push((change.sequence, op.key, op.status, change.previous_status));
        }
    }
    heard
}

/// Starts the server on `data` (with `args`) with upgrades of 50 records a step and the
/// failpoint that aborts the process after the first step; checks that it did.
fn cut_after_the_first_upgrade_step(data: &std::path::Path, args: &[&str]) {
    let cut = std::process::Command::new(SERVER_BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(args)
        .env("QISTATUS_UPGRADE_STEP", "50")
        .env("QISTATUS_FAILPOINT", "abort-between-upgrade-steps")
        .output()
        .unwrap();
    assert!(!cut.status.success(), "the failpoint aborts");
    let said = String::from_utf8_lossy(&cut.stderr);
    assert!(
        said.contains("failpoint abort-between-upgrade-steps reached"),
        "{said}"
    );
}

/// The line of a server's log `said` that tells of its upgrade from format `from`.
fn upgrade_said(said: &str, from: u64) -> &str {
    said.lines()
        .find(|line| {
            line.contains("data directory upgraded in place")
                && line.contains(&format!(" from={from} "))
        })
        .unwrap_or_else(|| panic!("no upgrade from format {from} in: {said}"))
}

#[tokio::test]
async fn a_format_3_directory_cut_mid_upgrade_is_finished_by_the_next_start_and_keeps_its_bodies_and_feed()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack("store-format-3.tgz", dir.path());

    // The upgrade moves 50 change records per step; a kill after the first step.
    cut_after_the_first_upgrade_step(&data, &[]);

    // The next start goes on from where the cut left it: the 104 records left, not 154.
    let log = dir.path().join("server.log");
    let server = ServerCommand::new(&data)
        .env("QISTATUS_UPGRADE_STEP", "50")
        .log("info")
        .stderr_to(&log)
        .start()
        .await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(upgrade_said(&said, 3).contains(" records=104 "), "{said}");

    // Every webhook's body is still served with its operation, byte for byte.
    for (key, statuses) in [
        ("fx-1", &["waiting_signature", "disbursed"][..]),
        ("bulk-7", &["waiting_signature", "signed"][..]),
        ("bulk-149", &["waiting_signature"][..]),
    ] {
        let op = get_operation(server.grpc, key, "debt", true).await.unwrap();
        let sent: Vec<String> = op
            .history
            .iter()
            .map(|e| {
                let body: serde_json::Value = serde_json::from_slice(&e.raw_payload)
                    .unwrap_or_else(|e| panic!("{key}: a body is served: {e}"));
                body["status"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(sent, statuses, "{key}");
    }

    // The change feed from the start is the one the old build recorded, worked out from the
    // log now: every sequence once, in order, with what each webhook changed.
    let heard = feed_from_zero(server.grpc, 154).await;
    let sequences: Vec<u64> = heard.iter().map(|h| h.0).collect();
    assert_eq!(sequences, (1..=154).collect::<Vec<u64>>());
    let at = |sequence: usize| {
        let (_, key, status, previous) = &heard[sequence - 1];
        (key.as_str(), status.as_str(), previous.as_str())
    };
    assert_eq!(at(1), ("fx-1", "waiting_signature", ""));
    assert_eq!(at(2), ("fx-1", "disbursed", "waiting_signature"));
    assert_eq!(at(3), ("fx-2", "canceled", ""));
    assert_eq!(at(100), ("bulk-96", "waiting_signature", ""));
    assert_eq!(at(154), ("bulk-7", "signed", "waiting_signature"));
    // A new process holds none of them in its recent window: all came from the log.
    assert!(
        server
            .metrics_text()
            .await
            .contains("\nqistatus_feed_changes_from_log_total 154\n"),
        "{}",
        server.metrics_text().await
    );

    // It goes on from where it was, and a new webhook's body is served too.
    let (code, answer) = server
        .post(webhook("debt", "fx-1", "settled", "2024-01-05 10:00:00"))
        .await;
    assert_eq!(
        (code, answer["sequence"].as_u64()),
        (200, Some(155)),
        "{answer}"
    );
    let heard = feed_from_zero(server.grpc, 155).await;
    assert_eq!(
        heard[154],
        (155, "fx-1".into(), "settled".into(), "disbursed".into())
    );
    assert!(server.terminate().await.success());
}
