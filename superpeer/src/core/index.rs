//! The cluster index: what the super-peer's leaves hold, as soft state.
//!
//! Leaves announce their holdings to their super-peer with the same [`Announce`] message they
//! would send the tracker. The index keeps one entry per leaf (its contact, region and track
//! set) that lives for [`IndexConfig::ttl`] unless renewed by another announce, answers
//! "which leaves hold track X" from memory, and maintains the **aggregate**: the union of the
//! tracks held anywhere in the cluster, with a bounded, coalescing change log so a driver can
//! forward only what changed (track entered / left the cluster) to the tracker.
//!
//! For the tracker, the index also keeps a **dirty set** (while [`ClusterIndex::set_tracking`]
//! is on): tracks whose holder set changed and leaves whose contact or region changed since
//! [`super::TrackerSync`] last drained them. The sync turns them into batched
//! [`ClusterAnnounce`](shoal_protocol::wire::ClusterAnnounce)s. The dirty set is bounded by
//! [`MAX_DIRTY`]; past it the index drops it and flags an overflow, and the sync sends a full
//! snapshot instead.
//!
//! Everything is bounded: leaves ([`IndexConfig::max_leaves`]), tracks per leaf
//! ([`IndexConfig::max_tracks_per_leaf`]), addresses per leaf and their lengths, and the change
//! log (at most one pending change per distinct track, so never larger than the aggregate plus
//! what left it since the last drain, itself bounded by the leaf caps).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use shoal_protocol::TrackId;
use shoal_protocol::ids::NodeId;
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{Announce, AnnounceResponse, MAX_ANNOUNCE_TRACKS, PeerContact};

/// Most dirty tracks (or leaves) kept for the tracker sync before it must resend everything.
pub const MAX_DIRTY: usize = 1_000_000;

/// Thresholds of a [`ClusterIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// How long a leaf's entry lives without a renewing announce (default 10 min). The
    /// `Accepted { ttl_secs }` answer tells the leaf.
    pub ttl: Duration,
    /// Leaves indexed at once (default 10,000); announces from new leaves beyond it are
    /// rejected until entries expire or leaves leave.
    pub max_leaves: usize,
    /// Tracks one leaf may be listed for (default 10,000); an announce that would exceed it is
    /// rejected whole, so a leaf never ends up with an arbitrary subset listed.
    pub max_tracks_per_leaf: usize,
    /// Most holders one lookup returns, whatever the request asks (default 100).
    pub max_lookup_limit: usize,
    /// Addresses kept per leaf (default 16); more is rejected.
    pub max_addrs: usize,
    /// Longest address, in bytes (default 256); longer is rejected.
    pub max_addr_len: usize,
    /// Longest region name, in bytes (default 64).
    pub max_region_len: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_leaves: 10_000,
            max_tracks_per_leaf: 10_000,
            max_lookup_limit: 100,
            max_addrs: 16,
            max_addr_len: 256,
            max_region_len: 64,
        }
    }
}

/// Why an announce was not recorded. Nothing of a rejected announce is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// A list in the message is longer than the wire allows.
    #[error("too many {what}: {count} (at most {max} per announce)")]
    TooLarge {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The leaf would be listed for more tracks than allowed.
    #[error("too many tracks for one leaf: {count} (at most {max})")]
    TooManyTracks {
        /// Tracks the leaf would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The index holds as many leaves as allowed and this one is new.
    #[error("super-peer full: {max} leaves indexed")]
    Full {
        /// The limit.
        max: usize,
    },
    /// An address list or a string is too long.
    #[error("{what} too long: {len} (at most {max})")]
    FieldTooLong {
        /// Which field.
        what: &'static str,
        /// Its length (items or bytes).
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl IndexError {
    /// The wire answer for this rejection.
    pub fn to_response(&self) -> AnnounceResponse {
        AnnounceResponse::Rejected {
            reason: self.to_string(),
        }
    }
}

/// What an accepted announce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Seconds the entry lives without renewal.
    pub ttl_secs: u32,
    /// Tracks the leaf is listed for now.
    pub listed: usize,
    /// Tracks added by this announce.
    pub added: usize,
    /// Tracks removed by this announce.
    pub removed: usize,
}

impl Accepted {
    /// The wire answer: `Accepted { ttl_secs }`.
    pub fn to_response(&self) -> AnnounceResponse {
        AnnounceResponse::Accepted {
            ttl_secs: self.ttl_secs,
        }
    }
}

/// One leaf holding a track, as a lookup returns it (the driver adds the super-peer's own
/// contact as `via`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafHolder {
    /// The leaf's node id.
    pub node: NodeId,
    /// Its peer id and addresses (announced ones, else those the driver observed).
    pub contact: PeerContact,
    /// Its region, if it said.
    pub region: Option<String>,
}

/// A change of the aggregate since the last [`ClusterIndex::take_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggregateDelta {
    /// Tracks now held in the cluster that were not when last drained.
    pub added: Vec<TrackId>,
    /// Tracks no longer held in the cluster that were when last drained.
    pub removed: Vec<TrackId>,
}

