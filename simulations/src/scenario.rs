//! Owns the scenario file: its schema (every model's parameters, with documented defaults and
//! their sources), loading from TOML, `--set key=value` overrides, and validation that names
//! the offending key and its line in the file.
//!
//! Sources for defaults are in `/work/shared/SIM-MODELS.md` and repeated beside each field.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A scenario that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A key, type or value problem, located.
    #[error("{}", format_invalid(.file, *.line, .key, .message, .from_set.as_deref()))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the key in the file, when it is in the file.
        line: Option<usize>,
        /// Dotted key path (`catalog.zipf_alpha`).
        key: String,
        /// What is wrong.
        message: String,
        /// The `--set` assignment that produced the value, if any.
        from_set: Option<String>,
    },
    /// A `--set` argument that is not `key=value`.
    #[error("--set {0:?}: expected key=value (e.g. catalog.zipf_alpha=0.9)")]
    BadSet(String),
}

fn format_invalid(
    file: &Path,
    line: Option<usize>,
    key: &str,
    message: &str,
    from_set: Option<&str>,
) -> String {
    let loc = match (line, from_set) {
        (_, Some(set)) => format!("{} (from --set {set})", file.display()),
        (Some(l), None) => format!("{}:{l}", file.display()),
        (None, None) => file.display().to_string(),
    };
    if key.is_empty() {
        format!("{loc}: {message}")
    } else {
        format!("{loc}: key `{key}`: {message}")
    }
}

/// A probability distribution of a positive quantity, written as a one-key inline table:
/// `{ const = 5.0 }`, `{ exp = { mean = 3.0 } }`, `{ lognormal = { mu = 1.0, sigma = 0.5 } }`,
/// `{ weibull = { shape = 0.5, scale = 30.0 } }`, `{ uniform = { min = 1.0, max = 2.0 } }`,
/// `{ pareto = { scale = 1.0, shape = 1.5 } }`. Units are those of the field using it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    /// Always this value.
    Const(f64),
    /// Exponential.
    Exp {
        /// Mean.
        mean: f64,
    },
    /// exp(N(mu, sigma)).
    Lognormal {
        /// Mean of the logarithm.
        mu: f64,
        /// Standard deviation of the logarithm.
        sigma: f64,
    },
    /// Weibull.
    Weibull {
        /// Shape k.
        shape: f64,
        /// Scale λ.
        scale: f64,
    },
    /// Uniform on [min, max).
    Uniform {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// Pareto.
    Pareto {
        /// Scale x_m (the minimum).
        scale: f64,
        /// Shape α.
        shape: f64,
    },
}

impl Dist {
    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match *self {
            Dist::Const(v) => v,
            Dist::Exp { mean } => rng.exp(mean),
            Dist::Lognormal { mu, sigma } => rng.lognormal(mu, sigma),
            Dist::Weibull { shape, scale } => rng.weibull(shape, scale),
            Dist::Uniform { min, max } => rng.uniform(min, max),
            Dist::Pareto { scale, shape } => rng.pareto(scale, shape),
        }
    }

    /// The mean (infinite for a Pareto with shape ≤ 1).
    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Const(v) => v,
            Dist::Exp { mean } => mean,
            Dist::Lognormal { mu, sigma } => (mu + sigma * sigma / 2.0).exp(),
            Dist::Weibull { shape, scale } => scale * gamma(1.0 + 1.0 / shape),
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Pareto { scale, shape } => {
                if shape <= 1.0 {
                    f64::INFINITY
                } else {
                    shape * scale / (shape - 1.0)
                }
            }
        }
    }

    /// Checks the parameters; `Err((sub_key, message))`.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        match *self {
            Dist::Const(v) if !(v.is_finite() && v >= 0.0) => {
                bad("const", format!("must be a finite number ≥ 0 (got {v})"))
            }
            Dist::Exp { mean } if !(mean.is_finite() && mean > 0.0) => {
                bad("exp.mean", format!("must be > 0 (got {mean})"))
            }
            Dist::Lognormal { sigma, mu }
                if !(sigma.is_finite() && sigma >= 0.0 && mu.is_finite()) =>
            {
                bad(
                    "lognormal.sigma",
                    format!("must be ≥ 0 and finite (got {sigma})"),
                )
            }
            Dist::Weibull { shape, .. } if !(shape.is_finite() && shape > 0.0) => {
                bad("weibull.shape", format!("must be > 0 (got {shape})"))
            }
            Dist::Weibull { scale, .. } if !(scale.is_finite() && scale > 0.0) => {
                bad("weibull.scale", format!("must be > 0 (got {scale})"))
            }
            Dist::Uniform { min, max }
                if !(min.is_finite() && min >= 0.0 && max >= min && max.is_finite()) =>
            {
                bad(
                    "uniform",
                    format!("needs 0 ≤ min ≤ max (got min {min}, max {max})"),
                )
            }
            Dist::Pareto { scale, .. } if !(scale.is_finite() && scale > 0.0) => {
                bad("pareto.scale", format!("must be > 0 (got {scale})"))
            }
            Dist::Pareto { shape, .. } if !(shape.is_finite() && shape > 0.0) => {
                bad("pareto.shape", format!("must be > 0 (got {shape})"))
            }
            _ => Ok(()),
        }
    }
}

/// Lanczos approximation of Γ(x) for x > 0 (for the Weibull mean).
fn gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma(1.0 - x))
    } else {
        let x = x - 1.0;
        let mut a = C[0];
        let t = x + G + 0.5;
        for (i, c) in C.iter().enumerate().skip(1) {
            a += c / (x + i as f64);
        }
        (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
    }
}

