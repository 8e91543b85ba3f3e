//! The seven sequences of issue 12, one deterministic test each: two datacenter cores and the
//! phones of one trip, wired by in-memory message passing (no sockets, no clock), driven
//! through the sequence and then healed. One control test runs the same wiring and checks on
//! a failover without a split and passes on the current core.
//!
//! The tests judge the contract, not the implementation. The verdict never calls the core's
//! own rules (`ops_cover`, `changes_unknown_to`, `DedupEntry::covers*`, reconcile): whether a
//! committed op is in a copy is read from the raw watermark fields of the opened digest. Every
//! test ends with the same checks (`check_contract`), in this order:
//! - a device that is no longer a participant of the final copy holds, if anything, a
//!   tombstone or a copy naming another driver: it was told it was removed (sequence 6);
//! - C1: every op a phone was told is committed is applied in the final copy (and, checked
//!   whenever a phone is told, in the copy that phone holds at that moment);
//! - convergence: every participant holds the datacenter's copy;
//! - no wedge: every participant of a live trip can still commit one more valid op.
//!
//! Time: the core these sequences were found on took a restored session over when its
//! restore grace ran out, and the sequences wait that long with `let_grace_expire`. The
//! chain rule (docs/PROTOCOL.md) has no grace; the waits are only time passing now, kept so
//! the sequences read as they were found. Each test failed on the core before the chain
//! rule (commit c4fdbdb), on the assertion its name states.

mod support {
    pub mod wiring;
}

use lifeboat_common::datacenter::{DatacenterCore, DcConfig, Durability};
use lifeboat_common::digest::{DigestBody, SealedDigest};
use lifeboat_common::edge::{Commit, EdgeCore, EdgeEvent, EdgeLimits, SubmitError};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::ServerMsg;
use lifeboat_common::{
    DatacenterId, DeviceId, GeoPoint, OpId, Role, SessionId, Trip, TripOp, TripPhase, TripState,
};
use std::collections::{BTreeMap, BTreeSet};

const DC1: usize = 0;
const DC2: usize = 1;
/// The restore grace the sequences were found with (the core before the chain rule).
const GRACE_MS: u64 = 2_000;
/// Outcomes a watermark remembers (the dedup window the contract describes).
const WINDOW: u64 = 64;

const P: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};
const Q: GeoPoint = GeoPoint {
    lat_e6: 52_521_000,
    lon_e6: 13_406_000,
};
/// About 11 km from the pickup: a GPS jump the trip model refuses.
const FAR: GeoPoint = GeoPoint {
    lat_e6: 52_620_000,
    lon_e6: 13_405_000,
};

const RIDER: DeviceId = DeviceId(1);
const DRIVER: DeviceId = DeviceId(2);
const DRIVER2: DeviceId = DeviceId(3);
const RIDER2: DeviceId = DeviceId(4);
const TRIP: SessionId = SessionId(1_002);
const TRIP2: SessionId = SessionId(1_004);

/// Two datacenters, the phones, and a network that can lose replies, cut one direction of a
/// link, and freeze a datacenter.
struct Region {
    keyring: Keyring,
    dcs: Vec<DatacenterCore<Trip>>,
    /// A frozen datacenter neither hears nor says anything, nor sees time pass.
    frozen: Vec<bool>,
    edges: BTreeMap<DeviceId, EdgeCore<Trip>>,
    /// The datacenter each phone is connected to, as the phone sees it.
    link: BTreeMap<DeviceId, usize>,
    /// One-way cuts: what this datacenter sends to this phone is lost.
    deaf: BTreeSet<(DeviceId, usize)>,
    /// Replies the network loses, by op.
    lost_replies: BTreeSet<OpId>,
    ops: BTreeMap<OpId, TripOp>,
    /// What each phone was told about its ops.
    told: Vec<(OpId, Result<Commit, SubmitError>)>,
    /// What happened, printed when a check fails.
    trace: Vec<String>,
    now: u64,
}

impl Region {
    fn new() -> Self {
        let keyring = Keyring::generate();
        let dcs = (0..2u16)
            .map(|i| {
                let mut cfg = DcConfig::new(DatacenterId(i + 1), ReplicaId(u32::from(i) + 1));
                cfg.durability = Durability::Async;
                DatacenterCore::new(cfg, keyring.clone())
            })
            .collect();
        let edges = [RIDER, DRIVER, DRIVER2, RIDER2]
            .into_iter()
            .map(|d| (d, EdgeCore::new(d, EdgeLimits::default())))
            .collect();
        Region {
            keyring,
            dcs,
            frozen: vec![false; 2],
            edges,
            link: BTreeMap::new(),
            deaf: BTreeSet::new(),
            lost_replies: BTreeSet::new(),
            ops: BTreeMap::new(),
            told: Vec::new(),
            trace: Vec::new(),
            now: 1_000,
        }
    }

