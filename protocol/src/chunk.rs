//! The chunk: a run of whole Opus packets, addressed by the BLAKE3 hash of its bytes.
//!
//! Byte format (version 1):
//!
//! ```text
//! u8 version = 1
//! repeated, at least once:  u16 little-endian packet length (1..=61200), packet bytes
//! ```
//!
//! Chunks hold whole packets so any chunk decodes on its own (after the codec's pre-roll).
//! The [`Chunker`] streams packets into chunks: a short first chunk (≈ 0.5 s, so playback starts
//! after a few KB), then chunks of up to 64 KiB and a few seconds each.

use crate::ids::ChunkId;
use crate::manifest::ChunkInfo;
use crate::opus::{self, MAX_PACKET_BYTES, PacketError};

/// The chunk format version this crate writes and reads.
pub const CHUNK_FORMAT_VERSION: u8 = 1;

/// The largest chunk, in bytes, anyone may produce or accept.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Why bytes are not a valid chunk, or a packet cannot be chunked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The bytes do not hash to the expected id.
    #[error("chunk bytes do not match chunk id {expected} (they hash to {actual})")]
    HashMismatch {
        /// The id the chunk was asked for under.
        expected: ChunkId,
        /// The id its bytes have.
        actual: ChunkId,
    },
    /// Zero bytes.
    #[error("empty chunk")]
    Empty,
    /// Over [`MAX_CHUNK_BYTES`].
    #[error("chunk is {len} bytes, over the {MAX_CHUNK_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A format version this build does not know.
    #[error("unknown chunk format version {0}")]
    UnknownVersion(u8),
    /// The version byte and nothing else.
    #[error("chunk holds no packets")]
    NoPackets,
    /// A packet header or body runs past the end.
    #[error("chunk truncated in packet {index} at byte {offset}")]
    Truncated {
        /// Packet index.
        index: usize,
        /// Byte offset of that packet's header.
        offset: usize,
    },
    /// A packet that is not valid Opus, or whose size is out of bounds.
    #[error("packet {index} of the chunk is invalid: {reason}")]
    BadPacket {
        /// Packet index.
        index: usize,
        /// Why.
        reason: PacketError,
    },
    /// A packet's declared length is zero or above [`MAX_PACKET_BYTES`].
    #[error("packet {index} is {len} bytes; packets are 1..={MAX_PACKET_BYTES} bytes")]
    PacketSize {
        /// Packet index.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The caller's duration for a packet disagrees with the packet's own TOC.
    #[error("packet duration given as {given} samples but its TOC says {toc}")]
    DurationMismatch {
        /// Duration passed to [`Chunker::push`].
        given: u32,
        /// Duration from the TOC byte.
        toc: u32,
    },
}

/// Checks that `bytes` are the chunk named `id`. Every byte a node accepts goes through this
/// before it is cached, played or served onward.
pub fn verify(bytes: &[u8], id: &ChunkId) -> Result<(), ChunkError> {
    let actual = blake3::hash(bytes);
    // blake3::Hash equality is constant-time.
    if actual == blake3::Hash::from_bytes(*id.as_bytes()) {
        Ok(())
    } else {
        Err(ChunkError::HashMismatch {
            expected: *id,
            actual: ChunkId::from_bytes(*actual.as_bytes()),
        })
    }
}

/// A chunk's packets, borrowed from its bytes, with their total duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChunk<'a> {
    /// The Opus packets in order.
    pub packets: Vec<&'a [u8]>,
    /// Total duration in 48 kHz samples.
    pub samples: u64,
}

