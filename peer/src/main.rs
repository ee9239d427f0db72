//! `shoal-peer`: search, play and share music on the Shoal network.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use shoal_peer::audio::{OutputTarget, TrackDecoder};
use shoal_peer::core::BytesBySource;
use shoal_peer::net::cache::DiskCache;
use shoal_peer::net::stats::PlayReport;
use shoal_protocol::TrackId;
use shoal_tracker::store::LocalStore;

/// Listen to music streamed from nearby peers, with the origin as fallback.
#[derive(Debug, Parser)]
#[command(name = "shoal-peer", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play tracks: from nearby peers, the local cache and the origin (or, with --data, from
    /// a local origin directory without any network).
    ///
    /// Several track ids make a queue (the next one is prefetched before the current ends);
    /// words that are not track ids are a search, and the best hit plays.
    Play {
        /// Local origin directory to play from (as written by `shoal-tracker import --data`),
        /// no network.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Where the audio goes: FILE.wav, - (raw s16le 48 kHz PCM on stdout), device or null.
        #[arg(long, short, default_value = "device", value_name = "TARGET")]
        output: OutputTarget,
        /// Start this many seconds into the (first) track.
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        start: f64,
        /// Stop after this many seconds of the first track (default: play to the end).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        /// Print each play's statistics as one JSON object on stdout at the end.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        net: NetArgs,
        /// Track ids (64 hex digits, as `shoal-tracker import` or `search` print) or search words.
        #[arg(required = true, value_name = "TRACK_ID|QUERY")]
        what: Vec<String>,
    },
    /// Stay online and share the cache with other peers (announced to the tracker).
    Serve {
        #[command(flatten)]
        net: NetArgs,
    },
    /// Start a tracker, import music, start several peers on this machine and play a track
    /// on one of them; prints where its bytes came from. Needs `shoal-tracker` beside this
    /// program (as `cargo build` and `cargo install` put it).
    Demo {
        /// Music files or folders to import [default: the Debian singularity-music tracks if
        /// installed, else a generated piece].
        #[arg(value_name = "PATH")]
        music: Vec<PathBuf>,
        /// Seeding peers to start.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
        peers: u32,
        /// Seconds of the track to play (the listener plays in real time).
        #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
        duration: f64,
        /// Where the listener's audio goes: FILE.wav, device or null.
        #[arg(long, short, default_value = "null", value_name = "TARGET")]
        output: OutputTarget,
        /// Print the play's statistics as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Keep the demo's files (tracker data, caches) here instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Search the tracker's catalog; prints TrackId, title, artist, album and duration.
    Search {
        /// The tracker's HTTP API.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:7700")]
        tracker: String,
        /// Most results.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// Print the hits as a JSON list.
        #[arg(long)]
        json: bool,
        /// Words to search for (prefixes match: "aberr" finds "Aberrations").
        #[arg(required = true, value_name = "QUERY")]
        query: Vec<String>,
    },
    /// Show or clear the local chunk cache.
    Cache {
        /// Cache directory [default: $XDG_CACHE_HOME/shoal or ~/.cache/shoal].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// Chunks, bytes and the size limit (10% of free disk by default).
    Stats,
    /// Delete every cached chunk and manifest.
    Clear,
    /// Copy tracks from a local origin directory into the cache (to seed them with `serve`).
    Add {
        /// Local origin directory (as written by `shoal-tracker import --data`).
        #[arg(long, value_name = "DIR", required = true)]
        data: PathBuf,
        /// Tracks to copy (all tracks of DIR when none are given).
        #[arg(value_name = "TRACK_ID")]
        tracks: Vec<TrackId>,
    },
}

/// Network options shared by `play`, `serve` and `demo`'s peers.
#[derive(Debug, Clone, clap::Args)]
struct NetArgs {
    /// A TOML file with any of: tracker, cache, cache_limit_mib, listen, region, upload_kib_s,
    /// superpeers.
    /// Flags win over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The tracker's HTTP API [default: http://127.0.0.1:7700].
    #[arg(long, value_name = "URL")]
    tracker: Option<String>,
    /// Cache directory [default: $XDG_CACHE_HOME/shoal or ~/.cache/shoal].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Cache size limit in MiB [default: 10% of the free disk space].
    #[arg(long, value_name = "MIB")]
    cache_limit_mib: Option<u64>,
    /// libp2p listen address, repeatable [default: any port, QUIC and TCP].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<libp2p::Multiaddr>,
    /// Our region (e.g. a country code), sent to the tracker to find nearby peers.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Upload limit for serving other peers, KiB/s [default: 1000].
    #[arg(long, value_name = "KIB_PER_S")]
    upload_kib_s: Option<u64>,
    /// A super-peer to attach to when behind NAT (MULTIADDR ending in /p2p/PEER_ID),
    /// repeatable; the nearest by round-trip time is used.
    #[arg(long = "superpeer", value_name = "MULTIADDR")]
    superpeers: Vec<libp2p::Multiaddr>,
}

/// The `--config` file of the network commands; every field is optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// The tracker's HTTP API.
    tracker: Option<String>,
    /// Cache directory.
    cache: Option<PathBuf>,
    /// Cache size limit in MiB.
    cache_limit_mib: Option<u64>,
    /// libp2p listen addresses.
    listen: Option<Vec<String>>,
    /// Our region.
    region: Option<String>,
    /// Upload limit, KiB/s.
    upload_kib_s: Option<u64>,
    /// Super-peers to attach to (multiaddrs ending in /p2p/PEER_ID).
    superpeers: Option<Vec<String>>,
}

