//! The serving side: answers other nodes' `/shoal/chunk/2` requests from what the local cache
//! holds, within an upload token bucket and a cap on concurrent uploads, and throttles itself
//! while our own playback is short of data. It decides serve / busy / not-have; the driver only
//! reads the bytes it is told to ([`ServerEvent::Load`]) and hands them back
//! ([`ServerCommand::Loaded`]), and they are verified here, unless the driver says it did so on
//! that read, so a corrupt cache file is never served.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::wire::{ChunkRequest, ChunkResponse};
use shoal_protocol::{
    ChunkId, Core, Input, Manifest, NodeId, Output, Time, TimerSet, TrackId, verify,
};

use super::ChunkMsg;
use super::config::ServerConfig;
use super::idmap::IdMap;

/// A token bucket in bytes: `rate` bytes/s refill up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    last: Time,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes at time `now`.
    pub fn new(burst: u64, now: Time) -> Self {
        Self {
            tokens: burst as f64,
            burst: burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Time, rate: f64) {
        let dt = (now - self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes `n` bytes if available at `rate`; otherwise returns how long until they are.
    pub fn try_take(&mut self, now: Time, rate: f64, n: u64) -> Result<(), Duration> {
        self.refill(now, rate);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let secs = (n - self.tokens) / rate.max(1.0);
            Err(Duration::from_secs_f64(secs.min(3600.0)))
        }
    }

    /// Gives back `n` bytes (an accepted upload was cancelled before it was sent).
    pub fn refund(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// Bytes available now (after refilling at `rate`).
    pub fn available(&mut self, now: Time, rate: f64) -> u64 {
        self.refill(now, rate);
        self.tokens as u64
    }
}

/// What the driver is asked to read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A chunk's bytes.
    Chunk(ChunkId),
    /// A track's canonical manifest bytes.
    Manifest(TrackId),
}

/// Commands to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    /// The cache holds `chunk` (`len` bytes) and may serve it.
    Hold {
        /// The chunk.
        chunk: ChunkId,
        /// Its length.
        len: u32,
    },
    /// The cache no longer holds `chunk`.
    Drop(ChunkId),
    /// The cache holds `track`'s manifest (for `GetManifest`, and its chunk list for
    /// `QueryHave`). Shared, not copied: a process running many cores hands them all the same
    /// decoded manifest (see [`super::ManifestPool`]).
    Track {
        /// The track.
        track: TrackId,
        /// Its decoded manifest.
        manifest: Arc<Manifest>,
    },
    /// The cache dropped `track`'s manifest.
    DropTrack(TrackId),
    /// The answer to [`ServerEvent::Load`]: the bytes read, `None` if the file was missing.
    Loaded {
        /// Who asked.
        to: NodeId,
        /// Their request number.
        request: u64,
        /// The bytes.
        bytes: Option<Vec<u8>>,
        /// True when the driver checked `bytes` against the item's id on this very read (the
        /// client's disk cache verifies every chunk it reads): the core then does not hash
        /// them again. False makes the core verify them.
        verified: bool,
    },
    /// The driver finished sending the response to (`to`, `request`): its upload slot is free.
    Sent {
        /// The requester.
        to: NodeId,
        /// Their request number.
        request: u64,
    },
    /// Our own playback is short of data (true) or fine (false): serve less meanwhile.
    OwnPlaybackUrgent(bool),
    /// New upload limits (bytes/s, bucket depth, concurrent uploads).
    SetLimits {
        /// Sustained bytes/s.
        rate: u64,
        /// Bucket depth in bytes.
        burst: u64,
        /// Concurrent uploads.
        max_uploads: usize,
    },
}

/// What the server reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Read `item` from disk and answer with [`ServerCommand::Loaded`].
    Load {
        /// The requester.
        to: NodeId,
        /// Their request number.
        request: u64,
        /// What to read.
        item: Item,
    },
    /// A cached file failed verification (or was missing): delete it; it is no longer served.
    Corrupt(Item),
    /// An upload of `bytes` to `to` was started (statistics).
    Served {
        /// The requester.
        to: NodeId,
        /// Bytes sent.
        bytes: u64,
    },
}

/// Counters of the serving side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Bytes of chunk and manifest responses sent.
    pub bytes_served: u64,
    /// Chunk responses sent.
    pub chunks_served: u64,
    /// Requests answered `Busy`.
    pub busy: u64,
    /// Requests answered `NotHave`.
    pub not_have: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    Loading,
    Sending,
}

#[derive(Debug, Clone)]
struct Upload {
    item: Item,
    charged: u64,
    state: UploadState,
}

/// The chunk server core. See the module documentation.
#[derive(Debug)]
pub struct ChunkServer {
    config: ServerConfig,
    held: IdMap<ChunkId, u32>,
    tracks: IdMap<TrackId, Arc<Manifest>>,
    bucket: TokenBucket,
    uploads: IdMap<(NodeId, u64), Upload>,
    slot_timers: TimerSet<(NodeId, u64)>,
    urgent: bool,
    out: VecDeque<Output<ChunkMsg, ServerEvent>>,
    stats: ServerStats,
    now: Time,
}

