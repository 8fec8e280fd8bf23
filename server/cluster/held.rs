//! Webhooks a cluster node holds on its own disk while the stream cannot take them in time.
//!
//! # Why
//!
//! A sender waits a bounded time for its answer: QI Tech 10 s (seed 004), and a webhook not
//! answered `200` in time is sent again a minute later at best. JetStream takes no message
//! while the stream has no leader, and when a leader dies its followers wait out nats-server's
//! Raft election timeout (4 to 9 s, chosen at random, not configurable) before one campaigns:
//! a webhook received as the leader died waits up to about 10 s for the stream's
//! acknowledgement, so a sender that waited from the first byte would often give up first.
//!
//! So a publish that is not acknowledged within `hold_after` (5 s by default, half of QI's
//! deadline) is held instead: the node writes the verified body to `held/` in its data
//! directory, durably ([`crate::durable_file::write_whole`]), answers `200` with the result
//! `held`, and publishes it once the stream takes messages again ([`release`]), with the
//! time it was received, which every node then uses as its received time (so the stage
//! durations and the delivery lag do not count the election).
//!
//! # Guarantees
//!
//! - A webhook answered `held` is in a file of this node's data directory (synced, its name
//!   too) until the stream acknowledged it; only then is the file removed. A node killed
//!   between the two publishes it again at its next start: a repeat, which JetStream drops
//!   within its duplicate window and the view's exact deduplication after it.
//! - Held webhooks are published in the order they were held, one at a time.
//! - A held file that does not read back whole (a flipped byte, a missing tail: its
//!   checksum says so) is renamed `*.damaged` and left there, never removed: logged, counted
//!   (`qistatus_cluster_held_damaged_total`), and the others go on.
//! - Bounded: at most `max_bytes` of bodies are held at once; past it (or on a full disk) the
//!   webhook is answered `503` as it was before holding existed, and the sender retries.
//!   `max_bytes` 0 never holds: a `200` then always means "on a quorum of NATS servers".
//!
//! # Trade-offs
//!
//! While a webhook is held, it is as durable as this node's disk, not as a quorum of NATS
//! servers, and no node (this one included) shows it until the stream took it: a read right
//! after a `held` answer may not see it yet. Both last as long as the stream has no leader
//! (seconds, for an election); `qistatus_cluster_held_webhooks` says how many are waiting.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, JetStreamLog};
use crate::backoff::Backoff;
use crate::domain::webhook::EventId;

/// What every held file starts with.
const MAGIC: &[u8; 16] = b"qistatus-held 1\n";
/// A held file's name ends with this; one set aside ends with [`DAMAGED`] instead.
const EXTENSION: &str = "webhook";
/// What a held file that did not read back is renamed to end with.
const DAMAGED: &str = "damaged";
/// How often the release looks for held files when nothing woke it (a start with files
/// left, a publish that failed).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A webhook waiting in `held/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldWebhook {
    /// The message id it is published with: its content hash.
    pub(crate) message_id: String,
    /// When this node received it, ms since the epoch.
    pub(crate) received_at: i64,
    /// Its verified body, as received.
    pub(crate) body: Bytes,
}

