//! A node's peers as the core's peer tier, and a peer as a copy's destination.

use bytes::Bytes;
use futures::future::BoxFuture;
use piecestore::peer::PeerPiece;
use piecestore::{Error, PieceMeta};

use super::PeerAddr;
use super::node::PeerNode;

/// A node's peers as the core's peer tier: a get that misses asks them in turn (the bootstrap
/// peers in their order, then those found by mDNS).
#[derive(Debug, Clone)]
pub struct PeerTier {
    node: PeerNode,
}

impl PeerTier {
    /// The peer tier of `node`.
    pub fn new(node: PeerNode) -> Self {
        PeerTier { node }
    }
}

impl PeerTier {
    /// Asks the peers the node knows (Bootstrap, then mDNS), then those the DHT names as
    /// holding `key`, until `ask` has an answer; `None` when no one has.
    async fn first<T, F, Fut>(&self, key: &str, ask: F) -> Option<T>
    where
        F: Fn(PeerAddr) -> Fut,
        Fut: std::future::Future<Output = piecestore::Result<Option<T>>>,
    {
        let known = self.node.known_peers().await;
        for peer in &known {
            match ask(peer.clone()).await {
                Ok(Some(t)) => return Some(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(peer = %peer.id, key, error = %e, "P2P: a peer failed; asking the next")
                }
            }
        }
        for id in self.node.providers(key).await {
            if known.iter().any(|p| p.id == id) {
                continue;
            }
            match ask(PeerAddr { id, addrs: vec![] }).await {
                Ok(Some(t)) => return Some(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(peer = %id, key, error = %e, "P2P: a provider failed; asking the next")
                }
            }
        }
        None
    }
}

impl piecestore::peer::PeerTier for PeerTier {
    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<Option<PeerPiece>>> {
        Box::pin(async move {
            Ok(self
                .first(key, |peer| async move {
                    // The core checks the sender's checksum once more.
                    Ok(self
                        .node
                        .fetch(&peer, key)
                        .await?
                        .map(|(bytes, crc32c)| PeerPiece {
                            bytes,
                            crc32c,
                            from: peer.id.to_string(),
                        }))
                })
                .await)
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<Option<PieceMeta>>> {
        Box::pin(async move {
            Ok(self
                .first(key, |peer| async move {
                    match self.node.head(&peer, key).await {
                        Ok(meta) => Ok(Some(meta)),
                        Err(Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await)
        })
    }
}

/// A peer as the destination of [`piecestore::PieceStore::copy_to`] (`piecestore replicate`).
#[derive(Debug, Clone)]
pub struct PeerDestination {
    node: PeerNode,
    peer: PeerAddr,
}

impl PeerDestination {
    /// Pushes to `peer` through `node`.
    pub fn new(node: PeerNode, peer: PeerAddr) -> Self {
        PeerDestination { node, peer }
    }
}

impl piecestore::migrate::Destination for PeerDestination {
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, piecestore::Result<PieceMeta>> {
        Box::pin(self.node.head(&self.peer, key))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, piecestore::Result<()>> {
        Box::pin(self.node.push(&self.peer, key, bytes))
    }
}
