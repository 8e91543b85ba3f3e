//! Planned failover (drain, issue 13): real `lifeboat-server` processes on loopback, real
//! edge clients with sled stores, real QUIC. A datacenter that gets SIGTERM, or an operator's
//! `POST /admin/drain`, tells its devices where to go; they move at once (no detection),
//! hold it off while it drains, and their trip goes on at the datacenter they were sent to.

use anyhow::ensure;
use lifeboat_common::{DatacenterId, SessionId, TripOp};
use lifeboat_edge::EdgeClient;
use lifeboat_tests::trips::{submit, WAIT};
use lifeboat_tests::{http, route_point, wait_all_on, wait_for_assignment, Cluster, PICKUP};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A driver and a rider of one assigned trip, both at dc1 (the first of their lists).
async fn trip_at_dc1(
    c: &Cluster,
    dcs: Vec<SocketAddr>,
) -> anyhow::Result<(EdgeClient, EdgeClient, SessionId)> {
    let driver = c.device_with(1000, true, dcs.clone()).await?;
    let rider = c.device_with(1, false, dcs).await?;
    let (session, _) = rider.request_trip(PICKUP, route_point(20)).await?;
    ensure!(wait_for_assignment(&driver, WAIT).await? == session);
    submit(&driver, session, TripOp::Arrived).await?;
    for d in [&driver, &rider] {
        ensure!(
            d.connected_dc() == Some(DatacenterId(1)),
            "{} is not at dc1",
            d.device()
        );
    }
    Ok((driver, rider, session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_moves_both_phones_of_a_trip_to_the_next_datacenter_by_telling_them(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, &[])?;
    c.start(0)?;
    c.start(1)?;
    let (driver, rider, session) = trip_at_dc1(&c, c.addrs()).await?;
    // SIGTERM, waiting for the exit: the drain, then the stop.
    tokio::task::block_in_place(|| c.terminate(0))?;
    let log = c.log(0);
    ensure!(
        log.contains("draining: moving every device"),
        "dc1 did not drain: {log}"
    );
    ensure!(log.contains("stopped cleanly"), "{log}");
    wait_all_on(&[driver.clone(), rider.clone()], 2, WAIT).await?;
    for d in [&driver, &rider] {
        ensure!(
            d.stats().drained == 1,
            "{} was not told to move (it found out by itself): {:?}\ndc1's log:\n{}",
            d.device(),
            d.stats(),
            c.log(0)
        );
    }
    // The trip goes on at dc2, from the devices' copies.
    submit(&driver, session, TripOp::StartTrip).await?;
    submit(&driver, session, TripOp::Location { at: route_point(1) }).await?;
    driver.shutdown().await;
    rider.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_drain_to_a_named_datacenter_sends_the_devices_there_not_to_their_next(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(3, &[])?;
    let token_file = c.path().join("admin.token");
    let token = lifeboat_server::admin::AdminToken::create(&token_file)?;
    let http_addr: SocketAddr = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    )
    .parse()?;
    let token_arg = token_file.display().to_string();
    c.start_with_args(
        0,
        &[
            "--admin-token-file",
            &token_arg,
            "--metrics-listen",
            &http_addr.to_string(),
        ],
    )?;
    c.start(1)?;
    c.start(2)?;
    let dcs = c.addrs();
    let (driver, rider, session) = trip_at_dc1(&c, dcs.clone()).await?;
    // A target that is not an address is refused, and nothing is drained.
    let (code, body) = http(
        http_addr,
        "POST",
        "/admin/drain?to=dc3",
        Some(token.secret()),
    )?;
    ensure!(code == 400, "{code} {body}");
    ensure!(c.is_up(0) && driver.connected_dc() == Some(DatacenterId(1)));

    let (code, body) = http(
        http_addr,
        "POST",
        &format!("/admin/drain?to={}", dcs[2]),
        Some(token.secret()),
    )?;
    ensure!(code == 202, "{code} {body}");
    if let Err(e) = wait_all_on(&[driver.clone(), rider.clone()], 3, WAIT).await {
        anyhow::bail!(
            "{e}: {:?} {:?}\ndc1's log:\n{}",
            driver.stats(),
            rider.stats(),
            c.log(0)
        );
    }
    for d in [&driver, &rider] {
        ensure!(
            d.stats().drained == 1,
            "{:?}\ndc1's log:\n{}",
            d.stats(),
            c.log(0)
        );
    }
    submit(&driver, session, TripOp::StartTrip).await?;
    // dc1 stops by itself once its devices are gone.
    let start = Instant::now();
    while !c.log(0).contains("stopped cleanly") {
        ensure!(start.elapsed() < WAIT, "dc1 did not stop: {}", c.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.shutdown().await;
    rider.shutdown().await;
    Ok(())
}
