//! The due index (`U`): every operation in a status the catalog has an expectation for, not
//! yet said to be overdue in it, by when it will be. The overdue clock reads the run that
//! fell due ([`Store::fallen_due`]), so finding the operations that just became overdue costs
//! what became due, never a scan of the store.
//!
//! # Exactly once per operation and status
//!
//! An operation's `U` entry is made when it takes a status with an expectation ([`put_due`],
//! in the same batch as the operation) and removed when it leaves it, or when the event that
//! says it became overdue is applied; that event also writes its sequence into the
//! operation's `D` entry. The writer records such an event only while the entry is still
//! there ([`Store::still_due`]), so a proposal made twice (two cluster nodes, or a clock
//! that proposes again after a restart) or late (the operation moved meanwhile) records
//! nothing. Replay after a crash applies the recorded events again at the same sequences,
//! and the batch that applied them is atomic with `applied_through`: none is lost or
//! repeated.
//!
//! # Under another catalog
//!
//! Due times depend on the catalog's expectations, so the index is written for one catalog
//! ([`Meta::DueCatalog`]): at start and after a reload under another one, [`Store::ensure_due`]
//! writes it again from the `D` space, leaving out the operations an event already said are
//! overdue in their status. The `D` space itself dates only the statuses the catalog expects
//! something of (none are built in), so a catalog without expectations costs no key per
//! change; `ensure_due` moves it along with the catalog too. A reload that shortens an expectation makes operations due at
//! once; one that lengthens it does not take back an event already sent.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::index::since_entry;
use super::keys::{since_bytes, since_from_bytes, status_since_prefix};
use super::record::{Record, decode, encode};
use super::{Key, Meta, SpaceId, StatusIndex, Store, StoreError, Writes};
use crate::domain::catalog::Catalog;
use crate::domain::overdue::{OverdueMark, can_be_overdue, status_since};
use crate::domain::reconcile::Operation;

/// When `op` falls overdue under `catalog`, if it can: on its way, in a status with an
/// expectation.
fn due_of(catalog: &Catalog, op: &Operation) -> Option<i64> {
    if !can_be_overdue(op.phase) {
        return None;
    }
    let expected = catalog.expectation(&op.kind, &op.status)?;
    Some(status_since(op).saturating_add(expected))
}

/// Moves `after`'s entry in the due index from where `before` (its state before this write,
/// as [`super::index::as_indexed`] keeps it) had it, if it moved. An entry that stays is not
/// written, so one an event removed stays removed.
pub(crate) fn put_due(
    writes: &mut Writes,
    catalog: &Catalog,
    before: Option<&Operation>,
    after: &Operation,
) {
    let entry = |op: &Operation| {
        due_of(catalog, op).map(|due| (due, due_value(status_since(op), &op.status)))
    };
    let was = before.and_then(entry);
    let now = entry(after);
    if was == now {
        return;
    }
    if let Some((due, _)) = was {
        writes.delete(Key::Due {
            due,
            kind: &after.kind,
            key: &after.key,
        });
    }
    if let Some((due, value)) = now {
        writes.put(
            Key::Due {
                due,
                kind: &after.kind,
                key: &after.key,
            },
            value,
        );
    }
}

/// The value of a due entry: since when the operation holds its status (8 bytes, as the
/// `D` space orders times), then the status.
fn due_value(since: i64, status: &str) -> Vec<u8> {
    let mut value = since_bytes(since).to_vec();
    value.extend_from_slice(status.as_bytes());
    value
}

/// A due entry read back: (due, kind, key) from its key, (since, status) from its value.
fn read_due(k: &[u8], v: &[u8]) -> Result<(i64, OverdueMark), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        tree: "due",
        reason: reason.into(),
    };
    let (due, rest) = k
        .split_at_checked(8)
        .ok_or_else(|| corrupt("a key shorter than its time"))?;
    let mut parts = rest.splitn(2, |b| *b == 0);
    let (Some(kind), Some(key)) = (parts.next(), parts.next()) else {
        return Err(corrupt("a key without its kind and key"));
    };
    let (since, status) = v
        .split_at_checked(8)
        .ok_or_else(|| corrupt("a value shorter than its time"))?;
    let time = |bytes: &[u8]| since_from_bytes(bytes.try_into().expect("split at 8 bytes"));
    Ok((
        time(due),
        OverdueMark {
            kind: String::from_utf8_lossy(kind).into_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            status: String::from_utf8_lossy(status).into_owned(),
            since: time(since),
        },
    ))
}

