//! The `qistatus` CLI, run as a real process against a real server.

use std::process::Output;

use crate::test_server::{TestServer, fixture};

async fn qistatus(server: &TestServer, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(crate::process::CLI_BIN);
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

    let unreachable = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", "http://127.0.0.1:1", "get", "k"])
        .output()
        .await
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
}

#[tokio::test]
async fn list_follows_pages_up_to_the_limit() {
    let server = TestServer::start().await;
    for i in 0..5 {
        server
            .post_ok(crate::test_server::webhook(
                "debt",
                &format!("d{i}"),
                "disbursed",
                "2024-01-01 10:00:00",
            ))
            .await;
    }
    server
        .post_ok(crate::test_server::webhook(
            "debt",
            "c1",
            "canceled",
            "2024-01-01 10:00:00",
        ))
        .await;

    let out = qistatus(&server, &["list", "--status", "disbursed", "--json"]).await;
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = lines.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["d0", "d1", "d2", "d3", "d4"]);

    let limited = qistatus(&server, &["list", "--status", "disbursed", "--limit", "2"]).await;
    let text = String::from_utf8(limited.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "a header and two rows: {text}");
    assert!(text.lines().nth(1).unwrap().starts_with("debt"), "{text}");

    let failed = qistatus(
        &server,
        &["list", "--phase", "failed", "--kind", "debt", "--json"],
    )
    .await;
    let text = String::from_utf8(failed.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"c1\""), "{text}");

    let usage = qistatus(&server, &["list"]).await;
    assert!(!usage.status.success(), "a status or a phase is required");
    server.stop().await;
}

#[tokio::test]
async fn watch_prints_one_json_line_per_change_and_ends_cleanly_on_ctrl_c() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["watch", "--kind", "debt", "--from-sequence", "0", "--json"])
        .env("QISTATUS_SERVER", format!("http://{}", server.grpc))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server
        .post_ok(crate::test_server::webhook(
            "debt",
            "k",
            "waiting_signature",
            "2024-01-01 10:00:00",
        ))
        .await;
    server
        .post_ok(crate::test_server::webhook(
            "account",
            "a",
            "account_opened",
            "2024-01-01 10:00:00",
        ))
        .await;
    server
        .post_ok(crate::test_server::webhook(
            "debt",
            "k",
            "disbursed",
            "2024-01-02 10:00:00",
        ))
        .await;

    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = lines.next_line().await.unwrap().expect("a line per change");
        seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    assert_eq!(seen[0]["sequence"], 1);
    assert_eq!(seen[0]["status"], "waiting_signature");
    assert_eq!(seen[0]["previous_status"], "");
    assert_eq!(seen[1]["sequence"], 3);
    assert_eq!(seen[1]["kind"], "debt");
    assert_eq!(seen[1]["key"], "k");
    assert_eq!(seen[1]["status"], "disbursed");
    assert_eq!(seen[1]["previous_status"], "waiting_signature");
    assert_eq!(seen[1]["phase"], "pending");

    crate::process::send_signal(&child, "INT");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "Ctrl-C ends watch cleanly: {status}");
    server.stop().await;
}
