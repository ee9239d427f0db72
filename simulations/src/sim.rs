//! Owns one simulation run: builds the population (regions, NAT, bandwidth, super-peer
//! attachment), drives every node's core through the sans-IO contract from the event heap,
//! runs the churn and listening models, injects faults, samples the time series and produces
//! the summary. Single-threaded and deterministic: same scenario + seed ⇒ same trace hash.

use std::time::Instant;

use shoal_protocol::{Core, Input, NodeId, Output, Time};

use crate::cores::{Cores, Feedback, Listen, NodeInfo};
use crate::engine::{Engine, Ev};
use crate::net::{Link, Nat, NetModel, Role};
use crate::rng::{Rng, Zipf};
use crate::rtt::RegionMatrix;
use crate::scenario::{FaultKind, Scenario};
use crate::stats::{PlaybackStats, Sample, Summary, SuperPeerLoad, WorkloadStats};

const SESSION_START: u8 = 0;
const SESSION_END: u8 = 1;
const NEXT_PLAY: u8 = 2;
const SAMPLE: u8 = 3;
const FAULT: u8 = 4;
const FAULT_END: u8 = 5;
const DRIVER_TIMER: u8 = 6;

/// Per-node driver state besides its link: the core and its timer.
///
/// A core moves its timer often (every request sets a deadline). Each move used to push a
/// heap entry and leave the old one to pop as a no-op; now a move to a later time pushes
/// nothing while an earlier entry is queued: that entry, when it pops, re-arms at the
/// wanted time with the sequence number reserved when the timer was set, so the timer fires
/// exactly where a fresh entry would have (same time, same place among equal times).
#[derive(Debug)]
struct Slot<C> {
    core: Option<C>,
    /// When the core wants its timeout (`u64::MAX`: never), as it said it.
    timer_at: u64,
    /// `timer_at` clamped to the time it was set (a deadline already past is due then).
    timer_due: u64,
    /// The sequence number reserved when the timer was set.
    timer_seq: u64,
    /// Generation of the queued entry that counts; older entries are void.
    timer_gen: u32,
    /// Time of that entry, if one is queued.
    queued: Option<u64>,
}

impl<C> Slot<C> {
    /// Voids the timer and any queued entry (the process is gone or restarted).
    fn clear_timer(&mut self) {
        self.timer_gen = self.timer_gen.wrapping_add(1);
        self.timer_at = u64::MAX;
        self.queued = None;
    }
}

/// Per-listener workload state.
#[derive(Debug, Clone, Copy, Default)]
struct Listener {
    online: bool,
    generation: u32,
    next: Option<u32>,
    /// The last [`RECENT`] tracks played (ring), for `listening.replay_share`.
    recent: [u32; RECENT],
    recent_len: u8,
    recent_pos: u8,
}

/// Tracks a listener remembers for replays.
const RECENT: usize = 16;

impl Listener {
    fn remember(&mut self, track: u32) {
        self.recent[self.recent_pos as usize] = track;
        self.recent_pos = ((self.recent_pos as usize + 1) % RECENT) as u8;
        self.recent_len = (self.recent_len as usize + 1).min(RECENT) as u8;
    }

    fn replay(&self, rng: &mut Rng) -> Option<u32> {
        (self.recent_len > 0).then(|| self.recent[rng.below(u64::from(self.recent_len)) as usize])
    }
}

/// Outcome of a run: the summary plus the series and samples for plots.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// What goes to `summary.json`.
    pub summary: Summary,
    /// Time series rows.
    pub series: Vec<Sample>,
    /// Sorted first-audio latencies (ms), empty until measured.
    pub latencies_ms: Vec<f32>,
    /// Plays per popularity rank bucket (rank 1, 2–3, 4–7, ...): `(first rank, last rank,
    /// plays)`.
    pub rank_plays: Vec<(u64, u64, u64)>,
}

/// One run of a scenario with a core set.
pub struct World<C: Cores> {
    s: Scenario,
    seed: u64,
    cores: C,
    engine: Engine<crate::cores::Msg<C>>,
    net: NetModel,
    links: Vec<Link>,
    slots: Vec<Slot<C::Core>>,
    listeners: Vec<Listener>,
    /// Population building.
    rng: Rng,
    /// Link jitter and loss.
    net_rng: Rng,
    /// Sessions (separate streams keep churn identical when listening parameters vary).
    churn_rng: Rng,
    /// Track choices, skips, gaps.
    listen_rng: Rng,
    zipf: Zipf,
    peers: u32,
    sp_range: (u32, u32),
    origin_range: (u32, u32),
    tracker: u32,
    /// Super-peers by region, nearest first.
    sp_by_region: Vec<Vec<u32>>,
    stats: PlaybackStats,
    work: WorkloadStats,
    online: u64,
    interval_plays: u64,
    interval_skips: u64,
    last_origin_tx: u64,
    last_sp_tx: u64,
    series: Vec<Sample>,
    rank_counts: Vec<u64>,
    misaddressed: u64,
    /// Driver feedback waiting to be applied: (node, feedback).
    pending_feedback: std::collections::VecDeque<(u32, Feedback<C>)>,
    /// Scratch buffer for one event's feedback.
    feedback: Vec<Feedback<C>>,
    /// When building started (wall_s covers setup and run).
    created: Instant,
    /// Delayed driver commands waiting for their `Ev::Local`.
    local_cmds: crate::engine::Slab<crate::cores::Cmd<C>>,
}

