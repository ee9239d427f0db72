//! The chunk cache end to end, in real processes on loopback: a `shoal-tracker serve` with a
//! short excerpt of real music, a `shoal-superpeer serve --tracker` with its cache peer, two
//! leaves (in-process libp2p clients with distinct PeerIds) looking the track up through the
//! super-peer, which admits it and has its cache peer fetch it from the origin; a later lookup
//! lists the cache peer first, and a `shoal-peer play --superpeer` with no seeder online gets
//! the track's bytes from the cache peer (counted as `peers`) and a WAV identical to a local
//! decode. `/metrics` counts the cache hits, the cached track and the bytes served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identity::Keypair};
use shoal_protocol::TrackId;
use shoal_protocol::wire::{LookupRequest, LookupResponse};
use shoal_tracker::net::p2p::{Behaviour as ShoalBehaviour, BehaviourEvent as ShoalEvent};

const SUPERPEER: &str = env!("CARGO_BIN_EXE_shoal-superpeer");
const MUSIC: &str = "/usr/share/games/singularity/music/Awakening.ogg";
const EXCERPT_SECS: u32 = 20;

/// A binary of another workspace crate, beside this test's directory (target/debug).
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

/// A child process killed when dropped, its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The rest of the first stdout line starting with `prefix`.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no line {prefix:?}: {e}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }
}

fn lookup_client() -> Swarm<ShoalBehaviour> {
    libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            ShoalBehaviour::new(key, ProtocolSupport::Outbound, Duration::from_secs(20))
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Asks the super-peer for the holders of `track`.
async fn lookup(
    swarm: &mut Swarm<ShoalBehaviour>,
    sp: PeerId,
    addr: &Multiaddr,
    track: TrackId,
) -> LookupResponse {
    swarm.add_peer_address(sp, addr.clone());
    swarm
        .behaviour_mut()
        .lookup
        .send_request(&sp, LookupRequest::Holders { track, limit: 16 });
    let run = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(ShoalEvent::Lookup(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => break response,
                SwarmEvent::Behaviour(ShoalEvent::Lookup(
                    request_response::Event::OutboundFailure { error, .. },
                )) => panic!("lookup failed: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("lookup timed out")
}

async fn get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_track_is_cached_and_served_by_the_superpeer() {
    assert!(
        Path::new(MUSIC).is_file(),
        "install Debian's singularity-music (bash scripts/install-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("excerpt.flac");
    let ok = Command::new("sox")
        .arg(MUSIC)
        .arg(&src)
        .args(["trim", "40", &EXCERPT_SECS.to_string()])
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
    let track: TrackId = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
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
    let reference = std::fs::read(&reference).unwrap();

    let tracker = Proc::spawn(
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
            .env("RUST_LOG", "warn"),
    );
    let tracker_url = tracker.wait_line("listening on ");

    let sp_data = dir.path().join("sp");
    let sp = Proc::spawn(
        Command::new(SUPERPEER)
            .args([
                "serve",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--http",
                "127.0.0.1:0",
                "--tracker",
                &tracker_url,
                "--cache-listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--cache-limit-mib",
                "64",
                "--data",
            ])
            .arg(&sp_data)
            .env("RUST_LOG", "info,libp2p=warn"),
    );
    let http = sp.wait_line("listening on ");
    let sp_addr: Multiaddr = sp.wait_line("p2p ").parse().unwrap();
    let Some(Protocol::P2p(sp_id)) = sp_addr.iter().last() else {
        panic!("no /p2p/ in {sp_addr}")
    };
    let sp_base: Multiaddr = sp_addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    let cache_addr: Multiaddr = sp.wait_line("cache ").parse().unwrap();
    let Some(Protocol::P2p(cache_id)) = cache_addr.iter().last() else {
        panic!("no /p2p/ in {cache_addr}")
    };
    assert_ne!(cache_id, sp_id, "the cache peer has its own identity");

    // Two distinct leaves ask: the second admits the track.
    let mut leaf1 = lookup_client();
    let mut leaf2 = lookup_client();
    for leaf in [&mut leaf1, &mut leaf2] {
        match lookup(leaf, sp_id, &sp_base, track).await {
            LookupResponse::Holders { holders, .. } => assert!(
                holders
                    .iter()
                    .all(|h| h.peer.peer_id != cache_id.to_bytes()),
                "not cached yet"
            ),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let metrics_url = format!("{http}/metrics");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = get(&metrics_url).await;
        // Cached, and announced by the cache peer to the tracker (a listener asks the tracker
        // until it is attached to the super-peer).
        if metric(&m, "shoal_superpeer_cache_tracks") == 1
            && metric(&m, "shoal_superpeer_cache_announced") == 1
        {
            assert_eq!(metric(&m, "shoal_superpeer_cache_admitted_total"), 1);
            assert!(metric(&m, "shoal_superpeer_cache_bytes") > 100_000, "{m}");
            assert!(metric(&m, "shoal_superpeer_cache_chunks") > 1, "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the track was not cached within 90 s:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Now a lookup lists the cache peer first, directly dialable.
    let LookupResponse::Holders { holders, .. } = lookup(&mut leaf1, sp_id, &sp_base, track).await
    else {
        panic!("no holders")
    };
    let first = holders.first().expect("the cache peer is listed");
    assert_eq!(first.peer.peer_id, cache_id.to_bytes());
    assert!(first.via.is_none());
    assert!(
        first
            .peer
            .addrs
            .iter()
            .any(|a| a.starts_with("/ip4/127.0.0.1/udp/")),
        "{:?}",
        first.peer.addrs
    );
    let m = get(&metrics_url).await;
    let hits_before = metric(&m, "shoal_superpeer_cache_hits_total");
    assert!(hits_before >= 1, "{m}");

    // A listener with no seeder online: the bytes come from the cache peer (and the origin
    // at most for a hedge), and the WAV is complete and identical.
    let wav = dir.path().join("listener.wav");
    let out = Command::new(bin("shoal-peer"))
        .args(["play", "--json", "--tracker", &tracker_url, "--superpeer"])
        .arg(sp_addr.to_string())
        .arg("--cache")
        .arg(dir.path().join("listener-cache"))
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--output"])
        .arg(&wav)
        .arg(track.to_string())
        .env(
            "RUST_LOG",
            std::env::var("LISTENER_LOG").unwrap_or("warn".into()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "listener failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let got = std::fs::read(&wav).unwrap();
    assert_eq!(got.len(), reference.len(), "WAV length; {stderr}");
    assert!(got == reference, "WAV differs from the local decode");
    eprintln!("listener: {report}");
    let by = &report["bytes_by_source"];
    let n = |k: &str| by[k].as_u64().unwrap_or(0);
    // Looked up through the super-peer, its cache peer counts as a super-peer source; looked up
    // through the tracker, as a plain peer.
    let from_cache_peer = n("peers") + n("superpeers");
    assert!(
        from_cache_peer > 0,
        "the cache peer served nothing: {report}\n{stderr}"
    );
    assert!(
        from_cache_peer >= n("origin"),
        "mostly from the cache peer: {report}"
    );

    let m = get(&metrics_url).await;
    assert!(
        metric(&m, "shoal_superpeer_cache_served_bytes_total") > 0 || {
            // The status is sampled every second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            metric(
                &get(&metrics_url).await,
                "shoal_superpeer_cache_served_bytes_total",
            ) > 0
        },
        "{m}"
    );
    let page = get(&format!("{http}/")).await;
    assert!(page.contains("Cache hits"), "{page}");
    assert!(page.contains(&cache_id.to_string()), "{page}");
    drop(sp);
    drop(tracker);
}
