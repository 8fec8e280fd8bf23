//! Rebuild recomputes the live state exactly, and applies catalog changes, including to
//! quarantined webhooks.

use std::path::Path;
use std::time::Duration;

use crate::process::ServerCommand;
use crate::test_server::{TestServer, phase, webhook};
use qistatus::domain::catalog::Catalog;
use qistatus::domain::reconcile::Operation;
use qistatus::store::Store;
use qistatus::store::rebuild;

/// Opens the store in `dir` once the last handle on it let go: sled releases the directory's
/// lock from its own flusher thread, a moment after the handle is dropped.
fn open_when_free(dir: &Path) -> Store {
    crate::wait::wait_until_blocking("the store opens", Duration::from_secs(5), || {
        Store::open(dir)
            .inspect_err(|e| eprintln!("opening {} again: {e}", dir.display()))
            .ok()
    })
}

fn operations(dir: &Path) -> Vec<Operation> {
    let store = open_when_free(dir);
    let ops = store.operations().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());
    ops
}

/// A deterministic pseudo-random workload over every kind, with duplicates and garbage.
async fn random_workload(server: &TestServer, seed: u64, count: usize) {
    let statuses: &[(&str, &[&str])] = &[
        (
            "debt",
            &[
                "waiting_signature",
                "disbursed",
                "canceled ",
                "settled",
                "opened",
                "mystery",
            ],
        ),
        (
            "account",
            &[
                "waiting_user_acceptance",
                "account_opened",
                "account_rejected",
            ],
        ),
        ("scr", &["pending_signature", "consulted", "rejected"]),
        ("historic-card-settlement", &["processed"]),
        ("installment.status_change", &["paid", "overdue"]),
    ];
    let mut state = seed;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut bodies = Vec::new();
    for _ in 0..count {
        let (kind, kind_statuses) = statuses[next(statuses.len())];
        let key = format!("key-{}", next(20));
        let status = kind_statuses[next(kind_statuses.len())];
        let time = format!("2024-01-{:02} 10:{:02}:00", 1 + next(3), next(4));
        let mut value: serde_json::Value =
            serde_json::from_slice(&webhook(kind, &key, status, &time)).unwrap();
        let slc_status = ["completed", "not_found"][next(2)];
        value["data"] = serde_json::json!({"response_data": {"slc_status": slc_status}});
        if next(10) == 0 {
            value.as_object_mut().unwrap().remove("key");
        }
        bodies.push(serde_json::to_vec(&value).unwrap());
        if next(4) == 0 {
            let again = bodies[next(bodies.len())].clone();
            bodies.push(again);
        }
    }
    for body in bodies {
        let (code, _) = server.post(body).await;
        assert!(code == 200 || code == 202, "{code}");
    }
}

#[tokio::test]
async fn rebuild_after_a_random_workload_equals_the_live_state_and_is_idempotent() {
    for seed in [1, 7, 42] {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_in(dir.path()).await;
        random_workload(&server, seed, 300).await;
        server.stop().await;

        let live = operations(dir.path());
        assert!(live.len() > 20, "the workload makes many operations");
        let catalog = Catalog::builtin();
        for _ in 0..2 {
            let store = open_when_free(dir.path());
            let report = rebuild(&store, &catalog).unwrap();
            assert_eq!(report.operations_changed, 0, "seed {seed}: {report:?}");
            assert_eq!(report.promoted, 0);
            assert!(
                report.still_quarantined > 0,
                "the workload quarantines some"
            );
            assert_eq!(report.operations, live.len());
            drop(store);
            assert_eq!(operations(dir.path()), live, "seed {seed}");
        }
    }
}

