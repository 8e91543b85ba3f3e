//! Exactly-once bookkeeping that travels inside the sealed digest (C2).
//!
//! Each device submits ops to a session in order, with `seq` 1, 2, 3, ... The datacenter
//! keeps, per participant, the highest `seq` it has processed and the outcome (applied or
//! rejected) of the last [`DEDUP_WINDOW`] of them as a bitmask. That is 16 bytes per device,
//! whatever the trip length, and it is enough because a device never has more than
//! [`DEDUP_WINDOW`] ops in flight (the edge client's outbox bound).
//!
//! Invariants:
//! - `seq <= last_seq` is a duplicate: never applied again; its outcome is answered from the
//!   window, or as [`Seen::Forgotten`] if it is older than the window.
//! - `seq == last_seq + 1` is the next op: it is processed and recorded.
//! - `seq > last_seq + 1` is a gap: refused without recording anything.

use crate::ids::DeviceId;
use serde::{Deserialize, Serialize};

/// How many recent outcomes each device's watermark remembers; also the most ops one device
/// may have in flight per session.
pub const DEDUP_WINDOW: u64 = 64;

/// Per-device watermark of processed ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The participant whose ops this watermark counts.
    pub device: DeviceId,
    /// The highest seq processed (applied or rejected); 0 before the first.
    pub last_seq: u64,
    /// Bit `i` is the outcome of `last_seq - i`: 1 applied, 0 rejected.
    pub applied_bits: u64,
}

/// What the watermark says about an incoming `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not processed yet and next in line.
    Next,
    /// Already processed: it was applied (true) or rejected (false).
    Duplicate {
        /// The op was applied (`false`: rejected).
        applied: bool,
    },
    /// Already processed, too long ago to remember the outcome.
    Forgotten,
    /// An earlier op has not been processed yet.
    Gap {
        /// The seq that is next in line (`last_seq + 1`).
        expected: u64,
    },
}

impl DedupEntry {
    /// A watermark for a device that has had no op processed.
    pub fn new(device: DeviceId) -> Self {
        Self {
            device,
            last_seq: 0,
            applied_bits: 0,
        }
    }

    /// What this watermark says about `seq` (seq 0 is never valid: a [`Seen::Gap`]).
    pub fn check(&self, seq: u64) -> Seen {
        if seq == 0 {
            return Seen::Gap {
                expected: self.last_seq.saturating_add(1),
            };
        }
        if seq <= self.last_seq {
            let age = self.last_seq - seq;
            if age >= DEDUP_WINDOW {
                return Seen::Forgotten;
            }
            return Seen::Duplicate {
                applied: (self.applied_bits >> age) & 1 == 1,
            };
        }
        if seq == self.last_seq.saturating_add(1) {
            Seen::Next
        } else {
            Seen::Gap {
                expected: self.last_seq.saturating_add(1),
            }
        }
    }

    /// Whether this watermark has processed every op `other` has, with the same outcomes.
    ///
    /// A device's ops are processed strictly in seq order, so a higher `last_seq` means a
    /// superset; the outcomes are compared over the part of `other`'s window this one still
    /// remembers. Outcomes this one has forgotten cannot be checked, so the answer is then
    /// `false` (the caller treats the copies as a real conflict rather than guess).
    pub fn covers(&self, other: &DedupEntry) -> bool {
        self.compare(other, DEDUP_WINDOW, false)
    }

    /// Whether this watermark has processed every op of `other` that matters when `other`
    /// belongs to a copy concurrent with this one's, whose changes this one does not know
    /// of number `n` (see `DatacenterCore`'s reconcile).
    ///
    /// - Only `other`'s last `n` ops are compared: the ops only `other`'s copy processed are
    ///   among its unknown changes, a suffix of its history; the ones before are shared.
    ///   More than [`DEDUP_WINDOW`] of them cannot be checked: `false`.
    /// - An outcome this one no longer remembers is not compared: this one went on to
    ///   process [`DEDUP_WINDOW`] more ops of that device on a history without `other`'s
    ///   changes, so the device never held `other`'s copy meanwhile (its next connection
    ///   would have brought it here) and was never told `other`'s outcome of that op.
    ///   Nothing acknowledged depends on it.
    pub fn covers_last(&self, other: &DedupEntry, n: u64) -> bool {
        self.compare(other, n, true)
    }

