//! Operating a datacenter (issue 14): its HTTP endpoints scraped over real HTTP from a real
//! `lifeboat-server` process while real devices drive a trip through it.

use anyhow::{ensure, Context};
use lifeboat_common::TripOp;
use lifeboat_tests::trips::{submit, WAIT};
use lifeboat_tests::{route_point, wait_for_assignment, Cluster, PICKUP};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One GET (see [`lifeboat_tests::http`]).
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    lifeboat_tests::http(addr, "GET", path, None)
}

/// The samples of a Prometheus text page, by series (`name{labels}`).
fn samples(page: &str) -> BTreeMap<String, u64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Wait (bounded) until `/readyz` answers `want`; its body.
async fn wait_readyz(http: SocketAddr, want: u16) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let (code, body) = get(http, "/readyz")?;
        if code == want {
            return Ok(body);
        }
        ensure!(start.elapsed() < WAIT, "/readyz stayed {code}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback TCP address for the HTTP endpoint.
fn free_http_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}").parse()?)
}

fn sample(page: &BTreeMap<String, u64>, series: &str) -> anyhow::Result<u64> {
    page.get(series)
        .copied()
        .with_context(|| format!("no series {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_http_count_the_traffic_the_devices_saw_and_readyz_says_ready(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    let http = free_http_addr()?;
    c.start_with_args(0, &["--metrics-listen", &http.to_string()])?;
    let (code, body) = get(http, "/healthz")?;
    ensure!(code == 200 && body == "ok\n", "healthz: {code} {body:?}");
    wait_readyz(http, 200).await?;
    let before = samples(&get(http, "/metrics")?.1);
    let applied_before = sample(&before, "lifeboat_core_ops_applied_total{dc=\"1\"}")?;

    // A trip: the rider's request, the driver's arrival, start, 5 positions and completion.
    let driver = c.device(1000, true).await?;
    let rider = c.device(1, false).await?;
    let (session, _) = rider.request_trip(PICKUP, route_point(20)).await?;
    wait_for_assignment(&driver, WAIT).await?;
    let mut committed = 1u64;
    for op in [TripOp::Arrived, TripOp::StartTrip]
        .into_iter()
        .chain((1..=5).map(|k| TripOp::Location { at: route_point(k) }))
        .chain([TripOp::Complete])
    {
        submit(&driver, session, op).await?;
        committed += 1;
    }
    // The page is rendered from the status the datacenter publishes every 500 ms.
    let start = Instant::now();
    let page = loop {
        let page = samples(&get(http, "/metrics")?.1);
        let applied = sample(&page, "lifeboat_core_ops_applied_total{dc=\"1\"}")?;
        if applied >= applied_before + committed {
            break page;
        }
        ensure!(
            start.elapsed() < WAIT,
            "ops applied {applied}, the devices were told {committed} committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let applied = sample(&page, "lifeboat_core_ops_applied_total{dc=\"1\"}")?;
    ensure!(
        applied == applied_before + committed,
        "ops applied {applied}: {committed} were committed (and nothing was retried)"
    );
    ensure!(sample(&page, "lifeboat_core_sessions_created_total{dc=\"1\"}")? == 1);
    ensure!(sample(&page, "lifeboat_core_dispatched_total{dc=\"1\"}")? == 1);
    ensure!(sample(&page, "lifeboat_connections{dc=\"1\"}")? == 2);
    ensure!(sample(&page, "lifeboat_sessions{dc=\"1\"}")? == 1);
    ensure!(
        sample(&page, "lifeboat_active_sessions{dc=\"1\"}")? == 0,
        "the trip finished"
    );
    ensure!(sample(&page, "lifeboat_ready{dc=\"1\"}")? == 1);
    ensure!(sample(&page, "lifeboat_store_errors_total{dc=\"1\"}")? == 0);
    let (code, _) = get(http, "/nothing-here")?;
    ensure!(code == 404);
    // Readiness flips: the keyring file becomes unreadable (the datacenter keeps the keyring
    // it has, and says it is not ready), then comes back.
    let keyring = lifeboat_server::region::Region::keyring_path(&c.region_dir);
    let good = std::fs::read(&keyring)?;
    std::fs::write(&keyring, b"not a keyring")?;
    let body = wait_readyz(http, 503).await?;
    ensure!(body.contains("keyring"), "{body}");
    std::fs::write(&keyring, &good)?;
    wait_readyz(http, 200).await?;
    // Stopped: the endpoint goes with the datacenter.
    c.stop_and_read(0)?;
    ensure!(
        get(http, "/healthz").is_err(),
        "the endpoint outlived its datacenter"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_store_writes_fail_and_ready_again_after_while_trips_commit(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    let http = free_http_addr()?;
    c.specs[0]
        .extra_args
        .extend(["--metrics-listen".to_string(), http.to_string()]);
    // The 3rd to 6th batch writes fail: a disk that filled up and was cleared again.
    c.start_with_env(0, &[("LIFEBOAT_STORE_FAULT", "fail:3:4")])?;
    wait_readyz(http, 200).await?;
    let driver = c.device(1000, true).await?;
    let rider = c.device(1, false).await?;
    let (session, _) = rider.request_trip(PICKUP, route_point(20)).await?;
    wait_for_assignment(&driver, WAIT).await?;
    // The devices hold every digest: ops still commit while the datacenter's disk fails.
    for op in [TripOp::Arrived, TripOp::StartTrip]
        .into_iter()
        .chain((1..=4).map(|k| TripOp::Location { at: route_point(k) }))
    {
        submit(&driver, session, op).await?;
    }
    let body = wait_readyz(http, 503).await?;
    ensure!(body.contains("store write failed"), "{body}");
    let page = samples(&get(http, "/metrics")?.1);
    ensure!(
        sample(&page, "lifeboat_store_errors_total{dc=\"1\"}")? >= 1,
        "{page:?}"
    );
    ensure!(sample(&page, "lifeboat_ready{dc=\"1\"}")? == 0);
    // The disk works again: ready once the error window has passed with no new failure.
    submit(&driver, session, TripOp::Location { at: route_point(5) }).await?;
    wait_readyz(http, 200).await?;
    let page = samples(&get(http, "/metrics")?.1);
    ensure!(
        sample(&page, "lifeboat_store_errors_total{dc=\"1\"}")? == 4,
        "exactly the injected batches failed: {page:?}"
    );
    Ok(())
}
