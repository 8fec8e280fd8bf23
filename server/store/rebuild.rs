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

use super::index::{delete_operation, put_operation};
use super::log::{Entry, Record, RecordHeader};
use super::{Key, Meta, Store, StoreError, Writes, failpoint, view};
use crate::domain::catalog::Catalog;
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::{Normalized, normalize, normalize_with_facts};

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

/// Rebuilds `store` under `catalog`. See the module docs.
pub fn rebuild(store: &Store, catalog: &Catalog) -> Result<RebuildReport, StoreError> {
    // The view first catches up with the log (a crash may have left it behind).
    store.replay(catalog)?;
    let mut report = promote_quarantined(store, catalog)?;

    let mut old: BTreeMap<(String, String), Operation> = BTreeMap::new();
    let mut summaries: HashMap<u64, (String, String, EventSummary)> = HashMap::new();
    for op in store.operations() {
        let op = op?;
        for s in &op.history {
            summaries.insert(s.sequence, (op.kind.clone(), op.key.clone(), s.clone()));
        }
        old.insert((op.kind.clone(), op.key.clone()), op);
    }

    let mut groups: BTreeMap<(String, String), Vec<EventSummary>> = BTreeMap::new();
    for item in store.event_entries() {
        let (sequence, entry) = item?;
        let stored = summaries.remove(&sequence);
        let raw = store.raw_payload(&entry)?;
        match normalize_with_facts(catalog, &raw) {
            Ok((Normalized::Event(envelope), facts)) => {
                report.events_from_log += 1;
                let summary = EventSummary::new(&envelope, sequence, entry.received_at, facts);
                groups
                    .entry((envelope.kind, envelope.key))
                    .or_default()
                    .push(summary);
            }
            // The current catalog no longer reads it: keep what was derived when it arrived.
            _ => {
                if let Some((kind, key, summary)) = stored {
                    groups.entry((kind, key)).or_default().push(summary);
                }
            }
        }
    }
    // Whatever is left was compacted out of the log: its summary is all there is.
    for (kind, key, summary) in summaries.into_values() {
        groups.entry((kind, key)).or_default().push(summary);
    }

    let reconciler = Reconciler::new(catalog);
    let mut writes = Writes::default();
    let mut new_keys = std::collections::BTreeSet::new();
    for ((kind, key), events) in groups {
        let Some(op) = reconciler.reconcile(&kind, &key, events) else {
            continue;
        };
        let op_key = (kind, key);
        let before = old.get(&op_key);
        if before != Some(&op) {
            report.operations_changed += 1;
            put_operation(&mut writes, before, &op);
        }
        new_keys.insert(op_key);
    }
    for (op_key, before) in &old {
        if !new_keys.contains(op_key) {
            report.operations_changed += 1;
            delete_operation(&mut writes, before);
        }
    }
    report.operations = new_keys.len();
    // In the same atomic batch as the operations: either both, or a start rebuilds again.
    writes.put(
        Key::Meta(Meta::CatalogFingerprint),
        &catalog.fingerprint()[..],
    );
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
