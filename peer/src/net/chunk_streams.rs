//! `/shoal/chunk/2` on long-lived libp2p streams: owns the streams that carry chunk requests
//! and answers, both ways.
//!
//! A stream carries one request and its answer at a time, then the next request: the frames
//! are those of every Shoal protocol (`shoal_tracker::net::p2p::{read_frame, write_frame}`).
//! Idle streams are kept per peer and reused, so a chunk costs no stream set-up, no protocol
//! negotiation and no per-request libp2p handler or timers: that per-request machinery cost a
//! serving peer about half its CPU with one request-response stream per chunk
//! (BENCHMARKS.md, "Chunk serving throughput of one peer"). Requests to one peer still run
//! side by side, each on its own stream, so an urgent chunk never waits behind a prefetch.
//!
//! Decisions stay in the cores: this module only moves frames and reports what happened
//! ([`ChunkStreamEvent`]), like the origin's HTTP tasks. Whoever answers an inbound request
//! drops its [`ChunkReply`] to refuse it (a cancelled request); the requester then gets
//! `Busy { retry_after_ms: 0 }` (`Cancelled` for a `Cancel`), which its scheduler ignores for a
//! request it no longer wants and acts on at once otherwise, and the stream stays usable.
//! Requesters stop reusing an idle stream well before its server closes it (`idle_timeout` <
//! `serve_idle_timeout`).
//!
//! So a stream that fails did so in transport, and the request is sent again on a new stream
//! (up to [`FRESH_ATTEMPTS`] times, after a short random wait): chunk requests are reads, so
//! asking twice is harmless. Inbound streams are taken by [`InboundStreams`] (a queue of
//! [`super::chunk_inbound::INBOUND_QUEUE`]), not by `libp2p_stream`'s `accept`, which drops
//! all but one of the streams that arrive together. A malformed answer is not retried.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use shoal_protocol::wire::{CHUNK_PROTOCOL, ChunkRequest, ChunkResponse};
use shoal_tracker::net::p2p::{read_frame, write_frame};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::chunk_inbound::{AlreadyAccepting, InboundStreams};

/// Limits of the stream pool.
#[derive(Debug, Clone, Copy)]
pub struct ChunkStreamConfig {
    /// Longest wait for the answer to one request (stream opening included); the scheduler's
    /// own, shorter, deadlines decide retries.
    pub request_timeout: Duration,
    /// An idle outbound stream older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// An inbound stream with no new request for this long is closed. Longer than
    /// `idle_timeout`, so a requester stops reusing a stream before its server closes it.
    pub serve_idle_timeout: Duration,
    /// Idle outbound streams kept per peer (more are closed).
    pub max_idle_per_peer: usize,
}

impl Default for ChunkStreamConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
            serve_idle_timeout: Duration::from_secs(40),
            max_idle_per_peer: 16,
        }
    }
}

/// Names one of our outbound requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutboundId(u64);

/// Names one inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundId(u64);

