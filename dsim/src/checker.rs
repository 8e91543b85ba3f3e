//! The history checker: what the devices were told and saw, against what the datacenters and
//! the devices hold at the end. Strict (it excuses nothing) and independent (it decides with
//! its own arithmetic, never with the replication core's rules).
//!
//! Each device records a [`History`] of [`Event`]s: the ops its app submitted, what the edge
//! client answered (committed with a version, or refused), every copy of a session it
//! persisted (version, phase, committed or tentative), the server-side changes it was told
//! are committed, and the conflicts it was told of. After a run, [`check`] compares the
//! histories with the final stores ([`FinalState`]: every datacenter's copies, from
//! `lifeboat_server::service::read_store`, and every device's held copies) and reports every
//! breach of the contract, for every session:
//!
//! - the final copy: the session's devices must end with copies that are not concurrent with
//!   each other, and some copy (at a datacenter or a device) must dominate all of them; the
//!   newest such copy is the session's final copy ([`Kind::NotConverged`] otherwise). The
//!   checker chooses it, not the core;
//! - C1 [`Kind::CommittedOpLost`]: an op reported committed is not applied in the final copy
//!   (the raw watermark of its device is below its seq, or its outcome bit says rejected); the
//!   report says if it lives only on a datacenter's branch concurrent with the final copy;
//! - C2 [`Kind::AppliedTwice`]: a copy (final, at a datacenter or on a device, or one a device
//!   persisted during the run) applied more location reports than the driver had submitted,
//!   or a device's watermark ran past every op it submitted;
//! - C3 [`Kind::VersionRegressed`]: the versions a device was told are committed (a commit's
//!   version, a persisted copy marked committed, a server change's commit) went back or
//!   sideways, a device's store ends below a version it was told is committed, or the final
//!   copy does not dominate one of them; [`Kind::TombstoneResurrected`]: a session whose
//!   committed copy was a tombstone is live again (finally, or on a device later);
//! - [`Kind::SessionMissing`]: a session a device committed to or held is in no datacenter;
//! - [`Kind::RefusedButApplied`]: the app was told a datacenter rejected an op that the final
//!   copy records as applied.
//!
//! A surfaced conflict excuses nothing: it is counted ([`Summary::sessions_with_conflicts`]).
//! Tentative copies (persisted, not marked committed) replaced by one that does not dominate
//! them are allowed and counted ([`Summary::tentative_replaced`]); datacenter copies
//! concurrent with the final copy are counted ([`Summary::sessions_with_stale_branch`]).
//!
//! Independence: version dominance is computed here from [`VersionVector::entries`]
//! ([`order`]), and dedup watermarks are read as raw fields ([`outcome`]: bit `i` of
//! `applied_bits` is the outcome of `last_seq - i`, over a [`WINDOW`]-op window). Only plain
//! data types come from `lifeboat-common` and `lifeboat-server`; no replication rule does (a
//! unit test reads this file to keep it so).
//!
//! Each [`Violation`] carries its session and the shortest history that shows it: only the
//! events of that session that establish the breach, plus the final copy.

use lifeboat_common::dedup::DedupEntry;
use lifeboat_common::digest::{DigestBody, DigestHeader};
use lifeboat_common::edge::SubmitError;
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::{
    DatacenterId, DeviceId, OpId, SessionId, TripPhase, TripState, VersionVector,
};
use lifeboat_server::service::StoredSession;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The kind of an op, without its payload (histories stay short and readable).
pub use lifeboat_common::trip::TripOpKind as OpKind;

/// Outcomes a watermark remembers per device (the digest format: a 64-bit mask).
pub const WINDOW: u64 = 64;

/// Something one device did or saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The app asked the client to submit an op (recorded before the client answers: a
    /// crash may come between, and the op may still go out from the device's outbox).
    Submit { session: SessionId, kind: OpKind },
    /// The client queued the op durably under this id.
    Accepted { op: OpId, kind: OpKind },
    /// The client reported the op committed: applied, and a digest of `version` covering it
    /// persisted on the device.
    Committed {
        op: OpId,
        version: VersionVector,
        duplicate: bool,
    },
    /// The client reported the op refused or failed.
    Refused { op: OpId, reason: SubmitError },
    /// The device persisted a copy of the session (`committed`: the datacenter marked it
    /// committed; otherwise it is tentative).
    Saw {
        session: SessionId,
        version: VersionVector,
        phase: TripPhase,
        locations: u32,
        committed: bool,
    },
    /// The device was told a server-side change (dispatch) of this version is committed.
    ServerCommitted {
        session: SessionId,
        version: VersionVector,
    },
    /// The device was told its copy and the datacenter's diverged.
    Conflict {
        session: SessionId,
        ours: VersionVector,
        theirs: VersionVector,
    },
    /// The device's app restarted on the same store.
    Restarted,
}

