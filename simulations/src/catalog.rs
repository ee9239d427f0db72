//! Owns the synthetic catalog the simulated origin serves: per track a duration (a fixed draw
//! from the scenario's distribution), chunks laid out like the real chunker's (a short first
//! chunk, then chunks of a few seconds at the scenario's bitrate), chunk bytes generated
//! deterministically from (track, index) so they need no storage, and the canonical manifest
//! whose ids are the BLAKE3 of those bytes — so the real cores verify real hashes.
//! Tracks are materialised on first use.

use std::collections::hash_map::Entry;
use std::rc::Rc;
use std::sync::Arc;

use shoal_protocol::chunk::MAX_CHUNK_BYTES;
use shoal_protocol::opus::MAX_PACKET_SAMPLES;
use shoal_protocol::{ChunkId, ChunkInfo, Manifest, SAMPLE_RATE, TrackId};

use shoal_peer::core::ManifestPool;

use crate::rng::{IdMap, Rng};
use crate::scenario::Dist;

/// Duration of the first chunk, ms (the real chunker's ≈ 0.5 s start chunk).
pub const FIRST_CHUNK_MS: u64 = 500;
/// Duration of later chunks, ms (a few seconds, ≤ 64 KiB at any sane bitrate).
pub const CHUNK_MS: u64 = 3000;

/// Bits of a chunk's index in the catalog's packed chunk places: 4,096 chunks, more than the
/// longest track has (3 hours, 3,601 chunks).
const PLACE_INDEX_BITS: u32 = 12;
/// The largest `catalog.payload_scale` at `bitrate_kbps` that leaves a full chunk the bytes
/// its audio needs as Opus packets (3 bytes per 120 ms packet, the manifest's rule), with one
/// byte of slack for rounding.
pub fn max_payload_scale(bitrate_kbps: f64) -> f64 {
    let modelled =
        (bitrate_kbps * 1000.0 / 8.0 * CHUNK_MS as f64 / 1000.0).min(MAX_CHUNK_BYTES as f64);
    let needed = 3.0 * (CHUNK_MS as f64 / 120.0).ceil() + 1.0;
    modelled / needed
}

/// Opus pre-skip written in synthetic manifests (libopus' usual 312 samples).
pub const PRE_SKIP: u16 = 312;

/// Duration of catalog track `track`, seconds: a fixed draw per track (no per-track storage),
/// shared by the listening model and the synthetic catalog.
pub fn track_duration_s(seed: u64, dist: &Dist, track: u32) -> f64 {
    let mut r = Rng::new(seed ^ 0x7472_6163_6b73, u64::from(track));
    dist.sample(&mut r).clamp(1.0, 3.0 * 3600.0)
}

/// One materialised track.
#[derive(Debug, Clone)]
pub struct SynthTrack {
    /// Catalog index.
    pub index: u32,
    /// Its id (BLAKE3 of the canonical manifest).
    pub id: TrackId,
    /// The decoded manifest, the very one the peer cores share through the run's
    /// [`ManifestPool`] (one chunk list per track in the whole run, not one here and one
    /// there).
    pub decoded: Arc<Manifest>,
}

impl SynthTrack {
    /// The manifest's chunk list.
    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.decoded.chunks
    }

    /// The canonical manifest bytes (they hash to [`SynthTrack::id`]), encoded when asked:
    /// kept, they were an eighth of a run's heap, and a manifest is read from "disk" once per
    /// play at most.
    pub fn manifest(&self) -> Vec<u8> {
        self.decoded.encode()
    }
}

/// The catalog of one run.
#[derive(Debug)]
pub struct SynthCatalog {
    seed: u64,
    duration: Dist,
    bytes_per_s: f64,
    tracks: IdMap<u32, Rc<SynthTrack>>,
    by_id: IdMap<TrackId, u32>,
    /// Where a chunk is, by the first 4 bytes of its id, packed in 4 bytes (`PLACE_INDEX_BITS`
    /// of chunk index under the track's number in `materialised`): 8 bytes an entry instead
    /// of 40, for the millions of chunks of a large run. A chunk whose prefix is already taken
    /// (ids are BLAKE3 hashes: thousands of times among the 10^7 chunks of a 100,000-peer run)
    /// or whose place does not fit goes to `by_chunk_overflow`, under its whole id, as
    /// (catalog index, chunk index); a lookup checks the whole id either way.
    by_chunk: IdMap<u32, u32>,
    by_chunk_overflow: IdMap<ChunkId, (u32, u32)>,
    /// Materialised tracks in the order they were made.
    materialised: Vec<Rc<SynthTrack>>,
    /// Shares decoded manifests with the peer cores.
    pool: ManifestPool,
    /// Random filler shared by all chunks (64 KiB, from the seed).
    block: Vec<u8>,
    /// Payloads carry 1/scale of the bytes they model (`catalog.payload_scale`).
    scale: u32,
}

