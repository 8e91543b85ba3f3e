//! A small in-memory region for the scenario suites of one datacenter core
//! (`shadow_restore.rs`, `bounded_tombstones.rs`): one datacenter core and edge cores, each
//! device with a model store (a map written from its core's `StoreWrite`s) that answers the
//! shadow restore's samples as the edge client answers them from sled. No sockets, no clock:
//! the rig's time moves only when a test moves it.

#![allow(dead_code)]

use lifeboat_common::datacenter::{DatacenterCore, DcConfig, DcEvent, ShadowSample};
use lifeboat_common::edge::{EdgeCore, EdgeLimits, HeldSession, StoreWrite};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::ClientMsg;
use lifeboat_common::{DatacenterId, DeviceId, GeoPoint, SessionId, Trip, TripOp};
use std::collections::HashMap;

pub const P: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};
pub const Q: GeoPoint = GeoPoint {
    lat_e6: 52_521_000,
    lon_e6: 13_406_000,
};
/// One sample a second, as the server's default.
pub const INTERVAL_MS: u64 = 1_000;

pub struct Device {
    pub core: EdgeCore<Trip>,
    /// What the device's store holds, written from the core's writes.
    pub store: HashMap<SessionId, HeldSession<Trip>>,
    /// The store silently drops every session write from now on (a broken phone).
    pub stopped_persisting: bool,
    /// The device never answers a sample (an app that ignores the message).
    pub mute: bool,
}

pub struct Rig {
    pub keyring: Keyring,
    pub dc: DatacenterCore<Trip>,
    pub devices: HashMap<DeviceId, Device>,
    pub samples: Vec<ShadowSample>,
    pub now: u64,
}

impl Rig {
    pub fn new() -> Self {
        Self::with_interval(INTERVAL_MS)
    }

    pub fn with_interval(interval_ms: u64) -> Self {
        let mut cfg = DcConfig::new(DatacenterId(1), ReplicaId(1));
        cfg.shadow_interval_ms = interval_ms;
        Self::with_config(cfg)
    }

    pub fn with_config(cfg: DcConfig) -> Self {
        let keyring = Keyring::generate();
        Rig {
            dc: DatacenterCore::new(cfg, keyring.clone()),
            keyring,
            devices: HashMap::new(),
            samples: Vec::new(),
            now: 1_796_000_000_000,
        }
    }

    pub fn connect(&mut self, id: u64, available: bool) -> DeviceId {
        let d = DeviceId(id);
        let core = EdgeCore::new(d, EdgeLimits::default());
        let c = super::wiring::connect_upload(&self.keyring, &core, available);
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

    /// The datacenter is lost with its disk: a fresh one (`cfg`, the same region keys) takes
    /// over and every device connects to it with what its store holds (in id order).
    pub fn fail_over(&mut self, cfg: DcConfig) -> Vec<lifeboat_common::wire::UploadResult> {
        self.dc = DatacenterCore::new(cfg, self.keyring.clone());
        let mut ids: Vec<DeviceId> = self.devices.keys().copied().collect();
        ids.sort();
        let mut results = Vec::new();
        for d in ids {
            let dev = self.devices.get_mut(&d).expect("device");
            dev.core.on_disconnect();
            let c = super::wiring::connect_upload(&self.keyring, &dev.core, false);
            self.dc
                .handle_connect(self.now, c.device, c.available, c.digests);
            let fx = self.dc.poll_effects();
            for (to, msg) in &fx.send {
                if let lifeboat_common::wire::ServerMsg::Welcome { results: r, .. } = msg {
                    if *to == d {
                        results.extend(r.iter().cloned());
                    }
                }
            }
            for (to, msg) in fx.send {
                let dev = self.devices.get_mut(&to).expect("device");
                dev.core
                    .handle_message(self.now, msg)
                    .expect("no protocol error");
            }
            self.pump();
        }
        results
    }

    pub fn submit(&mut self, d: DeviceId, s: SessionId, op: TripOp) {
        let dev = self.devices.get_mut(&d).expect("device");
        dev.core.submit(s, op).expect("accepted locally");
        self.pump();
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            self.dc.handle_tick(self.now);
            self.pump();
        }
    }

    pub fn pump(&mut self) {
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
    pub fn trip(&mut self, rider: u64, driver: u64) -> (SessionId, DeviceId, DeviceId) {
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

    pub fn samples_of(&self, s: SessionId) -> Vec<&ShadowSample> {
        self.samples.iter().filter(|x| x.session == s).collect()
    }
}
