//! The fetch scheduler: for the playing track (and the next one in the queue) it decides, chunk
//! by chunk, which source to ask — local cache, then peers ranked by expected completion time,
//! then the origin when peers cannot make the playback deadline — and it models the playback
//! clock so stutters and time-to-first-audio are measured identically in the real client and
//! in the simulator. It verifies every byte it accepts and bans peers that send bad ones.

use std::cell::Cell;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use litemap::LiteMap;
use shoal_protocol::wire::{ChunkRequest, ChunkResponse};
use shoal_protocol::{
    ChunkId, Core, Input, Manifest, ManifestError, NodeId, Output, SAMPLE_RATE, Time, TimerSet,
    TrackId, verify,
};

use super::ChunkMsg;
use super::cache::CacheIndex;
use super::cache::ChunkNames;
use super::config::SchedulerConfig;
use super::idmap::{IdMap, IdSet};
use super::names::NodeNames;
use super::nodes::NodeTable;
use super::pool::ManifestPool;
use super::stats::{BytesBySource, PlayStats, SourceKind};

/// A holder of a track, as the tracker lookup or the super-peer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node.
    pub node: NodeId,
    /// True for a super-peer (its bytes count as `superpeers`).
    pub superpeer: bool,
    /// Round-trip estimate, if the driver knows one (ping, tracker hint).
    pub rtt_ms: Option<u32>,
}

/// Commands from the local user or the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerCommand {
    /// Play `track` from `position_ms` now (replaces what is playing).
    Play {
        /// The track.
        track: TrackId,
        /// Start position in milliseconds of playable audio.
        position_ms: u64,
    },
    /// Jump within the playing track.
    Seek {
        /// New position in milliseconds.
        position_ms: u64,
    },
    /// Stop playing and drop the queue's prefetch.
    Stop,
    /// Stop the current track and play the next queued one.
    Skip,
    /// Append `track` to the queue (played, and prefetched, after the current one).
    Enqueue(TrackId),
    /// Empty the queue.
    ClearQueue,
    /// Holders of `track`, nearest first (replaces the previous list for that track).
    Peers {
        /// The track.
        track: TrackId,
        /// Its holders.
        peers: Vec<PeerInfo>,
    },
    /// The node the driver maps to the origin's HTTP store (`None`: no origin).
    SetOrigin(Option<NodeId>),
    /// A manifest the driver has (from the disk cache); verified against `track` here.
    Manifest {
        /// The track it claims to be.
        track: TrackId,
        /// Canonical manifest bytes.
        bytes: Vec<u8>,
    },
    /// The disk cache holds `chunk` (`len` bytes): sent at start-up for every cached chunk.
    CacheHas {
        /// The chunk.
        chunk: ChunkId,
        /// Its length.
        len: u32,
    },
    /// The disk cache lost `chunk` (deleted outside the core's advice).
    CacheRemoved(ChunkId),
    /// The answer to [`SchedulerEvent::ReadCache`]: the bytes on disk, `None` if missing.
    CacheData {
        /// The chunk read.
        chunk: ChunkId,
        /// Its bytes, if the file was there.
        bytes: Option<Vec<u8>>,
        /// True when the driver checked `bytes` against `chunk` on this very read (the
        /// client's disk cache verifies every file it reads): the core then does not hash
        /// them again. False makes the core verify them.
        verified: bool,
    },
}

/// Where a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local disk cache.
    Cache,
    /// An ordinary peer.
    Peer(NodeId),
    /// A super-peer.
    SuperPeer(NodeId),
    /// The origin.
    Origin(NodeId),
}

impl Source {
    /// The statistics bucket.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Cache => SourceKind::Cache,
            Source::Peer(_) => SourceKind::Peer,
            Source::SuperPeer(_) => SourceKind::SuperPeer,
            Source::Origin(_) => SourceKind::Origin,
        }
    }
}

/// Why a peer was banned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanReason {
    /// It sent chunk bytes that do not hash to the chunk's id.
    #[error("sent chunk {chunk:?} that failed verification")]
    BadChunk {
        /// The chunk it was asked for.
        chunk: ChunkId,
    },
    /// It sent a manifest that does not hash to the track id.
    #[error("sent a manifest that does not hash to track {track:?}")]
    BadManifest {
        /// The track it was asked for.
        track: TrackId,
    },
}

/// What the scheduler reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerEvent {
    /// Read `chunk` from the disk cache and answer with [`SchedulerCommand::CacheData`].
    ReadCache {
        /// The track it is wanted for.
        track: TrackId,
        /// Its index in the manifest.
        index: usize,
        /// The chunk.
        chunk: ChunkId,
    },
    /// A verified chunk: hand it to the decoder (by `track` and `index`; chunks arrive out of
    /// order, and a prefetched track's chunks arrive before it plays) and, if `store`, write it
    /// to the disk cache.
    ChunkReady {
        /// The track.
        track: TrackId,
        /// Index in the manifest.
        index: usize,
        /// The chunk id.
        chunk: ChunkId,
        /// Verified bytes.
        bytes: Vec<u8>,
        /// Who delivered it.
        source: Source,
        /// True when it came from the network and should be cached.
        store: bool,
    },
    /// A verified manifest obtained from the network: store it with the cache.
    ManifestReady {
        /// The track.
        track: TrackId,
        /// Canonical bytes.
        bytes: Vec<u8>,
    },
    /// The cache policy evicts `chunk`: delete it from disk.
    Evict(ChunkId),
    /// No holders known for `track`: look them up (tracker, super-peer) and send
    /// [`SchedulerCommand::Peers`].
    NeedPeers(TrackId),
    /// Playback (re)started after a play or seek.
    PlayStarted {
        /// The track.
        track: TrackId,
        /// Position in ms.
        position_ms: u64,
        /// Time from the play command to now (first start of this play), else `None`.
        time_to_first_audio_ms: Option<u64>,
    },
    /// Playback reached the end of contiguous data: an underrun.
    Stutter {
        /// The track.
        track: TrackId,
        /// Where it stalled, in ms.
        position_ms: u64,
    },
    /// Playback resumed after an underrun.
    Resumed {
        /// The track.
        track: TrackId,
        /// How long it stalled.
        stalled_ms: u64,
    },
    /// A play ended (track end, stop, skip or another play).
    TrackFinished(PlayStats),
    /// A peer is banned and will not be asked again.
    PeerBanned {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: BanReason,
    },
    /// The track's manifest hashes right but is not a valid manifest; the play is abandoned.
    TrackInvalid(TrackId),
    /// The queue is full; the track was not enqueued.
    QueueFull(TrackId),
}

/// Rate and latency knowledge about one node, and its load from us.
#[derive(Debug, Clone)]
struct NodeState {
    /// Measured (or assumed) delivery rate in bytes/s.
    rate: f64,
    rtt: Nanos,
    in_flight: u32,
    outstanding: u64,
    /// When its last response arrived: the start of the next transfer if it stayed busy.
    last_completion: Time,
    busy_until: Time,
    superpeer: bool,
    /// It has answered us at least once: we can reach it. Until then it may sit behind a
    /// NAT we cannot punch, and the first request waits for a dial that may time out.
    heard: bool,
}

impl NodeState {
    fn expected(&self, now: Time, len: u64) -> Time {
        let secs = (self.outstanding + len) as f64 / self.rate.max(1.0);
        now + Duration::from_secs_f64(secs.min(1e6)) + self.rtt.get()
    }
}

/// A duration in 8 bytes (whole nanoseconds; `Duration` takes 16): one per known node, and a
/// simulated run keeps tens of known nodes for each of 100,000 listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Nanos(u64);

impl Nanos {
    fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl From<Duration> for Nanos {
    fn from(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    Manifest,
    Chunk(usize),
}

#[derive(Debug, Clone)]
struct Req {
    /// The asked node's slot in the scheduler's `nodes` (it stays there while asked).
    node: u32,
    track: TrackId,
    what: What,
    len: u64,
    /// Bytes the node owed us when this was sent: they come first.
    ahead: u64,
    sent: Time,
    expected: Time,
    late: bool,
}

type ReqKey = (NodeId, u64);

/// A request in flight as weighed for a new one: its key, whether it is late, and when its
/// answer is now expected.
type Asked = (ReqKey, bool, Time);

thread_local! {
    /// Scratch for [`FetchScheduler::pump`]'s requests in flight by chunk, one per thread
    /// rather than one per scheduler: kept in each, it was 2.4% more memory at 100,000
    /// simulated listeners, and allocated afresh at each pass, 1.2% more instructions.
    static ASKED_SCRATCH: Cell<Vec<(usize, Asked)>> = const { Cell::new(Vec::new()) };
}

/// True when `node` already has one of the requests `asked`.
fn asked_of(asked: &[Asked], node: &NodeId) -> bool {
    asked.iter().any(|(k, _, _)| k.0 == *node)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Late(ReqKey),
    Expire(ReqKey),
    Retry(NodeId),
}

/// The two tracks being fetched: the playing one and the queue's next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current = 0,
    Next = 1,
}

/// A slot's window as [`FetchScheduler::window`] computed it, with what it was computed from.
#[derive(Debug, Default)]
struct Window {
    /// Slot, track, chunk count, play position and the time the position was taken at: with
    /// the (fixed) configuration, a window is a function of these alone.
    from: Option<(Slot, TrackId, usize, u64, Time)>,
    /// Chunk indices wanted, most urgent first, with the time each is needed.
    chunks: Vec<(usize, Time)>,
}

#[derive(Debug)]
struct TrackFetch {
    track: TrackId,
    /// Shared with the scheduler's manifest cache (one decoded copy per track).
    manifest: Option<Arc<Manifest>>,
    have: Have,
    reading: BTreeSet<usize>,
    not_have: IdSet<(usize, NodeId)>,
    stats: PlayStats,
    /// Holder lookups asked for so far (the wait before the next one doubles with each).
    peer_lookups: u32,
    /// When the holders were first asked for (see `lookup_wait_ms`).
    asked_peers_at: Time,
    /// When they were last asked for (see `relookup_ms`).
    last_peer_lookup: Time,
    /// The last two chunk indices looked up by position (the play position and the moving
    /// playback clock): a lookup at either is free, a later one walks on from them.
    index_memo: Memo2<u64, usize>,
    /// The last two [`FetchScheduler::contiguous_end`] answers by (position, chunks in):
    /// chunks only ever come in, so while their count is the same so is the answer.
    contiguous: Memo2<(u64, usize), u64>,
    /// Chunks found missing from the cache index since (see
    /// [`FetchScheduler::cache_insert`]): the window is re-checked at every input, and at
    /// 100,000 simulated listeners a lookup in a cold per-listener table was its costliest
    /// step. Only an insert makes a chunk held, and an insert unmarks the indices of that
    /// chunk's id alone (a count of all inserts had every chunk that arrived forget the
    /// whole window).
    uncached: Have,
}

/// The two most recent answers of a pure function of this fetch (its manifest never changes
/// once set): the playback clock asks the same questions several times per input.
#[derive(Debug)]
struct Memo2<K: Copy, V: Copy> {
    slots: [Cell<Option<(K, V)>>; 2],
    last: Cell<usize>,
}

impl<K: Copy + PartialEq, V: Copy> Memo2<K, V> {
    fn new() -> Self {
        Self {
            slots: [Cell::new(None), Cell::new(None)],
            last: Cell::new(0),
        }
    }

