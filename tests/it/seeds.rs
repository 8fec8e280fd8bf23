//! Every example webhook of the seed documents, posted over HTTP and read back over gRPC.

use crate::test_server::{TestServer, fixture, phase};

/// (fixture, kind, key, status, phase) as the seed documents define them.
const SEED_EXAMPLES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "000_debt_1_waiting_signature.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "waiting_signature",
        "pending",
    ),
    (
        "000_debt_2_waiting_balance_block.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "waiting_balance_block",
        "pending",
    ),
    (
        "000_debt_3_waiting_disbursement.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "waiting_disbursement",
        "pending",
    ),
    (
        "000_debt_4_waiting_assignment_term_signature.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "waiting_assignment_term_signature",
        "active",
    ),
    (
        "000_debt_5_waiting_balance_release.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "waiting_balance_release",
        "active",
    ),
    (
        "000_debt_6_debt_successfully_finished.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000001",
        "debt_successfully_finished",
        "active",
    ),
    (
        "000_debt_rejected.json",
        "debt",
        "5f0c2a8e-6d1b-4c3e-9a7f-000000000002",
        "rejected",
        "failed",
    ),
    (
        "001_account_opened.json",
        "account",
        "f834af4d-ab4b-442f-96c9-f9940d8066d4",
        "account_opened",
        "succeeded",
    ),
    (
        "001_account_rejected.json",
        "account",
        "f834af4d-ab4b-442f-96c9-f9940d8066d5",
        "account_rejected",
        "failed",
    ),
    (
        "001_escrow_opened.json",
        // An escrow account is an account (its opening steps share its key).
        "account",
        "0b6f8e9a-3c2d-4e1f-8a7b-000000000003",
        "account_opened",
        "succeeded",
    ),
    (
        "001_escrow_rejected.json",
        "account",
        "0b6f8e9a-3c2d-4e1f-8a7b-000000000004",
        "account_rejected",
        "failed",
    ),
    (
        "002_scr_consulted_pdf.json",
        "scr",
        "3c1e5d2a-7b4f-4e6a-9c8d-000000000005",
        "consulted",
        "succeeded",
    ),
    (
        "002_scr_consulted_complete.json",
        "scr",
        "3c1e5d2a-7b4f-4e6a-9c8d-000000000006",
        "consulted",
        "succeeded",
    ),
    (
        "002_scr_rejected.json",
        "scr",
        "3c1e5d2a-7b4f-4e6a-9c8d-000000000007",
        "rejected",
        "failed",
    ),
    (
        "003_historic_card_settlement_completed.json",
        "historic_card_settlement",
        "38934f1b-204f-4fc4-844d-5ad562ff36f6",
        "processed",
        "succeeded",
    ),
    (
        "003_historic_card_settlement_not_found.json",
        "historic_card_settlement",
        "f2f04a35-e4e1-4f0f-b9c7-a229ca1f6f55",
        "processed",
        "failed",
    ),
    (
        "004_debt_created_waiting_signature.json",
        "debt",
        "871059bd-4014-41ad-82b4-28275ff0e67b",
        "waiting_signature",
        "pending",
    ),
    (
        "004_debt_disbursed.json",
        "debt",
        "871059bd-4014-41ad-82b4-28275ff0e67b",
        "disbursed",
        "active",
    ),
    (
        "004_debt_canceled.json",
        "debt",
        "27a099df-4688-43cb-87fa-515b1cf343a5",
        "canceled",
        "failed",
    ),
    (
        "004_debt_settled.json",
        "debt",
        "27a099df-4688-43cb-87fa-515b1cf343a5",
        "settled",
        "succeeded",
    ),
];

#[tokio::test]
async fn every_seed_example_is_stored_and_read_back_with_its_kind_key_and_status() {
    for &(name, kind, key, status, expected_phase) in SEED_EXAMPLES {
        // Each example on its own server: the documents give alternatives (success or
        // failure) for the same key, which are not one operation's history.
        let server = TestServer::start().await;
        let (code, answer) = server.post(fixture(name)).await;
        assert_eq!(code, 200, "{name}: {answer}");
        assert_eq!(answer["result"], "accepted", "{name}");
        assert_eq!(answer["sequence"], 1, "{name}");

        let op = server
            .get(key, "")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((op.kind.as_str(), op.key.as_str()), (kind, key), "{name}");
        assert_eq!(op.status, status, "{name}");
        assert_eq!(phase(&op), expected_phase, "{name}");
        assert_eq!(op.event_count, 1, "{name}");
        assert_eq!(op.history.len(), 1, "{name}");
        server.stop().await;
    }
}

