//! The wire messages: what a device and a datacenter say to each other.
//!
//! One QUIC bidirectional stream per connection carries [`ClientMsg`] up and [`ServerMsg`]
//! down, each message in one frame of [`crate::codec`]. The device id is never in a message
//! after `Hello`: the datacenter takes it from the authenticated connection. Every list in a
//! message is bounded ([`MAX_DIGESTS_PER_FRAME`], and the frame limit of the codec).

use crate::app::{AppRejection, Application};
use crate::digest::SealError;
use crate::digest::SealedDigest;
use crate::ids::{DatacenterId, DeviceId, SessionId};
use crate::keyring::{DeviceToken, KeyId};
use crate::limits::{LimitExceeded, LimitKind};
use crate::version::VersionVector;
use serde::{Deserialize, Serialize};

/// Most digests in one `Hello` or `Upload` frame.
pub const MAX_DIGESTS_PER_FRAME: usize = 64;

/// Device to datacenter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum ClientMsg<A: Application> {
    /// First frame of every connection: who the device is, and the copies it holds.
    Hello {
        /// The device's id; the connection is this device's from now on.
        device: DeviceId,
        /// The device's credential ([`crate::keyring::Keyring::device_token`] of `device`).
        token: DeviceToken,
        /// A driver ready for dispatch.
        available: bool,
        /// The first held copies, at most [`MAX_DIGESTS_PER_FRAME`].
        digests: Vec<OfferedCopy>,
        /// More digests follow in `Upload` frames before the datacenter answers `Welcome`.
        more: bool,
    },
    /// Further held digests after `Hello` (when there were more than fit one frame).
    Upload {
        /// More held copies, at most [`MAX_DIGESTS_PER_FRAME`].
        digests: Vec<OfferedCopy>,
        /// Another `Upload` frame follows.
        more: bool,
    },
    /// An op, with its stable id `(session, this device, seq)`.
    Submit {
        /// The session the op is for (chosen by the device for its create).
        session: SessionId,
        /// This device's op number in the session: 1 for its first, then consecutive.
        seq: u64,
        /// The application op.
        op: A::Op,
    },
    /// The device persisted this version of the session (sent when the update asked for it:
    /// a hand-over, another participant's op or a dispatch waits on this device's store).
    Ack {
        /// The session persisted.
        session: SessionId,
        /// The device's own persisting committed the copy (it holds the session's chain):
        /// only such an `Ack` confirms a change; any `Ack` counts for edge-ack durability.
        certified: bool,
        /// The version the device persisted.
        version: VersionVector,
    },
    /// A driver became available (or not) for dispatch.
    SetAvailable {
        /// Ready to be assigned a session.
        available: bool,
    },
    /// An op sent again after the connection it went out on was lost (or the app restarted
    /// with it in flight): it may have been applied at a datacenter this device can no longer
    /// hear from. Answered exactly like `Submit`; a datacenter that creates a session from it
    /// waits out the restore grace before dispatching, so the copy (and provider) of the
    /// datacenter that may have applied it can still arrive and be reconciled.
    Resubmit {
        /// The session the op is for.
        session: SessionId,
        /// The op's seq, the same as when it was first sent.
        seq: u64,
        /// The application op.
        op: A::Op,
    },
    /// The device offers the copy it holds again, after it refused a copy the datacenter sent
    /// (one concurrent with a committed copy it holds, or one that lacks ops it knows are
    /// committed). Answered with [`ServerMsg::Uploaded`]; judged like a connect upload.
    Reupload {
        /// The copy the device holds.
        copy: OfferedCopy,
    },
    /// The answer to a [`ServerMsg::Sample`] (shadow restore): the copy of `session` read
    /// back from the device's store after everything before the sample was persisted.
    Sampled {
        /// The session asked for.
        session: SessionId,
        /// What the store holds of it; `None`: nothing.
        copy: Option<OfferedCopy>,
    },
}

