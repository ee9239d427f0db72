//! `shoal-tracker`: publish music and tell peers who holds it.

use clap::Parser;

/// Catalog, peer registry and origin store of a Shoal network.
#[derive(Debug, Parser)]
#[command(name = "shoal-tracker", version, arg_required_else_help = true)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    shoal_tracker::net::init_logging();
    let Cli {} = Cli::parse();
    Ok(())
}
