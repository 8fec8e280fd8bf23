//! Overdue operations: "this should have moved by now" as an answer.
//!
//! QI Tech retries a webhook a limited number of times; a lost `disbursed`, or a debt that
//! sits in `waiting_signature` for a week, leaves a status that is quietly stale. The catalog
//! says, per kind and status, how long an operation is expected to stay (`expect`, durations
//! such as `5d`); an operation is **overdue** when it has held a status with an expectation
//! for longer than that, and stays overdue until it changes.
//!
//! # From when
//!
//! An operation took its status at the earliest time any of its webhooks in that status
//! says, each webhook's time being its event time, or its receive time when that is
//! earlier or when it has none ([`status_since`]). Why event time: it is when QI Tech says
//! the operation reached the status, so a webhook that arrives late (QI retried it for a
//! day) does not restart the clock, and a status reached by a webhook from the past is
//! overdue at once if it has been held that long. Why never later than the receive time: by
//! then the status was certainly taken, and a forged or wrong date in the future cannot keep
//! an operation from ever being overdue.
//!
//! [`status_since`] depends only on the operation (its history), not on the catalog, so the
//! store can index operations by it once, and a catalog that changes an expectation applies
//! to every operation at once without rewriting anything.

use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::reconcile::{Operation, Phase};

/// An operation that has held a status longer than the catalog expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overdue {
    /// The status it has held too long.
    pub status: String,
    /// When it took that status, ms since the epoch ([`status_since`]).
    pub since: i64,
    /// How long the catalog expects it to stay, ms.
    pub expected_within: i64,
    /// When it became overdue: `since + expected_within`.
    pub due: i64,
}

/// A proposal that one operation became overdue: which operation, in which status held
/// since when. The overdue clock proposes it (on a cluster, through the stream); the writer
/// records it as an event only if the operation still holds that status since then and no
/// event said so yet, so proposing twice, or late, changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdueMark {
    /// The operation's kind.
    pub kind: String,
    /// The operation's key.
    pub key: String,
    /// The status it holds.
    pub status: String,
    /// Since when it holds it ([`status_since`]).
    pub since: i64,
}

/// When `op` took its current status: the earliest time among its webhooks in that status,
/// each at its event time or its receive time, whichever is earlier (see the module docs).
/// An operation whose winning status no webhook carries as such (its status comes from an
/// outcome) is dated by its winner's time the same way.
pub fn status_since(op: &Operation) -> i64 {
    let at = |event_time: Option<i64>, received_at: i64| {
        event_time.map_or(received_at, |t| t.min(received_at))
    };
    op.history
        .iter()
        .filter(|e| e.status == op.status)
        .map(|e| at(e.event_time, e.received_at))
        .min()
        .unwrap_or_else(|| at(op.event_time, op.updated_at))
}

/// Whether an operation in `phase` can be overdue: only one still on its way or live. An
/// ended flow has nothing more to wait for.
pub fn can_be_overdue(phase: Phase) -> bool {
    matches!(phase, Phase::Pending | Phase::Active)
}

/// `op` as overdue at `now` (ms since the epoch) under `catalog`, or `None` when it is not:
/// its status has no expectation, it ended, or it has not held it long enough yet.
pub fn overdue(catalog: &Catalog, op: &Operation, now: i64) -> Option<Overdue> {
    if !can_be_overdue(op.phase) {
        return None;
    }
    let expected_within = catalog.expectation(&op.kind, &op.status)?;
    let since = status_since(op);
    let due = since.saturating_add(expected_within);
    (now >= due).then(|| Overdue {
        status: op.status.clone(),
        since,
        expected_within,
        due,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reconcile::{EventSummary, Reconciler};

    fn summary(n: u8, status: &str, event_time: Option<i64>, received_at: i64) -> EventSummary {
        EventSummary::bare(n, status, event_time, received_at)
    }

    fn catalog() -> Catalog {
        Catalog::builtin()
            .extended_with("[kinds.debt.expect]\nwaiting_signature = \"5d\"\n")
            .unwrap()
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_clock_starts_when_the_status_was_first_taken_never_after_its_receipt() {
        let catalog = catalog();
        let r = Reconciler::new(&catalog);
        // Signed for at day 1 (said on day 1, received on day 2); resent on day 3.
        let op = r
            .reconcile(
                "debt",
                "k",
                vec![
                    summary(1, "waiting_signature", Some(DAY), 2 * DAY),
                    summary(2, "waiting_signature", Some(3 * DAY), 3 * DAY),
                ],
            )
            .unwrap();
        assert_eq!(
            status_since(&op),
            DAY,
            "the resend does not restart the clock"
        );
        assert_eq!(overdue(&catalog, &op, 5 * DAY), None, "4 days held");
        let late = overdue(&catalog, &op, 6 * DAY).expect("5 days held");
        assert_eq!(
            late,
            Overdue {
                status: "waiting_signature".into(),
                since: DAY,
                expected_within: 5 * DAY,
                due: 6 * DAY,
            }
        );
        // A date in the future counts from the receipt; no date at all likewise.
        let future = r
            .reconcile(
                "debt",
                "f",
                vec![summary(3, "waiting_signature", Some(400 * DAY), 2 * DAY)],
            )
            .unwrap();
        assert_eq!(status_since(&future), 2 * DAY);
        let undated = r
            .reconcile(
                "debt",
                "u",
                vec![summary(4, "waiting_signature", None, 7 * DAY)],
            )
            .unwrap();
        assert_eq!(status_since(&undated), 7 * DAY);
    }

    #[test]
    fn a_change_or_an_end_clears_it_and_other_statuses_have_no_clock() {
        let catalog = catalog();
        let r = Reconciler::new(&catalog);
        let moved = r
            .reconcile(
                "debt",
                "k",
                vec![
                    summary(1, "waiting_signature", Some(DAY), DAY),
                    summary(2, "waiting_balance_block", Some(9 * DAY), 9 * DAY),
                ],
            )
            .unwrap();
        assert_eq!(overdue(&catalog, &moved, 100 * DAY), None);
        let ended = r
            .reconcile(
                "debt",
                "e",
                vec![
                    summary(1, "waiting_signature", Some(DAY), DAY),
                    summary(2, "canceled", Some(2 * DAY), 2 * DAY),
                ],
            )
            .unwrap();
        assert_eq!(overdue(&catalog, &ended, 100 * DAY), None);
        // Without the expectation, nothing is ever overdue.
        let plain = Reconciler::new(&Catalog::builtin())
            .reconcile(
                "debt",
                "p",
                vec![summary(1, "waiting_signature", Some(DAY), DAY)],
            )
            .unwrap();
        assert_eq!(overdue(&Catalog::builtin(), &plain, 100 * DAY), None);
    }

    #[test]
    fn an_expectation_on_an_end_status_or_with_a_bad_duration_is_refused() {
        for (file, says) in [
            ("[kinds.debt.expect]\nsettled = \"1d\"\n", "settled"),
            (
                "[kinds.debt.expect]\nwaiting_signature = \"soon\"\n",
                "soon",
            ),
            (
                "[kinds.debt.expect]\nno_such_status = \"1d\"\n",
                "no_such_status",
            ),
        ] {
            let err = Catalog::builtin()
                .extended_with(file)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{file}: {err}");
        }
    }
}
