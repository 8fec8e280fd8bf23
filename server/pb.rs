//! The generated protobuf and gRPC code for `qistatus.v1`, fenced in one module so that
//! nothing else in the crate has to know it is generated.
//!
//! The contract itself lives in `proto/qistatus/v1/qistatus.proto`; `build.rs` compiles it
//! with `protox`, so no system `protoc` is involved.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("qistatus.v1");

/// The encoded descriptor set of `proto/`, served by gRPC reflection so that `grpcurl` and
/// `buf curl` work without the proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/qistatus_descriptor.bin"));
