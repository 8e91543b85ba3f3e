//! The session table: adding, indexing and changing sessions, and pushing a changed copy to
//! its participants.
//!
//! Invariants: `by_device` lists exactly the active (non-tombstoned) sessions of each
//! participant, and only `insert`, `index` and `unindex` change it; `unsettled_ends` holds,
//! per anchor, the sessions that finished with a copy not yet known committed (bounded,
//! pruned when read); `tombstones` lists
//! exactly the tombstoned sessions, by the seal time of their copy, and only `insert`,
//! `change` and the expiry (`tombstones`) change it; every change of a copy
//! bumps this datacenter's slot of the version vector, reseals it, persists it (an effect
//! the driver carries out before any send of the batch) and pushes it to the connected
//! participants.

use super::*;

use crate::app::Application;
use crate::digest::{DigestBody, DigestHeader, SealError, SealedDigest};
use crate::ids::{DeviceId, SessionId};
use crate::wire::{ChangeFailure, ServerMsg, SessionUpdate};
use std::collections::VecDeque;

impl<A: Application> DatacenterCore<A> {
    /// A digest from this datacenter's own store, at startup. It may be stale (failback):
    /// nothing here is known committed until a device says so, so it commits nothing on its
    /// own (the chain holder's upload or `Ack` does).
    pub fn load_persisted(&mut self, now_ms: u64, sealed: SealedDigest) -> Result<(), SealError> {
        self.clock(now_ms);
        let body: DigestBody<A::State> = sealed.open(&self.keyring)?;
        let header = sealed.header.clone();
        // Ask the devices to confirm it: whoever holds the chain acknowledges it if it is
        // (or a descendant of what it holds), so what waited before the restart is reported.
        let chain = Chain {
            unconfirmed: VecDeque::from([Unconfirmed {
                version: header.version.clone(),
                driver: header.driver,
                dedup: body.dedup.clone(),
            }]),
            ..Chain::default()
        };
        self.insert(header, body, sealed, chain);
        Ok(())
    }

    /// Insert (or replace) a session's copy and keep the indexes.
    pub(super) fn insert(
        &mut self,
        header: DigestHeader,
        body: DigestBody<A::State>,
        sealed: SealedDigest,
        chain: Chain,
    ) {
        let id = header.session;
        let active = !header.tombstone;
        if let Some(old) = self.sessions.get(&id).filter(|o| o.header.tombstone) {
            self.tombstones.remove(&(old.sealed.sealed_at_ms(), id));
        }
        if header.tombstone {
            self.tombstones.insert((sealed.sealed_at_ms(), id));
        }
        let old = self.sessions.insert(
            id,
            Entry {
                header,
                body,
                sealed,
                chain,
                pending: None,
                removed: Vec::new(),
            },
        );
        if let Some(old) = old {
            for d in old.header.participants() {
                self.unindex(d, id);
            }
        }
        if active {
            self.index(id);
        }
    }

