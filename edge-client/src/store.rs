//! The device store: held digests and the outbox, in sled.
//!
//! One device normally owns one sled database ([`StoreLocation::Path`]). A process that hosts
//! many simulated devices (the harness, load tests) can give each device its own key space in
//! one shared database ([`StoreLocation::Shared`]): still a real sled store on disk with real
//! flushes, without one background flusher and page cache per device. Devices share the three
//! trees and every key starts with the device's length-prefixed name, so adding a device costs
//! the same with 20,000 devices as with one (a sled tree per device does not: sled rewrites
//! its whole tree table on every `open_tree`, quadratic over a city of devices).
//!
//! The `outbox` tree holds, per op of this device, the op while it is queued and then its
//! outcome until the app acknowledges it ([`OpRecord`]): one key, so the write that decides
//! an op also removes it from the queue, and no crash can leave an op neither queued nor
//! decided.
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
use lifeboat_common::codec::{decode_exact, encode, CodecError, MAX_FRAME_BYTES};
use lifeboat_common::edge::{HeldSession, StoreWrite};
use lifeboat_common::op_outcome::{OpOutcomeRecord, OpRecord};
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
    /// The key space named `name` inside a shared sled database (at most 1,024 bytes).
    Shared {
        /// The shared database.
        db: SharedDb,
        /// This device's key space in it, unique per device.
        name: String,
    },
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
    /// Open (or create) the shared database in directory `path`, with a sled page cache of
    /// `cache_bytes`; sled's own periodic flush is off (flushes are group commits).
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

    /// The whole shared database's size on disk in bytes (sled's estimate; 0 if it cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Delete one device's records (an app reinstall wipes its store). The device's client
    /// must be shut down first.
    pub fn wipe_device(&self, name: &str) -> Result<(), StoreError> {
        let prefix = device_prefix(name)?;
        for tree in TREES {
            let tree = self.db.open_tree(tree)?;
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(&prefix).keys() {
                batch.remove(k?);
            }
            tree.apply_batch(batch)?;
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

/// Why the device store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed to open, read, write or flush (I/O or corruption).
    #[error("device store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded for writing (a record that does not decode is counted
    /// in [`Loaded::unreadable`] instead).
    #[error("device store record: {0}")]
    Codec(#[from] CodecError),
    /// The blocking flush task did not finish (it panicked or was cancelled); the text is
    /// tokio's.
    #[error("device store flush task: {0}")]
    Flush(String),
    /// The [`StoreLocation::Shared`] name is longer than [`MAX_NAME_BYTES`] (its length).
    #[error("shared store name of {0} bytes (at most {MAX_NAME_BYTES})")]
    NameTooLong(usize),
    /// The store's files are damaged so badly that the storage engine panicked opening them
    /// (seen with sled 0.34.7 on a garbled log). Nothing was changed; the app decides
    /// whether to move the store aside (the device then re-syncs from its partners, as
    /// after a reinstall, S6).
    #[error("device store is unreadable: {0}")]
    Unreadable(String),
}

/// The trees of a device store (shared by all devices of a [`SharedDb`]).
const TREES: [&str; 4] = ["sessions", "outbox", "finished", "meta"];
/// The `meta` key of the route memory.
const ROUTE_KEY: &[u8] = b"route";

/// Which datacenter this device last reached and which recently failed (unix ms), so a
/// restarted app starts where it was instead of waiting on a dead primary. A hint only:
/// losing it (no flush is forced for it) costs a slower first connect, nothing else.
/// The rules that keep it are [`lifeboat_common::route::RouteMemory`]'s.
pub type RouteMemory = lifeboat_common::route::RouteMemory<std::net::SocketAddr>;

/// Longest [`StoreLocation::Shared`] name.
pub const MAX_NAME_BYTES: usize = 1024;

/// The key prefix of a device in a shared database: its name's length, then the name (no
/// name is a prefix of another's key space).
fn device_prefix(name: &str) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(name.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_NAME_BYTES)
        .ok_or(StoreError::NameTooLong(name.len()))?;
    let mut p = Vec::with_capacity(2 + name.len());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    Ok(p)
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
    /// Held sessions: live ones in key order, then tombstones in the order they finished.
    pub sessions: Vec<(SessionId, HeldSession<Trip>)>,
    /// Queued ops not decided yet, in key order (session, then seq).
    pub ops: Vec<(OpId, TripOp)>,
    /// Decided outcomes the app has not acknowledged, in the order they were decided.
    pub outcomes: Vec<OpOutcomeRecord<Trip>>,
    /// Records that could not be decoded (reported, kept on disk, not loaded).
    pub unreadable: usize,
    /// Tombstones older than the configured age, deleted from the store at load.
    pub expired: usize,
}

/// One device's store: its held sessions, outbox and outcomes, and the route memory (see
/// the module docs).
pub struct EdgeStore {
    db: sled::Db,
    shared: Option<SharedDb>,
    sessions: sled::Tree,
    outbox: sled::Tree,
    /// Session id -> unix time (ms, big endian) it was first stored as a tombstone.
    finished: sled::Tree,
    /// Small records of the client itself ([`RouteMemory`]).
    meta: sled::Tree,
    /// Prepended to every key (empty for a database of its own).
    prefix: Vec<u8>,
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

fn session_key(s: SessionId) -> [u8; 8] {
    s.0.to_be_bytes()
}

/// Open a device's own sled database; a panic inside sled (damaged files) becomes
/// [`StoreError::Unreadable`] instead of taking the app down.
fn open_catching(path: &std::path::Path) -> Result<sled::Db, StoreError> {
    let open = || {
        sled::Config::new()
            .path(path)
            .cache_capacity(1024 * 1024)
            .flush_every_ms(None)
            .open()
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)) {
        Ok(r) => Ok(r?),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(StoreError::Unreadable(format!(
                "{}: the storage engine panicked: {msg}",
                path.display()
            )))
        }
    }
}

