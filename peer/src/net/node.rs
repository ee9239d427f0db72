//! The peer's network driver: one libp2p swarm (QUIC, TCP+Noise+Yamux fallback) carrying
//! `/shoal/chunk/2` both ways (on pooled streams, [`super::chunk_streams`]), announce and
//! lookup to the tracker, identify and ping; the origin over HTTP; the disk cache. It feeds a
//! [`PeerCore`] and an [`Announcer`] and carries out what they say. It decides nothing: which
//! source, when to hedge, what to evict, whom to serve and when to announce all come from the
//! cores.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, multiaddr::Protocol, noise, ping, relay, tcp, yamux,
};
use shoal_protocol::wire::{
    Announce, AnnounceResponse, ChunkRequest, ChunkResponse, LookupRequest, LookupResponse,
    PeerContact,
};
use shoal_protocol::{ChunkId, Core, Input, Manifest, NodeId, Output, Time, TrackId};
use shoal_tracker::net::p2p::{Behaviour as TrackerBehaviour, BehaviourEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::cache::DiskCache;
use super::chunk_inbound::InboundStreams;
use super::chunk_streams::{
    ChunkReply, ChunkStreamConfig, ChunkStreamError, ChunkStreamEvent, ChunkStreams, InboundId,
    OutboundId,
};
use super::origin::{OriginClient, OriginError};
use crate::core::{
    AnnounceConfig, Announcer, AttachConfig, Attacher, BytesBySource, ChunkMsg, PeerCommand,
    PeerConfig, PeerCore, PeerEvent, PeerInfo, PlayStats, SchedulerCommand, SchedulerEvent,
    ServerCommand, ServerEvent,
};

/// Default libp2p port of a peer (0: any free port; a desktop peer has no fixed port).
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"];

/// Chunk protocol, tracker protocols, identify and ping; behind NAT, the relay client (a
/// reservation on a super-peer), DCUtR (hole punching to upgrade relayed connections) and
/// AutoNAT (are we reachable?).
#[derive(NetworkBehaviour)]
pub struct PeerBehaviour {
    /// Outbound streams of `/shoal/chunk/2` (opened by [`ChunkStreams`] through its
    /// `Control`).
    pub chunk: libp2p_stream::Behaviour,
    /// Inbound streams of `/shoal/chunk/2` (answered by [`ChunkStreams::serve`]).
    pub chunk_inbound: InboundStreams,
    /// Announce and lookup (outbound), identify and ping.
    pub tracker: TrackerBehaviour,
    /// Circuit relay v2 client (only with super-peers configured).
    pub relay: Toggle<relay::client::Behaviour>,
    /// Direct connection upgrade through relay.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Reachability probes (answered by super-peers).
    pub autonat: Toggle<autonat::Behaviour>,
}

impl PeerBehaviour {
    /// The behaviour of a peer with `key`; `request_timeout` bounds one libp2p request (the
    /// scheduler's own, shorter, timeouts decide retries). No relay, DCUtR or AutoNAT.
    pub fn new(key: &Keypair, request_timeout: Duration) -> Self {
        Self::build(key, None, request_timeout)
    }

    /// A leaf's behaviour: with `relay` (from the swarm builder's relay transport), DCUtR and
    /// AutoNAT.
    pub fn with_relay(
        key: &Keypair,
        relay: relay::client::Behaviour,
        request_timeout: Duration,
    ) -> Self {
        Self::build(key, Some(relay), request_timeout)
    }

    fn build(
        key: &Keypair,
        relay: Option<relay::client::Behaviour>,
        request_timeout: Duration,
    ) -> Self {
        let me = key.public().to_peer_id();
        let leaf = relay.is_some();
        Self {
            chunk: libp2p_stream::Behaviour::new(),
            chunk_inbound: InboundStreams::new(ChunkStreams::protocol()),
            tracker: TrackerBehaviour::new(key, ProtocolSupport::Outbound, request_timeout),
            relay: relay.into(),
            dcutr: leaf.then(|| dcutr::Behaviour::new(me)).into(),
            autonat: leaf
                .then(|| {
                    autonat::Behaviour::new(
                        me,
                        autonat::Config {
                            // Loopback and private test networks count too.
                            only_global_ips: false,
                            boot_delay: Duration::from_secs(1),
                            ..autonat::Config::default()
                        },
                    )
                })
                .into(),
        }
    }
}

/// Why the node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport could not be built.
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The tracker's endpoint could not be found.
    #[error("cannot find the tracker's libp2p endpoint: {0}")]
    Tracker(String),
}

/// How to reach the tracker's libp2p side.
#[derive(Debug, Clone)]
pub struct TrackerEndpoint {
    /// Its PeerId (checked by the handshake).
    pub peer_id: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
}

impl TrackerEndpoint {
    /// Asks the tracker's HTTP API (`GET /p2p`) where its libp2p side listens.
    pub async fn discover(origin: &OriginClient) -> Result<Self, NodeError> {
        let info = origin
            .p2p_info()
            .await
            .map_err(|e| NodeError::Tracker(e.to_string()))?;
        let peer_id: PeerId = info
            .peer_id
            .parse()
            .map_err(|e| NodeError::Tracker(format!("bad PeerId {:?}: {e}", info.peer_id)))?;
        let addrs = info
            .addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| {
                // Dialled by PeerId: keep the transport part only.
                a.into_iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect()
            })
            .collect::<Vec<Multiaddr>>();
        if addrs.is_empty() {
            return Err(NodeError::Tracker("the tracker lists no addresses".into()));
        }
        Ok(Self { peer_id, addrs })
    }
}

/// Everything a node starts with.
#[derive(Debug)]
pub struct NodeConfig {
    /// The node's identity.
    pub keypair: Keypair,
    /// Where to listen for other peers.
    pub listen: Vec<Multiaddr>,
    /// The tracker (announce, lookup), if any.
    pub tracker: Option<TrackerEndpoint>,
    /// The origin's HTTP API (fallback for every chunk), if any.
    pub origin: Option<OriginClient>,
    /// The core's thresholds.
    pub peer: PeerConfig,
    /// Announce timing.
    pub announce: AnnounceConfig,
    /// Our region, sent with announces (ranks holders nearest first).
    pub region: Option<String>,
    /// Holders asked for per lookup.
    pub lookup_limit: u16,
    /// Upper bound of one libp2p request.
    pub request_timeout: Duration,
    /// Least time between two lookups of the same track's holders.
    pub min_lookup_interval: Duration,
    /// Super-peers to attach to when behind NAT (multiaddrs ending in `/p2p/PEER_ID`).
    pub superpeers: Vec<Multiaddr>,
    /// Attachment timing.
    pub attach: AttachConfig,
}

