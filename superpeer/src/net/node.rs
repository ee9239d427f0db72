//! The super-peer's libp2p node: circuit relay v2 (server) with streaming-sized limits,
//! identify, ping, AutoNAT (server side), and `/shoal/announce/1` + `/shoal/lookup/1`
//! answered from the [`ClusterIndex`], forwarding what the cluster cannot answer to the
//! tracker. Holder lookups also feed [`CacheAdmission`]: tracks several leaves ask for are
//! fetched by the embedded cache peer ([`super::cache`]), which lookups then list first.
//!
//! The index's holdings go to the tracker as batched, aggregated
//! [`ClusterAnnounce`](shoal_protocol::wire::ClusterAnnounce)s on
//! `/shoal/cluster/1` ([`TrackerSync`] decides what and when); while the tracker has the
//! cluster, leaves' announces are answered `Aggregated` and they stop announcing to the tracker
//! themselves.
//!
//! Thin driver: the index decides (announce rules, expiry, which leaves to hand out); this
//! module supplies identities (the PeerId each connection authenticated), observed addresses,
//! `now` from a monotonic clock, and the purge timer.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, relay};
use shoal_protocol::TrackId;
use shoal_protocol::ids::NodeId;
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{
    Announce, AnnounceResponse, Holder, LookupRequest, LookupResponse, PeerContact, WireMessage,
};
use shoal_tracker::net::p2p::{Behaviour as ShoalBehaviour, BehaviourEvent as ShoalEvent};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cache::{Cache, CacheView};
use super::config::Settings;
use super::throttle::Throttle;
use crate::core::{CacheAdmission, ClusterIndex, Observed, RelayLimits, SyncConfig, TrackerSync};

/// File name of the super-peer's key inside the data directory.
pub const KEY_FILE: &str = "superpeer.key";

/// Forwarded lookups waiting for the tracker at once; more are answered "busy".
const MAX_FORWARDS: usize = 1024;

/// A circuit closed cleanly sooner than this after opening counts as a likely direct upgrade
/// ([`Counters::circuits_closed_early`]).
pub const EARLY_CLOSE: Duration = Duration::from_secs(30);

/// The node's behaviours.
#[derive(NetworkBehaviour)]
pub struct SuperBehaviour {
    /// Circuit relay v2, server side.
    pub relay: relay::Behaviour,
    /// AutoNAT v1: answers leaves' dial-back probes so they learn whether they are NATed.
    pub autonat: autonat::Behaviour,
    /// `/shoal/announce/1`, `/shoal/lookup/1` (both ways: answers leaves, asks the tracker),
    /// identify (`/shoal/1`) and ping.
    pub shoal: ShoalBehaviour,
}

/// Maps the operator's limits onto libp2p's relay config. The per-peer and per-IP request
/// rate limiters (reservation and circuit requests per interval) are libp2p's defaults scaled
/// up so a leaf that skips between tracks is never refused a circuit; bandwidth is capped by
/// [`Throttle`], not here (libp2p's rate limiters count requests, not bytes).
pub fn relay_config(limits: &RelayLimits) -> relay::Config {
    let per_minute = |n: u32| {
        (
            NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN),
            Duration::from_secs(60),
        )
    };
    let (r, ri) = per_minute(60);
    let (c, ci) = per_minute(600);
    relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: limits.max_reservations_per_peer,
        reservation_duration: limits.reservation_duration,
        reservation_rate_limiters: Vec::new(),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits.max_circuit_duration,
        max_circuit_bytes: limits.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(r, ri)
    .circuit_src_per_peer(c, ci)
}

