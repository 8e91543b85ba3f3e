//! Footprint figures: server memory per active session, edge client resident memory, and the
//! sizes of sealed digests.
//!
//! - Server memory per session: the server process's RSS (`/proc/<pid>/status`) before and
//!   after a loader creates `sessions` trips through a few already-connected devices that
//!   speak the wire protocol directly (no device store: only the server is measured). The
//!   delta covers everything the server keeps for a session: the core's entry (state,
//!   header, sealed copy), its indexes, the dispatch queue and sled's share. The per-connection
//!   cost is measured apart, when the benchmark's devices connect.
//! - Edge client: one `BlockingEdgeClient` with its own sled store in a process of its own
//!   (the sim binary's hidden `__bench-helper edge-probe`), connected, after a trip request
//!   and a cancel; RSS of the process before the client started and after.
//!
//! Bounds: the loader's connections and requests each have deadlines; the probe process is
//! killed if it does not finish within [`PROBE_TIMEOUT`].

use crate::bench::procfs::rss_bytes;
use anyhow::{bail, Context};
use lifeboat_common::frame_io::read_frame;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::{long_trip, typical_trip};
use lifeboat_common::wire::{encode_frame, ClientMsg, OpOutcome, ServerMsg};
use lifeboat_common::{DeviceId, GeoPoint, SessionId, Trip, TripOp};
use lifeboat_edge::{BlockingEdgeClient, EdgeConfig, StoreLocation};
use lifeboat_server::region::Region;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the edge probe process may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const LOADER_DEVICES: usize = 50;

/// Sealed digest sizes of the sample trips.
#[derive(Debug, serde::Serialize)]
pub struct DigestSizes {
    pub digest_bytes_typical: usize,
    pub digest_bytes_long: usize,
    pub sealing_overhead_bytes_typical: usize,
    pub sealing_overhead_bytes_long: usize,
}

pub fn digest_sizes(keyring: &Keyring) -> anyhow::Result<DigestSizes> {
    let t = typical_trip();
    let l = long_trip();
    let ts = t.seal(keyring)?.encoded_len();
    let ls = l.seal(keyring)?.encoded_len();
    Ok(DigestSizes {
        digest_bytes_typical: ts,
        digest_bytes_long: ls,
        sealing_overhead_bytes_typical: ts - t.plain_bytes()?,
        sealing_overhead_bytes_long: ls - l.plain_bytes()?,
    })
}

/// Server memory per session.
#[derive(Debug, serde::Serialize)]
pub struct ServerFootprint {
    pub sessions_created: u64,
    pub server_rss_bytes_before: u64,
    pub server_rss_bytes_after: u64,
    pub server_bytes_per_session: f64,
}

struct RawDevice {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    device: DeviceId,
}

async fn raw_connect(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    keyring: &Keyring,
    device: DeviceId,
) -> anyhow::Result<RawDevice> {
    let conn = tokio::time::timeout(
        Duration::from_secs(30),
        endpoint.connect_with(cfg.clone(), addr, "localhost")?,
    )
    .await
    .context("loader handshake timed out")??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello: ClientMsg<Trip> = ClientMsg::Hello {
        device,
        token: keyring.device_token(device),
        available: false,
        digests: Vec::new(),
        more: false,
    };
    send.write_all(&encode_frame(&hello)?).await?;
    let mut buf = Vec::new();
    let welcome = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv, &mut buf))
        .await
        .context("loader Welcome timed out")??;
    match welcome {
        Some(ServerMsg::<Trip>::Welcome { .. }) => {}
        other => bail!("expected Welcome, got {other:?}"),
    }
    Ok(RawDevice {
        conn,
        send,
        recv,
        device,
    })
}

