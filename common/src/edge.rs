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
//!   datacenter again instead ([`ClientMsg::Reupload`]), so the chain wins there.
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

use crate::app::{AppRejection, Application};
use crate::dedup::DEDUP_WINDOW;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, OpId, SessionId};
use crate::keyring::DeviceToken;
use crate::op_outcome::{OpOutcomeRecord, OpStatus, OutcomeBook};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{
    ClientMsg, OfferedCopy, OpOutcome, OpRejection, SessionUpdate, UploadOutcome, UploadRefusal,
    UploadResult, MAX_DIGESTS_PER_FRAME,
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
    /// Retries of an op the datacenter could not take yet (unknown session, busy, a gap).
    pub max_retries: u32,
    /// Tombstones (finished sessions) held at most; beyond it the ones that finished first
    /// are dropped from the device store. The newest tombstone is always kept, so at least
    /// one is. Dropping is safe for C3: the datacenter keeps its own tombstone, and that is
    /// what refuses an older live digest.
    pub max_tombstones: usize,
    /// Decided op outcomes kept until the app acknowledges them; beyond it the oldest is
    /// dropped (see [`crate::op_outcome`]).
    pub max_outcomes: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_outbox: 1024,
            max_sessions: 256,
            max_retries: 120,
            max_tombstones: 64,
            max_outcomes: 1024,
        }
    }
}

/// What the device stores per session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct HeldSession<A: Application> {
    pub digest: SealedDigest,
    pub view: A::State,
    /// This device's watermark in `digest`: the highest of its ops the copy has processed.
    pub last_seq: u64,
    /// The outcomes of this device's last 64 ops in `digest` (bit i: seq `last_seq - i`,
    /// 1 applied, 0 rejected).
    pub applied_bits: u64,
    /// The next seq this device will use for the session.
    pub next_seq: u64,
    /// `digest` is on the session's committed chain (see the module docs).
    pub committed: bool,
    /// The newest watermark of this device in a copy known committed (seq and outcome
    /// bits): every copy this device adopts in place of its own must cover it.
    pub committed_seq: u64,
    pub committed_bits: u64,
    /// The newest version this device knows is committed: it never persists a copy that
    /// does not dominate (or equal) it, so it never leaves the chain it knows.
    pub committed_version: VersionVector,
    /// The provider `committed_version` names.
    pub committed_driver: Option<DeviceId>,
}

/// A write to the device store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreWrite<A: Application> {
    PutSession(SessionId, HeldSession<A>),
    DeleteSession(SessionId),
    /// Queue an op (the op's key holds [`crate::op_outcome::OpRecord::Queued`]).
    PutOp(OpId, A::Op),
    /// The op was decided: its key now holds the outcome (one write replaces the op).
    PutOutcome(OpOutcomeRecord<A>),
    /// Forget an op's key (its outcome was acknowledged, or dropped beyond the bound).
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
    /// The committed copy of the session no longer names this device (a provider assigned on
    /// a branch that never committed): the op was never committed, and never will be.
    #[error("this device is no longer a participant of the session")]
    Removed,
}

/// A committed op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub op: OpId,
    /// The version of a committed copy that covers the op.
    pub version: VersionVector,
    /// This was a retry of an op the datacenter had already applied.
    pub duplicate: bool,
}

/// Why a session's ops wait (see [`EdgeEvent::Waiting`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitReason {
    /// Ops were answered on a copy the session's chain holder (the anchor, or the requester
    /// during a hand-over) has not persisted yet; they are reported once it has.
    ChainHolderAway,
    /// The datacenter holds a branch of the session that nobody has confirmed, concurrent
    /// with this device's: nothing commits there until the chain holder settles it.
    BranchNotConfirmed,
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
    /// The datacenter confirmed that `version` of the session is committed (its chain holder
    /// persisted it: a dispatch, another participant's op).
    ServerChangeCommitted {
        session: SessionId,
        version: VersionVector,
    },
    /// The copy this device held was a branch nobody had confirmed and gave way to the
    /// committed chain (`replaced`: what it showed). Ops of this device on that branch were
    /// never reported; they are sent again. `replaced: None`: the device kept its committed
    /// copy and refused a concurrent one.
    Conflict {
        session: SessionId,
        ours: VersionVector,
        theirs: VersionVector,
        replaced: Option<A::State>,
    },
    /// The session's ops wait, and why.
    Waiting {
        session: SessionId,
        reason: WaitReason,
    },
    /// This device is no longer a participant of the session; its store no longer holds it
    /// and its queued ops were failed with [`SubmitError::Removed`].
    Removed {
        session: SessionId,
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

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitReason::ChainHolderAway => {
                "answered, waiting for the session's anchor device to persist it"
            }
            WaitReason::BranchNotConfirmed => {
                "the datacenter holds a copy nobody confirmed; waiting for the anchor device"
            }
        })
    }
}

