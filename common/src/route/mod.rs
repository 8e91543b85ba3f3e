//! The edge's route policy, as a deterministic state machine: which datacenter a device
//! tries next, how long it waits, when it probes the more preferred ones, and how long the
//! user felt a failover. The edge client's driver only connects, sleeps and writes the route
//! memory to disk; every choice is made here, with time handed in (`now_ms`, the driver's
//! clock) and jitter from a seeded generator, so a seed replays exactly.
//!
//! The rules (the README's "converging on one datacenter"):
//! - The datacenter list is an order of preference shared by the devices of a region. The
//!   first round after a start tries the datacenter this device last reached first, then the
//!   others in preference order, those that failed in the last
//!   [`RouteConfig::remember_failure_ms`] last ([`RouteMemory`]).
//! - After a loss, the most preferred first, except that the one just lost and any that
//!   recently did not answer ([`ProbeBoard`]) go to the back, in preference order too.
//! - A full round of failures waits a jittered backoff (`backoff` plus up to half of it),
//!   then starts again; the backoff doubles up to [`RouteConfig::backoff_max_ms`] and is
//!   reset by a `Welcome`.
//! - A datacenter that refuses the connection (busy: at its handshake limit in a reconnect
//!   storm) is alive: the same one is tried again after a jittered backoff (`backoff` plus
//!   up to all of it), instead of falling over to the next.
//! - A datacenter being drained (a planned failover) says where to go: the device connects
//!   there at once if that address is in its own list, else to the next in order, with no
//!   backoff, and holds the drained one off (probes too) for the time the drain may still
//!   run ([`ProbeBoard::hold`]), so it does not move back while it is drained.
//! - A connection that ends before `Welcome` (refused credential, replaced, overloaded) is
//!   followed by a backoff wait like a failed connect.
//! - While connected to any but the first datacenter, the more preferred ones are probed
//!   after a jittered interval (half to one and a half times it), doubling after each probe
//!   that found none up to [`RouteConfig::probe_max_ms`]; the first handshake that completes
//!   wins and the device moves there. So the two participants of a session end up at the
//!   same datacenter (S13) well within the restore grace.
//!
//! Invariants: every wait is bounded by `backoff_max_ms` (times two with its jitter) or
//! `probe_max_ms` (times one and a half); the queue only ever holds indexes of the
//! datacenter list; nothing here blocks or reads a clock.

mod board;
mod liveness;
mod memory;
mod stall;

pub use board::{ProbeBoard, MAX_BOARD_ENTRIES};
pub use liveness::{Liveness, LivenessConfig, Verdict, Waiting};
pub use memory::{RouteMemory, MAX_REMEMBERED_FAILURES};
pub use stall::{Stall, StallClock};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::hash::Hash;

/// The longest a drained datacenter is held off, whatever it asks (ms): a datacenter cannot
/// keep its devices away for longer than this.
pub const MAX_DRAIN_HOLD_MS: u64 = 300_000;

/// The route policy's settings (times in ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// The first backoff after a failed round, and the value a `Welcome` resets it to.
    pub backoff_min_ms: u64,
    /// The backoff doubles up to this.
    pub backoff_max_ms: u64,
    /// Probe the more preferred datacenters this often while away from the first (`None`:
    /// stay).
    pub home_probe_ms: Option<u64>,
    /// Longest wait between two probes that keep finding nothing; also the window in which
    /// a datacenter that did not answer is skipped when `home_probe_ms` is `None`.
    pub probe_max_ms: u64,
    /// A datacenter that failed this recently goes to the back of the first round.
    pub remember_failure_ms: u64,
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Connect to the datacenter at this index of the list.
    Connect(usize),
    /// Wait this long (serving the app meanwhile), then ask again.
    Wait(u64),
}

/// What comes after a wait the planner asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterWait {
    /// A full round failed: a new round, with a longer backoff.
    NewRound,
    /// A busy datacenter: the same one again, with a longer backoff.
    Retry(usize),
}

/// The route policy of one device (see the module docs).
#[derive(Debug)]
pub struct Planner<T> {
    cfg: RouteConfig,
    datacenters: Vec<T>,
    memory: RouteMemory<T>,
    queue: VecDeque<usize>,
    last_lost: Option<usize>,
    backoff_ms: u64,
    after_wait: Option<AfterWait>,
    probe_every_ms: u64,
    rng: SmallRng,
}