impl EdgeStore {
    /// Open the store at `location` for `device` (a damaged own database is
    /// [`StoreError::Unreadable`]).
    pub fn open(location: &StoreLocation, device: DeviceId) -> Result<Self, StoreError> {
        let (db, shared, prefix) = match location {
            StoreLocation::Path(p) => (open_catching(p)?, None, Vec::new()),
            StoreLocation::Shared { db, name } => {
                (db.db.clone(), Some(db.clone()), device_prefix(name)?)
            }
        };
        let [sessions, outbox, finished, meta] = TREES;
        Ok(Self {
            sessions: db.open_tree(sessions)?,
            outbox: db.open_tree(outbox)?,
            finished: db.open_tree(finished)?,
            meta: db.open_tree(meta)?,
            db,
            shared,
            prefix,
            device,
            clock: Clock::system(),
            inline_flush: false,
        })
    }

    /// This device's key for `k`.
    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + k.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(k);
        out
    }

    /// This device's records of `tree`, keys without the prefix.
    fn records<'a>(
        &'a self,
        tree: &'a sled::Tree,
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), sled::Error>> + 'a {
        tree.scan_prefix(&self.prefix)
            .map(|kv| kv.map(|(k, v)| (k[self.prefix.len()..].to_vec(), v)))
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
            outcomes: Vec::new(),
            unreadable: 0,
            expired: 0,
        };
        let now_ms = unix_ms(now);
        for kv in self.records(&self.sessions) {
            let (k, v) = kv?;
            let key: Option<[u8; 8]> = k.as_slice().try_into().ok();
            match (key, decode_exact::<HeldSession<Trip>>(&v, MAX_FRAME_BYTES)) {
                (Some(key), Ok(h)) => {
                    if h.digest.header.tombstone {
                        if let Some(ttl) = tombstone_ttl {
                            let since_ms = match self.finished.get(self.key(&key))? {
                                Some(t) => t
                                    .as_ref()
                                    .try_into()
                                    .map(u64::from_be_bytes)
                                    .unwrap_or(now_ms),
                                None => {
                                    self.finished
                                        .insert(self.key(&key), &now_ms.to_be_bytes())?;
                                    now_ms
                                }
                            };
                            if now_ms.saturating_sub(since_ms) >= ttl.as_millis() as u64 {
                                self.sessions.remove(self.key(&key))?;
                                self.finished.remove(self.key(&key))?;
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
            let t = self.finished.get(self.key(&session_key(*s))).ok().flatten();
            let ms = t
                .and_then(|t| t.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0);
            (true, ms)
        });
        for kv in self.records(&self.outbox) {
            let (k, v) = kv?;
            let key: Option<[u8; 16]> = k.as_slice().try_into().ok();
            match (key, decode_exact::<OpRecord<Trip>>(&v, MAX_FRAME_BYTES)) {
                (Some(k), Ok(OpRecord::Queued(op))) => {
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
                (Some(_), Ok(OpRecord::Decided(rec))) => loaded.outcomes.push(rec),
                _ => loaded.unreadable += 1,
            }
        }
        loaded.outcomes.sort_by_key(|r| (r.at_ms, r.id));
        Ok(loaded)
    }

    /// The copy of `session` the store holds, read back from the storage engine (the
    /// shadow restore's answer: what a backup would get after a crash). A record that does
    /// not decode is reported as not held.
    pub fn held(&self, session: SessionId) -> Result<Option<HeldSession<Trip>>, StoreError> {
        let Some(v) = self.sessions.get(self.key(&session_key(session)))? else {
            return Ok(None);
        };
        Ok(decode_exact::<HeldSession<Trip>>(&v, MAX_FRAME_BYTES).ok())
    }

    /// Carry out the core's store writes, in order; they are durable only after
    /// [`EdgeStore::flush`].
    pub fn apply(&self, writes: &[StoreWrite<Trip>]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                StoreWrite::PutSession(s, h) => {
                    let key = self.key(&session_key(*s));
                    self.sessions.insert(&key, encode(h)?)?;
                    if h.digest.header.tombstone {
                        // Keep the first time only: the age counts from when it finished.
                        let now = self.clock.now_ms().to_be_bytes();
                        let _ = self.finished.compare_and_swap(
                            key,
                            None as Option<&[u8]>,
                            Some(&now[..]),
                        )?;
                    }
                }
                StoreWrite::DeleteSession(s) => {
                    let key = self.key(&session_key(*s));
                    self.sessions.remove(&key)?;
                    self.finished.remove(key)?;
                }
                StoreWrite::PutOp(id, op) => {
                    let rec = OpRecord::<Trip>::Queued(op.clone());
                    self.outbox.insert(self.key(&op_key(*id)), encode(&rec)?)?;
                }
                StoreWrite::PutOutcome(rec) => {
                    // The same key as the queued op: one write replaces it.
                    let value = encode(&OpRecord::Decided(rec.clone()))?;
                    self.outbox.insert(self.key(&op_key(rec.id)), value)?;
                }
                StoreWrite::DeleteOp(id) => {
                    self.outbox.remove(self.key(&op_key(*id)))?;
                }
            }
        }
        Ok(())
    }

    /// Make every write applied so far durable (a group commit in a shared database).
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

    /// The route memory (`None`: never written, or unreadable: then it is a hint lost).
    pub fn load_route(&self) -> Option<RouteMemory> {
        let v = self.meta.get(self.key(ROUTE_KEY)).ok()??;
        decode_exact::<RouteMemory>(&v, MAX_FRAME_BYTES).ok()
    }

    /// Write the route memory (not flushed here; it goes with the next flush).
    pub fn save_route(&self, route: &RouteMemory) -> Result<(), StoreError> {
        self.meta.insert(self.key(ROUTE_KEY), encode(route)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::digest::{DigestBody, DigestHeader, SealedDigest};
    use lifeboat_common::keyring::Keyring;
    use lifeboat_common::{GeoPoint, TripPhase, TripState, VersionVector};

    /// Open a store just closed: sled releases the previous open's lock from a background
    /// thread, so an open right after a drop can find it still held; retry briefly.
    fn reopen(location: &StoreLocation, device: DeviceId) -> EdgeStore {
        let start = std::time::Instant::now();
        loop {
            match EdgeStore::open(location, device) {
                Err(StoreError::Sled(sled::Error::Io(_)))
                    if start.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.expect("reopen the store"),
            }
        }
    }

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
            digest: SealedDigest::seal(keyring, header, &body, 1_000).expect("seal"),
            view,
            last_seq: 1,
            applied_bits: 1,
            next_seq: 2,
            committed: true,
            committed_seq: 1,
            committed_bits: 1,
            committed_version: lifeboat_common::VersionVector::new(),
            committed_driver: None,
        }
    }

    fn ids(l: &Loaded) -> Vec<u64> {
        let mut v: Vec<u64> = l.sessions.iter().map(|(s, _)| s.0).collect();
        v.sort();
        v
    }

    /// Issue 17: a decided op's outcome is on disk under the op's key in place of the op,
    /// and comes back at the next start (an acknowledged one does not); the route memory too.
    #[test]
    fn an_outcome_replaces_its_op_on_disk_and_comes_back_after_a_reopen() {
        use lifeboat_common::edge::{Commit, SubmitError};
        let dir = tempfile::tempdir().unwrap();
        let loc = StoreLocation::Path(dir.path().join("d"));
        let id = |seq| OpId {
            session: SessionId(5),
            device: DeviceId(9),
            seq,
        };
        let route = RouteMemory {
            last_reached: Some("127.0.0.1:4434".parse().unwrap()),
            failed: vec![("127.0.0.1:4433".parse().unwrap(), 77)],
        };
        {
            let store = EdgeStore::open(&loc, DeviceId(9)).unwrap();
            store
                .apply(&[
                    StoreWrite::PutOp(id(1), TripOp::Cancel),
                    StoreWrite::PutOp(id(2), TripOp::Arrived),
                    StoreWrite::PutOp(id(3), TripOp::StartTrip),
                    StoreWrite::PutOutcome(OpOutcomeRecord {
                        id: id(1),
                        op: TripOp::Cancel,
                        result: Err(SubmitError::SessionFinished),
                        at_ms: 20,
                    }),
                    StoreWrite::PutOutcome(OpOutcomeRecord {
                        id: id(2),
                        op: TripOp::Arrived,
                        result: Ok(Commit {
                            op: id(2),
                            version: VersionVector::new(),
                            duplicate: false,
                        }),
                        at_ms: 10,
                    }),
                ])
                .unwrap();
            store.save_route(&route).unwrap();
            store.db.flush().unwrap();
        }
        let store = reopen(&loc, DeviceId(9));
        let l = store.load().unwrap();
        let queued: Vec<u64> = l.ops.iter().map(|(i, _)| i.seq).collect();
        assert_eq!(queued, vec![3], "decided ops are no longer queued");
        let decided: Vec<u64> = l.outcomes.iter().map(|r| r.id.seq).collect();
        assert_eq!(decided, vec![2, 1], "in the order they were decided");
        assert_eq!(l.unreadable, 0);
        assert_eq!(store.load_route(), Some(route));
        store.apply(&[StoreWrite::DeleteOp(id(2))]).unwrap();
        let l = store.load().unwrap();
        assert_eq!(l.outcomes.len(), 1, "an acknowledged outcome is gone");
    }

    #[test]
    fn devices_sharing_a_database_see_only_their_own_records_and_a_wipe_removes_only_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = Keyring::generate();
        let db = SharedDb::open(dir.path(), 1 << 20).expect("open shared");
        // "a" is a prefix of "ab": the length prefix keeps their key spaces apart.
        let open = |name: &str, device: u64| {
            let loc = StoreLocation::Shared {
                db: db.clone(),
                name: name.into(),
            };
            EdgeStore::open(&loc, DeviceId(device)).expect("open device")
        };
        let (a, ab) = (open("a", 1), open("ab", 2));
        let op = |device: u64| OpId {
            session: SessionId(9),
            device: DeviceId(device),
            seq: 3,
        };
        a.apply(&[
            StoreWrite::PutSession(SessionId(5), held(&keyring, 5, false)),
            StoreWrite::PutOp(op(1), TripOp::Cancel),
        ])
        .expect("apply a");
        ab.apply(&[StoreWrite::PutSession(
            SessionId(6),
            held(&keyring, 6, true),
        )])
        .expect("apply ab");
        let (la, lab) = (a.load().expect("load a"), ab.load().expect("load ab"));
        assert_eq!(ids(&la), vec![5]);
        assert_eq!(la.ops.len(), 1);
        assert_eq!(la.ops[0].0, op(1));
        assert_eq!(ids(&lab), vec![6]);
        assert!(lab.ops.is_empty());
        assert_eq!(la.unreadable + lab.unreadable, 0);

        db.wipe_device("a").expect("wipe a");
        let (la, lab) = (a.load().expect("reload a"), ab.load().expect("reload ab"));
        assert!(la.sessions.is_empty() && la.ops.is_empty());
        assert_eq!(ids(&lab), vec![6]);
        assert!(matches!(
            device_prefix(&"x".repeat(MAX_NAME_BYTES + 1)),
            Err(StoreError::NameTooLong(_))
        ));
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

    /// A device store whose log is garbled in an early segment makes sled 0.34.7 panic while
    /// opening; the client gets a typed error instead of the app crashing.
    #[test]
    fn a_store_sled_panics_on_is_a_typed_error_not_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device");
        {
            let db = sled::Config::new()
                .path(&path)
                .flush_every_ms(None)
                .open()
                .expect("open");
            for i in 0u64..2_000 {
                db.insert(i.to_be_bytes(), vec![i as u8; 150])
                    .expect("insert");
                if i % 100 == 99 {
                    db.flush().expect("flush");
                }
            }
            db.flush().expect("flush");
        }
        let mut log = std::fs::read(path.join("db")).expect("log");
        assert!(log.len() > 600_000, "the log spans several segments");
        for b in &mut log[100_000..100_512] {
            *b ^= 0xa5;
        }
        std::fs::write(path.join("db"), log).expect("garble");
        let location = StoreLocation::Path(path.clone());
        // sled releases the previous open's lock from a background thread: retry briefly.
        let start = std::time::Instant::now();
        let r = loop {
            match EdgeStore::open(&location, DeviceId(1)) {
                Err(StoreError::Sled(sled::Error::Io(_)))
                    if start.elapsed() < Duration::from_secs(5) =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => break other,
            }
        };
        match r {
            Err(StoreError::Unreadable(msg)) => assert!(msg.contains("panicked"), "{msg}"),
            Err(e) => panic!("expected Unreadable, got {e}"),
            Ok(_) => panic!("a store sled panics on was opened"),
        }
    }
}
