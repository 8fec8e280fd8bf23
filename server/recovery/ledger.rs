//! What recovery remembers between passes and restarts, and where it keeps it.
//!
//! The state is small and bounded: a cursor (a time), the callbacks asked to be resent and
//! not yet seen delivered (at most [`MAX_PENDING`]), the operations asked about because they
//! fell overdue (at most [`MAX_ASKED`]), the feed sequence of the last overdue event heard,
//! and counters. Its decisions ([`RecoveryState::failed_callback`],
//! [`RecoveryState::overdue`]) are pure functions of the state and the time, tested here.
//!
//! # Durability
//!
//! [`Ledger::save`] returns only once the state is on disk: written beside the file, synced,
//! renamed over it, and the directory synced, so a crash leaves the old state or the new one,
//! never a mix. Losing the latest save costs a repeat, never a skip: a pass that ends
//! unsaved is done again from the cursor before it, and asking QI to resend a callback twice
//! delivers one webhook (the intake stores the same content once). A state file that cannot
//! be read is set aside whole (renamed, nothing deleted) and recovery starts as new, reaching
//! back `--recover-lookback`: again a repeat at worst.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most callbacks followed after a resend; more are resent but not followed (a later pass
/// that still lists them failed resends them again).
pub(crate) const MAX_PENDING: usize = 10_000;

/// Most overdue operations remembered (the oldest asked are forgotten first).
pub(crate) const MAX_ASKED: usize = 10_000;

/// Given-up callbacks kept to be shown (the count is kept whole).
const RECENT_GIVEN_UP: usize = 100;

/// The first wait before an overdue operation QI had nothing for is asked about again; it
/// doubles per ask up to [`MAX_ASK_INTERVAL`].
pub(crate) const FIRST_ASK_INTERVAL: Duration = Duration::from_secs(3600);

/// The longest wait between two asks about one overdue operation.
pub(crate) const MAX_ASK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Asks about one overdue episode (an operation held in one status) before recovery stops
/// asking QI about it (it stays overdue, and listed so).
pub(crate) const MAX_ASKS: u32 = 8;

/// Everything recovery keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecoveryState {
    /// Every failed callback of the events up to this time (ms since the epoch) was asked to
    /// be resent (or is followed in `pending`). `None`: no pass has completed.
    pub(crate) cursor: Option<i64>,
    /// When the last pass completed (ms since the epoch).
    pub(crate) last_pass_completed: Option<i64>,
    /// Callbacks asked to be resent and not yet seen delivered, by callback key.
    pub(crate) pending: BTreeMap<String, PendingResend>,
    /// Operations asked about because they fell overdue, by key.
    pub(crate) asked: BTreeMap<String, OverdueAsk>,
    /// The feed sequence of the last overdue event heard.
    pub(crate) feed_cursor: Option<u64>,
    /// Callbacks given up on, since the store began.
    pub(crate) given_up: u64,
    /// The latest callbacks given up on, newest last.
    pub(crate) recent_given_up: VecDeque<GivenUp>,
}

/// A callback asked to be resent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingResend {
    /// Its event.
    pub(crate) event_key: String,
    /// Its event's origin (the operation's key), when QI gave it.
    pub(crate) origin_key: Option<String>,
    /// The listing window it was found in (ms since the epoch).
    pub(crate) window: (i64, i64),
    /// Resends asked so far.
    pub(crate) resends: u32,
    /// Not asked again before this time (ms since the epoch).
    pub(crate) next_try: i64,
}

/// A callback recovery stopped asking for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GivenUp {
    /// The callback.
    pub(crate) callback_key: String,
    /// Its event.
    pub(crate) event_key: String,
    /// Its operation, when known.
    pub(crate) origin_key: Option<String>,
    /// When (ms since the epoch).
    pub(crate) at: i64,
}

/// An overdue operation asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OverdueAsk {
    /// Its kind.
    pub(crate) kind: String,
    /// The status it was overdue in (another status is another episode).
    pub(crate) status: String,
    /// Asks so far in this episode.
    pub(crate) asks: u32,
    /// Not asked again before this time (ms since the epoch).
    pub(crate) next_ask: i64,
}

/// What to do with a callback QI lists as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallbackDecision {
    /// Ask QI to resend it.
    Resend,
    /// Asked recently: wait for its backoff.
    Wait,
    /// Asked too often: give up (counted and shown).
    GiveUp,
}