/// The writes that record the overdue event at `sequence` for `mark`, due at `due`: the
/// operation leaves the due index, and its `D` entry keeps the event's sequence.
pub(crate) fn said_overdue(writes: &mut Writes, mark: &OverdueMark, due: i64, sequence: u64) {
    writes.delete(Key::Due {
        due,
        kind: &mark.kind,
        key: &mark.key,
    });
    writes.put(
        Key::StatusSince {
            kind: &mark.kind,
            status: &mark.status,
            since: mark.since,
            key: &mark.key,
        },
        sequence.to_be_bytes().to_vec(),
    );
}

impl Store {
    /// Up to `limit` operations that fell due at `now` (ms) or before and were not yet said
    /// to be overdue, earliest due first: (due, mark).
    pub(crate) fn fallen_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OverdueMark)>, StoreError> {
        let end = match now.checked_add(1) {
            Some(next) => Bound::Excluded(since_bytes(next).to_vec()),
            None => Bound::Unbounded,
        };
        self.trees
            .due
            .range(Bound::Unbounded, end)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                read_due(&k, &v)
            })
            .collect()
    }

    /// When `mark` falls due under `catalog`, if it is at `at` (ms) and no event said so yet:
    /// the due index still holds the operation in that status since then. What the writer
    /// checks before it records an overdue event.
    pub(crate) fn still_due(
        &self,
        catalog: &Catalog,
        mark: &OverdueMark,
        at: i64,
    ) -> Result<Option<i64>, StoreError> {
        let Some(expected) = catalog.expectation(&mark.kind, &mark.status) else {
            return Ok(None);
        };
        let due = mark.since.saturating_add(expected);
        if due > at {
            return Ok(None);
        }
        let entry = self.get(Key::Due {
            due,
            kind: &mark.kind,
            key: &mark.key,
        })?;
        let held = entry.is_some_and(|v| *v == due_value(mark.since, &mark.status)[..]);
        Ok(held.then_some(due))
    }

    /// The (kind, status) pairs the `D` space dates now; `None` for a store written when it
    /// dated every operation on its way.
    pub(crate) fn dated_statuses(&self) -> Result<Option<BTreeSet<(String, String)>>, StoreError> {
        self.get(Key::Meta(Meta::DatedStatuses))?
            .map(|v| {
                decode::<Vec<(String, String)>>(&v, "meta").map(|pairs| pairs.into_iter().collect())
            })
            .transpose()
    }

    /// Puts the `D` and `U` spaces in line with `catalog`, unless they were written for it
    /// already: at start, and after a reload. Two steps, each one atomic batch:
    ///
    /// 1. `D` dates the statuses `catalog` expects something of: the runs of statuses it no
    ///    longer expects anything of are removed, those of newly expected statuses written
    ///    from the status index (their operations only), and the pairs dated are recorded.
    ///    The runs kept keep their values (which operations an event said are overdue).
    /// 2. `U` is written again from `D`: every dated operation not said to be overdue yet, by
    ///    when it falls due; then the catalog's fingerprint is recorded.
    ///
    /// A crash between the two leaves step 1 done and recorded: the next start does step 2.
    pub(crate) fn ensure_due(&self, catalog: &Catalog) -> Result<(), StoreError> {
        let fingerprint = catalog.fingerprint();
        if self.get(Key::Meta(Meta::DueCatalog))?.as_deref() == Some(&fingerprint[..]) {
            return Ok(());
        }
        let expectations = catalog.expectations();
        let wanted: BTreeSet<(String, String)> = expectations
            .iter()
            .map(|(kind, status, _)| ((*kind).to_owned(), (*status).to_owned()))
            .collect();
        let before = self.dated_statuses()?;
        if before.as_ref() != Some(&wanted) {
            let mut writes = Writes::default();
            // Runs no longer dated.
            for kv in self.trees.status_since.iter() {
                let (k, _) = kv?;
                let mut parts = k.splitn(3, |b| *b == 0);
                let (Some(kind), Some(status), Some(_)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(StoreError::Corrupt {
                        tree: "status_since",
                        reason: "an entry without its kind and status".into(),
                    });
                };
                let pair = (
                    String::from_utf8_lossy(kind).into_owned(),
                    String::from_utf8_lossy(status).into_owned(),
                );
                if !wanted.contains(&pair) {
                    writes.delete_raw(SpaceId::StatusSince, &k);
                }
            }
            // Runs newly dated, from the operations in those statuses.
            let mut dated = 0usize;
            // A store that recorded no pairs dated every operation on its way, with no event
            // yet said (the events came with the record): its wanted runs are written again.
            let kept = before.unwrap_or_default();
            for (kind, status) in wanted.difference(&kept) {
                for op in StatusIndex::new(self.clone()).all_in(kind, status)? {
                    let Some(op) = self.operation(&op.kind, &op.key)? else {
                        continue;
                    };
                    if let Some(entry) = since_entry(&|_: &str, _: &str| true, &op) {
                        writes.put(entry, &[][..]);
                        dated += 1;
                    }
                }
            }
            let pairs: Vec<(String, String)> = wanted.iter().cloned().collect();
            writes.put(Key::Meta(Meta::DatedStatuses), encode(&pairs));
            self.apply(writes)?;
            tracing::info!(
                statuses = pairs.len(),
                newly_dated = dated,
                "status-since index follows the catalog's expectations"
            );
            super::failpoint::abort_at("abort-between-due-steps");
        }
        let mut writes = Writes::default();
        for kv in self.trees.due.iter() {
            let (k, v) = kv?;
            let (due, mark) = read_due(&k, &v)?;
            writes.delete(Key::Due {
                due,
                kind: &mark.kind,
                key: &mark.key,
            });
        }
        let mut due = 0usize;
        for (kind, status, expected) in expectations {
            let prefix = status_since_prefix(kind, status);
            for kv in self.trees.status_since.scan_prefix(&prefix) {
                let (k, v) = kv?;
                if !v.is_empty() {
                    continue;
                }
                let Some((since, key)) = k[prefix.len()..].split_at_checked(8) else {
                    return Err(StoreError::Corrupt {
                        tree: "status_since",
                        reason: "an entry shorter than its time".into(),
                    });
                };
                let since = since_from_bytes(since.try_into().expect("split at 8 bytes"));
                writes.put(
                    Key::Due {
                        due: since.saturating_add(expected),
                        kind,
                        key: &String::from_utf8_lossy(key),
                    },
                    due_value(since, status),
                );
                due += 1;
            }
        }
        writes.put(Key::Meta(Meta::DueCatalog), &fingerprint[..]);
        self.apply(writes)?;
        tracing::info!(
            operations = due,
            "due index written for the catalog in effect"
        );
        Ok(())
    }
}

