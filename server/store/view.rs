//! The view: sled, materialized from the log. [`apply`] turns a run of log records into one
//! atomic sled batch: the quarantine, every touched operation with its index entries and
//! where its webhooks' bodies are, a seek point every [`SEEK_EVERY`] sequences, the
//! counters, and `applied_through`, the last LSN applied. The change each record made goes
//! to the recent window only: readers further behind work it out from the log
//! ([`Store::changes_after`]).
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
use super::flow::put_flow;
use super::index::{as_indexed, put_operation};
use super::log::{Entry, PayloadRef, Record};
use super::record::{Bodies, encode};
use super::{
    Change, EventRef, Key, Meta, Prior, QuarantineEntry, SEEK_EVERY, SeekPoint, Store, StoreError,
    Writes,
};
use crate::domain::catalog::Catalog;
use crate::domain::flow::FlowMarks;
use crate::domain::overdue::OverdueMark;
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::Facts;
use crate::domain::webhook::WebhookEnvelope;

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
    preread: HashMap<(String, String), Option<(Operation, Bodies)>>,
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
    /// index entries need, [`as_indexed`]), after, and where their webhooks' bodies are.
    operations: HashMap<(String, String), Touched>,
    /// Operations read before the batch, not read again ([`apply_read`]).
    preread: HashMap<(String, String), Option<(Operation, Bodies)>>,
    changes: AppliedChanges,
}

/// An operation a batch touched.
struct Touched {
    /// As its index entries were before (see [`as_indexed`]).
    before: Option<Operation>,
    /// Its flow's marks as stored before (`None`: not stored).
    flow: Option<FlowMarks>,
    /// As it is now.
    after: Operation,
    /// Where its webhooks' bodies are in the log.
    bodies: Bodies,
}

impl Batch<'_> {
    /// Writes every touched operation with its index entries, and takes the state written as
    /// the state before whatever follows in the batch. Done at the end, and before an overdue
    /// event, whose own writes to the indexes must come after the operation's.
    fn settle(&mut self) {
        let catalog = self.catalog;
        let dated = |kind: &str, status: &str| catalog.expectation(kind, status).is_some();
        for op in self.operations.values_mut() {
            put_operation(
                &mut self.writes,
                &dated,
                Some(catalog),
                op.before.as_ref(),
                &op.after,
                &op.bodies,
            );
            put_due(
                &mut self.writes,
                self.catalog,
                op.before.as_ref(),
                &op.after,
            );
            if self.store.flow_on() {
                let marks = FlowMarks::of(&op.after);
                put_flow(
                    &mut self.writes,
                    self.store.flow_seen(),
                    &op.after.kind,
                    op.flow.as_ref(),
                    Some(&marks),
                );
                op.flow = Some(marks);
            }
            op.before = Some(as_indexed(&op.after));
        }
    }

    /// Keeps the change at `sequence` for the recent window, and writes a seek point when
    /// the sequence is due one: the same for a webhook and for an overdue event.
    fn record(&mut self, sequence: u64, at: PayloadRef, received_at: i64, change: Change) {
        if sequence.is_multiple_of(SEEK_EVERY) {
            self.writes.put(
                Key::SeekPoint(sequence),
                encode(&SeekPoint { at, received_at }),
            );
        }
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
        // The operation as this batch left it, else as stored: an overdue event never changes it.
        let op_key = (mark.kind.clone(), mark.key.clone());
        let stored;
        let operation = match self.operations.get(&op_key) {
            Some(touched) => &touched.after,
            None => {
                stored = self
                    .store
                    .operation(&mark.kind, &mark.key)?
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: "events",
                        reason: format!(
                            "the overdue event at sequence {sequence} names {}/{}, which is not stored",
                            mark.kind, mark.key
                        ),
                    })?;
                &stored
            }
        };
        let change = Change::overdue(operation, &mark.status, mark.since, due);
        said_overdue(&mut self.writes, &mark, due, sequence);
        self.record(sequence, at, received_at, change);
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
        let (before, flow, current, mut bodies) = match self.operations.remove(&op_key) {
            Some(touched) => (
                touched.before,
                touched.flow,
                Some(touched.after),
                touched.bodies,
            ),
            None => {
                let stored = match self.preread.remove(&op_key) {
                    Some(read) => read,
                    None => self.store.stored_operation(&envelope.kind, &envelope.key)?,
                };
                match stored {
                    Some((op, bodies)) => (
                        Some(as_indexed(&op)),
                        self.store.flow_on().then(|| FlowMarks::of(&op)),
                        Some(op),
                        bodies,
                    ),
                    None => (None, None, None, Vec::new()),
                }
            }
        };
        // Sequences grow: the list stays in order.
        bodies.push((sequence, at));
        let facts = match known_facts {
            Some(facts) => facts.clone(),
            None => crate::domain::webhook::facts(self.catalog, &envelope.kind, raw),
        };
        let summary = EventSummary::new(envelope, sequence, received_at, facts);
        let prior = current.as_ref().map(Prior::of);
        let after = self
            .reconciler
            .apply(current, &envelope.kind, &envelope.key, summary);
        let change = Change::between(prior, &after);
        self.record(sequence, at, received_at, change);
        tracing::info!(
            sequence,
            kind = %after.kind,
            key = %after.key,
            status = %after.status,
            webhook_status = %envelope.status,
            "webhook stored"
        );
        self.operations.insert(
            op_key,
            Touched {
                before,
                flow,
                after,
                bodies,
            },
        );
        Ok(())
    }
}
