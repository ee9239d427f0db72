//! The tracker's libp2p side: `/shoal/announce/1` and `/shoal/lookup/1` request-response over
//! QUIC, with TCP+Noise+Yamux as fallback, plus identify and ping. Owns the tracker's libp2p
//! identity (a key file in the data directory), the frame codec on libp2p streams, the swarm
//! task, and the per-peer lookup rate limit.
//!
//! Thin driver: every registry decision (announce rules and caps, ranking, expiry) is
//! [`PeerRegistry`]'s. The driver supplies what the core cannot know:
//! - the sender's identity: the [`NodeId`] derived from the PeerId the connection authenticated
//!   (Noise or QUIC's TLS), never from a message field, so nobody can announce for another
//!   peer;
//! - its contact: that PeerId and the addresses the tracker saw it at (the connection's remote
//!   address, then the listen addresses identify reported), used when the announce lists none;
//! - `now`, from a monotonic clock, and the purge timer ([`PeerRegistry::next_deadline`]).
//!
//! Catalog searches run on their own tasks (bounded by [`P2pLimits::max_concurrent_searches`])
//! and their answers come back to the swarm task through a channel, since only the swarm can
//! send a response.
//!
//! [`client::TrackerClient`] is the other end: announce and lookup from a peer.

pub mod client;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, tcp, yamux};
use shoal_protocol::ids::NodeId;
use shoal_protocol::sansio::Time;
use shoal_protocol::wire::{
    ANNOUNCE_PROTOCOL, Announce, AnnounceResponse, CLUSTER_PROTOCOL, ClusterAnnounce,
    LENGTH_PREFIX_BYTES, LOOKUP_PROTOCOL, LookupRequest, LookupResponse, TrackSummary, WireError,
    WireMessage,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::catalog::{Catalog, MAX_SEARCH_RESULTS};
use crate::core::{ConfigError, HolderRef, PeerRegistry, RegistryConfig, RegistryStats};
use crate::store::TrackMeta;

/// The libp2p port of `shoal-tracker serve` (QUIC and TCP).
pub const DEFAULT_PORT: u16 = 7701;

/// What identify reports as the protocol family.
pub const IDENTIFY_PROTOCOL: &str = "/shoal/1";

/// File name of the tracker's key inside the data directory.
pub const KEY_FILE: &str = "tracker.key";

// ---------------------------------------------------------------------------------------------
// Frames on libp2p streams.

/// Reads one frame of `M`: the 4-byte big-endian length, checked against `M::MAX_BYTES` before
/// any payload is read, then exactly that many bytes, decoded. The buffer grows with the bytes
/// that actually arrive, so a peer that declares a large frame and sends little costs little.
pub async fn read_frame<M, T>(io: &mut T) -> io::Result<M>
where
    M: WireMessage,
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    io.read_exact(&mut prefix).await?;
    let len = M::payload_len(prefix).map_err(invalid)?;
    // Room for a whole chunk response up front (no regrowth and copy on the hot path), but
    // never more than that on a peer's word alone.
    let mut payload = Vec::with_capacity(len.min(shoal_protocol::chunk::MAX_CHUNK_BYTES + 1024));
    // `len` fits in u64 on every platform libp2p runs on.
    let want = u64::try_from(len).unwrap_or(u64::MAX);
    io.take(want).read_to_end(&mut payload).await?;
    if payload.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            WireError::Incomplete {
                have: LENGTH_PREFIX_BYTES + payload.len(),
                need: LENGTH_PREFIX_BYTES + len,
            },
        ));
    }
    M::decode_payload(&payload).map_err(invalid)
}

/// Writes one frame of `msg` (refused before anything is written if it exceeds its limit).
pub async fn write_frame<M, T>(io: &mut T, msg: &M) -> io::Result<()>
where
    M: WireMessage + Sync,
    T: AsyncWrite + Unpin + Send,
{
    let frame = msg.encode_frame().map_err(invalid)?;
    io.write_all(&frame).await
}

fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The request-response codec of one protocol: `Req` → `Resp`, each in one frame.
pub struct FrameCodec<Req, Resp> {
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<Req, Resp> request_response::Codec for FrameCodec<Req, Resp>
where
    Req: WireMessage + Send + Sync + 'static,
    Resp: WireMessage + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// The codec of `/shoal/announce/1`.
pub type AnnounceCodec = FrameCodec<Announce, AnnounceResponse>;
/// The codec of `/shoal/lookup/1`.
pub type LookupCodec = FrameCodec<LookupRequest, LookupResponse>;
/// The codec of `/shoal/cluster/1` (a super-peer's aggregated announce).
pub type ClusterCodec = FrameCodec<ClusterAnnounce, AnnounceResponse>;

// ---------------------------------------------------------------------------------------------
// The behaviour (shared by the tracker, which answers, and clients, which ask).

/// Announce and lookup request-response, identify and ping.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// `/shoal/announce/1`.
    pub announce: request_response::Behaviour<AnnounceCodec>,
    /// `/shoal/lookup/1`.
    pub lookup: request_response::Behaviour<LookupCodec>,
    /// `/shoal/cluster/1`: answered by the tracker only; super-peers send on it.
    pub cluster: request_response::Behaviour<ClusterCodec>,
    /// Exchanges listen addresses and agent versions.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
}

impl Behaviour {
    /// The tracker answers both protocols (`ProtocolSupport::Inbound`); clients ask
    /// (`Outbound`). `request_timeout` bounds a whole request, reading and answering included.
    /// `/shoal/cluster/1` is inbound only on the tracker (`Inbound`) and outbound on every
    /// other node, super-peers (`Full`) included.
    pub fn new(key: &Keypair, support: ProtocolSupport, request_timeout: Duration) -> Self {
        let rr = request_response::Config::default().with_request_timeout(request_timeout);
        let cluster_support = if support.inbound() && !support.outbound() {
            ProtocolSupport::Inbound
        } else {
            ProtocolSupport::Outbound
        };
        Self {
            cluster: request_response::Behaviour::new(
                [(StreamProtocol::new(CLUSTER_PROTOCOL), cluster_support)],
                rr.clone(),
            ),
            announce: request_response::Behaviour::new(
                [(StreamProtocol::new(ANNOUNCE_PROTOCOL), support.clone())],
                rr.clone(),
            ),
            lookup: request_response::Behaviour::new(
                [(StreamProtocol::new(LOOKUP_PROTOCOL), support)],
                rr,
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
        }
    }
}

/// A swarm on QUIC and TCP+Noise+Yamux with `behaviour`, closing connections idle longer than
/// `idle`.
pub(crate) fn build_swarm(
    key: Keypair,
    behaviour: impl FnOnce(&Keypair) -> Behaviour,
    idle: Duration,
) -> Result<Swarm<Behaviour>, String> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_behaviour(|key| behaviour(key))
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

// ---------------------------------------------------------------------------------------------
// Identity.

/// Starts listening on every address of `addrs` and waits (at most `timeout`) until each
/// listener has bound, returning the bound addresses (a wildcard listener may bind several).
/// On failure: the address that could not be bound and why. Shared by every role's driver.
pub async fn listen_all<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<Multiaddr>, (Multiaddr, String)> {
    let mut pending = HashMap::new();
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| (addr.clone(), e.to_string()))?;
        pending.insert(id, addr.clone());
    }
    let mut bound = Vec::new();
    let bind = async {
        while !pending.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending.remove(&listener_id);
                    bound.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some(addr) = pending.remove(&listener_id) {
                        let reason = match reason {
                            Ok(()) => "listener closed".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        return Err((addr, reason));
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(addr) = pending.remove(&listener_id) {
                        return Err((addr, error.to_string()));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, bind).await {
        Ok(result) => result?,
        Err(_) => {
            let addr = pending
                .values()
                .next()
                .cloned()
                .unwrap_or_else(Multiaddr::empty);
            return Err((addr, format!("no address bound within {timeout:?}")));
        }
    }
    Ok(bound)
}

/// Why the libp2p side could not start.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The key file exists but cannot be read.
    #[error("cannot read the tracker key {}: {err}", path.display())]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        err: io::Error,
    },
    /// The key file holds something that is not a protobuf-encoded libp2p keypair.
    #[error("{} is not a libp2p key (protobuf-encoded keypair): {reason}; move it away to create a new identity", path.display())]
    KeyDecode {
        /// The key file.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
    },
    /// A new key could not be written.
    #[error("cannot write the tracker key {}: {err}", path.display())]
    KeyWrite {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        err: io::Error,
    },
    /// The registry thresholds are unusable.
    #[error(transparent)]
    Registry(#[from] ConfigError),
    /// No listen address was given.
    #[error("no libp2p listen address given")]
    NoListenAddr,
    /// The transport stack could not be built.
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    /// An address cannot be listened on (in use, not local, unsupported protocol).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The swarm task panicked or was cancelled.
    #[error("the libp2p task failed: {0}")]
    Task(String),
}

/// Loads the keypair at `path`, or creates an ed25519 one there (mode 0600, written to a
/// temporary file, fsynced and renamed) when there is none, so the tracker keeps its PeerId
/// across restarts.
pub fn load_or_create_key(path: &Path) -> Result<Keypair, P2pError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            warn_if_readable_by_others(path);
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| P2pError::KeyDecode {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| P2pError::KeyWrite {
                path: path.to_owned(),
                err: io::Error::other(e),
            })?;
            write_private(path, &bytes).map_err(|err| P2pError::KeyWrite {
                path: path.to_owned(),
                err,
            })?;
            tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created a new libp2p identity");
            Ok(key)
        }
        Err(err) => Err(P2pError::KeyRead {
            path: path.to_owned(),
            err,
        }),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // Never replace a key another process created meanwhile: link fails if it exists.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the tracker key is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// Limits of the driver itself (the registry's are in [`RegistryConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct P2pLimits {
    /// Sustained lookups per second one peer may make (default 20).
    pub lookups_per_sec: f64,
    /// Lookups one peer may make back to back (default 50).
    pub lookup_burst: u32,
    /// Catalog searches running at once; more are answered "busy" (default 32).
    pub max_concurrent_searches: usize,
    /// Connections at once; newer ones beyond it are closed (default 8,192).
    pub max_connections: usize,
    /// Connections from one peer at once (default 4).
    pub max_connections_per_peer: usize,
    /// A request must be read and answered within this (default 10 s).
    pub request_timeout: Duration,
    /// Connections with no open stream close after this (default 60 s).
    pub idle_timeout: Duration,
}