/// The (kind, status) pairs [`Meta::DatedStatuses`] records.
impl Record for Vec<(String, String)> {}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::webhook::normalize;
    use crate::store::view;
    use crate::store::writer::BatchPlan;

    fn catalog() -> Catalog {
        Catalog::builtin()
            .extended_with("[kinds.debt.expect]\nwaiting_signature = \"1h\"\n")
            .expect("a valid expectation")
    }

    /// Stores debt webhooks `(key, status, event time in ms)` received at `at`, as the writer
    /// does.
    fn store_webhooks(store: &Store, catalog: &Catalog, webhooks: &[(&str, &str, i64)], at: i64) {
        let mut plan = BatchPlan::new(store.counters().expect("counters"));
        for (key, status, time) in webhooks {
            let when = chrono::DateTime::from_timestamp_millis(*time).expect("a time");
            let raw = format!(
                r#"{{"webhook_type":"debt","key":"{key}","status":"{status}","event_datetime":"{}"}}"#,
                when.to_rfc3339()
            );
            let normalized = normalize(catalog, raw.as_bytes()).expect("a JSON object");
            plan.add(store, normalized, Bytes::from(raw), at, None)
                .expect("planned");
        }
        let refs = store.log().append(&plan.records).expect("appended");
        view::apply(store, catalog, &plan.records, &refs).expect("applied");
    }

    /// Records the overdue events of `marks` at `at`, as the writer does; returns how many.
    fn record(store: &Store, catalog: &Catalog, marks: &[OverdueMark], at: i64) -> usize {
        let mut plan = BatchPlan::new(store.counters().expect("counters"));
        for mark in marks {
            if let Some(due) = store.still_due(catalog, mark, at).expect("read") {
                plan.add_overdue(mark, due, at);
            }
        }
        let refs = store.log().append(&plan.records).expect("appended");
        view::apply(store, catalog, &plan.records, &refs).expect("applied");
        plan.records.len()
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn what_fell_due_is_read_alone_recorded_once_and_cleared_by_a_change() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store");
        let catalog = catalog();
        // As the writer does at its start.
        store.ensure_due(&catalog).unwrap();
        let t0 = 1_700_000_000_000;
        store_webhooks(
            &store,
            &catalog,
            &[
                ("early", "waiting_signature", t0),
                ("later", "waiting_signature", t0 + 2 * HOUR),
                // No expectation for its status: never due.
                ("other", "waiting_disbursement", t0),
            ],
            t0 + 2 * HOUR,
        );
        // Nothing before its time; the other spaces of the tree are never read as due.
        assert!(store.fallen_due(t0 + HOUR - 1, 10).unwrap().is_empty());
        let fallen = store.fallen_due(t0 + HOUR, 10).unwrap();
        assert_eq!(
            fallen,
            [(
                t0 + HOUR,
                OverdueMark {
                    kind: "debt".into(),
                    key: "early".into(),
                    status: "waiting_signature".into(),
                    since: t0,
                }
            )]
        );
        let marks: Vec<_> = fallen.into_iter().map(|(_, m)| m).collect();
        // Proposed before its time (a clock ahead), nothing is recorded.
        assert_eq!(record(&store, &catalog, &marks, t0 + HOUR - 1), 0);
        assert_eq!(record(&store, &catalog, &marks, t0 + HOUR), 1);
        // Proposed again (a second node, a restart): nothing more.
        assert_eq!(record(&store, &catalog, &marks, t0 + 5 * HOUR), 0);
        let head = store.last_sequence().unwrap();
        // Worked out from the log, the event is what the writer announced.
        let read = store.changes_after(&catalog, head - 1, head, 10).unwrap();
        assert_eq!(read.through, head);
        let [(sequence, change)] = &read.changes[..] else {
            panic!("the event is in the feed: {read:?}");
        };
        assert_eq!(*sequence, head);
        assert!(!change.status_changed);
        assert_eq!(change.previous_status.as_deref(), Some("waiting_signature"));
        assert_eq!(change.overdue.as_ref().map(|o| o.due), Some(t0 + HOUR));
        assert_eq!(change.operation.key, "early");
        assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());

        // Later, only the other one is due.
        let fallen = store.fallen_due(t0 + 10 * HOUR, 10).unwrap();
        let keys: Vec<_> = fallen.iter().map(|(_, m)| m.key.as_str()).collect();
        assert_eq!(keys, ["later"]);
        // It moves on before it is recorded: the proposal records nothing.
        store_webhooks(
            &store,
            &catalog,
            &[("later", "waiting_disbursement", t0 + 3 * HOUR)],
            t0 + 3 * HOUR,
        );
        let marks: Vec<_> = fallen.into_iter().map(|(_, m)| m).collect();
        assert_eq!(record(&store, &catalog, &marks, t0 + 10 * HOUR), 0);
        assert!(store.fallen_due(i64::MAX, 10).unwrap().is_empty());

        // Written again under the same catalog (a restart): the recorded one stays said.
        store
            .apply({
                let mut w = Writes::default();
                w.delete(Key::Meta(Meta::DueCatalog));
                w
            })
            .unwrap();
        store.ensure_due(&catalog).unwrap();
        assert!(store.fallen_due(i64::MAX, 10).unwrap().is_empty());
        // Under a catalog that expects `waiting_disbursement` too, "later" and "other" are due.
        let longer = catalog
            .clone()
            .extended_with("[kinds.debt.expect]\nwaiting_disbursement = \"1d\"\n")
            .unwrap();
        store.ensure_due(&longer).unwrap();
        let keys: Vec<_> = store
            .fallen_due(i64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.key)
            .collect();
        assert_eq!(keys, ["other", "later"]);
    }
}
