//! Retention: dropping log entries and change records older than a cutoff, run by the
//! writer between two batches so that it never races with a write.
//!
//! Operations and their history summaries are kept forever; what goes is the raw webhook,
//! its change record (watchers cannot resume from before `compacted_through`), and whole
//! log segments once nothing in them is needed: every webhook in them compacted, everything
//! in them applied and flushed to sled (a quarantined webhook keeps its own copy in sled).

use super::Compaction;
use crate::store::{Key, Meta, Store, StoreError, Writes};

/// Drops up to `limit` log entries received before `cutoff` (ms since the epoch) and their
/// change records, oldest first; flushes; then deletes payload segments wholly compacted.
pub(super) fn compact(store: &Store, cutoff: i64, limit: usize) -> Result<Compaction, StoreError> {
    let mut compacted_through = store.compacted_through()?;
    let mut expired = Vec::new();
    let mut more = false;
    for entry in store.event_entries() {
        let (sequence, entry) = entry?;
        if entry.received_at >= cutoff {
            break;
        }
        if expired.len() == limit {
            more = true;
            break;
        }
        expired.push(sequence);
    }
    let Some(&last) = expired.last() else {
        return Ok(Compaction {
            removed: 0,
            compacted_through,
            more: false,
        });
    };
    compacted_through = compacted_through.max(last);
    let mut writes = Writes::default();
    for &sequence in &expired {
        writes.delete(Key::Event(sequence));
    }
    writes.put(
        Key::Meta(Meta::CompactedThrough),
        compacted_through.to_be_bytes().to_vec(),
    );
    store.apply(writes)?;
    // Flushed before any log segment goes: every record in it must be in sled's disk state.
    store.flush()?;
    let segments = match store.event_entries().next().transpose()? {
        // Whole segments before the one holding the oldest retained webhook.
        Some((_, oldest)) => store.log().release_before(&oldest.payload)?,
        None => store.log().release_all_but_newest()?,
    };
    tracing::info!(
        segments,
        removed = expired.len(),
        compacted_through,
        "event log compacted"
    );
    Ok(Compaction {
        removed: expired.len(),
        compacted_through,
        more,
    })
}
