//! The datacenter's connection-level limits (C6): what they are, their defaults, the
//! counters the status JSON reports, and the small guards the connection tasks use.
//!
//! Every limit here is configurable (a `lifeboat-server serve` flag), has a default sized for
//! a phone fleet, gives the peer a typed [`LimitExceeded`] where a stream exists to carry it
//! (a QUIC-level refusal where none does yet), and counts one event under its
//! [`LimitKind`]. Limits of the replication core (sessions per device, create rate, session
//! count) live in [`lifeboat_common::datacenter::DcConfig`]; their counters are merged into
//! the same map by [`LimitCounters::snapshot`].
//!
//! Memory per connection is bounded by: the QUIC stream receive window
//! ([`Limits::stream_window_bytes`]), the frame buffer (at most [`Limits::max_frame_bytes`],
//! grown only as bytes arrive), the QUIC send window ([`Limits::send_window_bytes`]) and the
//! output queue (`conn_queue` messages).

use lifeboat_common::codec::MAX_FRAME_BYTES;
use lifeboat_common::datacenter::DcStats;
use lifeboat_common::limits::{LimitExceeded, LimitKind};
use lifeboat_frame_io::FrameLimits;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connection-level limits (see the module docs and `SECURITY.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted from a device, in bytes (at most the protocol's 64 KiB).
    pub max_frame_bytes: usize,
    /// A frame whose first byte arrived must be complete within this (ms); slow senders
    /// are cut off.
    pub frame_timeout_ms: u64,
    /// Most simultaneous connections from one IP address; 0: unlimited.
    pub max_conns_per_addr: usize,
    /// Apply `max_conns_per_addr` to loopback addresses too (off by default: local tools and
    /// load tests connect from 127.0.0.1 by the thousand).
    pub limit_loopback: bool,
    /// Most ops submitted and not yet answered on one connection; further ops are answered
    /// with a retryable `InFlightOps` rejection. A guard: with the core on the connection's
    /// reader (`service::gate`) an op is answered before the next frame is read, so today
    /// it is never reached.
    pub max_inflight_ops: usize,
    /// QUIC receive window of the device's stream (bytes): what a device can make the
    /// datacenter buffer before it reads.
    pub stream_window_bytes: u32,
    /// QUIC send buffer per connection (bytes): what a device that does not read can make
    /// the datacenter hold.
    pub send_window_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: MAX_FRAME_BYTES,
            frame_timeout_ms: 5_000,
            max_conns_per_addr: 1_024,
            limit_loopback: false,
            max_inflight_ops: 1_024,
            stream_window_bytes: 256 * 1024,
            send_window_bytes: 1024 * 1024,
        }
    }
}

impl Limits {
    /// How a connection reads frames.
    pub fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_bytes: self.max_frame_bytes.clamp(1, MAX_FRAME_BYTES),
            frame_timeout: Some(Duration::from_millis(self.frame_timeout_ms.max(1))),
        }
    }

    /// Apply the QUIC-level bounds to a transport configuration.
    pub fn apply_transport(&self, t: &mut quinn::TransportConfig) {
        let stream = quinn::VarInt::from_u32(self.stream_window_bytes.max(2 * 64 * 1024));
        t.stream_receive_window(stream)
            // One stream per connection: the connection window need not be larger.
            .receive_window(stream)
            .send_window(self.send_window_bytes.max(64 * 1024));
    }

    /// The typed error for a limit, with its configured maximum.
    pub fn exceeded(&self, kind: LimitKind) -> LimitExceeded {
        let max = match kind {
            LimitKind::FrameBytes => self.max_frame_bytes as u64,
            LimitKind::FrameTimeout => self.frame_timeout_ms,
            LimitKind::ConnectionsPerAddress => self.max_conns_per_addr as u64,
            LimitKind::InFlightOps => self.max_inflight_ops as u64,
            _ => 0,
        };
        LimitExceeded { kind, max }
    }
}

/// How often each limit was hit (one counter per [`LimitKind`]).
#[derive(Default)]
pub struct LimitCounters {
    hits: [AtomicU64; LimitKind::ALL.len()],
}

impl LimitCounters {
    /// Count one hit of `kind`.
    pub fn hit(&self, kind: LimitKind) {
        if let Some(i) = LimitKind::ALL.iter().position(|k| *k == kind) {
            self.hits[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hits of `kind` counted here (the core's own limit counters not included).
    pub fn get(&self, kind: LimitKind) -> u64 {
        LimitKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.hits[i].load(Ordering::Relaxed))
    }

    /// Every limit by name, the core's counters included (for the status JSON).
    pub fn snapshot(&self, core: &DcStats) -> BTreeMap<&'static str, u64> {
        LimitKind::ALL
            .iter()
            .map(|k| {
                let core_hits = match k {
                    LimitKind::SessionsPerDevice => core.limited_sessions_per_device,
                    LimitKind::SessionCreateRate => core.limited_create_rate,
                    LimitKind::Sessions => core.limited_sessions,
                    _ => 0,
                };
                (k.name(), self.get(*k) + core_hits)
            })
            .collect()
    }
}

/// Connections per source IP address.
#[derive(Default)]
pub struct AddressLimiter {
    max: usize,
    limit_loopback: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection slot of an address; gives it back when dropped.
pub struct AddressSlot {
    limiter: Arc<AddressLimiter>,
    ip: Option<IpAddr>,
}

impl AddressLimiter {
    /// A limiter for `limits.max_conns_per_addr` (0: unlimited) and `limits.limit_loopback`.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max: limits.max_conns_per_addr,
            limit_loopback: limits.limit_loopback,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn applies_to(&self, ip: IpAddr) -> bool {
        self.max > 0 && (self.limit_loopback || !ip.is_loopback())
    }

    /// Whether the address holds at least half its slots (the accept loop then asks an
    /// unvalidated address to prove it owns it, with a QUIC retry, before giving it one).
    pub fn is_busy(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        if !self.applies_to(ip) {
            return false;
        }
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).is_some_and(|n| *n >= self.max.div_ceil(2))
    }

    /// Take a slot for a new connection from `addr`, or `None` if the address is at its limit.
    pub fn try_acquire(self: &Arc<Self>, addr: SocketAddr) -> Option<AddressSlot> {
        let ip = addr.ip();
        if !self.applies_to(ip) {
            return Some(AddressSlot {
                limiter: self.clone(),
                ip: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            limiter: self.clone(),
            ip: Some(ip),
        })
    }

    /// Open connections counted for `ip`.
    pub fn open_for(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// Ops submitted on one connection and not answered yet.
pub struct InflightGate {
    max: usize,
    n: AtomicUsize,
}

impl InflightGate {
    /// A gate admitting at most `max` unanswered ops (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            n: AtomicUsize::new(0),
        })
    }

    /// Count one more submitted op; false if that puts the connection over its limit (the
    /// op is still counted: its rejection is an answer too).
    pub fn submit(&self) -> bool {
        self.n.fetch_add(1, Ordering::Relaxed) < self.max
    }

    /// One op was answered. Saturates at zero: answers to ops of an earlier connection of
    /// the same device may arrive on this one.
    pub fn answered(&self) {
        let _ = self
            .n
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Ops counted as submitted and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.n.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_slots_are_bounded_and_given_back() {
        let limits = Limits {
            max_conns_per_addr: 2,
            ..Limits::default()
        };
        let l = AddressLimiter::new(&limits);
        let a = l.try_acquire(addr("10.0.0.1:1000")).unwrap();
        let _b = l.try_acquire(addr("10.0.0.1:1001")).unwrap();
        assert!(l.is_busy(addr("10.0.0.1:1")));
        assert!(l.try_acquire(addr("10.0.0.1:1002")).is_none());
        // Another address is not affected.
        assert!(l.try_acquire(addr("10.0.0.2:1000")).is_some());
        drop(a);
        assert!(l.try_acquire(addr("10.0.0.1:1003")).is_some());
    }

    #[test]
    fn loopback_is_exempt_unless_asked() {
        let mut limits = Limits {
            max_conns_per_addr: 1,
            ..Limits::default()
        };
        let l = AddressLimiter::new(&limits);
        let _a = l.try_acquire(addr("127.0.0.1:1")).unwrap();
        assert!(l.try_acquire(addr("127.0.0.1:2")).is_some());
        limits.limit_loopback = true;
        let l = AddressLimiter::new(&limits);
        let _a = l.try_acquire(addr("127.0.0.1:1")).unwrap();
        assert!(l.try_acquire(addr("127.0.0.1:2")).is_none());
        assert_eq!(l.open_for(addr("127.0.0.1:1").ip()), 1);
    }

    #[test]
    fn inflight_gate_admits_up_to_its_limit_and_never_underflows() {
        let g = InflightGate::new(2);
        assert!(g.submit());
        assert!(g.submit());
        assert!(!g.submit());
        for _ in 0..5 {
            g.answered();
        }
        assert_eq!(g.in_flight(), 0);
        assert!(g.submit());
    }

    #[test]
    fn counters_merge_the_core_limits() {
        let c = LimitCounters::default();
        c.hit(LimitKind::FrameTimeout);
        c.hit(LimitKind::FrameTimeout);
        let core = DcStats {
            limited_create_rate: 3,
            ..DcStats::default()
        };
        let snap = c.snapshot(&core);
        assert_eq!(snap["frame_timeout"], 2);
        assert_eq!(snap["session_create_rate"], 3);
        assert_eq!(snap.len(), LimitKind::ALL.len());
    }
}
