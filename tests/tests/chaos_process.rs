//! The real-process chaos suite: `lifeboat-server` processes on loopback and devices, some in
//! processes of their own, hit with real signals and real damage to real disks. Together with
//! `failover.rs` (S1-S4, S9, S10, S12), `hostile.rs` (S11) and `key_rotation.rs` (S14) it
//! covers the catalogue; `docs/CHAOS-process.md` has the table.
//!
//! Datacenter faults: SIGSTOP/SIGCONT (a frozen datacenter), restart with the data directory
//! deleted, restart on a damaged store (unreadable, or with its log cut short), a second
//! process on a data directory in use, and a seeded mix of all of these on either datacenter
//! (flapping). Device faults: the driver's app SIGKILLed mid-trip and restarted on its store,
//! the rider's app reinstalled (store wiped) during a failover, a device offline in a tunnel
//! through a failover, a frozen app during a dispatch under edge-ack durability.
//!
//! Every test checks the surviving datacenters' own stores against what the devices were
//! told was committed: no committed op lost (C1), none applied twice (C2), no version
//! regressed (C3). Randomised tests print their seed; `LIFEBOAT_SEED=<seed>` replays one.

use anyhow::{ensure, Context};
use lifeboat_common::edge::EdgeEvent;
use lifeboat_common::trip::TripOpKind as OpKind;
use lifeboat_common::{DatacenterId, SessionId, TripOp, TripPhase, VersionVector};
use lifeboat_edge::{ClientEvent, EdgeClient};
use lifeboat_server::process::{free_udp_port, DcProcess};
use lifeboat_tests::check::{
    check_against_store, ledger_from_lives, newest_copies, summarize, Life, VersionWatch,
};
use lifeboat_tests::dc_faults::StoreDamage;
use lifeboat_tests::device_process::{wipe_store, DeviceProcess, DeviceSpawn, Report};
use lifeboat_tests::seed::{seed_for, with_seed};
use lifeboat_tests::trips::{
    collect, drive, fleet, request_and_drive, run_trips, submit, wait_progress, TripLedger,
    OP_TIMEOUT, WAIT,
};
use lifeboat_tests::tunnel;
use lifeboat_tests::{
    route_point, wait_all_on, wait_for_assignment, wait_for_session, Cluster, PICKUP,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The device process binary, built by cargo with this test.
const DEVICE_BIN: &str = env!("CARGO_BIN_EXE_lifeboat-chaos-device");

fn lock(c: &Mutex<Cluster>) -> anyhow::Result<MutexGuard<'_, Cluster>> {
    c.lock()
        .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))
}

/// SIGSTOP: the primary freezes mid-traffic. The devices detect the silence (their idle
/// timeout) and fail over to the backup; traffic goes on there. On SIGCONT the primary wakes
/// up believing its in-memory copies are current, with packets from before the freeze still
/// in its socket. The devices move back to it (it is the preferred datacenter) and bring
/// their newer copies: no device ever holds an older version than before (the watch), and
/// the primary ends with every committed op exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_primary_sigstop_devices_fail_over_and_the_thawed_primary_rolls_nothing_back(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let f = fleet(&c, 3).await?;
    let everyone = f.everyone();
    let watch = VersionWatch::start(everyone.clone(), Duration::from_millis(50));
    let c = Arc::new(Mutex::new(c));
    let (progress, tasks) = request_and_drive(&f, 120, Duration::from_millis(40)).await?;
    wait_progress(&progress, 3 * 5).await?;
    lock(&c)?.freeze(0)?;
    let frozen_at = progress.load(Ordering::Relaxed);
    wait_all_on(&everyone, 2, Duration::from_secs(15))
        .await
        .context("failover away from the frozen primary")?;
    wait_progress(&progress, frozen_at + 3 * 5).await?;
    lock(&c)?.thaw(0)?;
    let outcome = async {
        wait_all_on(&everyone, 1, Duration::from_secs(20))
            .await
            .context("return to the thawed primary")?;
        collect(tasks).await
    }
    .await;
    let timeline = watch.timeline();
    let ledgers = outcome.with_context(|| format!("timeline:\n  {timeline}"))?;
    watch.finish().await?;
    let stored = lock(&c)?.stop_and_read(0)?;
    check_against_store(&ledgers, &stored)
}

/// The only datacenter is SIGKILLed and its data directory deleted; it restarts empty on the
/// same address. Every trip comes back from the devices, and the restarted datacenter seals
/// with a new version-vector slot (it can never reissue a version it made before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenter_restarts_with_its_data_dir_deleted_and_restores_every_trip_from_the_edges(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let f = fleet(&c, 3).await?;
    let c = Mutex::new(c);
    let ledgers = run_trips(&f, 25, 3 * 6, || {
        let mut c = lock(&c)?;
        c.kill(0, true)?;
        Ok(c.start(0)?)
    })
    .await?;
    let stored = lock(&c)?.stop_and_read(0)?;
    check_against_store(&ledgers, &stored)?;
    for (h, _) in &stored {
        ensure!(
            h.version.entries().len() >= 2,
            "trip {} continued after the restart without a new slot: {}",
            h.session,
            h.version
        );
    }
    Ok(())
}

