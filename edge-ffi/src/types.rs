//! Plain data crossing the boundary (UniFFI records and enums; the C API copies them into
//! `#[repr(C)]` structs of its own).
//!
//! Ids are plain integers: a trip (session) id is a `u64` (printed `s` and 16 hex digits),
//! an op is named by its trip and its `op_seq` (this device's sequence number within the
//! trip, from 1; 0 means no op), a datacenter by its `u16` id. Times are unix ms on the
//! device's clock unless a field says otherwise. A [`Point`] is checked against the WGS84
//! ranges when it enters the library (an `InvalidArgument` error), never clamped.

use crate::error::LifeboatError;
use lifeboat_common::{GeoPoint, OpId, Role, TripOp, TripPhase};
use lifeboat_edge::{OpOutcomeRecord, OpStatus, SessionSnapshot};

/// A point in microdegrees (WGS84).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Point {
    /// Latitude in microdegrees, from -90,000,000 to 90,000,000.
    pub lat_e6: i32,
    /// Longitude in microdegrees, from -180,000,000 to 180,000,000.
    pub lon_e6: i32,
}

impl From<GeoPoint> for Point {
    fn from(p: GeoPoint) -> Self {
        Point {
            lat_e6: p.lat_e6,
            lon_e6: p.lon_e6,
        }
    }
}

impl Point {
    pub(crate) fn to_geo(self) -> Result<GeoPoint, LifeboatError> {
        let p = GeoPoint {
            lat_e6: self.lat_e6,
            lon_e6: self.lon_e6,
        };
        if p.is_valid() {
            Ok(p)
        } else {
            Err(LifeboatError::invalid(format!(
                "point ({}, {}) is not a valid latitude/longitude in microdegrees",
                self.lat_e6, self.lon_e6
            )))
        }
    }
}

/// The phase of a trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Phase {
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

impl From<TripPhase> for Phase {
    fn from(p: TripPhase) -> Self {
        match p {
            TripPhase::Requested => Phase::Requested,
            TripPhase::Assigned => Phase::Assigned,
            TripPhase::DriverArrived => Phase::DriverArrived,
            TripPhase::OnTrip => Phase::OnTrip,
            TripPhase::Completed => Phase::Completed,
            TripPhase::Cancelled => Phase::Cancelled,
        }
    }
}

/// An op on an existing trip (a new trip is `request_trip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum TripAction {
    /// Driver: at the pickup point.
    Arrived,
    /// Driver: rider on board.
    StartTrip,
    /// Driver: a position report.
    Location {
        /// The driver's position.
        at: Point,
    },
    /// Driver: at the destination (computes the fare).
    Complete,
    /// Rider or driver, before the trip starts.
    Cancel,
}

impl TripAction {
    pub(crate) fn to_op(self) -> Result<TripOp, LifeboatError> {
        Ok(match self {
            TripAction::Arrived => TripOp::Arrived,
            TripAction::StartTrip => TripOp::StartTrip,
            TripAction::Location { at } => TripOp::Location { at: at.to_geo()? },
            TripAction::Complete => TripOp::Complete,
            TripAction::Cancel => TripOp::Cancel,
        })
    }
}

/// The part this device plays in a trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum TripRole {
    /// Requested the trip.
    Rider,
    /// Assigned to the trip by dispatch.
    Driver,
}