fn server_command(dir: &Path, catalog: Option<&Path>, args: &[&str]) -> String {
    let mut all: Vec<std::ffi::OsString> = vec!["--log".into(), "warn".into()];
    if let Some(catalog) = catalog {
        all.extend(["--catalog".into(), catalog.as_os_str().to_owned()]);
    }
    all.extend(args.iter().map(Into::into));
    let out = crate::process::server_offline(all, dir);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A catalog that reads the quarantined `pix_transfer` and knows the debt stage
/// `in_collection`: what both catalog-change tests teach.
const PIX_AND_IN_COLLECTION: &str = r#"
[kinds.pix_transfer]
status_paths = ["data.transfer_state"]
stages = ["created"]
success = ["sent"]

[kinds.debt]
stages = ["waiting_signature", "signature_finished", "signed", "waiting_balance_block",
          "issued", "waiting_disbursement", "disbursed", "in_collection"]
"#;

#[tokio::test]
async fn a_catalog_change_moves_quarantined_webhooks_into_their_operations() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    // A kind the catalog does not know, whose status is in a field it does not read yet.
    let pix_body = br#"{"webhook_type": "pix_transfer", "key": "pix-1", "event_datetime": "2024-03-01 10:00:00", "data": {"transfer_state": "SENT"}}"#;
    let (code, answer) = server.post(pix_body.to_vec()).await;
    assert_eq!(code, 202, "{answer}");
    // A debt that moved to a stage the catalog does not know yet.
    server
        .post_ok(webhook(
            "debt",
            "debt-1",
            "disbursed",
            "2024-03-01 10:00:00",
        ))
        .await;
    server
        .post_ok(webhook(
            "debt",
            "debt-1",
            "in_collection",
            "2024-03-05 10:00:00",
        ))
        .await;
    assert_eq!(
        server.get("debt-1", "debt").await.unwrap().status,
        "disbursed"
    );
    server.stop().await;

    let listing = server_command(dir.path(), None, &["quarantine"]);
    assert!(listing.contains("no status"), "{listing}");
    assert!(listing.ends_with("1 quarantined webhook(s)\n"), "{listing}");
    assert!(
        !listing.contains("SENT"),
        "payloads are shown only on request: {listing}"
    );

    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, PIX_AND_IN_COLLECTION).unwrap();
    let effective = server_command(dir.path(), Some(&catalog_file), &["catalog"]);
    assert!(effective.contains("[kinds.pix_transfer]"), "{effective}");

    let report = server_command(dir.path(), Some(&catalog_file), &["rebuild"]);
    assert!(
        report.contains("1 promoted from quarantine, 0 still quarantined"),
        "{report}"
    );
    let again = server_command(dir.path(), Some(&catalog_file), &["rebuild"]);
    assert!(again.contains("(0 changed)"), "{again}");
    assert!(
        server_command(dir.path(), None, &["quarantine"]).ends_with("0 quarantined webhook(s)\n")
    );

    let mut settings = qistatus::Settings::new(dir.path());
    settings.catalog = qistatus::load_catalog(Some(&catalog_file)).unwrap();
    let server = TestServer::start_with(settings).await;
    let pix = server.get("pix-1", "pix_transfer").await.unwrap();
    assert_eq!((pix.status.as_str(), phase(&pix)), ("sent", "succeeded"));
    assert_eq!(
        pix.last_sequence, 3,
        "promoted webhooks get the next sequence number"
    );
    let debt = server.get("debt-1", "debt").await.unwrap();
    assert_eq!(debt.status, "in_collection");
    // What the rebuild rewrote still serves its webhooks' bodies, byte for byte.
    let debt = server.get_with_raw("debt-1", "debt").await;
    let statuses: Vec<String> = debt
        .history
        .iter()
        .map(|e| {
            let body: serde_json::Value = serde_json::from_slice(&e.raw_payload).unwrap();
            body["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(statuses, ["disbursed", "in_collection"]);
    let pix = server.get_with_raw("pix-1", "pix_transfer").await;
    assert_eq!(pix.history[0].raw_payload, pix_body);
    // The promoted webhook is deduplicated like any other.
    let (code, answer) = server.post(br#"{"webhook_type": "pix_transfer", "key": "pix-1", "event_datetime": "2024-03-01 10:00:00", "data": {"transfer_state": "SENT"}}"#.to_vec()).await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("duplicate")));
    server.stop().await;
}

/// The same catalog change on a running server: `POST /catalog/reload` (what SIGHUP does)
/// promotes the quarantined webhook, re-reconciles the debt, tells a watcher, and the server
/// keeps taking webhooks under the new catalog. A broken catalog file changes nothing.
#[tokio::test]
async fn a_catalog_reload_on_a_running_server_applies_it_online() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, "").unwrap();
    let mut settings = qistatus::Settings::new(dir.path().join("data"));
    settings.catalog_file = Some(catalog_file.clone());
    let server = TestServer::start_with(settings).await;
    let pix = br#"{"webhook_type": "pix_transfer", "key": "pix-1", "event_datetime": "2024-03-01 10:00:00", "data": {"transfer_state": "SENT"}}"#;
    assert_eq!(server.post(pix.to_vec()).await.0, 202);
    for (status, time) in [
        ("disbursed", "2024-03-01 10:00:00"),
        ("in_collection", "2024-03-05 10:00:00"),
    ] {
        server
            .post_ok(webhook("debt", "debt-1", status, time))
            .await;
    }
    assert_eq!(
        server.get("debt-1", "debt").await.unwrap().status,
        "disbursed"
    );
    let client = server.client().await;
    let changes = client.watch(qistatus::client::WatchQuery {
        start_after_sequence: Some(2),
        ..Default::default()
    });
    tokio::pin!(changes);

    let reload = || async {
        let response = reqwest::Client::new()
            .post(format!("http://{}/catalog/reload", server.admin))
            .send()
            .await
            .expect("the admin listener answers");
        let code = response.status().as_u16();
        (code, response.json::<serde_json::Value>().await.unwrap())
    };
    // A file that is not a catalog: refused, naming the problem; nothing changes.
    std::fs::write(&catalog_file, "[kinds.pix_transfer]\nstages = 3\n").unwrap();
    let (code, answer) = reload().await;
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("stages"),
        "{answer}"
    );
    assert_eq!(server.post(pix.to_vec()).await.0, 202, "still quarantined");

    std::fs::write(&catalog_file, PIX_AND_IN_COLLECTION).unwrap();
    let (code, answer) = reload().await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["promoted"], 1, "{answer}");
    assert_eq!(answer["still_quarantined"], 0, "{answer}");

    let pix_op = server.get("pix-1", "pix_transfer").await.unwrap();
    assert_eq!(
        (pix_op.status.as_str(), phase(&pix_op)),
        ("sent", "succeeded")
    );
    assert_eq!(pix_op.last_sequence, 3, "the next sequence");
    assert_eq!(
        server.get("debt-1", "debt").await.unwrap().status,
        "in_collection"
    );
    // The watcher hears of the promoted webhook, then of one posted after the reload.
    let promoted = next_change(&mut changes).await;
    assert_eq!(
        (promoted.sequence, promoted.operation.unwrap().key.as_str()),
        (3, "pix-1")
    );
    let later = br#"{"webhook_type": "pix_transfer", "key": "pix-2", "event_datetime": "2024-03-02 10:00:00", "data": {"transfer_state": "SENT"}}"#;
    let (code, answer) = server.post(later.to_vec()).await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("accepted")));
    let after = next_change(&mut changes).await;
    assert_eq!(
        (after.sequence, after.operation.unwrap().key.as_str()),
        (4, "pix-2")
    );
    // The promoted webhook is deduplicated like any other.
    let (code, answer) = server.post(pix.to_vec()).await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("duplicate")));
    server.stop().await;
}