/// The datacenter is SIGKILLed and its store's `conf` garbled, so sled cannot open it.
/// With `--unreadable-store refuse` it exits with a clear error and leaves the store as it
/// is; restarted with the default policy it moves the store aside
/// (`<dir>.corrupt-<unix-ms>`), says so loudly, starts empty and gets every trip back from
/// the devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenter_restarts_on_an_unreadable_store_refuses_or_moves_it_aside_and_restores(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let f = fleet(&c, 3).await?;
    let (progress, tasks) = request_and_drive(&f, 40, Duration::from_millis(30)).await?;
    wait_progress(&progress, 3 * 5).await?;
    c.kill(0, false)?;
    c.damage_store(0, StoreDamage::GarbledConf)?;
    let conf = std::fs::read(c.specs[0].data_dir.join("conf"))?;
    let refused = c.start_with_args(0, &["--unreadable-store", "refuse"]);
    ensure!(
        refused.is_err(),
        "started on an unreadable store with the refuse policy"
    );
    let log = c.log(0);
    ensure!(
        log.contains("is unreadable") && log.contains("left untouched"),
        "no clear error in the log:\n{log}"
    );
    ensure!(
        std::fs::read(c.specs[0].data_dir.join("conf"))? == conf,
        "the refused store was changed"
    );
    ensure!(
        c.moved_aside_stores(0)?.is_empty(),
        "moved aside under refuse"
    );
    c.start(0)?;
    let log = c.log(0);
    ensure!(
        log.contains("STORE UNREADABLE: moving it aside"),
        "no loud error in the log:\n{log}"
    );
    let aside = c.moved_aside_stores(0)?;
    ensure!(
        aside.len() == 1,
        "expected one moved-aside store: {aside:?}"
    );
    ensure!(
        std::fs::read(aside[0].join("conf"))? == conf,
        "the damaged store is kept as it was"
    );
    let ledgers = collect(tasks).await?;
    let stored = c.stop_and_read(0)?;
    check_against_store(&ledgers, &stored)
}

/// The datacenter is SIGKILLed and the tail of its store's log cut off. sled recovers the
/// longest valid prefix without a word, so the datacenter restarts on an older copy of its
/// own data with its old version-vector slot: a stale disk. The devices' newer copies win;
/// nothing committed is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenter_restarts_on_a_store_with_its_log_cut_short_and_loses_nothing(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let f = fleet(&c, 3).await?;
    let (progress, tasks) = request_and_drive(&f, 40, Duration::from_millis(30)).await?;
    wait_progress(&progress, 3 * 8).await?;
    c.kill(0, false)?;
    c.damage_store(0, StoreDamage::TruncatedLog { keep_percent: 40 })?;
    c.start(0)?;
    let ledgers = collect(tasks).await?;
    let stored = c.stop_and_read(0)?;
    check_against_store(&ledgers, &stored)
}

/// A second datacenter process is started on a data directory that a running one uses (a
/// supervisor restarting too early, a wrong unit file). sled's lock refuses it; that is an
/// I/O error, not a damaged store, so the second process exits with a clear error and the
/// running datacenter's store is not touched. (Before the fix it was moved aside from under
/// the running datacenter, and the second process served an empty store in its place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_datacenter_on_a_data_dir_in_use_is_refused_and_the_live_store_stays(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let f = fleet(&c, 2).await?;
    let (progress, tasks) = request_and_drive(&f, 30, Duration::from_millis(30)).await?;
    wait_progress(&progress, 2 * 3).await?;
    let mut twin = c.specs[0].clone();
    twin.listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    twin.log_file = c.path().join("dc1-twin.log");
    let started = DcProcess::spawn(twin.clone());
    ensure!(
        started.is_err(),
        "a second datacenter started on a store in use"
    );
    let log = std::fs::read_to_string(&twin.log_file)?;
    ensure!(
        log.contains("no other datacenter process uses this --data-dir"),
        "no clear error in the log:\n{log}"
    );
    ensure!(
        c.moved_aside_stores(0)?.is_empty(),
        "the live store was moved"
    );
    let ledgers = collect(tasks).await?;
    let stored = c.stop_and_read(0)?;
    check_against_store(&ledgers, &stored)
}

/// The newest version among a life's `Committed` reports.
fn newest_committed(reports: &[Report]) -> Option<VersionVector> {
    reports
        .iter()
        .filter_map(|r| match r {
            Report::Committed { op, version, .. } => Some((op.seq, version.clone())),
            _ => None,
        })
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, v)| v)
}

/// The driver's app is SIGKILLed twice mid-trip (an op in flight each time, killed a seeded
/// moment after it was submitted: before it reached the disk, between disk and datacenter,
/// or after its commit) and restarted on the same store; the first time, the primary may die
/// too while the app is down. After each restart the device holds the trip at a version no
/// older than any it was told was committed, the op that was in flight is replayed from the
/// store and applied once, and the datacenter ends with exactly the committed location ops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_app_killed_mid_trip_restarts_on_its_store_nothing_lost_or_applied_twice(
) -> anyhow::Result<()> {
    let name = "driver_app_killed_mid_trip_restarts_on_its_store_nothing_lost_or_applied_twice";
    let seed = seed_for(name);
    with_seed(seed, name, driver_app_killed(seed).await)
}