impl<A: Application> std::fmt::Display for EdgeEvent<A> {
    /// One short line (the view itself is in `sessions()`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeEvent::SessionUpdated {
                session,
                version,
                committed,
                ..
            } => {
                let c = if *committed {
                    "committed"
                } else {
                    "not confirmed to this device yet"
                };
                write!(f, "{session} updated to {version} ({c})")
            }
            EdgeEvent::ServerChangeCommitted { session, version } => {
                write!(f, "{session}: change committed at {version}")
            }
            EdgeEvent::Conflict {
                session,
                ours,
                theirs,
                replaced,
            } => match replaced {
                Some(_) => write!(
                    f,
                    "{session}: our unconfirmed copy {ours} gave way to the committed {theirs}"
                ),
                None => write!(
                    f,
                    "{session}: kept our committed copy {ours}, refused {theirs}"
                ),
            },
            EdgeEvent::Waiting { session, reason } => write!(f, "{session} waits: {reason}"),
            EdgeEvent::Removed { session } => {
                write!(f, "{session}: this device is no longer a participant")
            }
            EdgeEvent::UploadRefused { session, reason } => {
                write!(f, "{session}: upload refused: {reason}")
            }
            EdgeEvent::OpRejected { op, reason } => write!(f, "op {op} failed: {reason}"),
        }
    }
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
    /// The datacenter's last answer on this connection; the outcome waits for a committed
    /// copy that covers the op. Not sent again on this connection.
    answered: Option<OpOutcome>,
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

/// Whether watermark `(seq, bits)` covers watermark `(seq_b, bits_b)`: it has processed
/// every op of the other, with the same outcomes where both still remember them.
fn mark_covers(seq: u64, bits: u64, seq_b: u64, bits_b: u64) -> bool {
    if seq < seq_b {
        return false;
    }
    let shift = seq - seq_b;
    if shift >= DEDUP_WINDOW {
        return true;
    }
    let known = DEDUP_WINDOW - shift;
    let mask = if known >= 64 {
        u64::MAX
    } else {
        (1u64 << known) - 1
    };
    let mask = mask
        & if seq_b >= 64 {
            u64::MAX
        } else {
            (1u64 << seq_b) - 1
        };
    (bits >> shift) & mask == bits_b & mask
}

/// The outcome of `seq` in watermark `(last, bits)`: `Some(true)` applied, `Some(false)`
/// rejected, `None` not processed. Outcomes older than the window count as applied (the
/// datacenter answers them `AlreadyProcessed`).
fn outcome_in(last: u64, bits: u64, seq: u64) -> Option<bool> {
    if seq == 0 || seq > last {
        return None;
    }
    let age = last - seq;
    if age >= DEDUP_WINDOW {
        return Some(true);
    }
    Some((bits >> age) & 1 == 1)
}

/// What to do with a copy the datacenter sent.
enum Decision<S> {
    /// Persist it.
    Take {
        next_seq: u64,
        committed: bool,
        /// The uncommitted copy it replaces (its view and version).
        replaced: Option<(S, VersionVector)>,
        /// This device's committed watermark, which the copy must cover.
        marks: (u64, u64),
        /// This device's own persisting commits it (it holds the chain, or created the
        /// session): only then does it acknowledge.
        certified: bool,
    },
    /// The copy we hold.
    Same {
        newly_committed: bool,
        ack: bool,
        ack_certified: bool,
    },
    /// Keep ours (its version).
    Refuse(VersionVector),
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
    /// Sessions re-uploaded on this connection (at most once each).
    reuploading: HashSet<SessionId>,
    /// Sessions whose app was told they wait (cleared when nothing waits any more).
    waiting: HashSet<SessionId>,
    /// Decided ops the app has not acknowledged.
    outcomes: OutcomeBook<A>,
    /// The time the driver last gave (unix ms): stamps decided outcomes.
    now_ms: u64,
    effects: EdgeEffects<A>,
}

