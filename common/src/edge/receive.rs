//! Receiving copies of a session (pushes, op replies, `Committed`, `Removed`): the
//! compare-and-set of the device store (C1, C3, S13).
//!
//! Invariants: a copy is persisted only if it dominates the one held, except that an
//! unconfirmed branch gives way to a concurrent committed copy that covers every outcome this
//! device knows committed, and the chain holder's branch that does not contain the newest
//! version it knows committed (so holds nothing committed) gives way to a concurrent copy that
//! does (its persisting commits that copy); a committed copy is never replaced by a concurrent one (it is
//! offered again instead); a committed tombstone is final; the held sessions are bounded
//! (the oldest tombstones go first).

use super::*;

use crate::app::Application;
use crate::ids::{DeviceId, SessionId};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{ClientMsg, SessionUpdate};

/// What to do with a copy the datacenter sent.
pub(super) enum Decision<S> {
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

impl<A: Application> EdgeCore<A> {
    /// Restore a held session from the device store at start-up.
    pub fn load_session(&mut self, session: SessionId, held: HeldSession<A>) {
        let finished = held.digest.header.tombstone;
        self.held.insert(session, held);
        if finished {
            self.note_tombstone(session);
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

    pub(super) fn remove(&mut self, session: SessionId) {
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

    pub(super) fn wait(&mut self, session: SessionId, reason: WaitReason) {
        if self.waiting.insert(session) {
            self.effects
                .events
                .push(EdgeEvent::Waiting { session, reason });
        }
    }

    pub(super) fn note_committed_mark(&mut self, session: SessionId, seq: u64, bits: u64) {
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
    pub(super) fn creates(&self, session: SessionId, u: &SessionUpdate<A>) -> bool {
        u.digest.header.rider == self.device
            && u.your_last_seq >= 1
            && (self.fresh.contains_key(&session) || self.outbox.contains_key(&(session, 1)))
    }

    /// Persist `u` if the rules allow (see the module docs).
    pub(super) fn receive(&mut self, u: SessionUpdate<A>) {
        let session = u.digest.header.session;
        if u.digest.header.role_of(self.device).is_none() {
            return; // a datacenter never sends a copy to a non-participant
        }
        let theirs = u.digest.header.version.clone();
        match self.judge_copy(session, &u) {
            None => {}
            Some(Decision::Refuse(ours)) => self.refuse(session, ours, theirs),
            Some(Decision::Same {
                newly_committed,
                ack,
                ack_certified,
            }) => self.same_copy(session, theirs, newly_committed, ack, ack_certified),
            Some(Decision::Take {
                next_seq,
                committed,
                replaced,
                marks,
                certified,
            }) => self.take_copy(u, next_seq, committed, replaced, marks, certified),
        }
    }

    /// What to do with `u` against the copy held (`None`: it is older; ignore it).
    pub(super) fn judge_copy(
        &self,
        session: SessionId,
        u: &SessionUpdate<A>,
    ) -> Option<Decision<A::State>> {
        let me = self.device;
        let theirs = &u.digest.header.version;
        Some(match self.held.get(&session) {
            // Nothing held: a first copy. It is committed by this device's own persisting
            // only if it is the creator's copy of a session not yet handed to a provider.
            None => Decision::Take {
                next_seq: self.fresh.get(&session).copied().unwrap_or(1),
                committed: u.committed || self.creates(session, u),
                replaced: None,
                marks: (0, 0),
                certified: self.creates(session, u),
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
                let off_known_chain = !matches!(
                    ours.compare(&h.committed_version),
                    VersionOrder::Newer | VersionOrder::Equal
                );
                match theirs.compare(&ours) {
                    VersionOrder::Older => return None,
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
                    // Our branch does not contain the newest version we know committed, so
                    // it holds nothing committed (committed copies form one chain), and that
                    // version hands the chain to us: we never persisted a successor of it (a
                    // copy of ours that had contained it would contain it still), so our
                    // persisting theirs, which continues it, commits it. Without this the
                    // datacenter waits for us to persist its copy and we refuse it. (Any
                    // other device's branch waits for the datacenter to re-version above it.)
                    VersionOrder::Concurrent
                        if !h.committed && off_known_chain && known_holder_is(h, me) =>
                    {
                        Decision::Take {
                            next_seq: h.next_seq,
                            committed: true,
                            replaced: Some((h.view.clone(), ours)),
                            marks,
                            certified: true,
                        }
                    }
                    VersionOrder::Concurrent => Decision::Refuse(ours),
                }
            }
        })
    }

    /// The same copy as the one held: it may have become committed, and the datacenter may
    /// want to know this device holds it.
    pub(super) fn same_copy(
        &mut self,
        session: SessionId,
        theirs: VersionVector,
        newly_committed: bool,
        ack: bool,
        ack_certified: bool,
    ) {
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
    }

    /// Adopt `u` in place of the copy held (or as the first one), unless it lacks an
    /// outcome this device knows committed.
    pub(super) fn take_copy(
        &mut self,
        u: SessionUpdate<A>,
        next_seq: u64,
        committed: bool,
        replaced: Option<(A::State, VersionVector)>,
        marks: (u64, u64),
        certified: bool,
    ) {
        let session = u.digest.header.session;
        let theirs = u.digest.header.version.clone();
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
    pub(super) fn after_commit(&mut self, session: SessionId) {
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
    pub(super) fn refuse(
        &mut self,
        session: SessionId,
        ours: VersionVector,
        theirs: VersionVector,
    ) {
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
    pub(super) fn make_room(&mut self) {
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
    pub(super) fn note_tombstone(&mut self, session: SessionId) {
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
}

/// Whether the newest version `h` knows committed hands the chain to `me`: it names `me` as
/// the provider, or names none and `me` is the requester.
fn known_holder_is<A: Application>(h: &HeldSession<A>, me: DeviceId) -> bool {
    h.committed_driver.unwrap_or(h.digest.header.rider) == me
}
