//! The listener's audio path: verified chunks → Opus packets → PCM ([`decode`]), and PCM to a
//! WAV file, stdout, the sound card or nowhere ([`output`]).

pub mod decode;
pub mod output;

pub use decode::{DecodeError, TrackDecoder};
pub use output::{OutputError, OutputTarget, PcmSink};
