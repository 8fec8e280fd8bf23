//! The embedded store: sled trees for the event log, deduplication, operations and the
//! status index. Readers read sled directly; every write goes through the single
//! [`writer`] task.
//!
//! # Layout
//!
//! The [`log`] is the source of truth: every stored webhook, byte for byte, with what the
//! writer decided about it, fsynced once per batch before anyone is answered. sled is a
//! [`view`] materialized from it, in key spaces of one tree whose schema [`keys`] owns: the
//! event index, change feed, deduplication, operations, status and phase indexes, the
//! quarantine, counters and `applied_through`. Index maintenance is written once, in
//! [`put_operation`], for the writer, rebuild and [`Store::check_indexes`].
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
//!   [`decode`]).

mod format_v1;
mod keys;
pub(crate) mod log;
pub mod rebuild;
pub(crate) mod recent;
pub mod snapshot;
pub(crate) mod status_index;
pub(crate) mod view;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use sled::IVec;

pub(crate) use keys::{Key, Meta, Space, SpaceId, Writes, phase_byte};
use log::{Log, LogError, PayloadRef, SegmentLog};
use serde::{Deserialize, Serialize};

use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::EventId;

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

/// One stored webhook, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
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

/// What the `L` space keeps per sequence: where the webhook is, then the change it made.
/// One key instead of two per webhook (sled's cost is per key); the entry comes first so
/// that reading only it ([`decode_entry`]) does not decode the change.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredEvent<C> {
    pub(crate) entry: LogEntry,
    pub(crate) change: C,
}

/// The [`LogEntry`] of a stored [`StoredEvent`], without decoding its change.
fn decode_entry(bytes: &[u8]) -> Result<LogEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree: "events",
        reason,
    };
    match bytes.split_first() {
        // The entry's shape is the same in every format so far.
        Some((&version, body)) if (1..=RECORD_VERSION).contains(&version) => {
            postcard::take_from_bytes::<LogEntry>(body)
                .map(|(entry, _change)| entry)
                .map_err(|e| corrupt(e.to_string()))
        }
        _ => decode::<StoredEvent<Change>>(bytes, "events").map(|stored| stored.entry),
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
    /// In the event log, at this sequence.
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
    phase_index: Space,
    quarantine: Space,
    counts: Space,
}

/// sled's page cache by default, in MiB. sled undercounts what a cached node costs, and the
/// allocator (mimalloc) keeps some freed memory per thread: 64 MiB keeps a million operations
/// under 400 MB of RSS (BENCHMARKS.md).
pub const DEFAULT_CACHE_MB: u64 = 64;

/// A handle on the data directory, cheap to clone. Reads go straight to sled.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    trees: Trees,
    log: Arc<dyn Log>,
    dir: PathBuf,
}

/// How often sled writes applied batches to disk on its own (the log covers the gap).
pub const CHECKPOINT_INTERVAL_MS: u64 = 500;

/// The layout of a data directory this version reads and writes: 2 is the log-first
/// layout (`log/` segments, sled as a view).
pub const STORE_FORMAT: u64 = 2;

