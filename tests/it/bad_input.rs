//! Bad input gets a clear 4xx (or the quarantine, for a JSON object), never a 5xx, a panic
//! or a hang, and nothing already stored changes.

use std::time::Duration;

use crate::test_server::{TestServer, fixture, webhook};
use qistatus::pb;

/// Every existing operation, exactly as a client sees it, raw payloads included.
async fn snapshot(server: &TestServer, keys: &[&str]) -> Vec<pb::Operation> {
    let mut grpc = server.grpc().await;
    let mut ops = Vec::new();
    for key in keys {
        let response = grpc
            .get_operation(pb::GetOperationRequest {
                key: (*key).into(),
                kind: "debt".into(),
                include_raw_payload: true,
                ..Default::default()
            })
            .await
            .unwrap();
        ops.push(response.into_inner().operation.unwrap());
    }
    ops
}

fn nested(depth: usize, open: &str, close: &str) -> Vec<u8> {
    format!("{}{}", open.repeat(depth), close.repeat(depth)).into_bytes()
}

fn object(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// (what, method, path, body, expected status)
fn hostile_inputs() -> Vec<(&'static str, &'static str, &'static str, Vec<u8>, u16)> {
    use serde_json::json;
    let existing = "871059bd-4014-41ad-82b4-28275ff0e67b";
    let post = "POST";
    let path = "/webhooks";
    vec![
        (
            "truncated object",
            post,
            path,
            br#"{"webhook_type":"debt","key":"k1""#.to_vec(),
            400,
        ),
        (
            "truncated string",
            post,
            path,
            br#"{"webhook_type":"de"#.to_vec(),
            400,
        ),
        ("empty body", post, path, Vec::new(), 400),
        ("only whitespace", post, path, b" \n\t ".to_vec(), 400),
        (
            "invalid UTF-8 in a string",
            post,
            path,
            b"{\"key\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "a lone continuation byte",
            post,
            path,
            b"{\"key\":\"\x80\"}".to_vec(),
            400,
        ),
        (
            "a byte-order mark",
            post,
            path,
            b"\xef\xbb\xbf{\"key\":\"k\"}".to_vec(),
            400,
        ),
        (
            "10,000-deep arrays",
            post,
            path,
            nested(10_000, "[", "]"),
            400,
        ),
        (
            "10,000-deep objects",
            post,
            path,
            {
                let mut b = "{\"a\":".repeat(10_000).into_bytes();
                b.extend(b"1");
                b.extend("}".repeat(10_000).into_bytes());
                b
            },
            400,
        ),
        (
            "a top-level array",
            post,
            path,
            b"[{\"webhook_type\":\"debt\"}]".to_vec(),
            400,
        ),
        (
            "a top-level string",
            post,
            path,
            b"\"disbursed\"".to_vec(),
            400,
        ),
        ("a top-level number", post, path, b"12".to_vec(), 400),
        ("a top-level null", post, path, b"null".to_vec(), 400),
        ("a top-level boolean", post, path, b"true".to_vec(), 400),
        (
            "a number out of range",
            post,
            path,
            br#"{"key":"k","data":{"v":1e400}}"#.to_vec(),
            400,
        ),
        (
            "a negative number out of range",
            post,
            path,
            br#"{"key":"k","data":{"v":-1e400}}"#.to_vec(),
            400,
        ),
        (
            "NaN",
            post,
            path,
            br#"{"key":"k","data":{"v":NaN}}"#.to_vec(),
            400,
        ),
        (
            "a comment",
            post,
            path,
            b"{\"key\":\"k\" // no\n}".to_vec(),
            400,
        ),
        ("single quotes", post, path, b"{'key':'k'}".to_vec(), 400),
        (
            "trailing garbage",
            post,
            path,
            br#"{"key":"k"} x"#.to_vec(),
            400,
        ),
        (
            "two objects",
            post,
            path,
            br#"{"key":"k"}{"key":"k"}"#.to_vec(),
            400,
        ),
        (
            "a raw NUL byte in a string",
            post,
            path,
            b"{\"key\":\"a\x00b\"}".to_vec(),
            400,
        ),
        (
            "a lone surrogate",
            post,
            path,
            br#"{"key":"\ud800"}"#.to_vec(),
            400,
        ),
        (
            "a 50 MB string",
            post,
            path,
            {
                let mut b = br#"{"webhook_type":"debt","key":"k","status":"x","data":""#.to_vec();
                b.extend(std::iter::repeat_n(b'a', 50 * 1024 * 1024));
                b.extend(br#""}"#);
                b
            },
            413,
        ),
        (
            "huge data",
            post,
            path,
            object(json!({
                "webhook_type": "debt", "key": existing, "status": "settled",
                "data": (0..100_000).map(|i| (format!("field_{i:06}"), json!(i))).collect::<serde_json::Map<_, _>>(),
            })),
            413,
        ),
        (
            "key is a number",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": 871059, "status": "settled"})),
            202,
        ),
        (
            "key is an object",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": {"id": existing}, "status": "settled"})),
            202,
        ),
        (
            "key is an array",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": [existing], "status": "settled"})),
            202,
        ),
        (
            "key is a boolean",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": true, "status": "settled"})),
            202,
        ),
        (
            "status is a number",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": 7})),
            202,
        ),
        (
            "status is an object",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": {"s": "settled"}})),
            202,
        ),
        (
            "status is null",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": null})),
            202,
        ),
        (
            "webhook_type is a number",
            post,
            path,
            object(json!({"webhook_type": 1, "key": existing, "status": "settled"})),
            202,
        ),
        (
            "webhook_type with a path",
            post,
            path,
            object(json!({"webhook_type": "../debt", "key": existing, "status": "settled"})),
            202,
        ),
        (
            "NUL in the key",
            post,
            path,
            object(
                json!({"webhook_type": "debt", "key": format!("{existing}\u{0}"), "status": "settled"}),
            ),
            202,
        ),
        (
            "a newline in the key",
            post,
            path,
            object(
                json!({"webhook_type": "debt", "key": format!("{existing}\n"), "status": "settled"}),
            ),
            202,
        ),
        (
            "a 300-byte key",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": "k".repeat(300), "status": "settled"})),
            202,
        ),
        (
            "a bell in the status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "settled\u{7}"})),
            202,
        ),
        (
            "a newline in the status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "set\ntled"})),
            202,
        ),
        (
            "a Cyrillic look-alike status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "s\u{435}ttled"})),
            202,
        ),
        (
            "a zero-width space in the status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "settled\u{200b}"})),
            202,
        ),
        (
            "a right-to-left override in the status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "\u{202e}deltteS"})),
            202,
        ),
        (
            "a 200-byte status",
            post,
            path,
            object(json!({"webhook_type": "debt", "key": existing, "status": "s".repeat(200)})),
            202,
        ),
        (
            "no key anywhere",
            post,
            path,
            object(json!({"webhook_type": "debt", "status": "settled"})),
            202,
        ),
        ("an empty object", post, path, b"{}".to_vec(), 202),
        ("GET", "GET", path, Vec::new(), 405),
        (
            "PATCH",
            "PATCH",
            path,
            fixture("004_debt_settled.json"),
            405,
        ),
        ("DELETE", "DELETE", path, Vec::new(), 405),
        (
            "the root path",
            post,
            "/",
            fixture("004_debt_settled.json"),
            404,
        ),
        (
            "a sub-path",
            post,
            "/webhooks/debt",
            fixture("004_debt_settled.json"),
            404,
        ),
        (
            "an upper-case path",
            post,
            "/WEBHOOKS",
            fixture("004_debt_settled.json"),
            404,
        ),
        (
            "a traversal path",
            post,
            "/../webhooks/../admin",
            fixture("004_debt_settled.json"),
            404,
        ),
    ]
}

#[tokio::test]
async fn hostile_inputs_get_clear_4xx_and_change_nothing_stored() {
    let server = TestServer::start().await;
    server
        .post_ok(fixture("004_debt_created_waiting_signature.json"))
        .await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    server.post_ok(fixture("004_debt_canceled.json")).await;
    let keys = [
        "871059bd-4014-41ad-82b4-28275ff0e67b",
        "27a099df-4688-43cb-87fa-515b1cf343a5",
    ];
    let before = snapshot(&server, &keys).await;

    let client = reqwest::Client::new();
    let inputs = hostile_inputs();
    assert!(inputs.len() >= 40, "{} hostile inputs", inputs.len());
    for (what, method, path, body, expected) in inputs {
        let request = client
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", server.http),
            )
            .header("content-type", "application/json")
            .body(body);
        let response = tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{what}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: the answer is not JSON ({e}): {text}"));
        let message = answer["error"]
            .as_str()
            .or(answer["reason"].as_str())
            .unwrap_or_default();
        assert!(!message.is_empty(), "{what}: no message in {text}");
    }

    assert_eq!(
        snapshot(&server, &keys).await,
        before,
        "existing operations are untouched"
    );
    // The server is still healthy and storing.
    let (code, _) = server
        .post(webhook("debt", "after", "disbursed", "2024-01-01 10:00:00"))
        .await;
    assert_eq!(code, 200);
    server.stop().await;
}

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
        (
            trailing_comma,
            "not valid JSON: trailing comma at line 1 column 59",
        ),
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

/// Sends raw bytes on a new connection and reads the answer: status and JSON body.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &[u8],
    pause_after: Option<Duration>,
) -> (u16, String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    if let Some(pause) = pause_after {
        tokio::time::sleep(pause).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let json = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("the {status} answer's body is not JSON ({e}): {answer:?}"));
    (status, head.to_ascii_lowercase(), json)
}

