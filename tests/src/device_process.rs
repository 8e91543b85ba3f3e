//! A device in a process of its own, for device faults with real signals: SIGKILL mid-trip
//! (the OS kills the app: no shutdown, no last flush), SIGSTOP/SIGCONT (a frozen app), a
//! restart on the same store, a wiped store (a reinstall).
//!
//! The process is `lifeboat-chaos-device` (`tests/src/bin/lifeboat-chaos-device.rs`): one
//! real edge client with its own sled store, driven over stdin and reporting on stdout, one
//! JSON object a line ([`Command`], [`Report`]). A report is printed (and flushed) only
//! after the fact it reports, so what the test has read is a lower bound of what happened,
//! even when the process is killed the next instant: an op reported `Committed` was
//! committed (C1 says it must survive), an op reported `Queued` is on the device's disk.
//!
//! Every wait is bounded; dropping a [`DeviceProcess`] SIGKILLs it.

use crate::Cluster;
use anyhow::{bail, Context};
use lifeboat_common::{
    DatacenterId, DeviceId, GeoPoint, OpId, SessionId, TripOp, TripPhase, VersionVector,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most reports kept from one process (a test sends far fewer ops).
const MAX_REPORTS: usize = 100_000;

/// What the test asks the device process to do.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Queue an op; reports `Queued` once it is on the device's disk, then `Committed` or
    /// `Failed`.
    Submit {
        tag: u64,
        session: SessionId,
        op: TripOp,
    },
    /// Report the sessions held (`Sessions` with the same tag).
    Sessions { tag: u64 },
    /// Report the ops still queued and the decided outcomes not acknowledged yet
    /// (`Outcomes` with the same tag).
    Outcomes { tag: u64 },
    /// Acknowledge these outcomes (`Acknowledged` with the same tag).
    Acknowledge { tag: u64, ops: Vec<OpId> },
}

/// A decided outcome, as the device lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decided {
    pub op: OpId,
    pub body: TripOp,
    pub ok: bool,
    pub error: Option<String>,
}

/// A session as the device holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Held {
    pub session: SessionId,
    pub version: VersionVector,
    pub phase: TripPhase,
    pub location_updates: u32,
    pub last_position: Option<GeoPoint>,
    pub finished: bool,
    pub committed: bool,
}

/// What the device process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Report {
    /// The store is open and loaded; the client runs.
    Ready {
        sessions: usize,
    },
    Connected {
        dc: DatacenterId,
    },
    Queued {
        tag: u64,
        op: OpId,
    },
    Committed {
        tag: u64,
        op: OpId,
        version: VersionVector,
        duplicate: bool,
    },
    Failed {
        tag: u64,
        error: String,
    },
    /// An op was answered; also for ops queued by an earlier run of the process.
    Resolved {
        op: OpId,
        ok: bool,
        version: Option<VersionVector>,
    },
    Sessions {
        tag: u64,
        list: Vec<Held>,
    },
    Outcomes {
        tag: u64,
        queued: Vec<(OpId, TripOp)>,
        decided: Vec<Decided>,
    },
    Acknowledged {
        tag: u64,
        count: usize,
    },
    /// The datacenter holds a diverged copy of a session (S13).
    Conflict {
        session: SessionId,
    },
    /// The device store failed; the client stopped.
    StoreFailed {
        error: String,
    },
}

/// How to start a device process.
#[derive(Clone, Debug)]
pub struct DeviceSpawn {
    /// The `lifeboat-chaos-device` binary (`env!("CARGO_BIN_EXE_lifeboat-chaos-device")`).
    pub program: PathBuf,
    pub device: DeviceId,
    pub available: bool,
    pub datacenters: Vec<SocketAddr>,
    pub region_dir: PathBuf,
    pub store: PathBuf,
    pub log_file: PathBuf,
    pub idle_ms: u64,
    pub keepalive_ms: u64,
}

