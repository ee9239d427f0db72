//! Reading audio files as interleaved f32 PCM, a block at a time (never the whole file):
//! WAV, FLAC, MP3 and Ogg Vorbis through symphonia, Ogg Opus through the `ogg` crate and libopus
//! (symphonia has no Opus decoder). Also reads the title / artist / album tags.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTag};

use super::ImportError;

/// Tags read from a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// Title.
    pub title: Option<String>,
    /// Artist.
    pub artist: Option<String>,
    /// Album.
    pub album: Option<String>,
}

impl Tags {
    fn set(slot: &mut Option<String>, value: &str) {
        let v = value.trim();
        if slot.is_none() && !v.is_empty() {
            *slot = Some(v.chars().take(512).collect());
        }
    }

    fn absorb(&mut self, rev: &MetadataRevision) {
        let tags = rev
            .media
            .tags
            .iter()
            .chain(rev.per_track.iter().flat_map(|t| t.metadata.tags.iter()));
        for tag in tags {
            match &tag.std {
                Some(StandardTag::TrackTitle(v)) => Self::set(&mut self.title, v),
                Some(StandardTag::Artist(v)) => Self::set(&mut self.artist, v),
                Some(StandardTag::Album(v)) => Self::set(&mut self.album, v),
                _ => {}
            }
        }
    }
}

/// A decoded audio stream.
pub trait PcmSource {
    /// Channels (1 or 2).
    fn channels(&self) -> usize;
    /// Sample rate in Hz.
    fn sample_rate(&self) -> u32;
    /// Frames (samples per channel) the container announces, if it does; for progress only.
    fn expected_frames(&self) -> Option<u64>;
    /// Tags found so far (some formats put them at the end).
    fn tags(&self) -> Tags;
    /// Appends the next block of interleaved samples to `out`; false at the end of the stream.
    fn next_block(&mut self, out: &mut Vec<f32>) -> Result<bool, ImportError>;
}

/// Opens `path` with the right decoder.
pub fn open(path: &Path) -> Result<Box<dyn PcmSource>, ImportError> {
    let mut file = File::open(path).map_err(ImportError::Io)?;
    let len = file.metadata().map_err(ImportError::Io)?.len();
    if len == 0 {
        return Err(ImportError::Empty);
    }
    let mut head = [0u8; 64];
    let n = read_up_to(&mut file, &mut head).map_err(ImportError::Io)?;
    drop(file);
    let head = &head[..n];
    if head.starts_with(b"OggS") && head.windows(8).any(|w| w == b"OpusHead") {
        return Ok(Box::new(OggOpusSource::open(path)?));
    }
    Ok(Box::new(SymphoniaSource::open(path)?))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Everything symphonia decodes.
pub struct SymphoniaSource {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    channels: usize,
    sample_rate: u32,
    expected_frames: Option<u64>,
    tags: Tags,
    decode_errors: u32,
}

/// Corrupt packets skipped before a file is declared corrupt.
const MAX_DECODE_ERRORS: u32 = 8;

impl SymphoniaSource {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(ImportError::Io)?;
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let mut format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    ImportError::Truncated("the file ends inside its header".into())
                }
                SymError::Unsupported(_) => {
                    ImportError::NotAudio("not a recognised audio format".into())
                }
                other => ImportError::NotAudio(other.to_string()),
            })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| ImportError::NotAudio("the file has no audio track".into()))?;
        let track_id = track.id;
        let expected_frames = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| ImportError::NotAudio("the audio track has no codec parameters".into()))?
            .clone();
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|_| ImportError::UnsupportedCodec(format!("codec id {}", params.codec)))?;
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| ImportError::NotAudio("unknown sample rate".into()))?;
        let channels = params.channels.as_ref().map_or(0, |c| c.count());
        let mut tags = Tags::default();
        let mut md = format.metadata();
        loop {
            if let Some(rev) = md.current() {
                tags.absorb(rev);
            }
            if md.is_latest() {
                break;
            }
            md.pop();
        }
        let s = Self {
            format,
            decoder,
            track_id,
            channels,
            sample_rate,
            expected_frames,
            tags,
            decode_errors: 0,
        };
        match s.channels {
            // 0: the codec reports channels only once it decodes (checked then).
            0..=2 => Ok(s),
            n => Err(ImportError::Channels(n)),
        }
    }
}

