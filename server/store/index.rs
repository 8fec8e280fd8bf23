//! Index upkeep: the status and phase indexes, the index of operations on their way by when
//! they took their status (for overdue ones), and the per-(kind, phase, status) counters that
//! every operation write keeps, and the check that they agree with the operations.
//!
//! [`put_operation`] is the one place that knows which index entries and counters an
//! operation has; the writer, rebuild and [`Store::check_indexes`] all go through it, and
//! its writes land in the same atomic sled batch as the operation, so the indexes never
//! disagree with what they index.

use super::log::PayloadRef;
use super::record::{encode, encode_operation, u64_from_be};
use super::{Key, Meta, OperationCount, SpaceId, Store, StoreError, Writes, keys};
use crate::domain::catalog::Catalog;
use crate::domain::overdue::{can_be_overdue, status_since};
use crate::domain::reconcile::{Operation, Phase};
use crate::domain::webhook::FactValue;

impl Store {
    /// Counts every operation once, for a store written before counters existed (a scan, once);
    /// from then on every change keeps them (see [`put_operation`]).
    pub(super) fn ensure_counts(&self) -> Result<(), StoreError> {
        if self.get(Key::Meta(Meta::CountsReady))?.is_some() {
            return Ok(());
        }
        let mut writes = Writes::default();
        for op in self.operations() {
            writes.add_count(count_key(&op?), 1);
        }
        writes.put(Key::Meta(Meta::CountsReady), &[1u8][..]);
        writes.apply(&self.trees.all)?;
        Ok(())
    }

