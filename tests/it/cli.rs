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
    assert!(text.contains("status      disbursed (active)"), "{text}");
    assert!(text.contains("waiting_signature"), "{text}");

    let json = qistatus(&server, &["get", key, "--kind", "debt", "--json", "--full"]).await;
    assert!(json.status.success());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["kind"], "debt");
    assert_eq!(value["key"], key);
    assert_eq!(value["status"], "disbursed");
    assert_eq!(value["phase"], "active");
    assert_eq!(value["version"], 2);
    assert_eq!(value["event_count"], 2);
    assert_eq!(value["event_time"], "2022-09-28T16:01:23Z");
    let history = value["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["data"]["borrower"]["name"], "marcos antonio");
    assert_eq!(value["parts"], serde_json::json!([]));

    // An installment's payment names the debt: the debt lists it, for people and scripts.
    server
        .post_ok(
            String::from_utf8(fixture("009_installment_payment_paid_early.json"))
                .unwrap()
                .replace("4219cb7b-32b9-45d1-b19c-24fbca04ca02", key),
        )
        .await;
    let human = qistatus(&server, &["get", key, "--kind", "debt"]).await;
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains(
            "  parts\n    installment.status_change  1234cb7b-3329-12d1-429c-24f84975ca02  \
             paid_early (succeeded)\n"
        ),
        "{text}"
    );
    let json = qistatus(&server, &["get", key, "--kind", "debt", "--json"]).await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value["status"], "disbursed",
        "an installment never moves its debt"
    );
    assert_eq!(
        value["parts"][0]["key"],
        "1234cb7b-3329-12d1-429c-24f84975ca02"
    );
    assert_eq!(value["parts"][0]["status"], "paid_early");
    assert_eq!(value["parts_omitted"], 0);
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
    assert_eq!(seen[1]["phase"], "active");

    crate::process::send_signal(&child, "INT");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "Ctrl-C ends watch cleanly: {status}");
    server.stop().await;
}

/// Runs the `qistatus` CLI with `args`, bounded in time.
pub(crate) async fn cli(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(args)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the CLI exits on its own")
        .expect("run qistatus")
}

#[tokio::test]
async fn connection_problems_are_named_with_the_fix_and_bounded_in_time() {
    // A scheme-less address gets the address it probably meant.
    let out = cli(&["--server", "127.0.0.1:50051", "get", "k"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean http://127.0.0.1:50051"), "{err}");

    // A refused port says so: one this test holds bound without listening on it, so that
    // nothing else can listen there meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap();
    let out = cli(&["--server", &format!("http://{port}"), "get", "k"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("refused") && err.contains("is qistatus-server running"),
        "{err}"
    );

    // A server that accepts and never answers: the CLI gives up after --timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        }
    });
    let started = std::time::Instant::now();
    let out = cli(&["--server", &address, "--timeout", "1s", "get", "k"]).await;
    let took = started.elapsed();
    holder.abort();
    assert!(!out.status.success());
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "{err}"
    );
}

#[tokio::test]
async fn watch_waits_for_a_server_that_is_not_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    // The watcher starts while its server is down: the server is started once to learn its
    // address, stopped, and started again there once the watcher waits for it.
    let server = crate::process::ServerCommand::new(dir.path()).start().await;
    let grpc = server.grpc;
    assert!(server.terminate().await.success());
    let mut watch = tokio::process::Command::new(crate::process::CLI_BIN)
        .args([
            "--server",
            &format!("http://{grpc}"),
            "watch",
            "--key",
            "w1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // It says it is waiting...
    let mut stderr = tokio::io::BufReader::new(watch.stderr.take().unwrap());
    let mut said = String::new();
    let waiting = async {
        use tokio::io::AsyncBufReadExt;
        while !said.contains("reconnecting") {
            let n = stderr.read_line(&mut said).await.unwrap();
            assert!(n > 0, "the watch exited: {said}");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), waiting)
        .await
        .expect("the watcher says it is reconnecting");
    // ...and is connected once the server is up: the server counts it.
    let server = crate::process::ServerCommand::new(dir.path())
        .grpc_at(grpc)
        .start()
        .await;
    server
        .metric_reaches("qistatus_watchers", 1.0, std::time::Duration::from_secs(15))
        .await;
    let answer = reqwest::Client::new()
        .post(format!("http://{}/webhooks", server.http))
        .body(crate::test_server::webhook(
            "debt",
            "w1",
            "disbursed",
            "2024-01-01 10:00:00",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut stdout = watch.stdout.take().unwrap();
    let mut seen = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("disbursed") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "the watch exited");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), read)
        .await
        .expect("the change reaches the watcher");
    watch.kill().await.unwrap();
    server.terminate().await;
}

