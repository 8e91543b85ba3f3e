//! The sealed digest: everything a datacenter needs to continue a session, in a form the
//! device can store but neither read nor forge (C4).
//!
//! Layout: a clear [`DigestHeader`] (session, version, participants, tombstone flag), the id
//! of the sealing key, the time of the seal (unix seconds, the sealing datacenter's clock), a
//! 192-bit random nonce and the XChaCha20-Poly1305 ciphertext of the [`DigestBody`]
//! (application state and the dedup watermarks). The header, key id and seal time are the
//! associated data, so a device can read who is in a session and how new its copy is (it
//! needs that to keep the newest copy), but any change to them breaks the tag. The seal time
//! lets a datacenter refuse to restore a copy older than the tombstones it has expired
//! (C3 with bounded tombstones, see `DatacenterCore`'s restore floor) and measure how far a
//! device lags (shadow restore).
//!
//! Why XChaCha20: a 96-bit random nonce collides after about 2^32 seals under one key, which a
//! busy region reaches in days; 192 bits make random nonces safe for the life of a key.
//!
//! Overhead over the encoded header and body: 24 (nonce) + 16 (tag) + up to 5 (key id
//! varint) + 5 (seal time varint, until 2106) bytes.

use crate::codec::{decode_exact, encode, CodecError};
use crate::dedup::DedupEntry;
use crate::ids::{DeviceId, Role, SessionId};
use crate::keyring::{KeyId, Keyring};
use crate::version::{VersionError, VersionVector};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest sealed digest a datacenter produces or accepts, in encoded bytes (C6). The target
/// for a typical trip is 512; this bound leaves room for long application states.
pub const MAX_DIGEST_BYTES: usize = 4096;
/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_BYTES: usize = 24;

/// The readable, authenticated part of a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestHeader {
    /// The session this is a copy of.
    pub session: SessionId,
    /// The copy's version; devices keep the copy whose version dominates.
    pub version: VersionVector,
    /// The requester, who created the session.
    pub rider: DeviceId,
    /// The provider, once dispatch assigned one; `None` before.
    pub driver: Option<DeviceId>,
    /// The session is finished; this digest is its tombstone.
    pub tombstone: bool,
}

impl DigestHeader {
    /// The role `device` plays in this session, if any.
    pub fn role_of(&self, device: DeviceId) -> Option<Role> {
        if device == self.rider {
            Some(Role::Rider)
        } else if Some(device) == self.driver {
            Some(Role::Driver)
        } else {
            None
        }
    }

    /// The session's anchor in this copy: the provider once one is assigned, else the
    /// requester. The anchor holds the session's committed chain (docs/PROTOCOL.md).
    pub fn anchor(&self) -> DeviceId {
        self.driver.unwrap_or(self.rider)
    }

    /// The rider, then the driver if one is assigned.
    pub fn participants(&self) -> impl Iterator<Item = DeviceId> {
        std::iter::once(self.rider).chain(self.driver)
    }
}

/// The secret part of a digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestBody<S> {
    /// The application state ([`crate::app::Application::State`]).
    pub state: S,
    /// One watermark per participant that has submitted ops.
    pub dedup: Vec<DedupEntry>,
}

/// A digest as devices store it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedDigest {
    /// The clear header (authenticated as associated data).
    pub header: DigestHeader,
    /// The id of the region key the body was sealed with.
    pub key_id: KeyId,
    /// When it was sealed (unix seconds, the sealing datacenter's clock; authenticated).
    pub sealed_at_s: u64,
    /// A random nonce, fresh for every seal.
    pub nonce: [u8; NONCE_BYTES],
    /// The encrypted [`DigestBody`] followed by its 16-byte Poly1305 tag.
    pub ciphertext: Vec<u8>,
}