impl NodeConfig {
    /// The configured super-peers' node ids, in configuration order.
    fn superpeers_order(&self, known: &HashMap<NodeId, (PeerId, Multiaddr)>) -> Vec<NodeId> {
        let mut out = Vec::new();
        for sp in &self.superpeers {
            if let Some(Protocol::P2p(id)) = sp.iter().last() {
                let n = node_of(&id);
                if known.contains_key(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Defaults for `keypair`: listen on any port (QUIC and TCP), no tracker, no origin.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: DEFAULT_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            tracker: None,
            origin: None,
            peer: PeerConfig::default(),
            announce: AnnounceConfig::default(),
            region: None,
            lookup_limit: 16,
            request_timeout: Duration::from_secs(30),
            min_lookup_interval: Duration::from_secs(2),
            superpeers: Vec::new(),
            attach: AttachConfig::default(),
        }
    }
}

/// What the node reports to whoever runs it (the player, the status line).
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A track's manifest is known (from the cache or the network): the player can set up.
    Manifest {
        /// The track.
        track: TrackId,
        /// Its manifest.
        manifest: Manifest,
    },
    /// A verified chunk for the player (any order).
    Chunk {
        /// The track.
        track: TrackId,
        /// Index in the manifest.
        index: usize,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Playback started (first audio of a play or after a seek).
    PlayStarted {
        /// The track.
        track: TrackId,
        /// Time to first audio, on the first start of a play.
        time_to_first_audio_ms: Option<u64>,
    },
    /// An underrun.
    Stutter {
        /// The track.
        track: TrackId,
    },
    /// Sent just before each [`NodeEvent::Finished`]: peers' bytes received so far in this
    /// session over relayed and over direct connections.
    Transport {
        /// Through a super-peer's relay.
        relayed_bytes: u64,
        /// Over direct connections.
        direct_bytes: u64,
    },
    /// A play ended.
    Finished(PlayStats),
    /// A peer was banned (bad data or misbehaviour).
    Banned {
        /// The peer.
        peer: PeerId,
    },
    /// The track's manifest is invalid: the play is abandoned.
    TrackInvalid(TrackId),
}

/// A snapshot for a status line.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// The track playing.
    pub track: Option<TrackId>,
    /// Playback position in ms.
    pub position_ms: Option<u64>,
    /// Audio fetched ahead of the position, ms.
    pub buffer_ahead_ms: Option<u64>,
    /// Bytes of the current play by source.
    pub bytes: BytesBySource,
    /// Peers connected now.
    pub peers: usize,
    /// Bytes uploaded to other peers.
    pub served_bytes: u64,
    /// Tracks held completely (announced).
    pub held_tracks: usize,
    /// The tracker has accepted our holdings (false without a tracker).
    pub announced: bool,
    /// The super-peer we are attached to (relay reservation), if any.
    pub superpeer: Option<PeerId>,
    /// That super-peer's cluster index has accepted our holdings (lookups through it find us).
    pub superpeer_announced: bool,
    /// Chunk and manifest bytes received over relayed connections.
    pub relayed_bytes: u64,
    /// Chunk and manifest bytes received over direct connections.
    pub direct_bytes: u64,
    /// Relayed connections upgraded to direct ones (DCUtR).
    pub direct_upgrades: u64,
}

enum Control {
    Core(PeerCommand),
    Shutdown,
}

/// A running peer: commands in, events and status out.
#[derive(Debug)]
pub struct PeerNode {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    control: mpsc::Sender<Control>,
    status: watch::Receiver<NodeStatus>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::Core(c) => write!(f, "Core({c:?})"),
            Control::Shutdown => write!(f, "Shutdown"),
        }
    }
}

/// The swarm settings of every Shoal peer: connections idle for a minute close, and
/// substreams we open negotiate their protocol in zero round trips (multistream-select
/// `V1Lazy`: the request goes out with the protocol name instead of after the other side's
/// confirmation). A lookup, an announce and a new `/shoal/chunk/2` stream each save a round
/// trip so. The wire format is plain `V1`, so any libp2p node can answer it.
pub fn swarm_config(c: libp2p::swarm::Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(Duration::from_secs(60))
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}

