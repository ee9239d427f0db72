//! The driver: turns real events (sockets, disk, clock) into core inputs and core outputs into
//! frames, writes and timers. It decides nothing.

pub mod config;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,symphonia=warn,symphonia_format_ogg=warn")
    });
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
