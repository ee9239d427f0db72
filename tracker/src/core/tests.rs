//! Tests of the peer registry's rules: ranking, exclusion, expiry, announce semantics, caps,
//! determinism, and a property test against a naive model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use shoal_protocol::ids::{NodeId, TrackId};
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{Announce, ClusterAnnounce, ClusterLeaf, ClusterTrack, PeerContact};

use super::*;

fn node(i: u64) -> NodeId {
    NodeId::from_index(i)
}

fn track(i: u64) -> TrackId {
    TrackId::of(&i.to_be_bytes())
}

fn contact(i: u64) -> PeerContact {
    PeerContact {
        peer_id: i.to_be_bytes().to_vec(),
        addrs: vec![format!("/ip4/10.0.0.1/udp/{i}/quic-v1")],
    }
}

/// Super-peer `i`'s contact; peers behind it are in cluster `cluster_of(&superpeer(i))`.
fn superpeer(i: u64) -> PeerContact {
    PeerContact {
        peer_id: format!("super-{i}").into_bytes(),
        addrs: vec![format!("/ip4/1.1.1.{i}/udp/7701/quic-v1")],
    }
}

fn replace(tracks: &[u64]) -> Announce {
    Announce {
        replace: true,
        tracks: tracks.iter().map(|&t| track(t)).collect(),
        removed: vec![],
        addrs: vec![],
        via: None,
        region: None,
    }
}

fn located(tracks: &[u64], via: Option<u64>, region: Option<&str>) -> Announce {
    Announce {
        via: via.map(superpeer),
        region: region.map(str::to_owned),
        ..replace(tracks)
    }
}

fn secs(s: u64) -> Time {
    Time::from_millis(s * 1000)
}

/// A config without the rate cap getting in the way of tests about something else.
fn relaxed() -> RegistryConfig {
    RegistryConfig {
        announces_per_minute: 60_000,
        announce_burst: 1_000,
        ..RegistryConfig::default()
    }
}

fn registry(config: RegistryConfig) -> PeerRegistry {
    PeerRegistry::new(config).unwrap()
}

fn ann(r: &mut PeerRegistry, i: u64, msg: &Announce, now: Time) -> Accepted {
    r.announce(node(i), &contact(i), msg, now).unwrap()
}

fn nodes(holders: &[HolderRef<'_>]) -> Vec<NodeId> {
    holders.iter().map(|h| h.node).collect()
}

#[test]
fn ranking_is_cluster_then_region_then_rest_and_never_the_asker() {
    let mut r = registry(relaxed());
    let t = 7;
    // Announce order is deliberately not the expected result order.
    ann(&mut r, 1, &located(&[t], None, Some("US")), secs(1)); // elsewhere
    ann(&mut r, 2, &located(&[t], Some(9), Some("US")), secs(2)); // same cluster, other region
    ann(&mut r, 3, &located(&[t], Some(8), Some("SE")), secs(3)); // same region
    ann(&mut r, 4, &located(&[t], None, Some("SE")), secs(4)); // same region, fresher
    ann(&mut r, 5, &located(&[t], Some(9), None), secs(5)); // same cluster, fresher
    ann(&mut r, 6, &located(&[t], None, None), secs(6)); // elsewhere, fresher
    ann(&mut r, 100, &located(&[t], Some(9), Some("SE")), secs(7)); // the asker holds it too

    let got = r.holders(node(100), &track(t), 10, secs(8));
    assert_eq!(
        got.iter().map(|h| h.node).collect::<Vec<_>>(),
        [5, 2, 4, 3, 6, 1].map(node)
    );
    assert_eq!(
        got.iter().map(|h| h.proximity).collect::<Vec<_>>(),
        [
            Proximity::SameCluster,
            Proximity::SameCluster,
            Proximity::SameRegion,
            Proximity::SameRegion,
            Proximity::Elsewhere,
            Proximity::Elsewhere
        ]
    );
    // The wire form carries how to reach each holder.
    let h = got[0].to_holder();
    assert_eq!(h.peer, contact(5));
    assert_eq!(h.via, Some(superpeer(9)));
    assert_eq!(got[2].to_holder().region.as_deref(), Some("SE"));

    // The limit keeps the nearest.
    assert_eq!(
        nodes(&r.holders(node(100), &track(t), 3, secs(8))),
        [5, 2, 4].map(node)
    );
    // An unknown asker sees everyone as elsewhere, freshest first (the asker's entry included,
    // since it is someone else asking).
    assert_eq!(
        nodes(&r.holders(node(999), &track(t), 3, secs(8))),
        [100, 6, 5].map(node)
    );
    // A driver-supplied position works the same as an announced one.
    let asker = Asker {
        node: node(100),
        cluster: Some(cluster_of(&superpeer(9))),
        region: Some("SE".into()),
    };
    assert_eq!(
        nodes(&r.holders_near(&asker, &track(t), 10, secs(8))),
        [5, 2, 4, 3, 6, 1].map(node)
    );
}

#[test]
fn super_peer_and_its_leaves_rank_as_one_cluster() {
    let mut r = registry(relaxed());
    // Super-peer 9 announces its cache under the node id its leaves name as their cluster.
    let sp = cluster_of(&superpeer(9));
    r.announce(sp, &superpeer(9), &replace(&[1]), secs(1))
        .unwrap();
    ann(&mut r, 2, &located(&[1], None, None), secs(5)); // fresher, but elsewhere
    ann(&mut r, 3, &located(&[1], Some(9), None), secs(2)); // leaf of 9
    // A leaf of 9 asking: its super-peer is in its cluster.
    ann(&mut r, 4, &located(&[], Some(9), None), secs(3));
    assert_eq!(
        nodes(&r.holders(node(4), &track(1), 10, secs(6))),
        [node(3), sp, node(2)]
    );
    // The super-peer asking: its leaves are its cluster.
    let got = r.holders(sp, &track(1), 10, secs(6));
    assert_eq!(nodes(&got), [node(3), node(2)]);
    assert_eq!(got[0].proximity, Proximity::SameCluster);
}

#[test]
fn ties_in_announce_time_break_by_node_id() {
    let mut r = registry(relaxed());
    for i in [5, 3, 9, 1] {
        ann(&mut r, i, &replace(&[1]), secs(1));
    }
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(2))),
        [1, 3, 5, 9].map(node)
    );
}

