//! End to end, over HTTP and gRPC: one operation of every kind, its webhooks delivered
//! shuffled and duplicated, ends in the status the catalog's rule gives.

use crate::test_server::{TestServer, milestones, phase, webhook};
use serde_json::json;

struct Case {
    kind: &'static str,
    key: &'static str,
    webhooks: Vec<Vec<u8>>,
    status: &'static str,
    phase: &'static str,
}

fn with_data(body: Vec<u8>, data: serde_json::Value) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    value["data"] = data;
    serde_json::to_vec(&value).unwrap()
}

/// QI Tech's reversal webhook, as its documentation shows it.
fn reversal(key: &str, status: &str, canceled: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "reversal": {
            "date": "2022-09-06",
            "incoming_pix_transfer_key": null,
            "status": status,
            "amount_to_send": 2026.93,
            "reversal_key": "eb0bbd1d-111d-4a61-bb65-c1f66a005ea2",
            "amount": 2026.93,
            "is_total": true,
            "created_at": if canceled { "2022-09-06T01:14:01" } else { "2022-09-05T22:00:00" },
            "is_operation_canceled": canceled,
            "transaction_key": null
        },
        "assigned_at": "None",
        "credit_operation_key": key,
        "assigned": true,
        "contract_number": "0000049333/TW"
    }))
    .unwrap()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            kind: "debt",
            key: "debt-e2e",
            webhooks: vec![
                webhook(
                    "debt",
                    "debt-e2e",
                    "waiting_signature",
                    "2024-01-01 10:00:00",
                ),
                webhook("debt", "debt-e2e", "signed", "2024-01-01 11:00:00"),
                webhook("debt", "debt-e2e", "disbursed", "2024-01-02 10:00:00"),
                webhook("debt", "debt-e2e", "opened", "2024-01-03 10:00:00"),
                webhook("debt", "debt-e2e", "settled", "2024-06-01 10:00:00"),
            ],
            status: "settled",
            phase: "succeeded",
        },
        Case {
            kind: "account",
            key: "account-e2e",
            webhooks: vec![
                webhook(
                    "account",
                    "account-e2e",
                    "waiting_user_acceptance",
                    "2024-01-01 10:00:00",
                ),
                webhook(
                    "account",
                    "account-e2e",
                    "waiting_administrator_approval",
                    "2024-01-01 11:00:00",
                ),
                webhook(
                    "account",
                    "account-e2e",
                    "account_opened",
                    "2024-01-01 12:00:00",
                ),
            ],
            status: "account_opened",
            phase: "succeeded",
        },
        // An escrow account is an account that says so (a kind family, the catalog's joins).
        Case {
            kind: "account",
            key: "escrow-e2e",
            webhooks: vec![
                webhook(
                    "escrow",
                    "escrow-e2e",
                    "waiting_user_acceptance",
                    "2024-01-01 10:00:00",
                ),
                webhook(
                    "escrow",
                    "escrow-e2e",
                    "account_rejected",
                    "2024-01-01 12:00:00",
                ),
            ],
            status: "account_rejected",
            phase: "failed",
        },
        Case {
            kind: "scr",
            key: "scr-e2e",
            webhooks: vec![
                webhook("scr", "scr-e2e", "pending_signature", "2024-01-01 10:00:00"),
                with_data(
                    webhook("scr", "scr-e2e", "consulted", "2024-01-01 12:00:00"),
                    json!({"scr_key": "scr-e2e", "scr_status": "consulted"}),
                ),
            ],
            status: "consulted",
            phase: "succeeded",
        },
        Case {
            kind: "historic_card_settlement",
            key: "hcs-e2e",
            webhooks: vec![with_data(
                webhook(
                    "historic-card-settlement",
                    "hcs-e2e",
                    "processed",
                    "2022-05-18T20:57:00",
                ),
                json!({"status": "processed", "response_data": {"slc_status": "not_found"}}),
            )],
            status: "processed",
            phase: "failed",
        },
        // An account's opening steps and the account webhook that ends them, one operation
        // under one key (account_request.status_change is an alias of account).
        Case {
            kind: "account",
            key: "ar-e2e",
            webhooks: vec![
                webhook(
                    "account_request.status_change",
                    "ar-e2e",
                    "pending_bacen_validation",
                    "2024-01-01 10:00:00",
                ),
                webhook(
                    "account_request.status_change",
                    "ar-e2e",
                    "pending_kyc_analysis",
                    "2024-01-01 11:00:00",
                ),
                webhook(
                    "account_request.status_change",
                    "ar-e2e",
                    "pending_additional_data",
                    "2024-01-01 12:00:00",
                ),
                webhook("account", "ar-e2e", "account_opened", "2024-01-01 13:00:00"),
            ],
            status: "account_opened",
            phase: "succeeded",
        },
        // Canceled up to seven days after disbursement: QI's reversal webhook (no
        // webhook_type; the debt's key in credit_operation_key) joins the debt, and the debt
        // is canceled once QI says the operation is.
        Case {
            kind: "debt",
            key: "reversed-e2e",
            webhooks: vec![
                webhook("debt", "reversed-e2e", "disbursed", "2022-09-01 10:00:00"),
                webhook("debt", "reversed-e2e", "opened", "2022-09-02 10:00:00"),
                reversal("reversed-e2e", "pending_fund", false),
                reversal("reversed-e2e", "pending_fund", true),
            ],
            status: "canceled",
            phase: "failed",
        },
        // A payroll loan through QI's LaaS: a debt.
        Case {
            kind: "debt",
            key: "laas-e2e",
            webhooks: vec![
                webhook(
                    "laas.credit_operation.status_change",
                    "laas-e2e",
                    "signed",
                    "2024-01-01 10:00:00",
                ),
                webhook(
                    "laas.credit_operation.status_change",
                    "laas-e2e",
                    "canceled",
                    "2024-01-02 10:00:00",
                ),
            ],
            status: "canceled",
            phase: "failed",
        },
        Case {
            // An installment (QI's installment webhooks): overdue, then paid after all.
            kind: "installment.status_change",
            key: "inst-e2e",
            webhooks: vec![
                webhook(
                    "installment.status_change",
                    "inst-e2e",
                    "opened",
                    "2024-01-01 10:00:00",
                ),
                webhook(
                    "installment.status_change",
                    "inst-e2e",
                    "overdue",
                    "2024-02-01 10:00:00",
                ),
                webhook(
                    "installment.status_change",
                    "inst-e2e",
                    "paid",
                    "2024-02-03 10:00:00",
                ),
            ],
            status: "paid",
            phase: "succeeded",
        },
    ]
}

