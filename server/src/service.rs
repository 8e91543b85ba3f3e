//! The running datacenter: a thin tokio/quinn driver around [`DatacenterCore`].
//!
//! Tasks:
//! - one accept loop;
//! - per connection, a reader (handshake, `Hello` + uploads, then frames into the core
//!   queue) and a writer (frames out of a bounded per-connection queue);
//! - one core actor that owns the [`DatacenterCore`] and the store: it takes inputs in
//!   batches, and for each batch persists first, then sends (see the core's contract).
//!
//! Invariants: every queue is bounded (core input queue, per-connection output queue); a
//! connection whose output queue is full is a slow consumer and is closed, never buffered
//! without bound; the device id comes only from the verified `Hello` credential; a second
//! connection of the same device replaces the first.

use crate::crash::CrashPoint;
use crate::keyring_watch::{KeyringStatus, KeyringWatch};
use crate::limits::{AddressLimiter, InflightGate, LimitCounters, Limits};
use crate::region::{Region, RegionError};
use crate::store::{DcStore, StoreError, UnreadableStore};
use lifeboat_common::clock::Clock;
use lifeboat_common::codec::{encode_frame, CodecError};
use lifeboat_common::datacenter::{
    ConnectIntake, Connected, DatacenterCore, DcConfig, DcEvent, DcStats, Durability, InflightRule,
    IntakeStep,
};
use lifeboat_common::limits::LimitKind;
use lifeboat_common::wire::{ClientMsg, OfferedCopy, OpOutcome, ProtocolError, ServerMsg};
use lifeboat_common::{DatacenterId, DeviceId, Trip};
use lifeboat_frame_io::{read_frame_limited, FrameLimits, FrameReadError};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type Core = DatacenterCore<Trip>;
type Msg = ServerMsg<Trip>;

/// Everything a datacenter needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub dc: DatacenterId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub region_dir: PathBuf,
    /// Create the region directory if it is missing (local use).
    pub create_region: bool,
    pub durability: Durability,
    pub idle_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub cache_bytes: u64,
    pub max_connections: usize,
    /// Most upload frames after `Hello` (so at most this many + 1 times 64 digests).
    pub max_upload_frames: usize,
    pub conn_queue: usize,
    pub core_queue: usize,
    pub max_sessions: usize,
    /// Write a JSON status snapshot here every 500 ms.
    pub stats_file: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP here (see [`crate::http`]);
    /// `None`: no HTTP endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Connection-level limits (see [`crate::limits`]).
    pub limits: Limits,
    /// A device in this many active sessions may not create another.
    pub max_sessions_per_device: usize,
    /// Session creates per device per minute (0: unlimited).
    pub session_creates_per_minute: u32,
    /// Poll the keyring file for changes this often (ms); 0: only on SIGHUP.
    pub keyring_poll_ms: u64,
    /// Serve on this endpoint instead of binding `listen` (fault injection and simulation
    /// build it over their own `quinn::AsyncUdpSocket`); the server sets its server config.
    pub endpoint: Option<quinn::Endpoint>,
    /// Most QUIC handshakes in progress at once; more are refused at once (see
    /// [`LimitKind::Handshakes`]). 0: no bound.
    pub max_handshakes: usize,
    /// UDP receive and send buffer to ask the kernel for (0: system default); see
    /// [`crate::socket`] for why a datacenter needs a large one.
    pub udp_buffer_bytes: usize,
    /// What to do with a store that cannot be opened or read (see [`crate::store`]).
    pub unreadable_store: UnreadableStore,
    /// Wall-clock time for grace periods, rate limits and expiries: the system clock, unless
    /// a deterministic simulation gives its simulated one.
    pub clock: Clock,
    /// Flush the store on the actor's thread instead of tokio's blocking pool: for a
    /// deterministic simulation only (see `DcStore::set_inline_flush`).
    pub inline_flush: bool,
}

