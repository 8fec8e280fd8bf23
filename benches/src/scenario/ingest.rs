//! Durable ingest (closed-loop senders posting distinct realistic webhooks) and point reads
//! of what was ingested, against qistatus and each peer.

use std::sync::Arc;
use std::time::Duration;

use super::Context;
use crate::load::{CpuPerOp, Rounds, TEMPLATES, Webhook, drive, webhooks};
use crate::process::{Postgres, Process, cpu_time_of, start_etcd, start_null_receiver};
use crate::report::{Report, ms};
use crate::target::{EtcdTarget, NullTarget, PostgresTarget, QistatusTarget, Target};

/// Runs ingest and/or reads (reads need the ingested keys, so ingest always runs).
pub async fn run(cx: &Context, report: &mut Report, with_ingest: bool, with_reads: bool) {
    let s = cx.sizes;
    eprintln!(
        "== durable ingest, {} concurrent senders; point reads",
        s.concurrency
    );
    let (q_server, _) = cx.qistatus.start(&cx.dir("q-ingest"), None).await;
    let q_target = QistatusTarget::connect(&q_server).await;
    let q_ingest = ingest(&q_target, cx, Some(&q_server)).await;
    // The same load on a server that keeps no flow figures: what they cost the intake.
    let (no_flow_server, _) = cx
        .qistatus
        .start_with(&cx.dir("q-ingest-no-flow"), None, &["--no-flow".to_owned()])
        .await;
    let no_flow = ingest(
        &QistatusTarget::connect(&no_flow_server).await,
        cx,
        Some(&no_flow_server),
    )
    .await;
    let no_flow_keys = no_flow_server
        .metric("qistatus_view_keys_written_total", "")
        .zip(no_flow_server.metric("qistatus_webhooks_total", r#"result="accepted""#))
        .map(|(keys, accepted)| keys / accepted.max(1.0));
    no_flow_server.stop().await;
    // What the view cost per stored webhook, in sled keys (sled's cost is per key).
    let accepted = q_server.metric("qistatus_webhooks_total", r#"result="accepted""#);
    let keys_per_webhook = q_server
        .metric("qistatus_view_keys_written_total", "")
        .zip(accepted)
        .map(|(keys, accepted)| keys / accepted.max(1.0));
    let ceiling = match null_receiver_bin() {
        Some(bin) => {
            let server = start_null_receiver(&bin).await;
            Some(ingest(&NullTarget::connect(&server), cx, Some(&server)).await)
        }
        None => None,
    };
    let etcd = match &cx.etcd_bin {
        Some(bin) => {
            let server = start_etcd(bin, &cx.dir("e-ingest")).await;
            let target = EtcdTarget::connect(&server).await;
            let rounds = ingest(&target, cx, Some(&server)).await;
            Some((server, target, rounds))
        }
        None => None,
    };
    let postgres = match &cx.postgres_bin_dir {
        Some(bin_dir) => {
            let server = Postgres::start(bin_dir, &cx.dir("p-ingest"));
            let target = PostgresTarget::connect(&server.url, s.concurrency).await;
            let rounds = ingest(&target, cx, None).await;
            Some((server, target, rounds))
        }
        None => None,
    };
    if with_ingest {
        let e = etcd.as_ref().map(|(_, _, r)| r);
        let p = postgres.as_ref().map(|(_, _, r)| r);
        report.compare(
            "durable ingest",
            "webhooks acknowledged per second (median of rounds)",
            &q_ingest,
            [e, p],
            "≥ 2× etcd, ≥ 3× PostgreSQL",
        );
        let mean_body = q_ingest.written.iter().map(|w| w.body.len()).sum::<usize>()
            / q_ingest.written.len().max(1);
        report.notes.push(format!(
            "ingest: {} rounds of {} webhooks after {} warm-up, {} concurrent senders, the seed shapes in turn (mean body {mean_body} bytes); failures: qistatus {}, etcd {}, PostgreSQL {}.",
            s.rounds,
            s.ingest_per_round,
            s.warmup,
            s.concurrency,
            q_ingest.failures,
            e.map_or("—".into(), |e| e.failures.to_string()),
            p.map_or("—".into(), |p| p.failures.to_string()),
        ));
        report.row(
            "durable ingest",
            "webhooks acknowledged per second, flow kept vs --no-flow (same load, one after the other)",
            format!("{:.0}/s vs {:.0}/s", q_ingest.median_rate(), no_flow.median_rate()),
            Some(q_ingest.median_rate() / no_flow.median_rate()),
            "",
        );
        report.notes.extend(cpu_note(
            "ingest with and without the flow",
            &[
                ("flow kept", Some(&q_ingest)),
                ("--no-flow", Some(&no_flow)),
            ],
        ));
        if let Some(per_webhook) = keys_per_webhook {
            report.row(
                "durable ingest",
                "sled keys written per new webhook (qistatus_view_keys_written_total over the accepted)",
                format!("{per_webhook:.2}"),
                None,
                "≤ 2.5",
            );
        }
        if let Some(per_webhook) = no_flow_keys {
            report.row(
                "durable ingest",
                "the same, with --no-flow (what the flow's counters add is the difference)",
                format!("{per_webhook:.2}"),
                None,
                "",
            );
        }
        if let Some(ceiling) = &ceiling {
            report.notes.push(ceiling_note(ceiling, &q_ingest, e));
        }
        report.notes.extend(cpu_note(
            "ingest",
            &[
                ("qistatus", Some(&q_ingest)),
                ("etcd", e),
                ("the no-op receiver", ceiling.as_ref()),
            ],
        ));
    }
    if with_reads {
        let q = reads(&q_target, cx, &q_ingest.written, Some(&q_server)).await;
        // Reads while webhooks keep coming: what a read costs the intake, and the other way.
        let (read, written) = reads_under_ingest(&q_target, cx, &q_ingest.written).await;
        for (what, rounds) in [
            ("GetOperation while ingesting", &read),
            ("webhook acknowledged while reading", &written),
        ] {
            for (name, quantile) in [("p50", 0.5), ("p99", 0.99)] {
                report.row(
                    "reads under ingest",
                    &format!("{what}, {name} latency"),
                    ms(rounds.latency.value_at_quantile(quantile)),
                    None,
                    "",
                );
            }
        }
        report.notes.push(format!(
            "reads under ingest: {} GetOperation reads of the ingested keys by {} readers while {} senders post {} new webhooks, {} rounds; failures: reads {}, webhooks {}.",
            s.reads_per_round,
            s.concurrency / 2,
            s.concurrency / 2,
            s.ingest_per_round,
            s.rounds,
            read.failures,
            written.failures,
        ));
        let e = match &etcd {
            Some((server, target, rounds)) => {
                Some(reads(target, cx, &rounds.written, Some(server)).await)
            }
            None => None,
        };
        let p = match &postgres {
            Some((_, target, rounds)) => Some(reads(target, cx, &rounds.written, None).await),
            None => None,
        };
        report.compare(
            "point reads",
            "GetOperation vs serializable Range vs a select by primary key, per second",
            &q,
            [e.as_ref(), p.as_ref()],
            "≥ 1.5× etcd",
        );
        report.notes.push(format!(
            "reads: {} rounds of {} reads over the ingested keys, {} concurrent; GetOperation returns the operation with its history and each webhook's data, Range the stored payload, PostgreSQL the operation joined with its events' payloads; failures: qistatus {}, etcd {}, PostgreSQL {}.",
            s.rounds,
            s.reads_per_round,
            s.concurrency,
            q.failures,
            e.as_ref().map_or("—".into(), |e| e.failures.to_string()),
            p.as_ref().map_or("—".into(), |p| p.failures.to_string()),
        ));
        // A debt with the installments of QI's longest loans (monthly over 35 years) against
        // one with none, both with one webhook of their own: what listing parts costs a read.
        let (with_parts, without) = parts_reads(&q_target, cx).await;
        report.row(
            "point reads",
            "GetOperation of a debt listing 420 installments vs one with none, p50 (sequential, interleaved)",
            format!(
                "{} vs {}",
                ms(with_parts.value_at_quantile(0.5)),
                ms(without.value_at_quantile(0.5))
            ),
            Some(
                with_parts.value_at_quantile(0.5) as f64
                    / without.value_at_quantile(0.5).max(1) as f64,
            ),
            "",
        );
        // The same reads with each webhook's data as its JSON text.
        let json_target = q_target.with_view(qistatus::pb::OperationView::Json);
        let q_json = reads(&json_target, cx, &q_ingest.written, Some(&q_server)).await;
        report.compare(
            "point reads, data as JSON",
            "GetOperation (OPERATION_VIEW_JSON: each webhook's data as its JSON bytes) vs the same Range and select, per second",
            &q_json,
            [e.as_ref(), p.as_ref()],
            "≥ 1× PostgreSQL",
        );
        report.notes.extend(cpu_note(
            "reads",
            &[
                ("qistatus (Struct)", Some(&q)),
                ("qistatus (JSON)", Some(&q_json)),
                ("etcd", e.as_ref()),
            ],
        ));
    }
    if let Some((server, ..)) = etcd {
        server.stop().await;
    }
    drop(postgres);
    q_server.stop().await;
}

/// `qistatus-null-receiver`, built beside this harness (`cargo build --workspace --bins`).
fn null_receiver_bin() -> Option<std::path::PathBuf> {
    let bin = std::env::current_exe()
        .ok()?
        .with_file_name("qistatus-null-receiver");
    bin.exists().then_some(bin)
}

/// What the no-op receiver reached, beside qistatus and etcd.
fn ceiling_note(ceiling: &Rounds, q: &Rounds, etcd: Option<&Rounds>) -> String {
    let mut note = format!(
        "ceiling: a receiver that stores nothing (`qistatus-null-receiver`: the same hyper HTTP/1.1 server, reads the body, answers 200) acknowledged {:.0}/s in the same run; qistatus reached {:.0} % of it",
        ceiling.median_rate(),
        100.0 * q.median_rate() / ceiling.median_rate()
    );
    if let Some(e) = etcd {
        note.push_str(&format!(
            ", and it is {:.2}× etcd: no HTTP webhook receiver can go faster than that here, with the load generator on the same cores",
            ceiling.median_rate() / e.median_rate()
        ));
    }
    note.push('.');
    note
}

/// A warm-up, then `rounds` rounds of durable writes of distinct realistic webhooks; with the
/// `server`'s process, the CPU time it and the load generator spent per webhook.
pub(super) async fn ingest<T: Target>(
    target: &T,
    cx: &Context,
    server: Option<&Process>,
) -> Rounds {
    let s = cx.sizes;
    let meter = CpuMeter::start(server);
    let write_all = |batch: Arc<Vec<Webhook>>| {
        let target = target.clone();
        move |i: usize| {
            let (target, batch) = (target.clone(), batch.clone());
            async move { target.write(i, &batch[i]).await.is_some() }
        }
    };
    let warm = Arc::new(webhooks("warm", s.warmup, TEMPLATES));
    drive(s.concurrency, warm.len(), write_all(warm)).await;
    let mut out = Rounds::new();
    for round in 0..s.rounds {
        let batch = Arc::new(webhooks(
            &format!("r{round}"),
            s.ingest_per_round,
            TEMPLATES,
        ));
        let (elapsed, h, failed) =
            drive(s.concurrency, batch.len(), write_all(batch.clone())).await;
        out.failures += failed;
        out.rates.push(batch.len() as f64 / elapsed.as_secs_f64());
        out.latency.add(h).expect("same bounds");
        out.written.extend(batch.iter().cloned());
    }
    out.cpu = meter.and_then(|m| m.per_op(s.warmup + s.rounds * s.ingest_per_round));
    out
}

/// CPU time of a server process and of this harness, from a start to an end.
struct CpuMeter<'a> {
    server: &'a Process,
    /// Both clocks at the start: the server's, then this harness's.
    before: (Duration, Duration),
}

impl<'a> CpuMeter<'a> {
    /// Reads both clocks now; nothing when there is no process to read.
    fn start(server: Option<&'a Process>) -> Option<CpuMeter<'a>> {
        let server = server?;
        let before = (server.cpu_time()?, cpu_time_of("self")?);
        Some(CpuMeter { server, before })
    }

    /// What each side spent per operation since the start, over `ops` operations.
    fn per_op(&self, ops: usize) -> Option<CpuPerOp> {
        let ops = u32::try_from(ops).ok()?.max(1);
        Some(CpuPerOp {
            server: self.server.cpu_time()?.saturating_sub(self.before.0) / ops,
            load: cpu_time_of("self")?.saturating_sub(self.before.1) / ops,
        })
    }
}

/// The note on CPU time per operation of each measured server, in µs and in load-generator
/// units (the load generator does the same work per operation against every build, so the
/// ratio compares builds across runs on a host whose speed drifts); `None` when none was
/// measured.
fn cpu_note(what: &str, servers: &[(&str, Option<&Rounds>)]) -> Option<String> {
    let cpu: Vec<String> = servers
        .iter()
        .filter_map(|(name, rounds)| {
            let cpu = rounds.as_ref()?.cpu?;
            Some(format!(
                "{name} {} µs + load generator {} µs (server {:.2}× the load generator)",
                cpu.server.as_micros(),
                cpu.load.as_micros(),
                cpu.server.as_secs_f64() / cpu.load.as_secs_f64().max(f64::MIN_POSITIVE)
            ))
        })
        .collect();
    (!cpu.is_empty()).then(|| {
        format!(
            "{what} CPU time per operation (server process + this harness, which shares the machine's {} cores): {}. The load generator does the same work per operation against every build, so the server's CPU in load-generator units compares builds across runs on a host whose speed drifts.",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu.join("; ")
        )
    })
}

/// `rounds` rounds of point reads of the written operations (by half the concurrency) while
/// new webhooks are posted (by the other half), both at once: the reads' and the writes'.
async fn reads_under_ingest<T: Target>(
    target: &T,
    cx: &Context,
    written: &[Webhook],
) -> (Rounds, Rounds) {
    let s = cx.sizes;
    let half = (s.concurrency / 2).max(1);
    let keys = Arc::new(written.to_vec());
    let (mut reads, mut writes) = (Rounds::new(), Rounds::new());
    for round in 0..s.rounds {
        let batch = Arc::new(webhooks(
            &format!("mixed{round}"),
            s.ingest_per_round,
            TEMPLATES,
        ));
        let (reader, keys) = (target.clone(), keys.clone());
        let read = drive(half, s.reads_per_round, move |i| {
            let (target, keys) = (reader.clone(), keys.clone());
            async move {
                let w = &keys[(i * 7919 + round * 104_729) % keys.len()];
                target.read(i, w).await
            }
        });
        let writer = target.clone();
        let write = drive(half, batch.len(), move |i| {
            let (target, batch) = (writer.clone(), batch.clone());
            async move { target.write(i, &batch[i]).await.is_some() }
        });
        let ((read_time, read_h, read_failed), (write_time, write_h, write_failed)) =
            tokio::join!(read, write);
        reads.failures += read_failed;
        reads
            .rates
            .push(s.reads_per_round as f64 / read_time.as_secs_f64());
        reads.latency.add(read_h).expect("same bounds");
        writes.failures += write_failed;
        writes
            .rates
            .push(s.ingest_per_round as f64 / write_time.as_secs_f64());
        writes.latency.add(write_h).expect("same bounds");
    }
    (reads, writes)
}

/// `rounds` rounds of point reads of the written operations, in a scattered order.
pub(super) async fn reads<T: Target>(
    target: &T,
    cx: &Context,
    written: &[Webhook],
    server: Option<&Process>,
) -> Rounds {
    let s = cx.sizes;
    let meter = CpuMeter::start(server);
    let keys = Arc::new(written.to_vec());
    let mut out = Rounds::new();
    for round in 0..s.rounds {
        let (target, keys) = (target.clone(), keys.clone());
        let (elapsed, h, failed) = drive(s.concurrency, s.reads_per_round, move |i| {
            let (target, keys) = (target.clone(), keys.clone());
            async move {
                let w = &keys[(i * 7919 + round * 104_729) % keys.len()];
                target.read(i, w).await
            }
        })
        .await;
        out.failures += failed;
        out.rates
            .push(s.reads_per_round as f64 / elapsed.as_secs_f64());
        out.latency.add(h).expect("same bounds");
    }
    out.cpu = meter.and_then(|m| m.per_op(s.rounds * s.reads_per_round));
    out
}

/// Latencies (µs) of GetOperation on a debt listing 420 installments and on one listing none,
/// read one after the other, `cx.sizes.reads_per_round / 10` times each.
async fn parts_reads(
    target: &QistatusTarget,
    cx: &Context,
) -> (hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>) {
    let webhook = |kind: &str, key: &str, body: serde_json::Value| Webhook {
        kind: kind.to_owned(),
        key: key.to_owned(),
        body: serde_json::to_vec(&body).expect("JSON").into(),
    };
    let debt = |key: &str| {
        webhook(
            "debt",
            key,
            serde_json::json!({"webhook_type": "debt", "key": key, "status": "disbursed",
                               "event_datetime": "2026-01-01 10:00:00", "data": null}),
        )
    };
    let (whole, alone) = (debt("bench-parts-whole"), debt("bench-parts-alone"));
    for w in [&whole, &alone] {
        assert!(target.post_answer(0, w).await.is_some(), "a debt is stored");
    }
    for n in 0..420 {
        let installment = format!("bench-parts-installment-{n:03}");
        let payment = webhook(
            "installment.status_change",
            &installment,
            serde_json::json!({
                "key": whole.key, "webhook_type": "laas.credit_operation.installment.payment",
                "event_datetime": "2026-02-13 20:38:07",
                "data": {"installment_key": installment, "installment_status": "paid",
                         "paid_amount": 567.73}
            }),
        );
        assert!(
            target.post_answer(n, &payment).await.is_some(),
            "an installment is stored"
        );
    }
    let mut with_parts = hdrhistogram::Histogram::<u64>::new(3).expect("a histogram");
    let mut without = with_parts.clone();
    for _ in 0..(cx.sizes.reads_per_round / 10).max(100) {
        for (w, into) in [(&whole, &mut with_parts), (&alone, &mut without)] {
            let start = std::time::Instant::now();
            assert!(target.read(0, w).await, "a read of {}", w.key);
            into.record(start.elapsed().as_micros() as u64)
                .expect("in range");
        }
    }
    (with_parts, without)
}
