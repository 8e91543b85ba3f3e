//! Fuzz entry points shared by the property tests (`common/tests/hostile_input.rs`, stable
//! Rust, run in CI), the long stable-Rust random loop in the same file, and the cargo-fuzz
//! targets in `fuzz/` (nightly). Each takes arbitrary bytes, feeds them to one entry point a
//! peer can reach, and panics if an invariant breaks; a panic inside the library is a bug
//! too. (Panicking is these functions' way to report: they are harnesses, called by fuzzers
//! and property tests only.) Here in the testkit, a public item, so that the fuzz crate and
//! the property tests use one copy without reaching into another crate's test files.
//!
//! - [`frame_bytes`]: the frame codec (a device's bytes, a datacenter's bytes);
//! - [`digest_bytes`]: opening a sealed digest a device uploads (decoded from bytes, or a
//!   genuine digest with bytes flipped);
//! - [`core_script`]: two datacenter cores driven by a script of device inputs decoded from
//!   the bytes (connects with uploads of genuine, stale and tampered digests, submits, acks,
//!   availability, disconnects, time), checking the contract after every step.

use lifeboat_common::codec::{decode_exact, encode, frame_len, MAX_FRAME_BYTES};
use lifeboat_common::datacenter::{DatacenterCore, DcConfig, DcEvent, DcStats};
use lifeboat_common::digest::{DigestBody, SealedDigest, MAX_DIGEST_BYTES};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::{ClientMsg, OfferedCopy, OpOutcome, ServerMsg, UploadOutcome};
use lifeboat_common::{
    DatacenterId, DeviceId, GeoPoint, SessionId, Trip, TripOp, TripState, VersionOrder,
    VersionVector,
};
use std::collections::{HashMap, HashSet};

/// A fixed keyring (fuzzing must be deterministic): key 1 open-only, key 2 active.
pub fn fixed_keyring() -> Keyring {
    let text = format!(
        "lifeboat-keyring v1\nauth {}\nkey 1 {}\nkey 2 {} active\n",
        "a1".repeat(32),
        "b2".repeat(32),
        "c3".repeat(32)
    );
    match Keyring::parse(&text) {
        Ok(k) => k,
        Err(e) => panic!("fixed keyring: {e}"),
    }
}

/// Frame codec: never panics; a decoded message re-encodes to a frame that decodes to the
/// same message; a length prefix over the limit is refused.
pub fn frame_bytes(data: &[u8]) {
    if data.len() >= 4 {
        let prefix = [data[0], data[1], data[2], data[3]];
        let claimed = u32::from_be_bytes(prefix) as usize;
        assert_eq!(frame_len(prefix).is_ok(), claimed <= MAX_FRAME_BYTES);
    }
    if let Ok(m) = decode_exact::<ClientMsg<Trip>>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        let back: ClientMsg<Trip> = decode_exact(&again, MAX_FRAME_BYTES).expect("round trip");
        assert_eq!(back, m);
    }
    if let Ok(m) = decode_exact::<ServerMsg<Trip>>(data, MAX_FRAME_BYTES) {
        let again = encode(&m).expect("a decoded message encodes");
        let back: ServerMsg<Trip> = decode_exact(&again, MAX_FRAME_BYTES).expect("round trip");
        assert_eq!(back, m);
    }
    let _ = decode_exact::<SealedDigest>(data, MAX_DIGEST_BYTES);
}

/// A genuine digest to mutate.
pub fn genuine_digest(keyring: &Keyring) -> SealedDigest {
    let mut version = VersionVector::new();
    version.bump(ReplicaId(3)).expect("bump");
    let header = lifeboat_common::digest::DigestHeader {
        session: SessionId(77),
        version,
        rider: DeviceId(1),
        driver: Some(DeviceId(2)),
        tombstone: false,
    };
    let state = match <Trip as lifeboat_common::Application>::create(
        &TripOp::Request {
            pickup: GeoPoint {
                lat_e6: 1,
                lon_e6: 2,
            },
            dropoff: GeoPoint {
                lat_e6: 3,
                lon_e6: 4,
            },
        },
        5,
    ) {
        Ok(s) => s,
        Err(e) => panic!("create: {e}"),
    };
    let body = DigestBody {
        state,
        dedup: vec![lifeboat_common::dedup::DedupEntry::new(DeviceId(1))],
    };
    SealedDigest::seal(keyring, header, &body, 5_000).expect("seal")
}

