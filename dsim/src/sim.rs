//! One simulated run: real datacenters and real edge clients on turmoil hosts, a seeded
//! workload, a fault plan, then the history check.
//!
//! ```text
//!  turmoil (one thread, simulated clock and network)
//!   host dc1, dc2:  lifeboat_server::Server (sled store on disk) on a quinn endpoint over
//!                   a simulated UDP socket (crate::net)
//!   host r0.., d0..: lifeboat_edge::EdgeClient (sled store on disk) + the rider or driver
//!                   app (crate::workload) + the recorder of its history
//!  the controller (this module) steps the simulation, applies the plan's faults at their
//!  times, heals everything for the settle phase, stops the devices and the datacenters,
//!  reads every store (datacenters' and devices') and runs the checker.
//! ```
//!
//! Determinism: every random choice comes from the seed (turmoil's network, the fault plan,
//! the workload, quinn's endpoint generator, the edge client's jitter, the datacenters'
//! replica ids); simulated time drives quinn, tokio timers and the `Clock` of the server
//! and the client. The same seed gives the same history, event for event, and the same
//! [`RunOutcome::trace_hash`].
//!
//! Invariants: every loop is bounded in simulated time ([`SimConfig::end_ms`]) and the run
//! fails loudly (an `Err`, never a silent pass) if a store cannot be reopened, a recorder
//! misses events or a datacenter does not stop.

use crate::faults::{self, Action, Cut, FaultKind, PlanShape, Scheduled};
use crate::net;
use crate::workload::{self, FailoverWatch, Recorder, Role, WorkloadConfig};
use anyhow::{anyhow, bail, Context as _};
use lifeboat_common::clock::Clock;
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::{DatacenterId, DeviceId};
use lifeboat_edge::{EdgeClient, EdgeConfig, StoreLocation};
use lifeboat_server::store::DcStore;
use lifeboat_server::{Server, ServerConfig};
use lifeboat_testkit::checker::{self, DeviceCopy, Event, FinalState, History, Summary, Violation};
use lifeboat_testkit::region::TestRegion;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The simulated wall clock starts here (2026-01-01T00:00:00Z), on every run.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
const DC_PORT: u16 = 4433;

/// The shape of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Trip pairs: this many riders and this many drivers, each on its own host.
    pub pairs: usize,
    pub datacenters: usize,
    /// Traffic and faults until here (simulated ms).
    pub workload_ms: u64,
    /// Then everything is healed and the devices settle for this long before the check.
    pub settle_ms: u64,
    /// Simulated time per step.
    pub tick_ms: u64,
    /// Normal message latency bound (messages take 1 ms to this).
    pub latency_ms: u64,
    /// Random fault episodes (0: a fault-free run).
    pub episodes: usize,
}

impl SimConfig {
    /// The shape the CI suite runs for each seed.
    pub fn ci(seed: u64) -> Self {
        Self {
            seed,
            pairs: 3,
            datacenters: 2,
            workload_ms: 40_000,
            settle_ms: 25_000,
            tick_ms: 10,
            latency_ms: 30,
            episodes: 8,
        }
    }

    pub fn end_ms(&self) -> u64 {
        self.workload_ms + self.settle_ms
    }

    fn devices(&self) -> usize {
        2 * self.pairs
    }

