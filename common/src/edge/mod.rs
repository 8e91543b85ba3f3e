//! The device side of the replication protocol, as a deterministic state machine.
//!
//! The edge keeps, per session, one sealed digest it was given (it cannot read it, only its
//! authenticated header) with the device's own watermark in it, and an outbox of ops whose
//! outcome the app has not been told. Inputs are `submit`/`on_*` calls, outputs are taken
//! with [`EdgeCore::poll_effects`]; the driver must apply `writes`, then flush if `flush` is
//! set, and only then send messages, resolve the app's waiting submits and emit events.
//!
//! The rules are those of docs/PROTOCOL.md (the device is the arbiter of its own store):
//! - The chain (C1, S13): a held copy is *committed* when it is on the session's chain: the
//!   datacenter said so, or this device is the session's chain holder (its anchor, see
//!   [`crate::digest::DigestHeader::anchor`]) and its previous copy was committed, so its own
//!   persisting puts the copy on the chain.
//! - Compare-and-set: a copy is persisted only if it dominates the held one. The one
//!   exception: a held copy that is not committed (a branch nobody confirmed) gives way to a
//!   concurrent committed copy that covers every op outcome this device knows committed. A
//!   committed copy is never replaced by a concurrent one; the device offers it to the
//!   datacenter again instead ([`ClientMsg::Reupload`](crate::wire::ClientMsg::Reupload)), so the chain wins there.
//! - C1: an op is reported to the app only once a committed copy this device persisted covers
//!   it (or the datacenter confirmed a version whose watermark covers it, and the held copy
//!   covers it with the same outcome); its outcome is read from that copy, not from the
//!   reply. Until then it stays in the outbox and is replayed on every (re)connect.
//! - C2: an op keeps its `(session, device, seq)` for life; `seq` values are allocated once
//!   and the allocation is flushed before the op is first sent, so a crash can never reuse a
//!   seq for a different op.
//! - C3: the held copy of a session only moves forward along the chain; an older copy is
//!   ignored, and a committed tombstone is never replaced by a live copy.
//! - Waiting is visible: when ops are answered on a copy nobody has confirmed yet, or the
//!   datacenter holds a branch the chain holder has not confirmed, the app is told why
//!   ([`EdgeEvent::Waiting`]).
//! - Every op's outcome reaches the app (see [`crate::op_outcome`]): a decided op's record
//!   replaces the queued op in the store in one write and stays there, readable, until the
//!   app acknowledges it; the time it was decided is the core's time ([`EdgeCore::set_time`]).
//! - C6: the outbox, the in-flight ops per session, the retries, the held sessions and the
//!   unacknowledged outcomes are bounded; at most one re-upload per session is outstanding.
//!
//! The rooms of this module: `types` (limits, effects, events), `outbox` (ops from submit to
//! decision), `connect` (a connection's life), `receive` (the store's compare-and-set),
//! `marks` (reading watermarks). [`EdgeCore::handle_message`] is the one entry point for
//! what a datacenter says.

mod connect;
mod marks;
mod outbox;
mod receive;
mod types;

pub use crate::op_outcome::{Commit, SubmitError};
use marks::{mark_covers, outcome_in};
use outbox::Queued;
pub use types::{
    EdgeEffects, EdgeEvent, EdgeLimits, HeldSession, OpProgress, StoreWrite, WaitReason,
    MAX_SAMPLES_PER_BATCH,
};

use crate::app::Application;
use crate::ids::{DatacenterId, DeviceId, SessionId};
use crate::op_outcome::OutcomeBook;
use crate::wire::{ProtocolError, ServerMsg};
use std::collections::{BTreeMap, HashSet};

/// The device's replication state machine (see the module docs).
pub struct EdgeCore<A: Application> {
    device: DeviceId,
    limits: EdgeLimits,
    held: BTreeMap<SessionId, HeldSession<A>>,
    /// Seq allocation for sessions not held yet (created here, first op unanswered).
    fresh: BTreeMap<SessionId, u64>,
    outbox: BTreeMap<(SessionId, u64), Queued<A>>,
    connected: Option<DatacenterId>,
    /// Held tombstones in the order they finished (loaded ones first, in load order).
    tombstones: std::collections::VecDeque<SessionId>,
    /// Sessions re-uploaded on this connection (at most once each).
    reuploading: HashSet<SessionId>,
    /// Sessions whose app was told they wait (cleared when nothing waits any more).
    waiting: HashSet<SessionId>,
    /// Decided ops the app has not acknowledged.
    outcomes: OutcomeBook<A>,
    /// The time the driver last gave (unix ms): stamps decided outcomes.
    now_ms: u64,
    /// How often ops the datacenter could not take yet are sent again (ms).
    retry_interval_ms: u64,
    /// While connected: when unsent ops are next sent again (unix ms).
    next_retry_ms: Option<u64>,
    effects: EdgeEffects<A>,
}

