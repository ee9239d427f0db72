//! `shoal-tracker`: the publisher side. Catalog search, the peer registry, the origin store
//! and music import.
//!
//! - [`core`]: sans-IO decisions (holder ranking, registry expiry); always compiled, driven by
//!   the real driver and by the simulator alike.
//! - `net` (feature `net`, default): HTTP API, libp2p endpoints, databases, object stores.

pub mod core;
#[cfg(feature = "import")]
pub mod import;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "store")]
pub mod store;
