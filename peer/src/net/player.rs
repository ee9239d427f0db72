//! The audio side of network playback: a thread that takes verified chunks in any order,
//! decodes each queued track's chunks in order and writes one continuous stream to the output.
//! It runs beside the network loop so a blocking sound card never stalls the node.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread::JoinHandle;

use shoal_protocol::{Manifest, TrackId};

use crate::audio::{OutputTarget, PcmSink, TrackDecoder};

enum PlayerMsg {
    Manifest(TrackId, Manifest),
    Chunk(TrackId, usize, Vec<u8>),
    Finish,
}

/// What was played.
#[derive(Debug, Default)]
pub struct Played {
    /// Frames (samples per channel) written, per track.
    pub frames: HashMap<TrackId, u64>,
}

/// The playback thread of a queue of tracks.
#[derive(Debug)]
pub struct Player {
    tx: mpsc::Sender<PlayerMsg>,
    thread: JoinHandle<Result<Played, String>>,
}

impl Player {
    /// Plays `queue` in order to `output`, the first track from `start_sample`, at most
    /// `max_frames` frames in all (`None`: everything).
    pub fn spawn(
        queue: Vec<TrackId>,
        start_sample: u64,
        max_frames: Option<u64>,
        output: OutputTarget,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread =
            std::thread::spawn(move || run(&queue, start_sample, max_frames, &output, &rx));
        Self { tx, thread }
    }

    /// A track's manifest (repeats are ignored).
    pub fn manifest(&self, track: TrackId, manifest: Manifest) {
        let _ = self.tx.send(PlayerMsg::Manifest(track, manifest));
    }

    /// A verified chunk of `track`.
    pub fn chunk(&self, track: TrackId, index: usize, bytes: Vec<u8>) {
        let _ = self.tx.send(PlayerMsg::Chunk(track, index, bytes));
    }

    /// Writes out what can still be decoded, closes the output and reports what was played.
    pub fn finish(self) -> Result<Played, String> {
        let _ = self.tx.send(PlayerMsg::Finish);
        self.thread
            .join()
            .map_err(|_| "the audio thread panicked".to_string())?
    }
}

struct Current {
    track: TrackId,
    decoder: TrackDecoder,
}

fn run(
    queue: &[TrackId],
    start_sample: u64,
    max_frames: Option<u64>,
    output: &OutputTarget,
    rx: &mpsc::Receiver<PlayerMsg>,
) -> Result<Played, String> {
    let mut manifests: HashMap<TrackId, Manifest> = HashMap::new();
    let mut pending: HashMap<TrackId, BTreeMap<usize, Vec<u8>>> = HashMap::new();
    let mut sink: Option<(Box<dyn PcmSink>, usize)> = None;
    let mut played = Played::default();
    let mut at = 0;
    let mut current: Option<Current> = None;
    let mut pcm = Vec::new();
    let mut mixed = Vec::new();
    let mut finishing = false;
    let mut budget = max_frames.unwrap_or(u64::MAX);
    loop {
        // Decode whatever is ready, moving down the queue as tracks complete.
        loop {
            if current.is_none() {
                let Some(track) = queue.get(at).copied() else {
                    break;
                };
                let Some(m) = manifests.get(&track) else {
                    break;
                };
                let from = if at == 0 { start_sample } else { 0 };
                let decoder = TrackDecoder::new(m, from).map_err(|e| e.to_string())?;
                if sink.is_none() {
                    let ch = decoder.channels();
                    sink = Some((output.open(ch).map_err(|e| e.to_string())?, ch));
                }
                current = Some(Current { track, decoder });
            }
            let Some(cur) = current.as_mut() else { break };
            let Some(index) = cur.decoder.next_chunk() else {
                pending.remove(&cur.track);
                current = None;
                at += 1;
                continue;
            };
            let Some(bytes) = pending.get_mut(&cur.track).and_then(|p| p.remove(&index)) else {
                break;
            };
            pcm.clear();
            cur.decoder
                .decode_chunk(index, &bytes, &mut pcm)
                .map_err(|e| format!("track {}: {e}", cur.track))?;
            let from_ch = cur.decoder.channels();
            if let Some((sink, to_ch)) = sink.as_mut() {
                let out = remix(&pcm, from_ch, *to_ch, &mut mixed);
                let frames = ((out.len() / *to_ch) as u64).min(budget);
                budget -= frames;
                let out = &out[..frames as usize * *to_ch];
                sink.write(out)
                    .map_err(|e| format!("playing to {output}: {e}"))?;
                *played.frames.entry(cur.track).or_default() += (out.len() / *to_ch) as u64;
            }
        }
        if finishing {
            break;
        }
        match rx.recv() {
            Ok(PlayerMsg::Manifest(t, m)) => {
                manifests.entry(t).or_insert(m);
            }
            Ok(PlayerMsg::Chunk(t, i, b)) => {
                // Only tracks of the queue, and each chunk once.
                if queue.contains(&t) {
                    pending.entry(t).or_default().entry(i).or_insert(b);
                }
            }
            Ok(PlayerMsg::Finish) | Err(_) => finishing = true,
        }
    }
    if let Some((sink, _)) = sink {
        sink.finish()
            .map_err(|e| format!("playing to {output}: {e}"))?;
    }
    Ok(played)
}

/// `pcm` with `from` channels as `to` channels (1 or 2): mono is duplicated, stereo averaged.
fn remix<'a>(pcm: &'a [f32], from: usize, to: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if from == to {
        return pcm;
    }
    buf.clear();
    if from == 1 {
        for s in pcm {
            buf.extend(std::iter::repeat_n(*s, to));
        }
    } else {
        for frame in pcm.chunks_exact(from) {
            buf.push(frame.iter().sum::<f32>() / from as f32);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::remix;

    #[test]
    fn remix_mono_to_stereo_and_back() {
        let mut buf = Vec::new();
        assert_eq!(remix(&[0.5, -0.5], 1, 2, &mut buf), &[0.5, 0.5, -0.5, -0.5]);
        let mut buf2 = Vec::new();
        assert_eq!(remix(&[1.0, 0.0, 0.2, 0.4], 2, 1, &mut buf2), &[0.5, 0.3]);
    }
}
