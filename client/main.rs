//! `qistatus`: the command-line client of a qistatus server, over the library's
//! [`qistatus::client`]. What it prints is in [`json`] (the `--json` shapes) and below.

mod json;
mod replay;
mod terminal;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qistatus::client::{Client, ClientError, ConnectOptions, ListQuery, WatchEvent, WatchQuery};
use qistatus::client::{duration_text, phase_name, rfc3339};
use qistatus::pb;
use terminal::printable;
use tokio_stream::StreamExt;

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

    /// Bearer token, for servers started with --grpc-token-file.
    #[arg(long, env = "QISTATUS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// PEM file of the CA that signed the server's certificate (for https:// servers).
    #[arg(long, env = "QISTATUS_CA", global = true)]
    ca: Option<std::path::PathBuf>,

    /// Give up connecting, and waiting for each answer, after this long (e.g. `10s`,
    /// `500ms`). A watch, once started, runs until Ctrl-C.
    #[arg(long, env = "QISTATUS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: std::time::Duration,

    /// Print JSON for scripts instead of human-readable text (`list` and `watch` print one
    /// object per line).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show one operation and its history.
    Get(GetArgs),
    /// List the operations currently in some statuses, or in a phase.
    List(ListArgs),
    /// Print changes as they happen, until Ctrl-C. Reconnects on its own and resumes after
    /// the last sequence it printed.
    Watch(WatchArgs),
    /// Post an archive of webhooks to an intake: a JSON-lines FILE, a directory of `.json`
    /// files, or `-` for JSON lines on standard input. Prints a summary; exits non-zero if
    /// any webhook failed.
    Replay(ReplayArgs),
    /// How long each stage of a kind takes (percentiles of the time between its statuses'
    /// event times), how late its webhooks arrive, and where the operations that started on
    /// each day are now; over whole UTC days (by default the week up to today).
    Flow(FlowArgs),
    /// How many operations there are of each kind in each status, and the log's head.
    Stats,
    /// Snapshots of the running server.
    Snapshot(SnapshotArgs),
    /// List the quarantined webhooks (JSON objects with no readable kind, key or status).
    Quarantine(QuarantineArgs),
}

/// `qistatus get`.
#[derive(Debug, Args)]
struct GetArgs {
    /// The operation's key.
    key: String,
    /// The operation's kind (needed only when the key names operations of several kinds).
    #[arg(long)]
    kind: Option<String>,
    /// Also each webhook's `data` object (with --json; newest first, as much as fits in
    /// one answer).
    #[arg(long)]
    full: bool,
}

/// `qistatus list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// A status to list (repeat, or separate with commas).
    #[arg(
        long = "status",
        value_delimiter = ',',
        required_unless_present_any = ["phase", "overdue"]
    )]
    statuses: Vec<String>,
    /// A phase to list instead of statuses.
    #[arg(long, value_enum, conflicts_with_all = ["statuses", "overdue"])]
    phase: Option<PhaseArg>,
    /// Only the operations that should have moved by now (held a status longer than the
    /// server's catalog expects), most overdue first; `--status` and `--kind` narrow it.
    #[arg(long)]
    overdue: bool,
    /// Only operations of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Stop after this many operations.
    #[arg(long)]
    limit: Option<usize>,
}

/// `qistatus flow`.
#[derive(Debug, Args)]
struct FlowArgs {
    /// The kind (e.g. `debt`).
    kind: String,
    /// From the day of this time: RFC 3339, or how long ago (`7d`, `12h`). Default: six days
    /// before --until's day.
    #[arg(long, value_parser = time_ago)]
    since: Option<i64>,
    /// To the day of this time, included: RFC 3339, or how long ago. Default: today.
    #[arg(long, value_parser = time_ago)]
    until: Option<i64>,
}

/// A time on the command line, in ms since the epoch (see [`qistatus::client::time_given`]).
fn time_ago(text: &str) -> Result<i64, String> {
    qistatus::client::time_given(text, chrono::Utc::now().timestamp_millis())
}

