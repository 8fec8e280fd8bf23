//! Who may talk to qistatus: webhook senders ([`webhook`]) and gRPC clients ([`grpc`]).

pub mod grpc;
pub mod webhook;
