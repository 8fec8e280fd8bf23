//! The flow: how long each stage of an operation takes, how late QI's webhooks arrive, and
//! where the operations that started on a day are now. Pure: what one operation contributes
//! to the flow's counters ([`FlowMarks::of`]), the fixed buckets durations are counted in,
//! and the figures read back from counters ([`FlowReport`]).
//!
//! # What is counted, and why
//!
//! - **Stages.** An operation's stages are its history's statuses in event-time order (the
//!   order [`crate::domain::reconcile`] keeps), a repeat of the same status merged into the
//!   first: `waiting_signature` at 10:00, `signed` at 10:20, `disbursed` at 11:00 is
//!   `waiting_signature → signed` (20 min) and `signed → disbursed` (40 min), each counted on
//!   the day (UTC) the stage ended. And from its first status to each milestone it reached
//!   (the milestone's time is its earliest event time, as the reconciled operation says).
//! - **Event times, not receipt.** A stage is measured between the moments QI says things
//!   happened: measured at receipt, a stage would also count QI's delivery delay, which is its
//!   own figure (the lag, below). A webhook without an event time is in no stage (its moment
//!   is not known) and in no lag.
//! - **Late and out-of-order webhooks.** The counters are a function of each operation's set
//!   of webhooks, whatever their arrival order: when a webhook changes an operation, its old
//!   marks are taken away and its new ones added ([`FlowMarks::diff`]). A `signed` that
//!   arrives after `disbursed` turns `waiting_signature → disbursed` into the two stages above.
//! - **Delivery lag**: each webhook's receipt minus its event time, on the day it was
//!   received; a webhook whose event time is after its receipt (a clock ahead) counts 0.
//! - **Cohorts**: an operation belongs to the day (UTC) of its first event time (its first
//!   receipt when none has one). Counted by its phase now, and a failed one also by the status
//!   it stopped at: the last status before its failure.
//!
//! # Buckets, and their error
//!
//! Durations are counted in fixed buckets, so memory is bounded whatever the number of
//! operations: at most [`BUCKETS`] counters per (kind, day, stage). Bucket 0 holds what took
//! under a second; bucket `b` (1 to 107) holds `[2^((b-1)/4), 2^(b/4))` seconds; bucket 108
//! holds 2^27 s (4.25 years) and longer. Each spans a ratio of 2^(1/4) (1.19), and a
//! percentile is read as its bucket's geometric middle: within 9.1 % of the true value (the
//! nearest-rank percentile of the counted durations), whatever the count.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::reconcile::{Operation, Phase};

/// Buckets per series.
pub const BUCKETS: u8 = 109;
/// Buckets per doubling of a duration.
const PER_DOUBLING: f64 = 4.0;
/// A day, in ms.
pub const DAY_MS: i64 = 86_400_000;

/// The bucket a duration (ms) is counted in.
pub fn bucket_of(ms: i64) -> u8 {
    if ms < 1000 {
        return 0;
    }
    let seconds = ms as f64 / 1000.0;
    // The b with 2^((b-1)/4) <= seconds < 2^(b/4).
    let b = (seconds.log2() * PER_DOUBLING).floor() as i64 + 1;
    b.clamp(1, i64::from(BUCKETS) - 1) as u8
}

/// Where bucket `b` starts and ends, in seconds (`f64::INFINITY` for the last).
pub fn bucket_bounds(b: u8) -> (f64, f64) {
    match b {
        0 => (0.0, 1.0),
        b if b >= BUCKETS - 1 => (2f64.powf(f64::from(b - 1) / PER_DOUBLING), f64::INFINITY),
        b => (
            2f64.powf(f64::from(b - 1) / PER_DOUBLING),
            2f64.powf(f64::from(b) / PER_DOUBLING),
        ),
    }
}

/// The value a bucket stands for, in seconds: its geometric middle (half a second for the
/// first, the start of the last).
pub fn bucket_value(b: u8) -> f64 {
    match bucket_bounds(b) {
        (_, hi) if b == 0 => hi / 2.0,
        (lo, hi) if hi.is_infinite() => lo,
        (lo, hi) => (lo * hi).sqrt(),
    }
}

/// The UTC day (days since 1970-01-01) of a time in ms.
pub fn day_of(ms: i64) -> i32 {
    ms.div_euclid(DAY_MS) as i32
}