impl Event {
    /// The session the event is about (`None`: about the device).
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Event::Submit { session, .. }
            | Event::Saw { session, .. }
            | Event::ServerCommitted { session, .. }
            | Event::Conflict { session, .. } => Some(*session),
            Event::Accepted { op, .. }
            | Event::Committed { op, .. }
            | Event::Refused { op, .. } => Some(op.session),
            Event::Restarted => None,
        }
    }
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Simulated (or wall) milliseconds since the start of the run.
    pub at_ms: u64,
    pub device: DeviceId,
    pub event: Event,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>4}.{:03}s {} ",
            self.at_ms / 1000,
            self.at_ms % 1000,
            self.device
        )?;
        match &self.event {
            Event::Submit { kind, .. } => write!(f, "submit {kind:?}"),
            Event::Accepted { op, kind } => write!(f, "queued {kind:?} as #{}", op.seq),
            Event::Committed {
                op,
                version,
                duplicate,
            } => write!(
                f,
                "committed #{} at {version}{}",
                op.seq,
                if *duplicate { " (duplicate)" } else { "" }
            ),
            Event::Refused { op, reason } => write!(f, "refused #{}: {reason}", op.seq),
            Event::Saw {
                version,
                phase,
                locations,
                committed,
                ..
            } => write!(
                f,
                "holds {version} {phase:?}, {locations} locations{}",
                if *committed { "" } else { " (tentative)" }
            ),
            Event::ServerCommitted { version, .. } => {
                write!(f, "told server change {version} committed")
            }
            Event::Conflict { ours, theirs, .. } => {
                write!(f, "conflict: held {ours}, datacenter has {theirs}")
            }
            Event::Restarted => write!(f, "app restarted"),
        }
    }
}

/// Every device's events, in the order they were recorded (time order per device).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, at_ms: u64, device: DeviceId, event: Event) {
        self.entries.push(Entry {
            at_ms,
            device,
            event,
        });
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The events of one session, with the restarts of the devices taking part.
    pub fn of_session(&self, session: SessionId) -> Vec<&Entry> {
        let devices: BTreeSet<DeviceId> = self
            .entries
            .iter()
            .filter(|e| e.event.session() == Some(session))
            .map(|e| e.device)
            .collect();
        self.entries
            .iter()
            .filter(|e| match e.event.session() {
                Some(s) => s == session,
                None => devices.contains(&e.device),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The checker's own arithmetic: version dominance and watermarks, from raw data.

/// How two versions relate, computed here from their entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Equal,
    /// The first strictly dominates the second.
    Newer,
    /// The second strictly dominates the first.
    Older,
    /// Neither dominates: two branches.
    Concurrent,
}

fn counter(v: &VersionVector, r: ReplicaId) -> u64 {
    v.entries()
        .iter()
        .find(|(x, _)| *x == r)
        .map_or(0, |(_, c)| *c)
}

/// Compare `a` with `b` slot by slot (a missing slot counts 0).
pub fn order(a: &VersionVector, b: &VersionVector) -> Order {
    let slots: BTreeSet<ReplicaId> = a.entries().iter().chain(b.entries()).map(|e| e.0).collect();
    let (mut above, mut below) = (false, false);
    for r in slots {
        let (x, y) = (counter(a, r), counter(b, r));
        above |= x > y;
        below |= x < y;
    }
    match (above, below) {
        (false, false) => Order::Equal,
        (true, false) => Order::Newer,
        (false, true) => Order::Older,
        (true, true) => Order::Concurrent,
    }
}

/// `a` is `b` or descends from it (every slot at least as high).
pub fn dominates(a: &VersionVector, b: &VersionVector) -> bool {
    matches!(order(a, b), Order::Equal | Order::Newer)
}

/// What a copy's raw watermarks say about one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected,
    /// The watermark of its device is below its seq (or there is none).
    NotProcessed,
    /// Processed longer ago than the window remembers.
    OutsideWindow,
}

/// Read `seq` of `device` off `dedup`: `last_seq` is the highest seq processed, bit `i` of
/// `applied_bits` the outcome of `last_seq - i` (1 applied, 0 rejected).
pub fn outcome(dedup: &[DedupEntry], device: DeviceId, seq: u64) -> Outcome {
    let Some(m) = dedup.iter().find(|m| m.device == device) else {
        return Outcome::NotProcessed;
    };
    if seq == 0 || seq > m.last_seq {
        return Outcome::NotProcessed;
    }
    let age = m.last_seq - seq;
    if age >= WINDOW {
        Outcome::OutsideWindow
    } else if (m.applied_bits >> age) & 1 == 1 {
        Outcome::Applied
    } else {
        Outcome::Rejected
    }
}

// ---------------------------------------------------------------------------------------
// The final state.

/// Who holds a copy at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    Dc(DatacenterId),
    Device(DeviceId),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Dc(dc) => write!(f, "{dc}"),
            Holder::Device(d) => write!(f, "{d}"),
        }
    }
}

