//! A small Rust client for qistatus's gRPC API, shared by the `qistatus` CLI and any Rust
//! service that wants typed calls without writing the plumbing:
//!
//! - [`Client::get`]: one operation with its history;
//! - [`Client::list`]: a stream over every page of a `ListByStatus` query;
//! - [`Client::watch`]: a stream of changes that reconnects with backoff and resumes after
//!   the last sequence it yielded, so callers never write that loop themselves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qistatus::client::ClientError> {
//! let mut client = qistatus::client::Client::connect("http://127.0.0.1:50051").await?;
//! let debt = client.get("871059bd-4014-41ad-82b4-28275ff0e67b", Some("debt")).await?;
//! println!("{} is {}", debt.key, debt.status);
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::pb;
use crate::pb::maintenance_service_client::MaintenanceServiceClient;
use crate::pb::operation_status_service_client::OperationStatusServiceClient;

/// What can go wrong talking to qistatus.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not a valid URI.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The bearer token cannot be sent as a header.
    #[error("the token has characters a header cannot carry")]
    InvalidToken,
    /// The TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server could not be reached.
    #[error(
        "cannot connect to {address}: {reason}; is qistatus-server running there? \
         (--server, QISTATUS_SERVER)"
    )]
    Connect {
        /// The address.
        address: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// What the server sent could not be written out.
    #[error("cannot write: {0}")]
    Output(String),
    /// The server answered with an error, or the call failed on the way.
    #[error("{}", status_message(.0))]
    Status(#[from] tonic::Status),
}

impl ClientError {
    /// The gRPC code of a server error, if it is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

fn status_message(status: &tonic::Status) -> String {
    let mut message = if status.message().is_empty() {
        status.code().description().to_owned()
    } else {
        status.message().to_owned()
    };
    // A transport failure carries its cause (refused, reset, timed out) as the source.
    if let Some(source) = std::error::Error::source(status) {
        let cause = error_chain(source);
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    format!("{message} ({:?})", status.code())
}

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The generated client, with the bearer token interceptor.
pub type Inner = OperationStatusServiceClient<InterceptedService<Channel, BearerToken>>;

/// What [`Client::save_snapshot`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSaved {
    /// The last sequence the snapshot holds.
    pub head_sequence: u64,
    /// The identity of the store it is of.
    pub store_id: String,
    /// Its size.
    pub bytes: u64,
}

/// How to reach a server beyond its address.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Bearer token for servers started with `--grpc-token-file`.
    pub token: Option<String>,
    /// PEM certificate of the CA that signed an `https://` server's certificate (public web
    /// roots are trusted as well).
    pub ca_pem: Option<Vec<u8>>,
    /// Connecting, and each call's wait for its answer, fail after this long (a watch
    /// stream, once answered, lives on). `None`: no limit.
    pub timeout: Option<Duration>,
}

/// The endpoint and bearer header `options` describe, with the address checked first.
fn endpoint(
    address: &str,
    options: ConnectOptions,
) -> Result<(Endpoint, Option<AsciiMetadataValue>), ClientError> {
    let invalid = |reason: String| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(invalid(format!(
            "it has no scheme: did you mean http://{address}? (https:// for a server with TLS)"
        )));
    }
    let mut endpoint =
        Endpoint::from_shared(address.to_owned()).map_err(|e| invalid(e.to_string()))?;
    if address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &options.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError::Tls(error_chain(&e)))?;
    }
    if let Some(timeout) = options.timeout {
        // Both bound only the wait for an answer's start: a watch stream lives on.
        endpoint = endpoint.connect_timeout(timeout).timeout(timeout);
    }
    let token = match options.token {
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse::<AsciiMetadataValue>()
                .map_err(|_| ClientError::InvalidToken)?,
        ),
        None => None,
    };
    Ok((endpoint, token))
}

/// An error with its causes, outermost first: tonic's transport errors say only
/// "transport error" at the top, and the cause (connection refused, timed out, a certificate
/// problem) is what a user can act on.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A connection to a qistatus server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Inner,
    maintenance: MaintenanceServiceClient<InterceptedService<Channel, BearerToken>>,
}

impl Client {
    /// Both services' clients on `channel`, with the bearer token.
    fn on(channel: Channel, token: Option<AsciiMetadataValue>) -> Client {
        Client {
            inner: OperationStatusServiceClient::with_interceptor(
                channel.clone(),
                BearerToken(token.clone()),
            ),
            maintenance: MaintenanceServiceClient::with_interceptor(channel, BearerToken(token)),
        }
    }

