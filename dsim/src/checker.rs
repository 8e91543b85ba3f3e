//! The history checker: what the devices were told and saw, against what the datacenters
//! hold at the end.
//!
//! Each device records a [`History`] of [`Event`]s: the ops its app submitted, what the edge
//! client answered (committed with a version, or refused), every copy of a session it
//! persisted (version, phase), and the conflicts it was told of. After a run, [`check`]
//! compares the histories with the datacenters' final stores ([`FinalState`], built from
//! `lifeboat_server::service::StoredSession`s as `read_store` returns them) and reports every
//! breach of the contract:
//!
//! - C1 [`Kind::CommittedOpLost`]: an op reported committed is not applied in the final copy
//!   (the watermark of its device is below its seq, or records it as rejected);
//! - C2 [`Kind::AppliedTwice`]: the final copy applied more location reports than the driver
//!   ever submitted, or a device's watermark ran past every op it submitted;
//! - C3 [`Kind::VersionRegressed`]: the final copy does not cover a version a device was told
//!   was committed or persisted, or a device was handed an older copy after a newer one;
//!   [`Kind::TombstoneResurrected`]: a finished session is live again (finally, or on a
//!   device after it held the tombstone);
//! - [`Kind::SessionMissing`]: a session a device committed to or held is in no store;
//! - [`Kind::RefusedButApplied`]: the app was told a datacenter rejected an op that the
//!   final copy records as applied;
//! - [`Kind::Diverged`]: the stores end with concurrent copies and no copy covers the rest.
//!
//! Copies replaced by a conflict that was surfaced to a device (S13: the contract allows a
//! reported conflict, not a silent one) are not held against C1 and C3; they are counted in
//! [`Summary::sessions_with_conflicts`]. C2 and tombstones are always checked.
//!
//! Each [`Violation`] carries its session and the shortest history that shows it: only the
//! events of that session that establish the breach (the op's submit and its commit, the two
//! copies that go backwards, every location report against the applied count, ...), plus the
//! final copy. The checker is pure: histories in, violations out; it depends only on the
//! `lifeboat-common` and `lifeboat-server` types, so any suite can use it.

use lifeboat_common::dedup::{DedupEntry, DEDUP_WINDOW};
use lifeboat_common::edge::SubmitError;
use lifeboat_common::wire::OpRejection;
use lifeboat_common::{
    DatacenterId, DeviceId, OpId, SessionId, TripOp, TripPhase, TripState, VersionOrder,
    VersionVector,
};
use lifeboat_server::service::StoredSession;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The kind of an op, without its payload (histories stay short and readable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Request,
    Arrived,
    Start,
    Location,
    Complete,
    Cancel,
}

impl From<&TripOp> for OpKind {
    fn from(op: &TripOp) -> Self {
        match op {
            TripOp::Request { .. } => OpKind::Request,
            TripOp::Arrived => OpKind::Arrived,
            TripOp::StartTrip => OpKind::Start,
            TripOp::Location { .. } => OpKind::Location,
            TripOp::Complete => OpKind::Complete,
            TripOp::Cancel => OpKind::Cancel,
        }
    }
}

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
    /// The device persisted a copy of the session.
    Saw {
        session: SessionId,
        version: VersionVector,
        phase: TripPhase,
        locations: u32,
    },
    /// The device was told its copy and the datacenter's diverged (S13); it now holds theirs.
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
            | Event::Conflict { session, .. } => Some(*session),
            Event::Accepted { op, .. } | Event::Committed { op, .. } | Event::Refused { op, .. } => {
                Some(op.session)
            }
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
                ..
            } => write!(f, "holds {version} {phase:?}, {locations} locations"),
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

/// The datacenters' stores at the end of a run: every copy of every session.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    copies: BTreeMap<SessionId, Vec<(DatacenterId, StoredSession)>>,
}

