//! Properties of reconciliation, on the pure domain: the operation is a function of the set
//! of distinct webhooks, whatever their delivery order and repetition.

use std::collections::HashSet;

use proptest::prelude::*;
use qistatus::domain::catalog::Catalog;
use qistatus::domain::reconcile::{EventSummary, Operation, Phase, Reconciler};
use qistatus::domain::webhook::{EventId, FactValue};

/// Every status a kind can send: its stages, ends, the statuses only its milestones name
/// (a kind family's, such as a debt's `reservation_terminated`), and two the catalog does
/// not know.
fn statuses_of(catalog: &Catalog, kind: &str) -> Vec<(String, Option<String>)> {
    let mut statuses: Vec<(String, Option<String>)> = Vec::new();
    if let Some(spec) = catalog.kind(kind) {
        for s in spec.stages.iter().chain(&spec.success).chain(&spec.failure) {
            statuses.push((s.clone(), None));
        }
        for s in spec.milestones.values().flatten() {
            if !s.contains('*') && !statuses.iter().any(|(named, _)| named == s) {
                statuses.push((s.clone(), None));
            }
        }
        for deferring in &spec.outcome_statuses {
            for outcome in spec.success.iter().chain(&spec.failure) {
                statuses.push((deferring.clone(), Some(outcome.clone())));
            }
        }
    }
    statuses.push(("mystery_a".into(), None));
    statuses.push(("mystery_b".into(), None));
    statuses
}

fn kinds() -> Vec<String> {
    let catalog = Catalog::builtin();
    let mut kinds: Vec<String> = catalog.kinds.keys().cloned().collect();
    // A kind the catalog does not know: its statuses are all unknown.
    kinds.push("unknown_family.status_change".into());
    kinds
}

/// A kind, and up to 8 distinct webhooks of it: (status index, event time, detail).
fn operation_webhooks() -> impl Strategy<Value = (String, Vec<(usize, Option<i64>, u8)>)> {
    (
        proptest::sample::select(kinds()),
        proptest::collection::vec((0usize..64, proptest::option::of(0i64..6), 0u8..3), 1..8),
    )
}

