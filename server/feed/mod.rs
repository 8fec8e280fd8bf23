//! The change feed: a resumable, ordered stream of operation changes per subscriber.
//!
//! Modeled on etcd's watch, and free of any transport: subscribers receive domain values
//! ([`FeedEvent`]) and the feed's own [`FeedError`]; the gRPC adapter
//! (`grpc::watch`) turns them into wire messages at the last step, the way tonic-health's
//! `WatchStream` wraps its reporter.
//!
//! Every stored webhook (and every overdue event) has a sequence number and a change (the
//! operation right after it), which follows from the log: the store works it out again from
//! the log and the operations for any sequence it still keeps
//! ([`Store::changes_after`]). A subscriber is a task with its own cursor that reads those
//! changes forward; the writer's commit notification only wakes it. Hence:
//!
//! - changes arrive in sequence order, with no gaps among those that match and no
//!   duplicates, because each subscriber reads the store, not a lossy broadcast;
//! - a resume point (`start_after`) works across restarts: the log is on disk;
//! - the changes of the latest batches are kept once and shared by all subscribers
//!   ([`RecentChanges`]); older ones are worked out from the log once for every subscriber
//!   that needs them, by one reader at a time and kept in a bounded cache ([`catch_up`]), so
//!   any number of watchers resuming from far back cost about one reading of the log and at
//!   most one core;
//! - a slow or stalled subscriber only fills its own queue, bounded in events and in bytes
//!   ([`queue`]), and waits holding nothing else; the intake and the writer never wait for
//!   subscribers;
//! - when retention has dropped the changes a resume point needs, the subscriber gets
//!   [`FeedError::Compacted`] naming the oldest sequence still available, never a silent gap;
//! - an idle subscriber gets a progress event every `progress_interval`, and one right at the
//!   start, so it always knows a sequence it can resume after;
//! - on shutdown every stream ends with [`FeedError::ShuttingDown`], which tells clients to
//!   reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::reconcile::Operation;
use crate::reload::CatalogHandle;
use crate::store::RecentChanges;
use crate::store::{Change, Store, StoreError};

mod catch_up;
mod filter;
mod queue;

use catch_up::CatchUp;
pub(crate) use filter::FeedFilter;
pub(crate) use queue::Subscription;
use queue::{NotNow, QueueSender};

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub(crate) enum FeedEvent {
    /// The operation's state when the subscription began (asked for by key). Boxed: one per
    /// subscription, while changes are many and small.
    Initial(Box<Operation>),
    /// A matching change, at its sequence.
    Change {
        /// The sequence of the webhook that made the change.
        sequence: u64,
        /// The change record, shared with other subscribers.
        change: Arc<Change>,
    },
    /// Everything up to this sequence has been seen: a point to resume after.
    Progress(u64),
}

/// Why a subscription could not start, or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    /// The subscriber limit is reached.
    #[error("too many watchers (at most {max}): retry later")]
    TooManySubscribers {
        /// The limit.
        max: usize,
    },
    /// Retention dropped changes the subscriber needs.
    #[error(
        "start_after_sequence is older than the retained log: the oldest sequence still \
         available is {}; resume after {compacted_through} or later",
        compacted_through + 1
    )]
    Compacted {
        /// Every sequence up to this one is gone.
        compacted_through: u64,
    },
    /// The resume point is beyond every change this store has committed.
    #[error(
        "start_after_sequence {start_after} is past the head of this store's log ({head}): \
         was it saved against another store (a wiped or restored data directory)?"
    )]
    PastHead {
        /// The requested resume point.
        start_after: u64,
        /// The last committed sequence.
        head: u64,
    },
    /// A cluster node that has not reached the resume point yet (another node has).
    #[error(
        "this node has applied the cluster's changes up to {head}, not yet {start_after}: \
         retry shortly, or resume on another node"
    )]
    Behind {
        /// The requested resume point.
        start_after: u64,
        /// This node's last committed sequence.
        head: u64,
    },
    /// The server is stopping.
    #[error("qistatus is shutting down: resume after sequence {resume_after}")]
    ShuttingDown {
        /// The subscriber's cursor.
        resume_after: u64,
    },
    /// The store failed while reading the feed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Limits and timings of the feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// How long an idle subscriber waits between progress events.
    pub progress_interval: Duration,
    /// Most subscribers at once; more get [`FeedError::TooManySubscribers`].
    pub max_subscribers: usize,
    /// Events queued per subscriber at most.
    pub buffer: usize,
    /// Bytes of events queued per subscriber at most (as [`Change::approx_bytes`] counts):
    /// what a watcher that stops reading costs beyond its connection's buffers.
    pub queue_bytes: usize,
    /// Chunks of older changes worked out from the log at once, for all subscribers.
    pub catch_up_readers: usize,
    /// Bytes of worked-out older changes kept for the subscribers that need them next.
    pub catch_up_cache_bytes: usize,
    /// Older changes delivered a second, for all subscribers together (0: unpaced).
    pub catch_up_rate: u32,
}

