//! The server's configuration: one clap struct. Every flag has a `QISTATUS_*` environment
//! twin; the doc comments below are the `--help`. Every default comes from the constant the
//! library's own [`Settings::new`] uses, so tests and production run on the same defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::AdminLimits;
use crate::auth::grpc::BearerTokens;
use crate::auth::response_signing::ResponseSigner;
use crate::auth::webhook::{DEFAULT_MAX_CLOCK_SKEW, KeyError, WebhookVerifier};
use crate::cluster::{ClusterSettings, Held};
use crate::domain::catalog::{Catalog, CatalogError};
use crate::feed::FeedSettings;
use crate::grpc::GrpcLimits;
use crate::intake::IntakeLimits;
use crate::qitech_api::QiApiSettings;
use crate::recovery::RecoverySettings;
use crate::server::{
    DEFAULT_COMPACTION_INTERVAL, DEFAULT_LOG_RETENTION_DAYS, DEFAULT_SCRUB_FIRST_DELAY, Settings,
    days,
};
use crate::store::DEFAULT_CACHE_MB;
use crate::store::WriterLimits;
use crate::tls::TlsIdentity;

/// qistatus-server: receives QI Tech webhooks over HTTP and serves every operation's
/// reconciled status over gRPC.
#[derive(Debug, Parser)]
#[command(name = "qistatus-server", version, about, long_about = None)]
pub struct Config {
    /// What to do; without a command, serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Directory of the embedded store (created if missing).
    #[arg(
        long,
        env = "QISTATUS_DATA_DIR",
        default_value = "./qistatus-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// TOML file that extends or overrides the built-in catalog of kinds and statuses.
    #[arg(long, env = "QISTATUS_CATALOG", global = true)]
    pub catalog: Option<PathBuf>,

