//! The peer registry: which peers hold which tracks, how to reach them, until when; the
//! announce rules (replace / add / remove, rate and size caps) and the nearest-first ranking of
//! a track's holders. Soft state, bounded in every dimension, driven by the `now` it is given.
//!
//! Storage is built for ~100,000 peers × ~50 tracks on one core: peers and tracks are interned
//! to `u32` slots, a track keeps its holders as a `Vec<u32>` and a peer its tracks as a sorted
//! `Vec<u32>`, so one listing costs ~8 bytes in the two indexes. What a lookup reads for every
//! candidate (announce time, cluster, region) sits in a separate dense array of 16-byte records,
//! so ranking a popular track's holders stays within cache; the full contact is read only for
//! the few returned.
//!
//! The hash maps use std's randomly keyed hasher because track ids in announces are chosen by
//! the sender (HashDoS). No result depends on their iteration order: rankings are total orders
//! and expiry walks a heap, so outputs are a pure function of the inputs.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use shoal_protocol::ids::{NodeId, TrackId};
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{
    Announce, AnnounceResponse, ClusterAnnounce, Holder, MAX_ANNOUNCE_TRACKS, PeerContact,
};

use super::cluster::{ClusterAccepted, ClusterTable};
use super::config::{ConfigError, RegistryConfig};

/// The cluster key of peers reachable through `via`: the super-peer's [`NodeId`], derived from
/// its peer id the way drivers derive every node's id ([`NodeId::from_key`]).
pub fn cluster_of(via: &PeerContact) -> NodeId {
    NodeId::from_key(&via.peer_id)
}

/// How near a holder is to the asker; lookups return nearer classes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proximity {
    /// Behind the same super-peer as the asker (or the asker's super-peer itself, or a leaf of
    /// the asker when the asker is a super-peer).
    SameCluster,
    /// In the asker's region (exact, case-sensitive match of the announced names).
    SameRegion,
    /// Anywhere else, or the asker's position is unknown.
    Elsewhere,
}

/// Where an asker sits, for drivers that know it without the asker having announced (an HTTP
/// lookup, a super-peer asking on behalf of a leaf). [`PeerRegistry::holders`] derives it from
/// the asker's own announce instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    /// The asker; never returned as a holder.
    pub node: NodeId,
    /// Its super-peer's node id ([`cluster_of`] its `via`), if it has one.
    pub cluster: Option<NodeId>,
    /// Its region, if known.
    pub region: Option<String>,
}

/// One ranked holder, borrowed from the registry. [`HolderRef::to_holder`] makes the wire form;
/// the simulator uses [`HolderRef::node`] directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderRef<'a> {
    /// The holder.
    pub node: NodeId,
    /// How near it is to the asker.
    pub proximity: Proximity,
    /// When it last announced.
    pub announced: Time,
    /// How to reach it directly (peer id, and addresses if it has any).
    pub contact: &'a PeerContact,
    /// The super-peer it is reachable through, if any.
    pub via: Option<&'a PeerContact>,
    /// Its region, if announced.
    pub region: Option<&'a str>,
}

impl HolderRef<'_> {
    /// The wire form.
    pub fn to_holder(&self) -> Holder {
        Holder {
            peer: self.contact.clone(),
            via: self.via.cloned(),
            region: self.region.map(str::to_owned),
            superpeer: false,
        }
    }
}

/// What an accepted announce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Seconds the entry lives without renewal (the `Accepted { ttl_secs }` answer).
    pub ttl_secs: u32,
    /// Tracks the peer is now listed for.
    pub listed: usize,
    /// Listings added by this announce.
    pub added: usize,
    /// Listings removed by this announce (replaced or `removed`).
    pub removed: usize,
    /// Other peers' listings dropped because a track was at `max_holders_per_track`.
    pub evicted: usize,
}

impl Accepted {
    /// The wire answer.
    pub fn to_response(&self) -> AnnounceResponse {
        AnnounceResponse::Accepted {
            ttl_secs: self.ttl_secs,
        }
    }
}

