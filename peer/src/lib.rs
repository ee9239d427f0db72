//! `shoal-peer`, the listener's client.
//!
//! - [`core`]: sans-IO decisions (fetch scheduling, serving, caching policy); always compiled,
//!   driven by the real driver and by the simulator alike.
//! - `net` (feature `net`, default): the thin driver that connects the core to libp2p, disk,
//!   HTTP and the sound card.

#[cfg(feature = "audio")]
pub mod audio;
pub mod core;
#[cfg(feature = "net")]
pub mod net;