/// A trip as this device holds it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TripView {
    /// The trip (session) id.
    pub session: u64,
    /// The session id in its one printed form (`s` and 16 hex digits), as in logs.
    pub label: String,
    /// Where the trip is in its life.
    pub phase: Phase,
    /// This device's part in the trip (`None`: the held copy no longer names it).
    pub role: Option<TripRole>,
    /// The rider's device id.
    pub rider: u64,
    /// The driver's device id, once one is assigned.
    pub driver: Option<u64>,
    /// Where the rider asked to be picked up.
    pub pickup: Point,
    /// Where the rider asked to go.
    pub dropoff: Point,
    /// The last position the driver reported, once on the way.
    pub last_position: Option<Point>,
    /// When the request was applied (unix ms, the applying datacenter's clock).
    pub requested_ms: u64,
    /// When the trip started (unix ms, the datacenter's clock; 0: not yet).
    pub started_ms: u64,
    /// The version vector, as text (for logs): `{replica:counter,...}`, one counter per
    /// datacenter replica slot (e.g. `{r0000002a:3}`).
    pub version: String,
    /// Sum of the version vector's counters: grows with every change.
    pub version_total: u64,
    /// Finished (completed or cancelled): the device holds its tombstone.
    pub finished: bool,
    /// The datacenter reported this copy committed.
    pub committed: bool,
    /// Distance driven on trip, in metres; only grows.
    pub distance_m: u64,
    /// Time on trip in ms; only grows.
    pub duration_ms: u64,
    /// Location reports the datacenter accepted (saturating).
    pub location_updates: u32,
    /// The fare in cents, set once at completion; `None` before.
    pub fare_cents: Option<u64>,
    /// Size of the sealed digest held on the device, in bytes.
    pub digest_bytes: u64,
}

impl From<&SessionSnapshot> for TripView {
    fn from(s: &SessionSnapshot) -> Self {
        TripView {
            session: s.session.0,
            label: s.session.to_string(),
            phase: s.view.phase.into(),
            role: s.role.map(|r| match r {
                Role::Rider => TripRole::Rider,
                Role::Driver => TripRole::Driver,
            }),
            rider: s.rider.0,
            driver: s.driver.map(|d| d.0),
            pickup: s.view.pickup.into(),
            dropoff: s.view.dropoff.into(),
            last_position: s.view.last_position.map(Point::from),
            requested_ms: s.view.requested_ms,
            started_ms: s.view.started_ms,
            version: s.version.to_string(),
            version_total: s.version.total(),
            finished: s.finished,
            committed: s.committed,
            distance_m: s.view.distance_m,
            duration_ms: s.view.duration_ms,
            location_updates: s.view.location_updates,
            fare_cents: s.view.fare_cents,
            digest_bytes: s.digest_bytes as u64,
        }
    }
}

/// A committed op: applied by a datacenter, and the digest that covers it on disk here.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CommitInfo {
    /// The trip the op belongs to (for `request_trip`: the new trip's id).
    pub session: u64,
    /// The op's sequence number within the trip (this device's, from 1).
    pub op_seq: u64,
    /// The version vector of the committed copy that covers the op, as text (for logs).
    pub version: String,
    /// Sum of that version vector's counters.
    pub version_total: u64,
    /// A retry of an op the datacenter had already applied (applied once all the same).
    pub duplicate: bool,
}

impl From<&lifeboat_edge::Commit> for CommitInfo {
    fn from(c: &lifeboat_edge::Commit) -> Self {
        CommitInfo {
            session: c.op.session.0,
            op_seq: c.op.seq,
            version: c.version.to_string(),
            version_total: c.version.total(),
            duplicate: c.duplicate,
        }
    }
}

/// Counters of the embedded client (they restart from zero after `resume`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Stats {
    /// UDP bytes sent, QUIC overhead included (ended connections, plus the live one as of
    /// its last update).
    pub bytes_up: u64,
    /// UDP bytes received, counted like `bytes_up`.
    pub bytes_down: u64,
    /// QUIC connections established (handshake done).
    pub connects: u64,
    /// Ops resolved as committed.
    pub ops_committed: u64,
    /// The datacenter serving the client now, if connected.
    pub connected_dc: Option<u16>,
    /// Events dropped because the app did not poll fast enough (since start).
    pub events_dropped: u64,
    /// The local UDP address (changes with `rebind`).
    pub local_addr: String,
}

