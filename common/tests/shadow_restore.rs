//! The shadow restore in the cores (issue 14): one datacenter core samples its sessions and
//! asks the edge cores for their copies; each device here has a model store (a map written
//! from the edge core's `StoreWrite`s) that answers the samples, as the edge client answers
//! them from sled. A device whose store silently stopped persisting must be caught.
//!
//! The expectations are stated from outside the core: what each model store holds against
//! what the datacenter holds, never by calling the core's own restore rules.

mod support {
    pub mod wiring;
}

use lifeboat_common::datacenter::{
    CopyCheck, DatacenterCore, DcConfig, DcEvent, ShadowSample, MAX_SHADOW_PROBES,
    SHADOW_DEADLINE_MS,
};
use lifeboat_common::edge::{EdgeCore, EdgeLimits, HeldSession, StoreWrite};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::ClientMsg;
use lifeboat_common::{DatacenterId, DeviceId, GeoPoint, SessionId, Trip, TripOp};
use std::collections::HashMap;

const P: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};
const Q: GeoPoint = GeoPoint {
    lat_e6: 52_521_000,
    lon_e6: 13_406_000,
};
/// One sample a second, as the server's default.
const INTERVAL_MS: u64 = 1_000;

struct Device {
    core: EdgeCore<Trip>,
    /// What the device's store holds, written from the core's writes.
    store: HashMap<SessionId, HeldSession<Trip>>,
    /// The store silently drops every session write from now on (a broken phone).
    stopped_persisting: bool,
    /// The device never answers a sample (an app that ignores the message).
    mute: bool,
}

struct Rig {
    keyring: Keyring,
    dc: DatacenterCore<Trip>,
    devices: HashMap<DeviceId, Device>,
    samples: Vec<ShadowSample>,
    now: u64,
}

impl Rig {
    fn new() -> Self {
        Self::with_interval(INTERVAL_MS)
    }

    fn with_interval(interval_ms: u64) -> Self {
        let keyring = Keyring::generate();
        let mut cfg = DcConfig::new(DatacenterId(1), ReplicaId(1));
        cfg.shadow_interval_ms = interval_ms;
        Rig {
            dc: DatacenterCore::new(cfg, keyring.clone()),
            keyring,
            devices: HashMap::new(),
            samples: Vec::new(),
            now: 1_796_000_000_000,
        }
    }

    fn connect(&mut self, id: u64, available: bool) -> DeviceId {
        let d = DeviceId(id);
        let core = EdgeCore::new(d, EdgeLimits::default());
        let c = support::wiring::connect_upload(&self.keyring, &core, available);
        self.devices.insert(
            d,
            Device {
                core,
                store: HashMap::new(),
                stopped_persisting: false,
                mute: false,
            },
        );
        self.dc
            .handle_connect(self.now, c.device, c.available, c.digests);
        self.pump();
        d
    }

    fn submit(&mut self, d: DeviceId, s: SessionId, op: TripOp) {
        let dev = self.devices.get_mut(&d).expect("device");
        dev.core.submit(s, op).expect("accepted locally");
        self.pump();
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            self.dc.handle_tick(self.now);
            self.pump();
        }
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut quiet = true;
            let fx = self.dc.poll_effects();
            for e in fx.events {
                if let DcEvent::ShadowSampled(s) = e {
                    self.samples.push(s);
                }
            }
            for (to, msg) in fx.send {
                quiet = false;
                let dev = self.devices.get_mut(&to).expect("device");
                dev.core
                    .handle_message(self.now, msg)
                    .expect("no protocol error");
            }
            for (d, dev) in self.devices.iter_mut() {
                let fx = dev.core.poll_effects();
                for w in fx.writes {
                    match w {
                        StoreWrite::PutSession(s, h) if !dev.stopped_persisting => {
                            dev.store.insert(s, h);
                        }
                        StoreWrite::DeleteSession(s) if !dev.stopped_persisting => {
                            dev.store.remove(&s);
                        }
                        _ => {}
                    }
                }
                let mut up = fx.send;
                if !dev.mute {
                    // Read back from the store after the flush, as the edge client does.
                    up.extend(fx.samples.into_iter().map(|session| ClientMsg::Sampled {
                        session,
                        copy: dev.store.get(&session).map(EdgeCore::<Trip>::offered),
                    }));
                }
                for msg in up {
                    quiet = false;
                    self.dc
                        .handle_message(self.now, *d, msg)
                        .expect("a message after connect");
                }
            }
            if quiet {
                return;
            }
        }
        panic!("message pump did not settle");
    }

    /// A trip on the road: requested, assigned, arrived, started, one location.
    fn trip(&mut self, rider: u64, driver: u64) -> (SessionId, DeviceId, DeviceId) {
        let driver = self.connect(driver, true);
        let rider = self.connect(rider, false);
        let s = SessionId(rider.0 * 1000 + driver.0);
        self.submit(
            rider,
            s,
            TripOp::Request {
                pickup: P,
                dropoff: Q,
            },
        );
        for op in [
            TripOp::Arrived,
            TripOp::StartTrip,
            TripOp::Location { at: P },
        ] {
            self.submit(driver, s, op);
        }
        (s, rider, driver)
    }

    fn samples_of(&self, s: SessionId) -> Vec<&ShadowSample> {
        self.samples.iter().filter(|x| x.session == s).collect()
    }
}

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