/// The whole scenario file. Every section is optional; missing keys take the defaults below.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Run length, seed, sampling.
    pub run: RunSection,
    /// Who is in the network and where.
    pub population: PopulationSection,
    /// Latency model.
    pub latency: LatencySection,
    /// Access bandwidth model.
    pub bandwidth: BandwidthSection,
    /// NAT model.
    pub nat: NatSection,
    /// Churn model.
    pub churn: ChurnSection,
    /// Catalog and popularity.
    pub catalog: CatalogSection,
    /// Listening behaviour.
    pub listening: ListeningSection,
    /// Per-peer cache.
    pub cache: CacheSection,
    /// The tracker's registry thresholds.
    pub tracker: TrackerSection,
    /// What the client does before a play reaches its core.
    pub client: ClientSection,
    /// Thresholds of the listeners' real core, where a scenario changes them.
    pub peer: PeerSection,
    /// Failures injected at given times (`[[faults]]`).
    pub faults: Vec<Fault>,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// A name for plots and the summary.
    pub name: String,
    /// Seed used when `--seed` is not given.
    pub seed: u64,
    /// Simulated time, seconds.
    pub duration_s: f64,
    /// Time-series sampling interval, seconds.
    pub sample_interval_s: f64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 1,
            duration_s: 3600.0,
            sample_interval_s: 60.0,
        }
    }
}

/// `[population]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopulationSection {
    /// Listener peers.
    pub peers: u32,
    /// Super-peers (public, relay + cluster index + cache). At most `peers`.
    pub superpeers: u32,
    /// Origin servers (always have every chunk).
    pub origins: u32,
    /// Where peers are: ISO country codes of the RIPE table with relative weights.
    pub regions: Vec<Region>,
    /// Country of the origin and tracker (and of super-peers unless `superpeer_regions`).
    pub server_region: String,
    /// Countries super-peers are spread over round-robin (empty: the peers' regions by weight).
    pub superpeer_regions: Vec<String>,
}

impl Default for PopulationSection {
    fn default() -> Self {
        Self {
            peers: 1000,
            superpeers: 5,
            origins: 1,
            regions: vec![
                Region::new("SE", 0.4),
                Region::new("GB", 0.2),
                Region::new("DE", 0.2),
                Region::new("US", 0.2),
            ],
            server_region: "SE".into(),
            superpeer_regions: Vec::new(),
        }
    }
}

/// A share of the peers placed in one country.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// ISO 3166 alpha-2 code as in the RIPE table.
    pub country: String,
    /// Relative weight (≥ 0).
    pub weight: f64,
}

impl Region {
    fn new(c: &str, w: f64) -> Self {
        Self {
            country: c.into(),
            weight: w,
        }
    }
}

/// `[latency]`: RTT between two nodes = region RTT (RIPE Atlas country-pair mean, ×`rtt_scale`;
/// `same_region_rtt_ms` within a country, since the table's same-country means are inflated by
/// geolocation noise) + both ends' one-way access latency ×2, + per-message jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencySection {
    /// Backbone RTT between two nodes in the same country, ms.
    pub same_region_rtt_ms: f64,
    /// Multiplier on the RIPE country-pair means.
    pub rtt_scale: f64,
    /// Per-peer one-way access (last-mile) latency, ms. Default lognormal with median 7 ms and
    /// a tail to ~25 ms: Ookla's 9 ms median fixed RTT to a nearby server and the FCC MBA 2011
    /// 24–49 ms peak RTTs by access type.
    pub access_ms: Dist,
    /// One-way access latency of super-peers, origins and tracker (datacentre), ms.
    pub server_access_ms: f64,
    /// Mean of the exponential per-message jitter, ms.
    pub jitter_ms: f64,
    /// Per-message loss probability; the transport (QUIC) retransmits, so a loss costs one
    /// probe timeout (RTT + 4×jitter + 25 ms) of delay rather than the message.
    pub loss: f64,
    /// Sending to a node that is offline fails after this long (the dial times out), ms.
    pub dial_timeout_ms: f64,
    /// RTT overrides for country pairs, ms.
    pub overrides: Vec<RttOverride>,
}

impl Default for LatencySection {
    fn default() -> Self {
        Self {
            same_region_rtt_ms: 10.0,
            rtt_scale: 1.0,
            access_ms: Dist::Lognormal {
                mu: 7.0f64.ln(),
                sigma: 0.5,
            },
            server_access_ms: 0.5,
            jitter_ms: 2.0,
            loss: 0.001,
            dial_timeout_ms: 2000.0,
            overrides: Vec::new(),
        }
    }
}

/// A fixed RTT for one country pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttOverride {
    /// One country.
    pub a: String,
    /// The other.
    pub b: String,
    /// Round-trip time, ms (≥ 0).
    pub rtt_ms: f64,
}

/// `[bandwidth]`: per-node access capacity. Each node's uplink and downlink serve messages one
/// at a time (chunk-granularity round robin among concurrent flows); messages under 1,500
/// bytes (requests, control) do not queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthSection {
    /// Peer downlink, Mbit/s. Default lognormal, median 60 (Ookla Jan 2025 global fixed median
    /// 97.6 down, with a wide spread across countries).
    pub peer_down_mbps: Dist,
    /// Peer uplink as a fraction of its downlink (Ookla: 52.8 / 97.6 ≈ 0.54).
    pub peer_up_ratio: f64,
    /// Upload cap the peer grants to serving others, fraction of its uplink.
    pub peer_upload_share: f64,
    /// Super-peer uplink and downlink, Mbit/s.
    pub superpeer_mbps: f64,
    /// Origin uplink, Mbit/s.
    pub origin_mbps: f64,
}

