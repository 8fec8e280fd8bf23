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
//! materialized from it, in key spaces of one tree whose schema [`keys`] owns: the event
//! entries (where each sequence's webhook is in the log, and the change it made), the
//! quarantine's deduplication index, operations (whose history deduplicates events), the
//! status index (phase lists merge its runs), the quarantine, counters and `applied_through`. By concern:
//!
//! - [`open`]: opening a directory, its format check and the meta values;
//! - [`record`]: how every sled value is encoded, and read back from older formats;
//! - [`index`]: index and counter upkeep, written once in [`index::put_operation`] for the
//!   writer, rebuild and [`Store::check_indexes`]; [`due`]: the index of operations by when
//!   they fall overdue, which the overdue clock reads;
//! - [`view`]: applying log records to sled; [`rebuild`](mod@rebuild): recomputing it all;
//!   [`snapshot`]: consistent copies and restores; [`status_index`]: list pages;
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
mod index;
mod integrity;
mod keys;
mod log;
mod open;
mod rebuild;
mod recent;
mod record;
mod snapshot;
mod status_index;
mod view;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::overdue::Overdue;
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::{EventId, Normalized};
pub(crate) use keys::{Key, Meta, Space, SpaceId, Writes};
use log::{Log, LogError, PayloadRef};
use record::{StoredEvent, decode, decode_entry, u64_from_be};

// The door: what the rest of qistatus uses of the store. Nobody outside `store/` names a
// submodule; what is not re-exported here is the store's own business.
pub use integrity::{Damage, Salvage, Scrub, Verification, salvage, verify};
pub use open::{CHECKPOINT_INTERVAL_MS, DEFAULT_CACHE_MB, STORE_FORMAT};
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

/// A stored webhook's event entry in the view: what it was attributed to and where its body
/// is in the log (the body itself stays in the log, byte for byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEntry {
    /// Content identifier.
    pub event_id: EventId,
    /// Canonical kind it was attributed to.
    pub kind: String,
    /// Operation key it was attributed to.
    pub key: String,
    /// Receive time, ms since the epoch.
    pub received_at: i64,
    /// Where the request body, exactly as received, is in the payload log.
    pub payload: PayloadRef,
}

impl EventEntry {
    /// Whether a webhook made this entry. The other entries are the moments operations
    /// became overdue: they have no body (a webhook is never empty, the intake wants a JSON
    /// object), and their change says which status was held too long.
    pub fn is_webhook(&self) -> bool {
        self.payload.len > 0
    }
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
    /// About how many bytes of memory the change holds: its texts plus a fixed overhead.
    /// What the recent-changes window counts its bound in.
    pub fn approx_bytes(&self) -> usize {
        let op = &self.operation;
        std::mem::size_of::<Change>()
            + self.previous_status.as_ref().map_or(0, String::len)
            + op.kind.len()
            + op.key.len()
            + op.status.len()
            + op.detail.len()
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
    events: Space,
    operations: Space,
    status_index: Space,
    quarantine: Space,
    counts: Space,
    status_since: Space,
    due: Space,
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
}

impl Store {
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

    /// The change records with sequences in `(after, up_to]`, at most `limit`, in order.
    pub fn changes_after(
        &self,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Change)>, StoreError> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        self.trees
            .events
            .range(
                std::ops::Bound::Included(Key::Event(after + 1).body()),
                std::ops::Bound::Included(Key::Event(up_to).body()),
            )
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let stored: StoredEvent<Change> = decode(&v, "events")?;
                Ok((u64_from_be(&k, "events")?, stored.change))
            })
            .collect()
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

    /// The stored webhook at `sequence`, unless retention has compacted it away.
    pub fn event_entry(&self, sequence: u64) -> Result<Option<EventEntry>, StoreError> {
        self.get(Key::Event(sequence))?
            .map(|v| decode_entry(&v))
            .transpose()
    }

    /// The raw body of a stored webhook, byte for byte.
    pub fn raw_payload(&self, entry: &EventEntry) -> Result<Vec<u8>, StoreError> {
        Ok(self.log.payload(&entry.payload)?)
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

    /// The stored webhooks, oldest first: (sequence, where it is).
    pub(crate) fn event_entries(
        &self,
    ) -> impl Iterator<Item = Result<(u64, EventEntry), StoreError>> + '_ {
        self.trees.events.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((u64_from_be(&k, "events")?, decode_entry(&v)?))
        })
    }

    /// The sequence of the last stored webhook (0: none).
    pub(crate) fn last_sequence(&self) -> Result<u64, StoreError> {
        match self.trees.events.iter().next_back().transpose()? {
            Some((k, _)) => u64_from_be(&k, "events"),
            None => Ok(0),
        }
    }

    /// The stored webhooks after sequence `after`, oldest first: (sequence, where it is, the
    /// change it made).
    pub(crate) fn events_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, EventEntry, Change), StoreError>> + '_ {
        self.trees
            .events
            .range(
                std::ops::Bound::Included(Key::Event(after.saturating_add(1)).body()),
                std::ops::Bound::Unbounded,
            )
            .map(|kv| {
                let (k, v) = kv?;
                let stored: StoredEvent<Change> = decode(&v, "events")?;
                Ok((u64_from_be(&k, "events")?, stored.entry, stored.change))
            })
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