impl ServerConfig {
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
            idle_timeout_ms: 10_000,
            handshake_timeout_ms: 5_000,
            cache_bytes: 64 * 1024 * 1024,
            max_connections: 50_000,
            max_upload_frames: 16,
            conn_queue: 1024,
            core_queue: 65_536,
            max_sessions: 1_000_000,
            stats_file: None,
            metrics_listen: None,
            limits: Limits::default(),
            max_sessions_per_device: 16,
            session_creates_per_minute: 10,
            keyring_poll_ms: 1_000,
            endpoint: None,
            udp_buffer_bytes: 4 << 20,
            max_handshakes: 256,
            unreadable_store: UnreadableStore::MoveAside,
            clock: Clock::system(),
            inline_flush: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Counters kept by the driver (the core keeps its own).
#[derive(Default)]
struct DriverCounters {
    connections: AtomicUsize,
    refused_connections: AtomicU64,
    bad_credentials: AtomicU64,
    bad_frames: AtomicU64,
    slow_consumers: AtomicU64,
    store_errors: AtomicU64,
}

/// A status snapshot (also written to `stats_file`).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub dc: u16,
    pub listen: String,
    pub sessions: usize,
    pub active_sessions: usize,
    pub connections: usize,
    pub refused_connections: u64,
    pub bad_credentials: u64,
    pub bad_frames: u64,
    pub slow_consumers: u64,
    pub store_errors: u64,
    pub core: DcStats,
    /// How often each limit was hit, by limit name (see `SECURITY.md`).
    pub limits: std::collections::BTreeMap<&'static str, u64>,
    pub keyring: KeyringStatus,
}

enum Input {
    Connect {
        conn_id: u64,
        device: DeviceId,
        available: bool,
        digests: Vec<OfferedCopy>,
        tx: mpsc::Sender<Msg>,
        conn: quinn::Connection,
    },
    Frame {
        device: DeviceId,
        msg: ClientMsg<Trip>,
    },
    Disconnect {
        conn_id: u64,
        device: DeviceId,
    },
}

