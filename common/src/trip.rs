//! The built-in session model: a ride-hailing trip.
//!
//! ```text
//! Request (rider) -> Requested -> [dispatch assigns a driver] -> Assigned
//!   -> Arrived (driver) -> DriverArrived -> StartTrip (driver) -> OnTrip
//!   -> Location* (driver; accumulates distance and time) -> Complete (driver) -> Completed (fare)
//! Cancel (rider or driver) from Requested, Assigned or DriverArrived -> Cancelled
//! ```
//!
//! Invariants: distance and duration only grow; the fare is computed once, at completion,
//! from distance and duration; Completed and Cancelled are final.

use crate::app::{AppRejection, Application};
use crate::ids::Role;
use serde::{Deserialize, Serialize};

/// Base fare in cents.
pub const FARE_BASE_CENTS: u64 = 250;
/// Cents per kilometre.
pub const FARE_PER_KM_CENTS: u64 = 120;
/// Cents per minute.
pub const FARE_PER_MIN_CENTS: u64 = 30;
/// A single location jump longer than this is refused as implausible (a hostile or broken
/// device inflating the fare).
pub const MAX_JUMP_M: u64 = 5_000;

/// A point in microdegrees (WGS84).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in microdegrees, valid within ±90,000,000.
    pub lat_e6: i32,
    /// Longitude in microdegrees, valid within ±180,000,000.
    pub lon_e6: i32,
}

impl GeoPoint {
    /// Whether latitude and longitude are within their WGS84 ranges.
    pub fn is_valid(&self) -> bool {
        self.lat_e6.abs() <= 90_000_000 && self.lon_e6.abs() <= 180_000_000
    }

    /// Distance in metres (equirectangular approximation, plenty for city trips).
    pub fn distance_m(&self, other: &GeoPoint) -> u64 {
        const EARTH_RADIUS_M: f64 = 6_371_000.0;
        let to_rad = |e6: i32| (e6 as f64 / 1e6).to_radians();
        let (lat1, lat2) = (to_rad(self.lat_e6), to_rad(other.lat_e6));
        let dlon = to_rad(other.lon_e6) - to_rad(self.lon_e6);
        let x = dlon * ((lat1 + lat2) / 2.0).cos();
        let y = lat2 - lat1;
        ((x * x + y * y).sqrt() * EARTH_RADIUS_M).round() as u64
    }
}

/// Where a trip is in its life (see the module's diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TripPhase {
    /// Created by the rider; waits for dispatch to assign a driver.
    Requested,
    /// A driver is assigned and on the way.
    Assigned,
    /// The driver is at the pickup point.
    DriverArrived,
    /// The rider is on board; location reports count towards distance and time.
    OnTrip,
    /// Final: the driver completed the trip and the fare is set.
    Completed,
    /// Final: the rider or the driver cancelled before the trip started.
    Cancelled,
}

/// The full state of a trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TripState {
    /// Where the trip is in its life.
    pub phase: TripPhase,
    /// Where the rider asked to be picked up.
    pub pickup: GeoPoint,
    /// Where the rider asked to go.
    pub dropoff: GeoPoint,
    /// When the request was applied (the applying datacenter's `now_ms`, unix ms).
    pub requested_ms: u64,
    /// The driver's last accepted position; `None` until the first report or the start.
    pub last_position: Option<GeoPoint>,
    /// When the trip started (unix ms); 0 before `StartTrip`.
    pub started_ms: u64,
    /// Time on trip in ms; only grows, updated by location reports and at completion.
    pub duration_ms: u64,
    /// Distance driven on trip in metres; only grows (a jump over [`MAX_JUMP_M`] is refused).
    pub distance_m: u64,
    /// Count of accepted location reports (saturating).
    pub location_updates: u32,
    /// The fare in cents, set once at completion; `None` before.
    pub fare_cents: Option<u64>,
    /// Who cancelled; `None` unless the trip is `Cancelled`.
    pub cancelled_by: Option<Role>,
}

/// Ops devices submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TripOp {
    /// Rider: create the trip.
    Request {
        /// Where to pick the rider up.
        pickup: GeoPoint,
        /// Where the rider wants to go.
        dropoff: GeoPoint,
    },
    /// Driver: at the pickup point.
    Arrived,
    /// Driver: rider on board.
    StartTrip,
    /// Driver: a position report; counts towards distance and time while on trip.
    Location {
        /// The driver's position.
        at: GeoPoint,
    },
    /// Driver: at the destination; computes the fare.
    Complete,
    /// Rider or driver, before the trip starts.
    Cancel,
}

