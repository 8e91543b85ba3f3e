//! The C ABI: a thin wrapper over [`crate::core::Core`].
//!
//! Conventions (also in `include/lifeboat.h`, generated from this file by cbindgen):
//! - Objects are opaque handles created by `lifeboat_*_new`/`lifeboat_client_start` and
//!   released by the matching `lifeboat_*_free` (NULL is accepted and ignored, like `free`).
//! - Every function that can fail returns an `int32_t` status: `LIFEBOAT_OK` (0) or another
//!   non-negative status on success, a negative `LIFEBOAT_ERR_*` on failure. After a failure
//!   `lifeboat_last_error_message()` describes it (per thread).
//! - Every pointer argument is checked: NULL gives `LIFEBOAT_ERR_NULL` (only the `cancel`
//!   arguments may be NULL, meaning "no cancel token"). Strings are NUL-terminated UTF-8.
//! - No panic crosses the boundary: each function catches it and returns
//!   `LIFEBOAT_ERR_PANIC`.
//! - A `LifeboatClient` may be used from several threads at once; it must not be freed
//!   while another thread still uses it.
//! - Events are polled (`lifeboat_poll_event`), never delivered by callback: a callback
//!   would run foreign code on the client's own thread, where blocking or re-entering the
//!   library could stall or deadlock the client.

use crate::cancel::CancelToken;
use crate::core::Core;
use crate::error::LifeboatError;
use crate::events::{Event, EventKind};
use crate::settings::{default_settings, Settings};
use crate::types::{
    CommitInfo, OpInfo, OpKind, OpState, Phase, Point, TripAction, TripRole, TripView,
};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const LIFEBOAT_OK: i32 = 0;
/// `lifeboat_poll_event`: no event arrived within the timeout (not an error).
pub const LIFEBOAT_NO_EVENT: i32 = 1;
/// `lifeboat_trip`: the device holds no such trip (not an error).
pub const LIFEBOAT_NOT_FOUND: i32 = 2;
/// A required pointer argument was NULL. Nothing changed.
pub const LIFEBOAT_ERR_NULL: i32 = -1;
/// An argument is out of range or malformed (bad address, non-UTF-8 string, zero timeout,
/// unknown action). Nothing changed.
pub const LIFEBOAT_ERR_INVALID_ARGUMENT: i32 = -2;
/// The configuration is unusable (unreadable CA file, malformed credential, bad timings).
pub const LIFEBOAT_ERR_CONFIG: i32 = -3;
/// The device store could not be opened or written; the client stopped rather than report
/// anything committed that is not on disk.
pub const LIFEBOAT_ERR_STORE: i32 = -4;
/// The client is paused (`lifeboat_pause`); call `lifeboat_resume` first. Nothing changed.
pub const LIFEBOAT_ERR_PAUSED: i32 = -5;
/// The client has stopped (freed, shut down, or stopped after a store failure).
pub const LIFEBOAT_ERR_CLOSED: i32 = -6;
/// The wait timed out. An op that was queued stays queued and is committed exactly once
/// later; its outcome arrives as a `LIFEBOAT_EVENT_OP_COMMITTED`/`_OP_REJECTED` event.
pub const LIFEBOAT_ERR_TIMEOUT: i32 = -7;
/// The wait was cancelled with a cancel token; a queued op stays queued (as for a timeout).
pub const LIFEBOAT_ERR_CANCELLED: i32 = -8;
/// The op was refused, locally (outbox full, unknown or finished trip) or by the
/// datacenter (invalid transition, wrong role). Nothing changed.
pub const LIFEBOAT_ERR_REJECTED: i32 = -9;
/// The runtime or a socket failed.
pub const LIFEBOAT_ERR_RUNTIME: i32 = -10;
/// A bug in the library: a panic was caught at the boundary.
pub const LIFEBOAT_ERR_PANIC: i32 = -11;

/// Driver: at the pickup point.
pub const LIFEBOAT_ACTION_ARRIVED: i32 = 1;
/// Driver: rider on board.
pub const LIFEBOAT_ACTION_START_TRIP: i32 = 2;
/// Driver: a position report (the `at` argument).
pub const LIFEBOAT_ACTION_LOCATION: i32 = 3;
/// Driver: at the destination (computes the fare).
pub const LIFEBOAT_ACTION_COMPLETE: i32 = 4;
/// Rider or driver, before the trip starts.
pub const LIFEBOAT_ACTION_CANCEL: i32 = 5;
/// Rider: the op that requested (created) the trip (reported by `LifeboatOp`, not accepted by
/// `lifeboat_submit`: use `lifeboat_request_trip` / `lifeboat_enqueue_request`).
pub const LIFEBOAT_ACTION_REQUEST_TRIP: i32 = 6;

/// Where an op stands (`LifeboatOp::state`): not known here (never queued on this device,
/// or its outcome was acknowledged).
pub const LIFEBOAT_OP_UNKNOWN: i32 = 0;
/// On the device's disk, not decided yet; sent (again) until it is.
pub const LIFEBOAT_OP_QUEUED: i32 = 1;
/// Committed: applied once, covered by a committed copy on this device's disk.
pub const LIFEBOAT_OP_COMMITTED: i32 = 2;
/// Failed for good: never applied (`message` says why).
pub const LIFEBOAT_OP_FAILED: i32 = 3;

/// `LifeboatTrip::role`: the held copy no longer names this device.
pub const LIFEBOAT_ROLE_NONE: i32 = 0;
/// `LifeboatTrip::role`: this device requested the trip.
pub const LIFEBOAT_ROLE_RIDER: i32 = 1;
/// `LifeboatTrip::role`: this device was assigned to the trip by dispatch.
pub const LIFEBOAT_ROLE_DRIVER: i32 = 2;

/// No phase (the event is not about a trip's state).
pub const LIFEBOAT_PHASE_NONE: i32 = 0;
/// Created by the rider; waits for dispatch to assign a driver.
pub const LIFEBOAT_PHASE_REQUESTED: i32 = 1;
/// A driver is assigned and on the way.
pub const LIFEBOAT_PHASE_ASSIGNED: i32 = 2;
/// The driver is at the pickup point.
pub const LIFEBOAT_PHASE_DRIVER_ARRIVED: i32 = 3;
/// The rider is on board; location reports count towards distance and time.
pub const LIFEBOAT_PHASE_ON_TRIP: i32 = 4;
/// Final: the driver completed the trip and the fare is set.
pub const LIFEBOAT_PHASE_COMPLETED: i32 = 5;
/// Final: the rider or the driver cancelled before the trip started.
pub const LIFEBOAT_PHASE_CANCELLED: i32 = 6;

