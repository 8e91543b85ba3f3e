//! Op outcomes the app has not acknowledged yet: the device's record of how each of its ops
//! ended, kept until the app says it has handled it.
//!
//! The promise to the app (docs/EMBEDDING.md, "Every op's outcome"):
//! - Every op gets its id `(session, device, seq)` when it is queued, before the submit call
//!   returns, and the op is on the device's disk by then.
//! - An op has exactly one outcome: committed (with the version of a committed copy that
//!   covers it) or failed (with the reason). It never changes once recorded.
//! - The outcome replaces the queued op in the device store in one write (the same key), so
//!   there is no moment, and no kill, at which the op is neither queued nor decided.
//! - The outcome is reported as an event when it is decided, and stays readable (by op id, or
//!   in the list of unacknowledged outcomes) until the app acknowledges it. An app that was
//!   killed before it handled an event finds the outcome again after its restart: delivery
//!   is at least once, and the app acknowledges what it has handled.
//!
//! Bound (C6): at most `capacity` unacknowledged outcomes are kept; beyond it the oldest
//! decided one is dropped (from memory and from the store) and counted. An app that
//! acknowledges what it handles never loses one.

use crate::app::Application;
use crate::ids::OpId;
use crate::version::VersionVector;
use crate::wire::OpRejection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Why a submit was refused locally, or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SubmitError {
    /// Refused locally: the outbox holds `max_outbox` ops (the count). Nothing was queued;
    /// submit again once some are decided.
    #[error("the outbox is full ({0} ops waiting)")]
    OutboxFull(usize),
    /// Refused locally: the session already has this many ops not known committed, and one
    /// more would leave the dedup window ([`crate::dedup::DEDUP_WINDOW`]). Nothing was queued.
    #[error("too many ops in flight for this session ({0})")]
    TooManyInFlight(u64),
    /// Refused locally: the device holds no copy of the session and the op does not create one.
    #[error("this device holds no such session")]
    UnknownSession,
    /// The op's outcome on the committed chain is a rejection, for this reason.
    #[error("the datacenter rejected the op: {0}")]
    Rejected(OpRejection),
    /// Retryable refusals went on past `max_retries` (the count); later ops of the session
    /// fail the same way. The op was not applied.
    #[error("gave up after {0} retries: the datacenter could not take the op")]
    GaveUp(u32),
    /// The session ended before the op was applied (refused locally if already a tombstone).
    #[error("the session is finished")]
    SessionFinished,
    /// The committed copy of the session no longer names this device (a provider assigned on
    /// a branch that never committed): the op was never committed, and never will be.
    #[error("this device is no longer a participant of the session")]
    Removed,
}

/// A committed op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The op that committed.
    pub op: OpId,
    /// The version of a committed copy that covers the op.
    pub version: VersionVector,
    /// This was a retry of an op the datacenter had already applied.
    pub duplicate: bool,
}

/// How an op ended, with the op itself (an app restarted after a kill can tell which of its
/// actions this was) and when the device decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct OpOutcomeRecord<A: Application> {
    /// The op's id.
    pub id: OpId,
    /// The op as it was submitted.
    pub op: A::Op,
    /// Committed, or failed with the reason; never changes once recorded.
    pub result: Result<Commit, SubmitError>,
    /// Wall-clock time (unix ms) at which the device decided the outcome.
    pub at_ms: u64,
}

impl<A: Application> fmt::Display for OpOutcomeRecord<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(c) => write!(f, "op {} committed at {}", self.id, c.version)?,
            Err(e) => write!(f, "op {} failed: {e}", self.id)?,
        }
        Ok(())
    }
}

/// What the device store keeps under an op's key: the op while it is queued, then its
/// outcome (one key, so one write moves it from the one to the other).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum OpRecord<A: Application> {
    /// The op, not decided yet.
    Queued(A::Op),
    /// Its outcome, until the app acknowledges it.
    Decided(OpOutcomeRecord<A>),
}