impl PeerNode {
    /// Builds the swarm, starts listening, loads the cache into the core and spawns the node.
    /// Events go to the returned receiver (drop it if unwanted: they are then discarded).
    pub async fn start(
        config: NodeConfig,
        mut cache: DiskCache,
    ) -> Result<(Self, mpsc::UnboundedReceiver<NodeEvent>), NodeError> {
        let peer_id = config.keypair.public().to_peer_id();
        let timeout = config.request_timeout;
        let builder = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_quic();
        let mut swarm = if config.superpeers.is_empty() {
            builder
                .with_behaviour(|key| PeerBehaviour::new(key, timeout))
                .map_err(|e| NodeError::Transport(e.to_string()))?
                .with_swarm_config(swarm_config)
                .build()
        } else {
            builder
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| NodeError::Transport(e.to_string()))?
                .with_behaviour(|key, relay| PeerBehaviour::with_relay(key, relay, timeout))
                .map_err(|e| NodeError::Transport(e.to_string()))?
                .with_swarm_config(swarm_config)
                .build()
        };
        let mut superpeers = HashMap::new();
        for sp in &config.superpeers {
            let Some(Protocol::P2p(sp_id)) = sp.iter().last() else {
                return Err(NodeError::Listen {
                    addr: sp.clone(),
                    reason: "a super-peer address must end in /p2p/PEER_ID".into(),
                });
            };
            let base: Multiaddr = sp
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            swarm.add_peer_address(sp_id, base.clone());
            if let Some(a) = swarm.behaviour_mut().autonat.as_mut() {
                a.add_server(sp_id, Some(base.clone()));
            }
            if let Err(e) = swarm.dial(sp_id) {
                tracing::warn!("cannot dial super-peer {sp}: {e}");
            }
            superpeers.insert(node_of(&sp_id), (sp_id, base));
        }
        let listen_addrs = shoal_tracker::net::p2p::listen_all(
            &mut swarm,
            &config.listen,
            Duration::from_secs(10),
        )
        .await
        .map_err(|(addr, reason)| NodeError::Listen { addr, reason })?;
        if let Some(t) = &config.tracker {
            for a in &t.addrs {
                swarm.add_peer_address(t.peer_id, a.clone());
            }
            // Connected before the first play, a holder lookup costs one round trip.
            if swarm.dial(t.peer_id).is_ok() {
                let connect = async {
                    loop {
                        match swarm.select_next_some().await {
                            SwarmEvent::ConnectionEstablished { peer_id, .. }
                                if peer_id == t.peer_id =>
                            {
                                return Ok(());
                            }
                            SwarmEvent::OutgoingConnectionError {
                                peer_id: Some(p),
                                error,
                                ..
                            } if p == t.peer_id => return Err(error.to_string()),
                            _ => {}
                        }
                    }
                };
                match tokio::time::timeout(Duration::from_secs(5), connect).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("cannot connect to the tracker: {e}"),
                    Err(_) => tracing::warn!("no connection to the tracker within 5 s"),
                }
            }
        }

        let mut peer_config = config.peer.clone();
        // The disk cache keeps what it is given; the core's index decides evictions.
        peer_config.scheduler.cache.max_bytes = cache.stats().max_bytes;
        let held = cache.hand_over_eviction();
        let origin_node = config
            .origin
            .as_ref()
            .map(|o| NodeId::from_key(format!("origin {}", o.base()).as_bytes()));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::channel(64);
        let (status_tx, status_rx) = watch::channel(NodeStatus::default());
        let (origin_tx, origin_rx) = mpsc::unbounded_channel();
        let (mut chunks, chunk_rx) = ChunkStreams::new(
            swarm.behaviour().chunk.new_control(),
            ChunkStreamConfig {
                request_timeout: timeout,
                ..ChunkStreamConfig::default()
            },
        );
        // Registered once, on a fresh behaviour: cannot be taken already.
        chunks
            .serve(&swarm.behaviour().chunk_inbound)
            .map_err(|e| NodeError::Transport(e.to_string()))?;
        let mut driver = Driver {
            swarm,
            chunks,
            core: PeerCore::new(peer_config),
            announcer: Announcer::new(config.announce.clone()),
            cluster_announcer: Announcer::new(config.announce.clone()),
            cluster_announce: None,
            cache,
            origin: config.origin.clone().zip(origin_node),
            tracker: config.tracker.as_ref().map(|t| t.peer_id),
            region: config.region.clone(),
            lookup_limit: config.lookup_limit,
            min_lookup_interval: config.min_lookup_interval,
            epoch: Instant::now(),
            core_wake: Time::NEVER,
            nodes: HashMap::new(),
            inbound: HashMap::new(),
            inbound_ids: HashMap::new(),
            outbound: HashMap::new(),
            origin_tasks: HashMap::new(),
            origin_tx,
            lookups: HashMap::new(),
            deferred_lookups: Vec::new(),
            last_lookup: HashMap::new(),
            track_of_chunk: HashMap::new(),
            chunks_of_track: HashMap::new(),
            listen_addrs: listen_addrs.clone(),
            attacher: Attacher::new(
                config.attach.clone(),
                config.superpeers_order(&superpeers),
                Time::ZERO,
            ),
            superpeers,
            attach_listener: None,
            relayed_conns: HashMap::new(),
            open_conns: HashMap::new(),
            relayed_bytes: 0,
            direct_bytes: 0,
            upgrades: 0,
            events: events_tx,
            status: status_tx,
            served_bytes: 0,
        };
        driver.command(SchedulerCommand::SetOrigin(origin_node));
        driver.load_cache(&held);
        let task = tokio::spawn(driver.run(control_rx, origin_rx, chunk_rx));
        Ok((
            Self {
                peer_id,
                listen_addrs,
                control: control_tx,
                status: status_rx,
                task,
            },
            events_rx,
        ))
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listens on (ports resolved).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Sends a command to the core (play, enqueue, stop, seek...).
    pub async fn command(&self, cmd: SchedulerCommand) {
        let _ = self
            .control
            .send(Control::Core(PeerCommand::Fetch(cmd)))
            .await;
    }

    /// Sends a command to the serving side (limits).
    pub async fn serve_command(&self, cmd: ServerCommand) {
        let _ = self
            .control
            .send(Control::Core(PeerCommand::Serve(cmd)))
            .await;
    }

    /// The latest status snapshot (updated every 100 ms).
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Stops the node: connections are closed, the cache is flushed and unlocked.
    pub async fn shutdown(self) {
        let _ = self.control.send(Control::Shutdown).await;
        let _ = self.task.await;
    }
}

type InboundKey = (NodeId, u64, bool);