/// A copy a device holds at the end (`committed`: as the device marked it).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceCopy {
    pub stored: StoredSession,
    pub committed: bool,
}

/// The stores at the end of a run: every datacenter's copy of every session and, when the
/// devices' stores were read, every device's.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    dcs: BTreeMap<SessionId, Vec<(DatacenterId, StoredSession)>>,
    /// `None`: the devices' stores were not read; their final copies are the last ones their
    /// histories show them persisting.
    devices: Option<BTreeMap<SessionId, Vec<(DeviceId, DeviceCopy)>>>,
}

impl FinalState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add what one datacenter's store holds (`lifeboat_server::service::read_store`).
    pub fn add_store(&mut self, dc: DatacenterId, sessions: Vec<StoredSession>) {
        for s in sessions {
            self.dcs.entry(s.0.session).or_default().push((dc, s));
        }
    }

    /// Add what one device's store holds (opened digests, with the device's committed mark).
    /// Once called (even with nothing), every device's final copies come from the stores.
    pub fn add_device(&mut self, device: DeviceId, sessions: Vec<DeviceCopy>) {
        let all = self.devices.get_or_insert_with(BTreeMap::new);
        for c in sessions {
            all.entry(c.stored.0.session).or_default().push((device, c));
        }
    }

    /// Whether the devices' stores were read.
    pub fn devices_read(&self) -> bool {
        self.devices.is_some()
    }

    /// Every session some store holds.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        let mut all: BTreeSet<SessionId> = self.dcs.keys().copied().collect();
        if let Some(d) = &self.devices {
            all.extend(d.keys().copied());
        }
        all.into_iter()
    }

    /// The datacenters' copies of `session`.
    pub fn copies(&self, session: SessionId) -> &[(DatacenterId, StoredSession)] {
        self.dcs.get(&session).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The devices' copies of `session` (empty if the stores were not read).
    pub fn device_copies(&self, session: SessionId) -> &[(DeviceId, DeviceCopy)] {
        self.devices
            .as_ref()
            .and_then(|d| d.get(&session))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// C1.
    CommittedOpLost,
    /// C2.
    AppliedTwice,
    /// C3.
    VersionRegressed,
    /// C3.
    TombstoneResurrected,
    /// Every active (and finished) session stays present.
    SessionMissing,
    /// The app was told "rejected" for an op the final copy applied.
    RefusedButApplied,
    /// After the settle phase the devices hold concurrent copies, or no copy anywhere
    /// dominates every device's copy: the session has no final copy.
    NotConverged,
}

impl Kind {
    pub fn contract(&self) -> &'static str {
        match self {
            Kind::CommittedOpLost => "C1",
            Kind::AppliedTwice => "C2",
            Kind::VersionRegressed | Kind::TombstoneResurrected => "C3",
            Kind::SessionMissing => "presence",
            Kind::RefusedButApplied => "C1/C2",
            Kind::NotConverged => "C1/C3",
        }
    }
}

/// One breach, with the shortest history that shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub kind: Kind,
    pub session: SessionId,
    pub detail: String,
    /// Only the events that establish the breach, in recorded order.
    pub history: Vec<Entry>,
    /// How many events of this session were recorded in all.
    pub session_events: usize,
    /// The final copy it was judged against (`holder version phase ...`), if any.
    pub final_copy: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {:?} in session {}: {}",
            self.kind.contract(),
            self.kind,
            self.session,
            self.detail
        )?;
        writeln!(
            f,
            "  history ({} of the session's {} events):",
            self.history.len(),
            self.session_events
        )?;
        for e in &self.history {
            writeln!(f, "    {e}")?;
        }
        match &self.final_copy {
            Some(c) => write!(f, "  final: {c}"),
            None => write!(f, "  final: none (no copy covers the devices' copies)"),
        }
    }
}

/// Figures of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sessions: usize,
    pub ops_committed: usize,
    pub ops_refused: usize,
    /// Sessions for which a conflict was surfaced to a device (counted, excused nothing).
    pub sessions_with_conflicts: usize,
    /// Sessions with a copy at a datacenter concurrent with the final copy (a branch no
    /// device follows; a violation only where a committed op lives on it alone).
    pub sessions_with_stale_branch: usize,
    /// Tentative copies a device persisted and later replaced by one that does not dominate
    /// them (allowed: nobody was told they are committed).
    pub tentative_replaced: usize,
    /// Committed ops whose outcome is older than the watermark window of the final copy
    /// (cannot be checked; expected 0 with the simulation's short trips).
    pub ops_outside_window: usize,
    pub violations: usize,
}

