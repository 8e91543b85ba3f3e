//! The simulated region: a region directory and real datacenter processes on loopback.
//!
//! The datacenters are real `lifeboat-server` processes: this very executable re-run with
//! the hidden `__datacenter` subcommand, which runs the `lifeboat_server::cli` code (so the
//! datacenters are always the same build as the harness), or a `lifeboat-server` binary
//! given with `--server-bin`. Either way each datacenter is a separate
//! process with its own sled store, killed with real signals.

use anyhow::Context;
use lifeboat_common::datacenter::Durability;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::SessionId;
use lifeboat_server::process::{wipe, DcProcess, DcSpawn};
use lifeboat_server::region::Region;
use lifeboat_server::service::{read_store, StoredSession};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct Cluster {
    pub dir: PathBuf,
    pub keyring: Keyring,
    pub ca_pem: Vec<u8>,
    pub specs: Vec<DcSpawn>,
    pub procs: Vec<Option<DcProcess>>,
}

/// Status snapshot a datacenter writes (the fields the harness reads).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct DcStatus {
    pub active_sessions: usize,
}

impl Cluster {
    pub fn new(
        dir: &Path,
        n: u16,
        durability: Durability,
        server_bin: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let region_dir = dir.join("region");
        Region::init(&region_dir).context("creating the region")?;
        let keyring = Keyring::load(&Region::keyring_path(&region_dir))?;
        let ca_pem = std::fs::read(Region::ca_path(&region_dir))?;
        // By default the datacenters run this very executable's copy of the server (always the
        // same build as the harness); `--server-bin` points at a `lifeboat-server` instead.
        let (program, prefix_args) = match server_bin {
            Some(p) => (p.to_path_buf(), Vec::new()),
            None => (
                std::env::current_exe().context("locating the harness executable")?,
                vec!["__datacenter".to_string(), "lifeboat-server".to_string()],
            ),
        };
        let mut specs = Vec::new();
        for i in 1..=n {
            let mut spec = DcSpawn::on_loopback(program.clone(), i, dir, &region_dir)?;
            spec.prefix_args = prefix_args.clone();
            spec.extra_args = vec![
                "--durability".into(),
                durability.to_string(),
                "--idle-timeout-ms".into(),
                "10000".into(),
                "--stats-file".into(),
                dir.join(format!("dc{i}.status.json")).display().to_string(),
            ];
            spec.env = vec![(
                "RUST_LOG".into(),
                std::env::var("LIFEBOAT_DC_LOG")
                    .unwrap_or_else(|_| "warn,lifeboat::dispatch=debug".into()),
            )];
            specs.push(spec);
        }
        let procs = specs.iter().map(|_| None).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            keyring,
            ca_pem,
            specs,
            procs,
        })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.specs.iter().map(|s| s.listen).collect()
    }

    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let p = DcProcess::spawn(self.specs[i].clone())
            .with_context(|| format!("starting dc{}", i + 1))?;
        self.procs[i] = Some(p);
        Ok(())
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// SIGKILL, optionally losing the disk.
    pub fn kill(&mut self, i: usize, lose_disk: bool) -> anyhow::Result<()> {
        if let Some(p) = self.procs[i].take() {
            p.kill()?;
        }
        if lose_disk {
            wipe(&self.specs[i].data_dir)?;
        }
        Ok(())
    }

    /// SIGTERM every running datacenter and read back every copy of every session from
    /// their stores (one per datacenter that holds it).
    pub fn stop_all_and_read(&mut self) -> anyhow::Result<HashMap<SessionId, Vec<StoredSession>>> {
        let mut copies: HashMap<SessionId, Vec<StoredSession>> = HashMap::new();
        for i in 0..self.specs.len() {
            let was_up = self.procs[i].is_some();
            if let Some(p) = self.procs[i].take() {
                p.terminate()?;
            }
            if !was_up || !self.specs[i].data_dir.exists() {
                continue;
            }
            for s in read_store(&self.specs[i].data_dir, &self.keyring)? {
                copies.entry(s.0.session).or_default().push(s);
            }
        }
        Ok(copies)
    }

    pub fn status(&self, i: usize) -> Option<DcStatus> {
        if !self.is_up(i) {
            return None;
        }
        let path = self.dir.join(format!("dc{}.status.json", i + 1));
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Sessions the datacenter's log says it dispatched (server-side changes).
    pub fn dispatched_sessions(&self, i: usize) -> Vec<SessionId> {
        let log = std::fs::read_to_string(&self.specs[i].log_file).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("lifeboat::dispatch"))
            .filter_map(|l| {
                let rest = l.split("session=").nth(1)?;
                rest.split_whitespace().next()?.parse().ok().map(SessionId)
            })
            .collect()
    }
}