impl SynthCatalog {
    /// A catalog whose track durations follow `duration` (seconds) at `bitrate_kbps`, with
    /// payloads `scale` times smaller than the bytes they model.
    pub fn new(seed: u64, duration: Dist, bitrate_kbps: f64, scale: u32) -> Self {
        Self {
            scale: scale.max(1),
            seed,
            duration,
            bytes_per_s: bitrate_kbps * 1000.0 / 8.0,
            tracks: IdMap::default(),
            by_id: IdMap::default(),
            by_chunk: IdMap::default(),
            by_chunk_overflow: IdMap::default(),
            materialised: Vec::new(),
            pool: ManifestPool::new(),
            block: {
                let mut b = vec![0u8; MAX_CHUNK_BYTES];
                let mut h = blake3::Hasher::new();
                h.update(b"shoal-sim synthetic audio");
                h.update(&seed.to_le_bytes());
                h.finalize_xof().fill(&mut b);
                b
            },
        }
    }

    /// The same catalog, sharing decoded manifests with the cores that use `pool`.
    pub fn with_pool(mut self, pool: ManifestPool) -> Self {
        self.pool = pool;
        self
    }

    fn prefix(id: &ChunkId) -> u32 {
        let mut w = [0u8; 4];
        w.copy_from_slice(&id.as_bytes()[..4]);
        u32::from_le_bytes(w)
    }