#[test]
fn entries_expire_after_the_ttl_and_announces_renew_them() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(100),
        purge_per_announce: 0, // purging is checked explicitly below
        ..relaxed()
    };
    let mut r = registry(config);
    ann(&mut r, 1, &replace(&[1]), secs(0));
    ann(&mut r, 2, &replace(&[1]), secs(50));
    assert_eq!(r.expires_at(&node(1)), Some(secs(100)));
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(99))),
        [2, 1].map(node)
    );
    // At exactly announce + TTL the entry is gone, purged or not.
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(100))),
        [node(2)]
    );
    assert!(!r.is_registered(&node(1), secs(100)));
    assert!(r.tracks_of(&node(1), secs(100)).is_empty());
    assert_eq!(r.stats().peers, 2, "not purged yet");

    // Peer 2 renews with an add-only announce of nothing: same tracks, new TTL.
    let renew = Announce {
        replace: false,
        ..replace(&[])
    };
    ann(&mut r, 2, &renew, secs(140));
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(200))),
        [node(2)]
    );
    // Purging removes exactly the expired peer; the renewed one is rescheduled.
    assert_eq!(r.next_deadline(), secs(100));
    assert_eq!(r.purge_expired(secs(200), 100), 1);
    assert_eq!(r.stats().peers, 1);
    assert_eq!(r.stats().expired, 1);
    assert_eq!(r.next_deadline(), secs(240));
    assert_eq!(r.purge_expired(secs(239), 100), 0);
    assert_eq!(r.purge_expired(secs(240), 100), 1);
    assert_eq!(
        r.stats(),
        RegistryStats {
            accepted: 3,
            expired: 2,
            ..RegistryStats::default()
        }
    );
    assert_eq!(r.next_deadline(), Time::NEVER);
}

#[test]
fn an_expired_peer_does_not_get_its_old_holdings_back() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(10),
        ..relaxed()
    };
    let mut r = registry(config);
    ann(&mut r, 1, &replace(&[1, 2]), secs(0));
    let add3 = Announce {
        replace: false,
        ..replace(&[3])
    };
    let a = ann(&mut r, 1, &add3, secs(20)); // expired, not purged (purge_per_announce aside)
    assert_eq!(a.listed, 1);
    assert_eq!(r.tracks_of(&node(1), secs(20)), vec![track(3)]);
    assert!(r.holders(node(0), &track(1), 10, secs(20)).is_empty());
    assert_eq!(r.stats().holdings, 1);
    assert_eq!(r.stats().tracks, 1);
}

#[test]
fn purging_is_bounded_per_call() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(10),
        purge_per_announce: 0,
        ..relaxed()
    };
    let mut r = registry(config);
    for i in 0..10 {
        ann(&mut r, i, &replace(&[i % 3]), secs(0));
    }
    assert_eq!(r.purge_expired(secs(10), 4), 4);
    assert_eq!(r.stats().peers, 6);
    assert!(r.next_deadline() <= secs(10), "more is due");
    assert_eq!(r.purge_expired(secs(10), 100), 6);
    assert_eq!(
        r.stats(),
        RegistryStats {
            accepted: 10,
            expired: 10,
            ..RegistryStats::default()
        }
    );
}

#[test]
fn replace_add_and_removed_semantics() {
    let mut r = registry(relaxed());
    let now = secs(1);
    let a = ann(&mut r, 1, &replace(&[1, 2, 3, 3]), now);
    assert_eq!((a.listed, a.added, a.removed), (3, 3, 0));
    // Add: keeps what was there.
    let add = Announce {
        replace: false,
        removed: vec![track(1), track(99)], // removing something not held is harmless
        ..replace(&[4, 2])
    };
    let a = ann(&mut r, 1, &add, now);
    assert_eq!((a.listed, a.added, a.removed), (3, 1, 1));
    assert_eq!(r.tracks_of(&node(1), now), sorted(&[2, 3, 4]));
    // Replace: exactly the new set, minus `removed` (which wins over `tracks`).
    let rep = Announce {
        removed: vec![track(6)],
        ..replace(&[4, 5, 6])
    };
    let a = ann(&mut r, 1, &rep, now);
    assert_eq!((a.listed, a.added, a.removed), (2, 1, 2));
    assert_eq!(r.tracks_of(&node(1), now), sorted(&[4, 5]));
    assert!(r.holders(node(0), &track(2), 10, now).is_empty());
    assert!(r.holders(node(0), &track(6), 10, now).is_empty());
    assert_eq!(nodes(&r.holders(node(0), &track(5), 10, now)), [node(1)]);
    // Tracks nobody holds any more are dropped from the index.
    assert_eq!(r.stats().tracks, 2);
    assert_eq!(r.stats().holdings, 2);
    // An empty replace keeps the peer registered, holding nothing.
    ann(&mut r, 1, &replace(&[]), now);
    assert!(r.is_registered(&node(1), now));
    assert_eq!(r.stats().tracks, 0);
}