/// `qistatus watch`.
#[derive(Debug, Args)]
struct WatchArgs {
    /// Only this operation key.
    #[arg(long)]
    key: Option<String>,
    /// Only these kinds (repeat, or separate with commas).
    #[arg(long = "kind", value_delimiter = ',')]
    kinds: Vec<String>,
    /// Only changes into these statuses (repeat, or separate with commas).
    #[arg(long = "status", value_delimiter = ',')]
    statuses: Vec<String>,
    /// Only changes into these phases (repeat, or separate with commas).
    #[arg(long = "phase", value_enum, value_delimiter = ',')]
    phases: Vec<PhaseArg>,
    /// Resume after this sequence instead of starting from now.
    #[arg(long)]
    from_sequence: Option<u64>,
    /// With --key: print the operation's current state first.
    #[arg(long, requires = "key")]
    initial: bool,
    /// Also print webhooks that did not change the status.
    #[arg(long)]
    include_unchanged: bool,
    /// Only changes that reach one of these milestones, once each per operation whatever
    /// the delivery order (e.g. `disbursed,canceled`).
    #[arg(long = "milestone", value_delimiter = ',')]
    milestones: Vec<String>,
    /// Also print the moment each watched operation becomes overdue (it held a status
    /// longer than the server's catalog expects), once per operation and status.
    #[arg(long)]
    overdue: bool,
    /// With --from-sequence: the store that sequence was seen on (`Progress.store_id` of
    /// the API); refused if the server's store is another one. Reconnects always check it.
    #[arg(long, requires = "from_sequence")]
    store_id: Option<String>,
}

/// `qistatus replay`.
#[derive(Debug, Args)]
struct ReplayArgs {
    /// The archive.
    source: String,
    /// Where to post.
    #[arg(
        long,
        env = "QISTATUS_INTAKE",
        default_value = "http://127.0.0.1:8080/webhooks"
    )]
    intake: String,
    /// Most webhooks in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Most webhooks started per second (no limit by default).
    #[arg(long)]
    rate: Option<f64>,
    /// Sign each webhook with this Standard Webhooks secret (`whsec_...`), for intakes
    /// started with --webhook-secret.
    #[arg(long, env = "QISTATUS_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

/// `qistatus snapshot`.
#[derive(Debug, Args)]
struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