    fn note(&mut self, what: String) {
        self.trace.push(format!("t={} {what}", self.now));
    }

    /// Fail a contract check, with the history on stderr.
    fn fail(&self, msg: String) -> ! {
        eprintln!("history:\n  {}", self.trace.join("\n  "));
        panic!("{msg}");
    }

    // --- time -----------------------------------------------------------------------------

    /// Let as much time pass as the old restore grace (the chain rule has none: this is only
    /// time passing, and the sequences still read the same).
    fn let_grace_expire(&mut self) {
        self.tick(GRACE_MS + 500);
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        for (dc, frozen) in self.dcs.iter_mut().zip(&self.frozen) {
            if !frozen {
                dc.handle_tick(now);
            }
        }
        // The edge driver's retry timer.
        for (d, edge) in self.edges.iter_mut() {
            if self.link.contains_key(d) {
                edge.send_unsent();
            }
        }
        self.pump();
    }

    // --- the network ----------------------------------------------------------------------

    fn connect(&mut self, d: DeviceId, dc: usize, available: bool) {
        self.hang_up(d);
        let c = support::wiring::connect_upload(&self.keyring, &self.edges[&d], available);
        self.note(format!("{d} connects to dc{}", dc + 1));
        self.link.insert(d, dc);
        let now = self.now;
        self.dcs[dc].handle_connect(now, c.device, c.available, c.digests);
        self.pump();
    }

    /// Both ends notice the connection is gone.
    fn hang_up(&mut self, d: DeviceId) {
        if let Some(l) = self.link.remove(&d) {
            if !self.frozen[l] {
                self.dcs[l].handle_disconnect(d);
            }
        }
        if let Some(e) = self.edges.get_mut(&d) {
            e.on_disconnect();
        }
    }

    /// The phone gives up on its datacenter (an idle or op timeout: a false failover when the
    /// datacenter is alive). The datacenter is not told: it still counts the phone as
    /// connected, and what it sends it is lost.
    fn timeout(&mut self, d: DeviceId) {
        self.note(format!("{d} times out"));
        self.link.remove(&d);
        if let Some(e) = self.edges.get_mut(&d) {
            e.on_disconnect();
        }
    }

    /// The datacenter stops (a stalled process, a partition): its phones time out. It keeps
    /// its memory and resumes where it was on `thaw`.
    fn freeze(&mut self, dc: usize) {
        self.note(format!("dc{} freezes", dc + 1));
        self.frozen[dc] = true;
        let gone: Vec<DeviceId> = self
            .link
            .iter()
            .filter(|(_, l)| **l == dc)
            .map(|(d, _)| *d)
            .collect();
        for d in gone {
            self.timeout(d);
        }
    }

    fn thaw(&mut self, dc: usize) {
        self.note(format!("dc{} thaws", dc + 1));
        self.frozen[dc] = false;
        self.pump();
    }

    /// Queue an op at a phone (sent at once if connected). `None`: refused locally.
    fn submit(&mut self, d: DeviceId, s: SessionId, op: TripOp) -> Option<OpId> {
        let id = self.queue(d, s, op)?;
        self.pump();
        Some(id)
    }

    /// As `submit`, but the network loses the datacenter's reply to it.
    fn submit_reply_lost(&mut self, d: DeviceId, s: SessionId, op: TripOp) -> Option<OpId> {
        let id = self.queue(d, s, op)?;
        self.lost_replies.insert(id);
        self.pump();
        Some(id)
    }

    fn queue(&mut self, d: DeviceId, s: SessionId, op: TripOp) -> Option<OpId> {
        let result = self
            .edges
            .get_mut(&d)
            .expect("device")
            .submit(s, op.clone());
        match result {
            Ok(id) => {
                self.note(format!("{id} {} submitted", op.name()));
                self.ops.insert(id, op);
                Some(id)
            }
            Err(e) => {
                self.note(format!("{d} {} refused locally: {e}", op.name()));
                None
            }
        }
    }

