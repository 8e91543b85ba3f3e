//! The datacenter core's public vocabulary: its configuration ([`DcConfig`], [`Durability`]),
//! what it asks its driver to do ([`Effects`]), what it reports ([`DcEvent`]) and counts
//! ([`DcStats`]). Plain data: no rule of the protocol lives here.

use crate::app::Application;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, ReplicaId, SessionId};
use crate::version::VersionVector;
use crate::wire::{ServerMsg, UploadRefusal};

use super::shadow::ShadowSample;

/// When a server-side change (dispatch) counts as committed for the datacenter's own report
/// ([`DcEvent::ServerChangeCommitted`], `server_changes_committed`). Whatever the mode, the
/// devices report commits by the chain rule (docs/PROTOCOL.md): a dispatch is never the
/// base of a committed op before the rider persisted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Counted as soon as the datacenter applied it; devices get it asynchronously.
    Async,
    /// Counted once this many participants acknowledged persisting it (1 or 2).
    EdgeAck(u8),
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "async" {
            return Ok(Durability::Async);
        }
        match s.strip_prefix("edge-ack:").map(str::parse::<u8>) {
            Some(Ok(k @ 1..=2)) => Ok(Durability::EdgeAck(k)),
            _ => Err(format!(
                "durability must be 'async' or 'edge-ack:K' with K 1 or 2, not '{s}'"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Async => f.write_str("async"),
            Durability::EdgeAck(k) => write!(f, "edge-ack:{k}"),
        }
    }
}

/// Tunables of the datacenter core.
#[derive(Clone, Debug)]
pub struct DcConfig {
    /// This datacenter's id (sent to devices in `Welcome`).
    pub dc: DatacenterId,
    /// This datacenter's slot in version vectors (see [`ReplicaId`]).
    pub replica: ReplicaId,
    /// When a dispatch counts as committed for this datacenter's own report.
    pub durability: Durability,
    /// Most sessions (active and tombstoned) held at once.
    pub max_sessions: usize,
    /// A device taking part in this many active sessions may not create another.
    pub max_active_sessions_per_device: usize,
    /// Session creates a device may make per minute (also the burst size); 0: unlimited.
    pub session_creates_per_minute: u32,
    /// The shadow restore samples one session this often (ms); 0: off.
    pub shadow_interval_ms: u64,
    /// A tombstone is kept this long after its seal, and copies older than this are not
    /// restored (ms; 0: tombstones kept for ever). See the `tombstones` room.
    pub tombstone_ttl_ms: u64,
    /// Most tombstones kept (0: no bound): the oldest go early, never before half the TTL.
    pub max_tombstones: usize,
}

impl DcConfig {
    /// The defaults: async durability, 1,000,000 sessions, 16 active sessions per device,
    /// 10 creates per minute, no shadow restore, tombstones kept 24 hours (at most 250,000).
    pub fn new(dc: DatacenterId, replica: ReplicaId) -> Self {
        Self {
            dc,
            replica,
            durability: Durability::Async,
            max_sessions: 1_000_000,
            max_active_sessions_per_device: 16,
            session_creates_per_minute: 10,
            shadow_interval_ms: 0,
            tombstone_ttl_ms: 24 * 3600 * 1000,
            max_tombstones: 250_000,
        }
    }
}

/// Everything the driver must do after a batch of inputs, in this order.
#[derive(Debug)]
pub struct Effects<A: Application> {
    /// Write these digests to the datacenter's store (key: session).
    pub persist: Vec<(SessionId, SealedDigest)>,
    /// Then delete these sessions from the store (expired tombstones), after writing
    /// [`DatacenterCore::restore_floor_ms`](super::DatacenterCore::restore_floor_ms) if it
    /// changed.
    pub forget: Vec<SessionId>,
    /// Then send these messages.
    pub send: Vec<(DeviceId, ServerMsg<A>)>,
    /// Things worth counting or logging.
    pub events: Vec<DcEvent>,
}

