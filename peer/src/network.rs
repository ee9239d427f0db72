//! `play` and `serve` over the network: start a [`PeerNode`], feed a [`Player`], show status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_peer::audio::OutputTarget;
use shoal_peer::core::{PlayStats, SchedulerCommand};
use shoal_peer::net::cache::DiskCache;
use shoal_peer::net::node::{NodeConfig, NodeEvent, PeerNode, TrackerEndpoint};
use shoal_peer::net::origin::OriginClient;
use shoal_peer::net::player::Player;
use shoal_peer::net::stats::PlayReport;
use shoal_protocol::{Manifest, TrackId};
use shoal_tracker::store::LocalStore;
use tokio::sync::mpsc;

/// Resolved network options (flags over config file over defaults).
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub tracker: String,
    pub cache: PathBuf,
    pub cache_limit: Option<u64>,
    pub listen: Vec<libp2p::Multiaddr>,
    pub region: Option<String>,
    pub upload_bytes_per_s: Option<u64>,
    pub superpeers: Vec<libp2p::Multiaddr>,
}

/// A started node with its origin client.
pub struct Started {
    pub node: PeerNode,
    pub events: mpsc::UnboundedReceiver<NodeEvent>,
    pub origin: OriginClient,
}

/// Opens the cache, finds the tracker and starts the node.
pub async fn start_node(opts: &NetOptions) -> Result<Started> {
    let origin = OriginClient::new(&opts.tracker)?;
    let tracker = match TrackerEndpoint::discover(&origin).await {
        Ok(t) => Some(t),
        Err(e) if e.to_string().contains("cannot connect") => bail!(
            "cannot reach the tracker at {} (is `shoal-tracker serve` running there? \
             pass --tracker URL)",
            opts.tracker
        ),
        Err(e) => {
            tracing::warn!("{e}; no peers, only the origin will serve");
            None
        }
    };
    let cache = DiskCache::open(&opts.cache, opts.cache_limit)
        .with_context(|| format!("cannot open the cache {}", opts.cache.display()))?;
    let key = shoal_tracker::net::p2p::load_or_create_key(&opts.cache.join("peer.key"))
        .context("cannot load the peer's key")?;
    let mut config = NodeConfig::new(key);
    if !opts.listen.is_empty() {
        config.listen = opts.listen.clone();
    }
    config.tracker = tracker;
    config.origin = Some(origin.clone());
    config.region = opts.region.clone();
    config.superpeers = opts.superpeers.clone();
    if let Some(rate) = opts.upload_bytes_per_s {
        config.peer.server.upload_rate = rate.max(1);
    }
    let (node, events) = PeerNode::start(config, cache).await?;
    Ok(Started {
        node,
        events,
        origin,
    })
}

/// Track ids as given, or the best hit of a search for the words.
async fn resolve(origin: &OriginClient, what: &[String]) -> Result<Vec<(TrackId, String)>> {
    let ids: Vec<Option<TrackId>> = what.iter().map(|w| w.parse().ok()).collect();
    if ids.iter().all(Option::is_some) {
        return Ok(ids.into_iter().flatten().map(|t| (t, t.short())).collect());
    }
    let query = what.join(" ");
    let hits = origin.search(&query, 1).await?;
    let hit = hits
        .into_iter()
        .next()
        .with_context(|| format!("no track matches {query:?}"))?;
    let by = hit.artist.map(|a| format!(" — {a}")).unwrap_or_default();
    Ok(vec![(hit.id, format!("{}{by}", hit.title))])
}

fn mmss(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// How long playback may stand still with no data arriving before `play` gives up.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// Plays `what` (ids or search words) over the network. Returns each play's statistics and
/// frames, after printing them.
pub async fn play(
    opts: NetOptions,
    what: &[String],
    output: &OutputTarget,
    start: f64,
    duration: Option<f64>,
    json: bool,
) -> Result<()> {
    let reports = play_reports(&opts, what, output, start, duration, json).await?;
    if json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    }
    Ok(())
}

/// [`play`] without printing the JSON (the demo prints its own).
pub async fn play_reports(
    opts: &NetOptions,
    what: &[String],
    output: &OutputTarget,
    start: f64,
    duration: Option<f64>,
    json: bool,
) -> Result<Vec<PlayReport>> {
    if json && *output == OutputTarget::Stdout {
        bail!("--json and --output - both want stdout; write the audio to a file or drop --json");
    }
    if !start.is_finite() || start < 0.0 {
        bail!("--start must be a number of seconds ≥ 0, got {start}");
    }
    if let Some(d) = duration
        && (!d.is_finite() || d <= 0.0)
    {
        bail!("--duration must be a number of seconds > 0, got {d}");
    }
    let Started {
        node,
        mut events,
        origin,
    } = start_node(opts).await?;
    let result = play_on(&node, &mut events, &origin, what, output, start, duration).await;
    node.shutdown().await;
    result
}