/// A copy a device uploads: the sealed digest and whether the device knows it is on the
/// session's committed chain (see docs/PROTOCOL.md). `committed` is the device's own word:
/// a datacenter lets a committed copy win over a concurrent copy of its own, never an
/// uncommitted one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedCopy {
    /// The sealed copy as the device stores it.
    pub digest: SealedDigest,
    /// The device knows this copy is on the committed chain.
    pub committed: bool,
    /// The newest version the device knows is committed (its own persisting as the chain
    /// holder, or a datacenter's confirmation); empty if none. A datacenter whose line holds
    /// that version learns it is committed (say, a hand-over whose `Ack` a crash lost).
    pub known_committed: VersionVector,
    /// The provider `known_committed` names.
    pub known_committed_driver: Option<DeviceId>,
}

/// What the datacenter decided about one uploaded digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadOutcome {
    /// The datacenter did not have this session, or had an older copy: it adopted the upload.
    Restored,
    /// The datacenter already had exactly this version.
    Current,
    /// The datacenter holds a newer version; it is pushed to the device.
    Stale,
    /// The session is finished at the datacenter; an older live copy cannot revive it (C3).
    Tombstoned,
    /// Neither version dominates and the upload is not known committed: the datacenter keeps
    /// its own copy and nothing commits on either until the session's anchor settles it (the
    /// device waits, and is told why).
    Diverged,
    /// The datacenter holds a committed copy this device is no longer a participant of (a
    /// provider assigned on a branch that never committed): the device drops the session.
    Removed,
    /// The digest was refused (C4): not a participant, failed authentication, unknown key.
    Refused(UploadRefusal),
}

/// Why a datacenter refused an uploaded digest. Nothing changed at the datacenter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum UploadRefusal {
    /// Sealed with a key id the datacenter does not hold (retired, or another region).
    #[error("digest sealed with key {0}, which this datacenter does not hold")]
    UnknownKey(KeyId),
    /// The authentication tag does not check out: changed bytes, another region's key.
    #[error("digest failed authentication (tampered, or sealed by another region)")]
    Tampered,
    /// The digest is over the size limit or its header breaks the invariants.
    #[error("malformed digest: {0}")]
    Malformed(String),
    /// The uploading device is not a participant of the digest's session.
    #[error("uploader is not a participant of the session")]
    NotParticipant,
    /// The datacenter is at a limit (its session count).
    #[error(transparent)]
    Limit(LimitExceeded),
    /// The datacenter does not hold the session and the copy was sealed before its restore
    /// floor: older than the tombstones it keeps, so it could be a finished session's (C3).
    /// The device keeps its copy; the session continues where it is held.
    #[error("digest sealed at {sealed_at_ms} (unix ms), before this datacenter's restore floor {floor_ms}")]
    SealedTooLongAgo {
        /// When the copy was sealed (unix ms, second resolution).
        sealed_at_ms: u64,
        /// Copies sealed before this are refused here (unix ms).
        floor_ms: u64,
    },
}

impl From<SealError> for UploadRefusal {
    fn from(e: SealError) -> Self {
        match e {
            SealError::UnknownKey(id) => UploadRefusal::UnknownKey(id),
            SealError::Tampered => UploadRefusal::Tampered,
            other => UploadRefusal::Malformed(other.to_string()),
        }
    }
}

/// Per-digest result of the connect upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResult {
    /// The session of the uploaded digest.
    pub session: SessionId,
    /// What the datacenter did with it.
    pub outcome: UploadOutcome,
}

/// Why an op was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpRejection {
    /// The application refused the op; recorded in the watermark, so a retry is refused too.
    #[error("rejected by the application: {0}")]
    App(AppRejection),
    /// Not a create and the session is not held here (a copy may still arrive with an
    /// upload): retryable, nothing recorded.
    #[error("the datacenter does not know this session (yet)")]
    UnknownSession,
    /// The submitting device is neither the session's requester nor its provider.
    #[error("this device is not a participant of the session")]
    NotParticipant,
    /// The session is a tombstone; no op applies any more (C3).
    #[error("the session is finished")]
    SessionFinished,
    /// The seq skips ahead of the device's watermark; the device must send the missing ops first.
    #[error("an earlier op is missing; expected seq {expected}")]
    OutOfOrder {
        /// The seq the datacenter expects next from this device.
        expected: u64,
    },
    /// A create while the datacenter holds `max_sessions`: retryable, nothing recorded.
    #[error("the datacenter is busy; retry")]
    Overloaded,
    /// A per-device or per-connection limit (C6). Nothing was recorded.
    #[error(transparent)]
    Limit(LimitExceeded),
    /// The datacenter could not make the change, for a reason of its own, not the op's.
    /// Nothing changed.
    #[error("the datacenter could not make the change: {0}")]
    ChangeFailed(ChangeFailure),
    /// The op was rejected on an earlier attempt whose answer named no reason this device
    /// kept (it learned the outcome from a watermark).
    #[error("rejected on an earlier attempt")]
    RejectedEarlier,
}

