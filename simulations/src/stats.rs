//! Owns what a run measures: playback statistics fed by core events (names as in DESIGN.md:
//! `time_to_first_audio_ms`, `stutter_rate`, `bytes_by_source`, `share_by_source`), the
//! workload counters, the sampled time series, and the `summary.json` structure.

use serde::{Deserialize, Serialize};

/// Where a peer got bytes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its own disk cache.
    Cache,
    /// Other peers.
    Peers,
    /// Super-peer caches.
    SuperPeers,
    /// The origin.
    Origin,
}

/// Per-source values, named as in DESIGN.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BySource<T> {
    /// From the local cache.
    pub cache: T,
    /// From other peers.
    pub peers: T,
    /// From super-peers.
    pub superpeers: T,
    /// From the origin.
    pub origin: T,
}

impl BySource<u64> {
    fn add(&mut self, s: Source, n: u64) {
        match s {
            Source::Cache => self.cache += n,
            Source::Peers => self.peers += n,
            Source::SuperPeers => self.superpeers += n,
            Source::Origin => self.origin += n,
        }
    }

    /// Sum over sources.
    pub fn total(&self) -> u64 {
        self.cache + self.peers + self.superpeers + self.origin
    }

    /// Fractions of the total (all zero when nothing was counted).
    pub fn shares(&self) -> BySource<f64> {
        let t = self.total() as f64;
        if t == 0.0 {
            return BySource::default();
        }
        BySource {
            cache: self.cache as f64 / t,
            peers: self.peers as f64 / t,
            superpeers: self.superpeers as f64 / t,
            origin: self.origin as f64 / t,
        }
    }
}

/// Playback statistics, filled only from events the real peer core reports.
#[derive(Debug, Clone, Default)]
pub struct PlaybackStats {
    first_audio_ms: Vec<f32>,
    plays_finished: u64,
    plays_stuttered: u64,
    bytes: BySource<u64>,
    interval_bytes: BySource<u64>,
}

impl PlaybackStats {
    /// A play started producing audio `ms` after it was asked for.
    pub fn first_audio(&mut self, ms: f64) {
        self.first_audio_ms.push(ms as f32);
    }

    /// A play ended (finished, skipped or stopped) with `stutters` underruns.
    pub fn play_ended(&mut self, stutters: u32) {
        self.plays_finished += 1;
        if stutters > 0 {
            self.plays_stuttered += 1;
        }
    }

    /// `n` bytes of audio obtained from `source`.
    pub fn bytes(&mut self, source: Source, n: u64) {
        self.bytes.add(source, n);
        self.interval_bytes.add(source, n);
    }

    pub(crate) fn take_interval(&mut self) -> BySource<u64> {
        std::mem::take(&mut self.interval_bytes)
    }

    /// Sorted first-audio latencies (ms).
    pub fn latencies_sorted(&self) -> Vec<f32> {
        let mut v = self.first_audio_ms.clone();
        v.sort_by(f32::total_cmp);
        v
    }

    pub(crate) fn summary(&self) -> (Option<Percentiles>, Option<f64>, BySource<u64>) {
        let sorted = self.latencies_sorted();
        let pct = (!sorted.is_empty()).then(|| Percentiles::of_sorted(&sorted));
        let stutter = (self.plays_finished > 0)
            .then(|| self.plays_stuttered as f64 / self.plays_finished as f64);
        (pct, stutter, self.bytes)
    }
}

/// p50/p90/p99 of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of a sorted, non-empty sample.
    pub fn of_sorted(v: &[f32]) -> Self {
        let at = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            f64::from(v[i])
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }
}