/// Digest opening: never panics; only the genuine, unchanged digest opens.
pub fn digest_bytes(data: &[u8]) {
    let keyring = fixed_keyring();
    if let Ok(d) = decode_exact::<SealedDigest>(data, MAX_DIGEST_BYTES) {
        // Bytes off the wire never open: forging needs the region key.
        assert!(
            d.open::<TripState>(&keyring).is_err(),
            "forged digest opened"
        );
    }
    // Flip bits of a genuine digest's encoding at positions the bytes choose.
    let genuine = genuine_digest(&keyring);
    let mut bytes = encode(&genuine).expect("encode");
    for pair in data.chunks(2) {
        let pos = usize::from(pair[0]) * 7 % bytes.len();
        bytes[pos] ^= pair.get(1).copied().unwrap_or(1);
    }
    if let Ok(d) = decode_exact::<SealedDigest>(&bytes, MAX_DIGEST_BYTES) {
        let opened = d.open::<TripState>(&keyring);
        if d == genuine {
            assert!(opened.is_ok(), "genuine digest failed to open");
        } else {
            assert!(opened.is_err(), "changed digest opened: {d:?}");
        }
    }
}

/// Reads script bytes; returns 0 when they run out.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

const DEVICES: u8 = 4;
const SESSIONS: u8 = 8;
const MAX_SESSIONS: usize = 6;
const POOL: usize = 48;

fn point(b: u8) -> GeoPoint {
    match b % 4 {
        // Near each other (small steps), far (over the jump limit), out of range.
        0 => GeoPoint {
            lat_e6: 52_520_000,
            lon_e6: 13_405_000,
        },
        1 => GeoPoint {
            lat_e6: 52_520_000 + i32::from(b) * 90,
            lon_e6: 13_405_000,
        },
        2 => GeoPoint {
            lat_e6: 10_000_000,
            lon_e6: 13_405_000,
        },
        _ => GeoPoint {
            lat_e6: i32::MAX,
            lon_e6: i32::MIN,
        },
    }
}

fn op(c: &mut Cursor) -> TripOp {
    match c.next() % 7 {
        0 | 1 => TripOp::Request {
            pickup: point(c.next()),
            dropoff: point(c.next()),
        },
        2 => TripOp::Arrived,
        3 => TripOp::StartTrip,
        4 => TripOp::Location {
            at: point(c.next()),
        },
        5 => TripOp::Complete,
        _ => TripOp::Cancel,
    }
}

/// Two datacenter cores and what the script has seen of them.
struct World {
    keyring: Keyring,
    dcs: [DatacenterCore<Trip>; 2],
    now: u64,
    /// Digests devices could hold (from pushes and replies), oldest first.
    pool: Vec<SealedDigest>,
    /// Ops reported applied, per datacenter (C2: never twice at one datacenter).
    applied: [HashSet<(SessionId, DeviceId, u64)>; 2],
    /// Newest version and tombstone flag seen per session, per datacenter (C3).
    seen: [HashMap<SessionId, (VersionVector, bool)>; 2],
    /// Ops submitted and answers received, per datacenter.
    submitted: [u64; 2],
    answered: [u64; 2],
    /// The seq each device would use next per session (as its edge core would: from the
    /// datacenter's `your_last_seq`).
    next_seq: HashMap<(DeviceId, SessionId), u64>,
    /// Every op submitted per (datacenter, session, device, seq), to check roles (a device
    /// may reuse a seq with another op; which one was applied is not known here).
    ops: HashMap<(usize, SessionId, DeviceId, u64), Vec<TripOp>>,
    steps: u64,
    /// Print every step and effect (`LIFEBOAT_FUZZ_TRACE=1`), to debug a failing script.
    trace: bool,
}

fn dc_config(i: u16) -> DcConfig {
    let mut cfg = DcConfig::new(DatacenterId(i + 1), ReplicaId(u32::from(i) + 1));
    cfg.max_sessions = MAX_SESSIONS;
    cfg.max_active_sessions_per_device = 3;
    cfg.session_creates_per_minute = 4;
    if i == 1 {
        cfg.durability = lifeboat_common::datacenter::Durability::EdgeAck(1);
    }
    cfg
}

impl World {
    fn new() -> Self {
        let keyring = fixed_keyring();
        Self {
            dcs: [
                DatacenterCore::new(dc_config(0), keyring.clone()),
                DatacenterCore::new(dc_config(1), keyring.clone()),
            ],
            keyring,
            now: 1_000,
            pool: Vec::new(),
            applied: [HashSet::new(), HashSet::new()],
            seen: [HashMap::new(), HashMap::new()],
            submitted: [0; 2],
            answered: [0; 2],
            next_seq: HashMap::new(),
            ops: HashMap::new(),
            steps: 0,
            trace: std::env::var_os("LIFEBOAT_FUZZ_TRACE").is_some(),
        }
    }

