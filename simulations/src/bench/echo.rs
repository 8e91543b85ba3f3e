//! The bare-QUIC baseline: a quinn server and clients exchanging messages of Lifeboat's sizes
//! in Lifeboat's pattern, with nothing else (no core, no sealing, no store, no fsync).
//!
//! Pattern, per trip (a pair of connections, like a driver and a rider): the "driver"
//! connection sends a request the size of a `Submit` frame; the server answers it with a
//! reply the size of the `OpResult` frame and sends a message the size of the `Push` frame
//! to the pair's "rider" connection. That is what the Lifeboat server does per location op.
//! Same TLS (the region's certificate), same transport limits (one bidirectional stream),
//! same 4-byte length framing, same number of connections, same shared client endpoints.
//!
//! The server runs in its own process (the sim binary's hidden `__bench-helper echo`), on a
//! multi-thread tokio runtime like `lifeboat-server`, so its CPU time can be read apart.
//!
//! Bounds: frames at most 64 KiB; the per-rider output queue is bounded (full: the message
//! is dropped and counted, as a slow consumer would be closed by Lifeboat); a client phase
//! stops at its deadline; every connect and read has a timeout.

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use lifeboat_server::region::Region;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Largest frame either side accepts (as Lifeboat's wire limit).
const MAX_FRAME: usize = 64 * 1024;
/// Queue of messages waiting to be written to one rider connection.
const RIDER_QUEUE: usize = 1024;
const ROLE_DRIVER: u32 = 0;
const ROLE_RIDER: u32 = 1;
/// Bound on each step of a connection set-up (handshake, stream, hello) and on one reply.
const SETUP: Duration = Duration::from_secs(30);
/// Connections set up at once (a loaded 2-core machine cannot do 1,000 handshakes at once
/// within any sensible timeout).
const CONNECT_CONCURRENCY: usize = 64;

/// Rider connections by pair id: where a driver's request sends its push.
type Riders = Arc<Mutex<HashMap<u32, mpsc::Sender<Arc<Vec<u8>>>>>>;

/// Message sizes, each including the 4-byte length prefix.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sizes {
    pub request_bytes: usize,
    pub reply_bytes: usize,
    pub push_bytes: usize,
}

/// Arguments of the echo server process (shaped like `lifeboat-server serve`, so that
/// `DcProcess` can start it and wait for its "listening on" line).
#[derive(clap::Args, Debug)]
pub struct EchoServerArgs {
    /// Must be `serve`.
    verb: String,
    #[arg(long)]
    dc: u16,
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    region: PathBuf,
    #[arg(long)]
    reply_bytes: usize,
    #[arg(long)]
    push_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
}

fn frame(total_bytes: usize) -> Vec<u8> {
    let body = total_bytes.saturating_sub(4).min(MAX_FRAME);
    let mut f = Vec::with_capacity(4 + body);
    f.extend_from_slice(&(body as u32).to_be_bytes());
    // Not all zeros, in case anything on the path were to compress (QUIC does not).
    f.extend((0..body).map(|i| (i as u8).wrapping_mul(151).wrapping_add(17)));
    f
}

async fn read_frame_raw<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        bail!("frame of {len} bytes over the limit");
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

/// Run the echo server until SIGTERM (the helper process's main).
pub fn serve(args: EchoServerArgs) -> anyhow::Result<()> {
    if args.verb != "serve" {
        bail!("usage: echo serve --dc N --listen ADDR --data-dir D --region R ...");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve_async(args))
}

async fn serve_async(args: EchoServerArgs) -> anyhow::Result<()> {
    let region = Region::load(&args.region).context("loading the region")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            Duration::from_millis(args.idle_timeout_ms).try_into()?,
        ))
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into());
    let mut cfg = quinn::ServerConfig::with_single_cert(region.cert_chain, region.key)?;
    cfg.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(cfg, args.listen)?;
    println!(
        "echo-server dc{} listening on {}",
        args.dc,
        endpoint.local_addr()?
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let riders: Riders = Arc::default();
    let reply = Arc::new(frame(args.reply_bytes));
    let push = Arc::new(frame(args.push_bytes));
    let dropped = Arc::new(AtomicU64::new(0));
    let accept = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (riders, reply, push, dropped) =
                    (riders.clone(), reply.clone(), push.clone(), dropped.clone());
                tokio::spawn(async move {
                    if let Err(e) = echo_conn(incoming, riders, reply, push, dropped).await {
                        tracing::debug!(error = %e, "echo connection ended");
                    }
                });
            }
        })
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    accept.abort();
    endpoint.close(0u32.into(), b"bye");
    Ok(())
}

