//! The stores at the end of a run: every datacenter's copy of every session and, when they
//! were read, every device's held copies.
//!
//! Invariant: copies are kept as read (`lifeboat_server::service::read_store` for a
//! datacenter, the device's opened digests); the checker chooses the final copy itself.

use lifeboat_common::dedup::DedupEntry;
use lifeboat_common::digest::{DigestBody, DigestHeader};
use lifeboat_common::{DatacenterId, DeviceId, SessionId, TripPhase, TripState, VersionVector};
use lifeboat_server::service::StoredSession;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Who holds a copy at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    Dc(DatacenterId),
    Device(DeviceId),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Dc(dc) => write!(f, "{dc}"),
            Holder::Device(d) => write!(f, "{d}"),
        }
    }
}

/// A copy a device holds at the end (`committed`: as the device marked it).
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceCopy {
    pub stored: StoredSession,
    pub committed: bool,
}

/// The stores at the end of a run: every datacenter's copy of every session and, when the
/// devices' stores were read, every device's.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    dcs: BTreeMap<SessionId, Vec<(DatacenterId, StoredSession)>>,
    /// `None`: the devices' stores were not read; their final copies are the last ones their
    /// histories show them persisting.
    devices: Option<BTreeMap<SessionId, Vec<(DeviceId, DeviceCopy)>>>,
}

impl FinalState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add what one datacenter's store holds (`lifeboat_server::service::read_store`).
    pub fn add_store(&mut self, dc: DatacenterId, sessions: Vec<StoredSession>) {
        for s in sessions {
            self.dcs.entry(s.0.session).or_default().push((dc, s));
        }
    }

    /// Add what one device's store holds (opened digests, with the device's committed mark).
    /// Once called (even with nothing), every device's final copies come from the stores.
    pub fn add_device(&mut self, device: DeviceId, sessions: Vec<DeviceCopy>) {
        let all = self.devices.get_or_insert_with(BTreeMap::new);
        for c in sessions {
            all.entry(c.stored.0.session).or_default().push((device, c));
        }
    }

    /// Whether the devices' stores were read.
    pub fn devices_read(&self) -> bool {
        self.devices.is_some()
    }

    /// Every session some store holds.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        let mut all: BTreeSet<SessionId> = self.dcs.keys().copied().collect();
        if let Some(d) = &self.devices {
            all.extend(d.keys().copied());
        }
        all.into_iter()
    }

    /// The datacenters' copies of `session`.
    pub fn copies(&self, session: SessionId) -> &[(DatacenterId, StoredSession)] {
        self.dcs.get(&session).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The devices' copies of `session` (empty if the stores were not read).
    pub fn device_copies(&self, session: SessionId) -> &[(DeviceId, DeviceCopy)] {
        self.devices
            .as_ref()
            .and_then(|d| d.get(&session))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

pub(crate) fn finished(phase: TripPhase) -> bool {
    matches!(phase, TripPhase::Completed | TripPhase::Cancelled)
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
        DigestHeader {
            session,
            version,
            rider,
            driver,
            tombstone,
        },
        DigestBody { state, dedup },
    )
}