    fn pick_digest(&self, c: &mut Cursor) -> Option<SealedDigest> {
        if self.pool.is_empty() {
            return None;
        }
        let mut d = self.pool[usize::from(c.next()) % self.pool.len()].clone();
        match c.next() % 6 {
            0 => {
                if let Some(b) = d.ciphertext.first_mut() {
                    *b ^= 0x40;
                }
            }
            1 => d.header.session = SessionId(1 + u64::from(c.next() % SESSIONS)),
            2 => d.header.tombstone = !d.header.tombstone,
            3 => d.key_id = u32::from(c.next() % 4),
            _ => {}
        }
        Some(d)
    }

    fn step(&mut self, c: &mut Cursor) {
        self.steps += 1;
        let dc = usize::from(c.next() % 2);
        let device = DeviceId(1 + u64::from(c.next() % DEVICES));
        let now = self.now;
        let mut uploaded: Option<Vec<SealedDigest>> = None;
        match c.next() % 9 {
            0 => {
                let available = c.next() & 1 == 0;
                let n = c.next() % 3;
                let digests: Vec<_> = (0..n).filter_map(|_| self.pick_digest(c)).collect();
                uploaded = Some(digests.clone());
                if self.trace {
                    let what: Vec<_> = digests
                        .iter()
                        .map(|d| {
                            (
                                d.header.session,
                                d.header.version.to_string(),
                                d.header.rider,
                                d.header.driver,
                                d.header.tombstone,
                            )
                        })
                        .collect();
                    eprintln!("dc{dc} t={now} connect {device} available={available} {what:?}");
                }
                // A hostile device may claim anything about the chain.
                let claim = c.next() & 1 == 0;
                let copies = digests
                    .into_iter()
                    .map(|digest| {
                        // ... also that some version (its own or another's) is committed.
                        let known_committed = if c.next() & 1 == 0 {
                            digest.header.version.clone()
                        } else {
                            Default::default()
                        };
                        OfferedCopy {
                            digest,
                            committed: claim,
                            known_committed,
                            known_committed_driver: None,
                        }
                    })
                    .collect();
                self.dcs[dc].handle_connect(now, device, available, copies);
            }
            1..=4 => {
                let session = SessionId(1 + u64::from(c.next() % SESSIONS));
                // Mostly the seq an honest device would use; sometimes anything.
                let seq = match c.next() % 8 {
                    0 => u64::from(c.next()),
                    1 => u64::MAX - u64::from(c.next() % 2),
                    _ => *self.next_seq.get(&(device, session)).unwrap_or(&1),
                };
                let op = op(c);
                self.ops
                    .entry((dc, session, device, seq))
                    .or_default()
                    .push(op.clone());
                if self.trace {
                    eprintln!("dc{dc} t={now} submit {device} {session} seq {seq} {op:?}");
                }
                self.submitted[dc] += 1;
                self.dcs[dc].handle_submit(now, device, session, seq, op);
            }
            5 => {
                let session = SessionId(1 + u64::from(c.next() % SESSIONS));
                let version = match self.pick_digest(c) {
                    Some(d) if c.next() & 1 == 0 => d.header.version,
                    // Whatever the script says, sorted or not, zero or not.
                    _ => decode_exact(&[1, c.next() % 4, c.next()], 16).unwrap_or_default(),
                };
                let certified = c.next() & 1 == 0;
                self.dcs[dc].handle_ack(device, session, version, certified);
            }
            6 => {
                let a = c.next() & 1 == 0;
                if self.trace {
                    eprintln!("dc{dc} t={now} {device} available={a}");
                }
                self.dcs[dc].handle_set_available(now, device, a)
            }
            7 => {
                if self.trace {
                    eprintln!("dc{dc} t={now} disconnect {device}");
                }
                self.dcs[dc].handle_disconnect(device)
            }
            _ => {
                self.now += u64::from(c.next()) * 20;
                if self.trace {
                    eprintln!("dc{dc} tick t={}", self.now);
                }
                self.dcs[dc].handle_tick(self.now);
            }
        }
        self.check(dc, uploaded);
    }

