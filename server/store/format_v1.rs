//! Record format 1, frozen: the shapes records had before format 2 added
//! [`Operation::conflict`], [`Operation::milestones`] and [`Change::milestones_reached`]. These types are how records written then are read now; they never
//! change. (Types whose shape format 2 did not change, such as `EventSummary`, are read as
//! they are.)

use serde::Deserialize;

use super::{Change, StoredEvent};
use crate::domain::reconcile::{EventSummary, Operation, Phase};

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
    history: Vec<EventSummary>,
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
            history: v1.history,
            // Format 1 did not record conflicts; the next change to the operation (or a
            // rebuild) computes it.
            conflict: Vec::new(),
            milestones: Vec::new(),
        }
    }
}

/// A change record as format 1 stored it.
#[derive(Debug, Deserialize)]
pub(super) struct ChangeV1 {
    previous_status: Option<String>,
    status_changed: bool,
    operation: OperationV1,
}

impl From<StoredEvent<ChangeV1>> for StoredEvent<Change> {
    fn from(v1: StoredEvent<ChangeV1>) -> Self {
        StoredEvent {
            entry: v1.entry,
            change: Change {
                previous_status: v1.change.previous_status,
                status_changed: v1.change.status_changed,
                operation: v1.change.operation.into(),
                milestones_reached: Vec::new(),
            },
        }
    }
}
