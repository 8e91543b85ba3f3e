//! The city: riders and drivers as real `lifeboat-edge` clients over QUIC, each keeping its
//! own ledger of what it submitted and what it was told was committed.
//!
//! Workload (all random choices from a per-device `SmallRng` seeded from the run seed, so
//! the same seed gives the same workload): riders request trips spread over the request
//! window; dispatch (server side) assigns an available driver; the driver drives to the
//! pickup, arrives, starts, reports its position every ~1 s for 10-30 updates, and
//! completes; some riders cancel while they wait.
//!
//! The run stops in two steps: at the stop no device starts another op, and every device
//! stays connected until no device has an op pending (bounded by the op timeout), so an op
//! that waits for its partner's persisting is judged on the protocol, not on the order in
//! which the harness shut the phones down.
//!
//! Devices are sharded over a few QUIC endpoints and sled databases (group-committed
//! flushes), so that thousands of devices fit one process; each device still has its own
//! trees, its own connection and its own flushes before anything is reported committed.

use lifeboat_common::edge::{EdgeEvent, EdgeLimits, SubmitError};
use lifeboat_common::{DeviceId, GeoPoint, OpId, SessionId, TripOp, TripPhase, VersionVector};
use lifeboat_edge::{
    client_config, ClientEvent, EdgeClient, EdgeConfig, EdgeError, SharedDb, StoreLocation,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Workload settings.
#[derive(Clone, Debug)]
pub struct CityConfig {
    pub trips: usize,
    pub drivers: usize,
    pub seed: u64,
    /// Riders request within this window from the start.
    pub request_window: Duration,
    pub location_interval: Duration,
    pub locations_per_trip: (u32, u32),
    pub cancel_probability: f64,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// With an op in flight, a silent datacenter is given up after this (`EdgeConfig`).
    pub detect_floor: Duration,
    /// In a session with nothing in flight, probe after this much silence (`EdgeConfig`).
    pub session_probe: Duration,
    /// Device stores share this many sled databases.
    pub shards: usize,
    /// Devices sharing one UDP socket (phones have one each; the harness shares a few so that
    /// 20,000 devices do not need 20,000 sockets, each with a large buffer).
    pub devices_per_socket: usize,
    /// Bound on one op's wait for its commit.
    pub op_timeout: Duration,
    /// The devices' impaired link (`--loss`, `--delay-ms`, ...); `None`: a perfect one.
    pub link: Option<crate::network::Link>,
}

/// What kind of op a ledger entry is.
pub use lifeboat_common::trip::TripOpKind as OpKind;

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Committed {
        version: VersionVector,
        duplicate: bool,
    },
    Rejected(String),
    /// No answer within the op timeout (or the run ended first).
    Unresolved,
}

#[derive(Clone, Debug)]
pub struct OpRecord {
    pub session: SessionId,
    pub kind: OpKind,
    /// The op's stable id, once the client queued it (`None`: refused before queueing, or
    /// no answer even to that).
    pub op: Option<OpId>,
    pub submitted_ms: u64,
    pub resolved_ms: u64,
    pub outcome: Outcome,
    /// Why a queued op was refused, as the client said it (with `Outcome::Rejected`).
    pub refusal: Option<SubmitError>,
    /// Where an unresolved op stood in the client when the harness gave up on it
    /// ([`lifeboat_edge::OpProgress`], for the violation message).
    pub stuck: Option<String>,
}

/// Device-level fault planned by the scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeviceFault {
    None,
    /// Offline (client shut down) from..to, in ms since the start; same store after.
    Offline {
        from_ms: u64,
        to_ms: u64,
    },
    /// Store wiped (app reinstalled) at this time.
    Reinstall {
        at_ms: u64,
    },
}

