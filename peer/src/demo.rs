//! `shoal-peer demo`: the whole network on one machine. A tracker (embedded SQLite, local
//! origin) as a child process, music imported into it, seeding peers and a listener in this
//! process on loopback; the listener plays a track whose bytes then come mostly from the
//! seeders. Everything is stopped and (unless `--dir`) removed at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_peer::audio::OutputTarget;
use shoal_peer::net::cache::DiskCache;
use shoal_tracker::store::LocalStore;

use crate::network::{self, NetOptions};

/// What `demo` was asked for.
pub struct DemoOptions {
    pub music: Vec<PathBuf>,
    pub peers: usize,
    pub duration: f64,
    pub output: OutputTarget,
    pub json: bool,
    pub dir: Option<PathBuf>,
}

const SINGULARITY: &str = "/usr/share/games/singularity/music";

/// The tracker child, stopped with SIGTERM (then killed) when dropped.
struct TrackerProcess(Child);

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tracker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let beside = exe.with_file_name("shoal-tracker");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("shoal-tracker");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "shoal-tracker is neither beside {} nor on PATH: build it with \
         `cargo build --release -p shoal-tracker`",
        exe.display()
    )
}

/// A 30 s generated piece (a little arpeggio), for machines without music files.
fn generate_piece(path: &Path) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let notes = [220.0, 277.18, 329.63, 440.0, 329.63, 277.18];
    let rate = 44_100.0;
    for i in 0..(30 * 44_100) {
        let t = f64::from(i) / rate;
        let note = notes[(t * 4.0) as usize % notes.len()];
        let env = 1.0 - (t * 4.0).fract();
        let s = (2.0 * std::f64::consts::PI * note * t).sin() * 0.3 * env;
        let v = (s * 32767.0) as i16;
        w.write_sample(v).context("writing the generated piece")?;
        w.write_sample(v).context("writing the generated piece")?;
    }
    w.finalize().context("writing the generated piece")?;
    Ok(())
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    if !opts.duration.is_finite() || opts.duration <= 0.0 {
        bail!("--duration must be a number of seconds > 0");
    }
    if opts.json && opts.output == OutputTarget::Stdout {
        bail!("--json and --output - both want stdout");
    }
    let tracker_bin = tracker_binary()?;
    let (dir, keep) = match &opts.dir {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id())),
            false,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&opts, &tracker_bin, &dir).await;
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(opts: &DemoOptions, tracker_bin: &Path, dir: &Path) -> Result<()> {
    let data = dir.join("tracker");
    let mut music = opts.music.clone();
    if music.is_empty() {
        if Path::new(SINGULARITY).is_dir() {
            music.push(SINGULARITY.into());
        } else {
            let piece = dir.join("generated.wav");
            generate_piece(&piece)?;
            music.push(piece);
        }
    }
    eprintln!("== importing {} into {}", paths(&music), data.display());
    let status = Command::new(tracker_bin)
        .arg("import")
        .arg("--data")
        .arg(&data)
        .args(&music)
        .stdout(std::io::stderr())
        .status()
        .context("cannot run shoal-tracker import")?;
    let store = LocalStore::open(&data).context("nothing was imported")?;
    let tracks = store.list_tracks()?;
    let Some(track) = tracks.first() else {
        bail!("nothing was imported (shoal-tracker import exited with {status})");
    };

    eprintln!("== starting the tracker");
    let mut child = Command::new(tracker_bin)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args([
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start shoal-tracker serve")?;
    let stdout = child.stdout.take().context("no tracker stdout")?;
    let tracker = TrackerProcess(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the tracker's address")?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("the tracker did not start (it said {line:?})"))?
        .to_owned();

    let loopback: libp2p::Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse()?;
    let net = |name: &str| NetOptions {
        tracker: url.clone(),
        cache: dir.join(name),
        cache_limit: Some(1 << 30),
        listen: vec![loopback.clone()],
        region: None,
        upload_bytes_per_s: None,
        superpeers: Vec::new(),
    };
    eprintln!(
        "== starting {} seeding peers with \"{}\"",
        opts.peers, track.title
    );
    let mut seeders = Vec::new();
    for i in 0..opts.peers {
        let o = net(&format!("seeder-{i}"));
        {
            let mut cache = DiskCache::open(&o.cache, o.cache_limit)?;
            network::cache_add(&mut cache, &data, &[track.id])?;
        }
        seeders.push(network::start_node(&o).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seeders.iter().all(|s| s.node.status().announced) {
        if Instant::now() > deadline {
            bail!("the seeders could not announce to the tracker within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!(
        "== a listener plays {:.0} s of \"{}\" to {}",
        opts.duration, track.title, opts.output
    );
    let mut listener = network::start_node(&net("listener")).await?;
    let reports = network::play_on(
        &listener.node,
        &mut listener.events,
        &listener.origin,
        &[track.id.to_string()],
        &opts.output,
        0.0,
        Some(opts.duration),
    )
    .await;
    listener.node.shutdown().await;
    for s in seeders {
        s.node.shutdown().await;
    }
    drop(tracker);
    let reports = reports?;
    let report = reports.first().context("the listener played nothing")?;
    let b = &report.bytes_by_source;
    eprintln!(
        "== time to first audio {} ms; bytes from peers {} ({:.0}%), origin {} ({:.0}%), cache {}",
        report
            .time_to_first_audio_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.0}")),
        network::human(b.peers + b.superpeers),
        100.0 * (report.share_by_source.peers + report.share_by_source.superpeers),
        network::human(b.origin),
        100.0 * report.share_by_source.origin,
        network::human(b.cache),
    );
    if opts.json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

fn paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}
