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
    /// `host:port` of its admin listener (qistatus only; empty for the others).
    pub admin: String,
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

    /// CPU time it has used so far (user + system), when it can be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&self.child.id()?.to_string())
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

    /// The sum of the Prometheus samples of `metric` whose labels contain `labels` (all of
    /// them when empty), read from the admin listener; `None` when it has none or none read.
    pub fn metric(&self, metric: &str, labels: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.admin).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                let (bare, rest) = name.split_once('{').unwrap_or((name, ""));
                (bare == metric && rest.contains(labels)).then(|| value.parse().ok())?
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// SIGKILL: a crash, with no chance to flush.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
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

/// CPU time (user + system) used by the process `pid` ("self" for the harness) so far, from
/// `/proc/<pid>/stat`; `None` where there is no such file.
pub fn cpu_time_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ")".
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ ticks, 100 per second on every architecture it runs on.
    Some(Duration::from_millis((user + system) * 10))
}

/// Starts `qistatus-null-receiver` (the ceiling: see its source) on a port it picks, and
/// waits until it says which.
pub async fn start_null_receiver(bin: &Path) -> Process {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new(bin)
        .args(["--http-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start qistatus-null-receiver");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("qistatus-null-receiver says where it listens")
        .expect("its output")
        .expect("a line");
    let address = line
        .strip_prefix("listening on ")
        .expect("`listening on ADDRESS`");
    Process {
        child,
        http: format!("http://{address}"),
        grpc: String::new(),
        admin: String::new(),
    }
}

/// A loopback port for a peer that cannot bind port 0 and say what it got (etcd's and
/// PostgreSQL's listeners, a NATS server's cluster routes, which JetStream needs configured
/// before any server starts): free when asked, and it may be taken by the time the peer binds
/// it. qistatus and a NATS server's client port are never picked this way: they bind port 0
/// and report the port in a file.
pub fn peer_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The first JSON file in `dir` whose name ends in `suffix`, parsed, once one is whole.
fn read_ports_file<T: serde::de::DeserializeOwned>(dir: &Path, suffix: &str) -> Option<T> {
    let file = std::fs::read_dir(dir).ok()?.find_map(|entry| {
        let path = entry.ok()?.path();
        path.to_str()?.ends_with(suffix).then_some(path)
    })?;
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
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
        self.start_with(dir, ports, &[]).await
    }

    /// [`Qistatus::start`] with more flags (`--nats ...` for a cluster node).
    pub async fn start_with(
        &self,
        dir: &Path,
        ports: Option<(u16, u16)>,
        extra: &[String],
    ) -> (Process, Duration) {
        // Port 0 unless it restarts where clients expect it; the ports it got are read back
        // from its ports file. Its admin listener is where the harness reads its counters.
        let (http_port, grpc_port) = ports.unwrap_or((0, 0));
        let ports_dir = dir.with_extension("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("a directory for the ports file");
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--admin-addr", "127.0.0.1:0"])
            .arg("--ports-file")
            .arg(ports_dir.join("qistatus.json"))
            .args(["--log", &self.log])
            .args([
                "--writer-queue",
                "8192",
                "--max-concurrent-requests",
                "4096",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start qistatus-server");
        #[derive(serde::Deserialize)]
        struct Bound {
            http: std::net::SocketAddr,
            grpc: std::net::SocketAddr,
            admin: std::net::SocketAddr,
        }
        let mut bound: Option<Bound> = None;
        wait_until("qistatus's ports file", || {
            bound = read_ports_file(&ports_dir, "qistatus.json");
            std::future::ready(bound.is_some())
        })
        .await;
        let bound = bound.expect("read once wait_until returned");
        let server = Process {
            child,
            http: format!("http://{}", bound.http),
            grpc: format!("http://{}", bound.grpc),
            admin: bound.admin.to_string(),
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

/// Starts `size` nats-servers with JetStream, clustered on loopback (one, unclustered, when
/// `size` is 1); returns them and the client URLs, comma-separated, as `--nats` takes them.
pub async fn start_nats(bin: &Path, dir: &Path, size: usize) -> (Vec<Process>, String) {
    let route_ports: Vec<u16> = (0..size).map(|_| peer_port()).collect();
    let routes = route_ports
        .iter()
        .map(|route| format!("nats://127.0.0.1:{route}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Vec::new();
    for (i, route) in route_ports.iter().enumerate() {
        // Its client port is its own pick (`-p -1`), read from its ports file.
        let ports_dir = dir.join(format!("n{i}.ports"));
        std::fs::create_dir_all(&ports_dir).expect("a directory for the ports file");
        let mut command = Command::new(bin);
        command
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(["-n", &format!("n{i}"), "-js", "-sd"])
            .arg(dir.join(format!("n{i}")));
        if size > 1 {
            command
                .args(["--cluster_name", "bench"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", &routes]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        #[derive(serde::Deserialize)]
        struct Ports {
            nats: Vec<String>,
        }
        let mut url: Option<String> = None;
        wait_until("nats-server", || {
            url = read_ports_file::<Ports>(&ports_dir, ".ports")
                .and_then(|ports| ports.nats.into_iter().next());
            let address = url
                .clone()
                .and_then(|u| u.strip_prefix("nats://").map(str::to_owned));
            async move {
                match address {
                    Some(address) => tokio::net::TcpStream::connect(address).await.is_ok(),
                    None => false,
                }
            }
        })
        .await;
        servers.push(Process {
            child,
            http: String::new(),
            grpc: url.expect("read once wait_until returned"),
            admin: String::new(),
        });
    }
    let urls = servers
        .iter()
        .map(|s| s.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    (servers, urls)
}

/// Starts a single-member etcd on `dir` and waits until it answers a range.
pub async fn start_etcd(bin: &Path, dir: &Path) -> Process {
    let (client_port, peer_port) = (peer_port(), peer_port());
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
        admin: String::new(),
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

/// A PostgreSQL cluster of the harness's own, in a scratch directory, on a loopback port.
pub struct Postgres {
    bin_dir: PathBuf,
    data: PathBuf,
    /// The connection string.
    pub url: String,
}

/// Runs a PostgreSQL tool as the `postgres` user when the harness runs as root (initdb
/// refuses root), as the harness's own user otherwise.
fn as_postgres(bin_dir: &Path, tool: &str) -> std::process::Command {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let program = bin_dir.join(tool);
    if is_root {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

impl Postgres {
    /// Creates a cluster in `dir` and starts it with `synchronous_commit = on` (its default,
    /// set explicitly), waiting until it accepts connections.
    pub fn start(bin_dir: &Path, dir: &Path) -> Postgres {
        let data = dir.join("pgdata");
        std::fs::create_dir_all(dir).expect("scratch dir");
        // The postgres user must own the directory it writes in.
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
        let status = as_postgres(bin_dir, "initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let port = peer_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on \
             -c fsync=on -c max_connections=300 -c shared_buffers=512MB",
            data.display()
        );
        let status = as_postgres(bin_dir, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(data.join("server.log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(status.success(), "PostgreSQL did not start");
        Postgres {
            bin_dir: bin_dir.to_owned(),
            data,
            url: format!("host=127.0.0.1 port={port} user=bench dbname=postgres"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin_dir, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}