#[tokio::test]
async fn one_operation_of_every_kind_delivered_shuffled_and_duplicated() {
    let server = TestServer::start().await;
    let cases = cases();
    // Interleave every kind, reverse each operation's webhooks, and send everything twice.
    let mut deliveries = Vec::new();
    for round in 0..2 {
        let longest = cases.iter().map(|c| c.webhooks.len()).max().unwrap();
        for i in 0..longest {
            for case in &cases {
                let n = case.webhooks.len();
                if i < n {
                    let index = if round == 0 { n - 1 - i } else { (i * 7) % n };
                    deliveries.push(case.webhooks[index].clone());
                }
            }
        }
    }
    for body in deliveries {
        server.post_ok(body).await;
    }
    for case in &cases {
        let op = server.get(case.key, case.kind).await.unwrap();
        assert_eq!(op.kind, case.kind);
        assert_eq!(op.status, case.status, "{}", case.kind);
        assert_eq!(phase(&op), case.phase, "{}", case.kind);
        assert_eq!(
            op.event_count as usize,
            case.webhooks.len(),
            "{}",
            case.kind
        );
        // History is in event-time order whatever the arrival order.
        let times: Vec<i64> = op
            .history
            .iter()
            .map(|h| h.event_time.unwrap().seconds)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{}: {times:?}",
            case.kind
        );
    }
    // Asking by an alias finds the operation it belongs to.
    let by_alias = server
        .get("ar-e2e", "account_request.status_change")
        .await
        .unwrap();
    assert_eq!(
        (by_alias.kind.as_str(), by_alias.status.as_str()),
        ("account", "account_opened")
    );
    server.stop().await;
}

/// QI Tech's documented examples of its other families (BaaS Pix, bill payment, automatic
/// Pix, QI DTVM), each delivered in both orders and twice: read by the generic rule, none
/// quarantined, with the catalog's outcome and facts.
#[tokio::test]
async fn documented_examples_of_the_other_families_are_read_in_any_order() {
    use crate::test_server::fixture;
    let server = TestServer::start().await;
    // (fixtures of one operation, kind, key, status, phase)
    let cases: [(&[&str], &str, &str, &str, &str); 5] = [
        (
            &["005_pix_outgoing_sent.json"],
            "baas.pix_transfer.outgoing_pix",
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "sent",
            "succeeded",
        ),
        (
            &["005_pix_outgoing_rejected.json"],
            "baas.pix_transfer.outgoing_pix",
            "8cb70dea-9fb0-4a68-9572-99a72849c8d7",
            "rejected",
            "failed",
        ),
        (
            // Reverted after it was executed: delivered reverted first.
            &[
                "006_bill_payment_reverted.json",
                "006_bill_payment_executed.json",
            ],
            "baas.bill_payment.payment",
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "reverted",
            "failed",
        ),
        (
            &["007_automatic_pix_recurrence_approved.json"],
            "baas.automatic_pix.outgoing_recurrence.status_change",
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "approved",
            // A mandate in force: payments are taken under it until it is canceled.
            "active",
        ),
        (
            &["008_dtvm_issuer_approved.json"],
            "issuer_management.issuer_status_change",
            "18c4d162-1b1b-4c3a-b7a7-5f1200723c43",
            "approved",
            "succeeded",
        ),
    ];
    for (files, ..) in &cases {
        for name in files.iter().chain(files.iter()) {
            let (code, answer) = server.post(fixture(name)).await;
            assert_eq!(code, 200, "{name}: {answer}");
        }
    }
    for (_, kind, key, status, expected_phase) in cases {
        let op = server.get(key, kind).await.expect(kind);
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            (status, expected_phase),
            "{kind}"
        );
    }
    let (code, answer) = server
        .post(fixture("008_dtvm_investor_reproved.json"))
        .await;
    assert_eq!(code, 200, "{answer}");
    let investor = server
        .get(
            "18c4d162-1b1b-4c3a-b7a7-5f1200723c43",
            "investor_management.investor_status_change",
        )
        .await
        .unwrap();
    assert_eq!(
        (investor.status.as_str(), phase(&investor)),
        ("reproved", "failed")
    );
    // The Pix error is a fact: no need to parse `data`.
    let rejected = server
        .get(
            "8cb70dea-9fb0-4a68-9572-99a72849c8d7",
            "baas.pix_transfer.outgoing_pix",
        )
        .await
        .unwrap();
    let fact = |name: &str| match rejected.facts.get(name).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(fact("error_code"), "PXT000132");
    assert_eq!(
        fact("error_description"),
        "Target account number is invalid."
    );
    server.stop().await;
}

/// What QI's documents mean, in milestones: a reversal alone (canceled within seven days
/// of disbursement) says the debt was disbursed; seed 000's `debt_successfully_finished`
/// ends the issuance: the loan is live (ACTIVE, not SUCCEEDED, which only a repayment is),
/// until a `settled` ends it.
#[tokio::test]
async fn a_reversal_was_disbursed_and_the_end_of_issuance_is_not_a_repayment() {
    let server = TestServer::start().await;
    server
        .post_ok(reversal("only-reversal", "pending_fund", true))
        .await;
    let op = server.get("only-reversal", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("canceled", "failed"));
    assert_eq!(milestones(&op), ["canceled", "disbursed"]);

    let finished = serde_json::to_vec(&json!({
        "webhook_type": "debt", "key": "issued-1", "status": "debt_successfully_finished",
        "data": null
    }))
    .unwrap();
    server.post_ok(finished).await;
    let op = server.get("issued-1", "debt").await.unwrap();
    assert_eq!(
        (op.status.as_str(), phase(&op)),
        ("debt_successfully_finished", "active")
    );
    assert_eq!(milestones(&op), ["disbursed", "issuance_finished"]);
    // Repaid later: SUCCEEDED now, and settled.
    let repaid = serde_json::to_vec(&json!({
        "webhook_type": "debt", "key": "issued-1", "status": "settled",
        "event_datetime": "2025-03-01 10:00:00", "data": null
    }))
    .unwrap();
    server.post_ok(repaid).await;
    let op = server.get("issued-1", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("settled", "succeeded"));
    assert_eq!(
        milestones(&op),
        ["disbursed", "issuance_finished", "settled"]
    );
    server.stop().await;
}

