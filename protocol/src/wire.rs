//! Wire messages and their codec.
//!
//! Request/response protocols, each with a versioned id:
//! - [`CHUNK_PROTOCOL`] `/shoal/chunk/2`: [`ChunkRequest`] → [`ChunkResponse`] (get manifest,
//!   get chunk, which chunks do you have, cancel), request after request on a long-lived
//!   stream, one at a time (version 1 carried one request per stream);
//! - [`ANNOUNCE_PROTOCOL`] `/shoal/announce/1`: [`Announce`] → [`AnnounceResponse`] (a peer
//!   holds these tracks and is reachable so);
//! - [`LOOKUP_PROTOCOL`] `/shoal/lookup/1`: [`LookupRequest`] → [`LookupResponse`] (catalog
//!   search, who holds track X);
//! - [`CLUSTER_PROTOCOL`] `/shoal/cluster/1`: [`ClusterAnnounce`] → [`AnnounceResponse`] (a
//!   super-peer tells the tracker, in batches, which of its leaves hold which tracks).
//!
//! A frame is a 4-byte big-endian payload length, then the payload: the message in bincode's
//! standard configuration. Every message type has a hard size limit ([`WireMessage::MAX_BYTES`]),
//! checked on the length prefix before any payload is read, and again by bincode while decoding,
//! so untrusted bytes can never make a node allocate more than that. Decoding never panics.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::chunk::MAX_CHUNK_BYTES;
use crate::ids::{ChunkId, TrackId};
use crate::manifest::MAX_MANIFEST_BYTES;

/// Protocol id of chunk transfer: frames as in every protocol here, but a stream carries one
/// request and its answer, then the next request, until either side closes it.
pub const CHUNK_PROTOCOL: &str = "/shoal/chunk/2";
/// Protocol id of holdings announcements.
pub const ANNOUNCE_PROTOCOL: &str = "/shoal/announce/1";
/// Protocol id of catalog and holder lookups.
pub const LOOKUP_PROTOCOL: &str = "/shoal/lookup/1";

/// Protocol id of a super-peer's aggregated cluster announces to the tracker.
pub const CLUSTER_PROTOCOL: &str = "/shoal/cluster/1";

/// Bytes of the length prefix in front of every payload.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The most tracks one [`Announce`] may add or remove (larger holdings go in several).
pub const MAX_ANNOUNCE_TRACKS: usize = 8_192;

/// The most tracks one [`ClusterAnnounce`] may set.
pub const MAX_CLUSTER_TRACKS: usize = 4_096;

/// The most leaves one [`ClusterAnnounce`] may describe.
pub const MAX_CLUSTER_LEAVES: usize = 1_024;

