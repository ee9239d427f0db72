//! The tracker's libp2p side as peers use it, on loopback over QUIC and over TCP: announce then
//! lookup (ranked, with contacts, never the asker), catalog search, the announce flood cap, the
//! lookup rate limit, identities taken from the connection (no announcing for another peer),
//! an oversized length prefix on a raw stream, and the identity key kept across restarts.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, tcp, yamux};
use shoal_protocol::TrackId;
use shoal_protocol::wire::{
    ANNOUNCE_PROTOCOL, Announce, AnnounceResponse, LookupRequest, LookupResponse, PeerContact,
    WireMessage,
};
use shoal_tracker::core::RegistryConfig;
use shoal_tracker::net::catalog::Catalog;
use shoal_tracker::net::p2p::client::{ClientConfig, ClientError, TrackerClient};
use shoal_tracker::net::p2p::{self, P2pConfig, P2pHandle, P2pLimits};
use shoal_tracker::store::TrackMeta;
use tempfile::TempDir;

/// Every test ends within this, pass or fail.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test did not finish in time");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Quic,
    Tcp,
}

const BOTH: [Transport; 2] = [Transport::Quic, Transport::Tcp];

impl Transport {
    fn loopback(self) -> Multiaddr {
        match self {
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        }
    }

    fn matches(self, addr: &Multiaddr) -> bool {
        let s = addr.to_string();
        match self {
            Transport::Quic => s.contains("/quic-v1"),
            Transport::Tcp => s.contains("/tcp/"),
        }
    }
}

struct Tracker {
    handle: P2pHandle,
    catalog: Catalog,
    dir: TempDir,
}

impl Tracker {
    async fn start(registry: RegistryConfig, limits: P2pLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&Catalog::default_url(dir.path()))
            .await
            .unwrap();
        let handle = start_in(dir.path(), registry, limits, catalog.clone()).await;
        Self {
            handle,
            catalog,
            dir,
        }
    }

    async fn default() -> Self {
        Self::start(RegistryConfig::default(), P2pLimits::default()).await
    }

    fn addr(&self, t: Transport) -> Multiaddr {
        let addr = self
            .handle
            .dial_addrs()
            .into_iter()
            .find(|a| t.matches(a))
            .unwrap();
        assert!(addr.to_string().starts_with("/ip4/127.0.0.1/"), "{addr}");
        addr
    }

    /// A client with a fresh identity, listening on loopback over `t`.
    async fn client(&self, t: Transport) -> TrackerClient {
        self.client_with(t, Keypair::generate_ed25519()).await
    }

    async fn client_with(&self, t: Transport, keypair: Keypair) -> TrackerClient {
        let mut config = ClientConfig::new(keypair);
        config.listen = vec![t.loopback()];
        config.timeout = Duration::from_secs(10);
        TrackerClient::connect(self.addr(t), config).await.unwrap()
    }
}

async fn start_in(
    dir: &std::path::Path,
    registry: RegistryConfig,
    limits: P2pLimits,
    catalog: Catalog,
) -> P2pHandle {
    let mut config = P2pConfig::new(dir);
    config.listen = BOTH.iter().map(|t| t.loopback()).collect();
    config.registry = registry;
    config.limits = limits;
    p2p::start(config, catalog).await.unwrap()
}

fn track(name: &str) -> TrackId {
    TrackId::of(name.as_bytes())
}

fn holding(tracks: &[TrackId], region: &str) -> Announce {
    Announce {
        replace: true,
        tracks: tracks.to_vec(),
        removed: Vec::new(),
        addrs: Vec::new(),
        via: None,
        region: Some(region.into()),
    }
}

fn accepted(r: &AnnounceResponse) -> bool {
    matches!(r, AnnounceResponse::Accepted { ttl_secs } if *ttl_secs > 0)
}

async fn holders(c: &TrackerClient, t: TrackId) -> Vec<shoal_protocol::wire::Holder> {
    match c
        .lookup(LookupRequest::Holders {
            track: t,
            limit: 20,
        })
        .await
        .unwrap()
    {
        LookupResponse::Holders { track, holders } => {
            assert_eq!(track, t);
            holders
        }
        other => panic!("expected holders, got {other:?}"),
    }
}

