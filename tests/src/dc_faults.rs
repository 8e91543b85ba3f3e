//! Process faults on a [`Cluster`]'s datacenters, beyond SIGKILL ([`Cluster::kill`]):
//! SIGSTOP/SIGCONT (a frozen datacenter: alive to the kernel, silent to the devices; when it
//! thaws it still believes its in-memory sessions are current), and damage to a stopped
//! datacenter's store before it restarts on it ([`StoreDamage`]).
//!
//! What the server does with each kind of damage is in `server/src/store.rs` and
//! `docs/CHAOS-process.md`.

use crate::Cluster;
use anyhow::{ensure, Context};
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
    pub fn freeze(&mut self, i: usize) -> anyhow::Result<()> {
        self.dcs[i]
            .as_ref()
            .with_context(|| format!("dc{} is not running", i + 1))?
            .freeze()?;
        Ok(())
    }

    /// SIGCONT datacenter `i`.
    pub fn thaw(&mut self, i: usize) -> anyhow::Result<()> {
        self.dcs[i]
            .as_ref()
            .with_context(|| format!("dc{} is not running", i + 1))?
            .thaw()?;
        Ok(())
    }

    /// Whether datacenter `i` has a process (running or frozen).
    pub fn is_up(&self, i: usize) -> bool {
        self.dcs[i].is_some()
    }

    /// Damage the store of datacenter `i`, which must be stopped.
    pub fn damage_store(&mut self, i: usize, damage: StoreDamage) -> anyhow::Result<()> {
        ensure!(self.dcs[i].is_none(), "dc{} is still running", i + 1);
        let dir = &self.specs[i].data_dir;
        match damage {
            StoreDamage::GarbledConf => {
                std::fs::write(dir.join("conf"), b"\x00garbage: not a sled config\xff")?
            }
            StoreDamage::TruncatedLog { keep_percent } => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("db"))
                    .context("the store's log")?;
                let len = f.metadata()?.len();
                f.set_len(len * u64::from(keep_percent.min(100)) / 100)?;
            }
            StoreDamage::GarbledLog { offset, len } => {
                let path = dir.join("db");
                let mut bytes = std::fs::read(&path).context("the store's log")?;
                let end = offset.saturating_add(len).min(bytes.len());
                for b in bytes.iter_mut().take(end).skip(offset) {
                    *b ^= 0xa5;
                }
                std::fs::write(&path, bytes)?;
            }
        }
        Ok(())
    }

    /// Stores of datacenter `i` that it moved aside as unreadable (`<dir>.corrupt-<ms>`).
    pub fn moved_aside_stores(&self, i: usize) -> anyhow::Result<Vec<PathBuf>> {
        let dir = &self.specs[i].data_dir;
        let name = dir
            .file_name()
            .context("data dir name")?
            .to_string_lossy()
            .into_owned();
        let prefix = format!("{name}.corrupt-");
        let parent = dir.parent().context("data dir parent")?;
        let mut found: Vec<PathBuf> = std::fs::read_dir(parent)?
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