/// Connected to datacenter `dc` at `addr`.
pub const LIFEBOAT_EVENT_CONNECTED: i32 = 1;
/// A connection attempt to `addr` failed (`message`).
pub const LIFEBOAT_EVENT_CONNECT_FAILED: i32 = 2;
/// The connection to `addr` was lost (`message`).
pub const LIFEBOAT_EVENT_DISCONNECTED: i32 = 3;
/// The datacenter at `addr` was lost; the client looks for another.
pub const LIFEBOAT_EVENT_FAILOVER_STARTED: i32 = 4;
/// Connected again, to `dc` at `addr`, after `stalled_ms` without a datacenter.
pub const LIFEBOAT_EVENT_FAILOVER_FINISHED: i32 = 5;
/// A new copy of trip `session` arrived (`phase`, `version_total`).
pub const LIFEBOAT_EVENT_SESSION_UPDATED: i32 = 6;
/// A server-side change of `session` reached its edge-ack quorum.
pub const LIFEBOAT_EVENT_SERVER_CHANGE_COMMITTED: i32 = 7;
/// The datacenter holds a diverged copy of `session` (`message`).
pub const LIFEBOAT_EVENT_CONFLICT: i32 = 8;
/// The datacenter refused a digest this device uploaded (`message`).
pub const LIFEBOAT_EVENT_UPLOAD_REFUSED: i32 = 9;
/// Op `session`/`op_seq` was committed (also after a timed-out or cancelled wait).
pub const LIFEBOAT_EVENT_OP_COMMITTED: i32 = 10;
/// Op `session`/`op_seq` was refused (`message`).
pub const LIFEBOAT_EVENT_OP_REJECTED: i32 = 11;
/// The device store failed; the client stopped (`message`).
pub const LIFEBOAT_EVENT_STORE_FAILED: i32 = 12;
/// `count` events were dropped: the app did not poll fast enough.
pub const LIFEBOAT_EVENT_EVENTS_DROPPED: i32 = 13;
/// Moved back to a more preferred datacenter (`addr`; the one left is in `message`).
pub const LIFEBOAT_EVENT_MOVED: i32 = 14;
/// Ops of `session` wait for its anchor (the chain holder) to persist them (`message` says
/// why): nothing is lost, nothing commits on another branch meanwhile.
pub const LIFEBOAT_EVENT_WAITING: i32 = 15;
/// This device is no longer a participant of `session` (its assignment never committed);
/// its queued ops for it were refused.
pub const LIFEBOAT_EVENT_REMOVED: i32 = 16;

/// Bytes of `LifeboatEvent::addr`, NUL included.
pub const LIFEBOAT_ADDR_BYTES: usize = 64;
/// Bytes of `LifeboatEvent::message`, NUL included (longer messages are truncated).
pub const LIFEBOAT_MESSAGE_BYTES: usize = 256;

/// Settings of a client being configured (opaque).
pub struct LifeboatConfig {
    settings: Settings,
}

/// A running embedded client (opaque).
pub struct LifeboatClient {
    core: Core,
}

/// A cancel token (opaque): ends the waits that use it, from any thread.
pub struct LifeboatCancel {
    token: CancelToken,
}

/// A point in microdegrees (WGS84).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeboatPoint {
    /// Latitude in microdegrees, from -90,000,000 to 90,000,000.
    pub lat_e6: i32,
    /// Longitude in microdegrees, from -180,000,000 to 180,000,000.
    pub lon_e6: i32,
}

/// A committed op. After `LIFEBOAT_ERR_TIMEOUT`/`_CANCELLED`, `session` and `op_seq` name
/// the queued op (`op_seq` 0: not known to be queued) and the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeboatCommit {
    /// The trip the op belongs to (for `lifeboat_request_trip`: the new trip's id).
    pub session: u64,
    /// The op's sequence number within the trip (this device's, from 1).
    pub op_seq: u64,
    /// Sum of the version vector's counters of the digest that covers the op.
    pub version_total: u64,
    /// A retry of an op the datacenter had already applied (applied once all the same).
    pub duplicate: bool,
}

/// A trip as the device holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeboatTrip {
    /// The trip (session) id.
    pub session: u64,
    /// `LIFEBOAT_PHASE_*`.
    pub phase: i32,
    /// Sum of the version vector's counters: grows with every change.
    pub version_total: u64,
    /// Distance driven on trip, in metres; only grows.
    pub distance_m: u64,
    /// Time on trip in ms; only grows.
    pub duration_ms: u64,
    /// The fare in cents, or -1 while there is none.
    pub fare_cents: i64,
    /// Location reports the datacenter accepted (saturating).
    pub location_updates: u32,
    /// Size of the sealed digest held on the device, in bytes (saturating).
    pub digest_bytes: u32,
    /// Finished (completed or cancelled): the device holds its tombstone.
    pub finished: bool,
    /// The datacenter reported this copy committed.
    pub committed: bool,
    /// `LIFEBOAT_ROLE_*`: this device's part in the trip.
    pub role: i32,
    /// The rider's device id.
    pub rider: u64,
    /// The driver's device id (0: none assigned yet).
    pub driver: u64,
    /// Where the rider asked to be picked up.
    pub pickup: LifeboatPoint,
    /// Where the rider asked to go.
    pub dropoff: LifeboatPoint,
    /// The driver's last reported position, valid when `has_last_position`.
    pub last_position: LifeboatPoint,
    /// Whether `last_position` holds a position (false until the driver's first report).
    pub has_last_position: bool,
    /// When the request was applied (unix ms, the applying datacenter's clock).
    pub requested_ms: u64,
    /// When the trip started (unix ms, the datacenter's clock; 0: not yet).
    pub started_ms: u64,
}

