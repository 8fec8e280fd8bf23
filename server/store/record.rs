//! The record codec: how every value in sled is written (a format version byte, then
//! postcard) and read back, including records of earlier formats ([`format_v1`], frozen).

mod format_v1;
mod format_v2;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Change, EventEntry, EventRef, QuarantineEntry, StoreError};
use crate::domain::reconcile::Operation;

/// What the `L` space keeps per sequence: where the webhook is, then the change it made.
/// One key instead of two per webhook (sled's cost is per key); the entry comes first so
/// that reading only it ([`decode_entry`]) does not decode the change.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredEvent<C> {
    pub(crate) entry: EventEntry,
    pub(crate) change: C,
}

/// The [`EventEntry`] of a stored [`StoredEvent`], without decoding its change.
pub(super) fn decode_entry(bytes: &[u8]) -> Result<EventEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree: "events",
        reason,
    };
    match bytes.split_first() {
        // The entry's shape is the same in every format so far.
        Some((&version, body)) if (1..=RECORD_VERSION).contains(&version) => {
            postcard::take_from_bytes::<EventEntry>(body)
                .map(|(entry, _change)| entry)
                .map_err(|e| corrupt(e.to_string()))
        }
        _ => decode::<StoredEvent<Change>>(bytes, "events").map(|stored| stored.entry),
    }
}

/// The version byte every record value starts with.
///
/// How records evolve: postcard is compact but not self-describing, so a change to a stored
/// struct (a field added to `Operation`, say) bumps this version, keeps the previous struct
/// as a frozen `...V1` type, and teaches [`decode`] to read version 1 into the new shape.
/// Old records stay readable; a version newer than this build is refused by name.
///
/// - 1: the first format;
/// - 2: `Operation::conflict`, `Operation::milestones` and `Change::milestones_reached`
///   added ([`format_v1`] reads format 1);
/// - 3: `Change::overdue` added ([`format_v2`] reads format 2).
pub(crate) const RECORD_VERSION: u8 = 3;

/// A value stored as a record: how each format's body is read into it.
pub(crate) trait Record: DeserializeOwned {
    /// Reads the body of a format-1 record. By default the shape did not change.
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }

    /// Reads the body of a format-2 record. By default the shape did not change.
    fn from_v2(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes(body)
    }
}

impl Record for Operation {
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes::<format_v1::OperationV1>(body).map(Operation::from)
    }
}

impl Record for StoredEvent<Change> {
    fn from_v1(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes::<StoredEvent<format_v1::ChangeV1>>(body).map(StoredEvent::from)
    }

    fn from_v2(body: &[u8]) -> postcard::Result<Self> {
        postcard::from_bytes::<StoredEvent<format_v2::ChangeV2>>(body).map(StoredEvent::from)
    }
}

impl Record for EventRef {}
impl Record for QuarantineEntry {}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    postcard::to_io(value, &mut out)
        .expect("records serialize into a Vec: plain structs, strings and vectors");
    out
}

pub(crate) fn decode<T: Record>(bytes: &[u8], tree: &'static str) -> Result<T, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    };
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(corrupt),
        Some((1, body)) => T::from_v1(body).map_err(corrupt),
        Some((2, body)) => T::from_v2(body).map_err(corrupt),
        Some((&version, _)) => Err(StoreError::Corrupt {
            tree,
            reason: format!(
                "record format {version}, and this qistatus reads up to {RECORD_VERSION}: \
                 was the directory written by a newer version?"
            ),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            reason: "an empty record".into(),
        }),
    }
}

