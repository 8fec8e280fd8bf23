//! The gRPC API, `qistatus.v1.OperationStatusService`. Handlers are thin: they validate the
//! request, call the store (or the change feed), and convert ([`convert`]). Every error is an
//! [`ApiError`], turned into a `tonic::Status` (and, when it is the server's fault, logged) in
//! one place: `From<ApiError> for Status`.

mod convert;
mod maintenance;
mod outcome;
mod watch;

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::clock::Clock;
use crate::domain::catalog::{canonical_kind, canonical_status};
use crate::domain::overdue::overdue;
use crate::domain::reconcile::{EventSummary, Operation, Phase, Reconciler};
use crate::domain::webhook::{check_key, check_name};
use crate::feed::{ChangeFeed, FeedError, FeedFilter};
use crate::flow_window::{FlowError, FlowWindow};
use crate::listing::{ListAsk, ListError, ListQuery, Lists, canonical_names};
use crate::pb;
use crate::pb::operation_status_service_server::OperationStatusService;
use crate::reload::CatalogHandle;
use crate::store::{Lookup, Store, StoreError};
pub use maintenance::MaintenanceApi;
pub(crate) use outcome::OutcomeLayer;
pub use watch::WatchStream;

/// Limits of the gRPC listener's connections and requests.
#[derive(Debug, Clone, Copy)]
pub struct GrpcLimits {
    /// Most connections open at once. At the bound, a connection that has made no
    /// authenticated call within `first_call_grace` is closed to make room; one that has
    /// (it may carry watchers) never is, and the newcomer is refused instead.
    pub max_connections: usize,
    /// How long a new connection has to make its first authenticated call before it may be
    /// closed to make room.
    pub first_call_grace: Duration,
    /// Longest a new connection may take to finish its TLS handshake, or to send its first
    /// bytes.
    pub handshake_timeout: Duration,
    /// A connection is asked to close (HTTP/2 GOAWAY) after this long, and closed after
    /// a further minute of grace; clients reconnect, watchers resume.
    pub max_connection_age: Duration,
    /// Longest a unary call may take before it fails with DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
}

impl GrpcLimits {
    /// The defaults, which the server's flags also show.
    pub const DEFAULT: GrpcLimits = GrpcLimits {
        max_connections: 1024,
        first_call_grace: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(10),
        max_connection_age: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(30),
    };
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits::DEFAULT
    }
}

/// Largest request message the API decodes, answered RESOURCE_EXHAUSTED above it. Requests
/// are a key and a few filters, a few KiB at most; the bound is loose enough that a request
/// with an oversized field still reaches validation and gets INVALID_ARGUMENT naming the
/// field, and tight enough that no request costs real memory.
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Errors of the gRPC API.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The resume point is older than the retained log.
    #[error("{0}")]
    OutOfRange(String),
    /// Too many watchers.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request was made for another store.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is stopping: the client should reconnect.
    #[error("{0}")]
    Unavailable(String),
    /// Stored bytes the answer needs are damaged: never served altered.
    #[error("{0}")]
    DataLoss(String),
    /// The store failed: logged, and reported without detail.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::NothingToList | ListError::Invalid(_) | ListError::PageToken(_) => {
                ApiError::InvalidArgument(e.to_string())
            }
            ListError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Off => ApiError::FailedPrecondition(e.to_string()),
            FlowError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::TooManySubscribers { .. } => ApiError::ResourceExhausted(e.to_string()),
            FeedError::Compacted { .. } | FeedError::PastHead { .. } => {
                ApiError::OutOfRange(e.to_string())
            }
            FeedError::ShuttingDown { .. } | FeedError::Behind { .. } => {
                ApiError::Unavailable(e.to_string())
            }
            FeedError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::OutOfRange(m) => Status::out_of_range(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::DataLoss(m) => {
                tracing::error!(error = %m, "damaged stored data refused to a caller");
                Status::data_loss(m)
            }
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
    catalog: CatalogHandle,
    store: Store,
    lists: Lists,
    feed: ChangeFeed,
    clock: Clock,
}

impl OperationStatusApi {
    /// An API over `store`, whose lists `lists` reads and whose watchers `feed` serves;
    /// `catalog` resolves kind aliases in requests, as the intake does in webhooks; `clock`
    /// says which operations are overdue.
    pub(crate) fn new(
        catalog: CatalogHandle,
        store: Store,
        lists: Lists,
        feed: ChangeFeed,
        clock: Clock,
    ) -> Self {
        OperationStatusApi {
            clock,
            catalog,
            lists,
            store,
            feed,
        }
    }

    /// The kind a request names: canonical, and resolved if it is an alias.
    fn kind_named(&self, raw: &str) -> String {
        self.catalog.current().resolve_kind(raw)
    }