struct Driver {
    swarm: Swarm<PeerBehaviour>,
    core: PeerCore,
    announcer: Announcer,
    /// What our super-peer's cluster index knows of us (reset on every attachment).
    cluster_announcer: Announcer,
    /// The announce in flight to the super-peer.
    cluster_announce: Option<OutboundRequestId>,
    cache: DiskCache,
    origin: Option<(OriginClient, NodeId)>,
    tracker: Option<PeerId>,
    region: Option<String>,
    lookup_limit: u16,
    min_lookup_interval: Duration,
    epoch: Instant,
    core_wake: Time,
    nodes: HashMap<NodeId, PeerId>,
    /// Chunk requests both ways.
    chunks: ChunkStreams,
    /// Open inbound requests: (requester, request number, is a Cancel) → reply slot.
    inbound: HashMap<InboundKey, ChunkReply>,
    inbound_ids: HashMap<InboundId, (NodeId, u64)>,
    /// Our requests in flight: to whom, and their request number (none for a `Cancel`).
    outbound: HashMap<OutboundId, (NodeId, Option<u64>)>,
    origin_tasks: HashMap<u64, tokio::task::AbortHandle>,
    origin_tx: mpsc::UnboundedSender<(NodeId, ChunkResponse)>,
    /// Holder lookups in flight: the track, and whether a super-peer was asked (if it fails,
    /// the tracker is asked).
    lookups: HashMap<OutboundRequestId, (TrackId, bool)>,
    /// Lookups waiting for the attachment to settle.
    deferred_lookups: Vec<TrackId>,
    last_lookup: HashMap<TrackId, Instant>,
    /// For announces: which track a cached chunk belongs to, and each known track's chunks.
    track_of_chunk: HashMap<ChunkId, TrackId>,
    chunks_of_track: HashMap<TrackId, Vec<ChunkId>>,
    listen_addrs: Vec<Multiaddr>,
    attacher: Attacher,
    /// Configured super-peers: PeerId and address (without `/p2p`).
    superpeers: HashMap<NodeId, (PeerId, Multiaddr)>,
    /// The relay listener of our current reservation.
    attach_listener: Option<(NodeId, ListenerId)>,
    relayed_conns: HashMap<libp2p::swarm::ConnectionId, PeerId>,
    /// Open connections per peer (relayed ones included).
    open_conns: HashMap<PeerId, u32>,
    relayed_bytes: u64,
    direct_bytes: u64,
    upgrades: u64,
    events: mpsc::UnboundedSender<NodeEvent>,
    status: watch::Sender<NodeStatus>,
    served_bytes: u64,
}

fn node_of(peer: &PeerId) -> NodeId {
    NodeId::from_key(&peer.to_bytes())
}

fn response_request(r: &ChunkResponse) -> u64 {
    match r {
        ChunkResponse::Manifest { request, .. }
        | ChunkResponse::Chunk { request, .. }
        | ChunkResponse::Have { request, .. }
        | ChunkResponse::NotHave { request }
        | ChunkResponse::Busy { request, .. }
        | ChunkResponse::Cancelled { request } => *request,
    }
}

fn request_key(from: NodeId, r: &ChunkRequest) -> InboundKey {
    (from, r.request(), matches!(r, ChunkRequest::Cancel { .. }))
}

impl Driver {
    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn input(&mut self, input: Input<ChunkMsg, PeerCommand>) {
        let now = self.now();
        self.core.handle_input(now, input);
    }

    fn command(&mut self, cmd: SchedulerCommand) {
        self.input(Input::Command(PeerCommand::Fetch(cmd)));
    }

    /// Tells the core what the disk holds: chunks (oldest first), then manifests; tracks held
    /// completely are announced.
    fn load_cache(&mut self, held: &[(ChunkId, u32)]) {
        for (chunk, len) in held {
            self.command(SchedulerCommand::CacheHas {
                chunk: *chunk,
                len: *len,
            });
        }
        for track in self.cache.manifest_ids() {
            let Some(bytes) = self.cache.manifest_bytes(&track) else {
                continue;
            };
            if let Ok(m) = Manifest::decode(&bytes) {
                self.learn_track(track, &m);
            }
            self.command(SchedulerCommand::Manifest { track, bytes });
        }
        self.drain();
    }

    fn learn_track(&mut self, track: TrackId, m: &Manifest) {
        let chunks: Vec<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
        for c in &chunks {
            self.track_of_chunk.insert(*c, track);
        }
        self.chunks_of_track.insert(track, chunks);
        self.check_complete(track);
    }