    /// Deliver messages until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut quiet = true;
            let now = self.now;
            for i in 0..self.dcs.len() {
                if self.frozen[i] {
                    continue;
                }
                for (to, msg) in self.dcs[i].poll_effects().send {
                    if self.link.get(&to) != Some(&i) || self.deaf.contains(&(to, i)) {
                        continue;
                    }
                    quiet = false;
                    let edge = self.edges.get_mut(&to).expect("device");
                    if let ServerMsg::OpResult { session, seq, .. } = &msg {
                        let id = OpId {
                            session: *session,
                            device: to,
                            seq: *seq,
                        };
                        if self.lost_replies.remove(&id) {
                            self.trace
                                .push(format!("t={} reply to {id} lost", self.now));
                            continue;
                        }
                    }
                    if let Err(error) = edge.handle_message(now, msg) {
                        self.trace
                            .push(format!("t={} {to} got a protocol error: {error}", self.now));
                    }
                }
            }
            let now = self.now;
            let mut told = Vec::new();
            for (d, edge) in self.edges.iter_mut() {
                let fx = edge.poll_effects();
                for e in fx.events {
                    if let EdgeEvent::Conflict { ours, theirs, .. } = e {
                        self.trace.push(format!(
                            "t={now} {d} told of a conflict: held {ours}, datacenter {theirs}"
                        ));
                    }
                }
                told.extend(fx.resolved);
                let Some(&l) = self.link.get(d) else {
                    continue;
                };
                if self.frozen[l] {
                    continue;
                }
                let dc = &mut self.dcs[l];
                for msg in fx.send {
                    quiet = false;
                    if let Err(e) = dc.handle_message(now, *d, msg) {
                        panic!("test wiring: {d} sent a connect frame after connecting: {e}");
                    }
                }
            }
            for (id, result) in told {
                self.tell(id, result);
            }
            if quiet {
                return;
            }
        }
        self.fail("liveness: the message pump did not settle in 10,000 rounds".into());
    }

    /// A phone's app is told the outcome of an op. C1: the phone has persisted a copy that
    /// holds a committed op before it is told (the effects of one batch are written before
    /// the app hears of them, so the copy held after the batch is the one that counts).
    fn tell(&mut self, id: OpId, result: Result<Commit, SubmitError>) {
        let kind = self.kind(id);
        match &result {
            Ok(c) => {
                self.note(format!("{id} {kind} reported committed at {}", c.version));
                let held = self.edges[&id.device].held(id.session);
                let verdict = match held {
                    None => Err("it holds no copy".to_string()),
                    Some(h) => self.applied_in(&h.digest, id),
                };
                if let Err(why) = verdict {
                    let has = held.map_or("none".into(), |h| self.describe(&h.digest));
                    self.fail(format!(
                        "C1: {id} ({kind}) was reported committed to {}, but the copy it holds \
                         ({has}) lacks it: {why}",
                        id.device
                    ));
                }
            }
            Err(e) => self.note(format!("{id} {kind} reported failed: {e}")),
        }
        self.told.push((id, result));
    }

    fn kind(&self, id: OpId) -> String {
        self.ops
            .get(&id)
            .map_or("?".into(), |op| op.name().to_string())
    }

    // --- the verdict ------------------------------------------------------------------------

    /// Whether `op` is applied in `sealed`, read from the raw watermark of its submitter: the
    /// watermark has passed its seq and, within the window, its outcome bit says applied.
    fn applied_in(&self, sealed: &SealedDigest, op: OpId) -> Result<(), String> {
        let body: DigestBody<TripState> = sealed
            .open(&self.keyring)
            .map_err(|e| format!("the copy does not open: {e}"))?;
        let Some(mark) = body.dedup.iter().find(|m| m.device == op.device) else {
            return Err(format!("it has no watermark for {}", op.device));
        };
        if mark.last_seq < op.seq {
            return Err(format!(
                "{}'s watermark is at seq {}",
                op.device, mark.last_seq
            ));
        }
        let age = mark.last_seq - op.seq;
        if age < WINDOW && (mark.applied_bits >> age) & 1 == 0 {
            return Err(format!("it records seq {} as rejected", op.seq));
        }
        Ok(())
    }

    /// "version, phase" of a copy, for messages.
    fn describe(&self, sealed: &SealedDigest) -> String {
        match sealed.open::<TripState>(&self.keyring) {
            Ok(body) => format!("{}, {:?}", sealed.header.version, body.state.phase),
            Err(e) => format!("{}, unreadable: {e}", sealed.header.version),
        }
    }

    /// Every fault cleared, every phone reconnected to `home`, a few seconds of time.
    fn heal(&mut self, home: usize, devices: &[DeviceId]) {
        self.note(format!("heal: everyone to dc{}", home + 1));
        self.deaf.clear();
        self.lost_replies.clear();
        for dc in 0..self.dcs.len() {
            if self.frozen[dc] {
                self.thaw(dc);
            }
        }
        for &d in devices {
            self.connect(d, home, false);
        }
        for _ in 0..5 {
            self.tick(1_000);
        }
    }

    /// The checks every sequence ends with (see the module docs), after `heal(home, ..)`.
    fn check_contract(&mut self, home: usize, s: SessionId, devices: &[DeviceId]) {
        let name = format!("dc{}", home + 1);
        let Some(fin) = self.dcs[home].sealed(s).cloned() else {
            self.fail(format!("C1: {name} holds no copy of {s} after the heal"));
        };
        let copy = self.describe(&fin);
        let participants: Vec<DeviceId> = fin.header.participants().collect();
        // A device the final copy no longer names must not believe it still drives the trip.
        for &d in devices.iter().filter(|d| !participants.contains(d)) {
            if let Some(h) = self.edges[&d].held(s) {
                let hd = &h.digest.header;
                let told = hd.tombstone || hd.driver.is_some_and(|other| other != d);
                if !told {
                    let driver = fin.header.driver.map_or("none".into(), |x| x.to_string());
                    self.fail(format!(
                        "removed participant: {d} is not in {name}'s final copy ({copy}, driver \
                         {driver}), yet still holds a live copy ({}) that names no other driver",
                        self.describe(&h.digest)
                    ));
                }
            }
        }
        // C1 against the final copy.
        let committed: Vec<OpId> = self
            .told
            .iter()
            .filter(|(id, r)| id.session == s && r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        for id in committed {
            if let Err(why) = self.applied_in(&fin, id) {
                self.fail(format!(
                    "C1: {id} ({}) was reported committed, but {name}'s final copy ({copy}) \
                     lacks it: {why}",
                    self.kind(id)
                ));
            }
        }
        // Convergence.
        for &d in devices.iter().filter(|d| participants.contains(d)) {
            let held = self.edges[&d].held(s);
            if held.map(|h| &h.digest.header) != Some(&fin.header) {
                let has = held.map_or("nothing".into(), |h| self.describe(&h.digest));
                self.fail(format!(
                    "convergence: after the heal {d} holds ({has}) but {name} holds ({copy})"
                ));
            }
        }
        // No wedge: one more valid op per participant of a live trip (the driver first: a
        // rider's only op, cancel, ends the trip).
        if fin.header.tombstone {
            return;
        }
        let mut order = participants;
        order.sort_by_key(|d| Some(*d) != fin.header.driver);
        for d in order {
            let phase = self.edges[&d].held(s).map(|h| h.view.phase);
            let role = if Some(d) == fin.header.driver {
                Role::Driver
            } else {
                Role::Rider
            };
            let op = match (role, phase) {
                (
                    Role::Driver,
                    Some(TripPhase::Assigned | TripPhase::DriverArrived | TripPhase::OnTrip),
                ) => TripOp::Location { at: P },
                (
                    Role::Rider,
                    Some(TripPhase::Requested | TripPhase::Assigned | TripPhase::DriverArrived),
                ) => TripOp::Cancel,
                _ => continue, // no valid op for this role in this phase
            };
            let Some(id) = self.submit(d, s, op.clone()) else {
                self.fail(format!(
                    "no wedge: after the heal {d} ({role}) could not even queue {}",
                    op.name()
                ));
            };
            for _ in 0..5 {
                self.tick(1_000);
            }
            let outcome = self.told.iter().rev().find(|(i, _)| *i == id);
            match outcome {
                Some((_, Ok(_))) => {}
                other => {
                    let got = other.map_or("no answer".into(), |(_, r)| format!("{r:?}"));
                    self.fail(format!(
                        "no wedge: after the heal {d} ({role}) submitted {id} ({}) and got {got}",
                        op.name()
                    ));
                }
            }
        }
    }

    // --- trips ----------------------------------------------------------------------------

    /// At dc1: R requests, D (waiting for work there) is dispatched.
    /// The op `id` (queued by `who`, or `None`: refused locally) was answered.
    fn expect_answered(&self, id: Option<OpId>, who: &str) {
        let Some(id) = id else {
            self.fail(format!("{who} could not queue its cancel"));
        };
        if !self.told.iter().any(|(t, _)| *t == id) {
            self.fail(format!("{who}'s cancel {id} was never answered"));
        }
    }

    fn dispatched_trip(&mut self) -> SessionId {
        self.connect(DRIVER, DC1, true);
        self.connect(RIDER, DC1, false);
        let pickup = TripOp::Request {
            pickup: P,
            dropoff: Q,
        };
        self.submit(RIDER, TRIP, pickup);
        TRIP
    }
}

