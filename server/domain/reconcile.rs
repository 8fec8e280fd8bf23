//! Reconciliation: the status of an operation, derived from the *set* of its webhooks.
//!
//! QI Tech delivers webhooks at least once and in no particular order. qistatus therefore
//! never asks "what came last?" but "which webhook wins?", under a total order that depends
//! only on the webhooks' contents and the catalog. Any delivery order, with any repetition,
//! gives the same operation.
//!
//! # The rule
//!
//! Each webhook is classified by the catalog, using its status (or, for kinds whose status
//! defers to an outcome field, that outcome: a `processed` card-settlement query is
//! classified by `data.response_data.slc_status`). The winner, which sets the operation's
//! `status`, `phase`, `detail` and `event_time`, is then chosen from the set:
//!
//! 1. **An end status beats every stage**, and a stage the catalog knows beats a status it
//!    does not know.
//! 2. **Between end statuses**: first, an end status that another one in the set supersedes
//!    (the catalog's `supersedes`, e.g. `canceled_permanently` over `canceled`) is out; a
//!    supersession applies to the statuses it names and nothing else. Among the rest, the
//!    later event time wins; at the same event time, the catalog's `end_precedence` decides
//!    (`canceled` before `settled`), then the content hash.
//! 3. **Between stages**: the later stage in the flow wins, so a late webhook never moves an
//!    operation back; then the later event time, then the content hash. Stages the catalog
//!    says the flow loops between (its `loops`) rank alike, so there the later event time
//!    decides.
//! 4. **Statuses the catalog does not know** are placed by event time among themselves. They
//!    never displace a known status: they are kept in history until the catalog learns them
//!    (`--catalog` and `qistatus-server rebuild`).
//!
//! Every step depends only on the set, never on arrival: the content hash ([`EventId`])
//! breaks the last tie.
//!
//! The phase follows the winner: `Succeeded` or `Failed` for an end status, `Active` for a
//! stage the catalog lists as `active` (a disbursed or opened debt), else `Pending`.
//! `version` and `event_count` count the distinct webhooks (each one changes the operation),
//! `first_received_at`/`updated_at` are the least and greatest receive times, and `history`
//! lists every distinct webhook ordered by (event time, precedence).
//!
//! Example: a debt that received `waiting_signature`, `disbursed` and then, late,
//! `waiting_balance_block` is `disbursed`; one that also received `canceled` is `canceled`
//! (failed), whatever the order the four arrived in.

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, EndOutcome, StatusClass};
use super::webhook::{EventId, FactValue, WebhookEnvelope};

/// The coarse state of an operation, as a business user means it.
///
/// Stored records encode a phase by its position in this list: new phases are added at the
/// end, never inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// On its way: at a stage before it is live (or at a status the catalog does not know).
    Pending,
    /// Ended in success (a debt settled or finished, an account opened).
    Succeeded,
    /// Ended in failure (rejected, canceled).
    Failed,
    /// Live and running: at a stage the catalog calls active (a debt disbursed or opened,
    /// which for debts QI Tech does not collect is as far as webhooks go).
    Active,
}

impl Phase {
    /// Every phase, in a stable order.
    pub const ALL: [Phase; 4] = [
        Phase::Pending,
        Phase::Active,
        Phase::Succeeded,
        Phase::Failed,
    ];

    /// The lower-case name used in logs and CLI output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Active => "active",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }
}

/// What an operation keeps of each distinct webhook, forever (raw payloads may be compacted
/// away by retention; this summary never is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    /// Position in the event log.
    pub sequence: u64,
    /// Content identifier.
    pub event_id: EventId,
    /// Canonical status.
    pub status: String,
    /// Outcome field value, for kinds whose status defers to one.
    pub outcome: Option<String>,
    /// Reason or outcome text; empty when none.
    pub detail: String,
    /// Event time, ms since the epoch.
    pub event_time: Option<i64>,
    /// Receive time, ms since the epoch.
    pub received_at: i64,
    /// The catalog's facts this webhook carries ([`crate::domain::webhook::facts`]).
    pub facts: Vec<(String, FactValue)>,
}

