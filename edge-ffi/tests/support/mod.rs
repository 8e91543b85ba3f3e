//! Shared by the example tests: find the built library, run an example program against a
//! two-datacenter cluster on loopback, kill -9 the primary mid-trip, check the backup.

#![allow(dead_code)]

use anyhow::{bail, ensure, Context};
use lifeboat_common::{DeviceId, SessionId, TripPhase};
use lifeboat_tests::Cluster;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const RIDER: u64 = 1;
pub const DRIVER: u64 = 1000;
/// Location updates the examples drive; the primary dies after the third.
pub const STEPS: u32 = 8;
pub const KILL_AFTER: &str = "location 3/";
/// Bound on one example run, failover included.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// File name of the shared library on this platform.
pub fn cdylib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "liblifeboat_edge_ffi.dylib"
    } else {
        "liblifeboat_edge_ffi.so"
    }
}

/// The directory holding the cdylib cargo built for this test run: the test binary lives
/// in `<target>/<profile>/deps`, the library in `deps` (and, after a `cargo build`, also in
/// `<target>/<profile>`), whatever `CARGO_TARGET_DIR` is. The newer of the two wins:
/// `cargo test` refreshes only the one in `deps`, so the other may be an older build.
pub fn cdylib_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test binary has no directory")?;
    let newest = [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .filter_map(|dir| {
            let modified = std::fs::metadata(dir.join(cdylib_name()))
                .and_then(|m| m.modified())
                .ok()?;
            Some((modified, dir.to_path_buf()))
        })
        .max_by_key(|(modified, _)| *modified);
    if let Some((_, dir)) = newest {
        return Ok(dir);
    }
    bail!(
        "{} not found next to {} (cargo builds it with the test targets of lifeboat-edge-ffi)",
        cdylib_name(),
        exe.display()
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running two-datacenter region with both datacenters up.
pub fn cluster() -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    Ok(c)
}

/// The example's arguments shared by the C and Python programs.
pub fn example_args(c: &Cluster, store: &Path) -> Vec<String> {
    let mut a = vec![
        "--ca".to_string(),
        lifeboat_server::region::Region::ca_path(&c.region_dir)
            .display()
            .to_string(),
        "--store".into(),
        store.display().to_string(),
        "--rider".into(),
        RIDER.to_string(),
        "--rider-token".into(),
        hex(&c.keyring.device_token(DeviceId(RIDER))),
        "--driver".into(),
        DRIVER.to_string(),
        "--driver-token".into(),
        hex(&c.keyring.device_token(DeviceId(DRIVER))),
        "--steps".into(),
        STEPS.to_string(),
        "--pause-ms".into(),
        "150".into(),
        "--keep-alive-ms".into(),
        lifeboat_tests::TEST_KEEPALIVE_MS.to_string(),
        "--idle-ms".into(),
        lifeboat_tests::TEST_IDLE_MS.to_string(),
    ];
    for addr in c.addrs() {
        a.push("--dc".into());
        a.push(addr.to_string());
    }
    a
}

/// Run an example; SIGKILL the primary (its disk lost too) once it prints `KILL_AFTER`.
/// Returns its standard output; fails if it does not exit 0 in time.
pub fn run_through_failover(mut cmd: Command, c: &mut Cluster) -> anyhow::Result<String> {
    let stderr_path = c.path().join("example.stderr");
    cmd.stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut out = String::new();
    let mut killed = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            eprintln!("example| {line}");
            if !killed && line.starts_with(KILL_AFTER) {
                c.kill(0, true)?;
                killed = true;
                eprintln!("test| killed dc1 (SIGKILL, disk lost)");
            }
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "example did not finish within {RUN_TIMEOUT:?}; output so far:\n{out}\nstderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        eprintln!("example| {line}");
        out.push_str(&line);
        out.push('\n');
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    ensure!(
        status.success(),
        "example failed ({status}); output:\n{out}\nstderr:\n{stderr}"
    );
    ensure!(killed, "the example never printed {KILL_AFTER:?}:\n{out}");
    Ok(out)
}

/// The value of `key=` in the example's `summary:` line.
pub fn summary_field(out: &str, key: &str) -> anyhow::Result<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("summary:"))
        .context("no summary line")?;
    let prefix = format!("{key}=");
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no {key} in {line:?}"))?;
    Ok(v.parse()?)
}

/// The backup datacenter's own store holds the trip completed, with every location update
/// the driver was told was committed, exactly once.
pub fn check_backup_store(c: &mut Cluster, trip: u64) -> anyhow::Result<()> {
    let stored = c.stop_and_read(1)?;
    let (header, body) = stored
        .iter()
        .find(|s| s.0.session == SessionId(trip))
        .with_context(|| format!("trip {trip} lost: not in the backup's store"))?;
    ensure!(header.tombstone, "trip {trip} not tombstoned at the backup");
    ensure!(body.state.phase == TripPhase::Completed);
    ensure!(
        body.state.location_updates == STEPS,
        "backup applied {} location updates, the driver committed {STEPS}",
        body.state.location_updates
    );
    ensure!(body.state.fare_cents.is_some());
    Ok(())
}

/// Run the bundled generator for one language into `out`.
pub fn generate(lib: &Path, language: &str, out: &Path) -> anyhow::Result<()> {
    let o = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["generate", "--no-format", "--library"])
        .arg(lib)
        .args(["--language", language, "--out-dir"])
        .arg(out)
        .output()
        .context("running uniffi-bindgen")?;
    ensure!(
        o.status.success(),
        "uniffi-bindgen --language {language} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    for _ in 0..1000 {
        let Some(d) = todo.pop() else { break };
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                found.push(p);
            }
        }
    }
    found
}
