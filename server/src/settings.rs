//! The settings of `lifeboat-server serve`: one typed struct, read in layers with figment:
//! the defaults < a TOML file (`--config PATH`) < the environment (`LIFEBOAT_SERVE_<KEY>`,
//! e.g. `LIFEBOAT_SERVE_MAX_SESSIONS=500000`) < the flags given on the command line.
//!
//! Invariants:
//! - The defaults live in one place, [`ServerConfig::new`] (the library's), and
//!   [`ServeSettings::default`] reads them from there; `--help` shows the same values.
//! - Every key of the file and of the environment must be a known setting: an unknown one is
//!   an error naming the key and where it came from (a typo never silently does nothing).
//! - A value with the wrong type or shape is an error naming the key and its source.
//! - `--print-config` prints the merged result as TOML, which is also a valid `--config` file.

use crate::service::ServerConfig;
use crate::store::UnreadableStore;
use anyhow::Context;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use lifeboat_common::datacenter::Durability;
use lifeboat_common::DatacenterId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The environment prefix of the settings (`LIFEBOAT_SERVE_MAX_SESSIONS`).
pub const ENV_PREFIX: &str = "LIFEBOAT_SERVE_";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields: session, device, ...).
    Json,
}

/// Serde for types that have `Display` and `FromStr` (durability, unreadable-store policy).
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything `serve` can be told (see the module docs for where each value comes from).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSettings {
    /// Datacenter id: each datacenter of a region needs its own (1, 2, ...).
    pub dc: u16,
    /// UDP address to listen on (QUIC). Port 0 picks a free port; the chosen one is printed.
    pub listen: SocketAddr,
    /// Directory of this datacenter's sled store.
    pub data_dir: PathBuf,
    /// Region directory (keyring, CA, certificate), shared by the region's datacenters.
    pub region: PathBuf,
    /// Create the region directory on first run if it is missing.
    pub create_region: bool,
    /// When a server-side change (dispatch) counts as committed: `async` or `edge-ack:K`.
    #[serde(with = "as_text")]
    pub durability: Durability,
    /// Close connections idle for this long (ms; the QUIC idle timeout).
    pub idle_timeout_ms: u64,
    /// Time allowed for the QUIC handshake and the connect upload (ms).
    pub handshake_timeout_ms: u64,
    /// A connection may wait this long after its handshake before it says `Hello` (a
    /// device's standby connection, ms).
    pub standby_timeout_ms: u64,
    /// The sled page cache (bytes).
    pub cache_bytes: u64,
    /// Most QUIC handshakes in progress at once (0: no bound); more wait in the queue.
    pub max_handshakes: usize,
    /// Most connections waiting for a handshake slot (0: refuse at once).
    pub handshake_queue: usize,
    /// Longest wait in the handshake queue (ms; below the devices' connect timeout).
    pub handshake_queue_wait_ms: u64,
    /// UDP receive and send buffer to ask the kernel for (bytes; 0: system default).
    pub udp_buffer_bytes: usize,
    /// QUIC endpoints sharing the listen port (`SO_REUSEPORT`; 1 to 64).
    pub endpoints: usize,
    /// Most simultaneous device connections.
    pub max_connections: usize,
    /// Most sessions (active and tombstoned) held.
    pub max_sessions: usize,
    /// Messages queued per connection before it counts as a slow consumer and is closed.
    pub conn_queue: usize,
    /// Most upload frames after `Hello` (each up to 64 digests) in one connect upload.
    pub max_upload_frames: usize,
    /// Largest frame accepted from a device (bytes, 1 to 65536; checked on load).
    pub max_frame_bytes: usize,
    /// A frame whose first byte arrived must be complete within this (ms).
    pub frame_timeout_ms: u64,
    /// Most simultaneous connections from one IP address (0: unlimited).
    pub max_conns_per_addr: usize,
    /// Apply `max_conns_per_addr` to loopback addresses too.
    pub limit_loopback: bool,
    /// Most ops submitted and not yet answered on one connection; more get a retryable
    /// rejection.
    pub max_inflight_ops: usize,
    /// A device in this many active sessions may not create another.
    pub max_sessions_per_device: usize,
    /// Session creates per device per minute, also the burst (0: unlimited).
    pub session_creates_per_minute: u32,
    /// The shadow restore asks the devices of one session for their copies this often and
    /// checks that they would restore it (ms; 0: off).
    pub shadow_interval_ms: u64,
    /// A finished session's tombstone is kept this long, and a copy of a session not held
    /// that is older than this is not restored (ms; 0: tombstones kept for ever).
    pub tombstone_ttl_ms: u64,
    /// Most tombstones kept (0: no bound); beyond, the oldest go early (never before half
    /// the TTL).
    pub max_tombstones: usize,
    /// Check the keyring file for changes this often (ms; 0: only on SIGHUP).
    pub keyring_poll_ms: u64,
    /// Write a JSON status snapshot to this file every 500 ms (none: no file).
    pub stats_file: Option<PathBuf>,
    /// What to do with a store that cannot be opened or read: `move-aside` or `refuse`
    /// (see [`UnreadableStore`]).
    #[serde(with = "as_text")]
    pub unreadable_store: UnreadableStore,
    /// How log lines are written to stderr.
    pub log_format: LogFormat,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (TCP): `auto` (loopback, the QUIC
    /// port + 1000: 4433 gives 127.0.0.1:5433; a free port when listening on port 0), `off`,
    /// or an address.
    pub metrics_listen: String,
    /// A file holding the operator's bearer token for the admin API (`lifeboat-server admin
    /// token --out FILE` makes one, mode 0600); none: the admin API is off.
    pub admin_token_file: Option<PathBuf>,
    /// A stop (SIGTERM, `admin drain`) first moves the devices to another datacenter,
    /// within this bound (ms; 0: stop at once, every device told together).
    pub drain_within_ms: u64,
    /// Devices a drain moves per second (in waves every 100 ms; more if the bound needs it).
    pub drain_rate: u32,
    /// Where a drain moves the devices (one of the region's datacenters, as the devices
    /// list it); none: each device's next datacenter.
    pub drain_to: Option<SocketAddr>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        let c = ServerConfig::new(
            DatacenterId(1),
            SocketAddr::from(([127, 0, 0, 1], 4433)),
            "lifeboat-dc1".into(),
            "lifeboat-region".into(),
        );
        Self {
            dc: c.dc.0,
            listen: c.listen,
            data_dir: c.data_dir,
            region: c.region_dir,
            create_region: c.create_region,
            durability: c.durability,
            idle_timeout_ms: c.idle_timeout.as_millis() as u64,
            handshake_timeout_ms: c.handshake_timeout.as_millis() as u64,
            standby_timeout_ms: c.standby_timeout.as_millis() as u64,
            cache_bytes: c.cache_bytes,
            max_handshakes: c.max_handshakes,
            handshake_queue: c.handshake_queue,
            handshake_queue_wait_ms: c.handshake_queue_wait.as_millis() as u64,
            udp_buffer_bytes: c.udp_buffer_bytes,
            endpoints: c.endpoints,
            max_connections: c.max_connections,
            max_sessions: c.max_sessions,
            conn_queue: c.conn_queue,
            max_upload_frames: c.max_upload_frames,
            max_frame_bytes: c.limits.max_frame_bytes,
            frame_timeout_ms: c.limits.frame_timeout_ms,
            max_conns_per_addr: c.limits.max_conns_per_addr,
            limit_loopback: c.limits.limit_loopback,
            max_inflight_ops: c.limits.max_inflight_ops,
            max_sessions_per_device: c.max_sessions_per_device,
            session_creates_per_minute: c.session_creates_per_minute,
            shadow_interval_ms: c.shadow_interval_ms,
            tombstone_ttl_ms: c.tombstone_ttl_ms,
            max_tombstones: c.max_tombstones,
            keyring_poll_ms: c.keyring_poll.map_or(0, |d| d.as_millis() as u64),
            stats_file: c.stats_file,
            unreadable_store: c.unreadable_store,
            log_format: LogFormat::Text,
            metrics_listen: "auto".into(),
            admin_token_file: c.admin_token_file,
            drain_within_ms: c.drain.within_ms,
            drain_rate: c.drain.rate_per_s,
            drain_to: c.drain_to,
        }
    }
}

