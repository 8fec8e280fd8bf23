//! Webhooks arrive duplicated and in any order: the answer must not depend on it.

use crate::test_server::{TestServer, fixture, phase, webhook};

const FLOW_000: &[&str] = &[
    "000_debt_1_waiting_signature.json",
    "000_debt_2_waiting_balance_block.json",
    "000_debt_3_waiting_disbursement.json",
    "000_debt_4_waiting_assignment_term_signature.json",
    "000_debt_5_waiting_balance_release.json",
    "000_debt_6_debt_successfully_finished.json",
];

/// Posts `names` in order, then reads the debt back.
async fn deliver(names: &[&str], key: &str) -> qistatus::pb::Operation {
    let server = TestServer::start().await;
    for name in names {
        server.post_ok(fixture(name)).await;
    }
    let op = server.get(key, "debt").await.unwrap();
    server.stop().await;
    op
}

#[tokio::test]
async fn reverse_order_and_duplicates_give_the_same_operation() {
    let key = "5f0c2a8e-6d1b-4c3e-9a7f-000000000001";
    let in_order = deliver(FLOW_000, key).await;

    let mut reversed_twice: Vec<&str> = FLOW_000.iter().rev().copied().collect();
    reversed_twice.extend(FLOW_000.iter().rev());
    let shuffled = deliver(&reversed_twice, key).await;

    for op in [&in_order, &shuffled] {
        assert_eq!(op.status, "debt_successfully_finished");
        assert_eq!(phase(op), "active", "the issuance ended; the loan is live");
        assert_eq!(op.event_count, 6, "one history entry per distinct webhook");
        assert_eq!(op.version, 6);
    }
    let statuses = |op: &qistatus::pb::Operation| -> Vec<String> {
        op.history.iter().map(|h| h.status.clone()).collect()
    };
    // The history is ordered by the webhooks themselves, not by arrival.
    assert_eq!(statuses(&in_order), statuses(&shuffled));
    assert_eq!(in_order.detail, shuffled.detail);
}

#[tokio::test]
async fn every_prefix_of_the_flow_in_reverse_shows_the_most_advanced_stage() {
    let key = "5f0c2a8e-6d1b-4c3e-9a7f-000000000001";
    for n in 1..=FLOW_000.len() {
        let mut subset: Vec<&str> = FLOW_000[..n].to_vec();
        subset.reverse();
        let op = deliver(&subset, key).await;
        let expected = FLOW_000[n - 1]
            .trim_start_matches("000_debt_")
            .trim_end_matches(".json")
            .split_once('_')
            .unwrap()
            .1;
        assert_eq!(op.status, expected, "after delivering {subset:?}");
    }
}

#[tokio::test]
async fn a_late_creation_webhook_does_not_undo_a_disbursement() {
    let key = "871059bd-4014-41ad-82b4-28275ff0e67b";
    for order in [
        [
            "004_debt_created_waiting_signature.json",
            "004_debt_disbursed.json",
        ],
        [
            "004_debt_disbursed.json",
            "004_debt_created_waiting_signature.json",
        ],
    ] {
        let op = deliver(&order, key).await;
        assert_eq!(op.status, "disbursed", "{order:?}");
        assert_eq!(op.event_count, 2);
    }
}

#[tokio::test]
async fn the_same_json_with_other_whitespace_or_key_order_is_a_duplicate() {
    let server = TestServer::start().await;
    let original = fixture("004_debt_canceled.json");
    let first = server.post_ok(original.clone()).await;

    let value: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let compact = serde_json::to_vec(&value).unwrap();
    let reordered = br#"{"status":"canceled ","data":{"cancel_reason_enumerator":"manual","cancel_reason":"Operacao cancelada manualmente"},"event_datetime":"2022-09-27 07:03:49","key":"27a099df-4688-43cb-87fa-515b1cf343a5","webhook_type":"debt"}"#.to_vec();
    for body in [original.clone(), compact, reordered] {
        let (code, answer) = server.post(body).await;
        assert_eq!(code, 200);
        assert_eq!(answer["result"], "duplicate");
        assert_eq!(answer["sequence"], first);
    }
    let op = server
        .get("27a099df-4688-43cb-87fa-515b1cf343a5", "")
        .await
        .unwrap();
    assert_eq!(op.event_count, 1);
    assert_eq!(op.version, 1);

    // A different value for the same operation is a new webhook.
    let (code, answer) = server
        .post(webhook(
            "debt",
            "27a099df-4688-43cb-87fa-515b1cf343a5",
            "canceled_permanently",
            "2022-09-26 00:00:00",
        ))
        .await;
    assert_eq!((code, answer["result"].as_str()), (200, Some("accepted")));
    let op = server
        .get("27a099df-4688-43cb-87fa-515b1cf343a5", "")
        .await
        .unwrap();
    assert_eq!(
        op.status, "canceled_permanently",
        "supersedes canceled despite its earlier time"
    );
    assert_eq!(op.event_count, 2);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_sequences() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for sender in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for i in 0..25 {
                let key = format!("op-{sender}-{i}");
                sequences.push(
                    server
                        .post_ok(webhook(
                            "debt",
                            &key,
                            "waiting_signature",
                            "2024-01-01 10:00:00",
                        ))
                        .await,
                );
            }
            sequences
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let server = std::sync::Arc::into_inner(server).expect("no other owner");
    server.stop().await;
}

