//! The running datacenter: a thin tokio/quinn driver around [`DatacenterCore`].
//!
//! Tasks:
//! - one accept loop;
//! - per connection, a reader (handshake, `Hello` + uploads, then frames): it hands each
//!   input to the core itself, under the core's lock ([`gate`]), and the effects leave
//!   before the lock is let go: persist first, then send (see the core's contract);
//! - per connection, an [`outbox`]: frames go straight into the QUIC stream when nothing of
//!   the connection waits, else to its writer task through a bounded queue;
//! - the datacenter's own loop (`actor`): timers, store flush, status, admin, stop.
//!
//! Invariants: every queue is bounded (per-connection output queue; in front of the core a
//! reader waits for the lock, nothing queues); a
//! connection whose output queue is full is a slow consumer and is closed, never buffered
//! without bound; the device id comes only from the verified `Hello` credential; a second
//! connection of the same device replaces the first.
//!
//! The rooms: this file (configuration, start and stop), `accept` (admission), `conn` (one
//! connection), `gate` (the way into the core), `outbox` (its way out), `actor` (the core's
//! state and the datacenter's loop); counters and
//! the status snapshot are in [`crate::status`].

mod accept;
mod actor;
mod conn;
mod drain;
mod gate;
mod handshake_queue;
mod outbox;

use crate::admin::{AdminHandle, AdminToken};
use crate::status::DriverCounters;
pub use crate::status::Status;
use accept::spawn_accept;
use actor::{serve, Actor, Input};
use conn::{handle_conn, ConnCtx};
pub use drain::Stop;

use crate::crash::CrashPoint;
use crate::keyring_watch::KeyringWatch;
use crate::limits::{LimitCounters, Limits};
use crate::region::{Region, RegionError};
use crate::store::{DcStore, StoreError, UnreadableStore};
use crate::tickets::RegionTicketer;
use lifeboat_common::clock::Clock;
use lifeboat_common::datacenter::{DatacenterCore, DcConfig, DrainConfig, Durability};
use lifeboat_common::wire::ServerMsg;
use lifeboat_common::{DatacenterId, Trip};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Core = DatacenterCore<Trip>;

type Msg = ServerMsg<Trip>;

/// Most QUIC endpoints one datacenter process serves (see [`ServerConfig::endpoints`]).
pub const MAX_ENDPOINTS: usize = 64;

