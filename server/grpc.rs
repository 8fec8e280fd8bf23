//! The gRPC API, `qistatus.v1.OperationStatusService`. Handlers are thin: they validate the
//! request, call the store, and convert. Every error is an [`ApiError`], turned into a
//! `tonic::Status` in one place.

use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::catalog::canonical_kind;
use crate::domain::reconcile::Operation;
use crate::pb;
use crate::pb::operation_status_service_server::OperationStatusService;
use crate::store::{Store, StoreError};

/// Errors of the gRPC API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The resume point is older than the retained log.
    #[error("{0}")]
    OutOfRange(String),
    /// The store failed: logged, and reported without detail.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::OutOfRange(m) => Status::out_of_range(m),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store error while serving a request");
                Status::internal("internal storage error")
            }
        }
    }
}

/// The implementation of `OperationStatusService`.
#[derive(Debug, Clone)]
pub struct OperationStatusApi {
    store: Store,
}

impl OperationStatusApi {
    /// An API over `store`.
    pub fn new(store: Store) -> Self {
        OperationStatusApi { store }
    }

    /// The operation a key (and optional kind) names.
    fn find(&self, key: &str, kind: &str) -> Result<Operation, ApiError> {
        if key.is_empty() {
            return Err(ApiError::InvalidArgument("key is required".into()));
        }
        if !kind.trim().is_empty() {
            let kind = canonical_kind(kind);
            return self.store.operation(&kind, key)?.ok_or_else(|| {
                ApiError::NotFound(format!("no {kind} operation with key {key:?}"))
            });
        }
        let mut found = self.store.operations_with_key(key)?;
        match found.len() {
            0 => Err(ApiError::NotFound(format!("no operation with key {key:?}"))),
            1 => Ok(found.remove(0)),
            _ => {
                let kinds: Vec<&str> = found.iter().map(|op| op.kind.as_str()).collect();
                Err(ApiError::InvalidArgument(format!(
                    "key {key:?} names operations of several kinds ({}): give the kind",
                    kinds.join(", ")
                )))
            }
        }
    }

    fn with_history(&self, op: &Operation, include_raw: bool) -> Result<pb::Operation, ApiError> {
        let mut out = convert::operation_summary(op);
        for event in &op.history {
            let raw = self.store.log_entry(event.sequence)?.map(|e| e.raw);
            out.history
                .push(convert::history_entry(event, raw.as_deref(), include_raw));
        }
        Ok(out)
    }
}

type WatchStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchOperationResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl OperationStatusService for OperationStatusApi {
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        let req = request.into_inner();
        let op = self.find(&req.key, &req.kind)?;
        let operation = self.with_history(&op, req.include_raw_payload)?;
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation),
        }))
    }

    async fn list_by_status(
        &self,
        _request: Request<pb::ListByStatusRequest>,
    ) -> Result<Response<pb::ListByStatusResponse>, Status> {
        Err(Status::unimplemented("ListByStatus is not implemented yet"))
    }

    type WatchOperationStream = WatchStream;

    async fn watch_operation(
        &self,
        _request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        Err(Status::unimplemented(
            "WatchOperation is not implemented yet",
        ))
    }
}
