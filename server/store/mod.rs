//! The embedded store: the segment [`log`] of every webhook (the source of truth) and a sled
//! [`view`] of it (operations, indexes, counters, the quarantine). Readers read sled
//! directly; every write goes through the single [`writer`] thread.
//!
//! # One door
//!
//! Every submodule is private: what the rest of qistatus uses is re-exported here (the
//! [`Store`] handle and its records, the writer's handle, acknowledgements and limits, the
//! status index's [`Selection`] and [`Cursor`], the recent-changes window, rebuild and
//! restore). The store knows nothing of the wire: no HTTP, gRPC or protobuf type appears in
//! it, and it reports its batches through [`BatchReport`] instead of knowing the metrics.
//!
//! # Layout
//!
//! "Log" means the segment log only: every stored webhook, byte for byte, with what the
//! writer decided about it, fsynced once per batch before anyone is answered. sled is a view
//! materialized from it, in key spaces of one tree whose schema [`keys`] owns: operations
//! (whose history deduplicates events, with where each webhook's body is in the log), the
//! status index (phase lists merge its runs), seek points into the log every
//! [`SEEK_EVERY`] sequences, the quarantine and its deduplication index, counters and
//! `applied_through`. The change each webhook made is not kept: the recent window holds
//! the newest in memory, and [`Store::changes_after`] works older ones out from the log and
//! the operations, with the function that made them. By concern:
//!
//! - [`open`]: opening a directory, its format check and the meta values;
//! - [`record`]: how every sled value is encoded, and read back from older formats;
//! - [`index`]: index and counter upkeep, written once in [`index::put_operation`] for the
//!   writer, rebuild and [`Store::check_indexes`]; [`due`]: the index of operations by when
//!   they fall overdue, which the overdue clock reads;
//! - [`view`]: applying log records to sled; [`rebuild`](mod@rebuild): recomputing it all;
//!   [`snapshot`]: consistent copies and restores; [`status_index`]: list pages;
//!   [`parts`]: an operation's parts (a debt's installments);
//!   [`recent`]: the window of changes watchers read from memory.
//!
//! # Guarantees
//!
//! - A webhook is acknowledged only after its log record is durable (one `fdatasync` per
//!   batch) *and* applied to the view (in memory, not flushed). So a client that got `200`
//!   and then calls `GetOperation` sees its webhook: reads go to sled, which serves applied
//!   batches before they reach its disk.
//! - sled is never flushed on the acknowledgement path: it writes itself out every
//!   [`CHECKPOINT_INTERVAL_MS`] ms. After a crash it recovers to a consistent earlier state
//!   (batches are atomic) and [`Store::replay`] applies whatever the log holds past
//!   `applied_through`, exactly once.
//! - Sequence numbers start at 1 and are gap-free in commit order; the indexes always agree
//!   with the operations (same atomic batch).
//! - Records carry a format version byte, and the directory a format version, both checked
//!   on read with an error that names them: a newer or older layout is never taken for
//!   corruption, and a field added later does not make old records unreadable (see
//!   [`record::decode`]).

mod due;
mod failpoint;
mod flow;
mod index;
mod integrity;
mod keys;
mod log;
mod open;
mod parts;
mod rebuild;
mod recent;
mod record;
mod snapshot;
mod status_index;
mod view;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::overdue::Overdue;
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::{EventId, Normalized};
pub(crate) use keys::{Key, Meta, Space, SpaceId, Writes};
use log::{Entry, Log, LogError, PayloadRef, Record};
use record::{Bodies, decode, decode_operation, u64_from_be};