/// An op's id and where it stands (`lifeboat_enqueue`, `lifeboat_op_status`,
/// `lifeboat_queued_ops`, `lifeboat_outcomes`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifeboatOp {
    /// The trip the op belongs to.
    pub session: u64,
    /// The op's sequence number within the trip (this device's, from 1).
    pub op_seq: u64,
    /// `LIFEBOAT_OP_*`.
    pub state: i32,
    /// `LIFEBOAT_ACTION_*` (0 when the state is `LIFEBOAT_OP_UNKNOWN`).
    pub action: i32,
    /// The position of a location op, the pickup of a trip request (valid when `has_at`).
    pub at: LifeboatPoint,
    /// Whether `at` holds a position (a location op or a trip request).
    pub has_at: bool,
    /// Committed: a retry of an op the datacenter had already applied (applied once).
    pub duplicate: bool,
    /// Committed: the version total of the committed copy that covers it.
    pub version_total: u64,
    /// Committed or failed: when the device decided it (unix ms).
    pub decided_at_ms: u64,
    /// Failed: why. NUL-terminated, truncated to fit.
    pub message: [c_char; LIFEBOAT_MESSAGE_BYTES],
}

/// One event (`lifeboat_poll_event`). Fields that do not apply to `kind` are zero/empty.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifeboatEvent {
    /// `LIFEBOAT_EVENT_*`.
    pub kind: i32,
    /// `LIFEBOAT_EVENT_SESSION_UPDATED`: the trip's phase in the new copy
    /// (`LIFEBOAT_PHASE_*`; `LIFEBOAT_PHASE_NONE` for other kinds).
    pub phase: i32,
    /// The trip concerned (trip and op events).
    pub session: u64,
    /// The op's sequence number within `session` (`LIFEBOAT_EVENT_OP_COMMITTED`,
    /// `LIFEBOAT_EVENT_OP_REJECTED`).
    pub op_seq: u64,
    /// `LIFEBOAT_EVENT_FAILOVER_FINISHED`: the stall the user felt, in ms, from the first op
    /// the lost datacenter left unanswered (or its last frame) to the first op answered
    /// after the reconnect.
    pub stalled_ms: u64,
    /// Sum of the version vector's counters of the copy concerned (the datacenter's for
    /// `LIFEBOAT_EVENT_CONFLICT`).
    pub version_total: u64,
    /// `LIFEBOAT_EVENT_EVENTS_DROPPED`: how many events were dropped since the last such
    /// event.
    pub count: u64,
    /// When it happened (unix ms, the device's clock), not when it was polled.
    pub at_ms: u64,
    /// `LIFEBOAT_EVENT_FAILOVER_FINISHED`: the part of `stalled_ms` spent noticing that the
    /// datacenter was gone.
    pub detection_ms: u64,
    /// The datacenter's id (`LIFEBOAT_EVENT_CONNECTED`, `LIFEBOAT_EVENT_FAILOVER_FINISHED`).
    pub dc: u16,
    /// A datacenter's address, "ip:port" (connection and failover events,
    /// `LIFEBOAT_EVENT_MOVED`). NUL-terminated.
    pub addr: [c_char; LIFEBOAT_ADDR_BYTES],
    /// A human-readable reason or detail (see each `LIFEBOAT_EVENT_*`). NUL-terminated,
    /// truncated to fit.
    pub message: [c_char; LIFEBOAT_MESSAGE_BYTES],
}

/// Counters of a client (they restart from zero after `lifeboat_resume`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeboatStats {
    /// UDP bytes sent, QUIC overhead included (ended connections, plus the live one as of
    /// its last update).
    pub bytes_up: u64,
    /// UDP bytes received, counted like `bytes_up`.
    pub bytes_down: u64,
    /// QUIC connections established (handshake done).
    pub connects: u64,
    /// Ops resolved as committed.
    pub ops_committed: u64,
    /// Events dropped because the app did not poll fast enough (since the client started;
    /// not reset by `lifeboat_resume`).
    pub events_dropped: u64,
    /// The datacenter serving the client now (0: none).
    pub connected_dc: u16,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

enum CallError {
    Null(&'static str),
    Status(i32, String),
    Lib(LifeboatError),
}

impl From<LifeboatError> for CallError {
    fn from(e: LifeboatError) -> Self {
        CallError::Lib(e)
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Run one C call: catch panics, record the error message, return the status.
fn call(f: impl FnOnce() -> Result<i32, CallError>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(status)) => {
            set_last_error("");
            status
        }
        Ok(Err(CallError::Null(what))) => {
            set_last_error(&format!("{what} is NULL"));
            LIFEBOAT_ERR_NULL
        }
        Ok(Err(CallError::Status(code, msg))) => {
            set_last_error(&msg);
            code
        }
        Ok(Err(CallError::Lib(e))) => {
            set_last_error(&e.to_string());
            status_of(&e)
        }
        Err(p) => {
            set_last_error(&format!(
                "internal error (a panic caught at the C boundary): {}",
                panic_message(p.as_ref())
            ));
            LIFEBOAT_ERR_PANIC
        }
    }
}

unsafe fn arg<'a, T>(p: *const T, what: &'static str) -> Result<&'a T, CallError> {
    // SAFETY: the caller passes NULL or a pointer it got from this library (documented).
    unsafe { p.as_ref() }.ok_or(CallError::Null(what))
}

unsafe fn out<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T, CallError> {
    // SAFETY: the caller passes NULL or a valid pointer to writable memory (documented).
    unsafe { p.as_mut() }.ok_or(CallError::Null(what))
}

unsafe fn str_arg<'a>(p: *const c_char, what: &'static str) -> Result<&'a str, CallError> {
    if p.is_null() {
        return Err(CallError::Null(what));
    }
    // SAFETY: non-NULL, and the caller passes a NUL-terminated string (documented).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| LifeboatError::invalid(format!("{what} is not UTF-8")).into())
}

unsafe fn cancel_arg<'a>(p: *const LifeboatCancel) -> Option<&'a CancelToken> {
    // SAFETY: NULL or a pointer from `lifeboat_cancel_new` (documented).
    unsafe { p.as_ref() }.map(|c| &c.token)
}

/// Copy `s` into a fixed C buffer, truncated at a character boundary, NUL-terminated.
fn copy_str<const N: usize>(s: &str, buf: &mut [c_char; N]) {
    let mut end = s.len().min(N.saturating_sub(1));
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    for (d, b) in buf.iter_mut().zip(s.as_bytes()[..end].iter()) {
        *d = *b as c_char;
    }
    if N > 0 {
        buf[end] = 0;
    }
}

fn phase_code(p: Option<Phase>) -> i32 {
    match p {
        None => LIFEBOAT_PHASE_NONE,
        Some(Phase::Requested) => LIFEBOAT_PHASE_REQUESTED,
        Some(Phase::Assigned) => LIFEBOAT_PHASE_ASSIGNED,
        Some(Phase::DriverArrived) => LIFEBOAT_PHASE_DRIVER_ARRIVED,
        Some(Phase::OnTrip) => LIFEBOAT_PHASE_ON_TRIP,
        Some(Phase::Completed) => LIFEBOAT_PHASE_COMPLETED,
        Some(Phase::Cancelled) => LIFEBOAT_PHASE_CANCELLED,
    }
}

