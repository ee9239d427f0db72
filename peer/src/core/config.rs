//! Every threshold the peer's core decides with: one named, documented field each, with the
//! defaults a desktop listener gets. The driver fills these from its config file and flags; the
//! simulator from its scenario.

use std::time::Duration;

use shoal_protocol::chunk::MAX_CHUNK_BYTES;

/// Everything the peer core is configured with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerConfig {
    /// The fetch scheduler (playback side).
    pub scheduler: SchedulerConfig,
    /// The chunk server (upload side).
    pub server: ServerConfig,
}

/// Thresholds of the [`FetchScheduler`](super::FetchScheduler).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Audio ahead of the playback position to keep fetched or in flight (default 30 s).
    pub buffer_ahead_ms: u64,
    /// A play (or a seek, or the next track of a queue) starts once this much audio is there
    /// from its position, or the rest of the track (default 0: as soon as the first chunk is,
    /// Shoal's ≈ 0.5 s start chunk). More trades time to first audio for fewer stutters
    /// right after the start; librespot, for one, waits for 1 s.
    pub start_buffer_ms: u64,
    /// At most this many chunks ahead of the position are wanted at once (default 16), so a
    /// low-bitrate track does not open hundreds of requests.
    pub max_chunks_ahead: usize,
    /// When a missing chunk is due within this much audio, it is urgent: if no peer is
    /// expected to deliver it in time it is asked from the origin (default 4 s). While less
    /// than this is buffered, only urgent chunks are asked for: everything in flight shares
    /// our downlink, so chunks due later would slow down the ones due now.
    pub urgent_buffer_ms: u64,
    /// While a chunk due within `urgent_buffer_ms` is missing, sources are re-assessed this
    /// often (default 250 ms), as estimates of late requests keep growing.
    pub urgent_recheck_ms: u64,
    /// Chunks at the start of a play or seek asked from the origin and the best peer at once
    /// when they are not cached (default 1: the small first chunk).
    pub hedge_start_chunks: usize,
    /// Requests in flight to one peer (default 2): enough to keep its pipe full, few enough that
    /// a slow peer holds up little.
    pub max_in_flight_per_peer: usize,
    /// Requests in flight to the origin (default 4).
    pub max_in_flight_origin: usize,
    /// Requests in flight in total (default 32); also bounds the request table.
    pub max_in_flight_total: usize,
    /// Sources asked for the same chunk at once, counting hedges and re-requests (default 3).
    pub max_requests_per_chunk: usize,
    /// A request is late once it has taken this many times its expected time (default 2.0)...
    pub late_factor: f64,
    /// ...plus this slack (default 250 ms), so jitter on tiny chunks does not count as late.
    /// An urgent chunk's source expected to deliver with less than this to spare counts as
    /// too late (estimates of unmeasured peers are guesses), so the origin is asked too.
    pub late_slack_ms: u64,
    /// While the holder lookup is unanswered, chunks wait for its answer rather than go to
    /// the origin (unless waiting would make them late), for at most this long (default
    /// 500 ms); then the lookup counts as "nobody".
    pub lookup_wait_ms: u64,
    /// While a track being fetched has no holder for a chunk it needs, the holders are asked
    /// for again after this long (default 3 s), the wait doubling after each fruitless
    /// answer up to `max_relookup_ms`: holders appear as others finish the track, and a
    /// lookup answered before the tracker heard of them must not mean "nobody, ever".
    pub relookup_ms: u64,
    /// Longest wait between two holder lookups of the same track (default 60 s).
    pub max_relookup_ms: u64,
    /// A request unanswered after this long is abandoned and cancelled, and its node left
    /// alone for `lost_peer_backoff_ms` (default 60 s). Slowness is handled earlier, by
    /// lateness (re-requests elsewhere without cancelling); this catches silent nodes.
    pub request_timeout_ms: u64,
    /// Longest a `Busy` answer keeps us from asking that peer again (default 5 s).
    pub max_busy_backoff_ms: u64,
    /// A peer lost while our requests to it were in flight (its connection closed, or it
    /// could not be dialled at all), or silent past `request_timeout_ms`, is not asked again
    /// for this long (default 60 s), even when a holder lookup lists it: it has probably
    /// gone offline or sits behind a NAT we cannot reach, and every new attempt would cost
    /// a dial timeout while the chunk waits. Never applies to the origin.
    pub lost_peer_backoff_ms: u64,
    /// Assumed upload rate of a peer before any measurement, bytes/s (default 256 kB/s).
    pub initial_peer_rate: u64,
    /// Assumed rate of the origin before any measurement, bytes/s (default 1 MB/s).
    pub initial_origin_rate: u64,
    /// Assumed round-trip time when the peer list gives none (default 100 ms).
    pub initial_rtt_ms: u64,
    /// Weight of a new rate sample in the moving average (default 0.3).
    pub rate_ewma_weight: f64,
    /// Factor applied to a peer's rate estimate when one of its requests goes late
    /// (default 0.5), so a peer that stalls ranks lower before its chunk ever arrives.
    pub late_rate_penalty: f64,
    /// Start fetching the next queued track when this much of the current one remains
    /// (default 30 s).
    pub prefetch_before_end_ms: u64,
    /// Audio at the start of the next track to prefetch (default 10 s).
    pub prefetch_ms: u64,
    /// Holders remembered per track (default 16, nearest first).
    pub max_peers_per_track: usize,
    /// Tracks whose holder lists are remembered (default 32).
    pub max_tracks_with_peers: usize,
    /// Nodes with rate/RTT statistics (default 256).
    pub max_known_nodes: usize,
    /// Banned peers remembered (default 1024; the oldest ban is forgotten first).
    pub max_banned: usize,
    /// Tracks in the play queue (default 256).
    pub max_queue: usize,
    /// Verified manifests kept in memory (default 32).
    pub max_manifests: usize,
    /// (chunk, peer) "does not have" answers remembered per track (default 1024).
    pub max_not_have: usize,
    /// The local disk cache's policy.
    pub cache: CacheConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            buffer_ahead_ms: 30_000,
            start_buffer_ms: 0,
            max_chunks_ahead: 16,
            urgent_buffer_ms: 4_000,
            urgent_recheck_ms: 250,
            hedge_start_chunks: 1,
            max_in_flight_per_peer: 2,
            max_in_flight_origin: 4,
            max_in_flight_total: 32,
            max_requests_per_chunk: 3,
            late_factor: 2.0,
            late_slack_ms: 250,
            lookup_wait_ms: 500,
            relookup_ms: 3_000,
            max_relookup_ms: 60_000,
            request_timeout_ms: 60_000,
            max_busy_backoff_ms: 5_000,
            lost_peer_backoff_ms: 60_000,
            initial_peer_rate: 256_000,
            initial_origin_rate: 1_000_000,
            initial_rtt_ms: 100,
            rate_ewma_weight: 0.3,
            late_rate_penalty: 0.5,
            prefetch_before_end_ms: 30_000,
            prefetch_ms: 10_000,
            max_peers_per_track: 16,
            max_tracks_with_peers: 32,
            max_known_nodes: 256,
            max_banned: 1024,
            max_queue: 256,
            max_manifests: 32,
            max_not_have: 1024,
            cache: CacheConfig::default(),
        }
    }
}

