//! The shadow restore in the cores (issue 14): one datacenter core samples its sessions and
//! asks the edge cores for their copies; each device here has a model store (a map written
//! from the edge core's `StoreWrite`s) that answers the samples, as the edge client answers
//! them from sled. A device whose store silently stopped persisting must be caught.
//!
//! The expectations are stated from outside the core: what each model store holds against
//! what the datacenter holds, never by calling the core's own restore rules.

mod support {
    pub mod rig;
    pub mod wiring;
}

use lifeboat_common::datacenter::{CopyCheck, MAX_SHADOW_PROBES, SHADOW_DEADLINE_MS};
use lifeboat_common::edge::EdgeCore;
use lifeboat_common::wire::ClientMsg;
use lifeboat_common::{DeviceId, GeoPoint, SessionId, Trip, TripOp};
use support::rig::{Rig, INTERVAL_MS, P, Q};

#[test]
fn every_sampled_trip_of_honest_devices_is_restorable_and_nothing_changes() {
    let mut r = Rig::new();
    let (a, ..) = r.trip(1, 2);
    let (b, ..) = r.trip(3, 4);
    let before: Vec<_> = [a, b]
        .iter()
        .map(|s| r.dc.sealed(*s).cloned().expect("held"))
        .collect();
    r.run_for(10 * INTERVAL_MS);
    let after: Vec<_> = [a, b]
        .iter()
        .map(|s| r.dc.sealed(*s).cloned().expect("held"))
        .collect();
    assert_eq!(before, after, "a sample changed a session");
    assert!(r.samples.len() >= 8, "{} samples in 10 s", r.samples.len());
    for s in &r.samples {
        assert!(s.restorable, "{s:?}");
        assert_eq!(s.devices.len(), 2, "both participants asked: {s:?}");
        for (d, check) in &s.devices {
            assert!(matches!(check, CopyCheck::Current { .. }), "{d}: {check:?}");
        }
    }
    assert!(!r.samples_of(a).is_empty() && !r.samples_of(b).is_empty());
    assert_eq!(r.dc.stats().shadow_samples, r.samples.len() as u64);
    assert_eq!(r.dc.stats().shadow_restorable, r.samples.len() as u64);
}

#[test]
fn a_session_whose_only_device_stopped_persisting_is_unrestorable_and_the_device_is_named() {
    let mut r = Rig::new();
    let (healthy, ..) = r.trip(1, 2);
    // A rider alone (no driver free): its store breaks before its request is persisted.
    let lonely = r.connect(7, false);
    r.devices
        .get_mut(&lonely)
        .expect("device")
        .stopped_persisting = true;
    let broken = SessionId(7_000);
    r.submit(
        lonely,
        broken,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    assert!(
        r.dc.sealed(broken).is_some(),
        "the datacenter holds the trip"
    );
    r.run_for(10 * INTERVAL_MS);
    let of_broken = r.samples_of(broken);
    assert!(!of_broken.is_empty(), "never sampled");
    for s in &of_broken {
        assert!(!s.restorable, "{s:?}");
        assert_eq!(s.devices, vec![(lonely, CopyCheck::Missing)]);
    }
    assert!(r.samples_of(healthy).iter().all(|s| s.restorable));
    let st = r.dc.stats();
    assert!(st.shadow_restorable < st.shadow_samples, "{st:?}");
    assert_eq!(st.shadow_copies_behind, of_broken.len() as u64);
}

#[test]
fn a_driver_whose_store_froze_is_named_behind_while_the_rider_still_restores_the_trip() {
    let mut r = Rig::new();
    let (s, rider, driver) = r.trip(1, 2);
    r.devices
        .get_mut(&driver)
        .expect("device")
        .stopped_persisting = true;
    for k in 0..3 {
        let at = GeoPoint {
            lat_e6: P.lat_e6 + k,
            lon_e6: P.lon_e6,
        };
        r.submit(driver, s, TripOp::Location { at });
    }
    r.run_for(4 * INTERVAL_MS);
    let samples = r.samples_of(s);
    assert!(!samples.is_empty());
    for x in samples {
        // The rider was pushed every change and persisted it: a backup restores the trip.
        assert!(x.restorable, "{x:?}");
        let check = |d: DeviceId| x.devices.iter().find(|(e, _)| *e == d).map(|(_, c)| c);
        assert!(
            matches!(check(rider), Some(CopyCheck::Current { .. })),
            "{x:?}"
        );
        assert!(
            matches!(check(driver), Some(CopyCheck::Behind { .. })),
            "{x:?}"
        );
    }
}

#[test]
fn a_device_that_never_answers_is_silent_after_the_deadline_and_samples_stay_bounded() {
    // A sample every tick: 50 would be outstanding within the deadline without the bound.
    let mut r = Rig::with_interval(100);
    let mut mute = Vec::new();
    for i in 0..40u64 {
        let d = r.connect(100 + i, false);
        r.devices.get_mut(&d).expect("device").mute = true;
        r.submit(
            d,
            SessionId(1_000_000 + i),
            TripOp::Request {
                pickup: P,
                dropoff: Q,
            },
        );
        mute.push(d);
    }
    let mut most = 0;
    for _ in 0..(3 * SHADOW_DEADLINE_MS / 100) {
        r.now += 100;
        r.dc.handle_tick(r.now);
        r.pump();
        most = most.max(r.dc.shadow_probes());
    }
    assert_eq!(most, MAX_SHADOW_PROBES, "the bound was reached and held");
    assert!(!r.samples.is_empty(), "no sample judged after its deadline");
    for s in &r.samples {
        assert!(!s.restorable);
        assert!(matches!(s.devices[..], [(_, CopyCheck::Silent)]), "{s:?}");
    }
    assert_eq!(r.dc.stats().shadow_copies_silent, r.samples.len() as u64);
}

#[test]
fn an_answer_nobody_asked_for_is_ignored() {
    let mut r = Rig::new();
    let (s, rider, _) = r.trip(1, 2);
    let copy = r.devices[&rider]
        .store
        .get(&s)
        .map(EdgeCore::<Trip>::offered);
    r.dc.handle_message(r.now, rider, ClientMsg::Sampled { session: s, copy })
        .expect("accepted");
    let fx = r.dc.poll_effects();
    assert!(fx.events.is_empty() && fx.send.is_empty() && fx.persist.is_empty());
    assert_eq!(r.dc.stats().shadow_samples, 0);
}
