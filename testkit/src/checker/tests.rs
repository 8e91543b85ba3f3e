//! Unit tests of the checker: its own arithmetic, passing histories, and one history per
//! kind of breach it must catch.

use super::*;
use lifeboat_common::dedup::DedupEntry;
use lifeboat_common::edge::SubmitError;
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::wire::OpRejection;
use lifeboat_common::GeoPoint;
use lifeboat_common::{
    DatacenterId, DeviceId, OpId, SessionId, TripPhase, TripState, VersionVector,
};
use lifeboat_server::service::StoredSession;

const S: SessionId = SessionId(0x5e55);
const RIDER: DeviceId = DeviceId(1);
const DRIVER: DeviceId = DeviceId(1001);
const DC1: ReplicaId = ReplicaId(0xdc1);
const DC2: ReplicaId = ReplicaId(0xdc2);

/// A version from its counters (built with `bump`, the only way to make one; judging
/// stays with the checker's own [`order`]).
fn v(parts: &[(ReplicaId, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (r, n) in parts {
        for _ in 0..*n {
            v.bump(*r).expect("small counters");
        }
    }
    v
}

fn op(device: DeviceId, seq: u64) -> OpId {
    OpId {
        session: S,
        device,
        seq,
    }
}

fn state(phase: TripPhase, locations: u32) -> TripState {
    let p = GeoPoint {
        lat_e6: 52_520_000,
        lon_e6: 13_405_000,
    };
    TripState {
        phase,
        pickup: p,
        dropoff: p,
        requested_ms: 0,
        last_position: None,
        started_ms: 0,
        duration_ms: 0,
        distance_m: 0,
        location_updates: locations,
        fare_cents: None,
        cancelled_by: None,
    }
}

/// A raw watermark with every one of `last_seq` ops applied.
fn mark(device: DeviceId, last_seq: u64) -> DedupEntry {
    DedupEntry {
        device,
        last_seq,
        applied_bits: if last_seq >= 64 {
            u64::MAX
        } else {
            (1u64 << last_seq) - 1
        },
    }
}

/// A raw watermark whose newest op (`last_seq`) was rejected, all earlier ones applied.
fn mark_last_rejected(device: DeviceId, last_seq: u64) -> DedupEntry {
    let mut m = mark(device, last_seq);
    m.applied_bits &= !1;
    m
}

fn finals(copies: Vec<(u16, StoredSession)>) -> FinalState {
    let mut f = FinalState::new();
    for (dc, c) in copies {
        f.add_store(DatacenterId(dc), vec![c]);
    }
    f
}

fn held(stored: StoredSession) -> DeviceCopy {
    DeviceCopy {
        stored,
        committed: true,
    }
}

fn saw(version: VersionVector, phase: TripPhase, locations: u32) -> Event {
    Event::Saw {
        session: S,
        version,
        phase,
        locations,
        committed: true,
    }
}

/// A trip on the road: request, dispatch, arrive, start, `locations` reports, all
/// committed at dc1; the rider saw every change.
fn on_the_road(locations: u64) -> History {
    let mut h = History::new();
    let mut t = 0;
    let mut at = |h: &mut History, d: DeviceId, e: Event| {
        t += 100;
        h.record(t, d, e)
    };
    at(
        &mut h,
        RIDER,
        Event::Submit {
            session: S,
            kind: OpKind::Request,
        },
    );
    at(
        &mut h,
        RIDER,
        Event::Accepted {
            op: op(RIDER, 1),
            kind: OpKind::Request,
        },
    );
    at(
        &mut h,
        RIDER,
        Event::Committed {
            op: op(RIDER, 1),
            version: v(&[(DC1, 1)]),
            duplicate: false,
        },
    );
    let ops = [OpKind::Arrived, OpKind::Start]
        .into_iter()
        .chain((0..locations).map(|_| OpKind::Location));
    for (i, kind) in ops.enumerate() {
        let seq = i as u64 + 1;
        let version = v(&[(DC1, 2 + seq)]);
        at(&mut h, DRIVER, Event::Submit { session: S, kind });
        at(
            &mut h,
            DRIVER,
            Event::Accepted {
                op: op(DRIVER, seq),
                kind,
            },
        );
        at(
            &mut h,
            DRIVER,
            Event::Committed {
                op: op(DRIVER, seq),
                version: version.clone(),
                duplicate: false,
            },
        );
        let phase = if seq == 1 {
            TripPhase::DriverArrived
        } else {
            TripPhase::OnTrip
        };
        at(
            &mut h,
            RIDER,
            saw(version, phase, seq.saturating_sub(2) as u32),
        );
    }
    h
}

/// The datacenter's copy after `on_the_road(locations)`.
fn road_copy(locations: u64) -> StoredSession {
    stored(
        S,
        v(&[(DC1, 4 + locations)]),
        RIDER,
        Some(DRIVER),
        state(TripPhase::OnTrip, locations as u32),
        vec![mark(RIDER, 1), mark(DRIVER, 2 + locations)],
    )
}

fn kinds(vs: &[Violation]) -> Vec<Kind> {
    vs.iter().map(|v| v.kind).collect()
}

fn without_last_rider_saw(h: &History) -> History {
    let last = h
        .entries()
        .iter()
        .rposition(|e| e.device == RIDER && matches!(e.event, Event::Saw { .. }))
        .expect("a rider copy");
    let mut out = History::new();
    for (i, e) in h.entries().iter().enumerate() {
        if i != last {
            out.record(e.at_ms, e.device, e.event.clone());
        }
    }
    out
}

// -- the checker's own arithmetic ---------------------------------------------------

#[test]
fn dominance_is_computed_slot_by_slot_with_missing_slots_as_zero() {
    let a = v(&[(DC1, 3)]);
    assert_eq!(order(&a, &v(&[(DC1, 3)])), Order::Equal);
    assert_eq!(order(&v(&[(DC1, 4)]), &a), Order::Newer);
    assert_eq!(order(&a, &v(&[(DC1, 3), (DC2, 1)])), Order::Older);
    assert_eq!(
        order(&v(&[(DC1, 4)]), &v(&[(DC1, 3), (DC2, 1)])),
        Order::Concurrent
    );
    assert_eq!(
        order(&VersionVector::new(), &VersionVector::new()),
        Order::Equal
    );
    assert_eq!(order(&VersionVector::new(), &a), Order::Older);
    assert!(dominates(&v(&[(DC1, 3), (DC2, 1)]), &a));
    assert!(!dominates(&a, &v(&[(DC2, 1)])));
}

#[test]
fn watermarks_are_read_from_the_raw_bits_over_a_64_op_window() {
    // last_seq 70, bit i = outcome of 70 - i: 70 applied, 69 rejected, 68 applied, ...
    let m = DedupEntry {
        device: DRIVER,
        last_seq: 70,
        applied_bits: !0b10u64,
    };
    let d = [m];
    assert_eq!(outcome(&d, DRIVER, 70), Outcome::Applied);
    assert_eq!(outcome(&d, DRIVER, 69), Outcome::Rejected);
    assert_eq!(outcome(&d, DRIVER, 68), Outcome::Applied);
    assert_eq!(outcome(&d, DRIVER, 7), Outcome::Applied); // age 63: the oldest bit
    assert_eq!(outcome(&d, DRIVER, 6), Outcome::OutsideWindow); // age 64
    assert_eq!(outcome(&d, DRIVER, 71), Outcome::NotProcessed);
    assert_eq!(outcome(&d, DRIVER, 0), Outcome::NotProcessed);
    assert_eq!(outcome(&d, RIDER, 1), Outcome::NotProcessed);
}

#[test]
fn the_window_is_the_digest_formats() {
    // The checker reads the bits itself; if the format's window changes, so must it.
    assert_eq!(WINDOW, lifeboat_common::dedup::DEDUP_WINDOW);
}

#[test]
fn the_checker_imports_no_replication_logic() {
    // Every file of the checker but this one (its tests).
    let files = [
        ("mod.rs", include_str!("mod.rs")),
        ("applied_twice.rs", include_str!("applied_twice.rs")),
        ("context.rs", include_str!("context.rs")),
        ("final_state.rs", include_str!("final_state.rs")),
        ("final_trip.rs", include_str!("final_trip.rs")),
        ("histories.rs", include_str!("histories.rs")),
        ("history.rs", include_str!("history.rs")),
        ("order.rs", include_str!("order.rs")),
        ("session.rs", include_str!("session.rs")),
        ("versions_unique.rs", include_str!("versions_unique.rs")),
        ("violation.rs", include_str!("violation.rs")),
    ];
    let listed: std::collections::BTreeSet<&str> = files.iter().map(|f| f.0).collect();
    let on_disk: std::collections::BTreeSet<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/checker"))
            .expect("the checker's folder")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != "tests.rs")
            .collect();
    assert_eq!(
        on_disk
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        listed,
        "every file of the checker is read by this test"
    );
    // Spelled in pieces so that this test does not find itself.
    for banned in [
        ["ops", "_cover"].concat(),
        ["changes", "_unknown_to"].concat(),
        ["recon", "cile("].concat(),
        [".com", "pare("].concat(),
        [".cov", "ers("].concat(),
        ["cov", "ers_"].concat(),
        [".che", "ck("].concat(),
        ["Version", "Order"].concat(),
        ["lifeboat_common::data", "center"].concat(),
        ["lifeboat_common::e", "dge::{"].concat(),
        ["Dedup", "Entry::"].concat(),
    ] {
        for (name, body) in files {
            assert!(!body.contains(&banned), "checker/{name} uses `{banned}`");
        }
    }
}

// -- passing histories ----------------------------------------------------------------

#[test]
fn a_history_the_final_state_agrees_with_passes() {
    let (vs, summary) = check(&on_the_road(3), &finals(vec![(1, road_copy(3))]));
    assert!(vs.is_empty(), "{vs:#?}");
    assert_eq!(summary.ops_committed, 6);
    assert_eq!(summary.sessions, 1);
    assert_eq!(summary.sessions_with_stale_branch, 0);
}

#[test]
fn the_newest_copy_may_be_on_a_device() {
    // Both datacenters end one op behind the devices (say the last answer came from a
    // datacenter that then lost its disk and was restored from an older upload).
    let f = finals(vec![(1, {
        let mut c = road_copy(2);
        c.0.version = v(&[(DC1, 6)]);
        c
    })]);
    let (vs, _) = check(&on_the_road(3), &f);
    assert_eq!(kinds(&vs), vec![Kind::NotConverged], "{vs:#?}");
    // With the devices' stores read, the driver's copy is the final copy: nothing lost.
    let mut f = f;
    f.add_device(DRIVER, vec![held(road_copy(3))]);
    f.add_device(RIDER, vec![held(road_copy(3))]);
    let (vs, _) = check(&on_the_road(3), &f);
    assert!(vs.is_empty(), "{vs:#?}");
}

// -- C1 -------------------------------------------------------------------------------

#[test]
fn a_committed_op_the_final_copy_has_not_applied_is_lost_c1() {
    // The last location report was committed, but the store has the copy before it.
    let mut copy = road_copy(2);
    copy.0.version = v(&[(DC1, 7), (DC2, 1)]); // the version even moved on (another op)
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::CommittedOpLost], "{vs:#?}");
    // The shortest history: the op's queueing and its commit, nothing else.
    let h = &vs[0].history;
    assert_eq!(h.len(), 2);
    assert!(matches!(h[0].event, Event::Accepted { op: o, .. } if o == op(DRIVER, 5)));
    assert!(matches!(h[1].event, Event::Committed { op: o, .. } if o == op(DRIVER, 5)));
    assert_eq!(vs[0].session_events, on_the_road(3).len());
    assert!(
        vs[0].detail.contains("no copy anywhere"),
        "{}",
        vs[0].detail
    );
}

