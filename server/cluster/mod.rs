//! Beyond one machine: qistatus nodes that share one NATS JetStream stream.
//!
//! # Why this shape
//!
//! A single node decides about each webhook (new, duplicate, quarantined; its sequence)
//! before writing it to its log, because it alone orders the writes. With several nodes
//! taking webhooks, the order must come from one place, and a replicated log that is already
//! proven gives it: a JetStream stream (Raft-replicated, `--nats-replicas` copies). So a
//! cluster node works the other way round:
//!
//! 1. **Order first.** The node that receives a webhook checks and normalizes it as always,
//!    then publishes the verified body to the stream with `Nats-Msg-Id` = its content hash
//!    ([`stream::JetStreamLog::publish`]). JetStream acknowledges once the message is stored
//!    on a quorum of replicas, and drops a repeat of the same id within its duplicate window.
//! 2. **Decide the same everywhere.** Every node follows the stream in order
//!    ([`follower`]) and feeds each message to its own single writer, with the stream's
//!    timestamp as the received time. The writer's decisions depend only on the messages
//!    before it and the catalog, so every node numbers the same webhooks with the same
//!    sequences and reaches the same operations: a watcher resumes on any node with the
//!    sequence it saw on another. Duplicates outside JetStream's window are caught there, by
//!    the view's exact deduplication.
//! 3. **Answer after the view.** The receiving node answers `200` only once JetStream
//!    acknowledged the message *and* its own view applied it, so a read on that node right
//!    after sees the webhook. Unless the stream does not take it in time (no leader for the
//!    4 to 9 s of an election): then the node holds it on its own disk and answers `held`
//!    ([`held`]), and publishes it when the stream takes messages again.
//!
//! Each node keeps its own local log and sled view, exactly as a single node does: raw
//! payloads are read locally, and a restart replays the local log, then follows the stream
//! from the last message its view took into account (`stream_through`).
//!
//! # Guarantees and what they rest on
//!
//! - An acknowledged webhook is on a quorum of NATS servers (JetStream's guarantee) and in
//!   the receiving node's view; every other node applies it when it reaches it in the stream.
//!   One answered `held` is on the receiving node's disk until the stream took it ([`held`]).
//! - Every node has the same catalog (a node with another catalog would decide otherwise; the
//!   README says so). The store's identity is the stream's, so resume tokens are checked
//!   across nodes.
//! - A node whose resume point left the stream's retention refuses to start and says what to
//!   do (restore a peer's snapshot, or start on an empty directory).
//!
//! The overdue clock's proposals go through the stream too (marked by a header, see
//! `crate::overdue_clock`): the stream orders them among the webhooks and dates them, so
//! every node records the same overdue events at the same sequences.
//!
//! Trade-off: every node parses every webhook and keeps every payload, which is the price of
//! reading anything on any node without a network hop.
//!
//! # Why a node still fsyncs its local log
//!
//! The stream, not the local log, is what an acknowledgement rests on, so a node's local
//! `fdatasync` per batch protects no acknowledged webhook. It is kept because it protects the
//! node itself: its operations point into its local log (where each webhook's body is, see
//! `crate::store`), and sled writes its state out on its own. Without the fsync, a power
//! loss could leave a view that applied, and points at, records its log no longer holds: the
//! start refuses such a directory (the view ahead of the log), and the node would have to be
//! reseeded from a snapshot. It costs the cluster nothing measurable here: two nodes on three
//! NATS servers (R3) took 2,014 webhooks/s with the local fsync switched off against 2,076/s
//! with it (BENCHMARKS.md, "A lean view"): a cluster on one 2-core machine is bound by CPU
//! (every node applies every webhook), not by its local disk.

mod follower;
mod held;
mod stream;

pub(crate) use follower::follow;
pub use follower::{MAX_READY_LAG, Progress};
pub use held::Held;
pub(crate) use held::release;
pub use stream::{ClusterError, ClusterSettings, JetStreamLog};
pub(crate) use stream::{OVERDUE_RECORD, OverdueProposal, RECEIVED_HEADER, RECORD_HEADER};

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::webhook::Normalized;
use crate::store::Ack;
use crate::store::Store;
use bytes::Bytes;

/// What the intake of a cluster node uses in place of the writer: publish, then wait for the
/// node's own view; or hold the webhook when the stream does not take it in time.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    pub(crate) log: Arc<JetStreamLog>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) store: Store,
    pub(crate) held: Arc<Held>,
    pub(crate) clock: Clock,
}

/// What became of a webhook a node took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// Stored, and this node's view shows it: the writer's answer.
    Stored(Ack),
    /// Held on this node's disk until the stream takes it ([`held`]): acknowledged, not
    /// shown yet.
    Held,
}

impl Publisher {
    /// Publishes a verified webhook and answers once this node's view has applied it; holds
    /// it instead if the stream has not acknowledged it within `--cluster-hold-after`.
    pub(crate) async fn submit(
        &self,
        normalized: &Normalized,
        raw: Bytes,
    ) -> Result<Receipt, ClusterError> {
        let received_at = self.clock.now_millis();
        let publishing = self.log.publish(normalized.event_id(), raw.clone());
        let published = match self.held.hold_after() {
            None => publishing.await?,
            Some(patience) => match tokio::time::timeout(patience, publishing).await {
                Ok(published) => published?,
                Err(_) => {
                    // The publish may still have reached the stream: releasing the held copy
                    // is then a repeat, which the message id makes harmless.
                    self.held
                        .hold(normalized.event_id(), raw, received_at)
                        .await?;
                    return Ok(Receipt::Held);
                }
            },
        };
        self.applied(normalized, published)
            .await
            .map(Receipt::Stored)
    }

    /// The writer's answer to a webhook the stream took at `published`, once this node's
    /// view applied it.
    async fn applied(
        &self,
        normalized: &Normalized,
        published: stream::Published,
    ) -> Result<Ack, ClusterError> {
        self.progress.applied(published.sequence).await?;
        if !published.duplicate
            && let Some(ack) = self.progress.outcome(published.sequence)
        {
            return Ok(ack);
        }
        // A repeat within JetStream's window (or an answer already out of the recent
        // outcomes): the view says where the first delivery went.
        match self.store.find_stored(normalized)? {
            Some(existing) => Ok(Ack::for_stored(&self.store, existing)?),
            None => Err(ClusterError::NotApplied(published.sequence)),
        }
    }
}