#[cfg(test)]
impl EventSummary {
    /// Webhook `n` (its sequence, and its content hash `[n; 32]`) with nothing but a status,
    /// an event time and a receive time: what tests build histories of.
    pub(crate) fn bare(
        n: u8,
        status: &str,
        event_time: Option<i64>,
        received_at: i64,
    ) -> EventSummary {
        EventSummary {
            sequence: u64::from(n),
            event_id: EventId([n; 32]),
            status: status.into(),
            outcome: None,
            detail: String::new(),
            event_time,
            received_at,
            facts: Vec::new(),
        }
    }
}

impl EventSummary {
    /// The summary of a normalized webhook stored at `sequence`, with the `facts` read from
    /// its body.
    pub fn new(
        envelope: &WebhookEnvelope,
        sequence: u64,
        received_at: i64,
        facts: Vec<(String, FactValue)>,
    ) -> EventSummary {
        EventSummary {
            sequence,
            event_id: envelope.event_id,
            status: envelope.status.clone(),
            outcome: envelope.outcome.clone(),
            detail: envelope.detail.clone(),
            event_time: envelope.event_time,
            received_at,
            facts,
        }
    }
}

/// A business fact about an operation that, once reached, stays reached (a debt was
/// disbursed), whatever arrives later or in which order: the catalog says which statuses
/// reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    /// Its name in the catalog (e.g. `disbursed`).
    pub name: String,
    /// The earliest event time among the webhooks that reach it (`None` when none has one).
    pub reached_at: Option<i64>,
}

/// The reconciled state of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Canonical kind.
    pub kind: String,
    /// QI Tech's key.
    pub key: String,
    /// Status of the winning webhook.
    pub status: String,
    /// Phase of the winning webhook.
    pub phase: Phase,
    /// Detail of the winning webhook.
    pub detail: String,
    /// Event time of the winning webhook.
    pub event_time: Option<i64>,
    /// Least receive time, ms since the epoch.
    pub first_received_at: i64,
    /// Greatest receive time, ms since the epoch.
    pub updated_at: i64,
    /// Number of changes: one per distinct webhook.
    pub version: u64,
    /// Greatest sequence among the webhooks.
    pub last_sequence: u64,
    /// Every distinct webhook, ordered by (event time, precedence).
    pub history: Vec<EventSummary>,
    /// When end statuses disagree at the winner's event time (a `settled` and a `canceled`
    /// sent for the same moment): all of them, sorted, the winner included. Empty otherwise.
    pub conflict: Vec<String>,
    /// The milestones reached, in the catalog's order.
    pub milestones: Vec<Milestone>,
    /// The catalog's facts, each from the latest webhook that has it (by event time, then
    /// precedence), in name order.
    pub facts: Vec<(String, FactValue)>,
}

#[cfg(test)]
impl Operation {
    /// An operation of one webhook with nothing but its kind, key, status and phase: what
    /// tests build on with `..Operation::bare(...)`.
    pub(crate) fn bare(kind: &str, key: &str, status: &str, phase: Phase) -> Operation {
        Operation {
            kind: kind.into(),
            key: key.into(),
            status: status.into(),
            phase,
            detail: String::new(),
            event_time: None,
            first_received_at: 0,
            updated_at: 0,
            version: 1,
            last_sequence: 1,
            history: Vec::new(),
            conflict: Vec::new(),
            milestones: Vec::new(),
            facts: Vec::new(),
        }
    }
}

impl Operation {
    /// The operation this one is a part of, as (kind, key), when the catalog says its kind
    /// is part of another ([`crate::domain::catalog::KindSpec::part_of`]) and it carries the
    /// fact that names it: an installment whose payment named its debt.
    pub fn part_of<'a>(&'a self, catalog: &'a Catalog) -> Option<(&'a str, &'a str)> {
        let part_of = catalog.kind(&self.kind)?.part_of.as_ref()?;
        self.facts.iter().find_map(|(name, value)| match value {
            FactValue::Text(key) if *name == part_of.fact => {
                Some((part_of.kind.as_str(), key.as_str()))
            }
            _ => None,
        })
    }

    /// The operation without its history (what lists and watchers carry).
    pub fn without_history(&self) -> Operation {
        Operation {
            kind: self.kind.clone(),
            key: self.key.clone(),
            status: self.status.clone(),
            phase: self.phase,
            detail: self.detail.clone(),
            event_time: self.event_time,
            first_received_at: self.first_received_at,
            updated_at: self.updated_at,
            version: self.version,
            last_sequence: self.last_sequence,
            history: Vec::new(),
            conflict: self.conflict.clone(),
            milestones: self.milestones.clone(),
            facts: self.facts.clone(),
        }
    }
}

