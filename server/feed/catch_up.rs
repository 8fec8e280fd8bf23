//! Changes older than the recent window, worked out from the log once for every watcher that
//! needs them, within one budget.
//!
//! A watcher that resumes from far back (sequence 0 on a store of 50,000 webhooks) needs
//! changes the recent window no longer holds: each costs a log read and a reconciliation of
//! its operation's history up to it. Done per watcher, 300 watchers resuming together did
//! that work 300 times, on as many blocking threads as they were, and held 300 chunks of
//! operations with their histories: the box's CPU went to them and a fresh webhook's `200`
//! waited (issue 38). Here:
//!
//! - the log is read in **aligned chunks** of [`CHUNK`] sequences, so watchers that resume
//!   from different points inside a chunk still share it;
//! - at most `readers` chunks are worked out at once (1 by default: catch-ups take at most
//!   one core, whatever the number of watchers, and the rest of the machine serves the
//!   intake), the others wait their turn in order;
//! - worked-out chunks are kept in a cache of at most `cache_bytes` (least recently used
//!   out first), so the next watcher needing the same chunk finds it there: 300 watchers
//!   resuming from 0 cost about one reading of the log, not 300;
//! - a chunk ending past the head is worked out as far as the head and served; the next
//!   watcher needing more reads it again, complete;
//! - what watchers receive of older changes is paced, `rate` a second for all of them
//!   ([`CatchUp::pace`]): each change delivered costs CPU on the threads the intake runs on
//!   (converting, encoding, HTTP/2), and 1,000 watchers catching up at a million changes a
//!   second made a fresh webhook's `200` p99 97 times its idle p99 (BENCHMARKS.md). Changes
//!   of the recent window (live ones) are never paced.
//!
//! Trade-off: one reader makes a single watcher's catch-up no faster than one core can work
//! out changes (hundreds of thousands a second here); a machine with cores to spare raises
//! `readers`. Chunks hold changes without histories, shared by reference.
//!
//! A chunk is valid for the catalog it was worked out under; the cache is emptied when the
//! catalog changes (a reload rebuilds operations, and with them what each change was).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};

use crate::domain::catalog::Catalog;
use crate::reload::CatalogHandle;
use crate::store::{Change, Store, StoreError};

/// How many sequences a chunk spans: chunk `i` holds the changes of sequences
/// `i * CHUNK + 1 ..= (i + 1) * CHUNK`.
pub(crate) const CHUNK: u64 = 256;

/// The changes of one chunk's sequences (those that change something), in order.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The changes, by sequence.
    pub(crate) changes: Vec<(u64, Arc<Change>)>,
    /// Every sequence up to this one was read (the chunk's end, or the head it was read at).
    pub(crate) through: u64,
    /// About how many bytes the chunk holds.
    bytes: usize,
}

/// Works out older changes for every subscriber, within the budget the module describes.
#[derive(Debug)]
pub(crate) struct CatchUp {
    store: Store,
    catalog: CatalogHandle,
    readers: Semaphore,
    cache: Mutex<Cache>,
    /// Changes worked out from the log since the start.
    worked_out: AtomicU64,
    /// When the pace next lets a change through; `None`: not paced.
    next_turn: Option<Mutex<Instant>>,
    /// What one change delivered costs of the pace.
    per_change: Duration,
}

/// How much of the pace an idle moment lets build up: a watcher resuming alone gets this
/// much at once.
const BURST: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Cache {
    /// What the chunks were worked out under.
    catalog: Option<Arc<Catalog>>,
    /// By chunk index: the chunk and when it was last used.
    chunks: HashMap<u64, (Arc<Chunk>, u64)>,
    bytes: usize,
    max_bytes: usize,
    uses: u64,
}

impl Cache {
    /// The cached chunk `index` if it holds sequences after `after`, under `catalog`.
    fn get(&mut self, catalog: &Arc<Catalog>, index: u64, after: u64) -> Option<Arc<Chunk>> {
        if !self
            .catalog
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, catalog))
        {
            self.chunks.clear();
            self.bytes = 0;
            self.catalog = Some(catalog.clone());
            return None;
        }
        self.uses += 1;
        let uses = self.uses;
        let (chunk, used) = self.chunks.get_mut(&index)?;
        if chunk.through <= after {
            return None;
        }
        *used = uses;
        Some(chunk.clone())
    }

    fn put(&mut self, catalog: &Arc<Catalog>, index: u64, chunk: Arc<Chunk>) {
        if !self
            .catalog
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, catalog))
        {
            return;
        }
        self.uses += 1;
        self.bytes += chunk.bytes;
        if let Some((replaced, _)) = self.chunks.insert(index, (chunk, self.uses)) {
            self.bytes -= replaced.bytes;
        }
        while self.bytes > self.max_bytes && self.chunks.len() > 1 {
            let oldest = self
                .chunks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(index, _)| *index)
                .expect("the cache holds more than one chunk");
            if let Some((dropped, _)) = self.chunks.remove(&oldest) {
                self.bytes -= dropped.bytes;
            }
        }
    }
}

