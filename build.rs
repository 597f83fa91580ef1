//! Compiles `proto/` with protox (pure Rust), so `cargo build` needs no system `protoc`,
//! and names the commit the binary is built from (`herd --version`, `herd_build_info`).

use std::{env, fs, path::PathBuf, process::Command};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rustc-env=HERD_COMMIT={}", commit());
    let fds = protox::compile(["herd/v1/herd.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Kept for gRPC server reflection, so grpcurl needs no .proto file.
    fs::write(out.join("herd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".herd.v1")
        // Hand-written, so that updates travel as bytes encoded once (src/peer/wire.rs).
        .extern_path(".herd.v1.LinkMessage", "crate::peer::wire::LinkMessage")
        .compile_fds(fds)?;
    Ok(())
}

/// `HERD_COMMIT` when set (an image build has no `.git`: deploy/test.sh passes it),
/// else `git rev-parse --short HEAD`, else "unknown".
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=HERD_COMMIT");
    if let Ok(c) = env::var("HERD_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch's ref and the
    // packed refs (a commit). Paths come from git, so worktrees work too.
    for (what, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
        if let Some(dir) = git(&["rev-parse", what]) {
            let path = PathBuf::from(dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    if let (Some(dir), Some(branch)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        let path = PathBuf::from(dir).join(branch);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    head
}
