//! The single writer: the only code that writes to the store.
//!
//! Why one writer: sequence numbers must be gap-free in commit order, deduplication must see
//! every earlier webhook, and an operation's reconciliation must read the state the previous
//! webhook left. One task that owns every write gives all three without locks.
//!
//! How it stays fast: intake handlers send [`WriteRequest`]s over a bounded channel. The
//! writer takes whatever is queued (up to `max_batch`) as one batch, computes the new state
//! of every touched operation in memory, applies the whole batch as one atomic sled batch,
//! flushes once (group commit: one fsync for the batch), and only then answers each handler.
//! The cost of a flush is shared by every webhook that arrived while the previous one ran.
//!
//! Between batches it also drops log entries past the retention ([`WriterHandle::compact`]),
//! so that compaction never races with a write.
//!
//! Guarantees: an [`Ack`] is sent only after the batch holding its webhook is on disk (its
//! payloads fsynced first, then the sled batch applied and flushed); a
//! failed batch changes nothing and every request in it gets the error; when every
//! [`WriterHandle`] is dropped, the writer finishes the queued requests and stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::payloads::{PayloadAppender, PayloadRef};
use super::recent::RecentChanges;
use super::{
    COMPACTED_THROUGH, Change, EventRef, LogEntry, NEXT_QUARANTINE, NEXT_SEQUENCE, QuarantineEntry,
    Store, StoreError, Writes, encode, index_value, operation_key, phase_index_key,
    status_index_key,
};
use crate::domain::catalog::Catalog;
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::{EventId, Normalized, WebhookEnvelope};

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
enum Command {
    /// Store a webhook.
    Write(WriteRequest),
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
    reply: oneshot::Sender<Result<Ack, Arc<StoreError>>>,
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
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    recent: Arc<RecentChanges>,
}

impl WriterHandle {
    /// Hands a webhook to the writer and waits until it is durably stored.
    pub async fn submit(&self, normalized: Normalized, raw: Bytes) -> Result<Ack, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            normalized,
            raw,
            reply,
        };
        self.tx
            .try_send(Command::Write(request))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Busy,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        match answer.await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::Closed),
        }
    }

    /// Drops log entries received before `cutoff` (ms since the epoch), at most `limit` of
    /// them, between two batches. Operations and their history summaries are kept.
    pub async fn compact(&self, cutoff: i64, limit: usize) -> Result<Compaction, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Compact {
                cutoff,
                limit,
                reply,
            })
            .await
            .map_err(|_| SubmitError::Closed)?;
        match answer.await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::Closed),
        }
    }

    /// The latest committed change records, shared with watchers.
    pub fn recent(&self) -> Arc<RecentChanges> {
        self.recent.clone()
    }

    /// The last committed sequence (0 before the first), updated after every batch.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
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

/// Starts the writer on its own thread.
pub fn spawn(
    store: Store,
    catalog: Arc<Catalog>,
    limits: WriterLimits,
) -> Result<(WriterHandle, WriterTask), StoreError> {
    let (tx, rx) = mpsc::channel(limits.queue.max(1));
    let next_sequence = store.next_sequence()?;
    let next_quarantine = store.next_quarantine_id()?;
    let (committed_tx, committed) = watch::channel(next_sequence - 1);
    let recent = Arc::new(RecentChanges::new(RECENT_CHANGES));
    let payloads = store.payloads.appender()?;
    let mut writer = Writer {
        payloads,
        store,
        catalog,
        next_sequence,
        next_quarantine,
        committed: committed_tx,
        recent: recent.clone(),
    };
    let max_batch = limits.max_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("qistatus-writer".into())
        .spawn(move || writer.run(rx, max_batch))
        .map_err(StoreError::WriterThread)?;
    Ok((
        WriterHandle {
            tx,
            committed,
            recent,
        },
        WriterTask { thread },
    ))
}

