//! Judging an uploaded digest against this datacenter's copy (restore, C3/C4).
//!
//! Invariants: nothing in a digest is trusted before it opens with a region key and names
//! the uploader as a participant (else [`UploadOutcome::Refused`], nothing changed); a newer
//! copy is adopted, an older one answered with ours, an equal one confirmed if the device
//! says it is committed; a concurrent copy replaces ours only if it is committed (the chain
//! wins); a tombstone known committed is never revived (S10); a session not held is restored
//! only from a copy sealed after the restore floor (`tombstones`: an expired tombstone's
//! session stays finished).

use super::*;

use crate::app::Application;
use crate::digest::{DigestBody, SealedDigest};
use crate::ids::{DeviceId, SessionId};
use crate::limits::{LimitExceeded, LimitKind};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{UploadOutcome, UploadRefusal};

impl<A: Application> DatacenterCore<A> {
    /// A participant knows `version` (naming `driver`) is committed and our copy descends
    /// from it (dominates it: a committed copy's content is in every copy dominating it).
    /// We did not record it (a restart, or it was confirmed elsewhere), so only what it
    /// says about the chain is kept: the line up to it is committed, and who holds the
    /// chain after it. Nobody else is told (we hold no watermarks of it).
    pub(super) fn learn_ancestor(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        driver: Option<DeviceId>,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if !matches!(
            entry.header.version.compare(version),
            VersionOrder::Newer | VersionOrder::Equal
        ) {
            return;
        }
        let newer = match &entry.chain.confirmed {
            None => true,
            Some((v, _)) => version.compare(v) == VersionOrder::Newer,
        };
        if newer {
            entry.chain.confirmed = Some((version.clone(), driver));
            entry.chain.confirmed_marks = Vec::new();
            // A provider connected here may be the one waiting to learn it holds the chain.
            let others: Vec<DeviceId> = entry
                .header
                .participants()
                .filter(|d| self.connected.contains_key(d))
                .collect();
            for d in others {
                self.tell_committed(session, d, &VersionVector::new());
            }
        }
    }

    pub(super) fn judge_upload(
        &mut self,
        device: DeviceId,
        sealed: SealedDigest,
        committed: bool,
    ) -> UploadOutcome {
        let session = sealed.header.session;
        // Authenticate before trusting anything in the header.
        let body: DigestBody<A::State> = match sealed.open(&self.keyring) {
            Ok(b) => b,
            Err(e) => return self.refuse_upload(session, device, e.into()),
        };
        if sealed.header.role_of(device).is_none() {
            return self.refuse_upload(session, device, UploadRefusal::NotParticipant);
        }
        let Some(entry) = self.sessions.get(&session) else {
            return self.restore_unknown(device, sealed, body, committed);
        };
        let order = sealed.header.version.compare(&entry.header.version);
        #[cfg(feature = "fault-injection")]
        let order = crate::fault::distort_order(order);
        match order {
            // Equal versions with different contents mean a slot was reused (a datacenter
            // that sent a copy and lost it before its disk had it: a crash between the two,
            // a store cut short by damage). Never trust the label alone: it is two branches,
            // and a committed one wins as any concurrent one does.
            VersionOrder::Equal
                if committed && (sealed.header != entry.header || body != entry.body) =>
            {
                self.adopt_committed(session, device, sealed, body)
            }
            VersionOrder::Equal if sealed.header != entry.header || body != entry.body => {
                self.stats.uploads_diverged += 1;
                self.effects.events.push(DcEvent::Diverged {
                    session,
                    from: device,
                });
                UploadOutcome::Diverged
            }
            VersionOrder::Equal => {
                if committed {
                    let header = sealed.header;
                    self.confirm(session, &header.version, header.driver, body.dedup, device);
                }
                UploadOutcome::Current
            }
            VersionOrder::Older => self.upload_older(session, device, sealed, body, committed),
            // A tombstone known committed is final, whatever a device claims (C3).
            VersionOrder::Newer
                if entry.header.tombstone
                    && !sealed.header.tombstone
                    && entry
                        .chain
                        .confirmed
                        .as_ref()
                        .is_some_and(|(v, _)| *v == entry.header.version) =>
            {
                self.push_to(session, device);
                UploadOutcome::Tombstoned
            }
            VersionOrder::Newer => self.adopt_newer(session, device, sealed, body, committed),
            VersionOrder::Concurrent if !committed => {
                // Nothing tells which branch is the chain: change nothing, wait for the chain
                // holder (or a copy known committed).
                if self.removed(entry, device, &sealed.header.version) {
                    return self.tell_removed(session, device);
                }
                self.stats.uploads_diverged += 1;
                self.effects.events.push(DcEvent::Diverged {
                    session,
                    from: device,
                });
                self.ask_chain_holder(session, device, &sealed.header.version);
                UploadOutcome::Diverged
            }
            VersionOrder::Concurrent => self.adopt_committed(session, device, sealed, body),
        }
    }

