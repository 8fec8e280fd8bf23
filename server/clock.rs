//! The one clock of qistatus: receive times, overdue due times, retention cut-offs, snapshot
//! dates, request signatures.
//!
//! Time is an input, as in toydb: whatever reads the time of day takes a [`Clock`] handed
//! down from [`crate::Settings`], so that the server, the writer, the overdue clock, the
//! intake and the API all read the same one, and a test drives it. In production it is the
//! system's clock, in UTC milliseconds; a [`ManualClock`] stands still until told to move,
//! and what waits on it ([`Clock::sleep`], the overdue clock's tick) wakes when it moves, so
//! a test of "three seconds later" advances three seconds instead of sleeping them.
//!
//! What the clock does not cover, on purpose: timeouts and rates that protect the process
//! from its peers (a sender's header read timeout, the scrub's pace, a watch's progress
//! interval) are durations of real time, measured with tokio's clock; the tests whose subject
//! they are (slow senders) wait for them in real time. tokio's paused clock is not used for
//! the servers under test: with real sockets open, a paused runtime jumps ahead whenever it
//! idles and fires every timeout at once. A cluster node does not use this clock to decide
//! anything the nodes must agree on: those times come from the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Where the time of day comes from: the system's clock, or a [`ManualClock`]'s.
///
/// Cheap to clone: every clone reads the same clock.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system's clock.
    manual: Option<Arc<Manual>>,
}

/// A manual clock's time, and the channel its sleepers wait on.
#[derive(Debug)]
struct Manual {
    millis: AtomicI64,
    moved: watch::Sender<i64>,
}

impl Clock {
    /// The system's clock: what the server runs on.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_millis(&self) -> i64 {
        match &self.manual {
            None => chrono::Utc::now().timestamp_millis(),
            Some(manual) => manual.millis.load(Ordering::Acquire),
        }
    }

    /// Whole seconds since the Unix epoch (what signatures carry).
    pub fn now_seconds(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Waits until this clock reads `millis` (ms since the epoch) or later: for a wait whose
    /// end was worked out from an earlier reading, which a manual clock advanced meanwhile
    /// must not push back (as `sleep(end - then)`, started after the advance, would).
    pub async fn sleep_until(&self, millis: i64) {
        let Some(manual) = &self.manual else {
            // At most a day at a time: far ends are not worth an overflow check of tokio's.
            let left = millis
                .saturating_sub(self.now_millis())
                .clamp(0, 86_400_000);
            return tokio::time::sleep(Duration::from_millis(left.unsigned_abs())).await;
        };
        let mut moved = manual.moved.subscribe();
        let _ = moved.wait_for(|now| *now >= millis).await;
    }

    /// Waits until `duration` has passed on this clock: tokio's sleep on the system's clock;
    /// on a manual clock, until it was advanced that far (at once for a zero duration).
    pub async fn sleep(&self, duration: Duration) {
        let Some(manual) = &self.manual else {
            return tokio::time::sleep(duration).await;
        };
        let until = manual
            .millis
            .load(Ordering::Acquire)
            .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        let mut moved = manual.moved.subscribe();
        // `wait_for` looks at the current value first: an advance between the load above
        // and the subscription is not missed.
        let _ = moved.wait_for(|now| *now >= until).await;
    }
}

/// A clock that moves only when told: what tests drive time with.
///
/// It starts at a given instant and stays there; [`ManualClock::advance`] moves it forward
/// and wakes everything sleeping on it. It never goes back, so nothing that reads it sees
/// time run backwards.
#[derive(Debug, Clone)]
pub struct ManualClock {
    clock: Clock,
}

impl ManualClock {
    /// A clock standing at `millis` since the Unix epoch.
    pub fn at_millis(millis: i64) -> ManualClock {
        let (moved, _) = watch::channel(millis);
        ManualClock {
            clock: Clock {
                manual: Some(Arc::new(Manual {
                    millis: AtomicI64::new(millis),
                    moved,
                })),
            },
        }
    }

    /// A clock standing at the system's time now (so that times a test writes relative to
    /// today stay plausible), which then moves only when advanced.
    pub fn starting_now() -> ManualClock {
        ManualClock::at_millis(Clock::system().now_millis())
    }

    /// The clock to hand to the server ([`crate::Settings::clock`]).
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Milliseconds since the Unix epoch on this clock.
    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// Moves the clock `by` forward and wakes whatever sleeps until then.
    pub fn advance(&self, by: Duration) {
        let manual = self
            .clock
            .manual
            .as_ref()
            .expect("a ManualClock's clock is always manual: at_millis makes it so");
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let now = manual
            .millis
            .fetch_add(by, Ordering::AcqRel)
            .saturating_add(by);
        manual.moved.send_replace(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_time_of_day() {
        let before = chrono::Utc::now().timestamp_millis();
        let read = Clock::system().now_millis();
        let after = chrono::Utc::now().timestamp_millis();
        assert!((before..=after).contains(&read));
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_every_clone_sees_it() {
        let manual = ManualClock::at_millis(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_millis(), 1_000);
        assert_eq!(clock.now_seconds(), 1);
        manual.advance(Duration::from_millis(2_500));
        assert_eq!(clock.clone().now_millis(), 3_500);
        assert_eq!(manual.now_millis(), 3_500);
        assert_eq!(clock.now_seconds(), 3);
    }

    #[tokio::test]
    async fn a_sleep_on_a_manual_clock_ends_when_the_clock_gets_there() {
        let manual = ManualClock::at_millis(0);
        let clock = manual.clock();
        let sleeper = tokio::spawn(async move { clock.sleep(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        manual.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "nine seconds are not ten");
        manual.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleep ends once the clock got there")
            .expect("the sleeper does not panic");
        // A zero sleep ends at once.
        manual.clock().sleep(Duration::ZERO).await;
    }
}
