//! Deliberate bugs, to prove that the chaos suite's history checker catches real ones.
//!
//! Compiled only with the cargo feature `fault-injection`, which is off by default and
//! switched on only by `lifeboat-dsim`'s dev-dependencies. Even when compiled in (cargo
//! unifies features in a workspace-wide test build), a fault is active only on the thread
//! that called [`inject`], for as long as the returned guard lives: there is no flag, file,
//! environment variable or message that turns one on.

use crate::dedup::Seen;
use crate::version::VersionOrder;
use std::cell::Cell;

/// A bug the datacenter core can be made to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The datacenter forgets its dedup state: a retried op is applied again (breaks C2,
    /// and the watermark then runs ahead, so a later op is answered as a duplicate without
    /// being applied, which breaks C1).
    ForgetDedup,
    /// The datacenter adopts an uploaded digest that is older than its own copy (breaks C3,
    /// and loses whatever was committed after the older copy, C1).
    AcceptOlderDigest,
    /// The datacenter tells every participant a copy is committed without waiting for the
    /// chain holder to persist it (breaks the chain rule: a rider's op on a branch the anchor
    /// never saw is reported, then dropped when the branches meet, C1).
    CommitWithoutChainHolder,
    /// The device reports an op as soon as the copy it holds records it, committed or not
    /// (breaks the device's commit rule: a rider's op applied on a branch the anchor never
    /// persisted is reported, then dropped when the branches meet, C1).
    ReportOnReply,
}

impl Fault {
    fn bit(self) -> u8 {
        match self {
            Fault::ForgetDedup => 1,
            Fault::AcceptOlderDigest => 2,
            Fault::CommitWithoutChainHolder => 4,
            Fault::ReportOnReply => 8,
        }
    }
}

thread_local! {
    static ACTIVE: Cell<u8> = const { Cell::new(0) };
}

/// Keeps a fault active on this thread until dropped.
#[must_use = "the fault is active only while the guard lives"]
pub struct FaultGuard {
    fault: Fault,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let bit = self.fault.bit();
        ACTIVE.with(|a| a.set(a.get() & !bit));
    }
}

/// Make the datacenter cores running on this thread have `fault`.
pub fn inject(fault: Fault) -> FaultGuard {
    ACTIVE.with(|a| a.set(a.get() | fault.bit()));
    FaultGuard { fault }
}

/// Whether `fault` is active on this thread.
pub fn is_active(fault: Fault) -> bool {
    ACTIVE.with(|a| a.get() & fault.bit() != 0)
}

/// The dedup verdict as a datacenter with [`Fault::ForgetDedup`] would see it.
pub(crate) fn distort_seen(seen: Seen) -> Seen {
    match seen {
        Seen::Duplicate { .. } | Seen::Forgotten if is_active(Fault::ForgetDedup) => Seen::Next,
        other => other,
    }
}

/// Whether a copy is marked committed, as a datacenter with
/// [`Fault::CommitWithoutChainHolder`] would mark it.
pub(crate) fn distort_committed(committed: bool) -> bool {
    committed || is_active(Fault::CommitWithoutChainHolder)
}

/// Whether a device with [`Fault::ReportOnReply`] reports ops from copies not committed.
pub(crate) fn report_on_reply() -> bool {
    is_active(Fault::ReportOnReply)
}

/// The version order as a datacenter with [`Fault::AcceptOlderDigest`] would see it.
pub(crate) fn distort_order(order: VersionOrder) -> VersionOrder {
    match order {
        VersionOrder::Older if is_active(Fault::AcceptOlderDigest) => VersionOrder::Newer,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_active_only_while_its_guard_lives_and_only_on_its_thread() {
        assert_eq!(distort_seen(Seen::Forgotten), Seen::Forgotten);
        {
            let _g = inject(Fault::ForgetDedup);
            assert_eq!(distort_seen(Seen::Forgotten), Seen::Next);
            assert_eq!(distort_order(VersionOrder::Older), VersionOrder::Older);
            let other = std::thread::spawn(|| is_active(Fault::ForgetDedup)).join();
            assert_eq!(other.ok(), Some(false));
        }
        assert!(!is_active(Fault::ForgetDedup));
        let _g = inject(Fault::AcceptOlderDigest);
        assert_eq!(distort_order(VersionOrder::Older), VersionOrder::Newer);
        assert_eq!(
            distort_order(VersionOrder::Concurrent),
            VersionOrder::Concurrent
        );
    }
}
