//! # lifeboat-edge: the embeddable edge client
//!
//! Keeps a sealed copy of every session the device takes part in, so a datacenter can be
//! lost without losing a trip. Embed it in a mobile or desktop app:
//!
//! ```no_run
//! # async fn demo() -> Result<(), lifeboat_edge::EdgeError> {
//! use lifeboat_edge::{EdgeClient, EdgeConfig, StoreLocation};
//! use lifeboat_common::{DeviceId, GeoPoint};
//! let cfg = EdgeConfig::new(
//!     DeviceId(42),
//!     [0u8; 32], // the credential from `lifeboat-server credential --device 42`
//!     vec!["127.0.0.1:4433".parse().unwrap(), "127.0.0.1:4434".parse().unwrap()],
//!     std::fs::read("lifeboat-region/ca.pem")?,
//!     StoreLocation::Path("device-42".into()),
//! );
//! let client = EdgeClient::start(cfg).await?;
//! let here = GeoPoint { lat_e6: 52_520_000, lon_e6: 13_405_000 };
//! let (trip, commit) = client.request_trip(here, here).await?;
//! println!("trip {trip} committed at version {}", commit.version);
//! # Ok(()) }
//! ```
//!
//! ## Every op's outcome
//!
//! - An op gets its [`lifeboat_common::OpId`] when it is queued ([`EdgeClient::enqueue`]
//!   returns it at once; [`EdgeClient::submit`] with the commit, or in
//!   [`EdgeError::Failed`]); it is on the device's disk before the call returns.
//! - It has exactly one outcome, committed or failed, decided once. The outcome replaces the
//!   queued op on disk in one write, so no kill leaves an op neither queued nor decided.
//! - The outcome is an event ([`ClientEvent::OpResolved`]) and stays readable
//!   ([`EdgeClient::op_status`], [`EdgeClient::outcomes`]) until the app calls
//!   [`EdgeClient::acknowledge`]: at-least-once delivery, also across a kill. After a restart,
//!   read [`EdgeClient::outcomes`] and [`EdgeClient::queued_ops`] before sending an action
//!   again: a queued or decided op must not be re-sent; one that is neither was never queued.
//! - At most `EdgeLimits::max_outcomes` (1,024) unacknowledged outcomes are kept; beyond,
//!   the oldest is dropped.
//!
//! Events carry their own time ([`TimedEvent::at_ms`]); `FailoverFinished` reports the stall
//! the user felt, detection included. The client remembers the datacenter it last reached.
//!
//! Apps that do not run tokio use [`BlockingEdgeClient`], which owns its runtime.
//! The replication rules live in [`lifeboat_common::edge::EdgeCore`]; this crate is the
//! driver: QUIC (quinn), the sled store, failure detection and reconnects.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod blocking;
pub mod client;
pub mod config;
pub mod probe_board;
pub mod store;

pub use blocking::BlockingEdgeClient;
pub use client::{
    client_config, client_endpoint, ClientEvent, ClientStatsSnapshot, EdgeClient, EdgeError,
    ProbeBoard, SessionSnapshot, TimedEvent, TlsSetupError,
};
pub use config::EdgeConfig;
pub use lifeboat_common::edge::{Commit, OpProgress, SubmitError};
pub use lifeboat_common::op_outcome::{OpOutcomeRecord, OpStatus};
pub use store::{RouteMemory, SharedDb, StoreLocation};
