//! The single writer: the only code that writes to the store.
//!
//! Why one writer: sequence numbers must be gap-free in commit order, deduplication must see
//! every earlier webhook, and an operation's reconciliation must read the state the previous
//! webhook left. One thread that owns every write gives all three without locks.
//!
//! How it stays fast: intake handlers send [`WriteRequest`]s over a bounded channel. The
//! writer takes whatever is queued (up to `max_batch`) as one batch, decides about each
//! webhook ([`plan`]: duplicate, new event, quarantine), appends the batch's records to the
//! log with one fsync (group commit), applies them to the sled view in one atomic batch
//! without flushing ([`crate::store::view`]), and only then answers each handler.
//!
//! Before it takes its first request, the writer replays into the view whatever the log
//! holds past `applied_through` ([`Store::replay`]). Between batches it also runs retention
//! ([`compaction`]), so that compaction never races with a write.
//!
//! Guarantees: an [`Ack`] is sent only after the batch holding its webhook is durable in the
//! log and applied to the view. A batch whose log append fails changes nothing and every
//! request in it gets the error. A batch that reached the log but could not be applied
//! stops the writer (every later request gets an error too): the view would otherwise fall
//! behind the log while the server answers; a restart replays it. When every
//! [`WriterHandle`] is dropped, the writer finishes the queued requests and stops.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

mod compaction;
mod plan;

use super::rebuild::{self, RebuildPlan, RebuildReport};
use super::recent::RecentChanges;
use super::snapshot::{self, Pinned};
use super::{EventRef, Store, StoreError, view};
use crate::clock::Clock;
use crate::domain::catalog::Catalog;
use crate::domain::overdue::OverdueMark;
use crate::domain::webhook::Facts;
use crate::domain::webhook::Normalized;
pub(crate) use plan::{BatchPlan, Counters};

/// How the writer answered one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Stored as a new event at `sequence`.
    Accepted {
        /// Its position in the event log.
        sequence: u64,
    },
    /// Already stored (the same JSON value) at `sequence`; nothing changed.
    Duplicate {
        /// Where the first delivery was stored.
        sequence: u64,
    },
    /// Kept in the quarantine under `id`, because `reason`.
    Quarantined {
        /// Quarantine id.
        id: u64,
        /// Why it could not be attributed to an operation.
        reason: String,
    },
}

impl Ack {
    /// The answer to a webhook the store already has: a duplicate of an event, or the
    /// quarantine entry it went to.
    pub(crate) fn for_stored(store: &Store, existing: EventRef) -> Result<Ack, StoreError> {
        Ok(match existing {
            EventRef::Event(sequence) => Ack::Duplicate { sequence },
            EventRef::Quarantine(id) => Ack::Quarantined {
                id,
                reason: store
                    .quarantine_entry(id)?
                    .map(|e| e.reason)
                    .unwrap_or_default(),
            },
        })
    }
}

/// Why a webhook could not be handed to the writer.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: the sender should retry shortly.
    #[error("the writer's queue is full")]
    Busy,
    /// The writer has stopped (shutdown).
    #[error("the writer has stopped")]
    Closed,
    /// The batch failed to commit (the writer logged why, once for the batch).
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
}

/// What the writer is asked to do.
#[derive(Debug)]
// Writes are the common variant, sent by the thousand: boxing them to shrink the rare
// maintenance variants would allocate once more per webhook.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Store a webhook.
    Write(WriteRequest),
    /// Pin the store as it is between two batches, for a snapshot.
    Snapshot {
        reply: oneshot::Sender<Result<Pinned, Arc<StoreError>>>,
    },
    /// Put `catalog` in effect: rebuild every operation under it (see [`WriterHandle::reload`]).
    Reload {
        catalog: Arc<Catalog>,
        plan: RebuildPlan,
        reply: oneshot::Sender<Result<RebuildReport, Arc<StoreError>>>,
    },
    /// Record, as events, the operations of `marks` that are overdue at `at` and were not
    /// said to be yet (see [`crate::store::due`]). A command of its own, never mixed into a
    /// batch of webhooks, so that each mark is checked against the view as it is.
    Overdue {
        marks: Vec<OverdueMark>,
        at: i64,
        origin: Option<StreamOrigin>,
        reply: oneshot::Sender<Result<usize, Arc<StoreError>>>,
    },
    /// Drop log entries received before `cutoff` (ms since the epoch), at most `limit`.
    Compact {
        cutoff: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Compaction, Arc<StoreError>>>,
    },
}