#[tokio::test]
async fn human_output_escapes_terminal_controls_and_watch_takes_the_kind_of_a_shared_key() {
    let server = TestServer::start().await;
    let forged = serde_json::json!({
        "webhook_type": "debt", "key": "shared", "status": "canceled",
        "event_datetime": "2024-01-01 10:00:00",
        "description": "\u{1b}[2J\u{1b}[Hstatus      settled (succeeded) \u{202e}",
    });
    server.post_ok(serde_json::to_vec(&forged).unwrap()).await;
    server
        .post_ok(crate::test_server::webhook(
            "account",
            "shared",
            "account_opened",
            "2024-01-01 10:00:00",
        ))
        .await;

    let out = qistatus(&server, &["get", "shared", "--kind", "debt"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stdout.contains(&0x1b),
        "an escape byte reached the terminal"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{202e}'), "{text}");
    assert!(text.contains("\\u{001b}[2J"), "{text}");

    // The key names a debt and an account: --kind picks the debt, and --initial shows it.
    let mut watch = tokio::process::Command::new(crate::process::CLI_BIN)
        .args(["--server", &format!("http://{}", server.grpc)])
        .args(["watch", "--key", "shared", "--kind", "debt", "--initial"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let mut seen = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("current state") {
            let n = stdout.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    watch.kill().await.unwrap();
    assert!(
        seen.contains("debt shared  canceled (current state)"),
        "{seen}"
    );
    server.stop().await;
}

async fn replay(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(crate::process::CLI_BIN)
        .arg("replay")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.unwrap();
    }
    drop(input);
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn replay_posts_an_archive_and_sums_up_with_a_failing_exit_on_any_failure() {
    let server = TestServer::start().await;
    let intake = server.webhooks_url();
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        String::from_utf8(fixture("004_debt_disbursed.json"))
            .unwrap()
            .replace('\n', " "),
        String::from_utf8(fixture("004_debt_disbursed.json"))
            .unwrap()
            .replace('\n', " "),
        String::new(),
        r#"{"hello":"world"}"#.to_owned(),
        "not json".to_owned(),
        String::from_utf8(crate::test_server::webhook(
            "debt",
            "r1",
            "settled",
            "2024-01-01 10:00:00",
        ))
        .unwrap(),
    ];
    let archive = dir.path().join("archive.jsonl");
    std::fs::write(&archive, lines.join("\n")).unwrap();

    let out = replay(
        &[
            archive.to_str().unwrap(),
            "--intake",
            &intake,
            "--rate",
            "200",
        ],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed webhook fails the run");
    assert!(
        stdout.contains(
            "replayed 5 webhook(s): 2 accepted, 1 duplicate, 1 quarantined, 0 held, 1 failed"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("archive.jsonl line 5: 400"),
        "the failure names its line: {stderr}"
    );
    assert_eq!(server.get("r1", "debt").await.unwrap().status, "settled");

    // A directory of .json files, and standard input; replaying again is all duplicates.
    let webhooks = dir.path().join("webhooks");
    std::fs::create_dir(&webhooks).unwrap();
    std::fs::write(webhooks.join("1.json"), fixture("004_debt_canceled.json")).unwrap();
    std::fs::write(webhooks.join("notes.txt"), b"not a webhook").unwrap();
    let out = replay(
        &[webhooks.to_str().unwrap(), "--intake", &intake, "--json"],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["webhooks"].as_u64(), summary["accepted"].as_u64()),
        (Some(1), Some(1))
    );
    let out = replay(
        &["-", "--intake", &intake, "--json"],
        Some(
            &fixture("004_debt_canceled.json")
                .into_iter()
                .filter(|b| *b != b'\n')
                .collect::<Vec<u8>>(),
        ),
    )
    .await;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["duplicate"], 1, "{summary}");
    server.stop().await;
}

#[tokio::test]
async fn replay_signs_for_an_intake_that_verifies() {
    let secret = "whsec_c2VjcmV0LWZvci1yZXBsYXk=";
    let verifier = qistatus::WebhookVerifier::new(
        &[],
        vec![],
        &[secret.to_owned()],
        std::time::Duration::from_secs(300),
    )
    .unwrap();
    let server = TestServer::start_configured(|s| s.webhook_verifier = verifier).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.jsonl");
    std::fs::write(
        &archive,
        crate::test_server::webhook("debt", "s1", "disbursed", "2024-01-01 10:00:00"),
    )
    .unwrap();
    let intake = server.webhooks_url();

    let unsigned = replay(&[archive.to_str().unwrap(), "--intake", &intake], None).await;
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("401"));
    let signed = replay(
        &[
            archive.to_str().unwrap(),
            "--intake",
            &intake,
            "--webhook-secret",
            secret,
        ],
        None,
    )
    .await;
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert_eq!(server.get("s1", "debt").await.unwrap().status, "disbursed");
    server.stop().await;
}

/// Replay reads signed acknowledgements, and a line that is not UTF-8 is that line's
/// failure, reported by number, while the rest are posted.
#[tokio::test]
async fn replay_reads_signed_acknowledgements_and_reports_a_non_utf8_line_alone() {
    use p521::pkcs8::{EncodePrivateKey, LineEnding};
    let key = p521::ecdsa::SigningKey::random(&mut p521::elliptic_curve::rand_core::OsRng);
    let pem = p521::SecretKey::from_bytes(&key.to_bytes())
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let signer = qistatus::ResponseSigner::from_pem(&pem, None).unwrap();
    let server = TestServer::start_configured(|s| s.response_signer = Some(signer)).await;
    let webhook =
        |key: &str| crate::test_server::webhook("debt", key, "disbursed", "2024-01-01 10:00:00");
    let mut archive = webhook("signed-1");
    archive.extend_from_slice(b"\n{\"key\": \"caf\xe9\"}\r\n");
    archive.extend_from_slice(&webhook("signed-2"));
    archive.extend_from_slice(b"\r\n");
    archive.extend_from_slice(&webhook("signed-1"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.jsonl");
    std::fs::write(&path, &archive).unwrap();

    let out = replay(
        &[path.to_str().unwrap(), "--intake", &server.webhooks_url()],
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(
            "replayed 4 webhook(s): 2 accepted, 1 duplicate, 0 quarantined, 0 held, 1 failed"
        ),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("line 2: not UTF-8"),
        "the bad line is named: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "a failure is a failing exit");
    let op = server
        .get("signed-2", "debt")
        .await
        .expect("posted past the bad line");
    assert_eq!(op.status, "disbursed");
}
