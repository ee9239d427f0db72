//! Every threshold the peer registry decides with: one named, documented field each, with the
//! defaults a single tracker serving ~100,000 peers gets. The driver fills these from its config
//! file and flags; the simulator from its scenario.

use std::time::Duration;

/// Thresholds of the [`PeerRegistry`](super::PeerRegistry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long an entry lives without a renewing announce (default 10 min). Peers re-announce
    /// well within it (the `Accepted` answer tells them the TTL), so a peer that vanished
    /// without saying goodbye stops being handed out at most this long after its last word.
    pub ttl: Duration,
    /// Sustained announces one peer may make per minute (default 12: one every 5 s). Peers
    /// announce when their cache changes and to renew, which is far rarer; more is a flood.
    pub announces_per_minute: u32,
    /// Announces one peer may make back to back before the rate applies (default 20), so a
    /// peer starting up with a large cache can send its holdings in several messages.
    pub announce_burst: u32,
    /// Tracks one peer may be listed for (default 10,000); an announce that would exceed it is
    /// rejected whole, so a peer never ends up with an arbitrary subset listed.
    pub max_tracks_per_peer: usize,
    /// Holders kept per track (default 512). A lookup returns a few dozen at most and
    /// super-peers index their own leaves, so a popular track needs a fresh sample, not
    /// every holder; when full, a new holder replaces the stalest of a rotating window
    /// (see `eviction_window`). Bounds both memory and the work of one lookup.
    pub max_holders_per_track: usize,
    /// Peers registered at once (default 1,000,000); announces from new peers beyond it are
    /// rejected until entries expire.
    pub max_peers: usize,
    /// (peer, track) listings in total (default 50,000,000, about 1 GB at worst). Also bounds
    /// the number of distinct tracks, since each listed track has at least one holder.
    pub max_holdings: usize,
    /// Most holders one lookup returns, whatever the request asks (default 100).
    pub max_lookup_limit: usize,
    /// Addresses kept per contact (default 16); more is rejected.
    pub max_addrs: usize,
    /// Longest address, in bytes (default 256); longer is rejected.
    pub max_addr_len: usize,
    /// Longest peer id in a contact, in bytes (default 128; libp2p ids are ~40).
    pub max_peer_id_len: usize,
    /// Longest region name, in bytes (default 64).
    pub max_region_len: usize,
    /// Expired peers removed per purge step (default 1,024): a timer callback or
    /// [`purge_expired`](super::PeerRegistry::purge_expired) call does at most this much work,
    /// so a mass expiry never stalls the tracker; the rest waits for the next step.
    pub purge_batch: usize,
    /// Expired peers each announce also removes (default 4). More than one per announce
    /// keeps the registry bounded even when the driver never runs the purge timer.
    pub purge_per_announce: usize,
    /// Holders compared when a full track must drop one for a newcomer (default 8): the least
    /// recently announced of the window goes. A window, not a full scan, keeps an announce
    /// cheap on popular tracks while still preferring to drop stale entries.
    pub eviction_window: usize,
    /// Outputs the [`TrackerCore`](super::TrackerCore) queues before it drops new ones
    /// (default 4,096). Drivers drain after every input, so this only trips when one misbehaves.
    pub max_queued_outputs: usize,
    /// Super-peer clusters registered at once through `/shoal/cluster/1` (default 10,000);
    /// cluster announces from new super-peers beyond it are rejected until entries expire.
    pub max_clusters: usize,
    /// Tracks one cluster may be listed for (default 1,000,000).
    pub max_tracks_per_cluster: usize,
    /// Leaves kept per (cluster, track) (default 8, at most
    /// [`MAX_LEAVES_PER_CLUSTER_TRACK`](shoal_protocol::wire::MAX_LEAVES_PER_CLUSTER_TRACK)):
    /// the super-peer's sample; a lookup needs a few per cluster, and the super-peer's own
    /// index knows the rest. An announce listing more is rejected.
    pub max_leaves_per_cluster_track: usize,
    /// Clusters listed per track (default 256); when full, further clusters are not listed
    /// for that track (their leaves stay findable through their super-peers) and
    /// `cluster_listings_dropped` counts it.
    pub max_clusters_per_track: usize,
    /// (cluster, track, leaf) listings in total (default 20,000,000).
    pub max_cluster_listings: usize,
    /// Sustained cluster announces one super-peer may make per minute (default 120). A cluster
    /// batches its leaves' changes, so one super-peer replaces hundreds of peers' announces.
    pub cluster_announces_per_minute: u32,
    /// Cluster announces one super-peer may make back to back (default 120): the parts of a
    /// full snapshot of a large cluster.
    pub cluster_announce_burst: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            announces_per_minute: 12,
            announce_burst: 20,
            max_tracks_per_peer: 10_000,
            max_holders_per_track: 512,
            max_peers: 1_000_000,
            max_holdings: 50_000_000,
            max_lookup_limit: 100,
            max_addrs: 16,
            max_addr_len: 256,
            max_peer_id_len: 128,
            max_region_len: 64,
            purge_batch: 1_024,
            purge_per_announce: 4,
            eviction_window: 8,
            max_queued_outputs: 4_096,
            max_clusters: 10_000,
            max_tracks_per_cluster: 1_000_000,
            max_leaves_per_cluster_track: 8,
            max_clusters_per_track: 256,
            max_cluster_listings: 20_000_000,
            cluster_announces_per_minute: 120,
            cluster_announce_burst: 120,
        }
    }
}

