//! Opening a data directory: sled under its file lock, the segment log beside it, the
//! format check, and the meta values the store keeps (identity, page-token secret, where the
//! view and the counters stand).
//!
//! A directory of another format is refused by name, never taken for corruption; a view
//! ahead of its log is refused (the log was truncated or replaced), never "repaired" by
//! forgetting what it applied.

use std::path::Path;
use std::sync::Arc;

use super::keys::Space;
use super::log::SegmentLog;
use super::record::{decode, decode_retired_entry, encode, encode_operation, u64_from_be};
use super::{
    EventRef, Key, Meta, SEEK_EVERY, SeekPoint, SpaceId, Store, StoreError, Trees, snapshot, writer,
};

/// sled's page cache by default, in MiB. sled undercounts what a cached node costs, and the
/// allocator (mimalloc) keeps some freed memory per thread: 64 MiB keeps a million operations
/// under 400 MB of RSS (BENCHMARKS.md).
pub const DEFAULT_CACHE_MB: u64 = 64;

/// How often sled writes applied batches to disk on its own (the log covers the gap).
pub const CHECKPOINT_INTERVAL_MS: u64 = 500;

/// The layout of a data directory this version reads and writes: 2 is the log-first
/// layout (`log/` segments, sled as a view); 3 keeps content hashes (`E`) only for the
/// quarantine, events being deduplicated in their operation's history, and has no phase
/// index (`P`), phase lists merging the status index's runs; 4 keeps no change record per
/// webhook (`L`): an operation's value says where its webhooks' bodies are, seek points
/// (`K`) lead into the log, and changes are worked out from the log. Directories of formats
/// 2 and 3 are upgraded in place at open ([`Store::upgrade_from_2`],
/// [`Store::upgrade_from_3`]).
pub const STORE_FORMAT: u64 = 4;