impl AggregateDelta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Counters and sizes, for metrics and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Leaves with an entry (live or expired but not yet purged).
    pub leaves: usize,
    /// Distinct tracks held in the cluster (the aggregate).
    pub tracks: usize,
    /// (leaf, track) listings.
    pub listings: usize,
    /// Announces accepted.
    pub announces_accepted: u64,
    /// Announces rejected.
    pub announces_rejected: u64,
    /// Holder lookups answered.
    pub lookups: u64,
    /// Holder lookups that found at least one leaf.
    pub lookup_hits: u64,
    /// Leaves removed because their TTL passed.
    pub expired: u64,
}

#[derive(Debug, Clone)]
struct Leaf {
    contact: PeerContact,
    region: Option<String>,
    announced: Time,
    expires: Time,
    tracks: BTreeSet<TrackId>,
}

/// The index of a super-peer's cluster. See the module docs.
#[derive(Debug, Clone)]
pub struct ClusterIndex {
    config: IndexConfig,
    leaves: HashMap<NodeId, Leaf>,
    /// track → leaves holding it; its keys are the aggregate.
    holders: HashMap<TrackId, BTreeSet<NodeId>>,
    /// (expiry, leaf), one per leaf.
    expiry: BTreeSet<(Time, NodeId)>,
    /// Net change of the aggregate per track since the last drain: true = added.
    changes: BTreeMap<TrackId, bool>,
    listings: usize,
    stats: IndexStats,
    /// Whether the dirty sets below are kept (a tracker sync drains them).
    tracking: bool,
    /// Tracks whose holder set changed since the last drain.
    dirty: BTreeSet<TrackId>,
    /// Leaves whose contact or region changed since the last drain.
    dirty_leaves: BTreeSet<NodeId>,
    /// The dirty sets overflowed [`MAX_DIRTY`] and were dropped.
    overflow: bool,
}

