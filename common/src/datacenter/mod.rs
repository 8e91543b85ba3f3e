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
//!   core asks for (`SessionUpdate::ack`) and turns into [`ServerMsg::Committed`](crate::wire::ServerMsg::Committed) for the
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
//!   names is told [`ServerMsg::Removed`](crate::wire::ServerMsg::Removed)). An uncommitted concurrent upload changes nothing
//!   ([`UploadOutcome::Diverged`](crate::wire::UploadOutcome::Diverged)): the session waits for its chain holder.
//! - Dispatch: a session is dispatched only while its rider is connected here (the rider
//!   must persist the hand-over anyway, and a copy the rider left behind may be stale).
//! - Tombstones: a finished session keeps its final digest; an older copy never revives it
//!   (S10). Tombstones expire by age and count, and a restore floor on seal times keeps an
//!   expired one's session from coming back (`tombstones`).
//! - Bounded (C6): sessions, the dispatch queue and the per-session record of copies waiting
//!   for the chain holder all have limits; hitting one is a typed rejection, never a panic. A
//!   device may create a session only while it takes part in fewer than
//!   `max_active_sessions_per_device` active sessions, and at most
//!   `session_creates_per_minute` times a minute (a token bucket per device; the bucket map
//!   holds only devices that created within the last minute).
//!
//! The rooms of this module: [`types`](DcConfig) (configuration, effects, events, stats),
//! `entry` (one session's state), `table` (the session table and pushes), `connect` and
//! `restore` (connect uploads and judging a digest), `chain` (the chain rule), `dispatch`,
//! `admission` (create budgets), `submit` (ops), [`drain`](DrainPlan) (a planned failover's
//! waves), [`shadow`](ShadowSample) (the shadow restore: continuous verification that the
//! edges could restore every session), and [`ConnectIntake`] (reassembling a
//! connect upload within its limits, for the driver).

mod admission;
mod chain;
mod connect;
mod dispatch;
mod drain;
mod entry;
mod intake;
mod restore;
mod shadow;
mod submit;
mod table;
mod tombstones;
mod types;

use admission::CreateBudget;
pub use drain::{DrainConfig, DrainPlan};
use entry::{mark_of, Chain, Conn, Entry, Pending, Unconfirmed};
pub use intake::{ConnectIntake, Connected, InflightRule, IntakeStep};
use shadow::Shadow;
pub use shadow::{CopyCheck, ShadowSample, MAX_SHADOW_PROBES, SHADOW_DEADLINE_MS};
pub use tombstones::{HOUSEKEEPING_MS, MAX_CLOCK_SKEW_MS, MAX_EXPIRED_PER_TICK, REFRESH_SCAN};
pub use types::{DcConfig, DcEvent, DcStats, Durability, Effects};

use crate::app::Application;
use crate::dedup::DedupEntry;
use crate::digest::{DigestHeader, SealedDigest};
use crate::ids::{DeviceId, Role, SessionId};
use crate::keyring::Keyring;
use crate::wire::{ClientMsg, ProtocolError};
use std::collections::{HashMap, HashSet, VecDeque};

/// Most copies a session records while they wait for the chain holder's `Ack` (C6). When it
/// is full the oldest is forgotten: an `Ack` of a later copy confirms it too.
pub const MAX_UNCONFIRMED_COPIES: usize = 16;

/// Most providers a session remembers it removed (never dispatched to it again).
pub const MAX_REMOVED_PER_SESSION: usize = 4;

/// Finished sessions per anchor whose final copy waits for that anchor's persisting (see
/// `unsettled_ends`); beyond it the oldest is no longer brought to the anchor on connect.
pub const MAX_UNSETTLED_ENDS: usize = 16;

/// The datacenter's replication state machine (see the module docs).
pub struct DatacenterCore<A: Application> {
    cfg: DcConfig,
    keyring: Keyring,
    sessions: HashMap<SessionId, Entry<A>>,
    /// Active (non-tombstoned) sessions per participant.
    by_device: HashMap<DeviceId, Vec<SessionId>>,
    /// Finished sessions whose final copy waits for its anchor's persisting, by anchor (at
    /// most [`MAX_UNSETTLED_ENDS`] each): an anchor that missed that copy is brought it
    /// again when it connects (the active ones are in `by_device`).
    unsettled_ends: HashMap<DeviceId, VecDeque<SessionId>>,
    connected: HashMap<DeviceId, Conn>,
    /// Drivers offered for dispatch (validated lazily when popped).
    pool: VecDeque<DeviceId>,
    in_pool: HashSet<DeviceId>,
    /// Sessions waiting for a driver (validated lazily when popped).
    waiting: VecDeque<SessionId>,
    /// Devices that created sessions within the last minute (see the module docs).
    create_budget: HashMap<DeviceId, CreateBudget>,
    /// When `handle_tick` last ran (unix ms).
    last_tick_ms: u64,
    /// The latest time any input brought (unix ms; never goes back): what seals are stamped
    /// with. The core reads no clock.
    now_ms: u64,
    /// The shadow restore's samples (see `shadow`).
    shadow: Shadow<A>,
    /// Every tombstone held, by the seal time of its copy (ms) (see `tombstones`).
    tombstones: std::collections::BTreeSet<(u64, SessionId)>,
    /// Copies of unknown sessions sealed before this (unix ms) are refused (see `tombstones`).
    restore_floor_ms: u64,
    /// Sessions still to look at for a refresh, round the table.
    refresh_queue: VecDeque<SessionId>,
    /// When the expiry and refresh next run (unix ms).
    next_housekeeping_ms: u64,
    effects: Effects<A>,
    stats: DcStats,
}

