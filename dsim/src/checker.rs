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
//!
//! Copies replaced by a conflict that was surfaced to a device (S13: the contract allows a
//! reported conflict, not a silent one) are not held against C1, C3 and refused-but-applied;
//! they are counted in [`Summary::sessions_with_conflicts`]. C2 is always checked, and so are
//! tombstones, except that a session that finished on one branch and goes on live on a
//! concurrent one, with the conflict surfaced, is a split (S13), not a resurrection.
//!
//! Each [`Violation`] carries its session and the shortest history that shows it: only the
//! events of that session that establish the breach (the op's submit and its commit, the two
//! copies that go backwards, every location report against the applied count, ...), plus the
//! final copy. The checker is pure: histories in, violations out; it depends only on the
//! `lifeboat-common` and `lifeboat-server` types, so any suite can use it.

use lifeboat_common::datacenter::{changes_unknown_to, ops_cover};
use lifeboat_common::dedup::{DedupEntry, DEDUP_WINDOW};
use lifeboat_common::edge::SubmitError;
use lifeboat_common::wire::OpRejection;
use lifeboat_common::{
    DatacenterId, DeviceId, OpId, SessionId, TripPhase, TripState, VersionOrder, VersionVector,
};
use lifeboat_server::service::StoredSession;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The kind of an op, without its payload (histories stay short and readable).
pub use lifeboat_common::trip::TripOpKind as OpKind;

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
            self.copies.entry(s.0.session).or_default().push((dc, s));
        }
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.copies.keys().copied()
    }

    pub fn copies(&self, session: SessionId) -> &[(DatacenterId, StoredSession)] {
        self.copies.get(&session).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The copy that covers every other one (what the region serves once the devices have
    /// reported in), or `None` if there is none.
    pub fn best(&self, session: SessionId) -> Option<&(DatacenterId, StoredSession)> {
        let copies = self.copies(session);
        copies
            .iter()
            .find(|(_, c)| copies.iter().all(|(_, o)| c.0.version.covers(&o.0.version)))
    }

    /// The copy to judge a session by, and the version the region ends up with; `held`
    /// are the versions of the copies the devices hold at the end.
    ///
    /// - [`Standing::Dominant`]: one copy's version covers the others'.
    /// - [`Standing::Reconcilable`]: the copies are concurrent, but one of them (with the same
    ///   participants) has processed every op of every other copy with the same outcomes:
    ///   what the datacenters' own reconcile keeps
    ///   ([`lifeboat_common::datacenter::ops_cover`]), under the join of all versions. (A
    ///   datacenter applied the same ops on a branch the devices moved away from.)
    /// - [`Standing::StaleBranch`]: no copy covers the others either way: some datacenter
    ///   holds a branch with an op no other copy has (applied there, its answer lost, and
    ///   the device answered elsewhere), or two branches met in a conflict surfaced to the
    ///   devices. The copy that covers the most of `held` is the one the devices follow; the
    ///   checks against it tell whether anything they were told was lost.
    ///
    /// `None` only when no datacenter holds the session.
    pub fn judge(&self, session: SessionId, held: &[&VersionVector]) -> Option<Judged<'_>> {
        let copies = self.copies(session);
        if let Some((dc, c)) = self.best(session) {
            return Some(Judged {
                dc: *dc,
                copy: c,
                version: c.0.version.clone(),
                standing: Standing::Dominant,
            });
        }
        let reconcilable = copies.iter().find(|(_, c)| {
            copies.iter().all(|(_, o)| {
                o.0.rider == c.0.rider
                    && (o.0.driver == c.0.driver || o.0.driver.is_none())
                    && ops_cover(
                        &c.1.dedup,
                        &o.1.dedup,
                        changes_unknown_to(&o.0.version, &c.0.version),
                    )
            })
        });
        if let Some((dc, c)) = reconcilable {
            let mut version = VersionVector::new();
            for (_, o) in copies {
                match version.join(&o.0.version) {
                    Ok(v) => version = v,
                    Err(_) => return None,
                }
            }
            return Some(Judged {
                dc: *dc,
                copy: c,
                version,
                standing: Standing::Reconcilable,
            });
        }
        let followed = copies.iter().enumerate().max_by_key(|(i, (_, c))| {
            let covered = held.iter().filter(|v| c.0.version.covers(v)).count();
            (covered, std::cmp::Reverse(*i))
        });
        followed.map(|(_, (dc, c))| Judged {
            dc: *dc,
            copy: c,
            version: c.0.version.clone(),
            standing: Standing::StaleBranch,
        })
    }
}

/// How the judged copy stands among the copies of the stores (see [`FinalState::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Dominant,
    Reconcilable,
    StaleBranch,
}

