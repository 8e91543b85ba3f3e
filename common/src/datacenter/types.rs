//! The datacenter core's public vocabulary: its configuration ([`DcConfig`], [`Durability`]),
//! what it asks its driver to do ([`Effects`]), what it reports ([`DcEvent`]) and counts
//! ([`DcStats`]). Plain data: no rule of the protocol lives here.

use crate::app::Application;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, ReplicaId, SessionId};
use crate::version::VersionVector;
use crate::wire::{ServerMsg, UploadRefusal};

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
    pub dc: DatacenterId,
    /// This datacenter's slot in version vectors (see [`ReplicaId`]).
    pub replica: ReplicaId,
    pub durability: Durability,
    /// Most sessions (active and tombstoned) held at once.
    pub max_sessions: usize,
    /// A device taking part in this many active sessions may not create another.
    pub max_active_sessions_per_device: usize,
    /// Session creates a device may make per minute (also the burst size); 0: unlimited.
    pub session_creates_per_minute: u32,
}

impl DcConfig {
    pub fn new(dc: DatacenterId, replica: ReplicaId) -> Self {
        Self {
            dc,
            replica,
            durability: Durability::Async,
            max_sessions: 1_000_000,
            max_active_sessions_per_device: 16,
            session_creates_per_minute: 10,
        }
    }
}

/// Everything the driver must do after a batch of inputs, in this order.
#[derive(Debug)]
pub struct Effects<A: Application> {
    /// Write these digests to the datacenter's store (key: session).
    pub persist: Vec<(SessionId, SealedDigest)>,
    /// Then send these messages.
    pub send: Vec<(DeviceId, ServerMsg<A>)>,
    /// Things worth counting or logging.
    pub events: Vec<DcEvent>,
}

impl<A: Application> Default for Effects<A> {
    fn default() -> Self {
        Self {
            persist: Vec::new(),
            send: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<A: Application> Effects<A> {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.send.is_empty() && self.events.is_empty()
    }
}

/// Notable things that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcEvent {
    Created(SessionId),
    Restored {
        session: SessionId,
        from: DeviceId,
    },
    UploadRefused {
        session: SessionId,
        from: DeviceId,
        reason: UploadRefusal,
    },
    /// A concurrent upload not known committed: nothing changed, the session waits for its
    /// chain holder.
    Diverged {
        session: SessionId,
        from: DeviceId,
    },
    /// A committed upload replaced this datacenter's concurrent branch (whose changes nobody
    /// was told are committed); kept with a version above both.
    ChainAdopted {
        session: SessionId,
        from: DeviceId,
    },
    /// Two copies both said to be committed and neither dominates: the chain rule was
    /// broken somewhere (a device lied about its store, or a bug). Nothing changed.
    ChainConflict {
        session: SessionId,
        from: DeviceId,
    },
    /// The anchor came back with an empty store; the session continues from this
    /// datacenter's copy (see `reanchor`).
    Reanchored {
        session: SessionId,
        device: DeviceId,
    },
    /// A participant of the dropped branch is not one of the committed copy.
    Removed {
        session: SessionId,
        device: DeviceId,
    },
    Dispatched {
        session: SessionId,
        driver: DeviceId,
    },
    /// The chain holder persisted `version`: the changes up to it are committed.
    Confirmed {
        session: SessionId,
        version: VersionVector,
    },
    ServerChangeCommitted {
        session: SessionId,
        version: VersionVector,
    },
    Finished(SessionId),
}

/// Counters, for logs, tests and the harness.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DcStats {
    pub ops_applied: u64,
    pub ops_rejected: u64,
    pub ops_duplicate: u64,
    pub sessions_created: u64,
    pub sessions_restored: u64,
    pub uploads_stale: u64,
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
    pub dispatched: u64,
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
}
