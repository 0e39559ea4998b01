//! Compiles piecestore/v1/piecestore.proto into its messages, the gRPC client (the core's
//! `grpc://` store) and service (`piecestore serve`), and the descriptor set the reflection
//! service serves. protox parses the proto in Rust, so the build needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a target directory shared
    // by two checkouts reuses one compiled script for both.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto = root.join("piecestore/v1/piecestore.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("piecestore_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: a Get chunk is a slice of the piece, not a copy.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