impl<C: Cores> std::fmt::Debug for World<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("scenario", &self.s.run.name)
            .field("seed", &self.seed)
            .field("nodes", &self.links.len())
            .field("now", &self.engine.now())
            .field("events", &self.engine.dispatched())
            .finish_non_exhaustive()
    }
}

fn bps_of_mbps(m: f64) -> f32 {
    (m * 1e6 / 8.0).max(1.0) as f32
}

impl<C: Cores> World<C> {
    /// Builds the population for `s` with `seed`.
    pub fn new(s: &Scenario, seed: u64, cores: C) -> Self {
        let created = Instant::now();
        let regions = RegionMatrix::for_scenario(s);
        let p = &s.population;
        let peers = p.peers;
        let sp0 = peers;
        let or0 = sp0 + p.superpeers;
        let tracker = or0 + p.origins;
        let n = tracker + 1;
        let mut rng = Rng::new(seed, 1);
        let net_rng = Rng::new(seed, 2);
        // Peers: region by weight, NAT by shares, access latency and bandwidth by distribution.
        let wsum: f64 = p.regions.iter().map(|r| r.weight).sum();
        let region_idx: Vec<u16> = p
            .regions
            .iter()
            .map(|r| regions.index(&r.country).unwrap_or(0))
            .collect();
        let server_region = regions.index(&p.server_region).unwrap_or(0);
        let mut links = Vec::with_capacity(n as usize);
        for _ in 0..peers {
            let mut x = rng.unit() * wsum;
            let mut region = region_idx[region_idx.len() - 1];
            for (r, ri) in p.regions.iter().zip(&region_idx) {
                if x < r.weight {
                    region = *ri;
                    break;
                }
                x -= r.weight;
            }
            let u = rng.unit();
            let nat = if u < s.nat.open {
                Nat::Open
            } else if u < s.nat.open + s.nat.cone {
                Nat::Cone
            } else {
                Nat::Symmetric
            };
            let access_us = (s.latency.access_ms.sample(&mut rng) * 1000.0).min(1e7) as u32;
            let down = s.bandwidth.peer_down_mbps.sample(&mut rng).max(0.064);
            let up = down * s.bandwidth.peer_up_ratio;
            links.push(Link::new(
                Role::Peer,
                region,
                nat,
                access_us,
                bps_of_mbps(up),
                bps_of_mbps(down),
            ));
        }
        let server_access = (s.latency.server_access_ms * 1000.0) as u32;
        for i in 0..p.superpeers {
            let region = if p.superpeer_regions.is_empty() {
                // Spread over the peers' regions in proportion to their weights.
                let mut x = (f64::from(i) + 0.5) / f64::from(p.superpeers) * wsum;
                let mut region = region_idx[region_idx.len() - 1];
                for (r, ri) in p.regions.iter().zip(&region_idx) {
                    if x < r.weight {
                        region = *ri;
                        break;
                    }
                    x -= r.weight;
                }
                region
            } else {
                let c = &p.superpeer_regions[i as usize % p.superpeer_regions.len()];
                regions.index(c).unwrap_or(server_region)
            };
            let bw = bps_of_mbps(s.bandwidth.superpeer_mbps);
            links.push(Link::new(
                Role::SuperPeer,
                region,
                Nat::Open,
                server_access,
                bw,
                bw,
            ));
        }
        for _ in 0..p.origins {
            let bw = bps_of_mbps(s.bandwidth.origin_mbps);
            links.push(Link::new(
                Role::Origin,
                server_region,
                Nat::Open,
                server_access,
                bw,
                bw,
            ));
        }
        let bw = bps_of_mbps(s.bandwidth.origin_mbps);
        links.push(Link::new(
            Role::Tracker,
            server_region,
            Nat::Open,
            server_access,
            bw,
            bw,
        ));

        let net = NetModel {
            regions,
            jitter_us: s.latency.jitter_ms * 1000.0,
            loss: s.latency.loss,
            hole_punch_success: s.nat.hole_punch_success,
            seed: seed ^ 0x6e61_7470_756e_6368,
            dial_timeout_us: (s.latency.dial_timeout_ms * 1000.0) as u64,
        };
        // Super-peers nearest first, per region.
        let nregions = net.regions.names.len();
        let sp_by_region: Vec<Vec<u32>> = (0..nregions as u16)
            .map(|r| {
                let mut v: Vec<u32> = (sp0..or0).collect();
                v.sort_by_key(|&sp| (net.regions.rtt_us(r, links[sp as usize].region), sp));
                v
            })
            .collect();
        let zipf = Zipf::new(u64::from(s.catalog.tracks), s.catalog.zipf_alpha);
        let tracked = (s.catalog.tracks as usize).min(1 << 20);
        let mut w = Self {
            s: s.clone(),
            seed,
            cores,
            engine: Engine::new(),
            net,
            links,
            slots: Vec::new(),
            listeners: vec![Listener::default(); peers as usize],
            rng,
            net_rng,
            churn_rng: Rng::new(seed, 3),
            listen_rng: Rng::new(seed, 4),
            zipf,
            peers,
            sp_range: (sp0, or0),
            origin_range: (or0, tracker),
            tracker,
            sp_by_region,
            stats: PlaybackStats::default(),
            work: WorkloadStats::default(),
            online: 0,
            interval_plays: 0,
            interval_skips: 0,
            last_origin_tx: 0,
            last_sp_tx: 0,
            series: Vec::new(),
            rank_counts: vec![0; tracked + 1],
            misaddressed: 0,
            pending_feedback: std::collections::VecDeque::new(),
            feedback: Vec::new(),
            created,
            local_cmds: crate::engine::Slab::default(),
        };
        for i in 0..peers {
            w.attach(i);
        }
        // Cores.
        let origins: Vec<NodeId> = (or0..tracker)
            .map(|i| NodeId::from_index(u64::from(i)))
            .collect();
        let mut slots = Vec::with_capacity(n as usize);
        let mut history = Vec::new();
        for i in 0..n {
            let link = &w.links[i as usize];
            let sps: Vec<NodeId> = w.sp_by_region[link.region as usize]
                .iter()
                .map(|&x| NodeId::from_index(u64::from(x)))
                .collect();
            history.clear();
            let mut cache_bytes = 0;
            if link.role == Role::Peer {
                cache_bytes = (w.s.cache.size_mb.sample(&mut w.rng) * 1e6) as u64;
                if w.cores.wants_history() {
                    // Past listening follows the same model: Zipf, or a replay of one's own.
                    let mut past = Listener::default();
                    for _ in 0..w.s.cache.history_plays {
                        let share = w.s.listening.replay_share;
                        let mut t = None;
                        if share > 0.0 && w.rng.chance(share) {
                            t = past.replay(&mut w.rng);
                        }
                        let t = t.unwrap_or_else(|| w.zipf.sample(&mut w.rng) as u32 - 1);
                        past.remember(t);
                        history.push(t);
                    }
                    let l = &mut w.listeners[i as usize];
                    l.recent = past.recent;
                    l.recent_len = past.recent_len;
                    l.recent_pos = past.recent_pos;
                }
            }
            let upload_cap_bps = f64::from(link.up_bps)
                * if link.role == Role::Peer {
                    w.s.bandwidth.peer_upload_share
                } else {
                    1.0
                };
            let info = NodeInfo {
                id: NodeId::from_index(u64::from(i)),
                role: link.role,
                region: &w.net.regions.names[link.region as usize],
                nat: link.nat,
                upload_cap_bps,
                cache_bytes,
                history: &history,
                tracker: NodeId::from_index(u64::from(tracker)),
                origins: &origins,
                superpeers: &sps,
                seed: crate::rng::mix64(seed ^ (u64::from(i) << 20) ^ 0xC0DE),
            };
            slots.push(Slot {
                core: w.cores.spawn(&info),
                timer_at: u64::MAX,
                timer_due: u64::MAX,
                timer_seq: 0,
                timer_gen: 0,
                queued: None,
            });
        }
        w.slots = slots;
        w
    }

