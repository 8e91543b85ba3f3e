//! The device side of the replication protocol, as a deterministic state machine.
//!
//! The edge keeps, per session, the newest sealed digest it was given (it cannot read it,
//! only its authenticated header) and an outbox of ops not yet answered. Inputs are
//! `submit`/`on_*` calls, outputs are taken with [`EdgeCore::poll_effects`]; the driver
//! must apply `writes`, then flush if `flush` is set, and only then send messages, resolve
//! the app's waiting submits and emit events.
//!
//! Invariants:
//! - C1: an op is reported committed only after the digest that covers it is written and
//!   flushed; until then it stays in the outbox and is replayed on every (re)connect.
//! - C2: an op keeps its `(session, device, seq)` for life; `seq` values are allocated once
//!   and the allocation is flushed before the op is first sent, so a crash can never reuse a
//!   seq for a different op.
//! - C3: the held copy of a session only moves forward; an older push is ignored. A
//!   concurrent one (divergence between datacenters) is surfaced as [`EdgeEvent::Conflict`]
//!   with the copy it replaces, never dropped silently; a held tombstone is never replaced by
//!   a live copy (the conflict is reported and the tombstone kept).
//! - C6: the outbox, the in-flight ops per session and the held sessions are bounded.

use crate::app::{AppRejection, Application};
use crate::dedup::DEDUP_WINDOW;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, OpId, SessionId};
use crate::keyring::DeviceToken;
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{
    ClientMsg, OpOutcome, OpRejection, SessionUpdate, UploadOutcome, UploadRefusal, UploadResult,
    MAX_DIGESTS_PER_FRAME,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Bounds of the edge core.
#[derive(Clone, Debug)]
pub struct EdgeLimits {
    /// Ops waiting for an answer, over all sessions.
    pub max_outbox: usize,
    /// Sessions held (active and tombstones). Tombstones are dropped oldest first.
    pub max_sessions: usize,
    /// Retries of an op the datacenter could not take yet (unknown session, busy).
    pub max_retries: u32,
    /// Tombstones (finished sessions) held at most; beyond it the ones that finished first
    /// are dropped from the device store. The newest tombstone is always kept, so at least
    /// one is. Dropping is safe for C3: the datacenter keeps its own tombstone, and that is
    /// what refuses an older live digest.
    pub max_tombstones: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_outbox: 1024,
            max_sessions: 256,
            max_retries: 120,
            max_tombstones: 64,
        }
    }
}

/// What the device stores per session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct HeldSession<A: Application> {
    pub digest: SealedDigest,
    pub view: A::State,
    /// The datacenter's watermark of this device's ops, as last told.
    pub last_seq: u64,
    /// The next seq this device will use for the session.
    pub next_seq: u64,
    pub committed: bool,
}

/// A write to the device store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreWrite<A: Application> {
    PutSession(SessionId, HeldSession<A>),
    DeleteSession(SessionId),
    PutOp(OpId, A::Op),
    DeleteOp(OpId),
}

/// Why a submit was refused locally, or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SubmitError {
    #[error("the outbox is full ({0} ops waiting)")]
    OutboxFull(usize),
    #[error("too many ops in flight for this session ({0})")]
    TooManyInFlight(u64),
    #[error("this device holds no such session")]
    UnknownSession,
    #[error("the datacenter rejected the op: {0}")]
    Rejected(OpRejection),
    #[error("gave up after {0} retries: the datacenter could not take the op")]
    GaveUp(u32),
    #[error("the session is finished")]
    SessionFinished,
}

/// A committed op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub op: OpId,
    /// The version of the digest that covers the op (now persisted on this device).
    pub version: VersionVector,
    /// This was a retry of an op the datacenter had already applied.
    pub duplicate: bool,
}