fn event_code(k: EventKind) -> i32 {
    match k {
        EventKind::Connected => LIFEBOAT_EVENT_CONNECTED,
        EventKind::ConnectFailed => LIFEBOAT_EVENT_CONNECT_FAILED,
        EventKind::Disconnected => LIFEBOAT_EVENT_DISCONNECTED,
        EventKind::FailoverStarted => LIFEBOAT_EVENT_FAILOVER_STARTED,
        EventKind::FailoverFinished => LIFEBOAT_EVENT_FAILOVER_FINISHED,
        EventKind::SessionUpdated => LIFEBOAT_EVENT_SESSION_UPDATED,
        EventKind::ServerChangeCommitted => LIFEBOAT_EVENT_SERVER_CHANGE_COMMITTED,
        EventKind::Conflict => LIFEBOAT_EVENT_CONFLICT,
        EventKind::UploadRefused => LIFEBOAT_EVENT_UPLOAD_REFUSED,
        EventKind::OpCommitted => LIFEBOAT_EVENT_OP_COMMITTED,
        EventKind::OpRejected => LIFEBOAT_EVENT_OP_REJECTED,
        EventKind::StoreFailed => LIFEBOAT_EVENT_STORE_FAILED,
        EventKind::EventsDropped => LIFEBOAT_EVENT_EVENTS_DROPPED,
        EventKind::Moved => LIFEBOAT_EVENT_MOVED,
        EventKind::Waiting => LIFEBOAT_EVENT_WAITING,
        EventKind::Removed => LIFEBOAT_EVENT_REMOVED,
    }
}

fn c_event(e: &Event) -> LifeboatEvent {
    let mut c = LifeboatEvent {
        kind: event_code(e.kind),
        phase: phase_code(e.phase),
        session: e.session,
        op_seq: e.op_seq,
        stalled_ms: e.stalled_ms,
        version_total: e.version_total,
        count: e.count,
        at_ms: e.at_ms,
        detection_ms: e.detection_ms,
        dc: e.dc,
        addr: [0; LIFEBOAT_ADDR_BYTES],
        message: [0; LIFEBOAT_MESSAGE_BYTES],
    };
    copy_str(&e.addr, &mut c.addr);
    copy_str(&e.message, &mut c.message);
    c
}

fn c_trip(t: &TripView) -> LifeboatTrip {
    LifeboatTrip {
        session: t.session,
        phase: phase_code(Some(t.phase)),
        version_total: t.version_total,
        distance_m: t.distance_m,
        duration_ms: t.duration_ms,
        fare_cents: t
            .fare_cents
            .map(|f| i64::try_from(f).unwrap_or(i64::MAX))
            .unwrap_or(-1),
        location_updates: t.location_updates,
        digest_bytes: u32::try_from(t.digest_bytes).unwrap_or(u32::MAX),
        finished: t.finished,
        committed: t.committed,
        role: match t.role {
            None => LIFEBOAT_ROLE_NONE,
            Some(TripRole::Rider) => LIFEBOAT_ROLE_RIDER,
            Some(TripRole::Driver) => LIFEBOAT_ROLE_DRIVER,
        },
        rider: t.rider,
        driver: t.driver.unwrap_or(0),
        pickup: c_point(t.pickup),
        dropoff: c_point(t.dropoff),
        last_position: t.last_position.map(c_point).unwrap_or_default(),
        has_last_position: t.last_position.is_some(),
        requested_ms: t.requested_ms,
        started_ms: t.started_ms,
    }
}

fn c_point(p: Point) -> LifeboatPoint {
    LifeboatPoint {
        lat_e6: p.lat_e6,
        lon_e6: p.lon_e6,
    }
}

fn c_op(o: &OpInfo) -> LifeboatOp {
    let mut c = LifeboatOp {
        session: o.session,
        op_seq: o.op_seq,
        state: match o.state {
            OpState::Unknown => LIFEBOAT_OP_UNKNOWN,
            OpState::Queued => LIFEBOAT_OP_QUEUED,
            OpState::Committed => LIFEBOAT_OP_COMMITTED,
            OpState::Failed => LIFEBOAT_OP_FAILED,
        },
        action: match o.kind {
            None => 0,
            Some(OpKind::Arrived) => LIFEBOAT_ACTION_ARRIVED,
            Some(OpKind::StartTrip) => LIFEBOAT_ACTION_START_TRIP,
            Some(OpKind::Location) => LIFEBOAT_ACTION_LOCATION,
            Some(OpKind::Complete) => LIFEBOAT_ACTION_COMPLETE,
            Some(OpKind::Cancel) => LIFEBOAT_ACTION_CANCEL,
            Some(OpKind::RequestTrip) => LIFEBOAT_ACTION_REQUEST_TRIP,
        },
        at: o.at.map(c_point).unwrap_or_default(),
        has_at: o.at.is_some(),
        duplicate: o.duplicate,
        version_total: o.version_total,
        decided_at_ms: o.decided_at_ms,
        message: [0; LIFEBOAT_MESSAGE_BYTES],
    };
    copy_str(&o.message, &mut c.message);
    c
}

/// Write up to `capacity` ops to `out_ops` and the total to `*out_count`.
unsafe fn write_ops(
    list: &[OpInfo],
    out_ops: *mut LifeboatOp,
    capacity: usize,
    out_count: &mut usize,
) -> Result<i32, CallError> {
    if capacity > 0 && out_ops.is_null() {
        return Err(CallError::Null("out_ops"));
    }
    for (i, o) in list.iter().take(capacity).enumerate() {
        // SAFETY: non-NULL, and the caller gave room for `capacity` ops (documented).
        unsafe { out_ops.add(i).write(c_op(o)) };
    }
    *out_count = list.len();
    Ok(LIFEBOAT_OK)
}

