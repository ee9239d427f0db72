//! Owns the engine benchmark load: [`Traffic`], a synthetic core that sends a small request
//! to a random node on a timer and answers requests with a chunk-sized reply. It exercises the
//! heap, links, NAT relaying, timers and churn at scale to measure events/s and memory per
//! node. It is NOT a Shoal policy and is never used by `shoal-sim run`: it produces no
//! playback statistics.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_protocol::{Core, Input, NodeId, Output, Time};

use crate::cores::{Cores, Feedback, Listen, NodeInfo};
use crate::net::Role;
use crate::rng::Rng;
use crate::stats::PlaybackStats;

/// A benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMsg {
    /// Please send `reply_len` bytes back.
    Request {
        /// Size of the wanted reply.
        reply_len: u32,
    },
    /// The reply.
    Reply {
        /// Its size.
        len: u32,
    },
}

/// The synthetic load core.
#[derive(Debug)]
pub struct Traffic {
    rng: Rng,
    nodes: u64,
    period: Duration,
    next: Time,
    out: VecDeque<Output<TrafficMsg, ()>>,
    active: bool,
}

impl Core for Traffic {
    type Message = TrafficMsg;
    type Command = bool;
    type Event = ();

    fn handle_input(&mut self, now: Time, input: Input<TrafficMsg, bool>) {
        match input {
            Input::Message {
                from,
                msg: TrafficMsg::Request { reply_len },
            } => {
                self.out.push_back(Output::Send {
                    to: from,
                    msg: TrafficMsg::Reply { len: reply_len },
                });
            }
            Input::Message {
                msg: TrafficMsg::Reply { .. },
                ..
            } => self.out.push_back(Output::Event(())),
            Input::Timeout | Input::Command(_) | Input::Connected(_) | Input::Disconnected(_) => {}
        }
        if let Input::Command(on) = input {
            self.active = on;
            self.next = now;
        }
        if self.active && now >= self.next {
            let to = NodeId::from_index(self.rng.below(self.nodes));
            self.out.push_back(Output::Send {
                to,
                msg: TrafficMsg::Request {
                    reply_len: 16 * 1024,
                },
            });
            let jitter =
                Duration::from_micros(self.rng.below(self.period.as_micros() as u64 / 2 + 1));
            self.next = now + self.period + jitter;
        }
    }

    fn poll_output(&mut self) -> Output<TrafficMsg, ()> {
        self.out
            .pop_front()
            .unwrap_or(Output::Timeout(if self.active {
                self.next
            } else {
                Time::NEVER
            }))
    }
}

/// The benchmark core set: peers run [`Traffic`]; other roles answer requests.
#[derive(Debug, Clone, Copy)]
pub struct TrafficCores {
    /// Nodes in the run (targets are drawn among them).
    pub nodes: u64,
    /// Mean request period per peer.
    pub period: Duration,
    /// Replies received (sanity).
    pub replies: u64,
}

impl Cores for TrafficCores {
    type Core = Traffic;

    fn integrated(&self) -> Vec<String> {
        vec!["engine benchmark load (not a Shoal core)".into()]
    }

    fn playback_measured(&self) -> bool {
        false
    }

    fn wire_len(&self, msg: &TrafficMsg) -> u32 {
        match msg {
            TrafficMsg::Request { .. } => 100,
            TrafficMsg::Reply { len } => *len + 32,
        }
    }

    fn spawn(&mut self, info: &NodeInfo<'_>) -> Option<Traffic> {
        Some(Traffic {
            rng: Rng::new(info.seed, 0),
            nodes: self.nodes,
            period: self.period,
            next: Time::NEVER,
            out: VecDeque::new(),
            active: false,
        })
        .filter(|_| info.role != Role::Tracker || self.nodes > 0)
    }

    fn commands(&mut self, _now: Time, _node: u32, action: Listen, out: &mut Vec<Feedback<Self>>) {
        match action {
            Listen::SessionStart => out.push(Feedback::Command(true)),
            Listen::SessionEnd => out.push(Feedback::Command(false)),
            Listen::Play { .. } => {}
        }
    }

    fn observe(
        &mut self,
        _now: Time,
        _node: u32,
        _ev: (),
        _stats: &mut PlaybackStats,
        _feedback: &mut Vec<crate::cores::Feedback<Self>>,
    ) {
        self.replies += 1;
    }
}
