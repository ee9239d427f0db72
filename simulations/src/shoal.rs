//! Owns the integration of Shoal's real cores into the simulator: [`ShoalCores`] runs
//! `shoal_peer::core::PeerCore` (FetchScheduler + ChunkServer + LRU cache index) on every
//! peer, a `ChunkServer` on every origin and `shoal_tracker::core::TrackerCore` (the peer
//! registry) on the tracker, and does for them exactly what the real drivers do — answers disk
//! reads from the (synthetic) store, tells a server when a response went out, announces what a
//! peer's cache holds, turns `NeedPeers` into a holder lookup and its answer into
//! `SchedulerCommand::Peers`, maps listener actions to commands and core events to statistics.
//! Every decision (which source, when to hedge, when to fall back to the origin, what to cache
//! or prefetch, whom to serve, which holders to list and in what order, when an entry expires)
//! is the cores'.
//!
//! Not yet integrated (its core has not landed): super-peers (they relay NATed traffic at the
//! transport level only: no index, no cache).
//!
//! **Announces** are the client's own policy, `shoal_peer::core::Announcer` (one per session,
//! as the client process has): the driver tells it which tracks the disk cache holds
//! completely (at start-up, then as `ChunkReady { store: true }` and `Evict` change that),
//! sends the announces it plans, reports the tracker's answers and wakes it when it asks.
//! `via` is the peer's nearest super-peer, `region` its country. Peers announce no addresses:
//! the simulator reaches a node by its id, and the link model applies NAT (direct, hole punch
//! or relay). A peer that quits says nothing: its entry lapses with the TTL.
//!
//! **Identities**: node `i` is `NodeId::from_index(i)`; its contact's `peer_id` is those 32
//! bytes, so a holder maps back with `NodeId::from_bytes` exactly. The registry derives a
//! cluster key from `via` with `cluster_of` (`NodeId::from_key` of the super-peer's peer id),
//! which is not the super-peer's simulator id; peers with the same super-peer still share one
//! key, which is all ranking by cluster among peers needs (super-peers neither announce nor
//! ask here).

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_peer::core::{
    AnnounceConfig, Announcer, ChunkMsg, ChunkNames, ChunkServer, Item, ManifestPool, NodeNames,
    PeerCommand, PeerConfig, PeerCore, PeerEvent, PeerInfo, SchedulerCommand, SchedulerConfig,
    SchedulerEvent, ServerCommand, ServerConfig,
};
use shoal_protocol::wire::{
    Announce, AnnounceResponse, ChunkRequest, ChunkResponse, LENGTH_PREFIX_BYTES, LookupRequest,
    LookupResponse, PeerContact, WireMessage,
};
use shoal_protocol::{Core, Input, NodeId, Output, Time, TrackId};
use shoal_tracker::core::{RegistryConfig, RegistryMessage, TrackerCore, TrackerEvent};

use crate::catalog::SynthCatalog;
use crate::cores::{Cores, Feedback, Listen, NodeInfo};
use crate::net::Role;
use crate::rng::{IdMap, IdSet};
use crate::scenario::{PeerSection, Scenario};
use crate::stats::{PlaybackStats, Source};

/// A message between simulated nodes. The rare, large registry messages are boxed so that
/// every message (mostly chunk traffic) moves through the event slab at 88 bytes, not 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimMsg {
    /// `/shoal/chunk/2`.
    Chunk(ChunkMsg),
    /// `/shoal/announce/1` request, peer to tracker (the tracker's driver attests the sender's
    /// contact from the connection).
    Announce(Box<Announce>),
    /// Registry traffic as the tracker core speaks it: holder lookups, their answers, announce
    /// answers.
    Registry(Box<RegistryMessage>),
    /// One round trip of a play's set-up with the service (`client.play_setup_round_trips`):
    /// a request from the listener to its origin (`reply: false`) and the answer. Not Shoal
    /// traffic: it models what a client like Spotify's must ask its access point before a
    /// play can start (the track's metadata, its decryption key), answered by the origin's
    /// driver.
    Setup {
        /// The listener's play it belongs to.
        seq: u32,
        /// True for the answer.
        reply: bool,
    },
}

/// An event of a simulated node's core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// From a peer's or origin's core.
    Peer(PeerEvent),
    /// From the tracker core.
    Tracker(TrackerEvent),
}

/// A simulated node's core: the listener's whole core, an origin's chunk server, or the
/// tracker's registry.
#[derive(Debug)]
pub enum SimNode {
    /// A listener.
    Peer(Box<PeerCore>),
    /// An origin store's server.
    Origin(Box<ChunkServer>),
    /// The tracker.
    Tracker(Box<TrackerCore>),
}

/// The contact the tracker's driver attests for node `id`: its peer id is the id's bytes.
fn contact_of(id: NodeId) -> PeerContact {
    PeerContact {
        peer_id: id.as_bytes().to_vec(),
        addrs: Vec::new(),
    }
}

/// The node a contact names (the inverse of [`contact_of`]).
fn node_of(c: &PeerContact) -> Option<NodeId> {
    <[u8; 32]>::try_from(c.peer_id.as_slice())
        .ok()
        .map(NodeId::from_bytes)
}

impl Core for SimNode {
    type Message = SimMsg;
    type Command = PeerCommand;
    type Event = SimEvent;

    fn handle_input(&mut self, now: Time, input: Input<SimMsg, PeerCommand>) {
        match self {
            SimNode::Peer(c) => {
                // Registry answers are handled by the driver (`on_deliver`).
                let chunk = |_, m| match m {
                    SimMsg::Chunk(m) => Some(m),
                    _ => None,
                };
                if let Some(input) = input.filter_map(chunk, Some) {
                    c.handle_input(now, input);
                }
            }
            SimNode::Origin(s) => {
                let chunk = |_, m| match m {
                    SimMsg::Chunk(m) => Some(m),
                    _ => None,
                };
                let serve = |c| match c {
                    PeerCommand::Serve(c) => Some(c),
                    PeerCommand::Fetch(_) => None,
                };
                match input.filter_map(chunk, serve) {
                    // The origin store holds every chunk of every track it serves: its table
                    // of servable chunks is those tracks' manifests, not an entry per chunk
                    // (which was a ninth of a run's heap).
                    Some(Input::Message {
                        from,
                        msg: ChunkMsg::Request(req),
                    }) => {
                        let manifest = match &req {
                            ChunkRequest::GetChunk { track, .. }
                            | ChunkRequest::QueryHave { track, .. } => s.manifest(track),
                            ChunkRequest::GetManifest { .. } | ChunkRequest::Cancel { .. } => None,
                        };
                        s.handle_request_from(now, from, req, |c| {
                            let chunks = &manifest.as_ref()?.chunks;
                            chunks.iter().find(|x| x.id == *c).map(|x| x.len)
                        });
                    }
                    Some(input) => s.handle_input(now, input),
                    None => {}
                }
            }
            SimNode::Tracker(t) => {
                let registry = |from, m| match m {
                    SimMsg::Announce(announce) => Some(RegistryMessage::Announce {
                        announce: *announce,
                        contact: contact_of(from),
                    }),
                    SimMsg::Registry(msg) => Some(*msg),
                    SimMsg::Chunk(_) | SimMsg::Setup { .. } => None,
                };
                if let Some(input) = input.filter_map(registry, |_| None) {
                    t.handle_input(now, input);
                }
            }
        }
    }