impl Default for P2pLimits {
    fn default() -> Self {
        Self {
            lookups_per_sec: 20.0,
            lookup_burst: 50,
            max_concurrent_searches: 32,
            max_connections: 8_192,
            max_connections_per_peer: 4,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Settings of the libp2p side of `shoal-tracker serve`.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Addresses to listen on (default [`P2pConfig::default_listen`]: QUIC and TCP on 7701).
    pub listen: Vec<Multiaddr>,
    /// The identity key file (conventionally `DATA/tracker.key`, see [`P2pConfig::new`]).
    pub key_path: PathBuf,
    /// Peer registry thresholds.
    pub registry: RegistryConfig,
    /// Driver limits.
    pub limits: P2pLimits,
}

impl P2pConfig {
    /// Defaults for the data directory `data`: key in `DATA/tracker.key`, QUIC and TCP on
    /// all IPv4 interfaces, port 7701.
    pub fn new(data: &Path) -> Self {
        Self {
            listen: Self::default_listen(),
            key_path: data.join(KEY_FILE),
            registry: RegistryConfig::default(),
            limits: P2pLimits::default(),
        }
    }

    /// `/ip4/0.0.0.0/udp/7701/quic-v1` and `/ip4/0.0.0.0/tcp/7701`.
    pub fn default_listen() -> Vec<Multiaddr> {
        use libp2p::multiaddr::Protocol;
        let any = Multiaddr::empty().with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED));
        vec![
            any.clone()
                .with(Protocol::Udp(DEFAULT_PORT))
                .with(Protocol::QuicV1),
            any.with(Protocol::Tcp(DEFAULT_PORT)),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

/// The running libp2p side. Dropping it stops the swarm too (without waiting).
#[derive(Debug)]
pub struct P2pHandle {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    registry: Arc<Mutex<PeerRegistry>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl P2pHandle {
    /// The tracker's PeerId (stable across restarts with the same key file).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses bound at start (ports resolved, so tests can listen on port 0), without
    /// the `/p2p/` suffix.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The bound addresses with `/p2p/PEER_ID`, as peers should dial them.
    pub fn dial_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect()
    }

    /// Registry counters and sizes (for `/metrics`).
    pub fn stats(&self) -> RegistryStats {
        lock(&self.registry).stats()
    }

    /// The registry the swarm task updates (hold the lock briefly: the swarm waits on it).
    pub fn registry(&self) -> Arc<Mutex<PeerRegistry>> {
        Arc::clone(&self.registry)
    }

    /// Stops the swarm (closing every connection) and waits for its task.
    pub async fn stop(mut self) -> Result<(), P2pError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| P2pError::Task(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for P2pHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Loads (or creates) the identity, listens on every address of `config.listen` and starts the
/// swarm task. Returns once every listener has bound (or fails if one cannot).
pub async fn start(config: P2pConfig, catalog: Catalog) -> Result<P2pHandle, P2pError> {
    if config.listen.is_empty() {
        return Err(P2pError::NoListenAddr);
    }
    let registry = PeerRegistry::new(config.registry.clone())?;
    let key = load_or_create_key(&config.key_path)?;
    let peer_id = key.public().to_peer_id();
    let limits = config.limits.clone();
    let timeout = limits.request_timeout;
    let mut swarm = build_swarm(
        key,
        |k| Behaviour::new(k, ProtocolSupport::Inbound, timeout),
        limits.idle_timeout,
    )
    .map_err(P2pError::Transport)?;

    let listen_addrs = listen_all(&mut swarm, &config.listen, Duration::from_secs(10))
        .await
        .map_err(|(addr, reason)| P2pError::Listen { addr, reason })?;
    for addr in &listen_addrs {
        tracing::info!(%peer_id, %addr, "libp2p listening");
    }

    let registry = Arc::new(Mutex::new(registry));
    let (stop_tx, stop_rx) = oneshot::channel();
    let searches = limits.max_concurrent_searches.max(1);
    let (search_tx, search_rx) = mpsc::channel(searches);
    let driver = Driver {
        swarm,
        registry: Arc::clone(&registry),
        catalog,
        peers: HashMap::new(),
        connections: 0,
        start: Instant::now(),
        limits,
        search_tx,
        search_rx,
        searches: Arc::new(Semaphore::new(searches)),
    };
    let task = tokio::spawn(driver.run(stop_rx));
    Ok(P2pHandle {
        peer_id,
        listen_addrs,
        registry,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// Runs the libp2p side until `shutdown` completes.
pub async fn run(
    config: P2pConfig,
    catalog: Catalog,
    shutdown: impl Future<Output = ()>,
) -> Result<(), P2pError> {
    let handle = start(config, catalog).await?;
    shutdown.await;
    handle.stop().await
}

fn lock(registry: &Mutex<PeerRegistry>) -> MutexGuard<'_, PeerRegistry> {
    // The registry stays consistent between calls; a panic elsewhere must not stop the tracker.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the driver knows about a connected peer. Dropped with its last connection.
#[derive(Debug)]
struct PeerState {
    /// Remote address of each open connection, oldest first.
    observed: Vec<(ConnectionId, Multiaddr)>,
    /// Listen addresses from identify.
    listen: Vec<Multiaddr>,
    lookups: TokenBucket,
}

/// A search answer on its way back to the swarm task.
struct SearchDone {
    channel: ResponseChannel<LookupResponse>,
    response: LookupResponse,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    registry: Arc<Mutex<PeerRegistry>>,
    catalog: Catalog,
    peers: HashMap<PeerId, PeerState>,
    connections: usize,
    start: Instant,
    limits: P2pLimits,
    search_tx: mpsc::Sender<SearchDone>,
    search_rx: mpsc::Receiver<SearchDone>,
    searches: Arc<Semaphore>,
}

impl Driver {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let deadline = self.purge_deadline();
            let purge = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(done) = self.search_rx.recv() => self.respond_lookup(done.channel, done.response),
                () = purge => self.purge(),
            }
        }
        tracing::info!("libp2p side stopped");
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn purge_deadline(&self) -> Option<tokio::time::Instant> {
        let at = lock(&self.registry).next_deadline();
        if at == Time::NEVER {
            return None;
        }
        let at = self
            .start
            .checked_add(Duration::from_micros(at.as_micros()))?;
        Some(tokio::time::Instant::from_std(at))
    }

    fn purge(&mut self) {
        let now = self.now();
        let mut registry = lock(&self.registry);
        let batch = registry.config().purge_batch;
        let removed = registry.purge_expired(now, batch);
        if removed > 0 {
            tracing::debug!(removed, "expired peers purged");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => self.on_closed(peer_id, connection_id),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "libp2p listening");
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "libp2p address expired");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "libp2p listener error");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, connection: ConnectionId, endpoint: &ConnectedPoint) {
        let per_peer = self.peers.get(&peer).map_or(0, |p| p.observed.len());
        if self.connections >= self.limits.max_connections
            || per_peer >= self.limits.max_connections_per_peer
        {
            tracing::debug!(%peer, "connection limit reached, closing");
            self.swarm.close_connection(connection);
            return;
        }
        let remote = match endpoint {
            ConnectedPoint::Dialer { address, .. } => address.clone(),
            ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
        };
        let now = Instant::now();
        let burst = self.limits.lookup_burst;
        self.peers
            .entry(peer)
            .or_insert_with(|| PeerState {
                observed: Vec::new(),
                listen: Vec::new(),
                lookups: TokenBucket::full(burst, now),
            })
            .observed
            .push((connection, without_p2p(remote)));
        self.connections += 1;
    }

    fn on_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let before = state.observed.len();
        state.observed.retain(|(c, _)| *c != connection);
        if state.observed.len() < before {
            self.connections -= 1;
        }
        if state.observed.is_empty() {
            self.peers.remove(&peer);
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Announce(request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            }) => self.on_announce(peer, connection_id, &request, channel),
            BehaviourEvent::Lookup(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) => self.on_lookup(peer, request, channel),
            BehaviourEvent::Cluster(request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            }) => self.on_cluster_announce(peer, connection_id, &request, channel),
            BehaviourEvent::Cluster(request_response::Event::InboundFailure {
                peer,
                error,
                ..
            })
            | BehaviourEvent::Announce(request_response::Event::InboundFailure {
                peer,
                error,
                ..
            })
            | BehaviourEvent::Lookup(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    let max = lock(&self.registry).config().max_addrs;
                    state.listen = info
                        .listen_addrs
                        .into_iter()
                        .map(without_p2p)
                        .take(max)
                        .collect();
                }
            }
            _ => {}
        }
    }

