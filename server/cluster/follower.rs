//! Following the stream: every message, in stream order, into this node's writer.
//!
//! The follower queues messages to the writer in stream order without waiting for each
//! answer (the writer batches them, one local fsync per batch) and takes the answers in the
//! same order, so [`Progress`] moves forward one stream sequence at a time. If the stream
//! subscription breaks, it is made again from the message after the last one queued; the
//! answers already on their way are still taken.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    ClusterError, JetStreamLog, OVERDUE_RECORD, OverdueProposal, RECEIVED_HEADER, RECORD_HEADER,
};
use crate::backoff::Backoff;
use crate::domain::catalog::Catalog;
use crate::domain::webhook::normalize_with_facts;
use crate::store::{Ack, StreamOrigin, SubmitError, WriterHandle};

/// Most messages queued to the writer and not yet answered: twice a batch, so that the
/// writer always has the next batch waiting.
const MAX_IN_FLIGHT: usize = 1024;
/// A subscription quiet this long is checked against the stream's bounds (a JetStream API
/// request): a subscription that went silent when its server died is noticed within about
/// twice this, which an acknowledgement waiting for this node's view waits on.
const STALL_CHECK: Duration = Duration::from_millis(500);
/// Longest a new subscription to the stream may take before it is tried again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many recent answers are kept for the intake that published them (a few seconds of
/// traffic; an answer no longer here is read from the view instead).
const RECENT_OUTCOMES: usize = 65_536;
/// A node further behind the stream than this is not ready (it would answer reads with old
/// state).
pub const MAX_READY_LAG: u64 = 1_000;

/// How far this node's view has followed the stream, shared by the follower (which moves it)
/// and the intake and readiness (which read it).
#[derive(Debug)]
pub struct Progress {
    state: watch::Sender<State>,
    outcomes: Mutex<VecDeque<(u64, Ack)>>,
    lag: AtomicU64,
    /// The last stream message this node knows is in the stream without asking it: the
    /// highest one its publishes were acknowledged at (and someone waits for).
    known_end: AtomicU64,
    log: Arc<JetStreamLog>,
}

#[derive(Debug, Clone, Default)]
struct State {
    applied: u64,
    failed: Option<Arc<str>>,
}

impl Progress {
    /// Progress of a view that took messages up to `through` into account, on a stream that
    /// ends at `last`.
    pub(crate) fn new(log: Arc<JetStreamLog>, through: u64, last: u64) -> Progress {
        Progress {
            state: watch::Sender::new(State {
                applied: through,
                failed: None,
            }),
            outcomes: Mutex::new(VecDeque::new()),
            lag: AtomicU64::new(last.saturating_sub(through)),
            known_end: AtomicU64::new(last),
            log,
        }
    }

    /// The last stream message this node's view applied.
    pub fn applied_through(&self) -> u64 {
        self.state.borrow().applied
    }

    /// Messages in the stream this node has not applied yet, as of the last one applied.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Why this node should not take traffic now, if it should not.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(failed) = &self.state.borrow().failed {
            return Some(format!("stopped following the stream: {failed}"));
        }
        if !self.log.connected() {
            return Some("not connected to NATS".into());
        }
        let lag = self.lag();
        (lag > MAX_READY_LAG).then(|| format!("catching up with the stream: {lag} messages behind"))
    }

    /// Waits until the view has applied stream message `sequence`, which the stream
    /// acknowledged.
    pub(crate) async fn applied(&self, sequence: u64) -> Result<(), ClusterError> {
        self.known_end.fetch_max(sequence, Ordering::Relaxed);
        let mut state = self.state.subscribe();
        let state = state
            .wait_for(|s| s.applied >= sequence || s.failed.is_some())
            .await
            .map_err(|_| ClusterError::Follower("the follower is gone".into()))?;
        match &state.failed {
            Some(why) if state.applied < sequence => Err(ClusterError::Follower(why.to_string())),
            _ => Ok(()),
        }
    }

    /// The writer's answer to stream message `sequence`, if it is recent.
    pub(crate) fn outcome(&self, sequence: u64) -> Option<Ack> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        // Recorded in increasing sequence (not consecutive: messages that were not webhooks
        // have no answer).
        let at = outcomes.binary_search_by_key(&sequence, |(s, _)| *s).ok()?;
        Some(outcomes[at].1.clone())
    }

    fn record(&self, sequence: u64, ack: Option<Ack>, pending: u64) {
        if let Some(ack) = ack {
            let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            if outcomes.len() == RECENT_OUTCOMES {
                outcomes.pop_front();
            }
            outcomes.push_back((sequence, ack));
        }
        self.lag.store(pending, Ordering::Relaxed);
        self.state
            .send_modify(|s| s.applied = s.applied.max(sequence));
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "this node stopped following the stream; restart it");
        self.state.send_modify(|s| s.failed = Some(why.into()));
    }
}

/// One answer on its way: the message's stream sequence, the messages after it, and the
/// writer's answer (`None` for a message that is not a webhook).
type Answer = (u64, u64, Result<Option<Ack>, SubmitError>);