impl ServeSettings {
    /// Merge the layers: defaults, then `file` (if given: it must exist), then the
    /// environment `env` (name, value pairs; the process's own in production), then
    /// `flags` (a TOML-shaped table of the flags given on the command line).
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: toml::Table,
    ) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(ServeSettings::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.is_file(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only our prefix; the environment is read from the given pairs (tests give theirs).
        let ours: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let env_toml = ours
            .iter()
            .map(|(k, v)| {
                let key = k[ENV_PREFIX.len()..].to_ascii_lowercase();
                (key, toml_value(v))
            })
            .collect::<toml::Table>();
        fig = fig.merge(Layer {
            name: "the environment (LIFEBOAT_SERVE_*)",
            table: env_toml,
        });
        fig = fig.merge(Layer {
            name: "the command-line flags",
            table: flags,
        });
        let s: ServeSettings = fig.extract().map_err(|e| {
            let mut msg = String::from("invalid settings:");
            for err in e {
                let from = match err.metadata.as_ref() {
                    Some(m) => match &m.source {
                        Some(figment::Source::File(p)) => p.display().to_string(),
                        _ => m.name.to_string(),
                    },
                    None => "the defaults".into(),
                };
                msg.push_str(&format!(
                    "\n  `{}` (in {from}): {}",
                    err.path.join("."),
                    err.kind
                ));
            }
            anyhow::anyhow!(msg)
        })?;
        s.check()?;
        Ok(s)
    }

    /// Checks figment cannot express as types.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=lifeboat_common::codec::MAX_FRAME_BYTES).contains(&self.max_frame_bytes),
            "max_frame_bytes must be between 1 and {}",
            lifeboat_common::codec::MAX_FRAME_BYTES
        );
        anyhow::ensure!(self.dc > 0, "dc must be 1 or more");
        anyhow::ensure!(
            (1..=crate::service::MAX_ENDPOINTS).contains(&self.endpoints),
            "endpoints must be between 1 and {}",
            crate::service::MAX_ENDPOINTS
        );
        anyhow::ensure!(
            self.drain_rate > 0,
            "drain_rate must be 1 or more devices a second"
        );
        self.metrics_addr()?;
        Ok(())
    }

    /// The HTTP endpoints' address `metrics_listen` names (`None`: off).
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        Ok(match self.metrics_listen.as_str() {
            "off" => None,
            "auto" => {
                let port = match self.listen.port() {
                    0 => 0,
                    p => p.checked_add(1000).unwrap_or(0),
                };
                Some(SocketAddr::from(([127, 0, 0, 1], port)))
            }
            other => Some(other.parse().with_context(|| {
                format!("metrics_listen must be `auto`, `off` or an address, not `{other}`")
            })?),
        })
    }

    /// The merged settings as TOML (a valid `--config` file).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("printing the settings as TOML")
    }

    /// The server configuration these settings describe.
    pub fn server_config(&self) -> ServerConfig {
        let mut cfg = ServerConfig::new(
            DatacenterId(self.dc),
            self.listen,
            self.data_dir.clone(),
            self.region.clone(),
        );
        cfg.create_region = self.create_region;
        cfg.durability = self.durability;
        cfg.idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        cfg.handshake_timeout = Duration::from_millis(self.handshake_timeout_ms);
        cfg.standby_timeout = Duration::from_millis(self.standby_timeout_ms);
        cfg.cache_bytes = self.cache_bytes;
        cfg.udp_buffer_bytes = self.udp_buffer_bytes;
        cfg.endpoints = self.endpoints;
        cfg.max_handshakes = self.max_handshakes;
        cfg.handshake_queue = self.handshake_queue;
        cfg.handshake_queue_wait = Duration::from_millis(self.handshake_queue_wait_ms);
        cfg.max_connections = self.max_connections;
        cfg.max_sessions = self.max_sessions;
        cfg.conn_queue = self.conn_queue;
        cfg.stats_file = self.stats_file.clone();
        cfg.max_upload_frames = self.max_upload_frames;
        cfg.limits.max_frame_bytes = self.max_frame_bytes;
        cfg.limits.frame_timeout_ms = self.frame_timeout_ms;
        cfg.limits.max_conns_per_addr = self.max_conns_per_addr;
        cfg.limits.limit_loopback = self.limit_loopback;
        cfg.limits.max_inflight_ops = self.max_inflight_ops;
        cfg.max_sessions_per_device = self.max_sessions_per_device;
        cfg.session_creates_per_minute = self.session_creates_per_minute;
        cfg.shadow_interval_ms = self.shadow_interval_ms;
        cfg.tombstone_ttl_ms = self.tombstone_ttl_ms;
        cfg.max_tombstones = self.max_tombstones;
        cfg.keyring_poll =
            (self.keyring_poll_ms > 0).then(|| Duration::from_millis(self.keyring_poll_ms));
        cfg.unreadable_store = self.unreadable_store;
        cfg.metrics_listen = self.metrics_addr().ok().flatten();
        cfg.admin_token_file = self.admin_token_file.clone();
        cfg.drain.within_ms = self.drain_within_ms;
        cfg.drain.rate_per_s = self.drain_rate;
        cfg.drain_to = self.drain_to;
        cfg
    }
}

