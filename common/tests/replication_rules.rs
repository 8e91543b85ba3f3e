//! Deterministic scenario tests of the replication core: two datacenter cores and several
//! edge cores wired by in-memory message passing (no sockets, no clock). Every random choice
//! comes from a seed that failing assertions print.

mod support {
    pub mod wiring;
}

use lifeboat_common::datacenter::{DatacenterCore, DcConfig, Durability};
use lifeboat_common::digest::SealedDigest;
use lifeboat_common::edge::{Commit, EdgeCore, EdgeEvent, EdgeLimits, StoreWrite, SubmitError};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::op_outcome::OpStatus;
use lifeboat_common::wire::{ClientMsg, OfferedCopy, ServerMsg, UploadOutcome};
use lifeboat_common::{
    DatacenterId, DeviceId, GeoPoint, OpId, SessionId, Trip, TripOp, TripPhase, VersionOrder,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const P: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};
const Q: GeoPoint = GeoPoint {
    lat_e6: 52_521_000,
    lon_e6: 13_406_000,
};

/// A digest offered as committed: the strongest claim a device (honest or not) can make.
fn claimed(digest: SealedDigest) -> OfferedCopy {
    OfferedCopy {
        digest,
        committed: true,
        known_committed: Default::default(),
        known_committed_driver: None,
    }
}

struct Region {
    keyring: Keyring,
    dcs: Vec<Option<DatacenterCore<Trip>>>,
    edges: HashMap<DeviceId, EdgeCore<Trip>>,
    link: HashMap<DeviceId, usize>,
    /// Replies the network loses (S3): (device, session, seq).
    drop_replies_to: Vec<(DeviceId, SessionId, u64)>,
    commits: Vec<(OpId, Result<Commit, SubmitError>)>,
    events: Vec<(DeviceId, EdgeEvent<Trip>)>,
    /// Every device's store writes of op records, in order.
    op_writes: Vec<(DeviceId, StoreWrite<Trip>)>,
    now: u64,
    durability: Durability,
    /// Sessions each datacenter asked its store to write.
    persisted: Vec<std::collections::HashSet<SessionId>>,
    next_replica: u32,
}

impl Region {
    fn new(n_dcs: u16, durability: Durability) -> Self {
        let keyring = Keyring::generate();
        let mut r = Region {
            keyring,
            dcs: Vec::new(),
            edges: HashMap::new(),
            link: HashMap::new(),
            drop_replies_to: Vec::new(),
            commits: Vec::new(),
            events: Vec::new(),
            op_writes: Vec::new(),
            now: 1_000,
            durability,
            persisted: vec![Default::default(); n_dcs as usize],
            next_replica: 0,
        };
        for i in 0..n_dcs {
            let dc = r.new_dc(i);
            r.dcs.push(Some(dc));
        }
        r
    }

    /// A datacenter on a fresh (or lost) disk: a new replica slot.
    fn new_dc(&mut self, i: u16) -> DatacenterCore<Trip> {
        self.next_replica += 1;
        let replica = self.next_replica;
        self.dc_with_disk(i, replica)
    }

    /// A datacenter that keeps the disk (and so the replica slot) `replica`.
    fn dc_with_disk(&self, i: u16, replica: u32) -> DatacenterCore<Trip> {
        let mut cfg = DcConfig::new(DatacenterId(i + 1), ReplicaId(replica));
        cfg.durability = self.durability;
        DatacenterCore::new(cfg, self.keyring.clone())
    }

    fn dc(&self, i: usize) -> &DatacenterCore<Trip> {
        self.dcs[i].as_ref().expect("datacenter is up")
    }

    fn add_device(&mut self, id: u64) -> DeviceId {
        let d = DeviceId(id);
        self.edges
            .insert(d, EdgeCore::new(d, EdgeLimits::default()));
        d
    }

    fn connect(&mut self, d: DeviceId, dc: usize, available: bool) {
        let c = support::wiring::connect_upload(&self.keyring, &self.edges[&d], available);
        self.link.insert(d, dc);
        let now = self.now;
        self.dcs[dc]
            .as_mut()
            .expect("up")
            .handle_connect(now, c.device, c.available, c.digests);
        self.pump();
    }

    /// Kill a datacenter: its state is gone, its devices are disconnected.
    fn kill(&mut self, dc: usize) {
        self.dcs[dc] = None;
        let gone: Vec<DeviceId> = self
            .link
            .iter()
            .filter(|(_, l)| **l == dc)
            .map(|(d, _)| *d)
            .collect();
        for d in gone {
            self.link.remove(&d);
            if let Some(e) = self.edges.get_mut(&d) {
                e.on_disconnect();
            }
        }
    }

    fn submit(&mut self, d: DeviceId, s: SessionId, op: TripOp) -> OpId {
        let id = self
            .edges
            .get_mut(&d)
            .expect("device")
            .submit(s, op)
            .expect("submit accepted locally");
        self.pump();
        id
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        for dc in self.dcs.iter_mut().flatten() {
            dc.handle_tick(now);
        }
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut quiet = true;
            let now = self.now;
            for i in 0..self.dcs.len() {
                let Some(dc) = self.dcs[i].as_mut() else {
                    continue;
                };
                let fx = dc.poll_effects();
                self.persisted[i].extend(fx.persist.iter().map(|(s, _)| *s));
                for (to, msg) in fx.send {
                    if self.link.get(&to) != Some(&i) {
                        continue;
                    }
                    quiet = false;
                    let edge = self.edges.get_mut(&to).expect("device");
                    if let ServerMsg::OpResult { session, seq, .. } = &msg {
                        if let Some(pos) = self
                            .drop_replies_to
                            .iter()
                            .position(|x| *x == (to, *session, *seq))
                        {
                            self.drop_replies_to.remove(pos);
                            continue;
                        }
                    }
                    if let Err(error) = edge.handle_message(now, msg) {
                        panic!("protocol error {error}");
                    }
                }
            }
            let now = self.now;
            for (d, edge) in self.edges.iter_mut() {
                let fx = edge.poll_effects();
                self.op_writes.extend(
                    fx.writes
                        .into_iter()
                        .filter(|w| {
                            matches!(
                                w,
                                StoreWrite::PutOp(..)
                                    | StoreWrite::PutOutcome(..)
                                    | StoreWrite::DeleteOp(..)
                            )
                        })
                        .map(|w| (*d, w)),
                );
                self.commits.extend(fx.resolved);
                self.events.extend(fx.events.into_iter().map(|e| (*d, e)));
                let Some(&l) = self.link.get(d) else {
                    continue;
                };
                let Some(dc) = self.dcs[l].as_mut() else {
                    continue;
                };
                for msg in fx.send {
                    quiet = false;
                    if let Err(e) = dc.handle_message(now, *d, msg) {
                        panic!("test wiring: {d} sent a connect frame after connecting: {e}");
                    }
                }
            }
            if quiet {
                return;
            }
        }
        panic!("message pump did not settle");
    }

    fn committed(&self, id: OpId) -> bool {
        self.commits.iter().any(|(i, r)| *i == id && r.is_ok())
    }

    fn phase(&self, dc: usize, s: SessionId) -> Option<TripPhase> {
        self.dc(dc).session(s).map(|(_, st)| st.phase)
    }

    /// Rider requests, dispatch assigns the driver, driver arrives and starts.
    fn trip_on_the_road(&mut self, rider: DeviceId, driver: DeviceId, dc: usize) -> SessionId {
        let s = SessionId(rider.0 * 1000 + driver.0);
        self.connect(driver, dc, true);
        self.connect(rider, dc, false);
        self.submit(
            rider,
            s,
            TripOp::Request {
                pickup: P,
                dropoff: Q,
            },
        );
        assert_eq!(self.phase(dc, s), Some(TripPhase::Assigned));
        self.submit(driver, s, TripOp::Arrived);
        self.submit(driver, s, TripOp::StartTrip);
        assert_eq!(self.phase(dc, s), Some(TripPhase::OnTrip));
        s
    }
}

#[test]
fn trip_runs_to_completion_and_leaves_a_tombstone() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.now += 60_000;
    r.submit(driver, s, TripOp::Location { at: Q });
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(h.tombstone);
    assert!(st.fare_cents.is_some());
    // Both phones hold the tombstone.
    for d in [rider, driver] {
        assert!(r.edges[&d].held(s).unwrap().digest.header.tombstone);
    }
}

#[test]
fn s1_backup_restores_every_session_from_the_edges() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(r.committed(loc));
    let before = r.dc(0).session(s).unwrap().1.clone();
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    let (_, after) = r.dc(1).session(s).expect("restored at the backup");
    assert_eq!(*after, before);
    assert!(
        r.persisted[1].contains(&s),
        "the backup keeps what it restored on its own disk too"
    );
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    assert_eq!(r.phase(1, s), Some(TripPhase::Completed));
}