/// Everything a datacenter needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This datacenter's id; each datacenter of a region needs its own.
    pub dc: DatacenterId,
    /// The UDP address to serve QUIC on (port 0: a free port, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// The directory of this datacenter's sled store (see [`crate::store`]).
    pub data_dir: PathBuf,
    /// The region directory shared by the region's datacenters (see [`crate::region`]).
    pub region_dir: PathBuf,
    /// Create the region directory if it is missing (local use).
    pub create_region: bool,
    /// When a server-side change (a dispatch) counts as committed: at once, or once this
    /// many participants persisted it.
    pub durability: Durability,
    /// A device silent this long is disconnected (QUIC idle timeout; the lower of this and
    /// the device's own applies). Above the edge client's 15 s keep-alive, so that an idle
    /// phone keeps its connection while pinging sparsely.
    pub idle_timeout: Duration,
    /// The QUIC handshake and the whole connect upload must finish within this.
    pub handshake_timeout: Duration,
    /// A connection whose handshake is done may wait this long before it opens its stream
    /// (`Hello`): a device's standby connection (the edge's ready path for a failover).
    /// The connect upload, once started, still has `handshake_timeout`.
    pub standby_timeout: Duration,
    /// The sled page cache, in bytes.
    pub cache_bytes: u64,
    /// Most simultaneous device connections; more are refused at accept.
    pub max_connections: usize,
    /// Most upload frames after `Hello` (so at most this many + 1 times 64 digests).
    pub max_upload_frames: usize,
    /// Messages queued for one connection before it counts as a slow consumer and is closed.
    pub conn_queue: usize,
    /// Most sessions (active and tombstoned) the core holds at once.
    pub max_sessions: usize,
    /// Write a JSON status snapshot here every 500 ms.
    pub stats_file: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP here (see [`crate::http`]);
    /// `None`: no HTTP endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The operator's bearer token for the admin API ([`crate::admin`]); `None`: the admin
    /// API is off.
    pub admin_token_file: Option<PathBuf>,
    /// Connection-level limits (see [`crate::limits`]).
    pub limits: Limits,
    /// A device in this many active sessions may not create another.
    pub max_sessions_per_device: usize,
    /// Session creates per device per minute (0: unlimited).
    pub session_creates_per_minute: u32,
    /// The shadow restore samples one session this often (ms; 0: off); see
    /// [`crate::shadow`].
    pub shadow_interval_ms: u64,
    /// Tombstones are kept this long and copies older than this are not restored (ms; 0:
    /// tombstones kept for ever); see `lifeboat_common::datacenter`'s tombstones room.
    pub tombstone_ttl_ms: u64,
    /// Most tombstones kept (0: no bound); the oldest go early, never before half the TTL.
    pub max_tombstones: usize,
    /// Poll the keyring file for changes this often; `None`: only on SIGHUP.
    pub keyring_poll: Option<Duration>,
    /// Serve on this endpoint instead of binding `listen` (fault injection and simulation
    /// build it over their own `quinn::AsyncUdpSocket`); the server sets its server config.
    pub endpoint: Option<quinn::Endpoint>,
    /// Most QUIC handshakes in progress at once; more wait in the handshake queue (see
    /// [`LimitKind::Handshakes`](lifeboat_common::limits::LimitKind::Handshakes)). 0: no bound.
    pub max_handshakes: usize,
    /// Most connections waiting for a handshake slot; beyond it they are refused at once
    /// (0: no queue, refuse at once).
    pub handshake_queue: usize,
    /// Longest wait in the handshake queue before a refusal; keep it below the devices'
    /// connect timeout (2 s by default), so a waiting device hears "busy", not silence.
    pub handshake_queue_wait: Duration,
    /// UDP receive and send buffer to ask the kernel for (0: system default); see
    /// [`crate::socket`] for why a datacenter needs a large one.
    pub udp_buffer_bytes: usize,
    /// QUIC endpoints serving `listen` (1 to [`MAX_ENDPOINTS`]; 0 counts as 1). More than
    /// one: as many UDP sockets share the port with `SO_REUSEPORT` and the kernel spreads the
    /// devices over them, so that handshakes and packets are processed on several cores
    /// (one quinn endpoint does a handshake's first flight under its own lock). A device
    /// whose address changes mid-connection (NAT rebinding) may land on another endpoint,
    /// which does not know its connection: it reconnects (a stall, never data). Ignored when
    /// `endpoint` is given.
    pub endpoints: usize,
    /// What to do with a store that cannot be opened or read (see [`crate::store`]).
    pub unreadable_store: UnreadableStore,
    /// Wall-clock time for grace periods, rate limits and expiries: the system clock, unless
    /// a deterministic simulation gives its simulated one.
    pub clock: Clock,
    /// Flush the store on the actor's thread instead of tokio's blocking pool: for a
    /// deterministic simulation only (see `DcStore::set_inline_flush`).
    pub inline_flush: bool,
    /// Where a new version slot comes from after a stop that was not clean (see
    /// [`crate::store`]): `None` draws it at random; a seed derives it, for a deterministic
    /// simulation only.
    pub replica_seed: Option<u64>,
    /// How a stop drains (a planned failover: SIGTERM, `admin drain`): devices moved per
    /// second, the time between waves, and the bound on the whole drain (0: stop at once,
    /// every device told together).
    pub drain: DrainConfig,
    /// Where a drain moves the devices when the order names no target (`None`: each
    /// device's next datacenter in its own list).
    pub drain_to: Option<SocketAddr>,
}