// The door: what the rest of qistatus uses of the store. Nobody outside `store/` names a
// submodule; what is not re-exported here is the store's own business.
pub use integrity::{Damage, Salvage, Scrub, ScrubProgress, Verification, salvage, verify};
pub use open::{CHECKPOINT_INTERVAL_MS, DEFAULT_CACHE_MB, STORE_FORMAT};
pub use parts::MOST_PARTS_LISTED;
pub use rebuild::{RebuildReport, rebuild, rebuild_if_the_catalog_changed};
pub(crate) use recent::RecentChanges;
pub use snapshot::{Restored, restore};
pub(crate) use status_index::{Cursor, Expectation, OverdueCursor, Selection, StatusIndex};
pub use writer::WriterLimits;
pub(crate) use writer::{
    Ack, BatchReport, StreamOrigin, SubmitError, WriterHandle, WriterTask, spawn_writer,
};

/// Storage failures. Internal detail: logged, never returned to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption it detected).
    #[error("storage engine: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode: the data directory was written by something else.
    #[error("corrupt record in tree {tree}: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// Why.
        reason: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The data directory has a layout this version cannot read.
    #[error(
        "the data directory has store format {found}, and this qistatus reads format \
         {expected}: {advice}"
    )]
    Format {
        /// The format found.
        found: u64,
        /// The format this version reads.
        expected: u64,
        /// What to do.
        advice: &'static str,
    },
    /// The log holds fewer records than the view says it applied.
    #[error(
        "the log ends at record {log_ends} but the view has applied {applied}: the log was \
         truncated or replaced; restore a snapshot or rebuild the directory"
    )]
    LogBehindView {
        /// The last record in the log.
        log_ends: u64,
        /// The view's `applied_through`.
        applied: u64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    WriterThread(std::io::Error),
    /// A snapshot could not be taken, read or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A file of the store could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The system gave no randomness for a new secret.
    #[error("no randomness for {what}: {reason}")]
    NoRandomness {
        /// What the randomness was for.
        what: &'static str,
        /// The system's error.
        reason: String,
    },
}

impl StoreError {
    /// Whether stored bytes were found damaged (a checksum that does not match): never
    /// served or reconciled, reported as data loss.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Log(e) => e.is_damage(),
            StoreError::LogBehindView { .. } => true,
            _ => false,
        }
    }

    /// Whether this is the device being out of space: it passes once space is freed.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Log(e) => e.is_out_of_space(),
            StoreError::Io(e) | StoreError::Sled(sled::Error::Io(e)) => log::is_out_of_space(e),
            _ => false,
        }
    }
}

/// Where in `op`'s history the webhook `id` is, if it is there.
pub(crate) fn stored_in(op: &Operation, id: &EventId) -> Option<EventRef> {
    op.history
        .iter()
        .find(|e| e.event_id == *id)
        .map(|e| EventRef::Event(e.sequence))
}

/// A seek point is written at every sequence that is a multiple of this: a read of the log
/// from a sequence starts at most this many records before it, for 1/64 of a key per
/// webhook.
pub(crate) const SEEK_EVERY: u64 = 64;

/// The value of a seek point ([`Key::SeekPoint`]): where the record at its sequence is in
/// the log, and when it was received (what retention cuts by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeekPoint {
    /// The record's payload: the next record's frame starts right after it.
    pub(crate) at: PayloadRef,
    /// Its receive time, ms since the epoch.
    pub(crate) received_at: i64,
}

impl record::Record for SeekPoint {}

/// Where an operation's webhooks' bodies are ([`Store::bodies`]), to read them with
/// [`Store::body`].
#[derive(Debug, Clone, Default)]
pub struct WebhookBodies {
    at: Bodies,
    compacted_through: u64,
}

/// What [`Store::changes_after`] read: the changes, and the last sequence it looked at (a
/// record whose operation no longer holds it, after a rebuild moved it, has no change).
#[derive(Debug, Clone, Default)]
pub struct ChangesRead {
    /// The changes, in sequence order.
    pub changes: Vec<(u64, Change)>,
    /// Every sequence up to this one was read.
    pub through: u64,
}