/// Sequence 1 (soak seed 504). At dc1 R requests, D is dispatched and arrives. D loses dc1
/// while it is alive (a false failover) and restores the trip at dc2, where its start is
/// parked behind the restore barrier. R cancels at dc1: applied, the reply lost. dc2's grace
/// runs out and D's start is applied there; R gives up on dc1, reaches dc2 and its resubmitted
/// cancel is refused (the trip is on). D reports three locations and completes at dc2. Then
/// both come home to dc1, whose cancelled tombstone is concurrent with dc2's completed one.
#[test]
fn seq1_cancel_reply_lost_start_applied_at_backup_and_both_come_home_keeps_drivers_ops() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.submit(DRIVER, s, TripOp::Arrived);
    r.timeout(DRIVER);
    r.connect(DRIVER, DC2, false);
    r.submit(DRIVER, s, TripOp::StartTrip);
    r.submit_reply_lost(RIDER, s, TripOp::Cancel);
    r.let_grace_expire();
    r.timeout(RIDER);
    r.connect(RIDER, DC2, false);
    for at in [Q, P, Q] {
        r.submit(DRIVER, s, TripOp::Location { at });
    }
    r.submit(DRIVER, s, TripOp::Complete);
    r.heal(DC1, &[RIDER, DRIVER]);
    r.check_contract(DC1, s, &[RIDER, DRIVER]);
}