/// The most leaves one [`ClusterTrack`] may list (a tracker keeps a few per cluster, not all).
pub const MAX_LEAVES_PER_CLUSTER_TRACK: usize = 16;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix or the encoded message exceeds the type's limit.
    #[error("{protocol} message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Protocol of the message type.
        protocol: &'static str,
        /// Declared or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not enough bytes yet for a whole frame.
    #[error("incomplete frame: have {have} bytes, need {need}")]
    Incomplete {
        /// Bytes available.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed {protocol} message: {reason}")]
    Malformed {
        /// Protocol of the message type.
        protocol: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// The message decoded but did not use every payload byte.
    #[error("{protocol} message has {extra} trailing bytes")]
    TrailingBytes {
        /// Protocol of the message type.
        protocol: &'static str,
        /// Unused bytes.
        extra: usize,
    },
    /// Serialising failed (a message type the codec cannot represent).
    #[error("cannot encode {protocol} message: {reason}")]
    Encode {
        /// Protocol of the message type.
        protocol: &'static str,
        /// The encoder's explanation.
        reason: String,
    },
}

/// A message type that travels in frames.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The protocol id it belongs to.
    const PROTOCOL: &'static str;
    /// Hard upper bound of its payload, in bytes.
    const MAX_BYTES: usize;

    /// Decodes one payload (no length prefix). It must be all of `bytes`.
    fn decode_payload(bytes: &[u8]) -> Result<Self, WireError>;

    /// Encodes the payload (no length prefix).
    fn encode_payload(&self) -> Result<Vec<u8>, WireError> {
        let bytes =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).map_err(|e| {
                WireError::Encode {
                    protocol: Self::PROTOCOL,
                    reason: e.to_string(),
                }
            })?;
        if bytes.len() > Self::MAX_BYTES {
            return Err(WireError::TooLarge {
                protocol: Self::PROTOCOL,
                len: bytes.len(),
                max: Self::MAX_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Encodes a whole frame: length prefix and payload, written into one buffer (a chunk
    /// response is copied once, not encoded and then copied again behind its prefix).
    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        let mut frame = vec![0u8; LENGTH_PREFIX_BYTES];
        bincode::serde::encode_into_std_write(self, &mut frame, bincode::config::standard())
            .map_err(|e| WireError::Encode {
                protocol: Self::PROTOCOL,
                reason: e.to_string(),
            })?;
        let payload_len = frame.len() - LENGTH_PREFIX_BYTES;
        let too_large = WireError::TooLarge {
            protocol: Self::PROTOCOL,
            len: payload_len,
            max: Self::MAX_BYTES,
        };
        if payload_len > Self::MAX_BYTES {
            return Err(too_large);
        }
        let len = u32::try_from(payload_len).map_err(|_| too_large)?;
        frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        Ok(frame)
    }

    /// Reads a length prefix and checks it against the limit, before the payload is read.
    fn payload_len(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, WireError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > Self::MAX_BYTES {
            return Err(WireError::TooLarge {
                protocol: Self::PROTOCOL,
                len,
                max: Self::MAX_BYTES,
            });
        }
        Ok(len)
    }

    /// Decodes the frame at the start of `bytes`; returns it and the bytes it used.
    fn decode_frame(bytes: &[u8]) -> Result<(Self, usize), WireError> {
        let (prefix, rest) =
            bytes
                .split_first_chunk::<LENGTH_PREFIX_BYTES>()
                .ok_or(WireError::Incomplete {
                    have: bytes.len(),
                    need: LENGTH_PREFIX_BYTES,
                })?;
        let len = Self::payload_len(*prefix)?;
        let payload = rest.get(..len).ok_or(WireError::Incomplete {
            have: bytes.len(),
            need: LENGTH_PREFIX_BYTES + len,
        })?;
        Ok((Self::decode_payload(payload)?, LENGTH_PREFIX_BYTES + len))
    }
}

fn decode_with<M: DeserializeOwned, C: bincode::config::Config>(
    protocol: &'static str,
    bytes: &[u8],
    config: C,
) -> Result<M, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice::<M, C>(bytes, config).map_err(|e| {
        WireError::Malformed {
            protocol,
            reason: e.to_string(),
        }
    })?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes {
            protocol,
            extra: bytes.len() - used,
        });
    }
    Ok(msg)
}

macro_rules! wire_message {
    ($ty:ty, $protocol:expr, $max:expr) => {
        impl WireMessage for $ty {
            const PROTOCOL: &'static str = $protocol;
            const MAX_BYTES: usize = $max;
            fn decode_payload(bytes: &[u8]) -> Result<Self, WireError> {
                if bytes.len() > Self::MAX_BYTES {
                    return Err(WireError::TooLarge {
                        protocol: Self::PROTOCOL,
                        len: bytes.len(),
                        max: Self::MAX_BYTES,
                    });
                }
                decode_with(
                    Self::PROTOCOL,
                    bytes,
                    bincode::config::standard().with_limit::<{ $max }>(),
                )
            }
        }
    };
}

/// Requests of `/shoal/chunk/2`. `request` numbers are chosen by the requester, unique among
/// its outstanding requests to one node, and echoed in the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Send the canonical manifest of `track`.
    GetManifest {
        /// Request number.
        request: u64,
        /// The track.
        track: TrackId,
    },
    /// Send the bytes of `chunk` (of `track`, so the server can find or fetch it).
    GetChunk {
        /// Request number.
        request: u64,
        /// The track the chunk belongs to.
        track: TrackId,
        /// The chunk.
        chunk: ChunkId,
    },
    /// Which chunks of `track` do you hold?
    QueryHave {
        /// Request number.
        request: u64,
        /// The track.
        track: TrackId,
    },
    /// Stop working on request `request`; its answer is no longer wanted.
    Cancel {
        /// The request to drop.
        request: u64,
    },
}

impl ChunkRequest {
    /// The request number (for a `Cancel`, the number of the request it cancels).
    pub fn request(&self) -> u64 {
        match self {
            ChunkRequest::GetManifest { request, .. }
            | ChunkRequest::GetChunk { request, .. }
            | ChunkRequest::QueryHave { request, .. }
            | ChunkRequest::Cancel { request } => *request,
        }
    }
}