/// `qistatus quarantine`.
#[derive(Debug, Args)]
struct QuarantineArgs {
    /// Also print each webhook's body (it may hold personal data).
    #[arg(long)]
    payload: bool,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Save a consistent snapshot of the running server to FILE (written whole, then renamed
    /// into place). Bring it back with `qistatus-server restore FILE --data-dir DIR`.
    Save {
        /// Where to write it.
        file: std::path::PathBuf,
        /// A file holding the snapshot key (a secret the operator keeps, off the server's
        /// host): the snapshot's SHA-256 is signed with it (HMAC-SHA256) into FILE.sig, and
        /// `qistatus-server restore --snapshot-key-file` refuses a snapshot it did not sign.
        #[arg(long, env = "QISTATUS_SNAPSHOT_KEY_FILE")]
        key_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PhaseArg {
    Pending,
    Active,
    Succeeded,
    Failed,
}

impl From<PhaseArg> for pb::Phase {
    fn from(p: PhaseArg) -> pb::Phase {
        match p {
            PhaseArg::Pending => pb::Phase::Pending,
            PhaseArg::Active => pb::Phase::Active,
            PhaseArg::Succeeded => pb::Phase::Succeeded,
            PhaseArg::Failed => pb::Phase::Failed,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::select! {
        outcome = run(cli) => outcome,
        () = interrupted() => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qistatus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C; never, if Ctrl-C cannot be listened for.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let Cli {
        server,
        token,
        ca,
        timeout,
        json,
        command,
    } = cli;
    // Replay posts to the intake over HTTP: no gRPC connection.
    if let Command::Replay(args) = command {
        return replay(args, timeout, json).await;
    }
    let ca_pem =
        match &ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read --ca {}: {e}", path.display()))
            })?),
            None => None,
        };
    let options = ConnectOptions {
        token,
        ca_pem,
        timeout: Some(timeout),
    };
    // A watch waits for a server that is not up yet (and says so); the other commands fail
    // at once with the reason.
    let client = if matches!(command, Command::Watch(_)) {
        Client::connect_lazy_with(&server, options)?
    } else {
        Client::connect_with(&server, options).await?
    };
    match command {
        Command::Get(args) => get(client, args, json).await,
        Command::List(args) => list(client, args, json).await,
        Command::Watch(args) => watch(client, args, json).await,
        Command::Snapshot(SnapshotArgs {
            command: SnapshotCommand::Save { file, key_file },
        }) => save_snapshot(client, file, key_file, json).await,
        Command::Stats => stats(client, json).await,
        Command::Flow(args) => flow(client, args, json).await,
        Command::Quarantine(args) => quarantine(client, args, json).await,
        Command::Replay(_) => unreachable!("replay returned above, before connecting"),
    }
}

/// `qistatus get`: one operation, its milestones, facts and history.
async fn get(mut client: Client, args: GetArgs, json: bool) -> Result<(), ClientError> {
    let view = if args.full {
        pb::OperationView::Full
    } else {
        pb::OperationView::Basic
    };
    let (op, parts, parts_omitted) = client
        .get_whole(&args.key, args.kind.as_deref(), view)
        .await?;
    if json {
        let mut out = json::operation(&op);
        out["parts"] = parts.iter().map(json::operation).collect();
        out["parts_omitted"] = parts_omitted.into();
        println!("{out}");
    } else {
        print_operation(&op);
        print_parts(&parts, parts_omitted);
    }
    Ok(())
}

/// `qistatus list`: every page of a `ListByStatus` query, a line (or object) each.
async fn list(client: Client, args: ListArgs, json: bool) -> Result<(), ClientError> {
    let ListArgs {
        statuses,
        phase,
        overdue,
        kind,
        limit,
    } = args;
    let query = ListQuery {
        kind,
        statuses,
        phase: phase.map(Into::into),
        page_size: limit.map_or(0, |l| l.clamp(1, 1000) as u32),
        overdue,
    };
    let operations = client.list(query).take(limit.unwrap_or(usize::MAX));
    tokio::pin!(operations);
    let mut count = 0;
    while let Some(op) = operations.next().await {
        let op = op?;
        if json {
            println!("{}", json::operation(&op));
        } else {
            if count == 0 {
                let last = if overdue { "overdue since" } else { "updated" };
                println!(
                    "{:<26} {:<38} {:<34} {:<10} {last}",
                    "kind", "key", "status", "phase"
                );
            }
            let last = match (&op.overdue, overdue) {
                (Some(late), true) => format!(
                    "{} (expected within {})",
                    rfc3339(late.due.as_ref()),
                    duration_text(late.expected_within.as_ref())
                ),
                _ => rfc3339(op.updated_at.as_ref()),
            };
            println!(
                "{:<26} {:<38} {:<34} {:<10} {last}",
                printable(&op.kind),
                printable(&op.key),
                printable(&op.status),
                phase_name(op.phase),
            );
        }
        count += 1;
    }
    if !json {
        eprintln!("{count} operation(s)");
    }
    Ok(())
}

/// `qistatus watch`: changes as they happen, until Ctrl-C; reconnects are said on stderr.
async fn watch(client: Client, args: WatchArgs, json: bool) -> Result<(), ClientError> {
    let WatchArgs {
        key,
        kinds,
        statuses,
        phases,
        from_sequence,
        initial,
        include_unchanged,
        milestones,
        overdue,
        store_id,
    } = args;
    // With a key, a single kind names which operation of that key (the key may name
    // several); without one, kinds filter.
    let (kind, kinds) = match (&key, kinds.as_slice()) {
        (Some(_), [kind]) => (Some(kind.clone()), Vec::new()),
        _ => (None, kinds),
    };
    let query = WatchQuery {
        key,
        kind,
        kinds,
        statuses,
        phases: phases.into_iter().map(Into::into).collect(),
        start_after_sequence: from_sequence,
        send_initial_state: initial,
        include_unchanged,
        store_id,
        milestones,
        overdue,
    };
    let events = client.watch(query);
    tokio::pin!(events);
    while let Some(event) = events.next().await {
        match event? {
            WatchEvent::Change(change) => print_change(&change, json),
            WatchEvent::Progress(_) => {}
            WatchEvent::Reconnecting {
                resume_after,
                reason,
                delay,
            } => {
                let after = resume_after.map_or("now".to_owned(), |s| format!("sequence {s}"));
                eprintln!("qistatus: {reason}; reconnecting in {delay:?}, resuming after {after}");
            }
        }
    }
    Ok(())
}

/// `qistatus snapshot save FILE`: written whole beside FILE, synced, then renamed into place.
async fn save_snapshot(
    mut client: Client,
    file: std::path::PathBuf,
    key_file: Option<std::path::PathBuf>,
    json: bool,
) -> Result<(), ClientError> {
    // Read first: a key that cannot be read takes no snapshot.
    let key = match &key_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| ClientError::Output(format!("--key-file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let partial = file.with_extension("partial");
    let out = std::fs::File::create(&partial)
        .map_err(|e| ClientError::Output(format!("{}: {e}", partial.display())))?;
    let mut hashing = Sha256Writer::new(std::io::BufWriter::new(&out));
    let saved = client.save_snapshot(&mut hashing).await?;
    let sha256 = hashing.hex_digest();
    // The digest beside the file, as `sha256sum` writes it (so `sha256sum -c` checks it
    // too): kept apart from the file, it is what a restore checks against an edit.
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let digest_file = sha256_file(&file);
    out.sync_all()
        .and_then(|()| std::fs::rename(&partial, &file))
        .and_then(|()| std::fs::write(&digest_file, format!("{sha256}  {name}\n")))
        .map_err(|e| ClientError::Output(format!("{}: {e}", file.display())))?;
    if let Some(key) = &key {
        let signature = qistatus::snapshot_signature(key, &sha256);
        let signature_file = beside(&file, ".sig");
        std::fs::write(&signature_file, format!("{signature}\n"))
            .map_err(|e| ClientError::Output(format!("{}: {e}", signature_file.display())))?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "head_sequence": saved.head_sequence,
                "store_id": saved.store_id,
                "bytes": saved.bytes,
                "sha256": sha256,
            })
        );
    } else {
        println!(
            "saved {}: store {} through sequence {}, {} bytes, sha256 {sha256} (also in {})",
            file.display(),
            saved.store_id,
            saved.head_sequence,
            saved.bytes,
            digest_file.display()
        );
    }
    Ok(())
}

/// Where a snapshot's SHA-256 is kept: `FILE.sha256`.
fn sha256_file(file: &std::path::Path) -> std::path::PathBuf {
    beside(file, ".sha256")
}

/// `FILE` with `suffix` added to its name.
fn beside(file: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Writes through, hashing what passes with SHA-256.
struct Sha256Writer<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W> Sha256Writer<W> {
    fn new(inner: W) -> Self {
        use sha2::Digest;
        Sha256Writer {
            inner,
            hash: sha2::Sha256::new(),
        }
    }

    fn hex_digest(self) -> String {
        use sha2::Digest;
        self.hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<W: std::io::Write> std::io::Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `qistatus stats`: operations by kind and status, and the log's head.
async fn stats(mut client: Client, json: bool) -> Result<(), ClientError> {
    let stats = client.stats().await?;
    if json {
        println!("{}", json::stats(&stats));
    } else {
        print_stats(&stats);
    }
    Ok(())
}

/// `qistatus flow`: a kind's stages, delivery lag and cohorts over a window of days.
async fn flow(mut client: Client, args: FlowArgs, json: bool) -> Result<(), ClientError> {
    let flow = client.flow(&args.kind, args.since, args.until).await?;
    if json {
        println!("{}", json::flow(&flow));
    } else {
        print_flow(&flow);
    }
    Ok(())
}

/// `qistatus quarantine`: the quarantined webhooks, with their bodies on request.
async fn quarantine(
    mut client: Client,
    args: QuarantineArgs,
    json: bool,
) -> Result<(), ClientError> {
    let entries = client.quarantine(args.payload).await?;
    tokio::pin!(entries);
    let mut count = 0;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        if json {
            println!("{}", json::quarantined(&entry));
        } else {
            println!(
                "{}\t{}\t{} bytes\t{}",
                entry.id,
                rfc3339(entry.received_at.as_ref()),
                entry.size_bytes,
                printable(&entry.reason)
            );
            if args.payload {
                println!("{}", printable(&String::from_utf8_lossy(&entry.payload)));
            }
        }
        count += 1;
    }
    if !json {
        eprintln!("{count} quarantined webhook(s)");
    }
    Ok(())
}

/// `qistatus replay`: posts an archive to an intake and sums up what became of each webhook;
/// fails if any failed.
async fn replay(
    args: ReplayArgs,
    timeout: std::time::Duration,
    json: bool,
) -> Result<(), ClientError> {
    let secret = args
        .webhook_secret
        .as_deref()
        .map(qistatus::standard_webhooks::parse_secret)
        .transpose()
        .map_err(|e| ClientError::Output(format!("--webhook-secret: {e}")))?;
    let summary = replay::run(replay::Replay {
        source: args.source,
        intake: args.intake,
        concurrency: args.concurrency,
        rate: args.rate,
        secret,
        timeout,
    })
    .await
    .map_err(ClientError::Output)?;
    let line = if json {
        serde_json::json!({
            "webhooks": summary.total(),
            "accepted": summary.accepted,
            "duplicate": summary.duplicate,
            "quarantined": summary.quarantined,
            "held": summary.held,
            "failed": summary.failed,
        })
        .to_string()
    } else {
        format!(
            "replayed {} webhook(s): {} accepted, {} duplicate, {} quarantined, {} held, {} failed",
            summary.total(),
            summary.accepted,
            summary.duplicate,
            summary.quarantined,
            summary.held,
            summary.failed
        )
    };
    println!("{line}");
    if summary.failed > 0 {
        return Err(ClientError::Output(format!(
            "{} webhook(s) failed (see above)",
            summary.failed
        )));
    }
    Ok(())
}

fn print_stats(stats: &pb::GetStatsResponse) {
    println!(
        "{:<26} {:<34} {:<10} {:>12}",
        "kind", "status", "phase", "operations"
    );
    for c in &stats.counts {
        println!(
            "{:<26} {:<34} {:<10} {:>12}",
            printable(&c.kind),
            printable(&c.status),
            phase_name(c.phase),
            c.operations
        );
    }
    let total: u64 = stats.counts.iter().map(|c| c.operations).sum();
    println!(
        "{total} operation(s); {} quarantined webhook(s)",
        stats.quarantined
    );
    for o in stats.overdue.iter().filter(|o| o.operations > 0) {
        println!(
            "{} {} overdue in {} (qistatus list --overdue)",
            o.operations,
            printable(&o.kind),
            printable(&o.status)
        );
    }
    println!(
        "head sequence {} of store {}",
        stats.head_sequence, stats.store_id
    );
}

fn print_flow(flow: &pb::GetFlowResponse) {
    let day = |t: Option<&prost_types::Timestamp>| rfc3339(t).get(..10).unwrap_or("").to_owned();
    let until_day = flow.until.as_ref().map(|t| prost_types::Timestamp {
        seconds: t.seconds - 86_400,
        nanos: t.nanos,
    });
    println!(
        "{} from {} to {} (UTC days, by event time)",
        printable(&flow.kind),
        day(flow.since.as_ref()),
        day(until_day.as_ref())
    );
    println!();
    println!(
        "{:<56} {:>9} {:>9} {:>9} {:>9}",
        "stage", "count", "p50", "p90", "p99"
    );
    for stage in &flow.stages {
        let Some(total) = &stage.total else { continue };
        let to = if stage.milestone {
            format!("milestone {}", printable(&stage.to_status))
        } else {
            printable(&stage.to_status).into_owned()
        };
        println!(
            "{:<56} {:>9} {:>9} {:>9} {:>9}",
            format!("{} -> {to}", printable(&stage.from_status)),
            total.count,
            span_text(total.p50.as_ref()),
            span_text(total.p90.as_ref()),
            span_text(total.p99.as_ref()),
        );
    }
    if flow.stages.is_empty() {
        println!("(no stage ended in the window)");
    }
    println!();
    match &flow.delivery_lag {
        Some(lag) => println!(
            "delivery lag (receipt - event time) of {} webhooks: p50 {}, p90 {}, p99 {}",
            lag.count,
            span_text(lag.p50.as_ref()),
            span_text(lag.p90.as_ref()),
            span_text(lag.p99.as_ref()),
        ),
        None => println!("delivery lag: no webhook with an event time received in the window"),
    }
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  failed ones stopped at",
        "started", "total", "pending", "active", "succeeded", "failed"
    );
    for cohort in &flow.cohorts {
        let count = |phase: pb::Phase| {
            cohort
                .phases
                .iter()
                .filter(|p| p.phase == phase as i32)
                .map(|p| p.operations)
                .sum::<u64>()
        };
        let total: u64 = cohort.phases.iter().map(|p| p.operations).sum();
        let stopped: Vec<String> = cohort
            .stopped_at
            .iter()
            .map(|s| format!("{} {}", printable(&s.status), s.operations))
            .collect();
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            day(cohort.day.as_ref()),
            total,
            count(pb::Phase::Pending),
            count(pb::Phase::Active),
            count(pb::Phase::Succeeded),
            count(pb::Phase::Failed),
            stopped.join(", ")
        );
    }
}

/// A percentile for people ([`qistatus::client::span_text`]); `-` when there is none.
fn span_text(d: Option<&prost_types::Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| qistatus::client::span_text(d.seconds as f64 + f64::from(d.nanos) / 1e9),
    )
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn print_change(change: &pb::OperationChange, json: bool) {
    let Some(op) = &change.operation else {
        return;
    };
    if json {
        println!("{}", json::change(change, op));
    } else {
        let status = printable(&op.status);
        let transition = if let Some(late) = &change.overdue {
            format!(
                "OVERDUE in {} since {}, expected to move within {}",
                printable(&late.status),
                or_dash(rfc3339(late.since.as_ref())),
                duration_text(late.expected_within.as_ref())
            )
        } else if change.initial {
            format!("{status} (current state)")
        } else if change.previous_status.is_empty() {
            format!("new -> {status}")
        } else {
            format!("{} -> {status}", printable(&change.previous_status))
        };
        let milestones = if change.milestones_reached.is_empty() {
            String::new()
        } else {
            let names: Vec<_> = change
                .milestones_reached
                .iter()
                .map(|m| printable(m))
                .collect();
            format!("  reached {}", names.join(", "))
        };
        println!(
            "{:>8}  {} {}  {} ({}){milestones}",
            change.sequence,
            printable(&op.kind),
            printable(&op.key),
            transition,
            phase_name(op.phase)
        );
    }
}

/// An operation's parts (a debt's installments), a line each, after the operation.
fn print_parts(parts: &[pb::Operation], omitted: u64) {
    if parts.is_empty() {
        return;
    }
    println!("  parts");
    for part in parts {
        println!(
            "    {}  {}  {} ({})",
            printable(&part.kind),
            printable(&part.key),
            printable(&part.status),
            phase_name(part.phase)
        );
    }
    if omitted > 0 {
        println!("    ... and {omitted} more");
    }
}

fn print_operation(op: &pb::Operation) {
    println!("{} {}", printable(&op.kind), printable(&op.key));
    println!(
        "  status      {} ({})",
        printable(&op.status),
        phase_name(op.phase)
    );
    if !op.detail.is_empty() {
        println!("  detail      {}", printable(&op.detail));
    }
    if let Some(late) = &op.overdue {
        println!(
            "  OVERDUE     {} since {}, expected to move within {} (overdue since {})",
            printable(&late.status),
            or_dash(rfc3339(late.since.as_ref())),
            duration_text(late.expected_within.as_ref()),
            or_dash(rfc3339(late.due.as_ref()))
        );
    }
    for m in &op.milestones {
        println!(
            "  milestone   {} ({})",
            printable(&m.name),
            or_dash(rfc3339(m.reached_at.as_ref()))
        );
    }
    let mut facts: Vec<_> = op.facts.iter().collect();
    facts.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in facts {
        let text = match &value.kind {
            Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
            Some(prost_types::value::Kind::NumberValue(n)) => n.to_string(),
            Some(prost_types::value::Kind::BoolValue(b)) => b.to_string(),
            _ => continue,
        };
        println!("  fact        {} = {}", printable(name), printable(&text));
    }
    if !op.conflicting_statuses.is_empty() {
        let statuses: Vec<_> = op
            .conflicting_statuses
            .iter()
            .map(|s| printable(s))
            .collect();
        println!(
            "  conflict    {} at the same event time",
            statuses.join(", ")
        );
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
            format!("  ({})", printable(&h.detail))
        };
        println!(
            "    {:>8}  {:<20}  {}{}",
            h.sequence,
            or_dash(rfc3339(h.event_time.as_ref())),
            printable(&h.status),
            detail
        );
    }
}
