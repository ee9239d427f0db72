//! `shoal-sim`: run Shoal scenarios on a simulated network.

use clap::Parser;

/// Simulate a Shoal network (scenario in, metrics and plots out), deterministic by seed.
#[derive(Debug, Parser)]
#[command(name = "shoal-sim", version, arg_required_else_help = true)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let Cli {} = Cli::parse();
    Ok(())
}