/// QI's BNPL reversal: a debt canceled because the borrower paid the reversal's Pix is
/// canceled after disbursement (QI's BNPL reversal page), so it was disbursed even when its
/// `disbursed` webhook never came; a debt canceled for another reason was not (as far as
/// its webhooks say). The reason's text is QI's, from its table.
#[tokio::test]
async fn a_bnpl_refund_cancels_a_disbursed_debt() {
    let server = TestServer::start().await;
    let canceled = |key: &str, reason: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "debt", "key": key, "event_datetime": "2025-10-27T16:38:59Z",
            "data": {"cancel_reason": "Operacao cancelada por estorno",
                     "cancel_reason_enumerator": reason},
            "status": "canceled"
        }))
        .unwrap()
    };
    server
        .post_ok(canceled("bnpl-refunded", "refund_after_payee_request"))
        .await;
    server.post_ok(canceled("bnpl-manual", "manual")).await;
    let op = server.get("bnpl-refunded", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("canceled", "failed"));
    assert_eq!(milestones(&op), ["canceled", "disbursed"]);
    assert_eq!(
        op.facts["cancel_reason_code"].kind,
        Some(prost_types::value::Kind::StringValue(
            "refund_after_payee_request".into()
        ))
    );
    let op = server.get("bnpl-manual", "debt").await.unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("canceled", "failed"));
    assert_eq!(milestones(&op), ["canceled"]);
    // The list of canceled debts has both: the refund is a cancellation like any other.
    let canceled = server
        .grpc()
        .await
        .list_by_status(qistatus::pb::ListByStatusRequest {
            kind: "debt".into(),
            statuses: vec!["canceled".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(canceled.len(), 2, "{canceled:?}");
    server.stop().await;
}

/// A debt's installments (QI's installment webhooks, and its payment webhooks, which name
/// the debt in `key`): each installment is its own operation, never moving the debt, and
/// the debt lists those its payments named, over gRPC and in the console, whatever the
/// order of delivery.
#[tokio::test]
async fn a_debt_lists_its_installments_and_they_never_move_it() {
    let server = TestServer::start().await;
    let payment = |debt: &str, installment: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "key": debt,
            "webhook_type": "laas.credit_operation.installment.payment",
            "event_datetime": at,
            "data": {"installment_key": installment, "installment_status": status,
                     "paid_amount": 567.73, "total_amount": 567.73}
        }))
        .unwrap()
    };
    let status_change = |installment: &str, status: &str| {
        serde_json::to_vec(&json!({
            "key": installment, "webhook_type": "installment.status_change",
            "data": {"status": status}
        }))
        .unwrap()
    };
    let disbursed = |debt: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "debt", "key": debt, "status": "disbursed",
            "event_datetime": "2026-01-01 10:00:00", "data": null
        }))
        .unwrap()
    };
    // Two debts, the same webhooks in opposite orders; the second's installments are
    // announced before the debt itself.
    let webhooks = |debt: &str, n: &str| {
        vec![
            disbursed(debt),
            status_change(&format!("{n}-1"), "opened"),
            payment(debt, &format!("{n}-1"), "paid", "2026-02-13 20:38:07"),
            payment(debt, &format!("{n}-2"), "paid_early", "2026-03-13 20:38:07"),
            status_change(&format!("{n}-3"), "overdue"),
        ]
    };
    for body in webhooks("debt-a", "a") {
        server.post_ok(body).await;
    }
    for body in webhooks("debt-b", "b").into_iter().rev() {
        server.post_ok(body).await;
    }
    for (debt, n) in [("debt-a", "a"), ("debt-b", "b")] {
        let response = server
            .grpc()
            .await
            .get_operation(qistatus::pb::GetOperationRequest {
                key: debt.into(),
                kind: "debt".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let op = response.operation.unwrap();
        assert_eq!((op.status.as_str(), phase(&op)), ("disbursed", "active"));
        assert_eq!(
            op.history.len(),
            1,
            "{debt}: no installment webhook is the debt's"
        );
        let parts: Vec<(&str, &str, &str)> = response
            .parts
            .iter()
            .map(|p| (p.kind.as_str(), p.key.as_str(), p.status.as_str()))
            .collect();
        let (one, two) = (format!("{n}-1"), format!("{n}-2"));
        assert_eq!(
            parts,
            [
                ("installment.status_change", one.as_str(), "paid"),
                ("installment.status_change", two.as_str(), "paid_early"),
            ],
            "{debt}: the installments its payments named (the third was never paid)"
        );
        assert!(response.parts.iter().all(|p| p.history.is_empty()));
        assert_eq!(response.parts_omitted, 0);
    }
    // An installment is its own operation, with its debt as a fact.
    let installment = server
        .get("a-1", "installment.status_change")
        .await
        .unwrap();
    assert_eq!(installment.history.len(), 2);
    assert_eq!(
        installment.facts["debt_key"].kind,
        Some(prost_types::value::Kind::StringValue("debt-a".into()))
    );
    // The console's page of the debt links to them.
    let html = server.admin_page("/ui/operations/debt-a?kind=debt").await;
    assert!(html.contains("<h2>Parts</h2>"), "{html}");
    for key in ["a-1", "a-2"] {
        assert!(
            html.contains(&format!(
                "/ui/operations/{key}?kind=installment.status_change"
            )),
            "{key}: {html}"
        );
    }
    assert!(!html.contains("/ui/operations/a-3?"), "{html}");
    server.stop().await;
}

/// QI's post-paid card pages, in both versions QI publishes: an invoice closed then paid, an
/// invoice payment waiting under either name then paid, a payment instrument entry `active`
/// (one version's name for a created entry) then canceled, each in both orders.
#[tokio::test]
async fn post_paid_card_invoices_and_entries_end_where_qi_says() {
    let server = TestServer::start().await;
    let invoice = |status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "baas.invoice.invoice_status_change", "webhook_datetime": at,
            "data": {"invoice_key": "8cb70dea-9fb0-4a68-9572-99a72849c8d6", "total_amount": 350.00,
                     "paid_amount": 0.00, "closing_date": "2024-01-31", "due_date": "2024-02-15",
                     "invoice_status": status}
        }))
        .unwrap()
    };
    let payment = |key: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "baas.invoice.invoice_payment_status_change", "webhook_datetime": at,
            "data": {"wallet_key": "8cb70dea-9fb0-4a68-9572-99a72849c8d6", "invoice_payment_key": key,
                     "total_amount": 350.00, "paid_amount": 0.00, "payment_date": "2024-02-15",
                     "invoice_payment_type": "bank_slip", "invoice_payment_status": status}
        }))
        .unwrap()
    };
    let entry = |key: &str, status: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "baas.invoice.payment_instrument_entry",
            "webhook_datetime": "2024-08-13T21:35:55.679Z",
            "data": {"payment_instrument_key": "ecf87b4b-fa6e-49c0-a7f0-f2cad6b42d79",
                     "payment_instrument_entry_key": key, "payment_instrument_entry_amount": 150.00,
                     "payment_instrument_entry_type": "purchase",
                     "payment_instrument_entry_status": status}
        }))
        .unwrap()
    };
    // Later events last, then the same in reverse on other keys.
    server
        .post_ok(invoice("closed", "2024-01-31T21:35:55.679Z"))
        .await;
    server
        .post_ok(invoice("processing_payment", "2024-02-01T21:35:55.679Z"))
        .await;
    let op = server
        .get(
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "baas.invoice.invoice_status_change",
        )
        .await
        .unwrap();
    assert_eq!(
        (op.status.as_str(), phase(&op)),
        ("processing_payment", "pending")
    );
    server
        .post_ok(invoice("paid", "2024-02-15T21:35:55.679Z"))
        .await;
    let op = server
        .get(
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "baas.invoice.invoice_status_change",
        )
        .await
        .unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("paid", "succeeded"));
    for (key, order) in [("pay-1", [0, 1]), ("pay-2", [1, 0])] {
        let bodies = [
            payment(key, "processing_payment", "2024-02-14T10:00:00Z"),
            payment(key, "paid", "2024-02-15T10:00:00Z"),
        ];
        for i in order {
            server.post_ok(bodies[i].clone()).await;
        }
        let op = server
            .get(key, "baas.invoice.invoice_payment_status_change")
            .await
            .unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            ("paid", "succeeded"),
            "{key}"
        );
    }
    for (key, order) in [("entry-1", [0, 1]), ("entry-2", [1, 0])] {
        let bodies = [entry(key, "active"), entry(key, "canceled")];
        server.post_ok(bodies[order[0]].clone()).await;
        if key == "entry-1" {
            let op = server
                .get(key, "baas.invoice.payment_instrument_entry")
                .await
                .unwrap();
            assert_eq!((op.status.as_str(), phase(&op)), ("active", "succeeded"));
        }
        server.post_ok(bodies[order[1]].clone()).await;
        let op = server
            .get(key, "baas.invoice.payment_instrument_entry")
            .await
            .unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            ("canceled", "failed"),
            "{key}"
        );
    }
    server.stop().await;
}

