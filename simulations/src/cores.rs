//! Owns the integration point between the simulator and Shoal's sans-IO cores: the [`Cores`]
//! trait (build a core per node, turn listener actions into core commands, read core events
//! into playback statistics) and [`NoCores`], the set used while no role core is integrated.
//!
//! Integrating a role core means implementing [`Cores`] for a type whose `Core` is an enum over
//! the role cores (`shoal_peer::core::FetchScheduler` for peers, its `ChunkServer` for origins,
//! the super-peer and tracker cores) with one message enum; nothing else in the simulator
//! changes. The simulator never decides what a client would decide: no fetch policy lives here.

use shoal_protocol::{Core, Input, NodeId, Output, Time};

use crate::net::{Nat, Role};
use crate::stats::PlaybackStats;

/// Message type of a core set.
pub type Msg<C> = <<C as Cores>::Core as Core>::Message;
/// Command type of a core set.
pub type Cmd<C> = <<C as Cores>::Core as Core>::Command;
/// Event type of a core set.
pub type Evt<C> = <<C as Cores>::Core as Core>::Event;

/// What the simulator knows about a node when it builds its core.
#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    /// The node's id (`NodeId::from_index`).
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Country code of its region.
    pub region: &'a str,
    /// Its NAT type.
    pub nat: Nat,
    /// Upload it grants to serving others, bytes/s.
    pub upload_cap_bps: f64,
    /// Cache size, bytes (peers).
    pub cache_bytes: u64,
    /// Tracks played before the run, oldest first (to warm the cache), as catalog indices.
    pub history: &'a [u32],
    /// The tracker's id.
    pub tracker: NodeId,
    /// Origins' ids.
    pub origins: &'a [NodeId],
    /// Super-peers' ids, nearest to this node first.
    pub superpeers: &'a [NodeId],
    /// A seed for the core's own RNG (derived from the run seed and the node).
    pub seed: u64,
}

/// What a listener does; the core set turns it into its peer core's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// The client starts (a session begins).
    SessionStart,
    /// The client quits (the session ends).
    SessionEnd,
    /// Play `track` now (stopping whatever plays); `next` is the track after it when the
    /// client knows it (playlist or album order), so it may prefetch.
    Play {
        /// Catalog index of the track.
        track: u32,
        /// The following track, if predictable.
        next: Option<u32>,
    },
}

/// What the simulated driver does for a node in answer to one of its events or deliveries,
/// the way the real driver would: a command back into the core (a disk read's result, a
/// lookup's answer), or a message sent on the node's behalf (a lookup, an announce).
pub enum Feedback<C: Cores + ?Sized> {
    /// Feed this command to the node's core now.
    Command(Cmd<C>),
    /// Feed this command to the node's core after `after_us` microseconds (disk latency).
    Later {
        /// Delay, µs.
        after_us: u64,
        /// The command.
        cmd: Cmd<C>,
    },
    /// Send this message from the node.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: Msg<C>,
    },
    /// Wake the driver of this node after `after_us` microseconds
    /// ([`Cores::on_timer`] with `token`), e.g. to renew an announce. Dropped while the node
    /// is offline.
    Timer {
        /// Delay, µs.
        after_us: u64,
        /// Handed back to [`Cores::on_timer`].
        token: u32,
    },
}

impl<C: Cores + ?Sized> std::fmt::Debug for Feedback<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feedback::Command(_) => f.write_str("Feedback::Command(..)"),
            Feedback::Later { after_us, .. } => write!(f, "Feedback::Later({after_us} µs, ..)"),
            Feedback::Send { to, .. } => write!(f, "Feedback::Send {{ to: {to}, .. }}"),
            Feedback::Timer { after_us, token } => {
                write!(f, "Feedback::Timer({after_us} µs, {token})")
            }
        }
    }
}

/// Shoal's cores as the simulator drives them.
pub trait Cores {
    /// One type over every role's core (an enum once several roles are integrated).
    type Core: Core;

    /// Which role cores are integrated, e.g. `"peer: shoal_peer::core 0.1"`; empty for none.
    fn integrated(&self) -> Vec<String>;

