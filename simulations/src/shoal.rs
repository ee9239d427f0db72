//! Owns the integration of Shoal's real cores into the simulator: [`ShoalCores`] runs
//! `shoal_peer::core::PeerCore` (FetchScheduler + ChunkServer + LRU cache index) on every
//! peer and a `ChunkServer` on every origin, and does for them exactly what the real driver
//! does — answers disk reads from the (synthetic) store, tells a server when a response went
//! out, maps listener actions to commands and core events to statistics. Every decision
//! (which source, when to hedge, when to fall back to the origin, what to cache or prefetch,
//! whom to serve) is the cores'.
//!
//! Not yet integrated (their cores have not landed): the tracker (`NeedPeers` lookups stay
//! unanswered, so peers learn of no holders and P2P transfer cannot happen) and super-peers
//! (they relay NATed traffic at the transport level only: no index, no cache).

use std::collections::HashSet;

use shoal_peer::core::{
    ChunkMsg, ChunkServer, Item, PeerCommand, PeerConfig, PeerCore, PeerEvent, SchedulerCommand,
    SchedulerEvent, ServerCommand, ServerConfig,
};
use shoal_protocol::wire::{ChunkRequest, ChunkResponse, LENGTH_PREFIX_BYTES};
use shoal_protocol::{Core, Input, NodeId, Output, Time, TrackId};

use crate::catalog::SynthCatalog;
use crate::cores::{Cores, Feedback, Listen, NodeInfo};
use crate::net::Role;
use crate::scenario::Scenario;
use crate::stats::{PlaybackStats, Source};

/// A simulated node's core: the listener's whole core, or an origin's chunk server.
#[derive(Debug)]
pub enum SimNode {
    /// A listener.
    Peer(Box<PeerCore>),
    /// An origin store's server.
    Origin(Box<ChunkServer>),
}

impl Core for SimNode {
    type Message = ChunkMsg;
    type Command = PeerCommand;
    type Event = PeerEvent;

    fn handle_input(&mut self, now: Time, input: Input<ChunkMsg, PeerCommand>) {
        match self {
            SimNode::Peer(c) => c.handle_input(now, input),
            SimNode::Origin(s) => {
                let input = match input {
                    Input::Message { from, msg } => Input::Message { from, msg },
                    Input::Connected(n) => Input::Connected(n),
                    Input::Disconnected(n) => Input::Disconnected(n),
                    Input::Timeout => Input::Timeout,
                    Input::Command(PeerCommand::Serve(c)) => Input::Command(c),
                    Input::Command(PeerCommand::Fetch(_)) => return,
                };
                s.handle_input(now, input);
            }
        }
    }

    fn poll_output(&mut self) -> Output<ChunkMsg, PeerEvent> {
        match self {
            SimNode::Peer(c) => c.poll_output(),
            SimNode::Origin(s) => match s.poll_output() {
                Output::Send { to, msg } => Output::Send { to, msg },
                Output::Event(e) => Output::Event(PeerEvent::Serve(e)),
                Output::Timeout(t) => Output::Timeout(t),
            },
        }
    }
}

/// The real cores, as far as they exist.
#[derive(Debug)]
pub struct ShoalCores {
    catalog: SynthCatalog,
    origin_bps: u64,
    /// The origins' ids (learnt from the first spawned node).
    origins: Vec<NodeId>,
    /// Tracks each origin has registered with its server, by origin position.
    origin_tracks: Vec<HashSet<TrackId>>,
    /// Holder lookups the peers asked for (unanswered until the tracker core lands).
    need_peers: u64,
    /// Disk read latency, µs.
    read_us: u64,
}

impl ShoalCores {
    /// The core set for scenario `s` run with `seed`.
    pub fn new(s: &Scenario, seed: u64) -> Self {
        Self {
            catalog: SynthCatalog::new(seed, s.catalog.track_duration_s, s.catalog.bitrate_kbps),
            origin_bps: (s.bandwidth.origin_mbps * 1e6 / 8.0) as u64,
            origins: Vec::new(),
            origin_tracks: Vec::new(),
            need_peers: 0,
            read_us: (s.cache.read_ms * 1000.0) as u64,
        }
    }