/// The copy a session is judged by (see [`FinalState::judge`]).
#[derive(Clone, Debug)]
pub struct Judged<'a> {
    pub dc: DatacenterId,
    pub copy: &'a StoredSession,
    /// The version the region ends with: the copy's, or the join of reconcilable copies'.
    pub version: VersionVector,
    pub standing: Standing,
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
}

impl Kind {
    pub fn contract(&self) -> &'static str {
        match self {
            Kind::CommittedOpLost => "C1",
            Kind::AppliedTwice => "C2",
            Kind::VersionRegressed | Kind::TombstoneResurrected => "C3",
            Kind::SessionMissing => "presence",
            Kind::RefusedButApplied => "C1/C2",
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
    /// Sessions whose stores end with concurrent copies that one of them covers by ops
    /// (information: the datacenters reconcile them when a device next reports in).
    pub sessions_concurrent_at_end: usize,
    /// Sessions with a branch at some datacenter that no other copy covers, which no device
    /// follows (information: a hazard if that datacenter serves the session again; see
    /// [`Standing::StaleBranch`]).
    pub sessions_with_stale_branch: usize,
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
        let held = held_versions(&events);
        match finals.judge(s, &held).map(|j| j.standing) {
            Some(Standing::Reconcilable) => summary.sessions_concurrent_at_end += 1,
            Some(Standing::StaleBranch) => summary.sessions_with_stale_branch += 1,
            _ => {}
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

/// The copy each device holds at the end: the version of its last `Saw` (or, if it never
/// held one, of its last commit).
fn held_versions<'a>(events: &[&'a Entry]) -> Vec<&'a VersionVector> {
    let mut last: BTreeMap<DeviceId, &'a VersionVector> = BTreeMap::new();
    let mut saw: BTreeSet<DeviceId> = BTreeSet::new();
    for e in events {
        match &e.event {
            Event::Saw { version, .. } => {
                saw.insert(e.device);
                last.insert(e.device, version);
            }
            Event::Committed { version, .. } if !saw.contains(&e.device) => {
                last.insert(e.device, version);
            }
            _ => {}
        }
    }
    last.into_values().collect()
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

    /// Index of the event that queued `op`, if recorded.
    fn queued(&self, op: &OpId) -> Option<usize> {
        self.events
            .iter()
            .position(|e| matches!(&e.event, Event::Accepted { op: o, .. } if o == op))
    }
}