impl PcmSource for SymphoniaSource {
    fn channels(&self) -> usize {
        self.channels
    }
    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
    fn expected_frames(&self) -> Option<u64> {
        self.expected_frames
    }
    fn tags(&self) -> Tags {
        self.tags.clone()
    }

    fn next_block(&mut self, out: &mut Vec<f32>) -> Result<bool, ImportError> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) | Err(SymError::ResetRequired) => return Ok(false),
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(ImportError::Truncated(
                        "the file ends in the middle of the audio".into(),
                    ));
                }
                Err(e) => return Err(ImportError::Corrupt(e.to_string())),
            };
            while !self.format.metadata().is_latest() {
                if let Some(rev) = self.format.metadata().pop() {
                    self.tags.absorb(&rev);
                }
            }
            if packet.track_id != self.track_id {
                continue;
            }
            match self.decoder.decode(&packet) {
                Ok(buf) => {
                    let channels = buf.spec().channels().count();
                    if channels != self.channels {
                        if self.channels == 0 && (1..=2).contains(&channels) {
                            self.channels = channels;
                        } else if self.channels == 0 {
                            return Err(ImportError::Channels(channels));
                        } else {
                            return Err(ImportError::Corrupt(format!(
                                "channel count changed from {} to {channels}",
                                self.channels
                            )));
                        }
                    }
                    let start = out.len();
                    out.resize(start + buf.samples_interleaved(), 0.0);
                    buf.copy_to_slice_interleaved(&mut out[start..]);
                    return Ok(true);
                }
                Err(SymError::DecodeError(e)) => {
                    self.decode_errors += 1;
                    if self.decode_errors > MAX_DECODE_ERRORS {
                        return Err(ImportError::Corrupt(format!(
                            "too many undecodable packets ({e})"
                        )));
                    }
                }
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(ImportError::Truncated(
                        "the file ends in the middle of the audio".into(),
                    ));
                }
                Err(e) => return Err(ImportError::Corrupt(e.to_string())),
            }
        }
    }
}

/// Ogg Opus (RFC 7845) through the `ogg` crate and libopus.
pub struct OggOpusSource {
    reader: ogg::PacketReader<BufReader<File>>,
    decoder: opus::Decoder,
    channels: usize,
    /// Samples per channel still to drop at the start.
    skip: usize,
    pre_skip: u64,
    /// Samples per channel produced so far (after pre-skip).
    produced: u64,
    tags: Tags,
    pcm: Vec<f32>,
}

impl OggOpusSource {
    fn open(path: &Path) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(ImportError::Io)?;
        let mut reader = ogg::PacketReader::new(BufReader::new(file));
        let head = Self::next(&mut reader)?
            .ok_or_else(|| ImportError::Truncated("no OpusHead packet".into()))?;
        let data = &head.data;
        if data.len() < 19 || &data[..8] != b"OpusHead" {
            return Err(ImportError::NotAudio("bad OpusHead packet".into()));
        }
        let channels = usize::from(data[9]);
        let pre_skip = u16::from_le_bytes([data[10], data[11]]);
        let mapping = data[18];
        if !(1..=2).contains(&channels) || mapping != 0 {
            return Err(ImportError::Channels(channels));
        }
        let tags_packet = Self::next(&mut reader)?
            .ok_or_else(|| ImportError::Truncated("no OpusTags packet".into()))?;
        let tags = parse_opus_tags(&tags_packet.data);
        let ch = if channels == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        };
        let decoder =
            opus::Decoder::new(48_000, ch).map_err(|e| ImportError::Codec(e.to_string()))?;
        Ok(Self {
            reader,
            decoder,
            channels,
            skip: usize::from(pre_skip),
            pre_skip: u64::from(pre_skip),
            produced: 0,
            tags,
            pcm: vec![0.0; 5760 * channels],
        })
    }

    fn next(
        reader: &mut ogg::PacketReader<BufReader<File>>,
    ) -> Result<Option<ogg::Packet>, ImportError> {
        reader.read_packet().map_err(|e| match e {
            ogg::OggReadError::ReadError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ImportError::Truncated("the file ends in the middle of an Ogg page".into())
            }
            ogg::OggReadError::ReadError(e) => ImportError::Io(e),
            other => ImportError::Corrupt(other.to_string()),
        })
    }
}