/// Parses chunk bytes into Opus packets, checking every length and TOC byte.
/// Never panics; allocates at most one pointer pair per 3 input bytes.
pub fn parse_chunk(bytes: &[u8]) -> Result<ParsedChunk<'_>, ChunkError> {
    let (&version, mut rest) = bytes.split_first().ok_or(ChunkError::Empty)?;
    if bytes.len() > MAX_CHUNK_BYTES {
        return Err(ChunkError::TooLarge { len: bytes.len() });
    }
    if version != CHUNK_FORMAT_VERSION {
        return Err(ChunkError::UnknownVersion(version));
    }
    if rest.is_empty() {
        return Err(ChunkError::NoPackets);
    }
    let mut packets = Vec::new();
    let mut samples = 0u64;
    while !rest.is_empty() {
        let index = packets.len();
        let offset = bytes.len() - rest.len();
        let (header, body) = rest
            .split_first_chunk::<2>()
            .ok_or(ChunkError::Truncated { index, offset })?;
        let len = usize::from(u16::from_le_bytes(*header));
        if len == 0 || len > MAX_PACKET_BYTES {
            return Err(ChunkError::PacketSize { index, len });
        }
        if body.len() < len {
            return Err(ChunkError::Truncated { index, offset });
        }
        let (packet, tail) = body.split_at(len);
        let n = opus::packet_samples(packet)
            .map_err(|reason| ChunkError::BadPacket { index, reason })?;
        samples += u64::from(n);
        packets.push(packet);
        rest = tail;
    }
    Ok(ParsedChunk { packets, samples })
}

/// A finished chunk: its bytes, id and place on the track's timeline.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// BLAKE3 of `bytes`.
    pub id: ChunkId,
    /// The chunk bytes (format above).
    pub bytes: Vec<u8>,
    /// First sample of the chunk on the encoded stream's timeline (48 kHz, pre-skip included).
    pub start: u64,
    /// Duration in 48 kHz samples.
    pub samples: u32,
}

impl Chunk {
    /// The manifest entry for this chunk.
    pub fn info(&self) -> ChunkInfo {
        ChunkInfo {
            id: self.id,
            len: u32::try_from(self.bytes.len()).unwrap_or(u32::MAX),
            start: self.start,
            samples: self.samples,
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .field("start", &self.start)
            .field("samples", &self.samples)
            .finish()
    }
}

/// How the [`Chunker`] sizes chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Audio in the first chunk, in 48 kHz samples (default 24,000 = 0.5 s): small so playback
    /// starts after a few KB.
    pub first_chunk_samples: u32,
    /// Upper bound of any chunk in bytes (default and maximum [`MAX_CHUNK_BYTES`]).
    pub max_chunk_bytes: usize,
    /// Upper bound of later chunks' audio in 48 kHz samples (default 240,000 = 5 s), so low
    /// bitrates do not make chunks minutes long.
    pub max_chunk_samples: u32,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            first_chunk_samples: 24_000,
            max_chunk_bytes: MAX_CHUNK_BYTES,
            max_chunk_samples: 240_000,
        }
    }
}

/// Groups a stream of Opus packets into chunks of whole packets. Holds at most one chunk's
/// bytes, so a 10-hour track chunks in constant memory.
#[derive(Debug)]
pub struct Chunker {
    config: ChunkerConfig,
    current: Vec<u8>,
    current_samples: u32,
    start: u64,
    emitted: usize,
}

impl Chunker {
    /// A chunker with `config`; `max_chunk_bytes` is clamped to what one packet and
    /// [`MAX_CHUNK_BYTES`] require.
    pub fn new(mut config: ChunkerConfig) -> Self {
        config.max_chunk_bytes = config
            .max_chunk_bytes
            .clamp(1 + 2 + MAX_PACKET_BYTES, MAX_CHUNK_BYTES);
        config.first_chunk_samples = config.first_chunk_samples.max(1);
        config.max_chunk_samples = config.max_chunk_samples.max(1);
        Self {
            config,
            current: Vec::new(),
            current_samples: 0,
            start: 0,
            emitted: 0,
        }
    }

