//! The datacenter side of the replication protocol, as a deterministic state machine.
//!
//! No sockets, no disk, no clock: inputs are `handle_*(now_ms, ..)` calls, outputs are taken
//! with [`DatacenterCore::poll_effects`]. The driver must write every `persist` entry of a
//! batch before it sends any message of the same batch (raft-rs style: "persist these, then
//! send these"); the datacenter's own disk is a cache, the devices hold the truth.
//!
//! The rules are those of docs/PROTOCOL.md; each is enforced here and tested in
//! `common/tests/replication_rules.rs` and `common/tests/split_sequences.rs`:
//! - Apply (C2): an op is processed once per `(session, device, seq)`; a retry is answered from
//!   the watermark in the digest. Rejected ops are recorded too, so a retry at another
//!   datacenter is not applied either.
//! - Every change bumps this datacenter's slot of the version vector, reseals the digest and
//!   pushes it to every connected participant. Nobody waits for a device except the reports
//!   that depend on it (C5).
//! - The chain (C1, S13): a change is committed only once the session's chain holder has
//!   persisted it. The chain holder is the anchor ([`DigestHeader::anchor`]: the provider once
//!   one is assigned, else the requester), except between a dispatch and the moment the
//!   requester persisted it: the hand-over is itself a change the requester must persist.
//!   The anchor's own ops commit when the anchor persists the reply; every other change
//!   (the other participant's ops, dispatch) waits for the chain holder's `Ack`, which this
//!   core asks for (`SessionUpdate::ack`) and turns into [`ServerMsg::Committed`] for the
//!   others. The chain holder persists a copy only if it dominates the one it holds (the
//!   edge's rule), so it accepts at most one successor of each copy and two datacenters can
//!   never both commit.
//! - Restore (C3, C4): an uploaded digest is adopted only if it opens with a region key, the
//!   uploader is one of its participants, and it is newer than what the datacenter has. Older
//!   copies are answered with the newer one. There is no grace period: a datacenter continues
//!   at once from whatever it restores, because nothing it does commits without the chain
//!   holder.
//! - The chain wins: an upload concurrent with this datacenter's copy replaces it only if the
//!   device says it is committed (on the chain). Then this datacenter's own branch holds only
//!   changes nobody was told are committed; it is dropped, the committed copy is kept with a
//!   version above both, and it is pushed to every participant (a participant it no longer
//!   names is told [`ServerMsg::Removed`]). An uncommitted concurrent upload changes nothing
//!   ([`UploadOutcome::Diverged`]): the session waits for its chain holder.
//! - Dispatch: a session is dispatched only while its rider is connected here (the rider
//!   must persist the hand-over anyway, and a copy the rider left behind may be stale).
//! - Tombstones: a finished session keeps its final digest; an older copy never revives it
//!   (S10).
//! - Bounded (C6): sessions, the dispatch queue and the per-session record of copies waiting
//!   for the chain holder all have limits; hitting one is a typed rejection, never a panic. A
//!   device may create a session only while it takes part in fewer than
//!   `max_active_sessions_per_device` active sessions, and at most
//!   `session_creates_per_minute` times a minute (a token bucket per device; the bucket map
//!   holds only devices that created within the last minute).

use crate::app::{AppRejection, Application};
use crate::dedup::{DedupEntry, Seen};
use crate::digest::{DigestBody, DigestHeader, SealError, SealedDigest};
use crate::ids::{DatacenterId, DeviceId, ReplicaId, Role, SessionId};
use crate::keyring::Keyring;
use crate::limits::{LimitExceeded, LimitKind};
use crate::version::{VersionOrder, VersionVector};
use crate::wire::{
    OfferedCopy, OpOutcome, OpRejection, ServerMsg, SessionUpdate, UploadOutcome, UploadRefusal,
    UploadResult,
};
use std::collections::{HashMap, HashSet, VecDeque};

/// Most copies a session records while they wait for the chain holder's `Ack` (C6). When it
/// is full the oldest is forgotten: an `Ack` of a later copy confirms it too.
pub const MAX_UNCONFIRMED_COPIES: usize = 16;

/// Most providers a session remembers it removed (never dispatched to it again).
pub const MAX_REMOVED_PER_SESSION: usize = 4;