impl FeedSettings {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: FeedSettings = FeedSettings {
        progress_interval: Duration::from_secs(15),
        max_subscribers: 4_096,
        buffer: 64,
        queue_bytes: 64 * 1024,
        catch_up_readers: 1,
        catch_up_cache_bytes: 16 * 1024 * 1024,
        catch_up_rate: 50_000,
    };
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings::DEFAULT
    }
}

/// Starts subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct ChangeFeed {
    store: Store,
    recent: Arc<RecentChanges>,
    committed: watch::Receiver<u64>,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    settings: FeedSettings,
    /// How long a resume point past the head is waited for (the sequencer's: zero on a single
    /// node, where it is an error at once; a while on a cluster node, where another node may
    /// have reached it first).
    catch_up: Duration,
    /// Changes older than the recent window, for every subscriber.
    older: Arc<CatchUp>,
    /// Subscribers waiting for room in their queue.
    stalled: Arc<AtomicUsize>,
}

/// How many changes a subscriber takes from the recent window at a time.
const RECENT_CHUNK: usize = 256;

impl ChangeFeed {
    /// A feed over `store`, woken by `committed` (the writer's last committed sequence),
    /// whose subscriptions end when `stop` turns true; changes older than the `recent`
    /// window are worked out under `catalog`.
    pub(crate) fn new(
        store: Store,
        catalog: CatalogHandle,
        recent: Arc<RecentChanges>,
        committed: watch::Receiver<u64>,
        stop: CancellationToken,
        settings: FeedSettings,
    ) -> Self {
        ChangeFeed {
            older: Arc::new(CatchUp::new(
                store.clone(),
                catalog,
                settings.catch_up_readers,
                settings.catch_up_cache_bytes,
                settings.catch_up_rate,
            )),
            store,
            recent,
            committed,
            stop,
            permits: Arc::new(Semaphore::new(settings.max_subscribers)),
            settings,
            catch_up: Duration::ZERO,
            stalled: Arc::default(),
        }
    }

    /// A resume point past the head is waited for up to `wait` (non-zero on a cluster node,
    /// where a watcher may resume with a sequence another node reached first), then refused
    /// as [`FeedError::Behind`] (retryable) rather than [`FeedError::PastHead`].
    pub(crate) fn waiting_for_resume_points(mut self, wait: Duration) -> Self {
        self.catch_up = wait;
        self
    }

    /// Waits (up to the catch-up time of a cluster node; not at all on a single node) until
    /// the head reaches `sequence`.
    pub(crate) async fn caught_up_to(&self, sequence: u64) {
        if self.catch_up.is_zero() || self.head() >= sequence {
            return;
        }
        let mut committed = self.committed.clone();
        let _ = tokio::time::timeout(self.catch_up, async move {
            // Dropped here, not held across an await of the caller.
            let _ = committed.wait_for(|head| *head >= sequence).await;
        })
        .await;
    }