/// Plays on a running node (the demo's listener too).
pub async fn play_on(
    node: &PeerNode,
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
    origin: &OriginClient,
    what: &[String],
    output: &OutputTarget,
    start: f64,
    duration: Option<f64>,
) -> Result<Vec<PlayReport>> {
    let queue = resolve(origin, what).await?;
    let tracks: Vec<TrackId> = queue.iter().map(|(t, _)| *t).collect();
    let start_ms = (start * 1000.0).round() as u64;
    let stop_at_ms = duration.map(|d| start_ms + (d * 1000.0).round() as u64);
    let player = Player::spawn(
        tracks.clone(),
        (start * 48_000.0).round() as u64,
        duration.map(|d| (d * 48_000.0).round() as u64),
        output.clone(),
    );
    node.command(SchedulerCommand::Play {
        track: tracks[0],
        position_ms: start_ms,
    })
    .await;
    for t in &tracks[1..] {
        node.command(SchedulerCommand::Enqueue(*t)).await;
    }
    let terminal = std::io::stderr().is_terminal();
    let mut durations = std::collections::HashMap::new();
    // Per play: statistics, peers' bytes relayed and direct.
    let mut finished: Vec<(PlayStats, u64, u64)> = Vec::new();
    let (mut transport_seen, mut transport_now) = ((0u64, 0u64), (0u64, 0u64));
    let mut stopping = false;
    // Liveness: a chunk arrived or playback moved. With 30 s buffered, nothing may need
    // fetching for a while (chunks due later can wait on a slow peer until they are urgent).
    let mut last_progress = Instant::now();
    let mut last_position = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut failure = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(NodeEvent::Manifest { track, manifest }) => {
                    durations.insert(track, manifest_ms(&manifest));
                    player.manifest(track, manifest);
                }
                Some(NodeEvent::Chunk { track, index, bytes }) => {
                    last_progress = Instant::now();
                    player.chunk(track, index, bytes);
                }
                Some(NodeEvent::PlayStarted { track, time_to_first_audio_ms: Some(ms) }) => {
                    if !terminal {
                        tracing::info!(%track, "first audio after {ms} ms");
                    }
                }
                Some(NodeEvent::Transport { relayed_bytes, direct_bytes }) => {
                    transport_now = (relayed_bytes, direct_bytes);
                }
                Some(NodeEvent::Finished(stats)) => {
                    let ((r0, d0), (r1, d1)) = (transport_seen, transport_now);
                    transport_seen = transport_now;
                    finished.push((stats, r1.saturating_sub(r0), d1.saturating_sub(d0)));
                    if stopping || finished.len() >= tracks.len() {
                        break;
                    }
                }
                Some(NodeEvent::TrackInvalid(t)) => {
                    failure = Some(format!("track {t} has an invalid manifest"));
                    break;
                }
                Some(NodeEvent::Banned { peer }) => {
                    tracing::warn!(%peer, "dropped a peer that sent bad data");
                }
                Some(_) => {}
                None => {
                    failure = Some("the node stopped".into());
                    break;
                }
            },
            _ = tick.tick() => {
                let s = node.status();
                if terminal {
                    let total = s.track.and_then(|t| durations.get(&t)).copied().unwrap_or(0);
                    eprint!(
                        "\r\x1b[2K▶ {} / {}  buffer {:.1} s  cache {} · peers {} · origin {}  {} peers",
                        mmss(s.position_ms.unwrap_or(0)),
                        mmss(total),
                        s.buffer_ahead_ms.unwrap_or(0) as f64 / 1000.0,
                        human(s.bytes.cache),
                        human(s.bytes.peers + s.bytes.superpeers),
                        human(s.bytes.origin),
                        s.peers,
                    );
                }
                if !stopping
                    && let (Some(stop), Some(pos)) = (stop_at_ms, s.position_ms)
                    && pos >= stop
                    && s.track == Some(tracks[0])
                {
                    stopping = true;
                    node.command(SchedulerCommand::Stop).await;
                }
                if s.position_ms != last_position {
                    last_position = s.position_ms;
                    last_progress = Instant::now();
                }
                if !stopping && last_progress.elapsed() > STALL_LIMIT {
                    failure = Some(format!(
                        "stalled for {} s with no data: neither peers nor the origin answer",
                        STALL_LIMIT.as_secs()
                    ));
                    stopping = true;
                    node.command(SchedulerCommand::Stop).await;
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                stopping = true;
                node.command(SchedulerCommand::Stop).await;
            }
        }
    }
    if terminal {
        eprint!("\r\x1b[2K");
    }
    let played = player.finish().map_err(anyhow::Error::msg)?;
    if let Some(f) = failure {
        bail!(f);
    }
    let mut reports = Vec::new();
    for (stats, relayed, direct) in &finished {
        let frames = played.frames.get(&stats.track).copied().unwrap_or(0);
        let title = queue
            .iter()
            .find(|(t, _)| *t == stats.track)
            .map_or_else(|| stats.track.short(), |(_, n)| n.clone());
        let b = &stats.bytes_by_source;
        let total = b.total().max(1) as f64;
        eprintln!(
            "played {title}: {:.1} s to {output}, first audio after {} ms, {} stutters; \
             cache {} ({:.0}%), peers {} ({:.0}%), origin {} ({:.0}%)",
            frames as f64 / 48_000.0,
            stats
                .time_to_first_audio_ms
                .map_or_else(|| "-".into(), |ms| ms.to_string()),
            stats.stutters,
            human(b.cache),
            100.0 * b.cache as f64 / total,
            human(b.peers + b.superpeers),
            100.0 * (b.peers + b.superpeers) as f64 / total,
            human(b.origin),
            100.0 * b.origin as f64 / total,
        );
        let mut report = PlayReport::new(
            stats.track,
            stats.time_to_first_audio_ms.map(|ms| ms as f64),
            stats.stutters,
            frames,
            b,
        );
        if *relayed > 0 {
            eprintln!(
                "peers' bytes: {} relayed through a super-peer, {} direct ({} connections upgraded to direct)",
                human(*relayed),
                human(*direct),
                node.status().direct_upgrades
            );
        }
        report.relayed_bytes = Some(*relayed);
        report.direct_bytes = Some(*direct);
        reports.push(report);
    }
    if interrupted {
        eprintln!("interrupted");
    }
    Ok(reports)
}

