//! The key schema: every key the store writes, as one typed enum with its encoding (the
//! one owner of the layout), and the key spaces they live in.
//!
//! | space | [`Key`] | body | value |
//! |---|---|---|---|
//! | `K` | `SeekPoint(seq)` | sequence, u64 big-endian | every [`SEEK_EVERY`](super::SEEK_EVERY)th sequence: where its record is in the log and when it was received, where reads of the log by sequence start |
//! | `L` | (none) | | retired in store format 4: a webhook's body is found through its operation, the change it made is worked out from the log; a format 3 directory's entries are moved at open |
//! | `E` | `EventId(id)` | the 32-byte content hash | the quarantine entry of that body (dedupe of the quarantine; an event is found in its operation's history) |
//! | `O` | `Operation` | `key \0 kind` | the operation with its history summaries, then where each of its webhooks' bodies is in the log |
//! | `S` | `StatusIndex` | `status \0 kind \0 key` | the operation without history |
//! | `P` | (none) | | retired in store format 3: phase lists merge the status index's runs; a format 2 directory's entries are removed at open |
//! | `Q` | `Quarantine(id)` | id, u64 big-endian | the quarantined webhook |
//! | `C` | `Count` | `kind \0 phase byte \0 status` | how many operations are there, u64 big-endian (absent: none) |
//! | `D` | `StatusSince` | `kind \0 status \0 since (8 bytes) key` | an operation on its way in a status the catalog has an expectation for, by when it took that status: empty, or the sequence (u64 big-endian) of the event that said it became overdue |
//! | `U` | `Due` | `due (8 bytes) kind \0 key` | an operation not yet said to be overdue, by when it will be under the catalog in effect: its status |
//! | `F` | `Flow` | `kind \0 day (4 bytes) tag fields \0 bucket` | a counter of the flow ([`crate::domain::flow`]): how many stages, webhooks or operations of a kind count on that UTC day in that series and bucket, u64 big-endian (absent: none) |
//! | `B` | `Part` | `whole key \0 whole kind \0 kind \0 key` | an operation that is a part of another (an installment of its debt, [`crate::domain::reconcile::Operation::part_of`]), without history: the whole's parts are one range scan |
//! | `M` | `Meta(name)` | the name | counters, secrets, format version |
//!
//! Kinds, statuses and keys never contain control characters (the normalizer quarantines
//! those), so `\0` separates them unambiguously and index order is (kind, key) order.
//! Operation keys start with the key so that every kind of one key is adjacent.
//!
//! Why one sled tree: a batch must reach every space atomically. sled makes a batch on one
//! tree atomic (also across a crash) for the cost of the writes alone, while a transaction
//! over several trees also reads every key it writes. Each [`Space`] is a one-byte prefix of
//! the shared tree; scans return keys without it.

use std::ops::Bound;

use sled::IVec;

use crate::domain::flow::Series;
use crate::domain::reconcile::Phase;
use crate::domain::webhook::EventId;

/// Every key the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    /// A point to start reading the log from: where the record at this sequence is.
    SeekPoint(u64),
    /// The quarantine entry of the body with this content hash.
    EventId(&'a EventId),
    /// An operation.
    Operation {
        /// Its kind.
        kind: &'a str,
        /// Its key.
        key: &'a str,
    },
    /// An operation's entry in the status index.
    StatusIndex {
        /// Its status.
        status: &'a str,
        /// Its kind.
        kind: &'a str,
        /// Its key.
        key: &'a str,
    },
    /// A quarantined webhook.
    Quarantine(u64),
    /// How many operations of a kind are in a status (and its phase).
    Count {
        /// The kind.
        kind: &'a str,
        /// The phase of the status.
        phase: Phase,
        /// The status.
        status: &'a str,
    },
    /// An operation still on its way (pending or active) in a status the catalog has an
    /// expectation for, by when it took that status
    /// ([`crate::domain::overdue::status_since`]): the overdue ones of a (kind, status) are
    /// a prefix of its run.
    StatusSince {
        /// Its kind.
        kind: &'a str,
        /// Its status.
        status: &'a str,
        /// When it took that status, ms since the epoch.
        since: i64,
        /// Its key.
        key: &'a str,
    },
    /// An operation in a status the catalog has an expectation for, not yet said to be
    /// overdue in it, by when it will be ([`crate::domain::overdue::Overdue::due`]): the
    /// overdue clock reads only the run that fell due, never the store.
    Due {
        /// When it falls due, ms since the epoch.
        due: i64,
        /// Its kind.
        kind: &'a str,
        /// Its key.
        key: &'a str,
    },
    /// A counter of the flow: a kind's count of `series` on `day` in `bucket`.
    Flow {
        /// The kind.
        kind: &'a str,
        /// The UTC day (days since 1970-01-01).
        day: i32,
        /// What it counts.
        series: &'a Series,
        /// The duration's bucket (0 for cohorts).
        bucket: u8,
    },
    /// An operation that is a part of another, under the whole.
    Part {
        /// The whole's kind.
        whole_kind: &'a str,
        /// The whole's key.
        whole_key: &'a str,
        /// The part's kind.
        kind: &'a str,
        /// The part's key.
        key: &'a str,
    },
    /// A named value of the store itself.
    Meta(Meta),
}