impl RecoveryState {
    /// What to do with `callback_key`, listed failed at `now`, given at most `max_resends`
    /// and a first retry after `interval` (doubling per resend).
    pub(crate) fn failed_callback(
        &self,
        callback_key: &str,
        now: i64,
        max_resends: u32,
    ) -> CallbackDecision {
        match self.pending.get(callback_key) {
            None => CallbackDecision::Resend,
            Some(p) if p.next_try > now => CallbackDecision::Wait,
            Some(p) if p.resends >= max_resends => CallbackDecision::GiveUp,
            Some(_) => CallbackDecision::Resend,
        }
    }

    /// Records a resend of a callback found in `window`, at `now`; the next try waits
    /// `interval` doubled per earlier resend.
    pub(crate) fn resent(
        &mut self,
        callback_key: &str,
        event_key: &str,
        origin_key: Option<&str>,
        window: (i64, i64),
        now: i64,
        interval: Duration,
    ) {
        let resends = self.pending.get(callback_key).map_or(0, |p| p.resends) + 1;
        if resends == 1 && self.pending.len() >= MAX_PENDING {
            return;
        }
        let wait = doubled(interval, resends - 1, Duration::MAX);
        self.pending.insert(
            callback_key.to_owned(),
            PendingResend {
                event_key: event_key.to_owned(),
                origin_key: origin_key.map(str::to_owned),
                window,
                resends,
                next_try: now.saturating_add(millis(wait)),
            },
        );
    }

    /// Gives up on a followed callback, at `now`.
    pub(crate) fn give_up(&mut self, callback_key: &str, now: i64) {
        if let Some(p) = self.pending.remove(callback_key) {
            self.given_up += 1;
            self.recent_given_up.push_back(GivenUp {
                callback_key: callback_key.to_owned(),
                event_key: p.event_key,
                origin_key: p.origin_key,
                at: now,
            });
            while self.recent_given_up.len() > RECENT_GIVEN_UP {
                self.recent_given_up.pop_front();
            }
        }
    }

    /// Whether an overdue event for `key` in `status` at `now` is to be asked about now: a
    /// new episode (another status, or never asked) is; the same episode only once its
    /// backoff has passed and while asks are left.
    pub(crate) fn overdue(&self, key: &str, status: &str, now: i64) -> bool {
        match self.asked.get(key) {
            Some(ask) if ask.status == status => ask.next_ask <= now && ask.asks < MAX_ASKS,
            _ => true,
        }
    }

    /// When the next overdue episode is due to be asked about again, if any is.
    pub(crate) fn next_ask(&self) -> Option<i64> {
        self.asked
            .values()
            .filter(|a| a.asks < MAX_ASKS)
            .map(|a| a.next_ask)
            .min()
    }

    /// Records an ask about `key` (of `kind`, overdue in `status`) at `now`.
    pub(crate) fn asked(&mut self, kind: &str, key: &str, status: &str, now: i64) {
        let asks = match self.asked.get(key) {
            Some(ask) if ask.status == status => ask.asks + 1,
            _ => 1,
        };
        let wait = doubled(FIRST_ASK_INTERVAL, asks - 1, MAX_ASK_INTERVAL);
        self.asked.insert(
            key.to_owned(),
            OverdueAsk {
                kind: kind.to_owned(),
                status: status.to_owned(),
                asks,
                next_ask: now.saturating_add(millis(wait)),
            },
        );
        if self.asked.len() > MAX_ASKED {
            // Forget the one asked about longest ago (its next ask is the earliest).
            if let Some(oldest) = self
                .asked
                .iter()
                .min_by_key(|(_, a)| a.next_ask)
                .map(|(k, _)| k.clone())
            {
                self.asked.remove(&oldest);
            }
        }
    }
}

