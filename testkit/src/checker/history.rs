//! The ledger of a run: what each device did and saw, in recorded order.
//!
//! Every suite that judges the contract writes (or translates its own records into) one
//! [`History`]: the ops the apps submitted, what the edge client answered, every copy a
//! device persisted, the server-side changes it was told are committed, the conflicts it
//! was told of. Invariant: entries of one device are in the order they happened.

use lifeboat_common::edge::SubmitError;
use lifeboat_common::{DeviceId, OpId, SessionId, TripPhase, VersionVector};
use std::collections::BTreeSet;
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
    /// The device persisted a copy of the session (`committed`: the datacenter marked it
    /// committed; otherwise it is tentative).
    Saw {
        session: SessionId,
        version: VersionVector,
        phase: TripPhase,
        locations: u32,
        committed: bool,
    },
    /// The device was told a server-side change (dispatch) of this version is committed.
    ServerCommitted {
        session: SessionId,
        version: VersionVector,
    },
    /// The device was told its copy and the datacenter's diverged.
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
            | Event::ServerCommitted { session, .. }
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
                committed,
                ..
            } => write!(
                f,
                "holds {version} {phase:?}, {locations} locations{}",
                if *committed { "" } else { " (tentative)" }
            ),
            Event::ServerCommitted { version, .. } => {
                write!(f, "told server change {version} committed")
            }
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
    /// `None`: every device's ops are recorded (the simulation). `Some`: only these
    /// devices' ops are (a suite that keeps ledgers of some devices only, e.g. the
    /// drivers'); a watermark of another device in a copy then proves nothing either way.
    recorded: Option<BTreeSet<DeviceId>>,
}

impl History {
    /// A history that records every device's ops.
    pub fn new() -> Self {
        Self::default()
    }

    /// A history that records the ops of `devices` only (see [`History::records_ops_of`]).
    pub fn of_devices(devices: impl IntoIterator<Item = DeviceId>) -> Self {
        Self {
            entries: Vec::new(),
            recorded: Some(devices.into_iter().collect()),
        }
    }

    /// Whether every op `device` submitted is in this history (the C2 watermark check
    /// judges only such devices).
    pub fn records_ops_of(&self, device: DeviceId) -> bool {
        self.recorded.as_ref().is_none_or(|r| r.contains(&device))
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