/// Check every session of `history` against `finals`.
pub fn check(history: &History, finals: &FinalState) -> (Vec<Violation>, Summary) {
    let mut sessions: BTreeSet<SessionId> = history
        .entries
        .iter()
        .filter_map(|e| e.event.session())
        .collect();
    sessions.extend(finals.sessions());
    let mut out = Vec::new();
    let mut summary = Summary::default();
    for s in sessions {
        let events = history.of_session(s);
        summary.ops_committed += events
            .iter()
            .filter(|e| matches!(e.event, Event::Committed { .. }))
            .count();
        summary.ops_refused += events
            .iter()
            .filter(|e| matches!(e.event, Event::Refused { .. }))
            .count();
        if events
            .iter()
            .any(|e| matches!(e.event, Event::Conflict { .. }))
        {
            summary.sessions_with_conflicts += 1;
        }
        if !events.is_empty() {
            summary.sessions += 1;
        }
        out.extend(check_session(s, &events, finals, &mut summary));
    }
    summary.violations = out.len();
    (out, summary)
}

fn finished(phase: TripPhase) -> bool {
    matches!(phase, TripPhase::Completed | TripPhase::Cancelled)
}

fn describe(holder: Holder, h: &DigestHeader, b: &DigestBody<TripState>) -> String {
    let marks: Vec<String> = b
        .dedup
        .iter()
        .map(|d| format!("{}={}", d.device, d.last_seq))
        .collect();
    format!(
        "{holder} {} {:?}{}, {} locations, watermarks [{}]",
        h.version,
        b.state.phase,
        if h.tombstone { " (tombstone)" } else { "" },
        b.state.location_updates,
        marks.join(" ")
    )
}

/// A copy the checker may choose as the final one.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    holder: Holder,
    header: &'a DigestHeader,
    body: &'a DigestBody<TripState>,
}

/// A device's copy at the end (from its store, or the last one its history persisted).
struct DeviceFinal<'a> {
    device: DeviceId,
    version: &'a VersionVector,
    /// The device's last `Saw` of the session, the witness.
    last_saw: Option<usize>,
}

/// A version a device was told is committed, and where it was told.
struct Told<'a> {
    at: usize,
    device: DeviceId,
    version: &'a VersionVector,
    tombstone: bool,
    /// A server change's commit (`ServerCommitted`): it may arrive after the device holds a
    /// newer copy (older news, not a step back); it must still never be sideways.
    server_change: bool,
}

struct Ctx<'a> {
    session: SessionId,
    events: &'a [&'a Entry],
    final_copy: Option<String>,
    out: Vec<Violation>,
}

impl Ctx<'_> {
    fn report(&mut self, kind: Kind, detail: String, witness: &[usize]) {
        let mut idx: Vec<usize> = witness.to_vec();
        idx.sort_unstable();
        idx.dedup();
        self.out.push(Violation {
            kind,
            session: self.session,
            detail,
            history: idx
                .into_iter()
                .filter_map(|i| self.events.get(i).map(|e| (*e).clone()))
                .collect(),
            session_events: self.events.len(),
            final_copy: self.final_copy.clone(),
        });
    }

    /// Index of the event that queued `op`, if recorded.
    fn queued(&self, op: &OpId) -> Option<usize> {
        self.events
            .iter()
            .position(|e| matches!(&e.event, Event::Accepted { op: o, .. } if o == op))
    }

    /// The kind of `op`, from its queueing.
    fn kind_of(&self, op: &OpId) -> Option<OpKind> {
        self.events.iter().find_map(|e| match &e.event {
            Event::Accepted { op: o, kind } if o == op => Some(*kind),
            _ => None,
        })
    }

    /// The op's queueing (if recorded) and the event at `i`.
    fn op_witness(&self, op: &OpId, i: usize) -> Vec<usize> {
        self.queued(op).into_iter().chain([i]).collect()
    }
}

/// Every version a device was told is committed, in recorded order.
fn told_committed<'a>(cx: &Ctx<'a>) -> Vec<Told<'a>> {
    let mut told = Vec::new();
    for (i, e) in cx.events.iter().enumerate() {
        let (version, tombstone) = match &e.event {
            Event::Committed { op, version, .. } => (
                version,
                matches!(cx.kind_of(op), Some(OpKind::Complete | OpKind::Cancel)),
            ),
            Event::Saw {
                version,
                phase,
                committed: true,
                ..
            } => (version, finished(*phase)),
            Event::ServerCommitted { version, .. } => (version, false),
            _ => continue,
        };
        told.push(Told {
            at: i,
            device: e.device,
            version,
            tombstone,
            server_change: matches!(e.event, Event::ServerCommitted { .. }),
        });
    }
    told
}