    fn get(&self, key: K) -> Option<V> {
        for (n, slot) in self.slots.iter().enumerate() {
            if let Some((k, v)) = slot.get() {
                if k == key {
                    self.last.set(n);
                    return Some(v);
                }
            }
        }
        None
    }

    /// Remembers `key → value` in place of the entry used less recently.
    fn put(&self, key: K, value: V) {
        let n = 1 - self.last.get().min(1);
        self.slots[n].set(Some((key, value)));
        self.last.set(n);
    }

    fn entries(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.slots.iter().filter_map(Cell::get)
    }
}

impl TrackFetch {
    fn new(track: TrackId, manifest: Option<Arc<Manifest>>) -> Self {
        let len = manifest.as_ref().map_or(0, |m| m.chunks.len());
        Self {
            track,
            manifest,
            have: Have::new(len),
            reading: BTreeSet::new(),
            not_have: IdSet::default(),
            stats: PlayStats::new(track),
            peer_lookups: 0,
            asked_peers_at: Time::NEVER,
            last_peer_lookup: Time::NEVER,
            index_memo: Memo2::new(),
            contiguous: Memo2::new(),
            uncached: Have::new(len),
        }
    }

    /// True when chunk `index` was found missing from the cache index, and its id has not
    /// been inserted since.
    fn known_uncached(&self, index: usize) -> bool {
        self.uncached.get(index)
    }

    /// Remembers that chunk `index` is not in the cache index.
    fn mark_uncached(&mut self, index: usize) {
        self.uncached.set(index);
    }

    /// `chunk` went into the cache index: the indices that hold it are no longer known
    /// missing (a track may repeat a chunk, and the other fetch may share it).
    fn cached_now(&mut self, chunk: &ChunkId) {
        let Some(m) = self.manifest.as_deref() else {
            return;
        };
        let mut i = self.uncached.first_set(0);
        while i < self.uncached.len {
            if m.chunks.get(i).is_some_and(|c| c.id == *chunk) {
                self.uncached.unset(i);
            }
            i = self.uncached.first_set(i + 1);
        }
    }

    /// `FetchScheduler::chunk_index(m, pos)` (the chunk playing at `pos`), remembered, or
    /// walked on from a remembered earlier position when it is a few chunks on. `m` is this
    /// fetch's manifest: a decoded manifest's chunks are contiguous and never empty, so their
    /// ends strictly increase and the walk finds what the binary search would.
    fn index_of(&self, m: &Manifest, pos: u64) -> usize {
        if let Some(i) = self.index_memo.get(pos) {
            return i;
        }
        let chunks = &m.chunks;
        let from = self
            .index_memo
            .entries()
            .filter(|(p, _)| *p <= pos)
            .max_by_key(|(p, _)| *p)
            .map(|(_, i)| i);
        let mut i = match from {
            Some(i) => i.min(chunks.len()),
            None => FetchScheduler::chunk_index(m, pos),
        };
        let mut steps = 0;
        while i < chunks.len() && chunks[i].end() <= pos {
            i += 1;
            steps += 1;
            if steps > 4 {
                i = FetchScheduler::chunk_index(m, pos);
                break;
            }
        }
        self.index_memo.put(pos, i);
        i
    }

