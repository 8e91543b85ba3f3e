//! Plain data crossing the boundary (UniFFI records and enums; the C API copies them into
//! `#[repr(C)]` structs of its own).

use crate::error::LifeboatError;
use lifeboat_common::{GeoPoint, TripOp, TripPhase};
use lifeboat_edge::SessionSnapshot;

/// A point in microdegrees (WGS84).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Point {
    pub lat_e6: i32,
    pub lon_e6: i32,
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
    Requested,
    Assigned,
    DriverArrived,
    OnTrip,
    Completed,
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
    Location { at: Point },
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

/// A trip as this device holds it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TripView {
    pub session: u64,
    pub phase: Phase,
    /// The version vector, as text (for logs).
    pub version: String,
    /// Sum of the version vector's counters: grows with every change.
    pub version_total: u64,
    /// Finished (completed or cancelled): the device holds its tombstone.
    pub finished: bool,
    /// The datacenter reported this copy committed.
    pub committed: bool,
    pub distance_m: u64,
    pub duration_ms: u64,
    pub location_updates: u32,
    pub fare_cents: Option<u64>,
    /// Size of the sealed digest held on the device.
    pub digest_bytes: u64,
}

impl From<&SessionSnapshot> for TripView {
    fn from(s: &SessionSnapshot) -> Self {
        TripView {
            session: s.session.0,
            phase: s.view.phase.into(),
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
    pub session: u64,
    pub op_seq: u64,
    pub version: String,
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
    /// UDP bytes sent and received, QUIC overhead included.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub connects: u64,
    pub ops_committed: u64,
    /// The datacenter serving the client now, if connected.
    pub connected_dc: Option<u16>,
    /// Events dropped because the app did not poll fast enough (since start).
    pub events_dropped: u64,
    /// The local UDP address (changes with `rebind`).
    pub local_addr: String,
}
