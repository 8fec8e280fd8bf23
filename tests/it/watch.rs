//! WatchOperation: ordered, gap-free, duplicate-free, resumable, and never in the intake's way.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::test_server::{TestServer, webhook};
use qistatus::Settings;
use qistatus::client::{WatchEvent, WatchQuery};
use qistatus::domain::catalog::{Catalog, EndOutcome, StatusClass};
use qistatus::pb;
use tokio_stream::StreamExt;
use tonic::Code;

/// One posted webhook that changed its operation's status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    sequence: u64,
    kind: String,
    key: String,
    status: String,
}

fn phase_of(catalog: &Catalog, kind: &str, status: &str) -> pb::Phase {
    match catalog.classify(kind, status) {
        StatusClass::End {
            outcome: EndOutcome::Success,
            ..
        } => pb::Phase::Succeeded,
        StatusClass::End {
            outcome: EndOutcome::Failure,
            ..
        } => pb::Phase::Failed,
        _ => pb::Phase::Pending,
    }
}

/// Posts a workload in which every webhook moves its operation forward (so each one is a
/// status change), plus duplicates and late earlier stages (which change no status).
async fn forward_workload(server: &TestServer, keys: usize) -> Vec<Expected> {
    let flows: &[(&str, &[&str])] = &[
        (
            "debt",
            &[
                "waiting_signature",
                "signed",
                "disbursed",
                "opened",
                "settled",
            ],
        ),
        ("account", &["waiting_user_acceptance", "account_opened"]),
        ("scr", &["pending_signature", "rejected"]),
    ];
    let mut expected = Vec::new();
    for step in 0..5 {
        for k in 0..keys {
            let (kind, flow) = flows[k % flows.len()];
            let Some(status) = flow.get(step) else {
                continue;
            };
            let key = format!("{kind}-{k}");
            let time = format!("2024-01-0{} 10:00:00", step + 1);
            let body = webhook(kind, &key, status, &time);
            let sequence = server.post_ok(body.clone()).await;
            expected.push(Expected {
                sequence,
                kind: kind.into(),
                key: key.clone(),
                status: status.to_string(),
            });
            if k % 5 == 0 {
                // A duplicate: no sequence, no change.
                let (_, answer) = server.post(body).await;
                assert_eq!(answer["result"], "duplicate");
            }
            if step >= 1 && k % 7 == 0 {
                // The first stage again, late and with other content: stored, but no change.
                let late = webhook(kind, &key, flow[0], "2023-12-31 10:00:00");
                server.post_ok(late).await;
            }
        }
    }
    expected
}

/// Reads a watch until a progress notification at or past `until`; returns the changes.
async fn collect_until(
    stream: &mut (
             impl tokio_stream::Stream<Item = Result<WatchEvent, qistatus::client::ClientError>> + Unpin
         ),
    until: u64,
) -> Vec<pb::OperationChange> {
    let mut changes = Vec::new();
    loop {
        match stream.next().await.expect("stream open").expect("no error") {
            WatchEvent::Change(c) => {
                let done = c.sequence >= until;
                changes.push(*c);
                if done {
                    return changes;
                }
            }
            WatchEvent::Progress(p) if p >= until => return changes,
            _ => {}
        }
    }
}