#[test]
fn a_committed_op_recorded_as_rejected_in_the_final_copy_is_lost_c1() {
    let mut copy = road_copy(3);
    copy.1.dedup = vec![mark(RIDER, 1), mark_last_rejected(DRIVER, 5)];
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::CommittedOpLost], "{vs:#?}");
    assert!(vs[0].detail.contains("as rejected"), "{}", vs[0].detail);
}

#[test]
fn a_datacenter_branch_beside_the_final_copy_is_a_figure_unless_a_committed_op_lives_only_there() {
    // dc2 holds a branch that forked at {dc1:6}: nobody follows it; nothing the devices
    // were told is on it alone.
    let mut branch = road_copy(2);
    branch.0.version = v(&[(DC1, 6), (DC2, 1)]);
    let f = finals(vec![(1, road_copy(3)), (2, branch.clone())]);
    let (vs, summary) = check(&on_the_road(3), &f);
    assert!(vs.is_empty(), "{vs:#?}");
    assert_eq!(summary.sessions_with_stale_branch, 1);
    // Now the driver's last report was applied and answered on dc2's branch (the driver
    // was there), while the rider went on at dc1 where it was never applied.
    let mut h = on_the_road(2);
    h.record(
        9_000,
        DRIVER,
        Event::Submit {
            session: S,
            kind: OpKind::Location,
        },
    );
    h.record(
        9_001,
        DRIVER,
        Event::Accepted {
            op: op(DRIVER, 5),
            kind: OpKind::Location,
        },
    );
    h.record(
        9_100,
        DRIVER,
        Event::Committed {
            op: op(DRIVER, 5),
            version: v(&[(DC1, 6), (DC2, 1)]),
            duplicate: false,
        },
    );
    h.record(9_200, RIDER, saw(v(&[(DC1, 7)]), TripPhase::OnTrip, 2));
    branch.1.state.location_updates = 3;
    branch.1.dedup = vec![mark(RIDER, 1), mark(DRIVER, 5)];
    let mut ahead = road_copy(2);
    ahead.0.version = v(&[(DC1, 7)]);
    let (vs, _) = check(&h, &finals(vec![(1, ahead), (2, branch)]));
    let lost: Vec<&Violation> = vs
        .iter()
        .filter(|v| v.kind == Kind::CommittedOpLost)
        .collect();
    assert_eq!(lost.len(), 1, "{vs:#?}");
    assert!(
        lost[0].detail.contains("lives only on a branch") && lost[0].detail.contains("dc2"),
        "{}",
        lost[0].detail
    );
    assert!(kinds(&vs).contains(&Kind::VersionRegressed), "{vs:#?}");
}

