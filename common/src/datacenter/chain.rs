//! The chain rule (C1, S13): what makes a copy committed, and what happens to branches.
//!
//! Invariants: a copy is confirmed only by its chain holder's certified `Ack`, a committed
//! upload of that exact copy, or the create; confirming a copy confirms its line up to it;
//! a committed concurrent copy replaces our branch (re-versioned above both) and a
//! participant it no longer names is told it was removed; two datacenters can never both
//! confirm concurrent copies, because the chain holder persists at most one successor.

use super::*;

use crate::app::Application;
use crate::dedup::DedupEntry;
use crate::digest::{DigestBody, SealedDigest};
use crate::ids::{DeviceId, SessionId};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{ServerMsg, UploadOutcome};
use std::collections::VecDeque;

impl<A: Application> DatacenterCore<A> {
    /// `by` (a participant) knows `version` is committed: if it is a copy of our line (the
    /// current one, or one still waiting), it is confirmed. Whether it was.
    pub(super) fn learn_committed(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        by: DeviceId,
    ) -> bool {
        let Some(entry) = self.sessions.get(&session) else {
            return false;
        };
        if entry.header.role_of(by).is_none() {
            return false;
        }
        let known = if entry.header.version == *version {
            Some((entry.header.driver, entry.body.dedup.clone()))
        } else {
            entry
                .chain
                .unconfirmed
                .iter()
                .find(|u| u.version == *version)
                .map(|u| (u.driver, u.dedup.clone()))
        };
        match known {
            Some((driver, dedup)) => {
                self.confirm(session, version, driver, dedup, by);
                true
            }
            None => false,
        }
    }

    /// A participant holds a branch concurrent with ours that nobody confirmed: ask the
    /// chain holder to persist our copy (if it can, ours is the chain and the participant
    /// gets it as committed; if it cannot, its own upload settles it).
    pub(super) fn ask_chain_holder(
        &mut self,
        session: SessionId,
        from: DeviceId,
        branch: &VersionVector,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let absorb = match &entry.chain.absorb {
            None => Ok(branch.clone()),
            Some(a) => a.join(branch),
        };
        // A vector that cannot grow any more is simply not absorbed: its holder then gives
        // way sideways to the committed copy (the edge's rule), which loses nothing.
        if let Ok(a) = absorb {
            entry.chain.absorb = Some(a);
        }
        if !entry.chain.absorb_from.contains(&from)
            && entry.chain.absorb_from.len() < MAX_REMOVED_PER_SESSION
        {
            entry.chain.absorb_from.push(from);
        }
        let current = entry.header.version.clone();
        if !entry.chain.unconfirmed.iter().any(|u| u.version == current) {
            entry.record_unconfirmed(true);
        }
        // Our copy may be known committed already: then there is nobody to wait for.
        if self.absorb_branches(session) {
            return;
        }
        // Whoever holds the chain persists it and acknowledges (or refuses it, if the chain
        // went on elsewhere); the others ignore the request.
        self.push_to_participants(session, Some(from));
    }

