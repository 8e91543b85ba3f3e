//! C2: no copy (at the end, or persisted by a device during the run) applied more location
//! reports than the driver submitted, and no watermark ran past the ops its device
//! submitted (of the devices whose ops the history records: all of them, unless it says
//! otherwise).

use crate::checker::context::{Candidate, Ctx};
use crate::checker::history::{Event, OpKind};
use crate::checker::violation::Kind;
use lifeboat_common::DeviceId;
use std::collections::BTreeSet;

/// C2 on every copy the run left, and on every copy a device persisted: never more location
/// reports than the driver submitted, never a watermark past the ops a device submitted.
pub(super) fn check_applied_twice(cx: &mut Ctx<'_>, copies: &[Candidate<'_>]) {
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
            if reported.contains(&m.device) || !cx.history.records_ops_of(m.device) {
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
