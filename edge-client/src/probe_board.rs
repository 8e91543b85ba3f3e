//! The probe board a client shares with the other clients of its process (a simulation of
//! thousands): what they know about datacenters that recently did not answer. The rules are
//! [`lifeboat_common::route::ProbeBoard`]'s; this is its lock.
//!
//! Invariant: the lock is never held across an await (every use is one short closure).

use std::net::SocketAddr;

/// The probe board ([`lifeboat_common::route::ProbeBoard`]) of one client, or shared by every
/// client of a process (a simulation of thousands): a dead datacenter then costs one
/// handshake attempt per probe window, not one per client.
#[derive(Debug, Default)]
pub struct ProbeBoard {
    board: std::sync::Mutex<lifeboat_common::route::ProbeBoard<SocketAddr>>,
}

impl ProbeBoard {
    /// Work on the board (never held across an await). A poisoned lock still holds a
    /// usable board: the entries are plain timestamps.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut lifeboat_common::route::ProbeBoard<SocketAddr>) -> R,
    ) -> R {
        let mut guard = self.board.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}
