//! Owns the discrete-event core of the simulator: the event queue ordered by (virtual time,
//! sequence number) — buckets for the next few seconds in front of a 4-ary heap for later
//! events —, the message slab that keeps queue entries small, and the trace hash that
//! proves a run deterministic (BLAKE3 over every dispatched event).

use shoal_protocol::Time;

/// What happens at a point in virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ev {
    /// A message (in slab slot `slot`) from `from` arrives at `to`.
    Deliver {
        /// Receiver.
        to: u32,
        /// Sender.
        from: u32,
        /// Slab slot of the message.
        slot: u32,
    },
    /// The timer of `node` with generation `generation` fires (stale when the core moved it).
    Timer {
        /// The node.
        node: u32,
        /// Timer generation when it was set.
        generation: u32,
    },
    /// `to` learns that its connection to `peer` is gone (or could not be made).
    Disconnected {
        /// Who is told.
        to: u32,
        /// The lost peer.
        peer: u32,
    },
    /// A driver-side command (e.g. a disk read's answer) for `node`, stored in slot `slot`.
    Local {
        /// The node.
        node: u32,
        /// Slot of the command in the world's command slab.
        slot: u32,
    },
    /// A scenario event (churn, listening, faults, sampling), interpreted by the world.
    App {
        /// Node concerned (or an index for non-node events).
        node: u32,
        /// Kind of scenario event.
        kind: u8,
        /// Generation or auxiliary value.
        aux: u32,
    },
}

