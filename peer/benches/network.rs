//! Peer benchmarks of the network issue, on loopback, in real processes:
//!
//! 1. **Time to first audio from a peer** against the loopback round-trip time. A
//!    `shoal-tracker serve` child and a seeding `shoal-peer serve` child (default settings)
//!    holding 2-second excerpts of real music; listeners ([`PeerNode`]s in this process, no
//!    origin) play a fresh, never-cached track each time over their already established
//!    connection to the seeder. Measured: the core's `time_to_first_audio_ms` (ms granularity)
//!    and the wall time from the `Play` command to the verified chunk 0 (µs). Two listeners:
//!    one cold (holder lookup + manifest + chunk 0 from the network), one with every manifest
//!    already on disk (holder lookup + chunk 0). Round trips measured in the same run: a UDP
//!    echo (the loopback RTT of the target), a bare QUIC (quinn) request/response on a new
//!    stream, a libp2p `/shoal/chunk/2` `QueryHave` answered by the seeder's core, and a holder
//!    lookup answered by the tracker.
//! 2. **Chunk serving throughput of one peer**: 16 concurrent requesters, each with one
//!    request in flight, cycling through the 64 largest (≈ 64 KiB) chunks of an imported track,
//!    against (a) a bare quinn server sending the same bytes from memory, with libp2p-quic's
//!    transport settings, on one QUIC stream per request and on one long-lived stream per
//!    requester (request after request, as `/shoal/chunk/2` does), each once with rustls'
//!    default cipher order (AES-GCM) and once preferring ChaCha20-Poly1305 as libp2p-tls does,
//!    (b) the peer (`PeerNode` with its upload limits lifted) over `/shoal/chunk/2`, (c) the
//!    tracker's plaintext HTTP origin `GET /chunks/{id}` (rate limit lifted). `PEERBENCH_PLAYS=0`
//!    runs this part alone. Each
//!    server is its own child process, pinned to CPU 0; this process (the requesters) to CPU 1;
//!    the servers' CPU time comes from `/proc/PID/stat`.
//!
//! Run: `cargo build --release -p shoal-tracker && cargo bench -p shoal-peer --bench network`
//! (or `bash scripts/bench-peer.sh`, which also measures the client's memory and CPU while
//! playing). Knobs (environment): `PEERBENCH_PLAYS` (100), `PEERBENCH_SECS` (10 s per
//! throughput run after 2 s warm-up), `PEERBENCH_REPS` (2 runs per server, alternating, best
//! kept), `PEERBENCH_CONNS` (16), `PEERBENCH_PIN` (1: pin with taskset), `PEERBENCH_KEEP` (keep
//! the work directory). Needs sox, singularity-music and `shoal-tracker` beside `shoal-peer`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_peer::core::SchedulerCommand;
use shoal_peer::net::cache::DiskCache;
use shoal_peer::net::chunk_streams::{ChunkStreamConfig, ChunkStreamEvent, ChunkStreams};
use shoal_peer::net::node::{
    NodeConfig, NodeEvent, PeerBehaviour, PeerBehaviourEvent, PeerNode, TrackerEndpoint,
    swarm_config,
};
use shoal_peer::net::origin::OriginClient;
use shoal_protocol::wire::{ChunkRequest, ChunkResponse};
use shoal_protocol::{ChunkId, TrackId};
use shoal_tracker::store::LocalStore;

