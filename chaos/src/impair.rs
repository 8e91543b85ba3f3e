//! [`ImpairedSocket`]: a `quinn::AsyncUdpSocket` that wraps another one and drops, delays
//! (base + jitter), duplicates and reorders datagrams and blackholes cut paths, in both
//! directions, from a seeded RNG.
//!
//! How it runs:
//! - Sending (`try_send`, called by quinn's connection tasks): each datagram gets its fate
//!   from the send [`Lane`]; copies with no hold go straight to the inner socket, the others
//!   wait in the lane's bounded queue.
//! - Receiving (`poll_recv`, called by quinn's endpoint driver on every wake-up): the socket
//!   first releases due outgoing copies, then reads the inner socket, splits GRO batches into
//!   single datagrams (`stride`), decides each one's fate from the receive lane, and hands
//!   quinn the copies that are due, one datagram per `RecvMeta`. When nothing is due it arms
//!   one timer (from quinn's [`Runtime`], so simulated time works too) for the earliest held
//!   copy in either direction. A send that holds a copy due before that timer wakes the
//!   driver. So a socket used without quinn must be polled for receive to release its sends.
//! - GSO/GRO: the wrapper reports `max_transmit_segments() == 1` and
//!   `max_receive_segments() == 1`, so quinn builds one datagram per transmit and expects one
//!   per buffer; a multi-segment transmit is split anyway.
//!
//! Invariants: every datagram is decided once each time it enters the layer (a send the
//! inner socket refuses with `WouldBlock` goes back to quinn uncounted, but its random draws
//! are spent: quinn retries it and it is decided afresh); each direction holds at most
//! `queue_limit` copies (plus one outgoing copy waiting for the socket to become writable);
//! each `poll_recv` does a bounded amount of work.

use crate::config::{ConfigError, Impairment};
use crate::lane::{Datagram, Fate, Lane};
use crate::partition::Partition;
use crate::stats::{bump, Counters, ImpairStats};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Buffers the wrapper reads the inner socket into, per `poll_recv` call.
const SCRATCH_BUFFERS: usize = 4;
/// Bytes per scratch buffer for one datagram (GRO batches get `segments` times this).
const SCRATCH_BYTES_PER_SEGMENT: usize = 1_500;
/// Inner reads per `poll_recv` call.
const READS_PER_POLL: usize = 16;
/// Outgoing copies released per `poll_recv` call.
const RELEASES_PER_POLL: usize = 1_024;
/// Rounds of (release, read, wait) per `poll_recv` call.
const ROUNDS_PER_POLL: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state behind these locks stays consistent if a holder panicked (no multi-step
    // invariants are left half-done), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the handle shares with the socket.
struct Shared {
    config: RwLock<Impairment>,
    partition: Partition,
    send: Counters,
    recv: Counters,
}

impl Shared {
    fn config(&self) -> Impairment {
        *self.config.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads and steers an impaired socket at run time: counters, the partition switch, and the
/// impairment itself. Cheap to clone.
#[derive(Clone)]
pub struct ImpairHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ImpairHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairHandle")
            .field("impairment", &self.impairment())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ImpairHandle {
    /// A snapshot of both directions' counters.
    pub fn stats(&self) -> ImpairStats {
        ImpairStats {
            send: self.shared.send.snapshot(),
            recv: self.shared.recv.snapshot(),
        }
    }

    /// The partition switch of this socket (shared with every clone and with any other
    /// socket built with the same [`Partition`]).
    pub fn partition(&self) -> &Partition {
        &self.shared.partition
    }

    pub fn impairment(&self) -> Impairment {
        self.shared.config()
    }

    /// Change the impairment from the next datagram on (copies already held keep their due
    /// time). On error nothing changes.
    pub fn set_impairment(&self, imp: Impairment) -> Result<(), ConfigError> {
        imp.validate()?;
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = imp;
        Ok(())
    }
}

struct SendSide {
    lane: Lane,
    /// A due copy the inner socket refused (`WouldBlock`): sent first when it is writable.
    stuck: Option<Datagram>,
    poller: Option<Pin<Box<dyn UdpPoller>>>,
}

struct RecvSide {
    lane: Lane,
    /// Copies due for quinn (bounded by `queue_limit`).
    ready: VecDeque<Datagram>,
    scratch: Vec<Box<[u8]>>,
    metas: Vec<RecvMeta>,
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
}

/// The endpoint driver's waker and the deadline its timer is armed for.
#[derive(Default)]
struct DriverWake {
    waker: Option<Waker>,
    armed: Option<Instant>,
}

/// An impaired UDP socket for quinn (see the module docs). Build one with
/// [`ImpairedSocket::new`] and pass it to `quinn::Endpoint::new_with_abstract_socket`, or use
/// [`crate::client_endpoint`] / [`crate::server_endpoint`].
pub struct ImpairedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    send: Mutex<SendSide>,
    recv: Mutex<RecvSide>,
    wake: Mutex<DriverWake>,
}

impl fmt::Debug for ImpairedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImpairedSocket")
            .field("inner", &self.inner)
            .field("impairment", &self.shared.config())
            .finish_non_exhaustive()
    }
}

