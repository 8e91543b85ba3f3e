//! The harness's own test: a small `failover` run end to end (real datacenter processes,
//! real clients), which must pass and write a complete JSON report.

use std::process::Command;

/// Run `lifeboat-sim` with `args`, `--seed seed` and a JSON report in `dir`; the run must
/// pass (exit 0). Returns the JSON report and the printed table.
fn run_passing(args: &[&str], seed: u64, dir: &std::path::Path) -> (serde_json::Value, String) {
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-sim"))
        .args(args)
        .args(["--seed", &seed.to_string(), "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "harness failed (seed {seed})\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (v, stdout)
}

#[test]
fn small_failover_run_passes_and_reports_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("report");
    let report_arg = report_dir.display().to_string();
    let (v, _) = run_passing(
        &[
            "failover",
            "--trips",
            "30",
            "--duration",
            "12",
            "--kill-at",
            "5",
            "--quiet",
            "--report",
            &report_arg,
        ],
        11,
        dir.path(),
    );
    for field in [
        "scenario",
        "seed",
        "trips_total",
        "trips_active_at_failure",
        "trips_restored",
        "trips_lost",
        "ops_committed",
        "ops_committed_lost",
        "ops_applied_twice",
        "versions_regressed",
        "tombstones_resurrected",
        "unreplicated_at_failure",
        "stall_ms_p50",
        "stall_ms_p99",
        "stall_ms_max",
        "felt_stall_ms_p50",
        "felt_stall_ms_p99",
        "felt_devices",
        "idle_reconnects",
        "detect_ms_p50",
        "restore_sessions_per_s",
        "edge_bytes_per_op",
        "digest_bytes_p50",
        "digest_bytes_max",
        "conflicts",
        "false_failovers",
        "waits",
        "wait_ms_p99",
        "passed",
    ] {
        assert!(v.get(field).is_some(), "JSON report lacks {field}");
    }
    assert_eq!(v["passed"], true);
    assert_eq!(v["seed"], 11);
    assert!(
        v["trips_active_at_failure"].as_u64().unwrap() > 0,
        "the kill must hit live trips"
    );
    assert_eq!(v["trips_restored"], v["trips_active_at_failure"]);
    // The devices of the live trips felt the failover (an idle device's reconnect is not a
    // stall, but a trip's is).
    assert!(
        v["felt_devices"].as_u64().unwrap_or(0) > 0,
        "felt_devices: {}",
        v["felt_devices"]
    );
    // The shadow restore ran on the primary before the kill and found every sampled trip
    // restorable from the phones (issue 14).
    assert!(
        v["shadow_samples_before_fault"].as_u64().unwrap() >= 10,
        "{}",
        v["shadow_samples_before_fault"]
    );
    assert_eq!(v["shadow_restorable_before_fault"], 1.0);
    assert_eq!(v["shadow_copies_behind_before_fault"], 0);
    // The backup's CPU per reconnected device and the bare quinn baseline beside it
    // (issue 13): measured from /proc, so present and positive.
    for field in [
        "backup_cpu_us_per_device",
        "bare_setup_cpu_us_full",
        "bare_setup_cpu_us_resumed",
        "backup_cpu_ratio_to_resumed",
    ] {
        assert!(
            v[field].as_f64().is_some_and(|x| x > 0.0),
            "{field}: {}",
            v[field]
        );
    }
    // The handshakes' share of the mobile bytes is measured, and is a share: every device
    // connected at least once, and the handshakes are part of the bytes counted.
    let handshake = v["edge_handshake_bytes_per_op"].as_f64().unwrap_or(-1.0);
    let total = v["edge_bytes_per_op"].as_f64().unwrap_or(0.0);
    assert!(
        handshake > 0.0 && handshake < total,
        "{handshake} of {total}"
    );
    // Path MTU discovery is off on both ends (its padded probes were most of a phone's
    // bytes), so no device sent a probe.
    assert_eq!(v["edge_mtu_probes_per_device"], 0.0);
    assert!(report_dir.join("report.md").exists());
    assert!(report_dir.join("failover-stall.svg").exists());
}

#[test]
fn impairment_flags_out_of_range_are_refused_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-sim"))
        .args(["failover", "--trips", "2", "--loss", "10", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loss must be a probability in 0..=1"),
        "{stderr}"
    );
}

#[test]
fn small_failover_run_over_a_lossy_slow_link_passes_and_reports_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = run_passing(
        &[
            "failover",
            "--trips",
            "10",
            "--duration",
            "10",
            "--kill-at",
            "4",
            "--loss",
            "0.05",
            "--delay-ms",
            "20",
            "--jitter-ms",
            "10",
            "--duplicate",
            "0.02",
            "--reorder",
            "0.02",
            "--quiet",
        ],
        12,
        dir.path(),
    );
    assert!(stdout.contains("device link (each way)"), "{stdout}");
    let n = &v["network"];
    assert_eq!(n["loss"], 0.05);
    assert_eq!(n["delay_ms"], 20);
    for counter in ["datagrams", "dropped", "delayed"] {
        assert!(
            n[counter].as_u64().unwrap_or(0) > 0,
            "seed 12: no {counter} in {n}"
        );
    }
    assert_eq!(v["passed"], true);
}

