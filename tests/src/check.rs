//! The end-to-end tests' judgement of the contract, through the testkit's one checker.
//!
//! - [`check_against_store`]: the drivers' ledgers ([`TripLedger`]: histories of what each
//!   driver's device was told) judged against what the datacenters hold at the end by
//!   `lifeboat_testkit::checker` (C1 every committed op applied, in the watermarks and in the
//!   trip's fields; C2 nothing applied twice; C3 the stored version dominates every
//!   committed one and the committed versions a driver was told form one chain; a completed
//!   trip is a tombstone), plus [`lifeboat_testkit::trip_end`] for a completed trip's phase
//!   and fare. Only the drivers' ops are recorded, so the riders' watermarks are not judged.
//! - [`newest_copies`]: when devices may have ended on either datacenter, the newest copy of
//!   each session across the stores.
//! - [`VersionWatch`] (from the testkit): every device's held versions sampled while a test
//!   runs (C3 at the edge).
//! - [`ledger_from_lives`]: a driver's ledger from every life of its device process.

use crate::device_process::Report;
use crate::trips::TripLedger;
use anyhow::{bail, ensure};
use lifeboat_common::{DatacenterId, OpId, SessionId, TripOp, VersionVector};
use lifeboat_server::service::StoredSession;
use lifeboat_testkit::checker::{self, dominates, FinalState, History, OpKind};
use lifeboat_testkit::trip_end::check_completed;
use std::collections::{BTreeSet, HashMap};

pub use lifeboat_testkit::version_watch::VersionWatch;

/// The holder the copies a test judges are labelled with in the checker's messages: they
/// come from one store, or are the newest of several ([`newest_copies`]).
const JUDGED: DatacenterId = DatacenterId(0);

/// Every trip in the ledgers is in the store, exactly as committed, never older: judged by
/// the testkit's checker (see the module docs). Stored sessions no ledger speaks of are not
/// judged (nobody recorded their ops).
pub fn check_against_store(ledgers: &[TripLedger], stored: &[StoredSession]) -> anyhow::Result<()> {
    let sessions: BTreeSet<SessionId> = ledgers.iter().map(|l| l.session).collect();
    let judged: Vec<StoredSession> = stored
        .iter()
        .filter(|s| sessions.contains(&s.0.session))
        .cloned()
        .collect();
    for l in ledgers {
        let Some(copy) = judged.iter().find(|s| s.0.session == l.session) else {
            bail!("trip {} lost: not in the surviving store", l.session);
        };
        if l.completed() {
            check_completed(copy)?;
        }
    }
    let mut history = History::of_devices(ledgers.iter().map(|l| l.driver));
    for e in ledgers.iter().flat_map(|l| l.history().entries()) {
        history.record(e.at_ms, e.device, e.event.clone());
    }
    let mut finals = FinalState::new();
    finals.add_store(JUDGED, judged);
    let (violations, _) = checker::check(&history, &finals);
    ensure!(
        violations.is_empty(),
        "{} contract violation(s) against the store:\n{}",
        violations.len(),
        checker::listing(&violations, "run the test again with the ledgers printed")
    );
    Ok(())
}

/// The sum of a version's counters (the checker's arithmetic, from the raw entries).
fn changes(v: &VersionVector) -> u64 {
    v.entries().iter().map(|e| e.1).sum()
}

/// The newest copy of each session among several datacenters' stores: a copy is replaced
/// by one that dominates it. Of two concurrent copies (a branch no device reported back to
/// yet), the tombstone wins, then the one with more changes: that is the copy the devices
/// continued with. Dominance is the checker's own.
pub fn newest_copies(stored: impl IntoIterator<Item = StoredSession>) -> Vec<StoredSession> {
    let mut newest: HashMap<SessionId, StoredSession> = HashMap::new();
    for s in stored {
        let replace = match newest.get(&s.0.session) {
            None => true,
            Some(old) if dominates(&old.0.version, &s.0.version) => false,
            Some(old) if dominates(&s.0.version, &old.0.version) => true,
            Some(old) => {
                (s.0.tombstone, changes(&s.0.version)) > (old.0.tombstone, changes(&old.0.version))
            }
        };
        if replace {
            newest.insert(s.0.session, s);
        }
    }
    newest.into_values().collect()
}

/// One life of a device process: what the test asked (op by tag) and what it reported.
pub struct Life {
    pub asked: HashMap<u64, TripOp>,
    pub reports: Vec<Report>,
}

