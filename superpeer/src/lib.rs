//! `shoal-superpeer`: a public node that relays between NATed peers, keeps an index of what its
//! leaves hold, and caches popular chunks.
//!
//! - [`core`]: sans-IO decisions (cluster index, cache admission, relay limits); always
//!   compiled, driven by the real driver and by the simulator alike.
//! - `net` (feature `net`, default): the thin libp2p driver.

pub mod core;
#[cfg(feature = "net")]
pub mod net;
