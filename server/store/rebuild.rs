//! Rebuild: recompute every operation and index from the event log and the quarantine under
//! the current catalog (`qistatus-server rebuild`, with the server stopped).
//!
//! Why: the catalog is data and changes without a release. After a change, operations whose
//! statuses are now classified differently must be re-reconciled, and quarantined webhooks
//! that the new catalog can read must join their operations.
//!
//! Guarantees:
//! - quarantined webhooks that now normalize become events: a `Promote` record each in the
//!   log, with a new sequence number (visible to watchers) and their original receive time;
//! - every operation is then recomputed from its webhooks: those still in the log are
//!   normalized again under the current catalog; those compacted away by retention keep
//!   their stored summary;
//! - the operations tree and both indexes are rewritten in one atomic batch;
//! - rebuilding is idempotent, and on a store written by the live server it changes nothing:
//!   the live writer and rebuild reconcile with the same pure function.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::flow::put_flow;
use super::index::{delete_operation, put_operation};
use super::log::{Entry, PayloadRef, Record, RecordHeader};
use super::{Key, Meta, Store, StoreError, Writes, failpoint, view};
use crate::domain::catalog::Catalog;
use crate::domain::flow::FlowMarks;
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::{Normalized, normalize, normalize_with_facts};

/// An operation's (kind, key).
type OpKey = (String, String);

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Quarantined webhooks that became events.
    pub promoted: usize,
    /// Webhooks still in the quarantine.
    pub still_quarantined: usize,
    /// Events whose summary came from the log (the rest were compacted).
    pub events_from_log: usize,
    /// Operations after the rebuild.
    pub operations: usize,
    /// Operations whose stored state changed.
    pub operations_changed: usize,
}

/// Rebuilds `store` under `catalog`, with nothing else writing (the server stopped, or at
/// its start). See the module docs.
pub fn rebuild(store: &Store, catalog: &Catalog) -> Result<RebuildReport, StoreError> {
    // The view first catches up with the log (a crash may have left it behind).
    store.replay(catalog)?;
    let plan = plan(store, catalog)?;
    finish(store, catalog, plan)
}

/// The bulk of a rebuild, computed while the writer goes on storing webhooks: every
/// operation recomputed from the webhooks stored up to a sequence (`through`). The writer
/// then [`finish`]es it between two batches, redoing only the operations that webhooks
/// after `through` touched.
///
/// Why this holds: only the writer changes operations, and a webhook's log record is
/// applied to its operation in one atomic batch with `applied_through`. So an operation that no webhook after
/// `through` touched is, when the plan is finished, exactly what the plan read.
#[derive(Debug)]
pub struct RebuildPlan {
    /// The last sequence the plan read.
    through: u64,
    /// The catalog it was computed under.
    fingerprint: [u8; 32],
    /// Every webhook's summary up to `through`, under the new catalog, by operation.
    groups: BTreeMap<OpKey, Vec<EventSummary>>,
    /// The operations as the plan read them.
    old: BTreeMap<OpKey, Operation>,
    /// The operations recomputed from `groups`.
    new: BTreeMap<OpKey, Operation>,
    /// Summaries that came from the log (the rest were compacted).
    events_from_log: usize,
    /// Where each webhook still in the log has its body, by sequence: an operation's bodies
    /// follow its webhooks wherever the catalog now attributes them.
    bodies: HashMap<u64, PayloadRef>,
}

/// Computes a [`RebuildPlan`] of `store` under `catalog`. Reads only: safe beside the writer.
pub fn plan(store: &Store, catalog: &Catalog) -> Result<RebuildPlan, StoreError> {
    let through = store.last_sequence()?;
    failpoint::pause_at("pause-in-rebuild-plan");
    let mut old: BTreeMap<OpKey, Operation> = BTreeMap::new();
    let mut summaries: HashMap<u64, (String, String, EventSummary)> = HashMap::new();
    for op in store.operations() {
        let op = op?;
        // Webhooks after `through` are the finish's (their operation is then read again).
        for s in op.history.iter().filter(|s| s.sequence <= through) {
            summaries.insert(s.sequence, (op.kind.clone(), op.key.clone(), s.clone()));
        }
        old.insert((op.kind.clone(), op.key.clone()), op);
    }

    let mut groups: BTreeMap<OpKey, Vec<EventSummary>> = BTreeMap::new();
    let mut bodies = HashMap::new();
    let mut events_from_log = 0;
    store.logged_after(store.compacted_through()?, &mut |sequence, record, at| {
        if sequence > through {
            return Ok(false);
        }
        if !is_webhook(&record) {
            return Ok(true);
        }
        intact(&record, sequence)?;
        bodies.insert(sequence, at);
        let stored = summaries.remove(&sequence);
        match summarize(catalog, sequence, &record) {
            Some((op_key, summary)) => {
                events_from_log += 1;
                groups.entry(op_key).or_default().push(summary);
            }
            // The current catalog no longer reads it: keep what was derived when it arrived.
            None => {
                if let Some((kind, key, summary)) = stored {
                    groups.entry((kind, key)).or_default().push(summary);
                }
            }
        }
        Ok(true)
    })?;
    // Whatever is left was compacted out of the log: its summary is all there is.
    for (kind, key, summary) in summaries.into_values() {
        groups.entry((kind, key)).or_default().push(summary);
    }
    let reconciler = Reconciler::new(catalog);
    let new = groups
        .iter()
        .filter_map(|((kind, key), events)| {
            let op = reconciler.reconcile(kind, key, events.clone())?;
            Some(((kind.clone(), key.clone()), op))
        })
        .collect();
    Ok(RebuildPlan {
        through,
        fingerprint: catalog.fingerprint(),
        groups,
        old,
        new,
        events_from_log,
        bodies,
    })
}

