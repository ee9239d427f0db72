//! Streaming conversion of interleaved f32 audio to 48 kHz (rubato's FFT resampler), block by
//! block, with the resampler's delay removed so the output lines up with the input in time.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::ImportError;

/// Input frames per resampler call.
const CHUNK_FRAMES: usize = 1024;

/// Resamples a stream to 48 kHz; a pass-through when it already is.
pub struct To48k {
    inner: Option<Fft<f32>>,
    channels: usize,
    ratio: f64,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
    /// Output frames still to drop (the resampler's delay).
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl To48k {
    /// A converter from `rate` Hz with `channels` channels.
    pub fn new(rate: u32, channels: usize) -> Result<Self, ImportError> {
        let inner = if rate == 48_000 {
            None
        } else {
            let fft = Fft::<f32>::new(
                rate as usize,
                48_000,
                CHUNK_FRAMES,
                channels,
                FixedSync::Input,
            )
            .map_err(|e| ImportError::Codec(format!("cannot resample from {rate} Hz: {e}")))?;
            Some(fft)
        };
        let delay_left = inner.as_ref().map_or(0, |r| r.output_delay());
        let out_max = inner.as_ref().map_or(0, |r| r.output_frames_max());
        Ok(Self {
            inner,
            channels,
            ratio: 48_000.0 / f64::from(rate),
            pending: Vec::new(),
            out_buf: vec![0.0; out_max * channels],
            delay_left,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Converts `input`, appending 48 kHz samples to `out` (some are held back until the next
    /// call or [`To48k::finish`]).
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ImportError> {
        self.frames_in += (input.len() / self.channels) as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let block = CHUNK_FRAMES * self.channels;
        let mut used = 0;
        while self.pending.len() - used >= block {
            let end = used + block;
            self.process(used, end, out)?;
            used = end;
        }
        self.pending.drain(..used);
        Ok(())
    }

    fn process(&mut self, from: usize, to: usize, out: &mut Vec<f32>) -> Result<(), ImportError> {
        let Some(fft) = self.inner.as_mut() else {
            return Ok(());
        };
        let ch = self.channels;
        let frames_out_cap = self.out_buf.len() / ch;
        let input = InterleavedSlice::new(&self.pending[from..to], ch, (to - from) / ch)
            .map_err(|e| ImportError::Codec(e.to_string()))?;
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf, ch, frames_out_cap)
            .map_err(|e| ImportError::Codec(e.to_string()))?;
        let (_, written) = fft
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| ImportError::Codec(e.to_string()))?;
        let drop = self.delay_left.min(written);
        self.delay_left -= drop;
        out.extend_from_slice(&self.out_buf[drop * ch..written * ch]);
        self.frames_out += (written - drop) as u64;
        Ok(())
    }

    /// Flushes the tail: exactly `round(frames_in × 48000 / rate)` frames in all.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), ImportError> {
        if self.inner.is_none() {
            return Ok(());
        }
        let wanted = (self.frames_in as f64 * self.ratio).round() as u64;
        let block = CHUNK_FRAMES * self.channels;
        let start = out.len();
        let mut produced = self.frames_out;
        while produced < wanted {
            self.pending.resize(block, 0.0);
            self.process(0, block, out)?;
            self.pending.clear();
            produced = self.frames_out;
        }
        let excess = (produced - wanted) as usize * self.channels;
        out.truncate(out.len().saturating_sub(excess).max(start.min(out.len())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_timing_are_kept() {
        // A 1 kHz tone at 44.1 kHz, pushed in odd-sized blocks.
        let rate = 44_100;
        let n = rate as usize * 2;
        let tone: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / rate as f32).sin() * 0.5)
            .collect();
        let mut r = To48k::new(rate, 1).unwrap();
        let mut out = Vec::new();
        for block in tone.chunks(777) {
            r.push(block, &mut out).unwrap();
        }
        r.finish(&mut out).unwrap();
        assert_eq!(out.len(), 96_000);
        // Compare against the ideal 48 kHz tone away from the edges: no time offset.
        let err: f32 = (1000..95_000)
            .map(|i| {
                (out[i] - (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0).sin() * 0.5)
                    .powi(2)
            })
            .sum::<f32>()
            / 94_000.0;
        assert!(err < 1e-4, "mean squared error {err}");
    }

    #[test]
    fn passthrough_at_48k() {
        let mut r = To48k::new(48_000, 2).unwrap();
        let mut out = Vec::new();
        r.push(&[0.1, 0.2, 0.3, 0.4], &mut out).unwrap();
        r.finish(&mut out).unwrap();
        assert_eq!(out, vec![0.1, 0.2, 0.3, 0.4]);
    }
}
