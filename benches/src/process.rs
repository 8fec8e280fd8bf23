//! Process control: starts the servers under test on loopback with fresh data directories,
//! waits until they answer, measures them from outside (RSS, disk), and stops them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;
use tokio::process::{Child, Command};

use crate::etcd::{EtcdClient, RangeRequest};

/// A server process; killed when dropped, stopped gracefully by [`Process::stop`].
pub struct Process {
    child: Child,
    /// Base URL of its HTTP listener (empty for peers without one).
    pub http: String,
    /// Base URL of its gRPC listener.
    pub grpc: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Process {
    /// Resident memory now, in bytes (0 when it cannot be read).
    pub fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// The ports of its two listeners, to start it again where clients expect it.
    pub fn ports(&self) -> (u16, u16) {
        let port = |url: &str| {
            url.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        (port(&self.http), port(&self.grpc))
    }

    /// SIGTERM, then waits (at most a minute) for it to exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

/// A free loopback port (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `ready` every 5 ms until it says yes; panics after two minutes.
pub async fn wait_until<F, Fut>(what: &str, mut ready: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// How to start qistatus-server.
#[derive(Debug, Clone)]
pub struct Qistatus {
    /// The binary.
    pub bin: PathBuf,
    /// Its `--log` filter (its logs go to the harness's stderr).
    pub log: String,
}

impl Qistatus {
    /// Starts a server on `dir` (on `ports`, or fresh ones) and waits until it answers
    /// gRPC; returns it and how long that took.
    pub async fn start(&self, dir: &Path, ports: Option<(u16, u16)>) -> (Process, Duration) {
        let (http_port, grpc_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--log", &self.log])
            .args([
                "--writer-queue",
                "8192",
                "--max-concurrent-requests",
                "4096",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start qistatus-server");
        let server = Process {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
        };
        let grpc = server.grpc.clone();
        wait_until("qistatus", || {
            let grpc = grpc.clone();
            async move {
                match OperationStatusServiceClient::connect(grpc).await {
                    Ok(mut c) => c
                        .get_operation(pb::GetOperationRequest {
                            key: "readiness-probe".into(),
                            ..Default::default()
                        })
                        .await
                        .map_or_else(|s| s.code() == tonic::Code::NotFound, |_| true),
                    Err(_) => false,
                }
            }
        })
        .await;
        (server, started.elapsed())
    }
}

/// Starts a single-member etcd on `dir` and waits until it answers a range.
pub async fn start_etcd(bin: &Path, dir: &Path) -> Process {
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .args(["--quota-backend-bytes", &(8u64 << 30).to_string()])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start etcd");
    let server = Process {
        child,
        http: String::new(),
        grpc: client_url.clone(),
    };
    wait_until("etcd", || {
        let url = client_url.clone();
        async move {
            match EtcdClient::connect(url).await {
                Ok(mut kv) => kv
                    .range(RangeRequest {
                        key: b"probe".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    server
}

/// Bytes allocated under `dir` (blocks, not apparent size: sled preallocates sparsely).
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_size(&path)
                    } else {
                        e.metadata()
                            .map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
