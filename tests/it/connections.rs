//! Connections that never finish their request cannot take the server down: header read,
//! idle and handshake timeouts close them, a bound on open connections keeps file descriptors
//! for real senders, and shedding is logged.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{CLI_BIN, ServerCommand};
use crate::test_server::webhook;

/// Reads until the server closes the connection (EOF or reset), or `limit` passes.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_off_by_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(dir.path())
        .args(["--header-read-timeout", "1s"])
        .start()
        .await;
    let mut slow = TcpStream::connect(server.http).await.unwrap();
    slow.write_all(b"POST /webhooks HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    let (_, closed) = tokio::join!(trickle, async {
        let mut probe = TcpStream::connect(server.http).await.unwrap();
        // A second, silent connection after a request-less start is closed too.
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut probe, Duration::from_secs(5)).await
    });
    let idle_closed = closed.expect("a kept-alive connection with no next request is closed");
    assert!(idle_closed < Duration::from_secs(4), "{idle_closed:?}");
    let closed = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "the trickling connection is still open after 6 s"
    );
}

#[tokio::test]
async fn silent_connections_to_either_listener_are_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(dir.path())
        .args(["--handshake-timeout", "1s"])
        .start()
        .await;
    for addr in [server.http, server.grpc] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("a silent connection to {addr} stayed open"));
        assert!(closed >= Duration::from_millis(900), "{closed:?}");
    }
}

/// Holds a slow request open on `addr`, reconnecting whenever the server closes it, as a
/// slowloris attacker would.
async fn slowloris(addr: std::net::SocketAddr, stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if conn
            .write_all(b"POST /webhooks HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        while !*stop.borrow() {
            tokio::time::sleep(Duration::from_secs(4)).await;
            if conn.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_real_webhook_is_acknowledged_while_1100_slow_connections_are_held_at_ulimit_1024() {
    // The attacker (this test) needs more than 1,100 descriptors itself.
    let raised = rlimit::increase_nofile_limit(8192).expect("raise this test's file limit");
    assert!(
        raised >= 2048,
        "this test needs `ulimit -Hn` of at least 2048, got {raised}"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = ServerCommand::new(&dir.path().join("data"))
        .nofile(1024)
        .log("info")
        .stderr_to(&log)
        .start()
        .await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let attackers: Vec<_> = (0..1100)
        .map(|_| tokio::spawn(slowloris(server.http, stop.clone())))
        .collect();
    // Let every attacker connect and start its request.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks", server.http))
        .timeout(Duration::from_secs(10))
        .body(webhook(
            "debt",
            "real-1",
            "disbursed",
            "2024-01-01 10:00:00",
        ))
        .send()
        .await
        .expect("the real webhook gets an answer");
    let acknowledged = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        acknowledged < Duration::from_secs(3),
        "acknowledged after {acknowledged:?}"
    );

    let started = Instant::now();
    let get = tokio::process::Command::new(CLI_BIN)
        .args([
            "--server",
            &format!("http://{}", server.grpc),
            "get",
            "real-1",
        ])
        .output();
    let get = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("`qistatus get` answers while the intake is under attack")
        .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(String::from_utf8_lossy(&get.stdout).contains("disbursed"));
    assert!(started.elapsed() < Duration::from_secs(3));

    // The shedding is counted where monitoring looks.
    let metrics = server.metrics_text().await;
    let shed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("qistatus_connections_shed_total{listener=\"intake\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(shed >= 1.0, "shed connections are counted:\n{metrics}");

    let _ = stop_tx.send(true);
    for attacker in attackers {
        attacker.abort();
    }
    let status = server.terminate().await;
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("connection limits lowered") && log.contains("ulimit -n"),
        "the server says it lowered its bounds to fit 1024 files:\n{log}"
    );
    assert!(
        log.contains("shedding connections") && log.contains("listener=\"intake\""),
        "the server logs that it shed connections:\n{log}"
    );
    assert!(
        !log.contains("accept failed"),
        "the server ran out of descriptors:\n{log}"
    );
}

#[tokio::test]
async fn the_admin_listener_has_bounds_of_its_own_and_answers_probes_past_trickling_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(dir.path())
        .args(["--admin-max-connections", "4"])
        .args(["--admin-header-read-timeout", "1s"])
        .start()
        .await;
    // Twice the bound, each sending a header line now and then but never the end of one.
    let mut trickling = Vec::new();
    for _ in 0..8 {
        if let Ok(mut stream) = TcpStream::connect(server.admin).await {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
                .await;
            trickling.push(stream);
        }
    }
    let trickle = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for stream in &mut trickling {
                let _ = stream.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    };
    let probe = async {
        // Within the header timeout plus a margin, a probe gets its answer.
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let answer = client
                .get(format!("http://{}/livez", server.admin))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            match answer {
                Ok(answer) => return Some(answer.status()),
                Err(_) if Instant::now() < deadline => continue,
                Err(_) => return None,
            }
        }
    };
    let ((), status) = tokio::join!(trickle, probe);
    assert_eq!(
        status,
        Some(reqwest::StatusCode::OK),
        "/livez while trickled"
    );
    for stream in &mut trickling {
        assert!(
            closed_within(stream, Duration::from_secs(2))
                .await
                .is_some(),
            "a trickling admin connection outlived the admin header timeout"
        );
    }
}
