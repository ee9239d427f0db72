//! A tiny in-test network for the core's tests: cores addressed by `NodeId`, a virtual clock,
//! per-link latency and per-node upload bandwidth (a node's responses queue on its uplink), a
//! disk of chunk bytes per node, and an optional malicious node. No sockets, no threads: a heap
//! of events ordered by (time, sequence), like the simulator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use shoal_protocol::wire::{ChunkRequest, ChunkResponse};
use shoal_protocol::{ChunkId, ChunkInfo, Core, Input, Manifest, NodeId, Output, Time, TrackId};

use super::PeerEvent;
use super::{
    ChunkMsg, ChunkServer, Item, PeerCommand, PeerConfig, PeerCore, SchedulerCommand,
    SchedulerEvent, ServerCommand, ServerConfig, ServerEvent,
};

/// A track made of pseudo-random chunk bytes.
pub(crate) struct TestTrack {
    pub id: TrackId,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub chunks: Vec<Vec<u8>>,
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// `n` chunks: a 0.5 s first chunk of 2,000 bytes, then 5 s chunks of `len` bytes.
pub(crate) fn make_track(seed: u64, n: usize, len: usize) -> TestTrack {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunks = Vec::new();
    let mut infos = Vec::new();
    let mut start = 0u64;
    for i in 0..n {
        let (l, samples) = if i == 0 {
            (2_000, 24_000)
        } else {
            (len, 240_000)
        };
        let bytes: Vec<u8> = (0..l).map(|_| xorshift(&mut state) as u8).collect();
        infos.push(ChunkInfo {
            id: ChunkId::of(&bytes),
            len: l as u32,
            start,
            samples,
        });
        start += u64::from(samples);
        chunks.push(bytes);
    }
    let manifest = Manifest::new(2, 0, start, infos).expect("valid test manifest");
    let manifest_bytes = manifest.encode();
    TestTrack {
        id: TrackId::of(&manifest_bytes),
        manifest,
        manifest_bytes,
        chunks,
    }
}

pub(crate) enum Role {
    Listener(Box<PeerCore>),
    Server(Box<ChunkServer>),
    /// Answers every chunk request at once with garbage.
    Evil,
}

pub(crate) struct Node {
    pub role: Role,
    pub chunks: BTreeMap<ChunkId, Vec<u8>>,
    pub manifests: BTreeMap<TrackId, Vec<u8>>,
    /// Upload bandwidth in bytes/s.
    pub up: f64,
    wake: Time,
    /// Responses waiting for the uplink; a `Cancel` removes its response from here (as a
    /// QUIC stream reset drops unsent bytes), the one being transmitted goes on.
    uplink: VecDeque<(NodeId, ChunkMsg)>,
    uplink_busy: bool,
    /// Download bandwidth in bytes/s (unlimited unless set): arriving messages pass the
    /// downlink one after another, first come first served.
    down: f64,
    /// When the downlink finishes what it is receiving.
    down_free: Time,
}

enum Local {
    Peer(PeerCommand),
    Server(ServerCommand),
}

enum Ev {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: ChunkMsg,
    },
    /// Through the receiver's downlink.
    Received {
        from: NodeId,
        to: NodeId,
        msg: ChunkMsg,
    },
    Wake(NodeId, Time),
    TxDone {
        from: NodeId,
        to: NodeId,
        msg: ChunkMsg,
    },
    Local(NodeId, Local),
    /// The driver of the first node reports the second lost (closed, or never dialled).
    Lost(NodeId, NodeId),
}

/// One message as sent, for assertions.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub at: Time,
    pub from: NodeId,
    pub to: NodeId,
    pub msg: ChunkMsg,
}

pub(crate) struct Net {
    pub now: Time,
    pub nodes: BTreeMap<NodeId, Node>,
    pub latency: BTreeMap<(NodeId, NodeId), Duration>,
    pub default_latency: Duration,
    heap: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    /// Listener events, in order.
    pub log: Vec<(Time, NodeId, PeerEvent)>,
    /// Every message sent (chunk bytes included).
    pub sent: Vec<Sent>,
    /// Most requests seen in flight from any listener to one node (checked after every
    /// input), by node.
    pub max_in_flight: BTreeMap<NodeId, usize>,
}

impl Net {
    pub fn new() -> Self {
        Self {
            now: Time::ZERO,
            nodes: BTreeMap::new(),
            latency: BTreeMap::new(),
            default_latency: Duration::from_millis(20),
            heap: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            log: Vec::new(),
            sent: Vec::new(),
            max_in_flight: BTreeMap::new(),
        }
    }

