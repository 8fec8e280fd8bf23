//! The flow's counters (the `F` space): what every operation contributes
//! ([`crate::domain::flow::FlowMarks`]), kept by every write of an operation in the same
//! atomic batch, and read back by (kind, window of days).
//!
//! Guarantees: the counters are a function of the stored operations (each write adds the
//! difference between an operation's marks before and after it; rebuild does the same), so
//! they survive restarts, agree on every node of a cluster (which store the same operations),
//! and a question reads only the window's counters, never the operations. A store written
//! before the flow existed is counted once, at its first open ([`Store::ensure_flow`]).
//!
//! Trade-off: a counter per (kind, day, series, bucket) with any count. A day of a kind holds
//! at most (stages + milestones + 1) × 109 + cohorts counters, whatever the number of
//! operations; each webhook changes a few of them (its stages, its lag, its cohort), a read
//! and a write each, measured in the benchmark harness (ingest with and without the flow).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use super::keys::{decode_flow, flow_prefix};
use super::record::u64_from_be;
use super::{Key, Meta, Store, StoreError, Writes};
use crate::domain::flow::{BUCKETS, FlowMarks, FlowReport, Series};

/// Most (kind, series) pairs [`FlowSeen`] keeps; stages of statuses past it are not seen
/// (the stored counters still count them).
const MAX_SEEN_SERIES: usize = 4096;

/// Stage durations and lags as the writer saw them since the start, each added once (what
/// Prometheus' histograms report: a count that only grows). A late webhook that splits a
/// stage adds its two new stages here and takes nothing away; the stored counters (and every
/// answer read from them) take the old one away.
#[derive(Debug, Default)]
pub struct FlowSeen {
    series: Mutex<HashMap<(String, Series), Vec<u64>>>,
}

impl FlowSeen {
    fn add(&self, kind: &str, series: &Series, bucket: u8, count: u64) {
        let mut seen = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let key = (kind.to_owned(), series.clone());
        let full = seen.len() >= MAX_SEEN_SERIES;
        let counts = match seen.get_mut(&key) {
            Some(counts) => counts,
            None if full => return,
            None => seen.entry(key).or_insert_with(|| vec![0; BUCKETS.into()]),
        };
        counts[usize::from(bucket.min(BUCKETS - 1))] += count;
    }