// -- C2 -------------------------------------------------------------------------------

#[test]
fn more_location_reports_applied_than_submitted_is_applied_twice_c2() {
    let mut copy = road_copy(3);
    copy.0.version = v(&[(DC1, 8)]);
    copy.1.state.location_updates = 4;
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::AppliedTwice], "{vs:#?}");
    // The witness is exactly the three location submits.
    assert_eq!(vs[0].history.len(), 3);
    assert!(vs[0].history.iter().all(|e| matches!(
        e.event,
        Event::Submit {
            kind: OpKind::Location,
            ..
        }
    )));
}

#[test]
fn a_watermark_past_every_submitted_op_is_applied_twice_c2() {
    let mut copy = road_copy(3);
    copy.1.dedup = vec![mark(RIDER, 1), mark(DRIVER, 7)]; // the driver queued 5 ops
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::AppliedTwice], "{vs:#?}");
    assert!(vs[0].detail.contains("#5"), "{}", vs[0].detail);
}

#[test]
fn a_copy_a_device_persisted_with_a_report_applied_twice_is_caught_even_if_overwritten_c2() {
    // The rider was handed a copy with two reports after one was submitted; the final
    // copy (later overwritten by a correct branch) is fine.
    let mut h = on_the_road(1);
    h.record(9_000, RIDER, saw(v(&[(DC1, 6)]), TripPhase::OnTrip, 2));
    let mut copy = road_copy(1);
    copy.0.version = v(&[(DC1, 7)]);
    let (vs, _) = check(&h, &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::AppliedTwice], "{vs:#?}");
    assert!(
        vs[0].detail.contains("persisted a copy"),
        "{}",
        vs[0].detail
    );
}

