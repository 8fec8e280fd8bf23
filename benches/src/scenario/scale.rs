//! Scale: list-page latency in a small store and a large one, the server's memory and disk
//! at the large size, and the time a restart takes to serve again. One operation in a
//! hundred is overdue (its `waiting_signature` is two days old, the catalog expects one), so
//! the overdue list and counting the overdue ones are measured at both sizes too.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;

use super::Context;
use crate::load::{SMALL_DEBTS, channels, drive, histogram, http_client, post};
use crate::process::{Process, dir_size};
use crate::report::{Report, ms};

/// Runs the scenario (qistatus only: it measures qistatus against itself).
pub async fn run(cx: &Context, report: &mut Report) {
    let s = cx.sizes;
    eprintln!("== scale");
    let dir = cx.dir("q-scale");
    let catalog = cx.dir("q-scale-catalog.toml");
    std::fs::write(
        &catalog,
        "[kinds.debt.expect]\nwaiting_signature = \"1d\"\n",
    )
    .expect("write the scale catalog");
    let flags = ["--catalog".to_owned(), catalog.display().to_string()];
    let (server, _) = cx.qistatus.start_with(&dir, None, &flags).await;
    populate(&server, 0, s.scale_small, s.concurrency).await;
    let small = list_pages(&server, s.list_pages).await;
    let small_overdue = overdue_pages(&server, s.list_pages).await;
    let small_count = overdue_counts(&server, 50).await;
    let small_flow = flow_answers(&server, s.list_pages).await;
    let rate = populate(&server, s.scale_small, s.scale_large, s.concurrency).await;
    let large = list_pages(&server, s.list_pages).await;
    // The same pages once more: at the small size every page is in sled's cache from the
    // first walk on, at the large one only now. Beside the first walk, this tells what the
    // store's size costs from what reading pages not yet cached costs.
    let large_again = list_pages(&server, s.list_pages).await;
    let large_overdue = overdue_pages(&server, s.list_pages).await;
    let large_count = overdue_counts(&server, 50).await;
    let large_flow = flow_answers(&server, s.list_pages).await;
    let rss = server.rss_bytes();
    let ports = server.ports();
    // Idle, with the overdue clock looking every second (the default).
    let clock_on = idle_cpu(&server).await;
    let catch_up = intake_while_catching_up(&server, s.catch_up_watchers, s.catch_up_posts).await;
    // A last burst, then a crash: the restart replays whatever sled had not checkpointed.
    let burst = s.scale_large / 100;
    populate(&server, s.scale_large, s.scale_large + burst, s.concurrency).await;
    server.kill().await;
    let size = dir_size(&dir);
    // The restart's server has the clock all but stopped (one look an hour): its idle CPU,
    // beside the first one's, is what the clock costs.
    let mut quiet = flags.to_vec();
    quiet.extend(["--overdue-tick".to_owned(), "1h".to_owned()]);
    let (server, ready) = cx.qistatus.start_with(&dir, Some(ports), &quiet).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let clock_off = idle_cpu(&server).await;
    server.stop().await;
    catch_up.report(report, s.scale_large);
    // Each measure at both sizes: the large store's row carries its ratio to the small one's.
    let mut at_both = |name: &dyn Fn(usize) -> String,
                       q: f64,
                       sizes: (&Histogram<u64>, &Histogram<u64>),
                       target: &str| {
        let (small, large) = (sizes.0.value_at_quantile(q), sizes.1.value_at_quantile(q));
        report.row("scale", &name(s.scale_small), ms(small), None, "");
        report.row(
            "scale",
            &name(s.scale_large),
            ms(large),
            Some(large as f64 / small as f64),
            target,
        );
    };
    let page = |n: usize| format!("ListByStatus page of 100, p99, at {n}");
    at_both(&page, 0.99, (&small, &large), "≤ 1.5× the small store's");
    let overdue_page = |n: usize| {
        format!(
            "ListByStatus overdue page of 100, p99, at {n} ({} overdue)",
            n / OVERDUE_EVERY
        )
    };
    at_both(&overdue_page, 0.99, (&small_overdue, &large_overdue), "");
    let counting = |n: usize| {
        format!(
            "counting the overdue (GetStats: a range per expectation, as /metrics does), p50, at {n}"
        )
    };
    at_both(&counting, 0.5, (&small_count, &large_count), "");
    for (window, small, large) in [
        ("the week up to today", &small_flow.0, &large_flow.0),
        ("the 366 days up to today", &small_flow.1, &large_flow.1),
    ] {
        let answer = |n: usize| format!("GetFlow of debts over {window}, p99, at {n}");
        at_both(&answer, 0.99, (small, large), "");
    }
    // The large store's pages walked again, against the small store's first walk.
    let (s99, a99) = (
        small.value_at_quantile(0.99),
        large_again.value_at_quantile(0.99),
    );
    report.row(
        "scale",
        &format!("{}, the same pages walked again", page(s.scale_large)),
        ms(a99),
        Some(a99 as f64 / s99 as f64),
        "",
    );
    report.row(
        "scale",
        &format!("server RSS at {} operations", s.scale_large),
        format!("{:.0} MB", rss as f64 / 1e6),
        None,
        "≤ 400 MB",
    );
    report.row(
        "scale",
        "data directory size",
        format!("{:.0} MB", size as f64 / 1e6),
        None,
        "",
    );
    report.row(
        "scale",
        "restart to ready (replaying the log past the last checkpoint)",
        format!("{:.2} s", ready.as_secs_f64()),
        None,
        "≤ 3 s",
    );
    report.row(
        "scale",
        &format!(
            "idle server CPU at {} operations ({} overdue, each said once), overdue clock every 1 s",
            s.scale_large,
            s.scale_large / OVERDUE_EVERY
        ),
        format!("{clock_on:.2} ms/s"),
        None,
        "",
    );
    report.row(
        "scale",
        "the same, overdue clock every hour (the clock's cost is the difference)",
        format!("{clock_off:.2} ms/s"),
        None,
        "",
    );
    report.notes.push(format!(
        "scale: {} operations posted over HTTP ({rate:.0}/s) in four statuses, one in {OVERDUE_EVERY} a `waiting_signature` dated two days back under a catalog that expects it to move within a day (overdue); {} pages of 100 `disbursed` debts, and of the overdue list (restarting at its end), walked at each size; then {burst} more and SIGKILL, so the restart replays the log past sled's last checkpoint.",
        s.scale_large, s.list_pages
    ));
}

