//! The chunk cache's driver: an embedded cache peer.
//!
//! The super-peer runs a full Shoal peer ([`PeerNode`]) with its own identity
//! (`DATA/cache.key`), its own disk cache (`[cache] dir`, size-limited) and its own libp2p
//! listener (`[cache] listen`, default QUIC port 7704). When [`CacheAdmission`] admits a
//! track (several leaves looked it up), this task tells the cache peer to "play" it with a
//! playback buffer as long as any track, so the peer's scheduler fetches every chunk as fast
//! as peers and the origin deliver — explicit fetching, never snooping on relayed traffic,
//! which is encrypted end to end. Once every chunk of the manifest arrived the track is in the
//! ledger, and lookups answered by the super-peer list the cache peer first. The cache peer
//! serves `/shoal/chunk/2` like any peer and announces what it holds to the tracker itself.
//!
//! Thin: the admission core decides what to fetch and what the cache still holds; this task
//! turns its queue into play commands and the peer's events into `fetched`/`failed`.
//!
//! [`CacheAdmission`]: crate::core::CacheAdmission

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use shoal_peer::core::SchedulerCommand;
use shoal_peer::net::cache::DiskCache;
use shoal_peer::net::node::{NodeConfig, NodeEvent, PeerNode, TrackerEndpoint};
use shoal_peer::net::origin::OriginClient;
use shoal_protocol::TrackId;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::config::Settings;
use super::node::{Shared, lock};

/// File name of the cache peer's key inside the data directory.
pub const CACHE_KEY_FILE: &str = "cache.key";

/// Playback buffer of the cache peer: longer than any track, so the whole track is wanted.
const FETCH_AHEAD_MS: u64 = 6 * 3600 * 1000;
/// Chunks wanted at once (the window is also bounded by [`FETCH_AHEAD_MS`]).
const FETCH_CHUNKS_AHEAD: usize = 100_000;
/// A fetch with no new chunk for this long is abandoned.
const STALL: Duration = Duration::from_secs(120);
/// Upload rate of the cache peer (it serves a whole cluster): 100 Mbit/s.
const UPLOAD_BYTES_PER_SEC: u64 = 12_500_000;
/// Uploads at once.
const MAX_UPLOADS: usize = 64;

/// What the lookup path and the HTTP side know of the cache peer.
#[derive(Debug, Clone, Default)]
pub struct CacheView {
    /// "off", "starting", "running" or why it is not running.
    pub state: String,
    /// The cache peer's PeerId, once started.
    pub peer_id: Option<PeerId>,
    /// The addresses leaves are given (without `/p2p/`).
    pub addrs: Vec<Multiaddr>,
    /// Bytes the cache peer uploaded to leaves.
    pub served_bytes: u64,
    /// Peers connected to the cache peer.
    pub peers: usize,
    /// Tracks the cache peer holds completely (as its announcer counts them).
    pub held_tracks: usize,
    /// The tracker has accepted the cache peer's holdings (lookups from outside the cluster
    /// find it there).
    pub announced: bool,
    /// The track being fetched.
    pub fetching: Option<TrackId>,
}

