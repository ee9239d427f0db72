//! Decoding a track's chunks to PCM with libopus, honouring the manifest's pre-skip and the
//! codec's pre-roll, so playback can start at any position and lines up with the source sample
//! for sample.

use shoal_protocol::{Manifest, parse_chunk};

/// Samples decoded and discarded before a seek point so the decoder converges (RFC 7845 §4.6:
/// at least 80 ms).
pub const PRE_ROLL: u64 = 3840;

/// Why chunks could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The start position is at or past the end of the track.
    #[error("start position {start_s:.3} s is past the end of the track ({duration_s:.3} s)")]
    StartPastEnd {
        /// Requested start, seconds.
        start_s: f64,
        /// Track duration, seconds.
        duration_s: f64,
    },
    /// Chunk bytes that are not a valid chunk (they were verified, so the manifest is wrong).
    #[error("chunk {index}: {reason}")]
    BadChunk {
        /// Chunk index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Chunks handed over out of order.
    #[error("expected chunk {expected}, got chunk {got}")]
    OutOfOrder {
        /// The chunk the decoder needs next.
        expected: usize,
        /// The chunk it was given.
        got: usize,
    },
    /// libopus refused a packet or the configuration.
    #[error("opus: {0}")]
    Opus(String),
}

/// Turns a track's chunks, in order from [`TrackDecoder::first_chunk`], into interleaved f32
/// PCM at 48 kHz that starts exactly at the requested position and ends at the track's end.
pub struct TrackDecoder {
    decoder: opus::Decoder,
    channels: usize,
    /// Stream position (pre-skip included) of the next sample the decoder produces.
    pos: u64,
    /// First stream position that is output.
    out_from: u64,
    /// One past the last stream position that is output.
    out_to: u64,
    next_chunk: usize,
    chunk_count: usize,
    chunk_samples: Vec<u32>,
    pcm: Vec<f32>,
}

impl std::fmt::Debug for TrackDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackDecoder")
            .field("channels", &self.channels)
            .field("pos", &self.pos)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl TrackDecoder {
    /// A decoder for `manifest` that outputs from `start_sample` (48 kHz, 0 = the beginning).
    pub fn new(manifest: &Manifest, start_sample: u64) -> Result<Self, DecodeError> {
        if start_sample >= manifest.total_samples {
            return Err(DecodeError::StartPastEnd {
                start_s: start_sample as f64 / 48_000.0,
                duration_s: manifest.total_samples as f64 / 48_000.0,
            });
        }
        let pre_skip = u64::from(manifest.pre_skip);
        let out_from = start_sample + pre_skip;
        // Decode from the beginning, or from PRE_ROLL before the seek point.
        let decode_from = if start_sample == 0 {
            0
        } else {
            out_from.saturating_sub(PRE_ROLL.max(pre_skip))
        };
        let first = manifest.chunks.partition_point(|c| c.end() <= decode_from);
        let ch = match manifest.channels {
            1 => opus::Channels::Mono,
            _ => opus::Channels::Stereo,
        };
        let decoder =
            opus::Decoder::new(48_000, ch).map_err(|e| DecodeError::Opus(e.to_string()))?;
        let channels = usize::from(manifest.channels);
        Ok(Self {
            decoder,
            channels,
            pos: manifest.chunks.get(first).map_or(0, |c| c.start),
            out_from,
            out_to: pre_skip + manifest.total_samples,
            next_chunk: first,
            chunk_count: manifest.chunks.len(),
            chunk_samples: manifest.chunks.iter().map(|c| c.samples).collect(),
            pcm: vec![0.0; 5760 * channels],
        })
    }

    /// Channels of the output (1 or 2).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The first chunk to hand to [`TrackDecoder::decode_chunk`].
    pub fn first_chunk(&self) -> usize {
        self.next_chunk
    }

    /// The chunk the decoder needs next, or `None` when the track is complete.
    pub fn next_chunk(&self) -> Option<usize> {
        (self.next_chunk < self.chunk_count && self.pos < self.out_to).then_some(self.next_chunk)
    }

    /// Decodes chunk `index` (already verified against its id), appending output samples.
    pub fn decode_chunk(
        &mut self,
        index: usize,
        bytes: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        if index != self.next_chunk {
            return Err(DecodeError::OutOfOrder {
                expected: self.next_chunk,
                got: index,
            });
        }
        let parsed = parse_chunk(bytes).map_err(|e| DecodeError::BadChunk {
            index,
            reason: e.to_string(),
        })?;
        let declared = self.chunk_samples.get(index).copied().unwrap_or(0);
        if parsed.samples != u64::from(declared) {
            return Err(DecodeError::BadChunk {
                index,
                reason: format!("holds {} samples, manifest says {declared}", parsed.samples),
            });
        }
        for packet in parsed.packets {
            let n = self
                .decoder
                .decode_float(packet, &mut self.pcm, false)
                .map_err(|e| DecodeError::Opus(e.to_string()))? as u64;
            let (from, to) = (self.pos, self.pos + n);
            let keep_from = from.max(self.out_from).min(to);
            let keep_to = to.min(self.out_to).max(keep_from);
            let a = (keep_from - from) as usize * self.channels;
            let b = (keep_to - from) as usize * self.channels;
            out.extend_from_slice(&self.pcm[a..b]);
            self.pos = to;
        }
        self.next_chunk += 1;
        Ok(())
    }
}
