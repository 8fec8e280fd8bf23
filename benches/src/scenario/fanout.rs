//! Watch fan-out: many watchers (by key, and by a share of all keys) while webhooks arrive
//! at a fixed rate; measures each delivery from the write's acknowledgement and from its
//! sending, and counts lost deliveries.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::Context;
use crate::load::{Webhook, histogram};
use crate::process::Process;
use crate::report::{Report, ms};
use crate::target::{EtcdTarget, Feed, QistatusTarget, WatchSpec, Watchable};

/// Runs the scenario against qistatus and, when available, etcd.
pub async fn run(cx: &Context, report: &mut Report) {
    eprintln!("== watch fan-out");
    let (server, _) = cx.qistatus.start(&cx.dir("q-watch"), None).await;
    let q = fanout(&QistatusTarget::connect(&server).await, cx).await;
    server.stop().await;
    let e = match &cx.etcd_bin {
        Some(bin) => {
            let server: Process = crate::process::start_etcd(bin, &cx.dir("e-watch")).await;
            let r = fanout(&EtcdTarget::connect(&server).await, cx).await;
            server.stop().await;
            Some(r)
        }
        None => None,
    };
    let quantile = |r: &FanoutResult, send: bool, q: f64| {
        ms(if send { &r.from_send } else { &r.latency }.value_at_quantile(q))
    };
    for (label, send, quant, target) in [
        ("delivery latency p50 (ack to receipt)", false, 0.5, ""),
        (
            "delivery latency p99 (ack to receipt)",
            false,
            0.99,
            "p99 ≤ 10 ms",
        ),
        ("delivery latency p50 (send to receipt)", true, 0.5, ""),
        ("delivery latency p99 (send to receipt)", true, 0.99, ""),
    ] {
        report.watch_row(
            label,
            quantile(&q, send, quant),
            e.as_ref().map(|e| quantile(e, send, quant)),
            target,
        );
    }
    let lost = |r: &FanoutResult| r.expected.saturating_sub(r.delivered).to_string();
    report.watch_row("changes lost", lost(&q), e.as_ref().map(lost), "0");
    let s = cx.sizes;
    report.notes.push(format!(
        "watch: {} watchers ({} by key, {} by status filter in qistatus and by key prefix in etcd, each receiving the same share), {} webhooks sent at {}/s (achieved: qistatus {:.0}/s, etcd {}); deliveries expected {}, received: qistatus {}, etcd {}. A change can reach a watcher before its writer reads the acknowledgement: such a delivery counts as 0 ms from the ack.",
        s.key_watchers + s.filter_watchers,
        s.key_watchers,
        s.filter_watchers,
        s.watch_keys * s.watch_steps,
        s.watch_rate,
        q.sent_rate,
        e.as_ref().map_or("—".into(), |e| format!("{:.0}/s", e.sent_rate)),
        q.expected,
        q.delivered,
        e.as_ref().map_or("—".into(), |e| e.delivered.to_string()),
    ));
}

fn fanout_webhook(key: usize, step: usize, steps: usize) -> Webhook {
    let key_text = format!("f{:02}-k{key:05}", key % steps);
    let body = serde_json::json!({
        "webhook_type": "bench",
        "key": key_text,
        "status": format!("s{step:02}"),
        "event_datetime": format!("2024-01-01T{:02}:{:02}:00Z", step / 60, step % 60),
        "data": {"settlement_amount": 3429.38, "step": step},
    });
    Webhook {
        kind: "bench".into(),
        key: key_text,
        body: Bytes::from(serde_json::to_vec(&body).expect("serializes")),
    }
}

struct FanoutResult {
    latency: Histogram<u64>,
    from_send: Histogram<u64>,
    expected: u64,
    delivered: u64,
    sent_rate: f64,
}

