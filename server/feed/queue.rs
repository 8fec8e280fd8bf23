//! One subscriber's queue: bounded in events and in bytes.
//!
//! A watcher that stops reading (a client that never grants HTTP/2 window) leaves its events
//! here, so the bound on what it can cost is this queue's: at most `events` events and about
//! `bytes` bytes of them, as [`Change::approx_bytes`] counts (one event larger than the
//! whole budget still goes, alone). The subscriber fills it without holding anything else
//! while it waits ([`QueueSender::room`]), and what the receiver takes gives its bytes back.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{Semaphore, TryAcquireError, mpsc};

use super::{FeedError, FeedEvent};
use crate::store::Change;

/// What a subscriber is sent: an event or the reason it ended.
pub(crate) type Item = Result<FeedEvent, FeedError>;

/// An item and the bytes it holds of the queue's budget.
#[derive(Debug)]
struct Queued {
    item: Item,
    bytes: u32,
}

/// The subscriber's end.
pub(crate) struct QueueSender {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    budget: u32,
    /// The bytes the last item refused for want of room needs: what [`QueueSender::room`]
    /// waits for, so an item larger than a quarter of the budget is not offered again and
    /// again while the room it needs is not there.
    wanted: u32,
}

/// The receiving end of one subscription; dropping it ends the subscription.
#[derive(Debug)]
pub(crate) struct Subscription {
    rx: mpsc::Receiver<Queued>,
    room: Arc<Semaphore>,
}

/// The receiver went away.
#[derive(Debug)]
pub(crate) struct Gone;

/// Why an item was not queued at once.
#[derive(Debug)]
pub(crate) enum NotNow {
    /// The queue is full (in events or in bytes): wait for [`QueueSender::room`]. The item
    /// is dropped: the subscriber still has it where it came from.
    Full,
    /// The receiver went away.
    Gone,
}

/// A queue of at most `events` items and about `bytes` bytes.
pub(crate) fn queue(events: usize, bytes: usize) -> (QueueSender, Subscription) {
    let (tx, rx) = mpsc::channel(events.max(1));
    let budget = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
    let room = Arc::new(Semaphore::new(budget as usize));
    (
        QueueSender {
            tx,
            room: room.clone(),
            budget,
            wanted: 0,
        },
        Subscription { rx, room },
    )
}

/// About how many bytes `item` holds while queued.
fn bytes_of(item: &Item) -> usize {
    const SMALL: usize = std::mem::size_of::<Queued>();
    match item {
        Ok(FeedEvent::Change { change, .. }) => SMALL + change.approx_bytes(),
        Ok(FeedEvent::Initial(op)) => {
            SMALL + Change::operation_bytes(op) + op.history.len() * HISTORY_ENTRY_BYTES
        }
        Ok(FeedEvent::Progress(_)) | Err(_) => SMALL,
    }
}

/// About what one entry of an operation's history holds (an initial state carries them).
const HISTORY_ENTRY_BYTES: usize = 256;

impl QueueSender {
    fn share_of(&self, item: &Item) -> u32 {
        u32::try_from(bytes_of(item))
            .unwrap_or(u32::MAX)
            .min(self.budget)
    }

