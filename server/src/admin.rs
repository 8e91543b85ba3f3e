//! The admin API: a running datacenter answers an operator, on its HTTP address, under
//! `/admin/`, to a bearer token only.
//!
//! - `GET /admin/status`: the status snapshot (every counter, limit hits, keyring) and the
//!   configured limits, as JSON;
//! - `GET /admin/session/<id>`: one session's header as this datacenter holds it (version,
//!   rider, driver, finished, whether the copy is known committed, the key it is sealed with);
//! - `POST /admin/keyring/reload`: read the keyring file now (as SIGHUP does);
//! - `POST /admin/drain`: tell every connected device this datacenter is shutting down (they
//!   fail over at once, with no detection delay), flush and stop, as SIGTERM does. Paced
//!   waves and telling each device where to go are not built yet (issue 13).
//!
//! `lifeboat-server admin ...` calls them (see [`crate::cli`]).
//!
//! Invariants: with no token file configured the admin API is off (every `/admin/` path is
//! 404); a request without the exact token (`Authorization: Bearer <token>`, compared in
//! constant time) is 401 and changes nothing; the token file must be private to its owner
//! (no group or other permission bits) and hold at least [`MIN_TOKEN_CHARS`] characters; the
//! actor is asked through a bounded queue ([`ADMIN_QUEUE`]) with a deadline, so an admin call
//! can never block the datacenter.

use lifeboat_common::SessionId;
use serde::Serialize;
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

/// Shortest admin token accepted.
pub const MIN_TOKEN_CHARS: usize = 32;
/// Admin requests waiting for the actor at most.
pub const ADMIN_QUEUE: usize = 16;

/// Why the admin token could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file could not be read, created or written.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The token file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The token file has group or other permission bits set; it is not used.
    #[error("admin token file {path} is readable by others (mode {mode:o}): chmod 600 it")]
    NotPrivate {
        /// The token file.
        path: String,
        /// Its permission bits (`mode & 0o777`).
        mode: u32,
    },
    /// The token (trimmed) is shorter than [`MIN_TOKEN_CHARS`] characters.
    #[error("admin token in {path} is {len} characters; at least {MIN_TOKEN_CHARS} are needed")]
    TooShort {
        /// The token file.
        path: String,
        /// The token's length in characters.
        len: usize,
    },
    /// [`AdminToken::create`] found the file already there and left it alone.
    #[error("admin token file {path} already exists; refusing to overwrite it")]
    Exists {
        /// The token file.
        path: String,
    },
}

/// The operator's bearer token.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Read the token from `path` (trimmed), refusing a file others may read.
    pub fn load(path: &Path) -> Result<Self, AdminError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let io = |source| AdminError::Io {
            path: shown.clone(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AdminError::NotPrivate {
                path: shown,
                mode: mode & 0o777,
            });
        }
        let token = std::fs::read_to_string(path)
            .map_err(io)?
            .trim()
            .to_string();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(AdminError::TooShort {
                path: shown,
                len: token.chars().count(),
            });
        }
        Ok(Self(token))
    }

    /// Write a new random token (256 bits, hex) to `path`, mode 0600; never overwrites.
    pub fn create(path: &Path) -> Result<Self, AdminError> {
        use rand::RngCore;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(AdminError::Exists { path: shown })
            }
            Err(source) => {
                return Err(AdminError::Io {
                    path: shown,
                    source,
                })
            }
        };
        writeln!(file, "{token}").map_err(|source| AdminError::Io {
            path: shown,
            source,
        })?;
        Ok(Self(token))
    }

    /// The token, to send (`Authorization: Bearer <token>`).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token (constant time in the
    /// token's length).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.0.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// One session as this datacenter holds it (`GET /admin/session/<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// The session id (a number in the JSON; logs print it as `s` and 16 hex digits).
    pub session: u64,
    /// The version vector, in its printed form.
    pub version: String,
    /// The rider's device id.
    pub rider: u64,
    /// The driver's device id, once one is assigned.
    pub driver: Option<u64>,
    /// The session is finished (this copy is its tombstone).
    pub finished: bool,
    /// This datacenter knows this exact copy is committed (on the session's chain).
    pub committed: bool,
    /// The key the copy is sealed with.
    pub key_id: Option<u32>,
}

/// What the admin API asks the actor (it owns the core).
#[derive(Debug)]
pub enum AdminRequest {
    /// One session's header.
    Session(SessionId, oneshot::Sender<Option<SessionInfo>>),
}

/// The admin API's side of the actor: its token, the actor's queue, and the drain trigger.
#[derive(Clone, Debug)]
pub struct AdminHandle {
    /// The only bearer token admitted.
    pub token: AdminToken,
    /// The actor's admin queue (bounded: [`ADMIN_QUEUE`]); a full queue is a 503 to the
    /// operator, never a wait.
    pub actor: mpsc::Sender<AdminRequest>,
    /// Pulled when an operator asks the datacenter to drain and stop.
    pub drain: std::sync::Arc<DrainTrigger>,
}

/// An operator's drain order, from the admin API to whoever stops the server.
#[derive(Debug, Default)]
pub struct DrainTrigger {
    notify: tokio::sync::Notify,
    to: std::sync::Mutex<Option<std::net::SocketAddr>>,
}

impl DrainTrigger {
    /// Ask for a drain towards `to` (`None`: the configured target, else each device's
    /// next datacenter).
    pub fn request(&self, to: Option<std::net::SocketAddr>) {
        if let Ok(mut t) = self.to.lock() {
            *t = to;
        }
        self.notify.notify_one();
    }

    /// Resolves at the next drain order, with its target.
    pub async fn requested(&self) -> Option<std::net::SocketAddr> {
        self.notify.notified().await;
        self.to.lock().ok().and_then(|mut t| t.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let t = AdminToken::create(&path).unwrap();
        let good = format!("Bearer {}", t.secret());
        assert!(t.admits(Some(good.as_bytes())));
        assert!(!t.admits(None));
        assert!(
            !t.admits(Some(t.secret().as_bytes())),
            "the scheme is required"
        );
        let mut wrong = good.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        assert!(!t.admits(Some(&wrong)));
        assert!(!t.admits(Some(&good.as_bytes()[..good.len() - 1])));
        assert_eq!(AdminToken::load(&path).unwrap().secret(), t.secret());
        assert!(matches!(
            AdminToken::create(&path),
            Err(AdminError::Exists { .. })
        ));
    }

    #[test]
    fn a_token_file_others_can_read_or_a_short_token_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "x".repeat(40)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AdminToken::load(&path),
            Err(AdminError::NotPrivate { mode: 0o644, .. })
        ));
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            AdminToken::load(&path),
            Err(AdminError::TooShort { len: 5, .. })
        ));
    }
}