fn sorted(ids: &[u64]) -> Vec<TrackId> {
    let mut v: Vec<TrackId> = ids.iter().map(|&i| track(i)).collect();
    v.sort_unstable();
    v
}

#[test]
fn addresses_come_from_the_announce_else_from_the_driver_and_identity_from_the_driver() {
    let mut r = registry(relaxed());
    let with_addrs = Announce {
        addrs: vec!["/ip4/5.5.5.5/udp/1/quic-v1".into()],
        ..replace(&[1])
    };
    ann(&mut r, 1, &with_addrs, secs(1));
    let h = r.holders(node(0), &track(1), 1, secs(1))[0].to_holder();
    assert_eq!(h.peer.peer_id, contact(1).peer_id);
    assert_eq!(h.peer.addrs, with_addrs.addrs);
    ann(&mut r, 1, &replace(&[1]), secs(2));
    let h = r.holders(node(0), &track(1), 1, secs(2))[0].to_holder();
    assert_eq!(h.peer, contact(1));
}

#[test]
fn flood_is_rejected_and_recovers_as_the_bucket_refills() {
    let config = RegistryConfig {
        announces_per_minute: 6, // one per 10 s
        announce_burst: 3,
        ..RegistryConfig::default()
    };
    let mut r = registry(config);
    let msg = replace(&[1]);
    for _ in 0..3 {
        assert!(r.announce(node(1), &contact(1), &msg, secs(0)).is_ok());
    }
    let err = r.announce(node(1), &contact(1), &msg, secs(0)).unwrap_err();
    assert_eq!(
        err,
        AnnounceError::RateLimited {
            retry_after: Duration::from_secs(10)
        }
    );
    assert!(matches!(
        err.to_response(),
        shoal_protocol::wire::AnnounceResponse::Rejected { reason } if reason.contains("too often")
    ));
    // Another peer is not affected.
    assert!(r.announce(node(2), &contact(2), &msg, secs(0)).is_ok());
    // Rejected attempts do not push the limit further out.
    assert!(r.announce(node(1), &contact(1), &msg, secs(5)).is_err());
    assert!(r.announce(node(1), &contact(1), &msg, secs(10)).is_ok());
    assert!(r.announce(node(1), &contact(1), &msg, secs(10)).is_err());
    // After a long pause the whole burst is back, no more.
    for _ in 0..3 {
        assert!(r.announce(node(1), &contact(1), &msg, secs(100)).is_ok());
    }
    assert!(r.announce(node(1), &contact(1), &msg, secs(100)).is_err());
    let s = r.stats();
    assert_eq!((s.accepted, s.rejected, s.rate_limited), (8, 4, 4));
}

#[test]
fn per_peer_track_cap_rejects_the_whole_announce() {
    let config = RegistryConfig {
        max_tracks_per_peer: 3,
        ..relaxed()
    };
    let mut r = registry(config);
    ann(&mut r, 1, &replace(&[1, 2]), secs(0));
    let add = Announce {
        replace: false,
        ..replace(&[3, 4])
    };
    assert_eq!(
        r.announce(node(1), &contact(1), &add, secs(0)),
        Err(AnnounceError::TooManyTracks { count: 4, max: 3 })
    );
    assert_eq!(
        r.tracks_of(&node(1), secs(0)),
        sorted(&[1, 2]),
        "nothing recorded"
    );
    // Removing in the same message makes room.
    let swap = Announce {
        removed: vec![track(1)],
        ..add
    };
    assert!(r.announce(node(1), &contact(1), &swap, secs(0)).is_ok());
    assert_eq!(r.tracks_of(&node(1), secs(0)), sorted(&[2, 3, 4]));
}

#[test]
fn per_track_cap_keeps_the_freshest_holders() {
    let config = RegistryConfig {
        max_holders_per_track: 4,
        eviction_window: 4,
        ..relaxed()
    };
    let mut r = registry(config);
    for i in 1..=4 {
        ann(&mut r, i, &replace(&[1, 2]), secs(i));
    }
    // A fifth holder replaces the stalest (peer 1) on track 1 only.
    let a = ann(&mut r, 5, &replace(&[1]), secs(10));
    assert_eq!(a.evicted, 1);
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(10))),
        [5, 4, 3, 2].map(node)
    );
    assert_eq!(r.tracks_of(&node(1), secs(10)), sorted(&[2]));
    assert_eq!(r.stats().holdings, 8);
    assert_eq!(r.stats().evicted, 1);
    // The evicted peer is still listed elsewhere and can come back in by re-announcing.
    assert_eq!(r.holders(node(0), &track(2), 10, secs(10)).len(), 4);
    ann(&mut r, 1, &replace(&[1, 2]), secs(11));
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(11)))[0],
        node(1)
    );
    assert_eq!(r.holders(node(0), &track(1), 10, secs(11)).len(), 4);
}

#[test]
fn total_peer_and_holding_caps_reject_newcomers_until_room_frees() {
    let config = RegistryConfig {
        max_peers: 2,
        max_holdings: 3,
        ttl: Duration::from_secs(10),
        ..relaxed()
    };
    let mut r = registry(config);
    ann(&mut r, 1, &replace(&[1, 2]), secs(0));
    assert_eq!(
        r.announce(node(2), &contact(2), &replace(&[3, 4]), secs(1)),
        Err(AnnounceError::HoldingsFull { max: 3 })
    );
    ann(&mut r, 2, &replace(&[3]), secs(1));
    assert_eq!(
        r.announce(node(3), &contact(3), &replace(&[]), secs(2)),
        Err(AnnounceError::RegistryFull { max: 2 })
    );
    // Shrinking is always allowed, even when full.
    ann(&mut r, 1, &replace(&[1]), secs(2));
    ann(&mut r, 2, &replace(&[3]), secs(5));
    assert_eq!(
        r.announce(node(3), &contact(3), &replace(&[5, 6]), secs(11)),
        Err(AnnounceError::RegistryFull { max: 2 })
    );
    // Once peer 1 expires (purged by the announce itself), the newcomer fits.
    assert!(
        r.announce(node(3), &contact(3), &replace(&[5, 6]), secs(12))
            .is_ok()
    );
    assert_eq!(r.stats().peers, 2);
    assert_eq!(r.stats().holdings, 3);
}