/// The running cache task.
#[derive(Debug)]
pub struct Cache {
    stop: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

impl Cache {
    /// Stops the cache peer (closes its connections, flushes its disk cache).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(()).await;
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Opens the disk cache (failing `serve` if it cannot), loads what it already holds
/// completely into the ledger, and starts the cache peer in the background (it first needs
/// the tracker's libp2p endpoint). `None` when the cache is off or there is no tracker.
pub fn start(
    settings: &Settings,
    shared: &Arc<Shared>,
    wake: Arc<Notify>,
) -> anyhow::Result<Option<Cache>> {
    let c = &settings.cache;
    if !c.enabled {
        lock(&shared.cache).state = "off".into();
        return Ok(None);
    }
    let Some(tracker) = settings.tracker.clone() else {
        tracing::warn!("chunk cache off: it fetches through the tracker, and none is configured");
        lock(&shared.cache).state = "off (no tracker)".into();
        return Ok(None);
    };
    let mut disk = DiskCache::open(&c.dir, Some(c.max_bytes))
        .with_context(|| format!("cannot open the chunk cache {}", c.dir.display()))?;
    let key = shoal_tracker::net::p2p::load_or_create_key(&settings.data.join(CACHE_KEY_FILE))
        .context("cannot load the cache peer's key")?;
    let held = complete_tracks(&mut disk);
    {
        let mut a = lock(&shared.admission);
        for (track, bytes, chunks) in &held {
            a.fetched(*track, *bytes, *chunks);
        }
    }
    if !held.is_empty() {
        tracing::info!(tracks = held.len(), "chunk cache: tracks already on disk");
    }
    lock(&shared.cache).state = "starting".into();
    let mut config = NodeConfig::new(key);
    config.listen = c.listen.clone();
    config.peer.scheduler.buffer_ahead_ms = FETCH_AHEAD_MS;
    config.peer.scheduler.max_chunks_ahead = FETCH_CHUNKS_AHEAD;
    config.peer.server.upload_rate = UPLOAD_BYTES_PER_SEC;
    config.peer.server.upload_burst = config.peer.server.upload_burst.max(1 << 20);
    config.peer.server.max_uploads = MAX_UPLOADS;
    let (stop, stop_rx) = mpsc::channel(1);
    let task = tokio::spawn(run(
        config,
        disk,
        tracker,
        Arc::clone(shared),
        settings.cache.external_addrs.clone(),
        wake,
        stop_rx,
    ));
    Ok(Some(Cache { stop, task }))
}

/// Tracks whose manifest and every chunk are on disk: (track, bytes, chunks).
fn complete_tracks(disk: &mut DiskCache) -> Vec<(TrackId, u64, u64)> {
    let mut out = Vec::new();
    for track in disk.manifest_ids() {
        let Some(m) = disk.get_manifest(&track) else {
            continue;
        };
        if m.chunks.iter().all(|c| disk.contains(&c.id)) {
            let bytes = m.chunks.iter().map(|c| u64::from(c.len)).sum();
            out.push((track, bytes, m.chunks.len() as u64));
        }
    }
    out
}

/// The fetch in progress.
struct Fetch {
    track: TrackId,
    chunks: Option<usize>,
    got: HashSet<usize>,
    bytes: u64,
    progress: Instant,
}

async fn run(
    mut config: NodeConfig,
    disk: DiskCache,
    tracker_url: String,
    shared: Arc<Shared>,
    external: Vec<Multiaddr>,
    wake: Arc<Notify>,
    mut stop: mpsc::Receiver<()>,
) {
    let origin = match OriginClient::new(&tracker_url) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "chunk cache off: bad tracker URL");
            lock(&shared.cache).state = format!("off ({e})");
            return;
        }
    };
    // The tracker's libp2p endpoint (announce, lookup); retried until found.
    let mut wait = Duration::from_secs(1);
    let endpoint = loop {
        match TrackerEndpoint::discover(&origin).await {
            Ok(t) => break t,
            Err(e) => {
                tracing::warn!(error = %e, "chunk cache: tracker not reachable yet; retrying");
                lock(&shared.cache).state = format!("starting ({e})");
            }
        }
        tokio::select! {
            _ = stop.recv() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(60));
    };
    config.tracker = Some(endpoint);
    config.origin = Some(origin);
    let (node, mut events) = match PeerNode::start(config, disk).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "chunk cache off: the cache peer did not start");
            lock(&shared.cache).state = format!("off ({e})");
            return;
        }
    };
    for a in node.listen_addrs() {
        println!("cache {}", a.clone().with(Protocol::P2p(node.peer_id())));
    }
    tracing::info!(peer = %node.peer_id(), "chunk cache running");
    {
        let mut v = lock(&shared.cache);
        v.state = "running".into();
        v.peer_id = Some(node.peer_id());
        v.addrs = advertised(
            &external,
            node.listen_addrs(),
            &lock(&shared.external_addrs),
        );
    }
    let mut current: Option<Fetch> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            () = wake.notified() => {}
            ev = events.recv() => match ev {
                Some(ev) => on_event(&shared, &mut current, ev),
                None => break,
            },
            _ = tick.tick() => {
                let status = node.status();
                let mut v = lock(&shared.cache);
                v.served_bytes = status.served_bytes;
                v.peers = status.peers;
                v.held_tracks = status.held_tracks;
                v.announced = status.announced;
                v.addrs = advertised(&external, node.listen_addrs(), &lock(&shared.external_addrs));
                drop(v);
                if let Some(f) = &current
                    && f.progress.elapsed() > STALL
                {
                    tracing::warn!(track = %f.track, "chunk cache: fetch stalled; given up");
                    lock(&shared.admission).failed(f.track);
                    current = None;
                }
            }
        }
        if current.is_none() {
            let next = lock(&shared.admission).next_fetch();
            match next {
                Some(track) => {
                    tracing::info!(%track, "chunk cache: fetching");
                    current = Some(Fetch {
                        track,
                        chunks: None,
                        got: HashSet::new(),
                        bytes: 0,
                        progress: Instant::now(),
                    });
                    node.command(SchedulerCommand::Play {
                        track,
                        position_ms: 0,
                    })
                    .await;
                }
                None => {
                    if lock(&shared.cache).fetching.is_some() {
                        node.command(SchedulerCommand::Stop).await;
                    }
                }
            }
            lock(&shared.cache).fetching = current.as_ref().map(|f| f.track);
        }
    }
    lock(&shared.cache).state = "stopped".into();
    node.shutdown().await;
}

