//! The seeded workload: riders request trips and sometimes cancel them; drivers offer
//! themselves, drive the trips they are dispatched (arrive, start, report locations,
//! complete) and sometimes cancel.
//!
//! Every decision is made from what the device's own client holds (`sessions()`), so a
//! device whose app restarts on the same store picks up where its store is. Every random
//! choice comes from the device's generator, seeded from the run seed, the device and the
//! app start. The workload records what the app does ([`Event::Submit`],
//! [`Event::Accepted`]); the device's recorder ([`record_events`]) records what the client
//! answers and what the device holds.

use lifeboat_common::edge::EdgeEvent;
use lifeboat_common::{DeviceId, GeoPoint, SessionId, TripOp, TripPhase};
use lifeboat_edge::{ClientEvent, EdgeClient};
use lifeboat_testkit::checker::{Event, History, OpKind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Simulated milliseconds since the start of the run.
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// What one device's app does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Rider,
    Driver,
}

/// The shared record of a run (one thread: the simulation's).
pub type Recorder = Rc<RefCell<History>>;

fn record(rec: &Recorder, device: DeviceId, event: Event) {
    rec.borrow_mut().record(now_ms(), device, event);
}

/// What the controller tells the devices' recorders about the datacenters, so that a
/// failover away from a datacenter that is up can be counted as false.
#[derive(Debug, Default)]
pub struct FailoverWatch {
    /// Per datacenter: its address, whether its software runs, and when it last went down
    /// (crashed or bounced, simulated ms).
    pub dcs: Vec<(SocketAddr, Cell<bool>, Cell<Option<u64>>)>,
    /// Failovers the devices started.
    pub failovers: Cell<usize>,
    /// ... away from a datacenter that was up and had not gone down in the last
    /// [`FailoverWatch::RECENT_MS`].
    pub false_failovers: Cell<usize>,
}

impl FailoverWatch {
    /// A device notices a crash within its idle timeout (3 s) plus a keep-alive or two: a
    /// failover this soon after a datacenter went down may be the crash's.
    pub const RECENT_MS: u64 = 6_000;

    fn failover_from(&self, addr: SocketAddr) {
        self.failovers.set(self.failovers.get() + 1);
        let now = now_ms();
        let up = self
            .dcs
            .iter()
            .find(|(a, _, _)| *a == addr)
            .is_some_and(|(_, running, down)| {
                running.get()
                    && down
                        .get()
                        .is_none_or(|t| now.saturating_sub(t) > Self::RECENT_MS)
            });
        if up {
            self.false_failovers.set(self.false_failovers.get() + 1);
        }
    }
}