fn check_session(session: SessionId, events: &[&Entry], finals: &FinalState) -> Vec<Violation> {
    let held = held_versions(events);
    let judged = finals.judge(session, &held);
    let copies = finals.copies(session);
    let mut cx = Ctx {
        session,
        events,
        final_copy: judged.as_ref().map(|j| {
            let mut d = describe(j.dc, j.copy);
            let others: Vec<String> = copies
                .iter()
                .filter(|(dc, c)| *dc != j.dc && !j.copy.0.version.covers(&c.0.version))
                .map(|(dc, c)| format!("{dc} {}", c.0.version))
                .collect();
            match j.standing {
                Standing::Dominant => {}
                Standing::Reconcilable => d.push_str(&format!(
                    " (reconcilable with {}; joined version {})",
                    others.join(", "),
                    j.version
                )),
                Standing::StaleBranch => d.push_str(&format!(
                    " (beside a branch no device follows: {})",
                    others.join(", ")
                )),
            }
            d
        }),
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
    let Some(Judged {
        copy: (header, body),
        version: final_version,
        ..
    }) = judged
    else {
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
                if !conflicted && !final_version.covers(version) {
                    cx.report(
                        Kind::VersionRegressed,
                        format!(
                            "the final version {final_version} does not cover {version}, committed for {op}"
                        ),
                        &witness,
                    );
                }
            }
            Event::Saw { version, .. } if !conflicted && !final_version.covers(version) => {
                cx.report(
                    Kind::VersionRegressed,
                    format!(
                        "the final version {final_version} does not cover {version}, which {} held",
                        e.device
                    ),
                    &[i],
                );
            }
            Event::Refused {
                op,
                reason: SubmitError::Rejected(OpRejection::App(_)),
            } => {
                if let (false, Some(Some(true))) =
                    (conflicted, processed(mark_of(op.device), op.seq))
                {
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
        // A finish on a branch concurrent with the final copy, with the conflict surfaced to
        // a device, is a split (S13), not a resurrection: the live branch never held the
        // tombstone. A live copy that descends from a finished one always is.
        let split = |i: usize| match &events[i].event {
            Event::Saw { version, .. } | Event::Committed { version, .. } => {
                conflicted && version.compare(&final_version) == VersionOrder::Concurrent
            }
            _ => false,
        };
        if let Some(i) = ended.filter(|i| !split(*i)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::ids::ReplicaId;
    use lifeboat_common::GeoPoint;

    const S: SessionId = SessionId(0x5e55);
    const RIDER: DeviceId = DeviceId(1);
    const DRIVER: DeviceId = DeviceId(1001);
    const DC1: ReplicaId = ReplicaId(0xdc1);
    const DC2: ReplicaId = ReplicaId(0xdc2);

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

    /// A watermark with every one of `last_seq` ops applied.
    fn mark(device: DeviceId, last_seq: u64) -> DedupEntry {
        let mut m = DedupEntry::new(device);
        for _ in 0..last_seq {
            m.record(true);
        }
        m
    }

    fn finals(copies: Vec<(u16, StoredSession)>) -> FinalState {
        let mut f = FinalState::new();
        for (dc, c) in copies {
            f.add_store(DatacenterId(dc), vec![c]);
        }
        f
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
            at(
                &mut h,
                RIDER,
                Event::Saw {
                    session: S,
                    version,
                    phase: TripPhase::OnTrip,
                    locations: seq.saturating_sub(2) as u32,
                },
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

    #[test]
    fn a_history_the_final_state_agrees_with_passes() {
        let (vs, summary) = check(&on_the_road(3), &finals(vec![(1, road_copy(3))]));
        assert!(vs.is_empty(), "{vs:#?}");
        assert_eq!(summary.ops_committed, 6);
        assert_eq!(summary.sessions, 1);
    }

    #[test]
    fn a_committed_op_the_final_copy_has_not_applied_is_lost_c1() {
        // The last location report was committed, but the store has the copy before it.
        let mut copy = road_copy(2);
        copy.0.version = v(&[(DC1, 7)]); // the version even moved on (another op)
        let (vs, _) = check(&on_the_road(3), &finals(vec![(1, copy)]));
        let lost: Vec<&Violation> = vs
            .iter()
            .filter(|v| v.kind == Kind::CommittedOpLost)
            .collect();
        assert_eq!(lost.len(), 1, "{vs:#?}");
        // The shortest history: the op's queueing and its commit, nothing else.
        let h = &lost[0].history;
        assert_eq!(h.len(), 2);
        assert!(matches!(h[0].event, Event::Accepted { op: o, .. } if o == op(DRIVER, 5)));
        assert!(matches!(h[1].event, Event::Committed { op: o, .. } if o == op(DRIVER, 5)));
        assert_eq!(lost[0].session_events, on_the_road(3).len());
    }

    #[test]
    fn more_location_reports_applied_than_submitted_is_applied_twice_c2() {
        let mut copy = road_copy(3);
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
    fn an_older_copy_after_a_newer_one_on_a_device_is_a_regression_c3() {
        let mut h = on_the_road(1);
        h.record(
            5_000,
            RIDER,
            Event::Saw {
                session: S,
                version: v(&[(DC1, 3)]),
                phase: TripPhase::DriverArrived,
                locations: 0,
            },
        );
        let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
        assert_eq!(kinds(&vs), vec![Kind::VersionRegressed], "{vs:#?}");
        assert_eq!(vs[0].history.len(), 2, "the newer copy and the older one");
    }

    #[test]
    fn a_final_version_below_a_committed_one_is_a_regression_c3() {
        // Same ops applied, but the store's version is older than what the driver was told.
        let mut copy = road_copy(2);
        copy.0.version = v(&[(DC1, 5)]);
        let (vs, _) = check(&on_the_road(2), &finals(vec![(1, copy)]));
        assert!(
            vs.iter().all(|v| v.kind == Kind::VersionRegressed),
            "{vs:#?}"
        );
        assert!(!vs.is_empty());
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
        h.record(
            9_100,
            RIDER,
            Event::Saw {
                session: S,
                version: v(&[(DC1, 5)]),
                phase: TripPhase::Completed,
                locations: 0,
            },
        );
        // ... and the rider is later handed a live copy; the store is live too.
        h.record(
            9_900,
            RIDER,
            Event::Saw {
                session: S,
                version: v(&[(DC1, 5), (DC2, 1)]),
                phase: TripPhase::OnTrip,
                locations: 0,
            },
        );
        let mut copy = road_copy(0);
        copy.0.version = v(&[(DC1, 5), (DC2, 1)]);
        copy.1.dedup = vec![mark(RIDER, 1), mark(DRIVER, 3)];
        let (vs, _) = check(&h, &finals(vec![(1, copy)]));
        let resurrected: Vec<&Violation> = vs
            .iter()
            .filter(|v| v.kind == Kind::TombstoneResurrected)
            .collect();
        assert_eq!(resurrected.len(), 2, "{vs:#?}");
        assert!(resurrected
            .iter()
            .any(|v| v.detail.contains("then a live copy")));
        assert!(resurrected
            .iter()
            .any(|v| v.detail.contains("final copy is live")));
    }

    #[test]
    fn a_surfaced_split_between_a_tombstone_and_a_concurrent_live_branch_is_not_a_resurrection() {
        // The rider cancelled at dc2 while the driver arrived at dc1; the rider was told of the
        // conflict and kept its tombstone; dc1's live branch is the final copy.
        let mut h = on_the_road(0);
        let tomb = v(&[(DC1, 4), (DC2, 1)]);
        h.record(
            9_000,
            RIDER,
            Event::Saw {
                session: S,
                version: tomb.clone(),
                phase: TripPhase::Cancelled,
                locations: 0,
            },
        );
        let mut live = road_copy(0);
        live.0.version = v(&[(DC1, 5)]);
        let (vs, _) = check(&h, &finals(vec![(1, live.clone())]));
        assert!(
            kinds(&vs).contains(&Kind::TombstoneResurrected),
            "a silent split is reported: {vs:#?}"
        );
        h.record(
            9_500,
            RIDER,
            Event::Conflict {
                session: S,
                ours: tomb,
                theirs: live.0.version.clone(),
            },
        );
        let (vs, _) = check(&h, &finals(vec![(1, live)]));
        assert!(vs.is_empty(), "{vs:#?}");
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
                reason: SubmitError::Rejected(OpRejection::App(
                    lifeboat_common::AppRejection::InvalidOp("test".into()),
                )),
            },
        );
        let (vs, _) = check(&h, &finals(vec![(1, road_copy(1))]));
        assert_eq!(kinds(&vs), vec![Kind::RefusedButApplied], "{vs:#?}");
    }

    #[test]
    fn a_surfaced_conflict_excuses_c1_and_c3_but_not_c2() {
        let mut h = on_the_road(3);
        h.record(
            9_000,
            DRIVER,
            Event::Conflict {
                session: S,
                ours: v(&[(DC1, 7)]),
                theirs: v(&[(DC1, 4), (DC2, 1)]),
            },
        );
        let mut copy = road_copy(0);
        copy.0.version = v(&[(DC1, 4), (DC2, 1)]);
        let (vs, summary) = check(&h, &finals(vec![(2, copy.clone())]));
        assert!(vs.is_empty(), "{vs:#?}");
        assert_eq!(summary.sessions_with_conflicts, 1);
        copy.1.state.location_updates = 9;
        let (vs, _) = check(&h, &finals(vec![(2, copy)]));
        assert_eq!(kinds(&vs), vec![Kind::AppliedTwice]);
    }

    #[test]
    fn concurrent_final_copies_are_judged_by_the_one_that_processed_every_op() {
        // dc2 holds a branch that applied the same ops (a parked op applied late); dc1's copy
        // has processed all of them: nothing to report, and the version to cover is the join.
        let ahead = road_copy(3);
        let mut branch = road_copy(3);
        branch.0.version = v(&[(DC1, 6), (DC2, 1)]);
        let f = finals(vec![(1, ahead.clone()), (2, branch.clone())]);
        let j = f.judge(S, &[]).expect("judged");
        assert_eq!(j.standing, Standing::Reconcilable);
        assert_eq!(j.dc, DatacenterId(1));
        assert_eq!(j.version, v(&[(DC1, 7), (DC2, 1)]));
        let (vs, summary) = check(&on_the_road(3), &f);
        assert!(vs.is_empty(), "{vs:#?}");
        assert_eq!(summary.sessions_concurrent_at_end, 1);
        // With a different outcome on dc2's branch (applied there, its answer lost, answered
        // at dc1), neither covers: the devices follow dc1's copy, which has everything they
        // were told; dc2's branch is reported as stale, not as a violation.
        let mut rejected_last = mark(DRIVER, 4);
        rejected_last.record(false);
        branch.1.dedup = vec![mark(RIDER, 1), rejected_last];
        let f = finals(vec![(2, branch), (1, ahead)]);
        let (vs, summary) = check(&on_the_road(3), &f);
        assert!(vs.is_empty(), "{vs:#?}");
        assert_eq!(summary.sessions_with_stale_branch, 1);
        let history = on_the_road(3);
        let held = held_versions(&history.of_session(S));
        assert_eq!(f.judge(S, &held).map(|j| j.dc), Some(DatacenterId(1)));
    }

    #[test]
    fn the_report_names_the_seed_the_replay_the_session_and_the_short_history() {
        let mut copy = road_copy(3);
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
                },
            );
        }
        let mut copy = road_copy(3);
        copy.1.state.location_updates = 5;
        let (vs, _) = check(&h, &finals(vec![(1, copy)]));
        // The other session has no copy anywhere: it is reported on its own.
        assert!(vs
            .iter()
            .any(|v| v.session == other && v.kind == Kind::SessionMissing));
        for v in &vs {
            assert!(v
                .history
                .iter()
                .all(|e| e.event.session() == Some(v.session)));
        }
    }
}