#[tokio::test]
async fn seed_details_reach_the_operation() {
    let server = TestServer::start().await;
    for name in [
        "000_debt_rejected.json",
        "004_debt_canceled.json",
        "003_historic_card_settlement_not_found.json",
        "002_scr_consulted_complete.json",
    ] {
        server.post_ok(fixture(name)).await;
    }
    let rejected = server
        .get("5f0c2a8e-6d1b-4c3e-9a7f-000000000002", "debt")
        .await
        .unwrap();
    assert_eq!(rejected.detail, "Rejected on compliance verification");
    let canceled = server
        .get("27a099df-4688-43cb-87fa-515b1cf343a5", "debt")
        .await
        .unwrap();
    assert_eq!(canceled.detail, "manual: Operacao cancelada manualmente");
    let card = server
        .get("f2f04a35-e4e1-4f0f-b9c7-a229ca1f6f55", "")
        .await
        .unwrap();
    assert_eq!(card.detail, "not_found");
    // scr_status only mirrors the status here: no detail to add.
    let scr = server
        .get("3c1e5d2a-7b4f-4e6a-9c8d-000000000006", "scr")
        .await
        .unwrap();
    assert_eq!(scr.detail, "");
    // Event time: "2022-09-27 07:03:49" is São Paulo time, 10:03:49 UTC.
    assert_eq!(
        crate::test_server::rfc3339(canceled.event_time.as_ref()),
        "2022-09-27T10:03:49Z"
    );
    server.stop().await;
}

#[tokio::test]
async fn history_carries_the_webhook_data_and_the_raw_payload_byte_for_byte() {
    let server = TestServer::start().await;
    let body = fixture("004_debt_created_waiting_signature.json");
    server.post_ok(body.clone()).await;
    let response = server
        .grpc()
        .await
        .get_operation(qistatus::pb::GetOperationRequest {
            key: "871059bd-4014-41ad-82b4-28275ff0e67b".into(),
            kind: String::new(),
            include_raw_payload: true,
            view: qistatus::pb::OperationView::Full as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let op = response.operation.unwrap();
    let entry = &op.history[0];
    assert_eq!(entry.raw_payload, body);
    let data = entry.data.as_ref().expect("data");
    let field = |s: &prost_types::Struct, name: &str| s.fields[name].kind.clone();
    let Some(prost_types::value::Kind::StructValue(borrower)) = field(data, "borrower") else {
        panic!("data.borrower is an object");
    };
    assert_eq!(
        field(&borrower, "document_number"),
        Some(prost_types::value::Kind::StringValue("33205493087".into()))
    );
    assert_eq!(entry.event_id.len(), 64);

    // Without the flag, no raw payload travels.
    let op = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "")
        .await
        .unwrap();
    assert!(op.history[0].raw_payload.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn both_spellings_of_the_card_settlement_kind_are_one_operation() {
    let server = TestServer::start().await;
    let dashed = fixture("003_historic_card_settlement_completed.json");
    let mut value: serde_json::Value = serde_json::from_slice(&dashed).unwrap();
    value["webhook_type"] = "historic_card_settlement".into();
    value["event_datetime"] = "2022-05-18T21:00:00".into();
    server.post_ok(dashed).await;
    server.post_ok(serde_json::to_vec(&value).unwrap()).await;
    let op = server
        .get(
            "38934f1b-204f-4fc4-844d-5ad562ff36f6",
            "historic-card-settlement",
        )
        .await
        .unwrap();
    assert_eq!(op.kind, "historic_card_settlement");
    assert_eq!(op.event_count, 2);
    server.stop().await;
}

#[tokio::test]
async fn the_catalogs_facts_are_read_from_the_webhooks_and_kept() {
    let server = TestServer::start().await;
    server
        .post_ok(fixture("004_debt_created_waiting_signature.json"))
        .await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    server.post_ok(fixture("004_debt_canceled.json")).await;
    let fact =
        |op: &qistatus::pb::Operation, name: &str| op.facts.get(name).and_then(|v| v.kind.clone());
    use prost_types::value::Kind::{NumberValue, StringValue};
    let debt = server
        .get("871059bd-4014-41ad-82b4-28275ff0e67b", "debt")
        .await
        .unwrap();
    // Not from the first of eight alternative offers: QI does not say which was taken.
    for offered in [
        "issue_amount",
        "disbursed_issue_amount",
        "disbursement_date",
    ] {
        assert_eq!(fact(&debt, offered), None, "{offered}");
    }
    // What the disbursement transfer says was paid out, and when.
    assert_eq!(fact(&debt, "disbursed_amount"), Some(NumberValue(500.0)));
    assert_eq!(
        fact(&debt, "disbursed_at"),
        Some(StringValue("2022-09-28T13:00:47".into()))
    );
    assert_eq!(
        fact(&debt, "requester_identifier_key"),
        Some(StringValue("57f8e1ce-1080-4d0d-a195-89709b961561".into()))
    );
    let canceled = server
        .get("27a099df-4688-43cb-87fa-515b1cf343a5", "debt")
        .await
        .unwrap();
    assert_eq!(
        fact(&canceled, "cancel_reason_code"),
        Some(StringValue("manual".into()))
    );
    assert_eq!(
        fact(&canceled, "cancel_reason"),
        Some(StringValue("Operacao cancelada manualmente".into()))
    );
    server.stop().await;
}

/// `docs/statuses.md` is the built-in catalog's truth table as the code has it.
#[test]
fn the_truth_table_in_docs_is_the_catalogs() {
    let generated =
        qistatus::domain::truth_table::markdown(&qistatus::domain::catalog::Catalog::builtin());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/statuses.md");
    let written = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/statuses.md is out of date: run `cargo run --bin qistatus-server -- catalog \
         --markdown > docs/statuses.md`"
    );
}
