//! A cluster against a single node and against raw JetStream, in the same run: acknowledged
//! webhooks per second with two qistatus nodes on a three-server JetStream stream (R3), the
//! same bodies published straight to an R3 stream of the same servers by the same load, and
//! point reads spread over both nodes; then ingest across the kill of the stream's leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Context;
use super::ingest::{ingest, reads};
use crate::load::{TEMPLATES, drive, histogram, webhooks};
use crate::process::start_nats;
use crate::report::{Report, ms};
use crate::target::{JetStreamTarget, QistatusTarget, Target};

/// Runs the single node, then the cluster, with the same load.
pub async fn run(cx: &Context, report: &mut Report) {
    let Some(nats_bin) = &cx.nats_bin else {
        report
            .notes
            .push("nats-server was not available: the cluster was not measured.".into());
        return;
    };
    eprintln!("== cluster: two nodes on a 3-server JetStream stream (R3) vs one node");
    let (single, _) = cx.qistatus.start(&cx.dir("c-single"), None).await;
    let target = QistatusTarget::connect(&single).await;
    let single_ingest = ingest(&target, cx, None).await;
    let single_reads = reads(&target, cx, &single_ingest.written, None).await;
    single.stop().await;

    let (nats, urls) = start_nats(nats_bin, &cx.dir("c-nats"), 3).await;
    let flags = [
        "--nats".to_owned(),
        urls.clone(),
        "--nats-replicas".into(),
        "3".into(),
    ];
    let (a, _) = cx.qistatus.start_with(&cx.dir("c-a"), None, &flags).await;
    let (b, _) = cx.qistatus.start_with(&cx.dir("c-b"), None, &flags).await;
    let target = QistatusTarget::connect_all(&[&a, &b]).await;
    let cluster_ingest = ingest(&target, cx, None).await;
    let cluster_reads = reads(&target, cx, &cluster_ingest.written, None).await;
    for node in [a, b] {
        node.stop().await;
    }
    // The same load straight to JetStream, on the same servers, one client per node.
    let raw = JetStreamTarget::connect(&urls, 2).await;
    let raw_ingest = ingest(&raw, cx, None).await;
    for server in nats {
        server.stop().await;
    }

    report.notes.push(format!(
        "cluster (two nodes, three NATS servers on this machine, R3; senders and readers \
         spread over both nodes), side by side with one node in the same run: ingest {:.0}/s \
         vs {:.0}/s single ({:.2}×), p99 {} vs {}; point reads {:.0}/s vs {:.0}/s ({:.2}×); \
         failures: cluster {} + {}, single {} + {}. Raw JetStream (the same bodies published \
         to an R3 stream of the same servers with their content hash as the message id, each \
         acknowledgement awaited, the same senders): {:.0}/s, p99 {}, {} failures; the \
         cluster's ingest is {:.2}× of it.",
        cluster_ingest.median_rate(),
        single_ingest.median_rate(),
        cluster_ingest.median_rate() / single_ingest.median_rate(),
        ms(cluster_ingest.latency.value_at_quantile(0.99)),
        ms(single_ingest.latency.value_at_quantile(0.99)),
        cluster_reads.median_rate(),
        single_reads.median_rate(),
        cluster_reads.median_rate() / single_reads.median_rate(),
        cluster_ingest.failures,
        cluster_reads.failures,
        single_ingest.failures,
        single_reads.failures,
        raw_ingest.median_rate(),
        ms(raw_ingest.latency.value_at_quantile(0.99)),
        raw_ingest.failures,
        cluster_ingest.median_rate() / raw_ingest.median_rate(),
    ));
    across_a_leader_kill(cx, report).await;
}

/// What one webhook sent across the leader's kill got: when it was sent (since the load
/// began), how long its answer took, and its result (`None`: no `200`).
struct Sent {
    at: Duration,
    took: Duration,
    result: Option<String>,
}

