//! The tracker's sans-IO core: ranking holders nearest-first and expiring soft state in the
//! peer registry. No sockets, clocks or global randomness.
//!
//! - [`PeerRegistry`]: the registry with plain methods (`announce`, `holders`,
//!   `purge_expired`), for the HTTP/libp2p driver (which may wrap it in a lock) and the
//!   simulator;
//! - [`TrackerCore`]: the same registry behind [`shoal_protocol::sansio::Core`];
//! - [`RegistryConfig`]: every threshold, with documented defaults.

mod cluster;
mod config;
mod machine;
mod registry;
#[cfg(test)]
mod tests;

pub use cluster::ClusterAccepted;
pub use config::{ConfigError, RegistryConfig};
pub use machine::{RegistryMessage, TrackerCommand, TrackerCore, TrackerEvent};
pub use registry::{
    Accepted, AnnounceError, Asker, HolderRef, PeerRegistry, Proximity, RegistryStats, cluster_of,
};