    /// Address of the webhook intake (HTTP).
    #[arg(long, env = "QISTATUS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address of the gRPC API.
    #[arg(long, env = "QISTATUS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin endpoints: `/livez`, `/readyz` and Prometheus `/metrics`. Keep it
    /// off the public network (it has no authentication).
    #[arg(long, env = "QISTATUS_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Once the listeners are bound, write the addresses they got to this file as JSON
    /// (`{"http": ..., "grpc": ..., "admin": ...}`, replaced whole): with port 0 in an
    /// address, how a supervisor or a test learns the port the system chose.
    #[arg(long, env = "QISTATUS_PORTS_FILE")]
    pub ports_file: Option<PathBuf>,

    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "QISTATUS_MAX_BODY", default_value_t = IntakeLimits::DEFAULT.max_body)]
    pub max_body: usize,

    /// Longest a webhook request may take (e.g. `4s`, `500ms`): then it is answered 408 if its
    /// body had not arrived, 503 (retry) if storing it had not been confirmed. By default 4s
    /// on a single node, and 9s on a cluster node (`--nats`), whose publish may wait
    /// `--cluster-hold-after` for the stream, then hold the webhook on its disk.
    #[arg(long, env = "QISTATUS_REQUEST_TIMEOUT")]
    pub request_timeout: Option<humantime::Duration>,

    /// Most webhook requests processed at once, counted from when a body has arrived whole;
    /// more wait their turn for up to a second, then are answered 503 with Retry-After.
    #[arg(long, env = "QISTATUS_MAX_CONCURRENT_REQUESTS", default_value_t = IntakeLimits::DEFAULT.max_concurrent)]
    pub max_concurrent_requests: usize,

    /// Most bytes of webhook bodies over 64 KiB held in memory at once; past it such a body
    /// is answered 503 with Retry-After. QI's webhooks are a few KiB and have a budget of
    /// their own (--max-concurrent-requests × 64 KiB), so a flood of large bodies cannot
    /// crowd them out.
    #[arg(long, env = "QISTATUS_LARGE_BODY_MEMORY", default_value_t = IntakeLimits::DEFAULT.large_body_memory)]
    pub large_body_memory: usize,

    /// Most webhook connections open at once. At the bound, the connection that has waited
    /// longest without a request being processed (idle, or still sending headers or body)
    /// is closed to admit a new one. Lowered at start if the process may not open that many files.
    #[arg(long, env = "QISTATUS_MAX_CONNECTIONS", default_value_t = IntakeLimits::DEFAULT.max_connections)]
    pub max_connections: usize,

    /// Longest a webhook client may take to send a request's headers (also how long a
    /// kept-alive connection may wait for its next request).
    #[arg(long, env = "QISTATUS_HEADER_READ_TIMEOUT", default_value_t = IntakeLimits::DEFAULT.header_read_timeout.into())]
    pub header_read_timeout: humantime::Duration,

    /// A webhook connection with no request in flight that sends nothing for this long is
    /// closed.
    #[arg(long, env = "QISTATUS_IDLE_TIMEOUT", default_value_t = IntakeLimits::DEFAULT.idle_timeout.into())]
    pub idle_timeout: humantime::Duration,

    /// Longest a new connection (any listener) may take to finish its TLS handshake or
    /// send its first bytes.
    #[arg(long, env = "QISTATUS_HANDSHAKE_TIMEOUT", default_value_t = IntakeLimits::DEFAULT.handshake_timeout.into())]
    pub handshake_timeout: humantime::Duration,

    /// Most gRPC connections open at once; more are refused. Lowered at start if the process
    /// may not open that many files.
    #[arg(long, env = "QISTATUS_GRPC_MAX_CONNECTIONS", default_value_t = GrpcLimits::DEFAULT.max_connections)]
    pub grpc_max_connections: usize,

    /// How long a new gRPC connection has to make its first authenticated call. At the
    /// connection bound, a connection that has made none by then is closed to make room
    /// (the oldest first); connections that have are never closed for a newcomer.
    #[arg(long, env = "QISTATUS_GRPC_FIRST_CALL_GRACE", default_value_t = GrpcLimits::DEFAULT.first_call_grace.into())]
    pub grpc_first_call_grace: humantime::Duration,

    /// A gRPC connection is asked to close after this long (clients reconnect, watchers
    /// resume), and closed a minute later.
    #[arg(long, env = "QISTATUS_GRPC_MAX_CONNECTION_AGE", default_value_t = GrpcLimits::DEFAULT.max_connection_age.into())]
    pub grpc_max_connection_age: humantime::Duration,

    /// How often every sealed log segment is read back and its checksums checked, while
    /// serving (`0s`: never).
    #[arg(long, env = "QISTATUS_SCRUB_INTERVAL", default_value_t = crate::server::DEFAULT_SCRUB_INTERVAL.into())]
    pub scrub_interval: humantime::Duration,

    /// How soon after a start the first scrub pass begins (later passes follow the last
    /// completed one by --scrub-interval, across restarts).
    #[arg(long, env = "QISTATUS_SCRUB_FIRST_DELAY", default_value_t = DEFAULT_SCRUB_FIRST_DELAY.into())]
    pub scrub_first_delay: humantime::Duration,

    /// How fast the scrub reads the log, in MiB per second.
    #[arg(long, env = "QISTATUS_SCRUB_MB_PER_SECOND", default_value_t = crate::server::DEFAULT_SCRUB_MB_PER_SECOND)]
    pub scrub_mb_per_second: u64,

    /// Most admin connections open at once (probes, scrapers, the console), apart from the
    /// intake's and gRPC's: at the bound the connection idle longest is closed.
    #[arg(long, env = "QISTATUS_ADMIN_MAX_CONNECTIONS", default_value_t = AdminLimits::DEFAULT.max_connections)]
    pub admin_max_connections: usize,

    /// Longest an admin client may take to send a request's headers.
    #[arg(long, env = "QISTATUS_ADMIN_HEADER_READ_TIMEOUT", default_value_t = AdminLimits::DEFAULT.header_read_timeout.into())]
    pub admin_header_read_timeout: humantime::Duration,

    /// Longest a unary gRPC call may take before it fails with DEADLINE_EXCEEDED.
    #[arg(long, env = "QISTATUS_GRPC_REQUEST_TIMEOUT", default_value_t = GrpcLimits::DEFAULT.request_timeout.into())]
    pub grpc_request_timeout: humantime::Duration,

    /// Capacity of the queue in front of the writer; when full, the intake answers 503.
    #[arg(long, env = "QISTATUS_WRITER_QUEUE", default_value_t = WriterLimits::DEFAULT.queue)]
    pub writer_queue: usize,

    /// Most webhooks the writer commits with one flush.
    #[arg(long, env = "QISTATUS_MAX_BATCH", default_value_t = WriterLimits::DEFAULT.max_batch)]
    pub max_batch: usize,

    /// Days raw webhooks stay in the event log, and with them the change feed they make.
    /// Operations and the summary of their history are kept forever; watchers cannot resume
    /// from older points.
    #[arg(long, env = "QISTATUS_LOG_RETENTION_DAYS", default_value_t = DEFAULT_LOG_RETENTION_DAYS)]
    pub log_retention_days: u32,

    /// How often expired log entries are dropped (also once at start).
    #[arg(long, env = "QISTATUS_COMPACTION_INTERVAL", default_value_t = DEFAULT_COMPACTION_INTERVAL.into())]
    pub compaction_interval: humantime::Duration,

    /// How often the overdue clock looks for operations that fell overdue (the catalog's
    /// `expect`): the most an overdue event lags behind its due time.
    #[arg(long, env = "QISTATUS_OVERDUE_TICK", default_value_t = crate::overdue_clock::DEFAULT_TICK.into())]
    pub overdue_tick: humantime::Duration,

    /// How long an idle watch stream waits between progress notifications.
    #[arg(long, env = "QISTATUS_WATCH_PROGRESS_INTERVAL", default_value_t = FeedSettings::DEFAULT.progress_interval.into())]
    pub watch_progress_interval: humantime::Duration,

    /// Most watch streams open at once. Each that stops reading holds at most its queue
    /// (64 KiB as counted, about 100 KB measured): the default's worst case is about 400 MB.
    #[arg(long, env = "QISTATUS_MAX_WATCHERS", default_value_t = FeedSettings::DEFAULT.max_subscribers)]
    pub max_watchers: usize,

    /// Chunks of changes older than the recent window worked out from the log at once, for
    /// all watchers catching up (each reader takes up to one core; the intake keeps the rest).
    #[arg(long, env = "QISTATUS_WATCH_CATCH_UP_READERS", default_value_t = FeedSettings::DEFAULT.catch_up_readers)]
    pub watch_catch_up_readers: usize,

    /// Changes older than the recent window delivered a second, for all watchers catching up
    /// together (0: as fast as they read): delivering costs CPU the intake needs. Live changes
    /// are never paced.
    #[arg(long, env = "QISTATUS_WATCH_CATCH_UP_RATE", default_value_t = FeedSettings::DEFAULT.catch_up_rate)]
    pub watch_catch_up_rate: u32,

    /// QI Tech's public key (PEM, ECDSA P-521) that signs webhooks. Repeat for rotation.
    /// With a key, every webhook must carry QI Tech's signature.
    #[arg(
        long = "qitech-public-key",
        env = "QISTATUS_QITECH_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    pub qitech_public_keys: Vec<PathBuf>,

    /// The integration's key (QI's API-CLIENT-KEY): the values webhooks may carry in that
    /// header (repeat for several; when none is given, the header is not checked), and the
    /// first is sent with every request to QI's API (--qitech-api-url).
    #[arg(
        long = "qitech-api-client-key",
        env = "QISTATUS_QITECH_API_CLIENT_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    pub qitech_api_client_keys: Vec<String>,

    /// QI DTVM's webhook signature key (HS256 `SIGNATURE` header). Repeat for rotation;
    /// prefer the environment variable, which `ps` does not show.
    #[arg(
        long = "qitech-dtvm-key",
        env = "QISTATUS_QITECH_DTVM_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub qitech_dtvm_keys: Vec<String>,

    /// Accept QI DTVM tokens that carry no `iat` (for a sender that never sends one: such a
    /// token, once captured, is good until its `exp`, or for ever). Off: they are refused.
    #[arg(long, env = "QISTATUS_QITECH_DTVM_WITHOUT_IAT")]
    pub qitech_dtvm_without_iat: bool,

    /// QI CaaS's webhook signature key (hex HMAC-SHA1 `Signature` header on its card-order
    /// fraud webhooks). Repeat for rotation; prefer the environment variable.
    #[arg(
        long = "qitech-caas-key",
        env = "QISTATUS_QITECH_CAAS_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub qitech_caas_keys: Vec<String>,

    /// The scheme and host QI CaaS was given for this intake, as written there
    /// (`https://hooks.example.com`): QI CaaS signs that URL with the request's path. Unset:
    /// `https://` and the request's `Host` header.
    #[arg(long, env = "QISTATUS_QITECH_CAAS_URL_BASE")]
    pub qitech_caas_url_base: Option<String>,

    /// QI Tech's API (`https://api-auth.sandbox.qitech.app`, or production's): with it,
    /// qistatus asks QI to resend what it failed to deliver (README, "Missed webhooks").
    /// Needs --qitech-api-private-key and --qitech-api-client-key.
    #[arg(long, env = "QISTATUS_QITECH_API_URL", global = true)]
    pub qitech_api_url: Option<String>,

    /// qistatus's ECDSA P-521 private key (PEM) that signs requests to QI's API; QI holds its
    /// public half (QI's "Key exchange").
    #[arg(long, env = "QISTATUS_QITECH_API_PRIVATE_KEY", global = true)]
    pub qitech_api_private_key: Option<PathBuf>,

    /// QI's public key (PEM) that signs QI API's answers; without it answers are read
    /// unchecked (a warning at start).
    #[arg(long, env = "QISTATUS_QITECH_API_PUBLIC_KEY", global = true)]
    pub qitech_api_public_key: Option<PathBuf>,

    /// How often recovery lists QI's failed callbacks and asks for them again; 0 turns the
    /// periodic pass off (overdue operations are still asked about).
    #[arg(long, env = "QISTATUS_RECOVER_EVERY", default_value_t = RecoverySettings::DEFAULT_EVERY.into())]
    pub recover_every: humantime::Duration,

    /// How far back recovery's first pass reaches (later passes go on from where the last
    /// ended).
    #[arg(long, env = "QISTATUS_RECOVER_LOOKBACK", default_value_t = RecoverySettings::DEFAULT_LOOKBACK.into())]
    pub recover_lookback: humantime::Duration,

    /// Most requests a second to QI's API.
    #[arg(long, env = "QISTATUS_RECOVER_MAX_RPS", default_value_t = QiApiSettings::DEFAULT_MAX_RPS, global = true)]
    pub recover_max_rps: f64,

    /// Resends of one failed callback before recovery gives up on it (counted and shown).
    #[arg(long, env = "QISTATUS_RECOVER_MAX_RESENDS", default_value_t = RecoverySettings::DEFAULT_MAX_RESENDS)]
    pub recover_max_resends: u32,

    /// On a cluster, how long a node's claim to be the one that recovers lasts unrenewed (it
    /// renews it every half): how long recovery pauses when that node dies.
    #[arg(long, env = "QISTATUS_RECOVER_LEASE", default_value_t = RecoverySettings::DEFAULT_LEASE.into())]
    pub recover_lease: humantime::Duration,

    /// Standard Webhooks HMAC secret (`whsec_...`), for deployments behind a relay. Repeat
    /// for rotation; prefer the environment variable, which `ps` does not show.
    #[arg(
        long = "webhook-secret",
        env = "QISTATUS_WEBHOOK_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<String>,

    /// Largest accepted difference between a signature's timestamp and now.
    #[arg(long, env = "QISTATUS_MAX_CLOCK_SKEW", default_value_t = DEFAULT_MAX_CLOCK_SKEW.into())]
    pub max_clock_skew: humantime::Duration,

    /// File of gRPC bearer tokens, one per line. Repeat for several files. With tokens, every
    /// gRPC call but health needs `authorization: Bearer <token>`.
    #[arg(
        long = "grpc-token-file",
        env = "QISTATUS_GRPC_TOKEN_FILES",
        value_delimiter = ','
    )]
    pub grpc_token_files: Vec<PathBuf>,

    /// TLS certificate chain (PEM) for both listeners; needs --tls-key.
    #[arg(long, env = "QISTATUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for both listeners; needs --tls-cert.
    #[arg(long, env = "QISTATUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Listen on non-loopback addresses without webhook verification or gRPC tokens.
    #[arg(long, env = "QISTATUS_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Sign every acknowledgement with this ECDSA P-521 private key (PEM), for QI Tech
    /// accounts that count a notification as delivered only on a signed `200`.
    #[arg(long, env = "QISTATUS_RESPONSE_SIGNING_KEY")]
    pub response_signing_key: Option<PathBuf>,

    /// The API-CLIENT-KEY header of signed acknowledgements.
    #[arg(
        long,
        env = "QISTATUS_RESPONSE_API_CLIENT_KEY",
        requires = "response_signing_key"
    )]
    pub response_api_client_key: Option<String>,

    /// Join a cluster: NATS server URLs (comma-separated, e.g. nats://10.0.0.1:4222); every
    /// node of the cluster shares one JetStream stream. Without it, a single node.
    #[arg(long = "nats", env = "QISTATUS_NATS", value_delimiter = ',')]
    pub nats: Vec<String>,

    /// The cluster's JetStream stream (created if missing).
    #[arg(long, env = "QISTATUS_NATS_STREAM", default_value = ClusterSettings::DEFAULT_STREAM)]
    pub nats_stream: String,

    /// Copies JetStream keeps of each webhook (1 to 5; 3 survives the loss of one NATS
    /// server), when it creates the stream.
    #[arg(long, env = "QISTATUS_NATS_REPLICAS", default_value_t = ClusterSettings::DEFAULT_REPLICAS,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// A cluster node: how long a webhook's publish waits for the stream's acknowledgement
    /// before the node holds it on its own disk and answers `200` (`held`), publishing it
    /// when the stream takes messages again. A stream whose leader died takes none for 4 to
    /// 9 s (NATS's election); this keeps every answer within QI's 10 s.
    #[arg(long, env = "QISTATUS_CLUSTER_HOLD_AFTER", default_value_t = Held::DEFAULT_HOLD_AFTER.into())]
    pub cluster_hold_after: humantime::Duration,

    /// A cluster node: most bytes of webhooks it holds at once for its stream; past it a
    /// webhook the stream does not take in time is answered 503. 0 never holds: every `200`
    /// then means "on a quorum of NATS servers".
    #[arg(long, env = "QISTATUS_CLUSTER_HOLD_BYTES", default_value_t = Held::DEFAULT_MAX_BYTES)]
    pub cluster_hold_bytes: u64,

    /// A host name the admin listener (console, metrics, probes) answers for, besides
    /// `localhost` and IP addresses; repeat for several (e.g. the name a proxy forwards
    /// with). Any other `Host` is refused, so that a web page of another site, by pointing
    /// its own DNS name at this address, cannot drive the console from a browser.
    #[arg(
        long = "admin-host",
        env = "QISTATUS_ADMIN_HOSTS",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,

    /// A proxy in front of the admin listener (an IP address): a console sign-in through it
    /// is counted against the client `X-Forwarded-For` names, not against the proxy.
    /// Repeat for several. From anyone else, `X-Forwarded-For` is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "QISTATUS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Size of the store's page cache, in MiB. The server's memory is a small multiple.
    #[arg(long, env = "QISTATUS_CACHE_MB", default_value_t = DEFAULT_CACHE_MB)]
    pub cache_mb: u64,

    /// Keep no flow figures (stage durations, delivery lag, cohorts: `qistatus flow`,
    /// GetFlow, the console's Flow page), saving their cost on every webhook. Starting
    /// without it again counts them from the stored operations, once.
    #[arg(long, env = "QISTATUS_NO_FLOW")]
    pub no_flow: bool,

    /// Log filter, in `tracing` directive syntax (e.g. `info`, `qistatus=debug`).
    #[arg(long, env = "QISTATUS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "QISTATUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The catalog file is wrong.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A key or secret is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// The flag.
        what: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Unsafe exposure, refused.
    #[error("{0}")]
    Exposure(String),
}

