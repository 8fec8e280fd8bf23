//! Record format 2, frozen: the shapes records had before format 3 added
//! [`Change::overdue`]. Only the change record changed; these types are how change records
//! written then are read now, and they never change.

use serde::Deserialize;

use super::StoredEvent;
use crate::domain::reconcile::Operation;
use crate::store::Change;

/// A change record as format 2 stored it.
#[derive(Debug, Deserialize)]
pub(super) struct ChangeV2 {
    previous_status: Option<String>,
    status_changed: bool,
    operation: Operation,
    milestones_reached: Vec<String>,
}

impl From<StoredEvent<ChangeV2>> for StoredEvent<Change> {
    fn from(v2: StoredEvent<ChangeV2>) -> Self {
        StoredEvent {
            entry: v2.entry,
            change: Change {
                previous_status: v2.change.previous_status,
                status_changed: v2.change.status_changed,
                operation: v2.change.operation,
                milestones_reached: v2.change.milestones_reached,
                // Format 2 had no overdue events: every change record was a webhook's.
                overdue: None,
            },
        }
    }
}
