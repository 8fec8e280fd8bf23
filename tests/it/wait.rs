//! Waiting for what a user would see, instead of sleeping a fixed time.
//!
//! A test that needs something to have happened (a server listening, a reload applied, a
//! node caught up) asks for it until it is so, within a deadline that is a bound on a
//! failure, never a pause on success: a fast machine goes on at once, a slow one waits
//! longer, and a failure says what never happened. Time itself, where a test is about
//! time (an overdue expectation, retention), is a [`qistatus::ManualClock`] the test
//! advances.

use std::future::Future;
use std::time::Duration;

/// How often a condition is asked again: often enough that a test goes on within a few
/// milliseconds of it being true, rarely enough not to load the server it asks.
const POLL: Duration = Duration::from_millis(25);

/// Asks `check` until it answers `Some`, and returns that; panics, naming `what`, if it has
/// not within `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_or_none(within, check)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {within:?}"))
}

/// Asks `check` until it answers `Some`, and returns that; `None` if it has not within
/// `within` (for a test that says more than [`wait_until`] would before it fails).
pub async fn until_or_none<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// [`wait_until`] for a test without a runtime: asks `check` until it answers `Some`.
pub fn wait_until_blocking<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::park_timeout(POLL);
    }
}
