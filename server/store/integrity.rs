//! Checking and salvaging a data directory: offline (the server stopped), what an operator
//! runs when a start refuses a damaged log, or to prove a directory sound; and online, the
//! scrub that reads the sealed segments back while the server runs.
//!
//! All three read the log frame by frame ([`log::scan`], `log::scan_segment`), never stopping
//! at damage and never writing:
//!
//! - [`verify`] reads every record of every segment (checksums included), then the view's
//!   invariants (indexes and counters against the operations, the view not ahead of the log),
//!   and lists every problem; a sound directory has none.
//! - [`salvage`] copies the body of every intact record, before and after any damage, into a
//!   new directory, one file per record named by its log position, byte for byte, and names
//!   the stretches it could not read. `qistatus replay DIR` posts them to a server on a fresh
//!   data directory: statuses depend only on the set of webhooks, so the salvaged set gives
//!   the same answers, less what the damage took.
//! - `Store::scrub` reads every sealed segment (not the newest, still appended to) and
//!   reports its damage; the server runs it at a set pace and interval.

use std::fmt;
use std::path::{Path, PathBuf};

use super::log::{self, Scanned};
use super::{Store, StoreError};

/// A stretch of a segment that holds no intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment (named by its first record).
    pub segment: u64,
    /// Byte offsets `[from, to)` in it.
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// The last intact record before it (0: none).
    pub after: u64,
    /// The next intact record after it, if the segment has one.
    pub before: Option<u64>,
    /// Whether it is the very end of the newest segment: a write a crash cut, which the next
    /// start cuts off (unless the view applied past it).
    pub tail: bool,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {} bytes {}..{}: unreadable after record {}",
            self.segment, self.from, self.to, self.after
        )?;
        match self.before {
            Some(next) if next > self.after + 1 => {
                write!(f, ", records {}..={} lost", self.after + 1, next - 1)
            }
            Some(next) => write!(f, " and before record {next}"),
            None if self.tail => write!(f, " (a torn tail: a write cut by a crash)"),
            None => write!(f, ", up to the segment's end"),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Intact records read.
    pub records: u64,
    /// The last record's LSN.
    pub last_lsn: u64,
    /// Unreadable stretches of the log.
    pub damage: Vec<Damage>,
    /// Everything else that is wrong: records out of order, the view's invariants.
    pub problems: Vec<String>,
    /// Whether the view was checked: only when the log has no damage, torn tail included
    /// (opening the store would cut it, and `verify` changes nothing).
    pub view_checked: bool,
}

impl Verification {
    /// Whether nothing is wrong (a torn tail, which the next start cuts, is not wrong).
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty() && self.damage.iter().all(|d| d.tail)
    }
}

/// Reads the whole log of the data directory `dir` and checks the view against itself.
pub fn verify(dir: &Path) -> Result<Verification, StoreError> {
    let mut found = Verification::default();
    let mut previous: Option<u64> = None;
    scan_log(dir, &mut |scanned| {
        match scanned {
            ScannedRecord::Record { header, raw } => {
                if let Some(id) = header.entry.event_id()
                    && !crate::domain::webhook::body_matches(raw, id)
                {
                    found.problems.push(format!(
                        "record {}: its body does not match its content identifier (SHA-256): \
                         altered on disk with its checksum recomputed; it is neither served \
                         nor reconciled",
                        header.lsn
                    ));
                }
                if let Some(previous) = previous
                    && header.lsn != previous + 1
                    && found.damage.last().is_none_or(|d| d.after != previous)
                {
                    found.problems.push(format!(
                        "record {} follows record {previous}: the log skips or repeats records",
                        header.lsn
                    ));
                }
                previous = Some(header.lsn);
                found.records += 1;
                found.last_lsn = header.lsn;
            }
            ScannedRecord::Damage(damage) => found.damage.push(damage),
        }
        Ok(())
    })?;
    if found.damage.is_empty() {
        // Opening is safe now: with no torn tail it changes nothing in the log.
        let store = Store::open(dir)?;
        found.problems.extend(store.check_indexes()?);
        found.view_checked = true;
    }
    Ok(found)
}

/// What one [`Store::scrub`] pass read.
#[derive(Debug, Default)]
pub struct Scrub {
    /// Segments read.
    pub segments: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Damage found.
    pub damage: Vec<Damage>,
}

/// Where the background scrub is, kept in the data directory (`scrub.json`) so that a
/// restart neither starts the pass over nor pushes the next one back a whole interval: a
/// node restarted daily under a daily scrub interval still scrubs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScrubProgress {
    /// The segment the pass under way goes on from (0: from the start).
    pub next_segment: u64,
    /// When the pass under way began (ms since the epoch); `None`: none is under way.
    pub pass_started_at: Option<i64>,
    /// When the last pass completed (ms since the epoch).
    pub last_completed_at: Option<i64>,
}