fn doubled(first: Duration, times: u32, max: Duration) -> Duration {
    first
        .checked_mul(1u32.checked_shl(times.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Why recovery's state could not be read or kept.
#[derive(Debug, thiserror::Error)]
#[error("recovery state {path}: {reason}")]
pub(crate) struct LedgerError {
    path: String,
    reason: String,
}

/// Where a single node keeps its recovery state: one file in its data directory.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    path: PathBuf,
}

impl Ledger {
    /// The ledger of the store in `data_dir`.
    pub(crate) fn in_dir(data_dir: &Path) -> Ledger {
        Ledger {
            path: data_dir.join("recovery.json"),
        }
    }

    fn error(&self, reason: impl ToString) -> LedgerError {
        LedgerError {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// The last saved state; a new one when there is none. A file that cannot be read as a
    /// state is set aside (renamed beside itself) and a new state begins.
    pub(crate) fn load(&self, now: i64) -> Result<RecoveryState, LedgerError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RecoveryState::default());
            }
            Err(e) => return Err(self.error(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(state),
            Err(e) => {
                let aside = self.path.with_extension(format!("json.unreadable-{now}"));
                std::fs::rename(&self.path, &aside).map_err(|e| self.error(e))?;
                tracing::error!(
                    error = %e,
                    set_aside = %aside.display(),
                    "recovery's state is unreadable: set aside, and recovery starts as new \
                     (it reaches back --recover-lookback; resends are deduplicated)"
                );
                Ok(RecoveryState::default())
            }
        }
    }

    /// Keeps `state`; returns once it is durable (see the module docs).
    pub(crate) fn save(&self, state: &RecoveryState) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(state).map_err(|e| self.error(e))?;
        let partial = self.path.with_extension("json.partial");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&partial, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    #[test]
    fn a_failed_callback_is_resent_then_waits_its_doubling_backoff_then_is_given_up() {
        let mut state = RecoveryState::default();
        let interval = Duration::from_secs(600);
        let mut now = 0;
        assert_eq!(state.failed_callback("c", now, 3), CallbackDecision::Resend);
        state.resent("c", "e", Some("k"), (0, 1), now, interval);
        assert_eq!(
            state.failed_callback("c", now + 9 * MINUTE, 3),
            CallbackDecision::Wait
        );
        now += 10 * MINUTE;
        assert_eq!(state.failed_callback("c", now, 3), CallbackDecision::Resend);
        state.resent("c", "e", Some("k"), (0, 1), now, interval);
        // The second wait is twice the first.
        assert_eq!(
            state.failed_callback("c", now + 19 * MINUTE, 3),
            CallbackDecision::Wait
        );
        now += 20 * MINUTE;
        state.resent("c", "e", Some("k"), (0, 1), now, interval);
        now += 40 * MINUTE;
        assert_eq!(state.failed_callback("c", now, 3), CallbackDecision::GiveUp);
        state.give_up("c", now);
        assert_eq!(state.given_up, 1);
        assert!(state.pending.is_empty());
        assert_eq!(state.recent_given_up[0].origin_key.as_deref(), Some("k"));
        // Listed failed again later: a new round, as for any callback not followed.
        assert_eq!(state.failed_callback("c", now, 3), CallbackDecision::Resend);
    }

    #[test]
    fn an_overdue_episode_is_asked_about_once_then_after_a_doubling_backoff() {
        let mut state = RecoveryState::default();
        let hour = 3_600_000;
        assert!(state.overdue("k", "signed", 0));
        state.asked("debt", "k", "signed", 0);
        // The overdue clock and every pass within the hour: not asked again.
        assert!(!state.overdue("k", "signed", hour - 1));
        assert!(state.overdue("k", "signed", hour));
        state.asked("debt", "k", "signed", hour);
        assert!(!state.overdue("k", "signed", 3 * hour - 1));
        assert!(state.overdue("k", "signed", 3 * hour));
        // Another status is another episode: asked at once.
        assert!(state.overdue("k", "disbursed", hour + 1));
        state.asked("debt", "k", "disbursed", hour + 1);
        assert_eq!(state.asked["k"].asks, 1);
    }

    #[test]
    fn an_episode_stops_being_asked_about_after_its_asks_and_waits_at_most_a_day() {
        let mut state = RecoveryState::default();
        let mut now = 0;
        for _ in 0..MAX_ASKS {
            assert!(state.overdue("k", "signed", now));
            state.asked("debt", "k", "signed", now);
            let wait = state.asked["k"].next_ask - now;
            assert!(wait <= millis(MAX_ASK_INTERVAL), "{wait}");
            now = state.asked["k"].next_ask;
        }
        assert!(!state.overdue("k", "signed", now + 10 * millis(MAX_ASK_INTERVAL)));
    }

    #[test]
    fn the_ledger_survives_a_restart_and_sets_aside_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_dir(dir.path());
        assert_eq!(ledger.load(0).unwrap(), RecoveryState::default());
        let mut state = RecoveryState {
            cursor: Some(42),
            ..RecoveryState::default()
        };
        state.resent("c", "e", None, (1, 2), 3, Duration::from_secs(1));
        ledger.save(&state).unwrap();
        assert_eq!(Ledger::in_dir(dir.path()).load(0).unwrap(), state);
        std::fs::write(dir.path().join("recovery.json"), b"{not json").unwrap();
        assert_eq!(ledger.load(7).unwrap(), RecoveryState::default());
        let aside = dir.path().join("recovery.json.unreadable-7");
        assert_eq!(std::fs::read(aside).unwrap(), b"{not json");
    }
}