/// Sequence 2 (a false failover under loss, `failover --loss 0.1 --delay-ms 100 --seed
/// 4242`). At dc1 R requests and D is dispatched. D's idle timeout fires while dc1 is alive:
/// D restores the trip at dc2, the grace runs out, and D's arrived and start commit there. R,
/// still at dc1 (first in its list, so it never probes), cancels there and is told it is
/// committed. Then the links heal and both are at dc1.
#[test]
fn seq2_false_failover_under_loss_driver_commits_at_backup_while_rider_cancels_at_home_loses_nothing(
) {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.timeout(DRIVER);
    r.connect(DRIVER, DC2, false);
    r.submit(DRIVER, s, TripOp::Arrived);
    r.let_grace_expire();
    r.submit(DRIVER, s, TripOp::StartTrip);
    r.submit(RIDER, s, TripOp::Cancel);
    r.heal(DC1, &[RIDER, DRIVER]);
    r.check_contract(DC1, s, &[RIDER, DRIVER]);
}

/// Sequence 3. At dc1 R requests and D is dispatched. D fails over falsely to dc2, and after
/// the grace its arrived commits there; R cancels at dc1 (committed). D, offline for a moment,
/// reports a location, then comes home to dc1, where its live copy and dc1's tombstone are
/// concurrent: D adopts the tombstone. Its queued location is answered at dc1, but the answer
/// is lost; D gives up on dc1 and replays the op at the backup, dc2, which applies it on the
/// live branch. D refuses the update that comes with the answer (it keeps the tombstone) and
/// is told the op is committed, against the tombstone, which lacks it.
#[test]
fn seq3_op_applied_at_backup_is_never_reported_committed_against_a_held_tombstone_that_lacks_it() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.timeout(DRIVER);
    r.connect(DRIVER, DC2, false);
    r.let_grace_expire();
    r.submit(DRIVER, s, TripOp::Arrived);
    r.submit(RIDER, s, TripOp::Cancel);
    r.hang_up(DRIVER);
    r.submit_reply_lost(DRIVER, s, TripOp::Location { at: Q });
    r.connect(DRIVER, DC1, false);
    r.timeout(DRIVER);
    r.connect(DRIVER, DC2, false);
    r.heal(DC1, &[RIDER, DRIVER]);
    r.check_contract(DC1, s, &[RIDER, DRIVER]);
}

/// Sequence 4. At dc1 R requests, D is dispatched, arrives and starts. D fails over falsely
/// to dc2; after the grace it reports a location there that is refused (a GPS jump): recorded,
/// and D is told. R, still at dc1, presses cancel as the trip starts; dc1 refuses it (the trip
/// is on) and records it. D comes home to dc1: the two copies are concurrent and D adopts
/// dc1's, whose watermark for D is one op behind what D was told, while D keeps its next seq.
/// Then both are healed at dc1 and D reports one more location.
#[test]
fn seq4_driver_adopting_a_concurrent_live_copy_can_still_commit_its_next_op() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.submit(DRIVER, s, TripOp::Arrived);
    r.submit(DRIVER, s, TripOp::StartTrip);
    r.timeout(DRIVER);
    r.connect(DRIVER, DC2, false);
    r.let_grace_expire();
    r.submit(DRIVER, s, TripOp::Location { at: FAR });
    r.submit(RIDER, s, TripOp::Cancel);
    r.connect(DRIVER, DC1, false);
    r.heal(DC1, &[RIDER, DRIVER]);
    r.check_contract(DC1, s, &[RIDER, DRIVER]);
}

