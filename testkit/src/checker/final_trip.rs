//! C1 on the trip's own fields: the final copy shows every op reported committed, not only
//! in its watermarks. It has at least as many location reports as distinct location ops
//! were reported committed and its watermarks record as applied (or are too old for them to
//! tell), and its phase is one that each such committed transition leads to (arrived: arrived or later, or cancelled;
//! started: on the trip or completed; completed: completed; cancelled: cancelled). An op the
//! watermarks do not record as applied is already reported lost by the watermark check
//! (`session`), once; so is a finishing op on a final copy that is not a tombstone (a
//! resurrection).
//!
//! Independence: the phases each op kind leads to are written here as data, from the trip's
//! documented lifecycle, not asked of `lifeboat_common::trip`.

use crate::checker::context::{Candidate, Ctx};
use crate::checker::history::{Event, OpKind};
use crate::checker::order::{outcome, Outcome};
use crate::checker::violation::Kind;
use lifeboat_common::{OpId, TripPhase};
use std::collections::BTreeSet;

/// The phases a trip may be in once an op of `kind` was committed on it (`None`: any).
fn phases_after(kind: OpKind) -> Option<&'static [TripPhase]> {
    use TripPhase::*;
    match kind {
        OpKind::Request | OpKind::Location => None,
        OpKind::Arrived => Some(&[DriverArrived, OnTrip, Completed, Cancelled]),
        OpKind::Start => Some(&[OnTrip, Completed]),
        OpKind::Complete => Some(&[Completed]),
        OpKind::Cancel => Some(&[Cancelled]),
    }
}

/// Check the final copy `fin` against every op reported committed in the session.
pub(super) fn check_final_trip(cx: &mut Ctx<'_>, fin: &Candidate<'_>) {
    let mut locations: BTreeSet<OpId> = BTreeSet::new();
    let mut location_witness: Vec<usize> = Vec::new();
    let mut phase_breach: Option<(OpKind, usize, OpId)> = None;
    for (i, e) in cx.events.iter().enumerate() {
        let Event::Committed { op, .. } = &e.event else {
            continue;
        };
        // An op whose queueing was not recorded has no known kind: it proves nothing here.
        let Some(kind) = cx.kind_of(op) else {
            continue;
        };
        // Not processed or rejected: already reported lost by the watermark check. Older
        // than the window: the watermarks cannot tell, the fields still must.
        if !matches!(
            outcome(&fin.body.dedup, op.device, op.seq),
            Outcome::Applied | Outcome::OutsideWindow
        ) {
            continue;
        }
        if kind == OpKind::Location && locations.insert(*op) {
            location_witness.extend(cx.op_witness(op, i));
        }
        // A finishing op on a live final copy is already a resurrection (`session`).
        let resurrected =
            matches!(kind, OpKind::Complete | OpKind::Cancel) && !fin.header.tombstone;
        if phase_breach.is_none()
            && !resurrected
            && phases_after(kind).is_some_and(|p| !p.contains(&fin.body.state.phase))
        {
            phase_breach = Some((kind, i, *op));
        }
    }
    let applied = fin.body.state.location_updates as usize;
    if applied < locations.len() {
        cx.report(
            Kind::CommittedOpLost,
            format!(
                "{} location reports were reported committed and its watermarks record them applied, but the final copy has {applied}",
                locations.len()
            ),
            &location_witness,
        );
    }
    if let Some((kind, i, op)) = phase_breach {
        let witness = cx.op_witness(&op, i);
        cx.report(
            Kind::CommittedOpLost,
            format!(
                "{op} ({kind:?}) was reported committed and its watermarks record it applied, but the final copy is {:?}",
                fin.body.state.phase
            ),
            &witness,
        );
    }
}
