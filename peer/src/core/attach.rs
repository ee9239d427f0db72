//! Which super-peer a leaf attaches to (holds a relay reservation with, announces as its
//! cluster). Sans-IO: the driver reports round-trip times, reservations, losses and what AutoNAT
//! says about our reachability, and asks where a reservation should be.
//!
//! - A publicly reachable peer attaches nowhere: others can dial it directly.
//! - Otherwise it attaches to the super-peer with the lowest measured RTT, after waiting
//!   `measure_ms` for measurements at start-up, and stays there while it works (no flapping when
//!   another one's RTT dips).
//! - A super-peer whose reservation or connection was lost is avoided for `avoid_ms`; the next
//!   best one takes over at once.

use std::time::Duration;

use shoal_protocol::{NodeId, Time};

/// Timing of attachment decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachConfig {
    /// At start-up, RTTs are gathered this long before the first choice (default 500 ms).
    pub measure_ms: u64,
    /// A super-peer that was lost is not chosen again for this long (default 30 s).
    pub avoid_ms: u64,
}

impl Default for AttachConfig {
    fn default() -> Self {
        Self {
            measure_ms: 500,
            avoid_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    node: NodeId,
    rtt: Option<Duration>,
    avoid_until: Time,
}

/// The attachment state of one leaf.
#[derive(Debug, Clone)]
pub struct Attacher {
    config: AttachConfig,
    candidates: Vec<Candidate>,
    current: Option<NodeId>,
    /// A reservation requested and not yet answered: kept until it succeeds or fails, since
    /// switching mid-request is what libp2p's relay client cannot take.
    requested: Option<NodeId>,
    public: bool,
    decide_from: Time,
}

impl Attacher {
    /// A leaf knowing `superpeers` (in configuration order), started at `now`.
    pub fn new(config: AttachConfig, superpeers: Vec<NodeId>, now: Time) -> Self {
        let decide_from = now + Duration::from_millis(config.measure_ms);
        Self {
            config,
            candidates: superpeers
                .into_iter()
                .map(|node| Candidate {
                    node,
                    rtt: None,
                    avoid_until: Time::ZERO,
                })
                .collect(),
            current: None,
            requested: None,
            public: false,
            decide_from,
        }
    }

    /// A round-trip time measured to `node` (the latest sample counts).
    pub fn rtt(&mut self, node: NodeId, rtt: Duration) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.node == node) {
            c.rtt = Some(rtt);
        }
    }

    /// A reservation with `node` was requested (the driver acted on [`Attacher::choice`]).
    pub fn requested(&mut self, node: NodeId) {
        self.requested = Some(node);
    }

    /// The reservation with `node` was accepted: we are its leaf.
    pub fn attached(&mut self, node: NodeId) {
        if self.candidates.iter().any(|c| c.node == node) {
            self.current = Some(node);
            self.requested = None;
        }
    }