fn on_event(shared: &Shared, current: &mut Option<Fetch>, ev: NodeEvent) {
    let Some(f) = current.as_mut() else {
        return;
    };
    match ev {
        NodeEvent::Manifest { track, manifest } if track == f.track => {
            f.chunks = Some(manifest.chunks.len());
            f.progress = Instant::now();
        }
        NodeEvent::Chunk {
            track,
            index,
            bytes,
        } if track == f.track => {
            if f.got.insert(index) {
                f.bytes += bytes.len() as u64;
                f.progress = Instant::now();
            }
        }
        NodeEvent::TrackInvalid(track) if track == f.track => {
            tracing::warn!(%track, "chunk cache: invalid manifest; not cached");
            lock(&shared.admission).failed(track);
            *current = None;
            return;
        }
        NodeEvent::Finished(stats) if stats.track == f.track => {
            // Playback ended before every chunk arrived (cannot happen with the whole track
            // wanted, unless the play was replaced): try again when leaves ask again.
            if f.chunks != Some(f.got.len()) {
                lock(&shared.admission).failed(f.track);
                *current = None;
            }
            return;
        }
        _ => return,
    }
    if f.chunks == Some(f.got.len()) {
        let dropped = lock(&shared.admission).fetched(f.track, f.bytes, f.got.len() as u64);
        tracing::info!(track = %f.track, bytes = f.bytes, chunks = f.got.len(), "chunk cache: track cached");
        for t in dropped {
            tracing::debug!(track = %t, "chunk cache: track no longer listed (cache full)");
        }
        *current = None;
    }
}

/// The cache peer's addresses for leaves: the configured ones; else each listen address, with
/// its IP also replaced by each IP the super-peer advertises (a wildcard listener reports one
/// interface only; the super-peer's advertised IPs are the public ones).
fn advertised(
    configured: &[Multiaddr],
    listen: &[Multiaddr],
    superpeer: &[Multiaddr],
) -> Vec<Multiaddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let mut out: Vec<Multiaddr> = Vec::new();
    let mut push = |a: Multiaddr| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for l in listen {
        let mut parts = l.iter();
        let Some(ip) = parts.next() else {
            continue;
        };
        let rest: Vec<Protocol<'_>> = parts.collect();
        for sp in superpeer {
            let Some(sp_ip) = sp.iter().next() else {
                continue;
            };
            let same_family = matches!(
                (&ip, &sp_ip),
                (Protocol::Ip4(_), Protocol::Ip4(_)) | (Protocol::Ip6(_), Protocol::Ip6(_))
            );
            if same_family {
                let mut a = Multiaddr::empty().with(sp_ip);
                for p in &rest {
                    a.push(p.clone());
                }
                push(a);
            }
        }
        let unspecified = match ip {
            Protocol::Ip4(i) => i.is_unspecified(),
            Protocol::Ip6(i) => i.is_unspecified(),
            _ => false,
        };
        if !unspecified {
            push(l.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn m(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn advertised_addresses() {
        let listen = [m("/ip4/10.0.0.5/udp/7704/quic-v1")];
        let sp = [
            m("/ip4/203.0.113.7/udp/7702/quic-v1"),
            m("/ip4/203.0.113.7/tcp/7702"),
        ];
        assert_eq!(
            advertised(&[], &listen, &sp),
            vec![
                m("/ip4/203.0.113.7/udp/7704/quic-v1"),
                m("/ip4/10.0.0.5/udp/7704/quic-v1")
            ]
        );
        let conf = [m("/dns4/cache.example/udp/7704/quic-v1")];
        assert_eq!(advertised(&conf, &listen, &sp), conf.to_vec());
        let wild = [m("/ip4/0.0.0.0/udp/7704/quic-v1")];
        assert_eq!(advertised(&[], &wild, &[]), Vec::<Multiaddr>::new());
    }
}
