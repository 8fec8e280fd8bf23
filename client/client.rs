//! A small Rust client for qistatus's gRPC API, shared by the `qistatus` CLI and any Rust
//! service that wants typed calls without writing the plumbing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qistatus::client::ClientError> {
//! let mut client = qistatus::client::Client::connect("http://127.0.0.1:50051").await?;
//! let debt = client.get("871059bd-4014-41ad-82b4-28275ff0e67b", Some("debt")).await?;
//! println!("{} is {}", debt.key, debt.status);
//! # Ok(()) }
//! ```

use tonic::transport::{Channel, Endpoint};

use crate::pb;
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
    /// The server could not be reached.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error.
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
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    format!("{message} ({:?})", status.code())
}

/// A connection to a qistatus server.
#[derive(Debug, Clone)]
pub struct Client {
    inner: OperationStatusServiceClient<Channel>,
}

impl Client {
    /// Connects to the server at `address` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(address: &str) -> Result<Client, ClientError> {
        let endpoint =
            Endpoint::from_shared(address.to_owned()).map_err(|e| ClientError::InvalidAddress {
                address: address.to_owned(),
                reason: e.to_string(),
            })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                address: address.to_owned(),
                source,
            })?;
        Ok(Client {
            inner: OperationStatusServiceClient::new(channel),
        })
    }

    /// The operation with `key` (and `kind`, needed only when the key names several kinds),
    /// with its full history.
    pub async fn get(
        &mut self,
        key: &str,
        kind: Option<&str>,
    ) -> Result<pb::Operation, ClientError> {
        let response = self
            .inner
            .get_operation(pb::GetOperationRequest {
                key: key.to_owned(),
                kind: kind.unwrap_or_default().to_owned(),
                include_raw_payload: false,
            })
            .await?;
        response
            .into_inner()
            .operation
            .ok_or_else(|| tonic::Status::internal("the server sent no operation").into())
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut OperationStatusServiceClient<Channel> {
        &mut self.inner
    }
}
