//! Owns the link model: per-node access latency and bandwidth, region RTTs, jitter, loss
//! (as retransmission delay), NAT reachability (direct, hole-punched or relayed through a
//! super-peer) and the byte counters per node. Pure arithmetic on per-node state: no events.

use crate::rng::{Rng, unit_of};
use crate::rtt::RegionMatrix;

/// NAT type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Publicly reachable (super-peers, origins, trackers, open peers).
    Open,
    /// Endpoint-independent mapping: hole punching can succeed.
    Cone,
    /// Endpoint-dependent mapping: hole punching fails.
    Symmetric,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A listener.
    Peer,
    /// A super-peer.
    SuperPeer,
    /// An origin server.
    Origin,
    /// The tracker.
    Tracker,
}

/// One node's link state (kept small: it exists for every simulated peer).
#[derive(Debug, Clone)]
pub struct Link {
    /// Role of the node.
    pub role: Role,
    /// Region index into the [`RegionMatrix`].
    pub region: u16,
    /// NAT type.
    pub nat: Nat,
    /// Reachable now (online, not crashed).
    pub up: bool,
    /// One-way access latency, µs.
    pub access_us: u32,
    /// Uplink, bytes per second.
    pub up_bps: f32,
    /// Downlink, bytes per second.
    pub down_bps: f32,
    /// The super-peer relaying for it (`u32::MAX`: none).
    pub relay: u32,
    up_free_at: u64,
    down_free_at: u64,
    /// Bytes sent (as the origin of a message).
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes relayed for others (super-peers).
    pub relayed_bytes: u64,
}

impl Link {
    /// A node's link with the given parameters, idle.
    pub fn new(
        role: Role,
        region: u16,
        nat: Nat,
        access_us: u32,
        up_bps: f32,
        down_bps: f32,
    ) -> Self {
        Self {
            role,
            region,
            nat,
            up: true,
            access_us,
            up_bps,
            down_bps,
            relay: u32::MAX,
            up_free_at: 0,
            down_free_at: 0,
            tx_bytes: 0,
            rx_bytes: 0,
            relayed_bytes: 0,
        }
    }
}

/// How two nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A direct connection (one side public, or a successful hole punch).
    Direct,
    /// Through this super-peer's relay.
    Relay(u32),
    /// No way (the target is down, or it needs a relay and has none).
    Unreachable,
}

/// Shared link parameters of a run.
#[derive(Debug, Clone)]
pub struct NetModel {
    /// Region RTTs.
    pub regions: RegionMatrix,
    /// Mean exponential jitter per message, µs.
    pub jitter_us: f64,
    /// Per-message loss probability (costs a retransmission delay).
    pub loss: f64,
    /// Hole-punch success between two cone peers.
    pub hole_punch_success: f64,
    /// Seed for per-pair outcomes.
    pub seed: u64,
    /// Dial timeout, µs.
    pub dial_timeout_us: u64,
}

/// Messages smaller than this do not wait behind bulk transfers (they interleave).
pub const SMALL_MESSAGE: u32 = 1500;

impl NetModel {
    /// Base RTT between two nodes without jitter, µs.
    pub fn rtt_us(&self, a: &Link, b: &Link) -> u64 {
        u64::from(self.regions.rtt_us(a.region, b.region))
            + 2 * u64::from(a.access_us)
            + 2 * u64::from(b.access_us)
    }

