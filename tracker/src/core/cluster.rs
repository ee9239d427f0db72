//! Aggregated cluster holdings: what super-peers announce for their leaves on
//! `/shoal/cluster/1` ([`ClusterAnnounce`]).
//!
//! A super-peer keeps an index of its leaves' holdings and tells the tracker, in batches,
//! which leaves hold which tracks: per track a small sample of leaves (at most
//! [`RegistryConfig::max_leaves_per_cluster_track`]), each reachable through the super-peer.
//! The tracker keeps one entry per cluster, keyed by the super-peer's authenticated identity:
//! only the super-peer itself can change what its cluster lists (a message names no cluster),
//! and what a cluster lists never touches a peer's own announce. The entry lives
//! [`RegistryConfig::ttl`] from the cluster's last announce (any message renews the whole
//! cluster), so the tracker sees one soft-state entry per cluster and one message per batch of
//! leaf changes, instead of every leaf's announces and refreshes.
//!
//! Lookups ([`PeerRegistry::holders`](super::PeerRegistry::holders)) merge cluster members with
//! peers that announce themselves; a member is ranked like a peer whose `via` is its
//! super-peer.

use std::collections::{BTreeSet, HashMap};

use shoal_protocol::ids::{NodeId, TrackId};
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{
    ClusterAnnounce, MAX_CLUSTER_LEAVES, MAX_CLUSTER_TRACKS, MAX_LEAVES_PER_CLUSTER_TRACK,
    PeerContact,
};

use super::config::RegistryConfig;
use super::registry::AnnounceError;

/// What an accepted cluster announce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterAccepted {
    /// Seconds the cluster's entry lives without renewal.
    pub ttl_secs: u32,
    /// Tracks the cluster is listed for now.
    pub tracks: usize,
    /// (track, leaf) listings of the cluster now.
    pub listings: usize,
    /// Tracks not listed because they already had `max_clusters_per_track` clusters.
    pub dropped: usize,
}

/// A leaf as its cluster described it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) contact: PeerContact,
    pub(crate) region: Option<Box<str>>,
    /// Tracks of the cluster listing it.
    refs: u32,
}

/// One super-peer's cluster.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    /// The super-peer, as its members' `via`.
    pub(crate) contact: PeerContact,
    pub(crate) region: Option<Box<str>>,
    pub(crate) announced: Time,
    /// `announced + ttl` as of the last announce (its key in the expiry set).
    announced_expiry: Time,
    rate_tat: Time,
    pub(crate) members: HashMap<NodeId, Member>,
    tracks: HashMap<TrackId, Vec<NodeId>>,
    listings: usize,
}

impl Cluster {
    /// The leaves listed for `track`.
    pub(crate) fn listed(&self, track: &TrackId) -> &[NodeId] {
        self.tracks.get(track).map_or(&[], Vec::as_slice)
    }

    /// Every (track, leaves) it lists.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&TrackId, &Vec<NodeId>)> {
        self.tracks.iter()
    }
}

/// Every cluster, with the reverse indexes lookups need.
#[derive(Debug, Default)]
pub(crate) struct ClusterTable {
    pub(crate) by_node: HashMap<NodeId, Cluster>,
    /// track → clusters listing it.
    by_track: HashMap<TrackId, Vec<NodeId>>,
    /// leaf → clusters listing it (normally one; two while a leaf moves).
    member_of: HashMap<NodeId, Vec<NodeId>>,
    expiry: BTreeSet<(Time, NodeId)>,
    pub(crate) listings: usize,
    pub(crate) dropped: u64,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) expired: u64,
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), AnnounceError> {
    if len > max {
        return Err(AnnounceError::FieldTooLong { what, len, max });
    }
    Ok(())
}

fn check_contact(
    c: &PeerContact,
    id: &'static str,
    addr: &'static str,
    config: &RegistryConfig,
) -> Result<(), AnnounceError> {
    check_len(id, c.peer_id.len(), config.max_peer_id_len)?;
    check_len("address list", c.addrs.len(), config.max_addrs)?;
    for a in &c.addrs {
        check_len(addr, a.len(), config.max_addr_len)?;
    }
    Ok(())
}

