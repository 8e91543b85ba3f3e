//! A device connects (its connect upload) or re-uploads one copy; what it is told back.
//!
//! Invariants: every presented copy gets exactly one [`UploadResult`] in the `Welcome`; a
//! participant that presents nothing of a session it takes part in is sent the copy and
//! what is committed of it; a provider removed from a session is told so and never
//! dispatched to it again.

use super::*;

use crate::app::Application;
use crate::ids::{DeviceId, SessionId};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{OfferedCopy, ServerMsg, UploadOutcome, UploadResult};
use std::collections::HashSet;

impl<A: Application> DatacenterCore<A> {
    /// A device connected and uploaded every copy it holds (its `Hello` and any `Upload`
    /// frames). Answers `Welcome` and pushes whatever the device is missing or has stale.
    pub fn handle_connect(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        available: bool,
        copies: Vec<OfferedCopy>,
    ) {
        self.clock(now_ms);
        self.connected.insert(device, Conn { available });
        let mut results = Vec::with_capacity(copies.len());
        let mut presented = HashSet::new();
        for copy in copies {
            let session = copy.digest.header.session;
            presented.insert(session);
            let outcome = self.upload_one(device, copy);
            results.push(UploadResult { session, outcome });
        }
        self.effects.send.push((
            device,
            ServerMsg::Welcome {
                dc: self.cfg.dc,
                results,
            },
        ));
        // Sessions the device takes part in but did not present (a reinstalled app): re-sync.
        let empty_store = presented.is_empty();
        let mine: Vec<SessionId> = self.by_device.get(&device).cloned().unwrap_or_default();
        for session in mine {
            if !presented.contains(&session) {
                if empty_store {
                    self.reanchor(session, device);
                }
                self.push_to(session, device);
                // It knows nothing of the session: also what is committed of it (a provider
                // assigned on the chain while it was away learns the hand-over only so).
                self.tell_committed(session, device, &VersionVector::new());
            }
        }
        // Finished sessions whose final copy only this device's persisting can commit (it
        // anchors them) and that it did not present: it missed that copy (or the news of the
        // hand-over that made it the anchor), and the participant whose op finished the
        // session waits for it.
        for session in self.unsettled_ends_of(device) {
            if !presented.contains(&session) {
                self.push_to(session, device);
                self.tell_committed(session, device, &VersionVector::new());
            }
        }
        if available {
            self.offer_driver(device);
        }
        self.dispatch(now_ms);
    }

    /// The anchor of a session came back with an empty store (it presented no copy at all:
    /// a reinstalled app; a device that merely dropped an old tombstone presents the others). The fence lived in that store and is gone: the session continues from this
    /// datacenter's copy, which the anchor now holds as committed. Only when nothing of the
    /// copy is known committed here (else the copy is already committed for the anchor, or
    /// a hand-over still waits for the rider, whose store fences it). Counted as
    /// `reanchored`; docs/PROTOCOL.md says what it risks.
    pub(super) fn reanchor(&mut self, session: SessionId, device: DeviceId) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        // A hand-over made here that still waits for the rider stays fenced by the rider's
        // store: not re-anchored.
        let handover_waits = entry.chain.confirmed.is_some() && !entry.anchor_known();
        if entry.header.tombstone || entry.header.anchor() != device || handover_waits {
            return;
        }
        entry.chain.confirmed = Some((entry.header.version.clone(), entry.header.driver));
        entry.chain.confirmed_marks = entry.body.dedup.clone();
        entry.chain.unconfirmed.clear();
        self.stats.reanchored += 1;
        self.effects
            .events
            .push(DcEvent::Reanchored { session, device });
    }

    /// A device offers its held copy again (it refused one of ours).
    pub fn handle_reupload(&mut self, now_ms: u64, device: DeviceId, copy: OfferedCopy) {
        self.clock(now_ms);
        let session = copy.digest.header.session;
        let outcome = self.upload_one(device, copy);
        self.effects.send.push((
            device,
            ServerMsg::Uploaded {
                result: UploadResult { session, outcome },
            },
        ));
        self.dispatch(now_ms);
    }

    pub(super) fn upload_one(&mut self, device: DeviceId, copy: OfferedCopy) -> UploadOutcome {
        let OfferedCopy {
            digest: sealed,
            committed,
            known_committed,
            known_committed_driver,
        } = copy;
        let session = sealed.header.session;
        let outcome = self.judge_upload(device, sealed, committed);
        if matches!(outcome, UploadOutcome::Refused(_)) || known_committed.validate().is_err() {
            return outcome;
        }
        if !known_committed.is_empty() && !self.learn_committed(session, &known_committed, device) {
            self.learn_ancestor(session, &known_committed, known_committed_driver);
        }
        self.tell_committed(session, device, &known_committed);
        outcome
    }

    /// A participant reports in not knowing the newest copy this datacenter knows is
    /// committed (it was away when it was confirmed): tell it (a provider learns the
    /// hand-over that way, which nobody else can tell it).
    pub(super) fn tell_committed(
        &mut self,
        session: SessionId,
        device: DeviceId,
        known: &VersionVector,
    ) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        if entry.header.role_of(device).is_none() {
            return;
        }
        let Some((version, driver)) = entry.chain.confirmed.clone() else {
            return;
        };
        if version.compare(known) != VersionOrder::Newer {
            return;
        }
        let (your_last_seq, your_applied_bits) = mark_of(&entry.chain.confirmed_marks, device);
        self.effects.send.push((
            device,
            ServerMsg::Committed {
                session,
                version,
                driver,
                your_last_seq,
                your_applied_bits,
            },
        ));
    }

    /// Whether `device`, which uploaded a copy of `version` naming it, is no longer a
    /// participant of the session on the committed chain: our copy does not name it, and
    /// what we know committed of our line names another provider, is finished, or is past
    /// the device's copy.
    pub(super) fn removed(
        &self,
        entry: &Entry<A>,
        device: DeviceId,
        version: &VersionVector,
    ) -> bool {
        if entry.header.role_of(device).is_some() {
            return false;
        }
        match &entry.chain.confirmed {
            None => false,
            Some((vc, driver)) => {
                driver.is_some_and(|d| d != device)
                    || entry.header.tombstone
                    || matches!(
                        vc.compare(version),
                        VersionOrder::Newer | VersionOrder::Equal
                    )
            }
        }
    }

    pub(super) fn tell_removed(&mut self, session: SessionId, device: DeviceId) -> UploadOutcome {
        if let Some(e) = self.sessions.get_mut(&session) {
            if !e.removed.contains(&device) && e.removed.len() < MAX_REMOVED_PER_SESSION {
                e.removed.push(device);
            }
        }
        self.stats.removed += 1;
        self.effects
            .events
            .push(DcEvent::Removed { session, device });
        UploadOutcome::Removed
    }
}
