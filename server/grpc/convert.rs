//! Domain to wire: the one place where the shapes of `proto/` meet the domain. Everything
//! here is a `From`/`TryFrom` impl or a small function the service calls at its last step.

use prost_types::value::Kind;

use crate::domain::flow::{Cohort, DAY_MS, FlowReport, Percentiles, StageFigures};
use crate::domain::overdue::Overdue;
use crate::domain::reconcile::{EventSummary, Operation, Phase};
use crate::domain::webhook::{FactValue, bounded_detail};
use crate::feed::FeedEvent;
use crate::pb;
use crate::store::OperationCount;

/// A protobuf timestamp from milliseconds since the Unix epoch.
pub(crate) fn timestamp(millis: i64) -> prost_types::Timestamp {
    // A Timestamp holds years 1 to 9999 only: QI's "never" (9999-12-31 at São Paulo) is
    // shown at that end, not as an out-of-range value clients reject.
    let millis = crate::domain::webhook::shown_millis(millis);
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
            // It takes the catalog and the time of the answer: the API sets it.
            overdue: None,
        }
    }
}

impl From<&Overdue> for pb::Overdue {
    fn from(late: &Overdue) -> Self {
        pb::Overdue {
            status: late.status.clone(),
            since: Some(timestamp(late.since)),
            expected_within: Some(duration(late.expected_within)),
            due: Some(timestamp(late.due)),
        }
    }
}

/// A history entry without the webhook's `data` and raw payload, nor `event_time_ahead`
/// (which takes the catalog: the API sets it).
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
            data_json: Vec::new(),
            event_time_ahead: false,
        }
    }
}

/// The `data` object of a stored webhook, as a `google.protobuf.Struct`, read straight from
/// the bytes into protobuf values: no `serde_json::Value` in between, because filling history
/// entries with their data is most of what a full `GetOperation` costs.
pub(crate) fn data_struct(raw: &[u8]) -> Option<prost_types::Struct> {
    match crate::domain::webhook::data_field::<JsonAsProto>(raw)?
        .0
        .kind?
    {
        Kind::StructValue(object) => Some(object),
        _ => None,
    }
}

/// The `data` object of a raw webhook as the JSON text it had (`HistoryEntry.data_json`):
/// found by one pass of the parser, never rebuilt. Empty when there is no `data` object.
pub(crate) fn data_json(raw: &[u8]) -> Vec<u8> {
    match crate::domain::webhook::data_field::<Box<serde_json::value::RawValue>>(raw) {
        Some(data) if data.get().starts_with('{') => data.get().as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// A JSON value read as a `google.protobuf.Value`: objects become Structs (a repeated key
/// keeps its last value, as `serde_json` does), numbers doubles, `null` NullValue. Nesting is
/// bounded by `serde_json`'s recursion limit (128).
struct JsonAsProto(prost_types::Value);

impl<'de> serde::Deserialize<'de> for JsonAsProto {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonAsProtoVisitor)
    }
}

struct JsonAsProtoVisitor;

impl JsonAsProtoVisitor {
    fn of(kind: Kind) -> JsonAsProto {
        JsonAsProto(prost_types::Value { kind: Some(kind) })
    }
}

