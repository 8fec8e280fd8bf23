//! What recovery remembers between passes and restarts, where it keeps it, and (on a
//! cluster) which node recovers.
//!
//! The state is small and bounded: a cursor (a time), the callbacks asked to be resent and
//! not yet seen delivered (at most [`MAX_PENDING`]), the operations asked about because they
//! fell overdue (at most [`MAX_ASKED`]), the feed sequence of the last overdue event heard,
//! and counters. Its decisions ([`RecoveryState::failed_callback`],
//! [`RecoveryState::overdue`]) are pure functions of the state and the time, tested here.
//!
//! # Durability, and one recoverer per cluster
//!
//! A single node keeps the state in a file of its data directory ([`Ledger::in_dir`]):
//! [`Ledger::save`] returns only once it is on disk (written beside the file, synced, renamed
//! over it, the directory synced), so a crash leaves the old state or the new one, never a
//! mix. A cluster keeps one state for all its nodes, in a key-value bucket of the cluster's
//! JetStream ([`Ledger::in_bucket`]), replicated as the stream is; a node recovers only while
//! it holds the bucket's lease, claimed and renewed by compare-and-set on the lease's
//! revision, and saves the state the same way, so a node that lost the lease (paused past
//! it, cut off) cannot overwrite its successor's work: its save fails, and it stops. The
//! lease lasts `--recover-lease`; a dead recoverer's successor takes over once it lapses,
//! reloading the state where the dead one last saved it. Losing the latest save costs a repeat, never a skip: a pass that ends
//! unsaved is done again from the cursor before it, and asking QI to resend a callback twice
//! delivers one webhook (the intake stores the same content once). A state file that cannot
//! be read is set aside whole (renamed, nothing deleted) and recovery starts as new, reaching
//! back `--recover-lookback`: again a repeat at worst.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::durable_file::write_whole;

/// Most callbacks followed after a resend; more are resent but not followed (a later pass
/// that still lists them failed resends them again).
/// (The whole state is one value of a JetStream bucket on a cluster, which NATS bounds at a
/// megabyte by default: 2,000 of each stays under it.)
pub(crate) const MAX_PENDING: usize = 2_000;

/// Most overdue operations remembered (the oldest asked are forgotten first).
pub(crate) const MAX_ASKED: usize = 2_000;

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

/// `d` in milliseconds, as recovery's times are kept (saturating).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Why recovery's state could not be read or kept.
#[derive(Debug, thiserror::Error)]
#[error("recovery state {path}: {reason}")]
pub(crate) struct LedgerError {
    path: String,
    reason: String,
}

/// Where recovery keeps its state, and whether this node recovers.
pub(crate) enum Ledger {
    /// A single node: one file in its data directory; it always recovers.
    File(PathBuf),
    /// A cluster node: the cluster's bucket; it recovers while it holds the lease.
    Bucket(Box<BucketLedger>),
}

/// A cluster's recovery state and lease, in a JetStream key-value bucket.
pub(crate) struct BucketLedger {
    kv: async_nats::jetstream::kv::Store,
    /// This node, as the lease names it.
    node: String,
    /// How long a claim lasts.
    lease: Duration,
    /// The state's revision this node last read or wrote.
    state_revision: Option<u64>,
    /// Until when this node holds the lease, by its clock (ms since the epoch; 0: it does
    /// not).
    leading_until: i64,
}

/// The lease: who recovers, until when (by that node's clock).
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    node: String,
    until: i64,
}

const STATE_KEY: &str = "state";
const LEASE_KEY: &str = "lease";

impl Ledger {
    /// The ledger of the single node whose store is in `data_dir`.
    pub(crate) fn in_dir(data_dir: &Path) -> Ledger {
        Ledger::File(data_dir.join("recovery.json"))
    }

    /// The ledger of a cluster node, in the cluster's bucket `kv`, as `node`, with claims
    /// that last `lease`.
    pub(crate) fn in_bucket(
        kv: async_nats::jetstream::kv::Store,
        node: String,
        lease: Duration,
    ) -> Ledger {
        Ledger::Bucket(Box::new(BucketLedger {
            kv,
            node,
            lease,
            state_revision: None,
            leading_until: 0,
        }))
    }

    fn error(&self, reason: impl ToString) -> LedgerError {
        LedgerError {
            path: match self {
                Ledger::File(path) => path.display().to_string(),
                Ledger::Bucket(b) => format!("bucket {}", b.kv.name),
            },
            reason: reason.to_string(),
        }
    }

    /// How long a claim lasts on a cluster; `None` for a single node (which always leads).
    pub(crate) fn lease(&self) -> Option<Duration> {
        match self {
            Ledger::File(_) => None,
            Ledger::Bucket(b) => Some(b.lease),
        }
    }