/// What a counter of the flow counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Series {
    /// Operations that went from status `from` to status `to`, by how long it took.
    Stage {
        /// The status left.
        from: String,
        /// The status reached.
        to: String,
    },
    /// Operations that reached a milestone, by how long after their first status.
    Milestone {
        /// The operation's first status.
        from: String,
        /// The milestone.
        milestone: String,
    },
    /// Webhooks, by how long after their event time they were received.
    Lag,
    /// Operations that started on the day, by their phase now, and the status a failed one
    /// stopped at (empty otherwise).
    Cohort {
        /// Their phase now.
        phase: Phase,
        /// The last status before the failure.
        stopped_at: String,
    },
}

/// One count of the flow: `series` on `day`, in `bucket` (0 for cohorts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    /// The UTC day it counts on.
    pub day: i32,
    /// What it counts.
    pub series: Series,
    /// Its duration's bucket.
    pub bucket: u8,
}

/// Everything one operation contributes to the flow's counters, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowMarks(Vec<Mark>);

impl FlowMarks {
    /// The marks of `op` (see the module docs).
    pub fn of(op: &Operation) -> FlowMarks {
        let mut marks = Vec::new();
        // The path: each status as it was first entered, in event-time order.
        let mut path: Vec<(&str, i64)> = Vec::new();
        for event in &op.history {
            let Some(at) = event.event_time else { continue };
            if path
                .last()
                .is_none_or(|(status, _)| *status != event.status)
            {
                path.push((&event.status, at));
            }
            marks.push(Mark {
                day: day_of(event.received_at),
                series: Series::Lag,
                bucket: bucket_of(event.received_at - at),
            });
        }
        for pair in path.windows(2) {
            let ((from, started), (to, ended)) = (pair[0], pair[1]);
            marks.push(Mark {
                day: day_of(ended),
                series: Series::Stage {
                    from: from.to_owned(),
                    to: to.to_owned(),
                },
                bucket: bucket_of(ended - started),
            });
        }
        if let Some(&(first, started)) = path.first() {
            for milestone in &op.milestones {
                let Some(reached) = milestone.reached_at else {
                    continue;
                };
                marks.push(Mark {
                    day: day_of(reached),
                    series: Series::Milestone {
                        from: first.to_owned(),
                        milestone: milestone.name.clone(),
                    },
                    bucket: bucket_of(reached - started),
                });
            }
        }
        let began = path
            .first()
            .map_or(op.first_received_at, |(_, started)| *started);
        let stopped_at = match op.phase {
            Phase::Failed => path
                .iter()
                .rev()
                .find(|(status, _)| *status != op.status)
                .map(|(status, _)| (*status).to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        marks.push(Mark {
            day: day_of(began),
            series: Series::Cohort {
                phase: op.phase,
                stopped_at,
            },
            bucket: 0,
        });
        marks.sort_unstable();
        FlowMarks(marks)
    }

    /// The marks.
    pub fn marks(&self) -> &[Mark] {
        &self.0
    }

    /// What changes in the counters when an operation's marks go from `before` (`None`: a
    /// new operation) to `after` (`None`: a removed one): each mark whose count changes, by
    /// how much.
    pub fn diff(before: Option<&FlowMarks>, after: Option<&FlowMarks>) -> Vec<(Mark, i64)> {
        let mut deltas: BTreeMap<&Mark, i64> = BTreeMap::new();
        for mark in before.map_or(&[][..], FlowMarks::marks) {
            *deltas.entry(mark).or_default() -= 1;
        }
        for mark in after.map_or(&[][..], FlowMarks::marks) {
            *deltas.entry(mark).or_default() += 1;
        }
        deltas
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .map(|(mark, delta)| (mark.clone(), delta))
            .collect()
    }
}

/// Counts by bucket: a series' distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<u8, u64>,
}

impl Histogram {
    /// Adds `count` to `bucket`.
    pub fn add(&mut self, bucket: u8, count: u64) {
        *self.counts.entry(bucket.min(BUCKETS - 1)).or_default() += count;
    }

    /// How many are counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `q` quantile (0 to 1), nearest-rank, in seconds, as its bucket's value
    /// ([`bucket_value`]); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&bucket, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(bucket));
            }
        }
        self.counts.keys().last().map(|&b| bucket_value(b))
    }

    /// The counts, by bucket, ascending.
    pub fn buckets(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        self.counts.iter().map(|(b, c)| (*b, *c))
    }
}

