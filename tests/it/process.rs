//! The real binaries as processes: one helper that starts `qistatus-server` on loopback,
//! waits until both listeners answer, and stops it (SIGTERM or SIGKILL), for every test that
//! needs a process rather than the in-process server of [`crate::test_server`].
//!
//! A server binds port 0 and reports the ports it got (`--ports-file`), so no test races
//! another for a port; one restarted where its clients expect it ([`ServerCommand::at`])
//! binds the ports it had.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The `qistatus-server` binary cargo built for these tests.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_qistatus-server");
/// The `qistatus` CLI binary cargo built for these tests.
pub const CLI_BIN: &str = env!("CARGO_BIN_EXE_qistatus");

/// How to start a server process.
pub struct ServerCommand {
    data_dir: PathBuf,
    http: SocketAddr,
    grpc: SocketAddr,
    log: String,
    stderr: Option<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    nofile: Option<u64>,
}

impl ServerCommand {
    /// A server on `data_dir`, on ports the system picks, logging warnings to the test's
    /// stderr.
    pub fn new(data_dir: &Path) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerCommand {
            data_dir: data_dir.to_owned(),
            http: any_port,
            grpc: any_port,
            log: "warn".into(),
            stderr: None,
            env: Vec::new(),
            args: Vec::new(),
            nofile: None,
        }
    }

    /// On these addresses (to restart where clients expect it).
    pub fn at(mut self, http: SocketAddr, grpc: SocketAddr) -> Self {
        (self.http, self.grpc) = (http, grpc);
        self
    }

    /// With its gRPC API on this address (where a client already waits for it).
    pub fn grpc_at(mut self, grpc: SocketAddr) -> Self {
        self.grpc = grpc;
        self
    }

    /// With this `--log` filter.
    pub fn log(mut self, filter: &str) -> Self {
        self.log = filter.into();
        self
    }

    /// Its log written to `path` instead of the test's stderr.
    pub fn stderr_to(mut self, path: &Path) -> Self {
        self.stderr = Some(path.to_owned());
        self
    }

    /// With an environment variable set.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// With more flags.
    pub fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(args.into_iter().map(str::to_owned));
        self
    }

    /// Limited to `limit` open files (soft and hard), as `ulimit -n` would.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Starts it and waits (at most 30 s) until both listeners answer.
    pub async fn start(self) -> ServerProcess {
        let ports = tempfile::tempdir().expect("a directory for the ports file");
        let ports_file = ports.path().join("ports.json");
        let stderr = match &self.stderr {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
            None => Stdio::inherit(),
        };
        let mut command = Command::new(SERVER_BIN);
        if let Some(limit) = self.nofile {
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let mut child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--http-addr", &self.http.to_string()])
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--admin-addr", "127.0.0.1:0"])
            .arg("--ports-file")
            .arg(&ports_file)
            .args(["--log", &self.log])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start qistatus-server");
        let client = reqwest::Client::new();
        let ports = crate::wait::wait_until(
            "qistatus-server listens on both ports",
            Duration::from_secs(30),
            || {
                if let Some(status) = child.try_wait().expect("poll the child") {
                    panic!("qistatus-server exited at start: {status}");
                }
                let bound: Option<BoundPorts> = std::fs::read(&ports_file)
                    .ok()
                    .map(|json| serde_json::from_slice(&json).expect("the ports file is JSON"));
                let client = client.clone();
                async move {
                    let ports = bound?;
                    let http = client
                        .get(format!("http://{}/healthz", ports.http))
                        .send()
                        .await;
                    let grpc = tokio::net::TcpStream::connect(ports.grpc).await;
                    (http.is_ok() && grpc.is_ok()).then_some(ports)
                }
            },
        )
        .await;
        ServerProcess {
            child,
            http: ports.http,
            grpc: ports.grpc,
            admin: ports.admin,
        }
    }
}

/// What `--ports-file` holds: the addresses the listeners got.
#[derive(serde::Deserialize)]
struct BoundPorts {
    http: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// A running `qistatus-server`; killed if dropped.
pub struct ServerProcess {
    child: Child,
    /// Its webhook intake.
    pub http: SocketAddr,
    /// Its gRPC API.
    pub grpc: SocketAddr,
    /// Its admin endpoints.
    pub admin: SocketAddr,
}

impl ServerProcess {
    /// POSTs a webhook to its intake: the status code and the JSON answer.
    pub async fn post(&self, body: Vec<u8>) -> (u16, serde_json::Value) {
        let answer = reqwest::Client::new()
            .post(format!("http://{}/webhooks", self.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the intake answers");
        let code = answer.status().as_u16();
        (code, answer.json().await.expect("a JSON answer"))
    }

    /// Its `/metrics` text now.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("the admin listener answers")
            .text()
            .await
            .expect("a metrics text")
    }

    /// Waits (at most `limit`) until its `/metrics` shows `metric` at `value` or more: a
    /// state the server reports, instead of a sleep that guesses how long it takes.
    pub async fn metric_reaches(&self, metric: &str, value: f64, limit: Duration) {
        let last = std::cell::Cell::new(None);
        let reached = crate::wait::until_or_none(limit, || async {
            let text = self.metrics_text().await;
            let now = text.lines().find_map(|line| {
                let (name, number) = line.split_once(' ')?;
                (name == metric).then(|| number.trim().parse::<f64>().ok())?
            });
            last.set(now);
            now.filter(|now| *now >= value).map(|_| ())
        })
        .await;
        assert!(
            reached.is_some(),
            "{metric} reaches {value}: not within {limit:?} (last seen: {:?})",
            last.get()
        );
    }

    /// Its resident memory now, in bytes (Linux: `VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.id().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kb * 1024
    }

    /// Sends it `kill -SIGNAL`.
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// SIGKILL, and waits for it to be gone: a crash, with no chance to flush.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the server");
    }

    /// Waits up to `limit` for it to exit on its own; kills it if it has not.
    pub async fn exit_within(mut self, limit: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Some(status.expect("wait for the server")),
            Err(_) => {
                self.kill().await;
                None
            }
        }
    }

    /// SIGTERM, and waits (at most 30 s) for it to exit: a graceful stop.
    pub async fn terminate(mut self) -> ExitStatus {
        send_signal(&self.child, "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits within 30 s of SIGTERM")
            .expect("wait for the server")
    }
}

/// Sends `kill -SIGNAL` to a child process.
pub fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the child is running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// `qistatus-server ARGS --data-dir DIR` run to completion (the offline commands: rebuild,
/// quarantine, catalog).
pub fn server_offline<I, S>(args: I, data_dir: &Path) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(SERVER_BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run qistatus-server")
}

/// Runs `qistatus-server` on `dir` with `args`, expecting it to refuse to start; returns what
/// it said.
pub fn refused_start(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(crate::process::SERVER_BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .output()
        .expect("run qistatus-server");
    assert!(!output.status.success(), "it started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