    /// Whether this node recovers at `now`: a single node always; a cluster node once it
    /// claimed or renewed the lease (a claim with more than half its time left is not
    /// renewed yet). A bucket out of reach is "not now".
    pub(crate) async fn lead(&mut self, now: i64) -> bool {
        let Ledger::Bucket(b) = self else {
            return true;
        };
        let half = millis(b.lease) / 2;
        if b.leading_until - now > half {
            return true;
        }
        let claim = serde_json::to_vec(&Lease {
            node: b.node.clone(),
            until: now.saturating_add(millis(b.lease)),
        })
        .expect("a lease serializes")
        .into();
        let claimed = match b.kv.entry(LEASE_KEY).await {
            Ok(None) => b.kv.create(LEASE_KEY, claim).await.is_ok(),
            Ok(Some(entry)) => {
                let held = serde_json::from_slice::<Lease>(&entry.value).ok();
                let free = held
                    .as_ref()
                    .is_none_or(|lease| lease.node == b.node || lease.until <= now);
                free && b.kv.update(LEASE_KEY, claim, entry.revision).await.is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery cannot read the cluster's lease");
                false
            }
        };
        b.leading_until = if claimed {
            now.saturating_add(millis(b.lease))
        } else {
            0
        };
        claimed
    }

    /// The last saved state; a new one when there is none. A state that cannot be read as
    /// one is set aside (a file renamed beside itself; a bucket's value is overwritten by
    /// the next save, JetStream keeping nothing older) and a new state begins.
    pub(crate) async fn load(&mut self, now: i64) -> Result<RecoveryState, LedgerError> {
        let bytes = match self {
            Ledger::File(path) => match std::fs::read(&*path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(RecoveryState::default());
                }
                Err(e) => return Err(self.error(e)),
            },
            Ledger::Bucket(b) => match b.kv.entry(STATE_KEY).await {
                Ok(Some(entry)) => {
                    b.state_revision = Some(entry.revision);
                    entry.value.to_vec()
                }
                Ok(None) => {
                    b.state_revision = None;
                    return Ok(RecoveryState::default());
                }
                Err(e) => return Err(self.error(e)),
            },
        };
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(state),
            Err(e) => {
                if let Ledger::File(path) = self {
                    let aside = path.with_extension(format!("json.unreadable-{now}"));
                    std::fs::rename(&*path, &aside).map_err(|e| self.error(e))?;
                }
                tracing::error!(
                    error = %e,
                    "recovery's state is unreadable: set aside, and recovery starts as new \
                     (it reaches back --recover-lookback; resends are deduplicated)"
                );
                Ok(RecoveryState::default())
            }
        }
    }

    /// Keeps `state`; returns once it is durable (see the module docs). On a cluster, fails
    /// if another node saved since this one read: it recovers now, and this one stops.
    pub(crate) async fn save(&mut self, state: &RecoveryState) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec(state).map_err(|e| self.error(e))?;
        match self {
            Ledger::File(path) => {
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || write_whole(&path, &bytes))
                    .await
                    .map_err(|e| self.error(e))?;
                written.map_err(|e| self.error(e))
            }
            Ledger::Bucket(b) => {
                let saved = match b.state_revision {
                    Some(revision) => {
                        b.kv.update(STATE_KEY, bytes.into(), revision)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    None => {
                        b.kv.create(STATE_KEY, bytes.into())
                            .await
                            .map_err(|e| e.to_string())
                    }
                };
                match saved {
                    Ok(revision) => {
                        b.state_revision = Some(revision);
                        Ok(())
                    }
                    Err(e) => {
                        b.leading_until = 0;
                        Err(self.error(format!(
                            "{e}: another node recovers now (this one stops until it holds \
                             the lease again)"
                        )))
                    }
                }
            }
        }
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

    #[tokio::test]
    async fn the_ledger_survives_a_restart_and_sets_aside_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::in_dir(dir.path());
        assert_eq!(ledger.load(0).await.unwrap(), RecoveryState::default());
        let mut state = RecoveryState {
            cursor: Some(42),
            ..RecoveryState::default()
        };
        state.resent("c", "e", None, (1, 2), 3, Duration::from_secs(1));
        ledger.save(&state).await.unwrap();
        assert_eq!(Ledger::in_dir(dir.path()).load(0).await.unwrap(), state);
        std::fs::write(dir.path().join("recovery.json"), b"{not json").unwrap();
        assert_eq!(ledger.load(7).await.unwrap(), RecoveryState::default());
        let aside = dir.path().join("recovery.json.unreadable-7");
        assert_eq!(std::fs::read(aside).unwrap(), b"{not json");
    }
}