/// A Pix transfer refunded in parts (QI's refund webhook carries each refund's own
/// `transfer_amount`): the refunds add up exactly, in every delivery order, and the transfer
/// was sent, not failed (no QI webhook says how much it was, so none says all came back). A
/// refund that names no outgoing transfer is an incoming Pix, never a transfer that does not
/// exist.
#[tokio::test]
async fn a_pix_transfers_refunds_add_up_in_any_order() {
    let server = TestServer::start().await;
    let refund = |n: u32, amount: f64, original: Option<&str>| {
        let mut body = json!({
            "webhook_type": "baas.pix_transfer.incoming_pix",
            "webhook_datetime": format!("2021-10-22T20:3{n}:23.459Z"),
            "data": {"pix_transfer_key": format!("8cb70dea-9fb0-4a68-9572-99a72849c8d{n}"),
                     "pix_transfer_status": "received", "pix_transfer_type": "reversal",
                     "transfer_amount": amount, "reversals": []}
        });
        if let Some(original) = original {
            body["data"]["original_outgoing_pix_transfer"] = original.into();
        }
        serde_json::to_vec(&body).unwrap()
    };
    let sent = |key: &str| {
        serde_json::to_vec(&json!({
            "webhook_type": "baas.pix_transfer.outgoing_pix",
            "webhook_datetime": "2021-10-22T20:30:00.000Z",
            "data": {"pix_transfer_key": key, "pix_transfer_status": "sent"}
        }))
        .unwrap()
    };
    let kind = "baas.pix_transfer.outgoing_pix";
    // Three partial refunds whose floating-point sum depends on the order of addition
    // (0.1 + 0.2 + 0.3 is 0.6000000000000001 one way, 0.6 the other), delivered in two
    // orders to two transfers, with repeats.
    let first = [
        sent("pix-a"),
        refund(1, 0.1, Some("pix-a")),
        refund(2, 0.2, Some("pix-a")),
        refund(3, 0.3, Some("pix-a")),
        refund(2, 0.2, Some("pix-a")),
    ];
    let second = [
        refund(6, 0.3, Some("pix-b")),
        refund(5, 0.2, Some("pix-b")),
        refund(6, 0.3, Some("pix-b")),
        refund(4, 0.1, Some("pix-b")),
        sent("pix-b"),
    ];
    for body in first.into_iter().chain(second) {
        server.post_ok(body).await;
    }
    for key in ["pix-a", "pix-b"] {
        let op = server.get(key, kind).await.unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            ("refunded", "succeeded"),
            "{key}"
        );
        assert_eq!(
            op.facts["refunded_amount"].kind,
            Some(prost_types::value::Kind::NumberValue(0.6)),
            "{key}"
        );
        let reached: Vec<&str> = op.milestones.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(reached, ["refunded", "sent"], "{key}");
        assert_eq!(op.history.len(), 4, "{key}: the sending and three refunds");
    }
    // A refund naming no outgoing transfer: the incoming Pix it is, and no outgoing one.
    server.post_ok(refund(7, 5.0, None)).await;
    let incoming = server
        .get(
            "8cb70dea-9fb0-4a68-9572-99a72849c8d7",
            "baas.pix_transfer.incoming_pix",
        )
        .await
        .unwrap();
    assert_eq!(incoming.status, "received");
    assert_eq!(
        server
            .get("8cb70dea-9fb0-4a68-9572-99a72849c8d7", kind)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    server.stop().await;
}