impl ServerConfig {
    /// The defaults for datacenter `dc` (those of `lifeboat-server serve`): async
    /// durability, idle timeout 10 s, handshake timeout 5 s, a 64 MiB cache, 50,000
    /// connections, 1,000,000 sessions, the keyring polled every second, and the region
    /// created if missing.
    pub fn new(
        dc: DatacenterId,
        listen: SocketAddr,
        data_dir: PathBuf,
        region_dir: PathBuf,
    ) -> Self {
        Self {
            dc,
            listen,
            data_dir,
            region_dir,
            create_region: true,
            durability: Durability::Async,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            standby_timeout: Duration::from_secs(600),
            cache_bytes: 64 * 1024 * 1024,
            max_connections: 50_000,
            max_upload_frames: 16,
            conn_queue: 1024,
            max_sessions: 1_000_000,
            stats_file: None,
            metrics_listen: None,
            admin_token_file: None,
            limits: Limits::default(),
            max_sessions_per_device: 16,
            session_creates_per_minute: 10,
            shadow_interval_ms: 1_000,
            tombstone_ttl_ms: 24 * 3600 * 1000,
            max_tombstones: 250_000,
            keyring_poll: Some(Duration::from_secs(1)),
            endpoint: None,
            udp_buffer_bytes: 4 << 20,
            endpoints: 1,
            max_handshakes: 256,
            handshake_queue: 8_192,
            handshake_queue_wait: Duration::from_millis(1_500),
            unreadable_store: UnreadableStore::MoveAside,
            clock: Clock::system(),
            inline_flush: false,
            replica_seed: None,
            drain: DrainConfig {
                rate_per_s: 2_000,
                wave_ms: 100,
                within_ms: 30_000,
            },
            drain_to: None,
        }
    }
}

/// Why a datacenter could not start (nothing is served: [`Server::start`] failed).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The region directory could not be created or loaded.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The store could not be opened or read (see [`UnreadableStore`] for what happens to a
    /// corrupt one).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The region's certificate and key do not make a TLS server configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The admin token file is configured but unusable.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The UDP socket could not be bound or set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// A started datacenter.
pub struct Server {
    /// The UDP address QUIC is served on (the port chosen when `listen` asked for 0).
    pub local_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not asked for, or the
    /// address could not be bound: an error was logged).
    pub metrics_addr: Option<SocketAddr>,
    /// Where an unreadable store was moved to before starting empty (`None`: the store
    /// opened; see [`UnreadableStore::MoveAside`]).
    pub moved_aside: Option<PathBuf>,
    /// Sessions loaded from the store into the core at start (unreadable digests skipped).
    pub loaded_sessions: usize,
    /// The region directory was missing and was created by this start.
    pub region_created: bool,
    /// The keyring in use; `check(true)` reloads it now (SIGHUP).
    pub keys: Arc<KeyringWatch>,
    shutdown: Option<oneshot::Sender<Stop>>,
    drain: Arc<crate::admin::DrainTrigger>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Open the store, load it into the core, bind and start serving.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let (region, region_created) = Region::load_or_init(&cfg.region_dir, cfg.create_region)?;
        let opened = DcStore::open_with(&cfg.data_dir, cfg.cache_bytes, cfg.unreadable_store)?;
        let mut store = opened.store;
        store.set_inline_flush(cfg.inline_flush);
        let mut draw = slot_draw(cfg.replica_seed, opened.replica);
        let replica = store.begin_run(opened.replica, opened.stopped_cleanly, &mut draw)?;
        if replica != opened.replica {
            tracing::warn!(
                old_slot = opened.replica.0,
                new_slot = replica.0,
                "the last run did not stop cleanly: sealing under a new version slot, so that no \
                 version it sent before its last flush is ever issued again (the devices' newer \
                 copies win as they reconnect)"
            );
        }
        let floor_ms = store.restore_floor_ms()?;
        let (mut core, loaded) = load_core(&cfg, replica, &region, opened.digests);
        core.set_restore_floor_ms(floor_ms);

