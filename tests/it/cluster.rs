//! A cluster: three real `nats-server` processes with JetStream clustered on loopback, and two
//! real `qistatus-server` processes following one stream with three replicas. Both nodes take
//! webhooks; one NATS server and one qistatus node are killed under load and restarted.
//!
//! Needs `nats-server`, which [`crate::peers`] finds or installs: the test fails, rather than
//! passes quietly, without it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qistatus::client::{WatchEvent, WatchQuery};
use qistatus::pb;
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;

use crate::process::{ServerCommand, refused_start, send_signal};
use crate::test_server::webhook;

/// A NATS server of the test cluster.
struct NatsServer {
    name: String,
    /// Where clients connect: the port it got at its first start (`-p -1`, read from its
    /// ports file), and keeps when restarted.
    client: Option<SocketAddr>,
    /// Where the other servers route to it.
    route: SocketAddr,
    store: PathBuf,
    child: Option<Child>,
}

/// A loopback port for a NATS server's cluster routes, free when asked (it may be taken by
/// the time the server binds it). The one port the tests pick themselves: JetStream
/// clustering needs every server's routes configured when it starts ("JetStream cluster
/// requires configured routes"), so they must be known before any server runs; every other
/// port (the servers', nats-server's client port, chromedriver's) is chosen by the one who
/// binds it and read back.
fn route_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The client address a nats-server wrote in its ports file (`<name>_<pid>.ports`, JSON with
/// a `nats` list of URLs) in `dir`, once it has.
fn nats_client_port(dir: &Path) -> Option<SocketAddr> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    let file = std::fs::read_dir(dir).ok()?.find_map(|entry| {
        let path = entry.ok()?.path();
        (path.extension()? == "ports").then_some(path)
    })?;
    let ports: Ports = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    ports.nats.first()?.strip_prefix("nats://")?.parse().ok()
}

/// Three NATS servers, clustered with JetStream.
struct NatsCluster {
    servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    async fn start(size: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let servers = (0..size)
            .map(|i| NatsServer {
                name: format!("n{i}"),
                client: None,
                route: route_port(),
                store: dir.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { servers, _dir: dir };
        for i in 0..size {
            cluster.start_server(i).await;
        }
        cluster
    }

    /// Every client URL, as `--nats` takes them.
    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://{}", s.client.expect("started")))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn start_server(&mut self, i: usize) {
        let routes = self
            .servers
            .iter()
            .map(|s| format!("nats://{}", s.route))
            .collect::<Vec<_>>()
            .join(",");
        let clustered = self.servers.len() > 1;
        let server = &mut self.servers[i];
        let ports_dir = server.store.with_extension("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("a directory for the ports file");
        let port = server.client.map_or(-1, |a| i32::from(a.port()));
        let mut command = Command::new(crate::peers::nats_server());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(["-n", &server.name, "-js", "-sd"])
            .arg(&server.store)
            .arg("--log")
            .arg(server.store.with_extension("log"));
        if clustered {
            command
                .args(["--cluster_name", "qistatus-test"])
                .args(["--cluster", &format!("nats://{}", server.route)])
                .args(["--routes", &routes]);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        server.child = Some(child);
        let what = format!("nats-server {} listens", server.name);
        let client = crate::wait::wait_until(&what, Duration::from_secs(10), || {
            let address = nats_client_port(&ports_dir);
            async move {
                let address = address?;
                tokio::net::TcpStream::connect(address).await.ok()?;
                Some(address)
            }
        })
        .await;
        server.client = Some(client);
    }

    /// Sends `signal` (`STOP`, `CONT`) to server `i`: a stopped server keeps its connections
    /// open but answers nothing, as a frozen or overloaded one does.
    fn signal(&self, i: usize, signal: &str) {
        send_signal(self.servers[i].child.as_ref().expect("running"), signal);
    }

    async fn kill(&mut self, i: usize) {
        let mut child = self.servers[i].child.take().expect("running");
        child.kill().await.expect("SIGKILL nats-server");
    }
}

fn node(dir: &Path, nats: &NatsCluster) -> ServerCommand {
    ServerCommand::new(dir).args(["--nats", &nats.urls(), "--nats-replicas", "3"])
}

async fn post(http: SocketAddr, body: &[u8]) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/webhooks"))
        .timeout(Duration::from_secs(15))
        .body(body.to_vec())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

async fn get(grpc: SocketAddr, key: &str) -> Option<pb::Operation> {
    let mut client = qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .expect("connect");
    match client.get(key, Some("debt")).await {
        Ok(op) => Some(op),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => None,
        Err(e) => panic!("GetOperation {key} on {grpc}: {e}"),
    }
}

/// Every change (unchanged webhooks included) a watch from `after` on `grpc` sees up to
/// `until`, as (sequence, key, status, version).
async fn changes(
    grpc: SocketAddr,
    after: u64,
    until: u64,
    store_id: Option<String>,
) -> Vec<(u64, String, String, u64)> {
    let client = qistatus::client::Client::connect(&format!("http://{grpc}"))
        .await
        .expect("connect");
    let events = client.watch(WatchQuery {
        start_after_sequence: Some(after),
        include_unchanged: true,
        store_id,
        ..Default::default()
    });
    tokio::pin!(events);
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.next().await.expect("open").expect("no error") {
                WatchEvent::Change(c) => {
                    let op = c.operation.expect("operation");
                    seen.push((c.sequence, op.key, op.status, op.version));
                    if c.sequence >= until {
                        return;
                    }
                }
                WatchEvent::Progress(p) if p >= until => return,
                _ => {}
            }
        }
    })
    .await
    .expect("the node reaches the head within 60 s");
    seen
}

