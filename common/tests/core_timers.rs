//! The cores' own timers, with no sockets and no clock: each core says when it next wants
//! time (`poll_timeout`) and acts when it is given it, so its driver only sleeps.
//!
//! - The edge core sends an op the datacenter could not take yet (a retryable rejection)
//!   again at its resend deadline, not before, and wants no timer while nothing waits or it
//!   is not connected.
//! - The datacenter core wants ticks only while it has timed work (a session waiting for a
//!   provider, create budgets refilling), one interval after the last tick.

use lifeboat_common::datacenter::{DatacenterCore, DcConfig, TICK_MS};
use lifeboat_common::edge::{EdgeCore, EdgeLimits};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::{ClientMsg, OpOutcome, OpRejection, ServerMsg};
use lifeboat_common::{DatacenterId, DeviceId, GeoPoint, SessionId, Trip, TripOp};

const HERE: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};

fn request() -> TripOp {
    TripOp::Request {
        pickup: HERE,
        dropoff: HERE,
    }
}

fn submits(edge: &mut EdgeCore<Trip>) -> usize {
    edge.poll_effects()
        .send
        .iter()
        .filter(|m| matches!(m, ClientMsg::Submit { .. } | ClientMsg::Resubmit { .. }))
        .count()
}

/// The datacenter's retryable "not now" to op `seq`.
fn overloaded(session: SessionId, seq: u64) -> ServerMsg<Trip> {
    ServerMsg::OpResult {
        session,
        seq,
        outcome: OpOutcome::Rejected(OpRejection::Overloaded),
        update: None,
    }
}

#[test]
fn an_op_the_datacenter_could_not_take_is_sent_again_at_the_resend_deadline_and_not_before() {
    let mut edge = EdgeCore::<Trip>::new(DeviceId(1), EdgeLimits::default());
    edge.set_retry_interval(250);
    let session = SessionId(7);
    edge.submit(session, request()).expect("queued");
    assert_eq!(edge.poll_timeout(), None, "not connected: no timer");
    let welcome = ServerMsg::Welcome {
        dc: DatacenterId(1),
        results: Vec::new(),
    };
    edge.handle_message(10_000, welcome).expect("welcome");
    assert_eq!(submits(&mut edge), 1, "the queued op goes out on Welcome");
    assert_eq!(
        edge.poll_timeout(),
        None,
        "in flight: nothing waits to be sent again"
    );

    let busy = overloaded(session, 1);
    edge.handle_message(10_050, busy).expect("answer");
    let _ = edge.poll_effects();
    assert_eq!(
        edge.poll_timeout(),
        Some(10_250),
        "one interval after the Welcome"
    );
    edge.handle_timeout(10_249);
    assert_eq!(submits(&mut edge), 0, "not before the deadline");
    edge.handle_timeout(10_250);
    assert_eq!(submits(&mut edge), 1, "sent again at the deadline");
    assert_eq!(edge.poll_timeout(), None, "in flight again");

    edge.on_disconnect();
    assert_eq!(edge.poll_timeout(), None, "disconnected: no timer");
}

/// What a person asking "why is my op not done?" reads: in flight, then refused (and how),
/// then waiting to go out again as a resubmit once the connection is gone.
#[test]
fn a_refused_op_shows_its_retries_and_the_datacenters_answer_in_its_progress() {
    let mut edge = EdgeCore::<Trip>::new(DeviceId(1), EdgeLimits::default());
    let session = SessionId(7);
    let id = edge.submit(session, request()).expect("queued");
    let p = edge.op_progress(id).expect("queued");
    assert!(p.connected.is_none() && !p.in_flight && p.retries == 0 && p.last_answer.is_none());
    let welcome = ServerMsg::Welcome {
        dc: DatacenterId(1),
        results: Vec::new(),
    };
    edge.handle_message(10_000, welcome).expect("welcome");
    let p = edge.op_progress(id).expect("queued");
    assert_eq!(p.connected, Some(DatacenterId(1)));
    assert!(p.in_flight, "sent on Welcome: {p:?}");
    let busy = overloaded(session, 1);
    edge.handle_message(10_050, busy).expect("answer");
    let p = edge.op_progress(id).expect("still queued");
    assert!(
        !p.in_flight && p.retries == 1 && !p.awaiting_commit,
        "{p:?}"
    );
    assert_eq!(
        p.last_answer,
        Some(OpOutcome::Rejected(OpRejection::Overloaded))
    );
    edge.handle_timeout(20_000);
    edge.on_disconnect();
    let p = edge.op_progress(id).expect("still queued");
    assert!(
        p.connected.is_none() && p.maybe_applied && !p.in_flight,
        "{p:?}"
    );
    assert!(p.held.is_none(), "no copy of the session yet: {p:?}");
}

#[test]
fn the_datacenter_wants_ticks_only_while_it_has_timed_work() {
    let keyring = Keyring::generate();
    // Tombstones kept for ever: no expiry or refresh of idle sessions, the housekeeping
    // that wants a tick every HOUSEKEEPING_MS while sessions are held (next test).
    let mut cfg = DcConfig::new(DatacenterId(1), ReplicaId(1));
    cfg.tombstone_ttl_ms = 0;
    let mut dc = DatacenterCore::<Trip>::new(cfg, keyring.clone());
    assert_eq!(dc.poll_timeout(), None, "nothing to do");
    let rider = DeviceId(1);
    dc.handle_connect(1_000, rider, false, Vec::new());
    let create = ClientMsg::Submit {
        session: SessionId(9),
        seq: 1,
        op: request(),
    };
    dc.handle_message(1_000, rider, create).expect("a submit");
    let _ = dc.poll_effects();
    // The trip waits for a provider, and the rider's create budget refills.
    let due = dc.poll_timeout().expect("timed work");
    assert_eq!(due, TICK_MS, "one interval after the last tick (none yet)");
    dc.handle_tick(5_000);
    assert_eq!(dc.poll_timeout(), Some(5_000 + TICK_MS));
    // A driver takes the trip: nothing waits any more; once the budget is full again (a
    // minute on), no timer is wanted.
    let driver = DeviceId(2);
    dc.handle_connect(5_010, driver, true, Vec::new());
    let _ = dc.poll_effects();
    dc.handle_tick(5_000 + 61_000);
    assert_eq!(
        dc.poll_timeout(),
        None,
        "no waiting session, no refilling budget"
    );
}

#[test]
fn a_datacenter_holding_sessions_wants_housekeeping_ticks_when_tombstones_expire() {
    let keyring = Keyring::generate();
    let mut dc = DatacenterCore::<Trip>::new(
        DcConfig::new(DatacenterId(1), ReplicaId(1)),
        keyring.clone(),
    );
    assert_eq!(dc.poll_timeout(), None, "no session: nothing to do");
    let rider = DeviceId(1);
    dc.handle_connect(1_000, rider, false, Vec::new());
    let create = ClientMsg::Submit {
        session: SessionId(9),
        seq: 1,
        op: request(),
    };
    dc.handle_message(1_000, rider, create).expect("a submit");
    let driver = DeviceId(2);
    dc.handle_connect(1_010, driver, true, Vec::new());
    let _ = dc.poll_effects();
    dc.handle_tick(1_000 + 61_000);
    // Nothing waits and no budget refills, but a held session must be looked at for its
    // refresh: once every HOUSEKEEPING_MS.
    assert_eq!(
        dc.poll_timeout(),
        Some(1_000 + 61_000 + lifeboat_common::datacenter::HOUSEKEEPING_MS)
    );
}
