//! `qistatus`: the command-line client of a qistatus server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qistatus::client::{Client, ClientError};
use qistatus::convert::{operation_to_json, rfc3339};
use qistatus::pb;

/// qistatus: ask a qistatus server where QI Tech operations are.
#[derive(Debug, Parser)]
#[command(name = "qistatus", version, about, long_about = None)]
struct Cli {
    /// The qistatus server's gRPC address.
    #[arg(
        long,
        env = "QISTATUS_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,

    /// Print JSON for scripts instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show one operation and its history.
    Get {
        /// The operation's key.
        key: String,
        /// The operation's kind (needed only when the key names operations of several kinds).
        #[arg(long)]
        kind: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qistatus: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let mut client = Client::connect(&cli.server).await?;
    match cli.command {
        Command::Get { key, kind } => {
            let op = client.get(&key, kind.as_deref()).await?;
            if cli.json {
                println!("{}", operation_to_json(&op));
            } else {
                print_operation(&op);
            }
        }
    }
    Ok(())
}

fn phase_name(op: &pb::Operation) -> &'static str {
    match pb::Phase::try_from(op.phase) {
        Ok(pb::Phase::Pending) => "pending",
        Ok(pb::Phase::Succeeded) => "succeeded",
        Ok(pb::Phase::Failed) => "failed",
        _ => "unspecified",
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn print_operation(op: &pb::Operation) {
    println!("{} {}", op.kind, op.key);
    println!("  status      {} ({})", op.status, phase_name(op));
    if !op.detail.is_empty() {
        println!("  detail      {}", op.detail);
    }
    println!("  event time  {}", or_dash(rfc3339(op.event_time.as_ref())));
    println!(
        "  received    {}",
        or_dash(rfc3339(op.first_received_at.as_ref()))
    );
    println!("  updated     {}", or_dash(rfc3339(op.updated_at.as_ref())));
    println!(
        "  version     {} ({} webhooks, last sequence {})",
        op.version, op.event_count, op.last_sequence
    );
    if op.history.is_empty() {
        return;
    }
    println!("  history");
    println!("    {:>8}  {:<20}  status", "sequence", "event time");
    for h in &op.history {
        let detail = if h.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", h.detail)
        };
        println!(
            "    {:>8}  {:<20}  {}{}",
            h.sequence,
            or_dash(rfc3339(h.event_time.as_ref())),
            h.status,
            detail
        );
    }
}