    /// Subscriptions open now.
    pub(crate) fn subscribers(&self) -> usize {
        self.settings.max_subscribers - self.permits.available_permits()
    }

    /// Subscribers whose queue is full, waiting for their reader (what
    /// `qistatus_watchers_stalled` shows).
    pub(crate) fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Changes worked out from the log, since the start, for subscribers behind the recent
    /// window (what `qistatus_feed_changes_from_log_total` counts).
    pub(crate) fn changes_from_log(&self) -> u64 {
        self.older.worked_out()
    }

    /// The last committed sequence.
    pub(crate) fn head(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Starts a subscriber that sends `initial` first (if any), then every matching change
    /// after `start_after` (or after the current head when `None`).
    pub(crate) fn subscribe(
        &self,
        filter: FeedFilter,
        start_after: Option<u64>,
        initial: Option<Operation>,
    ) -> Result<Subscription, FeedError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            FeedError::TooManySubscribers {
                max: self.settings.max_subscribers,
            }
        })?;
        // The head is read before the initial state, so a change racing with this call is
        // delivered after the state rather than lost.
        let head = self.head();
        let cursor = start_after.unwrap_or(head);
        if cursor > head {
            let start_after = cursor;
            return Err(if self.catch_up.is_zero() {
                FeedError::PastHead { start_after, head }
            } else {
                FeedError::Behind { start_after, head }
            });
        }
        let compacted_through = self.store.compacted_through()?;
        if cursor < compacted_through {
            return Err(FeedError::Compacted { compacted_through });
        }
        let (tx, rx) = queue::queue(self.settings.buffer, self.settings.queue_bytes);
        let subscriber = Subscriber {
            store: self.store.clone(),
            older: self.older.clone(),
            stalled: self.stalled.clone(),
            recent: self.recent.clone(),
            filter,
            cursor,
            committed: self.committed.clone(),
            stop: self.stop.clone(),
            tx,
            progress_interval: self.settings.progress_interval,
        };
        tokio::spawn(async move {
            subscriber.run(initial).await;
            drop(permit);
        });
        Ok(rx)
    }
}

struct Subscriber {
    store: Store,
    older: Arc<CatchUp>,
    stalled: Arc<AtomicUsize>,
    recent: Arc<RecentChanges>,
    filter: FeedFilter,
    cursor: u64,
    committed: watch::Receiver<u64>,
    stop: CancellationToken,
    tx: QueueSender,
    progress_interval: Duration,
}

/// One subscriber counted among the stalled while this lives.
struct Stalled(Arc<AtomicUsize>);

