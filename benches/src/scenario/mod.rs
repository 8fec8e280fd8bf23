//! The scenarios, one module each. A scenario starts the servers it needs, drives them
//! through the [`Target`](crate::target::Target) abstraction, and adds rows to the report.

pub mod cluster;
pub mod fanout;
pub mod ingest;
pub mod scale;

use std::path::{Path, PathBuf};

use crate::process::Qistatus;

/// The scenarios, by the name `--only` takes.
pub const NAMES: &[&str] = &["ingest", "reads", "watch", "scale", "cluster"];

/// What every scenario needs: how to start each system, where, and how much load.
pub struct Context {
    /// How to start qistatus-server.
    pub qistatus: Qistatus,
    /// The etcd binary, when etcd is measured.
    pub etcd_bin: Option<PathBuf>,
    /// nats-server, for the cluster; `None`: not measured.
    pub nats_bin: Option<PathBuf>,
    /// PostgreSQL's `bin` directory (initdb, pg_ctl), when PostgreSQL is measured.
    pub postgres_bin_dir: Option<PathBuf>,
    /// Counts of this run.
    pub sizes: Sizes,
    /// Scratch directory of this run (removed at the end).
    pub scratch: PathBuf,
}

impl Context {
    /// A fresh data directory named `name` in the scratch directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// The scratch directory.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}

/// Counts for one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Concurrent senders and readers.
    pub concurrency: usize,
    /// Webhooks posted before the measured ingest rounds.
    pub warmup: usize,
    /// Rounds of ingest and of reads.
    pub rounds: usize,
    /// Webhooks per ingest round.
    pub ingest_per_round: usize,
    /// Reads per read round.
    pub reads_per_round: usize,
    /// Operations of the fan-out workload.
    pub watch_keys: usize,
    /// Statuses each fan-out operation moves through.
    pub watch_steps: usize,
    /// Fan-out webhooks sent per second.
    pub watch_rate: u64,
    /// Watchers of one key.
    pub key_watchers: usize,
    /// Watchers of a share of all keys.
    pub filter_watchers: usize,
    /// Operations of the small store.
    pub scale_small: usize,
    /// Operations of the large store.
    pub scale_large: usize,
    /// List pages timed at each size.
    pub list_pages: usize,
    /// Watchers that resume from sequence 0 on the large store while the intake is timed.
    pub catch_up_watchers: usize,
    /// Webhooks timed (one at a time, paced) idle and again while they catch up.
    pub catch_up_posts: usize,
}

impl Sizes {
    /// Small counts (CI: checks that the harness works) or the full run.
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                concurrency: 16,
                warmup: 100,
                rounds: 2,
                ingest_per_round: 500,
                reads_per_round: 1000,
                watch_keys: 20,
                watch_steps: 10,
                watch_rate: 400,
                key_watchers: 20,
                filter_watchers: 20,
                scale_small: 1_000,
                scale_large: 5_000,
                list_pages: 50,
                catch_up_watchers: 50,
                catch_up_posts: 100,
            }
        } else {
            Sizes {
                concurrency: 64,
                warmup: 2_000,
                rounds: 5,
                ingest_per_round: 20_000,
                reads_per_round: 50_000,
                watch_keys: 500,
                watch_steps: 20,
                watch_rate: 2_000,
                key_watchers: 500,
                filter_watchers: 500,
                scale_small: 1_000,
                scale_large: 1_000_000,
                list_pages: 1_000,
                catch_up_watchers: 1_000,
                catch_up_posts: 1_000,
            }
        }
    }
}