    /// The contact the registry records for `peer` when its announce lists no addresses: its
    /// authenticated PeerId, the address this request's connection comes from, its other
    /// connections' addresses, then its identify listen addresses; deduplicated and cut to
    /// the registry's limits (they come from the driver, not the message, so an over-long
    /// list must not get the announce rejected).
    fn contact_of(
        &self,
        peer: &PeerId,
        connection: ConnectionId,
    ) -> shoal_protocol::wire::PeerContact {
        let (max_addrs, max_len) = {
            let registry = lock(&self.registry);
            (registry.config().max_addrs, registry.config().max_addr_len)
        };
        let mut addrs: Vec<String> = Vec::new();
        if let Some(state) = self.peers.get(peer) {
            let this = state.observed.iter().filter(|(c, _)| *c == connection);
            let others = state.observed.iter().filter(|(c, _)| *c != connection);
            let candidates = this
                .chain(others)
                .map(|(_, a)| a)
                .chain(state.listen.iter());
            for a in candidates {
                let s = a.to_string();
                if addrs.len() >= max_addrs {
                    break;
                }
                if s.len() <= max_len && !addrs.contains(&s) {
                    addrs.push(s);
                }
            }
        }
        shoal_protocol::wire::PeerContact {
            peer_id: peer.to_bytes(),
            addrs,
        }
    }

