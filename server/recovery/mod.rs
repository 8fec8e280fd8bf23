//! Recovery: what QI failed to deliver, fetched back through QI's own API.
//!
//! QI Tech tries a webhook a few times (its BaaS/LaaS page: every 5 minutes, 3 times) and
//! then marks the callback `failed` for good. A qistatus that was down, behind a broken
//! proxy, or answering `503` in a failover, would never hear of it. Recovery closes that loop
//! with QI's "Resending notifications" API ([`crate::qitech_api`]), in three ways:
//!
//! - **A periodic pass** (every `--recover-every`): the events whose callback failed, window by
//!   window (QI's 14 days at most) and page by page, from where the last pass ended (a
//!   durable cursor, [`ledger`]); each failed callback is asked to be resent. One still
//!   failed on a later pass is asked again after a doubling wait, and given up after
//!   `--recover-max-resends` (counted, and shown on the console's overview). Each pass
//!   starts [`SETTLE`] before the cursor: QI marks a callback failed only after its own
//!   retries, so an event a pass saw while QI was still retrying is listed again.
//! - **An overdue operation, at once**: the moment the feed says an operation fell overdue,
//!   QI is asked for that operation's events (`origin_key`) and to resend those qistatus does
//!   not hold (see [`held`]). Once per episode (an operation held in one status): QI having
//!   nothing more, it is asked again only after a doubling wait, from an hour to a day.
//! - **By hand**: the console's "ask QI to resend" on an operation's page (any time, no
//!   backoff), and `qistatus-server recover` for a window.
//!
//! A resent webhook arrives at the intake like any other: verified, stored once (the same
//! content is the same webhook), reconciled. So every step here is safe to repeat, which is
//! what makes the cursor simple: saved after each window, a crash costs a repeat of at most
//! one window's resends, never a skip.
//!
//! Recovery runs as one task that owns its state; QI being down, slow or refusing delays
//! only that task (every call is paced, bounded by a timeout, and tried a few times), never
//! the intake, the API, or `/readyz`.

pub(crate) mod by_hand;
pub(crate) mod ledger;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::reconcile::Operation;
use crate::feed::{ChangeFeed, FeedError, FeedEvent, FeedFilter, Subscription};
use crate::metrics::Metrics;
use crate::qitech_api::{EventQuery, MAX_WINDOW_MILLIS, NotificationEvent, QiApi, QiApiError};
use crate::store::{Store, StoreError};
use ledger::{CallbackDecision, Ledger, LedgerError, RecoveryState, millis};

/// How far before its cursor a pass starts: QI marks a callback failed only after its own
/// retries (3, five minutes apart), so an event a pass saw while QI was still retrying is
/// listed again by the next pass. Listing it twice costs a page; resending a callback
/// already followed is not done before its backoff.
pub(crate) const SETTLE: Duration = Duration::from_secs(3600);

/// Most pages read from one window: 25 rows a page, 10,000 events. A window with more is
/// read in part, and its end is not passed: the next pass reads it again.
const MAX_PAGES_PER_WINDOW: u32 = 400;

/// Most asks by hand waiting for the recovery task; more are answered "busy".
const ASKS_QUEUED: usize = 16;

/// Recovery's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    /// How often a pass runs; `None`: no periodic pass (overdue operations and asks by hand
    /// are still served).
    pub every: Option<Duration>,
    /// How far back the first pass reaches.
    pub lookback: Duration,
    /// Resends of one callback before it is given up.
    pub max_resends: u32,
    /// On a cluster, how long a node's claim to be the one that recovers lasts unrenewed:
    /// how long recovery pauses when that node dies.
    pub lease: Duration,
}

impl RecoverySettings {
    /// `--recover-every`'s default.
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(600);
    /// `--recover-lookback`'s default: QI's listing window.
    pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(14 * 24 * 3600);
    /// `--recover-max-resends`'s default.
    pub const DEFAULT_MAX_RESENDS: u32 = 5;
    /// `--recover-lease`'s default.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
    /// The defaults.
    pub const DEFAULT: RecoverySettings = RecoverySettings {
        every: Some(Self::DEFAULT_EVERY),
        lookback: Self::DEFAULT_LOOKBACK,
        max_resends: Self::DEFAULT_MAX_RESENDS,
        lease: Self::DEFAULT_LEASE,
    };

    /// The first wait before a resent callback still failed is asked for again.
    fn retry_interval(&self) -> Duration {
        self.every
            .unwrap_or(Self::DEFAULT_EVERY)
            .max(Duration::from_secs(60))
    }
}

