//! Snapshots: a consistent copy of a running store in one file, and bringing one back.
//!
//! Taking one ([`pin`]) happens on the writer's thread between two batches, so nothing
//! writes meanwhile: the view (every key of the sled tree) is exported to a file, and the
//! log's segments are hard-linked with their lengths at that moment (appends and compaction
//! go on afterwards without touching what was pinned). The view has then applied exactly the
//! log it is pinned with. Ingest pauses for the export only (about a second per million
//! keys); streaming the file to the client ([`Pinned::write_to`]) happens afterwards, off the
//! writer.
//!
//! The file: `QSTSNAP1`, a header (store format, store identity, head sequence, time), then
//! named entries (`view`, `log/<segment>`), an end mark, and a CRC-32 of everything before it.
//! [`restore`] checks the CRC before the restored directory takes its name, so a truncated or
//! damaged file restores nothing; it then opens the restored store (its log checked as at
//! every start) and checks the view against its own indexes and counters, so a file edited
//! with its CRC recomputed restores nothing either. It stages beside the target in a
//! directory it creates (`<target>.restoring`, numbered if that exists) and never removes
//! what it did not create. An edit that keeps the view consistent and recomputes every
//! checksum (the file's and the log frames') is out of these checks' reach: for that, the
//! SHA-256 of the whole file, which `qistatus snapshot save` records beside it
//! (`FILE.sha256`), is compared when given (the `restore` command reads that file).
//!
//! A restored store gets a new identity: its sequences up to the snapshot's head mean what
//! they meant, but the ones it assigns next will mean other changes than the original's, and
//! watchers must be told (`FAILED_PRECONDITION` on resume) rather than skip them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::{Key, Meta, SpaceId};
use super::log::PinnedSegment;
use super::{STORE_FORMAT, Store, StoreError};

/// The first bytes of a snapshot file.
pub const MAGIC: &[u8; 8] = b"QSTSNAP1";
const VIEW: &str = "view";
const LOG_PREFIX: &str = "log/";
const TAG_ENTRY: u8 = 1;
const TAG_END: u8 = 0;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    store_format: u64,
    store_id: String,
    head_sequence: u64,
    created_at: i64,
}

fn invalid(reason: impl Into<String>) -> StoreError {
    StoreError::Snapshot(reason.into())
}

/// A consistent state of a running store, kept on disk until dropped.
#[derive(Debug)]
pub(crate) struct Pinned {
    dir: PathBuf,
    view: PathBuf,
    segments: Vec<PinnedSegment>,
    /// The last sequence the snapshot holds.
    pub(crate) head_sequence: u64,
    /// The identity of the store it was taken from.
    pub(crate) store_id: String,
    /// When it was pinned (ms since the epoch, on the writer's clock).
    created_at: i64,
}

/// Pins the store as it is now: call it where nothing writes (the writer's thread, between
/// batches). `head_sequence` is the last committed sequence; `created_at` is now.
pub(crate) fn pin(
    store: &Store,
    head_sequence: u64,
    created_at: i64,
) -> Result<Pinned, StoreError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::NoRandomness {
        what: "a snapshot's directory name",
        reason: e.to_string(),
    })?;
    let dir = snapshots_dir(&store.dir).join(hex::encode(nonce));
    std::fs::create_dir_all(&dir)?;
    let mut pinned = Pinned {
        view: dir.join("view"),
        segments: Vec::new(),
        head_sequence,
        store_id: store.id()?,
        created_at,
        dir,
    };
    let mut out = BufWriter::new(File::create(&pinned.view)?);
    for kv in store.trees.all.iter() {
        let (key, value) = kv?;
        frame(&mut out, &key)?;
        frame(&mut out, &value)?;
    }
    out.flush()?;
    pinned.segments = store.log.pin(&pinned.dir.join("log"))?;
    Ok(pinned)
}

fn frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

impl Pinned {
    /// Writes the snapshot file to `out`; returns its size.
    pub(crate) fn write_to(&self, out: impl Write) -> Result<u64, StoreError> {
        let mut out = Checksummed::new(out);
        out.write_all(MAGIC)?;
        let header = postcard::to_stdvec(&Header {
            store_format: STORE_FORMAT,
            store_id: self.store_id.clone(),
            head_sequence: self.head_sequence,
            created_at: self.created_at,
        })
        .expect("the header serializes: strings and integers");
        frame(&mut out, &header)?;
        let view_len = std::fs::metadata(&self.view)?.len();
        entry(&mut out, VIEW, &self.view, view_len)?;
        for segment in &self.segments {
            let name = format!("{LOG_PREFIX}{}", segment.name);
            entry(&mut out, &name, &segment.path, segment.len)?;
        }
        out.write_all(&[TAG_END])?;
        let crc = out.crc.clone().finalize();
        out.write_all(&crc.to_le_bytes())?;
        out.flush()?;
        Ok(out.written)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove a snapshot's files");
        }
    }
}