    /// Attaches peer `i` to the nearest live super-peer (its relay), if any.
    fn attach(&mut self, i: u32) -> u32 {
        let region = self.links[i as usize].region as usize;
        let relay = self.sp_by_region[region]
            .iter()
            .copied()
            .find(|&sp| self.links[sp as usize].up)
            .unwrap_or(u32::MAX);
        self.links[i as usize].relay = relay;
        relay
    }

    /// Runs to the end; `progress(sim_seconds, events)` is called now and then.
    pub fn run(mut self, progress: &mut dyn FnMut(f64, u64)) -> RunOutput {
        let end = Time::from_micros((self.s.run.duration_s * 1e6) as u64);
        self.schedule_initial();
        // Boot every core (its first poll sets its timers and initial messages).
        for i in 0..self.slots.len() as u32 {
            if self.slots[i as usize].core.is_some() {
                self.drain(i);
            }
        }
        // Clients that start offline are not running.
        for i in 0..self.peers {
            if !self.listeners[i as usize].online {
                self.quit(i);
            }
        }
        let mut next_progress = 0u64;
        while let Some(t) = self.engine.peek_time() {
            if t > end {
                break;
            }
            let Some((now, seq, ev)) = self.engine.pop_with_seq() else {
                break;
            };
            self.dispatch(now, seq, ev);
            if self.engine.dispatched() >= next_progress {
                next_progress = self.engine.dispatched() + 100_000;
                progress(now.as_micros() as f64 / 1e6, self.engine.dispatched());
            }
        }
        // The run ends: listeners still online stop, so their plays in progress are reported
        // (TrackFinished) and counted like any other.
        for i in 0..self.peers {
            if self.listeners[i as usize].online {
                self.command(i, Listen::SessionEnd);
            }
        }
        progress(self.s.run.duration_s, self.engine.dispatched());
        let wall_s = self.created.elapsed().as_secs_f64();
        self.finish(wall_s)
    }

