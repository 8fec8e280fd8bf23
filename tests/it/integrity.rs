//! Faults of the disk and of the files, injected: a `200` means kept, whatever the disk or an
//! operator does to the data directory afterwards.
//!
//! - bytes flipped in the middle of the newest log segment, with intact records after them:
//!   the start is refused naming the place, not a byte is cut, with or without sled's files;
//!   `verify` says so; `salvage` copies every readable webhook from both sides of the damage;
//! - a torn tail (a partial write at the end): cut at the start, as a crash leaves it; a
//!   damaged segment header: refused, nothing changed;
//! - a rollover interrupted before the new segment had its header: recovered by itself;
//! - a full disk (a small tmpfs under the log, as root): `503` with `Retry-After` and
//!   `/readyz` naming the cause while it lasts, acknowledgements again once space is freed,
//!   with no restart, and nothing acknowledged lost across a restart after it;
//! - a full disk under sled's files instead: `503`, a clean stop that says the log will be
//!   replayed, and nothing lost once the volume grows;
//! - a stored body altered in an older segment: `DATA_LOSS`, never reconciled; the
//!   background scrub finds such damage on its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use crate::process::{ServerCommand, refused_start, server_offline};
use crate::test_server::webhook;

/// The body of webhook `n` of a test: its own operation, so every one is visible alone.
fn body(n: usize) -> Vec<u8> {
    webhook(
        "debt",
        &format!("integrity-{n}"),
        "disbursed",
        "2024-01-01 10:00:00",
    )
}

/// [`body`] `n` with `pad` bytes more: large webhooks, to fill a disk.
fn padded_body(n: usize, pad: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "webhook_type": "debt",
        "key": format!("integrity-{n}"),
        "status": "disbursed",
        "event_datetime": "2024-01-01 10:00:00",
        "pad": "x".repeat(pad),
    }))
    .unwrap()
}