pub(crate) fn u64_from_be(bytes: &[u8], tree: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::reconcile::{EventSummary, Phase};
    use crate::domain::webhook::EventId;
    use crate::store::log::PayloadRef;

    /// An operation with one webhook in its history, as the record tests store it.
    pub(in crate::store) fn sample_operation() -> Operation {
        Operation {
            kind: "debt".into(),
            key: "k".into(),
            status: "disbursed".into(),
            phase: Phase::Pending,
            detail: "d".into(),
            event_time: Some(5),
            first_received_at: 6,
            updated_at: 6,
            version: 1,
            last_sequence: 7,
            history: vec![EventSummary {
                sequence: 7,
                event_id: EventId([1; 32]),
                status: "disbursed".into(),
                outcome: None,
                detail: "d".into(),
                event_time: Some(5),
                received_at: 6,
                facts: Vec::new(),
            }],
            conflict: Vec::new(),
            milestones: Vec::new(),
            facts: Vec::new(),
        }
    }

    /// An operation as record format 1 wrote it. When `Operation` changes shape, this
    /// record must still decode (into the new shape): that is what the version byte is for.
    const OPERATION_V1: &str = "010464656274016b09646973627572736564000164010a0c0c01070107010101010101010101010101010101010101010101010101010101010101010109646973627572736564000164010a0c";

    #[test]
    fn records_written_by_format_1_still_decode() {
        let bytes = hex::decode(OPERATION_V1).expect("hex");
        let op: Operation = decode(&bytes, "operations").expect("a format 1 record decodes");
        assert_eq!(op, sample_operation());
        // This build writes format 3, which reads back the same.
        let written = encode(&sample_operation());
        assert_eq!(written[0], 3);
        assert_eq!(
            decode::<Operation>(&written, "operations").unwrap(),
            sample_operation()
        );
    }

    #[test]
    fn change_records_of_format_1_decode_with_their_entry() {
        // A format 1 L-space record: the sample's entry, then its change.
        let op_v1 = hex::decode(OPERATION_V1).expect("hex");
        let entry = EventEntry {
            event_id: EventId([1; 32]),
            kind: "debt".into(),
            key: "k".into(),
            received_at: 7,
            payload: PayloadRef {
                segment: 1,
                offset: 2,
                len: 3,
            },
        };
        let mut record = vec![1u8];
        record.extend(postcard::to_stdvec(&entry).unwrap());
        record.extend(postcard::to_stdvec(&Some("waiting_signature")).unwrap());
        record.push(1); // status_changed
        record.extend_from_slice(&op_v1[1..]);
        let stored: StoredEvent<Change> = decode(&record, "events").expect("decodes");
        assert_eq!(stored.entry, entry);
        assert_eq!(stored.change.operation, sample_operation());
        assert_eq!(
            stored.change.previous_status.as_deref(),
            Some("waiting_signature")
        );
        assert_eq!(decode_entry(&record).unwrap(), entry);
    }

    #[test]
    fn change_records_of_format_2_decode_without_an_overdue_event() {
        let entry = EventEntry {
            event_id: EventId([2; 32]),
            kind: "debt".into(),
            key: "k".into(),
            received_at: 7,
            payload: PayloadRef {
                segment: 1,
                offset: 2,
                len: 3,
            },
        };
        // Format 2's change: previous status, whether it changed, the operation, the
        // milestones reached; no overdue field after them.
        let change_v2 = (
            Some("waiting_signature"),
            true,
            sample_operation(),
            vec!["disbursed"],
        );
        let mut record = vec![2u8];
        record.extend(postcard::to_stdvec(&entry).unwrap());
        record.extend(postcard::to_stdvec(&change_v2).unwrap());
        let stored: StoredEvent<Change> = decode(&record, "events").expect("decodes");
        assert_eq!(stored.entry, entry);
        assert_eq!(stored.change.operation, sample_operation());
        assert_eq!(stored.change.milestones_reached, ["disbursed"]);
        assert_eq!(stored.change.overdue, None);
        assert_eq!(decode_entry(&record).unwrap(), entry);
    }

    #[test]
    fn a_newer_record_format_is_refused_by_name() {
        let mut bytes = encode(&sample_operation());
        bytes[0] = RECORD_VERSION + 1;
        let err = decode::<Operation>(&bytes, "operations")
            .unwrap_err()
            .to_string();
        assert!(err.contains("record format 4"), "{err}");
    }
}
