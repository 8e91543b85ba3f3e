//! Fault injection for real datacenter processes: start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT,
//! restart on the same disk or a wiped one.
//!
//! Used by the end-to-end tests and the simulation harness. A datacenter process prints
//! `lifeboat-server dcN listening on ADDR` when it is ready; [`DcProcess::spawn`] waits for
//! that line (bounded) and keeps draining its output so the child never blocks on a pipe.
//!
//! Invariants: every wait here is bounded (ready 30 s, terminate 20 s then SIGKILL); a
//! [`DcProcess`] that is dropped while its process still runs SIGKILLs and reaps it, so a
//! failing test leaves no datacenter behind.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest [`DcProcess::terminate`] waits before SIGKILL: the default drain bound (30 s)
/// and the endpoint's close (10 s), with a margin.
pub const TERMINATE_WAIT: Duration = Duration::from_secs(50);

/// How to start one datacenter process.
#[derive(Clone, Debug)]
pub struct DcSpawn {
    /// The program: the `lifeboat-server` binary, or a program that runs the same CLI.
    pub program: PathBuf,
    /// Arguments before `serve` (e.g. a hidden subcommand of the program).
    pub prefix_args: Vec<String>,
    /// The datacenter id (`serve --dc`).
    pub dc: u16,
    /// The UDP address to listen on (`serve --listen`).
    pub listen: SocketAddr,
    /// The datacenter's data directory (`serve --data-dir`): its store and replica id.
    pub data_dir: PathBuf,
    /// The region directory (`serve --region`): keyring, CA and server certificate.
    pub region_dir: PathBuf,
    /// Arguments after the standard `serve` ones (e.g. limits or timings).
    pub extra_args: Vec<String>,
    /// Environment variables set for the process, on top of the inherited ones.
    pub env: Vec<(String, String)>,
    /// Where the process's stderr goes.
    pub log_file: PathBuf,
}

impl DcSpawn {
    /// Datacenter `dc` of a region on loopback, on a free UDP port, with its data directory
    /// `<work_dir>/dc<N>` and its log `<work_dir>/dc<N>.log`. No extra arguments yet.
    pub fn on_loopback(
        program: PathBuf,
        dc: u16,
        work_dir: &Path,
        region_dir: &Path,
    ) -> std::io::Result<Self> {
        Ok(Self {
            program,
            prefix_args: Vec::new(),
            dc,
            listen: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
            data_dir: work_dir.join(format!("dc{dc}")),
            region_dir: region_dir.to_path_buf(),
            extra_args: Vec::new(),
            env: Vec::new(),
            log_file: work_dir.join(format!("dc{dc}.log")),
        })
    }
}

/// Why a datacenter process could not be started, signalled or waited for.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be executed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program's path.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The process did not print its `listening on` line in time; it was killed.
    #[error("datacenter dc{dc} did not report ready within {secs} s (log: {log})")]
    NotReady {
        /// The datacenter id.
        dc: u16,
        /// How long it was given, in seconds.
        secs: u64,
        /// Its log file (stderr), which usually says why.
        log: String,
    },
    /// SIGSTOP or SIGCONT could not be sent ([`DcProcess::freeze`], [`DcProcess::thaw`]).
    #[error("signal: {0}")]
    Signal(#[from] nix::Error),
    /// Creating the log file or waiting for the process failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A running datacenter process.
pub struct DcProcess {
    /// How it was started; [`DcProcess::kill`] and [`DcProcess::terminate`] give it back
    /// for a restart.
    pub spec: DcSpawn,
    child: Child,
    /// The address the process reported it listens on.
    pub addr: SocketAddr,
}

/// Find the `lifeboat-server` binary: `$LIFEBOAT_SERVER_BIN`, or next to the running
/// executable (cargo puts test binaries in `target/<profile>/deps`).
pub fn find_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LIFEBOAT_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("lifeboat-server"), dir.join("../lifeboat-server")]
        .into_iter()
        .find(|p| p.is_file())
}

/// A free UDP port on 127.0.0.1 (bound and released: fine for tests on one machine).
pub fn free_udp_port() -> std::io::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

impl DcProcess {
    /// Start the process and wait (at most 30 s) until it listens.
    pub fn spawn(spec: DcSpawn) -> Result<Self, ProcessError> {
        if let Some(parent) = spec.log_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.prefix_args)
            .arg("serve")
            .arg("--dc")
            .arg(spec.dc.to_string())
            .arg("--listen")
            .arg(spec.listen.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--region")
            .arg(&spec.region_dir)
            .args(&spec.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Duration::from_secs(30);
        let addr = match rx.recv_timeout(deadline) {
            Ok(a) => a.parse().ok(),
            Err(_) => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProcessError::NotReady {
                dc: spec.dc,
                secs: deadline.as_secs(),
                log: spec.log_file.display().to_string(),
            });
        };
        Ok(Self { spec, child, addr })
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// SIGKILL and reap: the datacenter dies mid-whatever, its disk as it was.
    pub fn kill(mut self) -> Result<DcSpawn, ProcessError> {
        // A process that already exited cannot be signalled; that is fine.
        let _ = kill(self.pid(), Signal::SIGKILL);
        self.child.wait()?;
        Ok(self.spec.clone())
    }

    /// SIGTERM and wait (at most [`TERMINATE_WAIT`], then SIGKILL): a clean shutdown that
    /// drains the devices (30 s at most by default) and flushes the store.
    pub fn terminate(mut self) -> Result<DcSpawn, ProcessError> {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < TERMINATE_WAIT {
            if self.child.try_wait()?.is_some() {
                return Ok(self.spec.clone());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(self.pid(), Signal::SIGKILL);
        self.child.wait()?;
        Ok(self.spec.clone())
    }

    /// SIGSTOP: a frozen datacenter (alive to the kernel, silent to the devices).
    pub fn freeze(&self) -> Result<(), ProcessError> {
        kill(self.pid(), Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONT after [`DcProcess::freeze`].
    pub fn thaw(&self) -> Result<(), ProcessError> {
        kill(self.pid(), Signal::SIGCONT)?;
        Ok(())
    }

    /// Whether the process has exited (and how).
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait for the process to exit by itself (a crash point), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DcProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Delete a data directory (the disk is lost).
pub fn wipe(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
