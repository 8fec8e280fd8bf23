//! The report: one row per measurement, qistatus beside each peer, written as
//! `BENCHMARKS.md` with the machine it ran on and the hand-written analysis.

use std::fmt::Write as _;

use crate::load::{Rounds, median};

/// Rows and notes of one run.
#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 6]>,
    /// Sentences under the table: counts, failures, what was skipped.
    pub notes: Vec<String>,
}

/// Milliseconds with two decimals, from microseconds.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Report {
    /// Adds a row (and echoes it to stderr, so a long run shows progress).
    pub fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        qistatus: String,
        peer: Option<String>,
        ratio: Option<f64>,
        target: &str,
    ) {
        let ratio_text = ratio.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        let row = [
            scenario.to_owned(),
            metric.to_owned(),
            qistatus,
            peer.unwrap_or_else(|| "—".into()),
            ratio_text,
            target.to_owned(),
        ];
        eprintln!(
            "{} | {} | qistatus {} | etcd {} | {} | {}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
        self.rows.push(row);
    }

    /// A throughput row and its latency rows, for qistatus and (when measured) the peer.
    pub fn compare(
        &mut self,
        scenario: &str,
        metric: &str,
        q: &Rounds,
        peer: Option<&Rounds>,
        target: &str,
    ) {
        let qr = median(q.rates.clone());
        let pr = peer.map(|p| median(p.rates.clone()));
        self.row(
            scenario,
            metric,
            format!("{qr:.0}/s"),
            pr.map(|p| format!("{p:.0}/s")),
            pr.map(|p| qr / p),
            target,
        );
        for (label, quantile) in [("latency p50", 0.5), ("latency p99", 0.99)] {
            self.row(
                scenario,
                label,
                ms(q.latency.value_at_quantile(quantile)),
                peer.map(|p| ms(p.latency.value_at_quantile(quantile))),
                None,
                "",
            );
        }
    }

    /// The report as Markdown.
    pub fn to_markdown(&self, quick: bool) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "qistatus against etcd on the same machine, in the same run (`benches/run.sh`).\n"
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
            "| scenario | metric | qistatus | etcd | ratio | target |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4], r[5]
            );
        }
        let _ = writeln!(
            md,
            "\nRatios are qistatus over etcd for rates (higher is better) and large over small \
             for the scale p99.\n"
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