/// Where a webhook stands, compared field by field: the order among stages and unknown
/// statuses, and the order of history entries. Between end statuses the winner is chosen
/// with supersession first (see the module docs), which no single key can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    /// 2 for an end status, 1 for a known stage, 0 for an unknown status.
    pub tier: u8,
    /// Stage position, or `end_precedence` rank of an end status.
    pub rank: u32,
    /// Event time; `None` is earliest.
    pub event_time: Option<i64>,
    /// Content hash: the final tie-break.
    pub event_id: EventId,
}

/// Applies the rule of the module docs under one catalog.
#[derive(Debug, Clone, Copy)]
pub struct Reconciler<'a> {
    catalog: &'a Catalog,
}

impl<'a> Reconciler<'a> {
    /// A reconciler for `catalog`.
    pub fn new(catalog: &'a Catalog) -> Self {
        Reconciler { catalog }
    }

    /// How the catalog classifies a webhook of `kind`.
    pub fn classify(&self, kind: &str, event: &EventSummary) -> StatusClass {
        self.catalog.classify(kind, self.status_for_class(event))
    }

    /// The time `event` is ordered at: its event time, unless that is later than its receipt
    /// by more than the catalog allows (then its receive time: a far-future date cannot pin
    /// a status).
    pub fn ordering_time(&self, event: &EventSummary) -> Option<i64> {
        let ahead_ms = i64::from(self.catalog.max_event_time_ahead_seconds) * 1000;
        event.event_time.map(|t| {
            if t > event.received_at.saturating_add(ahead_ms) {
                event.received_at
            } else {
                t
            }
        })
    }

    /// Whether `event`'s time is past what the catalog believes (see [`Self::ordering_time`]).
    pub fn is_ahead(&self, event: &EventSummary) -> bool {
        self.ordering_time(event) != event.event_time
    }

    /// Where a webhook of `kind` stands in the total order.
    pub fn precedence(&self, kind: &str, event: &EventSummary) -> Precedence {
        let (tier, rank) = match self.classify(kind, event) {
            StatusClass::End { rank, .. } => (2, rank),
            StatusClass::Stage(position) => (1, position),
            StatusClass::Unknown => (0, 0),
        };
        Precedence {
            tier,
            rank,
            event_time: self.ordering_time(event),
            event_id: event.event_id,
        }
    }

    /// The operation of `kind`/`key` made of `events` (which must be distinct), or `None`
    /// when there are none. Depends only on the set of events, not their order.
    pub fn reconcile(
        &self,
        kind: &str,
        key: &str,
        mut events: Vec<EventSummary>,
    ) -> Option<Operation> {
        events.sort_by_cached_key(|e| (self.ordering_time(e), self.precedence(kind, e)));
        events.dedup_by_key(|e| e.event_id);
        let winner = self.winner(kind, &events)?;
        let conflict = self.conflict(kind, &events, winner);
        let milestones = self.milestones(kind, &events);
        // `events` is sorted by (event time, precedence): the last value of a fact wins,
        // except for the facts the catalog sums.
        let mut facts: std::collections::BTreeMap<String, FactValue> = events
            .iter()
            .flat_map(|e| e.facts.iter().cloned())
            .collect();
        for name in self.catalog.kind(kind).iter().flat_map(|s| &s.sums) {
            let values =
                events
                    .iter()
                    .flat_map(|e| &e.facts)
                    .filter_map(|(n, value)| match value {
                        FactValue::Number(x) if n == name => Some(*x),
                        _ => None,
                    });
            if let Some(total) = decimal_sum(values) {
                facts.insert(name.clone(), FactValue::Number(total));
            }
        }
        let phase = match self.classify(kind, winner) {
            StatusClass::End {
                outcome: EndOutcome::Success,
                ..
            } => Phase::Succeeded,
            StatusClass::End {
                outcome: EndOutcome::Failure,
                ..
            } => Phase::Failed,
            StatusClass::Stage(_)
                if self.catalog.is_active(kind, self.status_for_class(winner)) =>
            {
                Phase::Active
            }
            StatusClass::Stage(_) | StatusClass::Unknown => Phase::Pending,
        };
        Some(Operation {
            kind: kind.to_owned(),
            key: key.to_owned(),
            status: winner.status.clone(),
            phase,
            detail: winner.detail.clone(),
            event_time: winner.event_time,
            first_received_at: events.iter().map(|e| e.received_at).min()?,
            updated_at: events.iter().map(|e| e.received_at).max()?,
            version: events.len() as u64,
            last_sequence: events.iter().map(|e| e.sequence).max()?,
            history: events,
            conflict,
            milestones,
            facts: facts.into_iter().collect(),
        })
    }