    fn poll_output(&mut self) -> Output<SimMsg, SimEvent> {
        match self {
            SimNode::Peer(c) => match c.poll_output() {
                Output::Send { to, msg } => Output::Send {
                    to,
                    msg: SimMsg::Chunk(msg),
                },
                Output::Event(e) => Output::Event(SimEvent::Peer(e)),
                Output::Timeout(t) => Output::Timeout(t),
            },
            SimNode::Origin(s) => match s.poll_output() {
                Output::Send { to, msg } => Output::Send {
                    to,
                    msg: SimMsg::Chunk(msg),
                },
                Output::Event(e) => Output::Event(SimEvent::Peer(PeerEvent::Serve(e))),
                Output::Timeout(t) => Output::Timeout(t),
            },
            SimNode::Tracker(t) => match t.poll_output() {
                Output::Send { to, msg } => Output::Send {
                    to,
                    msg: SimMsg::Registry(Box::new(msg)),
                },
                Output::Event(e) => Output::Event(SimEvent::Tracker(e)),
                Output::Timeout(t) => Output::Timeout(t),
            },
        }
    }
}

/// Driver timer tokens: the session number (stale timers carry an older one).
const SESSION_MASK: u32 = u32::MAX >> 2;

/// What a peer's driver knows about its disk cache and its announces.
#[derive(Debug, Default)]
struct PeerDriver {
    /// Chunks held per track (catalog index), as a bitmap over the manifest's chunks.
    held: IdMap<u32, Held>,
    /// Tracks held completely: what the peer offers (re-derived from the disk at start-up,
    /// like the client's `check_complete`).
    complete: BTreeSet<u32>,
    /// Tracks whose manifest is on disk (the client stores every manifest it verifies and
    /// never evicts them), fed to the core before a play like the real driver does.
    manifests: IdSet<u32>,
    /// The client's announce policy (`shoal_peer::core::Announcer`), process memory: a new
    /// one per session.
    announcer: Option<Announcer>,
    /// When the driver timer armed for the announcer fires (`Time::NEVER`: none armed).
    wake_at: Time,
    online: bool,
    /// Bumped at every session start; stale timers carry an older one.
    session: u32,
    /// The super-peer it attaches to (nearest), for `via`.
    via: Option<NodeId>,
    region: Box<str>,
    /// Its own values of the core's configuration (the rest is the run's `peer_config`), to
    /// build the core again when the client restarts; `None` for a node that is no listener.
    limits: Option<PeerLimits>,
    /// While the client is not running: the chunks its disk cache holds, least recently used
    /// first, as their keys in the run's [`ChunkNames`] (what a restarting client reads back
    /// from its disk; 4 bytes a chunk for every listener offline).
    disk: Vec<u32>,
    /// The listener's plays so far (the last one's number tags its set-up messages).
    play_seq: u32,
    /// A play waiting for its set-up round trips with the service.
    pending: Option<PendingPlay>,
    /// Set-up time (µs) of the play last handed to the core, added to its time to first audio:
    /// the listener asked that much before the core was told to play.
    setup_us: u64,
    /// The track enqueued after the playing one (prefetched with its set-up done).
    queued: Option<u32>,
}

/// The configuration values that differ between listeners, in the cores' payload units.
#[derive(Debug, Clone, Copy)]
struct PeerLimits {
    /// `scheduler.cache.max_bytes`.
    cache_bytes: u64,
    /// `server.upload_rate`, bytes/s.
    upload_rate: u64,
}

/// A play whose set-up round trips with the service are under way.
#[derive(Debug, Clone, Copy)]
struct PendingPlay {
    seq: u32,
    track: u32,
    next: Option<u32>,
    /// When the listener asked for it.
    asked: Time,
    /// Round trips answered.
    done: u32,
}

#[derive(Debug)]
struct Held {
    count: u32,
    of: u32,
    bits: Box<[u64]>,
}

impl Held {
    fn new(of: u32) -> Self {
        Self {
            count: 0,
            of,
            bits: vec![0; (of as usize).div_ceil(64)].into_boxed_slice(),
        }
    }

    /// Sets or clears chunk `i`; true when that changed anything.
    fn set(&mut self, i: u32, on: bool) -> bool {
        if i >= self.of {
            return false;
        }
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        let Some(word) = self.bits.get_mut(w) else {
            return false;
        };
        if (*word & b != 0) == on {
            return false;
        }
        *word ^= b;
        if on {
            self.count += 1;
        } else {
            self.count -= 1;
        }
        true
    }
}

/// Counters of the driver's registry traffic, for the summary notes.
#[derive(Debug, Default, Clone, Copy)]
struct RegistryCounters {
    need_peers: u64,
    lookups_answered: u64,
    lookups_empty: u64,
    holders_returned: u64,
    announces: u64,
    accepted: u64,
    rejected: u64,
    expired_peers: u64,
    /// Finished plays and those that stuttered, by the network sources they used:
    /// [cache only, origin but no peer, any peer].
    plays_by_kind: [u64; 3],
    stutters_by_kind: [u64; 3],
}

/// The real cores, as far as they exist.
#[derive(Debug)]
pub struct ShoalCores {
    catalog: SynthCatalog,
    origin_bps: u64,
    /// The origins' ids (learnt from the first spawned node).
    origins: Vec<NodeId>,
    /// Tracks each origin has registered with its server, by origin position.
    origin_tracks: Vec<IdSet<TrackId>>,
    /// The tracker's id.
    tracker: NodeId,
    /// The registry's thresholds (defaults: what a deployed tracker runs).
    registry: RegistryConfig,
    /// Holders a lookup asks for: as many as the scheduler keeps per track.
    lookup_limit: u16,
    /// Per peer (by node index), its driver's state.
    peers: Vec<PeerDriver>,
    counters: RegistryCounters,
    /// Disk read latency, µs.
    read_us: u64,
    /// Payloads carry 1/scale of the bytes they model (`catalog.payload_scale`): byte-valued
    /// thresholds handed to the cores are divided by it, wire sizes and statistics multiplied.
    scale: u64,
    /// Round trips to the origin before a play reaches the core (`client.play_setup_round_trips`).
    setup_rounds: u32,
    /// Every listener core's configuration before its per-peer values (cache, upload):
    /// the shipped client's defaults with the scenario's `[peer]` thresholds.
    peer_config: PeerConfig,
    /// Decoded manifests shared by every peer core of the run (one copy per track, not per
    /// peer; the cores share only what they verified to be the same bytes).
    manifests: ManifestPool,
    /// The chunk ids in every listener core's cache index, stored once for the run.
    chunk_names: ChunkNames,
    /// The node ids in every listener core's table of known nodes, stored once for the run.
    node_names: NodeNames,
    /// Every listener scheduler's configuration, stored once for the run (made from the
    /// first listener's; they differ only in cache limits, which the cache index keeps).
    scheduler_config: Option<Arc<SchedulerConfig>>,
}

