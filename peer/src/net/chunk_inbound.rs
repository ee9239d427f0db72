//! Inbound `/shoal/chunk/2` streams: owns the libp2p behaviour that accepts them and hands
//! every one to the chunk server, none dropped while its queue has room.
//!
//! Why not `libp2p_stream`'s own `accept`: it passes inbound streams on through a channel
//! holding one stream, filled from the connection's task, so of several streams that finish
//! negotiating in one poll of a connection all but one are dropped. A requester opening a
//! dozen streams at once (the start of a play, or a burst of prefetches) saw most of them
//! fail and had to open them again, round after round (a test needed up to 6 rounds for 12
//! streams on a loaded machine). Here the queue holds [`INBOUND_QUEUE`] streams; past that a
//! stream is dropped (bounded, like every queue), which the requester's retry covers.
//! Outbound streams still go through `libp2p_stream::Control`, which waits instead of
//! dropping.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use either::Either;
use futures::future;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;

/// Inbound streams waiting for the chunk server to take them (across all connections).
pub const INBOUND_QUEUE: usize = 1024;

/// A stream a peer opened, with who opened it.
pub type InboundStream = (PeerId, Stream);

type Slot = Arc<Mutex<Option<mpsc::Sender<InboundStream>>>>;

/// Accepts inbound streams of one protocol once [`InboundStreams::accept`] was called, and
/// refuses the protocol before that (and after the receiver is dropped).
pub struct InboundStreams {
    protocol: StreamProtocol,
    sender: Slot,
}

/// [`InboundStreams::accept`] was called already and its receiver is still open.
#[derive(Debug, thiserror::Error)]
#[error("inbound streams of this protocol are taken already")]
pub struct AlreadyAccepting;

impl InboundStreams {
    /// Streams of `protocol`, not yet accepted.
    pub fn new(protocol: StreamProtocol) -> Self {
        Self {
            protocol,
            sender: Arc::default(),
        }
    }

    /// From now on, inbound streams of the protocol arrive on the returned receiver.
    pub fn accept(&self) -> Result<mpsc::Receiver<InboundStream>, AlreadyAccepting> {
        let mut slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|s| !s.is_closed()) {
            return Err(AlreadyAccepting);
        }
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        *slot = Some(tx);
        Ok(rx)
    }

    fn handler(&self, peer: PeerId) -> InboundHandler {
        InboundHandler {
            peer,
            protocol: self.protocol.clone(),
            sender: self.sender.clone(),
        }
    }
}

impl NetworkBehaviour for InboundStreams {
    type ConnectionHandler = InboundHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's side of [`InboundStreams`]: negotiated streams go straight to the queue.
pub struct InboundHandler {
    peer: PeerId,
    protocol: StreamProtocol,
    sender: Slot,
}

impl InboundHandler {
    /// The queue, while someone accepts.
    fn open_sender(&self) -> Option<mpsc::Sender<InboundStream>> {
        let slot = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

impl ConnectionHandler for InboundHandler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Either<ReadyUpgrade<StreamProtocol>, DeniedUpgrade>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        // Asked again for every inbound stream, so accepting (or dropping the receiver)
        // applies to connections that exist already.
        let upgrade = match self.open_sender() {
            Some(_) => Either::Left(ReadyUpgrade::new(self.protocol.clone())),
            None => Either::Right(DeniedUpgrade),
        };
        SubstreamProtocol::new(upgrade, ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol, ..
        }) = event
        {
            let stream = match protocol {
                future::Either::Left(stream) => stream,
                future::Either::Right(never) => match never {},
            };
            let queued = self
                .open_sender()
                .is_some_and(|tx| tx.try_send((self.peer, stream)).is_ok());
            if !queued {
                tracing::debug!(peer = %self.peer, protocol = %self.protocol,
                    "inbound stream dropped: no one accepts, or {INBOUND_QUEUE} are waiting");
            }
        }
    }
}