    fn schedule_initial(&mut self) {
        // Churn in steady state: online with probability E[on] / (E[on] + E[off]).
        let on = self.s.churn.session_min.mean();
        let off = self.s.churn.offline_min.mean();
        let p_on = if on.is_finite() && off.is_finite() {
            on / (on + off)
        } else {
            0.5
        };
        for i in 0..self.peers {
            let (kind, after_min) = if self.churn_rng.chance(p_on) {
                // Listeners online at the start are somewhere in a track: their next play
                // comes after a uniform fraction of a mean track (no burst at t = 0).
                let mean = self.s.catalog.track_duration_s.mean().min(3600.0);
                let first = self.churn_rng.uniform(0.0, mean);
                self.start_session(i, Time::from_micros((first * 1e6) as u64));
                self.command(i, Listen::SessionStart);
                (
                    SESSION_END,
                    self.s.churn.session_min.sample(&mut self.churn_rng) * self.churn_rng.unit(),
                )
            } else {
                self.links[i as usize].up = false;
                (
                    SESSION_START,
                    self.s.churn.offline_min.sample(&mut self.churn_rng) * self.churn_rng.unit(),
                )
            };
            let at = Time::from_micros((after_min * 60e6) as u64);
            self.engine.schedule(
                at,
                Ev::App {
                    node: i,
                    kind,
                    aux: 0,
                },
            );
        }
        let step = (self.s.run.sample_interval_s * 1e6) as u64;
        self.engine.schedule(
            Time::from_micros(step),
            Ev::App {
                node: 0,
                kind: SAMPLE,
                aux: 0,
            },
        );
        for (i, f) in self.s.faults.iter().enumerate() {
            self.engine.schedule(
                Time::from_micros((f.at_s * 1e6) as u64),
                Ev::App {
                    node: i as u32,
                    kind: FAULT,
                    aux: 0,
                },
            );
        }
    }

    fn dispatch(&mut self, now: Time, seq: u64, ev: Ev) {
        match ev {
            Ev::Deliver { to, from, slot } => {
                let Some(msg) = self.engine.msgs.take(slot) else {
                    return;
                };
                let up = self.links[to as usize].up;
                if !up || self.slots[to as usize].core.is_none() {
                    // The receiver went away while the message was in flight.
                    self.engine
                        .schedule(now, Ev::Disconnected { to: from, peer: to });
                    return;
                }
                let mut to_sender = Vec::new();
                let mut to_receiver = Vec::new();
                self.cores
                    .on_deliver(now, from, to, &msg, &mut to_sender, &mut to_receiver);
                for f in to_receiver {
                    self.apply(to, f);
                }
                if let Some(core) = self.slots[to as usize].core.as_mut() {
                    core.handle_input(
                        now,
                        Input::Message {
                            from: NodeId::from_index(u64::from(from)),
                            msg,
                        },
                    );
                    self.drain(to);
                }
                if self.links[from as usize].up {
                    for f in to_sender {
                        self.apply(from, f);
                    }
                }
            }
            Ev::Timer { node, generation } => {
                let slot = &mut self.slots[node as usize];
                if slot.timer_gen != generation {
                    return;
                }
                slot.queued = None;
                if !self.links[node as usize].up || slot.timer_at == Time::NEVER.as_micros() {
                    return;
                }
                if (slot.timer_due, slot.timer_seq) != (now.as_micros(), seq) {
                    // The timer moved later while this entry was queued: re-arm it where a
                    // fresh entry would have been (see `Slot`).
                    slot.timer_gen = slot.timer_gen.wrapping_add(1);
                    slot.queued = Some(slot.timer_due);
                    let ev = Ev::Timer {
                        node,
                        generation: slot.timer_gen,
                    };
                    self.engine.schedule_with_seq(
                        Time::from_micros(slot.timer_due),
                        slot.timer_seq,
                        ev,
                    );
                    return;
                }
                slot.timer_at = u64::MAX;
                if let Some(core) = slot.core.as_mut() {
                    core.handle_input(now, Input::Timeout);
                    self.drain(node);
                }
            }
            Ev::Disconnected { to, peer } => {
                if !self.links[to as usize].up {
                    return;
                }
                if let Some(core) = self.slots[to as usize].core.as_mut() {
                    core.handle_input(
                        now,
                        Input::Disconnected(NodeId::from_index(u64::from(peer))),
                    );
                    self.drain(to);
                }
            }
            Ev::Local { node, slot } => {
                let Some(cmd) = self.local_cmds.take(slot) else {
                    return;
                };
                if self.links[node as usize].up {
                    self.apply(node, Feedback::Command(cmd));
                }
            }
            Ev::App { node, kind, aux } => self.app(now, node, kind, aux),
        }
    }

