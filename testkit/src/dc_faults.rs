//! Process faults on a [`Cluster`]'s datacenters, beyond SIGKILL ([`Cluster::kill`]):
//! SIGSTOP/SIGCONT (a frozen datacenter: alive to the kernel, silent to the devices; when it
//! thaws it still believes its in-memory sessions are current), and damage to a stopped
//! datacenter's store before it restarts on it ([`StoreDamage`]).
//!
//! What the server does with each kind of damage is in `server/src/store.rs` and
//! `docs/CHAOS-process.md`. Invariant: a store is damaged only while its datacenter is
//! stopped.

use crate::cluster::{Cluster, ClusterError};
use std::path::PathBuf;

/// Damage done to a stopped datacenter's sled store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDamage {
    /// sled's `conf` file overwritten with garbage: sled refuses to open the store
    /// (`Corruption`), the server moves it aside.
    GarbledConf,
    /// The log (`db`) cut to `keep_percent` of its length: sled recovers the longest valid
    /// prefix, so the store opens older than it was (a stale disk).
    TruncatedLog { keep_percent: u8 },
    /// `len` bytes of the log flipped at `offset`.
    GarbledLog { offset: usize, len: usize },
}

impl Cluster {
    /// SIGSTOP datacenter `i`.
    pub fn freeze(&mut self, i: usize) -> Result<(), ClusterError> {
        self.running(i)?
            .freeze()
            .map_err(|source| ClusterError::Process { dc: i + 1, source })
    }

    /// SIGCONT datacenter `i`.
    pub fn thaw(&mut self, i: usize) -> Result<(), ClusterError> {
        self.running(i)?
            .thaw()
            .map_err(|source| ClusterError::Process { dc: i + 1, source })
    }

    fn running(&self, i: usize) -> Result<&lifeboat_server::process::DcProcess, ClusterError> {
        self.dcs
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(ClusterError::NotRunning(i + 1))
    }

    /// Damage the store of datacenter `i`, which must be stopped.
    pub fn damage_store(&mut self, i: usize, damage: StoreDamage) -> Result<(), ClusterError> {
        if self.is_up(i) {
            return Err(ClusterError::StillRunning(i + 1));
        }
        let dir = &self
            .specs
            .get(i)
            .ok_or(ClusterError::NoSuchDc(i + 1))?
            .data_dir;
        let io = |what: &str| {
            let what = format!("damaging dc{}'s store: {what}", i + 1);
            move |source| ClusterError::Io { what, source }
        };
        match damage {
            StoreDamage::GarbledConf => {
                std::fs::write(dir.join("conf"), b"\x00garbage: not a sled config\xff")
                    .map_err(io("conf"))?
            }
            StoreDamage::TruncatedLog { keep_percent } => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("db"))
                    .map_err(io("the log"))?;
                let len = f.metadata().map_err(io("the log"))?.len();
                f.set_len(len * u64::from(keep_percent.min(100)) / 100)
                    .map_err(io("the log"))?;
            }
            StoreDamage::GarbledLog { offset, len } => {
                let path = dir.join("db");
                let mut bytes = std::fs::read(&path).map_err(io("the log"))?;
                let end = offset.saturating_add(len).min(bytes.len());
                for b in bytes.iter_mut().take(end).skip(offset) {
                    *b ^= 0xa5;
                }
                std::fs::write(&path, bytes).map_err(io("the log"))?;
            }
        }
        Ok(())
    }

    /// Stores of datacenter `i` that it moved aside as unreadable (`<dir>.corrupt-<ms>`).
    pub fn moved_aside_stores(&self, i: usize) -> Result<Vec<PathBuf>, ClusterError> {
        let dir = &self
            .specs
            .get(i)
            .ok_or(ClusterError::NoSuchDc(i + 1))?
            .data_dir;
        let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else {
            return Ok(Vec::new());
        };
        let prefix = format!("{}.corrupt-", name.to_string_lossy());
        let mut found: Vec<PathBuf> = std::fs::read_dir(parent)
            .map_err(|source| ClusterError::Io {
                what: format!("listing {}", parent.display()),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        found.sort();
        Ok(found)
    }
}
