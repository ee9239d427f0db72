//! `shoal-tracker`: publish music and tell peers who holds it.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_tracker::import::{self, ImportOptions};
use shoal_tracker::net::catalog::Catalog;
use shoal_tracker::net::config::TrackerConfig;
use shoal_tracker::net::http::{AppState, HttpLimits, router};
use shoal_tracker::net::origin::{Origin, OriginStore};
use shoal_tracker::net::p2p::P2pConfig;
use shoal_tracker::store::{CommitOutcome, LocalStore};

/// Catalog, peer registry and origin store of a Shoal network.
#[derive(Debug, Parser)]
#[command(name = "shoal-tracker", version, arg_required_else_help = true)]
struct Cli {
    /// TOML configuration file; command-line flags override it.
    #[arg(long, global = true, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where the catalog and the origin store live (shared by `serve` and `import`).
#[derive(Debug, clap::Args)]
struct Storage {
    /// Data directory: origin store (unless --store), embedded catalog (unless --db), staging.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Catalog database: sqlite://PATH or postgres://USER@HOST:PORT/DB
    /// [default: sqlite://DATA/catalog.sqlite].
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Origin store: s3://BUCKET[/PREFIX], configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION (AWS_ALLOW_HTTP=true for plain HTTP)
    /// [default: the data directory].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish music: decode, encode to Opus, chunk and store files (or folders, recursively).
    ///
    /// Reads WAV, FLAC, MP3, Ogg Vorbis and Ogg Opus. Prints one line per track (TrackId,
    /// title, duration) and a summary; exits with status 1 if any file failed. Importing the
    /// same file with the same settings again gives the same TrackId and writes nothing. A
    /// track appears in search only once all its chunks and its manifest are stored.
    Import {
        #[command(flatten)]
        storage: Storage,
        /// Opus bitrate in kbit/s [default: 128].
        #[arg(long, value_name = "KBIT/S", value_parser = clap::value_parser!(u32).range(6..=510))]
        bitrate: Option<u32>,
        /// libopus complexity, 0 (fastest) to 10 (best) [default: 10].
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=10))]
        complexity: Option<u8>,
        /// Audio files or folders.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Serve the HTTP API: /search, /tracks/{id}, /manifests/{id}, /chunks/{id}, /metrics,
    /// /healthz.
    Serve {
        #[command(flatten)]
        storage: Storage,
        /// HTTP address to listen on [default: 0.0.0.0:7700].
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// libp2p address for /shoal/announce/1 and /shoal/lookup/1, repeatable
        /// [default: /ip4/0.0.0.0/udp/7701/quic-v1 and /ip4/0.0.0.0/tcp/7701].
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<libp2p::Multiaddr>,
    },
}