/// The shipped client's core configuration with the thresholds `[peer]` sets.
fn peer_config(p: &PeerSection) -> PeerConfig {
    let mut cfg = PeerConfig::default();
    let sch = &mut cfg.scheduler;
    let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
    if let Some(v) = p.hedge_start_chunks {
        sch.hedge_start_chunks = n(v);
    }
    if let Some(v) = p.lookup_wait_ms {
        sch.lookup_wait_ms = v;
    }
    if let Some(v) = p.buffer_ahead_ms {
        sch.buffer_ahead_ms = v;
    }
    if let Some(v) = p.urgent_buffer_ms {
        sch.urgent_buffer_ms = v;
    }
    if let Some(v) = p.start_buffer_ms {
        sch.start_buffer_ms = v;
    }
    if let Some(v) = p.max_in_flight_per_peer {
        sch.max_in_flight_per_peer = n(v);
    }
    if let Some(v) = p.max_peers_per_track {
        sch.max_peers_per_track = n(v);
    }
    if let Some(v) = p.prefetch_before_end_ms {
        sch.prefetch_before_end_ms = v;
    }
    if let Some(v) = p.max_uploads {
        cfg.server.max_uploads = n(v);
    }
    cfg
}

impl ShoalCores {
    /// The core set for scenario `s` run with `seed`.
    pub fn new(s: &Scenario, seed: u64) -> Self {
        let registry = RegistryConfig {
            ttl: std::time::Duration::from_secs(s.tracker.ttl_s as u64),
            ..RegistryConfig::default()
        };
        let peer_config = peer_config(&s.peer);
        let manifests = ManifestPool::new();
        Self {
            catalog: SynthCatalog::new(
                seed,
                s.catalog.track_duration_s,
                s.catalog.bitrate_kbps,
                s.catalog.payload_scale,
            )
            .with_pool(manifests.clone()),
            origin_bps: (s.bandwidth.origin_mbps * 1e6 / 8.0) as u64,
            origins: Vec::new(),
            origin_tracks: Vec::new(),
            tracker: NodeId::from_index(u64::MAX),
            registry,
            lookup_limit: u16::try_from(peer_config.scheduler.max_peers_per_track)
                .unwrap_or(u16::MAX),
            peer_config,
            // Peers are nodes 0..peers: sized once, as growth by doubling would leave up to
            // half of a table of 100,000 drivers unused.
            peers: Vec::with_capacity(s.population.peers as usize),
            counters: RegistryCounters::default(),
            read_us: (s.cache.read_ms * 1000.0) as u64,
            setup_rounds: s.client.play_setup_round_trips,
            scale: u64::from(s.catalog.payload_scale.max(1)),
            manifests,
            chunk_names: ChunkNames::new(),
            node_names: NodeNames::new(),
            scheduler_config: None,
        }
    }

    /// A listener core with its per-peer `limits`, sharing the run's manifests, ids and
    /// scheduler configuration.
    fn listener_core(&mut self, limits: PeerLimits) -> PeerCore {
        let cfg = self.config_of(limits);
        let shared = self
            .scheduler_config
            .get_or_insert_with(|| Arc::new(cfg.scheduler.clone()));
        PeerCore::new(cfg)
            .with_shared_scheduler_config(shared)
            .with_manifest_pool(self.manifests.clone())
            .with_chunk_names(self.chunk_names.clone())
            .with_node_names(self.node_names.clone())
    }

    /// A byte quantity (a size, a rate) in the cores' payload units.
    fn scaled(&self, bytes: u64) -> u64 {
        (bytes / self.scale).max(1)
    }

    /// A listener core's configuration: the run's with that listener's own limits; byte-valued
    /// fields in payload units (`scale`).
    fn config_of(&self, limits: PeerLimits) -> PeerConfig {
        let mut cfg = self.peer_config.clone();
        let sch = &mut cfg.scheduler;
        sch.cache.max_bytes = limits.cache_bytes;
        sch.initial_peer_rate = self.scaled(sch.initial_peer_rate);
        sch.initial_origin_rate = self.scaled(sch.initial_origin_rate);
        cfg.server.upload_rate = limits.upload_rate;
        cfg.server.upload_burst = self.scaled(cfg.server.upload_burst);
        cfg
    }

    fn origin_pos(&self, node: u32) -> Option<usize> {
        let id = NodeId::from_index(u64::from(node));
        self.origins.iter().position(|o| *o == id)
    }

    /// Records that `node`'s cache now holds (or lost) chunk `index` of `track`; queues the
    /// announce change when the track becomes (or stops being) complete.
    fn cache_changed(
        &mut self,
        now: Time,
        node: u32,
        track: u32,
        index: u32,
        on: bool,
        feedback: &mut Vec<Feedback<Self>>,
    ) {
        let of = if on {
            u32::try_from(self.catalog.track(track).chunks().len()).unwrap_or(u32::MAX)
        } else {
            0
        };
        let Some(p) = self.peers.get_mut(node as usize) else {
            return;
        };
        let held = match p.held.get_mut(&track) {
            Some(h) => h,
            None if on => p.held.entry(track).or_insert_with(|| Held::new(of)),
            None => return,
        };
        if !held.set(index, on) {
            return;
        }
        let complete = held.count == held.of;
        if held.count == 0 {
            p.held.remove(&track);
        }
        let changed = if complete {
            p.complete.insert(track)
        } else {
            p.complete.remove(&track)
        };
        if !changed {
            return;
        }
        let id = self.catalog.track(track).id;
        let Some(p) = self.peers.get_mut(node as usize) else {
            return;
        };
        if let Some(a) = p.announcer.as_mut() {
            if complete {
                a.hold(now, id);
            } else {
                a.release(now, id);
            }
        }
        self.arm(now, node, feedback);
    }

