//! The view: sled, materialized from the log. [`apply`] turns a run of log records into one
//! atomic sled batch: the event index, change records, deduplication, quarantine, every
//! touched operation with its index entries, the counters, and `applied_through`, the last
//! LSN applied.
//!
//! It is the one path from the log to sled: the writer applies each batch right after the
//! log has it durably, replay applies what the log holds past `applied_through` at start,
//! and rebuild applies the records it appends. Because `applied_through` travels in the same
//! atomic batch as the changes, a record is applied exactly once, whatever crashes in
//! between: sled may lose unflushed batches (they are replayed), never half of one.
//!
//! Applying does not flush: sled writes its state out on its own interval
//! ([`CHECKPOINT_INTERVAL_MS`](super::CHECKPOINT_INTERVAL_MS)), and the log covers the rest.

use std::collections::HashMap;
use std::sync::Arc;

use super::due::{put_due, said_overdue};
use super::index::{as_indexed, put_operation};
use super::log::{Entry, PayloadRef, Record};
use super::record::{StoredEvent, encode};
use super::{Change, EventEntry, EventRef, Key, Meta, QuarantineEntry, Store, StoreError, Writes};
use crate::domain::catalog::Catalog;
use crate::domain::overdue::{Overdue, OverdueMark};
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::Facts;
use crate::domain::webhook::{EventId, WebhookEnvelope};

/// The change records one application produced, for the recent-changes window.
pub(crate) type AppliedChanges = Vec<(u64, Arc<Change>)>;

/// Applies `records` (in LSN order, after the view's `applied_through`), whose payloads are
/// at `refs`, as one atomic batch. Returns the change records, in sequence order.
pub(crate) fn apply(
    store: &Store,
    catalog: &Catalog,
    records: &[Record],
    refs: &[PayloadRef],
) -> Result<AppliedChanges, StoreError> {
    apply_read(store, catalog, records, refs, HashMap::new())
}

/// [`apply`], with operations the caller already read from the view as it is (`None`: not
/// stored), by (kind, key): the writer's plan read them to deduplicate, and they are not
/// read again.
pub(crate) fn apply_read(
    store: &Store,
    catalog: &Catalog,
    records: &[Record],
    refs: &[PayloadRef],
    preread: HashMap<(String, String), Option<Operation>>,
) -> Result<AppliedChanges, StoreError> {
    let Some(last) = records.last() else {
        return Ok(Vec::new());
    };
    let mut batch = Batch {
        store,
        reconciler: Reconciler::new(catalog),
        catalog,
        writes: Writes::default(),
        operations: HashMap::new(),
        preread,
        changes: Vec::new(),
    };
    let mut next_sequence = None;
    let mut next_quarantine = None;
    for (record, at) in records.iter().zip(refs) {
        let received_at = record.header.received_at;
        match &record.header.entry {
            Entry::Event { sequence, envelope }
            | Entry::Promote {
                sequence, envelope, ..
            } => {
                if let Entry::Promote { id, .. } = &record.header.entry {
                    // It leaves the quarantine, and the content-hash index that only the
                    // quarantine keeps: as an event, its operation's history finds it.
                    batch.writes.delete(Key::Quarantine(*id));
                    batch.writes.delete(Key::EventId(&envelope.event_id));
                }
                batch.event(
                    *sequence,
                    envelope,
                    *at,
                    received_at,
                    &record.raw,
                    record.facts.as_ref(),
                )?;
                next_sequence = Some(sequence + 1);
            }
            Entry::Overdue {
                sequence,
                kind,
                key,
                status,
                since,
                due,
            } => {
                let mark = OverdueMark {
                    kind: kind.clone(),
                    key: key.clone(),
                    status: status.clone(),
                    since: *since,
                };
                batch.overdue(*sequence, mark, *due, *at, received_at)?;
                next_sequence = Some(sequence + 1);
            }
            Entry::Quarantine {
                id,
                event_id,
                reason,
            } => {
                let entry = QuarantineEntry {
                    event_id: *event_id,
                    received_at,
                    reason: reason.clone(),
                    raw: record.raw.to_vec(),
                };
                batch.writes.put(Key::Quarantine(*id), encode(&entry));
                batch
                    .writes
                    .put(Key::EventId(event_id), encode(&EventRef::Quarantine(*id)));
                tracing::warn!(quarantine_id = id, reason = %reason, "webhook quarantined");
                next_quarantine = Some(id + 1);
            }
        }
    }
    batch.settle();
    let Batch {
        writes, changes, ..
    } = batch;
    let mut writes = writes;
    if let Some(next) = next_sequence {
        writes.put(Key::Meta(Meta::NextSequence), next.to_be_bytes().to_vec());
    }
    if let Some(next) = next_quarantine {
        writes.put(Key::Meta(Meta::NextQuarantine), next.to_be_bytes().to_vec());
    }
    writes.put(
        Key::Meta(Meta::AppliedThrough),
        last.header.lsn.to_be_bytes().to_vec(),
    );
    store.apply(writes)?;
    Ok(changes)
}

/// One application in progress.
struct Batch<'a> {
    store: &'a Store,
    reconciler: Reconciler<'a>,
    catalog: &'a Catalog,
    writes: Writes,
    /// Touched operations by (kind, key): their state before the batch (as much as its
    /// index entries need, [`as_indexed`]) and after.
    operations: HashMap<(String, String), (Option<Operation>, Operation)>,
    /// Operations read before the batch, not read again ([`apply_read`]).
    preread: HashMap<(String, String), Option<Operation>>,
    changes: AppliedChanges,
}

