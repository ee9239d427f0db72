//! [`TrackerSync`]: how a super-peer tells the tracker what its cluster holds
//! (`/shoal/cluster/1`, [`ClusterAnnounce`]), so the tracker sees one entry per cluster and one
//! message per batch of leaf changes instead of every leaf's announces.
//!
//! **What is sent.** Per track held in the cluster, a *sample* of at most
//! [`SyncConfig::leaves_per_track`] leaves (each reachable through this super-peer), not every
//! holder: a lookup at the tracker needs a few holders per cluster, and leaves of this cluster
//! look up through this super-peer's own index, which knows them all. The sample is sticky: a
//! leaf stays listed while it holds the track, and a vacancy is filled from the other holders,
//! so a leaf joining or re-announcing changes nothing at the tracker unless the track needed
//! another holder. A track leaves the tracker's listing when its last holder leaves the
//! cluster.
//!
//! **When.** Changes (tracks whose sample changed, leaves whose contact or region changed) are
//! batched for [`SyncConfig::batch`] and sent as one incremental message (more if they do not
//! fit one). The first message after start, after any failure or rejection, and after the
//! index's dirty set overflowed is a full snapshot: a `replace` part, then as many
//! incremental parts as the cluster needs. Every message renews the whole cluster at the
//! tracker; with nothing to say the sync sends an empty message at
//! [`SyncConfig::refresh_fraction`] of the tracker's TTL. A tracker that forgot the cluster
//! (restart, expiry) rejects incremental messages, which makes the next one a snapshot. One
//! message is in flight at a time.
//!
//! [`TrackerSync::forwarding`] says whether the tracker currently has the cluster (the last
//! message was accepted): only then does the super-peer answer its leaves'
//! announces with `Aggregated` (they stop announcing to the tracker themselves).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use shoal_protocol::TrackId;
use shoal_protocol::ids::NodeId;
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{
    ClusterAnnounce, ClusterLeaf, ClusterTrack, MAX_CLUSTER_LEAVES, MAX_CLUSTER_TRACKS,
    MAX_LEAVES_PER_CLUSTER_TRACK, PeerContact,
};

use super::index::ClusterIndex;

/// Timing and sizes of a [`TrackerSync`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Changes wait this long for more before they are sent together (default 2 s).
    pub batch: Duration,
    /// After a failed or rejected message, the snapshot is re-sent after this long (default
    /// 5 s).
    pub retry: Duration,
    /// The cluster is renewed after this share of the tracker's TTL (default 0.5).
    pub refresh_fraction: f64,
    /// The TTL assumed until the tracker answers (default 300 s).
    pub default_ttl_secs: u32,
    /// Leaves listed at the tracker per track (default 4; the tracker keeps at most 8 by
    /// default and rejects more).
    pub leaves_per_track: usize,
    /// Tracks per message (default and at most [`MAX_CLUSTER_TRACKS`]).
    pub max_tracks_per_message: usize,
    /// Leaves described per message (default and at most [`MAX_CLUSTER_LEAVES`]).
    pub max_leaves_per_message: usize,
    /// Addresses sent per leaf (default 4; each at most 128 bytes, longer ones are left out).
    pub max_addrs_per_leaf: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            batch: Duration::from_secs(2),
            retry: Duration::from_secs(5),
            refresh_fraction: 0.5,
            default_ttl_secs: 300,
            leaves_per_track: 4,
            max_tracks_per_message: MAX_CLUSTER_TRACKS,
            max_leaves_per_message: MAX_CLUSTER_LEAVES,
            max_addrs_per_leaf: 4,
        }
    }
}

/// Longest leaf address sent to the tracker.
const MAX_LEAF_ADDR_LEN: usize = 128;

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages the tracker accepted.
    pub accepted: u64,
    /// Messages rejected or lost.
    pub failed: u64,
    /// Full snapshots started.
    pub snapshots: u64,
    /// Track entries sent (a track set or cleared counts once per message).
    pub tracks_sent: u64,
    /// Tracks the tracker lists for this cluster (as far as the sync knows).
    pub tracks_listed: usize,
}