/// What one compaction step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Log entries dropped.
    pub removed: usize,
    /// Every sequence up to this one is gone from the log (0 when none ever was).
    pub compacted_through: u64,
    /// Whether more expired entries remain (the step stopped at its limit).
    pub more: bool,
}

/// One webhook for the writer.
#[derive(Debug)]
struct WriteRequest {
    normalized: Normalized,
    raw: Bytes,
    facts: Option<Facts>,
    /// Where it was ordered, when a replicated stream ordered it (a cluster node).
    origin: Option<StreamOrigin>,
    reply: oneshot::Sender<Result<Ack, Arc<StoreError>>>,
}

/// Where a cluster's stream placed a webhook: what every node must decide alike, instead of
/// each node's own clock and arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOrigin {
    /// The stream's sequence of the message.
    pub stream_sequence: u64,
    /// When the node that took the webhook received it, ms since the epoch.
    pub received_at: i64,
}

/// Settings of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Capacity of the queue between intake and writer.
    pub queue: usize,
    /// Most webhooks committed in one batch.
    pub max_batch: usize,
}

impl WriterLimits {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: WriterLimits = WriterLimits {
        queue: 1024,
        max_batch: 512,
    };
}

impl Default for WriterLimits {
    fn default() -> Self {
        WriterLimits::DEFAULT
    }
}

/// A cloneable handle to submit webhooks to the writer.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    /// For the reads a reload does beside the writer. Declared (so dropped) before `tx`: when
    /// the last handle closes the channel and the writer stops, no handle still holds the
    /// store, and whoever joins the writer may open the directory again at once.
    store: Store,
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    recent: Arc<RecentChanges>,
    failed: Arc<std::sync::atomic::AtomicBool>,
    out_of_space: Arc<std::sync::atomic::AtomicI64>,
    /// The writer's clock, which dates a single node's overdue events.
    clock: Clock,
}

