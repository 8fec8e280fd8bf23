//! The log: the source of truth. Every stored webhook, byte for byte, with what the writer
//! decided about it, in append-only segment files; sled is a view materialized from it.
//!
//! # The contract of a [`Log`]
//!
//! - [`Log::append`] returns only once every record it was given is durable (on stable
//!   storage, or acknowledged by a quorum for a replicated log). A failed append leaves no
//!   record visible to [`Log::replay_after`]: either all of a batch is in the log or none.
//! - Records have consecutive log sequence numbers (LSNs), starting at 1, in append order,
//!   and are read back in that order, unchanged.
//! - A payload reference stays readable until [`Log::release_before`] lets it go.
//!
//! The view records the last LSN it applied (`applied_through`) in the same atomic batch as
//! the changes; on start, whatever the log holds past it is applied again. [`SegmentLog`] is
//! the one implementation: a cluster node keeps one too, fed in the order of the cluster's
//! NATS JetStream stream, which orders and replicates webhooks *before* they reach a node's
//! log (see `crate::cluster`); the stream is not a second `Log`.
//!
//! # On disk ([`SegmentLog`])
//!
//! Segments `log/<first LSN, 20 digits>.log`, each starting with the 8-byte [`MAGIC`], then
//! frames: `len: u32 LE | crc32: u32 LE | body`, where `body` is `header_len: u32 LE |
//! header | raw payload` and the header is the postcard encoding of [`RecordHeader`]. The raw
//! payload is last so that a [`PayloadRef`] can point straight at it.
//!
//! Trade-offs: one fsync (`fdatasync`) per batch, the only one on the acknowledgement path;
//! a torn tail (a crash during a write) fails its checksum and is cut off at open, which is
//! safe because nothing was acknowledged or applied past the last complete frame. A torn
//! tail is only ever a tail: a bad frame with intact frames after it, or one the view already
//! applied, is damage, and the open refuses it without cutting a byte ([`LogError::Damaged`]).
//! Telling the two apart costs a scan of the newest segment for an intact frame after the bad
//! one, paid only when a bad frame is found at open. A segment whose start failed (a full
//! disk at rollover) is removed at once, and at open when a crash left it without its header:
//! it holds no record.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::webhook::{EventId, WebhookEnvelope};

/// What the writer decided about one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// A new webhook of an operation, stored at `sequence`.
    Event {
        /// Its position in the change feed.
        sequence: u64,
        /// What it says, as normalized when it arrived.
        envelope: WebhookEnvelope,
    },
    /// A JSON object that could not be attributed to an operation, kept under `id`.
    Quarantine {
        /// Quarantine id.
        id: u64,
        /// Content identifier.
        event_id: EventId,
        /// Why it could not be read.
        reason: String,
    },
    /// Quarantined webhook `id` became readable (a catalog change) and is now an event at
    /// `sequence`.
    Promote {
        /// The quarantine id it leaves.
        id: u64,
        /// Its new position in the change feed.
        sequence: u64,
        /// What it says under the new catalog.
        envelope: WebhookEnvelope,
    },
    /// No webhook: operation (`kind`, `key`) became overdue in `status`, held since `since`,
    /// due at `due` (ms since the epoch), an event at `sequence` for its watchers. The
    /// record's receive time is the clock's reading that found it due; its payload is empty.
    Overdue {
        /// Its position in the change feed.
        sequence: u64,
        /// The operation's kind.
        kind: String,
        /// The operation's key.
        key: String,
        /// The status it held too long.
        status: String,
        /// Since when it held it.
        since: i64,
        /// When that became too long, under the catalog then in effect.
        due: i64,
    },
}

impl Entry {
    /// The record's position in the change feed: every record has one but the quarantine's.
    pub(crate) fn sequence(&self) -> Option<u64> {
        match self {
            Entry::Event { sequence, .. }
            | Entry::Promote { sequence, .. }
            | Entry::Overdue { sequence, .. } => Some(*sequence),
            Entry::Quarantine { .. } => None,
        }
    }

    /// The content identifier of the record's body, as the writer worked it out when the body
    /// arrived (an overdue event has no body).
    pub(crate) fn event_id(&self) -> Option<&EventId> {
        match self {
            Entry::Event { envelope, .. } | Entry::Promote { envelope, .. } => {
                Some(&envelope.event_id)
            }
            Entry::Quarantine { event_id, .. } => Some(event_id),
            Entry::Overdue { .. } => None,
        }
    }
}

