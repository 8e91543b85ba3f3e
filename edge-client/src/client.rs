//! The embeddable edge client: a thin tokio/quinn driver around [`EdgeCore`].
//!
//! One actor task per client owns the core, the store and the connection. The app talks to
//! it through a bounded command queue and hears back through a bounded event broadcast.
//!
//! Connection life: connect to a datacenter, send `Hello` with every held digest (and
//! `Upload` frames if there are many), wait for `Welcome`, replay the outbox, then serve.
//! A dead datacenter is detected from the work in flight: with an op sent and unanswered,
//! the route policy's [`Liveness`] watch samples the connection's received-datagram count
//! and RTT, has the driver send a one-byte QUIC DATAGRAM (acknowledged by the datacenter's
//! stack, not its application) while the answer is slow, and gives the connection up after
//! about a second of total silence. An idle connection only sends a sparse keep-alive and
//! relies on the idle timeout. Ops submitted while disconnected wait in the outbox
//! (bounded) and go out after the next `Welcome`.
//!
//! Which datacenter, how long to wait between attempts, what a busy (refusing) datacenter
//! means, when to probe the more preferred ones and move back (converging on one
//! datacenter, S13), and how long the user felt a failover are not decided here: they are
//! the route policy of [`lifeboat_common::route`] ([`Planner`], [`StallClock`]), a
//! deterministic state machine with its own tests. This driver connects, sleeps, probes
//! and writes the route memory to the store as the policy says.
//!
//! Invariants: effects are carried out in the core's order (store writes, flush, then sends,
//! then the app hears of commits); a store failure stops the client rather than report an op
//! committed that is not on disk (C1); no API call panics.

use crate::config::EdgeConfig;
pub use crate::probe_board::ProbeBoard;
use crate::store::{EdgeStore, StoreError};
use lifeboat_common::codec::encode_frame;
use lifeboat_common::edge::{
    Commit, EdgeCore, EdgeEffects, EdgeEvent, HeldSession, OpProgress, SubmitError,
};
use lifeboat_common::op_outcome::{OpOutcomeRecord, OpStatus};
use lifeboat_common::route::{
    Liveness, Next, Planner, RouteConfig, Stall, StallClock, Verdict, Waiting,
};
use lifeboat_common::wire::{ClientMsg, ProtocolError, ServerMsg};
use lifeboat_common::{
    DatacenterId, DeviceId, GeoPoint, OpId, Role, SessionId, Trip, TripOp, TripState, VersionVector,
};
use lifeboat_frame_io::read_frame;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
// tokio's clock (the same as std's unless a simulation pauses and drives it).
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// Capacity of the app's command queue.
const COMMAND_QUEUE: usize = 256;
/// A datacenter that failed this recently goes to the back of the first round after a start.
const REMEMBER_FAILURE: Duration = Duration::from_secs(10 * 60);
/// Frames buffered from the connection reader.
const FRAME_QUEUE: usize = 256;
/// The liveness probe's payload (the datacenter's stack acknowledges it; nobody reads it).
const PROBE: bytes::Bytes = bytes::Bytes::from_static(&[0]);
/// Bytes of probes queued for sending at most (older ones are dropped first).
const PROBE_SEND_BUFFER: usize = 256;

/// The frames (or the reason the stream ended) from a connection's reader.
type FrameRx = mpsc::Receiver<Result<ServerMsg<Trip>, String>>;

/// What the app hears.
#[derive(Clone, Debug)]
pub enum ClientEvent {
    /// Connected and the connect upload was processed.
    Connected {
        /// The datacenter that sent `Welcome`.
        dc: DatacenterId,
        /// The configured address it was reached at.
        addr: SocketAddr,
    },
    /// A connection attempt failed.
    ConnectFailed {
        /// The address tried.
        addr: SocketAddr,
        /// The connect or handshake error, as text.
        reason: String,
    },
    /// The connection to a datacenter was lost.
    Disconnected {
        /// The address of the datacenter lost.
        addr: SocketAddr,
        /// Why the connection ended, as text.
        reason: String,
    },
    /// The client lost its datacenter and is looking for another.
    FailoverStarted {
        /// The address of the datacenter lost.
        from: SocketAddr,
    },
    /// A more preferred datacenter answered again; the client moved there (no failover: the
    /// new connection was up before the old one closed).
    Moved {
        /// The address left.
        from: SocketAddr,
        /// The more preferred address now serving.
        to: SocketAddr,
    },
    /// The failover is over, as the user felt it: the first op answered after the client
    /// reconnected (or the reconnect itself, if nothing was queued). `stalled_ms` runs from
    /// the first op sent after the lost datacenter's last frame (or, with none, from its last
    /// sign of life) to then; `detection_ms` is the part of it before the client gave the
    /// connection up (at most the idle timeout for a datacenter that went silent; 0 for one
    /// that closed the connection). A device nobody waited on when its connection was lost
    /// (no live session, nothing queued) reports none unless an op is queued before the
    /// reconnect, and then the stall runs from that op (`ClientStatsSnapshot::idle_reconnects`
    /// counts the others).
    FailoverFinished {
        /// The datacenter that took over.
        dc: DatacenterId,
        /// The address it was reached at.
        addr: SocketAddr,
        /// The stall the user felt, in ms (see above).
        stalled_ms: u64,
        /// The part of `stalled_ms` before the lost connection was given up, in ms.
        detection_ms: u64,
        /// From giving the connection up to the new datacenter's `Welcome`, in ms
        /// (connect attempts, backoff, handshake, connect upload).
        connect_ms: u64,
        /// From that `Welcome` to the first answer, in ms (the op's restore wait and
        /// commit at the new datacenter; 0 if nothing waited).
        first_answer_ms: u64,
    },
    /// Something happened to a session (update, conflict, rejection).
    Session(EdgeEvent<Trip>),
    /// An op was answered (also for ops submitted before a restart of the app).
    OpResolved {
        /// The op.
        op: OpId,
        /// Committed, or failed for good (the op was never applied).
        result: Result<Commit, SubmitError>,
    },
    /// The device store failed; the client stopped.
    StoreFailed(String),
}

/// An event and when it happened (unix ms, from the client's clock: `EdgeConfig::clock`).
#[derive(Clone, Debug)]
pub struct TimedEvent {
    /// When the event happened, unix ms.
    pub at_ms: u64,
    /// What happened.
    pub event: ClientEvent,
}