impl WriterHandle {
    /// Hands a webhook to the writer and waits until it is durably stored. `facts`, when
    /// given, are the catalog's facts of `raw`, read by the caller so that the single writer
    /// does not parse the body again.
    pub async fn submit(
        &self,
        normalized: Normalized,
        raw: Bytes,
        facts: Option<Facts>,
    ) -> Result<Ack, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            normalized,
            raw,
            facts,
            origin: None,
            reply,
        };
        self.tx
            .try_send(Command::Write(request))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        answered(answer).await
    }

    /// Queues a webhook the cluster's stream ordered, waiting for room in the queue (the
    /// stream waits; nothing is refused), and returns the future of its answer. Webhooks are
    /// stored in the order they are queued, so a caller that queues in stream order gets
    /// the same decisions as every other node.
    pub(crate) async fn queue_from_stream(
        &self,
        normalized: Normalized,
        raw: Bytes,
        facts: Option<Facts>,
        origin: StreamOrigin,
    ) -> Result<impl Future<Output = Result<Ack, SubmitError>> + use<>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            normalized,
            raw,
            facts,
            origin: Some(origin),
            reply,
        };
        self.tx
            .send(Command::Write(request))
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(answered(answer))
    }

    /// Records as events which of `marks` are overdue now and were not said to be yet;
    /// returns how many were. What a single node's overdue clock calls.
    pub(crate) async fn overdue(&self, marks: Vec<OverdueMark>) -> Result<usize, SubmitError> {
        self.ask(|reply| Command::Overdue {
            marks,
            at: self.clock.now_millis(),
            origin: None,
            reply,
        })
        .await
    }

    /// Queues overdue `marks` the cluster's stream ordered at `origin` (its time is the
    /// stream's, the same on every node), and returns the future of the answer, as
    /// [`WriterHandle::queue_from_stream`] does for a webhook.
    pub(crate) async fn queue_overdue_from_stream(
        &self,
        marks: Vec<OverdueMark>,
        origin: StreamOrigin,
    ) -> Result<impl Future<Output = Result<usize, SubmitError>> + use<>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Overdue {
                marks,
                at: origin.received_at,
                origin: Some(origin),
                reply,
            })
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(answered(answer))
    }

    /// Drops log entries received before `cutoff` (ms since the epoch), at most `limit` of
    /// them, between two batches. Operations and their history summaries are kept.
    pub async fn compact(&self, cutoff: i64, limit: usize) -> Result<Compaction, SubmitError> {
        self.ask(|reply| Command::Compact {
            cutoff,
            limit,
            reply,
        })
        .await
    }

    /// Puts `catalog` in effect: every operation is recomputed under it beside the writer,
    /// which goes on storing webhooks ([`rebuild::plan`], on a blocking thread); then, between
    /// two batches, the writer promotes the quarantined webhooks it can read (new sequences,
    /// seen by watchers), redoes the operations that webhooks stored meanwhile touched, and
    /// writes the changes in one batch ([`rebuild::finish`]). Ingest waits only for that last
    /// step.
    pub async fn reload(&self, catalog: Arc<Catalog>) -> Result<RebuildReport, SubmitError> {
        let (store, planned) = (self.store.clone(), catalog.clone());
        let plan = tokio::task::spawn_blocking(move || rebuild::plan(&store, &planned))
            .await
            .expect("planning a rebuild does not panic: errors are values")
            .map_err(Arc::new)?;
        self.ask(|reply| Command::Reload {
            catalog,
            plan,
            reply,
        })
        .await
    }

    /// Pins the store between two batches: a consistent snapshot, kept until dropped.
    pub(crate) async fn snapshot(&self) -> Result<Pinned, SubmitError> {
        self.ask(|reply| Command::Snapshot { reply }).await
    }

    /// Sends the writer a command that answers on `reply`, waiting for room in its queue
    /// (maintenance waits its turn rather than failing as `Busy`), and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Arc<StoreError>>>) -> Command,
    ) -> Result<T, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| SubmitError::Closed)?;
        answered(answer).await
    }

    /// The latest committed change records, shared with watchers.
    pub fn recent(&self) -> Arc<RecentChanges> {
        self.recent.clone()
    }

    /// Webhooks waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the writer still takes webhooks: false once it stopped (shutdown, or a batch
    /// that reached the log but not the view).
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed() && !self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Since when (ms since the epoch) batches fail because the disk is full, if the last
    /// one did: webhooks are refused (and retried by their senders) until an append succeeds
    /// again, with no restart.
    pub fn out_of_space_since(&self) -> Option<i64> {
        match self.out_of_space.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            since => Some(since),
        }
    }

    /// The last committed sequence (0 before the first), updated after every batch.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// The writer's answer to one request or command.
async fn answered<T>(
    answer: oneshot::Receiver<Result<T, Arc<StoreError>>>,
) -> Result<T, SubmitError> {
    match answer.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(SubmitError::Store(e)),
        Err(_) => Err(SubmitError::Closed),
    }
}

/// The running writer thread; [`WriterTask::join`] waits for it to drain and stop.
#[derive(Debug)]
pub struct WriterTask {
    thread: JoinHandle<()>,
}

impl WriterTask {
    /// Waits for the writer to finish (after every handle is dropped).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// Who hears of every batch the writer puts in the log (the server's metrics). The writer
/// reports figures and knows nothing of how they are kept; a report must be quick, it runs
/// on the writer's thread between batches.
pub(crate) trait BatchReport: Send + Sync {
    /// A batch of `records` log records was appended (and synced) in `append`.
    fn batch_appended(&self, records: usize, append: std::time::Duration);

