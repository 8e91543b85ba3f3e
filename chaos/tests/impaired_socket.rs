//! The impairment layer over real UDP sockets on loopback, driven directly (no QUIC): seeded
//! decisions, loss rate, duplication and reordering actually happening, partitions cutting and
//! repairing both directions, the queue bound, GSO transmits split, GRO batches split.
//!
//! Every wait is bounded; every test prints its seed on failure through the assertion text.

use lifeboat_chaos::{impaired_udp_socket, Directions, ImpairHandle, ImpairedSocket, Impairment};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, TokioRuntime};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const LOCAL: &str = "127.0.0.1:0";

fn local() -> SocketAddr {
    LOCAL.parse().expect("literal address")
}

/// A datagram as a test sees it: its number and where it came from.
type Got = (u32, SocketAddr);

/// Each test datagram carries its number; padded so it looks like a small QUIC packet.
fn payload(n: u32) -> Vec<u8> {
    let mut v = n.to_be_bytes().to_vec();
    v.resize(64, 0xAB);
    v
}

fn number(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_be_bytes(x)
}

/// An impaired socket plus a task that keeps polling its receive side (which is also what
/// releases its held sends, as quinn's endpoint driver would) and forwards what it delivers.
struct Impaired {
    socket: Arc<ImpairedSocket>,
    handle: ImpairHandle,
    addr: SocketAddr,
    rx: mpsc::Receiver<Got>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Impaired {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

fn impaired(imp: Impairment, seed: u64) -> Impaired {
    let (socket, handle) = impaired_udp_socket(local(), imp, seed, None).expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let (tx, rx) = mpsc::channel(100_000);
    let s = socket.clone();
    let pump = tokio::spawn(async move {
        let mut bufs = vec![[0u8; 1500]; 8];
        let mut metas = vec![RecvMeta::default(); 8];
        loop {
            let n = std::future::poll_fn(|cx| {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                s.poll_recv(cx, &mut iovs, &mut metas)
            })
            .await;
            let Ok(n) = n else { return };
            for i in 0..n {
                let m = metas[i];
                assert_eq!(m.len, m.stride, "one datagram per buffer");
                if tx.try_send((number(&bufs[i][..m.len]), m.addr)).is_err() {
                    return;
                }
            }
        }
    });
    Impaired {
        socket,
        handle,
        addr,
        rx,
        pump,
    }
}

impl Impaired {
    /// Send through the layer (retrying the rare `WouldBlock` a few times).
    async fn send(&self, to: SocketAddr, n: u32) {
        let data = payload(n);
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: &data,
            segment_size: None,
            src_ip: None,
        };
        for _ in 0..100 {
            match self.socket.try_send(&t) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
        panic!("socket stayed unwritable");
    }
}

/// Collect what arrives until `quiet` passes with nothing new (bounded by `max`).
async fn drain(rx: &mut mpsc::Receiver<Got>, quiet: Duration, max: Duration) -> Vec<Got> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + max;
    while let Ok(Some(x)) =
        tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + quiet), rx.recv()).await
    {
        got.push(x);
    }
    got
}

/// A plain socket and a task forwarding what it receives.
async fn plain() -> (
    Arc<UdpSocket>,
    mpsc::Receiver<Got>,
    tokio::task::JoinHandle<()>,
) {
    let s = Arc::new(UdpSocket::bind(LOCAL).await.expect("bind"));
    let (tx, rx) = mpsc::channel(100_000);
    let r = s.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = r.recv_from(&mut buf).await {
            if n >= 4 && tx.try_send((number(&buf[..n]), from)).is_err() {
                return;
            }
        }
    });
    (s, rx, task)
}

