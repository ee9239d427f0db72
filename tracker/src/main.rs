//! `shoal-tracker`: publish music and tell peers who holds it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_tracker::import::{self, ImportOptions, ImportOutcome};
use shoal_tracker::net::config::TrackerConfig;
use shoal_tracker::store::LocalStore;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish music: decode, encode to Opus, chunk and store files (or folders, recursively).
    ///
    /// Reads WAV, FLAC, MP3, Ogg Vorbis and Ogg Opus. Prints one line per track (TrackId,
    /// title, duration) and a summary; exits with status 1 if any file failed. Importing the
    /// same file with the same settings again gives the same TrackId and writes nothing.
    Import {
        /// Data directory of the origin store (created if missing).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    shoal_tracker::net::init_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = match &cli.config {
        Some(path) => TrackerConfig::load(path)?,
        None => TrackerConfig::default(),
    };
    match cli.command {
        Command::Import {
            data,
            bitrate,
            complexity,
            paths,
        } => {
            let data = data
                .or(config.data)
                .context("no data directory: pass --data DIR (or set `data` in the config file)")?;
            let options = ImportOptions {
                bitrate: bitrate.or(config.import.bitrate_kbps).unwrap_or(128) * 1000,
                complexity: complexity.or(config.import.complexity).unwrap_or(10),
            };
            import_command(&data, &options, &paths)
        }
    }
}

fn import_command(data: &Path, options: &ImportOptions, paths: &[PathBuf]) -> Result<ExitCode> {
    let store = LocalStore::create(data)
        .with_context(|| format!("cannot open data directory {}", data.display()))?;
    let files = import::collect_files(paths)?;
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
        let result = import::import_file(&store, file, options, &mut |f| {
            bar.set_position(base + (f * 1000.0) as u64)
        });
        bar.set_position(base + 1000);
        bar.suspend(|| match &result {
            Ok(outcome) => {
                let m = outcome.meta();
                let secs = m.duration_ms / 1000;
                let note = match outcome {
                    ImportOutcome::Imported(_) => {
                        imported += 1;
                        ""
                    }
                    ImportOutcome::AlreadyPresent(_) => {
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
                eprintln!("error: {}: {e}", file.display());
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
