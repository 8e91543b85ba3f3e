//! Settings of an embedded client, validated into a [`lifeboat_edge::EdgeConfig`].
//!
//! Every field is checked here so that a bad value is a clear `Config`/`InvalidArgument`
//! error at start-up, never a panic or a hang later.

use crate::error::LifeboatError;
use lifeboat_common::DeviceId;
use lifeboat_edge::{EdgeConfig, StoreLocation};
use std::net::SocketAddr;
use std::time::Duration;

/// Most datacenters a device may list.
pub const MAX_DATACENTERS: usize = 16;
/// Largest CA file read (a PEM bundle of a few certificates is a few KiB).
pub const MAX_CA_BYTES: u64 = 1024 * 1024;
/// Largest event queue.
pub const MAX_EVENT_QUEUE: u32 = 65_536;
/// Longest keep-alive interval, idle timeout or connect timeout (1 hour).
pub const MAX_TIMING_MS: u64 = 3_600_000;

/// What an embedded client needs. Start from [`default_settings`] and change fields.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Settings {
    /// This device's id.
    pub device: u64,
    /// The device credential, 64 hex digits (`lifeboat-server credential --device N`).
    pub token_hex: String,
    /// Datacenters in order of preference (`host:port`, IP literals), the primary first.
    pub datacenters: Vec<String>,
    /// The region CA certificate (PEM file).
    pub ca_pem_path: String,
    /// Directory of the device store (created if missing). Keep it across app restarts.
    pub store_path: String,
    /// TLS name on the datacenters' certificate.
    pub server_name: String,
    /// A driver offering itself for dispatch.
    pub available: bool,
    /// QUIC keep-alive interval of an idle connection. A device with an op in flight, in a
    /// trip or offering itself for dispatch detects a dead datacenter from that instead
    /// (about 1 s with an op in flight; the edge client's `detect_floor`), so this can be
    /// sparse and let the radio sleep.
    pub keep_alive_ms: u64,
    /// An idle connection silent this long is considered dead (must exceed
    /// `keep_alive_ms`).
    pub idle_timeout_ms: u64,
    /// Give up one connection attempt after this long.
    pub connect_timeout_ms: u64,
    /// Events buffered for `poll_event`; when full the oldest are dropped and an
    /// `EventsDropped` event says how many.
    pub event_queue: u32,
    /// Finished trips (tombstones) kept on the device at most; the oldest beyond are dropped.
    pub max_tombstones: u32,
    /// Tombstones older than this are dropped when the client starts or resumes (0: never).
    pub tombstone_ttl_s: u64,
    /// Op outcomes kept until the app acknowledges them (`acknowledge`); beyond it the
    /// oldest is dropped. At least 1.
    pub max_outcomes: u32,
}

/// Settings with the defaults: keep-alive 15 s and idle timeout 45 s (for an idle device;
/// one with work in flight detects within about 1 s), connect timeout 2 s,
/// 256 events, 64 tombstones kept at most for 7 days, 1,024 unacknowledged op outcomes.
#[uniffi::export]
pub fn default_settings(
    device: u64,
    token_hex: String,
    datacenters: Vec<String>,
    ca_pem_path: String,
    store_path: String,
) -> Settings {
    Settings {
        device,
        token_hex,
        datacenters,
        ca_pem_path,
        store_path,
        server_name: "localhost".into(),
        available: false,
        keep_alive_ms: 15_000,
        idle_timeout_ms: 45_000,
        connect_timeout_ms: 2_000,
        event_queue: 256,
        max_tombstones: 64,
        tombstone_ttl_s: 7 * 24 * 3600,
        max_outcomes: 1024,
    }
}

fn parse_token(hex: &str) -> Result<[u8; 32], LifeboatError> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(LifeboatError::config(format!(
            "device credential must be 64 hex digits, got {} characters",
            hex.len()
        )));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| {
            LifeboatError::config("device credential must be 64 hex digits".to_string())
        })?;
    }
    Ok(out)
}