/// Where an op stands, as the app can ask at any time.
#[derive(Clone, Debug, PartialEq)]
pub enum OpStatus<A: Application> {
    /// On the device's disk, not decided yet: it is sent (again) until it is.
    Queued {
        /// The op as it was submitted.
        op: A::Op,
    },
    /// Decided; the app has not acknowledged it yet.
    Decided(OpOutcomeRecord<A>),
    /// Not known here: never queued on this device, or its outcome was acknowledged (or
    /// dropped beyond the bound).
    Unknown,
}

/// The unacknowledged outcomes, oldest first (see the module docs).
#[derive(Debug)]
pub struct OutcomeBook<A: Application> {
    capacity: usize,
    by_id: BTreeMap<OpId, OpOutcomeRecord<A>>,
    /// Decision order (ids may be stale after an acknowledgement; skipped when evicting).
    order: VecDeque<OpId>,
    dropped: u64,
}

impl<A: Application> OutcomeBook<A> {
    /// An empty book that keeps at most `capacity` outcomes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            by_id: BTreeMap::new(),
            order: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Record an outcome; returns the ids dropped to stay within the bound (the caller
    /// deletes them from the store).
    pub fn record(&mut self, rec: OpOutcomeRecord<A>) -> Vec<OpId> {
        let id = rec.id;
        if self.by_id.insert(id, rec).is_none() {
            self.order.push_back(id);
        }
        let mut evicted = Vec::new();
        while self.by_id.len() > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.by_id.remove(&old).is_some() {
                self.dropped += 1;
                evicted.push(old);
            }
        }
        // Stale ids (acknowledged ones) must not make the order grow without bound.
        if self.order.len() > 2 * self.capacity {
            let by_id = &self.by_id;
            self.order.retain(|i| by_id.contains_key(i));
        }
        evicted
    }

    /// The app handled `id`: forget it. Returns whether it was held.
    pub fn acknowledge(&mut self, id: OpId) -> bool {
        self.by_id.remove(&id).is_some()
    }

    /// The unacknowledged outcome of `id`, if held.
    pub fn get(&self, id: OpId) -> Option<&OpOutcomeRecord<A>> {
        self.by_id.get(&id)
    }

    /// Unacknowledged outcomes, oldest decision first.
    pub fn unacknowledged(&self) -> Vec<OpOutcomeRecord<A>> {
        self.order
            .iter()
            .filter_map(|i| self.by_id.get(i))
            .cloned()
            .collect()
    }

    /// Number of unacknowledged outcomes held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no unacknowledged outcome is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Outcomes dropped unacknowledged because the bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, SessionId};
    use crate::trip::{Trip, TripOp};

    fn rec(seq: u64) -> OpOutcomeRecord<Trip> {
        OpOutcomeRecord {
            id: OpId {
                session: SessionId(1),
                device: DeviceId(2),
                seq,
            },
            op: TripOp::Cancel,
            result: Err(SubmitError::SessionFinished),
            at_ms: seq,
        }
    }

    #[test]
    fn beyond_the_bound_the_oldest_unacknowledged_outcome_is_dropped_and_counted() {
        let mut b = OutcomeBook::<Trip>::new(2);
        assert!(b.record(rec(1)).is_empty());
        assert!(b.record(rec(2)).is_empty());
        let dropped = b.record(rec(3));
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].seq, 1);
        assert_eq!(b.dropped(), 1);
        let left: Vec<u64> = b.unacknowledged().iter().map(|r| r.id.seq).collect();
        assert_eq!(left, vec![2, 3]);
    }

    #[test]
    fn an_acknowledged_outcome_is_gone_and_does_not_count_against_the_bound() {
        let mut b = OutcomeBook::<Trip>::new(2);
        b.record(rec(1));
        b.record(rec(2));
        assert!(b.acknowledge(rec(1).id));
        assert!(!b.acknowledge(rec(1).id));
        assert!(b.get(rec(1).id).is_none());
        assert!(
            b.record(rec(3)).is_empty(),
            "room was made by the acknowledgement"
        );
        assert_eq!(b.dropped(), 0);
        // Many acknowledged records never make the order queue grow past its bound.
        for s in 4..100 {
            b.record(rec(s));
            b.acknowledge(rec(s).id);
        }
        assert!(b.order.len() <= 4);
    }
}