/// The part of a record before its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordHeader {
    /// Log sequence number.
    pub(crate) lsn: u64,
    /// Receive time, ms since the epoch.
    pub(crate) received_at: i64,
    /// What was decided.
    pub(crate) entry: Entry,
}

/// One record: a header and the webhook's body exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Everything but the payload.
    pub(crate) header: RecordHeader,
    /// The request body, byte for byte.
    pub(crate) raw: Bytes,
    /// The catalog's facts of the body, when the intake already read them (off the writer's
    /// thread). Not written to the log: replay reads them again from `raw`.
    pub(crate) facts: Option<crate::domain::webhook::Facts>,
}

/// Where a record's payload is: segment (its first LSN), offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The segment, named by the first LSN it holds.
    pub segment: u64,
    /// Byte offset of the payload in the segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing a segment failed.
    #[error("log I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A segment holds something that is not a valid record where one must be.
    #[error("log segment {segment}: {reason}")]
    Corrupt {
        /// The segment.
        segment: u64,
        /// What is wrong.
        reason: String,
    },
    /// A damaged record where a crash cannot have left one: intact records follow it, or the
    /// view already applied past it. Nothing was cut; the start is refused.
    #[error(
        "log segment {segment} is damaged at byte {offset} ({reason}), after record {last_good}{after}: \
         this is not a write cut by a crash, so nothing was cut off. Keep the data directory as \
         it is; `qistatus-server salvage --data-dir DIR OUT` copies every readable webhook out \
         of it, before and after the damage, and names what was lost",
        after = match next_good {
            Some((offset, lsn)) => format!(" and before record {lsn} (at byte {offset})"),
            None => String::new(),
        }
    )]
    Damaged {
        /// The segment.
        segment: u64,
        /// Where the damaged frame starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// The last intact record before it (0: none).
        last_good: u64,
        /// The first intact record after it, and where: (byte offset, LSN).
        next_good: Option<(u64, u64)>,
    },
    /// A stored webhook read back does not match its frame's checksum: it is not served.
    #[error(
        "the record whose payload is at byte {offset} of log segment {segment} fails its \
         checksum: `qistatus-server verify` lists the damage"
    )]
    PayloadDamaged {
        /// The segment.
        segment: u64,
        /// Where the payload starts.
        offset: u64,
    },
    /// A stored webhook whose bytes pass their frame's checksum but no longer match the
    /// content identifier (SHA-256) kept for it: altered, its checksum recomputed. Never
    /// served or reconciled.
    #[error(
        "the stored body of webhook {sequence} does not match its content identifier (SHA-256): \
         it was altered on disk with its checksum recomputed; `qistatus-server verify` lists it"
    )]
    PayloadAltered {
        /// The webhook's sequence (or log record, for the quarantine's).
        sequence: u64,
    },
}

impl LogError {
    /// Whether stored bytes were found damaged (rather than the device failing to read).
    pub(crate) fn is_damage(&self) -> bool {
        matches!(
            self,
            LogError::Corrupt { .. }
                | LogError::Damaged { .. }
                | LogError::PayloadDamaged { .. }
                | LogError::PayloadAltered { .. }
        )
    }

