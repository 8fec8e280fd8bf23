//! Batch planning: what one batch of webhooks writes, computed in memory before the atomic
//! write. Deduplication (against the store and within the batch), sequence and quarantine
//! numbering, reconciliation of every touched operation, and the change records watchers
//! read.

use std::collections::HashMap;
use std::sync::Arc;

use super::Ack;
use crate::domain::catalog::Catalog;
use crate::domain::reconcile::{EventSummary, Operation, Reconciler};
use crate::domain::webhook::{EventId, Normalized, WebhookEnvelope};
use crate::store::payloads::{PayloadAppender, PayloadRef};
use crate::store::{
    Change, EventRef, Key, LogEntry, Meta, QuarantineEntry, Store, StoreError, Writes, encode,
    put_operation,
};

/// The writes of one batch, planned in memory before the atomic write.
pub(crate) struct BatchPlan {
    pub(crate) next_sequence: u64,
    pub(crate) next_quarantine: u64,
    seen: HashMap<EventId, Ack>,
    /// Touched operations by (kind, key): their state before the batch (without history:
    /// only its index entries matter) and after.
    operations: HashMap<(String, String), (Option<Operation>, Operation)>,
    /// Log, change, dedupe and quarantine writes; operations and indexes join at commit.
    writes: Writes,
    /// The change records of this batch, for the recent-changes window.
    changes: Vec<(u64, Arc<Change>)>,
    /// The batch's raw payloads, laid out from `payload_position`.
    payloads: Vec<u8>,
    payload_position: (u64, u64),
}

impl BatchPlan {
    pub(crate) fn new(
        next_sequence: u64,
        next_quarantine: u64,
        payload_position: (u64, u64),
    ) -> Self {
        BatchPlan {
            next_sequence,
            next_quarantine,
            seen: HashMap::new(),
            operations: HashMap::new(),
            writes: Writes::default(),
            changes: Vec::new(),
            payloads: Vec::new(),
            payload_position,
        }
    }

    pub(crate) fn add(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        normalized: &Normalized,
        raw: &[u8],
        received_at: i64,
    ) -> Result<Ack, StoreError> {
        let event_id = match normalized {
            Normalized::Event(e) => e.event_id,
            Normalized::Quarantine { event_id, .. } => *event_id,
        };
        if let Some(ack) = self.seen.get(&event_id) {
            return Ok(as_duplicate(ack.clone()));
        }
        if let Some(existing) = store.event_ref(&event_id)? {
            let ack = match existing {
                EventRef::Event(sequence) => Ack::Duplicate { sequence },
                EventRef::Quarantine(id) => Ack::Quarantined {
                    id,
                    reason: store
                        .quarantine_entry(id)?
                        .map(|e| e.reason)
                        .unwrap_or_default(),
                },
            };
            self.seen.insert(event_id, ack.clone());
            return Ok(ack);
        }
        let ack = match normalized {
            Normalized::Event(envelope) => Ack::Accepted {
                sequence: self.add_event(store, catalog, envelope, raw, received_at)?,
            },
            Normalized::Quarantine { reason, .. } => {
                let id = self.next_quarantine;
                self.next_quarantine += 1;
                let entry = QuarantineEntry {
                    event_id,
                    received_at,
                    reason: reason.clone(),
                    raw: raw.to_vec(),
                };
                self.writes.put(Key::Quarantine(id), encode(&entry));
                self.writes
                    .put(Key::EventId(&event_id), encode(&EventRef::Quarantine(id)));
                tracing::warn!(quarantine_id = id, reason = %reason, "webhook quarantined");
                Ack::Quarantined {
                    id,
                    reason: reason.clone(),
                }
            }
        };
        self.seen.insert(event_id, ack.clone());
        Ok(ack)
    }

    fn add_event(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        envelope: &WebhookEnvelope,
        raw: &[u8],
        received_at: i64,
    ) -> Result<u64, StoreError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let op_key = (envelope.kind.clone(), envelope.key.clone());
        let (original, current) = match self.operations.remove(&op_key) {
            Some((original, current)) => (original, Some(current)),
            None => {
                let stored = store.operation(&envelope.kind, &envelope.key)?;
                (stored.as_ref().map(Operation::without_history), stored)
            }
        };
        let previous = current.as_ref().map(|op| (op.status.clone(), op.phase));
        let summary = EventSummary::new(envelope, sequence, received_at);
        let after = Reconciler::new(catalog).apply(current, &envelope.kind, &envelope.key, summary);

