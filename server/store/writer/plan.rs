//! Batch planning: what the writer decides about one batch of webhooks, before anything is
//! written. Deduplication (against the view and within the batch) and the numbering of
//! sequences, quarantine ids and LSNs; the result is the batch's log records and each
//! sender's answer. Applying the records to the view is [`crate::store::view`]'s job, the
//! same for a live batch and for replay.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::Ack;
use crate::domain::overdue::OverdueMark;
use crate::domain::reconcile::Operation;
use crate::domain::webhook::Facts;
use crate::domain::webhook::{EventId, Normalized};
use crate::store::log::{Entry as LogEntry, Record, RecordHeader};
use crate::store::record::Bodies;
use crate::store::{Store, StoreError, stored_in};

/// The counters a batch continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// The LSN of the next log record.
    pub(crate) next_lsn: u64,
    /// The sequence of the next stored webhook.
    pub(crate) next_sequence: u64,
    /// The id of the next quarantined webhook.
    pub(crate) next_quarantine: u64,
}

/// The decisions of one batch.
#[derive(Debug)]
pub(crate) struct BatchPlan {
    /// The counters after the batch.
    pub(crate) counters: Counters,
    /// What the batch appends to the log.
    pub(crate) records: Vec<Record>,
    seen: HashMap<EventId, Ack>,
    /// Operations (kind, key) this plan records as overdue: once each.
    overdue: HashSet<(String, String)>,
    /// The operations of the batch's webhooks as the view holds them before it (`None`: not
    /// stored), read to deduplicate and handed to the view, which reconciles from them.
    pub(crate) preread: HashMap<(String, String), Option<(Operation, Bodies)>>,
}

impl BatchPlan {
    pub(crate) fn new(counters: Counters) -> Self {
        BatchPlan {
            counters,
            records: Vec::new(),
            seen: HashMap::new(),
            overdue: HashSet::new(),
            preread: HashMap::new(),
        }
    }

    /// Decides about one webhook: a duplicate of one already stored (in the view or earlier
    /// in this batch), or a new record.
    pub(crate) fn add(
        &mut self,
        store: &Store,
        normalized: Normalized,
        raw: Bytes,
        received_at: i64,
        facts: Option<Facts>,
    ) -> Result<Ack, StoreError> {
        let event_id = normalized.event_id();
        if let Some(ack) = self.seen.get(&event_id) {
            return Ok(as_duplicate(ack.clone()));
        }
        let stored = match &normalized {
            // Its operation, read once per batch: the view reconciles from the same read.
            Normalized::Event(envelope) => {
                let op = match self
                    .preread
                    .entry((envelope.kind.clone(), envelope.key.clone()))
                {
                    Entry::Occupied(read) => read.into_mut(),
                    Entry::Vacant(unread) => {
                        unread.insert(store.stored_operation(&envelope.kind, &envelope.key)?)
                    }
                };
                op.as_ref().and_then(|(op, _)| stored_in(op, &event_id))
            }
            Normalized::Quarantine { .. } => store.find_stored(&normalized)?,
        };
        if let Some(existing) = stored {
            let ack = Ack::for_stored(store, existing)?;
            self.seen.insert(event_id, ack.clone());
            return Ok(ack);
        }
        let c = &mut self.counters;
        let (entry, ack) = match normalized {
            Normalized::Event(envelope) => {
                let sequence = c.next_sequence;
                c.next_sequence += 1;
                (
                    LogEntry::Event { sequence, envelope },
                    Ack::Accepted { sequence },
                )
            }
            Normalized::Quarantine { event_id, reason } => {
                let id = c.next_quarantine;
                c.next_quarantine += 1;
                let ack = Ack::Quarantined {
                    id,
                    reason: reason.clone(),
                };
                (
                    LogEntry::Quarantine {
                        id,
                        event_id,
                        reason,
                    },
                    ack,
                )
            }
        };
        self.records.push(Record {
            header: RecordHeader {
                lsn: c.next_lsn,
                received_at,
                entry,
            },
            raw,
            facts,
        });
        c.next_lsn += 1;
        self.seen.insert(event_id, ack.clone());
        Ok(ack)
    }
}

impl BatchPlan {
    /// Records that operation `mark` became overdue at `at` (ms), due at `due`: a record of
    /// its own, at the next sequence, with no payload. The caller checked that it is still
    /// due ([`Store::still_due`]).
    pub(crate) fn add_overdue(&mut self, mark: &OverdueMark, due: i64, at: i64) {
        if !self.overdue.insert((mark.kind.clone(), mark.key.clone())) {
            return;
        }
        let c = &mut self.counters;
        let sequence = c.next_sequence;
        c.next_sequence += 1;
        self.records.push(Record {
            header: RecordHeader {
                lsn: c.next_lsn,
                received_at: at,
                entry: LogEntry::Overdue {
                    sequence,
                    kind: mark.kind.clone(),
                    key: mark.key.clone(),
                    status: mark.status.clone(),
                    since: mark.since,
                    due,
                },
            },
            raw: Bytes::new(),
            facts: None,
        });
        c.next_lsn += 1;
    }
}

fn as_duplicate(ack: Ack) -> Ack {
    match ack {
        Ack::Accepted { sequence } => Ack::Duplicate { sequence },
        other => other,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::catalog::Catalog;
    use crate::domain::webhook::normalize;
    use crate::store::view;

    pub(in crate::store::writer) fn webhook(key: &str, status: &str, time: &str) -> Vec<u8> {
        format!(
            r#"{{"webhook_type":"debt","key":"{key}","status":"{status}","event_datetime":"{time}"}}"#
        )
        .into_bytes()
    }

    /// Plans one batch of raw webhooks on `store`, appends it to the log and applies it, as
    /// the writer does; returns the acks.
    fn commit(store: &Store, bodies: &[Vec<u8>]) -> Vec<Ack> {
        commit_at(store, bodies, 1_000)
    }

    /// Plans, logs and applies `bodies` as one batch received at `received_at`, as the
    /// writer does.
    pub(in crate::store::writer) fn commit_at(
        store: &Store,
        bodies: &[Vec<u8>],
        received_at: i64,
    ) -> Vec<Ack> {
        let catalog = Catalog::builtin();
        let mut plan = BatchPlan::new(store.counters().expect("counters"));
        let acks = bodies
            .iter()
            .map(|raw| {
                let normalized = normalize(&catalog, raw).expect("a JSON object");
                plan.add(
                    store,
                    normalized,
                    Bytes::from(raw.clone()),
                    received_at,
                    None,
                )
                .expect("planned")
            })
            .collect();
        let refs = store.log().append(&plan.records).expect("appended");
        view::apply(store, &catalog, &plan.records, &refs).expect("applied");
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
        let counters = store.counters().unwrap();
        assert_eq!(
            (
                counters.next_lsn,
                counters.next_sequence,
                counters.next_quarantine
            ),
            (5, 4, 2),
            "four records (three events, one quarantine) for five webhooks"
        );

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
        let bodies = store.bodies("debt", "a").unwrap();
        let raw = store.body(&bodies, 1).unwrap().expect("kept");
        assert_eq!(raw, disbursed, "the payload byte for byte");
        assert_eq!(
            store.body(&bodies, 3).unwrap(),
            None,
            "not one of a's webhooks"
        );
    }
}