    pub fn shape(&self) -> PlanShape {
        PlanShape {
            datacenters: self.datacenters,
            devices: self.devices(),
            start_ms: 3_000,
            end_ms: self.workload_ms,
            episodes: self.episodes,
            base_latency_ms: self.latency_ms,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub seed: u64,
    pub history: History,
    pub finals: FinalState,
    pub violations: Vec<Violation>,
    pub summary: Summary,
    /// The faults applied, with their times.
    pub faults: Vec<String>,
    /// SHA-256 of the history, the faults and the final stores: equal on every replay.
    pub trace_hash: String,
    /// Ops still waiting for an answer at the end (liveness, reported, not a violation).
    pub ops_unresolved: usize,
    /// Fault episodes that took effect, by kind.
    pub fault_counts: BTreeMap<FaultKind, usize>,
    /// Failovers the devices started, and those away from a datacenter that was up
    /// ([`FailoverWatch`]).
    pub failovers: usize,
    pub false_failovers: usize,
    pub wall_ms: u64,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A datacenter host's state that outlives its software (its disk, its restarts).
struct DcSlot {
    index: usize,
    data_dir: PathBuf,
    incarnation: Cell<u64>,
    /// Ask the running software to shut down cleanly (end of run).
    stop: Cell<bool>,
    /// Something went wrong starting it (reported by the controller).
    failed: RefCell<Option<String>>,
}

/// A device host's state that outlives its app.
struct DeviceSlot {
    id: DeviceId,
    role: Role,
    store: PathBuf,
    incarnation: Cell<u64>,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

fn sim_clock() -> Clock {
    Clock::from_fn(|| EPOCH_MS + workload::now_ms())
}

fn host_name(role: Role, i: usize) -> String {
    match role {
        Role::Rider => format!("r{i}"),
        Role::Driver => format!("d{i}"),
    }
}

/// Where the run keeps its stores: tmpfs when there is one (cheap fsync), else the temp dir.
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("lifeboat-dsim-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("lifeboat-dsim-").tempdir()
    };
    dir.context("creating the run's scratch directory")
}

/// Run one seed with its random fault plan.
pub fn run(cfg: &SimConfig) -> anyhow::Result<RunOutcome> {
    let mut plan = faults::random_plan(cfg.seed, &cfg.shape());
    plan.extend(faults::heal_all(cfg.workload_ms, &cfg.shape()));
    run_plan(cfg, plan)
}

/// Run one seed with the given plan (sorted by time, stable).
pub fn run_plan(cfg: &SimConfig, mut plan: Vec<Scheduled>) -> anyhow::Result<RunOutcome> {
    let wall = Instant::now();
    plan.sort_by_key(|s| s.at_ms);
    let scratch = scratch_dir()?;
    let region = TestRegion::ed25519(&scratch.path().join("region"))?;
    let rec: Recorder = Rc::new(RefCell::new(History::new()));
    let harness_error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));

    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .tick_duration(Duration::from_millis(cfg.tick_ms))
        .simulation_duration(Duration::from_millis(cfg.end_ms() + 60_000))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(cfg.latency_ms))
        .udp_capacity(4096)
        .build();

    // Datacenters.
    let mut dcs = Vec::new();
    for index in 0..cfg.datacenters {
        let slot = Rc::new(DcSlot {
            index,
            data_dir: scratch.path().join(format!("dc{}", index + 1)),
            incarnation: Cell::new(0),
            stop: Cell::new(false),
            failed: RefCell::new(None),
        });
        let region_dir = region.dir.clone();
        let seed = cfg.seed;
        let s = slot.clone();
        sim.host(format!("dc{}", index + 1), move || {
            let s = s.clone();
            let region_dir = region_dir.clone();
            async move {
                let r = run_datacenter(&s, seed, region_dir).await;
                if let Err(e) = &r {
                    *s.failed.borrow_mut() = Some(format!("{e:#}"));
                }
                r.map_err(|e| e.to_string().into())
            }
        });
        dcs.push(slot);
    }
    let dc_addrs: Vec<SocketAddr> = (0..cfg.datacenters)
        .map(|i| SocketAddr::new(sim.lookup(format!("dc{}", i + 1)), DC_PORT))
        .collect();
    let watch = Rc::new(FailoverWatch {
        dcs: dc_addrs
            .iter()
            .map(|a| (*a, Cell::new(true), Cell::new(None)))
            .collect(),
        ..Default::default()
    });