/// Milliseconds of CPU per second `server` uses over [`IDLE_SECONDS`] with nothing asked of it.
async fn idle_cpu(server: &Process) -> f64 {
    let before = server.cpu_time().unwrap_or_default();
    tokio::time::sleep(std::time::Duration::from_secs(IDLE_SECONDS)).await;
    let used = server.cpu_time().unwrap_or_default().saturating_sub(before);
    used.as_secs_f64() * 1000.0 / IDLE_SECONDS as f64
}

/// How long an idle server is watched for its CPU.
const IDLE_SECONDS: u64 = 10;

/// One operation in this many is overdue.
const OVERDUE_EVERY: usize = 100;

/// Posts operations `from..to` (small debts spread over four statuses, one in
/// [`OVERDUE_EVERY`] a `waiting_signature` two days old); returns the rate.
/// The intake's latency idle and while watchers resume from sequence 0.
struct CatchUp {
    watchers: usize,
    idle: Histogram<u64>,
    busy: Histogram<u64>,
    /// Changes the watchers received while the intake was timed.
    delivered: u64,
    seconds: f64,
}

impl CatchUp {
    fn report(&self, report: &mut Report, size: usize) {
        let (idle, busy) = (
            self.idle.value_at_quantile(0.99),
            self.busy.value_at_quantile(0.99),
        );
        let what = |when: &str| format!("a fresh webhook's 200, p99, at {size}, {when}");
        report.row("scale", &what("idle"), ms(idle), None, "");
        report.row(
            "scale",
            &what(&format!(
                "while {} watchers catch up from sequence 0",
                self.watchers
            )),
            ms(busy),
            Some(busy as f64 / idle as f64),
            "≤ 2× idle",
        );
        report.notes.push(format!(
            "catch-up: {} webhooks posted one at a time every 10 ms, idle and then while {} \
             watchers of everything resumed from sequence 0 on the {size}-operation store \
             (their changes worked out from the log, one reader at a time); they received \
             {} changes ({:.0}/s) while the intake was timed; p50 idle {}, while catching up {}.",
            self.idle.len(),
            self.watchers,
            self.delivered,
            self.delivered as f64 / self.seconds,
            ms(self.idle.value_at_quantile(0.5)),
            ms(self.busy.value_at_quantile(0.5)),
        ));
    }
}

