//! Generates the tonic/prost code. `protoc` comes from the `protoc-bin-vendored` crate, so
//! a fresh machine needs no system package for it (an explicit `PROTOC` still wins).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(p) => config.protoc_executable(p),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/storage.proto",
            "proto/coordinator.proto",
            "proto/worker.proto",
            "proto/replica.proto",
            "proto/raft.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
