//! Playback statistics, under the names DESIGN.md fixes ("Names users and tools rely on") so
//! the real client's `--json` and the simulator's `summary.json` compare field by field.

use shoal_protocol::TrackId;

/// Where delivered bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BytesBySource {
    /// Read back from the local disk cache.
    pub cache: u64,
    /// From ordinary peers.
    pub peers: u64,
    /// From super-peers.
    pub superpeers: u64,
    /// From the origin store.
    pub origin: u64,
}

impl BytesBySource {
    /// Sum over all sources.
    pub fn total(&self) -> u64 {
        self.cache + self.peers + self.superpeers + self.origin
    }

    /// Adds `bytes` to `kind`.
    pub fn add(&mut self, kind: SourceKind, bytes: u64) {
        match kind {
            SourceKind::Cache => self.cache += bytes,
            SourceKind::Peer => self.peers += bytes,
            SourceKind::SuperPeer => self.superpeers += bytes,
            SourceKind::Origin => self.origin += bytes,
        }
    }

    /// Adds every field of `other`.
    pub fn merge(&mut self, other: &BytesBySource) {
        self.cache += other.cache;
        self.peers += other.peers;
        self.superpeers += other.superpeers;
        self.origin += other.origin;
    }
}

/// The four kinds of source statistics are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// The local disk cache.
    Cache,
    /// An ordinary peer.
    Peer,
    /// A super-peer.
    SuperPeer,
    /// The origin.
    Origin,
}

/// Statistics of one play of one track (from `Play` or auto-advance to its end, stop or skip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayStats {
    /// The track.
    pub track: TrackId,
    /// From the play command (or the previous track's end) to the first audio; `None` if
    /// playback never started.
    pub time_to_first_audio_ms: Option<u64>,
    /// Underruns: playback reached the end of contiguous data before the track's end.
    pub stutters: u32,
    /// Total time spent stalled in underruns.
    pub stalled_ms: u64,
    /// Bytes of this track's chunks obtained, by where they came from (each chunk counted
    /// once, by the source that delivered it first; prefetched chunks by their network source).
    pub bytes_by_source: BytesBySource,
    /// Bytes received for chunks another source had already delivered (hedging's cost).
    pub duplicate_bytes: u64,
    /// True when playback reached the end of the track.
    pub completed: bool,
}

impl PlayStats {
    pub(crate) fn new(track: TrackId) -> Self {
        Self {
            track,
            time_to_first_audio_ms: None,
            stutters: 0,
            stalled_ms: 0,
            bytes_by_source: BytesBySource::default(),
            duplicate_bytes: 0,
            completed: false,
        }
    }
}