impl HeldWebhook {
    /// The file's bytes: [`MAGIC`], the message id (length-prefixed), the received time, the
    /// body (length-prefixed), then a CRC-32 of everything before it.
    fn encode(&self) -> Vec<u8> {
        let id = self.message_id.as_bytes();
        let mut bytes =
            Vec::with_capacity(MAGIC.len() + 1 + id.len() + 8 + 4 + self.body.len() + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.push(u8::try_from(id.len()).expect("a message id is a 64-digit hash"));
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(&self.received_at.to_be_bytes());
        let body_len = u32::try_from(self.body.len()).expect("a webhook body is under 4 GiB");
        bytes.extend_from_slice(&body_len.to_be_bytes());
        bytes.extend_from_slice(&self.body);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Reads a held file's bytes back; `None` if they are not exactly what
    /// [`HeldWebhook::encode`] wrote.
    fn decode(bytes: &[u8]) -> Option<HeldWebhook> {
        let (covered, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(covered).to_be_bytes() != crc {
            return None;
        }
        let rest = covered.strip_prefix(MAGIC.as_slice())?;
        let (&id_len, rest) = rest.split_first()?;
        let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
        let (received_at, rest) = rest.split_first_chunk::<8>()?;
        let (body_len, body) = rest.split_first_chunk::<4>()?;
        (body.len() == u32::from_be_bytes(*body_len) as usize).then(|| HeldWebhook {
            message_id: String::from_utf8_lossy(id).into_owned(),
            received_at: i64::from_be_bytes(*received_at),
            body: Bytes::copy_from_slice(body),
        })
    }
}

/// The webhooks this node holds, in `held/` of its data directory.
#[derive(Debug)]
pub struct Held {
    dir: PathBuf,
    /// How long a publish waits for the stream before its webhook is held.
    hold_after: Duration,
    max_bytes: u64,
    /// The number the next held file is named with: files are released in that order.
    next: AtomicU64,
    /// Body bytes held now, and how many webhooks.
    held: Mutex<(u64, u64)>,
    damaged: AtomicU64,
    wake: Notify,
}

impl Held {
    /// The default of `--cluster-hold-after`: half of QI's 10 s.
    pub const DEFAULT_HOLD_AFTER: Duration = Duration::from_secs(5);
    /// The default of `--cluster-hold-bytes`.
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// The held webhooks in `data_dir/held` (made if missing), counting those a previous run
    /// left there.
    pub(crate) fn open(data_dir: &Path, hold_after: Duration, max_bytes: u64) -> io::Result<Held> {
        let dir = data_dir.join("held");
        std::fs::create_dir_all(&dir)?;
        let held = Held {
            dir,
            hold_after,
            max_bytes,
            next: AtomicU64::new(0),
            held: Mutex::new((0, 0)),
            damaged: AtomicU64::new(0),
            wake: Notify::new(),
        };
        let waiting = held.waiting()?;
        let mut bytes = 0;
        for (_, path) in &waiting {
            bytes += std::fs::metadata(path)?.len();
        }
        let next = waiting.last().map_or(0, |(number, _)| number + 1);
        held.next.store(next, Ordering::Relaxed);
        *held.lock() = (bytes, waiting.len() as u64);
        if !waiting.is_empty() {
            tracing::warn!(
                held = waiting.len(),
                "webhooks held by an earlier run are waiting for the stream"
            );
        }
        Ok(held)
    }

    /// How long a publish waits for the stream before its webhook is held; `None` if this
    /// node never holds.
    pub(crate) fn hold_after(&self) -> Option<Duration> {
        (self.max_bytes > 0).then_some(self.hold_after)
    }

    /// Webhooks held now.
    pub(crate) fn count(&self) -> u64 {
        self.lock().1
    }

    /// Held files set aside because they did not read back, since the start.
    pub(crate) fn damaged(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a webhook durably; returns once its file and the file's name are on disk.
    /// Refused when `max_bytes` are held already, or the disk refuses.
    pub(crate) async fn hold(
        self: &Arc<Self>,
        event_id: EventId,
        body: Bytes,
        received_at: i64,
    ) -> Result<(), ClusterError> {
        let webhook = HeldWebhook {
            message_id: event_id.to_string(),
            received_at,
            body,
        };
        let bytes = webhook.encode();
        let size = bytes.len() as u64;
        {
            let mut held = self.lock();
            if held.0 + size > self.max_bytes {
                return Err(ClusterError::Publish(format!(
                    "the stream has not taken it within {:?}, and this node holds {} webhooks \
                     ({} bytes) for it already",
                    self.hold_after, held.1, held.0
                )));
            }
            if held.1 == 0 {
                // Once per episode; `qistatus_cluster_held_webhooks` counts them.
                tracing::warn!(
                    waited_ms = self.hold_after.as_millis() as u64,
                    "the stream does not take webhooks in time: holding them on this node \
                     until it does"
                );
            }
            *held = (held.0 + size, held.1 + 1);
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{number:020}.{EXTENSION}"));
        let written =
            tokio::task::spawn_blocking(move || crate::durable_file::write_whole(&path, &bytes))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
        if let Err(e) = written {
            let mut held = self.lock();
            *held = (held.0 - size, held.1 - 1);
            return Err(ClusterError::Publish(format!(
                "the stream has not taken it within {:?}, and holding it failed: {e}",
                self.hold_after
            )));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The held files now, by number.
    fn waiting(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut waiting = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == EXTENSION)
                && let Some(number) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
            {
                waiting.push((number, path));
            }
        }
        waiting.sort_unstable();
        Ok(waiting)
    }

    /// Reads the held file at `path`; one that does not read back is set aside.
    fn read(&self, path: &Path) -> io::Result<Option<HeldWebhook>> {
        let bytes = std::fs::read(path)?;
        if let Some(webhook) = HeldWebhook::decode(&bytes) {
            return Ok(Some(webhook));
        }
        let aside = path.with_extension(DAMAGED);
        std::fs::rename(path, &aside)?;
        self.damaged.fetch_add(1, Ordering::Relaxed);
        self.released(bytes.len() as u64);
        tracing::error!(
            file = %aside.display(),
            "a held webhook does not read back (its checksum does not match): set aside as \
             it is, not published; the sender's copy (QI's resend) is what can replace it"
        );
        Ok(None)
    }

    /// Removes a held file the stream took.
    fn remove(&self, path: &Path) -> io::Result<()> {
        let size = std::fs::metadata(path)?.len();
        std::fs::remove_file(path)?;
        if self.released(size) == 0 {
            tracing::info!("every held webhook is in the stream");
        }
        Ok(())
    }

    /// Counts a held file gone; returns how many are left.
    fn released(&self, size: u64) -> u64 {
        let mut held = self.lock();
        *held = (held.0.saturating_sub(size), held.1.saturating_sub(1));
        held.1
    }
}

/// Publishes every held webhook to the stream, in the order held, removing each once the
/// stream acknowledged it; until `stop`. A publish that fails is tried again, from the same
/// webhook, after a backoff.
pub(crate) async fn release(held: Arc<Held>, log: Arc<JetStreamLog>, stop: CancellationToken) {
    let mut backoff = Backoff::up_to(Duration::from_secs(5));
    loop {
        // The count is exact (files at the start, plus held, less released or set aside):
        // with none held, the directory is not listed again.
        let pass = if held.count() == 0 {
            Ok(())
        } else {
            release_waiting(&held, &log, &stop).await
        };
        let wait = match pass {
            Ok(()) => {
                backoff.reset();
                LOOK_AGAIN
            }
            Err(e) => {
                tracing::warn!(error = %e, held = held.count(), "held webhooks not released yet; trying again");
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = held.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over the held files.
async fn release_waiting(
    held: &Arc<Held>,
    log: &JetStreamLog,
    stop: &CancellationToken,
) -> Result<(), ClusterError> {
    let reading = held.clone();
    let waiting = tokio::task::spawn_blocking(move || reading.waiting())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        .map_err(|e| ClusterError::Publish(format!("cannot list held webhooks: {e}")))?;
    for (_, path) in waiting {
        if stop.is_cancelled() {
            return Ok(());
        }
        let (reading, at) = (held.clone(), path.clone());
        let webhook = tokio::task::spawn_blocking(move || reading.read(&at))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|e| ClusterError::Publish(format!("cannot read a held webhook: {e}")))?;
        let Some(webhook) = webhook else { continue };
        let published = log
            .publish_received(&webhook.message_id, webhook.body, webhook.received_at)
            .await?;
        tracing::debug!(
            stream_sequence = published.sequence,
            duplicate = published.duplicate,
            "a held webhook is in the stream"
        );
        let (removing, at) = (held.clone(), path.clone());
        tokio::task::spawn_blocking(move || removing.remove(&at))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|e| ClusterError::Publish(format!("cannot remove a released webhook: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> HeldWebhook {
        HeldWebhook {
            message_id: "ab".repeat(32),
            received_at: 1_700_000_000_123,
            body: Bytes::from_static(br#"{"webhook_type":"debt","status":"disbursed"}"#),
        }
    }

    #[test]
    fn a_held_webhook_reads_back_as_it_was_written() {
        let held = webhook();
        assert_eq!(HeldWebhook::decode(&held.encode()), Some(held));
    }

    #[test]
    fn a_held_file_with_any_byte_flipped_or_missing_does_not_read_back() {
        let bytes = webhook().encode();
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            assert_eq!(HeldWebhook::decode(&flipped), None, "byte {at} flipped");
        }
        for len in 0..bytes.len() {
            assert_eq!(HeldWebhook::decode(&bytes[..len]), None, "cut at {len}");
        }
    }

    #[tokio::test]
    async fn holding_stops_at_its_bound_and_a_restart_counts_what_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let one = webhook().encode().len() as u64;
        let held = Arc::new(Held::open(dir.path(), Duration::from_secs(5), 2 * one + 1).unwrap());
        let id = |n: u8| EventId([n; 32]);
        let body = webhook().body;
        held.hold(id(1), body.clone(), 1).await.unwrap();
        held.hold(id(2), body.clone(), 2).await.unwrap();
        let refused = held.hold(id(3), body.clone(), 3).await.unwrap_err();
        assert!(
            refused.to_string().contains("holds 2 webhooks"),
            "{refused}"
        );
        assert_eq!(held.count(), 2);

        let again = Held::open(dir.path(), Duration::from_secs(5), 2 * one + 1).unwrap();
        assert_eq!(again.count(), 2);
        let waiting = again.waiting().unwrap();
        assert_eq!(waiting.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 1]);
        let first = again.read(&waiting[0].1).unwrap().unwrap();
        assert_eq!(
            (first.message_id, first.received_at),
            (id(1).to_string(), 1)
        );
        // A file damaged on disk is set aside, not removed, and no longer counted.
        let mut bytes = std::fs::read(&waiting[1].1).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(&waiting[1].1, bytes).unwrap();
        assert_eq!(again.read(&waiting[1].1).unwrap(), None);
        assert_eq!((again.count(), again.damaged()), (1, 1));
        assert!(waiting[1].1.with_extension(DAMAGED).exists());
        assert_eq!(again.waiting().unwrap().len(), 1);
    }

    #[test]
    fn a_node_that_holds_nothing_never_waits_to_hold() {
        let dir = tempfile::tempdir().unwrap();
        let never = Held::open(dir.path(), Duration::from_secs(5), 0).unwrap();
        assert_eq!(never.hold_after(), None);
        let holds = Held::open(dir.path(), Duration::from_secs(5), 1).unwrap();
        assert_eq!(holds.hold_after(), Some(Duration::from_secs(5)));
    }
}
