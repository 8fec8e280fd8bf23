//! `qistatus.v1.MaintenanceService`: counts and the quarantine of a running server, for
//! operators. Thin like the rest of the edge: read the store, convert, answer.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::ApiError;
use super::convert::timestamp;
use crate::clock::Clock;
use crate::domain::reconcile::Phase;
use crate::feed::ChangeFeed;
use crate::pb;
use crate::pb::maintenance_service_server::MaintenanceService;
use crate::reload::CatalogHandle;
use crate::store::WriterHandle;
use crate::store::{StatusIndex, Store};

/// Quarantine entries read ahead of a slow client.
const QUARANTINE_BUFFER: usize = 16;
/// Bytes of snapshot per message...
const SNAPSHOT_CHUNK: usize = 64 * 1024;
/// ...and messages read ahead of a slow client.
const SNAPSHOT_BUFFER: usize = 4;

/// The implementation of `MaintenanceService`.
#[derive(Debug, Clone)]
pub struct MaintenanceApi {
    store: Store,
    feed: ChangeFeed,
    writer: WriterHandle,
    catalog: CatalogHandle,
    clock: Clock,
}

impl MaintenanceApi {
    /// Maintenance of `store`, whose head `feed` knows and which `writer` writes; `catalog`
    /// says which operations are overdue by `clock`.
    pub(crate) fn new(
        store: Store,
        feed: ChangeFeed,
        writer: WriterHandle,
        catalog: CatalogHandle,
        clock: Clock,
    ) -> Self {
        MaintenanceApi {
            store,
            feed,
            writer,
            catalog,
            clock,
        }
    }
}

/// Sends what is written to it as snapshot chunks; the first carries the snapshot's head and
/// store. A send that fails (the client went away) fails the write, which stops it.
struct ChunkSender {
    tx: mpsc::Sender<Result<pb::SaveSnapshotResponse, Status>>,
    buffer: Vec<u8>,
    first: Option<(u64, String)>,
}

impl ChunkSender {
    fn send(&mut self) -> std::io::Result<()> {
        let (head_sequence, store_id) = self.first.take().unwrap_or_default();
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(SNAPSHOT_CHUNK));
        self.tx
            .blocking_send(Ok(pb::SaveSnapshotResponse {
                chunk,
                head_sequence,
                store_id,
            }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(SNAPSHOT_CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == SNAPSHOT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl MaintenanceService for MaintenanceApi {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let head_sequence = self.feed.head();
        let catalog = self.catalog.current();
        let now = self.clock.now_millis();
        let (mut counts, quarantined, store_id, overdue) = self
            .store
            .read_async(move |store| {
                let overdue =
                    StatusIndex::new(store.clone()).overdue_counts(&catalog.expectations(), now)?;
                Ok::<_, ApiError>((
                    store.counts()?,
                    store.quarantine_len(),
                    store.id()?,
                    overdue,
                ))
            })
            .await?;
        // Phases in the order an operation goes through them.
        let step = |p| Phase::ALL.iter().position(|q| *q == p);
        counts.sort_by(|a, b| {
            (&a.kind, step(a.phase), &a.status).cmp(&(&b.kind, step(b.phase), &b.status))
        });
        Ok(Response::new(pb::GetStatsResponse {
            counts: counts.into_iter().map(pb::StatusCount::from).collect(),
            head_sequence,
            quarantined: quarantined as u64,
            store_id,
            overdue: overdue
                .into_iter()
                .map(|(kind, status, operations)| pb::OverdueCount {
                    kind,
                    status,
                    operations,
                })
                .collect(),
        }))
    }

    type ListQuarantineStream = ReceiverStream<Result<pb::ListQuarantineResponse, Status>>;

    async fn list_quarantine(
        &self,
        request: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<Self::ListQuarantineStream>, Status> {
        let include_payload = request.into_inner().include_payload;
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(QUARANTINE_BUFFER);
        // sled's iterator blocks: read on a blocking thread, a bounded channel ahead.
        tokio::task::spawn_blocking(move || {
            for item in store.quarantined() {
                let message = item
                    .map(|(id, entry)| pb::ListQuarantineResponse {
                        id,
                        received_at: Some(timestamp(entry.received_at)),
                        reason: entry.reason,
                        size_bytes: entry.raw.len() as u64,
                        payload: if include_payload {
                            entry.raw.to_vec()
                        } else {
                            Vec::new()
                        },
                    })
                    .map_err(|e| Status::from(ApiError::from(e)));
                let failed = message.is_err();
                if tx.blocking_send(message).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type SaveSnapshotStream = ReceiverStream<Result<pb::SaveSnapshotResponse, Status>>;

    async fn save_snapshot(
        &self,
        _request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let pinned = self.writer.snapshot().await.map_err(|e| match e {
            crate::store::SubmitError::Store(e) => {
                tracing::error!(error = %e, "a snapshot could not be taken");
                Status::internal(format!("the snapshot could not be taken: {e}"))
            }
            other => Status::unavailable(other.to_string()),
        })?;
        let (tx, rx) = mpsc::channel(SNAPSHOT_BUFFER);
        tokio::task::spawn_blocking(move || {
            let mut sender = ChunkSender {
                tx: tx.clone(),
                buffer: Vec::with_capacity(SNAPSHOT_CHUNK),
                first: Some((pinned.head_sequence, pinned.store_id.clone())),
            };
            match pinned.write_to(&mut sender) {
                Ok(bytes) => tracing::info!(bytes, "snapshot sent"),
                Err(crate::store::StoreError::Io(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    tracing::info!("a snapshot's client left before its end");
                }
                Err(e) => {
                    tracing::error!(error = %e, "sending a snapshot failed");
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "sending the snapshot failed: {e}"
                    ))));
                }
            }
            // `pinned` drops here: its pinned files are removed.
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