    /// Count and report a refused upload (nothing changed).
    pub(super) fn refuse_upload(
        &mut self,
        session: SessionId,
        device: DeviceId,
        reason: UploadRefusal,
    ) -> UploadOutcome {
        self.stats.uploads_refused += 1;
        self.effects.events.push(DcEvent::UploadRefused {
            session,
            from: device,
            reason: reason.clone(),
        });
        UploadOutcome::Refused(reason)
    }

    /// An authenticated upload of a session this datacenter does not hold: restore it
    /// (within `max_sessions`), committed if the device says so, else waiting for the chain
    /// holder.
    pub(super) fn restore_unknown(
        &mut self,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
        committed: bool,
    ) -> UploadOutcome {
        let session = sealed.header.session;
        if let Some(refused) = self.refuse_below_floor(device, &sealed) {
            return refused;
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            self.stats.limited_sessions += 1;
            let limit = LimitExceeded::new(LimitKind::Sessions, self.cfg.max_sessions);
            return self.refuse_upload(session, device, UploadRefusal::Limit(limit));
        }
        let header = sealed.header.clone();
        let mut chain = Chain::default();
        if committed {
            chain.confirmed = Some((header.version.clone(), header.driver));
            chain.confirmed_marks = body.dedup.clone();
        } else {
            // Ask the chain holder to persist it when it comes: until then nothing on
            // this copy is known committed here.
            chain.unconfirmed.push_back(Unconfirmed {
                version: header.version.clone(),
                driver: header.driver,
                dedup: body.dedup.clone(),
            });
        }
        self.effects.persist.push((session, sealed.clone()));
        self.insert(header, body, sealed, chain);
        self.restored(session, device)
    }

    /// An upload older than our copy (ours descends from it). If the device knows it is
    /// committed, so is the line of ours up to it.
    pub(super) fn upload_older(
        &mut self,
        session: SessionId,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
        committed: bool,
    ) -> UploadOutcome {
        let Some(entry) = self.sessions.get(&session) else {
            return UploadOutcome::Current;
        };
        let tombstone = entry.header.tombstone;
        if self.removed(entry, device, &sealed.header.version) {
            return self.tell_removed(session, device);
        }
        if committed {
            let header = sealed.header;
            self.confirm(session, &header.version, header.driver, body.dedup, device);
        }
        self.stats.uploads_stale += 1;
        self.push_to(session, device);
        if tombstone {
            UploadOutcome::Tombstoned
        } else {
            UploadOutcome::Stale
        }
    }

    /// An upload newer than our copy (it descends from ours): adopt it. What we knew
    /// committed stays committed.
    pub(super) fn adopt_newer(
        &mut self,
        session: SessionId,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
        committed: bool,
    ) -> UploadOutcome {
        let mut chain = match self.sessions.get_mut(&session) {
            Some(e) => std::mem::take(&mut e.chain),
            None => Chain::default(),
        };
        if committed {
            chain.confirmed = Some((sealed.header.version.clone(), sealed.header.driver));
            chain.confirmed_marks = body.dedup.clone();
            chain.unconfirmed.clear();
        } else {
            chain.unconfirmed.push_back(Unconfirmed {
                version: sealed.header.version.clone(),
                driver: sealed.header.driver,
                dedup: body.dedup.clone(),
            });
            if chain.unconfirmed.len() > MAX_UNCONFIRMED_COPIES {
                chain.unconfirmed.pop_front();
            }
        }
        self.replace(session, device, sealed, body, chain);
        self.restored(session, device)
    }

    /// A copy from `device` was adopted: count it, report it, and push it to the other
    /// participants connected here (a partner may not hold it: a reinstalled app that came
    /// first with an empty store), rather than at the next change.
    fn restored(&mut self, session: SessionId, device: DeviceId) -> UploadOutcome {
        self.stats.sessions_restored += 1;
        self.effects.events.push(DcEvent::Restored {
            session,
            from: device,
        });
        self.push_to_participants(session, Some(device));
        UploadOutcome::Restored
    }
}