/// Driver 1000 in a process of its own, connected, and assigned the trip that rider 1 (an
/// in-process client) just requested.
async fn driver_process_assigned_a_trip(
    c: &Cluster,
) -> anyhow::Result<(DeviceSpawn, DeviceProcess, EdgeClient, SessionId)> {
    let spec = DeviceSpawn::new(DEVICE_BIN.into(), c, 1000, true);
    let mut driver = DeviceProcess::spawn(spec.clone()).await?;
    driver
        .wait_for(WAIT, "connected", |r| {
            matches!(r, Report::Connected { .. }).then_some(())
        })
        .await?;
    let rider = c.device(1, false).await?;
    let (session, _) =
        tokio::time::timeout(OP_TIMEOUT, rider.request_trip(PICKUP, route_point(50)))
            .await
            .context("trip request")??;
    driver
        .wait_for_session(WAIT, |h| {
            h.session == session && h.phase == TripPhase::Assigned
        })
        .await?;
    Ok((spec, driver, rider, session))
}

async fn driver_app_killed(seed: u64) -> anyhow::Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let (spec, mut driver, rider, session) = driver_process_assigned_a_trip(&c).await?;
    let mut lives = Vec::new();
    let mut asked: HashMap<u64, TripOp> = HashMap::new();
    let mut k = 0u32;
    let ask = |driver: &mut DeviceProcess,
               asked: &mut HashMap<u64, TripOp>,
               op: TripOp|
     -> anyhow::Result<u64> {
        let tag = driver.submit(session, op.clone())?;
        asked.insert(tag, op);
        Ok(tag)
    };
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        let tag = ask(&mut driver, &mut asked, op)?;
        driver.wait_committed(tag, OP_TIMEOUT).await?;
    }
    let mut dc1_down = false;
    for life in 0..2 {
        for _ in 0..rng.random_range(2..6) {
            k += 1;
            let tag = ask(
                &mut driver,
                &mut asked,
                TripOp::Location { at: route_point(k) },
            )?;
            driver.wait_committed(tag, OP_TIMEOUT).await?;
        }
        k += 1;
        ask(
            &mut driver,
            &mut asked,
            TripOp::Location { at: route_point(k) },
        )?;
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..20_000))).await;
        let reports = driver.kill().await?;
        let last_committed = newest_committed(&reports).context("no commit in this life")?;
        lives.push(Life {
            asked: std::mem::take(&mut asked),
            reports,
        });
        if life == 0 && rng.random_bool(0.5) {
            let lose_disk = rng.random_bool(0.5);
            eprintln!("dc1 killed while the app is down (disk lost: {lose_disk})");
            c.kill(0, lose_disk)?;
            dc1_down = true;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..800))).await;
        driver = DeviceProcess::spawn(spec.clone()).await?;
        let held = driver
            .wait_for_session(WAIT, |h| h.session == session)
            .await?;
        ensure!(
            held.version.covers(&last_committed),
            "after restart {life} the device holds {} but was told {last_committed} was committed",
            held.version
        );
    }
    for _ in 0..3 {
        k += 1;
        let tag = ask(
            &mut driver,
            &mut asked,
            TripOp::Location { at: route_point(k) },
        )?;
        driver.wait_committed(tag, OP_TIMEOUT).await?;
    }
    let tag = ask(&mut driver, &mut asked, TripOp::Complete)?;
    driver.wait_committed(tag, OP_TIMEOUT).await?;
    wait_for_session(&rider, WAIT, |s| s.session == session && s.finished).await?;
    lives.push(Life {
        asked,
        reports: driver.shutdown().await?,
    });
    let account = summarize(&lives);
    let checked = async {
        let in_flight = TripOp::Location { at: route_point(0) };
        let ledger = ledger_from_lives(session, &lives, &in_flight)?;
        ensure!(ledger.completed(), "the trip was not completed");
        let mut stored = Vec::new();
        if !dc1_down {
            stored.extend(c.stop_and_read(0)?);
        }
        stored.extend(c.stop_and_read(1)?);
        check_against_store(&[ledger], &newest_copies(stored))
    }
    .await;
    checked.with_context(|| format!("the driver's lives:{account}"))
}