/// Sequence 5. At dc1 R requests, D is dispatched and arrives. dc1 freezes; both phones fail
/// over to dc2, where D reports a location. dc1 thaws with everything it had in memory (no
/// restart, no reload from disk, so no restore barrier). D's probe gets home first: dc1 adopts
/// D's newer copy and applies D's start at once, while R, still at dc2 for one more probe
/// interval, cancels there. Then R comes home too.
#[test]
fn seq5_devices_moving_home_at_different_times_after_a_thaw_never_commit_on_two_branches() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.submit(DRIVER, s, TripOp::Arrived);
    r.freeze(DC1);
    r.connect(DRIVER, DC2, false);
    r.connect(RIDER, DC2, false);
    r.submit(DRIVER, s, TripOp::Location { at: Q });
    r.thaw(DC1);
    r.connect(DRIVER, DC1, false);
    r.submit(DRIVER, s, TripOp::StartTrip);
    r.submit(RIDER, s, TripOp::Cancel);
    r.heal(DC1, &[RIDER, DRIVER]);
    r.check_contract(DC1, s, &[RIDER, DRIVER]);
}

/// Sequence 6. D1 waits for work at dc1, D2 at dc2. R requests at dc1: dc1 creates the trip
/// and dispatches D1 in the same batch, but what dc1 sends R (the reply, the dispatch push) is
/// lost to a one-way cut. D1 arrives (committed). R gives up on dc1 and resubmits its request
/// at dc2, which creates the trip behind its dispatch hold; the cut lasts longer than the
/// grace, so R stays at dc2, which dispatches D2, who arrives and starts (committed). Then the
/// cut heals and everyone is at dc1.
#[test]
fn seq6_two_drivers_dispatched_on_two_sites_the_removed_one_is_told_and_no_committed_op_is_lost() {
    let mut r = Region::new();
    r.connect(DRIVER, DC1, true);
    r.connect(DRIVER2, DC2, true);
    r.connect(RIDER, DC1, false);
    r.deaf.insert((RIDER, DC1));
    let s = TRIP;
    let request = TripOp::Request {
        pickup: P,
        dropoff: Q,
    };
    r.submit(RIDER, s, request);
    r.submit(DRIVER, s, TripOp::Arrived);
    r.timeout(RIDER);
    r.connect(RIDER, DC2, false);
    r.let_grace_expire();
    r.submit(DRIVER2, s, TripOp::Arrived);
    r.submit(DRIVER2, s, TripOp::StartTrip);
    r.heal(DC1, &[RIDER, DRIVER, DRIVER2]);
    r.check_contract(DC1, s, &[RIDER, DRIVER, DRIVER2]);
}

/// Sequence 7. At dc1 R requests and D is dispatched. R is cut off from dc1 and reaches dc2,
/// which restores the trip; D arrives at dc1 meanwhile. When dc2's grace runs out R cancels
/// there (committed: R holds a tombstone). R comes home to dc1 with it; it is concurrent with
/// dc1's live copy, which dc1 pushes only to R (R keeps its tombstone). D, told nothing, keeps
/// writing on the live branch at dc1: start, two locations. Then everything heals at dc1; the
/// partner (D) is checked first.
#[test]
fn seq7_tombstone_uploaded_beside_a_live_branch_reaches_the_partner_and_the_copies_converge() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.hang_up(RIDER);
    r.connect(RIDER, DC2, false);
    r.submit(DRIVER, s, TripOp::Arrived);
    r.let_grace_expire();
    r.submit(RIDER, s, TripOp::Cancel);
    r.connect(RIDER, DC1, false);
    r.submit(DRIVER, s, TripOp::StartTrip);
    for at in [Q, P] {
        r.submit(DRIVER, s, TripOp::Location { at });
    }
    r.heal(DC1, &[DRIVER, RIDER]);
    r.check_contract(DC1, s, &[DRIVER, RIDER]);
}