    fn check_complete(&mut self, track: TrackId) {
        let now = self.now();
        let complete = self
            .chunks_of_track
            .get(&track)
            .is_some_and(|cs| cs.iter().all(|c| self.cache.contains(c)));
        if complete {
            self.announcer.hold(now, track);
            self.cluster_announcer.hold(now, track);
        } else {
            self.announcer.release(now, track);
            self.cluster_announcer.release(now, track);
        }
    }

    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut origin_rx: mpsc::UnboundedReceiver<(NodeId, ChunkResponse)>,
        mut chunk_rx: mpsc::UnboundedReceiver<ChunkStreamEvent>,
    ) {
        let mut status_tick = tokio::time::interval(Duration::from_millis(100));
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.drain();
            let wake = self
                .core_wake
                .min(if self.tracker.is_some() {
                    self.announcer.next_wake()
                } else {
                    Time::NEVER
                })
                .min(self.attacher.next_wake(self.now()))
                .min(if self.attacher.current().is_some() {
                    self.cluster_announcer.next_wake()
                } else {
                    Time::NEVER
                });
            let sleep = if wake == Time::NEVER {
                Duration::from_secs(3600)
            } else {
                Duration::from_micros(wake.as_micros().saturating_sub(self.now().as_micros()))
            };
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(ev) = chunk_rx.recv() => self.on_chunk(ev),
                Some((from, resp)) = origin_rx.recv() => {
                    self.origin_tasks.remove(&response_request(&resp));
                    self.input(Input::Message { from, msg: ChunkMsg::Response(resp) });
                }
                c = control.recv() => match c {
                    Some(Control::Core(cmd)) => self.on_control(cmd),
                    Some(Control::Shutdown) | None => break,
                },
                () = tokio::time::sleep(sleep) => self.input(Input::Timeout),
                _ = status_tick.tick() => self.publish_status(),
            }
        }
        for (_, task) in self.origin_tasks.drain() {
            task.abort();
        }
    }

    fn on_control(&mut self, cmd: PeerCommand) {
        // A track whose manifest is on disk starts without asking anyone for it.
        if let PeerCommand::Fetch(
            SchedulerCommand::Play { track, .. } | SchedulerCommand::Enqueue(track),
        ) = &cmd
        {
            let track = *track;
            if let Some(bytes) = self.cache.manifest_bytes(&track) {
                if let Ok(manifest) = Manifest::decode(&bytes) {
                    let _ = self.events.send(NodeEvent::Manifest { track, manifest });
                }
                self.command(SchedulerCommand::Manifest { track, bytes });
            }
        }
        self.input(Input::Command(cmd));
    }

    fn publish_status(&mut self) {
        let now = self.now();
        let s = self.core.scheduler();
        let status = NodeStatus {
            track: s.current_track(),
            position_ms: s.position_ms(now),
            buffer_ahead_ms: s.buffer_ahead_ms(now),
            bytes: s
                .current_stats()
                .map(|p| p.bytes_by_source)
                .unwrap_or_default(),
            peers: self
                .swarm
                .connected_peers()
                .filter(|p| Some(**p) != self.tracker)
                .count(),
            served_bytes: self.served_bytes,
            held_tracks: self.announcer.held().len(),
            announced: self.tracker.is_some()
                && if self.announcer.delegated() {
                    self.cluster_announcer.synced()
                } else {
                    self.announcer.synced()
                },
            superpeer: self
                .attacher
                .current()
                .and_then(|n| self.superpeers.get(&n))
                .map(|(p, _)| *p),
            superpeer_announced: self.attacher.current().is_some()
                && self.cluster_announcer.synced(),
            relayed_bytes: self.relayed_bytes,
            direct_bytes: self.direct_bytes,
            direct_upgrades: self.upgrades,
        };
        self.status.send_replace(status);
    }

    /// Carries out everything the cores want until they only have a timer left.
    fn drain(&mut self) {
        // Messages go out before events are acted on: an event may mean disk work (storing
        // the manifest that just arrived, reading a chunk to serve), and the request for the
        // first chunk, queued behind that manifest's event, should not wait for it.
        let mut events = Vec::new();
        loop {
            match self.core.poll_output() {
                Output::Timeout(t) => {
                    if events.is_empty() {
                        self.core_wake = t;
                        break;
                    }
                    // Acting on them may feed the core: poll it again afterwards.
                    for e in events.drain(..) {
                        self.on_core_event(e);
                    }
                }
                Output::Send { to, msg } => self.send(to, msg),
                Output::Event(e) => events.push(e),
            }
        }
        self.reconcile_attachment();
        let now = self.now();
        // While a reservation is being set up, announcing would list addresses nobody behind
        // another NAT can dial: wait until attached (or until no super-peer is usable).
        let attaching = self.attaching();
        if !attaching && !self.deferred_lookups.is_empty() {
            for track in std::mem::take(&mut self.deferred_lookups) {
                self.lookup(track);
            }
        }
        if let Some(tracker) = self.tracker.filter(|_| !attaching) {
            if let Some(plan) = self.announcer.poll(now) {
                let via = self
                    .attacher
                    .current()
                    .and_then(|n| self.superpeers.get(&n))
                    .map(|(p, a)| PeerContact {
                        peer_id: p.to_bytes(),
                        addrs: vec![a.to_string()],
                    });
                let msg = Announce {
                    replace: plan.replace,
                    tracks: plan.tracks,
                    removed: plan.removed,
                    addrs: self.public_addrs(),
                    via,
                    region: self.region.clone(),
                };
                self.swarm
                    .behaviour_mut()
                    .tracker
                    .announce
                    .send_request(&tracker, msg);
            }
        }
        // The super-peer's cluster index answers lookups of its leaves from memory.
        if let Some((sp, _)) = self.current_superpeer()
            && let Some(plan) = self.cluster_announcer.poll(now)
        {
            let msg = Announce {
                replace: plan.replace,
                tracks: plan.tracks,
                removed: plan.removed,
                addrs: self.public_addrs(),
                via: None,
                region: self.region.clone(),
            };
            let id = self
                .swarm
                .behaviour_mut()
                .tracker
                .announce
                .send_request(&sp, msg);
            self.cluster_announce = Some(id);
        }
    }

    /// The super-peer we are attached to: its PeerId and address.
    fn current_superpeer(&self) -> Option<(PeerId, Multiaddr)> {
        self.attacher
            .current()
            .and_then(|n| self.superpeers.get(&n))
            .cloned()
    }

    /// Holds the relay reservation where the [`Attacher`] says.
    fn reconcile_attachment(&mut self) {
        let now = self.now();
        let want = self.attacher.choice(now);
        if want == self.attach_listener.map(|(n, _)| n) {
            return;
        }
        if let Some((_, id)) = self.attach_listener.take() {
            self.swarm.remove_listener(id);
            self.announcer.reset(now);
            self.announcer.set_delegated(now, false);
        }
        let Some(n) = want else { return };
        let Some((sp, addr)) = self.superpeers.get(&n).cloned() else {
            return;
        };
        let circuit = addr.with(Protocol::P2p(sp)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                tracing::info!(%sp, "asking super-peer for a relay reservation");
                self.attacher.requested(n);
                self.attach_listener = Some((n, id));
            }
            Err(e) => {
                tracing::warn!("cannot listen on {circuit}: {e}");
                self.attacher.lost(now, n);
            }
        }
    }

    /// Our listen addresses others can dial (the unspecified 0.0.0.0 is not one).
    fn public_addrs(&self) -> Vec<String> {
        self.listen_addrs
            .iter()
            .filter(|a| {
                !a.iter().any(|p| match p {
                    Protocol::Ip4(ip) => ip.is_unspecified(),
                    Protocol::Ip6(ip) => ip.is_unspecified(),
                    _ => false,
                })
            })
            .map(ToString::to_string)
            .collect()
    }

    fn send(&mut self, to: NodeId, msg: ChunkMsg) {
        match msg {
            ChunkMsg::Request(req) => {
                if let Some((client, origin)) = &self.origin
                    && *origin == to
                {
                    let client = client.clone();
                    self.origin_request(client, to, req);
                    return;
                }
                match self.nodes.get(&to) {
                    Some(peer) => {
                        let number = match &req {
                            ChunkRequest::GetManifest { request, .. }
                            | ChunkRequest::GetChunk { request, .. }
                            | ChunkRequest::QueryHave { request, .. } => Some(*request),
                            ChunkRequest::Cancel { .. } => None,
                        };
                        let id = self.chunks.send_request(*peer, req);
                        self.outbound.insert(id, (to, number));
                    }
                    // Unknown node (forgotten): it is as good as disconnected.
                    None => self.input(Input::Disconnected(to)),
                }
            }
            ChunkMsg::Response(resp) => {
                let request = response_request(&resp);
                let cancel = matches!(resp, ChunkResponse::Cancelled { .. });
                if cancel {
                    // The cancelled request gets no answer of its own.
                    self.inbound.remove(&(to, request, false));
                }
                let served = matches!(
                    resp,
                    ChunkResponse::Chunk { .. } | ChunkResponse::Manifest { .. }
                );
                let delivered = match self.inbound.remove(&(to, request, cancel)) {
                    Some(reply) => reply.send(resp).is_ok(),
                    None => false,
                };
                // A response that never goes out frees its upload slot now (a sent one frees
                // it on `Answered`).
                if served && !delivered {
                    self.sent(to, request);
                }
            }
        }
    }

    fn sent(&mut self, to: NodeId, request: u64) {
        self.input(Input::Command(PeerCommand::Serve(ServerCommand::Sent {
            to,
            request,
        })));
    }

    fn origin_request(&mut self, client: OriginClient, origin: NodeId, req: ChunkRequest) {
        let tx = self.origin_tx.clone();
        let answer = |e: OriginError, request: u64| match e {
            OriginError::NotFound(_) => ChunkResponse::NotHave { request },
            e => {
                tracing::warn!("origin: {e}");
                ChunkResponse::Busy {
                    request,
                    retry_after_ms: 1_000,
                }
            }
        };
        match req {
            ChunkRequest::GetChunk { request, chunk, .. } => {
                let task = tokio::spawn(async move {
                    let resp = match client.chunk(&chunk).await {
                        Ok(bytes) => ChunkResponse::Chunk { request, bytes },
                        Err(e) => answer(e, request),
                    };
                    let _ = tx.send((origin, resp));
                });
                self.origin_tasks.insert(request, task.abort_handle());
            }
            ChunkRequest::GetManifest { request, track } => {
                let task = tokio::spawn(async move {
                    let resp = match client.manifest(&track).await {
                        Ok((_, bytes)) => ChunkResponse::Manifest { request, bytes },
                        Err(e) => answer(e, request),
                    };
                    let _ = tx.send((origin, resp));
                });
                self.origin_tasks.insert(request, task.abort_handle());
            }
            // The origin has everything; nobody asks it what it has.
            ChunkRequest::QueryHave { request, .. } => {
                let _ = tx.send((origin, ChunkResponse::NotHave { request }));
            }
            ChunkRequest::Cancel { request } => {
                if let Some(task) = self.origin_tasks.remove(&request) {
                    task.abort();
                }
                let _ = tx.send((origin, ChunkResponse::Cancelled { request }));
            }
        }
    }

    fn on_core_event(&mut self, e: PeerEvent) {
        match e {
            PeerEvent::Fetch(e) => self.on_fetch_event(e),
            PeerEvent::Serve(ServerEvent::Load { to, request, item }) => {
                // `DiskCache::get_chunk` verifies what it returns; manifests are re-read raw.
                let (bytes, verified) = match item {
                    crate::core::Item::Chunk(c) => (self.cache.get_chunk(&c), true),
                    crate::core::Item::Manifest(t) => (self.cache.manifest_bytes(&t), false),
                };
                self.input(Input::Command(PeerCommand::Serve(ServerCommand::Loaded {
                    to,
                    request,
                    bytes,
                    verified,
                })));
            }
            PeerEvent::Serve(ServerEvent::Corrupt(item)) => {
                if let crate::core::Item::Chunk(c) = item {
                    self.cache.remove_chunk(&c);
                    self.command(SchedulerCommand::CacheRemoved(c));
                    if let Some(t) = self.track_of_chunk.get(&c).copied() {
                        self.check_complete(t);
                    }
                }
            }
            PeerEvent::Serve(ServerEvent::Served { bytes, .. }) => self.served_bytes += bytes,
        }
    }

    fn on_fetch_event(&mut self, e: SchedulerEvent) {
        match e {
            SchedulerEvent::ReadCache { chunk, .. } => {
                // `DiskCache::get_chunk` verifies what it returns.
                let bytes = self.cache.get_chunk(&chunk);
                self.command(SchedulerCommand::CacheData {
                    chunk,
                    bytes,
                    verified: true,
                });
            }
            SchedulerEvent::ChunkReady {
                track,
                index,
                chunk,
                bytes,
                store,
                ..
            } => {
                // The player first, the disk after: writing the file is not on the way to the
                // first audio.
                let stored = store.then(|| bytes.clone());
                let _ = self.events.send(NodeEvent::Chunk {
                    track,
                    index,
                    bytes,
                });
                if let Some(bytes) = stored {
                    if let Err(e) = self.cache.put_chunk(&chunk, &bytes) {
                        tracing::warn!("cannot cache chunk {chunk}: {e}");
                        self.command(SchedulerCommand::CacheRemoved(chunk));
                    }
                    self.check_complete(track);
                }
            }
            SchedulerEvent::ManifestReady { track, bytes } => {
                if let Ok(manifest) = Manifest::decode(&bytes) {
                    self.learn_track(track, &manifest);
                    let _ = self.events.send(NodeEvent::Manifest { track, manifest });
                }
                if let Err(e) = self.cache.put_manifest(&track, &bytes) {
                    tracing::warn!("cannot cache manifest of {track}: {e}");
                }
            }
            SchedulerEvent::Evict(chunk) => {
                self.cache.remove_chunk(&chunk);
                if let Some(t) = self.track_of_chunk.get(&chunk).copied() {
                    self.check_complete(t);
                }
            }
            SchedulerEvent::NeedPeers(track) => self.lookup(track),
            SchedulerEvent::PlayStarted {
                track,
                time_to_first_audio_ms,
                ..
            } => {
                let _ = self.events.send(NodeEvent::PlayStarted {
                    track,
                    time_to_first_audio_ms,
                });
            }
            SchedulerEvent::Stutter { track, .. } => {
                let _ = self.events.send(NodeEvent::Stutter { track });
            }
            SchedulerEvent::TrackFinished(stats) => {
                let _ = self.events.send(NodeEvent::Transport {
                    relayed_bytes: self.relayed_bytes,
                    direct_bytes: self.direct_bytes,
                });
                let _ = self.events.send(NodeEvent::Finished(stats));
            }
            SchedulerEvent::PeerBanned { peer, reason } => {
                if let Some(p) = self.nodes.get(&peer).copied() {
                    tracing::warn!(%p, ?reason, "peer banned");
                    let _ = self.swarm.disconnect_peer_id(p);
                    let _ = self.events.send(NodeEvent::Banned { peer: p });
                }
            }
            SchedulerEvent::TrackInvalid(track) => {
                let _ = self.events.send(NodeEvent::TrackInvalid(track));
            }
            SchedulerEvent::Resumed { .. } | SchedulerEvent::QueueFull(_) => {}
        }
    }

    /// The attachment is being decided or set up: lookups and announces wait for its outcome
    /// (under a second at start), so they go to the right place with the right addresses.
    fn attaching(&self) -> bool {
        self.attacher.settling(self.now())
    }

    fn lookup(&mut self, track: TrackId) {
        if self.attaching() {
            if !self.deferred_lookups.contains(&track) && self.deferred_lookups.len() < 64 {
                self.deferred_lookups.push(track);
            }
            return;
        }
        let superpeer = self.current_superpeer().map(|(p, _)| p);
        let Some(target) = superpeer.or(self.tracker) else {
            // Nobody to ask: the origin alone serves.
            self.command(SchedulerCommand::Peers {
                track,
                peers: Vec::new(),
            });
            return;
        };
        if self
            .last_lookup
            .get(&track)
            .is_some_and(|t| t.elapsed() < self.min_lookup_interval)
        {
            return;
        }
        if self.last_lookup.len() > 4096 {
            self.last_lookup.clear();
        }
        self.last_lookup.insert(track, Instant::now());
        self.send_lookup(target, track, superpeer.is_some());
    }

    fn send_lookup(&mut self, to: PeerId, track: TrackId, superpeer: bool) {
        let id = self.swarm.behaviour_mut().tracker.lookup.send_request(
            &to,
            LookupRequest::Holders {
                track,
                limit: self.lookup_limit,
            },
        );
        self.lookups.insert(id, (track, superpeer));
    }

    /// A lookup got no answer: ask the tracker if a super-peer failed, else tell the core that
    /// nobody is known (it waits for an answer before leaning on the origin).
    fn lookup_failed(&mut self, track: TrackId, superpeer: bool) {
        if superpeer && let Some(tracker) = self.tracker {
            self.send_lookup(tracker, track, false);
        } else {
            self.command(SchedulerCommand::Peers {
                track,
                peers: Vec::new(),
            });
        }
    }

    fn on_holders(&mut self, track: TrackId, holders: Vec<shoal_protocol::wire::Holder>) {
        let me = self.swarm.local_peer_id().to_bytes();
        let mut peers = Vec::new();
        for h in holders {
            if h.peer.peer_id == me {
                continue;
            }
            let Ok(peer) = PeerId::from_bytes(&h.peer.peer_id) else {
                continue;
            };
            for a in &h.peer.addrs {
                if let Ok(addr) = a.parse::<Multiaddr>() {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
            // Behind NAT: reachable through its super-peer's relay.
            if let Some(via) = &h.via
                && let Ok(via_id) = PeerId::from_bytes(&via.peer_id)
            {
                for a in &via.addrs {
                    if let Ok(addr) = a.parse::<Multiaddr>() {
                        let base: Multiaddr = addr
                            .iter()
                            .filter(|p| !matches!(p, Protocol::P2p(_)))
                            .collect();
                        self.swarm.add_peer_address(
                            peer,
                            base.with(Protocol::P2p(via_id)).with(Protocol::P2pCircuit),
                        );
                    }
                }
            }
            let node = node_of(&peer);
            self.nodes.insert(node, peer);
            peers.push(PeerInfo {
                node,
                superpeer: h.superpeer,
                rtt_ms: None,
            });
        }
        tracing::debug!(%track, holders = peers.len(), "holders");
        self.command(SchedulerCommand::Peers { track, peers });
    }

    fn on_swarm(&mut self, ev: SwarmEvent<PeerBehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::Behaviour(PeerBehaviourEvent::Chunk(())) => {}
            SwarmEvent::Behaviour(PeerBehaviourEvent::ChunkInbound(never)) => match never {},
            SwarmEvent::Behaviour(PeerBehaviourEvent::Tracker(e)) => self.on_tracker(e),
            SwarmEvent::Behaviour(PeerBehaviourEvent::Relay(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => {
                tracing::info!(superpeer = %relay_peer_id, "attached: reachable through the super-peer's relay");
                self.attacher.attached(node_of(&relay_peer_id));
                self.announcer.reset(now);
                self.announcer.set_delegated(now, false);
                self.cluster_announcer.reset(now);
                self.cluster_announce = None;
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::Relay(_)) => {}
            SwarmEvent::Behaviour(PeerBehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    self.upgrades += 1;
                    tracing::info!(peer = %remote_peer_id, "relayed connection upgraded to direct");
                    // The relay steps aside: further traffic takes the direct connection.
                    let relayed: Vec<_> = self
                        .relayed_conns
                        .iter()
                        .filter(|(_, p)| **p == remote_peer_id)
                        .map(|(c, _)| *c)
                        .collect();
                    for c in relayed {
                        self.swarm.close_connection(c);
                    }
                    // Idle chunk streams may ride the relay: new ones take the direct path.
                    self.chunks.forget(&remote_peer_id);
                }
                Err(e) => tracing::info!(peer = %remote_peer_id, "no direct connection: {e}"),
            },
            SwarmEvent::Behaviour(PeerBehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                tracing::info!("reachability: {new:?}");
                match new {
                    autonat::NatStatus::Public(_) => self.attacher.set_public(true),
                    autonat::NatStatus::Private => self.attacher.set_public(false),
                    autonat::NatStatus::Unknown => {}
                }
            }
            SwarmEvent::Behaviour(PeerBehaviourEvent::Autonat(_)) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if endpoint
                    .get_remote_address()
                    .iter()
                    .any(|p| matches!(p, Protocol::P2pCircuit))
                {
                    self.relayed_conns.insert(connection_id, peer_id);
                }
                self.open_conns.insert(peer_id, num_established.get());
                if Some(peer_id) != self.tracker && num_established.get() == 1 {
                    let node = node_of(&peer_id);
                    self.nodes.insert(node, peer_id);
                    self.input(Input::Connected(node));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.relayed_conns.remove(&connection_id);
                if num_established > 0 {
                    self.open_conns.insert(peer_id, num_established);
                    return;
                }
                self.open_conns.remove(&peer_id);
                self.chunks.forget(&peer_id);
                let node = node_of(&peer_id);
                if Some(peer_id) == self.tracker {
                    self.announcer.reset(now);
                } else {
                    if self.superpeers.contains_key(&node) {
                        tracing::warn!(superpeer = %peer_id, "lost the super-peer");
                        self.attacher.lost(now, node);
                    }
                    self.input(Input::Disconnected(node));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if self.attach_listener.map(|(_, id)| id) == Some(listener_id) => {
                if let Some((n, _)) = self.attach_listener.take() {
                    tracing::warn!("relay reservation ended: {reason:?}");
                    self.attacher.lost(now, n);
                    self.announcer.reset(now);
                    self.announcer.set_delegated(now, false);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            _ => {}
        }
    }

    fn on_chunk(&mut self, e: ChunkStreamEvent) {
        match e {
            ChunkStreamEvent::Request {
                peer,
                id,
                request,
                reply,
            } => {
                let node = node_of(&peer);
                self.nodes.insert(node, peer);
                let key = request_key(node, &request);
                self.inbound.insert(key, reply);
                if !key.2 {
                    self.inbound_ids.insert(id, (node, key.1));
                }
                self.input(Input::Message {
                    from: node,
                    msg: ChunkMsg::Request(request),
                });
            }
            ChunkStreamEvent::Response { peer, id, response } => {
                if let ChunkResponse::Chunk { bytes, .. } | ChunkResponse::Manifest { bytes, .. } =
                    &response
                {
                    if self.only_relayed(&peer) {
                        self.relayed_bytes += bytes.len() as u64;
                    } else {
                        self.direct_bytes += bytes.len() as u64;
                    }
                }
                let node = self
                    .outbound
                    .remove(&id)
                    .map_or_else(|| node_of(&peer), |(n, _)| n);
                self.input(Input::Message {
                    from: node,
                    msg: ChunkMsg::Response(response),
                });
            }
            ChunkStreamEvent::Failure { peer, id, error } => {
                let sent = self.outbound.remove(&id);
                tracing::debug!(%peer, "chunk request failed: {error}");
                if !self.swarm.is_connected(&peer) {
                    self.input(Input::Disconnected(node_of(&peer)));
                } else if let Some((node, Some(request))) = sent
                    && !matches!(error, ChunkStreamError::Timeout(_))
                {
                    // One connection of several closed (a relayed one after a direct upgrade),
                    // or the stream failed: the peer did not serve this request. Say so the
                    // way the protocol does, so the scheduler asks again at once.
                    self.input(Input::Message {
                        from: node,
                        msg: ChunkMsg::Response(ChunkResponse::Busy {
                            request,
                            retry_after_ms: 0,
                        }),
                    });
                }
            }
            ChunkStreamEvent::Answered { id, .. } => {
                if let Some((node, request)) = self.inbound_ids.remove(&id) {
                    self.inbound.remove(&(node, request, false));
                    self.sent(node, request);
                }
            }
        }
    }

    /// Whether every open connection to `peer` goes through a relay. A chunk stream does not
    /// say which connection carries it; the relayed one is closed once a direct one is up, so
    /// "all relayed" is the relayed case but for that moment.
    fn only_relayed(&self, peer: &PeerId) -> bool {
        let relayed = self.relayed_conns.values().filter(|p| *p == peer).count();
        relayed > 0 && relayed >= self.open_conns.get(peer).map_or(0, |n| *n as usize)
    }

    fn on_tracker(&mut self, e: BehaviourEvent) {
        let now = self.now();
        match e {
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => self.attacher.rtt(node_of(&peer), rtt),
            BehaviourEvent::Announce(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if self.cluster_announce == Some(request_id) => {
                self.cluster_announce = None;
                // `Aggregated`: the super-peer announces for us, so the tracker need not hear
                // from us while we stay attached.
                let (ttl, delegated) = match response {
                    AnnounceResponse::Accepted { ttl_secs } => (Some(ttl_secs), false),
                    AnnounceResponse::Aggregated { ttl_secs } => (Some(ttl_secs), true),
                    AnnounceResponse::Rejected { reason } => {
                        tracing::warn!("the super-peer rejected our announce: {reason}");
                        (None, false)
                    }
                };
                self.announcer.set_delegated(now, delegated);
                self.cluster_announcer.answered(now, ttl);
            }
            BehaviourEvent::Announce(request_response::Event::OutboundFailure {
                request_id,
                ..
            }) if self.cluster_announce == Some(request_id) => {
                self.cluster_announce = None;
                self.announcer.set_delegated(now, false);
                self.cluster_announcer.answered(now, None);
            }
            BehaviourEvent::Announce(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => match response {
                AnnounceResponse::Accepted { ttl_secs }
                | AnnounceResponse::Aggregated { ttl_secs } => {
                    self.announcer.answered(now, Some(ttl_secs));
                }
                AnnounceResponse::Rejected { reason } => {
                    tracing::warn!("tracker rejected our announce: {reason}");
                    self.announcer.answered(now, None);
                }
            },
            BehaviourEvent::Announce(request_response::Event::OutboundFailure {
                error, ..
            }) => {
                tracing::warn!("announce failed: {error}");
                self.announcer.answered(now, None);
            }
            BehaviourEvent::Lookup(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                let asked = self.lookups.remove(&request_id);
                match response {
                    LookupResponse::Holders { track, holders }
                        if asked.map(|(t, _)| t) == Some(track) =>
                    {
                        self.on_holders(track, holders);
                    }
                    LookupResponse::Error { reason } => {
                        tracing::warn!("lookup failed: {reason}");
                        if let Some((track, sp)) = asked {
                            self.lookup_failed(track, sp);
                        }
                    }
                    _ => {}
                }
            }
            BehaviourEvent::Lookup(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some((track, sp)) = self.lookups.remove(&request_id) {
                    self.lookup_failed(track, sp);
                }
                tracing::warn!("lookup failed: {error}");
            }
            _ => {}
        }
    }
}
