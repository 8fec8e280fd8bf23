//! Memory is bounded in bytes: webhooks with very long texts and watchers that stop reading
//! cannot grow the server without bound.

use std::time::Duration;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use crate::process::ServerCommand;

const MB: u64 = 1024 * 1024;

/// Posts `body` to the intake at `http` beside the posts in flight in `posts`, keeping at most
/// `in_flight` of them: each must be answered `200`.
async fn post_accepted(
    posts: &mut tokio::task::JoinSet<reqwest::StatusCode>,
    client: &reqwest::Client,
    http: &std::net::SocketAddr,
    body: Vec<u8>,
    in_flight: usize,
) {
    let (client, url) = (client.clone(), format!("http://{http}/webhooks"));
    posts.spawn(async move { client.post(url).body(body).send().await.unwrap().status() });
    if posts.len() >= in_flight {
        assert_eq!(posts.join_next().await.unwrap().unwrap(), 200);
    }
}

/// Every change from the first sequence on, unchanged webhooks included.
pub fn everything_from_zero() -> pb::WatchOperationRequest {
    pb::WatchOperationRequest {
        start_after_sequence: Some(0),
        include_unchanged: true,
        ..Default::default()
    }
}

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
        post_accepted(&mut posts, &client, &server.http, body, 8).await;
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

/// A server restarted on a store of `operations` debts of `steps` webhooks each (descriptions
/// of `description` bytes), so that watchers resuming from sequence 0 find none of it in the
/// recent window and have it worked out from the log.
async fn restarted_on_histories(
    dir: &std::path::Path,
    operations: usize,
    steps: usize,
    description: usize,
) -> crate::process::ServerProcess {
    let server = ServerCommand::new(dir).start().await;
    let client = reqwest::Client::new();
    let description = "d".repeat(description);
    let mut posts = tokio::task::JoinSet::new();
    for step in 0..steps {
        for k in 0..operations {
            let body = serde_json::to_vec(&serde_json::json!({
                "webhook_type": "debt", "key": format!("history{k}"),
                "status": "waiting_signature",
                "event_datetime": format!("2024-01-01 {:02}:{:02}:00", step / 60, step % 60),
                "description": description,
            }))
            .unwrap();
            post_accepted(&mut posts, &client, &server.http, body, 32).await;
        }
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    server.terminate().await;
    ServerCommand::new(dir).start().await
}

/// The value of a metric without labels in `/metrics`.
async fn metric(server: &crate::process::ServerProcess, name: &str) -> f64 {
    let text = server.metrics_text().await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test]
async fn a_thousand_stalled_watchers_on_one_connection_cost_a_bounded_queue_each() {
    const WATCHERS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    // 200 debts of 30 webhooks, each with a description at the 1 KiB that derived text is
    // cut at: the largest changes there are.
    let server = restarted_on_histories(dir.path(), 200, 30, 2000).await;
    let before = server.rss_bytes();
    // One HTTP/2 connection whose windows are never granted again: nothing is read.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stalled = Vec::new();
    for _ in 0..WATCHERS {
        let mut grpc = OperationStatusServiceClient::new(channel.clone());
        let stream = grpc
            .watch_operation(everything_from_zero())
            .await
            .unwrap()
            .into_inner();
        stalled.push(stream);
    }
    // Every watcher is counted once the server has registered it: waited for, not assumed
    // by the time the stream's headers came back (under load, the last may lag).
    // The deadlines bound a failure, never a pause: under the whole suite's load on two
    // cores, a thousand registrations and queues filled took longer than a minute once.
    server
        .metric_reaches(
            "qistatus_watchers",
            WATCHERS as f64,
            Duration::from_secs(180),
        )
        .await;
    assert_eq!(metric(&server, "qistatus_watchers").await, WATCHERS as f64);
    // Every watcher has filled its queue and waits for its reader.
    server
        .metric_reaches(
            "qistatus_watchers_stalled",
            WATCHERS as f64,
            Duration::from_secs(180),
        )
        .await;
    let last = metric(&server, "qistatus_feed_changes_from_log_total").await;
    let after = server.rss_bytes();
    let each = after.saturating_sub(before) / WATCHERS as u64;
    eprintln!(
        "RSS {} MB before, {} MB with {WATCHERS} stalled watchers: {} KB each; {last} changes \
         worked out from the log for them",
        before / MB,
        after / MB,
        each / 1024
    );
    // Each: its queue (64 KiB as counted, about 100 KB in memory) and its stream's state.
    assert!(each < 160 * 1024, "{} KB per stalled watcher", each / 1024);
    assert!(
        last <= 2.0 * 6000.0,
        "the changes they need are worked out once for all, not per watcher: {last}"
    );
    drop(stalled);
    server.terminate().await;
}

#[tokio::test]
async fn watchers_resuming_from_zero_share_one_reading_of_the_log() {
    const WATCHERS: usize = 100;
    const OPERATIONS: usize = 100;
    const STEPS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let server = restarted_on_histories(dir.path(), OPERATIONS, STEPS, 0).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watchers = tokio::task::JoinSet::new();
    for _ in 0..WATCHERS {
        let mut grpc = OperationStatusServiceClient::new(channel.clone());
        watchers.spawn(async move {
            let mut stream = grpc
                .watch_operation(everything_from_zero())
                .await
                .unwrap()
                .into_inner();
            let mut sequences = Vec::new();
            while sequences.len() < OPERATIONS * STEPS {
                let response = stream.message().await.unwrap().expect("the stream goes on");
                if let Some(pb::watch_operation_response::Event::Change(change)) = response.event {
                    sequences.push(change.sequence);
                }
            }
            sequences
        });
    }
    let all: Vec<u64> = (1..=(OPERATIONS * STEPS) as u64).collect();
    while let Some(sequences) = watchers.join_next().await {
        assert_eq!(sequences.unwrap(), all, "every change, in order, once");
    }
    let worked_out = metric(&server, "qistatus_feed_changes_from_log_total").await;
    eprintln!(
        "{WATCHERS} watchers caught up on {} changes; {worked_out} worked out from the log",
        all.len()
    );
    assert!(
        worked_out <= 2.0 * all.len() as f64,
        "{WATCHERS} watchers cost about one reading of the log, not one each: {worked_out}"
    );
    server.terminate().await;
}

/// The most resident memory `pid` had while `work` ran, sampled every 50 ms, and `work`'s
/// result.
async fn peak_rss_during<T>(
    server: &crate::process::ServerProcess,
    work: impl std::future::Future<Output = T>,
) -> (u64, T) {
    let mut peak = server.rss_bytes();
    let mut work = std::pin::pin!(work);
    let mut sampling = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            done = &mut work => return (peak.max(server.rss_bytes()), done),
            _ = sampling.tick() => peak = peak.max(server.rss_bytes()),
        }
    }
}

