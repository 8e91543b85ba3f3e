//! Keys held only by the datacenters of a region: sealing keys with ids (so keys can rotate,
//! S14) and the device-credential key.
//!
//! File format (text, one item per line, `#` comments; written with mode 0600):
//! ```text
//! lifeboat-keyring v1
//! auth <64 hex>
//! key 1 <64 hex>
//! key 2 <64 hex> active
//! revoke 1234
//! ```
//!
//! Invariants: exactly one key is active (new seals use it); every listed key can open
//! digests sealed with it; key ids are unique. Device credentials are
//! `HMAC-SHA256(auth, "lifeboat-device-v1" || device_id)`, so any datacenter of the region
//! verifies a device without a shared database. A `revoke <device id>` line withdraws one
//! device's credential (a stolen phone) without touching anyone else's; the list is bounded
//! by the file size limit.

use crate::ids::DeviceId;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Identifies a sealing key.
pub type KeyId = u32;

/// A device credential: proves to any datacenter of the region that the holder is `device`.
pub type DeviceToken = [u8; 32];

const HEADER: &str = "lifeboat-keyring v1";
const TOKEN_CONTEXT: &[u8] = b"lifeboat-device-v1";
/// Largest keyring file accepted (about 4,000 keys).
const MAX_KEYRING_BYTES: u64 = 512 * 1024;

/// Why a keyring could not be loaded, saved, parsed or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// Reading or writing the keyring file failed.
    #[error("keyring {path}: {source}")]
    Io {
        /// The keyring file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not a valid keyring (bad header, line, hex or id, or a file over the size
    /// limit).
    #[error("keyring line {line}: {msg}")]
    Parse {
        /// The 1-based line number (comments and blank lines counted); 0: the whole file.
        line: usize,
        /// What is wrong with it.
        msg: String,
    },
    /// No `key` line is marked `active`.
    #[error("keyring has no active key")]
    NoActiveKey,
    /// The `auth` line is missing.
    #[error("keyring has no auth key")]
    NoAuthKey,
    /// Two `key` lines have the same id.
    #[error("key id {0} is listed twice")]
    DuplicateKey(KeyId),
    /// `activate` or `retire` named a key the keyring does not hold.
    #[error("key id {0} is not in the keyring")]
    UnknownKey(KeyId),
    /// `retire` named the active key.
    #[error("key id {0} is active; activate another key before retiring it")]
    RetireActive(KeyId),
    /// On Unix, the file grants group or others any access; it is not read.
    #[error(
        "keyring {path} is readable or writable by others (mode {mode:o}); run: chmod 600 {path}"
    )]
    InsecurePermissions {
        /// The keyring file.
        path: String,
        /// Its permission bits (`mode & 0o777`).
        mode: u32,
    },
}