const ROLE_ENV: &str = "SHOAL_PEERBENCH_ROLE";
const MUSIC: &str = "/usr/share/games/singularity/music";
/// The full track whose chunks the throughput runs serve (and `scripts/bench-peer.sh` plays).
const FULL_TRACK: &str = "A New Journey.ogg";
/// Sources of the 2-second excerpts played for time to first audio.
const EXCERPT_SOURCES: [&str; 4] = [
    "Aberrations.ogg",
    "Advanced Simulacra.ogg",
    "By-Product.ogg",
    "Coherence.ogg",
];
const EXCERPT_SECS: f64 = 2.0;
const CHUNKS: usize = 64;
const LOOPBACK_QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return runtime()?.block_on(serve_role(&role, &args));
    }
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("network: a benchmark; run it with `cargo bench -p shoal-peer --bench network`");
        return Ok(());
    }
    let pin = env_or("PEERBENCH_PIN", 1u8) == 1 && which("taskset");
    if pin {
        // Before any thread exists, so every thread of this process stays on CPU 1.
        let ok = Command::new("taskset")
            .args(["-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()?
            .success();
        ensure!(ok, "taskset failed");
    }
    runtime()?.block_on(run(pin))
}

/// The same runtime as the `shoal-peer` CLI: two worker threads.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process, killed when dropped; its stdout read line by line.
struct Proc {
    name: String,
    child: Child,
    out: BufReader<ChildStdout>,
    err: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: Command, pin: bool, dir: &Path) -> Result<Self> {
        let err = dir.join(format!("{name}.stderr"));
        let mut cmd = if pin {
            let mut t = Command::new("taskset");
            t.args(["-c", "0"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => t.env(k, v),
                    None => t.env_remove(k),
                };
            }
            t
        } else {
            cmd
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let out = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self {
            name: name.to_owned(),
            child,
            out,
            err,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line starts with `prefix`; returns the rest of that line.
    fn wait_line(&mut self, prefix: &str) -> Result<String> {
        loop {
            let mut line = String::new();
            if self.out.read_line(&mut line)? == 0 {
                let mut err = String::new();
                let _ = std::fs::File::open(&self.err).and_then(|mut f| f.read_to_string(&mut err));
                bail!("{} ended before printing {prefix:?}: {err}", self.name);
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin stops the bench's own server roles cleanly; the rest are killed.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds the threads of process `pid` spent waiting on a run queue (schedstat field 2).
fn runqueue_wait_secs(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// CPU seconds (user + system, all threads) used so far by process `pid` ("self" allowed).
fn cpu_secs(pid: &str) -> Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(") ").context("bad /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no target directory")?;
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} missing: run `cargo build --release -p shoal-tracker -p shoal-peer` first",
        path.display()
    );
    Ok(path)
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Server roles (this executable re-run as a child).

async fn serve_role(role: &str, args: &[String]) -> Result<()> {
    // Exit when the parent closes our stdin (or dies).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = stop_tx.send(());
    });
    match role {
        "peer" => serve_peer(Path::new(args.first().context("cache dir")?), stop_rx).await,
        "quinn" => {
            let dir = Path::new(args.first().context("work dir")?);
            serve_quinn(dir, Path::new(args.get(1).context("data dir")?), stop_rx).await
        }
        other => bail!("unknown role {other}"),
    }
}

/// A seeding peer with its upload limits lifted (no tracker, no origin).
async fn serve_peer(cache: &Path, stop: tokio::sync::oneshot::Receiver<()>) -> Result<()> {
    let cache = DiskCache::open(cache, Some(1 << 30))?;
    let mut config = NodeConfig::new(Keypair::generate_ed25519());
    config.listen = vec![LOOPBACK_QUIC.parse()?];
    config.peer.server.upload_rate = 100_000_000_000;
    config.peer.server.upload_burst = 1 << 30;
    config.peer.server.max_uploads = 256;
    let (node, events) = PeerNode::start(config, cache).await?;
    drop(events);
    let addr = node.listen_addrs().first().context("no address")?.clone();
    println!("ready {} {addr}", node.peer_id());
    std::io::stdout().flush()?;
    let _ = stop.await;
    node.shutdown().await;
    Ok(())
}

/// A bare quinn server: a request is a chunk id in hex on a new bidirectional stream, the
/// answer the chunk's bytes from memory (an empty request gets an empty answer: a ping). Also a
/// UDP echo socket for the plain loopback RTT.
async fn serve_quinn(
    work: &Path,
    data: &Path,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let _ = quinn::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let store = LocalStore::open(data)?;
    let mut chunks: HashMap<Vec<u8>, Arc<Vec<u8>>> = HashMap::new();
    for t in store.list_tracks()? {
        for c in store.get_manifest(&t.id)?.chunks {
            chunks.insert(
                c.id.to_string().into_bytes(),
                Arc::new(store.get_chunk(&c.id)?),
            );
        }
    }
    let chunks = Arc::new(chunks);
    let cert = std::fs::read(work.join("quinn.cert.der"))?;
    let key = std::fs::read(work.join("quinn.key.der"))?;
    let mut config = quinn::ServerConfig::with_single_cert(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )?;
    config.transport_config(libp2p_like_transport());
    config.migration(false);
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    println!(
        "ready {} {}",
        endpoint.local_addr()?.port(),
        udp.local_addr()?.port()
    );
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let chunks = chunks.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let watch = conn.clone();
                tokio::spawn(async move {
                    watch.closed().await;
                    let s = watch.stats().path;
                    eprintln!(
                        "connection closed: rtt {:?}, cwnd {}, sent packets {}, lost packets {}, \
                         congestion events {}, mtu {}",
                        s.rtt,
                        s.cwnd,
                        s.sent_packets,
                        s.lost_packets,
                        s.congestion_events,
                        s.current_mtu
                    );
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let chunks = chunks.clone();
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        match recv.read(&mut first).await {
                            Ok(Some(1)) if first[0] == LONG_LIVED => {
                                // Request after request: a hex chunk id in, a length-prefixed
                                // chunk out.
                                let mut id = [0u8; 64];
                                while recv.read_exact(&mut id).await.is_ok() {
                                    let bytes =
                                        chunks.get(&id[..]).map_or(&[][..], |b| b.as_slice());
                                    let len = (bytes.len() as u32).to_be_bytes();
                                    if send.write_all(&len).await.is_err()
                                        || send.write_all(bytes).await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                            Ok(n) => {
                                let mut req = first[..n.unwrap_or(0)].to_vec();
                                let Ok(rest) = recv.read_to_end(128).await else {
                                    return;
                                };
                                req.extend_from_slice(&rest);
                                let bytes = chunks.get(&req).map_or(&[][..], |b| b.as_slice());
                                if send.write_all(bytes).await.is_ok() {
                                    let _ = send.finish();
                                }
                            }
                            Err(_) => {}
                        }
                    });
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        _ = stop => {}
    }
    endpoint.close(0u32.into(), b"bye");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Statistics.

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

struct Dist {
    p50: f64,
    p99: f64,
    max: f64,
}

fn dist(v: Vec<f64>) -> Dist {
    let s = sorted(v);
    Dist {
        p50: percentile(&s, 50.0),
        p99: percentile(&s, 99.0),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

struct World {
    work: PathBuf,
    data: PathBuf,
    pin: bool,
    /// The full track and its 64 largest chunks.
    full: TrackId,
    chunks: Vec<(TrackId, ChunkId, u32)>,
    /// The excerpts, in play order.
    excerpts: Vec<TrackId>,
    tracker: Proc,
    url: String,
}

async fn run(pin: bool) -> Result<()> {
    let plays: usize = env_or("PEERBENCH_PLAYS", 100);
    let tmp = tempfile::Builder::new()
        .prefix("shoal-peerbench-")
        .tempdir()?;
    let work = tmp.path().to_owned();
    let keep = std::env::var_os("PEERBENCH_KEEP").is_some();
    let result = run_in(&work, pin, plays).await;
    if keep {
        eprintln!("kept {}", work.display());
        std::mem::forget(tmp);
    }
    result
}

async fn run_in(work: &Path, pin: bool, plays: usize) -> Result<()> {
    let _ = quinn::rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!(
        "# shoal-peer network bench — {} plays per listener, pinned: {pin}, load average {}",
        plays,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let world = World::new(work, pin, 2 * (plays + 1)).await?;
    if plays > 0 {
        ttfa(&world, plays).await?;
    }
    throughput(&world).await?;
    Ok(())
}

impl World {
    /// Imports the full track and `excerpts` 2-second excerpts, starts the tracker.
    async fn new(work: &Path, pin: bool, excerpts: usize) -> Result<Self> {
        let tracker_bin = bin("shoal-tracker")?;
        let music = Path::new(MUSIC);
        ensure!(
            music.join(FULL_TRACK).is_file(),
            "install Debian's singularity-music (bash scripts/install-deps.sh)"
        );
        let src = work.join("src");
        std::fs::create_dir_all(&src)?;
        let t0 = Instant::now();
        let mut files = vec![music.join(FULL_TRACK)];
        let mut running = Vec::new();
        for i in 0..excerpts {
            let from = music.join(EXCERPT_SOURCES[i % EXCERPT_SOURCES.len()]);
            let at = 5.0 + (i / EXCERPT_SOURCES.len()) as f64 * 2.5;
            let out = src.join(format!("excerpt-{i:03}.flac"));
            running.push(
                Command::new("sox")
                    .arg(&from)
                    .arg(&out)
                    .args(["trim", &at.to_string(), &EXCERPT_SECS.to_string()])
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot run sox")?,
            );
            files.push(out);
            if running.len() >= 4 || i + 1 == excerpts {
                for mut c in running.drain(..) {
                    ensure!(c.wait()?.success(), "sox failed");
                }
            }
        }
        let data = work.join("data");
        run_ok(
            Command::new(&tracker_bin)
                .arg("import")
                .arg("--data")
                .arg(&data)
                .args(&files),
            "shoal-tracker import",
        )?;
        let store = LocalStore::open(&data)?;
        let by_source: HashMap<String, TrackId> = store
            .list_tracks()?
            .into_iter()
            .map(|m| (m.source, m.id))
            .collect();
        let id_of = |p: &Path| {
            let key = p.display().to_string();
            by_source
                .iter()
                .find(|(s, _)| **s == key || s.ends_with(&*key) || key.ends_with(s.as_str()))
                .map(|(_, id)| *id)
                .with_context(|| format!("{} was not imported", p.display()))
        };
        let full = id_of(&files[0])?;
        let excerpts = files[1..]
            .iter()
            .map(|f| id_of(f))
            .collect::<Result<Vec<_>>>()?;
        let manifest = store.get_manifest(&full)?;
        let mut chunks: Vec<(TrackId, ChunkId, u32)> = manifest
            .chunks
            .iter()
            .map(|c| (full, c.id, c.len))
            .collect();
        chunks.sort_by_key(|c| std::cmp::Reverse(c.2));
        chunks.truncate(CHUNKS);
        ensure!(chunks.len() == CHUNKS, "the full track has too few chunks");
        eprintln!(
            "imported 1 full track ({} chunks) and {} excerpts in {:.1} s",
            manifest.chunks.len(),
            excerpts.len(),
            t0.elapsed().as_secs_f64()
        );

        let conf = work.join("tracker.toml");
        std::fs::write(&conf, "[http]\nrequests_per_sec = 1e9\nburst = 1e9\n")?;
        let mut cmd = Command::new(&tracker_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&conf)
            .arg("--data")
            .arg(&data)
            .args(["--http", "127.0.0.1:0", "--listen", LOOPBACK_QUIC])
            .env("RUST_LOG", "warn");
        let mut tracker = Proc::spawn("shoal-tracker", cmd, pin, work)?;
        let url = tracker.wait_line("listening on ")?;
        Ok(Self {
            work: work.to_owned(),
            data,
            pin,
            full,
            chunks,
            excerpts,
            tracker,
            url,
        })
    }

    /// `shoal-peer cache add` of `tracks` into a new cache `name`.
    fn fill_cache(&self, name: &str, tracks: &[TrackId]) -> Result<PathBuf> {
        let cache = self.work.join(name);
        run_ok(
            Command::new(bin("shoal-peer")?)
                .args(["cache", "--cache"])
                .arg(&cache)
                .args(["add", "--data"])
                .arg(&self.data)
                .args(tracks.iter().map(ToString::to_string)),
            "shoal-peer cache add",
        )?;
        Ok(cache)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Time to first audio.

fn raw_swarm() -> Result<Swarm<PeerBehaviour>> {
    Ok(
        libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
            .with_tokio()
            .with_quic()
            .with_behaviour(|k| PeerBehaviour::new(k, Duration::from_secs(30)))?
            .with_swarm_config(swarm_config)
            .build(),
    )
}

/// A requester of `/shoal/chunk/2`: its own swarm (driven by a task) and chunk streams.
struct ChunkClient {
    streams: ChunkStreams,
    events: tokio::sync::mpsc::UnboundedReceiver<ChunkStreamEvent>,
    driver: tokio::task::JoinHandle<()>,
}

impl ChunkClient {
    fn new(peer: PeerId, addr: Multiaddr) -> Result<Self> {
        let mut swarm = raw_swarm()?;
        swarm.add_peer_address(peer, addr);
        let (streams, events) = ChunkStreams::new(
            swarm.behaviour().chunk.new_control(),
            ChunkStreamConfig::default(),
        );
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Ok(Self {
            streams,
            events,
            driver,
        })
    }

    /// One request and its answer.
    async fn round_trip(&mut self, peer: PeerId, req: ChunkRequest) -> Result<ChunkResponse> {
        let id = self.streams.send_request(peer, req);
        loop {
            match self.events.recv().await.context("chunk streams gone")? {
                ChunkStreamEvent::Response {
                    id: got, response, ..
                } if got == id => return Ok(response),
                ChunkStreamEvent::Failure { id: got, error, .. } if got == id => {
                    bail!("request failed: {error}")
                }
                _ => {}
            }
        }
    }
}

impl Drop for ChunkClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

const RTT_SAMPLES: usize = 1000;

async fn rtt_udp(port: u16) -> Result<Vec<f64>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 64];
    let mut out = Vec::new();
    for i in 0..RTT_SAMPLES + 100 {
        let t = Instant::now();
        sock.send(&[1u8; 8]).await?;
        tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
            .await
            .context("UDP echo lost")??;
        if i >= 100 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// The transport settings libp2p-quic 0.14 gives quinn (`From<Config> for QuinnConfig`), so
/// the bare baseline differs from the peer only above QUIC.
fn libp2p_like_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(256u32.into());
    t.datagram_receive_buffer_size(None);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    t.allow_spin(false);
    t.stream_receive_window(10_000_000u32.into());
    t.receive_window(15_000_000u32.into());
    t.mtu_discovery_config(Some(quinn::MtuDiscoveryConfig::default()));
    Arc::new(t)
}

/// A connection to the bare quinn server. With `chacha`, the client prefers
/// TLS_CHACHA20_POLY1305_SHA256 as libp2p-tls does (the server follows the client's order);
/// otherwise rustls' default order (AES-GCM first).
async fn quinn_client(
    cert: &[u8],
    server: std::net::SocketAddr,
    chacha: bool,
) -> Result<quinn::Connection> {
    use quinn::rustls::CipherSuite;
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.to_vec()))?;
    let mut provider = quinn::rustls::crypto::aws_lc_rs::default_provider();
    if chacha {
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    }
    let tls = quinn::rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&quinn::rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    config.transport_config(libp2p_like_transport());
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(config);
    Ok(ep.connect(server, "localhost")?.await?)
}

/// First byte of a bare-quinn stream that carries request after request (a hex chunk id
/// never starts so).
const LONG_LIVED: u8 = b'L';

/// One request on a new bidirectional stream; returns the answer's length.
async fn quinn_request(conn: &quinn::Connection, req: &[u8]) -> Result<usize> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(req).await?;
    send.finish()?;
    Ok(recv.read_to_end(1 << 20).await?.len())
}

async fn rtt_quinn(conn: &quinn::Connection) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..RTT_SAMPLES + 100 {
        let t = Instant::now();
        quinn_request(conn, &[]).await?;
        if i >= 100 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

async fn rtt_libp2p(peer: PeerId, addr: Multiaddr, track: TrackId) -> Result<Vec<f64>> {
    let mut client = ChunkClient::new(peer, addr)?;
    let mut out = Vec::new();
    for i in 0..RTT_SAMPLES + 100 {
        let t = Instant::now();
        let resp = client
            .round_trip(
                peer,
                ChunkRequest::QueryHave {
                    request: i as u64,
                    track,
                },
            )
            .await?;
        ensure!(
            matches!(resp, ChunkResponse::Have { .. }),
            "QueryHave: {resp:?}"
        );
        if i >= 100 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// Lookups timed: the tracker allows one peer 20 lookups/s, so they are paced.
const LOOKUP_SAMPLES: usize = 200;

/// A holder lookup (`/shoal/lookup/1`) answered by the tracker, as the listener's driver sends
/// it, one every 60 ms (under the tracker's per-peer rate limit).
async fn rtt_lookup(tracker: &TrackerEndpoint, track: TrackId) -> Result<Vec<f64>> {
    use shoal_protocol::wire::{LookupRequest, LookupResponse};
    use shoal_tracker::net::p2p::BehaviourEvent;
    let mut swarm = raw_swarm()?;
    for a in &tracker.addrs {
        swarm.add_peer_address(tracker.peer_id, a.clone());
    }
    let mut out = Vec::new();
    for i in 0..LOOKUP_SAMPLES + 10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let t = Instant::now();
        let id = swarm.behaviour_mut().tracker.lookup.send_request(
            &tracker.peer_id,
            LookupRequest::Holders { track, limit: 16 },
        );
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(PeerBehaviourEvent::Tracker(BehaviourEvent::Lookup(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    },
                ))) if request_id == id => {
                    ensure!(
                        matches!(&response, LookupResponse::Holders { holders, .. } if !holders.is_empty()),
                        "lookup: {response:?}"
                    );
                    break;
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Tracker(BehaviourEvent::Lookup(
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    },
                ))) if request_id == id => bail!("lookup failed: {error}"),
                _ => {}
            }
        }
        if i >= 10 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

struct PlaySample {
    ttfa_ms: f64,
    chunk0_us: f64,
    manifest_us: Option<f64>,
}

/// A listener (no origin) plays each of `tracks` (never cached) and returns the samples of all
/// but the first (the warm-up, which also opens the connection to the seeder).
async fn listener_plays(
    w: &World,
    name: &str,
    tracks: &[TrackId],
    manifests_on_disk: bool,
) -> Result<Vec<PlaySample>> {
    let dir = w.work.join(name);
    let mut cache = DiskCache::open(&dir, Some(1 << 30))?;
    if manifests_on_disk {
        let store = LocalStore::open(&w.data)?;
        for t in tracks {
            cache.put_manifest(t, &store.get_manifest(t)?.encode())?;
        }
    }
    let origin = OriginClient::new(&w.url)?;
    let mut config = NodeConfig::new(Keypair::generate_ed25519());
    config.listen = vec![LOOPBACK_QUIC.parse()?];
    config.tracker = Some(TrackerEndpoint::discover(&origin).await?);
    config.origin = None;
    let (node, mut events) = PeerNode::start(config, cache).await?;
    let mut samples = Vec::new();
    let mut disconnected = 0;
    for (i, track) in tracks.iter().enumerate() {
        if i > 0 && node.status().peers == 0 {
            disconnected += 1;
        }
        let t0 = Instant::now();
        node.command(SchedulerCommand::Play {
            track: *track,
            position_ms: 0,
        })
        .await;
        let (mut chunk0, mut manifest_at, mut ttfa, mut total, mut got) =
            (None, None, None, None, 0usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while chunk0.is_none() || ttfa.is_none() || total.is_none_or(|n| got < n) {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .with_context(|| format!("{name}: play {i} of {track} stalled"))?
                .context("node stopped")?;
            match ev {
                NodeEvent::Manifest { track: t, manifest } if t == *track => {
                    manifest_at.get_or_insert(t0.elapsed());
                    total = Some(manifest.chunks.len());
                }
                NodeEvent::Chunk {
                    track: t, index, ..
                } if t == *track => {
                    got += 1;
                    if index == 0 {
                        chunk0 = Some(t0.elapsed());
                    }
                }
                NodeEvent::PlayStarted {
                    track: t,
                    time_to_first_audio_ms: Some(ms),
                } if t == *track => ttfa = Some(ms),
                NodeEvent::Finished(s) if s.track == *track => {
                    bail!("{name}: play of {track} finished early: {s:?}");
                }
                _ => {}
            }
        }
        node.command(SchedulerCommand::Stop).await;
        loop {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .context("no Finished after Stop")?
                .context("node stopped")?;
            if let NodeEvent::Finished(s) = ev {
                let b = s.bytes_by_source;
                ensure!(
                    b.peers > 0 && b.origin == 0 && b.cache == 0,
                    "{name}: play of {track} not served by the peer alone: {b:?}"
                );
                break;
            }
        }
        if i > 0 {
            samples.push(PlaySample {
                ttfa_ms: ttfa.unwrap_or(0) as f64,
                chunk0_us: chunk0.unwrap_or_default().as_secs_f64() * 1e6,
                manifest_us: (!manifests_on_disk)
                    .then(|| manifest_at.unwrap_or_default().as_secs_f64() * 1e6),
            });
        }
        // Lets the status refresh and the seeder's default 1 MB/s upload bucket refill (a
        // play fetches ≈ 35 KB).
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    node.shutdown().await;
    ensure!(
        disconnected == 0,
        "{name}: {disconnected} plays started without a connection to the seeder"
    );
    Ok(samples)
}

async fn ttfa(w: &World, plays: usize) -> Result<()> {
    // The seeder: the CLI with default settings.
    let cache = w.fill_cache("seeder", &w.excerpts)?;
    let mut cmd = Command::new(bin("shoal-peer")?);
    cmd.args(["serve", "--tracker", &w.url, "--cache"])
        .arg(&cache)
        .args(["--listen", LOOPBACK_QUIC])
        .env("RUST_LOG", "warn");
    let mut seeder = Proc::spawn("seeder", cmd, w.pin, &w.work)?;
    let id_line = seeder.wait_line("peer ")?;
    let peer: PeerId = id_line
        .split_whitespace()
        .next()
        .context("no PeerId")?
        .parse()?;
    let addr: Multiaddr = seeder.wait_line("listening on ")?.parse()?;
    seeder.wait_line("announced ")?;

    let (a, b) = w.excerpts.split_at(plays + 1);
    let cold = listener_plays(w, "listener-cold", a, false).await?;
    let warm = listener_plays(w, "listener-manifests", b, true).await?;

    // RTTs, same run, same machine state.
    let quinn = QuinnServer::start(w).await?;
    let udp = dist(rtt_udp(quinn.udp_port).await?);
    let conn = quinn_client(&quinn.cert, quinn.addr, false).await?;
    let q = dist(rtt_quinn(&conn).await?);
    conn.close(0u32.into(), b"");
    let l = dist(rtt_libp2p(peer, addr, w.excerpts[0]).await?);
    let endpoint = TrackerEndpoint::discover(&OriginClient::new(&w.url)?).await?;
    let lk = dist(rtt_lookup(&endpoint, w.excerpts[0]).await?);
    drop(quinn);
    drop(seeder);

    println!();
    println!("## Time to first audio from one peer on loopback ({plays} plays per listener)");
    println!();
    println!("| round trip on loopback ({RTT_SAMPLES} samples) | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| UDP echo (kernel loopback) | {:.0} µs | {:.0} µs |",
        udp.p50, udp.p99
    );
    println!(
        "| bare QUIC (quinn), new stream per request | {:.0} µs | {:.0} µs |",
        q.p50, q.p99
    );
    println!(
        "| libp2p `/shoal/chunk/2` QueryHave answered by the seeder | {:.0} µs | {:.0} µs |",
        l.p50, l.p99
    );
    println!(
        "| libp2p `/shoal/lookup/1` holder lookup answered by the tracker ({LOOKUP_SAMPLES} \
         samples, 60 ms apart) | {:.0} µs | {:.0} µs |",
        lk.p50, lk.p99
    );
    println!();
    println!(
        "| listener | core TTFA p50 / p99 / max (ms) | Play → chunk 0 p50 / p99 / max | \
         Play → manifest p50 / p99 | p50 − UDP RTT | p99 − UDP RTT | target ≤ 1 RTT + 5 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [
        ("cold (lookup + manifest + chunk 0)", &cold),
        ("manifests on disk (lookup + chunk 0)", &warm),
    ] {
        let core = dist(s.iter().map(|p| p.ttfa_ms).collect());
        let c0 = dist(s.iter().map(|p| p.chunk0_us).collect());
        let man: Vec<f64> = s.iter().filter_map(|p| p.manifest_us).collect();
        let man = if man.is_empty() {
            "—".to_owned()
        } else {
            let m = dist(man);
            format!("{:.2} / {:.2} ms", m.p50 / 1e3, m.p99 / 1e3)
        };
        let budget = udp.p50 + 5_000.0;
        let met = c0.p99 <= budget && core.p99 <= budget / 1e3;
        println!(
            "| {name} | {:.0} / {:.0} / {:.0} | {:.2} / {:.2} / {:.2} ms | {man} | {:.2} ms | {:.2} ms | {} |",
            core.p50,
            core.p99,
            core.max,
            c0.p50 / 1e3,
            c0.p99 / 1e3,
            c0.max / 1e3,
            (c0.p50 - udp.p50) / 1e3,
            (c0.p99 - udp.p50) / 1e3,
            if met { "met" } else { "**not met**" },
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Serving throughput.

struct QuinnServer {
    proc: Proc,
    addr: std::net::SocketAddr,
    udp_port: u16,
    cert: Vec<u8>,
}

impl QuinnServer {
    async fn start(w: &World) -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let cert = ck.cert.der().to_vec();
        std::fs::write(w.work.join("quinn.cert.der"), &cert)?;
        std::fs::write(w.work.join("quinn.key.der"), ck.key_pair.serialize_der())?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg(&w.work).arg(&w.data).env(ROLE_ENV, "quinn");
        let mut proc = Proc::spawn("quinn-server", cmd, w.pin, &w.work)?;
        let line = proc.wait_line("ready ")?;
        let mut it = line.split_whitespace();
        let port: u16 = it.next().context("port")?.parse()?;
        let udp_port: u16 = it.next().context("udp port")?.parse()?;
        Ok(Self {
            proc,
            addr: ([127, 0, 0, 1], port).into(),
            udp_port,
            cert,
        })
    }
}

#[derive(Clone, Copy)]
struct Run {
    secs: f64,
    bytes: u64,
    requests: u64,
    errors: u64,
    server_cpu: f64,
    client_cpu: f64,
    /// Time the server's threads spent runnable but waiting for a CPU (other processes).
    server_wait: f64,
}

impl Run {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    fn mbit_s(&self) -> f64 {
        self.mb_s() * 8.0
    }
    fn server_share(&self) -> f64 {
        self.server_cpu / self.secs
    }
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// Runs `conns` requesters made by `spawn` for the warm-up and the measured window.
async fn measure<F>(server_pid: u32, conns: usize, spawn: F) -> Result<Run>
where
    F: Fn(usize, Arc<Counters>) -> tokio::task::JoinHandle<Result<()>>,
{
    let secs: f64 = env_or("PEERBENCH_SECS", 10.0);
    let c = Arc::new(Counters::default());
    let tasks: Vec<_> = (0..conns).map(|i| spawn(i, c.clone())).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = server_pid.to_string();
    let (b0, r0, e0) = (
        c.bytes.load(Ordering::Relaxed),
        c.requests.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
    );
    let (s0, m0, w0, t0) = (
        cpu_secs(&pid)?,
        cpu_secs("self")?,
        runqueue_wait_secs(&pid),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (b1, r1, e1) = (
        c.bytes.load(Ordering::Relaxed),
        c.requests.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
    );
    let (s1, m1, w1, elapsed) = (
        cpu_secs(&pid)?,
        cpu_secs("self")?,
        runqueue_wait_secs(&pid),
        t0.elapsed(),
    );
    c.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(Run {
        secs: elapsed.as_secs_f64(),
        bytes: b1 - b0,
        requests: r1 - r0,
        errors: e1 - e0,
        server_cpu: s1 - s0,
        client_cpu: m1 - m0,
        server_wait: w1 - w0,
    })
}

/// Bare quinn requesters: one stream per request, or (`long_lived`) one stream each carrying
/// request after request.
async fn run_quinn(
    s: &QuinnServer,
    chunks: &Arc<Vec<Vec<u8>>>,
    conns: usize,
    chacha: bool,
    long_lived: bool,
) -> Result<Run> {
    let (cert, addr) = (Arc::new(s.cert.clone()), s.addr);
    measure(s.proc.pid(), conns, |i, c| {
        let (cert, chunks) = (cert.clone(), chunks.clone());
        tokio::spawn(async move {
            let conn = quinn_client(&cert, addr, chacha).await?;
            let mut k = i * 7;
            let mut stream = if long_lived {
                let (mut send, recv) = conn.open_bi().await?;
                send.write_all(&[LONG_LIVED]).await?;
                Some((send, recv, Vec::new()))
            } else {
                None
            };
            while !c.stop.load(Ordering::Relaxed) {
                k = (k + 1) % chunks.len();
                let answer = match &mut stream {
                    Some((send, recv, buf)) => {
                        async {
                            send.write_all(&chunks[k]).await?;
                            let mut len = [0u8; 4];
                            recv.read_exact(&mut len).await?;
                            buf.resize(u32::from_be_bytes(len) as usize, 0);
                            recv.read_exact(buf).await?;
                            anyhow::Ok(buf.len())
                        }
                        .await
                    }
                    None => quinn_request(&conn, &chunks[k]).await,
                };
                match answer {
                    Ok(n) if n > 0 => {
                        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        c.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if i == 0 && std::env::var_os("PEERBENCH_VERBOSE").is_some() {
                let s = conn.stats();
                eprintln!(
                    "quinn requester 0: rtt {:?}, cwnd {}, lost packets {}, congestion events {}, \
                     sent packets {}, mtu {}",
                    s.path.rtt,
                    s.path.cwnd,
                    s.path.lost_packets,
                    s.path.congestion_events,
                    s.path.sent_packets,
                    s.path.current_mtu
                );
            }
            conn.close(0u32.into(), b"");
            Ok(())
        })
    })
    .await
}

async fn run_peer(
    pid: u32,
    peer: PeerId,
    addr: &Multiaddr,
    chunks: &Arc<Vec<(TrackId, ChunkId, u32)>>,
    conns: usize,
) -> Result<Run> {
    measure(pid, conns, |i, c| {
        let (chunks, addr) = (chunks.clone(), addr.clone());
        tokio::spawn(async move {
            let mut client = ChunkClient::new(peer, addr)?;
            let mut k = i * 7;
            let mut request = 0u64;
            while !c.stop.load(Ordering::Relaxed) {
                k = (k + 1) % chunks.len();
                request += 1;
                let (track, chunk, _) = chunks[k];
                let req = ChunkRequest::GetChunk {
                    request,
                    track,
                    chunk,
                };
                match client.round_trip(peer, req).await {
                    Ok(ChunkResponse::Chunk { bytes, .. }) => {
                        c.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        c.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })
    })
    .await
}

async fn run_http(
    pid: u32,
    url: &str,
    chunks: &Arc<Vec<(TrackId, ChunkId, u32)>>,
    conns: usize,
) -> Result<Run> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns * 2)
        .build()?;
    let urls: Arc<Vec<String>> = Arc::new(
        chunks
            .iter()
            .map(|(_, c, _)| format!("{url}/chunks/{c}"))
            .collect(),
    );
    measure(pid, conns, |i, c| {
        let (client, urls) = (client.clone(), urls.clone());
        tokio::spawn(async move {
            let mut k = i * 7;
            while !c.stop.load(Ordering::Relaxed) {
                k = (k + 1) % urls.len();
                let got = async {
                    let r = client.get(&urls[k]).send().await?.error_for_status()?;
                    r.bytes().await
                }
                .await;
                match got {
                    Ok(b) => {
                        c.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        c.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })
    })
    .await
}

async fn throughput(w: &World) -> Result<()> {
    let conns: usize = env_or("PEERBENCH_CONNS", 16);
    let reps: usize = env_or("PEERBENCH_REPS", 2);
    let chunks = Arc::new(w.chunks.clone());
    let mean = chunks.iter().map(|c| u64::from(c.2)).sum::<u64>() / chunks.len() as u64;
    let quinn_reqs: Arc<Vec<Vec<u8>>> = Arc::new(
        chunks
            .iter()
            .map(|(_, c, _)| c.to_string().into_bytes())
            .collect(),
    );

    let quinn = QuinnServer::start(w).await?;
    let cache = w.fill_cache("throughput-peer", &[w.full])?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(&cache)
        .env(ROLE_ENV, "peer")
        .env("RUST_LOG", "warn");
    let mut peer_proc = Proc::spawn("peer-server", cmd, w.pin, &w.work)?;
    let line = peer_proc.wait_line("ready ")?;
    let mut it = line.split_whitespace();
    let peer: PeerId = it.next().context("PeerId")?.parse()?;
    let addr: Multiaddr = it.next().context("address")?.parse()?;

    let mut best: [Option<Run>; 6] = [None; 6];
    let keep = |slot: &mut Option<Run>, r: Run| {
        if slot.is_none_or(|b| r.bytes as f64 / r.secs > b.bytes as f64 / b.secs) {
            *slot = Some(r);
        }
    };
    for rep in 0..reps {
        let q = run_quinn(&quinn, &quinn_reqs, conns, false, false).await?;
        let c = run_quinn(&quinn, &quinn_reqs, conns, true, false).await?;
        let ql = run_quinn(&quinn, &quinn_reqs, conns, false, true).await?;
        let cl = run_quinn(&quinn, &quinn_reqs, conns, true, true).await?;
        let p = run_peer(peer_proc.pid(), peer, &addr, &chunks, conns).await?;
        let h = run_http(w.tracker.pid(), &w.url, &chunks, conns).await?;
        for (i, (name, r)) in [
            ("quinn", q),
            ("quinn-chacha", c),
            ("quinn-long-lived", ql),
            ("quinn-chacha-long-lived", cl),
            ("peer", p),
            ("http", h),
        ]
        .into_iter()
        .enumerate()
        {
            eprintln!(
                "run {rep} {name}: {:.0} MB/s, {} requests, {} errors, server CPU {:.0} % \
                 (+{:.0} % waiting for a CPU), client CPU {:.0} %",
                r.mb_s(),
                r.requests,
                r.errors,
                100.0 * r.server_share(),
                100.0 * r.server_wait / r.secs,
                100.0 * r.client_cpu / r.secs
            );
            keep(&mut best[i], r);
        }
    }
    drop(peer_proc);
    let quinn_log = quinn.proc.err.clone();
    drop(quinn);
    if std::env::var_os("PEERBENCH_VERBOSE").is_some() {
        eprint!("{}", std::fs::read_to_string(quinn_log).unwrap_or_default());
    }
    let [Some(q), Some(c), Some(ql), Some(cl), Some(p), Some(h)] = best else {
        bail!("no runs");
    };

    println!();
    println!(
        "## Chunk serving throughput: {conns} requesters × 1 request in flight, {CHUNKS} chunks \
         of {mean} B on average, best of {reps}, {:.0} s each",
        q.secs
    );
    println!();
    println!(
        "| server (one process, CPU 0) | requests/s | payload MB/s | Mbit/s | errors | server CPU \
         (+ waiting for a CPU) | client CPU | server CPU per served Mbit/s | MB per server \
         CPU-second |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, r) in [
        (
            "bare quinn, one stream per request, bytes from memory (AES-128-GCM)",
            q,
        ),
        (
            "bare quinn, same, ChaCha20-Poly1305 (libp2p-tls's first choice)",
            c,
        ),
        (
            "bare quinn, one long-lived stream per requester (AES-128-GCM)",
            ql,
        ),
        (
            "bare quinn, one long-lived stream per requester (ChaCha20-Poly1305)",
            cl,
        ),
        (
            "peer, `/shoal/chunk/2` over libp2p QUIC, from its disk cache",
            p,
        ),
        ("tracker origin, plaintext HTTP/1.1 `GET /chunks/{id}`", h),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {} | {:.0} % (+{:.0} %) | {:.0} % | {:.4} % of a \
             core | {:.0} |",
            r.requests as f64 / r.secs,
            r.mb_s(),
            r.mbit_s(),
            r.errors,
            100.0 * r.server_share(),
            100.0 * r.server_wait / r.secs,
            100.0 * r.client_cpu / r.secs,
            100.0 * r.server_share() / r.mbit_s(),
            r.bytes as f64 / 1e6 / r.server_cpu.max(1e-9),
        );
    }
    let per_cpu = |r: &Run| r.bytes as f64 / r.server_cpu.max(1e-9);
    println!();
    println!(
        "peer ÷ quinn throughput (target ≥ 0.8): **{:.2}** ({}); per server CPU-second {:.2}",
        p.mb_s() / q.mb_s(),
        if p.mb_s() / q.mb_s() >= 0.8 {
            "met"
        } else {
            "not met"
        },
        per_cpu(&p) / per_cpu(&q)
    );
    println!(
        "peer ÷ quinn with ChaCha20 throughput: **{:.2}**; per server CPU-second {:.2}",
        p.mb_s() / c.mb_s(),
        per_cpu(&p) / per_cpu(&c)
    );
    println!(
        "peer ÷ quinn long-lived streams: **{:.2}** (AES), **{:.2}** (ChaCha20); per server \
         CPU-second {:.2} / {:.2}",
        p.mb_s() / ql.mb_s(),
        p.mb_s() / cl.mb_s(),
        per_cpu(&p) / per_cpu(&ql),
        per_cpu(&p) / per_cpu(&cl)
    );
    println!(
        "peer ÷ HTTP origin throughput: **{:.2}**; per server CPU-second {:.2}",
        p.mb_s() / h.mb_s(),
        per_cpu(&p) / per_cpu(&h)
    );
    Ok(())
}
