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
//!   ([`RecentChanges`]); a subscriber behind that window has the store read the log for it,
//!   off the async threads;
//! - a slow or stalled subscriber only fills its own bounded channel and waits; the intake
//!   and the writer never wait for subscribers;
//! - when retention has dropped the changes a resume point needs, the subscriber gets
//!   [`FeedError::Compacted`] naming the oldest sequence still available, never a silent gap;
//! - an idle subscriber gets a progress event every `progress_interval`, and one right at the
//!   start, so it always knows a sequence it can resume after;
//! - on shutdown every stream ends with [`FeedError::ShuttingDown`], which tells clients to
//!   reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::reconcile::Operation;
use crate::reload::CatalogHandle;
use crate::store::RecentChanges;
use crate::store::{Change, Store, StoreError};

mod filter;

pub(crate) use filter::FeedFilter;

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
    /// Events buffered per subscriber before its reader stops reading the log.
    pub buffer: usize,
}

impl FeedSettings {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: FeedSettings = FeedSettings {
        progress_interval: Duration::from_secs(15),
        max_subscribers: 10_000,
        buffer: 64,
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
    /// What changes older than the recent window are worked out under.
    catalog: CatalogHandle,
    recent: Arc<RecentChanges>,
    committed: watch::Receiver<u64>,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    settings: FeedSettings,
    /// How long a resume point past the head is waited for (the sequencer's: zero on a single
    /// node, where it is an error at once; a while on a cluster node, where another node may
    /// have reached it first).
    catch_up: Duration,
    /// Changes worked out from the log for subscribers behind the recent window.
    from_log: Arc<AtomicU64>,
}

/// The receiving end of one subscription; dropping it ends the subscription.
pub(crate) type Subscription = mpsc::Receiver<Result<FeedEvent, FeedError>>;

/// How many changes a subscriber behind the recent window reads at a time.
const READ_CHUNK: usize = 256;

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
            store,
            catalog,
            recent,
            committed,
            stop,
            permits: Arc::new(Semaphore::new(settings.max_subscribers)),
            settings,
            catch_up: Duration::ZERO,
            from_log: Arc::default(),
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

    /// Changes worked out from the log, since the start, for subscribers behind the recent
    /// window (what `qistatus_feed_changes_from_log_total` counts).
    pub(crate) fn changes_from_log(&self) -> u64 {
        self.from_log.load(Ordering::Relaxed)
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
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let subscriber = Subscriber {
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            from_log: self.from_log.clone(),
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
    catalog: CatalogHandle,
    from_log: Arc<AtomicU64>,
    recent: Arc<RecentChanges>,
    filter: FeedFilter,
    cursor: u64,
    committed: watch::Receiver<u64>,
    stop: CancellationToken,
    tx: mpsc::Sender<Result<FeedEvent, FeedError>>,
    progress_interval: Duration,
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

    /// Reads one chunk of change records after the cursor; returns whether it sent any.
    async fn catch_up(&mut self, head: u64) -> Result<bool, End> {
        let (chunk, through) = match self.recent.after(self.cursor, head, READ_CHUNK) {
            Some(chunk) if !chunk.is_empty() => {
                let through = chunk.last().map_or(self.cursor, |(sequence, _)| *sequence);
                (chunk, through)
            }
            _ => self.read_older(head).await?,
        };
        let mut sent = false;
        for (sequence, change) in chunk {
            if self.filter.matches(&change) {
                self.send(FeedEvent::Change { sequence, change }).await?;
                sent = true;
            }
            self.cursor = sequence;
        }
        self.cursor = through;
        Ok(sent)
    }

    /// The changes after the cursor that the recent window no longer holds, worked out from
    /// the log off the async threads (see [`Store::changes_after`]), and the last sequence
    /// read.
    async fn read_older(&self, head: u64) -> Result<(Vec<(u64, Arc<Change>)>, u64), End> {
        // Retention dropped the records after the cursor under this subscriber.
        let compacted_through = self.store.compacted_through()?;
        if self.cursor < compacted_through {
            return Err(End::Error(FeedError::Compacted { compacted_through }));
        }
        let (catalog, after) = (self.catalog.current(), self.cursor);
        let read = self
            .store
            .read_async(move |store| store.changes_after(&catalog, after, head, READ_CHUNK))
            .await?;
        if read.through == after {
            return Err(StoreError::Corrupt {
                tree: "log",
                reason: format!(
                    "the log holds no record after sequence {after}, and {head} are committed"
                ),
            }
            .into());
        }
        self.from_log
            .fetch_add(read.changes.len() as u64, Ordering::Relaxed);
        let changes = read
            .changes
            .into_iter()
            .map(|(sequence, change)| (sequence, Arc::new(change)))
            .collect();
        Ok((changes, read.through))
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