#[test]
fn s3_reply_lost_then_failover_applies_the_op_exactly_once() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The location op is applied at the primary and pushed to the rider, but the reply to
    // the driver is lost; then the primary dies.
    r.drop_replies_to.push((driver, s, 3));
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(!r.committed(loc));
    assert_eq!(r.dc(0).session(s).unwrap().1.location_updates, 1);
    r.kill(0);
    // The driver (the anchor) reaches the backup first; its own copy lacks the op. There is
    // no grace wait: its replay is applied there at once and committed when it persists the
    // reply (the rider's copy holding the op was never persisted by the anchor, so it holds
    // nothing committed the backup lacks).
    r.connect(driver, 1, false);
    assert!(
        r.committed(loc),
        "the anchor's replay commits at the backup"
    );
    // The rider arrives with the primary's copy, which also applied the op: a concurrent
    // branch nobody confirmed. The backup asks the anchor to confirm its copy and the rider
    // gives way to it.
    r.connect(rider, 1, false);
    let st = r.dc(1).session(s).unwrap().1;
    assert_eq!(st.location_updates, 1, "applied exactly once");
    let backup = r.dc(1).session(s).unwrap().0.version.clone();
    for d in [rider, driver] {
        let held = r.edges[&d].held(s).expect("held");
        assert_eq!(
            held.digest.header.version, backup,
            "{d} holds the backup's copy"
        );
        assert!(held.committed, "{d} knows it is committed");
    }
    // The replay at the backup was not a duplicate there: the primary's application of it
    // was on a branch that did not commit.
    let dup = r
        .commits
        .iter()
        .find(|(i, _)| *i == loc)
        .and_then(|(_, c)| c.as_ref().ok())
        .map(|c| c.duplicate);
    assert_eq!(dup, Some(false));
}

#[test]
fn s3_reply_lost_and_no_copy_anywhere_applies_once_at_the_backup() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.drop_replies_to.push((driver, s, 3));
    // The rider is offline, so the push is lost too.
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    r.kill(0);
    r.connect(driver, 1, false);
    r.tick(2_500); // the rider never shows up; the barrier times out
    assert!(r.committed(loc));
    assert_eq!(r.dc(1).session(s).unwrap().1.location_updates, 1);
}

#[test]
fn s2_failback_to_a_stale_primary_never_rolls_back() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The primary's disk as it was at the kill.
    let stale = r.dc(0).session(s).unwrap().0.clone();
    let keyring = r.keyring.clone();
    let stale_digest = r.edges[&driver].held(s).unwrap().digest.clone();
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    for _ in 0..3 {
        r.submit(driver, s, TripOp::Location { at: Q });
    }
    let newer = r.dc(1).session(s).unwrap().0.version.clone();
    // The primary comes back with its old disk; devices fail back to it.
    let mut primary = r.dc_with_disk(0, 1);
    primary.load_persisted(r.now, stale_digest).unwrap();
    assert_eq!(primary.session(s).unwrap().0.version, stale.version);
    r.dcs[0] = Some(primary);
    let _ = keyring;
    r.kill(1);
    r.connect(rider, 0, false);
    r.connect(driver, 0, false);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert_eq!(h.version.compare(&newer), VersionOrder::Equal);
    assert_eq!(st.location_updates, 3);
}

#[test]
fn s10_finished_trip_is_never_revived_by_an_older_digest() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let live = r.edges[&rider].held(s).unwrap().digest.clone();
    r.submit(driver, s, TripOp::Complete);
    r.kill(0);
    r.connect(driver, 1, false); // restores the tombstone
    assert!(r.dc(1).session(s).unwrap().0.tombstone);
    // The rider's phone somehow still has the live copy (a restored backup of the app).
    let dc = r.dcs[1].as_mut().unwrap();
    dc.handle_connect(r.now, rider, false, vec![claimed(live)]);
    let welcome = welcome_results(dc);
    assert_eq!(welcome[0].outcome, UploadOutcome::Tombstoned);
    assert!(r.dc(1).session(s).unwrap().0.tombstone);
}

#[test]
fn s12_both_datacenters_lost_everything_comes_back_from_the_edges() {
    let mut r = Region::new(2, Durability::Async);
    let mut sessions = Vec::new();
    for i in 0..5 {
        let (rider, driver) = (r.add_device(10 + i), r.add_device(100 + i));
        sessions.push((r.trip_on_the_road(rider, driver, 0), rider, driver));
    }
    let truth: Vec<_> = sessions
        .iter()
        .map(|(s, _, _)| r.dc(0).session(*s).unwrap().1.clone())
        .collect();
    r.kill(0);
    r.kill(1);
    let (a, b) = (r.new_dc(0), r.new_dc(1));
    r.dcs[0] = Some(a);
    r.dcs[1] = Some(b);
    for (_, rider, driver) in &sessions {
        r.connect(*rider, 1, false);
        r.connect(*driver, 1, false);
    }
    for ((s, _, _), want) in sessions.iter().zip(truth) {
        assert_eq!(r.dc(1).session(*s).unwrap().1, &want);
    }
}

#[test]
fn s6_reinstalled_device_is_resynced_from_its_partner() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.kill(0);
    r.add_device(2); // the driver's app was reinstalled: empty store
    r.connect(rider, 1, false);
    r.connect(driver, 1, false);
    let held = r.edges[&driver].held(s).expect("driver re-synced");
    assert_eq!(
        held.last_seq, 2,
        "the driver learns which seqs it already used"
    );
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    assert_eq!(r.phase(1, s), Some(TripPhase::Completed));
}

#[test]
fn forged_digest_of_another_session_is_refused() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver, mallory) = (r.add_device(1), r.add_device(2), r.add_device(3));
    let s = r.trip_on_the_road(rider, driver, 0);
    let stolen = r.edges[&rider].held(s).unwrap().digest.clone();
    let mut tampered = stolen.clone();
    tampered.header.rider = mallory;
    let dc = r.dcs[0].as_mut().unwrap();
    dc.handle_connect(
        r.now,
        mallory,
        false,
        vec![claimed(stolen), claimed(tampered)],
    );
    let results = welcome_results(dc);
    assert!(results
        .iter()
        .all(|x| matches!(x.outcome, UploadOutcome::Refused(_))));
    assert_eq!(r.dc(0).stats().uploads_refused, 2);
}

