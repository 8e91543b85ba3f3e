//! Identifiers shared by datacenters and edge devices.
//!
//! Invariants:
//! - A [`SessionId`] is chosen by the device that creates the session (random 64 bits) so a
//!   retried create is recognisably the same session at any datacenter.
//! - An [`OpId`] is `(session, device, seq)`; `seq` starts at 1 and grows by exactly one per op
//!   a device submits to a session. Op ids never change across retries, reconnects or
//!   failovers, which is what makes exactly-once (C2) checkable from a tiny per-device
//!   watermark in the digest (see [`crate::dedup`]).
//! - The device id a datacenter acts on always comes from the authenticated connection, never
//!   from a message body.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Ids print one way everywhere: `Debug` (what `{:?}` of a whole struct shows, in logs and
/// examples) is the same short form as `Display` (`s0d195bba8588457`, `d42`, `dc2`,
/// `r99636c0b`, `s…/d42#7`), so one id never shows up in two spellings.
macro_rules! debug_as_display {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    )*};
}
debug_as_display!(SessionId, DeviceId, DatacenterId, ReplicaId, OpId);

/// One session (a trip, in the built-in model).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// One edge device (a phone).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

/// One datacenter of a region. Each datacenter owns one slot of every version vector.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DatacenterId(pub u16);

/// One slot of the version vector: a datacenter's store. Chosen at random when a data
/// directory is created and kept in it, so a datacenter that comes back with a lost disk
/// gets a fresh slot and can never produce a version equal to one it made before (which a
/// device may still hold with different contents).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaId(pub u32);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:08x}", self.0)
    }
}

/// Stable identity of an op: the session it targets, the device that submitted it, and that
/// device's sequence number within the session (1, 2, 3, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId {
    /// The session the op targets.
    pub session: SessionId,
    /// The device that submitted it.
    pub device: DeviceId,
    /// The device's sequence number within the session, from 1.
    pub seq: u64,
}

/// The part a device plays in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Creates the session (requests a trip).
    Rider,
    /// Assigned to the session by the datacenter (dispatch).
    Driver,
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{:016x}", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

impl fmt::Display for DatacenterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dc{}", self.0)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.session, self.device, self.seq)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Rider => f.write_str("rider"),
            Role::Driver => f.write_str("driver"),
        }
    }
}