    /// Once our current copy is known committed, re-version it above the branches
    /// participants uploaded beside it (they hold nothing committed), so those participants
    /// move forward to it, and ask the chain holder to persist that too. Whether it did.
    pub(super) fn absorb_branches(&mut self, session: SessionId) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return false;
        };
        let confirmed_now = entry
            .chain
            .confirmed
            .as_ref()
            .is_some_and(|(v, _)| *v == entry.header.version);
        if !confirmed_now {
            return false;
        }
        let Some(branch) = entry.chain.absorb.take() else {
            return false;
        };
        let uploaders = std::mem::take(&mut entry.chain.absorb_from);
        let Ok(joined) = entry.header.version.join(&branch) else {
            return false;
        };
        if self
            .change(session, true, |h, _| h.version = joined)
            .is_err()
        {
            return false;
        }
        self.stats.branches_absorbed += 1;
        self.push_to_participants(session, None);
        // An uploader of an absorbed branch that our copy does not name holds a copy off the
        // chain (a hand-over its requester never persisted): it is removed, so its ops end
        // instead of waiting for a chain that went on without it.
        for d in uploaders {
            let named = self
                .sessions
                .get(&session)
                .is_some_and(|e| e.header.role_of(d).is_some());
            if named {
                continue;
            }
            self.tell_removed(session, d);
            if self.connected.contains_key(&d) {
                self.effects.send.push((d, ServerMsg::Removed { session }));
            }
        }
        true
    }

    /// Replace a session's copy with an upload; participants the new copy no longer names
    /// are told they were removed.
    pub(super) fn replace(
        &mut self,
        session: SessionId,
        from: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
        chain: Chain,
    ) {
        let (old, mut removed): (Vec<DeviceId>, Vec<DeviceId>) = self
            .sessions
            .get(&session)
            .map(|e| (e.header.participants().collect(), e.removed.clone()))
            .unwrap_or_default();
        let header = sealed.header.clone();
        self.effects.persist.push((session, sealed.clone()));
        self.insert(header.clone(), body, sealed, chain);
        for d in &old {
            if header.role_of(*d).is_none() && !removed.contains(d) {
                removed.push(*d);
            }
        }
        removed.truncate(MAX_REMOVED_PER_SESSION);
        if let Some(e) = self.sessions.get_mut(&session) {
            e.removed = removed;
        }
        for d in old {
            if header.role_of(d).is_none() && d != from {
                self.stats.removed += 1;
                self.effects
                    .events
                    .push(DcEvent::Removed { session, device: d });
                if self.connected.contains_key(&d) {
                    self.effects.send.push((d, ServerMsg::Removed { session }));
                }
            }
        }
    }

    /// A copy the device says is committed, concurrent with ours: our branch since the two
    /// parted holds only changes nobody was told are committed (a committed change is on the
    /// one chain, and the chain is ordered). Keep the committed copy with a version above
    /// both, so every device adopts it. If ours is also known committed past the parting,
    /// the rule was broken somewhere: change nothing and report it.
    pub(super) fn adopt_committed(
        &mut self,
        session: SessionId,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
    ) -> UploadOutcome {
        let Some(entry) = self.sessions.get(&session) else {
            return UploadOutcome::Diverged;
        };
        let ours_committed_past = entry.chain.confirmed.as_ref().is_some_and(|(vc, _)| {
            !matches!(
                vc.compare(&sealed.header.version),
                VersionOrder::Older | VersionOrder::Equal
            )
        });
        // The kept copy must be re-versioned above both; if the vector cannot grow, nothing
        // changes rather than a copy moving sideways here.
        let replica = self.cfg.replica;
        let joined = entry
            .header
            .version
            .join(&sealed.header.version)
            .ok()
            .filter(|j| {
                let mut bumped = j.clone();
                bumped.bump(replica).is_ok()
            });
        let Some(joined) = joined.filter(|_| !ours_committed_past) else {
            self.stats.chain_conflicts += 1;
            self.effects.events.push(DcEvent::ChainConflict {
                session,
                from: device,
            });
            return UploadOutcome::Diverged;
        };
        let chain = Chain {
            confirmed: Some((sealed.header.version.clone(), sealed.header.driver)),
            confirmed_marks: body.dedup.clone(),
            unconfirmed: VecDeque::new(),
            absorb: None,
            absorb_from: Vec::new(),
        };
        self.replace(session, device, sealed, body, chain);
        if self
            .change(session, false, |h, _| h.version = joined)
            .is_err()
        {
            // The upload is kept as it came; devices that hold our branch wait for the
            // chain holder.
            return UploadOutcome::Restored;
        }
        // The kept copy's content is committed, its new version not yet: ask the chain
        // holder to persist it, so the others can be told it is.
        if let Some(e) = self.sessions.get_mut(&session) {
            e.record_unconfirmed(true);
        }
        self.stats.chain_adopted += 1;
        self.effects.events.push(DcEvent::ChainAdopted {
            session,
            from: device,
        });
        // Everyone connected gets the kept copy, the uploader included, and what of it is
        // committed: a provider the committed copy names that never held it (it was away
        // when the hand-over was made elsewhere) learns only so that it holds the chain, and
        // without it nobody could ever confirm the kept copy.
        self.push_to_participants(session, None);
        let others: Vec<DeviceId> = self
            .sessions
            .get(&session)
            .map(|e| e.header.participants().collect())
            .unwrap_or_default();
        for d in others {
            if d != device && self.connected.contains_key(&d) {
                self.tell_committed(session, d, &VersionVector::new());
            }
        }
        UploadOutcome::Restored
    }

    /// The chain holder (or a device that knows) says `version` of this line is committed,
    /// with every participant's watermark `dedup` in it. Tell the other participants what
    /// they may now report, and when a hand-over completed, give the provider the copy it
    /// now commits on.
    pub(super) fn confirm(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        driver: Option<DeviceId>,
        dedup: Vec<DedupEntry>,
        by: DeviceId,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let newer = match &entry.chain.confirmed {
            None => true,
            Some((v, _)) => version.compare(v) == VersionOrder::Newer,
        };
        if !newer {
            // Already known; branches that waited for it can be absorbed now.
            self.absorb_branches(session);
            return;
        }
        let was_handed_over = entry.anchor_known();
        entry.chain.confirmed = Some((version.clone(), driver));
        entry.chain.confirmed_marks = dedup.clone();
        if let Some(i) = entry
            .chain
            .unconfirmed
            .iter()
            .position(|u| u.version == *version)
        {
            entry.chain.unconfirmed.drain(..=i);
        }
        if entry.header.version == *version {
            entry.chain.unconfirmed.clear();
        }
        let handed_over_now = !was_handed_over && entry.anchor_known();
        let participants: Vec<DeviceId> = entry.header.participants().collect();
        let provider = entry.header.driver;
        self.stats.confirmations += 1;
        self.effects.events.push(DcEvent::Confirmed {
            session,
            version: version.clone(),
        });
        let current = self
            .sessions
            .get(&session)
            .is_some_and(|e| e.header.version == *version);
        // Branches waiting to be absorbed are re-versioned after the others are told what
        // is committed now (a provider must learn it holds the chain before the re-versioned
        // copy asks it to persist it, or nobody could confirm that copy).
        let absorb_next = current
            && self
                .sessions
                .get(&session)
                .is_some_and(|e| e.chain.absorb.is_some());
        for d in participants {
            if d == by || !self.connected.contains_key(&d) {
                continue;
            }
            if current && !absorb_next {
                // The copy itself is now committed for everyone: a device holding a branch
                // nobody confirmed can give way to it.
                self.push_to(session, d);
                continue;
            }
            let (your_last_seq, your_applied_bits) = mark_of(&dedup, d);
            self.effects.send.push((
                d,
                ServerMsg::Committed {
                    session,
                    version: version.clone(),
                    driver,
                    your_last_seq,
                    your_applied_bits,
                },
            ));
        }
        if handed_over_now && !current {
            if let Some(p) = provider.filter(|p| *p != by && self.connected.contains_key(p)) {
                self.push_to(session, p);
            }
        }
        if absorb_next {
            self.absorb_branches(session);
        }
    }

    /// A device persisted `version` of a session (it was asked to: `SessionUpdate::ack`).
    /// Any participant's counts for edge-ack durability; one `certified` (the device's own
    /// persisting committed it: it holds the chain), for a copy of this line, commits the
    /// line up to it.
    pub fn handle_ack(
        &mut self,
        device: DeviceId,
        session: SessionId,
        version: VersionVector,
        certified: bool,
    ) {
        // A vector from the wire is untrusted: a malformed one could compare as anything.
        if version.validate().is_err() {
            return;
        }
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if entry.header.role_of(device).is_none() {
            return;
        }
        // The datacenter's own report of a dispatch (edge-ack durability).
        if let (Durability::EdgeAck(k), Some(p)) = (self.cfg.durability, entry.pending.as_mut()) {
            if version.covers(&p.version) && !p.acks.contains(&device) {
                p.acks.push(device);
            }
            if p.acks.len() >= usize::from(k) {
                let version = p.version.clone();
                entry.pending = None;
                self.stats.server_changes_committed += 1;
                self.effects
                    .events
                    .push(DcEvent::ServerChangeCommitted { session, version });
            }
        }
        if !certified {
            return;
        }
        // Only a copy of this line counts: one recorded as waiting, or the current one.
        let _ = self.learn_committed(session, &version, device);
    }
}