    fn set_manifest(&mut self, m: Arc<Manifest>) {
        if self.manifest.is_none() {
            self.have = Have::new(m.chunks.len());
            self.uncached = Have::new(m.chunks.len());
            self.manifest = Some(m);
        }
    }
}

/// A set of a track's chunk indices, one bit each (which chunks are in; which were found
/// missing from the cache): the contiguous run from a position is found a
/// word at a time (the playback clock asks for it several times per input).
#[derive(Debug, Default)]
struct Have {
    bits: Vec<u64>,
    len: usize,
    count: usize,
}

impl Have {
    fn new(len: usize) -> Self {
        Self {
            bits: vec![0; len.div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// True when chunk `i` is in (false past the end).
    fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        if i < self.len && !self.get(i) {
            self.bits[i / 64] |= 1 << (i % 64);
            self.count += 1;
        }
    }

    fn unset(&mut self, i: usize) {
        if self.get(i) {
            self.bits[i / 64] &= !(1 << (i % 64));
            self.count -= 1;
        }
    }

    /// True when every chunk is in (also when there are none).
    fn all(&self) -> bool {
        self.count == self.len
    }

    /// The first index at or after `from` in the set (`len` if none is).
    fn first_set(&self, from: usize) -> usize {
        if self.count == 0 || from >= self.len {
            return self.len;
        }
        self.first_where(from, 0)
    }

    /// The first index at or after `from` whose chunk is missing (`len` if none is).
    fn first_missing(&self, from: usize) -> usize {
        if from >= self.len {
            return from;
        }
        self.first_where(from, u64::MAX)
    }

    /// The first index at or after `from` (< `len`) whose bit, xor `flip`, is one.
    fn first_where(&self, from: usize, flip: u64) -> usize {
        let mut w = from / 64;
        let mut ones = (self.bits[w] ^ flip) & (u64::MAX << (from % 64));
        loop {
            if ones != 0 {
                return (w * 64 + ones.trailing_zeros() as usize).min(self.len);
            }
            w += 1;
            if w >= self.bits.len() {
                return self.len;
            }
            ones = self.bits[w] ^ flip;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlayState {
    /// Waiting for the chunk at the position (after play or seek).
    Waiting,
    /// Playing since `anchor`, when the position was `pos`.
    Playing { anchor: Time },
    /// Underrun since `since`.
    Stalled { since: Time },
}

#[derive(Debug)]
struct Playback {
    requested: Time,
    /// Stream-timeline sample (pre-skip included) at the anchor, stall or wait point;
    /// `None` until the manifest resolves `start_ms`.
    pos: Option<u64>,
    start_ms: u64,
    state: PlayState,
    started_once: bool,
}

/// Session-wide totals (all plays, prefetches included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes obtained by source.
    pub bytes_by_source: BytesBySource,
    /// Bytes received twice (hedging, re-requests).
    pub duplicate_bytes: u64,
    /// Chunks or manifests that failed verification.
    pub verification_failures: u64,
    /// Requests abandoned after `request_timeout_ms`.
    pub timeouts: u64,
}

/// Converts samples (48 kHz) to a duration, rounding up so a deadline is never early.
fn samples_dur(samples: u64) -> Duration {
    let rate = u64::from(SAMPLE_RATE);
    Duration::from_micros((samples.saturating_mul(1_000_000)).div_ceil(rate))
}

fn dur_samples(d: Duration) -> u64 {
    u64::try_from(d.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000).unwrap_or(u64::MAX)
}

fn ms_samples(ms: u64) -> u64 {
    ms.saturating_mul(u64::from(SAMPLE_RATE)) / 1000
}

/// The peer's fetch scheduler. See the module documentation.
///
/// Driver contract: feed `ChunkMsg::Response`s from nodes, `Disconnected` for lost nodes,
/// `Timeout` at the time `poll_output` asks for, and commands. Outputs: `Send` a
/// `ChunkMsg::Request` to a node (for the origin's `NodeId`, map `GetChunk`/`GetManifest` to
/// HTTP `/chunks/{id}` and answer with `Chunk`/`Manifest`/`NotHave`; a `Cancel` aborts the HTTP
/// request and needs no answer); `ReadCache` → read the file and answer `CacheData`;
/// `ChunkReady` → give it to the decoder and, if `store`, write it to the cache; `Evict` →
/// delete it. The scheduler never needs the driver to decide anything.
#[derive(Debug)]
pub struct FetchScheduler {
    /// Shared by many cores of one process when they run the same configuration (see
    /// [`FetchScheduler::share_config`]); its cache limits are the cache index's business.
    config: Arc<SchedulerConfig>,
    origin: Option<NodeId>,
    /// The origin's slot in `nodes`.
    origin_slot: Option<u32>,
    nodes: NodeTable<NodeState>,
    /// By track, its holders nearest first: their slots in `nodes` (a listed node stays in
    /// the table), so ranking them reads their states without hashing their ids.
    holders: IdMap<TrackId, Vec<u32>>,
    banned: IdSet<NodeId>,
    banned_order: VecDeque<NodeId>,
    cache: CacheIndex,
    manifests: IdMap<TrackId, Arc<Manifest>>,
    manifest_order: VecDeque<TrackId>,
    fetches: [Option<TrackFetch>; 2],
    play: Option<Playback>,
    queue: VecDeque<TrackId>,
    /// Requests in flight, sorted by key (at most `max_in_flight_total`, so a sorted vector:
    /// a B-tree kept a 1.4 KiB node per listener in a simulated run, even for one request).
    requests: LiteMap<ReqKey, Req>,
    next_request: u64,
    /// The last window computed, kept to spare an allocation per call and, when asked for
    /// the same again (the cancel pass and the fetch pass of one input), the computation.
    window_buf: Window,
    /// Per slot, during one pass of [`FetchScheduler::pump`] over the windows: no holder of the
    /// slot's track can take a request (none usable, or none at all). Nothing in that pass
    /// makes a node usable again (requests only get added), so the other chunks of the window
    /// need not rank the holders again only to find the same.
    no_usable_holder: [bool; 2],
    /// Likewise for the origin, whichever the slot: at its cap or backing off. A cell because
    /// the candidates are weighed through `&self`.
    origin_unusable: Cell<bool>,
    /// Decoded manifests shared with other cores, if the driver runs several.
    pool: Option<ManifestPool>,
    timers: TimerSet<Timer>,
    out: VecDeque<Output<ChunkMsg, SchedulerEvent>>,
    session: SessionStats,
    now: Time,
}

impl FetchScheduler {
    /// A scheduler with `config` and no origin (set one with [`SchedulerCommand::SetOrigin`]
    /// or [`FetchScheduler::with_origin`]).
    pub fn new(config: SchedulerConfig) -> Self {
        let cache = CacheIndex::new(config.cache.clone());
        Self {
            config: Arc::new(config),
            origin: None,
            origin_slot: None,
            nodes: NodeTable::default(),
            holders: IdMap::default(),
            banned: IdSet::default(),
            banned_order: VecDeque::new(),
            cache,
            manifests: IdMap::default(),
            manifest_order: VecDeque::new(),
            fetches: [None, None],
            play: None,
            queue: VecDeque::new(),
            requests: LiteMap::new(),
            next_request: 1,
            window_buf: Window::default(),
            no_usable_holder: [false; 2],
            origin_unusable: Cell::new(false),
            pool: None,
            timers: TimerSet::new(),
            out: VecDeque::new(),
            session: SessionStats::default(),
            now: Time::ZERO,
        }
    }

    /// Shares decoded manifests through `pool` (see [`ManifestPool`]).
    pub fn set_manifest_pool(&mut self, pool: ManifestPool) {
        self.pool = Some(pool);
    }

    /// Keeps the cache index's chunk ids in `names`, shared with other cores (see
    /// [`ChunkNames`]); no decision changes.
    pub fn set_chunk_names(&mut self, names: ChunkNames) {
        self.cache.set_names(names);
    }

    /// Keeps the ids of its known nodes in `names`, shared with other cores (see
    /// [`NodeNames`]); no decision changes.
    pub fn set_node_names(&mut self, names: NodeNames) {
        self.nodes.set_names(names);
        // Every node keeps its slot, unless the shared names were full.
        let nodes = &self.nodes;
        for list in self.holders.values_mut() {
            list.retain(|&slot| nodes.at(slot).is_some());
        }
        self.origin_slot = self.origin.and_then(|o| self.nodes.slot_of(&o));
    }

    /// `track`'s manifest decoded from `bytes` (which the caller checked hash to `track`):
    /// through the pool when there is one, so every core shares one copy.
    pub(crate) fn decode_manifest(
        &self,
        track: TrackId,
        bytes: &[u8],
    ) -> Result<Arc<Manifest>, ManifestError> {
        match &self.pool {
            Some(pool) => pool.decode(track, bytes),
            None => Manifest::decode(bytes).map(Arc::new),
        }
    }

    /// Builder: designates `origin`.
    pub fn with_origin(mut self, origin: NodeId) -> Self {
        self.set_origin(Some(origin));
        self
    }

    /// The configuration.
    pub fn config(&self) -> SchedulerConfig {
        SchedulerConfig {
            cache: self.cache.config().clone(),
            ..(*self.config).clone()
        }
    }

    /// Uses `shared` in place of this scheduler's own copy of the same configuration; the
    /// cache limits may differ (the cache index keeps its own). False, and nothing changed,
    /// when anything else differs. A process running many cores (the simulator) keeps one
    /// copy for all of them: a listener's copy is five cache lines read on every input,
    /// cold when there are 100,000 listeners. No decision changes.
    pub fn share_config(&mut self, shared: &Arc<SchedulerConfig>) -> bool {
        let same = SchedulerConfig {
            cache: self.config.cache.clone(),
            ..(**shared).clone()
        } == *self.config;
        if same {
            self.config = Arc::clone(shared);
        }
        same
    }

    /// The cache index (what the disk cache holds, LRU order).
    pub fn cache(&self) -> &CacheIndex {
        &self.cache
    }

    /// Session totals.
    pub fn session_stats(&self) -> &SessionStats {
        &self.session
    }

    /// Statistics of the play in progress, if any.
    pub fn current_stats(&self) -> Option<&PlayStats> {
        self.play.as_ref()?;
        self.fetches[Slot::Current as usize]
            .as_ref()
            .map(|f| &f.stats)
    }

    /// The playing track, if any.
    pub fn current_track(&self) -> Option<TrackId> {
        self.play.as_ref()?;
        self.fetches[Slot::Current as usize]
            .as_ref()
            .map(|f| f.track)
    }

    /// Requests in flight to `node`.
    pub fn in_flight(&self, node: &NodeId) -> usize {
        self.requests.keys().filter(|(n, _)| n == node).count()
    }

    /// Requests in flight in total.
    pub fn in_flight_total(&self) -> usize {
        self.requests.len()
    }

    /// True when `node` is banned.
    pub fn is_banned(&self, node: &NodeId) -> bool {
        self.banned.contains(node)
    }

    /// Playback position in ms at `now`, if playing or waiting with a known position.
    pub fn position_ms(&self, now: Time) -> Option<u64> {
        let m = self.current_manifest()?;
        let pos = self.pos_now(now)?;
        Some(pos.saturating_sub(u64::from(m.pre_skip)) * 1000 / u64::from(SAMPLE_RATE))
    }

    /// Audio buffered contiguously ahead of the position, in ms.
    pub fn buffer_ahead_ms(&self, now: Time) -> Option<u64> {
        let pos = self.pos_now(now)?;
        let end = self.contiguous_end(pos)?;
        Some(end.saturating_sub(pos) * 1000 / u64::from(SAMPLE_RATE))
    }

    /// True when our own playback needs bandwidth badly: playing or waiting with less than
    /// `urgent_buffer_ms` buffered. The [`PeerCore`](super::PeerCore) throttles serving then.
    pub fn playback_urgent(&self, now: Time) -> bool {
        match self.play.as_ref() {
            None => false,
            Some(_) => self
                .buffer_ahead_ms(now)
                .is_none_or(|b| b < self.config.urgent_buffer_ms && !self.current_complete()),
        }
    }

    fn current_complete(&self) -> bool {
        self.fetches[Slot::Current as usize]
            .as_ref()
            .is_some_and(|f| f.manifest.is_some() && f.have.all())
    }

    fn current_manifest(&self) -> Option<&Manifest> {
        self.fetches[Slot::Current as usize]
            .as_ref()?
            .manifest
            .as_deref()
    }

    fn track_end(m: &Manifest) -> u64 {
        let end = m.total_samples + u64::from(m.pre_skip);
        m.chunks.last().map_or(end, |c| end.min(c.end()))
    }

    fn chunk_index(m: &Manifest, pos: u64) -> usize {
        m.chunks.partition_point(|c| c.end() <= pos)
    }

    /// End of the data available contiguously from `pos`.
    fn contiguous_end(&self, pos: u64) -> Option<u64> {
        let f = self.fetches[Slot::Current as usize].as_ref()?;
        let m = f.manifest.as_ref()?;
        let key = (pos, f.have.count);
        if let Some(end) = f.contiguous.get(key) {
            return Some(end);
        }
        let first = f.index_of(m, pos);
        let i = f.have.first_missing(first).min(m.chunks.len());
        let end = if i <= first {
            pos
        } else {
            m.chunks[i - 1].end().min(Self::track_end(m)).max(pos)
        };
        f.contiguous.put(key, end);
        Some(end)
    }

    /// True when `start_buffer_ms` of audio (or the rest of the track) is there from `pos`.
    fn start_buffered(&self, pos: u64, track_end: u64) -> bool {
        if self.config.start_buffer_ms == 0 {
            return true;
        }
        // Never more than the window fetches ahead, or the play would wait for ever.
        let ms = self.config.start_buffer_ms.min(self.config.buffer_ahead_ms);
        let want = pos.saturating_add(ms_samples(ms)).min(track_end);
        self.contiguous_end(pos).is_some_and(|e| e >= want)
    }

    fn pos_now(&self, now: Time) -> Option<u64> {
        let p = self.play.as_ref()?;
        let pos = p.pos?;
        match p.state {
            PlayState::Playing { anchor } => {
                let end = self.contiguous_end(pos)?;
                Some((pos + dur_samples(now - anchor)).min(end))
            }
            PlayState::Waiting | PlayState::Stalled { .. } => Some(pos),
        }
    }

    fn set_origin(&mut self, origin: Option<NodeId>) {
        self.origin = origin;
        self.origin_slot = None;
        if let Some(o) = origin {
            let state = NodeState {
                rate: self.config.initial_origin_rate as f64,
                rtt: SchedulerConfig::ms(self.config.initial_rtt_ms).into(),
                in_flight: 0,
                outstanding: 0,
                last_completion: Time::ZERO,
                busy_until: Time::ZERO,
                superpeer: false,
                heard: false,
            };
            self.origin_slot = self.nodes.slot_or_insert(o, state);
        }
    }

    fn emit(&mut self, e: SchedulerEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn send(&mut self, to: NodeId, req: ChunkRequest) {
        self.out.push_back(Output::Send {
            to,
            msg: ChunkMsg::Request(req),
        });
    }

    fn slot_of(&self, track: &TrackId) -> Option<Slot> {
        [Slot::Current, Slot::Next].into_iter().find(|s| {
            self.fetches[*s as usize]
                .as_ref()
                .is_some_and(|f| f.track == *track)
        })
    }

    // ---------------------------------------------------------------- commands

    fn command(&mut self, now: Time, cmd: SchedulerCommand) {
        match cmd {
            SchedulerCommand::Play { track, position_ms } => {
                self.start_play(now, track, position_ms)
            }
            SchedulerCommand::Seek { position_ms } => {
                if let Some(p) = self.play.as_mut() {
                    p.start_ms = position_ms;
                    p.pos = None;
                    p.state = PlayState::Waiting;
                    self.resolve_position();
                }
            }
            SchedulerCommand::Stop => {
                self.finish_play(false);
                self.fetches[Slot::Next as usize] = None;
            }
            SchedulerCommand::Skip => {
                self.finish_play(false);
                if let Some(next) = self.queue.pop_front() {
                    self.start_play(now, next, 0);
                }
            }
            SchedulerCommand::Enqueue(track) => {
                if self.queue.len() >= self.config.max_queue {
                    self.emit(SchedulerEvent::QueueFull(track));
                } else {
                    self.queue.push_back(track);
                }
            }
            SchedulerCommand::ClearQueue => {
                self.queue.clear();
                self.fetches[Slot::Next as usize] = None;
            }
            SchedulerCommand::Peers { track, peers } => self.set_peers(track, peers),
            SchedulerCommand::SetOrigin(o) => self.set_origin(o),
            SchedulerCommand::Manifest { track, bytes } => {
                if TrackId::of(&bytes) == track {
                    if let Ok(m) = self.decode_manifest(track, &bytes) {
                        self.remember_manifest(track, m);
                    }
                } else {
                    self.session.verification_failures += 1;
                }
            }
            SchedulerCommand::CacheHas { chunk, len } => self.cache_insert(chunk, len),
            SchedulerCommand::CacheRemoved(chunk) => {
                self.cache.remove(&chunk);
            }
            SchedulerCommand::CacheData {
                chunk,
                bytes,
                verified,
            } => self.on_cache_data(chunk, bytes, verified),
        }
    }

    fn start_play(&mut self, now: Time, track: TrackId, position_ms: u64) {
        self.finish_play(false);
        let next = self.fetches[Slot::Next as usize].take();
        let fetch = match next {
            Some(f) if f.track == track => {
                if self.queue.front() == Some(&track) {
                    self.queue.pop_front();
                }
                f
            }
            other => {
                // The prefetched track is not the one played: keep it only if still next.
                self.fetches[Slot::Next as usize] = other;
                TrackFetch::new(track, self.manifests.get(&track).cloned())
            }
        };
        self.fetches[Slot::Current as usize] = Some(fetch);
        if self.holders.get(&track).is_none_or(|l| l.is_empty()) {
            // Ask for holders at once: the origin alone is the expensive path.
            self.maybe_need_peers(Slot::Current);
        }
        self.play = Some(Playback {
            requested: now,
            pos: None,
            start_ms: position_ms,
            state: PlayState::Waiting,
            started_once: false,
        });
        self.resolve_position();
    }

    /// Turns the requested start position (ms) into a stream position once the manifest is in.
    fn resolve_position(&mut self) {
        let Some(m) = self.current_manifest() else {
            return;
        };
        let end = Self::track_end(m);
        let pre = u64::from(m.pre_skip);
        if let Some(p) = self.play.as_mut() {
            if p.pos.is_none() {
                let pos = pre + ms_samples(p.start_ms);
                p.pos = Some(pos.min(end.saturating_sub(1)).max(pre.min(end)));
            }
        }
    }

    /// Ends the current play, reporting its statistics.
    fn finish_play(&mut self, completed: bool) {
        if self.play.take().is_none() {
            self.fetches[Slot::Current as usize] = None;
            return;
        }
        if let Some(mut f) = self.fetches[Slot::Current as usize].take() {
            f.stats.completed = completed;
            self.emit(SchedulerEvent::TrackFinished(f.stats));
        }
    }

    fn set_peers(&mut self, track: TrackId, peers: Vec<PeerInfo>) {
        let mut list: Vec<u32> =
            Vec::with_capacity(peers.len().min(self.config.max_peers_per_track));
        for p in peers {
            if list.len() >= self.config.max_peers_per_track {
                break;
            }
            if self.banned.contains(&p.node) || Some(p.node) == self.origin {
                continue;
            }
            // A node the table lacks is in no list.
            match self.nodes.slot_of(&p.node) {
                Some(slot) if list.contains(&slot) => continue,
                Some(_) => {}
                None if !self.make_room_for_node(&list) => continue,
                None => {}
            }
            let rtt = SchedulerConfig::ms(p.rtt_ms.map_or(self.config.initial_rtt_ms, u64::from));
            let initial = self.config.initial_peer_rate as f64;
            let Some(slot) = self.nodes.slot_or_insert(
                p.node,
                NodeState {
                    rate: initial,
                    rtt: rtt.into(),
                    in_flight: 0,
                    outstanding: 0,
                    last_completion: Time::ZERO,
                    busy_until: Time::ZERO,
                    superpeer: p.superpeer,
                    heard: false,
                },
            ) else {
                continue;
            };
            if let Some(state) = self.nodes.at_mut(slot) {
                state.superpeer = p.superpeer;
            }
            list.push(slot);
        }
        if !self.holders.contains_key(&track)
            && self.holders.len() >= self.config.max_tracks_with_peers
        {
            let keep: Vec<TrackId> = self.fetches.iter().flatten().map(|f| f.track).collect();
            // The smallest id not being fetched (the order the table had as a B-tree).
            let victim = self.holders.keys().filter(|t| !keep.contains(t)).min();
            if let Some(victim) = victim.copied() {
                self.holders.remove(&victim);
            } else {
                return;
            }
        }
        // Kept for as long as the track is, one list per track of `max_tracks_with_peers`.
        list.shrink_to_fit();
        self.holders.insert(track, list);
    }

    /// Frees a node-statistics slot if the table is full (forgets an idle node that no track
    /// lists, `adding` included: the list being built); false when none can go.
    fn make_room_for_node(&mut self, adding: &[u32]) -> bool {
        if self.nodes.len() < self.config.max_known_nodes {
            return true;
        }
        let listed: IdSet<NodeId> = self
            .holders
            .values()
            .map(Vec::as_slice)
            .chain([adding])
            .flatten()
            .filter_map(|&slot| self.nodes.id_at(slot))
            .collect();
        // The smallest id that can go (the order the table had as a B-tree).
        let victim = self
            .nodes
            .iter()
            .filter(|(n, s)| s.in_flight == 0 && Some(*n) != self.origin && !listed.contains(n))
            .map(|(n, _)| n)
            .min();
        match victim {
            Some(v) => {
                self.nodes.remove(&v);
                true
            }
            None => false,
        }
    }

    fn remember_manifest(&mut self, track: TrackId, m: Arc<Manifest>) {
        for f in self.fetches.iter_mut().flatten() {
            if f.track == track {
                f.set_manifest(Arc::clone(&m));
            }
        }
        if !self.manifests.contains_key(&track) {
            if self.manifests.len() >= self.config.max_manifests {
                if let Some(old) = self.manifest_order.pop_front() {
                    self.manifests.remove(&old);
                }
            }
            self.manifest_order.push_back(track);
            self.manifests.insert(track, m);
        }
        self.resolve_position();
    }

    fn on_cache_data(&mut self, chunk: ChunkId, bytes: Option<Vec<u8>>, verified: bool) {
        let good = bytes.filter(|b| verified || verify(b, &chunk).is_ok());
        if good.is_none() {
            // Missing or corrupt on disk: never play it, never serve it; fetch it elsewhere.
            if self.cache.remove(&chunk) {
                self.emit(SchedulerEvent::Evict(chunk));
            }
        } else {
            self.cache.touch(&chunk);
        }
        for slot in [Slot::Current, Slot::Next] {
            let Some(f) = self.fetches[slot as usize].as_mut() else {
                continue;
            };
            let Some(m) = f.manifest.as_ref() else {
                continue;
            };
            let indices: Vec<usize> = f
                .reading
                .iter()
                .copied()
                .filter(|i| m.chunks[*i].id == chunk)
                .collect();
            for i in indices {
                f.reading.remove(&i);
                if let Some(b) = &good {
                    if !f.have.get(i) {
                        f.have.set(i);
                        let len = b.len() as u64;
                        f.stats.bytes_by_source.add(SourceKind::Cache, len);
                        self.session.bytes_by_source.add(SourceKind::Cache, len);
                        let track = f.track;
                        self.out
                            .push_back(Output::Event(SchedulerEvent::ChunkReady {
                                track,
                                index: i,
                                chunk,
                                bytes: b.clone(),
                                source: Source::Cache,
                                store: false,
                            }));
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- responses

    fn take_request(&mut self, key: ReqKey) -> Option<Req> {
        let req = self.requests.remove(&key)?;
        if self.requests.is_empty() {
            // Freed between bursts: most of a simulated listener's life has nothing in flight.
            self.requests = LiteMap::new();
        }
        self.timers.cancel(&Timer::Late(key));
        self.timers.cancel(&Timer::Expire(key));
        debug_assert_eq!(self.nodes.id_at(req.node), Some(key.0));
        if let Some(n) = self.nodes.at_mut(req.node) {
            n.in_flight = n.in_flight.saturating_sub(1);
            n.outstanding = n.outstanding.saturating_sub(req.len);
        }
        Some(req)
    }

    /// Leaves a peer that went away with our requests (or never answered them) alone for
    /// `lost_peer_backoff_ms`. The origin is never left alone: it is the fallback.
    fn back_off_lost(&mut self, now: Time, node: NodeId) {
        if Some(node) == self.origin {
            return;
        }
        let until = now + SchedulerConfig::ms(self.config.lost_peer_backoff_ms);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.last_completion = now;
            n.busy_until = n.busy_until.max(until);
        }
        self.timers.set(Timer::Retry(node), until);
    }

    fn cancel_request(&mut self, key: ReqKey) {
        if self.take_request(key).is_some() {
            self.send(key.0, ChunkRequest::Cancel { request: key.1 });
        }
    }

    fn source_of(&self, node: NodeId) -> Source {
        if Some(node) == self.origin {
            Source::Origin(node)
        } else if self.nodes.get(&node).is_some_and(|n| n.superpeer) {
            Source::SuperPeer(node)
        } else {
            Source::Peer(node)
        }
    }

    fn on_response(&mut self, now: Time, from: NodeId, resp: ChunkResponse) {
        let request = match &resp {
            ChunkResponse::Chunk { request, .. }
            | ChunkResponse::Manifest { request, .. }
            | ChunkResponse::NotHave { request }
            | ChunkResponse::Busy { request, .. } => Some(*request),
            // The scheduler never asks QueryHave; a Cancelled ack needs nothing.
            ChunkResponse::Have { .. } | ChunkResponse::Cancelled { .. } => None,
        };
        let req = request.and_then(|r| self.take_request((from, r)));
        // It answered: reachable. The request names its slot; only an answer to none (late,
        // after a cancel) needs the id looked up.
        let slot = match &req {
            Some(r) => Some(r.node),
            None => self.nodes.slot_of(&from),
        };
        if let Some(n) = slot.and_then(|s| self.nodes.at_mut(s)) {
            n.heard = true;
        }
        let Some(req) = req else {
            return;
        };
        match resp {
            ChunkResponse::Chunk { bytes, .. } => {
                self.measure(now, &req, bytes.len() as u64);
                match req.what {
                    What::Chunk(index) => self.on_chunk(from, &req, index, bytes),
                    What::Manifest => {}
                }
            }
            ChunkResponse::Manifest { bytes, .. } => {
                self.measure(now, &req, bytes.len() as u64);
                if req.what == What::Manifest {
                    self.on_manifest(from, req.track, bytes);
                }
            }
            ChunkResponse::NotHave { .. } => {
                let max = self.config.max_not_have;
                if let Some(slot) = self.slot_of(&req.track) {
                    if let Some(f) = self.fetches[slot as usize].as_mut() {
                        let index = match req.what {
                            What::Chunk(i) => i,
                            What::Manifest => usize::MAX,
                        };
                        if f.not_have.len() < max {
                            f.not_have.insert((index, from));
                        }
                    }
                }
            }
            ChunkResponse::Busy { retry_after_ms, .. } => {
                let wait = u64::from(retry_after_ms).min(self.config.max_busy_backoff_ms);
                let until = now + SchedulerConfig::ms(wait);
                if let Some(n) = self.nodes.at_mut(req.node) {
                    n.busy_until = until;
                    n.last_completion = now;
                }
                self.timers.set(Timer::Retry(from), until);
            }
            ChunkResponse::Have { .. } | ChunkResponse::Cancelled { .. } => {}
        }
    }

    /// Updates the asked node's rate estimate with `req`'s transfer of `len` bytes.
    fn measure(&mut self, now: Time, req: &Req, len: u64) {
        let w = self.config.rate_ewma_weight;
        let Some(n) = self.nodes.at_mut(req.node) else {
            return;
        };
        // If the node was idle when asked, the transfer began about one RTT after sending;
        // otherwise it began when its previous answer finished (it was serving us back to back).
        let start = if req.sent >= n.last_completion {
            let elapsed = now - req.sent;
            if elapsed < n.rtt.get() {
                n.rtt = elapsed.into();
            }
            req.sent + n.rtt.get()
        } else {
            n.last_completion
        };
        let secs = (now - start).as_secs_f64().max(0.001);
        let sample = len as f64 / secs;
        n.rate = (1.0 - w) * n.rate + w * sample;
        n.last_completion = now;
    }

    fn on_chunk(&mut self, from: NodeId, req: &Req, index: usize, bytes: Vec<u8>) {
        let Some(slot) = self.slot_of(&req.track) else {
            return;
        };
        let source = self.source_of(from);
        let Some(f) = self.fetches[slot as usize].as_mut() else {
            return;
        };
        let Some(info) = f
            .manifest
            .as_ref()
            .and_then(|m| m.chunks.get(index))
            .copied()
        else {
            return;
        };
        if verify(&bytes, &info.id).is_err() {
            self.session.verification_failures += 1;
            tracing::warn!(?from, chunk = ?info.id, "chunk failed verification");
            if Some(from) != self.origin {
                self.ban(from, BanReason::BadChunk { chunk: info.id });
            }
            return;
        }
        let len = bytes.len() as u64;
        if f.have.get(index) {
            f.stats.duplicate_bytes += len;
            self.session.duplicate_bytes += len;
            return;
        }
        f.have.set(index);
        f.stats.bytes_by_source.add(source.kind(), len);
        self.session.bytes_by_source.add(source.kind(), len);
        let track = f.track;
        // The first answer wins: everyone else asked for this chunk is told to stop.
        let others: Vec<ReqKey> = self
            .requests
            .iter()
            .filter(|(_, r)| r.track == track && r.what == What::Chunk(index))
            .map(|(k, _)| *k)
            .collect();
        for k in others {
            self.cancel_request(k);
        }
        self.emit(SchedulerEvent::ChunkReady {
            track,
            index,
            chunk: info.id,
            bytes,
            source,
            store: true,
        });
        self.cache_insert(info.id, info.len);
    }

    /// Adds `chunk` to the cache index (every insert comes here, so that the fetches'
    /// [`TrackFetch::uncached`] marks stay true) and tells the driver what it evicted.
    fn cache_insert(&mut self, chunk: ChunkId, len: u32) {
        for f in self.fetches.iter_mut().flatten() {
            f.cached_now(&chunk);
        }
        for e in self.cache.insert(chunk, len) {
            self.emit(SchedulerEvent::Evict(e));
        }
    }

    fn on_manifest(&mut self, from: NodeId, track: TrackId, bytes: Vec<u8>) {
        if TrackId::of(&bytes) != track {
            self.session.verification_failures += 1;
            if Some(from) != self.origin {
                self.ban(from, BanReason::BadManifest { track });
            }
            return;
        }
        let others: Vec<ReqKey> = self
            .requests
            .iter()
            .filter(|(_, r)| r.track == track && r.what == What::Manifest)
            .map(|(k, _)| *k)
            .collect();
        for k in others {
            self.cancel_request(k);
        }
        match self.decode_manifest(track, &bytes) {
            Ok(m) => {
                self.remember_manifest(track, m);
                self.emit(SchedulerEvent::ManifestReady { track, bytes });
            }
            Err(e) => {
                tracing::warn!(?track, error = %e, "track id names an invalid manifest");
                self.emit(SchedulerEvent::TrackInvalid(track));
                if self.current_track() == Some(track) {
                    self.finish_play(false);
                }
                if self.slot_of(&track) == Some(Slot::Next) {
                    self.fetches[Slot::Next as usize] = None;
                }
            }
        }
    }

    fn ban(&mut self, peer: NodeId, reason: BanReason) {
        if self.banned.insert(peer) {
            self.banned_order.push_back(peer);
            if self.banned_order.len() > self.config.max_banned {
                if let Some(old) = self.banned_order.pop_front() {
                    self.banned.remove(&old);
                }
            }
        }
        let keys: Vec<ReqKey> = self
            .requests
            .keys()
            .filter(|(n, _)| *n == peer)
            .copied()
            .collect();
        for k in keys {
            self.cancel_request(k);
        }
        if let Some(slot) = self.nodes.slot_of(&peer) {
            self.unlist(slot);
            if self.origin_slot == Some(slot) {
                self.origin_slot = None;
            }
        }
        self.nodes.remove(&peer);
        self.emit(SchedulerEvent::PeerBanned { peer, reason });
    }

    /// Drops the node in `slot` from every track's holders.
    fn unlist(&mut self, slot: u32) {
        for list in self.holders.values_mut() {
            list.retain(|&s| s != slot);
        }
    }

    fn on_timer(&mut self, now: Time, t: Timer) {
        match t {
            Timer::Late(key) => {
                if let Some(r) = self.requests.get_mut(&key) {
                    let first = !r.late;
                    r.late = true;
                    let penalty = if first {
                        self.config.late_rate_penalty
                    } else {
                        1.0
                    };
                    let (sent, len) = (r.sent, r.len + r.ahead);
                    if let Some(n) = self.nodes.at_mut(r.node) {
                        // It has not delivered this and what was ahead of it in the time since
                        // sending: its rate is at most that (and lower by the penalty the
                        // first time).
                        let secs = (now - sent)
                            .saturating_sub(n.rtt.get())
                            .as_secs_f64()
                            .max(0.001);
                        let bound = len as f64 / secs;
                        n.rate = (n.rate * penalty).min(bound).max(1.0);
                    }
                    // Look again after as long again: the estimate keeps tightening while it
                    // stays unanswered, so an urgent chunk is re-requested before it is due.
                    let again = (now - sent).max(Duration::from_millis(100));
                    self.timers.set(Timer::Late(key), now + again);
                }
            }
            Timer::Expire(key) => {
                if self.requests.contains_key(&key) {
                    self.session.timeouts += 1;
                    self.cancel_request(key);
                    // Probably dead: leave it alone for a while (the driver reports real
                    // disconnections; this catches silent ones).
                    self.back_off_lost(now, key.0);
                }
            }
            Timer::Retry(_) => {}
        }
    }

    // ---------------------------------------------------------------- playback clock

    fn advance(&mut self, now: Time) {
        // Bounded: each pass changes state or stops; a track end can start one more track.
        for _ in 0..8 {
            let Some(m) = self.current_manifest() else {
                return;
            };
            let pre = u64::from(m.pre_skip);
            let end = Self::track_end(m);
            let Some(p) = self.play.as_ref() else {
                return;
            };
            let Some(pos) = p.pos else {
                return;
            };
            let have_here = self.fetches[Slot::Current as usize]
                .as_ref()
                .is_some_and(|f| f.have.get(f.index_of(m, pos)));
            let Some(track) = self.current_track() else {
                return;
            };
            let pos_ms = pos.saturating_sub(pre) * 1000 / u64::from(SAMPLE_RATE);
            match p.state {
                PlayState::Waiting => {
                    if !have_here || !self.start_buffered(pos, end) {
                        return;
                    }
                    let ttfa = (!p.started_once).then(|| (now - p.requested).as_millis() as u64);
                    if let Some(p) = self.play.as_mut() {
                        p.state = PlayState::Playing { anchor: now };
                        p.started_once = true;
                    }
                    if let (Some(ms), Some(f)) = (ttfa, self.fetches[0].as_mut()) {
                        f.stats.time_to_first_audio_ms = Some(ms);
                    }
                    self.emit(SchedulerEvent::PlayStarted {
                        track,
                        position_ms: pos_ms,
                        time_to_first_audio_ms: ttfa,
                    });
                }
                PlayState::Playing { anchor } => {
                    let Some(data_end) = self.contiguous_end(pos) else {
                        return;
                    };
                    let at = anchor + samples_dur(data_end - pos);
                    if at > now {
                        return;
                    }
                    if data_end >= end {
                        self.finish_play(true);
                        if let Some(next) = self.queue.pop_front() {
                            // Auto-advance: the gap since this track ended counts as the next
                            // one's time to first audio.
                            self.start_play(at, next, 0);
                        }
                        continue;
                    }
                    if let Some(p) = self.play.as_mut() {
                        p.pos = Some(data_end);
                        p.state = PlayState::Stalled { since: at };
                    }
                    if let Some(f) = self.fetches[0].as_mut() {
                        f.stats.stutters += 1;
                    }
                    let ms = data_end.saturating_sub(pre) * 1000 / u64::from(SAMPLE_RATE);
                    self.emit(SchedulerEvent::Stutter {
                        track,
                        position_ms: ms,
                    });
                }
                PlayState::Stalled { since } => {
                    if !have_here {
                        return;
                    }
                    let stalled = (now - since).as_millis() as u64;
                    if let Some(p) = self.play.as_mut() {
                        p.state = PlayState::Playing { anchor: now };
                    }
                    if let Some(f) = self.fetches[0].as_mut() {
                        f.stats.stalled_ms += stalled;
                    }
                    self.emit(SchedulerEvent::Resumed {
                        track,
                        stalled_ms: stalled,
                    });
                }
            }
        }
    }

    /// The next moment the playback clock changes something on its own: an underrun or the
    /// track's end, the buffer crossing the urgent threshold, the prefetch point.
    fn playback_wake(&self, now: Time) -> Time {
        let (Some(m), Some(p)) = (self.current_manifest(), self.play.as_ref()) else {
            return Time::NEVER;
        };
        let recheck = now + SchedulerConfig::ms(self.config.urgent_recheck_ms.max(1));
        let complete = self.current_complete();
        let (Some(pos), PlayState::Playing { anchor }) = (p.pos, p.state) else {
            // Waiting or stalled: keep re-checking who to ask until the data is in.
            return if complete || p.pos.is_none() {
                Time::NEVER
            } else {
                recheck
            };
        };
        let Some(data_end) = self.contiguous_end(pos) else {
            return Time::NEVER;
        };
        let mut wake = anchor + samples_dur(data_end - pos);
        let pos_now = (pos + dur_samples(now - anchor)).min(data_end);
        // `<=`: woken exactly at the threshold (the wake below), the buffer equals it; with
        // `<` no re-check was armed then, and the next wake-up was the stall itself.
        if !complete && data_end - pos_now <= ms_samples(self.config.urgent_buffer_ms) {
            wake = wake.min(recheck);
        }
        let urgent = ms_samples(self.config.urgent_buffer_ms);
        let candidates = [
            data_end.checked_sub(urgent),
            Self::track_end(m).checked_sub(ms_samples(self.config.prefetch_before_end_ms)),
        ];
        for target in candidates.into_iter().flatten() {
            if target > pos {
                let t = anchor + samples_dur(target - pos);
                if t > now && t < wake {
                    wake = t;
                }
            }
        }
        wake
    }

    // ---------------------------------------------------------------- decisions

    /// Chunk indices wanted for `slot`, most urgent first, with the time each is needed, in
    /// `out.chunks` (left as it is when `out` already holds that window).
    fn window(&self, slot: Slot, now: Time, out: &mut Window) {
        let Some((f, m)) = self.fetches[slot as usize]
            .as_ref()
            .and_then(|f| Some((f, f.manifest.as_ref()?)))
        else {
            out.from = None;
            out.chunks.clear();
            return;
        };
        let (pos, span, base) = match slot {
            Slot::Current => {
                let Some(pos) = self.pos_now(now) else {
                    out.from = None;
                    out.chunks.clear();
                    return;
                };
                (pos, ms_samples(self.config.buffer_ahead_ms), now)
            }
            Slot::Next => (
                u64::from(m.pre_skip),
                ms_samples(self.config.prefetch_ms),
                Time::NEVER,
            ),
        };
        let from = Some((slot, f.track, m.chunks.len(), pos, base));
        if out.from == from {
            return;
        }
        out.from = from;
        let out = &mut out.chunks;
        out.clear();
        let mut i = f.index_of(m, pos);
        while i < m.chunks.len() && out.len() < self.config.max_chunks_ahead {
            let c = &m.chunks[i];
            if c.start >= pos.saturating_add(span) && !out.is_empty() {
                break;
            }
            let need = if base == Time::NEVER {
                Time::NEVER
            } else {
                base + samples_dur(c.start.saturating_sub(pos))
            };
            out.push((i, need));
            i += 1;
        }
    }

    /// The state of the node in `slot` if it can take a request now.
    fn usable(&self, slot: u32, now: Time) -> Option<&NodeState> {
        let n = self.nodes.at(slot)?;
        if !self.banned.is_empty()
            && self
                .nodes
                .id_at(slot)
                .is_some_and(|id| self.banned.contains(&id))
        {
            return None;
        }
        let cap = if Some(slot) == self.origin_slot {
            self.config.max_in_flight_origin
        } else {
            self.config.max_in_flight_per_peer
        };
        (n.busy_until <= now && (n.in_flight as usize) < cap).then_some(n)
    }

    /// The peer holding `track` expected to deliver `len` bytes first, skipping `exclude`.
    fn best_peer(
        &self,
        f: &TrackFetch,
        what_index: usize,
        len: u64,
        exclude: &[Asked],
        now: Time,
    ) -> Option<(u32, Time)> {
        let list = self.holders.get(&f.track)?;
        // The ids are read only to skip some: most of the time nothing is skipped.
        let skip = !exclude.is_empty() || !f.not_have.is_empty();
        let mut best: Option<(u32, Time)> = None;
        for &slot in list {
            if skip {
                let Some(node) = self.nodes.id_at(slot) else {
                    continue;
                };
                if asked_of(exclude, &node)
                    || (!f.not_have.is_empty() && f.not_have.contains(&(what_index, node)))
                {
                    continue;
                }
            }
            let Some(n) = self.usable(slot, now) else {
                continue;
            };
            let t = n.expected(now, len);
            // Ties go to the earlier (nearer) holder.
            if best.is_none_or(|(_, bt)| t < bt) {
                best = Some((slot, t));
            }
        }
        best
    }

    /// True when some non-banned holder has not said it lacks `index`.
    fn has_holders(&self, f: &TrackFetch, index: usize) -> bool {
        let Some(list) = self.holders.get(&f.track) else {
            return false;
        };
        if self.banned.is_empty() && f.not_have.is_empty() {
            return !list.is_empty();
        }
        list.iter()
            .filter_map(|&slot| self.nodes.id_at(slot))
            .any(|n| {
                (self.banned.is_empty() || !self.banned.contains(&n))
                    && (f.not_have.is_empty() || !f.not_have.contains(&(index, n)))
            })
    }

    fn origin_candidate(&self, exclude: &[Asked], len: u64, now: Time) -> Option<(u32, Time)> {
        let o = self.origin?;
        if asked_of(exclude, &o) {
            return None;
        }
        let slot = self.origin_slot?;
        self.usable(slot, now).map(|n| (slot, n.expected(now, len)))
    }

    /// [`FetchScheduler::origin_candidate`] during a pass of [`FetchScheduler::pump`] over
    /// the windows, where an origin found unusable stays so (see `origin_unusable`).
    fn pass_origin(&self, exclude: &[Asked], len: u64, now: Time) -> Option<(u32, Time)> {
        if self.origin_unusable.get() {
            return None;
        }
        let found = self.origin_candidate(exclude, len, now);
        // Only "cannot take a request" lasts the pass: this chunk's requests are its own.
        if found.is_none() && self.origin.is_some_and(|o| !asked_of(exclude, &o)) {
            self.origin_unusable.set(true);
        }
        found
    }

    /// Asks the node in `slot` (a candidate's: the ranking found it there).
    fn issue(&mut self, now: Time, slot: u32, track: TrackId, what: What, len: u64) {
        if self.requests.len() >= self.config.max_in_flight_total {
            return;
        }
        let Some(to) = self.nodes.id_at(slot) else {
            return;
        };
        let Some(n) = self.nodes.at_mut(slot) else {
            return;
        };
        let expected = n.expected(now, len);
        let ahead = n.outstanding;
        n.in_flight += 1;
        n.outstanding += len;
        let request = self.next_request;
        self.next_request += 1;
        let budget = (expected - now).mul_f64(self.config.late_factor.max(1.0))
            + SchedulerConfig::ms(self.config.late_slack_ms);
        let key = (to, request);
        // Request numbers are never reused: no deadline of this key to move.
        self.timers.insert_new(Timer::Late(key), now + budget);
        self.timers.insert_new(
            Timer::Expire(key),
            now + SchedulerConfig::ms(self.config.request_timeout_ms),
        );
        self.requests.insert(
            key,
            Req {
                node: slot,
                track,
                what,
                len,
                ahead,
                sent: now,
                expected,
                late: false,
            },
        );
        let req = match what {
            What::Manifest => ChunkRequest::GetManifest { request, track },
            What::Chunk(i) => {
                let chunk = self.fetches[0..2]
                    .iter()
                    .flatten()
                    .find(|f| f.track == track)
                    .and_then(|f| f.manifest.as_ref())
                    .and_then(|m| m.chunks.get(i))
                    .map(|c| c.id);
                let Some(chunk) = chunk else {
                    return;
                };
                ChunkRequest::GetChunk {
                    request,
                    track,
                    chunk,
                }
            }
        };
        self.send(to, req);
    }

    /// A request in flight as the scheduler weighs it: key, late, and when the answer is now
    /// expected (a late one re-estimated from its node's current rate).
    fn asked(&self, key: &ReqKey, r: &Req, now: Time) -> Asked {
        let expected = if r.late || now > r.expected {
            self.nodes.at(r.node).map_or(Time::NEVER, |n| {
                // Not there after `elapsed`: assume it needs at least as long again.
                let elapsed = (now - r.sent).saturating_sub(n.rtt.get()).as_secs_f64();
                let owed = (r.len + r.ahead) as f64;
                let rate = n.rate.min(owed / elapsed.max(0.001)).max(1.0);
                let secs = r.len as f64 / rate;
                now + Duration::from_secs_f64(secs.min(1e6)) + n.rtt.get()
            })
        } else {
            r.expected
        };
        (*key, r.late, expected)
    }

    /// Requests in flight for (`track`, `what`).
    fn in_flight_for(&self, track: TrackId, what: What, now: Time) -> Vec<Asked> {
        self.requests
            .iter()
            .filter(|(_, r)| r.track == track && r.what == what)
            .map(|(k, r)| self.asked(k, r, now))
            .collect()
    }

    /// Requests in flight for chunks of `track`, by chunk index, in `out` (cleared first): one
    /// pass over the requests for a whole window, where asking per chunk scanned them all for
    /// each (at 100,000 simulated listeners, a tenth of the scheduler's time).
    fn chunks_in_flight(&self, track: TrackId, now: Time, out: &mut Vec<(usize, Asked)>) {
        out.clear();
        for (k, r) in self.requests.iter() {
            if let (true, What::Chunk(i)) = (r.track == track, r.what) {
                out.push((i, self.asked(k, r, now)));
            }
        }
        // Stable: each chunk's requests stay in key order.
        out.sort_by_key(|(i, _)| *i);
    }

    fn ensure_manifest(&mut self, now: Time, slot: Slot) {
        let Some(f) = self.fetches[slot as usize].as_ref() else {
            return;
        };
        if f.manifest.is_some() {
            return;
        }
        let track = f.track;
        if let Some(m) = self.manifests.get(&track).cloned() {
            self.remember_manifest(track, m);
            return;
        }
        let asked = self.in_flight_for(track, What::Manifest, now);
        if !asked.is_empty() && !asked.iter().all(|(_, late, _)| *late) {
            return;
        }
        if asked.len() >= self.config.max_requests_per_chunk {
            return;
        }
        let exclude = &asked[..];
        // Manifests are small and block everything: ask the best peer and the origin at once.
        let len = 4096;
        let peer = self.best_peer(f, usize::MAX, len, exclude, now);
        let origin = self.origin_candidate(exclude, len, now);
        if peer.is_none() && origin.is_none() {
            self.maybe_need_peers(slot);
            return;
        }
        if let Some((p, _)) = peer {
            self.issue(now, p, track, What::Manifest, len);
        }
        if let Some((o, _)) = origin {
            self.issue(now, o, track, What::Manifest, len);
        }
    }

    fn maybe_need_peers(&mut self, slot: Slot) {
        let Some(f) = self.fetches[slot as usize].as_mut() else {
            return;
        };
        let now = self.now;
        let due = match f.peer_lookups {
            0 => true,
            n => {
                let wait = self
                    .config
                    .relookup_ms
                    .saturating_mul(1 << (n - 1).min(16))
                    .min(self.config.max_relookup_ms);
                now.saturating_since(f.last_peer_lookup) >= SchedulerConfig::ms(wait)
            }
        };
        if due {
            if f.peer_lookups == 0 {
                f.asked_peers_at = now;
            }
            f.peer_lookups = f.peer_lookups.saturating_add(1);
            f.last_peer_lookup = now;
            let t = f.track;
            self.emit(SchedulerEvent::NeedPeers(t));
        }
    }

    /// Asks for chunk `index` of `slot`'s track if it needs asking; `asked` is the requests
    /// in flight for it.
    #[allow(clippy::too_many_arguments)]
    fn fetch_chunk(
        &mut self,
        now: Time,
        slot: Slot,
        index: usize,
        need: Time,
        hedge: bool,
        starving: bool,
        asked: &[Asked],
    ) {
        let Some(f) = self.fetches[slot as usize].as_ref() else {
            return;
        };
        if f.have.get(index) || f.reading.contains(&index) {
            return;
        }
        let Some(info) = f
            .manifest
            .as_ref()
            .and_then(|m| m.chunks.get(index))
            .copied()
        else {
            return;
        };
        let track = f.track;
        if !f.known_uncached(index) {
            if self.cache.contains(&info.id) {
                if let Some(f) = self.fetches[slot as usize].as_mut() {
                    f.reading.insert(index);
                }
                self.emit(SchedulerEvent::ReadCache {
                    track,
                    index,
                    chunk: info.id,
                });
                return;
            }
            if let Some(f) = self.fetches[slot as usize].as_mut() {
                f.mark_uncached(index);
            }
        }
        let Some(f) = self.fetches[slot as usize].as_ref() else {
            return;
        };
        let len = u64::from(info.len);
        let urgent = need != Time::NEVER
            && need.saturating_since(now) <= SchedulerConfig::ms(self.config.urgent_buffer_ms);
        if starving && !urgent && asked.is_empty() {
            // Our own downlink is shared by everything in flight: while the buffer is below
            // the urgent threshold, chunks needed later would slow down the ones needed now.
            return;
        }
        if asked.len() >= self.config.max_requests_per_chunk {
            return;
        }
        let exclude = asked;
        // `set_peers` records every answer, even an empty one; an answer that takes too long
        // counts as empty. Asked only where it decides: most chunks of the window are
        // already asked, and the holder map is one more cold table per input.
        let waited = now.saturating_since(f.asked_peers_at)
            >= SchedulerConfig::ms(self.config.lookup_wait_ms);
        let lookup_answered = |s: &Self| waited || s.holders.contains_key(&track);
        if asked.is_empty() {
            let peer = if self.no_usable_holder[slot as usize] {
                None
            } else {
                self.best_peer(f, index, len, exclude, now)
            };
            // With nothing excluded, no peer means no holder is usable, whatever the chunk.
            let none_usable = peer.is_none() && f.not_have.is_empty();
            // A peer that makes it in time is asked whatever the origin's state.
            let margin = SchedulerConfig::ms(self.config.late_slack_ms);
            let origin = if hedge || peer.is_none_or(|(_, pt)| pt + margin > need) {
                self.pass_origin(exclude, len, now)
            } else {
                None
            };
            let holders = self.has_holders(f, index);
            if none_usable {
                self.no_usable_holder[slot as usize] = true;
            }
            if !holders {
                self.maybe_need_peers(slot);
            }
            if hedge {
                // Start fast: the first chunk from the best peer and the origin at once.
                if let Some((p, _)) = peer {
                    self.issue(now, p, track, What::Chunk(index), len);
                }
                if let Some((o, _)) = origin {
                    self.issue(now, o, track, What::Chunk(index), len);
                }
                return;
            }
            // A peer's estimate is a guess until measured: one that would deliver with less
            // than `late_slack_ms` to spare counts as too late.
            match (peer, origin) {
                // The best peer would be too late: the origin if the chunk is urgent, else
                // wait (it may become urgent, or a peer may free up).
                (Some((_, pt)), Some(_)) if pt + margin > need && !urgent => {}
                (Some((p, pt)), Some((o, ot))) if pt + margin > need => {
                    let to = if ot < pt { o } else { p };
                    self.issue(now, to, track, What::Chunk(index), len);
                }
                (Some((p, _)), _) => self.issue(now, p, track, What::Chunk(index), len),
                // Nobody holds it: the origin, once the lookup has answered so. Until then
                // an urgent chunk goes to the origin only when waiting any longer for the
                // answer would make it late, or the first seconds would all come from there.
                (None, Some((o, ot)))
                    if (!holders && lookup_answered(self))
                        || (urgent
                            && (lookup_answered(self)
                                || ot + SchedulerConfig::ms(self.config.late_slack_ms)
                                    >= need)) =>
                {
                    self.issue(now, o, track, What::Chunk(index), len);
                }
                _ => {}
            }
            return;
        }
        // Already asked (most chunks of the window, most of the time): add a source only if
        // the ones asked will not make it. Candidates are ranked only then: ranking every
        // holder for every chunk on every input was a sixth of the simulator's time.
        let origin_asked = self.origin.is_some_and(|o| asked_of(exclude, &o));
        let best_expected = asked
            .iter()
            .map(|(_, _, t)| *t)
            .min()
            .unwrap_or(Time::NEVER);
        // Less than `late_slack_ms` to spare counts as late here too.
        let margin = SchedulerConfig::ms(self.config.late_slack_ms);
        if urgent && !origin_asked && best_expected + margin > need {
            if let Some((o, _)) = self.pass_origin(exclude, len, now) {
                self.issue(now, o, track, What::Chunk(index), len);
                return;
            }
        }
        if asked.iter().all(|(_, late, _)| *late) {
            // Every request for it is late: try another peer that would beat them. For an
            // urgent chunk, the origin rather than a peer that has never answered us, when
            // the origin can take it: the peer's estimate is a guess, and when the late one
            // could not be reached either (NATed holders) each such guess costs a late timer
            // while the buffer runs dry. The origin's rate is known.
            let peer = if self.no_usable_holder[slot as usize] {
                None
            } else {
                self.best_peer(f, index, len, exclude, now)
            }
            .filter(|(_, pt)| *pt < best_expected);
            let unheard = |p: &u32| !self.nodes.at(*p).is_some_and(|n| n.heard);
            let instead = match peer {
                Some((p, _)) if urgent && !origin_asked && unheard(&p) => {
                    self.pass_origin(exclude, len, now)
                }
                _ => None,
            };
            match instead.or(peer) {
                Some((p, _)) => self.issue(now, p, track, What::Chunk(index), len),
                None if !self.has_holders(f, index) && lookup_answered(self) && !origin_asked => {
                    if let Some((o, _)) = self.pass_origin(exclude, len, now) {
                        self.issue(now, o, track, What::Chunk(index), len);
                    }
                }
                None => {}
            }
        }
    }

    /// Cancels requests nobody needs any more (seek, stop, skip, queue change).
    fn cancel_unwanted(&mut self, now: Time) {
        // Per slot: its track, whether its manifest is still wanted, and the chunk indices of
        // its window (consecutive: `window` walks them in order).
        let mut wanted: [Option<(TrackId, bool, std::ops::Range<usize>)>; 2] = [None, None];
        let mut w = std::mem::take(&mut self.window_buf);
        // Next first: the fetch pass that follows asks for Current's window, found here.
        for slot in [Slot::Next, Slot::Current] {
            let Some(f) = self.fetches[slot as usize].as_ref() else {
                continue;
            };
            let manifest = f.manifest.is_none();
            let mut chunks = 0..0;
            if slot != Slot::Current || self.play.is_some() {
                self.window(slot, now, &mut w);
                if let (Some((first, _)), Some((last, _))) = (w.chunks.first(), w.chunks.last()) {
                    chunks = *first..*last + 1;
                }
            }
            wanted[slot as usize] = Some((f.track, manifest, chunks));
        }
        self.window_buf = w;
        let is_wanted = |r: &Req| {
            wanted.iter().flatten().any(|(track, manifest, chunks)| {
                *track == r.track
                    && match r.what {
                        What::Manifest => *manifest,
                        What::Chunk(i) => chunks.contains(&i),
                    }
            })
        };
        let stale: Vec<ReqKey> = self
            .requests
            .iter()
            .filter(|(_, r)| !is_wanted(r))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.cancel_request(k);
        }
    }

    fn pump(&mut self, now: Time) {
        self.advance(now);
        // Prefetch the queue's next track near the end of this one.
        self.update_prefetch(now);
        self.cancel_unwanted(now);
        self.ensure_manifest(now, Slot::Current);
        self.advance(now);
        let start_index = self.play.as_ref().and_then(|p| {
            let f = self.fetches[Slot::Current as usize].as_ref()?;
            let m = f.manifest.as_deref()?;
            Some(f.index_of(m, p.pos?))
        });
        let waiting = matches!(
            self.play.as_ref().map(|p| (p.state, p.started_once)),
            Some((PlayState::Waiting, _))
        );
        let mut all_asked = true;
        let starving = self.playback_urgent(now);
        self.no_usable_holder = [false; 2];
        self.origin_unusable.set(false);
        let mut w = std::mem::take(&mut self.window_buf);
        // The requests in flight for the window's chunks, gathered once per pass: a chunk's
        // `fetch_chunk` only adds requests for that chunk, so the rest stay as gathered.
        let mut asked = ASKED_SCRATCH.take();
        let of = |asked: &[(usize, Asked)], i: usize| -> std::ops::Range<usize> {
            asked.partition_point(|(j, _)| *j < i)..asked.partition_point(|(j, _)| *j <= i)
        };
        let mut mine: Vec<Asked> = Vec::new();
        if let Some(track) = self
            .play
            .as_ref()
            .and(self.fetches[0].as_ref())
            .map(|f| f.track)
        {
            self.window(Slot::Current, now, &mut w);
            self.chunks_in_flight(track, now, &mut asked);
            for &(i, need) in &w.chunks {
                let hedge =
                    waiting && start_index.is_some_and(|s| i < s + self.config.hedge_start_chunks);
                mine.clear();
                mine.extend(asked[of(&asked, i)].iter().map(|(_, a)| *a));
                let before = self.requests.len();
                self.fetch_chunk(now, Slot::Current, i, need, hedge, starving, &mine);
                let f = self.fetches[0].as_ref();
                let covered = f.is_some_and(|f| {
                    f.have.get(i)
                        || f.reading.contains(&i)
                        || !mine.is_empty()
                        || self.requests.len() > before
                });
                all_asked &= covered;
            }
        }
        if all_asked && self.fetches[Slot::Next as usize].is_some() {
            self.ensure_manifest(now, Slot::Next);
            self.window(Slot::Next, now, &mut w);
            if let Some(track) = self.fetches[Slot::Next as usize].as_ref().map(|f| f.track) {
                self.chunks_in_flight(track, now, &mut asked);
            }
            for &(i, need) in &w.chunks {
                mine.clear();
                mine.extend(asked[of(&asked, i)].iter().map(|(_, a)| *a));
                self.fetch_chunk(now, Slot::Next, i, need, false, false, &mine);
            }
        }
        self.window_buf = w;
        asked.clear();
        ASKED_SCRATCH.set(asked);
        self.no_usable_holder = [false; 2];
        self.origin_unusable.set(false);
    }

    fn update_prefetch(&mut self, now: Time) {
        let next_track = self.queue.front().copied();
        if self.fetches[Slot::Next as usize]
            .as_ref()
            .is_some_and(|f| Some(f.track) != next_track)
        {
            self.fetches[Slot::Next as usize] = None;
        }
        let Some(next) = next_track else {
            return;
        };
        if self.fetches[Slot::Next as usize].is_some() {
            return;
        }
        let (Some(m), Some(pos)) = (self.current_manifest(), self.pos_now(now)) else {
            return;
        };
        let remaining = Self::track_end(m).saturating_sub(pos);
        if remaining <= ms_samples(self.config.prefetch_before_end_ms) {
            let f = TrackFetch::new(next, self.manifests.get(&next).cloned());
            self.fetches[Slot::Next as usize] = Some(f);
            if !self.holders.contains_key(&next) {
                self.maybe_need_peers(Slot::Next);
            }
        }
    }
}

impl Core for FetchScheduler {
    type Message = ChunkMsg;
    type Command = SchedulerCommand;
    type Event = SchedulerEvent;

    fn handle_input(&mut self, now: Time, input: Input<ChunkMsg, SchedulerCommand>) {
        let now = now.max(self.now);
        self.now = now;
        match input {
            Input::Message {
                from,
                msg: ChunkMsg::Response(r),
            } => self.on_response(now, from, r),
            // Requests are the server's business (see `PeerCore`).
            Input::Message {
                msg: ChunkMsg::Request(_),
                ..
            } => {}
            Input::Connected(_) => {}
            Input::Disconnected(node) => {
                let keys: Vec<ReqKey> = self
                    .requests
                    .keys()
                    .filter(|(n, _)| *n == node)
                    .copied()
                    .collect();
                let lost_requests = !keys.is_empty();
                for k in keys {
                    self.take_request(k);
                }
                if lost_requests {
                    self.back_off_lost(now, node);
                }
                if let Some(slot) = self
                    .nodes
                    .slot_of(&node)
                    .filter(|_| Some(node) != self.origin)
                {
                    self.unlist(slot);
                }
            }
            Input::Timeout => {
                while let Some(t) = self.timers.pop_expired(now) {
                    self.on_timer(now, t);
                }
            }
            Input::Command(c) => self.command(now, c),
        }
        self.pump(now);
    }

    fn poll_output(&mut self) -> Output<ChunkMsg, SchedulerEvent> {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        super::release_drained(&mut self.out);
        let wake = self
            .timers
            .next_deadline()
            .min(self.playback_wake(self.now));
        Output::Timeout(wake)
    }
}
