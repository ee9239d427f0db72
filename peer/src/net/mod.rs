//! The driver: turns real events (sockets, disk, clock) into core inputs and core outputs into
//! frames, writes and timers. It decides nothing.

pub mod cache;
pub mod chunk_inbound;
pub mod chunk_streams;
pub mod node;
pub mod origin;
pub mod player;
pub mod stats;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; symphonia's own logs off unless named).
pub fn init_logging() {
    let requested = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // symphonia logs its own view of bad input; ours is the one line users need.
    if !requested.contains("symphonia")
        && let Ok(quiet) = "symphonia=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // libp2p's own start-up chatter (its PeerId, per listener) says nothing a user needs.
    if !requested.contains("libp2p")
        && let Ok(quiet) = "libp2p_swarm=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