impl Default for BandwidthSection {
    fn default() -> Self {
        Self {
            peer_down_mbps: Dist::Lognormal {
                mu: 60f64.ln(),
                sigma: 0.8,
            },
            peer_up_ratio: 0.54,
            peer_upload_share: 0.5,
            superpeer_mbps: 1000.0,
            origin_mbps: 10_000.0,
        }
    }
}

/// `[nat]`: shares of peers by NAT type and what they imply. Open peers accept direct
/// connections; two NATed peers connect by hole punching (DCUtR) only if neither is symmetric,
/// and then succeed with `hole_punch_success`; otherwise traffic goes through a super-peer relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatSection {
    /// Publicly reachable.
    pub open: f64,
    /// Endpoint-independent mapping (hole punching can work).
    pub cone: f64,
    /// Endpoint-dependent mapping (hole punching fails).
    pub symmetric: f64,
    /// Success probability of a hole punch between two cone peers (Trautwein et al. 2025:
    /// 70% ± 7.1% for libp2p DCUtR).
    pub hole_punch_success: f64,
}

impl Default for NatSection {
    fn default() -> Self {
        // Halkes & Pouwelse 2011: ~64% of peers behind NAT/firewall that allows puncturing;
        // the rest split between open and symmetric.
        Self {
            open: 0.20,
            cone: 0.64,
            symmetric: 0.16,
            hole_punch_success: 0.70,
        }
    }
}

/// `[churn]`: a peer alternates online sessions and offline gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChurnSection {
    /// Session length, minutes. Default Weibull k = 0.5, λ = 30 (Stutzbach & Rejaie IMC 2006:
    /// heavy-tailed, k 0.34–0.59, λ 21–42 min).
    pub session_min: Dist,
    /// Time offline between sessions, minutes. Default lognormal with median ≈ 90 min.
    pub offline_min: Dist,
}

impl Default for ChurnSection {
    fn default() -> Self {
        Self {
            session_min: Dist::Weibull {
                shape: 0.5,
                scale: 30.0,
            },
            offline_min: Dist::Lognormal {
                mu: 90f64.ln(),
                sigma: 1.3,
            },
        }
    }
}

/// `[catalog]`: tracks, popularity and new releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSection {
    /// Number of tracks.
    pub tracks: u32,
    /// Zipf exponent of track popularity (> 0). Default 1.07: fits Kreitz & Niemelä's
    /// "88% of accesses to the top 12%" for a 100k-track catalog [derived].
    pub zipf_alpha: f64,
    /// Track duration, seconds. Default lognormal with median 225 s.
    pub track_duration_s: Dist,
    /// Audio bitrate, kbit/s (Spotify 2010: Ogg Vorbis 160).
    pub bitrate_kbps: f64,
    /// New releases: tracks that become hot suddenly (`[[catalog.releases]]`).
    pub releases: Vec<Release>,
    /// Chunk payloads carry `1/payload_scale` of the bytes they model (default 256). The wire
    /// model still charges the modelled size, and every byte-valued threshold handed to the
    /// cores (cache size, upload rate and burst, initial rate estimates) is divided by the
    /// same factor, so the cores decide in consistent units while hashing and copying 256×
    /// less. Statistics are scaled back. 1 = real-size payloads (exact, slow).
    pub payload_scale: u32,
}

impl Default for CatalogSection {
    fn default() -> Self {
        Self {
            tracks: 100_000,
            zipf_alpha: 1.07,
            track_duration_s: Dist::Lognormal {
                mu: 225f64.ln(),
                sigma: 0.3,
            },
            bitrate_kbps: 160.0,
            releases: Vec::new(),
            payload_scale: 256,
        }
    }
}

/// A release: from `at_s` for `window_s`, a share of all track choices goes to one new track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Start, seconds into the run.
    pub at_s: f64,
    /// How long it stays hot, seconds.
    pub window_s: f64,
    /// Fraction of track choices in the window that go to it (0..=1).
    pub play_share: f64,
}

/// `[listening]`: plays, skips and playlist continuation. Skip defaults: Lamere, "The Skip"
/// (2014): 24.1% of plays skipped within 5 s, 35.1% within 30 s, 48.6% before the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListeningSection {
    /// Cumulative share of plays skipped within 5 s.
    pub skip_within_5s: f64,
    /// Cumulative share skipped within 30 s.
    pub skip_within_30s: f64,
    /// Cumulative share skipped before the end.
    pub skip_before_end: f64,
    /// Share of plays whose next track is known in advance (playlist/album order), so the
    /// client can prefetch it (Kreitz & Niemelä: 61%).
    pub playlist_continuation: f64,
    /// Pause between two plays in a session, seconds.
    pub gap_s: Dist,
    /// Share of track choices that replay one of the listener's own last 16 tracks instead of
    /// drawing from global popularity (default 0: no published figure found yet; it is what
    /// makes local caches pay off, cf. Kreitz & Niemelä's 55% of bytes from the cache).
    pub replay_share: f64,
}

impl Default for ListeningSection {
    fn default() -> Self {
        Self {
            skip_within_5s: 0.241,
            skip_within_30s: 0.351,
            skip_before_end: 0.486,
            playlist_continuation: 0.61,
            gap_s: Dist::Const(0.0),
            replay_share: 0.0,
        }
    }
}

/// `[cache]`: per-peer disk cache (policy is the peer core's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// Cache size, MB.
    pub size_mb: Dist,
    /// Plays of listening history replayed into each cache before the run (warm caches).
    pub history_plays: u32,
    /// Time to read a chunk from the disk cache, ms (default 2: an SSD plus the file system;
    /// a 2010 hard disk seeks in ~10).
    pub read_ms: f64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            size_mb: Dist::Const(1024.0),
            history_plays: 200,
            read_ms: 2.0,
        }
    }
}