/// How many records one step of an upgrade rewrites (one atomic batch, flushed).
const UPGRADE_STEP: usize = 10_000;
/// Overrides [`UPGRADE_STEP`]: for the test that cuts an upgrade between two steps.
const UPGRADE_STEP_VARIABLE: &str = "QISTATUS_UPGRADE_STEP";

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
        Store::with_db(open_waiting_for_lock(&config)?, dir)
    }

    /// The store in `dir` over `db`, sled already open there: the log beside it opened, the
    /// format checked, the meta values made where missing.
    pub(super) fn with_db(db: sled::Db, dir: &Path) -> Result<Store, StoreError> {
        // Files pinned for snapshots by an earlier process are never needed after it ended.
        let pinned = snapshot::snapshots_dir(dir);
        if pinned.exists() {
            std::fs::remove_dir_all(&pinned)?;
        }
        let all = db.open_tree("qistatus")?;
        let fresh = all.is_empty();
        // What the view applied is acknowledged: the log must hold it, and its start may
        // repair a torn tail only past it.
        let applied = match all.get(Key::Meta(Meta::AppliedThrough).encode())? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 0,
        };
        let space = |id: SpaceId| Space::new(all.clone(), id);
        let trees = Trees {
            seek_points: space(SpaceId::SeekPoints),
            operations: space(SpaceId::Operations),
            status_index: space(SpaceId::StatusIndex),
            quarantine: space(SpaceId::Quarantine),
            counts: space(SpaceId::Counts),
            status_since: space(SpaceId::StatusSince),
            due: space(SpaceId::Due),
            flow: space(SpaceId::Flow),
            parts: space(SpaceId::Parts),
            all,
        };
        let store = Store {
            db,
            trees,
            log: Arc::new(SegmentLog::open(dir.join("log"), applied)?),
            dir: dir.to_owned(),
            keys_written: Arc::default(),
            flow_seen: Arc::default(),
            flow_on: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        store.check_format(fresh)?;
        store.ensure_random_meta(Meta::PageTokenSecret, 32, "the page-token secret")?;
        store.ensure_random_meta(Meta::StoreId, 16, "the store's identity")?;
        store.ensure_counts()?;
        let log_ends = store.log.last_lsn();
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
                let mut found = u64_from_be(&v, "meta")?;
                if found == 2 {
                    self.upgrade_from_2()?;
                    found = 3;
                }
                if found == 3 {
                    return self.upgrade_from_3();
                }
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
                // Nothing dated yet: the writer's start dates what its catalog expects.
                self.trees.all.insert(
                    Key::Meta(Meta::DatedStatuses).encode(),
                    super::record::encode(&Vec::<(String, String)>::new()),
                )?;
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

    /// Format 2 to 3, in place: drops the content hashes of events from the `E` space (the
    /// quarantine's stay) and the whole phase index (`P`), then says format 3, in one atomic
    /// batch, flushed. A crash before it leaves format 2, upgraded again at the next open.
    /// One scan of each space, once; [`Store::upgrade_from_3`] follows.
    fn upgrade_from_2(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let events = self.trees.all.scan_prefix([SpaceId::EventIds as u8]);
        let mut batch = sled::Batch::default();
        let mut dropped = 0u64;
        for kv in events {
            let (key, value) = kv?;
            if matches!(decode(&value, "event_ids")?, EventRef::Event(_)) {
                batch.remove(key);
                dropped += 1;
            }
        }
        for kv in self
            .trees
            .all
            .scan_prefix([SpaceId::RetiredPhaseIndex as u8])
        {
            batch.remove(kv?.0);
            dropped += 1;
        }
        batch.insert(Key::Meta(Meta::FormatVersion).encode(), &3u64.to_be_bytes());
        self.trees.all.apply_batch(batch)?;
        self.db.flush()?;
        tracing::info!(
            from = 2,
            to = 3,
            keys_dropped = dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data directory upgraded in place"
        );
        Ok(())
    }

    /// Format 3 to 4, in place, in steps: each moves up to [`UPGRADE_STEP`] change records
    /// of the `L` space, oldest first, into their operations (where each webhook's body is)
    /// and a seek point every [`SEEK_EVERY`] sequences, and removes them, in one atomic
    /// batch, flushed. Once none is left, the format says 4. A crash between steps leaves
    /// format 3 with fewer records to move: the next open goes on from there, and a record
    /// moved twice is not added twice. Nothing acknowledged is touched: the log stays as it
    /// is, and the changes the records held are worked out from it from now on.
    ///
    /// A change record whose operation no longer holds its webhook (a rebuild attributed it
    /// elsewhere) has no body to move: that webhook's data is then not served with its new
    /// operation's history (its summary is), as after retention.
    pub(super) fn upgrade_from_3(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let (moved, steps) = self.in_steps(|step| {
            let mut records = Vec::new();
            for kv in self
                .trees
                .all
                .scan_prefix([SpaceId::RetiredEvents as u8])
                .take(step)
            {
                let (key, value) = kv?;
                let sequence = u64_from_be(&key[1..], "events")?;
                records.push((key, sequence, decode_retired_entry(&value)?));
            }
            let mut batch = sled::Batch::default();
            let mut operations = std::collections::BTreeMap::new();
            for (key, sequence, entry) in &records {
                batch.remove(key.clone());
                if sequence.is_multiple_of(SEEK_EVERY) {
                    let point = SeekPoint {
                        at: entry.payload,
                        received_at: entry.received_at,
                    };
                    batch.insert(Key::SeekPoint(*sequence).encode(), encode(&point));
                }
                let op_key = (entry.kind.clone(), entry.key.clone());
                let stored = match operations.entry(op_key) {
                    std::collections::btree_map::Entry::Occupied(read) => read.into_mut(),
                    std::collections::btree_map::Entry::Vacant(unread) => {
                        unread.insert(self.stored_operation(&entry.kind, &entry.key)?)
                    }
                };
                // An overdue event has no body; a webhook its operation no longer holds has
                // none to move there.
                if let Some((op, bodies)) = stored
                    && op.history.iter().any(|e| e.sequence == *sequence)
                    && !bodies.iter().any(|(s, _)| s == sequence)
                {
                    bodies.push((*sequence, entry.payload));
                }
            }
            for ((kind, key), stored) in operations {
                if let Some((op, mut bodies)) = stored {
                    bodies.sort_unstable_by_key(|(sequence, _)| *sequence);
                    batch.insert(
                        Key::Operation {
                            kind: &kind,
                            key: &key,
                        }
                        .encode(),
                        encode_operation(&op, &bodies),
                    );
                }
            }
            self.trees.all.apply_batch(batch)?;
            Ok(records.len())
        })?;
        self.upgraded(
            3,
            started,
            moved,
            steps,
            "change records moved into their operations",
        )
    }

    /// Runs an upgrade's steps until one finds nothing left to do: `step(limit)` rewrites up
    /// to `limit` records in one atomic batch and says how many. Each step is flushed before
    /// the next (sled would flush it on its own only later), so a crash between two keeps
    /// what the steps before did; the failpoint `abort-between-upgrade-steps` is that crash.
    /// Returns the records rewritten and the steps taken.
    fn in_steps(
        &self,
        mut step: impl FnMut(usize) -> Result<usize, StoreError>,
    ) -> Result<(usize, usize), StoreError> {
        let limit = std::env::var(UPGRADE_STEP_VARIABLE)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(UPGRADE_STEP)
            .max(1);
        let (mut records, mut steps) = (0, 0);
        loop {
            let done = step(limit)?;
            if done == 0 {
                return Ok((records, steps));
            }
            self.db.flush()?;
            records += done;
            steps += 1;
            super::failpoint::abort_at("abort-between-upgrade-steps");
        }
    }

    /// Says format `from + 1` once an upgrade from `from` is done, flushed, and logs what
    /// it did: `records` rewritten (`what` they were) in `steps`.
    fn upgraded(
        &self,
        from: u64,
        started: std::time::Instant,
        records: usize,
        steps: usize,
        what: &str,
    ) -> Result<(), StoreError> {
        self.trees.all.insert(
            Key::Meta(Meta::FormatVersion).encode(),
            &(from + 1).to_be_bytes(),
        )?;
        self.db.flush()?;
        tracing::info!(
            from,
            to = from + 1,
            records,
            what,
            steps,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data directory upgraded in place"
        );
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

    pub(crate) fn next_quarantine_id(&self) -> Result<u64, StoreError> {
        self.counter(Meta::NextQuarantine)
    }

    fn counter(&self, name: Meta) -> Result<u64, StoreError> {
        Ok(match self.get(Key::Meta(name))? {
            Some(v) => u64_from_be(&v, "meta")?,
            None => 1,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
