//! Ops from devices: apply exactly once (C2), reply, and create new sessions.
//!
//! Invariants: an op is processed once per `(session, device, seq)`, a retry answered from
//! the watermark in the digest; rejected ops are recorded too; every op gets exactly one
//! `OpResult`, typed, never a panic; a create is admitted only within the device's limits.

use super::*;

use crate::app::Application;
use crate::dedup::{DedupEntry, Seen};
use crate::digest::{DigestBody, DigestHeader, SealedDigest};
use crate::ids::{DeviceId, SessionId};
use crate::version::VersionVector;
use crate::wire::{OpOutcome, OpRejection, ServerMsg};
use std::collections::VecDeque;

impl<A: Application> DatacenterCore<A> {
    pub(super) fn reply(
        &mut self,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        outcome: OpOutcome,
        with_update: bool,
    ) {
        let update = if with_update {
            self.sessions
                .get(&session)
                .map(|e| Self::update_for(e, device))
        } else {
            None
        };
        self.effects.send.push((
            device,
            ServerMsg::OpResult {
                session,
                seq,
                outcome,
                update,
            },
        ));
    }

    /// An op from `device` (authenticated by the driver) with stable id `(session, device,
    /// seq)`.
    pub fn handle_submit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
    ) {
        self.clock(now_ms);
        let reject = |this: &mut Self, r: OpRejection, with_update: bool| {
            this.stats.ops_rejected += 1;
            this.reply(device, session, seq, OpOutcome::Rejected(r), with_update);
        };
        let Some(entry) = self.sessions.get(&session) else {
            return match self.admit_unknown(now_ms, device, seq, &op) {
                Ok(()) => self.create(now_ms, device, session, op),
                Err(r) => reject(self, r, false),
            };
        };
        let Some(role) = entry.header.role_of(device) else {
            return reject(self, OpRejection::NotParticipant, false);
        };
        let mark = entry
            .body
            .dedup
            .iter()
            .find(|d| d.device == device)
            .copied()
            .unwrap_or_else(|| DedupEntry::new(device));
        let seen = mark.check(seq);
        #[cfg(feature = "fault-injection")]
        let seen = crate::fault::distort_seen(seen);
        match seen {
            Seen::Duplicate { applied } => {
                self.stats.ops_duplicate += 1;
                return self.reply(device, session, seq, OpOutcome::Duplicate { applied }, true);
            }
            Seen::Forgotten => {
                self.stats.ops_duplicate += 1;
                return self.reply(device, session, seq, OpOutcome::AlreadyProcessed, true);
            }
            Seen::Gap { expected } => {
                return reject(self, OpRejection::OutOfOrder { expected }, true);
            }
            Seen::Next => {}
        }
        if entry.header.tombstone {
            return reject(self, OpRejection::SessionFinished, true);
        }
        // Another participant's op commits only once the chain holder persisted it, and so
        // does the anchor's while this datacenter does not know the hand-over is done.
        let waits = device != entry.header.anchor() || !entry.anchor_known();
        self.apply_op(now_ms, device, session, seq, role, op, waits);
    }

    /// An op for a session this datacenter does not hold: only a create (seq 1) within
    /// the session and create limits may make one.
    fn admit_unknown(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        seq: u64,
        op: &A::Op,
    ) -> Result<(), OpRejection> {
        if !(A::is_create(op) && seq == 1) {
            return Err(OpRejection::UnknownSession);
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            self.stats.limited_sessions += 1;
            return Err(OpRejection::Overloaded);
        }
        self.admit_create(now_ms, device)
            .map_err(OpRejection::Limit)
    }

    /// Apply a new op (its seq is the next of its device) to the session, record its
    /// outcome in the device's watermark, answer it and push the change. `waits`: it commits
    /// only once the chain holder persisted it.
    #[allow(clippy::too_many_arguments)]
    fn apply_op(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        role: crate::ids::Role,
        op: A::Op,
        waits: bool,
    ) {
        let mut app_result = Ok(());
        let changed = self.change(session, waits, |_, body| {
            let mut state = body.state.clone();
            app_result = A::apply(&mut state, role, &op, now_ms);
            let applied = app_result.is_ok();
            if applied {
                body.state = state;
            }
            match body.dedup.iter_mut().find(|d| d.device == device) {
                Some(d) => d.record(applied),
                None => {
                    let mut d = DedupEntry::new(device);
                    d.record(applied);
                    body.dedup.push(d);
                }
            }
        });
        let outcome = match (changed, app_result) {
            (Err(e), _) => {
                self.stats.ops_rejected += 1;
                let outcome = OpOutcome::Rejected(OpRejection::ChangeFailed(e));
                return self.reply(device, session, seq, outcome, true);
            }
            (Ok(()), Ok(())) => {
                self.stats.ops_applied += 1;
                OpOutcome::Applied
            }
            (Ok(()), Err(e)) => {
                self.stats.ops_rejected += 1;
                OpOutcome::Rejected(OpRejection::App(e))
            }
        };
        self.reply(device, session, seq, outcome, true);
        self.push_to_participants(session, Some(device));
        if let Some(e) = self.sessions.get(&session) {
            if e.header.tombstone {
                if let Some(driver) = e.header.driver {
                    // The driver is free again if it still wants work.
                    if self.connected.get(&driver).is_some_and(|c| c.available) {
                        self.offer_driver(driver);
                    }
                }
            }
        }
    }

    /// An op sent again after its connection was lost (see [`crate::wire::ClientMsg::Resubmit`]).
    /// Answered exactly like a submit: the chain rule makes a second provider for a
    /// resubmitted request harmless (only the assignment the rider persists commits; the
    /// other provider is told it was removed).
    pub fn handle_resubmit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
    ) {
        self.clock(now_ms);
        self.handle_submit(now_ms, device, session, seq, op)
    }

    pub(super) fn create(&mut self, now_ms: u64, device: DeviceId, session: SessionId, op: A::Op) {
        let state = match A::create(&op, now_ms) {
            Ok(s) => s,
            Err(e) => {
                self.stats.ops_rejected += 1;
                return self.reply(
                    device,
                    session,
                    1,
                    OpOutcome::Rejected(OpRejection::App(e)),
                    false,
                );
            }
        };
        let mut mark = DedupEntry::new(device);
        mark.record(true);
        let mut version = VersionVector::new();
        if let Err(e) = version.bump(self.cfg.replica) {
            let r = OpRejection::ChangeFailed(e.into());
            return self.reply(device, session, 1, OpOutcome::Rejected(r), false);
        }
        let header = DigestHeader {
            session,
            version,
            rider: device,
            driver: None,
            tombstone: A::is_finished(&state),
        };
        let body = DigestBody {
            state,
            dedup: vec![mark],
        };
        let sealed = match SealedDigest::seal(&self.keyring, header.clone(), &body, now_ms) {
            Ok(s) => s,
            Err(e) => {
                let r = OpRejection::ChangeFailed(e.into());
                return self.reply(device, session, 1, OpOutcome::Rejected(r), false);
            }
        };
        self.effects.persist.push((session, sealed.clone()));
        // The creator is the anchor: its persisting the reply commits the create. Nothing is
        // known committed until it says so (the reply may be lost, and the creator may
        // start over elsewhere).
        let chain = Chain {
            confirmed: None,
            unconfirmed: VecDeque::from([Unconfirmed {
                version: header.version.clone(),
                driver: None,
                dedup: body.dedup.clone(),
            }]),
            ..Chain::default()
        };
        self.insert(header, body, sealed, chain);
        self.stats.sessions_created += 1;
        self.stats.ops_applied += 1;
        self.effects.events.push(DcEvent::Created(session));
        self.reply(device, session, 1, OpOutcome::Applied, true);
        self.dispatch(now_ms);
    }
}