/// Responses of `/shoal/chunk/2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkResponse {
    /// The canonical manifest bytes; the requester checks they hash to the track id.
    Manifest {
        /// Request number.
        request: u64,
        /// Canonical manifest bytes.
        // `serde_bytes`: the same encoding (length, then the bytes) copied as one slice rather
        // than element by element, which cost ~8% of a serving peer's CPU.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The chunk bytes; the requester verifies them against the chunk id.
    Chunk {
        /// Request number.
        request: u64,
        /// Chunk bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Which chunks of the track the server holds: bit `i` (LSB first) of byte `i / 8` is set
    /// when it holds chunk `i` of the manifest.
    Have {
        /// Request number.
        request: u64,
        /// The bitmap.
        bitmap: Vec<u8>,
    },
    /// The server does not hold what was asked for.
    NotHave {
        /// Request number.
        request: u64,
    },
    /// The server is at its upload limit; ask again after `retry_after_ms` or elsewhere.
    Busy {
        /// Request number.
        request: u64,
        /// Suggested wait.
        retry_after_ms: u32,
    },
    /// Acknowledges a [`ChunkRequest::Cancel`].
    Cancelled {
        /// The dropped request.
        request: u64,
    },
}

/// How to reach a node: its libp2p peer id and addresses (multiaddr text).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerContact {
    /// The libp2p `PeerId` in its binary (multihash) form.
    pub peer_id: Vec<u8>,
    /// Addresses it listens on or was observed at, as multiaddr strings.
    pub addrs: Vec<String>,
}

/// `/shoal/announce/1`: the sender (identified by its authenticated connection, never by a
/// field here) holds these tracks and can be reached so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// When true, `tracks` is the complete holding set and replaces what was announced before;
    /// when false, `tracks` are added.
    pub replace: bool,
    /// Tracks held (at most [`MAX_ANNOUNCE_TRACKS`]).
    pub tracks: Vec<TrackId>,
    /// Tracks no longer held (at most [`MAX_ANNOUNCE_TRACKS`]).
    pub removed: Vec<TrackId>,
    /// Direct addresses, if any are reachable.
    pub addrs: Vec<String>,
    /// The super-peer it is attached to and reachable through (relay), if any.
    pub via: Option<PeerContact>,
    /// The sender's region (free text, e.g. an ISO country code), used to rank holders.
    pub region: Option<String>,
}

/// Answer to an [`Announce`] (and to a [`ClusterAnnounce`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnounceResponse {
    /// Recorded; announce again within `ttl_secs` to stay listed.
    Accepted {
        /// Seconds the entry lives without renewal.
        ttl_secs: u32,
    },
    /// Not recorded.
    Rejected {
        /// Why (rate limit, too many tracks...).
        reason: String,
    },
    /// Only from a super-peer: recorded in its cluster index, and the super-peer announces the
    /// cluster's holdings to the tracker itself ([`ClusterAnnounce`]), so the leaf need not
    /// announce to the tracker while it stays attached. Announce again within `ttl_secs`.
    Aggregated {
        /// Seconds the entry lives without renewal.
        ttl_secs: u32,
    },
}

/// One leaf of a cluster, as a [`ClusterAnnounce`] describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLeaf {
    /// The leaf's peer id, and direct addresses if it has any (it is reachable through the
    /// announcing super-peer in any case).
    pub peer: PeerContact,
    /// Its region, if it said.
    pub region: Option<String>,
}

/// Which leaves of the cluster hold one track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTrack {
    /// The track.
    pub track: TrackId,
    /// Positions in [`ClusterAnnounce::leaves`] of the leaves the tracker should hand out for
    /// it (at most [`MAX_LEAVES_PER_CLUSTER_TRACK`]): a sample, not necessarily every holder.
    /// Replaces what was listed for the track before; empty means the cluster no longer
    /// holds it.
    pub leaves: Vec<u32>,
}