/// Bytes charged for a manifest before its size is known (canonical manifests of a few
/// minutes of audio are a few KB).
const MANIFEST_CHARGE: u64 = 4096;

impl ChunkServer {
    /// A server with `config` and nothing to serve yet.
    pub fn new(config: ServerConfig) -> Self {
        let bucket = TokenBucket::new(config.effective_burst(), Time::ZERO);
        Self {
            config,
            held: IdMap::default(),
            tracks: IdMap::default(),
            bucket,
            uploads: IdMap::default(),
            slot_timers: TimerSet::new(),
            urgent: false,
            out: VecDeque::new(),
            stats: ServerStats::default(),
            now: Time::ZERO,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Uploads in progress (loading or sending).
    pub fn uploads(&self) -> usize {
        self.uploads.len()
    }

    /// True when `chunk` is in the server's own table of servable chunks (`Hold`/`Drop`).
    pub fn holds(&self, chunk: &ChunkId) -> bool {
        self.held.contains_key(chunk)
    }

    /// The manifest of `track`, if the server has it (`Track`/`DropTrack`).
    pub fn manifest(&self, track: &TrackId) -> Option<Arc<Manifest>> {
        self.tracks.get(track).cloned()
    }

    /// Handles a request from `from` as [`Core::handle_input`] does, except that `held`
    /// gives which chunks are servable and their lengths instead of the server's own table,
    /// which it leaves untouched. [`super::PeerCore`] answers from its scheduler's cache
    /// index, so a listener keeps one table of its cached chunks rather than two (the
    /// simulator runs 100,000 listeners).
    pub fn handle_request_from(
        &mut self,
        now: Time,
        from: NodeId,
        req: ChunkRequest,
        held: impl Fn(&ChunkId) -> Option<u32>,
    ) {
        let now = now.max(self.now);
        self.now = now;
        self.on_request(now, from, req, &held);
    }

    fn rate(&self) -> f64 {
        let r = self.config.upload_rate as f64;
        if self.urgent {
            r * self.config.urgent_rate_fraction.clamp(0.0, 1.0)
        } else {
            r
        }
    }

    fn max_uploads(&self) -> usize {
        if self.urgent {
            self.config
                .max_uploads_while_urgent
                .min(self.config.max_uploads)
        } else {
            self.config.max_uploads
        }
    }

    fn respond(&mut self, to: NodeId, resp: ChunkResponse) {
        self.out.push_back(Output::Send {
            to,
            msg: ChunkMsg::Response(resp),
        });
    }

    fn busy(&mut self, to: NodeId, request: u64, wait: Duration) {
        self.stats.busy += 1;
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let retry_after_ms = ms.max(self.config.min_retry_after_ms);
        self.respond(
            to,
            ChunkResponse::Busy {
                request,
                retry_after_ms,
            },
        );
    }

    fn not_have(&mut self, to: NodeId, request: u64) {
        self.stats.not_have += 1;
        self.respond(to, ChunkResponse::NotHave { request });
    }

    /// Admission: a free upload slot and enough tokens; otherwise `Busy`.
    fn admit(&mut self, now: Time, from: NodeId, request: u64, item: Item, charge: u64) {
        if self.uploads.contains_key(&(from, request)) {
            return; // a duplicate request number: the first one is being served
        }
        if self.uploads.len() >= self.max_uploads() {
            let wait = Duration::from_millis(u64::from(self.config.min_retry_after_ms));
            self.busy(from, request, wait);
            return;
        }
        let rate = self.rate();
        if let Err(wait) = self.bucket.try_take(now, rate, charge) {
            self.busy(from, request, wait);
            return;
        }
        self.uploads.insert(
            (from, request),
            Upload {
                item,
                charged: charge,
                state: UploadState::Loading,
            },
        );
        self.slot_timers.set(
            (from, request),
            now + Duration::from_millis(self.config.upload_slot_timeout_ms),
        );
        self.out.push_back(Output::Event(ServerEvent::Load {
            to: from,
            request,
            item,
        }));
    }

    /// `held`: the length of each servable chunk (the server's own table, or the one a
    /// [`super::PeerCore`] shares with it).
    fn on_request(
        &mut self,
        now: Time,
        from: NodeId,
        req: ChunkRequest,
        held: &dyn Fn(&ChunkId) -> Option<u32>,
    ) {
        match req {
            ChunkRequest::GetChunk { request, chunk, .. } => match held(&chunk) {
                Some(len) => self.admit(now, from, request, Item::Chunk(chunk), u64::from(len)),
                None => self.not_have(from, request),
            },
            ChunkRequest::GetManifest { request, track } => {
                if self.tracks.contains_key(&track) {
                    self.admit(now, from, request, Item::Manifest(track), MANIFEST_CHARGE);
                } else {
                    self.not_have(from, request);
                }
            }
            ChunkRequest::QueryHave { request, track } => match self.tracks.get(&track) {
                Some(m) => {
                    let mut bitmap = vec![0u8; m.chunks.len().div_ceil(8)];
                    for (i, c) in m.chunks.iter().enumerate() {
                        if held(&c.id).is_some() {
                            bitmap[i / 8] |= 1 << (i % 8);
                        }
                    }
                    self.respond(from, ChunkResponse::Have { request, bitmap });
                }
                None => self.not_have(from, request),
            },
            ChunkRequest::Cancel { request } => {
                if let Some(u) = self.uploads.remove(&(from, request)) {
                    self.slot_timers.cancel(&(from, request));
                    if u.state == UploadState::Loading {
                        self.bucket.refund(u.charged);
                    }
                }
                self.respond(from, ChunkResponse::Cancelled { request });
            }
        }
    }

    fn on_loaded(&mut self, to: NodeId, request: u64, bytes: Option<Vec<u8>>, verified: bool) {
        let Some(u) = self.uploads.get_mut(&(to, request)) else {
            return; // cancelled meanwhile
        };
        if u.state != UploadState::Loading {
            return;
        }
        let item = u.item;
        let ok = bytes.filter(|b| {
            verified
                || match item {
                    Item::Chunk(id) => verify(b, &id).is_ok(),
                    Item::Manifest(track) => TrackId::of(b) == track,
                }
        });
        let Some(bytes) = ok else {
            self.uploads.remove(&(to, request));
            self.slot_timers.cancel(&(to, request));
            match item {
                Item::Chunk(id) => {
                    self.held.remove(&id);
                }
                Item::Manifest(t) => {
                    self.tracks.remove(&t);
                }
            }
            self.out
                .push_back(Output::Event(ServerEvent::Corrupt(item)));
            self.not_have(to, request);
            return;
        };
        u.state = UploadState::Sending;
        let n = bytes.len() as u64;
        self.stats.bytes_served += n;
        let resp = match item {
            Item::Chunk(_) => {
                self.stats.chunks_served += 1;
                ChunkResponse::Chunk { request, bytes }
            }
            Item::Manifest(_) => ChunkResponse::Manifest { request, bytes },
        };
        self.respond(to, resp);
        self.out
            .push_back(Output::Event(ServerEvent::Served { to, bytes: n }));
    }

    fn command(&mut self, now: Time, cmd: ServerCommand) {
        match cmd {
            ServerCommand::Hold { chunk, len } => {
                if self.held.len() < self.config.max_held_chunks || self.held.contains_key(&chunk) {
                    self.held.insert(chunk, len);
                }
            }
            ServerCommand::Drop(chunk) => {
                self.held.remove(&chunk);
            }
            ServerCommand::Track { track, manifest } => {
                if self.tracks.len() < self.config.max_tracks || self.tracks.contains_key(&track) {
                    self.tracks.insert(track, manifest);
                }
            }
            ServerCommand::DropTrack(track) => {
                self.tracks.remove(&track);
            }
            ServerCommand::Loaded {
                to,
                request,
                bytes,
                verified,
            } => self.on_loaded(to, request, bytes, verified),
            ServerCommand::Sent { to, request } => {
                if self.uploads.remove(&(to, request)).is_some() {
                    self.slot_timers.cancel(&(to, request));
                }
            }
            ServerCommand::OwnPlaybackUrgent(u) => {
                // Settle the bucket at the old rate before switching.
                let rate = self.rate();
                self.bucket.refill(now, rate);
                self.urgent = u;
            }
            ServerCommand::SetLimits {
                rate,
                burst,
                max_uploads,
            } => {
                let old = self.rate();
                self.bucket.refill(now, old);
                self.config.upload_rate = rate;
                self.config.upload_burst = burst;
                self.config.max_uploads = max_uploads;
                self.bucket.burst = self.config.effective_burst() as f64;
                self.bucket.tokens = self.bucket.tokens.min(self.bucket.burst);
            }
        }
    }

    /// Forgets every upload to `node`.
    fn drop_node(&mut self, node: NodeId) {
        let keys: Vec<(NodeId, u64)> = self
            .uploads
            .keys()
            .filter(|(n, _)| *n == node)
            .copied()
            .collect();
        for k in keys {
            self.uploads.remove(&k);
            self.slot_timers.cancel(&k);
        }
    }
}

impl Core for ChunkServer {
    type Message = ChunkMsg;
    type Command = ServerCommand;
    type Event = ServerEvent;

    fn handle_input(&mut self, now: Time, input: Input<ChunkMsg, ServerCommand>) {
        let now = now.max(self.now);
        self.now = now;
        match input {
            Input::Message {
                from,
                msg: ChunkMsg::Request(r),
            } => {
                let held = std::mem::take(&mut self.held);
                self.on_request(now, from, r, &|c| held.get(c).copied());
                self.held = held;
            }
            Input::Message {
                msg: ChunkMsg::Response(_),
                ..
            } => {}
            Input::Connected(_) => {}
            Input::Disconnected(node) => self.drop_node(node),
            Input::Timeout => {
                while let Some(k) = self.slot_timers.pop_expired(now) {
                    self.uploads.remove(&k);
                }
            }
            Input::Command(c) => self.command(now, c),
        }
    }

    fn poll_output(&mut self) -> Output<ChunkMsg, ServerEvent> {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        super::release_drained(&mut self.out);
        Output::Timeout(self.slot_timers.next_deadline())
    }
}