/// What the app is told.
#[derive(Clone, Debug, PartialEq)]
pub enum EdgeEvent<A: Application> {
    SessionUpdated {
        session: SessionId,
        version: VersionVector,
        view: A::State,
        committed: bool,
    },
    /// A server-side change reached its edge-ack quorum.
    ServerChangeCommitted {
        session: SessionId,
        version: VersionVector,
    },
    /// The datacenter holds a diverged copy (S13); `replaced` is the copy this device held
    /// and gave up for it. `None`: the device kept its own copy, a tombstone (C3: a finished
    /// session never comes back to life, however the branches diverged).
    Conflict {
        session: SessionId,
        ours: VersionVector,
        theirs: VersionVector,
        replaced: Option<A::State>,
    },
    /// The datacenter refused a digest this device uploaded.
    UploadRefused {
        session: SessionId,
        reason: UploadRefusal,
    },
    OpRejected {
        op: OpId,
        reason: SubmitError,
    },
}

/// Outputs of a batch of inputs, in the order the driver must carry them out.
#[derive(Debug)]
pub struct EdgeEffects<A: Application> {
    pub writes: Vec<StoreWrite<A>>,
    pub flush: bool,
    pub send: Vec<ClientMsg<A>>,
    pub resolved: Vec<(OpId, Result<Commit, SubmitError>)>,
    pub events: Vec<EdgeEvent<A>>,
}

impl<A: Application> Default for EdgeEffects<A> {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            flush: false,
            send: Vec::new(),
            resolved: Vec::new(),
            events: Vec::new(),
        }
    }
}

struct Queued<A: Application> {
    op: A::Op,
    retries: u32,
    in_flight: bool,
    /// It was in flight on a connection that was lost (or when the app stopped): a
    /// datacenter may have applied it, so it goes out as `Resubmit`.
    maybe_applied: bool,
}

impl<A: Application> Queued<A> {
    fn message(&self, session: SessionId, seq: u64) -> ClientMsg<A> {
        let op = self.op.clone();
        if self.maybe_applied {
            ClientMsg::Resubmit { session, seq, op }
        } else {
            ClientMsg::Submit { session, seq, op }
        }
    }
}

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
    effects: EdgeEffects<A>,
}