impl CatchUp {
    /// Older changes of `store`, worked out under `catalog`'s current catalog by at most
    /// `readers` at once and kept in at most `cache_bytes`, delivered `rate` a second for all
    /// subscribers (0: as fast as they go).
    pub(crate) fn new(
        store: Store,
        catalog: CatalogHandle,
        readers: usize,
        cache_bytes: usize,
        rate: u32,
    ) -> Self {
        CatchUp {
            store,
            catalog,
            readers: Semaphore::new(readers.max(1)),
            cache: Mutex::new(Cache {
                max_bytes: cache_bytes,
                ..Cache::default()
            }),
            worked_out: AtomicU64::new(0),
            next_turn: (rate > 0).then(|| Mutex::new(Instant::now())),
            per_change: Duration::from_secs(1) / rate.max(1),
        }
    }

    /// Waits until the pace has room for `delivered` more older changes: called after a
    /// subscriber queued them, holding nothing, so the pace spaces its next chunk.
    pub(crate) async fn pace(&self, delivered: usize) {
        let Some(next_turn) = &self.next_turn else {
            return;
        };
        if delivered == 0 {
            return;
        }
        let until = {
            let mut next = next_turn.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let from = (*next).max(now.checked_sub(BURST).unwrap_or(now));
            *next = from + self.per_change * u32::try_from(delivered).unwrap_or(u32::MAX);
            *next
        };
        tokio::time::sleep_until(until).await;
    }

    /// Changes worked out from the log since the start (cache hits not counted).
    pub(crate) fn worked_out(&self) -> u64 {
        self.worked_out.load(Ordering::Relaxed)
    }

    fn cached(&self, catalog: &Arc<Catalog>, index: u64, after: u64) -> Option<Arc<Chunk>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(catalog, index, after)
    }

    /// The chunk holding sequence `after + 1`, read no further than `head`: its changes
    /// after `after` are the next ones a subscriber at `after` needs.
    pub(crate) async fn chunk_after(
        &self,
        after: u64,
        head: u64,
    ) -> Result<Arc<Chunk>, StoreError> {
        let index = after / CHUNK;
        let catalog = self.catalog.current();
        if let Some(chunk) = self.cached(&catalog, index, after) {
            return Ok(chunk);
        }
        let _turn = self
            .readers
            .acquire()
            .await
            .expect("the readers' semaphore is never closed");
        // Another subscriber may have read it while this one waited its turn.
        if let Some(chunk) = self.cached(&catalog, index, after) {
            return Ok(chunk);
        }
        let (start, end) = (index * CHUNK, (index + 1) * CHUNK);
        let up_to = end.min(head);
        let reading = catalog.clone();
        let read = self
            .store
            .read_async(move |store| store.changes_after(&reading, start, up_to, usize::MAX))
            .await?;
        self.worked_out
            .fetch_add(read.changes.len() as u64, Ordering::Relaxed);
        let changes: Vec<_> = read
            .changes
            .into_iter()
            .map(|(sequence, change)| (sequence, Arc::new(change)))
            .collect();
        let bytes = std::mem::size_of::<Chunk>()
            + changes
                .iter()
                .map(|(_, c)| std::mem::size_of::<(u64, Arc<Change>)>() + c.approx_bytes())
                .sum::<usize>();
        let chunk = Arc::new(Chunk {
            changes,
            through: read.through,
            bytes,
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(&catalog, index, chunk.clone());
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(through: u64, bytes: usize) -> Arc<Chunk> {
        Arc::new(Chunk {
            changes: Vec::new(),
            through,
            bytes,
        })
    }

    #[test]
    fn the_cache_keeps_the_recently_used_within_its_bytes_and_forgets_at_a_new_catalog() {
        let catalog = Arc::new(Catalog::builtin());
        let mut cache = Cache {
            max_bytes: 250,
            ..Cache::default()
        };
        assert!(cache.get(&catalog, 0, 0).is_none(), "empty");
        cache.put(&catalog, 0, chunk(256, 100));
        cache.put(&catalog, 1, chunk(512, 100));
        assert!(cache.get(&catalog, 0, 10).is_some(), "0 used last");
        cache.put(&catalog, 2, chunk(768, 100));
        assert!(
            cache.get(&catalog, 1, 300).is_none(),
            "1 was the least used"
        );
        assert!(cache.get(&catalog, 0, 10).is_some() && cache.get(&catalog, 2, 600).is_some());
        assert_eq!(cache.bytes, 200);

        assert!(
            cache.get(&catalog, 2, 768).is_none(),
            "nothing after the chunk's end in it"
        );
        cache.put(&catalog, 3, chunk(800, 100));
        assert!(
            cache.get(&catalog, 3, 800).is_none(),
            "read up to a head of 800: a subscriber there reads again"
        );

        let reloaded = Arc::new(Catalog::builtin());
        assert!(cache.get(&reloaded, 0, 10).is_none(), "another catalog");
        assert_eq!(cache.bytes, 0);
        cache.put(&catalog, 0, chunk(256, 100));
        assert!(
            cache.get(&reloaded, 0, 10).is_none(),
            "a chunk worked out under the old catalog is not kept"
        );
    }

    #[test]
    fn one_chunk_larger_than_the_cache_is_kept_alone() {
        let catalog = Arc::new(Catalog::builtin());
        let mut cache = Cache {
            max_bytes: 50,
            ..Cache::default()
        };
        cache.get(&catalog, 0, 0);
        cache.put(&catalog, 0, chunk(256, 100));
        assert!(cache.get(&catalog, 0, 0).is_some());
        cache.put(&catalog, 1, chunk(512, 100));
        assert!(cache.get(&catalog, 0, 0).is_none() && cache.get(&catalog, 1, 300).is_some());
    }
}