#[test]
fn edge_ack_reports_dispatch_committed_only_after_the_quorum_persisted_it() {
    let mut r = Region::new(1, Durability::EdgeAck(2));
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    r.connect(driver, 0, true);
    r.connect(rider, 0, false);
    let s = SessionId(77);
    r.submit(
        rider,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    assert_eq!(r.dc(0).stats().dispatched, 1);
    // The rider persisted the hand-over (it held the chain until then) and the driver, once
    // told, persisted it too: the datacenter counts the dispatch committed once, after both.
    assert_eq!(r.dc(0).stats().server_changes_committed, 1);
    for d in [rider, driver] {
        let held = r.edges[&d].held(s).expect("held");
        assert_eq!(held.digest.header.driver, Some(driver));
        assert!(held.committed, "{d} holds the assignment as committed");
    }
    // The driver holds the chain now: its op commits on its own persistence.
    let arrived = r.submit(driver, s, TripOp::Arrived);
    assert!(r.committed(arrived));
}

/// Before the rider persisted the hand-over, nothing the driver does commits: the rider's
/// store still fences the session (it could still persist another branch). Once it
/// persists the assignment, the driver's waiting op is reported.
#[test]
fn a_drivers_op_waits_for_the_rider_to_persist_the_hand_over() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    r.connect(driver, 0, true);
    r.connect(rider, 0, false);
    let s = SessionId(78);
    // The rider's link drops after its request: the dispatch push never reaches it.
    r.submit_without_answer(
        rider,
        0,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.kill_link(rider);
    r.pump();
    assert_eq!(r.phase(0, s), Some(TripPhase::Assigned));
    let arrived = r.submit(driver, s, TripOp::Arrived);
    assert!(
        !r.committed(arrived),
        "the hand-over is not persisted by the rider yet"
    );
    assert!(r
        .events
        .iter()
        .any(|(d, e)| *d == driver
            && matches!(e, EdgeEvent::Waiting { session, .. } if *session == s)));
    // The rider comes back; its request is answered and the assignment pushed; it persists
    // both, and the driver's op is reported.
    r.connect(rider, 0, false);
    assert!(
        r.committed(arrived),
        "reported once the rider persisted the hand-over"
    );
    assert!(r.edges[&rider].held(s).expect("held").committed);
}

/// Random traffic, random primary kills and failovers: every op a device was told is
/// committed is present exactly once at the surviving datacenter.
#[test]
fn random_failovers_lose_nothing_and_apply_nothing_twice() {
    let base: u64 = std::env::var("LIFEBOAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FFEE);
    for seed in base..base + 40 {
        run_random(seed);
    }
}

fn run_random(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut r = Region::new(2, Durability::Async);
    let mut live = 0usize;
    let pairs: Vec<(DeviceId, DeviceId)> = (0..4)
        .map(|i| (r.add_device(10 + i), r.add_device(100 + i)))
        .collect();
    let mut sessions = Vec::new();
    for (rider, driver) in &pairs {
        sessions.push(r.trip_on_the_road(*rider, *driver, live));
    }
    let mut expected_locations: HashMap<SessionId, u32> = HashMap::new();
    let mut pending: Vec<(SessionId, OpId)> = Vec::new();
    for step in 0..60 {
        let i = rng.random_range(0..pairs.len());
        let (rider, driver) = pairs[i];
        let s = sessions[i];
        if rng.random_bool(0.3) {
            let seq = r.edges[&driver].held(s).map(|h| h.next_seq).unwrap_or(1);
            r.drop_replies_to.push((driver, s, seq));
        }
        let id = r.submit(driver, s, TripOp::Location { at: Q });
        pending.push((s, id));
        if rng.random_bool(0.08) {
            // Fail over: the live datacenter dies with its disk; the other starts empty.
            r.kill(live);
            live = 1 - live;
            let fresh = r.new_dc(live as u16);
            r.dcs[live] = Some(fresh);
            let mut order: Vec<DeviceId> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
            for k in (1..order.len()).rev() {
                order.swap(k, rng.random_range(0..=k));
            }
            for d in order {
                r.connect(d, live, false);
            }
            r.tick(2_500);
        }
        // A device that lost a reply learns the outcome on its next reconnect.
        if step % 10 == 9 {
            for (rider2, driver2) in &pairs {
                r.kill_link(*rider2);
                r.kill_link(*driver2);
                r.connect(*rider2, live, false);
                r.connect(*driver2, live, false);
            }
        }
        let _ = rider;
    }
    // The network heals: final reconnect of everyone, nothing lost in transit.
    r.drop_replies_to.clear();
    for (rider, driver) in &pairs {
        r.kill_link(*rider);
        r.kill_link(*driver);
        r.connect(*rider, live, false);
        r.connect(*driver, live, false);
    }
    let unresolved: Vec<_> = pending.iter().filter(|(_, id)| !r.committed(*id)).collect();
    assert!(
        unresolved.is_empty(),
        "seed {seed}: ops never committed: {unresolved:?}; results: {:?}; errors: {:?}",
        unresolved
            .iter()
            .map(|(_, id)| r.commits.iter().find(|(i, _)| i == id))
            .collect::<Vec<_>>(),
        r.commits
            .iter()
            .filter(|(_, c)| c.is_err())
            .collect::<Vec<_>>()
    );
    for (s, id) in &pending {
        if r.committed(*id) {
            *expected_locations.entry(*s).or_default() += 1;
        }
    }
    for s in &sessions {
        let got = r.dc(live).session(*s).map(|(_, st)| st.location_updates);
        let want = expected_locations.get(s).copied().unwrap_or(0);
        assert_eq!(
            got,
            Some(want),
            "seed {seed}: session {s}: committed {want} location ops, datacenter applied {got:?} \
             (replay with LIFEBOAT_SEED={seed})"
        );
    }
    assert!(
        pending.iter().all(|(_, id)| r.committed(*id)),
        "seed {seed}: every op eventually commits"
    );
}

/// The upload results of the `Welcome` a datacenter just produced.
fn welcome_results(dc: &mut DatacenterCore<Trip>) -> Vec<lifeboat_common::wire::UploadResult> {
    dc.poll_effects()
        .send
        .into_iter()
        .find_map(|(_, m)| match m {
            ServerMsg::Welcome { results, .. } => Some(results),
            _ => None,
        })
        .expect("the datacenter answered Welcome")
}

impl Region {
    /// Queue an op on `d` and hand it to datacenter `dc` directly, pumping nothing: what the
    /// datacenter answers and pushes stays in its effects (a caller that cuts the link next
    /// makes them lost to `d`).
    fn submit_without_answer(&mut self, d: DeviceId, dc: usize, s: SessionId, op: TripOp) -> OpId {
        let id = self
            .edges
            .get_mut(&d)
            .expect("device")
            .submit(s, op)
            .expect("queued");
        let fx = self.edges.get_mut(&d).expect("device").poll_effects();
        let now = self.now;
        for m in fx.send {
            if let ClientMsg::Submit { session, seq, op } = m {
                self.dcs[dc]
                    .as_mut()
                    .expect("up")
                    .handle_submit(now, d, session, seq, op);
            }
        }
        id
    }

    /// The device's link drops; the datacenter does not notice (no disconnect reaches it).
    fn cut_silently(&mut self, d: DeviceId) {
        self.link.remove(&d);
        if let Some(e) = self.edges.get_mut(&d) {
            e.on_disconnect();
        }
    }

    /// The rider requests trip `s` (P to Q) where it is connected.
    fn request(&mut self, rider: DeviceId, s: SessionId) -> OpId {
        self.submit(
            rider,
            s,
            TripOp::Request {
                pickup: P,
                dropoff: Q,
            },
        )
    }

    fn kill_link(&mut self, d: DeviceId) {
        if let Some(l) = self.link.remove(&d) {
            if let Some(dc) = self.dcs[l].as_mut() {
                dc.handle_disconnect(d);
            }
        }
        if let Some(e) = self.edges.get_mut(&d) {
            e.on_disconnect();
        }
    }
}

/// Replaces the old restore-grace rule (a restored copy needing a driver waited before it
/// was dispatched, in case a driver assigned at the old datacenter came back). With the
/// chain rule the backup dispatches at once: only the assignment the rider persists
/// commits. A driver assigned at the dead primary, whose assignment the rider never
/// persisted, is told it was removed when it shows up, and nothing it did was committed.
#[test]
fn a_driver_assigned_at_a_dead_primary_the_rider_never_persisted_is_removed_when_it_returns() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, d1, d2) = (r.add_device(1), r.add_device(2), r.add_device(3));
    r.connect(rider, 0, false);
    let s = SessionId(6);
    let req = r.request(rider, s);
    assert!(r.committed(req));
    // The rider's link drops (the primary does not notice yet); d1 is dispatched there, but
    // the rider never gets, let alone persists, the assignment.
    r.cut_silently(rider);
    r.connect(d1, 0, true);
    assert_eq!(r.phase(0, s), Some(TripPhase::Assigned));
    let arrived = r.submit(d1, s, TripOp::Arrived);
    assert!(
        !r.committed(arrived),
        "the hand-over to d1 was never persisted"
    );
    r.kill(0);
    r.connect(d2, 1, true);
    r.connect(rider, 1, false);
    assert_eq!(
        r.dc(1).session(s).unwrap().0.driver,
        Some(d2),
        "dispatched at once: no grace wait"
    );
    assert_eq!(
        r.edges[&rider].held(s).unwrap().digest.header.driver,
        Some(d2)
    );
    // d1 comes back with its copy: not committed, and the committed one names d2.
    r.connect(d1, 1, false);
    assert!(r.edges[&d1].held(s).is_none(), "d1 dropped the trip");
    assert!(r
        .events
        .iter()
        .any(|(d, e)| *d == d1 && matches!(e, EdgeEvent::Removed { session } if *session == s)));
    assert!(matches!(
        r.commits.iter().find(|(i, _)| *i == arrived),
        Some((_, Err(SubmitError::Removed)))
    ));
    let go = r.submit(d2, s, TripOp::Arrived);
    assert!(r.committed(go));
}

/// Review finding: an equal version with different contents is divergence, not "current".
#[test]
fn equal_version_with_different_contents_is_detected_as_divergence() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let held = r.edges[&driver].held(s).unwrap().digest.clone();
    // Same header, same version, different body: what a reused version slot would produce.
    let mut body: lifeboat_common::digest::DigestBody<lifeboat_common::TripState> =
        held.open(&r.keyring).unwrap();
    body.state.location_updates += 7;
    let forged =
        lifeboat_common::digest::SealedDigest::seal(&r.keyring, held.header.clone(), &body, r.now)
            .unwrap();
    let now = r.now;
    let dc = r.dcs[0].as_mut().unwrap();
    let offered = OfferedCopy {
        digest: forged.clone(),
        committed: false,
        known_committed: Default::default(),
        known_committed_driver: None,
    };
    dc.handle_connect(now, driver, false, vec![offered]);
    let results = welcome_results(dc);
    assert_eq!(results[0].outcome, UploadOutcome::Diverged);
    // Offered as committed, it is a branch like any concurrent one: it wins, with a version
    // above the label both carry, so nobody mistakes one for the other.
    dc.handle_connect(now, driver, false, vec![claimed(forged)]);
    let results = welcome_results(dc);
    assert_eq!(results[0].outcome, UploadOutcome::Restored);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert_eq!(h.version.compare(&held.header.version), VersionOrder::Newer);
    assert_eq!(st.location_updates, body.state.location_updates);
}

