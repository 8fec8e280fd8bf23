//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! One [`Metrics`] per server (no process-wide registry), so tests can run several servers in
//! one process and read each one's own figures. Counters and histograms are updated where
//! things happen (intake, writer, gRPC edge, connection admission); gauges that describe
//! state (queue depth, open connections, watchers, log size) are read from their owners when
//! scraped, by the closure given to [`Metrics::encode`], so they are never stale.
//!
//! Label values are bounded: webhook kinds are the catalog's (anything else counts as
//! `other`), gRPC methods are the service's, results and codes are fixed sets. No label ever
//! carries a key or anything else from a webhook's body.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

use crate::domain::catalog::{Catalog, StatusClass};
use crate::domain::flow::{BUCKETS, Series, bucket_bounds, bucket_value};

/// What happened to a webhook at the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WebhookResult {
    /// Stored as a new event.
    Accepted,
    /// Seen before.
    Duplicate,
    /// Kept in the quarantine.
    Quarantined,
    /// Held by a cluster node until its stream takes it.
    Held,
    /// Refused as the sender's mistake (4xx other than 401).
    Refused,
    /// Refused: signature missing or wrong.
    Unauthorized,
    /// Not stored because of the server (503, 500).
    Failed,
}

impl WebhookResult {
    fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Duplicate => "duplicate",
            WebhookResult::Quarantined => "quarantined",
            WebhookResult::Held => "held",
            WebhookResult::Refused => "refused",
            WebhookResult::Unauthorized => "unauthorized",
            WebhookResult::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    kind: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OverdueLabels {
    kind: String,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QiApiLabels {
    call: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResendLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: &'static str,
}

/// The state read at each scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Webhooks waiting in the writer's queue.
    pub(crate) queue_depth: i64,
    /// Open intake connections.
    pub(crate) intake_connections: i64,
    /// Open gRPC connections.
    pub(crate) grpc_connections: i64,
    /// Open watch streams.
    pub(crate) watchers: i64,
    /// Watch streams whose queue is full: their readers do not read.
    pub(crate) watchers_stalled: i64,
    /// Bytes of the event log on disk.
    pub(crate) log_bytes: i64,
    /// The oldest sequence still in the log.
    pub(crate) oldest_sequence: i64,
    /// The newest committed sequence.
    pub(crate) head_sequence: i64,
    /// Log records not yet applied to the view.
    pub(crate) view_lag: i64,
    /// Webhooks in the quarantine.
    pub(crate) quarantined: i64,
    /// A cluster node: the last stream message applied, and the messages behind.
    pub(crate) stream: Option<(i64, i64)>,
    /// Operations overdue now: (kind, status, how many), one per expectation.
    pub(crate) overdue: Vec<(String, String, u64)>,
    /// Keys written to sled since the start.
    pub(crate) view_keys_written: u64,
    /// Changes worked out from the log for watchers behind the recent window, since the
    /// start.
    pub(crate) changes_from_log: u64,
    /// A cluster node: webhooks held for the stream now, and held files set aside as
    /// damaged since the start.
    pub(crate) held: Option<(i64, u64)>,
    /// Stage durations and delivery lags the writer counted since the start, by (kind,
    /// series), a count per bucket of [`crate::domain::flow`].
    pub(crate) flow: Vec<(String, Series, Vec<u64>)>,
    /// Recovery, when QI's API is configured: (the cursor's age, seconds since the last
    /// completed pass, callbacks followed, callbacks given up, whether this node recovers);
    /// an age is `-1` before the first.
    pub(crate) recovery: Option<(i64, i64, i64, i64, i64)>,
}

/// The server's metrics. Cheap to share (`Arc`), cheap to update (atomics).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    ack_seconds: Histogram,
    batch_size: Histogram,
    flush_seconds: Histogram,
    shed: Family<ListenerLabels, Counter>,
    grpc_requests: Family<GrpcLabels, Counter>,
    scrubbed_bytes: Counter,
    log_damage: Counter,
    event_times_ahead: Counter,
    overdue_events: Counter,
    overdue_ticks: Counter,
    qitech_api: Family<QiApiLabels, Counter>,
    resends: Family<ResendLabels, Counter>,
    given_up: Counter,
    view_keys_written: Counter,
    changes_from_log: Counter,
    held_damaged: Counter,
    flow: Arc<FlowCollector>,
    gauges: Gauges,
}

