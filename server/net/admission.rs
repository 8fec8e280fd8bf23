//! Which connections a listener keeps: a bound on how many are open, and the choice of which
//! to close when a new one arrives at that bound.
//!
//! Why it exists: every open connection costs a file descriptor, and the process has a fixed
//! number of them. Without a bound, a client that opens connections and never finishes a
//! request (slowloris) exhausts them, and then a real webhook cannot even be accepted.
//!
//! Guarantees:
//! - at most `max` connections of a listener are open at once (counted from accept to close);
//! - on the intake and the admin listener ([`AtCapacity::EvictWaiting`]), a new connection at
//!   the bound closes the connection that has waited longest without a request being
//!   processed: idle, or still sending its headers or its body. A request is processed once
//!   its body has arrived whole; until then it costs nothing but its connection, and a client
//!   that sends slowly, or declares a body it never sends, is what gets shed, never a fresh
//!   fast sender. When every connection is processing a request, the new one is refused;
//! - on the gRPC listener ([`AtCapacity::EvictUnproven`]) connections carry long watch
//!   streams, so only a connection that has made no authenticated call within `grace` of
//!   opening (the oldest such first) is closed to make room; otherwise the new one is refused;
//! - every refused or evicted connection is counted ([`Admission::shed`]) and logged, at most
//!   once every ten seconds per listener with the count since the last line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// What a listener does with a new connection when it is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtCapacity {
    /// Close the connection that has waited longest without a request being processed;
    /// refuse when every connection is processing one.
    EvictWaiting,
    /// Close the oldest connection that has made no authenticated call within `grace` of
    /// opening; refuse when there is none.
    EvictUnproven {
        /// How long a new connection has to make its first authenticated call.
        grace: Duration,
    },
}

/// How long a connection that has not sent its request's headers must have waited before
/// it may be evicted: a fresh connection is about to send its request whole.
const MIN_WAIT_TO_EVICT: Duration = Duration::from_millis(200);
/// How long a connection idle between requests must have been idle before it may be
/// evicted: its client may send its next request on it at any moment, and closing it then
/// fails that request, so kept-alive connections go last and not soon.
const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(2);
/// How many evicted connections, still closing, a listener of bound `max` may hold beyond
/// it: what [`super::connection_budget`] leaves room for.
pub(crate) fn eviction_headroom(max: usize) -> usize {
    max / 8 + 1
}

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
    /// Every connection holding a descriptor, the evicted ones included until closed.
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    /// Of those, the evicted ones.
    closing: AtomicUsize,
    shed: AtomicU64,
    shed_metric: Counter,
    log: Mutex<ShedLog>,
}

#[derive(Debug, Default)]
struct ShedLog {
    last: Option<Instant>,
    unlogged: u64,
}

