//! An arena for attack tests: one real datacenter process on loopback with a status file, and
//! an honest rider and driver (real edge clients) driving a trip the whole time, so each test
//! can check that honest traffic keeps committing while it attacks.
//!
//! Every wait is bounded.

use crate::raw::RawDevice;
use crate::{route_point, wait_for_assignment, Cluster, PICKUP};
use anyhow::{bail, ensure, Context};
use lifeboat_common::{SessionId, TripOp};
use lifeboat_edge::EdgeClient;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Device ids the honest pair uses; attackers use others.
pub const HONEST_RIDER: u64 = 1;
pub const HONEST_DRIVER: u64 = 2;

const HONEST_OP_TIMEOUT: Duration = Duration::from_secs(15);

/// Honest traffic running in the background.
struct Honest {
    commits: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    _rider: EdgeClient,
}

pub struct Arena {
    pub cluster: Cluster,
    pub stats_file: PathBuf,
    /// The honest pair's trip.
    pub honest_session: SessionId,
    honest: Honest,
}

impl Arena {
    /// Start a datacenter with `extra_args` and the honest pair; returns once the honest
    /// driver has committed its first location.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<Arena> {
        let mut cluster = Cluster::new(1, extra_args)?;
        let stats_file = cluster.path().join("dc1-status.json");
        cluster.specs[0]
            .extra_args
            .extend(["--stats-file".to_string(), stats_file.display().to_string()]);
        cluster.start(0)?;
        let driver = cluster.device(HONEST_DRIVER, true).await?;
        let rider = cluster.device(HONEST_RIDER, false).await?;
        let (session, _) = tokio::time::timeout(
            HONEST_OP_TIMEOUT,
            rider.request_trip(PICKUP, route_point(500)),
        )
        .await
        .context("honest trip request timed out")??;
        let assigned = wait_for_assignment(&driver, HONEST_OP_TIMEOUT).await?;
        ensure!(assigned == session, "honest driver got another trip");
        for op in [TripOp::Arrived, TripOp::StartTrip] {
            tokio::time::timeout(HONEST_OP_TIMEOUT, driver.submit(session, op))
                .await
                .context("honest op timed out")??;
        }
        let commits = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (commits, errors, stop) = (commits.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let mut step = 1u32;
                // Bounded: a test stops it long before this many ops.
                while !stop.load(Ordering::Relaxed) && step < 1_000_000 {
                    let op = TripOp::Location {
                        at: route_point(step),
                    };
                    match tokio::time::timeout(HONEST_OP_TIMEOUT, driver.submit(session, op)).await
                    {
                        Ok(Ok(_)) => {
                            commits.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            errors.lock().unwrap().push(format!("step {step}: {e}"));
                            return;
                        }
                        Err(_) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("step {step}: no commit in {HONEST_OP_TIMEOUT:?}"));
                            return;
                        }
                    }
                    step += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let arena = Arena {
            cluster,
            stats_file,
            honest_session: session,
            honest: Honest {
                commits,
                errors,
                stop,
                task,
                _rider: rider,
            },
        };
        arena.honest_progress(1).await?;
        Ok(arena)
    }

    pub fn server(&self) -> std::net::SocketAddr {
        self.cluster.addrs()[0]
    }

    /// A raw device with its genuine credential.
    pub fn raw(&self, id: u64) -> anyhow::Result<RawDevice> {
        RawDevice::new(
            id,
            &self.cluster.keyring,
            &self.cluster.ca_pem,
            self.server(),
        )
    }

    /// Honest location ops committed so far.
    pub fn honest_commits(&self) -> u64 {
        self.honest.commits.load(Ordering::Relaxed)
    }

    /// Wait (bounded) until the honest driver committed `more` ops after now.
    pub async fn honest_progress(&self, more: u64) -> anyhow::Result<()> {
        let start = self.honest_commits();
        let t0 = Instant::now();
        while self.honest_commits() < start + more {
            if let Some(e) = self.honest.errors.lock().unwrap().first() {
                bail!("honest traffic failed: {e}");
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(20),
                "honest traffic stalled: {} of {more} ops in 20 s",
                self.honest_commits() - start
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The datacenter's latest status JSON.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(&self.stats_file)
            .with_context(|| format!("reading {}", self.stats_file.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// A counter from the status JSON by JSON pointer (`/limits/frame_timeout`).
    pub fn stat(&self, pointer: &str) -> anyhow::Result<u64> {
        self.stats()?
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .with_context(|| format!("no counter {pointer} in the status JSON"))
    }

    /// Wait (bounded: the status file is rewritten every 500 ms) until a counter reaches
    /// `at_least`; returns its value.
    pub async fn wait_stat(&self, pointer: &str, at_least: u64) -> anyhow::Result<u64> {
        let t0 = Instant::now();
        loop {
            // The file is replaced atomically, but may not exist for the first 500 ms.
            if let Ok(v) = self.stat(pointer) {
                if v >= at_least {
                    return Ok(v);
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!("counter {pointer} is {v}, expected at least {at_least}");
                }
            } else if t0.elapsed() > Duration::from_secs(10) {
                bail!("counter {pointer} never appeared in the status JSON");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The datacenter's resident memory (KiB), from /proc.
    pub fn rss_kib(&mut self) -> anyhow::Result<u64> {
        let pid = self
            .cluster
            .process(0)
            .context("datacenter not running")?
            .pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// The datacenter process is still running and never panicked.
    pub fn assert_alive(&mut self) -> anyhow::Result<()> {
        let exited = self
            .cluster
            .process(0)
            .context("datacenter not running")?
            .try_exit();
        ensure!(exited.is_none(), "the datacenter exited: {exited:?}");
        let log = self.cluster.log(0);
        ensure!(!log.contains("panicked"), "the datacenter panicked:\n{log}");
        Ok(())
    }

    /// Check the datacenter survived and honest traffic is still committing, then stop.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.honest_progress(3).await?;
        self.assert_alive()?;
        self.honest.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(HONEST_OP_TIMEOUT, &mut self.honest.task).await;
        if let Some(e) = self.honest.errors.lock().unwrap().first() {
            bail!("honest traffic failed: {e}");
        }
        Ok(())
    }
}
