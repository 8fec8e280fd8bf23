//! The most recent changes, made once and shared by every watcher.
//!
//! Watchers read changes from their own cursors; with hundreds of them, working the same
//! changes out of the log hundreds of times would cost more than the writes. The writer
//! therefore puts each committed change here, after its batch is on disk and before it wakes
//! the watchers; a watcher whose cursor is inside the window reads from it, and one that is
//! behind (a slow or resuming watcher) has the store work the changes out from the log
//! ([`Store::changes_after`](super::Store::changes_after)). The reconciliation is a pure
//! function of an operation's webhooks, so both give the same changes, and where a watcher
//! reads from never changes what it receives (under the same catalog: a reload re-reads
//! older changes under the new one, as a rebuild re-reads the operations).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use super::Change;

/// A bounded window of the latest committed change records, by sequence: at most
/// `capacity` records and at most `max_bytes` of them (as [`Change::approx_bytes`] counts),
/// whichever is reached first, so that large records cannot make the window large.
#[derive(Debug)]
pub struct RecentChanges {
    window: RwLock<Window>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Window {
    records: VecDeque<(u64, Arc<Change>)>,
    bytes: usize,
}

impl RecentChanges {
    /// A window of at most `capacity` records and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        RecentChanges {
            window: RwLock::new(Window {
                records: VecDeque::with_capacity(capacity.min(1 << 16)),
                bytes: 0,
            }),
            capacity: capacity.max(1),
            max_bytes,
        }
    }

    /// Appends committed records (in sequence order, after those already there), dropping
    /// the oldest while the window is over either bound.
    pub fn extend(&self, records: impl IntoIterator<Item = (u64, Arc<Change>)>) {
        let mut window = self.window.write().unwrap_or_else(|e| e.into_inner());
        for record in records {
            window.bytes += record.1.approx_bytes();
            window.records.push_back(record);
            while window.records.len() > self.capacity
                || (window.bytes > self.max_bytes && window.records.len() > 1)
            {
                let Some((_, dropped)) = window.records.pop_front() else {
                    break;
                };
                window.bytes -= dropped.approx_bytes();
            }
        }
    }

    /// Empties the window: for changes committed outside it (webhooks promoted by a catalog
    /// reload), so that it never holds a gap. Watchers read from the store until it refills.
    pub fn clear(&self) {
        let mut window = self.window.write().unwrap_or_else(|e| e.into_inner());
        window.records.clear();
        window.bytes = 0;
    }

    /// Bytes the window holds, as [`Change::approx_bytes`] counts.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.window.read().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// The records with sequences in `(after, up_to]`, at most `limit`, if the window holds
    /// the one right after `after`; `None` when the caller must read the store.
    pub fn after(&self, after: u64, up_to: u64, limit: usize) -> Option<Vec<(u64, Arc<Change>)>> {
        let window = &self
            .window
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .records;
        let first = window.front()?.0;
        if after + 1 < first {
            return None;
        }
        // Sequences in the window are consecutive, so positions are offsets.
        let start = usize::try_from(after + 1 - first).ok()?;
        Some(
            window
                .range(start.min(window.len())..)
                .take_while(|(sequence, _)| *sequence <= up_to)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reconcile::{Operation, Phase};

    fn change(n: u64) -> (u64, Arc<Change>) {
        change_with_detail(n, String::new())
    }

    fn change_with_detail(n: u64, detail: String) -> (u64, Arc<Change>) {
        let operation = Operation {
            detail,
            last_sequence: n,
            ..Operation::bare("debt", &format!("k{n}"), "disbursed", Phase::Pending)
        };
        let change = Change {
            previous_status: None,
            status_changed: true,
            operation,
            milestones_reached: Vec::new(),
            overdue: None,
        };
        (n, Arc::new(change))
    }

    #[test]
    fn serves_only_what_it_holds_contiguously() {
        let recent = RecentChanges::new(4, usize::MAX);
        assert!(recent.after(0, 10, 10).is_none(), "empty: read the store");
        recent.extend((1..=6).map(change));
        // Holds 3..=6.
        assert!(
            recent.after(0, 6, 10).is_none(),
            "1 and 2 fell out of the window"
        );
        assert!(recent.after(1, 6, 10).is_none());
        let seqs = |v: Vec<(u64, Arc<Change>)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(recent.after(2, 6, 10).unwrap()), [3, 4, 5, 6]);
        assert_eq!(seqs(recent.after(3, 5, 10).unwrap()), [4, 5]);
        assert_eq!(seqs(recent.after(2, 6, 2).unwrap()), [3, 4]);
        assert_eq!(seqs(recent.after(6, 6, 10).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn large_records_are_bounded_by_bytes_not_by_count() {
        let recent = RecentChanges::new(1000, 10_000);
        recent.extend((1..=100).map(|n| change_with_detail(n, "d".repeat(1000))));
        assert!(recent.bytes() <= 10_000, "{}", recent.bytes());
        let per_record = change_with_detail(0, "d".repeat(1000)).1.approx_bytes();
        let fit = 10_000 / per_record;
        let first_held = 100 - fit as u64;
        let held = recent
            .after(first_held, 100, 1000)
            .expect("the newest are held");
        assert_eq!(held.len(), fit);
        assert!(
            recent.after(first_held - 1, 100, 1000).is_none(),
            "older ones were dropped"
        );
        // A record larger than the bound is still held alone, so watchers keep up.
        recent.extend([change_with_detail(101, "d".repeat(20_000))]);
        assert_eq!(recent.after(100, 101, 10).map(|v| v.len()), Some(1));
    }
}
