//! Conversions between the domain, JSON and the generated protobuf types: the one place
//! where the wire shapes of `proto/` meet the domain.

use prost_types::value::Kind;
use serde_json::Value;

use crate::domain::reconcile::{EventSummary, Operation, Phase};
use crate::pb;

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// RFC 3339 text of a protobuf timestamp, in UTC; empty for an unset or invalid one.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// The protobuf phase of a domain phase.
pub fn phase_to_pb(phase: Phase) -> pb::Phase {
    match phase {
        Phase::Pending => pb::Phase::Pending,
        Phase::Succeeded => pb::Phase::Succeeded,
        Phase::Failed => pb::Phase::Failed,
    }
}

/// The domain phase of a protobuf phase; `None` for `PHASE_UNSPECIFIED`.
pub fn phase_from_pb(phase: pb::Phase) -> Option<Phase> {
    match phase {
        pb::Phase::Unspecified => None,
        pb::Phase::Pending => Some(Phase::Pending),
        pb::Phase::Succeeded => Some(Phase::Succeeded),
        pb::Phase::Failed => Some(Phase::Failed),
    }
}

/// The lower-case name of a protobuf phase value (`unspecified` for 0 or an unknown value).
pub fn phase_name(phase: i32) -> &'static str {
    pb::Phase::try_from(phase)
        .ok()
        .and_then(phase_from_pb)
        .map_or("unspecified", Phase::as_str)
}

/// An operation without its history (for lists and watch).
pub fn operation_summary(op: &Operation) -> pb::Operation {
    pb::Operation {
        kind: op.kind.clone(),
        key: op.key.clone(),
        status: op.status.clone(),
        phase: phase_to_pb(op.phase) as i32,
        detail: op.detail.clone(),
        event_time: op.event_time.map(timestamp),
        first_received_at: Some(timestamp(op.first_received_at)),
        updated_at: Some(timestamp(op.updated_at)),
        version: op.version,
        // Every distinct webhook changes the operation once, so the two counts agree.
        event_count: op.version,
        history: Vec::new(),
        last_sequence: op.last_sequence,
    }
}

/// A history entry; `raw` is the stored webhook when it is still retained.
pub fn history_entry(e: &EventSummary, raw: Option<&[u8]>, include_raw: bool) -> pb::HistoryEntry {
    pb::HistoryEntry {
        sequence: e.sequence,
        status: e.status.clone(),
        event_time: e.event_time.map(timestamp),
        received_at: Some(timestamp(e.received_at)),
        data: raw
            .and_then(crate::domain::webhook::data_object)
            .map(json_object_to_struct),
        detail: e.detail.clone(),
        event_id: e.event_id.to_string(),
        raw_payload: if include_raw {
            raw.map(<[u8]>::to_vec).unwrap_or_default()
        } else {
            Vec::new()
        },
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_object_to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
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

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Integral numbers print as integers (`3`, not `3.0`), as they were sent.
fn number_to_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// The snake_case JSON of an operation, as the CLI's `--json` prints it.
pub fn operation_to_json(op: &pb::Operation) -> Value {
    let phase = phase_name(op.phase);
    let history: Vec<Value> = op
        .history
        .iter()
        .map(|h| {
            serde_json::json!({
                "sequence": h.sequence,
                "status": h.status,
                "event_time": non_empty(rfc3339(h.event_time.as_ref())),
                "received_at": non_empty(rfc3339(h.received_at.as_ref())),
                "detail": non_empty(h.detail.clone()),
                "event_id": h.event_id,
                "data": h.data.as_ref().map_or(Value::Null, struct_to_json),
            })
        })
        .collect();
    serde_json::json!({
        "kind": op.kind,
        "key": op.key,
        "status": op.status,
        "phase": phase,
        "detail": non_empty(op.detail.clone()),
        "event_time": non_empty(rfc3339(op.event_time.as_ref())),
        "first_received_at": non_empty(rfc3339(op.first_received_at.as_ref())),
        "updated_at": non_empty(rfc3339(op.updated_at.as_ref())),
        "version": op.version,
        "event_count": op.event_count,
        "last_sequence": op.last_sequence,
        "history": history,
    })
}

fn non_empty(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}
