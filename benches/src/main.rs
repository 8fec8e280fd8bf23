//! qistatus-bench: qistatus against etcd and PostgreSQL, on the same machine, in the same
//! run, at the same durability (all fsync before acknowledging a write).
//!
//! A team without qistatus would keep operation statuses in etcd (a put per webhook, a get
//! per question, a prefix watch to react) or in a PostgreSQL table (an insert and an upsert
//! per webhook in one transaction). This harness starts each server on loopback with
//! fresh data directories, drives the same realistic load at each (the seed documents'
//! webhook shapes, the ~13 KB debt creation among them, with distinct keys), and writes
//! `BENCHMARKS.md`: medians over rounds, p50/p99 from HDR histograms, and the ratios.
//!
//! - [`process`]: starting, measuring and stopping the servers (and NATS for the cluster);
//! - [`target`]: each system behind one trait, so a scenario is written once;
//! - [`load`]: payloads, the closed-loop driver, connections;
//! - [`scenario`]: one module per scenario;
//! - [`report`]: the Markdown report.
//!
//! `benches/run.sh` is the way to run it; `--quick` (what CI runs) uses small counts and
//! skips etcd when it is not installed; `--only` picks scenarios.

mod etcd;
mod load;
mod process;
mod report;
mod scenario;
mod target;

use std::path::PathBuf;

use clap::Parser;

use process::Qistatus;
use report::Report;
use scenario::{Context, Sizes};

/// qistatus-bench: qistatus against etcd and PostgreSQL on this machine.
#[derive(Debug, Parser)]
struct Args {
    /// The qistatus-server binary to benchmark.
    #[arg(long)]
    server_bin: PathBuf,
    /// The etcd binary; without it, etcd is not measured.
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// The nats-server binary; without it, the cluster is not measured.
    #[arg(long)]
    nats_bin: Option<PathBuf>,
    /// PostgreSQL's bin directory (initdb, pg_ctl); without it, PostgreSQL is not measured.
    #[arg(long)]
    postgres_bin_dir: Option<PathBuf>,
    /// Small counts and short rounds (for CI: it checks the harness works, not timings).
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Log filter of the qistatus servers the harness starts (their logs go to stderr).
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Only these scenarios (ingest, reads, watch, scale, cluster); all by default.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(scenario::NAMES))]
    only: Vec<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let cx = Context {
        qistatus: Qistatus {
            bin: args.server_bin.clone(),
            log: args.server_log.clone(),
        },
        etcd_bin: args.etcd_bin.clone().filter(|b| b.exists()),
        nats_bin: args.nats_bin.clone().filter(|b| b.exists()),
        postgres_bin_dir: args
            .postgres_bin_dir
            .clone()
            .filter(|b| b.join("initdb").exists()),
        sizes: Sizes::new(args.quick),
        scratch: std::env::temp_dir().join(format!("qistatus-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(cx.scratch()).expect("temp dir");
    let mut report = Report::default();
    if cx.etcd_bin.is_none() {
        report
            .notes
            .push("etcd was not available: it was not measured.".into());
    }
    if cx.postgres_bin_dir.is_none() {
        report
            .notes
            .push("PostgreSQL was not available: it was not measured.".into());
    }
    if wants("ingest") || wants("reads") {
        scenario::ingest::run(&cx, &mut report, wants("ingest"), wants("reads")).await;
    }
    if wants("watch") {
        scenario::fanout::run(&cx, &mut report).await;
    }
    if wants("scale") {
        scenario::scale::run(&cx, &mut report).await;
    }
    if wants("cluster") {
        scenario::cluster::run(&cx, &mut report).await;
    }
    let _ = std::fs::remove_dir_all(cx.scratch());
    std::fs::write(&args.out, report.to_markdown(args.quick)).expect("write the report");
    eprintln!("report written to {}", args.out.display());
}