impl TripOp {
    /// What the op does, in words (used in rejection messages).
    pub fn name(&self) -> &'static str {
        match self {
            TripOp::Request { .. } => "request",
            TripOp::Arrived => "arrive",
            TripOp::StartTrip => "start the trip",
            TripOp::Location { .. } => "report a location",
            TripOp::Complete => "complete the trip",
            TripOp::Cancel => "cancel",
        }
    }
}

/// The kind of a [`TripOp`], without its payload (ledgers, histories, reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TripOpKind {
    /// [`TripOp::Request`].
    Request,
    /// [`TripOp::Arrived`].
    Arrived,
    /// [`TripOp::StartTrip`].
    Start,
    /// [`TripOp::Location`].
    Location,
    /// [`TripOp::Complete`].
    Complete,
    /// [`TripOp::Cancel`].
    Cancel,
}

impl From<&TripOp> for TripOpKind {
    fn from(op: &TripOp) -> Self {
        match op {
            TripOp::Request { .. } => TripOpKind::Request,
            TripOp::Arrived => TripOpKind::Arrived,
            TripOp::StartTrip => TripOpKind::Start,
            TripOp::Location { .. } => TripOpKind::Location,
            TripOp::Complete => TripOpKind::Complete,
            TripOp::Cancel => TripOpKind::Cancel,
        }
    }
}

/// Marker type implementing [`Application`] for trips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trip;

fn invalid(state: &TripState, op: &TripOp) -> AppRejection {
    AppRejection::InvalidTransition {
        state: format!("{:?}", state.phase),
        op: op.name().to_string(),
    }
}

fn require(role: Role, needed: Role, op: &TripOp) -> Result<(), AppRejection> {
    if role == needed {
        Ok(())
    } else {
        Err(AppRejection::WrongRole {
            role,
            op: op.name().to_string(),
        })
    }
}

/// The fare for a distance and duration.
pub fn fare_cents(distance_m: u64, duration_ms: u64) -> u64 {
    FARE_BASE_CENTS
        .saturating_add(distance_m.saturating_mul(FARE_PER_KM_CENTS) / 1000)
        .saturating_add(duration_ms.saturating_mul(FARE_PER_MIN_CENTS) / 60_000)
}

impl Application for Trip {
    type State = TripState;
    type Op = TripOp;

    fn is_create(op: &TripOp) -> bool {
        matches!(op, TripOp::Request { .. })
    }

    fn create(op: &TripOp, now_ms: u64) -> Result<TripState, AppRejection> {
        match op {
            TripOp::Request { pickup, dropoff } => {
                if !pickup.is_valid() || !dropoff.is_valid() {
                    return Err(AppRejection::InvalidOp("coordinates out of range".into()));
                }
                Ok(TripState {
                    phase: TripPhase::Requested,
                    pickup: *pickup,
                    dropoff: *dropoff,
                    requested_ms: now_ms,
                    last_position: None,
                    started_ms: 0,
                    duration_ms: 0,
                    distance_m: 0,
                    location_updates: 0,
                    fare_cents: None,
                    cancelled_by: None,
                })
            }
            other => Err(AppRejection::InvalidOp(format!(
                "a session starts with a request, not with {}",
                other.name()
            ))),
        }
    }

    fn apply(s: &mut TripState, role: Role, op: &TripOp, now_ms: u64) -> Result<(), AppRejection> {
        use TripPhase::*;
        match (op, s.phase) {
            (TripOp::Request { .. }, _) => return Err(invalid(s, op)),
            (TripOp::Arrived, Assigned) => {
                require(role, Role::Driver, op)?;
                s.phase = DriverArrived;
            }
            (TripOp::StartTrip, DriverArrived) => {
                require(role, Role::Driver, op)?;
                s.phase = OnTrip;
                s.started_ms = now_ms;
                s.last_position = Some(s.pickup);
            }
            (TripOp::Location { at }, Assigned | DriverArrived | OnTrip) => {
                require(role, Role::Driver, op)?;
                if !at.is_valid() {
                    return Err(AppRejection::InvalidOp("coordinates out of range".into()));
                }
                if s.phase == OnTrip {
                    let step = s.last_position.map(|p| p.distance_m(at)).unwrap_or(0);
                    if step > MAX_JUMP_M {
                        return Err(AppRejection::InvalidOp(format!(
                            "location jump of {step} m exceeds {MAX_JUMP_M} m"
                        )));
                    }
                    s.distance_m = s.distance_m.saturating_add(step);
                    s.duration_ms = now_ms.saturating_sub(s.started_ms).max(s.duration_ms);
                }
                s.last_position = Some(*at);
                s.location_updates = s.location_updates.saturating_add(1);
            }
            (TripOp::Complete, OnTrip) => {
                require(role, Role::Driver, op)?;
                s.duration_ms = now_ms.saturating_sub(s.started_ms).max(s.duration_ms);
                s.fare_cents = Some(fare_cents(s.distance_m, s.duration_ms));
                s.phase = Completed;
            }
            (TripOp::Cancel, Requested | Assigned | DriverArrived) => {
                s.cancelled_by = Some(role);
                s.phase = Cancelled;
            }
            _ => return Err(invalid(s, op)),
        }
        Ok(())
    }