impl Store {
    /// Opens (or creates) the store in `dir` with the default cache size.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_MB * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir`, with sled's page cache bounded to
    /// `cache_bytes` (the process's memory is a small multiple of it).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from the log; sled checkpoints itself on a timer.
            .flush_every_ms(Some(CHECKPOINT_INTERVAL_MS));
        let db = open_waiting_for_lock(&config)?;
        // Files pinned for snapshots by an earlier process are never needed after it ended.
        let pinned = snapshot::snapshots_dir(dir);
        if pinned.exists() {
            std::fs::remove_dir_all(&pinned)?;
        }
        let all = db.open_tree("qistatus")?;
        let fresh = all.is_empty();
        let space = |id: SpaceId| Space::new(all.clone(), id);
        let trees = Trees {
            events: space(SpaceId::Events),
            operations: space(SpaceId::Operations),
            status_index: space(SpaceId::StatusIndex),
            phase_index: space(SpaceId::PhaseIndex),
            quarantine: space(SpaceId::Quarantine),
            counts: space(SpaceId::Counts),
            all,
        };
        let store = Store {
            db,
            trees,
            log: Arc::new(SegmentLog::open(dir.join("log"))?),
            dir: dir.to_owned(),
        };
        store.check_format(fresh)?;
        store.ensure_random_meta(Meta::PageTokenSecret, 32, "the page-token secret")?;
        store.ensure_random_meta(Meta::StoreId, 16, "the store's identity")?;
        store.ensure_counts()?;
        let (applied, log_ends) = (store.applied_through()?, store.log.last_lsn());
        if log_ends < applied {
            return Err(StoreError::LogBehindView { log_ends, applied });
        }
        Ok(store)
    }

    /// Checks (or, on a fresh directory, writes) the format version.
    fn check_format(&self, fresh: bool) -> Result<(), StoreError> {
        let key = Key::Meta(Meta::FormatVersion);
        match self.get(key)? {
            Some(v) => {
                let found = u64_from_be(&v, "meta")?;
                if found != STORE_FORMAT {
                    return Err(StoreError::Format {
                        found,
                        expected: STORE_FORMAT,
                        advice: if found > STORE_FORMAT {
                            "it was written by a newer qistatus; run that version"
                        } else {
                            "replay its webhooks into a new directory"
                        },
                    });
                }
            }
            None if fresh => {
                self.trees
                    .all
                    .insert(key.encode(), &STORE_FORMAT.to_be_bytes())?;
                self.db.flush()?;
            }
            None => {
                return Err(StoreError::Format {
                    found: 1,
                    expected: STORE_FORMAT,
                    advice: "it was written before log-first storage (payloads/ beside sled); \
                             replay its webhooks into a new directory with `qistatus replay`",
                });
            }
        }
        Ok(())
    }

    /// Writes `len` random bytes under `name` when the store has none yet (on its first open,
    /// or the first by a version that knows `name`), and keeps them from then on. Called
    /// before the writer starts, so it does not race with it.
    fn ensure_random_meta(
        &self,
        name: Meta,
        len: usize,
        what: &'static str,
    ) -> Result<(), StoreError> {
        if self.get(Key::Meta(name))?.is_none() {
            let mut bytes = vec![0u8; len];
            getrandom::fill(&mut bytes).map_err(|e| StoreError::NoRandomness {
                what,
                reason: e.to_string(),
            })?;
            self.trees.all.insert(Key::Meta(name).encode(), bytes)?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Counts every operation once, for a store written before counters existed (a scan, once);
    /// from then on every change keeps them (see [`put_operation`]).
    fn ensure_counts(&self) -> Result<(), StoreError> {
        if self.get(Key::Meta(Meta::CountsReady))?.is_some() {
            return Ok(());
        }
        let mut writes = Writes::default();
        for op in self.operations() {
            writes.add_count(count_key(&op?), 1);
        }
        writes.put(Key::Meta(Meta::CountsReady), &[1u8][..]);
        writes.apply(&self.trees.all)?;
        Ok(())
    }

    /// How many operations there are of each kind in each status (with the status's phase),
    /// from the counters every change keeps: no scan of the operations.
    pub fn counts(&self) -> Result<Vec<OperationCount>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees.counts.iter() {
            let (key, value) = kv?;
            let corrupt = || StoreError::Corrupt {
                tree: "counts",
                reason: "a counter that does not decode".into(),
            };
            let mut parts = key.split(|b| *b == 0);
            let (Some(kind), Some(&[phase]), Some(status)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(corrupt());
            };
            let phase = Phase::ALL
                .into_iter()
                .find(|p| keys::phase_byte(*p) == phase)
                .ok_or_else(corrupt)?;
            out.push(OperationCount {
                kind: String::from_utf8_lossy(kind).into_owned(),
                status: String::from_utf8_lossy(status).into_owned(),
                phase,
                operations: u64_from_be(&value, "counts")?,
            });
        }
        Ok(out)
    }

    /// The store's identity (32 hex digits): random, made when the store was created, kept by
    /// snapshots, and different for a wiped or separately created data directory. Sequence
    /// numbers mean something only together with it.
    pub fn id(&self) -> Result<String, StoreError> {
        let id = self
            .get(Key::Meta(Meta::StoreId))?
            .ok_or_else(|| StoreError::Corrupt {
                tree: "meta",
                reason: "the store has no identity".into(),
            })?;
        Ok(hex::encode(id))
    }

    /// The secret that signs `ListByStatus` page tokens, stable across restarts.
    pub fn page_token_secret(&self) -> Result<[u8; 32], StoreError> {
        let value = self
            .get(Key::Meta(Meta::PageTokenSecret))?
            .ok_or(StoreError::Corrupt {
                tree: "meta",
                reason: "page-token secret missing".into(),
            })?;
        value.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            reason: "page-token secret has the wrong length".into(),
        })
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: Key<'_>) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.trees.all.get(key.encode())?)
    }

    /// Applies `writes` as one atomic batch (not flushed).
    pub(crate) fn apply(&self, writes: Writes) -> Result<(), StoreError> {
        Ok(writes.apply(&self.trees.all)?)
    }

    /// The log.
    pub(crate) fn log(&self) -> &dyn Log {
        self.log.as_ref()
    }

    /// Bytes the event log takes on disk.
    pub fn log_size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.log.size_bytes()?)
    }

    /// The LSN of the log's last record (0 when empty).
    pub fn log_last_lsn(&self) -> u64 {
        self.log.last_lsn()
    }

    /// The last log record the view has applied (0: none).
    pub fn applied_through(&self) -> Result<u64, StoreError> {
        Ok(match self.get(Key::Meta(Meta::AppliedThrough))? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 0,
        })
    }

    /// A cluster node: the last stream message the view took into account (0: none, or not
    /// a cluster node). Never ahead of the view: the writer records it after applying.
    pub fn stream_through(&self) -> Result<u64, StoreError> {
        Ok(match self.get(Key::Meta(Meta::StreamThrough))? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 0,
        })
    }

    /// Records that the view took stream messages up to `sequence` into account.
    pub(crate) fn set_stream_through(&self, sequence: u64) -> Result<(), StoreError> {
        self.trees.all.insert(
            Key::Meta(Meta::StreamThrough).encode(),
            &sequence.to_be_bytes(),
        )?;
        Ok(())
    }

    /// Whether any webhook (stored or quarantined) was ever written.
    pub fn holds_webhooks(&self) -> Result<bool, StoreError> {
        let counters = self.counters()?;
        Ok(counters.next_sequence > 1 || counters.next_quarantine > 1)
    }

    /// Takes `id` (16 bytes) as the store's identity: a cluster node's view is a copy of the
    /// cluster's stream, so it carries the stream's identity, and a watcher's sequence means
    /// the same on every node.
    pub(crate) fn adopt_identity(&self, id: [u8; 16]) -> Result<(), StoreError> {
        if self.get(Key::Meta(Meta::StoreId))?.as_deref() == Some(&id[..]) {
            return Ok(());
        }
        self.trees
            .all
            .insert(Key::Meta(Meta::StoreId).encode(), &id)?;
        self.trees.all.flush()?;
        Ok(())
    }

    /// Where the writer continues from.
    pub(crate) fn counters(&self) -> Result<writer::Counters, StoreError> {
        Ok(writer::Counters {
            next_lsn: self.applied_through()? + 1,
            next_sequence: self.next_sequence()?,
            next_quarantine: self.next_quarantine_id()?,
        })
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

    /// The sequence the next stored webhook will get (1 on an empty store).
    pub fn next_sequence(&self) -> Result<u64, StoreError> {
        self.counter(Meta::NextSequence)
    }

    /// Every sequence up to this one has been compacted out of the log (0: none).
    pub fn compacted_through(&self) -> Result<u64, StoreError> {
        Ok(match self.get(Key::Meta(Meta::CompactedThrough))? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 0,
        })
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

    pub(crate) fn next_quarantine_id(&self) -> Result<u64, StoreError> {
        self.counter(Meta::NextQuarantine)
    }

    fn counter(&self, name: Meta) -> Result<u64, StoreError> {
        Ok(match self.get(Key::Meta(name))? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 1,
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

    /// The stored webhook at `sequence`, unless retention has compacted it away.
    pub fn log_entry(&self, sequence: u64) -> Result<Option<LogEntry>, StoreError> {
        self.get(Key::Event(sequence))?
            .map(|v| decode_entry(&v))
            .transpose()
    }

    /// The raw body of a stored webhook, byte for byte.
    pub fn raw_payload(&self, entry: &LogEntry) -> Result<Vec<u8>, StoreError> {
        Ok(self.log.payload(&entry.payload)?)
    }

    /// Where the webhook with `id` is stored, if it is.
    pub fn event_ref(&self, id: &EventId) -> Result<Option<EventRef>, StoreError> {
        self.get(Key::EventId(id))?
            .map(|v| decode(&v, "event_ids"))
            .transpose()
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
    pub(crate) fn log_entries(
        &self,
    ) -> impl Iterator<Item = Result<(u64, LogEntry), StoreError>> + '_ {
        self.trees.events.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((u64_from_be(&k, "events")?, decode_entry(&v)?))
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

    /// Checks that the status and phase indexes hold exactly one entry per operation, the
    /// one its current status and phase call for ([`put_operation`] says which). Returns the
    /// problems found.
    pub fn check_indexes(&self) -> Result<Vec<String>, StoreError> {
        let mut expected = std::collections::BTreeMap::new();
        for op in self.operations() {
            let mut writes = Writes::default();
            put_operation(&mut writes, None, &op?);
            for (key, value) in writes.entries() {
                if matches!(key.first(), Some(&b) if b != SpaceId::Operations as u8) {
                    expected.insert(key.clone(), value.clone());
                }
            }
        }
        let mut actual = std::collections::BTreeMap::new();
        for index in [&self.trees.status_index, &self.trees.phase_index] {
            for kv in index.iter() {
                let (k, v) = kv?;
                let id = if std::ptr::eq(index, &self.trees.status_index) {
                    SpaceId::StatusIndex
                } else {
                    SpaceId::PhaseIndex
                };
                let mut key = vec![id as u8];
                key.extend_from_slice(&k);
                actual.insert(key, Some(v));
            }
        }
        let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let mut problems = Vec::new();
        for (key, value) in &expected {
            match actual.get(key) {
                None => problems.push(format!("missing {:?}", text(key))),
                Some(v) if v != value => problems.push(format!("outdated {:?}", text(key))),
                Some(_) => {}
            }
        }
        for stale in actual.keys().filter(|k| !expected.contains_key(*k)) {
            problems.push(format!("stale {:?}", text(stale)));
        }
        let mut counted = std::collections::BTreeMap::new();
        for op in self.operations() {
            let op = op?;
            *counted
                .entry((op.kind.clone(), op.phase, op.status.clone()))
                .or_insert(0u64) += 1;
        }
        let kept: std::collections::BTreeMap<_, _> = self
            .counts()?
            .into_iter()
            .map(|c| ((c.kind, c.phase, c.status), c.operations))
            .collect();
        if kept != counted {
            problems.push(format!("counters {kept:?} differ from a count {counted:?}"));
        }
        Ok(problems)
    }
}

/// Writes `after` and its index entries, and removes the entries of `before` (its state
/// before this write, if it existed) that no longer apply. The one place that knows which
/// index entries an operation has.
pub(crate) fn put_operation(writes: &mut Writes, before: Option<&Operation>, after: &Operation) {
    let counted_as_before = before.is_some_and(|b| {
        (b.kind.as_str(), b.phase, b.status.as_str())
            == (after.kind.as_str(), after.phase, after.status.as_str())
    });
    if !counted_as_before {
        if let Some(before) = before {
            writes.add_count(count_key(before), -1);
        }
        writes.add_count(count_key(after), 1);
    }
    if let Some(before) = before {
        if before.status != after.status {
            delete_status_entry(writes, before);
        }
        if before.phase != after.phase {
            delete_phase_entry(writes, before);
        }
    }
    let summary = IVec::from(index_value(after));
    let (kind, key) = (after.kind.as_str(), after.key.as_str());
    writes.put(
        Key::StatusIndex {
            status: &after.status,
            kind,
            key,
        },
        summary.clone(),
    );
    writes.put(
        Key::PhaseIndex {
            phase: after.phase,
            kind,
            key,
        },
        summary,
    );
    writes.put(Key::Operation { kind, key }, encode(after));
}

/// Removes an operation and its index entries.
pub(crate) fn delete_operation(writes: &mut Writes, before: &Operation) {
    writes.add_count(count_key(before), -1);
    delete_status_entry(writes, before);
    delete_phase_entry(writes, before);
    writes.delete(Key::Operation {
        kind: &before.kind,
        key: &before.key,
    });
}

/// The counter an operation is counted in.
fn count_key(op: &Operation) -> Key<'_> {
    Key::Count {
        kind: &op.kind,
        phase: op.phase,
        status: &op.status,
    }
}

fn delete_status_entry(writes: &mut Writes, op: &Operation) {
    writes.delete(Key::StatusIndex {
        status: &op.status,
        kind: &op.kind,
        key: &op.key,
    });
}

fn delete_phase_entry(writes: &mut Writes, op: &Operation) {
    writes.delete(Key::PhaseIndex {
        phase: op.phase,
        kind: &op.kind,
        key: &op.key,
    });
}

/// Opens sled, waiting up to ten seconds for its file lock. A process that just closed the
/// store (a restart in place, `rebuild` right after a stop) can hold the lock a while longer
/// than its last handle: sled's background threads release it as they wind down, after a last
/// flush, which after a large batch on a loaded machine was seen to take over two seconds. A
/// lock still held after that belongs to a running server, and the error says so.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

/// The value of an index entry: the operation without its history, so that a page of a
/// list is one range scan, with no lookup per operation.
pub(crate) fn index_value(op: &Operation) -> Vec<u8> {
    encode(&op.without_history())
}

/// The version byte every record value starts with.
///
/// How records evolve: postcard is compact but not self-describing, so a change to a stored
/// struct (a field added to `Operation`, say) bumps this version, keeps the previous struct
/// as a frozen `...V1` type, and teaches [`decode`] to read version 1 into the new shape.
/// Old records stay readable; a version newer than this build is refused by name.
///
/// - 1: the first format;
/// - 2: `Operation::conflict`, `Operation::milestones` and `Change::milestones_reached`
///   added ([`format_v1`] reads format 1).
pub(crate) const RECORD_VERSION: u8 = 2;

/// A value stored as a record: how each format's body is read into it.
pub(crate) trait Record: DeserializeOwned {
    /// Reads the body of a format-1 record. By default the shape did not change.
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
}

impl Record for Operation {
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes::<format_v1::OperationV1>(body).map(Operation::from)
    }
}

impl Record for StoredEvent<Change> {
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes::<StoredEvent<format_v1::ChangeV1>>(body).map(StoredEvent::from)
    }
}

