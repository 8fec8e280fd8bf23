//! A cluster against a single node and against raw JetStream, in the same run: acknowledged
//! webhooks per second with two qistatus nodes on a three-server JetStream stream (R3), the
//! same bodies published straight to an R3 stream of the same servers by the same load, and
//! point reads spread over both nodes.

use super::Context;
use super::ingest::{ingest, reads};
use crate::process::start_nats;
use crate::report::{Report, ms};
use crate::target::{JetStreamTarget, QistatusTarget};

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
}
