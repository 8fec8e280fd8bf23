//! The admin listener: liveness, readiness and Prometheus metrics that count what a user of
//! the server did.

use qistatus::pb;

use crate::test_server::{TestServer, fixture, webhook};

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", server.admin))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn probes_answer_and_metrics_count_webhooks_calls_and_watchers() {
    let server = TestServer::start().await;
    assert_eq!(get(&server, "/livez").await, (200, "ok\n".to_owned()));
    assert_eq!(get(&server, "/readyz").await, (200, "ready\n".to_owned()));

    let debt = fixture("004_debt_disbursed.json");
    server.post_ok(debt.clone()).await;
    server.post_ok(debt).await;
    server
        .post_ok(webhook("debt", "k2", "settled", "2024-01-01 10:00:00"))
        .await;
    let (code, _) = server.post(br#"{"hello":"world"}"#.to_vec()).await;
    assert_eq!(code, 202);
    let (code, _) = server.post(b"not json".to_vec()).await;
    assert_eq!(code, 400);
    // A kind the catalog does not know is counted as `other`: no label from a sender.
    server
        .post_ok(webhook(
            "made_up_kind_1234",
            "k3",
            "x",
            "2024-01-01 10:00:00",
        ))
        .await;
    let err = server.get("missing", "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut grpc = server.grpc().await;
    let watch = grpc
        .watch_operation(pb::WatchOperationRequest::default())
        .await
        .unwrap()
        .into_inner();

    let (code, metrics) = get(&server, "/metrics").await;
    assert_eq!(code, 200);
    for (series, value) in [
        (
            "qistatus_webhooks_total{kind=\"debt\",result=\"accepted\"}",
            2.0,
        ),
        (
            "qistatus_webhooks_total{kind=\"debt\",result=\"duplicate\"}",
            1.0,
        ),
        (
            "qistatus_webhooks_total{kind=\"other\",result=\"quarantined\"}",
            1.0,
        ),
        (
            "qistatus_webhooks_total{kind=\"other\",result=\"refused\"}",
            1.0,
        ),
        (
            "qistatus_webhooks_total{kind=\"other\",result=\"accepted\"}",
            1.0,
        ),
        (
            "qistatus_grpc_requests_total{method=\"GetOperation\",code=\"NOT_FOUND\"}",
            1.0,
        ),
        ("qistatus_ack_seconds_count", 6.0),
        ("qistatus_watchers", 1.0),
        ("qistatus_log_head_sequence", 3.0),
        ("qistatus_quarantined", 1.0),
        ("qistatus_view_lag", 0.0),
        ("qistatus_connections_open{listener=\"grpc\"}", 1.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in\n{metrics}"
        );
    }
    assert!(
        sample(&metrics, "qistatus_log_bytes").is_some_and(|b| b > 0.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "qistatus_writer_batch_size_count").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(!metrics.contains("made_up_kind"), "{metrics}");
    drop(watch);
    server.stop().await;
}

async fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &format!("http://{}", server.grpc)])
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn stats_count_operations_by_kind_and_status_as_they_move() {
    let server = TestServer::start().await;
    for key in ["a", "b", "c"] {
        server
            .post_ok(webhook(
                "debt",
                key,
                "waiting_signature",
                "2024-01-01 10:00:00",
            ))
            .await;
    }
    server
        .post_ok(webhook("debt", "a", "disbursed", "2024-01-02 10:00:00"))
        .await;
    server
        .post_ok(webhook("debt", "b", "canceled", "2024-01-02 10:00:00"))
        .await;
    // Late and duplicate webhooks move no counter.
    server
        .post_ok(webhook(
            "debt",
            "b",
            "waiting_signature",
            "2024-01-01 09:00:00",
        ))
        .await;
    server
        .post_ok(webhook("debt", "b", "canceled", "2024-01-02 10:00:00"))
        .await;
    server.post(br#"{"hello":"world"}"#.to_vec()).await;

    let out = cli(&server, &["stats", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: Vec<(String, String, u64)> = stats["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_owned(),
                c["phase"].as_str().unwrap().to_owned(),
                c["operations"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("waiting_signature".to_owned(), "pending".to_owned(), 1),
            ("disbursed".to_owned(), "active".to_owned(), 1),
            ("canceled".to_owned(), "failed".to_owned(), 1),
        ]
    );
    assert_eq!(stats["operations"], 3);
    assert_eq!(stats["quarantined"], 1);
    assert_eq!(stats["head_sequence"], 6);

    let human = cli(&server, &["stats"]).await;
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("3 operation(s); 1 quarantined webhook(s)"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_quarantine_is_listed_from_a_running_server_payloads_only_on_request() {
    let server = TestServer::start().await;
    let (code, answer) = server
        .post(br#"{"webhook_type":"debt","cpf":"123.456.789-09"}"#.to_vec())
        .await;
    assert_eq!(code, 202, "{answer}");

    let out = cli(&server, &["quarantine"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("{}\t", answer["quarantine_id"])),
        "{text}"
    );
    assert!(text.contains("no operation key"), "{text}");
    assert!(
        !text.contains("123.456.789-09"),
        "no payload unless asked: {text}"
    );

    let out = cli(&server, &["quarantine", "--payload", "--json"]).await;
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        line["payload"],
        r#"{"webhook_type":"debt","cpf":"123.456.789-09"}"#
    );
    assert_eq!(line["size_bytes"], 46);
    server.stop().await;
}

#[tokio::test]
async fn every_metric_the_deploy_examples_use_is_served() {
    // With an expectation, as the overdue alert assumes (without one, nothing is overdue),
    // and QI's API (its stand-in) with one callback to fetch back, as the recovery panels do.
    let qi = crate::qi_api::QiStandIn::start(qistatus::Clock::system()).await;
    let now = chrono::Utc::now().timestamp();
    qi.add(crate::qi_api::StandInEvent {
        event_key: "e".into(),
        event_type: "debt_disbursed".into(),
        origin_key: "m2".into(),
        at: now - 60,
        callbacks: vec![crate::qi_api::StandInCallback {
            callback_key: "c".into(),
            status: "failed".into(),
            body: webhook("debt", "m2", "disbursed", "2024-01-01 10:00:00"),
        }],
    });
    let server = TestServer::start_configured(|s| {
        s.catalog = s
            .catalog
            .clone()
            .extended_with("[kinds.debt.expect]\nwaiting_signature = \"5d\"\n")
            .unwrap();
        s.qitech_api = Some(qi.settings());
    })
    .await;
    qi.deliver_to(&server.webhooks_url());
    // Two statuses: a stage, as the flow's panels assume.
    server
        .post_ok(webhook(
            "debt",
            "m1",
            "waiting_signature",
            "2024-01-01 09:00:00",
        ))
        .await;
    server
        .post_ok(webhook("debt", "m1", "disbursed", "2024-01-01 10:00:00"))
        .await;
    let _ = server.get("m1", "").await;
    let metrics = crate::wait::wait_until(
        "recovery fetches m2 back",
        std::time::Duration::from_secs(30),
        || async {
            let (_, metrics) = get(&server, "/metrics").await;
            metrics
                .contains("qistatus_recovery_resends_total{")
                .then_some(metrics)
        },
    )
    .await;
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/grafana-dashboard.json",
        "deploy/qistatus-alerts.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut names: Vec<&str> = text
            .match_indices("qistatus_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 5, "{file} names metrics: {names:?}");
        for name in names {
            assert!(
                metrics.lines().any(|l| l.starts_with(name)),
                "{file} uses {name}, which /metrics does not serve"
            );
        }
    }
    server.stop().await;
}
