//! `shoal-superpeer`'s configuration: the TOML file (`--config`), command-line flags over it,
//! defaults under both. [`FileConfig`] is the file's schema (unknown keys are errors naming the
//! key and line); [`Overrides`] holds the flags; [`Settings`] is the merged result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::Deserialize;

use crate::core::{AdmissionConfig, IndexConfig, RelayLimits};

/// The libp2p port of `shoal-superpeer serve` (QUIC and TCP).
pub const DEFAULT_PORT: u16 = 7702;
/// The HTTP address of `shoal-superpeer serve` (metrics, status page).
pub const DEFAULT_HTTP: &str = "0.0.0.0:7703";
/// The default data directory (holds the identity key).
pub const DEFAULT_DATA: &str = "./superpeer-data";
/// The libp2p port of the embedded cache peer (QUIC).
pub const DEFAULT_CACHE_PORT: u16 = 7704;
/// The cache's default size in MiB.
pub const DEFAULT_CACHE_LIMIT_MIB: u64 = 1024;

/// The whole file. Every key is optional; flags override it.
///
/// ```toml
/// listen = ["/ip4/0.0.0.0/udp/7702/quic-v1", "/ip4/0.0.0.0/tcp/7702"]
/// http = "0.0.0.0:7703"
/// tracker = "http://tracker.example:7700"
/// data = "/var/lib/shoal-superpeer"
/// external_addr = ["/ip4/203.0.113.7/udp/7702/quic-v1"]
/// region = "SE"
///
/// [relay]
/// max_reservations = 1024
/// max_circuit_duration_secs = 21600
/// relay_bandwidth_mbit = 500
///
/// [index]
/// ttl_secs = 600
///
/// [cache]
/// dir = "/var/cache/shoal-superpeer"
/// limit_mib = 4096
/// listen = ["/ip4/0.0.0.0/udp/7704/quic-v1"]
/// after_leaves = 2
/// window_secs = 600
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// libp2p addresses to listen on (`--listen`, repeatable); default QUIC and TCP on port
    /// 7702 of every IPv4 interface. Needs a restart to change.
    pub listen: Option<Vec<Multiaddr>>,
    /// HTTP address of `/metrics`, `/healthz` and the status page (`--http`); default
    /// `0.0.0.0:7703`. Needs a restart to change.
    pub http: Option<SocketAddr>,
    /// The tracker's HTTP API (`--tracker`), e.g. `http://tracker:7700`; its libp2p endpoint
    /// is found through `GET {tracker}/p2p`. Lookups the cluster cannot answer go there.
    /// Optional: without it the super-peer answers from its own index only. Reloadable.
    pub tracker: Option<String>,
    /// Data directory (`--data`): holds the identity key `superpeer.key`; default
    /// `./superpeer-data`. Needs a restart to change.
    pub data: Option<PathBuf>,
    /// Public addresses to advertise (`--external-addr`, repeatable): what relay reservations
    /// hand out and identify reports. Without any, the confirmed listen addresses are used
    /// (fine on loopback and in tests, wrong behind a load balancer). Reloadable.
    pub external_addr: Option<Vec<Multiaddr>>,
    /// This super-peer's region (`--region`; free text, the same names leaves use, e.g. an ISO
    /// country code), sent with its aggregated announces: the tracker ranks its leaves that
    /// did not say their own region as being in it. Reloadable.
    pub region: Option<String>,
    /// `[relay]`: circuit relay v2 limits.
    #[serde(default)]
    pub relay: RelaySection,
    /// `[index]`: the cluster index.
    #[serde(default)]
    pub index: IndexSection,
    /// `[cache]`: the chunk cache.
    #[serde(default)]
    pub cache: CacheSection,
}