/// What the admission knows of one open connection. Times are milliseconds since the
/// admission's epoch.
#[derive(Debug)]
struct ConnState {
    /// When it was admitted.
    opened_ms: u64,
    /// Requests begun on it (headers read) and not finished.
    in_flight: AtomicUsize,
    /// Of those, the requests whose body has arrived whole: being processed.
    processing: AtomicUsize,
    /// Whether any request has begun on it.
    begun: AtomicBool,
    /// Whether any request has finished on it.
    finished: AtomicBool,
    /// Whether it has made an authenticated call (gRPC).
    proven: AtomicBool,
    /// When it last read bytes or finished a request.
    last_active_ms: AtomicU64,
    /// When it started waiting without a request being processed: admitted, its last
    /// request finished, or its current request began.
    waiting_since_ms: AtomicU64,
    /// Whether it has been evicted (its task is closing it).
    closing: AtomicBool,
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
                closing: AtomicUsize::new(0),
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
        let closing = inner.closing.load(Ordering::Acquire);
        // Evicted connections hold their descriptor until their task closes them: a burst of
        // evictions may go past `max` by the headroom, never further.
        if open.len() >= inner.max + eviction_headroom(inner.max) {
            drop(open);
            self.count_shed();
            return None;
        }
        if open.len() - closing >= inner.max {
            let victim = match inner.policy {
                AtCapacity::EvictWaiting => open
                    .iter()
                    .filter(|(_, c)| !c.closing.load(Ordering::Acquire))
                    .filter(|(_, c)| c.processing.load(Ordering::Acquire) == 0)
                    .map(|(&id, c)| (id, c.eviction_class(), c))
                    .map(|(id, class, c)| (id, class, c.waiting_since_ms.load(Ordering::Relaxed)))
                    .filter(|&(_, class, since)| {
                        now.saturating_sub(since) >= class.min_wait().as_millis() as u64
                    })
                    .min_by_key(|&(_, class, since)| (class, since))
                    .map(|(id, _, _)| id),
                AtCapacity::EvictUnproven { grace } => open
                    .iter()
                    .filter(|(_, c)| !c.closing.load(Ordering::Acquire))
                    .filter(|(_, c)| !c.proven.load(Ordering::Acquire))
                    .filter(|(_, c)| now.saturating_sub(c.opened_ms) >= grace.as_millis() as u64)
                    .min_by_key(|(_, c)| c.opened_ms)
                    .map(|(&id, _)| id),
            };
            let Some(victim) = victim else {
                drop(open);
                self.count_shed();
                return None;
            };
            if let Some(conn) = open.get(&victim) {
                conn.closing.store(true, Ordering::Release);
                inner.closing.fetch_add(1, Ordering::AcqRel);
                // `notify_one` stores a permit, so the connection sees it even if it is not
                // waiting right now.
                conn.evicted.notify_one();
            }
            self.count_shed();
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            opened_ms: now,
            in_flight: AtomicUsize::new(0),
            processing: AtomicUsize::new(0),
            begun: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            proven: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(now),
            waiting_since_ms: AtomicU64::new(now),
            closing: AtomicBool::new(false),
            evicted: Notify::new(),
        });
        open.insert(id, state.clone());
        Some(Slot {
            id,
            state,
            admission: self.clone(),
        })
    }

    /// Connections open now, apart from evicted ones still closing.
    pub(crate) fn open(&self) -> usize {
        let open = self
            .inner
            .open
            .lock()
            .expect("the admission lock is never poisoned")
            .len();
        open - self.inner.closing.load(Ordering::Acquire)
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

/// Which connections [`AtCapacity::EvictWaiting`] closes first (the lowest class, then the
/// longest waiting), and how long each must have waited before it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EvictionClass {
    /// In a request whose body has not arrived: a sender that declared a body and is slow
    /// to send it, or never will. First, at once: a fresh sender's request is read whole
    /// the moment it is read at all, and never lingers here.
    StalledInBody,
    /// No request read yet: its headers are on their way, or still in the socket.
    BeforeHeaders,
    /// Idle between requests: a sender's kept-alive connection. Last, and not soon:
    /// closing it races the client's next request on it, which then fails.
    BetweenRequests,
}

impl EvictionClass {
    fn min_wait(self) -> Duration {
        match self {
            EvictionClass::StalledInBody => Duration::ZERO,
            EvictionClass::BeforeHeaders => MIN_WAIT_TO_EVICT,
            EvictionClass::BetweenRequests => MIN_IDLE_TO_EVICT,
        }
    }
}

