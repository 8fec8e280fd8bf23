//! The one retry policy of qistatus, for everything that retries something that failed for a
//! passing reason: the client's watch reconnecting, the CLI's replay, a cluster node joining
//! its stream and following it.
//!
//! The waits are `backon`'s exponential schedule: from 50 ms doubling to 2.5 s, each with a
//! random jitter of up to itself added, so every wait lies between a ceiling's half and the
//! ceiling (100 ms doubling to 5 s): clients dropped together (a server restart, a new
//! stream leader) do not come back together, and none waits longer than 5 s.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// A retry schedule; [`Backoff::reset`] once something succeeded.
#[derive(Debug)]
pub struct Backoff {
    schedule: backon::ExponentialBackoff,
    /// The largest ceiling of this schedule.
    max: Duration,
}

impl Backoff {
    /// The first wait's ceiling.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The largest ceiling.
    pub const MAX: Duration = Duration::from_secs(5);

    /// A backoff at its start.
    pub fn new() -> Self {
        Backoff::up_to(Self::MAX)
    }

    /// A backoff whose waits stop growing at `max` (at least [`Backoff::MIN`]): for a retry
    /// that has a deadline, and must not sleep through the moment it would succeed (a
    /// publish waiting for a stream leader's election).
    pub fn up_to(max: Duration) -> Self {
        let max = max.max(Self::MIN);
        Backoff {
            schedule: Self::schedule(max),
            max,
        }
    }

    fn schedule(max: Duration) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Self::MIN / 2)
            .with_max_delay(max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The next wait: between half the current ceiling and the ceiling, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        self.schedule
            .next()
            .expect("a schedule without a maximum of tries never ends")
    }

    /// Back to the start, after something succeeded.
    pub fn reset(&mut self) {
        self.schedule = Self::schedule(self.max);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// The wait a `Retry-After` header's value asks for, in its delta-seconds form (what
/// qistatus's intake and QI's API send); `None` for an HTTP date or anything else, which
/// leaves the wait to the schedule.
pub fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_only() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        for other in ["", "-1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(retry_after(other), None, "{other:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff::new();
        let mut ceiling = Backoff::MIN;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            delays.push(delay);
            ceiling = (ceiling * 2).min(Backoff::MAX);
        }
        assert!(delays[9] >= Backoff::MAX / 2, "the ceiling is reached");
        let distinct: std::collections::BTreeSet<_> =
            (0..20).map(|_| Backoff::new().next_delay()).collect();
        assert!(
            distinct.len() > 1,
            "every first delay was the same: no jitter"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Backoff::MIN);
        // A lower ceiling holds, through a reset too.
        let mut short = Backoff::up_to(Duration::from_millis(400));
        for _ in 0..2 {
            let waits: Vec<_> = (0..10).map(|_| short.next_delay()).collect();
            assert!(
                waits.iter().all(|w| *w <= Duration::from_millis(400)),
                "{waits:?}"
            );
            assert!(waits[9] >= Duration::from_millis(200), "{waits:?}");
            short.reset();
        }
    }
}
