//! Counters of what an impaired socket did, per direction, readable at any time from an
//! [`crate::ImpairHandle`].
//!
//! Invariant (once the queues are empty): `offered + duplicated = delivered + dropped +
//! blackholed + overflowed + errors`, per direction. Held-back copies are counted in
//! `delayed`/`reordered` when scheduled and in one of the terminal counters when they leave.

use std::sync::atomic::{AtomicU64, Ordering};

/// One direction's counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that entered the layer (quinn's sends, or datagrams read from the socket).
    pub offered: u64,
    /// Copies handed on (to the socket, or to quinn).
    pub delivered: u64,
    /// Datagrams dropped by the random loss.
    pub dropped: u64,
    /// Extra copies made by the random duplication.
    pub duplicated: u64,
    /// Copies held back by a delay (base, jitter or reorder gap) before delivery.
    pub delayed: u64,
    /// Copies held back the extra reorder gap.
    pub reordered: u64,
    /// Copies discarded because the path was cut (on entry or when they came due).
    pub blackholed: u64,
    /// Copies dropped because the direction's queue was at its bound.
    pub overflowed: u64,
    /// Copies lost to an I/O error of the socket or a datagram too large for quinn's buffer.
    pub errors: u64,
}

impl DirectionStats {
    /// Every copy that did not reach the other side, whatever the cause.
    pub fn lost(&self) -> u64 {
        self.dropped + self.blackholed + self.overflowed + self.errors
    }

    fn add(&mut self, o: &DirectionStats) {
        self.offered += o.offered;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.reordered += o.reordered;
        self.blackholed += o.blackholed;
        self.overflowed += o.overflowed;
        self.errors += o.errors;
    }
}

/// Both directions' counters (a snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairStats {
    pub send: DirectionStats,
    pub recv: DirectionStats,
}

impl ImpairStats {
    /// Both directions added up.
    pub fn total(&self) -> DirectionStats {
        let mut t = self.send;
        t.add(&self.recv);
        t
    }

    /// Sum of several sockets' counters (e.g. the harness's endpoint shards).
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a ImpairStats>) -> ImpairStats {
        let mut s = ImpairStats::default();
        for x in all {
            s.send.add(&x.send);
            s.recv.add(&x.recv);
        }
        s
    }
}

/// Live counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub offered: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
    pub reordered: AtomicU64,
    pub blackholed: AtomicU64,
    pub overflowed: AtomicU64,
    pub errors: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> DirectionStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            offered: r(&self.offered),
            delivered: r(&self.delivered),
            dropped: r(&self.dropped),
            duplicated: r(&self.duplicated),
            delayed: r(&self.delayed),
            reordered: r(&self.reordered),
            blackholed: r(&self.blackholed),
            overflowed: r(&self.overflowed),
            errors: r(&self.errors),
        }
    }
}
