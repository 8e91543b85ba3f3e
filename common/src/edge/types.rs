//! The edge core's public vocabulary: its limits ([`EdgeLimits`]), a held session
//! ([`HeldSession`]), what it asks its driver to do ([`EdgeEffects`], [`StoreWrite`]), what
//! it tells the app ([`EdgeEvent`], [`Commit`], [`SubmitError`], [`WaitReason`]). Plain
//! data: no rule of the protocol lives here.

use crate::app::Application;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, OpId, SessionId};
use crate::op_outcome::{Commit, OpOutcomeRecord, SubmitError};
use crate::version::VersionVector;
use crate::wire::{ClientMsg, OpOutcome, UploadRefusal};
use serde::{Deserialize, Serialize};

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
    /// The sealed copy, as the datacenter sent it (uploaded on connect).
    pub digest: SealedDigest,
    /// The application state of `digest` in clear, for the app to show.
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
    /// The outcome bits that go with `committed_seq` (bit i: seq `committed_seq - i`).
    pub committed_bits: u64,
    /// The newest version this device knows is committed: it never persists a copy that
    /// does not dominate (or equal) it, so it never leaves the chain it knows.
    pub committed_version: VersionVector,
    /// The provider `committed_version` names.
    pub committed_driver: Option<DeviceId>,
}

/// Where an op queued on this device stands, as the device sees it: for a person asking why
/// it is not decided yet ([`EdgeCore::op_progress`](super::EdgeCore::op_progress)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpProgress {
    /// The datacenter the device is connected to (`None`: between connections).
    pub connected: Option<DatacenterId>,
    /// Sent on the current connection and not answered yet.
    pub in_flight: bool,
    /// It was in flight on a connection that was lost: it goes out as a `Resubmit`.
    pub maybe_applied: bool,
    /// Retryable refusals so far.
    pub retries: u32,
    /// The last answer a datacenter gave it (on any connection).
    pub last_answer: Option<OpOutcome>,
    /// Answered on this connection: the outcome waits for a committed copy covering it.
    pub awaiting_commit: bool,
    /// The session's copy held here: its version, whether it is committed, and this
    /// device's watermark in it (`None`: no copy held).
    pub held: Option<(VersionVector, bool, u64)>,
}

/// A write to the device store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreWrite<A: Application> {
    /// Store (or replace) the session's held copy.
    PutSession(SessionId, HeldSession<A>),
    /// Drop the session (removed from it, or a tombstone beyond `max_tombstones`).
    DeleteSession(SessionId),
    /// Queue an op (the op's key holds [`crate::op_outcome::OpRecord::Queued`]).
    PutOp(OpId, A::Op),
    /// The op was decided: its key now holds the outcome (one write replaces the op).
    PutOutcome(OpOutcomeRecord<A>),
    /// Forget an op's key (its outcome was acknowledged, or dropped beyond the bound).
    DeleteOp(OpId),
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
    /// The device persisted a new copy of the session.
    SessionUpdated {
        /// The session updated.
        session: SessionId,
        /// The version now held.
        version: VersionVector,
        /// Its application state.
        view: A::State,
        /// The copy is known to be on the committed chain.
        committed: bool,
    },
    /// The datacenter confirmed that `version` of the session is committed (its chain holder
    /// persisted it: a dispatch, another participant's op).
    ServerChangeCommitted {
        /// The session concerned.
        session: SessionId,
        /// The committed version.
        version: VersionVector,
    },
    /// The copy this device held was a branch nobody had confirmed and gave way to the
    /// committed chain (`replaced`: what it showed). Ops of this device on that branch were
    /// never reported; they are sent again. `replaced: None`: the device kept its committed
    /// copy and refused a concurrent one.
    Conflict {
        /// The session concerned.
        session: SessionId,
        /// The version this device held.
        ours: VersionVector,
        /// The concurrent version the datacenter sent.
        theirs: VersionVector,
        /// The state of the copy that gave way; `None`: this device kept its own.
        replaced: Option<A::State>,
    },
    /// The session's ops wait, and why.
    Waiting {
        /// The session whose ops wait.
        session: SessionId,
        /// Why they wait.
        reason: WaitReason,
    },
    /// This device is no longer a participant of the session; its store no longer holds it
    /// and its queued ops were failed with [`SubmitError::Removed`].
    Removed {
        /// The session dropped.
        session: SessionId,
    },
    /// The datacenter refused a digest this device uploaded.
    UploadRefused {
        /// The session of the refused digest.
        session: SessionId,
        /// Why the datacenter refused it.
        reason: UploadRefusal,
    },
    /// An op failed (also reported in [`EdgeEffects::resolved`]).
    OpRejected {
        /// The op that failed.
        op: OpId,
        /// Why; the op was never committed.
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

/// Most sample reads one batch asks for (a datacenter has at most
/// [`MAX_SHADOW_PROBES`](crate::datacenter::MAX_SHADOW_PROBES) out; more are not answered).
pub const MAX_SAMPLES_PER_BATCH: usize = 16;

/// Outputs of a batch of inputs, in the order the driver must carry them out.
#[derive(Debug)]
pub struct EdgeEffects<A: Application> {
    /// First: apply these writes to the device store, in order.
    pub writes: Vec<StoreWrite<A>>,
    /// Then flush the store to disk before anything below (C1).
    pub flush: bool,
    /// Then send these messages to the connected datacenter, in order.
    pub send: Vec<ClientMsg<A>>,
    /// Then read these sessions back from the store (after the flush) and send each as
    /// [`ClientMsg::Sampled`](crate::wire::ClientMsg::Sampled) with
    /// [`EdgeCore::offered`](crate::edge::EdgeCore::offered) of what it holds (shadow
    /// restore). At most [`MAX_SAMPLES_PER_BATCH`].
    pub samples: Vec<crate::ids::SessionId>,
    /// Then tell the app these ops' outcomes (decided and already written).
    pub resolved: Vec<(OpId, Result<Commit, SubmitError>)>,
    /// And these events.
    pub events: Vec<EdgeEvent<A>>,
}

impl<A: Application> Default for EdgeEffects<A> {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            flush: false,
            send: Vec::new(),
            samples: Vec::new(),
            resolved: Vec::new(),
            events: Vec::new(),
        }
    }
}