/// S6 with S1: the rider's app is killed and reinstalled (its store wiped) while the primary
/// dies with its disk. The driver alone restores the trip at the backup and goes on; the
/// reinstalled rider, holding nothing, is sent its trip by the backup and sees it finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_reinstalled_rider_gets_its_trip_back_from_the_driver_through_a_failover(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let driver = c.device(1000, true).await?;
    ensure!(driver
        .wait_connected(Duration::from_secs(10))
        .await
        .is_some());
    let spec = DeviceSpawn::new(DEVICE_BIN.into(), &c, 1, false);
    let mut rider = DeviceProcess::spawn(spec.clone()).await?;
    let session = SessionId(rand::random::<u64>() | 1);
    let request = TripOp::Request {
        pickup: PICKUP,
        dropoff: route_point(50),
    };
    rider.submit_wait(session, request, OP_TIMEOUT).await?;
    const STEPS: u32 = 150;
    let progress = Arc::new(AtomicU64::new(0));
    let trip = tokio::spawn(drive(
        driver.clone(),
        STEPS,
        progress.clone(),
        Duration::from_millis(40),
    ));
    wait_progress(&progress, 5).await?;
    rider.kill().await?;
    wipe_store(&spec)?;
    c.kill(0, true)?;
    let at_kill = progress.load(Ordering::Relaxed);
    wait_progress(&progress, at_kill + 5)
        .await
        .context("the trip goes on at the backup with the driver alone")?;
    // The datacenter re-syncs a participant's active sessions only: the trip must still run.
    ensure!(
        progress.load(Ordering::Relaxed) + 20 < u64::from(STEPS),
        "the trip was nearly over before the rider came back"
    );
    let mut rider = DeviceProcess::spawn(spec.clone()).await?;
    let empty = rider
        .wait_for(WAIT, "ready", |r| match r {
            Report::Ready { sessions } => Some(*sessions),
            _ => None,
        })
        .await?;
    ensure!(empty == 0, "the reinstalled rider's store was not empty");
    rider
        .wait_for_session(WAIT, |h| h.session == session)
        .await
        .context("the backup did not send the reinstalled rider its trip")?;
    let ledger = trip.await??;
    rider
        .wait_for_session(WAIT, |h| h.session == session && h.finished)
        .await?;
    rider.shutdown().await?;
    let stored = c.stop_and_read(1)?;
    check_against_store(&[ledger], &stored)
}

/// S7: the driver goes into a tunnel (its network path cut both ways; the app keeps running
/// and queues three ops it cannot send). Meanwhile the primary dies with its disk, the rider
/// restores the trip at the backup and the restore grace runs out without the driver. Out of
/// the tunnel, the driver rejoins at the backup with its older copy; its queued ops are
/// applied once each and the trip finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_driver_offline_through_the_failover_queues_ops_and_rejoins_at_the_backup(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let paths = [
        tunnel::Path::open(c.addrs()[0]).await?,
        tunnel::Path::open(c.addrs()[1]).await?,
    ];
    let driver = c
        .device_with(1000, true, paths.iter().map(|p| p.addr).collect())
        .await?;
    ensure!(driver
        .wait_connected(Duration::from_secs(10))
        .await
        .is_some());
    let rider = c.device(1, false).await?;
    let (session, _) =
        tokio::time::timeout(OP_TIMEOUT, rider.request_trip(PICKUP, route_point(50)))
            .await
            .context("trip request")??;
    ensure!(wait_for_assignment(&driver, WAIT).await? == session);
    let mut ledger = TripLedger::new(session, driver.device());
    let mut k = 0u32;
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        let kind = OpKind::from(&op);
        ledger.commit(kind, &submit(&driver, session, op).await?);
    }
    for _ in 0..5 {
        k += 1;
        let op = TripOp::Location { at: route_point(k) };
        ledger.commit(OpKind::Location, &submit(&driver, session, op).await?);
    }
    for p in &paths {
        p.cut();
    }
    let mut queued = Vec::new();
    for _ in 0..3 {
        k += 1;
        let op = TripOp::Location { at: route_point(k) };
        queued.push(driver.enqueue(session, op).await?.1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.kill(0, true)?;
    wait_all_on(std::slice::from_ref(&rider), 2, Duration::from_secs(15)).await?;
    // Past the backup's restore grace (2 s): the trip was restored without the driver.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    ensure!(
        driver.connected_dc().is_none(),
        "the driver was not offline"
    );
    for p in &paths {
        p.restore();
    }
    for done in queued {
        let commit = tokio::time::timeout(OP_TIMEOUT, done)
            .await
            .context("a queued op got no answer after the tunnel")?
            .context("the client stopped")??;
        ledger.commit(OpKind::Location, &commit);
    }
    for _ in 0..3 {
        k += 1;
        let op = TripOp::Location { at: route_point(k) };
        ledger.commit(OpKind::Location, &submit(&driver, session, op).await?);
    }
    let done = submit(&driver, session, TripOp::Complete).await?;
    ledger.commit(OpKind::Complete, &done);
    wait_for_session(&rider, WAIT, |s| s.session == session && s.finished).await?;
    ensure!(
        paths.iter().map(|p| p.dropped()).sum::<u64>() > 0,
        "nothing was dropped in the tunnel"
    );
    let stored = c.stop_and_read(1)?;
    check_against_store(&[ledger], &stored)
}