    /// Arms the driver timer for `node`'s announcer if it wants to wake earlier than armed.
    fn arm(&mut self, now: Time, node: u32, feedback: &mut Vec<Feedback<Self>>) {
        let Some(p) = self.peers.get_mut(node as usize) else {
            return;
        };
        let Some(a) = p.announcer.as_ref() else {
            return;
        };
        let wake = a.next_wake().max(now);
        if wake == Time::NEVER || (p.wake_at > now && p.wake_at <= wake) {
            return;
        }
        p.wake_at = wake;
        feedback.push(Feedback::Timer {
            after_us: (wake - now).as_micros() as u64,
            token: p.session,
        });
    }

    /// Sends what `node`'s announcer wants sent now, then re-arms.
    fn poll_announcer(&mut self, now: Time, node: u32, feedback: &mut Vec<Feedback<Self>>) {
        let tracker = self.tracker;
        let Some(p) = self.peers.get_mut(node as usize) else {
            return;
        };
        let Some(plan) = p.announcer.as_mut().and_then(|a| a.poll(now)) else {
            self.arm(now, node, feedback);
            return;
        };
        let announce = Announce {
            replace: plan.replace,
            tracks: plan.tracks,
            removed: plan.removed,
            addrs: Vec::new(),
            via: p.via.map(contact_of),
            region: Some(p.region.to_string()),
        };
        self.counters.announces += 1;
        feedback.push(Feedback::Send {
            to: tracker,
            msg: SimMsg::Announce(Box::new(announce)),
        });
        self.arm(now, node, feedback);
    }

    /// What the real driver does before `Play` or `Enqueue`: a track whose manifest is on
    /// disk starts without asking anyone for it (`SchedulerCommand::Manifest` first).
    /// Returns the track's id.
    /// Hands a play to the core: the manifests on disk, `Play`, the queue's next track.
    fn start_play(
        &mut self,
        node: u32,
        track: u32,
        next: Option<u32>,
        setup_us: u64,
        out: &mut Vec<Feedback<Self>>,
    ) {
        let fetch = |c| Feedback::Command(PeerCommand::Fetch(c));
        let id = self.manifest_from_disk(node, track, out);
        out.push(fetch(SchedulerCommand::Play {
            track: id,
            position_ms: 0,
        }));
        out.push(fetch(SchedulerCommand::ClearQueue));
        if let Some(n) = next {
            let nid = self.manifest_from_disk(node, n, out);
            out.push(fetch(SchedulerCommand::Enqueue(nid)));
        }
        if let Some(p) = self.peers.get_mut(node as usize) {
            p.setup_us = setup_us;
            p.queued = next;
        }
    }

    fn manifest_from_disk(
        &mut self,
        node: u32,
        track: u32,
        out: &mut Vec<Feedback<Self>>,
    ) -> TrackId {
        let t = self.catalog.track(track);
        if self
            .peers
            .get(node as usize)
            .is_some_and(|p| p.manifests.contains(&track))
        {
            out.push(Feedback::Command(PeerCommand::Fetch(
                SchedulerCommand::Manifest {
                    track: t.id,
                    bytes: t.manifest(),
                },
            )));
        }
        t.id
    }
}

/// Adds a play's bytes by source, in modelled bytes (payload bytes × `scale`).
fn source_bytes(stats: &mut PlaybackStats, b: &shoal_peer::core::BytesBySource, scale: u64) {
    stats.bytes(Source::Cache, b.cache * scale);
    stats.bytes(Source::Peers, b.peers * scale);
    stats.bytes(Source::SuperPeers, b.superpeers * scale);
    stats.bytes(Source::Origin, b.origin * scale);
}

impl Cores for ShoalCores {
    type Core = SimNode;

    fn integrated(&self) -> Vec<String> {
        vec![
            "peer: shoal_peer::core::PeerCore (FetchScheduler + ChunkServer + CacheIndex)".into(),
            "origin: shoal_peer::core::ChunkServer over the synthetic catalog".into(),
            "tracker: shoal_tracker::core::TrackerCore (PeerRegistry; RegistryConfig defaults but ttl)"
                .into(),
        ]
    }

    fn playback_measured(&self) -> bool {
        true
    }

    fn notes(&self) -> Vec<String> {
        let c = self.counters;
        let mut notes = vec![
            format!(
                "tracker: {} holder lookups (NeedPeers) sent, {} answered ({} with no holder), \
                 {} holders returned; {} announces sent, {} accepted, {} rejected; {} peers \
                 expired from the registry (TTL {} s)",
                c.need_peers,
                c.lookups_answered,
                c.lookups_empty,
                c.holders_returned,
                c.announces,
                c.accepted,
                c.rejected,
                c.expired_peers,
                self.registry.ttl.as_secs()
            ),
            "super-peer core not integrated yet: super-peers relay NATed traffic at the \
             transport level only (no index, no cache), so bytes_by_source.superpeers is 0"
                .into(),
            format!(
                "{} tracks materialised (manifests and chunk ids hashed from synthetic bytes)",
                self.catalog.materialised()
            ),
        ];
        let pct =
            |i: usize| 100.0 * c.stutters_by_kind[i] as f64 / c.plays_by_kind[i].max(1) as f64;
        notes.push(format!(
            "plays by network source used: {} from cache only (stutter {:.2}%), {} with origin \
             but no peer bytes ({:.2}%), {} with peer bytes ({:.2}%)",
            c.plays_by_kind[0],
            pct(0),
            c.plays_by_kind[1],
            pct(1),
            c.plays_by_kind[2],
            pct(2)
        ));
        if self.scale > 1 {
            let s = self.scale;
            notes.push(format!(
                "chunk payloads carry 1/{s} of the bytes they model (catalog.payload_scale); \
                 byte thresholds given to the cores are scaled to match, but the cores' fixed \
                 byte constants are not: an upload bucket is never shallower than one maximal \
                 chunk ({} KiB modelled instead of 64 KiB) and a manifest is charged and \
                 estimated as 4 KiB ({} KiB modelled); exact when payload_scale = 1",
                64 * s,
                4 * s
            ));
        }
        notes
    }

    fn wants_history(&self) -> bool {
        true
    }