impl ClusterTable {
    /// Clusters registered (live or expired but not purged).
    pub(crate) fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Distinct (cluster, track) pairs.
    pub(crate) fn tracks(&self) -> usize {
        self.by_node.values().map(|c| c.tracks.len()).sum()
    }

    /// The live cluster headed by `node`.
    pub(crate) fn live(
        &self,
        node: &NodeId,
        now: Time,
        config: &RegistryConfig,
    ) -> Option<&Cluster> {
        self.by_node
            .get(node)
            .filter(|c| c.announced + config.ttl > now)
    }

    /// The live clusters listing `leaf`, and the leaf as the first of them describes it.
    pub(crate) fn membership(
        &self,
        leaf: &NodeId,
        now: Time,
        config: &RegistryConfig,
    ) -> Option<(NodeId, &Member)> {
        self.member_of.get(leaf)?.iter().find_map(|c| {
            let cluster = self.live(c, now, config)?;
            Some((*c, cluster.members.get(leaf)?))
        })
    }

    /// Clusters listing `track` (live or not; the caller filters).
    pub(crate) fn listing(&self, track: &TrackId) -> &[NodeId] {
        self.by_track.get(track).map_or(&[], Vec::as_slice)
    }

    /// When the next cluster expires.
    pub(crate) fn next_deadline(&self) -> Time {
        self.expiry.first().map_or(Time::NEVER, |(t, _)| *t)
    }

