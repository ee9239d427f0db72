//! Encoding 48 kHz PCM to Opus (libopus, 20 ms frames) and grouping the packets into chunks
//! with the protocol's chunker, streaming: it holds one frame and one chunk at a time.

use shoal_protocol::{Chunk, Chunker, ChunkerConfig, Manifest};

use super::ImportError;

/// Samples per channel in one 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;

/// Turns a PCM stream into chunks and, at the end, the manifest.
pub struct TrackEncoder {
    encoder: opus::Encoder,
    channels: usize,
    chunker: Chunker,
    frame: Vec<f32>,
    filled: usize,
    packet: Vec<u8>,
    pre_skip: u16,
    source_frames: u64,
    encoded_frames: u64,
    infos: Vec<shoal_protocol::ChunkInfo>,
}

impl TrackEncoder {
    /// An encoder for `channels` (1 or 2) at `bitrate` bits/s and libopus `complexity` (0–10).
    pub fn new(channels: usize, bitrate: u32, complexity: u8) -> Result<Self, ImportError> {
        let ch = match channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => return Err(ImportError::Channels(n)),
        };
        let codec = |e: opus::Error| ImportError::Codec(e.to_string());
        let mut encoder =
            opus::Encoder::new(48_000, ch, opus::Application::Audio).map_err(codec)?;
        let bits = i32::try_from(bitrate)
            .map_err(|_| ImportError::Codec(format!("bitrate {bitrate} too high")))?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bits))
            .map_err(codec)?;
        encoder
            .set_complexity(i32::from(complexity.min(10)))
            .map_err(codec)?;
        // Unconstrained VBR, as opusenc uses: constrained VBR starves quiet passages after loud
        // ones and costs over 1 dB of SNR on orchestral music.
        encoder.set_vbr(true).map_err(codec)?;
        encoder.set_vbr_constraint(false).map_err(codec)?;
        let lookahead = encoder.get_lookahead().map_err(codec)?;
        let pre_skip = u16::try_from(lookahead)
            .map_err(|_| ImportError::Codec(format!("look-ahead {lookahead}")))?;
        Ok(Self {
            encoder,
            channels,
            chunker: Chunker::new(ChunkerConfig::default()),
            frame: vec![0.0; FRAME * channels],
            filled: 0,
            packet: vec![0; 4000],
            pre_skip,
            source_frames: 0,
            encoded_frames: 0,
            infos: Vec::new(),
        })
    }

    /// The encoder's look-ahead, which becomes the manifest's pre-skip.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Frames of source audio taken so far.
    pub fn source_frames(&self) -> u64 {
        self.source_frames
    }

    /// Encodes interleaved 48 kHz samples; each finished chunk goes to `sink`.
    pub fn push(
        &mut self,
        mut pcm: &[f32],
        sink: &mut dyn FnMut(&Chunk) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        self.source_frames += (pcm.len() / self.channels) as u64;
        while !pcm.is_empty() {
            let take = (self.frame.len() - self.filled).min(pcm.len());
            self.frame[self.filled..self.filled + take].copy_from_slice(&pcm[..take]);
            self.filled += take;
            pcm = &pcm[take..];
            if self.filled == self.frame.len() {
                self.encode_frame(sink)?;
            }
        }
        Ok(())
    }

    fn encode_frame(
        &mut self,
        sink: &mut dyn FnMut(&Chunk) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let len = self
            .encoder
            .encode_float(&self.frame, &mut self.packet)
            .map_err(|e| ImportError::Codec(e.to_string()))?;
        self.filled = 0;
        self.encoded_frames += FRAME as u64;
        let samples = FRAME as u32;
        if let Some(chunk) = self
            .chunker
            .push(&self.packet[..len], samples)
            .map_err(|e| ImportError::Codec(e.to_string()))?
        {
            self.emit(chunk, sink)?;
        }
        Ok(())
    }

    fn emit(
        &mut self,
        chunk: Chunk,
        sink: &mut dyn FnMut(&Chunk) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        if self.infos.len() >= shoal_protocol::manifest::MAX_CHUNKS {
            return Err(ImportError::TooLong);
        }
        sink(&chunk)?;
        self.infos.push(chunk.info());
        Ok(())
    }

    /// Flushes the encoder's look-ahead with silence, closes the last chunk and builds the
    /// manifest. Errors on a track without audio.
    pub fn finish(
        mut self,
        sink: &mut dyn FnMut(&Chunk) -> Result<(), ImportError>,
    ) -> Result<Manifest, ImportError> {
        if self.source_frames == 0 {
            return Err(ImportError::NoAudio);
        }
        // The decoder lags the encoder by `pre_skip` samples: feed that much silence so the last
        // real sample comes out, then pad to a whole frame.
        let needed = self.source_frames + u64::from(self.pre_skip);
        while self.filled > 0 || self.encoded_frames < needed {
            self.frame[self.filled..].fill(0.0);
            self.filled = self.frame.len();
            self.encode_frame(sink)?;
        }
        let chunker = std::mem::replace(&mut self.chunker, Chunker::new(ChunkerConfig::default()));
        if let Some(chunk) = chunker.finish() {
            self.emit(chunk, sink)?;
        }
        let channels =
            u8::try_from(self.channels).map_err(|_| ImportError::Channels(self.channels))?;
        Manifest::new(
            channels,
            self.pre_skip,
            self.source_frames,
            std::mem::take(&mut self.infos),
        )
        .map_err(|e| ImportError::Codec(format!("manifest: {e}")))
    }
}