/// QI's vehicle collateral webhooks: `key` is each webhook's own id, the operation is the
/// reservation (`reservation_key`), and removing the lien (`deleted`) supersedes `reserved`.
/// QI's vehicle collateral lien (its webhooks page's base structure, both spellings of its
/// type; its status map's two lifecycles): one operation per reservation, a request sent back
/// to the partner and resubmitted is where its later webhook says, a registered lien is live
/// until it is removed, and every delivery order gives the same answer.
#[tokio::test]
async fn vehicle_collateral_webhooks_are_one_reservation_each() {
    let server = TestServer::start().await;
    let collateral = |reservation: &str, id: &str, status: &str, time: &str, spelling: &str| {
        serde_json::to_vec(&json!({
            "key": id,
            "reservation_key": reservation,
            "credit_operation_key": "debt-9",
            "status": status,
            "webhook_type": spelling,
            "event_datetime": time,
            "data": {"contract_number": "0001"}
        }))
        .unwrap()
    };
    let kind = "laas.vehicle_collateral.reservation_status_change";
    let portuguese = "laas.vehicle_collateral.reservation.status_change";
    // Sent back to the partner, resubmitted, registered; half the webhooks in the
    // Portuguese page's spelling; delivered in every order of a few shuffles.
    let lien = [
        ("w-1", "pending_reservation", "2025-01-01T10:00:00Z", kind),
        (
            "w-2",
            "pending_reservation_confirmation",
            "2025-01-01T11:00:00Z",
            portuguese,
        ),
        (
            "w-3",
            "pending_requester_action",
            "2025-01-01T12:00:00Z",
            kind,
        ),
        (
            "w-4",
            "pending_reservation_confirmation",
            "2025-01-02T09:00:00Z",
            portuguese,
        ),
    ];
    let orders: [[usize; 4]; 3] = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]];
    for (n, order) in orders.iter().enumerate() {
        let reservation = format!("res-{n}");
        for &i in order {
            let (id, status, time, spelling) = lien[i];
            server
                .post_ok(collateral(&reservation, id, status, time, spelling))
                .await;
        }
        let op = server.get(&reservation, kind).await.unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op), op.history.len()),
            ("pending_reservation_confirmation", "pending", 4),
            "resubmitted after the partner's correction, order {order:?}"
        );
    }
    assert_eq!(
        server.get("w-1", kind).await.unwrap_err().code(),
        tonic::Code::NotFound,
        "a webhook's own key names no operation"
    );
    // Then, on res-0, one webhook at a time: the operation after each.
    let then = |id: &'static str, status: &'static str, time: &'static str, spelling| {
        let body = collateral("res-0", id, status, time, spelling);
        let server = &server;
        async move {
            server.post_ok(body).await;
            let op = server.get("res-0", kind).await.unwrap();
            let milestones: Vec<String> = op.milestones.iter().map(|m| m.name.clone()).collect();
            (op.status.clone(), phase(&op).to_owned(), milestones)
        }
    };
    let reserved = vec!["reserved".to_owned()];
    // Sent back again: waiting on the partner again.
    let (status, ..) = then(
        "w-5",
        "pending_requester_action",
        "2025-01-03T09:00:00Z",
        kind,
    )
    .await;
    assert_eq!(status, "pending_requester_action");
    // Registered: live, and the milestone reached.
    let after = then("w-6", "reserved", "2025-01-04T12:00:00Z", portuguese).await;
    assert_eq!(
        after,
        ("reserved".into(), "active".into(), reserved.clone())
    );
    // A cancellation after the lien: still in force while its removal is under way, then
    // removed for good, whatever is resent.
    let after = then("w-7", "pending_deletion", "2025-02-01T10:00:00Z", kind).await;
    assert_eq!(
        after,
        ("pending_deletion".into(), "active".into(), reserved.clone())
    );
    then("w-8", "deleted", "2025-02-02T10:00:00Z", kind).await;
    let after = then("w-6", "reserved", "2025-01-04T12:00:00Z", portuguese).await;
    assert_eq!(after, ("deleted".into(), "failed".into(), reserved));

    // QI's sandbox page's shape: `event_type`, the reservation in `origin_key`, the webhook
    // (its status and time, no keys) under `data.callback`. Sent back, then resubmitted:
    // the later webhook says where it is, in either order.
    let sandbox = |event: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "event_key": event,
            "event_type": portuguese,
            "origin": "vehicle_collateral",
            "origin_key": "res-sandbox",
            "person_key": "requester-1",
            "receiver_contact": null,
            "data": {"callback": {
                "webhook_type": portuguese, "status": status, "event_datetime": at,
                "data": {"contract_number": "CTR-2026-001"}
            }}
        }))
        .unwrap()
    };
    server
        .post_ok(sandbox(
            "e-2",
            "pending_reservation_confirmation",
            "2026-04-08T16:00:00.000Z",
        ))
        .await;
    server
        .post_ok(sandbox(
            "e-1",
            "pending_requester_action",
            "2026-04-08T15:30:00.000Z",
        ))
        .await;
    let op = server.get("res-sandbox", kind).await.unwrap();
    assert_eq!(
        (op.status.as_str(), phase(&op), op.history.len()),
        ("pending_reservation_confirmation", "pending", 2)
    );
    server.stop().await;
}