#[test]
fn a_report_applied_twice_on_a_stale_branch_is_still_applied_twice_c2() {
    let mut branch = road_copy(3);
    branch.0.version = v(&[(DC1, 6), (DC2, 1)]);
    branch.1.state.location_updates = 4;
    let (vs, _) = check(
        &on_the_road(3),
        &finals(vec![(1, road_copy(3)), (2, branch)]),
    );
    assert_eq!(kinds(&vs), vec![Kind::AppliedTwice], "{vs:#?}");
    assert!(vs[0].detail.contains("dc2 4"), "{}", vs[0].detail);
}

// -- C3 -------------------------------------------------------------------------------

#[test]
fn an_older_committed_copy_after_a_newer_one_on_a_device_is_a_regression_c3() {
    let mut h = on_the_road(1);
    h.record(
        5_000,
        RIDER,
        saw(v(&[(DC1, 3)]), TripPhase::DriverArrived, 0),
    );
    let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
    assert_eq!(kinds(&vs), vec![Kind::VersionRegressed], "{vs:#?}");
    assert_eq!(vs[0].history.len(), 2, "the newer copy and the older one");
    assert!(vs[0].detail.contains("went back"), "{}", vs[0].detail);
}

#[test]
fn a_committed_copy_sideways_of_an_earlier_one_is_a_regression_even_if_surfaced_c3() {
    let mut h = on_the_road(1);
    let side = v(&[(DC1, 4), (DC2, 1)]);
    h.record(
        6_000,
        RIDER,
        Event::Conflict {
            session: S,
            ours: v(&[(DC1, 5)]),
            theirs: side.clone(),
        },
    );
    h.record(6_000, RIDER, saw(side, TripPhase::OnTrip, 0));
    // The region ends with a copy that joins both (every op applied).
    let mut copy = road_copy(1);
    copy.0.version = v(&[(DC1, 5), (DC2, 1)]);
    let (vs, summary) = check(&h, &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::VersionRegressed], "{vs:#?}");
    assert!(vs[0].detail.contains("went sideways"), "{}", vs[0].detail);
    assert_eq!(summary.sessions_with_conflicts, 1);
}