    /// Operations by kind and status, from the server's counters.
    pub async fn stats(&mut self) -> Result<pb::GetStatsResponse, ClientError> {
        Ok(self
            .maintenance
            .get_stats(pb::GetStatsRequest {})
            .await?
            .into_inner())
    }

    /// Streams a consistent snapshot of the server into `out`; returns the last sequence it
    /// holds, the store's identity and its size in bytes.
    pub async fn save_snapshot(
        &mut self,
        mut out: impl std::io::Write,
    ) -> Result<SnapshotSaved, ClientError> {
        let mut stream = self
            .maintenance
            .save_snapshot(pb::SaveSnapshotRequest {})
            .await?
            .into_inner();
        let mut saved = SnapshotSaved::default();
        while let Some(message) = stream.message().await? {
            if saved.bytes == 0 {
                saved.head_sequence = message.head_sequence;
                saved.store_id = message.store_id;
            }
            out.write_all(&message.chunk)
                .map_err(|e| ClientError::Output(e.to_string()))?;
            saved.bytes += message.chunk.len() as u64;
        }
        out.flush()
            .map_err(|e| ClientError::Output(e.to_string()))?;
        Ok(saved)
    }

    /// The quarantined webhooks, oldest first, as they are read; with `include_payload`,
    /// their bodies too.
    pub async fn quarantine(
        &mut self,
        include_payload: bool,
    ) -> Result<
        impl Stream<Item = Result<pb::ListQuarantineResponse, ClientError>> + use<>,
        ClientError,
    > {
        let stream = self
            .maintenance
            .list_quarantine(pb::ListQuarantineRequest { include_payload })
            .await?
            .into_inner();
        Ok(tokio_stream::StreamExt::map(stream, |item| {
            item.map_err(ClientError::from)
        }))
    }