    // Devices: riders r0.., drivers d0...
    let mut devices = Vec::new();
    for i in 0..cfg.pairs {
        for role in [Role::Rider, Role::Driver] {
            let id = match role {
                Role::Rider => DeviceId(1 + i as u64),
                Role::Driver => DeviceId(1_001 + i as u64),
            };
            devices.push(Rc::new(DeviceSlot {
                id,
                role,
                store: scratch.path().join(format!("device-{}", id.0)),
                incarnation: Cell::new(0),
            }));
        }
    }
    let workload_cfg = WorkloadConfig {
        seed: cfg.seed,
        until_ms: cfg.workload_ms,
        rider_cancel: 0.08,
        driver_cancel: 0.03,
    };
    for (n, slot) in devices.iter().enumerate() {
        let name = host_name(slot.role, n / 2);
        let s = slot.clone();
        let rec = rec.clone();
        let err = harness_error.clone();
        let ca_pem = region.ca_pem.clone();
        let token = region.keyring.device_token(slot.id);
        let dcs = dc_addrs.clone();
        let wl = workload_cfg.clone();
        let seed = cfg.seed;
        let watch = watch.clone();
        sim.host(name, move || {
            let s = s.clone();
            let rec = rec.clone();
            let err = err.clone();
            let ca_pem = ca_pem.clone();
            let dcs = dcs.clone();
            let wl = wl.clone();
            let watch = watch.clone();
            async move {
                let r = run_device(&s, seed, token, dcs, ca_pem, wl, rec, watch).await;
                if let Err(e) = &r {
                    err.borrow_mut()
                        .get_or_insert_with(|| format!("{}: {e:#}", s.id));
                }
                r.map_err(|e| e.to_string().into())
            }
        });
    }

    // Step through the plan.
    let device_ids: Vec<DeviceId> = devices.iter().map(|d| d.id).collect();
    let device_hosts: Vec<String> = (0..devices.len())
        .map(|n| host_name(devices[n].role, n / 2))
        .collect();
    let mut applied = Vec::new();
    let mut fault_counts: BTreeMap<FaultKind, usize> = BTreeMap::new();
    let mut net = NetFaults::new(cfg.datacenters, devices.len(), cfg.latency_ms);
    let mut next = 0;
    let end = Duration::from_millis(cfg.end_ms());
    while sim.elapsed() < end {
        let now = sim.elapsed().as_millis() as u64;
        while next < plan.len() && plan[next].at_ms <= now {
            let action = plan[next].action.clone();
            let world = World {
                dcs: &dcs,
                devices: &device_hosts,
                ids: &device_ids,
                dc_addrs: &dc_addrs,
                watch: &watch,
            };
            if let Some(done) = apply(&mut sim, &mut net, &action, &world, now)? {
                applied.push(format!("{:>6} ms {done}", now));
                if let Some(kind) = plan[next].starts {
                    *fault_counts.entry(kind).or_default() += 1;
                }
            }
            next += 1;
        }
        step(&mut sim, &harness_error, &dcs)?;
    }

    // Freeze the region: the devices go first (their apps and clients stop; their stores
    // stay), so that nothing fails over while the datacenters shut down. Then stop the
    // datacenters cleanly (their stores flushed) and read what they hold.
    for name in &device_hosts {
        sim.crash(name.as_str());
    }
    for d in &dcs {
        d.stop.set(true);
    }
    let mut waited_ms = 0;
    while dcs
        .iter()
        .any(|d| sim.is_host_running(format!("dc{}", d.index + 1)))
    {
        // A clean stop waits for the datacenter's QUIC connections to drain
        // (`Endpoint::wait_idle`); a connection whose device was just crashed is only
        // dropped at the datacenter's idle timeout (10 s), and a drain over a slow link
        // adds a few probe timeouts.
        if waited_ms > 30_000 {
            bail!("seed {}: a datacenter did not stop within 30 s", cfg.seed);
        }
        step(&mut sim, &harness_error, &dcs)?;
        waited_ms += cfg.tick_ms;
    }
    if std::env::var_os("LIFEBOAT_TRACE").is_some() {
        eprintln!(
            "seed {}: the datacenters stopped in {waited_ms} ms",
            cfg.seed
        );
    }
    let unresolved = unresolved_ops(&rec.borrow());
    // Dropping the simulation drops every host's runtime: clients and stores close.
    drop(sim);
    let mut finals = FinalState::new();
    for d in &dcs {
        if d.data_dir.exists() {
            wait_unlocked(&d.data_dir)?;
            let stored = lifeboat_server::service::read_store(&d.data_dir, &region.keyring)
                .with_context(|| format!("reading dc{}'s store", d.index + 1))?;
            finals.add_store(DatacenterId(d.index as u16 + 1), stored);
        }
    }
    for d in &devices {
        finals.add_device(d.id, read_device_store(d, &region)?);
    }
    let history = Rc::try_unwrap(rec)
        .map_err(|_| anyhow!("the recorder is still shared after the run"))?
        .into_inner();
    let (violations, summary) = checker::check(&history, &finals);
    let trace_hash = trace_hash(&history, &applied, &finals);
    Ok(RunOutcome {
        seed: cfg.seed,
        history,
        finals,
        violations,
        summary,
        faults: applied,
        trace_hash,
        ops_unresolved: unresolved,
        fault_counts,
        failovers: watch.failovers.get(),
        false_failovers: watch.false_failovers.get(),
        wall_ms: wall.elapsed().as_millis() as u64,
    })
}

