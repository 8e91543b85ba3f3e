//! The datacenter side of the replication protocol, as a deterministic state machine.
//!
//! No sockets, no disk, no clock: inputs are `handle_*(now_ms, ..)` calls, outputs are taken
//! with [`DatacenterCore::poll_effects`]. The driver must write every `persist` entry of a
//! batch before it sends any message of the same batch (raft-rs style: "persist these, then
//! send these"); the datacenter's own disk is a cache, the devices hold the truth, so the
//! driver need not flush before sending.
//!
//! Rules (each enforced here, each tested below):
//! - Apply (C2): an op is processed once per `(session, device, seq)`; a retry is answered from
//!   the watermark in the digest. Rejected ops are recorded too, so a retry at another
//!   datacenter is not applied either.
//! - Every change bumps this datacenter's slot of the version vector, reseals the digest and
//!   pushes it to every connected participant (C3, C5: nobody waits for a device unless the
//!   durability mode is edge-ack, and even then only the "committed" report waits).
//! - Restore (C3, C4): an uploaded digest is adopted only if it opens with a region key, the
//!   uploader is one of its participants, and it is newer than what the datacenter has. Older
//!   copies are answered with the newer one; a live copy never replaces a tombstone.
//! - Reconcile (S13): of two concurrent copies, one that has processed every op of the other
//!   (per participant, same outcomes, same participants) is kept with a version above both, so
//!   nothing acknowledged is lost; anything else is reported as divergence and never silently
//!   merged.
//! - Restore barrier: a session this datacenter restored (from a device or from its own,
//!   possibly stale, disk) takes no ops until every other participant has connected and
//!   uploaded, or `restore_grace_ms` passed since the first participant reported in (for a
//!   copy loaded from the datacenter's own disk the clock starts then, not at load time).
//!   Ops that arrive meanwhile are parked (bounded), not refused. Without it, a device could
//!   continue an older copy while its partner is still on the way with a newer one, and the
//!   partner's committed ops would diverge. At release, parked ops of devices that are no
//!   longer connected are dropped, not applied: they are still in those devices' outboxes.
//! - Dispatch: a session is dispatched only while its rider is connected here. A rider that
//!   left may have taken the trip to another datacenter, which dispatches it; dispatching a
//!   copy left behind would send a second driver.
//! - Tombstones: a finished session keeps its final digest; nothing brings it back (S10).
//! - Bounded (C6): sessions, parked ops per session and the dispatch queue all have limits;
//!   hitting one is a typed rejection, never a panic. A device may create a session only
//!   while it takes part in fewer than `max_active_sessions_per_device` active sessions, and
//!   at most `session_creates_per_minute` times a minute (a token bucket per device; the
//!   bucket map holds only devices that created within the last minute).

use crate::app::{AppRejection, Application};
use crate::dedup::{DedupEntry, Seen};
use crate::digest::{DigestBody, DigestHeader, SealError, SealedDigest};
use crate::ids::{DatacenterId, DeviceId, ReplicaId, Role, SessionId};
use crate::keyring::Keyring;
use crate::limits::{LimitExceeded, LimitKind};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{
    OpOutcome, OpRejection, ServerMsg, SessionUpdate, UploadOutcome, UploadRefusal, UploadResult,
};
use std::collections::{HashMap, HashSet, VecDeque};

/// When a server-side change (dispatch) counts as committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Committed as soon as the datacenter applied it; devices get it asynchronously.
    Async,
    /// Committed once this many participants acknowledged persisting it (1 or 2).
    EdgeAck(u8),
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "async" {
            return Ok(Durability::Async);
        }
        match s.strip_prefix("edge-ack:").map(str::parse::<u8>) {
            Some(Ok(k @ 1..=2)) => Ok(Durability::EdgeAck(k)),
            _ => Err(format!(
                "durability must be 'async' or 'edge-ack:K' with K 1 or 2, not '{s}'"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Async => f.write_str("async"),
            Durability::EdgeAck(k) => write!(f, "edge-ack:{k}"),
        }
    }
}

/// Tunables of the datacenter core.
#[derive(Clone, Debug)]
pub struct DcConfig {
    pub dc: DatacenterId,
    /// This datacenter's slot in version vectors (see [`ReplicaId`]).
    pub replica: ReplicaId,
    pub durability: Durability,
    /// How long a restored session waits for its other participants before taking ops.
    pub restore_grace_ms: u64,
    /// Most sessions (active and tombstoned) held at once.
    pub max_sessions: usize,
    /// Most ops parked per session behind a restore barrier.
    pub max_parked_per_session: usize,
    /// A device taking part in this many active sessions may not create another.
    pub max_active_sessions_per_device: usize,
    /// Session creates a device may make per minute (also the burst size); 0: unlimited.
    pub session_creates_per_minute: u32,
}

impl DcConfig {
    pub fn new(dc: DatacenterId, replica: ReplicaId) -> Self {
        Self {
            dc,
            replica,
            durability: Durability::Async,
            restore_grace_ms: 10_000,
            max_sessions: 1_000_000,
            max_parked_per_session: 128,
            max_active_sessions_per_device: 16,
            session_creates_per_minute: 10,
        }
    }
}

/// Everything the driver must do after a batch of inputs, in this order.
#[derive(Debug)]
pub struct Effects<A: Application> {
    /// Write these digests to the datacenter's store (key: session).
    pub persist: Vec<(SessionId, SealedDigest)>,
    /// Then send these messages.
    pub send: Vec<(DeviceId, ServerMsg<A>)>,
    /// Things worth counting or logging.
    pub events: Vec<DcEvent>,
}