    /// Connects to the server at `address` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(address: &str) -> Result<Client, ClientError> {
        Client::connect_with(address, ConnectOptions::default()).await
    }

    /// Connects to the server at `address` (`http://` or `https://`) with `options`.
    pub async fn connect_with(
        address: &str,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (endpoint, token) = endpoint(address, options)?;
        let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
            address: address.to_owned(),
            reason: error_chain(&e),
        })?;
        Ok(Client::on(channel, token))
    }

    /// A client that connects on its first call, and reconnects when the server goes away:
    /// for watching a server that may not be up yet ([`Client::watch`] then reports
    /// `Reconnecting` until it is).
    pub fn connect_lazy_with(
        address: &str,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (endpoint, token) = endpoint(address, options)?;
        Ok(Client::on(endpoint.connect_lazy(), token))
    }

    /// The operation with `key` (and `kind`, needed only when the key names several kinds),
    /// with its history, without each webhook's `data` (OPERATION_VIEW_BASIC).
    pub async fn get(
        &mut self,
        key: &str,
        kind: Option<&str>,
    ) -> Result<pb::Operation, ClientError> {
        self.get_view(key, kind, pb::OperationView::Basic).await
    }

    /// [`Client::get`] with the history entries `view` asks for: with OPERATION_VIEW_FULL,
    /// each webhook's `data` too (newest first, within the message limit).
    pub async fn get_view(
        &mut self,
        key: &str,
        kind: Option<&str>,
        view: pb::OperationView,
    ) -> Result<pb::Operation, ClientError> {
        Ok(self.get_whole(key, kind, view).await?.0)
    }

    /// [`Client::get_view`], with the operation's parts (a debt's installments) and how many
    /// were left out.
    pub async fn get_whole(
        &mut self,
        key: &str,
        kind: Option<&str>,
        view: pb::OperationView,
    ) -> Result<(pb::Operation, Vec<pb::Operation>, u64), ClientError> {
        let response = self
            .inner
            .get_operation(pb::GetOperationRequest {
                key: key.to_owned(),
                kind: kind.unwrap_or_default().to_owned(),
                include_raw_payload: false,
                view: view as i32,
            })
            .await?
            .into_inner();
        let operation = response
            .operation
            .ok_or_else(|| tonic::Status::internal("the server sent no operation"))?;
        Ok((operation, response.parts, response.parts_omitted))
    }

    /// The flow of `kind` over the UTC days from `since` to `until` (ms; the server's defaults
    /// when `None`: the week up to today).
    pub async fn flow(
        &mut self,
        kind: &str,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<pb::GetFlowResponse, ClientError> {
        let at = |ms: i64| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        };
        Ok(self
            .inner
            .get_flow(pb::GetFlowRequest {
                kind: kind.to_owned(),
                since: since.map(at),
                until: until.map(at),
            })
            .await?
            .into_inner())
    }

    /// Every operation matching `query`, following pages; the stream ends after the last page
    /// or at the first error.
    pub fn list(
        &self,
        query: ListQuery,
    ) -> impl Stream<Item = Result<pb::Operation, ClientError>> + use<> {
        let mut inner = self.inner.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut request = pb::ListByStatusRequest {
                kind: query.kind.unwrap_or_default(),
                statuses: query.statuses,
                phase: query.phase.unwrap_or(pb::Phase::Unspecified) as i32,
                page_size: query.page_size,
                page_token: String::new(),
                overdue: query.overdue,
            };
            loop {
                let page = match inner.list_by_status(request.clone()).await {
                    Ok(page) => page.into_inner(),
                    Err(status) => {
                        let _ = tx.send(Err(status.into())).await;
                        return;
                    }
                };
                for op in page.operations {
                    if tx.send(Ok(op)).await.is_err() {
                        return;
                    }
                }
                if page.next_page_token.is_empty() {
                    return;
                }
                request.page_token = page.next_page_token;
            }
        });
        ReceiverStream::new(rx)
    }

    /// The changes `query` selects, for as long as the stream is read. Dropped connections
    /// and server restarts are retried with [`Backoff`] (100 ms doubling to 5 s), resuming after
    /// the last sequence yielded, so nothing is missed or repeated. Errors that retrying
    /// cannot fix (a bad filter, a resume point older than the retained log, a server that
    /// came back with another store) end the stream.
    pub fn watch(
        &self,
        query: WatchQuery,
    ) -> impl Stream<Item = Result<WatchEvent, ClientError>> + use<> {
        let mut inner = self.inner.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut resume = query.start_after_sequence;
            let mut want_initial = query.send_initial_state;
            let mut store_id = query.store_id.clone();
            let mut backoff = Backoff::new();
            loop {
                let request = query.request(resume, want_initial, store_id.as_deref());
                let failure = match inner.watch_operation(request).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            let event = match stream.message().await {
                                Ok(Some(message)) => message.event,
                                Ok(None) => {
                                    break Status::unavailable("the server ended the stream");
                                }
                                Err(status) => break status,
                            };
                            backoff.reset();
                            let event = match event {
                                Some(pb::watch_operation_response::Event::Change(change)) => {
                                    if change.initial {
                                        want_initial = false;
                                    } else {
                                        resume = Some(change.sequence);
                                    }
                                    WatchEvent::Change(Box::new(change))
                                }
                                Some(pb::watch_operation_response::Event::Progress(p)) => {
                                    // The initial state, if any, comes before the first progress.
                                    want_initial = false;
                                    resume = Some(p.sequence);
                                    if !p.store_id.is_empty() {
                                        // Reconnects then resume only on this same store.
                                        store_id = Some(p.store_id);
                                    }
                                    WatchEvent::Progress(p.sequence)
                                }
                                None => continue,
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(status) => status,
                };
                if !retryable(failure.code()) {
                    let _ = tx.send(Err(failure.into())).await;
                    return;
                }
                let delay = backoff.next_delay();
                let notice = WatchEvent::Reconnecting {
                    resume_after: resume,
                    reason: status_message(&failure),
                    delay,
                };
                if tx.send(Ok(notice)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

/// The retry policy of the watch's reconnects, and of the CLI's replay.
pub use crate::backoff::Backoff;

/// RFC 3339 text of a protobuf timestamp, in UTC; empty for an unset or invalid one.
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// A time given on a command line: RFC 3339, or how long before `now` (`3d`, `12h`); in ms
/// since the epoch.
#[cfg(feature = "cli")]
pub fn time_given(text: &str, now: i64) -> Result<i64, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration ago (3d, 12h)")
    })?;
    Ok(now.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
}

/// A measured duration for people, in the unit that reads best: `850ms`, `42s`, `17m`,
/// `5.2h`, `3.1d`.
pub fn span_text(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}

/// A duration as the catalog writes one (`5d`, `4h`, `30m`, `90s`): the largest unit it is a
/// whole number of.
pub fn duration_text(d: Option<&prost_types::Duration>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let seconds = d.seconds;
    [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| seconds != 0 && seconds % unit == 0)
        .map_or_else(
            || format!("{seconds}s"),
            |(unit, name)| format!("{}{name}", seconds / unit),
        )
}

/// The lower-case name of a phase value, as the CLI and the JSON shapes print it
/// (`unspecified` for 0 or a value this build does not know).
pub fn phase_name(phase: i32) -> &'static str {
    match pb::Phase::try_from(phase) {
        Ok(pb::Phase::Pending) => "pending",
        Ok(pb::Phase::Active) => "active",
        Ok(pb::Phase::Succeeded) => "succeeded",
        Ok(pb::Phase::Failed) => "failed",
        Ok(pb::Phase::Unspecified) | Err(_) => "unspecified",
    }
}