/// Why a digest could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SealError {
    /// The key is not in the keyring: retired, from another region, or (sealing) the active
    /// key is missing.
    #[error("digest sealed with key {0}, which this datacenter does not hold")]
    UnknownKey(KeyId),
    /// The tag does not verify: header, key id or ciphertext changed, or the wrong key.
    #[error("digest failed authentication (tampered, or sealed by another region)")]
    Tampered,
    /// Over [`MAX_DIGEST_BYTES`]: the sealed digest (when sealing) or its ciphertext (when
    /// opening), in bytes.
    #[error("digest is {0} bytes, over the limit of {MAX_DIGEST_BYTES}")]
    TooLarge(usize),
    /// The header's version vector breaks its invariants (checked before decrypting).
    #[error("digest header: {0}")]
    BadHeader(#[from] VersionError),
    /// The body could not be encoded, or the decrypted body does not decode.
    #[error("digest codec: {0}")]
    Codec(#[from] CodecError),
}

fn aad(header: &DigestHeader, key_id: KeyId, sealed_at_s: u64) -> Result<Vec<u8>, CodecError> {
    let mut a = encode(header)?;
    a.extend_from_slice(&key_id.to_be_bytes());
    a.extend_from_slice(&sealed_at_s.to_be_bytes());
    Ok(a)
}

impl SealedDigest {
    /// Seal a body under the keyring's active key at `now_ms` (unix ms; kept in seconds).
    pub fn seal<S: Serialize>(
        keyring: &Keyring,
        header: DigestHeader,
        body: &DigestBody<S>,
        now_ms: u64,
    ) -> Result<Self, SealError> {
        let sealed_at_s = now_ms / 1000;
        let key_id = keyring.active_key_id();
        let key = keyring.key(key_id).ok_or(SealError::UnknownKey(key_id))?;
        let plaintext = encode(body)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(key.into());
        let aad = aad(&header, key_id, sealed_at_s)?;
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Tampered)?;
        let sealed = Self {
            header,
            key_id,
            sealed_at_s,
            nonce,
            ciphertext,
        };
        let len = sealed.encoded_len();
        if len > MAX_DIGEST_BYTES {
            return Err(SealError::TooLarge(len));
        }
        Ok(sealed)
    }

    /// Authenticate and decrypt. Never trusts the header before the tag checks out.
    pub fn open<S: DeserializeOwned>(&self, keyring: &Keyring) -> Result<DigestBody<S>, SealError> {
        if self.ciphertext.len() > MAX_DIGEST_BYTES {
            return Err(SealError::TooLarge(self.ciphertext.len()));
        }
        self.header.version.validate()?;
        let key = keyring
            .key(self.key_id)
            .ok_or(SealError::UnknownKey(self.key_id))?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let aad = aad(&self.header, self.key_id, self.sealed_at_s)?;
        let plaintext = cipher
            .decrypt(
                XNonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Tampered)?;
        Ok(decode_exact(&plaintext, MAX_DIGEST_BYTES)?)
    }

    /// When it was sealed (unix ms, at second resolution).
    pub fn sealed_at_ms(&self) -> u64 {
        self.sealed_at_s.saturating_mul(1000)
    }

    /// Size of this digest as stored and sent, in bytes.
    pub fn encoded_len(&self) -> usize {
        crate::codec::encoded_len(self).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ReplicaId;

    /// 2026-12-02 (a seal time of today's size, so the overhead test measures it).
    const NOW_MS: u64 = 1_796_000_000_000;

    fn header() -> DigestHeader {
        let mut version = VersionVector::new();
        version.bump(ReplicaId(1)).unwrap();
        DigestHeader {
            session: SessionId(42),
            version,
            rider: DeviceId(1),
            driver: Some(DeviceId(2)),
            tombstone: false,
        }
    }

    fn body() -> DigestBody<String> {
        DigestBody {
            state: "on trip".to_string(),
            dedup: vec![DedupEntry::new(DeviceId(1))],
        }
    }

    #[test]
    fn sealed_digest_opens_with_the_region_keys() {
        let k = Keyring::generate();
        let sealed = SealedDigest::seal(&k, header(), &body(), NOW_MS).unwrap();
        let opened: DigestBody<String> = sealed.open(&k).unwrap();
        assert_eq!(opened, body());
    }

    #[test]
    fn tampered_header_or_ciphertext_is_refused() {
        let k = Keyring::generate();
        let sealed = SealedDigest::seal(&k, header(), &body(), NOW_MS).unwrap();
        let mut h = sealed.clone();
        h.header.version.bump(ReplicaId(1)).unwrap();
        assert_eq!(h.open::<String>(&k), Err(SealError::Tampered));
        let mut c = sealed.clone();
        c.ciphertext[0] ^= 1;
        assert_eq!(c.open::<String>(&k), Err(SealError::Tampered));
        let mut backdated = sealed.clone();
        backdated.sealed_at_s -= 86_400;
        assert_eq!(backdated.open::<String>(&k), Err(SealError::Tampered));
        let mut other_session = sealed.clone();
        other_session.header.session = SessionId(43);
        assert_eq!(other_session.open::<String>(&k), Err(SealError::Tampered));
        assert_eq!(
            sealed.open::<String>(&Keyring::generate()),
            Err(SealError::Tampered)
        );
    }

    #[test]
    fn rotated_keyring_opens_old_digests_and_seals_with_the_new_key() {
        let mut k = Keyring::generate();
        let old = SealedDigest::seal(&k, header(), &body(), NOW_MS).unwrap();
        k.rotate();
        let new = SealedDigest::seal(&k, header(), &body(), NOW_MS).unwrap();
        assert_eq!(old.key_id, 1);
        assert_eq!(new.key_id, 2);
        assert!(old.open::<String>(&k).is_ok());
        k.retire(1).unwrap();
        assert_eq!(old.open::<String>(&k), Err(SealError::UnknownKey(1)));
    }

    #[test]
    fn sealing_overhead_is_within_48_bytes() {
        let k = Keyring::generate();
        let sealed = SealedDigest::seal(&k, header(), &body(), NOW_MS).unwrap();
        let plain = encode(&header()).unwrap().len() + encode(&body()).unwrap().len();
        let overhead = sealed.encoded_len() - plain;
        assert!(overhead <= 48, "overhead {overhead} bytes");
    }
}