fn entry(out: &mut impl Write, name: &str, path: &Path, len: u64) -> Result<(), StoreError> {
    out.write_all(&[TAG_ENTRY])?;
    frame(out, name.as_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    let copied = std::io::copy(&mut File::open(path)?.take(len), out)?;
    if copied != len {
        return Err(invalid(format!(
            "{name} is shorter than when it was pinned"
        )));
    }
    Ok(())
}

/// Counts and checksums what passes through: the CRC-32 the file carries, and (reading) the
/// SHA-256 of every byte, which a restore compares with the one recorded at save.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    sha256: sha2::Sha256,
    written: u64,
}

impl<W> Checksummed<W> {
    fn new(inner: W) -> Self {
        use sha2::Digest;
        Checksummed {
            inner,
            crc: crc32fast::Hasher::new(),
            sha256: sha2::Sha256::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.sha256.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
}

/// What a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The last sequence the snapshot holds; the restored store continues after it.
    pub head_sequence: u64,
    /// The identity of the store the snapshot was taken from.
    pub from_store_id: String,
    /// The restored store's own, new identity.
    pub store_id: String,
    /// Operations in the restored store.
    pub operations: usize,
}

/// Restores the snapshot read from `input` into `data_dir`, which must not exist or be
/// empty. Offline: nothing else may use `data_dir`. Nothing is left at `data_dir` unless the
/// whole file was read, its checksum matched, its SHA-256 is `sha256` when that is given
/// (the digest recorded when it was saved, kept apart from it), and its view agrees with
/// itself.
pub fn restore(
    input: impl Read,
    data_dir: &Path,
    sha256: Option<[u8; 32]>,
) -> Result<Restored, StoreError> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(invalid(format!(
            "{} is not empty: restore into a new directory",
            data_dir.display()
        )));
    }
    let staging = new_staging_dir(data_dir)?;
    // Everything under `staging` was made by this restore, and only it is ever removed.
    let result = restore_into(input, &staging, sha256);
    let header = match result {
        Ok(header) => header,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if data_dir.exists() {
        std::fs::remove_dir(data_dir)?;
    }
    std::fs::rename(&staging, data_dir)?;
    Ok(Restored {
        head_sequence: header.head_sequence,
        from_store_id: header.store_id,
        store_id: header.restored_id,
        operations: header.operations,
    })
}

/// A new directory beside `data_dir` to restore into: `<name>.restoring`, or with a number
/// after it when that exists. Made with `create_dir`, which fails rather than reuse a path
/// this restore did not create (an earlier restore's leftovers, or anything else's).
fn new_staging_dir(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| invalid(format!("{} names no directory", data_dir.display())))?
        .to_string_lossy()
        .into_owned();
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    for n in 0..1000 {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!(".{n}")
        };
        let staging = data_dir.with_file_name(format!("{name}.restoring{suffix}"));
        match std::fs::create_dir(&staging) {
            Ok(()) => {
                std::fs::create_dir(staging.join("log"))?;
                return Ok(staging);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(invalid(format!(
        "cannot find a free staging directory beside {}: remove old `{name}.restoring*` \
         directories",
        data_dir.display()
    )))
}

/// Checks a restored store's view against itself (the indexes and counters against the
/// operations): a snapshot whose view was edited, even with its checksum recomputed, is
/// refused.
fn check_restored(store: &Store) -> Result<(), StoreError> {
    let problems = store.check_indexes()?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "damaged: the restored view disagrees with itself ({} problem(s), the first: {})",
        problems.len(),
        problems[0]
    )))
}

/// The header of a snapshot, and what restoring it made.
struct RestoredHeader {
    head_sequence: u64,
    store_id: String,
    restored_id: String,
    operations: usize,
}