/// Swarms on loopback for the chunk-stream tests.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::identity::Keypair;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{PeerId, Swarm, SwarmBuilder};

    use crate::net::node::{PeerBehaviour, swarm_config};

    /// A QUIC-only swarm of the peer's behaviour, with a new identity.
    pub(crate) fn swarm() -> Swarm<PeerBehaviour> {
        SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
            .with_tokio()
            .with_quic()
            .with_behaviour(|k| PeerBehaviour::new(k, Duration::from_secs(30)))
            .unwrap()
            .with_swarm_config(swarm_config)
            .build()
    }

    /// A listening swarm (returned, not yet driven) and a client swarm connected to it
    /// (driven by a task), with the server's id, the client's id and the client's control.
    pub(crate) async fn connected() -> (Swarm<PeerBehaviour>, PeerId, PeerId, libp2p_stream::Control)
    {
        let mut server = swarm();
        server
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let server_id = *server.local_peer_id();
        let mut client = swarm();
        let control = client.behaviour().chunk.new_control();
        let client_id = *client.local_peer_id();
        client.add_peer_address(server_id, addr.clone());
        client.dial(addr).unwrap();
        let mut up = (false, false);
        while up != (true, true) {
            tokio::select! {
                e = server.select_next_some() => {
                    up.0 |= matches!(e, SwarmEvent::ConnectionEstablished { .. });
                }
                e = client.select_next_some() => {
                    up.1 |= matches!(e, SwarmEvent::ConnectionEstablished { .. });
                }
            }
        }
        drive(client);
        (server, server_id, client_id, control)
    }

    /// Drives `swarm` in a task until the test ends.
    pub(crate) fn drive(mut swarm: Swarm<PeerBehaviour>) {
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::testing::{connected, drive};
    use super::*;

    const PROTOCOL: &str = "/shoal/chunk/2";

    /// Opens a stream, sends a byte and reads the answer (that byte plus one); `Err` when the
    /// server refuses the protocol (multistream-select `V1Lazy` reports it on the first read).
    async fn ask(
        mut control: libp2p_stream::Control,
        peer: PeerId,
        byte: u8,
    ) -> Result<u8, String> {
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(PROTOCOL))
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&[byte]).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
            .await
            .expect("neither answered nor refused")
            .map_err(|e| e.to_string())?;
        Ok(answer[0])
    }

    /// Answers every stream of `incoming` (one byte in, that byte plus one out), checking who
    /// opened it; counts the streams.
    fn answer_all(
        mut incoming: mpsc::Receiver<InboundStream>,
        from: PeerId,
        count: Arc<AtomicUsize>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((peer, mut stream)) = incoming.recv().await {
                assert_eq!(peer, from);
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_ok() {
                        let _ = stream.write_all(&[byte[0].wrapping_add(1)]).await;
                        let _ = stream.flush().await;
                        let _ = stream.read(&mut byte).await;
                    }
                });
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_opened_together_all_arrive() {
        let (server, server_id, client_id, control) = connected().await;
        let incoming = server.behaviour().chunk_inbound.accept().unwrap();
        assert!(
            server.behaviour().chunk_inbound.accept().is_err(),
            "accepted twice"
        );
        drive(server);
        let count = Arc::new(AtomicUsize::new(0));
        let _answering = answer_all(incoming, client_id, count.clone());
        // 64 at once: libp2p_stream's own accept let about one of them through per poll of
        // the connection and dropped the rest.
        let asked: Vec<_> = (0..64u8)
            .map(|i| tokio::spawn(ask(control.clone(), server_id, i)))
            .collect();
        for (i, task) in (0..64u8).zip(asked) {
            assert_eq!(task.await.unwrap(), Ok(i + 1));
        }
        assert_eq!(count.load(Ordering::SeqCst), 64);
    }

    #[tokio::test]
    async fn the_protocol_is_refused_until_accepted_and_after_the_receiver_is_dropped() {
        let (server, server_id, client_id, control) = connected().await;
        // A second handle on the server's queue slot, to accept and drop while the swarm runs.
        let inbound = InboundStreams {
            protocol: StreamProtocol::new(PROTOCOL),
            sender: server.behaviour().chunk_inbound.sender.clone(),
        };
        drive(server);
        let count = Arc::new(AtomicUsize::new(0));
        assert!(
            ask(control.clone(), server_id, 1).await.is_err(),
            "served before accept"
        );
        let answering = answer_all(inbound.accept().unwrap(), client_id, count.clone());
        assert_eq!(ask(control.clone(), server_id, 1).await, Ok(2));
        // Dropping the receiver (with the task that holds it) stops serving the protocol.
        answering.abort();
        let _ = answering.await;
        assert!(
            ask(control.clone(), server_id, 1).await.is_err(),
            "served after the drop"
        );
        let _answering = answer_all(inbound.accept().unwrap(), client_id, count.clone());
        assert_eq!(ask(control, server_id, 7).await, Ok(8));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
