//! The device store: held digests and the outbox, in sled.
//!
//! One device normally owns one sled database ([`StoreLocation::Path`]). A process that hosts
//! many simulated devices (the harness, load tests) can give each device its own trees in one
//! shared database ([`StoreLocation::Shared`]): still a real sled store on disk with real
//! flushes, without one background flusher and page cache per device.
//!
//! Invariant: the client calls [`EdgeStore::flush`] after writing and before it reports
//! anything committed; sled otherwise keeps writes in memory for up to its flush interval.

use lifeboat_common::edge::{HeldSession, StoreWrite};
use lifeboat_common::wire::{decode_exact, encode, CodecError, MAX_FRAME_BYTES};
use lifeboat_common::{DeviceId, OpId, SessionId, Trip, TripOp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a device keeps its store.
#[derive(Clone)]
pub enum StoreLocation {
    /// A sled database of its own in this directory.
    Path(PathBuf),
    /// Trees named after `name` inside a shared sled database.
    Shared { db: SharedDb, name: String },
}

/// A sled database shared by many devices of one process, with group commit: concurrent
/// flush requests are served by one `fsync` that covers all of them.
#[derive(Clone)]
pub struct SharedDb {
    db: sled::Db,
    group: Arc<GroupFlush>,
}

#[derive(Default)]
struct GroupFlush {
    lock: tokio::sync::Mutex<()>,
    requested: AtomicU64,
    flushed: AtomicU64,
}

impl SharedDb {
    pub fn open(path: &std::path::Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        Ok(Self {
            db,
            group: Arc::default(),
        })
    }

    /// Make every write that happened before this call durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Writes before this ticket are covered by any flush that starts after it.
        let ticket = self.group.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.group.lock.lock().await;
        if self.group.flushed.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // someone else's flush started after our ticket
        }
        let covers = self.group.requested.load(Ordering::SeqCst);
        flush_blocking(&self.db).await?;
        self.group.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Delete one device's trees (an app reinstall wipes its store). The device's client
    /// must be shut down first.
    pub fn wipe_device(&self, name: &str) -> Result<(), StoreError> {
        for tree in ["sessions", "outbox"] {
            self.db.drop_tree(format!("{name}/{tree}"))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Path(p) => write!(f, "Path({})", p.display()),
            StoreLocation::Shared { name, .. } => write!(f, "Shared({name})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device store: {0}")]
    Sled(#[from] sled::Error),
    #[error("device store record: {0}")]
    Codec(#[from] CodecError),
    #[error("device store flush task: {0}")]
    Flush(String),
}

/// Flush a sled database on tokio's blocking pool.
///
/// Not `sled::Db::flush_async`: it waits on sled's own small IO thread pool, and with many
/// databases flushing at once every pool thread ends up waiting for a write that needs a pool
/// thread to run (a deadlock seen in this project's failover tests).
pub(crate) async fn flush_blocking(db: &sled::Db) -> Result<(), StoreError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| StoreError::Flush(e.to_string()))??;
    Ok(())
}

/// What was found in the store at start-up.
pub struct Loaded {
    pub sessions: Vec<(SessionId, HeldSession<Trip>)>,
    pub ops: Vec<(OpId, TripOp)>,
    /// Records that could not be decoded (reported, kept on disk, not loaded).
    pub unreadable: usize,
}

pub struct EdgeStore {
    db: sled::Db,
    shared: Option<SharedDb>,
    sessions: sled::Tree,
    outbox: sled::Tree,
    device: DeviceId,
}

fn op_key(op: OpId) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&op.session.0.to_be_bytes());
    k[8..].copy_from_slice(&op.seq.to_be_bytes());
    k
}

impl EdgeStore {
    pub fn open(location: &StoreLocation, device: DeviceId) -> Result<Self, StoreError> {
        let (db, shared, prefix) = match location {
            StoreLocation::Path(p) => (
                sled::Config::new()
                    .path(p)
                    .cache_capacity(1024 * 1024)
                    .flush_every_ms(None)
                    .open()?,
                None,
                String::new(),
            ),
            StoreLocation::Shared { db, name } => {
                (db.db.clone(), Some(db.clone()), format!("{name}/"))
            }
        };
        let sessions = db.open_tree(format!("{prefix}sessions"))?;
        let outbox = db.open_tree(format!("{prefix}outbox"))?;
        Ok(Self {
            db,
            shared,
            sessions,
            outbox,
            device,
        })
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded {
            sessions: Vec::new(),
            ops: Vec::new(),
            unreadable: 0,
        };
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let key: Option<[u8; 8]> = k.as_ref().try_into().ok();
            match (key, decode_exact::<HeldSession<Trip>>(&v, MAX_FRAME_BYTES)) {
                (Some(k), Ok(h)) => loaded.sessions.push((SessionId(u64::from_be_bytes(k)), h)),
                _ => loaded.unreadable += 1,
            }
        }
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            let key: Option<[u8; 16]> = k.as_ref().try_into().ok();
            match (key, decode_exact::<TripOp>(&v, MAX_FRAME_BYTES)) {
                (Some(k), Ok(op)) => {
                    let mut s = [0u8; 8];
                    let mut q = [0u8; 8];
                    s.copy_from_slice(&k[..8]);
                    q.copy_from_slice(&k[8..]);
                    loaded.ops.push((
                        OpId {
                            session: SessionId(u64::from_be_bytes(s)),
                            device: self.device,
                            seq: u64::from_be_bytes(q),
                        },
                        op,
                    ));
                }
                _ => loaded.unreadable += 1,
            }
        }
        Ok(loaded)
    }

    pub fn apply(&self, writes: &[StoreWrite<Trip>]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                StoreWrite::PutSession(s, h) => {
                    self.sessions.insert(s.0.to_be_bytes(), encode(h)?)?;
                }
                StoreWrite::DeleteSession(s) => {
                    self.sessions.remove(s.0.to_be_bytes())?;
                }
                StoreWrite::PutOp(id, op) => {
                    self.outbox.insert(op_key(*id), encode(op)?)?;
                }
                StoreWrite::DeleteOp(id) => {
                    self.outbox.remove(op_key(*id))?;
                }
            }
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.shared {
            Some(shared) => shared.flush().await,
            None => flush_blocking(&self.db).await,
        }
    }

    /// Bytes of the store on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
