//! A region and its real `lifeboat-server` processes on loopback: the one cluster fixture of
//! the end-to-end tests and the failover harness.
//!
//! Each datacenter is a separate process with its own sled store under the cluster's work
//! directory (`dc<N>/`, its log in `dc<N>.log`), started, SIGKILLed (disk kept or lost) and
//! stopped (SIGTERM, flushed) with real signals; [`Cluster::stop_and_read`] and
//! [`Cluster::stop_all_and_read`] read back what each store holds, opened with the region's
//! keyring. How the process is launched is the [`Launch`] of the [`ClusterOptions`]: the
//! `lifeboat-server` binary (tests), or the calling executable re-run with a hidden
//! subcommand (the harness, so that its datacenters are always its own build).
//!
//! The cluster also configures edge clients for its region ([`Cluster::device_config`]),
//! with their stores under `devices/<id>` and the [`DeviceTimings`] of the options.
//!
//! Invariants: every datacenter's spec is fixed at creation (port, data directory, log);
//! a start with more arguments changes that start only; nothing outlives the work
//! directory (a temporary one unless given, kept with `LIFEBOAT_KEEP_TEST_DIR=1`).

use crate::region::{TestRegion, TestRegionError};
use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DatacenterId, DeviceId};
use lifeboat_edge::{EdgeClient, EdgeConfig, EdgeError, StoreLocation};
use lifeboat_server::process::{find_server_binary, wipe, DcProcess, DcSpawn, ProcessError};
use lifeboat_server::service::{read_store, ServerError, StoredSession};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Test settings: fast failure detection so tests stay short.
pub const TEST_IDLE_MS: u64 = 1_500;
pub const TEST_KEEPALIVE_MS: u64 = 300;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("creating the region: {0}")]
    Region(#[from] TestRegionError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("dc{dc}: {source}")]
    Process { dc: usize, source: ProcessError },
    #[error("reading dc{dc}'s store: {source}")]
    Store { dc: usize, source: ServerError },
    #[error("starting device {device}: {source}")]
    Device { device: u64, source: EdgeError },
    #[error("the lifeboat-server binary: {0}")]
    ServerBinary(String),
    #[error("no datacenter dc{0} in this cluster")]
    NoSuchDc(usize),
    #[error("dc{0} is not running")]
    NotRunning(usize),
    #[error("dc{0} is still running")]
    StillRunning(usize),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How a datacenter process is launched.
#[derive(Clone, Debug)]
pub enum Launch {
    /// The `lifeboat-server` binary of this build, built on first use if cargo has not yet.
    ServerBinary,
    /// A given `lifeboat-server` binary.
    Binary(PathBuf),
    /// The calling executable, with these leading arguments (a hidden subcommand that runs
    /// the server's command line), then the server's own arguments.
    CurrentExe(Vec<String>),
}

impl Launch {
    /// The program and the arguments before the server's own.
    pub fn program(&self) -> Result<(PathBuf, Vec<String>), ClusterError> {
        Ok(match self {
            Launch::ServerBinary => (server_binary()?, Vec::new()),
            Launch::Binary(p) => (p.clone(), Vec::new()),
            Launch::CurrentExe(prefix) => (
                std::env::current_exe().map_err(io("locating the running executable"))?,
                prefix.clone(),
            ),
        })
    }
}

/// The `lifeboat-server` binary, built on first use if cargo has not built it yet.
pub fn server_binary() -> Result<PathBuf, ClusterError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = find_server_binary() {
            return Ok(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let args = [
            "build",
            "-q",
            "-p",
            "lifeboat-server",
            "--bin",
            "lifeboat-server",
        ];
        let status = std::process::Command::new(cargo)
            .args(args)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("building lifeboat-server failed".into());
        }
        find_server_binary().ok_or_else(|| "lifeboat-server binary not found after build".into())
    })
    .clone()
    .map_err(ClusterError::ServerBinary)
}

/// The timings of the edge clients a cluster configures.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTimings {
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for DeviceTimings {
    /// The end-to-end tests': fast failure detection so tests stay short.
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_millis(TEST_KEEPALIVE_MS),
            idle_timeout: Duration::from_millis(TEST_IDLE_MS),
            connect_timeout: Duration::from_millis(1_500),
        }
    }
}

