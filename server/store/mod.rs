//! The embedded store: sled trees for the event log, deduplication, operations and the
//! status index. Readers read sled directly; every write goes through the single
//! [`writer`] task.
//!
//! # Layout
//!
//! Each "tree" below is a key space of one sled tree (see [`keyspace`]), so that a batch
//! reaches all of them atomically.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `log` | sequence (u64, big-endian) | [`LogEntry`]: where the raw webhook is in [`payloads`] |
//! | `changes` | sequence | [`Change`]: the operation right after that webhook (the watch feed) |
//! | `event_ids` | [`EventId`] | [`EventRef`]: where that webhook is (dedupe) |
//! | `operations` | `key \0 kind` | [`Operation`] with its history summaries |
//! | `status_index` | `status \0 kind \0 key` | the operation without history |
//! | `phase_index` | `phase byte, kind \0 key` | the operation without history |
//! | `quarantine` | id (u64, big-endian) | [`QuarantineEntry`] |
//! | `meta` | name | counters, format version |
//!
//! Kinds, statuses and keys never contain control characters (the normalizer quarantines
//! those), so `\0` separates them unambiguously and index order is (kind, key) order.
//!
//! # Guarantees
//!
//! - Every batch the writer commits is one atomic sled batch across all spaces, flushed to
//!   disk before any webhook of the batch is acknowledged: after a crash, a batch is either
//!   entirely there or entirely absent.
//! - Sequence numbers start at 1 and are gap-free in commit order.
//! - The indexes always agree with the operations tree (same atomic batch).

mod keyspace;
pub(crate) mod payloads;
pub mod rebuild;
pub(crate) mod recent;
pub(crate) mod status_index;
pub(crate) mod writer;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub(crate) use keyspace::{Space, Writes};
use payloads::{PayloadFiles, PayloadRef};
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
    /// The payload log failed.
    #[error("payload log: {0}")]
    Io(#[from] std::io::Error),
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    WriterThread(std::io::Error),
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

/// The effect of one stored webhook on its operation: what watchers read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Status before this webhook; `None` when it created the operation.
    pub previous_status: Option<String>,
    /// Whether the status (or phase) changed, or the operation is new.
    pub status_changed: bool,
    /// The operation right after this webhook, without history.
    pub operation: Operation,
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

/// The key spaces of the store, cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Trees {
    /// The one sled tree all spaces live in.
    pub(crate) all: sled::Tree,
    pub(crate) log: Space,
    pub(crate) changes: Space,
    pub(crate) event_ids: Space,
    pub(crate) operations: Space,
    pub(crate) status_index: Space,
    pub(crate) phase_index: Space,
    pub(crate) quarantine: Space,
    pub(crate) meta: Space,
}

/// sled's page cache by default, in MiB: 96 MiB keeps a million operations under 500 MB of
/// RSS.
pub const DEFAULT_CACHE_MB: u64 = 96;

const NEXT_SEQUENCE: &[u8] = b"next_sequence";
const NEXT_QUARANTINE: &[u8] = b"next_quarantine";
const COMPACTED_THROUGH: &[u8] = b"compacted_through";
const PAGE_TOKEN_SECRET: &[u8] = b"page_token_secret";