impl Record for EventRef {}
impl Record for QuarantineEntry {}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    postcard::to_io(value, &mut out)
        .expect("records serialize into a Vec: plain structs, strings and vectors");
    out
}

pub(crate) fn decode<T: Record>(bytes: &[u8], tree: &'static str) -> Result<T, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    };
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(corrupt),
        Some((1, body)) => T::from_v1(body).map_err(corrupt),
        Some((&version, _)) => Err(StoreError::Corrupt {
            tree,
            reason: format!(
                "record format {version}, and this qistatus reads up to {RECORD_VERSION}: \
                 was the directory written by a newer version?"
            ),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            reason: "an empty record".into(),
        }),
    }
}

pub(crate) fn u64_from_be(bytes: &[u8], tree: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reconcile::{EventSummary, Phase};

    fn sample_operation() -> Operation {
        Operation {
            kind: "debt".into(),
            key: "k".into(),
            status: "disbursed".into(),
            phase: Phase::Pending,
            detail: "d".into(),
            event_time: Some(5),
            first_received_at: 6,
            updated_at: 6,
            version: 1,
            last_sequence: 7,
            history: vec![EventSummary {
                sequence: 7,
                event_id: EventId([1; 32]),
                status: "disbursed".into(),
                outcome: None,
                detail: "d".into(),
                event_time: Some(5),
                received_at: 6,
                facts: Vec::new(),
            }],
            conflict: Vec::new(),
            milestones: Vec::new(),
            facts: Vec::new(),
        }
    }

    /// An operation as record format 1 wrote it. When `Operation` changes shape, this
    /// record must still decode (into the new shape): that is what the version byte is for.
    const OPERATION_V1: &str = "010464656274016b09646973627572736564000164010a0c0c01070107010101010101010101010101010101010101010101010101010101010101010109646973627572736564000164010a0c";

    #[test]
    fn records_written_by_format_1_still_decode() {
        let bytes = hex::decode(OPERATION_V1).expect("hex");
        let op: Operation = decode(&bytes, "operations").expect("a format 1 record decodes");
        assert_eq!(op, sample_operation());
        // This build writes format 2, which reads back the same.
        let written = encode(&sample_operation());
        assert_eq!(written[0], 2);
        assert_eq!(
            decode::<Operation>(&written, "operations").unwrap(),
            sample_operation()
        );
    }

    #[test]
    fn change_records_of_format_1_decode_with_their_entry() {
        // A format 1 L-space record: the sample's entry, then its change.
        let op_v1 = hex::decode(OPERATION_V1).expect("hex");
        let entry = LogEntry {
            event_id: EventId([1; 32]),
            kind: "debt".into(),
            key: "k".into(),
            received_at: 7,
            payload: PayloadRef {
                segment: 1,
                offset: 2,
                len: 3,
            },
        };
        let mut record = vec![1u8];
        record.extend(postcard::to_stdvec(&entry).unwrap());
        record.extend(postcard::to_stdvec(&Some("waiting_signature")).unwrap());
        record.push(1); // status_changed
        record.extend_from_slice(&op_v1[1..]);
        let stored: StoredEvent<Change> = decode(&record, "events").expect("decodes");
        assert_eq!(stored.entry, entry);
        assert_eq!(stored.change.operation, sample_operation());
        assert_eq!(
            stored.change.previous_status.as_deref(),
            Some("waiting_signature")
        );
        assert_eq!(decode_entry(&record).unwrap(), entry);
    }

    #[test]
    fn a_newer_record_format_is_refused_by_name() {
        let mut bytes = encode(&sample_operation());
        bytes[0] = RECORD_VERSION + 1;
        let err = decode::<Operation>(&bytes, "operations")
            .unwrap_err()
            .to_string();
        assert!(err.contains("record format 3"), "{err}");
    }

    #[test]
    fn a_directory_of_another_format_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).expect("a fresh store");
        // As the previous layout left it: data, but no format version.
        store
            .trees
            .all
            .remove(Key::Meta(Meta::FormatVersion).encode())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("store format 1") && err.contains("replay"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).expect("a fresh store");
        store
            .trees
            .all
            .insert(Key::Meta(Meta::FormatVersion).encode(), &9u64.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("store format 9") && err.contains("newer"),
            "{err}"
        );
    }

    #[test]
    fn an_index_value_decodes_as_the_operation_without_history() {
        let _ = sample_operation;
        let summary = EventSummary {
            sequence: 7,
            event_id: EventId([1; 32]),
            status: "disbursed".into(),
            outcome: None,
            detail: "d".into(),
            event_time: Some(5),
            received_at: 6,
            facts: Vec::new(),
        };
        let op = Operation {
            kind: "debt".into(),
            key: "k".into(),
            status: "disbursed".into(),
            phase: Phase::Pending,
            detail: "d".into(),
            event_time: Some(5),
            first_received_at: 6,
            updated_at: 6,
            version: 1,
            last_sequence: 7,
            history: vec![summary],
            conflict: Vec::new(),
            milestones: Vec::new(),
            facts: Vec::new(),
        };
        let decoded: Operation = decode(&index_value(&op), "test").unwrap();
        assert_eq!(
            decoded,
            Operation {
                history: Vec::new(),
                ..op
            }
        );
    }
}