/// Why a datacenter could not change a session (a typed internal failure, never the op's
/// fault). Nothing changed when it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeFailure {
    /// The session is not (or no longer) held here.
    #[error("no such session")]
    NoSuchSession,
    /// This datacenter's version counter for the session is exhausted.
    #[error("the version counter is exhausted")]
    VersionExhausted,
    /// The changed digest is over the digest size limit.
    #[error("the new state seals to {0} bytes, over the digest limit")]
    DigestTooLarge(usize),
    /// The active sealing key is not in the keyring.
    #[error("the active sealing key {0} is missing")]
    NoActiveKey(KeyId),
    /// The digest could not be sealed (encoding failed).
    #[error("the new state could not be sealed")]
    Seal,
}

impl From<crate::version::VersionError> for ChangeFailure {
    fn from(_: crate::version::VersionError) -> Self {
        ChangeFailure::VersionExhausted
    }
}

impl From<SealError> for ChangeFailure {
    fn from(e: SealError) -> Self {
        match e {
            SealError::TooLarge(n) => ChangeFailure::DigestTooLarge(n),
            SealError::UnknownKey(k) => ChangeFailure::NoActiveKey(k),
            _ => ChangeFailure::Seal,
        }
    }
}

impl OpRejection {
    /// The device should keep the op and retry later (nothing was recorded).
    pub fn is_retryable(&self) -> bool {
        match self {
            OpRejection::UnknownSession | OpRejection::Overloaded => true,
            // These clear by themselves: answers drain, the create budget refills.
            OpRejection::Limit(l) => matches!(
                l.kind,
                LimitKind::InFlightOps | LimitKind::SessionCreateRate | LimitKind::Sessions
            ),
            _ => false,
        }
    }
}

/// The outcome of one submitted op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutcome {
    /// The op was applied.
    Applied,
    /// The op was not applied, for this reason.
    Rejected(OpRejection),
    /// A retry of an op already processed (C2): it was applied (or rejected) before and is
    /// not applied again.
    Duplicate {
        /// The earlier attempt was applied (`false`: it was rejected).
        applied: bool,
    },
    /// A retry of an op processed so long ago that its outcome is no longer remembered.
    AlreadyProcessed,
}

/// A new copy of a session for a device to persist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SessionUpdate<A: Application> {
    /// The sealed copy for the device to store.
    pub digest: SealedDigest,
    /// The application state in clear, for the app to show (the digest is opaque to it).
    pub view: A::State,
    /// The highest op seq of this device the datacenter has processed for the session.
    pub your_last_seq: u64,
    /// The outcomes of this device's last 64 ops in this copy (bit i: seq `your_last_seq - i`,
    /// 1 applied, 0 rejected), so the device can judge what the copy covers.
    pub your_applied_bits: u64,
    /// The datacenter knows this copy is on the session's committed chain (for the anchor:
    /// the chain up to it is confirmed, so persisting it commits it).
    pub committed: bool,
    /// The datacenter waits for this device to persist the copy: answer with `Ack`.
    pub ack: bool,
}