fn ids(holders: &[shoal_protocol::wire::Holder]) -> Vec<PeerId> {
    holders
        .iter()
        .map(|h| PeerId::from_bytes(&h.peer.peer_id).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announce_then_lookup_finds_holders_nearest_first_never_the_asker() {
    bounded(async {
        for t in BOTH {
            let tracker = Tracker::default().await;
            let song = track("song");
            let far = tracker.client(t).await;
            let near = tracker.client(t).await;
            let asker = tracker.client(t).await;
            // `far` announces first, so recency alone would rank it after `near` anyway;
            // announce `near` first to show the region wins over recency.
            assert!(accepted(
                &near
                    .announce(holding(&[song, track("other")], "SE"))
                    .await
                    .unwrap()
            ));
            assert!(accepted(
                &far.announce(holding(&[song], "DE")).await.unwrap()
            ));
            assert!(accepted(
                &asker.announce(holding(&[song], "SE")).await.unwrap()
            ));

            let found = holders(&asker, song).await;
            assert_eq!(ids(&found), vec![near.peer_id(), far.peer_id()], "{t:?}");
            // The contact: the authenticated PeerId, and where the tracker saw the peer.
            let contact = &found[0].peer;
            assert!(
                !contact.addrs.is_empty(),
                "{t:?}: no address in {contact:?}"
            );
            for a in &contact.addrs {
                let addr: Multiaddr = a.parse().unwrap();
                assert!(
                    a.starts_with("/ip4/127.0.0.1/") && t.matches(&addr),
                    "{t:?}: {a}"
                );
            }
            // The listen address identify reported is among them (it may arrive after the
            // announce; a renewal picks it up).
            assert!(accepted(
                &near
                    .announce(holding(&[song, track("other")], "SE"))
                    .await
                    .unwrap()
            ));
            let found = holders(&asker, song).await;
            let listen = near.listen_addrs()[0].to_string();
            assert!(
                found[0].peer.addrs.contains(&listen),
                "{t:?}: {listen} not in {:?}",
                found[0].peer.addrs
            );
            assert_eq!(found[0].region.as_deref(), Some("SE"));

            // Announced addresses win over observed ones.
            let mut explicit = holding(&[track("x")], "SE");
            explicit.addrs = vec!["/ip4/127.0.0.1/udp/9/quic-v1".into()];
            assert!(accepted(&far.announce(explicit).await.unwrap()));
            let found = holders(&asker, track("x")).await;
            assert_eq!(found[0].peer.addrs, vec!["/ip4/127.0.0.1/udp/9/quic-v1"]);
            assert_eq!(found[0].peer.peer_id, far.peer_id().to_bytes());

            // Never the asker, even when it is the only holder.
            assert!(holders(&near, track("other")).await.is_empty());
            assert_eq!(
                ids(&holders(&asker, track("other")).await),
                vec![near.peer_id()]
            );
            assert!(holders(&asker, track("unknown")).await.is_empty());
            assert_eq!(tracker.handle.stats().peers, 3);
            tracker.handle.stop().await.unwrap();
        }
    })
    .await;
}

fn meta(title: &str, artist: &str) -> TrackMeta {
    TrackMeta {
        id: track(title),
        title: title.into(),
        artist: Some(artist.into()),
        album: None,
        duration_ms: 180_000,
        bitrate: 128_000,
        channels: 2,
        bytes: 2_000_000,
        source: format!("/music/{title}.ogg"),
        added_at: 1_700_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_answers_from_the_catalog() {
    bounded(async {
        let tracker = Tracker::default().await;
        for (title, artist) in [
            ("Aberrations", "Singularity"),
            ("Cosmic Drift", "Nebula"),
            ("Aberrant Waves", "Nebula"),
        ] {
            tracker.catalog.upsert(&meta(title, artist)).await.unwrap();
        }
        for t in BOTH {
            let c = tracker.client(t).await;
            let search = |query: &str, limit| LookupRequest::Search {
                query: query.into(),
                limit,
            };
            match c.lookup(search("aberr", 10)).await.unwrap() {
                LookupResponse::Tracks(hits) => {
                    let mut titles: Vec<_> = hits.iter().map(|h| h.title.as_str()).collect();
                    titles.sort_unstable();
                    assert_eq!(titles, ["Aberrant Waves", "Aberrations"], "{t:?}");
                    let a = hits.iter().find(|h| h.title == "Aberrations").unwrap();
                    assert_eq!(a.id, track("Aberrations"));
                    assert_eq!(a.artist.as_deref(), Some("Singularity"));
                    assert_eq!(a.duration_ms, 180_000);
                }
                other => panic!("{t:?}: {other:?}"),
            }
            match c.lookup(search("nebula", 1)).await.unwrap() {
                LookupResponse::Tracks(hits) => assert_eq!(hits.len(), 1),
                other => panic!("{t:?}: {other:?}"),
            }
            assert_eq!(
                c.lookup(search("nothing-like-this", 10)).await.unwrap(),
                LookupResponse::Tracks(Vec::new())
            );
            assert_eq!(
                c.lookup(search("aberr", 0)).await.unwrap(),
                LookupResponse::Tracks(Vec::new())
            );
            // Query syntax is not passed to the database.
            assert!(matches!(
                c.lookup(search("\"* OR NEAR( ^", 10)).await.unwrap(),
                LookupResponse::Tracks(_)
            ));
        }
        tracker.handle.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announce_flood_is_rejected_after_the_cap() {
    bounded(async {
        let registry = RegistryConfig {
            announce_burst: 3,
            announces_per_minute: 1,
            ..RegistryConfig::default()
        };
        let tracker = Tracker::start(registry, P2pLimits::default()).await;
        for t in BOTH {
            let key = Keypair::generate_ed25519();
            let flooder = tracker.client_with(t, key.clone()).await;
            let mut answers = Vec::new();
            for i in 0..10 {
                let msg = holding(&[track(&format!("{t:?}{i}"))], "SE");
                answers.push(flooder.announce(msg).await.unwrap());
            }
            assert!(answers[..3].iter().all(accepted), "{t:?}: {answers:?}");
            for a in &answers[3..] {
                match a {
                    AnnounceResponse::Rejected { reason } => {
                        assert!(reason.contains("too often"), "{reason}");
                    }
                    other => panic!("{t:?}: flood accepted: {other:?}"),
                }
            }
            // Only what was accepted is listed.
            let other = tracker.client(t).await;
            assert_eq!(
                ids(&holders(&other, track(&format!("{t:?}2"))).await),
                vec![flooder.peer_id()]
            );
            assert!(holders(&other, track(&format!("{t:?}3"))).await.is_empty());
            // Reconnecting does not reset the cap: it belongs to the identity.
            let flooder_id = flooder.peer_id();
            flooder.close().await;
            let again = tracker.client_with(t, key).await;
            assert_eq!(again.peer_id(), flooder_id);
            assert!(matches!(
                again.announce(holding(&[track("t9")], "SE")).await.unwrap(),
                AnnounceResponse::Rejected { .. }
            ));
            // Other peers are unaffected.
            assert!(accepted(
                &other.announce(holding(&[track("o")], "SE")).await.unwrap()
            ));
        }
        tracker.handle.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_rate_limited_per_peer() {
    bounded(async {
        let limits = P2pLimits {
            lookups_per_sec: 0.1,
            lookup_burst: 5,
            ..P2pLimits::default()
        };
        let tracker = Tracker::start(RegistryConfig::default(), limits).await;
        for t in BOTH {
            let greedy = tracker.client(t).await;
            let ask = LookupRequest::Holders {
                track: track("a"),
                limit: 5,
            };
            let mut limited = 0;
            for _ in 0..8 {
                if let LookupResponse::Error { reason } = greedy.lookup(ask.clone()).await.unwrap()
                {
                    assert!(reason.contains("rate limited"), "{reason}");
                    limited += 1;
                }
            }
            assert_eq!(limited, 3, "{t:?}");
            let polite = tracker.client(t).await;
            assert!(matches!(
                polite.lookup(ask).await.unwrap(),
                LookupResponse::Holders { .. }
            ));
        }
        tracker.handle.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_listed_under_its_connection_identity_only() {
    bounded(async {
        for t in BOTH {
            let tracker = Tracker::default().await;
            let alice = tracker.client(t).await;
            let mallory = tracker.client(t).await;
            let observer = tracker.client(t).await;
            let (mine, planted) = (track("alice's"), track("planted"));
            assert!(accepted(
                &alice.announce(holding(&[mine], "SE")).await.unwrap()
            ));

            // Mallory claims Alice's identity everywhere a message could carry one: her
            // addresses, her as the super-peer, and tries to replace and remove her holdings.
            let alice_contact = PeerContact {
                peer_id: alice.peer_id().to_bytes(),
                addrs: alice.listen_addrs().iter().map(|a| a.to_string()).collect(),
            };
            let forged = Announce {
                replace: true,
                tracks: vec![planted],
                removed: vec![mine],
                addrs: alice_contact.addrs.clone(),
                via: Some(alice_contact),
                region: Some("SE".into()),
            };
            assert!(accepted(&mallory.announce(forged).await.unwrap()));

            // Alice's listing is untouched and still carries Alice's PeerId.
            let found = holders(&observer, mine).await;
            assert_eq!(ids(&found), vec![alice.peer_id()], "{t:?}");
            // The planted track appears only under Mallory's own PeerId.
            let found = holders(&observer, planted).await;
            assert_eq!(ids(&found), vec![mallory.peer_id()], "{t:?}");
            assert!(ids(&found).iter().all(|p| *p != alice.peer_id()));
            tracker.handle.stop().await.unwrap();
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A raw client that writes arbitrary bytes on `/shoal/announce/1`.

#[derive(Debug, Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    /// The bytes, and whether to keep the stream open after them, writing more for up to 5 s
    /// (a peer that declared a big frame and delivers it slowly).
    type Request = (Vec<u8>, bool);
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("client only"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        (bytes, trickle): Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&bytes).await?;
        io.flush().await?;
        if trickle {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                io.write_all(&[0xab; 1024]).await?;
                io.flush().await?;
            }
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// Sends `bytes` as one raw request to the tracker at `addr`; the raw answer, or why none.
async fn raw_request(addr: Multiaddr, bytes: Vec<u8>, trickle: bool) -> Result<Vec<u8>, String> {
    let tracker = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("no /p2p in {addr}"),
    };
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(
                    StreamProtocol::new(ANNOUNCE_PROTOCOL),
                    ProtocolSupport::Outbound,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    swarm
        .behaviour_mut()
        .send_request_with_addresses(&tracker, (bytes, trickle), vec![addr]);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Err(error.to_string());
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_prefix_closes_the_stream_at_once() {
    bounded(async {
        let tracker = Tracker::default().await;
        for t in BOTH {
            let addr = tracker.addr(t);
            // The raw path works: a real frame gets a real answer.
            let frame = holding(&[track("raw")], "SE").encode_frame().unwrap();
            let answer = raw_request(addr.clone(), frame, false).await.unwrap();
            let (response, _) = AnnounceResponse::decode_frame(&answer).unwrap();
            assert!(accepted(&response), "{t:?}: {response:?}");

            // A prefix declaring 4 GiB, then payload trickling in for 5 s on an open stream: the
            // tracker refuses on the prefix and drops the stream, so the sender's writes fail
            // long before it is done (a reader waiting for the payload would take it all).
            let mut huge = u32::MAX.to_be_bytes().to_vec();
            huge.extend_from_slice(&[0xab; 1024]);
            let started = Instant::now();
            let outcome = raw_request(addr.clone(), huge, true).await;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{t:?}: took {:?}",
                started.elapsed()
            );
            let err = outcome.unwrap_err();
            eprintln!("{t:?}: the stream failed as expected: {err}");

            // Just over the announce limit: refused the same way.
            let over = u32::try_from(Announce::MAX_BYTES + 1).unwrap();
            let outcome = raw_request(addr.clone(), over.to_be_bytes().to_vec(), false).await;
            assert!(outcome.is_err() || outcome.as_ref().unwrap().is_empty());

            // The tracker is still serving.
            let c = tracker.client(t).await;
            assert!(accepted(
                &c.announce(holding(&[track("ok")], "SE")).await.unwrap()
            ));
        }
        tracker.handle.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_survives_a_restart() {
    bounded(async {
        let tracker = Tracker::default().await;
        let first = tracker.handle.peer_id();
        tracker.handle.stop().await.unwrap();
        let key = tracker.dir.path().join(p2p::KEY_FILE);
        assert!(key.is_file());
        let again = start_in(
            tracker.dir.path(),
            RegistryConfig::default(),
            P2pLimits::default(),
            tracker.catalog.clone(),
        )
        .await;
        assert_eq!(again.peer_id(), first);
        again.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_fail_clearly() {
    bounded(async {
        let tracker = Tracker::default().await;
        // No /p2p/ suffix.
        let bare = tracker.handle.listen_addrs()[0].clone();
        let err = TrackerClient::connect(bare, ClientConfig::new(Keypair::generate_ed25519()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NoPeerId(_)), "{err}");
        // The right address but the wrong identity: the handshake fails.
        let impostor = Keypair::generate_ed25519().public().to_peer_id();
        for t in BOTH {
            let mut addr = tracker.addr(t);
            addr.pop();
            let addr = addr.with(libp2p::multiaddr::Protocol::P2p(impostor));
            let mut config = ClientConfig::new(Keypair::generate_ed25519());
            config.timeout = Duration::from_secs(5);
            let err = TrackerClient::connect(addr, config).await.unwrap_err();
            assert!(matches!(err, ClientError::Connect { .. }), "{t:?}: {err}");
        }
        // Nobody listening: a clear error within the timeout.
        let addrs: Vec<_> = BOTH.iter().map(|t| (*t, tracker.addr(*t))).collect();
        tracker.handle.stop().await.unwrap();
        for (t, addr) in addrs {
            let mut config = ClientConfig::new(Keypair::generate_ed25519());
            config.timeout = Duration::from_secs(3);
            let err = TrackerClient::connect(addr, config).await.unwrap_err();
            assert!(matches!(err, ClientError::Connect { .. }), "{t:?}: {err}");
        }
    })
    .await;
}
