//! The payload log: raw webhook bodies in append-only segment files beside the sled tree.
//!
//! Why not in sled: sled 0.34 splits a leaf every 16 entries and rewrites whole nodes on
//! consolidation, so kilobyte-sized values (QI Tech's debt creation webhook is ~13 KB) are
//! copied many times over. Profiling the writer showed node splits and rewrites of payloads
//! taking about half its time. Here a payload is written once, sequentially, and the event
//! log in sled keeps only a small [`PayloadRef`] (the WiscKey idea).
//!
//! Guarantees: a batch's payloads are written and fsynced before the sled batch that refers
//! to them is applied, so a stored reference always points at durable bytes. Bytes written
//! for a batch that then failed (or was cut by a crash) are never referenced and harmless.
//! Segments are named by the first sequence they hold; retention deletes a segment once
//! every sequence in it is compacted away.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Where a payload is: segment (its first sequence), offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The segment, named by the first sequence it holds.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A new segment is started once the current one is this large.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Open segment files kept for reads.
const OPEN_FILES: usize = 64;

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.payloads"))
}

/// The segments in `dir`, by first sequence, ascending.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".payloads")?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// Reads payloads; shared by every reader.
#[derive(Debug)]
pub struct PayloadFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl PayloadFiles {
    /// The payload log in `dir` (created if missing).
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(PayloadFiles {
            dir,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The bytes `at` refers to.
    pub fn read(&self, at: &PayloadRef) -> std::io::Result<Vec<u8>> {
        let file = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            match open.get(&at.segment) {
                Some(f) => f.clone(),
                None => {
                    if open.len() >= OPEN_FILES {
                        open.clear();
                    }
                    let f = Arc::new(File::open(segment_path(&self.dir, at.segment))?);
                    open.insert(at.segment, f.clone());
                    f
                }
            }
        };
        let mut bytes = vec![0; at.len as usize];
        file.read_exact_at(&mut bytes, at.offset)?;
        Ok(bytes)
    }

    /// Deletes the segments whose every sequence is at most `compacted_through` (never the
    /// newest segment, which is still being written). Returns how many were deleted.
    pub fn drop_through(&self, compacted_through: u64) -> std::io::Result<usize> {
        let all = segments(&self.dir)?;
        let mut dropped = 0;
        for pair in all.windows(2) {
            let (segment, next) = (pair[0], pair[1]);
            if next.saturating_sub(1) <= compacted_through {
                self.open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&segment);
                std::fs::remove_file(segment_path(&self.dir, segment))?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// The appender; only the writer (or an offline rebuild) holds one.
    pub fn appender(&self) -> std::io::Result<PayloadAppender> {
        let current = match segments(&self.dir)?.last() {
            Some(&segment) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(segment_path(&self.dir, segment))?;
                let len = file.metadata()?.len();
                Some((segment, file, len))
            }
            None => None,
        };
        Ok(PayloadAppender {
            dir: self.dir.clone(),
            current,
        })
    }
}

/// Appends batches of payloads to the newest segment.
#[derive(Debug)]
pub struct PayloadAppender {
    dir: PathBuf,
    current: Option<(u64, File, u64)>,
}

impl PayloadAppender {
    /// Where the next batch goes: (segment, offset). Starts a segment named `next_sequence`
    /// when there is none or the current one is full.
    pub fn position(&mut self, next_sequence: u64) -> std::io::Result<(u64, u64)> {
        let full = self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= SEGMENT_BYTES);
        if full {
            let path = segment_path(&self.dir, next_sequence);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = file.metadata()?.len();
            // Make the new file's name durable before anything refers to it.
            File::open(&self.dir)?.sync_all()?;
            self.current = Some((next_sequence, file, len));
        }
        let (segment, _, len) = self.current.as_ref().expect("a segment was just ensured");
        Ok((*segment, *len))
    }

    /// Appends `bytes` (laid out from [`Self::position`]'s offset) and makes them durable.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (_, file, len) = self
            .current
            .as_mut()
            .expect("position() is called before append()");
        let result = file.write_all(bytes).and_then(|()| file.sync_data());
        // On failure, part of `bytes` may be there: continue after whatever was written.
        *len = file
            .metadata()
            .map(|m| m.len())
            .unwrap_or(*len + bytes.len() as u64);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_and_old_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let files = PayloadFiles::open(dir.path().join("p")).unwrap();
        let mut appender = files.appender().unwrap();
        let (segment, offset) = appender.position(1).unwrap();
        assert_eq!((segment, offset), (1, 0));
        appender.append(b"hello world").unwrap();
        let first = PayloadRef {
            segment,
            offset: 0,
            len: 5,
        };
        let second = PayloadRef {
            segment,
            offset: 6,
            len: 5,
        };
        assert_eq!(files.read(&first).unwrap(), b"hello");
        assert_eq!(files.read(&second).unwrap(), b"world");

        // A reopened appender continues at the end.
        let mut appender = files.appender().unwrap();
        assert_eq!(appender.position(2).unwrap(), (1, 11));

        // Only whole segments below the compaction point go, never the newest.
        std::fs::write(segment_path(&files.dir, 100), b"x").unwrap();
        std::fs::write(segment_path(&files.dir, 200), b"y").unwrap();
        assert_eq!(files.drop_through(98).unwrap(), 0);
        assert_eq!(files.drop_through(99).unwrap(), 1);
        assert!(files.read(&first).is_err());
        assert_eq!(files.drop_through(10_000).unwrap(), 1);
        assert_eq!(segments(&files.dir).unwrap(), [200]);
    }
}
