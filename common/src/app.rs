//! The application behind a session, as a trait.
//!
//! Lifeboat replicates any session shaped like this: one device creates it (the requester,
//! [`Role::Rider`]), the datacenter assigns a second participant from its pool of available
//! devices (the provider, [`Role::Driver`]), both submit ops, and the session ends in a
//! finished state that is kept only as a tombstone. The built-in model is the trip
//! ([`crate::trip::Trip`]).
//!
//! Invariants an implementation must keep:
//! - `apply`, `create` and `assign` are deterministic functions of their inputs (time comes in
//!   as `now_ms`), so replaying the same ops gives the same state at any datacenter.
//! - A rejected op leaves the state unchanged.
//! - Once `is_finished` is true, every op is rejected.

use crate::ids::Role;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// Why the application refused an op. Nothing changed when this is returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppRejection {
    /// The op does not apply in the session's current state (e.g. starting a cancelled trip).
    #[error("op {op} is not allowed in state {state}")]
    InvalidTransition {
        /// The state the session is in, as the application names it (a trip's phase).
        state: String,
        /// What the op tried to do, in words.
        op: String,
    },
    /// The op is one the other participant's role submits.
    #[error("a {role} may not {op}")]
    WrongRole {
        /// The role of the device that submitted the op.
        role: Role,
        /// What the op tried to do, in words.
        op: String,
    },
    /// The op is malformed whatever the state (coordinates out of range, an implausible jump,
    /// a session that does not start with its creating op); the text says which.
    #[error("invalid op: {0}")]
    InvalidOp(String),
}

/// Session logic plugged into the replication core.
pub trait Application: Clone + Debug + PartialEq + Send + Sync + 'static {
    /// A session's replicated state (sealed into the digest).
    type State: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// An op a participant submits to change the state.
    type Op: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Whether `op` is the op that creates a session (submitted by the requester as seq 1).
    fn is_create(op: &Self::Op) -> bool;
    /// Build the initial state from the creating op.
    fn create(op: &Self::Op, now_ms: u64) -> Result<Self::State, AppRejection>;
    /// Apply an op from a participant playing `role`.
    fn apply(
        state: &mut Self::State,
        role: Role,
        op: &Self::Op,
        now_ms: u64,
    ) -> Result<(), AppRejection>;
    /// Whether the session waits for the datacenter to assign a provider.
    fn needs_assignee(state: &Self::State) -> bool;
    /// The datacenter-side change: a provider was assigned.
    fn assign(state: &mut Self::State, now_ms: u64) -> Result<(), AppRejection>;
    /// A finished session is tombstoned and never changes again.
    fn is_finished(state: &Self::State) -> bool;
}