/// What a cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub datacenters: u16,
    pub launch: Launch,
    /// Every datacenter's arguments after the ones its spec sets (`serve --dc ...`).
    pub extra_args: Vec<String>,
    /// The datacenters' `RUST_LOG`, unless `LIFEBOAT_DC_LOG` is set.
    pub log_filter: String,
    /// The work directory; `None`: a new temporary one.
    pub dir: Option<PathBuf>,
    pub devices: DeviceTimings,
}

impl ClusterOptions {
    /// `n` datacenters launched as `launch` says, with no extra arguments, `info` logs, in a
    /// new temporary directory, devices with the tests' timings.
    pub fn new(n: u16, launch: Launch) -> Self {
        Self {
            datacenters: n,
            launch,
            extra_args: Vec::new(),
            log_filter: "info".into(),
            dir: None,
            devices: DeviceTimings::default(),
        }
    }

    /// The end-to-end tests' cluster: `n` datacenters of the `lifeboat-server` binary,
    /// 5 s idle timeout, then `extra_args`.
    pub fn tests(n: u16, extra_args: &[&str]) -> Self {
        let mut opts = Self::new(n, Launch::ServerBinary);
        opts.extra_args = ["--idle-timeout-ms", "5000"]
            .iter()
            .chain(extra_args)
            .map(|s| s.to_string())
            .collect();
        opts
    }
}

/// Where the cluster lives.
enum WorkDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Given(p) => p,
        }
    }
}

/// A region with its datacenters on loopback.
pub struct Cluster {
    work: WorkDir,
    pub region_dir: PathBuf,
    pub keyring: Keyring,
    pub ca_pem: Vec<u8>,
    pub specs: Vec<DcSpawn>,
    /// The running process of each datacenter (`None`: down).
    pub dcs: Vec<Option<DcProcess>>,
    devices: DeviceTimings,
}

impl Cluster {
    /// The end-to-end tests' cluster ([`ClusterOptions::tests`]), created, not started.
    pub fn new(n: u16, extra_args: &[&str]) -> Result<Self, ClusterError> {
        Self::with(ClusterOptions::tests(n, extra_args))
    }

    /// Create the region and the datacenter specs (not started).
    pub fn with(opts: ClusterOptions) -> Result<Self, ClusterError> {
        let work = match &opts.dir {
            Some(d) => WorkDir::Given(d.clone()),
            None => {
                let mut dir = tempfile::tempdir().map_err(io("creating the test directory"))?;
                if std::env::var_os("LIFEBOAT_KEEP_TEST_DIR").is_some() {
                    dir.disable_cleanup(true);
                    eprintln!("test directory kept: {}", dir.path().display());
                }
                WorkDir::Temp(dir)
            }
        };
        let region = TestRegion::init(&work.path().join("region"))?;
        let (program, prefix_args) = opts.launch.program()?;
        let log = std::env::var("LIFEBOAT_DC_LOG").unwrap_or(opts.log_filter);
        let mut specs = Vec::new();
        for i in 1..=opts.datacenters {
            let mut spec = DcSpawn::on_loopback(program.clone(), i, work.path(), &region.dir)
                .map_err(io(format!("choosing a port for dc{i}")))?;
            spec.prefix_args = prefix_args.clone();
            spec.extra_args = opts.extra_args.clone();
            spec.env = vec![("RUST_LOG".into(), log.clone())];
            specs.push(spec);
        }
        let dcs = specs.iter().map(|_| None).collect();
        Ok(Self {
            work,
            region_dir: region.dir,
            keyring: region.keyring,
            ca_pem: region.ca_pem,
            specs,
            dcs,
            devices: opts.devices,
        })
    }

    /// The work directory (region, stores, logs).
    pub fn path(&self) -> &Path {
        self.work.path()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.specs.iter().map(|s| s.listen).collect()
    }

    fn spec(&self, i: usize) -> Result<&DcSpawn, ClusterError> {
        self.specs.get(i).ok_or(ClusterError::NoSuchDc(i + 1))
    }

    fn spawn(&mut self, i: usize, spec: DcSpawn) -> Result<(), ClusterError> {
        let p =
            DcProcess::spawn(spec).map_err(|source| ClusterError::Process { dc: i + 1, source })?;
        self.dcs[i] = Some(p);
        Ok(())
    }

    pub fn start(&mut self, i: usize) -> Result<(), ClusterError> {
        let spec = self.spec(i)?.clone();
        self.spawn(i, spec)
    }

