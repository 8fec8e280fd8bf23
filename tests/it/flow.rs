//! The flow (#37): stage durations, delivery lag and cohorts, asked over gRPC and with
//! `qistatus flow`, on a server whose clock the test drives (each webhook is received at a
//! time the test chose), checked against figures computed by hand here; then again after a
//! late, out-of-order webhook, and after a restart.

use std::time::Duration;

use qistatus::{ManualClock, pb};

use crate::test_server::{TestServer, webhook};

/// 2024-03-10 10:00 UTC: the debts' first webhooks.
const T0: i64 = 1_710_064_800_000;
const MINUTE: i64 = 60_000;

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn seconds(d: Option<&prost_types::Duration>) -> f64 {
    let d = d.expect("a duration");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// Whether `got` (s) is within the flow's bucket error (9.1 %) of `truth` (s).
fn close(got: f64, truth: f64) -> bool {
    (got / truth - 1.0).abs() <= 0.091
}

async fn flow_of(server: &TestServer) -> pb::GetFlowResponse {
    server
        .client()
        .await
        .flow("debt", None, None)
        .await
        .expect("GetFlow")
}

fn stage<'a>(flow: &'a pb::GetFlowResponse, from: &str, to: &str) -> &'a pb::StageFlow {
    flow.stages
        .iter()
        .find(|s| !s.milestone && s.from_status == from && s.to_status == to)
        .unwrap_or_else(|| panic!("no stage {from} -> {to} in {:?}", flow.stages))
}

