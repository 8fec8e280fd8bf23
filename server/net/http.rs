//! Serving the intake's router on admitted connections with hyper, HTTP/1.1 and HTTP/2.
//!
//! `axum::serve` has no header read timeout, idle timeout or connection bound, so the intake
//! runs its own loop, the one hyper-util documents, with:
//! - a header read timeout: a request's headers must arrive within `header_read_timeout`;
//!   hyper starts that clock whenever it waits for a request, so it is also the idle timeout
//!   of a kept-alive HTTP/1.1 connection. The first request's clock starts here, from the
//!   connection's first byte: before hyper sees a request, hyper-util reads ahead to tell
//!   HTTP/1.1 from HTTP/2, with no clock of its own;
//! - a request counts as processed only once its body has arrived whole (the admission's
//!   eviction spares it from then on, and only then);
//! - an idle timeout for every connection (HTTP/2 included): closed gracefully when it has no
//!   request in flight and has sent nothing for `idle_timeout`;
//! - HTTP/2 keepalive pings, so a vanished peer is noticed;
//! - a bound on open connections and eviction of idle ones ([`super::admission`]);
//! - on shutdown, every connection finishes its requests in flight and closes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::accept::Conn;
use super::admission::RequestGuard;

/// Timeouts of the intake's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpTimeouts {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
}

/// HTTP/2 keepalive: a ping after this much silence...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...which must be answered within this.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent streams on one HTTP/2 connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Largest read buffer of an HTTP/1 connection. hyper grows it to read a large body faster
/// (to about 400 KiB by default) and keeps it for the connection's life, idle or not: 560
/// kept-alive connections that had each sent a near-megabyte body held 77 MB between them.
/// QI's webhooks fit in a few KiB; a large body is read in more pieces, and the budget that
/// bounds bodies counts them as they come.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Serves `app` on the connections `incoming` hands out until `stop` is cancelled, then waits
/// for every connection to finish its requests in flight.
pub(crate) async fn serve(
    mut incoming: mpsc::Receiver<Conn>,
    app: Router,
    timeouts: HttpTimeouts,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(MAX_READ_BUFFER)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        let conn = tokio::select! {
            conn = incoming.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = stop.cancelled() => break,
            // Reap finished connections as they go, so the set stays the size of what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(serve_connection(
            conn,
            app.clone(),
            builder.clone(),
            timeouts,
            stop.clone(),
        ));
    }
    drop(incoming);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    conn: Conn,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: HttpTimeouts,
    stop: CancellationToken,
) {
    let HttpTimeouts {
        header_read: header_read_timeout,
        idle: idle_timeout,
    } = timeouts;
    let slot = conn.slot().clone();
    let peer = conn.peer();
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = Arc::new(slot.begin_request());
            let app = app.clone();
            let mut request = request;
            // Handlers that need the client's address (the console's sign-in throttle)
            // read it as axum's `ConnectInfo`.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let request = request.map(|body| {
                if body.is_end_stream() {
                    guard.body_received();
                }
                axum::body::Body::new(TrackedBody {
                    inner: body,
                    guard: guard.clone(),
                })
            });
            async move {
                let response = app.oneshot(request).await;
                drop(guard);
                response.map_err(|never: Infallible| match never {})
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    let first_request_due = tokio::time::sleep(header_read_timeout);
    tokio::pin!(first_request_due);
    let mut first_request_checked = false;
    loop {
        let idle_check = tokio::time::sleep(idle_timeout.saturating_sub(slot.idle_for()));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = slot.evicted() => {
                tracing::debug!(%peer, "evicted while idle to admit a new connection");
                return;
            }
            // The condition is read when the `select!` starts, which may be long before the
            // clock runs out: read again then. Once run out, the branch is off for good.
            () = &mut first_request_due, if !first_request_checked => {
                if !slot.has_begun() {
                    tracing::debug!(%peer, "closed: no request headers within the header read timeout");
                    return;
                }
                first_request_checked = true;
            }
            () = stop.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = idle_check, if !shutting_down => {
                if slot.idle_for() >= idle_timeout {
                    tracing::debug!(%peer, "closing an idle connection");
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A request's body, telling its [`RequestGuard`] when it has arrived whole.
struct TrackedBody {
    inner: Incoming,
    guard: Arc<RequestGuard>,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.guard.body_received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
