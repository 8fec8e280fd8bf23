//! Watching: a resumable, ordered stream of operation changes per watcher.
//!
//! Modeled on etcd's watch. Every stored webhook has a sequence number and a change record
//! (the operation right after it) in the durable `changes` tree. A watcher is a task with
//! its own cursor that reads that tree forward; the writer's commit notification only wakes
//! it. Hence:
//!
//! - changes arrive in sequence order, with no gaps among those that match and no
//!   duplicates, because each watcher reads the log, not a lossy broadcast;
//! - a resume point (`start_after_sequence`) works across restarts: the log is on disk;
//! - the records of the latest batches are decoded once and shared by all watchers
//!   ([`RecentChanges`]); a watcher behind that window reads the store itself;
//! - a slow or stalled watcher only fills its own bounded channel and waits; the intake and
//!   the writer never wait for watchers;
//! - when retention has dropped the changes a resume point needs, the watcher gets
//!   `OUT_OF_RANGE` naming the oldest sequence still available, never a silent gap;
//! - an idle watcher gets a progress notification every `progress_interval`, and one right
//!   at the start, so it always knows a sequence it can resume after;
//! - on shutdown every stream ends with `UNAVAILABLE`, which tells clients to reconnect.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert;
use crate::domain::reconcile::{Operation, Phase};
use crate::grpc::ApiError;
use crate::pb;
use crate::store::recent::RecentChanges;
use crate::store::{Change, Store};

/// Which changes a watcher receives. Every given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only this operation key.
    pub key: Option<String>,
    /// Only these kinds (canonical); empty: any.
    pub kinds: BTreeSet<String>,
    /// Only changes after which the status is one of these (canonical); empty: any.
    pub statuses: BTreeSet<String>,
    /// Only changes after which the phase is one of these; empty: any.
    pub phases: BTreeSet<Phase>,
    /// Also webhooks that did not change the status.
    pub include_unchanged: bool,
}

impl WatchFilter {
    /// Whether `change` is delivered to a watcher with this filter.
    pub fn matches(&self, change: &Change) -> bool {
        let op = &change.operation;
        (self.include_unchanged || change.status_changed)
            && self.key.as_ref().is_none_or(|k| *k == op.key)
            && (self.kinds.is_empty() || self.kinds.contains(&op.kind))
            && (self.statuses.is_empty() || self.statuses.contains(&op.status))
            && (self.phases.is_empty() || self.phases.contains(&op.phase))
    }
}

/// Limits and timings of watching.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// How long an idle watcher waits between progress notifications.
    pub progress_interval: Duration,
    /// Most watchers at once; more get `RESOURCE_EXHAUSTED`.
    pub max_watchers: usize,
    /// Messages buffered per watcher before its reader stops reading the log.
    pub buffer: usize,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            progress_interval: Duration::from_secs(15),
            max_watchers: 10_000,
            buffer: 64,
        }
    }
}

/// Starts watchers.
#[derive(Debug, Clone)]
pub struct WatchHub {
    store: Store,
    recent: Arc<RecentChanges>,
    committed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    settings: WatchSettings,
}

/// The stream of one watcher.
pub type WatchStream = ReceiverStream<Result<pb::WatchOperationResponse, Status>>;

/// How many change records a watcher reads from sled at a time.
const READ_CHUNK: usize = 256;

impl WatchHub {
    /// A hub over `store`, woken by `committed` (the writer's last committed sequence), whose
    /// streams end when `stop` turns true.
    pub fn new(
        store: Store,
        recent: Arc<RecentChanges>,
        committed: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        settings: WatchSettings,
    ) -> Self {
        WatchHub {
            store,
            recent,
            committed,
            stop,
            permits: Arc::new(Semaphore::new(settings.max_watchers)),
            settings,
        }
    }

    /// The last committed sequence.
    pub fn head(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Starts a watcher that sends `initial` first (if any), then every matching change after
    /// `start_after` (or after the current head when `None`).
    pub fn start(
        &self,
        filter: WatchFilter,
        start_after: Option<u64>,
        initial: Option<Operation>,
    ) -> Result<WatchStream, ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "too many watchers (at most {}): retry later",
                self.settings.max_watchers
            ))
        })?;
        // The head is read before the initial state, so a change racing with this call is
        // delivered after the state rather than lost.
        let cursor = start_after.unwrap_or_else(|| self.head());
        let compacted_through = self.store.compacted_through()?;
        if cursor < compacted_through {
            return Err(out_of_range(compacted_through));
        }
        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let watcher = Watcher {
            store: self.store.clone(),
            recent: self.recent.clone(),
            filter,
            cursor,
            committed: self.committed.clone(),
            stop: self.stop.clone(),
            tx,
            progress_interval: self.settings.progress_interval,
        };
        tokio::spawn(async move {
            watcher.run(initial).await;
            drop(permit);
        });
        Ok(ReceiverStream::new(rx))
    }
}

fn out_of_range(compacted_through: u64) -> ApiError {
    ApiError::OutOfRange(format!(
        "start_after_sequence is older than the retained log: the oldest sequence still \
         available is {}; resume after {compacted_through} or later",
        compacted_through + 1
    ))
}

struct Watcher {
    store: Store,
    recent: Arc<RecentChanges>,
    filter: WatchFilter,
    cursor: u64,
    committed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<pb::WatchOperationResponse, Status>>,
    progress_interval: Duration,
}

/// Why a watcher stops.
enum End {
    /// The client went away.
    Gone,
    /// Tell the client why, then stop.
    Error(Status),
}