/// The names in the `M` space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meta {
    /// The sequence the next stored webhook gets.
    NextSequence,
    /// The id the next quarantined webhook gets.
    NextQuarantine,
    /// Every sequence up to this one has been compacted away.
    CompactedThrough,
    /// The secret that signs list page tokens.
    PageTokenSecret,
    /// The last log record applied to the view.
    AppliedThrough,
    /// The layout version of the data directory.
    FormatVersion,
    /// The store's random identity, made when it was created.
    StoreId,
    /// Present once the `C` space counts every operation.
    CountsReady,
    /// A cluster node: the last stream message its view took into account.
    StreamThrough,
    /// The fingerprint of the catalog the operations were last rebuilt under, written in
    /// the same batch as the rebuild: a start under another catalog (a reload a crash cut
    /// short, or a changed `--catalog`) rebuilds again.
    CatalogFingerprint,
    /// The (kind, status) pairs the `D` space dates (the expectations of the catalog it was
    /// last written for); absent in a store whose `D` space dated every operation on its way.
    DatedStatuses,
    /// The fingerprint of the catalog the `U` space was last written under: a start or a
    /// reload under another catalog writes it again.
    DueCatalog,
    /// Present once the `F` space counts every operation's flow.
    FlowReady,
}

impl Meta {
    fn name(self) -> &'static [u8] {
        match self {
            Meta::NextSequence => b"next_sequence",
            Meta::NextQuarantine => b"next_quarantine",
            Meta::CompactedThrough => b"compacted_through",
            Meta::PageTokenSecret => b"page_token_secret",
            Meta::AppliedThrough => b"applied_through",
            Meta::FormatVersion => b"format_version",
            Meta::StoreId => b"store_id",
            Meta::CountsReady => b"counts_ready",
            Meta::StreamThrough => b"stream_through",
            Meta::CatalogFingerprint => b"catalog_fingerprint",
            Meta::DatedStatuses => b"dated_statuses",
            Meta::DueCatalog => b"due_catalog",
            Meta::FlowReady => b"flow_ready",
        }
    }
}

/// The one-byte prefix of each space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpaceId {
    SeekPoints = b'K' as isize,
    /// Retired in store format 4 (change records are worked out from the log): what the
    /// upgrade from format 3 moves and removes.
    RetiredEvents = b'L' as isize,
    EventIds = b'E' as isize,
    Operations = b'O' as isize,
    StatusIndex = b'S' as isize,
    /// Retired in store format 3 (phase lists merge the status index): what the upgrade
    /// from format 2 removes.
    RetiredPhaseIndex = b'P' as isize,
    Quarantine = b'Q' as isize,
    Counts = b'C' as isize,
    StatusSince = b'D' as isize,
    Due = b'U' as isize,
    Flow = b'F' as isize,
    Parts = b'B' as isize,
    Meta = b'M' as isize,
}

/// The byte a phase is indexed under.
pub(crate) fn phase_byte(phase: Phase) -> u8 {
    match phase {
        Phase::Pending => b'P',
        Phase::Active => b'A',
        Phase::Succeeded => b'S',
        Phase::Failed => b'F',
    }
}

/// The run of the `B` space that holds one whole's parts.
pub(crate) fn parts_prefix(whole_kind: &str, whole_key: &str) -> Vec<u8> {
    let mut k = joined(&[whole_key.as_bytes(), whole_kind.as_bytes()]);
    k.push(0);
    k
}

/// The run of the `D` space that holds one (kind, status).
pub(crate) fn status_since_prefix(kind: &str, status: &str) -> Vec<u8> {
    let mut k = joined(&[kind.as_bytes(), status.as_bytes()]);
    k.push(0);
    k
}

