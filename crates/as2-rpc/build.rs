//! Generates the gRPC code for the gateway's proto packages.
//!
//! protoc comes from the `protoc-bin-vendored` crate so a fresh machine needs no
//! system package.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "as2/routing/v1/routing.proto",
    "as2/mdn/v1/mdn.proto",
    "as2/sender/v1/sender.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let well_known_types = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let protos: Vec<PathBuf> = PROTO_FILES
        .iter()
        .map(|file| proto_root.join(file))
        .collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    // The descriptors let the authorisation test go over every RPC there is.
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("as2_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &protos, &[proto_root, well_known_types])?;
    Ok(())
}
