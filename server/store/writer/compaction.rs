//! Retention: dropping log records older than a cutoff, run by the writer between two
//! batches so that it never races with a write.
//!
//! Operations and their history summaries are kept forever; what goes is the raw webhook
//! (its body is no longer served), the change feed before `compacted_through` (watchers
//! cannot resume from there), and whole log segments once nothing in them is needed: every
//! record in them compacted, everything in them applied and flushed to sled (a quarantined
//! webhook keeps its own copy in sled).
//!
//! Finding the cut reads the seek points, not the log: it jumps to the last seek point
//! received before the cutoff and reads at most [`SEEK_EVERY`] records from there to the
//! first one that is not. Trade-off: receive times between two seek points are taken to be
//! in order, as the writer stamps them; a promoted webhook keeps its older receive time and
//! is compacted with its neighbours, never before them.

use super::Compaction;
use crate::store::{Key, Meta, SEEK_EVERY, SeekPoint, Store, StoreError, Writes};

/// Drops up to `limit` log records received before `cutoff` (ms since the epoch), oldest
/// first: moves `compacted_through`, writes a seek point there (where later reads start)
/// and removes the ones before it; flushes; then deletes the log segments wholly before it.
pub(super) fn compact(store: &Store, cutoff: i64, limit: usize) -> Result<Compaction, StoreError> {
    let compacted_through = store.compacted_through()?;
    let most = compacted_through.saturating_add(limit as u64);
    // The last seek point before the cutoff, within the step.
    let mut cut: Option<(u64, SeekPoint)> = None;
    for point in store.seek_points_after(compacted_through) {
        let (sequence, point) = point?;
        if point.received_at >= cutoff || sequence > most {
            break;
        }
        cut = Some((sequence, point));
    }
    // From there, record by record, to the first one received after the cutoff.
    let mut more = false;
    let from = cut.map_or(compacted_through, |(s, _)| s);
    let scanned = store.logged_after(from, &mut |sequence, record, at| {
        if record.header.received_at >= cutoff {
            return Ok(false);
        }
        if sequence > most {
            more = true;
            return Ok(false);
        }
        cut = Some((
            sequence,
            SeekPoint {
                at,
                received_at: record.header.received_at,
            },
        ));
        Ok(true)
    });
    match scanned {
        // A damaged record's receive time cannot be trusted: retention stops before it, and
        // it stays for `salvage` and `verify` to name.
        Err(e) if e.is_damage() => {
            tracing::warn!(error = %e, "log compaction stops at a damaged record");
        }
        scanned => scanned?,
    }
    let Some((through, point)) = cut.filter(|(through, _)| *through > compacted_through) else {
        return Ok(Compaction {
            removed: 0,
            compacted_through,
            more: false,
        });
    };
    let mut writes = Writes::default();
    for old in store.seek_points_after(0) {
        let (sequence, _) = old?;
        if sequence >= through {
            break;
        }
        writes.delete(Key::SeekPoint(sequence));
    }
    writes.put(
        Key::SeekPoint(through),
        crate::store::record::encode(&point),
    );
    writes.put(
        Key::Meta(Meta::CompactedThrough),
        through.to_be_bytes().to_vec(),
    );
    store.apply(writes)?;
    // Flushed before any log segment goes: every record in it must be in sled's disk state.
    store.flush()?;
    // Whole segments before the one holding the last compacted record (the seek point's).
    let segments = store.log().release_before(&point.at)?;
    let removed = (through - compacted_through) as usize;
    tracing::info!(
        segments,
        removed,
        compacted_through = through,
        seek_every = SEEK_EVERY,
        "event log compacted"
    );
    Ok(Compaction {
        removed,
        compacted_through: through,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::Catalog;
    use crate::store::writer::plan::tests::{commit_at, webhook};

    /// 200 webhooks, the one at sequence `n` received at `n` seconds.
    fn store_of_200(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).expect("a fresh store");
        for n in 1..=200i64 {
            let body = webhook(&format!("k{n}"), "waiting_signature", "2024-01-01 10:00:00");
            commit_at(&store, &[body], n * 1_000);
        }
        store
    }

    #[test]
    fn retention_cuts_exactly_before_the_first_record_received_after_the_cutoff() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = store_of_200(dir.path());
        let catalog = Catalog::builtin();
        // Received before 150.5 s: sequences 1 to 150, past two seek points (64, 128).
        let done = compact(&store, 150_500, 10_000).unwrap();
        assert_eq!(
            (done.removed, done.compacted_through, done.more),
            (150, 150, false)
        );
        assert_eq!(store.compacted_through().unwrap(), 150);
        // The seek points before the cut are gone; one at the cut leads to what is kept.
        let points: Vec<u64> = store.seek_points_after(0).map(|p| p.unwrap().0).collect();
        assert_eq!(points, [150, 192]);
        let read = store.changes_after(&catalog, 150, 200, 1_000).unwrap();
        let sequences: Vec<u64> = read.changes.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, (151..=200).collect::<Vec<_>>());
        assert_eq!(read.changes[0].1.operation.key, "k151");
        // The bodies of compacted webhooks are no longer served; the others are.
        let bodies = store.bodies("debt", "k150").unwrap();
        assert_eq!(store.body(&bodies, 150).unwrap(), None);
        let bodies = store.bodies("debt", "k151").unwrap();
        assert!(store.body(&bodies, 151).unwrap().is_some());
        // Nothing more expired: nothing changes.
        let again = compact(&store, 150_500, 10_000).unwrap();
        assert_eq!((again.removed, again.compacted_through), (0, 150));
    }

    #[test]
    fn a_step_stops_at_its_limit_and_says_there_is_more() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = store_of_200(dir.path());
        let mut steps = Vec::new();
        loop {
            let step = compact(&store, i64::MAX, 70).unwrap();
            steps.push((step.removed, step.compacted_through, step.more));
            if !step.more {
                break;
            }
        }
        assert_eq!(steps, [(70, 70, true), (70, 140, true), (60, 200, false)]);
        assert!(
            store
                .changes_after(&Catalog::builtin(), 200, 200, 10)
                .unwrap()
                .changes
                .is_empty()
        );
    }
}