    /// Adds one packet of `samples` 48 kHz samples. Returns the chunk it closed, if any.
    pub fn push(&mut self, packet: &[u8], samples: u32) -> Result<Option<Chunk>, ChunkError> {
        let index = 0;
        if packet.is_empty() || packet.len() > MAX_PACKET_BYTES {
            return Err(ChunkError::PacketSize {
                index,
                len: packet.len(),
            });
        }
        let toc = opus::packet_samples(packet)
            .map_err(|reason| ChunkError::BadPacket { index, reason })?;
        if toc != samples {
            return Err(ChunkError::DurationMismatch {
                given: samples,
                toc,
            });
        }
        // The first chunk closes once it holds its target; later ones before they would pass it.
        let over_time = if self.emitted == 0 {
            self.current_samples >= self.config.first_chunk_samples
        } else {
            self.current_samples.saturating_add(samples) > self.config.max_chunk_samples
        };
        let over_bytes = self.current.len() + 2 + packet.len() > self.config.max_chunk_bytes;
        let full = !self.current.is_empty() && (over_time || over_bytes);
        let closed = if full { self.take() } else { None };
        if self.current.is_empty() {
            self.current.push(CHUNK_FORMAT_VERSION);
        }
        let len = u16::try_from(packet.len()).map_err(|_| ChunkError::PacketSize {
            index,
            len: packet.len(),
        })?;
        self.current.extend_from_slice(&len.to_le_bytes());
        self.current.extend_from_slice(packet);
        self.current_samples += samples;
        Ok(closed)
    }

    /// Closes the last, partial chunk.
    pub fn finish(mut self) -> Option<Chunk> {
        self.take()
    }

    fn take(&mut self) -> Option<Chunk> {
        if self.current.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.current);
        let chunk = Chunk {
            id: ChunkId::of(&bytes),
            bytes,
            start: self.start,
            samples: self.current_samples,
        };
        self.start += u64::from(self.current_samples);
        self.current_samples = 0;
        self.emitted += 1;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A CELT fullband 20 ms stereo packet of `len` bytes.
    fn packet(len: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[0] = (31 << 3) | (1 << 2);
        p
    }

    fn chunk_all(packets: &[Vec<u8>], config: ChunkerConfig) -> Vec<Chunk> {
        let mut c = Chunker::new(config);
        let mut out = Vec::new();
        for p in packets {
            out.extend(c.push(p, 960).unwrap());
        }
        out.extend(c.finish());
        out
    }

    #[test]
    fn first_chunk_is_half_a_second_then_64k() {
        // 320 bytes per 20 ms = 128 kbit/s, 60 s of audio.
        let packets: Vec<_> = (0..3000).map(|i| packet(320, i as u8)).collect();
        let chunks = chunk_all(&packets, ChunkerConfig::default());
        assert_eq!(chunks[0].samples, 24_000);
        assert!(chunks[0].bytes.len() < 10_000);
        for c in &chunks[1..chunks.len() - 1] {
            assert!(c.bytes.len() <= MAX_CHUNK_BYTES);
            assert!(
                c.bytes.len() > MAX_CHUNK_BYTES - 400,
                "later chunks fill up: {c:?}"
            );
        }
        // Contiguous timeline, every packet kept once, in order.
        let mut start = 0;
        let mut got = Vec::new();
        for c in &chunks {
            assert_eq!(c.start, start);
            verify(&c.bytes, &c.id).unwrap();
            let parsed = parse_chunk(&c.bytes).unwrap();
            assert_eq!(parsed.samples, u64::from(c.samples));
            got.extend(parsed.packets.iter().map(|p| p.to_vec()));
            start += u64::from(c.samples);
        }
        assert_eq!(got, packets);
        assert_eq!(start, 3000 * 960);
    }

    #[test]
    fn low_bitrate_chunks_are_capped_in_time() {
        let packets: Vec<_> = (0..1000).map(|_| packet(40, 1)).collect();
        let chunks = chunk_all(&packets, ChunkerConfig::default());
        for c in &chunks[1..] {
            assert!(c.samples <= 240_000);
        }
        assert_eq!(chunks[1].samples, 240_000);
    }

