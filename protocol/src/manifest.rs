//! The manifest: everything needed to fetch, verify and decode a track, and nothing else.
//!
//! Canonical encoding (all integers little-endian, no padding, no trailing bytes):
//!
//! ```text
//! 8  magic "SHOALMF1"
//! 1  codec (1 = Opus)
//! 1  channels (1 or 2)
//! 2  pre-skip, in 48 kHz samples
//! 4  sample rate (48000)
//! 8  total samples: the track's playable length after pre-skip, 48 kHz
//! 4  chunk count (1..=65536)
//! per chunk, 48 bytes: 32 chunk id, 4 byte length, 8 start sample, 4 samples
//! ```
//!
//! Chunk start and sample counts are on the encoded stream's timeline (pre-skip included):
//! chunk 0 starts at 0 and each chunk starts where the previous one ended. The bytes are a
//! function of the audio alone, so `TrackId = BLAKE3(encode())`; title, artist and album live in
//! the catalog, not here. Decoding accepts only what `encode` produces.

use std::time::Duration;

use crate::chunk::MAX_CHUNK_BYTES;
use crate::ids::{ChunkId, TrackId};
use crate::opus::MAX_PACKET_SAMPLES;

/// Opus decodes at 48 kHz; every sample count in a manifest is at this rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// The most chunks one manifest may list (≥ 90 hours at 5 s per chunk); bounds decoding.
pub const MAX_CHUNKS: usize = 65_536;

const MAGIC: &[u8; 8] = b"SHOALMF1";
const HEADER_LEN: usize = 8 + 1 + 1 + 2 + 4 + 8 + 4;
const CHUNK_ENTRY_LEN: usize = 32 + 4 + 8 + 4;

/// The largest canonical manifest, in bytes.
pub const MAX_MANIFEST_BYTES: usize = HEADER_LEN + MAX_CHUNKS * CHUNK_ENTRY_LEN;

/// The audio codec of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus (RFC 6716), packets as produced by libopus.
    Opus,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::Opus => 1,
        }
    }
}

/// One chunk as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkInfo {
    /// BLAKE3 of the chunk bytes.
    pub id: ChunkId,
    /// Chunk length in bytes.
    pub len: u32,
    /// First sample on the encoded stream's timeline (48 kHz, pre-skip included).
    pub start: u64,
    /// Duration in 48 kHz samples.
    pub samples: u32,
}

impl ChunkInfo {
    /// One past the last sample of the chunk on the stream timeline.
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.samples)
    }
}

/// Why a manifest is invalid or its bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Fewer bytes than the header or than the chunk count needs.
    #[error("manifest truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes given.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// Bytes after the last chunk entry.
    #[error("manifest has {0} bytes after its last chunk")]
    TrailingBytes(usize),
    /// Not a Shoal manifest (or a future version).
    #[error("not a Shoal manifest (bad magic)")]
    BadMagic,
    /// A codec byte this build does not know.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// Channels other than 1 or 2.
    #[error("{0} channels; Shoal carries mono or stereo")]
    BadChannels(u8),
    /// A sample rate other than 48 kHz.
    #[error("sample rate {0} Hz; Opus manifests are at 48000 Hz")]
    BadSampleRate(u32),
    /// No chunks or more than [`MAX_CHUNKS`].
    #[error("{0} chunks; a manifest lists 1..={MAX_CHUNKS}")]
    BadChunkCount(usize),
    /// A chunk with impossible size or duration.
    #[error("chunk {index}: {reason}")]
    BadChunk {
        /// Chunk index.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Chunk timeline has a gap or overlap.
    #[error("chunk {index} starts at sample {start}, expected {expected}")]
    Discontinuous {
        /// Chunk index.
        index: usize,
        /// Its start.
        start: u64,
        /// Where the previous chunk ended.
        expected: u64,
    },
    /// The playable length does not fit the chunks' audio.
    #[error(
        "track length {total} + pre-skip {pre_skip} does not fit the {stream} samples of its chunks"
    )]
    BadLength {
        /// Declared playable samples.
        total: u64,
        /// Pre-skip samples.
        pre_skip: u16,
        /// Samples the chunks carry.
        stream: u64,
    },
}

/// Codec parameters, duration and chunk list of one track.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// The codec of every packet.
    pub codec: Codec,
    /// 1 (mono) or 2 (stereo).
    pub channels: u8,
    /// Samples the decoder must discard at the start (encoder look-ahead).
    pub pre_skip: u16,
    /// Output sample rate; always [`SAMPLE_RATE`] for Opus.
    pub sample_rate: u32,
    /// Playable length after pre-skip, in 48 kHz samples.
    pub total_samples: u64,
    /// Chunks in playback order.
    pub chunks: Vec<ChunkInfo>,
}