    /// How many operations there are of each kind in each status (with the status's phase),
    /// from the counters every change keeps: no scan of the operations.
    pub fn counts(&self) -> Result<Vec<OperationCount>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees.counts.iter() {
            let (key, value) = kv?;
            let corrupt = || StoreError::Corrupt {
                tree: "counts",
                reason: "a counter that does not decode".into(),
            };
            let mut parts = key.split(|b| *b == 0);
            let (Some(kind), Some(&[phase]), Some(status)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(corrupt());
            };
            let phase = Phase::ALL
                .into_iter()
                .find(|p| keys::phase_byte(*p) == phase)
                .ok_or_else(corrupt)?;
            out.push(OperationCount {
                kind: String::from_utf8_lossy(kind).into_owned(),
                status: String::from_utf8_lossy(status).into_owned(),
                phase,
                operations: u64_from_be(&value, "counts")?,
            });
        }
        Ok(out)
    }

    /// Checks that the status and phase indexes hold exactly one entry per operation, the
    /// one its current status and phase call for ([`put_operation`] says which). Returns the
    /// problems found.
    pub fn check_indexes(&self) -> Result<Vec<String>, StoreError> {
        let dated = self.dated_statuses()?;
        let watched = |kind: &str, status: &str| {
            dated
                .as_ref()
                .is_none_or(|pairs| pairs.contains(&(kind.to_owned(), status.to_owned())))
        };
        let mut expected = std::collections::BTreeMap::new();
        for op in self.operations() {
            let mut writes = Writes::default();
            // Only the index entries are compared: no bodies needed.
            // The `B` space is not compared here: its entries follow the catalog's parts,
            // which the store alone does not know.
            put_operation(&mut writes, &watched, None, None, &op?, &[]);
            for (key, value) in writes.entries() {
                if matches!(key.first(), Some(&b) if b != SpaceId::Operations as u8) {
                    expected.insert(key.clone(), value.clone());
                }
            }
        }
        let mut actual = std::collections::BTreeMap::new();
        for (index, id) in [
            (&self.trees.status_index, SpaceId::StatusIndex),
            (&self.trees.status_since, SpaceId::StatusSince),
        ] {
            for kv in index.iter() {
                let (k, v) = kv?;
                let mut key = vec![id as u8];
                key.extend_from_slice(&k);
                actual.insert(key, Some(v));
            }
        }
        let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let mut problems = Vec::new();
        for (key, value) in &expected {
            // A `D` entry's value says whether an event said it became overdue, which the
            // operation alone does not tell: only its presence is checked.
            let valued = key.first() != Some(&(SpaceId::StatusSince as u8));
            match actual.get(key) {
                None => problems.push(format!("missing {:?}", text(key))),
                Some(v) if valued && v != value => {
                    problems.push(format!("outdated {:?}", text(key)))
                }
                Some(_) => {}
            }
        }
        for stale in actual.keys().filter(|k| !expected.contains_key(*k)) {
            problems.push(format!("stale {:?}", text(stale)));
        }
        let mut counted = std::collections::BTreeMap::new();
        for op in self.operations() {
            let op = op?;
            *counted
                .entry((op.kind.clone(), op.phase, op.status.clone()))
                .or_insert(0u64) += 1;
        }
        let kept: std::collections::BTreeMap<_, _> = self
            .counts()?
            .into_iter()
            .map(|c| ((c.kind, c.phase, c.status), c.operations))
            .collect();
        if kept != counted {
            problems.push(format!("counters {kept:?} differ from a count {counted:?}"));
        }
        problems.extend(self.check_parts()?);
        Ok(problems)
    }

    /// Checks the `B` space without the catalog (which says which kinds are parts, and the
    /// store does not know): every entry is an operation that exists, holds it as it is, and
    /// carries a fact naming the whole it is listed under. A part missing from it is not
    /// found this way: only the catalog could say it should be there.
    fn check_parts(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        for entry in self.trees.parts.iter() {
            let (key, value) = entry?;
            let text = String::from_utf8_lossy(&key).into_owned();
            let mut fields = key.split(|b| *b == 0);
            let (Some(whole_key), Some(_), Some(kind), Some(part_key), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                problems.push(format!("malformed part entry {text:?}"));
                continue;
            };
            let (kind, part_key) = (
                String::from_utf8_lossy(kind),
                String::from_utf8_lossy(part_key),
            );
            let Some(op) = self.operation(&kind, &part_key)? else {
                problems.push(format!("stale {text:?}: no such operation"));
                continue;
            };
            let names_whole = op
                .facts
                .iter()
                .any(|(_, fact)| matches!(fact, FactValue::Text(t) if t.as_bytes() == whole_key));
            if !names_whole {
                problems.push(format!("stale {text:?}: no fact of it names that whole"));
            } else if index_value(&op) != value.as_ref() {
                problems.push(format!("outdated {text:?}"));
            }
        }
        Ok(problems)
    }
}

/// Writes `after` (with where its webhooks' `bodies` are in the log) and its index entries,
/// and removes the entries of `before` (its state before this write, if it existed) that no
/// longer apply. The one place that knows which index entries an operation has. `parts`: the
/// catalog in effect, which says which operations are parts of which (`None` writes no `B`
/// entry: what [`Store::check_indexes`] compares without a catalog).
pub(crate) fn put_operation(
    writes: &mut Writes,
    dated: Dated<'_>,
    parts: Option<&Catalog>,
    before: Option<&Operation>,
    after: &Operation,
    bodies: &[(u64, PayloadRef)],
) {
    // Dated from its history: worked out once.
    let after_since = since_entry(dated, after);
    let counted_as_before = before.is_some_and(|b| {
        (b.kind.as_str(), b.phase, b.status.as_str())
            == (after.kind.as_str(), after.phase, after.status.as_str())
    });
    if !counted_as_before {
        if let Some(before) = before {
            writes.add_count(count_key(before), -1);
        }
        writes.add_count(count_key(after), 1);
    }
    let before_since = before.and_then(|b| since_entry(dated, b));
    if let Some(before) = before
        && before.status != after.status
    {
        delete_status_entry(writes, before);
    }
    // Written only when it moves: an entry that stays keeps its value (the sequence of the
    // event that said it became overdue, see `crate::store::due`).
    if before_since != after_since {
        if let Some(was) = before_since {
            writes.delete(was);
        }
        if let Some(since) = after_since {
            writes.put(since, &[][..]);
        }
    }
    let (kind, key) = (after.kind.as_str(), after.key.as_str());
    let indexed = index_value(after);
    if let Some(catalog) = parts {
        let whole_after = after.part_of(catalog);
        if let Some(before) = before
            && let Some(was) = before.part_of(catalog)
            && Some(was) != whole_after
        {
            writes.delete(part_key(was, before));
        }
        // Written at every change, as the status index's entry is: its value is the part as
        // it is now.
        if let Some(whole) = whole_after {
            writes.put(part_key(whole, after), indexed.clone());
        }
    }
    writes.put(
        Key::StatusIndex {
            status: &after.status,
            kind,
            key,
        },
        indexed,
    );
    writes.put(
        Key::Operation { kind, key },
        encode_operation(after, bodies),
    );
}