impl std::fmt::Display for ClientEvent {
    /// One short line, ids and versions in their one printed form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientEvent::Connected { dc, addr } => write!(f, "connected to {dc} at {addr}"),
            ClientEvent::ConnectFailed { addr, reason } => {
                write!(f, "connect to {addr} failed: {reason}")
            }
            ClientEvent::Disconnected { addr, reason } => {
                write!(f, "disconnected from {addr}: {reason}")
            }
            ClientEvent::FailoverStarted { from } => write!(f, "failover started: {from} lost"),
            ClientEvent::Moved { from, to } => write!(f, "moved from {from} to {to}"),
            ClientEvent::FailoverFinished {
                dc,
                addr,
                stalled_ms,
                detection_ms,
                connect_ms,
                first_answer_ms,
            } => write!(
                f,
                "failover finished at {dc} ({addr}): stalled {stalled_ms} ms, of which detection {detection_ms} ms, connect {connect_ms} ms, first answer {first_answer_ms} ms"
            ),
            ClientEvent::Session(e) => write!(f, "{e}"),
            ClientEvent::OpResolved { op, result } => match result {
                Ok(c) if c.duplicate => write!(f, "op {op} committed at {} (a retry)", c.version),
                Ok(c) => write!(f, "op {op} committed at {}", c.version),
                Err(e) => write!(f, "op {op} failed: {e}"),
            },
            ClientEvent::StoreFailed(e) => write!(f, "device store failed, client stopped: {e}"),
        }
    }
}

impl std::fmt::Display for TimedEvent {
    /// `HH:MM:SS.mmm` (UTC) and the event.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.at_ms % 86_400_000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:03} {}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            self.event
        )
    }
}
/// Why a call of the client failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// `EdgeConfig::datacenters` is empty: the client cannot start.
    #[error("no datacenter configured")]
    NoDatacenters,
    /// The QUIC/TLS configuration could not be built from the configured CA and timeouts.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    /// The device store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client's UDP socket could not be opened.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The op was not queued (nothing was recorded; the app may submit it again later).
    #[error("not queued: {0}")]
    Refused(SubmitError),
    /// The op was queued as `op` and then failed for good (never applied; do not expect it
    /// to be, and submit a new op if the action is still wanted).
    #[error("op {op} failed: {error}")]
    Failed {
        /// The id the op was queued under.
        op: OpId,
        /// Why it failed.
        error: SubmitError,
    },
    /// The client's actor is gone (shut down, or stopped after a store failure); start a
    /// new client.
    #[error("the client has stopped")]
    Closed,
    /// [`crate::BlockingEdgeClient`] could not build its tokio runtime (the error, as text).
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Why the client's TLS and QUIC configuration could not be built from what it was given.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA bytes are not valid PEM.
    #[error("CA PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    /// A certificate in the PEM could not be added as a trust root.
    #[error("CA certificate: {0}")]
    Certificate(rustls::Error),
    /// The PEM holds no certificate; pass the region's `ca.pem`.
    #[error("no CA certificate in the given PEM")]
    NoCertificate,
    /// The idle timeout does not fit QUIC's range (about 2^62 ms).
    #[error("idle timeout out of range: {0}")]
    IdleTimeout(#[from] quinn::VarIntBoundsExceeded),
    /// The crypto provider does not offer TLS 1.3 (never with the built-in *ring*).
    #[error("TLS 1.3: {0}")]
    Protocol(rustls::Error),
    /// The TLS configuration has no cipher suite QUIC can use for its initial packets.
    #[error("QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// A session as the device holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionSnapshot {
    /// The session's id.
    pub session: SessionId,
    /// The version of the held copy.
    pub version: VersionVector,
    /// The trip as the held copy has it.
    pub view: TripState,
    /// The held copy is the session's tombstone.
    pub finished: bool,
    /// The held copy is known to be on the committed chain.
    pub committed: bool,
    /// The participants the held copy names (from its authenticated header).
    pub rider: DeviceId,
    /// The driver the held copy names; `None` before dispatch.
    pub driver: Option<DeviceId>,
    /// This device's part in the session.
    pub role: Option<Role>,
    /// Sealed digest size in bytes.
    pub digest_bytes: usize,
}

/// Counters of one client.
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    /// UDP bytes sent, QUIC overhead included, added when a connection ends.
    pub(crate) bytes_up: AtomicU64,
    /// UDP bytes received, QUIC overhead included, added when a connection ends.
    pub(crate) bytes_down: AtomicU64,
    /// QUIC connections established (handshake done, before `Welcome`).
    pub(crate) connects: AtomicU64,
    /// Ops resolved as committed.
    pub(crate) ops_committed: AtomicU64,
    /// The datacenter currently serving this client (0: none).
    pub(crate) connected_dc: AtomicU64,
    /// Liveness probes sent (one-byte QUIC datagrams while an answer was slow).
    pub(crate) liveness_probes: AtomicU64,
    /// Connections a drained datacenter moved away (planned failovers).
    pub(crate) drained: AtomicU64,
    /// Of `bytes_up` + `bytes_down`: what each connection had sent and received when its
    /// handshake completed (the handshakes' share of the mobile bytes).
    pub(crate) handshake_bytes: AtomicU64,
    /// QUIC path MTU probes sent (padded packets; quinn's PLPMTUD).
    pub(crate) mtu_probes: AtomicU64,
    /// Standby connections opened (`EdgeConfig::standby`).
    pub(crate) standby_opened: AtomicU64,
    /// Failovers that went over a standby connection (no handshake at the failover).
    pub(crate) standby_used: AtomicU64,
    /// Failovers nobody waited on (no live session, nothing queued until the reconnect):
    /// not stalls, so no `FailoverFinished`.
    pub(crate) idle_reconnects: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStatsSnapshot {
    /// UDP bytes sent, QUIC overhead included (connections that ended, plus the live one
    /// as of its last update).
    pub bytes_up: u64,
    /// UDP bytes received, counted like `bytes_up`.
    pub bytes_down: u64,
    /// QUIC connections established (handshake done, before `Welcome`).
    pub connects: u64,
    /// Ops resolved as committed.
    pub ops_committed: u64,
    /// Liveness probes sent (one-byte QUIC datagrams while an answer was slow).
    pub liveness_probes: u64,
    /// Connections a drained datacenter moved away (planned failovers).
    pub drained: u64,
    /// Of `bytes_up` + `bytes_down`: what connections had sent and received by the end of
    /// their handshakes.
    pub handshake_bytes: u64,
    /// QUIC path MTU probes sent (padded packets).
    pub mtu_probes: u64,
    /// Standby connections opened (`EdgeConfig::standby`).
    pub standby_opened: u64,
    /// Failovers that went over a standby connection (no handshake at the failover).
    pub standby_used: u64,
    /// Failovers nobody waited on (no live session, nothing queued until the reconnect):
    /// not stalls, so no [`ClientEvent::FailoverFinished`].
    pub idle_reconnects: u64,
}

type Done = oneshot::Sender<Result<Commit, SubmitError>>;

