//! The wire side of the change feed: a subscription, seen as the stream tonic serves.
//!
//! Like tonic-health's `WatchStream` over its reporter, [`WatchStream`] wraps a
//! [`Subscription`] and converts each item at the last step: events into
//! `WatchOperationResponse`s, feed errors into a `Status` (through [`ApiError`], the one place
//! errors become statuses).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::Status;

use super::ApiError;
use crate::feed::Subscription;
use crate::pb;

/// One watcher's stream of responses.
#[derive(Debug)]
pub struct WatchStream {
    subscription: Subscription,
}

impl WatchStream {
    pub(crate) fn new(subscription: Subscription) -> Self {
        WatchStream { subscription }
    }
}

impl Stream for WatchStream {
    type Item = Result<pb::WatchOperationResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.subscription.poll_recv(cx).map(|item| {
            item.map(|result| {
                result
                    .map(pb::WatchOperationResponse::from)
                    .map_err(|e| ApiError::from(e).into())
            })
        })
    }
}