    fn origin_pos(&self, node: u32) -> Option<usize> {
        let id = NodeId::from_index(u64::from(node));
        self.origins.iter().position(|o| *o == id)
    }
}

fn source_bytes(stats: &mut PlaybackStats, b: &shoal_peer::core::BytesBySource) {
    stats.bytes(Source::Cache, b.cache);
    stats.bytes(Source::Peers, b.peers);
    stats.bytes(Source::SuperPeers, b.superpeers);
    stats.bytes(Source::Origin, b.origin);
}

impl Cores for ShoalCores {
    type Core = SimNode;

    fn integrated(&self) -> Vec<String> {
        vec![
            "peer: shoal_peer::core::PeerCore (FetchScheduler + ChunkServer + CacheIndex)".into(),
            "origin: shoal_peer::core::ChunkServer over the synthetic catalog".into(),
        ]
    }

    fn playback_measured(&self) -> bool {
        true
    }

    fn notes(&self) -> Vec<String> {
        vec![
            format!(
                "tracker core not integrated yet: the peers' {} holder lookups (NeedPeers) went \
                 unanswered, so no peer learnt of another holder and bytes_by_source.peers is 0 \
                 by construction, not by measurement of P2P",
                self.need_peers
            ),
            "super-peer core not integrated yet: super-peers relay NATed traffic at the \
             transport level only (no index, no cache), so bytes_by_source.superpeers is 0"
                .into(),
            format!(
                "{} tracks materialised (manifests and chunk ids hashed from synthetic bytes)",
                self.catalog.materialised()
            ),
        ]
    }

    fn wants_history(&self) -> bool {
        true
    }

    fn wire_len(&self, msg: &ChunkMsg) -> u32 {
        u32::try_from(msg.wire_len() + LENGTH_PREFIX_BYTES).unwrap_or(u32::MAX)
    }

    fn spawn(&mut self, info: &NodeInfo<'_>) -> Option<SimNode> {
        if self.origins.is_empty() {
            self.origins = info.origins.to_vec();
            self.origin_tracks = vec![HashSet::new(); self.origins.len()];
        }
        match info.role {
            Role::Peer => {
                let mut cfg = PeerConfig::default();
                cfg.scheduler.cache.max_bytes = info.cache_bytes;
                cfg.server.upload_rate = info.upload_cap_bps.max(1.0) as u64;
                let mut core = PeerCore::new(cfg);
                // The disk cache as the listening history left it: manifests and chunks,
                // oldest first (the core's LRU evicts what does not fit).
                let mut seen = HashSet::new();
                for &t in info.history {
                    if !seen.insert(t) {
                        continue;
                    }
                    let track = self.catalog.track(t);
                    core.handle_input(
                        Time::ZERO,
                        Input::Command(PeerCommand::Fetch(SchedulerCommand::Manifest {
                            track: track.id,
                            bytes: track.manifest.clone(),
                        })),
                    );
                    for c in &track.chunks {
                        core.handle_input(
                            Time::ZERO,
                            Input::Command(PeerCommand::Fetch(SchedulerCommand::CacheHas {
                                chunk: c.id,
                                len: c.len,
                            })),
                        );
                    }
                }
                let origin = info.origins.first().copied();
                core.handle_input(
                    Time::ZERO,
                    Input::Command(PeerCommand::Fetch(SchedulerCommand::SetOrigin(origin))),
                );
                Some(SimNode::Peer(Box::new(core)))
            }
            Role::Origin => {
                let cfg = ServerConfig {
                    upload_rate: self.origin_bps.max(1),
                    upload_burst: (self.origin_bps / 10).max(1 << 20),
                    // An HTTP store behind a CDN: no small upload-slot limit.
                    max_uploads: 100_000,
                    max_uploads_while_urgent: 100_000,
                    max_held_chunks: 50_000_000,
                    max_tracks: 10_000_000,
                    ..ServerConfig::default()
                };
                Some(SimNode::Origin(Box::new(ChunkServer::new(cfg))))
            }
            // Their cores have not landed: super-peers relay at the transport level only.
            Role::SuperPeer | Role::Tracker => None,
        }
    }