async fn echo_conn(
    incoming: quinn::Incoming,
    riders: Riders,
    reply: Arc<Vec<u8>>,
    push: Arc<Vec<u8>>,
    dropped: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(SETUP, incoming)
        .await
        .context("handshake timed out")??;
    let (mut send, mut recv) = tokio::time::timeout(SETUP, conn.accept_bi())
        .await
        .context("stream open timed out")??;
    let mut hello = [0u8; 8];
    tokio::time::timeout(SETUP, recv.read_exact(&mut hello))
        .await
        .context("hello timed out")??;
    let pair = u32::from_be_bytes([hello[0], hello[1], hello[2], hello[3]]);
    let role = u32::from_be_bytes([hello[4], hello[5], hello[6], hello[7]]);
    if role == ROLE_RIDER {
        let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(RIDER_QUEUE);
        if let Ok(mut map) = riders.lock() {
            map.insert(pair, tx);
        }
        send.write_all(&[1u8]).await?;
        while let Some(msg) = rx.recv().await {
            if send.write_all(&msg).await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    send.write_all(&[1u8]).await?;
    let mut buf = Vec::new();
    while read_frame_raw(&mut recv, &mut buf).await? {
        send.write_all(&reply).await?;
        let rider = riders.lock().ok().and_then(|m| m.get(&pair).cloned());
        if let Some(tx) = rider {
            if tx.try_send(push.clone()).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// What one closed-loop echo phase measured.
#[derive(Debug, serde::Serialize)]
pub struct EchoResult {
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub pushes_received: u64,
    /// UDP bytes both ways over every connection (QUIC included), per request.
    pub udp_bytes_per_op: f64,
    pub server_cpu_us_per_op: f64,
}

struct EchoPair {
    driver: (quinn::Connection, quinn::SendStream, quinn::RecvStream),
    rider: (quinn::Connection, quinn::RecvStream),
}

async fn open(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    pair: u32,
    role: u32,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = tokio::time::timeout(
        SETUP,
        endpoint.connect_with(cfg.clone(), addr, "localhost")?,
    )
    .await
    .context("echo handshake timed out")??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut hello = [0u8; 8];
    hello[..4].copy_from_slice(&pair.to_be_bytes());
    hello[4..].copy_from_slice(&role.to_be_bytes());
    send.write_all(&hello).await?;
    let mut ok = [0u8; 1];
    tokio::time::timeout(SETUP, recv.read_exact(&mut ok))
        .await
        .context("echo hello answer timed out")??;
    Ok((conn, send, recv))
}

/// Connect `pairs` driver/rider pairs (2 × `pairs` connections over the given endpoints),
/// run drivers in a closed loop (one request in flight each) for `warm_up + duration`,
/// and measure over `duration`.
#[allow(clippy::too_many_arguments)]
pub async fn run_closed_loop(
    addr: SocketAddr,
    endpoints: &[quinn::Endpoint],
    cfg: &quinn::ClientConfig,
    pairs: usize,
    sizes: Sizes,
    warm_up: Duration,
    duration: Duration,
    server_pid: u32,
) -> anyhow::Result<EchoResult> {
    let mut set = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    for p in 0..pairs {
        let ep = endpoints[p % endpoints.len()].clone();
        let cfg = cfg.clone();
        let gate = gate.clone();
        set.spawn(async move {
            let _turn = gate.acquire().await?;
            // Rider first, so that every push finds its receiver.
            let (rc, _rs, rr) = open(&ep, &cfg, addr, p as u32, ROLE_RIDER).await?;
            let driver = open(&ep, &cfg, addr, p as u32, ROLE_DRIVER).await?;
            anyhow::Ok(EchoPair {
                driver,
                rider: (rc, rr),
            })
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        conns.push(r.context("echo connect task")??);
    }
    let pushes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warm_up;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut all_conns = Vec::new();
    for pair in conns {
        let (dconn, mut send, mut recv) = pair.driver;
        let (rconn, mut rrecv) = pair.rider;
        all_conns.push(dconn);
        all_conns.push(rconn);
        let pushes = pushes.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(true) = read_frame_raw(&mut rrecv, &mut buf).await {
                if Instant::now() >= measure_from && Instant::now() < end {
                    pushes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let request = frame(sizes.request_bytes);
        tasks.spawn(async move {
            let mut hist = new_histogram();
            let mut ops = 0u64;
            let mut all = 0u64;
            let mut buf = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                send.write_all(&request).await?;
                let got = tokio::time::timeout(SETUP, read_frame_raw(&mut recv, &mut buf))
                    .await
                    .context("echo reply timed out")??;
                if !got {
                    bail!("echo server closed the stream");
                }
                let t1 = Instant::now();
                all += 1;
                if t1 >= measure_from && t1 < end {
                    ops += 1;
                    hist.saturating_record(t1.duration_since(t0).as_micros() as u64);
                }
            }
            let _ = send.finish();
            anyhow::Ok((hist, ops, all))
        });
    }
    // CPU of the echo server over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = crate::bench::procfs::cpu_us(server_pid)?;
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = crate::bench::procfs::cpu_us(server_pid)?;
    let mut hist = new_histogram();
    let (mut ops, mut all) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (h, n, a) = r.context("echo driver task")??;
        hist.add(h).context("merging histograms")?;
        ops += n;
        all += a;
    }
    let udp: u64 = all_conns
        .iter()
        .map(|c| {
            let s = c.stats();
            s.udp_tx.bytes + s.udp_rx.bytes
        })
        .sum();
    for c in &all_conns {
        c.close(0u32.into(), b"done");
    }
    let secs = duration.as_secs_f64();
    Ok(EchoResult {
        ops,
        ops_per_s: ops as f64 / secs,
        latency_us_p50: hist.value_at_quantile(0.50),
        latency_us_p99: hist.value_at_quantile(0.99),
        latency_us_p999: hist.value_at_quantile(0.999),
        pushes_received: pushes.load(Ordering::Relaxed),
        // Over the whole life of the connections (handshakes and warm-up included), divided
        // by every request sent: comparable with Lifeboat's figure, which is taken the same way.
        udp_bytes_per_op: udp as f64 / all.max(1) as f64,
        server_cpu_us_per_op: cpu1.saturating_sub(cpu0) as f64 / ops.max(1) as f64,
    })
}

/// Latency histogram in microseconds, 1 µs to 60 s, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}