/// Counters shared with the HTTP side.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connected peers.
    pub connected_peers: AtomicU64,
    /// Peers holding a relay reservation.
    pub reservations: AtomicU64,
    /// Reservations accepted (new and renewed).
    pub reservations_accepted: AtomicU64,
    /// Reservations denied (limits).
    pub reservations_denied: AtomicU64,
    /// Relayed circuits open now.
    pub circuits_open: AtomicU64,
    /// Circuits accepted since start.
    pub circuits_accepted: AtomicU64,
    /// Circuits denied (limits, no reservation).
    pub circuits_denied: AtomicU64,
    /// Circuits closed with an error (limit reached, reset).
    pub circuits_failed: AtomicU64,
    /// Circuits closed, any way.
    pub circuits_closed: AtomicU64,
    /// Circuits the leaves closed cleanly within [`EARLY_CLOSE`] of opening. Leaves close a
    /// relayed connection as soon as DCUtR gives them a direct one, so this approximates
    /// direct-upgrade successes: the relay cannot see DCUtR itself (it runs end to end inside
    /// the encrypted circuit).
    pub circuits_closed_early: AtomicU64,
    /// Circuits that carried traffic longer than [`EARLY_CLOSE`]: the two leaves kept using
    /// the relay (no direct connection, or a failed upgrade), counted when they close.
    pub circuits_closed_late: AtomicU64,
    /// Lookups received.
    pub lookups: AtomicU64,
    /// Lookups forwarded to the tracker.
    pub lookups_forwarded: AtomicU64,
    /// AutoNAT dial-back probes answered.
    pub autonat_probes: AtomicU64,
    /// Holder lookups answered with the cache peer.
    pub cache_hits: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn dec(c: &AtomicU64) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

/// State the HTTP side reads.
#[derive(Debug)]
pub struct Shared {
    /// This node's PeerId.
    pub peer_id: PeerId,
    /// When the node started.
    pub started: Instant,
    /// Counters.
    pub counters: Counters,
    /// Bytes through every connection (relayed traffic dominates).
    pub throttle: Throttle,
    /// The cluster index.
    pub index: Mutex<ClusterIndex>,
    /// What the tracker knows of the cluster (aggregated announces).
    pub sync: Mutex<TrackerSync>,
    /// Listen addresses (without `/p2p/`).
    pub listen_addrs: Mutex<Vec<Multiaddr>>,
    /// Advertised addresses (without `/p2p/`).
    pub external_addrs: Mutex<Vec<Multiaddr>>,
    /// The tracker's libp2p endpoint when known.
    pub tracker: Mutex<Option<PeerId>>,
    /// Which tracks to cache, and which the cache holds.
    pub admission: Mutex<CacheAdmission>,
    /// The cache peer, as the lookup path and the status page see it.
    pub cache: Mutex<CacheView>,
}

/// Locks ignoring poison (every guarded value stays consistent between calls).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Commands to the swarm task.
#[derive(Debug)]
pub enum Command {
    /// Apply reloadable settings.
    Reload(Box<Settings>),
    /// Close every connection and stop; the sender learns when done.
    Shutdown(oneshot::Sender<()>),
}

/// The running node.
#[derive(Debug)]
pub struct Node {
    /// Shared state (for HTTP).
    pub shared: Arc<Shared>,
    /// Commands to the swarm task.
    pub commands: mpsc::Sender<Command>,
    /// Listen addresses bound at start (ports resolved).
    pub listen_addrs: Vec<Multiaddr>,
    task: JoinHandle<()>,
    cache: Option<Cache>,
}

impl Node {
    /// Tells the node to close every connection, then waits for its task (at most `grace`).
    pub async fn shutdown(self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(grace, rx).await;
        }
        self.task.abort();
        let _ = self.task.await;
        if let Some(c) = self.cache {
            c.shutdown(grace).await;
        }
    }
}

/// Builds the swarm: QUIC and TCP+Noise+Yamux, every connection's substreams counted and, when
/// a bandwidth cap is set, throttled by `throttle`.
fn build_swarm(
    key: Keypair,
    limits: &RelayLimits,
    throttle: Throttle,
) -> anyhow::Result<Swarm<SuperBehaviour>> {
    let relay_cfg = relay_config(limits);
    let autonat_cfg = autonat::Config {
        // Server side only: never probe ourselves through connected leaves.
        use_connected: false,
        ..autonat::Config::default()
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| super::throttle::transport(key, throttle))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            SuperBehaviour {
                relay: relay::Behaviour::new(peer_id, relay_cfg),
                autonat: autonat::Behaviour::new(peer_id, autonat_cfg),
                shoal: ShoalBehaviour::new(key, ProtocolSupport::Full, Duration::from_secs(10)),
            }
        })?
        // Leaves keep their connection for the reservation; others go after a minute idle;
        // streams we open (cache fills, tracker syncs) negotiate in zero round trips.
        .with_swarm_config(shoal_peer::net::node::swarm_config)
        .build();
    Ok(swarm)
}

