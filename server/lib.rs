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
//!                  store: the log (source of truth, one fsync per batch)
//!                         └─▶ view: sled key spaces, applied before the ack, replayed
//!                             after a crash (changes, dedupe, operations, indexes)
//!                                                                          │
//!  services ◀──gRPC── grpc (GetOperation, ListByStatus) ◀──────────────────┤
//!           ◀──gRPC── grpc::watch ◀── feed (resumable, transport-free) ◀───┘
//! ```
//!
//! # Modules, in the one direction their dependencies point
//!
//! `domain` ← `store` ← `cluster` ← `sequencer` ← `reload` ← (`intake`, `feed`, `listing`,
//! `flow_window`, `overdue_clock`) ← `recovery` (over `qitech_api`) ← (`grpc`, `console`) ← `server` ←
//! `config` ← `main`.
//! Leaves the others use: `clock` (the one clock, passed in: the system's, or a test's),
//! `durable_file` (a small file written whole or not at all),
//! `auth` and `tls` (who may post and call), `metrics` (it implements the store's
//! `BatchReport`; the store never names it).
//! Wire code (HTTP, gRPC, protobuf) lives only at the edge: `intake`, `grpc`, `admin`,
//! `console`, `net`, `auth`, `qitech_api` (the one outbound call, to QI) and `server`.
//!
//! - [`domain`]: pure functions, no I/O. [`domain::webhook`] reads every webhook shape;
//!   [`domain::reconcile`] derives an operation from the set of its webhooks, whatever their
//!   order; [`domain::catalog`] is the data both use.
//! - [`store`]: the append-only log of every webhook is the source of truth; sled is a
//!   view materialized from it; one writer thread batches, logs, applies and acknowledges.
//!   One door: its submodules are private, what others use is re-exported from it.
//! - [`cluster`]: several nodes on one NATS JetStream stream: the stream orders webhooks,
//!   every node's writer decides the same about each (no wire types beyond NATS's own).
//! - `sequencer`: where webhooks and overdue proposals are put in order, this node's writer
//!   or the cluster's stream; the one place that knows which (the others ask it).
//! - `reload`: the catalog in effect (its file, the handle every part reads) and reloads.
//! - `intake`: `POST /webhooks` (axum); answers once the writer has the webhook on disk (on
//!   a cluster node: once JetStream acknowledged it and this node's view applied it, or
//!   once it holds it on its disk while the stream cannot take it).
//! - `feed`: the change feed, a resumable stream of changes per subscriber, in domain terms.
//! - `listing`: the one list query (statuses, a phase, the overdue ones) the API and the
//!   console ask, checked once, paged with one tamper-evident page token; `flow_window`: the
//!   one flow question (a kind, a window of days) they ask, answered from the flow counters.
//! - `overdue_clock`: proposes the operations that fell overdue, so that watchers hear of
//!   silence too (to the writer, or to a cluster's stream, which then orders and dates them).
//! - `qitech_api`: QI Tech's own API (its events listing and resend), signed as QI's pages
//!   say; `recovery`: fetches back what QI failed to deliver through it (periodic passes
//!   from a durable cursor, overdue operations at once, asks by hand), one node of a cluster
//!   at a time.
//! - `grpc`: the `qistatus.v1` service over the store and the feed; domain-to-wire
//!   conversions live beside it.
//! - `admin`: probes, metrics and maintenance on the admin listener; `console`: web pages
//!   for people on it (`/ui/`), server-rendered, with personal data masked
//!   ([`domain::personal`]) until revealed on the record.
//! - `net`: accepting connections under a bound (admission), HTTP serving with timeouts.
//! - `metrics`: the Prometheus registry every edge reports to.
//! - [`run`] wires it all on bound listeners and drains on shutdown; [`config`] is the
//!   one clap struct of `qistatus-server`.
//! - [`client`]: the Rust client of the gRPC API (the `qistatus` CLI in `client/` uses it);
//!   [`pb`]: the generated protobuf types.
//!
//! # Features
//!
//! `server` (default) builds everything above. Without it (`default-features = false`) the
//! crate is [`pb`] and [`client`] only: tonic and prost, no sled, axum or server crypto.
//!
//! # Guarantees
//!
//! - A webhook is acknowledged only after it is durably stored.
//! - The same webhook (the same JSON value) is stored once.
//! - An operation's state depends only on the set of its distinct webhooks.
//! - Sequence numbers are gap-free in commit order; watchers see every matching change once,
//!   in order, and can resume from any retained sequence.

#![warn(missing_docs)]
// Module docs are written for the people who work on qistatus and name private modules and
// items on purpose (the map above, each store module's guarantees); they are read with
// `cargo doc --document-private-items`, which CI builds with warnings as errors.
#![allow(rustdoc::private_intra_doc_links)]

pub mod backoff;
pub mod client;
pub mod pb;

#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
mod auth;
#[cfg(feature = "server")]
mod clock;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
mod console;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
mod durable_file;
#[cfg(feature = "server")]
mod feed;
#[cfg(feature = "server")]
mod flow_window;
#[cfg(feature = "server")]
mod grpc;
#[cfg(feature = "server")]
mod intake;
#[cfg(feature = "server")]
mod listing;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod net;
#[cfg(feature = "server")]
mod overdue_clock;
#[cfg(feature = "server")]
mod qitech_api;
#[cfg(feature = "server")]
mod recovery;
#[cfg(feature = "server")]
mod reload;
#[cfg(feature = "server")]
mod sequencer;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "cli")]
mod snapshot_signature;
#[cfg(feature = "cli")]
pub mod standard_webhooks;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
mod tls;

// What running a server takes: the entry point and every type its settings are made of.
#[cfg(feature = "server")]
pub use admin::AdminLimits;
#[cfg(feature = "server")]
pub use auth::grpc::BearerTokens;
#[cfg(feature = "server")]
pub use auth::response_signing::ResponseSigner;
#[cfg(feature = "server")]
pub use auth::webhook::{KeyError, WebhookVerifier};
/// The clock the server reads the time of day from, and the manual one tests drive it with.
#[cfg(feature = "server")]
pub use clock::{Clock, ManualClock};
#[cfg(feature = "server")]
pub use feed::FeedSettings;
#[cfg(feature = "server")]
pub use grpc::GrpcLimits;
#[cfg(feature = "server")]
pub use intake::IntakeLimits;
/// Binds a listener with the backlog the server wants (see its docs).
#[cfg(feature = "server")]
pub use net::listen;
#[cfg(feature = "server")]
pub use qitech_api::{QiApiError, QiApiSettings};
#[cfg(feature = "server")]
pub use recovery::RecoverySettings;
#[cfg(feature = "server")]
pub use recovery::by_hand::{ByHandReport, recover_by_hand};
/// The built-in catalog extended by a catalog file, as the server loads it at start.
#[cfg(feature = "server")]
pub use reload::load_catalog;
#[cfg(feature = "server")]
pub use server::{Listeners, ServerError, Settings, run, shutdown_signal};
/// Signed snapshots: what the CLI's `snapshot save --key-file` writes and `restore
/// --snapshot-key-file` checks.
#[cfg(feature = "cli")]
pub use snapshot_signature::{snapshot_signature, snapshot_signed};
#[cfg(feature = "server")]
pub use store::WriterLimits;
#[cfg(feature = "server")]
pub use tls::{TlsError, TlsIdentity};
