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
    /// Play a track.
    ///
    /// With --data, plays straight from a local origin directory written by
    /// `shoal-tracker import` (no network).
    Play {
        /// Local origin directory to play from (as written by `shoal-tracker import --data`).
        #[arg(long, value_name = "DIR", required = true)]
        data: PathBuf,
        /// Where the audio goes: FILE.wav, - (raw s16le 48 kHz PCM on stdout), device or null.
        #[arg(long, short, default_value = "device", value_name = "TARGET")]
        output: OutputTarget,
        /// Start this many seconds into the track.
        #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
        start: f64,
        /// Print the play's statistics as one JSON object on stdout at the end.
        #[arg(long)]
        json: bool,
        /// The track (64 hex digits, as `shoal-tracker import` prints).
        track: TrackId,
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
            data,
            output,
            start,
            json,
            track,
        } => play_local(&data, &output, start, json, track),
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
            if let CacheAction::Clear = action {
                cache.clear()?;
                println!("cleared {}", dir.display());
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