/// `[tracker]`: thresholds of the tracker's peer registry (the policy is
/// `shoal_tracker::core::PeerRegistry`'s; anything not set here is its `RegistryConfig`
/// default, what a deployed tracker runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerSection {
    /// How long a listing lives without a renewing announce, s (default 600, the registry's
    /// default). Peers that quit stay listed this long.
    pub ttl_s: f64,
}

impl Default for TrackerSection {
    fn default() -> Self {
        Self { ttl_s: 600.0 }
    }
}

/// `[client]`: what the listener's client does around the core.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSection {
    /// Round trips to the origin (the service's access point) before a play that does not
    /// continue a prefetched playlist reaches the core, cached tracks included; they travel
    /// the simulated network and count in the time to first audio. Default 0: Shoal's client
    /// asks nothing before fetching. A Spotify-style client asks 2 (librespot's
    /// `PlayerTrackLoader::load_remote_track`: the track's metadata, then its decryption key,
    /// one after the other, even when the file is cached).
    pub play_setup_round_trips: u32,
}

/// `[peer]`: thresholds of every listener's core (`shoal_peer::core::PeerConfig`), for
/// scenarios that model another client's policy or sweep Shoal's. A key left out keeps the
/// shipped client's default, so the core runs exactly as `shoal-peer` does.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerSection {
    /// Chunks at the start of a play asked from the origin and the best peer at once
    /// (`SchedulerConfig::hedge_start_chunks`; default 1, the short first chunk).
    pub hedge_start_chunks: Option<u32>,
    /// How long chunks wait for an unanswered holder lookup before the origin is asked
    /// (`lookup_wait_ms`; default 500).
    pub lookup_wait_ms: Option<u64>,
    /// Audio kept fetched or in flight ahead of the playback position (`buffer_ahead_ms`;
    /// default 30,000).
    pub buffer_ahead_ms: Option<u64>,
    /// Buffer below which missing chunks are urgent (`urgent_buffer_ms`; default 4,000).
    pub urgent_buffer_ms: Option<u64>,
    /// Audio there before a play starts (`start_buffer_ms`; default 0: the first chunk).
    pub start_buffer_ms: Option<u64>,
    /// Requests in flight to one peer (`max_in_flight_per_peer`; default 2).
    pub max_in_flight_per_peer: Option<u32>,
    /// Holders kept per track (`max_peers_per_track`; default 16); a lookup asks for this many.
    pub max_peers_per_track: Option<u32>,
    /// Audio left in the current track when the next one is prefetched
    /// (`prefetch_before_end_ms`; default 30,000).
    pub prefetch_before_end_ms: Option<u64>,
    /// Uploads a listener serves at once (`ServerConfig::max_uploads`; default 8).
    pub max_uploads: Option<u32>,
}

/// A failure injected at a time (`[[faults]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, seconds into the run.
    pub at_s: f64,
    /// What fails.
    pub kind: FaultKind,
    /// Share of that kind of node that fails (0..=1), lowest indices first.
    pub fraction: f64,
    /// Seconds until they come back (absent: they stay down).
    pub restart_after_s: Option<f64>,
}

/// What a fault takes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Super-peers crash.
    SuperpeerCrash,
    /// Origins become unreachable.
    OriginOutage,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::SuperpeerCrash => "superpeer_crash",
            FaultKind::OriginOutage => "origin_outage",
        })
    }
}

/// A loaded scenario with where it came from (for error locations).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed, validated scenario.
    pub scenario: Scenario,
    /// The file it came from.
    pub file: PathBuf,
    /// The `--set` assignments applied, in order.
    pub sets: Vec<(String, String)>,
}

/// Reads, overrides (`key=value` strings) and validates a scenario file.
pub fn load(file: &Path, sets: &[String]) -> Result<Loaded, ScenarioError> {
    let text = std::fs::read_to_string(file).map_err(|e| ScenarioError::Io {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text, file, sets)
}

/// Like [`load`] for text already in memory (`file` only names it in errors).
pub fn parse(text: &str, file: &Path, sets: &[String]) -> Result<Loaded, ScenarioError> {
    let invalid = |line, key: String, message: String, from_set| ScenarioError::Invalid {
        file: file.to_path_buf(),
        line,
        key,
        message,
        from_set,
    };
    // First the file alone, so type and key errors carry the file's spans.
    let scenario: Scenario = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of_offset(text, s.start));
        let key = line.map(|l| key_at_line(text, l)).unwrap_or_default();
        invalid(line, key, e.message().trim().to_string(), None)
    })?;
    let mut parsed_sets = Vec::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| ScenarioError::BadSet(s.clone()))?;
        parsed_sets.push((k, v));
    }
    let scenario = if parsed_sets.is_empty() {
        scenario
    } else {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(None, String::new(), e.to_string(), None))?;
        for (k, v) in &parsed_sets {
            apply_set(&mut table, k, v)
                .map_err(|m| invalid(None, k.clone(), m, Some(format!("{k}={v}"))))?;
        }
        toml::Value::Table(table)
            .try_into::<Scenario>()
            .map_err(|e| {
                let all = parsed_sets
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                invalid(
                    None,
                    String::new(),
                    e.message().trim().to_string(),
                    Some(all),
                )
            })?
    };
    if let Err((key, message)) = validate(&scenario) {
        let from_set = parsed_sets
            .iter()
            .rev()
            .find(|(k, _)| {
                key == *k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(k, v)| format!("{k}={v}"));
        let line = if from_set.is_some() {
            None
        } else {
            find_key_line(text, &key)
        };
        return Err(invalid(line, key, message, from_set));
    }
    Ok(Loaded {
        scenario,
        file: file.to_path_buf(),
        sets: parsed_sets,
    })
}