/// Paces `total` sends at `rate` per second; `send(i)` returns the write's position, whose
/// send and ack times are recorded in `acks`.
async fn paced_sends<F, Fut>(total: usize, rate: u64, acks: Acks, send: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<u64>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (send, acks) = (send.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            if let Some(seq) = send(i).await
                && let Some(slot) = acks.get(seq as usize)
            {
                let _ = slot.set(Acked {
                    sent,
                    acked: Instant::now(),
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// When a write was sent and acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acked {
    sent: Instant,
    acked: Instant,
}

type Acks = Arc<Vec<OnceLock<Acked>>>;

/// Delivery latencies of one watcher: from the write's acknowledgement, and from its sending.
struct Deliveries {
    from_ack: Histogram<u64>,
    from_send: Histogram<u64>,
    pending: Vec<(u64, Instant)>,
}

impl Deliveries {
    fn new() -> Self {
        Deliveries {
            from_ack: histogram(),
            from_send: histogram(),
            pending: Vec::new(),
        }
    }

    /// Records the delivery of write `seq` at `at`. One that arrives before its writer saw
    /// the ack is measured once the ack is known (and counts as 0 from the ack).
    fn record(&mut self, acks: &[OnceLock<Acked>], seq: u64, at: Instant) {
        match acks.get(seq as usize).and_then(OnceLock::get) {
            Some(a) => {
                let micros =
                    |from: Instant| at.saturating_duration_since(from).as_micros().max(1) as u64;
                let _ = self.from_ack.record(micros(a.acked));
                let _ = self.from_send.record(micros(a.sent));
            }
            None => self.pending.push((seq, at)),
        }
    }

    /// Adds this watcher's latencies to `into` (from ack, from send).
    fn finish(mut self, acks: &[OnceLock<Acked>], into: &Mutex<(Histogram<u64>, Histogram<u64>)>) {
        for (seq, at) in std::mem::take(&mut self.pending) {
            if acks.get(seq as usize).and_then(OnceLock::get).is_some() {
                self.record(acks, seq, at);
            }
        }
        let mut into = into.lock().expect("not poisoned");
        into.0.add(self.from_ack).expect("same bounds");
        into.1.add(self.from_send).expect("same bounds");
    }
}

/// Opens the watchers, sends the fan-out workload at its rate, and measures deliveries.
async fn fanout<T: Watchable>(target: &T, cx: &Context) -> FanoutResult {
    let sizes = cx.sizes;
    let total = sizes.watch_keys * sizes.watch_steps;
    let acks: Acks = Arc::new((0..total + 64).map(|_| OnceLock::new()).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new((histogram(), histogram())));
    let (done_tx, _) = tokio::sync::watch::channel(false);
    let mut expected = 0u64;
    let mut watchers = Vec::new();
    for w in 0..sizes.key_watchers + sizes.filter_watchers {
        let spec = if w < sizes.key_watchers {
            let key = w % sizes.watch_keys;
            expected += sizes.watch_steps as u64;
            WatchSpec::Key(format!("f{:02}-k{key:05}", key % sizes.watch_steps))
        } else {
            // Status s{g} in qistatus and key group f{g} in etcd: each 1/steps of the writes.
            let group = w % sizes.watch_steps;
            expected += sizes.watch_keys as u64;
            WatchSpec::Share {
                status: format!("s{group:02}"),
                key_prefix: format!("f{group:02}-"),
            }
        };
        let mut feed = target.watch(w, spec).await;
        let (acks, delivered, latencies, mut done) = (
            acks.clone(),
            delivered.clone(),
            latencies.clone(),
            done_tx.subscribe(),
        );
        watchers.push(tokio::spawn(async move {
            let mut d = Deliveries::new();
            loop {
                let positions = tokio::select! {
                    p = feed.next() => p,
                    _ = done.changed() => break,
                };
                let Some(positions) = positions else { break };
                let at = Instant::now();
                for position in positions {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    d.record(&acks, position, at);
                }
            }
            d.finish(&acks, &latencies);
        }));
    }
    let (steps, keys, sender) = (sizes.watch_steps, sizes.watch_keys, target.clone());
    let sent_rate = paced_sends(total, sizes.watch_rate, acks.clone(), move |i| {
        let sender = sender.clone();
        async move {
            sender
                .write(i, &fanout_webhook(i % keys, i / keys, steps))
                .await
        }
    })
    .await;
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done_tx.send(true);
    for w in watchers {
        let _ = w.await;
    }
    let (latency, from_send) = latencies.lock().expect("not poisoned").clone();
    FanoutResult {
        latency,
        from_send,
        expected,
        delivered: delivered.load(Ordering::Relaxed),
        sent_rate,
    }
}