fn step(
    sim: &mut turmoil::Sim<'_>,
    harness_error: &Rc<RefCell<Option<String>>>,
    dcs: &[Rc<DcSlot>],
) -> anyhow::Result<()> {
    let r = sim.step();
    if let Some(e) = harness_error.borrow().as_ref() {
        bail!("device host failed: {e}");
    }
    for d in dcs {
        if let Some(e) = d.failed.borrow().as_ref() {
            bail!("datacenter dc{} failed: {e}", d.index + 1);
        }
    }
    r.map_err(|e| anyhow!("simulation step failed: {e}"))?;
    Ok(())
}

/// What one link between a device and a datacenter is doing, as turmoil has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LinkState {
    #[default]
    Healthy,
    /// Both directions dropped.
    Cut,
    /// One direction dropped.
    OneWay(Cut),
    /// Both directions held (a frozen datacenter).
    Held,
}

/// The faults in force on the network. Episodes overlap freely, so each cut and freeze is
/// counted, and every link gets the strongest of what is in force on it: a cut both ways
/// (or both one-way cuts), else a freeze, else a one-way cut. Undoing one episode never
/// undoes another, and turmoil is never asked to combine a hold with a one-way partition
/// (which it does not support).
#[derive(Debug)]
struct NetFaults {
    /// (device, datacenter) -> cuts in force, by [`Cut`].
    cuts: BTreeMap<(usize, usize), BTreeMap<Cut, u32>>,
    /// Freezes in force per datacenter.
    frozen: Vec<u32>,
    /// Loss rate per device (percent).
    loss_pct: Vec<u8>,
    /// What turmoil has, per (device, datacenter).
    state: BTreeMap<(usize, usize), (LinkState, u8)>,
    latency_ms: u64,
}

impl NetFaults {
    fn new(datacenters: usize, devices: usize, latency_ms: u64) -> Self {
        Self {
            cuts: BTreeMap::new(),
            frozen: vec![0; datacenters],
            loss_pct: vec![0; devices],
            state: BTreeMap::new(),
            latency_ms,
        }
    }

    fn cuts_in_force(&self, device: usize, dc: usize, cut: Cut) -> u32 {
        self.cuts
            .get(&(device, dc))
            .and_then(|c| c.get(&cut))
            .copied()
            .unwrap_or(0)
    }

    /// The state and loss rate the link should have.
    fn wanted(&self, device: usize, dc: usize) -> (LinkState, u8) {
        let n = |cut| self.cuts_in_force(device, dc, cut);
        let (both, replies, requests) = (n(Cut::Both), n(Cut::Replies), n(Cut::Requests));
        let state = if both > 0 || (replies > 0 && requests > 0) {
            LinkState::Cut
        } else if self.frozen[dc] > 0 {
            LinkState::Held
        } else if replies > 0 {
            LinkState::OneWay(Cut::Replies)
        } else if requests > 0 {
            LinkState::OneWay(Cut::Requests)
        } else {
            LinkState::Healthy
        };
        // turmoil's random loss "repairs" a link by making both directions healthy: it would
        // undo a one-way cut, so a link with one gets no random loss meanwhile.
        let loss = match state {
            LinkState::OneWay(_) => 0,
            _ => self.loss_pct[device],
        };
        (state, loss)
    }