/// `/shoal/cluster/1`: a super-peer (identified by its authenticated connection, never by a
/// field here) tells the tracker which of its leaves hold which tracks. The tracker lists those
/// leaves as holders reachable through the sender, so only a super-peer can speak for its own
/// cluster. Changes are batched: each message sets the listed tracks (track by track) and
/// renews the whole cluster's TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAnnounce {
    /// When true, everything the cluster announced before is dropped first (the first part of a
    /// full snapshot; later parts come with `replace: false`). A tracker that does not know
    /// the cluster rejects `replace: false`, so the super-peer sends a snapshot.
    pub replace: bool,
    /// Tracks whose cluster holders are set (at most [`MAX_CLUSTER_TRACKS`]).
    pub tracks: Vec<ClusterTrack>,
    /// The leaves `tracks` refer to, plus leaves whose contact or region changed (at most
    /// [`MAX_CLUSTER_LEAVES`]).
    pub leaves: Vec<ClusterLeaf>,
    /// The super-peer's advertised addresses (what leaves' holders carry as `via`); empty:
    /// the addresses the tracker observes.
    pub addrs: Vec<String>,
    /// The super-peer's region, if known.
    pub region: Option<String>,
}

/// `/shoal/lookup/1` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupRequest {
    /// Full-text catalog search.
    Search {
        /// The query as typed (prefixes match).
        query: String,
        /// Most results wanted.
        limit: u16,
    },
    /// Who holds `track`, nearest to the asker first.
    Holders {
        /// The track.
        track: TrackId,
        /// Most holders wanted.
        limit: u16,
    },
}

/// A catalog entry as search returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSummary {
    /// The track id.
    pub id: TrackId,
    /// Title (the file name when the file had no tag).
    pub title: String,
    /// Artist, if tagged.
    pub artist: Option<String>,
    /// Album, if tagged.
    pub album: Option<String>,
    /// Playable duration in milliseconds.
    pub duration_ms: u64,
}

/// One holder of a track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The peer.
    pub peer: PeerContact,
    /// Its super-peer, when it is reachable only through one.
    pub via: Option<PeerContact>,
    /// Its region, if known.
    pub region: Option<String>,
    /// True for a super-peer's own cache (its bytes count as `superpeers`).
    pub superpeer: bool,
}

/// `/shoal/lookup/1` responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupResponse {
    /// Search results, most relevant first.
    Tracks(Vec<TrackSummary>),
    /// Holders of a track, nearest first.
    Holders {
        /// The track asked about.
        track: TrackId,
        /// Its holders.
        holders: Vec<Holder>,
    },
    /// The lookup failed (bad query, catalog unavailable).
    Error {
        /// Why.
        reason: String,
    },
}

wire_message!(ChunkRequest, CHUNK_PROTOCOL, 128);
// A manifest is the largest thing the chunk protocol carries.
wire_message!(ChunkResponse, CHUNK_PROTOCOL, MAX_MANIFEST_BYTES + 64);
wire_message!(
    Announce,
    ANNOUNCE_PROTOCOL,
    2 * MAX_ANNOUNCE_TRACKS * 33 + 16 * 1024
);
wire_message!(AnnounceResponse, ANNOUNCE_PROTOCOL, 1024);
// Tracks with full leaf lists, leaves with a few short addresses each.
wire_message!(
    ClusterAnnounce,
    CLUSTER_PROTOCOL,
    MAX_CLUSTER_TRACKS * (33 + 5 * MAX_LEAVES_PER_CLUSTER_TRACK)
        + MAX_CLUSTER_LEAVES * 1024
        + 16 * 1024
);
wire_message!(LookupRequest, LOOKUP_PROTOCOL, 1024);
wire_message!(LookupResponse, LOOKUP_PROTOCOL, 1024 * 1024);