/// A started datacenter.
pub struct Server {
    pub local_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: not asked for, or the
    /// address could not be bound: an error was logged).
    pub metrics_addr: Option<SocketAddr>,
    pub moved_aside: Option<PathBuf>,
    pub loaded_sessions: usize,
    pub region_created: bool,
    /// The keyring in use; `check(true)` reloads it now (SIGHUP).
    pub keys: Arc<KeyringWatch>,
    shutdown: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Open the store, load it into the core, bind and start serving.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let (region, region_created) = Region::load_or_init(&cfg.region_dir, cfg.create_region)?;
        let opened = DcStore::open_with(&cfg.data_dir, cfg.cache_bytes, cfg.unreadable_store)?;
        let replica = opened.replica;
        let mut store = opened.store;
        store.set_inline_flush(cfg.inline_flush);
        let mut dc_cfg = DcConfig::new(cfg.dc, replica);
        dc_cfg.durability = cfg.durability;
        dc_cfg.max_sessions = cfg.max_sessions;
        dc_cfg.max_active_sessions_per_device = cfg.max_sessions_per_device;
        dc_cfg.session_creates_per_minute = cfg.session_creates_per_minute;
        let mut core = Core::new(dc_cfg, region.keyring.clone());
        let now = cfg.clock.now_ms();
        let mut loaded = 0;
        for item in opened.digests {
            match item.map(|d| core.load_persisted(now, d).map_err(|e| e.to_string())) {
                Ok(Ok(())) => loaded += 1,
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable stored digest")
                }
            }
        }

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                Duration::from_millis(cfg.idle_timeout_ms)
                    .try_into()
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))),
            ))
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into());
        cfg.limits.apply_transport(&mut transport);
        let mut server_cfg = quinn::ServerConfig::with_single_cert(
            region.cert_chain.clone(),
            region.key.clone_key(),
        )?;
        server_cfg.transport_config(Arc::new(transport));
        let endpoint = match &cfg.endpoint {
            Some(endpoint) => {
                endpoint.set_server_config(Some(server_cfg));
                endpoint.clone()
            }
            None => {
                let bind_err = |source| ServerError::Bind {
                    addr: cfg.listen,
                    source,
                };
                let bound =
                    crate::socket::bind_udp(cfg.listen, cfg.udp_buffer_bytes).map_err(bind_err)?;
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
                    Some(server_cfg),
                    bound.socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(bind_err)?
            }
        };
        let local_addr = endpoint.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;

        let counters = Arc::new(DriverCounters::default());
        let (status_tx, status_rx) = tokio::sync::watch::channel(None);
        let metrics_addr = match cfg.metrics_listen {
            Some(addr) => match crate::http::start(addr, status_rx).await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve /metrics: the datacenter runs without its HTTP endpoints");
                    None
                }
            },
            None => None,
        };
        let (core_tx, core_rx) = mpsc::channel(cfg.core_queue);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let actor = Actor {
            core,
            store,
            conns: HashMap::new(),
            crash: CrashPoint::from_env(),
            applied_seen: 0,
            counters: counters.clone(),
            stats_file: cfg.stats_file.clone(),
            status_tx,
            listen: local_addr,
            limit_hits: Arc::new(LimitCounters::default()),
            keys: KeyringWatch::new(Region::keyring_path(&cfg.region_dir), region.keyring),
        };
        let keyring = actor.keys.clone();
        let keyring_for_handle = keyring.clone();
        let done = tokio::spawn(serve(
            cfg,
            endpoint,
            actor,
            core_tx,
            core_rx,
            shutdown_rx,
            keyring,
            counters,
        ));
        Ok(Server {
            local_addr,
            metrics_addr,
            moved_aside: opened.moved_aside,
            loaded_sessions: loaded,
            region_created,
            keys: keyring_for_handle,
            shutdown: Some(shutdown_tx),
            done,
        })
    }

    /// Stop accepting, close connections, flush the store.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
    }

    /// Wait until the server stops by itself (it does not, unless its task fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.done).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    cfg: ServerConfig,
    endpoint: quinn::Endpoint,
    mut actor: Actor,
    core_tx: mpsc::Sender<Input>,
    mut core_rx: mpsc::Receiver<Input>,
    mut shutdown_rx: oneshot::Receiver<()>,
    keyring: Arc<KeyringWatch>,
    counters: Arc<DriverCounters>,
) {
    let next_conn = Arc::new(AtomicU64::new(1));
    let per_addr = AddressLimiter::new(&cfg.limits);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(if cfg.max_handshakes == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        cfg.max_handshakes
    }));
    let accept = {
        let endpoint = endpoint.clone();
        let cfg = cfg.clone();
        let counters = counters.clone();
        let limit_hits = actor.limit_hits.clone();
        let keyring = keyring.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                if counters.connections.load(Ordering::Relaxed) >= cfg.max_connections {
                    counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                    limit_hits.hit(LimitKind::Connections);
                    incoming.refuse();
                    continue;
                }
                let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                    counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                    limit_hits.hit(LimitKind::Handshakes);
                    incoming.refuse();
                    continue;
                };
                let Some(slot) = admit_address(incoming, &per_addr, &limit_hits, &counters) else {
                    continue;
                };
                let (incoming, slot) = slot;
                let conn_id = next_conn.fetch_add(1, Ordering::Relaxed);
                let ctx = ConnCtx {
                    conn_id,
                    core_tx: core_tx.clone(),
                    keyring: keyring.clone(),
                    counters: counters.clone(),
                    handshake: Duration::from_millis(cfg.handshake_timeout_ms),
                    max_upload_frames: cfg.max_upload_frames,
                    conn_queue: cfg.conn_queue,
                    frames: cfg.limits.frame_limits(),
                    limits: cfg.limits.clone(),
                    limit_hits: limit_hits.clone(),
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = handle_conn(incoming, handshake, &ctx).await {
                        tracing::debug!(conn = ctx.conn_id, error = %e, "connection ended");
                    }
                    ctx.counters.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })
    };
    let keyring_poll = (cfg.keyring_poll_ms > 0)
        .then(|| keyring.spawn_poll(Duration::from_millis(cfg.keyring_poll_ms)));
    let mut keyring_seen = keyring.generation();

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_every = tokio::time::interval(Duration::from_millis(500));
    status_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Timers first: under a steady stream of inputs a core-first order never ran
            // the tick (barrier expiry, dispatch retries, key changes) or the status file.
            biased;
            _ = &mut shutdown_rx => break,
            _ = tick.tick() => {
                if let Some(k) = keyring.changed_since(&mut keyring_seen) {
                    // A revoked device loses its open connection too.
                    for d in k.revoked() {
                        if let Some((_, _, conn)) = actor.conns.remove(&d) {
                            conn.close(1u32.into(), ProtocolError::BadCredential.to_string().as_bytes());
                            actor.core.handle_disconnect(d);
                        }
                    }
                    actor.core.set_keyring((*k).clone());
                }
                actor.core.handle_tick(cfg.clock.now_ms());
                actor.flush_effects().await;
            }
            _ = status_every.tick() => actor.write_status(),
            input = core_rx.recv() => {
                let Some(input) = input else { break };
                let now = cfg.clock.now_ms();
                actor.handle(now, input);
                // Batch whatever else is queued: one persist, then the sends.
                for _ in 0..512 {
                    match core_rx.try_recv() {
                        Ok(input) => actor.handle(now, input),
                        Err(_) => break,
                    }
                }
                actor.flush_effects().await;
            }
        }
    }
    tracing::info!(dc = %cfg.dc, "shutting down");
    for (_, (_, tx, _)) in actor.conns.drain() {
        let _ = tx.try_send(ServerMsg::Error {
            error: ProtocolError::ShuttingDown,
        });
    }
    endpoint.close(0u32.into(), b"shutdown");
    accept.abort();
    if let Some(p) = keyring_poll {
        p.abort();
    }
    if let Err(e) = actor.store.flush() {
        tracing::error!(error = %e, "store flush at shutdown failed");
    }
    actor.write_status();
    endpoint.wait_idle().await;
}

