//! The Lifeboat side of the throughput benchmark: real `lifeboat-edge` clients over QUIC, a
//! rider and a driver per trip, the drivers submitting location ops.
//!
//! Devices share a few QUIC endpoints and sled databases (group-committed flushes), as in the
//! failover harness, so that thousands fit one process; each device still has its own trees,
//! its own connection, and flushes before anything is reported committed (C1). An op counts
//! when `submit` resolves: applied by the datacenter and the digest covering it flushed on the
//! driver's device. Every location op also makes the datacenter push the new digest to the
//! rider, which persists it too.
//!
//! Bounds: every wait has a deadline; at most [`MAX_IN_FLIGHT`] paced ops per driver (under
//! the dedup window); a phase stops scheduling at its deadline and drains for at most
//! [`DRAIN`].

use crate::bench::echo::new_histogram;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use lifeboat_common::edge::EdgeLimits;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DeviceId, GeoPoint, SessionId, TripOp, TripPhase};
use lifeboat_edge::{
    client_config, client_endpoint, EdgeClient, EdgeConfig, SharedDb, StoreLocation,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Paced ops one driver may have unanswered (below the dedup window of 64).
pub const MAX_IN_FLIGHT: usize = 32;
/// How long a phase waits for its last answers.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Bound on setup waits (connect, dispatch).
const SETUP: Duration = Duration::from_secs(60);

/// One trip: its driver (who submits) and its rider (who receives the pushes).
pub struct Trip {
    pub session: SessionId,
    pub driver: EdgeClient,
    pub rider: EdgeClient,
}

/// Every device of the benchmark.
pub struct Fleet {
    pub trips: Vec<Trip>,
    pub endpoints: Vec<quinn::Endpoint>,
    pub client_cfg: Arc<quinn::ClientConfig>,
    /// The server's RSS once every device was connected, before any trip existed.
    pub rss_after_connect: u64,
}

/// What one phase measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct PhaseResult {
    /// Offered rate (open loop), or 0 for the closed loop.
    pub target_ops_per_s: f64,
    pub ops_committed: u64,
    pub ops_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    /// Open loop: sends skipped because the driver already had `MAX_IN_FLIGHT` unanswered.
    pub ops_skipped: u64,
    /// Ops that failed or were still unanswered after the drain.
    pub ops_failed: u64,
    pub server_cpu_us_per_op: f64,
    pub harness_cpu_us_per_op: f64,
}

fn position(rng: &mut SmallRng) -> GeoPoint {
    GeoPoint {
        lat_e6: 52_520_000 + rng.random_range(-40_000..40_000),
        lon_e6: 13_405_000 + rng.random_range(-60_000..60_000),
    }
}

fn shards_for(devices: usize) -> usize {
    (devices / 128).clamp(1, 8)
}