    /// Removes up to `budget` expired clusters.
    pub(crate) fn purge_expired(&mut self, now: Time, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            let Some(&(at, node)) = self.expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.remove(&node);
            self.expired += 1;
            removed += 1;
        }
        removed
    }

    /// Drops a cluster and its listings. True when it had an entry.
    pub(crate) fn remove(&mut self, node: &NodeId) -> bool {
        let Some(mut c) = self.by_node.remove(node) else {
            return false;
        };
        self.expiry.remove(&(c.announced_expiry, *node));
        self.clear(*node, &mut c);
        true
    }

    fn clear(&mut self, node: NodeId, c: &mut Cluster) {
        for (track, _) in c.tracks.drain() {
            self.unlist_track(&track, &node);
        }
        for leaf in c.members.keys() {
            self.unlink_member(leaf, &node);
        }
        c.members.clear();
        self.listings -= c.listings;
        c.listings = 0;
    }

    fn unlist_track(&mut self, track: &TrackId, cluster: &NodeId) {
        if let Some(v) = self.by_track.get_mut(track) {
            v.retain(|c| c != cluster);
            if v.is_empty() {
                self.by_track.remove(track);
            }
        }
    }

    fn unlink_member(&mut self, leaf: &NodeId, cluster: &NodeId) {
        if let Some(v) = self.member_of.get_mut(leaf) {
            v.retain(|c| c != cluster);
            if v.is_empty() {
                self.member_of.remove(leaf);
            }
        }
    }

    /// Records a cluster announce from `from` (authenticated by the driver), reachable at
    /// `contact` (its addresses are used when the message lists none). See the module docs.
    pub(crate) fn announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &ClusterAnnounce,
        now: Time,
        config: &RegistryConfig,
    ) -> Result<ClusterAccepted, AnnounceError> {
        let result = self.try_announce(from, contact, msg, now, config);
        match &result {
            Ok(_) => self.accepted += 1,
            Err(_) => self.rejected += 1,
        }
        result
    }

    fn try_announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &ClusterAnnounce,
        now: Time,
        config: &RegistryConfig,
    ) -> Result<ClusterAccepted, AnnounceError> {
        for (what, count, max) in [
            ("cluster tracks", msg.tracks.len(), MAX_CLUSTER_TRACKS),
            ("cluster leaves", msg.leaves.len(), MAX_CLUSTER_LEAVES),
        ] {
            if count > max {
                return Err(AnnounceError::TooLarge { what, count, max });
            }
        }
        let per_track = config
            .max_leaves_per_cluster_track
            .min(MAX_LEAVES_PER_CLUSTER_TRACK);
        for t in &msg.tracks {
            if t.leaves.len() > per_track {
                return Err(AnnounceError::TooLarge {
                    what: "leaves for one track",
                    count: t.leaves.len(),
                    max: per_track,
                });
            }
            if let Some(&i) = t.leaves.iter().find(|&&i| i as usize >= msg.leaves.len()) {
                return Err(AnnounceError::Invalid(format!(
                    "track {} refers to leaf {i} of {}",
                    t.track,
                    msg.leaves.len()
                )));
            }
        }
        let existing = self.by_node.get(&from);
        let live = existing.is_some_and(|c| c.announced + config.ttl > now);
        if let Some(c) = existing {
            // GCRA, as for peers, at the cluster rate.
            let interval = config.cluster_announce_interval();
            let allowance = interval * config.cluster_announce_burst.saturating_sub(1);
            let ahead = c.rate_tat.max(now) - now;
            if ahead > allowance {
                return Err(AnnounceError::RateLimited {
                    retry_after: ahead - allowance,
                });
            }
        } else if self.by_node.len() >= config.max_clusters {
            return Err(AnnounceError::ClustersFull {
                max: config.max_clusters,
            });
        }
        if !msg.replace && !live {
            return Err(AnnounceError::Invalid(
                "unknown cluster: send a full snapshot (replace) first".into(),
            ));
        }
        check_contact(contact, "super-peer id", "super-peer address", config)?;
        check_len("super-peer address list", msg.addrs.len(), config.max_addrs)?;
        for a in &msg.addrs {
            check_len("super-peer address", a.len(), config.max_addr_len)?;
        }
        if let Some(r) = &msg.region {
            check_len("region", r.len(), config.max_region_len)?;
        }
        let mut leaf_nodes = Vec::with_capacity(msg.leaves.len());
        for l in &msg.leaves {
            check_contact(&l.peer, "leaf peer id", "leaf address", config)?;
            if let Some(r) = &l.region {
                check_len("region", r.len(), config.max_region_len)?;
            }
            let node = NodeId::from_key(&l.peer.peer_id);
            if node == from {
                return Err(AnnounceError::Invalid(
                    "a super-peer cannot list itself as its leaf".into(),
                ));
            }
            leaf_nodes.push(node);
        }

        // The new list per track (last mention wins; duplicates within one list dropped).
        let mut sets: Vec<(TrackId, Vec<NodeId>)> = Vec::with_capacity(msg.tracks.len());
        let mut pos: HashMap<TrackId, usize> = HashMap::with_capacity(msg.tracks.len());
        for t in &msg.tracks {
            let mut nodes: Vec<NodeId> = Vec::with_capacity(t.leaves.len());
            for &i in &t.leaves {
                let n = leaf_nodes[i as usize];
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
            match pos.get(&t.track) {
                Some(&p) => sets[p].1 = nodes,
                None => {
                    pos.insert(t.track, sets.len());
                    sets.push((t.track, nodes));
                }
            }
        }

        // Plan the sizes before touching anything, so a rejection records nothing.
        let base = if msg.replace || !live { None } else { existing };
        let (mut tracks, mut listings) = base.map_or((0, 0), |c| (c.tracks.len(), c.listings));
        for (track, nodes) in &sets {
            let old = base.map_or(0, |c| c.listed(track).len());
            if old > 0 {
                tracks -= 1;
            }
            listings -= old;
            if !nodes.is_empty() {
                tracks += 1;
            }
            listings += nodes.len();
        }
        if tracks > config.max_tracks_per_cluster {
            return Err(AnnounceError::TooManyTracks {
                count: tracks,
                max: config.max_tracks_per_cluster,
            });
        }
        let current = existing.map_or(0, |c| c.listings);
        if listings > current && self.listings - current + listings > config.max_cluster_listings {
            return Err(AnnounceError::HoldingsFull {
                max: config.max_cluster_listings,
            });
        }

        // Apply.
        let mut c = match self.by_node.remove(&from) {
            Some(mut c) => {
                self.expiry.remove(&(c.announced_expiry, from));
                if msg.replace || !live {
                    self.clear(from, &mut c);
                }
                c
            }
            None => Cluster {
                contact: PeerContact {
                    peer_id: Vec::new(),
                    addrs: Vec::new(),
                },
                region: None,
                announced: now,
                announced_expiry: now,
                rate_tat: now,
                members: HashMap::new(),
                tracks: HashMap::new(),
                listings: 0,
            },
        };
        c.contact = PeerContact {
            peer_id: contact.peer_id.clone(),
            addrs: if msg.addrs.is_empty() {
                contact.addrs.clone()
            } else {
                msg.addrs.clone()
            },
        };
        c.region = msg.region.as_deref().map(Into::into);
        c.announced = now;
        c.announced_expiry = now + config.ttl;
        c.rate_tat = c.rate_tat.max(now) + config.cluster_announce_interval();
        // Contacts of members already listed are refreshed.
        for (l, node) in msg.leaves.iter().zip(&leaf_nodes) {
            if let Some(m) = c.members.get_mut(node) {
                m.contact = l.peer.clone();
                m.region = l.region.as_deref().map(Into::into);
            }
        }
        let mut dropped = 0;
        for (track, nodes) in sets {
            let old = c.tracks.remove(&track).unwrap_or_default();
            c.listings -= old.len();
            self.listings -= old.len();
            for n in &old {
                if let Some(m) = c.members.get_mut(n) {
                    m.refs -= 1;
                    if m.refs == 0 {
                        c.members.remove(n);
                        self.unlink_member(n, &from);
                    }
                }
            }
            if nodes.is_empty() {
                if !old.is_empty() {
                    self.unlist_track(&track, &from);
                }
                continue;
            }
            if old.is_empty() {
                let clusters = self.by_track.entry(track).or_default();
                if clusters.len() >= config.max_clusters_per_track {
                    dropped += 1;
                    continue;
                }
                clusters.push(from);
            }
            for n in &nodes {
                let i = leaf_nodes.iter().position(|x| x == n).unwrap_or(0);
                let l = &msg.leaves[i];
                let m = c.members.entry(*n).or_insert_with(|| Member {
                    contact: l.peer.clone(),
                    region: l.region.as_deref().map(Into::into),
                    refs: 0,
                });
                if m.refs == 0 {
                    let of = self.member_of.entry(*n).or_default();
                    if !of.contains(&from) {
                        of.push(from);
                    }
                }
                m.refs += 1;
            }
            c.listings += nodes.len();
            self.listings += nodes.len();
            c.tracks.insert(track, nodes);
        }
        self.dropped += dropped as u64;
        let accepted = ClusterAccepted {
            ttl_secs: u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX),
            tracks: c.tracks.len(),
            listings: c.listings,
            dropped,
        };
        self.expiry.insert((c.announced_expiry, from));
        self.by_node.insert(from, c);
        Ok(accepted)
    }

    /// Panics unless the indexes agree (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut listings = 0;
        for (node, c) in &self.by_node {
            assert!(self.expiry.contains(&(c.announced_expiry, *node)));
            let mut refs: HashMap<NodeId, u32> = HashMap::new();
            let mut n = 0;
            for (t, nodes) in &c.tracks {
                assert!(!nodes.is_empty());
                assert!(self.listing(t).contains(node), "by_track lists {t}");
                for l in nodes {
                    *refs.entry(*l).or_default() += 1;
                }
                n += nodes.len();
            }
            assert_eq!(n, c.listings);
            listings += n;
            assert_eq!(refs.len(), c.members.len());
            for (l, m) in &c.members {
                assert_eq!(refs.get(l), Some(&m.refs));
                assert!(self.member_of.get(l).is_some_and(|v| v.contains(node)));
            }
        }
        assert_eq!(listings, self.listings);
        assert_eq!(self.expiry.len(), self.by_node.len());
        for (t, cs) in &self.by_track {
            for c in cs {
                assert!(!self.by_node[c].listed(t).is_empty());
            }
        }
    }
}