/// Datacenter to device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum ServerMsg<A: Application> {
    /// The connect upload is processed; ops may flow.
    Welcome {
        /// The datacenter that answered.
        dc: DatacenterId,
        /// What became of each uploaded digest.
        results: Vec<UploadResult>,
    },
    /// The answer to a `Submit`.
    OpResult {
        /// The session the op was for.
        session: SessionId,
        /// The op's seq.
        seq: u64,
        /// How the op ended.
        outcome: OpOutcome,
        /// The session's copy after the op; `None` when the op never reached a held session
        /// (unknown session, not a participant, a limit).
        update: Option<SessionUpdate<A>>,
    },
    /// The session changed (another participant's op, dispatch, restore).
    Push {
        /// The new copy.
        update: SessionUpdate<A>,
    },
    /// The session's chain holder persisted `version` (or, for a hand-over, the previous
    /// anchor did): that copy is committed. `your_*` is the receiver's watermark in it, so
    /// the receiver can resolve its ops the copy covers.
    Committed {
        /// The session concerned.
        session: SessionId,
        /// The committed version.
        version: VersionVector,
        /// The provider that version names (a provider learns it now holds the chain).
        driver: Option<DeviceId>,
        /// The receiver's highest processed op seq in that version.
        your_last_seq: u64,
        /// The outcomes of the receiver's last 64 ops in that version (as in
        /// [`SessionUpdate::your_applied_bits`]).
        your_applied_bits: u64,
    },
    /// The answer to a [`ClientMsg::Reupload`].
    Uploaded {
        /// What the datacenter did with the copy.
        result: UploadResult,
    },
    /// The datacenter's committed copy of the session no longer names this device.
    Removed {
        /// The session the device must drop.
        session: SessionId,
    },
    /// Shadow restore (continuous verification): send the copy of `session` that your store
    /// holds, as you would upload it to a backup, once everything received before this
    /// message is persisted. Answered with [`ClientMsg::Sampled`]; nothing changes anywhere.
    Sample {
        /// The session sampled.
        session: SessionId,
    },
    /// A protocol error; the datacenter closes the connection after it.
    Error {
        /// Why the connection ends.
        error: ProtocolError,
    },
}

/// Connection-level errors the datacenter reports before closing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProtocolError {
    /// The connection did not open with `Hello` (or sent something else while `Upload`
    /// frames were announced).
    #[error("first frame must be Hello")]
    ExpectedHello,
    /// The `Hello`'s token does not verify for its device id (wrong or revoked credential).
    #[error("device credential refused")]
    BadCredential,
    /// A frame could not be read or decoded, or a `Hello`/`Upload` came after the connect.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A connection limit was hit (frame size or time, upload size); the kind says which.
    #[error("limit exceeded: {0}")]
    Limit(LimitExceeded),
    /// The same device connected again; this older connection is closed. Do not reconnect it.
    #[error("replaced by a newer connection of the same device")]
    Replaced,
    /// The datacenter is stopping; connect to another one.
    #[error("datacenter shutting down")]
    ShuttingDown,
    /// A planned failover: the datacenter is being drained and moves its devices away in
    /// paced waves. Connect now to `to` when it is in the device's own datacenter list (the
    /// device trusts no other address), else to its next datacenter; do not come back
    /// (probes included) for `back_after_ms`, while the drain may still run.
    #[error("datacenter draining: move to {} now, back after {back_after_ms} ms", drain_target(.to))]
    Draining {
        /// Where the operator moves this datacenter's devices (`None`: each device's next).
        to: Option<std::net::SocketAddr>,
        /// How long the drain may still run (ms).
        back_after_ms: u64,
    },
}

fn drain_target(to: &Option<std::net::SocketAddr>) -> String {
    match to {
        Some(a) => a.to_string(),
        None => "the next datacenter".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{
        decode_exact, encode, encode_frame, frame_len, CodecError, MAX_FRAME_BYTES,
    };
    use crate::trip::{Trip, TripOp};

    #[test]
    fn a_message_round_trips_through_a_frame() {
        let msg: ClientMsg<Trip> = ClientMsg::Submit {
            session: SessionId(1),
            seq: 3,
            op: TripOp::Arrived,
        };
        let frame = encode_frame(&msg).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: ClientMsg<Trip> = decode_exact(&frame[4..], MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn huge_vector_claim_is_refused_not_allocated() {
        // Variant 1 (Upload) followed by a varint length of u64::MAX digests.
        let hostile = [1u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let r = decode_exact::<ClientMsg<Trip>>(&hostile, MAX_FRAME_BYTES);
        assert!(matches!(r, Err(CodecError::Malformed(_))), "{r:?}");
    }

    #[test]
    fn trailing_bytes_after_a_message_are_refused() {
        let mut bytes = encode(&ClientMsg::<Trip>::SetAvailable { available: true }).unwrap();
        bytes.push(0);
        assert_eq!(
            decode_exact::<ClientMsg<Trip>>(&bytes, MAX_FRAME_BYTES),
            Err(CodecError::TrailingBytes(1))
        );
    }
}
