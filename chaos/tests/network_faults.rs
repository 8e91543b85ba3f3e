//! Network faults end to end: a real `lifeboat-server` process on loopback, real edge clients
//! with sled stores on disk, each device's QUIC endpoint on an impaired socket. Each test
//! drives trips to completion and checks the datacenter's own store against what the drivers
//! were told was committed (`lifeboat_tests::check::check_against_store`: every committed op
//! present exactly once, no version older than committed, finished trips tombstoned).
//!
//! Seeds: the impairment RNGs are seeded from `LIFEBOAT_SEED` (a fixed default otherwise) and
//! every failure names the seed. Timing on real sockets is not reproducible, so a seed fixes
//! the decision streams, not the exact interleaving.

use anyhow::{ensure, Context};
use lifeboat_chaos::{client_endpoint, ImpairHandle, ImpairStats, Impairment};
use lifeboat_edge::{ClientEvent, EdgeClient, EdgeConfig};
use lifeboat_tests::check::check_against_store;
use lifeboat_tests::trips::{drive, wait_progress, WAIT};
use lifeboat_tests::{route_point, wait_for_session, Cluster, PICKUP};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn seed() -> u64 {
    std::env::var("LIFEBOAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0008)
}

struct Device {
    client: EdgeClient,
    handle: ImpairHandle,
}

/// Start device `id` on its own impaired endpoint (RNG seeded from the run seed and the id).
async fn impaired_device(
    c: &Cluster,
    id: u64,
    available: bool,
    imp: Impairment,
    seed: u64,
    tune: impl FnOnce(&mut EdgeConfig),
) -> anyhow::Result<Device> {
    let (endpoint, handle) = client_endpoint(
        "127.0.0.1:0".parse()?,
        imp,
        seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )?;
    let mut cfg = c.device_config(id, available, c.addrs());
    cfg.endpoint = Some(endpoint);
    tune(&mut cfg);
    Ok(Device {
        client: EdgeClient::start(cfg).await?,
        handle,
    })
}

/// Failure detection and connection set-up sized for a very bad link.
fn patient(cfg: &mut EdgeConfig) {
    cfg.keep_alive = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(10);
    cfg.connect_timeout = Duration::from_secs(10);
}

/// S8: packet loss 30% (each direction), duplication, reordering and up to 500 ms one-way
/// delay on every device's link. Trips are slower; nothing is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_lossy_duplicating_reordering_slow_link_is_slower_but_never_wrong() -> anyhow::Result<()>
{
    let seed = seed();
    let run = async {
        // CI: three short trips; most datagrams are delayed 20-100 ms and one copy in ten is
        // held back 400 ms more (reordered), so delays reach 500 ms. LIFEBOAT_SOAK=1: eight
        // longer trips with every datagram delayed 100-450 ms (+50 ms when reordered).
        let soak = std::env::var_os("LIFEBOAT_SOAK").is_some();
        let (pairs, steps): (u64, u32) = if soak { (8, 20) } else { (3, 2) };
        let bad = if soak {
            Impairment::none()
                .with_reorder(0.1, Duration::from_millis(50))
                .with_delay(Duration::from_millis(100), Duration::from_millis(350))
        } else {
            Impairment::none()
                .with_reorder(0.1, Duration::from_millis(400))
                .with_delay(Duration::from_millis(20), Duration::from_millis(80))
        }
        .with_loss(0.3)
        .with_duplicate(0.1);
        let mut c = Cluster::new(1, &[])?;
        c.start(0)?;
        let t0 = Instant::now();
        // Everyone connects at once; riders request once every driver is connected.
        let mut drivers = Vec::new();
        let mut riders = Vec::new();
        for i in 0..pairs {
            drivers.push(impaired_device(&c, 1000 + i, true, bad, seed, patient).await?);
            riders.push(impaired_device(&c, 1 + i, false, bad, seed, patient).await?);
        }
        for d in &drivers {
            ensure!(
                d.client
                    .wait_connected(Duration::from_secs(30))
                    .await
                    .is_some(),
                "driver {} did not connect over the lossy link",
                d.client.device()
            );
        }
        let connected = t0.elapsed();
        let requests: Vec<_> = riders
            .iter()
            .map(|r| {
                let r = r.client.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(WAIT, r.request_trip(PICKUP, route_point(50))).await
                })
            })
            .collect();
        let progress = Arc::new(AtomicU64::new(0));
        let drives: Vec<_> = drivers
            .iter()
            .map(|d| {
                tokio::spawn(drive(
                    d.client.clone(),
                    steps,
                    progress.clone(),
                    Duration::from_millis(20),
                ))
            })
            .collect();
        for r in requests {
            r.await?.context("trip request timed out")??;
        }
        let mut ledgers = Vec::new();
        for d in drives {
            ledgers.push(d.await??);
        }
        for r in &riders {
            wait_for_session(&r.client, WAIT, |s| s.finished).await?;
        }
        let took = t0.elapsed();
        let stored = c.stop_and_read(0)?;
        check_against_store(&ledgers, &stored)?;
        ensure!(ledgers.len() == pairs as usize && ledgers.iter().all(|l| l.completed()));
        let all: Vec<ImpairStats> = drivers
            .iter()
            .chain(riders.iter())
            .map(|d| d.handle.stats())
            .collect();
        let s = ImpairStats::sum(&all).total();
        // The link really was that bad.
        ensure!(
            s.dropped > 0 && s.duplicated > 0 && s.reordered > 0 && s.delayed > 0,
            "the impairment did not act: {s:?}"
        );
        let loss = s.dropped as f64 / s.offered.max(1) as f64;
        ensure!(
            (0.15..=0.45).contains(&loss),
            "loss rate {loss:.2} far from 0.3 over {} datagrams",
            s.offered
        );
        eprintln!(
            "S8 seed {seed}: drivers connected in {:.1} s, {pairs} trips of {steps} locations \
             done in {:.1} s; datagrams {} offered, {} dropped ({:.0}%), {} duplicated, \
             {} reordered, {} delayed",
            connected.as_secs_f64(),
            took.as_secs_f64(),
            s.offered,
            s.dropped,
            loss * 100.0,
            s.duplicated,
            s.reordered,
            s.delayed
        );
        anyhow::Ok(())
    };
    run.await.with_context(|| {
        format!("S8 failed with seed {seed} (replay: LIFEBOAT_SEED={seed} cargo test -p lifeboat-chaos --test network_faults)")
    })
}