/// Loads the key, binds every listen address, starts the swarm task.
pub async fn start(settings: &Settings) -> anyhow::Result<Node> {
    use anyhow::Context;
    let key = shoal_tracker::net::p2p::load_or_create_key(&settings.data.join(KEY_FILE))?;
    let peer_id = key.public().to_peer_id();
    let throttle = Throttle::new(settings.relay.relay_bytes_per_sec());
    let mut swarm = build_swarm(key, &settings.relay, throttle.clone())
        .context("cannot set up the libp2p transport")?;
    let listen_addrs =
        shoal_tracker::net::p2p::listen_all(&mut swarm, &settings.listen, Duration::from_secs(10))
            .await
            .map_err(|(addr, reason)| anyhow::anyhow!("cannot listen on {addr}: {reason}"))?;
    let shared = Arc::new(Shared {
        peer_id,
        started: Instant::now(),
        counters: Counters::default(),
        throttle,
        index: Mutex::new({
            let mut index = ClusterIndex::new(settings.index.clone());
            index.set_tracking(settings.tracker.is_some());
            index
        }),
        sync: Mutex::new(TrackerSync::new(SyncConfig::default())),
        listen_addrs: Mutex::new(listen_addrs.clone()),
        external_addrs: Mutex::new(Vec::new()),
        tracker: Mutex::new(None),
        admission: Mutex::new(CacheAdmission::new(settings.cache.admission.clone())),
        cache: Mutex::new(CacheView::default()),
    });
    let cache_wake = Arc::new(Notify::new());
    let cache = super::cache::start(settings, &shared, Arc::clone(&cache_wake))?;
    let (commands, rx) = mpsc::channel(8);
    let (tracker_tx, tracker_rx) = mpsc::channel(4);
    let mut driver = Driver {
        swarm,
        shared: Arc::clone(&shared),
        start: Instant::now(),
        peers: HashMap::new(),
        reserved: HashSet::new(),
        forwards: HashMap::new(),
        tracker: None,
        cluster_request: None,
        circuits: HashMap::new(),
        tracker_tx,
        tracker_rx,
        settings: settings.clone(),
        cache_wake,
    };
    driver.apply_external_addrs(&listen_addrs);
    driver.resolve_tracker();
    let task = tokio::spawn(driver.run(rx));
    Ok(Node {
        shared,
        commands,
        listen_addrs,
        task,
        cache,
    })
}

/// What the driver knows about a connected peer.
#[derive(Debug, Default)]
struct PeerState {
    /// Remote address of each open connection.
    observed: Vec<(ConnectionId, Multiaddr)>,
    /// Listen addresses from identify.
    listen: Vec<Multiaddr>,
}

/// A lookup waiting for the tracker's answer.
struct Forward {
    channel: ResponseChannel<LookupResponse>,
}

/// The tracker's libp2p endpoint.
#[derive(Debug, Clone)]
struct TrackerEndpoint {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
}

