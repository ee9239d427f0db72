//! `shoal-superpeer`: relay, index and cache for a cluster of Shoal peers.

use clap::Parser;

/// Relay between NATed peers, index what they hold, cache popular chunks.
#[derive(Debug, Parser)]
#[command(name = "shoal-superpeer", version, arg_required_else_help = true)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    shoal_superpeer::net::init_logging();
    let Cli {} = Cli::parse();
    Ok(())
}