impl<A: Application> EdgeCore<A> {
    pub fn new(device: DeviceId, limits: EdgeLimits) -> Self {
        Self {
            device,
            limits,
            held: BTreeMap::new(),
            fresh: BTreeMap::new(),
            outbox: BTreeMap::new(),
            connected: None,
            tombstones: std::collections::VecDeque::new(),
            effects: EdgeEffects::default(),
        }
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    pub fn connected_to(&self) -> Option<DatacenterId> {
        self.connected
    }

    /// Take the effects produced so far.
    pub fn poll_effects(&mut self) -> EdgeEffects<A> {
        std::mem::take(&mut self.effects)
    }

    /// Restore a held session from the device store at start-up.
    pub fn load_session(&mut self, session: SessionId, held: HeldSession<A>) {
        let finished = held.digest.header.tombstone;
        self.held.insert(session, held);
        if finished {
            self.note_tombstone(session);
        }
    }

    /// Restore an unanswered op from the device store at start-up.
    pub fn load_op(&mut self, op: OpId, body: A::Op) {
        let next = self.next_seq(op.session).max(op.seq.saturating_add(1));
        match self.held.get_mut(&op.session) {
            Some(h) => h.next_seq = next,
            None => {
                self.fresh.insert(op.session, next);
            }
        }
        self.outbox.insert(
            (op.session, op.seq),
            Queued {
                op: body,
                retries: 0,
                in_flight: false,
                maybe_applied: true,
            },
        );
    }

    pub fn held(&self, session: SessionId) -> Option<&HeldSession<A>> {
        self.held.get(&session)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&SessionId, &HeldSession<A>)> {
        self.held.iter()
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    fn next_seq(&self, session: SessionId) -> u64 {
        match self.held.get(&session) {
            Some(h) => h.next_seq.max(h.last_seq.saturating_add(1)),
            None => self.fresh.get(&session).copied().unwrap_or(1),
        }
    }

    /// Queue an op. The op is written (and flushed) before it is first sent.
    pub fn submit(&mut self, session: SessionId, op: A::Op) -> Result<OpId, SubmitError> {
        if self.outbox.len() >= self.limits.max_outbox {
            return Err(SubmitError::OutboxFull(self.outbox.len()));
        }
        match self.held.get(&session) {
            Some(h) if h.digest.header.tombstone => return Err(SubmitError::SessionFinished),
            Some(_) => {}
            None if self.fresh.contains_key(&session) => {}
            None if A::is_create(&op) => {}
            None => return Err(SubmitError::UnknownSession),
        }
        let seq = self.next_seq(session);
        let last = self.held.get(&session).map(|h| h.last_seq).unwrap_or(0);
        if seq.saturating_sub(last) > DEDUP_WINDOW {
            return Err(SubmitError::TooManyInFlight(seq - last - 1));
        }
        match self.held.get_mut(&session) {
            Some(h) => {
                h.next_seq = seq + 1;
                let h = h.clone();
                self.effects.writes.push(StoreWrite::PutSession(session, h));
            }
            None => {
                self.fresh.insert(session, seq + 1);
            }
        }
        let id = OpId {
            session,
            device: self.device,
            seq,
        };
        self.effects.writes.push(StoreWrite::PutOp(id, op.clone()));
        self.effects.flush = true;
        let in_flight = self.connected.is_some();
        if in_flight {
            self.effects.send.push(ClientMsg::Submit {
                session,
                seq,
                op: op.clone(),
            });
        }
        self.outbox.insert(
            (session, seq),
            Queued {
                op,
                retries: 0,
                in_flight,
                maybe_applied: false,
            },
        );
        Ok(id)
    }

    /// The frames that open a connection: `Hello` with the first digests, then `Upload`s.
    pub fn hello(&self, token: DeviceToken, available: bool) -> Vec<ClientMsg<A>> {
        let digests: Vec<SealedDigest> = self.held.values().map(|h| h.digest.clone()).collect();
        let mut chunks: Vec<Vec<SealedDigest>> = digests
            .chunks(MAX_DIGESTS_PER_FRAME)
            .map(|c| c.to_vec())
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, digests)| {
                let more = i + 1 < n;
                if i == 0 {
                    ClientMsg::Hello {
                        device: self.device,
                        token,
                        available,
                        digests,
                        more,
                    }
                } else {
                    ClientMsg::Upload { digests, more }
                }
            })
            .collect()
    }

    /// The datacenter processed the upload: replay the outbox in order.
    pub fn on_welcome(&mut self, dc: DatacenterId, results: Vec<UploadResult>) {
        self.connected = Some(dc);
        for r in results {
            match r.outcome {
                UploadOutcome::Refused(reason) => {
                    self.effects.events.push(EdgeEvent::UploadRefused {
                        session: r.session,
                        reason,
                    })
                }
                UploadOutcome::Restored
                | UploadOutcome::Current
                | UploadOutcome::Stale
                | UploadOutcome::Tombstoned
                | UploadOutcome::Diverged => {}
            }
        }
        self.send_unsent();
    }

    /// Resend every op that is not in flight on the current connection (after a retryable
    /// rejection, call this on a timer).
    pub fn send_unsent(&mut self) {
        if self.connected.is_none() {
            return;
        }
        for ((session, seq), q) in self.outbox.iter_mut() {
            if !q.in_flight {
                q.in_flight = true;
                self.effects.send.push(q.message(*session, *seq));
            }
        }
    }

    /// Whether some op waits for a retry.
    pub fn has_unsent(&self) -> bool {
        self.outbox.values().any(|q| !q.in_flight)
    }

    pub fn on_disconnect(&mut self) {
        self.connected = None;
        for q in self.outbox.values_mut() {
            q.maybe_applied |= q.in_flight;
            q.in_flight = false;
        }
    }

    /// A new copy of a session from the datacenter.
    pub fn on_push(&mut self, update: SessionUpdate<A>) {
        self.adopt(update);
    }