    fn on_announce(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        msg: &Announce,
        channel: ResponseChannel<AnnounceResponse>,
    ) {
        let contact = self.contact_of(&peer, connection);
        let node = NodeId::from_key(&contact.peer_id);
        let now = self.now();
        let response = match lock(&self.registry).announce(node, &contact, msg, now) {
            Ok(accepted) => {
                tracing::debug!(%peer, listed = accepted.listed, added = accepted.added, "announce accepted");
                accepted.to_response()
            }
            Err(e) => e.to_response(),
        };
        if self
            .swarm
            .behaviour_mut()
            .announce
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!(%peer, "announce answer not sent: the stream is gone");
        }
    }

    /// A super-peer's aggregated announce: its cluster is the one keyed by the PeerId this
    /// connection authenticated, so nobody can announce for another super-peer's leaves.
    fn on_cluster_announce(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        msg: &ClusterAnnounce,
        channel: ResponseChannel<AnnounceResponse>,
    ) {
        let contact = self.contact_of(&peer, connection);
        let node = NodeId::from_key(&contact.peer_id);
        let now = self.now();
        let response = match lock(&self.registry).announce_cluster(node, &contact, msg, now) {
            Ok(a) => {
                tracing::debug!(%peer, tracks = a.tracks, listings = a.listings, "cluster announce accepted");
                AnnounceResponse::Accepted {
                    ttl_secs: a.ttl_secs,
                }
            }
            Err(e) => e.to_response(),
        };
        if self
            .swarm
            .behaviour_mut()
            .cluster
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!(%peer, "cluster announce answer not sent: the stream is gone");
        }
    }

    fn on_lookup(
        &mut self,
        peer: PeerId,
        request: LookupRequest,
        channel: ResponseChannel<LookupResponse>,
    ) {
        let (rate, burst) = (self.limits.lookups_per_sec, self.limits.lookup_burst);
        let allowed = self
            .peers
            .get_mut(&peer)
            .is_some_and(|p| p.lookups.take(Instant::now(), rate, burst));
        if !allowed {
            let reason = format!("rate limited: at most {rate} lookups per second");
            self.respond_lookup(channel, LookupResponse::Error { reason });
            return;
        }
        match request {
            LookupRequest::Holders { track, limit } => {
                let node = NodeId::from_key(&peer.to_bytes());
                let now = self.now();
                let holders = lock(&self.registry)
                    .holders(node, &track, usize::from(limit), now)
                    .iter()
                    .map(HolderRef::to_holder)
                    .collect();
                self.respond_lookup(channel, LookupResponse::Holders { track, holders });
            }
            LookupRequest::Search { query, limit } => {
                let Ok(permit) = Arc::clone(&self.searches).try_acquire_owned() else {
                    let reason = "busy: too many searches at once, retry shortly".to_owned();
                    self.respond_lookup(channel, LookupResponse::Error { reason });
                    return;
                };
                let catalog = self.catalog.clone();
                let tx = self.search_tx.clone();
                tokio::spawn(async move {
                    let response = search(&catalog, &query, limit).await;
                    // The permit bounds the tasks, and the channel has one slot per permit.
                    let _ = tx.send(SearchDone { channel, response }).await;
                    drop(permit);
                });
            }
        }
    }

    fn respond_lookup(
        &mut self,
        channel: ResponseChannel<LookupResponse>,
        response: LookupResponse,
    ) {
        let response = fit(response);
        if self
            .swarm
            .behaviour_mut()
            .lookup
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("lookup answer not sent: the stream is gone");
        }
    }
}