impl FinalState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add what one datacenter's store holds (`lifeboat_server::service::read_store`).
    pub fn add_store(&mut self, dc: DatacenterId, sessions: Vec<StoredSession>) {
        for s in sessions {
            self.copies
                .entry(s.0.session)
                .or_default()
                .push((dc, s));
        }
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.copies.keys().copied()
    }

    pub fn copies(&self, session: SessionId) -> &[(DatacenterId, StoredSession)] {
        self.copies.get(&session).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The copy that covers every other one (what the region serves once the devices have
    /// reported in), or `None` if there is none or the copies diverged.
    pub fn best(&self, session: SessionId) -> Option<&(DatacenterId, StoredSession)> {
        let copies = self.copies(session);
        copies.iter().find(|(_, c)| {
            copies
                .iter()
                .all(|(_, o)| c.0.version.covers(&o.0.version))
        })
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
    /// No final copy covers the others.
    Diverged,
}

impl Kind {
    pub fn contract(&self) -> &'static str {
        match self {
            Kind::CommittedOpLost => "C1",
            Kind::AppliedTwice => "C2",
            Kind::VersionRegressed | Kind::TombstoneResurrected => "C3",
            Kind::SessionMissing => "presence",
            Kind::RefusedButApplied => "C1/C2",
            Kind::Diverged => "C3/S13",
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
    /// The final copy it was judged against (`dc version phase ...`), if any.
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
            None => write!(f, "  final: no datacenter holds the session"),
        }
    }
}

/// Figures of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sessions: usize,
    pub ops_committed: usize,
    pub ops_refused: usize,
    /// Sessions for which a conflict was surfaced to a device (C1/C3 not held against them).
    pub sessions_with_conflicts: usize,
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
        out.extend(check_session(s, &events, finals));
    }
    summary.violations = out.len();
    (out, summary)
}

fn describe(dc: DatacenterId, c: &StoredSession) -> String {
    let (h, b) = c;
    let marks: Vec<String> = b
        .dedup
        .iter()
        .map(|d| format!("{}={}", d.device, d.last_seq))
        .collect();
    format!(
        "{dc} {} {:?}{}, {} locations, watermarks [{}]",
        h.version,
        b.state.phase,
        if h.tombstone { " (tombstone)" } else { "" },
        b.state.location_updates,
        marks.join(" ")
    )
}

fn finished(phase: TripPhase) -> bool {
    matches!(phase, TripPhase::Completed | TripPhase::Cancelled)
}

/// Whether `mark` records `seq` as processed, and if so whether as applied (`None`: the
/// outcome is older than the window).
fn processed(mark: Option<&DedupEntry>, seq: u64) -> Option<Option<bool>> {
    let m = mark?;
    if seq == 0 || seq > m.last_seq {
        return None;
    }
    let age = m.last_seq - seq;
    Some((age < DEDUP_WINDOW).then(|| (m.applied_bits >> age) & 1 == 1))
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

    /// Index of the event that queued `op` (or of the last submit of its kind before it).
    fn queued(&self, op: &OpId) -> Option<usize> {
        self.events
            .iter()
            .position(|e| matches!(&e.event, Event::Accepted { op: o, .. } if o == op))
    }
}

