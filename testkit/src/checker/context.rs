//! What the checks of one session share: the copies the checker may choose from, the
//! devices' final copies, the versions the devices were told are committed, and the
//! context that collects violations with their shortest witness history.

use crate::checker::final_state::{finished, Holder};
use crate::checker::history::{Entry, Event, History, OpKind};
use crate::checker::violation::{Kind, Violation};
use lifeboat_common::digest::{DigestBody, DigestHeader};
use lifeboat_common::{DeviceId, OpId, SessionId, TripState, VersionVector};

pub(super) fn describe(holder: Holder, h: &DigestHeader, b: &DigestBody<TripState>) -> String {
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
pub(super) struct Candidate<'a> {
    pub(super) holder: Holder,
    pub(super) header: &'a DigestHeader,
    pub(super) body: &'a DigestBody<TripState>,
}

/// A device's copy at the end (from its store, or the last one its history persisted).
pub(super) struct DeviceFinal<'a> {
    pub(super) device: DeviceId,
    pub(super) version: &'a VersionVector,
    /// The device's last `Saw` of the session, the witness.
    pub(super) last_saw: Option<usize>,
}

/// A version a device was told is committed, and where it was told.
pub(super) struct Told<'a> {
    pub(super) at: usize,
    pub(super) device: DeviceId,
    pub(super) version: &'a VersionVector,
    pub(super) tombstone: bool,
    /// A server change's commit (`ServerCommitted`): it may arrive after the device holds a
    /// newer copy (older news, not a step back); it must still never be sideways.
    pub(super) server_change: bool,
}

pub(super) struct Ctx<'a> {
    pub(super) history: &'a History,
    pub(super) session: SessionId,
    pub(super) events: &'a [&'a Entry],
    pub(super) final_copy: Option<String>,
    pub(super) out: Vec<Violation>,
}

impl Ctx<'_> {
    pub(super) fn report(&mut self, kind: Kind, detail: String, witness: &[usize]) {
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
    pub(super) fn queued(&self, op: &OpId) -> Option<usize> {
        self.events
            .iter()
            .position(|e| matches!(&e.event, Event::Accepted { op: o, .. } if o == op))
    }

    /// The kind of `op`, from its queueing.
    pub(super) fn kind_of(&self, op: &OpId) -> Option<OpKind> {
        self.events.iter().find_map(|e| match &e.event {
            Event::Accepted { op: o, kind } if o == op => Some(*kind),
            _ => None,
        })
    }

    /// The op's queueing (if recorded) and the event at `i`.
    pub(super) fn op_witness(&self, op: &OpId, i: usize) -> Vec<usize> {
        self.queued(op).into_iter().chain([i]).collect()
    }
}

/// Every version a device was told is committed, in recorded order.
pub(super) fn told_committed<'a>(cx: &Ctx<'a>) -> Vec<Told<'a>> {
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