    /// `events` overdue events were recorded (applied to the view).
    fn overdue_recorded(&self, events: usize);
}

/// Starts the writer on its own thread, telling `report` of every batch. `clock` gives the
/// receive time of every webhook it stores and the time of every overdue event.
pub(crate) fn spawn_writer(
    store: Store,
    catalog: Arc<Catalog>,
    limits: WriterLimits,
    report: Arc<dyn BatchReport>,
    clock: Clock,
) -> Result<(WriterHandle, WriterTask), StoreError> {
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    store.replay(&catalog)?;
    store.ensure_due(&catalog)?;
    let counters = store.counters()?;
    let (committed_tx, committed) = watch::channel(counters.next_sequence - 1);
    let recent = Arc::new(RecentChanges::new(RECENT_CHANGES, RECENT_CHANGES_BYTES));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let out_of_space = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let store_for_handle = store.clone();
    let mut writer = Writer {
        out_of_space: out_of_space.clone(),
        store,
        catalog,
        counters,
        committed: committed_tx,
        recent: recent.clone(),
        stopped: None,
        failed: failed.clone(),
        failpoint: Failpoint::from_env(),
        report,
        clock: clock.clone(),
    };
    let max_batch = limits.max_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("qistatus-writer".into())
        .spawn(move || writer.run(rx, max_batch))
        .map_err(StoreError::WriterThread)?;
    Ok((
        WriterHandle {
            store: store_for_handle,
            tx,
            committed,
            recent,
            failed,
            out_of_space,
            clock,
        },
        WriterTask { thread },
    ))
}

struct Writer {
    store: Store,
    catalog: Arc<Catalog>,
    counters: Counters,
    committed: watch::Sender<u64>,
    recent: Arc<RecentChanges>,
    /// Why the writer refuses every batch: one reached the log but not the view.
    stopped: Option<Arc<StoreError>>,
    /// Whether `stopped` is set, for readiness.
    failed: Arc<std::sync::atomic::AtomicBool>,
    /// When the last append found the disk full (ms since the epoch; 0: it did not).
    out_of_space: Arc<std::sync::atomic::AtomicI64>,
    failpoint: Failpoint,
    report: Arc<dyn BatchReport>,
    /// Where receive times come from.
    clock: Clock,
}

/// A crash on purpose, for the crash test: `QISTATUS_FAILPOINT=abort-after-log-append:N`
/// aborts the process right after the N-th batch reached the log, before it is applied or
/// acknowledged; the restart must replay it. Unset in production.
#[derive(Debug, Clone, Copy)]
struct Failpoint {
    abort_after_appends: Option<u64>,
    appends: u64,
}

impl Failpoint {
    const VARIABLE: &str = super::failpoint::VARIABLE;

    fn from_env() -> Self {
        let abort_after_appends = std::env::var(Self::VARIABLE).ok().and_then(|v| {
            v.strip_prefix("abort-after-log-append:")
                .and_then(|n| n.parse().ok())
        });
        if let Some(n) = abort_after_appends {
            tracing::warn!(
                appends = n,
                "failpoint set: the process aborts after that many log appends"
            );
        }
        Failpoint {
            abort_after_appends,
            appends: 0,
        }
    }

