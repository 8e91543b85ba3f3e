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
//!
//! One concept per file: [`history`] (what the devices recorded), [`order`] (the checker's
//! own version order and watermark reading), [`final_state`] (the stores at the end),
//! [`violation`] (what a breach looks like and the run's figures); the checks themselves
//! live in `session` (the final copy, presence, convergence, C1, the final C3),
//! `final_trip` (C1 on the trip's own fields), `histories` (C3 along each device's
//! history), `applied_twice` (C2) and `versions_unique` (C3: one version, one state).

mod applied_twice;
mod context;
pub mod final_state;
mod final_trip;
mod histories;
pub mod history;
pub mod order;
mod session;
mod versions_unique;
pub mod violation;

#[cfg(test)]
mod tests;

pub use final_state::{stored, DeviceCopy, FinalState, Holder};
pub use history::{Entry, Event, History, OpKind};
pub use order::{dominates, order, outcome, Order, Outcome, WINDOW};
pub use violation::{listing, report, Kind, Summary, Violation, MAX_REPORTED};

use lifeboat_common::SessionId;
use std::collections::BTreeSet;

/// Check every session of `history` against `finals`.
pub fn check(history: &History, finals: &FinalState) -> (Vec<Violation>, Summary) {
    let mut sessions: BTreeSet<SessionId> = history
        .entries()
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
        out.extend(session::check_session(
            history,
            s,
            &events,
            finals,
            &mut summary,
        ));
    }
    summary.violations = out.len();
    (out, summary)
}
