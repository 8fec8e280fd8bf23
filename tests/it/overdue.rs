//! Overdue operations (#25): a status held longer than the catalog expects is an answer of
//! `GetOperation`, `ListByStatus` (`overdue`), the CLI and the metrics. The in-process
//! servers run on a [`ManualClock`]: "three seconds later" is the clock advanced three
//! seconds, and what the overdue clock records then is read up to the feed's head, never
//! waited for with a quiet period. The crash tests run the real binary, on the system's
//! clock.

use std::time::Duration;

use crate::test_server::{TestServer, webhook};
use qistatus::{ManualClock, pb};

/// `ago` before `now` (ms since the epoch), as QI writes a time.
fn rfc3339_before(now: i64, ago: chrono::Duration) -> String {
    let now = chrono::DateTime::from_timestamp_millis(now).expect("a time within chrono's range");
    (now - ago).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `ago` before the system's time: for the server processes, which run on it.
fn rfc3339_ago(ago: chrono::Duration) -> String {
    rfc3339_before(chrono::Utc::now().timestamp_millis(), ago)
}

/// A server on a manual clock, with `text` as its catalog file.
async fn start_with_catalog(text: &str) -> (TestServer, ManualClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.toml"), text).unwrap();
    let clock = ManualClock::starting_now();
    let server = TestServer::start_with(settings_in(dir.path(), &clock)).await;
    (server, clock, dir)
}

/// Settings on `dir/data`, with the catalog file `dir/catalog.toml` (loaded, and
/// reloadable), on `clock`.
fn settings_in(dir: &std::path::Path, clock: &ManualClock) -> qistatus::Settings {
    let catalog_file = dir.join("catalog.toml");
    let mut settings = qistatus::Settings::new(dir.join("data"));
    settings.catalog = qistatus::load_catalog(Some(&catalog_file)).unwrap();
    settings.catalog_file = Some(catalog_file);
    settings.clock = clock.clock();
    settings
}

async fn list_overdue(
    server: &TestServer,
    page_size: u32,
    token: &str,
) -> pb::ListByStatusResponse {
    server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            overdue: true,
            page_size,
            page_token: token.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Whether `GetOperation` says debt `key` of `server` is overdue.
async fn is_overdue(server: &TestServer, key: &str) -> bool {
    server.get(key, "debt").await.unwrap().overdue.is_some()
}

fn keys(response: &pb::ListByStatusResponse) -> Vec<&str> {
    response.operations.iter().map(|o| o.key.as_str()).collect()
}

async fn cli(server: &TestServer, args: &[&str]) -> String {
    let out = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &format!("http://{}", server.grpc)])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn an_operation_that_does_not_move_becomes_overdue_until_it_changes() {
    let (server, clock, _dir) = start_with_catalog(
        "[kinds.debt.expect]\nwaiting_signature = \"3s\"\nwaiting_disbursement = \"1h\"\n",
    )
    .await;
    let rfc3339_ago = |ago| rfc3339_before(clock.now_millis(), ago);
    // Reached `waiting_signature` ten days ago by QI's account (the webhook came late): it
    // has been held that long, so it is overdue at once.
    let ten_days_ago = rfc3339_ago(chrono::Duration::days(10));
    server
        .post_ok(webhook("debt", "old-1", "waiting_signature", &ten_days_ago))
        .await;
    let now = rfc3339_ago(chrono::Duration::zero());
    server
        .post_ok(webhook("debt", "late-1", "waiting_signature", &now))
        .await;
    server
        .post_ok(webhook("debt", "fresh-1", "waiting_disbursement", &now))
        .await;
    // An operation whose status has no expectation, and one that ended, are never overdue.
    server
        .post_ok(webhook(
            "debt",
            "done-1",
            "waiting_signature",
            &ten_days_ago,
        ))
        .await;
    server
        .post_ok(webhook("debt", "done-1", "canceled", &ten_days_ago))
        .await;

    let old = server.get("old-1", "debt").await.unwrap();
    let late = old.overdue.as_ref().expect("overdue at once");
    assert_eq!(late.status, "waiting_signature");
    assert_eq!(
        late.expected_within,
        Some(prost_types::Duration {
            seconds: 3,
            nanos: 0
        })
    );
    let since = late.since.unwrap();
    let given = chrono::DateTime::parse_from_rfc3339(&ten_days_ago).unwrap();
    assert_eq!(
        since.seconds,
        given.timestamp(),
        "since QI says it was reached"
    );
    assert_eq!(late.due.unwrap().seconds, since.seconds + 3);
    assert!(!is_overdue(&server, "late-1").await);
    assert!(!is_overdue(&server, "fresh-1").await);
    assert!(!is_overdue(&server, "done-1").await);
    assert_eq!(keys(&list_overdue(&server, 0, "").await), ["old-1"]);

    // Not a millisecond early: 2.999 s on, the fresh one is not overdue yet...
    clock.advance(Duration::from_millis(2_999));
    assert!(!is_overdue(&server, "late-1").await);
    assert_eq!(keys(&list_overdue(&server, 0, "").await), ["old-1"]);
    // ...three seconds on, it is, after the older one.
    clock.advance(Duration::from_millis(1));
    assert!(is_overdue(&server, "late-1").await);
    assert_eq!(
        keys(&list_overdue(&server, 0, "").await),
        ["old-1", "late-1"]
    );
    // Page by page, most overdue first.
    let first = list_overdue(&server, 1, "").await;
    assert_eq!(keys(&first), ["old-1"]);
    assert!(!first.next_page_token.is_empty());
    let second = list_overdue(&server, 1, &first.next_page_token).await;
    assert_eq!(keys(&second), ["late-1"]);
    assert!(second.next_page_token.is_empty());
    // A token of an overdue list is not a token of another list.
    let other = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["waiting_signature".into()],
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::InvalidArgument);
    // An overdue list narrowed by a phase is refused, by name.
    let phase = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            overdue: true,
            phase: pb::Phase::Pending as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(phase.code(), tonic::Code::InvalidArgument);
    assert!(phase.message().contains("phase"), "{}", phase.message());
    // A plain list by status says which are overdue too.
    let listed = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["waiting_signature".into(), "waiting_disbursement".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let marked: Vec<(&str, bool)> = listed
        .operations
        .iter()
        .map(|o| (o.key.as_str(), o.overdue.is_some()))
        .collect();
    assert_eq!(
        marked,
        [("fresh-1", false), ("late-1", true), ("old-1", true)]
    );

    // The CLI says it plainly, and as JSON.
    let human = cli(&server, &["get", "old-1"]).await;
    assert!(
        human.contains("OVERDUE     waiting_signature since"),
        "{human}"
    );
    assert!(human.contains("expected to move within 3s"), "{human}");
    let json: serde_json::Value =
        serde_json::from_str(&cli(&server, &["--json", "get", "old-1"]).await).unwrap();
    assert_eq!(json["overdue"]["status"], "waiting_signature");
    assert_eq!(json["overdue"]["expected_within"], "3s");
    assert!(
        json["overdue"]["since"]
            .as_str()
            .unwrap()
            .starts_with(&ten_days_ago[..10])
    );
    let listed = cli(&server, &["list", "--overdue", "--kind", "debt"]).await;
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(
        rows[0].contains("old-1") && rows[1].contains("late-1"),
        "{listed}"
    );

    // `qistatus stats` counts them.
    let stats: serde_json::Value =
        serde_json::from_str(&cli(&server, &["--json", "stats"]).await).unwrap();
    assert_eq!(
        stats["overdue"],
        serde_json::json!([
            {"kind": "debt", "status": "waiting_disbursement", "operations": 0},
            {"kind": "debt", "status": "waiting_signature", "operations": 2},
        ])
    );
    let human = cli(&server, &["stats"]).await;
    assert!(
        human.contains("2 debt overdue in waiting_signature"),
        "{human}"
    );

    // The console's Overdue page, most overdue first, each linked to its operation.
    let page = reqwest::get(format!("http://{}/ui/overdue?kind=debt", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (old_at, late_at) = (page.find("old-1").unwrap(), page.find("late-1").unwrap());
    assert!(old_at < late_at, "{page}");
    assert!(page.contains("/ui/operations/old-1"), "{page}");
    assert!(!page.contains("fresh-1"), "{page}");

    // The metric counts them by kind and status.
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"qistatus_overdue_operations{kind="debt",status="waiting_signature"} 2"#),
        "{metrics}"
    );

    // A change clears it: the next status has its own clock.
    server
        .post_ok(webhook("debt", "late-1", "waiting_balance_block", &now))
        .await;
    assert!(!is_overdue(&server, "late-1").await);
    assert_eq!(keys(&list_overdue(&server, 0, "").await), ["old-1"]);
    // A resend of the old status from before does not bring it back either: a stage never
    // moves an operation back.
    server
        .post_ok(webhook(
            "debt",
            "late-1",
            "waiting_signature",
            &ten_days_ago,
        ))
        .await;
    assert!(!is_overdue(&server, "late-1").await);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_that_shortens_an_expectation_makes_operations_overdue_at_once_and_a_restart_keeps_them()
 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[kinds.debt.expect]\nwaiting_disbursement = \"1h\"\n",
    )
    .unwrap();
    let clock = ManualClock::starting_now();
    let slow_tick = |dir: &std::path::Path| {
        let mut settings = settings_in(dir, &clock);
        settings.overdue_tick = Duration::from_secs(4);
        settings
    };
    let server = TestServer::start_with(slow_tick(dir.path())).await;
    let two_minutes_ago = rfc3339_before(clock.now_millis(), chrono::Duration::minutes(2));
    server
        .post_ok(webhook(
            "debt",
            "d-1",
            "waiting_disbursement",
            &two_minutes_ago,
        ))
        .await;
    assert!(server.get("d-1", "debt").await.unwrap().overdue.is_none());
    assert!(keys(&list_overdue(&server, 0, "").await).is_empty());
    // Six hundred waiting for a signature since 2024, which nothing expects yet.
    server.post_debts("s-", 0..600, "waiting_signature").await;

    std::fs::write(
        dir.path().join("catalog.toml"),
        "[kinds.debt.expect]\nwaiting_disbursement = \"1m\"\nwaiting_signature = \"1d\"\n",
    )
    .unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{}/catalog/reload", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{:?}",
        response.text().await
    );
    let op = server.get("d-1", "debt").await.unwrap();
    assert_eq!(
        op.overdue.map(|o| o.expected_within.unwrap().seconds),
        Some(60)
    );
    let listed = list_overdue(&server, 1000, "").await;
    assert_eq!(listed.operations.len(), 601);
    assert_eq!(
        keys(&listed).last(),
        Some(&"d-1"),
        "the most recent is the least overdue"
    );
    // Their watchers hear each at once, once: the 601 that fell due together are more than
    // a tick's page (256), and the clock goes on reading while its pages are full instead of
    // waiting a tick (4 s here) for each. One tick of the clock, and no more, hears them all.
    clock.advance(Duration::from_secs(4));
    let events = overdue_events_heard(server.grpc, 601).await;
    let mut heard: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    heard.sort_unstable();
    heard.dedup();
    assert_eq!(heard.len(), 601, "{events:?}");
    assert_eq!(overdue_events(server.grpc).await, events, "once each");

    // A restart on the same directory answers the same, and says it once still, however
    // many ticks go by.
    server.stop().await;
    let server = TestServer::start_with(slow_tick(dir.path())).await;
    assert_eq!(list_overdue(&server, 1000, "").await.operations.len(), 601);
    for _ in 0..3 {
        advance_a_tick(&clock, Duration::from_secs(4), server.admin).await;
    }
    assert_eq!(overdue_events(server.grpc).await, events);
    server.stop().await;
}

