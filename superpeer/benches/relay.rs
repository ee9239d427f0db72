//! Relay benchmark: the real `shoal-superpeer serve` binary (a child process, pinned to core 1
//! with `taskset` when available) relaying for in-process libp2p clients (this process, pinned
//! to core 0), all over QUIC on loopback.
//!
//! 1. Circuit throughput: one peer fetches `RELAY_BENCH_MIB` MiB (default 64) from another as
//!    1 MiB request-response answers, through `/p2p/RELAY/p2p-circuit/p2p/DST` and directly over
//!    QUIC between the same two peers, alternated three times; the ratio is relayed ÷ direct.
//! 2. Capacity: N concurrent relayed streams, each its own circuit carrying one long-lived
//!    substream that writes a 4 KiB chunk every 200 ms (160 kbit/s) for `RELAY_BENCH_SECS`
//!    (default 20) seconds. N ramps (`RELAY_BENCH_STREAMS`, default 50,100,200,500,1000,2000,
//!    3000,4000) until a stream falls behind: a chunk arrives more than 1 s after its scheduled
//!    send time, or a stream does not complete. Circuits are spread over many peers: each source
//!    peer opens up to 25 circuits, to 25 distinct destination peers, each of which holds a
//!    reservation and receives up to 25 circuits (a relay circuit is one (source, destination)
//!    pair, so N streams need N distinct pairs).
//!
//! Run with `nice -n 19 cargo bench -p shoal-superpeer --bench relay`; prints Markdown tables.
//! `RELAY_BENCH_GEN_CORES` (default `0`) and `RELAY_BENCH_GEN_WORKERS` (default 1) place the
//! load generator; the super-peer is always pinned to core 1 alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity::Keypair, noise, relay, yamux};
use tokio::sync::{mpsc, watch};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-superpeer");
/// One chunk of a stream: 4 KiB every 200 ms = 160 kbit/s.
const CHUNK: usize = 4096;
const PERIOD_US: u64 = 200_000;
/// A chunk later than this after its scheduled send time means the stream fell behind.
const LATE_LIMIT_US: u64 = 1_000_000;
/// Circuits per peer at most (both sides).
const FANOUT: usize = 25;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide epoch (every client shares it).
fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn at_us(us: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*EPOCH.get_or_init(Instant::now) + Duration::from_micros(us))
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields after it start at ") ".
    let rest = s.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// (busy, total) ticks of one core from /proc/stat.
fn core_ticks(core: usize) -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{core}");
    for l in s.lines() {
        let mut it = l.split_whitespace();
        if it.next() == Some(name.as_str()) {
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            return (total - idle, total);
        }
    }
    (0, 0)
}

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    relay: u64,
    bench: u64,
    core1: (u64, u64),
}

fn sample(relay_pid: u32) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        relay: proc_ticks(&relay_pid.to_string()),
        bench: proc_ticks("self"),
        core1: core_ticks(1),
    }
}

/// CPU over an interval, as fractions of one core.
struct CpuUse {
    secs: f64,
    relay: f64,
    bench: f64,
    core1_busy: f64,
}

fn cpu_between(a: CpuSample, b: CpuSample, tck: f64) -> CpuUse {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let c1 = (b.core1.1 - a.core1.1).max(1) as f64;
    CpuUse {
        secs,
        relay: (b.relay - a.relay) as f64 / tck / secs,
        bench: (b.bench - a.bench) as f64 / tck / secs,
        core1_busy: (b.core1.0 - a.core1.0) as f64 / c1,
    }
}

// ---------------------------------------------------------------------------------------------
// The super-peer process.