fn manifest_ms(m: &Manifest) -> u64 {
    m.total_samples * 1000 / 48_000
}

/// Stays online serving the cache until Ctrl-C or SIGTERM.
pub async fn serve(opts: NetOptions) -> Result<()> {
    let Started { node, events, .. } = start_node(&opts).await?;
    drop(events);
    // Scripts and tests read the PeerId and addresses here.
    println!("peer {} serving {}", node.peer_id(), opts.cache.display());
    for a in node.listen_addrs() {
        println!("listening on {a}");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let stop = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, () = term => {} }
    };
    tokio::pin!(stop);
    let mut announced = false;
    // With super-peers configured, also say when the attached one indexes our tracks: only then
    // do its leaves' lookups find us.
    let mut indexed = opts.superpeers.is_empty();
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = poll.tick(), if !announced || !indexed => {
                let s = node.status();
                if s.announced && !announced {
                    announced = true;
                    println!("announced {} tracks", s.held_tracks);
                }
                if let (Some(sp), true, false) = (s.superpeer, s.superpeer_announced, indexed) {
                    indexed = true;
                    println!("indexed by super-peer {sp}: {} tracks", s.held_tracks);
                }
            }
            _ = tick.tick() => {
                let s = node.status();
                tracing::info!(
                    tracks = s.held_tracks,
                    peers = s.peers,
                    served = %human(s.served_bytes),
                    "serving"
                );
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Copies `tracks` (all when empty) from the local origin `data` into `cache`; returns how many.
pub fn cache_add(cache: &mut DiskCache, data: &Path, tracks: &[TrackId]) -> Result<usize> {
    let store = LocalStore::open(data)
        .with_context(|| format!("cannot open the origin directory {}", data.display()))?;
    let tracks = if tracks.is_empty() {
        store.list_tracks()?.into_iter().map(|m| m.id).collect()
    } else {
        tracks.to_vec()
    };
    for track in &tracks {
        let manifest = store
            .get_manifest(track)
            .with_context(|| format!("track {track}"))?;
        for c in &manifest.chunks {
            let bytes = store
                .get_chunk(&c.id)
                .with_context(|| format!("chunk {} of track {track}", c.id))?;
            cache.put_chunk(&c.id, &bytes)?;
        }
        cache.put_manifest(track, &manifest.encode())?;
    }
    Ok(tracks.len())
}