impl<'de> serde::de::Visitor<'de> for JsonAsProtoVisitor {
    type Value = JsonAsProto;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::NullValue(0)))
    }

    fn visit_bool<E>(self, b: bool) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::BoolValue(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::NumberValue(n as f64)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::NumberValue(n as f64)))
    }

    fn visit_f64<E>(self, n: f64) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::NumberValue(n)))
    }

    fn visit_str<E>(self, s: &str) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::StringValue(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<JsonAsProto, E> {
        Ok(Self::of(Kind::StringValue(s)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonAsProto, A::Error> {
        let mut values = Vec::new();
        while let Some(JsonAsProto(value)) = seq.next_element()? {
            values.push(value);
        }
        Ok(Self::of(Kind::ListValue(prost_types::ListValue { values })))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonAsProto, A::Error> {
        let mut fields = std::collections::BTreeMap::new();
        while let Some((key, JsonAsProto(value))) = map.next_entry::<String, JsonAsProto>()? {
            fields.insert(key, value);
        }
        Ok(Self::of(Kind::StructValue(prost_types::Struct { fields })))
    }
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
                overdue: None,
            }),
            FeedEvent::Change { sequence, change } => {
                let late = change.overdue.as_ref().map(pb::Overdue::from);
                let mut operation = pb::Operation::from(&change.operation);
                operation.overdue.clone_from(&late);
                Event::Change(pb::OperationChange {
                    sequence,
                    operation: Some(operation),
                    previous_status: change.previous_status.clone().unwrap_or_default(),
                    initial: false,
                    milestones_reached: change.milestones_reached.clone(),
                    overdue: late,
                })
            }
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

/// A protobuf duration from milliseconds.
fn duration(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration from seconds (a flow percentile), to the millisecond.
fn duration_of(seconds: f64) -> prost_types::Duration {
    duration((seconds * 1000.0).round() as i64)
}

impl From<&Percentiles> for pb::DurationSummary {
    fn from(p: &Percentiles) -> Self {
        pb::DurationSummary {
            count: p.count,
            p50: Some(duration_of(p.p50)),
            p90: Some(duration_of(p.p90)),
            p99: Some(duration_of(p.p99)),
        }
    }
}

/// One day's durations.
fn daily(days: &[(i32, Percentiles)]) -> Vec<pb::DailyDurations> {
    days.iter()
        .map(|(day, p)| pb::DailyDurations {
            day: Some(timestamp(i64::from(*day) * DAY_MS)),
            durations: Some(p.into()),
        })
        .collect()
}

impl From<&StageFigures> for pb::StageFlow {
    fn from(stage: &StageFigures) -> Self {
        pb::StageFlow {
            from_status: stage.from.clone(),
            to_status: stage.to.clone(),
            milestone: stage.milestone,
            total: Some((&stage.total).into()),
            by_day: daily(&stage.by_day),
        }
    }
}

impl From<&Cohort> for pb::Cohort {
    fn from(cohort: &Cohort) -> Self {
        pb::Cohort {
            day: Some(timestamp(i64::from(cohort.day) * DAY_MS)),
            phases: cohort
                .phases
                .iter()
                .map(|(phase, operations)| pb::PhaseCount {
                    phase: pb::Phase::from(*phase) as i32,
                    operations: *operations,
                })
                .collect(),
            stopped_at: cohort
                .stopped_at
                .iter()
                .map(|(status, operations)| pb::StoppedAt {
                    status: status.clone(),
                    operations: *operations,
                })
                .collect(),
        }
    }
}

/// The answer to `GetFlow`: `report` of `kind` over the window `[since, until)` (ms).
pub(crate) fn flow_response(
    kind: &str,
    (since, until): (i64, i64),
    report: &FlowReport,
) -> pb::GetFlowResponse {
    pb::GetFlowResponse {
        kind: kind.to_owned(),
        since: Some(timestamp(since)),
        until: Some(timestamp(until)),
        stages: report.stages.iter().map(pb::StageFlow::from).collect(),
        delivery_lag: report.lag.as_ref().map(pb::DurationSummary::from),
        delivery_lag_by_day: daily(&report.lag_by_day),
        cohorts: report.cohorts.iter().map(pb::Cohort::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The plain conversion, through a parsed `serde_json::Value`: what `data_struct` must
    /// equal.
    fn through_value(v: Value) -> prost_types::Value {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Kind::StringValue(s),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(through_value).collect(),
            }),
            Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, through_value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }

    #[test]
    fn data_is_read_into_protobuf_as_a_parsed_value_would_convert_it() {
        let fixtures = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
            .expect("the fixtures directory");
        let mut compared = 0;
        for file in fixtures {
            let path = file.expect("a directory entry").path();
            let raw = std::fs::read(&path).expect("a fixture");
            let expected = serde_json::from_slice::<Value>(&raw)
                .ok()
                .and_then(|v| v.get("data").cloned())
                .and_then(|data| match through_value(data).kind {
                    Some(Kind::StructValue(object)) => Some(object),
                    _ => None,
                });
            assert_eq!(data_struct(&raw), expected, "{}", path.display());
            compared += usize::from(expected.is_some());
        }
        assert!(
            compared >= 10,
            "only {compared} fixtures have a data object"
        );
    }

    #[test]
    fn data_of_every_json_shape_converts_and_a_repeated_key_keeps_its_last_value() {
        let raw = br#"{"data": {"n": null, "t": true, "i": -3, "u": 18446744073709551615,
            "f": 1.5e3, "s": "a\"\u00e9", "l": [1, [2], {"k": "v"}], "o": {}, "d": 1, "d": 2},
            "status": "x"}"#;
        let fields = data_struct(raw).expect("a data object").fields;
        let kind = |k: &str| fields[k].kind.clone().expect("a kind");
        assert_eq!(kind("n"), Kind::NullValue(0));
        assert_eq!(kind("t"), Kind::BoolValue(true));
        assert_eq!(kind("i"), Kind::NumberValue(-3.0));
        assert_eq!(kind("u"), Kind::NumberValue(18446744073709551615.0));
        assert_eq!(kind("f"), Kind::NumberValue(1500.0));
        assert_eq!(kind("s"), Kind::StringValue("a\"é".into()));
        assert_eq!(kind("d"), Kind::NumberValue(2.0));
        let Kind::ListValue(list) = kind("l") else {
            panic!("l is a list")
        };
        assert_eq!(list.values.len(), 3);
        assert!(matches!(kind("o"), Kind::StructValue(s) if s.fields.is_empty()));
        assert_eq!(data_struct(br#"{"data": [1]}"#), None);
        assert_eq!(data_struct(br#"{"data": {"a": 1"#), None);
    }
}