struct Server {
    child: Child,
    http: String,
    addr: Multiaddr,
    peer: PeerId,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinning() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
        && Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

fn start_server(extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = if pinning() {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--http",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let http = first.strip_prefix("listening on ").unwrap().to_owned();
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let addr: Multiaddr = line.strip_prefix("p2p ").unwrap().parse().unwrap();
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("no /p2p/ in {addr}")
    };
    Server {
        child,
        http,
        addr,
        peer,
        _data: data,
    }
}

async fn metric(sp: &Server, name: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", sp.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Protocols: a paced stream (one substream per circuit) and bulk fetch (1 MiB answers).

/// What one relayed stream records.
struct Stats {
    /// Chunks received per stream.
    received: Vec<AtomicU32>,
    /// Worst arrival lateness per stream (µs after the chunk's scheduled send time).
    worst: Vec<AtomicU64>,
    /// Worst send lateness per stream (the writer itself behind: load generator saturated).
    worst_send: Vec<AtomicU64>,
    /// Every chunk's arrival lateness (µs).
    all: Mutex<Vec<u32>>,
    /// Streams whose receiver finished (all chunks read).
    done: AtomicU32,
}

impl Stats {
    fn new(n: usize) -> Self {
        Self {
            received: (0..n).map(|_| AtomicU32::new(0)).collect(),
            worst: (0..n).map(|_| AtomicU64::new(0)).collect(),
            worst_send: (0..n).map(|_| AtomicU64::new(0)).collect(),
            all: Mutex::new(Vec::with_capacity(n * 128)),
            done: AtomicU32::new(0),
        }
    }
}

#[derive(Debug)]
enum StreamReq {
    /// Outbound: write `chunks` chunks, the first at `start_us`, then every 200 ms.
    Send { id: u32, start_us: u64, chunks: u32 },
    /// Inbound: what the reader got.
    Got,
}

#[derive(Clone)]
struct StreamCodec(Arc<Stats>);

impl request_response::Codec for StreamCodec {
    type Protocol = StreamProtocol;
    type Request = StreamReq;
    type Response = u32;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<StreamReq> {
        let mut head = [0u8; 8];
        io.read_exact(&mut head).await?;
        let id = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let chunks = u32::from_be_bytes(head[4..].try_into().unwrap());
        if id >= self.0.received.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad id"));
        }
        let mut buf = vec![0u8; CHUNK];
        for _ in 0..chunks {
            io.read_exact(&mut buf).await?;
            let sched = u64::from_be_bytes(buf[..8].try_into().unwrap());
            let late = now_us().saturating_sub(sched);
            self.0.received[id].fetch_add(1, Ordering::Relaxed);
            self.0.worst[id].fetch_max(late, Ordering::Relaxed);
            self.0
                .all
                .lock()
                .unwrap()
                .push(u32::try_from(late).unwrap_or(u32::MAX));
        }
        self.0.done.fetch_add(1, Ordering::Relaxed);
        Ok(StreamReq::Got)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<u32> {
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await?;
        Ok(u32::from_be_bytes(b))
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: StreamReq,
    ) -> io::Result<()> {
        let StreamReq::Send {
            id,
            start_us,
            chunks,
        } = req
        else {
            return Err(io::Error::other("not an outbound request"));
        };
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&id.to_be_bytes());
        head[4..].copy_from_slice(&chunks.to_be_bytes());
        io.write_all(&head).await?;
        let mut buf = vec![0x5au8; CHUNK];
        for k in 0..u64::from(chunks) {
            let sched = start_us + k * PERIOD_US;
            tokio::time::sleep_until(at_us(sched)).await;
            buf[..8].copy_from_slice(&sched.to_be_bytes());
            io.write_all(&buf).await?;
            io.flush().await?;
            let late = now_us().saturating_sub(sched);
            self.0.worst_send[id as usize].fetch_max(late, Ordering::Relaxed);
        }
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: u32,
    ) -> io::Result<()> {
        io.write_all(&res.to_be_bytes()).await?;
        io.close().await
    }
}

#[derive(Clone, Default)]
struct BulkCodec;

impl request_response::Codec for BulkCodec {
    type Protocol = StreamProtocol;
    type Request = u32;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<u32> {
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await?;
        Ok(u32::from_be_bytes(b))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await?;
        let len = u32::from_be_bytes(b) as usize;
        if len > 4 << 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: u32,
    ) -> io::Result<()> {
        io.write_all(&req.to_be_bytes()).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&u32::try_from(res.len()).unwrap().to_be_bytes())
            .await?;
        io.write_all(&res).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Client {
    relay: relay::client::Behaviour,
    stream: request_response::Behaviour<StreamCodec>,
    bulk: request_response::Behaviour<BulkCodec>,
}

fn client(stats: Arc<Stats>) -> Swarm<Client> {
    let timeout = Duration::from_secs(600);
    libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay| Client {
            relay,
            stream: request_response::Behaviour::with_codec(
                StreamCodec(stats),
                [(
                    StreamProtocol::new("/bench/stream/1"),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(timeout),
            ),
            bulk: request_response::Behaviour::new(
                [(StreamProtocol::new("/bench/bulk/1"), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(timeout))
        .build()
}

fn circuit(relay: &Multiaddr, dst: PeerId) -> Multiaddr {
    relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(dst))
}

/// Polls `swarm` until `f` returns a value (at most 60 s).
async fn until<T>(
    swarm: &mut Swarm<Client>,
    mut f: impl FnMut(&SwarmEvent<ClientEvent>) -> Option<T>,
) -> T {
    let fut = async {
        loop {
            let ev = swarm.select_next_some().await;
            if let SwarmEvent::OutgoingConnectionError { error, .. } = &ev {
                panic!("dial failed: {error}");
            }
            if let Some(t) = f(&ev) {
                return t;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("timed out")
}

async fn reserve(swarm: &mut Swarm<Client>, relay: &Multiaddr) {
    swarm
        .listen_on(relay.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(swarm, |ev| {
        matches!(
            ev,
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 1. Circuit throughput vs direct.

async fn fetch(a: &mut Swarm<Client>, b: PeerId, dial: Multiaddr, mib: u32) -> f64 {
    a.dial(dial).unwrap();
    until(a, |ev| match ev {
        SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == b => Some(()),
        _ => None,
    })
    .await;
    let started = Instant::now();
    let (mut sent, mut got, mut bytes) = (0u32, 0u32, 0usize);
    let window = 4;
    while sent < mib.min(window) {
        a.behaviour_mut().bulk.send_request(&b, 1 << 20);
        sent += 1;
    }
    while got < mib {
        match a.select_next_some().await {
            SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) => {
                got += 1;
                bytes += response.len();
                if sent < mib {
                    a.behaviour_mut().bulk.send_request(&b, 1 << 20);
                    sent += 1;
                }
            }
            SwarmEvent::Behaviour(ClientEvent::Bulk(
                request_response::Event::OutboundFailure { error, .. },
            )) => panic!("bulk fetch failed: {error}"),
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(bytes, (mib as usize) << 20);
    let _ = a.disconnect_peer_id(b);
    until(a, |ev| match ev {
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } if *peer_id == b => Some(()),
        _ => None,
    })
    .await;
    f64::from(mib) / secs
}

async fn throughput(mib: u32, tck: f64) {
    let sp = start_server(&[]);
    let stats = Arc::new(Stats::new(1));
    let mut b = client(Arc::clone(&stats));
    let b_id = *b.local_peer_id();
    b.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    let direct = until(&mut b, |ev| match ev {
        SwarmEvent::NewListenAddr { address, .. } => Some(address.clone()),
        _ => None,
    })
    .await;
    reserve(&mut b, &sp.addr).await;
    let server = tokio::spawn(async move {
        let blob = vec![0xa5u8; 1 << 20];
        loop {
            if let SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) = b.select_next_some().await
            {
                let len = (request as usize).min(blob.len());
                let _ = b
                    .behaviour_mut()
                    .bulk
                    .send_response(channel, blob[..len].to_vec());
            }
        }
    });
    let mut a = client(stats);
    // Connect to the relay first so both modes start from a warm relay connection.
    a.dial(sp.addr.clone()).unwrap();
    let relay_id = sp.peer;
    until(&mut a, |ev| match ev {
        SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == relay_id => Some(()),
        _ => None,
    })
    .await;
    let pid = sp.child.id();
    let (mut relayed, mut direct_rates, mut relay_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let s0 = sample(pid);
        let r = fetch(&mut a, b_id, circuit(&sp.addr, b_id), mib).await;
        let s1 = sample(pid);
        relayed.push(r);
        relay_cpu.push(cpu_between(s0, s1, tck).relay);
        direct_rates.push(fetch(&mut a, b_id, direct.clone().with(Protocol::P2p(b_id)), mib).await);
    }
    server.abort();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\n### Circuit throughput ({mib} MiB as 1 MiB answers, 4 in flight, QUIC on loopback)\n"
    );
    println!("| path | runs (MiB/s) | median MiB/s | relay CPU during transfer |");
    println!("|---|---|---|---|");
    let (r_runs, d_runs, c_runs) = (fmt(&relayed), fmt(&direct_rates), fmt(&relay_cpu));
    let (rm, dm, cm) = (
        med(&mut relayed),
        med(&mut direct_rates),
        med(&mut relay_cpu),
    );
    println!(
        "| relayed (`/p2p/RELAY/p2p-circuit/p2p/DST`) | {r_runs} | {rm:.1} | {:.0}% of a core (runs: {c_runs}) |",
        cm * 100.0
    );
    println!("| direct QUIC | {d_runs} | {dm:.1} | — |");
    println!("\nrelayed ÷ direct (medians): {:.2}", rm / dm);
}

// ---------------------------------------------------------------------------------------------
// 2. Capacity.

struct Round {
    n: usize,
    peers: usize,
    setup_secs: f64,
    retries: usize,
    complete: usize,
    on_time: usize,
    errors: Vec<String>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    worst_send_ms: f64,
    cpu: CpuUse,
    relay_mbit: f64,
    payload_mbit: f64,
}

impl Round {
    fn held(&self) -> bool {
        self.errors.is_empty() && self.on_time == self.n
    }
}

enum Note {
    Established,
    /// A circuit dial failed and was retried.
    Retry,
    Done,
    Failed(String),
}

async fn dst_task(
    relay_addr: Multiaddr,
    stats: Arc<Stats>,
    ready: mpsc::UnboundedSender<PeerId>,
    notes: mpsc::UnboundedSender<Note>,
) {
    let mut s = client(stats);
    reserve(&mut s, &relay_addr).await;
    let _ = ready.send(*s.local_peer_id());
    loop {
        match s.select_next_some().await {
            SwarmEvent::Behaviour(ClientEvent::Stream(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) => {
                let _ = s.behaviour_mut().stream.send_response(channel, 0);
            }
            SwarmEvent::Behaviour(ClientEvent::Stream(
                request_response::Event::InboundFailure { error, .. },
            )) => {
                let _ = notes.send(Note::Failed(format!("inbound: {error}")));
            }
            _ => {}
        }
    }
}

async fn src_task(
    relay_addr: Multiaddr,
    stats: Arc<Stats>,
    streams: Vec<(u32, PeerId)>,
    mut start: watch::Receiver<Option<(u64, u32, u32)>>,
    notes: mpsc::UnboundedSender<Note>,
) {
    let mut s = client(stats);
    // Connect to the relay first: circuit dials issued before the relay connection exists
    // race each other in the relay client and some are cancelled.
    let Some(Protocol::P2p(relay_id)) = relay_addr.iter().last() else {
        return;
    };
    s.dial(relay_addr.clone()).unwrap();
    until(&mut s, |ev| match ev {
        SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == relay_id => Some(()),
        _ => None,
    })
    .await;
    // One circuit dial at a time, retried: libp2p-relay handles at most 10 circuit requests in
    // flight per connection (client and relay side alike) and drops the rest.
    let mut next = 0;
    let mut attempts = 0;
    s.dial(circuit(&relay_addr, streams[0].1)).unwrap();
    let mut started = false;
    loop {
        tokio::select! {
            ev = s.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if next < streams.len() && streams[next].1 == peer_id => {
                    let _ = notes.send(Note::Established);
                    next += 1;
                    attempts = 0;
                    if let Some((_, dst)) = streams.get(next) {
                        s.dial(circuit(&relay_addr, *dst)).unwrap();
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    attempts += 1;
                    if attempts < 5 && next < streams.len() {
                        let _ = notes.send(Note::Retry);
                        s.dial(circuit(&relay_addr, streams[next].1)).unwrap();
                    } else {
                        let _ = notes.send(Note::Failed(format!("dial: {error}")));
                    }
                }
                SwarmEvent::Behaviour(ClientEvent::Stream(request_response::Event::Message {
                    message: request_response::Message::Response { .. }, ..
                })) => {
                    let _ = notes.send(Note::Done);
                }
                SwarmEvent::Behaviour(ClientEvent::Stream(request_response::Event::OutboundFailure { error, .. })) => {
                    let _ = notes.send(Note::Failed(format!("outbound: {error}")));
                }
                _ => {}
            },
            r = start.changed(), if !started => {
                if r.is_err() {
                    return;
                }
                let Some((t0, n, chunks)) = *start.borrow() else { continue };
                started = true;
                for (id, dst) in &streams {
                    // Spread the streams' phases over one period.
                    let start_us = t0 + u64::from(*id) * PERIOD_US / u64::from(n);
                    s.behaviour_mut().stream.send_request(dst, StreamReq::Send { id: *id, start_us, chunks });
                }
            }
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn capacity_round(n: usize, secs: u64, tck: f64) -> Round {
    let limit = (4 * n + 100).to_string();
    let sp = start_server(&[
        "--max-reservations",
        &limit,
        "--max-reservations-per-peer",
        "16",
        "--max-circuits",
        &limit,
        "--max-circuits-per-peer",
        &limit,
    ]);
    let stats = Arc::new(Stats::new(n));
    let fan = FANOUT.min((n as f64).sqrt().ceil() as usize).max(1);
    let n_src = n.div_ceil(fan);
    let n_dst = n_src.max(fan);
    let mut tasks = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    for _ in 0..n_dst {
        tasks.spawn(dst_task(
            sp.addr.clone(),
            Arc::clone(&stats),
            ready_tx.clone(),
            note_tx.clone(),
        ));
    }
    let mut dsts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while dsts.len() < n_dst {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(p)) => dsts.push(p),
            _ => panic!("only {} of {n_dst} reservations", dsts.len()),
        }
    }
    let (start_tx, start_rx) = watch::channel(None);
    for src in 0..n_src {
        let streams: Vec<(u32, PeerId)> = (src * fan..((src + 1) * fan).min(n))
            .map(|i| (i as u32, dsts[(src + i % fan) % n_dst]))
            .collect();
        tasks.spawn(src_task(
            sp.addr.clone(),
            Arc::clone(&stats),
            streams,
            start_rx.clone(),
            note_tx.clone(),
        ));
    }
    let mut errors = Vec::new();
    let (mut established, mut retries) = (0, 0);
    let setup = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while established < n && errors.is_empty() {
        match tokio::time::timeout_at(deadline, note_rx.recv()).await {
            Ok(Some(Note::Established)) => established += 1,
            Ok(Some(Note::Failed(e))) => errors.push(format!("setup: {e}")),
            Ok(Some(Note::Retry)) => retries += 1,
            Ok(Some(Note::Done)) | Ok(None) => {}
            Err(_) => {
                errors.push(format!("only {established} of {n} circuits in 180 s"));
            }
        }
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let chunks = u32::try_from(secs * 1_000_000 / PERIOD_US).unwrap();
    let t0 = now_us() + 1_000_000;
    let end = t0 + u64::from(chunks) * PERIOD_US;
    let (mut done, mut s0, mut s1) = (0, None, None);
    let (mut bytes0, mut bytes1) = (0, 0);
    if errors.is_empty() {
        start_tx
            .send(Some((t0, u32::try_from(n).unwrap(), chunks)))
            .unwrap();
        tokio::time::sleep_until(at_us(t0)).await;
        bytes0 = metric(&sp, "shoal_superpeer_transport_read_bytes_total").await;
        s0 = Some(sample(sp.child.id()));
        let finish = at_us(end);
        let hard = at_us(end + 15_000_000);
        loop {
            let wake = if s1.is_none() { finish } else { hard };
            tokio::select! {
                note = note_rx.recv() => match note {
                    Some(Note::Done) => done += 1,
                    Some(Note::Failed(e)) => errors.push(e),
                    Some(Note::Retry) => retries += 1,
                    _ => {}
                },
                () = tokio::time::sleep_until(wake) => {
                    if s1.is_none() {
                        s1 = Some(sample(sp.child.id()));
                        bytes1 = metric(&sp, "shoal_superpeer_transport_read_bytes_total").await;
                    } else {
                        break;
                    }
                }
            }
            if done >= n || errors.len() > 20 {
                break;
            }
        }
        if s1.is_none() {
            s1 = Some(sample(sp.child.id()));
            bytes1 = metric(&sp, "shoal_superpeer_transport_read_bytes_total").await;
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(sp);
    let mut all = std::mem::take(&mut *stats.all.lock().unwrap());
    all.sort_unstable();
    let complete = (0..n)
        .filter(|&i| stats.received[i].load(Ordering::Relaxed) >= chunks)
        .count();
    let on_time = (0..n)
        .filter(|&i| {
            stats.received[i].load(Ordering::Relaxed) >= chunks
                && stats.worst[i].load(Ordering::Relaxed) <= LATE_LIMIT_US
        })
        .count();
    let worst_send = (0..n)
        .map(|i| stats.worst_send[i].load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let cpu = match (s0, s1) {
        (Some(a), Some(b)) => cpu_between(a, b, tck),
        _ => CpuUse {
            secs: 0.0,
            relay: 0.0,
            bench: 0.0,
            core1_busy: 0.0,
        },
    };
    let payload_bytes = all.len() as f64 * CHUNK as f64;
    Round {
        n,
        peers: n_src + n_dst,
        setup_secs,
        retries,
        complete,
        on_time,
        errors,
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
        max_ms: all.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        worst_send_ms: worst_send as f64 / 1000.0,
        relay_mbit: if cpu.secs > 0.0 {
            bytes1.saturating_sub(bytes0) as f64 * 8.0 / 1e6 / cpu.secs
        } else {
            0.0
        },
        payload_mbit: payload_bytes * 8.0 / 1e6 / (secs as f64),
        cpu,
    }
}

async fn capacity(ns: &[usize], secs: u64, tck: f64) {
    println!(
        "\n### Capacity: concurrent relayed 160 kbit/s streams ({secs} s each, 4 KiB every 200 ms, late = > 1 s behind schedule)\n"
    );
    println!(
        "| streams | client peers | circuit setup (s, dial retries) | complete | on time | arrival lateness p50 / p99 / max (ms) | worst send lateness (ms) | relayed payload Mbit/s | relay reads Mbit/s | relay CPU (core) | core 1 busy | load generator CPU (core) | relay CPU % per relayed Mbit/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut best = None;
    for &n in ns {
        let r = capacity_round(n, secs, tck).await;
        let per_mbit = if r.payload_mbit > 0.0 {
            r.cpu.relay * 100.0 / r.payload_mbit
        } else {
            f64::NAN
        };
        println!(
            "| {} | {} | {:.1} ({}) | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0}% | {:.0}% | {:.3} |",
            r.n,
            r.peers,
            r.setup_secs,
            r.retries,
            r.complete,
            r.on_time,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.worst_send_ms,
            r.payload_mbit,
            r.relay_mbit,
            r.cpu.relay * 100.0,
            r.cpu.core1_busy * 100.0,
            r.cpu.bench * 100.0,
            per_mbit,
        );
        for e in r.errors.iter().take(5) {
            println!("|   error: {e} |");
        }
        if !r.held() {
            println!(
                "\n{n} streams did not hold ({} of {n} on time, {} errors).",
                r.on_time,
                r.errors.len()
            );
            break;
        }
        best = Some(n);
    }
    match best {
        Some(n) => println!("\nlargest N held: {n}"),
        None => println!("\nno N held"),
    }
}

fn main() {
    let _ = now_us();
    let pinned = pinning();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // The load generator does more work per stream than the relay (it is both ends of every
    // circuit, with Noise on top of QUIC), so at high N one core of it falls behind before the
    // relay does. `RELAY_BENCH_GEN_CORES=0,1` with `RELAY_BENCH_GEN_WORKERS=2` lets it use what
    // the relay leaves of core 1 too; the relay stays pinned to core 1 alone.
    let gen_cores = env("RELAY_BENCH_GEN_CORES").unwrap_or_else(|| "0".into());
    let gen_workers: usize = env("RELAY_BENCH_GEN_WORKERS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if pinned {
        // The load generator on `gen_cores`; the super-peer gets core 1 (see start_server).
        let _ = Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &gen_cores,
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
    let ns: Vec<usize> = env("RELAY_BENCH_STREAMS")
        .unwrap_or_else(|| "50,100,200,500,1000,2000,3000,4000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let secs: u64 = env("RELAY_BENCH_SECS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mib: u32 = env("RELAY_BENCH_MIB")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let only = env("RELAY_BENCH_ONLY").unwrap_or_default();
    let tck = clk_tck();
    println!(
        "relay bench: super-peer {BIN}, {}",
        if pinned {
            format!(
                "super-peer pinned to core 1, load generator ({gen_workers} tokio workers) to cores {gen_cores}"
            )
        } else {
            "no pinning (taskset missing or one CPU)".to_owned()
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(gen_workers)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if only.is_empty() || only == "throughput" {
            throughput(mib, tck).await;
        }
        if only.is_empty() || only == "capacity" {
            capacity(&ns, secs, tck).await;
        }
    });
}