    /// Bring turmoil's link in line with what is in force.
    fn sync(&mut self, sim: &mut turmoil::Sim<'_>, device: usize, dc: usize, w: &World<'_>) {
        let (want, loss) = self.wanted(device, dc);
        let (have, have_loss) = self.state.get(&(device, dc)).copied().unwrap_or_default();
        let dev: IpAddr = sim.lookup(w.devices[device].as_str());
        let dci = w.dc_addrs[dc].ip();
        if want != have {
            // Leave the old state: a held link releases what it held (a thaw), any other
            // is repaired.
            let leave = |sim: &mut turmoil::Sim<'_>| {
                if have == LinkState::Held {
                    sim.release(dev, dci);
                } else {
                    sim.repair(dev, dci);
                }
            };
            match want {
                LinkState::Healthy => leave(sim),
                LinkState::Cut => sim.partition(dev, dci),
                LinkState::Held => {
                    leave(sim);
                    sim.hold(dev, dci);
                }
                LinkState::OneWay(cut) => {
                    leave(sim);
                    match cut {
                        Cut::Requests => sim.partition_oneway(dev, dci),
                        _ => sim.partition_oneway(dci, dev),
                    }
                }
            }
        }
        if loss != have_loss {
            sim.set_link_fail_rate(dev, dci, f64::from(loss) / 100.0);
        }
        self.state.insert((device, dc), (want, loss));
    }
}

/// The hosts and shared state [`apply`] works on.
struct World<'a> {
    dcs: &'a [Rc<DcSlot>],
    devices: &'a [String],
    ids: &'a [DeviceId],
    dc_addrs: &'a [SocketAddr],
    watch: &'a FailoverWatch,
}

/// Carry out one action; returns what was done (`None`: nothing to do).
fn apply(
    sim: &mut turmoil::Sim<'_>,
    net: &mut NetFaults,
    action: &Action,
    w: &World<'_>,
    now_ms: u64,
) -> anyhow::Result<Option<String>> {
    let dc_name = |dc: usize| format!("dc{}", dc + 1);
    let went_down = |dc: usize, running: bool| {
        if let Some((_, up, down)) = w.watch.dcs.get(dc) {
            up.set(running);
            down.set(Some(now_ms));
        }
    };
    match action {
        Action::CrashDc { dc, lose_disk } => {
            if !sim.is_host_running(dc_name(*dc)) {
                return Ok(None);
            }
            sim.crash(dc_name(*dc));
            went_down(*dc, false);
            if *lose_disk {
                lose(&w.dcs[*dc].data_dir)?;
            }
        }
        Action::RestartDc { dc } => {
            if sim.is_host_running(dc_name(*dc)) {
                return Ok(None);
            }
            sim.bounce(dc_name(*dc));
            if let Some((_, up, _)) = w.watch.dcs.get(*dc) {
                up.set(true);
            }
        }
        Action::BounceDc { dc, lose_disk } => {
            sim.crash(dc_name(*dc));
            if *lose_disk {
                lose(&w.dcs[*dc].data_dir)?;
            }
            sim.bounce(dc_name(*dc));
            went_down(*dc, true);
        }
        Action::Partition { device, dc, cut } => {
            *net.cuts
                .entry((*device, *dc))
                .or_default()
                .entry(*cut)
                .or_default() += 1;
            net.sync(sim, *device, *dc, w);
        }
        Action::Repair { device, dc, cut } => {
            let Some(n) = net
                .cuts
                .get_mut(&(*device, *dc))
                .and_then(|c| c.get_mut(cut))
                .filter(|n| **n > 0)
            else {
                return Ok(None);
            };
            *n -= 1;
            net.sync(sim, *device, *dc, w);
        }
        Action::FreezeDc { dc } => {
            net.frozen[*dc] += 1;
            for device in 0..w.devices.len() {
                net.sync(sim, device, *dc, w);
            }
        }
        Action::ThawDc { dc } => {
            if net.frozen[*dc] == 0 {
                return Ok(None);
            }
            net.frozen[*dc] -= 1;
            for device in 0..w.devices.len() {
                net.sync(sim, device, *dc, w);
            }
        }
        Action::RestartDevice { device } => sim.bounce(w.devices[*device].as_str()),
        Action::Loss { device, rate_pct } => {
            if net.loss_pct[*device] == *rate_pct {
                return Ok(None);
            }
            net.loss_pct[*device] = *rate_pct;
            for dc in 0..w.dc_addrs.len() {
                net.sync(sim, *device, dc, w);
            }
        }
        Action::Latency { max_ms } => {
            if net.latency_ms == *max_ms {
                return Ok(None);
            }
            net.latency_ms = *max_ms;
            sim.set_max_message_latency(Duration::from_millis(*max_ms));
        }
        Action::HealNetwork => {
            let in_force = net.cuts.values().flat_map(|c| c.values()).any(|n| *n > 0)
                || net.frozen.iter().any(|n| *n > 0)
                || net.loss_pct.iter().any(|l| *l > 0);
            if !in_force {
                return Ok(None);
            }
            net.cuts.clear();
            net.frozen.iter_mut().for_each(|n| *n = 0);
            net.loss_pct.iter_mut().for_each(|l| *l = 0);
            for device in 0..w.devices.len() {
                for dc in 0..w.dc_addrs.len() {
                    net.sync(sim, device, dc, w);
                }
            }
        }
    }
    Ok(Some(action.describe(&|i| {
        w.ids
            .get(i)
            .map_or_else(|| format!("device #{i}"), |d| format!("device {d}"))
    })))
}