struct Actor {
    core: Core,
    store: DcStore,
    conns: HashMap<DeviceId, (u64, mpsc::Sender<Msg>, quinn::Connection)>,
    crash: Option<CrashPoint>,
    applied_seen: u64,
    counters: Arc<DriverCounters>,
    stats_file: Option<PathBuf>,
    /// The latest status for the HTTP endpoints (nobody may be listening).
    status_tx: tokio::sync::watch::Sender<crate::http::Published>,
    listen: SocketAddr,
    limit_hits: Arc<LimitCounters>,
    keys: Arc<KeyringWatch>,
}

impl Actor {
    fn handle(&mut self, now: u64, input: Input) {
        match input {
            Input::Connect {
                conn_id,
                device,
                available,
                digests,
                tx,
                conn,
            } => {
                if let Some((_, old, _)) = self.conns.insert(device, (conn_id, tx, conn)) {
                    let _ = old.try_send(ServerMsg::Error {
                        error: ProtocolError::Replaced,
                    });
                }
                self.core.handle_connect(now, device, available, digests);
            }
            Input::Frame { device, msg } => {
                // The connection task lets no Hello/Upload through after the connect upload.
                if let Err(e) = self.core.handle_message(now, device, msg) {
                    tracing::debug!(%device, error = %e, "message refused by the core");
                }
            }
            Input::Disconnect { conn_id, device } => {
                if self
                    .conns
                    .get(&device)
                    .is_some_and(|(id, _, _)| *id == conn_id)
                {
                    self.conns.remove(&device);
                    self.core.handle_disconnect(device);
                }
            }
        }
    }

