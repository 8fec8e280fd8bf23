//! When the writer's queue is full, the intake answers 503 with Retry-After instead of
//! piling up memory, and every webhook it did accept is stored.

use std::sync::Arc;

use crate::test_server::{TestServer, webhook};

#[tokio::test]
async fn a_full_writer_queue_gets_503_with_retry_after_and_loses_nothing_accepted() {
    let server = Arc::new(
        TestServer::start_configured(|s| {
            s.writer.queue = 1;
            s.writer.max_batch = 1;
        })
        .await,
    );
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (server, client) = (server.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let body = webhook("debt", &format!("k{i}"), "disbursed", "2024-01-01 10:00:00");
            let response = client
                .post(server.webhooks_url())
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let answer: serde_json::Value = response.json().await.unwrap();
            (i, status, retry_after, answer)
        }));
    }
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (i, status, retry_after, answer) = task.await.unwrap();
        match status {
            200 => accepted.push(i),
            503 => {
                refused += 1;
                assert_eq!(retry_after.unwrap(), "1");
                assert!(
                    answer["error"].as_str().unwrap().contains("busy"),
                    "{answer}"
                );
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert!(
        refused > 0,
        "200 concurrent webhooks overflow a queue of one"
    );
    assert!(!accepted.is_empty());
    for i in accepted {
        let op = server.get(&format!("k{i}"), "debt").await.unwrap();
        assert_eq!(op.status, "disbursed");
    }
    Arc::into_inner(server).unwrap().stop().await;
}
