//! C3: one version, one state, across every copy at the end and every copy a device
//! persisted during the run.

use crate::checker::context::{Candidate, Ctx};
use crate::checker::history::Event;
use crate::checker::violation::Kind;
use lifeboat_common::{TripPhase, VersionVector};

/// C3: one version, one state. A datacenter bumps its own slot for every change, so two
/// copies (or two copies devices persisted) with the same version and different contents
/// mean a counter was issued twice: some datacenter went back and built on an older copy.
pub(super) fn check_versions_unique(cx: &mut Ctx<'_>, copies: &[Candidate<'_>]) {
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
