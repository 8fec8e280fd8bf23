//! The overdue clock: the moment an operation becomes overdue, as an event.
//!
//! Watchers hear what arrives; nobody hears what did not. Every `tick` the clock reads the
//! operations that fell due and were not said to be overdue yet (the store's due index, the
//! cost of what fell due, never a scan) and proposes them. On a single node it hands them to
//! the writer; on a cluster node it publishes them to the stream, so that the stream orders
//! them among the webhooks and gives them its time. Either way the writer decides, with
//! the view as it is at that point of the log: a mark still due becomes an event at a
//! sequence of its own, anything else (a second node's identical proposal, an operation
//! that moved meanwhile) changes nothing. So the clock itself holds no state: proposing
//! twice, or after a restart, is harmless, and nothing it proposes is lost with it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::overdue::OverdueMark;
use crate::metrics::Metrics;
use crate::sequencer::Sequencer;
use crate::store::Store;

/// How often the clock looks, by default: the most an overdue event lags its due time.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// Most operations one tick proposes; more wait for the next tick (earliest due first).
const MARKS_PER_TICK: usize = 256;

/// Proposes, every `tick` of `clock` until `stop`, the operations of `store` that fell due by
/// `clock`; counts each look in `metrics` once it is over.
pub(crate) async fn run(
    store: Store,
    sequencer: Sequencer,
    tick: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // A tick that found a full page looks again at once: a backlog (a reload that shortened
    // an expectation, a start after a long stop) drains at the writer's pace, not one page
    // per tick.
    let mut backlog = false;
    let mut previous_first: Option<OverdueMark> = None;
    loop {
        if !backlog {
            tokio::select! {
                () = clock.sleep(tick) => {}
                () = stop.cancelled() => return,
            }
        } else if stop.is_cancelled() {
            return;
        }
        backlog = look(&store, &sequencer, &clock, &mut previous_first).await;
        metrics.overdue_looked();
    }
}

/// One look: reads what fell due by `clock` and proposes it. Returns whether a backlog is
/// left to read at once (a full page that made progress since `previous_first`).
async fn look(
    store: &Store,
    sequencer: &Sequencer,
    clock: &Clock,
    previous_first: &mut Option<OverdueMark>,
) -> bool {
    // A cluster node behind the stream would propose what the stream already settled.
    if sequencer.not_ready().is_some() {
        return false;
    }
    let now = clock.now_millis();
    let fallen = store
        .read_async(move |store| store.fallen_due(now, MARKS_PER_TICK))
        .await;
    let marks: Vec<OverdueMark> = match fallen {
        Ok(fallen) => fallen.into_iter().map(|(_, mark)| mark).collect(),
        Err(e) => {
            tracing::error!(error = %e, "the overdue clock cannot read the due index");
            return false;
        }
    };
    if marks.is_empty() {
        return false;
    }
    let proposed = marks.len();
    // Only while it makes progress: a page that starts where the last one did was not
    // recorded (a cluster's stream time not yet at its due time), and waits for a tick.
    let backlog = proposed == MARKS_PER_TICK && previous_first.as_ref() != marks.first();
    *previous_first = marks.first().cloned();
    let outcome = sequencer.propose_overdue(marks, now).await;
    match outcome {
        Ok(recorded) => {
            tracing::debug!(proposed, recorded, "overdue clock tick");
            backlog
        }
        Err(e) => {
            tracing::warn!(error = %e, proposed, "the overdue clock could not propose; it tries again next tick");
            false
        }
    }
}