fn summaries(kind: &str, webhooks: &[(usize, Option<i64>, u8)]) -> Vec<EventSummary> {
    let statuses = statuses_of(&Catalog::builtin(), kind);
    let mut seen = HashSet::new();
    webhooks
        .iter()
        .map(|&(status, time, detail)| {
            let (status, outcome) = statuses[status % statuses.len()].clone();
            let content = format!("{kind}|{status}|{outcome:?}|{time:?}|{detail}");
            EventSummary {
                sequence: 0,
                event_id: EventId(sha256(content.as_bytes())),
                status,
                outcome,
                detail: format!("detail {detail}"),
                // Few distinct times, so that ties are common and the tie-breaks are exercised.
                event_time: time.map(|t| 1_600_000_000_000 + t * 60_000),
                received_at: 0,
                // Facts on some webhooks, so that "the latest webhook that has it" is
                // exercised under every order too.
                facts: {
                    let mut facts = if detail == 2 {
                        Vec::new()
                    } else {
                        vec![("amount".into(), FactValue::Number(f64::from(detail)))]
                    };
                    // The facts the kind sums: tenths, whose floating-point sum depends on
                    // the order of addition.
                    for name in Catalog::builtin().kind(kind).iter().flat_map(|s| &s.sums) {
                        let tenths = f64::from(detail + 1) / 10.0;
                        facts.push((name.clone(), FactValue::Number(tenths)));
                    }
                    facts
                },
            }
        })
        // Distinct webhooks only: two equal contents are one webhook.
        .filter(|e| seen.insert(e.event_id))
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Delivers `order` (indices into `events`, with repeats) the way the writer does: a
/// webhook already seen is a duplicate; sequences and receive times follow arrival.
fn deliver(kind: &str, events: &[EventSummary], order: &[usize]) -> Operation {
    let catalog = Catalog::builtin();
    let reconciler = Reconciler::new(&catalog);
    let mut seen = HashSet::new();
    let mut op: Option<Operation> = None;
    for (arrival, &i) in order.iter().enumerate() {
        let mut event = events[i].clone();
        if !seen.insert(event.event_id) {
            continue;
        }
        event.sequence = arrival as u64 + 1;
        event.received_at = 1_700_000_000_000 + arrival as i64;
        let before = op.as_ref().map(|op| progress(&reconciler, op));
        let after = reconciler.apply(op, kind, "k", event);
        // A webhook never moves an operation back: an ended operation stays ended, and a
        // pending one never goes to an earlier stage.
        if let Some(before) = before {
            assert!(progress(&reconciler, &after) >= before);
        }
        op = Some(after);
    }
    op.expect("at least one webhook")
}

/// How far an operation is: 2 when ended; else 1 and the position of its latest known
/// stage; 0 while it only has unknown statuses.
fn progress(r: &Reconciler<'_>, op: &Operation) -> (u8, u32) {
    let best = op
        .history
        .iter()
        .map(|e| r.precedence(&op.kind, e))
        .max()
        .expect("non-empty history");
    match best.tier {
        1 => (1, best.rank),
        tier => (tier, 0),
    }
}

/// The operation without what depends on arrival: receive times and sequence numbers.
fn arrival_independent(mut op: Operation) -> Operation {
    op.first_received_at = 0;
    op.updated_at = 0;
    op.last_sequence = 0;
    for e in &mut op.history {
        e.sequence = 0;
        e.received_at = 0;
    }
    op
}

/// Every index once, then `extra` repeats, shuffled by `seed`.
fn delivery(len: usize, extra: &[usize], seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).chain(extra.iter().map(|e| e % len)).collect();
    // Fisher-Yates with a small deterministic generator.
    let mut state = seed | 1;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_order_with_any_duplicates_gives_the_same_operation(
        (kind, webhooks) in operation_webhooks(),
        extra_a in proptest::collection::vec(0usize..8, 0..8),
        extra_b in proptest::collection::vec(0usize..8, 0..8),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        let events = summaries(&kind, &webhooks);
        let a = deliver(&kind, &events, &delivery(events.len(), &extra_a, seed_a));
        let b = deliver(&kind, &events, &delivery(events.len(), &extra_b, seed_b));
        prop_assert_eq!(a.version, events.len() as u64);
        prop_assert_eq!(a.history.len(), events.len());
        // The flow's stages and milestones too (lags depend on when each arrived, by
        // definition).
        let stages = |op: &Operation| -> Vec<qistatus::domain::flow::Mark> {
            qistatus::domain::flow::FlowMarks::of(op)
                .marks()
                .iter()
                .filter(|m| !matches!(m.series, qistatus::domain::flow::Series::Lag))
                .filter(|m| !matches!(m.series, qistatus::domain::flow::Series::Cohort { .. })
                    || op.history.iter().any(|e| e.event_time.is_some()))
                .cloned()
                .collect()
        };
        prop_assert_eq!(stages(&a), stages(&b));
        prop_assert_eq!(arrival_independent(a), arrival_independent(b));
    }

    #[test]
    fn an_end_status_always_ends_the_operation(
        (kind, webhooks) in operation_webhooks(),
        seed in any::<u64>(),
    ) {
        let catalog = Catalog::builtin();
        let events = summaries(&kind, &webhooks);
        let op = deliver(&kind, &events, &delivery(events.len(), &[], seed));
        let reconciler = Reconciler::new(&catalog);
        let any_end = events.iter().any(|e| reconciler.precedence(&kind, e).tier == 2);
        prop_assert_eq!(any_end, matches!(op.phase, Phase::Succeeded | Phase::Failed));
    }
}

