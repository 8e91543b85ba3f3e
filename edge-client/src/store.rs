//! The device store: held digests and the outbox, in sled.
//!
//! One device normally owns one sled database ([`StoreLocation::Path`]). A process that hosts
//! many simulated devices (the harness, load tests) can give each device its own trees in one
//! shared database ([`StoreLocation::Shared`]): still a real sled store on disk with real
//! flushes, without one background flusher and page cache per device.
//!
//! Invariant: the client calls [`EdgeStore::flush`] after writing and before it reports
//! anything committed; sled otherwise keeps writes in memory for up to its flush interval.
//!
//! Tombstone expiry (a bounded store on a phone): the store notes, in a small `finished`
//! tree, the wall-clock time it first wrote each session as a tombstone. At start-up
//! ([`EdgeStore::load_expiring`]) tombstones older than the configured age are deleted and
//! not loaded; the count bound is [`lifeboat_common::edge::EdgeLimits::max_tombstones`].
//! Only tombstones expire, never a live session or a queued op, and the datacenter keeps its
//! own tombstone, so an older live digest is still refused there (C3).

use lifeboat_common::clock::Clock;
use lifeboat_common::edge::{HeldSession, StoreWrite};
use lifeboat_common::wire::{decode_exact, encode, CodecError, MAX_FRAME_BYTES};
use lifeboat_common::{DeviceId, OpId, SessionId, Trip, TripOp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        for tree in ["sessions", "outbox", "finished"] {
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
    /// Tombstones older than the configured age, deleted from the store at load.
    pub expired: usize,
}

pub struct EdgeStore {
    db: sled::Db,
    shared: Option<SharedDb>,
    sessions: sled::Tree,
    outbox: sled::Tree,
    /// Session id -> unix time (ms, big endian) it was first stored as a tombstone.
    finished: sled::Tree,
    device: DeviceId,
    /// Stamps the time a session became a tombstone.
    clock: Clock,
    /// Flush on the calling thread (see [`EdgeStore::with_inline_flush`]).
    inline_flush: bool,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let finished = db.open_tree(format!("{prefix}finished"))?;
        Ok(Self {
            db,
            shared,
            sessions,
            outbox,
            finished,
            device,
            clock: Clock::system(),
            inline_flush: false,
        })
    }

    /// Flush on the calling thread instead of tokio's blocking pool. For a deterministic
    /// simulation only: there, a flush finishing on another thread at a real-time moment
    /// would reorder what the simulated device does next. (It blocks the runtime thread.)
    pub fn with_inline_flush(mut self, inline: bool) -> Self {
        self.inline_flush = inline;
        self
    }

    /// Use `clock` (instead of the system clock) for the finish times of tombstones.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Everything in the store, nothing expired.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        self.load_expiring(None, self.clock.now())
    }

    /// Everything in the store, except tombstones first stored more than `tombstone_ttl`
    /// before `now`: those are deleted. A tombstone with no recorded time (written by an
    /// older version) gets `now`, so its age counts from this start.
    pub fn load_expiring(
        &self,
        tombstone_ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded {
            sessions: Vec::new(),
            ops: Vec::new(),
            unreadable: 0,
            expired: 0,
        };
        let now_ms = unix_ms(now);
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let key: Option<[u8; 8]> = k.as_ref().try_into().ok();
            match (key, decode_exact::<HeldSession<Trip>>(&v, MAX_FRAME_BYTES)) {
                (Some(key), Ok(h)) => {
                    if h.digest.header.tombstone {
                        if let Some(ttl) = tombstone_ttl {
                            let since_ms = match self.finished.get(key)? {
                                Some(t) => t
                                    .as_ref()
                                    .try_into()
                                    .map(u64::from_be_bytes)
                                    .unwrap_or(now_ms),
                                None => {
                                    self.finished.insert(key, &now_ms.to_be_bytes())?;
                                    now_ms
                                }
                            };
                            if now_ms.saturating_sub(since_ms) >= ttl.as_millis() as u64 {
                                self.sessions.remove(key)?;
                                self.finished.remove(key)?;
                                loaded.expired += 1;
                                continue;
                            }
                        }
                    }
                    loaded
                        .sessions
                        .push((SessionId(u64::from_be_bytes(key)), h))
                }
                _ => loaded.unreadable += 1,
            }
        }
        // Tombstones in the order they finished (the core drops the first ones beyond its
        // count bound); unknown times sort first, live sessions keep key order.
        loaded.sessions.sort_by_cached_key(|(s, h)| {
            if !h.digest.header.tombstone {
                return (false, 0);
            }
            let t = self.finished.get(s.0.to_be_bytes()).ok().flatten();
            let ms = t
                .and_then(|t| t.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            (true, ms)
        });
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
                    if h.digest.header.tombstone {
                        // Keep the first time only: the age counts from when it finished.
                        let now = self.clock.now_ms().to_be_bytes();
                        let _ = self.finished.compare_and_swap(
                            s.0.to_be_bytes(),
                            None as Option<&[u8]>,
                            Some(&now[..]),
                        )?;
                    }
                }
                StoreWrite::DeleteSession(s) => {
                    self.sessions.remove(s.0.to_be_bytes())?;
                    self.finished.remove(s.0.to_be_bytes())?;
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
        if self.inline_flush {
            self.db.flush()?;
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::digest::{DigestBody, DigestHeader, SealedDigest};
    use lifeboat_common::keyring::Keyring;
    use lifeboat_common::{GeoPoint, TripPhase, TripState, VersionVector};

    fn held(keyring: &Keyring, session: u64, tombstone: bool) -> HeldSession<Trip> {
        let here = GeoPoint {
            lat_e6: 52_520_000,
            lon_e6: 13_405_000,
        };
        let view = TripState {
            phase: if tombstone {
                TripPhase::Completed
            } else {
                TripPhase::Requested
            },
            pickup: here,
            dropoff: here,
            requested_ms: 0,
            last_position: None,
            started_ms: 0,
            duration_ms: 0,
            distance_m: 0,
            location_updates: 0,
            fare_cents: None,
            cancelled_by: None,
        };
        let header = DigestHeader {
            session: SessionId(session),
            version: VersionVector::new(),
            rider: DeviceId(1),
            driver: None,
            tombstone,
        };
        let body = DigestBody {
            state: view.clone(),
            dedup: Vec::new(),
        };
        HeldSession {
            digest: SealedDigest::seal(keyring, header, &body).expect("seal"),
            view,
            last_seq: 1,
            next_seq: 2,
            committed: true,
        }
    }

    fn ids(l: &Loaded) -> Vec<u64> {
        let mut v: Vec<u64> = l.sessions.iter().map(|(s, _)| s.0).collect();
        v.sort();
        v
    }

    #[test]
    fn tombstones_older_than_the_ttl_are_deleted_at_load_and_live_sessions_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::generate();
        let store =
            EdgeStore::open(&StoreLocation::Path(dir.path().into()), DeviceId(1)).expect("open");
        let op = OpId {
            session: SessionId(7),
            device: DeviceId(1),
            seq: 2,
        };
        store
            .apply(&[
                StoreWrite::PutSession(SessionId(7), held(&keyring, 7, false)),
                StoreWrite::PutSession(SessionId(8), held(&keyring, 8, true)),
                StoreWrite::PutSession(SessionId(9), held(&keyring, 9, true)),
                StoreWrite::PutOp(op, TripOp::Cancel),
            ])
            .expect("apply");
        let ttl = Some(Duration::from_secs(3600));
        let now = SystemTime::now();
        let young = store.load_expiring(ttl, now).expect("load");
        assert_eq!(ids(&young), vec![7, 8, 9]);
        assert_eq!(young.expired, 0);
        // Without a ttl nothing expires, however old.
        let kept = store
            .load_expiring(None, now + Duration::from_secs(30 * 24 * 3600))
            .expect("load");
        assert_eq!(ids(&kept), vec![7, 8, 9]);
        let old = store
            .load_expiring(ttl, now + Duration::from_secs(2 * 3600))
            .expect("load");
        assert_eq!(ids(&old), vec![7], "only the live session is left");
        assert_eq!(old.expired, 2);
        assert_eq!(old.ops.len(), 1, "queued ops never expire");
        let again = store.load().expect("load");
        assert_eq!(
            ids(&again),
            vec![7],
            "the expired tombstones are gone from disk"
        );
        assert_eq!(store.finished.len(), 0, "their finish times are gone too");
    }

    #[test]
    fn a_tombstone_rewritten_later_keeps_its_first_finish_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::generate();
        let store =
            EdgeStore::open(&StoreLocation::Path(dir.path().into()), DeviceId(1)).expect("open");
        store
            .apply(&[StoreWrite::PutSession(
                SessionId(8),
                held(&keyring, 8, true),
            )])
            .expect("apply");
        let first = store.finished.get(8u64.to_be_bytes()).expect("get");
        std::thread::sleep(Duration::from_millis(5));
        store
            .apply(&[StoreWrite::PutSession(
                SessionId(8),
                held(&keyring, 8, true),
            )])
            .expect("apply");
        let second = store.finished.get(8u64.to_be_bytes()).expect("get");
        assert!(first.is_some());
        assert_eq!(first, second);
        store
            .apply(&[StoreWrite::DeleteSession(SessionId(8))])
            .expect("apply");
        assert_eq!(store.finished.len(), 0);
    }

    #[test]
    fn tombstones_load_in_the_order_they_finished_after_live_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::generate();
        let store =
            EdgeStore::open(&StoreLocation::Path(dir.path().into()), DeviceId(1)).expect("open");
        for id in [9u64, 8] {
            store
                .apply(&[StoreWrite::PutSession(
                    SessionId(id),
                    held(&keyring, id, true),
                )])
                .expect("apply");
            std::thread::sleep(Duration::from_millis(5));
        }
        store
            .apply(&[StoreWrite::PutSession(
                SessionId(7),
                held(&keyring, 7, false),
            )])
            .expect("apply");
        let order: Vec<u64> = store
            .load()
            .expect("load")
            .sessions
            .iter()
            .map(|(s, _)| s.0)
            .collect();
        assert_eq!(order, vec![7, 9, 8]);
    }
}
