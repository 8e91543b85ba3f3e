//! Bounded tombstones (C3, C6): a finished session's tombstone is kept for
//! `tombstone_ttl_ms`, or fewer while more than `max_tombstones` are held; an expired
//! tombstone's session can still never come back, because no copy old enough to predate it is
//! restored any more.
//!
//! The rule, with `ttl = tombstone_ttl_ms` and `skew = MAX_CLOCK_SKEW_MS` (how far apart two
//! datacenters' clocks may be), seal times as the digests carry them (second resolution):
//! - **Restore floor.** A copy of a session this datacenter does not hold is refused
//!   ([`UploadRefusal::SealedTooLongAgo`], nothing changed, the device keeps it) when it was
//!   sealed `ttl` or more before now, or before `restore_floor_ms`.
//! - **Expiry by age.** A tombstone is dropped once `ttl + skew + 1 s` has passed since its
//!   seal. Every live copy of its session was sealed before it, so (clocks within `skew`, seal
//!   times rounded down to the second) more than `ttl` before now: the floor refuses it.
//! - **Expiry by count.** While more than `max_tombstones` are held, the oldest is dropped
//!   early, but never before half the TTL, and `restore_floor_ms` is raised past it (seal time
//!   `+ skew + 1 s`) first: the floor refuses every copy that can predate it. The driver
//!   persists the floor before it deletes the tombstone ([`Effects::forget`]).
//! - **Refresh.** An active session whose copy was sealed `ttl / 4` ago is resealed with a new
//!   version and nothing else changed (a change that waits for the chain holder, like a
//!   dispatch), so the copies its connected devices hold stay younger than any floor. A
//!   session whose devices were all away for longer than the floor allows cannot be restored
//!   at a datacenter that does not hold it; it continues wherever it is held.
//! - Bounded work: every [`HOUSEKEEPING_MS`], at most [`MAX_EXPIRED_PER_TICK`] tombstones
//!   dropped and [`REFRESH_SCAN`] sessions looked at (a million sessions are all looked at
//!   within about 70 minutes, far inside the margin between `ttl / 4` and `ttl / 2`). `tombstone_ttl_ms = 0` keeps tombstones for ever (no floor
//!   by age, no refresh); `max_tombstones = 0` sets no count bound.

use super::*;

use crate::digest::SealedDigest;
use crate::ids::DeviceId;
use crate::wire::{UploadOutcome, UploadRefusal};

/// How far apart two datacenters' clocks may be (ms); keep them on NTP.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;
/// Most tombstones dropped per tick.
pub const MAX_EXPIRED_PER_TICK: usize = 1024;
/// Most sessions looked at per tick for a refresh.
pub const REFRESH_SCAN: usize = 256;
/// How often the expiry and the refresh run (ms).
pub const HOUSEKEEPING_MS: u64 = 1_000;

impl<A: Application> DatacenterCore<A> {
    /// Copies sealed before this (unix ms) are not restored here (see the module docs);
    /// persisted by the driver and given back with [`DatacenterCore::set_restore_floor_ms`].
    pub fn restore_floor_ms(&self) -> u64 {
        self.restore_floor_ms
    }

    /// The floor persisted before a restart (it never goes down).
    pub fn set_restore_floor_ms(&mut self, floor_ms: u64) {
        self.restore_floor_ms = self.restore_floor_ms.max(floor_ms);
    }

    /// Tombstones held now.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Whether the floor refuses a copy of an unknown session sealed at `sealed_at_ms`.
    fn below_floor(&self, sealed_at_ms: u64) -> bool {
        let ttl = self.cfg.tombstone_ttl_ms;
        let too_old = ttl > 0 && sealed_at_ms.saturating_add(ttl) <= self.now_ms;
        too_old || sealed_at_ms < self.restore_floor_ms
    }

