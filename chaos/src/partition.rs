//! Cutting a path entirely: [`Partition`], a cloneable switch a test flips at run time.
//!
//! A cut blackholes datagrams in both directions: nothing is sent to a cut peer and nothing
//! received from it reaches quinn, including datagrams already held back in a delay queue
//! when they come due. Cutting does not touch the random decisions (the RNG draws the same
//! values whether or not a datagram is cut), so a run with a partition makes the same
//! loss/delay choices for every other datagram as the same run without it.
//!
//! Bounded: at most [`MAX_CUT_PEERS`] individually cut peers; cut everyone with
//! [`Partition::cut_all`] instead of listing more.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most peers a partition can cut one by one.
pub const MAX_CUT_PEERS: usize = 4_096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    /// Nothing changed: the peer is not cut.
    #[error("cannot cut {peer}: {max} peers are cut already (use cut_all)")]
    TooManyPeers { peer: SocketAddr, max: usize },
}

#[derive(Debug, Default)]
struct Cuts {
    all: AtomicBool,
    /// Fast path: true iff `peers` is non-empty (so an uncut socket never takes the lock).
    any_peer: AtomicBool,
    peers: Mutex<HashSet<SocketAddr>>,
}

/// A switch over one or more impaired sockets (clones share the same state): cut the path to
/// everyone or to given peer addresses, and repair it.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    cuts: Arc<Cuts>,
}

impl Partition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blackhole every peer, both directions.
    pub fn cut_all(&self) {
        self.cuts.all.store(true, Ordering::SeqCst);
    }

    /// Undo [`cut_all`](Self::cut_all) and every per-peer cut.
    pub fn repair_all(&self) {
        self.cuts.all.store(false, Ordering::SeqCst);
        let mut peers = self.peers();
        peers.clear();
        self.cuts.any_peer.store(false, Ordering::SeqCst);
    }

    /// Blackhole one peer address, both directions.
    pub fn cut(&self, peer: SocketAddr) -> Result<(), PartitionError> {
        let mut peers = self.peers();
        if peers.len() >= MAX_CUT_PEERS && !peers.contains(&peer) {
            return Err(PartitionError::TooManyPeers {
                peer,
                max: MAX_CUT_PEERS,
            });
        }
        peers.insert(peer);
        self.cuts.any_peer.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Undo a per-peer cut (a [`cut_all`](Self::cut_all) stays in force).
    pub fn repair(&self, peer: SocketAddr) {
        let mut peers = self.peers();
        peers.remove(&peer);
        self.cuts
            .any_peer
            .store(!peers.is_empty(), Ordering::SeqCst);
    }

    /// Whether datagrams to or from `peer` are blackholed right now.
    pub fn is_cut(&self, peer: SocketAddr) -> bool {
        if self.cuts.all.load(Ordering::SeqCst) {
            return true;
        }
        self.cuts.any_peer.load(Ordering::SeqCst) && self.peers().contains(&peer)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        // A panic while holding this lock cannot leave the set half-changed.
        self.cuts
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn cut_one_peer_then_all_then_repair_restores_every_path() {
        let p = Partition::new();
        let q = p.clone();
        assert!(!p.is_cut(addr(1)));
        p.cut(addr(1)).unwrap();
        assert!(q.is_cut(addr(1)), "clones share the switch");
        assert!(!q.is_cut(addr(2)));
        q.cut_all();
        assert!(p.is_cut(addr(2)));
        p.repair(addr(1));
        assert!(p.is_cut(addr(1)), "cut_all still in force");
        p.repair_all();
        assert!(!p.is_cut(addr(1)) && !p.is_cut(addr(2)));
    }

    #[test]
    fn per_peer_cuts_are_bounded_with_a_typed_error() {
        let p = Partition::new();
        for port in 0..MAX_CUT_PEERS as u16 {
            p.cut(addr(port)).unwrap();
        }
        // Re-cutting a cut peer is fine; a new one is refused and left uncut.
        p.cut(addr(0)).unwrap();
        let extra = addr(MAX_CUT_PEERS as u16);
        assert_eq!(
            p.cut(extra),
            Err(PartitionError::TooManyPeers {
                peer: extra,
                max: MAX_CUT_PEERS
            })
        );
        assert!(!p.is_cut(extra));
    }
}
