//! The swarm's task: commands from the handles, events from the network, answers to peers.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns};
use piecestore::Error;
use tokio::sync::{mpsc, oneshot, watch};

use super::node::{Allow, Behaviour, BehaviourEvent, Cmd};
use super::wire::{Request, Response};
use super::{PeerAddr, PeerStats, Responder};

/// The swarm's task.
pub(super) struct Runner {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) rx: mpsc::UnboundedReceiver<Cmd>,
    pub(super) tx: mpsc::WeakUnboundedSender<Cmd>,
    pub(super) responder: Option<Arc<dyn Responder>>,
    pub(super) allow: Allow,
    pub(super) stats: Arc<PeerStats>,
    pub(super) pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    /// Provider lookups in flight.
    pub(super) providers: HashMap<QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Whether a piece a peer pushes here is announced in the DHT (`Provide`).
    pub(super) provide_pushed: bool,
    pub(super) known: Vec<(PeerId, Vec<Multiaddr>)>,
    pub(super) listen_tx: watch::Sender<Vec<Multiaddr>>,
}

impl Runner {
    pub(super) async fn run(mut self) {
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
                last_modified: m.last_modified,
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
