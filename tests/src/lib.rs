//! Fixtures for Lifeboat's end-to-end tests: a region directory, real `lifeboat-server`
//! processes on loopback, and real edge clients with sled stores on disk.
//!
//! - [`Cluster`]: the region and its datacenter processes; SIGKILL, restart, and (in
//!   [`dc_faults`]) SIGSTOP/SIGCONT and store damage;
//! - [`trips`]: the trip workload and the drivers' ledgers; [`check`]: the contract checked
//!   against the datacenters' stores and the devices' held versions;
//! - [`device_process`]: a device in a process of its own (SIGKILL, SIGSTOP, wipe);
//!   [`tunnel`]: a device's network path that can be cut (offline);
//! - [`arena`], [`raw`]: the hostile-client fixtures; [`seed`]: seeds and replay.
//!
//! Everything lives in one temporary directory per test; every wait is bounded.

#![forbid(unsafe_code)]

pub mod arena;
pub mod check;
pub mod dc_faults;
pub mod device_process;
pub mod raw;
pub mod seed;
pub mod trips;
pub mod tunnel;

use anyhow::{bail, Context};
use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DeviceId, GeoPoint, SessionId, TripPhase};
use lifeboat_edge::{EdgeClient, EdgeConfig, SessionSnapshot, StoreLocation};
use lifeboat_server::process::{find_server_binary, wipe, DcProcess, DcSpawn};
use lifeboat_server::region::Region;
use lifeboat_server::service::{read_store, StoredSession};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use lifeboat_server::process;

/// The `lifeboat-server` binary, built on first use if cargo has not built it yet.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = find_server_binary() {
            return Ok(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "lifeboat-server",
                "--bin",
                "lifeboat-server",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("building lifeboat-server failed".into());
        }
        find_server_binary().ok_or_else(|| "lifeboat-server binary not found after build".into())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Test settings: fast failure detection so tests stay short.
pub const TEST_IDLE_MS: u64 = 1_500;
pub const TEST_KEEPALIVE_MS: u64 = 300;

/// A region with `n` datacenters on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub region_dir: PathBuf,
    pub keyring: Keyring,
    pub ca_pem: Vec<u8>,
    pub specs: Vec<DcSpawn>,
    pub dcs: Vec<Option<DcProcess>>,
}