    fn needs_assignee(s: &TripState) -> bool {
        s.phase == TripPhase::Requested
    }

    fn assign(s: &mut TripState, _now_ms: u64) -> Result<(), AppRejection> {
        if s.phase != TripPhase::Requested {
            return Err(AppRejection::InvalidTransition {
                state: format!("{:?}", s.phase),
                op: "assign a driver".into(),
            });
        }
        s.phase = TripPhase::Assigned;
        Ok(())
    }

    fn is_finished(s: &TripState) -> bool {
        matches!(s.phase, TripPhase::Completed | TripPhase::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: GeoPoint = GeoPoint {
        lat_e6: 52_520_000,
        lon_e6: 13_405_000,
    };
    const B: GeoPoint = GeoPoint {
        lat_e6: 52_530_000,
        lon_e6: 13_405_000,
    };

    fn requested() -> TripState {
        Trip::create(
            &TripOp::Request {
                pickup: A,
                dropoff: B,
            },
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn full_trip_accumulates_distance_and_computes_fare() {
        let mut s = requested();
        Trip::assign(&mut s, 2_000).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::Arrived, 3_000).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::StartTrip, 4_000).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::Location { at: B }, 64_000).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::Complete, 124_000).unwrap();
        assert_eq!(s.phase, TripPhase::Completed);
        // 0.01 degree of latitude is about 1112 m.
        assert!((1_100..1_120).contains(&s.distance_m), "{}", s.distance_m);
        assert_eq!(s.duration_ms, 120_000);
        assert_eq!(s.fare_cents, Some(fare_cents(s.distance_m, 120_000)));
        assert!(Trip::is_finished(&s));
    }

    #[test]
    fn rider_cannot_complete_a_trip() {
        let mut s = requested();
        Trip::assign(&mut s, 0).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::Arrived, 0).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::StartTrip, 0).unwrap();
        let before = s.clone();
        let err = Trip::apply(&mut s, Role::Rider, &TripOp::Complete, 0).unwrap_err();
        assert!(matches!(
            err,
            AppRejection::WrongRole {
                role: Role::Rider,
                ..
            }
        ));
        assert_eq!(s, before, "a rejected op must not change the state");
    }

    #[test]
    fn unassigned_trip_cannot_start() {
        let mut s = requested();
        let err = Trip::apply(&mut s, Role::Driver, &TripOp::StartTrip, 0).unwrap_err();
        assert!(matches!(err, AppRejection::InvalidTransition { .. }));
    }

    #[test]
    fn implausible_location_jump_is_refused() {
        let mut s = requested();
        Trip::assign(&mut s, 0).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::Arrived, 0).unwrap();
        Trip::apply(&mut s, Role::Driver, &TripOp::StartTrip, 0).unwrap();
        let far = GeoPoint {
            lat_e6: 53_520_000,
            lon_e6: 13_405_000,
        };
        let err = Trip::apply(&mut s, Role::Driver, &TripOp::Location { at: far }, 1).unwrap_err();
        assert!(matches!(err, AppRejection::InvalidOp(_)));
        assert_eq!(s.distance_m, 0);
    }

    #[test]
    fn finished_trip_refuses_everything() {
        let mut s = requested();
        Trip::apply(&mut s, Role::Rider, &TripOp::Cancel, 0).unwrap();
        for op in [TripOp::Arrived, TripOp::Cancel, TripOp::Complete] {
            assert!(Trip::apply(&mut s, Role::Driver, &op, 0).is_err());
        }
        assert!(Trip::assign(&mut s, 0).is_err());
    }
}