struct Driver {
    swarm: Swarm<SuperBehaviour>,
    shared: Arc<Shared>,
    start: Instant,
    peers: HashMap<PeerId, PeerState>,
    reserved: HashSet<PeerId>,
    forwards: HashMap<OutboundRequestId, Forward>,
    tracker: Option<TrackerEndpoint>,
    /// The aggregated announce waiting for the tracker's answer.
    cluster_request: Option<OutboundRequestId>,
    /// When each open circuit (source, destination) opened, oldest first (bounded by the
    /// relay's circuit limit).
    circuits: HashMap<(PeerId, PeerId), std::collections::VecDeque<Instant>>,
    tracker_tx: mpsc::Sender<Result<TrackerEndpoint, String>>,
    tracker_rx: mpsc::Receiver<Result<TrackerEndpoint, String>>,
    settings: Settings,
    /// Wakes the cache task when a track is admitted.
    cache_wake: Arc<Notify>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.purge_deadline();
            let purge = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Reload(s)) => self.reload(*s),
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        break;
                    }
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(found) = self.tracker_rx.recv() => self.on_tracker_found(found),
                () = purge => self.purge(),
            }
            self.sync_tracker();
        }
        tracing::info!("libp2p side stopped");
    }

    /// Stops offering the relay, tells the tracker the cluster is gone (an empty snapshot, at
    /// most 1 s), closes every connection (leaves see the close and attach elsewhere) and keeps
    /// polling until they are closed, at most 3 s.
    async fn shutdown(&mut self) {
        self.swarm
            .behaviour_mut()
            .relay
            .set_status(Some(relay::Status::Disable));
        self.goodbye_to_tracker().await;
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        tracing::info!(peers = peers.len(), "closing connections");
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let drain = async {
            while self.swarm.connected_peers().next().is_some() {
                let _ = self.swarm.select_next_some().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        // Let QUIC send its CONNECTION_CLOSE frames.
        let flush = async {
            loop {
                let _ = self.swarm.select_next_some().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), flush).await;
    }

    /// An empty `replace` cluster announce, so the tracker stops handing out leaves that are
    /// about to lose their relay (they re-announce through their next super-peer).
    async fn goodbye_to_tracker(&mut self) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        if !lock(&self.shared.sync).forwarding() {
            return;
        }
        let msg = shoal_protocol::wire::ClusterAnnounce {
            replace: true,
            tracks: Vec::new(),
            leaves: Vec::new(),
            addrs: Vec::new(),
            region: None,
        };
        let id = self
            .swarm
            .behaviour_mut()
            .shoal
            .cluster
            .send_request_with_addresses(&tracker.peer, msg, tracker.addrs.clone());
        let wait = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(SuperBehaviourEvent::Shoal(ShoalEvent::Cluster(
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        },
                    ))) if request_id == id => return Some(response),
                    SwarmEvent::Behaviour(SuperBehaviourEvent::Shoal(ShoalEvent::Cluster(
                        request_response::Event::OutboundFailure { request_id, .. },
                    ))) if request_id == id => return None,
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), wait).await {
            Ok(Some(AnnounceResponse::Accepted { .. })) => {
                tracing::info!("the tracker dropped this cluster");
            }
            other => tracing::info!(?other, "the tracker did not confirm dropping this cluster"),
        }
    }

    fn reload(&mut self, new: Settings) {
        let restart = self.settings.restart_needed(&new);
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "changed settings need a restart to apply");
        }
        lock(&self.shared.index).set_config(new.index.clone());
        self.shared
            .throttle
            .set_rate(new.relay.relay_bytes_per_sec());
        let tracker_changed = new.tracker != self.settings.tracker;
        let external_changed = new.external_addrs != self.settings.external_addrs;
        // Only the reloadable keys are taken; the rest stay as running.
        self.settings.tracker = new.tracker;
        self.settings.external_addrs = new.external_addrs;
        // Sent with the next aggregated announce (a snapshot, so every track carries it).
        if new.region != self.settings.region {
            self.settings.region = new.region;
            let now = self.now();
            self.cluster_request = None;
            lock(&self.shared.sync).reset(now);
        }
        self.settings.index = new.index;
        let mut admission = new.cache.admission;
        // The cache's size is fixed until a restart.
        admission.max_cache_bytes = self.settings.cache.max_bytes;
        lock(&self.shared.admission).set_config(admission.clone());
        self.settings.cache.admission = admission;
        self.settings.relay.relay_bandwidth_mbit = new.relay.relay_bandwidth_mbit;
        if external_changed {
            let listen = lock(&self.shared.listen_addrs).clone();
            self.apply_external_addrs(&listen);
        }
        if tracker_changed {
            self.tracker = None;
            self.cluster_request = None;
            *lock(&self.shared.tracker) = None;
            lock(&self.shared.index).set_tracking(self.settings.tracker.is_some());
            let now = self.now();
            lock(&self.shared.sync).reset(now);
            self.resolve_tracker();
        }
        tracing::info!("configuration reloaded");
    }

    /// Advertises the configured external addresses, or the listen addresses when none are
    /// configured (loopback and tests).
    fn apply_external_addrs(&mut self, listen: &[Multiaddr]) {
        let old: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        for a in old {
            self.swarm.remove_external_address(&a);
        }
        let want: Vec<Multiaddr> = if self.settings.external_addrs.is_empty() {
            listen
                .iter()
                .filter(|a| !is_unspecified(a))
                .cloned()
                .collect()
        } else {
            self.settings.external_addrs.clone()
        };
        for a in &want {
            self.swarm.add_external_address(a.clone());
        }
        *lock(&self.shared.external_addrs) = want;
    }

    /// Starts finding the tracker's libp2p endpoint (`GET {tracker}/p2p`) in the background.
    fn resolve_tracker(&self) {
        let Some(url) = self.settings.tracker.clone() else {
            return;
        };
        let tx = self.tracker_tx.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                match fetch_tracker(&url).await {
                    Ok(t) => {
                        let _ = tx.send(Ok(t)).await;
                        return;
                    }
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        });
    }

    fn on_tracker_found(&mut self, found: Result<TrackerEndpoint, String>) {
        match found {
            Ok(t) => {
                tracing::info!(tracker = %t.peer, addrs = ?t.addrs, "tracker endpoint found");
                for a in &t.addrs {
                    self.swarm.add_peer_address(t.peer, a.clone());
                }
                *lock(&self.shared.tracker) = Some(t.peer);
                self.tracker = Some(t);
                // A tracker we have not told anything yet: a snapshot first.
                self.cluster_request = None;
                let now = self.now();
                lock(&self.shared.sync).reset(now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the tracker's libp2p endpoint; retrying")
            }
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn purge_deadline(&self) -> Option<tokio::time::Instant> {
        let mut at = lock(&self.shared.index).next_deadline();
        if self.tracker.is_some() {
            at = at.min(lock(&self.shared.sync).next_wake());
        }
        if at == Time::NEVER {
            return None;
        }
        let at = self
            .start
            .checked_add(Duration::from_micros(at.as_micros()))?;
        Some(tokio::time::Instant::from_std(at))
    }

    fn purge(&mut self) {
        let now = self.now();
        let removed = lock(&self.shared.index).purge_expired(now, 1024);
        if removed > 0 {
            tracing::debug!(removed, "expired leaves purged");
        }
    }

    /// Sends the aggregated announce [`TrackerSync`] wants now, if any.
    fn sync_tracker(&mut self) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        if self.cluster_request.is_some() {
            return;
        }
        let now = self.now();
        let addrs = self.own_contact().addrs;
        let region = self.settings.region.clone();
        let msg = {
            let mut index = lock(&self.shared.index);
            lock(&self.shared.sync).poll(now, &mut index, &addrs, region.as_deref())
        };
        let Some(msg) = msg else { return };
        if let Err(e) = msg.encode_payload() {
            tracing::warn!(error = %e, "aggregated announce not sendable");
            lock(&self.shared.sync).answered(now, None);
            return;
        }
        tracing::debug!(
            replace = msg.replace,
            tracks = msg.tracks.len(),
            leaves = msg.leaves.len(),
            "aggregated announce to the tracker"
        );
        let id = self
            .swarm
            .behaviour_mut()
            .shoal
            .cluster
            .send_request_with_addresses(&tracker.peer, msg, tracker.addrs.clone());
        self.cluster_request = Some(id);
    }

    fn on_cluster_answer(&mut self, answer: Result<AnnounceResponse, String>) {
        self.cluster_request = None;
        let now = self.now();
        let ttl = match answer {
            Ok(
                AnnounceResponse::Accepted { ttl_secs } | AnnounceResponse::Aggregated { ttl_secs },
            ) => Some(ttl_secs),
            Ok(AnnounceResponse::Rejected { reason }) => {
                tracing::info!(%reason, "the tracker rejected the aggregated announce; resending a snapshot");
                None
            }
            Err(error) => {
                tracing::info!(%error, "aggregated announce failed; resending a snapshot");
                None
            }
        };
        lock(&self.shared.sync).answered(now, ttl);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<SuperBehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                let state = self.peers.entry(peer_id).or_default();
                if state.observed.is_empty() {
                    inc(&self.shared.counters.connected_peers);
                }
                state.observed.push((connection_id, without_p2p(remote)));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.observed.retain(|(c, _)| *c != connection_id);
                }
                if num_established == 0 {
                    if self.peers.remove(&peer_id).is_some() {
                        dec(&self.shared.counters.connected_peers);
                    }
                    if self.reserved.remove(&peer_id) {
                        dec(&self.shared.counters.reservations);
                    }
                    // Not reachable through us any more: stop handing it out.
                    let node = NodeId::from_key(&peer_id.to_bytes());
                    if lock(&self.shared.index).forget(&node) {
                        tracing::debug!(%peer_id, "leaf left the cluster");
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let p2p = address.clone().with(Protocol::P2p(self.shared.peer_id));
                println!("p2p {p2p}");
                let listen = {
                    let mut listen = lock(&self.shared.listen_addrs);
                    if !listen.contains(&address) {
                        listen.push(address);
                    }
                    listen.clone()
                };
                if self.settings.external_addrs.is_empty() {
                    self.apply_external_addrs(&listen);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.shared.listen_addrs).retain(|a| *a != address);
                tracing::info!(%address, "listen address expired");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "libp2p listener error");
            }
            SwarmEvent::Behaviour(SuperBehaviourEvent::Relay(e)) => self.on_relay(e),
            SwarmEvent::Behaviour(SuperBehaviourEvent::Autonat(autonat::Event::InboundProbe(
                autonat::InboundProbeEvent::Response { peer, .. },
            ))) => {
                tracing::debug!(%peer, "autonat dial-back succeeded");
                inc(&self.shared.counters.autonat_probes);
            }
            SwarmEvent::Behaviour(SuperBehaviourEvent::Shoal(e)) => self.on_shoal(e),
            _ => {}
        }
    }

    fn on_relay(&mut self, e: relay::Event) {
        let c = &self.shared.counters;
        match e {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                inc(&c.reservations_accepted);
                if self.reserved.insert(src_peer_id) {
                    inc(&c.reservations);
                }
                tracing::debug!(peer = %src_peer_id, "reservation accepted");
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                inc(&c.reservations_denied);
                tracing::info!(peer = %src_peer_id, ?status, "reservation denied");
            }
            relay::Event::ReservationTimedOut { src_peer_id }
                if self.reserved.remove(&src_peer_id) =>
            {
                dec(&c.reservations);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                inc(&c.circuits_accepted);
                inc(&c.circuits_open);
                self.circuits
                    .entry((src_peer_id, dst_peer_id))
                    .or_default()
                    .push_back(Instant::now());
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                inc(&c.circuits_denied);
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                dec(&c.circuits_open);
                inc(&c.circuits_closed);
                let key = (src_peer_id, dst_peer_id);
                let opened = self.circuits.get_mut(&key).and_then(|q| q.pop_front());
                if self.circuits.get(&key).is_some_and(|q| q.is_empty()) {
                    self.circuits.remove(&key);
                }
                let early = opened.is_some_and(|t| t.elapsed() < EARLY_CLOSE);
                if let Some(error) = error {
                    inc(&c.circuits_failed);
                    tracing::info!(src = %src_peer_id, dst = %dst_peer_id, %error, "circuit closed");
                } else if early {
                    inc(&c.circuits_closed_early);
                    tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit closed early (likely upgraded to direct)");
                }
                if !early {
                    inc(&c.circuits_closed_late);
                }
            }
            _ => {}
        }
    }

    fn on_shoal(&mut self, e: ShoalEvent) {
        match e {
            ShoalEvent::Announce(request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            }) => self.on_announce(peer, connection_id, &request, channel),
            ShoalEvent::Lookup(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.on_lookup(peer, request, channel),
            ShoalEvent::Lookup(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(f) = self.forwards.remove(&request_id) {
                    self.respond_lookup(f.channel, response);
                }
            }
            ShoalEvent::Lookup(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(f) = self.forwards.remove(&request_id) {
                    tracing::info!(%error, "forwarded lookup failed");
                    let reason = format!("tracker unreachable from the super-peer: {error}");
                    self.respond_lookup(f.channel, LookupResponse::Error { reason });
                }
            }
            ShoalEvent::Cluster(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if self.cluster_request == Some(request_id) => {
                self.on_cluster_answer(Ok(response));
            }
            ShoalEvent::Cluster(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if self.cluster_request == Some(request_id) => {
                self.on_cluster_answer(Err(error.to_string()));
            }
            ShoalEvent::Announce(request_response::Event::InboundFailure {
                peer, error, ..
            })
            | ShoalEvent::Lookup(request_response::Event::InboundFailure { peer, error, .. }) => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            ShoalEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.listen = info.listen_addrs.into_iter().map(without_p2p).collect();
                }
            }
            _ => {}
        }
    }

    /// The contact the index records for `peer` when its announce lists no addresses: the
    /// address this connection comes from, its other connections', its identify listen
    /// addresses (the index cuts them to its limits).
    fn contact_of(&self, peer: &PeerId, connection: ConnectionId) -> PeerContact {
        let mut addrs: Vec<String> = Vec::new();
        if let Some(state) = self.peers.get(peer) {
            let this = state.observed.iter().filter(|(c, _)| *c == connection);
            let others = state.observed.iter().filter(|(c, _)| *c != connection);
            for a in this
                .chain(others)
                .map(|(_, a)| a)
                .chain(state.listen.iter())
            {
                let s = a.to_string();
                if !addrs.contains(&s) {
                    addrs.push(s);
                }
            }
        }
        PeerContact {
            peer_id: peer.to_bytes(),
            addrs,
        }
    }

    /// This super-peer as a `via` contact: its PeerId and advertised addresses.
    fn own_contact(&self) -> PeerContact {
        PeerContact {
            peer_id: self.shared.peer_id.to_bytes(),
            addrs: lock(&self.shared.external_addrs)
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    fn on_announce(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        msg: &Announce,
        channel: ResponseChannel<AnnounceResponse>,
    ) {
        let contact = self.contact_of(&peer, connection);
        let node = NodeId::from_key(&contact.peer_id);
        let now = self.now();
        // While the tracker has the cluster, the leaf need not announce to it itself.
        let aggregated = self.tracker.is_some() && lock(&self.shared.sync).forwarding();
        let response = match lock(&self.shared.index).announce(node, &contact, msg, now) {
            Ok(a) => {
                tracing::debug!(%peer, listed = a.listed, added = a.added, removed = a.removed, aggregated, "announce accepted");
                if aggregated {
                    AnnounceResponse::Aggregated {
                        ttl_secs: a.ttl_secs,
                    }
                } else {
                    a.to_response()
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "announce rejected");
                e.to_response()
            }
        };
        if self
            .swarm
            .behaviour_mut()
            .shoal
            .announce
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!(%peer, "announce answer not sent: the stream is gone");
        }
    }

    fn on_lookup(
        &mut self,
        peer: PeerId,
        request: LookupRequest,
        channel: ResponseChannel<LookupResponse>,
    ) {
        inc(&self.shared.counters.lookups);
        if let LookupRequest::Holders { track, limit } = &request {
            let node = NodeId::from_key(&peer.to_bytes());
            let now = self.now();
            let cached = self.cache_holder(peer, node, *track, now);
            let found = lock(&self.shared.index).holders(node, track, usize::from(*limit), now);
            if !found.is_empty() || self.tracker.is_none() || cached.is_some() {
                if cached.is_some() {
                    inc(&self.shared.counters.cache_hits);
                }
                let via = self.own_contact();
                let holders = cached
                    .into_iter()
                    .chain(found.into_iter().map(|h| Holder {
                        peer: h.contact,
                        via: Some(via.clone()),
                        region: h.region,
                        superpeer: false,
                    }))
                    .take(usize::from(*limit).max(1))
                    .collect();
                let track = *track;
                self.respond_lookup(channel, LookupResponse::Holders { track, holders });
                return;
            }
        }
        let Some(tracker) = self.tracker.clone() else {
            let reason = "search is not available here: this super-peer has no tracker".into();
            self.respond_lookup(channel, LookupResponse::Error { reason });
            return;
        };
        if self.forwards.len() >= MAX_FORWARDS {
            let reason = "busy: too many lookups waiting for the tracker, retry shortly".into();
            self.respond_lookup(channel, LookupResponse::Error { reason });
            return;
        }
        inc(&self.shared.counters.lookups_forwarded);
        let id = self
            .swarm
            .behaviour_mut()
            .shoal
            .lookup
            .send_request_with_addresses(&tracker.peer, request, tracker.addrs.clone());
        self.forwards.insert(id, Forward { channel });
    }

    /// Counts `peer`'s lookup of `track` for cache admission (waking the cache task when
    /// the track is admitted); the cache peer as a holder when it holds the whole track.
    /// The cache peer is public, so no `via`; `Holder` has no super-peer flag yet, so leaves
    /// count its bytes as `peers`.
    fn cache_holder(
        &mut self,
        peer: PeerId,
        node: NodeId,
        track: TrackId,
        now: Time,
    ) -> Option<Holder> {
        let (cache_peer, addrs) = {
            let v = lock(&self.shared.cache);
            (v.peer_id?, v.addrs.clone())
        };
        if cache_peer == peer {
            return None;
        }
        match lock(&self.shared.admission).observe(node, track, now) {
            Observed::Admitted => {
                tracing::info!(%track, "track admitted to the chunk cache");
                self.cache_wake.notify_one();
                None
            }
            Observed::Cached if !addrs.is_empty() => Some(Holder {
                peer: PeerContact {
                    peer_id: cache_peer.to_bytes(),
                    addrs: addrs.iter().map(ToString::to_string).collect(),
                },
                via: None,
                region: None,
                superpeer: true,
            }),
            _ => None,
        }
    }

    fn respond_lookup(
        &mut self,
        channel: ResponseChannel<LookupResponse>,
        response: LookupResponse,
    ) {
        let response = fit(response);
        if self
            .swarm
            .behaviour_mut()
            .shoal
            .lookup
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("lookup answer not sent: the stream is gone");
        }
    }
}

