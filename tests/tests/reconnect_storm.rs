//! A reconnect storm against a datacenter's handshake limit (the S1 thundering herd, small).
//!
//! A datacenter serves at most `--max-handshakes` QUIC handshakes at once; the rest wait in
//! its handshake queue and are refused (before any crypto) when the queue is full or their
//! wait runs out. This test runs with no queue, so that the refusals come at once. A
//! refused device must treat its datacenter as busy, not down:
//! it retries the same one after a jittered backoff instead of falling over to the next
//! datacenter in its list (which would split partners across datacenters for nothing).

use lifeboat_common::DatacenterId;
use lifeboat_tests::Cluster;
use std::time::Duration;

const DEVICES: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_at_its_handshake_limit_refuses_the_excess_and_devices_wait_for_it(
) -> anyhow::Result<()> {
    let stats = tempfile::tempdir()?;
    let stats_file = stats.path().join("dc1.status.json");
    let stats_arg = stats_file.to_string_lossy().to_string();
    let mut c = Cluster::new(2, &[])?;
    // dc1 (preferred) serves one handshake at a time and queues none (a full queue);
    // dc2 has the defaults.
    c.specs[0].extra_args.extend(
        [
            "--max-handshakes",
            "1",
            "--handshake-queue",
            "0",
            "--stats-file",
            stats_arg.as_str(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    c.start(0)?;
    c.start(1)?;

    // Everyone at once: a start opens the store and spawns the client, which connects in
    // the background, so the connects race for dc1's one handshake slot.
    let mut clients = Vec::new();
    for id in 1..=DEVICES {
        clients.push(c.device(id, false).await?);
    }
    let mut on_dc1 = 0;
    for client in &clients {
        match client.wait_connected(Duration::from_secs(30)).await {
            Some(DatacenterId(1)) => on_dc1 += 1,
            Some(other) => anyhow::bail!(
                "device {} went to {other:?} although dc1 only refused it as busy",
                client.device()
            ),
            None => anyhow::bail!("device {} never connected", client.device()),
        }
    }
    assert_eq!(on_dc1, DEVICES);

    // The limit was really hit (otherwise this test showed nothing): wait for a status write.
    let mut refused = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(bytes) = std::fs::read(&stats_file) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            refused = v["limits"]["handshakes"].as_u64().unwrap_or(0);
            if refused > 0 {
                break;
            }
        }
    }
    assert!(refused > 0, "dc1 never refused a handshake: {}", c.log(0));
    for client in clients {
        client.shutdown().await;
    }
    Ok(())
}