#[tokio::test]
async fn two_hundred_watchers_each_receive_exactly_their_changes_in_order() {
    // Watchers whose filter matches nothing at the end learn that they are done from a
    // progress notification: make those frequent.
    let server = Arc::new(
        TestServer::start_configured(|s| s.feed.progress_interval = Duration::from_millis(200))
            .await,
    );
    let client = server.client().await;
    let catalog = Catalog::builtin();

    let keys = 24;
    let mut queries = Vec::new();
    for i in 0..200 {
        let query = match i % 6 {
            0 => WatchQuery::default(),
            1 => WatchQuery {
                key: Some(format!("debt-{}", (i / 6 * 3) % keys)),
                ..WatchQuery::default()
            },
            2 => WatchQuery {
                kinds: vec![["debt", "account", "scr"][i % 3].into()],
                ..WatchQuery::default()
            },
            3 => WatchQuery {
                statuses: vec!["disbursed".into(), "settled".into()],
                ..WatchQuery::default()
            },
            4 => WatchQuery {
                phases: vec![pb::Phase::Failed, pb::Phase::Succeeded],
                ..WatchQuery::default()
            },
            _ => WatchQuery {
                kinds: vec!["debt".into()],
                statuses: vec!["signed".into()],
                ..WatchQuery::default()
            },
        };
        queries.push(query);
    }
    // Start every watcher and wait for its first progress: it is then registered.
    let mut streams = Vec::new();
    for query in &queries {
        let mut stream = Box::pin(client.watch(query.clone()));
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Progress(0) => {}
            other => panic!("expected the starting progress, got {other:?}"),
        }
        streams.push(stream);
    }

    let expected = forward_workload(&server, keys).await;
    let last = server
        .post_ok(webhook(
            "account",
            "sentinel",
            "account_opened",
            "2024-02-01 00:00:00",
        ))
        .await;

    let mut readers = Vec::new();
    for (query, mut stream) in queries.into_iter().zip(streams) {
        readers.push(tokio::spawn(async move {
            (query, collect_until(&mut stream, last).await)
        }));
    }
    for reader in readers {
        let (query, changes) = reader.await.unwrap();
        let wanted: Vec<u64> = expected
            .iter()
            .chain(std::iter::once(&Expected {
                sequence: last,
                kind: "account".into(),
                key: "sentinel".into(),
                status: "account_opened".into(),
            }))
            .filter(|e| query.key.as_ref().is_none_or(|k| *k == e.key))
            .filter(|e| query.kinds.is_empty() || query.kinds.contains(&e.kind))
            .filter(|e| query.statuses.is_empty() || query.statuses.contains(&e.status))
            .filter(|e| {
                query.phases.is_empty()
                    || query
                        .phases
                        .contains(&phase_of(&catalog, &e.kind, &e.status))
            })
            .map(|e| e.sequence)
            .collect();
        let got: Vec<u64> = changes.iter().map(|c| c.sequence).collect();
        assert_eq!(got, wanted, "{query:?}");
        for c in &changes {
            let op = c.operation.as_ref().unwrap();
            let e = expected.iter().find(|e| e.sequence == c.sequence);
            if let Some(e) = e {
                assert_eq!(
                    (&op.kind, &op.key, &op.status),
                    (&e.kind, &e.key, &e.status)
                );
            }
            assert_ne!(c.previous_status, op.status, "a change changes the status");
        }
    }
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn a_watcher_that_does_not_read_never_blocks_ingest_and_later_gets_everything() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut stalled = Box::pin(client.watch(WatchQuery::default()));
    assert_eq!(
        stalled.next().await.unwrap().unwrap(),
        WatchEvent::Progress(0)
    );

    // Far more changes than the watcher's buffer holds, while it reads nothing.
    let total = 600;
    let ingest = server.post_debts("k", 0..total as usize, "disbursed");
    tokio::time::timeout(Duration::from_secs(60), ingest)
        .await
        .expect("ingest is not held up by the watcher");

    let changes = collect_until(&mut stalled, total).await;
    let got: Vec<u64> = changes.iter().map(|c| c.sequence).collect();
    assert_eq!(got, (1..=total).collect::<Vec<u64>>());
    server.stop().await;
}

#[tokio::test]
async fn resuming_across_a_restart_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    let (http, grpc) = (server.http, server.grpc);
    let client = server.client().await;
    let mut auto = Box::pin(client.watch(WatchQuery {
        kinds: vec!["debt".into()],
        ..WatchQuery::default()
    }));
    assert_eq!(auto.next().await.unwrap().unwrap(), WatchEvent::Progress(0));

    server.post_debts("k", 0..5, "disbursed").await;
    let first: Vec<u64> = collect_until(&mut auto, 5)
        .await
        .iter()
        .map(|c| c.sequence)
        .collect();
    assert_eq!(first, [1, 2, 3, 4, 5]);
    server.stop().await;

    // The stream notices, and keeps trying while the server is down.
    match auto.next().await.unwrap().unwrap() {
        WatchEvent::Reconnecting { resume_after, .. } => assert_eq!(resume_after, Some(5)),
        other => panic!("expected a reconnect notice, got {other:?}"),
    }

    let server = TestServer::start_at(Settings::new(dir.path()), http, grpc).await;
    for i in 5..10 {
        server
            .post_ok(webhook(
                "debt",
                &format!("k{i}"),
                "settled",
                "2024-01-01 10:00:00",
            ))
            .await;
    }
    server
        .post_ok(webhook(
            "account",
            "other",
            "account_opened",
            "2024-01-01 10:00:00",
        ))
        .await;
    let mut after = Vec::new();
    while after.len() < 5 {
        match auto.next().await.unwrap().unwrap() {
            WatchEvent::Change(c) => after.push(c.sequence),
            WatchEvent::Progress(_) | WatchEvent::Reconnecting { .. } => {}
        }
    }
    assert_eq!(after, [6, 7, 8, 9, 10]);

    // A fresh watcher resuming from a sequence gets exactly what follows it.
    let mut manual = Box::pin(server.client().await.watch(WatchQuery {
        start_after_sequence: Some(3),
        include_unchanged: true,
        ..WatchQuery::default()
    }));
    let resumed: Vec<u64> = collect_until(&mut manual, 11)
        .await
        .iter()
        .map(|c| c.sequence)
        .collect();
    assert_eq!(resumed, (4..=11).collect::<Vec<u64>>());
    server.stop().await;
}

