//! The status index: which operations are in a status (or phase) now, in (kind, key) order.
//!
//! Why an index: "which debts are `disbursed`?" must cost the size of the answer, not the
//! size of the store. The writer keeps `status_index` (`status \0 kind \0 key`) in the same
//! atomic batch as the operations, so a page is a lazy merge of range scans, one per status
//! asked for: about `limit` entries read, plus one per status. A phase is the set of its
//! (kind, status) pairs, which the counters know, so it needs no index of its own (one sled
//! key fewer per change). Each entry's value is the operation without its history, so no
//! further read is needed.

use std::ops::Bound;

use super::keys::{since_bytes, since_from_bytes, status_since_prefix};
use super::record::decode;
use super::{Key, Store, StoreError};
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
    ///
    /// Every selection is a set of runs of the status index, merged lazily: one run per
    /// status asked for, or, for a phase, one per (kind, status) in that phase (which the
    /// counters know: a status may be of one phase for a kind and of another for another).
    /// A page reads about `limit` entries plus one per run, whatever the store holds.
    pub fn page(
        &self,
        selection: &Selection,
        kind: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<Operation>, bool), StoreError> {
        let scopes: Vec<(String, Option<String>)> = match selection {
            Selection::Statuses(statuses) => statuses
                .iter()
                .map(|status| (status.clone(), kind.map(str::to_owned)))
                .collect(),
            Selection::Phase(phase) => self
                .store
                .counts()?
                .into_iter()
                .filter(|c| c.phase == *phase && kind.is_none_or(|k| c.kind == k))
                .map(|c| (c.status, Some(c.kind)))
                .collect(),
        };
        let mut runs = Vec::with_capacity(scopes.len());
        for (status, kind) in &scopes {
            let mut prefix = status.as_bytes().to_vec();
            prefix.push(0);
            if let Some(mut run) = self.run(&prefix, kind.as_deref(), after) {
                let head = run.next().transpose()?;
                runs.push((run, head));
            }
        }
        // The merge: the least head of all runs, until the page and one more are taken.
        let mut hits: Vec<(Cursor, sled::IVec)> = Vec::with_capacity(limit + 1);
        while hits.len() <= limit {
            let Some(least) = runs
                .iter()
                .enumerate()
                .filter_map(|(i, (_, head))| head.as_ref().map(|(cursor, _)| (cursor, i)))
                .min()
                .map(|(_, i)| i)
            else {
                break;
            };
            let (run, head) = &mut runs[least];
            let next = run.next().transpose()?;
            let taken = std::mem::replace(head, next).expect("the least run has a head");
            if hits.last().is_none_or(|(last, _)| *last != taken.0) {
                hits.push(taken);
            }
        }
        let more = hits.len() > limit;
        hits.truncate(limit);
        let operations = hits
            .iter()
            .map(|(_, value)| decode(value, "status_index"))
            .collect::<Result<_, _>>()?;
        Ok((operations, more))
    }

    /// Every operation of `kind` in `status` (without history): a scan of one run, for
    /// maintenance (a catalog's new expectation dates the operations it concerns).
    pub(crate) fn all_in(&self, kind: &str, status: &str) -> Result<Vec<Operation>, StoreError> {
        let mut prefix = status.as_bytes().to_vec();
        prefix.push(0);
        let Some(run) = self.run(&prefix, Some(kind), None) else {
            return Ok(Vec::new());
        };
        run.map(|hit| decode(&hit?.1, "status_index")).collect()
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

    /// The status index's entries under `prefix` (a status and its separator), of `kind`
    /// when given, strictly after `after`, in (kind, key) order, read as they are taken;
    /// `None` when none can follow `after`.
    fn run(
        &self,
        prefix: &[u8],
        kind: Option<&str>,
        after: Option<&Cursor>,
    ) -> Option<impl Iterator<Item = Result<(Cursor, sled::IVec), StoreError>> + use<>> {
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
                    return None;
                }
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        let skip = prefix.len();
        Some(
            self.store
                .trees
                .status_index
                .range(start, end)
                .map(move |kv| {
                    let (k, value) = kv?;
                    let rest = &k[skip..];
                    let split =
                        rest.iter()
                            .position(|b| *b == 0)
                            .ok_or_else(|| StoreError::Corrupt {
                                tree: "status_index",
                                reason: "index entry without a kind separator".into(),
                            })?;
                    let kind = String::from_utf8_lossy(&rest[..split]).into_owned();
                    let key = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
                    Ok(((kind, key), value))
                }),
        )
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
