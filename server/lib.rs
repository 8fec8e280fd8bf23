//! qistatus turns QI Tech's webhooks into a live, queryable status of every operation.
//!
//! # How data flows
//!
//! ```text
//!  QI Tech ──HTTP──▶ intake ──▶ domain::webhook ──▶ store::writer ──▶ store (sled)
//!                   (axum)      (normalize, pure)   (single writer,      │
//!                                                    group commit)       │
//!                                      domain::reconcile ◀──────────────┘
//!                                      (set of webhooks -> operation, pure)
//!  services ◀──gRPC── grpc (GetOperation, ListByStatus, WatchOperation) ◀── store
//! ```
//!
//! - [`intake`]: `POST /webhooks`. Normalizes the body and waits until the writer has it
//!   on disk before answering.
//! - [`domain`]: pure functions, no I/O. [`domain::webhook`] reads every webhook shape into a
//!   [`domain::webhook::WebhookEnvelope`]; [`domain::reconcile`] derives an operation from
//!   the set of its webhooks, whatever their order; [`domain::catalog`] is the data both use.
//! - [`store`]: sled trees (event log, dedupe, operations, status index, quarantine).
//!   [`store::writer`] is the only writer: batches, one transaction, one flush, then acks.
//! - [`grpc`]: the `qistatus.v1` API over the store; generated code is fenced in [`pb`].
//! - [`server`]: `run(settings, listeners, shutdown)` wires it all and drains on shutdown.
//! - [`client`]: a small Rust client, used by the `qistatus` CLI.
//!
//! # Guarantees
//!
//! - A webhook is acknowledged only after it is durably stored.
//! - The same webhook (the same JSON value) is stored once.
//! - An operation's state depends only on the set of its distinct webhooks.
//! - Sequence numbers are gap-free in commit order.

#![warn(missing_docs)]

pub mod auth;
#[path = "../client/client.rs"]
pub mod client;
pub mod config;
pub mod convert;
pub mod domain;
pub mod grpc;
pub mod intake;
pub mod pb;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
