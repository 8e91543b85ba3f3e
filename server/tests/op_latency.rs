//! The op latency and store flush histograms of `/metrics`, against a real server and a real
//! device: the ops the device had committed are counted, the buckets are cumulative and end
//! at the count, and the sum is no more than the ops' count times the last bound.

mod support;

use std::collections::BTreeMap;
use support::{http, request_trip, start};

/// The samples of one histogram family: `le` -> cumulative count, and `_count`, `_sum`.
fn histogram(metrics: &str, name: &str) -> (BTreeMap<String, u64>, u64, f64) {
    let mut buckets = BTreeMap::new();
    let (mut count, mut sum) = (None, None);
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(rest) = key.strip_prefix(&format!("{name}_bucket{{")) {
            let le = rest.split("le=\"").nth(1).unwrap().trim_end_matches("\"}");
            buckets.insert(le.to_string(), value.parse().unwrap());
        } else if key.starts_with(&format!("{name}_count{{")) {
            count = Some(value.parse().unwrap());
        } else if key.starts_with(&format!("{name}_sum{{")) {
            sum = Some(value.parse().unwrap());
        }
    }
    (
        buckets,
        count.unwrap_or_else(|| panic!("no {name}_count in\n{metrics}")),
        sum.unwrap_or_else(|| panic!("no {name}_sum")),
    )
}

#[test]
fn a_committed_op_is_counted_in_the_op_latency_and_store_flush_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, quic, http_addr) = start(dir.path(), None);
    request_trip(dir.path(), quic, 9);
    // The status behind /metrics is published every 500 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (buckets, count, sum) = loop {
        let (code, body) = http(http_addr, "GET", "/metrics", None);
        if code == 200 {
            let h = histogram(&body, "lifeboat_op_latency_seconds");
            if h.1 >= 1 {
                let flush = histogram(&body, "lifeboat_store_flush_seconds");
                assert!(flush.1 >= 1, "the trip's create was persisted and flushed");
                break h;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the op was never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(buckets.get("+Inf"), Some(&count), "{buckets:?}");
    let mut last = 0;
    let mut bounds: Vec<(f64, u64)> = buckets
        .iter()
        .filter(|(le, _)| *le != "+Inf")
        .map(|(le, n)| (le.parse::<f64>().unwrap(), *n))
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (le, n) in &bounds {
        assert!(
            *n >= last,
            "bucket le={le} holds {n} < {last}: not cumulative"
        );
        last = *n;
    }
    assert!(last <= count);
    assert!(
        sum > 0.0 && sum < count as f64 * 10.0,
        "sum {sum} s for {count} ops"
    );
    let _ = child.kill();
    let _ = child.wait();
}
