//! Smoke test of `lifeboat-sim bench` with tiny sizes: every phase runs (real datacenter
//! process, real edge clients: closed loop, the three open loops, the footprint loader and
//! edge probe, then the bare-echo baseline) and puts its figures in a sane JSON report.
//! Timing targets are measured by the full benchmark, never asserted here.
//!
//! The footprint loader is given 3 devices for 120 sessions, 40 creates each: beyond the
//! production create limits (16 active sessions and 10 creates a minute per device), as in
//! the documented run (10,000 sessions over 50 devices), so the run only completes if the
//! bench raises those limits for its datacenter.

use std::process::Command;

#[test]
fn tiny_bench_runs_every_phase_and_reports_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat-sim"))
        .args([
            "bench",
            "--devices",
            "4",
            "--duration",
            "1",
            "--warm-up",
            "0.5",
            "--footprint-sessions",
            "120",
            "--footprint-devices",
            "3",
            "--seed",
            "5",
            "--open-loop-rates",
            "40",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed (seed 5)\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let num = |path: &[&str]| -> f64 {
        let mut x = &v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing or not a number in {v}"))
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(num(&["devices"]), 4.0);
    // Start-up: the datacenter and the devices.
    assert!(num(&["server_rss_bytes_idle"]) > 0.0);
    assert!(num(&["server_bytes_per_connection"]) >= 0.0);
    // Closed loop.
    assert!(num(&["closed_loop", "ops_committed"]) > 0.0);
    assert!(num(&["closed_loop", "ops_per_s"]) > 0.0);
    assert!(num(&["closed_loop", "latency_us_p99"]) > 0.0);
    assert!(num(&["closed_loop", "server_cpu_us_per_op"]) > 0.0);
    // Bare echo baseline (the last phase).
    assert!(num(&["echo", "ops"]) > 0.0);
    assert!(num(&["echo", "ops_per_s"]) > 0.0);
    assert!(num(&["echo", "latency_us_p99"]) > 0.0);
    assert!(num(&["echo", "udp_bytes_per_op"]) > 0.0);
    assert!(
        num(&["echo", "pushes_received"]) > 0.0,
        "the echo reaches the partner connection"
    );
    assert!(num(&["ratio_lifeboat_to_echo"]) > 0.0);
    assert!(num(&["server_cpu_ratio_lifeboat_to_echo"]) > 0.0);
    let open = v["open_loop"].as_array().expect("open_loop is a list");
    assert_eq!(
        open.len(),
        4,
        "25%, 50% and 100% of the maximum, then the fixed rate asked for"
    );
    for phase in open {
        assert!(phase["ops_committed"].as_u64().unwrap_or(0) > 0, "{phase}");
    }
    assert_eq!(open[3]["target_ops_per_s"].as_f64(), Some(40.0));
    assert!(num(&["mobile_bytes_per_op"]) > 0.0);
    assert!(num(&["location_ops_committed"]) > 0.0);
    // Footprint loader: every session created, with the create limits raised (and said).
    assert_eq!(num(&["server", "sessions_created"]), 120.0);
    assert_eq!(num(&["server", "loader", "devices"]), 3.0);
    assert_eq!(num(&["server", "loader", "creates_per_device"]), 40.0);
    assert_eq!(num(&["server", "loader", "max_sessions_per_device"]), 40.0);
    assert_eq!(
        num(&["server", "loader", "session_creates_per_minute"]),
        40.0
    );
    assert!(num(&["server", "server_rss_bytes_after"]) > 0.0);
    assert!(num(&["server", "server_bytes_per_session"]) >= 0.0);
    assert!(
        stderr.contains("--max-sessions-per-device 40 --session-creates-per-minute 40"),
        "the run says which limits it raised\n{stderr}"
    );
    assert!(
        stdout.contains("footprint loader (raised create limits)"),
        "the summary says which limits were raised\n{stdout}"
    );
    assert!(
        stdout.contains("bare quinn echo ops/s"),
        "the summary reaches the baseline\n{stdout}"
    );
    // Edge probe.
    assert!(num(&["edge", "process_rss_bytes_after"]) > 0.0);
    assert!(num(&["edge", "store_bytes_on_disk"]) > 0.0);
    let typical = num(&["digests", "digest_bytes_typical"]);
    let long = num(&["digests", "digest_bytes_long"]);
    assert!(typical > 0.0 && long >= typical);
    assert!(num(&["sizes", "reply_bytes"]) > num(&["sizes", "request_bytes"]));
}
