//! The P2P node's counters, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::Response;

/// Counters of the P2P node, for `/metrics`.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Requests answered, by outcome: index into [`SERVED`].
    served: [AtomicU64; 6],
    /// Piece bytes sent to peers.
    sent_bytes: AtomicU64,
    /// Pieces asked of peers, by outcome: index into [`FETCHED`].
    fetched: [AtomicU64; 5],
    /// Piece bytes received from peers (verified).
    received_bytes: AtomicU64,
}

/// The outcomes of an answered request, as `/metrics` labels them.
pub const SERVED: [&str; 6] = ["ok", "not_found", "denied", "invalid", "corrupt", "failed"];
/// The outcomes of a request to a peer, as `/metrics` labels them.
pub const FETCHED: [&str; 5] = ["ok", "not_found", "denied", "corrupt", "failed"];

impl PeerStats {
    /// Requests this node answered, per outcome of [`SERVED`].
    pub fn served(&self) -> Vec<(&'static str, u64)> {
        SERVED
            .iter()
            .zip(&self.served)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests this node made of peers, per outcome of [`FETCHED`].
    pub fn fetched(&self) -> Vec<(&'static str, u64)> {
        FETCHED
            .iter()
            .zip(&self.fetched)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Piece bytes sent to peers.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// Verified piece bytes received from peers.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Counts an answer sent to a peer (and its piece's bytes).
    pub(super) fn count_served(&self, res: &Response) {
        let i = match res {
            Response::Piece { bytes, .. } => {
                self.sent_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                0
            }
            Response::Meta { .. } | Response::Stored | Response::Info(_) => 0,
            Response::NotFound(_) => 1,
            Response::Denied(_) => 2,
            Response::Invalid(_) | Response::AlreadyExists(_) => 3,
            Response::Corrupt(_) => 4,
            Response::Failed(_) => 5,
        };
        self.served[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request made of a peer, by its index in [`FETCHED`].
    pub(super) fn count_fetched(&self, i: usize) {
        self.fetched[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` verified bytes received from a peer.
    pub(super) fn add_received(&self, n: u64) {
        self.received_bytes.fetch_add(n, Ordering::Relaxed);
    }
}
