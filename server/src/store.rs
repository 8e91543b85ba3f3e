//! The datacenter's own store: sealed digests in sled, keyed by session.
//!
//! Every batch of writes is flushed before the replies of that batch leave (one `fsync` per
//! batch: group commit), so a datacenter that restarts on its own disk never re-issues a
//! version it already sent. The store is still only a cache of what the devices hold: a
//! digest lost from here (a lost disk, S1) comes back from a device. Digests are stored
//! sealed, so a stolen disk reveals nothing. The store also keeps the datacenter's
//! [`ReplicaId`], made when the store is created.
//!
//! A store that cannot be opened (corrupt after a crash) is moved aside, loudly, and the
//! datacenter starts empty: the devices hold the truth.

use lifeboat_common::digest::{SealedDigest, MAX_DIGEST_BYTES};
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::wire::{decode_exact, encode, CodecError};
use lifeboat_common::SessionId;
use rand::Rng;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("could not move the unreadable store {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store write: {0}")]
    Write(#[from] sled::Error),
    #[error("store encode: {0}")]
    Codec(#[from] CodecError),
    #[error("store flush task: {0}")]
    Flush(String),
    #[error("store {0} exists already (it has a replica id)")]
    Exists(PathBuf),
}

const REPLICA_KEY: &[u8] = b"replica-id";

/// The sled-backed digest store.
pub struct DcStore {
    db: sled::Db,
    sessions: sled::Tree,
    /// Flush on the calling thread (see [`DcStore::set_inline_flush`]).
    inline_flush: bool,
}

/// What opening found.
pub struct Opened {
    pub store: DcStore,
    /// This store's version-vector slot: created (and flushed) with the store.
    pub replica: ReplicaId,
    /// Where an unreadable store was moved to, if it was.
    pub moved_aside: Option<PathBuf>,
}

fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(Some(200))
        .open()
}

impl DcStore {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Opened, StoreError> {
        let (db, moved_aside) = match open_db(dir, cache_bytes) {
            Ok(db) => (db, None),
            Err(e) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.with_extension(format!("corrupt-{stamp}"));
                tracing::error!(
                    store = %dir.display(),
                    error = %e,
                    moved_to = %aside.display(),
                    "STORE UNREADABLE: moving it aside and starting empty; sessions will be restored from the devices"
                );
                std::fs::rename(dir, &aside).map_err(|source| StoreError::MoveAside {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let db = open_db(dir, cache_bytes).map_err(|source| StoreError::Sled {
                    path: dir.to_path_buf(),
                    source,
                })?;
                (db, Some(aside))
            }
        };
        let sessions = db
            .open_tree("sessions")
            .map_err(|source| StoreError::Sled {
                path: dir.to_path_buf(),
                source,
            })?;
        let replica = match db.get(REPLICA_KEY)? {
            Some(v) if v.len() == 4 => ReplicaId(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            _ => {
                // A new (or lost) disk: a new slot, durable before anything is sealed with it.
                let id = rand::rng().random_range(1..=u32::MAX);
                db.insert(REPLICA_KEY, &id.to_be_bytes())?;
                db.flush()?;
                ReplicaId(id)
            }
        };
        Ok(Opened {
            store: DcStore {
                db,
                sessions,
                inline_flush: false,
            },
            replica,
            moved_aside,
        })
    }

    /// Create an empty store in `dir` whose version-vector slot is `replica`, instead of the
    /// random one [`DcStore::open`] draws for a new store. For deterministic simulation only
    /// (every run of a seed must produce the same versions); the caller must give every
    /// store of a region its own id. Refuses a store that already has a slot.
    pub fn create_with_replica(dir: &Path, replica: ReplicaId) -> Result<(), StoreError> {
        let db = open_db(dir, 1024 * 1024).map_err(|source| StoreError::Sled {
            path: dir.to_path_buf(),
            source,
        })?;
        if db.get(REPLICA_KEY)?.is_some() {
            return Err(StoreError::Exists(dir.to_path_buf()));
        }
        db.insert(REPLICA_KEY, &replica.0.to_be_bytes())?;
        db.flush()?;
        Ok(())
    }

    /// Every stored digest; undecodable entries are reported, not fatal.
    pub fn load_all(&self) -> Vec<Result<SealedDigest, String>> {
        self.sessions
            .iter()
            .map(|kv| {
                let (_, v) = kv.map_err(|e| e.to_string())?;
                decode_exact::<SealedDigest>(&v, MAX_DIGEST_BYTES + 256).map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Write a batch of digests atomically.
    pub fn persist(&self, batch: &[(SessionId, SealedDigest)]) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (session, digest) in batch {
            b.insert(&session.0.to_be_bytes(), encode(digest)?);
        }
        self.sessions.apply_batch(b)?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Make [`DcStore::flush_async`] flush on the calling thread instead of tokio's blocking
    /// pool. For a deterministic simulation only: there, a flush finishing on another thread
    /// at a real-time moment would reorder what the simulated host does next. (It blocks the
    /// runtime thread for the flush.)
    pub fn set_inline_flush(&mut self, inline: bool) {
        self.inline_flush = inline;
    }

    /// Flush on tokio's blocking pool. (Not `sled::Db::flush_async`, which parks sled's own
    /// IO threads and can deadlock them.)
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        if self.inline_flush {
            return self.flush();
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