    /// An upload's outcome agrees with what the datacenter holds now.
    fn check_upload(&self, dc: usize, outcome: &UploadOutcome, d: &SealedDigest) {
        let held = self.dcs[dc]
            .session(d.header.session)
            .map(|(h, _)| h.clone());
        let opens = d.open::<TripState>(&self.keyring).is_ok();
        match outcome {
            UploadOutcome::Refused(_) => {}
            _ => assert!(
                opens,
                "a digest that does not open was accepted: {outcome:?}"
            ),
        }
        let Some(held) = held else {
            assert!(
                matches!(outcome, UploadOutcome::Refused(_)),
                "{outcome:?} but the session is not held"
            );
            return;
        };
        // Later uploads in the same connect may have moved the session on; the held copy
        // can only be at least as new as what each outcome says.
        let order = held.version.compare(&d.header.version);
        match outcome {
            UploadOutcome::Restored | UploadOutcome::Current => assert!(
                matches!(
                    order,
                    VersionOrder::Equal | VersionOrder::Newer | VersionOrder::Concurrent
                ),
                "{outcome:?} but held {} vs uploaded {}",
                held.version,
                d.header.version
            ),
            UploadOutcome::Stale => assert!(
                order == VersionOrder::Newer || held.tombstone,
                "Stale but held {} vs uploaded {}",
                held.version,
                d.header.version
            ),
            // A later upload of the same connect may have replaced a tombstone nobody
            // confirmed with a committed copy above it.
            UploadOutcome::Tombstoned => assert!(
                held.tombstone || order == VersionOrder::Newer,
                "Tombstoned but held is live and not newer"
            ),
            UploadOutcome::Diverged | UploadOutcome::Refused(_) | UploadOutcome::Removed => {}
        }
    }