/// Why an announce was rejected; nothing it asked for was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// The peer announces faster than `announces_per_minute` / `announce_burst` allow.
    #[error("announcing too often: retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// When the next announce will be accepted.
        retry_after: Duration,
    },
    /// A list in the message is longer than any valid message carries.
    #[error("announce lists {count} {what}, more than the {max} allowed")]
    TooLarge {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field of the peer's or its super-peer's contact, or the region, is too long.
    #[error("announce {what} is {len} long, more than the {max} allowed")]
    FieldTooLong {
        /// Which field.
        what: &'static str,
        /// Its length (bytes or entries).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer would be listed for more than `max_tracks_per_peer` tracks.
    #[error("would list {count} tracks for this peer, more than the {max} allowed")]
    TooManyTracks {
        /// Tracks it would hold after the announce.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `max_peers` peers are registered; a new one must wait for entries to expire.
    #[error("registry full: {max} peers registered")]
    RegistryFull {
        /// The limit.
        max: usize,
    },
    /// `max_holdings` listings exist; announces that add more wait for entries to expire.
    #[error("registry full: {max} listings")]
    HoldingsFull {
        /// The limit.
        max: usize,
    },
    /// `max_clusters` super-peer clusters are registered; a new one must wait.
    #[error("registry full: {max} clusters registered")]
    ClustersFull {
        /// The limit.
        max: usize,
    },
    /// The message contradicts itself or the registry's state (a cluster announce referring
    /// to a leaf it does not describe, or an incremental one from an unknown cluster).
    #[error("invalid announce: {0}")]
    Invalid(String),
}

impl AnnounceError {
    /// The wire answer.
    pub fn to_response(&self) -> AnnounceResponse {
        AnnounceResponse::Rejected {
            reason: self.to_string(),
        }
    }
}

/// Counters since the registry was created, and its current size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Peers registered (including expired ones not purged yet).
    pub peers: usize,
    /// Distinct tracks with at least one listing.
    pub tracks: usize,
    /// (peer, track) listings.
    pub holdings: usize,
    /// Announces accepted.
    pub accepted: u64,
    /// Announces rejected (any reason).
    pub rejected: u64,
    /// Of those, rejected by the rate cap.
    pub rate_limited: u64,
    /// Listings dropped to make room on full tracks.
    pub evicted: u64,
    /// Peers removed because their TTL passed.
    pub expired: u64,
    /// Super-peer clusters registered (`/shoal/cluster/1`).
    pub clusters: usize,
    /// (cluster, track) pairs.
    pub cluster_tracks: usize,
    /// (cluster, track, leaf) listings.
    pub cluster_listings: usize,
    /// Cluster announces accepted.
    pub cluster_accepted: u64,
    /// Cluster announces rejected.
    pub cluster_rejected: u64,
    /// Cluster tracks not listed because the track had `max_clusters_per_track` clusters.
    pub cluster_listings_dropped: u64,
    /// Clusters removed because their TTL passed.
    pub clusters_expired: u64,
}

/// Interns keys to `u32` ids (0 means "none") with reference counts, so a peer stores a
/// 4-byte id for its cluster and region and equal ones compare as integers.
#[derive(Debug)]
struct Interner<K> {
    index: HashMap<K, u32>,
    slots: Vec<Option<(K, u32)>>,
    free: Vec<u32>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn acquire(&mut self, key: K) -> u32 {
        if let Some(&id) = self.index.get(&key) {
            if let Some((_, refs)) = &mut self.slots[id as usize - 1] {
                *refs += 1;
            }
            return id;
        }
        let entry = Some((key.clone(), 1));
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize - 1] = entry;
                id
            }
            None => {
                self.slots.push(entry);
                // Bounded by max_peers (each peer holds at most one of each), far below u32.
                u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
            }
        };
        self.index.insert(key, id);
        id
    }

    fn release(&mut self, id: u32) {
        let Some(slot) = id
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        if let Some((key, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                self.index.remove(key);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn find<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> u32
    where
        K: Borrow<Q>,
    {
        self.index.get(key).copied().unwrap_or(0)
    }

    fn get(&self, id: u32) -> Option<&K> {
        let i = id.checked_sub(1)? as usize;
        self.slots.get(i)?.as_ref().map(|(k, _)| k)
    }

    fn heap_bytes(&self) -> usize {
        self.index.capacity() * (size_of::<K>() + 8)
            + self.slots.capacity() * size_of::<Option<(K, u32)>>()
            + self.free.capacity() * 4
    }
}

/// What ranking reads for every candidate: kept dense and small (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Hot {
    announced: Time,
    cluster: u32,
    region: u32,
}

/// The rest of a peer's entry.
#[derive(Debug)]
struct Peer {
    node: NodeId,
    /// Distinguishes this occupant of the slot from earlier ones in the expiry heap.
    generation: u32,
    contact: PeerContact,
    via: Option<Box<PeerContact>>,
    /// Track slots, sorted.
    tracks: Vec<u32>,
    /// GCRA "theoretical arrival time" of the next announce: one timestamp is the whole token
    /// bucket.
    rate_tat: Time,
}

#[derive(Debug)]
struct Track {
    id: TrackId,
    /// Peer slots, unordered (rankings impose their own order).
    holders: Vec<u32>,
    /// Where the next eviction window starts, so successive evictions rotate over the list.
    cursor: u32,
}

/// Where an asker sits, resolved to interned ids.
#[derive(Debug, Clone, Copy)]
struct Locality {
    slot: Option<u32>,
    /// The asker's super-peer's cluster id, and the cluster it heads itself if it is one.
    clusters: [u32; 2],
    /// The registry slot of the asker's super-peer, when it announced too.
    head: Option<u32>,
    region: u32,
}

/// Where an asker sits, as cluster members are ranked: the super-peers whose leaves count as
/// its own cluster (its `via`, itself if it heads a cluster, the cluster that lists it) and its
/// region.
#[derive(Debug, Clone, Copy)]
struct Near<'a> {
    asker: NodeId,
    clusters: [Option<NodeId>; 3],
    region: Option<&'a str>,
}