    /// Whether the device is out of space (or quota): a condition that passes once space is
    /// freed, not a fault of the log.
    pub(crate) fn is_out_of_space(&self) -> bool {
        match self {
            LogError::Io(e) => is_out_of_space(e),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT.
pub(crate) fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The durable, ordered record of every stored webhook. See the module docs for the
/// contract every implementation keeps.
pub(crate) trait Log: Send + Sync + std::fmt::Debug {
    /// The LSN of the last record (0 when empty).
    fn last_lsn(&self) -> u64;

    /// Appends `records` (their LSNs follow [`Log::last_lsn`] without gaps) and returns,
    /// once they are durable, where each payload is.
    fn append(&self, records: &[Record]) -> Result<Vec<PayloadRef>, LogError>;

    /// Calls `each` with every record after `lsn`, in order, with its payload's place.
    fn replay_after(
        &self,
        lsn: u64,
        each: &mut dyn FnMut(Record, PayloadRef) -> Result<(), crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError>;

    /// Calls `each` with every record after the one whose payload is `at` (from the log's
    /// oldest record when `None`), in order, with its payload's place, while `each` returns
    /// `true`. What lagging readers use: a writer may be appending meanwhile, so a partial
    /// frame at the newest segment's end is where the read stops.
    fn read_after(
        &self,
        at: Option<&PayloadRef>,
        each: &mut dyn FnMut(Record, PayloadRef) -> Result<bool, crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError>;

    /// The payload `at` refers to.
    fn payload(&self, at: &PayloadRef) -> Result<Vec<u8>, LogError>;

    /// Lets go of whole segments before the one holding `keep` (never the newest segment).
    /// Returns how many were removed.
    fn release_before(&self, keep: &PayloadRef) -> Result<usize, LogError>;

    /// Bytes the log takes where it is kept (for metrics).
    fn size_bytes(&self) -> Result<u64, LogError>;

    /// Keeps the log as it is now readable from `into` (a new directory on the same file
    /// system) however it grows or is compacted later: each segment's file there and how many
    /// of its bytes belong to this moment. Called between appends.
    fn pin(&self, into: &Path) -> Result<Vec<PinnedSegment>, LogError>;
}

/// A segment kept for a snapshot: its file name, where it is kept, and its length then.
#[derive(Debug, Clone)]
pub(crate) struct PinnedSegment {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

/// The first bytes of every segment: what it is, and the version of its frame format.
pub const MAGIC: &[u8; 8] = b"QSTLOG01";
/// A new segment is started once the current one is this large (by default).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Overrides [`SEGMENT_BYTES`]: for the fault tests, which need rollovers on a small disk.
const SEGMENT_BYTES_VARIABLE: &str = "QISTATUS_LOG_SEGMENT_BYTES";
/// Open segment files kept for payload reads.
const OPEN_FILES: usize = 64;
/// Frame header: length and checksum.
const FRAME_HEADER: u64 = 8;
/// The largest frame body accepted when reading (a guard against a corrupt length).
const MAX_BODY: u32 = 1 << 30;

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segments in `dir`, by first LSN, ascending.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// The newest segment in `dir`, if any.
pub(crate) fn newest_segment(dir: &Path) -> Result<Option<u64>, LogError> {
    Ok(segments(dir)?.last().copied())
}

/// The local log: segment files in one directory.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
    tail: Mutex<Tail>,
}

/// The segment being appended to.
#[derive(Debug)]
struct Tail {
    /// A segment this large is full.
    segment_bytes: u64,
    /// (first LSN, file, length), once a segment exists.
    current: Option<(u64, File, u64)>,
    last_lsn: u64,
}

/// One frame read from a segment.
enum Frame {
    Record(Box<Record>, PayloadRef),
    /// The segment ends here, cleanly.
    End,
    /// A partial or damaged frame at this offset.
    Torn(String),
}

/// Reads frames of segment `segment` sequentially.
struct SegmentReader {
    segment: u64,
    reader: BufReader<File>,
    offset: u64,
}

impl SegmentReader {
    fn open(dir: &Path, segment: u64) -> Result<Self, LogError> {
        Self::open_with(dir, segment, 1 << 20)
    }

    /// Reads segment `segment` from `offset`, where a frame starts (the end of the frame
    /// before), buffering `buffer` bytes at a time.
    fn open_at(dir: &Path, segment: u64, offset: u64, buffer: usize) -> Result<Self, LogError> {
        use std::io::{Seek, SeekFrom};
        let mut reader = Self::open_with(dir, segment, buffer)?;
        reader.reader.seek(SeekFrom::Start(offset))?;
        reader.offset = offset;
        Ok(reader)
    }

    fn open_with(dir: &Path, segment: u64, buffer: usize) -> Result<Self, LogError> {
        let mut reader = BufReader::with_capacity(buffer, File::open(segment_path(dir, segment))?);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|_| corrupt(segment, "shorter than its header"))?;
        if &magic != MAGIC {
            return Err(corrupt(
                segment,
                "not a qistatus log segment of this format version",
            ));
        }
        Ok(SegmentReader {
            segment,
            reader,
            offset: MAGIC.len() as u64,
        })
    }

    fn next(&mut self) -> Result<Frame, LogError> {
        let mut head = [0u8; FRAME_HEADER as usize];
        match read_full(&mut self.reader, &mut head)? {
            0 => return Ok(Frame::End),
            n if n < head.len() => return Ok(Frame::Torn("a partial frame header".into())),
            _ => {}
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if !(4..=MAX_BODY).contains(&len) {
            return Ok(Frame::Torn(format!("an impossible frame length {len}")));
        }
        let mut body = vec![0u8; len as usize];
        if read_full(&mut self.reader, &mut body)? < body.len() {
            return Ok(Frame::Torn("a partial frame".into()));
        }
        if crc32fast::hash(&body) != crc {
            return Ok(Frame::Torn("a frame whose checksum does not match".into()));
        }
        let (header, header_len) =
            decode_header(&body).map_err(|reason| corrupt(self.segment, &reason))?;
        let payload_offset = self.offset + FRAME_HEADER + 4 + header_len as u64;
        let raw = Bytes::from(body).slice(4 + header_len..);
        let at = PayloadRef {
            segment: self.segment,
            offset: payload_offset,
            len: raw.len() as u32,
        };
        self.offset += FRAME_HEADER + u64::from(len);
        Ok(Frame::Record(
            Box::new(Record {
                header,
                raw,
                facts: None,
            }),
            at,
        ))
    }
}

/// The record header at the start of a frame body whose checksum matched.
fn decode_header(body: &[u8]) -> Result<(RecordHeader, usize), String> {
    let header_len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    let header = body
        .get(4..4 + header_len)
        .ok_or_else(|| "a header longer than its frame".to_owned())?;
    let header =
        postcard::from_bytes(header).map_err(|e| format!("an unreadable record header: {e}"))?;
    Ok((header, header_len))
}

/// The intact frame at byte `at` of `bytes` (a whole segment), if there is one: its header,
/// where its payload starts and where the next frame starts. A frame is intact when its
/// length fits, its checksum matches and its header decodes.
fn frame_at(bytes: &[u8], at: usize) -> Option<(RecordHeader, usize, usize)> {
    let head = FRAME_HEADER as usize;
    let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().expect("4 bytes"));
    let body = bytes.get(at + head..at + head + len).filter(|_| len >= 4)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let (header, header_len) = decode_header(body).ok()?;
    Some((header, at + head + 4 + header_len, at + head + len))
}

/// How far before a payload its frame may start: the frame header, the header length and a
/// record header this long at most (a header holds a webhook's kind, key, status and detail).
const MAX_HEADER_WINDOW: u64 = 256 * 1024;

/// The payload at the end of `bytes` (which starts `payload_at` bytes before it), if the
/// frame it ends can be found before it and its checksum matches: the frame whose length
/// field and header length agree with a payload of this size there.
fn verified_payload(bytes: &[u8], payload_at: usize) -> Option<&[u8]> {
    let payload_len = bytes.len() - payload_at;
    let head = FRAME_HEADER as usize;
    (0..=payload_at.checked_sub(head + 4)?).find_map(|header_len| {
        let frame = payload_at - header_len - 4 - head;
        let len = u32::from_le_bytes(bytes[frame..frame + 4].try_into().expect("4 bytes"));
        let declared =
            u32::from_le_bytes(bytes[frame + 8..frame + 12].try_into().expect("4 bytes"));
        if len as usize != 4 + header_len + payload_len || declared as usize != header_len {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[frame + 4..frame + 8].try_into().expect("4 bytes"));
        (crc32fast::hash(&bytes[frame + head..]) == crc).then(|| &bytes[payload_at..])
    })
}

/// The first intact frame in `bytes` (a whole segment) at or after `from` whose record comes
/// after `after_lsn`: its offset and LSN. How damage is told from a torn tail, and how salvage
/// finds where readable records resume. Tries every offset.
pub(crate) fn find_intact_frame(bytes: &[u8], from: usize, after_lsn: u64) -> Option<(usize, u64)> {
    (from..bytes.len()).find_map(|at| {
        let (header, ..) = frame_at(bytes, at)?;
        (header.lsn > after_lsn).then_some((at, header.lsn))
    })
}

/// What a tolerant read of the whole log ([`scan`]) meets, in order.
#[derive(Debug)]
pub(crate) enum Scanned<'a> {
    /// An intact record and its payload.
    Record {
        /// Its header.
        header: RecordHeader,
        /// Its payload, byte for byte.
        raw: &'a [u8],
    },
    /// Bytes that hold no intact record, between two that are (or at a segment's end).
    Damage {
        /// The segment.
        segment: u64,
        /// Where the unreadable bytes start and end.
        from: u64,
        /// Where they end (the next intact frame, or the segment's end).
        to: u64,
        /// The last intact record before them (0: none).
        after_lsn: u64,
        /// The next intact record after them, if any in this segment.
        before_lsn: Option<u64>,
    },
}

/// Reads every segment in `dir` in order, past any damage: every intact record, and every
/// stretch of bytes that holds none, reach `each`. Changes nothing. What `verify` and
/// `salvage` read the log with; a segment whose header is wrong is one stretch of damage.
pub(crate) fn scan(
    dir: &Path,
    each: &mut dyn FnMut(Scanned<'_>) -> Result<(), crate::store::StoreError>,
) -> Result<(), crate::store::StoreError> {
    let mut last_lsn = 0;
    for segment in segments(dir).map_err(LogError::from)? {
        let bytes = std::fs::read(segment_path(dir, segment)).map_err(LogError::from)?;
        last_lsn = scan_segment(segment, &bytes, last_lsn, each)?;
    }
    Ok(())
}

/// [`scan`] of one segment's bytes, after record `last_lsn`; returns the last record's LSN.
pub(crate) fn scan_segment(
    segment: u64,
    bytes: &[u8],
    mut last_lsn: u64,
    each: &mut dyn FnMut(Scanned<'_>) -> Result<(), crate::store::StoreError>,
) -> Result<u64, crate::store::StoreError> {
    let mut at = if bytes.starts_with(MAGIC) {
        MAGIC.len()
    } else {
        0
    };
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Some((header, payload, next)) => {
                last_lsn = header.lsn;
                each(Scanned::Record {
                    header,
                    raw: &bytes[payload..next],
                })?;
                at = next;
            }
            None => {
                let resumes = find_intact_frame(bytes, at + 1, last_lsn);
                each(Scanned::Damage {
                    segment,
                    from: at as u64,
                    to: resumes.map_or(bytes.len(), |(to, _)| to) as u64,
                    after_lsn: last_lsn,
                    before_lsn: resumes.map(|(_, lsn)| lsn),
                })?;
                at = resumes.map_or(bytes.len(), |(to, _)| to);
            }
        }
    }
    Ok(last_lsn)
}

/// The sealed segments of `dir` (every one but the newest, which is still appended to), by
/// first LSN: what a scrub reads while the server runs.
pub(crate) fn sealed_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut all = segments(dir)?;
    all.pop();
    Ok(all
        .into_iter()
        .map(|segment| (segment, segment_path(dir, segment)))
        .collect())
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn corrupt(segment: u64, reason: &str) -> LogError {
    LogError::Corrupt {
        segment,
        reason: reason.to_owned(),
    }
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, whose records through `applied` the view has
    /// already applied.
    ///
    /// What a crash can leave is repaired: a torn tail (a write the crash cut, never
    /// acknowledged) is cut off, and a newest segment shorter than its header (a rollover
    /// the crash or a full disk interrupted, holding no record) is removed. Anything else is
    /// damage and refused without changing a byte ([`LogError::Damaged`]): a bad frame
    /// followed by intact ones, or one at or below `applied` (the view applied it, so it was
    /// acknowledged).
    pub(crate) fn open(dir: PathBuf, applied: u64) -> Result<Self, LogError> {
        std::fs::create_dir_all(&dir)?;
        let mut all = segments(&dir)?;
        while let Some(&newest) = all.last() {
            let path = segment_path(&dir, newest);
            let bytes = std::fs::read(&path)?;
            if bytes.len() >= MAGIC.len() || !MAGIC.starts_with(&bytes) {
                break;
            }
            tracing::warn!(
                segment = newest,
                bytes = bytes.len(),
                "removing a log segment shorter than its header (a rollover cut by a crash or \
                 a full disk): it holds no record"
            );
            std::fs::remove_file(&path)?;
            File::open(&dir)?.sync_all()?;
            all.pop();
        }
        let segment_bytes = std::env::var(SEGMENT_BYTES_VARIABLE)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SEGMENT_BYTES);
        let mut tail = Tail {
            segment_bytes,
            current: None,
            last_lsn: 0,
        };
        if let Some(&newest) = all.last() {
            let mut reader = SegmentReader::open(&dir, newest)?;
            let mut last_lsn = newest - 1;
            loop {
                match reader.next()? {
                    Frame::Record(record, _) => last_lsn = record.header.lsn,
                    Frame::End => break,
                    Frame::Torn(reason) => {
                        let bytes = std::fs::read(segment_path(&dir, newest))?;
                        let next_good =
                            find_intact_frame(&bytes, reader.offset as usize + 1, last_lsn)
                                .map(|(at, lsn)| (at as u64, lsn));
                        if next_good.is_some() || last_lsn < applied {
                            return Err(LogError::Damaged {
                                segment: newest,
                                offset: reader.offset,
                                reason: if next_good.is_none() {
                                    format!("{reason}, below what the view applied ({applied})")
                                } else {
                                    reason
                                },
                                last_good: last_lsn,
                                next_good,
                            });
                        }
                        tracing::warn!(
                            segment = newest,
                            offset = reader.offset,
                            reason = %reason,
                            "cutting a torn tail off the log (a write cut by a crash)"
                        );
                        break;
                    }
                }
            }
            let file = OpenOptions::new()
                .append(true)
                .open(segment_path(&dir, newest))?;
            file.set_len(reader.offset)?;
            file.sync_all()?;
            tail = Tail {
                segment_bytes,
                current: Some((newest, file, reader.offset)),
                last_lsn,
            };
        }
        Ok(SegmentLog {
            dir,
            open: Mutex::new(HashMap::new()),
            tail: Mutex::new(tail),
        })
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, LogError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&segment) {
            return Ok(f.clone());
        }
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        let f = Arc::new(File::open(segment_path(&self.dir, segment))?);
        open.insert(segment, f.clone());
        Ok(f)
    }

    fn release(&self, keep_from: u64) -> Result<usize, LogError> {
        let newest = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .as_ref()
            .map(|c| c.0);
        let mut removed = 0;
        for segment in segments(&self.dir)? {
            if segment >= keep_from || Some(segment) == newest {
                continue;
            }
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&segment);
            std::fs::remove_file(segment_path(&self.dir, segment))?;
            removed += 1;
        }
        Ok(removed)
    }
}