/// S5 under edge-ack:2: the driver's app is frozen (SIGSTOP) when dispatch assigns it a trip,
/// so only the rider acknowledges the assignment. The rider holds the hand-over as committed
/// (its own persisting is what commits it, docs/PROTOCOL.md), but the datacenter's two-ack
/// count is never reached, so nobody is told the server-side change reached its quorum. The
/// primary then dies with its disk. Whatever the backup makes of the trip, every
/// server-side change the rider was told was committed is in the backup's store, and the
/// thawed driver drives the trip to the end there. (Before the chain rule the rider held the
/// assignment as not committed; the expectation changed with the meaning of `committed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_edge_ack_dispatch_cut_off_by_the_kill_was_never_reported_committed(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &["--durability", "edge-ack:2"])?;
    c.start(0)?;
    c.start(1)?;
    let mut driver =
        DeviceProcess::spawn(DeviceSpawn::new(DEVICE_BIN.into(), &c, 1000, true)).await?;
    driver
        .wait_for(WAIT, "connected", |r| {
            matches!(r, Report::Connected { .. }).then_some(())
        })
        .await?;
    let rider = c.device(1, false).await?;
    let committed_changes: Arc<Mutex<Vec<(SessionId, VersionVector)>>> = Arc::default();
    let listener = {
        let mut events = rider.subscribe();
        let committed_changes = committed_changes.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await.map(|t| t.event) {
                if let ClientEvent::Session(EdgeEvent::ServerChangeCommitted { session, version }) =
                    e
                {
                    if let Ok(mut v) = committed_changes.lock() {
                        v.push((session, version));
                    }
                }
            }
        })
    };
    // dc1 still counts the frozen driver connected and available (its idle timeout is 5 s).
    driver.freeze()?;
    let (session, _) =
        tokio::time::timeout(OP_TIMEOUT, rider.request_trip(PICKUP, route_point(50)))
            .await
            .context("trip request")??;
    let assigned = wait_for_session(&rider, Duration::from_secs(4), |s| {
        s.session == session && s.view.phase == TripPhase::Assigned
    })
    .await
    .context("dispatch did not assign the frozen driver")?;
    ensure!(
        assigned.committed,
        "the rider persisted the hand-over: it is on the chain"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = rider
        .sessions()
        .await?
        .into_iter()
        .find(|s| s.session == session)
        .context("the rider lost its trip")?;
    ensure!(still.committed, "the rider's copy stays committed");
    let told = committed_changes
        .lock()
        .map(|v| v.iter().any(|(s, _)| *s == session))
        .map_err(|_| anyhow::anyhow!("lock"))?;
    ensure!(
        !told,
        "the rider was told the dispatch reached its two-ack quorum"
    );
    c.kill(0, true)?;
    driver.thaw()?;
    let held = driver
        .wait_for_session(WAIT, |h| {
            h.session == session && h.phase == TripPhase::Assigned && !h.finished
        })
        .await
        .context("the trip did not reach the driver at the backup")?;
    let mut asked = HashMap::new();
    let mut ops = vec![TripOp::Arrived, TripOp::StartTrip];
    ops.extend((1..=3).map(|k| TripOp::Location { at: route_point(k) }));
    ops.push(TripOp::Complete);
    for op in ops {
        let tag = driver.submit(session, op.clone())?;
        asked.insert(tag, op);
        driver.wait_committed(tag, OP_TIMEOUT).await?;
    }
    wait_for_session(&rider, WAIT, |s| s.session == session && s.finished).await?;
    let ledger = ledger_from_lives(
        session,
        &[Life {
            asked,
            reports: driver.shutdown().await?,
        }],
        &TripOp::Complete,
    )?;
    let stored = c.stop_and_read(1)?;
    check_against_store(&[ledger], &stored)?;
    listener.abort();
    let (header, _) = stored
        .iter()
        .find(|s| s.0.session == session)
        .context("trip lost")?;
    ensure!(header.version.covers(&held.version));
    for (s, v) in committed_changes
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .iter()
    {
        ensure!(
            *s != session || header.version.covers(v),
            "a committed server-side change {v} is not in the store ({})",
            header.version
        );
    }
    Ok(())
}

/// One fault of the flapping test.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill { lose_disk: bool },
    Freeze,
    DamagedRestart(StoreDamage),
}

/// S9 and more: a seeded sequence of faults, one datacenter at a time, either one: SIGKILL
/// (disk kept or lost) and restart, SIGSTOP and SIGCONT (short freezes are hiccups under the
/// idle timeout, long ones failovers), restart on a damaged store. Devices flap between the
/// datacenters while three trips run. No device's version ever goes back, and the newest
/// copies across both datacenters hold every committed op exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_flapping_seeded_kills_freezes_and_damaged_restarts_of_either_datacenter(
) -> anyhow::Result<()> {
    let name = "s9_flapping_seeded_kills_freezes_and_damaged_restarts_of_either_datacenter";
    let seed = seed_for(name);
    with_seed(seed, name, flapping(seed).await)
}

