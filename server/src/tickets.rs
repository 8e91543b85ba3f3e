//! The datacenter's TLS session tickets, region-wide (issue 13 #4): a rustls
//! [`ProducesTickets`] over [`TicketKeys`], derived from the region keyring and re-derived
//! when the keyring file changes (S14), so a device resumes its TLS session at any
//! datacenter of the region (a failover costs an abbreviated handshake: no certificate
//! signature here, no chain verification on the phone). SECURITY.md says what it costs.
//!
//! Invariants: tickets are sealed under the keyring's active key and open under any key it
//! still lists (a retired key ends its tickets); the keyring is read through
//! [`KeyringWatch`], so a reload takes effect at the next ticket; no 0-RTT (the server
//! config sets `max_early_data_size` to 0: a replayed `Hello` would replace a live
//! connection); a failure to seal only means no ticket, never a failed handshake.

use crate::keyring_watch::KeyringWatch;
use lifeboat_common::ticket::TicketKeys;
use rustls::server::ProducesTickets;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How long a device may resume with a ticket (seconds): a day covers a phone's daily
/// reconnects; the key's rotation period bounds it further.
pub const TICKET_LIFETIME_SECS: u32 = 24 * 3600;

/// Counters of the ticketer (for `/metrics`).
#[derive(Debug, Default)]
pub struct TicketCounters {
    /// Tickets issued.
    pub issued: AtomicU64,
    /// Tickets a device offered that opened: the handshake resumes.
    pub resumed: AtomicU64,
    /// Tickets offered that did not open (another region, a retired key, tampered): a
    /// full handshake follows.
    pub refused: AtomicU64,
}

/// Region-wide tickets for rustls.
pub struct RegionTicketer {
    keys: Arc<KeyringWatch>,
    /// The keys derived from one keyring generation.
    derived: Mutex<(u64, Arc<TicketKeys>)>,
    counters: Arc<TicketCounters>,
}

impl std::fmt::Debug for RegionTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionTicketer").finish_non_exhaustive()
    }
}

impl RegionTicketer {
    /// A ticketer reading the region keyring through `keys`.
    pub fn new(keys: Arc<KeyringWatch>, counters: Arc<TicketCounters>) -> Self {
        let generation = keys.generation();
        let derived = Arc::new(TicketKeys::derive(&keys.current()));
        Self {
            keys,
            derived: Mutex::new((generation, derived)),
            counters,
        }
    }

    /// The keys of the keyring in use (re-derived after a reload).
    fn current(&self) -> Arc<TicketKeys> {
        let generation = self.keys.generation();
        let mut d = match self.derived.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if d.0 != generation {
            *d = (
                generation,
                Arc::new(TicketKeys::derive(&self.keys.current())),
            );
        }
        d.1.clone()
    }
}

impl ProducesTickets for RegionTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let t = self.current().seal(plain).ok()?;
        self.counters.issued.fetch_add(1, Ordering::Relaxed);
        Some(t)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match self.current().open(cipher) {
            Ok(plain) => {
                self.counters.resumed.fetch_add(1, Ordering::Relaxed);
                Some(plain)
            }
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}
