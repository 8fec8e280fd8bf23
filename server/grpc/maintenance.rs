//! `qistatus.v1.MaintenanceService`: counts and the quarantine of a running server, for
//! operators. Thin like the rest of the edge: read the store, convert, answer.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::ApiError;
use super::convert::timestamp;
use crate::feed::ChangeFeed;
use crate::pb;
use crate::pb::maintenance_service_server::MaintenanceService;
use crate::store::Store;

/// Quarantine entries read ahead of a slow client.
const QUARANTINE_BUFFER: usize = 16;

/// The implementation of `MaintenanceService`.
#[derive(Debug, Clone)]
pub struct MaintenanceApi {
    store: Store,
    feed: ChangeFeed,
}

impl MaintenanceApi {
    /// Maintenance of `store`, whose head `feed` knows.
    pub(crate) fn new(store: Store, feed: ChangeFeed) -> Self {
        MaintenanceApi { store, feed }
    }
}

#[tonic::async_trait]
impl MaintenanceService for MaintenanceApi {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let store = self.store.clone();
        let head_sequence = self.feed.head();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, ApiError>((store.counts()?, store.quarantine_len(), store.id()?))
        })
        .await
        .map_err(|e| Status::internal(format!("reading the counters failed: {e}")))?;
        let (mut counts, quarantined, store_id) = read?;
        counts.sort_by(|a, b| (&a.kind, a.phase, &a.status).cmp(&(&b.kind, b.phase, &b.status)));
        Ok(Response::new(pb::GetStatsResponse {
            counts: counts.into_iter().map(pb::StatusCount::from).collect(),
            head_sequence,
            quarantined: quarantined as u64,
            store_id,
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
}