#[tokio::test]
async fn waves_of_near_megabyte_bodies_stay_within_the_bound_and_memory_comes_back() {
    const WAVE: usize = 560;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(dir.path()).start().await;
    let before = server.rss_bytes();
    let url = format!("http://{}/webhooks", server.http);
    // A real webhook (the same one each time: stored once, then answered `duplicate`) with a
    // description that brings it just under the 1 MiB limit.
    let big = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "webhook_type": "debt", "key": "big", "status": "canceled",
            "event_datetime": "2024-01-01 10:00:00", "description": "d".repeat(1024 * 1024 - 200),
        }))
        .unwrap(),
    );
    assert!(big.len() < 1024 * 1024);
    // QI, meanwhile: a webhook every 20 ms.
    let waves_done = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn({
        let (url, waves_done) = (url.clone(), waves_done.clone());
        async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            for i in 0.. {
                let body = serde_json::to_vec(&serde_json::json!({
                    "webhook_type": "debt", "key": format!("real{i}"), "status": "signed",
                    "event_datetime": "2024-01-01 10:00:00",
                }))
                .unwrap();
                let answer = client.post(&url).body(body).send().await;
                answers.push(answer.map(|a| a.status().as_u16()).unwrap_or(0));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    () = waves_done.cancelled() => break,
                }
            }
            answers
        }
    });
    let client = reqwest::Client::new();
    let (peak, answered) = peak_rss_during(&server, async {
        let mut answered = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..3 {
            let mut posts = tokio::task::JoinSet::new();
            for _ in 0..WAVE {
                let (client, url, body) = (client.clone(), url.clone(), big.clone());
                posts.spawn(async move {
                    let answer = client.post(url).body(body).send().await;
                    answer.map(|a| a.status().as_u16()).unwrap_or(0)
                });
            }
            while let Some(code) = posts.join_next().await {
                *answered.entry(code.unwrap()).or_default() += 1;
            }
        }
        answered
    })
    .await;
    waves_done.cancel();
    let real = sender.await.unwrap();
    let after = crate::wait::until_or_none(Duration::from_secs(10), || {
        let now = server.rss_bytes();
        std::future::ready((now < before + 64 * MB).then_some(now))
    })
    .await
    .unwrap_or_else(|| server.rss_bytes());
    eprintln!(
        "RSS {} MB before, {} MB at the peak of 3 waves of {WAVE} near-1 MiB bodies ({:?}), \
         {} MB after; the real sender's {} webhooks: {:?}",
        before / MB,
        peak / MB,
        answered,
        after / MB,
        real.len(),
        real.iter().fold(
            std::collections::BTreeMap::<u16, usize>::new(),
            |mut m, c| {
                *m.entry(*c).or_default() += 1;
                m
            }
        )
    );
    assert!(
        real.len() >= 10 && real.iter().all(|code| *code == 200),
        "{real:?}"
    );
    assert!(
        answered.keys().all(|code| [200, 503].contains(code)),
        "each large body stored (a duplicate) or turned away with 503: {answered:?}"
    );
    assert!(answered.get(&200).is_some_and(|n| *n > 0), "{answered:?}");
    // Bodies over 64 KiB held at most 32 MiB at once, with what parsing them costs and the
    // connections' buffers: well under the 512 MiB the old budget allowed (peaks of 800 MB
    // and more here).
    assert!(
        peak < before + 256 * MB,
        "peak RSS {} MB, {} MB before",
        peak / MB,
        before / MB
    );
    assert!(
        after < before + 64 * MB,
        "RSS stayed at {} MB after the waves ({} MB before)",
        after / MB,
        before / MB
    );
    server.terminate().await;
}