/// Safe by default: without verification, only loopback addresses are served, unless
/// `allow_unauthenticated`. Returns what to warn about.
pub fn exposure_warnings(
    http: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
    webhooks_verified: bool,
    grpc_tokens: bool,
    allow_unauthenticated: bool,
) -> Result<Vec<String>, ConfigError> {
    let mut problems = Vec::new();
    if !http.ip().is_loopback() && !webhooks_verified {
        problems.push(format!(
            "the webhook intake on {http} would accept unsigned webhooks: configure \
             --qitech-public-key or --webhook-secret"
        ));
    }
    if !grpc.ip().is_loopback() && !grpc_tokens {
        problems.push(format!(
            "the gRPC API on {grpc} would answer anyone: configure --grpc-token-file"
        ));
    }
    // The console shows operations and reveals personal data: the same rule as the API's
    // (it signs people in with the API's tokens).
    if !admin.ip().is_loopback() && !grpc_tokens {
        problems.push(format!(
            "the console on {admin} (operations, personal data) would answer anyone: \
             configure --grpc-token-file (people sign in with those tokens)"
        ));
    }
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    if allow_unauthenticated {
        return Ok(problems
            .into_iter()
            .map(|p| format!("{p} (allowed by --allow-unauthenticated)"))
            .collect());
    }
    Err(ConfigError::Exposure(format!(
        "refusing to start: {}; or pass --allow-unauthenticated",
        problems.join("; ")
    )))
}

