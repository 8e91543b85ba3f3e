//! What a client (or every client sharing it, as in a simulation of thousands) knows about
//! datacenters that recently did not answer: a probe skips one that failed less than the
//! probe window ago, so a dead datacenter costs one handshake attempt per window, not one
//! per client.
//!
//! A datacenter being drained ([`ProbeBoard::hold`]) counts as failed until the time it
//! named, so nobody moves back to it while it still moves its devices away.
//!
//! Invariants: bounded ([`MAX_BOARD_ENTRIES`] addresses, failures and holds each; an address
//! already on the board is always updated); an answer removes the address and its hold.

use std::collections::HashMap;
use std::hash::Hash;

/// Most addresses the board tracks (the datacenter lists of a region are short).
pub const MAX_BOARD_ENTRIES: usize = 64;

/// Recent failures by address, with when (the driver's clock, ms).
#[derive(Debug)]
pub struct ProbeBoard<T> {
    failed_at: HashMap<T, u64>,
    /// Datacenters that asked to be left alone until then (a drain).
    held_until: HashMap<T, u64>,
}

impl<T> Default for ProbeBoard<T> {
    fn default() -> Self {
        Self {
            failed_at: HashMap::new(),
            held_until: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> ProbeBoard<T> {
    /// Whether `addr` failed less than `window_ms` before `now_ms`.
    /// A held address counts as failed until its hold ends.
    pub fn recently_failed(&self, addr: T, now_ms: u64, window_ms: u64) -> bool {
        self.held_until
            .get(&addr)
            .is_some_and(|until| now_ms < *until)
            || self
                .failed_at
                .get(&addr)
                .is_some_and(|t| now_ms.saturating_sub(*t) < window_ms)
    }

    /// `addr` asked to be left alone until `until_ms` (it is being drained).
    pub fn hold(&mut self, addr: T, until_ms: u64) {
        if self.held_until.len() < MAX_BOARD_ENTRIES || self.held_until.contains_key(&addr) {
            self.held_until.insert(addr, until_ms);
        }
    }

    /// `addr` answered, or did not, at `now_ms`.
    pub fn record(&mut self, addr: T, answered: bool, now_ms: u64) {
        if answered {
            self.failed_at.remove(&addr);
            self.held_until.remove(&addr);
        } else if self.failed_at.len() < MAX_BOARD_ENTRIES || self.failed_at.contains_key(&addr) {
            self.failed_at.insert(addr, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_skipped_within_its_window_and_forgotten_on_an_answer() {
        let mut b = ProbeBoard::default();
        b.record(7u8, false, 1_000);
        assert!(b.recently_failed(7, 2_999, 2_000));
        assert!(!b.recently_failed(7, 3_000, 2_000));
        b.record(7, true, 1_500);
        assert!(!b.recently_failed(7, 1_600, 2_000));
    }

    #[test]
    fn a_held_datacenter_counts_as_failed_until_its_hold_ends_whatever_the_window() {
        let mut b = ProbeBoard::default();
        b.hold(7u8, 10_000);
        assert!(b.recently_failed(7, 9_999, 1));
        assert!(!b.recently_failed(7, 10_000, 1));
        b.hold(8u8, 10_000);
        b.record(8, true, 5_000);
        assert!(!b.recently_failed(8, 5_001, 1), "an answer ends the hold");
    }

    #[test]
    fn the_board_is_bounded_but_keeps_updating_what_it_holds() {
        let mut b = ProbeBoard::default();
        for a in 0..(MAX_BOARD_ENTRIES as u32 + 10) {
            b.record(a, false, 0);
        }
        assert!(
            !b.recently_failed(MAX_BOARD_ENTRIES as u32 + 1, 0, 10),
            "over the bound"
        );
        b.record(0, false, 50);
        assert!(
            b.recently_failed(0, 55, 10),
            "an address it holds is updated"
        );
    }
}