async fn flapping(seed: u64) -> anyhow::Result<()> {
    const PAIRS: u64 = 3;
    const STEPS: u32 = 200;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let f = fleet(&c, PAIRS).await?;
    let watch = VersionWatch::start(f.everyone(), Duration::from_millis(50));
    let (progress, tasks) = request_and_drive(&f, STEPS, Duration::from_millis(30)).await?;
    let total = PAIRS * u64::from(STEPS);
    let mut faults = Vec::new();
    for _ in 0..4 {
        let now = progress.load(Ordering::Relaxed);
        if now + 3 * PAIRS * 10 > total {
            break; // the trips are nearly done: faults now would test nothing
        }
        wait_progress(&progress, now + PAIRS).await?;
        let dc = rng.random_range(0..2usize);
        let fault = match rng.random_range(0..6) {
            0 => Fault::Kill { lose_disk: false },
            1 => Fault::Kill { lose_disk: true },
            2 | 3 => Fault::Freeze,
            4 => Fault::DamagedRestart(StoreDamage::GarbledConf),
            _ => Fault::DamagedRestart(StoreDamage::TruncatedLog {
                keep_percent: rng.random_range(10..90),
            }),
        };
        let down = Duration::from_millis(rng.random_range(300..2_500));
        eprintln!("dc{}: {fault:?} for {down:?}", dc + 1);
        faults.push((dc + 1, fault, down));
        match fault {
            Fault::Kill { lose_disk } => {
                c.kill(dc, lose_disk)?;
                tokio::time::sleep(down).await;
                c.start(dc)?;
            }
            Fault::Freeze => {
                c.freeze(dc)?;
                tokio::time::sleep(down).await;
                c.thaw(dc)?;
            }
            Fault::DamagedRestart(damage) => {
                c.kill(dc, false)?;
                c.damage_store(dc, damage)?;
                tokio::time::sleep(down).await;
                c.start(dc)?;
            }
        }
    }
    let outcome = async {
        let ledgers = collect(tasks).await?;
        watch.finish().await?;
        let mut stored = c.stop_and_read(0)?;
        stored.extend(c.stop_and_read(1)?);
        check_against_store(&ledgers, &newest_copies(stored))
    }
    .await;
    outcome.with_context(|| format!("faults (dc, fault, time down): {faults:?}"))
}

/// S13: a partition between the sites while the trip waits for its driver. The rider can
/// reach only the backup, the driver only the primary (each device's path to the other
/// datacenter cut). The driver (the anchor) arrives at the primary: committed. The rider,
/// restored at the backup, cancels there: the backup applies it, but it cannot commit
/// without the anchor, so the rider's app is told it waits and nothing is reported. When the
/// partition heals the rider goes home; its branch gives way to the chain, its cancel is
/// sent again, applied once on the chain, and committed. Only one site ever committed; the
/// driver's acknowledged arrival is kept. (Before the chain rule both sides committed and the
/// conflict was surfaced: this test asserted that. The contract now forbids it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_split_partners_on_two_sites_only_the_anchors_side_commits_the_other_waits(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let mut paths = Vec::new();
    for _device in 0..2 {
        paths.push([
            tunnel::Path::open(c.addrs()[0]).await?,
            tunnel::Path::open(c.addrs()[1]).await?,
        ]);
    }
    let [rider_paths, driver_paths] = [&paths[0], &paths[1]];
    let driver = c
        .device_with(1000, true, driver_paths.iter().map(|p| p.addr).collect())
        .await?;
    ensure!(driver.wait_connected(Duration::from_secs(10)).await == Some(DatacenterId(1)));
    let rider = c
        .device_with(1, false, rider_paths.iter().map(|p| p.addr).collect())
        .await?;
    let mut rider_events = rider.subscribe();
    let (session, _) =
        tokio::time::timeout(OP_TIMEOUT, rider.request_trip(PICKUP, route_point(50)))
            .await
            .context("trip request")??;
    ensure!(wait_for_assignment(&driver, WAIT).await? == session);
    // The hand-over is done once the rider persisted the assignment and the primary told
    // the driver: from then on the driver holds the chain.
    wait_for_session(&driver, WAIT, |s| s.session == session && s.committed)
        .await
        .context("the driver never held the assignment as committed")?;
    // The partition: the rider loses the primary, the driver the backup.
    rider_paths[0].cut();
    driver_paths[1].cut();
    wait_all_on(std::slice::from_ref(&rider), 2, Duration::from_secs(15)).await?;
    let arrived = submit(&driver, session, TripOp::Arrived).await?;
    let (cancel, cancelled) = rider.enqueue(session, TripOp::Cancel).await?;
    tokio::pin!(cancelled);
    // The rider is told why it waits, and nothing is reported while the sites are apart.
    let start = Instant::now();
    let mut waiting = false;
    while start.elapsed() < Duration::from_secs(4) {
        match rider_events.try_recv().map(|t| t.event) {
            Ok(ClientEvent::Session(EdgeEvent::Waiting { session: s, .. })) if s == session => {
                waiting = true;
            }
            Ok(ClientEvent::OpResolved { op, result }) if op == cancel => {
                anyhow::bail!("the rider's cancel was reported during the split: {result:?}")
            }
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    ensure!(waiting, "the rider was never told its cancel waits");
    // The partition heals; the rider goes back to the preferred datacenter.
    rider_paths[0].restore();
    driver_paths[1].restore();
    wait_all_on(std::slice::from_ref(&rider), 1, Duration::from_secs(20)).await?;
    let done = tokio::time::timeout(WAIT, &mut cancelled)
        .await
        .context("the rider's cancel was never answered after the heal")?
        .map_err(|_| anyhow::anyhow!("the rider's client closed"))?;
    let done = done.map_err(|e| anyhow::anyhow!("the cancel was refused: {e}"))?;
    ensure!(
        done.version.covers(&arrived.version),
        "the cancel committed on a copy ({}) without the driver's arrival ({})",
        done.version,
        arrived.version
    );
    wait_for_session(&driver, WAIT, |s| s.session == session && s.finished).await?;
    let stored = c.stop_and_read(0)?;
    let (header, body) = stored
        .iter()
        .find(|s| s.0.session == session)
        .context("trip lost")?;
    ensure!(
        header.version.covers(&arrived.version),
        "the driver's arrival was dropped"
    );
    ensure!(header.tombstone && body.state.phase == TripPhase::Cancelled);
    let cancels = body
        .dedup
        .iter()
        .find(|d| d.device == rider.device())
        .map(|d| d.last_seq);
    ensure!(
        cancels == Some(cancel.seq),
        "the rider's watermark is {cancels:?}, its cancel was seq {}",
        cancel.seq
    );
    Ok(())
}

/// Issue 17: the app itself is killed at seeded points of the submit path, again and again,
/// and what it knows after each restart comes only from the device (`queued_ops`, the
/// unacknowledged `outcomes`, the trip view): the test's own record of what the device said
/// is kept apart, for the checks. The kill points: right after the device reported the j-th
/// op of a batch queued (the app got its id), right after the j-th outcome, right after an
/// acknowledgement was sent, or a seeded moment after the batch was handed over. After
/// every restart the app sends only the positions it cannot find queued or decided.
///
/// Checked at the end, against the device's reports and the datacenter's own store: every
/// op id the device ever reported queued has an outcome the app learned (from an event, or
/// from the outcome list after a restart), never two different ones; every position was
/// queued under exactly one op id (the app never had to guess and sent none twice); and the
/// datacenter applied each exactly once (its trip counts exactly N positions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_killed_at_seeded_points_of_the_submit_path_learns_every_outcome_from_the_device(
) -> anyhow::Result<()> {
    let name =
        "app_killed_at_seeded_points_of_the_submit_path_learns_every_outcome_from_the_device";
    let seed = seed_for(name);
    with_seed(seed, name, app_killed_on_submit(seed).await)
}