impl<T: Copy + Eq + Hash> Planner<T> {
    /// A device with datacenters `datacenters` (most preferred first), what it remembers of
    /// its routes, and the seed of its jitter. The first round starts at once.
    pub fn new(
        cfg: RouteConfig,
        datacenters: Vec<T>,
        memory: RouteMemory<T>,
        seed: u64,
        now_ms: u64,
    ) -> Self {
        let mut p = Self {
            backoff_ms: cfg.backoff_min_ms,
            probe_every_ms: cfg.home_probe_ms.unwrap_or(cfg.probe_max_ms),
            cfg,
            datacenters,
            memory,
            queue: VecDeque::new(),
            last_lost: None,
            after_wait: None,
            rng: SmallRng::seed_from_u64(seed),
        };
        p.queue = p.first_order(now_ms);
        p
    }

    /// The datacenter at `idx` of the list.
    pub fn addr(&self, idx: usize) -> Option<T> {
        self.datacenters.get(idx).copied()
    }

    /// What this device remembers of its routes (the driver keeps it on disk).
    pub fn memory(&self) -> &RouteMemory<T> {
        &self.memory
    }

    /// The current reconnect backoff.
    pub fn backoff_ms(&self) -> u64 {
        self.backoff_ms
    }

    /// The next step: connect to a datacenter, or wait first.
    pub fn next(&mut self, board: &ProbeBoard<T>, now_ms: u64) -> Next {
        match self.after_wait.take() {
            Some(AfterWait::NewRound) => {
                self.grow_backoff();
                self.queue = self.order(self.last_lost, board, now_ms);
            }
            Some(AfterWait::Retry(idx)) => {
                self.grow_backoff();
                self.queue.push_front(idx);
            }
            None => {}
        }
        match self.queue.pop_front() {
            Some(idx) => Next::Connect(idx),
            None => {
                let jitter = self.rng.random_range(0..=self.backoff_ms / 2);
                self.after_wait = Some(AfterWait::NewRound);
                Next::Wait(self.backoff_ms + jitter)
            }
        }
    }

    /// The datacenter at `idx` refused the connection (busy): how long to wait before the
    /// same one is tried again (the next [`Planner::next`]).
    pub fn busy(&mut self, idx: usize) -> u64 {
        let jitter = self.rng.random_range(0..=self.backoff_ms);
        self.after_wait = Some(AfterWait::Retry(idx));
        self.backoff_ms + jitter
    }

    /// The connect to `idx` failed (no answer, or the handshake failed) at `now_ms`.
    pub fn connect_failed(&mut self, idx: usize, board: &mut ProbeBoard<T>, now_ms: u64) {
        if let Some(addr) = self.addr(idx) {
            board.record(addr, false, now_ms);
            self.memory.remember(addr, false, now_ms);
        }
    }

    /// The datacenter at `idx` welcomed this device at `now_ms`.
    pub fn welcomed(&mut self, idx: usize, now_ms: u64) {
        if let Some(addr) = self.addr(idx) {
            self.memory.remember(addr, true, now_ms);
        }
    }

    /// A connection ended; `welcomed` says whether it got as far as `Welcome`. Returns the
    /// wait before anything else when it did not (it is backed off like a failed connect).
    pub fn connection_ended(&mut self, welcomed: bool) -> Option<u64> {
        if welcomed {
            self.backoff_ms = self.cfg.backoff_min_ms;
            return None;
        }
        let wait = self.backoff_ms;
        self.grow_backoff();
        Some(wait)
    }

    /// The device moved from `from` to a more preferred datacenter a probe found.
    pub fn moved(&mut self, from: usize, board: &ProbeBoard<T>, now_ms: u64) {
        self.queue = self.order(Some(from), board, now_ms);
    }

    /// The connection to `idx` was lost at `now_ms` (not a move home): it goes to the back.
    pub fn lost(&mut self, idx: usize, board: &mut ProbeBoard<T>, now_ms: u64) {
        if let Some(addr) = self.addr(idx) {
            board.record(addr, false, now_ms);
            self.memory.remember(addr, false, now_ms);
        }
        self.last_lost = Some(idx);
        self.queue = self.order(Some(idx), board, now_ms);
    }

