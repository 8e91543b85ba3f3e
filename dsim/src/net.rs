//! quinn over turmoil: a [`quinn::AsyncUdpSocket`] on a simulated UDP socket and a
//! [`quinn::Runtime`] on the host's simulated clock.
//!
//! Invariants:
//! - one datagram per send and per receive (no GSO/GRO segments), so every QUIC datagram is
//!   one turmoil message that the simulated network can delay, reorder or lose on its own;
//! - `now()` is tokio's clock, which turmoil pauses and advances tick by tick, so quinn's
//!   timers (loss detection, idle timeout, keep-alive, pacing) all follow simulated time;
//! - the endpoint's random number generator is seeded from the simulation seed.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket as quinn sees it.
pub struct SimSocket {
    sock: Arc<turmoil::net::UdpSocket>,
    /// The wait for the next datagram, kept between polls (only the endpoint driver reads).
    readable: Mutex<Option<Readable>>,
}

impl SimSocket {
    /// Bind a simulated UDP socket (call from inside a turmoil host).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let sock = turmoil::net::UdpSocket::bind(addr).await?;
        Ok(Self {
            sock: Arc::new(sock),
            readable: Mutex::new(None),
        })
    }
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket")
            .field("local", &self.sock.local_addr().ok())
            .finish()
    }
}

/// turmoil's UDP never pushes back: always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // `max_transmit_segments` is 1, so quinn never hands over more than one datagram.
        self.sock
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut pending = self
            .readable
            .lock()
            .map_err(|_| io::Error::other("simulated socket state poisoned"))?;
        // Bounded: each pass either returns or consumes one readiness.
        for _ in 0..4 {
            if let Some(wait) = pending.as_mut() {
                match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => {
                        // Drop the wait first: it holds the socket's receive lock.
                        *pending = None;
                        r?;
                    }
                }
            }
            match self.sock.try_recv_from(buf) {
                Ok((len, addr)) => {
                    m.addr = addr;
                    m.len = len;
                    m.stride = len;
                    m.ecn = None;
                    m.dst_ip = None;
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let sock = self.sock.clone();
                    *pending = Some(Box::pin(async move { sock.readable().await }));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Readiness kept firing without a datagram: poll again on the next wake-up.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    /// `true` keeps quinn at its initial 1200-byte datagrams (no path-MTU probes): fewer
    /// datagrams per run, and the same on every run.
    fn may_fragment(&self) -> bool {
        true
    }
}

/// quinn's runtime on the simulated host: tokio tasks and tokio's (paused) clock.
#[derive(Debug)]
pub struct SimRuntime;

impl Runtime for SimRuntime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(tokio::time::sleep_until(at.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, _: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the simulated runtime has no real sockets",
        ))
    }

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A quinn endpoint on a simulated socket bound to `addr` (inside a turmoil host), with its
/// random number generator seeded from `seed`. The server sets its own server config.
pub async fn endpoint(addr: SocketAddr, seed: u64) -> io::Result<quinn::Endpoint> {
    let socket = SimSocket::bind(addr).await?;
    let mut config = quinn::EndpointConfig::default();
    let mut rng_seed = [0u8; 32];
    for (i, chunk) in rng_seed.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.wrapping_add(i as u64).rotate_left(17).to_le_bytes());
    }
    config.rng_seed(Some(rng_seed));
    quinn::Endpoint::new_with_abstract_socket(config, None, Arc::new(socket), Arc::new(SimRuntime))
}
