//! What the gRPC edge does with each call's outcome, for every service served: counts it by
//! method and status code, and answers an oversized request with RESOURCE_EXHAUSTED.
//!
//! tonic refuses a request message over the limit with OUT_OF_RANGE before any handler
//! runs, and says so in the response's trailers. gRPC's status code for "larger than allowed"
//! is RESOURCE_EXHAUSTED (clients treat the two differently), so that one answer, recognised
//! by tonic's message, is rewritten, in the headers or the trailers, and nothing else.
//!
//! The status of a call is in the response headers (a trailers-only answer: errors before
//! the handler, and handler errors) or in the trailers at the end of the body (successes and
//! streams); the call is counted when it is found, once. A stream the client drops before its
//! end is counted as CANCELLED.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame};
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct OutcomeLayer {
    metrics: Arc<Metrics>,
}

impl OutcomeLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        OutcomeLayer { metrics }
    }
}

impl<S> Layer<S> for OutcomeLayer {
    type Service = Outcome<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Outcome {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`OutcomeLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Outcome<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<http::Request<B>> for Outcome<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (mut parts, body) = response.into_parts();
            let mut counter = CallCounter {
                metrics,
                method,
                counted: false,
            };
            if let Some(code) = rewrite_and_read(&mut parts.headers) {
                counter.count(code);
            }
            let body = tonic::body::Body::new(Counted {
                inner: body,
                counter,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// The encoded descriptors of every service the gRPC listener serves (see
/// `crate::server`): the API, maintenance, health and reflection in both versions. A method
/// is labelled by its name when its path is one of theirs, so a new RPC is counted under its
/// own name the day it is added to `proto/`, with nothing else to update.
const SERVED: [&[u8]; 4] = [
    crate::pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Every served method's path (`/package.Service/Method`) and its label (`Method`).
static METHODS: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    use prost::Message as _;
    let mut methods = HashMap::new();
    for encoded in SERVED {
        let set = prost_types::FileDescriptorSet::decode(encoded)
            .expect("a descriptor set compiled into the binary decodes: build.rs wrote it");
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(
                        format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        method.name().to_owned(),
                    );
                }
            }
        }
    }
    methods
});

/// The method's name, bounded: a served method's name, else "other".
fn method_label(path: &str) -> &'static str {
    let methods: &'static HashMap<String, String> = &METHODS;
    methods.get(path).map_or("other", String::as_str)
}

/// Counts one call, once.
struct CallCounter {
    metrics: Arc<Metrics>,
    method: &'static str,
    counted: bool,
}

impl CallCounter {
    fn count(&mut self, code: tonic::Code) {
        if !self.counted {
            self.counted = true;
            self.metrics.grpc_call(self.method, code);
        }
    }
}

impl Drop for CallCounter {
    fn drop(&mut self) {
        self.count(tonic::Code::Cancelled);
    }
}

/// Rewrites tonic's "decoded message length too large" to RESOURCE_EXHAUSTED; returns the
/// status code the headers carry, if any.
fn rewrite_and_read(headers: &mut HeaderMap) -> Option<tonic::Code> {
    let code = headers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from_i32)?;
    let oversized = code == tonic::Code::OutOfRange
        && headers.get("grpc-message").is_some_and(|m| {
            // tonic percent-encodes the message: spaces are `%20`.
            m.as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
                || m.as_bytes()
                    .starts_with(b"Error, decoded message length too large")
        });
    if oversized {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
        return Some(tonic::Code::ResourceExhausted);
    }
    Some(code)
}

/// The response body, with its trailers passed through [`rewrite_and_read`] and counted.
struct Counted {
    inner: tonic::body::Body,
    counter: CallCounter,
}

impl Body for Counted {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = polled {
            let mut frame = frame;
            if let Some(trailers) = frame.trailers_mut()
                && let Some(code) = rewrite_and_read(trailers)
            {
                this.counter.count(code);
            }
            return Poll::Ready(Some(Ok(frame)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_counted_under_its_own_name_and_nothing_else_is() {
        for (path, label) in [
            (
                "/qistatus.v1.OperationStatusService/GetOperation",
                "GetOperation",
            ),
            (
                "/qistatus.v1.OperationStatusService/ListByStatus",
                "ListByStatus",
            ),
            (
                "/qistatus.v1.OperationStatusService/WatchOperation",
                "WatchOperation",
            ),
            ("/qistatus.v1.OperationStatusService/GetFlow", "GetFlow"),
            (
                "/qistatus.v1.MaintenanceService/SaveSnapshot",
                "SaveSnapshot",
            ),
            ("/qistatus.v1.MaintenanceService/GetStats", "GetStats"),
            ("/grpc.health.v1.Health/Check", "Check"),
            ("/grpc.health.v1.Health/Watch", "Watch"),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "ServerReflectionInfo",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "ServerReflectionInfo",
            ),
            // A known method's name under another service, and no service at all.
            ("/evil.Service/GetOperation", "other"),
            ("/GetOperation", "other"),
            (
                "/qistatus.v1.OperationStatusService/DeleteEverything",
                "other",
            ),
        ] {
            assert_eq!(method_label(path), label, "{path}");
        }
        // Each of the contract's methods has a label of its own: a new RPC needs no list.
        use prost::Message as _;
        let contract = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("the contract's descriptors decode");
        let mut counted = 0;
        for file in &contract.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert_eq!(method_label(&path), method.name(), "{path}");
                    counted += 1;
                }
            }
        }
        assert!(counted >= 6, "{counted} methods in the contract");
    }
}