/// Why a resend was asked for (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// QI listed the callback as failed.
    FailedCallback,
    /// Its operation fell overdue.
    Overdue,
    /// A person asked.
    ByHand,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::FailedCallback => "failed_callback",
            Reason::Overdue => "overdue",
            Reason::ByHand => "by_hand",
        }
    }
}

/// Why a pass or an ask stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// QI's API failed or refused.
    #[error(transparent)]
    Api(#[from] QiApiError),
    /// The state could not be kept.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The recovery task is busy or stopped.
    #[error("recovery is {0}: try again shortly")]
    Busy(&'static str),
    /// Another node of the cluster holds the lease now: this one stops what it was doing.
    #[error("another node of the cluster recovers now")]
    LostLease,
}

/// What one ask about an operation did: the events QI listed and the callbacks asked to be
/// resent (each `event_key/callback_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AskReport {
    /// Events QI listed for the operation.
    pub(crate) events: usize,
    /// Of them, events qistatus already holds (not asked for).
    pub(crate) held: usize,
    /// Callbacks asked to be resent.
    pub(crate) resent: usize,
}

/// Recovery's figures, read by `/metrics` and the console while the task runs.
#[derive(Debug, Default)]
pub(crate) struct RecoveryFigures {
    /// The cursor, ms since the epoch (0: none yet).
    pub(crate) cursor: AtomicI64,
    /// When the last pass completed, ms since the epoch (0: none yet).
    pub(crate) last_pass_completed: AtomicI64,
    /// Callbacks followed after a resend.
    pub(crate) pending: AtomicU64,
    /// Callbacks given up on.
    pub(crate) given_up: AtomicU64,
    /// Whether this node recovers (a single node always; one node of a cluster).
    pub(crate) leading: std::sync::atomic::AtomicBool,
    /// The latest callbacks given up on, newest last (what the console shows).
    pub(crate) recent_given_up: std::sync::Mutex<Vec<ledger::GivenUp>>,
}

impl RecoveryFigures {
    /// What the console's overview shows: callbacks followed, given up on, and the latest
    /// given up (newest first).
    pub(crate) fn shown(&self) -> (u64, u64, Vec<ledger::GivenUp>) {
        let recent = self
            .recent_given_up
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default();
        (
            self.pending.load(Ordering::Relaxed),
            self.given_up.load(Ordering::Relaxed),
            recent,
        )
    }

    /// The gauges of `/metrics` at `now`: the cursor's age and the last pass's, in seconds
    /// (`-1` before the first), callbacks followed and given up on, and whether this node
    /// recovers (1) or another node of its cluster does (0).
    pub(crate) fn gauges(&self, now: i64) -> (i64, i64, i64, i64, i64) {
        let age = |at: &AtomicI64| match at.load(Ordering::Relaxed) {
            0 => -1,
            at => now.saturating_sub(at).max(0) / 1000,
        };
        let count = |n: &AtomicU64| i64::try_from(n.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        (
            age(&self.cursor),
            age(&self.last_pass_completed),
            count(&self.pending),
            count(&self.given_up),
            i64::from(self.leading.load(Ordering::Relaxed)),
        )
    }
}

/// The handle the console asks through.
#[derive(Debug, Clone)]
pub(crate) struct RecoveryHandle {
    asks: mpsc::Sender<AskByHand>,
    /// The figures the task keeps up to date.
    pub(crate) figures: Arc<RecoveryFigures>,
}

struct AskByHand {
    kind: String,
    key: String,
    reply: oneshot::Sender<Result<AskReport, RecoveryError>>,
}

impl RecoveryHandle {
    /// Asks QI at once (no backoff) to resend what qistatus does not hold of the operation
    /// `kind`/`key`.
    pub(crate) async fn ask(&self, kind: &str, key: &str) -> Result<AskReport, RecoveryError> {
        let (reply, answer) = oneshot::channel();
        self.asks
            .try_send(AskByHand {
                kind: kind.to_owned(),
                key: key.to_owned(),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RecoveryError::Busy("busy"),
                mpsc::error::TrySendError::Closed(_) => RecoveryError::Busy("stopped"),
            })?;
        answer.await.map_err(|_| RecoveryError::Busy("stopped"))?
    }
}

/// The recovery task: its state, and what it talks to.
pub(crate) struct Recovery {
    /// Asks by hand; taken by [`Recovery::run`].
    asks: Option<mpsc::Receiver<AskByHand>>,
    api: QiApi,
    ledger: Ledger,
    state: RecoveryState,
    store: Store,
    clock: Clock,
    metrics: Arc<Metrics>,
    settings: RecoverySettings,
    figures: Arc<RecoveryFigures>,
    /// Whether this node recovers now (see [`ledger`]).
    leading: bool,
}

impl Recovery {
    /// Recovery over `store`, its state in `ledger`, talking to `api`. Returns it and the
    /// handle the console asks through.
    pub(crate) async fn new(
        api: QiApi,
        mut ledger: Ledger,
        store: Store,
        clock: Clock,
        metrics: Arc<Metrics>,
        settings: RecoverySettings,
    ) -> Result<(Recovery, RecoveryHandle), RecoveryError> {
        let state = ledger.load(clock.now_millis()).await?;
        let leading = ledger.lease().is_none();
        let figures = Arc::new(RecoveryFigures::default());
        let (asks, received) = mpsc::channel(ASKS_QUEUED);
        let recovery = Recovery {
            asks: Some(received),
            api,
            ledger,
            state,
            store,
            clock,
            metrics,
            settings,
            figures: figures.clone(),
            leading,
        };
        recovery.publish_figures();
        Ok((recovery, RecoveryHandle { asks, figures }))
    }

