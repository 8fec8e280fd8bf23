//! The status index: which operations are in a status (or phase) now, in (kind, key) order.
//!
//! Why an index: "which debts are `disbursed`?" must cost the size of the answer, not the
//! size of the store. The writer keeps `status_index` (`status \0 kind \0 key`) and
//! `phase_index` (`phase, kind \0 key`) in the same atomic batch as the operations, so a page
//! is a range scan of at most `limit + 1` entries per requested status. Each entry's value is
//! the operation without its history, so no further read is needed.

use std::ops::Bound;

use super::keys::{since_bytes, since_from_bytes, status_since_prefix};
use super::record::decode;
use super::{Key, Space, Store, StoreError, phase_byte};
use crate::domain::overdue::Overdue;
use crate::domain::reconcile::{Operation, Phase};

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Operations whose status is one of these (canonical, sorted, distinct).
    Statuses(Vec<String>),
    /// Operations in this phase.
    Phase(Phase),
}

/// A position in (kind, key) order: listing continues strictly after it.
pub type Cursor = (String, String);

/// A position in an overdue list, (due, kind, key): listing continues strictly after it.
pub type OverdueCursor = (i64, String, String);

/// An expectation: operations of this kind in this status are overdue after this many ms.
pub type Expectation<'a> = (&'a str, &'a str, i64);

/// Read access to the status and phase indexes.
#[derive(Debug, Clone)]
pub struct StatusIndex {
    store: Store,
}

impl StatusIndex {
    /// The indexes of `store`.
    pub fn new(store: Store) -> Self {
        StatusIndex { store }
    }

    /// Up to `limit` operations matching `selection` (and `kind`, when given), strictly after
    /// `after` in (kind, key) order, and whether more follow.
    pub fn page(
        &self,
        selection: &Selection,
        kind: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<Operation>, bool), StoreError> {
        // One (index, prefix) run per status, or one for the phase.
        let runs: Vec<(&Space, Vec<u8>)> = match selection {
            Selection::Statuses(statuses) => statuses
                .iter()
                .map(|status| {
                    let mut prefix = status.as_bytes().to_vec();
                    prefix.push(0);
                    (&self.store.trees.status_index, prefix)
                })
                .collect(),
            Selection::Phase(phase) => {
                vec![(&self.store.trees.phase_index, vec![phase_byte(*phase)])]
            }
        };
        let mut hits: Vec<(Cursor, sled::IVec)> = Vec::new();
        for (index, prefix) in runs {
            self.scan(index, &prefix, kind, after, limit + 1, &mut hits)?;
        }
        // Several statuses are several sorted runs: merge them, then cut the page.
        hits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        hits.dedup_by(|a, b| a.0 == b.0);
        let more = hits.len() > limit;
        hits.truncate(limit);
        let operations = hits
            .iter()
            .map(|(_, value)| decode(value, "status_index"))
            .collect::<Result<_, _>>()?;
        Ok((operations, more))
    }