        let counters = Arc::new(DriverCounters::default());
        let keys = KeyringWatch::new(
            Region::keyring_path(&cfg.region_dir),
            region.keyring.clone(),
        );
        let ticketer = RegionTicketer::new(keys.clone(), counters.tickets.clone());
        let endpoints = bind_endpoints(&cfg, &region, ticketer)?;
        let local_addr = endpoints[0]
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;

        let (status_tx, status_rx) = tokio::sync::watch::channel(None);
        let (admin_tx, admin_rx) = mpsc::channel(crate::admin::ADMIN_QUEUE);
        let drain = Arc::new(crate::admin::DrainTrigger::default());
        let admin = match &cfg.admin_token_file {
            Some(path) => Some(crate::http::Admin {
                handle: AdminHandle {
                    token: AdminToken::load(path)?,
                    actor: admin_tx,
                    drain: drain.clone(),
                },
                keys: keys.clone(),
                limits: limits_json(&cfg),
            }),
            None => None,
        };
        let metrics_addr = start_http(cfg.metrics_listen, status_rx, admin).await;

        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let actor = Actor {
            core,
            store,
            conns: HashMap::new(),
            crash: CrashPoint::from_env(),
            store_fault: crate::crash::StoreFault::from_env(),
            batches_written: 0,
            applied_seen: 0,
            counters: counters.clone(),
            listen: local_addr,
            limit_hits: Arc::new(LimitCounters::default()),
            keys,
            ops_in_batch: Vec::new(),
            op_latency: Default::default(),
            flush_latency: Default::default(),
            unflushed: false,
            flushing: None,
            shadow: Default::default(),
            draining: None,
            stopped: false,
            crashing: false,
        };
        let keyring = actor.keys.clone();
        let keyring_for_handle = keyring.clone();
        let limit_hits = actor.limit_hits.clone();
        let out = actor::StatusOut {
            stats_file: cfg.stats_file.clone(),
            status_tx,
        };
        let gate = Arc::new(gate::CoreGate::new(actor, cfg.clock.clone()));
        let done = tokio::spawn(serve(
            cfg,
            endpoints,
            gate,
            out,
            shutdown_rx,
            admin_rx,
            keyring,
            counters,
            limit_hits,
        ));
        Ok(Server {
            local_addr,
            metrics_addr,
            moved_aside: opened.moved_aside,
            loaded_sessions: loaded,
            region_created,
            keys: keyring_for_handle,
            shutdown: Some(shutdown_tx),
            drain,
            done,
        })
    }

    /// Resolves when an operator asked the datacenter to drain and stop (`POST
    /// /admin/drain`), with the target the operator named; the caller then stops it with
    /// [`Stop::Drain`].
    pub async fn drain_requested(&self) -> Option<SocketAddr> {
        self.drain.requested().await
    }

    /// Stop as SIGTERM does: drain (move the devices to the next datacenter in paced waves,
    /// within the configured bound), close the endpoint, flush the store.
    pub async fn shutdown(self) {
        self.stop(Stop::Drain { to: None }).await
    }

    /// Stop, draining first or not (see [`Stop`]).
    pub async fn stop(mut self, how: Stop) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(how);
        }
        let _ = (&mut self.done).await;
    }

    /// Wait until the server stops by itself (it does not, unless its task fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.done).await;
    }
}