fn timing(name: &str, ms: u64) -> Result<Duration, LifeboatError> {
    if ms == 0 || ms > MAX_TIMING_MS {
        return Err(LifeboatError::config(format!(
            "{name} must be 1..={MAX_TIMING_MS} ms, got {ms}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

impl Settings {
    /// Check every field and build the edge client's configuration (no endpoint yet).
    pub fn to_edge_config(&self) -> Result<EdgeConfig, LifeboatError> {
        if self.datacenters.is_empty() || self.datacenters.len() > MAX_DATACENTERS {
            return Err(LifeboatError::config(format!(
                "list 1..={MAX_DATACENTERS} datacenters, got {}",
                self.datacenters.len()
            )));
        }
        let mut dcs = Vec::with_capacity(self.datacenters.len());
        for d in &self.datacenters {
            let addr: SocketAddr = d.trim().parse().map_err(|e| {
                LifeboatError::config(format!("datacenter address {d:?}: {e} (use ip:port)"))
            })?;
            dcs.push(addr);
        }
        let token = parse_token(&self.token_hex)?;
        let meta = std::fs::metadata(&self.ca_pem_path)
            .map_err(|e| LifeboatError::config(format!("CA file {}: {e}", self.ca_pem_path)))?;
        if meta.len() > MAX_CA_BYTES {
            return Err(LifeboatError::config(format!(
                "CA file {} is {} bytes, over {MAX_CA_BYTES}",
                self.ca_pem_path,
                meta.len()
            )));
        }
        let ca_pem = std::fs::read(&self.ca_pem_path)
            .map_err(|e| LifeboatError::config(format!("CA file {}: {e}", self.ca_pem_path)))?;
        if self.store_path.trim().is_empty() {
            return Err(LifeboatError::config("store path is empty"));
        }
        let keep_alive = timing("keep_alive_ms", self.keep_alive_ms)?;
        let idle_timeout = timing("idle_timeout_ms", self.idle_timeout_ms)?;
        let connect_timeout = timing("connect_timeout_ms", self.connect_timeout_ms)?;
        if keep_alive >= idle_timeout {
            return Err(LifeboatError::config(format!(
                "keep_alive_ms ({}) must be below idle_timeout_ms ({})",
                self.keep_alive_ms, self.idle_timeout_ms
            )));
        }
        if self.event_queue == 0 || self.event_queue > MAX_EVENT_QUEUE {
            return Err(LifeboatError::config(format!(
                "event_queue must be 1..={MAX_EVENT_QUEUE}, got {}",
                self.event_queue
            )));
        }
        if self.server_name.is_empty() {
            return Err(LifeboatError::config("server_name is empty"));
        }
        let mut cfg = EdgeConfig::new(
            DeviceId(self.device),
            token,
            dcs,
            ca_pem,
            StoreLocation::Path(self.store_path.clone().into()),
        );
        cfg.server_name = self.server_name.clone();
        cfg.available = self.available;
        cfg.keep_alive = keep_alive;
        cfg.idle_timeout = idle_timeout;
        cfg.connect_timeout = connect_timeout;
        // The edge client's own broadcast only needs to cover the forwarder's scheduling gap.
        cfg.event_queue = (self.event_queue as usize).min(256);
        cfg.limits.max_tombstones = self.max_tombstones as usize;
        if self.max_outcomes == 0 {
            return Err(LifeboatError::config("max_outcomes must be at least 1"));
        }
        cfg.limits.max_outcomes = self.max_outcomes as usize;
        cfg.tombstone_ttl = match self.tombstone_ttl_s {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(dir: &std::path::Path) -> Settings {
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"not checked here").expect("write");
        default_settings(
            7,
            "ab".repeat(32),
            vec!["127.0.0.1:4433".into()],
            ca.display().to_string(),
            dir.join("store").display().to_string(),
        )
    }

    #[test]
    fn defaults_are_valid_and_carry_the_mobile_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = valid(dir.path());
        s.keep_alive_ms = 5_000;
        s.idle_timeout_ms = 20_000;
        s.max_tombstones = 3;
        s.tombstone_ttl_s = 60;
        s.max_outcomes = 7;
        let cfg = s.to_edge_config().expect("valid");
        assert_eq!(cfg.limits.max_outcomes, 7);
        assert_eq!(cfg.token, [0xab; 32]);
        assert_eq!(cfg.keep_alive, Duration::from_secs(5));
        assert_eq!(cfg.idle_timeout, Duration::from_secs(20));
        assert_eq!(cfg.limits.max_tombstones, 3);
        assert_eq!(cfg.tombstone_ttl, Some(Duration::from_secs(60)));
        s.max_outcomes = 0;
        assert!(
            s.to_edge_config().is_err(),
            "no room for outcomes is refused"
        );
    }

    #[test]
    fn bad_settings_are_clear_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        type Change = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("no datacenters", Box::new(|s| s.datacenters.clear())),
            (
                "bad address",
                Box::new(|s| s.datacenters = vec!["localhost".into()]),
            ),
            ("short token", Box::new(|s| s.token_hex = "abcd".into())),
            ("non-hex token", Box::new(|s| s.token_hex = "zz".repeat(32))),
            (
                "missing CA",
                Box::new(|s| s.ca_pem_path = "/nonexistent/ca.pem".into()),
            ),
            ("zero keep-alive", Box::new(|s| s.keep_alive_ms = 0)),
            (
                "keep-alive not below idle",
                Box::new(|s| {
                    s.keep_alive_ms = 3_000;
                    s.idle_timeout_ms = 3_000
                }),
            ),
            ("zero event queue", Box::new(|s| s.event_queue = 0)),
            ("empty store", Box::new(|s| s.store_path = " ".into())),
        ];
        for (what, change) in cases {
            let mut s = valid(dir.path());
            change(&mut s);
            match s.to_edge_config() {
                Err(LifeboatError::Config { detail }) => assert!(!detail.is_empty(), "{what}"),
                Err(other) => panic!("{what}: expected a config error, got {other}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }
    }
}