    fn wire_len(&self, msg: &SimMsg) -> u32 {
        // Registry messages: their real encoding (bincode, as the codec frames them).
        let payload = match msg {
            // A chunk's payload models `scale` times its bytes; manifests are real size.
            SimMsg::Chunk(m @ ChunkMsg::Response(ChunkResponse::Chunk { bytes, .. })) => {
                m.wire_len() + bytes.len() * (self.scale as usize - 1)
            }
            SimMsg::Chunk(m) => m.wire_len(),
            SimMsg::Announce(a) => a.encode_payload().map_or(0, |b| b.len()),
            SimMsg::Registry(m) => match &**m {
                RegistryMessage::Announce { announce, .. } => {
                    announce.encode_payload().map_or(0, |b| b.len())
                }
                RegistryMessage::ClusterAnnounce { announce, .. } => {
                    announce.encode_payload().map_or(0, |b| b.len())
                }
                RegistryMessage::AnnounceResponse(a) => a.encode_payload().map_or(0, |b| b.len()),
                RegistryMessage::Holders { track, limit } => LookupRequest::Holders {
                    track: *track,
                    limit: *limit,
                }
                .encode_payload()
                .map_or(0, |b| b.len()),
                RegistryMessage::LookupResponse(r) => r.encode_payload().map_or(0, |b| b.len()),
            },
            // librespot's key request: file id (20) + track gid (16) + sequence (4) + 2 zero
            // bytes; the answer: sequence + 16-byte key; plus a 3-byte packet header.
            SimMsg::Setup { reply: false, .. } => 42 + 3 - LENGTH_PREFIX_BYTES,
            SimMsg::Setup { reply: true, .. } => 20 + 3 - LENGTH_PREFIX_BYTES,
        };
        u32::try_from(payload + LENGTH_PREFIX_BYTES).unwrap_or(u32::MAX)
    }

    fn spawn(&mut self, info: &NodeInfo<'_>) -> Option<SimNode> {
        if self.origins.is_empty() {
            self.origins = info.origins.to_vec();
            self.origin_tracks = vec![IdSet::default(); self.origins.len()];
            self.tracker = info.tracker;
        }
        match info.role {
            Role::Peer => {
                // The client's defaults (and the scenario's `[peer]`); byte-valued ones in
                // payload units (`scale`).
                let limits = PeerLimits {
                    cache_bytes: self.scaled(info.cache_bytes),
                    upload_rate: self.scaled(info.upload_cap_bps.max(1.0) as u64),
                };
                let mut core = self.listener_core(limits);
                let node = info.id.index().and_then(|i| usize::try_from(i).ok())?;
                if self.peers.len() <= node {
                    self.peers.resize_with(node + 1, PeerDriver::default);
                }
                let mut driver = PeerDriver {
                    via: info.superpeers.first().copied(),
                    region: info.region.into(),
                    limits: Some(limits),
                    ..PeerDriver::default()
                };
                // The disk cache as the listening history left it: manifests and chunks,
                // oldest first (the core's LRU evicts what does not fit; the driver sees the
                // evictions as events when the core is first drained).
                for &t in info.history {
                    if !driver.manifests.insert(t) {
                        continue;
                    }
                    let track = self.catalog.track(t);
                    core.handle_input(
                        Time::ZERO,
                        Input::Command(PeerCommand::Fetch(SchedulerCommand::Manifest {
                            track: track.id,
                            bytes: track.manifest(),
                        })),
                    );
                    let mut held = Held::new(u32::try_from(track.chunks().len()).unwrap_or(0));
                    for (i, c) in track.chunks().iter().enumerate() {
                        core.handle_input(
                            Time::ZERO,
                            Input::Command(PeerCommand::Fetch(SchedulerCommand::CacheHas {
                                chunk: c.id,
                                len: c.len,
                            })),
                        );
                        held.set(u32::try_from(i).unwrap_or(u32::MAX), true);
                    }
                    if held.count == held.of {
                        driver.complete.insert(t);
                    }
                    driver.held.insert(t, held);
                }
                self.peers[node] = driver;
                let origin = info.origins.first().copied();
                core.handle_input(
                    Time::ZERO,
                    Input::Command(PeerCommand::Fetch(SchedulerCommand::SetOrigin(origin))),
                );
                Some(SimNode::Peer(Box::new(core)))
            }
            Role::Origin => {
                let cfg = ServerConfig {
                    upload_rate: self.scaled(self.origin_bps),
                    upload_burst: self.scaled((self.origin_bps / 10).max(1 << 20)),
                    // An HTTP store behind a CDN: no small upload-slot limit.
                    max_uploads: 100_000,
                    max_uploads_while_urgent: 100_000,
                    max_tracks: 10_000_000,
                    ..ServerConfig::default()
                };
                Some(SimNode::Origin(Box::new(ChunkServer::new(cfg))))
            }
            Role::Tracker => TrackerCore::new(self.registry.clone())
                .ok()
                .map(|t| SimNode::Tracker(Box::new(t))),
            // Its core has not landed: super-peers relay at the transport level only.
            Role::SuperPeer => None,
        }
    }

    /// A quitting client's core is dropped; the driver keeps what its disk holds (the cache's
    /// chunks in LRU order, compactly, and which manifests it stores). Everything else the
    /// core knew (rates, RTTs, bans, holder lists, the play queue) is process memory that a
    /// real client loses when it quits too.
    fn quit(&mut self, node: u32, core: SimNode) -> Option<SimNode> {
        let SimNode::Peer(c) = core else {
            return Some(core);
        };
        let cache = c.scheduler().cache();
        // Sized once: kept until the client restarts, for every listener offline.
        let mut disk = Vec::with_capacity(cache.len());
        match cache.oldest_first_keys(&self.chunk_names) {
            // The cores keep their chunk ids in these names (`spawn`): the keys as they are.
            Some(keys) => disk.extend(keys),
            None => disk.extend(
                cache
                    .oldest_first()
                    .filter_map(|(id, _)| self.chunk_names.key_of(&id)),
            ),
        }
        drop(c);
        match self.peers.get_mut(node as usize) {
            Some(p) if p.limits.is_some() => {
                p.disk = disk;
                None
            }
            _ => None,
        }
    }

    /// What the real driver does at start-up (`load_cache`): every cached chunk, oldest
    /// first (`CacheHas`), then the manifests of the tracks it holds chunks of, then the
    /// origin. (The real client also loads manifests of tracks it holds no chunk of; they
    /// only let it serve those manifests.)
    fn restart(&mut self, now: Time, node: u32) -> Option<SimNode> {
        let origin = self.origins.first().copied();
        let limits = self.peers.get(node as usize)?.limits?;
        let mut core = self.listener_core(limits);
        let p = self.peers.get_mut(node as usize)?;
        let disk = std::mem::take(&mut p.disk);
        let mut tracks: Vec<u32> = p.held.keys().copied().collect();
        tracks.sort_unstable();
        let cmd = |c| Input::Command(PeerCommand::Fetch(c));
        for key in disk {
            let Some(&chunk) = self.chunk_names.id(key) else {
                continue;
            };
            if let Some(len) = self.catalog.chunk_len(&chunk) {
                core.handle_input(now, cmd(SchedulerCommand::CacheHas { chunk, len }));
            }
        }
        for t in tracks {
            let track = self.catalog.track(t);
            core.handle_input(
                now,
                cmd(SchedulerCommand::Manifest {
                    track: track.id,
                    bytes: track.manifest(),
                }),
            );
        }
        core.handle_input(now, cmd(SchedulerCommand::SetOrigin(origin)));
        Some(SimNode::Peer(Box::new(core)))
    }

