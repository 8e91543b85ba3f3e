//! # lifeboat-testkit: the one test kit of Lifeboat
//!
//! Everything the three suites that judge the contract share, written once:
//!
//! - [`checker`]: the strict, independent history checker (C1 no committed op lost, C2 none
//!   applied twice, C3 no committed version gone back or sideways and no tombstone
//!   resurrected, every session present and converged). It decides with its own arithmetic,
//!   never with the replication core's rules. The deterministic simulation (`lifeboat-dsim`)
//!   records its [`checker::History`] directly; the end-to-end tests (`lifeboat-tests`) and
//!   the failover harness (`lifeboat-sim`) translate their ledgers into one;
//! - [`trip_end`]: what a completed trip must look like in a store (tombstone, phase, fare),
//!   a check of the end-to-end tests with no counterpart in the history checker;
//! - [`version_watch`]: C3 at the edge while a test runs (sampling every device's held
//!   versions), and a timeline of the devices' events for failure messages;
//! - [`region`]: the region directories: the server's own (`Region::init`) and the
//!   deterministic one of the simulation (Ed25519 keys, fixed signature sizes);
//! - [`cluster`]: a region and its real `lifeboat-server` processes on loopback, launched
//!   from the server binary (tests) or by re-running the calling executable with a hidden
//!   subcommand (the harness); [`dc_faults`]: SIGSTOP/SIGCONT and store damage on it;
//! - [`geo`]: the city the workloads drive in;
//! - [`fuzz_targets`]: the hostile-input entry points the cargo-fuzz targets (`fuzz/`) and
//!   the property tests of `lifeboat-common` (`common/tests/hostile_input.rs`) both drive.
//!
//! Invariants: nothing here is compiled into a production crate; the checker imports only
//! plain data types from `lifeboat-common` and `lifeboat-server` (a unit test keeps it so).

#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod dc_faults;
pub mod fuzz_targets;
pub mod geo;
pub mod region;
pub mod trip_end;
pub mod version_watch;