/// Refuses a record whose body no longer matches the content identifier kept for it (altered
/// on disk, its checksum recomputed): a rebuild never adopts what it says.
fn intact(record: &Record, sequence: u64) -> Result<(), StoreError> {
    match record.header.entry.event_id() {
        Some(id) if !crate::domain::webhook::body_matches(&record.raw, id) => {
            Err(crate::store::log::LogError::PayloadAltered { sequence }.into())
        }
        _ => Ok(()),
    }
}

/// Whether a log record is a webhook's (an event or a promotion), not an overdue event's or
/// the quarantine's.
fn is_webhook(record: &Record) -> bool {
    matches!(
        record.header.entry,
        Entry::Event { .. } | Entry::Promote { .. }
    )
}

/// The webhook of `record`, at `sequence`, read under `catalog`: its operation and
/// summary, or `None` when the catalog does not read it.
fn summarize(catalog: &Catalog, sequence: u64, record: &Record) -> Option<(OpKey, EventSummary)> {
    match normalize_with_facts(catalog, &record.raw) {
        Ok((Normalized::Event(envelope), facts)) => {
            let summary = EventSummary::new(&envelope, sequence, record.header.received_at, facts);
            Some(((envelope.kind, envelope.key), summary))
        }
        _ => None,
    }
}

/// Finishes `plan` under `catalog` (the one it was computed under), with nothing else
/// writing: promotes the quarantined webhooks the catalog can now read, redoes the
/// operations that webhooks after the plan's sequence touched, and writes every changed
/// operation, and the catalog's fingerprint, in one atomic batch. The work is the
/// promotions, the webhooks stored since the plan began, and the changed operations.
pub fn finish(
    store: &Store,
    catalog: &Catalog,
    plan: RebuildPlan,
) -> Result<RebuildReport, StoreError> {
    assert_eq!(
        plan.fingerprint,
        catalog.fingerprint(),
        "a plan is finished under the catalog it was computed under"
    );
    let RebuildPlan {
        through,
        mut groups,
        old,
        mut new,
        events_from_log,
        mut bodies,
        ..
    } = plan;
    let mut report = promote_quarantined(store, catalog)?;
    report.events_from_log = events_from_log;

    // The webhooks after `through` (promotions included): where the old catalog put them,
    // and where the new one does. Both operations are redone.
    let mut touched: BTreeMap<OpKey, Option<Operation>> = BTreeMap::new();
    let mut after_through = Vec::new();
    store.logged_after(through, &mut |sequence, record, at| {
        if is_webhook(&record) {
            bodies.insert(sequence, at);
            after_through.push((sequence, record));
        }
        Ok(true)
    })?;
    for (sequence, record) in after_through {
        // Written by the writer (or promoted above) under the catalog in effect then: the
        // operation its envelope names holds it.
        let was = match &record.header.entry {
            Entry::Event { envelope, .. } | Entry::Promote { envelope, .. } => {
                (envelope.kind.clone(), envelope.key.clone())
            }
            _ => continue,
        };
        report.events_from_log += 1;
        intact(&record, sequence)?;
        let summary = match summarize(catalog, sequence, &record) {
            Some((op_key, summary)) => Some((op_key, summary)),
            // Not read under the new catalog: its summary stays where it was.
            None => store
                .operation(&was.0, &was.1)?
                .and_then(|op| op.history.into_iter().find(|s| s.sequence == sequence))
                .map(|summary| (was.clone(), summary)),
        };
        touched.insert(was, None);
        if let Some((op_key, summary)) = summary {
            groups.entry(op_key.clone()).or_default().push(summary);
            touched.insert(op_key, None);
        }
    }
    let reconciler = Reconciler::new(catalog);
    for (op_key, current) in touched.iter_mut() {
        *current = store.operation(&op_key.0, &op_key.1)?;
        match groups.get(op_key) {
            Some(events) => match reconciler.reconcile(&op_key.0, &op_key.1, events.clone()) {
                Some(op) => new.insert(op_key.clone(), op),
                None => new.remove(op_key),
            },
            None => new.remove(op_key),
        };
    }

    let mut writes = Writes::default();
    let dated = |kind: &str, status: &str| catalog.expectation(kind, status).is_some();
    let before = |op_key: &OpKey| match touched.get(op_key) {
        Some(current) => current.as_ref(),
        None => old.get(op_key),
    };
    for (op_key, op) in &new {
        let was = before(op_key);
        if was != Some(op) {
            report.operations_changed += 1;
            // The history is in event-time order; bodies are kept by sequence.
            let mut op_bodies: Vec<_> = op
                .history
                .iter()
                .filter_map(|e| Some((e.sequence, *bodies.get(&e.sequence)?)))
                .collect();
            op_bodies.sort_unstable_by_key(|(sequence, _)| *sequence);
            put_operation(&mut writes, &dated, Some(catalog), was, op, &op_bodies);
            if store.flow_on() {
                put_flow(
                    &mut writes,
                    store.flow_seen(),
                    &op.kind,
                    was.map(FlowMarks::of).as_ref(),
                    Some(&FlowMarks::of(op)),
                );
            }
        }
    }
    let gone = old.keys().chain(touched.keys());
    let mut deleted = std::collections::BTreeSet::new();
    for op_key in gone {
        if !new.contains_key(op_key)
            && deleted.insert(op_key)
            && let Some(was) = before(op_key)
        {
            report.operations_changed += 1;
            delete_operation(&mut writes, &dated, Some(catalog), was);
            if store.flow_on() {
                put_flow(
                    &mut writes,
                    store.flow_seen(),
                    &was.kind,
                    Some(&FlowMarks::of(was)),
                    None,
                );
            }
        }
    }
    report.operations = new.len();
    // In the same atomic batch as the operations: either both, or a start rebuilds again.
    writes.put(
        Key::Meta(Meta::CatalogFingerprint),
        &catalog.fingerprint()[..],
    );
    // Operations may have moved in and out of statuses with expectations: the due index is
    // written again under this catalog before the writer next runs (`Store::ensure_due`).
    writes.delete(Key::Meta(Meta::DueCatalog));
    failpoint::abort_at("abort-before-rebuild-commit");
    store.apply(writes)?;
    store.flush()?;
    Ok(report)
}