/// One named layer of settings (the environment, the flags), so that an error says where
/// the bad key came from.
struct Layer {
    name: &'static str,
    table: toml::Table,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// An environment value as TOML: a number or boolean if it reads as one, else a string
/// (the settings' types then decide whether it fits).
fn toml_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("dc.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "dc = 2\nmax_sessions = 10\nmax_connections = 20\ndurability = \"edge-ack:1\"\n",
        );
        let env = vec![
            (
                "LIFEBOAT_SERVE_MAX_CONNECTIONS".to_string(),
                "30".to_string(),
            ),
            ("LIFEBOAT_SERVE_CONN_QUEUE".to_string(), "40".to_string()),
            ("LIFEBOAT_SEED".to_string(), "7".to_string()),
        ];
        let mut flags = toml::Table::new();
        flags.insert("conn_queue".into(), toml::Value::Integer(50));
        let s = ServeSettings::load(Some(&file), env, flags).unwrap();
        assert_eq!(s.dc, 2, "from the file");
        assert_eq!(s.max_sessions, 10, "from the file");
        assert_eq!(s.max_connections, 30, "the environment beats the file");
        assert_eq!(s.conn_queue, 50, "a flag beats the environment");
        assert_eq!(s.durability, Durability::EdgeAck(1));
        let d = ServeSettings::default();
        assert_eq!(s.max_handshakes, d.max_handshakes, "untouched: the default");
        // The printed settings read back as the same settings.
        let again = write(dir.path(), &s.to_toml().unwrap());
        let back = ServeSettings::load(Some(&again), Vec::new(), toml::Table::new()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "max_sesions = 10\n");
        let e = ServeSettings::load(Some(&file), Vec::new(), toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_sesions"), "{e}");
        assert!(e.contains("dc.toml"), "the file is named: {e}");
        let env = vec![("LIFEBOAT_SERVE_MAX_SESIONS".to_string(), "1".to_string())];
        let e = ServeSettings::load(None, env, toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_sesions"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "durability = \"sometimes\"\n");
        let e = ServeSettings::load(Some(&file), Vec::new(), toml::Table::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("durability"), "{e}");
        let file = write(dir.path(), "max_frame_bytes = 0\n");
        assert!(ServeSettings::load(Some(&file), Vec::new(), toml::Table::new()).is_err());
        assert!(ServeSettings::load(
            Some(&dir.path().join("missing.toml")),
            Vec::new(),
            toml::Table::new()
        )
        .is_err());
    }
}