/// The next change a watch yields.
async fn next_change(
    changes: &mut (
             impl tokio_stream::Stream<
        Item = Result<qistatus::client::WatchEvent, qistatus::client::ClientError>,
    > + Unpin
         ),
) -> qistatus::pb::OperationChange {
    loop {
        match tokio_stream::StreamExt::next(changes).await {
            Some(Ok(qistatus::client::WatchEvent::Change(c))) => return *c,
            Some(Ok(_)) => {}
            other => panic!("the watch ended: {other:?}"),
        }
    }
}

/// SIGHUP reloads the catalog of the real binary.
#[tokio::test]
async fn sighup_reloads_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, "").unwrap();
    let server = crate::process::ServerCommand::new(&dir.path().join("data"))
        .args(["--catalog", catalog_file.to_str().unwrap()])
        .start()
        .await;
    let pix = br#"{"webhook_type": "pix_transfer", "key": "pix-1", "event_datetime": "2024-03-01 10:00:00", "data": {"transfer_state": "SENT"}}"#;
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks", server.http))
        .body(pix.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    std::fs::write(
        &catalog_file,
        "[kinds.pix_transfer]\nstatus_paths = [\"data.transfer_state\"]\nsuccess = [\"sent\"]\n",
    )
    .unwrap();
    server.signal("HUP");
    let client = qistatus::client::Client::connect(&format!("http://{}", server.grpc))
        .await
        .unwrap();
    let op = crate::wait::wait_until(
        "the quarantined webhook promoted after SIGHUP",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move { client.get("pix-1", None).await.ok() }
        },
    )
    .await;
    assert_eq!(op.status, "sent");
    server.terminate().await;
}