// A chunk must always fit in a response.
const _: () = assert!(MAX_CHUNK_BYTES + 64 <= MAX_MANIFEST_BYTES + 64);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_track() -> impl Strategy<Value = TrackId> {
        any::<[u8; 32]>().prop_map(TrackId::from_bytes)
    }

    fn arb_contact() -> impl Strategy<Value = PeerContact> {
        (
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(".{0,40}", 0..4),
        )
            .prop_map(|(peer_id, addrs)| PeerContact { peer_id, addrs })
    }

    fn arb_chunk_request() -> impl Strategy<Value = ChunkRequest> {
        prop_oneof![
            (any::<u64>(), arb_track())
                .prop_map(|(request, track)| ChunkRequest::GetManifest { request, track }),
            (any::<u64>(), arb_track(), any::<[u8; 32]>()).prop_map(|(request, track, c)| {
                ChunkRequest::GetChunk {
                    request,
                    track,
                    chunk: ChunkId::from_bytes(c),
                }
            }),
            (any::<u64>(), arb_track())
                .prop_map(|(request, track)| ChunkRequest::QueryHave { request, track }),
            any::<u64>().prop_map(|request| ChunkRequest::Cancel { request }),
        ]
    }

    fn arb_chunk_response() -> impl Strategy<Value = ChunkResponse> {
        let bytes = prop::collection::vec(any::<u8>(), 0..3000);
        prop_oneof![
            (any::<u64>(), bytes.clone())
                .prop_map(|(request, bytes)| ChunkResponse::Manifest { request, bytes }),
            (any::<u64>(), bytes.clone())
                .prop_map(|(request, bytes)| ChunkResponse::Chunk { request, bytes }),
            (any::<u64>(), bytes)
                .prop_map(|(request, bitmap)| ChunkResponse::Have { request, bitmap }),
            any::<u64>().prop_map(|request| ChunkResponse::NotHave { request }),
            (any::<u64>(), any::<u32>()).prop_map(|(request, retry_after_ms)| {
                ChunkResponse::Busy {
                    request,
                    retry_after_ms,
                }
            }),
            any::<u64>().prop_map(|request| ChunkResponse::Cancelled { request }),
        ]
    }

    fn arb_announce() -> impl Strategy<Value = Announce> {
        (
            any::<bool>(),
            prop::collection::vec(arb_track(), 0..50),
            prop::collection::vec(arb_track(), 0..10),
            prop::collection::vec(".{0,40}", 0..4),
            prop::option::of(arb_contact()),
            prop::option::of("[A-Z]{2}"),
        )
            .prop_map(|(replace, tracks, removed, addrs, via, region)| Announce {
                replace,
                tracks,
                removed,
                addrs,
                via,
                region,
            })
    }

    fn arb_announce_response() -> impl Strategy<Value = AnnounceResponse> {
        prop_oneof![
            any::<u32>().prop_map(|ttl_secs| AnnounceResponse::Accepted { ttl_secs }),
            ".{0,100}".prop_map(|reason| AnnounceResponse::Rejected { reason }),
            any::<u32>().prop_map(|ttl_secs| AnnounceResponse::Aggregated { ttl_secs }),
        ]
    }

    fn arb_cluster_announce() -> impl Strategy<Value = ClusterAnnounce> {
        let leaf = (arb_contact(), prop::option::of("[A-Z]{2}"))
            .prop_map(|(peer, region)| ClusterLeaf { peer, region });
        let track = (arb_track(), prop::collection::vec(any::<u32>(), 0..6))
            .prop_map(|(track, leaves)| ClusterTrack { track, leaves });
        (
            any::<bool>(),
            prop::collection::vec(track, 0..30),
            prop::collection::vec(leaf, 0..10),
            prop::collection::vec(".{0,40}", 0..4),
            prop::option::of("[A-Z]{2}"),
        )
            .prop_map(|(replace, tracks, leaves, addrs, region)| ClusterAnnounce {
                replace,
                tracks,
                leaves,
                addrs,
                region,
            })
    }

    fn arb_lookup_request() -> impl Strategy<Value = LookupRequest> {
        prop_oneof![
            (".{0,100}", any::<u16>())
                .prop_map(|(query, limit)| LookupRequest::Search { query, limit }),
            (arb_track(), any::<u16>())
                .prop_map(|(track, limit)| LookupRequest::Holders { track, limit }),
        ]
    }

    fn arb_lookup_response() -> impl Strategy<Value = LookupResponse> {
        let summary = (
            arb_track(),
            ".{0,30}",
            prop::option::of(".{0,30}"),
            prop::option::of(".{0,30}"),
            any::<u64>(),
        )
            .prop_map(|(id, title, artist, album, duration_ms)| TrackSummary {
                id,
                title,
                artist,
                album,
                duration_ms,
            });
        let holder = (
            arb_contact(),
            prop::option::of(arb_contact()),
            prop::option::of("[A-Z]{2}"),
            any::<bool>(),
        )
            .prop_map(|(peer, via, region, superpeer)| Holder {
                peer,
                via,
                region,
                superpeer,
            });
        prop_oneof![
            prop::collection::vec(summary, 0..20).prop_map(LookupResponse::Tracks),
            (arb_track(), prop::collection::vec(holder, 0..20))
                .prop_map(|(track, holders)| LookupResponse::Holders { track, holders }),
            ".{0,100}".prop_map(|reason| LookupResponse::Error { reason }),
        ]
    }

    /// Round trip, then every truncation and a bit flip of the frame: an error or a different
    /// valid message, never a panic.
    fn check<M: WireMessage + PartialEq + std::fmt::Debug>(
        msg: &M,
        flip_at: prop::sample::Index,
        bit: u8,
    ) -> Result<(), TestCaseError> {
        let frame = msg.encode_frame().unwrap();
        let (back, used) = M::decode_frame(&frame).unwrap();
        prop_assert_eq!(&back, msg);
        prop_assert_eq!(used, frame.len());
        for cut in 0..frame.len() {
            prop_assert!(M::decode_frame(&frame[..cut]).is_err());
        }
        let mut flipped = frame.clone();
        let i = flip_at.index(flipped.len());
        flipped[i] ^= 1 << bit;
        if let Ok((other, _)) = M::decode_frame(&flipped) {
            prop_assert_ne!(&other, msg);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn chunk_request(m in arb_chunk_request(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn chunk_response(m in arb_chunk_response(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn announce(m in arb_announce(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn announce_response(m in arb_announce_response(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn cluster_announce(m in arb_cluster_announce(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn lookup_request(m in arb_lookup_request(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }
        #[test]
        fn lookup_response(m in arb_lookup_response(), i in any::<prop::sample::Index>(), b in 0u8..8) { check(&m, i, b)?; }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = ChunkRequest::decode_payload(&bytes);
            let _ = ChunkResponse::decode_payload(&bytes);
            let _ = Announce::decode_payload(&bytes);
            let _ = AnnounceResponse::decode_payload(&bytes);
            let _ = ClusterAnnounce::decode_payload(&bytes);
            let _ = ClusterAnnounce::decode_frame(&bytes);
            let _ = LookupRequest::decode_payload(&bytes);
            let _ = LookupResponse::decode_payload(&bytes);
            let _ = LookupResponse::decode_frame(&bytes);
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading() {
        let prefix = (u32::try_from(ChunkRequest::MAX_BYTES).unwrap() + 1).to_be_bytes();
        assert!(matches!(
            ChunkRequest::payload_len(prefix),
            Err(WireError::TooLarge {
                len: 129,
                max: 128,
                ..
            })
        ));
        let mut frame = prefix.to_vec();
        frame.extend_from_slice(&[0; 16]);
        assert!(matches!(
            ChunkRequest::decode_frame(&frame),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_declared_vector_does_not_allocate() {
        // Variant 1 (Chunk), request 0, then a varint length of u64::MAX bytes.
        let payload = [1u8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let err = ChunkResponse::decode_payload(&payload).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut payload = ChunkRequest::Cancel { request: 7 }
            .encode_payload()
            .unwrap();
        payload.push(0);
        assert_eq!(
            ChunkRequest::decode_payload(&payload),
            Err(WireError::TrailingBytes {
                protocol: CHUNK_PROTOCOL,
                extra: 1
            })
        );
    }

    #[test]
    fn a_full_chunk_and_the_largest_manifest_fit() {
        let chunk = ChunkResponse::Chunk {
            request: u64::MAX,
            bytes: vec![0xab; MAX_CHUNK_BYTES],
        };
        let frame = chunk.encode_frame().unwrap();
        assert_eq!(ChunkResponse::decode_frame(&frame).unwrap().0, chunk);
        let manifest = ChunkResponse::Manifest {
            request: u64::MAX,
            bytes: vec![1; MAX_MANIFEST_BYTES],
        };
        assert!(manifest.encode_frame().is_ok());
        let too_big = ChunkResponse::Manifest {
            request: 0,
            bytes: vec![1; MAX_MANIFEST_BYTES + 64],
        };
        assert!(matches!(
            too_big.encode_frame(),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_largest_announce_fits() {
        let full = Announce {
            replace: true,
            tracks: vec![TrackId::of(b"t"); MAX_ANNOUNCE_TRACKS],
            removed: vec![TrackId::of(b"r"); MAX_ANNOUNCE_TRACKS],
            addrs: vec!["/ip4/127.0.0.1/udp/7701/quic-v1".into(); 8],
            via: Some(PeerContact {
                peer_id: vec![0; 38],
                addrs: vec!["/ip4/1.2.3.4/tcp/1".into(); 8],
            }),
            region: Some("SE".into()),
        };
        let frame = full.encode_frame().unwrap();
        assert_eq!(Announce::decode_frame(&frame).unwrap().0, full);
    }

    #[test]
    fn the_largest_cluster_announce_fits() {
        let full = ClusterAnnounce {
            replace: true,
            tracks: vec![
                ClusterTrack {
                    track: TrackId::of(b"t"),
                    leaves: vec![u32::MAX; MAX_LEAVES_PER_CLUSTER_TRACK],
                };
                MAX_CLUSTER_TRACKS
            ],
            leaves: vec![
                ClusterLeaf {
                    peer: PeerContact {
                        peer_id: vec![0; 64],
                        addrs: vec!["/ip4/255.255.255.255/udp/65535/quic-v1".into(); 4],
                    },
                    region: Some("x".repeat(64)),
                };
                MAX_CLUSTER_LEAVES
            ],
            addrs: vec!["/ip4/1.2.3.4/udp/7702/quic-v1".into(); 16],
            region: Some("SE".into()),
        };
        let frame = full.encode_frame().unwrap();
        assert_eq!(ClusterAnnounce::decode_frame(&frame).unwrap().0, full);
    }

    #[test]
    fn existing_announce_answers_keep_their_encoding() {
        // Variant indices 0 and 1 are what peers built before `Aggregated` send and expect.
        let accepted = AnnounceResponse::Accepted { ttl_secs: 5 }
            .encode_payload()
            .unwrap();
        assert_eq!(accepted, [0, 5]);
        let rejected = AnnounceResponse::Rejected { reason: "x".into() }
            .encode_payload()
            .unwrap();
        assert_eq!(rejected, [1, 1, b'x']);
        let aggregated = AnnounceResponse::Aggregated { ttl_secs: 5 }
            .encode_payload()
            .unwrap();
        assert_eq!(aggregated, [2, 5]);
    }

    #[test]
    fn protocol_ids_are_versioned() {
        for p in [
            CHUNK_PROTOCOL,
            ANNOUNCE_PROTOCOL,
            LOOKUP_PROTOCOL,
            CLUSTER_PROTOCOL,
        ] {
            // `/shoal/<name>/<version>`, the version a positive integer.
            let parts: Vec<&str> = p.split('/').collect();
            assert_eq!(parts.len(), 4, "{p}");
            assert_eq!((parts[0], parts[1]), ("", "shoal"), "{p}");
            assert!(!parts[2].is_empty(), "{p}");
            assert!(parts[3].parse::<u32>().is_ok_and(|v| v >= 1), "{p}");
        }
        // Version 2 of the chunk protocol: long-lived streams carrying request after request.
        assert_eq!(CHUNK_PROTOCOL, "/shoal/chunk/2");
        assert_eq!(ChunkRequest::PROTOCOL, CHUNK_PROTOCOL);
        assert_eq!(LookupResponse::PROTOCOL, LOOKUP_PROTOCOL);
    }

    #[test]
    fn chunk_bytes_keep_the_element_by_element_encoding() {
        // Byte strings are copied as one slice (`serde_bytes`) but must stay on the wire exactly
        // as a plain `Vec<u8>` field encodes, which is what earlier peers send and expect.
        #[derive(Serialize)]
        enum Plain {
            Manifest { request: u64, bytes: Vec<u8> },
            Chunk { request: u64, bytes: Vec<u8> },
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let cfg = bincode::config::standard();
        let plain = bincode::serde::encode_to_vec(
            Plain::Chunk {
                request: 300,
                bytes: bytes.clone(),
            },
            cfg,
        )
        .unwrap();
        let ours = ChunkResponse::Chunk {
            request: 300,
            bytes: bytes.clone(),
        };
        assert_eq!(ours.encode_payload().unwrap(), plain);
        assert_eq!(ChunkResponse::decode_payload(&plain).unwrap(), ours);
        let plain = bincode::serde::encode_to_vec(
            Plain::Manifest {
                request: 1,
                bytes: bytes[..999].to_vec(),
            },
            cfg,
        )
        .unwrap();
        let ours = ChunkResponse::Manifest {
            request: 1,
            bytes: bytes[..999].to_vec(),
        };
        assert_eq!(ours.encode_payload().unwrap(), plain);
        // The frame is the prefix then exactly that payload.
        let frame = ours.encode_frame().unwrap();
        assert_eq!(frame[..4], (plain.len() as u32).to_be_bytes());
        assert_eq!(frame[4..], plain[..]);
    }
}