/// Everything one device recorded.
#[derive(Clone, Debug, Default)]
pub struct DeviceLog {
    pub device: u64,
    /// A driver's log (else a rider's).
    pub driver: bool,
    pub ops: Vec<OpRecord>,
    pub disconnects_ms: Vec<u64>,
    /// (time, datacenter) of each connection (the first ones before the kill included).
    pub failovers_ms: Vec<(u64, u16)>,
    /// When the device first held each session in the Assigned phase (or later).
    pub assigned_seen: Vec<(SessionId, u64)>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Of `bytes_up` + `bytes_down`: sent and received by the end of each handshake.
    pub handshake_bytes: u64,
    /// QUIC path MTU probes the device sent.
    pub mtu_probes: u64,
    /// Standby connections the device opened, and failovers that went over one.
    pub standby_opened: u64,
    pub standby_used: u64,
    /// Failovers of these devices nobody waited on (no stall reported).
    pub idle_reconnects: u64,
    pub reinstalled: bool,
    pub offline: bool,
    /// Sessions held at the end, with their sealed digest size.
    pub held_at_end: Vec<(SessionId, usize)>,
    /// (time, session) of each conflict this device was told of (its copy and the
    /// datacenter's were concurrent, S13: see `EdgeEvent::Conflict`).
    pub conflicts: Vec<(u64, SessionId)>,
    /// Failovers away from a datacenter that was up (a false failover: loss, a cut).
    pub false_failovers: u32,
    /// How long each wait for the session's anchor lasted (`EdgeEvent::Waiting` to the
    /// session's next resolved op), ms.
    pub waits_ms: Vec<u64>,
    /// Each failover's whole stall as the device felt it (`ClientEvent::FailoverFinished`:
    /// from its first unanswered op, or the lost datacenter's last sign of life, to the first
    /// answer after the reconnect): when it ended, and the stall, ms.
    pub failover_felt: Vec<(u64, u64)>,
    /// Each failover as the device split it (`ClientEvent::FailoverFinished`): when it
    /// ended, detection, connect and first answer, ms.
    pub failover_splits: Vec<(u64, [u64; 3])>,
    /// Connections a drained datacenter moved away (the client's own count).
    pub drained: u64,
}