    /// A server-side change reached its quorum.
    pub fn on_committed(&mut self, session: SessionId, version: VersionVector) {
        if let Some(h) = self.held.get_mut(&session) {
            if h.digest.header.version == version {
                h.committed = true;
            }
        }
        self.effects
            .events
            .push(EdgeEvent::ServerChangeCommitted { session, version });
    }

    fn adopt(&mut self, u: SessionUpdate<A>) {
        let session = u.digest.header.session;
        let theirs = u.digest.header.version.clone();
        let (next_seq, replaced, ours) = match self.held.get(&session) {
            None => {
                self.make_room();
                (self.fresh.remove(&session).unwrap_or(1), None, None)
            }
            Some(h) => {
                let ours = h.digest.header.version.clone();
                match theirs.compare(&ours) {
                    VersionOrder::Older => return,
                    VersionOrder::Equal => {
                        if h.last_seq >= u.your_last_seq && h.committed == u.committed {
                            return;
                        }
                        (h.next_seq, None, None)
                    }
                    VersionOrder::Newer => (h.next_seq, None, None),
                    VersionOrder::Concurrent
                        if h.digest.header.tombstone && !u.digest.header.tombstone =>
                    {
                        // Keep the tombstone (it goes up again on the next connect); report
                        // the divergence.
                        self.effects.events.push(EdgeEvent::Conflict {
                            session,
                            ours,
                            theirs,
                            replaced: None,
                        });
                        return;
                    }
                    VersionOrder::Concurrent => (h.next_seq, Some(h.view.clone()), Some(ours)),
                }
            }
        };
        if let Some(ours) = ours {
            self.effects.events.push(EdgeEvent::Conflict {
                session,
                ours,
                theirs: theirs.clone(),
                replaced,
            });
        }
        let held: HeldSession<A> = HeldSession {
            next_seq: next_seq.max(u.your_last_seq.saturating_add(1)),
            last_seq: u.your_last_seq,
            committed: u.committed,
            view: u.view,
            digest: u.digest,
        };
        if !u.committed {
            self.effects.send.push(ClientMsg::Ack {
                session,
                version: theirs.clone(),
            });
        }
        self.effects.events.push(EdgeEvent::SessionUpdated {
            session,
            version: theirs,
            view: held.view.clone(),
            committed: held.committed,
        });
        self.effects
            .writes
            .push(StoreWrite::PutSession(session, held.clone()));
        self.effects.flush = true;
        let finished = held.digest.header.tombstone;
        self.held.insert(session, held);
        if finished {
            self.note_tombstone(session);
        }
    }

    /// Keep the number of held sessions bounded by dropping the oldest tombstone.
    fn make_room(&mut self) {
        if self.held.len() < self.limits.max_sessions {
            return;
        }
        if let Some(id) = self.tombstones.pop_front() {
            self.held.remove(&id);
            self.effects.writes.push(StoreWrite::DeleteSession(id));
        }
    }

    /// Record that `session` is now a tombstone, then drop the tombstones that finished
    /// first while more than `max_tombstones` are held (never `session` itself: an op that
    /// finished it must be covered by a held digest when it is reported committed).
    fn note_tombstone(&mut self, session: SessionId) {
        if !self.tombstones.contains(&session) {
            self.tombstones.push_back(session);
        }
        let keep = self.limits.max_tombstones.max(1);
        while self.tombstones.len() > keep {
            let Some(victim) = self.tombstones.pop_front() else {
                break;
            };
            if victim == session {
                self.tombstones.push_back(victim);
                continue;
            }
            self.held.remove(&victim);
            self.effects.writes.push(StoreWrite::DeleteSession(victim));
            self.effects.flush = true;
        }
    }

    /// Tombstones held, in the order they finished.
    pub fn tombstones(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.tombstones.iter().copied()
    }