impl<A: Application> Default for Effects<A> {
    fn default() -> Self {
        Self {
            persist: Vec::new(),
            send: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<A: Application> Effects<A> {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.send.is_empty() && self.events.is_empty()
    }
}

/// Notable things that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcEvent {
    Created(SessionId),
    Restored {
        session: SessionId,
        from: DeviceId,
    },
    UploadRefused {
        session: SessionId,
        from: DeviceId,
        reason: UploadRefusal,
    },
    Diverged {
        session: SessionId,
        from: DeviceId,
    },
    /// Concurrent copies where one had processed every op of the other: kept that one, with
    /// a version above both (`kept_upload`: the uploaded copy won).
    Reconciled {
        session: SessionId,
        from: DeviceId,
        kept_upload: bool,
    },
    Dispatched {
        session: SessionId,
        driver: DeviceId,
    },
    ServerChangeCommitted {
        session: SessionId,
        version: VersionVector,
    },
    Finished(SessionId),
    BarrierReleased {
        session: SessionId,
        timed_out: bool,
    },
}

/// Counters, for logs, tests and the harness.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DcStats {
    pub ops_applied: u64,
    pub ops_rejected: u64,
    pub ops_duplicate: u64,
    pub ops_parked: u64,
    /// Parked ops not applied at barrier release because their device had gone (it
    /// replays them wherever it connects).
    #[serde(default)]
    pub parked_dropped: u64,
    pub sessions_created: u64,
    pub sessions_restored: u64,
    pub uploads_stale: u64,
    pub uploads_refused: u64,
    pub uploads_diverged: u64,
    /// Concurrent copies reconciled without losing an op (see `reconcile`).
    #[serde(default)]
    pub uploads_merged: u64,
    pub dispatched: u64,
    pub server_changes_committed: u64,
    pub barriers_timed_out: u64,
    /// Creates refused: the device was in too many active sessions.
    #[serde(default)]
    pub limited_sessions_per_device: u64,
    /// Creates refused: the device created sessions too fast.
    #[serde(default)]
    pub limited_create_rate: u64,
    /// Creates and restores refused: the datacenter held `max_sessions`.
    #[serde(default)]
    pub limited_sessions: u64,
}

/// A device's create budget (token bucket).
#[derive(Clone, Copy, Debug)]
struct CreateBudget {
    tokens: u32,
    /// When `tokens` was last brought up to date.
    at_ms: u64,
}

struct Pending {
    version: VersionVector,
    acks: Vec<DeviceId>,
}

struct Barrier<A: Application> {
    awaiting: Vec<DeviceId>,
    /// Only the deadline releases it: the copy still needs a provider, and a provider that
    /// was assigned elsewhere (whose copy this one does not name) may still come back.
    until_deadline: bool,
    deadline_ms: u64,
    parked: VecDeque<(DeviceId, u64, A::Op)>,
}

struct Entry<A: Application> {
    header: DigestHeader,
    body: DigestBody<A::State>,
    sealed: SealedDigest,
    pending: Option<Pending>,
    barrier: Option<Barrier<A>>,
}

struct Conn {
    available: bool,
}

/// The datacenter's replication state machine (see the module docs).
pub struct DatacenterCore<A: Application> {
    cfg: DcConfig,
    keyring: Keyring,
    sessions: HashMap<SessionId, Entry<A>>,
    /// Active (non-tombstoned) sessions per participant.
    by_device: HashMap<DeviceId, Vec<SessionId>>,
    connected: HashMap<DeviceId, Conn>,
    /// Drivers offered for dispatch (validated lazily when popped).
    pool: VecDeque<DeviceId>,
    in_pool: HashSet<DeviceId>,
    /// Sessions waiting for a driver (validated lazily when popped).
    waiting: VecDeque<SessionId>,
    /// Devices that created sessions within the last minute (see the module docs).
    create_budget: HashMap<DeviceId, CreateBudget>,
    effects: Effects<A>,
    stats: DcStats,
}

impl<A: Application> DatacenterCore<A> {
    pub fn new(cfg: DcConfig, keyring: Keyring) -> Self {
        Self {
            cfg,
            keyring,
            sessions: HashMap::new(),
            by_device: HashMap::new(),
            connected: HashMap::new(),
            pool: VecDeque::new(),
            in_pool: HashSet::new(),
            waiting: VecDeque::new(),
            create_budget: HashMap::new(),
            effects: Effects::default(),
            stats: DcStats::default(),
        }
    }

    pub fn config(&self) -> &DcConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &DcStats {
        &self.stats
    }

    /// Replace the keyring (rotation without restart).
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Take the effects produced so far.
    pub fn poll_effects(&mut self) -> Effects<A> {
        std::mem::take(&mut self.effects)
    }

    /// Entries in the dispatch pool queue (bounded; see `compact_pool`).
    pub fn dispatch_pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Number of sessions held (active and tombstoned).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn active_session_count(&self) -> usize {
        self.sessions
            .values()
            .filter(|e| !e.header.tombstone)
            .count()
    }

    /// Active sessions by the id of the key their current digest is sealed with (a key can
    /// be retired once no active session anywhere in the region uses it).
    pub fn active_sessions_by_key(&self) -> std::collections::BTreeMap<crate::keyring::KeyId, u64> {
        let mut by_key = std::collections::BTreeMap::new();
        for e in self.sessions.values().filter(|e| !e.header.tombstone) {
            *by_key.entry(e.sealed.key_id).or_insert(0) += 1;
        }
        by_key
    }

