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

/// Where a device keeps its store.
#[derive(Clone)]
pub enum StoreLocation {
    /// A sled database of its own in this directory.
    Path(PathBuf),
    /// Trees named after `name` inside a shared sled database.
    Shared { db: sled::Db, name: String },
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
        let (db, prefix) = match location {
            StoreLocation::Path(p) => (
                sled::Config::new()
                    .path(p)
                    .cache_capacity(1024 * 1024)
                    .flush_every_ms(None)
                    .open()?,
                String::new(),
            ),
            StoreLocation::Shared { db, name } => (db.clone(), format!("{name}/")),
        };
        let sessions = db.open_tree(format!("{prefix}sessions"))?;
        let outbox = db.open_tree(format!("{prefix}outbox"))?;
        Ok(Self {
            db,
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
        self.db.flush_async().await?;
        Ok(())
    }

    /// Bytes of the store on disk (sled's own estimate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