mod demo;
mod network;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

impl NetArgs {
    /// Flags over the `--config` file over defaults.
    fn resolve(self) -> Result<network::NetOptions> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("bad config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let listen = if !self.listen.is_empty() {
            self.listen
        } else if let Some(list) = file.listen {
            list.iter()
                .map(|a| {
                    a.parse()
                        .with_context(|| format!("bad listen address {a:?} in the config file"))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let superpeers = if !self.superpeers.is_empty() {
            self.superpeers
        } else if let Some(list) = file.superpeers {
            list.iter()
                .map(|a| {
                    a.parse()
                        .with_context(|| format!("bad super-peer address {a:?} in the config file"))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        for sp in &superpeers {
            if !matches!(sp.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                bail!("super-peer address {sp} must end in /p2p/PEER_ID");
            }
        }
        let cache = self
            .cache
            .or(file.cache)
            .or_else(shoal_peer::net::cache::default_dir)
            .context(
                "no cache directory: pass --cache DIR (neither XDG_CACHE_HOME nor HOME is set)",
            )?;
        Ok(network::NetOptions {
            tracker: self
                .tracker
                .or(file.tracker)
                .unwrap_or_else(|| "http://127.0.0.1:7700".into()),
            cache,
            cache_limit: self
                .cache_limit_mib
                .or(file.cache_limit_mib)
                .map(|m| m.saturating_mul(1 << 20)),
            listen,
            region: self.region.or(file.region),
            upload_bytes_per_s: self
                .upload_kib_s
                .or(file.upload_kib_s)
                .map(|k| k.saturating_mul(1024)),
            superpeers,
        })
    }
}

fn main() -> ExitCode {
    shoal_peer::net::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Play {
            data: Some(data),
            output,
            start,
            json,
            what,
            duration: _,
            net: _,
        } => {
            // Usage errors, reported (and exiting with 2) the way clap reports its own.
            let usage = |msg: String| -> ! {
                use clap::CommandFactory;
                Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, msg)
                    .exit()
            };
            let [track] = what.as_slice() else {
                usage("with --data, give exactly one track id".into());
            };
            let track: TrackId = match track.parse() {
                Ok(t) => t,
                Err(e) => usage(format!("{track:?} is not a track id: {e}")),
            };
            play_local(&data, &output, start, json, track)
        }
        Command::Play {
            data: None,
            output,
            start,
            duration,
            json,
            net,
            what,
        } => runtime()?.block_on(network::play(
            net.resolve()?,
            &what,
            &output,
            start,
            duration,
            json,
        )),
        Command::Serve { net } => runtime()?.block_on(network::serve(net.resolve()?)),
        Command::Demo {
            music,
            peers,
            duration,
            output,
            json,
            dir,
        } => runtime()?.block_on(demo::run(demo::DemoOptions {
            music,
            peers: peers as usize,
            duration,
            output,
            json,
            dir,
        })),
        Command::Search {
            tracker,
            limit,
            json,
            query,
        } => {
            let client = shoal_peer::net::origin::OriginClient::new(&tracker)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let hits = runtime.block_on(client.search(&query.join(" "), limit))?;
            if json {
                let list: Vec<_> = hits
                    .iter()
                    .map(|h| serde_json::json!({"id": h.id, "title": h.title, "artist": h.artist, "album": h.album, "duration_ms": h.duration_ms}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if hits.is_empty() {
                eprintln!("no tracks match {:?}", query.join(" "));
            }
            if !json {
                for h in &hits {
                    let s = h.duration_ms / 1000;
                    let by = [h.artist.as_deref(), h.album.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" — ");
                    println!("{}  {}  {}:{:02}  {by}", h.id, h.title, s / 60, s % 60);
                }
            }
            Ok(())
        }
        Command::Cache { cache, action } => {
            let dir = cache.or_else(shoal_peer::net::cache::default_dir).context(
                "no cache directory: pass --cache DIR (neither XDG_CACHE_HOME nor HOME is set)",
            )?;
            let mut cache = DiskCache::open(&dir, None)?;
            match action {
                CacheAction::Clear => {
                    cache.clear()?;
                    println!("cleared {}", dir.display());
                }
                CacheAction::Add { data, tracks } => {
                    let n = network::cache_add(&mut cache, &data, &tracks)?;
                    println!("added {n} tracks to {}", dir.display());
                }
                CacheAction::Stats => {}
            }
            let s = cache.stats();
            println!(
                "{}: {} chunks, {} of {} ({:.1}%), {} manifests",
                dir.display(),
                s.chunks,
                human(s.bytes),
                human(s.max_bytes),
                if s.max_bytes == 0 {
                    0.0
                } else {
                    100.0 * s.bytes as f64 / s.max_bytes as f64
                },
                s.manifests
            );
            Ok(())
        }
    }
}

/// Bytes as B/KiB/MiB/GiB with one decimal.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn play_local(
    data: &std::path::Path,
    output: &OutputTarget,
    start: f64,
    json: bool,
    track: TrackId,
) -> Result<()> {
    if json && *output == OutputTarget::Stdout {
        bail!("--json and --output - both want stdout; write the audio to a file or drop --json");
    }
    if !start.is_finite() || start < 0.0 {
        bail!("--start must be a number of seconds ≥ 0, got {start}");
    }
    let began = Instant::now();
    let store = LocalStore::open(data)?;
    let manifest = store
        .get_manifest(&track)
        .with_context(|| format!("track {track}"))?;
    let title = store
        .get_meta(&track)
        .map(|m| m.title)
        .unwrap_or_else(|_| track.short());
    let start_sample = (start * 48_000.0).round() as u64;
    let mut decoder = TrackDecoder::new(&manifest, start_sample)?;
    let mut sink = output.open(decoder.channels())?;
    let mut first_audio_ms = None;
    let mut frames = 0u64;
    let mut pcm = Vec::new();
    let mut bytes = BytesBySource::default();
    while let Some(index) = decoder.next_chunk() {
        let info = &manifest.chunks[index];
        let chunk = store
            .get_chunk(&info.id)
            .with_context(|| format!("chunk {index} of track {track}"))?;
        bytes.origin += chunk.len() as u64;
        pcm.clear();
        decoder.decode_chunk(index, &chunk, &mut pcm)?;
        sink.write(&pcm)
            .with_context(|| format!("playing to {output}"))?;
        if first_audio_ms.is_none() && !pcm.is_empty() {
            first_audio_ms = Some(began.elapsed().as_secs_f64() * 1000.0);
        }
        frames += (pcm.len() / decoder.channels()) as u64;
    }
    sink.finish()
        .with_context(|| format!("playing to {output}"))?;
    let report = PlayReport::new(track, first_audio_ms, 0, frames, &bytes);
    eprintln!(
        "played {title} from {:.1} s: {:.1} s of audio to {output}, first audio after {:.1} ms",
        start,
        frames as f64 / 48_000.0,
        first_audio_ms.unwrap_or(0.0)
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
