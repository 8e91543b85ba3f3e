//! What the driver counts (the core counts its own) and the status snapshot built from
//! both: the one source for the status file, `/metrics` and `/readyz`.
//!
//! Invariants: the driver's counters (`refused_connections` to `store_errors`) and the limit
//! hits only grow, from zero at process start (they are not stored); the snapshot is built
//! under the core's lock (every 500 ms), so its readers never touch the core.

use crate::keyring_watch::KeyringStatus;
use lifeboat_common::datacenter::DcStats;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters kept by the driver (the core keeps its own).
#[derive(Default)]
pub(crate) struct DriverCounters {
    pub(crate) connections: AtomicUsize,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) bad_credentials: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    /// QUIC handshakes completed (full or resumed).
    pub(crate) handshakes: AtomicU64,
    /// The same per QUIC endpoint (set once, when the endpoints are bound).
    pub(crate) handshakes_per_endpoint: std::sync::OnceLock<Vec<AtomicU64>>,
    /// Devices told to move by a drain (a planned failover).
    pub(crate) drained: AtomicU64,
    /// Connections whose handshake is done and that have not said `Hello` yet (devices'
    /// standby connections, mostly).
    pub(crate) standby: AtomicUsize,
    /// The region-wide session tickets (issued, resumed, refused).
    pub(crate) tickets: std::sync::Arc<crate::tickets::TicketCounters>,
}

/// A status snapshot (also written to `stats_file`).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This datacenter's id.
    pub dc: u16,
    /// The UDP address QUIC is served on.
    pub listen: String,
    /// Sessions held, active and tombstoned.
    pub sessions: usize,
    /// Sessions held and not finished.
    pub active_sessions: usize,
    /// Tombstones held (finished sessions, kept `tombstone_ttl_ms`).
    pub tombstones: usize,
    /// Copies of sessions not held sealed before this (unix ms) are not restored: the floor
    /// raised by tombstones that expired early (the count bound); 0 if none did.
    pub restore_floor_ms: u64,
    /// Devices connected now.
    pub connections: usize,
    /// Connections handshaken and not yet past `Hello` (standby connections: devices' ready
    /// paths to this datacenter for a failover).
    pub standby_connections: usize,
    /// Connections refused at accept: over `max_connections`, over the handshakes in
    /// progress, or over the per-address limit.
    pub refused_connections: u64,
    /// Connections whose `Hello` credential did not verify.
    pub bad_credentials: u64,
    /// Frames that did not decode or came out of order (the connection was closed).
    pub bad_frames: u64,
    /// Connections closed because their output queue filled up.
    pub slow_consumers: u64,
    /// Failed writes or flushes of the store (the devices still hold every digest).
    pub store_errors: u64,
    /// QUIC handshakes completed, full or resumed.
    pub handshakes: u64,
    /// ... of which resumed a TLS session with a region ticket (no certificate signature).
    pub handshakes_resumed: u64,
    /// Handshakes completed per QUIC endpoint (one entry unless `endpoints` is above 1).
    pub handshakes_per_endpoint: Vec<u64>,
    /// Session tickets issued to devices.
    pub tickets_issued: u64,
    /// Tickets offered that did not open (another region, a retired key): full handshakes.
    pub tickets_refused: u64,
    /// Devices told to move to another datacenter by a drain (a planned failover).
    pub drained_devices: u64,
    /// The replication core's own counters.
    pub core: DcStats,
    /// How often each limit was hit, by limit name (see `SECURITY.md`).
    pub limits: std::collections::BTreeMap<&'static str, u64>,
    /// The keyring in use, its reloads and the active sessions per sealing key.
    pub keyring: KeyringStatus,
    /// Op latency at this datacenter: from the frame read (any wait for the core's lock
    /// included) to the reply queued, after the store write.
    pub op_latency: crate::latency::Histogram,
    /// Time of each background store flush (every 100 ms while something was written).
    pub store_flush_latency: crate::latency::Histogram,
    /// The shadow restore: whether the devices' copies would restore the sampled sessions.
    pub shadow: crate::shadow::ShadowStatus,
}
