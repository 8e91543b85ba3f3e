//! Fixtures for Lifeboat's end-to-end tests: a region directory, real `lifeboat-server`
//! processes on loopback, and real edge clients with sled stores on disk.
//!
//! - [`Cluster`] (from `lifeboat-testkit`): the region and its datacenter processes;
//!   SIGKILL, restart, and (in [`dc_faults`], also from the testkit) SIGSTOP/SIGCONT and
//!   store damage;
//! - [`trips`]: the trip workload and the drivers' ledgers; [`check`]: the ledgers judged
//!   against the datacenters' stores by the testkit's history checker, and the devices'
//!   held versions watched while a test runs;
//! - [`device_process`]: a device in a process of its own (SIGKILL, SIGSTOP, wipe);
//!   [`tunnel`]: a device's network path that can be cut (offline);
//! - [`arena`], [`raw`]: the hostile-client fixtures; [`seed`]: seeds and replay.
//!
//! Everything lives in one temporary directory per test; every wait is bounded.

#![forbid(unsafe_code)]

pub mod arena;
pub mod check;
pub mod device_process;
pub mod raw;
pub mod seed;
pub mod trips;
pub mod tunnel;

use anyhow::{bail, ensure, Context};
use lifeboat_common::{DatacenterId, GeoPoint, SessionId, TripPhase};
use lifeboat_edge::{EdgeClient, SessionSnapshot};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use lifeboat_server::process;
/// The one cluster fixture (the region and its datacenter processes), from the testkit.
pub use lifeboat_testkit::cluster::{server_binary, Cluster, TEST_IDLE_MS, TEST_KEEPALIVE_MS};
pub use lifeboat_testkit::dc_faults;

pub const PICKUP: GeoPoint = lifeboat_testkit::geo::CITY_CENTER;

/// A point `step` small steps north of the pickup (about 11 m each).
pub fn route_point(step: u32) -> GeoPoint {
    GeoPoint {
        lat_e6: PICKUP.lat_e6 + (step as i32) * 100,
        lon_e6: PICKUP.lon_e6,
    }
}

/// Wait (bounded) until the device holds a session in one of `phases`.
pub async fn wait_for_session(
    client: &EdgeClient,
    timeout: Duration,
    pred: impl Fn(&SessionSnapshot) -> bool,
) -> anyhow::Result<SessionSnapshot> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(s) = client.sessions().await?.into_iter().find(|s| pred(s)) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "device {} did not see the expected session within {timeout:?}",
        client.device()
    )
}

/// The assigned, unfinished trip a driver holds.
pub async fn wait_for_assignment(
    driver: &EdgeClient,
    timeout: Duration,
) -> anyhow::Result<SessionId> {
    let s = wait_for_session(driver, timeout, |s| {
        !s.finished && s.view.phase == TripPhase::Assigned
    })
    .await?;
    Ok(s.session)
}

/// Wait (bounded) until every device is connected to datacenter `dc`.
pub async fn wait_all_on(devices: &[EdgeClient], dc: u16, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !devices
        .iter()
        .all(|d| d.connected_dc() == Some(DatacenterId(dc)))
    {
        ensure!(
            start.elapsed() < timeout,
            "devices not all on dc{dc} within {timeout:?}: {:?}",
            devices.iter().map(|d| d.connected_dc()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// One HTTP/1.1 request over a fresh TCP connection (5 s timeouts), with a bearer token if
/// given: (status code, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}
