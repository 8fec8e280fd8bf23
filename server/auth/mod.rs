//! Who may talk to qistatus: webhook senders ([`webhook`]) and gRPC clients ([`grpc`]).

pub(crate) mod grpc;
pub(crate) mod webhook;
