//! Per-play statistics, named as in DESIGN.md ("Names users and tools rely on") so that
//! `shoal-peer play --json` and `shoal-sim`'s summary.json compare field by field.

use serde::Serialize;
use shoal_protocol::TrackId;

/// Bytes of one play by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BytesBySource {
    /// The local disk cache.
    pub cache: u64,
    /// Other peers.
    pub peers: u64,
    /// Super-peers' caches.
    pub superpeers: u64,
    /// The origin store.
    pub origin: u64,
}

impl BytesBySource {
    /// All bytes.
    pub fn total(&self) -> u64 {
        self.cache + self.peers + self.superpeers + self.origin
    }
}

/// Fractions of [`BytesBySource`] (sum 1 when any byte moved, else all 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ShareBySource {
    /// Share from the cache.
    pub cache: f64,
    /// Share from peers.
    pub peers: f64,
    /// Share from super-peers.
    pub superpeers: f64,
    /// Share from the origin.
    pub origin: f64,
}

/// The JSON object one play prints with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlayStats {
    /// The track.
    pub track: TrackId,
    /// Milliseconds from pressing play to the first audio handed to the output.
    pub time_to_first_audio_ms: Option<f64>,
    /// Underruns during the play.
    pub stutters: u32,
    /// Frames (samples per channel) of audio played.
    pub samples_played: u64,
    /// Bytes by source.
    pub bytes_by_source: BytesBySource,
    /// Shares by source.
    pub share_by_source: ShareBySource,
}

impl PlayStats {
    /// Empty statistics for `track`.
    pub fn new(track: TrackId) -> Self {
        Self {
            track,
            time_to_first_audio_ms: None,
            stutters: 0,
            samples_played: 0,
            bytes_by_source: BytesBySource::default(),
            share_by_source: ShareBySource::default(),
        }
    }

    /// Records the byte counts and derives the shares.
    pub fn set_bytes(&mut self, bytes: BytesBySource) {
        self.bytes_by_source = bytes;
        let total = bytes.total();
        if total > 0 {
            let t = total as f64;
            self.share_by_source = ShareBySource {
                cache: bytes.cache as f64 / t,
                peers: bytes.peers as f64 / t,
                superpeers: bytes.superpeers as f64 / t,
                origin: bytes.origin as f64 / t,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_one_and_names_match_design() {
        let mut s = PlayStats::new(TrackId::of(b"t"));
        s.set_bytes(BytesBySource {
            cache: 55,
            peers: 36,
            superpeers: 0,
            origin: 9,
        });
        let sh = s.share_by_source;
        assert!((sh.cache + sh.peers + sh.superpeers + sh.origin - 1.0).abs() < 1e-12);
        let json = serde_json::to_value(&s).unwrap();
        for key in [
            "time_to_first_audio_ms",
            "stutters",
            "bytes_by_source",
            "share_by_source",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["bytes_by_source"]["origin"], 9);
    }
}