/// `[cache]`: the chunk cache. When several leaves ask for the same track, an embedded cache
/// peer (its own identity, `cache.key` in the data directory) fetches it from peers or the
/// origin, keeps it on disk and serves it; lookups list it first. Needs a tracker. Changing
/// `enabled`, `dir`, `limit_mib` or `listen` needs a restart; `after_leaves` and
/// `window_secs` are reloadable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Run the cache (default true; `--no-cache` turns it off).
    pub enabled: Option<bool>,
    /// Cache directory (`--cache`); default `DATA/cache`.
    pub dir: Option<PathBuf>,
    /// Cache size in MiB (`--cache-limit-mib`); default 1024.
    pub limit_mib: Option<u64>,
    /// libp2p addresses of the cache peer (`--cache-listen`, repeatable); default QUIC on
    /// port 7704 of every IPv4 interface.
    pub listen: Option<Vec<Multiaddr>>,
    /// Addresses leaves are given for the cache peer (`--cache-external-addr`); default: its
    /// listen addresses, with an unspecified IP replaced by the super-peer's advertised IPs.
    pub external_addr: Option<Vec<Multiaddr>>,
    /// Distinct leaves that must ask for a track before it is cached (`--cache-after-leaves`);
    /// default 2.
    pub after_leaves: Option<usize>,
    /// Window in which those lookups count, seconds (`--cache-window-secs`); default 600.
    pub window_secs: Option<u64>,
}

/// The merged `[cache]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Run the cache at all.
    pub enabled: bool,
    /// Cache directory.
    pub dir: PathBuf,
    /// Size in bytes.
    pub max_bytes: u64,
    /// Listen addresses of the cache peer.
    pub listen: Vec<Multiaddr>,
    /// Advertised addresses of the cache peer (empty: derived).
    pub external_addrs: Vec<Multiaddr>,
    /// Admission thresholds.
    pub admission: AdmissionConfig,
}

/// `[relay]`: the relay's limits, sized for streaming audio. Changing any but
/// `relay_bandwidth_mbit` needs a restart.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Reservations at once (`--max-reservations`); default 1024.
    pub max_reservations: Option<usize>,
    /// Reservations per peer (`--max-reservations-per-peer`); default 4.
    pub max_reservations_per_peer: Option<usize>,
    /// Circuits open at once (`--max-circuits`); default 2048.
    pub max_circuits: Option<usize>,
    /// Circuits per peer (`--max-circuits-per-peer`); default 16.
    pub max_circuits_per_peer: Option<usize>,
    /// Longest circuit life in seconds (`--max-circuit-duration-secs`); default 21600 (6 h).
    pub max_circuit_duration_secs: Option<u64>,
    /// Bytes per circuit, both directions (`--max-circuit-bytes`); default 0 = unlimited.
    pub max_circuit_bytes: Option<u64>,
    /// Reservation lifetime in seconds (`--reservation-duration-secs`); default 3600.
    pub reservation_duration_secs: Option<u64>,
    /// Total relay bandwidth in Mbit/s (`--relay-bandwidth-mbit`); default 0 = unlimited.
    /// Reloadable.
    pub relay_bandwidth_mbit: Option<u64>,
}

/// `[index]`: the cluster index of leaf holdings. Reloadable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSection {
    /// Seconds a leaf's announce stays valid without renewal; default 600.
    pub ttl_secs: Option<u64>,
    /// Leaves indexed at once; default 10000.
    pub max_leaves: Option<usize>,
    /// Tracks one leaf may be listed for; default 10000.
    pub max_tracks_per_leaf: Option<usize>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key and line).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's explanation, with line and column.
        message: String,
    },
    /// A value is out of range (names the key).
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_owned(),
            err,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Values given on the command line (each wins over the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--listen` (empty: not given).
    pub listen: Vec<Multiaddr>,
    /// `--http`.
    pub http: Option<SocketAddr>,
    /// `--tracker`.
    pub tracker: Option<String>,
    /// `--data`.
    pub data: Option<PathBuf>,
    /// `--external-addr` (empty: not given).
    pub external_addr: Vec<Multiaddr>,
    /// `--region`.
    pub region: Option<String>,
    /// The `[relay]` flags.
    pub relay: RelaySection,
    /// The `[cache]` flags (`--no-cache` sets `enabled = Some(false)`).
    pub cache: CacheSection,
}

/// The merged settings `serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// HTTP address.
    pub http: SocketAddr,
    /// The tracker's HTTP API, if any.
    pub tracker: Option<String>,
    /// Data directory.
    pub data: PathBuf,
    /// Addresses to advertise.
    pub external_addrs: Vec<Multiaddr>,
    /// This super-peer's region, if set.
    pub region: Option<String>,
    /// Relay limits.
    pub relay: RelayLimits,
    /// Cluster index thresholds.
    pub index: IndexConfig,
    /// The chunk cache.
    pub cache: CacheSettings,
}