/// The registry. Plain methods for drivers and the simulator; [`TrackerCore`](super::TrackerCore)
/// wraps it in the sans-IO [`Core`](shoal_protocol::sansio::Core) contract.
#[derive(Debug)]
pub struct PeerRegistry {
    config: RegistryConfig,
    peer_index: HashMap<NodeId, u32>,
    peers: Vec<Option<Peer>>,
    hot: Vec<Hot>,
    free_peers: Vec<u32>,
    track_index: HashMap<TrackId, u32>,
    tracks: Vec<Option<Track>>,
    free_tracks: Vec<u32>,
    clusters: Interner<NodeId>,
    regions: Interner<Box<str>>,
    /// One entry per registered peer: (when it may expire, slot, generation). Renewals do not
    /// touch it; a popped entry whose peer was renewed is pushed back with the new expiry.
    expiry: BinaryHeap<Reverse<(Time, u32, u32)>>,
    next_generation: u32,
    holdings: usize,
    stats: RegistryStats,
    /// What super-peers announced for their clusters.
    aggregates: ClusterTable,
}

impl PeerRegistry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            peer_index: HashMap::new(),
            peers: Vec::new(),
            hot: Vec::new(),
            free_peers: Vec::new(),
            track_index: HashMap::new(),
            tracks: Vec::new(),
            free_tracks: Vec::new(),
            clusters: Interner::new(),
            regions: Interner::new(),
            expiry: BinaryHeap::new(),
            next_generation: 0,
            holdings: 0,
            stats: RegistryStats::default(),
            aggregates: ClusterTable::default(),
        })
    }

    /// The thresholds in force.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Counters and sizes.
    pub fn stats(&self) -> RegistryStats {
        let a = &self.aggregates;
        RegistryStats {
            peers: self.peer_index.len(),
            tracks: self.track_index.len(),
            holdings: self.holdings,
            clusters: a.len(),
            cluster_tracks: a.tracks(),
            cluster_listings: a.listings,
            cluster_accepted: a.accepted,
            cluster_rejected: a.rejected,
            cluster_listings_dropped: a.dropped,
            clusters_expired: a.expired,
            ..self.stats
        }
    }

    /// Records a super-peer's aggregated announce ([`ClusterAnnounce`]) from `from`, whose
    /// identity the driver authenticated, reachable at `contact` (its addresses are used when
    /// the message lists none): `from`'s cluster, and only it, is updated. The listed leaves
    /// are handed out by lookups as holders reachable through `from` until the cluster's TTL
    /// passes. See [`super::cluster`](crate::core) for the semantics.
    pub fn announce_cluster(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &ClusterAnnounce,
        now: Time,
    ) -> Result<ClusterAccepted, AnnounceError> {
        self.purge_expired(now, self.config.purge_per_announce);
        let result = self
            .aggregates
            .announce(from, contact, msg, now, &self.config);
        if let Err(e) = &result {
            if matches!(e, AnnounceError::RateLimited { .. }) {
                self.stats.rate_limited += 1;
            }
            tracing::debug!(cluster = %from, error = %e, "cluster announce rejected");
        }
        result
    }

    /// The tracks `cluster` lists and, for each, the leaves (sorted), when it is live.
    pub fn cluster_tracks(&self, cluster: &NodeId, now: Time) -> Vec<(TrackId, Vec<NodeId>)> {
        let Some(c) = self.aggregates.live(cluster, now, &self.config) else {
            return Vec::new();
        };
        let mut v: Vec<(TrackId, Vec<NodeId>)> = c
            .entries()
            .map(|(t, leaves)| {
                let mut leaves = leaves.to_vec();
                leaves.sort_unstable();
                (*t, leaves)
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Records an announce from `from`, whose identity the driver authenticated, reachable at
    /// `contact` (its peer id; its addresses are used when the announce lists none).
    ///
    /// The new holding set is `tracks` when `replace` is set, else the current set plus
    /// `tracks`; `removed` is taken away last, so a track in both lists is not held. A peer
    /// whose entry had expired starts from nothing (its old holdings are not revived). The
    /// announce renews the entry's TTL and replaces its addresses, super-peer and region.
    /// Every announce that passes the rate check counts against it, accepted or not.
    pub fn announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &Announce,
        now: Time,
    ) -> Result<Accepted, AnnounceError> {
        self.purge_expired(now, self.config.purge_per_announce);
        let result = self.try_announce(from, contact, msg, now);
        match &result {
            Ok(_) => self.stats.accepted += 1,
            Err(e) => {
                self.stats.rejected += 1;
                if matches!(e, AnnounceError::RateLimited { .. }) {
                    self.stats.rate_limited += 1;
                }
                tracing::debug!(peer = %from, error = %e, "announce rejected");
            }
        }
        result
    }

    fn try_announce(
        &mut self,
        from: NodeId,
        contact: &PeerContact,
        msg: &Announce,
        now: Time,
    ) -> Result<Accepted, AnnounceError> {
        for (what, count) in [
            ("tracks", msg.tracks.len()),
            ("removed tracks", msg.removed.len()),
        ] {
            if count > MAX_ANNOUNCE_TRACKS {
                return Err(AnnounceError::TooLarge {
                    what,
                    count,
                    max: MAX_ANNOUNCE_TRACKS,
                });
            }
        }
        let slot = self.peer_index.get(&from).copied();
        if let Some(s) = slot {
            self.take_rate_token(s, now)?;
        } else if self.peer_index.len() >= self.config.max_peers {
            return Err(AnnounceError::RegistryFull {
                max: self.config.max_peers,
            });
        }
        self.check_contact(contact, "peer")?;
        self.check_addrs(&msg.addrs, "address")?;
        if let Some(via) = &msg.via {
            self.check_contact(via, "super-peer")?;
        }
        if let Some(region) = &msg.region {
            self.check_len("region", region.len(), self.config.max_region_len)?;
        }

        // Plan the change against the live holding set before touching anything, so a
        // rejected announce records nothing.
        let live = slot.is_some_and(|s| self.is_live(s, now));
        let stale = match slot {
            Some(s) if !live => self.peer(s).map_or(0, |p| p.tracks.len()),
            _ => 0,
        };
        let old: &[u32] = match slot {
            Some(s) if live => self.peer(s).map_or(&[], |p| p.tracks.as_slice()),
            _ => &[],
        };
        let mut removed = msg.removed.clone();
        removed.sort_unstable();
        removed.dedup();
        let is_removed = |t: &TrackId| removed.binary_search(t).is_ok();
        let holds = |t: &TrackId| {
            self.track_index
                .get(t)
                .is_some_and(|ts| old.binary_search(ts).is_ok())
        };
        let mut add: Vec<TrackId> = msg
            .tracks
            .iter()
            .filter(|t| !is_removed(t) && !holds(t))
            .copied()
            .collect();
        add.sort_unstable();
        add.dedup();
        let drop: Vec<u32> = if msg.replace {
            let mut keep = msg.tracks.clone();
            keep.sort_unstable();
            keep.dedup();
            old.iter()
                .copied()
                .filter(|&ts| {
                    self.track_id(ts)
                        .is_none_or(|id| keep.binary_search(id).is_err() || is_removed(id))
                })
                .collect()
        } else {
            let mut d: Vec<u32> = removed
                .iter()
                .filter_map(|t| self.track_index.get(t).copied())
                .filter(|ts| old.binary_search(ts).is_ok())
                .collect();
            d.sort_unstable();
            d
        };
        let listed = old.len() - drop.len() + add.len();
        if listed > self.config.max_tracks_per_peer {
            return Err(AnnounceError::TooManyTracks {
                count: listed,
                max: self.config.max_tracks_per_peer,
            });
        }
        let after = self.holdings - stale - drop.len() + add.len();
        if add.len() > drop.len() && after > self.config.max_holdings {
            return Err(AnnounceError::HoldingsFull {
                max: self.config.max_holdings,
            });
        }

        // Apply.
        let s = match slot {
            Some(s) => {
                if !live {
                    self.clear_tracks(s);
                }
                s
            }
            None => self.insert_peer(from, now),
        };
        let cluster = msg
            .via
            .as_ref()
            .map_or(0, |v| self.clusters.acquire(cluster_of(v)));
        let region = msg
            .region
            .as_ref()
            .map_or(0, |r| self.regions.acquire(r.as_str().into()));
        let old_hot = std::mem::replace(
            &mut self.hot[s as usize],
            Hot {
                announced: now,
                cluster,
                region,
            },
        );
        self.clusters.release(old_hot.cluster);
        self.regions.release(old_hot.region);
        if let Some(p) = self.peers[s as usize].as_mut() {
            p.contact = PeerContact {
                peer_id: contact.peer_id.clone(),
                addrs: if msg.addrs.is_empty() {
                    contact.addrs.clone()
                } else {
                    msg.addrs.clone()
                },
            };
            p.via = msg.via.clone().map(Box::new);
            p.tracks.retain(|ts| drop.binary_search(ts).is_err());
        }
        for &ts in &drop {
            self.unlist(s, ts);
        }
        let mut evicted = 0;
        for id in &add {
            evicted += usize::from(self.list(s, *id));
        }
        if let Some(p) = self.peers[s as usize].as_mut() {
            p.tracks.sort_unstable();
        }
        Ok(Accepted {
            ttl_secs: u32::try_from(self.config.ttl.as_secs()).unwrap_or(u32::MAX),
            listed: self.peer(s).map_or(0, |p| p.tracks.len()),
            added: add.len(),
            removed: drop.len(),
            evicted,
        })
    }

    /// GCRA: the announce is allowed when the peer is at most `burst - 1` intervals ahead of
    /// its sustained rate; allowing it moves it one interval further ahead.
    fn take_rate_token(&mut self, s: u32, now: Time) -> Result<(), AnnounceError> {
        let interval = self.config.announce_interval();
        let allowance = interval * self.config.announce_burst.saturating_sub(1);
        let Some(p) = self.peers[s as usize].as_mut() else {
            return Ok(());
        };
        let start = p.rate_tat.max(now);
        let ahead = start - now;
        if ahead > allowance {
            return Err(AnnounceError::RateLimited {
                retry_after: ahead - allowance,
            });
        }
        p.rate_tat = start + interval;
        Ok(())
    }

    fn check_len(&self, what: &'static str, len: usize, max: usize) -> Result<(), AnnounceError> {
        if len > max {
            return Err(AnnounceError::FieldTooLong { what, len, max });
        }
        Ok(())
    }

    fn check_addrs(&self, addrs: &[String], what: &'static str) -> Result<(), AnnounceError> {
        self.check_len(
            if what == "address" {
                "address list"
            } else {
                "super-peer address list"
            },
            addrs.len(),
            self.config.max_addrs,
        )?;
        for a in addrs {
            self.check_len(what, a.len(), self.config.max_addr_len)?;
        }
        Ok(())
    }

    fn check_contact(&self, c: &PeerContact, whose: &'static str) -> Result<(), AnnounceError> {
        let (id, addr) = if whose == "peer" {
            ("peer id", "address")
        } else {
            ("super-peer id", "super-peer address")
        };
        self.check_len(id, c.peer_id.len(), self.config.max_peer_id_len)?;
        self.check_addrs(&c.addrs, addr)
    }

    fn insert_peer(&mut self, node: NodeId, now: Time) -> u32 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let peer = Peer {
            node,
            generation,
            contact: PeerContact {
                peer_id: Vec::new(),
                addrs: Vec::new(),
            },
            via: None,
            tracks: Vec::new(),
            rate_tat: now + self.config.announce_interval(),
        };
        let hot = Hot {
            announced: now,
            cluster: 0,
            region: 0,
        };
        let s = match self.free_peers.pop() {
            Some(s) => {
                self.peers[s as usize] = Some(peer);
                self.hot[s as usize] = hot;
                s
            }
            None => {
                self.peers.push(Some(peer));
                self.hot.push(hot);
                // Bounded by max_peers, which a u32 slot comfortably covers.
                u32::try_from(self.peers.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.peer_index.insert(node, s);
        self.expiry
            .push(Reverse((now + self.config.ttl, s, generation)));
        s
    }

    /// Lists peer `s` as a holder of `id`; true when that evicted another peer's listing.
    fn list(&mut self, s: u32, id: TrackId) -> bool {
        let ts = match self.track_index.get(&id) {
            Some(&ts) => ts,
            None => {
                let track = Some(Track {
                    id,
                    holders: Vec::new(),
                    cursor: 0,
                });
                let ts = match self.free_tracks.pop() {
                    Some(ts) => {
                        self.tracks[ts as usize] = track;
                        ts
                    }
                    None => {
                        self.tracks.push(track);
                        // Bounded by max_holdings.
                        u32::try_from(self.tracks.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.track_index.insert(id, ts);
                ts
            }
        };
        let Some(track) = self.tracks[ts as usize].as_mut() else {
            return false;
        };
        let mut evicted = false;
        if track.holders.len() >= self.config.max_holders_per_track {
            let len = track.holders.len();
            let start = track.cursor as usize % len;
            let window = self.config.eviction_window.min(len);
            let mut victim_pos = start;
            for i in 1..window {
                let pos = (start + i) % len;
                let a = self.hot[track.holders[pos] as usize].announced;
                if a < self.hot[track.holders[victim_pos] as usize].announced {
                    victim_pos = pos;
                }
            }
            track.cursor = u32::try_from((start + window) % len).unwrap_or(0);
            let victim = std::mem::replace(&mut track.holders[victim_pos], s);
            if let Some(v) = self.peers[victim as usize].as_mut()
                && let Ok(i) = v.tracks.binary_search(&ts)
            {
                v.tracks.remove(i);
            }
            self.stats.evicted += 1;
            evicted = true;
        } else {
            track.holders.push(s);
            self.holdings += 1;
        }
        // Sorted by the caller once all additions are in.
        if let Some(p) = self.peers[s as usize].as_mut() {
            p.tracks.push(ts);
        }
        evicted
    }

    /// Removes peer `s` from the holders of track slot `ts` (not from the peer's own list).
    fn unlist(&mut self, s: u32, ts: u32) {
        let Some(track) = self.tracks[ts as usize].as_mut() else {
            return;
        };
        if let Some(pos) = track.holders.iter().position(|&h| h == s) {
            track.holders.swap_remove(pos);
            self.holdings -= 1;
        }
        if track.holders.is_empty() {
            self.track_index.remove(&track.id);
            self.tracks[ts as usize] = None;
            self.free_tracks.push(ts);
        }
    }

    fn clear_tracks(&mut self, s: u32) {
        let tracks = self.peers[s as usize]
            .as_mut()
            .map(|p| std::mem::take(&mut p.tracks))
            .unwrap_or_default();
        for ts in tracks {
            self.unlist(s, ts);
        }
    }

    fn remove_slot(&mut self, s: u32) {
        self.clear_tracks(s);
        let Some(p) = self.peers[s as usize].take() else {
            return;
        };
        let hot = self.hot[s as usize];
        self.clusters.release(hot.cluster);
        self.regions.release(hot.region);
        self.hot[s as usize] = Hot {
            announced: Time::ZERO,
            cluster: 0,
            region: 0,
        };
        self.peer_index.remove(&p.node);
        self.free_peers.push(s);
    }

    /// Drops `node` and its listings now (an operator ban, a peer leaving cleanly), and the
    /// cluster it heads if it is a super-peer. True when it was registered. Its rate-limit
    /// state goes too.
    pub fn forget(&mut self, node: &NodeId) -> bool {
        let cluster = self.aggregates.remove(node);
        match self.peer_index.get(node).copied() {
            Some(s) => {
                self.remove_slot(s);
                true
            }
            None => cluster,
        }
    }

    /// Removes up to `budget` peers whose TTL has passed (each heap entry looked at counts, so
    /// the work is bounded); returns how many were removed. Expired entries are never returned
    /// by lookups whether purged or not; purging frees their memory.
    pub fn purge_expired(&mut self, now: Time, budget: usize) -> usize {
        let clusters = self.aggregates.purge_expired(now, budget);
        let mut removed = clusters;
        for _ in clusters..budget {
            let Some(&Reverse((at, s, generation))) = self.expiry.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.expiry.pop();
            let current = self.peers[s as usize]
                .as_ref()
                .is_some_and(|p| p.generation == generation);
            if !current {
                continue; // forgotten, or the slot has a new occupant with its own entry
            }
            let expires = self.hot[s as usize].announced + self.config.ttl;
            if expires > now {
                self.expiry.push(Reverse((expires, s, generation)));
            } else {
                self.remove_slot(s);
                self.stats.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    /// When [`purge_expired`](Self::purge_expired) next has something to look at
    /// ([`Time::NEVER`] when the registry is empty). May be early (a renewed peer), never late.
    pub fn next_deadline(&self) -> Time {
        self.expiry
            .peek()
            .map_or(Time::NEVER, |Reverse((at, _, _))| *at)
            .min(self.aggregates.next_deadline())
    }

    fn peer(&self, s: u32) -> Option<&Peer> {
        self.peers.get(s as usize)?.as_ref()
    }

    fn track_id(&self, ts: u32) -> Option<&TrackId> {
        Some(&self.tracks.get(ts as usize)?.as_ref()?.id)
    }

    fn is_live(&self, s: u32, now: Time) -> bool {
        self.hot[s as usize].announced + self.config.ttl > now
    }

    fn live_slot(&self, node: &NodeId, now: Time) -> Option<u32> {
        self.peer_index
            .get(node)
            .copied()
            .filter(|&s| self.is_live(s, now))
    }

    /// True when `node` is registered and its TTL has not passed.
    pub fn is_registered(&self, node: &NodeId, now: Time) -> bool {
        self.live_slot(node, now).is_some()
    }

    /// When `node`'s entry expires, if it is registered (even if already expired).
    pub fn expires_at(&self, node: &NodeId) -> Option<Time> {
        let s = *self.peer_index.get(node)?;
        Some(self.hot[s as usize].announced + self.config.ttl)
    }

    /// The tracks `node` is listed for, sorted; empty when it is not registered or expired.
    pub fn tracks_of(&self, node: &NodeId, now: Time) -> Vec<TrackId> {
        let Some(p) = self.live_slot(node, now).and_then(|s| self.peer(s)) else {
            return Vec::new();
        };
        let mut ids: Vec<TrackId> = p
            .tracks
            .iter()
            .filter_map(|&ts| self.track_id(ts).copied())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Up to `limit` (capped by `max_lookup_limit`) live holders of `track`, nearest to
    /// `asker` first: same super-peer cluster, then same region, then the rest; within a class
    /// the most recently announced first (fresh entries are the likeliest to be online, and
    /// renewals rotate who comes first, which spreads load), ties by node id. Never `asker`,
    /// never an expired entry. The asker's position comes from its own announce; an asker
    /// that has not announced (or expired) gets everyone as [`Proximity::Elsewhere`].
    pub fn holders(
        &self,
        asker: NodeId,
        track: &TrackId,
        limit: usize,
        now: Time,
    ) -> Vec<HolderRef<'_>> {
        let slot = self.live_slot(&asker, now);
        let membership = self.aggregates.membership(&asker, now, &self.config);
        let (cluster, region) = match (slot, membership) {
            (Some(s), _) => {
                let h = self.hot[s as usize];
                (h.cluster, h.region)
            }
            // Known only as a leaf some super-peer listed: its cluster and region from there.
            (None, Some((c, m))) => (
                self.clusters.find(&c),
                m.region.as_deref().map_or(0, |r| self.regions.find(r)),
            ),
            // A super-peer asking (for its leaves): its own region.
            (None, None) => (
                0,
                self.aggregates
                    .live(&asker, now, &self.config)
                    .and_then(|c| c.region.as_deref())
                    .map_or(0, |r| self.regions.find(r)),
            ),
        };
        let loc = Locality {
            slot: self.peer_index.get(&asker).copied(),
            clusters: [cluster, self.clusters.find(&asker)],
            head: self
                .clusters
                .get(cluster)
                .and_then(|head| self.peer_index.get(head).copied()),
            region,
        };
        let near = Near {
            asker,
            clusters: [
                self.clusters.get(cluster).copied(),
                Some(asker),
                membership.map(|(c, _)| c),
            ],
            region: self.regions.get(region).map(|r| &**r),
        };
        self.rank(loc, &near, track, limit, now)
    }

    /// Like [`holders`](Self::holders), with the asker's position given by the driver.
    pub fn holders_near(
        &self,
        asker: &Asker,
        track: &TrackId,
        limit: usize,
        now: Time,
    ) -> Vec<HolderRef<'_>> {
        let cluster = asker.cluster.map_or(0, |c| self.clusters.find(&c));
        let loc = Locality {
            slot: self.peer_index.get(&asker.node).copied(),
            clusters: [cluster, self.clusters.find(&asker.node)],
            head: asker.cluster.and_then(|c| self.peer_index.get(&c).copied()),
            region: asker.region.as_deref().map_or(0, |r| self.regions.find(r)),
        };
        let near = Near {
            asker: asker.node,
            clusters: [asker.cluster, Some(asker.node), None],
            region: asker.region.as_deref(),
        };
        self.rank(loc, &near, track, limit, now)
    }

    /// Peers that announced themselves and leaves super-peers listed, nearest first, deduplicated
    /// by node (a leaf listed by its cluster and still announcing itself appears once, at its
    /// better rank).
    fn rank(
        &self,
        loc: Locality,
        near: &Near<'_>,
        track: &TrackId,
        limit: usize,
        now: Time,
    ) -> Vec<HolderRef<'_>> {
        let limit = limit.min(self.config.max_lookup_limit);
        if limit == 0 {
            return Vec::new();
        }
        let mut members: Vec<HolderRef<'_>> = Vec::new();
        for cnode in self.aggregates.listing(track) {
            let Some(c) = self.aggregates.live(cnode, now, &self.config) else {
                continue;
            };
            let same_cluster = near.clusters.contains(&Some(*cnode));
            for leaf in c.listed(track) {
                if *leaf == near.asker {
                    continue;
                }
                let Some(m) = c.members.get(leaf) else {
                    continue;
                };
                let region = m.region.as_deref();
                let proximity = if same_cluster {
                    Proximity::SameCluster
                } else if near.region.is_some() && region.or(c.region.as_deref()) == near.region {
                    Proximity::SameRegion
                } else {
                    Proximity::Elsewhere
                };
                members.push(HolderRef {
                    node: *leaf,
                    proximity,
                    announced: c.announced,
                    contact: &m.contact,
                    via: Some(&c.contact),
                    region,
                });
            }
        }
        if members.is_empty() {
            return self.rank_peers(loc, track, limit, now);
        }
        let mut all = self.rank_peers(loc, track, limit + members.len(), now);
        all.extend(members);
        all.sort_by(|a, b| {
            a.proximity
                .cmp(&b.proximity)
                .then(b.announced.cmp(&a.announced))
                .then(a.node.cmp(&b.node))
        });
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        all.retain(|h| seen.insert(h.node));
        all.truncate(limit);
        all
    }

    fn rank_peers(
        &self,
        loc: Locality,
        track: &TrackId,
        limit: usize,
        now: Time,
    ) -> Vec<HolderRef<'_>> {
        let Some(t) = self
            .track_index
            .get(track)
            .and_then(|&ts| self.tracks[ts as usize].as_ref())
        else {
            return Vec::new();
        };
        if limit == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(Proximity, Time, u32)> = Vec::with_capacity(t.holders.len());
        for &s in &t.holders {
            let h = self.hot[s as usize];
            if Some(s) == loc.slot || h.announced + self.config.ttl <= now {
                continue;
            }
            let proximity =
                if (h.cluster != 0 && loc.clusters.contains(&h.cluster)) || loc.head == Some(s) {
                    Proximity::SameCluster
                } else if h.region != 0 && h.region == loc.region {
                    Proximity::SameRegion
                } else {
                    Proximity::Elsewhere
                };
            candidates.push((proximity, h.announced, s));
        }
        let node = |s: u32| self.peer(s).map(|p| p.node);
        let order = |a: &(Proximity, Time, u32), b: &(Proximity, Time, u32)| -> Ordering {
            a.0.cmp(&b.0)
                .then(b.1.cmp(&a.1))
                .then_with(|| node(a.2).cmp(&node(b.2)))
        };
        if candidates.len() > limit {
            candidates.select_nth_unstable_by(limit - 1, order);
            candidates.truncate(limit);
        }
        candidates.sort_unstable_by(order);
        candidates
            .into_iter()
            .filter_map(|(proximity, announced, s)| {
                let p = self.peer(s)?;
                Some(HolderRef {
                    node: p.node,
                    proximity,
                    announced,
                    contact: &p.contact,
                    via: p.via.as_deref(),
                    region: self.regions.get(self.hot[s as usize].region).map(|r| &**r),
                })
            })
            .collect()
    }

    /// Panics unless the cluster indexes agree (tests only).
    #[cfg(test)]
    pub(crate) fn aggregates_check(&self) {
        self.aggregates.check_invariants();
    }

    /// Panics unless every index agrees with every other (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        use std::collections::HashMap as Map;
        let mut listed = 0;
        let mut cluster_refs: Map<u32, u32> = Map::new();
        let mut region_refs: Map<u32, u32> = Map::new();
        let in_heap: std::collections::HashSet<(u32, u32)> = self
            .expiry
            .iter()
            .map(|Reverse((_, s, g))| (*s, *g))
            .collect();
        for (s, p) in self.peers.iter().enumerate() {
            let Some(p) = p else { continue };
            let s = u32::try_from(s).unwrap_or(u32::MAX);
            assert_eq!(self.peer_index.get(&p.node), Some(&s), "peer index");
            assert!(
                in_heap.contains(&(s, p.generation)),
                "expiry entry for {}",
                p.node
            );
            assert!(
                p.tracks.windows(2).all(|w| w[0] < w[1]),
                "tracks sorted, unique"
            );
            assert!(p.tracks.len() <= self.config.max_tracks_per_peer);
            for &ts in &p.tracks {
                let t = self.tracks[ts as usize]
                    .as_ref()
                    .expect("listed track exists");
                assert_eq!(
                    t.holders.iter().filter(|&&h| h == s).count(),
                    1,
                    "listed once"
                );
            }
            listed += p.tracks.len();
            let h = self.hot[s as usize];
            *cluster_refs.entry(h.cluster).or_default() += 1;
            *region_refs.entry(h.region).or_default() += 1;
        }
        assert_eq!(self.peer_index.len(), self.peers.iter().flatten().count());
        assert!(self.peer_index.len() <= self.config.max_peers);
        let mut held = 0;
        for (ts, t) in self.tracks.iter().enumerate() {
            let Some(t) = t else { continue };
            let ts = u32::try_from(ts).unwrap_or(u32::MAX);
            assert_eq!(self.track_index.get(&t.id), Some(&ts), "track index");
            assert!(!t.holders.is_empty(), "empty tracks are freed");
            assert!(t.holders.len() <= self.config.max_holders_per_track);
            for &h in &t.holders {
                let p = self.peers[h as usize].as_ref().expect("holder exists");
                assert!(
                    p.tracks.binary_search(&ts).is_ok(),
                    "holder lists the track"
                );
            }
            held += t.holders.len();
        }
        assert_eq!(self.track_index.len(), self.tracks.iter().flatten().count());
        assert_eq!(listed, self.holdings);
        assert_eq!(held, self.holdings);
        assert!(self.holdings <= self.config.max_holdings);
        for (interner, refs) in [(&self.clusters.slots, &cluster_refs)] {
            for (i, slot) in interner.iter().enumerate() {
                let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
                assert_eq!(slot.as_ref().map(|(_, r)| *r), refs.get(&id).copied());
            }
        }
        for (i, slot) in self.regions.slots.iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            assert_eq!(
                slot.as_ref().map(|(_, r)| *r),
                region_refs.get(&id).copied()
            );
        }
    }

    /// An estimate of the heap memory the registry holds (capacities times element sizes,
    /// plus per-peer contacts), for status pages and benchmarks.
    pub fn heap_bytes(&self) -> usize {
        let contact = |c: &PeerContact| {
            c.peer_id.capacity()
                + c.addrs.capacity() * size_of::<String>()
                + c.addrs.iter().map(String::capacity).sum::<usize>()
        };
        let per_peer: usize = self
            .peers
            .iter()
            .flatten()
            .map(|p| {
                contact(&p.contact)
                    + p.via
                        .as_ref()
                        .map_or(0, |v| size_of::<PeerContact>() + contact(v))
                    + p.tracks.capacity() * 4
            })
            .sum();
        let per_track: usize = self
            .tracks
            .iter()
            .flatten()
            .map(|t| t.holders.capacity() * 4)
            .sum();
        self.peer_index.capacity() * (size_of::<NodeId>() + 4 + 1)
            + self.peers.capacity() * size_of::<Option<Peer>>()
            + self.hot.capacity() * size_of::<Hot>()
            + self.free_peers.capacity() * 4
            + self.track_index.capacity() * (size_of::<TrackId>() + 4 + 1)
            + self.tracks.capacity() * size_of::<Option<Track>>()
            + self.free_tracks.capacity() * 4
            + self.clusters.heap_bytes()
            + self.regions.heap_bytes()
            + self.expiry.capacity() * 16
            + per_peer
            + per_track
    }
}
