//! `shoal-peer`: search, play and share music on the Shoal network.

use clap::Parser;

/// Listen to music streamed from nearby peers, with the origin as fallback.
#[derive(Debug, Parser)]
#[command(name = "shoal-peer", version, arg_required_else_help = true)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    shoal_peer::net::init_logging();
    let Cli {} = Cli::parse();
    Ok(())
}
