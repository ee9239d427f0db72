//! The peer's sans-IO core: which source to fetch each chunk from, when to hedge, when to fall
//! back to the origin, what to prefetch, whom to serve. No sockets, clocks or global
//! randomness (see `shoal_protocol::sansio`).
//!
//! - [`FetchScheduler`] (playback side): cache → peers → origin, hedged start, playback clock,
//!   stutter and byte statistics, prefetch, verification and bans.
//! - [`ChunkServer`] (upload side): answers chunk requests within a token bucket and a cap on
//!   concurrent uploads.
//! - [`CacheIndex`]: the LRU policy of the disk cache ([`ChunkNames`]: its ids shared by many
//!   cores in one process).
//! - [`Announcer`]: when to tell the tracker what we hold.
//! - [`Attacher`]: which super-peer to attach to (relay reservation, cluster).
//! - [`PeerCore`]: both sides wired together as one [`Core`], the way the driver and the
//!   simulator run a listener: it keeps the server's servable set in step with the cache and
//!   throttles serving while our own playback is short of data.
//!
//! Every threshold lives in [`PeerConfig`].

use std::collections::VecDeque;
use std::sync::Arc;

use shoal_protocol::wire::{ChunkRequest, ChunkResponse};
use shoal_protocol::{ChunkId, Core, Input, Output, Time};

mod announce;
mod attach;
mod cache;
mod config;
pub mod idmap;
mod names;
mod nodes;
mod pool;
mod scheduler;
mod server;
mod stats;

#[cfg(test)]
mod testnet;
#[cfg(test)]
mod tests;

pub use announce::{AnnounceConfig, AnnouncePlan, Announcer};
pub use attach::{AttachConfig, Attacher};
pub use cache::CacheIndex;
pub use config::{CacheConfig, PeerConfig, SchedulerConfig, ServerConfig};
pub use names::{ChunkNames, Names, NodeNames};
pub use pool::ManifestPool;
pub use scheduler::{
    BanReason, FetchScheduler, PeerInfo, SchedulerCommand, SchedulerEvent, SessionStats, Source,
};
pub use server::{ChunkServer, Item, ServerCommand, ServerEvent, ServerStats, TokenBucket};
pub use stats::{BytesBySource, PlayStats, SourceKind};

/// A `/shoal/chunk/2` message in either direction: the cores' `Message` type. The scheduler
/// sends requests and takes responses; the server the other way round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkMsg {
    /// A request (we ask, or someone asks us).
    Request(ChunkRequest),
    /// A response.
    Response(ChunkResponse),
}

impl ChunkMsg {
    /// Approximate size on the wire, for simulators' bandwidth models.
    pub fn wire_len(&self) -> usize {
        match self {
            ChunkMsg::Response(ChunkResponse::Chunk { bytes, .. })
            | ChunkMsg::Response(ChunkResponse::Manifest { bytes, .. })
            | ChunkMsg::Response(ChunkResponse::Have { bitmap: bytes, .. }) => bytes.len() + 16,
            ChunkMsg::Request(_) | ChunkMsg::Response(_) => 48,
        }
    }
}

/// Commands to a [`PeerCore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCommand {
    /// For the playback side.
    Fetch(SchedulerCommand),
    /// For the serving side.
    Serve(ServerCommand),
}

/// Events of a [`PeerCore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// From the playback side.
    Fetch(SchedulerEvent),
    /// From the serving side.
    Serve(ServerEvent),
}

/// A listener's whole core: a [`FetchScheduler`] and a [`ChunkServer`] sharing one cache.
///
/// Routing: responses go to the scheduler, requests to the server, timeouts and connection
/// events to both. The server answers chunk requests from the scheduler's cache index, so a
/// chunk the scheduler stores in (or evicts from) the cache is servable (or not) at once and
/// each cached chunk is listed once; manifests reach the server as the scheduler's shared
/// copy. The driver reports each fact once.
#[derive(Debug)]
pub struct PeerCore {
    scheduler: FetchScheduler,
    server: ChunkServer,
    out: VecDeque<Output<ChunkMsg, PeerEvent>>,
    next_timeout: Time,
    /// The scheduler's wake-up as it last said: an input only the server sees (most are chunk
    /// requests) leaves it as it was, so the scheduler is not asked again.
    scheduler_wake: Time,
    urgent: bool,
}

impl PeerCore {
    /// A listener core with `config`.
    pub fn new(config: PeerConfig) -> Self {
        Self {
            scheduler: FetchScheduler::new(config.scheduler),
            server: ChunkServer::new(config.server),
            out: VecDeque::new(),
            next_timeout: Time::NEVER,
            scheduler_wake: Time::NEVER,
            urgent: false,
        }
    }

    /// Builder: decoded manifests are shared through `pool` with every core given the same
    /// pool (see [`ManifestPool`]; for a process running many cores, such as the simulator).
    pub fn with_manifest_pool(mut self, pool: ManifestPool) -> Self {
        self.scheduler.set_manifest_pool(pool);
        self
    }

    /// Builder: the cache index keeps its chunk ids in `names`, shared with every core given
    /// the same table (see [`ChunkNames`]; for a process running many cores).
    pub fn with_chunk_names(mut self, names: ChunkNames) -> Self {
        self.scheduler.set_chunk_names(names);
        self
    }

