//! The sans-IO contract every Shoal core implements (peer scheduler, super-peer index, tracker
//! registry), so the real drivers and the simulator run the same decisions.
//!
//! The shape is str0m's: feed one [`Input`] with [`Core::handle_input`] at time `now`, then
//! drain [`Core::poll_output`] until it returns [`Output::Timeout`]; call `handle_input` again
//! with [`Input::Timeout`] when that time comes (or earlier, with any other input). Cores never
//! read a clock, open a socket or draw global randomness: time arrives as [`Time`], nodes are
//! [`NodeId`]s, and every queue a core keeps is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::ids::NodeId;

/// A point on a core's clock: microseconds since an origin the driver picks (process start,
/// or the start of a simulation). Only differences matter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);
    /// Later than any real deadline: "no timer set".
    pub const NEVER: Time = Time(u64::MAX);

    /// `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturates at [`Time::NEVER`].
    fn add(self, d: Duration) -> Time {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Time::NEVER {
            f.write_str("never")
        } else {
            write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
        }
    }
}

/// Something that happened to a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<M, C> {
    /// A message from `from`, whose identity the driver authenticated.
    Message {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: M,
    },
    /// A connection to `node` is up.
    Connected(NodeId),
    /// The connection to `node` is gone; requests in flight to it will not be answered.
    Disconnected(NodeId),
    /// The deadline the core asked for passed.
    Timeout,
    /// A command from the local user or operator (play, stop, set a limit...).
    Command(C),
}

impl<M, C> Input<M, C> {
    /// Re-types an input for an inner core: messages through `msg` (which also sees the
    /// sender), commands through `cmd`; `None` from either drops the input. Connection events
    /// and timeouts pass unchanged. Drivers and wrappers that host several cores use this.
    pub fn filter_map<M2, C2>(
        self,
        msg: impl FnOnce(NodeId, M) -> Option<M2>,
        cmd: impl FnOnce(C) -> Option<C2>,
    ) -> Option<Input<M2, C2>> {
        Some(match self {
            Input::Message { from, msg: m } => Input::Message {
                from,
                msg: msg(from, m)?,
            },
            Input::Connected(n) => Input::Connected(n),
            Input::Disconnected(n) => Input::Disconnected(n),
            Input::Timeout => Input::Timeout,
            Input::Command(c) => Input::Command(cmd(c)?),
        })
    }
}

/// Something a core wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<M, E> {
    /// Send `msg` to `to`.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: M,
    },
    /// Report `event` to the driver (store this chunk, play these samples, a statistic...).
    Event(E),
    /// Nothing more to do now; call back with [`Input::Timeout`] at this time
    /// ([`Time::NEVER`] when no timer is set).
    Timeout(Time),
}

/// A sans-IO state machine.
pub trait Core {
    /// Messages it exchanges with other nodes.
    type Message;
    /// Commands from the local user or operator.
    type Command;
    /// Events it reports to its driver.
    type Event;

    /// Feeds one input at time `now` (never earlier than a previous call's `now`).
    fn handle_input(&mut self, now: Time, input: Input<Self::Message, Self::Command>);

    /// The next thing to do; [`Output::Timeout`] once there is nothing left.
    fn poll_output(&mut self) -> Output<Self::Message, Self::Event>;
}

/// Named deadlines for a core: set, replace, cancel, find the earliest, pop the expired.
/// One deadline per key.
///
/// A listener's core keeps tens of deadlines at most: one vector sorted by `(deadline, key)`,
/// latest first, so the earliest pops off the end, where a scan is as fast as a tree's search
/// and a simulator running one core per listener keeps a few bytes per deadline (two B-trees
/// kept two nodes, over 1 KiB, per core from its first deadline on). A server answering a
/// whole population (the origin, with one upload slot deadline per request in flight) keeps
/// thousands, where each move in that vector is a scan and a shift of all of them: past 64
/// deadlines the set moves to two B-trees (by key and by time) until it empties. Both forms
/// answer alike: deadlines pop by `(time, key)`.
#[derive(Debug, Clone)]
pub struct TimerSet<K: Ord + Clone> {
    repr: Repr<K>,
}

#[derive(Debug, Clone)]
enum Repr<K: Ord + Clone> {
    /// Sorted by `(deadline, key)`, latest first.
    Small(Vec<(Time, K)>),
    /// More than `TimerSet::LARGE` deadlines (until the set empties).
    Large(Box<Trees<K>>),
}