impl ClusterIndex {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            leaves: HashMap::new(),
            holders: HashMap::new(),
            expiry: BTreeSet::new(),
            changes: BTreeMap::new(),
            listings: 0,
            stats: IndexStats::default(),
            tracking: false,
            dirty: BTreeSet::new(),
            dirty_leaves: BTreeSet::new(),
            overflow: false,
        }
    }

    /// Starts (or stops) keeping the dirty sets a tracker sync drains. Turning it on flags an
    /// overflow, so the sync starts from a full snapshot.
    pub fn set_tracking(&mut self, on: bool) {
        self.tracking = on;
        self.dirty.clear();
        self.dirty_leaves.clear();
        self.overflow = on;
    }

    fn mark(&mut self, track: TrackId) {
        if !self.tracking || self.overflow {
            return;
        }
        self.dirty.insert(track);
        if self.dirty.len() > MAX_DIRTY {
            self.dirty.clear();
            self.dirty_leaves.clear();
            self.overflow = true;
        }
    }

    fn mark_leaf(&mut self, leaf: NodeId) {
        if !self.tracking || self.overflow {
            return;
        }
        self.dirty_leaves.insert(leaf);
        if self.dirty_leaves.len() > MAX_DIRTY {
            self.dirty.clear();
            self.dirty_leaves.clear();
            self.overflow = true;
        }
    }

    /// Drains the dirty sets: (tracks whose holders changed, leaves whose contact or region
    /// changed, whether they overflowed since the last drain so only a full resend is exact).
    pub fn take_dirty(&mut self) -> (Vec<TrackId>, Vec<NodeId>, bool) {
        let tracks = std::mem::take(&mut self.dirty).into_iter().collect();
        let leaves = std::mem::take(&mut self.dirty_leaves).into_iter().collect();
        (tracks, leaves, std::mem::take(&mut self.overflow))
    }

    /// Whether anything is dirty.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.dirty_leaves.is_empty() || self.overflow
    }

    /// Every indexed leaf holding `track` (expired ones too until purged), in node order.
    pub fn holders_of(&self, track: &TrackId) -> impl Iterator<Item = NodeId> + '_ {
        self.holders.get(track).into_iter().flatten().copied()
    }

    /// Whether `leaf` is indexed as a holder of `track`.
    pub fn holds(&self, leaf: &NodeId, track: &TrackId) -> bool {
        self.holders.get(track).is_some_and(|s| s.contains(leaf))
    }

    /// An indexed leaf's contact and region.
    pub fn leaf(&self, leaf: &NodeId) -> Option<(&PeerContact, Option<&str>)> {
        self.leaves
            .get(leaf)
            .map(|l| (&l.contact, l.region.as_deref()))
    }

    /// Changes the thresholds (config reload). Entries keep their current expiry; the new TTL
    /// applies from their next announce. Leaves over a lowered cap stay until they announce.
    pub fn set_config(&mut self, config: IndexConfig) {
        self.config = config;
    }

    /// The thresholds.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Counters and sizes.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            leaves: self.leaves.len(),
            tracks: self.holders.len(),
            listings: self.listings,
            ..self.stats
        }
    }

    /// Records an announce from `from`, whose identity the driver authenticated, reachable at
    /// `contact` (its peer id; its addresses are used when the announce lists none).
    ///
    /// The semantics are the [`Announce`] docs', as at the tracker: the new holding set is
    /// `tracks` when `replace` is set, else the current set plus `tracks`; `removed` is taken
    /// away last, so a track in both lists is not held. A leaf whose entry had expired starts
    /// from nothing (its old holdings are not revived). The announce renews the entry's TTL
    /// and replaces its addresses and region. `via` is ignored: the leaf is reachable through
    /// this super-peer, which says so itself in its answers.
    pub fn announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &Announce,
        now: Time,
    ) -> Result<Accepted, IndexError> {
        let result = self.try_announce(from, contact, msg, now);
        match &result {
            Ok(_) => self.stats.announces_accepted += 1,
            Err(_) => self.stats.announces_rejected += 1,
        }
        result
    }

    fn try_announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &Announce,
        now: Time,
    ) -> Result<Accepted, IndexError> {
        for (what, count) in [
            ("tracks", msg.tracks.len()),
            ("removed tracks", msg.removed.len()),
        ] {
            if count > MAX_ANNOUNCE_TRACKS {
                return Err(IndexError::TooLarge {
                    what,
                    count,
                    max: MAX_ANNOUNCE_TRACKS,
                });
            }
        }
        let addrs = if msg.addrs.is_empty() {
            // Observed by the driver: cut to the limits rather than refused.
            contact
                .addrs
                .iter()
                .filter(|a| a.len() <= self.config.max_addr_len)
                .take(self.config.max_addrs)
                .cloned()
                .collect()
        } else {
            self.check("addresses", msg.addrs.len(), self.config.max_addrs)?;
            for a in &msg.addrs {
                self.check("address", a.len(), self.config.max_addr_len)?;
            }
            msg.addrs.clone()
        };
        if let Some(region) = &msg.region {
            self.check("region", region.len(), self.config.max_region_len)?;
        }
        if !self.leaves.contains_key(&from) && self.leaves.len() >= self.config.max_leaves {
            // Room may be held by expired entries.
            self.purge_expired(now, usize::MAX);
            if self.leaves.len() >= self.config.max_leaves {
                return Err(IndexError::Full {
                    max: self.config.max_leaves,
                });
            }
        }

        // Plan against the live holding set, so a rejected announce changes nothing.
        let empty = BTreeSet::new();
        let old = match self.leaves.get(&from) {
            Some(l) if l.expires > now => &l.tracks,
            _ => &empty,
        };
        let removed: HashSet<&TrackId> = msg.removed.iter().collect();
        let mut new: BTreeSet<TrackId> = if msg.replace {
            BTreeSet::new()
        } else {
            old.clone()
        };
        new.extend(msg.tracks.iter().copied());
        new.retain(|t| !removed.contains(t));
        if new.len() > self.config.max_tracks_per_leaf {
            return Err(IndexError::TooManyTracks {
                count: new.len(),
                max: self.config.max_tracks_per_leaf,
            });
        }
        let added: Vec<TrackId> = new.difference(old).copied().collect();
        let dropped: Vec<TrackId> = old.difference(&new).copied().collect();
        let (n_added, n_dropped) = (added.len(), dropped.len());

        // Apply. An expired leaf's stale tracks go first.
        if let Some(l) = self.leaves.get(&from)
            && l.expires <= now
        {
            let stale: Vec<TrackId> = l.tracks.iter().copied().collect();
            for t in stale {
                self.unlist(from, t);
            }
        }
        for t in dropped {
            self.unlist(from, t);
        }
        for t in added {
            self.list(from, t);
        }
        let expires = now + self.config.ttl;
        let leaf = self.leaves.entry(from).or_insert_with(|| Leaf {
            contact: contact.clone(),
            region: None,
            announced: now,
            expires,
            tracks: BTreeSet::new(),
        });
        self.expiry.remove(&(leaf.expires, from));
        let contact = PeerContact {
            peer_id: contact.peer_id.clone(),
            addrs,
        };
        let changed = leaf.contact != contact || leaf.region != msg.region;
        leaf.contact = contact;
        leaf.region = msg.region.clone();
        leaf.announced = now;
        leaf.expires = expires;
        leaf.tracks = new;
        let listed = leaf.tracks.len();
        self.expiry.insert((expires, from));
        if changed {
            self.mark_leaf(from);
        }
        Ok(Accepted {
            ttl_secs: u32::try_from(self.config.ttl.as_secs()).unwrap_or(u32::MAX),
            listed,
            added: n_added,
            removed: n_dropped,
        })
    }

    fn check(&self, what: &'static str, len: usize, max: usize) -> Result<(), IndexError> {
        if len > max {
            return Err(IndexError::FieldTooLong { what, len, max });
        }
        Ok(())
    }

    /// Adds `leaf` to the holders of `track` (the leaf's own set is updated by the caller).
    fn list(&mut self, leaf: NodeId, track: TrackId) {
        let set = self.holders.entry(track).or_default();
        let entered = set.is_empty();
        let inserted = set.insert(leaf);
        if inserted {
            self.listings += 1;
            self.mark(track);
        }
        if entered {
            self.note_change(track, true);
        }
    }

    /// Removes `leaf` from the holders of `track`.
    fn unlist(&mut self, leaf: NodeId, track: TrackId) {
        let Some(set) = self.holders.get_mut(&track) else {
            return;
        };
        let removed = set.remove(&leaf);
        let empty = set.is_empty();
        if removed {
            self.listings -= 1;
            self.mark(track);
        }
        if empty {
            self.holders.remove(&track);
            self.note_change(track, false);
        }
    }

    /// Records that `track` entered (`true`) or left the aggregate; an opposite pending change
    /// cancels out (the tracker never needs to hear about it).
    fn note_change(&mut self, track: TrackId, added: bool) {
        match self.changes.get(&track) {
            Some(&pending) if pending != added => {
                self.changes.remove(&track);
            }
            _ => {
                self.changes.insert(track, added);
            }
        }
    }

    /// Drops `leaf`'s entry (it disconnected, so it is no longer reachable through this
    /// super-peer). Returns whether it had one.
    pub fn forget(&mut self, leaf: &NodeId) -> bool {
        let Some(l) = self.leaves.remove(leaf) else {
            return false;
        };
        self.expiry.remove(&(l.expires, *leaf));
        for t in l.tracks {
            self.unlist(*leaf, t);
        }
        true
    }

    /// Removes up to `budget` leaves whose TTL passed by `now`; returns how many. Expired
    /// entries are never returned by lookups even before they are purged.
    pub fn purge_expired(&mut self, now: Time, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            let Some(&(at, leaf)) = self.expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.forget(&leaf);
            self.stats.expired += 1;
            removed += 1;
        }
        removed
    }

    /// When the next entry expires ([`Time::NEVER`] when there is none): the driver's purge
    /// timer.
    pub fn next_deadline(&self) -> Time {
        self.expiry.first().map_or(Time::NEVER, |&(at, _)| at)
    }

    /// Whether `leaf` has a live entry at `now`.
    pub fn is_live(&self, leaf: &NodeId, now: Time) -> bool {
        self.leaves.get(leaf).is_some_and(|l| l.expires > now)
    }

    /// The tracks `leaf` is listed for at `now` (empty when expired or unknown).
    pub fn tracks_of(&self, leaf: &NodeId, now: Time) -> Vec<TrackId> {
        match self.leaves.get(leaf) {
            Some(l) if l.expires > now => l.tracks.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// Up to `limit` (capped by [`IndexConfig::max_lookup_limit`]) live leaves holding
    /// `track`, never `asker` itself. Leaves in the asker's region come first (when the asker
    /// is a leaf that said its region), then the most recently announced.
    pub fn holders(
        &mut self,
        asker: NodeId,
        track: &TrackId,
        limit: usize,
        now: Time,
    ) -> Vec<LeafHolder> {
        self.stats.lookups += 1;
        let limit = limit.min(self.config.max_lookup_limit);
        let Some(set) = self.holders.get(track) else {
            return Vec::new();
        };
        let region = self
            .leaves
            .get(&asker)
            .filter(|l| l.expires > now)
            .and_then(|l| l.region.as_deref());
        let mut found: Vec<(bool, Time, NodeId, &Leaf)> = set
            .iter()
            .filter(|&&n| n != asker)
            .filter_map(|n| self.leaves.get(n).map(|l| (n, l)))
            .filter(|(_, l)| l.expires > now)
            .map(|(n, l)| {
                let same = region.is_some() && l.region.as_deref() == region;
                (!same, l.announced, *n, l)
            })
            .collect();
        // Same region first, then newest announce first; node id breaks ties.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let out: Vec<LeafHolder> = found
            .into_iter()
            .take(limit)
            .map(|(_, _, node, l)| LeafHolder {
                node,
                contact: l.contact.clone(),
                region: l.region.clone(),
            })
            .collect();
        if !out.is_empty() {
            self.stats.lookup_hits += 1;
        }
        out
    }

    /// The aggregate: every track held by at least one indexed leaf (purge first for an
    /// exact view at `now`), in order.
    pub fn aggregate(&self) -> Vec<TrackId> {
        let mut v: Vec<TrackId> = self.holders.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether the aggregate changed since the last drain.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Drains up to `max` pending aggregate changes (in track order). Applying every drained
    /// delta, in order, to the aggregate as first seen reproduces [`aggregate`](Self::aggregate).
    pub fn take_changes(&mut self, max: usize) -> AggregateDelta {
        let mut delta = AggregateDelta::default();
        while delta.added.len() + delta.removed.len() < max {
            let Some((track, added)) = self.changes.pop_first() else {
                break;
            };
            if added {
                delta.added.push(track);
            } else {
                delta.removed.push(track);
            }
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn t(i: u8) -> TrackId {
        TrackId::of(&[i])
    }

    fn n(i: u64) -> NodeId {
        NodeId::from_index(i)
    }

    fn contact(i: u64) -> PeerContact {
        PeerContact {
            peer_id: vec![i as u8; 4],
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

    fn secs(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    fn set(v: Vec<TrackId>) -> BTreeSet<TrackId> {
        v.into_iter().collect()
    }

    #[test]
    fn replace_and_incremental_semantics() {
        let mut idx = ClusterIndex::new(IndexConfig::default());
        let now = secs(1);
        idx.announce(n(1), &contact(1), &ann(true, &[1, 2, 3], &[]), now)
            .unwrap();
        assert_eq!(set(idx.tracks_of(&n(1), now)), set(vec![t(1), t(2), t(3)]));
        // Incremental: add 4, remove 2.
        let a = idx
            .announce(n(1), &contact(1), &ann(false, &[4], &[2]), now)
            .unwrap();
        assert_eq!((a.added, a.removed, a.listed), (1, 1, 3));
        assert_eq!(set(idx.tracks_of(&n(1), now)), set(vec![t(1), t(3), t(4)]));
        // Replace: exactly {5}; a track both held and removed is not held.
        idx.announce(n(1), &contact(1), &ann(true, &[5, 6], &[6]), now)
            .unwrap();
        assert_eq!(idx.tracks_of(&n(1), now), vec![t(5)]);
        assert_eq!(idx.aggregate(), vec![t(5)]);
        assert_eq!(idx.stats().listings, 1);
    }

    #[test]
    fn lookups_exclude_asker_and_expired_and_respect_limit() {
        let cfg = IndexConfig {
            ttl: Duration::from_secs(10),
            ..IndexConfig::default()
        };
        let mut idx = ClusterIndex::new(cfg);
        for i in 1..=5 {
            idx.announce(n(i), &contact(i), &ann(true, &[7], &[]), secs(i))
                .unwrap();
        }
        let h = idx.holders(n(1), &t(7), 10, secs(6));
        assert_eq!(h.len(), 4);
        assert!(h.iter().all(|h| h.node != n(1)));
        // Newest announce first.
        assert_eq!(h[0].node, n(5));
        assert_eq!(h[0].contact, contact(5));
        assert_eq!(idx.holders(n(9), &t(7), 2, secs(6)).len(), 2);
        // At t=12.5 leaves 1 and 2 have expired (announced at 1 and 2, TTL 10) but are not
        // purged: never returned anyway.
        let h = idx.holders(n(9), &t(7), 10, Time::from_millis(12_500));
        assert_eq!(h.len(), 3);
        assert!(h.iter().all(|h| h.node != n(1) && h.node != n(2)));
        assert_eq!(idx.next_deadline(), secs(11));
        assert_eq!(idx.purge_expired(Time::from_millis(12_500), 10), 2);
        assert_eq!(idx.stats().leaves, 3);
        assert_eq!(idx.stats().expired, 2);
        assert!(idx.holders(n(9), &t(8), 10, secs(13)).is_empty());
    }

    #[test]
    fn expired_leaf_starts_from_nothing() {
        let cfg = IndexConfig {
            ttl: Duration::from_secs(10),
            ..IndexConfig::default()
        };
        let mut idx = ClusterIndex::new(cfg);
        idx.announce(n(1), &contact(1), &ann(true, &[1, 2], &[]), secs(0))
            .unwrap();
        idx.announce(n(1), &contact(1), &ann(false, &[3], &[]), secs(20))
            .unwrap();
        assert_eq!(idx.tracks_of(&n(1), secs(20)), vec![t(3)]);
        assert_eq!(idx.aggregate(), vec![t(3)]);
    }

    #[test]
    fn bounds_are_enforced_and_rejections_change_nothing() {
        let cfg = IndexConfig {
            max_leaves: 2,
            max_tracks_per_leaf: 3,
            ttl: Duration::from_secs(10),
            ..IndexConfig::default()
        };
        let mut idx = ClusterIndex::new(cfg);
        idx.announce(n(1), &contact(1), &ann(true, &[1, 2], &[]), secs(0))
            .unwrap();
        let e = idx
            .announce(n(1), &contact(1), &ann(false, &[3, 4], &[]), secs(0))
            .unwrap_err();
        assert!(matches!(e, IndexError::TooManyTracks { count: 4, max: 3 }));
        assert_eq!(idx.tracks_of(&n(1), secs(0)).len(), 2);
        idx.announce(n(2), &contact(2), &ann(true, &[1], &[]), secs(1))
            .unwrap();
        let e = idx
            .announce(n(3), &contact(3), &ann(true, &[1], &[]), secs(2))
            .unwrap_err();
        assert!(matches!(e, IndexError::Full { max: 2 }), "{e}");
        assert!(e.to_response() != AnnounceResponse::Accepted { ttl_secs: 10 });
        // Once leaf 1 expired, there is room.
        idx.announce(n(3), &contact(3), &ann(true, &[1], &[]), secs(10))
            .unwrap();
        assert_eq!(idx.stats().leaves, 2);
        let mut long = ann(true, &[1], &[]);
        long.addrs = vec!["x".repeat(300)];
        assert!(matches!(
            idx.announce(n(3), &contact(3), &long, secs(10)),
            Err(IndexError::FieldTooLong { .. })
        ));
        assert_eq!(idx.stats().announces_rejected, 3);
    }

    #[test]
    fn announced_addresses_win_over_observed() {
        let mut idx = ClusterIndex::new(IndexConfig::default());
        let mut a = ann(true, &[1], &[]);
        a.addrs = vec!["/ip4/1.2.3.4/tcp/5".into()];
        a.region = Some("SE".into());
        idx.announce(n(1), &contact(1), &a, secs(0)).unwrap();
        let h = idx.holders(n(2), &t(1), 5, secs(0));
        assert_eq!(h[0].contact.addrs, vec!["/ip4/1.2.3.4/tcp/5".to_owned()]);
        assert_eq!(h[0].region.as_deref(), Some("SE"));
    }

    #[test]
    fn same_region_first() {
        let mut idx = ClusterIndex::new(IndexConfig::default());
        for (i, r) in [(1, "DE"), (2, "SE"), (3, "DE")] {
            let mut a = ann(true, &[1], &[]);
            a.region = Some(r.into());
            idx.announce(n(i), &contact(i), &a, secs(i)).unwrap();
        }
        let mut a = ann(true, &[], &[]);
        a.region = Some("SE".into());
        idx.announce(n(9), &contact(9), &a, secs(4)).unwrap();
        let h = idx.holders(n(9), &t(1), 5, secs(5));
        assert_eq!(
            h.iter().map(|h| h.node).collect::<Vec<_>>(),
            [n(2), n(3), n(1)]
        );
    }

    #[test]
    fn changes_coalesce() {
        let mut idx = ClusterIndex::new(IndexConfig::default());
        idx.announce(n(1), &contact(1), &ann(true, &[1, 2], &[]), secs(0))
            .unwrap();
        idx.announce(n(2), &contact(2), &ann(true, &[2], &[]), secs(0))
            .unwrap();
        let d = idx.take_changes(100);
        assert_eq!(set(d.added), set(vec![t(1), t(2)]));
        assert!(d.removed.is_empty());
        assert!(!idx.has_changes());
        // Leaf 1 leaves: track 1 leaves the cluster, track 2 is still held by leaf 2.
        idx.forget(&n(1));
        // Track 3 comes and goes before the next drain: nothing to say.
        idx.announce(n(2), &contact(2), &ann(false, &[3], &[]), secs(1))
            .unwrap();
        idx.announce(n(2), &contact(2), &ann(false, &[], &[3]), secs(1))
            .unwrap();
        let d = idx.take_changes(100);
        assert_eq!(d.removed, vec![t(1)]);
        assert!(d.added.is_empty());
        // Bounded drains.
        idx.announce(n(2), &contact(2), &ann(false, &[4, 5, 6], &[]), secs(2))
            .unwrap();
        assert_eq!(idx.take_changes(2).added.len(), 2);
        assert_eq!(idx.take_changes(2).added.len(), 1);
        assert!(idx.take_changes(2).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Announce {
            leaf: u64,
            replace: bool,
            tracks: Vec<u8>,
            removed: Vec<u8>,
        },
        Forget(u64),
        Advance(u64),
        Purge,
        Drain(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..6, any::<bool>(), prop::collection::vec(0u8..10, 0..6), prop::collection::vec(0u8..10, 0..3))
                .prop_map(|(leaf, replace, tracks, removed)| Op::Announce { leaf, replace, tracks, removed }),
            1 => (0u64..6).prop_map(Op::Forget),
            2 => (0u64..8).prop_map(Op::Advance),
            1 => Just(Op::Purge),
            1 => (1usize..5).prop_map(Op::Drain),
        ]
    }

    proptest! {
        /// The index agrees with a naive model: per-leaf sets with expiry; lookups return
        /// exactly the live holders but the asker; drained deltas replayed give the aggregate.
        #[test]
        fn index_matches_model(ops in prop::collection::vec(op(), 1..80)) {
            let cfg = IndexConfig {
                ttl: Duration::from_secs(10),
                max_tracks_per_leaf: 6,
                max_leaves: 4,
                ..IndexConfig::default()
            };
            let mut idx = ClusterIndex::new(cfg.clone());
            let mut model: HashMap<u64, (BTreeSet<TrackId>, Time)> = HashMap::new();
            let mut reported: BTreeSet<TrackId> = BTreeSet::new();
            let mut now = Time::ZERO;
            for op in ops {
                match op {
                    Op::Announce { leaf, replace, tracks, removed } => {
                        let msg = ann(replace, &tracks, &removed);
                        let live = model.get(&leaf).filter(|(_, e)| *e > now).map(|(s, _)| s.clone());
                        let mut new = if replace { BTreeSet::new() } else { live.unwrap_or_default() };
                        new.extend(tracks.iter().map(|&i| t(i)));
                        for r in &removed { new.remove(&t(*r)); }
                        let known = model.contains_key(&leaf);
                        let result = idx.announce(n(leaf), &contact(leaf), &msg, now);
                        if !known && model.len() >= cfg.max_leaves {
                            // The index makes room by purging expired entries first.
                            model.retain(|_, (_, e)| *e > now);
                            if model.len() >= cfg.max_leaves {
                                prop_assert!(matches!(result, Err(IndexError::Full { .. })), "{:?}", result);
                                continue;
                            }
                        }
                        let live = model.get(&leaf).filter(|(_, e)| *e > now).map(|(s, _)| s.clone());
                        let mut new = if replace { BTreeSet::new() } else { live.unwrap_or_default() };
                        new.extend(tracks.iter().map(|&i| t(i)));
                        for r in &removed { new.remove(&t(*r)); }
                        if new.len() > cfg.max_tracks_per_leaf {
                            prop_assert!(matches!(result, Err(IndexError::TooManyTracks { .. })), "{:?}", result);
                        } else {
                            prop_assert!(result.is_ok(), "{:?}", result);
                            model.insert(leaf, (new, now + cfg.ttl));
                        }
                    }
                    Op::Forget(leaf) => {
                        prop_assert_eq!(idx.forget(&n(leaf)), model.remove(&leaf).is_some());
                    }
                    Op::Advance(s) => now = now + Duration::from_secs(s),
                    Op::Purge => {
                        idx.purge_expired(now, usize::MAX);
                        model.retain(|_, (_, e)| *e > now);
                    }
                    Op::Drain(max) => {
                        let d = idx.take_changes(max);
                        prop_assert!(d.added.len() + d.removed.len() <= max);
                        for a in d.added { prop_assert!(reported.insert(a)); }
                        for r in d.removed { prop_assert!(reported.remove(&r)); }
                    }
                }
                // Lookups: exactly the live holders but the asker.
                for track in 0..10u8 {
                    let mut want: Vec<NodeId> = model.iter()
                        .filter(|(l, (s, e))| **l != 0 && *e > now && s.contains(&t(track)))
                        .map(|(l, _)| n(*l)).collect();
                    want.sort();
                    let mut got: Vec<NodeId> = idx.holders(n(0), &t(track), 100, now)
                        .into_iter().map(|h| h.node).collect();
                    got.sort();
                    prop_assert_eq!(got, want);
                }
                // The aggregate is the union over indexed (not yet purged) leaves.
                let union: BTreeSet<TrackId> = model.values().flat_map(|(s, _)| s.iter().copied()).collect();
                prop_assert_eq!(set(idx.aggregate()), union);
                prop_assert_eq!(idx.stats().listings, model.values().map(|(s, _)| s.len()).sum::<usize>());
            }
            let d = idx.take_changes(usize::MAX);
            for a in d.added { prop_assert!(reported.insert(a)); }
            for r in d.removed { prop_assert!(reported.remove(&r)); }
            prop_assert_eq!(set(idx.aggregate()), reported);
        }
    }
}