/// The store identity a node reports in its watch progress.
async fn store_id(grpc: SocketAddr) -> String {
    let mut client = pb::operation_status_service_client::OperationStatusServiceClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .expect("connect");
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest {
            start_after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    loop {
        let message = stream.message().await.expect("stream").expect("open");
        if let Some(pb::watch_operation_response::Event::Progress(p)) = message.event {
            return p.store_id;
        }
    }
}

/// Waits until a node's view has applied the stream as far as `sequence` shows (its copy of
/// the operation reached `version`).
async fn wait_for_version(grpc: SocketAddr, key: &str, version: u64) -> pb::Operation {
    let what = format!("{key} reaches version {version} on {grpc}");
    crate::wait::wait_until(&what, Duration::from_secs(30), || async {
        get(grpc, key).await.filter(|op| op.version >= version)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_on_a_replicated_stream_agree_and_lose_nothing_when_killed() {
    let mut nats = NatsCluster::start(3).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Node a's log (and each NATS server's), printed if a stops acknowledging.
    let logs = tempfile::tempdir().unwrap();
    let a_log = logs.path().join("a.log");
    let a = node(dir_a.path(), &nats)
        .log("info,qistatus=debug")
        .stderr_to(&a_log)
        .start()
        .await;
    let b = node(dir_b.path(), &nats).start().await;

    // The same webhook to both nodes is stored once.
    let same = webhook("debt", "same", "disbursed", "2024-01-01 10:00:00");
    let (status, first) = post(a.http, &same).await.expect("a answers");
    assert_eq!((status, first["result"].as_str()), (200, Some("accepted")));
    let (status, second) = post(b.http, &same).await.expect("b answers");
    assert_eq!(
        (status, second["result"].as_str(), &second["sequence"]),
        (200, Some("duplicate"), &first["sequence"]),
        "{second}"
    );
    // Read-your-write on the node that answered.
    assert_eq!(get(b.grpc, "same").await.expect("on b").status, "disbursed");

    // Stages out of order, spread over both nodes: the same answer on both.
    for (node, status, time) in [
        (b.http, "settled", "2024-01-04 10:00:00"),
        (a.http, "waiting_signature", "2024-01-01 10:00:00"),
        (b.http, "disbursed", "2024-01-03 10:00:00"),
        (a.http, "signed", "2024-01-02 10:00:00"),
    ] {
        let (code, _) = post(node, &webhook("debt", "mixed", status, time))
            .await
            .expect("answered");
        assert_eq!(code, 200);
    }
    let on_a = wait_for_version(a.grpc, "mixed", 4).await;
    let on_b = wait_for_version(b.grpc, "mixed", 4).await;
    assert_eq!(on_a.status, "settled");
    assert_eq!(
        (&on_a.status, on_a.version, on_a.last_sequence),
        (&on_b.status, on_b.version, on_b.last_sequence)
    );

    // Load on both nodes; one NATS server and node b are killed in the middle of it.
    // Each acknowledged key, with its sequence (`None`: answered `held`, its sequence known
    // once the stream took it).
    let acked: Arc<Mutex<BTreeMap<String, Option<u64>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..6)
        .map(|sender| {
            let (acked, stop) = (acked.clone(), stop.clone());
            let targets = [a.http, b.http];
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load-{sender}-{i}");
                    let body = webhook("debt", &key, "disbursed", "2024-01-01 10:00:00");
                    // Like QI Tech behind a balancer: a failed try goes to the other node.
                    for target in [targets[sender % 2], targets[(sender + 1) % 2]] {
                        if let Ok((200, answer)) = post(target, &body).await {
                            let sequence = match answer["result"].as_str() {
                                Some("held") => None,
                                _ => Some(answer["sequence"].as_u64().expect("a sequence")),
                            };
                            acked.lock().unwrap().insert(key.clone(), sequence);
                            break;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // The kills come in the middle of it: once both nodes acknowledged a good part.
    let acked_by_now = |count: usize| {
        let acked = acked.clone();
        move || {
            let enough = acked.lock().unwrap().len() >= count;
            std::future::ready(enough.then_some(()))
        }
    };
    crate::wait::wait_until(
        "200 acknowledged",
        Duration::from_secs(30),
        acked_by_now(200),
    )
    .await;
    nats.kill(2).await;
    let (b_http, b_grpc) = (b.http, b.grpc);
    b.kill().await;
    // Node a keeps acknowledging once JetStream has moved on (a new stream leader, if the
    // killed server led it; a new subscription, if a's was there).
    let acked_at_kill = acked.lock().unwrap().len();
    let killed = std::time::Instant::now();
    let again =
        crate::wait::until_or_none(Duration::from_secs(30), acked_by_now(acked_at_kill + 50));
    if again.await.is_none() {
        eprintln!("{}", std::fs::read_to_string(&a_log).unwrap_or_default());
        for s in &nats.servers {
            eprintln!(
                "=== {}\n{}",
                s.name,
                std::fs::read_to_string(s.store.with_extension("log")).unwrap_or_default()
            );
        }
        panic!(
            "node a acknowledges again within 30 s of the kills ({} before, {} now)",
            acked_at_kill,
            acked.lock().unwrap().len()
        );
    }
    eprintln!(
        "50 more acknowledged {} ms after the kills",
        killed.elapsed().as_millis()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    nats.start_server(2).await;
    let b = node(dir_b.path(), &nats).at(b_http, b_grpc).start().await;

    // Nothing acknowledged is lost, on either node, and both hold the same history.
    let acked = acked.lock().unwrap().clone();
    // Held ones reach the stream too: their sequences are read from a node once it has them.
    let mut acked = acked;
    for (key, sequence) in acked.iter_mut().filter(|(_, s)| s.is_none()) {
        let op = wait_for_version(a.grpc, key, 1).await;
        *sequence = Some(op.last_sequence);
    }
    let acked: BTreeMap<String, u64> = acked
        .into_iter()
        .map(|(key, sequence)| (key, sequence.expect("every sequence known now")))
        .collect();
    let head = *acked.values().max().expect("some acknowledged");
    let on_a = changes(a.grpc, 0, head, None).await;
    let id_a = store_id(a.grpc).await;
    let on_b = changes(b.grpc, 0, head, Some(id_a.clone())).await;
    assert_eq!(store_id(b.grpc).await, id_a, "one identity for the cluster");
    assert_eq!(on_a.len(), on_b.len());
    assert!(on_a == on_b, "both nodes saw the same changes");
    // And give the same flow for the same window (the webhooks' days, January 2024).
    let flow = |grpc: SocketAddr| async move {
        let mut client = qistatus::client::Client::connect(&format!("http://{grpc}"))
            .await
            .expect("connect");
        let (since, until) = (1_703_980_800_000, 1_706_659_200_000);
        client
            .flow("debt", Some(since), Some(until))
            .await
            .expect("GetFlow")
    };
    let (flow_a, flow_b) = (flow(a.grpc).await, flow(b.grpc).await);
    assert!(!flow_a.cohorts.is_empty(), "{flow_a:?}");
    assert_eq!(flow_a, flow_b, "both nodes give the same flow");
    let by_sequence: BTreeMap<u64, &str> = on_a.iter().map(|c| (c.0, c.1.as_str())).collect();
    for (key, sequence) in &acked {
        assert_eq!(
            by_sequence.get(sequence).copied(),
            Some(key.as_str()),
            "acknowledged {key} at {sequence}"
        );
    }
    // Sequences have no gaps, and a watch resumed mid-way is the same on both nodes.
    let sequences: Vec<u64> = on_a.iter().map(|c| c.0).collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    let middle = head / 2;
    assert_eq!(
        changes(a.grpc, middle, head, Some(id_a.clone())).await,
        changes(b.grpc, middle, head, Some(id_a.clone())).await
    );
    // The restarted node is ready, caught up, and says so in its metrics.
    let admin = |path: &str| {
        let url = format!("http://{}{path}", b.admin);
        async move {
            let response = reqwest::get(url).await.expect("admin answers");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(admin("/readyz").await, (200, "ready\n".to_owned()));
    let metrics = admin("/metrics").await.1;
    assert!(metrics.contains("qistatus_stream_lag 0\n"), "{metrics}");
    let applied: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("qistatus_stream_applied_sequence "))
        .and_then(|v| v.parse().ok())
        .expect("the applied stream sequence");
    assert!(applied >= head, "applied {applied}, head {head}");
    // A watcher that saw a change on node a resumes on node b right away: b waits until it
    // has applied it too, rather than calling the resume point foreign.
    let (code, answer) = post(
        a.http,
        &webhook("debt", "resumed", "disbursed", "2024-01-05 10:00:00"),
    )
    .await
    .expect("a answers");
    assert_eq!(code, 200);
    let seen_on_a = answer["sequence"].as_u64().expect("a sequence");
    assert!(
        changes(b.grpc, seen_on_a, seen_on_a, Some(id_a.clone()))
            .await
            .is_empty()
    );
    for key in ["same", "mixed"] {
        let on_a = get(a.grpc, key).await.expect("on a");
        let on_b = get(b.grpc, key).await.expect("on b");
        assert_eq!(
            (on_a.status, on_a.version, on_a.last_sequence),
            (on_b.status, on_b.version, on_b.last_sequence),
            "{key}"
        );
    }
    drop((a, b));
}

/// A node that cannot follow the stream refuses to start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_store_cannot_join_a_cluster() {
    let nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let single = ServerCommand::new(dir.path()).start().await;
    let (code, _) = post(
        single.http,
        &webhook("debt", "k", "disbursed", "2024-01-01 10:00:00"),
    )
    .await
    .expect("answered");
    assert_eq!(code, 200);
    single.terminate().await;
    let stderr = refused_start(
        dir.path(),
        &["--nats", &nats.urls(), "--nats-replicas", "1"],
    );
    assert!(stderr.contains("holds a single node's store"), "{stderr}");
}

/// A node that was away while the stream dropped messages it had not applied refuses to
/// start, naming the gap and what to do, instead of silently missing webhooks.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_the_streams_retention_refuses_to_start() {
    let nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cluster_args = ["--nats", &nats.urls(), "--nats-replicas", "1"];
    let node = ServerCommand::new(dir.path())
        .args(cluster_args)
        .start()
        .await;
    for i in 0..3 {
        let body = webhook("debt", &format!("k{i}"), "disbursed", "2024-01-01 10:00:00");
        assert_eq!(post(node.http, &body).await.expect("answered").0, 200);
    }
    node.terminate().await;

    // While it is away: two more webhooks, then the stream drops everything it holds.
    let client = async_nats::connect(nats.urls()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    for i in 3..5 {
        let body = webhook("debt", &format!("k{i}"), "disbursed", "2024-01-01 10:00:00");
        jetstream
            .publish("qistatus.webhooks", body.into())
            .await
            .expect("published")
            .await
            .expect("acknowledged");
    }
    let mut stream = jetstream.get_stream("qistatus").await.expect("the stream");
    stream.purge().await.expect("purged");
    assert_eq!(stream.info().await.expect("info").state.first_sequence, 6);

    let stderr = refused_start(dir.path(), &cluster_args);
    assert!(
        stderr.contains("to message 3, but the stream now starts at 6")
            && stderr.contains("qistatus-server restore"),
        "{stderr}"
    );
}

/// Storing that outlasts the request timeout is qistatus's delay, not the sender's: with its
/// NATS server frozen (connection open, no answers), a node answers 503 with `Retry-After`
/// (not 408), and the retry once NATS is back is safe: the webhook is in the operation once.
#[tokio::test(flavor = "multi_thread")]
async fn storing_past_the_request_timeout_is_a_503_and_a_retry_is_safe() {
    let nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let node = ServerCommand::new(dir.path())
        .args(["--nats", &nats.urls(), "--nats-replicas", "1"])
        .args(["--request-timeout", "500ms"])
        .start()
        .await;
    let first = webhook("debt", "slow-1", "waiting_signature", "2024-01-01 10:00:00");
    assert_eq!(post(node.http, &first).await.expect("answered").0, 200);

    nats.signal(0, "STOP");
    let second = webhook("debt", "slow-1", "disbursed", "2024-01-01 11:00:00");
    let response = reqwest::Client::new()
        .post(format!("http://{}/webhooks", node.http))
        .timeout(Duration::from_secs(15))
        .body(second.clone())
        .send()
        .await
        .expect("answered");
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, answer): (u16, serde_json::Value) = (
        response.status().as_u16(),
        response.json().await.expect("a JSON body"),
    );
    nats.signal(0, "CONT");
    assert_eq!(status, 503, "{answer}");
    assert!(retry_after.is_some(), "no Retry-After");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("not confirmed stored within 500ms")),
        "{answer}"
    );

    // The sender's retry, once NATS answers again.
    let retried = crate::wait::wait_until(
        "the sender's retry acknowledged",
        Duration::from_secs(15),
        || async {
            match post(node.http, &second).await {
                Ok((200, answer)) => Some(answer),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        matches!(retried["result"].as_str(), Some("accepted" | "duplicate")),
        "{retried}"
    );
    let op = wait_for_version(node.grpc, "slow-1", 2).await;
    assert_eq!((op.status.as_str(), op.version), ("disbursed", 2));
}

/// A cluster node whose local log is damaged does not refuse for ever: its copy is set aside
/// whole (nothing deleted) and it reads the stream again, losing nothing acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_damaged_log_sets_it_aside_and_reads_the_stream_again() {
    let nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster_args = ["--nats", &nats.urls(), "--nats-replicas", "1"];
    let node = ServerCommand::new(&data).args(cluster_args).start().await;
    for i in 0..50 {
        let body = webhook("debt", &format!("k{i}"), "disbursed", "2024-01-01 10:00:00");
        assert_eq!(post(node.http, &body).await.expect("answered").0, 200);
    }
    assert!(node.terminate().await.success());
    let segment = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0xa5;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let log = dir.path().join("node.log");
    let node = ServerCommand::new(&data)
        .args(cluster_args)
        .stderr_to(&log)
        .start()
        .await;
    // Ready while fewer than `MAX_READY_LAG` messages behind: the 50 come back shortly after.
    for i in 0..50 {
        let op = wait_for_version(node.grpc, &format!("k{i}"), 1).await;
        assert_eq!(op.status, "disbursed", "re-read from the stream");
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("set aside as it was"), "{said}");
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("data.damaged-"))
        .expect("the damaged directory, set aside");
    let kept = aside.join("log").join(segment.file_name().unwrap());
    assert_eq!(std::fs::read(kept).unwrap(), bytes, "set aside as it was");
    drop(node);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_record_the_same_overdue_events_at_the_same_sequences() {
    let nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        "[kinds.debt.expect]\nwaiting_signature = \"2s\"\n",
    )
    .unwrap();
    let catalog = catalog.to_str().unwrap();
    let urls = nats.urls();
    let args = [
        "--nats",
        urls.as_str(),
        "--nats-replicas",
        "1",
        "--catalog",
        catalog,
        "--overdue-tick",
        "100ms",
    ];
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = ServerCommand::new(&dir_a).args(args).start().await;
    let b = ServerCommand::new(&dir_b).args(args).start().await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let old = (chrono::Utc::now() - chrono::Duration::days(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (node, key, status, time) in [
        (a.http, "w-1", "waiting_signature", &now),
        (b.http, "w-2", "waiting_signature", &now),
        (b.http, "w-3", "waiting_signature", &old),
        (a.http, "w-2", "canceled", &now),
    ] {
        let (code, _) = post(node, &webhook("debt", key, status, time))
            .await
            .expect("answered");
        assert_eq!(code, 200);
    }
    // Both nodes propose what falls due; the stream orders and dates the proposals, and each
    // node's writer records an operation once, however often both look after.
    use crate::overdue::{
        feed_head, overdue_events_heard, overdue_events_through, overdue_ticks, ticks_passed,
    };
    overdue_events_heard(a.grpc, 2).await;
    let looked = (overdue_ticks(a.admin).await, overdue_ticks(b.admin).await);
    ticks_passed(a.admin, looked.0, 3).await;
    ticks_passed(b.admin, looked.1, 3).await;
    let head = feed_head(a.grpc).await;
    let on_a = overdue_events_through(a.grpc, head).await;
    let on_b = overdue_events_through(b.grpc, head).await;
    let keys: Vec<&str> = on_a.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(keys, ["w-3", "w-1"], "{on_a:?}");
    assert_eq!(on_a, on_b, "the same events at the same sequences");

    // A node restarted resumes the same feed, with nothing repeated.
    drop(b);
    let b = ServerCommand::new(&dir_b).args(args).start().await;
    ticks_passed(b.admin, overdue_ticks(b.admin).await, 3).await;
    let again = overdue_events_through(b.grpc, feed_head(a.grpc).await).await;
    assert_eq!(again, on_a);
    drop((a, b));
}

/// The index of the NATS server that leads stream `stream` now, from JetStream's stream info.
async fn stream_leader(nats: &NatsCluster, stream: &str) -> usize {
    let urls = nats.urls();
    let first = urls.split(',').next().expect("a server");
    let client = async_nats::connect(first).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    let name = crate::wait::wait_until("the stream has a leader", Duration::from_secs(30), || {
        let jetstream = jetstream.clone();
        async move {
            let mut stream = jetstream.get_stream(stream).await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref()?.leader.clone()
        }
    })
    .await;
    nats.servers
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("leader {name} is none of the test's servers"))
}

/// Issue 38's first row. A stream whose leader is killed takes nothing until its followers
/// elect another, 4 to 9 s later (nats-server's Raft election timeout): measured here before
/// holding, the first webhook after the kill was acknowledged 4.4 to 8.9 s after it, a thin
/// margin under QI's 10 s that the election's own randomness could break. Now a publish not
/// acknowledged within `--cluster-hold-after` (5 s) is held on the node's disk and answered
/// then; the node publishes it once the stream has a leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_stream_leader_killed_every_webhook_is_acknowledged_within_qis_ten_seconds() {
    let mut nats = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let a = node(&dir.path().join("a"), &nats)
        .log("info,qistatus::cluster=debug")
        .stderr_to(&log)
        .start()
        .await;
    let keys: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    for key in &keys {
        let body = webhook("debt", key, "disbursed", "2024-01-01 10:00:00");
        assert_eq!(post(a.http, &body).await.unwrap().0, 200);
    }
    let leader = stream_leader(&nats, "qistatus").await;
    nats.kill(leader).await;
    // Senders like QI Tech: one try each, answered within 10 s; four at once, each posting
    // one after another.
    let senders = (0..4)
        .map(|sender| {
            let (http, log) = (a.http, log.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..10 {
                    let key = format!("after-{sender}-{i}");
                    let body = webhook("debt", &key, "disbursed", "2024-01-01 10:00:00");
                    let started = std::time::Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), post(http, &body)).await;
                    let waited = started.elapsed();
                    match answer {
                        Ok(Ok((200, reply))) => {
                            answers.push((
                                key,
                                waited,
                                reply["result"].as_str().unwrap_or("").to_owned(),
                            ));
                        }
                        other => panic!(
                            "{key}, {waited:?} after the kill of the stream's leader n{leader}: \
                         {other:?} (answered before it: {answers:?})\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        ),
                    }
                }
                answers
            })
        })
        .collect::<Vec<_>>();
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.expect("a sender finished"));
    }
    let held = answers
        .iter()
        .filter(|(_, _, result)| result == "held")
        .count();
    let slowest = answers.iter().map(|(_, waited, _)| *waited).max().unwrap();
    eprintln!(
        "40 webhooks across the kill of the stream's leader: slowest answer {slowest:?}, {held} held"
    );
    assert!(
        answers
            .iter()
            .all(|(_, _, result)| ["accepted", "held"].contains(&result.as_str())),
        "{answers:?}"
    );
    // Held or not, every acknowledged webhook reaches the stream and the node's view, and
    // nothing stays held.
    for (key, _, _) in &answers {
        wait_for_version(a.grpc, key, 1).await;
    }
    for key in &keys {
        assert!(get(a.grpc, key).await.is_some(), "{key}");
    }
    crate::wait::wait_until("nothing held", Duration::from_secs(30), || async {
        (metric_of(&a, "qistatus_cluster_held_webhooks ").await == Some(0.0)).then_some(())
    })
    .await;
    drop(a);
}

