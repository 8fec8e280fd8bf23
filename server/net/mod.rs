//! The network edge shared by both listeners: which connections are admitted, how long they
//! may take to say something, and (for the intake) how HTTP is served on them.
//!
//! Every bound here exists so that a slow, idle or hostile client cannot take the file
//! descriptors, tasks or memory that real senders and callers need; see each module.

mod accept;
mod admission;
mod fd_limit;
mod http;

pub use accept::listen;
pub(crate) use accept::{ConnectionInfo, accept_connections};
pub(crate) use admission::{Admission, AtCapacity};
pub(crate) use fd_limit::connection_budget;
pub(crate) use http::{HttpTimeouts, serve as serve_http};
