//! GetOperation's answers and errors, over real gRPC.

use crate::test_server::{TestServer, webhook};
use qistatus::pb;
use tonic::Code;

#[tokio::test]
async fn unknown_key_is_not_found_and_names_the_key() {
    let server = TestServer::start().await;
    let err = server.get("no-such-key", "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no-such-key"), "{}", err.message());

    server
        .post_ok(webhook("scr", "k1", "consulted", "2024-01-01 10:00:00"))
        .await;
    let err = server.get("k1", "debt").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("debt") && err.message().contains("k1"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_key_is_invalid() {
    let server = TestServer::start().await;
    let err = server.get("", "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("key"), "{}", err.message());
    server.stop().await;
}

#[tokio::test]
async fn a_key_shared_by_two_kinds_needs_the_kind() {
    let server = TestServer::start().await;
    server
        .post_ok(webhook(
            "debt",
            "shared",
            "disbursed",
            "2024-01-01 10:00:00",
        ))
        .await;
    server
        .post_ok(webhook(
            "account",
            "shared",
            "account_opened",
            "2024-01-01 10:00:00",
        ))
        .await;

    let err = server.get("shared", "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("account") && err.message().contains("debt"),
        "{}",
        err.message()
    );

    let debt = server.get("shared", "debt").await.unwrap();
    assert_eq!(debt.status, "disbursed");
    let account = server.get("shared", "ACCOUNT").await.unwrap();
    assert_eq!(account.status, "account_opened");
    server.stop().await;
}

#[tokio::test]
async fn operation_times_and_counters_are_filled() {
    let server = TestServer::start().await;
    let s1 = server
        .post_ok(webhook(
            "debt",
            "k",
            "waiting_signature",
            "2024-01-01 10:00:00",
        ))
        .await;
    let s2 = server
        .post_ok(webhook("debt", "k", "disbursed", "2024-01-02T10:00:00Z"))
        .await;
    let op = server.get("k", "").await.unwrap();
    assert_eq!(op.version, 2);
    assert_eq!(op.last_sequence, s2);
    assert_eq!(
        op.history.iter().map(|h| h.sequence).collect::<Vec<_>>(),
        vec![s1, s2]
    );
    assert_eq!(
        crate::test_server::rfc3339(op.event_time.as_ref()),
        "2024-01-02T10:00:00Z"
    );
    let first = op.first_received_at.unwrap();
    let updated = op.updated_at.unwrap();
    assert!((updated.seconds, updated.nanos) >= (first.seconds, first.nanos));
    // The default view leaves each webhook's data out; the full view has it.
    assert!(
        op.history
            .iter()
            .all(|h| h.data.is_none() && !h.data_omitted)
    );
    let full = server
        .grpc()
        .await
        .get_operation(pb::GetOperationRequest {
            key: op.key.clone(),
            view: pb::OperationView::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.history_omitted, 0);
    let full = full.operation.unwrap();
    assert!(full.history.iter().all(|h| h.data.is_some()));
    // The JSON view: the same data, as the bytes each webhook's body had.
    let json = server
        .grpc()
        .await
        .get_operation(pb::GetOperationRequest {
            key: op.key.clone(),
            view: pb::OperationView::Json as i32,
            include_raw_payload: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(json.history.len(), full.history.len());
    for (as_json, as_struct) in json.history.iter().zip(&full.history) {
        assert!(as_json.data.is_none(), "no Struct in the JSON view");
        let text = std::str::from_utf8(&as_json.data_json).unwrap();
        let raw = std::str::from_utf8(&as_json.raw_payload).unwrap();
        assert!(raw.contains(text), "the body's own bytes: {text} in {raw}");
        let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
        let object = parsed.as_object().expect("an object");
        let fields = &as_struct.data.as_ref().unwrap().fields;
        assert_eq!(object.len(), fields.len(), "{text}");
        assert!(object.keys().all(|k| fields.contains_key(k)), "{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "qistatus.v1.OperationStatusService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "qistatus.v1.OperationStatusService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.contains(&service.to_owned()),
            "{service} in {names:?}"
        );
    }
    // The health service's schema can be fetched, as `buf curl` does before calling it.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "grpc.health.v1.Health".into(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{answer:?}"
    );

    // Tools that speak only the older v1alpha protocol can list too.
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as AlphaRequest,
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaMessage,
        server_reflection_response::MessageResponse as AlphaResponse,
    };
    let request = AlphaRequest {
        host: String::new(),
        message_request: Some(AlphaMessage::ListServices(String::new())),
    };
    let answer = AlphaClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("one answer");
    let Some(AlphaResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected v1alpha answer: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "qistatus.v1.OperationStatusService"),
        "{list:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn huge_keys_and_requests_are_refused_without_echoing_them() {
    let server = TestServer::start().await;
    let huge = "k".repeat(100_000);
    for (key, kind) in [
        (huge.as_str(), ""),
        ("k", huge.as_str()),
        (&huge[..257], "debt"),
    ] {
        let err = server.get(key, kind).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().len() < 200,
            "the message echoes the input: {} bytes",
            err.message().len()
        );
        assert!(err.message().contains("at most"), "{}", err.message());
    }
    // The intake's limit (256 bytes) is the API's: the longest key the intake stores can be read.
    let longest = "k".repeat(256);
    server
        .post_ok(webhook(
            "debt",
            &longest,
            "disbursed",
            "2024-01-01 10:00:00",
        ))
        .await;
    assert_eq!(server.get(&longest, "debt").await.unwrap().key, longest);

    // A filter value that no status could be.
    let err = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["s".repeat(10_000)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().len() < 200, "{}", err.message());

    // A request message over the limit: RESOURCE_EXHAUSTED, as gRPC specifies.
    let err = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["s".repeat(2 * 1024 * 1024)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn megabyte_descriptions_are_cut_in_answers_but_kept_whole_in_the_raw_webhook() {
    let server = TestServer::start().await;
    let description = "d".repeat(1_000_000);
    let mut raw = Vec::new();
    for i in 0..6 {
        let body = serde_json::to_vec(&serde_json::json!({
            "webhook_type": "debt", "key": format!("big{i}"), "status": "canceled",
            "event_datetime": "2024-01-01 10:00:00", "description": description,
        }))
        .unwrap();
        server.post_ok(body.clone()).await;
        raw.push(body);
    }
    // Six of them fit in one list page, for every caller.
    let page = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            statuses: vec!["canceled".into()],
            ..Default::default()
        })
        .await
        .expect("a list page under the message limit")
        .into_inner();
    assert_eq!(page.operations.len(), 6);
    for op in &page.operations {
        assert!(op.detail.len() <= 1024, "{}", op.detail.len());
        assert!(
            op.detail.ends_with("[cut: 1000000 bytes in all]"),
            "{}",
            &op.detail[1000..]
        );
    }
    // The raw webhook is untouched, byte for byte.
    let op = server.get_with_raw("big0", "debt").await;
    assert_eq!(op.history[0].raw_payload, raw[0]);
    server.stop().await;
}

#[tokio::test]
async fn an_operation_with_megabytes_of_history_data_is_answered_within_the_message_limit() {
    let server = TestServer::start().await;
    let statuses = [
        "waiting_signature",
        "signed",
        "disbursed",
        "opened",
        "settled",
    ];
    for (day, status) in statuses.iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({
            "webhook_type": "debt", "key": "heavy", "status": status,
            "event_datetime": format!("2024-01-0{} 10:00:00", day + 1),
            "data": {"blob": "b".repeat(900 * 1024)},
        }))
        .unwrap();
        server.post_ok(body).await;
    }
    // The default view: every entry, no data, small.
    let basic = server.get("heavy", "debt").await.expect("the basic view");
    assert_eq!(basic.history.len(), 5);
    assert!(basic.history.iter().all(|h| h.data.is_none()));

    // The full view: as much data as fits under 4 MiB, newest first; the rest says so.
    let full = server
        .grpc()
        .await
        .get_operation(pb::GetOperationRequest {
            key: "heavy".into(),
            view: pb::OperationView::Full as i32,
            ..Default::default()
        })
        .await
        .expect("the full view stays under the client's 4 MiB limit")
        .into_inner();
    assert_eq!(full.history_omitted, 0);
    let history = full.operation.unwrap().history;
    let filled: Vec<bool> = history.iter().map(|h| h.data.is_some()).collect();
    assert_eq!(filled, [false, true, true, true, true], "newest first");
    assert!(history[0].data_omitted && !history[4].data_omitted);
    // The JSON view under the same limit, the same way.
    let json = server
        .grpc()
        .await
        .get_operation(pb::GetOperationRequest {
            key: "heavy".into(),
            view: pb::OperationView::Json as i32,
            ..Default::default()
        })
        .await
        .expect("the JSON view stays under the client's 4 MiB limit")
        .into_inner();
    let history = json.operation.unwrap().history;
    let filled: Vec<bool> = history.iter().map(|h| !h.data_json.is_empty()).collect();
    assert_eq!(filled, [false, true, true, true, true], "newest first");
    assert!(history[0].data_omitted && !history[4].data_omitted);

    // The CLI's default output, and its --json, work for it.
    for args in [&["get", "heavy"][..], &["get", "heavy", "--json", "--full"]] {
        let out = tokio::process::Command::new(crate::process::CLI_BIN)
            .args(["--server", &format!("http://{}", server.grpc)])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("settled"));
    }
    server.stop().await;
}
