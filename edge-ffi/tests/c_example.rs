//! The C example (`examples/c/trip.c`), compiled with the system C compiler against the
//! checked-in header and the cdylib cargo built, run against two real `lifeboat-server`
//! processes on loopback; the primary is killed (SIGKILL, disk lost) mid-trip.

mod support;

use anyhow::{ensure, Context};
use std::path::Path;
use std::process::Command;
use support::*;

#[test]
fn c_example_rides_through_a_primary_datacenter_kill() -> anyhow::Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib_dir = cdylib_dir()?;
    let mut c = cluster()?;
    let exe = c.path().join("trip");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let build = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/c/trip.c"))
        .arg("-L")
        .arg(&lib_dir)
        .arg("-llifeboat_edge_ffi")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .with_context(|| format!("running the C compiler {cc:?} (install gcc)"))?;
    ensure!(
        build.status.success(),
        "compiling trip.c failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let mut cmd = Command::new(&exe);
    // Load the library the rpath names: cargo's LD_LIBRARY_PATH would otherwise win and may
    // hold an older build of it (the one `cargo build` left in the profile directory).
    cmd.args(example_args(&c, &c.path().join("devices")))
        .env_remove("LD_LIBRARY_PATH");
    let out = run_through_failover(cmd, &mut c)?;
    let trip = summary_field(&out, "trip")?;
    ensure!(summary_field(&out, "location_updates")? == u64::from(STEPS));
    ensure!(
        summary_field(&out, "driver_failovers")? >= 1,
        "the driver never reported a finished failover:\n{out}"
    );
    // The stall the driver's app is told of includes detection (it was the reconnect gap
    // alone, a few ms, for a wait of seconds).
    ensure!(
        summary_field(&out, "driver_stalled_ms_max")? >= lifeboat_tests::TEST_IDLE_MS / 2,
        "the reported failover stall leaves out detection:\n{out}"
    );
    ensure!(out.contains("rider changed network"), "no rebind:\n{out}");
    if let Some(f) = out.lines().find(|l| l.starts_with("footprint:")) {
        eprintln!("test| {f}");
    }
    check_backup_store(&mut c, trip)
}