#[test]
fn a_tentative_copy_replaced_by_a_concurrent_committed_one_is_counted_not_flagged() {
    // The rider's cancel was applied at dc2 but never committed (tentative tombstone);
    // the committed chain went on at dc1 and the rider adopted it.
    let mut h = on_the_road(1);
    let tentative = Event::Saw {
        session: S,
        version: v(&[(DC1, 5), (DC2, 1)]),
        phase: TripPhase::Cancelled,
        locations: 1,
        committed: false,
    };
    h.record(6_000, RIDER, tentative);
    h.record(7_000, RIDER, saw(v(&[(DC1, 6)]), TripPhase::OnTrip, 1));
    let mut copy = road_copy(1);
    copy.0.version = v(&[(DC1, 6)]);
    let f = finals(vec![(1, copy)]);
    let (vs, summary) = check(&h, &f);
    assert!(vs.is_empty(), "{vs:#?}");
    assert_eq!(summary.tentative_replaced, 1);
    // Had the tombstone been committed, that is a regression and a resurrection.
    let mut h2 = History::new();
    for e in h.entries() {
        let mut ev = e.event.clone();
        if let Event::Saw { committed, .. } = &mut ev {
            *committed = true;
        }
        h2.record(e.at_ms, e.device, ev);
    }
    let (vs, summary) = check(&h2, &f);
    let k = kinds(&vs);
    assert!(k.contains(&Kind::VersionRegressed), "{vs:#?}");
    assert!(k.contains(&Kind::TombstoneResurrected), "{vs:#?}");
    assert_eq!(summary.tentative_replaced, 0);
}

#[test]
fn a_server_change_committed_late_is_old_news_but_never_sideways_c3() {
    // The dispatch at {dc1:2} is confirmed committed after the rider holds {dc1:4}.
    let mut h = on_the_road(0);
    let late = |version| Event::ServerCommitted {
        session: S,
        version,
    };
    h.record(5_000, RIDER, late(v(&[(DC1, 2)])));
    let (vs, _) = check(&h, &finals(vec![(1, road_copy(0))]));
    assert!(vs.is_empty(), "{vs:#?}");
    // A commit of a change on another branch is not.
    h.record(5_100, RIDER, late(v(&[(DC1, 2), (DC2, 1)])));
    let (vs, _) = check(&h, &finals(vec![(1, road_copy(0))]));
    let k = kinds(&vs);
    assert!(k.contains(&Kind::VersionRegressed), "{vs:#?}");
    assert!(
        vs.iter().any(|v| v.detail.contains("went sideways")),
        "{vs:#?}"
    );
}