/// A configuration the registry cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive is zero.
    #[error("registry setting `{0}` must be greater than zero")]
    Zero(&'static str),
    /// A field is above what the wire protocol can carry.
    #[error("registry setting `{key}` must be at most {max}")]
    TooLarge {
        /// The setting.
        key: &'static str,
        /// The limit.
        max: usize,
    },
    /// The TTL does not fit the `Accepted { ttl_secs: u32 }` answer or is under a second.
    #[error("registry ttl must be between 1 s and {max} s, got {got:?}", max = u32::MAX)]
    Ttl {
        /// The configured TTL.
        got: Duration,
    },
}

impl RegistryConfig {
    /// Checks that every threshold is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_secs(1) || self.ttl.as_secs() > u64::from(u32::MAX) {
            return Err(ConfigError::Ttl { got: self.ttl });
        }
        let positive = [
            ("announces_per_minute", self.announces_per_minute as usize),
            ("announce_burst", self.announce_burst as usize),
            ("max_tracks_per_peer", self.max_tracks_per_peer),
            ("max_holders_per_track", self.max_holders_per_track),
            ("max_peers", self.max_peers),
            ("max_holdings", self.max_holdings),
            ("max_lookup_limit", self.max_lookup_limit),
            ("max_peer_id_len", self.max_peer_id_len),
            ("purge_batch", self.purge_batch),
            ("eviction_window", self.eviction_window),
            ("max_queued_outputs", self.max_queued_outputs),
            ("max_clusters", self.max_clusters),
            ("max_tracks_per_cluster", self.max_tracks_per_cluster),
            (
                "max_leaves_per_cluster_track",
                self.max_leaves_per_cluster_track,
            ),
            ("max_clusters_per_track", self.max_clusters_per_track),
            ("max_cluster_listings", self.max_cluster_listings),
            (
                "cluster_announces_per_minute",
                self.cluster_announces_per_minute as usize,
            ),
            (
                "cluster_announce_burst",
                self.cluster_announce_burst as usize,
            ),
        ];
        if self.max_leaves_per_cluster_track > shoal_protocol::wire::MAX_LEAVES_PER_CLUSTER_TRACK {
            return Err(ConfigError::TooLarge {
                key: "max_leaves_per_cluster_track",
                max: shoal_protocol::wire::MAX_LEAVES_PER_CLUSTER_TRACK,
            });
        }
        match positive.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(ConfigError::Zero(name)),
            None => Ok(()),
        }
    }

    /// The interval between announces at the sustained rate.
    pub(crate) fn announce_interval(&self) -> Duration {
        Duration::from_secs(60) / self.announces_per_minute.max(1)
    }

    /// The interval between cluster announces at the sustained rate.
    pub(crate) fn cluster_announce_interval(&self) -> Duration {
        Duration::from_secs(60) / self.cluster_announces_per_minute.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_zeroes_are_named() {
        assert_eq!(RegistryConfig::default().validate(), Ok(()));
        let c = RegistryConfig {
            max_holders_per_track: 0,
            ..RegistryConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::Zero("max_holders_per_track"))
        );
        let c = RegistryConfig {
            ttl: Duration::from_millis(10),
            ..RegistryConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Ttl { .. })));
        assert_eq!(
            RegistryConfig::default().announce_interval(),
            Duration::from_secs(5)
        );
    }
}