    /// The webhook that sets the operation's status (see the module docs).
    fn winner<'e>(&self, kind: &str, events: &'e [EventSummary]) -> Option<&'e EventSummary> {
        let ends: Vec<(&EventSummary, &str, Precedence)> = events
            .iter()
            .map(|e| (e, self.status_for_class(e), self.precedence(kind, e)))
            .filter(|(_, _, p)| p.tier == 2)
            .collect();
        if ends.is_empty() {
            return events.iter().max_by_key(|e| self.precedence(kind, e));
        }
        // The catalog's supersession has no cycles, so some end status is always left.
        ends.iter()
            .filter(|(_, status, _)| {
                !ends
                    .iter()
                    .any(|(_, other, _)| self.catalog.supersedes(kind, other, status))
            })
            .max_by_key(|(_, _, p)| (p.event_time, p.rank, p.event_id))
            .map(|(e, _, _)| *e)
    }

    /// The end statuses that disagree with an end-status `winner` at its event time, winner
    /// included, when there is more than one; none are superseded by another in the set.
    /// Webhooks without a time tie with each other: two end statuses, neither dated, are a
    /// conflict too (the declared precedence, or the hash, picked one; a person should know).
    fn conflict(&self, kind: &str, events: &[EventSummary], winner: &EventSummary) -> Vec<String> {
        if self.precedence(kind, winner).tier != 2 {
            return Vec::new();
        }
        let ends: Vec<&str> = events
            .iter()
            .filter(|e| self.precedence(kind, e).tier == 2)
            .map(|e| self.status_for_class(e))
            .collect();
        let mut statuses: Vec<String> = events
            .iter()
            .filter(|e| {
                self.ordering_time(e) == self.ordering_time(winner)
                    && self.precedence(kind, e).tier == 2
            })
            .map(|e| self.status_for_class(e))
            .filter(|s| {
                !ends
                    .iter()
                    .any(|other| self.catalog.supersedes(kind, other, s))
            })
            .map(str::to_owned)
            .collect();
        statuses.sort();
        statuses.dedup();
        if statuses.len() > 1 {
            statuses
        } else {
            Vec::new()
        }
    }

    /// The milestones `events` reach, each with the earliest event time that reaches it.
    fn milestones(&self, kind: &str, events: &[EventSummary]) -> Vec<Milestone> {
        let Some(spec) = self.catalog.kind(kind) else {
            return Vec::new();
        };
        spec.milestones
            .keys()
            .filter_map(|name| {
                let reaching: Vec<&EventSummary> = events
                    .iter()
                    .filter(|e| self.catalog.reaches(kind, name, self.status_for_class(e)))
                    .collect();
                (!reaching.is_empty()).then(|| Milestone {
                    name: name.clone(),
                    reached_at: reaching.iter().filter_map(|e| self.ordering_time(e)).min(),
                })
            })
            .collect()
    }

    /// The status a webhook is classified by: its outcome when the kind defers to one.
    fn status_for_class<'e>(&self, event: &'e EventSummary) -> &'e str {
        event.outcome.as_deref().unwrap_or(&event.status)
    }

    /// `current` with one more distinct event (or a new operation when `current` is `None`).
    pub fn apply(
        &self,
        current: Option<Operation>,
        kind: &str,
        key: &str,
        event: EventSummary,
    ) -> Operation {
        let mut events = current.map(|op| op.history).unwrap_or_default();
        events.push(event);
        self.reconcile(kind, key, events)
            .expect("reconciling a non-empty list of events yields an operation")
    }
}

