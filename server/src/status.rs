//! What the driver counts (the core counts its own) and the status snapshot built from
//! both: the one source for the status file, `/metrics` and `/readyz`.

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
}

/// A status snapshot (also written to `stats_file`).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub dc: u16,
    pub listen: String,
    pub sessions: usize,
    pub active_sessions: usize,
    pub connections: usize,
    pub refused_connections: u64,
    pub bad_credentials: u64,
    pub bad_frames: u64,
    pub slow_consumers: u64,
    pub store_errors: u64,
    pub core: DcStats,
    /// How often each limit was hit, by limit name (see `SECURITY.md`).
    pub limits: std::collections::BTreeMap<&'static str, u64>,
    pub keyring: KeyringStatus,
    /// Op latency at this datacenter: from the frame read to the reply queued, after the
    /// batch's persist and flush.
    pub op_latency: crate::latency::Histogram,
    /// Store persist-and-flush time per batch of changes.
    pub store_flush_latency: crate::latency::Histogram,
}