    /// Every active session's id, in id order (a round over the table for the shadow
    /// restore and the refresh: sorted, so a seeded run visits the same sessions every time).
    pub(super) fn active_ids_in_order(&self) -> VecDeque<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| !e.header.tombstone)
            .map(|(s, _)| *s)
            .collect();
        ids.sort_unstable();
        ids.into()
    }

    /// Index the participants of an active session, and queue it for dispatch if it needs a
    /// provider.
    pub(super) fn index(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get(&id) else {
            return;
        };
        let participants: Vec<DeviceId> = entry.header.participants().collect();
        let needs = A::needs_assignee(&entry.body.state);
        for d in participants {
            self.index_participant(d, id);
        }
        if needs {
            self.waiting.push_back(id);
        }
    }

    /// `device` takes part in the active session `session` (once).
    pub(super) fn index_participant(&mut self, device: DeviceId, session: SessionId) {
        let list = self.by_device.entry(device).or_default();
        if !list.contains(&session) {
            list.push(session);
        }
    }

    /// The finished sessions `device` anchors whose final copy is still not known committed
    /// (the others are forgotten here).
    pub(super) fn unsettled_ends_of(&mut self, device: DeviceId) -> Vec<SessionId> {
        let Some(ends) = self.unsettled_ends.get_mut(&device) else {
            return Vec::new();
        };
        let sessions = &self.sessions;
        ends.retain(|s| {
            sessions.get(s).is_some_and(|e| {
                e.header.tombstone && !e.committed() && e.header.anchor() == device
            })
        });
        let out: Vec<SessionId> = ends.iter().copied().collect();
        if ends.is_empty() {
            self.unsettled_ends.remove(&device);
        }
        out
    }

    pub(super) fn unindex(&mut self, device: DeviceId, session: SessionId) {
        if let Some(list) = self.by_device.get_mut(&device) {
            list.retain(|s| *s != session);
            if list.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }

    pub(super) fn update_for(entry: &Entry<A>, device: DeviceId) -> SessionUpdate<A> {
        let (your_last_seq, your_applied_bits) = mark_of(&entry.body.dedup, device);
        SessionUpdate {
            digest: entry.sealed.clone(),
            view: entry.body.state.clone(),
            your_last_seq,
            your_applied_bits,
            committed: Self::committed_flag(entry.committed()),
            ack: entry.ack_wanted(),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    pub(super) fn committed_flag(committed: bool) -> bool {
        committed
    }

    #[cfg(feature = "fault-injection")]
    pub(super) fn committed_flag(committed: bool) -> bool {
        crate::fault::distort_committed(committed)
    }

    pub(super) fn push_to(&mut self, session: SessionId, device: DeviceId) {
        if let Some(entry) = self
            .sessions
            .get(&session)
            .filter(|e| e.header.role_of(device).is_some())
        {
            let update = Self::update_for(entry, device);
            self.effects.send.push((device, ServerMsg::Push { update }));
        }
    }

    pub(super) fn push_to_participants(&mut self, session: SessionId, except: Option<DeviceId>) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        for d in entry.header.participants() {
            if Some(d) != except && self.connected.contains_key(&d) {
                let update = Self::update_for(entry, d);
                self.effects.send.push((d, ServerMsg::Push { update }));
            }
        }
    }

    /// Apply a change to a session: bump the version, reseal, persist. `waits`: the change
    /// commits only with the chain holder's `Ack` (another participant's op, a dispatch).
    /// On any error nothing changed.
    pub(super) fn change(
        &mut self,
        session: SessionId,
        waits: bool,
        f: impl FnOnce(&mut DigestHeader, &mut DigestBody<A::State>),
    ) -> Result<(), ChangeFailure> {
        let dc = self.cfg.replica;
        let entry = self
            .sessions
            .get_mut(&session)
            .ok_or(ChangeFailure::NoSuchSession)?;
        let mut header = entry.header.clone();
        let mut body = entry.body.clone();
        f(&mut header, &mut body);
        header.version.bump(dc)?;
        header.tombstone = A::is_finished(&body.state);
        let sealed = SealedDigest::seal(&self.keyring, header.clone(), &body, self.now_ms)?;
        let finished = header.tombstone && !entry.header.tombstone;
        if entry.header.tombstone {
            self.tombstones
                .remove(&(entry.sealed.sealed_at_ms(), session));
        }
        if header.tombstone {
            self.tombstones.insert((sealed.sealed_at_ms(), session));
        }
        entry.header = header;
        entry.body = body;
        entry.sealed = sealed.clone();
        entry.record_unconfirmed(waits);
        self.effects.persist.push((session, sealed));
        if finished {
            let participants: Vec<DeviceId> = entry.header.participants().collect();
            let anchor = entry.header.anchor();
            let settled = entry.committed();
            entry.pending = None;
            for d in participants {
                self.unindex(d, session);
            }
            if !settled {
                let ends = self.unsettled_ends.entry(anchor).or_default();
                if ends.len() >= MAX_UNSETTLED_ENDS {
                    ends.pop_front();
                }
                ends.push_back(session);
            }
            self.effects.events.push(DcEvent::Finished(session));
        }
        Ok(())
    }
}