/// The region's keys.
#[derive(Clone)]
pub struct Keyring {
    active: KeyId,
    keys: BTreeMap<KeyId, [u8; 32]>,
    auth: [u8; 32],
    /// Devices whose credentials are withdrawn.
    revoked: std::collections::BTreeSet<DeviceId>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rng().fill_bytes(&mut k);
    k
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Keyring {
    /// A key for `purpose` derived from sealing key `id` (HKDF-SHA256, the key id and the
    /// purpose as info), so that every datacenter of the region derives the same one and it
    /// rotates and retires with the sealing key; the sealing key itself never leaves here.
    /// `None`: no such key.
    pub fn derived_key(&self, id: KeyId, purpose: &[u8]) -> Option<[u8; 32]> {
        let ikm = self.keys.get(&id)?;
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"lifeboat-keyring-v1"), ikm);
        let mut info = Vec::with_capacity(purpose.len() + 4);
        info.extend_from_slice(purpose);
        info.extend_from_slice(&id.to_be_bytes());
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit (255 * 32): this cannot fail.
        hk.expand(&info, &mut out).ok()?;
        Some(out)
    }

    /// A fresh keyring with one active key (id 1) and a fresh auth key.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, random_key());
        Self {
            active: 1,
            keys,
            auth: random_key(),
            revoked: Default::default(),
        }
    }

    /// The id of the key new seals use.
    pub fn active_key_id(&self) -> KeyId {
        self.active
    }

    /// The ids of every key held (active and open-only), ascending.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    pub(crate) fn key(&self, id: KeyId) -> Option<&[u8; 32]> {
        self.keys.get(&id)
    }

    /// Add a new key (next id) and make it active; older keys stay open-only.
    pub fn rotate(&mut self) -> KeyId {
        let id = self.add();
        self.active = id;
        id
    }

    /// Add a new open-only key (next id). With several datacenters, add the key everywhere
    /// first and [`Keyring::activate`] it only then: a datacenter must be able to open a
    /// digest before any other datacenter seals with its key.
    pub fn add(&mut self) -> KeyId {
        let id = self.keys.keys().next_back().map(|k| k + 1).unwrap_or(1);
        self.keys.insert(id, random_key());
        id
    }

    /// Make an existing key the one new seals use.
    pub fn activate(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if !self.keys.contains_key(&id) {
            return Err(KeyringError::UnknownKey(id));
        }
        self.active = id;
        Ok(())
    }

    /// Drop an open-only key. Digests sealed with it can no longer be opened.
    pub fn retire(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if id == self.active {
            return Err(KeyringError::RetireActive(id));
        }
        self.keys
            .remove(&id)
            .map(|_| ())
            .ok_or(KeyringError::UnknownKey(id))
    }

    /// The credential for a device.
    pub fn device_token(&self, device: DeviceId) -> DeviceToken {
        let mut mac = self.mac();
        mac.update(&device.0.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Withdraw a device's credential (a stolen or retired phone).
    pub fn revoke(&mut self, device: DeviceId) -> bool {
        self.revoked.insert(device)
    }

    /// Give a revoked device its credential back.
    pub fn unrevoke(&mut self, device: DeviceId) -> bool {
        self.revoked.remove(&device)
    }

    /// Whether the device's credential is withdrawn.
    pub fn is_revoked(&self, device: DeviceId) -> bool {
        self.revoked.contains(&device)
    }

    /// The devices whose credentials are withdrawn, ascending.
    pub fn revoked(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.revoked.iter().copied()
    }

    /// Constant-time check of a device credential; a revoked device is refused.
    pub fn verify_device(&self, device: DeviceId, token: &[u8]) -> bool {
        if self.revoked.contains(&device) {
            return false;
        }
        let mut mac = self.mac();
        mac.update(&device.0.to_be_bytes());
        mac.verify_slice(token).is_ok()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.auth)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(TOKEN_CONTEXT);
        mac
    }

    /// Whether both keyrings issue the same device credentials.
    pub fn same_auth_key(&self, other: &Keyring) -> bool {
        self.auth == other.auth
    }

    /// Text form (see the module docs).
    pub fn to_text(&self) -> String {
        let mut s = format!("{HEADER}\nauth {}\n", to_hex(&self.auth));
        for (id, k) in &self.keys {
            let active = if *id == self.active { " active" } else { "" };
            let _ = writeln!(s, "key {id} {}{active}", to_hex(k));
        }
        for d in &self.revoked {
            let _ = writeln!(s, "revoke {}", d.0);
        }
        s
    }

    /// Parse the text form (see the module docs); `#` comments and blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, HEADER)) => {}
            other => {
                return Err(KeyringError::Parse {
                    line: other.map(|(line, _)| line).unwrap_or(1),
                    msg: format!("expected '{HEADER}'"),
                })
            }
        }
        let (mut auth, mut active, mut keys) = (None, None, BTreeMap::new());
        let mut revoked = std::collections::BTreeSet::new();
        for (line, l) in lines {
            let bad = |msg: &str| KeyringError::Parse {
                line,
                msg: msg.to_string(),
            };
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                ["auth", hex] => auth = Some(from_hex32(hex).ok_or_else(|| bad("bad auth key"))?),
                ["revoke", id] => {
                    revoked.insert(DeviceId(id.parse().map_err(|_| bad("bad device id"))?));
                }
                ["key", id, hex, rest @ ..] => {
                    let id: KeyId = id.parse().map_err(|_| bad("bad key id"))?;
                    let key = from_hex32(hex).ok_or_else(|| bad("key must be 64 hex digits"))?;
                    if keys.insert(id, key).is_some() {
                        return Err(KeyringError::DuplicateKey(id));
                    }
                    match rest {
                        [] => {}
                        ["active"] => {
                            if active.replace(id).is_some() {
                                return Err(bad("more than one active key"));
                            }
                        }
                        _ => return Err(bad("expected 'key <id> <hex> [active]'")),
                    }
                }
                _ => return Err(bad("unknown line")),
            }
        }
        Ok(Self {
            active: active.ok_or(KeyringError::NoActiveKey)?,
            keys,
            auth: auth.ok_or(KeyringError::NoAuthKey)?,
            revoked,
        })
    }

    /// Read a keyring file. On Unix the file must not be accessible to group or others
    /// (mode 0600 or stricter): a keyring anyone on the host can read lets them read and
    /// forge every digest and every device credential of the region.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyringError::InsecurePermissions {
                    path: path.display().to_string(),
                    mode,
                });
            }
        }
        let mut text = String::new();
        use std::io::Read;
        // A keyring is a few hundred bytes per key; refuse to read a runaway file.
        (&file)
            .take(MAX_KEYRING_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_KEYRING_BYTES {
            return Err(KeyringError::Parse {
                line: 0,
                msg: format!("file is over {MAX_KEYRING_BYTES} bytes"),
            });
        }
        Self::parse(&text)
    }

    /// Write the keyring with owner-only permissions (atomically: temp file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            // `mode` applies only when the file is created: tighten a left-over temp file too.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            f.write_all(self.to_text().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_round_trips_through_text() {
        let mut k = Keyring::generate();
        k.rotate();
        let back = Keyring::parse(&k.to_text()).unwrap();
        assert_eq!(back.active_key_id(), 2);
        assert_eq!(back.key_ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(back.device_token(DeviceId(9)), k.device_token(DeviceId(9)));
    }

    #[test]
    fn two_phase_rotation_adds_an_open_only_key_then_activates_it() {
        let mut k = Keyring::generate();
        let id = k.add();
        assert_eq!((id, k.active_key_id()), (2, 1));
        assert!(matches!(k.activate(9), Err(KeyringError::UnknownKey(9))));
        k.activate(id).unwrap();
        assert_eq!(k.active_key_id(), 2);
        k.retire(1).unwrap();
        assert_eq!(k.key_ids().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn forged_device_token_is_refused() {
        let k = Keyring::generate();
        let token = k.device_token(DeviceId(1));
        assert!(k.verify_device(DeviceId(1), &token));
        assert!(!k.verify_device(DeviceId(2), &token));
        assert!(!Keyring::generate().verify_device(DeviceId(1), &token));
    }

    #[test]
    fn broken_keyring_files_give_typed_errors() {
        assert!(matches!(
            Keyring::parse("nope"),
            Err(KeyringError::Parse { .. })
        ));
        let no_active = format!(
            "{HEADER}\nauth {}\nkey 1 {}\n",
            "00".repeat(32),
            "11".repeat(32)
        );
        assert!(matches!(
            Keyring::parse(&no_active),
            Err(KeyringError::NoActiveKey)
        ));
        let mut k = Keyring::generate();
        assert!(matches!(k.retire(1), Err(KeyringError::RetireActive(1))));
        assert!(matches!(k.retire(7), Err(KeyringError::UnknownKey(7))));
    }

    #[test]
    fn revoked_device_is_refused_and_the_revocation_survives_the_file() {
        let mut k = Keyring::generate();
        let token = k.device_token(DeviceId(7));
        assert!(k.revoke(DeviceId(7)));
        assert!(!k.verify_device(DeviceId(7), &token));
        let back = Keyring::parse(&k.to_text()).unwrap();
        assert!(back.is_revoked(DeviceId(7)));
        assert!(!back.verify_device(DeviceId(7), &token));
        assert!(back.verify_device(DeviceId(8), &back.device_token(DeviceId(8))));
        k.unrevoke(DeviceId(7));
        assert!(k.verify_device(DeviceId(7), &token));
    }

    #[test]
    fn missing_keyring_file_names_the_path() {
        let e = Keyring::load(Path::new("/nonexistent/lifeboat/keyring")).unwrap_err();
        assert!(matches!(e, KeyringError::Io { .. }));
        assert!(
            e.to_string().contains("/nonexistent/lifeboat/keyring"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn keyring_readable_by_others_is_refused_and_saved_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lifeboat-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keyring");
        Keyring::generate().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(Keyring::load(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&path).unwrap_err();
        assert!(
            matches!(e, KeyringError::InsecurePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
