//! Bounded tombstones at the datacenter (issue 14, C3 and C6): tombstones expire by age and
//! by count, and a finished session still never comes back; idle sessions are resealed so
//! their devices' copies stay restorable.
//!
//! The expectations are stated from outside the core: what the datacenter holds and what a
//! device's old copy does at it, never by calling the core's own floor rule.

mod support {
    pub mod rig;
    pub mod wiring;
}

use lifeboat_common::datacenter::{DatacenterCore, DcConfig, MAX_CLOCK_SKEW_MS};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::wire::{
    ClientMsg, OfferedCopy, ServerMsg, UploadOutcome, UploadRefusal, UploadResult,
};
use lifeboat_common::{DatacenterId, DeviceId, SessionId, Trip, TripOp, TripPhase};
use support::rig::{Rig, Q};

const HOUR_MS: u64 = 3_600_000;

fn config(ttl_ms: u64, max_tombstones: usize) -> DcConfig {
    let mut cfg = DcConfig::new(DatacenterId(1), ReplicaId(1));
    cfg.tombstone_ttl_ms = ttl_ms;
    cfg.max_tombstones = max_tombstones;
    cfg
}

/// A trip to its end; returns the session and a live copy the rider held on the way (as a
/// phone that went offline before the end would still hold it).
fn finished_trip(r: &mut Rig, rider: u64, driver: u64) -> (SessionId, DeviceId, OfferedCopy) {
    let (s, rider, driver) = r.trip(rider, driver);
    let live = r.devices[&rider]
        .store
        .get(&s)
        .map(lifeboat_common::edge::EdgeCore::offered)
        .expect("the rider holds the live trip");
    r.submit(driver, s, TripOp::Complete);
    let (header, state) = r.dc.session(s).expect("held");
    assert!(header.tombstone && state.phase == TripPhase::Completed);
    // The driver goes home, so the next trip's request gets the next trip's driver.
    r.dc.handle_disconnect(driver);
    (s, rider, live)
}

/// What the datacenter answers to `device` re-uploading `copy` as committed.
fn reupload(r: &mut Rig, device: DeviceId, mut copy: OfferedCopy) -> UploadOutcome {
    copy.committed = true;
    r.dc.handle_message(r.now, device, ClientMsg::Reupload { copy })
        .expect("accepted");
    let fx = r.dc.poll_effects();
    fx.send
        .into_iter()
        .find_map(|(to, m)| match m {
            ServerMsg::Uploaded { result } if to == device => Some(result.outcome),
            _ => None,
        })
        .expect("an answer")
}

fn assert_too_old(outcome: UploadOutcome) {
    assert!(
        matches!(
            outcome,
            UploadOutcome::Refused(UploadRefusal::SealedTooLongAgo { .. })
        ),
        "{outcome:?}"
    );
}

/// Move the rig's time in 1 s ticks.
fn advance(r: &mut Rig, ms: u64) {
    let end = r.now + ms;
    while r.now < end {
        r.now = (r.now + 1_000).min(end);
        r.dc.handle_tick(r.now);
        r.pump();
    }
}

#[test]
fn an_expired_tombstone_is_dropped_and_an_old_live_copy_of_its_session_stays_refused() {
    let ttl = HOUR_MS;
    let mut r = Rig::with_config(config(ttl, 0));
    let (s, rider, live) = finished_trip(&mut r, 1, 2);
    // Within the TTL the tombstone answers the old copy itself.
    assert_eq!(
        reupload(&mut r, rider, live.clone()),
        UploadOutcome::Tombstoned
    );
    advance(&mut r, ttl + MAX_CLOCK_SKEW_MS + 3_000);
    assert!(r.dc.session(s).is_none(), "the tombstone was not dropped");
    assert_eq!(r.dc.tombstone_count(), 0);
    assert_eq!(r.dc.stats().tombstones_expired, 1);
    // The phone comes back from its tunnel with the live copy: refused, nothing restored.
    assert_too_old(reupload(&mut r, rider, live));
    assert!(
        r.dc.session(s).is_none(),
        "the finished trip came back to life"
    );
}