/// A reload that a crash cuts short (the process dies before the rebuilt operations are
/// committed) is finished at the next start, which says so: the operations are never left
/// as the old catalog made them under the new one.
#[tokio::test]
async fn a_reload_cut_short_by_a_crash_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, "").unwrap();
    let data = dir.path().join("data");
    let catalog_arg = ["--catalog", catalog_file.to_str().unwrap()];
    let server = ServerCommand::new(&data)
        .args(catalog_arg)
        .env("QISTATUS_FAILPOINT", "abort-before-rebuild-commit")
        .start()
        .await;
    let http = reqwest::Client::new();
    for (status, time) in [
        ("disbursed", "2024-03-01 10:00:00"),
        ("in_collection", "2024-03-05 10:00:00"),
    ] {
        let answer = http
            .post(format!("http://{}/webhooks", server.http))
            .body(webhook("debt", "debt-1", status, time))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(status_of(server.grpc, "debt-1").await, "disbursed");

    std::fs::write(&catalog_file, PIX_AND_IN_COLLECTION).unwrap();
    // The reload dies with the process, before its rebuild is committed.
    let _ = http
        .post(format!("http://{}/catalog/reload", server.admin))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let exit = server.exit_within(Duration::from_secs(10)).await;
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the failpoint aborts: {exit:?}"
    );

    let log = dir.path().join("restart.log");
    let server = ServerCommand::new(&data)
        .args(catalog_arg)
        .stderr_to(&log)
        .start()
        .await;
    assert_eq!(status_of(server.grpc, "debt-1").await, "in_collection");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("built under another catalog"), "{said}");
    assert!(server.terminate().await.success());

    // Started again under the same catalog: nothing to redo, nothing said.
    let server = ServerCommand::new(&data)
        .args(catalog_arg)
        .stderr_to(&log)
        .start()
        .await;
    assert_eq!(status_of(server.grpc, "debt-1").await, "in_collection");
    assert!(server.terminate().await.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("built under another catalog"), "{said}");
}

/// The status of the debt `key`, over gRPC.
async fn status_of(grpc: std::net::SocketAddr, key: &str) -> String {
    let mut client = qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .unwrap();
    client.get(key, Some("debt")).await.unwrap().status
}

/// A reload recomputes the store beside the writer: webhooks sent meanwhile are
/// acknowledged at once, and those the writer stored under the old catalog meanwhile end
/// up as a rebuild from scratch under the new one makes them.
#[tokio::test]
async fn a_reload_does_not_hold_ingest_back_and_redoes_what_arrived_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, "").unwrap();
    let data = dir.path().join("data");
    // The recomputation beside the writer pauses until this test lets it go on.
    let release = dir.path().join("release");
    let reached = dir.path().join("release.reached");
    let server = ServerCommand::new(&data)
        .args(["--catalog", catalog_file.to_str().unwrap()])
        .env("QISTATUS_FAILPOINT", "pause-in-rebuild-plan")
        .env("QISTATUS_FAILPOINT_RELEASE", release.to_str().unwrap())
        .start()
        .await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let http = http.clone();
        let url = format!("http://{}/webhooks", server.http);
        async move {
            http.post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let pix = |key: &str| {
        format!(
            r#"{{"webhook_type": "pix_transfer", "key": "{key}", "event_datetime": "2024-03-01 10:00:00", "data": {{"transfer_state": "SENT"}}}}"#
        )
        .into_bytes()
    };
    assert_eq!(post(pix("pix-1")).await, 202, "quarantined before");
    for (status, time) in [
        ("disbursed", "2024-03-01 10:00:00"),
        ("in_collection", "2024-03-05 10:00:00"),
    ] {
        assert_eq!(post(webhook("debt", "debt-1", status, time)).await, 200);
    }

    std::fs::write(&catalog_file, PIX_AND_IN_COLLECTION).unwrap();
    let reload = tokio::spawn({
        let url = format!("http://{}/catalog/reload", server.admin);
        let http = http.clone();
        async move {
            let answer = http.post(url).send().await.unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    });
    crate::wait::wait_until(
        "the reload's recomputation",
        Duration::from_secs(30),
        || async { reached.exists().then_some(()) },
    )
    .await;
    // While the reload is held in its recomputation: acknowledged all the same.
    for (key, status, time) in [
        ("debt-2", "disbursed", "2024-03-01 10:00:00"),
        ("debt-2", "in_collection", "2024-03-05 10:00:00"),
        ("debt-3", "disbursed", "2024-03-01 10:00:00"),
    ] {
        assert_eq!(post(webhook("debt", key, status, time)).await, 200);
    }
    assert_eq!(post(pix("pix-2")).await, 200, "the new catalog reads it");
    assert!(
        !reload.is_finished(),
        "the reload was still running meanwhile"
    );
    std::fs::write(&release, "").unwrap();
    let (code, answer) = reload.await.unwrap();
    assert_eq!(code, 200, "{answer}");

    assert_eq!(
        status_of(server.grpc, "debt-2").await,
        status_of(server.grpc, "debt-1").await,
        "what arrived during the reload is read as what came before it"
    );
    let status = server.terminate().await;
    assert!(status.success(), "{status}");
    // What the reload left is what a rebuild from scratch makes: it changes nothing.
    let catalog = qistatus::load_catalog(Some(&catalog_file)).unwrap();
    let store = Store::open(&data).unwrap();
    let report = rebuild(&store, &catalog).unwrap();
    assert_eq!(report.operations_changed, 0, "{report:?}");
    assert_eq!(report.promoted, 0, "{report:?}");
    assert_eq!(
        report.operations, 5,
        "debt-1..3, pix-1 and pix-2: {report:?}"
    );
}