fn action_arg(action: i32, at: LifeboatPoint) -> Result<TripAction, CallError> {
    Ok(match action {
        LIFEBOAT_ACTION_ARRIVED => TripAction::Arrived,
        LIFEBOAT_ACTION_START_TRIP => TripAction::StartTrip,
        LIFEBOAT_ACTION_LOCATION => TripAction::Location {
            at: Point {
                lat_e6: at.lat_e6,
                lon_e6: at.lon_e6,
            },
        },
        LIFEBOAT_ACTION_COMPLETE => TripAction::Complete,
        LIFEBOAT_ACTION_CANCEL => TripAction::Cancel,
        other => return Err(LifeboatError::invalid(format!("unknown action {other}")).into()),
    })
}

fn c_commit(c: &CommitInfo) -> LifeboatCommit {
    LifeboatCommit {
        session: c.session,
        op_seq: c.op_seq,
        version_total: c.version_total,
        duplicate: c.duplicate,
    }
}

/// Write a commit, or after a timeout/cancel the queued op's id, and pass the result on.
fn finish_submit(
    r: Result<CommitInfo, LifeboatError>,
    out_commit: &mut LifeboatCommit,
) -> Result<i32, CallError> {
    match r {
        Ok(c) => {
            *out_commit = c_commit(&c);
            Ok(LIFEBOAT_OK)
        }
        Err(e) => {
            if let LifeboatError::Timeout {
                session, op_seq, ..
            }
            | LifeboatError::Cancelled { session, op_seq } = &e
            {
                *out_commit = LifeboatCommit {
                    session: *session,
                    op_seq: *op_seq,
                    ..LifeboatCommit::default()
                };
            }
            Err(e.into())
        }
    }
}

/// The message of the last failed call on this thread ("" after a success). Valid until
/// the next `lifeboat_*` call on this thread; never NULL.
#[no_mangle]
pub extern "C" fn lifeboat_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version, e.g. "0.1.0" (static; never NULL).
#[no_mangle]
pub extern "C" fn lifeboat_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Create a configuration with the defaults (keep-alive 15 s, idle timeout 45 s, connect
/// timeout 2 s, 256 events, 64 tombstones kept at most 7 days) and no datacenters yet.
///
/// `token_hex`: the device credential, 64 hex digits (`lifeboat-server credential`);
/// `ca_pem_path`: the region CA file; `store_path`: the device store directory.
/// Nothing is checked until `lifeboat_client_start`.
///
/// # Safety
/// The strings must be NUL-terminated; `out` must point to writable memory.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_new(
    device: u64,
    token_hex: *const c_char,
    ca_pem_path: *const c_char,
    store_path: *const c_char,
    out: *mut *mut LifeboatConfig,
) -> i32 {
    call(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let token = unsafe { str_arg(token_hex, "token_hex") }?;
        let ca = unsafe { str_arg(ca_pem_path, "ca_pem_path") }?;
        let store = unsafe { str_arg(store_path, "store_path") }?;
        let settings = default_settings(
            device,
            token.to_string(),
            Vec::new(),
            ca.to_string(),
            store.to_string(),
        );
        *out = Box::into_raw(Box::new(LifeboatConfig { settings }));
        Ok(LIFEBOAT_OK)
    })
}

unsafe fn out_ptr<'a, T>(p: *mut *mut T, what: &'static str) -> Result<&'a mut *mut T, CallError> {
    let slot = unsafe { out(p, what) }?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

unsafe fn config_mut<'a>(p: *mut LifeboatConfig) -> Result<&'a mut Settings, CallError> {
    Ok(&mut unsafe { out(p, "config") }?.settings)
}

/// Append a datacenter ("ip:port"); the first added is the primary. At most 16.
///
/// # Safety
/// `config` from `lifeboat_config_new`; `addr` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_add_datacenter(
    config: *mut LifeboatConfig,
    addr: *const c_char,
) -> i32 {
    call(|| {
        let s = unsafe { config_mut(config) }?;
        let addr = unsafe { str_arg(addr, "addr") }?;
        if addr.trim().parse::<std::net::SocketAddr>().is_err() {
            return Err(LifeboatError::invalid(format!(
                "datacenter address {addr:?} is not ip:port"
            ))
            .into());
        }
        if s.datacenters.len() >= crate::settings::MAX_DATACENTERS {
            return Err(LifeboatError::invalid("too many datacenters").into());
        }
        s.datacenters.push(addr.trim().to_string());
        Ok(LIFEBOAT_OK)
    })
}

/// Driver: offer this device for dispatch from the start.
///
/// # Safety
/// `config` from `lifeboat_config_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_set_available(
    config: *mut LifeboatConfig,
    available: bool,
) -> i32 {
    call(|| {
        unsafe { config_mut(config) }?.available = available;
        Ok(LIFEBOAT_OK)
    })
}

/// Failure detection and battery: QUIC keep-alive interval and idle timeout (a datacenter
/// silent this long is dead), both in ms; keep-alive must be below the idle timeout.
///
/// # Safety
/// `config` from `lifeboat_config_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_set_timing(
    config: *mut LifeboatConfig,
    keep_alive_ms: u64,
    idle_timeout_ms: u64,
    connect_timeout_ms: u64,
) -> i32 {
    call(|| {
        let s = unsafe { config_mut(config) }?;
        s.keep_alive_ms = keep_alive_ms;
        s.idle_timeout_ms = idle_timeout_ms;
        s.connect_timeout_ms = connect_timeout_ms;
        Ok(LIFEBOAT_OK)
    })
}

/// Bounded device store: keep at most `max_tombstones` finished trips, and drop those
/// older than `ttl_s` seconds when the client starts or resumes (0: no age limit).
///
/// # Safety
/// `config` from `lifeboat_config_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_set_tombstones(
    config: *mut LifeboatConfig,
    max_tombstones: u32,
    ttl_s: u64,
) -> i32 {
    call(|| {
        let s = unsafe { config_mut(config) }?;
        s.max_tombstones = max_tombstones;
        s.tombstone_ttl_s = ttl_s;
        Ok(LIFEBOAT_OK)
    })
}

/// Op outcomes kept until the app acknowledges them (`lifeboat_acknowledge`); beyond it the
/// oldest is dropped (at least 1; default 1024).
///
/// # Safety
/// `config` from `lifeboat_config_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_set_outcomes(
    config: *mut LifeboatConfig,
    max_outcomes: u32,
) -> i32 {
    call(|| {
        let s = unsafe { config_mut(config) }?;
        if max_outcomes == 0 {
            return Err(LifeboatError::invalid("max_outcomes must be at least 1").into());
        }
        s.max_outcomes = max_outcomes;
        Ok(LIFEBOAT_OK)
    })
}

