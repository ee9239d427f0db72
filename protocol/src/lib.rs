//! Shoal's shared contract, used by every role and by the simulator.
//!
//! - [`ids`]: [`ChunkId`], [`TrackId`] (BLAKE3 content addresses) and [`NodeId`].
//! - [`opus`]: the few facts about Opus packets the protocol checks (packet duration).
//! - [`chunk`]: the chunk byte format, its parser, [`verify`] and the streaming [`Chunker`].
//! - [`manifest`]: [`Manifest`], its canonical encoding and the [`TrackId`] derived from it.
//! - [`wire`]: request/response messages of `/shoal/chunk/2`, `/shoal/announce/1`,
//!   `/shoal/lookup/1` and their length-prefixed, size-limited codec.
//! - [`sansio`]: the `handle_input` / `poll_output` contract every core implements.
//!
//! Nothing here does IO: no sockets, no files, no clock, no global randomness.
#![warn(missing_docs)]

pub mod chunk;
pub mod ids;
pub mod manifest;
pub mod opus;
pub mod sansio;
pub mod wire;

pub use chunk::{Chunk, ChunkError, Chunker, ChunkerConfig, parse_chunk, verify};
pub use ids::{ChunkId, IdParseError, NodeId, TrackId};
pub use manifest::{ChunkInfo, Codec, Manifest, ManifestError, SAMPLE_RATE};
pub use sansio::{Core, Input, Output, Time, TimerSet};
