//! The domain: pure functions from webhooks to operations. No I/O, no clocks, no async.
//!
//! - [`catalog`]: what is known about each kind, as data;
//! - [`webhook`]: raw bytes -> [`webhook::WebhookEnvelope`] (or a quarantine reason);
//! - [`reconcile`]: the set of an operation's webhooks -> its [`reconcile::Operation`];
//! - [`overdue`]: whether an operation has held its status longer than the catalog expects;
//! - [`flow`]: how long each stage takes, how late webhooks arrive, where cohorts are now;
//! - [`personal`]: personal data in a payload, masked for people's eyes;
//! - [`truth_table`]: the catalog as a table a business person can check.

pub mod catalog;
pub mod flow;
pub mod json;
pub mod overdue;
pub mod personal;
pub mod reconcile;
pub mod truth_table;
pub mod webhook;