/// Events buffered for `lifeboat_poll_event` (1..=65536; default 256).
///
/// # Safety
/// `config` from `lifeboat_config_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_set_event_queue(
    config: *mut LifeboatConfig,
    capacity: u32,
) -> i32 {
    call(|| {
        unsafe { config_mut(config) }?.event_queue = capacity;
        Ok(LIFEBOAT_OK)
    })
}

/// Free a configuration (NULL is ignored). A started client keeps its own copy.
///
/// # Safety
/// `config` from `lifeboat_config_new`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_config_free(config: *mut LifeboatConfig) {
    if !config.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in lifeboat_config_new, freed once (documented).
            drop(unsafe { Box::from_raw(config) })
        }));
    }
}

/// Validate the configuration, open the store and start connecting in the background.
/// Returns at once; see `lifeboat_wait_connected` and the `CONNECTED` event.
///
/// # Safety
/// `config` from `lifeboat_config_new`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_client_start(
    config: *const LifeboatConfig,
    out: *mut *mut LifeboatClient,
) -> i32 {
    call(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let config = unsafe { arg(config, "config") }?;
        let core = Core::start(&config.settings)?;
        *out = Box::into_raw(Box::new(LifeboatClient { core }));
        Ok(LIFEBOAT_OK)
    })
}

/// Stop the client (bounded wait) and free it (NULL is ignored). The store stays on disk.
///
/// # Safety
/// `client` from `lifeboat_client_start`, not used afterwards by any thread.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_client_free(client: *mut LifeboatClient) {
    if !client.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in lifeboat_client_start, freed once (documented).
            drop(unsafe { Box::from_raw(client) })
        }));
    }
}

unsafe fn client_ref<'a>(p: *const LifeboatClient) -> Result<&'a Core, CallError> {
    Ok(&unsafe { arg(p, "client") }?.core)
}

/// Rider: request a trip and wait at most `timeout_ms` for its commit. On success
/// `out_commit->session` is the new trip's id.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `cancel` NULL or from `lifeboat_cancel_new`;
/// `out_commit` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_request_trip(
    client: *const LifeboatClient,
    pickup: LifeboatPoint,
    dropoff: LifeboatPoint,
    timeout_ms: u64,
    cancel: *const LifeboatCancel,
    out_commit: *mut LifeboatCommit,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_commit = unsafe { out(out_commit, "out_commit") }?;
        let p = |p: LifeboatPoint| Point {
            lat_e6: p.lat_e6,
            lon_e6: p.lon_e6,
        };
        let r = core.request_trip(p(pickup), p(dropoff), timeout_ms, unsafe {
            cancel_arg(cancel)
        });
        finish_submit(r, out_commit)
    })
}

/// An op (`LIFEBOAT_ACTION_*`; `at` is used by `LIFEBOAT_ACTION_LOCATION`) on trip
/// `session`; waits at most `timeout_ms` for its commit. On `LIFEBOAT_ERR_TIMEOUT` or
/// `LIFEBOAT_ERR_CANCELLED`, `out_commit` names the op that stays queued.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `cancel` NULL or from `lifeboat_cancel_new`;
/// `out_commit` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_submit(
    client: *const LifeboatClient,
    session: u64,
    action: i32,
    at: LifeboatPoint,
    timeout_ms: u64,
    cancel: *const LifeboatCancel,
    out_commit: *mut LifeboatCommit,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_commit = unsafe { out(out_commit, "out_commit") }?;
        let action = action_arg(action, at)?;
        let r = core.submit(session, action, timeout_ms, unsafe { cancel_arg(cancel) });
        finish_submit(r, out_commit)
    })
}

/// Queue an op (as `lifeboat_submit`) and return at once: `out_op` names it (state
/// `LIFEBOAT_OP_QUEUED`; it is on the device's disk). Its outcome arrives as an event and
/// stays readable with `lifeboat_op_status` until `lifeboat_acknowledge`.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_op` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_enqueue(
    client: *const LifeboatClient,
    session: u64,
    action: i32,
    at: LifeboatPoint,
    out_op: *mut LifeboatOp,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_op = unsafe { out(out_op, "out_op") }?;
        *out_op = c_op(&core.enqueue(session, action_arg(action, at)?)?);
        Ok(LIFEBOAT_OK)
    })
}

/// Rider: queue a trip request and return at once: `out_op` names the op (its `session` is
/// the new trip's id).
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_op` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_enqueue_request(
    client: *const LifeboatClient,
    pickup: LifeboatPoint,
    dropoff: LifeboatPoint,
    out_op: *mut LifeboatOp,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_op = unsafe { out(out_op, "out_op") }?;
        let p = |p: LifeboatPoint| Point {
            lat_e6: p.lat_e6,
            lon_e6: p.lon_e6,
        };
        *out_op = c_op(&core.enqueue_request(p(pickup), p(dropoff))?);
        Ok(LIFEBOAT_OK)
    })
}

/// Where op `session`/`op_seq` of this device stands (written to `out_op`; state
/// `LIFEBOAT_OP_UNKNOWN` if it was never queued here or its outcome was acknowledged).
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_op` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_op_status(
    client: *const LifeboatClient,
    session: u64,
    op_seq: u64,
    out_op: *mut LifeboatOp,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_op = unsafe { out(out_op, "out_op") }?;
        *out_op = c_op(&core.op_status(session, op_seq)?);
        Ok(LIFEBOAT_OK)
    })
}