    fn publish_figures(&self) {
        let f = &self.figures;
        f.cursor
            .store(self.state.cursor.unwrap_or(0), Ordering::Relaxed);
        f.last_pass_completed.store(
            self.state.last_pass_completed.unwrap_or(0),
            Ordering::Relaxed,
        );
        f.pending
            .store(self.state.pending.len() as u64, Ordering::Relaxed);
        f.given_up.store(self.state.given_up, Ordering::Relaxed);
        f.leading.store(self.leading, Ordering::Relaxed);
        if let Ok(mut recent) = f.recent_given_up.lock() {
            recent.clear();
            recent.extend(self.state.recent_given_up.iter().cloned());
        }
    }

    async fn save(&mut self) -> Result<(), RecoveryError> {
        self.publish_figures();
        let saved = self.ledger.save(&self.state).await;
        if saved.is_err() {
            self.leading = false;
            self.figures.leading.store(false, Ordering::Relaxed);
        }
        Ok(saved?)
    }

    /// Fails when this node no longer holds the cluster's lease (renewing it on the way when
    /// half of it is gone): work in progress stops before it asks QI anything more, and the
    /// successor goes on from the state last saved (a repeat, at worst, of what was asked
    /// since).
    async fn still_leading(&mut self) -> Result<(), RecoveryError> {
        if self.ledger.lead(self.clock.now_millis()).await {
            Ok(())
        } else {
            self.leading = false;
            self.publish_figures();
            Err(RecoveryError::LostLease)
        }
    }