/// The core, loaded with every digest the store holds (an unreadable one is skipped and
/// logged: the devices hold it too); how many were loaded.
fn load_core(
    cfg: &ServerConfig,
    replica: lifeboat_common::ids::ReplicaId,
    region: &Region,
    digests: Vec<Result<lifeboat_common::digest::SealedDigest, String>>,
) -> (Core, usize) {
    let mut dc_cfg = DcConfig::new(cfg.dc, replica);
    dc_cfg.durability = cfg.durability;
    dc_cfg.max_sessions = cfg.max_sessions;
    dc_cfg.max_active_sessions_per_device = cfg.max_sessions_per_device;
    dc_cfg.session_creates_per_minute = cfg.session_creates_per_minute;
    dc_cfg.shadow_interval_ms = cfg.shadow_interval_ms;
    dc_cfg.tombstone_ttl_ms = cfg.tombstone_ttl_ms;
    dc_cfg.max_tombstones = cfg.max_tombstones;
    let mut core = Core::new(dc_cfg, region.keyring.clone());
    let now = cfg.clock.now_ms();
    let mut loaded = 0;
    for item in digests {
        match item.map(|d| core.load_persisted(now, d).map_err(|e| e.to_string())) {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable stored digest")
            }
        }
    }
    (core, loaded)
}

/// The TLS side: TLS 1.3 only (QUIC), the region certificate, region-wide session tickets
/// (two per handshake, so a device holds a fresh one and a spare), no 0-RTT.
fn tls_config(
    region: &Region,
    ticketer: RegionTicketer,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(region.cert_chain.clone(), region.key.clone_key())?;
    tls.ticketer = Arc::new(ticketer);
    // Two: an attempt that offers a ticket uses it up even if it then fails (a timeout on a
    // lossy path), so one spare keeps the next attempt a resumption.
    tls.send_tls13_tickets = 2;
    // No 0-RTT: a replayed Hello would replace a live connection (SECURITY.md).
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Tls(rustls::Error::General(e.to_string())))?;
    Ok(Arc::new(quic))
}

/// Bytes of unread liveness probes kept per connection (quinn counts each with its
/// bookkeeping, about 40 bytes; a one-byte probe fits several times).
const PROBE_RECEIVE_BUFFER: usize = 128;

/// The QUIC endpoints: the one given (simulation, fault injection), or `cfg.endpoints` UDP
/// sockets bound to `cfg.listen` (one port, shared with `SO_REUSEPORT` when more than one)
/// with the asked-for buffers, each serving the region's certificate with the same
/// configuration (one ticket key, so a ticket from one resumes at any other).
fn bind_endpoints(
    cfg: &ServerConfig,
    region: &Region,
    ticketer: RegionTicketer,
) -> Result<Vec<quinn::Endpoint>, ServerError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            cfg.idle_timeout
                .try_into()
                .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))),
        ))
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Datagrams are only the devices' liveness probes: acknowledged by the stack, never
        // read. A tiny buffer bounds what a device can park here (older ones are dropped;
        // a larger datagram closes the connection), and none is ever sent.
        .datagram_receive_buffer_size(Some(PROBE_RECEIVE_BUFFER))
        .datagram_send_buffer_size(0)
        // No path MTU discovery toward the devices (a phone pays for every probe; the
        // edge client's transport says why): packets stay at QUIC's 1,200-byte minimum.
        .mtu_discovery_config(None);
    cfg.limits.apply_transport(&mut transport);
    let mut server_cfg = quinn::ServerConfig::with_crypto(tls_config(region, ticketer)?);
    server_cfg.transport_config(Arc::new(transport));
    // Connections not yet accepted (in the handshake queue): bounded in count and bytes.
    let max_incoming = cfg
        .max_handshakes
        .saturating_add(cfg.handshake_queue)
        .saturating_add(64);
    server_cfg
        .max_incoming(max_incoming)
        .incoming_buffer_size(handshake_queue::INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(
            handshake_queue::INCOMING_BUFFER_BYTES.saturating_mul(max_incoming as u64),
        );
    if let Some(endpoint) = &cfg.endpoint {
        endpoint.set_server_config(Some(server_cfg));
        return Ok(vec![endpoint.clone()]);
    }
    let n = cfg.endpoints.clamp(1, MAX_ENDPOINTS);
    let mut addr = cfg.listen;
    let mut endpoints = Vec::with_capacity(n);
    for _ in 0..n {
        let endpoint = {
            let bind_err = |source| ServerError::Bind {
                addr: cfg.listen,
                source,
            };
            let bound = crate::socket::bind_udp_shared(addr, cfg.udp_buffer_bytes, n > 1)
                .map_err(bind_err)?;
            // Port 0 asked for a free port: the others share the one the first was given.
            addr = bound.socket.local_addr().map_err(bind_err)?;
            if bound.recv_buffer_bytes < cfg.udp_buffer_bytes {
                tracing::warn!(
                    asked = cfg.udp_buffer_bytes,
                    granted = bound.recv_buffer_bytes,
                    "UDP receive buffer capped by the kernel: handshake bursts may be \
                     dropped; raise net.core.rmem_max"
                );
            }
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_cfg.clone()),
                bound.socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(bind_err)?
        };
        endpoints.push(endpoint);
    }
    if n > 1 {
        tracing::info!(endpoints = n, %addr, "serving on several QUIC endpoints sharing one port (SO_REUSEPORT)");
    }
    Ok(endpoints)
}

