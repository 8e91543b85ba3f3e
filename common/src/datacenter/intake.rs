//! A connection's rules before and beside the core: reassembling the connect upload
//! (`Hello` plus its `Upload` frames) within its limits, and the per-connection bound on
//! work in flight.
//!
//! The server's driver reads frames and hands each to a [`ConnectIntake`] until it says
//! [`IntakeStep::Done`]; then [`DatacenterCore::handle_connect`] takes the result. After
//! that, each frame first meets the [`InflightRule`], then
//! [`DatacenterCore::handle_message`]. The driver keeps the in-flight count (its reader and
//! writer tasks share it); which messages count, which answers release a slot and what a
//! device over the bound is told are decided here.
//!
//! Invariants:
//! - the first frame is a `Hello` with a credential that verifies for its device, or the
//!   connection is refused with a typed [`ProtocolError`] and nothing reaches the core;
//! - at most `max_upload_frames` `Upload` frames follow, each with at most
//!   [`MAX_DIGESTS_PER_FRAME`] digests, and a connect upload holds at most
//!   `(max_upload_frames + 1) * MAX_DIGESTS_PER_FRAME` digests: each bound is a
//!   [`ProtocolError::Limit`] naming it;
//! - anything but an `Upload` while more is announced is [`ProtocolError::ExpectedHello`];
//! - a device over its in-flight bound gets a typed, retryable answer for exactly the
//!   message it sent, and the core never sees that message.

use crate::app::Application;
use crate::ids::DeviceId;
use crate::keyring::Keyring;
use crate::limits::{LimitExceeded, LimitKind};
use crate::wire::{
    ClientMsg, OfferedCopy, OpOutcome, OpRejection, ProtocolError, ServerMsg, UploadOutcome,
    UploadRefusal, UploadResult, MAX_DIGESTS_PER_FRAME,
};

/// A connect upload, reassembled and authenticated: what
/// [`DatacenterCore::handle_connect`](super::DatacenterCore::handle_connect) takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Connected {
    /// The device whose credential verified.
    pub device: DeviceId,
    /// The `Hello` offered the device for dispatch.
    pub available: bool,
    /// Every copy of the `Hello` and its `Upload` frames, in order (at most
    /// [`ConnectIntake::max_digests`]).
    pub digests: Vec<OfferedCopy>,
}

/// What the intake needs next.
#[derive(Clone, Debug, PartialEq)]
pub enum IntakeStep {
    /// The device announced more `Upload` frames: read the next one.
    More,
    /// The connect upload is complete.
    Done(Connected),
}

/// Reassembles one connection's connect upload (see the module docs).
#[derive(Debug)]
pub struct ConnectIntake {
    max_upload_frames: usize,
    partial: Option<Connected>,
    upload_frames: usize,
}

impl ConnectIntake {
    /// An intake that accepts at most `max_upload_frames` `Upload` frames after the `Hello`.
    pub fn new(max_upload_frames: usize) -> Self {
        Self {
            max_upload_frames,
            partial: None,
            upload_frames: 0,
        }
    }

    /// Most digests one connect upload may hold.
    pub fn max_digests(&self) -> usize {
        (self.max_upload_frames + 1) * MAX_DIGESTS_PER_FRAME
    }

    /// The next frame of the connect upload. `keyring` verifies the `Hello`'s credential.
    /// An error ends the connection (the driver sends it and closes); the intake is then
    /// spent.
    pub fn handle_frame<A: Application>(
        &mut self,
        msg: ClientMsg<A>,
        keyring: &Keyring,
    ) -> Result<IntakeStep, ProtocolError> {
        let more = match (self.partial.as_mut(), msg) {
            (
                None,
                ClientMsg::Hello {
                    device,
                    token,
                    available,
                    digests,
                    more,
                },
            ) => {
                if !keyring.verify_device(device, &token) {
                    return Err(ProtocolError::BadCredential);
                }
                self.partial = Some(Connected {
                    device,
                    available,
                    digests,
                });
                more
            }
            (Some(partial), ClientMsg::Upload { digests, more }) => {
                self.upload_frames += 1;
                if self.upload_frames > self.max_upload_frames {
                    return Err(limit(LimitKind::UploadFrames, self.max_upload_frames));
                }
                if digests.len() > MAX_DIGESTS_PER_FRAME {
                    return Err(limit(LimitKind::DigestsPerFrame, MAX_DIGESTS_PER_FRAME));
                }
                partial.digests.extend(digests);
                more
            }
            _ => return Err(ProtocolError::ExpectedHello),
        };
        if more {
            // Checked as the frames come, so a long upload is cut off at the bound.
            if self.upload_frames >= self.max_upload_frames {
                return Err(limit(LimitKind::UploadFrames, self.max_upload_frames));
            }
            return Ok(IntakeStep::More);
        }
        let done = self.partial.take().ok_or(ProtocolError::ExpectedHello)?;
        if done.digests.len() > self.max_digests() {
            return Err(limit(LimitKind::DigestsPerConnect, self.max_digests()));
        }
        Ok(IntakeStep::Done(done))
    }
}