    fn node(role: Role, up: f64) -> Node {
        Node {
            role,
            chunks: BTreeMap::new(),
            manifests: BTreeMap::new(),
            up,
            wake: Time::NEVER,
            uplink: VecDeque::new(),
            uplink_busy: false,
            down: f64::INFINITY,
            down_free: Time::ZERO,
        }
    }

    /// Limits `id`'s download bandwidth to `bytes_per_s`.
    pub fn set_downlink(&mut self, id: NodeId, bytes_per_s: f64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.down = bytes_per_s;
        }
    }

    /// Symmetric one-way latency between `a` and `b`.
    pub fn set_latency(&mut self, a: NodeId, b: NodeId, ms: u64) {
        self.latency.insert((a, b), Duration::from_millis(ms));
        self.latency.insert((b, a), Duration::from_millis(ms));
    }

    pub fn add_listener(&mut self, id: NodeId, config: PeerConfig, origin: Option<NodeId>) {
        let mut core = PeerCore::new(config);
        core.handle_input(
            self.now,
            Input::Command(PeerCommand::Fetch(SchedulerCommand::SetOrigin(origin))),
        );
        self.nodes
            .insert(id, Self::node(Role::Listener(Box::new(core)), 1e6));
        self.flush(id);
    }

    /// A seeding server holding all of `tracks`.
    pub fn add_server(&mut self, id: NodeId, config: ServerConfig, up: f64, tracks: &[&TestTrack]) {
        let mut node = Self::node(Role::Server(Box::new(ChunkServer::new(config))), up);
        for t in tracks {
            node.manifests.insert(t.id, t.manifest_bytes.clone());
            for c in &t.chunks {
                node.chunks.insert(ChunkId::of(c), c.clone());
            }
        }
        self.nodes.insert(id, node);
        for t in tracks {
            self.server_cmd_now(
                id,
                ServerCommand::Track {
                    track: t.id,
                    manifest: std::sync::Arc::new(t.manifest.clone()),
                },
            );
            for c in &t.manifest.chunks {
                self.server_cmd_now(
                    id,
                    ServerCommand::Hold {
                        chunk: c.id,
                        len: c.len,
                    },
                );
            }
        }
    }

    pub fn add_evil(&mut self, id: NodeId, up: f64) {
        self.nodes.insert(id, Self::node(Role::Evil, up));
    }

    fn server_cmd_now(&mut self, id: NodeId, c: ServerCommand) {
        self.feed(id, Input::Command(Local::Server(c)));
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// Schedules a command to a listener at `at`.
    pub fn command_at(&mut self, at: Time, id: NodeId, c: SchedulerCommand) {
        self.push(at, Ev::Local(id, Local::Peer(PeerCommand::Fetch(c))));
    }

    /// Tells `id` at `at` that `lost` is gone, as a driver does when a connection closes or
    /// a dial fails.
    pub fn disconnect_at(&mut self, at: Time, id: NodeId, lost: NodeId) {
        self.push(at, Ev::Lost(id, lost));
    }

    /// Delivers `msg` from `from` (which need not be a node) to `to` at `at`.
    pub fn deliver_at(&mut self, at: Time, from: NodeId, to: NodeId, msg: ChunkMsg) {
        self.push(at, Ev::Deliver { from, to, msg });
    }

    /// Schedules a server command at `at`.
    pub fn server_command_at(&mut self, at: Time, id: NodeId, c: ServerCommand) {
        self.push(at, Ev::Local(id, Local::Server(c)));
    }

    fn feed(&mut self, id: NodeId, input: Input<ChunkMsg, Local>) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        match &mut node.role {
            Role::Listener(core) => {
                let input = match input {
                    Input::Command(Local::Peer(c)) => Input::Command(c),
                    Input::Command(Local::Server(c)) => Input::Command(PeerCommand::Serve(c)),
                    Input::Message { from, msg } => Input::Message { from, msg },
                    Input::Timeout => Input::Timeout,
                    Input::Connected(n) => Input::Connected(n),
                    Input::Disconnected(n) => Input::Disconnected(n),
                };
                core.handle_input(now, input);
            }
            Role::Server(core) => {
                let input = match input {
                    Input::Command(Local::Server(c)) => Input::Command(c),
                    Input::Command(Local::Peer(_)) => return,
                    Input::Message { from, msg } => Input::Message { from, msg },
                    Input::Timeout => Input::Timeout,
                    Input::Connected(n) => Input::Connected(n),
                    Input::Disconnected(n) => Input::Disconnected(n),
                };
                core.handle_input(now, input);
            }
            Role::Evil => {
                if let Input::Message {
                    from,
                    msg: ChunkMsg::Request(r),
                } = input
                {
                    let resp = match r {
                        ChunkRequest::GetChunk { request, .. } => ChunkResponse::Chunk {
                            request,
                            bytes: vec![0xee; 3000],
                        },
                        ChunkRequest::GetManifest { request, .. }
                        | ChunkRequest::QueryHave { request, .. } => {
                            ChunkResponse::NotHave { request }
                        }
                        ChunkRequest::Cancel { request } => ChunkResponse::Cancelled { request },
                    };
                    self.transmit(id, from, ChunkMsg::Response(resp));
                }
                return;
            }
        }
        self.flush(id);
    }

    fn poll(&mut self, id: NodeId) -> Option<Output<ChunkMsg, PeerEvent>> {
        let node = self.nodes.get_mut(&id)?;
        Some(match &mut node.role {
            Role::Listener(core) => core.poll_output(),
            Role::Server(core) => match core.poll_output() {
                Output::Send { to, msg } => Output::Send { to, msg },
                Output::Event(e) => Output::Event(PeerEvent::Serve(e)),
                Output::Timeout(t) => Output::Timeout(t),
            },
            Role::Evil => Output::Timeout(Time::NEVER),
        })
    }

    fn flush(&mut self, id: NodeId) {
        while let Some(out) = self.poll(id) {
            match out {
                Output::Send { to, msg } => self.transmit(id, to, msg),
                Output::Event(e) => self.on_event(id, e),
                Output::Timeout(t) => {
                    let Some(node) = self.nodes.get_mut(&id) else {
                        return;
                    };
                    if t != Time::NEVER && t != node.wake {
                        node.wake = t;
                        let at = t.max(self.now);
                        self.push(at, Ev::Wake(id, t));
                    }
                    break;
                }
            }
        }
        self.check_invariants(id);
    }

    fn check_invariants(&mut self, id: NodeId) {
        let Some(Node {
            role: Role::Listener(core),
            ..
        }) = self.nodes.get(&id)
        else {
            return;
        };
        let s = core.scheduler();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for n in ids {
            let k = s.in_flight(&n);
            let e = self.max_in_flight.entry(n).or_insert(0);
            *e = (*e).max(k);
        }
    }

    fn on_event(&mut self, id: NodeId, e: PeerEvent) {
        let now = self.now;
        let disk = Duration::from_millis(1);
        match &e {
            PeerEvent::Fetch(SchedulerEvent::ReadCache { chunk, .. }) => {
                let bytes = self
                    .nodes
                    .get(&id)
                    .and_then(|n| n.chunks.get(chunk).cloned());
                // Tests corrupt these maps on purpose: the core must check.
                let c = SchedulerCommand::CacheData {
                    chunk: *chunk,
                    bytes,
                    verified: false,
                };
                self.command_at(now + disk, id, c);
            }
            PeerEvent::Fetch(SchedulerEvent::ChunkReady {
                chunk,
                bytes,
                store: true,
                ..
            }) => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.chunks.insert(*chunk, bytes.clone());
                }
            }
            PeerEvent::Fetch(SchedulerEvent::ManifestReady { track, bytes }) => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.manifests.insert(*track, bytes.clone());
                }
            }
            PeerEvent::Fetch(SchedulerEvent::Evict(chunk))
            | PeerEvent::Serve(ServerEvent::Corrupt(Item::Chunk(chunk))) => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.chunks.remove(chunk);
                }
            }
            PeerEvent::Serve(ServerEvent::Load { to, request, item }) => {
                let bytes = self.nodes.get(&id).and_then(|n| match item {
                    Item::Chunk(c) => n.chunks.get(c).cloned(),
                    Item::Manifest(t) => n.manifests.get(t).cloned(),
                });
                let c = ServerCommand::Loaded {
                    to: *to,
                    request: *request,
                    bytes,
                    verified: false,
                };
                self.server_command_at(now + disk, id, c);
            }
            _ => {}
        }
        if matches!(
            self.nodes.get(&id).map(|n| &n.role),
            Some(Role::Listener(_))
        ) {
            self.log.push((now, id, e));
        }
    }

    /// Queues `msg` on `from`'s uplink; it leaves after the messages before it, takes
    /// size ÷ bandwidth to transmit, then the link's latency.
    fn transmit(&mut self, from: NodeId, to: NodeId, msg: ChunkMsg) {
        self.sent.push(Sent {
            at: self.now,
            from,
            to,
            msg: msg.clone(),
        });
        let Some(node) = self.nodes.get_mut(&from) else {
            return;
        };
        node.uplink.push_back((to, msg));
        if !node.uplink_busy {
            self.start_next(from);
        }
    }

    fn start_next(&mut self, from: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&from) else {
            return;
        };
        let Some((to, msg)) = node.uplink.pop_front() else {
            node.uplink_busy = false;
            return;
        };
        node.uplink_busy = true;
        let tx = Duration::from_secs_f64(msg.wire_len() as f64 / node.up.max(1.0));
        self.push(now + tx, Ev::TxDone { from, to, msg });
    }

    fn tx_done(&mut self, from: NodeId, to: NodeId, msg: ChunkMsg) {
        let latency = self
            .latency
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_latency);
        let is_server = self
            .nodes
            .get(&from)
            .is_some_and(|n| !matches!(n.role, Role::Evil));
        if let (
            true,
            ChunkMsg::Response(
                ChunkResponse::Chunk { request, .. } | ChunkResponse::Manifest { request, .. },
            ),
        ) = (is_server, &msg)
        {
            let c = ServerCommand::Sent {
                to,
                request: *request,
            };
            self.feed(from, Input::Command(Local::Server(c)));
        }
        self.push(self.now + latency, Ev::Deliver { from, to, msg });
        self.start_next(from);
    }

    /// A cancel drops the cancelled response if it has not started transmitting.
    fn drop_queued(&mut self, node: NodeId, requester: NodeId, request: u64) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.uplink.retain(|(to, msg)| {
                !(*to == requester
                    && matches!(msg, ChunkMsg::Response(
                        ChunkResponse::Chunk { request: r, .. } | ChunkResponse::Manifest { request: r, .. }
                    ) if *r == request))
            });
        }
    }

    /// Runs events until `limit` or until `stop` holds.
    pub fn run_until(&mut self, limit: Time, mut stop: impl FnMut(&Net) -> bool) {
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > limit || stop(self) {
                break;
            }
            self.heap.pop();
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.now = self.now.max(at);
            match ev {
                Ev::Deliver { from, to, msg } => {
                    let now = self.now;
                    let done = self.nodes.get_mut(&to).and_then(|n| {
                        n.down.is_finite().then(|| {
                            let tx = msg.wire_len() as f64 / n.down.max(1.0);
                            n.down_free = n.down_free.max(now) + Duration::from_secs_f64(tx);
                            n.down_free
                        })
                    });
                    match done {
                        Some(at) => self.push(at, Ev::Received { from, to, msg }),
                        None => self.push(now, Ev::Received { from, to, msg }),
                    }
                }
                Ev::Received { from, to, msg } => {
                    if let ChunkMsg::Request(ChunkRequest::Cancel { request }) = &msg {
                        self.drop_queued(to, from, *request);
                    }
                    self.feed(to, Input::Message { from, msg });
                }
                Ev::TxDone { from, to, msg } => self.tx_done(from, to, msg),
                Ev::Wake(id, t) => {
                    let due = self.nodes.get(&id).is_some_and(|n| n.wake == t);
                    if due {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.wake = Time::NEVER;
                        }
                        self.feed(id, Input::Timeout);
                    }
                }
                Ev::Local(id, l) => self.feed(id, Input::Command(l)),
                Ev::Lost(id, lost) => self.feed(id, Input::Disconnected(lost)),
            }
        }
    }

    pub fn listener(&self, id: NodeId) -> &PeerCore {
        match self.nodes.get(&id).map(|n| &n.role) {
            Some(Role::Listener(c)) => c,
            _ => panic!("{id:?} is not a listener"),
        }
    }

    #[allow(dead_code)]
    pub fn server(&self, id: NodeId) -> &ChunkServer {
        match self.nodes.get(&id).map(|n| &n.role) {
            Some(Role::Server(c)) => c,
            _ => panic!("{id:?} is not a server"),
        }
    }

    /// Listener events of `id`.
    pub fn events(&self, id: NodeId) -> impl Iterator<Item = (Time, &SchedulerEvent)> {
        self.log.iter().filter_map(move |(t, n, e)| match e {
            PeerEvent::Fetch(s) if *n == id => Some((*t, s)),
            _ => None,
        })
    }

    /// Finished plays of `id`.
    pub fn finished(&self, id: NodeId) -> Vec<super::PlayStats> {
        self.events(id)
            .filter_map(|(_, e)| match e {
                SchedulerEvent::TrackFinished(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Messages sent from `from` to `to`.
    pub fn sent_between(&self, from: NodeId, to: NodeId) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(move |s| s.from == from && s.to == to)
    }
}