/// A lost disk: the data directory is gone.
fn lose(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
    }
    Ok(())
}

async fn run_datacenter(s: &DcSlot, seed: u64, region_dir: PathBuf) -> anyhow::Result<()> {
    let n = s.incarnation.get() + 1;
    s.incarnation.set(n);
    let dc = DatacenterId(s.index as u16 + 1);
    if !s.data_dir.exists() {
        // A new disk gets a new slot, as `DcStore::open` would draw, but from the seed.
        let replica = ReplicaId((mix(seed, 0xD0 + (s.index as u64) * 1_000 + n) as u32) | 1);
        DcStore::create_with_replica(&s.data_dir, replica)?;
    }
    // The crashed incarnation's store, or the one just created, may still be closing.
    wait_unlocked(&s.data_dir)?;
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DC_PORT);
    let endpoint = net::endpoint(bind, mix(seed, 0xDC00 + s.index as u64 * 64 + n)).await?;
    let mut cfg = ServerConfig::new(dc, bind, s.data_dir.clone(), region_dir);
    cfg.create_region = false;
    cfg.endpoint = Some(endpoint);
    // The fault catalogue's timings were written for this (the servers' default until
    // the devices' keep-alive became sparse): stops and detection stay as soaked.
    cfg.idle_timeout = Duration::from_secs(10);
    cfg.clock = sim_clock();
    cfg.keyring_poll = None;
    cfg.inline_flush = true;
    // A restart after a crash takes a new version slot: drawn from the seed, not at random.
    cfg.replica_seed = Some(mix(seed, 0xD1_0000 + (s.index as u64) * 1_000 + n));
    cfg.cache_bytes = 4 * 1024 * 1024;
    let server = Server::start(cfg).await?;
    if let Some(aside) = &server.moved_aside {
        bail!(
            "{dc}: its store could not be reopened and was moved aside to {} (the simulation must never lose a disk by accident)",
            aside.display()
        );
    }
    // Bounded by the run: the controller sets `stop` at the end. The run is over: stop
    // at once (a drain would move the devices for nothing).
    while !s.stop.get() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop(lifeboat_server::Stop::Now).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_device(
    s: &DeviceSlot,
    seed: u64,
    token: lifeboat_common::keyring::DeviceToken,
    dcs: Vec<SocketAddr>,
    ca_pem: Vec<u8>,
    wl: WorkloadConfig,
    rec: Recorder,
    watch: Rc<FailoverWatch>,
) -> anyhow::Result<()> {
    let n = s.incarnation.get() + 1;
    s.incarnation.set(n);
    if n > 1 {
        rec.borrow_mut()
            .record(workload::now_ms(), s.id, Event::Restarted);
    }
    if s.store.exists() {
        wait_unlocked(&s.store)?;
    }
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let endpoint = net::endpoint(bind, mix(seed, s.id.0 * 64 + n)).await?;
    let mut cfg = EdgeConfig::new(
        s.id,
        token,
        dcs,
        ca_pem,
        StoreLocation::Path(s.store.clone()),
    );
    cfg.endpoint = Some(endpoint);
    cfg.idle_timeout = Duration::from_millis(faults::EDGE_IDLE_TIMEOUT_MS);
    cfg.keep_alive = Duration::from_millis(faults::EDGE_KEEP_ALIVE_MS);
    cfg.clock = sim_clock();
    cfg.rng_seed = Some(mix(seed, s.id.0 ^ (n << 32)));
    cfg.available = s.role == Role::Driver;
    cfg.event_queue = 4_096;
    cfg.inline_flush = true;
    let client = EdgeClient::start(cfg).await?;
    let events = client.subscribe();
    let recorder =
        tokio::task::spawn_local(workload::record_events(events, s.id, rec.clone(), watch));
    workload::run_app(client.clone(), s.role, wl, n, rec).await;
    // The client goes on syncing and replaying; the recorder runs until the host is stopped
    // (this handle keeps the client's event channel open), or fails if it missed events.
    match recorder.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!(e),
        Err(e) => bail!("recorder task: {e}"),
    }
}