#[test]
fn oversized_fields_are_rejected() {
    let mut r = registry(relaxed());
    let long = Announce {
        region: Some("x".repeat(65)),
        ..replace(&[1])
    };
    assert!(matches!(
        r.announce(node(1), &contact(1), &long, secs(0)),
        Err(AnnounceError::FieldTooLong {
            what: "region",
            len: 65,
            max: 64
        })
    ));
    let many = Announce {
        addrs: vec!["a".into(); 17],
        ..replace(&[1])
    };
    assert!(matches!(
        r.announce(node(1), &contact(1), &many, secs(0)),
        Err(AnnounceError::FieldTooLong { max: 16, .. })
    ));
    let bad_via = Announce {
        via: Some(PeerContact {
            peer_id: vec![0; 129],
            addrs: vec![],
        }),
        ..replace(&[1])
    };
    assert!(matches!(
        r.announce(node(1), &contact(1), &bad_via, secs(0)),
        Err(AnnounceError::FieldTooLong {
            what: "super-peer id",
            ..
        })
    ));
    assert_eq!(r.stats().peers, 0);
}

#[test]
fn forget_drops_a_peer_and_its_stale_timer_is_harmless() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(10),
        ..relaxed()
    };
    let mut r = registry(config);
    ann(&mut r, 1, &replace(&[1]), secs(0));
    assert!(r.forget(&node(1)));
    assert!(!r.forget(&node(1)));
    // Slot reused by a newcomer with a later expiry: the old heap entry must not remove it.
    ann(&mut r, 2, &replace(&[1]), secs(5));
    assert_eq!(r.purge_expired(secs(12), 10), 0);
    assert_eq!(
        nodes(&r.holders(node(0), &track(1), 10, secs(12))),
        [node(2)]
    );
    assert_eq!(r.purge_expired(secs(15), 10), 1);
}

/// Runs a fixed script of announces and lookups and returns everything observable.
fn script_trace(config: RegistryConfig) -> Vec<String> {
    let mut r = registry(config);
    let mut trace = Vec::new();
    for step in 0..400u64 {
        let now = Time::from_millis(step * 250);
        let peer = (step * 7919) % 7;
        let tracks: Vec<u64> = (0..(step % 5)).map(|k| (step + k * 13) % 11).collect();
        let msg = Announce {
            replace: step % 3 == 0,
            removed: vec![track(step % 11)],
            ..located(
                &tracks,
                (step % 4 != 0).then_some(step % 3),
                Some(["SE", "US"][(step % 2) as usize]),
            )
        };
        trace.push(format!(
            "{:?}",
            r.announce(node(peer), &contact(peer), &msg, now)
        ));
        let asker = (step * 31) % 9;
        let got = r.holders(node(asker), &track(step % 11), 5, now);
        trace.push(format!("{:?}", nodes(&got)));
        r.purge_expired(now, 3);
    }
    trace.push(format!("{:?}", r.stats()));
    trace
}

#[test]
fn same_inputs_give_the_same_outputs() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(20),
        announces_per_minute: 30,
        announce_burst: 2,
        max_holders_per_track: 3,
        ..RegistryConfig::default()
    };
    // Two registries have differently keyed hash maps; nothing observable may differ.
    let a = script_trace(config.clone());
    let b = script_trace(config);
    assert_eq!(a, b);
    assert!(
        a.iter().any(|l| l.contains("RateLimited")),
        "the script exercises the cap"
    );
    assert!(a.iter().any(|l| l.contains("Ok(")));
    assert!(
        a.iter().any(|l| l.contains("evicted: 1,")),
        "the script exercises eviction"
    );
}

/// The model of one peer: its holdings, last announce, super-peer and region.
type ModelPeer = (BTreeSet<u64>, Time, Option<u64>, Option<String>);

/// The model: a plain map of peers, scanned in full for every lookup.
#[derive(Debug, Default)]
struct Model {
    peers: BTreeMap<u64, ModelPeer>,
}