/// An overdue event as a watcher sees it: (sequence, key, status, the operation's own
/// overdue status).
pub(crate) type OverdueEvent = (u64, String, String, Option<String>);

/// Every overdue event of the feed of the server at `grpc`, read from its start up to its
/// head as `GetStats` says it now.
pub(crate) async fn overdue_events(grpc: std::net::SocketAddr) -> Vec<OverdueEvent> {
    overdue_events_through(grpc, feed_head(grpc).await).await
}

/// The last sequence of the feed of the server at `grpc` (`GetStats`).
pub(crate) async fn feed_head(grpc: std::net::SocketAddr) -> u64 {
    qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .expect("connect")
        .stats()
        .await
        .expect("GetStats")
        .head_sequence
}

/// Every overdue event of the feed of the server at `grpc` from its start through sequence
/// `head` (waiting, within 60 s, for the server to get there).
pub(crate) async fn overdue_events_through(
    grpc: std::net::SocketAddr,
    head: u64,
) -> Vec<OverdueEvent> {
    read_overdue_events(grpc, |_, sequence| sequence >= head).await
}

/// The overdue events of the feed of the server at `grpc`, from its start, once `count` of
/// them were heard (within 60 s): what a watcher from sequence 0 hears.
pub(crate) async fn overdue_events_heard(
    grpc: std::net::SocketAddr,
    count: usize,
) -> Vec<OverdueEvent> {
    read_overdue_events(grpc, |heard, _| heard >= count).await
}

