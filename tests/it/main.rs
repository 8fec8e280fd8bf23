//! qistatus's integration tests, one binary with a module per concern: the real server on
//! ephemeral loopback ports, over real HTTP and real gRPC.
//!
//! - [`test_server`]: the server in-process (`qistatus::run` on port 0), with HTTP and gRPC
//!   helpers; most tests use it.
//! - [`process`]: the real binaries as processes, for what needs one (crashes, signals, log
//!   capture, the CLI, offline commands).
//! - [`peers`]: the programs of the real peers (nats-server, Chromium), found or installed.
//! - [`wait`]: waiting for what a user would see (`wait_until`), never a fixed sleep.
//! - [`qi_api`]: a stand-in for QI Tech's API, written from its pages.

mod peers;
mod process;
mod qi_api;
mod test_server;
mod wait;

mod admin;
mod backpressure;
mod bad_input;
mod cli;
mod cluster;
mod connections;
mod console;
mod crash;
mod delivery_order;
mod every_kind;
mod flow;
mod get_operation;
mod integrity;
mod list;
mod logs;
mod memory;
mod overdue;
mod rebuild;
mod reconciliation;
mod recovery;
mod restart;
mod security;
mod seeds;
mod snapshot;
mod upgrade;
mod watch;
