//! C3 along each device's history: the committed versions it is told form one chain, and a
//! committed tombstone is never followed by a live copy. Tentative copies replaced by one
//! that does not descend from them are counted, not flagged.

use crate::checker::context::{Ctx, Told};
use crate::checker::final_state::finished;
use crate::checker::history::Event;
use crate::checker::order::{dominates, order, Order};
use crate::checker::violation::{Kind, Summary};
use lifeboat_common::{DeviceId, VersionVector};
use std::collections::BTreeSet;

/// C3 along each device's history: the committed versions it is told form one chain, and a
/// committed tombstone is never followed by a live copy.
pub(super) fn check_histories(cx: &mut Ctx<'_>, told: &[Told<'_>], summary: &mut Summary) {
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
