//! `qistatus-server`: parses the configuration and calls the library.

use anyhow::Context;
use clap::Parser;
use qistatus::config::{Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.init_logging();
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = config.settings()?;
            let http = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("cannot listen on {} (--http-addr)", config.http_addr))?;
            let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {} (--grpc-addr)", config.grpc_addr))?;
            tracing::info!(
                http = %http.local_addr()?,
                grpc = %grpc.local_addr()?,
                data_dir = %config.data_dir.display(),
                "qistatus-server listening"
            );
            qistatus::server::run(settings, http, grpc, qistatus::server::shutdown_signal())
                .await?;
        }
        Command::Catalog => print!("{}", config.load_catalog()?.to_toml()),
    }
    Ok(())
}