impl Tail {
    /// Starts a segment named `first_lsn` if there is none or the current one is full.
    fn ensure_segment(&mut self, dir: &Path, first_lsn: u64) -> Result<(), LogError> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= self.segment_bytes);
        if full {
            let path = segment_path(dir, first_lsn);
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            let started = file
                .write_all(MAGIC)
                .and_then(|()| file.sync_all())
                // Make the new file's name durable before anything is acknowledged from it.
                .and_then(|()| File::open(dir)?.sync_all());
            if let Err(e) = started {
                // It holds no record: remove it, so that the next append (once the disk has
                // room again) starts it afresh instead of finding it in the way.
                drop(file);
                if let Err(removing) = std::fs::remove_file(&path) {
                    tracing::error!(error = %removing, segment = first_lsn, "cannot remove a segment whose start failed");
                }
                return Err(e.into());
            }
            self.current = Some((first_lsn, file, MAGIC.len() as u64));
        }
        Ok(())
    }
}

impl Log for SegmentLog {
    fn last_lsn(&self) -> u64 {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).last_lsn
    }

    fn append(&self, records: &[Record]) -> Result<Vec<PayloadRef>, LogError> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(first.header.lsn, tail.last_lsn + 1, "LSNs follow the log");
        tail.ensure_segment(&self.dir, first.header.lsn)?;
        let (segment, file, len) = tail.current.as_mut().expect("a segment was just ensured");
        let start = *len;
        let mut buffer = Vec::with_capacity(records.iter().map(|r| r.raw.len() + 96).sum());
        let mut refs = Vec::with_capacity(records.len());
        for record in records {
            let header = postcard::to_stdvec(&record.header)
                .expect("record headers serialize: plain enums, strings and integers");
            let body_len = 4 + header.len() + record.raw.len();
            let frame_start = buffer.len();
            buffer.extend_from_slice(&(body_len as u32).to_le_bytes());
            buffer.extend_from_slice(&[0; 4]);
            buffer.extend_from_slice(&(header.len() as u32).to_le_bytes());
            buffer.extend_from_slice(&header);
            let payload_at = start + buffer.len() as u64;
            buffer.extend_from_slice(&record.raw);
            let body = &buffer[frame_start + FRAME_HEADER as usize..];
            let crc = crc32fast::hash(body);
            buffer[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
            refs.push(PayloadRef {
                segment: *segment,
                offset: payload_at,
                len: record.raw.len() as u32,
            });
        }
        let written = file.write_all(&buffer).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut whatever part of the batch reached the file: none of it is acknowledged.
            let restored = file.set_len(start).and_then(|()| file.sync_data());
            if let Err(cut) = restored {
                tracing::error!(error = %cut, "cannot cut a failed append off the log");
            }
            return Err(e.into());
        }
        *len = start + buffer.len() as u64;
        tail.last_lsn = records.last().expect("not empty").header.lsn;
        Ok(refs)
    }

    fn replay_after(
        &self,
        lsn: u64,
        each: &mut dyn FnMut(Record, PayloadRef) -> Result<(), crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError> {
        let all = segments(&self.dir).map_err(LogError::from)?;
        // The segment holding lsn + 1 is the last one that starts at or before it.
        let start = all.iter().rposition(|&s| s <= lsn + 1).unwrap_or(0);
        let newest = all.last().copied();
        for &segment in all.get(start..).unwrap_or_default() {
            let mut reader = SegmentReader::open(&self.dir, segment)?;
            loop {
                match reader.next()? {
                    Frame::Record(record, at) => {
                        if record.header.lsn > lsn {
                            each(*record, at)?;
                        }
                    }
                    Frame::End => break,
                    Frame::Torn(why) if Some(segment) == newest => {
                        // Cut at open; a writer racing with this read is not possible (the
                        // writer replays before it starts).
                        tracing::debug!(segment, reason = %why, "replay stops at the tail");
                        break;
                    }
                    Frame::Torn(why) => return Err(corrupt(segment, &why).into()),
                }
            }
        }
        Ok(())
    }

    fn read_after(
        &self,
        at: Option<&PayloadRef>,
        each: &mut dyn FnMut(Record, PayloadRef) -> Result<bool, crate::store::StoreError>,
    ) -> Result<(), crate::store::StoreError> {
        let all = segments(&self.dir).map_err(LogError::from)?;
        let newest = all.last().copied();
        // A segment released since `at` was read (retention, racing with this reader) held
        // only records before it: the read starts at the next segment that is still here.
        let from = match at {
            Some(at) => all
                .iter()
                .position(|&s| s >= at.segment)
                .unwrap_or(all.len()),
            None => 0,
        };
        for &segment in all.get(from..).unwrap_or_default() {
            // Lagging readers read a few records at a time: a small buffer.
            let mut reader = match at {
                Some(at) if at.segment == segment => SegmentReader::open_at(
                    &self.dir,
                    segment,
                    at.offset + u64::from(at.len),
                    64 * 1024,
                )?,
                _ => SegmentReader::open_with(&self.dir, segment, 64 * 1024)?,
            };
            loop {
                match reader.next()? {
                    Frame::Record(record, at) => {
                        if !each(*record, at)? {
                            return Ok(());
                        }
                    }
                    Frame::End => break,
                    // A frame being appended right now: nothing past it is applied yet.
                    Frame::Torn(_) if Some(segment) == newest => return Ok(()),
                    Frame::Torn(why) => {
                        let reason = format!(
                            "the record at byte {} fails its checksum ({why}): \
                             `qistatus-server verify` lists the damage",
                            reader.offset
                        );
                        return Err(corrupt(segment, &reason).into());
                    }
                }
            }
        }
        Ok(())
    }

    fn payload(&self, at: &PayloadRef) -> Result<Vec<u8>, LogError> {
        let file = self.file(at.segment)?;
        // The frame's checksum covers its header and payload: read the payload with the
        // bytes before it, find where its frame starts, and check the frame whole. Most
        // headers fit in the first window; a larger one takes a second read.
        let before_payload = at.offset.saturating_sub(MAGIC.len() as u64);
        for window in [1024u64, MAX_HEADER_WINDOW] {
            let back = window.min(before_payload);
            let mut bytes = vec![0; (back + u64::from(at.len)) as usize];
            file.read_exact_at(&mut bytes, at.offset - back)?;
            if let Some(payload) = verified_payload(&bytes, back as usize) {
                return Ok(payload.to_vec());
            }
            if back == before_payload {
                break;
            }
        }
        Err(LogError::PayloadDamaged {
            segment: at.segment,
            offset: at.offset,
        })
    }

    fn release_before(&self, keep: &PayloadRef) -> Result<usize, LogError> {
        self.release(keep.segment)
    }

    fn pin(&self, into: &Path) -> Result<Vec<PinnedSegment>, LogError> {
        // The tail lock keeps appends out while lengths are read.
        let _tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(into)?;
        let mut pinned = Vec::new();
        for segment in segments(&self.dir)? {
            let from = segment_path(&self.dir, segment);
            let name = from
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let path = into.join(&name);
            // A hard link: O(1), and the file outlives compaction; appends to the newest
            // segment show through it, which is why its length now is kept.
            std::fs::hard_link(&from, &path)?;
            let len = std::fs::metadata(&path)?.len();
            pinned.push(PinnedSegment { name, path, len });
        }
        Ok(pinned)
    }

    fn size_bytes(&self) -> Result<u64, LogError> {
        let mut total = 0;
        for segment in segments(&self.dir)? {
            // A segment released meanwhile is simply not counted.
            if let Ok(meta) = std::fs::metadata(segment_path(&self.dir, segment)) {
                total += meta.len();
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: u64, raw: &'static [u8]) -> Record {
        Record {
            header: RecordHeader {
                lsn,
                received_at: 7,
                entry: Entry::Quarantine {
                    id: lsn,
                    event_id: EventId([lsn as u8; 32]),
                    reason: "r".into(),
                },
            },
            raw: Bytes::from_static(raw),
            facts: None,
        }
    }

    fn replayed(log: &SegmentLog, after: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        log.replay_after(after, &mut |r, at| {
            assert_eq!(
                log.payload(&at).unwrap(),
                r.raw,
                "the ref points at the payload"
            );
            out.push((r.header.lsn, r.raw.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// What `read_after(at)` yields while `each` goes on for `take` records: their LSNs.
    fn read_lsns(log: &SegmentLog, at: Option<&PayloadRef>, take: usize) -> Vec<u64> {
        let mut lsns = Vec::new();
        log.read_after(at, &mut |record, _| {
            lsns.push(record.header.lsn);
            Ok(lsns.len() < take)
        })
        .unwrap();
        lsns
    }

    #[test]
    fn reads_after_a_record_start_right_behind_it_and_stop_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path().join("log"), 0).unwrap();
        let refs = log
            .append(&[record(1, b"one"), record(2, b"two"), record(3, b"three")])
            .unwrap();
        log.append(&[record(4, b"four")]).unwrap();
        assert_eq!(read_lsns(&log, None, 10), [1, 2, 3, 4]);
        assert_eq!(read_lsns(&log, Some(&refs[1]), 10), [3, 4]);
        assert_eq!(
            read_lsns(&log, Some(&refs[0]), 2),
            [2, 3],
            "stops when asked"
        );
        // A seek point into a segment released meanwhile: what is left, from the start.
        let released = PayloadRef {
            segment: 0,
            ..refs[2]
        };
        assert_eq!(read_lsns(&log, Some(&released), 10), [1, 2, 3, 4]);
    }

    #[test]
    fn appends_replay_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path().join("log"), 0).unwrap();
        assert_eq!(log.last_lsn(), 0);
        let refs = log.append(&[record(1, b"one"), record(2, b"two")]).unwrap();
        log.append(&[record(3, b"three")]).unwrap();
        assert_eq!(log.payload(&refs[1]).unwrap(), b"two");
        assert_eq!(
            replayed(&log, 1),
            [(2, b"two".to_vec()), (3, b"three".to_vec())]
        );
        drop(log);
        let log = SegmentLog::open(dir.path().join("log"), 0).unwrap();
        assert_eq!(log.last_lsn(), 3);
        assert_eq!(replayed(&log, 0).len(), 3);
        log.append(&[record(4, b"four")]).unwrap();
        assert_eq!(replayed(&log, 3), [(4, b"four".to_vec())]);
    }

    #[test]
    fn a_torn_tail_is_cut_at_open_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = SegmentLog::open(path.clone(), 0).unwrap();
        log.append(&[record(1, b"kept")]).unwrap();
        log.append(&[record(2, b"torn by a crash")]).unwrap();
        drop(log);
        // A crash in the middle of the second frame: its last bytes never reached the disk.
        let file = segment_path(&path, 1);
        let len = std::fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let log = SegmentLog::open(path.clone(), 0).unwrap();
        assert_eq!(log.last_lsn(), 1);
        assert_eq!(replayed(&log, 0), [(1, b"kept".to_vec())]);
        log.append(&[record(2, b"again")]).unwrap();
        assert_eq!(replayed(&log, 1), [(2, b"again".to_vec())]);

        // A flipped bit inside a frame fails its checksum the same way.
        drop(log);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
        let log = SegmentLog::open(path, 0).unwrap();
        assert_eq!(log.last_lsn(), 1);
    }

    #[test]
    fn a_foreign_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        std::fs::write(segment_path(&dir.path().join("log"), 1), b"something else").unwrap();
        let err = SegmentLog::open(dir.path().join("log"), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a qistatus log segment"), "{err}");
    }

    #[test]
    fn releasing_keeps_the_newest_segment_and_what_is_still_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        for first in [1u64, 10, 20] {
            let mut f = File::create(segment_path(&path_created(&path), first)).unwrap();
            f.write_all(MAGIC).unwrap();
        }
        let log = SegmentLog::open(path.clone(), 0).unwrap();
        let keep = PayloadRef {
            segment: 10,
            offset: 8,
            len: 0,
        };
        assert_eq!(log.release_before(&keep).unwrap(), 1);
        assert_eq!(segments(&path).unwrap(), [10, 20]);
        let past_the_newest = PayloadRef {
            segment: u64::MAX,
            ..keep
        };
        assert_eq!(log.release_before(&past_the_newest).unwrap(), 1);
        assert_eq!(segments(&path).unwrap(), [20], "never the newest");
    }

    fn path_created(path: &Path) -> PathBuf {
        std::fs::create_dir_all(path).unwrap();
        path.to_owned()
    }
}