/// The large form: each deadline by key and by `(time, key)`.
#[derive(Debug, Clone)]
struct Trees<K: Ord + Clone> {
    by_key: BTreeMap<K, Time>,
    by_time: BTreeSet<(Time, K)>,
}

impl<K: Ord + Clone> Default for TimerSet<K> {
    fn default() -> Self {
        Self {
            repr: Repr::Small(Vec::new()),
        }
    }
}

impl<K: Ord + Clone> TimerSet<K> {
    /// Deadlines kept in the vector; one more moves the set to the trees. Small in this
    /// crate's tests, so the proptest below moves sets between both forms.
    const LARGE: usize = if cfg!(test) { 8 } else { 64 };

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(v: &[(Time, K)], key: &K) -> Option<usize> {
        v.iter().position(|(_, k)| k == key)
    }

    /// Sets (or moves) the deadline of `key` to `at`.
    pub fn set(&mut self, key: K, at: Time) {
        if let Repr::Small(v) = &mut self.repr {
            if let Some(i) = Self::position(v, &key) {
                v.remove(i);
            }
        }
        self.insert(key, at);
    }

    /// Sets the deadline of a `key` the caller knows has none (a fresh one): [`TimerSet::set`]
    /// without the search for an old deadline to move.
    pub fn insert_new(&mut self, key: K, at: Time) {
        debug_assert!(self.get(&key).is_none(), "insert_new: key already set");
        self.insert(key, at);
    }

    /// Sets the deadline of a key the vector does not hold (the trees replace any), moving
    /// the set to the trees when the vector is full.
    fn insert(&mut self, key: K, at: Time) {
        match &mut self.repr {
            Repr::Small(v) if v.len() < Self::LARGE => {
                let i = v.partition_point(|(t, k)| (*t, k) > (at, &key));
                v.insert(i, (at, key));
            }
            Repr::Small(v) => {
                let mut trees = Trees {
                    by_key: BTreeMap::new(),
                    by_time: BTreeSet::new(),
                };
                for (t, k) in std::mem::take(v) {
                    trees.set(k, t);
                }
                trees.set(key, at);
                self.repr = Repr::Large(Box::new(trees));
            }
            Repr::Large(t) => t.set(key, at),
        }
    }

    /// Removes the deadline of `key`; returns when it was due.
    pub fn cancel(&mut self, key: &K) -> Option<Time> {
        let at = match &mut self.repr {
            Repr::Small(v) => {
                let i = Self::position(v, key)?;
                v.remove(i).0
            }
            Repr::Large(t) => {
                let at = t.by_key.remove(key)?;
                t.by_time.remove(&(at, key.clone()));
                at
            }
        };
        self.shrink();
        Some(at)
    }

    /// When `key` is due, if set.
    pub fn get(&self, key: &K) -> Option<Time> {
        match &self.repr {
            Repr::Small(v) => Self::position(v, key).map(|i| v[i].0),
            Repr::Large(t) => t.by_key.get(key).copied(),
        }
    }

    /// The earliest deadline, or [`Time::NEVER`].
    pub fn next_deadline(&self) -> Time {
        match &self.repr {
            Repr::Small(v) => v.last().map_or(Time::NEVER, |(t, _)| *t),
            Repr::Large(t) => t.by_time.first().map_or(Time::NEVER, |(t, _)| *t),
        }
    }

    /// Removes and returns one key whose deadline is at or before `now`, earliest first.
    pub fn pop_expired(&mut self, now: Time) -> Option<K> {
        if self.next_deadline() > now {
            return None;
        }
        let key = match &mut self.repr {
            Repr::Small(v) => v.pop()?.1,
            Repr::Large(t) => {
                let (_, key) = t.by_time.pop_first()?;
                t.by_key.remove(&key);
                key
            }
        };
        self.shrink();
        Some(key)
    }

    /// Frees the storage once the set is empty: most of a listener's core's life has no
    /// deadline in some set (an idle server, a finished play). Halving the room as it drains
    /// instead fragmented glibc's heap: at 10,000 simulated peers, 8% more peak RSS than this.
    fn shrink(&mut self) {
        if self.is_empty() {
            self.repr = Repr::Small(Vec::new());
        }
    }