/// Create `sessions` trips through `LOADER_DEVICES` raw connections and measure the server's
/// RSS before (connections open, no sessions yet) and after (every create answered, one
/// second to settle).
pub async fn server_per_session(
    addr: SocketAddr,
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    keyring: &Keyring,
    server_pid: u32,
    sessions: usize,
) -> anyhow::Result<ServerFootprint> {
    let mut devices = Vec::new();
    for i in 0..LOADER_DEVICES {
        devices.push(
            raw_connect(
                endpoint,
                cfg,
                addr,
                keyring,
                DeviceId(50_000_000 + i as u64),
            )
            .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(server_pid)?;
    let per = sessions.div_ceil(LOADER_DEVICES);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, mut d) in devices.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut frames = Vec::new();
            for j in 0..per {
                let n = (k * per + j) as i32;
                let op: ClientMsg<Trip> = ClientMsg::Submit {
                    session: SessionId((d.device.0 << 20) | j as u64 | 1 << 19),
                    seq: 1,
                    op: TripOp::Request {
                        pickup: GeoPoint {
                            lat_e6: 52_500_000 + n % 10_000,
                            lon_e6: 13_400_000,
                        },
                        dropoff: GeoPoint {
                            lat_e6: 52_510_000,
                            lon_e6: 13_410_000 + n % 10_000,
                        },
                    },
                };
                frames.extend_from_slice(&encode_frame(&op)?);
            }
            d.send.write_all(&frames).await?;
            let mut buf = Vec::new();
            let mut applied = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while applied < per as u64 {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(
                    left,
                    read_frame::<ServerMsg<Trip>, _>(&mut d.recv, &mut buf),
                )
                .await
                .context("loader: answers timed out")??
                {
                    Some(ServerMsg::OpResult {
                        outcome: OpOutcome::Applied,
                        ..
                    }) => applied += 1,
                    Some(ServerMsg::OpResult { outcome, .. }) => {
                        bail!("loader: create refused: {outcome:?}")
                    }
                    Some(_) => {}
                    None => bail!("loader: server closed the stream"),
                }
            }
            anyhow::Ok((d, applied))
        });
    }
    let mut created = 0;
    let mut keep = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (d, n) = r.context("loader task")??;
        created += n;
        keep.push(d);
    }
    // Let sled's periodic flush and the dispatch tick run once or twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(server_pid)?;
    for d in keep {
        d.conn.close(0u32.into(), b"done");
    }
    Ok(ServerFootprint {
        sessions_created: created,
        server_rss_bytes_before: before,
        server_rss_bytes_after: after,
        server_bytes_per_session: after.saturating_sub(before) as f64 / created.max(1) as f64,
    })
}

/// Arguments of the edge probe process.
#[derive(clap::Args, Debug)]
pub struct EdgeProbeArgs {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long)]
    region: PathBuf,
    #[arg(long)]
    store: PathBuf,
    #[arg(long, default_value_t = 9_000_001)]
    device: u64,
}

/// What the probe prints (one JSON line).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EdgeFootprint {
    /// The probe process before the client started (binary, allocator, nothing else).
    pub process_rss_bytes_before: u64,
    /// With the client running: connected, one trip held (requested then cancelled: a
    /// tombstone) and a second one live.
    pub process_rss_bytes_after: u64,
    pub edge_client_rss_bytes: u64,
    pub store_bytes_on_disk: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 10_000; // bounded walk
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            budget -= 1;
            if budget == 0 {
                return total;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The probe process's main: start one client, do a little, print the footprint.
pub fn edge_probe(args: EdgeProbeArgs) -> anyhow::Result<()> {
    let me = std::process::id();
    let before = rss_bytes(me)?;
    let region_keyring = Keyring::load(&Region::keyring_path(&args.region))?;
    let ca = std::fs::read(Region::ca_path(&args.region))?;
    let device = DeviceId(args.device);
    let cfg = EdgeConfig::new(
        device,
        region_keyring.device_token(device),
        vec![args.server],
        ca,
        StoreLocation::Path(args.store.clone()),
    );
    drop(region_keyring);
    let client = BlockingEdgeClient::start(cfg)?;
    let here = GeoPoint {
        lat_e6: 52_520_000,
        lon_e6: 13_405_000,
    };
    let (first, _) = client.request_trip(here, here)?;
    client.submit(first, TripOp::Cancel)?;
    client.request_trip(here, here)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_bytes(me)?;
    let out = EdgeFootprint {
        process_rss_bytes_before: before,
        process_rss_bytes_after: after,
        edge_client_rss_bytes: after.saturating_sub(before),
        store_bytes_on_disk: dir_bytes(&args.store),
    };
    println!("{}", serde_json::to_string(&out)?);
    client.shutdown();
    Ok(())
}

/// Run the probe as a child process (bounded in time) and read its figures.
pub fn run_edge_probe(
    server: SocketAddr,
    region: &Path,
    store: &Path,
) -> anyhow::Result<EdgeFootprint> {
    let exe = std::env::current_exe().context("locating the sim executable")?;
    let mut child = std::process::Command::new(exe)
        .args(["__bench-helper", "edge-probe", "--server"])
        .arg(server.to_string())
        .arg("--region")
        .arg(region)
        .arg("--store")
        .arg(store)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting the edge probe")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the edge probe did not finish within {PROBE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("the edge probe failed ({status}): {out}");
    }
    let line = out
        .lines()
        .last()
        .context("the edge probe printed nothing")?;
    serde_json::from_str(line).context("reading the edge probe's figures")
}