    /// The operation a key (and optional kind) names.
    fn find(&self, key: &str, kind: &str) -> Result<Operation, ApiError> {
        if key.is_empty() {
            return Err(ApiError::InvalidArgument("key is required".into()));
        }
        check_key(key).map_err(ApiError::InvalidArgument)?;
        let kind = match kind.trim() {
            "" => None,
            raw => {
                let kind = self.kind_named(raw);
                check_name("kind", &kind).map_err(ApiError::InvalidArgument)?;
                Some(kind)
            }
        };
        match self.store.lookup(key, kind.as_deref())? {
            Lookup::Found(op) => Ok(*op),
            Lookup::Missing(what) => Err(ApiError::NotFound(what)),
            Lookup::Several(kinds) => {
                Err(ApiError::InvalidArgument(Lookup::ambiguous(key, &kinds)))
            }
        }
    }

    /// `op` with its history as `view` and `include_raw` ask, within [`MAX_RESPONSE_BYTES`]:
    /// the oldest entries are left out if even bare entries do not fit (their count is
    /// returned), then data and raw payloads are added newest first while they fit (the
    /// others say `data_omitted`). Raw webhooks are read only when asked for.
    fn with_history(
        &self,
        op: &Operation,
        view: pb::OperationView,
        include_raw: bool,
        reserved: usize,
    ) -> Result<(pb::Operation, u64), ApiError> {
        let mut out = pb::Operation::from(op);
        // What the rest of the response takes comes first.
        let mut size = out.encoded_len() + reserved;
        // Newest first: what fits is the most recent part of the history.
        let mut entries: Vec<(&EventSummary, pb::HistoryEntry)> = Vec::new();
        let catalog = self.catalog.current();
        let reconciler = Reconciler::new(&catalog);
        for event in op.history.iter().rev() {
            let mut entry = pb::HistoryEntry::from(event);
            entry.event_time_ahead = reconciler.is_ahead(event);
            let entry_size = framed_len(entry.encoded_len());
            if size + entry_size > MAX_RESPONSE_BYTES {
                break;
            }
            size += entry_size;
            entries.push((event, entry));
        }
        let omitted = (op.history.len() - entries.len()) as u64;
        let with_data = view == pb::OperationView::Full;
        let with_json = view == pb::OperationView::Json;
        if with_data || with_json || include_raw {
            let bodies = self.store.bodies(&op.kind, &op.key)?;
            for (event, entry) in &mut entries {
                let raw = self
                    .store
                    .body_checked(&bodies, event.sequence, &event.event_id)
                    .map_err(|e| {
                        if e.is_damage() {
                            ApiError::DataLoss(format!(
                                "the webhook stored at sequence {} is damaged on disk and is not \
                             served: {e}",
                                event.sequence
                            ))
                        } else {
                            ApiError::Store(e)
                        }
                    })?;
                // Not kept any more (log retention): the summary is all there is.
                let Some(raw) = raw else {
                    continue;
                };
                let before = framed_len(entry.encoded_len());
                if with_data {
                    entry.data = convert::data_struct(&raw);
                }
                if with_json {
                    entry.data_json = convert::data_json(&raw);
                }
                if include_raw {
                    entry.raw_payload = raw.to_vec();
                }
                let after = framed_len(entry.encoded_len());
                if size - before + after <= MAX_RESPONSE_BYTES {
                    size = size - before + after;
                } else if entry.data.is_some()
                    || !entry.data_json.is_empty()
                    || !entry.raw_payload.is_empty()
                {
                    // Too large for the response: the entry goes without them, and says so.
                    entry.data = None;
                    entry.data_json = Vec::new();
                    entry.raw_payload = Vec::new();
                    entry.data_omitted = true;
                }
            }
        }
        out.history = entries.into_iter().rev().map(|(_, entry)| entry).collect();
        Ok((out, omitted))
    }
}

/// The most bytes a response carries: under the 4 MiB that gRPC clients accept by default,
/// with room for framing and headers.
pub(crate) const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// The most bytes of a `GetOperation` response the parts take, so that the operation and its
/// recent history always fit beside them.
const MAX_PARTS_BYTES: usize = MAX_RESPONSE_BYTES / 4;

/// The bytes a nested message of `len` bytes takes in its parent: a tag and a length prefix.
fn framed_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

fn phase_of(value: i32, field: &str) -> Result<Option<Phase>, ApiError> {
    let phase = pb::Phase::try_from(value)
        .map_err(|_| ApiError::InvalidArgument(format!("{field} has no phase {value}")))?;
    Ok(Phase::try_from(phase).ok())
}

fn canonical_set(
    values: &[String],
    field: &str,
    canonical: impl Fn(&str) -> String,
) -> Result<BTreeSet<String>, ApiError> {
    canonical_names(values, field, canonical).map_err(ApiError::InvalidArgument)
}

