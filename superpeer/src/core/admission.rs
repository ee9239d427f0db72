//! Chunk-cache admission: which tracks the super-peer fetches and serves itself.
//!
//! The super-peer sees every holder lookup its leaves make. A track is **admitted** once
//! [`AdmissionConfig::after_leaves`] distinct leaves asked for it within
//! [`AdmissionConfig::window`]: one listener is not worth a copy, several in the same cluster
//! are (the cache then serves them all without crossing the relay or the origin). Admitted
//! tracks wait in a bounded queue until the driver's cache peer fetches them; once fetched they
//! are **cached** and lookups list the cache first.
//!
//! The core also keeps the ledger of what the cache holds, by track, with sizes: the driver's
//! disk cache evicts least-recently-used chunks when it is full, and the ledger mirrors that at
//! track granularity (a track is dropped from the ledger, oldest hit first, when the cached
//! bytes would exceed [`AdmissionConfig::max_cache_bytes`]), so lookups never advertise a track
//! the cache has likely lost.
//!
//! Sans-IO and bounded: tracks being counted ([`AdmissionConfig::max_tracked`], least recently
//! asked forgotten first), askers remembered per track (at most `after_leaves`), the fetch
//! queue ([`AdmissionConfig::max_queue`]) and the ledger ([`AdmissionConfig::max_cached`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use shoal_protocol::TrackId;
use shoal_protocol::ids::NodeId;
use shoal_protocol::sansio::Time;

/// Thresholds of a [`CacheAdmission`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Distinct leaves that must ask for a track within [`Self::window`] before it is fetched
    /// (default 2). 1 caches every track any leaf asks for.
    pub after_leaves: usize,
    /// The sliding window in which those lookups count (default 10 min).
    pub window: Duration,
    /// Tracks whose askers are being counted (default 10,000); the least recently asked is
    /// forgotten first.
    pub max_tracked: usize,
    /// Admitted tracks waiting to be fetched (default 64); beyond it admission waits for room
    /// (the next lookup of the track tries again).
    pub max_queue: usize,
    /// Bytes the cache holds (default 1 GiB): the ledger drops tracks beyond it.
    pub max_cache_bytes: u64,
    /// Tracks the ledger holds (default 100,000).
    pub max_cached: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            after_leaves: 2,
            window: Duration::from_secs(600),
            max_tracked: 10_000,
            max_queue: 64,
            max_cache_bytes: 1 << 30,
            max_cached: 100_000,
        }
    }
}

/// What one lookup did to a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Counted; not (yet) enough distinct leaves.
    Counting {
        /// Distinct leaves within the window, this one included.
        leaves: usize,
    },
    /// This lookup admitted the track: it is queued for fetching.
    Admitted,
    /// Already queued or being fetched.
    Pending,
    /// Held by the cache: answer with the cache (a hit).
    Cached,
    /// Enough leaves, but the fetch queue is full; a later lookup retries.
    QueueFull,
}

/// Where an admitted track stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued,
    Fetching,
    Cached { bytes: u64, chunks: u64, stamp: u64 },
}

/// Counters and sizes for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Tracks whose askers are being counted.
    pub tracked: usize,
    /// Tracks waiting to be fetched.
    pub queued: usize,
    /// Tracks being fetched.
    pub fetching: usize,
    /// Tracks the cache holds completely.
    pub cached_tracks: usize,
    /// Their bytes (chunks).
    pub cached_bytes: u64,
    /// Their chunks.
    pub cached_chunks: u64,
    /// Tracks admitted since start.
    pub admitted_total: u64,
    /// Fetches that completed.
    pub fetched_total: u64,
    /// Fetches that failed.
    pub failed_total: u64,
    /// Tracks dropped from the ledger to stay within the cache size.
    pub evicted_total: u64,
    /// Lookups answered with the cache.
    pub hits_total: u64,
}

#[derive(Debug, Clone)]
struct Counting {
    /// Distinct leaves and when each last asked (at most `after_leaves`).
    askers: Vec<(NodeId, Time)>,
    /// LRU stamp (key in `counting_lru`).
    stamp: u64,
}

