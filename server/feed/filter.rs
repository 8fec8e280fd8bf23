//! Which changes a subscriber receives: a filter over change records, pure and tested
//! apart from the tasks that serve it.

use std::collections::BTreeSet;

use crate::domain::reconcile::Phase;
use crate::store::Change;

/// Which changes a subscriber receives. Every given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FeedFilter {
    /// Only this operation key.
    pub(crate) key: Option<String>,
    /// Only these kinds (canonical); empty: any.
    pub(crate) kinds: BTreeSet<String>,
    /// Only changes after which the status is one of these (canonical); empty: any.
    pub(crate) statuses: BTreeSet<String>,
    /// Only changes after which the phase is one of these; empty: any.
    pub(crate) phases: BTreeSet<Phase>,
    /// Also webhooks that did not change the status.
    pub(crate) include_unchanged: bool,
    /// Only changes that reached one of these milestones (instead of status changes); empty:
    /// no milestone filter.
    pub(crate) milestones: BTreeSet<String>,
    /// Also the moments operations became overdue.
    pub(crate) overdue: bool,
    /// Only the moments operations became overdue (with `overdue`), no webhook's change.
    pub(crate) overdue_only: bool,
}

impl FeedFilter {
    /// Whether `change` is delivered to a subscriber with this filter.
    pub(crate) fn matches(&self, change: &Change) -> bool {
        let op = &change.operation;
        let selected = if change.overdue.is_some() {
            self.overdue
        } else if self.overdue_only {
            false
        } else if self.milestones.is_empty() {
            self.include_unchanged || change.status_changed
        } else {
            change
                .milestones_reached
                .iter()
                .any(|m| self.milestones.contains(m))
        };
        selected
            && self.key.as_ref().is_none_or(|k| *k == op.key)
            && (self.kinds.is_empty() || self.kinds.contains(&op.kind))
            && (self.statuses.is_empty() || self.statuses.contains(&op.status))
            && (self.phases.is_empty() || self.phases.contains(&op.phase))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reconcile::Operation;

    fn change(kind: &str, key: &str, status: &str, phase: Phase, changed: bool) -> Change {
        Change {
            previous_status: None,
            status_changed: changed,
            operation: Operation::bare(kind, key, status, phase),
            milestones_reached: Vec::new(),
            overdue: None,
        }
    }

    #[test]
    fn filters_combine() {
        let disbursed = change("debt", "a", "disbursed", Phase::Pending, true);
        let canceled = change("debt", "b", "canceled", Phase::Failed, true);
        let opened = change("account", "a", "account_opened", Phase::Succeeded, true);
        let unchanged = change("debt", "a", "disbursed", Phase::Pending, false);

        let everything = FeedFilter::default();
        assert!(everything.matches(&disbursed) && everything.matches(&opened));
        assert!(
            !everything.matches(&unchanged),
            "unchanged webhooks only on request"
        );
        let with_unchanged = FeedFilter {
            include_unchanged: true,
            ..FeedFilter::default()
        };
        assert!(with_unchanged.matches(&unchanged));

        let key_a = FeedFilter {
            key: Some("a".into()),
            ..FeedFilter::default()
        };
        assert!(key_a.matches(&disbursed) && key_a.matches(&opened) && !key_a.matches(&canceled));

        let debts = FeedFilter {
            kinds: ["debt".to_owned()].into(),
            ..FeedFilter::default()
        };
        assert!(debts.matches(&canceled) && !debts.matches(&opened));

        let ends = FeedFilter {
            kinds: ["debt".to_owned()].into(),
            statuses: ["disbursed".to_owned(), "canceled".to_owned()].into(),
            ..FeedFilter::default()
        };
        assert!(ends.matches(&disbursed) && ends.matches(&canceled) && !ends.matches(&opened));

        let failed = FeedFilter {
            phases: [Phase::Failed].into(),
            ..FeedFilter::default()
        };
        assert!(failed.matches(&canceled) && !failed.matches(&disbursed));
    }

    #[test]
    fn overdue_events_only_on_request_and_under_the_other_filters() {
        let late = Change {
            overdue: Some(crate::domain::overdue::Overdue {
                status: "waiting_signature".into(),
                since: 1,
                expected_within: 2,
                due: 3,
            }),
            ..change("debt", "a", "waiting_signature", Phase::Pending, false)
        };
        let unasked = FeedFilter {
            include_unchanged: true,
            ..FeedFilter::default()
        };
        assert!(!unasked.matches(&late), "not a webhook left unchanged");
        let asked = FeedFilter {
            overdue: true,
            ..FeedFilter::default()
        };
        assert!(asked.matches(&late));
        let milestones = FeedFilter {
            overdue: true,
            milestones: ["disbursed".to_owned()].into(),
            ..FeedFilter::default()
        };
        assert!(
            milestones.matches(&late),
            "a milestone filter does not hide it"
        );
        for narrowed in [
            FeedFilter {
                kinds: ["account".to_owned()].into(),
                ..asked.clone()
            },
            FeedFilter {
                statuses: ["disbursed".to_owned()].into(),
                ..asked.clone()
            },
            FeedFilter {
                key: Some("b".into()),
                ..asked.clone()
            },
        ] {
            assert!(!narrowed.matches(&late), "{narrowed:?}");
        }
        assert!(
            !asked.matches(&change("debt", "a", "disbursed", Phase::Pending, false)),
            "asking for overdue events does not bring unchanged webhooks"
        );
        let only = FeedFilter {
            overdue: true,
            overdue_only: true,
            ..FeedFilter::default()
        };
        assert!(only.matches(&late));
        assert!(
            !only.matches(&change("debt", "a", "disbursed", Phase::Pending, true)),
            "only overdue events: no status change"
        );
    }
}
