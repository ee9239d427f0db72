//! `shoal-superpeer serve` as a process on loopback, driven by in-process libp2p clients:
//! a leaf reserves a slot on the relay, a second peer reaches it through the circuit and
//! exchanges more than libp2p's default 128 KiB circuit limit, the leaf announces and the
//! other looks it up, and the HTTP surface reports it all. Also: bad config and `--help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity::Keypair, noise, relay, yamux};
use shoal_protocol::TrackId;
use shoal_protocol::wire::{Announce, AnnounceResponse, LookupRequest, LookupResponse};
use shoal_tracker::net::p2p::{Behaviour as ShoalBehaviour, BehaviourEvent as ShoalEvent};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-superpeer");
const BULK: usize = 300 * 1024;

/// A running `shoal-superpeer serve`; killed on drop.
struct Server {
    child: Child,
    http: String,
    p2p: Vec<Multiaddr>,
    peer: PeerId,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--http",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let http = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_owned();
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let addr: Multiaddr = line
        .strip_prefix("p2p ")
        .unwrap_or_else(|| panic!("p2p line: {line}"))
        .parse()
        .unwrap();
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("no /p2p/ in {addr}")
    };
    Server {
        child,
        http,
        p2p: vec![addr],
        peer,
        _data: data,
    }
}

// ---------------------------------------------------------------------------------------------
// A bulk echo protocol: one length-prefixed blob each way.

#[derive(Clone, Default)]
struct BulkCodec;

async fn read_blob<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 4 << 20 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_blob<T: AsyncWrite + Unpin + Send>(io: &mut T, b: &[u8]) -> io::Result<()> {
    io.write_all(&u32::try_from(b.len()).unwrap().to_be_bytes())
        .await?;
    io.write_all(b).await?;
    io.close().await
}

impl request_response::Codec for BulkCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_blob(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_blob(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_blob(io, &req).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_blob(io, &res).await
    }
}

#[derive(NetworkBehaviour)]
struct Client {
    relay: relay::client::Behaviour,
    shoal: ShoalBehaviour,
    bulk: request_response::Behaviour<BulkCodec>,
}