async fn search(catalog: &Catalog, query: &str, limit: u16) -> LookupResponse {
    let limit = u32::from(limit).min(MAX_SEARCH_RESULTS);
    if limit == 0 {
        return LookupResponse::Tracks(Vec::new());
    }
    match catalog.search(query, limit).await {
        Ok(hits) => LookupResponse::Tracks(hits.into_iter().map(summary).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "catalog search failed");
            let reason = if e.is_unavailable() {
                "catalog unavailable, retry later"
            } else {
                "search failed"
            };
            LookupResponse::Error {
                reason: reason.into(),
            }
        }
    }
}

fn summary(m: TrackMeta) -> TrackSummary {
    TrackSummary {
        id: m.id,
        title: m.title,
        artist: m.artist,
        album: m.album,
        duration_ms: m.duration_ms,
    }
}

/// Drops trailing results until the answer fits the frame limit (long tags could otherwise
/// make a full page of results unsendable).
fn fit(mut response: LookupResponse) -> LookupResponse {
    while let Err(WireError::TooLarge { .. }) = response.encode_payload() {
        match &mut response {
            LookupResponse::Tracks(v) if !v.is_empty() => {
                v.pop();
            }
            LookupResponse::Holders { holders, .. } if !holders.is_empty() => {
                holders.pop();
            }
            _ => {
                return LookupResponse::Error {
                    reason: "answer too large".into(),
                };
            }
        }
    }
    response
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use futures::io::Cursor;
    use shoal_protocol::TrackId;

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn frames_round_trip() {
        let msg = Announce {
            replace: true,
            tracks: vec![TrackId::of(b"a"), TrackId::of(b"b")],
            removed: vec![],
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            via: None,
            region: Some("SE".into()),
        };
        let mut out = Cursor::new(Vec::new());
        block_on(write_frame(&mut out, &msg)).unwrap();
        let mut input = Cursor::new(out.into_inner());
        let back: Announce = block_on(read_frame(&mut input)).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_payload() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[7; 100]);
        let mut input = Cursor::new(bytes);
        let err = block_on(read_frame::<LookupRequest, _>(&mut input)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds"), "{err}");
        // Only the prefix was consumed.
        assert_eq!(input.position(), LENGTH_PREFIX_BYTES as u64);
        let just_over = u32::try_from(LookupRequest::MAX_BYTES + 1).unwrap();
        let mut input = Cursor::new(just_over.to_be_bytes().to_vec());
        assert!(block_on(read_frame::<LookupRequest, _>(&mut input)).is_err());
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let frame = LookupRequest::Search {
            query: "abc".into(),
            limit: 5,
        }
        .encode_frame()
        .unwrap();
        for cut in 0..frame.len() {
            let mut input = Cursor::new(frame[..cut].to_vec());
            assert!(block_on(read_frame::<LookupRequest, _>(&mut input)).is_err());
        }
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = block_on(read_frame::<LookupRequest, _>(&mut Cursor::new(garbage))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn too_large_messages_are_not_written() {
        let huge = AnnounceResponse::Rejected {
            reason: "x".repeat(AnnounceResponse::MAX_BYTES),
        };
        let mut out = Cursor::new(Vec::new());
        assert!(block_on(write_frame(&mut out, &huge)).is_err());
        assert!(out.into_inner().is_empty());
    }

    #[test]
    fn oversized_answers_are_trimmed() {
        let big = TrackSummary {
            id: TrackId::of(b"t"),
            title: "t".repeat(100_000),
            artist: None,
            album: None,
            duration_ms: 1,
        };
        let fitted = fit(LookupResponse::Tracks(vec![big; 20]));
        match fitted {
            LookupResponse::Tracks(v) => assert!(!v.is_empty() && v.len() < 20),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        assert!((0..3).all(|_| b.take(t0, 10.0, 3)));
        assert!(!b.take(t0, 10.0, 3));
        assert!(b.take(t0 + Duration::from_millis(100), 10.0, 3));
        assert!(!b.take(t0 + Duration::from_millis(100), 10.0, 3));
    }

    #[test]
    fn key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KEY_FILE);
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(P2pError::KeyDecode { .. })
        ));
    }
}
