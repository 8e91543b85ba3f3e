//! The trip workload shared by the end-to-end tests: a fleet of real edge clients (drivers
//! and riders), drivers driving their assigned trips op by op, and each driver's ledger of
//! what its device was told (a history for the testkit's checker).
//!
//! Every wait is bounded: an op that gets no answer within [`OP_TIMEOUT`] fails the test
//! (failovers included), and every other wait gives up after [`WAIT`].

use crate::{route_point, wait_for_assignment, Cluster, PICKUP};
use anyhow::{ensure, Context};
use lifeboat_common::{DeviceId, OpId, SessionId, TripOp, VersionVector};
use lifeboat_edge::{Commit, EdgeClient};
use lifeboat_testkit::checker::{Event, History, OpKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for anything that is not a single op.
pub const WAIT: Duration = Duration::from_secs(60);
/// No single op may take longer than this, failovers included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Submit and wait (bounded) for the commit.
pub async fn submit(
    client: &EdgeClient,
    session: SessionId,
    op: TripOp,
) -> anyhow::Result<lifeboat_edge::Commit> {
    let what = format!("{op:?} on {session} by {}", client.device());
    tokio::time::timeout(OP_TIMEOUT, client.submit(session, op))
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {OP_TIMEOUT:?}"))?
        .with_context(|| what.clone())
}

/// What a driver's device told the test about its trip, in the order it was told, as a
/// history of the testkit's checker (the one ledger the checker judges;
/// [`crate::check::check_against_store`]).
#[derive(Debug, Clone)]
pub struct TripLedger {
    pub session: SessionId,
    pub driver: DeviceId,
    history: History,
    queued: BTreeSet<OpId>,
    start: Instant,
}

impl TripLedger {
    pub fn new(session: SessionId, driver: DeviceId) -> Self {
        Self {
            session,
            driver,
            history: History::new(),
            queued: BTreeSet::new(),
            start: Instant::now(),
        }
    }

    fn record(&mut self, event: Event) {
        let at_ms = self.start.elapsed().as_millis() as u64;
        self.history.record(at_ms, self.driver, event);
    }

    /// The app asked for an op of `kind` (before the device answered anything).
    pub fn asked(&mut self, kind: OpKind) {
        let session = self.session;
        self.record(Event::Submit { session, kind });
    }

    /// The device reported `op` queued (once per op; later reports are ignored).
    pub fn queued(&mut self, op: OpId, kind: OpKind) {
        if self.queued.insert(op) {
            self.record(Event::Accepted { op, kind });
        }
    }

    /// The device reported `op` committed at `version`.
    pub fn committed(&mut self, op: OpId, version: VersionVector, duplicate: bool) {
        self.record(Event::Committed {
            op,
            version,
            duplicate,
        });
    }

    /// An op of `kind` asked for and reported committed in one call ([`submit`]).
    pub fn commit(&mut self, kind: OpKind, c: &Commit) {
        self.asked(kind);
        self.queued(c.op, kind);
        self.committed(c.op, c.version.clone(), c.duplicate);
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    fn committed_of(&self, kind: OpKind) -> BTreeSet<OpId> {
        let kinds: BTreeMap<OpId, OpKind> = self
            .history
            .entries()
            .iter()
            .filter_map(|e| match &e.event {
                Event::Accepted { op, kind } => Some((*op, *kind)),
                _ => None,
            })
            .collect();
        self.history
            .entries()
            .iter()
            .filter_map(|e| match &e.event {
                Event::Committed { op, .. } if kinds.get(op) == Some(&kind) => Some(*op),
                _ => None,
            })
            .collect()
    }

    /// Distinct location ops reported committed.
    pub fn locations_committed(&self) -> usize {
        self.committed_of(OpKind::Location).len()
    }

    /// Whether the device was told the trip's completion is committed.
    pub fn completed(&self) -> bool {
        !self.committed_of(OpKind::Complete).is_empty()
    }
}

/// Drive one assigned trip: arrive, start, `steps` location updates, complete.
pub async fn drive(
    driver: EdgeClient,
    steps: u32,
    progress: Arc<AtomicU64>,
    pause: Duration,
) -> anyhow::Result<TripLedger> {
    let session = wait_for_assignment(&driver, WAIT).await?;
    let mut ledger = TripLedger::new(session, driver.device());
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        let kind = OpKind::from(&op);
        ledger.commit(kind, &submit(&driver, session, op).await?);
    }
    for k in 1..=steps {
        let c = submit(&driver, session, TripOp::Location { at: route_point(k) }).await?;
        ledger.commit(OpKind::Location, &c);
        progress.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    let c = submit(&driver, session, TripOp::Complete)
        .await
        .context("complete")?;
    ledger.commit(OpKind::Complete, &c);
    Ok(ledger)
}

/// Wait (bounded) until `progress` reaches `at_least`.
pub async fn wait_progress(progress: &AtomicU64, at_least: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    while progress.load(Ordering::Relaxed) < at_least {
        ensure!(
            start.elapsed() < WAIT,
            "traffic did not reach {at_least} ops (at {})",
            progress.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Drivers (ids 1000..) and riders (ids 1..), one pair per trip.
pub struct Fleet {
    pub riders: Vec<EdgeClient>,
    pub drivers: Vec<EdgeClient>,
}

impl Fleet {
    /// Every device, drivers first.
    pub fn everyone(&self) -> Vec<EdgeClient> {
        self.drivers
            .iter()
            .chain(self.riders.iter())
            .cloned()
            .collect()
    }
}

/// Start `pairs` drivers (connected before any rider starts, so dispatch has someone to
/// assign) and `pairs` riders.
pub async fn fleet(c: &Cluster, pairs: u64) -> anyhow::Result<Fleet> {
    let mut drivers = Vec::new();
    for i in 0..pairs {
        drivers.push(c.device(1000 + i, true).await?);
    }
    for d in &drivers {
        ensure!(
            d.wait_connected(Duration::from_secs(10)).await.is_some(),
            "driver {} did not connect",
            d.device()
        );
    }
    let mut riders = Vec::new();
    for i in 0..pairs {
        riders.push(c.device(1 + i, false).await?);
    }
    Ok(Fleet { riders, drivers })
}

/// Riders request; drivers drive; `kill` runs once `kill_after` location ops committed.
pub async fn run_trips(
    f: &Fleet,
    steps: u32,
    kill_after: u64,
    kill: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<TripLedger>> {
    let progress = Arc::new(AtomicU64::new(0));
    let mut rider_tasks = Vec::new();
    for r in &f.riders {
        let r = r.clone();
        rider_tasks.push(tokio::spawn(async move {
            r.request_trip(PICKUP, route_point(50)).await
        }));
    }
    let mut driver_tasks = Vec::new();
    for d in &f.drivers {
        driver_tasks.push(tokio::spawn(drive(
            d.clone(),
            steps,
            progress.clone(),
            Duration::from_millis(15),
        )));
    }
    wait_progress(&progress, kill_after).await?;
    kill()?;
    let mut ledgers = Vec::new();
    for t in driver_tasks {
        ledgers.push(t.await??);
    }
    for t in rider_tasks {
        t.await??;
    }
    Ok(ledgers)
}

pub type DriveTask = tokio::task::JoinHandle<anyhow::Result<TripLedger>>;

/// Every rider requests a trip; every driver drives the one it gets (`steps` locations).
pub async fn request_and_drive(
    f: &Fleet,
    steps: u32,
    pause: Duration,
) -> anyhow::Result<(Arc<AtomicU64>, Vec<DriveTask>)> {
    let progress = Arc::new(AtomicU64::new(0));
    for r in &f.riders {
        tokio::time::timeout(OP_TIMEOUT, r.request_trip(PICKUP, route_point(50)))
            .await
            .context("trip request: no answer")??;
    }
    let tasks = f
        .drivers
        .iter()
        .map(|d| tokio::spawn(drive(d.clone(), steps, progress.clone(), pause)))
        .collect();
    Ok((progress, tasks))
}

/// Wait for every driver's task (each bounded by its ops' timeouts).
pub async fn collect(tasks: Vec<DriveTask>) -> anyhow::Result<Vec<TripLedger>> {
    let mut ledgers = Vec::new();
    for t in tasks {
        ledgers.push(t.await??);
    }
    Ok(ledgers)
}
