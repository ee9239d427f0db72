//! A tracker client over libp2p: its own swarm (QUIC or TCP, whichever the tracker address
//! names), one connection to the tracker, and `announce` / `lookup` calls with timeouts. Used
//! by the tests now and by peers and super-peers later.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use shoal_protocol::wire::{Announce, AnnounceResponse, LookupRequest, LookupResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Behaviour, BehaviourEvent, build_swarm};

/// Why a tracker request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The tracker address does not say whom to expect.
    #[error("tracker address {0} must end in /p2p/PEER_ID")]
    NoPeerId(Multiaddr),
    /// The transport stack could not be built.
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// No connection to the tracker could be made.
    #[error("cannot connect to the tracker at {addr}: {reason}")]
    Connect {
        /// The tracker address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from the tracker within {0:?}")]
    Timeout(Duration),
    /// The request failed on the way (connection closed, protocol not supported, bad frame).
    #[error("tracker request failed: {0}")]
    Request(String),
    /// The client's task has stopped.
    #[error("the tracker client has stopped")]
    Closed,
}

/// How a [`TrackerClient`] runs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client's identity: its PeerId is what the tracker lists it under.
    pub keypair: Keypair,
    /// Addresses to listen on (so identify tells the tracker where to reach this node); none
    /// by default.
    pub listen: Vec<Multiaddr>,
    /// Bound of connecting and of each request (default 10 s).
    pub timeout: Duration,
}

impl ClientConfig {
    /// Defaults with this identity.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Command {
    Announce(Announce, Reply<AnnounceResponse>),
    Lookup(LookupRequest, Reply<LookupResponse>),
}

/// A connection to one tracker. Dropping it closes the connection (its task ends when it sees
/// no more requests can come).
#[derive(Debug)]
pub struct TrackerClient {
    peer_id: PeerId,
    tracker: PeerId,
    listen_addrs: Vec<Multiaddr>,
    timeout: Duration,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl TrackerClient {
    /// Connects to the tracker at `tracker` (a multiaddr ending in `/p2p/PEER_ID`, e.g.
    /// `/ip4/127.0.0.1/udp/7701/quic-v1/p2p/12D3...`). The tracker's identity is checked by
    /// the handshake.
    pub async fn connect(tracker: Multiaddr, config: ClientConfig) -> Result<Self, ClientError> {
        let Some(Protocol::P2p(tracker_id)) = tracker.iter().last() else {
            return Err(ClientError::NoPeerId(tracker));
        };
        let peer_id = config.keypair.public().to_peer_id();
        let timeout = config.timeout;
        let mut swarm = build_swarm(
            config.keypair,
            |k| Behaviour::new(k, ProtocolSupport::Outbound, timeout),
            Duration::from_secs(60),
        )
        .map_err(ClientError::Transport)?;
        let mut listen_addrs = Vec::new();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| ClientError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let connect = async {
            let mut listeners = config.listen.len();
            let mut connected = false;
            swarm
                .dial(tracker.clone())
                .map_err(|e| ClientError::Connect {
                    addr: tracker.clone(),
                    reason: e.to_string(),
                })?;
            while !connected || listeners > 0 {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        listeners = listeners.saturating_sub(1);
                        listen_addrs.push(address);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == tracker_id => {
                        connected = true;
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(ClientError::Connect {
                            addr: tracker.clone(),
                            reason: error.to_string(),
                        });
                    }
                    SwarmEvent::ListenerError { error, .. } => {
                        return Err(ClientError::Connect {
                            addr: tracker.clone(),
                            reason: format!("listener: {error}"),
                        });
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Connect {
                addr: tracker.clone(),
                reason: format!("no connection within {timeout:?}"),
            })??;
        let (commands, rx) = mpsc::channel(64);
        let task = tokio::spawn(drive(swarm, tracker_id, tracker, rx, timeout));
        Ok(Self {
            peer_id,
            tracker: tracker_id,
            listen_addrs,
            timeout,
            commands,
            task,
        })
    }

    /// This client's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The tracker's PeerId.
    pub fn tracker(&self) -> PeerId {
        self.tracker
    }

    /// Where this client listens (from [`ClientConfig::listen`], ports resolved).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Sends an announce; the tracker lists it under this client's PeerId.
    pub async fn announce(&self, msg: Announce) -> Result<AnnounceResponse, ClientError> {
        self.request(|reply| Command::Announce(msg, reply)).await
    }

    /// Sends a lookup (catalog search or holders of a track).
    pub async fn lookup(&self, req: LookupRequest) -> Result<LookupResponse, ClientError> {
        self.request(|reply| Command::Lookup(req, reply)).await
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ClientError::Closed)?;
        // The request-response timeout fires first; this is a backstop.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Closes the connection and waits for the task to end.
    pub async fn close(self) {
        let Self { commands, task, .. } = self;
        drop(commands);
        let _ = task.await;
    }
}

async fn drive(
    mut swarm: Swarm<Behaviour>,
    tracker: PeerId,
    addr: Multiaddr,
    mut commands: mpsc::Receiver<Command>,
    timeout: Duration,
) {
    let mut announces: HashMap<OutboundRequestId, Reply<AnnounceResponse>> = HashMap::new();
    let mut lookups: HashMap<OutboundRequestId, Reply<LookupResponse>> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Announce(msg, reply)) => {
                    let id = swarm.behaviour_mut().announce.send_request_with_addresses(&tracker, msg, vec![addr.clone()]);
                    announces.insert(id, reply);
                }
                Some(Command::Lookup(req, reply)) => {
                    let id = swarm.behaviour_mut().lookup.send_request_with_addresses(&tracker, req, vec![addr.clone()]);
                    lookups.insert(id, reply);
                }
                None => break,
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Announce(e)) => settle(&mut announces, e, timeout),
                SwarmEvent::Behaviour(BehaviourEvent::Lookup(e)) => settle(&mut lookups, e, timeout),
                _ => {}
            },
        }
    }
}

fn settle<Req, Resp>(
    pending: &mut HashMap<OutboundRequestId, Reply<Resp>>,
    event: request_response::Event<Req, Resp>,
    timeout: Duration,
) {
    match event {
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let err = match error {
                    request_response::OutboundFailure::Timeout => ClientError::Timeout(timeout),
                    other => ClientError::Request(other.to_string()),
                };
                let _ = reply.send(Err(err));
            }
        }
        _ => {}
    }
}