impl DeviceSpawn {
    /// Device `id` of `cluster`, with the cluster's fast failure detection, its store in the
    /// cluster's device directory (the same one [`Cluster::device`] uses).
    pub fn new(program: PathBuf, cluster: &Cluster, id: u64, available: bool) -> Self {
        Self {
            program,
            device: DeviceId(id),
            available,
            datacenters: cluster.addrs(),
            region_dir: cluster.region_dir.clone(),
            store: cluster.device_store(id),
            log_file: cluster.path().join(format!("device-{id}.log")),
            idle_ms: crate::TEST_IDLE_MS,
            keepalive_ms: crate::TEST_KEEPALIVE_MS,
        }
    }
}

/// A running device process.
pub struct DeviceProcess {
    pub spec: DeviceSpawn,
    child: Child,
    stdin: Option<ChildStdin>,
    reports: Arc<Mutex<Vec<Report>>>,
    /// Reads stdout until EOF (the process is gone and every line it wrote is read).
    reader: std::thread::JoinHandle<()>,
    next_tag: u64,
}

impl DeviceProcess {
    /// Start the process and wait (at most 20 s) until its client runs.
    pub async fn spawn(spec: DeviceSpawn) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)?;
        let mut cmd = Process::new(&spec.program);
        cmd.arg("--device")
            .arg(spec.device.0.to_string())
            .arg("--region")
            .arg(&spec.region_dir)
            .arg("--store")
            .arg(&spec.store)
            .arg("--idle-ms")
            .arg(spec.idle_ms.to_string())
            .arg("--keepalive-ms")
            .arg(spec.keepalive_ms.to_string());
        for dc in &spec.datacenters {
            cmd.arg("--dc").arg(dc.to_string());
        }
        if spec.available {
            cmd.arg("--available");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.program.display()))?;
        let stdout = child.stdout.take().context("device stdout")?;
        let stdin = child.stdin.take();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let reports = reports.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let Ok(r) = serde_json::from_str::<Report>(&line) else {
                        continue;
                    };
                    let Ok(mut v) = reports.lock() else { return };
                    if v.len() < MAX_REPORTS {
                        v.push(r);
                    }
                }
            })
        };
        let mut p = Self {
            spec,
            child,
            stdin,
            reports,
            reader,
            next_tag: 1,
        };
        p.wait_for(Duration::from_secs(20), "ready", |r| {
            matches!(r, Report::Ready { .. }).then_some(())
        })
        .await?;
        Ok(p)
    }

    pub fn device(&self) -> DeviceId {
        self.spec.device
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Every report so far.
    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The first report `pick` accepts, waiting at most `timeout` (fails early if the
    /// process exited).
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl Fn(&Report) -> Option<T>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        loop {
            if let Some(t) = self
                .reports
                .lock()
                .ok()
                .and_then(|v| v.iter().find_map(&pick))
            {
                return Ok(t);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "device {} exited ({status}) while waiting for {what}; log: {}",
                    self.spec.device,
                    self.spec.log_file.display()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "device {}: no {what} within {timeout:?}; log: {}",
                    self.spec.device,
                    self.spec.log_file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn send(&mut self, cmd: &Command) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("device stdin closed")?;
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        stdin.write_all(&line)?;
        stdin.flush()?;
        Ok(())
    }

    /// Queue an op (does not wait); returns its tag.
    pub fn submit(&mut self, session: SessionId, op: TripOp) -> anyhow::Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&Command::Submit { tag, session, op })?;
        Ok(tag)
    }

    /// Wait for the op with `tag` to be committed.
    pub async fn wait_committed(
        &mut self,
        tag: u64,
        timeout: Duration,
    ) -> anyhow::Result<(OpId, VersionVector)> {
        let r = self
            .wait_for(timeout, &format!("commit of op tag {tag}"), |r| match r {
                Report::Committed {
                    tag: t,
                    op,
                    version,
                    ..
                } if *t == tag => Some(Ok((*op, version.clone()))),
                Report::Failed { tag: t, error } if *t == tag => Some(Err(error.clone())),
                _ => None,
            })
            .await?;
        r.map_err(|e| anyhow::anyhow!("device {}: op tag {tag} failed: {e}", self.spec.device))
    }

    /// Submit and wait for the commit.
    pub async fn submit_wait(
        &mut self,
        session: SessionId,
        op: TripOp,
        timeout: Duration,
    ) -> anyhow::Result<(OpId, VersionVector)> {
        let tag = self.submit(session, op)?;
        self.wait_committed(tag, timeout).await
    }

    /// The sessions the device holds now.
    pub async fn sessions(&mut self) -> anyhow::Result<Vec<Held>> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&Command::Sessions { tag })?;
        self.wait_for(Duration::from_secs(10), "sessions", |r| match r {
            Report::Sessions { tag: t, list } if *t == tag => Some(list.clone()),
            _ => None,
        })
        .await
    }

    /// The ops still queued on the device and its unacknowledged outcomes.
    pub async fn outcomes(&mut self) -> anyhow::Result<(Vec<(OpId, TripOp)>, Vec<Decided>)> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&Command::Outcomes { tag })?;
        self.wait_for(Duration::from_secs(10), "outcomes", |r| match r {
            Report::Outcomes {
                tag: t,
                queued,
                decided,
            } if *t == tag => Some((queued.clone(), decided.clone())),
            _ => None,
        })
        .await
    }

    /// Acknowledge outcomes (does not wait for the answer; returns the tag).
    pub fn acknowledge(&mut self, ops: Vec<OpId>) -> anyhow::Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.send(&Command::Acknowledge { tag, ops })?;
        Ok(tag)
    }

    /// How many reports so far `pick` accepts.
    pub fn count(&self, pick: impl Fn(&Report) -> bool) -> usize {
        self.reports
            .lock()
            .map(|v| v.iter().filter(|r| pick(r)).count())
            .unwrap_or(0)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Wait (bounded) until the device holds a session `pred` accepts.
    pub async fn wait_for_session(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Held) -> bool,
    ) -> anyhow::Result<Held> {
        let start = Instant::now();
        loop {
            if let Some(h) = self.sessions().await?.into_iter().find(|h| pred(h)) {
                return Ok(h);
            }
            if start.elapsed() > timeout {
                bail!(
                    "device {} did not hold the expected session within {timeout:?}",
                    self.spec.device
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: the app dies mid-whatever, its store as it was on disk. Returns every report
    /// it made.
    pub async fn kill(mut self) -> anyhow::Result<Vec<Report>> {
        let _ = kill(self.pid(), Signal::SIGKILL);
        self.child.wait()?;
        self.all_reports().await
    }

    /// Every report, once the reader has seen the end of the output of the exited process
    /// (bounded: the pipe is closed once the process is gone).
    async fn all_reports(&self) -> anyhow::Result<Vec<Report>> {
        let start = Instant::now();
        while !self.reader.is_finished() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("device {}: its output did not end", self.spec.device);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(self.reports())
    }

    /// SIGSTOP: a frozen app (its socket still open, nothing read or sent).
    pub fn freeze(&self) -> anyhow::Result<()> {
        kill(self.pid(), Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONT after [`DeviceProcess::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        kill(self.pid(), Signal::SIGCONT)?;
        Ok(())
    }

    /// A clean stop: close stdin, the process shuts its client down and exits (bounded,
    /// then SIGKILL). Returns every report it made.
    pub async fn shutdown(mut self) -> anyhow::Result<Vec<Report>> {
        let _ = kill(self.pid(), Signal::SIGCONT);
        self.stdin = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait()?.is_some() {
                return self.all_reports().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill().await
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Delete a device's store (the app is reinstalled). The device must not be running.
pub fn wipe_store(spec: &DeviceSpawn) -> std::io::Result<()> {
    lifeboat_server::process::wipe(&spec.store)
}