    fn compare(&self, other: &DedupEntry, n: u64, forgotten_ok: bool) -> bool {
        if self.device != other.device || self.last_seq < other.last_seq {
            return false;
        }
        let window = other.last_seq.min(n);
        if window > DEDUP_WINDOW {
            return false;
        }
        (0..window).all(|i| {
            let seq = other.last_seq - i;
            let age = self.last_seq - seq;
            if age >= DEDUP_WINDOW {
                return forgotten_ok;
            }
            (self.applied_bits >> age) & 1 == (other.applied_bits >> i) & 1
        })
    }

    /// Record the outcome of the next op (the caller checked [`Seen::Next`]).
    pub fn record(&mut self, applied: bool) {
        self.last_seq = self.last_seq.saturating_add(1);
        self.applied_bits = (self.applied_bits << 1) | u64::from(applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_op_is_answered_from_the_window_not_reapplied() {
        let mut d = DedupEntry::new(DeviceId(7));
        assert_eq!(d.check(1), Seen::Next);
        d.record(true);
        assert_eq!(d.check(2), Seen::Next);
        d.record(false);
        assert_eq!(d.check(1), Seen::Duplicate { applied: true });
        assert_eq!(d.check(2), Seen::Duplicate { applied: false });
        assert_eq!(d.check(4), Seen::Gap { expected: 3 });
        assert_eq!(d.check(0), Seen::Gap { expected: 3 });
    }

    #[test]
    fn a_longer_history_with_the_same_outcomes_covers_a_shorter_one() {
        let (mut a, mut b) = (DedupEntry::new(DeviceId(3)), DedupEntry::new(DeviceId(3)));
        for applied in [true, false, true] {
            a.record(applied);
            b.record(applied);
        }
        a.record(true);
        assert!(a.covers(&b));
        assert!(!b.covers(&a), "a shorter history never covers a longer one");
        // Same length, one outcome different: neither covers the other.
        let mut c = DedupEntry::new(DeviceId(3));
        for applied in [true, true, true, true] {
            c.record(applied);
        }
        assert!(!a.covers(&c) && !c.covers(&a));
        // Another device's watermark never counts.
        assert!(!DedupEntry::new(DeviceId(4)).covers(&DedupEntry::new(DeviceId(3))));
    }

    #[test]
    fn outcomes_older_than_the_window_are_forgotten_not_reapplied() {
        let mut d = DedupEntry::new(DeviceId(1));
        for _ in 0..(DEDUP_WINDOW + 5) {
            d.record(true);
        }
        assert_eq!(d.check(1), Seen::Forgotten);
        assert_eq!(d.check(6), Seen::Duplicate { applied: true });
    }

    #[test]
    fn long_shared_histories_are_compared_over_their_last_ops_only() {
        let (mut ours, mut theirs) = (DedupEntry::new(DeviceId(2)), DedupEntry::new(DeviceId(2)));
        for i in 0..100 {
            ours.record(i % 7 != 0);
            theirs.record(i % 7 != 0);
        }
        // One more op on their branch, the same op and 40 more on ours.
        theirs.record(true);
        ours.record(true);
        for _ in 0..40 {
            ours.record(true);
        }
        assert!(!ours.covers(&theirs), "the whole window cannot be checked");
        assert!(
            ours.covers_last(&theirs, 1),
            "the one op only they may lack"
        );
        assert!(!theirs.covers_last(&ours, 41), "they lack our last 40");
        // Their one op had another outcome on our side: not covered.
        let mut rejected = theirs;
        rejected.applied_bits ^= 1;
        assert!(!ours.covers_last(&rejected, 1));
        // More ops to compare than anyone remembers: cannot be checked.
        assert!(!ours.covers_last(&theirs, DEDUP_WINDOW + 1));
        // Their one op is one we processed 64 ops ago and no longer remember the outcome of:
        // the device went on with us, never told their outcome (see `covers_last`).
        for _ in 0..30 {
            ours.record(true);
        }
        assert!(!ours.covers(&theirs));
        assert!(ours.covers_last(&theirs, 1));
        assert!(
            ours.covers_last(&rejected, 1),
            "an outcome we forgot is not compared"
        );
    }
}
