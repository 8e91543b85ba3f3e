//! What a device remembers of its routes across restarts: the datacenter it last reached and
//! those that recently failed it. Kept in the device store by the driver; a hint only (losing
//! it costs a slower first connect, nothing else).
//!
//! Invariants: an address is at most once in `failed`, which holds at most
//! [`MAX_REMEMBERED_FAILURES`] entries (the oldest go first); `last_reached` is never an
//! address that failed after it was reached.

use serde::{Deserialize, Serialize};

/// Failed datacenters remembered at most.
pub const MAX_REMEMBERED_FAILURES: usize = 16;

/// The route memory, over the driver's address type `T` (a socket address in the client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMemory<T> {
    /// The datacenter this device last completed a connect with.
    pub last_reached: Option<T>,
    /// Datacenters that failed, with when (unix ms), oldest first.
    pub failed: Vec<(T, u64)>,
}

impl<T> Default for RouteMemory<T> {
    fn default() -> Self {
        Self {
            last_reached: None,
            failed: Vec::new(),
        }
    }
}

impl<T: Copy + PartialEq> RouteMemory<T> {
    /// `addr` answered (`reached`) or failed, at `now_ms`.
    pub fn remember(&mut self, addr: T, reached: bool, now_ms: u64) {
        self.failed.retain(|(a, _)| *a != addr);
        if reached {
            self.last_reached = Some(addr);
            return;
        }
        if self.last_reached == Some(addr) {
            self.last_reached = None;
        }
        self.failed.push((addr, now_ms));
        let excess = self.failed.len().saturating_sub(MAX_REMEMBERED_FAILURES);
        self.failed.drain(..excess);
    }

    /// Whether `addr` failed less than `window_ms` before `now_ms`.
    pub fn failed_within(&self, addr: T, now_ms: u64, window_ms: u64) -> bool {
        self.failed
            .iter()
            .any(|(a, t)| *a == addr && now_ms.saturating_sub(*t) < window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reached_datacenter_is_no_longer_failed_and_a_failed_one_no_longer_reached() {
        let mut m = RouteMemory::default();
        m.remember(1u8, false, 100);
        assert!(m.failed_within(1, 150, 100));
        m.remember(1, true, 200);
        assert_eq!(m.last_reached, Some(1));
        assert!(!m.failed_within(1, 200, 1_000));
        m.remember(1, false, 300);
        assert_eq!(m.last_reached, None);
        assert_eq!(m.failed, vec![(1, 300)]);
    }

    #[test]
    fn failures_are_remembered_once_each_and_at_most_the_bound() {
        let mut m = RouteMemory::default();
        for i in 0..40u16 {
            m.remember(i % 20, false, u64::from(i));
        }
        assert_eq!(m.failed.len(), MAX_REMEMBERED_FAILURES);
        let mut seen: Vec<u16> = m.failed.iter().map(|(a, _)| *a).collect();
        seen.dedup();
        assert_eq!(seen.len(), MAX_REMEMBERED_FAILURES, "{:?}", m.failed);
        // The oldest went first: the 16 most recent failures are kept.
        assert_eq!(m.failed.first(), Some(&(4, 24)));
        assert!(
            !m.failed_within(4, 24 + 10, 10),
            "a failure ages out of its window"
        );
    }
}