/// Wait (bounded, in real time) until nothing holds the sled store in `dir` open: sled's
/// threads may close it a moment after the last handle is dropped (a crashed host's), and a
/// store that cannot be opened would be moved aside by `DcStore::open` (read as empty).
/// sled holds an exclusive `flock` on `dir/db` while open; this tries the same lock. Called
/// from inside a host, this blocks the whole simulation thread: simulated time does not move
/// meanwhile, so the wait does not change the run.
fn wait_unlocked(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("db");
    if !file.exists() {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        match f.try_lock() {
            Ok(()) => {
                f.unlock()
                    .with_context(|| format!("unlocking {}", file.display()))?;
                return Ok(());
            }
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                bail!("store {} is still locked after 5 s: {e}", dir.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// What a device's store holds at the end: every session, its digest opened with the
/// region's keys (the checker needs the watermarks), and the device's committed mark.
fn read_device_store(d: &DeviceSlot, region: &TestRegion) -> anyhow::Result<Vec<DeviceCopy>> {
    if !d.store.exists() {
        return Ok(Vec::new());
    }
    wait_unlocked(&d.store)?;
    let store = lifeboat_edge::store::EdgeStore::open(&StoreLocation::Path(d.store.clone()), d.id)
        .with_context(|| format!("opening {}'s store", d.id))?;
    let loaded = store
        .load()
        .with_context(|| format!("reading {}'s store", d.id))?;
    if loaded.unreadable > 0 {
        bail!(
            "{}'s store has {} unreadable records",
            d.id,
            loaded.unreadable
        );
    }
    loaded
        .sessions
        .into_iter()
        .map(|(session, held)| {
            let body = held
                .digest
                .open::<lifeboat_common::TripState>(&region.keyring)
                .with_context(|| {
                    format!("{} holds a digest of {session} that does not open", d.id)
                })?;
            Ok(DeviceCopy {
                stored: (held.digest.header.clone(), body),
                committed: held.committed,
            })
        })
        .collect()
}

/// Ops accepted by a client and never answered.
fn unresolved_ops(h: &History) -> usize {
    let mut open = std::collections::BTreeSet::new();
    for e in h.entries() {
        match &e.event {
            Event::Accepted { op, .. } => {
                open.insert(*op);
            }
            Event::Committed { op, .. } | Event::Refused { op, .. } => {
                open.remove(op);
            }
            _ => {}
        }
    }
    open.len()
}

fn trace_hash(history: &History, faults: &[String], finals: &FinalState) -> String {
    let mut h = Sha256::new();
    for e in history.entries() {
        h.update(format!("{} {} {:?}\n", e.at_ms, e.device, e.event).as_bytes());
    }
    for f in faults {
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    for s in finals.sessions() {
        for (dc, (header, body)) in finals.copies(s) {
            h.update(format!("{dc} {header:?} {body:?}\n").as_bytes());
        }
        for (d, c) in finals.device_copies(s) {
            h.update(format!("{d} {:?} {:?} {}\n", c.stored.0, c.stored.1, c.committed).as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