#[tokio::test]
async fn every_refusal_has_a_json_body_with_the_right_status() {
    let server = TestServer::start_configured(|s| {
        s.intake.request_timeout = Duration::from_millis(500);
    })
    .await;
    let settled = fixture("004_debt_settled.json");

    // A compressed body is refused by name, not misread as "not JSON".
    let response = reqwest::Client::new()
        .post(server.webhooks_url())
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("gzip"),
        "{answer}"
    );

    // Too many headers.
    let mut request = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..80 {
        request.extend(format!("X-Filler-{i}: {i}\r\n").as_bytes());
    }
    request.extend(b"Content-Length: 2\r\n\r\n{}");
    let (status, _, answer) = raw_exchange(server.http, &request, None).await;
    assert_eq!(status, 431, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("headers"),
        "{answer}"
    );

    // A body that stops arriving: 408 once the request timeout passes.
    let request = b"POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"webhook";
    let (status, _, answer) = raw_exchange(server.http, request, None).await;
    assert_eq!(status, 408, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("longer than"),
        "{answer}"
    );

    // A wrong method names the right one, and says so in Allow.
    let request = b"GET /webhooks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, head, answer) = raw_exchange(server.http, request, None).await;
    assert_eq!(status, 405, "{answer}");
    assert!(head.contains("allow: post"), "{head}");
    assert!(
        answer["error"].as_str().unwrap().contains("POST /webhooks"),
        "{answer}"
    );

    // Nothing of that was stored; a plain webhook still is.
    let (code, answer) = server.post(settled).await;
    assert_eq!(
        (code, answer["sequence"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_same_webhook_with_numbers_spelled_differently_is_a_duplicate() {
    let server = TestServer::start().await;
    let body = |amount: &str| {
        format!(
            r#"{{"webhook_type":"debt","key":"n1","status":"disbursed","event_datetime":"2024-01-01 10:00:00","data":{{"amount":{amount}}}}}"#
        )
    };
    let (code, first) = server.post(body("1500")).await;
    assert_eq!(
        (code, first["result"].as_str()),
        (200, Some("accepted")),
        "{first}"
    );
    for same in ["1500.0", "1.5e3", "1500.00"] {
        let (code, answer) = server.post(body(same)).await;
        assert_eq!(
            (code, answer["result"].as_str(), answer["sequence"].as_u64()),
            (200, Some("duplicate"), first["sequence"].as_u64()),
            "{same}: {answer}"
        );
    }
    let (code, answer) = server.post(body("1500.5")).await;
    assert_eq!(
        (code, answer["result"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    assert_eq!(server.get("n1", "debt").await.unwrap().event_count, 2);
    server.stop().await;
}

#[tokio::test]
async fn two_bodies_differing_only_past_a_doubles_precision_are_two_webhooks() {
    let server = TestServer::start().await;
    let body = |n: &str| {
        format!(
            r#"{{"webhook_type": "debt", "key": "big-n", "status": "signed", "data": {{"contract_number": {n}}}}}"#
        )
    };
    let (code, first) = server.post(body("12345678901234567890123")).await;
    assert_eq!(
        (code, first["result"].as_str()),
        (200, Some("accepted")),
        "{first}"
    );
    let (code, second) = server.post(body("12345678901234567890124")).await;
    assert_eq!(
        (code, second["result"].as_str()),
        (200, Some("accepted")),
        "{second}"
    );
    // The same content again is still the same webhook.
    let (code, again) = server.post(body("12345678901234567890124")).await;
    assert_eq!(
        (code, again["result"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    assert_eq!(server.get("big-n", "debt").await.unwrap().version, 2);
}