/// At start: rebuilds `store` under `catalog` if its operations were last built under
/// another one (a reload that a crash cut short, or `--catalog` changed while stopped), and
/// says so. A store with no recorded catalog (new, or written before it was recorded) is
/// rebuilt once if it holds webhooks. Returns the rebuild's report, if one ran.
pub fn rebuild_if_the_catalog_changed(
    store: &Store,
    catalog: &Catalog,
) -> Result<Option<RebuildReport>, StoreError> {
    let recorded = store.get(Key::Meta(Meta::CatalogFingerprint))?;
    if recorded.as_deref() == Some(&catalog.fingerprint()[..]) {
        return Ok(None);
    }
    if recorded.is_none() && !store.holds_webhooks()? {
        let mut writes = Writes::default();
        writes.put(
            Key::Meta(Meta::CatalogFingerprint),
            &catalog.fingerprint()[..],
        );
        store.apply(writes)?;
        return Ok(None);
    }
    tracing::warn!(
        "the operations were built under another catalog (a reload cut short, or --catalog \
         changed): rebuilding them under this one before serving"
    );
    let report = rebuild(store, catalog)?;
    tracing::info!(
        operations = report.operations,
        changed = report.operations_changed,
        promoted = report.promoted,
        "rebuilt under the current catalog"
    );
    Ok(Some(report))
}

/// Moves quarantined webhooks that `catalog` can now read into the event log: one
/// `Promote` record each, appended to the log and applied like any batch.
fn promote_quarantined(store: &Store, catalog: &Catalog) -> Result<RebuildReport, StoreError> {
    let mut report = RebuildReport::default();
    let mut counters = store.counters()?;
    let mut records = Vec::new();
    for item in store.quarantined() {
        let (id, entry) = item?;
        match normalize(catalog, &entry.raw) {
            Ok(Normalized::Event(envelope)) => {
                let sequence = counters.next_sequence;
                counters.next_sequence += 1;
                tracing::info!(quarantine_id = id, sequence, kind = %envelope.kind, key = %envelope.key, "quarantined webhook promoted");
                records.push(Record {
                    header: RecordHeader {
                        lsn: counters.next_lsn,
                        received_at: entry.received_at,
                        entry: Entry::Promote {
                            id,
                            sequence,
                            envelope,
                        },
                    },
                    raw: Bytes::from(entry.raw),
                    facts: None,
                });
                counters.next_lsn += 1;
                report.promoted += 1;
            }
            _ => report.still_quarantined += 1,
        }
    }
    if !records.is_empty() {
        let refs = store.log().append(&records)?;
        view::apply(store, catalog, &records, &refs)?;
    }
    Ok(report)
}
