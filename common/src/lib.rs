//! # lifeboat-common: the replication core
//!
//! Everything Lifeboat decides lives here, with no sockets, no disk and no clock reads, so it
//! can be tested deterministically:
//!
//! - [`clock`]: where the drivers (not the cores) read wall-clock time;
//! - [`ids`]: session, device, datacenter and op identifiers;
//! - [`version`]: version vectors that order a session's states and detect divergence;
//! - [`dedup`]: the per-device watermark that makes every op apply exactly once (C2);
//! - [`app`] and [`trip`]: the application behind a session, and the built-in trip model;
//! - [`keyring`] and [`digest`]: the region's keys and the sealed digest devices store (C4);
//! - [`codec`]: the bounded frame codec (C6); [`wire`]: the messages it carries;
//! - [`limits`]: the names of the limits a datacenter enforces (C6);
//! - [`datacenter`]: the datacenter-side state machine (apply, restore, dispatch, tombstones);
//! - [`edge`]: the device-side state machine (outbox, held digests, replay);
//! - [`op_outcome`]: how each op ended, kept for the app until it acknowledges it;
//! - [`route`]: the edge's route policy (which datacenter next, backoff, probing home) and
//!   the failover clock;
//! - `fault` (feature `fault-injection`, off by default): deliberate bugs for the chaos
//!   suite's checker tests;
//! - `samples` (feature `samples`, off by default): representative trip digests for
//!   benchmarks and size reports.
//!
//! The server (`lifeboat-server`) and the edge client (`lifeboat-edge`) are thin drivers
//! around [`datacenter::DatacenterCore`] and [`edge::EdgeCore`]. The protocol they follow
//! (the anchor's chain), its invariants and the contract C1-C7 / failure catalogue S1-S17
//! cited throughout are in `docs/PROTOCOL.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod clock;
pub mod codec;
pub mod datacenter;
pub mod dedup;
pub mod digest;
pub mod edge;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod ids;
pub mod keyring;
pub mod limits;
pub mod op_outcome;
pub mod route;
#[cfg(feature = "samples")]
pub mod samples;
pub mod ticket;
pub mod trip;
pub mod version;
pub mod wire;

pub use app::{AppRejection, Application};
pub use ids::{DatacenterId, DeviceId, OpId, Role, SessionId};
pub use trip::{GeoPoint, Trip, TripOp, TripPhase, TripState};
pub use version::{VersionOrder, VersionVector};