/// When a server-side change (dispatch) counts as committed for the datacenter's own report
/// ([`DcEvent::ServerChangeCommitted`], `server_changes_committed`). Whatever the mode, the
/// devices report commits by the chain rule (docs/PROTOCOL.md): a dispatch is never the
/// base of a committed op before the rider persisted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Counted as soon as the datacenter applied it; devices get it asynchronously.
    Async,
    /// Counted once this many participants acknowledged persisting it (1 or 2).
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
    /// Most sessions (active and tombstoned) held at once.
    pub max_sessions: usize,
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
            max_sessions: 1_000_000,
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
    /// A concurrent upload not known committed: nothing changed, the session waits for its
    /// chain holder.
    Diverged {
        session: SessionId,
        from: DeviceId,
    },
    /// A committed upload replaced this datacenter's concurrent branch (whose changes nobody
    /// was told are committed); kept with a version above both.
    ChainAdopted {
        session: SessionId,
        from: DeviceId,
    },
    /// Two copies both said to be committed and neither dominates: the chain rule was
    /// broken somewhere (a device lied about its store, or a bug). Nothing changed.
    ChainConflict {
        session: SessionId,
        from: DeviceId,
    },
    /// The anchor came back with an empty store; the session continues from this
    /// datacenter's copy (see `reanchor`).
    Reanchored {
        session: SessionId,
        device: DeviceId,
    },
    /// A participant of the dropped branch is not one of the committed copy.
    Removed {
        session: SessionId,
        device: DeviceId,
    },
    Dispatched {
        session: SessionId,
        driver: DeviceId,
    },
    /// The chain holder persisted `version`: the changes up to it are committed.
    Confirmed {
        session: SessionId,
        version: VersionVector,
    },
    ServerChangeCommitted {
        session: SessionId,
        version: VersionVector,
    },
    Finished(SessionId),
}

/// Counters, for logs, tests and the harness.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DcStats {
    pub ops_applied: u64,
    pub ops_rejected: u64,
    pub ops_duplicate: u64,
    pub sessions_created: u64,
    pub sessions_restored: u64,
    pub uploads_stale: u64,
    pub uploads_refused: u64,
    /// Concurrent uploads not known committed (the session waited for its chain holder).
    pub uploads_diverged: u64,
    /// Committed uploads that replaced a concurrent branch of this datacenter.
    #[serde(default)]
    pub chain_adopted: u64,
    /// Two concurrent copies both said to be committed (must stay 0).
    #[serde(default)]
    pub chain_conflicts: u64,
    /// Participants told they were removed from a session.
    #[serde(default)]
    pub removed: u64,
    /// Copies confirmed by a chain holder's `Ack`.
    #[serde(default)]
    pub confirmations: u64,
    /// Concurrent branches of participants re-versioned under once the chain holder
    /// confirmed our copy.
    #[serde(default)]
    pub branches_absorbed: u64,
    /// Anchors that came back with an empty store (see `DatacenterCore::reanchor`).
    #[serde(default)]
    pub reanchored: u64,
    pub dispatched: u64,
    pub server_changes_committed: u64,
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

/// A dispatch waiting for its edge-ack quorum (the datacenter's own report only).
struct Pending {
    version: VersionVector,
    acks: Vec<DeviceId>,
}

/// Where this datacenter's copy of a session stands on the session's chain.
#[derive(Default)]
struct Chain {
    /// The newest copy of this copy's line known to be committed here (the chain holder's
    /// `Ack`, a committed upload, the create), with the provider it names. `None`: not known
    /// (a copy restored from an uncommitted upload, or loaded from this datacenter's disk).
    confirmed: Option<(VersionVector, Option<DeviceId>)>,
    /// Copies made here since the first change that waits for the chain holder, oldest
    /// first, with every participant's watermark in it (an `Ack` names one of them). Empty:
    /// nothing waits.
    unconfirmed: VecDeque<Unconfirmed>,
    /// Versions of concurrent branches participants uploaded that nobody confirmed (joined).
    /// Once the chain holder confirms our copy they are off the chain, and our copy is
    /// re-versioned above them, so those participants move forward to it, never sideways.
    absorb: Option<VersionVector>,
    /// Every participant's watermark in the `confirmed` copy (told to a participant that
    /// reports in without knowing it).
    confirmed_marks: Vec<DedupEntry>,
}

/// A copy made (or restored) here that waits for the chain holder's `Ack`.
struct Unconfirmed {
    version: VersionVector,
    driver: Option<DeviceId>,
    dedup: Vec<DedupEntry>,
}

struct Entry<A: Application> {
    header: DigestHeader,
    body: DigestBody<A::State>,
    sealed: SealedDigest,
    chain: Chain,
    pending: Option<Pending>,
    /// Providers removed from this session (bounded): never dispatched to it again.
    removed: Vec<DeviceId>,
}

impl<A: Application> Entry<A> {
    /// Whether this datacenter knows the chain is held by this copy's anchor: a committed
    /// copy of this line names the same provider (for a session without one, the rider).
    /// Before that, an op of the anchor may still need the rider's persist (a hand-over not
    /// known to be done) and is recorded as waiting.
    fn anchor_known(&self) -> bool {
        match &self.chain.confirmed {
            Some((_, driver)) => *driver == self.header.driver,
            None => false,
        }
    }

    /// Whether this copy is known committed: a device persisted exactly it on its own
    /// authority (the chain holder's `Ack`), or said so on upload. The same for every
    /// receiver: the chain holder does not need the datacenter's word (its own persisting
    /// commits, `EdgeCore`'s rule), and nobody else may take less.
    fn committed(&self) -> bool {
        self.chain
            .confirmed
            .as_ref()
            .is_some_and(|(v, _)| *v == self.header.version)
    }

    /// Whether receivers should acknowledge persisting this copy (something waits for the
    /// chain holder; only a device whose persisting commits answers).
    fn ack_wanted(&self) -> bool {
        !self.chain.unconfirmed.is_empty() || self.pending.is_some()
    }