fn client() -> Swarm<Client> {
    libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Client {
            relay,
            shoal: ShoalBehaviour::new(key, ProtocolSupport::Outbound, Duration::from_secs(20)),
            bulk: request_response::Behaviour::new(
                [(StreamProtocol::new("/test/bulk/1"), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Polls `swarm` until `f` returns a value, answering bulk requests with an echo.
async fn until<T>(
    swarm: &mut Swarm<Client>,
    mut f: impl FnMut(&mut Swarm<Client>, &SwarmEvent<ClientEvent>) -> Option<T>,
) -> T {
    let fut = async {
        loop {
            let ev = swarm.select_next_some().await;
            if let Some(t) = f(swarm, &ev) {
                return t;
            }
            echo(swarm, ev);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("timed out")
}

fn echo(swarm: &mut Swarm<Client>, ev: SwarmEvent<ClientEvent>) {
    if let SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::Message {
        message: request_response::Message::Request {
            request, channel, ..
        },
        ..
    })) = ev
    {
        let _ = swarm.behaviour_mut().bulk.send_response(channel, request);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_index_and_http() {
    let sp = start_server(&[]);
    let sp_addr = sp.p2p[0].clone();
    let health = get(&format!("{}/healthz", sp.http)).await;
    assert_eq!(health.trim(), "ok");

    // (a) The leaf reserves a slot on the relay.
    let mut leaf = client();
    let leaf_id = *leaf.local_peer_id();
    leaf.listen_on(sp_addr.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(&mut leaf, |_, ev| {
        matches!(
            ev,
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;

    // (c) The leaf announces a track to its super-peer.
    let track = TrackId::of(b"a song");
    leaf.behaviour_mut().shoal.announce.send_request(
        &sp.peer,
        Announce {
            replace: true,
            tracks: vec![track],
            removed: vec![],
            addrs: vec![],
            via: None,
            region: Some("SE".into()),
        },
    );
    let answer = until(&mut leaf, |_, ev| match ev {
        SwarmEvent::Behaviour(ClientEvent::Shoal(ShoalEvent::Announce(
            request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            },
        ))) => Some(response.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(answer, AnnounceResponse::Accepted { ttl_secs } if ttl_secs > 0),
        "{answer:?}"
    );

    // (b) A second peer dials the leaf through the circuit and exchanges > 256 KiB.
    let mut other = client();
    let circuit = sp_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(leaf_id));
    other.dial(circuit).unwrap();
    let blob: Vec<u8> = (0..BULK).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = false;
    let echoed = {
        let run = async {
            loop {
                tokio::select! {
                    ev = leaf.select_next_some() => echo(&mut leaf, ev),
                    ev = other.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == leaf_id && !sent => {
                            sent = true;
                            other.behaviour_mut().bulk.send_request(&leaf_id, blob.clone());
                        }
                        SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. }, ..
                        })) => break response,
                        SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::OutboundFailure { error, .. })) => {
                            panic!("bulk request through the relay failed: {error}")
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial through the relay failed: {error}"),
                        _ => {}
                    },
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("relayed exchange timed out")
    };
    assert_eq!(echoed.len(), BULK);
    assert!(echoed == blob, "relayed bytes differ");

    // (c) The other peer (connected to the super-peer directly) looks the track up.
    other.dial(sp_addr.clone()).unwrap();
    let lookup = |s: &mut Swarm<Client>, req| {
        s.behaviour_mut().shoal.lookup.send_request(&sp.peer, req);
    };
    lookup(&mut other, LookupRequest::Holders { track, limit: 10 });
    let resp = until_lookup(&mut other, &mut leaf).await;
    let LookupResponse::Holders { track: t, holders } = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(t, track);
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].peer.peer_id, leaf_id.to_bytes());
    assert_eq!(holders[0].region.as_deref(), Some("SE"));
    let via = holders[0].via.as_ref().expect("via");
    assert_eq!(via.peer_id, sp.peer.to_bytes());
    assert!(
        via.addrs.iter().any(|a| sp_addr.to_string().starts_with(a)),
        "{via:?} vs {sp_addr}"
    );
    // Unknown track, no tracker: an empty answer; search: an error naming the reason.
    lookup(
        &mut other,
        LookupRequest::Holders {
            track: TrackId::of(b"nobody"),
            limit: 10,
        },
    );
    let resp = until_lookup(&mut other, &mut leaf).await;
    assert!(
        matches!(&resp, LookupResponse::Holders { holders, .. } if holders.is_empty()),
        "{resp:?}"
    );
    lookup(
        &mut other,
        LookupRequest::Search {
            query: "x".into(),
            limit: 5,
        },
    );
    let resp = until_lookup(&mut other, &mut leaf).await;
    assert!(matches!(resp, LookupResponse::Error { .. }), "{resp:?}");

    // (d) Metrics and the status page.
    let m = get(&format!("{}/metrics", sp.http)).await;
    assert_eq!(metric(&m, "shoal_superpeer_leaves"), 1, "{m}");
    assert_eq!(metric(&m, "shoal_superpeer_reservations"), 1, "{m}");
    assert!(
        metric(&m, "shoal_superpeer_circuits_accepted_total") >= 1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "shoal_superpeer_circuits_failed_total"),
        0,
        "{m}"
    );
    assert!(metric(&m, "shoal_superpeer_transport_read_bytes_total") >= 2 * BULK as u64);
    assert_eq!(metric(&m, "shoal_superpeer_announces_accepted_total"), 1);
    assert_eq!(metric(&m, "shoal_superpeer_lookups_total"), 3);
    assert_eq!(metric(&m, "shoal_superpeer_lookup_hits_total"), 1);
    assert_eq!(metric(&m, "shoal_superpeer_cache_hits_total"), 0);
    let page = get(&format!("{}/", sp.http)).await;
    assert!(page.contains(&sp.peer.to_string()), "{page}");
    assert!(page.contains("<th>Reservations</th><td>1</td>"), "{page}");
    assert!(page.contains("<th>Leaves</th><td>1</td>"), "{page}");
    assert!(page.contains("Uptime"), "{page}");

    // (e) The other peer closes its relayed connection soon after opening it, as a leaf does
    // once DCUtR gives it a direct one: the relay counts an early clean close.
    assert_eq!(
        metric(&m, "shoal_superpeer_circuits_closed_total"),
        0,
        "{m}"
    );
    assert!(other.disconnect_peer_id(leaf_id).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            ev = leaf.select_next_some() => echo(&mut leaf, ev),
            _ = other.select_next_some() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let m = get(&format!("{}/metrics", sp.http)).await;
                if metric(&m, "shoal_superpeer_circuits_closed_total") >= 1 {
                    assert_eq!(metric(&m, "shoal_superpeer_circuits_closed_early_total"), 1, "{m}");
                    assert_eq!(metric(&m, "shoal_superpeer_circuits_closed_late_total"), 0, "{m}");
                    assert_eq!(metric(&m, "shoal_superpeer_circuits_open"), 0, "{m}");
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "circuit close not seen:\n{m}");
            }
        }
    }
}

/// Waits for `other`'s next lookup answer, keeping `leaf` polled (it holds the relay end).
async fn until_lookup(other: &mut Swarm<Client>, leaf: &mut Swarm<Client>) -> LookupResponse {
    let run = async {
        loop {
            tokio::select! {
                ev = leaf.select_next_some() => echo(leaf, ev),
                ev = other.select_next_some() => match ev {
                    SwarmEvent::Behaviour(ClientEvent::Shoal(ShoalEvent::Lookup(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. }, ..
                    }))) => break response,
                    SwarmEvent::Behaviour(ClientEvent::Shoal(ShoalEvent::Lookup(request_response::Event::OutboundFailure { error, .. }))) => {
                        panic!("lookup failed: {error}")
                    }
                    _ => {}
                },
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("lookup timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_and_exits() {
    let mut sp = start_server(&[]);
    let mut leaf = client();
    leaf.listen_on(sp.p2p[0].clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(&mut leaf, |_, ev| {
        matches!(
            ev,
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &sp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let peer = sp.peer;
    until(&mut leaf, |_, ev| match ev {
        SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == peer => Some(()),
        _ => None,
    })
    .await;
    for _ in 0..100 {
        if let Some(s) = sp.child.try_wait().unwrap() {
            assert!(s.success(), "{s:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the super-peer did not exit within 10 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("superpeer.toml");
    std::fs::write(
        &config,
        "[relay]\nrelay_bandwidth_mbit = 10\n[index]\nmax_leaves = 100\n",
    )
    .unwrap();
    let sp = start_server(&["--config", config.to_str().unwrap()]);
    let metrics = format!("{}/metrics", sp.http);
    let m = get(&metrics).await;
    let cap = "shoal_superpeer_relay_bandwidth_limit_bytes_per_second";
    assert_eq!(metric(&m, cap), 1_250_000, "{m}");
    assert_eq!(metric(&m, "shoal_superpeer_index_max_leaves"), 100, "{m}");

    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // New limits, and a listen address (needs a restart: not applied, the node keeps running).
    std::fs::write(
        &config,
        "listen = [\"/ip4/127.0.0.1/udp/1/quic-v1\"]\n[relay]\nrelay_bandwidth_mbit = 20\n[index]\nmax_leaves = 7\n",
    )
    .unwrap();
    hup(sp.child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = get(&metrics).await;
        if metric(&m, cap) == 2_500_000 && metric(&m, "shoal_superpeer_index_max_leaves") == 7 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not apply the new limits:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = get(&format!("{}/", sp.http)).await;
    assert!(page.contains("<th>Leaf limit</th><td>7</td>"), "{page}");
    assert!(
        page.contains("<th>Relay bandwidth cap</th><td>20 Mbit/s</td>"),
        "{page}"
    );

    // A broken file is refused and the running configuration kept.
    std::fs::write(&config, "[relay]\nrelay_bandwidth_mbit = \"fast\"\n").unwrap();
    hup(sp.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = get(&metrics).await;
    assert_eq!(metric(&m, cap), 2_500_000, "{m}");
    assert_eq!(get(&format!("{}/healthz", sp.http)).await.trim(), "ok");

    // The limit is enforced: a leaf beyond max_leaves is refused by the index.
    std::fs::write(&config, "[index]\nmax_leaves = 1\n").unwrap();
    hup(sp.child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&get(&metrics).await, "shoal_superpeer_index_max_leaves") != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "max_leaves = 1 not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    let mut leaves = Vec::new();
    for _ in 0..2 {
        let mut leaf = client();
        leaf.dial(sp.p2p[0].clone()).unwrap();
        leaf.behaviour_mut().shoal.announce.send_request(
            &sp.peer,
            Announce {
                replace: true,
                tracks: vec![TrackId::of(b"t")],
                removed: vec![],
                addrs: vec![],
                via: None,
                region: None,
            },
        );
        answers.push(
            until(&mut leaf, |_, ev| match ev {
                SwarmEvent::Behaviour(ClientEvent::Shoal(ShoalEvent::Announce(
                    request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    },
                ))) => Some(response.clone()),
                _ => None,
            })
            .await,
        );
        // Keep the first leaf connected (a disconnect drops its entry).
        leaves.push(leaf);
    }
    assert!(
        matches!(answers[0], AnnounceResponse::Accepted { .. }),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[1], AnnounceResponse::Rejected { reason } if reason.contains("1 leaves")),
        "{answers:?}"
    );
}

#[test]
fn unknown_config_key_is_named_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sp.toml");
    std::fs::write(&cfg, "http = \"127.0.0.1:0\"\n[relay]\nmax_circuitz = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_circuitz"), "{err}");
    std::fs::write(&cfg, "[relay]\nmax_circuits = 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("relay.max_circuits"));
}

#[test]
fn help_works() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--http",
        "--tracker",
        "--data",
        "--external-addr",
        "--max-circuit-bytes",
        "--relay-bandwidth-mbit",
    ] {
        assert!(text.contains(flag), "{flag} missing from\n{text}");
    }
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_slows_relayed_bytes() {
    // 8 Mbit/s = 1 MB/s; the exchange reads 2 x 300 KiB at the super-peer.
    let sp = start_server(&["--relay-bandwidth-mbit", "8"]);
    let sp_addr = sp.p2p[0].clone();
    let mut leaf = client();
    let leaf_id = *leaf.local_peer_id();
    leaf.listen_on(sp_addr.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(&mut leaf, |_, ev| {
        matches!(
            ev,
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;
    let mut other = client();
    other
        .dial(
            sp_addr
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(leaf_id)),
        )
        .unwrap();
    let blob = vec![7u8; BULK];
    let started = std::time::Instant::now();
    let run = async {
        loop {
            tokio::select! {
                ev = leaf.select_next_some() => echo(&mut leaf, ev),
                ev = other.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == leaf_id => {
                        other.behaviour_mut().bulk.send_request(&leaf_id, blob.clone());
                    }
                    SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. }, ..
                    })) => break response,
                    SwarmEvent::Behaviour(ClientEvent::Bulk(request_response::Event::OutboundFailure { error, .. })) => {
                        panic!("bulk request through the relay failed: {error}")
                    }
                    _ => {}
                },
            }
        }
    };
    let echoed = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("relayed exchange timed out");
    let took = started.elapsed();
    assert_eq!(echoed, blob);
    // 600 KiB at 1 MB/s after a 64 KiB burst: at least ~0.5 s.
    assert!(took >= Duration::from_millis(450), "took {took:?}");
    let m = get(&format!("{}/metrics", sp.http)).await;
    assert!(
        metric(&m, "shoal_superpeer_throttled_reads_total") > 0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "shoal_superpeer_relay_bandwidth_limit_bytes_per_second"),
        1_000_000
    );
}
