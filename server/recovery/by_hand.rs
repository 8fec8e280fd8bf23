//! `qistatus-server recover`: one recovery over a window, asked by a person, who sees every
//! request and QI's every answer. It needs no store (the server may be running with it):
//! without `--key` it asks for every callback QI lists as failed in the window; with one, for
//! every callback of that operation's events (nothing says which qistatus holds; what it
//! holds arrives as a duplicate and changes nothing).

use std::sync::Arc;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::qitech_api::{EventQuery, QiApi, QiApiError, QiApiSettings, qi_datetime};

use super::{list_window, windows};

/// What a recovery by hand did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByHandReport {
    /// Listings asked for (one per window, each of one or more pages).
    pub windows: usize,
    /// Events QI listed.
    pub events: usize,
    /// Callbacks QI was asked to resend and accepted to.
    pub resent: usize,
}

/// Asks QI (as `settings` say) to resend what it failed to deliver between `since` and
/// `until` (ms since the epoch), or everything of the operation `key`; tells `say` each
/// request and answer. Stops at QI's first refusal (or its being out of reach), which it
/// returns.
pub async fn recover_by_hand(
    settings: &QiApiSettings,
    since: i64,
    until: i64,
    key: Option<&str>,
    mut say: impl FnMut(&str),
) -> Result<ByHandReport, QiApiError> {
    let api = QiApi::new(settings, Clock::system(), Arc::new(Metrics::new()))?;
    let mut report = ByHandReport::default();
    for window in windows(since, until) {
        let query = EventQuery {
            callback_status: key.is_none().then(|| "failed".to_owned()),
            origin_key: key.map(str::to_owned),
            start: window.0,
            end: window.1,
            ..EventQuery::default()
        };
        let what = match key {
            Some(key) => format!("the events of {key}"),
            None => "the events whose callback failed".to_owned(),
        };
        say(&format!(
            "asked QI for {what} from {} to {}",
            qi_datetime(window.0),
            qi_datetime(window.1)
        ));
        let (events, whole) = list_window(&api, &query)
            .await
            .inspect_err(|e| say(&format!("QI answered: {e}")))?;
        report.windows += 1;
        report.events += events.len();
        say(&format!(
            "QI listed {} event(s){}",
            events.len(),
            if whole {
                ""
            } else {
                " (more than qistatus reads from one window: run again)"
            }
        ));
        for event in &events {
            for callback in &event.callbacks {
                if key.is_none() && callback.callback_status != "failed" {
                    continue;
                }
                say(&format!(
                    "asked QI to resend {} callback {} of event {} ({})",
                    event.event_type,
                    callback.callback_key,
                    event.event_key,
                    callback.callback_status
                ));
                api.resend(&event.event_key, &callback.callback_key)
                    .await
                    .inspect_err(|e| say(&format!("QI answered: {e}")))?;
                say("QI accepted");
                report.resent += 1;
            }
        }
    }
    Ok(report)
}
