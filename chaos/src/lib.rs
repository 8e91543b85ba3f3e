//! `lifeboat-chaos`: fault injection for Lifeboat's tests and harness.
//!
//! The network impairment layer sits under QUIC: [`ImpairedSocket`] wraps any
//! `quinn::AsyncUdpSocket` (a real UDP socket, or a simulated one) and, from a seeded RNG,
//! drops, delays (base + jitter), duplicates and reorders datagrams in both directions, and
//! blackholes a path while a [`Partition`] cuts it. Kernel netem is not needed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lifeboat_chaos::{client_endpoint, Impairment};
//! use std::time::Duration;
//! let lossy = Impairment::none()
//!     .with_loss(0.3)
//!     .with_duplicate(0.05)
//!     .with_reorder(0.1, Duration::from_millis(40))
//!     .with_delay(Duration::from_millis(150), Duration::from_millis(350));
//! let (endpoint, handle) = client_endpoint("127.0.0.1:0".parse()?, lossy, 42)?;
//! // ... connect with `endpoint` (or put it in `EdgeConfig::endpoint`) ...
//! handle.partition().cut_all(); // a tunnel
//! handle.partition().repair_all();
//! println!("{:?}", handle.stats().total());
//! # drop(endpoint); Ok(()) }
//! ```
//!
//! Files: `config.rs` (what to do, validated), `lane.rs` (I/O-free seeded decisions and the
//! bounded delay queue), `impair.rs` (the socket), `partition.rs` (the cut switch),
//! `stats.rs` (counters), `endpoint.rs` (impaired quinn endpoints on real sockets).

#![forbid(unsafe_code)]

mod config;
mod endpoint;
mod impair;
mod lane;
mod partition;
mod stats;

pub use config::{
    ConfigError, Directions, Impairment, DEFAULT_QUEUE_LIMIT, DEFAULT_REORDER_GAP, MAX_DELAY,
    MAX_QUEUE_LIMIT,
};
pub use endpoint::{client_endpoint, endpoint, impaired_udp_socket, server_endpoint, ImpairError};
pub use impair::{ImpairHandle, ImpairedSocket};
pub use partition::{Partition, PartitionError, MAX_CUT_PEERS};
pub use stats::{DirectionStats, ImpairStats};