impl Settings {
    /// Flags over the file over defaults, validated.
    pub fn merge(flags: &Overrides, file: &FileConfig) -> Result<Self, ConfigError> {
        let listen = if !flags.listen.is_empty() {
            flags.listen.clone()
        } else {
            file.listen.clone().unwrap_or_else(default_listen)
        };
        if listen.is_empty() {
            return Err(ConfigError::Invalid(
                "listen: at least one address is needed".into(),
            ));
        }
        let http = match flags.http.or(file.http) {
            Some(a) => a,
            None => DEFAULT_HTTP
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("http: {e}")))?,
        };
        let tracker = flags
            .tracker
            .clone()
            .or_else(|| file.tracker.clone())
            .map(|t| t.trim_end_matches('/').to_owned());
        if let Some(t) = &tracker
            && !(t.starts_with("http://") || t.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "tracker = {t:?}: must be an http:// URL (the tracker's HTTP API)"
            )));
        }
        let data = flags
            .data
            .clone()
            .or_else(|| file.data.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        let external_addrs = if !flags.external_addr.is_empty() {
            flags.external_addr.clone()
        } else {
            file.external_addr.clone().unwrap_or_default()
        };
        let region = flags.region.clone().or_else(|| file.region.clone());
        if let Some(r) = &region
            && (r.is_empty() || r.len() > 64)
        {
            return Err(ConfigError::Invalid(format!(
                "region = {r:?}: must be 1 to 64 bytes"
            )));
        }
        let (f, r) = (&flags.relay, &file.relay);
        let d = RelayLimits::default();
        let secs = Duration::from_secs;
        let relay = RelayLimits {
            max_reservations: f
                .max_reservations
                .or(r.max_reservations)
                .unwrap_or(d.max_reservations),
            max_reservations_per_peer: f
                .max_reservations_per_peer
                .or(r.max_reservations_per_peer)
                .unwrap_or(d.max_reservations_per_peer),
            reservation_duration: f
                .reservation_duration_secs
                .or(r.reservation_duration_secs)
                .map_or(d.reservation_duration, secs),
            max_circuits: f.max_circuits.or(r.max_circuits).unwrap_or(d.max_circuits),
            max_circuits_per_peer: f
                .max_circuits_per_peer
                .or(r.max_circuits_per_peer)
                .unwrap_or(d.max_circuits_per_peer),
            max_circuit_duration: f
                .max_circuit_duration_secs
                .or(r.max_circuit_duration_secs)
                .map_or(d.max_circuit_duration, secs),
            max_circuit_bytes: f
                .max_circuit_bytes
                .or(r.max_circuit_bytes)
                .unwrap_or(d.max_circuit_bytes),
            relay_bandwidth_mbit: f
                .relay_bandwidth_mbit
                .or(r.relay_bandwidth_mbit)
                .unwrap_or(d.relay_bandwidth_mbit),
        };
        relay
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("relay.{e}")))?;
        let di = IndexConfig::default();
        let i = &file.index;
        let index = IndexConfig {
            ttl: i.ttl_secs.map_or(di.ttl, secs),
            max_leaves: i.max_leaves.unwrap_or(di.max_leaves),
            max_tracks_per_leaf: i.max_tracks_per_leaf.unwrap_or(di.max_tracks_per_leaf),
            ..di
        };
        if index.ttl.is_zero() || index.ttl.as_secs() > u64::from(u32::MAX) {
            return Err(ConfigError::Invalid(format!(
                "index.ttl_secs = {}: must be 1..=4294967295",
                index.ttl.as_secs()
            )));
        }
        for (key, v) in [
            ("index.max_leaves", index.max_leaves),
            ("index.max_tracks_per_leaf", index.max_tracks_per_leaf),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} = 0: must be at least 1"
                )));
            }
        }
        let cache = merge_cache(&flags.cache, &file.cache, &data)?;
        Ok(Self {
            listen,
            http,
            tracker,
            data,
            external_addrs,
            region,
            relay,
            index,
            cache,
        })
    }

    /// Loads `path` (if any) and merges `flags` over it.
    pub fn load(flags: &Overrides, path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Self::merge(flags, &file)
    }

    /// What changed from `self` to `new` that only a restart applies (config keys).
    pub fn restart_needed(&self, new: &Settings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.http != new.http {
            keys.push("http");
        }
        if self.data != new.data {
            keys.push("data");
        }
        let (c, d) = (&self.cache, &new.cache);
        for (key, changed) in [
            ("cache.enabled", c.enabled != d.enabled),
            ("cache.dir", c.dir != d.dir),
            ("cache.limit_mib", c.max_bytes != d.max_bytes),
            ("cache.listen", c.listen != d.listen),
            ("cache.external_addr", c.external_addrs != d.external_addrs),
        ] {
            if changed {
                keys.push(key);
            }
        }
        let (a, b) = (&self.relay, &new.relay);
        for (key, changed) in [
            (
                "relay.max_reservations",
                a.max_reservations != b.max_reservations,
            ),
            (
                "relay.max_reservations_per_peer",
                a.max_reservations_per_peer != b.max_reservations_per_peer,
            ),
            (
                "relay.reservation_duration_secs",
                a.reservation_duration != b.reservation_duration,
            ),
            ("relay.max_circuits", a.max_circuits != b.max_circuits),
            (
                "relay.max_circuits_per_peer",
                a.max_circuits_per_peer != b.max_circuits_per_peer,
            ),
            (
                "relay.max_circuit_duration_secs",
                a.max_circuit_duration != b.max_circuit_duration,
            ),
            (
                "relay.max_circuit_bytes",
                a.max_circuit_bytes != b.max_circuit_bytes,
            ),
        ] {
            if changed {
                keys.push(key);
            }
        }
        keys
    }
}