/// The percentiles a report gives of each distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// How many were counted.
    pub count: u64,
    /// Median, in seconds.
    pub p50: f64,
    /// 90th percentile, in seconds.
    pub p90: f64,
    /// 99th percentile, in seconds.
    pub p99: f64,
}

impl Percentiles {
    /// The percentiles of `histogram`; `None` when it is empty.
    pub fn of(histogram: &Histogram) -> Option<Percentiles> {
        Some(Percentiles {
            count: histogram.count(),
            p50: histogram.quantile(0.5)?,
            p90: histogram.quantile(0.9)?,
            p99: histogram.quantile(0.99)?,
        })
    }
}

/// A stage's figures in a report.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFigures {
    /// The status left (for a milestone: the operation's first status).
    pub from: String,
    /// The status (or milestone) reached.
    pub to: String,
    /// Whether `to` is a milestone.
    pub milestone: bool,
    /// Over the whole window.
    pub total: Percentiles,
    /// Day by day (those with any), ascending.
    pub by_day: Vec<(i32, Percentiles)>,
}

/// The operations that started on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cohort {
    /// The UTC day.
    pub day: i32,
    /// How many are in each phase now (phases with none left out), in [`Phase::ALL`] order.
    pub phases: Vec<(Phase, u64)>,
    /// Of the failed ones, how many stopped at each status (by count, descending).
    pub stopped_at: Vec<(String, u64)>,
}

/// The flow of one kind over a window of days.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowReport {
    /// Every stage and milestone with any count, most counted first.
    pub stages: Vec<StageFigures>,
    /// The delivery lag over the window (`None`: no webhook with an event time).
    pub lag: Option<Percentiles>,
    /// The lag day by day.
    pub lag_by_day: Vec<(i32, Percentiles)>,
    /// The cohorts of the window's days, ascending.
    pub cohorts: Vec<Cohort>,
}

