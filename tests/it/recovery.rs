//! Recovery (#35): what QI failed to deliver, qistatus fetches back through QI's API, here
//! the stand-in written from QI's pages ([`crate::qi_api`]). The servers run on a
//! [`ManualClock`] the stand-in shares: "three weeks later" is the clock advanced.

use std::time::Duration;

use crate::qi_api::{Mood, QiStandIn, StandInCallback, StandInEvent};
use crate::test_server::{TestServer, webhook};
use crate::wait::wait_until;
use qistatus::{ManualClock, RecoverySettings};

const DAY: i64 = 24 * 3600;

/// Settings on `dir` for a server that talks to `qi`, whose webhooks it verifies.
fn settings(
    dir: &std::path::Path,
    clock: &ManualClock,
    qi: &QiStandIn,
    recovery: RecoverySettings,
    catalog: Option<&str>,
) -> qistatus::Settings {
    let mut settings = qistatus::Settings::new(dir.join("data"));
    if let Some(text) = catalog {
        let file = dir.join("catalog.toml");
        std::fs::write(&file, text).unwrap();
        settings.catalog = qistatus::load_catalog(Some(&file)).unwrap();
    }
    settings.clock = clock.clock();
    settings.qitech_api = Some(qi.settings());
    settings.recovery = recovery;
    settings.webhook_verifier = qi.webhook_verifier();
    settings
}

/// Recovery without periodic passes: only overdue operations and asks by hand.
const NO_PASSES: RecoverySettings = RecoverySettings {
    every: None,
    ..RecoverySettings::DEFAULT
};

/// A server on a manual clock with `catalog` and recovery as `recovery` says, talking to a
/// fresh stand-in for QI's API that delivers to it; with `configure`'s last word on the
/// settings.
async fn start_recovering(
    recovery: RecoverySettings,
    catalog: Option<&str>,
    configure: impl FnOnce(&mut qistatus::Settings),
) -> (TestServer, ManualClock, QiStandIn, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let qi = QiStandIn::start(clock.clock()).await;
    let mut settings = settings(dir.path(), &clock, &qi, recovery, catalog);
    configure(&mut settings);
    let server = TestServer::start_with(settings).await;
    qi.deliver_to(&server.webhooks_url());
    (server, clock, qi, dir)
}