fn check_session(
    session: SessionId,
    events: &[&Entry],
    finals: &FinalState,
    summary: &mut Summary,
) -> Vec<Violation> {
    let mut cx = Ctx {
        session,
        events,
        final_copy: None,
        out: Vec::new(),
    };
    let dc_copies = finals.copies(session);
    let dev_copies = finals.device_copies(session);
    let last_saw = |d: DeviceId| {
        events
            .iter()
            .rposition(|e| e.device == d && matches!(e.event, Event::Saw { .. }))
    };

    // The devices' final copies: from their stores, or the last copy each persisted.
    let device_finals: Vec<DeviceFinal<'_>> = if finals.devices_read() {
        dev_copies
            .iter()
            .map(|(d, c)| DeviceFinal {
                device: *d,
                version: &c.stored.0.version,
                last_saw: last_saw(*d),
            })
            .collect()
    } else {
        let mut last: BTreeMap<DeviceId, (usize, &VersionVector)> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            if let Event::Saw { version, .. } = &e.event {
                last.insert(e.device, (i, version));
            }
        }
        last.into_iter()
            .map(|(device, (i, version))| DeviceFinal {
                device,
                version,
                last_saw: Some(i),
            })
            .collect()
    };
    let candidates: Vec<Candidate<'_>> = dc_copies
        .iter()
        .map(|(dc, (h, b))| Candidate {
            holder: Holder::Dc(*dc),
            header: h,
            body: b,
        })
        .chain(dev_copies.iter().map(|(d, c)| Candidate {
            holder: Holder::Device(*d),
            header: &c.stored.0,
            body: &c.stored.1,
        }))
        .collect();
    let told = told_committed(&cx);

    // Presence: a session a device committed to or held must be at some datacenter.
    let first_evidence = events
        .iter()
        .position(|e| matches!(e.event, Event::Committed { .. } | Event::Saw { .. }));
    if dc_copies.is_empty() {
        if let Some(i) = first_evidence {
            cx.report(
                Kind::SessionMissing,
                "a device committed to or held this session, and no datacenter has it".into(),
                &[i],
            );
        }
        if candidates.is_empty() {
            return cx.out;
        }
    }

    // Convergence: the devices' final copies lie on one chain ...
    let mut converged = true;
    for (a, x) in device_finals.iter().enumerate() {
        for y in &device_finals[a + 1..] {
            if order(x.version, y.version) == Order::Concurrent {
                converged = false;
                let witness: Vec<usize> = x.last_saw.into_iter().chain(y.last_saw).collect();
                cx.report(
                    Kind::NotConverged,
                    format!(
                        "after the settle phase {} holds {} and {} holds {}: concurrent copies",
                        x.device, x.version, y.device, y.version
                    ),
                    &witness,
                );
            }
        }
    }
    // ... and the final copy is the newest copy that dominates all of them.
    let covering: Vec<Candidate<'_>> = candidates
        .iter()
        .copied()
        .filter(|c| {
            device_finals
                .iter()
                .all(|d| dominates(&c.header.version, d.version))
        })
        .collect();
    let maximal: Vec<Candidate<'_>> = covering
        .iter()
        .copied()
        .filter(|c| {
            !covering
                .iter()
                .any(|o| order(&o.header.version, &c.header.version) == Order::Newer)
        })
        .collect();
    // Concurrent maximal copies (two datacenters moved on from the devices' copy on two
    // branches): judge by the one that applied the most ops the devices were told are
    // committed, then covers the most committed versions; the others are stale branches.
    let score = |c: &Candidate<'_>| {
        let applied = events
            .iter()
            .filter(|e| match &e.event {
                Event::Committed { op, .. } => {
                    outcome(&c.body.dedup, op.device, op.seq) == Outcome::Applied
                }
                _ => false,
            })
            .count();
        let covered = told
            .iter()
            .filter(|t| dominates(&c.header.version, t.version))
            .count();
        (applied, covered)
    };
    let mut chosen: Option<Candidate<'_>> = None;
    for c in &maximal {
        if chosen.is_none_or(|best| score(c) > score(&best)) {
            chosen = Some(*c);
        }
    }
    let Some(fin) = chosen else {
        if converged {
            let newest = device_finals
                .iter()
                .max_by_key(|d| d.version.entries().iter().map(|e| e.1).sum::<u64>());
            let witness: Vec<usize> = newest.and_then(|d| d.last_saw).into_iter().collect();
            cx.report(
                Kind::NotConverged,
                format!(
                    "no copy at a datacenter or device dominates every device's final copy ({})",
                    device_finals
                        .iter()
                        .map(|d| format!("{} {}", d.device, d.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &witness,
            );
        }
        check_histories(&mut cx, &told, summary);
        check_applied_twice(&mut cx, &candidates);
        check_versions_unique(&mut cx, &candidates);
        return cx.out;
    };
    let stale: Vec<Candidate<'_>> = candidates
        .iter()
        .copied()
        .filter(|c| matches!(c.holder, Holder::Dc(_)))
        .filter(|c| order(&c.header.version, &fin.header.version) == Order::Concurrent)
        .collect();
    if !stale.is_empty() {
        summary.sessions_with_stale_branch += 1;
    }
    let mut described = describe(fin.holder, fin.header, fin.body);
    if !stale.is_empty() {
        described.push_str(&format!(
            " (beside a concurrent branch at {})",
            stale
                .iter()
                .map(|c| format!("{} {}", c.holder, c.header.version))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    cx.final_copy = Some(described);

    // C1: every op reported committed is applied in the final copy.
    for (i, e) in events.iter().enumerate() {
        let Event::Committed { op, .. } = &e.event else {
            continue;
        };
        match outcome(&fin.body.dedup, op.device, op.seq) {
            Outcome::Applied => {}
            Outcome::OutsideWindow => summary.ops_outside_window += 1,
            lost => {
                let what = match lost {
                    Outcome::Rejected => "it records the op as rejected".to_string(),
                    _ => format!(
                        "its watermark for {} is {}",
                        op.device,
                        fin.body
                            .dedup
                            .iter()
                            .find(|m| m.device == op.device)
                            .map_or(0, |m| m.last_seq)
                    ),
                };
                let elsewhere: Vec<String> = candidates
                    .iter()
                    .filter(|c| outcome(&c.body.dedup, op.device, op.seq) == Outcome::Applied)
                    .map(|c| format!("{} {}", c.holder, c.header.version))
                    .collect();
                let lives = if elsewhere.is_empty() {
                    "no copy anywhere has applied it".to_string()
                } else {
                    format!(
                        "it lives only on a branch the final copy does not hold: {}",
                        elsewhere.join(", ")
                    )
                };
                let witness = cx.op_witness(op, i);
                cx.report(
                    Kind::CommittedOpLost,
                    format!(
                        "{op} was reported committed to {}, but the final copy has not applied it ({what}); {lives}",
                        op.device
                    ),
                    &witness,
                );
            }
        }
    }

    // The app was told "rejected", and the final copy applied it.
    for (i, e) in events.iter().enumerate() {
        let Event::Refused {
            op,
            reason: SubmitError::Rejected(_),
        } = &e.event
        else {
            continue;
        };
        if outcome(&fin.body.dedup, op.device, op.seq) == Outcome::Applied {
            let witness = cx.op_witness(op, i);
            cx.report(
                Kind::RefusedButApplied,
                format!("{op} was reported rejected, but the final copy applied it"),
                &witness,
            );
        }
    }

    // C3: the final copy dominates every version a device was told is committed, and is a
    // tombstone if any of them was one.
    let fin_version = &fin.header.version;
    let mut reported: Vec<&VersionVector> = Vec::new();
    for t in &told {
        // One report per version (a commit and the copy that carried it tell the same).
        if !dominates(fin_version, t.version) && !reported.contains(&t.version) {
            reported.push(t.version);
            let how = match order(fin_version, t.version) {
                Order::Concurrent => "is concurrent with",
                _ => "is older than",
            };
            cx.report(
                Kind::VersionRegressed,
                format!(
                    "the final version {fin_version} {how} {}, which {} was told is committed",
                    t.version, t.device
                ),
                &[t.at],
            );
        }
    }
    if !fin.header.tombstone {
        if let Some(t) = told.iter().find(|t| t.tombstone) {
            let mut witness = vec![t.at];
            if let Event::Committed { op, .. } = &events[t.at].event {
                witness.extend(cx.queued(op));
            }
            cx.report(
                Kind::TombstoneResurrected,
                format!(
                    "{} was told the finished session ({}) is committed, and the final copy is live",
                    t.device, t.version
                ),
                &witness,
            );
        }
    }

    // C3 on each device's store: it ends at or above every version it was told is committed.
    for (d, c) in dev_copies {
        let held = &c.stored.0.version;
        if let Some(t) = told
            .iter()
            .filter(|t| t.device == *d)
            .find(|t| !dominates(held, t.version))
        {
            cx.report(
                Kind::VersionRegressed,
                format!(
                    "{d}'s store ends at {held}, which does not dominate {}, a version it was told is committed",
                    t.version
                ),
                &[t.at],
            );
        }
    }

    check_histories(&mut cx, &told, summary);
    check_applied_twice(&mut cx, &candidates);
    check_versions_unique(&mut cx, &candidates);
    cx.out
}

/// C3 along each device's history: the committed versions it is told form one chain, and a
/// committed tombstone is never followed by a live copy.
fn check_histories(cx: &mut Ctx<'_>, told: &[Told<'_>], summary: &mut Summary) {
    let devices: BTreeSet<DeviceId> = cx.events.iter().map(|e| e.device).collect();
    for d in devices {
        let mine: Vec<&Told<'_>> = told.iter().filter(|t| t.device == d).collect();
        // The newest committed version so far; after a breach, the device's new branch (one
        // report per step off the chain, not one per op on the new branch).
        let mut newest: Option<&Told<'_>> = None;
        for t in mine {
            let Some(n) = newest else {
                newest = Some(t);
                continue;
            };
            match order(t.version, n.version) {
                Order::Equal => {}
                Order::Newer => newest = Some(t),
                Order::Older if t.server_change => {}
                o => {
                    let how = if o == Order::Older {
                        "back"
                    } else {
                        "sideways"
                    };
                    cx.report(
                        Kind::VersionRegressed,
                        format!(
                            "{d} was told {} is committed after {}: the committed version went {how}",
                            t.version, n.version
                        ),
                        &[n.at, t.at],
                    );
                    newest = Some(t);
                }
            }
        }
        // Persisted copies: after a committed tombstone, never a live one; tentative copies
        // replaced by one that does not descend from them are counted.
        let mut tombstone_at: Option<usize> = None;
        let mut tentative: Vec<(usize, &VersionVector)> = Vec::new(); // at most one
        for (i, e) in cx.events.iter().enumerate() {
            if e.device != d {
                continue;
            }
            let Event::Saw {
                version,
                phase,
                committed,
                ..
            } = &e.event
            else {
                continue;
            };
            // The copy held before is extended (dominated) or replaced.
            for (_, t) in tentative.drain(..) {
                if !dominates(version, t) {
                    summary.tentative_replaced += 1;
                }
            }
            if !committed {
                tentative.push((i, version));
            }
            if finished(*phase) {
                if *committed {
                    tombstone_at.get_or_insert(i);
                }
            } else if let Some(j) = tombstone_at {
                cx.report(
                    Kind::TombstoneResurrected,
                    format!(
                        "{d} held the finished session as committed, then a live copy ({version})"
                    ),
                    &[j, i],
                );
                tombstone_at = None;
            }
        }
    }
}

/// C3: one version, one state. A datacenter bumps its own slot for every change, so two
/// copies (or two copies devices persisted) with the same version and different contents
/// mean a counter was issued twice: some datacenter went back and built on an older copy.
fn check_versions_unique(cx: &mut Ctx<'_>, copies: &[Candidate<'_>]) {
    // version -> (phase, locations, where first seen, event index)
    let mut seen: Vec<(&VersionVector, TripPhase, u32, String, Option<usize>)> = Vec::new();
    let mut reported: Vec<&VersionVector> = Vec::new();
    let events = cx.events;
    let at_end = copies.iter().map(|c| {
        (
            &c.header.version,
            c.body.state.phase,
            c.body.state.location_updates,
            format!("{} at the end", c.holder),
            None,
        )
    });
    let during = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            Event::Saw {
                version,
                phase,
                locations,
                ..
            } => Some((
                version,
                *phase,
                *locations,
                format!("{} at {}.{:03}s", e.device, e.at_ms / 1000, e.at_ms % 1000),
                Some(i),
            )),
            _ => None,
        });
    for (version, phase, locations, place, at) in during.chain(at_end) {
        match seen.iter().find(|s| s.0 == version) {
            None => seen.push((version, phase, locations, place, at)),
            Some(first) if (first.1, first.2) != (phase, locations) => {
                if reported.contains(&version) {
                    continue;
                }
                reported.push(version);
                let witness: Vec<usize> = first.4.into_iter().chain(at).collect();
                let detail = format!(
                    "version {version} was issued twice: {:?} with {} locations ({}), {phase:?} with {locations} ({place})",
                    first.1, first.2, first.3
                );
                cx.report(Kind::VersionRegressed, detail, &witness);
            }
            Some(_) => {}
        }
    }
}

/// C2 on every copy the run left, and on every copy a device persisted: never more location
/// reports than the driver submitted, never a watermark past the ops a device submitted.
fn check_applied_twice(cx: &mut Ctx<'_>, copies: &[Candidate<'_>]) {
    let events = cx.events;
    let location_submits: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            matches!(
                e.event,
                Event::Submit {
                    kind: OpKind::Location,
                    ..
                }
            )
        })
        .map(|(i, _)| i)
        .collect();
    let over: Vec<String> = copies
        .iter()
        .filter(|c| c.body.state.location_updates as usize > location_submits.len())
        .map(|c| format!("{} {}", c.holder, c.body.state.location_updates))
        .collect();
    if !over.is_empty() {
        cx.report(
            Kind::AppliedTwice,
            format!(
                "a copy at the end applied more location reports than the {} ever submitted ({})",
                location_submits.len(),
                over.join(", ")
            ),
            &location_submits,
        );
    }
    // A copy a device persisted during the run, with more reports than submitted so far.
    if let Some((i, n)) = events.iter().enumerate().find_map(|(i, e)| match &e.event {
        Event::Saw { locations, .. } => {
            let so_far = location_submits.iter().filter(|j| **j < i).count();
            (*locations as usize > so_far).then_some((i, so_far))
        }
        _ => None,
    }) {
        let witness: Vec<usize> = location_submits
            .iter()
            .copied()
            .filter(|j| *j < i)
            .chain([i])
            .collect();
        cx.report(
            Kind::AppliedTwice,
            format!(
                "{} persisted a copy with more location reports than the {n} submitted until then",
                events[i].device
            ),
            &witness,
        );
    }
    // A watermark past every op its device queued means an op was processed twice.
    let mut reported: BTreeSet<DeviceId> = BTreeSet::new();
    for c in copies {
        for m in &c.body.dedup {
            if reported.contains(&m.device) {
                continue;
            }
            let mine: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.device == m.device)
                .filter(|(_, e)| {
                    matches!(
                        e.event,
                        Event::Submit { .. }
                            | Event::Accepted { .. }
                            | Event::Committed { .. }
                            | Event::Refused { .. }
                    )
                })
                .map(|(i, _)| i)
                .collect();
            let max_seq = mine
                .iter()
                .filter_map(|i| match &events[*i].event {
                    Event::Accepted { op, .. }
                    | Event::Committed { op, .. }
                    | Event::Refused { op, .. } => Some(op.seq),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            // Submits the client never answered with an id (a crash in between) may still
            // have gone out with the next seqs.
            let submits = mine
                .iter()
                .filter(|i| matches!(events[**i].event, Event::Submit { .. }))
                .count();
            let accepted = mine
                .iter()
                .filter(|i| matches!(events[**i].event, Event::Accepted { .. }))
                .count();
            let bound = max_seq + submits.saturating_sub(accepted) as u64;
            if m.last_seq > bound {
                reported.insert(m.device);
                let witness: Vec<usize> = mine
                    .iter()
                    .copied()
                    .filter(|i| {
                        matches!(
                            events[*i].event,
                            Event::Submit { .. } | Event::Accepted { .. }
                        )
                    })
                    .collect();
                cx.report(
                    Kind::AppliedTwice,
                    format!(
                        "{}'s watermark of {} is {}, but it submitted ops up to #{bound} only",
                        c.holder, m.device, m.last_seq
                    ),
                    &witness,
                );
            }
        }
    }
}