impl Store {
    /// The scrub's progress as last saved; from the start when there is none (or it cannot
    /// be read: scrubbing again costs reads, nothing else).
    pub fn scrub_progress(&self) -> ScrubProgress {
        std::fs::read(self.dir.join("scrub.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Keeps the scrub's progress (written beside, then renamed: whole or not at all).
    pub fn save_scrub_progress(&self, progress: &ScrubProgress) -> Result<(), StoreError> {
        let path = self.dir.join("scrub.json");
        let partial = self.dir.join("scrub.json.partial");
        let bytes = serde_json::to_vec(progress).map_err(std::io::Error::other)?;
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    }

    /// Reads every sealed log segment (all but the newest, which is being appended to) and
    /// checks every record's checksum, while the server runs: damage that no read has met yet
    /// (a webhook nobody asked for since) is found and reported. After each segment `pace`
    /// is told how many bytes were read (it sleeps to keep the scrub's rate) and says whether
    /// to go on. A segment compaction removed meanwhile is skipped.
    pub fn scrub(&self, pace: &mut dyn FnMut(u64) -> bool) -> Result<Scrub, StoreError> {
        self.scrub_from(0, &mut |_, bytes| pace(bytes))
    }

    /// [`Store::scrub`] from segment `from` on; `pace` is told each segment's number too, once
    /// it is read (where a pass cut short goes on from is the next).
    pub fn scrub_from(
        &self,
        from: u64,
        pace: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<Scrub, StoreError> {
        let mut found = Scrub::default();
        for (segment, path) in log::sealed_segments(&self.dir.join("log"))? {
            if segment < from {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            log::scan_segment(segment, &bytes, 0, &mut |scanned| {
                if let Scanned::Damage {
                    segment,
                    from,
                    to,
                    after_lsn,
                    before_lsn,
                } = scanned
                {
                    found.damage.push(Damage {
                        segment,
                        from,
                        to,
                        after: after_lsn,
                        before: before_lsn,
                        tail: false,
                    });
                }
                Ok(())
            })?;
            found.segments += 1;
            found.bytes += bytes.len() as u64;
            if !pace(segment, bytes.len() as u64) {
                break;
            }
        }
        Ok(found)
    }
}

/// What [`salvage`] copied.
#[derive(Debug, Default)]
pub struct Salvage {
    /// Records whose bodies were written.
    pub records: u64,
    /// Where.
    pub into: PathBuf,
    /// What could not be read.
    pub damage: Vec<Damage>,
}

/// Copies the body of every intact record of `dir`'s log into `into` (a new or empty
/// directory), `<log position>.json` each, and names what could not be read. Changes nothing
/// in `dir`.
pub fn salvage(dir: &Path, into: &Path) -> Result<Salvage, StoreError> {
    if into.exists() && std::fs::read_dir(into)?.next().is_some() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} is not empty: salvage writes into a new directory",
                into.display()
            ),
        )));
    }
    std::fs::create_dir_all(into)?;
    let mut salvaged = Salvage {
        into: into.to_owned(),
        ..Salvage::default()
    };
    scan_log(dir, &mut |scanned| {
        match scanned {
            // An overdue event is no webhook: a new store records it again from the webhooks.
            ScannedRecord::Record { header, .. }
                if matches!(header.entry, log::Entry::Overdue { .. }) => {}
            ScannedRecord::Record { header, raw } => {
                std::fs::write(into.join(format!("{:020}.json", header.lsn)), raw)?;
                salvaged.records += 1;
            }
            ScannedRecord::Damage(damage) => salvaged.damage.push(damage),
        }
        Ok(())
    })?;
    Ok(salvaged)
}

/// [`log::scan`] of `dir`'s log, with damage as [`Damage`] (the tail marked).
fn scan_log(
    dir: &Path,
    each: &mut dyn FnMut(ScannedRecord<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let log_dir = dir.join("log");
    if !log_dir.is_dir() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no log", dir.display()),
        )));
    }
    let newest = log::newest_segment(&log_dir)?;
    log::scan(&log_dir, &mut |scanned| match scanned {
        Scanned::Record { header, raw } => each(ScannedRecord::Record { header, raw }),
        Scanned::Damage {
            segment,
            from,
            to,
            after_lsn,
            before_lsn,
        } => each(ScannedRecord::Damage(Damage {
            segment,
            from,
            to,
            after: after_lsn,
            before: before_lsn,
            tail: before_lsn.is_none() && Some(segment) == newest,
        })),
    })
}

/// A record, or damage in the operator's terms.
enum ScannedRecord<'a> {
    Record {
        header: log::RecordHeader,
        raw: &'a [u8],
    },
    Damage(Damage),
}
