//! Which connections a listener keeps: a bound on how many are open, and the choice of which
//! to close when a new one arrives at that bound.
//!
//! Why it exists: every open connection costs a file descriptor, and the process has a fixed
//! number of them. Without a bound, a client that opens connections and never finishes a
//! request (slowloris) exhausts them, and then a real webhook cannot even be accepted.
//!
//! Guarantees:
//! - at most `max` connections of a listener are open at once (counted from accept to close);
//! - on the intake ([`AtCapacity::EvictIdle`]), a new connection at the bound closes the
//!   connection that has been idle longest (no request in flight, nothing read recently),
//!   so a client that holds connections open cannot lock real senders out; when every
//!   connection is busy with a request, the new one is refused instead;
//! - on the gRPC listener ([`AtCapacity::Refuse`]) connections carry long watch streams, so
//!   a new connection at the bound is refused rather than closing a watcher;
//! - every refused or evicted connection is counted ([`Admission::shed`]) and logged, at most
//!   once every ten seconds per listener with the count since the last line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// What a listener does with a new connection when it is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtCapacity {
    /// Close the connection idle longest to make room; refuse when none is idle.
    EvictIdle,
    /// Refuse the new connection.
    Refuse,
}

/// How long a connection must have been idle before it may be evicted: a connection that
/// just finished a request is about to send the next one.
const MIN_IDLE_TO_EVICT: Duration = Duration::from_millis(200);
/// Shortest time between two "shedding connections" log lines of one listener.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The open connections of one listener. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    listener: &'static str,
    max: usize,
    policy: AtCapacity,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    shed: AtomicU64,
    shed_metric: Counter,
    log: Mutex<ShedLog>,
}

#[derive(Debug, Default)]
struct ShedLog {
    last: Option<Instant>,
    unlogged: u64,
}

/// What the admission knows of one open connection.
#[derive(Debug)]
struct ConnState {
    /// Requests being handled on it.
    in_flight: AtomicUsize,
    /// Milliseconds since the admission's epoch when it last read bytes or finished a request.
    last_active_ms: AtomicU64,
    /// Notified when the connection is evicted.
    evicted: Notify,
}

impl Admission {
    /// The admission of the listener named `listener` (for logs), keeping at most `max`
    /// connections, counting what it sheds in `shed_metric` too.
    pub(crate) fn new(
        listener: &'static str,
        max: usize,
        policy: AtCapacity,
        shed_metric: Counter,
    ) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                listener,
                max: max.max(1),
                policy,
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
                open: Mutex::new(BTreeMap::new()),
                shed: AtomicU64::new(0),
                shed_metric,
                log: Mutex::new(ShedLog::default()),
            }),
        }
    }

    /// Takes a place for a new connection, evicting an idle one if the policy allows; `None`
    /// when the connection must be refused (and is then counted as shed).
    pub(crate) fn admit(&self) -> Option<Slot> {
        let inner = &self.inner;
        let now = inner.now_ms();
        let mut open = inner
            .open
            .lock()
            .expect("the admission lock is never poisoned: no code panics while holding it");
        if open.len() >= inner.max {
            let victim = match inner.policy {
                AtCapacity::Refuse => None,
                AtCapacity::EvictIdle => open
                    .iter()
                    .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                    .filter(|(_, c)| {
                        now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed))
                            >= MIN_IDLE_TO_EVICT.as_millis() as u64
                    })
                    .min_by_key(|(_, c)| c.last_active_ms.load(Ordering::Relaxed))
                    .map(|(&id, _)| id),
            };
            let Some(victim) = victim else {
                drop(open);
                self.count_shed();
                return None;
            };
            if let Some(conn) = open.remove(&victim) {
                // `notify_one` stores a permit, so the connection sees it even if it is not
                // waiting right now.
                conn.evicted.notify_one();
            }
            self.count_shed();
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now),
            evicted: Notify::new(),
        });
        open.insert(id, state.clone());
        Some(Slot {
            id,
            state,
            admission: self.clone(),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.inner
            .open
            .lock()
            .expect("the admission lock is never poisoned")
            .len()
    }

    /// Connections refused or evicted since start.
    pub(crate) fn shed(&self) -> u64 {
        self.inner.shed.load(Ordering::Relaxed)
    }

    fn count_shed(&self) {
        let inner = &self.inner;
        inner.shed.fetch_add(1, Ordering::Relaxed);
        inner.shed_metric.inc();
        let mut log = inner
            .log
            .lock()
            .expect("the shed log lock is never poisoned");
        log.unlogged += 1;
        let due = log.last.is_none_or(|t| t.elapsed() >= SHED_LOG_INTERVAL);
        if due {
            tracing::warn!(
                listener = inner.listener,
                shed = log.unlogged,
                max_connections = inner.max,
                policy = ?inner.policy,
                "at the connection limit: shedding connections"
            );
            log.last = Some(Instant::now());
            log.unlogged = 0;
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    state: Arc<ConnState>,
    admission: Admission,
}

impl Slot {
    /// Notes that bytes arrived.
    pub(crate) fn touch(&self) {
        let now = self.admission.inner.now_ms();
        self.state.last_active_ms.store(now, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped: the connection is busy and is
    /// not evicted meanwhile.
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard { slot: self.clone() }
    }

    /// How long the connection has had no request in flight and read nothing; zero while a
    /// request is in flight.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.state.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let now = self.admission.inner.now_ms();
        Duration::from_millis(now.saturating_sub(self.state.last_active_ms.load(Ordering::Relaxed)))
    }

    /// Completes when the admission evicts this connection to make room for a new one.
    pub(crate) async fn evicted(&self) {
        self.state.evicted.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.admission.inner.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    slot: Arc<Slot>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.slot.touch();
        self.slot.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_at_the_bound_and_frees_places_on_drop() {
        let admission = Admission::new("test", 2, AtCapacity::Refuse, Counter::default());
        let a = admission.admit().expect("first place");
        let _b = admission.admit().expect("second place");
        assert!(admission.admit().is_none());
        assert_eq!((admission.open(), admission.shed()), (2, 1));
        drop(a);
        assert!(admission.admit().is_some());
    }

    #[tokio::test]
    async fn evicts_the_connection_idle_longest_but_never_a_busy_one() {
        let admission = Admission::new("test", 2, AtCapacity::EvictIdle, Counter::default());
        let oldest = Arc::new(admission.admit().expect("place"));
        std::thread::sleep(Duration::from_millis(10));
        let newer = Arc::new(admission.admit().expect("place"));
        // Too recently active: nothing to evict yet.
        assert!(admission.admit().is_none());

        std::thread::sleep(MIN_IDLE_TO_EVICT + Duration::from_millis(50));
        newer.touch();
        let _busy = oldest.begin_request();
        std::thread::sleep(MIN_IDLE_TO_EVICT + Duration::from_millis(50));
        // `oldest` is busy, so `newer` (idle) goes even though it was active more recently.
        let third = admission
            .admit()
            .expect("room made by evicting the idle one");
        tokio::time::timeout(Duration::from_secs(1), newer.evicted())
            .await
            .expect("the idle connection is told it was evicted");
        assert_eq!(admission.open(), 2);
        // Now both are busy or fresh: refuse.
        let _busy_too = Arc::new(third).begin_request();
        assert!(admission.admit().is_none());
        assert_eq!(admission.shed(), 3);
    }
}
