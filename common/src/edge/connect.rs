//! A connection's life at the edge: the `Hello` with every held copy, the datacenter's
//! judgement of each (`Welcome`, `Uploaded`), replaying the outbox, and a lost connection.
//!
//! Invariants: every held copy is offered on connect, with whether it is committed and the
//! newest committed version this device knows; at most one re-upload per session is
//! outstanding on a connection; unsent ops go out only while connected.

use super::*;

use crate::app::Application;
use crate::ids::{DatacenterId, SessionId};
use crate::keyring::DeviceToken;
use crate::wire::{ClientMsg, OfferedCopy, UploadOutcome, UploadResult, MAX_DIGESTS_PER_FRAME};

impl<A: Application> EdgeCore<A> {
    /// The copy a device offers of a held session (on connect, on re-upload, and as the
    /// answer to a sample).
    pub fn offered(h: &HeldSession<A>) -> OfferedCopy {
        OfferedCopy {
            digest: h.digest.clone(),
            committed: h.committed,
            known_committed: h.committed_version.clone(),
            known_committed_driver: h.committed_driver,
        }
    }

    /// The frames that open a connection: `Hello` with the first copies, then `Upload`s.
    pub fn hello(&self, token: DeviceToken, available: bool) -> Vec<ClientMsg<A>> {
        let copies: Vec<OfferedCopy> = self.held.values().map(Self::offered).collect();
        let mut chunks: Vec<Vec<OfferedCopy>> = copies
            .chunks(MAX_DIGESTS_PER_FRAME)
            .map(|c| c.to_vec())
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, digests)| {
                let more = i + 1 < n;
                if i == 0 {
                    ClientMsg::Hello {
                        device: self.device,
                        token,
                        available,
                        digests,
                        more,
                    }
                } else {
                    ClientMsg::Upload { digests, more }
                }
            })
            .collect()
    }

    /// The datacenter processed the upload: replay the outbox in order.
    pub fn on_welcome(&mut self, dc: DatacenterId, results: Vec<UploadResult>) {
        self.connected = Some(dc);
        self.next_retry_ms = Some(self.now_ms.saturating_add(self.retry_interval_ms));
        for r in results {
            self.on_upload_result(r);
        }
        self.send_unsent();
    }

    /// A datacenter samples a session (shadow restore): answer, after a flush, with what the
    /// store holds, read back by the driver (not this core's memory: the point is to catch a
    /// store that stopped persisting). Bounded per batch; changes nothing here.
    pub(super) fn on_sample(&mut self, session: SessionId) {
        if self.effects.samples.len() < MAX_SAMPLES_PER_BATCH {
            self.effects.flush = true;
            self.effects.samples.push(session);
        }
    }

    /// The answer to a [`ClientMsg::Reupload`].
    pub fn on_uploaded(&mut self, result: UploadResult) {
        // `reuploading` keeps the session until the connection ends: at most one re-upload
        // per session and connection (a datacenter that keeps disagreeing is not asked again
        // and again; the next connection tries once more).
        self.on_upload_result(result);
        self.send_unsent();
    }

    pub(super) fn on_upload_result(&mut self, r: UploadResult) {
        match r.outcome {
            UploadOutcome::Refused(reason) => self.effects.events.push(EdgeEvent::UploadRefused {
                session: r.session,
                reason,
            }),
            UploadOutcome::Removed => self.on_removed(r.session),
            // Our copy beside the datacenter's: if ours is committed (we may have just been
            // told so), offer it again so the chain wins there; else wait.
            UploadOutcome::Diverged if self.held.get(&r.session).is_some_and(|h| h.committed) => {
                self.reupload(r.session)
            }
            UploadOutcome::Diverged => self.wait(r.session, WaitReason::BranchNotConfirmed),
            UploadOutcome::Restored
            | UploadOutcome::Current
            | UploadOutcome::Stale
            | UploadOutcome::Tombstoned => {}
        }
    }

    /// Resend every op that is neither in flight nor answered on the current connection
    /// (after a retryable rejection, call this on a timer).
    pub fn send_unsent(&mut self) {
        if self.connected.is_none() {
            return;
        }
        for ((session, seq), q) in self.outbox.iter_mut() {
            if !q.in_flight && q.answered.is_none() {
                q.in_flight = true;
                self.effects.send.push(q.message(*session, *seq));
            }
        }
    }

    /// Whether some op waits for a retry.
    pub fn has_unsent(&self) -> bool {
        self.outbox
            .values()
            .any(|q| !q.in_flight && q.answered.is_none())
    }

    /// The connection ended: ops in flight or answered are marked to be sent again wherever
    /// the device connects next (answered from the dedup watermark if they were applied).
    pub fn on_disconnect(&mut self) {
        self.connected = None;
        self.next_retry_ms = None;
        self.reuploading.clear();
        for q in self.outbox.values_mut() {
            // An answered op may still be on a branch nobody confirmed: ask again wherever
            // the device connects (answered from the dedup state if it was applied there).
            q.maybe_applied |= q.in_flight || q.answered.is_some();
            q.in_flight = false;
            q.answered = None;
        }
    }

    pub(super) fn reupload(&mut self, session: SessionId) {
        if self.connected.is_none() || self.reuploading.contains(&session) {
            return;
        }
        if let Some(h) = self.held.get(&session).filter(|h| h.committed) {
            self.effects.send.push(ClientMsg::Reupload {
                copy: Self::offered(h),
            });
            self.reuploading.insert(session);
        }
    }
}