/// Send `count` numbered datagrams in small bursts (the receiver's kernel buffer must not
/// overflow: only the layer may lose datagrams here).
async fn send_many_through_layer(from: &Impaired, to: SocketAddr, count: u32) {
    for n in 0..count {
        from.send(to, n).await;
        if n % 32 == 31 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

async fn send_many_plain(from: &UdpSocket, to: SocketAddr, count: u32) {
    for n in 0..count {
        from.send_to(&payload(n), to).await.expect("send");
        if n % 32 == 31 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn numbers(got: &[Got]) -> Vec<u32> {
    got.iter().map(|g| g.0).collect()
}

/// One run of `count` datagrams through a lossy layer in `dir`; returns what arrived.
async fn lossy_run(dir: Directions, seed: u64, count: u32) -> (Vec<u32>, ImpairHandle) {
    let imp = Impairment::none().with_loss(0.3).with_directions(dir);
    let mut layer = impaired(imp, seed);
    let (plain_sock, mut plain_rx, task) = plain().await;
    let quiet = Duration::from_millis(200);
    let got = if dir.send() {
        send_many_through_layer(&layer, plain_sock.local_addr().expect("addr"), count).await;
        drain(&mut plain_rx, quiet, Duration::from_secs(5)).await
    } else {
        send_many_plain(&plain_sock, layer.addr, count).await;
        drain(&mut layer.rx, quiet, Duration::from_secs(5)).await
    };
    task.abort();
    (numbers(&got), layer.handle.clone())
}

#[tokio::test]
async fn seeded_loss_makes_the_same_decisions_at_roughly_the_configured_rate() {
    const N: u32 = 1_000;
    for dir in [Directions::SendOnly, Directions::ReceiveOnly] {
        let seed = 0x5EED_u64;
        let (a, ha) = lossy_run(dir, seed, N).await;
        let (b, _) = lossy_run(dir, seed, N).await;
        let (c, _) = lossy_run(dir, seed + 1, N).await;
        let stats = ha.stats();
        let lane = if dir.send() { stats.send } else { stats.recv };
        assert_eq!(
            lane.offered, N as u64,
            "{dir:?} seed {seed}: every datagram offered"
        );
        assert_eq!(
            a.len() as u64,
            lane.delivered,
            "{dir:?} seed {seed}: only the layer loses datagrams on loopback"
        );
        assert_eq!(lane.delivered + lane.dropped, N as u64);
        assert_eq!(a, b, "{dir:?} seed {seed}: same seed, same datagrams kept");
        assert_ne!(a, c, "{dir:?}: seeds {seed} and {} decided alike", seed + 1);
        // 1,000 draws at p = 0.3: the standard deviation of the rate is 0.0145; allow ±0.08.
        let rate = lane.dropped as f64 / N as f64;
        assert!(
            (0.22..=0.38).contains(&rate),
            "{dir:?} seed {seed}: loss rate {rate}"
        );
    }
}

/// Late arrivals: datagrams that arrived after one sent later than them.
fn late_arrivals(order: &[u32]) -> usize {
    let mut max_seen = None;
    let mut late = 0;
    for &n in order {
        match max_seen {
            Some(m) if n < m => late += 1,
            _ => max_seen = Some(n),
        }
    }
    late
}

#[tokio::test]
async fn duplicates_and_reordering_actually_happen_in_both_directions() {
    let seed = 77;
    let imp = Impairment::none()
        .with_duplicate(0.2)
        .with_reorder(0.2, Duration::from_millis(15));
    const N: u32 = 300;
    // Send direction: the layer sends to a plain socket, paced so that held-back datagrams
    // come due while later ones are still being sent.
    let layer = impaired(imp, seed);
    let (plain_sock, mut plain_rx, task) = plain().await;
    let to = plain_sock.local_addr().expect("addr");
    for n in 0..N {
        layer.send(to, n).await;
        if n % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got = numbers(
        &drain(
            &mut plain_rx,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await,
    );
    task.abort();
    let s = layer.handle.stats().send;
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for n in &got {
        *seen.entry(*n).or_default() += 1;
    }
    let doubled = seen.values().filter(|c| **c == 2).count() as u64;
    assert_eq!(seen.len() as u32, N, "seed {seed}: nothing lost");
    assert!(seen.values().all(|c| *c <= 2));
    assert_eq!(
        doubled, s.duplicated,
        "seed {seed}: every duplicate arrived"
    );
    assert!(
        s.duplicated > 20,
        "seed {seed}: {} duplicates",
        s.duplicated
    );
    assert!(s.reordered > 20, "seed {seed}: {} held back", s.reordered);
    assert!(
        late_arrivals(&got) > 20,
        "seed {seed}: only {} late arrivals",
        late_arrivals(&got)
    );
    // Receive direction: a plain socket sends to the layer.
    let mut layer = impaired(imp, seed);
    let (plain_sock, _rx, task) = plain().await;
    for n in 0..N {
        plain_sock
            .send_to(&payload(n), layer.addr)
            .await
            .expect("send");
        if n % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let got = numbers(
        &drain(
            &mut layer.rx,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await,
    );
    task.abort();
    let r = layer.handle.stats().recv;
    assert_eq!(got.len() as u64, N as u64 + r.duplicated, "seed {seed}");
    assert!(r.duplicated > 20 && r.reordered > 20, "seed {seed}: {r:?}");
    assert!(
        late_arrivals(&got) > 20,
        "seed {seed}: receive side kept order"
    );
}

#[tokio::test]
async fn delay_and_jitter_hold_datagrams_for_the_configured_time() {
    let imp = Impairment::none().with_delay(Duration::from_millis(120), Duration::from_millis(60));
    let layer = impaired(imp, 5);
    let (plain_sock, mut rx, task) = plain().await;
    let to = plain_sock.local_addr().expect("addr");
    let t0 = std::time::Instant::now();
    for n in 0..20 {
        layer.send(to, n).await;
    }
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delayed datagram arrives")
        .expect("channel open");
    let first_ms = t0.elapsed().as_millis();
    let rest = drain(&mut rx, Duration::from_millis(300), Duration::from_secs(5)).await;
    task.abort();
    assert!(
        first_ms >= 115,
        "first datagram after {first_ms} ms, expected ≥ 120"
    );
    assert_eq!(rest.len() + 1, 20, "all arrive: first {first:?}");
    assert_eq!(layer.handle.stats().send.delayed, 20);
}

#[tokio::test]
async fn a_cut_blackholes_both_directions_and_the_repair_restores_them() {
    let mut a = impaired(Impairment::none(), 1);
    let (b_sock, mut b_rx, b_task) = plain().await;
    let (c_sock, mut c_rx, c_task) = plain().await;
    let b = b_sock.local_addr().expect("addr");
    let c = c_sock.local_addr().expect("addr");
    let quiet = Duration::from_millis(150);
    let max = Duration::from_secs(3);

    // Everyone cut.
    a.handle.partition().cut_all();
    for n in 0..10 {
        a.send(b, n).await;
    }
    send_many_plain(&b_sock, a.addr, 10).await;
    assert!(
        drain(&mut b_rx, quiet, max).await.is_empty(),
        "a -> b crossed a cut"
    );
    assert!(
        drain(&mut a.rx, quiet, max).await.is_empty(),
        "b -> a crossed a cut"
    );
    let s = a.handle.stats();
    assert_eq!((s.send.blackholed, s.recv.blackholed), (10, 10));

    // One peer cut: b stays dark, c gets through.
    a.handle.partition().repair_all();
    a.handle.partition().cut(b).expect("cut b");
    for n in 0..5 {
        a.send(b, n).await;
        a.send(c, n).await;
    }
    send_many_plain(&b_sock, a.addr, 5).await;
    send_many_plain(&c_sock, a.addr, 5).await;
    assert!(drain(&mut b_rx, quiet, max).await.is_empty());
    assert_eq!(drain(&mut c_rx, quiet, max).await.len(), 5);
    let from: Vec<SocketAddr> = drain(&mut a.rx, quiet, max)
        .await
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(from, vec![c; 5], "only c reaches a");

    // Repaired: b again, both ways.
    a.handle.partition().repair(b);
    for n in 0..5 {
        a.send(b, n).await;
    }
    send_many_plain(&b_sock, a.addr, 5).await;
    assert_eq!(drain(&mut b_rx, quiet, max).await.len(), 5);
    assert_eq!(drain(&mut a.rx, quiet, max).await.len(), 5);
    b_task.abort();
    c_task.abort();
}

#[tokio::test]
async fn datagrams_held_back_when_the_cut_starts_are_blackholed_when_due() {
    let imp = Impairment::none().with_delay(Duration::from_millis(80), Duration::ZERO);
    let layer = impaired(imp, 9);
    let (b_sock, mut b_rx, task) = plain().await;
    let b = b_sock.local_addr().expect("addr");
    for n in 0..10 {
        layer.send(b, n).await;
    }
    layer.handle.partition().cut(b).expect("cut");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(drain(
        &mut b_rx,
        Duration::from_millis(100),
        Duration::from_secs(2)
    )
    .await
    .is_empty());
    let s = layer.handle.stats().send;
    assert_eq!((s.delayed, s.blackholed, s.delivered), (10, 10, 0));
    task.abort();
}

#[tokio::test]
async fn the_delay_queue_is_bounded_and_counts_what_it_drops() {
    let imp = Impairment::none()
        .with_delay(Duration::from_millis(100), Duration::ZERO)
        .with_queue_limit(16);
    // Send side.
    let layer = impaired(imp, 2);
    let (b_sock, mut b_rx, task) = plain().await;
    for n in 0..100 {
        layer.send(b_sock.local_addr().expect("addr"), n).await;
    }
    let got = drain(
        &mut b_rx,
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await;
    task.abort();
    let s = layer.handle.stats().send;
    assert_eq!(got.len(), 16);
    assert_eq!((s.overflowed, s.delivered, s.offered), (84, 16, 100));
    assert_eq!(
        numbers(&got),
        (0..16).collect::<Vec<_>>(),
        "the first 16 are kept"
    );
    // Receive side.
    let mut layer = impaired(imp, 2);
    let (a_sock, _rx, task) = plain().await;
    for n in 0..100 {
        a_sock.send_to(&payload(n), layer.addr).await.expect("send");
    }
    let got = drain(
        &mut layer.rx,
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
    .await;
    task.abort();
    let r = layer.handle.stats().recv;
    assert_eq!(got.len(), 16);
    assert_eq!((r.overflowed, r.delivered), (84, 16));
}

#[tokio::test]
async fn a_gso_transmit_is_split_into_single_datagrams_each_decided_alone() {
    let layer = impaired(Impairment::none(), 3);
    assert_eq!(layer.socket.max_transmit_segments(), 1);
    assert_eq!(layer.socket.max_receive_segments(), 1);
    let b_sock = UdpSocket::bind(LOCAL).await.expect("bind");
    let mut contents = Vec::new();
    for n in 0..3u32 {
        let mut seg = n.to_be_bytes().to_vec();
        seg.resize(100, 0);
        contents.extend(seg);
    }
    contents.extend(9u32.to_be_bytes()); // a short last segment
    let t = Transmit {
        destination: b_sock.local_addr().expect("addr"),
        ecn: None,
        contents: &contents,
        segment_size: Some(100),
        src_ip: None,
    };
    // A fresh socket may not be writable yet: retry (bounded) as quinn would.
    for attempt in 0.. {
        match layer.socket.try_send(&t) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && attempt < 100 => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    let mut sizes = Vec::new();
    let mut buf = [0u8; 1500];
    for _ in 0..4 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), b_sock.recv_from(&mut buf))
            .await
            .expect("datagram arrives")
            .expect("recv");
        sizes.push((number(&buf[..n]), n));
    }
    assert_eq!(sizes, vec![(0, 100), (1, 100), (2, 100), (9, 4)]);
    assert_eq!(layer.handle.stats().send.offered, 4);
}

/// A fake inner socket that returns one GRO batch (three datagrams at a 100-byte stride),
/// since the kernel's GRO on loopback cannot be forced from a test.
#[derive(Debug)]
struct GroOnce {
    real: Arc<dyn AsyncUdpSocket>,
    given: Mutex<bool>,
}

impl AsyncUdpSocket for GroOnce {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.real.clone().create_io_poller()
    }
    fn try_send(&self, t: &Transmit<'_>) -> std::io::Result<()> {
        self.real.try_send(t)
    }
    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let mut given = self.given.lock().expect("lock");
        if *given {
            return self.real.poll_recv(cx, bufs, meta);
        }
        *given = true;
        let mut batch = Vec::new();
        for n in 0..3u32 {
            let mut seg = n.to_be_bytes().to_vec();
            seg.resize(if n == 2 { 50 } else { 100 }, 0);
            batch.extend(seg);
        }
        bufs[0][..batch.len()].copy_from_slice(&batch);
        meta[0] = RecvMeta {
            addr: "127.0.0.1:9".parse().expect("literal"),
            len: batch.len(),
            stride: 100,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.real.local_addr()
    }
    fn max_receive_segments(&self) -> usize {
        3
    }
}

#[tokio::test]
async fn a_gro_batch_from_the_inner_socket_reaches_quinn_as_single_datagrams() {
    use quinn::Runtime;
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime);
    let real = rt
        .wrap_udp_socket(std::net::UdpSocket::bind(LOCAL).expect("bind"))
        .expect("wrap");
    let inner = Arc::new(GroOnce {
        real,
        given: Mutex::new(false),
    });
    let (socket, handle) =
        ImpairedSocket::new(inner, rt, Impairment::none(), 1).expect("valid config");
    let mut bufs = vec![[0u8; 1500]; 4];
    let mut metas = vec![RecvMeta::default(); 4];
    let n = std::future::poll_fn(|cx| {
        let mut iovs: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        socket.poll_recv(cx, &mut iovs, &mut metas)
    })
    .await
    .expect("recv");
    let got: Vec<(u32, usize, usize)> = (0..n)
        .map(|i| (number(&bufs[i]), metas[i].len, metas[i].stride))
        .collect();
    assert_eq!(got, vec![(0, 100, 100), (1, 100, 100), (2, 50, 50)]);
    assert_eq!(handle.stats().recv.offered, 3);
}

#[tokio::test]
async fn an_invalid_impairment_is_refused_with_a_typed_error_at_build_and_at_run_time() {
    let bad = Impairment::none().with_loss(1.5);
    let e = impaired_udp_socket(local(), bad, 0, None).expect_err("refused");
    assert!(matches!(e, lifeboat_chaos::ImpairError::Config(_)), "{e}");
    let layer = impaired(Impairment::none().with_loss(0.1), 0);
    assert!(layer.handle.set_impairment(bad).is_err());
    assert_eq!(
        layer.handle.impairment().loss,
        0.1,
        "unchanged after a refusal"
    );
}

#[test]
fn building_an_impaired_socket_outside_a_runtime_is_an_error_not_a_panic() {
    let e = impaired_udp_socket(local(), Impairment::none(), 0, None).expect_err("no runtime");
    assert!(matches!(e, lifeboat_chaos::ImpairError::NoRuntime));
}
