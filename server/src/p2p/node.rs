//! The P2P node: a libp2p swarm and the handle that asks it for things.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libp2p::kad;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, mdns, noise, tcp, yamux};
use piecestore::config::PeersOptions;
use piecestore::{Error, PieceMeta};
use tokio::sync::{mpsc, oneshot, watch};

use super::runner::Runner;
use super::wire::{self, Request, Response};
use super::{Keypair, P2pError, PeerAddr, PeerStats, Responder, parse_peer_addr};

/// Who may fetch from and push to a node.
#[derive(Debug, Clone)]
pub(super) enum Allow {
    Anyone,
    Only(HashSet<PeerId>),
}

impl Allow {
    pub(super) fn parse(list: &[String]) -> Result<Allow, P2pError> {
        if list.iter().any(|s| s.trim() == "*") {
            return Ok(Allow::Anyone);
        }
        let ids = list
            .iter()
            .map(|s| {
                s.trim()
                    .parse::<PeerId>()
                    .map_err(|e| P2pError::Config(format!("Allow: {s:?} is not a peer id: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Allow::Only(ids))
    }

    pub(super) fn allows(&self, peer: &PeerId) -> bool {
        match self {
            Allow::Anyone => true,
            Allow::Only(ids) => ids.contains(peer),
        }
    }
}

/// The most pieces a node announces in the DHT.
pub const MAX_PROVIDED: usize = 100_000;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) piece: request_response::Behaviour<wire::Codec>,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
}

pub(super) enum Cmd {
    Request {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        req: Request,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        res: Response,
    },
    Known(oneshot::Sender<Vec<PeerAddr>>),
    Provide(String),
    Providers {
        key: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Stop,
}

/// One P2P node: a libp2p swarm run by a task of its own. Cheap to clone; the swarm stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PeerNode {
    tx: mpsc::UnboundedSender<Cmd>,
    id: PeerId,
    listening: watch::Receiver<Vec<Multiaddr>>,
    stats: Arc<PeerStats>,
    bootstrap: Arc<Vec<PeerAddr>>,
}

impl std::fmt::Debug for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNode").field("id", &self.id).finish()
    }
}

impl PeerNode {
    /// Starts a node with identity `key`: it listens on `options.listen` (none: it only asks),
    /// answers allow-listed peers from `responder` (none: it refuses every request), and
    /// knows `options.bootstrap` (and, with `Mdns`, the peers it finds on the LAN).
    pub async fn start(
        options: &PeersOptions,
        key: Keypair,
        responder: Option<Arc<dyn Responder>>,
    ) -> Result<PeerNode, P2pError> {
        let allow = Allow::parse(&options.allow)?;
        let bootstrap = options
            .bootstrap
            .iter()
            .map(|s| parse_peer_addr(s))
            .collect::<Result<Vec<_>, _>>()?;
        let listen = options
            .listen
            .iter()
            .map(|s| {
                s.parse::<Multiaddr>()
                    .map_err(|e| P2pError::Config(format!("Listen: {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = key.public().to_peer_id();
        let timeout = options.timeout;
        let use_mdns = options.mdns;
        let server_mode = !listen.is_empty();
        let transport = |e: &dyn std::fmt::Display| P2pError::Transport(e.to_string());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport(&e))?
            .with_behaviour(|key| {
                let piece = request_response::Behaviour::new(
                    [(wire::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(timeout)
                        .with_max_concurrent_streams(1024),
                );
                let mdns = if use_mdns {
                    match mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        key.public().to_peer_id(),
                    ) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(error = %e, "mDNS is off: it cannot start here");
                            None
                        }
                    }
                } else {
                    None
                };
                let me = key.public().to_peer_id();
                let mut kad_config = kad::Config::new(StreamProtocol::new("/piecestore/kad/1"));
                kad_config.set_query_timeout(timeout);
                let store = kad::store::MemoryStore::with_config(
                    me,
                    kad::store::MemoryStoreConfig {
                        max_provided_keys: MAX_PROVIDED,
                        ..Default::default()
                    },
                );
                let mut kad = kad::Behaviour::with_config(me, store, kad_config);
                // A node that listens answers DHT queries; one that only asks does not.
                kad.set_mode(Some(if server_mode {
                    kad::Mode::Server
                } else {
                    kad::Mode::Client
                }));
                let identify = identify::Behaviour::new(identify::Config::new(
                    "/piecestore/1".into(),
                    key.public(),
                ));
                Behaviour {
                    piece,
                    kad,
                    identify,
                    mdns: mdns.into(),
                }
            })
            .map_err(|e| transport(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for addr in listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| P2pError::Transport(format!("cannot listen on {addr}: {e}")))?;
        }
        for p in &bootstrap {
            for a in &p.addrs {
                swarm.add_peer_address(p.id, a.clone());
                swarm.behaviour_mut().kad.add_address(&p.id, a.clone());
            }
        }
        if !bootstrap.is_empty() {
            // Joins the DHT through the bootstrap peers (they answer if they listen).
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (listen_tx, listening) = watch::channel(Vec::new());
        let stats = Arc::new(PeerStats::default());
        let node = PeerNode {
            tx: tx.clone(),
            id,
            listening,
            stats: stats.clone(),
            bootstrap: Arc::new(bootstrap.clone()),
        };
        let run = Runner {
            swarm,
            rx,
            tx: tx.downgrade(),
            responder,
            allow,
            stats,
            pending: HashMap::new(),
            providers: HashMap::new(),
            provide_pushed: options.provide,
            known: bootstrap.into_iter().map(|p| (p.id, p.addrs)).collect(),
            listen_tx,
        };
        tokio::spawn(run.run());
        Ok(node)
    }

    /// Stops the node at once: its connections close, requests in flight to it and from it
    /// fail (every clone of the handle then gets [`P2pError::Stopped`]).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.id
    }

    /// The node's counters.
    pub fn stats(&self) -> Arc<PeerStats> {
        self.stats.clone()
    }

    /// The addresses the node listens on, each ending in `/p2p/ID` (what peers put in their
    /// `Bootstrap`), once it listens on at least one (or after `wait`, whatever it has).
    pub async fn listen_addrs(&self, wait: Duration) -> Vec<Multiaddr> {
        let mut rx = self.listening.clone();
        let _ = tokio::time::timeout(wait, rx.wait_for(|a| !a.is_empty())).await;
        let addrs = rx.borrow().clone();
        addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(self.id)))
            .collect()
    }

    /// Announces in the DHT that this node holds `key` (a provider record at the peers
    /// closest to it). Past [`MAX_PROVIDED`] pieces, announcements are dropped.
    pub fn provide(&self, key: &str) {
        let _ = self.tx.send(Cmd::Provide(key.to_string()));
    }

    /// The peers the DHT says hold `key` (this node excluded): the first answer that names
    /// any, or none once the query ends (bounded by `Timeout`).
    pub async fn providers(&self, key: &str) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Cmd::Providers {
                key: key.to_string(),
                reply,
            })
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The bootstrap peers, then the peers found by mDNS.
    pub async fn known_peers(&self) -> Vec<PeerAddr> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Known(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The configured bootstrap peers.
    pub fn bootstrap(&self) -> &[PeerAddr] {
        &self.bootstrap
    }

    /// Sends `req` to `peer` (dialling `addrs` if not connected) and waits for its answer.
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        req: Request,
    ) -> Result<Response, P2pError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request {
                peer,
                addrs,
                req,
                reply,
            })
            .map_err(|_| P2pError::Stopped)?;
        match rx.await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(detail)) => Err(P2pError::Unreachable { peer, detail }),
            Err(_) => Err(P2pError::Stopped),
        }
    }

    /// The piece `key` from `peer` and the CRC32C the peer sent, verified: `Ok(None)` when
    /// the peer has no such piece; an error when it refuses, fails, or sends bytes that do not
    /// match their checksum.
    pub async fn fetch(
        &self,
        peer: &PeerAddr,
        key: &str,
    ) -> piecestore::Result<Option<(Bytes, u32)>> {
        let req = Request::Get {
            key: key.into(),
            offset: 0,
            len: None,
        };
        let res = self.request(peer.id, peer.addrs.clone(), req).await;
        let stats = &self.stats;
        match res {
            Ok(Response::Piece { crc32c, bytes }) => {
                if piecestore::checksum::crc32c(&bytes) != crc32c {
                    stats.count_fetched(3);
                    return Err(Error::Corrupt {
                        key: key.into(),
                        backend: format!("peer {}", peer.id),
                        detail: "the bytes it sent do not match their CRC32C".into(),
                    });
                }
                stats.count_fetched(0);
                stats.add_received(bytes.len() as u64);
                Ok(Some((bytes, crc32c)))
            }
            Ok(Response::NotFound(_)) => {
                stats.count_fetched(1);
                Ok(None)
            }
            Ok(Response::Denied(d)) => {
                stats.count_fetched(2);
                Err(Error::Unauthorized {
                    backend: format!("peer {}", peer.id),
                    message: d,
                })
            }
            other => {
                stats.count_fetched(4);
                Err(answer_error(&peer.id, key, other))
            }
        }
    }

    /// The size and checksum of `key` at `peer` (`NotFound` when it has none).
    pub async fn head(&self, peer: &PeerAddr, key: &str) -> piecestore::Result<PieceMeta> {
        let res = self
            .request(
                peer.id,
                peer.addrs.clone(),
                Request::Head { key: key.into() },
            )
            .await;
        match res {
            Ok(Response::Meta {
                size,
                crc32c,
                last_modified,
            }) => Ok(PieceMeta {
                key: key.into(),
                size,
                crc32c,
                last_modified,
            }),
            other => Err(answer_error(&peer.id, key, other)),
        }
    }

    /// Stores `bytes` as `key` at `peer` (create-only; the same bytes again succeed).
    pub async fn push(&self, peer: &PeerAddr, key: &str, bytes: Bytes) -> piecestore::Result<()> {
        let crc32c = piecestore::checksum::crc32c(&bytes);
        let req = Request::Put {
            key: key.into(),
            crc32c,
            bytes,
        };
        match self.request(peer.id, peer.addrs.clone(), req).await {
            Ok(Response::Stored) => Ok(()),
            other => Err(answer_error(&peer.id, key, other)),
        }
    }

    /// What `peer` says it is and serves.
    pub async fn info(&self, peer: &PeerAddr) -> piecestore::Result<String> {
        match self
            .request(peer.id, peer.addrs.clone(), Request::Info)
            .await
        {
            Ok(Response::Info(text)) => Ok(text),
            other => Err(answer_error(&peer.id, "", other)),
        }
    }
}

/// The engine's error for an answer that is not the one asked for.
fn answer_error(peer: &PeerId, key: &str, res: Result<Response, P2pError>) -> Error {
    let backend = format!("peer {peer}");
    let failed = |message: String, retryable: bool| Error::Backend {
        op: "peer request",
        key: (!key.is_empty()).then(|| key.to_string()),
        backend: backend.clone(),
        message,
        retryable,
    };
    match res {
        Ok(Response::NotFound(_)) => Error::NotFound {
            key: key.into(),
            backend,
        },
        Ok(Response::Denied(message)) => Error::Unauthorized { backend, message },
        Ok(Response::AlreadyExists(_)) => Error::AlreadyExists {
            key: key.into(),
            backend,
        },
        Ok(Response::Corrupt(detail)) => Error::Corrupt {
            key: key.into(),
            backend,
            detail,
        },
        Ok(Response::Invalid(message)) => failed(message, false),
        Ok(Response::Failed(message)) => failed(message, true),
        Ok(other) => failed(format!("an unexpected answer ({})", other.name()), false),
        Err(e) => failed(e.to_string(), true),
    }
}