    /// Whether this node recovers now; when it just became the one (a cluster's recoverer
    /// died or stepped aside), it takes the state where the last one saved it and hears the
    /// overdue events from where that one had.
    async fn lead(&mut self, feed: &ChangeFeed, overdue: &mut Option<Subscription>) -> bool {
        let now = self.clock.now_millis();
        let leads = self.ledger.lead(now).await;
        if leads && !self.leading {
            match self.ledger.load(now).await {
                Ok(state) => {
                    tracing::info!("this node recovers for the cluster now");
                    self.state = state;
                    *overdue = self.subscribe(feed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovery cannot read the cluster's state");
                    return false;
                }
            }
        }
        self.leading = leads;
        self.publish_figures();
        leads
    }

    /// Runs passes every `settings.every`, asks about operations the feed says fell overdue,
    /// and serves asks by hand, until `stop`.
    pub(crate) async fn run(mut self, feed: ChangeFeed, stop: CancellationToken) {
        let (_closed, received) = mpsc::channel(1);
        let mut asks = self.asks.take().unwrap_or(received);
        let mut overdue = self.subscribe(&feed);
        // The first pass at once: a start after a stop is when most was missed.
        let mut next_pass = self.settings.every.map(|_| self.clock.now_millis());
        loop {
            let now = self.clock.now_millis();
            // Work is given up at `stop` wherever it is: the state saved so far is a point
            // to go on from (a repeat at worst).
            // On a cluster, a node that does not recover tries again every half lease.
            let leads = self.lead(&feed, &mut overdue).await;
            if let (Some(at), Some(every), true) = (next_pass, self.settings.every, leads)
                && now >= at
            {
                tokio::select! {
                    outcome = self.pass() => if let Err(e) = outcome {
                        tracing::warn!(error = %e, "a recovery pass stopped; the next one goes on from its cursor");
                    },
                    () = stop.cancelled() => return,
                }
                // From when this pass began: a fixed cadence, and no later than a reader of
                // the completed pass (a test advancing a manual clock) expects the next.
                next_pass = Some(now.saturating_add(millis(every)));
            }
            if leads && self.state.next_ask().is_some_and(|at| at <= now) {
                tokio::select! {
                    () = self.ask_again_about_overdue() => {}
                    () = stop.cancelled() => return,
                }
            }
            let standby = self
                .ledger
                .lease()
                .map(|lease| self.clock.now_millis().saturating_add(millis(lease) / 2));
            let wake = [next_pass, self.state.next_ask(), standby]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(i64::MAX);
            tokio::select! {
                () = self.clock.sleep_until(wake) => {}
                () = stop.cancelled() => return,
                ask = asks.recv() => {
                    let Some(AskByHand { kind, key, reply }) = ask else { continue };
                    tokio::select! {
                        answer = self.ask_about(&kind, &key, Reason::ByHand) => {
                            let _ = reply.send(answer);
                        }
                        () = stop.cancelled() => return,
                    }
                }
                event = recv(&mut overdue) => match event {
                    Some(Ok(FeedEvent::Change { sequence, change })) => {
                        // Only the node that recovers asks; the others heard it too, and
                        // whichever recovers next goes on from the saved feed cursor.
                        if !self.leading {
                            continue;
                        }
                        if let Some(o) = &change.overdue {
                            let op = &change.operation;
                            tokio::select! {
                                () = self.on_overdue(&op.kind, &op.key, &o.status) => {}
                                () = stop.cancelled() => return,
                            }
                        }
                        self.state.feed_cursor = Some(sequence);
                    }
                    Some(Ok(FeedEvent::Progress(sequence))) => {
                        if self.leading {
                            self.state.feed_cursor = Some(sequence);
                        }
                    }
                    Some(Ok(FeedEvent::Initial(_))) => {}
                    Some(Err(FeedError::ShuttingDown { .. })) => return,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "recovery's overdue feed ended; it subscribes again");
                        if matches!(e, FeedError::Compacted { .. }) {
                            self.state.feed_cursor = None;
                        }
                        overdue = self.subscribe(&feed);
                    }
                    None => overdue = self.subscribe(&feed),
                },
            }
        }
    }

    /// Subscribes to the overdue events after the last one heard (or from now).
    fn subscribe(&self, feed: &ChangeFeed) -> Option<Subscription> {
        let filter = FeedFilter {
            overdue: true,
            overdue_only: true,
            ..FeedFilter::default()
        };
        match feed.subscribe(filter.clone(), self.state.feed_cursor, None) {
            Ok(subscription) => Some(subscription),
            Err(FeedError::Compacted { .. } | FeedError::PastHead { .. }) => {
                feed.subscribe(filter, None, None).ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery cannot hear overdue events now");
                None
            }
        }
    }

    /// An overdue event: asks QI about the operation unless this episode was asked about
    /// within its backoff.
    async fn on_overdue(&mut self, kind: &str, key: &str, status: &str) {
        let now = self.clock.now_millis();
        if !self.state.overdue(key, status, now) {
            return;
        }
        match self.ask_about(kind, key, Reason::Overdue).await {
            Ok(report) => tracing::info!(
                kind,
                events = report.events,
                held = report.held,
                resent = report.resent,
                "asked QI about an overdue operation"
            ),
            // Recorded as asked either way: QI being down is no reason to ask in a loop.
            Err(e) => {
                tracing::warn!(kind, error = %e, "could not ask QI about an overdue operation")
            }
        }
        self.state.asked(kind, key, status, now);
        if let Err(e) = self.save().await {
            tracing::warn!(error = %e, "recovery could not keep its state");
        }
    }

    /// Asks again about the overdue episodes whose backoff has passed and whose operation
    /// still holds the status it was overdue in; forgets those that moved.
    async fn ask_again_about_overdue(&mut self) {
        if let Err(e) = self.ask_again_about_overdue_now().await {
            tracing::warn!(error = %e, "recovery could not ask again about overdue operations");
        }
    }