/// The ops queued on the device and not decided yet (also those queued before a kill):
/// up to `capacity` written to `out_ops`, the total to `*out_count` (`out_ops` may be NULL
/// when `capacity` is 0).
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_ops` has room for `capacity` ops;
/// `out_count` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_queued_ops(
    client: *const LifeboatClient,
    out_ops: *mut LifeboatOp,
    capacity: usize,
    out_count: *mut usize,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_count = unsafe { out(out_count, "out_count") }?;
        unsafe { write_ops(&core.queued_ops()?, out_ops, capacity, out_count) }
    })
}

/// The decided outcomes not acknowledged yet, oldest first (after a restart: what the app
/// may not have handled), written like `lifeboat_queued_ops`.
///
/// # Safety
/// As `lifeboat_queued_ops`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_outcomes(
    client: *const LifeboatClient,
    out_ops: *mut LifeboatOp,
    capacity: usize,
    out_count: *mut usize,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_count = unsafe { out(out_count, "out_count") }?;
        unsafe { write_ops(&core.outcomes()?, out_ops, capacity, out_count) }
    })
}

/// The app has handled op `session`/`op_seq`'s outcome: forget it. `LIFEBOAT_OK`, or
/// `LIFEBOAT_NOT_FOUND` if no unacknowledged outcome was held for it.
///
/// # Safety
/// `client` from `lifeboat_client_start`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_acknowledge(
    client: *const LifeboatClient,
    session: u64,
    op_seq: u64,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        Ok(if core.acknowledge(session, op_seq)? {
            LIFEBOAT_OK
        } else {
            LIFEBOAT_NOT_FOUND
        })
    })
}

/// Driver: offer (or withdraw) this device for dispatch.
///
/// # Safety
/// `client` from `lifeboat_client_start`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_set_available(
    client: *const LifeboatClient,
    available: bool,
) -> i32 {
    call(|| {
        unsafe { client_ref(client) }?.set_available(available)?;
        Ok(LIFEBOAT_OK)
    })
}

/// One trip the device holds: `LIFEBOAT_OK` (written to `out`) or `LIFEBOAT_NOT_FOUND`.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_trip(
    client: *const LifeboatClient,
    session: u64,
    out_trip: *mut LifeboatTrip,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_trip = unsafe { out(out_trip, "out_trip") }?;
        match core.trip(session)? {
            Some(t) => {
                *out_trip = c_trip(&t);
                Ok(LIFEBOAT_OK)
            }
            None => Ok(LIFEBOAT_NOT_FOUND),
        }
    })
}

/// Every trip the device holds: writes up to `capacity` of them to `out_trips` and the
/// total number to `*out_count`. `out_trips` may be NULL only when `capacity` is 0 (to ask
/// for the count).
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_trips` has room for `capacity` trips;
/// `out_count` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_sessions(
    client: *const LifeboatClient,
    out_trips: *mut LifeboatTrip,
    capacity: usize,
    out_count: *mut usize,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_count = unsafe { out(out_count, "out_count") }?;
        if capacity > 0 && out_trips.is_null() {
            return Err(CallError::Null("out_trips"));
        }
        let trips = core.sessions()?;
        for (i, t) in trips.iter().take(capacity).enumerate() {
            // SAFETY: non-NULL, and the caller gave room for `capacity` trips (documented).
            unsafe { out_trips.add(i).write(c_trip(t)) };
        }
        *out_count = trips.len();
        Ok(LIFEBOAT_OK)
    })
}

/// The next event, waiting at most `timeout_ms` (0: do not wait): `LIFEBOAT_OK` (written
/// to `out_event`) or `LIFEBOAT_NO_EVENT`. Works while paused.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_event` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_poll_event(
    client: *const LifeboatClient,
    timeout_ms: u64,
    out_event: *mut LifeboatEvent,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_event = unsafe { out(out_event, "out_event") }?;
        match core.poll_event(timeout_ms)? {
            Some(e) => {
                *out_event = c_event(&e);
                Ok(LIFEBOAT_OK)
            }
            None => Ok(LIFEBOAT_NO_EVENT),
        }
    })
}

/// Wait at most `timeout_ms` until connected: `LIFEBOAT_OK` with the datacenter id in
/// `*out_dc`, or `LIFEBOAT_ERR_TIMEOUT`.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_dc` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_wait_connected(
    client: *const LifeboatClient,
    timeout_ms: u64,
    out_dc: *mut u16,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_dc = unsafe { out(out_dc, "out_dc") }?;
        *out_dc = 0;
        match core.wait_connected(timeout_ms)? {
            Some(dc) => {
                *out_dc = dc;
                Ok(LIFEBOAT_OK)
            }
            None => Err(CallError::Status(
                LIFEBOAT_ERR_TIMEOUT,
                format!("not connected within {timeout_ms} ms"),
            )),
        }
    })
}

/// App backgrounded: stop the client (the connection closes; the store stays on disk).
///
/// # Safety
/// `client` from `lifeboat_client_start`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_pause(client: *const LifeboatClient) -> i32 {
    call(|| {
        unsafe { client_ref(client) }?.pause()?;
        Ok(LIFEBOAT_OK)
    })
}

/// App foregrounded: start again over the same store (digests uploaded, queued ops
/// replayed on connect).
///
/// # Safety
/// `client` from `lifeboat_client_start`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_resume(client: *const LifeboatClient) -> i32 {
    call(|| {
        unsafe { client_ref(client) }?.resume()?;
        Ok(LIFEBOAT_OK)
    })
}

/// Network change: move to a new UDP socket; QUIC connection migration keeps the
/// connection. Optionally writes the new local address to `out_addr` (NUL-terminated,
/// truncated to `addr_len` bytes; `out_addr` may be NULL when `addr_len` is 0).
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_addr` has room for `addr_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_rebind(
    client: *const LifeboatClient,
    out_addr: *mut c_char,
    addr_len: usize,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        if addr_len > 0 && out_addr.is_null() {
            return Err(CallError::Null("out_addr"));
        }
        let addr = core.rebind()?;
        if addr_len > 0 {
            // SAFETY: non-NULL with room for `addr_len` bytes (documented).
            let buf = unsafe { std::slice::from_raw_parts_mut(out_addr, addr_len) };
            let n = addr.len().min(addr_len - 1);
            for (d, b) in buf.iter_mut().zip(addr.as_bytes()[..n].iter()) {
                *d = *b as c_char;
            }
            buf[n] = 0;
        }
        Ok(LIFEBOAT_OK)
    })
}

/// Counters of the client.
///
/// # Safety
/// `client` from `lifeboat_client_start`; `out_stats` writable.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_stats(
    client: *const LifeboatClient,
    out_stats: *mut LifeboatStats,
) -> i32 {
    call(|| {
        let core = unsafe { client_ref(client) }?;
        let out_stats = unsafe { out(out_stats, "out_stats") }?;
        let s = core.stats();
        *out_stats = LifeboatStats {
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            connects: s.connects,
            ops_committed: s.ops_committed,
            events_dropped: s.events_dropped,
            connected_dc: s.connected_dc.unwrap_or(0),
        };
        Ok(LIFEBOAT_OK)
    })
}

/// A new cancel token, or NULL if allocation failed. Free it with `lifeboat_cancel_free`
/// after the calls that use it have returned.
#[no_mangle]
pub extern "C" fn lifeboat_cancel_new() -> *mut LifeboatCancel {
    catch_unwind(|| {
        Box::into_raw(Box::new(LifeboatCancel {
            token: CancelToken::default(),
        }))
    })
    .unwrap_or(std::ptr::null_mut())
}