impl FlowReport {
    /// The report from counters: (day, series, bucket, count), in any order.
    pub fn from_counts(counts: impl IntoIterator<Item = (i32, Series, u8, u64)>) -> FlowReport {
        let mut stages: BTreeMap<(String, String, bool), BTreeMap<i32, Histogram>> =
            BTreeMap::new();
        let mut lag: BTreeMap<i32, Histogram> = BTreeMap::new();
        let mut cohorts: BTreeMap<i32, Cohort> = BTreeMap::new();
        for (day, series, bucket, count) in counts {
            match series {
                Series::Stage { from, to } => stages
                    .entry((from, to, false))
                    .or_default()
                    .entry(day)
                    .or_default()
                    .add(bucket, count),
                Series::Milestone { from, milestone } => stages
                    .entry((from, milestone, true))
                    .or_default()
                    .entry(day)
                    .or_default()
                    .add(bucket, count),
                Series::Lag => lag.entry(day).or_default().add(bucket, count),
                Series::Cohort { phase, stopped_at } => {
                    let cohort = cohorts.entry(day).or_insert_with(|| Cohort {
                        day,
                        ..Cohort::default()
                    });
                    match cohort.phases.iter_mut().find(|(p, _)| *p == phase) {
                        Some((_, n)) => *n += count,
                        None => cohort.phases.push((phase, count)),
                    }
                    if phase == Phase::Failed && !stopped_at.is_empty() {
                        match cohort.stopped_at.iter_mut().find(|(s, _)| *s == stopped_at) {
                            Some((_, n)) => *n += count,
                            None => cohort.stopped_at.push((stopped_at, count)),
                        }
                    }
                }
            }
        }
        let by_day = |days: &BTreeMap<i32, Histogram>| -> (Histogram, Vec<(i32, Percentiles)>) {
            let mut total = Histogram::default();
            let mut daily = Vec::new();
            for (day, histogram) in days {
                for (bucket, count) in histogram.buckets() {
                    total.add(bucket, count);
                }
                if let Some(p) = Percentiles::of(histogram) {
                    daily.push((*day, p));
                }
            }
            (total, daily)
        };
        let mut stages: Vec<StageFigures> = stages
            .into_iter()
            .filter_map(|((from, to, milestone), days)| {
                let (total, by_day) = by_day(&days);
                Some(StageFigures {
                    from,
                    to,
                    milestone,
                    total: Percentiles::of(&total)?,
                    by_day,
                })
            })
            .collect();
        stages.sort_by(|a, b| {
            b.total
                .count
                .cmp(&a.total.count)
                .then_with(|| (a.milestone, &a.from, &a.to).cmp(&(b.milestone, &b.from, &b.to)))
        });
        let (lag_total, lag_by_day) = by_day(&lag);
        let cohorts = cohorts
            .into_values()
            .map(|mut cohort| {
                cohort
                    .phases
                    .sort_by_key(|(phase, _)| Phase::ALL.iter().position(|p| p == phase));
                cohort
                    .stopped_at
                    .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                cohort
            })
            .collect();
        FlowReport {
            stages,
            lag: Percentiles::of(&lag_total),
            lag_by_day,
            cohorts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::Catalog;
    use crate::domain::reconcile::{EventSummary, Reconciler};

    const HOUR: i64 = 3_600_000;
    /// 2024-01-01 00:00 UTC.
    const T0: i64 = 1_704_067_200_000;

    fn event(n: u8, status: &str, at: Option<i64>, received: i64) -> EventSummary {
        EventSummary::bare(n, status, at, received)
    }

    fn debt(events: Vec<EventSummary>) -> Operation {
        let catalog = Catalog::builtin();
        Reconciler::new(&catalog)
            .reconcile("debt", "d-1", events)
            .expect("an operation")
    }

    fn stages(marks: &FlowMarks) -> Vec<(String, String, u8)> {
        marks
            .marks()
            .iter()
            .filter_map(|m| match &m.series {
                Series::Stage { from, to } => Some((from.clone(), to.clone(), m.bucket)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn buckets_cover_every_duration_once_and_their_value_is_within_a_tenth() {
        assert_eq!(bucket_of(-5), 0);
        assert_eq!(bucket_of(999), 0);
        assert_eq!(bucket_of(1000), 1);
        for b in 1..BUCKETS - 1 {
            let (lo, hi) = bucket_bounds(b);
            assert_eq!(bucket_of((lo * 1000.0).ceil() as i64), b, "start of {b}");
            assert_eq!(bucket_of((hi * 1000.0) as i64 - 1), b, "end of {b}");
            assert!((hi / lo - 2f64.powf(0.25)).abs() < 1e-9);
            let value = bucket_value(b);
            assert!(value / lo <= 1.091 && hi / value <= 1.091, "bucket {b}");
        }
        assert_eq!(bucket_of(i64::MAX), BUCKETS - 1);
    }

    #[test]
    fn stages_follow_event_times_whatever_the_arrival_order() {
        let events = vec![
            event(1, "waiting_signature", Some(T0), T0 + 1000),
            event(2, "signed", Some(T0 + HOUR / 3), T0 + HOUR),
            event(3, "disbursed", Some(T0 + HOUR), T0 + 2 * HOUR),
        ];
        let in_order = FlowMarks::of(&debt(events.clone()));
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(FlowMarks::of(&debt(reversed)), in_order);
        assert_eq!(
            stages(&in_order),
            [
                ("signed".into(), "disbursed".into(), bucket_of(2 * HOUR / 3)),
                (
                    "waiting_signature".into(),
                    "signed".into(),
                    bucket_of(HOUR / 3)
                ),
            ]
        );
        // A repeat of a status is one stage; a webhook without an event time is in none.
        let mut more = events.clone();
        more.push(event(4, "signed", Some(T0 + HOUR / 2), T0 + HOUR));
        more.push(event(5, "signed", None, T0 + HOUR));
        assert_eq!(stages(&FlowMarks::of(&debt(more))), stages(&in_order));
    }

    #[test]
    fn a_late_webhook_replaces_the_stage_it_falls_in_by_two() {
        let early = debt(vec![
            event(1, "waiting_signature", Some(T0), T0),
            event(3, "disbursed", Some(T0 + HOUR), T0 + HOUR),
        ]);
        let late = debt(vec![
            event(1, "waiting_signature", Some(T0), T0),
            event(3, "disbursed", Some(T0 + HOUR), T0 + HOUR),
            event(2, "signed", Some(T0 + HOUR / 3), T0 + 5 * HOUR),
        ]);
        let (before, after) = (FlowMarks::of(&early), FlowMarks::of(&late));
        let diff = FlowMarks::diff(Some(&before), Some(&after));
        let stage = |from: &str, to: &str, took: i64| Mark {
            day: day_of(T0),
            series: Series::Stage {
                from: from.into(),
                to: to.into(),
            },
            bucket: bucket_of(took),
        };
        assert!(diff.contains(&(stage("waiting_signature", "disbursed", HOUR), -1)));
        assert!(diff.contains(&(stage("waiting_signature", "signed", HOUR / 3), 1)));
        assert!(diff.contains(&(stage("signed", "disbursed", 2 * HOUR / 3), 1)));
        // Its lag is its own: received 5 h after, less its event time.
        let lag = Mark {
            day: day_of(T0 + 5 * HOUR),
            series: Series::Lag,
            bucket: bucket_of(5 * HOUR - HOUR / 3),
        };
        assert!(diff.contains(&(lag, 1)), "{diff:?}");
        // Nothing else changed: the operation's cohort and phase are the same.
        assert_eq!(diff.len(), 4, "{diff:?}");
        // Adding and removing an operation are diffs too.
        let added: i64 = FlowMarks::diff(None, Some(&after))
            .iter()
            .map(|d| d.1)
            .sum();
        assert_eq!(added, after.marks().len() as i64);
        assert!(FlowMarks::diff(Some(&after), Some(&after)).is_empty());
    }

    #[test]
    fn a_failed_operation_is_counted_where_it_stopped_in_its_cohort() {
        let canceled = debt(vec![
            event(1, "waiting_signature", Some(T0 + HOUR), T0 + HOUR),
            event(2, "signed", Some(T0 + 2 * HOUR), T0 + 2 * HOUR),
            event(3, "canceled", Some(T0 + 30 * HOUR), T0 + 30 * HOUR),
        ]);
        let cohort: Vec<_> = FlowMarks::of(&canceled)
            .marks()
            .iter()
            .filter(|m| matches!(m.series, Series::Cohort { .. }))
            .cloned()
            .collect();
        assert_eq!(
            cohort,
            [Mark {
                day: day_of(T0),
                series: Series::Cohort {
                    phase: Phase::Failed,
                    stopped_at: "signed".into()
                },
                bucket: 0
            }]
        );
    }

    #[test]
    fn a_report_gives_nearest_rank_percentiles_of_hand_counted_durations() {
        // Ten debts signed after 1..=10 minutes, on one day; one disbursed a day later.
        let mut counts = Vec::new();
        for minutes in 1..=10 {
            counts.push((
                100,
                Series::Stage {
                    from: "waiting_signature".into(),
                    to: "signed".into(),
                },
                bucket_of(minutes * 60_000),
                1,
            ));
        }
        counts.push((
            101,
            Series::Stage {
                from: "signed".into(),
                to: "disbursed".into(),
            },
            bucket_of(DAY_MS),
            1,
        ));
        counts.push((
            100,
            Series::Cohort {
                phase: Phase::Failed,
                stopped_at: "signed".into(),
            },
            0,
            2,
        ));
        counts.push((
            100,
            Series::Cohort {
                phase: Phase::Active,
                stopped_at: String::new(),
            },
            0,
            8,
        ));
        let report = FlowReport::from_counts(counts);
        let signing = &report.stages[0];
        assert_eq!(
            (signing.from.as_str(), signing.to.as_str()),
            ("waiting_signature", "signed")
        );
        assert_eq!(signing.total.count, 10);
        // Nearest rank: p50 is the 5th (5 min), p90 the 9th (9 min), p99 the 10th (10 min).
        for (got, minutes) in [
            (signing.total.p50, 5.0),
            (signing.total.p90, 9.0),
            (signing.total.p99, 10.0),
        ] {
            let truth = minutes * 60.0;
            assert!((got / truth - 1.0).abs() <= 0.091, "{got} s for {truth} s");
        }
        assert_eq!(signing.by_day.len(), 1);
        assert_eq!(report.stages[1].total.count, 1);
        assert_eq!(
            report.cohorts,
            [Cohort {
                day: 100,
                phases: vec![(Phase::Active, 8), (Phase::Failed, 2)],
                stopped_at: vec![("signed".into(), 2)],
            }]
        );
        assert_eq!(report.lag, None);
    }
}
