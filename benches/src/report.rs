//! The report: one row per measurement, qistatus beside each peer, written as
//! `BENCHMARKS.md` with the machine it ran on and the hand-written analysis.

use std::fmt::Write as _;

use crate::load::Rounds;

/// The peers qistatus is measured against, in the report's column order.
pub const PEERS: [&str; 2] = ["etcd", "PostgreSQL"];

/// One measurement: qistatus's figure and each peer's, with qistatus's ratio to each.
pub struct Row {
    scenario: String,
    metric: String,
    qistatus: String,
    peers: [Option<String>; 2],
    ratios: [Option<f64>; 2],
    target: String,
}

/// Rows and notes of one run.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    /// Sentences under the table: counts, failures, what was skipped.
    pub notes: Vec<String>,
}

/// Milliseconds with two decimals, from microseconds.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("—")
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or("—".to_owned(), |r| format!("{r:.2}×"))
}

impl Report {
    /// Adds a row of qistatus alone (a ratio, if any, is qistatus against itself).
    pub fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        qistatus: String,
        ratio: Option<f64>,
        target: &str,
    ) {
        self.add(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            qistatus,
            peers: [None, None],
            ratios: [ratio, None],
            target: target.into(),
        });
    }

    /// Adds a row with each peer's figure and the ratios (and echoes it to stderr, so a
    /// long run shows progress).
    pub fn add(&mut self, row: Row) {
        eprintln!(
            "{} | {} | qistatus {} | {} {} | {} {} | {} {} | {}",
            row.scenario,
            row.metric,
            row.qistatus,
            PEERS[0],
            or_dash(row.peers[0].as_deref()),
            PEERS[1],
            or_dash(row.peers[1].as_deref()),
            ratio_text(row.ratios[0]),
            ratio_text(row.ratios[1]),
            row.target
        );
        self.rows.push(row);
    }

    /// A throughput row and its latency rows, for qistatus and each measured peer.
    pub fn compare(
        &mut self,
        scenario: &str,
        metric: &str,
        q: &Rounds,
        peers: [Option<&Rounds>; 2],
        target: &str,
    ) {
        let qr = q.median_rate();
        let pr = peers.map(|p| p.map(Rounds::median_rate));
        self.add(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            qistatus: format!("{qr:.0}/s"),
            peers: pr.map(|p| p.map(|p| format!("{p:.0}/s"))),
            ratios: pr.map(|p| p.map(|p| qr / p)),
            target: target.into(),
        });
        for (label, quantile) in [("latency p50", 0.5), ("latency p99", 0.99)] {
            self.add(Row {
                scenario: scenario.into(),
                metric: label.into(),
                qistatus: ms(q.latency.value_at_quantile(quantile)),
                peers: peers.map(|p| p.map(|p| ms(p.latency.value_at_quantile(quantile)))),
                ratios: [None, None],
                target: String::new(),
            });
        }
    }

    /// A row of qistatus and etcd (the peer that has watches).
    pub fn watch_row(
        &mut self,
        metric: &str,
        qistatus: String,
        etcd: Option<String>,
        target: &str,
    ) {
        self.add(Row {
            scenario: "watch fan-out".into(),
            metric: metric.into(),
            qistatus,
            peers: [etcd, None],
            ratios: [None, None],
            target: target.into(),
        });
    }

    /// The report as Markdown.
    pub fn to_markdown(&self, quick: bool) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "qistatus against etcd and PostgreSQL on the same machine, in the same run \
             (`benches/run.sh`).\n"
        );
        let _ = writeln!(md, "- machine: {}", machine());
        let _ = writeln!(
            md,
            "- date: {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        );
        let _ = writeln!(
            md,
            "- command: `{}`",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        let mode = if quick {
            "quick (small counts: a check that the harness works, not a measurement)"
        } else {
            "full"
        };
        let _ = writeln!(md, "- mode: {mode}\n");
        let _ = writeln!(
            md,
            "| scenario | metric | qistatus | {0} | {1} | ratio to {0} | ratio to {1} | target |",
            PEERS[0], PEERS[1]
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.metric,
                r.qistatus,
                or_dash(r.peers[0].as_deref()),
                or_dash(r.peers[1].as_deref()),
                ratio_text(r.ratios[0]),
                ratio_text(r.ratios[1]),
                r.target
            );
        }
        let _ = writeln!(
            md,
            "\nRatios are qistatus over the peer for rates (higher is better); in the scale \
             rows, the large store's p99 over the small one's.\n"
        );
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        // The hand-written analysis of misses and fixes travels with every report.
        if let Ok(analysis) = std::fs::read_to_string("benches/ANALYSIS.md") {
            let _ = writeln!(md, "\n{analysis}");
        }
        md
    }
}

/// Cores, CPU model and memory of this machine.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {memory} memory")
}