/// Whether a failed watch may succeed if tried again.
fn retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}

/// A `ListByStatus` query: `statuses` or `phase`, optionally narrowed to a `kind`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Operations in one of these statuses.
    pub statuses: Vec<String>,
    /// Operations in this phase (instead of statuses).
    pub phase: Option<pb::Phase>,
    /// Operations per page (0: the server's default).
    pub page_size: u32,
    /// Only overdue operations, most overdue first (`statuses` and `kind` narrow it).
    pub overdue: bool,
}

/// A `WatchOperation` query; see the proto for each field.
#[derive(Debug, Clone, Default)]
pub struct WatchQuery {
    /// One operation key.
    pub key: Option<String>,
    /// With `key`: its kind, when the key names several.
    pub kind: Option<String>,
    /// Only these kinds.
    pub kinds: Vec<String>,
    /// Only changes into these statuses.
    pub statuses: Vec<String>,
    /// Only changes into these phases.
    pub phases: Vec<pb::Phase>,
    /// Start after this sequence; `None`: from now.
    pub start_after_sequence: Option<u64>,
    /// With `key`: send its current state first.
    pub send_initial_state: bool,
    /// Also webhooks that did not change the status.
    pub include_unchanged: bool,
    /// The store `start_after_sequence` was saved against (`Progress.store_id`). The stream
    /// fails with FAILED_PRECONDITION, instead of skipping changes, if the server's store is
    /// another one. Learned from the first progress message when not given.
    pub store_id: Option<String>,
    /// Only changes that reach one of these milestones (instead of status changes).
    pub milestones: Vec<String>,
    /// Also the moments operations become overdue (`OperationChange.overdue` set).
    pub overdue: bool,
}

impl WatchQuery {
    fn request(
        &self,
        resume: Option<u64>,
        send_initial_state: bool,
        store_id: Option<&str>,
    ) -> pb::WatchOperationRequest {
        pb::WatchOperationRequest {
            key: self.key.clone().unwrap_or_default(),
            kind: self.kind.clone().unwrap_or_default(),
            kinds: self.kinds.clone(),
            statuses: self.statuses.clone(),
            phases: self.phases.iter().map(|p| *p as i32).collect(),
            start_after_sequence: resume,
            send_initial_state,
            include_unchanged: self.include_unchanged,
            store_id: store_id.unwrap_or_default().to_owned(),
            milestones: self.milestones.clone(),
            overdue: self.overdue,
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// An operation changed (or, with `initial` set, its state when the watch began).
    Change(Box<pb::OperationChange>),
    /// Everything up to this sequence has been seen.
    Progress(u64),
    /// The connection failed; the stream reconnects after `delay` and resumes after
    /// `resume_after`. Informational: nothing is lost.
    Reconnecting {
        /// Where the stream will resume.
        resume_after: Option<u64>,
        /// Why it reconnects.
        reason: String,
        /// How long it waits first.
        delay: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339_and_phases_have_their_names() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&t)), "2023-11-14T22:13:20Z");
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000_000,
        };
        assert_eq!(rfc3339(Some(&t)), "2023-11-14T22:13:20.005Z");
        assert_eq!(rfc3339(None), "");
        let negative = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(
            rfc3339(Some(&negative)),
            "",
            "an invalid timestamp prints nothing"
        );
        assert_eq!(phase_name(pb::Phase::Failed as i32), "failed");
        assert_eq!(phase_name(pb::Phase::Pending as i32), "pending");
        assert_eq!(phase_name(99), "unspecified");
    }
}