    /// Up to `limit` operations overdue at `now` (ms) under `expectations`, most overdue
    /// first (by due time, then kind and key), strictly after `after`, and whether more
    /// follow. Each expectation is one range of the `D` space: the operations of its (kind,
    /// status) that took it at `now - expected` or before. The cost is the page, not the
    /// store.
    pub fn overdue_page(
        &self,
        expectations: &[Expectation<'_>],
        now: i64,
        after: Option<&OverdueCursor>,
        limit: usize,
    ) -> Result<(Vec<(Operation, Overdue)>, bool), StoreError> {
        let mut hits: Vec<(OverdueCursor, Overdue)> = Vec::new();
        for &(kind, status, expected) in expectations {
            let prefix = status_since_prefix(kind, status);
            let latest = now.saturating_sub(expected);
            let earliest = after.map_or(i64::MIN, |(due, _, _)| due.saturating_sub(expected));
            if earliest > latest {
                continue;
            }
            let bound = |since: i64| {
                let mut k = prefix.clone();
                k.extend_from_slice(&since_bytes(since));
                k
            };
            let end = match latest.checked_add(1) {
                Some(next) => Bound::Excluded(bound(next)),
                None => Bound::Excluded(prefix_end(&prefix).unwrap_or_default()),
            };
            let entries = self
                .store
                .trees
                .status_since
                .range(Bound::Included(bound(earliest)), end);
            let mut taken = 0;
            for kv in entries {
                let (k, _) = kv?;
                let rest = &k[prefix.len()..];
                let (since, key) = rest
                    .split_at_checked(8)
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: "status_since",
                        reason: "an entry shorter than its time".into(),
                    })?;
                let since = since_from_bytes(since.try_into().expect("split at 8 bytes"));
                let due = since.saturating_add(expected);
                let cursor = (
                    due,
                    kind.to_owned(),
                    String::from_utf8_lossy(key).into_owned(),
                );
                if after.is_some_and(|a| cursor <= *a) {
                    continue;
                }
                hits.push((
                    cursor,
                    Overdue {
                        status: status.to_owned(),
                        since,
                        expected_within: expected,
                        due,
                    },
                ));
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        hits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = hits.len() > limit;
        hits.truncate(limit);
        let mut out = Vec::with_capacity(hits.len());
        for ((_, kind, key), overdue) in hits {
            let entry = Key::StatusIndex {
                status: &overdue.status,
                kind: &kind,
                key: &key,
            };
            let value = self.store.get(entry)?.ok_or_else(|| StoreError::Corrupt {
                tree: "status_since",
                reason: format!(
                    "{kind}/{key} is indexed as on its way but not in the status index"
                ),
            })?;
            out.push((decode(&value, "status_index")?, overdue));
        }
        Ok((out, more))
    }

    /// How many operations are overdue at `now` under each expectation: (kind, status,
    /// count), a count of one range each (what the metric reports).
    pub fn overdue_counts(
        &self,
        expectations: &[Expectation<'_>],
        now: i64,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut out = Vec::new();
        for &(kind, status, expected) in expectations {
            let prefix = status_since_prefix(kind, status);
            let mut start = prefix.clone();
            start.extend_from_slice(&since_bytes(i64::MIN));
            let end = match now.saturating_sub(expected).checked_add(1) {
                Some(next) => {
                    let mut k = prefix.clone();
                    k.extend_from_slice(&since_bytes(next));
                    Bound::Excluded(k)
                }
                None => Bound::Excluded(prefix_end(&prefix).unwrap_or_default()),
            };
            let mut count = 0u64;
            for kv in self
                .store
                .trees
                .status_since
                .range(Bound::Included(start), end)
            {
                kv?;
                count += 1;
            }
            out.push((kind.to_owned(), status.to_owned(), count));
        }
        Ok(out)
    }

    /// Appends to `hits` up to `limit` (kind, key) pairs of `tree` under `prefix`, strictly
    /// after `after`.
    fn scan(
        &self,
        tree: &Space,
        prefix: &[u8],
        kind: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
        hits: &mut Vec<(Cursor, sled::IVec)>,
    ) -> Result<(), StoreError> {
        let mut scope = prefix.to_vec();
        if let Some(kind) = kind {
            scope.extend_from_slice(kind.as_bytes());
            scope.push(0);
        }
        let start = match after {
            Some((after_kind, after_key)) => {
                let mut k = prefix.to_vec();
                k.extend_from_slice(after_kind.as_bytes());
                k.push(0);
                k.extend_from_slice(after_key.as_bytes());
                if k < scope {
                    Bound::Included(scope.clone())
                } else {
                    Bound::Excluded(k)
                }
            }
            None => Bound::Included(scope.clone()),
        };
        let end = match prefix_end(&scope) {
            Some(end) => {
                let past_the_end = match &start {
                    Bound::Included(s) | Bound::Excluded(s) => *s >= end,
                    Bound::Unbounded => false,
                };
                if past_the_end {
                    return Ok(());
                }
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        for kv in tree.range(start, end).take(limit) {
            let (k, value) = kv?;
            let rest = &k[prefix.len()..];
            let split = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| StoreError::Corrupt {
                    tree: "status_index",
                    reason: "index entry without a kind separator".into(),
                })?;
            let kind = String::from_utf8_lossy(&rest[..split]).into_owned();
            let key = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            hits.push(((kind, key), value));
        }
        Ok(())
    }
}

/// The least byte string greater than every string starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