/// Why an outbound request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStreamError {
    /// No stream could be opened (not connected and the dial failed, or the peer does not
    /// speak the protocol).
    #[error("cannot open a {CHUNK_PROTOCOL} stream: {0}")]
    Open(String),
    /// The stream failed or carried a malformed answer.
    #[error("{CHUNK_PROTOCOL} stream failed: {0}")]
    Io(#[from] io::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What happened on the chunk streams.
#[derive(Debug)]
pub enum ChunkStreamEvent {
    /// A peer asks: answer through `reply`, or drop it to refuse (the requester is told
    /// `Busy`, retry at once).
    Request {
        /// Who asks.
        peer: PeerId,
        /// This request (named again in [`ChunkStreamEvent::Answered`]).
        id: InboundId,
        /// The request.
        request: ChunkRequest,
        /// Where the answer goes.
        reply: ChunkReply,
    },
    /// An inbound request is over: its answer was written (`sent`), or it was refused
    /// (answered `Busy`) or the stream failed.
    Answered {
        /// Who asked.
        peer: PeerId,
        /// Which request.
        id: InboundId,
        /// Whether the answer went out whole.
        sent: bool,
    },
    /// The answer to one of our requests.
    Response {
        /// Who answered.
        peer: PeerId,
        /// Our request.
        id: OutboundId,
        /// The answer.
        response: ChunkResponse,
    },
    /// One of our requests got no answer.
    Failure {
        /// Whom we asked.
        peer: PeerId,
        /// Our request.
        id: OutboundId,
        /// Why.
        error: ChunkStreamError,
    },
}

/// The answer slot of one inbound request.
#[derive(Debug)]
pub struct ChunkReply(oneshot::Sender<ChunkResponse>);

impl ChunkReply {
    /// Sends `response` on the request's stream. `Err` gives it back if the stream is gone.
    pub fn send(self, response: ChunkResponse) -> Result<(), ChunkResponse> {
        self.0.send(response)
    }
}

type Pool = HashMap<PeerId, Vec<(Stream, Instant)>>;

/// New streams one request may try, after a pooled one failed or when none was idle. Before
/// each retry it waits a random 0–2^k ms (k = retries so far), so requests whose streams failed
/// together (a connection lost, a server's full inbound queue) are not sent together again.
pub const FRESH_ATTEMPTS: u32 = 6;

/// Chunk requests both ways over pooled `/shoal/chunk/2` streams. Dropping it stops
/// accepting inbound streams; requests in flight end with their streams.
pub struct ChunkStreams {
    control: Control,
    config: ChunkStreamConfig,
    pool: Arc<Mutex<Pool>>,
    events: mpsc::UnboundedSender<ChunkStreamEvent>,
    next_outbound: u64,
    next_inbound: Arc<AtomicU64>,
    accept: Option<AbortHandle>,
    last_sweep: Instant,
}

impl ChunkStreams {
    /// Requests go out through `control` (from the swarm's `libp2p_stream::Behaviour`); events
    /// arrive on the returned receiver. Call [`ChunkStreams::serve`] to answer requests too.
    pub fn new(
        control: Control,
        config: ChunkStreamConfig,
    ) -> (Self, mpsc::UnboundedReceiver<ChunkStreamEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let streams = Self {
            control,
            config,
            pool: Arc::default(),
            events,
            next_outbound: 0,
            next_inbound: Arc::default(),
            accept: None,
            last_sweep: Instant::now(),
        };
        (streams, rx)
    }

    /// The protocol's id.
    pub fn protocol() -> StreamProtocol {
        StreamProtocol::new(CHUNK_PROTOCOL)
    }

    /// Answers the streams of `inbound` (the swarm's [`InboundStreams`] for
    /// [`ChunkStreams::protocol`]): each request arrives as [`ChunkStreamEvent::Request`].
    /// Needs a tokio runtime.
    pub fn serve(&mut self, inbound: &InboundStreams) -> Result<(), AlreadyAccepting> {
        let mut incoming = inbound.accept()?;
        let (events, ids, idle) = (
            self.events.clone(),
            self.next_inbound.clone(),
            self.config.serve_idle_timeout,
        );
        let task = tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.recv().await {
                tokio::spawn(serve_stream(
                    peer,
                    stream,
                    events.clone(),
                    ids.clone(),
                    idle,
                ));
            }
        });
        self.accept = Some(task.abort_handle());
        Ok(())
    }

    /// Sends `request` to `peer` (dialling it if need be, from the addresses the swarm knows)
    /// on an idle stream, or a new one. The answer comes as [`ChunkStreamEvent::Response`] or
    /// [`ChunkStreamEvent::Failure`].
    pub fn send_request(&mut self, peer: PeerId, request: ChunkRequest) -> OutboundId {
        self.next_outbound += 1;
        let id = OutboundId(self.next_outbound);
        self.sweep();
        let (control, pool, events, config) = (
            self.control.clone(),
            self.pool.clone(),
            self.events.clone(),
            self.config,
        );
        tokio::spawn(async move {
            let answer = tokio::time::timeout(
                config.request_timeout,
                exchange(control, &pool, &config, peer, &request),
            )
            .await
            .unwrap_or(Err(ChunkStreamError::Timeout(config.request_timeout)));
            let _ = events.send(match answer {
                Ok(response) => ChunkStreamEvent::Response { peer, id, response },
                Err(error) => ChunkStreamEvent::Failure { peer, id, error },
            });
        });
        id
    }

    /// Idle outbound streams now pooled for `peer`.
    pub fn idle_streams(&self, peer: &PeerId) -> usize {
        lock(&self.pool).get(peer).map_or(0, Vec::len)
    }

    /// Closes the idle streams of `peer` (its connection is gone, or being replaced).
    pub fn forget(&mut self, peer: &PeerId) {
        lock(&self.pool).remove(peer);
    }

    /// Closes idle streams past `idle_timeout` (so they stop keeping connections open); at
    /// most twice per `idle_timeout`, from [`ChunkStreams::send_request`].
    fn sweep(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < self.config.idle_timeout / 2 {
            return;
        }
        self.last_sweep = now;
        let idle = self.config.idle_timeout;
        lock(&self.pool).retain(|_, streams| {
            streams.retain(|(_, since)| now.duration_since(*since) < idle);
            !streams.is_empty()
        });
    }
}