/// What an op does (the trip model's ops; `RequestTrip` creates the trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum OpKind {
    /// Rider: create the trip.
    RequestTrip,
    /// Driver: at the pickup point.
    Arrived,
    /// Driver: rider on board.
    StartTrip,
    /// Driver: a position report (the position is in `OpInfo::at`).
    Location,
    /// Driver: at the destination (computes the fare).
    Complete,
    /// Rider or driver, before the trip starts.
    Cancel,
}

/// Where an op stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum OpState {
    /// On the device's disk, not decided yet; sent (again) until it is.
    Queued,
    /// Committed: applied once, and a committed copy that covers it is on this device's disk.
    Committed,
    /// Failed for good: never applied (`message` says why).
    Failed,
    /// Not known: never queued on this device, or its outcome was acknowledged.
    Unknown,
}

/// An op's id and where it stands (`op_status`, `queued_ops`, `outcomes`, `enqueue`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct OpInfo {
    /// The trip the op belongs to.
    pub session: u64,
    /// The op's sequence number within the trip (this device's, from 1).
    pub op_seq: u64,
    /// Where the op stands.
    pub state: OpState,
    /// What the op does (`None` when the state is `Unknown`).
    pub kind: Option<OpKind>,
    /// The position of a `Location` op, the pickup of a `RequestTrip`.
    pub at: Option<Point>,
    /// Committed: the version of the committed copy that covers it, as text (for logs).
    pub version: String,
    /// Committed: the sum of that version vector's counters (0 otherwise).
    pub version_total: u64,
    /// Committed: a retry of an op the datacenter had already applied (applied once).
    pub duplicate: bool,
    /// Failed: why.
    pub message: String,
    /// Committed or failed: when the device decided it (unix ms).
    pub decided_at_ms: u64,
}

fn kind_of(op: &TripOp) -> (OpKind, Option<Point>) {
    match op {
        TripOp::Request { pickup, .. } => (OpKind::RequestTrip, Some((*pickup).into())),
        TripOp::Arrived => (OpKind::Arrived, None),
        TripOp::StartTrip => (OpKind::StartTrip, None),
        TripOp::Location { at } => (OpKind::Location, Some((*at).into())),
        TripOp::Complete => (OpKind::Complete, None),
        TripOp::Cancel => (OpKind::Cancel, None),
    }
}

impl OpInfo {
    fn bare(id: OpId, state: OpState) -> Self {
        OpInfo {
            session: id.session.0,
            op_seq: id.seq,
            state,
            kind: None,
            at: None,
            version: String::new(),
            version_total: 0,
            duplicate: false,
            message: String::new(),
            decided_at_ms: 0,
        }
    }

    pub(crate) fn queued(id: OpId, op: &TripOp) -> Self {
        let (kind, at) = kind_of(op);
        OpInfo {
            kind: Some(kind),
            at,
            ..OpInfo::bare(id, OpState::Queued)
        }
    }

    pub(crate) fn decided(rec: &OpOutcomeRecord<lifeboat_common::Trip>) -> Self {
        let (kind, at) = kind_of(&rec.op);
        let base = OpInfo {
            kind: Some(kind),
            at,
            decided_at_ms: rec.at_ms,
            ..OpInfo::bare(rec.id, OpState::Committed)
        };
        match &rec.result {
            Ok(c) => OpInfo {
                version: c.version.to_string(),
                version_total: c.version.total(),
                duplicate: c.duplicate,
                ..base
            },
            Err(e) => OpInfo {
                state: OpState::Failed,
                message: e.to_string(),
                ..base
            },
        }
    }

    pub(crate) fn from_status(id: OpId, s: &OpStatus<lifeboat_common::Trip>) -> Self {
        match s {
            OpStatus::Queued { op } => OpInfo::queued(id, op),
            OpStatus::Decided(rec) => OpInfo::decided(rec),
            OpStatus::Unknown => OpInfo::bare(id, OpState::Unknown),
        }
    }
}