/// How often the core wants [`DatacenterCore::handle_tick`] while it has timed work (ms).
pub const TICK_MS: u64 = 100;

impl<A: Application> DatacenterCore<A> {
    /// An empty core (no sessions, nobody connected) that seals with `keyring`.
    pub fn new(cfg: DcConfig, keyring: Keyring) -> Self {
        Self {
            cfg,
            keyring,
            sessions: HashMap::new(),
            by_device: HashMap::new(),
            unsettled_ends: HashMap::new(),
            connected: HashMap::new(),
            pool: VecDeque::new(),
            in_pool: HashSet::new(),
            waiting: VecDeque::new(),
            create_budget: HashMap::new(),
            last_tick_ms: 0,
            now_ms: 0,
            shadow: Shadow::default(),
            tombstones: Default::default(),
            restore_floor_ms: 0,
            refresh_queue: VecDeque::new(),
            next_housekeeping_ms: 0,
            effects: Effects::default(),
            stats: DcStats::default(),
        }
    }

    /// The configuration the core was made with.
    pub fn config(&self) -> &DcConfig {
        &self.cfg
    }

    /// The counters since the core was made.
    pub fn stats(&self) -> &DcStats {
        &self.stats
    }

    /// Replace the keyring (rotation without restart).
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    /// The keyring the core seals and opens digests with.
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

    /// Number of sessions held that are not tombstones.
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

    /// Take the time an input brought (it never goes back).
    fn clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// A device's connection closed.
    pub fn handle_disconnect(&mut self, device: DeviceId) {
        self.connected.remove(&device);
        self.in_pool.remove(&device);
        self.compact_pool();
        self.shadow_disconnect(self.now_ms, device);
    }

    /// When the core next wants [`DatacenterCore::handle_tick`] (unix ms): while sessions
    /// wait for a provider (dispatch retries) or create budgets refill; `None`: no timer is
    /// needed (a tick then would change nothing).
    pub fn poll_timeout(&self) -> Option<u64> {
        let timed_work = !self.waiting.is_empty() || !self.create_budget.is_empty();
        let tick = timed_work.then(|| self.last_tick_ms.saturating_add(TICK_MS));
        let shadow = self.shadow.poll_timeout(self.cfg.shadow_interval_ms);
        [tick, shadow, self.housekeeping_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Advance time: forget full create budgets, dispatch, expire tombstones and refresh idle
    /// sessions (every [`HOUSEKEEPING_MS`]), then the shadow restore's samples.
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.clock(now_ms);
        self.last_tick_ms = now_ms;
        // Forget devices whose create budget is full again (C6: the map stays small).
        let per_minute = self.cfg.session_creates_per_minute;
        self.create_budget.retain(|_, b| {
            Self::refill(b, per_minute, now_ms);
            b.tokens < per_minute
        });
        self.dispatch(now_ms);
        self.housekeeping(now_ms);
        self.shadow_tick(now_ms);
    }

    /// The one entry point for a message from a connected, authenticated `device` (raft-rs's
    /// `step`): every [`ClientMsg`] after the connect upload goes here. `Hello` and `Upload`
    /// belong to the connect upload ([`crate::datacenter::ConnectIntake`] reassembles it,
    /// [`DatacenterCore::handle_connect`] takes it): after it they are a protocol error,
    /// returned for the driver to send and close on; the core changes nothing then.
    pub fn handle_message(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        msg: ClientMsg<A>,
    ) -> Result<(), ProtocolError> {
        self.clock(now_ms);
        match msg {
            ClientMsg::Submit { session, seq, op } => {
                self.handle_submit(now_ms, device, session, seq, op)
            }
            ClientMsg::Resubmit { session, seq, op } => {
                self.handle_resubmit(now_ms, device, session, seq, op)
            }
            ClientMsg::Ack {
                session,
                version,
                certified,
            } => self.handle_ack(device, session, version, certified),
            ClientMsg::SetAvailable { available } => {
                self.handle_set_available(now_ms, device, available)
            }
            ClientMsg::Reupload { copy } => self.handle_reupload(now_ms, device, copy),
            ClientMsg::Sampled { session, copy } => {
                self.handle_sampled(now_ms, device, session, copy)
            }
            ClientMsg::Hello { .. } | ClientMsg::Upload { .. } => {
                return Err(ProtocolError::BadFrame("Hello/Upload after connect".into()))
            }
        }
        Ok(())
    }

    /// The role of a device in a session held here.
    pub fn role_of(&self, session: SessionId, device: DeviceId) -> Option<Role> {
        self.sessions.get(&session)?.header.role_of(device)
    }
}