    fn commands(&mut self, _node: u32, action: Listen, out: &mut Vec<PeerCommand>) {
        match action {
            Listen::SessionStart => {
                if let Some(o) = self.origins.first() {
                    out.push(PeerCommand::Fetch(SchedulerCommand::SetOrigin(Some(*o))));
                }
            }
            Listen::SessionEnd => out.push(PeerCommand::Fetch(SchedulerCommand::Stop)),
            Listen::Play { track, next } => {
                let id = self.catalog.track(track).id;
                out.push(PeerCommand::Fetch(SchedulerCommand::Play {
                    track: id,
                    position_ms: 0,
                }));
                out.push(PeerCommand::Fetch(SchedulerCommand::ClearQueue));
                if let Some(n) = next {
                    let nid = self.catalog.track(n).id;
                    out.push(PeerCommand::Fetch(SchedulerCommand::Enqueue(nid)));
                }
            }
        }
    }

    fn observe(
        &mut self,
        _now: Time,
        node: u32,
        event: PeerEvent,
        stats: &mut PlaybackStats,
        feedback: &mut Vec<Feedback<Self>>,
    ) {
        match event {
            PeerEvent::Fetch(SchedulerEvent::ReadCache { chunk, .. }) => {
                let bytes = self.catalog.bytes_of_chunk(&chunk);
                feedback.push(Feedback::Later {
                    after_us: self.read_us,
                    cmd: PeerCommand::Fetch(SchedulerCommand::CacheData { chunk, bytes }),
                });
            }
            PeerEvent::Fetch(SchedulerEvent::PlayStarted {
                time_to_first_audio_ms: Some(ms),
                ..
            }) => stats.first_audio(ms as f64),
            PeerEvent::Fetch(SchedulerEvent::TrackFinished(p)) => {
                stats.play_ended(p.stutters);
                source_bytes(stats, &p.bytes_by_source);
            }
            PeerEvent::Serve(shoal_peer::core::ServerEvent::Load { to, request, item }) => {
                let bytes = match item {
                    Item::Chunk(c) => self.catalog.bytes_of_chunk(&c),
                    Item::Manifest(t) => self.catalog.manifest_of(&t),
                };
                // An origin is a store behind a CDN; a peer reads its disk.
                let cmd = PeerCommand::Serve(ServerCommand::Loaded { to, request, bytes });
                if self.origin_pos(node).is_some() {
                    feedback.push(Feedback::Command(cmd));
                } else {
                    feedback.push(Feedback::Later {
                        after_us: self.read_us,
                        cmd,
                    });
                }
            }
            PeerEvent::Fetch(SchedulerEvent::NeedPeers(_)) => self.need_peers += 1,
            // Stored chunks and manifests, evictions: the synthetic disk regenerates bytes on
            // demand, so there is nothing to write. Holder lookups (NeedPeers) wait for the
            // tracker core.
            _ => {}
        }
    }

    fn on_deliver(
        &mut self,
        _now: Time,
        _from: u32,
        to: u32,
        msg: &ChunkMsg,
        to_sender: &mut Vec<Feedback<Self>>,
        to_receiver: &mut Vec<Feedback<Self>>,
    ) {
        match msg {
            // The response reached its requester: the server's upload slot is free.
            ChunkMsg::Response(
                ChunkResponse::Chunk { request, .. } | ChunkResponse::Manifest { request, .. },
            ) => to_sender.push(Feedback::Command(PeerCommand::Serve(ServerCommand::Sent {
                to: NodeId::from_index(u64::from(to)),
                request: *request,
            }))),
            // The origin store holds every track: register it with the origin's server the
            // first time it is asked about.
            ChunkMsg::Request(
                ChunkRequest::GetManifest { track, .. }
                | ChunkRequest::GetChunk { track, .. }
                | ChunkRequest::QueryHave { track, .. },
            ) => {
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
                to_receiver.push(Feedback::Command(PeerCommand::Serve(
                    ServerCommand::Track {
                        track: t.id,
                        chunks: t.chunks.iter().map(|c| c.id).collect(),
                    },
                )));
                for c in &t.chunks {
                    to_receiver.push(Feedback::Command(PeerCommand::Serve(ServerCommand::Hold {
                        chunk: c.id,
                        len: c.len,
                    })));
                }
            }
            _ => {}
        }
    }
}