/// Sets dotted `key` in `table` to `value` parsed as a TOML value (a bare word is a string).
fn apply_set(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let Some((last, path)) = parts.split_last() else {
        return Err("empty key".into());
    };
    let mut cur = table;
    for p in path {
        let entry = cur
            .entry((*p).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{p}` is not a table")),
        };
    }
    cur.insert((*last).to_string(), parsed);
    Ok(())
}

type Check = Result<(), (String, String)>;

fn need(ok: bool, key: &str, msg: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err((key.to_string(), msg()))
    }
}

fn prob(v: f64, key: &str) -> Check {
    need((0.0..=1.0).contains(&v), key, || {
        format!("must be a probability in 0..=1 (got {v})")
    })
}

fn positive(v: f64, key: &str) -> Check {
    need(v.is_finite() && v > 0.0, key, || {
        format!("must be > 0 (got {v})")
    })
}

fn non_negative(v: f64, key: &str) -> Check {
    need(v.is_finite() && v >= 0.0, key, || {
        format!("must be ≥ 0 (got {v})")
    })
}

fn dist(d: &Dist, key: &str) -> Check {
    d.check().map_err(|(sub, m)| (format!("{key}.{sub}"), m))
}

/// Checks every value the types cannot; `Err((dotted key, message))` for the first problem.
pub fn validate(s: &Scenario) -> Check {
    positive(s.run.duration_s, "run.duration_s")?;
    positive(s.run.sample_interval_s, "run.sample_interval_s")?;
    let p = &s.population;
    need(p.peers >= 1, "population.peers", || "must be ≥ 1".into())?;
    need(p.superpeers <= p.peers, "population.superpeers", || {
        format!(
            "{} super-peers but only {} peers: there cannot be more super-peers than peers",
            p.superpeers, p.peers
        )
    })?;
    need(p.origins >= 1, "population.origins", || {
        "must be ≥ 1 (the origin is the fallback that always has every chunk)".into()
    })?;
    need(!p.regions.is_empty(), "population.regions", || {
        "needs at least one region".into()
    })?;
    let table = crate::rtt::RipeTable::shipped();
    for (i, r) in p.regions.iter().enumerate() {
        non_negative(r.weight, &format!("population.regions[{i}].weight"))?;
        need(
            table.knows(&r.country),
            &format!("population.regions[{i}].country"),
            || format!("{:?} is not a country in the RIPE RTT table", r.country),
        )?;
    }
    need(
        p.regions.iter().map(|r| r.weight).sum::<f64>() > 0.0,
        "population.regions",
        || "weights must not all be 0".into(),
    )?;
    need(
        table.knows(&p.server_region),
        "population.server_region",
        || {
            format!(
                "{:?} is not a country in the RIPE RTT table",
                p.server_region
            )
        },
    )?;
    for (i, c) in p.superpeer_regions.iter().enumerate() {
        need(
            table.knows(c),
            &format!("population.superpeer_regions[{i}]"),
            || format!("{c:?} is not a country in the RIPE RTT table"),
        )?;
    }
    let l = &s.latency;
    non_negative(l.same_region_rtt_ms, "latency.same_region_rtt_ms")?;
    positive(l.rtt_scale, "latency.rtt_scale")?;
    dist(&l.access_ms, "latency.access_ms")?;
    non_negative(l.server_access_ms, "latency.server_access_ms")?;
    non_negative(l.jitter_ms, "latency.jitter_ms")?;
    need((0.0..1.0).contains(&l.loss), "latency.loss", || {
        format!("must be in [0, 1) (got {})", l.loss)
    })?;
    positive(l.dial_timeout_ms, "latency.dial_timeout_ms")?;
    for (i, o) in l.overrides.iter().enumerate() {
        let k = format!("latency.overrides[{i}]");
        need(
            o.rtt_ms.is_finite() && o.rtt_ms >= 0.0,
            &format!("{k}.rtt_ms"),
            || format!("an RTT cannot be negative (got {} ms)", o.rtt_ms),
        )?;
        need(table.knows(&o.a), &format!("{k}.a"), || {
            format!("unknown country {:?}", o.a)
        })?;
        need(table.knows(&o.b), &format!("{k}.b"), || {
            format!("unknown country {:?}", o.b)
        })?;
    }
    let b = &s.bandwidth;
    dist(&b.peer_down_mbps, "bandwidth.peer_down_mbps")?;
    positive(b.peer_up_ratio, "bandwidth.peer_up_ratio")?;
    prob(b.peer_upload_share, "bandwidth.peer_upload_share")?;
    positive(b.superpeer_mbps, "bandwidth.superpeer_mbps")?;
    positive(b.origin_mbps, "bandwidth.origin_mbps")?;
    let n = &s.nat;
    prob(n.open, "nat.open")?;
    prob(n.cone, "nat.cone")?;
    prob(n.symmetric, "nat.symmetric")?;
    prob(n.hole_punch_success, "nat.hole_punch_success")?;
    let total = n.open + n.cone + n.symmetric;
    need((total - 1.0).abs() < 1e-6, "nat.symmetric", || {
        format!("nat.open + nat.cone + nat.symmetric must be 1 (got {total})")
    })?;
    dist(&s.churn.session_min, "churn.session_min")?;
    dist(&s.churn.offline_min, "churn.offline_min")?;
    positive(s.churn.session_min.mean(), "churn.session_min")?;
    let c = &s.catalog;
    need(c.tracks >= 1, "catalog.tracks", || "must be ≥ 1".into())?;
    need(
        c.zipf_alpha.is_finite() && c.zipf_alpha > 0.0,
        "catalog.zipf_alpha",
        || format!("the Zipf exponent must be > 0 (got {})", c.zipf_alpha),
    )?;
    dist(&c.track_duration_s, "catalog.track_duration_s")?;
    positive(c.bitrate_kbps, "catalog.bitrate_kbps")?;
    need(
        (1..=1024).contains(&c.payload_scale),
        "catalog.payload_scale",
        || format!("must be 1..=1024 (got {})", c.payload_scale),
    )?;
    // A chunk's payload must hold its audio as Opus packets (≥ 3 bytes per ≤ 120 ms packet,
    // the manifest's rule): a full chunk models bitrate × CHUNK_MS bytes.
    let max_scale = crate::catalog::max_payload_scale(c.bitrate_kbps);
    need(
        c.payload_scale == 1 || f64::from(c.payload_scale) <= max_scale,
        "catalog.payload_scale",
        || {
            format!(
                "must be ≤ {} at catalog.bitrate_kbps = {} (got {}): a scaled chunk would be too \
                 small to hold its audio (≥ 3 bytes per 120 ms)",
                max_scale.floor().max(1.0),
                c.bitrate_kbps,
                c.payload_scale
            )
        },
    )?;
    for (i, r) in c.releases.iter().enumerate() {
        let k = format!("catalog.releases[{i}]");
        non_negative(r.at_s, &format!("{k}.at_s"))?;
        positive(r.window_s, &format!("{k}.window_s"))?;
        prob(r.play_share, &format!("{k}.play_share"))?;
    }
    let li = &s.listening;
    prob(li.skip_within_5s, "listening.skip_within_5s")?;
    prob(li.skip_within_30s, "listening.skip_within_30s")?;
    prob(li.skip_before_end, "listening.skip_before_end")?;
    need(
        li.skip_within_30s >= li.skip_within_5s,
        "listening.skip_within_30s",
        || "is cumulative: must be ≥ skip_within_5s".into(),
    )?;
    need(
        li.skip_before_end >= li.skip_within_30s,
        "listening.skip_before_end",
        || "is cumulative: must be ≥ skip_within_30s".into(),
    )?;
    prob(li.playlist_continuation, "listening.playlist_continuation")?;
    dist(&li.gap_s, "listening.gap_s")?;
    prob(li.replay_share, "listening.replay_share")?;
    dist(&s.cache.size_mb, "cache.size_mb")?;
    non_negative(s.cache.read_ms, "cache.read_ms")?;
    need(
        s.tracker.ttl_s.is_finite() && s.tracker.ttl_s >= 1.0 && s.tracker.ttl_s <= 4.0e9,
        "tracker.ttl_s",
        || {
            format!(
                "must be between 1 s and 4e9 s (the registry's limits; got {})",
                s.tracker.ttl_s
            )
        },
    )?;
    let pe = &s.peer;
    // Counts; 0 is meaningful only for hedging (no hedged start).
    for (v, key, min) in [
        (pe.hedge_start_chunks, "peer.hedge_start_chunks", 0),
        (pe.max_in_flight_per_peer, "peer.max_in_flight_per_peer", 1),
        (pe.max_peers_per_track, "peer.max_peers_per_track", 1),
        (pe.max_uploads, "peer.max_uploads", 1),
    ] {
        need(v.is_none_or(|v| (min..=1024).contains(&v)), key, || {
            format!("must be between {min} and 1024 (got {})", v.unwrap_or(0))
        })?;
    }
    for (v, key) in [
        (pe.lookup_wait_ms, "peer.lookup_wait_ms"),
        (pe.buffer_ahead_ms, "peer.buffer_ahead_ms"),
        (pe.urgent_buffer_ms, "peer.urgent_buffer_ms"),
        (pe.start_buffer_ms, "peer.start_buffer_ms"),
        (pe.prefetch_before_end_ms, "peer.prefetch_before_end_ms"),
    ] {
        need(v.is_none_or(|v| v <= 3_600_000), key, || {
            format!(
                "must be at most 3,600,000 ms, an hour (got {})",
                v.unwrap_or(0)
            )
        })?;
    }
    for (i, f) in s.faults.iter().enumerate() {
        let k = format!("faults[{i}]");
        need(
            f.at_s.is_finite() && f.at_s >= 0.0 && f.at_s <= s.run.duration_s,
            &format!("{k}.at_s"),
            || {
                format!(
                    "must be within the run, 0..={} s (got {})",
                    s.run.duration_s, f.at_s
                )
            },
        )?;
        prob(f.fraction, &format!("{k}.fraction"))?;
        if let Some(r) = f.restart_after_s {
            positive(r, &format!("{k}.restart_after_s"))?;
        }
    }
    Ok(())
}

/// 1-based line of byte `offset` in `text`.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// A table header line's path (`[a.b]` or `[[a]]`), if the line is one.
fn header_of(line: &str) -> Option<(String, bool)> {
    let t = strip_comment(line).trim();
    if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        Some((inner.trim().to_string(), true))
    } else {
        t.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .map(|inner| (inner.trim().to_string(), false))
    }
}

fn strip_comment(line: &str) -> &str {
    // Good enough for locating keys: scenario strings do not contain '#'.
    line.split_once('#').map_or(line, |(a, _)| a)
}

/// The bare key assigned on a line (`key = ...` → `key`), if any.
fn key_of(line: &str) -> Option<String> {
    let t = strip_comment(line).trim();
    let (k, _) = t.split_once('=')?;
    let k = k.trim().trim_matches('"');
    (!k.is_empty() && !k.starts_with('[') && !k.starts_with('{')).then(|| k.to_string())
}

/// The dotted key path assigned at 1-based `line` (header + key), for error messages.
pub fn key_at_line(text: &str, line: usize) -> String {
    let mut header = String::new();
    for (i, l) in text.lines().enumerate() {
        if let Some((h, _)) = header_of(l) {
            header = h;
        }
        if i + 1 == line {
            return match key_of(l) {
                Some(k) if header.is_empty() => k,
                Some(k) => format!("{header}.{k}"),
                None => header,
            };
        }
    }
    header
}

/// Finds the 1-based line where dotted `key` (with `[i]` indices, e.g.
/// `latency.overrides[0].rtt_ms` or `faults[1].at_s`) is written in `text`.
pub fn find_key_line(text: &str, key: &str) -> Option<usize> {
    // Split "a.b[2].c" into segments with optional indices.
    let segs: Vec<(String, Option<usize>)> = key
        .split('.')
        .map(|s| match s.split_once('[') {
            Some((name, rest)) => (
                name.to_string(),
                rest.trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (s.to_string(), None),
        })
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut header: Vec<String> = Vec::new();
    let mut aot_counts: std::collections::HashMap<String, usize> = Default::default();
    let mut header_index: Option<usize> = None;
    let mut best: Option<usize> = None;
    for (i, l) in lines.iter().enumerate() {
        if let Some((h, is_aot)) = header_of(l) {
            header = h.split('.').map(|s| s.trim().to_string()).collect();
            header_index = if is_aot {
                let c = aot_counts.entry(h.clone()).or_insert(0);
                *c += 1;
                Some(*c - 1)
            } else {
                None
            };
            // A header that is exactly the wanted table (or array element).
            if header.len() <= segs.len()
                && header.iter().zip(&segs).all(|(h, (s, _))| h == s)
                && (!is_aot || segs[header.len() - 1].1 == header_index)
                && best.is_none()
                && header.len() == segs.len()
            {
                best = Some(i + 1);
            }
            continue;
        }
        let Some(k) = key_of(l) else { continue };
        let mut full: Vec<String> = header.clone();
        full.extend(k.split('.').map(|s| s.trim().to_string()));
        if full.len() > segs.len() || !full.iter().zip(&segs).all(|(f, (s, _))| f == s) {
            continue;
        }
        // Array-of-tables element must match the requested index.
        if let Some(idx) = header_index
            && !header.is_empty()
            && segs[header.len() - 1].1 != Some(idx)
        {
            continue;
        }
        if full.len() == segs.len() && segs[full.len() - 1].1.is_none() {
            return Some(i + 1);
        }
        // The value is inline (array of inline tables, or an inline table): search inside it.
        let rest = &segs[full.len() - 1..];
        let offset: usize = lines[..i].iter().map(|l| l.len() + 1).sum::<usize>()
            + l.find('=').map_or(0, |p| p + 1);
        return Some(find_inline(text, offset, rest).unwrap_or(i + 1));
    }
    best
}

/// Inside an inline value starting at `offset`, follows `[idx]` and `.field` segments.
fn find_inline(text: &str, mut offset: usize, segs: &[(String, Option<usize>)]) -> Option<usize> {
    let bytes = text.as_bytes();
    for (n, (_, idx)) in segs.iter().enumerate() {
        if let Some(idx) = idx {
            // Find the idx-th element start (`{`) at array depth 1.
            let mut depth = 0i32;
            let mut seen = 0usize;
            let mut found = None;
            let mut j = offset;
            while j < bytes.len() {
                match bytes[j] {
                    b'[' => depth += 1,
                    b']' => {
                        depth -= 1;
                        if depth <= 0 {
                            break;
                        }
                    }
                    b'{' if depth == 1 => {
                        if seen == *idx {
                            found = Some(j);
                            break;
                        }
                        seen += 1;
                        // Skip to the matching brace.
                        let mut d = 0;
                        while j < bytes.len() {
                            if bytes[j] == b'{' {
                                d += 1;
                            } else if bytes[j] == b'}' {
                                d -= 1;
                                if d == 0 {
                                    break;
                                }
                            }
                            j += 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            offset = found?;
        }
        if let Some((field, _)) = segs.get(n + 1) {
            let hay = &text[offset..];
            let end = hay.find('}').unwrap_or(hay.len());
            if let Some(p) = hay[..end].find(field.as_str()) {
                return Some(line_of_offset(text, offset + p));
            }
            return Some(line_of_offset(text, offset));
        }
    }
    Some(line_of_offset(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse(text, Path::new("bad.toml"), &sets)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(validate(&Scenario::default()), Ok(()));
        let l = parse("", Path::new("empty.toml"), &[]).expect("empty file is all defaults");
        assert_eq!(l.scenario, Scenario::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[run]\nduration_s = 10.0\n\n[catalog]\ntrackz = 5\n", &[]);
        assert!(e.starts_with("bad.toml:5:"), "{e}");
        assert!(e.contains("trackz"), "{e}");
        assert!(e.contains("catalog"), "{e}");
    }

    #[test]
    fn peer_thresholds_are_checked_and_named() {
        let e = err("[peer]\nmax_in_flight_per_peer = 0\n", &[]);
        assert!(e.contains("peer.max_in_flight_per_peer"), "{e}");
        let e = err("", &["peer.buffer_ahead_ms=99999999"]);
        assert!(e.contains("peer.buffer_ahead_ms"), "{e}");
        let e = err("[peer]\nhedge_chunks = 2\n", &[]);
        assert!(
            e.starts_with("bad.toml:2:") && e.contains("hedge_chunks"),
            "{e}"
        );
        let ok = parse(
            "[peer]\nhedge_start_chunks = 0\n",
            Path::new("ok.toml"),
            &["peer.max_uploads=3".to_string()],
        )
        .expect("valid thresholds");
        assert_eq!(ok.scenario.peer.hedge_start_chunks, Some(0));
        assert_eq!(ok.scenario.peer.max_uploads, Some(3));
        assert_eq!(
            ok.scenario.peer.lookup_wait_ms, None,
            "unset keeps the client's default"
        );
    }

    #[test]
    fn unknown_section() {
        let e = err("[run]\nduration_s = 10.0\n[nope]\nx = 1\n", &[]);
        assert!(e.contains("nope"), "{e}");
        assert!(e.starts_with("bad.toml:"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = err(
            "[population]\npeers = 10\n\n[catalog]\nzipf_alpha = \"high\"\n",
            &[],
        );
        assert!(e.starts_with("bad.toml:5:"), "{e}");
        assert!(e.contains("catalog.zipf_alpha"), "{e}");
    }

    #[test]
    fn alpha_must_be_positive() {
        let e = err("[catalog]\ntracks = 10\nzipf_alpha = 0.0\n", &[]);
        assert!(e.starts_with("bad.toml:3:"), "{e}");
        assert!(e.contains("catalog.zipf_alpha") && e.contains("> 0"), "{e}");
        let e = err("[catalog]\nzipf_alpha = -1.5\n", &[]);
        assert!(e.starts_with("bad.toml:2:"), "{e}");
    }

    #[test]
    fn tracker_ttl_must_be_usable() {
        let e = err("[tracker]\nttl_s = 0.5\n", &[]);
        assert!(e.starts_with("bad.toml:2:"), "{e}");
        assert!(e.contains("tracker.ttl_s"), "{e}");
    }

    #[test]
    fn negative_rtt_in_inline_array() {
        let text = "[latency]\njitter_ms = 1.0\noverrides = [\n  { a = \"SE\", b = \"GB\", rtt_ms = 30.0 },\n  { a = \"SE\", b = \"US\", rtt_ms = -4.0 },\n]\n";
        let e = err(text, &[]);
        assert!(e.starts_with("bad.toml:5:"), "{e}");
        assert!(
            e.contains("latency.overrides[1].rtt_ms") && e.contains("negative"),
            "{e}"
        );
    }

    #[test]
    fn more_superpeers_than_peers() {
        let e = err("[population]\npeers = 3\nsuperpeers = 4\n", &[]);
        assert!(e.starts_with("bad.toml:3:"), "{e}");
        assert!(e.contains("population.superpeers"), "{e}");
    }

    #[test]
    fn fault_in_array_of_tables() {
        let text = "[run]\nduration_s = 100.0\n\n[[faults]]\nat_s = 10.0\nkind = \"superpeer_crash\"\nfraction = 0.5\n\n[[faults]]\nat_s = 50.0\nkind = \"superpeer_crash\"\nfraction = 1.5\n";
        let e = err(text, &[]);
        assert!(e.starts_with("bad.toml:12:"), "{e}");
        assert!(e.contains("faults[1].fraction"), "{e}");
        let e = err(
            "[[faults]]\nat_s = 1.0\nkind = \"meteor\"\nfraction = 0.1\n",
            &[],
        );
        assert!(e.starts_with("bad.toml:3:") && e.contains("meteor"), "{e}");
    }

    #[test]
    fn dist_errors() {
        let e = err(
            "[churn]\nsession_min = { weibull = { shape = -1.0, scale = 3.0 } }\n",
            &[],
        );
        assert!(e.starts_with("bad.toml:2:"), "{e}");
        assert!(e.contains("churn.session_min.weibull.shape"), "{e}");
        let e = err("[churn]\nsession_min = { gamma = { k = 1.0 } }\n", &[]);
        assert!(e.starts_with("bad.toml:2:") && e.contains("gamma"), "{e}");
    }

    #[test]
    fn sets_override_and_are_blamed() {
        let l = parse(
            "[catalog]\nzipf_alpha = 1.0\n",
            Path::new("ok.toml"),
            &["catalog.zipf_alpha=0.8".into(), "population.peers=7".into()],
        )
        .expect("valid");
        assert_eq!(l.scenario.catalog.zipf_alpha, 0.8);
        assert_eq!(l.scenario.population.peers, 7);
        let e = err("[catalog]\nzipf_alpha = 1.0\n", &["catalog.zipf_alpha=0"]);
        assert!(
            e.contains("--set catalog.zipf_alpha=0") && e.contains("> 0"),
            "{e}"
        );
        let e = err("", &["catalog.payload_scale=1024"]);
        assert!(
            e.contains("catalog.payload_scale") && e.contains("must be ≤ 789"),
            "{e}"
        );
        let e = err("", &["catalog.zipf=1"]);
        assert!(e.contains("zipf") && e.contains("--set"), "{e}");
        let e = err("", &["novalue"]);
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn nat_shares_must_sum_to_one() {
        let e = err("[nat]\nopen = 0.5\ncone = 0.5\nsymmetric = 0.5\n", &[]);
        assert!(e.contains("must be 1"), "{e}");
    }

    #[test]
    fn weibull_mean_uses_gamma() {
        let d = Dist::Weibull {
            shape: 1.0,
            scale: 3.0,
        };
        assert!((d.mean() - 3.0).abs() < 1e-9);
        assert!((gamma(5.0) - 24.0).abs() < 1e-9);
    }
}