/// With the stream unreachable (its only NATS server killed), webhooks are held and
/// acknowledged; the node is killed, one held file damaged on disk; once NATS and the node
/// are back, every held webhook that reads back reaches the stream with the time it was
/// received, and the damaged one is set aside, not lost quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_held_while_the_stream_is_away_reach_it_after_a_kill_and_a_damaged_one_is_set_aside()
 {
    let mut nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let log = dir.path().join("node.log");
    let start = |nats: &NatsCluster| {
        ServerCommand::new(&data)
            .args(["--nats", &nats.urls(), "--nats-replicas", "1"])
            .args(["--cluster-hold-after", "300ms"])
            .stderr_to(&log)
    };
    let a = start(&nats).start().await;
    let body = webhook("debt", "kept-before", "disbursed", "2024-01-01 10:00:00");
    assert_eq!(post(a.http, &body).await.unwrap().1["result"], "accepted");
    nats.kill(0).await;
    // Whole milliseconds: what the store keeps.
    let received = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    let keys: Vec<String> = (0..5).map(|i| format!("held-{i}")).collect();
    for key in &keys {
        let body = webhook("debt", key, "disbursed", "2024-01-01 10:00:00");
        let (code, reply) = post(a.http, &body).await.expect("answered");
        assert_eq!(
            (code, reply["result"].as_str()),
            (200, Some("held")),
            "{reply}"
        );
    }
    // `qistatus replay` counts them as held, not failed.
    let archive = dir.path().join("archive.jsonl");
    let lines: Vec<String> = (5..7)
        .map(|i| {
            String::from_utf8(webhook(
                "debt",
                &format!("held-{i}"),
                "disbursed",
                "2024-01-01 10:00:00",
            ))
            .unwrap()
        })
        .collect();
    std::fs::write(&archive, lines.join("\n")).unwrap();
    let intake = format!("http://{}/webhooks", a.http);
    let out = crate::cli::cli(&["replay", archive.to_str().unwrap(), "--intake", &intake]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("2 held, 0 failed"), "{said}");
    assert_eq!(
        metric_of(&a, "qistatus_cluster_held_webhooks ").await,
        Some(7.0)
    );
    assert!(
        get(a.grpc, "held-0").await.is_none(),
        "not shown before the stream has it"
    );
    a.kill().await;

    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("held"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "{files:?}");
    let mut bytes = std::fs::read(&files[2]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&files[2], &bytes).unwrap();

    let released = chrono::Utc::now();
    nats.start_server(0).await;
    let a = start(&nats).start().await;
    // The five posted and the two replayed, less the damaged one.
    let keys: Vec<String> = (0..7).map(|i| format!("held-{i}")).collect();
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| *i != 2) {
        let op = wait_for_version(a.grpc, key, 1).await;
        let first = op.first_received_at.expect("a received time");
        let first = chrono::DateTime::from_timestamp(first.seconds, first.nanos as u32).unwrap();
        assert!(
            received <= first && first < released,
            "webhook {i}: held from {received}, released after {released}; recorded as \
             received at {first}"
        );
    }
    assert!(get(a.grpc, "held-2").await.is_none());
    assert!(files[2].with_extension("damaged").exists());
    crate::wait::wait_until("nothing held", Duration::from_secs(10), || async {
        (metric_of(&a, "qistatus_cluster_held_webhooks ").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric_of(&a, "qistatus_cluster_held_damaged_total ").await,
        Some(1.0)
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("does not read back"), "{said}");
    drop(a);
}

/// Holding on a full disk: the webhook is not acknowledged (`503`, retry), never `200`;
/// once space comes back, holding resumes without a restart, and every webhook answered
/// `held` reaches the stream when NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_held_webhooks_is_a_503_and_nothing_answered_held_is_lost() {
    let disk = crate::integrity::SmallDisk::mount("1m");
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![7u8; 700 * 1024]).unwrap();
    let mut nats = NatsCluster::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir(disk.path().join("held")).unwrap();
    std::os::unix::fs::symlink(disk.path().join("held"), data.join("held")).unwrap();
    let start = |nats: &NatsCluster| {
        ServerCommand::new(&data)
            .args(["--nats", &nats.urls(), "--nats-replicas", "1"])
            .args(["--cluster-hold-after", "200ms"])
    };
    let a = start(&nats).start().await;
    nats.kill(0).await;
    let body = |n: usize| {
        serde_json::to_vec(&serde_json::json!({
            "webhook_type": "debt",
            "key": format!("held-{n}"),
            "status": "disbursed",
            "event_datetime": "2024-01-01 10:00:00",
            "pad": "x".repeat(8000),
        }))
        .unwrap()
    };
    let mut held = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let (code, reply) = post(a.http, &body(n)).await.expect("answered");
        match code {
            200 => {
                assert_eq!(reply["result"], "held", "{reply}");
                held.push(n);
            }
            _ => {
                refused = Some((n, code, reply));
                break;
            }
        }
    }
    let (n, code, reply) = refused.expect("the disk filled up");
    assert_eq!(code, 503, "{reply}");
    let said = reply["error"].as_str().unwrap_or_default();
    assert!(said.contains("holding it failed"), "{said}");
    assert!(!held.is_empty());
    // Space comes back: held again, no restart.
    std::fs::remove_file(&filler).unwrap();
    let (code, reply) = post(a.http, &body(n)).await.expect("answered");
    assert_eq!((code, reply["result"].as_str()), (200, Some("held")));
    held.push(n);
    nats.start_server(0).await;
    for n in held {
        wait_for_version(a.grpc, &format!("held-{n}"), 1).await;
    }
    drop(a);
}