/// QI's vehicle order status webhook, by its status map: each step (`etapaAtual`) has its
/// own statuses, the same word meaning different things at different steps; an order goes
/// from the lien to the contract to its image, and ends when the image is approved, even
/// after a denial of an earlier image, whatever the order of delivery.
#[tokio::test]
async fn a_vehicle_order_ends_when_its_image_is_approved() {
    let server = TestServer::start().await;
    let kind = "vehicle_collateral.order_status";
    let order = |code: &str, step: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "transactionId": format!("{code}-{step}-{status}"),
            "status": status,
            "msgRetornoPlataforma": "",
            "codigoQiTech": code,
            "etapaAtual": step,
            "timestamp": at,
            "dataUltimaAtualizacao": at,
            "gravame": "12345678",
            "uf": "SP",
            "chassi": "9BWZZZ377VT004251"
        }))
        .unwrap()
    };
    let steps = [
        ("Lien Inclusion", "Sent", "2026-03-10T10:00:00Z"),
        ("Lien Inclusion", "Registered", "2026-03-10T11:00:00Z"),
        ("Contract Registration", "Sent", "2026-03-11T10:00:00Z"),
        (
            "Contract Registration",
            "Registered",
            "2026-03-12T10:00:00Z",
        ),
        ("Contract Image", "Sent", "2026-03-13T10:00:00Z"),
        ("Contract Image", "Denied", "2026-03-14T10:00:00Z"),
        ("Contract Image", "Approved", "2026-03-15T10:00:00Z"),
    ];
    // Step by step on one order: where each webhook leaves it.
    let expected = [
        ("lien inclusion sent", "pending"),
        ("lien inclusion registered", "pending"),
        ("contract registration sent", "pending"),
        ("contract registration registered", "pending"),
        ("contract image sent", "pending"),
        ("contract image denied", "failed"),
        ("contract image approved", "succeeded"),
    ];
    for ((step, status, at), (shown, phase_now)) in steps.iter().zip(expected) {
        server.post_ok(order("QI-1", step, status, at)).await;
        let op = server.get("QI-1", kind).await.unwrap();
        assert_eq!((op.status.as_str(), phase(&op)), (shown, phase_now));
    }
    let done = server.get("QI-1", kind).await.unwrap();
    assert_eq!(
        milestones(&done),
        ["contract_registered", "image_approved", "lien_registered"]
    );
    // The same webhooks in reverse, and the denial resent last: the same answer.
    for (step, status, at) in steps.iter().rev() {
        server.post_ok(order("QI-2", step, status, at)).await;
    }
    server
        .post_ok(order(
            "QI-2",
            "Contract Image",
            "Denied",
            "2026-03-14T10:00:00Z",
        ))
        .await;
    let reversed = server.get("QI-2", kind).await.unwrap();
    assert_eq!(
        (reversed.status.as_str(), phase(&reversed)),
        ("contract image approved", "succeeded")
    );
    assert_eq!(milestones(&reversed), milestones(&done));
    // `Registered` at the lien is not the contract's: an order whose lien is registered has
    // no registered contract yet.
    server
        .post_ok(order(
            "QI-3",
            "Lien Inclusion",
            "Registered",
            "2026-03-10T11:00:00Z",
        ))
        .await;
    let lien_only = server.get("QI-3", kind).await.unwrap();
    assert_eq!(milestones(&lien_only), ["lien_registered"]);
    assert_eq!(phase(&lien_only), "pending");
    server.stop().await;
}

/// QI's SCR webhook page: `key` is the credit operation's and `data.scr_key` each query's.
/// Two queries of one operation are two answers, each its own operation, with the credit
/// operation as a fact; a later query's end never hides the first's.
#[tokio::test]
async fn each_scr_query_of_an_operation_is_its_own() {
    let server = TestServer::start().await;
    let query = |scr_key: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({
            "data": {
                "consulted_at": "2020-05-08",
                "origin_key": "op-1",
                "scr_key": scr_key,
                "scr_status": status,
                "report_start_date": "2019-02",
                "report_end_date": "2020-03"
            },
            "webhook_type": "scr",
            "event_datetime": at,
            "status": status,
            "key": "op-1"
        }))
        .unwrap()
    };
    for body in [
        query("q-2", "rejected", "2020-05-09 10:00:00"),
        query("q-1", "consulted", "2020-05-08 10:00:00"),
        query("q-2", "rejected", "2020-05-09 10:00:00"),
    ] {
        server.post_ok(body).await;
    }
    for (key, status, phase_now) in [
        ("q-1", "consulted", "succeeded"),
        ("q-2", "rejected", "failed"),
    ] {
        let op = server.get(key, "scr").await.unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            (status, phase_now),
            "{key}"
        );
        let fact = op.facts.get("operation_key").and_then(|v| v.kind.clone());
        assert_eq!(
            fact,
            Some(prost_types::value::Kind::StringValue("op-1".into())),
            "{key}"
        );
    }
    assert_eq!(
        server.get("op-1", "scr").await.unwrap_err().code(),
        tonic::Code::NotFound,
        "the credit operation's key names no query"
    );
    server.stop().await;
}

/// QI's card-order fraud webhook, with the statuses of its order page: a manual analysis ends
/// with the analyst's decision, in any order; `not_analyzed` ends nothing.
#[tokio::test]
async fn a_card_order_in_manual_analysis_ends_with_the_analysts_decision() {
    let server = TestServer::start().await;
    let fraud = |order: &str, status: &str, at: &str| {
        serde_json::to_vec(&json!({"order_id": order, "fraud_status": status, "event_date": at}))
            .unwrap()
    };
    let kind = "caas.card_order.fraud_status";
    for (order, last, phase_now) in [
        ("o-1", "manually_approved", "succeeded"),
        ("o-2", "manually_reproved", "failed"),
    ] {
        server
            .post_ok(fraud(order, last, "2019-10-01T11:00:00-03:00"))
            .await;
        server
            .post_ok(fraud(
                order,
                "in_manual_analysis",
                "2019-10-01T10:37:25-03:00",
            ))
            .await;
        let op = server.get(order, kind).await.unwrap();
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            (last, phase_now),
            "{order}"
        );
    }
    server
        .post_ok(fraud(
            "o-3",
            "in_manual_analysis",
            "2019-10-01T10:37:25-03:00",
        ))
        .await;
    let op = server.get("o-3", kind).await.unwrap();
    assert_eq!(phase(&op), "pending", "waiting for the analyst");
    server
        .post_ok(fraud("o-4", "not_analyzed", "2019-10-01T10:37:25-03:00"))
        .await;
    let op = server.get("o-4", kind).await.unwrap();
    assert_eq!(
        (op.status.as_str(), phase(&op)),
        ("not_analyzed", "pending")
    );
    server.stop().await;
}