impl<A: Application> EdgeCore<A> {
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
            effects: EdgeEffects::default(),
        }
    }

    /// The current wall-clock time (unix ms), from the driver: outcomes decided from now on
    /// carry it. The core reads no clock itself.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
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
                answered: None,
            },
        );
    }

    /// Restore a decided, unacknowledged outcome from the device store at start-up (call in
    /// the order they were decided).
    pub fn load_outcome(&mut self, rec: OpOutcomeRecord<A>) {
        let id = rec.id;
        if let Some(h) = self.held.get_mut(&id.session) {
            h.next_seq = h.next_seq.max(id.seq.saturating_add(1));
        }
        for dropped in self.outcomes.record(rec) {
            self.effects.writes.push(StoreWrite::DeleteOp(dropped));
        }
    }

    /// Where op `id` stands (see [`OpStatus`]).
    pub fn op_status(&self, id: OpId) -> OpStatus<A> {
        if id.device == self.device {
            if let Some(q) = self.outbox.get(&(id.session, id.seq)) {
                return OpStatus::Queued { op: q.op.clone() };
            }
        }
        match self.outcomes.get(id) {
            Some(rec) => OpStatus::Decided(rec.clone()),
            None => OpStatus::Unknown,
        }
    }

    /// The ops queued on this device and not decided yet, in (session, seq) order.
    pub fn queued_ops(&self) -> Vec<(OpId, A::Op)> {
        self.outbox
            .iter()
            .map(|((session, seq), q)| {
                (
                    OpId {
                        session: *session,
                        device: self.device,
                        seq: *seq,
                    },
                    q.op.clone(),
                )
            })
            .collect()
    }

    /// Decided outcomes the app has not acknowledged, oldest first.
    pub fn outcomes(&self) -> Vec<OpOutcomeRecord<A>> {
        self.outcomes.unacknowledged()
    }

    /// Outcomes dropped unacknowledged beyond `max_outcomes` (since start).
    pub fn outcomes_dropped(&self) -> u64 {
        self.outcomes.dropped()
    }

    /// The app has handled op `id`'s outcome: forget it (from memory and the store; no flush
    /// is needed: a crash that brings it back only delivers it once more). Returns whether an
    /// unacknowledged outcome was held.
    pub fn acknowledge(&mut self, id: OpId) -> bool {
        let held = self.outcomes.acknowledge(id);
        if held {
            self.effects.writes.push(StoreWrite::DeleteOp(id));
        }
        held
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
        let last = self
            .held
            .get(&session)
            .map(|h| h.committed_seq)
            .unwrap_or(0);
        if seq.saturating_sub(last) > DEDUP_WINDOW {
            return Err(SubmitError::TooManyInFlight(seq - last - 1));
        }
        match self.held.get_mut(&session) {
            Some(h) => {
                h.next_seq = seq.saturating_add(1);
                let h = h.clone();
                self.effects.writes.push(StoreWrite::PutSession(session, h));
            }
            None => {
                self.fresh.insert(session, seq.saturating_add(1));
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
                answered: None,
            },
        );
        Ok(id)
    }

    fn offered(h: &HeldSession<A>) -> OfferedCopy {
        OfferedCopy {
            digest: h.digest.clone(),
            committed: h.committed,
            known_committed: h.committed_version.clone(),
            known_committed_driver: h.committed_driver,
        }
    }

    /// The frames that open a connection: `Hello` with the first copies, then `Upload`s.
    pub fn hello(&self, token: DeviceToken, available: bool) -> Vec<ClientMsg<A>> {
        let copies: Vec<OfferedCopy> = self.held.values().map(Self::offered).collect();
        let mut chunks: Vec<Vec<OfferedCopy>> = copies
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
            self.on_upload_result(r);
        }
        self.send_unsent();
    }

    /// The answer to a [`ClientMsg::Reupload`].
    pub fn on_uploaded(&mut self, result: UploadResult) {
        // `reuploading` keeps the session until the connection ends: at most one re-upload
        // per session and connection (a datacenter that keeps disagreeing is not asked again
        // and again; the next connection tries once more).
        self.on_upload_result(result);
        self.send_unsent();
    }

    fn on_upload_result(&mut self, r: UploadResult) {
        match r.outcome {
            UploadOutcome::Refused(reason) => self.effects.events.push(EdgeEvent::UploadRefused {
                session: r.session,
                reason,
            }),
            UploadOutcome::Removed => self.on_removed(r.session),
            // Our copy beside the datacenter's: if ours is committed (we may have just been
            // told so), offer it again so the chain wins there; else wait.
            UploadOutcome::Diverged if self.held.get(&r.session).is_some_and(|h| h.committed) => {
                self.reupload(r.session)
            }
            UploadOutcome::Diverged => self.wait(r.session, WaitReason::BranchNotConfirmed),
            UploadOutcome::Restored
            | UploadOutcome::Current
            | UploadOutcome::Stale
            | UploadOutcome::Tombstoned => {}
        }
    }

    /// Resend every op that is neither in flight nor answered on the current connection
    /// (after a retryable rejection, call this on a timer).
    pub fn send_unsent(&mut self) {
        if self.connected.is_none() {
            return;
        }
        for ((session, seq), q) in self.outbox.iter_mut() {
            if !q.in_flight && q.answered.is_none() {
                q.in_flight = true;
                self.effects.send.push(q.message(*session, *seq));
            }
        }
    }

    /// Whether some op waits for a retry.
    pub fn has_unsent(&self) -> bool {
        self.outbox
            .values()
            .any(|q| !q.in_flight && q.answered.is_none())
    }

    pub fn on_disconnect(&mut self) {
        self.connected = None;
        self.reuploading.clear();
        for q in self.outbox.values_mut() {
            // An answered op may still be on a branch nobody confirmed: ask again wherever
            // the device connects (answered from the dedup state if it was applied there).
            q.maybe_applied |= q.in_flight || q.answered.is_some();
            q.in_flight = false;
            q.answered = None;
        }
    }

    /// A new copy of a session from the datacenter.
    pub fn on_push(&mut self, update: SessionUpdate<A>) {
        let session = update.digest.header.session;
        self.receive(update);
        self.settle(session);
        self.send_unsent();
    }

    /// The datacenter confirmed that `version` of a session is committed; `driver` is the
    /// provider it names and `your_*` this device's watermark in it.
    pub fn on_committed(
        &mut self,
        session: SessionId,
        version: VersionVector,
        driver: Option<DeviceId>,
        your_last_seq: u64,
        your_applied_bits: u64,
    ) {
        let me = self.device;
        let Some(h) = self.held.get_mut(&session) else {
            return;
        };
        let order = h.digest.header.version.compare(&version);
        // Our copy is that one, or (for the provider it hands the chain to) descends from
        // it: our own persisting put it on the chain.
        let ours_on_chain = order == VersionOrder::Equal
            || (order == VersionOrder::Newer
                && driver == Some(me)
                && h.digest.header.driver == Some(me));
        if matches!(
            version.compare(&h.committed_version),
            VersionOrder::Newer | VersionOrder::Equal
        ) {
            h.committed_version = version.clone();
            h.committed_driver = driver;
        }
        if ours_on_chain && !h.committed {
            h.committed = true;
            h.committed_version = h.digest.header.version.clone();
            h.committed_driver = h.digest.header.driver;
            let held_version = h.digest.header.version.clone();
            let holder = h.digest.header.anchor() == me;
            let h = h.clone();
            self.effects.writes.push(StoreWrite::PutSession(session, h));
            self.effects.flush = true;
            if holder && order == VersionOrder::Newer {
                // We hold the chain now and our copy descends from the committed hand-over:
                // our persisting (flushed before this goes out) commits it; say so, or a
                // datacenter that asked us to confirm it would wait for ever.
                self.effects.send.push(ClientMsg::Ack {
                    session,
                    version: held_version,
                    certified: true,
                });
            }
            self.after_commit(session);
        } else if !ours_on_chain {
            // A committed copy older than (or beside) ours: ops it covers with the same
            // outcome as our held copy are committed, and our store holds them.
            let (last, bits) = (h.last_seq, h.applied_bits);
            let ops: Vec<u64> = self
                .outbox
                .range((session, 0)..=(session, u64::MAX))
                .map(|((_, s), _)| *s)
                .collect();
            let mut done = Vec::new();
            for seq in ops {
                let theirs = outcome_in(your_last_seq, your_applied_bits, seq);
                let ours = outcome_in(last, bits, seq);
                if let (Some(a), Some(b)) = (theirs, ours) {
                    if a == b {
                        done.push((seq, a));
                    }
                }
            }
            for (seq, applied) in done {
                self.resolve(session, seq, applied, &version);
            }
        }
        self.note_committed_mark(session, your_last_seq, your_applied_bits);
        self.effects
            .events
            .push(EdgeEvent::ServerChangeCommitted { session, version });
        self.settle(session);
        self.send_unsent();
    }

    /// The datacenter's committed copy no longer names this device.
    pub fn on_removed(&mut self, session: SessionId) {
        match self.held.get(&session) {
            // Our copy is on the chain: the datacenter must be on a branch; offer it again.
            Some(h) if h.committed && h.digest.header.role_of(self.device).is_some() => {
                self.reupload(session);
            }
            _ => self.remove(session),
        }
    }

    fn remove(&mut self, session: SessionId) {
        if self.held.remove(&session).is_some() {
            self.effects.writes.push(StoreWrite::DeleteSession(session));
        }
        self.tombstones.retain(|s| *s != session);
        self.waiting.remove(&session);
        let ops: Vec<u64> = self
            .outbox
            .range((session, 0)..=(session, u64::MAX))
            .map(|((_, s), _)| *s)
            .collect();
        for seq in ops {
            self.fail(session, seq, SubmitError::Removed);
        }
        self.effects.flush = true;
        self.effects.events.push(EdgeEvent::Removed { session });
    }

    fn reupload(&mut self, session: SessionId) {
        if self.connected.is_none() || self.reuploading.contains(&session) {
            return;
        }
        if let Some(h) = self.held.get(&session).filter(|h| h.committed) {
            self.effects.send.push(ClientMsg::Reupload {
                copy: Self::offered(h),
            });
            self.reuploading.insert(session);
        }
    }

    fn wait(&mut self, session: SessionId, reason: WaitReason) {
        if self.waiting.insert(session) {
            self.effects
                .events
                .push(EdgeEvent::Waiting { session, reason });
        }
    }

    fn note_committed_mark(&mut self, session: SessionId, seq: u64, bits: u64) {
        if let Some(h) = self.held.get_mut(&session) {
            if seq > h.committed_seq {
                h.committed_seq = seq;
                h.committed_bits = bits;
                let h = h.clone();
                self.effects.writes.push(StoreWrite::PutSession(session, h));
                self.effects.flush = true;
            }
        }
    }

    /// Whether `u` is the first copy this device holds of a session it created (its create
    /// is still in its outbox, or it allocated the session's seqs here): the creator holds
    /// the chain from its create on, and whatever it persists first starts that chain (a
    /// hand-over in it is the creator's to make, by persisting it).
    fn creates(&self, session: SessionId, u: &SessionUpdate<A>) -> bool {
        u.digest.header.rider == self.device
            && u.your_last_seq >= 1
            && (self.fresh.contains_key(&session) || self.outbox.contains_key(&(session, 1)))
    }

    /// Persist `u` if the rules allow (see the module docs).
    fn receive(&mut self, u: SessionUpdate<A>) {
        let session = u.digest.header.session;
        let me = self.device;
        if u.digest.header.role_of(me).is_none() {
            return; // a datacenter never sends a copy to a non-participant
        }
        let theirs = u.digest.header.version.clone();
        let decision = match self.held.get(&session) {
            // Nothing held: a first copy. It is committed by this device's own persisting
            // only if it is the creator's copy of a session not yet handed to a provider.
            None => Decision::Take {
                next_seq: self.fresh.get(&session).copied().unwrap_or(1),
                committed: u.committed || self.creates(session, &u),
                replaced: None,
                marks: (0, 0),
                certified: self.creates(session, &u),
            },
            Some(h) => {
                let ours = h.digest.header.version.clone();
                let marks = (h.committed_seq, h.committed_bits);
                // This device holds the chain: its persisting a dominating copy commits it.
                let holder = h.committed && h.digest.header.anchor() == me;
                let live_over_final =
                    h.committed && h.digest.header.tombstone && !u.digest.header.tombstone;
                let leaves_chain = !matches!(
                    theirs.compare(&h.committed_version),
                    VersionOrder::Newer | VersionOrder::Equal
                );
                match theirs.compare(&ours) {
                    VersionOrder::Older => return,
                    // C3: a committed tombstone is final; and never off the known chain.
                    _ if live_over_final || leaves_chain => Decision::Refuse(ours),
                    VersionOrder::Equal => Decision::Same {
                        newly_committed: u.committed && !h.committed,
                        ack: u.ack,
                        ack_certified: holder,
                    },
                    VersionOrder::Newer => Decision::Take {
                        next_seq: h.next_seq,
                        committed: u.committed || holder,
                        replaced: None,
                        marks,
                        certified: holder,
                    },
                    // A branch nobody confirmed gives way to the committed chain; nothing
                    // else replaces a copy beside it.
                    VersionOrder::Concurrent if !h.committed && u.committed => Decision::Take {
                        next_seq: h.next_seq,
                        committed: true,
                        replaced: Some((h.view.clone(), ours)),
                        marks,
                        certified: false,
                    },
                    VersionOrder::Concurrent => Decision::Refuse(ours),
                }
            }
        };
        let (next_seq, committed, replaced, marks, certified) = match decision {
            Decision::Refuse(ours) => return self.refuse(session, ours, theirs),
            Decision::Same {
                newly_committed,
                ack,
                ack_certified,
            } => {
                if newly_committed {
                    if let Some(h) = self.held.get_mut(&session) {
                        h.committed = true;
                        h.committed_version = theirs.clone();
                        h.committed_driver = h.digest.header.driver;
                        let h = h.clone();
                        self.effects.writes.push(StoreWrite::PutSession(session, h));
                        self.effects.flush = true;
                    }
                    self.after_commit(session);
                }
                if ack {
                    self.effects.send.push(ClientMsg::Ack {
                        session,
                        version: theirs,
                        certified: ack_certified,
                    });
                }
                return;
            }
            Decision::Take {
                next_seq,
                committed,
                replaced,
                marks,
                certified,
            } => (next_seq, committed, replaced, marks, certified),
        };
        if !mark_covers(u.your_last_seq, u.your_applied_bits, marks.0, marks.1) {
            // The copy lacks an outcome this device knows committed: the chain rule was
            // broken somewhere. Never adopt it.
            let ours = self
                .held
                .get(&session)
                .map(|h| h.digest.header.version.clone())
                .unwrap_or_default();
            return self.refuse(session, ours, theirs);
        }
        if !self.held.contains_key(&session) {
            self.make_room();
            self.fresh.remove(&session);
        }
        if let Some((view, ours)) = replaced {
            self.effects.events.push(EdgeEvent::Conflict {
                session,
                ours,
                theirs: theirs.clone(),
                replaced: Some(view),
            });
        }
        let (committed_version, committed_driver) = match self.held.get(&session) {
            Some(h) if !committed => (h.committed_version.clone(), h.committed_driver),
            _ if committed => (theirs.clone(), u.digest.header.driver),
            _ => (VersionVector::new(), None),
        };
        let held: HeldSession<A> = HeldSession {
            next_seq: next_seq.max(u.your_last_seq.saturating_add(1)),
            last_seq: u.your_last_seq,
            applied_bits: u.your_applied_bits,
            committed,
            committed_seq: marks.0,
            committed_bits: marks.1,
            committed_version,
            committed_driver,
            view: u.view,
            digest: u.digest,
        };
        if u.ack {
            self.effects.send.push(ClientMsg::Ack {
                session,
                version: theirs.clone(),
                certified,
            });
        }
        self.effects.events.push(EdgeEvent::SessionUpdated {
            session,
            version: theirs,
            view: held.view.clone(),
            committed,
        });
        let finished = held.digest.header.tombstone;
        self.effects
            .writes
            .push(StoreWrite::PutSession(session, held.clone()));
        self.effects.flush = true;
        self.held.insert(session, held);
        if finished {
            self.note_tombstone(session);
        }
        if committed {
            self.after_commit(session);
        }
    }

    /// The held copy just became committed: remember this device's watermark in it, and
    /// send again the ops it does not cover that were answered on another branch.
    fn after_commit(&mut self, session: SessionId) {
        let Some((last, bits)) = self
            .held
            .get(&session)
            .map(|h| (h.last_seq, h.applied_bits))
        else {
            return;
        };
        self.note_committed_mark(session, last, bits);
        for (_, q) in self
            .outbox
            .range_mut((session, last.saturating_add(1))..=(session, u64::MAX))
        {
            if q.answered.is_some() {
                q.answered = None;
                q.in_flight = false;
                q.maybe_applied = true;
            }
        }
    }

    /// Keep our copy and refuse theirs; a committed copy of ours is offered to the
    /// datacenter again so the chain wins there.
    fn refuse(&mut self, session: SessionId, ours: VersionVector, theirs: VersionVector) {
        let committed = self.held.get(&session).is_some_and(|h| h.committed);
        if committed {
            self.effects.events.push(EdgeEvent::Conflict {
                session,
                ours,
                theirs,
                replaced: None,
            });
            self.reupload(session);
        } else {
            self.wait(session, WaitReason::BranchNotConfirmed);
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
        let with_update = update.is_some();
        if let Some(u) = update {
            self.receive(u);
        }
        if !self.outbox.contains_key(&(session, seq)) {
            // An answer to an op already resolved (a duplicate reply).
            self.settle(session);
            return;
        }
        match outcome {
            OpOutcome::Applied
            | OpOutcome::Duplicate { .. }
            | OpOutcome::AlreadyProcessed
            | OpOutcome::Rejected(OpRejection::App(_))
                if with_update =>
            {
                // Recorded in the copy: the outcome is read from a committed copy.
                self.answered(session, seq, outcome);
            }
            OpOutcome::Rejected(OpRejection::SessionFinished) if with_update => {
                self.answered(session, seq, outcome);
            }
            // An earlier op of ours has not reached the datacenter's copy: resend in order,
            // and offer our copy if it holds ops the datacenter's lacks.
            OpOutcome::Rejected(OpRejection::OutOfOrder { expected }) if expected < seq => {
                let earlier_queued = self
                    .outbox
                    .range((session, expected)..(session, seq))
                    .next()
                    .is_some();
                if !earlier_queued {
                    self.reupload(session);
                }
                for ((_, _), q) in self
                    .outbox
                    .range_mut((session, expected)..=(session, u64::MAX))
                {
                    q.in_flight = false;
                    q.answered = None;
                }
                self.retry(session, seq);
            }
            // Our copy names us but the datacenter's does not: it holds another branch. Offer
            // ours if it is committed; either way the op waits (the chain may still be ours).
            OpOutcome::Rejected(OpRejection::NotParticipant)
                if self
                    .held
                    .get(&session)
                    .is_some_and(|h| h.digest.header.role_of(self.device).is_some()) =>
            {
                self.reupload(session);
                self.answered(session, seq, outcome);
            }
            OpOutcome::Rejected(r) if r.is_retryable() => self.retry(session, seq),
            // Nothing was recorded anywhere (a create the application refused, a limit):
            // final.
            OpOutcome::Rejected(r) => self.fail(session, seq, SubmitError::Rejected(r)),
            OpOutcome::Applied | OpOutcome::Duplicate { .. } | OpOutcome::AlreadyProcessed => {
                // A success with no copy (should not happen): keep the op for replay.
                if let Some(q) = self.outbox.get_mut(&(session, seq)) {
                    q.in_flight = false;
                }
            }
        }
        self.settle(session);
    }

    fn answered(&mut self, session: SessionId, seq: u64, outcome: OpOutcome) {
        if let Some(q) = self.outbox.get_mut(&(session, seq)) {
            q.in_flight = false;
            q.answered = Some(outcome);
        }
    }

    /// A retryable refusal: send again later, up to `max_retries` times.
    fn retry(&mut self, session: SessionId, seq: u64) {
        let Some(q) = self.outbox.get_mut(&(session, seq)) else {
            return;
        };
        q.in_flight = false;
        q.answered = None;
        q.retries += 1;
        if q.retries > self.limits.max_retries {
            let n = self.limits.max_retries;
            self.fail(session, seq, SubmitError::GaveUp(n));
            // Later ops of the session could only ever hit the gap this one leaves: fail
            // them now, clearly, instead of one by one.
            let later: Vec<u64> = self
                .outbox
                .range((session, seq.saturating_add(1))..=(session, u64::MAX))
                .map(|((_, s), _)| *s)
                .collect();
            for s in later {
                self.fail(session, s, SubmitError::GaveUp(n));
            }
        }
    }

    /// Take an op out of the outbox (its store key is rewritten with its outcome by
    /// [`EdgeCore::decide`]); `None` if it was resolved already.
    fn take_op(&mut self, session: SessionId, seq: u64) -> Option<(OpId, Queued<A>)> {
        let q = self.outbox.remove(&(session, seq))?;
        let id = OpId {
            session,
            device: self.device,
            seq,
        };
        Some((id, q))
    }

    /// Record an op's outcome (in place of the op, in one store write), keep it for the app
    /// until acknowledged, and tell the app.
    fn decide(&mut self, id: OpId, op: A::Op, result: Result<Commit, SubmitError>) {
        let rec = OpOutcomeRecord {
            id,
            op,
            result: result.clone(),
            at_ms: self.now_ms,
        };
        self.effects
            .writes
            .push(StoreWrite::PutOutcome(rec.clone()));
        for dropped in self.outcomes.record(rec) {
            self.effects.writes.push(StoreWrite::DeleteOp(dropped));
        }
        self.effects.flush = true;
        if let Err(reason) = &result {
            self.effects.events.push(EdgeEvent::OpRejected {
                op: id,
                reason: reason.clone(),
            });
        }
        self.effects.resolved.push((id, result));
    }

    /// Resolve an op as failed (never committed).
    fn fail(&mut self, session: SessionId, seq: u64, reason: SubmitError) {
        let Some((id, q)) = self.take_op(session, seq) else {
            return;
        };
        if seq == 1 && !self.held.contains_key(&session) {
            // The create failed: nothing of this session exists anywhere.
            self.fresh.remove(&session);
        }
        self.decide(id, q.op, Err(reason));
    }

    /// Resolve an op from a committed copy's record of it.
    fn resolve(&mut self, session: SessionId, seq: u64, applied: bool, version: &VersionVector) {
        let Some((id, q)) = self.take_op(session, seq) else {
            return;
        };
        if applied {
            let duplicate = match q.answered {
                Some(OpOutcome::Duplicate { .. } | OpOutcome::AlreadyProcessed) => true,
                Some(_) => false,
                None => q.maybe_applied,
            };
            let commit = Commit {
                op: id,
                version: version.clone(),
                duplicate,
            };
            self.decide(id, q.op, Ok(commit));
            return;
        }
        let reason = match q.answered {
            Some(OpOutcome::Rejected(r)) => SubmitError::Rejected(r),
            _ => SubmitError::Rejected(OpRejection::App(AppRejection::InvalidOp(
                "rejected on an earlier attempt".into(),
            ))),
        };
        self.decide(id, q.op, Err(reason));
    }

    /// Report every op of `session` the held copy settles: a committed copy that covers it
    /// gives its outcome; a committed tombstone that does not, fails it. Tell the app when
    /// answered ops wait for the chain holder.
    fn settle(&mut self, session: SessionId) {
        let Some(h) = self.held.get(&session) else {
            return;
        };
        let (committed, last, bits, tombstone) = (
            h.committed,
            h.last_seq,
            h.applied_bits,
            h.digest.header.tombstone,
        );
        let version = h.digest.header.version.clone();
        #[cfg(feature = "fault-injection")]
        let committed = committed || crate::fault::report_on_reply();
        let ops: Vec<(u64, bool)> = self
            .outbox
            .range((session, 0)..=(session, u64::MAX))
            .map(|((_, s), q)| (*s, q.answered.is_some()))
            .collect();
        let mut answered_waiting = false;
        for (seq, answered) in ops {
            if !committed {
                answered_waiting |= answered;
                continue;
            }
            match outcome_in(last, bits, seq) {
                Some(applied) => self.resolve(session, seq, applied, &version),
                None if tombstone => self.fail(session, seq, SubmitError::SessionFinished),
                None => {}
            }
        }
        if answered_waiting {
            self.wait(session, WaitReason::ChainHolderAway);
        } else if !self
            .outbox
            .range((session, 0)..=(session, u64::MAX))
            .any(|(_, q)| q.answered.is_some())
        {
            self.waiting.remove(&session);
        }
    }

    /// Sessions with ops still waiting for an answer.
    pub fn pending_sessions(&self) -> HashSet<SessionId> {
        self.outbox.keys().map(|(s, _)| *s).collect()
    }
}