/// Replaces the old parked-ops rule. The rider reaches the backup first with an older live
/// copy and cancels: applied there, but it waits (the driver, the anchor, is not there to
/// persist it), and the app is told why. The driver arrives with its committed tombstone:
/// the backup drops its branch for it, and the cancel is answered from the committed copy
/// (the session is finished), exactly once.
#[test]
fn a_rider_op_on_a_restored_copy_waits_and_is_answered_when_the_anchor_brings_the_tombstone() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The rider is offline while the driver completes.
    r.kill_link(rider);
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    r.kill(0);
    r.connect(rider, 1, false);
    let cancel = r
        .edges
        .get_mut(&rider)
        .unwrap()
        .submit(s, TripOp::Cancel)
        .unwrap();
    r.pump();
    assert!(
        r.commits.iter().all(|(i, _)| *i != cancel),
        "waits for the anchor"
    );
    assert!(r
        .events
        .iter()
        .any(|(d, e)| *d == rider
            && matches!(e, EdgeEvent::Waiting { session, .. } if *session == s)));
    r.connect(driver, 1, false);
    let answers: Vec<_> = r.commits.iter().filter(|(i, _)| *i == cancel).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        matches!(answers[0].1, Err(SubmitError::SessionFinished)),
        "{answers:?}"
    );
    assert!(r.dc(1).session(s).unwrap().0.tombstone);
    let held = r.edges[&rider].held(s).unwrap();
    assert!(held.digest.header.tombstone && held.committed);
    assert_eq!(
        r.dc(1).session(s).unwrap().1.phase,
        TripPhase::Completed,
        "the committed completion stands"
    );
}

/// Review finding: toggling availability must not grow the dispatch pool without bound.
#[test]
fn toggling_availability_keeps_the_dispatch_pool_bounded() {
    let mut r = Region::new(1, Durability::Async);
    let d = r.add_device(2);
    r.connect(d, 0, true);
    let now = r.now;
    let dc = r.dcs[0].as_mut().unwrap();
    for _ in 0..10_000 {
        dc.handle_set_available(now, d, false);
        dc.handle_set_available(now, d, true);
    }
    assert!(
        dc.dispatch_pool_len() < 200,
        "pool grew to {}",
        dc.dispatch_pool_len()
    );
}

/// Harness finding (reinstall scenario): the reinstalled device reaches the backup before its
/// partner; it must still get the trip once the partner's upload restores it.
#[test]
fn s6_reinstalled_device_that_arrives_first_is_resynced_when_its_partner_restores() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.kill(0);
    r.add_device(1); // the rider reinstalled the app: empty store
    r.connect(rider, 1, false);
    assert!(
        r.edges[&rider].held(s).is_none(),
        "nothing to restore from the rider"
    );
    r.connect(driver, 1, false);
    let held = r.edges[&rider]
        .held(s)
        .expect("rider re-synced when the driver restored it");
    assert_eq!(held.view.phase, TripPhase::OnTrip);
}

/// Harness finding (flapping): a datacenter back on its old disk must not start the grace
/// period at load time; devices may need longer than the grace to notice they should come.
#[test]
fn s9_restarted_datacenter_waits_for_partners_even_if_they_arrive_late() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let stale = r.edges[&driver].held(s).unwrap().digest.clone();
    // dc1 dies (disk kept); traffic moves on at dc2: the rider's copy gets newer.
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    r.submit(driver, s, TripOp::Location { at: Q });
    // dc1 comes back on its stale disk, long before anyone notices dc2 dying.
    let mut dc1 = r.dc_with_disk(0, 1);
    dc1.load_persisted(r.now, stale).unwrap();
    r.dcs[0] = Some(dc1);
    r.tick(10_000);
    r.kill(1);
    // The driver (with the newest copy) is the one that lags: the rider arrives first.
    let newest_driver_copy = r.edges[&driver]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    r.kill_link(driver);
    r.connect(rider, 0, false);
    r.tick(1_000);
    r.connect(driver, 0, false);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(h.version.covers(&newest_driver_copy));
    assert_eq!(st.location_updates, 1);
}

/// Flapping (S9) found this: the primary applies an op and dies before the reply leaves; the
/// retry is applied at the backup; the primary returns on its old disk. Its copy and the
/// device's are concurrent, but each has processed the same ops, so they are reconciled into
/// a copy above both instead of being reported as a conflict: the op counts once, and the
/// version the device was told is covered.
#[test]
fn s9_primary_back_with_an_unacknowledged_branch_is_reconciled_not_conflicted() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The rider is offline; the driver's reply is lost: nobody holds what dc1 applies.
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    r.drop_replies_to.push((driver, s, 3));
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(!r.committed(loc));
    let primary_disk = r.dc(0).sealed(s).expect("dc1 holds it").clone();
    r.kill(0);
    // The driver retries at the backup: applied there (its own branch).
    r.connect(driver, 1, false);
    r.tick(3_000); // the rider never comes: the barrier's grace runs out
    assert!(r.committed(loc), "the retry commits at the backup");
    let told = r
        .commits
        .iter()
        .find(|(i, _)| *i == loc)
        .and_then(|(_, c)| c.as_ref().ok())
        .map(|c| c.version.clone())
        .unwrap();
    // dc1 comes back on its disk; dc2 dies; both devices go to dc1.
    let mut primary = r.dc_with_disk(0, 1);
    primary.load_persisted(r.now, primary_disk).unwrap();
    r.dcs[0] = Some(primary);
    r.kill(1);
    r.connect(driver, 0, false);
    r.connect(rider, 0, false);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(
        h.version.covers(&told),
        "the committed version is covered: {} vs {told}",
        h.version
    );
    assert_eq!(st.location_updates, 1, "the op counts once");
    assert_eq!(r.dc(0).stats().chain_adopted, 1);
    assert_eq!(r.dc(0).stats().uploads_diverged, 0);
    assert!(
        !r.events
            .iter()
            .any(|(_, e)| matches!(e, EdgeEvent::Conflict { .. })),
        "no conflict surfaced for a reconcilable copy"
    );
    // Both devices hold the reconciled copy and the trip goes on.
    for d in [rider, driver] {
        assert_eq!(
            r.edges[&d].held(s).unwrap().digest.header.version,
            h.version
        );
    }
    r.tick(3_000);
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
}

/// S13: the partners continued at two datacenters at once. Only the anchor's side commits:
/// the rider's op at the other site waits and is never reported there; when the rider comes
/// back its branch gives way and the op is sent again, answered once, on the chain.
#[test]
fn s13_split_with_ops_on_both_sides_commits_only_on_the_anchors_side() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let shared = r.dc(0).sealed(s).unwrap().clone();
    // Split: dc1 keeps the driver; the rider reaches dc2 and both copies move on.
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    let mut other = r.dc_with_disk(1, 9);
    other.load_persisted(r.now, shared).unwrap();
    r.dcs[1] = Some(other);
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(r.committed(loc));
    r.connect(rider, 1, false);
    r.tick(3_000);
    // Rejected by the trip (it is on), but recorded: a rider-side op on dc2's branch.
    let cancel = r.submit(rider, s, TripOp::Cancel);
    assert!(
        r.commits.iter().all(|(i, _)| *i != cancel),
        "waits for the anchor"
    );
    // The rider comes back to dc1 with its branch.
    r.kill(1);
    r.connect(rider, 0, false);
    assert_eq!(r.dc(0).stats().uploads_diverged, 1);
    assert_eq!(r.dc(0).stats().branches_absorbed, 1);
    let answers: Vec<_> = r.commits.iter().filter(|(i, _)| *i == cancel).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(matches!(answers[0].1, Err(SubmitError::Rejected(_))));
    let st = r.dc(0).session(s).unwrap().1;
    assert_eq!(st.location_updates, 1, "the driver's committed op stands");
    assert_eq!(st.phase, TripPhase::OnTrip);
}

/// Flapping (S9): the request reached dc1, which created the trip and dispatched a driver,
/// but the reply never reached the rider, so it never persisted anything. It resubmits at
/// dc2, which creates the trip and dispatches another driver at once (no grace wait); the
/// rider persists that assignment. The first driver's assignment was never persisted by the
/// rider, so nothing it did commits, and when it arrives it is told it was removed.
#[test]
fn s3_resubmitted_request_dispatches_at_the_backup_and_the_unconfirmed_first_driver_is_removed() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver, other) = (r.add_device(1), r.add_device(2), r.add_device(3));
    let s = SessionId(42);
    r.connect(rider, 0, false);
    r.drop_replies_to.push((rider, s, 1));
    let req = r.submit(
        rider,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    assert!(!r.committed(req));
    // The rider loses its connection; then dc1 dispatches the driver, who holds the copy.
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    r.connect(driver, 0, true);
    assert_eq!(r.phase(0, s), Some(TripPhase::Assigned));
    let arrived = r.submit(driver, s, TripOp::Arrived);
    assert!(!r.committed(arrived));
    r.kill(0);
    r.connect(other, 1, true);
    r.connect(rider, 1, false);
    assert!(r.committed(req), "the request commits at dc2");
    assert_eq!(r.dc(1).session(s).unwrap().0.driver, Some(other));
    r.connect(driver, 1, false);
    assert!(r.edges[&driver].held(s).is_none());
    assert!(matches!(
        r.commits.iter().find(|(i, _)| *i == arrived),
        Some((_, Err(SubmitError::Removed)))
    ));
    let go = r.submit(other, s, TripOp::Arrived);
    assert!(r.committed(go));
    assert_eq!(r.dc(1).session(s).unwrap().0.driver, Some(other));
}

