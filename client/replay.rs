//! `qistatus replay`: posts an archive of webhooks to an intake, as QI Tech would have.
//!
//! Input: a JSON-lines file (one webhook per line; blank lines skipped), a directory of
//! `.json` files (one webhook each, in file-name order), or `-` for JSON lines on standard
//! input. Each webhook is posted byte for byte, so deduplication sees what QI Tech sent.
//!
//! At most `--concurrency` requests are in flight, at most `--rate` start per second. A `503`
//! is retried after its `Retry-After`, and a connection failure a few times with backoff;
//! anything else that is not a `2xx` is a failure, reported with its line or file. The
//! summary counts accepted, duplicate, quarantined, held (a cluster node kept it until its
//! stream takes it) and failed webhooks; any failure makes the
//! exit status non-zero, so a script can trust a zero.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use qistatus::client::Backoff;

/// Where the webhooks come from and where they go.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) source: String,
    pub(crate) intake: String,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) timeout: Duration,
}

/// What happened to the webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) accepted: u64,
    pub(crate) duplicate: u64,
    pub(crate) quarantined: u64,
    pub(crate) held: u64,
    pub(crate) failed: u64,
}

impl Summary {
    pub(crate) fn total(&self) -> u64 {
        self.accepted + self.duplicate + self.quarantined + self.held + self.failed
    }
}

/// One webhook of the archive and where it came from (for messages); a line that cannot
/// be a webhook (not UTF-8) is kept as its reason, reported as failed, never posted.
struct Item {
    origin: String,
    body: Result<Vec<u8>, String>,
}

enum Outcome {
    Accepted,
    Duplicate,
    Quarantined,
    Held,
    Failed(String),
}

/// Most tries of one webhook when the intake is busy or unreachable.
const TRIES: u32 = 8;

pub(crate) async fn run(replay: Replay) -> Result<Summary, String> {
    let items = read(&replay.source).await?;
    let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar =
            ProgressBar::with_draw_target(Some(items.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} webhooks, {per_sec}, eta {eta}")
                .expect("the template is valid"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let http = reqwest::Client::builder()
        .timeout(replay.timeout)
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let slots = Arc::new(Semaphore::new(replay.concurrency.max(1)));
    let interval = replay
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let replay = Arc::new(replay);
    let mut tasks = JoinSet::new();
    let mut summary = Summary::default();
    let record = |outcome: Outcome, origin: String, summary: &mut Summary| match outcome {
        Outcome::Accepted => summary.accepted += 1,
        Outcome::Duplicate => summary.duplicate += 1,
        Outcome::Quarantined => summary.quarantined += 1,
        Outcome::Held => summary.held += 1,
        Outcome::Failed(reason) => {
            summary.failed += 1;
            progress.suspend(|| eprintln!("qistatus: {origin}: {reason}"));
        }
    };
    for item in items {
        let body = match item.body {
            Ok(body) => body,
            Err(reason) => {
                record(Outcome::Failed(reason), item.origin, &mut summary);
                progress.inc(1);
                continue;
            }
        };
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (http, replay) = (http.clone(), replay.clone());
        tasks.spawn(async move {
            let outcome = post(&http, &replay, &body).await;
            drop(permit);
            (outcome, item.origin)
        });
        while let Some(done) = tasks.try_join_next() {
            let (outcome, origin) = done.map_err(|e| format!("a post task failed: {e}"))?;
            record(outcome, origin, &mut summary);
            progress.inc(1);
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (outcome, origin) = done.map_err(|e| format!("a post task failed: {e}"))?;
        record(outcome, origin, &mut summary);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(summary)
}

async fn post(http: &reqwest::Client, replay: &Replay, body: &[u8]) -> Outcome {
    let mut backoff = Backoff::new();
    let mut last_error = String::new();
    for _ in 0..TRIES {
        let mut request = http
            .post(&replay.intake)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(secret) = &replay.secret {
            let id = format!("replay_{}", hex_id(body));
            let timestamp = chrono::Utc::now().timestamp().to_string();
            let signature = qistatus::standard_webhooks::signature(secret, &id, &timestamp, body);
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", signature);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(qistatus::backoff::retry_after);
                let answer = match response.bytes().await {
                    Ok(bytes) => acknowledgement(&bytes),
                    Err(_) => serde_json::Value::Null,
                };
                match (status.as_u16(), answer["result"].as_str()) {
                    (200, Some("accepted")) => return Outcome::Accepted,
                    (200, Some("duplicate")) => return Outcome::Duplicate,
                    (202, Some("quarantined")) => return Outcome::Quarantined,
                    (200, Some("held")) => return Outcome::Held,
                    (503, _) => {
                        last_error = format!("the intake is busy ({status})");
                        let wait = backoff.next_delay();
                        tokio::time::sleep(retry_after.unwrap_or(wait)).await;
                    }
                    _ => {
                        let reason = answer["error"].as_str().unwrap_or("no reason given");
                        return Outcome::Failed(format!("{status}: {reason}"));
                    }
                }
            }
            Err(e) => {
                last_error = format!("cannot reach {}: {e}", replay.intake);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    Outcome::Failed(format!("{last_error} (after {TRIES} tries)"))
}

/// The intake's answer as JSON. A signed acknowledgement (an intake started with
/// `--response-signing-key`) is `{"encoded_body": "<JWT>"}`: its answer is the JWT's
/// payload. Read, not verified: this is the sender's own bookkeeping, and QI Tech's public
/// key is not the replayer's to hold.
fn acknowledgement(bytes: &[u8]) -> serde_json::Value {
    use base64::Engine;
    let answer: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let payload = answer["encoded_body"]
        .as_str()
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok());
    payload.unwrap_or(answer)
}

/// A message id for the signature: the same webhook gets the same id on every replay.
fn hex_id(body: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body)[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn read(source: &str) -> Result<Vec<Item>, String> {
    if source == "-" {
        return read_lines(tokio::io::BufReader::new(tokio::io::stdin()), "stdin").await;
    }
    let path = PathBuf::from(source);
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| format!("{source}: {e}"))?;
    if meta.is_dir() {
        read_dir(&path).await
    } else {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("{source}: {e}"))?;
        read_lines(tokio::io::BufReader::new(file), source).await
    }
}

async fn read_lines(
    mut input: impl tokio::io::AsyncBufRead + Unpin,
    name: &str,
) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut number = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let body = match std::str::from_utf8(text) {
            Ok(_) => Ok(text.to_vec()),
            Err(e) => Err(format!(
                "not UTF-8 at byte {} of the line: not posted (a webhook is JSON text)",
                e.valid_up_to() + 1
            )),
        };
        items.push(Item {
            origin: format!("{name} line {number}"),
            body,
        });
    }
    Ok(items)
}

async fn read_dir(dir: &Path) -> Result<Vec<Item>, String> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut items = Vec::with_capacity(paths.len());
    for path in paths {
        let body = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        items.push(Item {
            origin: path.display().to_string(),
            body: Ok(body),
        });
    }
    Ok(items)
}