    async fn flush_effects(&mut self) {
        let fx = self.core.poll_effects();
        if fx.is_empty() {
            return;
        }
        let applied_in_batch = fx
            .send
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m,
                    ServerMsg::OpResult {
                        outcome: OpOutcome::Applied,
                        ..
                    }
                )
            })
            .count() as u64;
        let crash_now = self.crash.filter(|c| {
            applied_in_batch > 0
                && self.applied_seen < c.nth()
                && self.applied_seen + applied_in_batch >= c.nth()
        });
        self.applied_seen += applied_in_batch;
        match crash_now {
            Some(CrashPoint::AfterApplyBeforeReply(_)) => {
                let _ = self.store.persist(&fx.persist);
                let _ = self.store.flush();
                eprintln!("CRASH POINT after-apply-before-reply reached: aborting");
                std::process::abort();
            }
            Some(CrashPoint::AfterReplyBeforePersist(_)) => {
                self.send_all(fx.send);
                tokio::time::sleep(Duration::from_millis(300)).await;
                eprintln!("CRASH POINT after-reply-before-persist reached: aborting");
                std::process::abort();
            }
            None => {}
        }
        if !fx.persist.is_empty() {
            // Group commit: one flush for the whole batch, before any of its replies leave.
            let r = match self.store.persist(&fx.persist) {
                Ok(()) => self.store.flush_async().await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                // The devices still hold every digest; keep serving, but say it loudly.
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store write failed");
            }
        }
        self.send_all(fx.send);
        for e in fx.events {
            match e {
                // One line per server-side change, so that a harness can tell, after a kill,
                // which dispatches never reached a device (S5).
                DcEvent::Dispatched { session, driver } => tracing::debug!(
                    target: "lifeboat::dispatch",
                    session = session.0,
                    driver = driver.0,
                    "dispatched"
                ),
                other => tracing::debug!(event = ?other, "core event"),
            }
        }
    }

    fn send_all(&mut self, sends: Vec<(DeviceId, Msg)>) {
        for (device, msg) in sends {
            let Some((_, tx, _)) = self.conns.get(&device) else {
                continue;
            };
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%device, "slow consumer: output queue full, closing its connection");
                    if let Some((_, _, conn)) = self.conns.remove(&device) {
                        conn.close(2u32.into(), b"slow consumer");
                    }
                    self.core.handle_disconnect(device);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.conns.remove(&device);
                    self.core.handle_disconnect(device);
                }
            }
        }
    }

    fn status(&self) -> Status {
        let c = &self.counters;
        Status {
            dc: self.core.config().dc.0,
            listen: self.listen.to_string(),
            sessions: self.core.session_count(),
            active_sessions: self.core.active_session_count(),
            connections: self.conns.len(),
            refused_connections: c.refused_connections.load(Ordering::Relaxed),
            bad_credentials: c.bad_credentials.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
            core: self.core.stats().clone(),
            limits: self.limit_hits.snapshot(self.core.stats()),
            keyring: self.keys.status(self.core.active_sessions_by_key()),
        }
    }

    /// Publish the status: to the HTTP endpoints (if any listen) and the status file (if
    /// asked for). One snapshot feeds both.
    fn write_status(&self) {
        if self.status_tx.receiver_count() == 0 && self.stats_file.is_none() {
            return;
        }
        let status = self.status();
        let Some(path) = &self.stats_file else {
            self.status_tx
                .send_replace(Some((std::time::Instant::now(), status)));
            return;
        };
        let tmp = path.with_extension("tmp");
        let ok = serde_json::to_vec(&status)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = ok {
            tracing::warn!(error = %e, path = %path.display(), "could not write the status file");
        }
        self.status_tx
            .send_replace(Some((std::time::Instant::now(), status)));
    }
}

struct ConnCtx {
    conn_id: u64,
    core_tx: mpsc::Sender<Input>,
    keyring: Arc<KeyringWatch>,
    counters: Arc<DriverCounters>,
    handshake: Duration,
    max_upload_frames: usize,
    conn_queue: usize,
    frames: FrameLimits,
    limits: Limits,
    limit_hits: Arc<LimitCounters>,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("handshake timed out")]
    Timeout,
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("frame: {0}")]
    Frame(#[from] FrameReadError),
    #[error("protocol: {0}")]
    Protocol(ProtocolError),
    #[error("datacenter core stopped")]
    CoreGone,
}