/// Mobile store bound: a phone keeps only its `max_tombstones` most recently finished trips.
/// The dropped ones stay finished: the datacenter keeps its own tombstone and still refuses
/// an older live digest of them (C3, S10).
#[test]
fn s10_device_drops_its_oldest_tombstones_and_the_datacenter_still_refuses_old_live_digests() {
    let mut r = Region::new(1, Durability::Async);
    let rider = DeviceId(1);
    let limits = EdgeLimits {
        max_tombstones: 2,
        ..EdgeLimits::default()
    };
    r.edges.insert(rider, EdgeCore::new(rider, limits));
    r.connect(rider, 0, false);
    let mut trips = Vec::new();
    let mut live = Vec::new();
    for k in 0..4u64 {
        let fresh = r.add_device(10 + k);
        r.connect(fresh, 0, true);
        let s = SessionId(500 + k);
        r.submit(
            rider,
            s,
            TripOp::Request {
                pickup: P,
                dropoff: Q,
            },
        );
        assert_eq!(r.phase(0, s), Some(TripPhase::Assigned), "trip {k}");
        // Dispatch may pick any available driver (an earlier one is free again).
        let driver = r
            .dc(0)
            .session(s)
            .expect("held")
            .0
            .driver
            .expect("assigned");
        live.push(
            r.edges[&rider]
                .held(s)
                .expect("rider holds it")
                .digest
                .clone(),
        );
        r.submit(driver, s, TripOp::Arrived);
        r.submit(driver, s, TripOp::StartTrip);
        let done = r.submit(driver, s, TripOp::Complete);
        assert!(r.committed(done), "trip {k} completed");
        assert!(
            r.edges[&rider]
                .held(s)
                .expect("held")
                .digest
                .header
                .tombstone
        );
        trips.push(s);
    }
    let kept: Vec<SessionId> = r.edges[&rider].tombstones().collect();
    assert_eq!(
        kept,
        trips[2..].to_vec(),
        "the two most recent tombstones are kept"
    );
    for s in &trips[..2] {
        assert!(
            r.edges[&rider].held(*s).is_none(),
            "{s} dropped from the phone"
        );
    }
    // The phone (or a restored backup of the app) uploads the oldest trip's live copy.
    r.kill_link(rider);
    let now = r.now;
    let dc = r.dcs[0].as_mut().expect("up");
    dc.handle_connect(now, rider, false, vec![claimed(live[0].clone())]);
    let welcome = welcome_results(dc);
    assert_eq!(welcome[0].outcome, UploadOutcome::Tombstoned);
    assert!(r.dc(0).session(trips[0]).expect("kept").0.tombstone);
}

/// The real-process chaos suite found this (a frozen primary, `tests/tests/chaos_process.rs`):
/// the driver moved back to the thawed primary while its op was in flight at the backup. The
/// backup applied it and pushed it to the rider, still there; the driver resubmitted it at
/// the primary, which applied it too, and the trip finished at the primary before the rider
/// came back. The rider's live branch and the primary's tombstone were then concurrent: the
/// primary answered `Tombstoned` and the rider was handed a tombstone that did not cover its
/// copy (its version went backwards, C3) and told of a conflict, though nothing was lost.
/// The tombstone has processed every op of the branch, so it is reconciled like any other
/// copy: kept, with a version above both.
#[test]
fn s9_driver_moved_home_with_an_op_in_flight_and_finished_there_before_its_partner_returned() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let frozen = r.dc(0).sealed(s).expect("dc1 holds it").clone();
    // dc1 freezes: both fail over to dc2 and go on there.
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    r.submit(driver, s, TripOp::Location { at: Q });
    // dc1 thaws with its old copy in memory.
    let mut thawed = r.dc_with_disk(0, 1);
    thawed.load_persisted(r.now, frozen).unwrap();
    r.dcs[0] = Some(thawed);
    // The driver's next op is applied at dc2 (the rider sees it), but the driver moves home
    // before the reply arrives, and resubmits it there.
    let seq = r.edges[&driver].held(s).unwrap().next_seq;
    r.drop_replies_to.push((driver, s, seq));
    let x = r.submit(driver, s, TripOp::Location { at: P });
    assert!(!r.committed(x));
    r.link.remove(&driver);
    r.edges.get_mut(&driver).unwrap().on_disconnect();
    r.connect(driver, 0, false);
    assert!(r.committed(x), "the resubmitted op commits at dc1 at once");
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    // The rider moves home with its live branch.
    let branch = r.edges[&rider]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    r.connect(rider, 0, false);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(h.tombstone, "the trip stays finished");
    assert!(
        h.version.covers(&branch),
        "{} vs the branch {branch}",
        h.version
    );
    assert_eq!(st.location_updates, 2, "the op counts once");
    let held = r.edges[&rider].held(s).unwrap().digest.header.clone();
    assert!(held.tombstone);
    assert!(
        held.version.covers(&branch),
        "the rider went from {branch} to {}",
        held.version
    );
    assert!(
        !r.events
            .iter()
            .any(|(_, e)| matches!(e, EdgeEvent::Conflict { .. })),
        "no conflict surfaced: the rider's uncommitted branch simply gives way"
    );
    assert_eq!(r.dc(0).stats().branches_absorbed, 1);
}

/// Found by the real-process chaos suite (a frozen primary, long trips): as above, the
/// driver moved home with an op in flight at the backup, which applied it and pushed it to
/// the rider. This time the trip is long (more than 64 driver ops) and still running when
/// the rider returns with its branch, after the primary applied dozens more ops. The
/// primary's copy has processed every op of the branch (the one op only the branch had was
/// applied at the primary too), but the check compared the branch's whole dedup window,
/// most of it history both copies share and the primary no longer remembers: the copies
/// were declared in conflict, the rider told so and handed a copy that did not cover its
/// own. Only the ops the branch has and the primary may lack (at most as many as the
/// changes of the branch the primary does not know of) need comparing.
#[test]
fn s9_long_trip_branch_with_one_op_applied_on_both_sides_is_reconciled_after_many_more_ops() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    for _ in 0..70 {
        r.submit(driver, s, TripOp::Location { at: Q });
    }
    let frozen = r.dc(0).sealed(s).expect("dc1 holds it").clone();
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    r.submit(driver, s, TripOp::Location { at: P });
    let mut thawed = r.dc_with_disk(0, 1);
    thawed.load_persisted(r.now, frozen).unwrap();
    r.dcs[0] = Some(thawed);
    let seq = r.edges[&driver].held(s).unwrap().next_seq;
    r.drop_replies_to.push((driver, s, seq));
    let x = r.submit(driver, s, TripOp::Location { at: P });
    assert!(!r.committed(x));
    r.link.remove(&driver);
    r.edges.get_mut(&driver).unwrap().on_disconnect();
    r.connect(driver, 0, false);
    r.tick(3_000);
    assert!(r.committed(x), "the resubmitted op commits at dc1");
    for _ in 0..40 {
        r.submit(driver, s, TripOp::Location { at: Q });
    }
    let branch = r.edges[&rider]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    r.connect(rider, 0, false);
    assert!(
        !r.events
            .iter()
            .any(|(_, e)| matches!(e, EdgeEvent::Conflict { .. })),
        "no conflict surfaced: the rider's uncommitted branch simply gives way"
    );
    assert_eq!(r.dc(0).stats().branches_absorbed, 1);
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(
        h.version.covers(&branch),
        "{} vs the branch {branch}",
        h.version
    );
    assert_eq!(st.location_updates, 70 + 1 + 1 + 40, "each op counts once");
    let held = r.edges[&rider]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    assert!(
        held.covers(&branch),
        "the rider went from {branch} to {held}"
    );
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
}