/// The effect of one stored webhook on its operation: what watchers read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Status before this webhook; `None` when it created the operation.
    pub previous_status: Option<String>,
    /// Whether the status (or phase) changed, or the operation is new.
    pub status_changed: bool,
    /// The operation right after this webhook, without history.
    pub operation: Operation,
    /// The milestones this webhook reached first (each is reached once per operation).
    pub milestones_reached: Vec<String>,
    /// Set when this is no webhook but the moment the operation became overdue (the
    /// operation itself did not change): which status it held too long.
    pub overdue: Option<Overdue>,
}

impl Change {
    /// The change from the state `prior` (`None`: the operation is new) to `after`, which
    /// one webhook made.
    pub(crate) fn between(prior: Option<Prior>, after: &Operation) -> Change {
        Change {
            status_changed: prior
                .as_ref()
                .is_none_or(|p| p.status != after.status || p.phase != after.phase),
            milestones_reached: after
                .milestones
                .iter()
                .filter(|m| {
                    prior
                        .as_ref()
                        .is_none_or(|p| !p.milestones.contains(&m.name))
                })
                .map(|m| m.name.clone())
                .collect(),
            previous_status: prior.map(|p| p.status),
            operation: after.without_history(),
            overdue: None,
        }
    }

    /// The moment `operation` (unchanged) became overdue in `status`, held since `since`,
    /// due at `due`.
    pub(crate) fn overdue(operation: &Operation, status: &str, since: i64, due: i64) -> Change {
        Change {
            previous_status: Some(operation.status.clone()),
            status_changed: false,
            operation: operation.without_history(),
            milestones_reached: Vec::new(),
            overdue: Some(Overdue {
                status: status.to_owned(),
                since,
                expected_within: due.saturating_sub(since),
                due,
            }),
        }
    }

    /// About how many bytes of memory the change holds: its texts, milestones and facts
    /// plus a fixed overhead. What the recent-changes window and each watcher's queue count
    /// their bounds in.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Change>() - std::mem::size_of::<Operation>()
            + self.previous_status.as_ref().map_or(0, String::len)
            + self
                .milestones_reached
                .iter()
                .map(|m| std::mem::size_of::<String>() + m.len())
                .sum::<usize>()
            + Self::operation_bytes(&self.operation)
    }

    /// About how many bytes `op` holds, not counting its history.
    pub fn operation_bytes(op: &Operation) -> usize {
        use crate::domain::webhook::FactValue;
        let text = |s: &String| std::mem::size_of::<String>() + s.len();
        std::mem::size_of::<Operation>()
            + op.kind.len()
            + op.key.len()
            + op.status.len()
            + op.detail.len()
            + op.conflict.iter().map(text).sum::<usize>()
            + op.milestones
                .iter()
                .map(|m| std::mem::size_of_val(m) + m.name.len())
                .sum::<usize>()
            + op.facts
                .iter()
                .map(|(name, value)| {
                    std::mem::size_of::<(String, FactValue)>()
                        + name.len()
                        + match value {
                            FactValue::Text(t) => t.len(),
                            FactValue::Number(_) | FactValue::Bool(_) => 0,
                        }
                })
                .sum::<usize>()
    }
}

/// What a [`Change`] compares of an operation's state before it: taken before the
/// operation is reconciled further, without copying its history.
#[derive(Debug)]
pub(crate) struct Prior {
    status: String,
    phase: Phase,
    milestones: Vec<String>,
}

impl Prior {
    pub(crate) fn of(op: &Operation) -> Prior {
        Prior {
            status: op.status.clone(),
            phase: op.phase,
            milestones: op.milestones.iter().map(|m| m.name.clone()).collect(),
        }
    }
}

/// How many operations of a kind are in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationCount {
    /// The kind.
    pub kind: String,
    /// The status.
    pub status: String,
    /// The status's phase.
    pub phase: Phase,
    /// How many operations.
    pub operations: u64,
}

/// What a key (and maybe a kind) names: [`Store::lookup`].
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// One operation.
    Found(Box<Operation>),
    /// None; the text says what was looked for.
    Missing(String),
    /// Operations of these kinds share the key, and no kind was given.
    Several(Vec<String>),
}