    /// The restore floor's answer to an upload of a session not held here: `Some` refusal
    /// when the copy is too old (see the module docs).
    pub(super) fn refuse_below_floor(
        &mut self,
        device: DeviceId,
        sealed: &SealedDigest,
    ) -> Option<UploadOutcome> {
        let sealed_at_ms = sealed.sealed_at_ms();
        if !self.below_floor(sealed_at_ms) {
            return None;
        }
        let ttl = self.cfg.tombstone_ttl_ms;
        let floor_ms = if ttl > 0 {
            self.restore_floor_ms
                .max(self.now_ms.saturating_sub(ttl).saturating_add(1))
        } else {
            self.restore_floor_ms
        };
        self.stats.uploads_too_old += 1;
        let reason = UploadRefusal::SealedTooLongAgo {
            sealed_at_ms,
            floor_ms,
        };
        Some(self.refuse_upload(sealed.header.session, device, reason))
    }

    /// The housekeeping of a tick, every [`HOUSEKEEPING_MS`]: expiry, then refresh.
    pub(super) fn housekeeping(&mut self, now_ms: u64) {
        if now_ms < self.next_housekeeping_ms {
            return;
        }
        self.next_housekeeping_ms = now_ms.saturating_add(HOUSEKEEPING_MS);
        self.expire_tombstones(now_ms);
        self.refresh_idle(now_ms);
    }

    /// When the housekeeping next has something to look at (unix ms).
    pub(super) fn housekeeping_timeout(&self) -> Option<u64> {
        let work = !self.tombstones.is_empty()
            || (self.cfg.tombstone_ttl_ms > 0 && !self.sessions.is_empty());
        work.then_some(self.next_housekeeping_ms)
    }

    /// Drop the tombstones past their time (see the module docs).
    pub(super) fn expire_tombstones(&mut self, now_ms: u64) {
        let ttl = self.cfg.tombstone_ttl_ms;
        let max = self.cfg.max_tombstones;
        let mut forgot = 0;
        while forgot < MAX_EXPIRED_PER_TICK {
            let Some(&(sealed_at_ms, session)) = self.tombstones.first() else {
                break;
            };
            let age_ms = now_ms.saturating_sub(sealed_at_ms);
            let by_age = ttl > 0 && age_ms >= ttl + MAX_CLOCK_SKEW_MS + 1_000;
            let by_count = max > 0 && self.tombstones.len() > max && age_ms >= ttl / 2;
            if !(by_age || by_count) {
                break;
            }
            if !by_age {
                let floor = sealed_at_ms + MAX_CLOCK_SKEW_MS + 1_000;
                self.restore_floor_ms = self.restore_floor_ms.max(floor);
            }
            self.tombstones.pop_first();
            if let Some(e) = self.sessions.remove(&session) {
                let anchor = e.header.anchor();
                if let Some(ends) = self.unsettled_ends.get_mut(&anchor) {
                    ends.retain(|s| *s != session);
                    if ends.is_empty() {
                        self.unsettled_ends.remove(&anchor);
                    }
                }
            }
            self.effects.forget.push(session);
            self.stats.tombstones_expired += 1;
            forgot += 1;
        }
    }

    /// Reseal the active sessions whose copy is a quarter of the TTL old (see the module
    /// docs), looking at up to [`REFRESH_SCAN`] sessions round the table.
    pub(super) fn refresh_idle(&mut self, now_ms: u64) {
        let ttl = self.cfg.tombstone_ttl_ms;
        if ttl == 0 {
            return;
        }
        for _ in 0..REFRESH_SCAN {
            if self.refresh_queue.is_empty() {
                self.refresh_queue = self.active_ids_in_order();
            }
            let Some(session) = self.refresh_queue.pop_front() else {
                return;
            };
            let due = self.sessions.get(&session).is_some_and(|e| {
                !e.header.tombstone && e.sealed.sealed_at_ms().saturating_add(ttl / 4) <= now_ms
            });
            if due && self.change(session, true, |_, _| {}).is_ok() {
                self.stats.sessions_refreshed += 1;
                self.push_to_participants(session, None);
            }
        }
    }
}