    fn commands(&mut self, now: Time, node: u32, action: Listen, out: &mut Vec<Feedback<Self>>) {
        let fetch = |c| Feedback::Command(PeerCommand::Fetch(c));
        match action {
            Listen::SessionStart => {
                if let Some(o) = self.origins.first() {
                    out.push(fetch(SchedulerCommand::SetOrigin(Some(*o))));
                }
                let Some(p) = self.peers.get_mut(node as usize) else {
                    return;
                };
                p.online = true;
                p.session = p.session.wrapping_add(1) & SESSION_MASK;
                p.wake_at = Time::NEVER;
                // The client's announcer starts empty and learns what the disk holds
                // completely; its first poll is a full `replace`.
                let complete: Vec<u32> = p.complete.iter().copied().collect();
                let mut a = Announcer::new(AnnounceConfig::default());
                for t in complete {
                    a.hold(now, self.catalog.track(t).id);
                }
                if let Some(p) = self.peers.get_mut(node as usize) {
                    p.announcer = Some(a);
                }
                self.poll_announcer(now, node, out);
            }
            Listen::SessionEnd => {
                out.push(fetch(SchedulerCommand::Stop));
                if let Some(p) = self.peers.get_mut(node as usize) {
                    p.online = false;
                    p.announcer = None;
                    p.wake_at = Time::NEVER;
                    p.pending = None;
                    p.queued = None;
                }
            }
            Listen::Play { track, next } => {
                let origin = self.origins.first().copied();
                let Some(p) = self.peers.get_mut(node as usize) else {
                    return;
                };
                p.play_seq = p.play_seq.wrapping_add(1);
                // A playlist's next track was prefetched, its set-up included (librespot
                // preloads the next track through the same loader); any other play first
                // asks the service.
                let continues = p.queued == Some(track);
                match origin {
                    Some(o) if self.setup_rounds > 0 && !continues => {
                        p.pending = Some(PendingPlay {
                            seq: p.play_seq,
                            track,
                            next,
                            asked: now,
                            done: 0,
                        });
                        out.push(Feedback::Send {
                            to: o,
                            msg: SimMsg::Setup {
                                seq: p.play_seq,
                                reply: false,
                            },
                        });
                    }
                    _ => {
                        p.pending = None;
                        self.start_play(node, track, next, 0, out);
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, now: Time, node: u32, token: u32, feedback: &mut Vec<Feedback<Self>>) {
        let Some(p) = self.peers.get_mut(node as usize) else {
            return;
        };
        if !p.online || token != p.session || now < p.wake_at {
            return;
        }
        p.wake_at = Time::NEVER;
        self.poll_announcer(now, node, feedback);
    }

    fn observe(
        &mut self,
        now: Time,
        node: u32,
        event: SimEvent,
        stats: &mut PlaybackStats,
        feedback: &mut Vec<Feedback<Self>>,
    ) {
        let event = match event {
            SimEvent::Peer(e) => e,
            SimEvent::Tracker(TrackerEvent::Expired { peers }) => {
                self.counters.expired_peers += peers as u64;
                return;
            }
            // Rejections are counted from the answers the peers receive.
            SimEvent::Tracker(TrackerEvent::Rejected { .. }) => return,
        };
        match event {
            PeerEvent::Fetch(SchedulerEvent::ReadCache { chunk, .. }) => {
                let bytes = self.catalog.bytes_of_chunk(&chunk);
                feedback.push(Feedback::Later {
                    after_us: self.read_us,
                    // The catalog makes the bytes that hash to the id: nothing to check.
                    cmd: PeerCommand::Fetch(SchedulerCommand::CacheData {
                        chunk,
                        bytes,
                        verified: true,
                    }),
                });
            }
            PeerEvent::Fetch(SchedulerEvent::PlayStarted {
                time_to_first_audio_ms: Some(ms),
                ..
            }) => {
                // The core counts from its `Play`; the listener asked `setup_us` before that.
                let setup = self
                    .peers
                    .get_mut(node as usize)
                    .map_or(0, |p| std::mem::take(&mut p.setup_us));
                stats.first_audio(ms as f64 + setup as f64 / 1000.0);
            }
            PeerEvent::Fetch(SchedulerEvent::TrackFinished(p)) => {
                stats.play_ended(p.stutters);
                let b = &p.bytes_by_source;
                let kind = if b.peers + b.superpeers > 0 {
                    2
                } else if b.origin > 0 {
                    1
                } else {
                    0
                };
                self.counters.plays_by_kind[kind] += 1;
                if p.stutters > 0 {
                    self.counters.stutters_by_kind[kind] += 1;
                }
                source_bytes(stats, &p.bytes_by_source, self.scale);
            }
            PeerEvent::Serve(shoal_peer::core::ServerEvent::Load { to, request, item }) => {
                let bytes = match item {
                    Item::Chunk(c) => self.catalog.bytes_of_chunk(&c),
                    Item::Manifest(t) => self.catalog.manifest_of(&t),
                };
                // An origin is a store behind a CDN; a peer reads its disk.
                let cmd = PeerCommand::Serve(ServerCommand::Loaded {
                    to,
                    request,
                    bytes,
                    verified: true,
                });
                if self.origin_pos(node).is_some() {
                    feedback.push(Feedback::Command(cmd));
                } else {
                    feedback.push(Feedback::Later {
                        after_us: self.read_us,
                        cmd,
                    });
                }
            }
            PeerEvent::Fetch(SchedulerEvent::NeedPeers(track)) => {
                // The driver asks the tracker (over the simulated network); the answer is
                // turned into `Peers` in `on_deliver`.
                self.counters.need_peers += 1;
                feedback.push(Feedback::Send {
                    to: self.tracker,
                    msg: SimMsg::Registry(Box::new(RegistryMessage::Holders {
                        track,
                        limit: self.lookup_limit,
                    })),
                });
            }
            // What the disk cache now holds, for announces (the synthetic disk regenerates
            // bytes on demand, so there is nothing to write).
            PeerEvent::Fetch(SchedulerEvent::ChunkReady {
                track,
                index,
                store: true,
                ..
            }) => {
                if let Some(t) = self.catalog.index_of(&track) {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    self.cache_changed(now, node, t, index, true, feedback);
                }
            }
            // The client writes every verified manifest to disk.
            PeerEvent::Fetch(SchedulerEvent::ManifestReady { track, .. }) => {
                if let (Some(t), Some(p)) = (
                    self.catalog.index_of(&track),
                    self.peers.get_mut(node as usize),
                ) {
                    p.manifests.insert(t);
                }
            }
            PeerEvent::Fetch(SchedulerEvent::Evict(chunk)) => {
                if let Some((t, index)) = self.catalog.locate(&chunk) {
                    self.cache_changed(now, node, t, index, false, feedback);
                }
            }
            _ => {}
        }
    }

    fn on_deliver(
        &mut self,
        now: Time,
        from: u32,
        to: u32,
        msg: &SimMsg,
        to_sender: &mut Vec<Feedback<Self>>,
        to_receiver: &mut Vec<Feedback<Self>>,
    ) {
        match msg {
            // The response reached its requester: the server's upload slot is free.
            SimMsg::Chunk(ChunkMsg::Response(
                ChunkResponse::Chunk { request, .. } | ChunkResponse::Manifest { request, .. },
            )) => to_sender.push(Feedback::Command(PeerCommand::Serve(ServerCommand::Sent {
                to: NodeId::from_index(u64::from(to)),
                request: *request,
            }))),
            // The origin store holds every track: register it with the origin's server the
            // first time it is asked about.
            SimMsg::Chunk(ChunkMsg::Request(
                ChunkRequest::GetManifest { track, .. }
                | ChunkRequest::GetChunk { track, .. }
                | ChunkRequest::QueryHave { track, .. },
            )) => {
                let Some(pos) = self.origin_pos(to) else {
                    return;
                };
                if self.origin_tracks[pos].contains(track) {
                    return;
                }
                let Some(index) = self.catalog.index_of(track) else {
                    return;
                };
                self.origin_tracks[pos].insert(*track);
                let t = self.catalog.track(index);
                // The catalog's decoded manifest, shared with the cores (not a fresh copy).
                to_receiver.push(Feedback::Command(PeerCommand::Serve(
                    ServerCommand::Track {
                        track: t.id,
                        manifest: std::sync::Arc::clone(&t.decoded),
                    },
                )));
            }
            SimMsg::Registry(m) => match &**m {
                // A holder lookup's answer: the holders, in the registry's order, as the
                // scheduler's peer list.
                RegistryMessage::LookupResponse(LookupResponse::Holders { track, holders }) => {
                    self.counters.lookups_answered += 1;
                    self.counters.holders_returned += holders.len() as u64;
                    if holders.is_empty() {
                        self.counters.lookups_empty += 1;
                    }
                    let peers = holders
                        .iter()
                        .filter_map(|h| node_of(&h.peer))
                        .map(|node| PeerInfo {
                            node,
                            superpeer: false,
                            rtt_ms: None,
                        })
                        .collect();
                    to_receiver.push(Feedback::Command(PeerCommand::Fetch(
                        SchedulerCommand::Peers {
                            track: *track,
                            peers,
                        },
                    )));
                }
                RegistryMessage::AnnounceResponse(a) => {
                    let ttl = match a {
                        AnnounceResponse::Accepted { ttl_secs }
                        | AnnounceResponse::Aggregated { ttl_secs } => {
                            self.counters.accepted += 1;
                            Some(*ttl_secs)
                        }
                        AnnounceResponse::Rejected { .. } => {
                            self.counters.rejected += 1;
                            None
                        }
                    };
                    if let Some(ann) = self
                        .peers
                        .get_mut(to as usize)
                        .and_then(|p| p.announcer.as_mut())
                    {
                        ann.answered(now, ttl);
                        self.arm(now, to, to_receiver);
                    }
                }
                _ => {}
            },
            // The service's side of a play's set-up: the origin answers at once.
            SimMsg::Setup { seq, reply: false } if self.origin_pos(to).is_some() => {
                to_receiver.push(Feedback::Send {
                    to: NodeId::from_index(u64::from(from)),
                    msg: SimMsg::Setup {
                        seq: *seq,
                        reply: true,
                    },
                });
            }
            // The listener's side: the next round trip, or the play handed to the core.
            SimMsg::Setup { seq, reply: true } => {
                let rounds = self.setup_rounds;
                let Some(p) = self.peers.get_mut(to as usize) else {
                    return;
                };
                let Some(mut pending) = p.pending.filter(|q| q.seq == *seq) else {
                    return;
                };
                pending.done += 1;
                if pending.done < rounds {
                    p.pending = Some(pending);
                    to_receiver.push(Feedback::Send {
                        to: NodeId::from_index(u64::from(from)),
                        msg: SimMsg::Setup {
                            seq: *seq,
                            reply: false,
                        },
                    });
                } else {
                    p.pending = None;
                    let setup_us = now.as_micros().saturating_sub(pending.asked.as_micros());
                    self.start_play(to, pending.track, pending.next, setup_us, to_receiver);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_section_sets_only_what_it_names() {
        assert_eq!(peer_config(&PeerSection::default()), PeerConfig::default());
        let p = PeerSection {
            hedge_start_chunks: Some(3),
            lookup_wait_ms: Some(0),
            buffer_ahead_ms: Some(15_000),
            urgent_buffer_ms: Some(2_000),
            start_buffer_ms: Some(1_000),
            max_in_flight_per_peer: Some(4),
            max_peers_per_track: Some(60),
            prefetch_before_end_ms: Some(10_000),
            max_uploads: Some(4),
        };
        let got = peer_config(&p);
        let mut want = PeerConfig::default();
        want.scheduler.hedge_start_chunks = 3;
        want.scheduler.lookup_wait_ms = 0;
        want.scheduler.buffer_ahead_ms = 15_000;
        want.scheduler.urgent_buffer_ms = 2_000;
        want.scheduler.start_buffer_ms = 1_000;
        want.scheduler.max_in_flight_per_peer = 4;
        want.scheduler.max_peers_per_track = 60;
        want.scheduler.prefetch_before_end_ms = 10_000;
        want.server.max_uploads = 4;
        assert_eq!(got, want);
    }

    fn announce(tracks: Vec<TrackId>, via: u64, region: &str) -> SimMsg {
        SimMsg::Announce(Box::new(Announce {
            replace: true,
            tracks,
            removed: Vec::new(),
            addrs: Vec::new(),
            via: Some(contact_of(NodeId::from_index(via))),
            region: Some(region.into()),
        }))
    }

    #[test]
    fn holders_map_back_to_simulator_ids_and_rank_by_cluster() {
        let mut tracker = SimNode::Tracker(Box::new(
            TrackerCore::new(RegistryConfig::default()).expect("valid"),
        ));
        let t = TrackId::of(b"track");
        let send = |node: &mut SimNode, at: u64, from: u64, msg: SimMsg| {
            node.handle_input(
                Time::from_millis(at),
                Input::Message {
                    from: NodeId::from_index(from),
                    msg,
                },
            );
            let mut out = Vec::new();
            while let Output::Send { to, msg } = node.poll_output() {
                out.push((to, msg));
            }
            out
        };
        // Holders 1 and 2 behind super-peer 100 (2 announced later, so ranks first among
        // equals); 3 behind super-peer 101 in another region; the asker 4 behind 101.
        send(&mut tracker, 0, 1, announce(vec![t], 100, "SE"));
        send(&mut tracker, 1, 2, announce(vec![t], 100, "SE"));
        send(&mut tracker, 2, 3, announce(vec![t], 101, "GB"));
        send(&mut tracker, 3, 4, announce(vec![], 101, "SE"));
        let out = send(
            &mut tracker,
            4,
            4,
            SimMsg::Registry(Box::new(RegistryMessage::Holders {
                track: t,
                limit: 16,
            })),
        );
        let [(to, SimMsg::Registry(m))] = &out[..] else {
            panic!("{out:?}");
        };
        let RegistryMessage::LookupResponse(r) = &**m else {
            panic!("{m:?}");
        };
        assert_eq!(*to, NodeId::from_index(4));
        let LookupResponse::Holders { holders, .. } = r else {
            panic!("{r:?}");
        };
        let nodes: Vec<NodeId> = holders.iter().filter_map(|h| node_of(&h.peer)).collect();
        // Same cluster first, then same region (most recent first), never the asker.
        assert_eq!(nodes, [3, 2, 1].map(NodeId::from_index));
    }

    #[test]
    fn a_restarted_client_reloads_its_disk_cache() {
        let s = Scenario::default();
        let mut cores = ShoalCores::new(&s, 3);
        let origins = [NodeId::from_index(10)];
        let history = [5u32, 6, 7, 5, 8];
        let info = NodeInfo {
            id: NodeId::from_index(0),
            role: Role::Peer,
            region: "SE",
            nat: crate::net::Nat::Open,
            upload_cap_bps: 1e6,
            cache_bytes: 1 << 30,
            history: &history,
            tracker: NodeId::from_index(11),
            origins: &origins,
            superpeers: &[],
            seed: 1,
        };
        let Some(SimNode::Peer(core)) = cores.spawn(&info) else {
            panic!("a peer core");
        };
        let before: Vec<_> = core.scheduler().cache().oldest_first().collect();
        assert_eq!(
            before.len(),
            (5..=8)
                .map(|t| cores.catalog.track(t).chunks().len())
                .sum::<usize>()
        );
        assert!(cores.quit(0, SimNode::Peer(core)).is_none(), "dropped");
        assert!(!cores.peers[0].disk.is_empty(), "the disk stays");
        let Some(SimNode::Peer(again)) = cores.restart(Time::from_millis(60_000), 0) else {
            panic!("rebuilt");
        };
        let after: Vec<_> = again.scheduler().cache().oldest_first().collect();
        assert_eq!(before, after, "same chunks, same LRU order");
        assert!(cores.peers[0].disk.is_empty());
        // Manifests of held tracks are back too: the server answers for them.
        let t = cores.catalog.track(6);
        assert!(again.serves(&t.chunks()[0].id));
    }

    #[test]
    fn the_origin_serves_every_chunk_of_the_tracks_it_was_given_and_no_other() {
        let s = Scenario::default();
        let mut cores = ShoalCores::new(&s, 3);
        let origins = [NodeId::from_index(10)];
        let info = NodeInfo {
            id: origins[0],
            role: Role::Origin,
            region: "SE",
            nat: crate::net::Nat::Open,
            upload_cap_bps: 1e9,
            cache_bytes: 0,
            history: &[],
            tracker: NodeId::from_index(11),
            origins: &origins,
            superpeers: &[],
            seed: 1,
        };
        let Some(mut origin) = cores.spawn(&info) else {
            panic!("an origin core");
        };
        let (given, other) = (cores.catalog.track(3), cores.catalog.track(4));
        origin.handle_input(
            Time::ZERO,
            Input::Command(PeerCommand::Serve(ServerCommand::Track {
                track: given.id,
                manifest: std::sync::Arc::clone(&given.decoded),
            })),
        );
        let listener = NodeId::from_index(0);
        let ask = |origin: &mut SimNode, request: u64, req: ChunkRequest| {
            origin.handle_input(
                Time::ZERO,
                Input::Message {
                    from: listener,
                    msg: SimMsg::Chunk(ChunkMsg::Request(req)),
                },
            );
            let mut out = Vec::new();
            loop {
                match origin.poll_output() {
                    Output::Timeout(_) => break,
                    o => out.push(o),
                }
            }
            assert!(!out.is_empty(), "request {request} answered");
            out
        };
        let loads = |out: &[Output<SimMsg, SimEvent>]| {
            out.iter()
                .filter(|o| {
                    matches!(
                        o,
                        Output::Event(SimEvent::Peer(PeerEvent::Serve(
                            shoal_peer::core::ServerEvent::Load {
                                item: Item::Chunk(_),
                                ..
                            }
                        )))
                    )
                })
                .count()
        };
        let get = |origin: &mut SimNode, request: u64, track: TrackId, chunk| {
            let req = ChunkRequest::GetChunk {
                request,
                track,
                chunk,
            };
            ask(origin, request, req)
        };
        // Every chunk, in an order unlike the manifest's.
        let n = given.chunks().len();
        for (k, i) in (0..n).rev().enumerate() {
            let request = k as u64;
            let out = get(&mut origin, request, given.id, given.chunks()[i].id);
            assert_eq!(loads(&out), 1, "chunk {i} of {n} is read to be served");
        }
        let out = ask(
            &mut origin,
            100,
            ChunkRequest::QueryHave {
                request: 100,
                track: given.id,
            },
        );
        let want: Vec<u8> = (0..n.div_ceil(8))
            .map(|b| {
                if (b + 1) * 8 <= n {
                    0xff
                } else {
                    (1u8 << (n % 8)) - 1
                }
            })
            .collect();
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Send { msg: SimMsg::Chunk(ChunkMsg::Response(ChunkResponse::Have { bitmap, .. })), .. }
                    if *bitmap == want
            )),
            "it has every chunk of the track: {out:?}"
        );
        // A chunk of a track it was not given, or asked for under the wrong track: not held.
        for (request, track) in [(101, other.id), (102, given.id)] {
            let out = get(&mut origin, request, track, other.chunks()[0].id);
            assert_eq!(loads(&out), 0);
            assert!(out.iter().any(|o| matches!(
                o,
                Output::Send {
                    msg: SimMsg::Chunk(ChunkMsg::Response(ChunkResponse::NotHave { .. })),
                    ..
                }
            )));
        }
    }

    #[test]
    fn held_bitmap_counts_each_chunk_once() {
        let mut h = Held::new(70);
        assert!(h.set(0, true));
        assert!(!h.set(0, true));
        assert!(h.set(69, true));
        assert!(!h.set(70, true), "out of range");
        assert_eq!(h.count, 2);
        assert!(h.set(0, false));
        assert!(!h.set(0, false));
        assert_eq!(h.count, 1);
    }
}