impl Fleet {
    /// Start `trips` riders and drivers, connect them, have every rider request a trip and
    /// wait until dispatch gave each a driver.
    pub async fn start(
        trips: usize,
        dir: &Path,
        addr: SocketAddr,
        keyring: &Keyring,
        ca_pem: &[u8],
        seed: u64,
        server_pid: u32,
    ) -> anyhow::Result<Self> {
        let shards = shards_for(2 * trips);
        let defaults = EdgeConfig::new(
            DeviceId(0),
            [0; 32],
            vec![addr],
            Vec::new(),
            StoreLocation::Path(dir.into()),
        );
        let client_cfg = Arc::new(client_config(
            ca_pem,
            defaults.keep_alive,
            defaults.idle_timeout,
        )?);
        let mut endpoints = Vec::new();
        let mut dbs = Vec::new();
        for k in 0..shards {
            endpoints.push(client_endpoint(&[addr])?);
            dbs.push(SharedDb::open(
                &dir.join(format!("devices-{k}")),
                16 * 1024 * 1024,
            )?);
        }
        let make = |id: u64, available: bool| {
            let k = (id as usize) % shards;
            let device = DeviceId(id);
            let mut c = EdgeConfig::new(
                device,
                keyring.device_token(device),
                vec![addr],
                ca_pem.to_vec(),
                StoreLocation::Shared {
                    db: dbs[k].clone(),
                    name: format!("device-{id}"),
                },
            );
            c.available = available;
            c.endpoint = Some(endpoints[k].clone());
            c.client_config = Some(client_cfg.clone());
            c.limits = EdgeLimits::default();
            c
        };
        // Drivers first, so that every request finds one available.
        let mut drivers = Vec::new();
        for i in 0..trips as u64 {
            drivers.push(EdgeClient::start(make(1_000_000 + i, true)).await?);
        }
        let mut riders = Vec::new();
        for i in 0..trips as u64 {
            riders.push(EdgeClient::start(make(1 + i, false)).await?);
        }
        let deadline = Instant::now() + SETUP;
        for c in drivers.iter().chain(riders.iter()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if c.wait_connected(left).await.is_none() {
                bail!("device {} did not connect within {SETUP:?}", c.device());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after_connect = crate::bench::procfs::rss_bytes(server_pid)?;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut rider_of = std::collections::HashMap::new();
        let mut requests = tokio::task::JoinSet::new();
        for rider in &riders {
            let rider = rider.clone();
            let session = SessionId(rng.random::<u64>() | 1);
            rider_of.insert(session, rider.clone());
            let op = TripOp::Request {
                pickup: position(&mut rng),
                dropoff: position(&mut rng),
            };
            requests.spawn(async move {
                tokio::time::timeout(SETUP, rider.submit(session, op))
                    .await
                    .context("trip request timed out")??;
                anyhow::Ok(())
            });
        }
        while let Some(r) = requests.join_next().await {
            r.context("request task")??;
        }
        // Each driver learns its trip from dispatch's push.
        let mut out = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for driver in drivers {
            let session = loop {
                let held = driver.sessions().await?;
                if let Some(s) = held
                    .iter()
                    .find(|s| s.view.phase == TripPhase::Assigned && !taken.contains(&s.session))
                {
                    break s.session;
                }
                if Instant::now() >= deadline {
                    bail!("driver {} got no trip within {SETUP:?}", driver.device());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            taken.insert(session);
            out.push((session, driver));
        }
        let mut trips_out = Vec::new();
        for (session, driver) in out {
            let rider = rider_of
                .get(&session)
                .cloned()
                .with_context(|| format!("trip {session} was not requested by a rider here"))?;
            trips_out.push(Trip {
                session,
                driver,
                rider,
            });
        }
        Ok(Self {
            trips: trips_out,
            endpoints,
            client_cfg,
            rss_after_connect,
        })
    }

    /// Every driver submits location ops back to back (one in flight each) for `warm_up +
    /// duration`; measured over `duration`.
    pub async fn closed_loop(
        &self,
        warm_up: Duration,
        duration: Duration,
        server_pid: u32,
        seed: u64,
    ) -> anyhow::Result<PhaseResult> {
        let start = Instant::now();
        let from = start + warm_up;
        let end = from + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in self.trips.iter().enumerate() {
            let (client, session) = (t.driver.clone(), t.session);
            let mut rng = SmallRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
            tasks.spawn(async move {
                let mut hist = new_histogram();
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let op = TripOp::Location {
                        at: position(&mut rng),
                    };
                    let r = tokio::time::timeout(DRAIN, client.submit(session, op)).await;
                    let t1 = Instant::now();
                    match r {
                        Ok(Ok(_)) if t1 >= from && t1 < end => {
                            ok += 1;
                            hist.saturating_record(t1.duration_since(t0).as_micros() as u64);
                        }
                        Ok(Ok(_)) => {}
                        _ => failed += 1,
                    }
                }
                (hist, ok, failed)
            });
        }
        let (cpu0, self0) = cpu_pair(server_pid, from).await?;
        tokio::time::sleep_until(end.into()).await;
        let (cpu1, self1) = (
            crate::bench::procfs::cpu_us(server_pid)?,
            crate::bench::procfs::cpu_us(std::process::id())?,
        );
        let mut hist = new_histogram();
        let mut r = PhaseResult::default();
        while let Some(x) = tasks.join_next().await {
            let (h, ok, failed) = x.context("driver task")?;
            hist.add(h).context("merging histograms")?;
            r.ops_committed += ok;
            r.ops_failed += failed;
        }
        finish(&mut r, &hist, duration, cpu1 - cpu0, self1 - self0);
        Ok(r)
    }

    /// Every driver submits at a fixed pace so that all together offer `rate` ops/s, for
    /// `duration`; latency is from the op's scheduled time (no coordinated omission) to its
    /// commit.
    pub async fn open_loop(
        &self,
        rate: f64,
        duration: Duration,
        server_pid: u32,
        seed: u64,
    ) -> anyhow::Result<PhaseResult> {
        if rate.is_nan() || rate <= 0.0 {
            bail!("open loop needs a positive rate, not {rate}");
        }
        let drivers = self.trips.len().max(1) as f64;
        let interval = Duration::from_secs_f64(drivers / rate);
        let start = Instant::now() + Duration::from_millis(200);
        let end = start + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in self.trips.iter().enumerate() {
            let (client, session) = (t.driver.clone(), t.session);
            let mut rng = SmallRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x85EB_CA6B));
            // Spread the drivers' first sends over one interval.
            let offset = interval.mul_f64(rng.random_range(0.0..1.0));
            tasks.spawn(
                async move { paced(client, session, start + offset, interval, end, rng).await },
            );
        }
        let (cpu0, self0) = cpu_pair(server_pid, start).await?;
        tokio::time::sleep_until(end.into()).await;
        let (cpu1, self1) = (
            crate::bench::procfs::cpu_us(server_pid)?,
            crate::bench::procfs::cpu_us(std::process::id())?,
        );
        let mut hist = new_histogram();
        let mut r = PhaseResult {
            target_ops_per_s: rate,
            ..Default::default()
        };
        while let Some(x) = tasks.join_next().await {
            let p = x.context("paced driver task")?;
            hist.add(p.hist).context("merging histograms")?;
            r.ops_committed += p.ok;
            r.ops_failed += p.failed;
            r.ops_skipped += p.skipped;
        }
        finish(&mut r, &hist, duration, cpu1 - cpu0, self1 - self0);
        Ok(r)
    }

    /// Stop every client; returns the UDP bytes (QUIC included) of drivers and of riders.
    ///
    /// A client adds its connection's byte counts to its stats only as its task ends, which
    /// is after `shutdown` returns; a client whose task has ended refuses commands, so wait
    /// (bounded) for that before reading the stats.
    pub async fn shutdown(self) -> anyhow::Result<(u64, u64)> {
        for t in &self.trips {
            t.driver.shutdown().await;
            t.rider.shutdown().await;
        }
        let deadline = Instant::now() + DRAIN;
        let (mut drivers, mut riders) = (0, 0);
        for t in &self.trips {
            for c in [&t.driver, &t.rider] {
                while c.sessions().await.is_ok() {
                    if Instant::now() >= deadline {
                        bail!("device {} did not stop within {DRAIN:?}", c.device());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let (d, r) = (t.driver.stats(), t.rider.stats());
            drivers += d.bytes_up + d.bytes_down;
            riders += r.bytes_up + r.bytes_down;
        }
        Ok((drivers, riders))
    }
}

async fn cpu_pair(server_pid: u32, at: Instant) -> anyhow::Result<(u64, u64)> {
    tokio::time::sleep_until(at.into()).await;
    Ok((
        crate::bench::procfs::cpu_us(server_pid)?,
        crate::bench::procfs::cpu_us(std::process::id())?,
    ))
}

fn finish(
    r: &mut PhaseResult,
    hist: &Histogram<u64>,
    duration: Duration,
    server_cpu: u64,
    own_cpu: u64,
) {
    let ops = r.ops_committed.max(1) as f64;
    r.ops_per_s = r.ops_committed as f64 / duration.as_secs_f64();
    r.latency_us_p50 = hist.value_at_quantile(0.50);
    r.latency_us_p99 = hist.value_at_quantile(0.99);
    r.latency_us_p999 = hist.value_at_quantile(0.999);
    r.latency_us_max = hist.max();
    r.server_cpu_us_per_op = server_cpu as f64 / ops;
    r.harness_cpu_us_per_op = own_cpu as f64 / ops;
}

struct Paced {
    hist: Histogram<u64>,
    ok: u64,
    failed: u64,
    skipped: u64,
}

async fn paced(
    client: EdgeClient,
    session: SessionId,
    first: Instant,
    interval: Duration,
    end: Instant,
    mut rng: SmallRng,
) -> Paced {
    let mut p = Paced {
        hist: new_histogram(),
        ok: 0,
        failed: 0,
        skipped: 0,
    };
    let mut waiting = tokio::task::JoinSet::new();
    let mut next = first;
    let record = |p: &mut Paced, r: Result<(Duration, bool), tokio::task::JoinError>| match r {
        Ok((latency, true)) => {
            p.ok += 1;
            p.hist.saturating_record(latency.as_micros() as u64);
        }
        _ => p.failed += 1,
    };
    while next < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                let scheduled = next;
                next += interval;
                if waiting.len() >= MAX_IN_FLIGHT {
                    p.skipped += 1;
                    continue;
                }
                let op = TripOp::Location { at: position(&mut rng) };
                match client.enqueue(session, op).await {
                    Ok((_, done)) => {
                        waiting.spawn(async move {
                            let ok = matches!(done.await, Ok(Ok(_)));
                            (scheduled.elapsed(), ok)
                        });
                    }
                    Err(_) => p.failed += 1,
                }
            }
            Some(r) = waiting.join_next(), if !waiting.is_empty() => record(&mut p, r),
        }
    }
    let drain_until = Instant::now() + DRAIN;
    while !waiting.is_empty() {
        match tokio::time::timeout_at(drain_until.into(), waiting.join_next()).await {
            Ok(Some(r)) => record(&mut p, r),
            Ok(None) => break,
            Err(_) => {
                p.failed += waiting.len() as u64;
                waiting.abort_all();
                break;
            }
        }
    }
    p
}