/// Cancel: every wait using this token (now or later) returns `LIFEBOAT_ERR_CANCELLED`.
/// May be called from any thread.
///
/// # Safety
/// `cancel` from `lifeboat_cancel_new`.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_cancel_trigger(cancel: *const LifeboatCancel) -> i32 {
    call(|| {
        unsafe { arg(cancel, "cancel") }?.token.cancel();
        Ok(LIFEBOAT_OK)
    })
}

/// Free a cancel token (NULL is ignored).
///
/// # Safety
/// `cancel` from `lifeboat_cancel_new`, not in use by any call.
#[no_mangle]
pub unsafe extern "C" fn lifeboat_cancel_free(cancel: *mut LifeboatCancel) {
    if !cancel.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: from Box::into_raw in lifeboat_cancel_new, freed once (documented).
            drop(unsafe { Box::from_raw(cancel) })
        }));
    }
}

/// The C status code of an error (`LIFEBOAT_ERR_*` in `lifeboat.h`).
fn status_of(e: &LifeboatError) -> i32 {
    match e {
        LifeboatError::InvalidArgument { .. } => LIFEBOAT_ERR_INVALID_ARGUMENT,
        LifeboatError::Config { .. } => LIFEBOAT_ERR_CONFIG,
        LifeboatError::Store { .. } => LIFEBOAT_ERR_STORE,
        LifeboatError::Paused => LIFEBOAT_ERR_PAUSED,
        LifeboatError::Closed => LIFEBOAT_ERR_CLOSED,
        LifeboatError::Timeout { .. } => LIFEBOAT_ERR_TIMEOUT,
        LifeboatError::Cancelled { .. } => LIFEBOAT_ERR_CANCELLED,
        LifeboatError::Rejected { .. } => LIFEBOAT_ERR_REJECTED,
        LifeboatError::Runtime { .. } => LIFEBOAT_ERR_RUNTIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_distinct_negative_code() {
        let all = [
            LifeboatError::invalid("x"),
            LifeboatError::config("x"),
            LifeboatError::Store { detail: "x".into() },
            LifeboatError::Paused,
            LifeboatError::Closed,
            LifeboatError::Timeout {
                session: 1,
                op_seq: 1,
                timeout_ms: 1,
            },
            LifeboatError::Cancelled {
                session: 1,
                op_seq: 1,
            },
            LifeboatError::Rejected {
                session: 1,
                op_seq: 1,
                detail: "x".into(),
            },
            LifeboatError::Runtime { detail: "x".into() },
        ];
        let mut codes: Vec<i32> = all.iter().map(status_of).collect();
        assert!(codes.iter().all(|c| *c < 0));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
    use std::ptr::{null, null_mut};

    fn last_error() -> String {
        unsafe { CStr::from_ptr(lifeboat_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn null_pointers_are_refused_with_a_message_never_dereferenced() {
        unsafe {
            let mut commit = LifeboatCommit::default();
            let p = LifeboatPoint::default();
            assert_eq!(
                lifeboat_submit(
                    null(),
                    1,
                    LIFEBOAT_ACTION_ARRIVED,
                    p,
                    1000,
                    null(),
                    &mut commit
                ),
                LIFEBOAT_ERR_NULL
            );
            assert!(last_error().contains("client is NULL"), "{}", last_error());
            assert_eq!(
                lifeboat_config_new(1, null(), null(), null(), null_mut()),
                LIFEBOAT_ERR_NULL
            );
            let mut cfg: *mut LifeboatConfig = null_mut();
            let s = c"x".as_ptr();
            assert_eq!(
                lifeboat_config_new(1, null(), s, s, &mut cfg),
                LIFEBOAT_ERR_NULL
            );
            assert!(cfg.is_null());
            assert!(last_error().contains("token_hex"));
            assert_eq!(
                lifeboat_config_add_datacenter(null_mut(), s),
                LIFEBOAT_ERR_NULL
            );
            assert_eq!(
                lifeboat_poll_event(null(), 0, null_mut()),
                LIFEBOAT_ERR_NULL
            );
            assert_eq!(lifeboat_cancel_trigger(null()), LIFEBOAT_ERR_NULL);
            let mut client: *mut LifeboatClient = null_mut();
            assert_eq!(
                lifeboat_client_start(null(), &mut client),
                LIFEBOAT_ERR_NULL
            );
            // Frees accept NULL.
            lifeboat_config_free(null_mut());
            lifeboat_client_free(null_mut());
            lifeboat_cancel_free(null_mut());
        }
    }

    #[test]
    fn a_bad_configuration_is_a_config_error_and_no_client() {
        unsafe {
            let mut cfg: *mut LifeboatConfig = null_mut();
            let dir = tempfile::tempdir().expect("tempdir");
            let store = CString::new(dir.path().join("s").display().to_string()).expect("c");
            let token = CString::new("00".repeat(32)).expect("c");
            let ca = c"/nonexistent/ca.pem";
            assert_eq!(
                lifeboat_config_new(3, token.as_ptr(), ca.as_ptr(), store.as_ptr(), &mut cfg),
                LIFEBOAT_OK
            );
            assert_eq!(
                lifeboat_config_add_datacenter(cfg, c"not an address".as_ptr()),
                LIFEBOAT_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                lifeboat_config_add_datacenter(cfg, c"127.0.0.1:9".as_ptr()),
                LIFEBOAT_OK
            );
            let mut client: *mut LifeboatClient = null_mut();
            assert_eq!(lifeboat_client_start(cfg, &mut client), LIFEBOAT_ERR_CONFIG);
            assert!(client.is_null());
            assert!(last_error().contains("CA file"), "{}", last_error());
            lifeboat_config_free(cfg);
        }
    }

    #[test]
    fn messages_are_truncated_at_a_character_boundary_and_terminated() {
        let mut buf = [1 as c_char; 8];
        copy_str("abcdeé€x", &mut buf);
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .expect("utf-8");
        assert_eq!(s, "abcdeé");
        let mut small = [1 as c_char; 4];
        copy_str("", &mut small);
        assert_eq!(small[0], 0);
    }

    #[test]
    fn a_panic_inside_a_call_becomes_a_status_code() {
        let status = call(|| panic!("boom"));
        assert_eq!(status, LIFEBOAT_ERR_PANIC);
        assert!(last_error().contains("boom"));
    }
}