impl<A: Application> Default for Effects<A> {
    fn default() -> Self {
        Self {
            persist: Vec::new(),
            forget: Vec::new(),
            send: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<A: Application> Effects<A> {
    /// Whether there is nothing to persist, send or report.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.forget.is_empty()
            && self.send.is_empty()
            && self.events.is_empty()
    }
}

/// Notable things that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcEvent {
    /// A device's create op started this session here.
    Created(SessionId),
    /// This datacenter took the session from a device's upload (it held no copy, or the
    /// upload descended from its own).
    Restored {
        /// The session restored.
        session: SessionId,
        /// The device whose upload it came from.
        from: DeviceId,
    },
    /// An uploaded copy was refused and nothing changed (also a dispatch that failed to seal,
    /// reported with the driver as `from`).
    UploadRefused {
        /// The session the copy was of.
        session: SessionId,
        /// The device that uploaded it.
        from: DeviceId,
        /// Why it was refused.
        reason: UploadRefusal,
    },
    /// A concurrent upload not known committed: nothing changed, the session waits for its
    /// chain holder.
    Diverged {
        /// The session that waits.
        session: SessionId,
        /// The device whose concurrent copy was not taken.
        from: DeviceId,
    },
    /// A committed upload replaced this datacenter's concurrent branch (whose changes nobody
    /// was told are committed); kept with a version above both.
    ChainAdopted {
        /// The session whose branch was replaced.
        session: SessionId,
        /// The device that uploaded the committed copy.
        from: DeviceId,
    },
    /// Two copies both said to be committed and neither dominates: the chain rule was
    /// broken somewhere (a device lied about its store, or a bug). Nothing changed.
    ChainConflict {
        /// The session concerned.
        session: SessionId,
        /// The device whose upload conflicted.
        from: DeviceId,
    },
    /// The anchor came back with an empty store; the session continues from this
    /// datacenter's copy (see `reanchor`).
    Reanchored {
        /// The session that continues.
        session: SessionId,
        /// The anchor that came back empty.
        device: DeviceId,
    },
    /// A participant of the dropped branch is not one of the committed copy.
    Removed {
        /// The session the device is no longer part of.
        session: SessionId,
        /// The device told `Removed`.
        device: DeviceId,
    },
    /// Dispatch assigned a driver to a waiting session.
    Dispatched {
        /// The session assigned.
        session: SessionId,
        /// The driver taken from the pool of available devices.
        driver: DeviceId,
    },
    /// The chain holder persisted `version`: the changes up to it are committed.
    Confirmed {
        /// The session confirmed.
        session: SessionId,
        /// The version the chain holder persisted.
        version: VersionVector,
    },
    /// A dispatch counts as committed for this datacenter's own report, by its
    /// [`Durability`] (with `EdgeAck(k)`: once `k` participants acknowledged it).
    ServerChangeCommitted {
        /// The session dispatched.
        session: SessionId,
        /// The version of the dispatch.
        version: VersionVector,
    },
    /// A change finished the session: it is a tombstone here from now on.
    Finished(SessionId),
    /// The shadow restore judged a sample (see [`ShadowSample`]).
    ShadowSampled(ShadowSample),
}

/// Counters, for logs, tests and the harness.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DcStats {
    /// Ops applied (creates included).
    pub ops_applied: u64,
    /// Ops rejected, by the application or the core (order, limits, failed changes).
    pub ops_rejected: u64,
    /// Ops already processed (answered again from the dedup watermark, not applied again).
    pub ops_duplicate: u64,
    /// Sessions created here.
    pub sessions_created: u64,
    /// Sessions taken from a device's upload ([`DcEvent::Restored`]).
    pub sessions_restored: u64,
    /// Uploads older than this datacenter's copy (the device was sent ours).
    pub uploads_stale: u64,
    /// Uploads refused ([`DcEvent::UploadRefused`]).
    pub uploads_refused: u64,
    /// Concurrent uploads not known committed (the session waited for its chain holder).
    pub uploads_diverged: u64,
    /// Committed uploads that replaced a concurrent branch of this datacenter.
    #[serde(default)]
    pub chain_adopted: u64,
    /// Two concurrent copies both said to be committed (must stay 0).
    #[serde(default)]
    pub chain_conflicts: u64,
    /// Participants told they were removed from a session.
    #[serde(default)]
    pub removed: u64,
    /// Copies confirmed by a chain holder's `Ack`.
    #[serde(default)]
    pub confirmations: u64,
    /// Concurrent branches of participants re-versioned under once the chain holder
    /// confirmed our copy.
    #[serde(default)]
    pub branches_absorbed: u64,
    /// Anchors that came back with an empty store (see `DatacenterCore::reanchor`).
    #[serde(default)]
    pub reanchored: u64,
    /// Drivers assigned by dispatch.
    pub dispatched: u64,
    /// Dispatches counted as committed by the [`Durability`] mode.
    pub server_changes_committed: u64,
    /// Creates refused: the device was in too many active sessions.
    #[serde(default)]
    pub limited_sessions_per_device: u64,
    /// Creates refused: the device created sessions too fast.
    #[serde(default)]
    pub limited_create_rate: u64,
    /// Creates and restores refused: the datacenter held `max_sessions`.
    #[serde(default)]
    pub limited_sessions: u64,
    /// Shadow-restore samples judged.
    #[serde(default)]
    pub shadow_samples: u64,
    /// Samples whose copies restored the session at the sampled version, nothing missing.
    #[serde(default)]
    pub shadow_restorable: u64,
    /// Sampled copies that would not restore their session alone (behind, or missing).
    #[serde(default)]
    pub shadow_copies_behind: u64,
    /// Sampled devices that did not answer in time.
    #[serde(default)]
    pub shadow_copies_silent: u64,
    /// Tombstones dropped by age or count (see `tombstones`).
    #[serde(default)]
    pub tombstones_expired: u64,
    /// Uploads of unknown sessions refused as sealed before the restore floor.
    #[serde(default)]
    pub uploads_too_old: u64,
    /// Idle sessions resealed so their devices' copies stay younger than the floor.
    #[serde(default)]
    pub sessions_refreshed: u64,
}