/// S2 with S3 on a long trip, found by the real-process chaos suite (a thawed primary that
/// still had an op in its socket): the primary applied the driver's op and died before the
/// reply left (its disk kept). The driver retried at the backup and went on for more than
/// 64 ops there. The primary came back on its disk, the backup died, and the devices failed
/// back. The primary's copy has one change the driver's copy lacks: the same op, which the
/// driver's copy processed too but whose outcome it no longer remembers. The copies were
/// declared in conflict, the primary kept its stale copy and handed it to the driver, which
/// then refused every new op (too many in flight): the trip was stuck, its committed ops
/// gone from every live copy. The driver went on for 64 ops past that op without the
/// primary's change, so it was never told the primary's outcome of it: the driver's copy
/// is kept (reconciled above both).
#[test]
fn s2_failback_to_a_primary_holding_an_unreplied_op_after_a_long_trip_at_the_backup() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // Nobody gets what dc1 applies next: the rider is away, the driver's reply is lost.
    r.link.remove(&rider);
    r.edges.get_mut(&rider).unwrap().on_disconnect();
    let seq = r.edges[&driver].held(s).unwrap().next_seq;
    r.drop_replies_to.push((driver, s, seq));
    let x = r.submit(driver, s, TripOp::Location { at: P });
    assert!(!r.committed(x));
    let primary_disk = r.dc(0).sealed(s).expect("dc1 holds it").clone();
    r.kill(0);
    r.connect(driver, 1, false);
    r.connect(rider, 1, false);
    assert!(r.committed(x), "the retry commits at the backup");
    for _ in 0..80 {
        r.submit(driver, s, TripOp::Location { at: Q });
    }
    let committed = r.edges[&driver]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    let mut primary = r.dc_with_disk(0, 1);
    primary.load_persisted(r.now, primary_disk).unwrap();
    r.dcs[0] = Some(primary);
    r.kill(1);
    r.connect(driver, 0, false);
    r.connect(rider, 0, false);
    assert!(
        !r.events
            .iter()
            .any(|(_, e)| matches!(e, EdgeEvent::Conflict { .. })),
        "no conflict surfaced for a reconcilable copy"
    );
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(
        h.version.covers(&committed),
        "{} vs committed {committed}",
        h.version
    );
    assert_eq!(st.location_updates, 81, "each op counts once");
    r.tick(3_000);
    let next = r.submit(driver, s, TripOp::Location { at: P });
    assert!(r.committed(next), "the trip goes on");
}

/// Replaces the old parked-ops rule (dsim seeds 125 and 127 found that a parked op applied
/// after its device had left made a second outcome). Without a grace there is nothing
/// parked: the anchor's op is applied and committed at the backup at once; when the anchor
/// moves home, home adopts its copy, and the op counts once, answered once.
#[test]
fn an_anchor_that_fails_over_to_a_live_backup_commits_there_and_home_adopts_its_copy() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.kill_link(driver);
    r.connect(driver, 1, false);
    let loc = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(r.committed(loc), "the anchor commits at the backup at once");
    r.kill_link(driver);
    r.connect(driver, 0, false);
    let (header, state) = r.dc(0).session(s).expect("home holds it");
    assert_eq!(state.location_updates, 1);
    assert_eq!(
        &header.version,
        &r.edges[&driver].held(s).unwrap().digest.header.version,
        "home adopted the anchor's copy"
    );
    assert_eq!(r.commits.iter().filter(|(i, _)| *i == loc).count(), 1);
    // The rider, still at home, got the copy too, and the trip goes on.
    assert_eq!(
        r.edges[&rider].held(s).unwrap().digest.header.version,
        header.version
    );
    let next = r.submit(driver, s, TripOp::Location { at: P });
    assert!(r.committed(next));
}

/// S13, and what dsim seed 125 found before the chain rule: both partners on two sites, the
/// rider cancelling at one while the driver goes on at the other. Now the rider's cancel
/// cannot commit where the driver (the anchor) is not: it waits, and the rider is told why;
/// the driver's op commits on its side. When they meet, the rider's uncommitted branch gives
/// way (moving forward, never sideways), its cancel is sent again and applied once, on the
/// chain, and both end with the same committed tombstone.
#[test]
fn s13_a_riders_cancel_on_a_split_waits_for_the_anchor_and_commits_once_when_they_meet() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = SessionId(1_002);
    r.connect(driver, 0, true);
    r.connect(rider, 0, false);
    r.submit(
        rider,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    assert_eq!(r.phase(0, s), Some(TripPhase::Assigned));
    let shared = r.dc(0).sealed(s).expect("held").clone();
    // Split: the driver stays with dc1 and arrives; the rider reaches dc2 (which loaded the
    // same copy from its own disk) and cancels there.
    r.kill_link(rider);
    let mut other = r.dc_with_disk(1, 9);
    other.load_persisted(r.now, shared).expect("load");
    r.dcs[1] = Some(other);
    let arrived = r.submit(driver, s, TripOp::Arrived);
    assert!(r.committed(arrived));
    r.connect(rider, 1, false);
    r.tick(30_000);
    let cancel = r.submit(rider, s, TripOp::Cancel);
    assert!(!r.committed(cancel), "no commit without the anchor");
    assert!(r
        .events
        .iter()
        .any(|(d, e)| *d == rider
            && matches!(e, EdgeEvent::Waiting { session, .. } if *session == s)));
    let branch = r.edges[&rider]
        .held(s)
        .unwrap()
        .digest
        .header
        .version
        .clone();
    // The rider comes back to dc1.
    r.kill(1);
    r.connect(rider, 0, false);
    let answers: Vec<_> = r.commits.iter().filter(|(i, _)| *i == cancel).collect();
    assert_eq!(answers.len(), 1, "answered once: {answers:?}");
    assert!(answers[0].1.is_ok(), "{answers:?}");
    let (h, st) = r.dc(0).session(s).unwrap();
    assert!(h.tombstone);
    assert_eq!(st.phase, TripPhase::Cancelled);
    assert_eq!(st.cancelled_by, Some(lifeboat_common::Role::Rider));
    for d in [rider, driver] {
        let held = r.edges[&d].held(s).unwrap();
        assert_eq!(held.digest.header.version, h.version, "{d}");
        assert!(held.committed, "{d}");
    }
    assert!(
        h.version.covers(&branch),
        "the rider moved forward from its branch {branch} to {}",
        h.version
    );
}

/// A device never gives up a committed tombstone for a live copy (C3), whatever the
/// datacenter sends.
#[test]
fn a_device_keeps_its_committed_tombstone_when_pushed_a_live_copy() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let live = r.dc(0).sealed(s).unwrap().clone();
    let view = r.dc(0).session(s).unwrap().1.clone();
    let done = r.submit(driver, s, TripOp::Complete);
    assert!(r.committed(done));
    let tomb = r.edges[&driver].held(s).unwrap().clone();
    assert!(tomb.digest.header.tombstone && tomb.committed);
    // A live copy with a concurrent version (a forged label), marked committed.
    let mut header = live.header.clone();
    header.version = lifeboat_common::VersionVector::new();
    header
        .version
        .bump(lifeboat_common::ids::ReplicaId(77))
        .unwrap();
    let body: lifeboat_common::digest::DigestBody<lifeboat_common::TripState> =
        live.open(&r.keyring).unwrap();
    let forged = SealedDigest::seal(&r.keyring, header, &body, r.now).unwrap();
    let edge = r.edges.get_mut(&driver).unwrap();
    edge.on_push(lifeboat_common::wire::SessionUpdate {
        digest: forged,
        view,
        your_last_seq: 99,
        your_applied_bits: u64::MAX,
        committed: true,
        ack: true,
    });
    let fx = edge.poll_effects();
    assert!(fx.writes.is_empty(), "nothing persisted: {:?}", fx.writes);
    assert!(!fx.send.iter().any(|m| matches!(m, ClientMsg::Ack { .. })));
    assert_eq!(r.edges[&driver].held(s).unwrap(), &tomb);
}

/// Found by the deterministic simulation (lifeboat-dsim soak, seeds 309, 372, 765, 822 and
/// 1117 before the fix). A rider requested at dc2 while dc1 was down, then moved home to
/// dc1, which restored the trip and dispatched a driver after its grace. dc2 still had its
/// own copy waiting for a driver, and dispatched it to the next driver that failed over to
/// it: two drivers sent for one trip, the second one's committed ops silently lost when its
/// branch met dc1's (it is not a participant there, so it is not even told), and a trip that
/// had completed at dc1 assigned again at dc2 (alive again once dc1 lost its disk).
#[test]
fn a_datacenter_does_not_dispatch_a_trip_whose_rider_has_left() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, first, second) = (r.add_device(1), r.add_device(2), r.add_device(3));
    let s = SessionId(1_000_002);
    // The rider requests at dc2; no driver there yet.
    r.connect(rider, 1, false);
    r.submit(
        rider,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    assert_eq!(r.phase(1, s), Some(TripPhase::Requested));
    // Home to dc1: restored there, dispatched to the first driver after the grace.
    r.kill_link(rider);
    r.connect(first, 0, true);
    r.connect(rider, 0, false);
    r.tick(3_000);
    assert_eq!(r.phase(0, s), Some(TripPhase::Assigned));
    // Another driver reaches dc2, where the rider is no longer.
    r.connect(second, 1, true);
    r.tick(3_000);
    assert_eq!(
        r.phase(1, s),
        Some(TripPhase::Requested),
        "dc2 sent a second driver to a trip whose rider had left"
    );
    assert!(r.edges[&second].held(s).is_none());
    // The rider comes back to dc2 (dc1 died): its newer copy is adopted, nothing diverges.
    r.kill(0);
    r.connect(rider, 1, false);
    let (h, _) = r.dc(1).session(s).expect("held");
    assert_eq!(h.driver, Some(first));
    assert_eq!(r.dc(1).stats().uploads_diverged, 0);
}