    /// Queues `item` if it fits now.
    pub(crate) fn try_send(&mut self, item: Item) -> Result<(), NotNow> {
        let bytes = self.share_of(&item);
        let permit = match self.room.try_acquire_many(bytes) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                self.wanted = bytes;
                return Err(NotNow::Full);
            }
            Err(TryAcquireError::Closed) => return Err(NotNow::Gone),
        };
        match self.tx.try_send(Queued { item, bytes }) {
            Ok(()) => {
                // Given back by the receiver when it takes the item.
                permit.forget();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.wanted = bytes;
                Err(NotNow::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotNow::Gone),
        }
    }

    /// Queues `item`, waiting for room.
    pub(crate) async fn send(&self, item: Item) -> Result<(), Gone> {
        let bytes = self.share_of(&item);
        let permit = tokio::select! {
            permit = self.room.acquire_many(bytes) => permit.map_err(|_| Gone)?,
            () = self.tx.closed() => return Err(Gone),
        };
        self.tx
            .send(Queued { item, bytes })
            .await
            .map_err(|_| Gone)?;
        permit.forget();
        Ok(())
    }

    /// Whether the last item offered was refused for want of room, and no room came since.
    pub(crate) fn refused(&self) -> bool {
        self.wanted > 0
    }

    /// Waits until a quarter of the budget (or what the last refused item needs, if more)
    /// and an event's place are free: what the subscriber waits for, holding nothing, before
    /// it fetches more changes.
    pub(crate) async fn room(&mut self) -> Result<(), Gone> {
        let needed = (self.budget / 4).max(self.wanted).max(1);
        tokio::select! {
            permit = self.room.acquire_many(needed) => drop(permit.map_err(|_| Gone)?),
            () = self.tx.closed() => return Err(Gone),
        }
        self.wanted = 0;
        let place = self.tx.reserve().await.map_err(|_| Gone)?;
        drop(place);
        Ok(())
    }

    /// Resolves when the receiver went away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl Subscription {
    /// The next item, when there is one; `None` once the subscriber ended.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx).map(|queued| {
            queued.map(|Queued { item, bytes }| {
                self.room.add_permits(bytes as usize);
                item
            })
        })
    }

    /// The next item; `None` once the subscriber ended.
    pub(crate) async fn recv(&mut self) -> Option<Item> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::reconcile::{Operation, Phase};

    #[tokio::test]
    async fn bounded_in_bytes_and_events_and_given_back_when_taken() {
        let (mut tx, mut rx) = queue(100, 3 * bytes_of(&Ok(FeedEvent::Progress(0))));
        for n in 0..3 {
            tx.try_send(Ok(FeedEvent::Progress(n))).unwrap();
        }
        assert!(matches!(
            tx.try_send(Ok(FeedEvent::Progress(3))),
            Err(NotNow::Full)
        ));
        assert!(matches!(rx.recv().await, Some(Ok(FeedEvent::Progress(0)))));
        tx.room().await.unwrap();
        tx.try_send(Ok(FeedEvent::Progress(3))).unwrap();

        let (mut few, _rx) = queue(1, 1 << 20);
        few.try_send(Ok(FeedEvent::Progress(0))).unwrap();
        assert!(matches!(
            few.try_send(Ok(FeedEvent::Progress(1))),
            Err(NotNow::Full)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_refusal_room_waits_for_what_the_refused_item_needs() {
        let small = bytes_of(&Ok(FeedEvent::Progress(0)));
        let op = Operation {
            detail: "d".repeat(4 * small),
            ..Operation::bare("debt", "k", "signed", Phase::Pending)
        };
        let initial = || Ok(FeedEvent::Initial(Box::new(op.clone())));
        let large = bytes_of(&initial());
        // Room for it and half as much again; small items fill all but less than it (more
        // than a quarter of the budget stays free).
        let budget = large + large / 2;
        let (mut tx, mut rx) = queue(1000, budget);
        let mut queued = 0;
        while budget - queued * small >= large {
            tx.try_send(Ok(FeedEvent::Progress(0))).unwrap();
            queued += 1;
        }
        assert!(budget - queued * small >= budget / 4);
        assert!(matches!(tx.try_send(initial()), Err(NotNow::Full)));
        assert!(
            tokio::time::timeout(Duration::from_secs(60), tx.room())
                .await
                .is_err(),
            "a quarter is free, not what the refused item needs"
        );
        for _ in 0..queued {
            rx.recv().await.unwrap().unwrap();
        }
        tx.room().await.unwrap();
        tx.try_send(initial()).unwrap();
    }

    #[tokio::test]
    async fn an_item_over_the_whole_budget_goes_alone() {
        let (mut tx, mut rx) = queue(10, 8);
        tx.send(Ok(FeedEvent::Progress(0))).await.unwrap();
        assert!(matches!(
            tx.try_send(Ok(FeedEvent::Progress(1))),
            Err(NotNow::Full)
        ));
        rx.recv().await.unwrap().unwrap();
        tx.try_send(Ok(FeedEvent::Progress(1))).unwrap();
    }

    #[tokio::test]
    async fn a_receiver_that_went_away_is_seen() {
        let (mut tx, rx) = queue(1, 1024);
        drop(rx);
        assert!(matches!(
            tx.try_send(Ok(FeedEvent::Progress(0))),
            Err(NotNow::Gone)
        ));
        assert!(tx.send(Ok(FeedEvent::Progress(0))).await.is_err());
        assert!(tx.room().await.is_err());
        tx.closed().await;
    }
}
