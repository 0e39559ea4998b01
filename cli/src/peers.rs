//! The P2P commands (`peers`, `fetch`, `replicate`) and the peer tier of the others.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use piecestore::PieceStore;
use piecestore::config::PeersOptions;
use piecestore_server::p2p::{self, PeerDestination, PeerNode, PeerTier};

use crate::CliError;

/// The P2P commands.
#[derive(Subcommand, Debug)]
pub enum PeerCommand {
    /// Show this node's peer id, then each known peer (Bootstrap, and mDNS when on): its
    /// address, and what it says it serves, or why it cannot be asked.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull one piece from a peer into this store (verified against its CRC32C).
    Fetch {
        /// The piece key.
        key: String,
        /// The peer: its full multiaddr (`/ip4/…/tcp/…/p2p/ID`, as `serve` prints it), or the
        /// id of a Bootstrap peer.
        #[arg(long)]
        from: String,
    },
    /// Push every piece under a prefix to a peer, verified; run again to resume.
    ///
    /// Pieces the peer already holds with the same size and checksum are skipped, so an
    /// interrupted run (Ctrl-C, a crash, SIGKILL) resumes by running the same command. The
    /// peer must list this node's id in its `[PieceStore.Peers] Allow`.
    Replicate {
        /// Only keys that start with PREFIX (all when absent).
        #[arg(long, default_value = "")]
        prefix: String,
        /// The peer: its full multiaddr, or the id of a Bootstrap peer.
        #[arg(long)]
        to: String,
        /// Count only: what would be pushed and what the peer already holds.
        #[arg(long)]
        dry_run: bool,
        /// Pieces in flight at once: 1 to 4096.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

fn p2p_error(e: p2p::P2pError) -> CliError {
    match e {
        p2p::P2pError::Config(_) => {
            eprintln!("error[INVALID_CONFIG]: {e}");
            CliError::Exit(5)
        }
        other => CliError::Io("P2P".into(), std::io::Error::other(other.to_string())),
    }
}

/// Starts this node's P2P node: with `serve`, listening on `Listen` and answering its peers
/// from `store`; else only asking. `None` when nothing in `[PieceStore.Peers]` needs one.
pub async fn start(
    store: &PieceStore,
    options: &PeersOptions,
    serve: bool,
) -> Result<Option<PeerNode>, CliError> {
    let listen = serve && !options.listen.is_empty();
    if !listen && !options.has_peers() {
        return Ok(None);
    }
    let mut options = options.clone();
    if !serve {
        options.listen.clear();
    }
    let key = p2p::load_or_create_identity(&store.peer_identity_path()).map_err(p2p_error)?;
    let responder = listen.then(|| Arc::new(store.clone()) as Arc<dyn p2p::Responder>);
    let node = PeerNode::start(&options, key, responder)
        .await
        .map_err(p2p_error)?;
    if options.has_peers() {
        store.set_peers(Arc::new(PeerTier::new(node.clone())));
    }
    if listen && options.provide {
        // Announce what this node holds, in the background (one DHT query each).
        let (store, node) = (store.clone(), node.clone());
        tokio::spawn(async move {
            use futures::TryStreamExt;
            let mut pieces = store.list("");
            let mut n = 0;
            while let Ok(Some(meta)) = pieces.try_next().await {
                if n == p2p::MAX_PROVIDED {
                    eprintln!(
                        "piecestore: P2P: announced the first {n} pieces in the DHT, not the rest"
                    );
                    break;
                }
                node.provide(&meta.key);
                n += 1;
            }
        });
    }
    Ok(Some(node))
}

/// A node that only asks (for `peers`, `fetch`, `replicate`), with this store's identity.
async fn asking_node(store: &PieceStore, options: &PeersOptions) -> Result<PeerNode, CliError> {
    let key = p2p::load_or_create_identity(&store.peer_identity_path()).map_err(p2p_error)?;
    let mut options = options.clone();
    options.listen.clear();
    PeerNode::start(&options, key, None)
        .await
        .map_err(p2p_error)
}

/// Runs one of the P2P commands.
pub async fn run(
    store: &PieceStore,
    options: &PeersOptions,
    cmd: PeerCommand,
) -> Result<(), CliError> {
    let node = asking_node(store, options).await?;
    match cmd {
        PeerCommand::Peers { json } => {
            let known = node.known_peers().await;
            // mDNS needs a moment to hear the LAN.
            let known = if options.mdns && known.len() == node.bootstrap().len() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                node.known_peers().await
            } else {
                known
            };
            let mut rows = Vec::new();
            for peer in &known {
                let said = node.info(peer).await;
                rows.push((peer.clone(), said));
            }
            if json {
                let peers: Vec<_> = rows
                    .iter()
                    .map(|(p, said)| {
                        serde_json::json!({
                            "id": p.id.to_string(),
                            "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                            "serves": said.as_ref().ok(),
                            "error": said.as_ref().err().map(|e| e.to_string()),
                        })
                    })
                    .collect();
                let out = serde_json::json!({ "id": node.peer_id().to_string(), "peers": peers });
                println!("{out:#}");
            } else {
                println!("this node: {}", node.peer_id());
                if rows.is_empty() {
                    println!("no peers: set [PieceStore.Peers] Bootstrap (or Mdns = true)");
                }
                for (p, said) in rows {
                    let addrs: Vec<_> = p.addrs.iter().map(|a| a.to_string()).collect();
                    match said {
                        Ok(info) => println!("{}  {}  {info}", p.id, addrs.join(",")),
                        Err(e) => println!("{}  {}  unavailable: {e}", p.id, addrs.join(",")),
                    }
                }
            }
        }
        PeerCommand::Fetch { key, from } => {
            piecestore::key::validate(&key)?;
            let peer = p2p::resolve_peer(&node, &from).await.map_err(p2p_error)?;
            let (bytes, _) = node.fetch(&peer, &key).await?.ok_or_else(|| {
                CliError::Store(piecestore::Error::NotFound {
                    key: key.clone(),
                    backend: format!("peer {}", peer.id),
                })
            })?;
            let size = bytes.len();
            store.put(&key, bytes).await?;
            println!("fetched {key} ({size} bytes) from {}", peer.id);
        }
        PeerCommand::Replicate {
            prefix,
            to,
            dry_run,
            concurrency,
        } => {
            let peer = p2p::resolve_peer(&node, &to).await.map_err(p2p_error)?;
            let dest = PeerDestination::new(node.clone(), peer.clone());
            crate::copy_with_progress(
                store,
                &dest,
                &prefix,
                dry_run,
                concurrency,
                &format!("peer {}", peer.id),
            )
            .await?;
        }
    }
    store.close().await;
    Ok(())
}
