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

    // Writes go on, from another task, while the snapshot is taken: it starts once they do.
    let during = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writes = {
        let (client, http, during) = (client.clone(), original.http, during.clone());
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            for i in 0..300 {
                let key = format!("during-{i}");
                let sequence = post(&client, http, &key).await;
                acked.insert(key, sequence);
                during.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            acked
        })
    };
    crate::wait::wait_until("writes under way", Duration::from_secs(30), || {
        let written = during.load(std::sync::atomic::Ordering::Relaxed);
        std::future::ready((written >= 5).then_some(()))
    })
    .await;
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

/// An edited snapshot whose checksum was computed again still restores nothing: the restored
/// view is checked against its own indexes and counters before it takes its name. And the
/// staging directory beside the target is one this restore made: whatever else is there
/// stays untouched.
#[tokio::test]
async fn an_edited_snapshot_is_refused_and_staging_touches_nothing_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(&dir.path().join("original"))
        .start()
        .await;
    let client = reqwest::Client::new();
    for (key, status) in [("edited", "canceled"), ("other", "disbursed")] {
        let answer = client
            .post(format!("http://{}/webhooks", server.http))
            .body(webhook("debt", key, status, "2024-01-01 10:00:00"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let file = dir.path().join("qistatus.snapshot");
    let out = cli(&server, &["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.terminate().await;

    // What another program (or an earlier restore) left beside the target.
    let rs = dir.path().join("rs");
    for other in ["backup.restoring", "backup.new.restoring"] {
        std::fs::create_dir_all(rs.join(other)).unwrap();
        std::fs::write(rs.join(other).join("keep.txt"), b"not qistatus's").unwrap();
    }

    // The operation's status edited in the view's records (postcard strings: a length byte,
    // then the text), the index and the counters left as they were, the log's segments (after
    // the view in the file) untouched, and the CRC-32 recomputed.
    let mut bytes = std::fs::read(&file).unwrap();
    let log_starts = bytes
        .windows(8)
        .position(|w| w == b"log/0000")
        .expect("the snapshot holds the log after the view");
    let (from, to) = (b"\x08canceled", b"\x08settled_");
    let mut edits = 0;
    for at in 0..log_starts - from.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + from.len()].copy_from_slice(to);
            edits += 1;
        }
    }
    assert!(
        edits > 0,
        "the snapshot holds the status as a record string"
    );
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    let edited = dir.path().join("edited.snapshot");
    std::fs::write(&edited, &bytes).unwrap();

    // An edit the view cannot see (a key renamed everywhere in it, consistently), with the
    // CRC recomputed: the SHA-256 recorded beside the file when it was saved catches it.
    let recorded = std::fs::read_to_string(dir.path().join("qistatus.snapshot.sha256")).unwrap();
    let original = std::fs::read(&file).unwrap();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&original)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        recorded,
        format!("{digest}  qistatus.snapshot\n"),
        "sha256sum's format"
    );
    let mut renamed = original.clone();
    let mut renames = 0;
    for at in 0..log_starts - 5 {
        if &renamed[at..at + 5] == b"other" {
            renamed[at..at + 5].copy_from_slice(b"0ther");
            renames += 1;
        }
    }
    assert!(renames > 0);
    let body = renamed.len() - 4;
    let crc = crc32fast::hash(&renamed[..body]);
    renamed[body..].copy_from_slice(&crc.to_le_bytes());
    let renamed_file = dir.path().join("renamed.snapshot");
    std::fs::write(&renamed_file, &renamed).unwrap();
    std::fs::write(dir.path().join("renamed.snapshot.sha256"), &recorded).unwrap();
    let target = rs.join("backup.new");
    let out = server_offline(["restore", renamed_file.to_str().unwrap()], &target);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a snapshot edited since it was saved restored"
    );
    assert!(said.contains("recorded when it was saved"), "{said}");
    assert!(!target.exists(), "nothing is left behind");

    let out = server_offline(["restore", edited.to_str().unwrap()], &target);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an edited snapshot restored");
    assert!(said.contains("disagrees with itself"), "{said}");
    assert!(!target.exists(), "nothing is left behind");

    // The true snapshot restores beside the same leftovers, which stay as they were.
    let out = server_offline(["restore", file.to_str().unwrap()], &target);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for other in ["backup.restoring", "backup.new.restoring"] {
        assert_eq!(
            std::fs::read(rs.join(other).join("keep.txt")).unwrap(),
            b"not qistatus's",
            "{other} was touched"
        );
    }
    let restored = ServerCommand::new(&target).start().await;
    assert_eq!(
        get(&restored, "edited").await.unwrap()["status"],
        "canceled"
    );
    restored.terminate().await;
}

#[tokio::test]
async fn with_a_snapshot_key_only_a_snapshot_it_signed_restores() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(&dir.path().join("original"))
        .start()
        .await;
    let client = reqwest::Client::new();
    post(&client, server.http, "signed-1").await;
    let key = dir.path().join("snapshot.key");
    std::fs::write(&key, "operator's secret\n").unwrap();
    let file = dir.path().join("signed.snapshot");
    let out = cli(
        &server,
        &[
            "snapshot",
            "save",
            file.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signature = dir.path().join("signed.snapshot.sig");
    assert!(signature.exists());
    let unsigned = dir.path().join("unsigned.snapshot");
    let out = cli(&server, &["snapshot", "save", unsigned.to_str().unwrap()]).await;
    assert!(out.status.success());
    server.terminate().await;
    let restore = |file: &std::path::Path, target: &str, key: &std::path::Path| {
        server_offline(
            [
                "restore",
                file.to_str().unwrap(),
                "--snapshot-key-file",
                key.to_str().unwrap(),
            ],
            &dir.path().join(target),
        )
    };

    // Replaced by one an attacker took, its .sha256 recomputed and the old .sig kept: refused.
    let forged = dir.path().join("forged.snapshot");
    std::fs::copy(&unsigned, &forged).unwrap();
    std::fs::copy(
        dir.path().join("unsigned.snapshot.sha256"),
        dir.path().join("forged.snapshot.sha256"),
    )
    .unwrap();
    std::fs::copy(&signature, dir.path().join("forged.snapshot.sig")).unwrap();
    let out = restore(&forged, "a", &key);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a forged snapshot restored");
    assert!(said.contains("not signed by the snapshot key"), "{said}");
    // Unsigned: refused with a key, restored without one (as before).
    let out = restore(&unsigned, "b", &key);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("is not signed"),
        "{said}"
    );
    // Another key: refused.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "someone else's").unwrap();
    assert!(!restore(&file, "c", &other).status.success());
    assert!(
        !dir.path().join("a").exists()
            && !dir.path().join("b").exists()
            && !dir.path().join("c").exists()
    );
    // Its own: restored.
    let out = restore(&file, "d", &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