    /// The datacenter at `idx` is being drained (a planned failover, at `now_ms`): it goes to
    /// the back and is held off, probes included, for `back_after_ms` (at most
    /// [`MAX_DRAIN_HOLD_MS`]); the next connect goes
    /// to `to` if it is in the list (and is not `idx`), else to the next in order, with no
    /// wait of its own (the datacenter said where to go; a drain heard before `Welcome` was
    /// already backed off by [`Planner::connection_ended`]).
    pub fn drained(
        &mut self,
        idx: usize,
        to: Option<T>,
        back_after_ms: u64,
        board: &mut ProbeBoard<T>,
        now_ms: u64,
    ) {
        if let Some(addr) = self.addr(idx) {
            let hold = back_after_ms.min(MAX_DRAIN_HOLD_MS);
            board.hold(addr, now_ms.saturating_add(hold));
            self.memory.remember(addr, false, now_ms);
        }
        self.last_lost = Some(idx);
        self.after_wait = None;
        self.queue = self.order(Some(idx), board, now_ms);
        let target = to.and_then(|a| self.datacenters.iter().position(|d| *d == a));
        if let Some(j) = target.filter(|j| *j != idx) {
            self.queue.retain(|i| *i != j);
            self.queue.push_front(j);
        }
    }

    /// Where a device connected to `idx` would go first if it lost it now (the datacenter
    /// a standby connection should reach), or `None` if the list has no other.
    pub fn failover_target(&self, idx: usize, board: &ProbeBoard<T>, now_ms: u64) -> Option<usize> {
        self.order(Some(idx), board, now_ms)
            .into_iter()
            .find(|j| *j != idx)
    }

    /// The datacenter the next [`Planner::next`] connects to without waiting, if any.
    pub fn peek_next(&self) -> Option<usize> {
        match self.after_wait {
            None => self.queue.front().copied(),
            Some(_) => None,
        }
    }

    /// Whether a device connected to `idx` probes the more preferred datacenters.
    pub fn probes_from(&self, idx: usize) -> bool {
        idx > 0 && self.cfg.home_probe_ms.is_some()
    }

    /// A connection starts: the wait before its first probe (jittered).
    pub fn first_probe_wait(&mut self) -> u64 {
        self.probe_every_ms = self.cfg.home_probe_ms.unwrap_or(self.cfg.probe_max_ms);
        self.probe_wait()
    }

    /// A probe found no more preferred datacenter: the wait before the next (longer).
    pub fn probe_found_none(&mut self) -> u64 {
        self.probe_every_ms = (self.probe_every_ms * 2).min(self.cfg.probe_max_ms);
        self.probe_wait()
    }

    /// The datacenters a probe from `idx` tries, most preferred first.
    pub fn probe_targets(&self, idx: usize) -> Vec<(usize, T)> {
        self.datacenters
            .iter()
            .take(idx)
            .copied()
            .enumerate()
            .collect()
    }

    /// How long a datacenter that did not answer is skipped by probes and sent to the back.
    pub fn probe_window_ms(&self) -> u64 {
        self.cfg.home_probe_ms.unwrap_or(self.cfg.probe_max_ms)
    }

    fn probe_wait(&mut self) -> u64 {
        let ms = self.probe_every_ms;
        ms / 2 + self.rng.random_range(0..=ms)
    }

    fn grow_backoff(&mut self) {
        self.backoff_ms = (self.backoff_ms * 2).min(self.cfg.backoff_max_ms);
    }

    /// Most preferred first, except that `last` and any that recently did not answer go to
    /// the back, in preference order too.
    fn order(&self, last: Option<usize>, board: &ProbeBoard<T>, now_ms: u64) -> VecDeque<usize> {
        let window = self.probe_window_ms();
        let mut q: Vec<usize> = (0..self.datacenters.len()).collect();
        q.sort_by_key(|i| {
            let failing =
                Some(*i) == last || board.recently_failed(self.datacenters[*i], now_ms, window);
            (failing, *i)
        });
        q.into()
    }

    /// The first round after a start (see the module docs).
    fn first_order(&self, now_ms: u64) -> VecDeque<usize> {
        let window = self.cfg.remember_failure_ms;
        let last = self
            .memory
            .last_reached
            .and_then(|a| self.datacenters.iter().position(|d| *d == a));
        let mut q: Vec<usize> = (0..self.datacenters.len()).collect();
        q.sort_by_key(|i| {
            let failed = self
                .memory
                .failed_within(self.datacenters[*i], now_ms, window);
            (Some(*i) != last, failed, *i)
        });
        q.into()
    }
}