    /// Drains node `i`'s outputs, then applies the driver feedback they caused (which may
    /// drain other nodes), until nothing is left.
    fn drain(&mut self, i: u32) {
        self.drain_outputs(i);
        while let Some((node, f)) = self.pending_feedback.pop_front() {
            self.apply_now(node, f);
        }
    }

    /// Applies one feedback item to `node` and drains it (feedback it causes is queued).
    fn apply(&mut self, node: u32, f: Feedback<C>) {
        self.apply_now(node, f);
        while let Some((node, f)) = self.pending_feedback.pop_front() {
            self.apply_now(node, f);
        }
    }

    fn apply_now(&mut self, node: u32, f: Feedback<C>) {
        let now = self.engine.now();
        match f {
            Feedback::Command(cmd) => {
                if let Some(core) = self.slots[node as usize].core.as_mut() {
                    core.handle_input(now, Input::Command(cmd));
                    self.drain_outputs(node);
                }
            }
            Feedback::Send { to, msg } => self.send(node, to, msg),
            Feedback::Later { after_us, cmd } => {
                let slot = self.local_cmds.insert(cmd);
                let at = now + std::time::Duration::from_micros(after_us);
                self.engine.schedule(at, Ev::Local { node, slot });
            }
            Feedback::Timer { after_us, token } => {
                let at = now + std::time::Duration::from_micros(after_us);
                self.engine.schedule(
                    at,
                    Ev::App {
                        node,
                        kind: DRIVER_TIMER,
                        aux: token,
                    },
                );
            }
        }
    }

    /// Puts `msg` from `i` to `to` on the links (or tells `i` the peer is unreachable).
    fn send(&mut self, i: u32, to: NodeId, msg: crate::cores::Msg<C>) {
        let now = self.engine.now();
        let Some(to) = to.index().filter(|&t| t < self.links.len() as u64) else {
            self.misaddressed += 1;
            return;
        };
        let to = to as u32;
        let len = self.cores.wire_len(&msg);
        match self.net.send(
            &mut self.links,
            i,
            to,
            len,
            now.as_micros(),
            &mut self.net_rng,
        ) {
            Some(at) => {
                let slot = self.engine.msgs.insert(msg);
                self.engine
                    .schedule(Time::from_micros(at), Ev::Deliver { to, from: i, slot });
            }
            None => {
                let at = now + std::time::Duration::from_micros(self.net.dial_timeout_us);
                self.engine
                    .schedule(at, Ev::Disconnected { to: i, peer: to });
            }
        }
    }