/// Drops trailing holders until the answer fits the frame limit.
fn fit(mut response: LookupResponse) -> LookupResponse {
    while response.encode_payload().is_err() {
        match &mut response {
            LookupResponse::Tracks(v) if !v.is_empty() => {
                v.pop();
            }
            LookupResponse::Holders { holders, .. } if !holders.is_empty() => {
                holders.pop();
            }
            _ => {
                return LookupResponse::Error {
                    reason: "answer too large".into(),
                };
            }
        }
    }
    response
}

/// The JSON of the tracker's `GET /p2p`.
#[derive(serde::Deserialize)]
struct P2pInfo {
    peer_id: String,
    addrs: Vec<String>,
}

async fn fetch_tracker(url: &str) -> Result<TrackerEndpoint, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let info: P2pInfo = client
        .get(format!("{url}/p2p"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}/p2p: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}/p2p: {e}"))?;
    let peer: PeerId = info
        .peer_id
        .parse()
        .map_err(|e| format!("GET {url}/p2p: bad peer_id: {e}"))?;
    let addrs = info
        .addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .map(without_p2p)
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(format!("GET {url}/p2p: no usable addresses"));
    }
    Ok(TrackerEndpoint { peer, addrs })
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_config_carries_the_limits() {
        let l = RelayLimits::default();
        let c = relay_config(&l);
        assert_eq!(c.max_circuit_bytes, 0);
        assert_eq!(c.max_circuit_duration, l.max_circuit_duration);
        assert_eq!(c.max_circuits, 2048);
        assert_eq!(c.reservation_rate_limiters.len(), 1);
    }
}