#[tokio::test]
async fn the_flow_is_the_hand_computed_one_after_a_late_webhook_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_millis(T0);
    let settings = || {
        let mut settings = qistatus::Settings::new(dir.path().join("data"));
        settings.clock = clock.clock();
        settings
    };
    let server = TestServer::start_with(settings()).await;
    // Ten debts created at 10:00, each received 1 minute after; disbursed (i + 1) × 6
    // minutes later, received 3 minutes after that. One more, created at 10:00 and canceled
    // at 10:30, both received at 11:03.
    set_clock(&clock, T0 + MINUTE);
    for i in 0..10 {
        server
            .post_ok(webhook(
                "debt",
                &format!("d-{i}"),
                "waiting_signature",
                &at(T0),
            ))
            .await;
    }
    for i in 0..10 {
        let disbursed_at = T0 + (i + 1) * 6 * MINUTE;
        set_clock(&clock, disbursed_at + 3 * MINUTE);
        server
            .post_ok(webhook(
                "debt",
                &format!("d-{i}"),
                "disbursed",
                &at(disbursed_at),
            ))
            .await;
    }
    set_clock(&clock, T0 + 63 * MINUTE);
    server
        .post_ok(webhook("debt", "d-canceled", "waiting_signature", &at(T0)))
        .await;
    server
        .post_ok(webhook(
            "debt",
            "d-canceled",
            "canceled",
            &at(T0 + 30 * MINUTE),
        ))
        .await;

    let flow = flow_of(&server).await;
    assert_eq!(flow.kind, "debt");
    // The window: the week up to the clock's day, in whole UTC days.
    let since = flow.since.as_ref().unwrap().seconds * 1000;
    let until = flow.until.as_ref().unwrap().seconds * 1000;
    assert_eq!(until - since, 7 * 86_400_000);
    assert!(since <= T0 && T0 < until);

    // Creation to disbursement: 6, 12, ... 60 minutes. Nearest rank: the median is the 5th
    // (30 min), p90 the 9th (54 min), p99 the 10th (60 min).
    let disbursing = stage(&flow, "waiting_signature", "disbursed");
    let total = disbursing.total.as_ref().unwrap();
    assert_eq!(total.count, 10);
    for (got, minutes) in [(&total.p50, 30.0), (&total.p90, 54.0), (&total.p99, 60.0)] {
        let got = seconds(got.as_ref());
        assert!(close(got, minutes * 60.0), "{got} s for {minutes} min");
    }
    assert_eq!(disbursing.by_day.len(), 1);
    let canceling = stage(&flow, "waiting_signature", "canceled");
    assert_eq!(canceling.total.as_ref().unwrap().count, 1);
    // The milestone reached: disbursed, from the first status, the same durations.
    let milestone = flow
        .stages
        .iter()
        .find(|s| s.milestone && s.to_status == "disbursed")
        .expect("the disbursed milestone");
    assert_eq!(milestone.total.as_ref().unwrap().count, 10);

    // Lags: ten creations 1 min late, ten disbursements 3 min late, the canceled debt's
    // two 63 and 33 min late: 22 lags, the median (11th) 3 min, p99 (22nd) 63 min.
    let lag = flow.delivery_lag.as_ref().expect("a lag");
    assert_eq!(lag.count, 22);
    assert!(close(seconds(lag.p50.as_ref()), 180.0), "{lag:?}");
    assert!(close(seconds(lag.p99.as_ref()), 63.0 * 60.0), "{lag:?}");

    // The day's cohort: ten active, one failed, stopped at waiting_signature.
    assert_eq!(flow.cohorts.len(), 1);
    let cohort = &flow.cohorts[0];
    let phases: Vec<(i32, u64)> = cohort
        .phases
        .iter()
        .map(|p| (p.phase, p.operations))
        .collect();
    assert_eq!(
        phases,
        [
            (pb::Phase::Active as i32, 10),
            (pb::Phase::Failed as i32, 1)
        ]
    );
    assert_eq!(cohort.stopped_at.len(), 1);
    assert_eq!(
        (
            cohort.stopped_at[0].status.as_str(),
            cohort.stopped_at[0].operations
        ),
        ("waiting_signature", 1)
    );

    // A late, out-of-order webhook: d-9 was signed at 10:20, between its creation and its
    // disbursement at 11:00, and QI sends it last. Its stage splits in two.
    set_clock(&clock, T0 + 5 * 60 * MINUTE);
    server
        .post_ok(webhook("debt", "d-9", "signed", &at(T0 + 20 * MINUTE)))
        .await;
    let flow = flow_of(&server).await;
    let total = stage(&flow, "waiting_signature", "disbursed")
        .total
        .unwrap();
    assert_eq!(total.count, 9, "the split stage is no longer counted");
    assert!(close(seconds(total.p99.as_ref()), 54.0 * 60.0));
    let signing = stage(&flow, "waiting_signature", "signed").total.unwrap();
    assert_eq!(signing.count, 1);
    assert!(close(seconds(signing.p50.as_ref()), 20.0 * 60.0));
    let after = stage(&flow, "signed", "disbursed").total.unwrap();
    assert!(close(seconds(after.p50.as_ref()), 40.0 * 60.0));
    assert_eq!(flow.delivery_lag.as_ref().unwrap().count, 23);

    // The CLI says the same, as a table and as JSON.
    let url = format!("http://{}", server.grpc);
    let out = crate::cli::cli(&["--server", &url, "flow", "debt"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    eprintln!("{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("waiting_signature -> disbursed")
                && l.split_whitespace().nth(3) == Some("9")),
        "{text}"
    );
    assert!(
        text.contains("delivery lag (receipt - event time) of 23 webhooks"),
        "{text}"
    );
    let out = crate::cli::cli(&["--server", &url, "--json", "flow", "debt"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["cohorts"][0]["phases"]["active"], 10);
    assert_eq!(json["cohorts"][0]["stopped_at"]["waiting_signature"], 1);
    assert_eq!(json["delivery_lag"]["count"], 23);

    // A restart: the same answer, read from what is stored.
    server.stop().await;
    let server = TestServer::start_with(settings()).await;
    assert_eq!(flow_of(&server).await, flow);

    // A window the server refuses, with a message that names the problem.
    let mut client = server.client().await;
    let err = client
        .flow("debt", Some(T0), Some(T0 - 3 * 86_400_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("before it starts"), "{err}");
    let err = client.flow("", None, None).await.unwrap_err();
    assert!(err.to_string().contains("kind is required"), "{err}");
    server.stop().await;
}

/// Moves `clock` to `millis` (forward only: the test's times only grow).
fn set_clock(clock: &ManualClock, millis: i64) {
    let by = millis - clock.now_millis();
    assert!(by >= 0, "the clock only moves forward");
    clock.advance(Duration::from_millis(by as u64));
}

/// `--no-flow`: no counters are kept and GetFlow says why; a start with the flow on counts
/// it from the stored operations, and again after another run without it (cleared first,
/// never counted twice). This is also how a store written before the flow existed is
/// counted: at its first start.
#[tokio::test]
async fn a_server_without_the_flow_says_so_and_a_start_with_it_counts_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let start = |flow: bool| {
        let mut settings = qistatus::Settings::new(dir.path().join("data"));
        settings.flow = flow;
        TestServer::start_with(settings)
    };
    let server = start(false).await;
    post_debt(&server, "n-1").await;
    post_debt(&server, "n-2").await;
    let err = server
        .client()
        .await
        .flow("debt", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert!(err.to_string().contains("--no-flow"), "{err}");
    server.stop().await;

    let server = start(true).await;
    assert_eq!(disbursed(&server).await, 2, "counted from what is stored");
    server.stop().await;

    let server = start(false).await;
    post_debt(&server, "n-3").await;
    server.stop().await;
    let server = start(true).await;
    assert_eq!(disbursed(&server).await, 3, "counted again, not added to");
    post_debt(&server, "n-4").await;
    assert_eq!(disbursed(&server).await, 4, "kept from then on");
    server.stop().await;
}

/// A debt created at `T0` and disbursed 10 minutes later.
async fn post_debt(server: &TestServer, key: &str) {
    server
        .post_ok(webhook("debt", key, "waiting_signature", &at(T0)))
        .await;
    server
        .post_ok(webhook("debt", key, "disbursed", &at(T0 + 10 * MINUTE)))
        .await;
}

/// How many `waiting_signature → disbursed` stages ended on `T0`'s day.
async fn disbursed(server: &TestServer) -> u64 {
    let flow = server
        .client()
        .await
        .flow("debt", Some(T0), Some(T0))
        .await
        .expect("GetFlow");
    stage(&flow, "waiting_signature", "disbursed")
        .total
        .unwrap()
        .count
}