    /// Record the current copy as one waiting for the chain holder (when something waits).
    fn record_unconfirmed(&mut self, waits: bool) {
        if !waits && self.chain.unconfirmed.is_empty() {
            return;
        }
        if self.chain.unconfirmed.len() >= MAX_UNCONFIRMED_COPIES {
            self.chain.unconfirmed.pop_front();
        }
        self.chain.unconfirmed.push_back(Unconfirmed {
            version: self.header.version.clone(),
            driver: self.header.driver,
            dedup: self.body.dedup.clone(),
        });
    }
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

fn mark_of(dedup: &[DedupEntry], device: DeviceId) -> (u64, u64) {
    dedup
        .iter()
        .find(|d| d.device == device)
        .map(|d| (d.last_seq, d.applied_bits))
        .unwrap_or((0, 0))
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

    /// The sealed digest this datacenter holds (what its store has).
    pub fn sealed(&self, id: SessionId) -> Option<&SealedDigest> {
        self.sessions.get(&id).map(|e| &e.sealed)
    }

    /// The dedup watermark of one participant of a session.
    pub fn watermark(&self, id: SessionId, device: DeviceId) -> Option<DedupEntry> {
        let e = self.sessions.get(&id)?;
        e.body.dedup.iter().find(|d| d.device == device).copied()
    }

    /// Whether this datacenter knows its copy of `id` is committed (the chain holder
    /// confirmed exactly this version).
    pub fn is_confirmed(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(Entry::committed)
    }

    /// All sessions: id, header and state.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &DigestHeader, &A::State)> {
        self.sessions
            .iter()
            .map(|(id, e)| (*id, &e.header, &e.body.state))
    }

    /// A digest from this datacenter's own store, at startup. It may be stale (failback):
    /// nothing here is known committed until a device says so, so it commits nothing on its
    /// own (the chain holder's upload or `Ack` does).
    pub fn load_persisted(&mut self, _now_ms: u64, sealed: SealedDigest) -> Result<(), SealError> {
        let body: DigestBody<A::State> = sealed.open(&self.keyring)?;
        let header = sealed.header.clone();
        // Ask the devices to confirm it: whoever holds the chain acknowledges it if it is
        // (or a descendant of what it holds), so what waited before the restart is reported.
        let chain = Chain {
            unconfirmed: VecDeque::from([Unconfirmed {
                version: header.version.clone(),
                driver: header.driver,
                dedup: body.dedup.clone(),
            }]),
            ..Chain::default()
        };
        self.insert(header, body, sealed, chain);
        Ok(())
    }

    /// Insert (or replace) a session's copy and keep the indexes.
    fn insert(
        &mut self,
        header: DigestHeader,
        body: DigestBody<A::State>,
        sealed: SealedDigest,
        chain: Chain,
    ) {
        let id = header.session;
        let active = !header.tombstone;
        let old = self.sessions.insert(
            id,
            Entry {
                header,
                body,
                sealed,
                chain,
                pending: None,
                removed: Vec::new(),
            },
        );
        if let Some(old) = old {
            for d in old.header.participants() {
                self.unindex(d, id);
            }
        }
        if active {
            self.index(id);
        }
    }