impl Manifest {
    /// Builds and validates an Opus manifest.
    pub fn new(
        channels: u8,
        pre_skip: u16,
        total_samples: u64,
        chunks: Vec<ChunkInfo>,
    ) -> Result<Self, ManifestError> {
        let m = Self {
            codec: Codec::Opus,
            channels,
            pre_skip,
            sample_rate: SAMPLE_RATE,
            total_samples,
            chunks,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks every invariant that [`Manifest::decode`] enforces.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !(1..=2).contains(&self.channels) {
            return Err(ManifestError::BadChannels(self.channels));
        }
        if self.sample_rate != SAMPLE_RATE {
            return Err(ManifestError::BadSampleRate(self.sample_rate));
        }
        if self.chunks.is_empty() || self.chunks.len() > MAX_CHUNKS {
            return Err(ManifestError::BadChunkCount(self.chunks.len()));
        }
        let mut expected = 0u64;
        for (index, c) in self.chunks.iter().enumerate() {
            // Version byte + 2-byte length + at least one packet byte.
            if c.len < 4 || c.len as usize > MAX_CHUNK_BYTES {
                return Err(ManifestError::BadChunk {
                    index,
                    reason: "byte length out of range",
                });
            }
            if c.samples == 0 {
                return Err(ManifestError::BadChunk {
                    index,
                    reason: "zero duration",
                });
            }
            // Each packet takes ≥ 3 bytes in the chunk and lasts ≤ 120 ms.
            if u64::from(c.samples) > u64::from(c.len) / 3 * u64::from(MAX_PACKET_SAMPLES) {
                return Err(ManifestError::BadChunk {
                    index,
                    reason: "more audio than its bytes can hold",
                });
            }
            if c.start != expected {
                return Err(ManifestError::Discontinuous {
                    index,
                    start: c.start,
                    expected,
                });
            }
            expected = c.end();
        }
        let needed = self.total_samples + u64::from(self.pre_skip);
        // Encoders pad the end to whole frames and flush their look-ahead: allow that much slack.
        let slack = 2 * u64::from(MAX_PACKET_SAMPLES) + u64::from(self.pre_skip);
        if self.total_samples == 0 || needed > expected || expected - needed > slack {
            return Err(ManifestError::BadLength {
                total: self.total_samples,
                pre_skip: self.pre_skip,
                stream: expected,
            });
        }
        Ok(())
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.chunks.len() * CHUNK_ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.push(self.codec.to_byte());
        out.push(self.channels);
        out.extend_from_slice(&self.pre_skip.to_le_bytes());
        out.extend_from_slice(&self.sample_rate.to_le_bytes());
        out.extend_from_slice(&self.total_samples.to_le_bytes());
        let count = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.id.as_bytes());
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.start.to_le_bytes());
            out.extend_from_slice(&c.samples.to_le_bytes());
        }
        out
    }

    /// Decodes and validates canonical bytes. Never panics; allocates only for the chunk
    /// count the bytes actually hold.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader(bytes);
        let truncated = ManifestError::Truncated {
            len: bytes.len(),
            need: HEADER_LEN,
        };
        let magic = r.take::<8>().ok_or_else(|| truncated.clone())?;
        if &magic != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let [codec, channels] = r.take::<2>().ok_or_else(|| truncated.clone())?;
        let codec = match codec {
            1 => Codec::Opus,
            other => return Err(ManifestError::UnknownCodec(other)),
        };
        let pre_skip = u16::from_le_bytes(r.take().ok_or_else(|| truncated.clone())?);
        let sample_rate = u32::from_le_bytes(r.take().ok_or_else(|| truncated.clone())?);
        let total_samples = u64::from_le_bytes(r.take().ok_or_else(|| truncated.clone())?);
        let count = u32::from_le_bytes(r.take().ok_or(truncated)?) as usize;
        if count == 0 || count > MAX_CHUNKS {
            return Err(ManifestError::BadChunkCount(count));
        }
        let need = HEADER_LEN + count * CHUNK_ENTRY_LEN;
        match bytes.len().cmp(&need) {
            std::cmp::Ordering::Less => {
                return Err(ManifestError::Truncated {
                    len: bytes.len(),
                    need,
                });
            }
            std::cmp::Ordering::Greater => {
                return Err(ManifestError::TrailingBytes(bytes.len() - need));
            }
            std::cmp::Ordering::Equal => {}
        }
        let mut chunks = Vec::with_capacity(count);
        for _ in 0..count {
            // Length was checked above, so these reads succeed; stay panic-free regardless.
            let short = || ManifestError::Truncated {
                len: bytes.len(),
                need,
            };
            let id = ChunkId::from_bytes(r.take().ok_or_else(short)?);
            let len = u32::from_le_bytes(r.take().ok_or_else(short)?);
            let start = u64::from_le_bytes(r.take().ok_or_else(short)?);
            let samples = u32::from_le_bytes(r.take().ok_or_else(short)?);
            chunks.push(ChunkInfo {
                id,
                len,
                start,
                samples,
            });
        }
        let m = Self {
            codec,
            channels,
            pre_skip,
            sample_rate,
            total_samples,
            chunks,
        };
        m.validate()?;
        Ok(m)
    }

    /// The track's id: BLAKE3 of the canonical bytes.
    pub fn track_id(&self) -> TrackId {
        TrackId::of(&self.encode())
    }

    /// Playable duration.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.total_samples * 1_000_000 / u64::from(SAMPLE_RATE))
    }

    /// Sum of all chunk sizes.
    pub fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Index of the chunk that holds playback position `sample` (after pre-skip), or `None`
    /// past the end.
    pub fn chunk_at(&self, sample: u64) -> Option<usize> {
        if sample >= self.total_samples {
            return None;
        }
        let stream = sample + u64::from(self.pre_skip);
        // First chunk whose end is past `stream`.
        let i = self.chunks.partition_point(|c| c.end() <= stream);
        (i < self.chunks.len()).then_some(i)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid manifest strategy: 1..200 chunks with consistent timing.
    pub(crate) fn arb_manifest() -> impl Strategy<Value = Manifest> {
        (
            1u8..=2,
            0u16..900,
            prop::collection::vec(
                (any::<[u8; 32]>(), 200u32..=65_536, 960u32..=240_000),
                1..200,
            ),
            0u64..960,
        )
            .prop_map(|(channels, pre_skip, raw, pad)| {
                let mut start = 0;
                let chunks: Vec<_> = raw
                    .into_iter()
                    .map(|(id, len, samples)| {
                        let c = ChunkInfo {
                            id: ChunkId::from_bytes(id),
                            len,
                            start,
                            samples,
                        };
                        start += u64::from(samples);
                        c
                    })
                    .collect();
                let total = (start - u64::from(pre_skip)).saturating_sub(pad).max(1);
                Manifest::new(channels, pre_skip, total, chunks).unwrap()
            })
    }

    fn sample() -> Manifest {
        let chunks = vec![
            ChunkInfo {
                id: ChunkId::of(b"a"),
                len: 4000,
                start: 0,
                samples: 24_000,
            },
            ChunkInfo {
                id: ChunkId::of(b"b"),
                len: 65_000,
                start: 24_000,
                samples: 192_000,
            },
        ];
        Manifest::new(2, 312, 215_000, chunks).unwrap()
    }

    #[test]
    fn encode_layout_and_track_id() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 2 * CHUNK_ENTRY_LEN);
        assert_eq!(&bytes[..8], b"SHOALMF1");
        assert_eq!(m.track_id(), TrackId::of(&bytes));
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.duration(), Duration::from_micros(4_479_166));
        assert_eq!(m.total_bytes(), 69_000);
    }

    #[test]
    fn chunk_at_maps_positions() {
        let m = sample();
        assert_eq!(m.chunk_at(0), Some(0));
        assert_eq!(m.chunk_at(24_000 - 312 - 1), Some(0));
        assert_eq!(m.chunk_at(24_000 - 312), Some(1));
        assert_eq!(m.chunk_at(214_999), Some(1));
        assert_eq!(m.chunk_at(215_000), None);
    }

    #[test]
    fn invalid_manifests_are_rejected() {
        let c = |start, samples| ChunkInfo {
            id: ChunkId::of(b"x"),
            len: 1000,
            start,
            samples,
        };
        assert_eq!(
            Manifest::new(3, 0, 10, vec![c(0, 960)]),
            Err(ManifestError::BadChannels(3))
        );
        assert_eq!(
            Manifest::new(2, 0, 10, vec![]),
            Err(ManifestError::BadChunkCount(0))
        );
        assert!(matches!(
            Manifest::new(2, 0, 1000, vec![c(0, 960), c(961, 960)]),
            Err(ManifestError::Discontinuous { index: 1, .. })
        ));
        assert!(matches!(
            Manifest::new(2, 0, 0, vec![c(0, 960)]),
            Err(ManifestError::BadLength { .. })
        ));
        assert!(matches!(
            Manifest::new(2, 0, 961, vec![c(0, 960)]),
            Err(ManifestError::BadLength { .. })
        ));
        assert!(matches!(
            Manifest::new(
                2,
                0,
                10,
                vec![ChunkInfo {
                    len: 3,
                    ..c(0, 960)
                }]
            ),
            Err(ManifestError::BadChunk { index: 0, .. })
        ));
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::TrailingBytes(1))
        );
        bytes[0] = b'X';
        assert_eq!(Manifest::decode(&bytes), Err(ManifestError::BadMagic));
    }

    #[test]
    fn huge_chunk_count_is_rejected_before_allocating() {
        let mut bytes = sample().encode();
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::BadChunkCount(u32::MAX as usize))
        );
        bytes[24..28].copy_from_slice(&(MAX_CHUNKS as u32).to_le_bytes());
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_manifest()) {
            let bytes = m.encode();
            let back = Manifest::decode(&bytes).unwrap();
            prop_assert_eq!(back.track_id(), m.track_id());
            prop_assert_eq!(back, m);
        }

        #[test]
        fn truncation_is_an_error(m in arb_manifest(), cut in any::<prop::sample::Index>()) {
            let bytes = m.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(Manifest::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn bit_flips_never_panic_and_change_the_id(m in arb_manifest(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = m.encode();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // A flip either fails validation or gives a different manifest with a different id.
            if let Ok(other) = Manifest::decode(&bytes) {
                prop_assert_ne!(other.track_id(), m.track_id());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Manifest::decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Manifest::decode(&with_magic);
        }
    }
}
