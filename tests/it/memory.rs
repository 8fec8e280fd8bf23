//! Memory is bounded in bytes: webhooks with very long texts and watchers that stop reading
//! cannot grow the server without bound.

use std::time::Duration;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use crate::process::ServerCommand;

const MB: u64 = 1024 * 1024;

#[tokio::test]
async fn long_descriptions_and_stalled_watchers_do_not_grow_memory_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(dir.path()).start().await;
    let before = server.rss_bytes();

    // Ten watchers of everything that never read their streams.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut grpc = OperationStatusServiceClient::connect(format!("http://{}", server.grpc))
            .await
            .unwrap();
        let stream = grpc
            .watch_operation(pb::WatchOperationRequest::default())
            .await
            .unwrap()
            .into_inner();
        stalled.push((grpc, stream));
    }

    let description = "d".repeat(900 * 1024);
    let client = reqwest::Client::new();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..250 {
        let body = serde_json::to_vec(&serde_json::json!({
            "webhook_type": "debt", "key": format!("long{i}"), "status": "canceled",
            "event_datetime": "2024-01-01 10:00:00", "description": description,
        }))
        .unwrap();
        let (client, url) = (client.clone(), format!("http://{}/webhooks", server.http));
        posts.spawn(async move { client.post(url).body(body).send().await.unwrap().status() });
        if posts.len() >= 8 {
            assert_eq!(posts.join_next().await.unwrap().unwrap(), 200);
        }
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    // 225 MB of descriptions went through; what stays is the page cache (64 MB by default),
    // the bounded windows and the allocator's free lists: under 200 MB, once what was in
    // flight is given back (within seconds; at once, on most runs).
    let after = crate::wait::until_or_none(Duration::from_secs(10), || {
        let now = server.rss_bytes();
        std::future::ready((now < 200 * MB).then_some(now))
    })
    .await;
    let after = after.unwrap_or_else(|| server.rss_bytes());
    eprintln!(
        "RSS {} MB before, {} MB after 250 webhooks of 900 KB descriptions with 10 stalled watchers",
        before / MB,
        after / MB
    );
    assert!(after < 200 * MB, "RSS stayed at {} MB", after / MB);
    drop(stalled);
    server.terminate().await;
}