fn merge_cache(
    f: &CacheSection,
    file: &CacheSection,
    data: &Path,
) -> Result<CacheSettings, ConfigError> {
    let limit_mib = f
        .limit_mib
        .or(file.limit_mib)
        .unwrap_or(DEFAULT_CACHE_LIMIT_MIB);
    if limit_mib == 0 || limit_mib > (1 << 30) {
        return Err(ConfigError::Invalid(format!(
            "cache.limit_mib = {limit_mib}: must be 1..=1073741824"
        )));
    }
    let listen = f
        .listen
        .clone()
        .filter(|l| !l.is_empty())
        .or_else(|| file.listen.clone())
        .unwrap_or_else(default_cache_listen);
    let da = AdmissionConfig::default();
    let after_leaves = f
        .after_leaves
        .or(file.after_leaves)
        .unwrap_or(da.after_leaves);
    let window_secs = f
        .window_secs
        .or(file.window_secs)
        .unwrap_or(da.window.as_secs());
    if after_leaves == 0 {
        return Err(ConfigError::Invalid(
            "cache.after_leaves = 0: must be at least 1".into(),
        ));
    }
    if window_secs == 0 {
        return Err(ConfigError::Invalid(
            "cache.window_secs = 0: must be at least 1".into(),
        ));
    }
    let enabled = f.enabled.or(file.enabled).unwrap_or(true);
    if enabled && listen.is_empty() {
        return Err(ConfigError::Invalid(
            "cache.listen: at least one address is needed".into(),
        ));
    }
    let max_bytes = limit_mib << 20;
    Ok(CacheSettings {
        enabled,
        dir: f
            .dir
            .clone()
            .or_else(|| file.dir.clone())
            .unwrap_or_else(|| data.join("cache")),
        max_bytes,
        listen,
        external_addrs: f
            .external_addr
            .clone()
            .filter(|l| !l.is_empty())
            .or_else(|| file.external_addr.clone())
            .unwrap_or_default(),
        admission: AdmissionConfig {
            after_leaves,
            window: Duration::from_secs(window_secs),
            max_cache_bytes: max_bytes,
            ..da
        },
    })
}

/// `/ip4/0.0.0.0/udp/7704/quic-v1`.
pub fn default_cache_listen() -> Vec<Multiaddr> {
    vec![
        Multiaddr::empty()
            .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
            .with(Protocol::Udp(DEFAULT_CACHE_PORT))
            .with(Protocol::QuicV1),
    ]
}