/// Times `posts` fresh webhooks, one every 10 ms, idle and then while `watchers` watchers
/// of everything resume from sequence 0 and read as fast as they can.
async fn intake_while_catching_up(server: &Process, watchers: usize, posts: usize) -> CatchUp {
    use std::sync::atomic::{AtomicU64, Ordering};
    let template: serde_json::Value = serde_json::from_str(SMALL_DEBTS[1]).expect("fixture");
    let client = http_client();
    let url = format!("{}/webhooks", server.http);
    let timed = |round: &'static str| {
        let (client, url, template) = (client.clone(), url.clone(), template.clone());
        async move {
            let mut latencies = histogram();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
            for i in 0..posts {
                tick.tick().await;
                let mut value = template.clone();
                value["key"] = format!("catch-up-{round}-{i:06}").into();
                let body = Bytes::from(serde_json::to_vec(&value).expect("serializes"));
                let started = Instant::now();
                if post(&client, &url, body).await.is_some() {
                    let _ = latencies.record(started.elapsed().as_micros() as u64);
                }
            }
            latencies
        }
    };
    let idle = timed("idle").await;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for (w, channel) in channels(&server.grpc, 16)
        .await
        .into_iter()
        .cycle()
        .take(watchers)
        .enumerate()
    {
        let delivered = delivered.clone();
        readers.spawn(async move {
            let mut grpc = OperationStatusServiceClient::new(channel);
            let request = pb::WatchOperationRequest {
                start_after_sequence: Some(0),
                ..Default::default()
            };
            let Ok(answer) = grpc.watch_operation(request).await else {
                eprintln!("watcher {w} refused");
                return;
            };
            let mut stream = answer.into_inner();
            while let Ok(Some(_)) = stream.message().await {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Let every watcher start before the intake is timed again.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (started, before) = (Instant::now(), delivered.load(Ordering::Relaxed));
    let busy = timed("busy").await;
    let seconds = started.elapsed().as_secs_f64();
    let delivered = delivered.load(Ordering::Relaxed) - before;
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    CatchUp {
        watchers,
        idle,
        busy,
        delivered,
        seconds,
    }
}

async fn populate(server: &Process, from: usize, to: usize, concurrency: usize) -> f64 {
    let templates: Arc<Vec<serde_json::Value>> = Arc::new(
        SMALL_DEBTS
            .iter()
            .map(|t| serde_json::from_str(t).expect("fixture"))
            .collect(),
    );
    let client = http_client();
    let url = format!("{}/webhooks", server.http);
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    let (elapsed, _, _) = drive(concurrency, to - from, move |i| {
        let (client, url, templates, two_days_ago) = (
            client.clone(),
            url.clone(),
            templates.clone(),
            two_days_ago.clone(),
        );
        async move {
            let n = from + i;
            let mut value = if n.is_multiple_of(OVERDUE_EVERY) {
                let mut late = templates[0].clone();
                late["event_datetime"] = two_days_ago.clone().into();
                late
            } else {
                templates[n % templates.len()].clone()
            };
            value["key"] = format!("scale-{n:08}").into();
            let body = Bytes::from(serde_json::to_vec(&value).expect("serializes"));
            post(&client, &url, body).await.is_some()
        }
    })
    .await;
    (to - from) as f64 / elapsed.as_secs_f64()
}

/// Walks `pages` pages of 100 `disbursed` debts (restarting at the end); returns latencies.
async fn list_pages(server: &Process, pages: usize) -> Histogram<u64> {
    let request = pb::ListByStatusRequest {
        kind: "debt".into(),
        statuses: vec!["disbursed".into()],
        ..Default::default()
    };
    walk_pages(server, pages, request).await
}

/// Walks `pages` pages of 100 of the overdue list (restarting at its end); returns latencies.
async fn overdue_pages(server: &Process, pages: usize) -> Histogram<u64> {
    let request = pb::ListByStatusRequest {
        kind: "debt".into(),
        overdue: true,
        ..Default::default()
    };
    walk_pages(server, pages, request).await
}

/// Walks `pages` pages of 100 of the list `request` asks for, following page tokens and
/// starting over after the last page; returns each page's latency.
async fn walk_pages(
    server: &Process,
    pages: usize,
    mut request: pb::ListByStatusRequest,
) -> Histogram<u64> {
    let channel = channels(&server.grpc, 1).await.remove(0);
    let mut client = OperationStatusServiceClient::new(channel);
    let mut h = histogram();
    request.page_size = 100;
    for _ in 0..pages {
        let t = Instant::now();
        let page = client
            .list_by_status(request.clone())
            .await
            .expect("list")
            .into_inner();
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        assert!(!page.operations.is_empty(), "pages are not empty");
        request.page_token = page.next_page_token;
    }
    h
}

/// `calls` GetStats calls, which count the overdue operations; returns latencies.
/// Asks GetFlow `calls` times for the debts of the week up to today, and as many for the 366
/// days up to today; returns both latencies. Every webhook was received today (each a lag
/// counted today), and one in a hundred started two days ago (a cohort in both windows).
async fn flow_answers(server: &Process, calls: usize) -> (Histogram<u64>, Histogram<u64>) {
    let channel = channels(&server.grpc, 1).await.remove(0);
    let mut client = OperationStatusServiceClient::new(channel);
    let now = chrono::Utc::now().timestamp();
    let mut out = (histogram(), histogram());
    for (days, h) in [(7, &mut out.0), (366, &mut out.1)] {
        let request = pb::GetFlowRequest {
            kind: "debt".into(),
            since: Some(prost_types::Timestamp {
                seconds: now - (days - 1) * 86_400,
                nanos: 0,
            }),
            until: None,
        };
        for _ in 0..calls {
            let t = Instant::now();
            let flow = client
                .get_flow(request.clone())
                .await
                .expect("GetFlow")
                .into_inner();
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            assert!(flow.delivery_lag.is_some(), "the lag of what was received");
        }
    }
    out
}

async fn overdue_counts(server: &Process, calls: usize) -> Histogram<u64> {
    use qistatus::pb::maintenance_service_client::MaintenanceServiceClient;
    let channel = channels(&server.grpc, 1).await.remove(0);
    let mut client = MaintenanceServiceClient::new(channel);
    let mut h = histogram();
    for _ in 0..calls {
        let t = Instant::now();
        let stats = client
            .get_stats(pb::GetStatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        assert!(
            stats.overdue.iter().any(|o| o.operations > 0),
            "the stats count the overdue"
        );
    }
    h
}