    /// How `a` (index `ia`) reaches `b` (index `ib`).
    pub fn path(&self, links: &[Link], ia: u32, ib: u32) -> Path {
        let (a, b) = (&links[ia as usize], &links[ib as usize]);
        if !b.up || !a.up {
            return Path::Unreachable;
        }
        // Relayed through the super-peer of the higher-indexed end (fixed per pair, so both
        // directions use one circuit).
        let owner = if ia > ib { a } else { b };
        let relay = owner.relay;
        let relayed = relay != u32::MAX && links[relay as usize].up;
        let direct = match (a.nat, b.nat) {
            (Nat::Open, _) | (_, Nat::Open) => true,
            // DCUtR: the two ends coordinate the punch over a relayed connection first, so
            // without a live relay there is nothing to punch through.
            (Nat::Cone, Nat::Cone) if relayed => {
                let (lo, hi) = (ia.min(ib), ia.max(ib));
                let key = self.seed
                    ^ (u64::from(lo) << 32 | u64::from(hi)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                unit_of(key) < self.hole_punch_success
            }
            _ => false,
        };
        if direct {
            Path::Direct
        } else if relayed {
            Path::Relay(relay)
        } else {
            Path::Unreachable
        }
    }

    /// One hop: `len` bytes leave `from` at `now` (µs) towards `to`; returns arrival time.
    /// Bulk messages queue on the sender's uplink and the receiver's downlink (FIFO at message
    /// granularity, i.e. round robin among concurrent flows); the last byte arrives after
    /// both serialisations and the one-way delay.
    fn hop(
        &self,
        links: &mut [Link],
        from: u32,
        to: u32,
        len: u32,
        now: u64,
        rng: &mut Rng,
    ) -> u64 {
        let (base_rtt, jitter) = {
            let (a, b) = (&links[from as usize], &links[to as usize]);
            (
                self.rtt_us(a, b),
                if self.jitter_us > 0.0 {
                    rng.exp(self.jitter_us)
                } else {
                    0.0
                },
            )
        };
        let mut one_way = base_rtt / 2 + jitter as u64;
        if self.loss > 0.0 && rng.chance(self.loss) {
            // One probe timeout: RTT + 4×jitter + 25 ms max_ack_delay-ish (RFC 9002 shape).
            one_way += base_rtt + (4.0 * self.jitter_us) as u64 + 25_000;
        }
        let bytes = f64::from(len);
        let a = &mut links[from as usize];
        let up_time = (bytes * 1e6 / f64::from(a.up_bps)) as u64;
        let start = if len >= SMALL_MESSAGE {
            now.max(a.up_free_at)
        } else {
            now
        };
        let up_end = start + up_time;
        if len >= SMALL_MESSAGE {
            a.up_free_at = up_end;
        }
        let b = &mut links[to as usize];
        let down_time = (bytes * 1e6 / f64::from(b.down_bps)) as u64;
        let arrive_first = start + one_way;
        let down_start = if len >= SMALL_MESSAGE {
            arrive_first.max(b.down_free_at)
        } else {
            arrive_first
        };
        let done = (down_start + down_time).max(up_end + one_way);
        if len >= SMALL_MESSAGE {
            b.down_free_at = done;
        }
        done
    }

    /// Sends `len` bytes from `from` to `to` at `now`; `Some(arrival µs)` or `None` when
    /// unreachable. Counts bytes on both ends and on the relay.
    pub fn send(
        &self,
        links: &mut [Link],
        from: u32,
        to: u32,
        len: u32,
        now: u64,
        rng: &mut Rng,
    ) -> Option<u64> {
        let at = match self.path(links, from, to) {
            Path::Unreachable => return None,
            Path::Direct => self.hop(links, from, to, len, now, rng),
            Path::Relay(r) => {
                let mid = self.hop(links, from, r, len, now, rng);
                links[r as usize].relayed_bytes += u64::from(len);
                self.hop(links, r, to, len, mid, rng)
            }
        };
        links[from as usize].tx_bytes += u64::from(len);
        links[to as usize].rx_bytes += u64::from(len);
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn model() -> NetModel {
        NetModel {
            regions: RegionMatrix::for_scenario(&Scenario::default()),
            jitter_us: 0.0,
            loss: 0.0,
            hole_punch_success: 0.5,
            seed: 9,
            dial_timeout_us: 2_000_000,
        }
    }

    fn peer(nat: Nat) -> Link {
        // 8 Mbit/s both ways = 1 MB/s; 1 ms access.
        Link::new(Role::Peer, 0, nat, 1000, 1e6, 1e6)
    }

    #[test]
    fn latency_and_serialisation_add_up() {
        let m = model();
        let mut links = vec![peer(Nat::Open), peer(Nat::Open)];
        let mut rng = Rng::new(1, 0);
        // Same region: 10 ms backbone + 4 × 1 ms access = 14 ms RTT → 7 ms one way.
        let small = m
            .send(&mut links, 0, 1, 100, 0, &mut rng)
            .expect("reachable");
        assert_eq!(small, 7_000 + 100);
        // 100 kB at 1 MB/s: 100 ms serialisation + 7 ms.
        let big = m
            .send(&mut links, 0, 1, 100_000, 0, &mut rng)
            .expect("reachable");
        assert_eq!(big, 107_000);
        // A second bulk message queues behind the first on the uplink.
        let big2 = m
            .send(&mut links, 0, 1, 100_000, 0, &mut rng)
            .expect("reachable");
        assert_eq!(big2, 207_000);
        assert_eq!(links[0].tx_bytes, 200_100);
    }

    #[test]
    fn nat_paths() {
        let m = model();
        let mut links = vec![
            Link::new(Role::SuperPeer, 0, Nat::Open, 100, 1e8, 1e8),
            peer(Nat::Symmetric),
            peer(Nat::Symmetric),
            peer(Nat::Open),
        ];
        links[1].relay = 0;
        links[2].relay = 0;
        assert_eq!(m.path(&links, 1, 3), Path::Direct);
        assert_eq!(m.path(&links, 1, 2), Path::Relay(0));
        links[0].up = false;
        assert_eq!(m.path(&links, 1, 2), Path::Unreachable);
        links[3].up = false;
        assert_eq!(m.path(&links, 1, 3), Path::Unreachable);
    }

    #[test]
    fn hole_punch_rate_matches_parameter() {
        let m = model();
        let mut links = vec![Link::new(Role::SuperPeer, 0, Nat::Open, 100, 1e8, 1e8)];
        links.extend((0..400).map(|_| peer(Nat::Cone)));
        for l in &mut links[1..] {
            l.relay = 0;
        }
        let mut direct = 0;
        let mut total = 0;
        for a in 1..=400u32 {
            for b in (a + 1)..=400 {
                total += 1;
                match m.path(&links, a, b) {
                    Path::Direct => direct += 1,
                    p => assert_eq!(p, Path::Relay(0), "a failed punch stays relayed"),
                }
                assert_eq!(m.path(&links, a, b), m.path(&links, b, a));
            }
        }
        let rate = f64::from(direct) / f64::from(total);
        assert!((rate - 0.5).abs() < 0.02, "{rate}");
    }

    #[test]
    fn no_hole_punch_without_a_relay_to_coordinate_it() {
        // DCUtR punches over a relayed connection: two cone peers with no live super-peer
        // cannot reach each other at all, whatever `hole_punch_success` says.
        let m = NetModel {
            hole_punch_success: 1.0,
            ..model()
        };
        let mut links = vec![
            Link::new(Role::SuperPeer, 0, Nat::Open, 100, 1e8, 1e8),
            peer(Nat::Cone),
            peer(Nat::Cone),
        ];
        assert_eq!(m.path(&links, 1, 2), Path::Unreachable, "no relay at all");
        links[1].relay = 0;
        links[2].relay = 0;
        assert_eq!(m.path(&links, 1, 2), Path::Direct);
        links[0].up = false;
        assert_eq!(m.path(&links, 1, 2), Path::Unreachable, "relay down");
    }
}