/// A time as 8 bytes that sort as the times do (big-endian, sign bit flipped: times before
/// 1970 sort first).
pub(crate) fn since_bytes(since: i64) -> [u8; 8] {
    ((since as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time [`since_bytes`] wrote.
pub(crate) fn since_from_bytes(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Where a kind's flow counters of `day` start in the `F` space: a window of days is one
/// range.
pub(crate) fn flow_prefix(kind: &str, day: i32) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&((day as u32) ^ (1 << 31)).to_be_bytes());
    k
}

/// A flow counter's (day, series, bucket) from its key body, as [`Key::Flow`] wrote it;
/// `None` if it does not decode.
pub(crate) fn decode_flow(body: &[u8]) -> Option<(i32, Series, u8)> {
    let at = body.iter().position(|b| *b == 0)?;
    let rest = &body[at + 1..];
    let (day, rest) = rest.split_first_chunk::<4>()?;
    let day = (u32::from_be_bytes(*day) ^ (1 << 31)) as i32;
    let (&tag, rest) = rest.split_first()?;
    let (&bucket, rest) = rest.split_last()?;
    let fields = rest.strip_suffix(&[0])?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut parts = fields.splitn(2, |b| *b == 0);
    let series = match tag {
        b'S' => Series::Stage {
            from: text(parts.next()?),
            to: text(parts.next()?),
        },
        b'M' => Series::Milestone {
            from: text(parts.next()?),
            milestone: text(parts.next()?),
        },
        b'L' if fields.is_empty() => Series::Lag,
        b'C' => {
            let phase = match parts.next()? {
                &[byte] => Phase::ALL.into_iter().find(|p| phase_byte(*p) == byte)?,
                _ => return None,
            };
            Series::Cohort {
                phase,
                stopped_at: text(parts.next()?),
            }
        }
        _ => return None,
    };
    Some((day, series, bucket))
}

fn joined(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part);
    }
    out
}

impl Key<'_> {
    /// The space the key lives in.
    pub(crate) fn space(&self) -> SpaceId {
        match self {
            Key::SeekPoint(_) => SpaceId::SeekPoints,
            Key::EventId(_) => SpaceId::EventIds,
            Key::Operation { .. } => SpaceId::Operations,
            Key::StatusIndex { .. } => SpaceId::StatusIndex,
            Key::Quarantine(_) => SpaceId::Quarantine,
            Key::Count { .. } => SpaceId::Counts,
            Key::StatusSince { .. } => SpaceId::StatusSince,
            Key::Due { .. } => SpaceId::Due,
            Key::Flow { .. } => SpaceId::Flow,
            Key::Part { .. } => SpaceId::Parts,
            Key::Meta(_) => SpaceId::Meta,
        }
    }

    /// The key within its space (what scans of the space return).
    pub(crate) fn body(&self) -> Vec<u8> {
        match *self {
            Key::SeekPoint(sequence) | Key::Quarantine(sequence) => sequence.to_be_bytes().to_vec(),
            Key::EventId(id) => id.0.to_vec(),
            Key::Operation { kind, key } => joined(&[key.as_bytes(), kind.as_bytes()]),
            Key::StatusIndex { status, kind, key } => {
                joined(&[status.as_bytes(), kind.as_bytes(), key.as_bytes()])
            }
            Key::Count {
                kind,
                phase,
                status,
            } => joined(&[kind.as_bytes(), &[phase_byte(phase)], status.as_bytes()]),
            Key::StatusSince {
                kind,
                status,
                since,
                key,
            } => {
                let mut k = status_since_prefix(kind, status);
                k.extend_from_slice(&since_bytes(since));
                k.extend_from_slice(key.as_bytes());
                k
            }
            Key::Due { due, kind, key } => {
                let mut k = since_bytes(due).to_vec();
                k.extend(joined(&[kind.as_bytes(), key.as_bytes()]));
                k
            }
            Key::Flow {
                kind,
                day,
                series,
                bucket,
            } => {
                let mut k = flow_prefix(kind, day);
                match series {
                    Series::Stage { from, to } => {
                        k.push(b'S');
                        k.extend(joined(&[from.as_bytes(), to.as_bytes()]));
                    }
                    Series::Milestone { from, milestone } => {
                        k.push(b'M');
                        k.extend(joined(&[from.as_bytes(), milestone.as_bytes()]));
                    }
                    Series::Lag => k.push(b'L'),
                    Series::Cohort { phase, stopped_at } => {
                        k.push(b'C');
                        k.extend(joined(&[&[phase_byte(*phase)], stopped_at.as_bytes()]));
                    }
                }
                k.push(0);
                k.push(bucket);
                k
            }
            Key::Part {
                whole_kind,
                whole_key,
                kind,
                key,
            } => joined(&[
                whole_key.as_bytes(),
                whole_kind.as_bytes(),
                kind.as_bytes(),
                key.as_bytes(),
            ]),
            Key::Meta(name) => name.name().to_vec(),
        }
    }

    /// The whole key in the shared tree.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let body = self.body();
        let mut k = Vec::with_capacity(body.len() + 1);
        k.push(self.space() as u8);
        k.extend_from_slice(&body);
        k
    }
}

