//! Several QUIC endpoints per datacenter (`--endpoints`, `SO_REUSEPORT`, issue 13): one
//! `lifeboat-server` process serves one port from two UDP sockets; the kernel spreads the
//! devices over both, every device is served whichever socket it lands on, and the admission
//! bounds stay those of one datacenter.

use anyhow::ensure;
use lifeboat_common::wire::OpOutcome;
use lifeboat_common::{SessionId, TripOp};
use lifeboat_tests::arena::Arena;
use lifeboat_tests::{route_point, PICKUP};

/// Devices beside the honest pair (each its own UDP port, so its own hash).
const DEVICES: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_share_one_port_and_serve_every_device() -> anyhow::Result<()> {
    let arena = Arena::start(&["--endpoints", "2"]).await?;
    let mut conns = Vec::new();
    for i in 0..DEVICES {
        let dev = arena.raw(300 + i)?;
        let (mut c, _) = dev.hello(false, vec![]).await?;
        let (outcome, _) = c
            .submit(
                SessionId(3000 + i),
                1,
                TripOp::Request {
                    pickup: PICKUP,
                    dropoff: route_point(10),
                },
            )
            .await?;
        ensure!(outcome == OpOutcome::Applied, "device {i}: {outcome:?}");
        conns.push((dev, c));
    }
    // The status file is rewritten every 500 ms.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let stats = arena.stats()?;
    let per_endpoint: Vec<u64> = stats["handshakes_per_endpoint"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    println!("handshakes per endpoint: {per_endpoint:?}");
    ensure!(per_endpoint.len() == 2, "endpoints: {per_endpoint:?}");
    ensure!(
        per_endpoint.iter().all(|&n| n > 0),
        "the kernel sent every device to one socket: {per_endpoint:?}"
    );
    ensure!(
        per_endpoint.iter().sum::<u64>() == arena.stat("/handshakes")?,
        "per-endpoint counts do not add up"
    );
    ensure!(
        arena.stat("/connections")? >= DEVICES,
        "not every device is connected"
    );
    arena.honest_progress(1).await?;
    drop(conns);
    arena.finish().await
}