#[test]
fn the_count_bound_drops_the_oldest_after_half_the_ttl_and_raises_the_floor_past_it() {
    let ttl = 4 * HOUR_MS;
    let mut r = Rig::with_config(config(ttl, 2));
    let (old, old_rider, old_live) = finished_trip(&mut r, 1, 2);
    advance(&mut r, 60_000);
    let (mid, ..) = finished_trip(&mut r, 3, 4);
    let (new, ..) = finished_trip(&mut r, 5, 6);
    assert_eq!(
        r.dc.tombstone_count(),
        3,
        "over the bound, but all younger than ttl/2"
    );
    advance(&mut r, ttl / 2);
    assert_eq!(r.dc.tombstone_count(), 2);
    assert!(r.dc.session(old).is_none(), "the oldest goes first");
    assert!(r.dc.session(mid).is_some() && r.dc.session(new).is_some());
    assert!(r.dc.restore_floor_ms() > old_live.digest.sealed_at_ms());
    // Younger than the TTL, so only the raised floor stands between it and a revival.
    assert_too_old(reupload(&mut r, old_rider, old_live));
    assert!(
        r.dc.session(old).is_none(),
        "the finished trip came back to life"
    );
}

#[test]
fn an_idle_trip_is_resealed_so_a_backup_restores_it_from_the_phones_after_the_ttl() {
    let ttl = 4 * HOUR_MS;
    let mut r = Rig::with_config(config(ttl, 0));
    let (s, rider, driver) = r.trip(1, 2);
    let first = r.devices[&driver]
        .store
        .get(&s)
        .map(lifeboat_common::edge::EdgeCore::offered)
        .expect("held");
    // Nobody moves for longer than the TTL.
    advance(&mut r, ttl + HOUR_MS);
    // Without the reseals the phones' copy would be too old for any datacenter now.
    let mut elsewhere = DatacenterCore::<Trip>::new(config(ttl, 0), r.keyring.clone());
    elsewhere.handle_connect(r.now, driver, false, vec![first]);
    let answer = elsewhere.poll_effects().send;
    assert!(
        answer.iter().any(|(_, m)| matches!(
            m,
            ServerMsg::Welcome { results, .. } if matches!(
                results[..],
                [UploadResult { outcome: UploadOutcome::Refused(UploadRefusal::SealedTooLongAgo { .. }), .. }]
            )
        )),
        "{answer:?}"
    );
    assert!(r.dc.stats().sessions_refreshed >= 4, "{:?}", r.dc.stats());
    let dc_version = r.dc.session(s).expect("held").0.version.clone();
    for d in [rider, driver] {
        let held = &r.devices[&d].store[&s];
        assert_eq!(
            held.digest.header.version, dc_version,
            "{d} missed a reseal"
        );
    }
    // The datacenter is lost: a fresh one restores the trip from the phones.
    let results = r.fail_over(config(ttl, 0));
    assert!(
        results
            .iter()
            .filter(|x| x.session == s)
            .any(|x| x.outcome == UploadOutcome::Restored),
        "{results:?}"
    );
    let (header, state) = r.dc.session(s).expect("restored");
    assert!(!header.tombstone && state.phase == TripPhase::OnTrip);
    // The trip goes on at the backup.
    r.submit(driver, s, TripOp::Location { at: Q });
    r.submit(driver, s, TripOp::Complete);
    assert!(r.dc.session(s).expect("held").0.tombstone);
}

#[test]
fn with_a_zero_ttl_tombstones_are_kept_and_old_copies_are_judged_as_before() {
    let mut r = Rig::with_config(config(0, 0));
    let (s, rider, live) = finished_trip(&mut r, 1, 2);
    r.now += 30 * 24 * HOUR_MS;
    r.dc.handle_tick(r.now);
    r.pump();
    assert!(r.dc.session(s).is_some());
    assert_eq!(reupload(&mut r, rider, live), UploadOutcome::Tombstoned);
    assert_eq!(r.dc.stats().sessions_refreshed, 0);
}
