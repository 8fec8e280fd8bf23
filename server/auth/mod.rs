//! Who may talk to qistatus: webhook senders ([`webhook`]) and gRPC clients ([`grpc`]); and
//! how qistatus proves its own acknowledgements ([`response_signing`]).

pub(crate) mod es512;
pub(crate) mod grpc;
pub(crate) mod response_signing;
pub(crate) mod webhook;
