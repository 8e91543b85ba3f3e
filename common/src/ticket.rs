//! Region-wide TLS session tickets (issue 13 #4): a ticket any datacenter of the region can
//! open, so a device that connected once resumes its TLS session at the backup instead of a
//! full handshake (no certificate signature at the datacenter, no chain verification on the
//! phone).
//!
//! Format: `key id (4 bytes, big endian) || nonce (24) || XChaCha20-Poly1305(plain)`, under
//! a key derived from the region's sealing key of that id ([`Keyring::derived_key`] with
//! purpose [`TICKET_PURPOSE`]). New tickets use the active key; tickets under any key the
//! keyring still lists open, so a rotation (S14) does not turn every device's next connect
//! into a full handshake, and retiring a key ends its tickets.
//!
//! Invariants: nothing in a ticket is trusted before it authenticates; a ticket names its
//! key, so opening never tries keys in turn; a ticket larger than [`MAX_TICKET_BYTES`] is
//! refused before any work; no error says more than "not one of ours" (the input is the
//! attacker's).

use crate::keyring::{KeyId, Keyring};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::collections::BTreeMap;

/// The HKDF purpose of ticket keys (never the same key as a digest's).
pub const TICKET_PURPOSE: &[u8] = b"lifeboat-tls-ticket-v1";
/// Largest ticket opened (rustls's session values are a few hundred bytes).
pub const MAX_TICKET_BYTES: usize = 4_096;
const NONCE_BYTES: usize = 24;
const HEADER_BYTES: usize = 4 + NONCE_BYTES;

/// Why a ticket did not open (deliberately vague: the input is the attacker's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket of this region (wrong size, unknown or retired key, failed
    /// authentication).
    #[error("not a ticket of this region")]
    NotOurs,
    /// The plaintext could not be sealed (never expected: the AEAD has no such failure for
    /// inputs of this size).
    #[error("ticket could not be sealed")]
    Seal,
}

/// The ticket keys of one keyring version.
pub struct TicketKeys {
    active: KeyId,
    ciphers: BTreeMap<KeyId, XChaCha20Poly1305>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TicketKeys")
            .field("active", &self.active)
            .field("key_ids", &self.ciphers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TicketKeys {
    /// Derive the ticket keys of every key `keyring` lists.
    pub fn derive(keyring: &Keyring) -> Self {
        let ciphers = keyring
            .key_ids()
            .filter_map(|id| {
                let key = keyring.derived_key(id, TICKET_PURPOSE)?;
                Some((id, XChaCha20Poly1305::new((&key).into())))
            })
            .collect();
        Self {
            active: keyring.active_key_id(),
            ciphers,
        }
    }

    /// The key id new tickets are sealed with.
    pub fn active_key_id(&self) -> KeyId {
        self.active
    }

    /// Seal `plain` under the active key with a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, TicketError> {
        let cipher = self.ciphers.get(&self.active).ok_or(TicketError::Seal)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .map_err(|_| TicketError::Seal)?;
        let mut out = Vec::with_capacity(HEADER_BYTES + sealed.len());
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Open a ticket sealed by any datacenter of the region under a key still listed.
    pub fn open(&self, ticket: &[u8]) -> Result<Vec<u8>, TicketError> {
        if ticket.len() > MAX_TICKET_BYTES || ticket.len() < HEADER_BYTES {
            return Err(TicketError::NotOurs);
        }
        let (id, rest) = ticket.split_at(4);
        let id = KeyId::from_be_bytes(id.try_into().map_err(|_| TicketError::NotOurs)?);
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let cipher = self.ciphers.get(&id).ok_or(TicketError::NotOurs)?;
        cipher
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| TicketError::NotOurs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_sealed_at_one_datacenter_opens_at_another_of_the_region() {
        let region = Keyring::generate();
        let (dc1, dc2) = (
            TicketKeys::derive(&region),
            TicketKeys::derive(&region.clone()),
        );
        let t = dc1.seal(b"session state").expect("sealed");
        assert_eq!(dc2.open(&t).expect("opens"), b"session state");
        assert_ne!(dc1.seal(b"x").ok(), dc1.seal(b"x").ok(), "fresh nonces");
    }

    #[test]
    fn a_ticket_of_another_region_or_tampered_or_oversized_is_not_ours() {
        let ours = TicketKeys::derive(&Keyring::generate());
        let theirs = TicketKeys::derive(&Keyring::generate());
        let t = theirs.seal(b"state").expect("sealed");
        assert_eq!(ours.open(&t), Err(TicketError::NotOurs));
        let mut t = ours.seal(b"state").expect("sealed");
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(ours.open(&t), Err(TicketError::NotOurs));
        assert_eq!(ours.open(&[0; 10]), Err(TicketError::NotOurs));
        assert_eq!(
            ours.open(&vec![0; MAX_TICKET_BYTES + 1]),
            Err(TicketError::NotOurs)
        );
    }

    #[test]
    fn tickets_survive_a_rotation_and_end_with_their_key() {
        let mut region = Keyring::generate();
        let old = TicketKeys::derive(&region).seal(b"state").expect("sealed");
        let first = region.active_key_id();
        region.rotate();
        let keys = TicketKeys::derive(&region);
        assert_ne!(keys.active_key_id(), first);
        assert_eq!(keys.open(&old).expect("old key still listed"), b"state");
        region.retire(first).expect("retired");
        assert_eq!(
            TicketKeys::derive(&region).open(&old),
            Err(TicketError::NotOurs)
        );
    }

    #[test]
    fn the_ticket_key_is_not_the_sealing_key_nor_another_purposes_key() {
        let region = Keyring::generate();
        let id = region.active_key_id();
        let a = region.derived_key(id, TICKET_PURPOSE).expect("derived");
        let b = region.derived_key(id, b"other").expect("derived");
        assert_ne!(a, b);
        let hex: String = a.iter().map(|x| format!("{x:02x}")).collect();
        assert!(
            !region.to_text().contains(&hex),
            "not a sealing key of the file"
        );
        assert_eq!(region.derived_key(id + 99, TICKET_PURPOSE), None);
    }
}
