//! Admission that queues instead of refusing (issue 13 #3), against a real server over real
//! QUIC: with one handshake slot and a queue, a burst of simultaneous handshakes all
//! complete and the `handshakes` limit is never hit; with no queue, the same burst is
//! refused in part (which shows that the burst really exceeds the one slot).

mod support;

use lifeboat_edge::{client_config, client_endpoint};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::{http, start_with};

const BURST: usize = 48;

/// `BURST` handshakes started at once; how many completed and how many were refused.
fn burst(dir: &Path, quic: SocketAddr) -> (usize, usize) {
    let ca = std::fs::read(dir.join("region").join("ca.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = client_config(&ca, Duration::from_secs(15), Duration::from_secs(45)).unwrap();
        let endpoint = client_endpoint(&[quic]).unwrap();
        let attempts: Vec<_> = (0..BURST)
            .map(|_| {
                let connecting = endpoint
                    .connect_with(cfg.clone(), quic, "localhost")
                    .unwrap();
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(10), connecting).await
                })
            })
            .collect();
        let (mut done, mut refused) = (0, 0);
        let mut conns = Vec::new();
        for a in attempts {
            match a.await.unwrap() {
                Ok(Ok(conn)) => {
                    done += 1;
                    conns.push(conn);
                }
                Ok(Err(e)) => {
                    assert!(
                        matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
                        "a refusal, not {e}"
                    );
                    refused += 1;
                }
                Err(_) => panic!("a handshake neither completed nor was refused in 10 s"),
            }
        }
        for c in conns {
            c.close(0u32.into(), b"done");
        }
        endpoint.wait_idle().await;
        (done, refused)
    })
}

/// The `handshakes` limit hits in `/metrics`.
fn handshake_limit_hits(http_addr: SocketAddr) -> u64 {
    // The status behind /metrics is published every 500 ms.
    std::thread::sleep(Duration::from_millis(1_200));
    let (code, body) = http(http_addr, "GET", "/metrics", None);
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with("lifeboat_limit_hits_total{") && l.contains("limit=\"handshakes\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no handshakes limit in\n{body}"))
}

#[test]
fn a_burst_beyond_the_handshake_slots_waits_in_the_queue_and_every_handshake_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, quic, http_addr) = start_with(
        dir.path(),
        None,
        &["--max-handshakes", "1", "--handshake-queue", "1024"],
    );
    let (done, refused) = burst(dir.path(), quic);
    let hits = handshake_limit_hits(http_addr);
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!((done, refused), (BURST, 0), "queued, not refused");
    assert_eq!(hits, 0, "the handshakes limit was never hit");
}

#[test]
fn without_a_queue_the_same_burst_is_refused_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, quic, http_addr) = start_with(
        dir.path(),
        None,
        &["--max-handshakes", "1", "--handshake-queue", "0"],
    );
    let (done, refused) = burst(dir.path(), quic);
    let hits = handshake_limit_hits(http_addr);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(done >= 1, "the slot serves someone");
    assert!(
        refused > 0,
        "one slot and no queue: some of {BURST} refused ({done} done)"
    );
    assert_eq!(hits, refused as u64, "each refusal counted");
}