async fn refuse(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    error: ProtocolError,
) -> ConnError {
    if let Ok(frame) = encode_frame(&ServerMsg::<Trip>::Error {
        error: error.clone(),
    }) {
        let _ = tokio::time::timeout(Duration::from_millis(500), send.write_all(&frame)).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    }
    conn.close(1u32.into(), error.to_string().as_bytes());
    ConnError::Protocol(error)
}

async fn handle_conn(
    incoming: quinn::Incoming,
    handshake: tokio::sync::OwnedSemaphorePermit,
    ctx: &ConnCtx,
) -> Result<(), ConnError> {
    let timed_out = |_| {
        ctx.limit_hits.hit(LimitKind::HandshakeTimeout);
        ConnError::Timeout
    };
    let conn = tokio::time::timeout(ctx.handshake, incoming)
        .await
        .map_err(timed_out)??;
    // The crypto is done: the next device may start its handshake.
    drop(handshake);
    let (mut send, mut recv) = tokio::time::timeout(ctx.handshake, conn.accept_bi())
        .await
        .map_err(timed_out)??;
    let mut buf = Vec::new();
    // The whole connect upload must arrive within the handshake timeout (slowloris).
    let keyring = ctx.keyring.current();
    let hello = tokio::time::timeout(ctx.handshake, async {
        let mut intake = ConnectIntake::new(ctx.max_upload_frames);
        loop {
            let Some(msg) =
                read_frame_limited::<ClientMsg<Trip>, _>(&mut recv, &mut buf, &ctx.frames).await?
            else {
                return Ok::<_, FrameReadError>(Err(ProtocolError::ExpectedHello));
            };
            match intake.handle_frame(msg, &keyring) {
                Ok(IntakeStep::More) => {}
                Ok(IntakeStep::Done(connected)) => return Ok(Ok(connected)),
                Err(e) => return Ok(Err(e)),
            }
        }
    })
    .await;
    let Connected {
        device,
        available,
        digests,
    } = match hello {
        Err(_) => {
            let ms = ctx.handshake.as_millis();
            let err = limit(ctx, LimitKind::HandshakeTimeout, ms);
            return Err(refuse(&mut send, &conn, err).await);
        }
        Ok(Err(e)) => {
            let err = frame_error(ctx, e);
            return Err(refuse(&mut send, &conn, err).await);
        }
        Ok(Ok(Err(e))) => {
            match &e {
                ProtocolError::BadCredential => {
                    ctx.counters.bad_credentials.fetch_add(1, Ordering::Relaxed);
                }
                ProtocolError::Limit(exceeded) => ctx.limit_hits.hit(exceeded.kind),
                _ => {
                    ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Err(refuse(&mut send, &conn, e).await);
        }
        Ok(Ok(Ok(h))) => h,
    };

    let (tx, mut rx) = mpsc::channel::<Msg>(ctx.conn_queue);
    let reply_tx = tx.clone();
    let inflight = InflightGate::new(ctx.limits.max_inflight_ops);
    let writer_inflight = inflight.clone();
    ctx.core_tx
        .send(Input::Connect {
            conn_id: ctx.conn_id,
            device,
            available,
            digests,
            tx,
            conn: conn.clone(),
        })
        .await
        .map_err(|_| ConnError::CoreGone)?;

    let writer_conn = conn.clone();
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if InflightRule::releases_slot(&msg) {
                writer_inflight.answered();
            }
            let last = matches!(msg, ServerMsg::Error { .. });
            let Ok(frame) = encode_frame(&msg) else {
                continue;
            };
            if send.write_all(&frame).await.is_err() {
                break;
            }
            if last {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                break;
            }
        }
        writer_conn.close(0u32.into(), b"closed");
    });

    let result = loop {
        match read_frame_limited::<ClientMsg<Trip>, _>(&mut recv, &mut buf, &ctx.frames).await {
            Ok(Some(msg)) if InflightRule::takes_slot(&msg) && !inflight.submit() => {
                // Over the in-flight limit: a typed, retryable answer; the core never sees it.
                let exceeded = ctx.limits.exceeded(LimitKind::InFlightOps);
                ctx.limit_hits.hit(LimitKind::InFlightOps);
                if let Some(answer) = InflightRule::refusal(&msg, exceeded) {
                    if reply_tx.try_send(answer).is_err() {
                        inflight.answered();
                    }
                }
            }
            Ok(Some(ClientMsg::Hello { .. } | ClientMsg::Upload { .. })) => {
                ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                break Err(ConnError::Protocol(ProtocolError::BadFrame(
                    "Hello/Upload after connect".into(),
                )));
            }
            Ok(Some(msg)) => {
                if ctx
                    .core_tx
                    .send(Input::Frame { device, msg })
                    .await
                    .is_err()
                {
                    break Err(ConnError::CoreGone);
                }
            }
            Ok(None) => break Ok(()),
            // `Closed` here is a stream that ended mid-frame (a truncated frame).
            Err(
                e @ (FrameReadError::Codec(_)
                | FrameReadError::TooSlow { .. }
                | FrameReadError::Closed),
            ) => {
                break Err(ConnError::Protocol(frame_error(ctx, e)));
            }
            Err(e) => {
                if matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut)) {
                    ctx.limit_hits.hit(LimitKind::IdleTimeout);
                }
                break Err(e.into());
            }
        }
    };
    if let Err(ConnError::Protocol(e)) = &result {
        // The typed error goes out as the last frame (bounded wait), and the close reason
        // carries its text too.
        if reply_tx
            .try_send(ServerMsg::Error { error: e.clone() })
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(1_000), &mut writer).await;
        }
        conn.close(1u32.into(), e.to_string().as_bytes());
    }
    let _ = ctx
        .core_tx
        .send(Input::Disconnect {
            conn_id: ctx.conn_id,
            device,
        })
        .await;
    writer.abort();
    result
}

