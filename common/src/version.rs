//! Session versions: a version vector with one counter per datacenter.
//!
//! Every change a datacenter makes to a session increments that datacenter's own slot (its
//! [`ReplicaId`], which belongs to its data directory, see there). A
//! datacenter only ever changes a session after it holds the newest digest it can get (its
//! own store, or the digests devices upload on connect), so along one history each change's
//! vector strictly dominates the previous one.
//!
//! Why this is sound under failover and failback:
//! - Failover: the backup restores `{A:5}` from a device and its next change is `{A:5,B:1}`,
//!   which dominates everything the primary ever produced for that history.
//! - Failback: the old primary restarts with `{A:5}` on disk; a device uploads `{A:5,B:3}`,
//!   which dominates, so the primary adopts it. It can never mistake its stale copy for the
//!   newer one, because its stale copy is dominated.
//! - Split (S13): if participants reach different datacenters during a partition, the two
//!   sides produce `{A:6}` and `{A:5,B:1}`; neither dominates, so the divergence is
//!   *detected* ([`VersionOrder::Concurrent`]) instead of one side silently winning.
//!
//! A plain counter or a wall-clock timestamp cannot tell "newer" from "diverged"; an
//! `(epoch, dc, seq)` triple can only if epochs are coordinated, which needs the very
//! cross-datacenter link Lifeboat avoids.
//!
//! Invariants: entries are sorted by datacenter, unique, have non-zero counters, and there
//! are at most [`MAX_DATACENTERS`] of them (a decoded vector is checked with
//! [`VersionVector::validate`]).

use crate::ids::ReplicaId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// Upper bound on distinct replica slots in one vector (C6): a session would have to live
/// through more than 15 datacenter disk losses to reach it.
pub const MAX_DATACENTERS: usize = 16;

/// How two versions relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionOrder {
    /// The same version: every counter is equal.
    Equal,
    /// `self` strictly dominates `other`.
    Newer,
    /// `other` strictly dominates `self`.
    Older,
    /// Neither dominates: the histories diverged.
    Concurrent,
}

/// A version vector (see the module docs).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    entries: Vec<(ReplicaId, u64)>,
}

/// A version vector that breaks the invariants (from a hostile or corrupt source).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// More replica slots than [`MAX_DATACENTERS`]; the count it has (or would have after a bump).
    #[error("version vector has {0} entries, more than the limit of {MAX_DATACENTERS}")]
    TooManyEntries(usize),
    /// Entries out of order, repeated, or with a zero counter.
    #[error("version vector entries are not sorted, unique and non-zero")]
    Malformed,
    /// The slot's counter is at `u64::MAX`; no more changes can be recorded there.
    #[error("version counter overflow for {0}")]
    Overflow(ReplicaId),
}

impl VersionVector {
    /// The empty vector: before any change (dominated by every other).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of one datacenter (0 if absent).
    pub fn get(&self, dc: ReplicaId) -> u64 {
        self.entries
            .iter()
            .find(|(d, _)| *d == dc)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    }

    /// Record one change made at `dc`.
    pub fn bump(&mut self, dc: ReplicaId) -> Result<(), VersionError> {
        match self.entries.binary_search_by_key(&dc, |(d, _)| *d) {
            Ok(i) => {
                let c = &mut self.entries[i].1;
                *c = c.checked_add(1).ok_or(VersionError::Overflow(dc))?;
            }
            Err(i) => {
                if self.entries.len() >= MAX_DATACENTERS {
                    return Err(VersionError::TooManyEntries(self.entries.len() + 1));
                }
                self.entries.insert(i, (dc, 1));
            }
        }
        Ok(())
    }