    /// Drains node `i`'s outputs: sends go over the link model, events to the core set (their
    /// feedback is queued), the final timeout becomes a timer event.
    fn drain_outputs(&mut self, i: u32) {
        let now = self.engine.now();
        loop {
            let Some(core) = self.slots[i as usize].core.as_mut() else {
                return;
            };
            match core.poll_output() {
                Output::Send { to, msg } => self.send(i, to, msg),
                Output::Event(e) => {
                    let mut fb = std::mem::take(&mut self.feedback);
                    self.cores.observe(now, i, e, &mut self.stats, &mut fb);
                    self.pending_feedback.extend(fb.drain(..).map(|f| (i, f)));
                    self.feedback = fb;
                }
                Output::Timeout(t) => {
                    let slot = &mut self.slots[i as usize];
                    if t.as_micros() != slot.timer_at {
                        // Clamped as the engine clamps: a timeout in the past is due now.
                        let at = t.as_micros().max(now.as_micros());
                        slot.timer_at = t.as_micros();
                        slot.timer_due = at;
                        slot.timer_seq = self.engine.reserve_seq();
                        let covered = slot.queued.is_some_and(|q| q <= at);
                        if t != Time::NEVER && !covered {
                            slot.timer_gen = slot.timer_gen.wrapping_add(1);
                            slot.queued = Some(at);
                            self.engine.schedule_with_seq(
                                t,
                                slot.timer_seq,
                                Ev::Timer {
                                    node: i,
                                    generation: slot.timer_gen,
                                },
                            );
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The client of `node` quit: the core set keeps or drops its core.
    fn quit(&mut self, node: u32) {
        if let Some(core) = self.slots[node as usize].core.take() {
            self.slots[node as usize].core = self.cores.quit(node, core);
        }
    }

    fn command(&mut self, node: u32, action: Listen) {
        let mut fb = Vec::new();
        let now = self.engine.now();
        self.cores.commands(now, node, action, &mut fb);
        for f in fb {
            self.apply(node, f);
        }
    }

    fn start_session(&mut self, i: u32, first_play: Time) {
        self.links[i as usize].up = true;
        let l = &mut self.listeners[i as usize];
        l.online = true;
        l.generation = l.generation.wrapping_add(1);
        l.next = None;
        self.online += 1;
        self.work.sessions += 1;
        if self.links[i as usize].relay == u32::MAX
            || !self.links[self.links[i as usize].relay as usize].up
        {
            self.attach(i);
        }
        let generation = self.listeners[i as usize].generation;
        // `first_play` is now, or later for listeners already mid-track when the run starts.
        self.engine.schedule(
            first_play,
            Ev::App {
                node: i,
                kind: NEXT_PLAY,
                aux: generation,
            },
        );
    }

    fn app(&mut self, now: Time, node: u32, kind: u8, aux: u32) {
        match kind {
            SESSION_START => {
                self.start_session(node, now);
                if self.slots[node as usize].core.is_none() {
                    self.slots[node as usize].core = self.cores.restart(now, node);
                    self.drain(node);
                }
                self.command(node, Listen::SessionStart);
                let m = self.s.churn.session_min.sample(&mut self.churn_rng);
                let at = now + std::time::Duration::from_micros((m * 60e6) as u64);
                self.engine.schedule(
                    at,
                    Ev::App {
                        node,
                        kind: SESSION_END,
                        aux: 0,
                    },
                );
            }
            SESSION_END => {
                self.command(node, Listen::SessionEnd);
                self.quit(node);
                self.links[node as usize].up = false;
                let l = &mut self.listeners[node as usize];
                l.online = false;
                l.generation = l.generation.wrapping_add(1);
                self.online -= 1;
                // Its process is gone: pending timers are void.
                self.slots[node as usize].clear_timer();
                let m = self.s.churn.offline_min.sample(&mut self.churn_rng);
                let at = now + std::time::Duration::from_micros((m * 60e6) as u64);
                self.engine.schedule(
                    at,
                    Ev::App {
                        node,
                        kind: SESSION_START,
                        aux: 0,
                    },
                );
            }
            NEXT_PLAY => {
                let l = self.listeners[node as usize];
                if !l.online || l.generation != aux {
                    return;
                }
                let track = l.next.unwrap_or_else(|| self.draw_track(now, node));
                self.listeners[node as usize].remember(track);
                let next = self
                    .listen_rng
                    .chance(self.s.listening.playlist_continuation)
                    .then(|| self.draw_track(now, node));
                self.listeners[node as usize].next = next;
                self.work.plays += 1;
                self.interval_plays += 1;
                if next.is_some() {
                    self.work.predictable_next += 1;
                }
                if track >= self.s.catalog.tracks {
                    self.work.release_plays += 1;
                } else if let Some(c) = self.rank_counts.get_mut(track as usize) {
                    *c += 1;
                }
                let dur = self.track_duration_s(track);
                let listen = self.listen_time_s(dur);
                if listen < dur {
                    self.work.skips += 1;
                    self.interval_skips += 1;
                }
                self.command(node, Listen::Play { track, next });
                let gap = self.s.listening.gap_s.sample(&mut self.listen_rng);
                let at =
                    now + std::time::Duration::from_micros(((listen + gap) * 1e6).max(1e5) as u64);
                self.engine.schedule(
                    at,
                    Ev::App {
                        node,
                        kind: NEXT_PLAY,
                        aux,
                    },
                );
            }
            SAMPLE => {
                self.sample(now);
                let step = (self.s.run.sample_interval_s * 1e6) as u64;
                self.engine.schedule(
                    now + std::time::Duration::from_micros(step),
                    Ev::App {
                        node: 0,
                        kind: SAMPLE,
                        aux: 0,
                    },
                );
            }
            FAULT | FAULT_END => self.fault(now, node as usize, kind == FAULT),
            DRIVER_TIMER => {
                if !self.links[node as usize].up {
                    return;
                }
                let mut fb = Vec::new();
                self.cores.on_timer(now, node, aux, &mut fb);
                for f in fb {
                    self.apply(node, f);
                }
            }
            _ => {}
        }
    }

    fn fault(&mut self, now: Time, idx: usize, start: bool) {
        let f = self.s.faults[idx].clone();
        let (lo, hi) = match f.kind {
            FaultKind::SuperpeerCrash => self.sp_range,
            FaultKind::OriginOutage => self.origin_range,
        };
        let count = ((f64::from(hi - lo) * f.fraction).round() as u32).min(hi - lo);
        for node in lo..lo + count {
            self.links[node as usize].up = !start;
            let slot = &mut self.slots[node as usize];
            slot.clear_timer();
            if start && f.kind == FaultKind::SuperpeerCrash {
                // A crash loses the process state; a restart builds a fresh core.
                slot.core = None;
            }
        }
        if start && f.kind == FaultKind::SuperpeerCrash {
            // Leaves of crashed super-peers lose their relay and are told.
            for p in 0..self.peers {
                let r = self.links[p as usize].relay;
                if r != u32::MAX && (lo..lo + count).contains(&r) {
                    self.attach(p);
                    if self.links[p as usize].up {
                        self.engine
                            .schedule(now, Ev::Disconnected { to: p, peer: r });
                    }
                }
            }
        }
        if !start && f.kind == FaultKind::SuperpeerCrash {
            for node in lo..lo + count {
                self.respawn(node);
            }
        }
        if start && let Some(r) = f.restart_after_s {
            let at = now + std::time::Duration::from_micros((r * 1e6) as u64);
            self.engine.schedule(
                at,
                Ev::App {
                    node: idx as u32,
                    kind: FAULT_END,
                    aux: 0,
                },
            );
        }
    }

    fn respawn(&mut self, node: u32) {
        let link = &self.links[node as usize];
        let sps: Vec<NodeId> = self.sp_by_region[link.region as usize]
            .iter()
            .map(|&x| NodeId::from_index(u64::from(x)))
            .collect();
        let origins: Vec<NodeId> = (self.origin_range.0..self.origin_range.1)
            .map(|i| NodeId::from_index(u64::from(i)))
            .collect();
        let info = NodeInfo {
            id: NodeId::from_index(u64::from(node)),
            role: link.role,
            region: &self.net.regions.names[link.region as usize],
            nat: link.nat,
            upload_cap_bps: f64::from(link.up_bps),
            cache_bytes: 0,
            history: &[],
            tracker: NodeId::from_index(u64::from(self.tracker)),
            origins: &origins,
            superpeers: &sps,
            seed: crate::rng::mix64(self.seed ^ (u64::from(node) << 20) ^ 0x0BAD),
        };
        self.slots[node as usize].core = self.cores.spawn(&info);
        self.drain(node);
    }

    fn draw_track(&mut self, now: Time, node: u32) -> u32 {
        let t = now.as_micros() as f64 / 1e6;
        for (i, r) in self.s.catalog.releases.iter().enumerate() {
            if t >= r.at_s && t < r.at_s + r.window_s && self.listen_rng.chance(r.play_share) {
                return self.s.catalog.tracks + i as u32;
            }
        }
        let share = self.s.listening.replay_share;
        if share > 0.0
            && self.listen_rng.chance(share)
            && let Some(t) = self.listeners[node as usize].replay(&mut self.listen_rng)
        {
            return t;
        }
        self.zipf.sample(&mut self.listen_rng) as u32 - 1
    }

    /// Duration of a track, seconds: a fixed draw per track (no per-track storage).
    pub fn track_duration_s(&self, track: u32) -> f64 {
        crate::catalog::track_duration_s(self.seed, &self.s.catalog.track_duration_s, track)
    }

    /// How long the listener stays on a track of `dur` seconds (skip model).
    fn listen_time_s(&mut self, dur: f64) -> f64 {
        let l = &self.s.listening;
        let r = &mut self.listen_rng;
        let u = r.unit();
        if u < l.skip_within_5s {
            r.uniform(0.5_f64.min(dur), 5.0_f64.min(dur))
        } else if u < l.skip_within_30s {
            r.uniform(5.0_f64.min(dur), 30.0_f64.min(dur))
        } else if u < l.skip_before_end {
            r.uniform(30.0_f64.min(dur), dur)
        } else {
            dur
        }
    }

    fn sample(&mut self, now: Time) {
        let step = self.s.run.sample_interval_s;
        let origin_tx: u64 = (self.origin_range.0..self.origin_range.1)
            .map(|i| self.links[i as usize].tx_bytes)
            .sum();
        let sp_tx: u64 = (self.sp_range.0..self.sp_range.1)
            .map(|i| self.links[i as usize].tx_bytes + self.links[i as usize].relayed_bytes)
            .sum();
        let row = Sample {
            t_s: now.as_micros() as f64 / 1e6,
            online_peers: self.online,
            plays: std::mem::take(&mut self.interval_plays),
            skips: std::mem::take(&mut self.interval_skips),
            events: self.engine.dispatched(),
            origin_egress_mbps: (origin_tx - self.last_origin_tx) as f64 * 8.0 / 1e6 / step,
            superpeer_mbps: (sp_tx - self.last_sp_tx) as f64 * 8.0 / 1e6 / step,
            bytes: self.stats.take_interval(),
        };
        self.last_origin_tx = origin_tx;
        self.last_sp_tx = sp_tx;
        self.series.push(row);
    }

    fn finish(self, wall_s: f64) -> RunOutput {
        let measured = self.cores.playback_measured();
        let any_core = !self.cores.integrated().is_empty();
        let (pct, stutter, bytes) = self.stats.summary();
        let mut notes = Vec::new();
        if !measured {
            notes.push(
                "playback statistics (time_to_first_audio_ms, stutter_rate, bytes_by_source, \
                 share_by_source) are null: the peer core (shoal_peer::core) is not integrated \
                 into the simulator yet, and shoal-sim never substitutes a fetch policy of its own"
                    .to_string(),
            );
        }
        if !any_core {
            notes.push(
                "origin_egress_peak_mbps and superpeer_load are null: no role core runs, so no \
                 node sends traffic"
                    .to_string(),
            );
        }
        notes.extend(self.cores.notes());
        if self.misaddressed > 0 {
            notes.push(format!(
                "{} messages to unknown node ids were dropped",
                self.misaddressed
            ));
        }
        let mut work = self.work.clone();
        if !self.series.is_empty() {
            work.mean_online = self
                .series
                .iter()
                .map(|r| r.online_peers as f64)
                .sum::<f64>()
                / self.series.len() as f64;
            work.peak_online = self
                .series
                .iter()
                .map(|r| r.online_peers)
                .max()
                .unwrap_or(0);
        }
        let catalog_plays: u64 = self.rank_counts.iter().sum();
        let top =
            ((f64::from(self.s.catalog.tracks) * 0.12).ceil() as usize).min(self.rank_counts.len());
        if catalog_plays > 0 {
            work.top12pct_play_share =
                self.rank_counts[..top].iter().sum::<u64>() as f64 / catalog_plays as f64;
        }
        let mut rank_plays = Vec::new();
        let mut lo = 1usize;
        while lo <= self.rank_counts.len() {
            let hi = (lo * 2).min(self.rank_counts.len() + 1);
            rank_plays.push((
                lo as u64,
                hi as u64 - 1,
                self.rank_counts[lo - 1..hi - 1].iter().sum(),
            ));
            lo = hi;
        }
        let sps = f64::from(self.s.population.superpeers.max(1));
        let superpeer_load = any_core.then(|| SuperPeerLoad {
            peak_mbps: self
                .series
                .iter()
                .map(|r| r.superpeer_mbps)
                .fold(0.0, f64::max),
            mean_per_superpeer_mbps: self.series.iter().map(|r| r.superpeer_mbps).sum::<f64>()
                / self.series.len().max(1) as f64
                / sps,
            relayed_bytes: (self.sp_range.0..self.sp_range.1)
                .map(|i| self.links[i as usize].relayed_bytes)
                .sum(),
            served_bytes: (self.sp_range.0..self.sp_range.1)
                .map(|i| self.links[i as usize].tx_bytes)
                .sum(),
        });
        let summary = Summary {
            scenario: self.s.run.name.clone(),
            seed: self.seed,
            sets: Vec::new(),
            peers: self.peers,
            superpeers: self.s.population.superpeers,
            duration_s: self.s.run.duration_s,
            cores: self.cores.integrated(),
            time_to_first_audio_ms: if measured { pct } else { None },
            stutter_rate: if measured { stutter } else { None },
            bytes_by_source: measured.then_some(bytes),
            share_by_source: measured.then(|| bytes.shares()),
            origin_egress_peak_mbps: any_core.then(|| {
                self.series
                    .iter()
                    .map(|r| r.origin_egress_mbps)
                    .fold(0.0, f64::max)
            }),
            superpeer_load,
            workload: work,
            events: self.engine.dispatched(),
            trace_hash: self.engine.trace_hash(),
            notes,
            wall_s,
        };
        RunOutput {
            summary,
            series: self.series,
            latencies_ms: if measured {
                self.stats.latencies_sorted()
            } else {
                Vec::new()
            },
            rank_plays,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_ring_keeps_the_last_tracks() {
        let mut l = Listener::default();
        let mut rng = Rng::new(1, 0);
        assert_eq!(l.replay(&mut rng), None);
        for t in 0..40u32 {
            l.remember(t);
        }
        assert_eq!(l.recent_len as usize, RECENT);
        for _ in 0..200 {
            let t = l.replay(&mut rng).expect("remembered");
            assert!((24..40).contains(&t), "{t}");
        }
    }
}