/// Title/artist/album from an OpusTags packet (Vorbis comments); malformed input yields none.
fn parse_opus_tags(data: &[u8]) -> Tags {
    let mut tags = Tags::default();
    let mut r = data.strip_prefix(b"OpusTags").unwrap_or(&[]);
    let take_u32 = |r: &mut &[u8]| -> Option<usize> {
        let (h, rest) = r.split_first_chunk::<4>()?;
        *r = rest;
        Some(u32::from_le_bytes(*h) as usize)
    };
    let Some(vendor) = take_u32(&mut r) else {
        return tags;
    };
    r = r.get(vendor..).unwrap_or(&[]);
    let count = take_u32(&mut r).unwrap_or(0);
    for _ in 0..count {
        let Some(len) = take_u32(&mut r) else { break };
        let Some(comment) = r.get(..len) else { break };
        r = &r[len..];
        let text = String::from_utf8_lossy(comment);
        if let Some((key, value)) = text.split_once('=') {
            match key.to_ascii_uppercase().as_str() {
                "TITLE" => Tags::set(&mut tags.title, value),
                "ARTIST" => Tags::set(&mut tags.artist, value),
                "ALBUM" => Tags::set(&mut tags.album, value),
                _ => {}
            }
        }
    }
    tags
}

impl PcmSource for OggOpusSource {
    fn channels(&self) -> usize {
        self.channels
    }
    fn sample_rate(&self) -> u32 {
        48_000
    }
    fn expected_frames(&self) -> Option<u64> {
        None
    }
    fn tags(&self) -> Tags {
        self.tags.clone()
    }

    fn next_block(&mut self, out: &mut Vec<f32>) -> Result<bool, ImportError> {
        loop {
            let Some(packet) = Self::next(&mut self.reader)? else {
                return Err(ImportError::Truncated(
                    "the Ogg stream has no end-of-stream page".into(),
                ));
            };
            let frames = self
                .decoder
                .decode_float(&packet.data, &mut self.pcm, false)
                .map_err(|e| ImportError::Corrupt(format!("Opus packet: {e}")))?;
            let mut start = self.skip.min(frames);
            self.skip -= start;
            let mut end = frames;
            if packet.last_in_stream() {
                // The final page's granule position says where the audio really ends.
                let total = packet.absgp_page().saturating_sub(self.pre_skip);
                let wanted = total.saturating_sub(self.produced) as usize;
                end = end.min(start + wanted);
                start = start.min(end);
            }
            self.produced += (end - start) as u64;
            out.extend_from_slice(&self.pcm[start * self.channels..end * self.channels]);
            if packet.last_in_stream() {
                return Ok(false);
            }
            if end > start {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_tags_parse_and_tolerate_garbage() {
        let mut p = b"OpusTags".to_vec();
        p.extend_from_slice(&3u32.to_le_bytes());
        p.extend_from_slice(b"lib");
        p.extend_from_slice(&2u32.to_le_bytes());
        for c in [&b"title=Song"[..], b"ARTIST=Band"] {
            p.extend_from_slice(&(c.len() as u32).to_le_bytes());
            p.extend_from_slice(c);
        }
        let t = parse_opus_tags(&p);
        assert_eq!(t.title.as_deref(), Some("Song"));
        assert_eq!(t.artist.as_deref(), Some("Band"));
        assert_eq!(t.album, None);
        for cut in 0..p.len() {
            let _ = parse_opus_tags(&p[..cut]);
        }
        let mut huge = b"OpusTags".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_opus_tags(&huge), Tags::default());
    }
}