    /// The answer to one of this device's ops.
    pub fn on_op_result(
        &mut self,
        session: SessionId,
        seq: u64,
        outcome: OpOutcome,
        update: Option<SessionUpdate<A>>,
    ) {
        if let Some(u) = update {
            self.adopt(u);
        }
        let id = OpId {
            session,
            device: self.device,
            seq,
        };
        if !self.outbox.contains_key(&(session, seq)) {
            return; // an answer to an op already resolved (a duplicate reply)
        }
        let version = self
            .held
            .get(&session)
            .map(|h| h.digest.header.version.clone())
            .unwrap_or_default();
        let result = match outcome {
            OpOutcome::Applied => Ok(Commit {
                op: id,
                version,
                duplicate: false,
            }),
            OpOutcome::Duplicate { applied: true } | OpOutcome::AlreadyProcessed => Ok(Commit {
                op: id,
                version,
                duplicate: true,
            }),
            OpOutcome::Duplicate { applied: false } => {
                Err(SubmitError::Rejected(OpRejection::App(
                    AppRejection::InvalidOp("rejected on an earlier attempt".into()),
                )))
            }
            // An earlier op of ours has not reached the datacenter yet (it was refused as
            // retryable, or is still on its way): resend in order rather than give up.
            OpOutcome::Rejected(OpRejection::OutOfOrder { expected })
                if expected < seq && self.outbox.contains_key(&(session, expected)) =>
            {
                let Some(q) = self.outbox.get_mut(&(session, seq)) else {
                    return;
                };
                q.in_flight = false;
                q.retries += 1;
                if q.retries <= self.limits.max_retries {
                    if let Some(first) = self.outbox.get_mut(&(session, expected)) {
                        first.in_flight = false;
                    }
                    return;
                }
                Err(SubmitError::GaveUp(self.limits.max_retries))
            }
            OpOutcome::Rejected(r) if r.is_retryable() => {
                let Some(q) = self.outbox.get_mut(&(session, seq)) else {
                    return;
                };
                q.in_flight = false;
                q.retries += 1;
                if q.retries <= self.limits.max_retries {
                    return;
                }
                Err(SubmitError::GaveUp(self.limits.max_retries))
            }
            OpOutcome::Rejected(r) => Err(SubmitError::Rejected(r)),
        };
        // A success must be covered by a persisted digest: the update above was written, and
        // the flush below happens before the app hears of it.
        if result.is_ok() && !self.held.contains_key(&session) {
            // No digest came with the answer (should not happen): keep the op for replay.
            if let Some(q) = self.outbox.get_mut(&(session, seq)) {
                q.in_flight = false;
            }
            return;
        }
        self.outbox.remove(&(session, seq));
        self.effects.writes.push(StoreWrite::DeleteOp(id));
        self.effects.flush = true;
        if let Err(reason) = &result {
            self.effects.events.push(EdgeEvent::OpRejected {
                op: id,
                reason: reason.clone(),
            });
            if seq == 1 && !self.held.contains_key(&session) {
                // The create failed: nothing of this session exists anywhere.
                self.fresh.remove(&session);
            }
            if let SubmitError::GaveUp(n) = reason {
                // Later ops of the session could only ever hit the gap this one leaves:
                // fail them now, clearly, instead of one by one.
                let later: Vec<u64> = self
                    .outbox
                    .range((session, seq + 1)..=(session, u64::MAX))
                    .map(|((_, q), _)| *q)
                    .collect();
                for q in later {
                    self.outbox.remove(&(session, q));
                    let id = OpId {
                        session,
                        device: self.device,
                        seq: q,
                    };
                    self.effects.writes.push(StoreWrite::DeleteOp(id));
                    self.effects
                        .resolved
                        .push((id, Err(SubmitError::GaveUp(*n))));
                }
            }
        }
        self.effects.resolved.push((id, result));
    }

    /// Sessions with ops still waiting for an answer.
    pub fn pending_sessions(&self) -> HashSet<SessionId> {
        self.outbox.keys().map(|(s, _)| *s).collect()
    }
}