    /// Bytes of chunk `index` of track `track` (`len` bytes): the version byte, a 16-byte
    /// header unique to (track, index), then a slice of a per-run random block. Copying is
    /// cheap; the header makes every chunk's id distinct.
    pub fn chunk_bytes(&self, track: u32, index: u32, len: u32) -> Vec<u8> {
        let len = len.max(1) as usize;
        let mut v = Vec::with_capacity(len);
        v.push(1u8);
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&self.seed.to_le_bytes());
        header[8..12].copy_from_slice(&track.to_le_bytes());
        header[12..].copy_from_slice(&index.to_le_bytes());
        v.extend_from_slice(&header[..header.len().min(len - 1)]);
        let rest = len - v.len();
        // Rotate the block by the chunk so equal-length chunks differ beyond the header too.
        let off = (crate::rng::mix64(u64::from(track) << 32 | u64::from(index)) as usize)
            % self.block.len();
        let mut need = rest;
        let mut at = off;
        while need > 0 {
            let n = need.min(self.block.len() - at);
            v.extend_from_slice(&self.block[at..at + n]);
            need -= n;
            at = 0;
        }
        v
    }

    /// Payload bytes of a chunk that models `modelled` bytes of `samples` samples:
    /// `modelled / scale`, rounded, never below the 17 bytes that make its id unique nor below
    /// what the manifest requires of that much audio (3 bytes per 120 ms packet; validation
    /// keeps full chunks above that floor, so it only lifts short last chunks).
    pub fn payload_len(&self, modelled: u32, samples: u32) -> u32 {
        let scaled = if self.scale == 1 {
            modelled
        } else {
            ((f64::from(modelled) / f64::from(self.scale)).round() as u32).max(17)
        };
        scaled.max(3 * samples.div_ceil(MAX_PACKET_SAMPLES))
    }

    /// Payloads carry 1/`scale()` of the bytes they model.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Track `track`, materialised on first use (hashes all its chunks once).
    pub fn track(&mut self, track: u32) -> Rc<SynthTrack> {
        if let Some(t) = self.tracks.get(&track) {
            return Rc::clone(t);
        }
        let dur_ms = (track_duration_s(self.seed, &self.duration, track) * 1000.0) as u64;
        let mut chunks = Vec::new();
        let mut start = 0u64;
        let mut done_ms = 0u64;
        while done_ms < dur_ms {
            let ms = if chunks.is_empty() {
                FIRST_CHUNK_MS
            } else {
                CHUNK_MS
            }
            .min(dur_ms - done_ms);
            let samples = (ms * u64::from(SAMPLE_RATE) / 1000).max(1) as u32;
            let modelled =
                ((self.bytes_per_s * ms as f64 / 1000.0) as u32).clamp(64, MAX_CHUNK_BYTES as u32);
            let len = self.payload_len(modelled, samples);
            let index = chunks.len() as u32;
            let id = ChunkId::of(&self.chunk_bytes(track, index, len));
            chunks.push(ChunkInfo {
                id,
                len,
                start,
                samples,
            });
            start += u64::from(samples);
            done_ms += ms;
        }
        let total = start.saturating_sub(u64::from(PRE_SKIP)).max(1);
        let bytes = Manifest::new(2, PRE_SKIP, total, chunks)
            .expect("synthetic manifests satisfy the manifest invariants (tested)")
            .encode();
        let (id, decoded) = self
            .pool
            .share(&bytes)
            .expect("a manifest decodes from its own encoding (tested)");
        let t = Rc::new(SynthTrack {
            index: track,
            id,
            decoded,
        });
        self.by_id.insert(t.id, track);
        let number = self.materialised.len() as u64;
        for (i, c) in t.chunks().iter().enumerate() {
            let place = u32::try_from(number << PLACE_INDEX_BITS | i as u64)
                .ok()
                .filter(|_| i < 1 << PLACE_INDEX_BITS);
            match (place, self.by_chunk.entry(Self::prefix(&c.id))) {
                (Some(place), Entry::Vacant(e)) => {
                    e.insert(place);
                }
                _ => {
                    self.by_chunk_overflow.insert(c.id, (track, i as u32));
                }
            }
        }
        self.materialised.push(Rc::clone(&t));
        self.tracks.insert(track, Rc::clone(&t));
        t
    }

    /// The catalog index of a materialised track id.
    pub fn index_of(&self, id: &TrackId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The (catalog index, chunk index) of a chunk of a materialised track, by id.
    pub fn locate(&self, id: &ChunkId) -> Option<(u32, u32)> {
        self.find(id).map(|(track, index, _)| (track, index))
    }

    /// Length of a chunk of a materialised track.
    pub fn chunk_len(&self, id: &ChunkId) -> Option<u32> {
        self.find(id).map(|(_, _, len)| len)
    }

    /// (catalog index, chunk index, length) of a chunk of a materialised track.
    fn find(&self, id: &ChunkId) -> Option<(u32, u32, u32)> {
        let packed = self.by_chunk.get(&Self::prefix(id)).and_then(|&place| {
            let t = self
                .materialised
                .get((place >> PLACE_INDEX_BITS) as usize)?;
            let index = place & ((1 << PLACE_INDEX_BITS) - 1);
            let c = t.chunks().get(index as usize)?;
            (c.id == *id).then_some((t.index, index, c.len))
        });
        packed.or_else(|| {
            let &(track, index) = self.by_chunk_overflow.get(id)?;
            let c = self.tracks.get(&track)?.chunks().get(index as usize)?;
            (c.id == *id).then_some((track, index, c.len))
        })
    }

    /// Bytes of a chunk of a materialised track, by id.
    pub fn bytes_of_chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let (track, index, len) = self.find(id)?;
        Some(self.chunk_bytes(track, index, len))
    }

    /// Manifest bytes of a materialised track, by id.
    pub fn manifest_of(&self, id: &TrackId) -> Option<Vec<u8>> {
        let t = self.tracks.get(self.by_id.get(id)?)?;
        Some(t.manifest())
    }

    /// Tracks materialised so far.
    pub fn materialised(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_chunk_whose_id_prefix_is_taken_is_still_found() {
        let d = Dist::Const(20.0);
        // Track 1's first chunk id, from a twin catalog (same seed, same bytes).
        let b0 = SynthCatalog::new(9, d, 160.0, 1).track(1).chunks()[0].id;
        let mut c = SynthCatalog::new(9, d, 160.0, 1);
        let a0 = c.track(0).chunks()[0].id;
        // Pretend track 0's first chunk shares track 1's first 4 id bytes.
        c.by_chunk.remove(&SynthCatalog::prefix(&a0));
        c.by_chunk.insert(SynthCatalog::prefix(&b0), 0);
        c.by_chunk_overflow.insert(a0, (0, 0));
        c.track(1);
        assert_eq!(
            c.by_chunk_overflow.get(&b0),
            Some(&(1, 0)),
            "collision overflowed"
        );
        assert_eq!(c.locate(&b0), Some((1, 0)));
        assert_eq!(c.locate(&a0), Some((0, 0)));
        let bytes = c.bytes_of_chunk(&b0).expect("found");
        assert_eq!(ChunkId::of(&bytes), b0);
        assert_eq!(c.locate(&ChunkId::of(b"not in the catalog")), None);
    }

    #[test]
    fn every_chunk_of_the_longest_track_has_a_packed_place() {
        // Durations are capped at 3 hours: 0.5 s + 3,600 × 3 s, 3,601 chunks, under 2^12.
        let mut c = SynthCatalog::new(9, Dist::Const(1e9), 160.0, 256);
        c.track(5);
        let t = c.track(7);
        assert_eq!(t.chunks().len(), 3601);
        for (i, ch) in t.chunks().iter().enumerate() {
            assert_eq!(c.locate(&ch.id), Some((7, i as u32)), "chunk {i}");
        }
        assert!(c.by_chunk_overflow.is_empty());
    }

    use super::*;

    #[test]
    fn manifests_are_valid_and_chunks_hash_to_their_ids() {
        for scale in [1, 64] {
            valid_at(scale, 160.0);
        }
    }

    #[test]
    fn the_largest_allowed_payload_scale_still_holds_the_audio() {
        // The limit validation enforces, at low, usual and clamped (> 64 KiB) bitrates; each
        // scale here used to build manifests the manifest check refused (a panic at 1024).
        for kbps in [6.5, 32.0, 160.0, 510.0] {
            let max = max_payload_scale(kbps).floor().clamp(1.0, 1024.0) as u32;
            valid_at(1, kbps);
            valid_at(max, kbps);
        }
        // Below Opus' lowest rate, unscaled chunks are lifted to what their audio needs.
        valid_at(1, 0.1);
        assert!(
            max_payload_scale(160.0) < 1024.0,
            "1024 is refused at 160 kbps"
        );
        assert!(
            max_payload_scale(160.0) >= 256.0,
            "the default scale is allowed"
        );
    }

    #[test]
    fn scaled_payloads_model_the_same_bytes() {
        let d = Dist::Lognormal {
            mu: 225f64.ln(),
            sigma: 0.3,
        };
        let mut full = SynthCatalog::new(5, d, 160.0, 1);
        let mut tiny = SynthCatalog::new(5, d, 160.0, 64);
        let (a, b) = (full.track(3), tiny.track(3));
        assert_eq!(a.chunks().len(), b.chunks().len(), "same chunk layout");
        for (x, y) in a.chunks().iter().zip(b.chunks()) {
            assert_eq!((x.start, x.samples), (y.start, y.samples));
            if x.len < 17 * 64 {
                assert_eq!(y.len, 17, "the shortest payload that stays unique");
                continue;
            }
            let modelled = f64::from(y.len) * 64.0;
            assert!((modelled - f64::from(x.len)).abs() <= 32.0, "{x:?} {y:?}");
        }
    }

    fn valid_at(scale: u32, kbps: f64) {
        let mut c = SynthCatalog::new(
            5,
            Dist::Lognormal {
                mu: 225f64.ln(),
                sigma: 0.3,
            },
            kbps,
            scale,
        );
        for track in [0u32, 1, 77, 99_999] {
            let t = c.track(track);
            let bytes = t.manifest();
            assert_eq!(
                TrackId::of(&bytes),
                t.id,
                "bytes encoded on demand are the canonical ones"
            );
            let m = Manifest::decode(&bytes).expect("valid manifest");
            assert_eq!(c.index_of(&t.id), Some(track));
            let dur = m.duration().as_secs_f64();
            let want = track_duration_s(5, &c.duration, track);
            assert!((dur - want).abs() < 0.1, "{dur} vs {want}");
            assert!(t.chunks()[0].len < t.chunks()[1].len, "short first chunk");
            for (i, ch) in t.chunks().iter().enumerate() {
                let b = c.chunk_bytes(track, i as u32, ch.len);
                assert!(ch.id.matches(&b));
                assert_eq!(c.bytes_of_chunk(&ch.id), Some(b));
            }
        }
        assert_eq!(c.materialised(), 4);
        // Different tracks never share chunk ids.
        let a = c.track(0);
        let b = c.track(1);
        assert_ne!(a.chunks()[0].id, b.chunks()[0].id);
    }
}