/// Record every answer and every held copy the client reports, until it stops.
pub async fn record_events(
    mut events: tokio::sync::broadcast::Receiver<lifeboat_edge::TimedEvent>,
    device: DeviceId,
    rec: Recorder,
    watch: Rc<FailoverWatch>,
) -> Result<(), String> {
    loop {
        match events.recv().await.map(|t| t.event) {
            Ok(ClientEvent::FailoverStarted { from }) => watch.failover_from(from),
            Ok(ClientEvent::OpResolved { op, result }) => {
                let event = match result {
                    Ok(c) => Event::Committed {
                        op,
                        version: c.version,
                        duplicate: c.duplicate,
                    },
                    Err(reason) => Event::Refused { op, reason },
                };
                record(&rec, device, event);
            }
            Ok(ClientEvent::Session(EdgeEvent::SessionUpdated {
                session,
                version,
                view,
                committed,
            })) => record(
                &rec,
                device,
                Event::Saw {
                    session,
                    version,
                    phase: view.phase,
                    locations: view.location_updates,
                    committed,
                },
            ),
            Ok(ClientEvent::Session(EdgeEvent::ServerChangeCommitted { session, version })) => {
                record(&rec, device, Event::ServerCommitted { session, version })
            }
            Ok(ClientEvent::Session(EdgeEvent::Conflict {
                session,
                ours,
                theirs,
                ..
            })) => record(
                &rec,
                device,
                Event::Conflict {
                    session,
                    ours,
                    theirs,
                },
            ),
            Ok(_) => {}
            // A gap in the record would make the check unsound: fail the run instead.
            Err(RecvError::Lagged(n)) => {
                return Err(format!("{device}: the recorder missed {n} client events"))
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Tunables of the workload.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// No new op is submitted after this.
    pub until_ms: u64,
    /// Probability that a rider cancels a trip it is waiting for.
    pub rider_cancel: f64,
    /// Probability that a driver cancels a trip before starting it.
    pub driver_cancel: f64,
}

fn point(rng: &mut SmallRng) -> GeoPoint {
    lifeboat_testkit::geo::point_near(rng, 20_000, 30_000)
}

/// A stable per-trip number from the seed and the session (same after a restart).
fn trip_hash(seed: u64, session: SessionId) -> u64 {
    let mut x = seed ^ session.0.rotate_left(23) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x
}

async fn pause(rng: &mut SmallRng, lo_ms: u64, hi_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(lo_ms..=hi_ms))).await;
}

/// Submit and wait (bounded) for the answer; the recorder logs the answer itself.
async fn submit(
    client: &EdgeClient,
    rec: &Recorder,
    session: SessionId,
    op: TripOp,
    wait: Duration,
) {
    let device = client.device();
    let kind = OpKind::from(&op);
    record(rec, device, Event::Submit { session, kind });
    match client.enqueue(session, op).await {
        Ok((id, done)) => {
            record(rec, device, Event::Accepted { op: id, kind });
            let _ = tokio::time::timeout(wait, done).await;
        }
        Err(e) => tracing::debug!(%device, error = %e, "submit refused locally"),
    }
}

/// Run a device's app until `until_ms`, then idle (the client keeps replaying and syncing).
pub async fn run_app(
    client: EdgeClient,
    role: Role,
    cfg: WorkloadConfig,
    incarnation: u64,
    rec: Recorder,
) {
    let device = client.device();
    let mut rng = SmallRng::seed_from_u64(
        cfg.seed ^ device.0.wrapping_mul(0xA24B_AED4_963E_E407) ^ incarnation,
    );
    let wait = Duration::from_secs(8);
    // Bounded: one iteration per pause of at least 200 ms until `until_ms`.
    while now_ms() < cfg.until_ms {
        let Ok(held) = client.sessions().await else {
            return;
        };
        let active = held.iter().find(|s| {
            !s.finished && !matches!(s.view.phase, TripPhase::Completed | TripPhase::Cancelled)
        });
        match (role, active) {
            (Role::Rider, None) => {
                let session = SessionId(rng.random::<u64>() | 1);
                let op = TripOp::Request {
                    pickup: point(&mut rng),
                    dropoff: point(&mut rng),
                };
                submit(&client, &rec, session, op, wait).await;
                pause(&mut rng, 500, 2_000).await;
            }
            (Role::Rider, Some(s)) => {
                let waiting = matches!(
                    s.view.phase,
                    TripPhase::Requested | TripPhase::Assigned | TripPhase::DriverArrived
                );
                if waiting && rng.random_bool(cfg.rider_cancel) {
                    submit(&client, &rec, s.session, TripOp::Cancel, wait).await;
                }
                pause(&mut rng, 500, 1_500).await;
            }
            (Role::Driver, None) => pause(&mut rng, 200, 600).await,
            (Role::Driver, Some(s)) => {
                let planned = 2 + trip_hash(cfg.seed, s.session) % 5;
                let op = match s.view.phase {
                    TripPhase::Assigned | TripPhase::DriverArrived
                        if rng.random_bool(cfg.driver_cancel) =>
                    {
                        TripOp::Cancel
                    }
                    TripPhase::Assigned => TripOp::Arrived,
                    TripPhase::DriverArrived => TripOp::StartTrip,
                    TripPhase::OnTrip if u64::from(s.view.location_updates) < planned => {
                        // Small steps from the pickup (each well under the plausibility bound).
                        let k = i32::try_from(s.view.location_updates).unwrap_or(0) + 1;
                        TripOp::Location {
                            at: GeoPoint {
                                lat_e6: s.view.pickup.lat_e6 + 900 * k,
                                lon_e6: s.view.pickup.lon_e6 + 600 * k,
                            },
                        }
                    }
                    TripPhase::OnTrip => TripOp::Complete,
                    _ => {
                        pause(&mut rng, 200, 600).await;
                        continue;
                    }
                };
                pause(&mut rng, 300, 1_200).await;
                submit(&client, &rec, s.session, op, wait).await;
            }
        }
    }
}
