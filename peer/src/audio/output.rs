//! Where decoded PCM goes: a 16-bit WAV file (written beside its final name and renamed when
//! complete), raw s16le PCM on stdout, the sound card (feature `device`), or nowhere.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::str::FromStr;

/// Why output failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A filesystem or pipe error.
    #[error("{context}: {err}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        err: io::Error,
    },
    /// Writing the WAV container failed.
    #[error("writing {path}: {reason}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// hound's explanation.
        reason: String,
    },
    /// No sound card, or it refused the stream.
    #[error("sound card: {0}")]
    Device(String),
    /// The `--output` value is not understood.
    #[error("unknown output {0:?}: use FILE.wav, - (raw s16le PCM on stdout), device or null")]
    UnknownTarget(String),
}

/// An `--output` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// A 16-bit PCM WAV file.
    Wav(PathBuf),
    /// Raw interleaved signed 16-bit little-endian PCM, 48 kHz, on stdout.
    Stdout,
    /// The default sound card.
    Device,
    /// Decode and discard (tests, benchmarks).
    Null,
}

impl FromStr for OutputTarget {
    type Err = OutputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "-" => Ok(Self::Stdout),
            "device" => Ok(Self::Device),
            "null" => Ok(Self::Null),
            path if path.to_ascii_lowercase().ends_with(".wav") => {
                Ok(Self::Wav(PathBuf::from(path)))
            }
            other => Err(OutputError::UnknownTarget(other.to_owned())),
        }
    }
}

impl std::fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wav(p) => write!(f, "{}", p.display()),
            Self::Stdout => f.write_str("stdout"),
            Self::Device => f.write_str("the sound card"),
            Self::Null => f.write_str("nowhere (null)"),
        }
    }
}

/// A consumer of interleaved f32 PCM at 48 kHz.
pub trait PcmSink {
    /// Takes more samples (a whole number of frames).
    fn write(&mut self, pcm: &[f32]) -> Result<(), OutputError>;
    /// Flushes and closes; for a device, waits until the audio has played.
    fn finish(self: Box<Self>) -> Result<(), OutputError>;
}

impl OutputTarget {
    /// Opens the sink for `channels`-channel 48 kHz audio.
    pub fn open(&self, channels: usize) -> Result<Box<dyn PcmSink>, OutputError> {
        match self {
            Self::Wav(path) => Ok(Box::new(WavSink::create(path.clone(), channels)?)),
            Self::Stdout => Ok(Box::new(StdoutSink {
                out: BufWriter::new(io::stdout()),
                buf: Vec::new(),
            })),
            Self::Null => Ok(Box::new(NullSink::default())),
            #[cfg(feature = "device")]
            Self::Device => Ok(Box::new(device::DeviceSink::open(channels)?)),
            #[cfg(not(feature = "device"))]
            Self::Device => Err(OutputError::Device(
                "this build has no sound card support (cargo feature `device`)".into(),
            )),
        }
    }
}

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// A WAV file, written to `NAME.partial` and renamed to `NAME` when complete.
pub struct WavSink {
    writer: hound::WavWriter<BufWriter<File>>,
    partial: PathBuf,
    path: PathBuf,
}