    fn after_append(&mut self) {
        self.appends += 1;
        if self.abort_after_appends == Some(self.appends) {
            eprintln!(
                "qistatus: failpoint abort-after-log-append:{} reached",
                self.appends
            );
            std::process::abort();
        }
    }
}

/// How many change records the recent-changes window holds...
const RECENT_CHANGES: usize = 16_384;
/// ...and at most how many bytes of them. Records are small (an operation without history,
/// its detail bounded to 1 KiB), so this bound is reached only with unusually long texts.
const RECENT_CHANGES_BYTES: usize = 16 * 1024 * 1024;

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        let mut next = rx.blocking_recv();
        while let Some(command) = next.take() {
            let request = match command {
                Command::Write(request) => request,
                Command::Compact {
                    cutoff,
                    limit,
                    reply,
                } => {
                    let _ = reply
                        .send(compaction::compact(&self.store, cutoff, limit).map_err(Arc::new));
                    next = rx.blocking_recv();
                    continue;
                }
                Command::Overdue {
                    marks,
                    at,
                    origin,
                    reply,
                } => {
                    let _ = reply.send(self.overdue(&marks, at, origin));
                    next = rx.blocking_recv();
                    continue;
                }
                Command::Reload {
                    catalog,
                    plan,
                    reply,
                } => {
                    let _ = reply.send(self.reload(catalog, plan));
                    next = rx.blocking_recv();
                    continue;
                }
                Command::Snapshot { reply } => {
                    let started = std::time::Instant::now();
                    let head = self.counters.next_sequence - 1;
                    let pinned =
                        snapshot::pin(&self.store, head, self.clock.now_millis()).map_err(Arc::new);
                    tracing::info!(
                        head_sequence = head,
                        paused_ms = started.elapsed().as_millis() as u64,
                        ok = pinned.is_ok(),
                        "snapshot pinned"
                    );
                    let _ = reply.send(pinned);
                    next = rx.blocking_recv();
                    continue;
                }
            };
            batch.push(request);
            // Take whatever else is queued, up to the batch limit; a compaction waits for
            // the next turn.
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(Command::Write(request)) => batch.push(request),
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_and_answer(&mut batch);
            if next.is_none() {
                next = rx.blocking_recv();
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(
                error = %e,
                "the view's final flush failed: nothing acknowledged is lost (the log holds \
                 it), and the next start replays the log into the view"
            );
        }
        tracing::debug!("writer stopped");
    }

    /// See [`WriterHandle::reload`].
    fn reload(
        &mut self,
        catalog: Arc<Catalog>,
        plan: RebuildPlan,
    ) -> Result<RebuildReport, Arc<StoreError>> {
        if let Some(stopped) = &self.stopped {
            return Err(stopped.clone());
        }
        let started = std::time::Instant::now();
        let report = rebuild::finish(&self.store, &catalog, plan).map_err(Arc::new)?;
        self.store.ensure_due(&catalog).map_err(Arc::new)?;
        // Promotions took sequences: continue after them, and let watchers see them.
        let counters = self.store.counters().map_err(Arc::new)?;
        let head = self.counters.next_sequence - 1;
        self.counters = counters;
        self.catalog = catalog;
        if counters.next_sequence - 1 > head {
            // The promoted changes are not in the recent window: empty it rather than leave
            // a gap, so watchers read them from the store.
            self.recent.clear();
            self.committed.send_replace(counters.next_sequence - 1);
        }
        tracing::info!(
            promoted = report.promoted,
            operations_changed = report.operations_changed,
            paused_ms = started.elapsed().as_millis() as u64,
            "catalog reloaded"
        );
        Ok(report)
    }

    /// See [`Command::Overdue`]: the marks still due at `at` become records (one sequence
    /// each), appended with one fsync and applied like a batch of webhooks; the rest change
    /// nothing. Returns how many were recorded.
    fn overdue(
        &mut self,
        marks: &[OverdueMark],
        at: i64,
        origin: Option<StreamOrigin>,
    ) -> Result<usize, Arc<StoreError>> {
        if let Some(stopped) = &self.stopped {
            return Err(stopped.clone());
        }
        let mut plan = BatchPlan::new(self.counters);
        for mark in marks {
            if let Some(due) = self
                .store
                .still_due(&self.catalog, mark, at)
                .map_err(Arc::new)?
            {
                plan.add_overdue(mark, due, at);
            }
        }
        let recorded = plan.records.len();
        self.commit_plan(
            plan,
            origin.map(|o| o.stream_sequence),
            self.clock.now_millis(),
        )?;
        if recorded > 0 {
            self.committed.send_replace(self.counters.next_sequence - 1);
            self.report.overdue_recorded(recorded);
        }
        Ok(recorded)
    }