#[test]
fn a_final_version_that_does_not_dominate_a_committed_one_is_a_regression_c3() {
    // The driver was told its last report is committed at {dc1:6}; the rider never saw
    // that copy. dc2 restored the session from the rider's {dc1:5} and applied the
    // report's retry there: every op is applied, on another branch.
    let h = without_last_rider_saw(&on_the_road(2));
    let mut copy = road_copy(2);
    copy.0.version = v(&[(DC1, 5), (DC2, 1)]);
    let (vs, _) = check(&h, &finals(vec![(2, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::VersionRegressed], "{vs:#?}");
    assert!(
        vs[0].detail.contains("is concurrent with"),
        "{}",
        vs[0].detail
    );
    // The region ends with the copy before it: the report is lost, and the version
    // went back.
    let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
    assert_eq!(
        kinds(&vs),
        vec![Kind::CommittedOpLost, Kind::VersionRegressed],
        "{vs:#?}"
    );
    assert!(vs[1].detail.contains("is older than"), "{}", vs[1].detail);
}

#[test]
fn one_version_issued_with_two_contents_is_a_regression_c3() {
    // A datacenter went back to an older copy and built on it: {dc1:5} again, but with no
    // location report this time.
    let mut h = on_the_road(1);
    h.record(9_000, DRIVER, saw(v(&[(DC1, 5)]), TripPhase::OnTrip, 1));
    let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
    assert!(vs.is_empty(), "the same contents twice is fine: {vs:#?}");
    let mut again = road_copy(0);
    again.0.version = v(&[(DC1, 5)]);
    again.1.state.phase = TripPhase::Completed;
    h.record(9_500, RIDER, saw(v(&[(DC1, 5)]), TripPhase::Completed, 0));
    let mut f = finals(vec![(1, again)]);
    f.add_device(RIDER, vec![]);
    let (vs, _) = check(&h, &f);
    let issued: Vec<&Violation> = vs
        .iter()
        .filter(|v| v.detail.contains("issued twice"))
        .collect();
    assert_eq!(issued.len(), 1, "{vs:#?}");
    assert_eq!(issued[0].kind, Kind::VersionRegressed);
}

#[test]
fn a_device_store_that_ends_below_what_it_was_told_is_a_regression_c3() {
    let mut f = finals(vec![(1, road_copy(3))]);
    let mut old = road_copy(1);
    old.0.version = v(&[(DC1, 5)]);
    f.add_device(RIDER, vec![held(old)]);
    f.add_device(DRIVER, vec![held(road_copy(3))]);
    let (vs, _) = check(&on_the_road(3), &f);
    assert_eq!(kinds(&vs), vec![Kind::VersionRegressed], "{vs:#?}");
    assert!(vs[0].detail.contains("store ends at"), "{}", vs[0].detail);
    assert_eq!(vs[0].history.len(), 1);
}

#[test]
fn a_finished_session_that_is_live_again_is_resurrected_c3() {
    let mut h = on_the_road(0);
    h.record(
        9_000,
        DRIVER,
        Event::Submit {
            session: S,
            kind: OpKind::Complete,
        },
    );
    h.record(
        9_001,
        DRIVER,
        Event::Accepted {
            op: op(DRIVER, 3),
            kind: OpKind::Complete,
        },
    );
    h.record(
        9_100,
        DRIVER,
        Event::Committed {
            op: op(DRIVER, 3),
            version: v(&[(DC1, 5)]),
            duplicate: false,
        },
    );
    h.record(9_100, RIDER, saw(v(&[(DC1, 5)]), TripPhase::Completed, 0));
    // ... and the rider is later handed a live copy; the store is live too.
    h.record(
        9_900,
        RIDER,
        saw(v(&[(DC1, 5), (DC2, 1)]), TripPhase::OnTrip, 0),
    );
    let mut copy = road_copy(0);
    copy.0.version = v(&[(DC1, 5), (DC2, 1)]);
    copy.1.dedup = vec![mark(RIDER, 1), mark(DRIVER, 3)];
    let (vs, _) = check(&h, &finals(vec![(1, copy)]));
    assert_eq!(
        kinds(&vs),
        vec![Kind::TombstoneResurrected, Kind::TombstoneResurrected],
        "{vs:#?}"
    );
    assert!(vs.iter().any(|v| v.detail.contains("then a live copy")));
    assert!(vs.iter().any(|v| v.detail.contains("final copy is live")));
}

#[test]
fn a_surfaced_split_between_a_tombstone_and_a_live_branch_excuses_nothing() {
    // The driver reported a location at dc1 (committed at {dc1:5}); the rider, cut off,
    // cancelled at dc2 (committed at {dc1:4,dc2:1}) and was told of the conflict when it
    // came home. Each side was told its branch is committed: one of them is lost.
    let mut h = without_last_rider_saw(&on_the_road(1));
    let tomb = v(&[(DC1, 4), (DC2, 1)]);
    h.record(
        9_000,
        RIDER,
        Event::Submit {
            session: S,
            kind: OpKind::Cancel,
        },
    );
    h.record(
        9_001,
        RIDER,
        Event::Accepted {
            op: op(RIDER, 2),
            kind: OpKind::Cancel,
        },
    );
    h.record(9_100, RIDER, saw(tomb.clone(), TripPhase::Cancelled, 0));
    h.record(
        9_100,
        RIDER,
        Event::Committed {
            op: op(RIDER, 2),
            version: tomb.clone(),
            duplicate: false,
        },
    );
    let live = road_copy(1);
    let mut cancelled = stored(
        S,
        tomb.clone(),
        RIDER,
        Some(DRIVER),
        state(TripPhase::Cancelled, 0),
        vec![mark(RIDER, 2), mark(DRIVER, 2)],
    );
    cancelled.0.tombstone = true;
    let f = finals(vec![(1, live.clone()), (2, cancelled.clone())]);
    let (silent, _) = check(&h, &f);
    h.record(
        9_500,
        RIDER,
        Event::Conflict {
            session: S,
            ours: tomb,
            theirs: live.0.version.clone(),
        },
    );
    let (vs, summary) = check(&h, &f);
    assert_eq!(summary.sessions_with_conflicts, 1);
    assert_eq!(kinds(&vs), kinds(&silent), "surfacing changed the verdict");
    let k = kinds(&vs);
    assert!(k.contains(&Kind::CommittedOpLost), "{vs:#?}");
    assert!(k.contains(&Kind::VersionRegressed), "{vs:#?}");
    // With the devices' stores read, the two devices end on two branches.
    let mut f = f;
    f.add_device(RIDER, vec![held(cancelled)]);
    f.add_device(DRIVER, vec![held(live)]);
    let (vs, _) = check(&h, &f);
    assert!(kinds(&vs).contains(&Kind::NotConverged), "{vs:#?}");
}

#[test]
fn a_surfaced_conflict_excuses_nothing() {
    // The driver committed three reports at dc1, then was told of a conflict and adopted
    // dc2's copy, which has none of them; so did the rider.
    let mut h = on_the_road(3);
    let theirs = v(&[(DC1, 4), (DC2, 1)]);
    h.record(
        9_000,
        DRIVER,
        Event::Conflict {
            session: S,
            ours: v(&[(DC1, 7)]),
            theirs: theirs.clone(),
        },
    );
    h.record(9_000, DRIVER, saw(theirs.clone(), TripPhase::OnTrip, 0));
    h.record(9_100, RIDER, saw(theirs.clone(), TripPhase::OnTrip, 0));
    let mut copy = road_copy(0);
    copy.0.version = theirs;
    let (vs, summary) = check(&h, &finals(vec![(2, copy.clone())]));
    assert_eq!(summary.sessions_with_conflicts, 1);
    let lost = vs
        .iter()
        .filter(|v| v.kind == Kind::CommittedOpLost)
        .count();
    assert_eq!(lost, 3, "the three reports: {vs:#?}");
    assert!(kinds(&vs).contains(&Kind::VersionRegressed), "{vs:#?}");
    // And C2 as ever.
    copy.1.state.location_updates = 9;
    let (vs, _) = check(&h, &finals(vec![(2, copy)]));
    assert!(kinds(&vs).contains(&Kind::AppliedTwice), "{vs:#?}");
}

// -- convergence and presence -----------------------------------------------------------

#[test]
fn devices_that_end_on_concurrent_copies_have_not_converged() {
    let mut f = finals(vec![(1, road_copy(2))]);
    let mut side = road_copy(1);
    side.0.version = v(&[(DC1, 5), (DC2, 1)]);
    f.add_store(DatacenterId(2), vec![side.clone()]);
    f.add_device(DRIVER, vec![held(road_copy(2))]);
    f.add_device(RIDER, vec![held(side)]);
    let (vs, _) = check(&on_the_road(2), &f);
    let nc: Vec<&Violation> = vs.iter().filter(|v| v.kind == Kind::NotConverged).collect();
    assert_eq!(nc.len(), 1, "{vs:#?}");
    assert!(nc[0].detail.contains("concurrent"), "{}", nc[0].detail);
    assert_eq!(nc[0].final_copy, None);
}

#[test]
fn no_copy_covering_the_devices_copies_is_not_converged() {
    // The rider holds {dc1:6}; the only datacenter copy is {dc1:5}.
    let copy = road_copy(1);
    let (vs, _) = check(&on_the_road(2), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::NotConverged], "{vs:#?}");
    assert!(vs[0].detail.contains("dominates"), "{}", vs[0].detail);
}

#[test]
fn a_committed_session_no_datacenter_holds_is_missing() {
    let (vs, _) = check(&on_the_road(1), &FinalState::new());
    assert_eq!(kinds(&vs), vec![Kind::SessionMissing]);
    assert_eq!(vs[0].history.len(), 1, "the first commit is the evidence");
    assert_eq!(vs[0].final_copy, None);
}

#[test]
fn an_op_reported_rejected_that_the_final_copy_applied_is_caught() {
    for reason in [
        OpRejection::App(lifeboat_common::AppRejection::InvalidOp("test".into())),
        OpRejection::OutOfOrder { expected: 2 },
    ] {
        let mut h = on_the_road(0);
        h.record(
            9_000,
            DRIVER,
            Event::Submit {
                session: S,
                kind: OpKind::Location,
            },
        );
        h.record(
            9_001,
            DRIVER,
            Event::Accepted {
                op: op(DRIVER, 3),
                kind: OpKind::Location,
            },
        );
        h.record(
            9_100,
            DRIVER,
            Event::Refused {
                op: op(DRIVER, 3),
                reason: SubmitError::Rejected(reason),
            },
        );
        let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
        assert_eq!(kinds(&vs), vec![Kind::RefusedButApplied], "{vs:#?}");
    }
}

// -- reports ----------------------------------------------------------------------------

#[test]
fn the_report_names_the_seed_the_replay_the_session_and_the_short_history() {
    let mut copy = road_copy(3);
    copy.0.version = v(&[(DC1, 8)]);
    copy.1.state.location_updates = 4;
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    let text = report(42, "LIFEBOAT_SEED=42 cargo test", &vs);
    assert!(
        text.starts_with("seed 42: 1 contract violation(s)"),
        "{text}"
    );
    assert!(text.contains("replay: LIFEBOAT_SEED=42 cargo test"));
    assert!(text.contains(&S.to_string()));
    assert!(text.contains("history (3 of the session's"), "{text}");
    assert!(text.contains("final: dc1"), "{text}");
}

#[test]
fn other_sessions_events_never_appear_in_a_violation() {
    let mut h = on_the_road(3);
    let other = SessionId(0x07e7);
    for i in 0..20 {
        h.record(
            20_000 + i,
            RIDER,
            Event::Saw {
                session: other,
                version: v(&[(DC1, i + 1)]),
                phase: TripPhase::Requested,
                locations: 0,
                committed: true,
            },
        );
    }
    let mut copy = road_copy(3);
    copy.0.version = v(&[(DC1, 8)]);
    copy.1.state.location_updates = 5;
    let (vs, _) = check(&h, &finals(vec![(1, copy)]));
    // The other session has no copy anywhere: it is reported on its own.
    assert!(vs
        .iter()
        .any(|v| v.session == other && v.kind == Kind::SessionMissing));
    assert!(vs
        .iter()
        .any(|v| v.session == S && v.kind == Kind::AppliedTwice));
    for v in &vs {
        assert!(v
            .history
            .iter()
            .all(|e| e.event.session() == Some(v.session)));
    }
}

// -- C1 on the trip's own fields ----------------------------------------------------------

#[test]
fn a_copy_whose_watermarks_cover_committed_reports_it_does_not_hold_is_lost_c1() {
    // The watermarks say all three reports were applied; the state shows two.
    let mut copy = road_copy(3);
    copy.0.version = v(&[(DC1, 7), (DC2, 1)]); // a version of its own: not "issued twice"
    copy.1.state.location_updates = 2;
    let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::CommittedOpLost], "{vs:#?}");
    assert!(
        vs[0].detail.contains("location reports"),
        "{}",
        vs[0].detail
    );
}