fn check_session(session: SessionId, events: &[&Entry], finals: &FinalState) -> Vec<Violation> {
    let best = finals.best(session);
    let copies = finals.copies(session);
    let mut cx = Ctx {
        session,
        events,
        final_copy: best.map(|(dc, c)| describe(*dc, c)),
        out: Vec::new(),
    };
    let conflicted = events
        .iter()
        .any(|e| matches!(e.event, Event::Conflict { .. }));

    // Presence: a session a device committed to or held must be somewhere.
    let first_evidence = events
        .iter()
        .position(|e| matches!(e.event, Event::Committed { .. } | Event::Saw { .. }));
    if copies.is_empty() {
        if let Some(i) = first_evidence {
            cx.report(
                Kind::SessionMissing,
                "a device committed to or held this session, and no datacenter has it".into(),
                &[i],
            );
        }
        return cx.out;
    }
    let Some((_, (header, body))) = best else {
        let versions: Vec<String> = copies
            .iter()
            .map(|(dc, c)| format!("{dc} {}", c.0.version))
            .collect();
        if !conflicted {
            cx.final_copy = Some(versions.join("; "));
            cx.report(
                Kind::Diverged,
                format!(
                    "the stores end with copies no one of which covers the others ({})",
                    versions.join(", ")
                ),
                &[],
            );
        }
        return cx.out;
    };
    let mark_of = |d: DeviceId| body.dedup.iter().find(|m| m.device == d);

    // C1 and C3 against the final copy.
    for (i, e) in events.iter().enumerate() {
        match &e.event {
            Event::Committed { op, version, .. } => {
                let mark = mark_of(op.device);
                let applied = processed(mark, op.seq);
                let q = cx.queued(op);
                let witness: Vec<usize> = q.into_iter().chain([i]).collect();
                if !conflicted && matches!(applied, None | Some(Some(false))) {
                    let what = match applied {
                        None => format!(
                            "its watermark for {} is {}",
                            op.device,
                            mark.map_or(0, |m| m.last_seq)
                        ),
                        _ => "it records the op as rejected".to_string(),
                    };
                    cx.report(
                        Kind::CommittedOpLost,
                        format!(
                            "{} was reported committed to {}, but the final copy has not applied it ({what})",
                            op, op.device
                        ),
                        &witness,
                    );
                }
                if !conflicted && !header.version.covers(version) {
                    cx.report(
                        Kind::VersionRegressed,
                        format!(
                            "the final version {} does not cover {version}, committed for {op}",
                            header.version
                        ),
                        &witness,
                    );
                }
            }
            Event::Saw { version, .. } if !conflicted && !header.version.covers(version) => {
                cx.report(
                    Kind::VersionRegressed,
                    format!(
                        "the final version {} does not cover {version}, which {} held",
                        header.version, e.device
                    ),
                    &[i],
                );
            }
            Event::Refused {
                op,
                reason: SubmitError::Rejected(OpRejection::App(_)),
            } => {
                if let Some(Some(true)) = processed(mark_of(op.device), op.seq) {
                    let witness: Vec<usize> = cx.queued(op).into_iter().chain([i]).collect();
                    cx.report(
                        Kind::RefusedButApplied,
                        format!("{op} was reported rejected, but the final copy applied it"),
                        &witness,
                    );
                }
            }
            _ => {}
        }
    }

    // C3 on each device: never an older copy after a newer one, never live after finished.
    let devices: BTreeSet<DeviceId> = events.iter().map(|e| e.device).collect();
    for d in devices {
        let mut newest: Option<(usize, &VersionVector)> = None;
        let mut finished_at: Option<usize> = None;
        for (i, e) in events.iter().enumerate().filter(|(_, e)| e.device == d) {
            match &e.event {
                Event::Saw { version, phase, .. } => {
                    if let Some((j, v)) = newest {
                        if version.compare(v) == VersionOrder::Older && !conflicted {
                            cx.report(
                                Kind::VersionRegressed,
                                format!("{d} was handed {version} after {v}"),
                                &[j, i],
                            );
                        }
                    }
                    if newest.is_none_or(|(_, v)| version.compare(v) == VersionOrder::Newer) {
                        newest = Some((i, version));
                    }
                    if finished(*phase) {
                        finished_at.get_or_insert(i);
                    } else if let Some(j) = finished_at {
                        cx.report(
                            Kind::TombstoneResurrected,
                            format!("{d} held the finished session, then a live copy ({version})"),
                            &[j, i],
                        );
                        finished_at = None;
                    }
                }
                Event::Conflict { theirs, .. } => newest = Some((i, theirs)),
                _ => {}
            }
        }
    }

    // C3: finished anywhere means a tombstone at the end.
    if !header.tombstone {
        let ended = events.iter().position(|e| match &e.event {
            Event::Saw { phase, .. } => finished(*phase),
            Event::Committed { op, .. } => {
                let kind = events.iter().find_map(|x| match &x.event {
                    Event::Accepted { op: o, kind } if o == op => Some(*kind),
                    _ => None,
                });
                matches!(kind, Some(OpKind::Complete | OpKind::Cancel))
            }
            _ => false,
        });
        if let Some(i) = ended {
            let mut witness = vec![i];
            if let Event::Committed { op, .. } = &events[i].event {
                witness.extend(cx.queued(op));
            }
            cx.report(
                Kind::TombstoneResurrected,
                "the session finished, and the final copy is live".into(),
                &witness,
            );
        }
    }

    // C2: never more location reports applied than the driver submitted.
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
    let applied = body.state.location_updates as usize;
    if applied > location_submits.len() {
        cx.report(
            Kind::AppliedTwice,
            format!(
                "the final copy applied {applied} location reports; {} were ever submitted",
                location_submits.len()
            ),
            &location_submits,
        );
    }
    // C2: a watermark past every op its device queued means an op was processed twice.
    for m in &body.dedup {
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
        // Submits the client never answered with an id (a crash in between) may still have
        // gone out with the next seqs.
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
                    "the final watermark of {} is {}, but it submitted ops up to #{bound} only",
                    m.device, m.last_seq
                ),
                &witness,
            );
        }
    }
    cx.out
}

/// The failure message of a run: the seed, how to replay it, every violation.
pub fn report(seed: u64, replay: &str, violations: &[Violation]) -> String {
    let mut s = format!(
        "seed {seed}: {} contract violation(s)\nreplay: {replay}\n",
        violations.len()
    );
    for v in violations {
        s.push_str(&v.to_string());
        s.push('\n');
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
        lifeboat_common::digest::DigestHeader {
            session,
            version,
            rider,
            driver,
            tombstone,
        },
        lifeboat_common::digest::DigestBody { state, dedup },
    )
}
