//! One session as this datacenter holds it ([`Entry`]): its digest (header, opened body,
//! sealed bytes) and where the copy stands on the session's chain ([`Chain`]).
//!
//! Invariants: `sealed` is always the sealing of `header` and `body`; `chain.confirmed`, when
//! set, is a copy of this line (equal to or dominated by `header.version`); at most
//! [`MAX_UNCONFIRMED_COPIES`] copies wait for the chain holder, oldest first.

use super::*;

use crate::app::Application;
use crate::dedup::DedupEntry;
use crate::digest::{DigestBody, DigestHeader, SealedDigest};
use crate::ids::DeviceId;
use crate::version::VersionVector;
use std::collections::VecDeque;

/// A dispatch waiting for its edge-ack quorum (the datacenter's own report only).
pub(super) struct Pending {
    pub(super) version: VersionVector,
    pub(super) acks: Vec<DeviceId>,
}

/// Where this datacenter's copy of a session stands on the session's chain.
#[derive(Default)]
pub(super) struct Chain {
    /// The newest copy of this copy's line known to be committed here (the chain holder's
    /// `Ack`, a committed upload, the create), with the provider it names. `None`: not known
    /// (a copy restored from an uncommitted upload, or loaded from this datacenter's disk).
    pub(super) confirmed: Option<(VersionVector, Option<DeviceId>)>,
    /// Copies made here since the first change that waits for the chain holder, oldest
    /// first, with every participant's watermark in it (an `Ack` names one of them). Empty:
    /// nothing waits.
    pub(super) unconfirmed: VecDeque<Unconfirmed>,
    /// Versions of concurrent branches participants uploaded that nobody confirmed (joined).
    /// Once the chain holder confirms our copy they are off the chain, and our copy is
    /// re-versioned above them, so those participants move forward to it, never sideways.
    pub(super) absorb: Option<VersionVector>,
    /// The devices that uploaded those branches (at most [`MAX_REMOVED_PER_SESSION`]). When
    /// the branches are absorbed, one our copy no longer names is told it was removed: it
    /// holds a branch off the chain and would otherwise wait for it forever.
    pub(super) absorb_from: Vec<DeviceId>,
    /// Every participant's watermark in the `confirmed` copy (told to a participant that
    /// reports in without knowing it).
    pub(super) confirmed_marks: Vec<DedupEntry>,
}

/// A copy made (or restored) here that waits for the chain holder's `Ack`.
pub(super) struct Unconfirmed {
    pub(super) version: VersionVector,
    pub(super) driver: Option<DeviceId>,
    pub(super) dedup: Vec<DedupEntry>,
}

pub(super) struct Entry<A: Application> {
    pub(super) header: DigestHeader,
    pub(super) body: DigestBody<A::State>,
    pub(super) sealed: SealedDigest,
    pub(super) chain: Chain,
    pub(super) pending: Option<Pending>,
    /// Providers removed from this session (bounded): never dispatched to it again.
    pub(super) removed: Vec<DeviceId>,
}

impl<A: Application> Entry<A> {
    /// Whether this datacenter knows the chain is held by this copy's anchor: a committed
    /// copy of this line names the same provider (for a session without one, the rider).
    /// Before that, an op of the anchor may still need the rider's persist (a hand-over not
    /// known to be done) and is recorded as waiting.
    pub(super) fn anchor_known(&self) -> bool {
        match &self.chain.confirmed {
            Some((_, driver)) => *driver == self.header.driver,
            None => false,
        }
    }

    /// Whether this copy is known committed: a device persisted exactly it on its own
    /// authority (the chain holder's `Ack`), or said so on upload. The same for every
    /// receiver: the chain holder does not need the datacenter's word (its own persisting
    /// commits, `EdgeCore`'s rule), and nobody else may take less.
    pub(super) fn committed(&self) -> bool {
        self.chain
            .confirmed
            .as_ref()
            .is_some_and(|(v, _)| *v == self.header.version)
    }

    /// Whether receivers should acknowledge persisting this copy (something waits for the
    /// chain holder; only a device whose persisting commits answers).
    pub(super) fn ack_wanted(&self) -> bool {
        !self.chain.unconfirmed.is_empty() || self.pending.is_some()
    }

    /// Record the current copy as one waiting for the chain holder (when something waits).
    pub(super) fn record_unconfirmed(&mut self, waits: bool) {
        if !waits && self.chain.unconfirmed.is_empty() {
            return;
        }
        if self.chain.unconfirmed.len() >= MAX_UNCONFIRMED_COPIES {
            self.chain.unconfirmed.pop_front();
        }
        self.chain.unconfirmed.push_back(Unconfirmed {
            version: self.header.version.clone(),
            driver: self.header.driver,
            dedup: self.body.dedup.clone(),
        });
    }
}

pub(super) struct Conn {
    pub(super) available: bool,
}

pub(super) fn mark_of(dedup: &[DedupEntry], device: DeviceId) -> (u64, u64) {
    dedup
        .iter()
        .find(|d| d.device == device)
        .map(|d| (d.last_seq, d.applied_bits))
        .unwrap_or((0, 0))
}