enum Command {
    Submit {
        session: SessionId,
        op: TripOp,
        accepted: oneshot::Sender<Result<OpId, EdgeError>>,
        done: Option<Done>,
    },
    SetAvailable(bool),
    Sessions(oneshot::Sender<Vec<SessionSnapshot>>),
    OpStatus(OpId, oneshot::Sender<OpStatus<Trip>>),
    OpProgress(OpId, oneshot::Sender<Option<OpProgress>>),
    QueuedOps(oneshot::Sender<Vec<(OpId, TripOp)>>),
    Outcomes(oneshot::Sender<Vec<OpOutcomeRecord<Trip>>>),
    Acknowledge(Vec<OpId>, oneshot::Sender<usize>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running client. Cheap to clone.
#[derive(Clone)]
pub struct EdgeClient {
    device: DeviceId,
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<TimedEvent>,
    stats: Arc<ClientStats>,
}

/// How one connection ended (see `Actor::serve`).
struct Ended {
    /// Why, as text.
    reason: String,
    /// Whether it got as far as `Welcome`.
    welcomed: bool,
    /// A more preferred datacenter's connection to move to.
    moved: Option<(usize, quinn::Connection)>,
    /// The liveness watch gave it up after this much silence, ms.
    silent_ms: Option<u64>,
}

impl Ended {
    fn before_welcome(reason: String) -> Self {
        Self {
            reason,
            welcomed: false,
            moved: None,
            silent_ms: None,
        }
    }
}

/// Build the QUIC client configuration for a region CA: TLS 1.3, the region CA as the only
/// root, and a session-ticket store of its own (a device resumes its TLS session at any
/// datacenter of the region: the datacenters' tickets are region-wide, SECURITY.md).
pub fn client_config(
    ca_pem: &[u8],
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, EdgeError> {
    build_client_config(ca_pem, keep_alive, idle_timeout, true)
}

/// [`client_config`], with or without TLS resumption. Every attempt that offers a ticket
/// uses it up (rustls hands each out once), so the home probes, which mostly find a dead
/// datacenter, go without: the tickets are kept for the reconnect that matters.
fn build_client_config(
    ca_pem: &[u8],
    keep_alive: Duration,
    idle_timeout: Duration,
    resume: bool,
) -> Result<quinn::ClientConfig, EdgeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(TlsSetupError::Pem)?;
        roots.add(cert).map_err(TlsSetupError::Certificate)?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate.into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Protocol)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(TlsSetupError::from)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    // The client opens its one stream; it accepts none from the datacenter (and so sets up
    // no per-stream state for them on every connect attempt).
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    let idle = quinn::IdleTimeout::try_from(idle_timeout).map_err(TlsSetupError::from)?;
    transport.max_idle_timeout(Some(idle));
    // No path MTU discovery: every message fits QUIC's 1,200-byte minimum packet or splits
    // into such packets at no loss (a digest is ~150 bytes), while the discovery's padded
    // probes (up to 1,452 bytes, several per connection) were most of a phone's bytes.
    transport.mtu_discovery_config(None);
    // Datagrams carry only the liveness probe, device to datacenter: a few queued at most.
    // quinn sends datagrams only with a receive buffer set; the datacenter sends none, so a
    // tiny one (anything larger would close the connection).
    transport
        .datagram_send_buffer_size(PROBE_SEND_BUFFER)
        .datagram_receive_buffer_size(Some(PROBE_SEND_BUFFER));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A client endpoint (UDP socket) suitable for the given datacenter addresses.
pub fn client_endpoint(datacenters: &[SocketAddr]) -> Result<quinn::Endpoint, EdgeError> {
    let bind: SocketAddr = match datacenters.first() {
        Some(SocketAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        _ => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    Ok(quinn::Endpoint::client(bind)?)
}

impl EdgeClient {
    /// Open the store, load it, and start the client on the current tokio runtime.
    pub async fn start(cfg: EdgeConfig) -> Result<EdgeClient, EdgeError> {
        if cfg.datacenters.is_empty() {
            return Err(EdgeError::NoDatacenters);
        }
        let client_cfg = match &cfg.client_config {
            Some(c) => c.clone(),
            None => Arc::new(client_config(
                &cfg.ca_pem,
                cfg.keep_alive,
                cfg.idle_timeout,
            )?),
        };
        let probe_cfg = build_client_config(&cfg.ca_pem, cfg.keep_alive, cfg.idle_timeout, false)?;
        let endpoint = match &cfg.endpoint {
            Some(e) => e.clone(),
            None => client_endpoint(&cfg.datacenters)?,
        };
        let probe_board = cfg.probe_board.clone().unwrap_or_default();
        let store = EdgeStore::open(&cfg.store, cfg.device)?;
        let store = store
            .with_clock(cfg.clock.clone())
            .with_inline_flush(cfg.inline_flush);
        let loaded = store.load_expiring(cfg.tombstone_ttl, cfg.clock.now())?;
        let mut core = EdgeCore::new(cfg.device, cfg.limits.clone());
        core.set_retry_interval(cfg.retry_interval.as_millis() as u64);
        for (s, h) in loaded.sessions {
            core.load_session(s, h);
        }
        for (id, op) in loaded.ops {
            core.load_op(id, op);
        }
        for rec in loaded.outcomes {
            core.load_outcome(rec);
        }
        let memory = store.load_route().unwrap_or_default();
        if loaded.unreadable > 0 {
            tracing::warn!(device = %cfg.device, unreadable = loaded.unreadable, "device store has unreadable records; left on disk, not loaded");
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(cfg.event_queue.max(1));
        let stats = Arc::new(ClientStats::default());
        let seed = cfg.rng_seed.unwrap_or_else(|| rand::rng().random());
        let route = Planner::new(
            route_config(&cfg),
            cfg.datacenters.clone(),
            memory,
            seed,
            cfg.clock.now_ms(),
        );
        let actor = Actor {
            available: cfg.available,
            cfg,
            core,
            store,
            waiters: HashMap::new(),
            events: events.clone(),
            stats: stats.clone(),
            endpoint,
            client_cfg,
            probe_cfg,
            probe_board,
            cmd_rx,
            stopped: false,
            route,
            stall: StallClock::default(),
            drain_order: None,
            standby: None,
            rng: rand::SeedableRng::seed_from_u64(seed ^ 0x5EED_1D1E),
        };
        let device = actor.cfg.device;
        tokio::spawn(actor.run());
        Ok(EdgeClient {
            device,
            cmd: cmd_tx,
            events,
            stats,
        })
    }

    /// The device this client runs for.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Events from now on, each with the time it happened. Events are notifications: an
    /// op's outcome also stays readable ([`EdgeClient::outcomes`], [`EdgeClient::op_status`])
    /// until the app acknowledges it, so a receiver that lagged or an app that was killed
    /// loses none.
    pub fn subscribe(&self) -> broadcast::Receiver<TimedEvent> {
        self.events.subscribe()
    }

    /// Queue an op; returns its stable id once it is durably queued on the device, and a
    /// receiver that resolves when it is committed (or refused).
    pub async fn enqueue(
        &self,
        session: SessionId,
        op: TripOp,
    ) -> Result<(OpId, oneshot::Receiver<Result<Commit, SubmitError>>), EdgeError> {
        let (accepted, accepted_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.cmd
            .send(Command::Submit {
                session,
                op,
                accepted,
                done: Some(done),
            })
            .await
            .map_err(|_| EdgeError::Closed)?;
        let id = accepted_rx.await.map_err(|_| EdgeError::Closed)??;
        Ok((id, done_rx))
    }

    /// Submit an op and wait until it is committed: applied by a datacenter and the digest
    /// that covers it persisted (flushed) on this device. A queued op that then fails is
    /// [`EdgeError::Failed`] with its id; one that was not queued is [`EdgeError::Refused`].
    pub async fn submit(&self, session: SessionId, op: TripOp) -> Result<Commit, EdgeError> {
        let (id, done) = self.enqueue(session, op).await?;
        match done.await.map_err(|_| EdgeError::Closed)? {
            Ok(c) => Ok(c),
            Err(error) => Err(EdgeError::Failed { op: id, error }),
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| EdgeError::Closed)?;
        rx.await.map_err(|_| EdgeError::Closed)
    }

    /// Where op `id` stands: queued, decided (and not acknowledged yet), or unknown.
    pub async fn op_status(&self, id: OpId) -> Result<OpStatus<Trip>, EdgeError> {
        self.ask(|tx| Command::OpStatus(id, tx)).await
    }

    /// Why a queued op is not decided yet, as the device sees it (connection, in flight,
    /// retries, the datacenter's last answer, the held copy); `None` if it is not queued.
    /// For diagnostics: an app shows it, or logs it, for an op that takes too long.
    pub async fn op_progress(&self, id: OpId) -> Result<Option<OpProgress>, EdgeError> {
        self.ask(|tx| Command::OpProgress(id, tx)).await
    }

    /// The ops queued on this device and not decided yet (also those queued before an app
    /// restart, whose ids the app may never have seen).
    pub async fn queued_ops(&self) -> Result<Vec<(OpId, TripOp)>, EdgeError> {
        self.ask(Command::QueuedOps).await
    }

    /// Decided outcomes the app has not acknowledged, oldest first (see
    /// `lifeboat_common::op_outcome` for the promise).
    pub async fn outcomes(&self) -> Result<Vec<OpOutcomeRecord<Trip>>, EdgeError> {
        self.ask(Command::Outcomes).await
    }

    /// The app has handled these outcomes: forget them. Returns how many were held.
    pub async fn acknowledge(&self, ids: Vec<OpId>) -> Result<usize, EdgeError> {
        self.ask(|tx| Command::Acknowledge(ids, tx)).await
    }

    /// Rider: request a trip (a new session with a fresh random id).
    pub async fn request_trip(
        &self,
        pickup: GeoPoint,
        dropoff: GeoPoint,
    ) -> Result<(SessionId, Commit), EdgeError> {
        let session = SessionId(rand::rng().random::<u64>() | 1);
        let commit = self
            .submit(session, TripOp::Request { pickup, dropoff })
            .await?;
        Ok((session, commit))
    }

    /// Driver: offer (or withdraw) this device for dispatch.
    pub async fn set_available(&self, available: bool) -> Result<(), EdgeError> {
        self.cmd
            .send(Command::SetAvailable(available))
            .await
            .map_err(|_| EdgeError::Closed)
    }

    /// The sessions this device holds.
    pub async fn sessions(&self) -> Result<Vec<SessionSnapshot>, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Sessions(tx))
            .await
            .map_err(|_| EdgeError::Closed)?;
        rx.await.map_err(|_| EdgeError::Closed)
    }

    /// A copy of the client's counters now.
    pub fn stats(&self) -> ClientStatsSnapshot {
        ClientStatsSnapshot {
            bytes_up: self.stats.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.stats.bytes_down.load(Ordering::Relaxed),
            connects: self.stats.connects.load(Ordering::Relaxed),
            ops_committed: self.stats.ops_committed.load(Ordering::Relaxed),
            liveness_probes: self.stats.liveness_probes.load(Ordering::Relaxed),
            drained: self.stats.drained.load(Ordering::Relaxed),
            handshake_bytes: self.stats.handshake_bytes.load(Ordering::Relaxed),
            mtu_probes: self.stats.mtu_probes.load(Ordering::Relaxed),
            standby_opened: self.stats.standby_opened.load(Ordering::Relaxed),
            standby_used: self.stats.standby_used.load(Ordering::Relaxed),
            idle_reconnects: self.stats.idle_reconnects.load(Ordering::Relaxed),
        }
    }

    /// The datacenter currently serving this client, if connected (after `Welcome`).
    pub fn connected_dc(&self) -> Option<DatacenterId> {
        match self.stats.connected_dc.load(Ordering::Relaxed) {
            0 => None,
            n => u16::try_from(n).ok().map(DatacenterId),
        }
    }

    /// Wait (at most `timeout`) until connected; returns the datacenter.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<DatacenterId> {
        let start = Instant::now();
        loop {
            if let Some(dc) = self.connected_dc() {
                return Some(dc);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the client: close the connection; the store stays as it is on disk.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Actor {
    cfg: EdgeConfig,
    core: EdgeCore<Trip>,
    store: EdgeStore,
    waiters: HashMap<OpId, Done>,
    events: broadcast::Sender<TimedEvent>,
    stats: Arc<ClientStats>,
    endpoint: quinn::Endpoint,
    client_cfg: Arc<quinn::ClientConfig>,
    /// The home probes' configuration: no TLS resumption (see `build_client_config`).
    probe_cfg: quinn::ClientConfig,
    probe_board: Arc<ProbeBoard>,
    cmd_rx: mpsc::Receiver<Command>,
    available: bool,
    stopped: bool,
    /// Which datacenter next, how long to wait, when to probe (the route policy; its
    /// memory is kept in the store).
    route: Planner<SocketAddr>,
    /// The failover as the user feels it.
    stall: StallClock<SocketAddr>,
    /// The datacenter of the connection being served is drained (a planned failover): go
    /// to this address (if it is in our list), keep away from it for this long (ms).
    drain_order: Option<(Option<SocketAddr>, u64)>,
    /// The standby connection (`EdgeConfig::standby`): which datacenter, and the connection
    /// (handshake done, no stream opened).
    standby: Option<(usize, quinn::Connection)>,
    /// Jitter of the idle reconnect spread (seeded like the route policy).
    rng: rand::rngs::SmallRng,
}

/// How often a connected client checks its standby connection (opens, replaces or drops it).
const STANDBY_CHECK: Duration = Duration::from_secs(2);

enum Step {
    Continue,
    Stop,
}

/// What one step of the route policy gave.
enum Attempt {
    Connected(usize, quinn::Connection),
    /// Nothing yet (a wait served, a connect failed): ask the policy again.
    Again,
    Stop,
}

/// Why a connect attempt did not give a connection.
enum ConnectFailure {
    /// The datacenter answered and refused: it is at its handshake limit (alive, busy).
    Busy(String),
    /// No answer, or the handshake failed.
    Failed(String),
}

/// The datacenter refused the connection before the handshake (its handshake limit).
fn is_refusal(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// The route policy's settings, from the client's.
fn route_config(cfg: &EdgeConfig) -> RouteConfig {
    let ms = |d: Duration| d.as_millis() as u64;
    RouteConfig {
        backoff_min_ms: ms(cfg.backoff_min),
        backoff_max_ms: ms(cfg.backoff_max),
        home_probe_ms: cfg.home_probe.map(ms),
        probe_max_ms: ms(EdgeConfig::HOME_PROBE_MAX),
        remember_failure_ms: ms(REMEMBER_FAILURE),
    }
}

/// Write to the datacenter, giving up after `limit`: a datacenter that stops reading (flow
/// control never opens) must not freeze the client, which could then not even be shut down.
/// The caller treats the error as a lost connection; the outbox replays on the next one.
async fn write_bounded(
    send: &mut quinn::SendStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit.max(Duration::from_secs(1)), send.write_all(bytes)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("the datacenter did not read for {limit:?}")),
    }
}

/// Wait for a running probe (never resolves without one; the caller guards on that).
async fn join_probe(
    probe: &mut Option<tokio::task::JoinHandle<Option<(usize, quinn::Connection)>>>,
) -> Option<(usize, quinn::Connection)> {
    match probe.as_mut() {
        Some(h) => h.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

fn snapshot(me: DeviceId, s: SessionId, h: &HeldSession<Trip>) -> SessionSnapshot {
    SessionSnapshot {
        session: s,
        version: h.digest.header.version.clone(),
        view: h.view.clone(),
        finished: h.digest.header.tombstone,
        committed: h.committed,
        rider: h.digest.header.rider,
        driver: h.digest.header.driver,
        role: h.digest.header.role_of(me),
        digest_bytes: h.digest.encoded_len(),
    }
}

impl Actor {
    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(TimedEvent {
            at_ms: self.cfg.clock.now_ms(),
            event,
        });
    }

    /// Give the core the time before it handles an input.
    fn tick(&mut self) {
        self.core.set_time(self.cfg.clock.now_ms());
    }

    /// The failover ended (see [`ClientEvent::FailoverFinished`]).
    fn failover_finished(&self, stall: Option<Stall<SocketAddr>>) {
        if let Some(s) = stall {
            self.emit(ClientEvent::FailoverFinished {
                dc: s.dc,
                addr: s.addr,
                stalled_ms: s.stalled_ms,
                detection_ms: s.detection_ms,
                connect_ms: s.connect_ms,
                first_answer_ms: s.first_answer_ms,
            });
        }
    }

    /// Keep the route memory in the store (no flush: a lost record only costs the old
    /// order on the next start).
    fn save_route(&self) {
        if let Err(e) = self.store.save_route(self.route.memory()) {
            tracing::debug!(error = %e, "could not remember the route");
        }
    }

    fn now_ms(&self) -> u64 {
        self.cfg.clock.now_ms()
    }

    async fn run(mut self) {
        // A connection already up (a probe of a preferred datacenter that answered).
        let mut ready: Option<(usize, quinn::Connection)> = None;
        while !self.stopped {
            let (idx, conn) = match ready.take() {
                Some(r) => r,
                None => match self.attempt().await {
                    Attempt::Connected(idx, conn) => (idx, conn),
                    Attempt::Again => continue,
                    Attempt::Stop => break,
                },
            };
            let addr = self.cfg.datacenters[idx];
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            let at_handshake = conn.stats();
            self.stats.handshake_bytes.fetch_add(
                at_handshake.udp_tx.bytes + at_handshake.udp_rx.bytes,
                Ordering::Relaxed,
            );
            let Ended {
                reason,
                welcomed,
                moved,
                silent_ms,
            } = self.serve(&conn, idx).await;
            if let Some(wait) = self.route.connection_ended(welcomed) {
                // Refused before Welcome (bad credential, replaced, overloaded): back off
                // like a failed connect instead of hammering the datacenter.
                if !self.stopped && !self.idle_for(Duration::from_millis(wait)).await {
                    break;
                }
            }
            let s = conn.stats();
            self.stats
                .bytes_up
                .fetch_add(s.udp_tx.bytes, Ordering::Relaxed);
            self.stats
                .bytes_down
                .fetch_add(s.udp_rx.bytes, Ordering::Relaxed);
            self.stats
                .mtu_probes
                .fetch_add(s.path.sent_plpmtud_probes, Ordering::Relaxed);
            let timed_out = matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut));
            let close_reason = conn.close_reason().map(|e| e.to_string());
            conn.close(0u32.into(), b"bye");
            self.stats.connected_dc.store(0, Ordering::Relaxed);
            self.core.on_disconnect();
            if self.stopped {
                break;
            }
            let now = self.now_ms();
            if let Some((to, new_conn)) = moved {
                self.emit(ClientEvent::Moved {
                    from: addr,
                    to: self.cfg.datacenters[to],
                });
                ready = Some((to, new_conn));
                self.probe_board.with(|b| self.route.moved(idx, b, now));
                continue;
            }
            let drained = self.drain_order.is_some();
            match self.drain_order.take() {
                // A planned failover: where the datacenter said, at once, and not back
                // while it drains.
                Some((to, back_after_ms)) => {
                    self.probe_board
                        .with(|b| self.route.drained(idx, to, back_after_ms, b, now));
                    self.stats.drained.fetch_add(1, Ordering::Relaxed);
                }
                None => self.probe_board.with(|b| self.route.lost(idx, b, now)),
            }
            self.save_route();
            // A standby connection to where the route goes next is the ready path.
            if let Some((j, standby)) = self.standby.take() {
                if standby.close_reason().is_none() && self.route.peek_next() == Some(j) {
                    let _ = self.probe_board.with(|b| self.route.next(b, now));
                    self.stats.standby_used.fetch_add(1, Ordering::Relaxed);
                    ready = Some((j, standby));
                } else {
                    standby.close(0u32.into(), b"standby not needed");
                }
            }
            // The transport's own reason, when it has one, says more than the stream's.
            let reason = match &close_reason {
                Some(why) if !reason.contains(why.as_str()) => format!("{reason} ({why})"),
                _ => reason,
            };
            self.emit(ClientEvent::Disconnected { addr, reason });
            self.emit(ClientEvent::FailoverStarted { from: addr });
            // A datacenter given up by the liveness watch last gave a sign of life (or was
            // last asked something) that long ago; one that went silent while idle, one idle
            // timeout before QUIC gave up; one that closed the connection was noticed at once.
            let idle_ms = match (silent_ms, timed_out) {
                (Some(silent), _) => silent,
                (None, true) => self.cfg.idle_timeout.as_millis() as u64,
                (None, false) => 0,
            };
            let waits = self.has_work();
            self.stall.lost(now, idle_ms, waits);
            // A drain paces its own waves: no spread on top.
            if ready.is_none() && !drained && !self.spread_idle_reconnect().await {
                break;
            }
        }
        self.drop_standby();
        self.stopped = true;
    }

    /// After a loss, a device nobody waits for (see `EdgeConfig::idle_reconnect_spread`)
    /// waits a random part of the spread, serving commands, and stops waiting as soon as it
    /// has work. False if the client was shut down meanwhile.
    async fn spread_idle_reconnect(&mut self) -> bool {
        let spread = self.cfg.idle_reconnect_spread.as_millis() as u64;
        if spread == 0 || self.has_work() {
            return true;
        }
        let until = Instant::now() + Duration::from_millis(self.rng.random_range(0..=spread));
        while Instant::now() < until {
            if self.has_work() {
                return true;
            }
            let slice = (until - Instant::now()).min(Duration::from_millis(100));
            if !self.idle_for(slice).await {
                return false;
            }
        }
        true
    }

    /// Whether a stall of this device would be felt: it takes part in a live session or has
    /// an op queued (a create included).
    fn has_work(&self) -> bool {
        self.core.outbox_len() > 0
            || self
                .core
                .sessions()
                .any(|(_, h)| !h.digest.header.tombstone)
    }

    fn drop_standby(&mut self) {
        if let Some((_, c)) = self.standby.take() {
            c.close(0u32.into(), b"standby not needed");
        }
    }

    /// Whether the device should hold a standby path: it takes part in a live session or
    /// has an op queued (a create included), so a failover would stall someone.
    fn wants_standby(&self) -> bool {
        self.cfg.standby && self.has_work()
    }

    /// Check the standby connection while connected to `idx`: drop it if it is not wanted,
    /// dead, or to the wrong datacenter; otherwise start opening one if there is none (the
    /// returned task gives it).
    fn tend_standby(
        &mut self,
        idx: usize,
    ) -> Option<tokio::task::JoinHandle<Option<(usize, quinn::Connection)>>> {
        let now = self.now_ms();
        let target = self
            .probe_board
            .with(|b| self.route.failover_target(idx, b, now));
        let keep = match (&self.standby, target) {
            (Some((j, c)), Some(t)) => *j == t && c.close_reason().is_none(),
            _ => false,
        };
        if !keep || !self.wants_standby() {
            self.drop_standby();
        }
        if self.standby.is_some() || !self.wants_standby() {
            return None;
        }
        let t = target?;
        let addr = self.cfg.datacenters[t];
        let window = self.route.probe_window_ms();
        if self
            .probe_board
            .with(|b| b.recently_failed(addr, now, window))
        {
            return None;
        }
        let endpoint = self.endpoint.clone();
        let client_cfg = (*self.client_cfg).clone();
        let name = self.cfg.server_name.clone();
        let timeout = self.cfg.connect_timeout;
        self.stats.standby_opened.fetch_add(1, Ordering::Relaxed);
        Some(tokio::spawn(async move {
            let connecting = endpoint.connect_with(client_cfg, addr, &name).ok()?;
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => Some((t, conn)),
                _ => None,
            }
        }))
    }

    /// One step of the route policy before a connection: connect where it says, or wait.
    async fn attempt(&mut self) -> Attempt {
        let now = self.now_ms();
        let next = self.probe_board.with(|b| self.route.next(b, now));
        let idx = match next {
            Next::Wait(ms) => {
                return match self.idle_for(Duration::from_millis(ms)).await {
                    true => Attempt::Again,
                    false => Attempt::Stop,
                };
            }
            Next::Connect(idx) => idx,
        };
        let addr = self.cfg.datacenters[idx];
        match self.connect(addr).await {
            Ok(Some(conn)) => Attempt::Connected(idx, conn),
            Ok(None) => Attempt::Stop, // shut down while connecting
            Err(ConnectFailure::Busy(reason)) => {
                // Alive but at its handshake limit (a reconnect storm): not a failure to
                // route around; the same one again after a jittered backoff.
                self.emit(ClientEvent::ConnectFailed { addr, reason });
                let wait = self.route.busy(idx);
                match self.idle_for(Duration::from_millis(wait)).await {
                    true => Attempt::Again,
                    false => Attempt::Stop,
                }
            }
            Err(ConnectFailure::Failed(reason)) => {
                let now = self.now_ms();
                self.probe_board
                    .with(|b| self.route.connect_failed(idx, b, now));
                self.save_route();
                self.emit(ClientEvent::ConnectFailed { addr, reason });
                Attempt::Again
            }
        }
    }

    /// Serve commands while waiting; false if the client was shut down.
    async fn idle_for(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            // `biased`: a fixed polling order instead of tokio's random one, so that a
            // deterministic simulation replays exactly (here and in the two selects below).
            tokio::select! {
                biased;
                _ = &mut deadline => return true,
                cmd = self.cmd_rx.recv() => {
                    if let Step::Stop = self.command(cmd, None).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Connect, serving commands meanwhile. `Ok(None)`: shut down while connecting.
    async fn connect(
        &mut self,
        addr: SocketAddr,
    ) -> Result<Option<quinn::Connection>, ConnectFailure> {
        let connecting = self
            .endpoint
            .connect_with((*self.client_cfg).clone(), addr, &self.cfg.server_name)
            .map_err(|e| ConnectFailure::Failed(e.to_string()))?;
        let attempt = tokio::time::timeout(self.cfg.connect_timeout, connecting);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                r = &mut attempt => {
                    return match r {
                        Ok(Ok(conn)) => Ok(Some(conn)),
                        Ok(Err(e)) if is_refusal(&e) => Err(ConnectFailure::Busy(e.to_string())),
                        Ok(Err(e)) => Err(ConnectFailure::Failed(e.to_string())),
                        Err(_) => Err(ConnectFailure::Failed("connect timed out".into())),
                    };
                }
                cmd = self.cmd_rx.recv() => {
                    if let Step::Stop = self.command(cmd, None).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Open the connection's stream, start its frame reader and send the `Hello` (with
    /// every held copy). The reader's frames arrive on the returned queue (bounded).
    async fn open_stream(
        &mut self,
        conn: &quinn::Connection,
    ) -> Result<(quinn::SendStream, tokio::task::JoinHandle<()>, FrameRx), String> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let (frame_tx, frame_rx) = mpsc::channel::<Result<ServerMsg<Trip>, String>>(FRAME_QUEUE);
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let r = read_frame::<ServerMsg<Trip>, _>(&mut recv, &mut buf).await;
                let item = match r {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err("datacenter closed the stream".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let stop = item.is_err();
                if frame_tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        let mut hello = Vec::new();
        for m in self.core.hello(self.cfg.token, self.available) {
            match encode_frame(&m) {
                Ok(f) => hello.extend_from_slice(&f),
                Err(e) => {
                    reader.abort();
                    return Err(format!("encoding hello: {e}"));
                }
            }
        }
        if let Err(e) = write_bounded(&mut send, &hello, self.cfg.idle_timeout).await {
            reader.abort();
            return Err(e);
        }
        Ok((send, reader, frame_rx))
    }

    /// A frame from the datacenter at `idx`: to the core; a `Welcome` also tells the route
    /// policy and the failover clock. `Ok(true)`: this frame was the `Welcome`. An error is
    /// the datacenter's own, and ends the connection.
    fn on_frame(&mut self, msg: ServerMsg<Trip>, idx: usize) -> Result<bool, String> {
        self.stall.frame_received();
        let welcome = match &msg {
            ServerMsg::Welcome { dc, .. } => Some(*dc),
            _ => None,
        };
        if let Err(error) = self.core.handle_message(self.now_ms(), msg) {
            if let ProtocolError::Draining { to, back_after_ms } = &error {
                self.drain_order = Some((*to, *back_after_ms));
            }
            return Err(format!("datacenter error: {error}"));
        }
        let Some(dc) = welcome else {
            return Ok(false);
        };
        let addr = self.cfg.datacenters[idx];
        self.stats
            .connected_dc
            .store(u64::from(dc.0), Ordering::Relaxed);
        self.route.welcomed(idx, self.now_ms());
        self.save_route();
        self.emit(ClientEvent::Connected { dc, addr });
        let waiting = self.core.outbox_len() > 0;
        if self.stall.unfelt() {
            self.stats.idle_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let stall = self.stall.welcomed(dc, addr, waiting, self.now_ms());
        self.failover_finished(stall);
        Ok(true)
    }

    /// Sample the connection for the liveness watch (and send the probe it asks for).
    /// `Err(silence)`: the datacenter is given up after that much silence, ms.
    fn check_liveness(&mut self, conn: &quinn::Connection, live: &mut Liveness) -> Result<(), u64> {
        let rx = conn.stats().udp_rx.datagrams;
        let rtt_ms = u64::try_from(conn.rtt().as_millis()).unwrap_or(u64::MAX);
        let waiting = if self.stall.awaiting_answer() {
            Waiting::Answer
        } else if self.available || self.core.sessions().next().is_some() {
            Waiting::Push
        } else {
            Waiting::Nothing
        };
        match live.observe(self.now_ms(), rx, rtt_ms, waiting) {
            Verdict::Alive => Ok(()),
            Verdict::Probe => {
                match conn.send_datagram(PROBE) {
                    Ok(()) => {
                        self.stats.liveness_probes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // No datagram support at the datacenter: the verdict then rests on
                        // the ops' own answers (see `Liveness::probe_not_sent`).
                        tracing::debug!(error = %e, "liveness probe not sent");
                        live.probe_not_sent();
                    }
                }
                Ok(())
            }
            Verdict::Dead { silent_ms } => Err(silent_ms),
        }
    }

    /// The wait until `at` (the driver's clock, ms), if there is a deadline.
    fn until(&self, at: Option<u64>) -> Option<Duration> {
        at.map(|at| Duration::from_millis(at.saturating_sub(self.now_ms())))
    }

    /// After each step of `serve`: carry out the core's effects, then sample the liveness
    /// watch. `Err((why, silence))` ends the connection (`silence`: the liveness watch gave
    /// the datacenter up after that many ms).
    async fn after_step(
        &mut self,
        step: Step,
        send: &mut quinn::SendStream,
        conn: &quinn::Connection,
        live: &mut Liveness,
        welcomed: bool,
    ) -> Result<(), (String, Option<u64>)> {
        if let Step::Stop = step {
            return Err(("client shut down".into(), None));
        }
        self.apply(Some(send)).await.map_err(|e| (e, None))?;
        if self.stopped {
            return Err(("client stopped".into(), None));
        }
        if welcomed {
            if let Err(silent) = self.check_liveness(conn, live) {
                let why = format!("datacenter silent for {silent} ms with an op in flight");
                return Err((why, Some(silent)));
            }
        }
        Ok(())
    }

    /// Run one connection until it fails or a more preferred datacenter answers a probe.
    async fn serve(&mut self, conn: &quinn::Connection, idx: usize) -> Ended {
        let (mut send, reader, mut frame_rx) = match self.open_stream(conn).await {
            Ok(opened) => opened,
            Err(e) => return Ended::before_welcome(e),
        };
        let mut live = Liveness::new(
            self.cfg.liveness(),
            self.now_ms(),
            conn.stats().udp_rx.datagrams,
        );
        let mut silent_ms = None;
        // Probing the more preferred datacenters (only when this one is not the first).
        let probing = self.route.probes_from(idx);
        let first_wait = Duration::from_millis(self.route.first_probe_wait());
        let probe_timer = tokio::time::sleep(first_wait);
        tokio::pin!(probe_timer);
        let mut probe: Option<tokio::task::JoinHandle<Option<(usize, quinn::Connection)>>> = None;
        let standby_timer = tokio::time::sleep(STANDBY_CHECK);
        tokio::pin!(standby_timer);
        let mut standby: Option<tokio::task::JoinHandle<Option<(usize, quinn::Connection)>>> = None;
        let mut moved = None;
        let welcome_deadline = tokio::time::sleep(self.cfg.connect_timeout * 2);
        tokio::pin!(welcome_deadline);
        let mut welcomed = false;
        let reason = loop {
            // The core's resend deadline (ops the datacenter could not take yet) and the
            // liveness watch's next sample.
            let resend_in = self.until(self.core.poll_timeout());
            let sample_in = self.until(live.poll_timeout());
            // Frames before commands: both come from bounded queues fed at human and
            // datacenter pace, so neither starves the other.
            let step = tokio::select! {
                biased;
                _ = &mut welcome_deadline, if !welcomed => break "no Welcome from the datacenter in time".to_string(),
                frame = frame_rx.recv() => match frame {
                    Some(Ok(msg)) => match self.on_frame(msg, idx) {
                        Ok(now_welcomed) => {
                            welcomed |= now_welcomed;
                            Step::Continue
                        }
                        Err(e) => break e,
                    },
                    Some(Err(e)) => break e,
                    None => break "connection reader ended".to_string(),
                },
                cmd = self.cmd_rx.recv() => self.command(cmd, Some(&mut send)).await,
                _ = tokio::time::sleep(resend_in.unwrap_or_default()), if welcomed && resend_in.is_some() => {
                    self.core.handle_timeout(self.now_ms());
                    Step::Continue
                }
                _ = tokio::time::sleep(sample_in.unwrap_or_default()), if welcomed && sample_in.is_some() => {
                    Step::Continue
                }
                _ = &mut probe_timer, if probing && welcomed && probe.is_none() => {
                    probe = Some(self.spawn_probe(idx));
                    Step::Continue
                }
                _ = &mut standby_timer, if welcomed && self.cfg.standby && standby.is_none() => {
                    standby_timer.as_mut().reset(Instant::now() + STANDBY_CHECK);
                    standby = self.tend_standby(idx);
                    Step::Continue
                }
                r = join_probe(&mut standby), if standby.is_some() => {
                    standby = None;
                    if let Some((j, c)) = r {
                        if self.wants_standby() {
                            self.standby = Some((j, c));
                        } else {
                            c.close(0u32.into(), b"standby not needed");
                        }
                    }
                    Step::Continue
                }
                r = join_probe(&mut probe), if probe.is_some() => {
                    probe = None;
                    match r {
                        Some(found) => {
                            moved = Some(found);
                            break "a more preferred datacenter is back".to_string();
                        }
                        None => {
                            let wait = Duration::from_millis(self.route.probe_found_none());
                            probe_timer.as_mut().reset(Instant::now() + wait);
                            Step::Continue
                        }
                    }
                }
            };
            let after = self.after_step(step, &mut send, conn, &mut live, welcomed);
            if let Err((why, silence)) = after.await {
                silent_ms = silence;
                break why;
            }
        };
        reader.abort();
        if let Some(p) = probe {
            p.abort();
        }
        if let Some(t) = standby {
            t.abort();
        }
        Ended {
            reason,
            welcomed,
            moved,
            silent_ms,
        }
    }

    /// Try the datacenters more preferred than `idx`, most preferred first; the first
    /// handshake that completes wins.
    fn spawn_probe(
        &self,
        idx: usize,
    ) -> tokio::task::JoinHandle<Option<(usize, quinn::Connection)>> {
        let endpoint = self.endpoint.clone();
        let client_cfg = self.probe_cfg.clone();
        let name = self.cfg.server_name.clone();
        let targets = self.route.probe_targets(idx);
        let timeout = self.cfg.connect_timeout;
        let board = self.probe_board.clone();
        let window = self.route.probe_window_ms();
        let clock = self.cfg.clock.clone();
        tokio::spawn(async move {
            for (j, addr) in targets {
                if board.with(|b| b.recently_failed(addr, clock.now_ms(), window)) {
                    continue;
                }
                // Pessimistic until it answers: the other clients sharing the board skip it
                // meanwhile instead of all probing at once.
                board.with(|b| b.record(addr, false, clock.now_ms()));
                let Ok(connecting) = endpoint.connect_with(client_cfg.clone(), addr, &name) else {
                    continue;
                };
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(conn)) => {
                        board.with(|b| b.record(addr, true, clock.now_ms()));
                        return Some((j, conn));
                    }
                    _ => board.with(|b| b.record(addr, false, clock.now_ms())),
                }
            }
            None
        })
    }

    async fn command(
        &mut self,
        cmd: Option<Command>,
        send: Option<&mut quinn::SendStream>,
    ) -> Step {
        let Some(cmd) = cmd else {
            // Every handle is gone: nobody can hear from us any more.
            self.stopped = true;
            return Step::Stop;
        };
        self.tick();
        match cmd {
            Command::Submit {
                session,
                op,
                accepted,
                done,
            } => match self.core.submit(session, op) {
                Ok(id) => {
                    self.stall.work_queued(self.cfg.clock.now_ms());
                    if let Some(done) = done {
                        self.waiters.insert(id, done);
                    }
                    // The op must be on disk before it is acknowledged or sent.
                    if let Err(e) = self.apply(send).await {
                        tracing::debug!(error = %e, "send failed after submit; will replay");
                    }
                    let _ = accepted.send(if self.stopped {
                        Err(EdgeError::Closed)
                    } else {
                        Ok(id)
                    });
                }
                Err(e) => {
                    let _ = accepted.send(Err(EdgeError::Refused(e)));
                }
            },
            Command::OpStatus(id, reply) => {
                let _ = reply.send(self.core.op_status(id));
            }
            Command::OpProgress(id, reply) => {
                let _ = reply.send(self.core.op_progress(id));
            }
            Command::QueuedOps(reply) => {
                let _ = reply.send(self.core.queued_ops());
            }
            Command::Outcomes(reply) => {
                let _ = reply.send(self.core.outcomes());
            }
            Command::Acknowledge(ids, reply) => {
                let n = ids.iter().filter(|id| self.core.acknowledge(**id)).count();
                let _ = reply.send(n);
                if let Err(e) = self.apply(None).await {
                    tracing::debug!(error = %e, "after an acknowledgement");
                }
            }
            Command::SetAvailable(a) => {
                self.available = a;
                if self.core.connected_to().is_some() {
                    if let Some(send) = send {
                        if let Ok(f) =
                            encode_frame(&ClientMsg::<Trip>::SetAvailable { available: a })
                        {
                            let _ = write_bounded(send, &f, self.cfg.idle_timeout).await;
                        }
                    }
                }
            }
            Command::Sessions(reply) => {
                let me = self.cfg.device;
                let list = self
                    .core
                    .sessions()
                    .map(|(s, h)| snapshot(me, *s, h))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Shutdown(reply) => {
                self.stopped = true;
                let _ = reply.send(());
                return Step::Stop;
            }
        }
        Step::Continue
    }

    /// Carry out the core's effects in order. Errors: a send failure (connection lost) is
    /// returned; a store failure stops the client.
    async fn apply(&mut self, send: Option<&mut quinn::SendStream>) -> Result<(), String> {
        let fx: EdgeEffects<Trip> = self.core.poll_effects();
        if !fx.writes.is_empty() || fx.flush {
            let r = match self.store.apply(&fx.writes) {
                Ok(()) if fx.flush => self.store.flush().await,
                other => other,
            };
            if let Err(e) = r {
                // C1: never report an op committed that is not on disk. Stop instead.
                tracing::error!(device = %self.cfg.device, error = %e, "device store failed; stopping the client");
                self.emit(ClientEvent::StoreFailed(e.to_string()));
                self.stopped = true;
                self.waiters.clear();
                return Err(format!("store failed: {e}"));
            }
        }
        let mut out = Vec::new();
        for m in &fx.send {
            if let Ok(f) = encode_frame(m) {
                out.extend_from_slice(&f);
            }
            if matches!(m, ClientMsg::Submit { .. } | ClientMsg::Resubmit { .. }) {
                self.stall.op_sent(self.cfg.clock.now_ms());
            }
        }
        // Shadow restore: what the store holds, read back after the flush above.
        for session in fx.samples {
            let copy = match self.store.held(session) {
                Ok(h) => h.as_ref().map(EdgeCore::<Trip>::offered),
                Err(e) => {
                    tracing::error!(device = %self.cfg.device, error = %e, "device store failed; stopping the client");
                    self.emit(ClientEvent::StoreFailed(e.to_string()));
                    self.stopped = true;
                    self.waiters.clear();
                    return Err(format!("store failed: {e}"));
                }
            };
            if let Ok(f) = encode_frame(&ClientMsg::<Trip>::Sampled { session, copy }) {
                out.extend_from_slice(&f);
            }
        }
        let answered = !fx.resolved.is_empty();
        for (id, result) in fx.resolved {
            if result.is_ok() {
                self.stats.ops_committed.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.send(result.clone());
            }
            self.emit(ClientEvent::OpResolved { op: id, result });
        }
        for e in fx.events {
            self.emit(ClientEvent::Session(e));
        }
        if answered {
            let stall = self.stall.answered(self.now_ms());
            self.failover_finished(stall);
        }
        if !out.is_empty() {
            if let Some(send) = send {
                write_bounded(send, &out, self.cfg.idle_timeout).await?;
            }
        }
        Ok(())
    }
}