struct Writer {
    store: Store,
    catalog: Arc<Catalog>,
    next_sequence: u64,
    next_quarantine: u64,
    committed: watch::Sender<u64>,
    recent: Arc<RecentChanges>,
    payloads: PayloadAppender,
}

/// How many change records the recent-changes window holds.
const RECENT_CHANGES: usize = 16_384;

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
                    let _ = reply.send(self.compact(cutoff, limit).map_err(Arc::new));
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
                    Ok(compact) => {
                        next = Some(compact);
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
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::debug!("writer stopped");
    }

    fn commit_and_answer(&mut self, batch: &mut Vec<WriteRequest>) {
        let started = std::time::Instant::now();
        match self.commit(batch) {
            Ok(acks) => {
                tracing::debug!(
                    webhooks = batch.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    last_sequence = self.next_sequence - 1,
                    "batch committed"
                );
                self.committed.send_replace(self.next_sequence - 1);
                for (request, ack) in batch.drain(..).zip(acks) {
                    let _ = request.reply.send(Ok(ack));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, webhooks = batch.len(), "batch failed to commit");
                let e = Arc::new(e);
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Drops expired log entries and their change records, oldest first.
    fn compact(&mut self, cutoff: i64, limit: usize) -> Result<Compaction, StoreError> {
        let mut compacted_through = self.store.compacted_through()?;
        let mut expired = Vec::new();
        let mut more = false;
        for kv in self.store.trees.log.iter() {
            let (k, v) = kv?;
            let entry: LogEntry = super::decode(&v, "log")?;
            if entry.received_at >= cutoff {
                break;
            }
            if expired.len() == limit {
                more = true;
                break;
            }
            expired.push(super::u64_from_be(&k, "log")?);
        }
        let Some(&last) = expired.last() else {
            return Ok(Compaction {
                removed: 0,
                compacted_through,
                more: false,
            });
        };
        compacted_through = compacted_through.max(last);
        let t = &self.store.trees;
        let mut writes = Writes::default();
        for sequence in &expired {
            writes.remove(&t.log, &sequence.to_be_bytes());
            writes.remove(&t.changes, &sequence.to_be_bytes());
        }
        writes.insert(
            &t.meta,
            COMPACTED_THROUGH,
            compacted_through.to_be_bytes().to_vec(),
        );
        writes.apply(&t.all)?;
        self.store.flush()?;
        let segments = self.store.payloads.drop_through(compacted_through)?;
        tracing::info!(
            segments,
            removed = expired.len(),
            compacted_through,
            "event log compacted"
        );
        Ok(Compaction {
            removed: expired.len(),
            compacted_through,
            more,
        })
    }

    /// Applies a batch atomically and flushes it. On error nothing is changed, in sled or in
    /// the writer's counters.
    fn commit(&mut self, batch: &[WriteRequest]) -> Result<Vec<Ack>, StoreError> {
        let received_at = now_millis();
        let position = self.payloads.position(self.next_sequence)?;
        let mut plan = BatchPlan::new(self.next_sequence, self.next_quarantine, position);
        let mut acks = Vec::with_capacity(batch.len());
        for request in batch {
            acks.push(plan.add(
                &self.store,
                &self.catalog,
                &request.normalized,
                &request.raw,
                received_at,
            )?);
        }
        let (next_sequence, next_quarantine) = (plan.next_sequence, plan.next_quarantine);
        let changes = plan.commit(&self.store, &mut self.payloads)?;
        // Durable now: visible to watchers (the caller wakes them next).
        self.recent.extend(changes);
        self.next_sequence = next_sequence;
        self.next_quarantine = next_quarantine;
        Ok(acks)
    }
}

/// An operation's keys in the status and phase indexes.
type IndexKeys = (Vec<u8>, Vec<u8>);

/// The writes of one batch, planned in memory before the atomic write.
pub(crate) struct BatchPlan {
    pub(crate) next_sequence: u64,
    pub(crate) next_quarantine: u64,
    seen: HashMap<EventId, Ack>,
    /// Touched operations: the index keys they had before the batch, and their state after.
    operations: HashMap<Vec<u8>, (Option<IndexKeys>, Operation)>,
    /// Log, change, dedupe and quarantine writes; operations and indexes join at commit.
    writes: Writes,
    /// The change records of this batch, for the recent-changes window.
    changes: Vec<(u64, Arc<Change>)>,
    /// The batch's raw payloads, laid out from `payload_position`.
    payloads: Vec<u8>,
    payload_position: (u64, u64),
}

impl BatchPlan {
    pub(crate) fn new(
        next_sequence: u64,
        next_quarantine: u64,
        payload_position: (u64, u64),
    ) -> Self {
        BatchPlan {
            next_sequence,
            next_quarantine,
            seen: HashMap::new(),
            operations: HashMap::new(),
            writes: Writes::default(),
            changes: Vec::new(),
            payloads: Vec::new(),
            payload_position,
        }
    }

    pub(crate) fn add(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        normalized: &Normalized,
        raw: &[u8],
        received_at: i64,
    ) -> Result<Ack, StoreError> {
        let event_id = match normalized {
            Normalized::Event(e) => e.event_id,
            Normalized::Quarantine { event_id, .. } => *event_id,
        };
        if let Some(ack) = self.seen.get(&event_id) {
            return Ok(as_duplicate(ack.clone()));
        }
        if let Some(existing) = store.event_ref(&event_id)? {
            let ack = match existing {
                EventRef::Event(sequence) => Ack::Duplicate { sequence },
                EventRef::Quarantine(id) => Ack::Quarantined {
                    id,
                    reason: quarantine_reason(store, id)?,
                },
            };
            self.seen.insert(event_id, ack.clone());
            return Ok(ack);
        }
        let ack = match normalized {
            Normalized::Event(envelope) => Ack::Accepted {
                sequence: self.add_event(store, catalog, envelope, raw, received_at)?,
            },
            Normalized::Quarantine { reason, .. } => {
                let id = self.next_quarantine;
                self.next_quarantine += 1;
                let entry = QuarantineEntry {
                    event_id,
                    received_at,
                    reason: reason.clone(),
                    raw: raw.to_vec(),
                };
                self.writes
                    .insert(&store.trees.quarantine, &id.to_be_bytes(), encode(&entry));
                self.writes.insert(
                    &store.trees.event_ids,
                    &event_id.0,
                    encode(&EventRef::Quarantine(id)),
                );
                tracing::warn!(quarantine_id = id, reason = %reason, "webhook quarantined");
                Ack::Quarantined {
                    id,
                    reason: reason.clone(),
                }
            }
        };
        self.seen.insert(event_id, ack.clone());
        Ok(ack)
    }

    fn add_event(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        envelope: &WebhookEnvelope,
        raw: &[u8],
        received_at: i64,
    ) -> Result<u64, StoreError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let op_key = operation_key(&envelope.kind, &envelope.key);
        let (original, current) = match self.operations.remove(&op_key) {
            Some((original, current)) => (original, Some(current)),
            None => {
                let stored = store.operation(&envelope.kind, &envelope.key)?;
                let index_keys = stored
                    .as_ref()
                    .map(|op| (status_index_key(op), phase_index_key(op)));
                (index_keys, stored)
            }
        };
        let previous = current.as_ref().map(|op| (op.status.clone(), op.phase));
        let summary = EventSummary::new(envelope, sequence, received_at);
        let after = Reconciler::new(catalog).apply(current, &envelope.kind, &envelope.key, summary);

        let change = Change {
            status_changed: previous
                .as_ref()
                .is_none_or(|(status, phase)| *status != after.status || *phase != after.phase),
            previous_status: previous.map(|(status, _)| status),
            operation: after.without_history(),
        };
        let entry = LogEntry {
            event_id: envelope.event_id,
            kind: envelope.kind.clone(),
            key: envelope.key.clone(),
            received_at,
            payload: PayloadRef {
                segment: self.payload_position.0,
                offset: self.payload_position.1 + self.payloads.len() as u64,
                len: u32::try_from(raw.len()).map_err(|_| StoreError::Corrupt {
                    tree: "log",
                    reason: "a payload over 4 GiB".into(),
                })?,
            },
        };
        self.payloads.extend_from_slice(raw);
        self.writes
            .insert(&store.trees.log, &sequence.to_be_bytes(), encode(&entry));
        self.writes.insert(
            &store.trees.changes,
            &sequence.to_be_bytes(),
            encode(&change),
        );
        self.changes.push((sequence, Arc::new(change)));
        self.writes.insert(
            &store.trees.event_ids,
            &envelope.event_id.0,
            encode(&EventRef::Event(sequence)),
        );
        tracing::info!(
            sequence,
            kind = %after.kind,
            key = %after.key,
            status = %after.status,
            webhook_status = %envelope.status,
            "webhook stored"
        );
        self.operations.insert(op_key, (original, after));
        Ok(sequence)
    }

    /// Moves quarantined webhook `id` into the event log as `envelope`, keeping its original
    /// receive time: used by rebuild when a catalog change makes it readable.
    pub(crate) fn promote(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        id: u64,
        envelope: &WebhookEnvelope,
        entry: &QuarantineEntry,
    ) -> Result<u64, StoreError> {
        self.writes
            .remove(&store.trees.quarantine, &id.to_be_bytes());
        let sequence = self.add_event(store, catalog, envelope, &entry.raw, entry.received_at)?;
        self.seen
            .insert(envelope.event_id, Ack::Accepted { sequence });
        Ok(sequence)
    }

    /// Writes the plan as one atomic batch across every key space, after its payloads are durable, then flushes.
    pub(crate) fn commit(
        self,
        store: &Store,
        payloads: &mut PayloadAppender,
    ) -> Result<Vec<(u64, Arc<Change>)>, StoreError> {
        // Payloads first: nothing may refer to bytes that are not on disk.
        payloads.append(&self.payloads)?;
        let t = &store.trees;
        let mut writes = self.writes;
        for (op_key, (original, after)) in &self.operations {
            let (status_key, phase_key) = (status_index_key(after), phase_index_key(after));
            if let Some((old_status_key, old_phase_key)) = original {
                if *old_status_key != status_key {
                    writes.remove(&t.status_index, old_status_key);
                }
                if *old_phase_key != phase_key {
                    writes.remove(&t.phase_index, old_phase_key);
                }
            }
            let summary = index_value(after);
            writes.insert(&t.status_index, &status_key, summary.clone());
            writes.insert(&t.phase_index, &phase_key, summary);
            writes.insert(&t.operations, op_key, encode(after));
        }
        writes.insert(
            &t.meta,
            NEXT_SEQUENCE,
            self.next_sequence.to_be_bytes().to_vec(),
        );
        writes.insert(
            &t.meta,
            NEXT_QUARANTINE,
            self.next_quarantine.to_be_bytes().to_vec(),
        );
        let started = std::time::Instant::now();
        writes.apply(&t.all)?;
        let applied = started.elapsed();
        store.flush()?;
        tracing::trace!(
            apply_us = applied.as_micros() as u64,
            flush_us = (started.elapsed() - applied).as_micros() as u64,
            "batch written"
        );
        Ok(self.changes)
    }
}

fn as_duplicate(ack: Ack) -> Ack {
    match ack {
        Ack::Accepted { sequence } => Ack::Duplicate { sequence },
        other => other,
    }
}

fn quarantine_reason(store: &Store, id: u64) -> Result<String, StoreError> {
    Ok(store
        .trees
        .quarantine
        .get(id.to_be_bytes())?
        .map(|v| super::decode::<QuarantineEntry>(&v, "quarantine"))
        .transpose()?
        .map(|e| e.reason)
        .unwrap_or_default())
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
