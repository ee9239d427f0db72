//! `shoal-sim`: run Shoal scenarios on a simulated network (scenario in, metrics and plots
//! out, deterministic by seed).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_sim::shoal::ShoalCores;
use shoal_sim::sim::World;
use shoal_sim::{output, scenario, sweep};

/// Simulate a Shoal network (scenario in, metrics and plots out), deterministic by seed.
#[derive(Debug, Parser)]
#[command(
    name = "shoal-sim",
    version,
    arg_required_else_help = true,
    after_help = "Environment:\n  SHOAL_SIM_HUGE_PAGES=0  do not restart with glibc's huge-page tunable \
                  (on by default where the kernel gives transparent huge pages on request; \
                  same results, large runs faster)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario: writes summary.json, timeseries.csv and plots (PNG + SVG) to --out.
    Run {
        /// The scenario file (TOML; see simulations/scenarios/).
        scenario: PathBuf,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Seed (default: the scenario's run.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Override a scenario key, e.g. --set population.peers=5000 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Run a grid of variations in parallel and compare them, one plot per metric.
    Sweep {
        /// The scenario file.
        scenario: PathBuf,
        /// A key and its values, e.g. --vary nat.symmetric=0.1,0.4,0.7 (repeatable: grid).
        #[arg(long, value_name = "KEY=V1,V2,...", required = true)]
        vary: Vec<String>,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Seed for every run (default: the scenario's run.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Override a scenario key for every run (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

fn bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}, eta {{eta}}] {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

fn main() -> std::process::ExitCode {
    // Before anything is allocated in earnest: large runs are about 10% faster on huge pages.
    shoal_sim::huge_pages::restart_with_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear message (with its causes), no backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            scenario: file,
            out,
            seed,
            sets,
        } => {
            let loaded = scenario::load(&file, &sets)?;
            let s = &loaded.scenario;
            let seed = seed.unwrap_or(s.run.seed);
            // Fail on an unusable --out before spending time on the run.
            let staging = output::Staging::new(&out)?;
            let pb = bar(s.run.duration_s.ceil() as u64, "sim s");
            // Building the population (and warm caches: hashing their tracks) can take a while.
            pb.set_message("building the population and warm caches");
            pb.tick();
            let world = World::new(s, seed, ShoalCores::new(s, seed));
            let mut r = world.run(&mut |t, events| {
                pb.set_position(t as u64);
                pb.set_message(format!("{events} events"));
            });
            pb.finish_and_clear();
            r.summary.sets = sets.clone();
            output::write_run(staging.path(), &r).context("writing results")?;
            let dir = staging.commit()?;
            let sm = &r.summary;
            let mut stdout = std::io::stdout().lock();
            // Results are on disk already; a closed stdout (`| head`) is not an error.
            let _ = writeln!(
                stdout,
                "{}: {} peers, {:.0} s simulated, {} events in {:.2} s wall ({:.0} events/s); {} plays; results in {}",
                sm.scenario,
                sm.peers,
                sm.duration_s,
                sm.events,
                sm.wall_s,
                sm.events as f64 / sm.wall_s.max(1e-9),
                sm.workload.plays,
                dir.display()
            );
            for n in &sm.notes {
                let _ = writeln!(stdout, "note: {n}");
            }
        }
        Cmd::Sweep {
            scenario: file,
            vary,
            out,
            seed,
            sets,
        } => {
            let axes: Vec<sweep::Axis> = vary
                .iter()
                .map(|v| sweep::parse_vary(v))
                .collect::<Result<_, _>>()?;
            let n: usize = axes.iter().map(|a| a.values.len()).product();
            let pb = bar(n as u64, "runs");
            let dir = sweep::sweep(
                &file,
                &sets,
                &axes,
                seed,
                &out,
                ShoalCores::new,
                |done, _| pb.set_position(done as u64),
            )?;
            pb.finish_and_clear();
            println!(
                "{n} runs; sweep.csv and compare_*.png/svg in {}",
                dir.display()
            );
        }
    }
    Ok(())
}