impl Stalled {
    fn count(stalled: &Arc<AtomicUsize>) -> Stalled {
        stalled.fetch_add(1, Ordering::Relaxed);
        Stalled(stalled.clone())
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a subscriber stops.
enum End {
    /// The subscriber went away.
    Gone,
    /// Tell the subscriber why, then stop.
    Error(FeedError),
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Error(e.into())
    }
}

impl Subscriber {
    async fn run(mut self, initial: Option<Operation>) {
        let end = self.serve(initial).await;
        if let Err(End::Error(e)) = end {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    fn shutting_down(&self) -> End {
        End::Error(FeedError::ShuttingDown {
            resume_after: self.cursor,
        })
    }

    async fn serve(&mut self, initial: Option<Operation>) -> Result<(), End> {
        if let Some(op) = initial {
            self.send(FeedEvent::Initial(Box::new(op))).await?;
        }
        self.send(FeedEvent::Progress(self.cursor)).await?;
        let mut last_sent = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return Err(self.shutting_down());
            }
            let head = *self.committed.borrow_and_update();
            while self.cursor < head {
                if self.catch_up(head).await? {
                    last_sent = Instant::now();
                }
            }
            tokio::select! {
                changed = self.committed.changed() => {
                    if changed.is_err() {
                        // The writer is gone: the server is stopping.
                        return Err(self.shutting_down());
                    }
                }
                () = self.stop.cancelled() => return Err(self.shutting_down()),
                () = tokio::time::sleep_until(last_sent + self.progress_interval) => {
                    self.send(FeedEvent::Progress(self.cursor)).await?;
                    last_sent = Instant::now();
                }
                () = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    /// Queues the matching changes after the cursor that fit in the queue now (from the
    /// recent window, or the older changes worked out from the log); returns whether it
    /// queued any. It waits for room first, holding nothing: a watcher that stopped reading
    /// keeps no changes but those queued.
    async fn catch_up(&mut self, head: u64) -> Result<bool, End> {
        let stalled = self.tx.refused().then(|| Stalled::count(&self.stalled));
        tokio::select! {
            room = self.tx.room() => room.map_err(|_| End::Gone)?,
            () = self.stop.cancelled() => return Err(self.shutting_down()),
        }
        drop(stalled);
        let after = self.cursor;
        // From the recent window, or else the older changes' chunk that follows the cursor.
        let (recent, older) = match self
            .recent
            .after(after, head, RECENT_CHUNK)
            .filter(|chunk| !chunk.is_empty())
        {
            Some(recent) => (recent, None),
            None => (
                Vec::new(),
                Some(tokio::select! {
                    chunk = self.read_older(head) => chunk?,
                    () = self.stop.cancelled() => return Err(self.shutting_down()),
                    () = self.tx.closed() => return Err(End::Gone),
                }),
            ),
        };
        let (changes, through) = match &older {
            Some(chunk) => (chunk.changes.as_slice(), chunk.through),
            None => (
                recent.as_slice(),
                recent.last().map_or(after, |(sequence, _)| *sequence),
            ),
        };
        let mut sent = 0;
        let mut full = false;
        for (sequence, change) in changes.iter().filter(|(sequence, _)| *sequence > after) {
            if self.filter.matches(change) {
                let event = FeedEvent::Change {
                    sequence: *sequence,
                    change: change.clone(),
                };
                match self.tx.try_send(Ok(event)) {
                    Ok(()) => sent += 1,
                    Err(NotNow::Full) => {
                        full = true;
                        break;
                    }
                    Err(NotNow::Gone) => return Err(End::Gone),
                }
            }
            self.cursor = *sequence;
        }
        if !full {
            self.cursor = self.cursor.max(through);
        }
        if older.is_some() {
            // Older changes take their turn in the pace, the chunk let go first.
            drop(older);
            tokio::select! {
                () = self.older.pace(sent) => {}
                () = self.stop.cancelled() => return Err(self.shutting_down()),
            }
        }
        Ok(sent > 0)
    }

    /// The chunk of older changes (the recent window no longer holds them) that follows the
    /// cursor, worked out from the log for every subscriber that needs it ([`CatchUp`]).
    async fn read_older(&self, head: u64) -> Result<Arc<catch_up::Chunk>, End> {
        // Retention dropped the records after the cursor under this subscriber.
        let compacted_through = self.store.compacted_through()?;
        if self.cursor < compacted_through {
            return Err(End::Error(FeedError::Compacted { compacted_through }));
        }
        let chunk = self.older.chunk_after(self.cursor, head).await?;
        if chunk.through <= self.cursor {
            return Err(StoreError::Corrupt {
                tree: "log",
                reason: format!(
                    "the log holds no record after sequence {}, and {head} are committed",
                    self.cursor
                ),
            }
            .into());
        }
        Ok(chunk)
    }

    async fn send(&mut self, event: FeedEvent) -> Result<(), End> {
        let stopping = tokio::select! {
            sent = self.tx.send(Ok(event)) => return sent.map_err(|_| End::Gone),
            // A stalled subscriber must not hold shutdown hostage.
            () = self.stop.cancelled() => self.cursor,
        };
        Err(End::Error(FeedError::ShuttingDown {
            resume_after: stopping,
        }))
    }
}