    async fn ask_again_about_overdue_now(&mut self) -> Result<(), RecoveryError> {
        let now = self.clock.now_millis();
        let due: Vec<(String, String, String)> = self
            .state
            .asked
            .iter()
            .filter(|(key, ask)| self.state.overdue(key, &ask.status, now))
            .map(|(key, ask)| (key.clone(), ask.kind.clone(), ask.status.clone()))
            .collect();
        for (key, kind, status) in due {
            let held = self.operation(&kind, &key).await?;
            match held {
                Some(op) if op.status == status => self.on_overdue(&kind, &key, &status).await,
                _ => {
                    self.state.asked.remove(&key);
                }
            }
        }
        self.save().await
    }

    async fn operation(&self, kind: &str, key: &str) -> Result<Option<Operation>, StoreError> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.store
            .read_async(move |store| store.operation(&kind, &key))
            .await
    }

    /// Asks QI for the events of `kind`/`key` over the lookback and to resend every callback
    /// of those qistatus does not hold.
    pub(crate) async fn ask_about(
        &mut self,
        kind: &str,
        key: &str,
        reason: Reason,
    ) -> Result<AskReport, RecoveryError> {
        let op = self.operation(kind, key).await?;
        let now = self.clock.now_millis();
        let start = now.saturating_sub(millis(self.settings.lookback));
        let mut report = AskReport::default();
        for window in windows(start, now) {
            let query = EventQuery {
                origin_key: Some(key.to_owned()),
                start: window.0,
                end: window.1,
                ..EventQuery::default()
            };
            let (events, _) = list_window(&self.api, &query).await?;
            for event in events {
                report.events += 1;
                if op.as_ref().is_some_and(|op| {
                    held(
                        &op.kind,
                        op.history.iter().map(|e| e.status.as_str()),
                        &event.event_type,
                    )
                }) {
                    report.held += 1;
                    continue;
                }
                for callback in &event.callbacks {
                    self.api
                        .resend(&event.event_key, &callback.callback_key)
                        .await?;
                    self.metrics.recovery_resend(reason.as_str());
                    report.resent += 1;
                }
            }
        }
        Ok(report)
    }

    /// One pass over the failed callbacks from the cursor (less [`SETTLE`]) to now.
    pub(crate) async fn pass(&mut self) -> Result<(), RecoveryError> {
        let now = self.clock.now_millis();
        let start = match self.state.cursor {
            Some(cursor) => cursor.saturating_sub(millis(SETTLE)),
            None => now.saturating_sub(millis(self.settings.lookback)),
        };
        let mut seen_failed = HashSet::new();
        for window in windows(start, now) {
            let query = EventQuery {
                callback_status: Some("failed".into()),
                start: window.0,
                end: window.1,
                ..EventQuery::default()
            };
            self.still_leading().await?;
            let (events, whole) = list_window(&self.api, &query).await?;
            for event in &events {
                for callback in event
                    .callbacks
                    .iter()
                    .filter(|c| c.callback_status == "failed")
                {
                    seen_failed.insert(callback.callback_key.clone());
                    self.failed_callback(event, &callback.callback_key, window)
                        .await?;
                }
            }
            if !whole {
                // Read in part: its end is not passed, the next pass reads it again.
                self.save().await?;
                return Ok(());
            }
            self.state.cursor = Some(window.1);
            self.save().await?;
        }
        self.follow_pending((start, now), &seen_failed).await?;
        self.state.last_pass_completed = Some(self.clock.now_millis());
        self.save().await
    }

    /// A callback QI lists as failed, found in `window`.
    async fn failed_callback(
        &mut self,
        event: &NotificationEvent,
        callback_key: &str,
        window: (i64, i64),
    ) -> Result<(), RecoveryError> {
        let now = self.clock.now_millis();
        match self
            .state
            .failed_callback(callback_key, now, self.settings.max_resends)
        {
            CallbackDecision::Wait => Ok(()),
            CallbackDecision::GiveUp => {
                tracing::warn!(
                    resends = self.settings.max_resends,
                    "a callback QI still lists as failed after every resend is given up \
                     (see qistatus_recovery_given_up_total and the console)"
                );
                self.state.give_up(callback_key, now);
                self.metrics.recovery_given_up();
                Ok(())
            }
            CallbackDecision::Resend => {
                self.still_leading().await?;
                self.api.resend(&event.event_key, callback_key).await?;
                self.metrics
                    .recovery_resend(Reason::FailedCallback.as_str());
                self.state.resent(
                    callback_key,
                    &event.event_key,
                    event.origin_key.as_deref(),
                    window,
                    now,
                    self.settings.retry_interval(),
                );
                Ok(())
            }
        }
    }

    /// The followed callbacks after a pass over `covered`: those found there and no longer
    /// listed failed were delivered; those found earlier and due are looked up in their own
    /// window (by their operation's key) and resent, or given up, if still failed.
    async fn follow_pending(
        &mut self,
        covered: (i64, i64),
        seen_failed: &HashSet<String>,
    ) -> Result<(), RecoveryError> {
        self.state.pending.retain(|key, p| {
            !(p.window.0 >= covered.0 && p.window.1 <= covered.1 && !seen_failed.contains(key))
        });
        let now = self.clock.now_millis();
        let due: Vec<(String, ledger::PendingResend)> = self
            .state
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (callback_key, pending) in due {
            let query = EventQuery {
                callback_status: Some("failed".into()),
                origin_key: pending.origin_key.clone(),
                start: pending.window.0,
                end: pending.window.1,
                ..EventQuery::default()
            };
            let (events, whole) = list_window(&self.api, &query).await?;
            let still_failed = events.iter().find(|e| {
                e.callbacks
                    .iter()
                    .any(|c| c.callback_key == callback_key && c.callback_status == "failed")
            });
            match still_failed {
                Some(event) => {
                    let event = event.clone();
                    self.failed_callback(&event, &callback_key, pending.window)
                        .await?;
                }
                None if whole => {
                    self.state.pending.remove(&callback_key);
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The next event of an optional subscription; never, without one.
async fn recv(subscription: &mut Option<Subscription>) -> Option<Result<FeedEvent, FeedError>> {
    match subscription {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether qistatus holds the event `event_type` of `op`: QI names events
/// `<kind>_<status>` (its page's example: `debt_disbursed`, the debt webhook of status
/// `disbursed`), so an event named after a status in the operation's history is held. Any
/// other name says nothing qistatus can check, so it is not held: asking for it again costs
/// a duplicate at most.
pub(crate) fn held<'s>(
    kind: &str,
    mut statuses: impl Iterator<Item = &'s str>,
    event_type: &str,
) -> bool {
    event_type
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|status| statuses.any(|s| s == status))
}

/// `[start, end]` cut into QI's windows, oldest first, each at most 14 days, their ends on
/// whole seconds (QI's listing takes seconds: a window of 14 days and a fraction would be
/// refused once written).
pub(crate) fn windows(start: i64, end: i64) -> Vec<(i64, i64)> {
    let (start, end) = (start - start.rem_euclid(1000), end - end.rem_euclid(1000));
    let mut windows = Vec::new();
    let mut from = start;
    while from < end {
        let to = from.saturating_add(MAX_WINDOW_MILLIS).min(end);
        windows.push((from, to));
        from = to;
    }
    windows
}

/// Every event `query` selects in its window, page by page; and whether every page was read
/// (false past [`MAX_PAGES_PER_WINDOW`]).
pub(crate) async fn list_window(
    api: &QiApi,
    query: &EventQuery,
) -> Result<(Vec<NotificationEvent>, bool), QiApiError> {
    let mut events = Vec::new();
    for page in 1..=MAX_PAGES_PER_WINDOW {
        let listed = api.list_events(query, page).await?;
        let last = listed.is_last();
        events.extend(listed.events);
        if last {
            return Ok((events, true));
        }
    }
    Ok((events, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_named_after_a_status_the_operation_had_is_held_and_no_other() {
        let had = || ["waiting_signature", "signed"].into_iter();
        assert!(held("debt", had(), "debt_signed"));
        assert!(!held("debt", had(), "debt_disbursed"));
        assert!(!held("debt", had(), "signed"));
        assert!(!held("debt", had(), "pix_signed"));
        assert!(!held("debt", had(), "debt_"));
        assert!(!held("debt", std::iter::empty(), "debt_signed"));
    }

    #[test]
    fn windows_are_at_most_fourteen_days_and_cover_the_range_without_gaps() {
        let day = 24 * 3600 * 1000;
        assert!(windows(5, 5).is_empty());
        assert_eq!(windows(0, day), vec![(0, day)]);
        let three_weeks = windows(0, 21 * day);
        assert_eq!(three_weeks, vec![(0, 14 * day), (14 * day, 21 * day)]);
        let many = windows(1007, 100 * day + 1003);
        assert_eq!(many.first().unwrap().0, 1000);
        assert_eq!(many.last().unwrap().1, 100 * day + 1000);
        assert!(many.iter().all(|(s, e)| s % 1000 == 0 && e % 1000 == 0));
        assert!(many.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(
            many.iter()
                .all(|(s, e)| e - s <= MAX_WINDOW_MILLIS && e > s)
        );
    }
}
