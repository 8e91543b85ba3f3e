//! The checker's own arithmetic: version dominance and dedup watermarks, from raw data.
//!
//! Independence: nothing here calls the replication core. Dominance is computed slot by
//! slot from `VersionVector::entries` (a missing slot counts 0); a watermark is read from
//! its raw fields (bit `i` of `applied_bits` is the outcome of `last_seq - i`).

use lifeboat_common::dedup::DedupEntry;
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::{DeviceId, VersionVector};
use std::collections::BTreeSet;

/// Outcomes a watermark remembers per device (the digest format: a 64-bit mask).
pub const WINDOW: u64 = 64;

/// How two versions relate, computed here from their entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Equal,
    /// The first strictly dominates the second.
    Newer,
    /// The second strictly dominates the first.
    Older,
    /// Neither dominates: two branches.
    Concurrent,
}

fn counter(v: &VersionVector, r: ReplicaId) -> u64 {
    v.entries()
        .iter()
        .find(|(x, _)| *x == r)
        .map_or(0, |(_, c)| *c)
}

/// Compare `a` with `b` slot by slot (a missing slot counts 0).
pub fn order(a: &VersionVector, b: &VersionVector) -> Order {
    let slots: BTreeSet<ReplicaId> = a.entries().iter().chain(b.entries()).map(|e| e.0).collect();
    let (mut above, mut below) = (false, false);
    for r in slots {
        let (x, y) = (counter(a, r), counter(b, r));
        above |= x > y;
        below |= x < y;
    }
    match (above, below) {
        (false, false) => Order::Equal,
        (true, false) => Order::Newer,
        (false, true) => Order::Older,
        (true, true) => Order::Concurrent,
    }
}

/// `a` is `b` or descends from it (every slot at least as high).
pub fn dominates(a: &VersionVector, b: &VersionVector) -> bool {
    matches!(order(a, b), Order::Equal | Order::Newer)
}

/// What a copy's raw watermarks say about one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected,
    /// The watermark of its device is below its seq (or there is none).
    NotProcessed,
    /// Processed longer ago than the window remembers.
    OutsideWindow,
}

/// Read `seq` of `device` off `dedup`: `last_seq` is the highest seq processed, bit `i` of
/// `applied_bits` the outcome of `last_seq - i` (1 applied, 0 rejected).
pub fn outcome(dedup: &[DedupEntry], device: DeviceId, seq: u64) -> Outcome {
    let Some(m) = dedup.iter().find(|m| m.device == device) else {
        return Outcome::NotProcessed;
    };
    if seq == 0 || seq > m.last_seq {
        return Outcome::NotProcessed;
    }
    let age = m.last_seq - seq;
    if age >= WINDOW {
        Outcome::OutsideWindow
    } else if (m.applied_bits >> age) & 1 == 1 {
        Outcome::Applied
    } else {
        Outcome::Rejected
    }
}