impl WavSink {
    fn create(path: PathBuf, channels: usize) -> Result<Self, OutputError> {
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let spec = hound::WavSpec {
            channels: u16::try_from(channels).unwrap_or(2),
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(&partial, spec).map_err(|e| OutputError::Wav {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            writer,
            partial,
            path,
        })
    }
}

impl PcmSink for WavSink {
    fn write(&mut self, pcm: &[f32]) -> Result<(), OutputError> {
        let mut w = self
            .writer
            .get_i16_writer(u32::try_from(pcm.len()).unwrap_or(u32::MAX));
        for &s in pcm {
            w.write_sample(to_i16(s));
        }
        w.flush().map_err(|e| OutputError::Wav {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn finish(self: Box<Self>) -> Result<(), OutputError> {
        let Self {
            writer,
            partial,
            path,
        } = *self;
        writer.finalize().map_err(|e| OutputError::Wav {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::rename(&partial, &path).map_err(|err| OutputError::Io {
            context: format!("renaming {}", partial.display()),
            err,
        })
    }
}

/// Raw s16le on stdout. A closed pipe (`| head`) ends playback quietly.
pub struct StdoutSink {
    out: BufWriter<io::Stdout>,
    buf: Vec<u8>,
}

impl PcmSink for StdoutSink {
    fn write(&mut self, pcm: &[f32]) -> Result<(), OutputError> {
        self.buf.clear();
        self.buf
            .extend(pcm.iter().flat_map(|&s| to_i16(s).to_le_bytes()));
        self.out
            .write_all(&self.buf)
            .map_err(|err| OutputError::Io {
                context: "writing to stdout".into(),
                err,
            })
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.out.flush().map_err(|err| OutputError::Io {
            context: "writing to stdout".into(),
            err,
        })
    }
}

/// Counts samples and drops them.
#[derive(Debug, Default)]
pub struct NullSink {
    /// Samples received.
    pub samples: u64,
}

impl PcmSink for NullSink {
    fn write(&mut self, pcm: &[f32]) -> Result<(), OutputError> {
        self.samples += pcm.len() as u64;
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<(), OutputError> {
        Ok(())
    }
}

#[cfg(feature = "device")]
mod device {
    //! The default sound card through cpal (ALSA on Linux). Decoding runs ahead; a bounded
    //! queue (about 2 s) between it and the audio callback paces it to real time.

    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

    use super::{OutputError, PcmSink};

    /// Blocks of PCM queued for the callback (each one `write` call, ~0.5–4 s).
    const QUEUE_BLOCKS: usize = 2;

    pub struct DeviceSink {
        tx: Option<SyncSender<Vec<f32>>>,
        done: Receiver<()>,
        _stream: cpal::Stream,
    }

    impl DeviceSink {
        pub fn open(channels: usize) -> Result<Self, OutputError> {
            let host = cpal::default_host();
            let device = host.default_output_device().ok_or_else(|| {
                OutputError::Device("no audio output device found; play to a file with --output out.wav, or --output null".into())
            })?;
            let config = cpal::StreamConfig {
                channels: u16::try_from(channels).unwrap_or(2),
                sample_rate: cpal::SampleRate(48_000),
                buffer_size: cpal::BufferSize::Default,
            };
            let (tx, rx) = sync_channel::<Vec<f32>>(QUEUE_BLOCKS);
            let (done_tx, done) = sync_channel::<()>(1);
            let mut current: Vec<f32> = Vec::new();
            let mut at = 0;
            let mut finished = false;
            let stream = device
                .build_output_stream(
                    &config,
                    move |data: &mut [f32], _| {
                        for sample in data.iter_mut() {
                            while at >= current.len() && !finished {
                                match rx.try_recv() {
                                    Ok(block) => {
                                        current = block;
                                        at = 0;
                                    }
                                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                        finished = true;
                                        let _ = done_tx.try_send(());
                                    }
                                }
                            }
                            *sample = if at < current.len() {
                                at += 1;
                                current[at - 1]
                            } else {
                                0.0
                            };
                        }
                    },
                    |e| tracing::warn!("sound card: {e}"),
                    None,
                )
                .map_err(|e| {
                    OutputError::Device(format!(
                        "no usable sound card ({e}); play to a file with --output out.wav, or --output null"
                    ))
                })?;
            stream
                .play()
                .map_err(|e| OutputError::Device(e.to_string()))?;
            Ok(Self {
                tx: Some(tx),
                done,
                _stream: stream,
            })
        }
    }

    impl PcmSink for DeviceSink {
        fn write(&mut self, pcm: &[f32]) -> Result<(), OutputError> {
            let tx = self
                .tx
                .as_ref()
                .ok_or_else(|| OutputError::Device("stream closed".into()))?;
            tx.send(pcm.to_vec())
                .map_err(|_| OutputError::Device("the audio stream stopped".into()))
        }

        fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
            // Closing the queue lets the callback drain it, then signal.
            self.tx = None;
            let _ = self.done.recv_timeout(std::time::Duration::from_secs(10));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("-".parse::<OutputTarget>().unwrap(), OutputTarget::Stdout);
        assert_eq!("null".parse::<OutputTarget>().unwrap(), OutputTarget::Null);
        assert_eq!(
            "device".parse::<OutputTarget>().unwrap(),
            OutputTarget::Device
        );
        assert_eq!(
            "x/Out.WAV".parse::<OutputTarget>().unwrap(),
            OutputTarget::Wav("x/Out.WAV".into())
        );
        let e = "out.mp3".parse::<OutputTarget>().unwrap_err().to_string();
        assert!(e.contains("use FILE.wav"), "{e}");
    }

    #[test]
    fn wav_appears_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut sink = OutputTarget::Wav(path.clone()).open(2).unwrap();
        sink.write(&[0.5, -0.5, 1.5, -1.5]).unwrap();
        assert!(!path.exists());
        sink.finish().unwrap();
        let mut r = hound::WavReader::open(&path).unwrap();
        assert_eq!(r.spec().sample_rate, 48_000);
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, vec![16384, -16384, 32767, -32767]);
    }
}
