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
    store_id: String,
}

impl WatchStream {
    /// The stream of `subscription`, whose progress messages name the store `store_id`.
    pub(crate) fn new(subscription: Subscription, store_id: String) -> Self {
        WatchStream {
            subscription,
            store_id,
        }
    }
}

impl Stream for WatchStream {
    type Item = Result<pb::WatchOperationResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.subscription.poll_recv(cx).map(|item| {
            item.map(|result| {
                let mut response = result
                    .map(pb::WatchOperationResponse::from)
                    .map_err(ApiError::from)?;
                if let Some(pb::watch_operation_response::Event::Progress(progress)) =
                    &mut response.event
                {
                    progress.store_id.clone_from(&this.store_id);
                }
                Ok(response)
            })
        })
    }
}