    /// Header and state of a session, if held.
    pub fn session(&self, id: SessionId) -> Option<(&DigestHeader, &A::State)> {
        self.sessions.get(&id).map(|e| (&e.header, &e.body.state))
    }

    /// The dedup watermark of one participant of a session.
    /// The sealed digest this datacenter holds (what its store has).
    pub fn sealed(&self, id: SessionId) -> Option<&SealedDigest> {
        self.sessions.get(&id).map(|e| &e.sealed)
    }

    pub fn watermark(&self, id: SessionId, device: DeviceId) -> Option<DedupEntry> {
        let e = self.sessions.get(&id)?;
        e.body.dedup.iter().find(|d| d.device == device).copied()
    }

    /// All sessions: id, header and state.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &DigestHeader, &A::State)> {
        self.sessions
            .iter()
            .map(|(id, e)| (*id, &e.header, &e.body.state))
    }

    /// A digest from this datacenter's own store, at startup. It may be stale (failback), so
    /// the session sits behind a restore barrier until its participants have reported in.
    pub fn load_persisted(&mut self, now_ms: u64, sealed: SealedDigest) -> Result<(), SealError> {
        let body: DigestBody<A::State> = sealed.open(&self.keyring)?;
        let header = sealed.header.clone();
        let session_id = header.session;
        let awaiting: Vec<DeviceId> = header.participants().collect();
        self.insert(now_ms, header, body, sealed, Some(awaiting));
        // The grace period starts when the first participant reports in, not now: after a
        // restart the devices may still be minutes away from noticing they should come here.
        if let Some(b) = self
            .sessions
            .get_mut(&session_id)
            .and_then(|e| e.barrier.as_mut())
        {
            b.deadline_ms = u64::MAX;
        }
        Ok(())
    }

    /// Insert a session: a fresh create (`restored: None`, no barrier), or a restored copy
    /// with the participants still to hear from.
    fn insert(
        &mut self,
        now_ms: u64,
        header: DigestHeader,
        body: DigestBody<A::State>,
        sealed: SealedDigest,
        restored: Option<Vec<DeviceId>>,
    ) {
        let id = header.session;
        let active = !header.tombstone;
        let barrier = match restored {
            Some(awaiting) if active => {
                let until_deadline = A::needs_assignee(&body.state);
                (until_deadline || !awaiting.is_empty()).then(|| Barrier {
                    awaiting,
                    until_deadline,
                    deadline_ms: now_ms.saturating_add(self.cfg.restore_grace_ms),
                    parked: VecDeque::new(),
                })
            }
            _ => None,
        };
        if active {
            for d in header.participants() {
                let list = self.by_device.entry(d).or_default();
                if !list.contains(&id) {
                    list.push(id);
                }
            }
            if A::needs_assignee(&body.state) {
                self.waiting.push_back(id);
            }
        }
        if let Some(old) = self.sessions.insert(
            id,
            Entry {
                header,
                body,
                sealed,
                pending: None,
                barrier,
            },
        ) {
            // Participants can only be added (dispatch), never removed, so the index needs
            // no clean-up for the replaced copy, except when the new copy is a tombstone.
            if !active {
                for d in old.header.participants() {
                    self.unindex(d, id);
                }
            }
        }
    }

    fn unindex(&mut self, device: DeviceId, session: SessionId) {
        if let Some(list) = self.by_device.get_mut(&device) {
            list.retain(|s| *s != session);
            if list.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }

    fn update_for(entry: &Entry<A>, device: DeviceId) -> SessionUpdate<A> {
        SessionUpdate {
            digest: entry.sealed.clone(),
            view: entry.body.state.clone(),
            your_last_seq: entry
                .body
                .dedup
                .iter()
                .find(|d| d.device == device)
                .map(|d| d.last_seq)
                .unwrap_or(0),
            committed: entry.pending.is_none(),
        }
    }

    fn push_to_participants(&mut self, session: SessionId, except: Option<DeviceId>) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        for d in entry.header.participants() {
            if Some(d) != except && self.connected.contains_key(&d) {
                let update = Self::update_for(entry, d);
                self.effects.send.push((d, ServerMsg::Push { update }));
            }
        }
    }

    /// Apply a change to a session: bump the version, reseal, persist. On any error nothing
    /// changed.
    fn change(
        &mut self,
        session: SessionId,
        f: impl FnOnce(&mut DigestHeader, &mut DigestBody<A::State>),
    ) -> Result<(), AppRejection> {
        let dc = self.cfg.replica;
        let entry = self
            .sessions
            .get_mut(&session)
            .ok_or_else(|| AppRejection::InvalidOp("no such session".into()))?;
        let mut header = entry.header.clone();
        let mut body = entry.body.clone();
        f(&mut header, &mut body);
        header
            .version
            .bump(dc)
            .map_err(|e| AppRejection::InvalidOp(e.to_string()))?;
        header.tombstone = A::is_finished(&body.state);
        let sealed = SealedDigest::seal(&self.keyring, header.clone(), &body)
            .map_err(|e| AppRejection::InvalidOp(format!("cannot seal the new state: {e}")))?;
        let finished = header.tombstone && !entry.header.tombstone;
        entry.header = header;
        entry.body = body;
        entry.sealed = sealed.clone();
        self.effects.persist.push((session, sealed));
        if finished {
            let participants: Vec<DeviceId> = entry.header.participants().collect();
            entry.pending = None;
            entry.barrier = None;
            for d in participants {
                self.unindex(d, session);
            }
            self.effects.events.push(DcEvent::Finished(session));
        }
        Ok(())
    }

    /// A device connected and uploaded every digest it holds (its `Hello` and any `Upload`
    /// frames). Answers `Welcome`, pushes whatever the device is missing or has stale, and
    /// releases restore barriers that were waiting for it.
    pub fn handle_connect(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        available: bool,
        digests: Vec<SealedDigest>,
    ) {
        self.connected.insert(device, Conn { available });
        let mut results = Vec::with_capacity(digests.len());
        let mut presented = HashSet::new();
        for sealed in digests {
            let session = sealed.header.session;
            presented.insert(session);
            let outcome = self.upload_one(now_ms, device, sealed);
            if matches!(
                outcome,
                UploadOutcome::Stale | UploadOutcome::Diverged | UploadOutcome::Tombstoned
            ) {
                // Only to a participant of the datacenter's copy (a replaced driver must not
                // read the trip).
                if let Some(entry) = self
                    .sessions
                    .get(&session)
                    .filter(|e| e.header.role_of(device).is_some())
                {
                    let update = Self::update_for(entry, device);
                    self.effects.send.push((device, ServerMsg::Push { update }));
                }
            }
            results.push(UploadResult { session, outcome });
        }
        self.effects.send.push((
            device,
            ServerMsg::Welcome {
                dc: self.cfg.dc,
                results,
            },
        ));
        // Sessions the device takes part in but did not present (a reinstalled app): re-sync.
        let mine: Vec<SessionId> = self.by_device.get(&device).cloned().unwrap_or_default();
        for session in mine {
            if !presented.contains(&session) {
                if let Some(entry) = self.sessions.get(&session) {
                    let update = Self::update_for(entry, device);
                    self.effects.send.push((device, ServerMsg::Push { update }));
                }
            }
            self.heard_from(now_ms, session, device);
        }
        if available {
            self.offer_driver(device);
        }
        self.dispatch(now_ms);
    }

    fn upload_one(&mut self, now_ms: u64, device: DeviceId, sealed: SealedDigest) -> UploadOutcome {
        let session = sealed.header.session;
        let refuse = |this: &mut Self, reason: UploadRefusal| {
            this.stats.uploads_refused += 1;
            this.effects.events.push(DcEvent::UploadRefused {
                session,
                from: device,
                reason: reason.clone(),
            });
            UploadOutcome::Refused(reason)
        };
        // Authenticate before trusting anything in the header.
        let body: DigestBody<A::State> = match sealed.open(&self.keyring) {
            Ok(b) => b,
            Err(e) => return refuse(self, e.into()),
        };
        if sealed.header.role_of(device).is_none() {
            return refuse(self, UploadRefusal::NotParticipant);
        }
        let Some(entry) = self.sessions.get_mut(&session) else {
            if self.sessions.len() >= self.cfg.max_sessions {
                self.stats.limited_sessions += 1;
                let limit = LimitExceeded::new(LimitKind::Sessions, self.cfg.max_sessions);
                return refuse(self, UploadRefusal::Limit(limit));
            }
            let header = sealed.header.clone();
            let connected = &self.connected;
            let awaiting: Vec<DeviceId> = header
                .participants()
                .filter(|d| *d != device && !connected.contains_key(d))
                .collect();
            self.effects.persist.push((session, sealed.clone()));
            self.insert(now_ms, header, body, sealed, Some(awaiting));
            self.stats.sessions_restored += 1;
            self.effects.events.push(DcEvent::Restored {
                session,
                from: device,
            });
            // A partner already connected here may not hold it (a reinstalled app that came
            // first with an empty store): send it now rather than at the next change.
            self.push_to_participants(session, Some(device));
            return UploadOutcome::Restored;
        };
        let order = sealed.header.version.compare(&entry.header.version);
        #[cfg(feature = "fault-injection")]
        let order = crate::fault::distort_order(order);
        match order {
            // Equal versions with different contents would mean a slot was reused; never
            // trust the label alone.
            VersionOrder::Equal if sealed.header != entry.header || body != entry.body => {
                self.stats.uploads_diverged += 1;
                self.effects.events.push(DcEvent::Diverged {
                    session,
                    from: device,
                });
                UploadOutcome::Diverged
            }
            VersionOrder::Equal => UploadOutcome::Current,
            // Also against a tombstone: a live branch the tombstone has fully processed (an
            // op applied at two datacenters) is reconciled, so the device holding it gets a
            // tombstone above its copy rather than one beside it. `reconcile` never lets a
            // live copy replace a tombstone.
            VersionOrder::Concurrent => self.reconcile(now_ms, device, sealed, body),
            _ if entry.header.tombstone => UploadOutcome::Tombstoned,
            VersionOrder::Older => {
                self.stats.uploads_stale += 1;
                UploadOutcome::Stale
            }
            VersionOrder::Newer => {
                let was_tombstone = sealed.header.tombstone;
                let old_participants: Vec<DeviceId> = entry.header.participants().collect();
                entry.header = sealed.header.clone();
                entry.body = body;
                entry.sealed = sealed.clone();
                entry.pending = None;
                self.effects.persist.push((session, sealed));
                if was_tombstone {
                    // Parked ops get their answer (the session is finished), not silence.
                    self.release_barrier(now_ms, session, false);
                    for d in old_participants {
                        self.unindex(d, session);
                    }
                } else if let Some(e) = self.sessions.get(&session) {
                    for d in e.header.participants().collect::<Vec<_>>() {
                        let list = self.by_device.entry(d).or_default();
                        if !list.contains(&session) {
                            list.push(session);
                        }
                    }
                }
                self.stats.sessions_restored += 1;
                self.effects.events.push(DcEvent::Restored {
                    session,
                    from: device,
                });
                self.push_to_participants(session, Some(device));
                UploadOutcome::Restored
            }
        }
    }

    /// Two copies with concurrent histories (S13, or a datacenter that applied an op, died
    /// before replying, and came back on its disk after the retry was applied elsewhere).
    ///
    /// If one copy has processed every op the other has, from every participant and with the
    /// same outcomes, and both name the same participants, nothing acknowledged can be lost by
    /// keeping it: it is kept, with a version that joins both histories plus a change of this
    /// datacenter, so it dominates both and every device adopts it. Otherwise it is a real
    /// conflict: reported as divergence (the device is told, the application decides), never
    /// silently merged. A live copy never replaces a tombstone.
    fn reconcile(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
    ) -> UploadOutcome {
        let session = sealed.header.session;
        let diverged = |this: &mut Self| {
            this.stats.uploads_diverged += 1;
            this.effects.events.push(DcEvent::Diverged {
                session,
                from: device,
            });
            UploadOutcome::Diverged
        };
        let Some(entry) = self.sessions.get(&session) else {
            return diverged(self);
        };
        // Same requester; the providers are the same, or the covering copy has one and the
        // other none yet (a create resubmitted here after the first datacenter dispatched).
        let rider_same = entry.header.rider == sealed.header.rider;
        let (ours_driver, theirs_driver) = (entry.header.driver, sealed.header.driver);
        let Ok(joined) = entry.header.version.join(&sealed.header.version) else {
            return diverged(self);
        };
        // The ops only one copy processed are among its changes the other copy does not
        // know of (a suffix of its history: anything after them would carry them along), so
        // only that many of its last ops need comparing; the ones before are shared history.
        let theirs_only = changes_unknown_to(&sealed.header.version, &entry.header.version);
        let ours_only = changes_unknown_to(&entry.header.version, &sealed.header.version);
        let ours_covers = rider_same
            && (ours_driver == theirs_driver || theirs_driver.is_none())
            && ops_cover(&entry.body.dedup, &body.dedup, theirs_only);
        let theirs_covers = rider_same
            && (ours_driver == theirs_driver || ours_driver.is_none())
            && ops_cover(&body.dedup, &entry.body.dedup, ours_only);
        let ours_tombstone = entry.header.tombstone;
        let keep_theirs =
            theirs_covers && !ours_covers && (sealed.header.tombstone || !ours_tombstone);
        if !ours_covers && !keep_theirs {
            return diverged(self);
        }
        if keep_theirs {
            let tombstone = sealed.header.tombstone;
            let old_participants: Vec<DeviceId> = entry.header.participants().collect();
            if let Some(e) = self.sessions.get_mut(&session) {
                e.header = sealed.header.clone();
                e.body = body;
                e.sealed = sealed;
                e.pending = None;
            }
            if tombstone {
                // As for a newer tombstone: parked ops get their answer, the index forgets it.
                self.release_barrier(now_ms, session, false);
                for d in old_participants {
                    self.unindex(d, session);
                }
            }
        }
        if self.change(session, |h, _| h.version = joined).is_err() {
            return diverged(self);
        }
        if keep_theirs {
            self.adopted_participants(now_ms, session, device);
        }
        self.stats.uploads_merged += 1;
        self.effects.events.push(DcEvent::Reconciled {
            session,
            from: device,
            kept_upload: keep_theirs,
        });
        // Everyone connected gets the reconciled copy, the uploader included.
        self.push_to_participants(session, None);
        UploadOutcome::Restored
    }

    /// A copy naming a provider replaced one that had none: index the provider, and turn a
    /// dispatch-only barrier into one that waits for the participants not connected here.
    fn adopted_participants(&mut self, now_ms: u64, session: SessionId, from: DeviceId) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if entry.header.tombstone {
            return;
        }
        let participants: Vec<DeviceId> = entry.header.participants().collect();
        let needs = A::needs_assignee(&entry.body.state);
        if let Some(b) = entry.barrier.as_mut() {
            if b.until_deadline && !needs {
                b.until_deadline = false;
                let connected = &self.connected;
                b.awaiting = participants
                    .iter()
                    .copied()
                    .filter(|d| *d != from && !connected.contains_key(d))
                    .collect();
            }
        }
        for d in participants {
            let list = self.by_device.entry(d).or_default();
            if !list.contains(&session) {
                list.push(session);
            }
        }
        self.heard_from(now_ms, session, from);
    }

    /// `device` has reported in for `session`; release the barrier if nobody else is awaited.
    fn heard_from(&mut self, now_ms: u64, session: SessionId, device: DeviceId) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let grace = self.cfg.restore_grace_ms;
        let release = match entry.barrier.as_mut() {
            Some(b) => {
                if b.deadline_ms == u64::MAX {
                    b.deadline_ms = now_ms.saturating_add(grace);
                }
                b.awaiting.retain(|d| *d != device);
                b.awaiting.is_empty() && !b.until_deadline
            }
            None => false,
        };
        if release {
            self.release_barrier(now_ms, session, false);
        }
    }

    fn release_barrier(&mut self, now_ms: u64, session: SessionId, timed_out: bool) {
        let Some(barrier) = self
            .sessions
            .get_mut(&session)
            .and_then(|e| e.barrier.take())
        else {
            return;
        };
        if timed_out {
            self.stats.barriers_timed_out += 1;
        }
        self.effects
            .events
            .push(DcEvent::BarrierReleased { session, timed_out });
        for (device, seq, op) in barrier.parked {
            // A device that has gone (back to another datacenter, or offline) keeps the op in
            // its outbox and replays it wherever it connects. Applied here, unanswered, it
            // could get a second outcome on a branch the device no longer follows.
            if !self.connected.contains_key(&device) {
                self.stats.parked_dropped += 1;
                continue;
            }
            self.handle_submit(now_ms, device, session, seq, op);
        }
    }

    /// A device's connection closed.
    pub fn handle_disconnect(&mut self, device: DeviceId) {
        self.connected.remove(&device);
        self.in_pool.remove(&device);
        self.compact_pool();
    }

    /// Drop withdrawn drivers from the pool queue once they dominate it (C6: a driver
    /// toggling availability must not grow the queue).
    fn compact_pool(&mut self) {
        if self.pool.len() > 2 * self.in_pool.len() + 64 {
            let mut seen = HashSet::new();
            let in_pool = &self.in_pool;
            self.pool.retain(|d| in_pool.contains(d) && seen.insert(*d));
        }
    }

    /// A driver offers itself for dispatch, or withdraws.
    pub fn handle_set_available(&mut self, now_ms: u64, device: DeviceId, available: bool) {
        if let Some(c) = self.connected.get_mut(&device) {
            c.available = available;
        }
        if available {
            self.offer_driver(device);
            self.dispatch(now_ms);
        } else {
            self.in_pool.remove(&device);
            self.compact_pool();
        }
    }

    fn offer_driver(&mut self, device: DeviceId) {
        if self.in_pool.insert(device) {
            self.pool.push_back(device);
        }
    }

    fn is_busy(&self, device: DeviceId) -> bool {
        self.by_device.get(&device).is_some_and(|list| {
            list.iter().any(|s| {
                self.sessions
                    .get(s)
                    .is_some_and(|e| e.header.driver == Some(device))
            })
        })
    }

    /// Advance time: release barriers whose grace ran out, then dispatch.
    pub fn handle_tick(&mut self, now_ms: u64) {
        // Forget devices whose create budget is full again (C6: the map stays small).
        let per_minute = self.cfg.session_creates_per_minute;
        self.create_budget.retain(|_, b| {
            Self::refill(b, per_minute, now_ms);
            b.tokens < per_minute
        });
        let mut expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.barrier.as_ref().is_some_and(|b| now_ms >= b.deadline_ms))
            .map(|(id, _)| *id)
            .collect();
        // In session order, not hash order: the same inputs give the same dispatches.
        expired.sort_unstable();
        for session in expired {
            self.release_barrier(now_ms, session, true);
        }
        self.dispatch(now_ms);
    }

    /// Assign available drivers to sessions that need one (the server-side change).
    fn dispatch(&mut self, now_ms: u64) {
        let mut deferred = Vec::new();
        while let Some(session) = self.waiting.pop_front() {
            let Some(entry) = self.sessions.get(&session) else {
                continue;
            };
            if entry.header.tombstone || !A::needs_assignee(&entry.body.state) {
                continue;
            }
            if entry.barrier.is_some() {
                // A device may still bring a copy where a driver was already assigned.
                deferred.push(session);
                continue;
            }
            if !self.connected.contains_key(&entry.header.rider) {
                // The rider is not here: it may have taken the trip to another datacenter,
                // which dispatches it; this copy may be stale. Wait until the rider reports
                // in here again (`handle_connect` dispatches).
                deferred.push(session);
                continue;
            }
            let Some(driver) = self.next_driver(entry.header.rider) else {
                self.waiting.push_front(session);
                break;
            };
            let result = self.change(session, |h, b| {
                if A::assign(&mut b.state, now_ms).is_ok() {
                    h.driver = Some(driver);
                }
            });
            if let Err(e) = result {
                // Sealing failed: leave the driver in the pool, drop the session from the queue.
                self.effects.events.push(DcEvent::UploadRefused {
                    session,
                    from: driver,
                    reason: UploadRefusal::Malformed(format!("dispatch failed: {e}")),
                });
                self.offer_driver(driver);
                continue;
            }
            self.by_device.entry(driver).or_default().push(session);
            if let Some(entry) = self.sessions.get_mut(&session) {
                if let Durability::EdgeAck(_) = self.cfg.durability {
                    entry.pending = Some(Pending {
                        version: entry.header.version.clone(),
                        acks: Vec::new(),
                    });
                }
            }
            self.stats.dispatched += 1;
            self.effects
                .events
                .push(DcEvent::Dispatched { session, driver });
            if self.cfg.durability == Durability::Async {
                self.stats.server_changes_committed += 1;
            }
            self.push_to_participants(session, None);
        }
        self.waiting.extend(deferred);
    }

    fn next_driver(&mut self, rider: DeviceId) -> Option<DeviceId> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(d) = self.pool.pop_front() {
            if !self.in_pool.contains(&d) {
                continue;
            }
            let ok = d != rider
                && self.connected.get(&d).is_some_and(|c| c.available)
                && !self.is_busy(d);
            if ok {
                self.in_pool.remove(&d);
                found = Some(d);
                break;
            }
            if self.connected.get(&d).is_some_and(|c| c.available) && d != rider {
                // Busy now; keep it offered for when its trip ends.
                skipped.push(d);
            } else {
                self.in_pool.remove(&d);
            }
        }
        for d in skipped.into_iter().rev() {
            self.pool.push_front(d);
        }
        found
    }

    /// A device persisted a version of a session (edge-ack durability).
    pub fn handle_ack(&mut self, device: DeviceId, session: SessionId, version: VersionVector) {
        let Durability::EdgeAck(k) = self.cfg.durability else {
            return;
        };
        // A vector from the wire is untrusted: a malformed one could compare as anything.
        if version.validate().is_err() {
            return;
        }
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if entry.header.role_of(device).is_none() {
            return;
        }
        let Some(p) = entry.pending.as_mut() else {
            return;
        };
        if version.covers(&p.version) && !p.acks.contains(&device) {
            p.acks.push(device);
        }
        if p.acks.len() >= usize::from(k) {
            let version = p.version.clone();
            entry.pending = None;
            self.stats.server_changes_committed += 1;
            self.effects.events.push(DcEvent::ServerChangeCommitted {
                session,
                version: version.clone(),
            });
            let participants: Vec<DeviceId> = entry.header.participants().collect();
            for d in participants {
                if self.connected.contains_key(&d) {
                    self.effects.send.push((
                        d,
                        ServerMsg::Committed {
                            session,
                            version: version.clone(),
                        },
                    ));
                }
            }
        }
    }

    fn reply(
        &mut self,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        outcome: OpOutcome,
        with_update: bool,
    ) {
        let update = if with_update {
            self.sessions
                .get(&session)
                .map(|e| Self::update_for(e, device))
        } else {
            None
        };
        self.effects.send.push((
            device,
            ServerMsg::OpResult {
                session,
                seq,
                outcome,
                update,
            },
        ));
    }

    /// An op from `device` (authenticated by the driver) with stable id `(session, device,
    /// seq)`.
    pub fn handle_submit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
    ) {
        self.submit(now_ms, device, session, seq, op, false)
    }

    /// A submit; `resubmitted` only matters for a create (see [`Self::handle_resubmit`]).
    fn submit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
        resubmitted: bool,
    ) {
        let reject = |this: &mut Self, r: OpRejection, with_update: bool| {
            this.stats.ops_rejected += 1;
            this.reply(device, session, seq, OpOutcome::Rejected(r), with_update);
        };
        let Some(entry) = self.sessions.get_mut(&session) else {
            if !(A::is_create(&op) && seq == 1) {
                return reject(self, OpRejection::UnknownSession, false);
            }
            if self.sessions.len() >= self.cfg.max_sessions {
                self.stats.limited_sessions += 1;
                return reject(self, OpRejection::Overloaded, false);
            }
            if let Err(limit) = self.admit_create(now_ms, device) {
                return reject(self, OpRejection::Limit(limit), false);
            }
            return self.create(now_ms, device, session, op, resubmitted);
        };
        let Some(role) = entry.header.role_of(device) else {
            return reject(self, OpRejection::NotParticipant, false);
        };
        // Behind a restore barrier, park first: the watermark may still be about to move
        // forward with a partner's newer copy, so neither dedup nor gap checks are final yet.
        if let Some(b) = entry.barrier.as_mut() {
            if now_ms < b.deadline_ms {
                if b.parked.len() >= self.cfg.max_parked_per_session {
                    return reject(self, OpRejection::Overloaded, false);
                }
                b.parked.push_back((device, seq, op));
                self.stats.ops_parked += 1;
                return;
            }
            self.release_barrier(now_ms, session, true);
            // Parked ops went first; this one follows in order.
            return self.handle_submit(now_ms, device, session, seq, op);
        }
        let Some(entry) = self.sessions.get_mut(&session) else {
            return reject(self, OpRejection::UnknownSession, false);
        };
        let mark = entry
            .body
            .dedup
            .iter()
            .find(|d| d.device == device)
            .copied()
            .unwrap_or_else(|| DedupEntry::new(device));
        let seen = mark.check(seq);
        #[cfg(feature = "fault-injection")]
        let seen = crate::fault::distort_seen(seen);
        match seen {
            Seen::Duplicate { applied } => {
                self.stats.ops_duplicate += 1;
                return self.reply(device, session, seq, OpOutcome::Duplicate { applied }, true);
            }
            Seen::Forgotten => {
                self.stats.ops_duplicate += 1;
                return self.reply(device, session, seq, OpOutcome::AlreadyProcessed, true);
            }
            Seen::Gap { expected } => {
                return reject(self, OpRejection::OutOfOrder { expected }, true);
            }
            Seen::Next => {}
        }
        if entry.header.tombstone {
            return reject(self, OpRejection::SessionFinished, true);
        }
        let mut app_result = Ok(());
        let changed = self.change(session, |_, body| {
            let mut state = body.state.clone();
            app_result = A::apply(&mut state, role, &op, now_ms);
            let applied = app_result.is_ok();
            if applied {
                body.state = state;
            }
            match body.dedup.iter_mut().find(|d| d.device == device) {
                Some(d) => d.record(applied),
                None => {
                    let mut d = DedupEntry::new(device);
                    d.record(applied);
                    body.dedup.push(d);
                }
            }
        });
        let outcome = match (changed, app_result) {
            (Err(e), _) => return reject(self, OpRejection::App(e), true),
            (Ok(()), Ok(())) => {
                self.stats.ops_applied += 1;
                OpOutcome::Applied
            }
            (Ok(()), Err(e)) => {
                self.stats.ops_rejected += 1;
                OpOutcome::Rejected(OpRejection::App(e))
            }
        };
        self.reply(device, session, seq, outcome, true);
        self.push_to_participants(session, Some(device));
        if let Some(e) = self.sessions.get(&session) {
            if e.header.tombstone {
                if let Some(driver) = e.header.driver {
                    // The driver is free again if it still wants work.
                    if self.connected.get(&driver).is_some_and(|c| c.available) {
                        self.offer_driver(driver);
                    }
                }
            }
        }
    }

    /// Whether `device` may create one more session now; takes a create token if so.
    fn admit_create(&mut self, now_ms: u64, device: DeviceId) -> Result<(), LimitExceeded> {
        let active = self.by_device.get(&device).map_or(0, Vec::len);
        if active >= self.cfg.max_active_sessions_per_device {
            self.stats.limited_sessions_per_device += 1;
            return Err(LimitExceeded::new(
                LimitKind::SessionsPerDevice,
                self.cfg.max_active_sessions_per_device,
            ));
        }
        let per_minute = self.cfg.session_creates_per_minute;
        if per_minute == 0 {
            return Ok(());
        }
        let budget = self.create_budget.entry(device).or_insert(CreateBudget {
            tokens: per_minute,
            at_ms: now_ms,
        });
        Self::refill(budget, per_minute, now_ms);
        if budget.tokens == 0 {
            self.stats.limited_create_rate += 1;
            return Err(LimitExceeded::new(LimitKind::SessionCreateRate, per_minute));
        }
        budget.tokens -= 1;
        Ok(())
    }

    /// Add the tokens earned since the budget was last brought up to date (one per
    /// `60_000 / per_minute` ms, up to `per_minute`).
    fn refill(budget: &mut CreateBudget, per_minute: u32, now_ms: u64) {
        let every_ms = (60_000 / u64::from(per_minute.max(1))).max(1);
        let earned = now_ms.saturating_sub(budget.at_ms) / every_ms;
        if earned == 0 {
            return;
        }
        let tokens = u64::from(budget.tokens).saturating_add(earned);
        if tokens >= u64::from(per_minute) {
            budget.tokens = per_minute;
            budget.at_ms = now_ms;
        } else {
            // `tokens < per_minute`, so it fits; keep the remainder of the interval.
            budget.tokens = u32::try_from(tokens).unwrap_or(per_minute);
            budget.at_ms = budget.at_ms.saturating_add(earned * every_ms);
        }
    }

    /// Devices tracked for the create rate limit (bounded: see the module docs).
    pub fn create_budget_len(&self) -> usize {
        self.create_budget.len()
    }

    /// An op sent again after its connection was lost (see [`crate::wire::ClientMsg::Resubmit`]). The
    /// same as a submit, except that a session created from it waits out the restore grace
    /// before it is dispatched: the datacenter that may have created it first may already have
    /// assigned a provider, whose copy is then reconciled with this one instead of two
    /// providers being sent to the same requester.
    pub fn handle_resubmit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
    ) {
        self.submit(now_ms, device, session, seq, op, true)
    }

    fn create(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        op: A::Op,
        resubmitted: bool,
    ) {
        let state = match A::create(&op, now_ms) {
            Ok(s) => s,
            Err(e) => {
                self.stats.ops_rejected += 1;
                return self.reply(
                    device,
                    session,
                    1,
                    OpOutcome::Rejected(OpRejection::App(e)),
                    false,
                );
            }
        };
        let mut mark = DedupEntry::new(device);
        mark.record(true);
        let mut version = VersionVector::new();
        if let Err(e) = version.bump(self.cfg.replica) {
            let r = OpRejection::App(AppRejection::InvalidOp(e.to_string()));
            return self.reply(device, session, 1, OpOutcome::Rejected(r), false);
        }
        let header = DigestHeader {
            session,
            version,
            rider: device,
            driver: None,
            tombstone: A::is_finished(&state),
        };
        let body = DigestBody {
            state,
            dedup: vec![mark],
        };
        let sealed = match SealedDigest::seal(&self.keyring, header.clone(), &body) {
            Ok(s) => s,
            Err(e) => {
                let r = OpRejection::App(AppRejection::InvalidOp(e.to_string()));
                return self.reply(device, session, 1, OpOutcome::Rejected(r), false);
            }
        };
        self.effects.persist.push((session, sealed.clone()));
        // A resubmitted create is treated like a restored copy with nobody else to wait for:
        // its barrier only holds back dispatch (and parks ops) until the grace ends.
        let restored = resubmitted.then(Vec::new);
        self.insert(now_ms, header, body, sealed, restored);
        self.stats.sessions_created += 1;
        self.stats.ops_applied += 1;
        self.effects.events.push(DcEvent::Created(session));
        self.reply(device, session, 1, OpOutcome::Applied, true);
        self.dispatch(now_ms);
    }

    /// The role of a device in a session held here.
    pub fn role_of(&self, session: SessionId, device: DeviceId) -> Option<Role> {
        self.sessions.get(&session)?.header.role_of(device)
    }
}

/// Every participant's watermark in `theirs` is covered by ours, comparing outcomes over
/// each participant's last `since` ops (see [`DedupEntry::covers_last`]).
pub fn ops_cover(ours: &[DedupEntry], theirs: &[DedupEntry], since: u64) -> bool {
    theirs.iter().all(|t| {
        t.last_seq == 0
            || ours
                .iter()
                .any(|o| o.device == t.device && o.covers_last(t, since))
    })
}

/// How many changes `v` has that `other` does not know of.
pub fn changes_unknown_to(v: &VersionVector, other: &VersionVector) -> u64 {
    v.entries()
        .iter()
        .map(|(replica, n)| n.saturating_sub(other.get(*replica)))
        .sum()
}
