//! The sequencer: where webhooks and overdue proposals are put in order, the one place that
//! knows whether this is a single node or a node of a cluster.
//!
//! On a single node the order is its writer's: a webhook is decided about and stored in the
//! order the writer takes it. On a cluster node the order is the stream's: a webhook is
//! published to JetStream, every node's writer applies the stream in its order, and the
//! receiving node answers once its own view has applied it ([`crate::cluster`]). Everything
//! else (the intake, the overdue clock, catalog reloads, watchers resuming, readiness) asks
//! the sequencer and does not know which it is.
//!
//! What differs, and is decided here only:
//! - storing a webhook, and proposing overdue operations (the writer, or the stream);
//! - whether the catalog may be reloaded in place (a single node: yes; a cluster node: no,
//!   every node must decide alike);
//! - how long a watcher's resume point ahead of this node is waited for (a single node: not
//!   at all, it is past the head; a cluster node: a while, another node may have reached it
//!   first);
//! - what readiness waits for (a cluster node: the stream, caught up).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Clock;
pub(crate) use crate::cluster::Receipt;
use crate::cluster::{ClusterError, Held, JetStreamLog, Progress, Publisher};
use crate::domain::overdue::OverdueMark;
use crate::domain::webhook::{Facts, Normalized};
use crate::store::{SubmitError, WriterHandle};

/// How long a cluster node's watch waits for a resume point another node reached first.
const CLUSTER_CATCH_UP: Duration = Duration::from_secs(10);

/// Where this node's webhooks are put in order. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Sequencer {
    /// A single node: its own writer.
    Writer(Box<WriterHandle>),
    /// A cluster node: the cluster's stream, then this node's view.
    Stream(Box<Publisher>),
}

/// Why the sequencer did not take something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SequencerError {
    /// The writer refused or failed.
    #[error(transparent)]
    Writer(#[from] SubmitError),
    /// The stream refused or failed, or this node did not apply it.
    #[error(transparent)]
    Stream(#[from] ClusterError),
}

impl Sequencer {
    /// A single node's sequencer: its writer.
    pub(crate) fn writer(writer: WriterHandle) -> Sequencer {
        Sequencer::Writer(Box::new(writer))
    }

    /// A cluster node's sequencer: the stream `log`, this node's `progress` along it, its
    /// store (which says where a repeat went), and what it holds while the stream cannot take
    /// a webhook in time (dated by `clock`).
    pub(crate) fn stream(
        log: Arc<JetStreamLog>,
        progress: Arc<Progress>,
        store: crate::store::Store,
        held: Arc<Held>,
        clock: Clock,
    ) -> Sequencer {
        Sequencer::Stream(Box::new(Publisher {
            log,
            progress,
            store,
            held,
            clock,
        }))
    }

    /// Stores a verified webhook, and answers once it is durable and this node's view has it
    /// (or, on a cluster node whose stream does not take it in time, once it is held on this
    /// node's disk). `facts` are the catalog's facts of `raw`, read by the caller (the writer
    /// of a single node takes them; every cluster node reads them again as it applies the
    /// stream).
    pub(crate) async fn submit(
        &self,
        normalized: Normalized,
        raw: Bytes,
        facts: Facts,
    ) -> Result<Receipt, SequencerError> {
        match self {
            Sequencer::Writer(writer) => Ok(Receipt::Stored(
                writer.submit(normalized, raw, Some(facts)).await?,
            )),
            Sequencer::Stream(publisher) => Ok(publisher.submit(&normalized, raw).await?),
        }
    }

    /// Proposes `marks`, which fell due by `now`: the writer records those still due at its
    /// own time; the stream orders and dates them first, and this waits until this node
    /// applied them (so that the next tick does not propose them again). Returns how many
    /// were proposed on a cluster node, how many recorded on a single one.
    pub(crate) async fn propose_overdue(
        &self,
        marks: Vec<OverdueMark>,
        now: i64,
    ) -> Result<usize, SequencerError> {
        match self {
            Sequencer::Writer(writer) => Ok(writer.overdue(marks).await?),
            Sequencer::Stream(publisher) => {
                let proposed = marks.len();
                let published = publisher.log.publish_overdue(&marks, now).await?;
                publisher.progress.applied(published).await?;
                Ok(proposed)
            }
        }
    }

    /// Why this node should not be proposing or serving yet, if it should not: a cluster node
    /// not connected to the stream or too far behind it.
    pub(crate) fn not_ready(&self) -> Option<String> {
        match self {
            Sequencer::Writer(_) => None,
            Sequencer::Stream(publisher) => publisher.progress.not_ready(),
        }
    }

    /// The writer of a node that decides alone, which may put a new catalog in effect in
    /// place ([`WriterHandle::reload`]): a single node's. A cluster node has none: every node
    /// must decide alike, so its catalog changes by restarting every node with it.
    pub(crate) fn writer_alone(&self) -> Option<&WriterHandle> {
        match self {
            Sequencer::Writer(writer) => Some(writer),
            Sequencer::Stream(_) => None,
        }
    }

    /// How long a watcher's resume point past this node's head is waited for before it is
    /// refused.
    pub(crate) fn resume_wait(&self) -> Duration {
        match self {
            Sequencer::Writer(_) => Duration::ZERO,
            Sequencer::Stream(_) => CLUSTER_CATCH_UP,
        }
    }

    /// What a cluster node holds for its stream, for metrics.
    pub(crate) fn held(&self) -> Option<Arc<Held>> {
        match self {
            Sequencer::Writer(_) => None,
            Sequencer::Stream(publisher) => Some(publisher.held.clone()),
        }
    }

    /// A cluster node's progress along the stream, for readiness and metrics.
    pub(crate) fn stream_progress(&self) -> Option<Arc<Progress>> {
        match self {
            Sequencer::Writer(_) => None,
            Sequencer::Stream(publisher) => Some(publisher.progress.clone()),
        }
    }
}