impl Drop for ChunkStreams {
    fn drop(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
        }
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // A panic elsewhere while holding the lock leaves a map that is still whole.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request and its answer: on a pooled stream if one is fresh enough, else on a new
/// stream. The stream goes back to the pool afterwards.
async fn exchange(
    mut control: Control,
    pool: &Mutex<Pool>,
    config: &ChunkStreamConfig,
    peer: PeerId,
    request: &ChunkRequest,
) -> Result<ChunkResponse, ChunkStreamError> {
    let pooled = {
        let mut pool = lock(pool);
        let now = Instant::now();
        let streams = pool.get_mut(&peer);
        let mut found = None;
        if let Some(streams) = streams {
            while let Some((stream, since)) = streams.pop() {
                if now.duration_since(since) < config.idle_timeout {
                    found = Some(stream);
                    break;
                }
            }
        }
        found
    };
    let mut failure = None;
    if let Some(mut stream) = pooled {
        match round_trip(&mut stream, request).await {
            Ok(response) => {
                give_back(pool, config, peer, stream);
                return Ok(response);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e.into()),
            Err(e) => failure = Some(e),
        }
    }
    for attempt in 0..FRESH_ATTEMPTS {
        if failure.is_some() {
            tokio::time::sleep(jitter(1 << attempt.min(10))).await;
        }
        let mut stream = control
            .open_stream(peer, ChunkStreams::protocol())
            .await
            .map_err(|e| match e {
                OpenStreamError::UnsupportedProtocol(p) => {
                    ChunkStreamError::Open(format!("the peer does not speak {p}"))
                }
                e => ChunkStreamError::Open(e.to_string()),
            })?;
        match round_trip(&mut stream, request).await {
            Ok(response) => {
                give_back(pool, config, peer, stream);
                return Ok(response);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e.into()),
            Err(e) => {
                tracing::debug!(%peer, "chunk stream failed ({e}); trying a new one");
                failure = Some(e);
            }
        }
    }
    Err(failure
        .unwrap_or_else(|| io::Error::other("no stream tried"))
        .into())
}

/// A random wait below `max_ms` milliseconds.
fn jitter(max_ms: u64) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    Duration::from_micros(r % (max_ms * 1000).max(1))
}

async fn round_trip(stream: &mut Stream, request: &ChunkRequest) -> io::Result<ChunkResponse> {
    write_frame(stream, request).await?;
    stream.flush().await?;
    read_frame::<ChunkResponse, _>(stream).await
}

fn give_back(pool: &Mutex<Pool>, config: &ChunkStreamConfig, peer: PeerId, stream: Stream) {
    let mut pool = lock(pool);
    let streams = pool.entry(peer).or_default();
    if streams.len() < config.max_idle_per_peer {
        streams.push((stream, Instant::now()));
    }
}