/// Count a limit hit and build its typed error.
fn limit(ctx: &ConnCtx, kind: LimitKind, max: impl TryInto<u64>) -> ProtocolError {
    ctx.limit_hits.hit(kind);
    ProtocolError::Limit(lifeboat_common::limits::LimitExceeded::new(kind, max))
}

/// The typed error for a frame that could not be read: a limit, or a bad frame.
fn frame_error(ctx: &ConnCtx, e: FrameReadError) -> ProtocolError {
    match e {
        FrameReadError::Codec(CodecError::TooLarge { max, .. }) => {
            limit(ctx, LimitKind::FrameBytes, max)
        }
        FrameReadError::TooSlow { timeout_ms } => limit(ctx, LimitKind::FrameTimeout, timeout_ms),
        other => {
            ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            ProtocolError::BadFrame(other.to_string())
        }
    }
}

/// The per-address limit at accept time: a slot, or the connection refused (or asked to
/// prove its address with a QUIC retry when the address is busy).
fn admit_address(
    incoming: quinn::Incoming,
    per_addr: &Arc<AddressLimiter>,
    limit_hits: &LimitCounters,
    counters: &DriverCounters,
) -> Option<(quinn::Incoming, crate::limits::AddressSlot)> {
    let addr = incoming.remote_address();
    if per_addr.is_busy(addr) && !incoming.remote_address_validated() {
        // A spoofed source cannot answer a retry, so it cannot hold a victim's slots.
        if let Err(e) = incoming.retry() {
            e.into_incoming().refuse();
        }
        return None;
    }
    match per_addr.try_acquire(addr) {
        Some(slot) => Some((incoming, slot)),
        None => {
            counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            limit_hits.hit(LimitKind::ConnectionsPerAddress);
            incoming.refuse();
            None
        }
    }
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
