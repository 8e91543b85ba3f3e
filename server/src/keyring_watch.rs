//! Key rotation without downtime (S14): a running datacenter picks up a changed keyring file.
//!
//! How: the datacenter polls the keyring file's identity (modification time, size and inode)
//! every `keyring_poll_ms` (default 1 s), and `SIGHUP` makes it check at once. `keys rotate`
//! and `keys retire` replace the file atomically (write a temp file, rename), so a poll
//! never sees half a file. Polling was chosen over signals alone because it needs nothing
//! from the operator after `keys rotate` (the file is usually copied to every datacenter of
//! the region by configuration management, which does not know which processes to signal);
//! SIGHUP is there for an operator who wants the change now.
//!
//! Invariants:
//! - a file that does not load (missing, unparsable, permissions too open) never replaces
//!   the keyring in use: the datacenter keeps serving with the keys it has, counts the
//!   failure and says why in the log and the status JSON;
//! - connection tasks verify credentials with the newest keyring ([`KeyringWatch::current`]);
//!   the datacenter loop swaps the core's copy on its next tick (within 100 ms), so new seals use the
//!   new active key from then on while older keys still open digests.

use lifeboat_common::keyring::{KeyId, Keyring, KeyringError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// What identifies one version of the file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The keyring in use, and the file it comes from.
pub struct KeyringWatch {
    path: PathBuf,
    current: RwLock<Arc<Keyring>>,
    /// Bumped on every successful reload.
    generation: AtomicU64,
    seen: Mutex<Option<Stamp>>,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The keyring part of the status JSON.
#[derive(Clone, Debug, Serialize)]
pub struct KeyringStatus {
    /// The key new digests are sealed with.
    pub active_key: KeyId,
    /// Every key in the keyring in use (the active one and older ones that still open
    /// digests).
    pub key_ids: Vec<KeyId>,
    /// Successful reloads that changed the keyring, since the process started.
    pub reloads: u64,
    /// Failed reloads since the process started (a broken file counted once per version,
    /// not every poll; a forced check counts each time).
    pub reload_errors: u64,
    /// Why the last reload failed; `None` once the file loads again.
    pub last_error: Option<String>,
    /// Active sessions by the key their current digest is sealed with: a key may be retired
    /// once no datacenter of the region reports sessions for it.
    pub active_sessions_by_key: std::collections::BTreeMap<KeyId, u64>,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The file is as last seen, or reads to the keyring already in use: nothing changed.
    Unchanged,
    /// The new keyring is in use; `auth_changed` means every device credential changed.
    Reloaded {
        /// The new keyring's active key.
        active: KeyId,
        /// The device-credential key changed: every device needs a new credential.
        auth_changed: bool,
    },
}

impl KeyringWatch {
    /// Watch `path`, starting with `keyring` (already loaded from it) at generation 0.
    pub fn new(path: PathBuf, keyring: Keyring) -> Arc<Self> {
        let seen = stamp(&path).ok();
        Arc::new(Self {
            path,
            current: RwLock::new(Arc::new(keyring)),
            generation: AtomicU64::new(0),
            seen: Mutex::new(seen),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// The keyring in use.
    pub fn current(&self) -> Arc<Keyring> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many times the keyring in use was replaced (0 at start); see
    /// [`KeyringWatch::changed_since`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The keyring, if it changed since generation `*seen` (which is then brought up to date).
    pub fn changed_since(&self, seen: &mut u64) -> Option<Arc<Keyring>> {
        let g = self.generation();
        if g == *seen {
            return None;
        }
        *seen = g;
        Some(self.current())
    }

    /// Reload the file if it changed on disk (or always, with `force`).
    pub fn check(&self, force: bool) -> Result<Reload, KeyringError> {
        let now = stamp(&self.path).ok();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && now.is_some() && *seen == now {
                return Ok(Reload::Unchanged);
            }
        }
        let loaded = match Keyring::load(&self.path) {
            Ok(k) => k,
            Err(e) => {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let first_report = *seen != now || force;
                // Remember the broken version so it is reported once, not every poll.
                *seen = now;
                if first_report {
                    self.reload_errors.fetch_add(1, Ordering::Relaxed);
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                }
                return Err(e);
            }
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        // The file reads again: a failure reported before is over, also when the file came
        // back with the keyring already in use.
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let old = self.current();
        if old.to_text() == loaded.to_text() {
            return Ok(Reload::Unchanged);
        }
        let auth_changed = !old.same_auth_key(&loaded);
        let active = loaded.active_key_id();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(Reload::Reloaded {
            active,
            auth_changed,
        })
    }

    /// Check, and log what happened.
    pub fn check_and_log(&self, force: bool) {
        match self.check(force) {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Reloaded {
                active,
                auth_changed,
            }) => {
                tracing::info!(path = %self.path.display(), active_key = active, "keyring reloaded");
                if auth_changed {
                    tracing::warn!(
                        "the device-credential key changed: every device needs a new credential"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "keyring reload failed; still using the previous keys")
            }
        }
    }

    /// Poll the file every `every` until the task is aborted.
    pub fn spawn_poll(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let watch = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let w = watch.clone();
                // File I/O off the async workers.
                let _ = tokio::task::spawn_blocking(move || w.check_and_log(false)).await;
            }
        })
    }

    /// The keyring part of the status JSON; `active_sessions_by_key` comes from the core.
    pub fn status(
        &self,
        active_sessions_by_key: std::collections::BTreeMap<KeyId, u64>,
    ) -> KeyringStatus {
        let k = self.current();
        KeyringStatus {
            active_key: k.active_key_id(),
            key_ids: k.key_ids().collect(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_errors: self.reload_errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            active_sessions_by_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::DeviceId;

    #[test]
    fn rotated_file_is_picked_up_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let mut k = Keyring::generate();
        k.save(&path).unwrap();
        let w = KeyringWatch::new(path.clone(), Keyring::load(&path).unwrap());
        let mut seen = w.generation();
        assert_eq!(w.check(false).unwrap(), Reload::Unchanged);
        assert!(w.changed_since(&mut seen).is_none());

        k.rotate();
        k.save(&path).unwrap();
        assert_eq!(
            w.check(false).unwrap(),
            Reload::Reloaded {
                active: 2,
                auth_changed: false
            }
        );
        let now = w.changed_since(&mut seen).unwrap();
        assert_eq!(now.active_key_id(), 2);
        assert!(now.verify_device(DeviceId(5), &k.device_token(DeviceId(5))));

        std::fs::write(&path, "garbage").unwrap();
        assert!(w.check(false).is_err());
        // Reported once, and the keys in use are unchanged.
        assert!(w.check(false).is_ok());
        assert_eq!(w.current().active_key_id(), 2);
        let status = w.status(Default::default());
        assert_eq!(status.reload_errors, 1);
        assert!(status.last_error.is_some());
    }
}
