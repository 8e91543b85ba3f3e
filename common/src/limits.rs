//! The names of the limits a datacenter enforces (C6), shared by the wire errors a peer
//! receives and the counters a datacenter reports.
//!
//! Every limit has one [`LimitKind`]. When a peer hits one, it gets a typed
//! [`LimitExceeded`] (in a [`crate::wire::ProtocolError::Limit`] before the connection
//! closes, or as a typed op rejection when the connection stays open), and the datacenter
//! counts the event under the same kind. Which limits exist and their defaults are listed in
//! `SECURITY.md`.

use serde::{Deserialize, Serialize};

/// One of the limits a datacenter enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LimitKind {
    /// A frame's length prefix is over the datacenter's maximum frame size.
    FrameBytes,
    /// More digests in the connect upload (`Hello` plus `Upload` frames) than allowed.
    DigestsPerConnect,
    /// More upload frames after `Hello` than allowed.
    UploadFrames,
    /// More digests in one frame than allowed.
    DigestsPerFrame,
    /// The QUIC handshake, the stream open and the connect upload took too long.
    HandshakeTimeout,
    /// A frame was started but not finished in time (a slow sender, slowloris).
    FrameTimeout,
    /// The connection was silent for longer than the idle timeout.
    IdleTimeout,
    /// More simultaneous connections from one source address than allowed.
    ConnectionsPerAddress,
    /// More simultaneous connections in total than allowed.
    Connections,
    /// More ops submitted and not yet answered on one connection than allowed.
    InFlightOps,
    /// A device took part in more active sessions than allowed when creating another.
    SessionsPerDevice,
    /// A device created sessions faster than allowed.
    SessionCreateRate,
    /// The datacenter holds as many sessions as it may.
    Sessions,
    /// As many QUIC handshakes in progress as the datacenter serves at once: the connection
    /// is refused at once (cheaply, before any crypto) and the device retries after a
    /// jittered backoff, instead of every handshake timing out in a reconnect storm.
    Handshakes,
}

impl LimitKind {
    /// Every kind, in a stable order (for counters and docs).
    pub const ALL: [LimitKind; 14] = [
        LimitKind::FrameBytes,
        LimitKind::DigestsPerConnect,
        LimitKind::UploadFrames,
        LimitKind::DigestsPerFrame,
        LimitKind::HandshakeTimeout,
        LimitKind::FrameTimeout,
        LimitKind::IdleTimeout,
        LimitKind::ConnectionsPerAddress,
        LimitKind::Connections,
        LimitKind::InFlightOps,
        LimitKind::SessionsPerDevice,
        LimitKind::SessionCreateRate,
        LimitKind::Sessions,
        LimitKind::Handshakes,
    ];

    /// A short snake_case name, used as the counter name in the status JSON.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::FrameBytes => "frame_bytes",
            LimitKind::DigestsPerConnect => "digests_per_connect",
            LimitKind::UploadFrames => "upload_frames",
            LimitKind::DigestsPerFrame => "digests_per_frame",
            LimitKind::HandshakeTimeout => "handshake_timeout",
            LimitKind::FrameTimeout => "frame_timeout",
            LimitKind::IdleTimeout => "idle_timeout",
            LimitKind::ConnectionsPerAddress => "connections_per_address",
            LimitKind::Connections => "connections",
            LimitKind::InFlightOps => "in_flight_ops",
            LimitKind::SessionsPerDevice => "sessions_per_device",
            LimitKind::SessionCreateRate => "session_create_rate",
            LimitKind::Sessions => "sessions",
            LimitKind::Handshakes => "handshakes",
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit a peer ran into, with the configured maximum (a count, bytes or milliseconds,
/// as the kind says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind} limit of {max} exceeded")]
pub struct LimitExceeded {
    /// Which limit.
    pub kind: LimitKind,
    /// Its configured maximum, in the kind's unit.
    pub max: u64,
}

impl LimitExceeded {
    /// The limit `kind` at `max`; a `max` that does not fit a `u64` is reported as `u64::MAX`.
    pub fn new(kind: LimitKind, max: impl TryInto<u64>) -> Self {
        Self {
            kind,
            max: max.try_into().unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_kind_has_a_distinct_counter_name() {
        let names: std::collections::HashSet<_> = LimitKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), LimitKind::ALL.len());
    }

    #[test]
    fn limit_error_names_the_limit_and_its_maximum() {
        let e = LimitExceeded::new(LimitKind::InFlightOps, 32usize);
        assert_eq!(e.to_string(), "in_flight_ops limit of 32 exceeded");
    }
}