/// Sequence 8 (found by the harness's `drain` scenario, not one of issue 12's seven). D1 waits
/// for work at dc2. R requests at dc1 (committed); then D1 offers itself at dc1, which
/// dispatches it, but what dc1 sends R is lost: R never persists the hand-over. R gives up
/// and takes its copy to dc2, which dispatches D2; what dc2 sends R is lost for now, so dc2's copy waits for R. D1
/// moves to dc2 (its datacenter drained it) and uploads its branch: concurrent and
/// uncommitted, it changes nothing there. D1 arrives: dc2's copy does not name it, and its
/// own does, so the op waits for the chain. Then R's link to dc2 heals: R persists dc2's copy,
/// which is committed and absorbs D1's branch. D1, still connected, must be told it was
/// removed there and then, and its op must end, instead of waiting for a chain that went on
/// without it (it did, for ever, before the fix: nothing told an uploader of an absorbed
/// branch that the copy no longer named).
#[test]
fn seq8_a_driver_whose_hand_over_the_rider_never_persisted_is_told_it_was_removed_and_its_op_ends()
{
    let mut r = Region::new();
    r.connect(DRIVER2, DC2, true);
    r.connect(RIDER, DC1, false);
    let s = TRIP;
    r.submit(
        RIDER,
        s,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.deaf.insert((RIDER, DC1));
    r.connect(DRIVER, DC1, true);
    r.timeout(RIDER);
    r.deaf.insert((RIDER, DC2));
    r.connect(RIDER, DC2, false);
    r.connect(DRIVER, DC2, true);
    let arrived = r.submit(DRIVER, s, TripOp::Arrived);
    let Some(arrived) = arrived else {
        r.fail("D1 could not queue its arrival".into());
    };
    r.deaf.remove(&(RIDER, DC2));
    r.connect(RIDER, DC2, false);
    r.tick(1_000);
    let told: Vec<_> = r.told.iter().filter(|(id, _)| *id == arrived).collect();
    if !matches!(told.as_slice(), [(_, Err(SubmitError::Removed))]) {
        r.fail(format!(
            "D1's arrival was not ended by a removal while D1 stayed connected: told {told:?}"
        ));
    }
    r.heal(DC2, &[RIDER, DRIVER, DRIVER2]);
    r.check_contract(DC2, s, &[RIDER, DRIVER, DRIVER2]);
}

/// Sequence 9 (the pattern the datacenter logs of a `failover --trips 10000 --seed 7` run
/// suggested: a driver the primary dispatched just before the kill, dispatched again by the
/// backup; the core handles it, and those unanswered ops were the harness stopping phones
/// while their partners' ops were pending). D waits for work at dc1. R requests
/// there and dc1 dispatches D; R persists the hand-over (committed), but what dc1 sends D is
/// lost. dc1 dies. D reaches dc2 first, holding nothing of R's trip, and offers itself; R2
/// requests there and dc2 dispatches D to R2's trip (committed by R2). Then R reaches dc2 with
/// its trip, which names D too. R2 cancels; the driver is on two trips, and every op of both
/// must still be answered.
#[test]
fn seq9_driver_dispatched_at_the_backup_while_its_earlier_trip_was_away_leaves_no_op_unanswered() {
    let mut r = Region::new();
    r.connect(DRIVER, DC1, true);
    r.connect(RIDER, DC1, false);
    r.deaf.insert((DRIVER, DC1));
    r.submit(
        RIDER,
        TRIP,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.freeze(DC1);
    r.deaf.clear();
    r.connect(DRIVER, DC2, true);
    r.connect(RIDER2, DC2, false);
    r.submit(
        RIDER2,
        TRIP2,
        TripOp::Request {
            pickup: Q,
            dropoff: P,
        },
    );
    r.connect(RIDER, DC2, false);
    let cancel = r.submit(RIDER2, TRIP2, TripOp::Cancel);
    r.tick(1_000);
    r.expect_answered(cancel, "R2");
    r.heal(DC2, &[RIDER, DRIVER, RIDER2]);
    r.check_contract(DC2, TRIP, &[RIDER, DRIVER]);
    r.check_contract(DC2, TRIP2, &[RIDER2, DRIVER]);
}

/// Control (not one of the seven): the same wiring and checks on a plain failover with no
/// split. At dc1 R requests, D is dispatched and arrives; dc1 freezes, both phones fail over
/// to dc2 and D goes on there. It passes on the current core, so a failure above is the
/// sequence, not the checks.
#[test]
fn control_failover_without_a_split_passes_every_check() {
    let mut r = Region::new();
    let s = r.dispatched_trip();
    r.submit(DRIVER, s, TripOp::Arrived);
    r.freeze(DC1);
    r.connect(DRIVER, DC2, false);
    r.connect(RIDER, DC2, false);
    r.submit(DRIVER, s, TripOp::StartTrip);
    r.submit(DRIVER, s, TripOp::Location { at: Q });
    r.heal(DC2, &[RIDER, DRIVER]);
    r.check_contract(DC2, s, &[RIDER, DRIVER]);
}

/// Sequence 10 (the 10,000-trip harness, 2026-12-04): a rider's create reaches the backup,
/// which creates the trip and answers; the rider's cancel is on its way when the backup
/// dispatches a driver who just connected, so the backup hears the cancel between the
/// dispatch and the rider's persist of it. The cancel must be answered.
#[test]
fn seq10_a_riders_cancel_that_crosses_its_dispatch_at_the_backup_is_answered() {
    let mut r = Region::new();
    r.connect(RIDER, DC2, false);
    r.submit(
        RIDER,
        TRIP,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    // Queued at the phone, not yet delivered: the dispatch below comes first.
    let cancel = r.queue(RIDER, TRIP, TripOp::Cancel);
    r.connect(DRIVER, DC2, true);
    r.tick(1_000);
    r.expect_answered(cancel, "R");
    r.heal(DC2, &[RIDER, DRIVER]);
    r.check_contract(DC2, TRIP, &[RIDER, DRIVER]);
}

/// Sequence 11 (the same harness runs): the primary took a rider's create but its reply was
/// lost, and it died; the rider resubmits the create at the backup, which creates the trip
/// and answers; the rider's cancel is on its way when the backup dispatches a driver who
/// just connected. The cancel must be answered.
#[test]
fn seq11_a_resubmitted_create_at_the_backup_then_a_cancel_crossing_its_dispatch_is_answered() {
    let mut r = Region::new();
    r.connect(RIDER, DC1, false);
    r.deaf.insert((RIDER, DC1));
    r.submit(
        RIDER,
        TRIP,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.freeze(DC1);
    r.deaf.clear();
    r.connect(RIDER, DC2, false);
    let cancel = r.queue(RIDER, TRIP, TripOp::Cancel);
    r.connect(DRIVER, DC2, true);
    r.tick(1_000);
    r.expect_answered(cancel, "R");
    r.heal(DC2, &[RIDER, DRIVER]);
    r.check_contract(DC2, TRIP, &[RIDER, DRIVER]);
}

/// Sequence 12 (the same harness runs): sequence 9's driver, dispatched at the primary to R's
/// trip without hearing of it, reaches the backup free; R2 requests there and its cancel is on
/// its way when the backup dispatches that driver to it; then R arrives with the trip naming
/// the same driver. R2's cancel must be answered.
#[test]
fn seq12_a_cancel_crossing_the_dispatch_of_a_driver_whose_earlier_trip_arrives_later_is_answered() {
    let mut r = Region::new();
    r.connect(DRIVER, DC1, true);
    r.connect(RIDER, DC1, false);
    r.deaf.insert((DRIVER, DC1));
    r.submit(
        RIDER,
        TRIP,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    r.freeze(DC1);
    r.deaf.clear();
    r.connect(RIDER2, DC2, false);
    r.submit(
        RIDER2,
        TRIP2,
        TripOp::Request {
            pickup: Q,
            dropoff: P,
        },
    );
    // Queued at R2's phone, not yet delivered: the driver's dispatch comes first.
    let cancel = r.queue(RIDER2, TRIP2, TripOp::Cancel);
    r.connect(DRIVER, DC2, true);
    r.connect(RIDER, DC2, false);
    r.tick(1_000);
    r.expect_answered(cancel, "R2");
    r.heal(DC2, &[RIDER, DRIVER, RIDER2]);
    r.check_contract(DC2, TRIP, &[RIDER, DRIVER]);
    r.check_contract(DC2, TRIP2, &[RIDER2, DRIVER]);
}

/// Sequence 13 (the 10,000-trip runs' stuck Cancels, 2026-12-04): as sequence 10, but the
/// driver hears nothing the backup sends it (its dispatch, the rider's cancel, the news that
/// the hand-over is committed), gives the backup up and reconnects to it holding nothing of
/// the trip. The rider's cancel is applied after the hand-over, so only the driver's
/// persisting commits it: the backup must bring the driver the trip again.
#[test]
fn seq13_a_cancel_after_a_hand_over_the_driver_never_heard_of_is_answered_once_it_reconnects() {
    let mut r = Region::new();
    r.connect(RIDER, DC2, false);
    r.submit(
        RIDER,
        TRIP,
        TripOp::Request {
            pickup: P,
            dropoff: Q,
        },
    );
    let cancel = r.queue(RIDER, TRIP, TripOp::Cancel);
    r.deaf.insert((DRIVER, DC2));
    r.connect(DRIVER, DC2, true);
    r.tick(1_000);
    r.timeout(DRIVER);
    r.deaf.clear();
    r.connect(DRIVER, DC2, true);
    r.tick(1_000);
    r.expect_answered(cancel, "R");
    r.heal(DC2, &[RIDER, DRIVER]);
    r.check_contract(DC2, TRIP, &[RIDER, DRIVER]);
}