/// The value of `series` in a node's metrics.
async fn metric_of(node: &crate::process::ServerProcess, series: &str) -> Option<f64> {
    node.metrics_text()
        .await
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_recovers_once_and_a_dead_recoverers_work_is_taken_over() {
    use crate::qi_api::{QiStandIn, StandInCallback, StandInEvent};
    let nats = NatsCluster::start(1).await;
    let qi = QiStandIn::start(qistatus::Clock::system()).await;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("qistatus.pem");
    let public = dir.path().join("qi.pub.pem");
    std::fs::write(&private, &qi.client.private_pem).unwrap();
    std::fs::write(&public, &qi.qi.public_pem).unwrap();
    let (urls, url) = (nats.urls(), qi.url());
    let (private, public) = (private.to_str().unwrap(), public.to_str().unwrap());
    let args = [
        "--nats",
        &urls,
        "--nats-replicas",
        "1",
        "--qitech-api-url",
        &url,
        "--qitech-api-private-key",
        private,
        "--qitech-api-public-key",
        public,
        "--qitech-api-client-key",
        &qi.client_key,
        "--recover-every",
        "1s",
        "--recover-lease",
        "5s",
        "--recover-max-rps",
        "1000",
    ];
    let now = chrono::Utc::now().timestamp();
    let failed = |key: &str, at: i64| StandInEvent {
        event_key: format!("event-{key}"),
        event_type: "debt_disbursed".into(),
        origin_key: key.to_owned(),
        at,
        callbacks: vec![StandInCallback {
            callback_key: format!("callback-{key}"),
            status: "failed".into(),
            body: webhook(
                "debt",
                key,
                "disbursed",
                &chrono::DateTime::from_timestamp(at, 0)
                    .unwrap()
                    .to_rfc3339(),
            ),
        }],
    };
    let a = ServerCommand::new(&dir.path().join("a"))
        .args(args)
        .start()
        .await;
    let b = ServerCommand::new(&dir.path().join("b"))
        .args(args)
        .start()
        .await;
    qi.deliver_to(&format!("http://{}/webhooks", a.http));
    // What QI failed to deliver in the last 50 minutes (a failover in front of the cluster).
    let first: Vec<String> = (0..30).map(|i| format!("missed-{i:02}")).collect();
    for (i, key) in first.iter().enumerate() {
        qi.add(failed(key, now - 3000 + i as i64 * 60));
    }
    for key in &first {
        wait_for_version(b.grpc, key, 1).await;
    }
    let resends = qi.resends();
    assert_eq!(
        resends.len(),
        first.len(),
        "each asked once, by one node: {resends:?}"
    );
    let leading = (
        metric_of(&a, "qistatus_recovery_leading ").await,
        metric_of(&b, "qistatus_recovery_leading ").await,
    );
    assert!(
        leading == (Some(1.0), Some(0.0)) || leading == (Some(0.0), Some(1.0)),
        "one recoverer: {leading:?}"
    );

    // The recoverer dies; the other node takes its work over once the lease lapses, from
    // where it was: what QI failed to deliver since is fetched, nothing is asked twice.
    let survivor = if leading.0 == Some(1.0) {
        a.kill().await;
        b
    } else {
        b.kill().await;
        a
    };
    qi.deliver_to(&format!("http://{}/webhooks", survivor.http));
    let later: Vec<String> = (0..10).map(|i| format!("later-{i:02}")).collect();
    let now = chrono::Utc::now().timestamp();
    for key in &later {
        qi.add(failed(key, now - 60));
    }
    for key in &later {
        wait_for_version(survivor.grpc, key, 1).await;
    }
    assert_eq!(
        metric_of(&survivor, "qistatus_recovery_leading ").await,
        Some(1.0)
    );
    let resends = qi.resends();
    let distinct: std::collections::BTreeSet<_> = resends.iter().collect();
    assert_eq!(resends.len(), first.len() + later.len(), "{resends:?}");
    assert_eq!(distinct.len(), resends.len(), "nothing asked twice");
    drop(survivor);
}