/// Follows the stream from the message after [`Progress::applied_through`] into `writer`
/// until `stop`. Stops early (and says so in `progress`) only if the writer fails.
pub(crate) async fn follow(
    log: Arc<JetStreamLog>,
    writer: WriterHandle,
    catalog: Arc<Catalog>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let mut queued = progress.applied_through();
    let mut messages = None;
    let mut in_flight = FuturesOrdered::new();
    let mut last_message = tokio::time::Instant::now();
    let mut watchdog = tokio::time::interval(STALL_CHECK);
    let mut backoff = Backoff::new();
    loop {
        if messages.is_none() {
            // Bounded: right after a leader's death, creating the consumer can hang on a
            // request nobody answers; another try goes to whoever leads by then.
            let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&log, queued))
                .await
                .unwrap_or_else(|_| {
                    Err(ClusterError::Follower(format!(
                        "no consumer within {SUBSCRIBE_TIMEOUT:?}"
                    )))
                });
            match subscribed {
                Ok(stream) => {
                    tracing::debug!(after = queued, "following the stream");
                    backoff.reset();
                    messages = Some(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the stream yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
        let stream = messages
            .as_mut()
            .expect("the subscription was made just above when missing");
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            Some((sequence, pending, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                match answer {
                    Ok(ack) => progress.record(sequence, ack, pending),
                    Err(e) => {
                        progress.fail(format!("the writer failed at stream message {sequence}: {e}"));
                        return;
                    }
                }
            }
            _ = watchdog.tick() => {
                if last_message.elapsed() < STALL_CHECK {
                    continue;
                }
                // Quiet while this node's own publish waits past what it applied: silent,
                // whatever the stream's bounds would say (asking the stream for them takes
                // a leader, which an election has not given it yet).
                let known = progress.known_end.load(Ordering::Relaxed);
                if known > queued {
                    tracing::warn!(after = queued, published = known, "the stream subscription went silent under a publish; following again");
                    progress.lag.store(known.saturating_sub(progress.applied_through()), Ordering::Relaxed);
                    messages = None;
                    last_message = tokio::time::Instant::now();
                    continue;
                }
                // Quiet: either nothing new, or a subscription that went silent (its server
                // died; the client notices only after two missed 15 s heartbeats). The
                // stream's bounds tell which.
                match tokio::time::timeout(STALL_CHECK, log.bounds()).await {
                    Ok(Ok((_, last))) if last > queued => {
                        tracing::warn!(after = queued, stream_ends = last, "the stream subscription went silent; following again");
                        progress.lag.store(last - progress.applied_through(), Ordering::Relaxed);
                        messages = None;
                        last_message = tokio::time::Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the stream's bounds"),
                    Err(_) => tracing::debug!("reading the stream's bounds timed out"),
                }
            }
            next = stream.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                last_message = tokio::time::Instant::now();
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, after = queued, "the stream subscription broke; following again");
                        messages = None;
                        continue;
                    }
                    None => {
                        messages = None;
                        continue;
                    }
                };
                let (sequence, pending, published) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.pending, info.published),
                    Err(e) => {
                        tracing::warn!(error = %e, "a stream message without its metadata; following again");
                        messages = None;
                        continue;
                    }
                };
                if sequence <= queued {
                    continue;
                }
                queued = sequence;
                let raw = message.payload.clone();
                // A webhook held by the node that received it says when that was; any other
                // was received when the stream stored it.
                let held_since = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(RECEIVED_HEADER))
                    .and_then(|v| v.as_str().parse::<i64>().ok());
                let origin = StreamOrigin {
                    stream_sequence: sequence,
                    received_at: held_since.unwrap_or_else(|| {
                        i64::try_from(published.unix_timestamp_nanos() / 1_000_000)
                            .unwrap_or(i64::MAX)
                    }),
                };
                let is_overdue = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(RECORD_HEADER))
                    .is_some_and(|v| v.as_str() == OVERDUE_RECORD);
                let answer: std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> = if is_overdue {
                    match serde_json::from_slice::<OverdueProposal>(&raw) {
                        Ok(proposal) => match writer.queue_overdue_from_stream(proposal.marks, origin).await {
                            Ok(answer) => Box::pin(async move {
                                (sequence, pending, answer.await.map(|_| None))
                            }),
                            Err(e) => Box::pin(async move { (sequence, pending, Err(e)) }),
                        },
                        Err(e) => {
                            tracing::warn!(stream_sequence = sequence, error = %e, "an overdue proposal that does not read: skipped");
                            writer_skip(sequence, pending)
                        }
                    }
                } else {
                    match normalize_with_facts(&catalog, &raw) {
                        Ok((normalized, facts)) => {
                            match writer.queue_from_stream(normalized, raw, Some(facts), origin).await {
                                Ok(answer) => Box::pin(async move {
                                    (sequence, pending, answer.await.map(Some))
                                }),
                                Err(e) => Box::pin(async move { (sequence, pending, Err(e)) }),
                            }
                        }
                        Err(e) => {
                            // Every node skips it alike: the intake publishes only webhooks,
                            // so this was published by something else.
                            tracing::warn!(stream_sequence = sequence, error = %e, "a stream message that is not a webhook: skipped");
                            writer_skip(sequence, pending)
                        }
                    }
                };
                in_flight.push_back(answer);
            }
        }
    }
}

/// The answer to a stream message every node skips alike.
fn writer_skip(
    sequence: u64,
    pending: u64,
) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> {
    Box::pin(async move { (sequence, pending, Ok(None)) })
}

/// An ordered subscription to the stream from the message after `after`.
async fn subscribe(log: &JetStreamLog, after: u64) -> Result<pull::Ordered, ClusterError> {
    let deliver_policy = if after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        }
    };
    let consumer = log
        .stream()
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Follower(e.to_string()))?;
    consumer
        .messages()
        .await
        .map_err(|e| ClusterError::Follower(e.to_string()))
}
