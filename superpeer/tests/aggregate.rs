//! Aggregated announce end to end, in real processes on loopback: a `shoal-tracker serve`, a
//! `shoal-superpeer serve --tracker`, a leaf (an in-process libp2p client) that announces a
//! track to its super-peer only and never talks to the tracker, and a stranger asking the
//! tracker directly. The tracker finds the leaf's track through the super-peer's aggregated
//! `/shoal/cluster/1` announce, with the super-peer as the leaf's `via`; the leaf is told
//! `Aggregated` (it need not announce to the tracker); dropping the track at the leaf takes it
//! off the tracker's answer after one batch.

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
use shoal_protocol::wire::{Announce, AnnounceResponse, Holder, LookupRequest, LookupResponse};
use shoal_tracker::net::p2p::{Behaviour as ShoalBehaviour, BehaviourEvent as ShoalEvent};

const SUPERPEER: &str = env!("CARGO_BIN_EXE_shoal-superpeer");

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

fn client() -> Swarm<ShoalBehaviour> {
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

async fn announce(
    swarm: &mut Swarm<ShoalBehaviour>,
    to: PeerId,
    addr: &Multiaddr,
    msg: Announce,
) -> AnnounceResponse {
    swarm.add_peer_address(to, addr.clone());
    swarm.behaviour_mut().announce.send_request(&to, msg);
    let run = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(ShoalEvent::Announce(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => break response,
                SwarmEvent::Behaviour(ShoalEvent::Announce(
                    request_response::Event::OutboundFailure { error, .. },
                )) => panic!("announce failed: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("announce timed out")
}

async fn holders(
    swarm: &mut Swarm<ShoalBehaviour>,
    to: PeerId,
    addr: &Multiaddr,
    track: TrackId,
) -> Vec<Holder> {
    swarm.add_peer_address(to, addr.clone());
    swarm
        .behaviour_mut()
        .lookup
        .send_request(&to, LookupRequest::Holders { track, limit: 16 });
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
    match tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("lookup timed out")
    {
        LookupResponse::Holders { track: t, holders } if t == track => holders,
        other => panic!("unexpected answer {other:?}"),
    }
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

fn peer_and_base(addr: &Multiaddr) -> (PeerId, Multiaddr) {
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("no /p2p/ in {addr}")
    };
    let base = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    (peer, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_finds_a_leafs_track_through_its_super_peers_aggregated_announce() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Proc::spawn(
        Command::new(bin("shoal-tracker"))
            .arg("serve")
            .arg("--data")
            .arg(dir.path().join("tracker"))
            .args([
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .env("RUST_LOG", "warn"),
    );
    let tracker_url = tracker.wait_line("listening on ");
    let info: serde_json::Value =
        serde_json::from_str(&get(&format!("{tracker_url}/p2p")).await).expect("GET /p2p is JSON");
    let tracker_id: PeerId = info["peer_id"].as_str().unwrap().parse().unwrap();
    let tracker_addr: Multiaddr = info["addrs"][0].as_str().unwrap().parse().unwrap();
    let tracker_base: Multiaddr = tracker_addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();

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
                "--no-cache",
                "--data",
            ])
            .arg(dir.path().join("sp"))
            .env("RUST_LOG", "info,libp2p=warn"),
    );
    let http = sp.wait_line("listening on ");
    let (sp_id, sp_base) = peer_and_base(&sp.wait_line("p2p ").parse().unwrap());
    let metrics_url = format!("{http}/metrics");

    // The super-peer registers its (empty) cluster with the tracker first.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = get(&metrics_url).await;
        if metric(&m, "shoal_superpeer_tracker_sync_forwarding") == 1 {
            assert!(metric(&m, "shoal_superpeer_tracker_sync_snapshots_total") >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "cluster never registered:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leaf announces to its super-peer only, and is told the super-peer aggregates.
    let mut leaf = client();
    let leaf_id = *leaf.local_peer_id();
    let track = TrackId::of(b"a leaf's song");
    let msg = Announce {
        replace: true,
        tracks: vec![track],
        removed: vec![],
        addrs: vec![],
        via: None,
        region: Some("SE".into()),
    };
    let answer = announce(&mut leaf, sp_id, &sp_base, msg).await;
    assert!(
        matches!(answer, AnnounceResponse::Aggregated { ttl_secs } if ttl_secs > 0),
        "{answer:?}"
    );

    // A stranger asks the tracker itself: the leaf, reachable through the super-peer.
    let mut stranger = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let hs = holders(&mut stranger, tracker_id, &tracker_base, track).await;
        if !hs.is_empty() {
            break hs;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker never listed the leaf's track"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].peer.peer_id, leaf_id.to_bytes());
    assert_eq!(found[0].region.as_deref(), Some("SE"));
    assert!(!found[0].superpeer);
    let via = found[0]
        .via
        .as_ref()
        .expect("reachable through the super-peer");
    assert_eq!(via.peer_id, sp_id.to_bytes());
    assert!(
        via.addrs.iter().any(|a| sp_base.to_string() == *a),
        "{via:?} vs {sp_base}"
    );
    // The leaf never connected to the tracker: only the aggregate can have put it there. The
    // tracker holds one cluster entry and no peer entry.
    assert!(!leaf.is_connected(&tracker_id));
    let tm = get(&format!("{tracker_url}/metrics")).await;
    assert_eq!(metric(&tm, "shoal_registry_peers"), 0, "{tm}");
    assert_eq!(metric(&tm, "shoal_registry_clusters"), 1, "{tm}");
    assert_eq!(metric(&tm, "shoal_registry_cluster_listings"), 1, "{tm}");
    assert_eq!(
        metric(&tm, "shoal_registry_cluster_announces_rejected_total"),
        0,
        "{tm}"
    );
    let m = get(&metrics_url).await;
    assert_eq!(metric(&m, "shoal_superpeer_tracker_sync_tracks"), 1, "{m}");
    assert_eq!(
        metric(&m, "shoal_superpeer_tracker_sync_failed_total"),
        0,
        "{m}"
    );

    // The leaf drops the track: after one batch the tracker no longer lists it.
    let msg = Announce {
        replace: true,
        tracks: vec![],
        removed: vec![],
        addrs: vec![],
        via: None,
        region: Some("SE".into()),
    };
    let answer = announce(&mut leaf, sp_id, &sp_base, msg).await;
    assert!(
        matches!(answer, AnnounceResponse::Aggregated { .. }),
        "{answer:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if holders(&mut stranger, tracker_id, &tracker_base, track)
            .await
            .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker kept listing the track"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = get(&metrics_url).await;
    assert_eq!(metric(&m, "shoal_superpeer_tracker_sync_tracks"), 0, "{m}");

    // Another track, listed; then the super-peer shuts down gracefully: it tells the tracker
    // its cluster is gone, so the tracker stops handing out a leaf that lost its relay.
    let other = TrackId::of(b"another song");
    let msg = Announce {
        replace: true,
        tracks: vec![other],
        removed: vec![],
        addrs: vec![],
        via: None,
        region: None,
    };
    announce(&mut leaf, sp_id, &sp_base, msg).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while holders(&mut stranger, tracker_id, &tracker_base, other)
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the second track was never listed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut sp = sp;
    let status = Command::new("kill")
        .args(["-TERM", &sp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = sp.child.try_wait().unwrap() {
            assert!(s.success(), "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the super-peer did not exit");
        // Keep the leaf's end of the connection polled so the close goes through.
        let _ = tokio::time::timeout(Duration::from_millis(100), leaf.select_next_some()).await;
    }
    let left = holders(&mut stranger, tracker_id, &tracker_base, other).await;
    assert!(left.is_empty(), "still listed after the goodbye: {left:?}");
}

/// A super-peer process with `--tracker`, no cache.
fn superpeer(dir: &Path, name: &str, tracker_url: &str) -> (Proc, String, PeerId, Multiaddr) {
    let sp = Proc::spawn(
        Command::new(SUPERPEER)
            .args([
                "serve",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--http",
                "127.0.0.1:0",
                "--tracker",
                tracker_url,
                "--region",
                "SE",
                "--no-cache",
                "--data",
            ])
            .arg(dir.join(name))
            .env("RUST_LOG", "info,libp2p=warn"),
    );
    let http = sp.wait_line("listening on ");
    let addr: Multiaddr = sp.wait_line("p2p ").parse().unwrap();
    let (id, _) = peer_and_base(&addr);
    (sp, format!("{http}/metrics"), id, addr)
}

/// Graceful shutdown: a real `shoal-peer serve` leaf seeding a track is attached to one of two
/// super-peers; SIGTERM that one and the leaf moves to the other (reservation and index entry
/// there), and the tracker then hands out the leaf through the new super-peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_leaves_to_another_super_peer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tone = dir.path().join("tone.flac");
    let ok = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "2"])
        .arg(&tone)
        .args(["synth", "3", "sine", "440"])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new(bin("shoal-tracker"))
        .arg("import")
        .arg("--data")
        .arg(&data)
        .arg(&tone)
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
    let info: serde_json::Value =
        serde_json::from_str(&get(&format!("{tracker_url}/p2p")).await).unwrap();
    let tracker_id: PeerId = info["peer_id"].as_str().unwrap().parse().unwrap();
    let tracker_addr: Multiaddr = info["addrs"][0].as_str().unwrap().parse().unwrap();
    let tracker_base: Multiaddr = tracker_addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();

    let mut sps = vec![
        superpeer(dir.path(), "a", &tracker_url),
        superpeer(dir.path(), "b", &tracker_url),
    ];
    for (_, metrics, _, _) in &sps {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(
            &get(metrics).await,
            "shoal_superpeer_tracker_sync_forwarding",
        ) != 1
        {
            assert!(Instant::now() < deadline, "cluster never registered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let cache = dir.path().join("leaf");
    let ok = Command::new(bin("shoal-peer"))
        .args(["cache", "--cache"])
        .arg(&cache)
        .args(["add", "--data"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let mut cmd = Command::new(bin("shoal-peer"));
    cmd.args(["serve", "--tracker", &tracker_url, "--cache"])
        .arg(&cache)
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .env("RUST_LOG", "warn");
    for (_, _, _, addr) in &sps {
        cmd.args(["--superpeer", &addr.to_string()]);
    }
    let leaf = Proc::spawn(&mut cmd);
    assert_eq!(leaf.wait_line("announced "), "1 tracks");

    // Attached to one of them: its reservation and its index entry.
    let attached = |m: &str| {
        metric(m, "shoal_superpeer_reservations") == 1 && metric(m, "shoal_superpeer_leaves") == 1
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let mut found = None;
        for (i, (_, metrics, _, _)) in sps.iter().enumerate() {
            if attached(&get(metrics).await) {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(Instant::now() < deadline, "the leaf never attached");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut gone, _, gone_id, _) = sps.remove(first);
    let (_, metrics, next_id, _) = &sps[0];
    let mut stranger = client();
    let via_is = |hs: &[Holder], id: PeerId| {
        hs.len() == 1
            && hs[0]
                .via
                .as_ref()
                .is_some_and(|v| v.peer_id == id.to_bytes())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !via_is(
        &holders(&mut stranger, tracker_id, &tracker_base, track).await,
        gone_id,
    ) {
        assert!(
            Instant::now() < deadline,
            "the tracker never listed the leaf"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &gone.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = gone.child.try_wait().unwrap() {
            assert!(s.success(), "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the super-peer did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leaf moves: a reservation and an index entry at the other super-peer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = get(metrics).await;
        if attached(&m) {
            break;
        }
        assert!(Instant::now() < deadline, "the leaf did not move:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hs = holders(&mut stranger, tracker_id, &tracker_base, track).await;
        if via_is(&hs, *next_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker does not hand out the leaf through its new super-peer: {hs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(leaf);
}
