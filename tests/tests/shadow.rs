//! Shadow restore end to end (issue 14): a real `lifeboat-server` process samples its
//! sessions over the devices' real QUIC connections; honest devices (real edge clients, real
//! sled stores) answer with what their stores hold; a device whose store silently lost its
//! trip (a raw device speaking the wire by hand) answers that it holds nothing. The figures
//! are scraped from `/metrics` over HTTP.

use anyhow::{ensure, Context};
use lifeboat_common::wire::{ClientMsg, ServerMsg};
use lifeboat_common::{SessionId, TripOp};
use lifeboat_tests::raw::RawDevice;
use lifeboat_tests::trips::{submit, WAIT};
use lifeboat_tests::{route_point, wait_for_assignment, Cluster, PICKUP};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The numeric samples of a Prometheus text page, by series (`name{labels}`).
fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let (code, page) = lifeboat_tests::http(addr, "GET", "/metrics", None)?;
    ensure!(code == 200, "/metrics answered {code}");
    Ok(page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

fn value(page: &BTreeMap<String, f64>, series: &str) -> f64 {
    page.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_restore_finds_honest_trips_restorable_and_names_a_device_that_stopped_persisting(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let http: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    c.start_with_args(
        0,
        &[
            "--metrics-listen",
            &http.to_string(),
            "--shadow-interval-ms",
            "100",
        ],
    )?;

    // An honest trip on the road: both phones hold every change in their sled stores.
    let driver = c.device(1000, true).await?;
    let rider = c.device(1, false).await?;
    let (session, _) = rider.request_trip(PICKUP, route_point(20)).await?;
    wait_for_assignment(&driver, WAIT).await?;
    driver.set_available(false).await?;
    for op in [TripOp::Arrived, TripOp::StartTrip] {
        submit(&driver, session, op).await?;
    }
    let start = Instant::now();
    let page = loop {
        let page = scrape(http)?;
        if value(&page, "lifeboat_core_shadow_samples_total{dc=\"1\"}") >= 5.0 {
            break page;
        }
        ensure!(start.elapsed() < WAIT, "fewer than 5 samples: {page:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        value(&page, "lifeboat_shadow_restorable_ratio{dc=\"1\"}") == 1.0,
        "an honest trip judged unrestorable: {page:?}"
    );
    ensure!(value(&page, "lifeboat_core_shadow_copies_behind_total{dc=\"1\"}") == 0.0);
    ensure!(value(&page, "lifeboat_shadow_lagging_devices{dc=\"1\"}") == 0.0);

    // A rider whose store stopped persisting: it creates a trip (no driver is free, so it is
    // the trip's only participant) and answers every sample with "nothing held".
    let broken = RawDevice::new(77, &c.keyring, &c.ca_pem, c.addrs()[0])?;
    let (mut conn, _) = broken.hello(false, Vec::new()).await?;
    let lonely = SessionId(77_000);
    conn.send(&ClientMsg::Submit {
        session: lonely,
        seq: 1,
        op: TripOp::Request {
            pickup: PICKUP,
            dropoff: route_point(30),
        },
    })
    .await?;
    let named = "lifeboat_shadow_device_behind_total{dc=\"1\",device=\"77\"}";
    let start = Instant::now();
    let mut answered = 0u32;
    let page = loop {
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), conn.recv()).await {
            if let Some(ServerMsg::Sample { session }) = frame? {
                ensure!(
                    session == lonely,
                    "asked for a session it is not in: {session:?}"
                );
                conn.send(&ClientMsg::Sampled {
                    session,
                    copy: None,
                })
                .await?;
                answered += 1;
            }
        }
        let page = scrape(http)?;
        if value(&page, named) >= 2.0 {
            break page;
        }
        ensure!(
            start.elapsed() < WAIT,
            "device 77 never named after {answered} answers: {page:?}"
        );
    };
    let ratio = value(&page, "lifeboat_shadow_restorable_ratio{dc=\"1\"}");
    ensure!(ratio < 1.0, "the restorable fraction did not drop: {ratio}");
    ensure!(value(&page, "lifeboat_shadow_lagging_devices{dc=\"1\"}") >= 1.0);
    for honest in ["1", "1000"] {
        let series = format!("lifeboat_shadow_device_behind_total{{dc=\"1\",device=\"{honest}\"}}");
        ensure!(
            !page.contains_key(&series),
            "honest device {honest} named behind: {page:?}"
        );
    }
    let log = c.log(0);
    ensure!(
        log.contains("shadow restore") && log.contains("77"),
        "no log line names the device"
    );
    // The honest trip still commits: sampling changed nothing for it.
    submit(&driver, session, TripOp::Location { at: route_point(3) })
        .await
        .context("honest op after the samples")?;
    Ok(())
}