/// Listener-side counters (the workload model itself, independent of the cores).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkloadStats {
    /// Sessions started.
    pub sessions: u64,
    /// Plays started.
    pub plays: u64,
    /// Plays the listener skipped before the end.
    pub skips: u64,
    /// Plays whose next track was announced in advance (prefetchable).
    pub predictable_next: u64,
    /// Plays of new releases.
    pub release_plays: u64,
    /// Mean number of peers online over the samples.
    pub mean_online: f64,
    /// Most peers online at a sample.
    pub peak_online: u64,
    /// Share of plays that went to the 12% most popular tracks (Kreitz & Niemelä: 88%).
    pub top12pct_play_share: f64,
}

/// One row of `timeseries.csv`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// End of the interval, seconds.
    pub t_s: f64,
    /// Peers online.
    pub online_peers: u64,
    /// Plays started in the interval.
    pub plays: u64,
    /// Skips in the interval.
    pub skips: u64,
    /// Events dispatched so far.
    pub events: u64,
    /// Origin egress in the interval, Mbit/s (transport-measured).
    pub origin_egress_mbps: f64,
    /// Super-peer egress (served + relayed), Mbit/s, summed over super-peers.
    pub superpeer_mbps: f64,
    /// Bytes by source in the interval (from the peer core's events).
    pub bytes: BySource<u64>,
}

/// Super-peer load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SuperPeerLoad {
    /// Peak of the summed super-peer egress over intervals, Mbit/s.
    pub peak_mbps: f64,
    /// Mean per super-peer egress, Mbit/s.
    pub mean_per_superpeer_mbps: f64,
    /// Bytes relayed for NATed peers.
    pub relayed_bytes: u64,
    /// Bytes sent by super-peer cores (cache hits, index answers).
    pub served_bytes: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the run.
    pub seed: u64,
    /// `--set` assignments applied.
    pub sets: Vec<String>,
    /// Peers simulated.
    pub peers: u32,
    /// Super-peers simulated.
    pub superpeers: u32,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Role cores driven in this run (empty: none integrated yet).
    pub cores: Vec<String>,
    /// Time to first audio, ms (null until the peer core is integrated).
    pub time_to_first_audio_ms: Option<Percentiles>,
    /// Share of plays with at least one stutter (null until the peer core is integrated).
    pub stutter_rate: Option<f64>,
    /// Audio bytes by source (null until the peer core is integrated).
    pub bytes_by_source: Option<BySource<u64>>,
    /// Fractions of audio bytes by source, summing to 1 (null until measured).
    pub share_by_source: Option<BySource<f64>>,
    /// Peak origin egress over sampling intervals, Mbit/s (null until cores send traffic).
    pub origin_egress_peak_mbps: Option<f64>,
    /// Super-peer load (null until cores send traffic).
    pub superpeer_load: Option<SuperPeerLoad>,
    /// The listening workload that was offered.
    pub workload: WorkloadStats,
    /// Events dispatched.
    pub events: u64,
    /// BLAKE3 of the event trace (equal for equal scenario + seed).
    pub trace_hash: String,
    /// What is missing and why.
    pub notes: Vec<String>,
    /// Wall-clock seconds (the only field that varies between identical runs).
    pub wall_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_one() {
        let mut s = PlaybackStats::default();
        s.bytes(Source::Cache, 55);
        s.bytes(Source::Peers, 36);
        s.bytes(Source::Origin, 9);
        let sh = s.summary().2.shares();
        assert!((sh.cache + sh.peers + sh.superpeers + sh.origin - 1.0).abs() < 1e-12);
        assert!((sh.origin - 0.09).abs() < 1e-12);
        assert_eq!(BySource::<u64>::default().shares().cache, 0.0);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        let p = Percentiles::of_sorted(&v);
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        let p = Percentiles::of_sorted(&[7.0]);
        assert_eq!(p.p99, 7.0);
    }

    #[test]
    fn stutter_rate_needs_plays() {
        let mut s = PlaybackStats::default();
        assert_eq!(s.summary().1, None);
        s.play_ended(0);
        s.play_ended(2);
        assert_eq!(s.summary().1, Some(0.5));
    }
}
