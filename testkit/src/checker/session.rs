//! The checks of one session against its final copy: presence, convergence, the choice of
//! the final copy, C1 (every op reported committed is applied in it), "refused but
//! applied", and C3 at the end (it dominates every version a device was told is committed,
//! is a tombstone if one of them was, and every device's store ends at or above what it was
//! told). Then the checks along the history ([`super::histories`], [`super::applied_twice`],
//! [`super::versions_unique`], [`super::final_trip`]).

use crate::checker::applied_twice::check_applied_twice;
use crate::checker::context::{describe, told_committed, Candidate, Ctx, DeviceFinal};
use crate::checker::final_state::{FinalState, Holder};
use crate::checker::final_trip::check_final_trip;
use crate::checker::histories::check_histories;
use crate::checker::history::{Entry, Event, History};
use crate::checker::order::{dominates, order, outcome, Order, Outcome};
use crate::checker::versions_unique::check_versions_unique;
use crate::checker::violation::{Kind, Summary, Violation};
use lifeboat_common::edge::SubmitError;
use lifeboat_common::{DeviceId, SessionId, VersionVector};
use std::collections::BTreeMap;

pub(super) fn check_session(
    history: &History,
    session: SessionId,
    events: &[&Entry],
    finals: &FinalState,
    summary: &mut Summary,
) -> Vec<Violation> {
    let mut cx = Ctx {
        history,
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

    check_final_trip(&mut cx, &fin);
    check_histories(&mut cx, &told, summary);
    check_applied_twice(&mut cx, &candidates);
    check_versions_unique(&mut cx, &candidates);
    cx.out
}