/// The admission policy and cache ledger. See the module documentation.
#[derive(Debug, Clone)]
pub struct CacheAdmission {
    config: AdmissionConfig,
    counting: HashMap<TrackId, Counting>,
    counting_lru: BTreeMap<u64, TrackId>,
    admitted: HashMap<TrackId, Stage>,
    queue: VecDeque<TrackId>,
    /// Cached tracks by last hit (oldest first).
    cached_lru: BTreeMap<u64, TrackId>,
    cached_bytes: u64,
    cached_chunks: u64,
    next_stamp: u64,
    stats: AdmissionStats,
}

impl CacheAdmission {
    /// An empty policy.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            counting: HashMap::new(),
            counting_lru: BTreeMap::new(),
            admitted: HashMap::new(),
            queue: VecDeque::new(),
            cached_lru: BTreeMap::new(),
            cached_bytes: 0,
            cached_chunks: 0,
            next_stamp: 0,
            stats: AdmissionStats::default(),
        }
    }

    /// The thresholds.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Leaf `leaf` looked up the holders of `track` at `now`.
    pub fn observe(&mut self, leaf: NodeId, track: TrackId, now: Time) -> Observed {
        match self.admitted.get(&track).copied() {
            Some(Stage::Cached {
                bytes,
                chunks,
                stamp,
            }) => {
                let fresh = self.stamp();
                self.cached_lru.remove(&stamp);
                self.cached_lru.insert(fresh, track);
                self.admitted.insert(
                    track,
                    Stage::Cached {
                        bytes,
                        chunks,
                        stamp: fresh,
                    },
                );
                self.stats.hits_total += 1;
                return Observed::Cached;
            }
            Some(Stage::Queued | Stage::Fetching) => return Observed::Pending,
            None => {}
        }
        let stamp = self.stamp();
        let window = self.config.window;
        let need = self.config.after_leaves.max(1);
        let entry = match self.counting.get_mut(&track) {
            Some(e) => {
                self.counting_lru.remove(&e.stamp);
                e
            }
            None => {
                while self.counting.len() >= self.config.max_tracked.max(1) {
                    let Some((_, old)) = self.counting_lru.pop_first() else {
                        break;
                    };
                    self.counting.remove(&old);
                }
                self.counting.entry(track).or_insert(Counting {
                    askers: Vec::new(),
                    stamp,
                })
            }
        };
        entry.stamp = stamp;
        entry
            .askers
            .retain(|(_, at)| now.saturating_since(*at) < window);
        if let Some(a) = entry.askers.iter_mut().find(|(n, _)| *n == leaf) {
            a.1 = now;
        } else {
            if entry.askers.len() >= need {
                // Only reachable if `need` shrank; keep the newest.
                entry.askers.sort_by_key(|(_, at)| *at);
                entry.askers.remove(0);
            }
            entry.askers.push((leaf, now));
        }
        let leaves = entry.askers.len();
        self.counting_lru.insert(stamp, track);
        if leaves < need {
            return Observed::Counting { leaves };
        }
        if self.queue.len() >= self.config.max_queue {
            return Observed::QueueFull;
        }
        if let Some(e) = self.counting.remove(&track) {
            self.counting_lru.remove(&e.stamp);
        }
        self.admitted.insert(track, Stage::Queued);
        self.queue.push_back(track);
        self.stats.admitted_total += 1;
        Observed::Admitted
    }

    /// The next admitted track to fetch (it is then being fetched until [`Self::fetched`] or
    /// [`Self::failed`]).
    pub fn next_fetch(&mut self) -> Option<TrackId> {
        let track = self.queue.pop_front()?;
        self.admitted.insert(track, Stage::Fetching);
        Some(track)
    }

    /// The cache now holds all of `track` (`chunks` chunks, `bytes` bytes). Returns the tracks dropped from
    /// the ledger to stay within the cache's size (oldest hit first), never `track` itself
    /// unless it alone exceeds the cache.
    pub fn fetched(&mut self, track: TrackId, bytes: u64, chunks: u64) -> Vec<TrackId> {
        if self.is_cached(&track) {
            self.drop_cached(&track);
        } else {
            self.queue.retain(|t| *t != track);
        }
        self.stats.fetched_total += 1;
        let mut dropped = Vec::new();
        if bytes > self.config.max_cache_bytes {
            // Larger than the whole cache: the disk keeps only its end; never listed.
            self.admitted.remove(&track);
            self.stats.evicted_total += 1;
            dropped.push(track);
            return dropped;
        }
        while (self.cached_bytes.saturating_add(bytes) > self.config.max_cache_bytes
            || self.cached_lru.len() >= self.config.max_cached.max(1))
            && let Some((_, old)) = self.cached_lru.pop_first()
        {
            if let Some(Stage::Cached {
                bytes: b,
                chunks: c,
                ..
            }) = self.admitted.remove(&old)
            {
                self.cached_bytes = self.cached_bytes.saturating_sub(b);
                self.cached_chunks = self.cached_chunks.saturating_sub(c);
            }
            self.stats.evicted_total += 1;
            dropped.push(old);
        }
        let stamp = self.stamp();
        self.admitted.insert(
            track,
            Stage::Cached {
                bytes,
                chunks,
                stamp,
            },
        );
        self.cached_lru.insert(stamp, track);
        self.cached_bytes += bytes;
        self.cached_chunks += chunks;
        dropped
    }

    /// Removes a cached track from the ledger; true if it was there.
    fn drop_cached(&mut self, track: &TrackId) -> bool {
        let Some(Stage::Cached {
            bytes,
            chunks,
            stamp,
        }) = self.admitted.get(track).copied()
        else {
            return false;
        };
        self.admitted.remove(track);
        self.cached_lru.remove(&stamp);
        self.cached_bytes = self.cached_bytes.saturating_sub(bytes);
        self.cached_chunks = self.cached_chunks.saturating_sub(chunks);
        true
    }

    /// New thresholds (reload); what is counted, queued and cached stays.
    pub fn set_config(&mut self, config: AdmissionConfig) {
        self.config = config;
    }

    /// Fetching `track` failed: it is forgotten, and counted afresh if leaves ask again.
    pub fn failed(&mut self, track: TrackId) {
        if matches!(
            self.admitted.get(&track),
            Some(Stage::Queued | Stage::Fetching)
        ) {
            self.admitted.remove(&track);
            self.queue.retain(|t| *t != track);
            self.stats.failed_total += 1;
        }
    }

    /// The cache lost `track` (or part of it): stop listing it.
    pub fn forget(&mut self, track: TrackId) {
        if self.drop_cached(&track) {
            self.stats.evicted_total += 1;
        }
    }

    /// True when the cache holds all of `track`.
    pub fn is_cached(&self, track: &TrackId) -> bool {
        matches!(self.admitted.get(track), Some(Stage::Cached { .. }))
    }

    /// True when `track` is queued or being fetched.
    pub fn is_pending(&self, track: &TrackId) -> bool {
        matches!(
            self.admitted.get(track),
            Some(Stage::Queued | Stage::Fetching)
        )
    }

    /// Cached tracks, most recently hit first.
    pub fn cached(&self) -> Vec<TrackId> {
        self.cached_lru.values().rev().copied().collect()
    }

    /// Sizes and counters.
    pub fn stats(&self) -> AdmissionStats {
        let fetching = self
            .admitted
            .values()
            .filter(|s| matches!(s, Stage::Fetching))
            .count();
        AdmissionStats {
            tracked: self.counting.len(),
            queued: self.queue.len(),
            fetching,
            cached_tracks: self.cached_lru.len(),
            cached_bytes: self.cached_bytes,
            cached_chunks: self.cached_chunks,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn t(i: u8) -> TrackId {
        TrackId::from_bytes([i; 32])
    }

    fn leaf(i: u64) -> NodeId {
        NodeId::from_index(i)
    }

    fn secs(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    #[test]
    fn two_distinct_leaves_admit_one_does_not() {
        let mut a = CacheAdmission::new(AdmissionConfig::default());
        assert_eq!(
            a.observe(leaf(1), t(1), secs(0)),
            Observed::Counting { leaves: 1 }
        );
        // The same leaf again does not count twice.
        assert_eq!(
            a.observe(leaf(1), t(1), secs(5)),
            Observed::Counting { leaves: 1 }
        );
        assert_eq!(a.observe(leaf(2), t(1), secs(6)), Observed::Admitted);
        assert_eq!(a.observe(leaf(3), t(1), secs(7)), Observed::Pending);
        assert!(a.is_pending(&t(1)));
        assert_eq!(a.next_fetch(), Some(t(1)));
        assert_eq!(a.next_fetch(), None);
        assert_eq!(a.stats().fetching, 1);
        assert!(a.fetched(t(1), 1000, 4).is_empty());
        assert!(a.is_cached(&t(1)));
        assert_eq!(a.observe(leaf(4), t(1), secs(8)), Observed::Cached);
        let s = a.stats();
        assert_eq!(
            (
                s.cached_tracks,
                s.cached_bytes,
                s.cached_chunks,
                s.hits_total,
                s.admitted_total
            ),
            (1, 1000, 4, 1, 1)
        );
    }

    #[test]
    fn lookups_outside_the_window_do_not_count() {
        let mut a = CacheAdmission::new(AdmissionConfig::default());
        a.observe(leaf(1), t(1), secs(0));
        assert_eq!(
            a.observe(leaf(2), t(1), secs(600)),
            Observed::Counting { leaves: 1 }
        );
        // Leaf 1 asking again renews its lookup within the window.
        assert_eq!(a.observe(leaf(1), t(1), secs(601)), Observed::Admitted);
    }

    #[test]
    fn failed_fetches_are_counted_afresh() {
        let mut a = CacheAdmission::new(AdmissionConfig::default());
        a.observe(leaf(1), t(1), secs(0));
        a.observe(leaf(2), t(1), secs(0));
        assert_eq!(a.next_fetch(), Some(t(1)));
        a.failed(t(1));
        assert!(!a.is_pending(&t(1)));
        assert_eq!(
            a.observe(leaf(1), t(1), secs(1)),
            Observed::Counting { leaves: 1 }
        );
        assert_eq!(a.stats().failed_total, 1);
    }

    #[test]
    fn queue_is_bounded() {
        let mut a = CacheAdmission::new(AdmissionConfig {
            after_leaves: 1,
            max_queue: 2,
            ..AdmissionConfig::default()
        });
        assert_eq!(a.observe(leaf(1), t(1), secs(0)), Observed::Admitted);
        assert_eq!(a.observe(leaf(1), t(2), secs(0)), Observed::Admitted);
        assert_eq!(a.observe(leaf(1), t(3), secs(0)), Observed::QueueFull);
        assert_eq!(a.next_fetch(), Some(t(1)));
        assert_eq!(a.observe(leaf(1), t(3), secs(0)), Observed::Admitted);
    }

    #[test]
    fn ledger_drops_the_least_recently_hit_beyond_the_size() {
        let mut a = CacheAdmission::new(AdmissionConfig {
            after_leaves: 1,
            max_cache_bytes: 250,
            ..AdmissionConfig::default()
        });
        for i in 1..=2 {
            a.observe(leaf(1), t(i), secs(0));
            a.next_fetch();
            assert!(a.fetched(t(i), 100, 1).is_empty());
        }
        // Track 1 is hit, so track 2 is the oldest.
        assert_eq!(a.observe(leaf(9), t(1), secs(1)), Observed::Cached);
        a.observe(leaf(1), t(3), secs(0));
        a.next_fetch();
        assert_eq!(a.fetched(t(3), 100, 1), vec![t(2)]);
        assert_eq!(a.cached(), vec![t(3), t(1)]);
        assert_eq!(a.stats().cached_bytes, 200);
        // A track larger than the whole cache is not listed, and costs the others nothing.
        a.observe(leaf(1), t(4), secs(0));
        a.next_fetch();
        let dropped = a.fetched(t(4), 1000, 1);
        assert!(dropped.contains(&t(4)));
        assert_eq!(dropped, vec![t(4)]);
        assert!(!a.is_cached(&t(4)));
        assert_eq!(a.cached(), vec![t(3), t(1)]);
        a.forget(t(1));
        a.forget(t(3));
        assert_eq!(a.cached(), Vec::<TrackId>::new());
        assert_eq!(a.stats().cached_bytes, 0);
    }

    #[test]
    fn tracked_tracks_are_bounded_lru() {
        let mut a = CacheAdmission::new(AdmissionConfig {
            max_tracked: 2,
            ..AdmissionConfig::default()
        });
        a.observe(leaf(1), t(1), secs(0));
        a.observe(leaf(1), t(2), secs(0));
        a.observe(leaf(1), t(1), secs(1)); // t(2) is now the least recently asked
        a.observe(leaf(1), t(3), secs(2));
        assert_eq!(a.stats().tracked, 2);
        // t(1) kept its asker, t(2) was forgotten.
        assert_eq!(a.observe(leaf(2), t(1), secs(3)), Observed::Admitted);
        assert_eq!(
            a.observe(leaf(2), t(2), secs(3)),
            Observed::Counting { leaves: 1 }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ask(u8, u8, u64),
        Fetch,
        Done(u64),
        Fail,
        Forget(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u8..12, 0u64..120).prop_map(|(l, t, dt)| Op::Ask(l, t, dt)),
            1 => Just(Op::Fetch),
            1 => (1u64..400).prop_map(Op::Done),
            1 => Just(Op::Fail),
            1 => (0u8..12).prop_map(Op::Forget),
        ]
    }

    proptest! {
        /// Whatever the sequence: every bound holds, cached bytes never exceed the cache, the
        /// stats agree with the state, and a track is never both pending and cached.
        #[test]
        fn bounds_and_consistency(ops in proptest::collection::vec(op(), 1..300)) {
            let config = AdmissionConfig {
                after_leaves: 2,
                window: Duration::from_secs(60),
                max_tracked: 4,
                max_queue: 3,
                max_cache_bytes: 1000,
                max_cached: 5,
            };
            let mut a = CacheAdmission::new(config.clone());
            let mut now = Time::ZERO;
            let mut fetching: Vec<TrackId> = Vec::new();
            for op in ops {
                match op {
                    Op::Ask(l, tr, dt) => {
                        now = now + Duration::from_secs(dt);
                        let o = a.observe(leaf(u64::from(l)), t(tr), now);
                        if o == Observed::Admitted {
                            prop_assert!(a.is_pending(&t(tr)));
                        }
                    }
                    Op::Fetch => {
                        if let Some(tr) = a.next_fetch() {
                            fetching.push(tr);
                        }
                    }
                    Op::Done(bytes) => {
                        if let Some(tr) = fetching.pop() {
                            a.fetched(tr, bytes, bytes / 100);
                        }
                    }
                    Op::Fail => {
                        if let Some(tr) = fetching.pop() {
                            a.failed(tr);
                        }
                    }
                    Op::Forget(tr) => a.forget(t(tr)),
                }
                let s = a.stats();
                prop_assert!(s.tracked <= config.max_tracked);
                prop_assert!(s.queued <= config.max_queue);
                prop_assert!(s.cached_tracks <= config.max_cached);
                prop_assert!(s.cached_bytes <= config.max_cache_bytes);
                prop_assert_eq!(a.counting.len(), a.counting_lru.len());
                let cached = a.cached();
                prop_assert_eq!(cached.len(), s.cached_tracks);
                for tr in &cached {
                    prop_assert!(a.is_cached(tr) && !a.is_pending(tr));
                }
                for c in a.counting.values() {
                    prop_assert!(c.askers.len() <= config.after_leaves);
                }
            }
        }
    }
}