/// State shared by the whole run.
pub struct Shared {
    pub start: Instant,
    pub stop: AtomicBool,
    pub kill_ms: AtomicU64,
    pub ops_committed: AtomicU64,
    pub trips_active: AtomicI64,
    /// Whether each datacenter's process runs (the fault script keeps it), to tell a false
    /// failover from a real one.
    pub dc_up: [AtomicBool; 2],
    /// A fault action (kill, restart, split) is under way: `dc_up` is about to change.
    pub in_fault_action: AtomicBool,
    /// Ops submitted and not yet resolved (committed, refused or timed out), all devices.
    pub ops_pending: AtomicU64,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            kill_ms: AtomicU64::new(u64::MAX),
            ops_committed: AtomicU64::new(0),
            trips_active: AtomicI64::new(0),
            dc_up: [AtomicBool::new(true), AtomicBool::new(true)],
            in_fault_action: AtomicBool::new(false),
            ops_pending: AtomicU64::new(0),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// After the stop, wait (at most `bound`) until no device has an op pending. A device
    /// leaves only then: an op that waits for its partner's persisting (a rider's cancel
    /// waits for the driver holding the chain) is never left unanswered because the partner
    /// was shut down first. No op starts after the stop, so the count only falls.
    async fn settled(&self, bound: Duration) {
        let until = Instant::now() + bound;
        while self.ops_pending.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Counts one op as pending in [`Shared::ops_pending`] while it lives.
struct PendingOp<'a>(&'a Shared);

impl<'a> PendingOp<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.ops_pending.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for PendingOp<'_> {
    fn drop(&mut self) {
        self.0.ops_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One simulated device: its configuration (to restart it) and live connection state.
pub struct Device {
    pub id: DeviceId,
    pub cfg: EdgeConfig,
    pub store_name: String,
    pub db: SharedDb,
    /// Datacenter the device is connected to (0: none), kept by its event task.
    pub connected_dc: Arc<AtomicU16>,
}

/// The whole population.
pub struct City {
    pub drivers: Vec<Arc<Device>>,
    pub riders: Vec<Arc<Device>>,
    /// With an impaired link: the handles that cut the drivers' and the riders' paths
    /// (drivers and riders then use separate endpoints).
    pub driver_links: Vec<lifeboat_chaos::ImpairHandle>,
    pub rider_links: Vec<lifeboat_chaos::ImpairHandle>,
}

fn random_point(rng: &mut SmallRng) -> GeoPoint {
    lifeboat_testkit::geo::point_near(rng, 40_000, 60_000)
}

impl City {
    /// Build the devices (not started).
    pub fn build(
        cfg: &CityConfig,
        dir: &Path,
        datacenters: Vec<SocketAddr>,
        keyring: &lifeboat_common::keyring::Keyring,
        ca_pem: &[u8],
    ) -> anyhow::Result<Self> {
        let shards = cfg.shards.max(1);
        let per_socket = cfg.devices_per_socket.max(1);
        // Drivers and riders on their own endpoints, so a link can cut one group's paths.
        let mut pools: [(Vec<quinn::Endpoint>, Vec<lifeboat_chaos::ImpairHandle>); 2] =
            Default::default();
        for (g, n) in [cfg.drivers, cfg.trips].into_iter().enumerate() {
            for k in 0..n.div_ceil(per_socket).max(1) {
                match &cfg.link {
                    Some(link) => {
                        let (e, h) = link.endpoint(&datacenters, g * 10_000 + k)?;
                        pools[g].0.push(e);
                        pools[g].1.push(h);
                    }
                    None => pools[g].0.push(device_endpoint(&datacenters)?),
                }
            }
        }
        let mut dbs = Vec::new();
        let board = Arc::new(lifeboat_edge::ProbeBoard::default());
        for k in 0..shards {
            dbs.push(SharedDb::open(
                &dir.join(format!("devices-{k}")),
                16 * 1024 * 1024,
            )?);
        }
        let make = |id: u64,
                    available: bool,
                    endpoints: &[quinn::Endpoint]|
         -> Result<Arc<Device>, EdgeError> {
            let k = (id as usize) % shards;
            let d = DeviceId(id);
            let name = format!("device-{id}");
            let mut c = EdgeConfig::new(
                d,
                keyring.device_token(d),
                datacenters.clone(),
                ca_pem.to_vec(),
                StoreLocation::Shared {
                    db: dbs[k].clone(),
                    name: name.clone(),
                },
            );
            c.keep_alive = cfg.keep_alive;
            c.idle_timeout = cfg.idle_timeout;
            c.detect_floor = cfg.detect_floor;
            c.session_probe = cfg.session_probe;
            c.available = available;
            c.endpoint = Some(endpoints[id as usize % endpoints.len()].clone());
            // One TLS client configuration per device, as on phones: each keeps its own
            // session-ticket store, so resumption at the backup is exercised for real.
            c.client_config = Some(Arc::new(client_config(
                ca_pem,
                cfg.keep_alive,
                cfg.idle_timeout,
            )?));
            c.probe_board = Some(board.clone());
            c.limits = EdgeLimits::default();
            Ok(Arc::new(Device {
                id: d,
                cfg: c,
                store_name: name,
                db: dbs[k].clone(),
                connected_dc: Arc::new(AtomicU16::new(0)),
            }))
        };
        let drivers = (0..cfg.drivers as u64)
            .map(|i| make(1_000_000 + i, true, &pools[0].0))
            .collect::<Result<_, _>>()?;
        let riders = (0..cfg.trips as u64)
            .map(|i| make(1 + i, false, &pools[1].0))
            .collect::<Result<_, _>>()?;
        let [(_, driver_links), (_, rider_links)] = pools;
        Ok(Self {
            drivers,
            riders,
            driver_links,
            rider_links,
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Device>> {
        self.drivers.iter().chain(self.riders.iter())
    }

    /// Devices connected to each datacenter (index 0 = dc1).
    pub fn connected_per_dc(&self, n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        for d in self.all() {
            let dc = d.connected_dc.load(Ordering::Relaxed) as usize;
            if dc >= 1 && dc <= n {
                out[dc - 1] += 1;
            }
        }
        out
    }
}

/// A started client plus the channel its event task feeds with newly assigned sessions.
struct Live {
    client: EdgeClient,
    assigned: mpsc::Receiver<SessionId>,
}

async fn start_device(
    dev: &Arc<Device>,
    shared: &Arc<Shared>,
    log: &Arc<Mutex<DeviceLog>>,
) -> anyhow::Result<Live> {
    let client = EdgeClient::start(dev.cfg.clone()).await?;
    let mut events = client.subscribe();
    let (tx, rx) = mpsc::channel(16);
    let connected = dev.connected_dc.clone();
    let shared = shared.clone();
    let log = log.clone();
    tokio::spawn(async move {
        let mut waiting_since: std::collections::HashMap<SessionId, u64> =
            std::collections::HashMap::new();
        loop {
            let e = match events.recv().await.map(|t| t.event) {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let now = shared.now_ms();
            match e {
                ClientEvent::FailoverFinished {
                    stalled_ms,
                    detection_ms,
                    connect_ms,
                    first_answer_ms,
                    ..
                } => {
                    if let Ok(mut l) = log.lock() {
                        if l.failover_felt.len() < 1_000 {
                            l.failover_felt.push((now, stalled_ms));
                        }
                        if l.failover_splits.len() < 1_000 {
                            l.failover_splits
                                .push((now, [detection_ms, connect_ms, first_answer_ms]));
                        }
                    }
                }
                ClientEvent::Connected { dc, .. } => {
                    connected.store(dc.0, Ordering::Relaxed);
                    // Every (re)connection: the restore rate counts from the first after the
                    // kill (`FailoverFinished` comes later, at the first answered op).
                    if let Ok(mut l) = log.lock() {
                        if l.failovers_ms.len() < 1_000 {
                            l.failovers_ms.push((now, dc.0));
                        }
                    }
                }
                ClientEvent::Disconnected { .. } => {
                    let left = connected.swap(0, Ordering::Relaxed) as usize;
                    let up = left
                        .checked_sub(1)
                        .and_then(|i| shared.dc_up.get(i))
                        .is_some_and(|u| u.load(Ordering::Relaxed));
                    if let Ok(mut l) = log.lock() {
                        l.disconnects_ms.push(now);
                        let faulting = shared.in_fault_action.load(Ordering::Relaxed);
                        if up && !faulting && !shared.stopped() {
                            l.false_failovers += 1;
                        }
                    }
                }
                ClientEvent::Session(EdgeEvent::Waiting { session, .. }) => {
                    waiting_since.entry(session).or_insert(now);
                }
                ClientEvent::OpResolved { op, .. } => {
                    if let Some(since) = waiting_since.remove(&op.session) {
                        if let Ok(mut l) = log.lock() {
                            if l.waits_ms.len() < 10_000 {
                                l.waits_ms.push(now.saturating_sub(since));
                            }
                        }
                    }
                }
                ClientEvent::Session(EdgeEvent::Conflict { session, .. }) => {
                    if let Ok(mut l) = log.lock() {
                        if l.conflicts.len() < 1_000 {
                            l.conflicts.push((now, session));
                        }
                    }
                }
                ClientEvent::Session(EdgeEvent::SessionUpdated { session, view, .. })
                    if view.phase != TripPhase::Requested =>
                {
                    let first = log.lock().map(|mut l| {
                        let seen = l.assigned_seen.iter().any(|(s, _)| *s == session);
                        if !seen {
                            l.assigned_seen.push((session, now));
                        }
                        !seen
                    });
                    if first.unwrap_or(false) && view.phase == TripPhase::Assigned {
                        let _ = tx.try_send(session);
                    }
                }
                _ => {}
            }
        }
    });
    Ok(Live {
        client,
        assigned: rx,
    })
}

async fn stop_device(dev: &Arc<Device>, live: Live, log: &Arc<Mutex<DeviceLog>>) {
    // Bounded: a stuck client must not hold up the run's verdict.
    let bound = Duration::from_secs(5);
    if tokio::time::timeout(bound, live.client.shutdown())
        .await
        .is_err()
    {
        tracing::error!(
            device = dev.id.0,
            "client did not shut down within {bound:?}"
        );
    }
    // The client counts a connection's bytes when that connection ends, which is just after
    // `shutdown` returns: wait (bounded) until its task is gone before reading them.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && matches!(
            tokio::time::timeout(Duration::from_millis(200), live.client.sessions()).await,
            Ok(Ok(_)) | Err(_)
        )
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = live.client.stats();
    dev.connected_dc.store(0, Ordering::Relaxed);
    if let Ok(mut l) = log.lock() {
        l.bytes_up += s.bytes_up;
        l.bytes_down += s.bytes_down;
        l.handshake_bytes += s.handshake_bytes;
        l.mtu_probes += s.mtu_probes;
        l.standby_opened += s.standby_opened;
        l.standby_used += s.standby_used;
        l.idle_reconnects += s.idle_reconnects;
        l.drained += s.drained;
    }
}

async fn submit(
    client: &EdgeClient,
    shared: &Shared,
    log: &Mutex<DeviceLog>,
    timeout: Duration,
    session: SessionId,
    kind: OpKind,
    op: TripOp,
) -> Outcome {
    let _pending = PendingOp::new(shared);
    let submitted_ms = shared.now_ms();
    let deadline = tokio::time::Instant::now() + timeout;
    let (id, outcome, refusal) =
        match tokio::time::timeout_at(deadline, client.enqueue(session, op)).await {
            Err(_) => (None, Outcome::Unresolved, None),
            Ok(Err(e)) => (None, Outcome::Rejected(e.to_string()), None),
            Ok(Ok((id, done))) => match tokio::time::timeout_at(deadline, done).await {
                Err(_) => (Some(id), Outcome::Unresolved, None),
                Ok(Err(_)) => (
                    Some(id),
                    Outcome::Rejected(EdgeError::Closed.to_string()),
                    None,
                ),
                Ok(Ok(Ok(c))) => (
                    Some(id),
                    Outcome::Committed {
                        version: c.version,
                        duplicate: c.duplicate,
                    },
                    None,
                ),
                Ok(Ok(Err(error))) => (
                    Some(id),
                    Outcome::Rejected(
                        EdgeError::Failed {
                            op: id,
                            error: error.clone(),
                        }
                        .to_string(),
                    ),
                    Some(error),
                ),
            },
        };
    let stuck = match (&outcome, id) {
        (Outcome::Unresolved, Some(id)) => {
            match tokio::time::timeout(Duration::from_secs(1), client.op_progress(id)).await {
                Ok(Ok(Some(p))) => Some(format!("{p:?}")),
                Ok(Ok(None)) => Some("no longer queued".to_string()),
                Ok(Err(e)) => Some(format!("client: {e}")),
                Err(_) => Some("the client did not answer within 1 s".to_string()),
            }
        }
        _ => None,
    };
    if matches!(outcome, Outcome::Committed { .. }) {
        shared.ops_committed.fetch_add(1, Ordering::Relaxed);
        match kind {
            OpKind::Request => {
                shared.trips_active.fetch_add(1, Ordering::Relaxed);
            }
            OpKind::Complete | OpKind::Cancel => {
                shared.trips_active.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    if let Ok(mut l) = log.lock() {
        l.ops.push(OpRecord {
            session,
            kind,
            op: id,
            submitted_ms,
            resolved_ms: shared.now_ms(),
            outcome: outcome.clone(),
            refusal,
            stuck,
        });
    }
    outcome
}

/// Sleep, but wake early when the run stops. Returns false if stopped.
async fn pause(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if shared.stopped() {
            return false;
        }
        tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(200))).await;
    }
    !shared.stopped()
}

async fn wait_until(shared: &Shared, at_ms: u64) -> bool {
    let now = shared.now_ms();
    if at_ms > now {
        pause(shared, Duration::from_millis(at_ms - now)).await
    } else {
        !shared.stopped()
    }
}

/// Apply the device's planned fault if it is due: take it offline for a while, or reinstall
/// it (wipe its store). `None`: the fault could not be carried out (logged); the device stops.
async fn fault_step(
    dev: &Arc<Device>,
    fault: &mut DeviceFault,
    live: Live,
    shared: &Arc<Shared>,
    log: &Arc<Mutex<DeviceLog>>,
) -> Option<Live> {
    if !fault_due(fault, shared.now_ms()) {
        return Some(live);
    }
    let planned = std::mem::replace(fault, DeviceFault::None);
    stop_device(dev, live, log).await;
    let restarted = async {
        match planned {
            DeviceFault::Offline { to_ms, .. } => {
                if let Ok(mut l) = log.lock() {
                    l.offline = true;
                }
                // In the tunnel: nothing reaches the device, whatever the run does meanwhile.
                let now = shared.now_ms();
                if to_ms > now {
                    tokio::time::sleep(Duration::from_millis(to_ms - now)).await;
                }
            }
            DeviceFault::Reinstall { .. } => {
                dev.db.wipe_device(&dev.store_name)?;
                if let Ok(mut l) = log.lock() {
                    l.reinstalled = true;
                }
            }
            DeviceFault::None => {}
        }
        start_device(dev, shared, log).await
    }
    .await;
    match restarted {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(device = dev.id.0, error = %e, "device fault failed");
            None
        }
    }
}

fn fault_due(fault: &DeviceFault, now: u64) -> bool {
    match *fault {
        DeviceFault::None => false,
        DeviceFault::Offline { from_ms, .. } => now >= from_ms,
        DeviceFault::Reinstall { at_ms } => now >= at_ms,
    }
}

/// A device's ledger and its own random stream (from the run seed, the device id and a
/// per-role constant), so the same seed gives every device the same choices.
fn begin(
    dev: &Device,
    cfg: &CityConfig,
    role_salt: u64,
    driver: bool,
) -> (Arc<Mutex<DeviceLog>>, SmallRng) {
    let log = Arc::new(Mutex::new(DeviceLog {
        device: dev.id.0,
        driver,
        ..Default::default()
    }));
    let rng = SmallRng::seed_from_u64(cfg.seed ^ dev.id.0.wrapping_mul(role_salt));
    (log, rng)
}

/// A driver: wait for dispatch, drive the trip, repeat until the run stops.
pub async fn driver_task(
    dev: Arc<Device>,
    cfg: CityConfig,
    shared: Arc<Shared>,
    mut fault: DeviceFault,
) -> DeviceLog {
    let (log, mut rng) = begin(&dev, &cfg, 0x9E37_79B9_7F4A_7C15, true);
    let mut live = match start_device(&dev, &shared, &log).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(device = dev.id.0, error = %e, "driver could not start");
            return take(&log);
        }
    };
    'outer: while !shared.stopped() {
        // Wait for an assignment (or a due fault).
        let session = loop {
            let Some(l) = fault_step(&dev, &mut fault, live, &shared, &log).await else {
                return take(&log);
            };
            live = l;
            tokio::select! {
                s = live.assigned.recv() => match s {
                    Some(s) => break s,
                    None => continue 'outer,
                },
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if shared.stopped() { break 'outer; }
                }
            }
        };
        let steps = rng.random_range(cfg.locations_per_trip.0..=cfg.locations_per_trip.1);
        let mut plan: Vec<(OpKind, TripOp, Duration)> = vec![
            (
                OpKind::Arrived,
                TripOp::Arrived,
                Duration::from_millis(rng.random_range(500..2_500)),
            ),
            (
                OpKind::Start,
                TripOp::StartTrip,
                Duration::from_millis(rng.random_range(300..1_200)),
            ),
        ];
        let mut pos = random_point(&mut rng);
        for _ in 0..steps {
            pos.lat_e6 += rng.random_range(-900..900);
            pos.lon_e6 += rng.random_range(-900..900);
            let jitter = rng.random_range(0..cfg.location_interval.as_millis() as u64 / 2 + 1);
            plan.push((
                OpKind::Location,
                TripOp::Location { at: pos },
                cfg.location_interval / 2 + Duration::from_millis(jitter),
            ));
        }
        plan.push((
            OpKind::Complete,
            TripOp::Complete,
            Duration::from_millis(500),
        ));
        for (kind, op, wait) in plan {
            if !pause(&shared, wait).await {
                break 'outer;
            }
            let Some(l) = fault_step(&dev, &mut fault, live, &shared, &log).await else {
                return take(&log);
            };
            live = l;
            let out = submit(
                &live.client,
                &shared,
                &log,
                cfg.op_timeout,
                session,
                kind,
                op,
            )
            .await;
            match out {
                Outcome::Committed { .. } => {}
                Outcome::Rejected(_) | Outcome::Unresolved => {
                    // Cancelled by the rider, or the op could not go through: leave the trip.
                    continue 'outer;
                }
            }
        }
    }
    finish(&dev, live, &log, &shared, cfg.op_timeout).await
}

/// A rider: request one trip at its time; maybe cancel while waiting.
pub async fn rider_task(
    dev: Arc<Device>,
    index: usize,
    cfg: CityConfig,
    shared: Arc<Shared>,
    mut fault: DeviceFault,
) -> DeviceLog {
    let (log, mut rng) = begin(&dev, &cfg, 0xD1B5_4A32_D192_ED03, false);
    // Requests spread evenly over the window, with jitter, in rider order.
    let window = cfg.request_window.as_millis() as u64;
    let slot = window / cfg.trips.max(1) as u64;
    let at_ms = index as u64 * slot + rng.random_range(0..slot.max(1));
    let mut live = match start_device(&dev, &shared, &log).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(device = dev.id.0, error = %e, "rider could not start");
            return take(&log);
        }
    };
    if wait_until(&shared, at_ms).await {
        let session = SessionId(rng.random::<u64>() | 1);
        let op = TripOp::Request {
            pickup: random_point(&mut rng),
            dropoff: random_point(&mut rng),
        };
        let out = submit(
            &live.client,
            &shared,
            &log,
            cfg.op_timeout,
            session,
            OpKind::Request,
            op,
        )
        .await;
        if matches!(out, Outcome::Committed { .. }) && rng.random_bool(cfg.cancel_probability) {
            let wait = Duration::from_millis(rng.random_range(200..2_000));
            if pause(&shared, wait).await {
                submit(
                    &live.client,
                    &shared,
                    &log,
                    cfg.op_timeout,
                    session,
                    OpKind::Cancel,
                    TripOp::Cancel,
                )
                .await;
            }
        }
    }
    // Idle until the end, except for a planned device fault.
    while !shared.stopped() {
        let Some(l) = fault_step(&dev, &mut fault, live, &shared, &log).await else {
            return take(&log);
        };
        live = l;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finish(&dev, live, &log, &shared, cfg.op_timeout).await
}

/// Leave the run: once no device has an op pending (see [`Shared::settled`]; at most an op
/// timeout and a margin), record what the store holds and stop the client.
async fn finish(
    dev: &Arc<Device>,
    live: Live,
    log: &Arc<Mutex<DeviceLog>>,
    shared: &Shared,
    op_timeout: Duration,
) -> DeviceLog {
    shared.settled(op_timeout + Duration::from_secs(5)).await;
    if let Ok(sessions) = live.client.sessions().await {
        if let Ok(mut l) = log.lock() {
            l.held_at_end = sessions
                .iter()
                .map(|s| (s.session, s.digest_bytes))
                .collect();
        }
    }
    stop_device(dev, live, log).await;
    take(log)
}

fn take(log: &Arc<Mutex<DeviceLog>>) -> DeviceLog {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A UDP socket shared by several simulated devices, with a large buffer: the kernel's
/// default drops datagrams when a few thousand handshakes arrive together.
fn device_endpoint(datacenters: &[SocketAddr]) -> anyhow::Result<quinn::Endpoint> {
    let bind: SocketAddr = match datacenters.first() {
        Some(SocketAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        _ => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    let bound = lifeboat_server::socket::bind_udp(bind, 4 << 20)?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bound.socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}