fn limit(kind: LimitKind, max: usize) -> ProtocolError {
    ProtocolError::Limit(LimitExceeded::new(kind, max))
}

/// The per-connection bound on work in flight (ops and re-uploads, each costing the core a
/// digest open or an apply), as rules over messages; the driver holds the count.
pub struct InflightRule;

impl InflightRule {
    /// Whether `msg` takes an in-flight slot (released by its answer).
    pub fn takes_slot<A: Application>(msg: &ClientMsg<A>) -> bool {
        matches!(
            msg,
            ClientMsg::Submit { .. } | ClientMsg::Resubmit { .. } | ClientMsg::Reupload { .. }
        )
    }

    /// Whether sending `msg` releases a slot (it answers a message that took one).
    pub fn releases_slot<A: Application>(msg: &ServerMsg<A>) -> bool {
        matches!(msg, ServerMsg::OpResult { .. } | ServerMsg::Uploaded { .. })
    }

    /// The typed, retryable answer to a message that found every slot taken (`None` for a
    /// message that takes no slot). The core never sees the message.
    pub fn refusal<A: Application>(
        msg: &ClientMsg<A>,
        exceeded: LimitExceeded,
    ) -> Option<ServerMsg<A>> {
        match msg {
            ClientMsg::Submit { session, seq, .. } | ClientMsg::Resubmit { session, seq, .. } => {
                Some(ServerMsg::OpResult {
                    session: *session,
                    seq: *seq,
                    outcome: OpOutcome::Rejected(OpRejection::Limit(exceeded)),
                    update: None,
                })
            }
            ClientMsg::Reupload { copy } => Some(ServerMsg::Uploaded {
                result: UploadResult {
                    session: copy.digest.header.session,
                    outcome: UploadOutcome::Refused(UploadRefusal::Limit(exceeded)),
                },
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{DigestBody, DigestHeader, SealedDigest};
    use crate::ids::SessionId;
    use crate::trip::{Trip, TripOp};
    use crate::version::VersionVector;

    /// A copy offered in a connect upload (the intake never opens it: any body will do).
    fn copy(keyring: &Keyring, device: DeviceId, session: u64) -> OfferedCopy {
        let header = DigestHeader {
            session: SessionId(session),
            version: VersionVector::new(),
            rider: device,
            driver: None,
            tombstone: false,
        };
        let body = DigestBody {
            state: 0u8,
            dedup: Vec::new(),
        };
        OfferedCopy {
            digest: SealedDigest::seal(keyring, header, &body, 1_000).expect("a digest seals"),
            committed: false,
            known_committed: Default::default(),
            known_committed_driver: None,
        }
    }

    fn hello(keyring: &Keyring, device: DeviceId, n: usize, more: bool) -> ClientMsg<Trip> {
        ClientMsg::Hello {
            device,
            token: keyring.device_token(device),
            available: true,
            digests: (0..n as u64)
                .map(|i| copy(keyring, device, i + 1))
                .collect(),
            more,
        }
    }

    fn upload(keyring: &Keyring, device: DeviceId, n: usize, more: bool) -> ClientMsg<Trip> {
        ClientMsg::Upload {
            digests: (0..n as u64)
                .map(|i| copy(keyring, device, 100 + i))
                .collect(),
            more,
        }
    }

    #[test]
    fn a_hello_and_its_uploads_are_reassembled_into_one_connect() {
        let k = Keyring::generate();
        let d = DeviceId(7);
        let mut intake = ConnectIntake::new(2);
        assert_eq!(
            intake.handle_frame(hello(&k, d, 3, true), &k),
            Ok(IntakeStep::More)
        );
        assert_eq!(
            intake.handle_frame(upload(&k, d, 2, true), &k),
            Ok(IntakeStep::More)
        );
        let Ok(IntakeStep::Done(c)) = intake.handle_frame(upload(&k, d, 1, false), &k) else {
            panic!("the last upload frame completes the connect");
        };
        assert_eq!((c.device, c.available, c.digests.len()), (d, true, 6));
    }

    #[test]
    fn a_hello_with_another_devices_credential_is_refused() {
        let k = Keyring::generate();
        let ClientMsg::Hello { token, .. } = hello(&k, DeviceId(8), 0, false) else {
            unreachable!()
        };
        let forged = ClientMsg::<Trip>::Hello {
            device: DeviceId(7),
            token,
            available: false,
            digests: Vec::new(),
            more: false,
        };
        let r = ConnectIntake::new(2).handle_frame(forged, &k);
        assert_eq!(r, Err(ProtocolError::BadCredential));
    }

    #[test]
    fn anything_but_a_hello_first_or_an_upload_after_it_is_expected_hello() {
        let k = Keyring::generate();
        let d = DeviceId(7);
        let first = ConnectIntake::new(2).handle_frame(upload(&k, d, 1, false), &k);
        assert_eq!(first, Err(ProtocolError::ExpectedHello));
        let mut intake = ConnectIntake::new(2);
        assert_eq!(
            intake.handle_frame(hello(&k, d, 0, true), &k),
            Ok(IntakeStep::More)
        );
        let second = intake.handle_frame(ClientMsg::<Trip>::SetAvailable { available: true }, &k);
        assert_eq!(second, Err(ProtocolError::ExpectedHello));
    }

    #[test]
    fn each_bound_of_the_connect_upload_is_a_limit_naming_it() {
        let k = Keyring::generate();
        let d = DeviceId(7);
        let kind = |r: Result<IntakeStep, ProtocolError>| match r {
            Err(ProtocolError::Limit(e)) => Some(e.kind),
            _ => None,
        };
        // More upload frames announced than allowed.
        let mut intake = ConnectIntake::new(1);
        assert_eq!(
            intake.handle_frame(hello(&k, d, 0, true), &k),
            Ok(IntakeStep::More)
        );
        let r = intake.handle_frame(upload(&k, d, 1, true), &k);
        assert_eq!(kind(r), Some(LimitKind::UploadFrames));
        // Too many digests in one upload frame.
        let mut intake = ConnectIntake::new(1);
        assert_eq!(
            intake.handle_frame(hello(&k, d, 0, true), &k),
            Ok(IntakeStep::More)
        );
        let r = intake.handle_frame(upload(&k, d, MAX_DIGESTS_PER_FRAME + 1, false), &k);
        assert_eq!(kind(r), Some(LimitKind::DigestsPerFrame));
        // Too many digests in the whole connect (a Hello over the per-frame count).
        let mut intake = ConnectIntake::new(0);
        let r = intake.handle_frame(hello(&k, d, MAX_DIGESTS_PER_FRAME + 1, false), &k);
        assert_eq!(kind(r), Some(LimitKind::DigestsPerConnect));
    }

    #[test]
    fn a_device_over_its_in_flight_bound_is_answered_for_exactly_what_it_sent() {
        let k = Keyring::generate();
        let d = DeviceId(7);
        let exceeded = LimitExceeded::new(LimitKind::InFlightOps, 4);
        let submit = ClientMsg::<Trip>::Submit {
            session: SessionId(3),
            seq: 9,
            op: TripOp::Arrived,
        };
        assert!(InflightRule::takes_slot(&submit));
        let answer = InflightRule::refusal(&submit, exceeded);
        let Some(ServerMsg::OpResult {
            session,
            seq,
            outcome,
            update: None,
        }) = &answer
        else {
            panic!("an op over the bound is answered with its own OpResult: {answer:?}");
        };
        assert_eq!((*session, *seq), (SessionId(3), 9));
        assert_eq!(*outcome, OpOutcome::Rejected(OpRejection::Limit(exceeded)));
        assert!(InflightRule::releases_slot(answer.as_ref().unwrap()));
        let reupload = ClientMsg::<Trip>::Reupload {
            copy: copy(&k, d, 5),
        };
        let Some(ServerMsg::Uploaded { result }) = InflightRule::refusal(&reupload, exceeded)
        else {
            panic!("a re-upload over the bound is answered with Uploaded");
        };
        assert_eq!(result.session, SessionId(5));
        let ack = ClientMsg::<Trip>::SetAvailable { available: true };
        assert!(!InflightRule::takes_slot(&ack));
        assert!(InflightRule::refusal(&ack, exceeded).is_none());
    }
}