    /// The reservation or connection with `node` was lost (or refused).
    pub fn lost(&mut self, now: Time, node: NodeId) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.node == node) {
            c.avoid_until = now + Duration::from_millis(self.config.avoid_ms);
            c.rtt = None;
        }
        if self.current == Some(node) {
            self.current = None;
        }
        if self.requested == Some(node) {
            self.requested = None;
        }
    }

    /// AutoNAT's verdict: publicly reachable or not.
    pub fn set_public(&mut self, public: bool) {
        self.public = public;
        if public {
            self.current = None;
        }
    }

    /// The super-peer we are attached to.
    pub fn current(&self) -> Option<NodeId> {
        self.current
    }

    /// Where the leaf should hold its reservation now (`None`: nowhere).
    pub fn choice(&self, now: Time) -> Option<NodeId> {
        if self.public || self.candidates.is_empty() {
            return None;
        }
        if let Some(c) = self.current.or(self.requested) {
            return Some(c);
        }
        let usable = self.candidates.iter().filter(|c| c.avoid_until <= now);
        let measured = usable
            .clone()
            .filter_map(|c| c.rtt.map(|r| (r, c.node)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, n)| n);
        if measured.is_some() {
            return measured;
        }
        // Nothing measured: after the measuring time, the first configured usable one.
        if now >= self.decide_from {
            return self
                .candidates
                .iter()
                .find(|c| c.avoid_until <= now)
                .map(|c| c.node);
        }
        None
    }

    /// True while an attachment is still being decided or set up: no reservation yet, and
    /// either one is wanted or RTTs are still being measured. Lookups and announces wait for
    /// it (under a second at start) so they go to the super-peer with the right addresses.
    pub fn settling(&self, now: Time) -> bool {
        self.current.is_none()
            && (self.choice(now).is_some()
                || (!self.public
                    && now < self.decide_from
                    && self.candidates.iter().any(|c| c.avoid_until <= now)))
    }

    /// When [`Attacher::choice`] may change by itself (the end of the measuring time or of an
    /// avoidance), [`Time::NEVER`] if never.
    pub fn next_wake(&self, now: Time) -> Time {
        let mut wake = Time::NEVER;
        if self.decide_from > now {
            wake = self.decide_from;
        }
        for c in &self.candidates {
            if c.avoid_until > now && c.avoid_until < wake {
                wake = c.avoid_until;
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Time {
        Time::from_millis(v)
    }

    #[test]
    fn nearest_after_measuring_and_sticky_until_lost() {
        let (a, b) = (NodeId::from_index(1), NodeId::from_index(2));
        let mut at = Attacher::new(AttachConfig::default(), vec![a, b], ms(0));
        assert_eq!(at.choice(ms(10)), None, "still measuring, nothing known");
        assert_eq!(at.next_wake(ms(10)), ms(500));
        at.rtt(b, Duration::from_millis(5));
        at.rtt(a, Duration::from_millis(40));
        assert_eq!(at.choice(ms(20)), Some(b), "a measurement decides at once");
        at.requested(b);
        at.rtt(a, Duration::from_millis(2));
        assert_eq!(
            at.choice(ms(25)),
            Some(b),
            "no switch while the request is pending"
        );
        at.attached(b);
        at.rtt(a, Duration::from_millis(1));
        assert_eq!(at.choice(ms(30)), Some(b), "no flapping while b works");
        at.lost(ms(1_000), b);
        assert_eq!(at.choice(ms(1_000)), Some(a), "the next best takes over");
        at.attached(a);
        at.lost(ms(2_000), a);
        assert_eq!(at.choice(ms(2_000)), None, "both avoided");
        assert_eq!(at.next_wake(ms(2_000)), ms(31_000));
        assert_eq!(
            at.choice(ms(31_000)),
            Some(b),
            "b usable again (unmeasured: first usable)"
        );
    }

    #[test]
    fn public_peers_attach_nowhere_and_unmeasured_fall_back_to_order() {
        let (a, b) = (NodeId::from_index(1), NodeId::from_index(2));
        let mut at = Attacher::new(AttachConfig::default(), vec![a, b], ms(0));
        assert_eq!(
            at.choice(ms(600)),
            Some(a),
            "configuration order without RTTs"
        );
        at.attached(a);
        at.set_public(true);
        assert_eq!(at.choice(ms(700)), None);
        assert_eq!(at.current(), None);
        at.set_public(false);
        assert_eq!(at.choice(ms(800)), Some(a));
    }

    #[test]
    fn settling_from_start_until_attached_or_nowhere_to_go() {
        let (a, b) = (NodeId::from_index(1), NodeId::from_index(2));
        let mut at = Attacher::new(AttachConfig::default(), vec![a, b], ms(0));
        assert!(at.settling(ms(10)), "measuring: lookups wait");
        at.rtt(a, Duration::from_millis(5));
        assert!(at.settling(ms(20)), "reservation wanted");
        at.requested(a);
        at.attached(a);
        assert!(!at.settling(ms(30)), "attached");
        at.lost(ms(40), a);
        assert!(at.settling(ms(40)), "b takes over");
        at.lost(ms(50), b);
        assert!(!at.settling(ms(50)), "both avoided: ask the tracker");
        let none = Attacher::new(AttachConfig::default(), Vec::new(), ms(0));
        assert!(!none.settling(ms(0)), "no super-peers configured");
        let mut public = Attacher::new(AttachConfig::default(), vec![a], ms(0));
        public.set_public(true);
        assert!(!public.settling(ms(0)), "publicly reachable");
    }
}