        let change = Change {
            status_changed: previous
                .as_ref()
                .is_none_or(|(status, phase)| *status != after.status || *phase != after.phase),
            previous_status: previous.map(|(status, _)| status),
            operation: after.without_history(),
        };
        let entry = LogEntry {
            event_id: envelope.event_id,
            kind: envelope.kind.clone(),
            key: envelope.key.clone(),
            received_at,
            payload: PayloadRef {
                segment: self.payload_position.0,
                offset: self.payload_position.1 + self.payloads.len() as u64,
                len: u32::try_from(raw.len()).map_err(|_| StoreError::Corrupt {
                    tree: "log",
                    reason: "a payload over 4 GiB".into(),
                })?,
            },
        };
        self.payloads.extend_from_slice(raw);
        self.writes.put(Key::Log(sequence), encode(&entry));
        self.writes.put(Key::Change(sequence), encode(&change));
        self.changes.push((sequence, Arc::new(change)));
        self.writes.put(
            Key::EventId(&envelope.event_id),
            encode(&EventRef::Event(sequence)),
        );
        tracing::info!(
            sequence,
            kind = %after.kind,
            key = %after.key,
            status = %after.status,
            webhook_status = %envelope.status,
            "webhook stored"
        );
        self.operations.insert(op_key, (original, after));
        Ok(sequence)
    }

    /// Moves quarantined webhook `id` into the event log as `envelope`, keeping its original
    /// receive time: used by rebuild when a catalog change makes it readable.
    pub(crate) fn promote(
        &mut self,
        store: &Store,
        catalog: &Catalog,
        id: u64,
        envelope: &WebhookEnvelope,
        entry: &QuarantineEntry,
    ) -> Result<u64, StoreError> {
        self.writes.delete(Key::Quarantine(id));
        let sequence = self.add_event(store, catalog, envelope, &entry.raw, entry.received_at)?;
        self.seen
            .insert(envelope.event_id, Ack::Accepted { sequence });
        Ok(sequence)
    }

    /// Writes the plan as one atomic batch across every key space, after its payloads are durable, then flushes.
    pub(crate) fn commit(
        self,
        store: &Store,
        payloads: &mut PayloadAppender,
    ) -> Result<Vec<(u64, Arc<Change>)>, StoreError> {
        // Payloads first: nothing may refer to bytes that are not on disk.
        payloads.append(&self.payloads)?;
        let mut writes = self.writes;
        for (original, after) in self.operations.values() {
            put_operation(&mut writes, original.as_ref(), after);
        }
        writes.put(
            Key::Meta(Meta::NextSequence),
            self.next_sequence.to_be_bytes().to_vec(),
        );
        writes.put(
            Key::Meta(Meta::NextQuarantine),
            self.next_quarantine.to_be_bytes().to_vec(),
        );
        let started = std::time::Instant::now();
        store.apply(writes)?;
        let applied = started.elapsed();
        store.flush()?;
        tracing::trace!(
            apply_us = applied.as_micros() as u64,
            flush_us = (started.elapsed() - applied).as_micros() as u64,
            "batch written"
        );
        Ok(self.changes)
    }
}

fn as_duplicate(ack: Ack) -> Ack {
    match ack {
        Ack::Accepted { sequence } => Ack::Duplicate { sequence },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::webhook::normalize;

    fn webhook(key: &str, status: &str, time: &str) -> Vec<u8> {
        format!(
            r#"{{"webhook_type":"debt","key":"{key}","status":"{status}","event_datetime":"{time}"}}"#
        )
        .into_bytes()
    }

    /// Plans and commits one batch of raw webhooks on `store`; returns the acks.
    fn commit(store: &Store, bodies: &[Vec<u8>]) -> Vec<Ack> {
        let catalog = Catalog::builtin();
        let mut payloads = store.payloads().appender().expect("an appender");
        let next_sequence = store.next_sequence().expect("a counter");
        let position = payloads.position(next_sequence).expect("a position");
        let next_quarantine = store.next_quarantine_id().expect("a counter");
        let mut plan = BatchPlan::new(next_sequence, next_quarantine, position);
        let acks = bodies
            .iter()
            .map(|raw| {
                let normalized = normalize(&catalog, raw).expect("a JSON object");
                plan.add(store, &catalog, &normalized, raw, 1_000)
                    .expect("planned")
            })
            .collect();
        plan.commit(store, &mut payloads).expect("committed");
        acks
    }

    #[test]
    fn a_batch_numbers_dedupes_reconciles_and_indexes_in_one_write() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store");
        let created = webhook("a", "waiting_signature", "2024-01-01 10:00:00");
        let disbursed = webhook("a", "disbursed", "2024-01-02 10:00:00");
        let acks = commit(
            &store,
            &[
                disbursed.clone(),
                created.clone(),
                disbursed.clone(),
                br#"{"no":"key"}"#.to_vec(),
                webhook("b", "canceled", "2024-01-01 10:00:00"),
            ],
        );
        assert_eq!(acks[0], Ack::Accepted { sequence: 1 });
        assert_eq!(acks[1], Ack::Accepted { sequence: 2 });
        assert_eq!(acks[2], Ack::Duplicate { sequence: 1 }, "within the batch");
        assert!(
            matches!(acks[3], Ack::Quarantined { id: 1, .. }),
            "{:?}",
            acks[3]
        );
        assert_eq!(acks[4], Ack::Accepted { sequence: 3 });

        // Out of order within the batch, the later stage still wins.
        let a = store.operation("debt", "a").unwrap().expect("stored");
        assert_eq!(
            (a.status.as_str(), a.version, a.last_sequence),
            ("disbursed", 2, 2)
        );
        assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());
        assert_eq!(store.next_sequence().unwrap(), 4);

        // A later batch sees the earlier one: duplicates across batches, index entries moved.
        let acks = commit(
            &store,
            &[created, webhook("b", "canceled", "2024-01-01 10:00:00")],
        );
        assert_eq!(acks[0], Ack::Duplicate { sequence: 2 });
        assert_eq!(acks[1], Ack::Duplicate { sequence: 3 });
        let settled = webhook("a", "settled", "2024-01-03 10:00:00");
        assert_eq!(commit(&store, &[settled]), [Ack::Accepted { sequence: 4 }]);
        assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());
        let raw = store
            .raw_payload(&store.log_entry(1).unwrap().expect("logged"))
            .unwrap();
        assert_eq!(raw, disbursed, "the payload byte for byte");
    }
}