/// Serve `/metrics`, `/healthz` and `/readyz` at `metrics_listen` if asked; a bind failure
/// is logged and the datacenter runs without them.
async fn start_http(
    metrics_listen: Option<SocketAddr>,
    status_rx: tokio::sync::watch::Receiver<crate::http::Published>,
    admin: Option<crate::http::Admin>,
) -> Option<SocketAddr> {
    match metrics_listen {
        Some(addr) => match crate::http::start(addr, status_rx, admin).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve /metrics: the datacenter runs without its HTTP endpoints");
                None
            }
        },
        None => None,
    }
}

/// The configured limits, as the admin API shows them.
fn limits_json(cfg: &ServerConfig) -> serde_json::Value {
    serde_json::json!({
        "max_connections": cfg.max_connections,
        "max_handshakes": cfg.max_handshakes,
        "endpoints": cfg.endpoints.clamp(1, MAX_ENDPOINTS),
        "handshake_queue": cfg.handshake_queue,
        "handshake_queue_wait_ms": cfg.handshake_queue_wait.as_millis() as u64,
        "max_sessions": cfg.max_sessions,
        "max_sessions_per_device": cfg.max_sessions_per_device,
        "session_creates_per_minute": cfg.session_creates_per_minute,
        "tombstone_ttl_ms": cfg.tombstone_ttl_ms,
        "max_tombstones": cfg.max_tombstones,
        "max_upload_frames": cfg.max_upload_frames,
        "conn_queue": cfg.conn_queue,
        "max_frame_bytes": cfg.limits.max_frame_bytes,
        "frame_timeout_ms": cfg.limits.frame_timeout_ms,
        "max_conns_per_addr": cfg.limits.max_conns_per_addr,
        "max_inflight_ops": cfg.limits.max_inflight_ops,
    })
}

/// The source of a fresh version slot (see [`ServerConfig::replica_seed`]).
fn slot_draw(seed: Option<u64>, old: lifeboat_common::ids::ReplicaId) -> impl FnMut() -> u32 {
    use rand::{Rng, SeedableRng};
    let mut rng = match seed {
        Some(seed) => rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(old.0)),
        None => rand::rngs::StdRng::from_os_rng(),
    };
    move || rng.random_range(1..=u32::MAX)
}

/// A session as read back from a datacenter's store.
pub type StoredSession = (
    lifeboat_common::digest::DigestHeader,
    lifeboat_common::digest::DigestBody<lifeboat_common::TripState>,
);

/// What tests and the harness read back from a datacenter's store after it stopped: every
/// digest that opens with the region keyring.
pub fn read_store(
    data_dir: &std::path::Path,
    keyring: &lifeboat_common::keyring::Keyring,
) -> Result<Vec<StoredSession>, ServerError> {
    // Reading never moves a store aside.
    let opened = DcStore::open_with(data_dir, 8 * 1024 * 1024, UnreadableStore::Refuse)?;
    Ok(opened
        .digests
        .into_iter()
        .flatten()
        .filter_map(|d| d.open(keyring).ok().map(|body| (d.header, body)))
        .collect())
}