#[tokio::test]
async fn a_compacted_resume_point_is_out_of_range_naming_the_oldest_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path()).await;
    for i in 0..5 {
        server
            .post_ok(webhook(
                "debt",
                "k",
                [
                    "waiting_signature",
                    "signed",
                    "disbursed",
                    "opened",
                    "settled",
                ][i],
                &format!("2024-01-0{} 10:00:00", i + 1),
            ))
            .await;
    }
    server.stop().await;

    // Zero retention: the restart compacts the whole log.
    let mut settings = Settings::new(dir.path());
    settings.log_retention = Duration::ZERO;
    let server = TestServer::start_with(settings).await;
    let mut grpc = server.grpc().await;
    let request = |after: u64| pb::WatchOperationRequest {
        start_after_sequence: Some(after),
        ..Default::default()
    };
    let err = grpc.watch_operation(request(2)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message()
            .contains("oldest sequence still available is 6"),
        "{}",
        err.message()
    );
    let mut stream = grpc.watch_operation(request(5)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::watch_operation_response::Event::Progress(progress)) = first.event else {
        panic!("the stream starts with a progress: {first:?}");
    };
    assert_eq!(progress.sequence, 5);
    assert_eq!(progress.store_id.len(), 32, "{progress:?}");

    // A resume point past the head: saved against another store, or made up.
    let err = grpc.watch_operation(request(1_000_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message()
            .contains("past the head of this store's log (5)"),
        "{}",
        err.message()
    );
    let err = grpc
        .watch_operation(pb::WatchOperationRequest {
            start_after_sequence: Some(u64::MAX),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    // The same sequence with the store it was seen on is accepted; with another store, it is
    // refused rather than read as other changes.
    let with_store = |store_id: &str| pb::WatchOperationRequest {
        start_after_sequence: Some(5),
        store_id: store_id.into(),
        ..Default::default()
    };
    assert!(
        grpc.watch_operation(with_store(&progress.store_id))
            .await
            .is_ok()
    );
    let err = grpc
        .watch_operation(with_store("00000000000000000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains(&progress.store_id),
        "{}",
        err.message()
    );

    // The operation and the summary of its history are kept; the raw data is gone.
    let op = server.get("k", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), op.history.len()), ("settled", 5));
    assert!(
        op.history
            .iter()
            .all(|h| h.data.is_none() && !h.status.is_empty())
    );
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_key_watch_can_start_with_the_current_state() {
    let server = TestServer::start().await;
    server
        .post_ok(webhook(
            "debt",
            "k",
            "waiting_signature",
            "2024-01-01 10:00:00",
        ))
        .await;
    server
        .post_ok(webhook(
            "debt",
            "other",
            "waiting_signature",
            "2024-01-01 10:00:00",
        ))
        .await;
    let client = server.client().await;
    let mut stream = Box::pin(client.watch(WatchQuery {
        key: Some("k".into()),
        send_initial_state: true,
        ..WatchQuery::default()
    }));
    let WatchEvent::Change(initial) = stream.next().await.unwrap().unwrap() else {
        panic!("initial state first")
    };
    assert!(initial.initial);
    assert_eq!(initial.sequence, 1);
    assert_eq!(initial.operation.unwrap().status, "waiting_signature");
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Progress(2)
    );

    server
        .post_ok(webhook("debt", "other", "disbursed", "2024-01-02 10:00:00"))
        .await;
    server
        .post_ok(webhook("debt", "k", "disbursed", "2024-01-02 10:00:00"))
        .await;
    let changes = collect_until(&mut stream, 4).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].previous_status, "waiting_signature");
    assert_eq!(changes[0].operation.as_ref().unwrap().status, "disbursed");

    // Initial state needs a key.
    let err = server
        .grpc()
        .await
        .watch_operation(pb::WatchOperationRequest {
            send_initial_state: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn idle_watchers_get_progress_and_shutdown_ends_streams_with_unavailable() {
    let server =
        TestServer::start_configured(|s| s.feed.progress_interval = Duration::from_millis(100))
            .await;
    server
        .post_ok(webhook("debt", "k", "disbursed", "2024-01-01 10:00:00"))
        .await;
    let mut grpc = server.grpc().await;
    let mut stream = grpc
        .watch_operation(pb::WatchOperationRequest {
            kinds: vec!["scr".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut progress = BTreeSet::new();
    for _ in 0..3 {
        match stream.message().await.unwrap().unwrap().event {
            Some(pb::watch_operation_response::Event::Progress(p)) => progress.insert(p.sequence),
            other => panic!("expected progress, got {other:?}"),
        };
    }
    assert_eq!(progress, BTreeSet::from([1]));

    let stopping = tokio::spawn(server.stop());
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
}

#[tokio::test]
async fn malformed_filters_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut grpc = server.grpc().await;
    for request in [
        pb::WatchOperationRequest {
            phases: vec![0],
            ..Default::default()
        },
        pb::WatchOperationRequest {
            phases: vec![99],
            ..Default::default()
        },
        pb::WatchOperationRequest {
            statuses: vec!["".into()],
            ..Default::default()
        },
        pb::WatchOperationRequest {
            kinds: vec!["x".into(); 65],
            ..Default::default()
        },
    ] {
        let err = grpc.watch_operation(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_resuming_on_a_wiped_store_is_told_instead_of_skipping_changes() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = TestServer::start_in(first_dir.path()).await;
    let (http, grpc) = (server.http, server.grpc);
    for i in 0..3 {
        server
            .post_ok(webhook(
                "debt",
                &format!("k{i}"),
                "disbursed",
                "2024-01-01 10:00:00",
            ))
            .await;
    }
    let client = server.client().await;
    let events = client.watch(WatchQuery {
        start_after_sequence: Some(0),
        ..Default::default()
    });
    tokio::pin!(events);
    let mut last = 0;
    while last < 3 {
        if let WatchEvent::Change(change) = events.next().await.unwrap().unwrap() {
            last = change.sequence;
        }
    }
    server.stop().await;

    // The same addresses, another data directory: sequence 3 there would mean other changes.
    let wiped = TestServer::start_at(Settings::new(second_dir.path()), http, grpc).await;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.next().await {
                Some(Ok(WatchEvent::Reconnecting { .. } | WatchEvent::Progress(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("the watcher learns about the other store");
    let err = outcome.expect("an answer").unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(
        err.to_string()
            .contains("not the one the resume point was saved against"),
        "{err}"
    );
    wiped.stop().await;
}

#[tokio::test]
async fn a_milestone_watch_tells_each_milestone_once_whatever_the_order() {
    // Frequent progress, so the watch can tell when it has seen everything posted.
    let server = TestServer::start_configured(|s| {
        s.feed.progress_interval = Duration::from_millis(100);
    })
    .await;
    let client = server.client().await;
    let events = client.watch(WatchQuery {
        kinds: vec!["debt".into()],
        milestones: vec!["disbursed".into(), "canceled".into()],
        start_after_sequence: Some(0),
        ..Default::default()
    });
    tokio::pin!(events);
    let deliveries = [
        // Opened first, disbursed late, then settled: disbursed is reached once, by `opened`.
        ("a", "opened", "2024-01-03 10:00:00"),
        ("a", "disbursed", "2024-01-02 10:00:00"),
        ("a", "settled", "2024-02-01 10:00:00"),
        // Never disbursed, canceled: only `canceled`.
        ("b", "waiting_signature", "2024-01-01 10:00:00"),
        ("b", "canceled", "2024-01-02 10:00:00"),
        // Settled with no disbursement webhook at all: it was disbursed.
        ("c", "settled", "2024-03-01 10:00:00"),
        // Pending: nothing.
        ("d", "signed", "2024-01-01 10:00:00"),
    ];
    let mut last = 0;
    for (key, status, at) in deliveries {
        last = server.post_ok(webhook("debt", key, status, at)).await;
    }
    let changes = collect_until(&mut events, last).await;
    let told: Vec<(String, Vec<String>)> = changes
        .iter()
        .map(|c| {
            (
                c.operation.as_ref().unwrap().key.clone(),
                c.milestones_reached.clone(),
            )
        })
        .collect();
    let told: Vec<(&str, Vec<&str>)> = told
        .iter()
        .map(|(k, m)| (k.as_str(), m.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        told,
        [
            ("a", vec!["disbursed"]),
            ("b", vec!["canceled"]),
            ("c", vec!["disbursed", "settled"]),
        ]
    );
    // The operation says when each milestone was reached: the earliest event time.
    let a = server.get("a", "debt").await.unwrap();
    let milestones: Vec<(String, String)> = a
        .milestones
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                crate::test_server::rfc3339(m.reached_at.as_ref()),
            )
        })
        .collect();
    assert_eq!(
        milestones,
        [
            ("disbursed".to_owned(), "2024-01-02T13:00:00Z".to_owned()),
            ("settled".to_owned(), "2024-02-01T13:00:00Z".to_owned()),
        ]
    );
    server.stop().await;
}
