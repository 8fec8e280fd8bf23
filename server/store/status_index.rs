//! The status index: which operations are in a status (or phase) now, in (kind, key) order.
//!
//! Why an index: "which debts are `disbursed`?" must cost the size of the answer, not the
//! size of the store. The writer keeps `status_index` (`status \0 kind \0 key`) and
//! `phase_index` (`phase, kind \0 key`) in the same atomic batch as the operations, so a page
//! is a range scan of at most `limit + 1` entries per requested status. Each entry's value is
//! the operation without its history, so no further read is needed.

use std::ops::Bound;

use super::record::decode;
use super::{Space, Store, StoreError, phase_byte};
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