fn watch_filter(
    req: &pb::WatchOperationRequest,
    kind_named: impl Fn(&str) -> String,
) -> Result<FeedFilter, ApiError> {
    let mut kinds = canonical_set(&req.kinds, "kinds", &kind_named)?;
    if !req.key.is_empty() && !req.kind.trim().is_empty() {
        kinds.insert(kind_named(&req.kind));
    }
    let mut phases = BTreeSet::new();
    for &p in &req.phases {
        let phase = phase_of(p, "phases")?.ok_or_else(|| {
            ApiError::InvalidArgument("phases must not contain PHASE_UNSPECIFIED".into())
        })?;
        phases.insert(phase);
    }
    if !req.key.is_empty() {
        check_key(&req.key).map_err(ApiError::InvalidArgument)?;
    }
    if !req.kind.trim().is_empty() {
        check_name("kind", &canonical_kind(&req.kind)).map_err(ApiError::InvalidArgument)?;
    }
    Ok(FeedFilter {
        key: Some(req.key.clone()).filter(|k| !k.is_empty()),
        kinds,
        statuses: canonical_set(&req.statuses, "statuses", canonical_status)?,
        phases,
        include_unchanged: req.include_unchanged,
        milestones: canonical_set(&req.milestones, "milestones", canonical_status)?,
        overdue: req.overdue,
        overdue_only: false,
    })
}

#[tonic::async_trait]
impl OperationStatusService for OperationStatusApi {
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        let req = request.into_inner();
        let view = pb::OperationView::try_from(req.view)
            .map_err(|_| ApiError::InvalidArgument(format!("view has no value {}", req.view)))?;
        // A point read, in place (see `Store::read_async`).
        let op = self.find(&req.key, &req.kind)?;
        let catalog = self.catalog.current();
        let now = self.clock.now_millis();
        let (found, mut parts_omitted) = self
            .store
            .parts_of(&op.kind, &op.key, crate::store::MOST_PARTS_LISTED)
            .map_err(ApiError::Store)?;
        let mut parts = Vec::with_capacity(found.len());
        let mut parts_size = 0;
        for part in &found {
            let mut out = pb::Operation::from(part);
            out.overdue = overdue(&catalog, part, now).map(|o| pb::Overdue::from(&o));
            let size = framed_len(out.encoded_len());
            if parts_size + size > MAX_PARTS_BYTES {
                parts_omitted += (found.len() - parts.len()) as u64;
                break;
            }
            parts_size += size;
            parts.push(out);
        }
        let (mut operation, history_omitted) =
            self.with_history(&op, view, req.include_raw_payload, parts_size)?;
        operation.overdue = overdue(&catalog, &op, now).map(|o| pb::Overdue::from(&o));
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation),
            history_omitted,
            parts,
            parts_omitted,
        }))
    }

    async fn list_by_status(
        &self,
        request: Request<pb::ListByStatusRequest>,
    ) -> Result<Response<pb::ListByStatusResponse>, Status> {
        let req = request.into_inner();
        let catalog = self.catalog.current();
        let phase = phase_of(req.phase, "phase")?;
        let ask = ListAsk {
            kind: &req.kind,
            statuses: &req.statuses,
            phase,
            overdue: req.overdue,
            page_size: req.page_size as usize,
        };
        let query = ListQuery::new(&catalog, ask).map_err(ApiError::from)?;
        let page = self
            .lists
            .page(&query, catalog, &req.page_token, self.clock.now_millis())
            .await
            .map_err(ApiError::from)?;
        let operations = page
            .operations
            .iter()
            .map(|(op, late)| {
                let mut out = pb::Operation::from(op);
                out.overdue = late.as_ref().map(pb::Overdue::from);
                out
            })
            .collect();
        Ok(Response::new(pb::ListByStatusResponse {
            operations,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_flow(
        &self,
        request: Request<pb::GetFlowRequest>,
    ) -> Result<Response<pb::GetFlowResponse>, Status> {
        let req = request.into_inner();
        let millis = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000)
        };
        let window = FlowWindow::new(
            &req.kind,
            millis(&req.since),
            millis(&req.until),
            self.clock.now_millis(),
        )
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let report = window.answer(&self.store).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::flow_response(
            &window.kind,
            window.bounds(),
            &report,
        )))
    }

    type WatchOperationStream = WatchStream;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        let req = request.into_inner();
        let filter = watch_filter(&req, |k| self.kind_named(k))?;
        let store_id = self.store.id().map_err(ApiError::from)?;
        if !req.store_id.is_empty() && req.store_id != store_id {
            return Err(ApiError::FailedPrecondition(format!(
                "this server's store is {store_id}, not the one the resume point was saved \
                 against: its sequences mean other changes; start over without \
                 start_after_sequence (and read the current state)"
            ))
            .into());
        }
        // Read the head before the initial state: a change committed in between is then
        // delivered after the state instead of being lost.
        let start_after = req.start_after_sequence.unwrap_or_else(|| self.feed.head());
        let initial = if req.send_initial_state {
            if req.key.is_empty() {
                return Err(
                    ApiError::InvalidArgument("send_initial_state needs a key".into()).into(),
                );
            }
            match self.find(&req.key, &req.kind) {
                Ok(op) => Some(op),
                Err(ApiError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        self.feed.caught_up_to(start_after).await;
        let subscription = self
            .feed
            .subscribe(filter, Some(start_after), initial)
            .map_err(ApiError::from)?;
        Ok(Response::new(WatchStream::new(subscription, store_id)))
    }
}