    /// Index the participants of an active session, and queue it for dispatch if it needs a
    /// provider.
    fn index(&mut self, id: SessionId) {
        let Some(entry) = self.sessions.get(&id) else {
            return;
        };
        let participants: Vec<DeviceId> = entry.header.participants().collect();
        let needs = A::needs_assignee(&entry.body.state);
        for d in participants {
            let list = self.by_device.entry(d).or_default();
            if !list.contains(&id) {
                list.push(id);
            }
        }
        if needs {
            self.waiting.push_back(id);
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
        let (your_last_seq, your_applied_bits) = mark_of(&entry.body.dedup, device);
        SessionUpdate {
            digest: entry.sealed.clone(),
            view: entry.body.state.clone(),
            your_last_seq,
            your_applied_bits,
            committed: Self::committed_flag(entry.committed()),
            ack: entry.ack_wanted(),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn committed_flag(committed: bool) -> bool {
        committed
    }

    #[cfg(feature = "fault-injection")]
    fn committed_flag(committed: bool) -> bool {
        crate::fault::distort_committed(committed)
    }

    fn push_to(&mut self, session: SessionId, device: DeviceId) {
        if let Some(entry) = self
            .sessions
            .get(&session)
            .filter(|e| e.header.role_of(device).is_some())
        {
            let update = Self::update_for(entry, device);
            self.effects.send.push((device, ServerMsg::Push { update }));
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

    /// Apply a change to a session: bump the version, reseal, persist. `waits`: the change
    /// commits only with the chain holder's `Ack` (another participant's op, a dispatch).
    /// On any error nothing changed.
    fn change(
        &mut self,
        session: SessionId,
        waits: bool,
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
        entry.record_unconfirmed(waits);
        self.effects.persist.push((session, sealed));
        if finished {
            let participants: Vec<DeviceId> = entry.header.participants().collect();
            entry.pending = None;
            for d in participants {
                self.unindex(d, session);
            }
            self.effects.events.push(DcEvent::Finished(session));
        }
        Ok(())
    }

    /// A device connected and uploaded every copy it holds (its `Hello` and any `Upload`
    /// frames). Answers `Welcome` and pushes whatever the device is missing or has stale.
    pub fn handle_connect(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        available: bool,
        copies: Vec<OfferedCopy>,
    ) {
        self.connected.insert(device, Conn { available });
        let mut results = Vec::with_capacity(copies.len());
        let mut presented = HashSet::new();
        for copy in copies {
            let session = copy.digest.header.session;
            presented.insert(session);
            let outcome = self.upload_one(device, copy);
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
        let empty_store = presented.is_empty();
        let mine: Vec<SessionId> = self.by_device.get(&device).cloned().unwrap_or_default();
        for session in mine {
            if !presented.contains(&session) {
                if empty_store {
                    self.reanchor(session, device);
                }
                self.push_to(session, device);
                // It knows nothing of the session: also what is committed of it (a provider
                // assigned on the chain while it was away learns the hand-over only so).
                self.tell_committed(session, device, &VersionVector::new());
            }
        }
        if available {
            self.offer_driver(device);
        }
        self.dispatch(now_ms);
    }

    /// The anchor of a session came back with an empty store (it presented no copy at all:
    /// a reinstalled app; a device that merely dropped an old tombstone presents the others). The fence lived in that store and is gone: the session continues from this
    /// datacenter's copy, which the anchor now holds as committed. Only when nothing of the
    /// copy is known committed here (else the copy is already committed for the anchor, or
    /// a hand-over still waits for the rider, whose store fences it). Counted as
    /// `reanchored`; docs/PROTOCOL.md says what it risks.
    fn reanchor(&mut self, session: SessionId, device: DeviceId) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        // A hand-over made here that still waits for the rider stays fenced by the rider's
        // store: not re-anchored.
        let handover_waits = entry.chain.confirmed.is_some() && !entry.anchor_known();
        if entry.header.tombstone || entry.header.anchor() != device || handover_waits {
            return;
        }
        entry.chain.confirmed = Some((entry.header.version.clone(), entry.header.driver));
        entry.chain.confirmed_marks = entry.body.dedup.clone();
        entry.chain.unconfirmed.clear();
        self.stats.reanchored += 1;
        self.effects
            .events
            .push(DcEvent::Reanchored { session, device });
    }

    /// A device offers its held copy again (it refused one of ours).
    pub fn handle_reupload(&mut self, now_ms: u64, device: DeviceId, copy: OfferedCopy) {
        let session = copy.digest.header.session;
        let outcome = self.upload_one(device, copy);
        self.effects.send.push((
            device,
            ServerMsg::Uploaded {
                result: UploadResult { session, outcome },
            },
        ));
        self.dispatch(now_ms);
    }

    fn upload_one(&mut self, device: DeviceId, copy: OfferedCopy) -> UploadOutcome {
        let OfferedCopy {
            digest: sealed,
            committed,
            known_committed,
            known_committed_driver,
        } = copy;
        let session = sealed.header.session;
        let outcome = self.judge_upload(device, sealed, committed);
        if matches!(outcome, UploadOutcome::Refused(_)) || known_committed.validate().is_err() {
            return outcome;
        }
        if !known_committed.is_empty() && !self.learn_committed(session, &known_committed, device) {
            self.learn_ancestor(session, &known_committed, known_committed_driver);
        }
        self.tell_committed(session, device, &known_committed);
        outcome
    }

    /// A participant reports in not knowing the newest copy this datacenter knows is
    /// committed (it was away when it was confirmed): tell it (a provider learns the
    /// hand-over that way, which nobody else can tell it).
    fn tell_committed(&mut self, session: SessionId, device: DeviceId, known: &VersionVector) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        if entry.header.role_of(device).is_none() {
            return;
        }
        let Some((version, driver)) = entry.chain.confirmed.clone() else {
            return;
        };
        if version.compare(known) != VersionOrder::Newer {
            return;
        }
        let (your_last_seq, your_applied_bits) = mark_of(&entry.chain.confirmed_marks, device);
        self.effects.send.push((
            device,
            ServerMsg::Committed {
                session,
                version,
                driver,
                your_last_seq,
                your_applied_bits,
            },
        ));
    }

    /// A participant knows `version` (naming `driver`) is committed and our copy descends
    /// from it (dominates it: a committed copy's content is in every copy dominating it).
    /// We did not record it (a restart, or it was confirmed elsewhere), so only what it
    /// says about the chain is kept: the line up to it is committed, and who holds the
    /// chain after it. Nobody else is told (we hold no watermarks of it).
    fn learn_ancestor(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        driver: Option<DeviceId>,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if !matches!(
            entry.header.version.compare(version),
            VersionOrder::Newer | VersionOrder::Equal
        ) {
            return;
        }
        let newer = match &entry.chain.confirmed {
            None => true,
            Some((v, _)) => version.compare(v) == VersionOrder::Newer,
        };
        if newer {
            entry.chain.confirmed = Some((version.clone(), driver));
            entry.chain.confirmed_marks = Vec::new();
            // A provider connected here may be the one waiting to learn it holds the chain.
            let others: Vec<DeviceId> = entry
                .header
                .participants()
                .filter(|d| self.connected.contains_key(d))
                .collect();
            for d in others {
                self.tell_committed(session, d, &VersionVector::new());
            }
        }
    }

    /// `by` (a participant) knows `version` is committed: if it is a copy of our line (the
    /// current one, or one still waiting), it is confirmed. Whether it was.
    fn learn_committed(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        by: DeviceId,
    ) -> bool {
        let Some(entry) = self.sessions.get(&session) else {
            return false;
        };
        if entry.header.role_of(by).is_none() {
            return false;
        }
        let known = if entry.header.version == *version {
            Some((entry.header.driver, entry.body.dedup.clone()))
        } else {
            entry
                .chain
                .unconfirmed
                .iter()
                .find(|u| u.version == *version)
                .map(|u| (u.driver, u.dedup.clone()))
        };
        match known {
            Some((driver, dedup)) => {
                self.confirm(session, version, driver, dedup, by);
                true
            }
            None => false,
        }
    }

    fn judge_upload(
        &mut self,
        device: DeviceId,
        sealed: SealedDigest,
        committed: bool,
    ) -> UploadOutcome {
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
        let Some(entry) = self.sessions.get(&session) else {
            if self.sessions.len() >= self.cfg.max_sessions {
                self.stats.limited_sessions += 1;
                let limit = LimitExceeded::new(LimitKind::Sessions, self.cfg.max_sessions);
                return refuse(self, UploadRefusal::Limit(limit));
            }
            let header = sealed.header.clone();
            let mut chain = Chain::default();
            if committed {
                chain.confirmed = Some((header.version.clone(), header.driver));
                chain.confirmed_marks = body.dedup.clone();
            } else {
                // Ask the chain holder to persist it when it comes: until then nothing on
                // this copy is known committed here.
                chain.unconfirmed.push_back(Unconfirmed {
                    version: header.version.clone(),
                    driver: header.driver,
                    dedup: body.dedup.clone(),
                });
            }
            self.effects.persist.push((session, sealed.clone()));
            self.insert(header, body, sealed, chain);
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
            // Equal versions with different contents mean a slot was reused (a datacenter
            // that sent a copy and lost it before its disk had it: a crash between the two,
            // a store cut short by damage). Never trust the label alone: it is two branches,
            // and a committed one wins as any concurrent one does.
            VersionOrder::Equal
                if committed && (sealed.header != entry.header || body != entry.body) =>
            {
                self.adopt_committed(session, device, sealed, body)
            }
            VersionOrder::Equal if sealed.header != entry.header || body != entry.body => {
                self.stats.uploads_diverged += 1;
                self.effects.events.push(DcEvent::Diverged {
                    session,
                    from: device,
                });
                UploadOutcome::Diverged
            }
            VersionOrder::Equal => {
                if committed {
                    let header = sealed.header;
                    self.confirm(session, &header.version, header.driver, body.dedup, device);
                }
                UploadOutcome::Current
            }
            VersionOrder::Older => {
                // Ours descends from it. If the device knows it is committed, so is the line
                // of ours up to it.
                let tombstone = entry.header.tombstone;
                if self.removed(entry, device, &sealed.header.version) {
                    return self.tell_removed(session, device);
                }
                if committed {
                    let header = sealed.header;
                    self.confirm(session, &header.version, header.driver, body.dedup, device);
                }
                self.stats.uploads_stale += 1;
                self.push_to(session, device);
                if tombstone {
                    UploadOutcome::Tombstoned
                } else {
                    UploadOutcome::Stale
                }
            }
            // A tombstone known committed is final, whatever a device claims (C3).
            VersionOrder::Newer
                if entry.header.tombstone
                    && !sealed.header.tombstone
                    && entry
                        .chain
                        .confirmed
                        .as_ref()
                        .is_some_and(|(v, _)| *v == entry.header.version) =>
            {
                self.push_to(session, device);
                UploadOutcome::Tombstoned
            }
            VersionOrder::Newer => {
                // It descends from ours: adopt it. What we knew committed stays committed.
                let mut chain = match self.sessions.get_mut(&session) {
                    Some(e) => std::mem::take(&mut e.chain),
                    None => Chain::default(),
                };
                if committed {
                    chain.confirmed = Some((sealed.header.version.clone(), sealed.header.driver));
                    chain.confirmed_marks = body.dedup.clone();
                    chain.unconfirmed.clear();
                } else {
                    chain.unconfirmed.push_back(Unconfirmed {
                        version: sealed.header.version.clone(),
                        driver: sealed.header.driver,
                        dedup: body.dedup.clone(),
                    });
                    if chain.unconfirmed.len() > MAX_UNCONFIRMED_COPIES {
                        chain.unconfirmed.pop_front();
                    }
                }
                self.replace(session, device, sealed, body, chain);
                self.stats.sessions_restored += 1;
                self.effects.events.push(DcEvent::Restored {
                    session,
                    from: device,
                });
                self.push_to_participants(session, Some(device));
                UploadOutcome::Restored
            }
            VersionOrder::Concurrent if !committed => {
                // Nothing tells which branch is the chain: change nothing, wait for the chain
                // holder (or a copy known committed).
                if self.removed(entry, device, &sealed.header.version) {
                    return self.tell_removed(session, device);
                }
                self.stats.uploads_diverged += 1;
                self.effects.events.push(DcEvent::Diverged {
                    session,
                    from: device,
                });
                self.ask_chain_holder(session, device, &sealed.header.version);
                UploadOutcome::Diverged
            }
            VersionOrder::Concurrent => self.adopt_committed(session, device, sealed, body),
        }
    }

    /// A participant holds a branch concurrent with ours that nobody confirmed: ask the
    /// chain holder to persist our copy (if it can, ours is the chain and the participant
    /// gets it as committed; if it cannot, its own upload settles it).
    fn ask_chain_holder(&mut self, session: SessionId, from: DeviceId, branch: &VersionVector) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let absorb = match &entry.chain.absorb {
            None => Ok(branch.clone()),
            Some(a) => a.join(branch),
        };
        // A vector that cannot grow any more is simply not absorbed: its holder then gives
        // way sideways to the committed copy (the edge's rule), which loses nothing.
        if let Ok(a) = absorb {
            entry.chain.absorb = Some(a);
        }
        let current = entry.header.version.clone();
        if !entry.chain.unconfirmed.iter().any(|u| u.version == current) {
            entry.record_unconfirmed(true);
        }
        // Our copy may be known committed already: then there is nobody to wait for.
        if self.absorb_branches(session) {
            return;
        }
        // Whoever holds the chain persists it and acknowledges (or refuses it, if the chain
        // went on elsewhere); the others ignore the request.
        self.push_to_participants(session, Some(from));
    }

    /// Once our current copy is known committed, re-version it above the branches
    /// participants uploaded beside it (they hold nothing committed), so those participants
    /// move forward to it, and ask the chain holder to persist that too. Whether it did.
    fn absorb_branches(&mut self, session: SessionId) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return false;
        };
        let confirmed_now = entry
            .chain
            .confirmed
            .as_ref()
            .is_some_and(|(v, _)| *v == entry.header.version);
        if !confirmed_now {
            return false;
        }
        let Some(branch) = entry.chain.absorb.take() else {
            return false;
        };
        let Ok(joined) = entry.header.version.join(&branch) else {
            return false;
        };
        if self
            .change(session, true, |h, _| h.version = joined)
            .is_err()
        {
            return false;
        }
        self.stats.branches_absorbed += 1;
        self.push_to_participants(session, None);
        true
    }

    /// Replace a session's copy with an upload; participants the new copy no longer names
    /// are told they were removed.
    fn replace(
        &mut self,
        session: SessionId,
        from: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
        chain: Chain,
    ) {
        let (old, mut removed): (Vec<DeviceId>, Vec<DeviceId>) = self
            .sessions
            .get(&session)
            .map(|e| (e.header.participants().collect(), e.removed.clone()))
            .unwrap_or_default();
        let header = sealed.header.clone();
        self.effects.persist.push((session, sealed.clone()));
        self.insert(header.clone(), body, sealed, chain);
        for d in &old {
            if header.role_of(*d).is_none() && !removed.contains(d) {
                removed.push(*d);
            }
        }
        removed.truncate(MAX_REMOVED_PER_SESSION);
        if let Some(e) = self.sessions.get_mut(&session) {
            e.removed = removed;
        }
        for d in old {
            if header.role_of(d).is_none() && d != from {
                self.stats.removed += 1;
                self.effects
                    .events
                    .push(DcEvent::Removed { session, device: d });
                if self.connected.contains_key(&d) {
                    self.effects.send.push((d, ServerMsg::Removed { session }));
                }
            }
        }
    }

    /// Whether `device`, which uploaded a copy of `version` naming it, is no longer a
    /// participant of the session on the committed chain: our copy does not name it, and
    /// what we know committed of our line names another provider, is finished, or is past
    /// the device's copy.
    fn removed(&self, entry: &Entry<A>, device: DeviceId, version: &VersionVector) -> bool {
        if entry.header.role_of(device).is_some() {
            return false;
        }
        match &entry.chain.confirmed {
            None => false,
            Some((vc, driver)) => {
                driver.is_some_and(|d| d != device)
                    || entry.header.tombstone
                    || matches!(
                        vc.compare(version),
                        VersionOrder::Newer | VersionOrder::Equal
                    )
            }
        }
    }

    fn tell_removed(&mut self, session: SessionId, device: DeviceId) -> UploadOutcome {
        if let Some(e) = self.sessions.get_mut(&session) {
            if !e.removed.contains(&device) && e.removed.len() < MAX_REMOVED_PER_SESSION {
                e.removed.push(device);
            }
        }
        self.stats.removed += 1;
        self.effects
            .events
            .push(DcEvent::Removed { session, device });
        UploadOutcome::Removed
    }

    /// A copy the device says is committed, concurrent with ours: our branch since the two
    /// parted holds only changes nobody was told are committed (a committed change is on the
    /// one chain, and the chain is ordered). Keep the committed copy with a version above
    /// both, so every device adopts it. If ours is also known committed past the parting,
    /// the rule was broken somewhere: change nothing and report it.
    fn adopt_committed(
        &mut self,
        session: SessionId,
        device: DeviceId,
        sealed: SealedDigest,
        body: DigestBody<A::State>,
    ) -> UploadOutcome {
        let Some(entry) = self.sessions.get(&session) else {
            return UploadOutcome::Diverged;
        };
        let ours_committed_past = entry.chain.confirmed.as_ref().is_some_and(|(vc, _)| {
            !matches!(
                vc.compare(&sealed.header.version),
                VersionOrder::Older | VersionOrder::Equal
            )
        });
        // The kept copy must be re-versioned above both; if the vector cannot grow, nothing
        // changes rather than a copy moving sideways here.
        let replica = self.cfg.replica;
        let joined = entry
            .header
            .version
            .join(&sealed.header.version)
            .ok()
            .filter(|j| {
                let mut bumped = j.clone();
                bumped.bump(replica).is_ok()
            });
        let Some(joined) = joined.filter(|_| !ours_committed_past) else {
            self.stats.chain_conflicts += 1;
            self.effects.events.push(DcEvent::ChainConflict {
                session,
                from: device,
            });
            return UploadOutcome::Diverged;
        };
        let chain = Chain {
            confirmed: Some((sealed.header.version.clone(), sealed.header.driver)),
            confirmed_marks: body.dedup.clone(),
            unconfirmed: VecDeque::new(),
            absorb: None,
        };
        self.replace(session, device, sealed, body, chain);
        if self
            .change(session, false, |h, _| h.version = joined)
            .is_err()
        {
            // The upload is kept as it came; devices that hold our branch wait for the
            // chain holder.
            return UploadOutcome::Restored;
        }
        // The kept copy's content is committed, its new version not yet: ask the chain
        // holder to persist it, so the others can be told it is.
        if let Some(e) = self.sessions.get_mut(&session) {
            e.record_unconfirmed(true);
        }
        self.stats.chain_adopted += 1;
        self.effects.events.push(DcEvent::ChainAdopted {
            session,
            from: device,
        });
        // Everyone connected gets the kept copy, the uploader included, and what of it is
        // committed: a provider the committed copy names that never held it (it was away
        // when the hand-over was made elsewhere) learns only so that it holds the chain, and
        // without it nobody could ever confirm the kept copy.
        self.push_to_participants(session, None);
        let others: Vec<DeviceId> = self
            .sessions
            .get(&session)
            .map(|e| e.header.participants().collect())
            .unwrap_or_default();
        for d in others {
            if d != device && self.connected.contains_key(&d) {
                self.tell_committed(session, d, &VersionVector::new());
            }
        }
        UploadOutcome::Restored
    }

    /// The chain holder (or a device that knows) says `version` of this line is committed,
    /// with every participant's watermark `dedup` in it. Tell the other participants what
    /// they may now report, and when a hand-over completed, give the provider the copy it
    /// now commits on.
    fn confirm(
        &mut self,
        session: SessionId,
        version: &VersionVector,
        driver: Option<DeviceId>,
        dedup: Vec<DedupEntry>,
        by: DeviceId,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let newer = match &entry.chain.confirmed {
            None => true,
            Some((v, _)) => version.compare(v) == VersionOrder::Newer,
        };
        if !newer {
            // Already known; branches that waited for it can be absorbed now.
            self.absorb_branches(session);
            return;
        }
        let was_handed_over = entry.anchor_known();
        entry.chain.confirmed = Some((version.clone(), driver));
        entry.chain.confirmed_marks = dedup.clone();
        if let Some(i) = entry
            .chain
            .unconfirmed
            .iter()
            .position(|u| u.version == *version)
        {
            entry.chain.unconfirmed.drain(..=i);
        }
        if entry.header.version == *version {
            entry.chain.unconfirmed.clear();
        }
        let handed_over_now = !was_handed_over && entry.anchor_known();
        let participants: Vec<DeviceId> = entry.header.participants().collect();
        let provider = entry.header.driver;
        self.stats.confirmations += 1;
        self.effects.events.push(DcEvent::Confirmed {
            session,
            version: version.clone(),
        });
        let current = self
            .sessions
            .get(&session)
            .is_some_and(|e| e.header.version == *version);
        // Branches waiting to be absorbed are re-versioned after the others are told what
        // is committed now (a provider must learn it holds the chain before the re-versioned
        // copy asks it to persist it, or nobody could confirm that copy).
        let absorb_next = current
            && self
                .sessions
                .get(&session)
                .is_some_and(|e| e.chain.absorb.is_some());
        for d in participants {
            if d == by || !self.connected.contains_key(&d) {
                continue;
            }
            if current && !absorb_next {
                // The copy itself is now committed for everyone: a device holding a branch
                // nobody confirmed can give way to it.
                self.push_to(session, d);
                continue;
            }
            let (your_last_seq, your_applied_bits) = mark_of(&dedup, d);
            self.effects.send.push((
                d,
                ServerMsg::Committed {
                    session,
                    version: version.clone(),
                    driver,
                    your_last_seq,
                    your_applied_bits,
                },
            ));
        }
        if handed_over_now && !current {
            if let Some(p) = provider.filter(|p| *p != by && self.connected.contains_key(p)) {
                self.push_to(session, p);
            }
        }
        if absorb_next {
            self.absorb_branches(session);
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

    /// Advance time: forget full create budgets, then dispatch.
    pub fn handle_tick(&mut self, now_ms: u64) {
        // Forget devices whose create budget is full again (C6: the map stays small).
        let per_minute = self.cfg.session_creates_per_minute;
        self.create_budget.retain(|_, b| {
            Self::refill(b, per_minute, now_ms);
            b.tokens < per_minute
        });
        self.dispatch(now_ms);
    }

    /// Assign available drivers to sessions that need one (the server-side change).
    fn dispatch(&mut self, now_ms: u64) {
        let mut deferred = Vec::new();
        while let Some(session) = self.waiting.pop_front() {
            let Some(entry) = self.sessions.get(&session) else {
                continue;
            };
            if entry.header.tombstone
                || entry.header.driver.is_some()
                || !A::needs_assignee(&entry.body.state)
            {
                continue;
            }
            if !self.connected.contains_key(&entry.header.rider) {
                // The rider is not here: it may have taken the trip to another datacenter,
                // and it must persist the hand-over anyway. Wait until it reports in here
                // again (`handle_connect` dispatches).
                deferred.push(session);
                continue;
            }
            let removed = entry.removed.clone();
            let Some(driver) = self.next_driver(entry.header.rider, &removed) else {
                self.waiting.push_front(session);
                break;
            };
            // The hand-over waits for the rider (the chain holder until it persisted it).
            let result = self.change(session, true, |h, b| {
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

    /// The next available driver, other than the rider and the providers removed from this
    /// session (a provider assigned to it again would reuse the op ids of its earlier
    /// branch: its seqs restart when it drops the session).
    fn next_driver(&mut self, rider: DeviceId, removed: &[DeviceId]) -> Option<DeviceId> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(d) = self.pool.pop_front() {
            if !self.in_pool.contains(&d) {
                continue;
            }
            if removed.contains(&d) {
                skipped.push(d);
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

    /// A device persisted `version` of a session (it was asked to: `SessionUpdate::ack`).
    /// Any participant's counts for edge-ack durability; one `certified` (the device's own
    /// persisting committed it: it holds the chain), for a copy of this line, commits the
    /// line up to it.
    pub fn handle_ack(
        &mut self,
        device: DeviceId,
        session: SessionId,
        version: VersionVector,
        certified: bool,
    ) {
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
        // The datacenter's own report of a dispatch (edge-ack durability).
        if let (Durability::EdgeAck(k), Some(p)) = (self.cfg.durability, entry.pending.as_mut()) {
            if version.covers(&p.version) && !p.acks.contains(&device) {
                p.acks.push(device);
            }
            if p.acks.len() >= usize::from(k) {
                let version = p.version.clone();
                entry.pending = None;
                self.stats.server_changes_committed += 1;
                self.effects
                    .events
                    .push(DcEvent::ServerChangeCommitted { session, version });
            }
        }
        if !certified {
            return;
        }
        // Only a copy of this line counts: one recorded as waiting, or the current one.
        let _ = self.learn_committed(session, &version, device);
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
        let reject = |this: &mut Self, r: OpRejection, with_update: bool| {
            this.stats.ops_rejected += 1;
            this.reply(device, session, seq, OpOutcome::Rejected(r), with_update);
        };
        let Some(entry) = self.sessions.get(&session) else {
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
            return self.create(now_ms, device, session, op);
        };
        let Some(role) = entry.header.role_of(device) else {
            return reject(self, OpRejection::NotParticipant, false);
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
        // Another participant's op commits only once the chain holder persisted it, and so
        // does the anchor's while this datacenter does not know the hand-over is done.
        let waits = device != entry.header.anchor() || !entry.anchor_known();
        let mut app_result = Ok(());
        let changed = self.change(session, waits, |_, body| {
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

    /// An op sent again after its connection was lost (see [`crate::wire::ClientMsg::Resubmit`]).
    /// Answered exactly like a submit: the chain rule makes a second provider for a
    /// resubmitted request harmless (only the assignment the rider persists commits; the
    /// other provider is told it was removed).
    pub fn handle_resubmit(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        seq: u64,
        op: A::Op,
    ) {
        self.handle_submit(now_ms, device, session, seq, op)
    }

    fn create(&mut self, now_ms: u64, device: DeviceId, session: SessionId, op: A::Op) {
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
        // The creator is the anchor: its persisting the reply commits the create.
        // The creator is the anchor: its persisting the reply commits the create. Nothing is
        // known committed until it says so (the reply may be lost, and the creator may
        // start over elsewhere).
        let chain = Chain {
            confirmed: None,
            unconfirmed: VecDeque::from([Unconfirmed {
                version: header.version.clone(),
                driver: None,
                dedup: body.dedup.clone(),
            }]),
            ..Chain::default()
        };
        self.insert(header, body, sealed, chain);
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
