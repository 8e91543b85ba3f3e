//! # lifeboat-dsim: deterministic simulation of Lifeboat
//!
//! Real `lifeboat-server` datacenters and real `lifeboat-edge` clients run in one process on
//! [turmoil]'s simulated network and clock: quinn runs over turmoil through [`net`] (an
//! `AsyncUdpSocket` on a simulated UDP socket, and a quinn `Runtime` on the simulated clock),
//! and the server and client read wall-clock time from a simulated
//! [`lifeboat_common::clock::Clock`]. A seeded workload of riders and drivers
//! ([`workload`]) runs while a seeded plan of faults ([`faults`]) crashes, bounces and
//! freezes datacenters (disk kept or lost), partitions links both ways or one way (false
//! failovers, lost replies, long partitions, staggered returns home), drops, delays and
//! reorders packets and restarts device apps. Afterwards every device's recorded history is
//! checked against the datacenters' and the devices' stores by the history checker of
//! `lifeboat-testkit` ([`lifeboat_testkit::checker`]: every session
//! converged; C1 no committed op lost, C2 none applied twice, C3 no committed version gone
//! back or sideways and no tombstone resurrected, every session present), with no
//! exemption for surfaced conflicts.
//!
//! A run is a function of its seed: [`sim::run`] with the same [`sim::SimConfig`] gives the
//! same history and the same [`sim::RunOutcome::trace_hash`], so a failing seed replays
//! exactly (`LIFEBOAT_SEED=<seed> cargo test -p lifeboat-dsim --test chaos`). See
//! `docs/CHAOS.md`.
//!
//! The checker is independent of the simulation and of the replication core: it uses only
//! `lifeboat-common` and `lifeboat-server` data types, never their rules (its own version
//! dominance, raw watermark bits). The region is the testkit's deterministic one
//! ([`lifeboat_testkit::region::TestRegion::ed25519`]: fixed signature sizes).

#![forbid(unsafe_code)]

pub mod faults;
pub mod net;
pub mod sim;
pub mod suite;
pub mod workload;