/// Which position a location op reports (`route_point(k)` has latitude `PICKUP + 100 k`).
fn position_index(op: &TripOp) -> Option<u32> {
    match op {
        TripOp::Location { at } => u32::try_from((at.lat_e6 - PICKUP.lat_e6) / 100).ok(),
        _ => None,
    }
}

async fn app_killed_on_submit(seed: u64) -> anyhow::Result<()> {
    use lifeboat_common::OpId;
    use std::collections::{BTreeMap, BTreeSet};
    const POSITIONS: u32 = 40;
    const MAX_LIVES: usize = 24;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let (spec, mut driver, rider, session) = driver_process_assigned_a_trip(&c).await?;
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        driver.submit_wait(session, op, OP_TIMEOUT).await?;
    }

    // The checker's record (never shown to the app): op ids the device reported queued, and
    // every outcome it reported for them (true: committed).
    let mut given: BTreeMap<OpId, TripOp> = BTreeMap::new();
    let mut learned: BTreeMap<OpId, BTreeSet<bool>> = BTreeMap::new();
    let note = |reports: &[Report],
                given: &mut BTreeMap<OpId, TripOp>,
                learned: &mut BTreeMap<OpId, BTreeSet<bool>>,
                sent: &HashMap<u64, TripOp>| {
        for r in reports {
            match r {
                Report::Queued { tag, op } => {
                    if let Some(body) = sent.get(tag) {
                        given.insert(*op, body.clone());
                    }
                }
                Report::Committed { op, .. } => {
                    learned.entry(*op).or_default().insert(true);
                }
                Report::Resolved { op, ok, .. } => {
                    learned.entry(*op).or_default().insert(*ok);
                }
                Report::Outcomes {
                    queued, decided, ..
                } => {
                    for (op, body) in queued {
                        given.insert(*op, body.clone());
                    }
                    for d in decided {
                        given.insert(d.op, d.body.clone());
                        learned.entry(d.op).or_default().insert(d.ok);
                    }
                }
                _ => {}
            }
        }
    };
    let mut kills = Vec::new();
    let mut lives = 0usize;
    loop {
        lives += 1;
        ensure!(
            lives <= MAX_LIVES + 2,
            "the app did not finish in {lives} lives"
        );
        // The app starts: everything it knows comes from the device.
        let (queued, decided) = driver.outcomes().await?;
        let held = driver
            .wait_for_session(WAIT, |h| h.session == session)
            .await?;
        let mut known: BTreeSet<u32> = BTreeSet::new();
        if let Some(at) = held.last_position {
            known.extend(1..=position_index(&TripOp::Location { at }).unwrap_or(0));
        }
        known.extend(queued.iter().filter_map(|(_, op)| position_index(op)));
        known.extend(decided.iter().filter_map(|d| position_index(&d.body)));
        let failed: Vec<&lifeboat_tests::device_process::Decided> =
            decided.iter().filter(|d| !d.ok).collect();
        ensure!(failed.is_empty(), "ops failed: {failed:?}");
        let last_life = lives > MAX_LIVES;
        let batch: Vec<u32> = (1..=POSITIONS)
            .filter(|k| !known.contains(k))
            .take(if last_life {
                usize::MAX
            } else {
                rng.random_range(1..6)
            })
            .collect();
        let mut sent: HashMap<u64, TripOp> = HashMap::new();
        let ack_tag = driver.acknowledge(decided.iter().map(|d| d.op).collect())?;
        for k in &batch {
            let op = TripOp::Location {
                at: route_point(*k),
            };
            let tag = driver.submit(session, op.clone())?;
            sent.insert(tag, op);
        }
        if last_life || batch.is_empty() {
            // Run to the end: every queued op decided.
            let start = Instant::now();
            loop {
                let (q, d) = driver.outcomes().await?;
                let reports = driver.reports();
                note(&reports, &mut given, &mut learned, &sent);
                driver.acknowledge(d.iter().map(|d| d.op).collect())?;
                if q.is_empty() && sent.keys().all(|t| {
                    reports.iter().any(|r| matches!(r, Report::Committed { tag, .. } | Report::Failed { tag, .. } if tag == t))
                }) {
                    break;
                }
                ensure!(
                    start.elapsed() < OP_TIMEOUT,
                    "queued ops never decided: {q:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let have = driver
                .wait_for_session(WAIT, |h| h.session == session)
                .await?;
            if have.location_updates >= POSITIONS || last_life {
                driver
                    .submit_wait(session, TripOp::Complete, OP_TIMEOUT)
                    .await?;
                let reports = driver.shutdown().await?;
                note(&reports, &mut given, &mut learned, &sent);
                break;
            }
            continue;
        }
        // Kill at a seeded point of this batch's path.
        let point = rng.random_range(0..4);
        let j = rng.random_range(1..=batch.len().max(1));
        let deadline = Instant::now() + OP_TIMEOUT;
        let what = match point {
            0 => {
                while driver
                    .count(|r| matches!(r, Report::Queued { tag, .. } if sent.contains_key(tag)))
                    < j
                    && Instant::now() < deadline
                    && !driver.exited()
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                format!("after op {j} of {} was queued", batch.len())
            }
            1 => {
                while driver
                    .count(|r| matches!(r, Report::Committed { tag, .. } if sent.contains_key(tag)))
                    < j
                    && Instant::now() < deadline
                    && !driver.exited()
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                format!("after outcome {j} of {}", batch.len())
            }
            2 => {
                while driver
                    .count(|r| matches!(r, Report::Acknowledged { tag, .. } if *tag == ack_tag))
                    < 1
                    && Instant::now() < deadline
                    && !driver.exited()
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                "after the acknowledgement".to_string()
            }
            _ => {
                let us = rng.random_range(0..40_000);
                tokio::time::sleep(Duration::from_micros(us)).await;
                format!("{us} us after the batch of {}", batch.len())
            }
        };
        let reports = driver.kill().await?;
        note(&reports, &mut given, &mut learned, &sent);
        kills.push(what);
        driver = DeviceProcess::spawn(spec.clone()).await?;
    }
    eprintln!("{} kills: {}", kills.len(), kills.join("; "));

    // Every op id the device ever gave out has an outcome the app learned, only one.
    for (op, body) in &given {
        let seen = learned.get(op);
        ensure!(
            seen.is_some_and(|s| !s.is_empty()),
            "op {op} ({body:?}) was queued but its outcome never reached the app"
        );
        ensure!(
            seen.is_some_and(|s| s.len() == 1),
            "op {op} had two different outcomes: {seen:?}"
        );
    }
    // The app sent each position under exactly one op id, and every one committed.
    let mut ids_per_position: BTreeMap<u32, Vec<OpId>> = BTreeMap::new();
    for (op, body) in &given {
        if let Some(k) = position_index(body) {
            ids_per_position.entry(k).or_default().push(*op);
        }
    }
    for k in 1..=POSITIONS {
        let ids = ids_per_position.get(&k).cloned().unwrap_or_default();
        ensure!(
            ids.len() == 1,
            "position {k} was queued as {ids:?}: the app could not tell it was already sent"
        );
        ensure!(
            learned.get(&ids[0]).is_some_and(|s| s.contains(&true)),
            "position {k} (op {}) never committed",
            ids[0]
        );
    }
    // The datacenter's own store: each position applied exactly once.
    let stored = c.stop_and_read(0)?;
    let (_, body) = newest_copies(stored)
        .into_iter()
        .find(|(h, _)| h.session == session)
        .context("the datacenter does not hold the trip")?;
    ensure!(
        body.state.location_updates == POSITIONS,
        "the datacenter applied {} positions, the app sent {POSITIONS}",
        body.state.location_updates
    );
    ensure!(body.state.phase == TripPhase::Completed);
    drop(rider);
    Ok(())
}