    /// Total number of changes in this history: strictly grows along dominance, so it is a
    /// handy scalar for display and for "never decreases" checks.
    pub fn total(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, c)| *c)
            .fold(0u64, u64::saturating_add)
    }

    /// Whether no change was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(slot, counter)` pairs, sorted by slot, counters non-zero.
    pub fn entries(&self) -> &[(ReplicaId, u64)] {
        &self.entries
    }

    /// Check the invariants of a decoded vector.
    pub fn validate(&self) -> Result<(), VersionError> {
        if self.entries.len() > MAX_DATACENTERS {
            return Err(VersionError::TooManyEntries(self.entries.len()));
        }
        let sorted = self.entries.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted || self.entries.iter().any(|(_, c)| *c == 0) {
            return Err(VersionError::Malformed);
        }
        Ok(())
    }

    /// Compare two vectors by dominance.
    pub fn compare(&self, other: &Self) -> VersionOrder {
        let (mut greater, mut less) = (false, false);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => Ordering::Less,
                (None, _) => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].1.cmp(&b[j].1) {
                        Ordering::Greater => greater = true,
                        Ordering::Less => less = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        match (greater, less) {
            (false, false) => VersionOrder::Equal,
            (true, false) => VersionOrder::Newer,
            (false, true) => VersionOrder::Older,
            (true, true) => VersionOrder::Concurrent,
        }
    }

    /// The least version that covers both (pointwise maximum): the base of a reconciled copy.
    pub fn join(&self, other: &Self) -> Result<Self, VersionError> {
        let mut entries = self.entries.clone();
        for (dc, c) in &other.entries {
            match entries.binary_search_by_key(dc, |(d, _)| *d) {
                Ok(i) => entries[i].1 = entries[i].1.max(*c),
                Err(i) => entries.insert(i, (*dc, *c)),
            }
        }
        if entries.len() > MAX_DATACENTERS {
            return Err(VersionError::TooManyEntries(entries.len()));
        }
        Ok(Self { entries })
    }

    /// `self` dominates or equals `other`.
    pub fn covers(&self, other: &Self) -> bool {
        matches!(
            self.compare(other),
            VersionOrder::Equal | VersionOrder::Newer
        )
    }
}

/// `Debug` is the short `Display` form (`{r99636c0b:3,r1a2b3c4d:1}`), as for the ids.
impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (dc, c)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{dc}:{c}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn vv(entries: &[(u32, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(dc, n) in entries {
            for _ in 0..n {
                v.bump(ReplicaId(dc)).unwrap();
            }
        }
        v
    }

    #[test]
    fn failover_change_dominates_primary_history() {
        let primary = vv(&[(1, 5)]);
        let mut backup = primary.clone();
        backup.bump(ReplicaId(2)).unwrap();
        assert_eq!(backup.compare(&primary), VersionOrder::Newer);
        assert_eq!(primary.compare(&backup), VersionOrder::Older);
    }

    #[test]
    fn split_histories_are_concurrent() {
        let base = vv(&[(1, 5)]);
        let mut a = base.clone();
        a.bump(ReplicaId(1)).unwrap();
        let mut b = base.clone();
        b.bump(ReplicaId(2)).unwrap();
        assert_eq!(a.compare(&b), VersionOrder::Concurrent);
        assert_eq!(b.compare(&a), VersionOrder::Concurrent);
    }

    #[test]
    fn malformed_vectors_are_rejected() {
        let bad = VersionVector {
            entries: vec![(ReplicaId(2), 1), (ReplicaId(1), 1)],
        };
        assert_eq!(bad.validate(), Err(VersionError::Malformed));
        let zero = VersionVector {
            entries: vec![(ReplicaId(1), 0)],
        };
        assert_eq!(zero.validate(), Err(VersionError::Malformed));
    }

    #[test]
    fn random_histories_order_consistently_with_totals() {
        let seed = 0x5eed_0001;
        let mut rng = SmallRng::seed_from_u64(seed);
        for _ in 0..500 {
            let mut a = VersionVector::new();
            for _ in 0..rng.random_range(0..20) {
                a.bump(ReplicaId(rng.random_range(0..4))).unwrap();
            }
            let mut b = a.clone();
            for _ in 0..rng.random_range(0..5) {
                b.bump(ReplicaId(rng.random_range(0..4))).unwrap();
            }
            // b extends a's history: it must cover a, and a must never look newer.
            assert!(b.covers(&a), "seed {seed}: {b} should cover {a}");
            assert_ne!(a.compare(&b), VersionOrder::Newer, "seed {seed}");
            assert!(b.total() >= a.total(), "seed {seed}");
            assert_eq!(a.compare(&b).reverse(), b.compare(&a), "seed {seed}");
        }
    }

    impl VersionOrder {
        fn reverse(self) -> Self {
            match self {
                VersionOrder::Newer => VersionOrder::Older,
                VersionOrder::Older => VersionOrder::Newer,
                o => o,
            }
        }
    }
}