/// One key space, for reads and scans: every key of the shared tree that starts with its
/// prefix.
#[derive(Clone, Debug)]
pub(crate) struct Space {
    tree: sled::Tree,
    prefix: u8,
}

type Entry = sled::Result<(IVec, IVec)>;

impl Space {
    pub(crate) fn new(tree: sled::Tree, id: SpaceId) -> Self {
        Space {
            tree,
            prefix: id as u8,
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn strip(kv: Entry) -> Entry {
        kv.map(|(k, v)| (k.subslice(1, k.len() - 1), v))
    }

    fn prefixed(&self, bound: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
        match bound {
            Bound::Included(k) => Bound::Included(self.key(&k)),
            Bound::Excluded(k) => Bound::Excluded(self.key(&k)),
            Bound::Unbounded => Bound::Unbounded,
        }
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        self.tree.scan_prefix([self.prefix]).map(Self::strip)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        self.tree.scan_prefix(self.key(prefix)).map(Self::strip)
    }

    /// The entries between two bounds (keys without the prefix), in key order.
    pub(crate) fn range(
        &self,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> impl DoubleEndedIterator<Item = Entry> + use<> {
        let start = match start {
            Bound::Unbounded => Bound::Included(vec![self.prefix]),
            bounded => self.prefixed(bounded),
        };
        let end = match end {
            Bound::Unbounded => Bound::Excluded(vec![self.prefix + 1]),
            bounded => self.prefixed(bounded),
        };
        self.tree.range((start, end)).map(Self::strip)
    }

    /// How many entries (a scan: for reports, not hot paths).
    pub(crate) fn len(&self) -> usize {
        self.tree.scan_prefix([self.prefix]).count()
    }
}

/// Writes to any spaces, applied as one atomic sled batch. Later writes of a key win.
/// Counters ([`Key::Count`]) are changed by deltas, added to their stored values when the
/// batch is applied: the single writer (or an offline rebuild) is the only one applying, so
/// nothing changes them between that read and the batch.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    entries: Vec<(Vec<u8>, Option<IVec>)>,
    counts: std::collections::BTreeMap<Vec<u8>, i64>,
}

impl Writes {
    pub(crate) fn put(&mut self, key: Key<'_>, value: impl Into<IVec>) {
        self.entries.push((key.encode(), Some(value.into())));
    }

    pub(crate) fn delete(&mut self, key: Key<'_>) {
        self.entries.push((key.encode(), None));
    }

    /// Removes the key `body` of `space`, as a scan of the space returned it.
    pub(crate) fn delete_raw(&mut self, space: SpaceId, body: &[u8]) {
        let mut key = Vec::with_capacity(body.len() + 1);
        key.push(space as u8);
        key.extend_from_slice(body);
        self.entries.push((key, None));
    }

    /// The writes, in order: whole keys and values (`None`: a removal).
    pub(crate) fn entries(&self) -> &[(Vec<u8>, Option<IVec>)] {
        &self.entries
    }

    /// Adds `delta` to a counter.
    pub(crate) fn add_count(&mut self, key: Key<'_>, delta: i64) {
        *self.counts.entry(key.encode()).or_default() += delta;
    }

    /// Applies every write at once: after a crash, all of them or none are there. Returns
    /// how many key writes the batch held (an operation is written once per batch, so a key
    /// rarely appears twice; when it does, it counts twice).
    pub(crate) fn apply(self, tree: &sled::Tree) -> sled::Result<usize> {
        let written =
            self.entries.len() + self.counts.values().filter(|delta| **delta != 0).count();
        let mut batch = sled::Batch::default();
        for (key, value) in self.entries {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        for (key, delta) in self.counts.into_iter().filter(|(_, d)| *d != 0) {
            let current = tree
                .get(&key)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            let updated = current.saturating_add_signed(delta);
            if updated == 0 {
                batch.remove(key);
            } else {
                batch.insert(key, &updated.to_be_bytes());
            }
        }
        tree.apply_batch(batch)?;
        Ok(written)
    }
}
