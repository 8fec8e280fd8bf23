//! The record codec: how every value in sled is written (a format version byte, then
//! postcard) and read back, including records of earlier formats ([`format_v1`], frozen).

mod format_v1;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::log::PayloadRef;
use super::{EventRef, QuarantineEntry, StoreError};
use crate::domain::reconcile::Operation;

/// Where each webhook of an operation has its body in the log, by sequence, ascending. Kept
/// after the operation in its `O` value: finding a webhook's body costs no key of its own,
/// and reading the operation alone ([`decode`]) does not decode it (postcard reads a value
/// from the front and leaves what follows).
pub(crate) type Bodies = Vec<(u64, PayloadRef)>;

/// An operation's `O` value: the operation, then its [`Bodies`].
pub(crate) fn encode_operation(operation: &Operation, bodies: &[(u64, PayloadRef)]) -> Vec<u8> {
    encode(&(operation, bodies))
}

/// An operation's `O` value read whole: the operation and its [`Bodies`] (none in a value
/// written before store format 4, which the upgrade from format 3 completes).
pub(crate) fn decode_operation(bytes: &[u8]) -> Result<(Operation, Bodies), StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        tree: "operations",
        reason: e.to_string(),
    };
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            let (operation, rest) =
                postcard::take_from_bytes::<Operation>(body).map_err(corrupt)?;
            let bodies = if rest.is_empty() {
                Vec::new()
            } else {
                postcard::from_bytes(rest).map_err(corrupt)?
            };
            Ok((operation, bodies))
        }
        _ => Ok((decode(bytes, "operations")?, Vec::new())),
    }
}

/// The entry at the front of a change record of the `L` space (store formats 2 and 3), its
/// change left undecoded: what the upgrade to format 4 moves into the operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetiredEventEntry {
    /// Content identifier.
    pub(crate) event_id: crate::domain::webhook::EventId,
    /// The kind it was attributed to.
    pub(crate) kind: String,
    /// The key it was attributed to.
    pub(crate) key: String,
    /// Receive time, ms since the epoch.
    pub(crate) received_at: i64,
    /// Where its body is in the log.
    pub(crate) payload: PayloadRef,
}

/// The entry of an `L` space change record, without decoding its change: its shape was
/// the same in record formats 1 to 3.
pub(crate) fn decode_retired_entry(bytes: &[u8]) -> Result<RetiredEventEntry, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree: "events",
        reason,
    };
    match bytes.split_first() {
        Some((&version, body)) if (1..=3).contains(&version) => {
            postcard::take_from_bytes::<RetiredEventEntry>(body)
                .map(|(entry, _change)| entry)
                .map_err(|e| corrupt(e.to_string()))
        }
        _ => Err(corrupt("not a change record of store format 2 or 3".into())),
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
/// - 3: `Change::overdue` added to change records (gone in store format 4, which works
///   changes out from the log); an operation's value may be followed by its [`Bodies`].
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
    fn the_entries_of_retired_change_records_of_formats_1_to_3_decode() {
        let entry = RetiredEventEntry {
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
        // A format 1 L-space record: the entry, then its change (format 1's operation).
        let op_v1 = hex::decode(OPERATION_V1).expect("hex");
        let mut v1 = vec![1u8];
        v1.extend(postcard::to_stdvec(&entry).unwrap());
        v1.extend(postcard::to_stdvec(&Some("waiting_signature")).unwrap());
        v1.push(1); // status_changed
        v1.extend_from_slice(&op_v1[1..]);
        assert_eq!(decode_retired_entry(&v1).unwrap(), entry);
        // Formats 2 and 3: the same entry before a longer change.
        for version in [2u8, 3] {
            let mut record = vec![version];
            record.extend(postcard::to_stdvec(&entry).unwrap());
            record
                .extend(postcard::to_stdvec(&(Some("signed"), true, sample_operation())).unwrap());
            assert_eq!(decode_retired_entry(&record).unwrap(), entry);
        }
        let err = decode_retired_entry(&[9, 1, 2]).unwrap_err().to_string();
        assert!(err.contains("not a change record"), "{err}");
    }

    #[test]
    fn an_operation_value_carries_its_bodies_and_reads_as_the_operation_alone() {
        let op = sample_operation();
        let bodies: Bodies = vec![(
            7,
            PayloadRef {
                segment: 1,
                offset: 100,
                len: 42,
            },
        )];
        let value = encode_operation(&op, &bodies);
        assert_eq!(decode_operation(&value).unwrap(), (op.clone(), bodies));
        assert_eq!(decode::<Operation>(&value, "operations").unwrap(), op);
        // A value of store format 3 has no bodies after the operation.
        let old = encode(&op);
        assert_eq!(decode_operation(&old).unwrap(), (op.clone(), Vec::new()));
        let v1 = hex::decode(OPERATION_V1).expect("hex");
        assert_eq!(decode_operation(&v1).unwrap(), (op, Vec::new()));
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
