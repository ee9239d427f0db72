//! Peer registry throughput on one core: lookups/s and announces/s with 100,000 registered
//! peers, each listing 50 tracks drawn from a Zipf(1.0) catalog of 100,000 tracks, spread over
//! 1,000 super-peer clusters and 20 regions. Run with
//! `cargo bench -p shoal-tracker --bench registry`.
//!
//! Time is virtual and advances the way a real tracker sees it: every peer renews once per
//! 5 minutes (well within the default 10-minute TTL), so the benchmark measures steady state,
//! not expiry storms or the rate limiter.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal_protocol::ids::{NodeId, TrackId};
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{Announce, PeerContact};
use shoal_tracker::core::{PeerRegistry, RegistryConfig};

const PEERS: u64 = 100_000;
const CATALOG: usize = 100_000;
const TRACKS_PER_PEER: usize = 50;
const CLUSTERS: u64 = 1_000;
const REGIONS: u64 = 20;
const LOOKUP_LIMIT: usize = 20;
/// Each peer renews every 5 minutes: 100,000 peers → one announce every 3 ms.
const RENEW_EVERY: Duration = Duration::from_secs(300);

/// splitmix64: a tiny deterministic generator, so every run measures the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

struct World {
    registry: PeerRegistry,
    tracks: Vec<TrackId>,
    holdings: Vec<Vec<TrackId>>,
    contacts: Vec<PeerContact>,
    zipf: Zipf,
    rng: Rng,
    now: Time,
    next_peer: u64,
    step: Duration,
}

fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn announce_for(peer: u64, replace: bool, tracks: Vec<TrackId>) -> Announce {
    let via = (peer % 10 < 7).then(|| PeerContact {
        peer_id: format!("superpeer-{}", peer % CLUSTERS).into_bytes(),
        addrs: vec![format!("/ip4/198.51.100.{}/udp/7701/quic-v1", peer % 250)],
    });
    Announce {
        replace,
        tracks,
        removed: Vec::new(),
        addrs: Vec::new(),
        via,
        region: Some(format!("R{}", peer % REGIONS)),
    }
}

impl World {
    fn build() -> Self {
        let rss_before = rss_bytes();
        let registry = PeerRegistry::new(RegistryConfig::default()).expect("default config");
        let tracks: Vec<TrackId> = (0..CATALOG as u64)
            .map(|i| TrackId::of(&i.to_le_bytes()))
            .collect();
        let mut world = World {
            registry,
            tracks,
            holdings: Vec::new(),
            contacts: (0..PEERS)
                .map(|i| PeerContact {
                    peer_id: NodeId::from_index(i).as_bytes()[..8].to_vec(),
                    addrs: vec![format!(
                        "/ip4/10.{}.{}.{}/udp/7701/quic-v1",
                        i >> 16,
                        (i >> 8) & 255,
                        i & 255
                    )],
                })
                .collect(),
            zipf: Zipf::new(CATALOG, 1.0),
            rng: Rng(0x5eed),
            now: Time::ZERO,
            next_peer: 0,
            step: RENEW_EVERY / u32::try_from(PEERS).expect("fits"),
        };
        let started = std::time::Instant::now();
        for peer in 0..PEERS {
            let mut set = HashSet::with_capacity(TRACKS_PER_PEER);
            while set.len() < TRACKS_PER_PEER {
                set.insert(world.zipf.sample(&mut world.rng));
            }
            let mut held: Vec<TrackId> = set.into_iter().map(|i| world.tracks[i]).collect();
            held.sort_unstable();
            world.holdings.push(held.clone());
            world.announce(peer, true, held);
        }
        let stats = world.registry.stats();
        eprintln!(
            "setup: {} peers, {} tracks, {} listings ({} evicted at the per-track cap) in {:.2?}; \
             registry heap estimate {:.1} MiB, process RSS growth {}",
            stats.peers,
            stats.tracks,
            stats.holdings,
            stats.evicted,
            started.elapsed(),
            world.registry.heap_bytes() as f64 / (1 << 20) as f64,
            match (rss_before, rss_bytes()) {
                (Some(a), Some(b)) =>
                    format!("{:.1} MiB", b.saturating_sub(a) as f64 / (1 << 20) as f64),
                _ => "n/a".into(),
            }
        );
        world
    }

    fn announce(&mut self, peer: u64, replace: bool, tracks: Vec<TrackId>) {
        let msg = announce_for(peer, replace, tracks);
        let result = self.registry.announce(
            NodeId::from_index(peer),
            &self.contacts[peer as usize],
            &msg,
            self.now,
        );
        assert!(result.is_ok(), "steady-state announce rejected: {result:?}");
        self.now = self.now + self.step;
    }

    /// The next peer in renewal order swaps one cached track for another.
    fn churn_one(&mut self) -> (u64, TrackId, TrackId) {
        let peer = self.next_peer;
        self.next_peer = (self.next_peer + 1) % PEERS;
        let held = &mut self.holdings[peer as usize];
        let new = loop {
            let t = self.tracks[self.zipf.sample(&mut self.rng)];
            if !held.contains(&t) {
                break t;
            }
        };
        let pos = self.rng.below(TRACKS_PER_PEER as u64) as usize;
        let old = std::mem::replace(&mut held[pos], new);
        (peer, old, new)
    }
}

fn bench(c: &mut Criterion) {
    let mut world = World::build();
    let mut group = c.benchmark_group("registry_100k_peers");
    group.throughput(Throughput::Elements(1));

    // Lookups at a fixed instant (they do not change the registry).
    let now = world.now;
    let mut rng = Rng(1);
    let zipf = Zipf::new(CATALOG, 1.0);
    group.bench_function("lookup_zipf_track_limit20", |b| {
        b.iter(|| {
            let asker = NodeId::from_index(rng.below(PEERS));
            let track = world.tracks[zipf.sample(&mut rng)];
            black_box(
                world
                    .registry
                    .holders(asker, &track, LOOKUP_LIMIT, now)
                    .len(),
            )
        })
    });
    group.bench_function("lookup_uniform_track_limit20", |b| {
        b.iter(|| {
            let asker = NodeId::from_index(rng.below(PEERS));
            let track = world.tracks[rng.below(CATALOG as u64) as usize];
            black_box(
                world
                    .registry
                    .holders(asker, &track, LOOKUP_LIMIT, now)
                    .len(),
            )
        })
    });

    // A full renewal: the whole 50-track set, one track changed since last time.
    group.bench_function("announce_replace_50_tracks", |b| {
        b.iter(|| {
            let (peer, _, _) = world.churn_one();
            let held = world.holdings[peer as usize].clone();
            world.announce(peer, true, held);
        })
    });
    // An incremental cache change: add one track, remove one.
    group.bench_function("announce_add1_remove1", |b| {
        b.iter(|| {
            let (peer, old, new) = world.churn_one();
            let mut msg = announce_for(peer, false, vec![new]);
            msg.removed.push(old);
            let result = world.registry.announce(
                NodeId::from_index(peer),
                &world.contacts[peer as usize],
                &msg,
                world.now,
            );
            assert!(result.is_ok(), "steady-state announce rejected: {result:?}");
            world.now = world.now + world.step;
        })
    });
    group.finish();

    let stats = world.registry.stats();
    eprintln!(
        "after: {} peers, {} listings, {} expired, {} rejected, {} evicted; heap estimate {:.1} MiB",
        stats.peers,
        stats.holdings,
        stats.expired,
        stats.rejected,
        stats.evicted,
        world.registry.heap_bytes() as f64 / (1 << 20) as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
