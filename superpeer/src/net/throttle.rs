//! Byte counting and the relay bandwidth cap, at the transport.
//!
//! libp2p's relay copies circuit bytes inside its own handler and reports no byte counts
//! (`relay::Event` only says when circuits open and close), and its `RateLimiter`s count
//! reservation and circuit *requests*, not bytes. So the super-peer wraps every connection's
//! stream muxer (QUIC and TCP+Noise+Yamux alike): each substream counts the bytes it reads and
//! writes, and when a cap is set, reads draw from one shared token bucket. A relayed byte is
//! read once (from the source's stream) and written once (to the destination's), so capping
//! reads caps the relay's total throughput; back-pressure reaches the sender through QUIC or
//! Yamux flow control. Everything else a super-peer carries (announces, lookups, identify,
//! ping) is tiny next to relayed audio, so the counters are a close upper bound of relayed
//! bytes and the cap is the relay's.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::transport::{Boxed, Transport, upgrade::Version};
use libp2p::identity::Keypair;
use libp2p::{PeerId, noise, quic, tcp, yamux};

/// Shared byte counters and the token bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Throttle(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    read: AtomicU64,
    written: AtomicU64,
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    /// Reads delayed by the cap.
    throttled: AtomicU64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: a read takes what it got, later reads wait for the debt.
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// Counters, with a cap of `bytes_per_sec` (`None`: unlimited).
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Self(Arc::new(Inner {
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            rate: AtomicU64::new(bytes_per_sec.unwrap_or(0)),
            throttled: AtomicU64::new(0),
            bucket: Mutex::new(Bucket {
                tokens: 65_536.0,
                last: Instant::now(),
            }),
        }))
    }

    /// Changes the cap (config reload).
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.0
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// The cap in bytes per second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        Some(self.0.rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    /// Bytes read from every connection's substreams.
    pub fn bytes_read(&self) -> u64 {
        self.0.read.load(Ordering::Relaxed)
    }

    /// Bytes written to every connection's substreams.
    pub fn bytes_written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// Reads the cap delayed.
    pub fn throttled_reads(&self) -> u64 {
        self.0.throttled.load(Ordering::Relaxed)
    }

    /// How long a read must wait now (`None`: go ahead).
    fn wait(&self) -> Option<Duration> {
        let rate = self.0.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let rate = rate as f64;
        // A tenth of a second of burst, at least 64 KiB so one frame always passes.
        let burst = (rate / 10.0).max(65_536.0);
        let mut b = self.0.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens > 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - b.tokens) / rate).max(Duration::from_millis(1)))
        }
    }

    fn took(&self, n: usize) {
        let n = n as u64;
        self.0.read.fetch_add(n, Ordering::Relaxed);
        if self.0.rate.load(Ordering::Relaxed) > 0 {
            let mut b = self.0.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            b.tokens -= n as f64;
        }
    }
}

/// QUIC and TCP+Noise+Yamux, every connection wrapped by `throttle`.
pub fn transport(
    key: &Keypair,
    throttle: Throttle,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default());
    let quic = quic::tokio::Transport::new(quic::Config::new(key));
    Ok(quic
        .or_transport(tcp)
        .map(move |either, _| {
            let (peer, muxer) = match either {
                futures::future::Either::Left((p, m)) => (p, StreamMuxerBox::new(m)),
                futures::future::Either::Right((p, m)) => (p, StreamMuxerBox::new(m)),
            };
            (
                peer,
                StreamMuxerBox::new(Counted {
                    inner: muxer,
                    throttle: throttle.clone(),
                }),
            )
        })
        .boxed())
}

/// A muxer whose substreams are [`CountedStream`]s.
struct Counted {
    inner: StreamMuxerBox,
    throttle: Throttle,
}

impl StreamMuxer for Counted {
    type Substream = CountedStream;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountedStream, io::Error>> {
        let s = ready!(Pin::new(&mut self.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(CountedStream::new(s, self.throttle.clone())))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<CountedStream, io::Error>> {
        let s = ready!(Pin::new(&mut self.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(CountedStream::new(s, self.throttle.clone())))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A substream that counts its bytes and waits for the bucket before reading.
struct CountedStream {
    inner: SubstreamBox,
    throttle: Throttle,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CountedStream {
    fn new(inner: SubstreamBox, throttle: Throttle) -> Self {
        Self {
            inner,
            throttle,
            sleep: None,
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            match self.throttle.wait() {
                None => break,
                Some(d) => {
                    self.throttle.0.throttled.fetch_add(1, Ordering::Relaxed);
                    self.sleep = Some(Box::pin(tokio::time::sleep(d)));
                }
            }
        }
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.throttle.took(n);
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.throttle
            .0
            .written
            .fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Throttle::new(None);
        t.took(10_000_000);
        assert_eq!(t.wait(), None);
        assert_eq!(t.bytes_read(), 10_000_000);
    }

    #[test]
    fn capped_waits_for_the_debt() {
        let t = Throttle::new(Some(1_000_000));
        // Starts with a burst; then the debt makes the next read wait.
        assert_eq!(t.wait(), None);
        t.took(500_000);
        let w = t.wait().unwrap_or_default();
        assert!(w >= Duration::from_millis(400), "{w:?}");
        t.set_rate(None);
        assert_eq!(t.wait(), None);
    }
}