/// Issue 38's bench row: the cluster's ingest and answer latency across the kill (SIGKILL)
/// of the NATS server that leads the stream, under the same kind of load as the ingest
/// rounds. Every acknowledged webhook is then read back on both nodes.
pub async fn across_a_leader_kill(cx: &Context, report: &mut Report) {
    let Some(nats_bin) = &cx.nats_bin else {
        return;
    };
    eprintln!("== cluster: ingest across the kill of the stream's leader");
    let (mut nats, urls) = start_nats(nats_bin, &cx.dir("k-nats"), 3).await;
    let flags = [
        "--nats".to_owned(),
        urls.clone(),
        "--nats-replicas".into(),
        "3".into(),
    ];
    let (a, _) = cx.qistatus.start_with(&cx.dir("k-a"), None, &flags).await;
    let (b, _) = cx.qistatus.start_with(&cx.dir("k-b"), None, &flags).await;
    let target = QistatusTarget::connect_all(&[&a, &b]).await;
    let s = cx.sizes;
    // Long enough for an election (4 to 9 s) and what follows it.
    let (before, after) = (Duration::from_secs(5), Duration::from_secs(20));
    // More than the cluster acknowledges in that time here (about 2,000/s).
    let batch = Arc::new(webhooks("kill", 200_000, TEMPLATES));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..s.concurrency)
        .map(|sender| {
            let (target, batch, next) = (target.clone(), batch.clone(), next.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while started.elapsed() < before + after {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(webhook) = batch.get(i) else { break };
                    let at = started.elapsed();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        target.post_answer(sender, webhook),
                    )
                    .await;
                    let result = answer
                        .ok()
                        .flatten()
                        .and_then(|a| a["result"].as_str().map(str::to_owned));
                    sent.push((
                        i,
                        Sent {
                            at,
                            took: started.elapsed() - at,
                            result,
                        },
                    ));
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(before).await;
    let leader = stream_leader(&urls, "qistatus").await;
    let killed_at = started.elapsed();
    drop(nats.remove(leader));
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await.expect("a sender"));
    }

    let (mut before_kill, mut across) = (histogram(), histogram());
    let (mut held, mut failed, mut acknowledged) = (0, 0, Vec::new());
    for (i, one) in &sent {
        let micros = one.took.as_micros().max(1) as u64;
        // Answered before the kill, or not (in flight at the kill, or sent after it).
        let _ = if one.at + one.took < killed_at {
            before_kill.record(micros)
        } else {
            across.record(micros)
        };
        match one.result.as_deref() {
            Some("held") => {
                held += 1;
                acknowledged.push(*i);
            }
            Some(_) => acknowledged.push(*i),
            None => failed += 1,
        }
    }
    let rate = |from: Duration, to: Duration| {
        let answered = sent
            .iter()
            .filter(|(_, one)| one.result.is_some() && (from..to).contains(&(one.at + one.took)))
            .count();
        answered as f64 / (to - from).as_secs_f64()
    };
    let (rate_before, rate_after) = (
        rate(Duration::ZERO, killed_at),
        rate(killed_at, before + after),
    );
    // Held webhooks reach the stream once it has a leader again: every acknowledged one is
    // then on both nodes.
    let acknowledged = Arc::new(acknowledged);
    let read_back = |node: usize| {
        let (target, batch, acknowledged) = (target.clone(), batch.clone(), acknowledged.clone());
        move |n: usize| {
            let (target, batch, acknowledged) =
                (target.clone(), batch.clone(), acknowledged.clone());
            async move {
                let webhook = &batch[acknowledged[n]];
                for _ in 0..300 {
                    // Reader `node` reads on node `node` (`i % nodes`).
                    if target.read(node, webhook).await {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            }
        }
    };
    let mut missing = 0;
    for node in 0..2 {
        missing += drive(s.concurrency, acknowledged.len(), read_back(node))
            .await
            .2;
    }
    for node in [a, b] {
        node.stop().await;
    }
    for server in nats {
        server.stop().await;
    }
    report.row(
        "cluster, stream leader killed",
        "answer max / p99 across the kill",
        format!(
            "{} / {}",
            ms(across.max()),
            ms(across.value_at_quantile(0.99))
        ),
        None,
        "every answer within QI's 10 s",
    );
    report.row(
        "cluster, stream leader killed",
        "answer max / p99 of those answered before it",
        format!(
            "{} / {}",
            ms(before_kill.max()),
            ms(before_kill.value_at_quantile(0.99))
        ),
        None,
        "",
    );
    report.row(
        "cluster, stream leader killed",
        "acknowledged/s across the kill vs before",
        format!("{rate_after:.0}/s vs {rate_before:.0}/s"),
        Some(rate_after / rate_before),
        "",
    );
    report.notes.push(format!(
        "Across the kill (SIGKILL) of the NATS server leading the stream (two nodes, R3, {} \
         senders spread over both, each waiting for its answer up to QI's 10 s; killed {:.1} s \
         into the load, measured {} s after): {} webhooks sent, {} acknowledged ({held} of \
         them held on the receiving node until the stream had a new leader), {failed} without \
         a `200` within 10 s; {missing} acknowledged webhooks missing on a node afterwards.",
        s.concurrency,
        killed_at.as_secs_f64(),
        (before + after - killed_at).as_secs(),
        sent.len(),
        acknowledged.len(),
    ));
}

/// The index (`n<i>`) of the NATS server leading `stream` now.
async fn stream_leader(urls: &str, stream: &str) -> usize {
    let first = urls.split(',').next().expect("a server");
    let client = async_nats::connect(first).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    for _ in 0..100 {
        if let Ok(mut found) = jetstream.get_stream(stream).await
            && let Ok(info) = found.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.as_deref())
            && let Some(index) = leader.strip_prefix('n').and_then(|i| i.parse().ok())
        {
            return index;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {stream} has no leader");
}