/// S13 end to end: the riders lose dc1 and the drivers dc2 for 15 s while both datacenters
/// run; the run must pass (nothing acknowledged lost, nothing applied twice) with no conflict
/// told to any device, and the split must really have happened (riders failed over away
/// from a datacenter that was up).
#[test]
fn small_partition_run_commits_on_one_side_only_and_reports_no_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = run_passing(
        &[
            "partition",
            "--trips",
            "24",
            "--duration",
            "28",
            "--kill-at",
            "5",
            "--quiet",
        ],
        13,
        dir.path(),
    );
    assert_eq!(v["passed"], true);
    assert_eq!(v["conflicts"], 0);
    assert_eq!(v["ops_committed_lost"], 0);
    assert!(
        v["false_failovers"].as_u64().unwrap() > 0,
        "the split made nobody fail over: {stdout}"
    );
}

/// A planned failover end to end: dc1 gets SIGTERM mid-traffic, tells its devices (in
/// waves) to move to dc2 and stops. The run must pass like a failover, every trip active at
/// the drain continuing at dc2, and the devices must have been told where to go (their
/// own count), not have found out by detection.
#[test]
fn small_drain_run_moves_every_device_by_telling_it_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (v, stdout) = run_passing(
        &[
            "drain",
            "--trips",
            "30",
            "--duration",
            "12",
            "--kill-at",
            "5",
            "--quiet",
        ],
        14,
        dir.path(),
    );
    assert_eq!(v["passed"], true);
    assert_eq!(v["scenario"], "drain");
    assert!(
        v["trips_active_at_failure"].as_u64().unwrap() > 0,
        "the drain must hit live trips"
    );
    assert_eq!(v["trips_restored"], v["trips_active_at_failure"]);
    // Every device connected to dc1 when the drain began was told where to go (a device
    // whose first connect to dc1 timed out under load started at dc2 and stayed there: it
    // is not dc1's to drain), and most devices were there.
    let drained = v["devices_drained"].as_u64().unwrap_or(0);
    let on_dc1 = v["devices_on_dc1_at_fault"].as_u64().unwrap_or(u64::MAX);
    let devices = v["devices"].as_u64().unwrap_or(0);
    assert!(
        drained >= on_dc1,
        "not every device at dc1 was told where to go ({drained} of {on_dc1}): {stdout}"
    );
    assert!(
        on_dc1 * 2 > devices,
        "{on_dc1} of {devices} at dc1: {stdout}"
    );
    assert_eq!(v["false_failovers"], 0);
}