    /// The contract after one step at datacenter `dc`.
    fn check(&mut self, dc: usize, uploaded: Option<Vec<SealedDigest>>) {
        let fx = self.dcs[dc].poll_effects();
        if self.trace {
            for (d, m) in &fx.send {
                let short = match m {
                    ServerMsg::OpResult {
                        session,
                        seq,
                        outcome,
                        update,
                    } => format!(
                        "OpResult {session} seq {seq} {outcome:?} {:?}",
                        update.as_ref().map(|u| (
                            u.digest.header.version.to_string(),
                            u.digest.header.rider,
                            u.digest.header.driver,
                            u.view.phase
                        ))
                    ),
                    ServerMsg::Push { update } => format!(
                        "Push {} {} rider {} driver {:?} {:?}",
                        update.digest.header.session,
                        update.digest.header.version,
                        update.digest.header.rider,
                        update.digest.header.driver,
                        update.view.phase
                    ),
                    ServerMsg::Welcome { results, .. } => format!("Welcome {results:?}"),
                    other => format!("{other:?}"),
                };
                eprintln!("    -> {d}: {short}");
            }
            for e in &fx.events {
                eprintln!("    event {e:?}");
            }
        }
        // C2 per datacenter is judged per branch: a copy it replaced with an upload may have
        // been on a branch dropped for the committed chain (docs/PROTOCOL.md), holding ops
        // nobody was told of, which the chain may apply again. (C2 on the committed history
        // is judged by the scenario tests and the simulation's checker.)
        for e in &fx.events {
            if let DcEvent::ChainAdopted { session, .. } | DcEvent::Restored { session, .. } = e {
                self.applied[dc].retain(|(s, _, _)| s != session);
            }
        }
        let mut persisted_last = HashMap::new();
        for (session, d) in &fx.persist {
            assert_eq!(*session, d.header.session, "persisted under another key");
            assert!(d.encoded_len() <= MAX_DIGEST_BYTES);
            let opened = d.open::<TripState>(&self.keyring);
            assert!(opened.is_ok(), "persisted digest does not open: {opened:?}");
            persisted_last.insert(*session, d.clone());
        }
        for (device, msg) in &fx.send {
            let update = match msg {
                ServerMsg::Push { update } => Some(update),
                ServerMsg::OpResult { update, .. } => update.as_ref(),
                _ => None,
            };
            if let Some(u) = update {
                let next = u.your_last_seq.saturating_add(1);
                self.next_seq
                    .insert((*device, u.digest.header.session), next);
            }
            if let ServerMsg::OpResult { session, seq, .. } = msg {
                let e = self.next_seq.entry((*device, *session)).or_insert(1);
                *e = (*e).max(seq.saturating_add(1));
            }
            let digest = update.map(|u| &u.digest);
            if let Some(d) = digest {
                // C4: a device only ever receives digests of sessions it takes part in.
                assert!(
                    d.header.role_of(*device).is_some(),
                    "{device} got the digest of {} it is not part of",
                    d.header.session
                );
                if self.pool.len() >= POOL {
                    self.pool.remove(0);
                }
                self.pool.push(d.clone());
            }
            match msg {
                ServerMsg::OpResult {
                    session,
                    seq,
                    outcome,
                    ..
                } => {
                    self.answered[dc] += 1;
                    if *outcome == OpOutcome::Applied {
                        // C2: applied at most once per datacenter.
                        assert!(
                            self.applied[dc].insert((*session, *device, *seq)),
                            "op ({session}, {device}, {seq}) applied twice at dc{dc}"
                        );
                        // Only participants' ops are applied, and only in their role.
                        let role = self.dcs[dc].role_of(*session, *device);
                        assert!(
                            role.is_some(),
                            "{device} applied an op to {session} without taking part"
                        );
                        let ops = self.ops.get(&(dc, *session, *device, *seq));
                        let driver_only = ops.is_some_and(|ops| {
                            ops.iter().all(|op| {
                                matches!(
                                    op,
                                    TripOp::Arrived
                                        | TripOp::StartTrip
                                        | TripOp::Location { .. }
                                        | TripOp::Complete
                                )
                            })
                        });
                        assert!(
                            !driver_only || role == Some(lifeboat_common::Role::Driver),
                            "{ops:?} applied from {device} as {role:?} on {session}"
                        );
                    }
                }
                ServerMsg::Welcome { results, .. } => {
                    let up = uploaded.as_deref().unwrap_or_default();
                    assert_eq!(results.len(), up.len(), "one result per upload");
                    for (r, d) in results.iter().zip(up) {
                        assert_eq!(r.session, d.header.session);
                        self.check_upload(dc, &r.outcome, d);
                    }
                }
                _ => {}
            }
        }
        assert!(
            self.answered[dc] <= self.submitted[dc],
            "more op answers than ops at dc{dc}"
        );
        let core = &self.dcs[dc];
        assert!(core.session_count() <= MAX_SESSIONS);
        assert!(core.create_budget_len() <= usize::from(DEVICES));
        assert!(core.dispatch_pool_len() <= 2 * usize::from(DEVICES) + 65);
        for (id, header, _) in core.sessions() {
            assert_ne!(
                Some(header.rider),
                header.driver,
                "rider assigned as driver"
            );
            let mut tomb_known = false;
            if let Some((old, tomb)) = self.seen[dc].get(&id) {
                tomb_known = *tomb;
                // C3: never older, never revived.
                assert!(
                    header.version.covers(old),
                    "{id} went back from {old} to {} at dc{dc}",
                    header.version
                );
                // A tombstone this datacenter knows is committed is final. (One it made on a
                // branch nobody confirmed gives way to a committed copy: docs/PROTOCOL.md.)
                assert!(!tomb || header.tombstone, "{id} revived at dc{dc}");
            }
            if let Some(p) = persisted_last.get(&id) {
                assert_eq!(&p.header, header, "persisted copy is not the held one");
            }
            let final_here = header.tombstone && (tomb_known || core.is_confirmed(id));
            self.seen[dc].insert(id, (header.version.clone(), final_here));
        }
    }
}

/// Two datacenter cores driven by a script decoded from `data` (see the module docs).
/// Returns both cores' counters (how much of the protocol the script reached).
pub fn core_script(data: &[u8]) -> DcStats {
    let mut world = World::new();
    let mut c = Cursor { data, pos: 0 };
    // Bounded: each step consumes at least one byte.
    while !c.done() {
        world.step(&mut c);
    }
    let mut total = world.dcs[0].stats().clone();
    add_stats(&mut total, world.dcs[1].stats());
    total
}

/// Add `b`'s counters to `a` (the ones that show how far a script got).
pub fn add_stats(a: &mut DcStats, b: &DcStats) {
    a.ops_applied += b.ops_applied;
    a.ops_rejected += b.ops_rejected;
    a.ops_duplicate += b.ops_duplicate;
    a.sessions_created += b.sessions_created;
    a.sessions_restored += b.sessions_restored;
    a.uploads_stale += b.uploads_stale;
    a.uploads_refused += b.uploads_refused;
    a.uploads_diverged += b.uploads_diverged;
    a.dispatched += b.dispatched;
    a.server_changes_committed += b.server_changes_committed;
    a.chain_adopted += b.chain_adopted;
    a.confirmations += b.confirmations;
    a.limited_sessions_per_device += b.limited_sessions_per_device;
    a.limited_create_rate += b.limited_create_rate;
    a.limited_sessions += b.limited_sessions;
}