    /// Number of deadlines set.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Small(v) => v.len(),
            Repr::Large(t) => t.by_key.len(),
        }
    }

    /// True when no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Ord + Clone> Trees<K> {
    fn set(&mut self, key: K, at: Time) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn time_arithmetic_saturates() {
        let t = Time::from_millis(1500);
        assert_eq!(t.as_micros(), 1_500_000);
        assert_eq!(t + Duration::from_millis(500), Time::from_millis(2000));
        assert_eq!(Time::from_millis(2000) - t, Duration::from_millis(500));
        assert_eq!(t - Time::from_millis(2000), Duration::ZERO);
        assert_eq!(Time::NEVER + Duration::from_secs(1), Time::NEVER);
        assert_eq!(format!("{t:?}"), "1.500000s");
    }

    #[test]
    fn inputs_re_type_for_inner_cores() {
        let a = NodeId::from_index(3);
        let keep = |_: NodeId, m: u32| (m > 1).then_some(m * 10);
        let msg: Input<u32, u8> = Input::Message { from: a, msg: 2 };
        assert_eq!(
            msg.filter_map(keep, Some),
            Some(Input::<u32, u8>::Message { from: a, msg: 20 })
        );
        let dropped: Input<u32, u8> = Input::Message { from: a, msg: 1 };
        assert_eq!(dropped.filter_map(keep, Some), None);
        let cmd: Input<u32, u8> = Input::Command(7);
        assert_eq!(cmd.filter_map(keep, |_| None::<u8>), None);
        let t: Input<u32, u8> = Input::Disconnected(a);
        assert_eq!(t.filter_map(keep, Some), Some(Input::Disconnected(a)));
    }

    #[test]
    fn timers_pop_in_order_and_move() {
        let mut timers = TimerSet::new();
        timers.set("b", Time::from_millis(20));
        timers.set("a", Time::from_millis(10));
        timers.set("c", Time::from_millis(30));
        timers.set("c", Time::from_millis(5)); // moved earlier
        assert_eq!(timers.next_deadline(), Time::from_millis(5));
        assert_eq!(timers.cancel(&"a"), Some(Time::from_millis(10)));
        assert_eq!(timers.pop_expired(Time::from_millis(25)), Some("c"));
        assert_eq!(timers.pop_expired(Time::from_millis(25)), Some("b"));
        assert_eq!(timers.pop_expired(Time::from_millis(25)), None);
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), Time::NEVER);
    }

    /// The two B-trees the set used to be: one deadline per key, popped by (time, key).
    #[derive(Default)]
    struct TreeTimers {
        by_key: std::collections::BTreeMap<u8, Time>,
        by_time: std::collections::BTreeSet<(Time, u8)>,
    }

    impl TreeTimers {
        fn set(&mut self, key: u8, at: Time) {
            if let Some(old) = self.by_key.insert(key, at) {
                self.by_time.remove(&(old, key));
            }
            self.by_time.insert((at, key));
        }
        fn cancel(&mut self, key: u8) -> Option<Time> {
            let at = self.by_key.remove(&key)?;
            self.by_time.remove(&(at, key));
            Some(at)
        }
        fn pop_expired(&mut self, now: Time) -> Option<u8> {
            let &(at, key) = self.by_time.first()?;
            (at <= now).then(|| {
                self.by_time.pop_first();
                self.by_key.remove(&key);
                key
            })
        }
    }

    proptest::proptest! {
        /// Same answers as a pair of ordered trees under any mix of operations (`insert_new`
        /// for keys not set), ties in time included (few keys and few distinct times, so
        /// moves, re-sets and ties are common).
        #[test]
        fn agrees_with_ordered_trees(
            ops in proptest::collection::vec((0u8..4, 0u8..24, 0u64..12), 0..300),
        ) {
            let (mut set, mut model) = (TimerSet::new(), TreeTimers::default());
            for (op, key, t) in ops {
                let at = Time::from_millis(t);
                match op {
                    0 => {
                        set.set(key, at);
                        model.set(key, at);
                    }
                    // A fresh key goes in by `insert_new`, the way a core adds one.
                    1 if !model.by_key.contains_key(&key) => {
                        set.insert_new(key, at);
                        model.set(key, at);
                    }
                    1 => {
                        set.set(key, at);
                        model.set(key, at);
                    }
                    2 => proptest::prop_assert_eq!(set.cancel(&key), model.cancel(key)),
                    _ => loop {
                        let (a, b) = (set.pop_expired(at), model.pop_expired(at));
                        proptest::prop_assert_eq!(a, b);
                        if a.is_none() {
                            break;
                        }
                    },
                }
                proptest::prop_assert_eq!(set.len(), model.by_key.len());
                proptest::prop_assert_eq!(set.get(&key), model.by_key.get(&key).copied());
                proptest::prop_assert_eq!(
                    set.next_deadline(),
                    model.by_time.first().map_or(Time::NEVER, |(t, _)| *t)
                );
            }
        }
    }

    /// A server's pattern: deadlines for many requests (up to 251 at once, 2,000 sets), most
    /// set at the latest time, cancelled out of order, then drained: the set leaves the
    /// vector, answers like the trees throughout, and frees what it held once empty.
    #[test]
    fn a_servers_many_deadlines_answer_like_the_trees() {
        let (mut set, mut model) = (TimerSet::new(), TreeTimers::default());
        let mut now = 0u64;
        for i in 0..2_000u32 {
            let key = (i * 37 % 251) as u8;
            now += u64::from(i % 3);
            set.set(key, Time::from_millis(now + 100));
            model.set(key, Time::from_millis(now + 100));
            if i % 5 == 0 {
                let gone = (i * 11 % 251) as u8;
                assert_eq!(set.cancel(&gone), model.cancel(gone));
            }
            if i % 50 == 0 {
                loop {
                    let (a, b) = (
                        set.pop_expired(Time::from_millis(now)),
                        model.pop_expired(Time::from_millis(now)),
                    );
                    assert_eq!(a, b);
                    if a.is_none() {
                        break;
                    }
                }
            }
            assert_eq!(set.len(), model.by_key.len());
            assert_eq!(
                set.next_deadline(),
                model.by_time.first().map_or(Time::NEVER, |t| t.0)
            );
        }
        assert!(set.len() > TimerSet::<u8>::LARGE);
        assert!(matches!(set.repr, Repr::Large(_)));
        while let Some(k) = set.pop_expired(Time::NEVER) {
            assert_eq!(Some(k), model.pop_expired(Time::NEVER));
        }
        assert!(model.by_key.is_empty());
        assert!(matches!(&set.repr, Repr::Small(v) if v.capacity() == 0));
    }

    /// A tiny core that answers pings after a fixed think time: exercises the contract the
    /// way the drivers and the simulator use it.
    struct Ponger {
        think: Duration,
        pending: TimerSet<(NodeId, u32)>,
        out: VecDeque<Output<u32, &'static str>>,
    }

    impl Core for Ponger {
        type Message = u32;
        type Command = ();
        type Event = &'static str;

        fn handle_input(&mut self, now: Time, input: Input<u32, ()>) {
            match input {
                Input::Message { from, msg } => self.pending.set((from, msg), now + self.think),
                Input::Timeout => {
                    while let Some((to, msg)) = self.pending.pop_expired(now) {
                        self.out.push_back(Output::Send { to, msg: msg + 1 });
                    }
                }
                Input::Disconnected(_) => self.out.push_back(Output::Event("lost")),
                Input::Connected(_) | Input::Command(()) => {}
            }
        }

        fn poll_output(&mut self) -> Output<u32, &'static str> {
            self.out
                .pop_front()
                .unwrap_or(Output::Timeout(self.pending.next_deadline()))
        }
    }

    #[test]
    fn poll_loop_with_virtual_clock() {
        let mut core = Ponger {
            think: Duration::from_millis(3),
            pending: TimerSet::new(),
            out: VecDeque::new(),
        };
        let a = NodeId::from_index(1);
        core.handle_input(Time::ZERO, Input::Message { from: a, msg: 41 });
        let Output::Timeout(at) = core.poll_output() else {
            panic!("nothing to send yet")
        };
        assert_eq!(at, Time::from_millis(3));
        core.handle_input(at, Input::Timeout);
        assert_eq!(core.poll_output(), Output::Send { to: a, msg: 42 });
        assert_eq!(core.poll_output(), Output::Timeout(Time::NEVER));
        core.handle_input(at, Input::Disconnected(a));
        assert_eq!(core.poll_output(), Output::Event("lost"));
    }
}