/// POSTs `body` to the intake; the status and the `Retry-After` header.
async fn post(http: SocketAddr, body: Vec<u8>) -> (u16, Option<String>) {
    let answer = reqwest::Client::new()
        .post(format!("http://{http}/webhooks"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the intake answers");
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (answer.status().as_u16(), retry_after)
}

/// Starts a server on `dir`, stores webhooks `0..count` (each acknowledged), stops it with
/// SIGTERM (a clean stop: the view applied everything).
async fn store_and_stop(dir: &Path, count: usize) {
    let server = ServerCommand::new(dir).start().await;
    for n in 0..count {
        assert_eq!(post(server.http, body(n)).await.0, 200, "webhook {n}");
    }
    assert!(server.terminate().await.success());
}

/// Whether the operation of webhook `n` is there, disbursed.
async fn holds(grpc: SocketAddr, n: usize) -> bool {
    let mut client = OperationStatusServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("gRPC connects");
    client
        .get_operation(pb::GetOperationRequest {
            key: format!("integrity-{n}"),
            kind: "debt".into(),
            ..Default::default()
        })
        .await
        .is_ok_and(|op| {
            op.into_inner()
                .operation
                .is_some_and(|op| op.status == "disbursed")
        })
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .expect("a log directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

/// Removes everything of the data directory but its log: sled's files gone.
fn remove_the_view(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "log") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[tokio::test]
async fn damage_followed_by_intact_records_is_refused_and_cut_nowhere_and_salvage_reads_past_it() {
    let dir = tempfile::tempdir().unwrap();
    store_and_stop(dir.path(), 200).await;
    let newest = segments(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&newest, &bytes).unwrap();

    // Refused, naming the segment, the offset and the records around it; nothing cut.
    let said = refused_start(dir.path(), &[]);
    assert!(
        said.contains("is damaged at byte")
            && said.contains("before record")
            && said.contains("salvage"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        bytes,
        "the start changed the log"
    );
    // The same without sled's files: no view to compare with, and still nothing cut.
    remove_the_view(dir.path());
    let said = refused_start(dir.path(), &[]);
    assert!(said.contains("is damaged at byte"), "{said}");
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        bytes,
        "the start changed the log"
    );

    // verify names the damage and fails.
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify passed a damaged log: {report}"
    );
    assert!(
        report.contains("damage: segment") && report.contains("lost"),
        "{report}"
    );

    // salvage copies every readable webhook, before and after the damage.
    let out_dir = tempfile::tempdir().unwrap();
    let into = out_dir.path().join("salvaged");
    let out = server_offline(
        [
            "--log".as_ref(),
            "warn".as_ref(),
            "salvage".as_ref(),
            into.as_os_str(),
        ],
        dir.path(),
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("lost: segment"), "{report}");
    let salvaged: BTreeSet<Vec<u8>> = std::fs::read_dir(&into)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let sent: Vec<Vec<u8>> = (0..200).map(body).collect();
    let kept = sent.iter().filter(|b| salvaged.contains(*b)).count();
    assert!(
        kept >= 198,
        "4 flipped bytes lose at most two records, {kept} of 200 salvaged: {report}"
    );
    assert!(kept < 200, "the damaged record cannot have been salvaged");
    assert!(
        salvaged.contains(&sent[0]) && salvaged.contains(&sent[199]),
        "records on both sides of the damage are salvaged"
    );
    assert_eq!(
        salvaged.len(),
        kept,
        "salvage wrote nothing but webhooks sent"
    );

    // The salvaged webhooks, replayed into a fresh server, answer as before (less the lost).
    let fresh = tempfile::tempdir().unwrap();
    let server = ServerCommand::new(fresh.path()).start().await;
    let replay = tokio::process::Command::new(crate::process::CLI_BIN)
        .arg("replay")
        .arg(&into)
        .args(["--intake", &format!("http://{}/webhooks", server.http)])
        .output()
        .await
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(holds(server.grpc, 0).await && holds(server.grpc, 199).await);
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_the_start_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    store_and_stop(dir.path(), 20).await;
    // A write the crash cut: the start of a frame, never acknowledged.
    let newest = segments(dir.path()).pop().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut file, &[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    drop(file);
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a torn tail is not damage: {report}");
    assert!(report.contains("torn tail"), "{report}");

    let server = ServerCommand::new(dir.path()).start().await;
    for n in 0..20 {
        assert!(holds(server.grpc, n).await, "webhook {n} lost");
    }
    assert_eq!(post(server.http, body(20)).await.0, 200);
    assert!(server.terminate().await.success());
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn cutting_what_the_view_applied_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_and_stop(dir.path(), 20).await;
    // The last record loses its last bytes: it looks torn, but the view applied it (the
    // clean stop flushed the view), so it was acknowledged.
    let newest = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    let before = std::fs::read(&newest).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let said = refused_start(dir.path(), &[]);
    assert!(said.contains("below what the view applied"), "{said}");
    assert_eq!(std::fs::read(&newest).unwrap(), before[..before.len() - 3]);
}

#[tokio::test]
async fn a_rollover_cut_before_the_segment_header_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    store_and_stop(dir.path(), 20).await;
    // The next segment was created, and the disk filled (or the process died) before its
    // header was written: an empty file, and one with half a header.
    std::fs::write(dir.path().join("log/00000000000000000021.log"), b"QST").unwrap();
    let server = ServerCommand::new(dir.path()).start().await;
    for n in 0..20 {
        assert!(holds(server.grpc, n).await, "webhook {n} lost");
    }
    assert_eq!(post(server.http, body(20)).await.0, 200);
    assert!(holds(server.grpc, 20).await);
    assert!(server.terminate().await.success());
}

/// A tmpfs of `size` mounted at a new directory; unmounted when dropped.
pub(crate) struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub(crate) fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a small tmpfs, which needs root (CI runs as root): \
             run it as root, e.g. `sudo -E cargo test --test it integrity`; mount said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_503_until_space_is_freed_then_acknowledged_again_without_a_restart() {
    let disk = SmallDisk::mount("1m");
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![7u8; 600 * 1024]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(disk.path().join("log")).unwrap();
    std::os::unix::fs::symlink(disk.path().join("log"), dir.path().join("log")).unwrap();
    let server = ServerCommand::new(dir.path())
        .env("QISTATUS_LOG_SEGMENT_BYTES", "65536")
        .start()
        .await;

    // Fill it: every webhook about 4 KiB.
    let big = |n: usize| padded_body(n, 4000);
    let mut acked = Vec::new();
    let mut full = None;
    for n in 0..1000 {
        match post(server.http, big(n)).await {
            (200, _) => acked.push(n),
            (status, retry_after) => {
                full = Some((n, status, retry_after));
                break;
            }
        }
    }
    let (refused, status, retry_after) = full.expect("the disk filled up");
    assert_eq!(
        status, 503,
        "a full disk is qistatus's condition, not the sender's"
    );
    assert!(retry_after.is_some(), "a 503 says when to retry");
    let ready = reqwest::get(format!("http://{}/readyz", server.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let said = ready.text().await.unwrap();
    assert!(said.contains("disk is full"), "{said}");
    // Still full: still refused, the same way.
    assert_eq!(post(server.http, big(refused)).await.0, 503);

    // Space comes back: acknowledged again within seconds, no restart.
    std::fs::remove_file(&filler).unwrap();
    crate::wait::wait_until(
        "acknowledged again once space came back",
        Duration::from_secs(10),
        || async { (post(server.http, big(refused)).await.0 == 200).then_some(()) },
    )
    .await;
    acked.push(refused);
    for n in refused + 1..refused + 5 {
        assert_eq!(post(server.http, big(n)).await.0, 200);
        acked.push(n);
    }
    assert!(server.terminate().await.success());

    // Nothing acknowledged is lost, and the directory is sound.
    let server = ServerCommand::new(dir.path()).start().await;
    for &n in &acked {
        assert!(holds(server.grpc, n).await, "acknowledged webhook {n} lost");
    }
    assert!(server.terminate().await.success());
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Stores 60 webhooks in small segments (so the first end up in an older one), stops, and
/// turns webhook 0's `"disbursed"` into `"canceled "` on disk, as a bad disk or a hand might:
/// with its frame's checksum made to agree when `recompute` (a hand that knows the format).
async fn store_and_alter_webhook_zero(dir: &Path, recompute: bool) {
    let server = ServerCommand::new(dir)
        .env("QISTATUS_LOG_SEGMENT_BYTES", "4096")
        .start()
        .await;
    for n in 0..60 {
        assert_eq!(post(server.http, body(n)).await.0, 200);
    }
    assert!(server.terminate().await.success());
    let oldest = segments(dir).remove(0);
    assert!(segments(dir).len() > 2, "the log rolled over");
    let mut bytes = std::fs::read(&oldest).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"\"disbursed\"")
        .expect("webhook 0's status in the oldest segment");
    bytes[at..at + 11].copy_from_slice(b"\"canceled \"");
    if recompute {
        recompute_checksum_around(&mut bytes, at);
    }
    std::fs::write(&oldest, &bytes).unwrap();
}

#[tokio::test]
async fn an_altered_payload_in_an_older_segment_is_never_served_or_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    store_and_alter_webhook_zero(dir.path(), false).await;

    let server = ServerCommand::new(dir.path()).start().await;
    let mut client = OperationStatusServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let answer = client
        .get_operation(pb::GetOperationRequest {
            key: "integrity-0".into(),
            kind: "debt".into(),
            view: pb::OperationView::Full as i32,
            ..Default::default()
        })
        .await;
    let status = answer.expect_err("an altered payload is served");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(
        status.message().contains("sequence 1"),
        "{}",
        status.message()
    );
    // The view's status stands (it was derived when the webhook arrived, intact).
    assert!(holds(server.grpc, 0).await);
    assert!(server.terminate().await.success());

    // A rebuild (which a catalog reload also runs) refuses rather than reconcile it.
    let out = server_offline(["--log", "warn", "rebuild"], dir.path());
    assert!(!out.status.success(), "rebuild reconciled a damaged record");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fails its checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    assert!(!out.status.success(), "verify passed an altered record");
    let server = ServerCommand::new(dir.path()).start().await;
    assert!(
        holds(server.grpc, 0).await,
        "still disbursed, never canceled"
    );
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn the_background_scrub_finds_damage_no_read_has_met() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let server = ServerCommand::new(&data)
        .env("QISTATUS_LOG_SEGMENT_BYTES", "4096")
        .args(["--scrub-interval", "200ms"])
        .stderr_to(&log)
        .start()
        .await;
    for n in 0..60 {
        assert_eq!(post(server.http, body(n)).await.0, 200);
    }
    // Sound so far: the scrub reads and finds nothing.
    server
        .metric_reaches(
            "qistatus_scrubbed_bytes_total",
            4096.0,
            Duration::from_secs(10),
        )
        .await;
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("\nqistatus_log_damage_total 0\n"),
        "{metrics}"
    );
    // A byte of an old, sealed segment goes bad while the server runs.
    let oldest = segments(&data).remove(0);
    let mut bytes = std::fs::read(&oldest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&oldest, &bytes).unwrap();
    server
        .metric_reaches("qistatus_log_damage_total", 1.0, Duration::from_secs(10))
        .await;
    assert!(server.terminate().await.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("the scrub found damage in the log"), "{said}");
}

#[tokio::test]
async fn a_view_that_cannot_be_written_loses_nothing_the_log_holds() {
    // sled's files on a small disk that fills; the log on a large one.
    let disk = SmallDisk::mount("2m");
    let big = tempfile::tempdir().unwrap();
    let data = disk.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(big.path(), data.join("log")).unwrap();
    let log = big.path().join("server.log");
    let server = ServerCommand::new(&data).stderr_to(&log).start().await;
    let big_body = |n: usize| padded_body(n, 3000);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..5000 {
        match post(server.http, big_body(n)).await {
            (200, _) => acked.push(n),
            (status, retry_after) => {
                refused = Some((status, retry_after));
                break;
            }
        }
    }
    let (status, retry_after) = refused.expect("the view's disk filled up");
    assert_eq!(status, 503, "a full disk is not the sender's mistake");
    assert!(retry_after.is_some());
    // A clean stop, which says what happens next.
    let exit = server.terminate().await;
    assert!(exit.success(), "{exit}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("the next start replays the log"), "{said}");

    // Room again (the volume grown), a start: the log catches the view up, nothing is lost.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(grown.success());
    let server = ServerCommand::new(&data).start().await;
    for &n in &acked {
        assert!(holds(server.grpc, n).await, "acknowledged webhook {n} lost");
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_damaged_segment_header_is_refused_and_cut_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    store_and_stop(dir.path(), 20).await;
    let newest = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[2] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    let said = refused_start(dir.path(), &[]);
    assert!(said.contains("not a qistatus log segment"), "{said}");
    assert_eq!(
        std::fs::read(&newest).unwrap(),
        bytes,
        "the start changed the log"
    );
    let out = server_offline(["--log", "warn", "verify"], dir.path());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify passed a damaged header: {report}"
    );
    assert!(report.contains("damage: segment"), "{report}");
}

#[tokio::test]
async fn damage_a_stopped_servers_disk_took_is_reported_soon_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = |data: &std::path::Path| {
        ServerCommand::new(data)
            .env("QISTATUS_LOG_SEGMENT_BYTES", "4096")
            .args(["--scrub-first-delay", "100ms"])
            .start()
    };
    let server = start(&data).await;
    let mut n = 0;
    while segments(&data).len() < 5 {
        assert_eq!(post(server.http, body(n)).await.0, 200);
        n += 1;
    }
    assert!(server.terminate().await.success());
    let sealed = segments(&data).len() as u64 - 1;

    // A pass cut by a stop goes on from where it was: here, its last sealed segment.
    let cut = serde_json::json!({"next_segment": sealed, "pass_started_at": 0, "last_completed_at": null});
    std::fs::write(data.join("scrub.json"), cut.to_string()).unwrap();
    let oldest = segments(&data).remove(0);
    let mut bytes = std::fs::read(&oldest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&oldest, &bytes).unwrap();
    let server = start(&data).await;
    crate::wait::wait_until(
        "the cut pass completes",
        Duration::from_secs(10),
        || async {
            let progress: serde_json::Value =
                serde_json::from_slice(&std::fs::read(data.join("scrub.json")).ok()?).ok()?;
            progress["last_completed_at"].is_i64().then_some(())
        },
    )
    .await;
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("\nqistatus_log_damage_total 0\n"),
        "the oldest was not read again: {metrics}"
    );
    assert!(server.terminate().await.success());

    // The next start scrubs soon (the interval is a day): the segment damaged while the
    // server was stopped is reported, in the metrics and in /readyz, within seconds (before,
    // a whole interval after the start, which every restart pushed back).
    let server = start(&data).await;
    server
        .metric_reaches("qistatus_log_damage_total", 1.0, Duration::from_secs(10))
        .await;
    let ready = reqwest::get(format!("http://{}/readyz", server.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let said = ready.text().await.unwrap();
    assert!(said.contains("the scrub found damage in the log"), "{said}");
    assert!(server.terminate().await.success());
}

/// Rewrites the frame of `segment` (a whole segment's bytes) that holds byte `at` with its
/// checksum recomputed: damage a checksum cannot see, as a hand that knows the format makes.
fn recompute_checksum_around(segment: &mut [u8], at: usize) {
    let mut frame = 8; // past the segment's magic
    while frame + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[frame..frame + 4].try_into().unwrap()) as usize;
        let body = frame + 8..frame + 8 + len;
        if body.contains(&at) {
            let crc = crc32fast::hash(&segment[body]);
            segment[frame + 4..frame + 8].copy_from_slice(&crc.to_le_bytes());
            return;
        }
        frame = body.end;
    }
    panic!("no frame holds byte {at}");
}

#[tokio::test]
async fn a_body_edited_with_its_checksum_recomputed_is_never_served_or_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    // The frame reads as sound: its CRC32 agrees with the edit.
    store_and_alter_webhook_zero(dir.path(), true).await;

    let out = server_offline(["--log", "warn", "verify"], dir.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify passed an edited body: {said}"
    );
    assert!(
        said.contains("does not match its content identifier"),
        "{said}"
    );
    let out = server_offline(["--log", "warn", "rebuild"], dir.path());
    assert!(!out.status.success(), "rebuild adopted an edited body");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match its content identifier"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerCommand::new(dir.path()).start().await;
    let mut client = OperationStatusServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let status = client
        .get_operation(pb::GetOperationRequest {
            key: "integrity-0".into(),
            kind: "debt".into(),
            view: pb::OperationView::Full as i32,
            ..Default::default()
        })
        .await
        .expect_err("an edited body is served");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(
        holds(server.grpc, 0).await,
        "still disbursed, never canceled"
    );
    assert!(server.terminate().await.success());
}