    fn commit_and_answer(&mut self, batch: &mut Vec<WriteRequest>) {
        let started = std::time::Instant::now();
        let size = batch.len();
        let (webhooks, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|r| ((r.normalized, r.raw, r.facts, r.origin), r.reply))
            .unzip();
        match self.commit(webhooks) {
            Ok(acks) => {
                tracing::debug!(
                    webhooks = size,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    last_sequence = self.counters.next_sequence - 1,
                    "batch committed"
                );
                self.committed.send_replace(self.counters.next_sequence - 1);
                for (reply, ack) in replies.into_iter().zip(acks) {
                    let _ = reply.send(Ok(ack));
                }
            }
            Err(e) => {
                if self.stopped.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &e)) {
                    tracing::error!(error = %e, webhooks = size, "batch failed to commit");
                }
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Decides, appends to the log (one fsync), applies to the view. On error before the
    /// log has the batch, nothing changed; after, the writer stops (see the module docs).
    fn commit(
        &mut self,
        webhooks: Vec<(Normalized, Bytes, Option<Facts>, Option<StreamOrigin>)>,
    ) -> Result<Vec<Ack>, Arc<StoreError>> {
        if let Some(stopped) = &self.stopped {
            return Err(stopped.clone());
        }
        let now = self.clock.now_millis();
        let mut plan = BatchPlan::new(self.counters);
        let mut acks = Vec::with_capacity(webhooks.len());
        let mut stream_through = None;
        for (normalized, raw, facts, origin) in webhooks {
            let received_at = origin.map_or(now, |o| o.received_at);
            stream_through = origin.map(|o| o.stream_sequence).max(stream_through);
            acks.push(
                plan.add(&self.store, normalized, raw, received_at, facts)
                    .map_err(Arc::new)?,
            );
        }
        self.commit_plan(plan, stream_through, now)?;
        Ok(acks)
    }

    /// Appends `plan`'s records to the log (one fsync) and applies them to the view, then
    /// notes that the view took the stream into account through `stream_through` (a cluster
    /// node). On error before the log has them, nothing changed; after, the writer stops
    /// (see the module docs).
    fn commit_plan(
        &mut self,
        plan: BatchPlan,
        stream_through: Option<u64>,
        now: i64,
    ) -> Result<(), Arc<StoreError>> {
        if plan.records.is_empty() {
            if let Some(through) = stream_through {
                self.store.set_stream_through(through).map_err(Arc::new)?;
            }
            return Ok(());
        }
        let appending = std::time::Instant::now();
        // A failed append leaves nothing in the log, so nothing changed: the batch is refused
        // and the writer goes on. A full disk is said until an append succeeds again.
        let appended = self.store.log().append(&plan.records);
        self.out_of_space.store(
            match &appended {
                Err(e) if e.is_out_of_space() => now,
                _ => 0,
            },
            std::sync::atomic::Ordering::Relaxed,
        );
        let refs = appended.map_err(|e| Arc::new(e.into()))?;
        let append_time = appending.elapsed();
        self.report.batch_appended(plan.records.len(), append_time);
        tracing::trace!(
            append_us = append_time.as_micros() as u64,
            "batch in the log"
        );
        self.failpoint.after_append();
        let applied = view::apply_read(
            &self.store,
            &self.catalog,
            &plan.records,
            &refs,
            plan.preread,
        )
        .and_then(|changes| {
            // After the view: a crash between the two replays a few stream messages,
            // which the view then finds to be duplicates (see `crate::cluster`).
            if let Some(through) = stream_through {
                self.store.set_stream_through(through)?;
            }
            Ok(changes)
        });
        match applied {
            Ok(changes) => {
                // Durable and applied: visible to watchers (the caller wakes them next).
                self.recent.extend(changes);
                self.counters = plan.counters;
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "a batch reached the log but not the view: the writer stops; restart \
                     qistatus to replay it"
                );
                let e = Arc::new(e);
                self.stopped = Some(e.clone());
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }
}