/// Violations printed in full per run (the rest are counted).
pub const MAX_REPORTED: usize = 8;

/// The failure message of a run: the seed, how to replay it, the violations.
pub fn report(seed: u64, replay: &str, violations: &[Violation]) -> String {
    let mut s = format!(
        "seed {seed}: {} contract violation(s)\nreplay: {replay}\n",
        violations.len()
    );
    for v in violations.iter().take(MAX_REPORTED) {
        s.push_str(&v.to_string());
        s.push('\n');
    }
    if violations.len() > MAX_REPORTED {
        s.push_str(&format!(
            "... and {} more (replay the seed to see them all)\n",
            violations.len() - MAX_REPORTED
        ));
    }
    s
}

/// The final state of a trip, for tests that build one by hand.
pub fn stored(
    session: SessionId,
    version: VersionVector,
    rider: DeviceId,
    driver: Option<DeviceId>,
    state: TripState,
    dedup: Vec<DedupEntry>,
) -> StoredSession {
    let tombstone = finished(state.phase);
    (
        DigestHeader {
            session,
            version,
            rider,
            driver,
            tombstone,
        },
        DigestBody { state, dedup },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::wire::OpRejection;
    use lifeboat_common::GeoPoint;

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
        let src = include_str!("checker.rs");
        let body = &src[..src.find("#[cfg(test)]").expect("the tests")];
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
            assert!(!body.contains(&banned), "the checker uses `{banned}`");
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
    fn a_datacenter_branch_beside_the_final_copy_is_a_figure_unless_a_committed_op_lives_only_there(
    ) {
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
}
