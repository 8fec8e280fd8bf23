//! RESOURCE_EXHAUSTED for a request message over the limit.
//!
//! tonic refuses such a message with OUT_OF_RANGE before any handler runs, and says so in
//! the response's trailers. gRPC's status code for "larger than allowed" is
//! RESOURCE_EXHAUSTED (clients treat the two differently), so this rewrites exactly that
//! answer, recognised by tonic's message, in the headers or the trailers, and nothing else.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame};

/// Rewrites tonic's "decoded message length too large" answer to RESOURCE_EXHAUSTED.
pub(crate) fn oversized_request_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    rewrite(&mut parts.headers);
    http::Response::from_parts(parts, tonic::body::Body::new(Rewritten { inner: body }))
}

fn rewrite(headers: &mut HeaderMap) {
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
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
    }
}

/// The response body with its trailers passed through [`rewrite`].
struct Rewritten {
    inner: tonic::body::Body,
}

impl Body for Rewritten {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        rewrite(trailers);
                    }
                    frame
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
