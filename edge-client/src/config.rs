//! Edge client configuration.

use crate::store::StoreLocation;
use lifeboat_common::clock::Clock;
use lifeboat_common::edge::EdgeLimits;
use lifeboat_common::keyring::DeviceToken;
use lifeboat_common::route::LivenessConfig;
use lifeboat_common::DeviceId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything an embedded client needs.
#[derive(Clone)]
pub struct EdgeConfig {
    /// This device's id; `token` must be its credential.
    pub device: DeviceId,
    /// The credential issued for this device (`lifeboat-server credential`).
    pub token: DeviceToken,
    /// Datacenters in order of preference: the first is the primary.
    pub datacenters: Vec<SocketAddr>,
    /// TLS name the datacenters' certificate carries.
    pub server_name: String,
    /// The region CA (PEM) the device trusts.
    pub ca_pem: Vec<u8>,
    /// Where the device store lives.
    pub store: StoreLocation,
    /// QUIC keep-alive of an idle connection. Only an idle device depends on it: one with
    /// an op in flight detects a dead datacenter from that work (`detect_floor`), so it can
    /// be sparse and let the phone's radio sleep.
    pub keep_alive: Duration,
    /// An idle connection silent this long is considered dead (must exceed `keep_alive`;
    /// the datacenter's own idle timeout also bounds it: QUIC takes the lower of the two).
    pub idle_timeout: Duration,
    /// With an op sent and unanswered, a datacenter from which nothing at all arrives (not
    /// even the acknowledgement of a probe) for the larger of this and
    /// `detect_rtt_multiple` round trips is given up (`lifeboat_common::route::Liveness`).
    pub detect_floor: Duration,
    /// See `detect_floor`.
    pub detect_rtt_multiple: u32,
    /// A device in a session (or offering itself for dispatch) with nothing in flight that
    /// has heard nothing for this long sends one probe, and gives the datacenter up if that
    /// is not acknowledged within `detect_floor`: so a rider whose datacenter died notices
    /// while its pushes are missing, not after the idle timeout. Pushes that flow cost no
    /// probe.
    pub session_probe: Duration,
    /// Give up on one connection attempt after this long.
    pub connect_timeout: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    /// The backoff doubles up to this (see `backoff_min`).
    pub backoff_max: Duration,
    /// How often ops the datacenter could not take yet are retried.
    pub retry_interval: Duration,
    /// A driver offering itself for dispatch.
    pub available: bool,
    /// Bounds of the edge core (outbox, sessions, retries, tombstones, outcomes).
    pub limits: EdgeLimits,
    /// Share one QUIC endpoint (UDP socket) between many clients of one process.
    pub endpoint: Option<quinn::Endpoint>,
    /// Share one prepared QUIC client configuration between many clients.
    pub client_config: Option<Arc<quinn::ClientConfig>>,
    /// Capacity of the event broadcast (allocated up front). A subscriber that falls further
    /// behind loses the oldest events and is told so (`RecvError::Lagged`); the state itself
    /// is always available from `sessions()`.
    pub event_queue: usize,
    /// While connected to any datacenter but the first of `datacenters`, try the more
    /// preferred ones this often and move back when one answers (`None`: stay). This is what
    /// brings the two participants of a session back to the same datacenter after a
    /// failback or a split, where the ops that wait for the session's anchor commit (S9,
    /// S13; docs/PROTOCOL.md). Failed probes back off
    /// exponentially up to [`EdgeConfig::HOME_PROBE_MAX`].
    pub home_probe: Option<Duration>,
    /// While the device takes part in a live session (or has an op queued), hold a standby
    /// connection to the datacenter it would fail over to: a QUIC connection, handshake done,
    /// that says nothing until it is needed (kept up by the keep-alive). A failover then skips
    /// the handshake and the reconnect storm's queue: one `Hello` on a ready path. Dropped
    /// when the device has no live session. Costs a connection at that datacenter and its
    /// keep-alives (see BENCHMARKS.md).
    pub standby: bool,
    /// A device with no live session and nothing queued (nobody waits for it) that lost its
    /// datacenter waits a random time up to this before it reconnects, so that in a
    /// whole-datacenter failover the idle devices' handshakes do not queue in front of the
    /// devices that have work in flight. An op submitted meanwhile ends the wait at once.
    /// Zero: reconnect at once.
    pub idle_reconnect_spread: Duration,
    /// Share what probes learned between many clients in one process (a simulation); each
    /// client has its own when `None`.
    pub probe_board: Option<Arc<crate::probe_board::ProbeBoard>>,
    /// Finished sessions' tombstones older than this are deleted from the device store when
    /// the client starts (`None`: kept until the count bound, `limits.max_tombstones`).
    pub tombstone_ttl: Option<Duration>,
    /// Wall-clock time for tombstone ages: the system clock, unless a deterministic
    /// simulation gives its simulated one.
    pub clock: Clock,
    /// Seed of the client's jitter (reconnect backoff, probe timing); `None`: from the OS.
    /// A deterministic simulation fixes it so that a seed replays exactly.
    pub rng_seed: Option<u64>,
    /// Flush the device store on the client's own thread instead of tokio's blocking pool:
    /// for a deterministic simulation only (it blocks the runtime thread for each flush).
    pub inline_flush: bool,
}

impl EdgeConfig {
    /// Longest wait between two probes of a preferred datacenter that keeps not answering.
    /// Kept short: while two partners are on different datacenters, the ops that wait for
    /// the session's anchor wait until they meet again (docs/PROTOCOL.md).
    pub const HOME_PROBE_MAX: Duration = Duration::from_secs(4);

    /// The liveness watch's settings (`detect_floor`, `detect_rtt_multiple`).
    pub fn liveness(&self) -> LivenessConfig {
        LivenessConfig {
            floor_ms: u64::try_from(self.detect_floor.as_millis()).unwrap_or(u64::MAX),
            rtt_multiple: self.detect_rtt_multiple,
            push_probe_ms: u64::try_from(self.session_probe.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Defaults: a datacenter that stops answering an op in flight is given up after 1 s (or
    /// 8 round trips on a slow path), one whose pushes stopped after a probe at 5 s goes
    /// unanswered for 1 s; an idle connection sends a keep-alive every 15 s and is
    /// given up after 45 s of silence; connect timeout 2 s, backoff 100 ms to 2 s, probe of a
    /// preferred datacenter every 2 s while away from it, tombstones kept 7 days.
    pub fn new(
        device: DeviceId,
        token: DeviceToken,
        datacenters: Vec<SocketAddr>,
        ca_pem: Vec<u8>,
        store: StoreLocation,
    ) -> Self {
        Self {
            device,
            token,
            datacenters,
            server_name: "localhost".into(),
            ca_pem,
            store,
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            detect_floor: Duration::from_millis(LivenessConfig::default().floor_ms),
            detect_rtt_multiple: LivenessConfig::default().rtt_multiple,
            session_probe: Duration::from_millis(LivenessConfig::default().push_probe_ms),
            connect_timeout: Duration::from_millis(2_000),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(2_000),
            retry_interval: Duration::from_millis(250),
            available: false,
            limits: EdgeLimits::default(),
            endpoint: None,
            client_config: None,
            event_queue: 64,
            home_probe: Some(Duration::from_millis(2_000)),
            standby: true,
            idle_reconnect_spread: Duration::from_secs(10),
            probe_board: None,
            tombstone_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            clock: Clock::system(),
            rng_seed: None,
            inline_flush: false,
        }
    }
}
