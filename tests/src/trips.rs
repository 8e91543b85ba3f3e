//! Driving trips and checking the outcome, shared by the end-to-end suites: a driver's ledger
//! of what it was told was committed ([`TripLedger`], filled by [`drive`]) and the check of a
//! datacenter's own store against it ([`check_against_store`]: every committed op present
//! exactly once, no version older than committed, finished trips tombstoned).
//!
//! Every wait is bounded ([`WAIT`], [`OP_TIMEOUT`]).

use crate::{route_point, wait_for_assignment};
use anyhow::{ensure, Context};
use lifeboat_common::{SessionId, TripOp, TripPhase, VersionVector};
use lifeboat_edge::EdgeClient;
use lifeboat_server::service::StoredSession;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bound on waiting for an assignment, a session state or traffic progress.
pub const WAIT: Duration = Duration::from_secs(60);
/// No single op may take longer than this, failovers included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What a driver's device was told was committed for its trip.
#[derive(Debug, Clone)]
pub struct TripLedger {
    pub session: SessionId,
    pub locations_committed: u32,
    pub completed: bool,
    /// The newest version any commit reported.
    pub last_version: VersionVector,
}

/// Drive one assigned trip: arrive, start, `steps` location updates, complete.
pub async fn drive(
    driver: EdgeClient,
    steps: u32,
    progress: Arc<AtomicU64>,
    pause: Duration,
) -> anyhow::Result<TripLedger> {
    let session = wait_for_assignment(&driver, WAIT).await?;
    let mut ledger = TripLedger {
        session,
        locations_committed: 0,
        completed: false,
        last_version: VersionVector::new(),
    };
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        let c = submit(&driver, session, op).await?;
        ledger.last_version = c.version;
    }
    for k in 1..=steps {
        let c = submit(&driver, session, TripOp::Location { at: route_point(k) }).await?;
        ledger.locations_committed += 1;
        ledger.last_version = c.version;
        progress.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    let c = driver
        .submit(session, TripOp::Complete)
        .await
        .context("complete")?;
    ledger.last_version = c.version;
    ledger.completed = true;
    Ok(ledger)
}

pub async fn wait_progress(progress: &AtomicU64, at_least: u64) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while progress.load(Ordering::Relaxed) < at_least {
        ensure!(
            start.elapsed() < WAIT,
            "traffic did not reach {at_least} ops"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Every trip in the ledger is in the store, exactly as committed, never older.
pub fn check_against_store(ledgers: &[TripLedger], stored: &[StoredSession]) -> anyhow::Result<()> {
    let by_id: HashMap<SessionId, &StoredSession> =
        stored.iter().map(|s| (s.0.session, s)).collect();
    for l in ledgers {
        let (header, body) = by_id
            .get(&l.session)
            .with_context(|| format!("trip {} lost: not in the surviving store", l.session))?;
        ensure!(
            body.state.location_updates == l.locations_committed,
            "trip {}: {} location ops committed on the device, {} applied at the datacenter",
            l.session,
            l.locations_committed,
            body.state.location_updates
        );
        ensure!(
            header.version.covers(&l.last_version),
            "trip {}: datacenter version {} is older than committed {}",
            l.session,
            header.version,
            l.last_version
        );
        if l.completed {
            ensure!(
                header.tombstone,
                "trip {} completed but not tombstoned",
                l.session
            );
            ensure!(body.state.phase == TripPhase::Completed);
            ensure!(body.state.fare_cents.is_some());
        }
    }
    Ok(())
}