/// Removes an operation and its index entries.
pub(crate) fn delete_operation(
    writes: &mut Writes,
    dated: Dated<'_>,
    parts: Option<&Catalog>,
    before: &Operation,
) {
    if let Some(was) = parts.and_then(|catalog| before.part_of(catalog)) {
        writes.delete(part_key(was, before));
    }
    writes.add_count(count_key(before), -1);
    delete_status_entry(writes, before);
    if let Some(since) = since_entry(dated, before) {
        writes.delete(since);
    }
    writes.delete(Key::Operation {
        kind: &before.kind,
        key: &before.key,
    });
}

/// `op` as much as its index entries need: without its history, except the webhooks in its
/// current status, which say since when it holds it ([`status_since`]). What the writer keeps
/// of an operation's state before a batch.
pub(crate) fn as_indexed(op: &Operation) -> Operation {
    let mut indexed = op.without_history();
    indexed.history = op
        .history
        .iter()
        .filter(|e| e.status == op.status)
        .cloned()
        .collect();
    indexed
}

/// `part`'s entry in the `B` space under `whole`, (kind, key): where the catalog in effect
/// says it belongs ([`Operation::part_of`]).
fn part_key<'a>(whole: (&'a str, &'a str), part: &'a Operation) -> Key<'a> {
    Key::Part {
        whole_kind: whole.0,
        whole_key: whole.1,
        kind: &part.kind,
        key: &part.key,
    }
}

/// Which (kind, status) pairs the `D` space dates: those the catalog in effect has an
/// expectation for (see `crate::store::due`). Every other operation costs the index nothing.
pub(crate) type Dated<'a> = &'a dyn Fn(&str, &str) -> bool;

/// An operation's entry in the `D` space (by when it took its status), if it is still on its
/// way (only those can be overdue) in a status `dated` covers.
pub(crate) fn since_entry<'a>(dated: Dated<'_>, op: &'a Operation) -> Option<Key<'a>> {
    (can_be_overdue(op.phase) && dated(&op.kind, &op.status)).then(|| Key::StatusSince {
        kind: &op.kind,
        status: &op.status,
        since: status_since(op),
        key: &op.key,
    })
}

/// The counter an operation is counted in.
fn count_key(op: &Operation) -> Key<'_> {
    Key::Count {
        kind: &op.kind,
        phase: op.phase,
        status: &op.status,
    }
}

fn delete_status_entry(writes: &mut Writes, op: &Operation) {
    writes.delete(Key::StatusIndex {
        status: &op.status,
        kind: &op.kind,
        key: &op.key,
    });
}

/// The value of an index entry: the operation without its history, so that a page of a
/// list is one range scan, with no lookup per operation.
pub(crate) fn index_value(op: &Operation) -> Vec<u8> {
    encode(&op.without_history())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::decode;
    use crate::store::record::tests::sample_operation;

    #[test]
    fn an_index_value_decodes_as_the_operation_without_history() {
        let op = sample_operation();
        assert!(!op.history.is_empty());
        let decoded: Operation = decode(&index_value(&op), "test").unwrap();
        assert_eq!(
            decoded,
            Operation {
                history: Vec::new(),
                ..op
            }
        );
    }
}