impl Ev {
    fn encode(&self, at: u64, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        let (tag, a, b, c) = match *self {
            Ev::Deliver { to, from, slot } => (0u8, to, from, slot),
            Ev::Timer { node, generation } => (1, node, generation, 0),
            Ev::Disconnected { to, peer } => (2, to, peer, 0),
            Ev::Local { node, slot } => (3, node, slot, 0),
            Ev::App { node, kind, aux } => (4 + kind, node, aux, 0),
        };
        out.push(tag);
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&c.to_le_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl Entry {
    /// The order of dispatch: earliest time first, then first scheduled. Sequence numbers are
    /// unique, so the order is total and any correct priority queue pops the same sequence.
    #[inline]
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

/// A 4-ary min-heap of entries: half the depth of a binary heap, and the four children of a
/// node share two cache lines, which matters with millions of pending events.
#[derive(Debug, Default)]
struct EventHeap {
    v: Vec<Entry>,
}

impl EventHeap {
    const D: usize = 4;

    fn len(&self) -> usize {
        self.v.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    fn peek(&self) -> Option<&Entry> {
        self.v.first()
    }

    fn push(&mut self, e: Entry) {
        let key = e.key();
        let mut i = self.v.len();
        self.v.push(e);
        while i > 0 {
            let parent = (i - 1) / Self::D;
            if self.v[parent].key() <= key {
                break;
            }
            self.v[i] = self.v[parent];
            i = parent;
        }
        self.v[i] = e;
    }

    fn pop(&mut self) -> Option<Entry> {
        let last = self.v.pop()?;
        let Some(&top) = self.v.first() else {
            return Some(last);
        };
        // Sift `last` down from the root.
        let n = self.v.len();
        let key = last.key();
        let mut i = 0;
        loop {
            let first = Self::D * i + 1;
            if first >= n {
                break;
            }
            let end = (first + Self::D).min(n);
            let mut best = first;
            let mut best_key = self.v[first].key();
            for j in first + 1..end {
                let k = self.v[j].key();
                if k < best_key {
                    best = j;
                    best_key = k;
                }
            }
            if key <= best_key {
                break;
            }
            self.v[i] = self.v[best];
            i = best;
        }
        self.v[i] = last;
        Some(top)
    }
}

/// The pending events: those due within the next [`EventQueue::BUCKETS`] buckets of
/// [`EventQueue::WIDTH`] µs sit unsorted in a ring of buckets, each sorted only when its turn
/// comes; later ones wait in an [`EventHeap`]. Pushing near-future events (most of a run's:
/// deliveries, disk reads, the cores' timers) is an append instead of a sift through a heap of
/// millions, and popping takes the end of a small sorted vector. Pops come in exactly the heap's
/// order, (time, sequence), so traces do not change.
#[derive(Debug)]
struct EventQueue {
    /// Every pending event of bucket `base` or earlier, sorted by key, largest first (popped
    /// from the end). Empty only when the whole queue is.
    cur: Vec<Entry>,
    /// The bucket number (`at / WIDTH`) `cur` was last filled from.
    base: u64,
    /// Bucket `b` (for `base < b < base + BUCKETS`) is `ring[b % BUCKETS]`.
    ring: Vec<Vec<Entry>>,
    /// Events in `ring`.
    in_ring: usize,
    /// Events of bucket `base + BUCKETS` or later.
    far: EventHeap,
}

impl Default for EventQueue {
    fn default() -> Self {
        Self {
            cur: Vec::new(),
            base: 0,
            ring: (0..Self::BUCKETS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            far: EventHeap::default(),
        }
    }
}

impl EventQueue {
    /// Width of a bucket, µs.
    const WIDTH: u64 = 1024;
    /// Buckets in the ring: a horizon of about 4.2 s.
    const BUCKETS: u64 = 4096;

    fn len(&self) -> usize {
        self.cur.len() + self.in_ring + self.far.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.cur.is_empty()
    }

    fn peek(&self) -> Option<&Entry> {
        self.cur.last()
    }

    fn push(&mut self, e: Entry) {
        let b = e.at / Self::WIDTH;
        if self.cur.is_empty() {
            // The queue is empty: this event is the next one.
            self.base = b;
            self.cur.push(e);
        } else if b < self.base {
            self.rebase(b);
            self.push(e);
        } else if b == self.base {
            let key = e.key();
            let i = self.cur.partition_point(|x| x.key() > key);
            self.cur.insert(i, e);
        } else if b < self.base + Self::BUCKETS {
            self.ring[(b % Self::BUCKETS) as usize].push(e);
            self.in_ring += 1;
        } else {
            self.far.push(e);
        }
    }

    /// Moves `base` back to bucket `b`, earlier than it: `cur` keeps only its events of bucket
    /// `b` or earlier, the rest go to the ring or `far`, and ring buckets past the new horizon
    /// go to `far`. Without this, an early event pushed after a later one had set `base`
    /// (every run's start: churn schedules the population in no time order; or a jump over
    /// an empty stretch) would make `cur` the whole queue up to that later event, and each
    /// push into it a shift of all of them (37% of the first 15 simulated minutes at 100,000
    /// peers).
    fn rebase(&mut self, b: u64) {
        let old = self.base;
        self.base = b;
        let horizon = b + Self::BUCKETS;
        if self.in_ring > 0 {
            // Ring buckets `horizon..old + BUCKETS` leave the horizon.
            for bucket in horizon.max(old + 1)..old + Self::BUCKETS {
                let slot = &mut self.ring[(bucket % Self::BUCKETS) as usize];
                self.in_ring -= slot.len();
                for e in slot.drain(..) {
                    self.far.push(e);
                }
            }
        }
        // `cur` is sorted largest first: its events after bucket `b` are a prefix.
        let later = self.cur.partition_point(|x| x.at / Self::WIDTH > b);
        for e in self.cur.drain(..later) {
            let eb = e.at / Self::WIDTH;
            if eb < horizon {
                self.ring[(eb % Self::BUCKETS) as usize].push(e);
                self.in_ring += 1;
            } else {
                self.far.push(e);
            }
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.cur.pop()?;
        if self.cur.is_empty() {
            self.refill();
        }
        Some(e)
    }

    /// Fills the empty `cur` from the next non-empty bucket, moving events from `far` into the
    /// ring as its horizon passes them.
    fn refill(&mut self) {
        loop {
            if self.in_ring == 0 {
                // Nothing within the horizon: jump to the next far event's bucket.
                let Some(next) = self.far.peek() else {
                    return;
                };
                self.base = self.base.max((next.at / Self::WIDTH).saturating_sub(1));
            }
            self.base += 1;
            let horizon = self.base + Self::BUCKETS;
            while let Some(next) = self.far.peek() {
                let b = next.at / Self::WIDTH;
                if b >= horizon {
                    break;
                }
                if let Some(e) = self.far.pop() {
                    self.ring[(b % Self::BUCKETS) as usize].push(e);
                    self.in_ring += 1;
                }
            }
            let bucket = &mut self.ring[(self.base % Self::BUCKETS) as usize];
            if !bucket.is_empty() {
                // Swap, so both vectors keep their capacity for reuse.
                std::mem::swap(&mut self.cur, bucket);
                self.in_ring -= self.cur.len();
                self.cur
                    .sort_unstable_by_key(|e| std::cmp::Reverse(e.key()));
                return;
            }
        }
    }
}

/// Messages in flight, stored once; queue entries hold a slot number.
#[derive(Debug)]
pub struct Slab<M> {
    slots: Vec<Option<M>>,
    free: Vec<u32>,
}

impl<M> Default for Slab<M> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<M> Slab<M> {
    /// Stores `m`, returns its slot.
    pub fn insert(&mut self, m: M) -> u32 {
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(m);
            i
        } else {
            self.slots.push(Some(m));
            (self.slots.len() - 1) as u32
        }
    }

    /// Takes the message out of `slot`.
    pub fn take(&mut self, slot: u32) -> Option<M> {
        let m = self.slots.get_mut(slot as usize)?.take();
        if m.is_some() {
            self.free.push(slot);
        }
        m
    }

    /// Messages stored now.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// True when no message is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const TRACE_FLUSH: usize = 64 * 1024;

/// The event queue and virtual clock of one run.
#[derive(Debug)]
pub struct Engine<M> {
    queue: EventQueue,
    seq: u64,
    now: u64,
    /// Messages in flight.
    pub msgs: Slab<M>,
    dispatched: u64,
    trace: blake3::Hasher,
    trace_buf: Vec<u8>,
}

impl<M> Default for Engine<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Engine<M> {
    /// An empty engine at time zero.
    pub fn new() -> Self {
        Self {
            queue: EventQueue::default(),
            seq: 0,
            now: 0,
            msgs: Slab::default(),
            dispatched: 0,
            trace: blake3::Hasher::new(),
            trace_buf: Vec::with_capacity(TRACE_FLUSH + 64),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        Time::from_micros(self.now)
    }

    /// Schedules `ev` at `at` (clamped to now: nothing happens in the past).
    pub fn schedule(&mut self, at: Time, ev: Ev) {
        let at = at.as_micros().max(self.now);
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Takes the next sequence number without scheduling anything yet: an event scheduled
    /// later with it ([`Engine::schedule_with_seq`]) keeps its place among events at the same
    /// time, as if it had been scheduled now.
    pub fn reserve_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Schedules `ev` at `at` (clamped to now) with a sequence number from
    /// [`Engine::reserve_seq`].
    pub fn schedule_with_seq(&mut self, at: Time, seq: u64, ev: Ev) {
        let at = at.as_micros().max(self.now);
        self.queue.push(Entry { at, seq, ev });
    }

    /// The time of the next event, if any.
    pub fn peek_time(&self) -> Option<Time> {
        self.queue.peek().map(|e| Time::from_micros(e.at))
    }

    /// Removes the next event, advances the clock to it and adds it to the trace.
    pub fn pop(&mut self) -> Option<(Time, Ev)> {
        self.pop_with_seq().map(|(t, _, ev)| (t, ev))
    }

    /// [`Engine::pop`], with the event's sequence number.
    pub fn pop_with_seq(&mut self) -> Option<(Time, u64, Ev)> {
        let e = self.queue.pop()?;
        self.now = e.at;
        self.dispatched += 1;
        e.ev.encode(e.at, e.seq, &mut self.trace_buf);
        if self.trace_buf.len() >= TRACE_FLUSH {
            self.trace.update(&self.trace_buf);
            self.trace_buf.clear();
        }
        Some((Time::from_micros(e.at), e.seq, e.ev))
    }

    /// Adds run-specific bytes (e.g. a core event digest) to the trace.
    pub fn trace_extra(&mut self, bytes: &[u8]) {
        self.trace_buf.extend_from_slice(bytes);
    }

    /// Events dispatched so far.
    pub fn dispatched(&self) -> u64 {
        self.dispatched
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// BLAKE3 of the trace so far, hex.
    pub fn trace_hash(&self) -> String {
        let mut h = self.trace.clone();
        h.update(&self.trace_buf);
        h.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(node: u32) -> Ev {
        Ev::App {
            node,
            kind: 0,
            aux: 0,
        }
    }

    #[test]
    fn pops_in_time_then_sequence_order() {
        let mut e: Engine<()> = Engine::new();
        e.schedule(Time::from_millis(5), app(1));
        e.schedule(Time::from_millis(1), app(2));
        e.schedule(Time::from_millis(5), app(3));
        e.schedule(Time::from_millis(3), app(4));
        let order: Vec<u32> = std::iter::from_fn(|| e.pop())
            .map(|(_, ev)| match ev {
                Ev::App { node, .. } => node,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![2, 4, 1, 3]);
        assert_eq!(e.now(), Time::from_millis(5));
        // Scheduling in the past is clamped to now.
        e.schedule(Time::from_millis(1), app(9));
        assert_eq!(e.pop().map(|(t, _)| t), Some(Time::from_millis(5)));
    }

    #[test]
    fn a_reserved_sequence_number_keeps_its_place_among_equal_times() {
        let mut e: Engine<()> = Engine::new();
        let early = e.reserve_seq();
        e.schedule(Time::from_millis(2), app(2));
        // Scheduled last, but with the number reserved first: it pops first at 2 ms.
        e.schedule_with_seq(Time::from_millis(2), early, app(1));
        e.schedule(Time::from_millis(1), app(0));
        let order: Vec<(u64, u32)> = std::iter::from_fn(|| e.pop_with_seq())
            .map(|(_, seq, ev)| match ev {
                Ev::App { node, .. } => (seq, node),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![(3, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn heap_pops_in_key_order() {
        // A fixed pseudo-random sequence of pushes and pops against a sorted reference.
        let mut h = EventHeap::default();
        let mut reference: Vec<(u64, u64)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut seq = 0;
        for round in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || h.is_empty() {
                seq += 1;
                let at = x % 1000 + round / 10;
                h.push(Entry {
                    at,
                    seq,
                    ev: Ev::Timer {
                        node: 0,
                        generation: 0,
                    },
                });
                reference.push((at, seq));
            } else {
                reference.sort_unstable();
                let want = reference.remove(0);
                assert_eq!(h.peek().map(Entry::key), Some(want));
                assert_eq!(h.pop().map(|e| e.key()), Some(want));
            }
        }
        reference.sort_unstable();
        for want in reference {
            assert_eq!(h.pop().map(|e| e.key()), Some(want));
        }
        assert!(h.pop().is_none());
    }

    fn timer(at: u64, seq: u64) -> Entry {
        Entry {
            at,
            seq,
            ev: Ev::Timer {
                node: 0,
                generation: 0,
            },
        }
    }

    proptest::proptest! {
        /// Pushes at delays from zero to hours after the last pop (the engine never schedules
        /// in the past), some with an earlier reserved sequence number, mixed with pops: the
        /// bucketed queue pops what a sorted reference does, and so does the heap.
        #[test]
        fn queue_pops_in_key_order(
            ops in proptest::collection::vec((0u8..8, 0u64..4, 0u64..(1 << 34)), 0..600),
        ) {
            let mut q = EventQueue::default();
            let mut h = EventHeap::default();
            let mut reference: Vec<(u64, u64)> = Vec::new();
            let (mut now, mut seq) = (0u64, 1_000_000u64);
            for (op, scale, x) in ops {
                if op < 5 {
                    let delay = match scale {
                        0 => x % 2_000,                                // this bucket or the next
                        1 => x % 3 * 700,                              // equal times
                        2 => x % (EventQueue::WIDTH * EventQueue::BUCKETS * 2), // around the horizon
                        _ => x,                                        // up to hours
                    };
                    // One push in five takes an earlier, reserved sequence number.
                    let s = if op == 0 { seq - 1 - x % 1000 } else { seq += 1; seq };
                    if reference.iter().any(|&(_, r)| r == s) {
                        continue;
                    }
                    q.push(timer(now + delay, s));
                    h.push(timer(now + delay, s));
                    reference.push((now + delay, s));
                } else {
                    reference.sort_unstable();
                    let want = (!reference.is_empty()).then(|| reference.remove(0));
                    proptest::prop_assert_eq!(q.peek().map(Entry::key), want);
                    proptest::prop_assert_eq!(q.pop().map(|e| e.key()), want);
                    proptest::prop_assert_eq!(h.pop().map(|e| e.key()), want);
                    if let Some((at, _)) = want {
                        now = at;
                    }
                }
                proptest::prop_assert_eq!(q.len(), reference.len());
                proptest::prop_assert_eq!(q.is_empty(), reference.is_empty());
                q.check_layout();
            }
            reference.sort_unstable();
            for want in reference {
                proptest::prop_assert_eq!(q.pop().map(|e| e.key()), Some(want));
            }
            proptest::prop_assert!(q.pop().is_none());
        }
    }

    impl EventQueue {
        /// Panics unless every event is where the queue's layout says: `cur` is exactly
        /// bucket `base` (so a push into it shifts one bucket's events at most), sorted
        /// largest first; ring slot `i` holds one bucket number in `base + 1..base + BUCKETS`
        /// congruent to `i`; `far` holds the rest.
        fn check_layout(&self) {
            let bucket = |e: &Entry| e.at / Self::WIDTH;
            assert!(
                self.cur.iter().all(|e| bucket(e) == self.base),
                "cur spans buckets"
            );
            assert!(
                self.cur.windows(2).all(|w| w[0].key() > w[1].key()),
                "cur unsorted"
            );
            let mut in_ring = 0;
            for (i, slot) in self.ring.iter().enumerate() {
                in_ring += slot.len();
                for e in slot {
                    let b = bucket(e);
                    assert!(
                        b > self.base && b < self.base + Self::BUCKETS,
                        "ring bucket out of range"
                    );
                    assert_eq!(b % Self::BUCKETS, i as u64, "ring slot");
                    assert_eq!(b, bucket(&slot[0]), "ring slot mixes buckets");
                }
            }
            assert_eq!(in_ring, self.in_ring);
            assert!(
                self.far
                    .v
                    .iter()
                    .all(|e| bucket(e) >= self.base + Self::BUCKETS)
            );
            assert!(
                !self.cur.is_empty() || self.in_ring + self.far.len() == 0,
                "cur empty while events wait"
            );
        }
    }

    /// A run's start: the whole population scheduled before the first pop, in no time order
    /// (the first push is late in the run). `cur` stays one bucket, not every event up to the
    /// first one pushed, and the pops come in order.
    #[test]
    fn an_unordered_start_keeps_the_current_bucket_small() {
        let mut q = EventQueue::default();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut keys = Vec::new();
        for seq in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = if seq == 0 {
                3_000_000_000
            } else {
                x % 3_600_000_000
            };
            q.push(timer(at, seq));
            keys.push((at, seq));
            if seq % 1000 == 0 {
                q.check_layout();
            }
        }
        q.check_layout();
        assert!(q.cur.len() < 10, "cur holds {} events", q.cur.len());
        keys.sort_unstable();
        for want in keys {
            assert_eq!(q.pop().map(|e| e.key()), Some(want));
        }
        assert!(q.pop().is_none());
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.take(a), Some("a"));
        assert_eq!(s.take(a), None);
        let c = s.insert("c");
        assert_eq!(c, a);
        assert_eq!(s.len(), 2);
        assert_eq!(s.take(b), Some("b"));
    }

    #[test]
    fn trace_hash_depends_on_events() {
        let run = |n: u32| {
            let mut e: Engine<()> = Engine::new();
            for i in 0..n {
                e.schedule(
                    Time::from_micros(u64::from(i % 7)),
                    Ev::Timer {
                        node: i,
                        generation: 0,
                    },
                );
            }
            while e.pop().is_some() {}
            e.trace_hash()
        };
        assert_eq!(run(10_000), run(10_000));
        assert_ne!(run(10_000), run(10_001));
    }
}
