//! Footprint figures: server memory per active session, edge client resident memory, and the
//! sizes of sealed digests.
//!
//! - Server memory per session: the server process's RSS (`/proc/<pid>/status`) before and
//!   after a loader creates `sessions` trips through a few already-connected devices that
//!   speak the wire protocol directly (no device store: only the server is measured). The
//!   delta covers everything the server keeps for a session: the core's entry (state,
//!   header, sealed copy), its indexes, the dispatch queue and sled's share. The per-connection
//!   cost is measured apart, when the benchmark's devices connect. Each loader device makes
//!   far more creates than the production create limits allow, so the datacenter runs with
//!   those two limits raised for the loader (see [`LoaderPlan`]).
//! - Edge client: one `BlockingEdgeClient` with its own sled store in a process of its own
//!   (the sim binary's hidden `__bench-helper edge-probe`), connected, after a trip request
//!   and a cancel; RSS of the process before the client started and after.
//!
//! Bounds: the loader's connections and requests each have deadlines; the probe process is
//! killed if it does not finish within [`PROBE_TIMEOUT`].

use crate::bench::procfs::rss_bytes;
use anyhow::{bail, Context};
use lifeboat_common::codec::encode_frame;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::{long_trip, typical_trip};
use lifeboat_common::wire::{ClientMsg, OpOutcome, ServerMsg};
use lifeboat_common::{DeviceId, GeoPoint, SessionId, Trip, TripOp};
use lifeboat_edge::{BlockingEdgeClient, EdgeConfig, StoreLocation};
use lifeboat_frame_io::read_frame;
use lifeboat_server::region::Region;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the edge probe process may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Loader devices unless `--footprint-devices` says otherwise.
pub const LOADER_DEVICES: usize = 50;
/// Most creates one loader device sends at once: well under the server's default
/// `--max-inflight-ops` and `--conn-queue` (1,024 each), so only the create limits need
/// raising. More sessions than this per device take more devices.
pub const MAX_CREATES_PER_LOADER_DEVICE: usize = 500;

/// How the loader spreads its creates, and the create limits the datacenter needs for it.
///
/// The production defaults (`--max-sessions-per-device` 16, `--session-creates-per-minute`
/// 10) would refuse a loader device's 11th create within a minute, so the benchmark's
/// datacenter is started with both raised to the creates per loader device (never below
/// the defaults): [`LoaderPlan::server_args`]. Every other limit stays at its default.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LoaderPlan {
    pub sessions: usize,
    pub devices: usize,
    /// Creates of the busiest loader device (the others make as many or one fewer).
    pub creates_per_device: usize,
    /// The datacenter's `--max-sessions-per-device` for this run.
    pub max_sessions_per_device: usize,
    /// The datacenter's `--session-creates-per-minute` for this run (also the burst).
    pub session_creates_per_minute: u32,
}

impl LoaderPlan {
    /// `sessions` creates over `devices` loader devices (at least one session each, and more
    /// devices if one would otherwise send more than [`MAX_CREATES_PER_LOADER_DEVICE`]).
    pub fn new(sessions: usize, devices: usize) -> anyhow::Result<Self> {
        if sessions == 0 || devices == 0 {
            bail!("--footprint-sessions and --footprint-devices must be at least 1");
        }
        let devices = devices
            .max(sessions.div_ceil(MAX_CREATES_PER_LOADER_DEVICE))
            .min(sessions);
        let creates_per_device = sessions.div_ceil(devices);
        let defaults = lifeboat_server::ServerConfig::new(
            lifeboat_common::DatacenterId(0),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            PathBuf::new(),
            PathBuf::new(),
        );
        Ok(Self {
            sessions,
            devices,
            creates_per_device,
            max_sessions_per_device: defaults.max_sessions_per_device.max(creates_per_device),
            session_creates_per_minute: defaults
                .session_creates_per_minute
                .max(u32::try_from(creates_per_device).unwrap_or(u32::MAX)),
        })
    }

    /// The datacenter flags that raise its create limits for the loader.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--max-sessions-per-device".into(),
            self.max_sessions_per_device.to_string(),
            "--session-creates-per-minute".into(),
            self.session_creates_per_minute.to_string(),
        ]
    }

    /// Creates of loader device `k`: the sessions split as evenly as possible.
    fn creates_of(&self, k: usize) -> usize {
        self.sessions / self.devices + usize::from(k < self.sessions % self.devices)
    }
}

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
    /// How the creates were spread, and the create limits the datacenter ran with.
    pub loader: LoaderPlan,
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

/// Create `plan.sessions` trips through `plan.devices` raw connections and measure the
/// server's RSS before (connections open, no sessions yet) and after (every create answered,
/// one second to settle). The server must run with [`LoaderPlan::server_args`].
pub async fn server_per_session(
    addr: SocketAddr,
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    keyring: &Keyring,
    server_pid: u32,
    plan: LoaderPlan,
) -> anyhow::Result<ServerFootprint> {
    let mut devices = Vec::new();
    for i in 0..plan.devices {
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
    let stride = plan.creates_per_device;
    let mut tasks = tokio::task::JoinSet::new();
    for (k, mut d) in devices.into_iter().enumerate() {
        let per = plan.creates_of(k);
        tasks.spawn(async move {
            let mut frames = Vec::new();
            for j in 0..per {
                let n = (k * stride + j) as i32;
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
        loader: plan,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_plan_spreads_creates_and_raises_only_the_create_limits_it_needs() {
        // The documented run: 10,000 sessions over 50 devices, 200 each.
        let p = LoaderPlan::new(10_000, LOADER_DEVICES).unwrap();
        assert_eq!((p.devices, p.creates_per_device), (50, 200));
        assert_eq!(p.max_sessions_per_device, 200);
        assert_eq!(p.session_creates_per_minute, 200);
        assert_eq!(
            p.server_args(),
            [
                "--max-sessions-per-device",
                "200",
                "--session-creates-per-minute",
                "200"
            ]
        );
        // Few creates per device: the production defaults are kept.
        let p = LoaderPlan::new(100, LOADER_DEVICES).unwrap();
        assert_eq!(p.creates_per_device, 2);
        assert_eq!(
            (p.max_sessions_per_device, p.session_creates_per_minute),
            (16, 10)
        );
        // Never more than MAX_CREATES_PER_LOADER_DEVICE on one device, never an idle one,
        // and exactly `sessions` in all.
        for (sessions, devices) in [(100_000, 50), (7, 50), (1_001, 2), (120, 3), (1, 1)] {
            let p = LoaderPlan::new(sessions, devices).unwrap();
            assert!(p.creates_per_device <= MAX_CREATES_PER_LOADER_DEVICE);
            assert!(p.devices <= sessions);
            let all: Vec<usize> = (0..p.devices).map(|k| p.creates_of(k)).collect();
            assert_eq!(all.iter().sum::<usize>(), sessions, "{p:?}");
            assert!(all.iter().all(|&n| n >= 1 && n <= p.creates_per_device));
        }
        assert!(LoaderPlan::new(0, 50).is_err());
        assert!(LoaderPlan::new(10, 0).is_err());
    }
}