    #[test]
    fn chunker_rejects_bad_packets() {
        let mut c = Chunker::new(ChunkerConfig::default());
        assert!(matches!(
            c.push(&[], 960),
            Err(ChunkError::PacketSize { .. })
        ));
        assert!(matches!(
            c.push(&packet(10, 0), 480),
            Err(ChunkError::DurationMismatch {
                given: 480,
                toc: 960
            })
        ));
        assert!(c.finish().is_none());
    }

    #[test]
    fn verify_reports_both_ids() {
        let id = ChunkId::of(b"abc");
        assert!(verify(b"abc", &id).is_ok());
        let err = verify(b"abd", &id).unwrap_err();
        assert_eq!(
            err,
            ChunkError::HashMismatch {
                expected: id,
                actual: ChunkId::of(b"abd")
            }
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_chunk(&[]), Err(ChunkError::Empty));
        assert_eq!(
            parse_chunk(&[2, 1, 0, 0xfc]),
            Err(ChunkError::UnknownVersion(2))
        );
        assert_eq!(parse_chunk(&[1]), Err(ChunkError::NoPackets));
        assert_eq!(
            parse_chunk(&[1, 5]),
            Err(ChunkError::Truncated {
                index: 0,
                offset: 1
            })
        );
        assert_eq!(
            parse_chunk(&[1, 5, 0, 0xfc]),
            Err(ChunkError::Truncated {
                index: 0,
                offset: 1
            })
        );
        assert_eq!(
            parse_chunk(&[1, 0, 0]),
            Err(ChunkError::PacketSize { index: 0, len: 0 })
        );
        assert!(matches!(
            parse_chunk(&[1, 1, 0, 0xfc, 1, 0, 0xff]),
            Err(ChunkError::BadPacket {
                index: 1,
                reason: PacketError::MissingFrameCount
            })
        ));
        assert!(matches!(
            parse_chunk(&vec![1; MAX_CHUNK_BYTES + 1]),
            Err(ChunkError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn chunking_round_trips(lens in prop::collection::vec(1usize..1500, 1..400),
                                first in 1u32..100_000, max_samples in 1u32..400_000) {
            let packets: Vec<_> = lens.iter().enumerate().map(|(i, &l)| packet(l, i as u8)).collect();
            let config = ChunkerConfig { first_chunk_samples: first, max_chunk_bytes: MAX_CHUNK_BYTES, max_chunk_samples: max_samples };
            let chunks = chunk_all(&packets, config);
            let mut got = Vec::new();
            let mut start = 0;
            for c in &chunks {
                prop_assert!(c.bytes.len() <= MAX_CHUNK_BYTES);
                prop_assert_eq!(c.start, start);
                let parsed = parse_chunk(&c.bytes).unwrap();
                prop_assert_eq!(parsed.samples, u64::from(c.samples));
                got.extend(parsed.packets.iter().map(|p| p.to_vec()));
                start += u64::from(c.samples);
            }
            prop_assert_eq!(got, packets);
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse_chunk(&bytes);
        }

        #[test]
        fn truncated_or_flipped_chunks_fail_verification(lens in prop::collection::vec(1usize..300, 1..50),
                                                          cut in any::<prop::sample::Index>(),
                                                          flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let packets: Vec<_> = lens.iter().map(|&l| packet(l, 7)).collect();
            let chunk = &chunk_all(&packets, ChunkerConfig::default())[0];
            let cut = cut.index(chunk.bytes.len());
            prop_assert!(verify(&chunk.bytes[..cut], &chunk.id).is_err());
            let mut flipped = chunk.bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 1 << bit;
            prop_assert!(verify(&flipped, &chunk.id).is_err());
        }
    }
}