#[test]
fn a_copy_in_a_phase_before_a_committed_transition_is_lost_c1() {
    // The start was committed and its watermark says applied; the copy is still arrived.
    let mut copy = road_copy(0);
    copy.0.version = v(&[(DC1, 4), (DC2, 1)]); // a version of its own: not "issued twice"
    copy.1.state.phase = TripPhase::DriverArrived;
    let (vs, _) = check(&on_the_road(0), &finals(vec![(1, copy)]));
    assert_eq!(kinds(&vs), vec![Kind::CommittedOpLost], "{vs:#?}");
    assert!(vs[0].detail.contains("Start"), "{}", vs[0].detail);
}

// -- histories of some devices only ----------------------------------------------------

#[test]
fn a_watermark_of_a_device_the_history_does_not_record_is_judged_only_if_it_records_all() {
    // Only the driver's ops are recorded; the copy holds the rider's watermark too.
    let mut partial = History::of_devices([DRIVER]);
    let mut full = History::new();
    for e in on_the_road(2)
        .entries()
        .iter()
        .filter(|e| e.device == DRIVER)
    {
        partial.record(e.at_ms, e.device, e.event.clone());
        full.record(e.at_ms, e.device, e.event.clone());
    }
    let (vs, _) = check(&partial, &finals(vec![(1, road_copy(2))]));
    assert!(vs.is_empty(), "{vs:#?}");
    assert!(partial.records_ops_of(DRIVER) && !partial.records_ops_of(RIDER));
    let (vs, _) = check(&full, &finals(vec![(1, road_copy(2))]));
    assert_eq!(kinds(&vs), vec![Kind::AppliedTwice], "{vs:#?}");
}