/// The default of [`EdgeCore::set_retry_interval`] (ms).
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 250;

impl<A: Application> EdgeCore<A> {
    /// An empty core for `device` (nothing held, not connected); the driver loads its store
    /// with `load_session`, `load_op` and `load_outcome`.
    pub fn new(device: DeviceId, limits: EdgeLimits) -> Self {
        let limits_outcomes = limits.max_outcomes;
        Self {
            device,
            limits,
            held: BTreeMap::new(),
            fresh: BTreeMap::new(),
            outbox: BTreeMap::new(),
            connected: None,
            tombstones: std::collections::VecDeque::new(),
            reuploading: HashSet::new(),
            waiting: HashSet::new(),
            outcomes: OutcomeBook::new(limits_outcomes),
            now_ms: 0,
            retry_interval_ms: DEFAULT_RETRY_INTERVAL_MS,
            next_retry_ms: None,
            effects: EdgeEffects::default(),
        }
    }

    /// How often ops the datacenter could not take yet (a retryable rejection, a limit) are
    /// sent again while connected, in ms (at least 1).
    pub fn set_retry_interval(&mut self, ms: u64) {
        self.retry_interval_ms = ms.max(1);
    }

    /// When the core next wants [`EdgeCore::handle_timeout`] (unix ms): while connected and
    /// some op waits to be sent again; `None`: no timer is needed.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_retry_ms
            .filter(|_| self.connected.is_some() && self.has_unsent())
    }

    /// Time passed to `now_ms`: if the resend deadline is due, ops waiting to be sent again
    /// go out (take them with [`EdgeCore::poll_effects`]) and the next deadline is one
    /// interval on.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.set_time(now_ms);
        let Some(due) = self.next_retry_ms else {
            return;
        };
        if now_ms < due {
            return;
        }
        if self.connected.is_some() && self.has_unsent() {
            self.send_unsent();
        }
        self.next_retry_ms = Some(now_ms.saturating_add(self.retry_interval_ms));
    }

    /// The current wall-clock time (unix ms), from the driver: outcomes decided from now on
    /// carry it. The core reads no clock itself.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The one entry point for what the connected datacenter says (raft-rs's `step`), at
    /// `now_ms` (unix ms, the driver's clock; see [`EdgeCore::set_time`]). A
    /// [`ServerMsg::Error`] is the datacenter's last word before it closes the connection:
    /// returned for the driver to end the connection on; the core changes nothing then.
    pub fn handle_message(&mut self, now_ms: u64, msg: ServerMsg<A>) -> Result<(), ProtocolError> {
        self.set_time(now_ms);
        match msg {
            ServerMsg::Welcome { dc, results } => self.on_welcome(dc, results),
            ServerMsg::OpResult {
                session,
                seq,
                outcome,
                update,
            } => self.on_op_result(session, seq, outcome, update),
            ServerMsg::Push { update } => self.on_push(update),
            ServerMsg::Committed {
                session,
                version,
                driver,
                your_last_seq,
                your_applied_bits,
            } => self.on_committed(session, version, driver, your_last_seq, your_applied_bits),
            ServerMsg::Uploaded { result } => self.on_uploaded(result),
            ServerMsg::Removed { session } => self.on_removed(session),
            ServerMsg::Sample { session } => self.on_sample(session),
            ServerMsg::Error { error } => return Err(error),
        }
        Ok(())
    }

    /// The device this core runs for.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The datacenter that welcomed the current connection; `None` while disconnected or
    /// before `Welcome`.
    pub fn connected_to(&self) -> Option<DatacenterId> {
        self.connected
    }

    /// Take the effects produced so far.
    pub fn poll_effects(&mut self) -> EdgeEffects<A> {
        std::mem::take(&mut self.effects)
    }

    /// The copy held of a session, if any.
    pub fn held(&self, session: SessionId) -> Option<&HeldSession<A>> {
        self.held.get(&session)
    }

    /// Every session held (active and tombstones), by id.
    pub fn sessions(&self) -> impl Iterator<Item = (&SessionId, &HeldSession<A>)> {
        self.held.iter()
    }

    /// Ops queued and not decided yet, over all sessions.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Tombstones held, in the order they finished.
    pub fn tombstones(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.tombstones.iter().copied()
    }

    /// Sessions with ops still waiting for an answer.
    pub fn pending_sessions(&self) -> HashSet<SessionId> {
        self.outbox.keys().map(|(s, _)| *s).collect()
    }
}
