//! # lifeboat-server: the datacenter
//!
//! A thin driver around [`lifeboat_common::datacenter::DatacenterCore`]: QUIC (quinn, rustls
//! with ring) in front, a sled store behind, one actor owning the core. See
//! [`service`] for the task layout and its invariants, [`store`] for what is on disk and
//! [`region`] for the keys and certificates shared by the datacenters of a region, [`limits`]
//! for the connection limits, [`keyring_watch`] for key rotation without restart and
//! [`settings`] for the layered settings of `serve` (file, environment, flags).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod admin_client;
pub mod cli;
pub mod crash;
pub mod http;
pub mod keyring_watch;
pub mod latency;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod region;
pub mod service;
pub mod settings;
pub mod shadow;
pub mod socket;
pub mod status;
pub mod store;
pub mod tickets;

pub use service::{Server, ServerConfig, ServerError, Status, Stop};
