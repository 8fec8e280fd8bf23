//! Bad input gets a clear 4xx, and nothing stored before is changed.

mod common;

use common::{TestServer, fixture, webhook};

#[tokio::test]
async fn unparseable_json_is_400_with_the_reason_and_changes_nothing() {
    let server = TestServer::start().await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let before = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap();

    let trailing_comma = br#"{"webhook_type": "scr", "key": "k", "status": "consulted",}"#.to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"webhook_type\": \"debt\", \"key\": ".to_vec(),
            "not valid JSON",
        ),
        (trailing_comma, "not valid JSON"),
        (b"".to_vec(), "not valid JSON"),
        (vec![0xff, 0xfe, b'{'], "not valid JSON"),
        (
            b"[1, 2, 3]".to_vec(),
            "must be a JSON object, but the body is an array",
        ),
        (
            b"\"disbursed\"".to_vec(),
            "must be a JSON object, but the body is a string",
        ),
        (
            b"42".to_vec(),
            "must be a JSON object, but the body is a number",
        ),
    ];
    for (body, expected) in cases {
        let (code, answer) = server.post(body.clone()).await;
        assert_eq!(code, 400, "{:?}: {answer}", String::from_utf8_lossy(&body));
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let after = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap();
    assert_eq!(after, before);
    // Nothing got a sequence number: the next webhook is the second one ever stored.
    assert_eq!(
        server
            .post_ok(webhook("debt", "x", "disbursed", "2024-01-01 00:00:00"))
            .await,
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn a_json_object_without_key_or_status_is_quarantined_not_lost() {
    let server = TestServer::start().await;
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"webhook_type": "debt", "status": "disbursed"}),
            "no operation key",
        ),
        (
            serde_json::json!({"webhook_type": "debt", "key": "k"}),
            "no status",
        ),
        (
            serde_json::json!({"key": "k", "status": "x"}),
            "no webhook_type",
        ),
        (
            serde_json::json!({"webhook_type": "debt", "key": 42, "status": "x"}),
            "key is a number",
        ),
        (
            serde_json::json!({"webhook_type": "debt", "key": "k", "status": ["x"]}),
            "status is an array",
        ),
        (
            serde_json::json!({"webhook_type": "debt", "key": "a\u{0}b", "status": "x"}),
            "control characters",
        ),
    ];
    for (value, expected) in cases {
        let (code, answer) = server.post(serde_json::to_vec(&value).unwrap()).await;
        assert_eq!(code, 202, "{value}: {answer}");
        assert_eq!(answer["result"], "quarantined");
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains(expected), "{value}: {reason}");
    }
    // The same unreadable webhook again is the same quarantine entry.
    let body =
        serde_json::to_vec(&serde_json::json!({"webhook_type": "debt", "key": "k"})).unwrap();
    let (_, first) = server.post(body.clone()).await;
    let (code, again) = server.post(body).await;
    assert_eq!(code, 202);
    assert_eq!(again["quarantine_id"], first["quarantine_id"]);
    server.stop().await;
}

#[tokio::test]
async fn wrong_method_path_and_oversized_body_are_4xx() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let get = client.get(server.webhooks_url()).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let other = client
        .post(format!("http://{}/nope", server.http))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);
    let text = other.text().await.unwrap();
    assert!(text.contains("POST /webhooks"), "{text}");

    let huge = format!(
        r#"{{"webhook_type":"debt","key":"k","status":"x","data":"{}"}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let (code, answer) = server.post(huge).await;
    assert_eq!(code, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("length limit"),
        "{answer}"
    );
    server.stop().await;
}