/// The content of the file `path` given with the flag `what`.
fn read_file(path: &PathBuf, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Read {
        what: what.to_owned(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The server's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve webhooks and the gRPC API (the default).
    Serve,
    /// Print the effective catalog (built-in, extended by --catalog) as TOML.
    Catalog {
        /// Print it as the truth table instead (Markdown: each kind's statuses with their
        /// phase, milestones and precedence, and where their meaning comes from).
        #[arg(long)]
        markdown: bool,
    },
    /// List the quarantined webhooks (JSON objects with no readable kind, key or status).
    Quarantine {
        /// Also print each webhook's body (it may hold personal data).
        #[arg(long)]
        payload: bool,
    },
    /// Recompute every operation and index from the event log and the quarantine under the
    /// effective catalog. Run it with the server stopped, after changing --catalog.
    Rebuild,
    /// Restore a snapshot (from `qistatus snapshot save`) into --data-dir, which must be new
    /// or empty. The restored store continues after the snapshot's last sequence, with a new
    /// identity.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The SHA-256 the file must have (64 hex digits): by default the one `qistatus
        /// snapshot save` recorded beside it in FILE.sha256, when that exists.
        #[arg(long)]
        sha256: Option<String>,
        /// A file holding the snapshot key `qistatus snapshot save --key-file` signed with:
        /// a snapshot without FILE.sig, or whose signature is not that key's, is refused.
        #[arg(long, env = "QISTATUS_SNAPSHOT_KEY_FILE")]
        snapshot_key_file: Option<PathBuf>,
    },
    /// Check --data-dir with the server stopped: every log record's checksum and order, then
    /// the view's indexes and counters. Lists every problem; exits non-zero if there is any.
    Verify,
    /// Ask QI's API (--qitech-api-url) to resend what it failed to deliver in a window: every
    /// callback QI lists as failed, or with --key every callback of that operation. Prints
    /// each request and QI's answer; exits non-zero when QI refused or could not be reached.
    /// The server need not be stopped.
    Recover {
        /// Where the window starts: an RFC 3339 time (2026-11-20T00:00:00Z) or how long ago
        /// (3d, 12h).
        #[arg(long)]
        since: String,
        /// Where it ends (the same forms); now by default.
        #[arg(long)]
        until: Option<String>,
        /// Only this operation's events (QI's origin_key).
        #[arg(long)]
        key: Option<String>,
    },
    /// Copy every readable webhook of a damaged --data-dir's log, before and after the
    /// damage, into INTO (new or empty), one file each, and name what could not be read.
    /// Changes nothing in --data-dir. Post them to a fresh server with `qistatus replay INTO`.
    Salvage {
        /// Where to write the webhooks.
        into: PathBuf,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The effective catalog.
    pub fn load_catalog(&self) -> Result<Catalog, CatalogError> {
        crate::reload::load_catalog(self.catalog.as_deref())
    }

    /// The settings `server::run` takes, after the safe-by-default check of the addresses.
    /// Returns warnings to log at start.
    pub fn settings(&self) -> Result<(Settings, Vec<String>), ConfigError> {
        let read = read_file;
        let mut public_keys = Vec::new();
        for path in &self.qitech_public_keys {
            let pem = read(path, "--qitech-public-key")?;
            public_keys.push(String::from_utf8_lossy(&pem).into_owned());
        }
        let webhook_verifier = WebhookVerifier::new(
            &public_keys,
            self.qitech_api_client_keys.clone(),
            &self.webhook_secrets,
            *self.max_clock_skew,
        )?
        .with_dtvm_keys(&self.qitech_dtvm_keys)?
        .with_dtvm_tokens_without_iat(self.qitech_dtvm_without_iat)
        .with_caas_keys(&self.qitech_caas_keys, self.qitech_caas_url_base.clone())?;
        let mut token_texts = Vec::new();
        for path in &self.grpc_token_files {
            token_texts
                .push(String::from_utf8_lossy(&read(path, "--grpc-token-file")?).into_owned());
        }
        let grpc_tokens = BearerTokens::from_files_text(token_texts.iter().map(String::as_str));
        if !self.grpc_token_files.is_empty() && !grpc_tokens.is_enabled() {
            return Err(ConfigError::Exposure(
                "--grpc-token-file names files with no token in them".into(),
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                cert_pem: read(cert, "--tls-cert")?,
                key_pem: read(key, "--tls-key")?,
            }),
            _ => None,
        };
        let mut warnings = exposure_warnings(
            self.http_addr,
            self.grpc_addr,
            self.admin_addr,
            webhook_verifier.is_enabled(),
            grpc_tokens.is_enabled(),
            self.allow_unauthenticated,
        )?;
        let response_signer = match &self.response_signing_key {
            Some(path) => {
                let pem = read(path, "--response-signing-key")?;
                Some(ResponseSigner::from_pem(
                    &String::from_utf8_lossy(&pem),
                    self.response_api_client_key.clone(),
                )?)
            }
            None => None,
        };
        let qitech_api = self.qitech_api_settings()?;
        if let Some(api) = &qitech_api
            && api.public_key_pem.is_none()
        {
            warnings.push(
                "--qitech-api-public-key is not set: QI API's answers are read without checking \
                 QI's signature"
                    .into(),
            );
        }
        let cluster = (!self.nats.is_empty()).then(|| ClusterSettings {
            urls: self.nats.clone(),
            stream: self.nats_stream.clone(),
            replicas: usize::from(self.nats_replicas),
            max_message_bytes: self.max_body,
            hold_after: *self.cluster_hold_after,
            hold_bytes: self.cluster_hold_bytes,
        });
        let settings = Settings {
            cluster,
            response_signer,
            cache_bytes: self.cache_mb.max(8) * 1024 * 1024,
            flow: !self.no_flow,
            webhook_verifier,
            grpc_tokens,
            tls,
            data_dir: self.data_dir.clone(),
            catalog: self.load_catalog()?,
            catalog_file: self.catalog.clone(),
            reload_on_sighup: true,
            intake: IntakeLimits {
                max_body: self.max_body,
                request_timeout: match (self.request_timeout, self.nats.is_empty()) {
                    (Some(timeout), _) => *timeout,
                    (None, true) => IntakeLimits::DEFAULT.request_timeout,
                    (None, false) => IntakeLimits::CLUSTER_REQUEST_TIMEOUT,
                },
                max_concurrent: self.max_concurrent_requests.max(1),
                large_body_memory: self.large_body_memory,
                max_connections: self.max_connections.max(1),
                header_read_timeout: *self.header_read_timeout,
                idle_timeout: *self.idle_timeout,
                handshake_timeout: *self.handshake_timeout,
            },
            grpc: GrpcLimits {
                max_connections: self.grpc_max_connections.max(1),
                handshake_timeout: *self.handshake_timeout,
                max_connection_age: *self.grpc_max_connection_age,
                first_call_grace: *self.grpc_first_call_grace,
                request_timeout: *self.grpc_request_timeout,
            },
            admin_hosts: self.admin_hosts.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            admin: AdminLimits {
                max_connections: self.admin_max_connections.max(1),
                header_read_timeout: *self.admin_header_read_timeout,
                handshake_timeout: *self.handshake_timeout,
                ..AdminLimits::DEFAULT
            },
            writer: WriterLimits {
                queue: self.writer_queue.max(1),
                max_batch: self.max_batch.max(1),
            },
            feed: FeedSettings {
                progress_interval: (*self.watch_progress_interval).max(Duration::from_millis(10)),
                max_subscribers: self.max_watchers.max(1),
                catch_up_readers: self.watch_catch_up_readers.max(1),
                catch_up_rate: self.watch_catch_up_rate,
                ..FeedSettings::DEFAULT
            },
            log_retention: days(self.log_retention_days),
            compaction_interval: (*self.compaction_interval).max(Duration::from_secs(1)),
            overdue_tick: (*self.overdue_tick).max(Duration::from_millis(10)),
            scrub_interval: Some(*self.scrub_interval).filter(|i| !i.is_zero()),
            scrub_bytes_per_second: self.scrub_mb_per_second.max(1) * 1024 * 1024,
            scrub_first_delay: *self.scrub_first_delay,
            clock: crate::clock::Clock::system(),
            qitech_api,
            recovery: self.recovery_settings(),
        };
        if let Some(cluster) = &settings.cluster
            && cluster.hold_bytes > 0
            && cluster.hold_after >= settings.intake.request_timeout
        {
            warnings.push(format!(
                "--cluster-hold-after ({:?}) is not shorter than --request-timeout ({:?}): a \
                 webhook the stream does not take in time is answered 503 before it could be \
                 held",
                cluster.hold_after, settings.intake.request_timeout
            ));
        }
        Ok((settings, warnings))
    }

    /// Recovery's settings, from the `--recover-*` flags.
    pub fn recovery_settings(&self) -> RecoverySettings {
        RecoverySettings {
            every: Some(*self.recover_every).filter(|every| !every.is_zero()),
            lookback: *self.recover_lookback,
            max_resends: self.recover_max_resends.max(1),
            lease: (*self.recover_lease).max(Duration::from_secs(1)),
        }
    }

    /// How to reach QI's API, as `recover` needs it: --qitech-api-url and its keys, required.
    pub fn qitech_api(&self) -> Result<QiApiSettings, ConfigError> {
        self.qitech_api_settings()?.ok_or_else(|| {
            ConfigError::Key(KeyError {
                what: "recover".into(),
                reason: "needs --qitech-api-url (and its keys)".into(),
            })
        })
    }

    /// How to reach QI's API, when --qitech-api-url is given (and then its key and client
    /// key must be too).
    fn qitech_api_settings(&self) -> Result<Option<QiApiSettings>, ConfigError> {
        let read = read_file;
        let Some(url) = &self.qitech_api_url else {
            return Ok(None);
        };
        let missing = |flag: &str| {
            ConfigError::Key(KeyError {
                what: "--qitech-api-url".into(),
                reason: format!("needs {flag} too"),
            })
        };
        let private_key = self
            .qitech_api_private_key
            .as_ref()
            .ok_or_else(|| missing("--qitech-api-private-key"))?;
        let client_key = self
            .qitech_api_client_keys
            .first()
            .ok_or_else(|| missing("--qitech-api-client-key"))?;
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        Ok(Some(QiApiSettings {
            url: url.clone(),
            client_key: client_key.clone(),
            private_key_pem: text(read(private_key, "--qitech-api-private-key")?),
            public_key_pem: match &self.qitech_api_public_key {
                Some(path) => Some(text(read(path, "--qitech-api-public-key")?)),
                None => None,
            },
            max_rps: if self.recover_max_rps > 0.0 {
                self.recover_max_rps
            } else {
                QiApiSettings::DEFAULT_MAX_RPS
            },
            request_timeout: QiApiSettings::DEFAULT_REQUEST_TIMEOUT,
        }))
    }

    /// Installs the global `tracing` subscriber.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Config::command().debug_assert();
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        let config = Config::try_parse_from(["qistatus-server"]).expect("no flags parse");
        let (flags, _) = config.settings().expect("the defaults are servable");
        let library = Settings::new(&config.data_dir);
        let shown = |s: &Settings| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {} {:?}",
                s.intake,
                s.grpc,
                s.writer,
                s.feed,
                s.log_retention,
                s.compaction_interval,
                s.overdue_tick,
                s.cache_bytes,
                s.recovery
            )
        };
        assert_eq!(shown(&flags), shown(&library));
        assert_eq!(flags.flow, library.flow);
    }

    #[test]
    fn a_hold_that_could_never_happen_is_warned_of() {
        let warned = |args: &[&str]| {
            let config = Config::try_parse_from(args).expect("the flags parse");
            let (settings, warnings) = config.settings().expect("servable");
            (settings.cluster.expect("a cluster node"), warnings)
        };
        let (cluster, warnings) = warned(&["qistatus-server", "--nats", "nats://127.0.0.1:4222"]);
        assert_eq!(cluster.hold_after, Held::DEFAULT_HOLD_AFTER);
        assert!(
            !warnings.iter().any(|w| w.contains("--cluster-hold-after")),
            "{warnings:?}"
        );
        let (_, warnings) = warned(&[
            "qistatus-server",
            "--nats",
            "nats://127.0.0.1:4222",
            "--cluster-hold-after",
            "12s",
        ]);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("--cluster-hold-after (12s)")),
            "{warnings:?}"
        );
    }

    #[test]
    fn unauthenticated_exposure_is_refused_unless_allowed() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(
            exposure_warnings(local, local, local, false, false, false)
                .unwrap()
                .is_empty()
        );
        let err = exposure_warnings(public, local, local, false, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsigned webhooks") && err.contains("--allow-unauthenticated"),
            "{err}"
        );
        let err = exposure_warnings(local, public, local, true, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--grpc-token-file"), "{err}");
        assert!(
            exposure_warnings(public, public, public, true, true, false)
                .unwrap()
                .is_empty()
        );
        let err = exposure_warnings(local, local, public, true, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the console on 0.0.0.0:8080"), "{err}");
        let warnings = exposure_warnings(public, public, public, false, false, true).unwrap();
        assert_eq!(warnings.len(), 3);
    }
}