/// A debt webhook as QI sends it, at `at` (seconds since the epoch).
fn debt(key: &str, status: &str, at: i64) -> Vec<u8> {
    let when = chrono::DateTime::from_timestamp(at, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    webhook("debt", key, status, &when)
}

/// An event of debt `key` reaching `status` at `at`, whose one callback is `callback_status`.
fn debt_event(key: &str, status: &str, at: i64, callback_status: &str) -> StandInEvent {
    StandInEvent {
        event_key: format!("event-{key}-{status}"),
        event_type: format!("debt_{status}"),
        origin_key: key.to_owned(),
        at,
        callbacks: vec![StandInCallback {
            callback_key: format!("callback-{key}-{status}"),
            status: callback_status.to_owned(),
            body: debt(key, status, at),
        }],
    }
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line that starts with `series`, if there is one.
async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    metrics(server)
        .await
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until a pass completed at or after `at` (ms since the epoch) by `clock`.
async fn a_pass_completed(server: &TestServer, clock: &ManualClock, since: i64) {
    let completed = crate::wait::until_or_none(Duration::from_secs(30), || async {
        let age = metric(server, "qistatus_recovery_last_pass_age_seconds ").await?;
        let completed = clock.now_millis() - (age as i64) * 1000;
        (age >= 0.0 && completed >= since - 1000).then_some(())
    })
    .await;
    if completed.is_none() {
        let shown: Vec<String> = metrics(server)
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && (l.contains("recovery") || l.contains("qitech")))
            .map(str::to_owned)
            .collect();
        panic!("no recovery pass completed since {since} within 30 s: {shown:?}");
    }
}

#[tokio::test]
async fn a_qistatus_down_for_three_weeks_ends_with_everything_qi_failed_to_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let qi = QiStandIn::start(clock.clock()).await;
    let start = |qi: &QiStandIn| settings(dir.path(), &clock, qi, RecoverySettings::DEFAULT, None);
    // Up and caught up: the first pass reaches back 14 days and finds nothing.
    let server = TestServer::start_with(start(&qi)).await;
    qi.deliver_to(&server.webhooks_url());
    a_pass_completed(&server, &clock, clock.now_millis()).await;
    let went_down = clock.now_millis() / 1000;
    server.stop().await;

    // Three weeks down: QI tried every webhook of those weeks, and marked each failed. One
    // in four had a second callback that went through (another system of the integrator's).
    let keys: Vec<String> = (0..63).map(|i| format!("debt-{i:02}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let at = went_down + 60 + i as i64 * (21 * DAY / 64);
        let mut event = debt_event(key, "disbursed", at, "failed");
        if i % 4 == 0 {
            event.callbacks.push(StandInCallback {
                callback_key: format!("other-{key}"),
                status: "sent".into(),
                body: debt(key, "disbursed", at),
            });
        }
        qi.add(event);
    }
    clock.advance(Duration::from_secs((21 * DAY) as u64));

    let server = TestServer::start_with(start(&qi)).await;
    qi.deliver_to(&server.webhooks_url());
    a_pass_completed(&server, &clock, clock.now_millis()).await;
    for key in &keys {
        let op = server.get(key, "debt").await.unwrap();
        assert_eq!(op.status, "disbursed", "{key}");
    }
    let listings: Vec<_> = qi
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert!(listings.iter().all(|s| s.status == 200), "{listings:?}");
    // From where the last pass ended (less the hour QI's retries take), not from 14 days.
    let earliest = listings
        .iter()
        .filter_map(|s| s.param("start_datetime"))
        .min()
        .unwrap()
        .to_owned();
    let went_down_text = chrono::DateTime::from_timestamp(went_down - 3600, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert!(
        earliest.as_str() <= went_down_text.as_str(),
        "{earliest} > {went_down_text}"
    );
    // Two windows of at most 14 days, the first of two pages.
    assert!(
        listings.iter().any(|s| s.param("page") == Some("2")),
        "{listings:?}"
    );
    let resends = qi.resends();
    assert_eq!(
        resends.len(),
        keys.len(),
        "only the failed callbacks: {resends:?}"
    );
    assert!(
        resends
            .iter()
            .all(|(_, callback)| callback.starts_with("callback-"))
    );
    assert_eq!(
        metric(
            &server,
            "qistatus_recovery_resends_total{reason=\"failed_callback\"}"
        )
        .await,
        Some(keys.len() as f64)
    );

    // A restart neither repeats nor skips: the next pass starts where this one ended.
    server.stop().await;
    let before = qi.seen().len();
    clock.advance(Duration::from_secs(60));
    let server = TestServer::start_with(start(&qi)).await;
    a_pass_completed(&server, &clock, clock.now_millis()).await;
    let after: Vec<_> = qi.seen().into_iter().skip(before).collect();
    assert_eq!(after.len(), 1, "one listing of the last hour: {after:?}");
    assert_eq!(qi.resends().len(), keys.len(), "nothing asked twice");
    server.stop().await;
}

#[tokio::test]
async fn an_overdue_debt_whose_disbursement_was_lost_is_disbursed_with_nobody_acting() {
    let catalog = "[kinds.debt.expect]\nwaiting_signature = \"1h\"\nsigned = \"1h\"\n";
    let (server, clock, qi, _dir) = start_recovering(NO_PASSES, Some(catalog), |_| {}).await;
    let now = clock.now_millis() / 1000;
    // QI delivered the first two webhooks; the disbursement's callback failed (qistatus
    // was answering 503 through a failover, say).
    for (status, at) in [("waiting_signature", now - 600), ("signed", now - 300)] {
        qi.add(debt_event("lost", status, at, "sent"));
        assert_eq!(
            qi.post_as_qi(&server.webhooks_url(), &debt("lost", status, at))
                .await,
            200
        );
    }
    qi.add(debt_event("lost", "disbursed", now - 60, "failed"));
    assert_eq!(server.get("lost", "debt").await.unwrap().status, "signed");

    clock.advance(Duration::from_secs(3600));
    wait_until(
        "the lost disbursement arrives",
        Duration::from_secs(30),
        || async { (server.get("lost", "debt").await.ok()?.status == "disbursed").then_some(()) },
    )
    .await;
    assert_eq!(
        qi.resends(),
        vec![(
            "event-lost-disbursed".into(),
            "callback-lost-disbursed".into()
        )],
        "only what qistatus did not hold"
    );
    assert_eq!(qi.callback_status("callback-lost-disbursed"), "sent");
    assert_eq!(
        metric(
            &server,
            "qistatus_recovery_resends_total{reason=\"overdue\"}"
        )
        .await,
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stuck_debt_is_asked_about_once_per_backoff_never_in_a_loop() {
    let catalog = "[kinds.debt.expect]\nsigned = \"10m\"\n";
    let (server, clock, qi, _dir) = start_recovering(NO_PASSES, Some(catalog), |_| {}).await;
    let now = clock.now_millis() / 1000;
    qi.add(debt_event("stuck", "signed", now - 60, "sent"));
    assert_eq!(
        qi.post_as_qi(&server.webhooks_url(), &debt("stuck", "signed", now - 60))
            .await,
        200
    );

    clock.advance(Duration::from_secs(600));
    wait_until(
        "QI is asked about the overdue debt",
        Duration::from_secs(30),
        || async { (qi.asked_about("stuck") == 1).then_some(()) },
    )
    .await;
    // QI has nothing more: every tick of the overdue clock for the next 59 minutes asks
    // nothing.
    let ticks = metric(&server, "qistatus_overdue_ticks_total")
        .await
        .unwrap();
    for _ in 0..59 {
        clock.advance(Duration::from_secs(60));
    }
    wait_until(
        "the overdue clock ticks on",
        Duration::from_secs(30),
        || async { (metric(&server, "qistatus_overdue_ticks_total").await? > ticks).then_some(()) },
    )
    .await;
    assert_eq!(qi.asked_about("stuck"), 1);
    assert!(
        qi.resends().is_empty(),
        "what qistatus holds is never asked for"
    );
    // An hour later, once more; then not for two hours.
    clock.advance(Duration::from_secs(120));
    wait_until(
        "QI is asked again after the backoff",
        Duration::from_secs(30),
        || async { (qi.asked_about("stuck") == 2).then_some(()) },
    )
    .await;
    let ticks = metric(&server, "qistatus_overdue_ticks_total")
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    wait_until(
        "the overdue clock ticks on",
        Duration::from_secs(30),
        || async { (metric(&server, "qistatus_overdue_ticks_total").await? > ticks).then_some(()) },
    )
    .await;
    assert_eq!(qi.asked_about("stuck"), 2);
    server.stop().await;
}

#[tokio::test]
async fn qi_refusing_or_out_of_reach_changes_nothing_else() {
    let clock = ManualClock::starting_now();
    let qi = QiStandIn::start(clock.clock()).await;
    for (mood, outcome) in [
        (Mood::Down, "unavailable"),
        (Mood::Hanging, "unavailable"),
        (Mood::Fine, "refused"),
        (Mood::Fine, "bad_answer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        qi.set_mood(mood);
        let mut settings = settings(dir.path(), &clock, &qi, RecoverySettings::DEFAULT, None);
        let api = settings.qitech_api.as_mut().unwrap();
        api.request_timeout = Duration::from_millis(300);
        match outcome {
            // A client key QI does not know: `404 GDF000018`.
            "refused" => api.client_key = "00000000-0000-0000-0000-000000000000".into(),
            // Answers signed by a key that is not the one qistatus holds for QI.
            "bad_answer" => {
                api.public_key_pem = Some(crate::qi_api::KeyPair::new().public_pem);
            }
            _ => {}
        }
        let server = TestServer::start_with(settings).await;
        let series = format!(
            "qistatus_qitech_api_requests_total{{call=\"list_events\",outcome=\"{outcome}\"}}"
        );
        wait_until("the pass fails", Duration::from_secs(60), || async {
            metric(&server, &series).await.filter(|n| *n >= 1.0)
        })
        .await;
        // The intake, the API and the probes go on as ever.
        let now = clock.now_millis() / 1000;
        assert_eq!(
            qi.post_as_qi(&server.webhooks_url(), &debt("k", "signed", now))
                .await,
            200
        );
        assert_eq!(server.get("k", "debt").await.unwrap().status, "signed");
        let ready = reqwest::get(format!("http://{}/readyz", server.admin))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{mood:?}");
        assert_eq!(
            metric(&server, "qistatus_recovery_last_pass_age_seconds ").await,
            Some(-1.0),
            "no pass completed"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_person_asks_qi_to_resend_from_the_operations_page() {
    use fantoccini::Locator;
    const TOKEN: &str = "recovery-console-token";
    let (server, clock, qi, _dir) = start_recovering(NO_PASSES, None, |s| {
        s.grpc_tokens = qistatus::BearerTokens::from_files_text([TOKEN]);
    })
    .await;
    let now = clock.now_millis() / 1000;
    qi.add(debt_event("asked", "signed", now - 120, "sent"));
    assert_eq!(
        qi.post_as_qi(&server.webhooks_url(), &debt("asked", "signed", now - 120))
            .await,
        200
    );
    qi.add(debt_event("asked", "disbursed", now - 60, "failed"));

    // Another site's form (no token) asks nothing of QI.
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!(
            "http://{}/ui/operations/asked/resend?kind=debt",
            server.admin
        ))
        .form(&[("csrf", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 303, "to the sign-in form");
    assert!(qi.seen().is_empty());

    let browser = crate::console::Browser::start().await;
    let c = &browser.client;
    let base = format!("http://{}/ui", server.admin);
    c.goto(&format!("{base}/login")).await.unwrap();
    let form = c.form(Locator::Css("form.login")).await.unwrap();
    form.set_by_name("token", TOKEN).await.unwrap();
    form.submit().await.unwrap();
    browser.text_once("//h1[text()='Overview']").await;
    c.goto(&format!("{base}/operations/asked?kind=debt"))
        .await
        .unwrap();
    browser.text_once("//dd/strong[text()='signed']").await;
    browser.click(Locator::Css("form.resend button")).await;
    let answer = browser.text_once("//h1[text()='Asked QI to resend']").await;
    assert!(answer.contains("QI listed 2 event(s)"), "{answer}");
    assert!(answer.contains("qistatus holds 1"), "{answer}");
    assert!(answer.contains("resend 1 callback(s)"), "{answer}");
    browser.click(Locator::LinkText("← debt asked")).await;
    browser.text_once("//dd/strong[text()='disbursed']").await;
    assert_eq!(
        metric(
            &server,
            "qistatus_recovery_resends_total{reason=\"by_hand\"}"
        )
        .await,
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn recover_by_hand_prints_what_it_asked_and_fails_when_qi_refuses() {
    let qi = QiStandIn::start(qistatus::Clock::system()).await;
    let server = TestServer::start_configured(|s| s.webhook_verifier = qi.webhook_verifier()).await;
    qi.deliver_to(&server.webhooks_url());
    let now = chrono::Utc::now().timestamp();
    qi.add(debt_event("by-hand", "disbursed", now - 2 * DAY, "failed"));
    qi.add(debt_event("delivered", "disbursed", now - DAY, "sent"));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("qistatus.pem");
    std::fs::write(&key_file, &qi.client.private_pem).unwrap();
    let recover = |client_key: &str| {
        tokio::process::Command::new(crate::process::SERVER_BIN)
            .args(["recover", "--since", "3d"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--qitech-api-url", &qi.url()])
            .arg("--qitech-api-private-key")
            .arg(&key_file)
            .args(["--qitech-api-client-key", client_key])
            .output()
    };
    let out = recover(&qi.client_key).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("asked QI for the events whose callback failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("asked QI to resend debt_disbursed callback callback-by-hand-disbursed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 callback(s) QI accepted to resend"),
        "{stdout}"
    );
    assert_eq!(
        server.get("by-hand", "debt").await.unwrap().status,
        "disbursed"
    );
    assert!(
        server.get("delivered", "debt").await.is_err(),
        "only what failed"
    );

    let out = recover("11111111-1111-1111-1111-111111111111")
        .await
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("404") && said.contains("GDF000018"), "{said}");
    server.stop().await;
}

#[tokio::test]
async fn a_callback_qi_never_delivers_is_given_up_after_its_resends_counted_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let qi = QiStandIn::start(clock.clock()).await;
    let twice = RecoverySettings {
        max_resends: 2,
        ..RecoverySettings::DEFAULT
    };
    // QI's resends go nowhere (the receiver it was given is gone): the callback stays failed.
    let now = clock.now_millis() / 1000;
    qi.add(debt_event("nowhere", "disbursed", now - 300, "failed"));
    let server = TestServer::start_with(settings(dir.path(), &clock, &qi, twice, None)).await;
    a_pass_completed(&server, &clock, clock.now_millis()).await;
    assert_eq!(qi.resends().len(), 1);
    // Asked again after 10 minutes, then (the wait doubled) after 20 more: given up.
    for (minutes, resends) in [(10, 2), (20, 2)] {
        clock.advance(Duration::from_secs(minutes * 60));
        a_pass_completed(&server, &clock, clock.now_millis()).await;
        assert_eq!(qi.resends().len(), resends, "after {minutes} more minutes");
    }
    assert_eq!(
        metric(&server, "qistatus_recovery_given_up_callbacks ").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&server, "qistatus_recovery_given_up_total ").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&server, "qistatus_recovery_pending_callbacks ").await,
        Some(0.0)
    );
    let overview = reqwest::get(format!("http://{}/ui/", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(overview.contains("1 given up on"), "{overview}");
    assert!(
        overview.contains("callback-nowhere-disbursed"),
        "{overview}"
    );
    server.stop().await;
}