fn main() -> ExitCode {
    shoal_tracker::net::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The opened catalog and origin, with the local store used for staging.
struct Opened {
    local: LocalStore,
    catalog: Catalog,
    origin: Origin,
}

async fn open(storage: Storage, config: &TrackerConfig) -> Result<Opened> {
    let data = storage
        .data
        .or_else(|| config.data.clone())
        .context("no data directory: pass --data DIR (or set `data` in the config file)")?;
    let local = LocalStore::create(&data)
        .with_context(|| format!("cannot open data directory {}", data.display()))?;
    let db = storage
        .db
        .or_else(|| config.db.clone())
        .unwrap_or_else(|| Catalog::default_url(&data));
    let catalog = Catalog::open(&db)
        .await
        .with_context(|| format!("cannot open the catalog at {}", redact(&db)))?;
    let store = storage.store.or_else(|| config.store.clone());
    let origin = Origin::open(store.as_deref(), local.clone())?;
    origin.ping().await.with_context(|| {
        format!(
            "cannot use the origin store {}",
            store.as_deref().unwrap_or("(data directory)")
        )
    })?;
    Ok(Opened {
        local,
        catalog,
        origin,
    })
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = match &cli.config {
        Some(path) => TrackerConfig::load(path)?,
        None => TrackerConfig::default(),
    };
    match cli.command {
        Command::Import {
            storage,
            bitrate,
            complexity,
            paths,
        } => {
            let options = ImportOptions {
                bitrate: bitrate.or(config.import.bitrate_kbps).unwrap_or(128) * 1000,
                complexity: complexity.or(config.import.complexity).unwrap_or(10),
            };
            if storage.data.is_none() && config.data.is_none() {
                anyhow::bail!(
                    "no data directory: pass --data DIR (or set `data` in the config file)"
                );
            }
            let files = import::collect_files(&paths)?;
            if files.is_empty() {
                anyhow::bail!(
                    "no audio files found in {}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let opened = open(storage, &config).await?;
            import_command(&opened, &options, &files).await
        }
        Command::Serve {
            storage,
            http,
            listen,
        } => {
            let data = storage.data.clone().or_else(|| config.data.clone());
            let opened = open(storage, &config).await?;
            let mut p2p_config = P2pConfig::new(data.as_deref().unwrap_or(opened.local.root()));
            let listen = if listen.is_empty() {
                config.listen.clone()
            } else {
                listen
            };
            if !listen.is_empty() {
                p2p_config.listen = listen;
            }
            let addr = http
                .or(config.http.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7700)));
            let mut limits = HttpLimits::default();
            if let Some(r) = config.http.requests_per_sec {
                limits.requests_per_sec = r;
            }
            if let Some(b) = config.http.burst {
                limits.burst = b;
            }
            if let Some(b) = config.http.hot_cache_bytes {
                limits.hot_cache_bytes = b;
            }
            serve(opened, addr, limits, p2p_config).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(
    opened: Opened,
    addr: SocketAddr,
    limits: HttpLimits,
    p2p_config: P2pConfig,
) -> Result<()> {
    let tracks = opened.catalog.count().await?;
    let p2p = shoal_tracker::net::p2p::start(p2p_config, opened.catalog.clone())
        .await
        .context("cannot start the libp2p endpoint")?;
    let state = AppState::new(opened.catalog, opened.origin, limits);
    state.set_registry(p2p.registry());
    state.set_p2p(shoal_tracker::net::http::P2pInfo {
        peer_id: p2p.peer_id().to_string(),
        addrs: p2p.dial_addrs().iter().map(ToString::to_string).collect(),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, tracks, "serving the HTTP API");
    // The bound address on stdout, first: scripts and tests started with port 0 read it here.
    println!("listening on http://{local}");
    // stdout carries only that line (readers may close the pipe after it); the rest is logged.
    let addrs: Vec<String> = p2p.dial_addrs().iter().map(ToString::to_string).collect();
    tracing::info!(peer_id = %p2p.peer_id(), addrs = %addrs.join(" "), "libp2p announce/lookup endpoint up");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
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
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}

async fn import_command(
    opened: &Opened,
    options: &ImportOptions,
    files: &[PathBuf],
) -> Result<ExitCode> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(files.len() as u64 * 1000);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let (mut imported, mut skipped, mut failed) = (0, 0, 0);
    for (i, file) in files.iter().enumerate() {
        bar.set_message(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let base = i as u64 * 1000;
        let result = import_one(opened, file, options, &mut |f| {
            bar.set_position(base + (f * 1000.0) as u64)
        })
        .await;
        bar.set_position(base + 1000);
        bar.suspend(|| match &result {
            Ok((m, outcome)) => {
                let secs = m.duration_ms / 1000;
                let note = match outcome {
                    CommitOutcome::Imported => {
                        imported += 1;
                        ""
                    }
                    CommitOutcome::AlreadyPresent => {
                        skipped += 1;
                        "  (already imported)"
                    }
                };
                println!(
                    "{}  {}  {}:{:02}{note}",
                    m.id,
                    m.title,
                    secs / 60,
                    secs % 60
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", file.display());
            }
        });
    }
    bar.finish_and_clear();
    println!("imported {imported}, skipped {skipped}, failed {failed}");
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Encodes, publishes to the origin, then records in the catalog: the catalog row is the last
/// step, so search never shows a track whose chunks or manifest are missing.
async fn import_one(
    opened: &Opened,
    file: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(f64),
) -> Result<(shoal_tracker::store::TrackMeta, CommitOutcome)> {
    let encoded = tokio::task::block_in_place(|| {
        import::encode_file(&opened.local, file, options, progress)
    })?;
    let outcome = opened
        .origin
        .publish(encoded.staging, &encoded.manifest, &encoded.meta)
        .await?;
    let meta = match (outcome, opened.catalog.get(&encoded.meta.id).await?) {
        // Keep the first import's metadata (and added-at) for a track already published.
        (CommitOutcome::AlreadyPresent, Some(existing)) => existing,
        _ => {
            opened.catalog.upsert(&encoded.meta).await?;
            encoded.meta
        }
    };
    Ok((meta, outcome))
}
