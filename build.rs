//! Compiles `proto/` into Rust with `protox` (a pure-Rust protobuf compiler), so building
//! qistatus needs nothing but cargo: no system `protoc`, ever.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/qistatus/v1/qistatus.proto",
        "proto/qistatus/v1/maintenance.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(protos, ["proto"])?;

    // The encoded descriptor set feeds gRPC server reflection.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("qistatus_descriptor.bin"), bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The service side is the server's: a client-only build (no `server` feature) skips it.
        .server_mod_attribute("qistatus.v1", r#"#[cfg(feature = "server")]"#)
        .compile_fds(descriptors)?;

    Ok(())
}
