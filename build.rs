//! Compiles `proto/` with protox (pure Rust), so `cargo build` needs no system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["herd/v1/herd.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Kept for gRPC server reflection, so grpcurl needs no .proto file.
    fs::write(out.join("herd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".herd.v1")
        .compile_fds(fds)?;
    Ok(())
}