/// Found by the harness's `partition` scenario (seed 20261201, three riders' cancels never
/// answered): the rider's cancel was applied (rejected: the trip was on) and confirmed at
/// dc1, but the reply was lost to the cut; the rider failed over to dc2 and resubmitted it
/// there, on a branch the driver never saw. Back at dc1 its branch was reported diverged and
/// waited to be absorbed once dc1's copy was confirmed, but dc1's copy already was, so
/// nothing ever asked again: the rider waited forever. Now a branch beside a copy already
/// known committed is absorbed at once.
#[test]
fn s13_a_rider_back_from_a_branch_beside_an_already_confirmed_copy_is_answered() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The rider's cancel reaches dc1 (rejected: on trip; the driver confirms it) but the
    // reply is lost, and so is the confirmation.
    let seq = r.edges[&rider].held(s).unwrap().next_seq;
    r.drop_replies_to.push((rider, s, seq));
    let cancel = r.submit_without_answer(rider, 0, s, TripOp::Cancel);
    r.kill_link(rider);
    r.pump();
    assert!(
        r.dc(0).is_confirmed(s),
        "the driver confirmed the rejected cancel"
    );
    // dc2 restores from the rider's older copy and the cancel is applied there again.
    r.connect(rider, 1, false);
    assert!(
        r.commits.iter().all(|(i, _)| *i != cancel),
        "waits for the anchor"
    );
    // Home again.
    r.kill_link(rider);
    r.connect(rider, 0, false);
    let answers: Vec<_> = r.commits.iter().filter(|(i, _)| *i == cancel).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(matches!(answers[0].1, Err(SubmitError::Rejected(_))));
    let dc1 = r.dc(0).session(s).unwrap().0.version.clone();
    for d in [rider, driver] {
        let held = r.edges[&d].held(s).unwrap();
        assert_eq!(held.digest.header.version, dc1, "{d}");
        assert!(held.committed, "{d}");
    }
}

/// From the independent review of the chain rule (its first finding): the rider's request
/// reached dc1, which dispatched d1, but nothing reached the rider; it resubmitted at dc2,
/// which dispatched d2, and the rider persisted that hand-over; d2 committed two ops. Back
/// at dc1, d1's next op made dc1 push its branch to the rider marked as the rider's to
/// commit. The rider held only uncommitted copies of d2's chain and gave way to d1's branch:
/// d2's committed ops were lost once dc1 absorbed d2's branch. A device now never persists a
/// copy that does not dominate the newest version it knows is committed (here: the
/// hand-over to d2 it persisted itself).
#[test]
fn review_a_rider_that_persisted_one_hand_over_never_takes_another_datacenters_branch() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, d1, d2) = (r.add_device(1), r.add_device(2), r.add_device(3));
    r.connect(d1, 0, true);
    r.connect(rider, 0, false);
    let s = SessionId(61);
    r.submit_without_answer(
        rider,
        0,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.kill_link(rider);
    r.pump();
    assert_eq!(r.dc(0).session(s).unwrap().0.driver, Some(d1));
    let a1 = r.submit(d1, s, TripOp::Arrived);
    assert!(!r.committed(a1));
    // The rider resubmits at dc2, which dispatches d2; d2 commits two ops.
    r.connect(d2, 1, true);
    r.connect(rider, 1, false);
    assert_eq!(r.dc(1).session(s).unwrap().0.driver, Some(d2));
    let a2 = r.submit(d2, s, TripOp::Arrived);
    let s2 = r.submit(d2, s, TripOp::StartTrip);
    assert!(r.committed(a2) && r.committed(s2));
    // The rider goes home to dc1; d1 acts there.
    r.kill_link(rider);
    r.connect(rider, 0, false);
    let go1 = r.submit(d1, s, TripOp::StartTrip);
    assert_eq!(
        r.edges[&rider].held(s).unwrap().digest.header.driver,
        Some(d2),
        "the rider kept d2's chain"
    );
    // Even told it is committed (what dc1 said before the fix), d1's branch does not
    // dominate the hand-over the rider persisted: the rider keeps its copy.
    let branch = r.dc(0).sealed(s).unwrap().clone();
    let view = r.dc(0).session(s).unwrap().1.clone();
    let before = r.edges[&rider].held(s).unwrap().clone();
    let edge = r.edges.get_mut(&rider).unwrap();
    edge.on_push(lifeboat_common::wire::SessionUpdate {
        digest: branch,
        view,
        your_last_seq: 1,
        your_applied_bits: 1,
        committed: true,
        ack: true,
    });
    let fx = edge.poll_effects();
    assert!(fx.writes.is_empty(), "{:?}", fx.writes);
    assert_eq!(r.edges[&rider].held(s).unwrap(), &before);
    // d2 comes to dc1 too: its chain wins there and d1 is told it was removed.
    r.kill_link(d2);
    r.connect(d2, 0, false);
    let (h, body) = {
        let sealed = r.dc(0).sealed(s).unwrap().clone();
        let body: lifeboat_common::digest::DigestBody<lifeboat_common::TripState> =
            sealed.open(&r.keyring).unwrap();
        (sealed.header, body)
    };
    assert_eq!(h.driver, Some(d2));
    let mark = body.dedup.iter().find(|m| m.device == d2).unwrap();
    assert!(mark.last_seq >= 2, "d2's committed ops are in dc1's copy");
    assert_eq!(body.state.phase, TripPhase::OnTrip);
    assert!(r.edges[&d1].held(s).is_none(), "d1 was removed");
    assert!(
        !r.committed(a1) && !r.committed(go1),
        "nothing of d1 committed"
    );
    assert_eq!(r.dc(0).stats().chain_conflicts, 0);
}

/// From the review (its fourth finding): the rider's cancel was applied and persisted at dc1,
/// which crashed before anything left and restarted on its disk. The driver's upload was
/// older; dc1 pushed it the cancel, but asked nobody to acknowledge it, so the rider's
/// resubmitted cancel was answered from a copy nobody confirmed and waited until the driver
/// happened to upload again. A copy loaded from disk now asks for acknowledgement.
#[test]
fn review_a_copy_loaded_from_disk_is_confirmed_by_the_chain_holder_at_once() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = SessionId(62);
    r.connect(driver, 0, true);
    r.connect(rider, 0, false);
    r.submit(
        rider,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.submit(driver, s, TripOp::Arrived);
    // The rider's cancel is applied at dc1 and persisted; nothing else leaves.
    r.submit_without_answer(rider, 0, s, TripOp::Cancel);
    let on_disk = r.dcs[0]
        .as_mut()
        .unwrap()
        .poll_effects()
        .persist
        .last()
        .unwrap()
        .1
        .clone();
    assert!(on_disk.header.tombstone);
    r.kill(0);
    let mut back = r.dc_with_disk(0, 1);
    back.load_persisted(r.now, on_disk).unwrap();
    r.dcs[0] = Some(back);
    r.connect(driver, 0, true);
    r.connect(rider, 0, false);
    let answers: Vec<_> = r
        .commits
        .iter()
        .filter(|(i, _)| i.device == rider && i.seq == 2)
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].1.is_ok(), "{answers:?}");
    assert!(r.dc(0).is_confirmed(s));
}

/// The key an op record write touches, and what it writes there.
fn op_write_kind(w: &StoreWrite<Trip>) -> Option<(OpId, &'static str)> {
    match w {
        StoreWrite::PutOp(id, _) => Some((*id, "queued")),
        StoreWrite::PutOutcome(rec) => Some((rec.id, "decided")),
        StoreWrite::DeleteOp(id) => Some((*id, "deleted")),
        _ => None,
    }
}

/// Issue 17: an op killed "between leaving the queue and the app hearing of it" had no
/// outcome anywhere. The outcome now replaces the queued record under the same key in one
/// write, and stays readable until the app acknowledges it.
#[test]
fn a_decided_op_replaces_its_queued_record_in_one_write_and_stays_until_acknowledged() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    r.now += 5_000;
    r.edges.get_mut(&driver).unwrap().set_time(r.now);
    let id = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(r.committed(id));
    let history: Vec<&'static str> = r
        .op_writes
        .iter()
        .filter(|(d, _)| *d == driver)
        .filter_map(|(_, w)| op_write_kind(w))
        .filter(|(i, _)| *i == id)
        .map(|(_, k)| k)
        .collect();
    assert_eq!(
        history,
        vec!["queued", "decided"],
        "the op's key goes from queued to decided, never through 'deleted'"
    );
    let edge = r.edges.get_mut(&driver).unwrap();
    match edge.op_status(id) {
        OpStatus::Decided(rec) => {
            assert!(rec.result.is_ok(), "{rec:?}");
            assert_eq!(rec.op, TripOp::Location { at: Q });
            assert_eq!(rec.at_ms, 6_000, "stamped with the time the core was given");
        }
        other => panic!("expected a decided outcome, got {other:?}"),
    }
    assert!(edge.outcomes().iter().any(|o| o.id == id));
    assert!(edge.queued_ops().is_empty());
    assert!(edge.acknowledge(id));
    assert!(!edge.acknowledge(id), "an outcome is acknowledged once");
    assert_eq!(edge.op_status(id), OpStatus::Unknown);
    let fx = edge.poll_effects();
    assert!(
        fx.writes
            .iter()
            .any(|w| matches!(w, StoreWrite::DeleteOp(i) if *i == id)),
        "the acknowledgement deletes the record"
    );
}