/// The sum of `values` (`None` when there are none), added in decimal, as the amounts were
/// written: refunds of 0.1, 0.2 and 0.3 total 0.6 in every order, where floating-point
/// addition gives 0.6000000000000001 in some. A value with more than 12 decimals (no QI
/// amount has more than 8) is added as a float, in `values`' order, which is the same for
/// every delivery order.
fn decimal_sum(values: impl Iterator<Item = f64>) -> Option<f64> {
    /// `x` as (digits, decimals): 12.5 is (125, 1). Rust writes an `f64` in its shortest
    /// decimal form that reads back the same, and never in exponent form.
    fn decimal(x: f64) -> Option<(i128, u32)> {
        let text = format!("{x}");
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if !x.is_finite() || fraction.len() > 12 || whole.len() + fraction.len() > 30 {
            return None;
        }
        let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some((
            if negative { -digits } else { digits },
            fraction.len() as u32,
        ))
    }
    let values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    let float_sum = || values.iter().sum::<f64>();
    let Some(parts) = values
        .iter()
        .map(|&x| decimal(x))
        .collect::<Option<Vec<_>>>()
    else {
        return Some(float_sum());
    };
    let scale = parts
        .iter()
        .map(|&(_, decimals)| decimals)
        .max()
        .unwrap_or(0);
    let total = parts.iter().try_fold(0i128, |total, &(digits, decimals)| {
        total.checked_add(digits.checked_mul(10i128.checked_pow(scale - decimals)?)?)
    });
    let Some(total) = total else {
        return Some(float_sum());
    };
    let magnitude = format!(
        "{:0>width$}",
        total.unsigned_abs(),
        width = scale as usize + 1
    );
    let (whole, fraction) = magnitude.split_at(magnitude.len() - scale as usize);
    let sign = if total < 0 { "-" } else { "" };
    format!("{sign}{whole}.{fraction}")
        .trim_end_matches('.')
        .parse()
        .ok()
        .or_else(|| Some(float_sum()))
}

#[cfg(test)]
mod tests {
    use super::{Catalog, FactValue, Operation, Phase, decimal_sum};

    #[test]
    fn an_installment_is_part_of_the_debt_its_payment_named_and_nothing_else_is() {
        let catalog = Catalog::builtin();
        let mut installment =
            Operation::bare("installment.status_change", "i-1", "paid", Phase::Succeeded);
        // Before its payment came: no debt named, part of nothing.
        assert_eq!(installment.part_of(&catalog), None);
        installment.facts = vec![("debt_key".into(), FactValue::Text("d-1".into()))];
        assert_eq!(installment.part_of(&catalog), Some(("debt", "d-1")));
        // A number where the key should be names nothing.
        installment.facts = vec![("debt_key".into(), FactValue::Number(1.0))];
        assert_eq!(installment.part_of(&catalog), None);
        // A kind that is part of nothing, whatever its facts.
        let mut debt = Operation::bare("debt", "d-1", "disbursed", Phase::Active);
        debt.facts = vec![("debt_key".into(), FactValue::Text("d-2".into()))];
        assert_eq!(debt.part_of(&catalog), None);
    }

    #[test]
    fn amounts_add_up_exactly_in_any_order() {
        let orders: [&[f64]; 3] = [&[0.1, 0.2, 0.3], &[0.3, 0.2, 0.1], &[0.2, 0.1, 0.3]];
        for order in orders {
            assert_eq!(decimal_sum(order.iter().copied()), Some(0.6), "{order:?}");
        }
        // What floating-point addition gives, which the sum must not.
        assert_ne!(0.1 + 0.2 + 0.3, 0.6);
        assert_eq!(decimal_sum([30.0, 20.25, 126.97].into_iter()), Some(177.22));
        assert_eq!(decimal_sum([-1.5, 0.25].into_iter()), Some(-1.25));
        assert_eq!(decimal_sum([1.0, 2.0].into_iter()), Some(3.0));
        assert_eq!(decimal_sum([0.0].into_iter()), Some(0.0));
        assert_eq!(decimal_sum(std::iter::empty()), None);
        // More decimals than any amount has: added as floats, still a sum.
        assert_eq!(decimal_sum([1e-20, 1.0].into_iter()), Some(1.0));
        // Past what 30 digits hold: added as floats.
        assert_eq!(decimal_sum([1e300, 1e300].into_iter()), Some(2e300));
    }
}