#[test]
fn supersession_then_event_time_then_declared_precedence() {
    let catalog = Catalog::builtin();
    let r = Reconciler::new(&catalog);
    let e = |status: &str, time: i64, id: u8| EventSummary {
        sequence: id as u64,
        event_id: EventId([id; 32]),
        status: status.into(),
        outcome: None,
        detail: String::new(),
        event_time: Some(time),
        received_at: 0,
        facts: Vec::new(),
    };
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("canceled", 200, 1), e("canceled_permanently", 100, 2)],
        )
        .unwrap();
    assert_eq!(op.status, "canceled_permanently");
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("settled", 100, 9), e("canceled", 200, 1)],
        )
        .unwrap();
    assert_eq!(
        op.status, "canceled",
        "between ends, the later event time wins"
    );
    for ids in [(1, 9), (9, 1)] {
        let op = r
            .reconcile(
                "debt",
                "k",
                vec![e("settled", 100, ids.0), e("canceled", 100, ids.1)],
            )
            .unwrap();
        assert_eq!(
            op.status, "canceled",
            "at the same event time, the catalog's end_precedence decides, not the hash"
        );
        assert_eq!(
            op.conflict,
            ["canceled", "settled"],
            "and the conflict is marked"
        );
    }
    // No conflict when one supersedes the other, or the times differ.
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("canceled", 100, 1), e("canceled_permanently", 100, 2)],
        )
        .unwrap();
    assert_eq!(
        (op.status.as_str(), op.conflict.len()),
        ("canceled_permanently", 0)
    );
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("canceled", 100, 1), e("settled", 101, 2)],
        )
        .unwrap();
    assert!(op.conflict.is_empty());
    // A supersession applies to the statuses it names, nothing else: canceled_permanently
    // at t=100 removes canceled, but a later settled is not canceled.
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![
                e("settled", 200, 1),
                e("canceled_permanently", 100, 2),
                e("canceled", 300, 3),
            ],
        )
        .unwrap();
    assert_eq!(op.status, "settled");
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("settled", 200, 1), e("canceled_permanently", 300, 2)],
        )
        .unwrap();
    assert_eq!(
        op.status, "canceled_permanently",
        "and by time, as any end status"
    );
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("disbursed", 100, 1), e("mystery", 900, 2)],
        )
        .unwrap();
    assert_eq!(
        op.status, "disbursed",
        "an unknown status never displaces a known one"
    );
    let op = r
        .reconcile(
            "debt",
            "k",
            vec![e("mystery_one", 100, 1), e("mystery_two", 900, 2)],
        )
        .unwrap();
    assert_eq!(
        op.status, "mystery_two",
        "unknown statuses are placed by event time"
    );
    assert_eq!(op.phase, Phase::Pending);
}

/// Ties QI's own examples make: undated end statuses, and a bill payment's `executed` and
/// `reverted` sent with the same `webhook_datetime` (or `executed` resent later).
#[test]
fn undated_ties_are_conflicts_and_reversals_supersede_what_they_reverse() {
    let catalog = Catalog::builtin();
    let r = Reconciler::new(&catalog);
    let e = |status: &str, time: Option<i64>, id: u8| EventSummary {
        sequence: id as u64,
        event_id: EventId([id; 32]),
        status: status.into(),
        outcome: None,
        detail: String::new(),
        event_time: time,
        received_at: 0,
        facts: Vec::new(),
    };
    for ids in [(1, 9), (9, 1)] {
        // Two debt end statuses, neither dated (seed 000's shapes): precedence decides, and
        // the disagreement is marked.
        let op = r
            .reconcile(
                "debt",
                "k",
                vec![e("settled", None, ids.0), e("canceled", None, ids.1)],
            )
            .unwrap();
        assert_eq!(op.status, "canceled");
        assert_eq!(op.conflict, ["canceled", "settled"]);

        // Automatic Pix: approved and canceled, no times (QI's example has none).
        let op = r
            .reconcile(
                "baas.automatic_pix.outgoing_recurrence.status_change",
                "k",
                vec![e("approved", None, ids.0), e("canceled", None, ids.1)],
            )
            .unwrap();
        assert_eq!((op.status.as_str(), op.conflict.len()), ("canceled", 0));
        // The mandate ran before it was canceled: the milestone says so.
        let reached: Vec<&str> = op.milestones.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(reached, ["approved"]);
        assert_eq!(op.phase, Phase::Failed);

        // Bill payment: the same webhook_datetime, or executed resent after the reversal.
        for (executed, reverted) in [(Some(100), Some(100)), (Some(200), Some(100))] {
            let op = r
                .reconcile(
                    "baas.bill_payment.payment",
                    "k",
                    vec![
                        e("executed", executed, ids.0),
                        e("reverted", reverted, ids.1),
                    ],
                )
                .unwrap();
            assert_eq!((op.status.as_str(), op.conflict.len()), ("reverted", 0));
        }
    }
}