#[derive(Debug, Clone)]
enum Op {
    Announce {
        peer: u64,
        replace: bool,
        tracks: Vec<u64>,
        removed: Vec<u64>,
        via: Option<u64>,
        region: Option<u8>,
    },
    Lookup {
        asker: u64,
        track: u64,
        limit: usize,
    },
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..12u64, any::<bool>(), prop::collection::vec(0..8u64, 0..6),
              prop::collection::vec(0..8u64, 0..3), prop::option::of(0..3u64),
              prop::option::of(0..3u8))
            .prop_map(|(peer, replace, tracks, removed, via, region)| Op::Announce {
                peer, replace, tracks, removed, via, region
            }),
        3 => (0..14u64, 0..8u64, 0..10usize)
            .prop_map(|(asker, track, limit)| Op::Lookup { asker, track, limit }),
        1 => Just(Op::Purge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Lookups match a naive model (so never an expired entry, never the asker, never more than
    /// the limit, nearest classes first) through arbitrary announces, time steps and purges.
    #[test]
    fn lookups_match_a_naive_model(
        ops in prop::collection::vec((op(), 0..4_000u64), 1..80)
    ) {
        let ttl = Duration::from_secs(10);
        let mut r = registry(RegistryConfig { ttl, ..relaxed() });
        let mut model = Model::default();
        let mut now = Time::ZERO;
        for (op, step_ms) in ops {
            now = now + Duration::from_millis(step_ms);
            let live = |t: Time| t + ttl > now;
            match op {
                Op::Announce { peer, replace, tracks, removed, via, region } => {
                    let region = region.map(|g| format!("R{g}"));
                    let msg = Announce {
                        replace,
                        tracks: tracks.iter().map(|&t| track(t)).collect(),
                        removed: removed.iter().map(|&t| track(t)).collect(),
                        addrs: vec![],
                        via: via.map(superpeer),
                        region: region.clone(),
                    };
                    prop_assert!(r.announce(node(peer), &contact(peer), &msg, now).is_ok());
                    let e = model.peers.entry(peer).or_default();
                    if replace || !live(e.1) {
                        e.0.clear();
                    }
                    e.0.extend(tracks.iter().copied());
                    for t in &removed {
                        e.0.remove(t);
                    }
                    e.1 = now;
                    e.2 = via;
                    e.3 = region;
                }
                Op::Lookup { asker, track: t, limit } => {
                    let got = r.holders(node(asker), &track(t), limit, now);
                    prop_assert!(got.len() <= limit);
                    let me = model.peers.get(&asker).filter(|e| live(e.1));
                    let my_cluster = me.and_then(|e| e.2);
                    let my_region = me.and_then(|e| e.3.clone());
                    let mut want: Vec<(Proximity, std::cmp::Reverse<Time>, NodeId)> = model
                        .peers
                        .iter()
                        .filter(|(p, e)| **p != asker && live(e.1) && e.0.contains(&t))
                        .map(|(p, e)| {
                            let class = if e.2.is_some() && e.2 == my_cluster {
                                Proximity::SameCluster
                            } else if e.3.is_some() && e.3 == my_region {
                                Proximity::SameRegion
                            } else {
                                Proximity::Elsewhere
                            };
                            (class, std::cmp::Reverse(e.1), node(*p))
                        })
                        .collect();
                    want.sort();
                    want.truncate(limit);
                    let got: Vec<_> = got
                        .iter()
                        .map(|h| (h.proximity, std::cmp::Reverse(h.announced), h.node))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Purge => {
                    r.purge_expired(now, 5);
                }
            }
            // Internal accounting stays consistent with the model's live listings.
            let live_holdings: usize = model
                .peers
                .values()
                .filter(|e| live(e.1))
                .map(|e| e.0.len())
                .sum();
            prop_assert!(r.stats().holdings >= live_holdings);
        }
    }
}

#[derive(Debug, Clone)]
enum TightOp {
    Announce {
        peer: u64,
        replace: bool,
        tracks: Vec<u64>,
        removed: Vec<u64>,
        via: Option<u64>,
        region: Option<u8>,
    },
    Lookup {
        asker: u64,
        track: u64,
        limit: usize,
    },
    Purge(usize),
    Forget(u64),
}

fn tight_op() -> impl Strategy<Value = TightOp> {
    prop_oneof![
        4 => (0..10u64, any::<bool>(), prop::collection::vec(0..10u64, 0..7),
              prop::collection::vec(0..10u64, 0..3), prop::option::of(0..3u64),
              prop::option::of(0..3u8))
            .prop_map(|(peer, replace, tracks, removed, via, region)| TightOp::Announce {
                peer, replace, tracks, removed, via, region
            }),
        3 => (0..12u64, 0..10u64, 0..8usize)
            .prop_map(|(asker, track, limit)| TightOp::Lookup { asker, track, limit }),
        1 => (0..4usize).prop_map(TightOp::Purge),
        1 => (0..10u64).prop_map(TightOp::Forget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With every cap tight (rate, tracks per peer, holders per track, peers, listings), the
    /// indexes stay consistent and lookups still never return the asker, an expired entry, a
    /// duplicate, a peer not listed for the track, or more than asked.
    #[test]
    fn caps_keep_the_indexes_consistent(
        ops in prop::collection::vec((tight_op(), 0..3_000u64), 1..120)
    ) {
        let config = RegistryConfig {
            ttl: Duration::from_secs(8),
            announces_per_minute: 20,
            announce_burst: 2,
            max_tracks_per_peer: 4,
            max_holders_per_track: 3,
            max_peers: 6,
            max_holdings: 14,
            max_lookup_limit: 5,
            purge_per_announce: 1,
            eviction_window: 2,
            ..RegistryConfig::default()
        };
        let mut r = registry(config);
        let mut now = Time::ZERO;
        for (op, step_ms) in ops {
            now = now + Duration::from_millis(step_ms);
            match op {
                TightOp::Announce { peer, replace, tracks, removed, via, region } => {
                    let msg = Announce {
                        replace,
                        tracks: tracks.iter().map(|&t| track(t)).collect(),
                        removed: removed.iter().map(|&t| track(t)).collect(),
                        addrs: vec![],
                        via: via.map(superpeer),
                        region: region.map(|g| format!("R{g}")),
                    };
                    let before = r.tracks_of(&node(peer), now);
                    match r.announce(node(peer), &contact(peer), &msg, now) {
                        Ok(a) => {
                            prop_assert_eq!(a.listed, r.tracks_of(&node(peer), now).len());
                            for t in &removed {
                                prop_assert!(!r.tracks_of(&node(peer), now).contains(&track(*t)));
                            }
                        }
                        // A rejected announce changes nothing the peer is listed for.
                        Err(_) => prop_assert_eq!(before, r.tracks_of(&node(peer), now)),
                    }
                }
                TightOp::Lookup { asker, track: t, limit } => {
                    let got = r.holders(node(asker), &track(t), limit, now);
                    prop_assert!(got.len() <= limit.min(5));
                    let mut seen = BTreeSet::new();
                    for h in &got {
                        prop_assert!(h.node != node(asker));
                        prop_assert!(h.announced + Duration::from_secs(8) > now);
                        prop_assert!(r.is_registered(&h.node, now));
                        prop_assert!(r.tracks_of(&h.node, now).contains(&track(t)));
                        prop_assert!(seen.insert(h.node));
                    }
                    let key = |h: &HolderRef<'_>| (h.proximity, std::cmp::Reverse(h.announced), h.node);
                    let ordered = got.windows(2).all(|w| key(&w[0]) < key(&w[1]));
                    prop_assert!(ordered, "nearest first, strictly ordered");
                }
                TightOp::Purge(n) => {
                    r.purge_expired(now, n);
                }
                TightOp::Forget(p) => {
                    r.forget(&node(p));
                }
            }
            r.check_invariants();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregated cluster announces (`/shoal/cluster/1`).

/// Leaf `i` as a cluster describes it.
fn leaf(i: u64, region: Option<&str>) -> ClusterLeaf {
    ClusterLeaf {
        peer: PeerContact {
            peer_id: format!("leaf-{i}").into_bytes(),
            addrs: vec![],
        },
        region: region.map(str::to_owned),
    }
}

fn leaf_node(i: u64) -> NodeId {
    NodeId::from_key(format!("leaf-{i}").as_bytes())
}

/// A cluster announce: `tracks` as (track, positions in `leaves`).
fn cluster(replace: bool, leaves: Vec<ClusterLeaf>, tracks: &[(u64, &[u32])]) -> ClusterAnnounce {
    ClusterAnnounce {
        replace,
        tracks: tracks
            .iter()
            .map(|(t, ls)| ClusterTrack {
                track: track(*t),
                leaves: ls.to_vec(),
            })
            .collect(),
        leaves,
        addrs: vec![],
        region: None,
    }
}

fn sp_node(i: u64) -> NodeId {
    cluster_of(&superpeer(i))
}

fn announce_cluster(
    r: &mut PeerRegistry,
    sp: u64,
    msg: &ClusterAnnounce,
    now: Time,
) -> Result<ClusterAccepted, AnnounceError> {
    let res = r.announce_cluster(sp_node(sp), &superpeer(sp), msg, now);
    r.aggregates_check();
    res
}

#[test]
fn cluster_members_are_holders_reachable_through_their_super_peer_ranked_nearest_first() {
    let mut r = registry(relaxed());
    // Super-peer 9's cluster: leaf 1 (SE) and leaf 2 (US) hold track 7; leaf 3 holds track 8.
    let msg = cluster(
        true,
        vec![leaf(1, Some("SE")), leaf(2, Some("US")), leaf(3, None)],
        &[(7, &[0, 1]), (8, &[2])],
    );
    let a = announce_cluster(&mut r, 9, &msg, secs(5)).unwrap();
    assert_eq!((a.tracks, a.listings), (2, 3));
    // Peers announcing themselves: 4 in SE (fresher), 5 elsewhere (freshest).
    ann(&mut r, 4, &located(&[7], None, Some("SE")), secs(6));
    ann(&mut r, 5, &located(&[7], None, Some("DE")), secs(7));

    // A stranger sees everyone, freshest first; members carry their super-peer as `via`.
    let got = r.holders(node(100), &track(7), 10, secs(8));
    assert_eq!(nodes(&got), [node(5), node(4), leaf_node(1), leaf_node(2)]);
    let h = got[2].to_holder();
    assert_eq!(h.peer.peer_id, b"leaf-1".to_vec());
    assert_eq!(h.via, Some(superpeer(9)));
    assert_eq!(h.region.as_deref(), Some("SE"));

    // A peer in SE: same-region holders first (4, then leaf 1), then the rest.
    ann(&mut r, 6, &located(&[], None, Some("SE")), secs(8));
    let got = r.holders(node(6), &track(7), 10, secs(9));
    assert_eq!(nodes(&got), [node(4), leaf_node(1), node(5), leaf_node(2)]);
    assert_eq!(got[1].proximity, Proximity::SameRegion);

    // Leaf 3 (listed by 9, never announced itself) asking: its cluster first, never itself.
    let got = r.holders(leaf_node(3), &track(7), 10, secs(9));
    assert_eq!(nodes(&got), [leaf_node(1), leaf_node(2), node(5), node(4)]);
    assert_eq!(got[0].proximity, Proximity::SameCluster);
    assert!(r.holders(leaf_node(3), &track(8), 10, secs(9)).is_empty());

    // The super-peer asking on behalf of a leaf: its own members are its cluster.
    let got = r.holders(sp_node(9), &track(7), 2, secs(9));
    assert_eq!(nodes(&got), [leaf_node(1), leaf_node(2)]);
    // A peer that says it is behind super-peer 9 ranks 9's members as its cluster too.
    ann(&mut r, 10, &located(&[], Some(9), None), secs(9));
    let got = r.holders(node(10), &track(7), 1, secs(9));
    assert_eq!(nodes(&got), [leaf_node(1)]);
    assert_eq!(
        r.cluster_tracks(&sp_node(9), secs(9)),
        vec![
            (track(7), {
                let mut v = vec![leaf_node(1), leaf_node(2)];
                v.sort();
                v
            }),
            (track(8), vec![leaf_node(3)])
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn only_the_super_peer_itself_changes_its_cluster() {
    let mut r = registry(relaxed());
    announce_cluster(
        &mut r,
        9,
        &cluster(true, vec![leaf(1, None)], &[(7, &[0])]),
        secs(1),
    )
    .unwrap();
    // Super-peer 8 announcing "leaf 1 no longer holds 7" changes its own cluster only: the
    // message names no cluster, the sender's authenticated identity is the cluster.
    announce_cluster(
        &mut r,
        8,
        &cluster(true, vec![leaf(2, None)], &[(7, &[0])]),
        secs(2),
    )
    .unwrap();
    announce_cluster(&mut r, 8, &cluster(false, vec![], &[(7, &[])]), secs(3)).unwrap();
    let got = r.holders(node(100), &track(7), 10, secs(4));
    assert_eq!(nodes(&got), [leaf_node(1)]);
    assert_eq!(got[0].via, Some(&superpeer(9)));
    // A leaf announcing itself never touches a cluster's listing of it, and appears once.
    r.announce(leaf_node(1), &contact(1), &replace(&[7]), secs(5))
        .unwrap();
    let got = r.holders(node(100), &track(7), 10, secs(6));
    assert_eq!(nodes(&got), [leaf_node(1)]);
    assert_eq!(got[0].via, None, "its own (fresher) entry");
    r.announce(leaf_node(1), &contact(1), &replace(&[]), secs(7))
        .unwrap();
    assert_eq!(
        nodes(&r.holders(node(100), &track(7), 10, secs(8))),
        [leaf_node(1)]
    );
    // A super-peer cannot list itself as a leaf.
    let mut own = cluster(false, vec![leaf(1, None)], &[(9, &[0])]);
    own.leaves[0].peer.peer_id = superpeer(9).peer_id;
    assert!(matches!(
        announce_cluster(&mut r, 9, &own, secs(9)),
        Err(AnnounceError::Invalid(_))
    ));
}

#[test]
fn cluster_announces_are_checked_and_rejections_change_nothing() {
    let config = RegistryConfig {
        max_leaves_per_cluster_track: 2,
        max_tracks_per_cluster: 2,
        max_clusters: 1,
        ..relaxed()
    };
    let mut r = registry(config);
    // Incremental from a cluster the tracker does not know: a snapshot is needed first.
    let e = announce_cluster(
        &mut r,
        9,
        &cluster(false, vec![leaf(1, None)], &[(7, &[0])]),
        secs(1),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown cluster"), "{e}");
    announce_cluster(
        &mut r,
        9,
        &cluster(true, vec![leaf(1, None)], &[(7, &[0])]),
        secs(1),
    )
    .unwrap();
    let before = r.stats();
    for bad in [
        // A leaf position past the table.
        cluster(false, vec![leaf(1, None)], &[(8, &[1])]),
        // Too many leaves for one track.
        cluster(
            false,
            vec![leaf(1, None), leaf(2, None), leaf(3, None)],
            &[(8, &[0, 1, 2])],
        ),
        // Too many tracks for the cluster.
        cluster(false, vec![leaf(1, None)], &[(8, &[0]), (9, &[0])]),
        // An over-long region.
        cluster(false, vec![leaf(1, Some(&"x".repeat(100)))], &[(8, &[0])]),
    ] {
        assert!(
            announce_cluster(&mut r, 9, &bad, secs(2)).is_err(),
            "{bad:?}"
        );
    }
    let after = r.stats();
    assert_eq!(after.cluster_listings, before.cluster_listings);
    assert_eq!(after.cluster_rejected, before.cluster_rejected + 4);
    assert_eq!(nodes(&r.holders(node(100), &track(8), 10, secs(3))), []);
    // One cluster at most.
    assert!(matches!(
        announce_cluster(&mut r, 8, &cluster(true, vec![], &[]), secs(3)),
        Err(AnnounceError::ClustersFull { max: 1 })
    ));
}

#[test]
fn cluster_announces_are_rate_limited_per_super_peer() {
    let config = RegistryConfig {
        cluster_announces_per_minute: 60,
        cluster_announce_burst: 3,
        ..RegistryConfig::default()
    };
    let mut r = registry(config);
    let empty = cluster(true, vec![], &[]);
    for _ in 0..3 {
        announce_cluster(&mut r, 9, &empty, secs(1)).unwrap();
    }
    assert!(matches!(
        announce_cluster(&mut r, 9, &empty, secs(1)),
        Err(AnnounceError::RateLimited { .. })
    ));
    announce_cluster(&mut r, 8, &empty, secs(1)).unwrap();
    announce_cluster(&mut r, 9, &empty, secs(3)).unwrap();
}

#[test]
fn clusters_expire_unless_renewed_and_replace_starts_over() {
    let config = RegistryConfig {
        ttl: Duration::from_secs(100),
        ..relaxed()
    };
    let mut r = registry(config);
    announce_cluster(
        &mut r,
        9,
        &cluster(
            true,
            vec![leaf(1, None), leaf(2, None)],
            &[(7, &[0]), (8, &[1])],
        ),
        secs(0),
    )
    .unwrap();
    assert_eq!(r.next_deadline(), secs(100));
    // An empty incremental message renews the whole cluster.
    announce_cluster(&mut r, 9, &cluster(false, vec![], &[]), secs(90)).unwrap();
    assert_eq!(
        nodes(&r.holders(node(100), &track(7), 10, secs(150))),
        [leaf_node(1)]
    );
    // Per-track replace: track 7 now held by leaf 2 only; track 8 cleared.
    announce_cluster(
        &mut r,
        9,
        &cluster(false, vec![leaf(2, None)], &[(7, &[0]), (8, &[])]),
        secs(150),
    )
    .unwrap();
    assert_eq!(
        nodes(&r.holders(node(100), &track(7), 10, secs(151))),
        [leaf_node(2)]
    );
    assert!(r.holders(node(100), &track(8), 10, secs(151)).is_empty());
    assert_eq!(r.stats().cluster_listings, 1);
    // A snapshot (replace) drops what it does not list.
    announce_cluster(
        &mut r,
        9,
        &cluster(true, vec![leaf(3, None)], &[(9, &[0])]),
        secs(160),
    )
    .unwrap();
    assert!(r.holders(node(100), &track(7), 10, secs(161)).is_empty());
    assert_eq!(
        nodes(&r.holders(node(100), &track(9), 10, secs(161))),
        [leaf_node(3)]
    );
    // Not renewed: gone at the TTL, before and after the purge.
    assert!(r.holders(node(100), &track(9), 10, secs(260)).is_empty());
    assert_eq!(r.purge_expired(secs(260), 10), 1);
    r.aggregates_check();
    let s = r.stats();
    assert_eq!(
        (s.clusters, s.cluster_listings, s.clusters_expired),
        (0, 0, 1)
    );
    // Forgetting a super-peer drops its cluster.
    announce_cluster(
        &mut r,
        9,
        &cluster(true, vec![leaf(3, None)], &[(9, &[0])]),
        secs(300),
    )
    .unwrap();
    assert!(r.forget(&sp_node(9)));
    assert!(r.holders(node(100), &track(9), 10, secs(301)).is_empty());
}

#[test]
fn cluster_announce_through_the_core_contract() {
    use shoal_protocol::sansio::Core as _;
    let mut core = TrackerCore::new(relaxed()).unwrap();
    let sp = sp_node(9);
    core.handle_input(
        secs(1),
        shoal_protocol::sansio::Input::Message {
            from: sp,
            msg: RegistryMessage::ClusterAnnounce {
                announce: cluster(true, vec![leaf(1, None)], &[(7, &[0])]),
                contact: superpeer(9),
            },
        },
    );
    match core.poll_output() {
        shoal_protocol::sansio::Output::Send {
            to,
            msg:
                RegistryMessage::AnnounceResponse(shoal_protocol::wire::AnnounceResponse::Accepted {
                    ttl_secs,
                }),
        } => {
            assert_eq!(to, sp);
            assert_eq!(ttl_secs, 600);
        }
        other => panic!("{other:?}"),
    }
    let got = core.registry().holders(node(1), &track(7), 5, secs(2));
    assert_eq!(nodes(&got), [leaf_node(1)]);
}

proptest! {
    /// Random cluster announces from three super-peers: the indexes stay consistent and every
    /// lookup returns exactly the live leaves the latest messages listed.
    #[test]
    fn clusters_match_a_model(ops in prop::collection::vec(
        (0u64..3, any::<bool>(), prop::collection::vec((0u64..6, prop::collection::vec(0u32..4, 0..3)), 0..4), 0u64..40),
        1..40,
    )) {
        let config = RegistryConfig { ttl: Duration::from_secs(100), ..relaxed() };
        let mut r = registry(config);
        // (cluster) → (announced, track → leaves)
        let mut model: BTreeMap<u64, (u64, BTreeMap<u64, BTreeSet<u64>>)> = BTreeMap::new();
        let mut now = 0;
        for (sp, replace, tracks, advance) in ops {
            now += advance;
            let leaves: Vec<ClusterLeaf> = (0..4).map(|i| leaf(sp * 10 + i, None)).collect();
            let list: Vec<(u64, Vec<u32>)> = tracks.clone();
            let msg = ClusterAnnounce {
                replace,
                tracks: list.iter().map(|(t, ls)| ClusterTrack { track: track(*t), leaves: ls.clone() }).collect(),
                leaves,
                addrs: vec![],
                region: None,
            };
            let live = model.get(&sp).is_some_and(|(at, _)| at + 100 > now);
            let res = announce_cluster(&mut r, sp, &msg, secs(now));
            if !replace && !live {
                prop_assert!(res.is_err());
                continue;
            }
            prop_assert!(res.is_ok(), "{:?}", res);
            let entry = model.entry(sp).or_default();
            if replace || !live {
                entry.1.clear();
            }
            entry.0 = now;
            for (t, ls) in list {
                let set: BTreeSet<u64> = ls.iter().map(|&i| sp * 10 + u64::from(i)).collect();
                if set.is_empty() { entry.1.remove(&t); } else { entry.1.insert(t, set); }
            }
            for t in 0..6 {
                let mut want: Vec<NodeId> = model.values()
                    .filter(|(at, _)| at + 100 > now)
                    .flat_map(|(_, m)| m.get(&t).into_iter().flatten().map(|&l| leaf_node(l)))
                    .collect();
                want.sort();
                let mut got = nodes(&r.holders(node(999), &track(t), 100, secs(now)));
                got.sort();
                prop_assert_eq!(got, want);
            }
        }
    }
}

#[test]
fn a_member_without_a_region_ranks_in_its_super_peers_region() {
    let mut r = registry(relaxed());
    let mut msg = cluster(true, vec![leaf(1, None)], &[(7, &[0])]);
    msg.region = Some("SE".into());
    announce_cluster(&mut r, 9, &msg, secs(1)).unwrap();
    ann(&mut r, 2, &located(&[7], None, None), secs(2)); // fresher, region unknown
    ann(&mut r, 3, &located(&[], None, Some("SE")), secs(3));
    let got = r.holders(node(3), &track(7), 10, secs(4));
    assert_eq!(nodes(&got), [leaf_node(1), node(2)]);
    assert_eq!(got[0].proximity, Proximity::SameRegion);
    // The wire form carries the leaf's own (absent) region, not the super-peer's.
    assert_eq!(got[0].to_holder().region, None);
}
