//! What was acknowledged survives a restart on the same data directory.

use crate::test_server::{TestServer, fixture};

#[tokio::test]
async fn operations_and_sequences_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    server
        .post_ok(fixture("004_debt_created_waiting_signature.json"))
        .await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let before = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap();
    server.stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let after = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(after.status, "disbursed");

    // Deduplication and sequence numbering continue where they stopped.
    let (code, answer) = server.post(fixture("004_debt_disbursed.json")).await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("duplicate")));
    assert_eq!(server.post_ok(fixture("004_debt_canceled.json")).await, 3);
    server.stop().await;
}
