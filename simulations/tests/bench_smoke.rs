//! Smoke test of `lifeboat-sim bench` with tiny sizes: the run completes (real datacenter
//! process, real edge clients, the echo baseline, the footprint probes) and writes a sane
//! JSON report. Timing targets are measured by the full benchmark, never asserted here.

use std::process::Command;

#[test]
fn tiny_bench_run_completes_and_reports_positive_rates_and_sizes() {
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
            "100",
            "--seed",
            "5",
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
    assert_eq!(num(&["devices"]), 4.0);
    assert!(num(&["closed_loop", "ops_per_s"]) > 0.0);
    assert!(num(&["closed_loop", "latency_us_p99"]) > 0.0);
    assert!(num(&["echo", "ops_per_s"]) > 0.0);
    assert!(
        num(&["echo", "pushes_received"]) > 0.0,
        "the echo reaches the partner connection"
    );
    assert!(num(&["ratio_lifeboat_to_echo"]) > 0.0);
    let open = v["open_loop"].as_array().expect("open_loop is a list");
    assert_eq!(open.len(), 3, "25%, 50% and 100% of the maximum");
    for phase in open {
        assert!(phase["ops_committed"].as_u64().unwrap_or(0) > 0, "{phase}");
    }
    assert!(num(&["mobile_bytes_per_op"]) > 0.0);
    assert_eq!(num(&["server", "sessions_created"]), 100.0);
    assert!(num(&["edge", "process_rss_bytes_after"]) > 0.0);
    assert!(num(&["edge", "store_bytes_on_disk"]) > 0.0);
    let typical = num(&["digests", "digest_bytes_typical"]);
    let long = num(&["digests", "digest_bytes_long"]);
    assert!(typical > 0.0 && long >= typical);
    assert!(num(&["sizes", "reply_bytes"]) > num(&["sizes", "request_bytes"]));
}
