//! The gRPC API of `piecestore serve`, version 1 (`proto/piecestore/v1/piecestore.proto` in the
//! repository): its messages, the tonic client that the core's `grpc://` store uses, and the
//! service the server implements, generated at build time (protox and tonic-prost-build; no
//! protoc). One crate, so that the client and the server are built from the same proto.

/// `piecestore.v1`: the messages, `piece_store_client` and `piece_store_server`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("piecestore.v1");

    /// The proto's encoded descriptor set (what server reflection serves).
    pub const DESCRIPTOR: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/piecestore_v1_descriptor.bin"));
}