impl Lookup {
    /// What to tell a caller who gave a key that names several kinds and no kind.
    pub fn ambiguous(key: &str, kinds: &[String]) -> String {
        format!(
            "key {key:?} names operations of several kinds ({}): give the kind",
            kinds.join(", ")
        )
    }
}

/// A JSON object that could not be attributed to an operation, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Content identifier.
    pub event_id: EventId,
    /// Receive time, ms since the epoch.
    pub received_at: i64,
    /// Why it could not be read.
    pub reason: String,
    /// The request body exactly as received.
    pub raw: Vec<u8>,
}

/// Where a known webhook is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventRef {
    /// Among the stored webhooks, at this sequence.
    Event(u64),
    /// In the quarantine, under this id.
    Quarantine(u64),
}

/// The key spaces of the store, for reads and scans; cheap to clone.
#[derive(Clone, Debug)]
struct Trees {
    /// The one sled tree all spaces live in.
    all: sled::Tree,
    seek_points: Space,
    operations: Space,
    status_index: Space,
    quarantine: Space,
    counts: Space,
    status_since: Space,
    due: Space,
    flow: Space,
    parts: Space,
}

/// A handle on the data directory, cheap to clone. Reads go straight to sled.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    trees: Trees,
    log: Arc<dyn Log>,
    dir: PathBuf,
    /// Keys written to sled (inserted or removed) since the store was opened, counted in
    /// [`Store::apply`]: sled's cost is per key, so this is what the view costs.
    keys_written: Arc<std::sync::atomic::AtomicU64>,
    /// Stage durations and lags the writer added since the store was opened.
    flow_seen: Arc<flow::FlowSeen>,
    /// Whether writes keep the flow's counters ([`Store::set_flow`]).
    flow_on: Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Runs `read` on tokio's blocking pool and returns what it returns: how async code reads
    /// a *scan* of the store (a list page, the counts, the quarantine, a watcher's catch-up
    /// from the log, what fell overdue, `/metrics`), every time.
    ///
    /// The rule, decided here once and measured: a scan reads as many leaves (and log
    /// segments) as its size, and on a runtime worker it would hold up every task queued on
    /// that worker, the intake's among them, so it goes to the threads that are there to
    /// wait. A *point read* (one operation and its webhooks' bodies: `GetOperation`, the
    /// console's operation and webhook pages) and the meta values every batch touches are
    /// read in place: a few cached leaves, which cost less than the hand-over to a pool thread
    /// and back. Measured side by side (BENCHMARKS.md, "Reads: in place, or on the blocking
    /// pool"): `GetOperation` on the blocking pool served 41 % fewer reads a second (13,633 ·
    /// 14,180/s against 23,965 · 22,965/s in place), its p99 10.4 · 10.6 ms against 7.1 · 7.2
    /// ms, and under concurrent ingest its p99 rose from 7.7 · 8.2 ms to 10.5 · 9.9 ms while
    /// the webhooks' own p99 did not improve (12.0 · 11.5 ms in place, 13.1 · 11.8 ms).
    pub async fn read_async<T, E>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .expect("a store read does not panic: its failures are errors")
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: Key<'_>) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.trees.all.get(key.encode())?)
    }

    /// Applies `writes` as one atomic batch (not flushed).
    pub(crate) fn apply(&self, writes: Writes) -> Result<(), StoreError> {
        let keys = writes.apply(&self.trees.all)?;
        self.keys_written
            .fetch_add(keys as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Keys written to sled since the store was opened.
    pub fn keys_written(&self) -> u64 {
        self.keys_written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The log.
    pub(crate) fn log(&self) -> &dyn Log {
        self.log.as_ref()
    }

    /// Bytes the log takes on disk.
    pub fn log_size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.log.size_bytes()?)
    }

    /// The LSN of the log's last record (0 when empty).
    pub fn log_last_lsn(&self) -> u64 {
        self.log.last_lsn()
    }

    /// Whether any webhook (stored or quarantined) was ever written.
    pub fn holds_webhooks(&self) -> Result<bool, StoreError> {
        let counters = self.counters()?;
        Ok(counters.next_sequence > 1 || counters.next_quarantine > 1)
    }

    /// Applies every log record past `applied_through` to the view, under `catalog`:
    /// whatever a crash kept from reaching sled's disk. Returns how many records it applied.
    pub fn replay(&self, catalog: &crate::domain::catalog::Catalog) -> Result<u64, StoreError> {
        const CHUNK: usize = 1024;
        let mut records = Vec::with_capacity(CHUNK);
        let mut refs = Vec::with_capacity(CHUNK);
        let mut replayed = 0u64;
        let mut flush = |records: &mut Vec<_>, refs: &mut Vec<_>| -> Result<(), StoreError> {
            view::apply(self, catalog, records, refs)?;
            replayed += records.len() as u64;
            records.clear();
            refs.clear();
            Ok(())
        };
        self.log
            .replay_after(self.applied_through()?, &mut |record, at| {
                records.push(record);
                refs.push(at);
                if records.len() == CHUNK {
                    flush(&mut records, &mut refs)?;
                }
                Ok(())
            })?;
        flush(&mut records, &mut refs)?;
        if replayed > 0 {
            self.flush()?;
            tracing::info!(replayed, "log records applied to the view at start");
        }
        Ok(replayed)
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The changes of the records with sequences in `(after, up_to]`, at most `limit`, in
    /// order, worked out under `catalog` from the log and the operations: the state of an
    /// operation at a sequence is the reconciliation of its webhooks up to it (the same pure
    /// function the writer applied, see [`crate::domain::reconcile`]), so the change a webhook
    /// made is the difference between its operation's state before and at it. What readers
    /// behind the recent window read; each record costs a read of the log (sequential) and of
    /// its operation (once per operation in a call).
    pub fn changes_after(
        &self,
        catalog: &crate::domain::catalog::Catalog,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<ChangesRead, StoreError> {
        let mut read = ChangesRead {
            changes: Vec::new(),
            through: after,
        };
        if after >= up_to || limit == 0 {
            return Ok(read);
        }
        let reconciler = crate::domain::reconcile::Reconciler::new(catalog);
        let mut operations: HashMap<(String, String), Option<Operation>> = HashMap::new();
        self.logged_after(after, &mut |sequence, record, _at| {
            if sequence > up_to || read.changes.len() == limit {
                return Ok(false);
            }
            read.through = sequence;
            let (kind, key) = match &record.header.entry {
                Entry::Event { envelope, .. } | Entry::Promote { envelope, .. } => {
                    (&envelope.kind, &envelope.key)
                }
                Entry::Overdue { kind, key, .. } => (kind, key),
                Entry::Quarantine { .. } => return Ok(true),
            };
            let op = match operations.entry((kind.clone(), key.clone())) {
                std::collections::hash_map::Entry::Occupied(read) => read.into_mut(),
                std::collections::hash_map::Entry::Vacant(unread) => {
                    unread.insert(self.operation(kind, key)?)
                }
            };
            if let Some(op) = op
                && let Some(change) = change_at(&reconciler, op, sequence, &record.header.entry)
            {
                read.changes.push((sequence, change));
            }
            Ok(true)
        })?;
        Ok(read)
    }

    /// The seek points after sequence `after`, in order.
    pub(crate) fn seek_points_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, SeekPoint), StoreError>> + '_ {
        self.trees
            .seek_points
            .range(
                std::ops::Bound::Excluded(after.to_be_bytes().to_vec()),
                std::ops::Bound::Unbounded,
            )
            .map(|kv| {
                let (k, v) = kv?;
                Ok((u64_from_be(&k, "seek_points")?, decode(&v, "seek_points")?))
            })
    }

    /// Calls `each` with every record of the log with a sequence after `after` (webhooks and
    /// overdue events, not the quarantine), in order, while it returns `true`. Starts at the
    /// last seek point at or before `after`: at most [`SEEK_EVERY`] records are read for
    /// nothing.
    pub(crate) fn logged_after(
        &self,
        after: u64,
        each: &mut dyn FnMut(u64, Record, PayloadRef) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let seek = self
            .trees
            .seek_points
            .range(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Included(after.to_be_bytes().to_vec()),
            )
            .next_back()
            .transpose()?
            .map(|(_, v)| decode::<SeekPoint>(&v, "seek_points"))
            .transpose()?;
        self.log
            .read_after(seek.as_ref().map(|s| &s.at), &mut |record, at| match record
                .header
                .entry
                .sequence()
            {
                Some(sequence) if sequence > after => each(sequence, record, at),
                _ => Ok(true),
            })
    }

    /// The operation of `kind` with `key`.
    pub fn operation(&self, kind: &str, key: &str) -> Result<Option<Operation>, StoreError> {
        self.get(Key::Operation { kind, key })?
            .map(|v| decode(&v, "operations"))
            .transpose()
    }

    /// What `key` names, of `kind` (canonical) when given: what the API and the console both
    /// look up.
    pub fn lookup(&self, key: &str, kind: Option<&str>) -> Result<Lookup, StoreError> {
        if let Some(kind) = kind {
            return Ok(match self.operation(kind, key)? {
                Some(op) => Lookup::Found(Box::new(op)),
                None => Lookup::Missing(format!("no {kind} operation with key {key:?}")),
            });
        }
        let mut found = self.operations_with_key(key)?;
        Ok(match found.len() {
            0 => Lookup::Missing(format!("no operation with key {key:?}")),
            1 => Lookup::Found(Box::new(found.remove(0))),
            _ => Lookup::Several(found.into_iter().map(|op| op.kind).collect()),
        })
    }

    /// Every operation with `key`, whatever its kind, ordered by kind.
    pub fn operations_with_key(&self, key: &str) -> Result<Vec<Operation>, StoreError> {
        // Every kind of one key: the bodies that start with `key \0`.
        let prefix = Key::Operation { kind: "", key }.body();
        self.trees
            .operations
            .scan_prefix(&prefix)
            .map(|kv| decode(&kv?.1, "operations"))
            .collect()
    }

    /// The operation of `kind` with `key`, with where its webhooks' bodies are.
    pub(crate) fn stored_operation(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<(Operation, Bodies)>, StoreError> {
        self.get(Key::Operation { kind, key })?
            .map(|v| decode_operation(&v))
            .transpose()
    }

    /// Where the webhooks of operation (`kind`, `key`) have their bodies, to read with
    /// [`Store::body`].
    pub fn bodies(&self, kind: &str, key: &str) -> Result<WebhookBodies, StoreError> {
        Ok(WebhookBodies {
            at: self
                .stored_operation(kind, key)?
                .map(|(_, bodies)| bodies)
                .unwrap_or_default(),
            compacted_through: self.compacted_through()?,
        })
    }

    /// The body of the webhook at `sequence` among `bodies`, byte for byte, checked against
    /// its frame's checksum; `None` when it is not kept (retention compacted it away) or is
    /// not one of them.
    /// [`Store::body`], checked against `id`, the content identifier the operation keeps for
    /// it: a body altered on disk (its frame's checksum recomputed) is refused as damage
    /// ([`LogError::PayloadAltered`]), never served.
    pub fn body_checked(
        &self,
        bodies: &WebhookBodies,
        sequence: u64,
        id: &crate::domain::webhook::EventId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.body(bodies, sequence)? {
            Some(raw) if !crate::domain::webhook::body_matches(&raw, id) => {
                Err(LogError::PayloadAltered { sequence }.into())
            }
            kept => Ok(kept),
        }
    }

    /// The stored body of webhook `sequence` (checked against its frame's checksum only:
    /// what is served goes through [`Store::body_checked`]).
    pub fn body(
        &self,
        bodies: &WebhookBodies,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if sequence <= bodies.compacted_through {
            return Ok(None);
        }
        match bodies.at.binary_search_by_key(&sequence, |(s, _)| *s) {
            Ok(i) => Ok(Some(self.log.payload(&bodies.at[i].1)?)),
            Err(_) => Ok(None),
        }
    }

    /// Where a webhook that normalized to `normalized` is stored already, if it is: an event
    /// is found in its operation's history (the one place that already knows every webhook
    /// of the operation, kept forever), a quarantined body by its content hash in the `E`
    /// space, which holds only the quarantine's.
    ///
    /// Trade-off: the history is what the writer reads anyway to reconcile, so deduplicating
    /// there costs no key per webhook; the price is that a body the catalog now reads
    /// differently from when it was stored (a reload that made it unreadable) is no longer
    /// recognized, and is quarantined instead of answered as a duplicate.
    pub fn find_stored(&self, normalized: &Normalized) -> Result<Option<EventRef>, StoreError> {
        match normalized {
            Normalized::Event(envelope) => Ok(self
                .operation(&envelope.kind, &envelope.key)?
                .and_then(|op| stored_in(&op, &envelope.event_id))),
            Normalized::Quarantine { event_id, .. } => self
                .get(Key::EventId(event_id))?
                .map(|v| decode(&v, "event_ids"))
                .transpose(),
        }
    }

    /// The quarantined webhooks, oldest first.
    pub fn quarantined(
        &self,
    ) -> impl Iterator<Item = Result<(u64, QuarantineEntry), StoreError>> + '_ {
        self.trees.quarantine.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((u64_from_be(&k, "quarantine")?, decode(&v, "quarantine")?))
        })
    }

    /// The quarantined webhooks with ids after `after`, oldest first.
    pub fn quarantined_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, QuarantineEntry), StoreError>> + '_ {
        let start = std::ops::Bound::Included(after.saturating_add(1).to_be_bytes().to_vec());
        self.trees
            .quarantine
            .range(start, std::ops::Bound::Unbounded)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((u64_from_be(&k, "quarantine")?, decode(&v, "quarantine")?))
            })
    }

    /// The quarantined webhook with `id`.
    pub(crate) fn quarantine_entry(&self, id: u64) -> Result<Option<QuarantineEntry>, StoreError> {
        self.get(Key::Quarantine(id))?
            .map(|v| decode(&v, "quarantine"))
            .transpose()
    }

    /// The sequence of the last stored webhook or event (0: none).
    pub(crate) fn last_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.counters()?.next_sequence - 1)
    }

    /// How many webhooks are quarantined.
    pub fn quarantine_len(&self) -> usize {
        self.trees.quarantine.len()
    }

    /// Every operation, ordered by (key, kind).
    pub fn operations(&self) -> impl Iterator<Item = Result<Operation, StoreError>> + '_ {
        self.trees
            .operations
            .iter()
            .map(|kv| decode(&kv?.1, "operations"))
    }
}

/// The change the record at `sequence` made to `op` (which holds every webhook of it, and
/// maybe later ones), worked out under `reconciler`: `None` when the webhook is no longer
/// the operation's (a rebuild under another catalog attributed it elsewhere).
fn change_at(
    reconciler: &crate::domain::reconcile::Reconciler<'_>,
    op: &Operation,
    sequence: u64,
    entry: &Entry,
) -> Option<Change> {
    let up_to = |last: u64| -> Vec<_> {
        op.history
            .iter()
            .filter(|e| e.sequence <= last)
            .cloned()
            .collect()
    };
    let is_overdue = matches!(entry, Entry::Overdue { .. });
    if !is_overdue && !op.history.iter().any(|e| e.sequence == sequence) {
        return None;
    }
    let at = reconciler.reconcile(&op.kind, &op.key, up_to(sequence))?;
    match entry {
        Entry::Overdue {
            status, since, due, ..
        } => Some(Change::overdue(&at, status, *since, *due)),
        _ => {
            let before = reconciler.reconcile(&op.kind, &op.key, up_to(sequence - 1));
            Some(Change::between(before.as_ref().map(Prior::of), &at))
        }
    }
}
