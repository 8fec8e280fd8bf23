//! qistatus turns QI Tech's webhooks into a live, queryable status of every operation.
//!
//! # How data flows
//!
//! ```text
//!  QI Tech ──HTTP──▶ intake ──▶ auth::webhook ──▶ domain::webhook ──▶ store::writer
//!                   (axum)      (signatures)      (normalize, pure)   (single writer,
//!                                                                      group commit)
//!                                                                          │
//!                        domain::reconcile (set of webhooks -> operation) ◀┤
//!                                                                          ▼
//!                             store: payload log + sled key spaces (log, changes,
//!                                    dedupe, operations, status index, quarantine)
//!                                                                          │
//!  services ◀──gRPC── grpc (GetOperation, ListByStatus) ◀──────────────────┤
//!           ◀──gRPC── watch (resumable streams over the change feed) ◀─────┘
//! ```
//!
//! - [`intake`]: `POST /webhooks`. Verifies the sender ([`auth`]), normalizes the body and
//!   waits until the writer has it on disk before answering.
//! - [`domain`]: pure functions, no I/O. [`domain::webhook`] reads every webhook shape into a
//!   [`domain::webhook::WebhookEnvelope`]; [`domain::reconcile`] derives an operation from
//!   the set of its webhooks, whatever their order; [`domain::catalog`] is the data both use.
//! - [`store`]: raw bodies in an append-only payload log, everything else in key spaces of
//!   one sled tree. [`store::writer`] is the only writer: batches, one atomic write, one
//!   flush, then acks; it also compacts the log past its retention.
//!   [`store::rebuild`] recomputes everything from the log under the current catalog.
//! - [`grpc`]: the `qistatus.v1` API over the store; generated code is fenced in [`pb`].
//! - [`watch`]: one task per watcher, reading the durable change feed from its own cursor.
//! - [`auth`]: QI Tech signatures, Standard Webhooks HMAC, gRPC bearer tokens; [`tls`]:
//!   rustls for both listeners; [`config`]: the one clap struct.
//! - [`server`]: `run(settings, listeners, shutdown)` wires it all and drains on shutdown.
//! - [`client`]: a small Rust client, used by the `qistatus` CLI.
//!
//! # Guarantees
//!
//! - A webhook is acknowledged only after it is durably stored.
//! - The same webhook (the same JSON value) is stored once.
//! - An operation's state depends only on the set of its distinct webhooks.
//! - Sequence numbers are gap-free in commit order; watchers see every matching change once,
//!   in order, and can resume from any retained sequence.

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
