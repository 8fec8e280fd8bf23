//! Record format 1, frozen: the shapes records had before format 2 added
//! [`Operation::conflict`], [`Operation::milestones`], [`Operation::facts`],
//! [`EventSummary::facts`] (and `Change::milestones_reached`, in change records that format 4 no longer keeps). These types are how records written then are read now; they never
//! change. (Types whose shape format 2 did not change are read as they are.)

use serde::Deserialize;

use crate::domain::reconcile::{EventSummary, Operation, Phase};
use crate::domain::webhook::EventId;

/// An operation as format 1 stored it.
#[derive(Debug, Deserialize)]
pub(super) struct OperationV1 {
    kind: String,
    key: String,
    status: String,
    phase: Phase,
    detail: String,
    event_time: Option<i64>,
    first_received_at: i64,
    updated_at: i64,
    version: u64,
    last_sequence: u64,
    history: Vec<EventSummaryV1>,
}

/// A history entry as format 1 stored it.
#[derive(Debug, Deserialize)]
struct EventSummaryV1 {
    sequence: u64,
    event_id: EventId,
    status: String,
    outcome: Option<String>,
    detail: String,
    event_time: Option<i64>,
    received_at: i64,
}

impl From<EventSummaryV1> for EventSummary {
    fn from(v1: EventSummaryV1) -> Self {
        EventSummary {
            sequence: v1.sequence,
            event_id: v1.event_id,
            status: v1.status,
            outcome: v1.outcome,
            detail: v1.detail,
            event_time: v1.event_time,
            received_at: v1.received_at,
            // Format 1 kept no facts; a rebuild reads them again from retained webhooks.
            facts: Vec::new(),
        }
    }
}

impl From<OperationV1> for Operation {
    fn from(v1: OperationV1) -> Self {
        Operation {
            kind: v1.kind,
            key: v1.key,
            status: v1.status,
            phase: v1.phase,
            detail: v1.detail,
            event_time: v1.event_time,
            first_received_at: v1.first_received_at,
            updated_at: v1.updated_at,
            version: v1.version,
            last_sequence: v1.last_sequence,
            history: v1.history.into_iter().map(EventSummary::from).collect(),
            // Format 1 did not record conflicts; the next change to the operation (or a
            // rebuild) computes it.
            conflict: Vec::new(),
            milestones: Vec::new(),
            facts: Vec::new(),
        }
    }
}