impl ConnState {
    /// Its class, for a connection processing no request.
    fn eviction_class(&self) -> EvictionClass {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            EvictionClass::StalledInBody
        } else if self.finished.load(Ordering::Acquire) {
            EvictionClass::BetweenRequests
        } else {
            EvictionClass::BeforeHeaders
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

    /// Marks a request in flight until the guard is dropped. It is processed (the connection
    /// is busy and not evicted) once [`RequestGuard::body_received`] says its body arrived.
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestGuard {
        // A stalled body is ranked by when its request began, not by the connection's past.
        let now = self.admission.inner.now_ms();
        self.state.waiting_since_ms.store(now, Ordering::Relaxed);
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.state.begun.store(true, Ordering::Release);
        self.touch();
        RequestGuard {
            slot: self.clone(),
            received: AtomicBool::new(false),
        }
    }

    /// Whether any request has begun on this connection.
    pub(crate) fn has_begun(&self) -> bool {
        self.state.begun.load(Ordering::Acquire)
    }

    /// A handle that marks this connection as having made an authenticated call (no longer
    /// a candidate for [`AtCapacity::EvictUnproven`]), without holding its place.
    pub(crate) fn proof(&self) -> CallerProof {
        CallerProof(self.state.clone())
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
        let inner = &self.admission.inner;
        if let Ok(mut open) = inner.open.lock()
            && let Some(conn) = open.remove(&self.id)
            && conn.closing.load(Ordering::Acquire)
        {
            inner.closing.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Marks one connection as having made an authenticated call; it does not keep the
/// connection's place (a request may outlive its connection).
#[derive(Debug, Clone)]
pub(crate) struct CallerProof(Arc<ConnState>);

impl CallerProof {
    /// Notes that the connection made an authenticated call.
    pub(crate) fn prove(&self) {
        self.0.proven.store(true, Ordering::Release);
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    slot: Arc<Slot>,
    received: AtomicBool,
}

impl RequestGuard {
    /// Notes that the request's body has arrived whole: it is processed from now on, and its
    /// connection is not evicted until it finishes. Idempotent.
    pub(crate) fn body_received(&self) {
        if !self.received.swap(true, Ordering::AcqRel) {
            self.slot.state.processing.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.slot.state;
        if self.received.load(Ordering::Acquire) {
            state.processing.fetch_sub(1, Ordering::AcqRel);
        }
        let now = self.slot.admission.inner.now_ms();
        state.waiting_since_ms.store(now, Ordering::Relaxed);
        state.finished.store(true, Ordering::Release);
        self.slot.touch();
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: AtCapacity = AtCapacity::EvictUnproven {
        grace: Duration::from_secs(3600),
    };

    #[tokio::test]
    async fn refuses_at_the_bound_and_frees_places_on_drop() {
        let admission = Admission::new("test", 2, NEVER, Counter::default());
        let a = admission.admit().expect("first place");
        let _b = admission.admit().expect("second place");
        assert!(admission.admit().is_none());
        assert_eq!((admission.open(), admission.shed()), (2, 1));
        drop(a);
        assert!(admission.admit().is_some());
    }

    #[tokio::test]
    async fn evicts_stalled_bodies_first_then_silent_connections_but_never_one_processing() {
        let admission = Admission::new("test", 4, AtCapacity::EvictWaiting, Counter::default());
        // Sends its headers, then never its body.
        let stalled = Arc::new(admission.admit().expect("place"));
        let stalled_request = stalled.begin_request();
        let processing = Arc::new(admission.admit().expect("place"));
        let request = processing.begin_request();
        request.body_received();
        let _silent = Arc::new(admission.admit().expect("place"));
        // A sender's kept-alive connection, between two requests.
        let kept = Arc::new(admission.admit().expect("place"));
        drop(kept.begin_request());

        // A stalled body goes at once, for the very next newcomer.
        let fresh = admission
            .admit()
            .expect("room made by evicting the stalled body");
        tokio::time::timeout(Duration::from_secs(1), stalled.evicted())
            .await
            .expect("the stalled connection is told it was evicted");
        // Its task closes it.
        drop((stalled_request, stalled));
        // The silent one only after a moment; the kept-alive one later still.
        assert!(admission.admit().is_none(), "nothing else may go yet");
        std::thread::sleep(MIN_WAIT_TO_EVICT + Duration::from_millis(50));
        let fresh = Arc::new(fresh);
        let _fresh_request = fresh.begin_request();
        fresh.touch();
        // `fresh` is stalled in its body now: it goes before the silent one.
        assert!(admission.admit().is_some());
        tokio::time::timeout(Duration::from_secs(1), fresh.evicted())
            .await
            .expect("the newest stalled body still goes first");
        assert_eq!(admission.shed(), 3);
        drop(request);
    }

    #[tokio::test]
    async fn evicts_only_connections_that_made_no_authenticated_call_within_the_grace() {
        let grace = Duration::from_millis(100);
        let admission = Admission::new(
            "test",
            2,
            AtCapacity::EvictUnproven { grace },
            Counter::default(),
        );
        let watcher = Arc::new(admission.admit().expect("place"));
        let silent = Arc::new(admission.admit().expect("place"));
        // Within the grace, a new connection is refused.
        assert!(admission.admit().is_none());
        watcher.proof().prove();
        std::thread::sleep(grace + Duration::from_millis(50));
        let newcomer = admission
            .admit()
            .expect("room made by closing the silent one");
        tokio::time::timeout(Duration::from_secs(1), silent.evicted())
            .await
            .expect("the silent connection is told it was evicted");
        drop(silent);
        newcomer.proof().prove();
        // Both left have proven themselves: refuse.
        assert!(admission.admit().is_none());
    }
}
