//! A data directory the previous format's build wrote is upgraded in place at start, and
//! answers as before: its operations, and deduplication of what it already holds.
//!
//! `tests/stores/store-format-2.tgz` was written by the release build of main before
//! format 3 (`9e5b699`, session 16): two webhooks of debt `fx-1` (`waiting_signature`, then
//! `disbursed`), one quarantined body (`{"no":"key"}`), one `canceled` debt `fx-2`, then a
//! clean stop.

use crate::test_server::{TestServer, webhook};

#[tokio::test]
async fn a_format_2_directory_is_upgraded_in_place_and_still_knows_its_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/stores/store-format-2.tgz"
    );
    let untar = std::process::Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let data = dir.path().join("store");

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

    // Opened again, it is format 3 and says the same.
    let server = TestServer::start_in(&data).await;
    let (_, answer) = server
        .post(webhook("debt", "fx-1", "settled", "2024-01-03 10:00:00"))
        .await;
    assert_eq!(answer["sequence"].as_u64(), Some(4), "{answer}");
    assert_eq!(server.get("fx-1", "debt").await.unwrap().status, "settled");
    server.stop().await;
}