#[derive(Debug, Default)]
struct Gauges {
    queue_depth: Gauge,
    connections: Family<ListenerLabels, Gauge>,
    watchers: Gauge,
    watchers_stalled: Gauge,
    log_bytes: Gauge,
    oldest_sequence: Gauge,
    head_sequence: Gauge,
    view_lag: Gauge,
    quarantined: Gauge,
    stream_applied: Gauge,
    stream_lag: Gauge,
    held: Gauge,
    overdue: Family<OverdueLabels, Gauge>,
    recovery_cursor_age: Gauge,
    recovery_pass_age: Gauge,
    recovery_pending: Gauge,
    recovery_given_up: Gauge,
    recovery_leading: Gauge,
}

impl Metrics {
    /// A fresh set, registered under the `qistatus_` prefix.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("qistatus");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhooks received, by kind (the catalog's, else `other`) and result",
            webhooks.clone(),
        );
        // 100 µs to ~3 s.
        let ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "ack_seconds",
            "Time from a webhook's arrival to its answer, in seconds",
            ack_seconds.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "writer_batch_size",
            "Webhooks committed per writer batch",
            batch_size.clone(),
        );
        let flush_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "writer_flush_seconds",
            "Time to append a batch to the log and fsync it, in seconds",
            flush_seconds.clone(),
        );
        let shed = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_shed",
            "Connections refused or evicted at the connection limit, by listener",
            shed.clone(),
        );
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls, by method and status code",
            grpc_requests.clone(),
        );
        let gauges = Gauges::default();
        registry.register(
            "writer_queue_depth",
            "Webhooks waiting for the writer",
            gauges.queue_depth.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections, by listener",
            gauges.connections.clone(),
        );
        registry.register("watchers", "Open watch streams", gauges.watchers.clone());
        registry.register(
            "watchers_stalled",
            "Watch streams whose queue is full, waiting for their reader (each holds at most \
             its queue)",
            gauges.watchers_stalled.clone(),
        );
        registry.register(
            "log_bytes",
            "Bytes of the event log on disk",
            gauges.log_bytes.clone(),
        );
        registry.register(
            "log_oldest_sequence",
            "The oldest sequence still retained (watchers cannot resume from before it)",
            gauges.oldest_sequence.clone(),
        );
        registry.register(
            "log_head_sequence",
            "The newest committed sequence",
            gauges.head_sequence.clone(),
        );
        registry.register(
            "view_lag",
            "Log records not yet applied to the view",
            gauges.view_lag.clone(),
        );
        registry.register(
            "quarantined",
            "Webhooks in the quarantine",
            gauges.quarantined.clone(),
        );
        registry.register(
            "stream_applied_sequence",
            "A cluster node: the last stream message its view applied (0 on a single node)",
            gauges.stream_applied.clone(),
        );
        registry.register(
            "overdue_operations",
            "Operations that have held a status longer than the catalog expects, by kind and \
             status (one series per expectation)",
            gauges.overdue.clone(),
        );
        registry.register(
            "stream_lag",
            "A cluster node: stream messages not applied yet (0 on a single node)",
            gauges.stream_lag.clone(),
        );
        let scrubbed_bytes = Counter::default();
        registry.register(
            "scrubbed_bytes",
            "Bytes of sealed log segments the background scrub has read and checked",
            scrubbed_bytes.clone(),
        );
        let log_damage = Counter::default();
        registry.register(
            "log_damage",
            "Damaged stretches of the log found by the background scrub (any is an incident)",
            log_damage.clone(),
        );
        let event_times_ahead = Counter::default();
        registry.register(
            "event_times_ahead",
            "Webhooks whose event time was later than their receipt by more than the catalog \
             believes: ordered at their receive time (a clock gone wrong, or a forged date)",
            event_times_ahead.clone(),
        );
        let view_keys_written = Counter::default();
        registry.register(
            "view_keys_written",
            "Keys written to the sled view (inserts and removals): its cost is per key, so over \
             qistatus_webhooks_total{result=\"accepted\"} this is the view's cost per webhook",
            view_keys_written.clone(),
        );
        let changes_from_log = Counter::default();
        registry.register(
            "feed_changes_from_log",
            "Changes worked out from the log for watchers behind the recent window (resuming \
             or slow), once for all that need them while cached: each costs a read of the log \
             and a reconciliation of its operation, where the window costs nothing",
            changes_from_log.clone(),
        );
        registry.register(
            "cluster_held_webhooks",
            "A cluster node: webhooks acknowledged while the stream could not take them, held \
             on this node's disk until it does (0 on a single node); any for long is an incident",
            gauges.held.clone(),
        );
        let flow = Arc::new(FlowCollector::default());
        registry.register_collector(Box::new(flow.clone()));
        let held_damaged = Counter::default();
        registry.register(
            "cluster_held_damaged",
            "A cluster node: held webhooks whose file did not read back, set aside unpublished \
             (any is an incident)",
            held_damaged.clone(),
        );
        let overdue_events = Counter::default();
        registry.register(
            "overdue_events",
            "Overdue events recorded: the moments operations became overdue, each once per \
             operation and status (the same on every node of a cluster)",
            overdue_events.clone(),
        );
        let overdue_ticks = Counter::default();
        registry.register(
            "overdue_ticks",
            "Times the overdue clock looked for operations that fell overdue (each tick, and \
             each further page of a backlog): flat means nobody is told of silence any more",
            overdue_ticks.clone(),
        );
        let qitech_api = Family::<QiApiLabels, Counter>::default();
        registry.register(
            "qitech_api_requests",
            "Calls to QI's API (recovery), by call (list_events, resend) and outcome (ok, \
             retried, refused, unavailable, bad_answer)",
            qitech_api.clone(),
        );
        let resends = Family::<ResendLabels, Counter>::default();
        registry.register(
            "recovery_resends",
            "Callbacks QI was asked to resend, by reason (failed_callback, overdue, by_hand)",
            resends.clone(),
        );
        let given_up = Counter::default();
        registry.register(
            "recovery_given_up",
            "Callbacks QI still listed as failed after every resend, given up on since the \
             start (the console's overview lists the latest)",
            given_up.clone(),
        );
        registry.register(
            "recovery_cursor_age_seconds",
            "How far behind now recovery's cursor is: every failed callback before it was \
             asked for (-1 before the first pass; 0 when QI's API is not configured)",
            gauges.recovery_cursor_age.clone(),
        );
        registry.register(
            "recovery_last_pass_age_seconds",
            "Seconds since recovery last completed a pass (-1 before the first)",
            gauges.recovery_pass_age.clone(),
        );
        registry.register(
            "recovery_pending_callbacks",
            "Callbacks asked to be resent and not yet seen delivered",
            gauges.recovery_pending.clone(),
        );
        registry.register(
            "recovery_given_up_callbacks",
            "Callbacks given up on since the store began (kept with recovery's state)",
            gauges.recovery_given_up.clone(),
        );
        registry.register(
            "recovery_leading",
            "1 on the node that recovers (a single node, or a cluster's lease holder), else 0",
            gauges.recovery_leading.clone(),
        );
        Metrics {
            qitech_api,
            resends,
            given_up,
            overdue_ticks,
            registry,
            view_keys_written,
            changes_from_log,
            held_damaged,
            flow,
            overdue_events,
            scrubbed_bytes,
            log_damage,
            event_times_ahead,
            webhooks,
            ack_seconds,
            batch_size,
            flush_seconds,
            shed,
            grpc_requests,
            gauges,
        }
    }

    /// Records `bytes` of the log scrubbed, with `damage` stretches found in them.
    pub(crate) fn scrubbed(&self, bytes: u64, damage: usize) {
        self.scrubbed_bytes.inc_by(bytes);
        self.log_damage.inc_by(damage as u64);
    }

    /// Counts a call to QI's API that ended with `outcome` (or one try that was retried).
    pub(crate) fn qitech_api_call(&self, call: &'static str, outcome: &'static str) {
        self.qitech_api
            .get_or_create(&QiApiLabels { call, outcome })
            .inc();
    }

    /// Counts a callback QI was asked to resend, for `reason`.
    pub(crate) fn recovery_resend(&self, reason: &'static str) {
        self.resends.get_or_create(&ResendLabels { reason }).inc();
    }

    /// Counts a callback given up on.
    pub(crate) fn recovery_given_up(&self) {
        self.given_up.inc();
    }

    /// Counts a look of the overdue clock, once it is over (what it found proposed).
    pub(crate) fn overdue_looked(&self) {
        self.overdue_ticks.inc();
    }

    /// Counts a webhook whose event time is ahead of its receipt (see
    /// [`crate::domain::reconcile::Reconciler::ordering_time`]).
    pub(crate) fn event_time_ahead(&self) {
        self.event_times_ahead.inc();
    }

    /// Counts a webhook of `kind` (already bounded to the catalog's kinds or `other`).
    pub(crate) fn webhook(&self, kind: &str, result: WebhookResult, seconds: f64) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                kind: kind.to_owned(),
                result: result.as_str(),
            })
            .inc();
        self.ack_seconds.observe(seconds);
    }

    /// The counter of connections shed by `listener`.
    pub(crate) fn shed_counter(&self, listener: &'static str) -> Counter {
        self.shed.get_or_create_owned(&ListenerLabels { listener })
    }

    /// Counts a gRPC call of `method` (the path's last segment) ending with `code`.
    pub(crate) fn grpc_call(&self, method: &str, code: tonic::Code) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code_name(code),
            })
            .inc();
    }

    /// The metrics in Prometheus' text format, with the gauges set from `snapshot`.
    pub(crate) fn encode(&self, snapshot: Snapshot) -> String {
        let g = &self.gauges;
        g.queue_depth.set(snapshot.queue_depth);
        // Counters the store and the feed keep: brought up to their values (they only grow).
        for (counter, value) in [
            (&self.view_keys_written, snapshot.view_keys_written),
            (&self.changes_from_log, snapshot.changes_from_log),
            (&self.held_damaged, snapshot.held.unwrap_or_default().1),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        for (listener, open) in [
            ("intake", snapshot.intake_connections),
            ("grpc", snapshot.grpc_connections),
        ] {
            g.connections
                .get_or_create(&ListenerLabels { listener })
                .set(open);
        }
        g.watchers.set(snapshot.watchers);
        g.watchers_stalled.set(snapshot.watchers_stalled);
        g.log_bytes.set(snapshot.log_bytes);
        g.oldest_sequence.set(snapshot.oldest_sequence);
        g.head_sequence.set(snapshot.head_sequence);
        g.view_lag.set(snapshot.view_lag);
        g.quarantined.set(snapshot.quarantined);
        let (applied, lag) = snapshot.stream.unwrap_or_default();
        g.stream_applied.set(applied);
        g.stream_lag.set(lag);
        g.held.set(snapshot.held.unwrap_or_default().0);
        let (cursor_age, pass_age, pending, given_up, leading) =
            snapshot.recovery.unwrap_or_default();
        g.recovery_leading.set(leading);
        g.recovery_cursor_age.set(cursor_age);
        g.recovery_pass_age.set(pass_age);
        g.recovery_pending.set(pending);
        g.recovery_given_up.set(given_up);
        // An expectation a reload removed has no series left.
        g.overdue.clear();
        for (kind, status, count) in snapshot.overdue {
            g.overdue
                .get_or_create(&OverdueLabels { kind, status })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        *self.flow.lock() = snapshot.flow;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The flow's histograms, `qistatus_stage_duration_seconds{kind,from,to}` and
/// `qistatus_delivery_lag_seconds{kind}`, from what the writer counted (set at each scrape by
/// [`Metrics::encode`]). Their buckets are every eighth of the flow's own (1 s, 4 s, 16 s,
/// ... each 4× the last, to 2^26 s), so each count falls in the bucket it belongs to; the
/// sum takes each duration as its bucket's middle.
#[derive(Debug, Default)]
struct FlowCollector {
    current: Mutex<Vec<(String, Series, Vec<u64>)>>,
}

impl FlowCollector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Series, Vec<u64>)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The flow's series with their labels bounded as every other label here: a kind the catalog
/// does not know is `other`, and so is a status the catalog does not know for its kind (a
/// webhook may carry any); series that become the same are added together.
pub(crate) fn flow_labelled(
    catalog: &Catalog,
    seen: Vec<(String, Series, Vec<u64>)>,
) -> Vec<(String, Series, Vec<u64>)> {
    const OTHER: &str = "other";
    let mut merged: std::collections::BTreeMap<(String, Series), Vec<u64>> = Default::default();
    for (kind, series, counts) in seen {
        let known = catalog.kind(&kind).is_some();
        let status = |status: String| {
            if known && catalog.classify(&kind, &status) != StatusClass::Unknown {
                status
            } else {
                OTHER.to_owned()
            }
        };
        let series = match series {
            Series::Stage { from, to } => Series::Stage {
                from: status(from),
                to: status(to),
            },
            other => other,
        };
        let kind = if known { kind } else { OTHER.to_owned() };
        let into = merged
            .entry((kind, series))
            .or_insert_with(|| vec![0; counts.len()]);
        for (total, count) in into.iter_mut().zip(counts) {
            *total += count;
        }
    }
    merged
        .into_iter()
        .map(|((kind, series), counts)| (kind, series, counts))
        .collect()
}

/// Histograms here carry no exemplars.
type NoExemplars = HashMap<usize, Exemplar<Vec<(String, String)>, f64>>;

/// A flow series' counts as Prometheus' buckets (each bound with the count since the bound
/// before it: the encoder makes them cumulative), with its sum and count.
fn prometheus_buckets(counts: &[u64]) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::new();
    let (mut sum, mut total, mut since_last) = (0.0, 0u64, 0u64);
    for (b, &count) in counts.iter().enumerate() {
        let b = u8::try_from(b).unwrap_or(u8::MAX);
        total += count;
        since_last += count;
        sum += bucket_value(b) * count as f64;
        if b % 8 == 0 && b + 1 < BUCKETS {
            buckets.push((bucket_bounds(b).1, std::mem::take(&mut since_last)));
        }
    }
    buckets.push((f64::INFINITY, since_last));
    (sum, total, buckets)
}

impl Collector for FlowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let current = self.lock();
        let no_exemplars: Option<&NoExemplars> = None;
        let mut stages = encoder.encode_descriptor(
            "stage_duration_seconds",
            "Time from one status of an operation to the next, between their event times, by \
             kind and statuses, as the writer counted them since the start (a late webhook \
             adds the stages it makes; qistatus flow answers with corrections)",
            None,
            MetricType::Histogram,
        )?;
        for (kind, series, counts) in current.iter() {
            if let Series::Stage { from, to } = series {
                let labels = vec![
                    ("kind".to_owned(), kind.clone()),
                    ("from".to_owned(), from.clone()),
                    ("to".to_owned(), to.clone()),
                ];
                let (sum, count, buckets) = prometheus_buckets(counts);
                stages.encode_family(&labels)?.encode_histogram(
                    sum,
                    count,
                    &buckets,
                    no_exemplars,
                )?;
            }
        }
        let mut lag = encoder.encode_descriptor(
            "delivery_lag_seconds",
            "Receipt minus event time of each webhook, by kind, since the start: how late QI's \
             webhooks arrive",
            None,
            MetricType::Histogram,
        )?;
        for (kind, series, counts) in current.iter() {
            if *series == Series::Lag {
                let labels = vec![("kind".to_owned(), kind.clone())];
                let (sum, count, buckets) = prometheus_buckets(counts);
                lag.encode_family(&labels)?
                    .encode_histogram(sum, count, &buckets, no_exemplars)?;
            }
        }
        Ok(())
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl crate::store::BatchReport for Metrics {
    /// Records a writer batch: its size and how long the log append (with its fsync) took.
    fn batch_appended(&self, records: usize, append: std::time::Duration) {
        self.batch_size.observe(records as f64);
        self.flush_seconds.observe(append.as_secs_f64());
    }

    fn overdue_recorded(&self, events: usize) {
        self.overdue_events.inc_by(events as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_histograms_and_scraped_gauges() {
        let metrics = Metrics::new();
        metrics.webhook("debt", WebhookResult::Accepted, 0.002);
        metrics.webhook("debt", WebhookResult::Accepted, 0.003);
        metrics.webhook("other", WebhookResult::Refused, 0.0001);
        metrics.shed_counter("intake").inc();
        metrics.grpc_call("GetOperation", tonic::Code::NotFound);
        metrics.encode(Snapshot {
            view_keys_written: 5,
            ..Snapshot::default()
        });
        let text = metrics.encode(Snapshot {
            watchers: 3,
            watchers_stalled: 2,
            view_keys_written: 12,
            changes_from_log: 7,
            held: Some((4, 1)),
            flow: vec![
                (
                    "debt".into(),
                    Series::Stage {
                        from: "waiting_signature".into(),
                        to: "disbursed".into(),
                    },
                    // One under a second, two of 2 to 2.38 s, one of about 3 days.
                    {
                        let mut counts = vec![0; BUCKETS.into()];
                        counts[0] = 1;
                        counts[5] = 2;
                        counts[usize::from(crate::domain::flow::bucket_of(3 * 86_400_000))] = 1;
                        counts
                    },
                ),
                ("debt".into(), Series::Lag, {
                    let mut counts = vec![0; BUCKETS.into()];
                    counts[1] = 3;
                    counts
                }),
            ],
            ..Snapshot::default()
        });
        for line in [
            "qistatus_webhooks_total{kind=\"debt\",result=\"accepted\"} 2",
            "qistatus_webhooks_total{kind=\"other\",result=\"refused\"} 1",
            "qistatus_connections_shed_total{listener=\"intake\"} 1",
            "qistatus_grpc_requests_total{method=\"GetOperation\",code=\"NOT_FOUND\"} 1",
            "qistatus_ack_seconds_count 3",
            "qistatus_watchers 3",
            "qistatus_watchers_stalled 2",
            "qistatus_view_keys_written_total 12",
            "qistatus_feed_changes_from_log_total 7",
            "qistatus_cluster_held_webhooks 4",
            "qistatus_cluster_held_damaged_total 1",
            "qistatus_stage_duration_seconds_bucket{le=\"1.0\",kind=\"debt\",from=\"waiting_signature\",to=\"disbursed\"} 1",
            "qistatus_stage_duration_seconds_bucket{le=\"4.0\",kind=\"debt\",from=\"waiting_signature\",to=\"disbursed\"} 3",
            "qistatus_stage_duration_seconds_bucket{le=\"65536.0\",kind=\"debt\",from=\"waiting_signature\",to=\"disbursed\"} 3",
            "qistatus_stage_duration_seconds_bucket{le=\"262144.0\",kind=\"debt\",from=\"waiting_signature\",to=\"disbursed\"} 4",
            "qistatus_stage_duration_seconds_count{kind=\"debt\",from=\"waiting_signature\",to=\"disbursed\"} 4",
            "qistatus_delivery_lag_seconds_bucket{le=\"4.0\",kind=\"debt\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
    #[test]
    fn flow_labels_are_the_catalogs_or_other() {
        let catalog = Catalog::builtin();
        let stage = |kind: &str, from: &str, to: &str, counts: Vec<u64>| {
            (
                kind.to_owned(),
                Series::Stage {
                    from: from.into(),
                    to: to.into(),
                },
                counts,
            )
        };
        let labelled = flow_labelled(
            &catalog,
            vec![
                stage("debt", "waiting_signature", "disbursed", vec![1, 2]),
                stage("debt", "made_up_status", "disbursed", vec![1, 2]),
                stage("debt", "another_made_up", "disbursed", vec![1, 2]),
                stage("made_up_kind", "a", "b", vec![1, 2]),
                ("made_up_kind".into(), Series::Lag, vec![0, 5]),
            ],
        );
        assert_eq!(
            labelled,
            [
                stage("debt", "other", "disbursed", vec![2, 4]),
                stage("debt", "waiting_signature", "disbursed", vec![1, 2]),
                stage("other", "other", "other", vec![1, 2]),
                ("other".into(), Series::Lag, vec![0, 5]),
            ]
        );
    }
}