/// A partition: the driver's path is cut for 3 s mid-trip (long enough for its connection to
/// die), then repaired. It reconnects, its queued ops go through, nothing committed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_a_driver_cut_off_for_seconds_mid_trip_reconnects_and_loses_no_committed_op(
) -> anyhow::Result<()> {
    let seed = seed();
    let run = async {
        let mut c = Cluster::new(1, &[])?;
        c.start(0)?;
        let driver = impaired_device(&c, 1000, true, Impairment::none(), seed, |_| {}).await?;
        ensure!(driver
            .client
            .wait_connected(Duration::from_secs(10))
            .await
            .is_some());
        let mut events = driver.client.subscribe();
        let disconnects = Arc::new(AtomicU64::new(0));
        let watcher = {
            let disconnects = disconnects.clone();
            tokio::spawn(async move {
                // Ends when the client's event channel closes, or is aborted below.
                loop {
                    match events.recv().await.map(|t| t.event) {
                        Ok(ClientEvent::Disconnected { .. }) => {
                            disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        let rider = c.device(1, false).await?;
        rider.request_trip(PICKUP, route_point(50)).await?;
        let progress = Arc::new(AtomicU64::new(0));
        let trip = tokio::spawn(drive(
            driver.client.clone(),
            30,
            progress.clone(),
            Duration::from_millis(50),
        ));
        wait_progress(&progress, 5).await?;

        let partition = driver.handle.partition().clone();
        partition.cut_all();
        let at_cut = progress.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let at_repair = progress.load(Ordering::Relaxed);
        partition.repair_all();
        // A reply already inside the client when the cut began may still count; no more.
        ensure!(
            at_repair <= at_cut + 1,
            "ops committed through a cut path: {at_cut} -> {at_repair}"
        );

        let ledger = trip.await??;
        wait_for_session(&rider, WAIT, |s| s.finished).await?;
        let stored = c.stop_and_read(0)?;
        check_against_store(std::slice::from_ref(&ledger), &stored)?;
        ensure!(ledger.completed() && ledger.locations_committed() == 30);
        let s = driver.handle.stats().total();
        ensure!(s.blackholed > 0, "nothing was blackholed: {s:?}");
        watcher.abort();
        let lost_connection = disconnects.load(Ordering::Relaxed);
        ensure!(
            lost_connection >= 1,
            "the cut never broke the connection (no Disconnected event)"
        );
        eprintln!(
            "partition seed {seed}: {} datagrams blackholed, {lost_connection} disconnects",
            s.blackholed
        );
        anyhow::Ok(())
    };
    run.await
        .with_context(|| format!("partition test failed with seed {seed}"))
}

/// A planned failover over lossy links: the devices connect and a trip is assigned on clean
/// links, then every device's link starts dropping 30% of the datagrams and dc1 gets
/// SIGTERM. Each device must be *told* where to go (its drain order may need a
/// retransmission, so dc1 may not close before the order got through or the device left),
/// and the trip goes on at dc2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_over_lossy_links_tells_every_device_before_the_datacenter_stops(
) -> anyhow::Result<()> {
    let seed = seed();
    let run = async {
        let clean = Impairment::none();
        let lossy = Impairment::none().with_loss(0.3);
        let mut c = Cluster::new(2, &[])?;
        c.start(0)?;
        c.start(1)?;
        let driver = impaired_device(&c, 1000, true, clean, seed, patient).await?;
        let rider = impaired_device(&c, 1, false, clean, seed, patient).await?;
        // Two idle riders: no trip, told all the same (no second driver: the trip is
        // this driver's).
        let idle = [
            impaired_device(&c, 2, false, clean, seed, patient).await?,
            impaired_device(&c, 3, false, clean, seed, patient).await?,
        ];
        let all: Vec<&Device> = [&driver, &rider].into_iter().chain(idle.iter()).collect();
        for d in &all {
            let at = d.client.wait_connected(WAIT).await;
            ensure!(
                at == Some(lifeboat_common::DatacenterId(1)),
                "{} did not connect to dc1 (connected to {at:?})",
                d.client.device()
            );
        }
        let (session, _) =
            tokio::time::timeout(WAIT, rider.client.request_trip(PICKUP, route_point(20)))
                .await
                .context("trip request timed out")??;
        ensure!(lifeboat_tests::wait_for_assignment(&driver.client, WAIT).await? == session);
        // Each device's own account of how its connection to dc1 ended (for a failure).
        let mut events: Vec<_> = all.iter().map(|d| d.client.subscribe()).collect();
        for d in &all {
            d.handle.set_impairment(lossy)?;
        }
        tokio::task::block_in_place(|| c.terminate(0))?;
        let log = c.log(0);
        ensure!(log.contains("draining: moving every device"), "{log}");
        let clients: Vec<EdgeClient> = all.iter().map(|d| d.client.clone()).collect();
        lifeboat_tests::wait_all_on(&clients, 2, WAIT).await?;
        for (d, ev) in all.iter().zip(events.iter_mut()) {
            let mut ended = Vec::new();
            while let Ok(t) = ev.try_recv() {
                if let ClientEvent::Disconnected { reason, .. } = t.event {
                    ended.push(reason);
                }
            }
            ensure!(
                d.client.stats().drained == 1,
                "{} was not told to move (it found out by itself: {ended:?}): {:?}\ndc1's log:\n{}",
                d.client.device(),
                d.client.stats(),
                c.log(0)
            );
        }
        lifeboat_tests::trips::submit(&driver.client, session, lifeboat_common::TripOp::Arrived)
            .await?;
        let s = ImpairStats::sum(&all.iter().map(|d| d.handle.stats()).collect::<Vec<_>>()).total();
        ensure!(s.dropped > 0, "the impairment did not act: {s:?}");
        eprintln!(
            "lossy drain seed {seed}: every device told; {} of {} datagrams dropped",
            s.dropped, s.offered
        );
        anyhow::Ok(())
    };
    run.await.with_context(|| {
        format!("lossy drain failed with seed {seed} (replay: LIFEBOAT_SEED={seed} cargo test -p lifeboat-chaos --test network_faults)")
    })
}
