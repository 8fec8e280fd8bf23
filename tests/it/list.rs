//! ListByStatus: pagination, filters, and refusal of bad requests.

use std::sync::Arc;

use crate::test_server::{TestServer, phase, webhook};
use qistatus::client::ListQuery;
use qistatus::pb;
use tokio_stream::StreamExt;
use tonic::Code;

/// Posts `count` debts (spread over statuses) and `count / 2` accounts, 32 senders at once.
async fn populate(server: &Arc<TestServer>, count: usize) {
    let statuses = ["waiting_signature", "disbursed", "canceled", "settled"];
    let mut tasks = Vec::new();
    for sender in 0..32 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in (sender..count).step_by(32) {
                let status = statuses[i % statuses.len()];
                server
                    .post_ok(webhook(
                        "debt",
                        &format!("debt-{i:05}"),
                        status,
                        "2024-01-01 10:00:00",
                    ))
                    .await;
                if i % 2 == 0 {
                    server
                        .post_ok(webhook(
                            "account",
                            &format!("acct-{i:05}"),
                            "account_opened",
                            "2024-01-01 10:00:00",
                        ))
                        .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn list_all(server: &TestServer, query: ListQuery) -> Vec<pb::Operation> {
    let stream = server.client().await.list(query);
    stream.collect::<Result<Vec<_>, _>>().await.unwrap()
}

fn ids(ops: &[pb::Operation]) -> Vec<(String, String)> {
    ops.iter()
        .map(|o| (o.kind.clone(), o.key.clone()))
        .collect()
}

#[tokio::test]
async fn pagination_over_thousands_returns_each_operation_once_in_order() {
    let server = Arc::new(TestServer::start().await);
    populate(&server, 3000).await;

    for page_size in [1, 7, 100, 1000] {
        let query = ListQuery {
            statuses: vec!["disbursed".into()],
            page_size,
            ..ListQuery::default()
        };
        if page_size == 1 {
            // One-operation pages over 750 operations: check a prefix only, for time.
            let mut grpc = server.grpc().await;
            let mut token = String::new();
            let mut seen = Vec::new();
            for _ in 0..50 {
                let page = grpc
                    .list_by_status(pb::ListByStatusRequest {
                        statuses: vec!["disbursed".into()],
                        page_size: 1,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(page.operations.len(), 1);
                seen.push(page.operations[0].key.clone());
                token = page.next_page_token;
            }
            let expected: Vec<String> = (1..3000)
                .step_by(4)
                .take(50)
                .map(|i| format!("debt-{i:05}"))
                .collect();
            assert_eq!(seen, expected);
            continue;
        }
        let ops = list_all(&server, query).await;
        let expected: Vec<(String, String)> = (1..3000)
            .step_by(4)
            .map(|i| ("debt".to_owned(), format!("debt-{i:05}")))
            .collect();
        assert_eq!(ids(&ops), expected, "page size {page_size}");
        assert!(
            ops.iter()
                .all(|o| o.status == "disbursed" && o.history.is_empty())
        );
    }
    // A phase is the merge of its statuses' runs, across kinds: paged at any size, it is
    // every operation in that phase once, in (kind, key) order.
    let statuses = [
        "waiting_signature",
        "disbursed",
        "canceled",
        "settled",
        "account_opened",
    ];
    let mut everything = Vec::new();
    for status in statuses {
        everything.extend(
            list_all(
                &server,
                ListQuery {
                    statuses: vec![status.into()],
                    page_size: 1000,
                    ..ListQuery::default()
                },
            )
            .await,
        );
    }
    assert_eq!(everything.len(), 3000 + 1500);
    for wanted in [
        pb::Phase::Pending,
        pb::Phase::Active,
        pb::Phase::Succeeded,
        pb::Phase::Failed,
    ] {
        let mut expected: Vec<(String, String)> = everything
            .iter()
            .filter(|o| o.phase == wanted as i32)
            .map(|o| (o.kind.clone(), o.key.clone()))
            .collect();
        expected.sort();
        for page_size in [7, 1000] {
            let listed = list_all(
                &server,
                ListQuery {
                    phase: Some(wanted),
                    page_size,
                    ..ListQuery::default()
                },
            )
            .await;
            assert_eq!(ids(&listed), expected, "{wanted:?}, pages of {page_size}");
        }
    }
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn filters_by_statuses_kind_and_phase() {
    let server = Arc::new(TestServer::start().await);
    populate(&server, 400).await;

    // Several statuses: one merged run in (kind, key) order.
    let ends = list_all(
        &server,
        ListQuery {
            statuses: vec!["canceled".into(), " SETTLED ".into()],
            page_size: 33,
            ..ListQuery::default()
        },
    )
    .await;
    let mut expected: Vec<(String, String)> = (0..400)
        .filter(|i| i % 4 >= 2)
        .map(|i| ("debt".to_owned(), format!("debt-{i:05}")))
        .collect();
    expected.sort();
    assert_eq!(ids(&ends), expected);

    // A phase, across kinds: accounts (kind "account") sort before debts.
    let succeeded = list_all(
        &server,
        ListQuery {
            phase: Some(pb::Phase::Succeeded),
            page_size: 50,
            ..ListQuery::default()
        },
    )
    .await;
    let mut expected: Vec<(String, String)> = (0..400)
        .step_by(2)
        .map(|i| ("account".to_owned(), format!("acct-{i:05}")))
        .chain(
            (3..400)
                .step_by(4)
                .map(|i| ("debt".to_owned(), format!("debt-{i:05}"))),
        )
        .collect();
    expected.sort();
    assert_eq!(ids(&succeeded), expected);

    // The same phase, one kind.
    let debts = list_all(
        &server,
        ListQuery {
            kind: Some("DEBT".into()),
            phase: Some(pb::Phase::Succeeded),
            ..ListQuery::default()
        },
    )
    .await;
    assert_eq!(debts.len(), 100);
    assert!(
        debts
            .iter()
            .all(|o| o.kind == "debt" && o.status == "settled")
    );

    // An operation that changes status leaves the old status's list.
    server
        .post_ok(webhook(
            "debt",
            "debt-00001",
            "canceled",
            "2024-01-02 10:00:00",
        ))
        .await;
    let disbursed = list_all(
        &server,
        ListQuery {
            kind: Some("debt".into()),
            statuses: vec!["disbursed".into()],
            ..ListQuery::default()
        },
    )
    .await;
    assert_eq!(disbursed.len(), 99);
    assert!(!disbursed.iter().any(|o| o.key == "debt-00001"));

    let none = list_all(
        &server,
        ListQuery {
            statuses: vec!["no_such_status".into()],
            ..ListQuery::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let server = Arc::into_inner(server).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_and_forged_tokens_are_invalid_arguments() {
    let server = Arc::new(TestServer::start().await);
    populate(&server, 40).await;
    let mut grpc = server.grpc().await;
    let request = |statuses: Vec<&str>, phase: pb::Phase, page_size: u32, token: &str| {
        pb::ListByStatusRequest {
            kind: String::new(),
            statuses: statuses.into_iter().map(String::from).collect(),
            phase: phase as i32,
            page_size,
            page_token: token.into(),
            overdue: false,
        }
    };
    let first = grpc
        .list_by_status(request(vec!["disbursed"], pb::Phase::Unspecified, 3, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.operations.len(), 3);
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let cases = [
        (
            request(vec![], pb::Phase::Unspecified, 0, ""),
            "statuses or a phase",
        ),
        (
            request(vec!["disbursed"], pb::Phase::Failed, 0, ""),
            "not both",
        ),
        (
            request(vec!["disbursed"], pb::Phase::Unspecified, 1001, ""),
            "page_size 1001",
        ),
        (
            request(vec!["disbursed"], pb::Phase::Unspecified, 3, "not a token"),
            "page_token",
        ),
        (
            request(vec!["disbursed"], pb::Phase::Unspecified, 3, &tampered),
            "page_token",
        ),
        // A genuine token, used for another query.
        (
            request(vec!["canceled"], pb::Phase::Unspecified, 3, &token),
            "not issued for this query",
        ),
        (
            request(vec![" "], pb::Phase::Unspecified, 3, ""),
            "statuses: a value is empty",
        ),
    ];
    for (req, expected) in cases {
        let err = grpc.list_by_status(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            err.message().contains(expected),
            "{req:?}: {}",
            err.message()
        );
    }
    let mut bad_phase = request(vec![], pb::Phase::Unspecified, 0, "");
    bad_phase.phase = 42;
    let err = grpc.list_by_status(bad_phase).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    drop(grpc);
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn page_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(TestServer::start_in(dir.path()).await);
    populate(&server, 40).await;
    let request = |token: String| pb::ListByStatusRequest {
        statuses: vec!["disbursed".into()],
        page_size: 4,
        page_token: token,
        ..Default::default()
    };
    let first = server
        .grpc()
        .await
        .list_by_status(request(String::new()))
        .await
        .unwrap()
        .into_inner();
    Arc::into_inner(server).unwrap().stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let second = server
        .grpc()
        .await
        .list_by_status(request(first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = second.operations.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["debt-00017", "debt-00021", "debt-00025", "debt-00029"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_disbursed_or_opened_debt_is_active_until_it_ends() {
    let server = TestServer::start().await;
    for (key, status) in [
        ("w", "waiting_signature"),
        ("d", "disbursed"),
        ("o", "opened"),
        ("s", "settled"),
    ] {
        server
            .post_ok(webhook("debt", key, status, "2024-01-01 10:00:00"))
            .await;
    }
    // The debt that was settled also went through disbursement: still succeeded.
    server
        .post_ok(webhook("debt", "s", "disbursed", "2023-12-01 10:00:00"))
        .await;
    let page = server
        .grpc()
        .await
        .list_by_status(pb::ListByStatusRequest {
            phase: pb::Phase::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = page.operations.iter().map(|op| op.key.as_str()).collect();
    assert_eq!(keys, ["d", "o"]);
    assert_eq!(phase(&server.get("w", "debt").await.unwrap()), "pending");
    assert_eq!(phase(&server.get("s", "debt").await.unwrap()), "succeeded");
    server.stop().await;
}
