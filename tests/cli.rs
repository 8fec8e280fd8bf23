//! The `qistatus` CLI, run as a real process against a real server.

mod common;

use std::process::Output;

use common::{TestServer, fixture};

async fn qistatus(server: &TestServer, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qistatus"));
    command
        .args(args)
        .env("QISTATUS_SERVER", format!("http://{}", server.grpc));
    command.output().await.expect("run qistatus")
}

#[tokio::test]
async fn get_prints_the_operation_for_people_and_for_scripts() {
    let server = TestServer::start().await;
    server
        .post_ok(fixture("004_debt_created_waiting_signature.json"))
        .await;
    server.post_ok(fixture("004_debt_disbursed.json")).await;
    let key = "871059bd-4014-41ad-82b4-28275ff0e67b";

    let human = qistatus(&server, &["get", key]).await;
    assert!(human.status.success());
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.starts_with(&format!("debt {key}\n")), "{text}");
    assert!(text.contains("status      disbursed (pending)"), "{text}");
    assert!(text.contains("waiting_signature"), "{text}");

    let json = qistatus(&server, &["get", key, "--kind", "debt", "--json"]).await;
    assert!(json.status.success());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["kind"], "debt");
    assert_eq!(value["key"], key);
    assert_eq!(value["status"], "disbursed");
    assert_eq!(value["phase"], "pending");
    assert_eq!(value["version"], 2);
    assert_eq!(value["event_count"], 2);
    assert_eq!(value["event_time"], "2022-09-28T16:01:23Z");
    let history = value["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["data"]["borrower"]["name"], "marcos antonio");
    server.stop().await;
}

#[tokio::test]
async fn errors_print_the_server_message_and_exit_non_zero() {
    let server = TestServer::start().await;
    let out = qistatus(&server, &["get", "missing-key"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no operation with key \"missing-key\""),
        "{err}"
    );
    assert!(err.contains("NotFound"), "{err}");
    server.stop().await;

    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_qistatus"))
        .args(["--server", "http://127.0.0.1:1", "get", "k"])
        .output()
        .await
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
}
