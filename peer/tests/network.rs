//! The network end to end, in real processes on loopback: a `shoal-tracker serve`, seeding
//! `shoal-peer serve`s and a listener `shoal-peer play` of real music (a 24 s excerpt of a
//! Debian singularity-music track). The listener's WAV must be byte-identical to a local
//! decode of the same track (`play --data`, itself checked against the source in audio.rs).
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, tcp, yamux};
use shoal_peer::net::chunk_streams::{ChunkStreamConfig, ChunkStreamEvent, ChunkStreams};
use shoal_peer::net::node::PeerBehaviour;
use shoal_protocol::TrackId;
use shoal_protocol::wire::{Announce, ChunkRequest, ChunkResponse};

const EXCERPT_SECS: u32 = 24;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Reads stdout lines until one starts with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str) -> String {
        let out = self.0.stdout.as_mut().unwrap();
        let mut reader = BufReader::new(out);
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "process ended before printing {prefix:?}"
            );
            if line.starts_with(prefix) {
                return line.trim().to_owned();
            }
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    data: PathBuf,
    track: TrackId,
    reference: Vec<u8>,
    _tracker: Proc,
    url: String,
}

impl World {
    /// Imports the excerpt, decodes the reference WAV locally, starts the tracker.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let src = dir.path().join("excerpt.flac");
        let music = "/usr/share/games/singularity/music/Awakening.ogg";
        assert!(
            Path::new(music).is_file(),
            "install Debian's singularity-music (bash scripts/install-deps.sh)"
        );
        let ok = Command::new("sox")
            .arg(music)
            .arg(&src)
            .args(["trim", "30", &EXCERPT_SECS.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let out = Command::new(bin("shoal-tracker"))
            .arg("import")
            .arg("--data")
            .arg(&data)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let track: TrackId = stdout.split_whitespace().next().unwrap().parse().unwrap();
        let reference = dir.path().join("reference.wav");
        let ok = Command::new(bin("shoal-peer"))
            .args(["play", "--data"])
            .arg(&data)
            .arg(track.to_string())
            .arg("--output")
            .arg(&reference)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut tracker = Proc(
            Command::new(bin("shoal-tracker"))
                .arg("serve")
                .arg("--data")
                .arg(&data)
                .args([
                    "--http",
                    "127.0.0.1:0",
                    "--listen",
                    "/ip4/127.0.0.1/udp/0/quic-v1",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let url = tracker
            .wait_line("listening on ")
            .trim_start_matches("listening on ")
            .to_owned();
        Self {
            reference: std::fs::read(&reference).unwrap(),
            dir,
            data,
            track,
            _tracker: tracker,
            url,
        }
    }

    fn cache(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A seeding peer with the track in its cache, announced to the tracker.
    fn seeder(&self, name: &str) -> Proc {
        let cache = self.cache(name);
        let ok = Command::new(bin("shoal-peer"))
            .args(["cache", "--cache"])
            .arg(&cache)
            .args(["add", "--data"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut p = Proc(
            Command::new(bin("shoal-peer"))
                .args(["serve", "--tracker", &self.url, "--cache"])
                .arg(&cache)
                .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert_eq!(p.wait_line("announced "), "announced 1 tracks");
        p
    }

    /// Starts the listener playing the track to `out.wav` with `--json`.
    fn listener(&self, name: &str) -> (Child, PathBuf) {
        let wav = self.dir.path().join(format!("{name}.wav"));
        let child = Command::new(bin("shoal-peer"))
            .args(["play", "--json", "--tracker", &self.url, "--cache"])
            .arg(self.cache(name))
            .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--output"])
            .arg(&wav)
            .arg(self.track.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, wav)
    }

    /// Waits for the listener; checks the WAV; returns its JSON report and stderr.
    fn finish(&self, child: Child, wav: &Path) -> (serde_json::Value, String) {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "listener failed: {stderr}");
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let got = std::fs::read(wav).unwrap();
        assert_eq!(got.len(), self.reference.len(), "WAV length; {stderr}");
        assert!(got == self.reference, "WAV differs from the local decode");
        assert_eq!(
            report["samples_played"].as_u64().unwrap(),
            ((got.len() - 44) / 4) as u64
        );
        let shares = &report["share_by_source"];
        let sum: f64 = ["cache", "peers", "superpeers", "origin"]
            .iter()
            .map(|k| shares[k].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9, "{report}");
        (report, stderr)
    }
}

fn share(report: &serde_json::Value, key: &str) -> f64 {
    report["share_by_source"][key].as_f64().unwrap()
}

#[test]
fn listener_streams_from_three_seeders_mostly_from_peers() {
    let w = World::new();
    let _seeders: Vec<Proc> = (0..3).map(|i| w.seeder(&format!("seed{i}"))).collect();
    let (child, wav) = w.listener("listener");
    let (report, stderr) = w.finish(child, &wav);
    assert!(share(&report, "peers") >= 0.8, "{report}\n{stderr}");
    assert_eq!(report["stutters"], 0, "{report}");
    assert!(report["time_to_first_audio_ms"].as_f64().unwrap() > 0.0);

    // A second play is served from the listener's own cache.
    let (child, wav2) = w.listener("listener");
    let (report, _) = w.finish(child, &wav2);
    assert!(share(&report, "cache") > 0.99, "{report}");
}

#[test]
fn killing_a_seeder_mid_track_still_gives_a_complete_wav() {
    let w = World::new();
    let mut seeders: Vec<Proc> = (0..3).map(|i| w.seeder(&format!("seed{i}"))).collect();
    let (child, wav) = w.listener("listener");
    std::thread::sleep(Duration::from_secs(6));
    let victim = seeders.remove(0);
    drop(victim); // SIGKILL
    let (report, stderr) = w.finish(child, &wav);
    assert!(share(&report, "peers") > 0.5, "{report}\n{stderr}");
}

#[test]
fn killing_every_seeder_moves_the_rest_to_the_origin() {
    let w = World::new();
    let seeders: Vec<Proc> = (0..3).map(|i| w.seeder(&format!("seed{i}"))).collect();
    let (child, wav) = w.listener("listener");
    // The first 30 s are asked for at once; kill the seeders before they can send them all.
    std::thread::sleep(Duration::from_millis(300));
    drop(seeders);
    let (report, stderr) = w.finish(child, &wav);
    assert!(share(&report, "origin") > 0.0, "{report}\n{stderr}");
}

/// A peer that announces the track and answers every chunk request with garbage.
async fn run_malicious_peer(
    tracker_url: String,
    track: TrackId,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let client = shoal_peer::net::origin::OriginClient::new(&tracker_url).unwrap();
    let tracker = shoal_peer::net::node::TrackerEndpoint::discover(&client)
        .await
        .unwrap();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_behaviour(|k| PeerBehaviour::new(k, Duration::from_secs(30)))
        .unwrap()
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    for a in &tracker.addrs {
        swarm.add_peer_address(tracker.peer_id, a.clone());
    }
    swarm.behaviour_mut().tracker.announce.send_request(
        &tracker.peer_id,
        Announce {
            replace: true,
            tracks: vec![track],
            removed: vec![],
            addrs: vec![addr.to_string()],
            via: None,
            region: None,
        },
    );
    let (mut chunks, mut requests) = ChunkStreams::new(
        swarm.behaviour().chunk.new_control(),
        ChunkStreamConfig::default(),
    );
    chunks.serve(&swarm.behaviour().chunk_inbound).unwrap();
    loop {
        if stop.try_recv().is_ok() {
            return;
        }
        let ev = tokio::select! {
            _ = swarm.select_next_some() => continue,
            ev = requests.recv() => ev,
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Some(ChunkStreamEvent::Request { request, reply, .. }) = ev else {
            continue;
        };
        let resp = match request {
            ChunkRequest::GetChunk { request, .. } => ChunkResponse::Chunk {
                request,
                bytes: vec![0x55; 4000],
            },
            ChunkRequest::GetManifest { request, .. } => ChunkResponse::Manifest {
                request,
                bytes: vec![1, 2, 3],
            },
            ChunkRequest::QueryHave { request, .. } => ChunkResponse::Have {
                request,
                bitmap: vec![0xff; 8],
            },
            ChunkRequest::Cancel { request } => ChunkResponse::Cancelled { request },
        };
        let _ = reply.send(resp);
    }
}

#[test]
fn a_peer_serving_corrupt_chunks_is_dropped_and_playback_stays_correct() {
    let w = World::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, track) = (w.url.clone(), w.track);
    let evil = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_malicious_peer(url, track, rx));
    });
    // Let its announce land, then add one honest seeder.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let _good = w.seeder("good");
    let (child, wav) = w.listener("listener");
    let (report, stderr) = w.finish(child, &wav);
    tx.send(()).unwrap();
    evil.join().unwrap();
    assert!(
        stderr.contains("dropped a peer that sent bad data"),
        "the bad peer was never dropped: {stderr}"
    );
    assert!(share(&report, "peers") > 0.5, "{report}");
    assert!(started.elapsed() < Duration::from_secs(120));
}