    /// Every (kind, series) seen, with its count per bucket.
    pub fn snapshot(&self) -> Vec<(String, Series, Vec<u64>)> {
        let seen = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = seen
            .iter()
            .map(|((kind, series), counts)| (kind.clone(), series.clone(), counts.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// Adds to `writes` the change of an operation's flow counters from `before` to `after`
/// (`None`: not stored), and tells `seen` of stages and lags added.
pub(crate) fn put_flow(
    writes: &mut Writes,
    seen: &FlowSeen,
    kind: &str,
    before: Option<&FlowMarks>,
    after: Option<&FlowMarks>,
) {
    for (mark, delta) in FlowMarks::diff(before, after) {
        writes.add_count(
            Key::Flow {
                kind,
                day: mark.day,
                series: &mark.series,
                bucket: mark.bucket,
            },
            delta,
        );
        if delta > 0 && !matches!(mark.series, Series::Cohort { .. }) {
            seen.add(kind, &mark.series, mark.bucket, delta.unsigned_abs());
        }
    }
}

impl Store {
    /// Turns the flow's counters on or off for this process (`--no-flow`). On: counters that
    /// are not known to be complete (a store written before the flow existed, or by a run
    /// with it off) are counted again from the operations, a scan, once. Off: no write keeps
    /// them, and the store's mark that they are complete is removed first, so that turning
    /// them on again counts them again.
    pub fn set_flow(&self, on: bool) -> Result<(), StoreError> {
        if on {
            self.ensure_flow()?;
        } else {
            let mut writes = Writes::default();
            writes.delete(Key::Meta(Meta::FlowReady));
            writes.apply(&self.trees.all)?;
        }
        self.flow_on.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether writes keep the flow's counters.
    pub fn flow_on(&self) -> bool {
        self.flow_on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts every operation's flow, unless the counters are marked complete: they are
    /// cleared first (a run with the flow off may have left some), then counted from the
    /// operations; from then on every change keeps them.
    fn ensure_flow(&self) -> Result<(), StoreError> {
        if self.get(Key::Meta(Meta::FlowReady))?.is_some() {
            return Ok(());
        }
        // Cleared in a batch of its own: a counter's change is added to its stored value
        // when its batch is applied, which must then be the cleared one.
        let mut clearing = Writes::default();
        for kv in self.trees.flow.iter() {
            let (key, _) = kv?;
            clearing.delete_raw(super::SpaceId::Flow, &key);
        }
        clearing.apply(&self.trees.all)?;
        let mut writes = Writes::default();
        let seen = FlowSeen::default();
        let mut counted = 0u64;
        for op in self.operations() {
            let op = op?;
            put_flow(
                &mut writes,
                &seen,
                &op.kind,
                None,
                Some(&FlowMarks::of(&op)),
            );
            counted += 1;
        }
        writes.put(Key::Meta(Meta::FlowReady), &[1u8][..]);
        writes.apply(&self.trees.all)?;
        if counted > 0 {
            tracing::info!(
                operations = counted,
                "counted the flow of every stored operation"
            );
        }
        Ok(())
    }

    /// The flow of `kind` over `days` (UTC days since 1970-01-01), from its counters.
    pub fn flow(&self, kind: &str, days: RangeInclusive<i32>) -> Result<FlowReport, StoreError> {
        let (first, last) = (*days.start(), *days.end());
        if first > last {
            return Ok(FlowReport::default());
        }
        let start = std::ops::Bound::Included(flow_prefix(kind, first));
        let end = match last.checked_add(1) {
            Some(next) => std::ops::Bound::Excluded(flow_prefix(kind, next)),
            None => std::ops::Bound::Included(flow_prefix(kind, last)),
        };
        let mut counts = Vec::new();
        for kv in self.trees.flow.range(start, end) {
            let (key, value) = kv?;
            let (day, series, bucket) = decode_flow(&key).ok_or_else(|| StoreError::Corrupt {
                tree: "flow",
                reason: "a flow counter whose key does not decode".into(),
            })?;
            counts.push((day, series, bucket, u64_from_be(&value, "flow")?));
        }
        Ok(FlowReport::from_counts(counts))
    }

    /// Stage durations and lags as this process's writer saw them (for Prometheus).
    pub(crate) fn flow_seen(&self) -> &FlowSeen {
        &self.flow_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reconcile::Phase;

    #[test]
    fn every_flow_key_reads_back_as_it_was_written() {
        let series = [
            Series::Stage {
                from: "waiting_signature".into(),
                to: "signed".into(),
            },
            Series::Milestone {
                from: "waiting_signature".into(),
                milestone: "disbursed".into(),
            },
            Series::Lag,
            Series::Cohort {
                phase: Phase::Failed,
                stopped_at: "signed".into(),
            },
            Series::Cohort {
                phase: Phase::Active,
                stopped_at: String::new(),
            },
        ];
        for series in &series {
            for day in [i32::MIN, -1, 0, 19_723, i32::MAX] {
                for bucket in [0, 1, 54, BUCKETS - 1] {
                    let key = Key::Flow {
                        kind: "debt",
                        day,
                        series,
                        bucket,
                    };
                    assert_eq!(
                        decode_flow(&key.body()),
                        Some((day, series.clone(), bucket)),
                        "{key:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn days_sort_as_the_keys_do() {
        let days = [i32::MIN, -2, -1, 0, 1, 19_723, i32::MAX];
        for pair in days.windows(2) {
            assert!(flow_prefix("debt", pair[0]) < flow_prefix("debt", pair[1]));
        }
    }

    #[test]
    fn what_was_seen_is_bounded_and_only_grows() {
        let seen = FlowSeen::default();
        let stage = Series::Stage {
            from: "a".into(),
            to: "b".into(),
        };
        seen.add("debt", &stage, 3, 2);
        seen.add("debt", &stage, 3, 1);
        assert_eq!(seen.snapshot()[0].2[3], 3);
        for n in 0..MAX_SEEN_SERIES + 10 {
            seen.add(&format!("k{n}"), &Series::Lag, 0, 1);
        }
        assert_eq!(seen.snapshot().len(), MAX_SEEN_SERIES);
    }
}