impl Cluster {
    /// Create the region and the datacenter specs (not started).
    /// `LIFEBOAT_KEEP_TEST_DIR=1` keeps the directory (logs, stores) after the test.
    pub fn new(n: u16, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut dir = tempfile::tempdir()?;
        if std::env::var_os("LIFEBOAT_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test directory kept: {}", dir.path().display());
        }
        let region_dir = dir.path().join("region");
        Region::init(&region_dir)?;
        let keyring = Keyring::load(&Region::keyring_path(&region_dir))?;
        let ca_pem = std::fs::read(Region::ca_path(&region_dir))?;
        let program = server_binary()?;
        let mut specs = Vec::new();
        for i in 1..=n {
            let mut spec = DcSpawn::on_loopback(program.clone(), i, dir.path(), &region_dir)?;
            spec.extra_args = ["--idle-timeout-ms", "5000"]
                .iter()
                .chain(extra_args.iter())
                .map(|s| s.to_string())
                .collect();
            let log = std::env::var("LIFEBOAT_DC_LOG").unwrap_or_else(|_| "info".into());
            spec.env = vec![("RUST_LOG".into(), log)];
            specs.push(spec);
        }
        let dcs = specs.iter().map(|_| None).collect();
        Ok(Self {
            dir,
            region_dir,
            keyring,
            ca_pem,
            specs,
            dcs,
        })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.specs.iter().map(|s| s.listen).collect()
    }

    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let p = DcProcess::spawn(self.specs[i].clone())
            .with_context(|| format!("starting dc{}", i + 1))?;
        self.dcs[i] = Some(p);
        Ok(())
    }

    /// Start datacenter `i` with more arguments than its spec has (this start only).
    pub fn start_with_args(&mut self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let mut spec = self.specs[i].clone();
        spec.extra_args.extend(args.iter().map(|s| s.to_string()));
        self.dcs[i] = Some(
            DcProcess::spawn(spec)
                .with_context(|| format!("starting dc{} with {args:?}", i + 1))?,
        );
        Ok(())
    }

    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut spec = self.specs[i].clone();
        spec.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.dcs[i] = Some(DcProcess::spawn(spec)?);
        Ok(())
    }

    /// SIGKILL; with `lose_disk`, its data directory is deleted too.
    pub fn kill(&mut self, i: usize, lose_disk: bool) -> anyhow::Result<()> {
        if let Some(p) = self.dcs[i].take() {
            p.kill()?;
        }
        if lose_disk {
            wipe(&self.specs[i].data_dir)?;
        }
        Ok(())
    }

    /// SIGTERM (clean, flushed) and read back every session in its store.
    pub fn stop_and_read(&mut self, i: usize) -> anyhow::Result<Vec<StoredSession>> {
        if let Some(p) = self.dcs[i].take() {
            // A frozen process would only act on SIGTERM once thawed.
            let _ = p.thaw();
            p.terminate()?;
        }
        Ok(read_store(&self.specs[i].data_dir, &self.keyring)?)
    }

    pub fn process(&mut self, i: usize) -> Option<&mut DcProcess> {
        self.dcs[i].as_mut()
    }

    pub fn device_store(&self, id: u64) -> PathBuf {
        self.dir.path().join("devices").join(id.to_string())
    }

    /// Start an edge client with its own sled store on disk.
    pub async fn device(&self, id: u64, available: bool) -> anyhow::Result<EdgeClient> {
        self.device_with(id, available, self.addrs()).await
    }

    pub async fn device_with(
        &self,
        id: u64,
        available: bool,
        datacenters: Vec<SocketAddr>,
    ) -> anyhow::Result<EdgeClient> {
        Ok(EdgeClient::start(self.device_config(id, available, datacenters)).await?)
    }

    /// The configuration [`Cluster::device_with`] starts a client with, to adjust (e.g. its
    /// QUIC endpoint) before starting it.
    pub fn device_config(
        &self,
        id: u64,
        available: bool,
        datacenters: Vec<SocketAddr>,
    ) -> EdgeConfig {
        let d = DeviceId(id);
        let mut cfg = EdgeConfig::new(
            d,
            self.keyring.device_token(d),
            datacenters,
            self.ca_pem.clone(),
            StoreLocation::Path(self.device_store(id)),
        );
        cfg.keep_alive = Duration::from_millis(TEST_KEEPALIVE_MS);
        cfg.idle_timeout = Duration::from_millis(TEST_IDLE_MS);
        cfg.connect_timeout = Duration::from_millis(1_500);
        cfg.available = available;
        cfg
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.specs[i].log_file).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub const PICKUP: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};

/// A point `step` small steps north of the pickup (about 11 m each).
pub fn route_point(step: u32) -> GeoPoint {
    GeoPoint {
        lat_e6: PICKUP.lat_e6 + (step as i32) * 100,
        lon_e6: PICKUP.lon_e6,
    }
}

/// Wait (bounded) until the device holds a session in one of `phases`.
pub async fn wait_for_session(
    client: &EdgeClient,
    timeout: Duration,
    pred: impl Fn(&SessionSnapshot) -> bool,
) -> anyhow::Result<SessionSnapshot> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(s) = client.sessions().await?.into_iter().find(|s| pred(s)) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "device {} did not see the expected session within {timeout:?}",
        client.device()
    )
}

/// The assigned, unfinished trip a driver holds.
pub async fn wait_for_assignment(
    driver: &EdgeClient,
    timeout: Duration,
) -> anyhow::Result<SessionId> {
    let s = wait_for_session(driver, timeout, |s| {
        !s.finished && s.view.phase == TripPhase::Assigned
    })
    .await?;
    Ok(s.session)
}