/// A handle on the data directory, cheap to clone. Reads go straight to sled.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    pub(crate) trees: Trees,
    pub(crate) payloads: Arc<PayloadFiles>,
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default cache size.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_MB * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir`, with sled's page cache bounded to
    /// `cache_bytes` (the process's memory is a small multiple of it).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from the writer's explicit flush per batch, not a timer.
            .flush_every_ms(None)
            .open()?;
        let all = db.open_tree("qistatus")?;
        let space = |prefix: u8| Space::new(all.clone(), prefix);
        let trees = Trees {
            log: space(b'L'),
            changes: space(b'C'),
            event_ids: space(b'E'),
            operations: space(b'O'),
            status_index: space(b'S'),
            phase_index: space(b'P'),
            quarantine: space(b'Q'),
            meta: space(b'M'),
            all,
        };
        let payloads = Arc::new(PayloadFiles::open(dir.join("payloads"))?);
        let store = Store {
            db,
            trees,
            payloads,
        };
        store.ensure_page_token_secret()?;
        Ok(store)
    }

    /// Creates the page-token secret on first open. Written before the writer starts, so it
    /// does not race with it.
    fn ensure_page_token_secret(&self) -> Result<(), StoreError> {
        if self.trees.meta.get(PAGE_TOKEN_SECRET)?.is_none() {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| StoreError::NoRandomness {
                what: "the page-token secret",
                reason: e.to_string(),
            })?;
            self.trees.meta.insert_now(PAGE_TOKEN_SECRET, &secret)?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// The secret that signs `ListByStatus` page tokens, stable across restarts.
    pub fn page_token_secret(&self) -> Result<[u8; 32], StoreError> {
        let value = self
            .trees
            .meta
            .get(PAGE_TOKEN_SECRET)?
            .ok_or(StoreError::Corrupt {
                tree: "meta",
                reason: "page-token secret missing".into(),
            })?;
        value.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: "meta",
            reason: "page-token secret has the wrong length".into(),
        })
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The sequence the next stored webhook will get (1 on an empty store).
    pub fn next_sequence(&self) -> Result<u64, StoreError> {
        self.counter(NEXT_SEQUENCE)
    }

    /// Every sequence up to this one has been compacted out of the log (0: none).
    pub fn compacted_through(&self) -> Result<u64, StoreError> {
        Ok(match self.trees.meta.get(COMPACTED_THROUGH)? {
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
            .changes
            .range(
                std::ops::Bound::Included((after + 1).to_be_bytes().to_vec()),
                std::ops::Bound::Included(up_to.to_be_bytes().to_vec()),
            )
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((u64_from_be(&k, "changes")?, decode(&v, "changes")?))
            })
            .collect()
    }

    pub(crate) fn next_quarantine_id(&self) -> Result<u64, StoreError> {
        self.counter(NEXT_QUARANTINE)
    }

    fn counter(&self, name: &[u8]) -> Result<u64, StoreError> {
        Ok(match self.trees.meta.get(name)? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 1,
        })
    }

    /// The operation of `kind` with `key`.
    pub fn operation(&self, kind: &str, key: &str) -> Result<Option<Operation>, StoreError> {
        self.trees
            .operations
            .get(operation_key(kind, key))?
            .map(|v| decode(&v, "operations"))
            .transpose()
    }

    /// Every operation with `key`, whatever its kind, ordered by kind.
    pub fn operations_with_key(&self, key: &str) -> Result<Vec<Operation>, StoreError> {
        let mut prefix = key.as_bytes().to_vec();
        prefix.push(0);
        self.trees
            .operations
            .scan_prefix(&prefix)
            .map(|kv| decode(&kv?.1, "operations"))
            .collect()
    }

    /// The stored webhook at `sequence`, unless retention has compacted it away.
    pub fn log_entry(&self, sequence: u64) -> Result<Option<LogEntry>, StoreError> {
        self.trees
            .log
            .get(sequence.to_be_bytes())?
            .map(|v| decode(&v, "log"))
            .transpose()
    }

    /// The raw body of a stored webhook, byte for byte.
    pub fn raw_payload(&self, entry: &LogEntry) -> Result<Vec<u8>, StoreError> {
        Ok(self.payloads.read(&entry.payload)?)
    }

    /// Where the webhook with `id` is stored, if it is.
    pub fn event_ref(&self, id: &EventId) -> Result<Option<EventRef>, StoreError> {
        self.trees
            .event_ids
            .get(id.0)?
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
    /// one its current status and phase call for. Returns the problems found.
    pub fn check_indexes(&self) -> Result<Vec<String>, StoreError> {
        let mut expected_status = std::collections::BTreeMap::new();
        let mut expected_phase = std::collections::BTreeMap::new();
        for op in self.operations() {
            let op = op?;
            expected_status.insert(status_index_key(&op), index_value(&op));
            expected_phase.insert(phase_index_key(&op), index_value(&op));
        }
        let mut problems = Vec::new();
        for (name, tree, expected) in [
            ("status_index", &self.trees.status_index, expected_status),
            ("phase_index", &self.trees.phase_index, expected_phase),
        ] {
            let mut actual = std::collections::BTreeMap::new();
            for kv in tree.iter() {
                let (k, v) = kv?;
                actual.insert(k.to_vec(), v.to_vec());
            }
            let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
            for (key, value) in &expected {
                match actual.get(key) {
                    None => problems.push(format!("{name}: missing {:?}", text(key))),
                    Some(v) if v != value => {
                        problems.push(format!("{name}: outdated {:?}", text(key)));
                    }
                    Some(_) => {}
                }
            }
            for stale in actual.keys().filter(|k| !expected.contains_key(*k)) {
                problems.push(format!("{name}: stale {:?}", text(stale)));
            }
        }
        Ok(problems)
    }
}

/// `key \0 kind`: operations with one key are adjacent, for lookups without a kind.
pub(crate) fn operation_key(kind: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + kind.len() + 1);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(kind.as_bytes());
    k
}

/// The value of an index entry: the operation without its history, so that a page of a
/// list is one range scan, with no lookup per operation.
pub(crate) fn index_value(op: &Operation) -> Vec<u8> {
    encode(&op.without_history())
}

/// `status \0 kind \0 key`.
pub(crate) fn status_index_key(op: &Operation) -> Vec<u8> {
    let mut k = Vec::with_capacity(op.status.len() + op.kind.len() + op.key.len() + 2);
    k.extend_from_slice(op.status.as_bytes());
    k.push(0);
    k.extend_from_slice(op.kind.as_bytes());
    k.push(0);
    k.extend_from_slice(op.key.as_bytes());
    k
}

/// `phase byte, kind \0 key`.
pub(crate) fn phase_index_key(op: &Operation) -> Vec<u8> {
    let mut k = Vec::with_capacity(op.kind.len() + op.key.len() + 2);
    k.push(phase_byte(op.phase));
    k.extend_from_slice(op.kind.as_bytes());
    k.push(0);
    k.extend_from_slice(op.key.as_bytes());
    k
}

pub(crate) fn phase_byte(phase: Phase) -> u8 {
    match phase {
        Phase::Pending => b'P',
        Phase::Succeeded => b'S',
        Phase::Failed => b'F',
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records serialize: plain structs, strings and vectors")
}

pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    tree: &'static str,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    })
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
    use crate::domain::reconcile::EventSummary;

    #[test]
    fn an_index_value_decodes_as_the_operation_without_history() {
        let summary = EventSummary {
            sequence: 7,
            event_id: EventId([1; 32]),
            status: "disbursed".into(),
            outcome: None,
            detail: "d".into(),
            event_time: Some(5),
            received_at: 6,
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