/// A driver's [`TripLedger`] for `session` from every life of its device process, in the
/// order the lives told it: every op asked, every op reported queued, every commit
/// (`Committed`, or `Resolved` for an op replayed from the store after a restart). An op
/// resolved without a `Queued` report can only be one that was in flight when a life was
/// killed (queued on disk, not yet reported): at most one per kill, and its kind is
/// `in_flight_kind`. An op queued in a killed life whose outcome no later life heard stays
/// queued in the ledger: maybe applied, once.
pub fn ledger_from_lives(
    session: SessionId,
    lives: &[Life],
    in_flight_kind: &TripOp,
) -> anyhow::Result<TripLedger> {
    let driver = lives.iter().flat_map(|l| &l.reports).find_map(|r| match r {
        Report::Queued { op, .. } | Report::Committed { op, .. } | Report::Resolved { op, .. } => {
            Some(op.device)
        }
        _ => None,
    });
    let Some(driver) = driver else {
        bail!("no life of the device reported an op of {session}");
    };
    // The kind of every op a life reported with its tag (a replayed op may be resolved
    // before its queueing is reported, so the kinds are gathered first).
    let mut kind: HashMap<OpId, OpKind> = HashMap::new();
    for life in lives {
        for r in &life.reports {
            if let Report::Queued { tag, op } | Report::Committed { tag, op, .. } = r {
                if let Some(k) = life.asked.get(tag) {
                    kind.insert(*op, OpKind::from(k));
                }
            }
        }
    }
    let mut ledger = TripLedger::new(session, driver);
    let mut unreported: BTreeSet<OpId> = BTreeSet::new();
    for life in lives {
        let mut tags: Vec<(&u64, &TripOp)> = life.asked.iter().collect();
        tags.sort_by_key(|(t, _)| **t);
        for (_, op) in tags {
            ledger.asked(OpKind::from(op));
        }
        for r in &life.reports {
            let (op, committed) = match r {
                Report::Queued { op, .. } => (op, None),
                Report::Committed {
                    op,
                    version,
                    duplicate,
                    ..
                } => (op, Some((version, *duplicate))),
                Report::Resolved {
                    op,
                    ok: true,
                    version: Some(version),
                } => (op, Some((version, false))),
                Report::Resolved { op, ok: false, .. } if op.session == session => {
                    bail!("op {op:?} was refused")
                }
                Report::Failed { tag, error } => bail!("op tag {tag} failed: {error}"),
                _ => continue,
            };
            if op.session != session {
                continue;
            }
            let k = match kind.get(op) {
                Some(k) => *k,
                None if committed.is_some() => {
                    unreported.insert(*op);
                    OpKind::from(in_flight_kind)
                }
                None => continue,
            };
            ledger.queued(*op, k);
            if let Some((version, duplicate)) = committed {
                ledger.committed(*op, version.clone(), duplicate);
            }
        }
    }
    let kills = lives.len().saturating_sub(1);
    ensure!(
        unreported.len() <= kills,
        "{} ops committed that no life reported queued, with {kills} kills",
        unreported.len()
    );
    Ok(ledger)
}

/// A compact account of every life of a device process, for a failure message.
pub fn summarize(lives: &[Life]) -> String {
    let mut out = String::new();
    for (i, life) in lives.iter().enumerate() {
        let mut tags: Vec<_> = life.asked.iter().collect();
        tags.sort_by_key(|(t, _)| **t);
        let asked: Vec<String> = tags
            .iter()
            .map(|(t, op)| format!("{t}:{}", op.name()))
            .collect();
        let reports: Vec<String> = life
            .reports
            .iter()
            .filter_map(|r| match r {
                Report::Queued { tag, op } => Some(format!("q{tag}=#{}", op.seq)),
                Report::Committed {
                    tag, op, duplicate, ..
                } => Some(format!(
                    "c{tag}=#{}{}",
                    op.seq,
                    if *duplicate { "(dup)" } else { "" }
                )),
                Report::Resolved { op, ok, .. } => {
                    Some(format!("r#{}{}", op.seq, if *ok { "" } else { "!" }))
                }
                Report::Failed { tag, .. } => Some(format!("f{tag}")),
                _ => None,
            })
            .collect();
        out.push_str(&format!(
            "\n  life {i}: asked [{}]; reported [{}]",
            asked.join(" "),
            reports.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::ids::ReplicaId;
    use lifeboat_common::DeviceId;

    #[test]
    fn an_op_resolved_before_its_queueing_is_reported_keeps_its_kind() {
        let session = SessionId(7);
        let op = |seq| OpId {
            session,
            device: DeviceId(1000),
            seq,
        };
        let mut v = VersionVector::new();
        v.bump(ReplicaId(1)).expect("small counter");
        let life = Life {
            asked: HashMap::from([(2, TripOp::Arrived)]),
            reports: vec![
                Report::Resolved {
                    op: op(1),
                    ok: true,
                    version: Some(v.clone()),
                },
                Report::Queued { tag: 2, op: op(1) },
                Report::Committed {
                    tag: 2,
                    op: op(1),
                    version: v,
                    duplicate: false,
                },
            ],
        };
        let in_flight = TripOp::Location {
            at: crate::route_point(0),
        };
        let ledger = ledger_from_lives(session, &[life], &in_flight).expect("a ledger");
        assert_eq!(ledger.locations_committed(), 0);
        assert!(ledger.history().entries().iter().any(|e| matches!(
            e.event,
            lifeboat_testkit::checker::Event::Accepted {
                kind: OpKind::Arrived,
                ..
            }
        )));
    }
}