    /// True when peers run the real fetch scheduler, so playback statistics are measured.
    fn playback_measured(&self) -> bool;

    /// Wants listening history for [`NodeInfo::history`] (costs draws; skip when unused).
    fn wants_history(&self) -> bool {
        false
    }

    /// What the summary should say about this core set's limits (e.g. a role not integrated).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Bytes `msg` occupies on the wire (framing included), for bandwidth accounting.
    fn wire_len(&self, msg: &Msg<Self>) -> u32;

    /// The core for a node, or `None` when that role's core is not integrated.
    fn spawn(&mut self, info: &NodeInfo<'_>) -> Option<Self::Core>;

    /// What carries out a listener action on a peer, in order: commands to its core (e.g. play
    /// a track, then queue the next one) and what its driver sends (e.g. an announce when the
    /// client starts).
    fn commands(&mut self, now: Time, node: u32, action: Listen, out: &mut Vec<Feedback<Self>>);

    /// `node`'s client quit (its session ended; the `SessionEnd` commands were applied and
    /// drained). Returns the core to keep it in memory while offline (the default), or `None`
    /// to drop it: the core set then keeps only what the client keeps on disk and builds the
    /// core afresh in [`Cores::restart`], as a real client does when it starts again.
    fn quit(&mut self, _node: u32, core: Self::Core) -> Option<Self::Core> {
        Some(core)
    }

    /// `node`'s client starts again after [`Cores::quit`] dropped its core: a fresh core from
    /// what is on its disk (called before the `SessionStart` commands).
    fn restart(&mut self, _now: Time, _node: u32) -> Option<Self::Core> {
        None
    }

    /// A [`Feedback::Timer`] of `node`'s driver fired (only while the node is online).
    fn on_timer(
        &mut self,
        _now: Time,
        _node: u32,
        _token: u32,
        _feedback: &mut Vec<Feedback<Self>>,
    ) {
    }

    /// Reads an event a core reported into the statistics (first audio, stutter, bytes by
    /// source, play finished...) and does what the driver does with it (`feedback`, e.g. a
    /// disk read answered with the bytes).
    fn observe(
        &mut self,
        now: Time,
        node: u32,
        event: Evt<Self>,
        stats: &mut PlaybackStats,
        feedback: &mut Vec<Feedback<Self>>,
    );

    /// A message from `from` is about to be handed to `to`'s core. The driver may prepare the
    /// receiver first (`to_receiver`, e.g. register what an origin store holds) and tell the
    /// sender its transmission finished (`to_sender`, e.g. an upload slot is free). Default:
    /// nothing.
    fn on_deliver(
        &mut self,
        _now: Time,
        _from: u32,
        _to: u32,
        _msg: &Msg<Self>,
        _to_sender: &mut Vec<Feedback<Self>>,
        _to_receiver: &mut Vec<Feedback<Self>>,
    ) {
    }
}

/// A core that cannot exist: the `Core` of [`NoCores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {}

impl Core for Absent {
    type Message = Absent;
    type Command = Absent;
    type Event = Absent;

    fn handle_input(&mut self, _now: Time, _input: Input<Absent, Absent>) {
        match *self {}
    }

    fn poll_output(&mut self) -> Output<Absent, Absent> {
        match *self {}
    }
}

/// No role core integrated yet: the network, churn and listening models run and are
/// measured; playback statistics are reported as absent (`null`), never invented.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCores;

impl Cores for NoCores {
    type Core = Absent;

    fn integrated(&self) -> Vec<String> {
        Vec::new()
    }

    fn playback_measured(&self) -> bool {
        false
    }

    fn wire_len(&self, msg: &Absent) -> u32 {
        match *msg {}
    }

    fn spawn(&mut self, _info: &NodeInfo<'_>) -> Option<Absent> {
        None
    }

    fn commands(
        &mut self,
        _now: Time,
        _node: u32,
        _action: Listen,
        _out: &mut Vec<Feedback<Self>>,
    ) {
    }

    fn observe(
        &mut self,
        _now: Time,
        _node: u32,
        event: Absent,
        _stats: &mut PlaybackStats,
        _feedback: &mut Vec<Feedback<Self>>,
    ) {
        match event {}
    }
}