impl Watcher {
    async fn run(mut self, initial: Option<Operation>) {
        let end = self.serve(initial).await;
        if let Err(End::Error(status)) = end {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn serve(&mut self, initial: Option<Operation>) -> Result<(), End> {
        if let Some(op) = initial {
            let change = pb::OperationChange {
                sequence: op.last_sequence,
                operation: Some(convert::operation_summary(&op)),
                previous_status: String::new(),
                initial: true,
            };
            self.send(pb::watch_operation_response::Event::Change(change))
                .await?;
        }
        self.send_progress().await?;
        let mut last_sent = Instant::now();
        loop {
            if *self.stop.borrow() {
                return Err(End::Error(Status::unavailable(format!(
                    "qistatus is shutting down: resume after sequence {}",
                    self.cursor
                ))));
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
                        return Err(End::Error(Status::unavailable("qistatus is shutting down")));
                    }
                }
                stop = self.stop.changed() => {
                    if stop.is_err() {
                        return Err(End::Error(Status::unavailable("qistatus is shutting down")));
                    }
                }
                () = tokio::time::sleep_until(last_sent + self.progress_interval) => {
                    self.send_progress().await?;
                    last_sent = Instant::now();
                }
                () = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    /// Reads one chunk of change records after the cursor; returns whether it sent any.
    async fn catch_up(&mut self, head: u64) -> Result<bool, End> {
        let chunk = match self.recent.after(self.cursor, head, READ_CHUNK) {
            Some(chunk) => chunk,
            None => self
                .store
                .changes_after(self.cursor, head, READ_CHUNK)
                .map_err(|e| End::Error(ApiError::from(e).into()))?
                .into_iter()
                .map(|(sequence, change)| (sequence, Arc::new(change)))
                .collect(),
        };
        let Some((first, _)) = chunk.first() else {
            return self.gap().map(|_| false);
        };
        if *first != self.cursor + 1 {
            return self.gap().map(|_| false);
        }
        let mut sent = false;
        for (sequence, change) in chunk {
            if self.filter.matches(&change) {
                let message = pb::OperationChange {
                    sequence,
                    operation: Some(convert::operation_summary(&change.operation)),
                    previous_status: change.previous_status.clone().unwrap_or_default(),
                    initial: false,
                };
                self.send(pb::watch_operation_response::Event::Change(message))
                    .await?;
                sent = true;
            }
            self.cursor = sequence;
        }
        Ok(sent)
    }

    /// The records after the cursor are missing: retention dropped them under this watcher.
    fn gap(&self) -> Result<(), End> {
        let compacted_through = self
            .store
            .compacted_through()
            .map_err(|e| End::Error(ApiError::from(e).into()))?;
        Err(End::Error(out_of_range(compacted_through).into()))
    }

    async fn send_progress(&mut self) -> Result<(), End> {
        let progress = pb::Progress {
            sequence: self.cursor,
        };
        self.send(pb::watch_operation_response::Event::Progress(progress))
            .await
    }

    async fn send(&mut self, event: pb::watch_operation_response::Event) -> Result<(), End> {
        let message = pb::WatchOperationResponse { event: Some(event) };
        tokio::select! {
            sent = self.tx.send(Ok(message)) => sent.map_err(|_| End::Gone),
            // A stalled client must not hold shutdown hostage.
            _ = self.stop.wait_for(|stop| *stop) => Err(End::Error(Status::unavailable(
                format!("qistatus is shutting down: resume after sequence {}", self.cursor),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &str, key: &str, status: &str, phase: Phase, changed: bool) -> Change {
        Change {
            previous_status: None,
            status_changed: changed,
            operation: Operation {
                kind: kind.into(),
                key: key.into(),
                status: status.into(),
                phase,
                detail: String::new(),
                event_time: None,
                first_received_at: 0,
                updated_at: 0,
                version: 1,
                last_sequence: 1,
                history: Vec::new(),
            },
        }
    }

    #[test]
    fn filters_combine() {
        let disbursed = change("debt", "a", "disbursed", Phase::Pending, true);
        let canceled = change("debt", "b", "canceled", Phase::Failed, true);
        let opened = change("account", "a", "account_opened", Phase::Succeeded, true);
        let unchanged = change("debt", "a", "disbursed", Phase::Pending, false);

        let everything = WatchFilter::default();
        assert!(everything.matches(&disbursed) && everything.matches(&opened));
        assert!(
            !everything.matches(&unchanged),
            "unchanged webhooks only on request"
        );
        let with_unchanged = WatchFilter {
            include_unchanged: true,
            ..WatchFilter::default()
        };
        assert!(with_unchanged.matches(&unchanged));

        let key_a = WatchFilter {
            key: Some("a".into()),
            ..WatchFilter::default()
        };
        assert!(key_a.matches(&disbursed) && key_a.matches(&opened) && !key_a.matches(&canceled));

        let debts = WatchFilter {
            kinds: ["debt".to_owned()].into(),
            ..WatchFilter::default()
        };
        assert!(debts.matches(&canceled) && !debts.matches(&opened));

        let ends = WatchFilter {
            kinds: ["debt".to_owned()].into(),
            statuses: ["disbursed".to_owned(), "canceled".to_owned()].into(),
            ..WatchFilter::default()
        };
        assert!(ends.matches(&disbursed) && ends.matches(&canceled) && !ends.matches(&opened));

        let failed = WatchFilter {
            phases: [Phase::Failed].into(),
            ..WatchFilter::default()
        };
        assert!(failed.matches(&canceled) && !failed.matches(&disbursed));
    }
}
