//! The one flow question the API and the console ask: a kind and a window of whole UTC days,
//! checked once ([`FlowWindow::new`]), answered from the store's flow counters
//! ([`FlowWindow::answer`], off the async workers: a window is a range scan).

use crate::domain::catalog::canonical_kind;
use crate::domain::flow::{DAY_MS, FlowReport, day_of};
use crate::domain::webhook::check_name;
use crate::store::{Store, StoreError};

/// The longest window asked, in days: a year and a day (the answer reads every counter of
/// the window, a few thousand a day).
pub(crate) const MAX_DAYS: i32 = 366;
/// The window when none is given: the week up to today.
pub(crate) const DEFAULT_DAYS: i32 = 7;

/// Why a flow question, checked, has no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    /// The server runs with `--no-flow`.
    #[error("this server keeps no flow figures: it runs with --no-flow")]
    Off,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A flow question, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowWindow {
    /// The kind, canonical.
    pub(crate) kind: String,
    /// The first day (UTC days since 1970-01-01), included.
    pub(crate) first_day: i32,
    /// The last day, included.
    pub(crate) last_day: i32,
}

/// Why a flow question cannot be answered as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FlowWindowError {
    /// No kind, or one that is not a name.
    #[error("{0}")]
    Kind(String),
    /// The window ends before it starts.
    #[error("the window ends ({until}) before it starts ({since})")]
    Reversed {
        /// Its start, as asked.
        since: String,
        /// Its end, as asked.
        until: String,
    },
    /// The window is too long.
    #[error("the window spans {days} days; at most {MAX_DAYS} are answered at once")]
    TooLong {
        /// How many days it spans.
        days: i64,
    },
}

impl FlowWindow {
    /// The window of `kind` from the day of `since` to the day of `until` (ms; `until` by
    /// default now, `since` by default the week up to `until`).
    pub(crate) fn new(
        kind: &str,
        since: Option<i64>,
        until: Option<i64>,
        now: i64,
    ) -> Result<FlowWindow, FlowWindowError> {
        let kind = canonical_kind(kind);
        if kind.is_empty() {
            return Err(FlowWindowError::Kind("kind is required".into()));
        }
        check_name("kind", &kind).map_err(FlowWindowError::Kind)?;
        let last_day = day_of(until.unwrap_or(now));
        let first_day = match since {
            Some(since) => day_of(since),
            None => last_day.saturating_sub(DEFAULT_DAYS - 1),
        };
        let days = i64::from(last_day) - i64::from(first_day) + 1;
        if days < 1 {
            let text = |day: i32| {
                chrono::DateTime::from_timestamp_millis(i64::from(day) * DAY_MS)
                    .map_or_else(|| day.to_string(), |d| d.format("%Y-%m-%d").to_string())
            };
            return Err(FlowWindowError::Reversed {
                since: text(first_day),
                until: text(last_day),
            });
        }
        if days > i64::from(MAX_DAYS) {
            return Err(FlowWindowError::TooLong { days });
        }
        Ok(FlowWindow {
            kind,
            first_day,
            last_day,
        })
    }

    /// The start of the first day and the end of the last, ms since the epoch.
    pub(crate) fn bounds(&self) -> (i64, i64) {
        (
            i64::from(self.first_day) * DAY_MS,
            (i64::from(self.last_day) + 1) * DAY_MS,
        )
    }

    /// The flow of the window, from the store's counters, read on the blocking pool.
    pub(crate) async fn answer(&self, store: &Store) -> Result<FlowReport, FlowError> {
        if !store.flow_on() {
            return Err(FlowError::Off);
        }
        let (kind, days) = (self.kind.clone(), self.first_day..=self.last_day);
        Ok(store
            .read_async(move |store| store.flow(&kind, days))
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-10 15:00 UTC.
    const NOW: i64 = 1_710_082_800_000;

    #[test]
    fn the_default_window_is_the_week_up_to_today() {
        let window = FlowWindow::new("Debt", None, None, NOW).unwrap();
        assert_eq!(window.kind, "debt");
        assert_eq!(window.last_day - window.first_day + 1, DEFAULT_DAYS);
        let (start, end) = window.bounds();
        assert_eq!(end, (day_of(NOW) as i64 + 1) * DAY_MS);
        assert_eq!(end - start, 7 * DAY_MS);
    }

    #[test]
    fn a_window_is_whole_days_and_bad_ones_are_named() {
        let window = FlowWindow::new("debt", Some(NOW - DAY_MS), Some(NOW), NOW).unwrap();
        assert_eq!(window.last_day - window.first_day, 1);
        assert_eq!(
            FlowWindow::new("", None, None, NOW),
            Err(FlowWindowError::Kind("kind is required".into()))
        );
        let reversed = FlowWindow::new("debt", Some(NOW), Some(NOW - 2 * DAY_MS), NOW)
            .unwrap_err()
            .to_string();
        assert_eq!(
            reversed,
            "the window ends (2024-03-08) before it starts (2024-03-10)"
        );
        let long = FlowWindow::new("debt", Some(NOW - 400 * DAY_MS), None, NOW).unwrap_err();
        assert_eq!(long, FlowWindowError::TooLong { days: 401 });
        assert!(FlowWindow::new("debt\u{1}", None, None, NOW).is_err());
    }
}
