//! The server's configuration: one clap struct. Every flag has a `QISTATUS_*` environment
//! twin; the doc comments below are the `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::domain::catalog::{Catalog, CatalogError};
use crate::intake::IntakeLimits;
use crate::server::Settings;
use crate::store::writer::WriterLimits;
use crate::watch::WatchSettings;

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

    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "QISTATUS_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Longest a webhook request may take before it is answered 408 (e.g. `4s`, `500ms`).
    #[arg(long, env = "QISTATUS_REQUEST_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Most webhook requests handled at once; more wait their turn.
    #[arg(long, env = "QISTATUS_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Capacity of the queue in front of the writer; when full, the intake answers 503.
    #[arg(long, env = "QISTATUS_WRITER_QUEUE", default_value_t = 1024)]
    pub writer_queue: usize,

    /// Most webhooks the writer commits with one flush.
    #[arg(long, env = "QISTATUS_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,

    /// Days raw webhooks and change records stay in the event log. Operations and the
    /// summary of their history are kept forever; watchers cannot resume from older points.
    #[arg(long, env = "QISTATUS_LOG_RETENTION_DAYS", default_value_t = 90)]
    pub log_retention_days: u32,

    /// How often expired log entries are dropped (also once at start).
    #[arg(long, env = "QISTATUS_COMPACTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub compaction_interval: Duration,

    /// How long an idle watch stream waits between progress notifications.
    #[arg(long, env = "QISTATUS_WATCH_PROGRESS_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub watch_progress_interval: Duration,

    /// Most watch streams open at once.
    #[arg(long, env = "QISTATUS_MAX_WATCHERS", default_value_t = 10_000)]
    pub max_watchers: usize,

    /// Log filter, in `tracing` directive syntax (e.g. `info`, `qistatus=debug`).
    #[arg(long, env = "QISTATUS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "QISTATUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// The server's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve webhooks and the gRPC API (the default).
    Serve,
    /// Print the effective catalog (built-in, extended by --catalog) as TOML.
    Catalog,
    /// List the quarantined webhooks (JSON objects with no readable kind, key or status).
    Quarantine {
        /// Also print each webhook's body (it may hold personal data).
        #[arg(long)]
        payload: bool,
    },
    /// Recompute every operation and index from the event log and the quarantine under the
    /// effective catalog. Run it with the server stopped, after changing --catalog.
    Rebuild,
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
        Catalog::load(self.catalog.as_deref())
    }

    /// The settings `server::run` takes.
    pub fn settings(&self) -> Result<Settings, CatalogError> {
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            catalog: self.load_catalog()?,
            intake: IntakeLimits {
                max_body: self.max_body,
                request_timeout: self.request_timeout,
                max_concurrent: self.max_concurrent_requests.max(1),
            },
            writer: WriterLimits {
                queue: self.writer_queue.max(1),
                max_batch: self.max_batch.max(1),
            },
            watch: WatchSettings {
                progress_interval: self.watch_progress_interval.max(Duration::from_millis(10)),
                max_watchers: self.max_watchers.max(1),
                ..WatchSettings::default()
            },
            log_retention: Duration::from_secs(u64::from(self.log_retention_days) * 24 * 3600),
            compaction_interval: self.compaction_interval.max(Duration::from_secs(1)),
        })
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
}
