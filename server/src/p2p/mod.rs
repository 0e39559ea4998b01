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

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, noise, tcp, yamux};
use piecestore::config::PeersOptions;
use piecestore::peer::PeerPiece;
use piecestore::{Error, PieceMeta, PieceStore};
use tokio::sync::{mpsc, oneshot, watch};

pub use libp2p::identity::Keypair;
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

    fn count_served(&self, res: &Response) {
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

    fn count_fetched(&self, i: usize) {
        self.fetched[i].fetch_add(1, Ordering::Relaxed);
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

/// Who may fetch from and push to a node.
#[derive(Debug, Clone)]
enum Allow {
    Anyone,
    Only(HashSet<PeerId>),
}

impl Allow {
    fn parse(list: &[String]) -> Result<Allow, P2pError> {
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

    fn allows(&self, peer: &PeerId) -> bool {
        match self {
            Allow::Anyone => true,
            Allow::Only(ids) => ids.contains(peer),
        }
    }
}

/// The most pieces a node announces in the DHT.
pub const MAX_PROVIDED: usize = 100_000;

#[derive(NetworkBehaviour)]
struct Behaviour {
    piece: request_response::Behaviour<wire::Codec>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Cmd {
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
                stats
                    .received_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
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
            Ok(Response::Meta { size, crc32c }) => Ok(PieceMeta {
                key: key.into(),
                size,
                crc32c,
                last_modified: std::time::SystemTime::UNIX_EPOCH,
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

/// The swarm's task.
struct Runner {
    swarm: Swarm<Behaviour>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    tx: mpsc::WeakUnboundedSender<Cmd>,
    responder: Option<Arc<dyn Responder>>,
    allow: Allow,
    stats: Arc<PeerStats>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    /// Provider lookups in flight.
    providers: HashMap<QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Whether a piece a peer pushes here is announced in the DHT (`Provide`).
    provide_pushed: bool,
    known: Vec<(PeerId, Vec<Multiaddr>)>,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
}

impl Runner {
    async fn run(mut self) {
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop) => break,
                    Some(cmd) => self.command(cmd),
                    // Every handle is gone (the task's own weak sender does not count).
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.event(ev),
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                peer,
                addrs,
                req,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .piece
                    .send_request_with_addresses(&peer, req, addrs);
                self.pending.insert(id, reply);
            }
            Cmd::Respond { channel, res } => {
                self.stats.count_served(&res);
                // Err: the asker is gone (timed out, disconnected); nothing to do.
                let _ = self.swarm.behaviour_mut().piece.send_response(channel, res);
            }
            Cmd::Stop => {}
            Cmd::Provide(key) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                {
                    tracing::debug!(key, error = %e, "P2P: not announced in the DHT");
                }
            }
            Cmd::Providers { key, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.providers.insert(id, reply);
            }
            Cmd::Known(reply) => {
                let _ = reply.send(
                    self.known
                        .iter()
                        .map(|(id, addrs)| PeerAddr {
                            id: *id,
                            addrs: addrs.clone(),
                        })
                        .collect(),
                );
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "P2P: listening");
                self.listen_tx.send_modify(|a| a.push(address));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Piece(ev)) => self.piece_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    tracing::debug!(%peer, %addr, "P2P: found by mDNS");
                    self.swarm.add_peer_address(peer, addr.clone());
                    match self.known.iter_mut().find(|(p, _)| *p == peer) {
                        Some((_, addrs)) if !addrs.contains(&addr) => addrs.push(addr),
                        Some(_) => {}
                        None => self.known.push((peer, vec![addr])),
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // Where the peer listens (an inbound connection only shows its ephemeral
                // port): what the DHT hands out to nodes looking for it.
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                let me = *self.swarm.local_peer_id();
                let found: Vec<PeerId> = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        providers.into_iter().filter(|p| *p != me).collect()
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) => {
                        Vec::new()
                    }
                };
                if (step.last || !found.is_empty())
                    && let Some(reply) = self.providers.remove(&id)
                {
                    let _ = reply.send(found);
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "P2P: an incoming connection failed");
            }
            _ => {}
        }
    }

    fn piece_event(&mut self, ev: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.answer(peer, request, channel),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "P2P: a request from a peer failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Answers `request` from `peer`: at once when it is refused, else from a task of its own
    /// (the swarm goes on meanwhile) that hands the answer back to this loop.
    fn answer(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let refusal = if !self.allow.allows(&peer) {
            tracing::warn!(%peer, "P2P: refused a peer that is not on the allow-list");
            Some(format!(
                "peer {peer} is not on this node's allow-list ([PieceStore.Peers] Allow)"
            ))
        } else if self.responder.is_none() {
            Some("this node serves no pieces".to_string())
        } else {
            None
        };
        if let Some(why) = refusal {
            self.command(Cmd::Respond {
                channel,
                res: Response::Denied(why),
            });
            return;
        }
        let Some(responder) = self.responder.clone() else {
            return;
        };
        let Some(tx) = self.tx.upgrade() else { return };
        let provide = self.provide_pushed;
        tokio::spawn(async move {
            let pushed = match &request {
                Request::Put { key, .. } if provide => Some(key.clone()),
                _ => None,
            };
            let res = respond(&*responder, request).await;
            if let (Some(key), Response::Stored) = (pushed, &res) {
                let _ = tx.send(Cmd::Provide(key));
            }
            let _ = tx.send(Cmd::Respond { channel, res });
        });
    }
}

/// The answer to one allowed request.
async fn respond(responder: &dyn Responder, request: Request) -> Response {
    match request {
        Request::Info => Response::Info(responder.describe()),
        Request::Head { key } => match responder.head(&key).await {
            Ok(m) => Response::Meta {
                size: m.size,
                crc32c: m.crc32c,
            },
            Err(e) => error_answer(e),
        },
        Request::Get { key, offset, len } => match responder.get(&key).await {
            Ok((bytes, crc)) => {
                let size = bytes.len() as u64;
                let end = match len {
                    None => Some(size),
                    Some(l) => offset.checked_add(l),
                };
                match end {
                    Some(end) if offset <= end && end <= size => {
                        if offset == 0 && end == size {
                            Response::Piece { crc32c: crc, bytes }
                        } else {
                            let part = bytes.slice(offset as usize..end as usize);
                            let crc32c = piecestore::checksum::crc32c(&part);
                            Response::Piece {
                                crc32c,
                                bytes: part,
                            }
                        }
                    }
                    _ => Response::Invalid(format!(
                        "the range {offset}+{len:?} is not inside the piece {key} of {size} bytes"
                    )),
                }
            }
            Err(e) => error_answer(e),
        },
        Request::Put { key, crc32c, bytes } => {
            if piecestore::checksum::crc32c(&bytes) != crc32c {
                return Response::Corrupt(format!(
                    "the pushed bytes of {key} do not match their CRC32C; nothing was stored"
                ));
            }
            match responder.put(&key, bytes).await {
                Ok(()) => Response::Stored,
                Err(e) => error_answer(e),
            }
        }
    }
}

/// The wire's answer for an engine error (its text names no secret: engine errors never do).
fn error_answer(e: Error) -> Response {
    use piecestore::ErrorKind as K;
    let text = e.to_string();
    match e.kind() {
        K::NotFound => Response::NotFound(text),
        K::AlreadyExists => Response::AlreadyExists(text),
        K::InvalidKey | K::InvalidRange => Response::Invalid(text),
        K::Corrupt => Response::Corrupt(text),
        _ => Response::Failed(text),
    }
}

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

/// A peer as the destination of [`PieceStore::copy_to`] (`piecestore replicate`).
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