/// After a restart the app can read every outcome it did not acknowledge, and the device
/// never reuses the seq of a decided op for a new one.
#[test]
fn outcomes_loaded_after_a_restart_are_readable_and_their_seqs_are_never_reused() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    let id = r.submit(driver, s, TripOp::Location { at: Q });
    assert!(r.committed(id));
    let old = &r.edges[&driver];
    let held = old.held(s).unwrap().clone();
    let outcomes = old.outcomes();
    assert_eq!(
        outcomes.len(),
        3,
        "arrived, start and the location: {outcomes:?}"
    );
    // The restarted app: a new core loaded from what the store holds.
    let mut restarted = EdgeCore::<Trip>::new(driver, EdgeLimits::default());
    restarted.load_session(s, held);
    for rec in outcomes {
        restarted.load_outcome(rec);
    }
    assert!(matches!(restarted.op_status(id), OpStatus::Decided(_)));
    let next = restarted.submit(s, TripOp::Complete).unwrap();
    assert!(next.seq > id.seq, "{next} reuses a decided seq (last {id})");
    assert!(matches!(
        restarted.op_status(next),
        OpStatus::Queued {
            op: TripOp::Complete
        }
    ));
}

/// A failed op's outcome names the op and the reason; the app reads it like a commit.
#[test]
fn a_failed_op_is_recorded_with_its_reason() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let s = r.trip_on_the_road(rider, driver, 0);
    // The rider may not report positions: the application refuses it.
    let id = r.submit(rider, s, TripOp::Location { at: Q });
    let edge = &r.edges[&rider];
    match edge.op_status(id) {
        OpStatus::Decided(rec) => {
            assert!(
                matches!(rec.result, Err(SubmitError::Rejected(_))),
                "{rec:?}"
            );
            assert_eq!(rec.id, id);
        }
        other => panic!("expected a failed outcome, got {other:?}"),
    }
}

/// C6: unacknowledged outcomes are bounded; the oldest goes first, from the store too.
#[test]
fn unacknowledged_outcomes_beyond_the_bound_are_dropped_oldest_first() {
    let mut r = Region::new(1, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(2));
    let limits = EdgeLimits {
        max_outcomes: 2,
        ..EdgeLimits::default()
    };
    r.edges.insert(driver, EdgeCore::new(driver, limits));
    let s = r.trip_on_the_road(rider, driver, 0);
    let id = r.submit(driver, s, TripOp::Location { at: Q });
    let edge = &r.edges[&driver];
    let kept: Vec<u64> = edge.outcomes().iter().map(|o| o.id.seq).collect();
    assert_eq!(kept, vec![id.seq - 1, id.seq], "the newest two are kept");
    assert_eq!(edge.outcomes_dropped(), 1);
    let first = OpId { seq: 1, ..id };
    assert!(r
        .op_writes
        .iter()
        .any(|(d, w)| *d == driver && matches!(w, StoreWrite::DeleteOp(i) if *i == first)));
}

/// Soak seed 177491 (`NotConverged`, 1 in 15,000 seeds): the rider's request reached dc1
/// (reply lost, dc1 dispatched driver A there); the rider failed over to dc2, which created
/// the trip again and dispatched driver B, who was cut off from dc2 and never heard of it;
/// the rider persisted that hand-over (committed). Rider and B then both reached dc1, which
/// adopted the rider's committed copy over its own branch with a version above both and
/// asked the chain holder (B) to confirm it. But B had never held the committed copy, so it
/// did not know it held the chain: its acknowledgement was not certified, nobody could ever
/// confirm the kept copy, and the two phones ended on two unconfirmed branches. Now dc1 tells
/// the participants what is committed along with the kept copy, and B, learning that the
/// hand-over names it and holding a copy descending from it, confirms it (certified).
#[test]
fn a_provider_that_missed_its_hand_over_learns_it_holds_the_chain_when_another_site_adopts_it() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, a, b) = (r.add_device(1), r.add_device(2), r.add_device(3));
    let s = SessionId(177_491);
    // dc1 applies the request, its answers lost; it dispatches A there.
    r.connect(a, 0, true);
    r.connect(rider, 0, false);
    let req = TripOp::Request {
        pickup: P,
        dropoff: Q,
    };
    r.submit_without_answer(rider, 0, s, req);
    r.kill_link(rider);
    r.pump();
    assert_eq!(r.dc(0).session(s).unwrap().0.driver, Some(a));
    // B is available at dc2, then cut off from it (dc2 does not notice).
    r.connect(b, 1, true);
    r.link.remove(&b);
    r.edges.get_mut(&b).unwrap().on_disconnect();
    // The rider fails over to dc2: the trip is created again there and B dispatched; the
    // rider persists the hand-over, B never hears of it.
    r.connect(rider, 1, false);
    let held = r.edges[&rider].held(s).expect("the rider holds its trip");
    assert!(held.committed, "the rider persisted the hand-over");
    assert_eq!(held.digest.header.driver, Some(b));
    assert!(r.edges[&b].held(s).is_none(), "B never heard of it");
    // Both reach dc1, B first (it holds nothing of the trip), then the rider.
    r.kill_link(rider);
    r.connect(b, 0, false);
    r.connect(rider, 0, false);
    let kept = r.dc(0).session(s).unwrap().0.clone();
    assert_eq!(kept.driver, Some(b), "dc1 kept the committed copy");
    let hb = r.edges[&b].held(s).expect("B got the kept copy");
    assert!(
        hb.committed,
        "B was told it holds the chain: {:?}",
        hb.digest.header
    );
    // B drives; its ops commit, and both phones hold the same copy.
    let go = r.submit(b, s, TripOp::Arrived);
    assert!(
        r.committed(go),
        "B's op never committed: the chain is stuck"
    );
    assert_eq!(
        r.edges[&rider].held(s).unwrap().digest.header.version,
        r.edges[&b].held(s).unwrap().digest.header.version
    );
}

/// Chaos seed 218 (dsim), found when the server's output path changed timing: the driver a
/// backup dispatched (and the rider persisted) was away; meanwhile the old datacenter, which
/// still thought the rider connected, dispatched the same driver on its own branch, and the
/// driver drove on there. When the driver reached the backup, its branch was concurrent with
/// the backup's copy and neither was committed: the backup waited for the chain holder to
/// persist its copy, and the chain holder (that same driver) refused it as a concurrent
/// uncommitted copy. Nothing ever committed again: the rider's cancel and the driver's op
/// were never answered.
#[test]
fn a_driver_back_from_a_branch_its_rider_never_persisted_takes_the_chain_it_was_handed() {
    let mut r = Region::new(2, Durability::Async);
    let (rider, driver) = (r.add_device(1), r.add_device(1001));
    let s = SessionId(218);
    // The rider requests at dc2; no driver is available there yet.
    r.connect(rider, 1, false);
    let req = r.request(rider, s);
    assert!(r.committed(req));
    // The rider is cut off from dc2 (dc2 does not notice); the driver is available at dc1
    // and then cut off from it (dc1 does not notice).
    r.cut_silently(rider);
    r.connect(driver, 0, true);
    r.cut_silently(driver);
    // The rider fails over to dc1: dc1 dispatches the driver, the rider persists the
    // hand-over; the driver never hears of it. The rider cancels: that waits for the driver.
    r.connect(rider, 0, false);
    let held = r.edges[&rider].held(s).expect("the rider holds its trip");
    assert!(held.committed, "the rider persisted the hand-over");
    assert_eq!(held.digest.header.driver, Some(driver));
    let cancel = r.submit(rider, s, TripOp::Cancel);
    assert!(!r.committed(cancel), "a rider's op waits for the driver");
    // The driver reaches dc2, which still thinks the rider connected: it dispatches the
    // driver on its own branch, and the driver drives on there (nothing commits: the rider
    // never persists that hand-over).
    r.connect(driver, 1, true);
    let branch = r.edges[&driver].held(s).expect("dc2 dispatched the driver");
    assert!(!branch.committed);
    let arrived = r.submit(driver, s, TripOp::Arrived);
    assert!(!r.committed(arrived));
    // The driver is cut off from dc2 and reaches dc1.
    r.cut_silently(driver);
    r.connect(driver, 0, false);
    for _ in 0..20 {
        r.tick(1_000);
    }
    // The chain goes on: the rider's cancel commits, the driver's op is answered, and both
    // phones hold the same copy.
    assert!(r.committed(cancel), "the rider's cancel never committed");
    assert!(
        r.commits.iter().any(|(i, _)| *i == arrived),
        "the driver's op was never answered"
    );
    let (hr, hd) = (
        r.edges[&rider].held(s).unwrap(),
        r.edges[&driver].held(s).unwrap(),
    );
    assert_eq!(hr.digest.header.version, hd.digest.header.version);
    assert!(hr.committed && hd.committed);
}
