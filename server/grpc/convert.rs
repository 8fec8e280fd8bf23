//! Domain to wire: the one place where the shapes of `proto/` meet the domain. Everything
//! here is a `From`/`TryFrom` impl or a small function the service calls at its last step.

use prost_types::value::Kind;
use serde_json::Value;

use crate::domain::reconcile::{EventSummary, Operation, Phase};
use crate::domain::webhook::{FactValue, bounded_detail};
use crate::feed::FeedEvent;
use crate::pb;
use crate::store::OperationCount;

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub(crate) fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

impl From<Phase> for pb::Phase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Pending => pb::Phase::Pending,
            Phase::Active => pb::Phase::Active,
            Phase::Succeeded => pb::Phase::Succeeded,
            Phase::Failed => pb::Phase::Failed,
        }
    }
}

/// `PHASE_UNSPECIFIED` names no phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnspecifiedPhase;

impl TryFrom<pb::Phase> for Phase {
    type Error = UnspecifiedPhase;

    fn try_from(phase: pb::Phase) -> Result<Self, UnspecifiedPhase> {
        match phase {
            pb::Phase::Unspecified => Err(UnspecifiedPhase),
            pb::Phase::Pending => Ok(Phase::Pending),
            pb::Phase::Active => Ok(Phase::Active),
            pb::Phase::Succeeded => Ok(Phase::Succeeded),
            pb::Phase::Failed => Ok(Phase::Failed),
        }
    }
}

impl From<OperationCount> for pb::StatusCount {
    fn from(count: OperationCount) -> Self {
        pb::StatusCount {
            kind: count.kind,
            status: count.status,
            phase: pb::Phase::from(count.phase) as i32,
            operations: count.operations,
        }
    }
}

/// An operation without its history (lists, watch, and the head of `GetOperation`).
impl From<&Operation> for pb::Operation {
    fn from(op: &Operation) -> Self {
        pb::Operation {
            kind: op.kind.clone(),
            key: op.key.clone(),
            status: op.status.clone(),
            phase: pb::Phase::from(op.phase) as i32,
            // Stored before details were bounded, a detail may still be long.
            detail: bounded_detail(&op.detail).into_owned(),
            event_time: op.event_time.map(timestamp),
            first_received_at: Some(timestamp(op.first_received_at)),
            updated_at: Some(timestamp(op.updated_at)),
            version: op.version,
            // Every distinct webhook changes the operation once, so the two counts agree.
            event_count: op.version,
            history: Vec::new(),
            last_sequence: op.last_sequence,
            conflicting_statuses: op.conflict.clone(),
            facts: op
                .facts
                .iter()
                .map(|(name, value)| (name.clone(), fact_value(value)))
                .collect(),
            milestones: op
                .milestones
                .iter()
                .map(|m| pb::Milestone {
                    name: m.name.clone(),
                    reached_at: m.reached_at.map(timestamp),
                })
                .collect(),
        }
    }
}

/// A history entry without the webhook's `data` and raw payload.
impl From<&EventSummary> for pb::HistoryEntry {
    fn from(e: &EventSummary) -> Self {
        pb::HistoryEntry {
            sequence: e.sequence,
            status: e.status.clone(),
            event_time: e.event_time.map(timestamp),
            received_at: Some(timestamp(e.received_at)),
            data: None,
            detail: bounded_detail(&e.detail).into_owned(),
            event_id: e.event_id.to_string(),
            raw_payload: Vec::new(),
            data_omitted: false,
        }
    }
}

/// The `data` object of a stored webhook, as a `google.protobuf.Struct`.
pub(crate) fn data_struct(raw: &[u8]) -> Option<prost_types::Struct> {
    crate::domain::webhook::data_object(raw).map(json_object_to_struct)
}

impl From<FeedEvent> for pb::WatchOperationResponse {
    fn from(event: FeedEvent) -> Self {
        use pb::watch_operation_response::Event;
        let event = match event {
            FeedEvent::Initial(op) => Event::Change(pb::OperationChange {
                sequence: op.last_sequence,
                operation: Some(op.as_ref().into()),
                previous_status: String::new(),
                initial: true,
                milestones_reached: Vec::new(),
            }),
            FeedEvent::Change { sequence, change } => Event::Change(pb::OperationChange {
                sequence,
                operation: Some((&change.operation).into()),
                previous_status: change.previous_status.clone().unwrap_or_default(),
                initial: false,
                milestones_reached: change.milestones_reached.clone(),
            }),
            // The store identity is added by the stream, which knows it.
            FeedEvent::Progress(sequence) => Event::Progress(pb::Progress {
                sequence,
                store_id: String::new(),
            }),
        };
        pb::WatchOperationResponse { event: Some(event) }
    }
}

/// A fact as a `google.protobuf.Value`.
fn fact_value(value: &FactValue) -> prost_types::Value {
    let kind = match value {
        FactValue::Text(s) => Kind::StringValue(s.clone()),
        FactValue::Number(n) => Kind::NumberValue(*n),
        FactValue::Bool(b) => Kind::BoolValue(*b),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a `google.protobuf.Struct`.
fn json_object_to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_object_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
