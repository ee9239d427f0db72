//! The JSON form of a play's statistics (`shoal-peer play --json`): the core's
//! [`PlayStats`](crate::core::PlayStats) counters under the names DESIGN.md fixes, plus the
//! derived shares, so a real run and `shoal-sim`'s summary.json compare field by field.

use serde::Serialize;
use shoal_protocol::TrackId;

use crate::core::BytesBySource;

/// Bytes by source, as JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BytesJson {
    /// The local disk cache.
    pub cache: u64,
    /// Other peers.
    pub peers: u64,
    /// Super-peers' caches.
    pub superpeers: u64,
    /// The origin store.
    pub origin: u64,
}

/// Fractions of the bytes by source (sum 1 when any byte moved, else all 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SharesJson {
    /// Share from the cache.
    pub cache: f64,
    /// Share from peers.
    pub peers: f64,
    /// Share from super-peers.
    pub superpeers: f64,
    /// Share from the origin.
    pub origin: f64,
}

/// The one JSON object printed per play.
#[derive(Debug, Clone, Serialize)]
pub struct PlayReport {
    /// The track (hex).
    pub track: TrackId,
    /// Milliseconds from pressing play to the first audio handed to the output.
    pub time_to_first_audio_ms: Option<f64>,
    /// Underruns during the play.
    pub stutters: u32,
    /// Frames (samples per channel) of audio played.
    pub samples_played: u64,
    /// Bytes by source.
    pub bytes_by_source: BytesJson,
    /// Shares by source.
    pub share_by_source: SharesJson,
    /// Of the peers' bytes, those that came over relayed connections (through a super-peer),
    /// when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed_bytes: Option<u64>,
    /// Of the peers' bytes, those that came over direct connections, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_bytes: Option<u64>,
}

impl PlayReport {
    /// A report for `track` with `bytes` by source.
    pub fn new(
        track: TrackId,
        time_to_first_audio_ms: Option<f64>,
        stutters: u32,
        samples_played: u64,
        bytes: &BytesBySource,
    ) -> Self {
        let total = bytes.total();
        let share = |b: u64| {
            if total == 0 {
                0.0
            } else {
                b as f64 / total as f64
            }
        };
        Self {
            track,
            time_to_first_audio_ms,
            stutters,
            samples_played,
            bytes_by_source: BytesJson {
                cache: bytes.cache,
                peers: bytes.peers,
                superpeers: bytes.superpeers,
                origin: bytes.origin,
            },
            share_by_source: SharesJson {
                cache: share(bytes.cache),
                peers: share(bytes.peers),
                superpeers: share(bytes.superpeers),
                origin: share(bytes.origin),
            },
            relayed_bytes: None,
            direct_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_one_and_names_match_design() {
        let bytes = BytesBySource {
            cache: 55,
            peers: 36,
            superpeers: 0,
            origin: 9,
        };
        let r = PlayReport::new(TrackId::of(b"t"), Some(12.5), 0, 48_000, &bytes);
        let sh = r.share_by_source;
        assert!((sh.cache + sh.peers + sh.superpeers + sh.origin - 1.0).abs() < 1e-12);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "time_to_first_audio_ms",
            "stutters",
            "bytes_by_source",
            "share_by_source",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["bytes_by_source"]["origin"], 9);
        assert_eq!(json["track"], TrackId::of(b"t").to_string());
    }
}
