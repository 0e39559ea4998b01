//! The peer tier: other nodes that may hold a piece this store cannot return.
//!
//! The core knows no network. A front end that speaks to peers (the P2P node of
//! `piecestore-server`) implements [`PeerTier`] and hands it to
//! [`crate::PieceStore::set_peers`]; from then on a get that this store cannot answer asks it
//! before failing, and whatever it returns is verified against its CRC32C here, once more.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::backend::PieceMeta;
use crate::error::Result;

/// A piece fetched from a peer: its bytes and the CRC32C the peer sent with them.
#[derive(Debug, Clone)]
pub struct PeerPiece {
    /// The piece's bytes.
    pub bytes: Bytes,
    /// Its CRC32C, as the sender knows it (checked against `bytes` before use).
    pub crc32c: u32,
    /// Who sent it (a peer id), for logs and errors.
    pub from: String,
}

/// Other nodes to ask for a piece (see the module docs).
pub trait PeerTier: Send + Sync + 'static {
    /// The whole piece `key` from the first peer that has it and sends it intact; `Ok(None)`
    /// when no peer has it. A peer that fails, refuses, or sends bytes that do not match
    /// their CRC32C is skipped for the next one.
    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PeerPiece>>>;

    /// The size and checksum of the piece `key` at the first peer that has it; `Ok(None)` when
    /// none has it. The default asks no one.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<PieceMeta>>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }
}