#[tokio::test]
async fn end_statuses_at_the_same_moment_are_marked_as_a_conflict_in_any_order() {
    for order in [["settled", "canceled"], ["canceled", "settled"]] {
        let server = TestServer::start().await;
        for status in order {
            server
                .post_ok(webhook("debt", "both", status, "2024-01-01 10:00:00"))
                .await;
        }
        let op = server.get("both", "debt").await.unwrap();
        assert_eq!(
            op.status, "canceled",
            "{order:?}: the catalog's end_precedence"
        );
        assert_eq!(
            op.conflicting_statuses,
            ["canceled", "settled"],
            "{order:?}"
        );
        let out = tokio::process::Command::new(crate::process::CLI_BIN)
            .args([
                "--server",
                &format!("http://{}", server.grpc),
                "get",
                "both",
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("conflict    canceled, settled at the same event time"),
            "{text}"
        );
        server.stop().await;
    }
}

/// A `settled` dated 2099 cannot pin the debt: an event time later than its receipt by more
/// than the catalog believes is ordered at its receive time, flagged in the history and
/// counted; its given time is still shown. The genuine webhooks that follow it win.
#[tokio::test]
async fn a_date_far_in_the_future_cannot_pin_a_status() {
    let server = TestServer::start().await;
    // QI's naive times are São Paulo's (UTC-3).
    let in_a_minute = |minutes: i64| {
        (chrono::Utc::now() - chrono::Duration::hours(3) + chrono::Duration::minutes(minutes))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    for (status, time) in [
        ("settled", "2099-01-01 10:00:00".to_owned()),
        ("canceled", in_a_minute(1)),
        ("canceled_permanently", in_a_minute(2)),
    ] {
        server
            .post_ok(webhook("debt", "future-1", status, &time))
            .await;
    }
    let op = server.get("future-1", "debt").await.unwrap();
    assert_eq!(op.status, "canceled_permanently");
    assert!(
        op.conflicting_statuses.is_empty(),
        "{:?}",
        op.conflicting_statuses
    );
    let ahead: Vec<(&str, bool)> = op
        .history
        .iter()
        .map(|e| (e.status.as_str(), e.event_time_ahead))
        .collect();
    assert!(ahead.contains(&("settled", true)), "{ahead:?}");
    assert!(ahead.contains(&("canceled", false)), "{ahead:?}");
    let settled = op.history.iter().find(|e| e.status == "settled").unwrap();
    assert_eq!(
        settled.event_time.as_ref().map(|t| t.seconds),
        Some(4_070_955_600),
        "the given time is still shown (2099-01-01 10:00 at -03:00)"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("qistatus_event_times_ahead_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// QI's "never", `9999-12-31 23:59:59` at São Paulo, is 10000-01-01T02:59:59Z: past what a
/// protobuf Timestamp or RFC 3339 can hold. It is shown as the last day of 9999, as QI wrote
/// it, by the API, the CLI (human and `--json`) and the console; it is ordered like any time
/// far ahead (at its receive time).
#[tokio::test]
async fn qi_s_year_9999_is_shown_as_given() {
    let server = TestServer::start().await;
    server
        .post_ok(webhook(
            "debt",
            "never-1",
            "waiting_signature",
            "9999-12-31 23:59:59",
        ))
        .await;
    let op = server.get("never-1", "debt").await.unwrap();
    let time = op.history[0].event_time.unwrap();
    assert_eq!(
        (time.seconds, time.nanos),
        (253_402_300_799, 999_000_000),
        "within a Timestamp's range"
    );
    assert_eq!(
        qistatus::client::rfc3339(op.event_time.as_ref()),
        "9999-12-31T23:59:59.999Z"
    );
    let page = server.admin_page("/ui/operations/never-1?kind=debt").await;
    assert!(page.contains("9999-12-31 23:59:59 UTC"), "{page}");
    assert!(!page.contains("10000-"), "{page}");
    server.stop().await;
}
