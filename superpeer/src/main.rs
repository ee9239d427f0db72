//! `shoal-superpeer`: relay, index and cache for a cluster of Shoal peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use shoal_superpeer::net::config::{CacheSection, Overrides, RelaySection, Settings};
use shoal_superpeer::net::node::{self, Command as NodeCommand};

/// Relay between NATed peers, index what they hold, cache popular chunks.
#[derive(Debug, Parser)]
#[command(name = "shoal-superpeer", version, arg_required_else_help = true)]
struct Cli {
    /// TOML configuration file (keys: listen, http, tracker, data, external_addr, region,
    /// [relay] ..., [index] ..., [cache] ...); command-line flags override it. Re-read on SIGHUP.
    #[arg(long, global = true, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the super-peer: circuit relay v2 for NATed leaves, AutoNAT, the cluster index
    /// (/shoal/announce/1, /shoal/lookup/1), and HTTP /metrics, /healthz and a status page.
    ///
    /// Prints `listening on http://ADDR`, then one `p2p MULTIADDR/p2p/PEER_ID` line per libp2p
    /// listen address. SIGTERM or Ctrl-C closes every connection (leaves move to another
    /// super-peer) and exits; SIGHUP re-reads the config file.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// libp2p address to listen on, repeatable
    /// [default: /ip4/0.0.0.0/udp/7702/quic-v1 and /ip4/0.0.0.0/tcp/7702].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// HTTP address of /metrics, /healthz and the status page [default: 0.0.0.0:7703].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The tracker's HTTP API (e.g. http://tracker:7700); lookups the cluster cannot answer
    /// are forwarded to its libp2p endpoint (found through GET URL/p2p).
    #[arg(long, value_name = "URL")]
    tracker: Option<String>,
    /// Data directory; holds the identity key superpeer.key [default: ./superpeer-data].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Public address to advertise (in relay reservations and identify), repeatable
    /// [default: the listen addresses].
    #[arg(long, value_name = "MULTIADDR")]
    external_addr: Vec<Multiaddr>,
    /// This super-peer's region (e.g. an ISO country code, as leaves use), sent to the tracker
    /// with the cluster's aggregated holdings so it can rank them nearest first.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Relay reservations at once [default: 1024].
    #[arg(long, value_name = "N")]
    max_reservations: Option<usize>,
    /// Relay reservations per peer [default: 4].
    #[arg(long, value_name = "N")]
    max_reservations_per_peer: Option<usize>,
    /// Relayed circuits open at once [default: 2048].
    #[arg(long, value_name = "N")]
    max_circuits: Option<usize>,
    /// Relayed circuits per peer [default: 16].
    #[arg(long, value_name = "N")]
    max_circuits_per_peer: Option<usize>,
    /// Longest life of one circuit, in seconds [default: 21600 (6 h)].
    #[arg(long, value_name = "SECS")]
    max_circuit_duration_secs: Option<u64>,
    /// Bytes one circuit may carry, both directions; 0 = unlimited [default: 0].
    #[arg(long, value_name = "BYTES")]
    max_circuit_bytes: Option<u64>,
    /// Reservation lifetime in seconds (leaves renew) [default: 3600].
    #[arg(long, value_name = "SECS")]
    reservation_duration_secs: Option<u64>,
    /// Total relay bandwidth in Mbit/s; 0 = unlimited [default: 0].
    #[arg(long, value_name = "MBIT/S")]
    relay_bandwidth_mbit: Option<u64>,
    /// Chunk cache directory: tracks several leaves asked for are fetched by an embedded
    /// cache peer, kept here and served to leaves [default: DATA/cache].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Chunk cache size in MiB [default: 1024].
    #[arg(long, value_name = "MIB")]
    cache_limit_mib: Option<u64>,
    /// libp2p address of the cache peer, repeatable
    /// [default: /ip4/0.0.0.0/udp/7704/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    cache_listen: Vec<Multiaddr>,
    /// Address leaves are given for the cache peer, repeatable [default: its listen
    /// addresses, an unspecified IP replaced by the advertised IPs of the super-peer].
    #[arg(long, value_name = "MULTIADDR")]
    cache_external_addr: Vec<Multiaddr>,
    /// Distinct leaves that must look up a track within the window before it is cached
    /// [default: 2].
    #[arg(long, value_name = "N")]
    cache_after_leaves: Option<usize>,
    /// The window of --cache-after-leaves, in seconds [default: 600].
    #[arg(long, value_name = "SECS")]
    cache_window_secs: Option<u64>,
    /// Run without the chunk cache (relay and index only).
    #[arg(long)]
    no_cache: bool,
}

impl ServeArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            listen: self.listen,
            http: self.http,
            tracker: self.tracker,
            data: self.data,
            external_addr: self.external_addr,
            region: self.region,
            relay: RelaySection {
                max_reservations: self.max_reservations,
                max_reservations_per_peer: self.max_reservations_per_peer,
                max_circuits: self.max_circuits,
                max_circuits_per_peer: self.max_circuits_per_peer,
                max_circuit_duration_secs: self.max_circuit_duration_secs,
                max_circuit_bytes: self.max_circuit_bytes,
                reservation_duration_secs: self.reservation_duration_secs,
                relay_bandwidth_mbit: self.relay_bandwidth_mbit,
            },
            cache: CacheSection {
                enabled: self.no_cache.then_some(false),
                dir: self.cache,
                limit_mib: self.cache_limit_mib,
                listen: Some(self.cache_listen).filter(|l| !l.is_empty()),
                external_addr: Some(self.cache_external_addr).filter(|l| !l.is_empty()),
                after_leaves: self.cache_after_leaves,
                window_secs: self.cache_window_secs,
            },
        }
    }
}

fn main() -> ExitCode {
    shoal_superpeer::net::init_logging();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let flags = args.overrides();
    let settings = match Settings::load(&flags, cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(serve(settings, flags, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(settings: Settings, flags: Overrides, config: Option<PathBuf>) -> Result<()> {
    let http = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", settings.http))?;
    let http_addr = http.local_addr()?;
    // First line of stdout (tests and scripts read it); the node prints later addresses.
    println!("listening on http://{http_addr}");
    let node = node::start(&settings).await?;
    let peer_id = node.shared.peer_id;
    for a in &node.listen_addrs {
        println!("p2p {}", a.clone().with(Protocol::P2p(peer_id)));
    }
    tracing::info!(%peer_id, http = %http_addr, "super-peer running");

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let app = shoal_superpeer::net::http::router(std::sync::Arc::clone(&node.shared));
    let http_task = tokio::spawn(async move {
        let r = axum::serve(http, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "HTTP server failed");
        }
    });

    wait_for_stop(&node.commands, &flags, config.as_deref()).await?;
    tracing::info!("shutting down: closing connections");
    node.shutdown(Duration::from_secs(5)).await;
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Returns on SIGTERM or Ctrl-C; on SIGHUP re-reads the config file and hands the node what
/// it can apply live.
async fn wait_for_stop(
    commands: &tokio::sync::mpsc::Sender<NodeCommand>,
    flags: &Overrides,
    config: Option<&std::path::Path>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            r = tokio::signal::ctrl_c() => {
                r.context("cannot watch Ctrl-C")?;
                return Ok(());
            }
            _ = hup.recv() => {
                let Some(path) = config else {
                    tracing::info!("SIGHUP: no --config file to re-read");
                    continue;
                };
                match Settings::load(flags, Some(path)) {
                    Ok(s) => {
                        tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
                        if commands.send(NodeCommand::Reload(Box::new(s))).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded, keeping the running one"),
                }
            }
        }
    }
}