/// `/ip4/0.0.0.0/udp/7702/quic-v1` and `/ip4/0.0.0.0/tcp/7702`.
pub fn default_listen() -> Vec<Multiaddr> {
    let any = Multiaddr::empty().with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED));
    vec![
        any.clone()
            .with(Protocol::Udp(DEFAULT_PORT))
            .with(Protocol::QuicV1),
        any.with(Protocol::Tcp(DEFAULT_PORT)),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::merge(&Overrides::default(), &FileConfig::default()).unwrap();
        assert_eq!(s.listen, default_listen());
        assert_eq!(s.http.to_string(), DEFAULT_HTTP);
        assert_eq!(s.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(s.relay, RelayLimits::default());
        assert_eq!(s.tracker, None);
        assert!(s.cache.enabled);
        assert_eq!(s.cache.dir, PathBuf::from(DEFAULT_DATA).join("cache"));
        assert_eq!(s.cache.max_bytes, 1 << 30);
        assert_eq!(s.cache.listen, default_cache_listen());
        assert_eq!(s.cache.admission.after_leaves, 2);
    }

    #[test]
    fn cache_section_and_flags() {
        let file: FileConfig = toml::from_str(
            "[cache]\nlimit_mib = 10\nafter_leaves = 3\nwindow_secs = 60\ndir = \"/c\"\n",
        )
        .unwrap();
        let flags = Overrides {
            cache: CacheSection {
                after_leaves: Some(5),
                ..CacheSection::default()
            },
            ..Overrides::default()
        };
        let s = Settings::merge(&flags, &file).unwrap();
        assert_eq!(s.cache.max_bytes, 10 << 20);
        assert_eq!(s.cache.admission.max_cache_bytes, 10 << 20);
        assert_eq!(s.cache.admission.after_leaves, 5);
        assert_eq!(s.cache.admission.window, Duration::from_secs(60));
        assert_eq!(s.cache.dir, PathBuf::from("/c"));
        let bad: FileConfig = toml::from_str("[cache]\nafter_leaves = 0\n").unwrap();
        let e = Settings::merge(&Overrides::default(), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.after_leaves"), "{e}");
        let mut b = s.clone();
        b.cache.admission.after_leaves = 1;
        b.cache.max_bytes = 1;
        assert_eq!(s.restart_needed(&b), vec!["cache.limit_mib"]);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            "http = \"127.0.0.1:1\"\ntracker = \"http://t:7700/\"\n[relay]\nmax_circuits = 5\nmax_circuits_per_peer = 2\n[index]\nttl_secs = 30\n",
        )
        .unwrap();
        let flags = Overrides {
            http: Some("127.0.0.1:2".parse().unwrap()),
            relay: RelaySection {
                max_circuits: Some(9),
                ..RelaySection::default()
            },
            ..Overrides::default()
        };
        let s = Settings::merge(&flags, &file).unwrap();
        assert_eq!(s.region, None);
        assert_eq!(s.http.port(), 2);
        assert_eq!(s.tracker.as_deref(), Some("http://t:7700"));
        assert_eq!(s.relay.max_circuits, 9);
        assert_eq!(s.relay.max_circuits_per_peer, 2);
        assert_eq!(s.index.ttl, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "http = \"127.0.0.1:1\"\n[relay]\nmax_circuitz = 3\n").unwrap();
        let e = Settings::load(&Overrides::default(), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_circuitz") && e.contains("line 3"), "{e}");
        std::fs::write(&p, "[relay]\nmax_circuits = 0\n").unwrap();
        let e = Settings::load(&Overrides::default(), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.max_circuits"), "{e}");
        std::fs::write(&p, "tracker = \"tracker:7700\"\n").unwrap();
        let e = Settings::load(&Overrides::default(), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tracker"), "{e}");
    }

    #[test]
    fn region_from_file_or_flag() {
        let file: FileConfig = toml::from_str("region = \"SE\"\n").unwrap();
        let s = Settings::merge(&Overrides::default(), &file).unwrap();
        assert_eq!(s.region.as_deref(), Some("SE"));
        let flags = Overrides {
            region: Some("DE".into()),
            ..Overrides::default()
        };
        assert_eq!(
            Settings::merge(&flags, &file).unwrap().region.as_deref(),
            Some("DE")
        );
        let long: FileConfig =
            toml::from_str(&format!("region = \"{}\"\n", "x".repeat(65))).unwrap();
        let e = Settings::merge(&Overrides::default(), &long)
            .unwrap_err()
            .to_string();
        assert!(e.contains("region"), "{e}");
    }

    #[test]
    fn restart_keys() {
        let a = Settings::merge(&Overrides::default(), &FileConfig::default()).unwrap();
        let mut b = a.clone();
        b.relay.max_circuits = 1;
        b.relay.relay_bandwidth_mbit = 10;
        b.index.ttl = Duration::from_secs(1);
        assert_eq!(a.restart_needed(&b), vec!["relay.max_circuits"]);
    }
}
