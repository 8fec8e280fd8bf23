//! What the CLI prints: the `--json` shapes (snake_case, RFC 3339 times, `null` for unset
//! fields) and the text helpers the human output shares with them.

use prost_types::value::Kind;
use qistatus::client::{duration_text, phase_name, rfc3339};
use qistatus::pb;
use serde_json::Value;

/// The JSON of an operation, with its history when it has one.
pub fn operation(op: &pb::Operation) -> Value {
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
        "phase": phase_name(op.phase),
        "detail": non_empty(op.detail.clone()),
        "event_time": non_empty(rfc3339(op.event_time.as_ref())),
        "first_received_at": non_empty(rfc3339(op.first_received_at.as_ref())),
        "updated_at": non_empty(rfc3339(op.updated_at.as_ref())),
        "version": op.version,
        "event_count": op.event_count,
        "last_sequence": op.last_sequence,
        "conflicting_statuses": op.conflicting_statuses,
        "facts": op.facts.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect::<serde_json::Map<_, _>>(),
        "milestones": op.milestones.iter().map(|m| serde_json::json!({
            "name": m.name,
            "reached_at": non_empty(rfc3339(m.reached_at.as_ref())),
        })).collect::<Vec<_>>(),
        "overdue": overdue(op.overdue.as_ref()),
        "history": history,
    })
}

/// The JSON line of a watched change.
pub fn change(change: &pb::OperationChange, op: &pb::Operation) -> Value {
    serde_json::json!({
        "sequence": change.sequence,
        "kind": op.kind,
        "key": op.key,
        "status": op.status,
        "previous_status": change.previous_status,
        "phase": phase_name(op.phase),
        "detail": op.detail,
        "initial": change.initial,
        "milestones_reached": change.milestones_reached,
        "overdue": overdue(change.overdue.as_ref()),
    })
}

/// An operation's overdue object (`null` when it is not overdue).
fn overdue(late: Option<&pb::Overdue>) -> Value {
    late.map_or(Value::Null, |late| {
        serde_json::json!({
            "status": late.status,
            "since": non_empty(rfc3339(late.since.as_ref())),
            "expected_within": duration_text(late.expected_within.as_ref()),
            "due": non_empty(rfc3339(late.due.as_ref())),
        })
    })
}

/// The JSON of the server's counts.
pub fn stats(stats: &pb::GetStatsResponse) -> Value {
    let counts: Vec<Value> = stats
        .counts
        .iter()
        .map(|c| {
            serde_json::json!({
                "kind": c.kind,
                "status": c.status,
                "phase": phase_name(c.phase),
                "operations": c.operations,
            })
        })
        .collect();
    serde_json::json!({
        "counts": counts,
        "operations": stats.counts.iter().map(|c| c.operations).sum::<u64>(),
        "quarantined": stats.quarantined,
        "head_sequence": stats.head_sequence,
        "store_id": stats.store_id,
        "overdue": stats.overdue.iter().map(|o| serde_json::json!({
            "kind": o.kind,
            "status": o.status,
            "operations": o.operations,
        })).collect::<Vec<_>>(),
    })
}

/// The JSON line of a quarantined webhook; `payload` is the body as text when it was asked
/// for, else `null`.
pub fn quarantined(entry: &pb::ListQuarantineResponse) -> Value {
    serde_json::json!({
        "id": entry.id,
        "received_at": non_empty(rfc3339(entry.received_at.as_ref())),
        "reason": entry.reason,
        "size_bytes": entry.size_bytes,
        "payload": if entry.payload.is_empty() {
            Value::Null
        } else {
            Value::String(String::from_utf8_lossy(&entry.payload).into_owned())
        },
    })
}

/// A `google.protobuf.Struct` as a JSON object.
fn struct_to_json(s: &prost_types::Struct) -> Value {
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

fn non_empty(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}

/// The JSON of a flow: durations in seconds (floats), days as `YYYY-MM-DD`.
pub fn flow(flow: &pb::GetFlowResponse) -> Value {
    let seconds = |d: Option<&prost_types::Duration>| {
        d.map_or(Value::Null, |d| {
            serde_json::json!(d.seconds as f64 + f64::from(d.nanos) / 1e9)
        })
    };
    let summary = |s: Option<&pb::DurationSummary>| {
        s.map_or(Value::Null, |s| {
            serde_json::json!({
                "count": s.count,
                "p50_seconds": seconds(s.p50.as_ref()),
                "p90_seconds": seconds(s.p90.as_ref()),
                "p99_seconds": seconds(s.p99.as_ref()),
            })
        })
    };
    let day = |t: Option<&prost_types::Timestamp>| {
        Value::String(rfc3339(t).get(..10).unwrap_or("").to_owned())
    };
    let daily = |days: &[pb::DailyDurations]| {
        days.iter()
            .map(|d| {
                serde_json::json!({
                    "day": day(d.day.as_ref()),
                    "durations": summary(d.durations.as_ref()),
                })
            })
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "kind": flow.kind,
        "since": non_empty(rfc3339(flow.since.as_ref())),
        "until": non_empty(rfc3339(flow.until.as_ref())),
        "stages": flow.stages.iter().map(|s| serde_json::json!({
            "from": s.from_status,
            "to": s.to_status,
            "milestone": s.milestone,
            "total": summary(s.total.as_ref()),
            "by_day": daily(&s.by_day),
        })).collect::<Vec<_>>(),
        "delivery_lag": summary(flow.delivery_lag.as_ref()),
        "delivery_lag_by_day": daily(&flow.delivery_lag_by_day),
        "cohorts": flow.cohorts.iter().map(|c| serde_json::json!({
            "day": day(c.day.as_ref()),
            "phases": c.phases.iter().map(|p| (phase_name(p.phase).to_owned(), Value::from(p.operations))).collect::<serde_json::Map<_, _>>(),
            "stopped_at": c.stopped_at.iter().map(|s| (s.status.clone(), Value::from(s.operations))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_integral_form() {
        assert_eq!(number_to_json(3.0), Value::from(3));
        assert_eq!(number_to_json(3429.38), serde_json::json!(3429.38));
    }
}
