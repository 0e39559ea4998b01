//! Peer-to-peer piece exchange over rust-libp2p: TCP, noise, yamux, and the request-response
//! protocol `/piecestore/piece/1` (see [`wire`]).
//!
//! A [`PeerNode`] is one libp2p swarm run by a task of its own. It answers other nodes from a
//! [`Responder`] (a `PieceStore`, read here only: a miss is never asked on to this node's own
//! peers) when they are on the allow-list, and asks them for pieces on this node's behalf:
//! [`PeerNode::fetch`], [`PeerNode::head`], [`PeerNode::push`]. [`PeerTier`] makes a node the
//! core's peer tier ([`piecestore::PieceStore::set_peers`]), and [`PeerDestination`] the
//! destination of a `replicate` ([`piecestore::PieceStore::copy_to`]).
//!
//! Every piece that arrives is checked against the CRC32C its sender gave (the core checks it
//! once more); a peer that sends bytes that do not match is skipped.

mod node;
mod runner;
mod stats;
mod tier;
pub mod wire;

use std::path::Path;

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use piecestore::{PieceMeta, PieceStore};

pub use libp2p::identity::Keypair;
pub use node::{MAX_PROVIDED, PeerNode};
pub use stats::{FETCHED, PeerStats, SERVED};
pub use tier::{PeerDestination, PeerTier};
pub use wire::{Request, Response};

/// Why the P2P node could not start or a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// A bad `[PieceStore.Peers]` setting (an address, a peer id).
    #[error("[PieceStore.Peers]: {0}")]
    Config(String),
    /// The identity key could not be read or created.
    #[error("the P2P identity key {path}: {detail}")]
    Identity {
        /// The key file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The transport could not be built or could not listen.
    #[error("P2P transport: {0}")]
    Transport(String),
    /// A request to a peer failed: it could not be reached, timed out, or closed the
    /// connection before answering.
    #[error("peer {peer}: {detail}")]
    Unreachable {
        /// The peer id.
        peer: PeerId,
        /// What happened.
        detail: String,
    },
    /// The node has stopped.
    #[error("the P2P node has stopped")]
    Stopped,
}

/// What a node answers other nodes from.
pub trait Responder: Send + Sync + 'static {
    /// The whole piece `key` and its CRC32C.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<(Bytes, u32)>>;
    /// The size and checksum of the piece `key`.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<PieceMeta>>;
    /// Stores a piece a peer pushed (create-only), its CRC32C already checked.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, piecestore::Result<()>>;
    /// A line that says what this node serves (for `piecestore peers`).
    fn describe(&self) -> String;
}

/// A store answers from its own pieces only (never its peer tier, so that a request does not
/// travel on from peer to peer).
impl Responder for PieceStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<(Bytes, u32)>> {
        Box::pin(async move {
            let (bytes, crc) = self.get_here_with_crc(key).await?;
            // A piece stored without a checksum (AllowUnverified) travels with one computed
            // now: the receiver still learns whether the transfer kept it intact.
            let crc = crc.unwrap_or_else(|| piecestore::checksum::crc32c(&bytes));
            Ok((bytes, crc))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<PieceMeta>> {
        Box::pin(PieceStore::head_here(self, key))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, piecestore::Result<()>> {
        Box::pin(PieceStore::put(self, key, bytes))
    }

    fn describe(&self) -> String {
        format!(
            "piecestore {} serving {} ({})",
            env!("CARGO_PKG_VERSION"),
            self.shard_labels().join(", "),
            self.packing()
        )
    }
}

/// Reads this node's identity key from `path`, or creates it there (mode 0600, written to a
/// temporary file and renamed, so that a crash never leaves half a key).
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, P2pError> {
    let err = |detail: String| P2pError::Identity {
        path: path.display().to_string(),
        detail,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        "the P2P identity key is readable by others; chmod 600 it"
                    );
                }
            }
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                err(format!(
                    "not a libp2p key ({e}); remove it to make a new one"
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = opts.open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                Ok(())
            };
            write().map_err(|e| err(e.to_string()))?;
            // Two processes creating the key at once: the first rename wins, and both read
            // the one that is there after.
            if std::fs::hard_link(&tmp, path).is_err() && !path.exists() {
                let _ = std::fs::remove_file(&tmp);
                return Err(err("cannot be created".into()));
            }
            let _ = std::fs::remove_file(&tmp);
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A peer as configured: its id and the addresses to dial it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's id.
    pub id: PeerId,
    /// Where to dial it (without the `/p2p/…` part).
    pub addrs: Vec<Multiaddr>,
}

/// Parses `/ip4/…/tcp/…/p2p/PEER_ID` (the form `piecestore serve` prints).
pub fn parse_peer_addr(s: &str) -> Result<PeerAddr, P2pError> {
    let mut addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| P2pError::Config(format!("{s:?} is not a multiaddr: {e}")))?;
    match addr.pop() {
        Some(Protocol::P2p(id)) => Ok(PeerAddr {
            id,
            addrs: if addr.is_empty() { vec![] } else { vec![addr] },
        }),
        _ => Err(P2pError::Config(format!(
            "{s:?} does not end in /p2p/PEER_ID (`piecestore serve` prints its full address)"
        ))),
    }
}

/// A peer named on the command line: a full multiaddr (`…/p2p/ID`), or a bare peer id that
/// the node knows an address of (its bootstrap peers).
pub async fn resolve_peer(node: &PeerNode, s: &str) -> Result<PeerAddr, P2pError> {
    if s.starts_with('/') {
        return parse_peer_addr(s);
    }
    let id: PeerId = s.trim().parse().map_err(|e| {
        P2pError::Config(format!("{s:?} is neither a multiaddr nor a peer id: {e}"))
    })?;
    node.known_peers()
        .await
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| {
            P2pError::Config(format!(
                "no address is known for peer {id}: give its full multiaddr, or add it to Bootstrap"
            ))
        })
}