impl SchedulerConfig {
    pub(crate) fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// Policy of the local chunk cache index (the disk part belongs to the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes of chunks the cache may hold before the least recently used are evicted
    /// (default 1 GiB; the driver usually sets 10% of free disk).
    pub max_bytes: u64,
    /// Chunks the index may hold (default 1,000,000), bounding its memory.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Limits of the [`ChunkServer`](super::ChunkServer).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Sustained upload rate, bytes/s (default 1 MB/s = 8 Mbit/s).
    pub upload_rate: u64,
    /// Token bucket depth in bytes (default 256 KiB; raised to one full chunk if smaller, so
    /// any chunk can be served at all).
    pub upload_burst: u64,
    /// Uploads in progress at once (default 8); more are answered `Busy`.
    pub max_uploads: usize,
    /// Uploads in progress at once while our own playback buffer is urgent (default 1).
    pub max_uploads_while_urgent: usize,
    /// Share of `upload_rate` used while our own playback buffer is urgent (default 0.25), so
    /// serving never starves our own playback.
    pub urgent_rate_fraction: f64,
    /// Smallest `retry_after` sent with `Busy` (default 500 ms).
    pub min_retry_after_ms: u32,
    /// An upload slot is freed after this long even if the driver never reports it sent
    /// (default 10 s).
    pub upload_slot_timeout_ms: u64,
    /// Chunks a stand-alone server's own servable table may hold (`Hold`; default 1,000,000).
    /// A listener's `PeerCore` serves what its cache index holds, bounded by the cache's
    /// limits instead.
    pub max_held_chunks: usize,
    /// Tracks whose chunk lists are known for `QueryHave`/`GetManifest` (default 100,000).
    pub max_tracks: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            upload_rate: 1_000_000,
            upload_burst: 256 * 1024,
            max_uploads: 8,
            max_uploads_while_urgent: 1,
            urgent_rate_fraction: 0.25,
            min_retry_after_ms: 500,
            upload_slot_timeout_ms: 10_000,
            max_held_chunks: 1_000_000,
            max_tracks: 100_000,
        }
    }
}

impl ServerConfig {
    /// The bucket depth actually used: at least one maximal chunk.
    pub fn effective_burst(&self) -> u64 {
        self.upload_burst.max(MAX_CHUNK_BYTES as u64)
    }
}