/// SplitMix64 finaliser: independent lane seeds from one seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ImpairedSocket {
    /// Wrap `inner`; `runtime` supplies the clock and timers (quinn's, or a simulated one).
    /// Each direction draws from its own RNG, both derived from `seed`.
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        runtime: Arc<dyn Runtime>,
        impairment: Impairment,
        seed: u64,
    ) -> Result<(Arc<Self>, ImpairHandle), ConfigError> {
        Self::with_partition(inner, runtime, impairment, seed, Partition::new())
    }

    /// Like [`new`](Self::new), switched by an existing [`Partition`] (one switch for many
    /// sockets).
    pub fn with_partition(
        inner: Arc<dyn AsyncUdpSocket>,
        runtime: Arc<dyn Runtime>,
        impairment: Impairment,
        seed: u64,
        partition: Partition,
    ) -> Result<(Arc<Self>, ImpairHandle), ConfigError> {
        impairment.validate()?;
        let segments = inner.max_receive_segments().max(1);
        let shared = Arc::new(Shared {
            config: RwLock::new(impairment),
            partition,
            send: Counters::default(),
            recv: Counters::default(),
        });
        let socket = Arc::new(Self {
            inner,
            runtime,
            shared: shared.clone(),
            send: Mutex::new(SendSide {
                lane: Lane::new(mix(seed ^ 0x5E4D)),
                stuck: None,
                poller: None,
            }),
            recv: Mutex::new(RecvSide {
                lane: Lane::new(mix(seed ^ 0x4ECF)),
                ready: VecDeque::new(),
                scratch: (0..SCRATCH_BUFFERS)
                    .map(|_| {
                        vec![0u8; (SCRATCH_BYTES_PER_SEGMENT * segments).max(64 * 1024)]
                            .into_boxed_slice()
                    })
                    .collect(),
                metas: vec![RecvMeta::default(); SCRATCH_BUFFERS],
                timer: None,
            }),
            wake: Mutex::new(DriverWake::default()),
        });
        Ok((socket, ImpairHandle { shared }))
    }

    /// Decide and send (or hold) one outgoing datagram. With `may_refuse`, a `WouldBlock` of
    /// the original copy is returned with nothing counted (quinn retries the transmit).
    /// Returns the due time of the earliest copy it held.
    fn send_one(
        &self,
        side: &mut SendSide,
        cfg: &Impairment,
        now: Instant,
        t: &Transmit<'_>,
        contents: &[u8],
        may_refuse: bool,
    ) -> io::Result<Option<Instant>> {
        let c = &self.shared.send;
        let fate = if cfg.directions.send() && !cfg.is_none() {
            side.lane.decide(cfg)
        } else {
            Fate::PASS
        };
        if self.shared.partition.is_cut(t.destination) {
            bump(&c.offered);
            bump(&c.blackholed);
            return Ok(None);
        }
        if fate.dropped {
            bump(&c.offered);
            bump(&c.dropped);
            return Ok(None);
        }
        let mut earliest: Option<Instant> = None;
        for (k, copy) in fate.copies.iter().flatten().enumerate() {
            if copy.hold.is_zero() {
                let single = Transmit {
                    destination: t.destination,
                    ecn: t.ecn,
                    contents,
                    segment_size: None,
                    src_ip: t.src_ip,
                };
                match self.inner.try_send(&single) {
                    Ok(()) => bump(&c.delivered),
                    Err(e) if k == 0 && may_refuse => return Err(e),
                    Err(_) => bump(&c.errors),
                }
            } else {
                bump(&c.delayed);
                if copy.reordered {
                    bump(&c.reordered);
                }
                let due = now + copy.hold;
                let d = Datagram {
                    peer: t.destination,
                    local_ip: t.src_ip,
                    ecn: t.ecn,
                    data: contents.into(),
                };
                match side.lane.hold(due, d, cfg.queue_limit) {
                    Ok(()) => earliest = Some(earliest.map_or(due, |e| e.min(due))),
                    Err(_) => bump(&c.overflowed),
                }
            }
            if k == 0 {
                bump(&c.offered);
            } else {
                bump(&c.duplicated);
            }
        }
        Ok(earliest)
    }

    /// Send the outgoing copies that are due (bounded); registers `cx` for writability if the
    /// inner socket is full.
    fn release_sends(&self, cx: &mut Context<'_>, now: Instant) {
        let c = &self.shared.send;
        let mut side = lock(&self.send);
        for _ in 0..RELEASES_PER_POLL {
            let d = match side.stuck.take() {
                Some(d) => d,
                None => match side.lane.pop_due(now) {
                    Some(d) => d,
                    None => return,
                },
            };
            if self.shared.partition.is_cut(d.peer) {
                bump(&c.blackholed);
                continue;
            }
            let t = Transmit {
                destination: d.peer,
                ecn: d.ecn,
                contents: &d.data,
                segment_size: None,
                src_ip: d.local_ip,
            };
            match self.inner.try_send(&t) {
                Ok(()) => bump(&c.delivered),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    side.stuck = Some(d);
                    let poller = side
                        .poller
                        .get_or_insert_with(|| self.inner.clone().create_io_poller());
                    match poller.as_mut().poll_writable(cx) {
                        Poll::Pending => return,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => {
                            side.stuck = None;
                            bump(&c.errors);
                        }
                    }
                }
                Err(_) => bump(&c.errors),
            }
        }
        // More due than one call may release: come back at once.
        cx.waker().wake_by_ref();
    }

    /// Decide one incoming datagram: into `ready` (no hold) or the lane (held).
    fn offer_incoming(&self, side: &mut RecvSide, cfg: &Impairment, now: Instant, d: Datagram) {
        let c = &self.shared.recv;
        let fate = if cfg.directions.receive() && !cfg.is_none() {
            side.lane.decide(cfg)
        } else {
            Fate::PASS
        };
        bump(&c.offered);
        if self.shared.partition.is_cut(d.peer) {
            bump(&c.blackholed);
            return;
        }
        if fate.dropped {
            bump(&c.dropped);
            return;
        }
        if fate.duplicated() {
            bump(&c.duplicated);
        }
        let second = fate.copies[1].map(|c| (c, d.clone()));
        let first = fate.copies[0].map(|c| (c, d));
        for (copy, d) in first.into_iter().chain(second) {
            if copy.hold.is_zero() {
                if side.ready.len() >= cfg.queue_limit {
                    bump(&c.overflowed);
                } else {
                    side.ready.push_back(d);
                }
            } else {
                bump(&c.delayed);
                if copy.reordered {
                    bump(&c.reordered);
                }
                if side.lane.hold(now + copy.hold, d, cfg.queue_limit).is_err() {
                    bump(&c.overflowed);
                }
            }
        }
    }

    /// Read the inner socket (bounded) until it has nothing more or `want` copies are ready.
    /// Ok(true): the inner socket returned `Pending` (so `cx` is registered with it).
    fn read_inner(
        &self,
        side: &mut RecvSide,
        cx: &mut Context<'_>,
        cfg: &Impairment,
        now: Instant,
        want: usize,
    ) -> io::Result<bool> {
        for _ in 0..READS_PER_POLL {
            if side.ready.len() >= want {
                return Ok(false);
            }
            let n = {
                let RecvSide { scratch, metas, .. } = &mut *side;
                let mut iovs: Vec<IoSliceMut<'_>> =
                    scratch.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                match self.inner.poll_recv(cx, &mut iovs, metas) {
                    Poll::Pending => return Ok(true),
                    // Undefined in QUIC and injectable by anyone: ignored, as quinn does.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Ready(Ok(n)) => n.min(metas.len()),
                }
            };
            for i in 0..n {
                let meta = side.metas[i];
                let len = meta.len.min(side.scratch[i].len());
                let stride = if meta.stride == 0 { len } else { meta.stride };
                let mut at = 0;
                while at < len {
                    let end = (at + stride).min(len);
                    let d = Datagram {
                        peer: meta.addr,
                        local_ip: meta.dst_ip,
                        ecn: meta.ecn,
                        data: side.scratch[i][at..end].into(),
                    };
                    self.offer_incoming(side, cfg, now, d);
                    at = end;
                }
            }
        }
        Ok(false)
    }

    /// Copy ready datagrams into quinn's buffers, one per buffer. Returns how many.
    fn deliver(
        &self,
        side: &mut RecvSide,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let c = &self.shared.recv;
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some(d) = side.ready.pop_front() else {
                break;
            };
            if self.shared.partition.is_cut(d.peer) {
                bump(&c.blackholed);
                continue;
            }
            let len = d.data.len();
            if len > bufs[n].len() {
                // A datagram larger than quinn's buffer would be cut short: dropped, as an
                // interface with that MTU would.
                bump(&c.errors);
                continue;
            }
            bufs[n][..len].copy_from_slice(&d.data);
            meta[n] = RecvMeta {
                addr: d.peer,
                len,
                stride: len,
                ecn: d.ecn,
                dst_ip: d.local_ip,
            };
            bump(&c.delivered);
            n += 1;
        }
        n
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let cfg = self.shared.config();
        let now = self.runtime.now();
        let mut earliest: Option<Instant> = None;
        {
            let mut side = lock(&self.send);
            let size = match t.segment_size {
                Some(s) if s > 0 => s,
                _ => t.contents.len().max(1),
            };
            for (i, segment) in t.contents.chunks(size).enumerate() {
                if let Some(due) = self.send_one(&mut side, &cfg, now, t, segment, i == 0)? {
                    earliest = Some(earliest.map_or(due, |e| e.min(due)));
                }
            }
        }
        // A copy due before the driver's timer: wake the driver so it re-arms (see the
        // lock-order note in `poll_recv`).
        if let Some(due) = earliest {
            let waker = {
                let mut w = lock(&self.wake);
                match w.armed {
                    Some(armed) if armed <= due => None,
                    _ => w.waker.take(),
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.len().min(meta.len());
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        for _ in 0..ROUNDS_PER_POLL {
            let now = self.runtime.now();
            let cfg = self.shared.config();
            self.release_sends(cx, now);
            let mut side = lock(&self.recv);
            let inner_pending = match self.read_inner(&mut side, cx, &cfg, now, want) {
                Ok(p) => p,
                Err(e) => return Poll::Ready(Err(e)),
            };
            while let Some(d) = side.lane.pop_due(now) {
                if side.ready.len() >= cfg.queue_limit {
                    bump(&self.shared.recv.overflowed);
                } else {
                    side.ready.push_back(d);
                }
            }
            if !side.ready.is_empty() {
                let n = self.deliver(&mut side, bufs, meta);
                if n > 0 {
                    return Poll::Ready(Ok(n));
                }
                continue;
            }
            if !inner_pending {
                // The read bound was hit and everything read was held or dropped.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Lock order recv -> wake -> send. `try_send` takes send, releases it, then takes
            // wake: a copy it holds after we read the send deadline below is seen against the
            // deadline we store here, so it wakes us if it is due earlier.
            let deadline = {
                let mut w = lock(&self.wake);
                let send_due = lock(&self.send).lane.next_due();
                let deadline = match (side.lane.next_due(), send_due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                w.waker = Some(cx.waker().clone());
                w.armed = deadline;
                deadline
            };
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            let timer = match side.timer.as_mut() {
                Some(t) => {
                    t.as_mut().reset(deadline);
                    t
                }
                None => side.timer.insert(self.runtime.new_timer(deadline)),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Already due: go round again.
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