    /// Start datacenter `i` with more arguments than its spec has (this start only).
    pub fn start_with_args(&mut self, i: usize, args: &[&str]) -> Result<(), ClusterError> {
        let mut spec = self.spec(i)?.clone();
        spec.extra_args.extend(args.iter().map(|s| s.to_string()));
        self.spawn(i, spec)
    }

    /// Start datacenter `i` with more environment than its spec has (this start only).
    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<(), ClusterError> {
        let mut spec = self.spec(i)?.clone();
        spec.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.spawn(i, spec)
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.dcs.get(i).is_some_and(Option::is_some)
    }

    /// SIGKILL; with `lose_disk`, its data directory is deleted too.
    pub fn kill(&mut self, i: usize, lose_disk: bool) -> Result<(), ClusterError> {
        let data_dir = self.spec(i)?.data_dir.clone();
        if let Some(p) = self.dcs[i].take() {
            p.kill()
                .map_err(|source| ClusterError::Process { dc: i + 1, source })?;
        }
        if lose_disk {
            wipe(&data_dir).map_err(io(format!("wiping dc{}'s disk", i + 1)))?;
        }
        Ok(())
    }

    /// SIGTERM, waiting for the exit: a planned failover (the datacenter drains its devices
    /// to the others, then stops cleanly, its disk kept).
    pub fn terminate(&mut self, i: usize) -> Result<(), ClusterError> {
        self.spec(i)?;
        self.stop(i)
    }

    /// SIGTERM (clean, flushed) if it runs; a frozen process is thawed first, since it
    /// would only act on SIGTERM once thawed.
    fn stop(&mut self, i: usize) -> Result<(), ClusterError> {
        if let Some(p) = self.dcs.get_mut(i).and_then(Option::take) {
            let _ = p.thaw();
            p.terminate()
                .map_err(|source| ClusterError::Process { dc: i + 1, source })?;
        }
        Ok(())
    }

    /// Stop datacenter `i` (see [`Cluster::stop`]) and read back every session in its store.
    pub fn stop_and_read(&mut self, i: usize) -> Result<Vec<StoredSession>, ClusterError> {
        self.stop(i)?;
        read_store(&self.spec(i)?.data_dir, &self.keyring)
            .map_err(|source| ClusterError::Store { dc: i + 1, source })
    }

    /// Stop every running datacenter and read back the stores of those that were running,
    /// by datacenter.
    pub fn stop_all_and_read(
        &mut self,
    ) -> Result<BTreeMap<DatacenterId, Vec<StoredSession>>, ClusterError> {
        let mut stores = BTreeMap::new();
        for i in 0..self.specs.len() {
            let was_up = self.is_up(i);
            self.stop(i)?;
            if !was_up || !self.specs[i].data_dir.exists() {
                continue;
            }
            let stored = read_store(&self.specs[i].data_dir, &self.keyring)
                .map_err(|source| ClusterError::Store { dc: i + 1, source })?;
            stores.insert(DatacenterId(self.specs[i].dc), stored);
        }
        Ok(stores)
    }

    pub fn process(&mut self, i: usize) -> Option<&mut DcProcess> {
        self.dcs.get_mut(i).and_then(Option::as_mut)
    }

    /// Datacenter `i`'s log so far (empty if there is none yet).
    pub fn log(&self, i: usize) -> String {
        self.specs
            .get(i)
            .and_then(|s| std::fs::read_to_string(&s.log_file).ok())
            .unwrap_or_default()
    }

    /// Where device `id`'s store is.
    pub fn device_store(&self, id: u64) -> PathBuf {
        self.path().join("devices").join(id.to_string())
    }

    /// Start an edge client with its own sled store on disk.
    pub async fn device(&self, id: u64, available: bool) -> Result<EdgeClient, ClusterError> {
        self.device_with(id, available, self.addrs()).await
    }

    pub async fn device_with(
        &self,
        id: u64,
        available: bool,
        datacenters: Vec<SocketAddr>,
    ) -> Result<EdgeClient, ClusterError> {
        EdgeClient::start(self.device_config(id, available, datacenters))
            .await
            .map_err(|source| ClusterError::Device { device: id, source })
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
        cfg.keep_alive = self.devices.keep_alive;
        cfg.idle_timeout = self.devices.idle_timeout;
        cfg.connect_timeout = self.devices.connect_timeout;
        cfg.available = available;
        cfg
    }
}
