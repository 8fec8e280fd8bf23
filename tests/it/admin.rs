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