/// Answers the requests of one inbound stream, one after another, until the requester closes
/// it, it fails, a request is refused, or it idles for `idle`.
async fn serve_stream(
    peer: PeerId,
    mut stream: Stream,
    events: mpsc::UnboundedSender<ChunkStreamEvent>,
    ids: Arc<AtomicU64>,
    idle: Duration,
) {
    loop {
        let request =
            match tokio::time::timeout(idle, read_frame::<ChunkRequest, _>(&mut stream)).await {
                Ok(Ok(request)) => request,
                Ok(Err(e)) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, "chunk stream closed: {e}");
                    }
                    return;
                }
                Err(_) => return,
            };
        let id = InboundId(ids.fetch_add(1, Ordering::Relaxed));
        let refused = match request {
            ChunkRequest::Cancel { request } => ChunkResponse::Cancelled { request },
            ref other => ChunkResponse::Busy {
                request: other.request(),
                retry_after_ms: 0,
            },
        };
        let (tx, rx) = oneshot::channel();
        let asked = ChunkStreamEvent::Request {
            peer,
            id,
            request,
            reply: ChunkReply(tx),
        };
        if events.send(asked).is_err() {
            return;
        }
        let (response, owned) = match rx.await {
            Ok(response) => (response, true),
            Err(_) => (refused, false),
        };
        let written =
            write_frame(&mut stream, &response).await.is_ok() && stream.flush().await.is_ok();
        let sent = written && owned;
        let _ = events.send(ChunkStreamEvent::Answered { peer, id, sent });
        if !written {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use futures::AsyncReadExt;
    use shoal_protocol::TrackId;

    use super::*;
    use crate::net::chunk_inbound::testing::{connected, drive};

    /// A serving node and a requesting node on loopback, both swarms driven by tasks; the
    /// requester is connected to the server.
    struct Pair {
        _server: ChunkStreams,
        server_events: mpsc::UnboundedReceiver<ChunkStreamEvent>,
        server_id: PeerId,
        client: ChunkStreams,
        client_events: mpsc::UnboundedReceiver<ChunkStreamEvent>,
        client_control: Control,
    }

    async fn pair(server_config: ChunkStreamConfig, client_config: ChunkStreamConfig) -> Pair {
        let (s, server_id, _, client_control) = connected().await;
        let (mut server, server_events) =
            ChunkStreams::new(s.behaviour().chunk.new_control(), server_config);
        server.serve(&s.behaviour().chunk_inbound).unwrap();
        drive(s);
        let (client, client_events) = ChunkStreams::new(client_control.clone(), client_config);
        Pair {
            _server: server,
            server_events,
            server_id,
            client,
            client_events,
            client_control,
        }
    }

    fn query(request: u64) -> ChunkRequest {
        ChunkRequest::QueryHave {
            request,
            track: TrackId::from_bytes([7; 32]),
        }
    }

    /// Answers `n` requests with `Have`, echoing the request number.
    async fn answer(events: &mut mpsc::UnboundedReceiver<ChunkStreamEvent>, n: usize) {
        let mut answered = 0;
        while answered < n {
            if let ChunkStreamEvent::Request { request, reply, .. } = events.recv().await.unwrap() {
                let ChunkRequest::QueryHave { request, .. } = request else {
                    panic!("unexpected {request:?}")
                };
                reply
                    .send(ChunkResponse::Have {
                        request,
                        bitmap: vec![1],
                    })
                    .unwrap();
                answered += 1;
            }
        }
    }

    async fn outcome(
        events: &mut mpsc::UnboundedReceiver<ChunkStreamEvent>,
        id: OutboundId,
    ) -> Result<ChunkResponse, ChunkStreamError> {
        loop {
            match events.recv().await.unwrap() {
                ChunkStreamEvent::Response {
                    id: got, response, ..
                } if got == id => return Ok(response),
                ChunkStreamEvent::Failure { id: got, error, .. } if got == id => {
                    return Err(error);
                }
                _ => {}
            }
        }
    }

    /// The answers to `ids`, which arrive in any order; panics on a failure.
    async fn answers(
        events: &mut mpsc::UnboundedReceiver<ChunkStreamEvent>,
        ids: &[OutboundId],
    ) -> HashMap<OutboundId, ChunkResponse> {
        let mut answers = HashMap::new();
        while answers.len() < ids.len() {
            match events.recv().await.unwrap() {
                ChunkStreamEvent::Response { id, response, .. } if ids.contains(&id) => {
                    answers.insert(id, response);
                }
                ChunkStreamEvent::Failure { error, .. } => panic!("a request failed: {error}"),
                _ => {}
            }
        }
        answers
    }

    fn have(request: u64) -> ChunkResponse {
        ChunkResponse::Have {
            request,
            bitmap: vec![1],
        }
    }

    #[tokio::test]
    async fn one_stream_carries_request_after_request_and_parallel_ones_get_their_own() {
        let mut p = pair(ChunkStreamConfig::default(), ChunkStreamConfig::default()).await;
        for i in 0..5 {
            let id = p.client.send_request(p.server_id, query(i));
            answer(&mut p.server_events, 1).await;
            assert_eq!(outcome(&mut p.client_events, id).await.unwrap(), have(i));
            // The same stream, back in the pool after every answer.
            assert_eq!(p.client.idle_streams(&p.server_id), 1);
        }
        // Three in flight at once: the pooled stream and two new ones (opened one after
        // another: see the module's note on bursts of new streams).
        let mut held = Vec::new();
        let mut ids = Vec::new();
        for i in 10..13 {
            ids.push(p.client.send_request(p.server_id, query(i)));
            loop {
                if let ChunkStreamEvent::Request { request, reply, .. } =
                    p.server_events.recv().await.unwrap()
                {
                    held.push((request, reply));
                    break;
                }
            }
        }
        for (request, reply) in held {
            let ChunkRequest::QueryHave { request, .. } = request else {
                panic!("unexpected {request:?}")
            };
            reply.send(have(request)).unwrap();
        }
        let answers = answers(&mut p.client_events, &ids).await;
        for (i, id) in (10..13).zip(ids) {
            assert_eq!(answers[&id], have(i));
        }
        // Three at once took the pooled stream and opened two more; all three are kept.
        assert_eq!(p.client.idle_streams(&p.server_id), 3);
        // The three held answers are reported as written.
        let mut sent = 0;
        while sent < 3 {
            match p.server_events.recv().await.unwrap() {
                ChunkStreamEvent::Answered { sent: true, .. } => sent += 1,
                ChunkStreamEvent::Answered { sent: false, .. } => panic!("an answer was lost"),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_refused_request_is_answered_busy_and_its_stream_stays_usable() {
        let mut p = pair(ChunkStreamConfig::default(), ChunkStreamConfig::default()).await;
        let id = p.client.send_request(p.server_id, query(1));
        answer(&mut p.server_events, 1).await;
        outcome(&mut p.client_events, id).await.unwrap();
        let id = p.client.send_request(p.server_id, query(2));
        loop {
            if let ChunkStreamEvent::Request { reply, .. } = p.server_events.recv().await.unwrap() {
                drop(reply);
                break;
            }
        }
        assert_eq!(
            outcome(&mut p.client_events, id).await.unwrap(),
            ChunkResponse::Busy {
                request: 2,
                retry_after_ms: 0
            }
        );
        loop {
            if let ChunkStreamEvent::Answered { sent, .. } = p.server_events.recv().await.unwrap() {
                assert!(!sent, "a refusal is not a served answer");
                break;
            }
        }
        assert_eq!(p.client.idle_streams(&p.server_id), 1);
        let id = p.client.send_request(p.server_id, query(3));
        answer(&mut p.server_events, 1).await;
        assert_eq!(outcome(&mut p.client_events, id).await.unwrap(), have(3));
    }

    #[tokio::test]
    async fn many_new_streams_at_once_all_get_their_answer() {
        let mut p = pair(ChunkStreamConfig::default(), ChunkStreamConfig::default()).await;
        let ids: Vec<_> = (0..12)
            .map(|i| p.client.send_request(p.server_id, query(i)))
            .collect();
        let server = tokio::spawn(async move {
            loop {
                answer(&mut p.server_events, 1).await;
            }
        });
        let answers = answers(&mut p.client_events, &ids).await;
        for (i, id) in (0..12).zip(ids) {
            assert_eq!(answers[&id], have(i));
        }
        server.abort();
    }

    #[tokio::test]
    async fn an_idle_stream_is_not_reused_past_its_idle_time() {
        let server = ChunkStreamConfig {
            serve_idle_timeout: Duration::from_millis(200),
            ..ChunkStreamConfig::default()
        };
        let client = ChunkStreamConfig {
            idle_timeout: Duration::from_millis(100),
            ..ChunkStreamConfig::default()
        };
        let mut p = pair(server, client).await;
        for i in 0..3 {
            let id = p.client.send_request(p.server_id, query(i));
            // Sent on the stream the server closed meanwhile, were it reused, the request
            // would never arrive.
            tokio::time::timeout(Duration::from_secs(5), answer(&mut p.server_events, 1))
                .await
                .expect("the request never reached the server");
            assert_eq!(outcome(&mut p.client_events, id).await.unwrap(), have(i));
            assert_eq!(p.client.idle_streams(&p.server_id), 1);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout() {
        let client = ChunkStreamConfig {
            request_timeout: Duration::from_millis(300),
            ..ChunkStreamConfig::default()
        };
        let mut p = pair(ChunkStreamConfig::default(), client).await;
        let id = p.client.send_request(p.server_id, query(1));
        // Held, never answered.
        let _held = p.server_events.recv().await.unwrap();
        let err = outcome(&mut p.client_events, id).await.unwrap_err();
        assert!(matches!(err, ChunkStreamError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_close_the_stream_and_reach_no_one() {
        let mut p = pair(ChunkStreamConfig::default(), ChunkStreamConfig::default()).await;
        for bytes in [
            // A length prefix far beyond any request's limit.
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            // A well-sized frame whose payload is not a request.
            vec![0, 0, 0, 3, 0xee, 0xee, 0xee],
        ] {
            let mut s = p
                .client_control
                .open_stream(p.server_id, ChunkStreams::protocol())
                .await
                .unwrap();
            s.write_all(&bytes).await.unwrap();
            s.flush().await.unwrap();
            // The server hangs up without answering.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            assert!(rest.is_empty());
        }
        // The server stays up: a good request still works.
        let id = p.client.send_request(p.server_id, query(9));
        answer(&mut p.server_events, 1).await;
        assert_eq!(outcome(&mut p.client_events, id).await.unwrap(), have(9));
    }
}