    /// Builder: the scheduler's table of known nodes keeps their ids in `names`, shared with
    /// every core given the same table (see [`NodeNames`]).
    pub fn with_node_names(mut self, names: NodeNames) -> Self {
        self.scheduler.set_node_names(names);
        self
    }

    /// Builder: the scheduler uses `shared` in place of its own copy of the same
    /// configuration, cache limits aside (see [`FetchScheduler::share_config`]; for a process
    /// running many cores). Nothing changes when the rest differs.
    pub fn with_shared_scheduler_config(mut self, shared: &Arc<SchedulerConfig>) -> Self {
        self.scheduler.share_config(shared);
        self
    }

    /// The playback side.
    pub fn scheduler(&self) -> &FetchScheduler {
        &self.scheduler
    }

    /// The serving side.
    pub fn server(&self) -> &ChunkServer {
        &self.server
    }

    /// True when `chunk` is servable: the cache index holds it.
    pub fn serves(&self, chunk: &ChunkId) -> bool {
        self.scheduler.cache().contains(chunk)
    }

    /// Collects both sides' outputs; `scheduler_input`: the scheduler was given an input
    /// (otherwise it has nothing to say and wakes when it last said).
    fn drain(&mut self, now: Time, scheduler_input: bool) {
        let mut mirror = Vec::new();
        let sched_wake = if !scheduler_input {
            self.scheduler_wake
        } else {
            loop {
                match self.scheduler.poll_output() {
                    Output::Timeout(t) => break t,
                    Output::Send { to, msg } => self.out.push_back(Output::Send { to, msg }),
                    Output::Event(e) => {
                        // What the cache holds the server reads from the scheduler's index at
                        // each request; manifests it is told, sharing the scheduler's copy.
                        if let SchedulerEvent::ManifestReady { track, bytes } = &e {
                            if let Ok(manifest) = self.scheduler.decode_manifest(*track, bytes) {
                                mirror.push(ServerCommand::Track {
                                    track: *track,
                                    manifest,
                                });
                            }
                        }
                        self.out.push_back(Output::Event(PeerEvent::Fetch(e)));
                    }
                }
            }
        };
        self.scheduler_wake = sched_wake;
        let urgent = self.scheduler.playback_urgent(now);
        if urgent != self.urgent {
            self.urgent = urgent;
            mirror.push(ServerCommand::OwnPlaybackUrgent(urgent));
        }
        for c in mirror {
            self.server.handle_input(now, Input::Command(c));
        }
        let server_wake = loop {
            match self.server.poll_output() {
                Output::Timeout(t) => break t,
                Output::Send { to, msg } => self.out.push_back(Output::Send { to, msg }),
                Output::Event(e) => self.out.push_back(Output::Event(PeerEvent::Serve(e))),
            }
        };
        self.next_timeout = sched_wake.min(server_wake);
    }
}

/// Gives a drained output queue's buffer back to the allocator. A process running many cores
/// (the simulator: one per listener) otherwise keeps one idle buffer per core and queue, and
/// each input writes its outputs into a queue of its own, cold in the CPU's caches; freed,
/// the next core's queue takes the buffer just used. The real client's queues are few.
pub(crate) fn release_drained<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

impl Core for PeerCore {
    type Message = ChunkMsg;
    type Command = PeerCommand;
    type Event = PeerEvent;

    fn handle_input(&mut self, now: Time, input: Input<ChunkMsg, PeerCommand>) {
        // Whether the scheduler was given the input (see `drain`).
        let scheduler_input = match input {
            Input::Message {
                from,
                msg: ChunkMsg::Request(req),
            } => {
                let cache = self.scheduler.cache();
                self.server
                    .handle_request_from(now, from, req, |c| cache.len_of(c));
                false
            }
            Input::Message {
                from,
                msg: msg @ ChunkMsg::Response(_),
            } => {
                self.scheduler
                    .handle_input(now, Input::Message { from, msg });
                true
            }
            Input::Connected(n) => {
                self.scheduler.handle_input(now, Input::Connected(n));
                self.server.handle_input(now, Input::Connected(n));
                true
            }
            Input::Disconnected(n) => {
                self.scheduler.handle_input(now, Input::Disconnected(n));
                self.server.handle_input(now, Input::Disconnected(n));
                true
            }
            Input::Timeout => {
                self.scheduler.handle_input(now, Input::Timeout);
                self.server.handle_input(now, Input::Timeout);
                true
            }
            Input::Command(PeerCommand::Fetch(c)) => {
                let mirror = match &c {
                    SchedulerCommand::Manifest { track, bytes }
                        if shoal_protocol::TrackId::of(bytes) == *track =>
                    {
                        self.scheduler
                            .decode_manifest(*track, bytes)
                            .ok()
                            .map(|manifest| ServerCommand::Track {
                                track: *track,
                                manifest,
                            })
                    }
                    _ => None,
                };
                self.scheduler.handle_input(now, Input::Command(c));
                if let Some(m) = mirror {
                    self.server.handle_input(now, Input::Command(m));
                }
                true
            }
            Input::Command(PeerCommand::Serve(c)) => {
                self.server.handle_input(now, Input::Command(c));
                false
            }
        };
        self.drain(now, scheduler_input);
    }

    fn poll_output(&mut self) -> Output<ChunkMsg, PeerEvent> {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        release_drained(&mut self.out);
        Output::Timeout(self.next_timeout)
    }
}