impl Batch<'_> {
    /// Writes every touched operation with its index entries, and takes the state written as
    /// the state before whatever follows in the batch. Done at the end, and before an overdue
    /// event, whose own writes to the indexes must come after the operation's.
    fn settle(&mut self) {
        let catalog = self.catalog;
        let dated = |kind: &str, status: &str| catalog.expectation(kind, status).is_some();
        for (before, after) in self.operations.values_mut() {
            put_operation(&mut self.writes, &dated, before.as_ref(), after);
            put_due(&mut self.writes, self.catalog, before.as_ref(), after);
            *before = Some(as_indexed(after));
        }
    }

    /// Writes the event entry and change record at `sequence` (the `L` space, what lagging
    /// watchers read) and keeps the change for the recent window: the same for a webhook and
    /// for an overdue event.
    fn record(&mut self, sequence: u64, entry: EventEntry, change: Change) {
        self.writes.put(
            Key::Event(sequence),
            encode(&StoredEvent {
                entry,
                change: &change,
            }),
        );
        self.changes.push((sequence, Arc::new(change)));
    }

    /// The moment operation `mark` became overdue, recorded at `sequence`: no webhook, and
    /// the operation does not change; its watchers hear it (see [`crate::store::due`]).
    fn overdue(
        &mut self,
        sequence: u64,
        mark: OverdueMark,
        due: i64,
        at: PayloadRef,
        received_at: i64,
    ) -> Result<(), StoreError> {
        self.settle();
        let op_key = (mark.kind.clone(), mark.key.clone());
        let operation = match self.operations.get(&op_key) {
            Some((_, current)) => current.without_history(),
            None => self
                .store
                .operation(&mark.kind, &mark.key)?
                .ok_or_else(|| StoreError::Corrupt {
                    tree: "events",
                    reason: format!(
                        "the overdue event at sequence {sequence} names {}/{}, which is not stored",
                        mark.kind, mark.key
                    ),
                })?
                .without_history(),
        };
        said_overdue(&mut self.writes, &mark, due, sequence);
        let change = Change {
            previous_status: Some(operation.status.clone()),
            status_changed: false,
            overdue: Some(Overdue {
                status: mark.status.clone(),
                since: mark.since,
                expected_within: due.saturating_sub(mark.since),
                due,
            }),
            operation,
            milestones_reached: Vec::new(),
        };
        let entry = EventEntry {
            event_id: overdue_event_id(&mark),
            kind: mark.kind.clone(),
            key: mark.key.clone(),
            received_at,
            payload: at,
        };
        self.record(sequence, entry, change);
        tracing::info!(
            sequence,
            kind = %mark.kind,
            key = %mark.key,
            status = %mark.status,
            due,
            "operation overdue"
        );
        Ok(())
    }

    fn event(
        &mut self,
        sequence: u64,
        envelope: &WebhookEnvelope,
        at: PayloadRef,
        received_at: i64,
        raw: &[u8],
        known_facts: Option<&Facts>,
    ) -> Result<(), StoreError> {
        let op_key = (envelope.kind.clone(), envelope.key.clone());
        let (before, current) = match self.operations.remove(&op_key) {
            Some((before, current)) => (before, Some(current)),
            None => {
                let stored = match self.preread.remove(&op_key) {
                    Some(read) => read,
                    None => self.store.operation(&envelope.kind, &envelope.key)?,
                };
                (stored.as_ref().map(as_indexed), stored)
            }
        };
        let previous = current.as_ref().map(|op| (op.status.clone(), op.phase));
        let reached_before: Vec<String> = current
            .iter()
            .flat_map(|op| op.milestones.iter().map(|m| m.name.clone()))
            .collect();
        let facts = match known_facts {
            Some(facts) => facts.clone(),
            None => crate::domain::webhook::facts(self.catalog, &envelope.kind, raw),
        };
        let summary = EventSummary::new(envelope, sequence, received_at, facts);
        let after = self
            .reconciler
            .apply(current, &envelope.kind, &envelope.key, summary);
        let change = Change {
            status_changed: previous
                .as_ref()
                .is_none_or(|(status, phase)| *status != after.status || *phase != after.phase),
            previous_status: previous.map(|(status, _)| status),
            operation: after.without_history(),
            milestones_reached: after
                .milestones
                .iter()
                .map(|m| m.name.clone())
                .filter(|name| !reached_before.contains(name))
                .collect(),
            overdue: None,
        };
        let entry = EventEntry {
            event_id: envelope.event_id,
            kind: envelope.kind.clone(),
            key: envelope.key.clone(),
            received_at,
            payload: at,
        };
        self.record(sequence, entry, change);
        tracing::info!(
            sequence,
            kind = %after.kind,
            key = %after.key,
            status = %after.status,
            webhook_status = %envelope.status,
            "webhook stored"
        );
        self.operations.insert(op_key, (before, after));
        Ok(())
    }
}

/// The identity of an overdue event: a hash of what it says, never a webhook's (those hash
/// JSON objects), so that its entry names something distinct.
fn overdue_event_id(mark: &OverdueMark) -> EventId {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [&mark.kind, &mark.key, &mark.status] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(mark.since.to_be_bytes());
    EventId(hash.finalize().into())
}