/// Reads the feed from its start, watching every change, until `enough(overdue events heard,
/// the sequence reached)`, at most 60 s; returns the overdue events.
async fn read_overdue_events(
    grpc: std::net::SocketAddr,
    enough: impl Fn(usize, u64) -> bool,
) -> Vec<OverdueEvent> {
    use qistatus::client::{WatchEvent, WatchQuery};
    use tokio_stream::StreamExt;
    let client = qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .expect("connect");
    let events = client.watch(WatchQuery {
        start_after_sequence: Some(0),
        overdue: true,
        ..Default::default()
    });
    tokio::pin!(events);
    let mut seen = Vec::new();
    let mut sequence = 0;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while !enough(seen.len(), sequence) {
            let event = events.next().await.expect("the watch goes on");
            if let WatchEvent::Change(change) = event.expect("no error") {
                sequence = change.sequence;
                if let Some(late) = change.overdue {
                    let op = change.operation.expect("operation");
                    assert_eq!(op.status, late.status, "an event names the status held");
                    seen.push((
                        change.sequence,
                        op.key,
                        late.status,
                        op.overdue.map(|o| o.status),
                    ));
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the feed did not get there within 60 s: {} overdue events up to sequence {sequence}: {seen:?}",
        seen.len()
    );
    seen
}

/// Advances `clock` by `tick` and waits until the overdue clock of the server whose admin
/// listener is `admin` has looked since.
async fn advance_a_tick(clock: &ManualClock, tick: Duration, admin: std::net::SocketAddr) {
    let before = overdue_ticks(admin).await;
    clock.advance(tick);
    ticks_passed(admin, before, 1).await;
}

/// How many times the overdue clock of the server whose admin listener is `admin` looked
/// (`qistatus_overdue_ticks_total`; 0 before its first look).
pub(crate) async fn overdue_ticks(admin: std::net::SocketAddr) -> u64 {
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics' text");
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("qistatus_overdue_ticks_total ")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
}

/// Waits until the overdue clock of the server whose admin listener is `admin` has looked
/// `more` times after `before`.
pub(crate) async fn ticks_passed(admin: std::net::SocketAddr, before: u64, more: u64) {
    crate::wait::wait_until(
        "the overdue clock looks",
        Duration::from_secs(10),
        || async { (overdue_ticks(admin).await >= before + more).then_some(()) },
    )
    .await;
}

/// Posts `count` debts `{prefix}{i}` in `waiting_signature` since `time` to a server process's
/// intake at `http`, one at a time (one log append each), each acknowledged.
async fn post_waiting_signatures(
    http: std::net::SocketAddr,
    prefix: &str,
    count: usize,
    time: &str,
) {
    let client = reqwest::Client::new();
    for i in 0..count {
        let response = client
            .post(format!("http://{http}/webhooks"))
            .body(webhook(
                "debt",
                &format!("{prefix}{i}"),
                "waiting_signature",
                time,
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

fn with_tick(dir: &std::path::Path, clock: &ManualClock) -> qistatus::Settings {
    let mut settings = settings_in(dir, clock);
    settings.overdue_tick = Duration::from_millis(100);
    settings
}

#[tokio::test]
async fn watchers_hear_the_moment_an_operation_becomes_overdue_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[kinds.debt.expect]\nwaiting_signature = \"2s\"\n",
    )
    .unwrap();
    let clock = ManualClock::starting_now();
    let server = TestServer::start_with(with_tick(dir.path(), &clock)).await;
    let rfc3339_ago = |ago| rfc3339_before(clock.now_millis(), ago);
    // Watch status changes and overdue events from now: both, in sequence order.
    let client = server.client().await;
    let watched = client.watch(qistatus::client::WatchQuery {
        overdue: true,
        kinds: vec!["debt".into()],
        ..Default::default()
    });
    let now = rfc3339_ago(chrono::Duration::zero());
    let created = server
        .post_ok(webhook("debt", "w-1", "waiting_signature", &now))
        .await;
    // One that moves on before its two seconds are up is never overdue.
    server
        .post_ok(webhook("debt", "w-2", "waiting_signature", &now))
        .await;
    server
        .post_ok(webhook("debt", "w-2", "canceled", &now))
        .await;
    // One from the past is overdue at once, and heard of at the next tick.
    let old = rfc3339_ago(chrono::Duration::days(3));
    server
        .post_ok(webhook("debt", "w-3", "waiting_signature", &old))
        .await;

    // Two seconds on, w-1 has been waiting too long.
    clock.advance(Duration::from_secs(2));
    tokio::pin!(watched);
    let mut live = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        use tokio_stream::StreamExt;
        while let Some(event) = watched.next().await {
            if let qistatus::client::WatchEvent::Change(change) = event.unwrap() {
                let op = change.operation.clone().unwrap();
                live.push((change.sequence, op.key.clone(), change.overdue.is_some()));
                if change.overdue.is_some() && op.key == "w-1" {
                    return;
                }
            }
        }
    })
    .await
    .expect("w-1's overdue event within 15 s");
    let sequences: Vec<u64> = live.iter().map(|(s, _, _)| *s).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{live:?}");
    let overdue_keys: Vec<&str> = live
        .iter()
        .filter(|(_, _, late)| *late)
        .map(|(_, k, _)| k.as_str())
        .collect();
    assert_eq!(overdue_keys, ["w-3", "w-1"], "{live:?}");
    assert!(
        live[live.len() - 1].0 > created,
        "after the webhook that started it"
    );

    // Exactly once each, and the same when read again from the start of the feed.
    let before = overdue_events(server.grpc).await;
    let keys_before: Vec<&str> = before.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(keys_before, ["w-3", "w-1"], "{before:?}");
    assert!(
        before
            .iter()
            .all(|e| e.2 == "waiting_signature" && e.3.as_deref() == Some("waiting_signature")),
        "{before:?}"
    );

    // The CLI: one JSON line per event, with its overdue object.
    let mut child = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &format!("http://{}", server.grpc)])
        .args(["--json", "watch", "--overdue", "--from-sequence", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut printed = Vec::new();
    while printed.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the CLI prints the events")
            .unwrap()
            .expect("a line");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        if !json["overdue"].is_null() {
            assert_eq!(json["overdue"]["status"], "waiting_signature", "{line}");
            assert_eq!(json["overdue"]["expected_within"], "2s", "{line}");
            printed.push(json["key"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(printed, ["w-3", "w-1"]);
    child.kill().await.unwrap();

    let metrics = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("qistatus_overdue_events_total 2\n"),
        "{metrics}"
    );

    // A restart neither repeats nor loses an event, however many ticks go by.
    server.stop().await;
    let server = TestServer::start_with(with_tick(dir.path(), &clock)).await;
    for _ in 0..3 {
        advance_a_tick(&clock, Duration::from_millis(100), server.admin).await;
    }
    assert_eq!(overdue_events(server.grpc).await, before);

    // A change clears it, and the next status with an expectation has its own event.
    server
        .post_ok(webhook("debt", "w-1", "canceled", &now))
        .await;
    assert!(server.get("w-1", "debt").await.unwrap().overdue.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_overdue_events_reached_the_log_neither_loses_nor_repeats_them() {
    use crate::process::ServerCommand;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        "[kinds.debt.expect]\nwaiting_signature = \"2s\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "--catalog",
        catalog.to_str().unwrap(),
        "--overdue-tick",
        "50ms",
    ];
    // Twenty webhooks are twenty appends; the clock's first one, two seconds on, is the
    // twenty-first: the process aborts once it is in the log, before the view has it.
    let server = ServerCommand::new(&data)
        .args(args)
        .env("QISTATUS_FAILPOINT", "abort-after-log-append:21")
        .start()
        .await;
    let now = rfc3339_ago(chrono::Duration::zero());
    post_waiting_signatures(server.http, "c-", 20, &now).await;
    let status = server.exit_within(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "aborted at the failpoint: {status:?}"
    );

    // The restart replays the logged events; the clock finds nothing left to say, however
    // often it looks.
    let server = ServerCommand::new(&data).args(args).start().await;
    ticks_passed(server.admin, overdue_ticks(server.admin).await, 3).await;
    let events = overdue_events(server.grpc).await;
    let sequences: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(sequences, (21..=40).collect::<Vec<_>>(), "{events:?}");
    let mut keys: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 20, "each operation once");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_due_index_steps_is_finished_at_the_next_start() {
    use crate::process::ServerCommand;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, "").unwrap();
    let data = dir.path().join("data");
    let args = [
        "--catalog",
        catalog.to_str().unwrap(),
        "--overdue-tick",
        "100ms",
    ];
    // Five debts waiting for a signature for three days, which nothing expects yet.
    let server = ServerCommand::new(&data).args(args).start().await;
    let old = rfc3339_ago(chrono::Duration::days(3));
    post_waiting_signatures(server.http, "x-", 5, &old).await;
    assert!(server.terminate().await.success());

    // A catalog that expects a signature within a day: the start dates those debts (step
    // one, recorded) and dies before it writes the due index (step two).
    std::fs::write(
        &catalog,
        "[kinds.debt.expect]\nwaiting_signature = \"1d\"\n",
    )
    .unwrap();
    let start = tokio::process::Command::new(crate::process::SERVER_BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("QISTATUS_FAILPOINT", "abort-between-due-steps")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .expect("the start aborts at the failpoint, not serves")
        .unwrap();
    assert!(!output.status.success(), "the failpoint aborts the start");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("abort-between-due-steps reached"), "{said}");

    // The next start finishes it: each of the five is said to be overdue, once, however
    // often the clock looks after.
    let server = ServerCommand::new(&data).args(args).start().await;
    overdue_events_heard(server.grpc, 5).await;
    ticks_passed(server.admin, overdue_ticks(server.admin).await, 3).await;
    let events = overdue_events(server.grpc).await;
    let mut keys: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["x-0", "x-1", "x-2", "x-3", "x-4"], "{events:?}");
    drop(server);
}