fn restore_into(
    input: impl Read,
    staging: &Path,
    sha256: Option<[u8; 32]>,
) -> Result<RestoredHeader, StoreError> {
    let mut input = Checksummed::new(BufReader::new(input));
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| invalid("the file is empty or too short"))?;
    if &magic != MAGIC {
        return Err(invalid(
            "not a qistatus snapshot (no QSTSNAP1 at its start)",
        ));
    }
    let header: Header = postcard::from_bytes(&read_frame(&mut input)?)
        .map_err(|e| invalid(format!("unreadable header: {e}")))?;
    // A snapshot of format 2 is restored as it is and upgraded when the store opens.
    if !(2..=STORE_FORMAT).contains(&header.store_format) {
        return Err(invalid(format!(
            "taken from a store of format {}, this version reads format {STORE_FORMAT}",
            header.store_format
        )));
    }
    // No background flusher: the import flushes itself, and without one the file lock is
    // released the moment `db` is dropped, before the directory is opened as a store.
    let db = sled::Config::new()
        .path(staging)
        .flush_every_ms(None)
        .open()?;
    let tree = db.open_tree("qistatus")?;
    let mut saw_view = false;
    let mut operations = 0;
    loop {
        let mut tag = [0u8; 1];
        input
            .read_exact(&mut tag)
            .map_err(|_| invalid("the file ends early"))?;
        if tag[0] == TAG_END {
            break;
        }
        if tag[0] != TAG_ENTRY {
            return Err(invalid("damaged: an unknown entry"));
        }
        let name = String::from_utf8(read_frame(&mut input)?)
            .map_err(|_| invalid("damaged: an entry name is not text"))?;
        let mut len = [0u8; 8];
        input
            .read_exact(&mut len)
            .map_err(|_| invalid("the file ends early"))?;
        let mut body = (&mut input).take(u64::from_le_bytes(len));
        if name == VIEW {
            saw_view = true;
            operations = import_view(&mut body, &tree)?;
        } else if let Some(segment) = name.strip_prefix(LOG_PREFIX)
            && !segment.contains('/')
            && segment.ends_with(".log")
        {
            let mut file = File::create(staging.join("log").join(segment))?;
            std::io::copy(&mut body, &mut file)?;
            file.sync_all()?;
        } else {
            return Err(invalid(format!("damaged: an entry named {name:?}")));
        }
        if body.limit() != 0 {
            return Err(invalid("the file ends early"));
        }
    }
    let expected = input.crc.clone().finalize();
    let mut crc = [0u8; 4];
    input
        .read_exact(&mut crc)
        .map_err(|_| invalid("the file ends early"))?;
    if u32::from_le_bytes(crc) != expected {
        return Err(invalid("damaged: the checksum does not match"));
    }
    if let Some(recorded) = sha256 {
        use sha2::Digest;
        // Whatever follows the end mark is part of the file too.
        std::io::copy(&mut input, &mut std::io::sink())?;
        let found: [u8; 32] = input.sha256.clone().finalize().into();
        if found != recorded {
            return Err(invalid(format!(
                "the file's SHA-256 is {}, not the {} recorded when it was saved: it was \
                 changed since",
                hex::encode(found),
                hex::encode(recorded)
            )));
        }
    }
    if !saw_view {
        return Err(invalid("damaged: no view"));
    }
    // The restored store is a new store: see the module docs.
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| StoreError::NoRandomness {
        what: "the restored store's identity",
        reason: e.to_string(),
    })?;
    tree.insert(Key::Meta(Meta::StoreId).encode(), &id)?;
    // Opened as a store over the same sled (a second open would wait for sled's lock), and
    // checked before anything takes the target's name.
    drop(tree);
    let store = Store::with_db(db, staging)?;
    check_restored(&store)?;
    store.flush()?;
    Ok(RestoredHeader {
        head_sequence: header.head_sequence,
        store_id: header.store_id,
        restored_id: hex::encode(id),
        operations,
    })
}

fn read_frame(input: &mut impl Read) -> Result<Vec<u8>, StoreError> {
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|_| invalid("the file ends early"))?;
    let len = u32::from_le_bytes(len) as usize;
    // Keys and values are small; a frame claims at most a sled value's size.
    if len > 64 * 1024 * 1024 {
        return Err(invalid("damaged: a frame claims more than 64 MiB"));
    }
    let mut bytes = vec![0u8; len];
    input
        .read_exact(&mut bytes)
        .map_err(|_| invalid("the file ends early"))?;
    Ok(bytes)
}

/// Imports the view's keys; returns how many operations it holds.
fn import_view(input: &mut impl Read, tree: &sled::Tree) -> Result<usize, StoreError> {
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut operations = 0;
    loop {
        let mut probe = [0u8; 1];
        match input.read(&mut probe)? {
            0 => break,
            _ => {
                let mut rest = [0u8; 3];
                input
                    .read_exact(&mut rest)
                    .map_err(|_| invalid("the file ends early"))?;
                let len = u32::from_le_bytes([probe[0], rest[0], rest[1], rest[2]]) as usize;
                let mut key = vec![0u8; len];
                input
                    .read_exact(&mut key)
                    .map_err(|_| invalid("the file ends early"))?;
                let value = read_frame(input)?;
                if key.first() == Some(&(SpaceId::Operations as u8)) {
                    operations += 1;
                }
                batch.insert(key, value);
                in_batch += 1;
                if in_batch == 10_000 {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
        }
    }
    tree.apply_batch(batch)?;
    Ok(operations)
}

/// Where the pinned files of `data_dir`'s snapshots are kept while they are streamed. Not
/// `snap...`: sled's own snapshot files start with `snap.`.
pub(crate) fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("qistatus-snapshots")
}
