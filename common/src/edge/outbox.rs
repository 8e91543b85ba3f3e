//! The outbox: ops queued by the app, sent, answered, and decided (C1, C2).
//!
//! Invariants: a seq is allocated once per session and flushed before its op is first sent;
//! an op is decided only from a committed copy this device persisted (or a confirmed
//! watermark its held copy matches), never from the reply alone; a decided op's record
//! replaces the queued one in one store write and stays until acknowledged; the outbox,
//! the in-flight ops per session and the retries are bounded.

use super::*;

use crate::app::Application;
use crate::dedup::DEDUP_WINDOW;
use crate::ids::{OpId, SessionId};
use crate::op_outcome::{OpOutcomeRecord, OpStatus};
use crate::version::VersionVector;
use crate::wire::{ClientMsg, OpOutcome, OpRejection, SessionUpdate};

pub(super) struct Queued<A: Application> {
    pub(super) op: A::Op,
    pub(super) retries: u32,
    pub(super) in_flight: bool,
    /// It was in flight on a connection that was lost (or when the app stopped): a
    /// datacenter may have applied it, so it goes out as `Resubmit`.
    pub(super) maybe_applied: bool,
    /// The datacenter's last answer on this connection; the outcome waits for a committed
    /// copy that covers the op. Not sent again on this connection.
    pub(super) answered: Option<OpOutcome>,
    /// The last answer a datacenter gave it, on any connection (diagnostics only).
    pub(super) last_answer: Option<OpOutcome>,
}

impl<A: Application> Queued<A> {
    pub(super) fn message(&self, session: SessionId, seq: u64) -> ClientMsg<A> {
        let op = self.op.clone();
        if self.maybe_applied {
            ClientMsg::Resubmit { session, seq, op }
        } else {
            ClientMsg::Submit { session, seq, op }
        }
    }
}

impl<A: Application> EdgeCore<A> {
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
                last_answer: None,
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

    /// Where op `id`, queued on this device, stands (see [`OpProgress`]); `None` if it is
    /// not queued (decided, or unknown).
    pub fn op_progress(&self, id: OpId) -> Option<OpProgress> {
        if id.device != self.device {
            return None;
        }
        let q = self.outbox.get(&(id.session, id.seq))?;
        Some(OpProgress {
            connected: self.connected,
            in_flight: q.in_flight,
            maybe_applied: q.maybe_applied,
            retries: q.retries,
            last_answer: q.last_answer.clone(),
            awaiting_commit: q.answered.is_some(),
            held: self
                .held
                .get(&id.session)
                .map(|h| (h.digest.header.version.clone(), h.committed, h.last_seq)),
        })
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

    pub(super) fn next_seq(&self, session: SessionId) -> u64 {
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
                last_answer: None,
            },
        );
        Ok(id)
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
        if let Some(q) = self.outbox.get_mut(&(session, seq)) {
            q.last_answer = Some(outcome.clone());
        }
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

    pub(super) fn answered(&mut self, session: SessionId, seq: u64, outcome: OpOutcome) {
        if let Some(q) = self.outbox.get_mut(&(session, seq)) {
            q.in_flight = false;
            q.answered = Some(outcome);
        }
    }

    /// A retryable refusal: send again later, up to `max_retries` times.
    pub(super) fn retry(&mut self, session: SessionId, seq: u64) {
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
    pub(super) fn take_op(&mut self, session: SessionId, seq: u64) -> Option<(OpId, Queued<A>)> {
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
    pub(super) fn decide(&mut self, id: OpId, op: A::Op, result: Result<Commit, SubmitError>) {
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
    pub(super) fn fail(&mut self, session: SessionId, seq: u64, reason: SubmitError) {
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
    pub(super) fn resolve(
        &mut self,
        session: SessionId,
        seq: u64,
        applied: bool,
        version: &VersionVector,
    ) {
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
            _ => SubmitError::Rejected(OpRejection::RejectedEarlier),
        };
        self.decide(id, q.op, Err(reason));
    }

    /// Report every op of `session` the held copy settles: a committed copy that covers it
    /// gives its outcome; a committed tombstone that does not, fails it. Tell the app when
    /// answered ops wait for the chain holder.
    pub(super) fn settle(&mut self, session: SessionId) {
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
}