/// The tracker-side view of one super-peer's cluster. See the module docs.
#[derive(Debug, Clone)]
pub struct TrackerSync {
    config: SyncConfig,
    /// What the tracker lists per track (as of the messages sent).
    reported: HashMap<TrackId, Vec<NodeId>>,
    /// Tracks listing each leaf in `reported`.
    refs: HashMap<NodeId, u32>,
    /// Tracks to re-examine.
    pending: BTreeSet<TrackId>,
    /// Leaves whose contact to re-send if listed.
    pending_leaves: BTreeSet<NodeId>,
    /// While a snapshot is being sent: the last track sent (`None`: not started).
    snapshot: Option<Option<TrackId>>,
    in_flight: bool,
    forwarding: bool,
    /// Pending changes go out from this time.
    changes_due: Time,
    /// The next snapshot (part) or the renewal is due.
    full_due: Time,
    stats: SyncStats,
}

impl TrackerSync {
    /// A sync that starts with a snapshot at the first [`poll`](Self::poll).
    pub fn new(config: SyncConfig) -> Self {
        Self {
            config,
            reported: HashMap::new(),
            refs: HashMap::new(),
            pending: BTreeSet::new(),
            pending_leaves: BTreeSet::new(),
            snapshot: Some(None),
            in_flight: false,
            forwarding: false,
            changes_due: Time::NEVER,
            full_due: Time::ZERO,
            stats: SyncStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SyncStats {
        SyncStats {
            tracks_listed: self.reported.len(),
            ..self.stats
        }
    }

    /// Whether the tracker has this cluster: the last message was accepted.
    pub fn forwarding(&self) -> bool {
        self.forwarding
    }

    /// The tracker may have forgotten the cluster (new tracker, lost connection): start over
    /// with a snapshot at `at`.
    pub fn reset(&mut self, at: Time) {
        self.reported.clear();
        self.refs.clear();
        self.pending.clear();
        self.pending_leaves.clear();
        self.snapshot = Some(None);
        self.in_flight = false;
        self.forwarding = false;
        self.changes_due = Time::NEVER;
        self.full_due = at;
    }

    /// When [`poll`](Self::poll) next has something to send ([`Time::NEVER`] while a message is
    /// in flight). Changes the index records later are noticed at the next poll.
    pub fn next_wake(&self) -> Time {
        if self.in_flight {
            Time::NEVER
        } else if self.snapshot.is_some() {
            self.full_due
        } else {
            self.full_due.min(self.changes_due)
        }
    }

    /// The message to send now, if one is due. `addrs` and `region` describe this super-peer.
    /// Call [`answered`](Self::answered) with the outcome before polling for the next.
    pub fn poll(
        &mut self,
        now: Time,
        index: &mut ClusterIndex,
        addrs: &[String],
        region: Option<&str>,
    ) -> Option<ClusterAnnounce> {
        if self.in_flight {
            return None;
        }
        let (tracks, leaves, overflow) = index.take_dirty();
        if overflow {
            // Changes were lost: only a (re)started snapshot is exact. Keep a retry delay.
            let at = if self.snapshot.is_some() {
                self.full_due.max(now)
            } else {
                now
            };
            self.reset(at);
        }
        self.pending.extend(tracks);
        self.pending_leaves.extend(leaves);
        if (!self.pending.is_empty() || !self.pending_leaves.is_empty())
            && self.changes_due == Time::NEVER
        {
            self.changes_due = now + self.config.batch;
        }
        if let Some(cursor) = self.snapshot {
            if now < self.full_due {
                return None;
            }
            return Some(self.snapshot_part(now, cursor, index, addrs, region));
        }
        let renew = now >= self.full_due;
        if now < self.changes_due && !renew {
            return None;
        }
        let msg = self.changes(index, addrs, region);
        if msg.tracks.is_empty() && msg.leaves.is_empty() && !renew {
            self.changes_due = if self.pending.is_empty() {
                Time::NEVER
            } else {
                now
            };
            return None;
        }
        // What did not fit goes right after the answer.
        self.changes_due = if self.pending.is_empty() && self.pending_leaves.is_empty() {
            Time::NEVER
        } else {
            now
        };
        Some(self.sent(msg))
    }

    fn sent(&mut self, msg: ClusterAnnounce) -> ClusterAnnounce {
        self.in_flight = true;
        self.stats.sent += 1;
        self.stats.tracks_sent += msg.tracks.len() as u64;
        msg
    }

    /// The answer to the message in flight: `Some(ttl)` when accepted, `None` when rejected or
    /// lost (the next message is a snapshot, after [`SyncConfig::retry`]).
    pub fn answered(&mut self, now: Time, accepted_ttl_secs: Option<u32>) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        match accepted_ttl_secs {
            Some(ttl) => {
                self.stats.accepted += 1;
                self.forwarding = true;
                let ttl = if ttl == 0 {
                    self.config.default_ttl_secs
                } else {
                    ttl
                };
                if self.snapshot.is_some() {
                    // The next part at once.
                    self.full_due = now;
                } else {
                    let refresh = f64::from(ttl) * self.config.refresh_fraction.clamp(0.05, 1.0);
                    self.full_due = now + Duration::from_secs_f64(refresh);
                }
            }
            None => {
                self.stats.failed += 1;
                self.reset(now + self.config.retry);
            }
        }
    }

    /// The sample of `track`'s holders to list: those listed now that still hold it, then
    /// other holders in node order, up to `leaves_per_track`.
    fn sample(&self, index: &ClusterIndex, track: &TrackId) -> Vec<NodeId> {
        let k = self
            .config
            .leaves_per_track
            .clamp(1, MAX_LEAVES_PER_CLUSTER_TRACK);
        let mut want: Vec<NodeId> = self
            .reported
            .get(track)
            .into_iter()
            .flatten()
            .filter(|l| index.holds(l, track))
            .take(k)
            .copied()
            .collect();
        for l in index.holders_of(track) {
            if want.len() >= k {
                break;
            }
            if !want.contains(&l) {
                want.push(l);
            }
        }
        want
    }

    /// Records that the tracker will list `want` for `track`.
    fn set_reported(&mut self, track: TrackId, want: Vec<NodeId>) {
        let old = if want.is_empty() {
            self.reported.remove(&track).unwrap_or_default()
        } else {
            self.reported
                .insert(track, want.clone())
                .unwrap_or_default()
        };
        for l in old {
            if let Some(r) = self.refs.get_mut(&l) {
                *r -= 1;
                if *r == 0 {
                    self.refs.remove(&l);
                }
            }
        }
        for l in want {
            *self.refs.entry(l).or_default() += 1;
        }
    }

    fn snapshot_part(
        &mut self,
        now: Time,
        cursor: Option<TrackId>,
        index: &ClusterIndex,
        addrs: &[String],
        region: Option<&str>,
    ) -> ClusterAnnounce {
        let first = cursor.is_none();
        if first {
            // The snapshot reads the index as it is; what changed before is in it.
            self.stats.snapshots += 1;
            self.reported.clear();
            self.refs.clear();
            self.pending.clear();
            self.pending_leaves.clear();
            self.changes_due = Time::NEVER;
        }
        let mut b = Builder::new(addrs, region, first);
        let mut last = cursor;
        let mut done = true;
        for track in index.aggregate() {
            if cursor.is_some_and(|c| track <= c) {
                continue;
            }
            let want = self.sample(index, &track);
            if !b.fits(&want, self) {
                done = false;
                break;
            }
            b.push(track, &want, index, &self.config);
            self.set_reported(track, want);
            last = Some(track);
        }
        if done {
            self.snapshot = None;
        } else {
            self.snapshot = Some(last);
        }
        let _ = now;
        self.sent(b.finish())
    }

    fn changes(
        &mut self,
        index: &ClusterIndex,
        addrs: &[String],
        region: Option<&str>,
    ) -> ClusterAnnounce {
        let mut b = Builder::new(addrs, region, false);
        let pending: Vec<TrackId> = self.pending.iter().copied().collect();
        for track in pending {
            let want = self.sample(index, &track);
            let current = self.reported.get(&track).map_or(&[][..], Vec::as_slice);
            if want == current {
                self.pending.remove(&track);
                continue;
            }
            if !b.fits(&want, self) {
                break;
            }
            b.push(track, &want, index, &self.config);
            self.set_reported(track, want);
            self.pending.remove(&track);
        }
        let leaves: Vec<NodeId> = self.pending_leaves.iter().copied().collect();
        for leaf in leaves {
            if self.refs.contains_key(&leaf) {
                if b.leaves.len() >= self.config.max_leaves_per_message.min(MAX_CLUSTER_LEAVES)
                    && !b.index.contains_key(&leaf)
                {
                    break;
                }
                b.leaf(leaf, index, &self.config);
            }
            self.pending_leaves.remove(&leaf);
        }
        b.finish()
    }
}

/// Builds one message within the per-message limits.
struct Builder {
    msg: ClusterAnnounce,
    leaves: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
}

impl Builder {
    fn new(addrs: &[String], region: Option<&str>, replace: bool) -> Self {
        Self {
            msg: ClusterAnnounce {
                replace,
                tracks: Vec::new(),
                leaves: Vec::new(),
                addrs: addrs.to_vec(),
                region: region.map(str::to_owned),
            },
            leaves: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Whether a track listing `want` still fits.
    fn fits(&self, want: &[NodeId], sync: &TrackerSync) -> bool {
        let max_tracks = sync.config.max_tracks_per_message.min(MAX_CLUSTER_TRACKS);
        let max_leaves = sync.config.max_leaves_per_message.min(MAX_CLUSTER_LEAVES);
        let new = want.iter().filter(|l| !self.index.contains_key(l)).count();
        self.msg.tracks.len() < max_tracks && self.leaves.len() + new <= max_leaves
    }

    fn leaf(&mut self, leaf: NodeId, index: &ClusterIndex, config: &SyncConfig) -> u32 {
        if let Some(&i) = self.index.get(&leaf) {
            return i;
        }
        let (peer, region) = match index.leaf(&leaf) {
            Some((c, r)) => (
                PeerContact {
                    peer_id: c.peer_id.clone(),
                    addrs: c
                        .addrs
                        .iter()
                        .filter(|a| a.len() <= MAX_LEAF_ADDR_LEN)
                        .take(config.max_addrs_per_leaf)
                        .cloned()
                        .collect(),
                },
                r.map(str::to_owned),
            ),
            // Not reached: samples and listed leaves are indexed.
            None => (
                PeerContact {
                    peer_id: Vec::new(),
                    addrs: Vec::new(),
                },
                None,
            ),
        };
        let i = u32::try_from(self.leaves.len()).unwrap_or(u32::MAX);
        self.leaves.push(leaf);
        self.index.insert(leaf, i);
        self.msg.leaves.push(ClusterLeaf { peer, region });
        i
    }

    fn push(&mut self, track: TrackId, want: &[NodeId], index: &ClusterIndex, config: &SyncConfig) {
        let leaves = want.iter().map(|l| self.leaf(*l, index, config)).collect();
        self.msg.tracks.push(ClusterTrack { track, leaves });
    }

    fn finish(self) -> ClusterAnnounce {
        self.msg
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::IndexConfig;
    use shoal_protocol::wire::{Announce, WireMessage};

    fn t(i: u8) -> TrackId {
        TrackId::of(&[i])
    }

    fn n(i: u64) -> NodeId {
        NodeId::from_key(&contact(i).peer_id)
    }

    fn contact(i: u64) -> PeerContact {
        PeerContact {
            peer_id: vec![i as u8; 8],
            addrs: vec![format!("/ip4/10.0.0.{i}/udp/1/quic-v1")],
        }
    }

    fn ann(replace: bool, tracks: &[u8], removed: &[u8]) -> Announce {
        Announce {
            replace,
            tracks: tracks.iter().map(|&i| t(i)).collect(),
            removed: removed.iter().map(|&i| t(i)).collect(),
            addrs: vec![],
            via: None,
            region: None,
        }
    }

    fn ms(m: u64) -> Time {
        Time::from_millis(m)
    }

    fn leaf_announce(idx: &mut ClusterIndex, i: u64, msg: &Announce, now: Time) {
        idx.announce(n(i), &contact(i), msg, now).unwrap();
    }

    /// The tracker's view, rebuilt from the messages as the tracker applies them.
    #[derive(Default)]
    struct View(HashMap<TrackId, Vec<Vec<u8>>>);

    impl View {
        fn apply(&mut self, m: &ClusterAnnounce) {
            if m.replace {
                self.0.clear();
            }
            for ct in &m.tracks {
                let ids: Vec<Vec<u8>> = ct
                    .leaves
                    .iter()
                    .map(|&i| m.leaves[i as usize].peer.peer_id.clone())
                    .collect();
                if ids.is_empty() {
                    self.0.remove(&ct.track);
                } else {
                    self.0.insert(ct.track, ids);
                }
            }
        }
        fn holders(&self, track: u8) -> Vec<Vec<u8>> {
            let mut v = self.0.get(&t(track)).cloned().unwrap_or_default();
            v.sort();
            v
        }
    }

    fn ids(is: &[u64]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = is.iter().map(|&i| contact(i).peer_id).collect();
        v.sort();
        v
    }

    fn setup() -> (ClusterIndex, TrackerSync) {
        let mut idx = ClusterIndex::new(IndexConfig::default());
        idx.set_tracking(true);
        let sync = TrackerSync::new(SyncConfig {
            leaves_per_track: 2,
            ..SyncConfig::default()
        });
        (idx, sync)
    }

    #[test]
    fn snapshot_then_batched_changes_then_renewal() {
        let (mut idx, mut sync) = setup();
        let mut view = View::default();
        leaf_announce(&mut idx, 1, &ann(true, &[1, 2], &[]), ms(0));
        leaf_announce(&mut idx, 2, &ann(true, &[2], &[]), ms(0));
        leaf_announce(&mut idx, 3, &ann(true, &[2], &[]), ms(0));
        let addrs = vec!["/ip4/1.2.3.4/udp/7702/quic-v1".to_owned()];
        let m = sync
            .poll(ms(0), &mut idx, &addrs, Some("SE"))
            .expect("snapshot first");
        assert!(m.replace);
        assert_eq!(m.addrs, addrs);
        assert_eq!(m.region.as_deref(), Some("SE"));
        assert!(m.encode_frame().is_ok());
        view.apply(&m);
        assert_eq!(view.holders(1), ids(&[1]));
        // Three holders of track 2, a sample of two.
        assert_eq!(view.holders(2).len(), 2);
        assert!(!sync.forwarding());
        assert_eq!(
            sync.poll(ms(1), &mut idx, &addrs, None),
            None,
            "one in flight"
        );
        sync.answered(ms(10), Some(600));
        assert!(sync.forwarding());
        assert_eq!(sync.next_wake(), ms(10) + Duration::from_secs(300));

        // A fourth holder of track 2 changes nothing at the tracker; a new track does, after
        // the batch delay.
        leaf_announce(&mut idx, 4, &ann(true, &[2, 3], &[]), ms(100));
        assert_eq!(sync.poll(ms(100), &mut idx, &addrs, None), None);
        assert_eq!(sync.next_wake(), ms(2_100));
        assert_eq!(sync.poll(ms(2_000), &mut idx, &addrs, None), None);
        let m = sync
            .poll(ms(2_100), &mut idx, &addrs, None)
            .expect("batched change");
        assert!(!m.replace);
        assert_eq!(m.tracks.len(), 1, "{m:?}");
        assert_eq!(m.tracks[0].track, t(3));
        view.apply(&m);
        assert_eq!(view.holders(3), ids(&[4]));
        sync.answered(ms(2_200), Some(600));

        // A sampled holder of track 2 leaves: another fills the vacancy.
        let listed: Vec<Vec<u8>> = view.holders(2);
        let gone = (1..=4)
            .find(|&i| listed.contains(&contact(i).peer_id))
            .unwrap();
        idx.forget(&n(gone));
        let m = sync.poll(ms(5_000), &mut idx, &addrs, None);
        assert_eq!(m, None, "batched");
        let m = sync
            .poll(ms(7_000), &mut idx, &addrs, None)
            .expect("vacancy filled");
        view.apply(&m);
        let now_listed = view.holders(2);
        assert_eq!(now_listed.len(), 2);
        assert!(!now_listed.contains(&contact(gone).peer_id));
        // The holder still listed stayed listed (sticky).
        let kept: Vec<&Vec<u8>> = listed
            .iter()
            .filter(|p| **p != contact(gone).peer_id)
            .collect();
        assert!(kept.iter().all(|p| now_listed.contains(p)));
        if gone == 1 {
            assert!(view.holders(1).is_empty(), "track 1 left the cluster");
        }
        sync.answered(ms(7_100), Some(600));

        // Nothing to say: an empty renewal at half the TTL.
        assert_eq!(sync.poll(ms(300_000), &mut idx, &addrs, None), None);
        let m = sync
            .poll(ms(307_100), &mut idx, &addrs, None)
            .expect("renewal");
        assert!(!m.replace && m.tracks.is_empty() && m.leaves.is_empty());
        assert_eq!(sync.stats().snapshots, 1);
    }

    #[test]
    fn failure_means_a_snapshot_after_the_retry_delay() {
        let (mut idx, mut sync) = setup();
        leaf_announce(&mut idx, 1, &ann(true, &[1], &[]), ms(0));
        sync.poll(ms(0), &mut idx, &[], None).unwrap();
        sync.answered(ms(0), Some(600));
        leaf_announce(&mut idx, 1, &ann(false, &[2], &[]), ms(10));
        assert_eq!(sync.poll(ms(10), &mut idx, &[], None), None, "batched");
        let m = sync.poll(ms(2_010), &mut idx, &[], None).unwrap();
        assert!(!m.replace);
        // Rejected (the tracker forgot us): a snapshot after 5 s, with everything.
        sync.answered(ms(2_020), None);
        assert!(!sync.forwarding());
        assert_eq!(sync.poll(ms(3_000), &mut idx, &[], None), None);
        let m = sync.poll(ms(7_020), &mut idx, &[], None).unwrap();
        assert!(m.replace);
        let mut view = View::default();
        view.apply(&m);
        assert_eq!(view.holders(1), ids(&[1]));
        assert_eq!(view.holders(2), ids(&[1]));
        assert_eq!(sync.stats().failed, 1);
    }

    #[test]
    fn contact_changes_of_listed_leaves_are_sent() {
        let (mut idx, mut sync) = setup();
        leaf_announce(&mut idx, 1, &ann(true, &[1], &[]), ms(0));
        sync.poll(ms(0), &mut idx, &[], None).unwrap();
        sync.answered(ms(0), Some(600));
        let mut moved = ann(false, &[], &[]);
        moved.region = Some("DE".into());
        leaf_announce(&mut idx, 1, &moved, ms(10));
        assert_eq!(sync.poll(ms(10), &mut idx, &[], None), None, "batched");
        let m = sync
            .poll(ms(2_010), &mut idx, &[], None)
            .expect("contact change");
        assert!(m.tracks.is_empty());
        assert_eq!(m.leaves.len(), 1);
        assert_eq!(m.leaves[0].region.as_deref(), Some("DE"));
        // An unlisted leaf's change is not sent.
        sync.answered(ms(2_020), Some(600));
        leaf_announce(&mut idx, 2, &ann(true, &[], &[]), ms(3_000));
        leaf_announce(&mut idx, 2, &moved, ms(3_000));
        assert_eq!(sync.poll(ms(3_000), &mut idx, &[], None), None);
        assert_eq!(sync.next_wake(), ms(5_000));
        assert_eq!(sync.poll(ms(5_000), &mut idx, &[], None), None);
    }

    #[test]
    fn large_clusters_are_sent_in_parts_that_fit_the_wire() {
        let mut idx = ClusterIndex::new(IndexConfig {
            max_tracks_per_leaf: 100_000,
            ..IndexConfig::default()
        });
        idx.set_tracking(true);
        let mut sync = TrackerSync::new(SyncConfig {
            max_tracks_per_message: 1_000,
            ..SyncConfig::default()
        });
        let tracks: Vec<TrackId> = (0..2_500u32)
            .map(|i| TrackId::of(&i.to_be_bytes()))
            .collect();
        for leaf in 0..3u64 {
            let msg = Announce {
                replace: true,
                tracks: tracks.clone(),
                removed: vec![],
                addrs: vec![],
                via: None,
                region: None,
            };
            idx.announce(n(leaf), &contact(leaf), &msg, ms(0)).unwrap();
        }
        let mut view = View::default();
        let mut parts = 0;
        let mut now = 0;
        while let Some(m) = sync.poll(ms(now), &mut idx, &[], None) {
            assert_eq!(m.replace, parts == 0);
            assert!(m.tracks.len() <= 1_000);
            assert!(m.encode_frame().is_ok());
            view.apply(&m);
            parts += 1;
            now += 1;
            sync.answered(ms(now), Some(600));
        }
        assert_eq!(parts, 3);
        assert_eq!(view.0.len(), 2_500);
        assert!(view.0.values().all(|v| v.len() == 3));
    }

    #[test]
    fn overflow_and_tracking_on_force_a_snapshot() {
        let (mut idx, mut sync) = setup();
        sync.poll(ms(0), &mut idx, &[], None).unwrap();
        sync.answered(ms(0), Some(600));
        assert_eq!(sync.poll(ms(10), &mut idx, &[], None), None);
        idx.set_tracking(true);
        let m = sync.poll(ms(20), &mut idx, &[], None).expect("snapshot");
        assert!(m.replace);
        sync.answered(ms(20), Some(600));

        // Mid-snapshot: the snapshot starts over.
        let mut sync = TrackerSync::new(SyncConfig {
            max_tracks_per_message: 1,
            ..SyncConfig::default()
        });
        for i in 0..3 {
            leaf_announce(&mut idx, i, &ann(true, &[i as u8], &[]), ms(30));
        }
        let m = sync.poll(ms(30), &mut idx, &[], None).unwrap();
        assert!(m.replace && m.tracks.len() == 1);
        sync.answered(ms(31), Some(600));
        let m = sync.poll(ms(32), &mut idx, &[], None).unwrap();
        assert!(!m.replace, "second part");
        sync.answered(ms(33), Some(600));
        idx.set_tracking(true);
        let m = sync.poll(ms(34), &mut idx, &[], None).unwrap();
        assert!(m.replace, "restarted");
        assert_eq!(sync.stats().snapshots, 2);
    }

    proptest::proptest! {
        /// Whatever leaves do, once the sync settles the tracker's view lists exactly the
        /// cluster's tracks, each with min(k, holders) current holders.
        #[test]
        fn tracker_view_converges(ops in proptest::collection::vec(
            (0u64..5, proptest::bool::ANY, proptest::collection::vec(0u8..8, 0..4), proptest::collection::vec(0u8..8, 0..2), 0u8..4),
            1..40,
        )) {
            let (mut idx, mut sync) = setup();
            let mut view = View::default();
            let mut now = 0u64;
            for (leaf, replace, tracks, removed, action) in ops {
                now += 700;
                match action {
                    0 => { idx.forget(&n(leaf)); }
                    1 => {
                        // The tracker loses a message.
                        if let Some(m) = sync.poll(ms(now), &mut idx, &[], None) {
                            let _ = m;
                            sync.answered(ms(now), None);
                        }
                    }
                    _ => { idx.announce(n(leaf), &contact(leaf), &ann(replace, &tracks, &removed), ms(now)).unwrap(); }
                }
                if let Some(m) = sync.poll(ms(now), &mut idx, &[], None) {
                    view.apply(&m);
                    sync.answered(ms(now), Some(600));
                }
            }
            // Settle.
            for _ in 0..20 {
                now += 10_000;
                if let Some(m) = sync.poll(ms(now), &mut idx, &[], None) {
                    view.apply(&m);
                    sync.answered(ms(now), Some(600));
                }
            }
            let agg: BTreeSet<TrackId> = idx.aggregate().into_iter().collect();
            let listed: BTreeSet<TrackId> = view.0.keys().copied().collect();
            proptest::prop_assert_eq!(&listed, &agg);
            for track in agg {
                let holders: Vec<Vec<u8>> = idx.holders_of(&track)
                    .map(|l| idx.leaf(&l).unwrap().0.peer_id.clone()).collect();
                let got = &view.0[&track];
                proptest::prop_assert_eq!(got.len(), holders.len().min(2));
                proptest::prop_assert!(got.iter().all(|p| holders.contains(p)));
            }
        }
    }
}
