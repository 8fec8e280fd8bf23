//! Snapshots of a running server, taken while webhooks keep arriving, restored offline: the
//! restored store holds exactly what was committed up to the snapshot's sequence, and goes
//! on from there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::process::{CLI_BIN, ServerCommand, ServerProcess, server_offline};
use crate::test_server::webhook;

/// Posts a debt to the intake at `http`; returns its sequence.
async fn post(client: &reqwest::Client, http: SocketAddr, key: &str) -> u64 {
    let answer: serde_json::Value = client
        .post(format!("http://{http}/webhooks"))
        .body(webhook("debt", key, "disbursed", "2024-01-01 10:00:00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["sequence"].as_u64().expect("accepted")
}

async fn cli(server: &ServerProcess, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(CLI_BIN)
        .args(["--server", &format!("http://{}", server.grpc)])
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn get(server: &ServerProcess, key: &str) -> Option<serde_json::Value> {
    let out = cli(server, &["get", key, "--json"]).await;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test]
async fn a_snapshot_taken_under_writes_restores_exactly_its_point_and_sequences_continue() {
    let dir = tempfile::tempdir().unwrap();
    let original = ServerCommand::new(&dir.path().join("original"))
        .start()
        .await;
    let client = reqwest::Client::new();
    let mut acked = BTreeMap::new();
    for i in 0..200 {
        let key = format!("before-{i}");
        acked.insert(key.clone(), post(&client, original.http, &key).await);
    }

    // Writes go on, from another task, while the snapshot is taken.
    let writes = {
        let (client, http) = (client.clone(), original.http);
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0..300 {
                let key = format!("during-{i}");
                let sequence = post(&client, http, &key).await;
                acked.insert(key, sequence);
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let file = dir.path().join("qistatus.snapshot");
    let out = cli(
        &original,
        &["snapshot", "save", file.to_str().unwrap(), "--json"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let head = saved["head_sequence"].as_u64().unwrap();
    acked.extend(writes.await.unwrap());
    assert!(
        head >= 200,
        "the snapshot holds what was acknowledged before it: {head}"
    );
    assert!(!dir.path().join("qistatus.partial").exists());
    original.terminate().await;

    // Restore offline into a new directory.
    let restored_dir = dir.path().join("restored");
    let out = server_offline(["restore", file.to_str().unwrap()], &restored_dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "through sequence {head} of store {}",
            saved["store_id"].as_str().unwrap()
        )),
        "{text}"
    );

    let restored = ServerCommand::new(&restored_dir).start().await;
    let stats: serde_json::Value =
        serde_json::from_slice(&cli(&restored, &["stats", "--json"]).await.stdout).unwrap();
    assert_eq!(stats["head_sequence"], head);
    assert_ne!(
        stats["store_id"], saved["store_id"],
        "a restored store is a new store"
    );
    let expected_operations = acked.values().filter(|s| **s <= head).count() as u64;
    assert_eq!(stats["operations"], expected_operations);
    // Exactly the webhooks up to the snapshot's sequence, each where it was.
    for (key, sequence) in acked.iter().filter(|(k, _)| k.ends_with('0')) {
        let found = get(&restored, key).await;
        if *sequence <= head {
            let op = found.unwrap_or_else(|| panic!("{key} (sequence {sequence}) is missing"));
            assert_eq!(op["last_sequence"], *sequence);
        } else {
            assert!(
                found.is_none(),
                "{key} (sequence {sequence}) is after the snapshot"
            );
        }
    }
    // Sequences continue after the snapshot's.
    assert_eq!(
        post(&client, restored.http, "after-restore").await,
        head + 1
    );
    restored.terminate().await;

    // A directory in use is never overwritten; a damaged file restores nothing.
    let out = server_offline(["restore", file.to_str().unwrap()], &restored_dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let bytes = std::fs::read(&file).unwrap();
    let damaged = dir.path().join("damaged.snapshot");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let target = dir.path().join("from-damaged");
    let out = server_offline(["restore", damaged.to_str().unwrap()], &target);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ends early"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists(), "nothing is left behind");
}