/// QI's overpayment refund ("indevidos"): the same webhook as a body of its own and wrapped in
/// a `callback` object (both versions of QI's page) is one refund; a `callback` field beside
/// others is data, not a wrapper.
#[tokio::test]
async fn an_overpayment_refund_is_read_bare_or_wrapped_in_callback() {
    let server = TestServer::start().await;
    let refund = json!({
        "event_datetime": "2024-01-15T14:30:00.000Z",
        "key": "fb34e0ac-2c98-47e7-9040-406b8c3d80e7",
        "status": "refunded",
        "webhook_type": "laas.devolution.refund_receipt",
        "data": {
            "devolution_key": "fb34e0ac-2c98-47e7-9040-406b8c3d80e7",
            "devolution_amount": 150.75,
            "devolution_status": "refunded",
            "transacted_at": "2024-01-15T14:25:30.000Z"
        }
    });
    let kind = "laas.devolution.refund_receipt";
    let wrapped = json!({ "callback": refund.clone() });
    for body in [&wrapped, &refund, &wrapped] {
        let (code, answer) = server.post(serde_json::to_vec(body).unwrap()).await;
        assert_eq!(code, 200, "{answer}");
    }
    let op = server
        .get("fb34e0ac-2c98-47e7-9040-406b8c3d80e7", kind)
        .await
        .unwrap();
    assert_eq!((op.status.as_str(), phase(&op)), ("refunded", "succeeded"));
    assert_eq!(op.history.len(), 2, "two bodies, kept apart: one refund");
    // Beside other fields, `callback` is data: this body names its own operation.
    let mut beside = refund.clone();
    beside["key"] = "other-refund".into();
    beside["callback"] = json!({"webhook_type": "debt", "key": "not-me", "status": "settled"});
    server.post_ok(serde_json::to_vec(&beside).unwrap()).await;
    assert!(server.get("other-refund", kind).await.is_ok());
    assert_eq!(
        server.get("not-me", "debt").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    server.stop().await;
}

/// QI's other documented families (fixtures 009), each delivered twice and in both orders
/// where an operation has several: known kinds with their phases, and the kind families
/// (joins) land in the operation QI's documents say they belong to.
#[tokio::test]
async fn documented_families_and_kind_families_land_where_qi_says() {
    use crate::test_server::fixture;
    let server = TestServer::start().await;
    let post_all = |names: &'static [&'static str]| {
        let server = &server;
        async move {
            for name in names.iter().chain(names.iter().rev()) {
                let (code, answer) = server.post(fixture(name)).await;
                assert_eq!(code, 200, "{name}: {answer}");
                assert_ne!(answer["result"], "quarantined", "{name}: {answer}");
            }
        }
    };
    let text = |op: &qistatus::pb::Operation, name: &str| -> String {
        match op.facts.get(name).and_then(|v| v.kind.clone()) {
            Some(prost_types::value::Kind::StringValue(s)) => s,
            Some(prost_types::value::Kind::NumberValue(n)) => n.to_string(),
            other => panic!("{name}: {other:?}"),
        }
    };

    // (fixture, kind, key, status, phase)
    let singles: [(&'static [&'static str], &str, &str, &str, &str); 18] = [
        // An installment's payment: the installment's operation (its `data.installment_key`),
        // not the debt's (its `key`).
        (
            &["009_installment_payment_paid_early.json"],
            "installment.status_change",
            "1234cb7b-3329-12d1-429c-24f84975ca02",
            "paid_early",
            "succeeded",
        ),
        // A bank slip ownership exchange batch: sent, then approved, in either order.
        (
            &[
                "009_bank_slip_ownership_exchange_sent.json",
                "009_bank_slip_ownership_exchange_approved.json",
            ],
            "baas.bank_slip.bank_slip_ownership_exchange_batch",
            "3e8d08df-3585-476f-b464-0897ecf7467d",
            "approved",
            "succeeded",
        ),
        // A CCB assignment batch, at its final status.
        (
            &["009_ccb_assignment_batch_settled.json"],
            "assignment.status_change",
            "6f1c2a9e-3b7d-4e58-9a0c-1d2e3f4a5b6c",
            "settled",
            "succeeded",
        ),
        // A payment notice is not a payment: `paid` wins, in either order.
        (
            &[
                "009_bank_slip_occurrence_payment_notice.json",
                "009_bank_slip_occurrence_paid.json",
            ],
            "baas.bank_slip.occurrence",
            "03c38d18-d12f-4b5f-841c-afab52fe33c5",
            "paid",
            "succeeded",
        ),
        (
            &["009_bank_slip_registered.json"],
            "bank_slip.status_change",
            "11b13b2c-4204-41b3-8596-2ee7ecbde38c",
            "registered",
            "pending",
        ),
        (
            &["009_pix_incoming_received.json"],
            "baas.pix_transfer.incoming_pix",
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "received",
            "succeeded",
        ),
        (
            &["009_automatic_pix_incoming_recurrence_pending.json"],
            "baas.automatic_pix.incoming_recurrence",
            "12385acf-b0c3-4389-baf3-a58abbe92d58",
            "pending_confirmation",
            "pending",
        ),
        (
            &["009_invoice_payment_waiting.json"],
            "baas.invoice.invoice_payment_status_change",
            "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
            "waiting_payment",
            "pending",
        ),
        (
            &["009_payment_instrument_entry_concluded.json"],
            "baas.invoice.payment_instrument_entry",
            "fd86d9b1-2a5e-4e03-9a59-a043c7632c97",
            "concluded",
            "succeeded",
        ),
        (
            &["009_payroll_card_reservation_pending_onboarding.json"],
            "laas.payroll_card_reservation.status_change",
            "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
            "pending_onboarding",
            "pending",
        ),
        (
            &["009_receivables_assignment_denied.json"],
            "trade_receivables.assignment_status_change",
            "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
            "denied",
            "failed",
        ),
        (
            &["009_vehicle_order_status_denied.json"],
            "vehicle_collateral.order_status",
            "QI-20260310-000123",
            "lien inclusion denied",
            "failed",
        ),
        (
            &["009_card_order_fraud_approved.json"],
            "caas.card_order.fraud_status",
            "123456",
            "automatically_approved",
            "succeeded",
        ),
        // CaaS limits: no `webhook_type`, known by `id` and `analysis_status`; the same id
        // as the card order above is another kind's operation.
        (
            &["009_caas_limit_event_approved.json"],
            "caas.limits.analysis_status",
            "123456",
            "automatically_approved",
            "succeeded",
        ),
        (
            &["009_pix_schedule_completed_sent.json"],
            "baas.pix_schedule.completed",
            "0c9091ab-079b-4a43-8b3d-d4ba36a23883",
            "sent",
            "succeeded",
        ),
        // A MED refund request: its `key` is each webhook's own; the request is its
        // `data.refund_request_key`.
        (
            &["009_pix_med_refund_request_open.json"],
            "incoming.internal_refund_request",
            "9eb5f452-81fd-4f67-9f2a-49e14e53ef64",
            "open",
            "pending",
        ),
        // An asset: created, then pre-approved, one operation by its own external id.
        (
            &[
                "009_receivables_asset_created.json",
                "009_receivables_asset_pre_approved.json",
            ],
            "trade_receivables.asset_status_change",
            "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
            "pre_approved",
            "pending",
        ),
        // A paid batch is past waiting for its payment, in either order.
        (
            &[
                "009_receivables_assignment_pending_payment.json",
                "009_receivables_assignment_pending_assets_wallet_inclusion.json",
            ],
            "trade_receivables.assignment_status_change",
            "1caff47c-bd05-48b0-a6bc-9569f5070f6c",
            "pending_assets_wallet_inclusion",
            "pending",
        ),
    ];
    for (files, kind, key, status, expected_phase) in singles {
        post_all(files).await;
        let op = server.get(key, kind).await.expect(kind);
        assert_eq!(
            (op.status.as_str(), phase(&op)),
            (status, expected_phase),
            "{kind}"
        );
    }
    let incoming = server
        .get(
            "8cb70dea-9fb0-4a68-9572-99a72849c8d6",
            "baas.pix_transfer.incoming_pix",
        )
        .await
        .unwrap();
    assert_eq!(text(&incoming, "transfer_amount"), "126.97");
    let batch = server
        .get(
            "1caff47c-bd05-48b0-a6bc-9569f5070f6c",
            "trade_receivables.assignment_status_change",
        )
        .await
        .unwrap();
    assert_eq!(milestones(&batch), ["paid"]);
    let asset = server
        .get(
            "1caff47c-bd05-48b0-a6bc-9569f5070f6b",
            "trade_receivables.asset_status_change",
        )
        .await
        .unwrap();
    assert_eq!(
        text(&asset, "assignment_external_id"),
        "ac597f90-a13e-4f78-86f0-11c66f5fa6d6"
    );
    // The MED request's webhook key names no operation of its own.
    assert_eq!(
        server
            .get(
                "0dedf537-a75e-4945-be1d-5d278c623022",
                "incoming.internal_refund_request"
            )
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    let med = server
        .get(
            "9eb5f452-81fd-4f67-9f2a-49e14e53ef64",
            "incoming.internal_refund_request",
        )
        .await
        .unwrap();
    assert_eq!(text(&med, "requested_amount"), "40");
    let order = server
        .get("QI-20260310-000123", "vehicle_collateral.order_status")
        .await
        .unwrap();
    assert_eq!(text(&order, "stage"), "Lien Inclusion");

    // A refund of an outgoing Pix: the outgoing Pix shows it, whichever came first.
    let outgoing_sent = serde_json::to_vec(&json!({
        "webhook_type": "baas.pix_transfer.outgoing_pix",
        "webhook_datetime": "2021-10-22T20:30:23.459Z",
        "data": {"request_control_key": "b6804f32-101e-4702-8fbc-c2dbc4c2caec",
                 "pix_transfer_key": "b56862c4-2b20-4057-8063-b8809866e494",
                 "pix_transfer_status": "sent"}
    }))
    .unwrap();
    server
        .post_ok(fixture("009_pix_refund_of_outgoing.json"))
        .await;
    server.post_ok(outgoing_sent.clone()).await;
    server.post_ok(outgoing_sent).await;
    let refunded = server
        .get(
            "b56862c4-2b20-4057-8063-b8809866e494",
            "baas.pix_transfer.outgoing_pix",
        )
        .await
        .unwrap();
    assert_eq!(
        (refunded.status.as_str(), phase(&refunded)),
        ("refunded", "succeeded")
    );
    assert_eq!(milestones(&refunded), ["refunded", "sent"]);
    assert_eq!(text(&refunded, "refunded_amount"), "126.97");
    assert!(
        refunded.conflicting_statuses.is_empty(),
        "a refund supersedes the sending: no conflict"
    );

    // An escrow account: its opening steps and its last webhook are one account, which
    // says it is an escrow; asking for an escrow finds it.
    post_all(&[
        "009_escrow_account_request_pending_kyc.json",
        "001_escrow_opened.json",
    ])
    .await;
    let escrow = server
        .get("0b6f8e9a-3c2d-4e1f-8a7b-000000000003", "escrow")
        .await
        .unwrap();
    assert_eq!(
        (escrow.kind.as_str(), escrow.status.as_str(), phase(&escrow)),
        ("account", "account_opened", "succeeded")
    );
    assert_eq!(text(&escrow, "account_type"), "escrow");
    assert_eq!(
        escrow.history.len(),
        2,
        "the step and the opening, once each"
    );

    // A private payroll loan's reservation joins its debt without moving it.
    let key = "5d3a9e7c-1b2f-4c8d-9e0a-7f6b5c4d3e21";
    post_all(&["009_private_payroll_reservation_pending_authorization.json"]).await;
    server
        .post_ok(webhook("debt", key, "disbursed", "2025-04-10T12:00:00Z"))
        .await;
    let terminated = serde_json::to_vec(&json!({
        "status": "terminated", "event_datetime": "2025-06-20T14:47:43Z", "key": key,
        "webhook_type": "laas.private_payroll.reservation_status_change",
        "data": {"reservation_status": "terminated"}
    }))
    .unwrap();
    server.post_ok(terminated).await;
    let debt = server.get(key, "debt").await.unwrap();
    assert_eq!(
        (debt.status.as_str(), phase(&debt)),
        ("disbursed", "active"),
        "the reservation's statuses never move the debt"
    );
    assert_eq!(debt.history.len(), 3);
    assert_eq!(
        milestones(&debt),
        ["disbursed", "payroll_reservation_terminated"]
    );
    // The installment's payment named its debt in `key`: no operation of either kind there.
    for kind in [
        "installment.status_change",
        "laas.credit_operation.installment.payment",
    ] {
        assert_eq!(
            server
                .get("4219cb7b-32b9-45d1-b19c-24fbca04ca02", kind)
                .await
                .unwrap_err()
                .code(),
            tonic::Code::NotFound,
            "{kind}"
        );
    }
    server.stop().await;
}
