//! The FFI core against real `lifeboat-server` processes on loopback: waits that end by
//! timeout or cancel leave the op queued (committed once later), pause/resume keeps the
//! store, rebind keeps the QUIC connection.

mod support;

use anyhow::{bail, ensure, Context};
use lifeboat_common::DeviceId;
use lifeboat_edge_ffi::core::Core;
use lifeboat_edge_ffi::settings::default_settings;
use lifeboat_edge_ffi::{CancelToken, EventKind, LifeboatError, Point, Settings};
use lifeboat_tests::Cluster;
use std::time::{Duration, Instant};
use support::hex;

const HERE: Point = Point {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};

fn settings(c: &Cluster, device: u64) -> Settings {
    let mut s = default_settings(
        device,
        hex(&c.keyring.device_token(DeviceId(device))),
        c.addrs().iter().map(|a| a.to_string()).collect(),
        lifeboat_server::region::Region::ca_path(&c.region_dir)
            .display()
            .to_string(),
        c.device_store(device).display().to_string(),
    );
    s.keep_alive_ms = lifeboat_tests::TEST_KEEPALIVE_MS;
    s.idle_timeout_ms = lifeboat_tests::TEST_IDLE_MS;
    s.connect_timeout_ms = 1_000;
    s
}

/// Poll events until one matches, bounded.
fn wait_event(
    core: &Core,
    timeout: Duration,
    pred: impl Fn(&lifeboat_edge_ffi::Event) -> bool,
) -> anyhow::Result<lifeboat_edge_ffi::Event> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(e) = core.poll_event(100)? {
            if pred(&e) {
                return Ok(e);
            }
        }
    }
    bail!("no matching event within {timeout:?}")
}

#[test]
fn an_op_whose_wait_timed_out_or_was_cancelled_is_committed_once_a_datacenter_is_up(
) -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    let core = Core::start(&settings(&c, 1))?;
    // No datacenter yet: the request is queued durably, the wait times out.
    let first = match core.request_trip(HERE, HERE, 2_000, None) {
        Err(LifeboatError::Timeout {
            session, op_seq, ..
        }) => (session, op_seq),
        other => bail!("expected a timeout, got {other:?}"),
    };
    ensure!(first.1 == 1, "the op was queued with seq 1: {first:?}");
    let token = std::sync::Arc::new(CancelToken::default());
    let t2 = token.clone();
    let canceller = std::thread::spawn(move || {
        // Long enough for the op to be queued (flushed) on a slow disk first.
        std::thread::sleep(Duration::from_millis(1_000));
        t2.cancel();
    });
    let second = match core.request_trip(HERE, HERE, 60_000, Some(&token)) {
        Err(LifeboatError::Cancelled { session, op_seq }) => (session, op_seq),
        other => bail!("expected a cancel, got {other:?}"),
    };
    canceller
        .join()
        .map_err(|_| anyhow::anyhow!("canceller panicked"))?;
    ensure!(second.1 == 1 && second.0 != first.0);
    // A cancelled token ends later waits at once, before anything is queued.
    match core.request_trip(HERE, HERE, 60_000, Some(&token)) {
        Err(LifeboatError::Cancelled { op_seq: 0, .. }) => {}
        other => bail!("expected an immediate cancel, got {other:?}"),
    }
    c.start(0)?;
    let mut committed = Vec::new();
    for _ in 0..2 {
        let e = wait_event(&core, Duration::from_secs(20), |e| {
            e.kind == EventKind::OpCommitted
        })?;
        committed.push((e.session, e.op_seq));
    }
    committed.sort();
    let mut expected = vec![first, second];
    expected.sort();
    ensure!(committed == expected, "{committed:?} != {expected:?}");
    let trips = core.sessions()?;
    ensure!(
        trips.len() == 2,
        "exactly the two queued trips exist: {trips:?}"
    );
    Ok(())
}

#[test]
fn rebind_moves_to_a_new_socket_and_keeps_the_quic_connection() -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let core = Core::start(&settings(&c, 1))?;
    ensure!(core.wait_connected(10_000)?.is_some(), "not connected");
    core.request_trip(HERE, HERE, 10_000, None)?;
    let before = core.stats();
    let addr = core.rebind()?;
    ensure!(
        addr != before.local_addr,
        "same socket after rebind: {addr}"
    );
    let commit = core
        .request_trip(HERE, HERE, 10_000, None)
        .context("request after the network change")?;
    let after = core.stats();
    ensure!(after.local_addr == addr);
    ensure!(
        after.connects == before.connects,
        "rebind reconnected ({} -> {} connects) instead of migrating",
        before.connects,
        after.connects
    );
    ensure!(core.trip(commit.session)?.is_some());
    Ok(())
}

#[test]
fn pause_releases_the_store_and_resume_continues_over_it() -> anyhow::Result<()> {
    let mut c = Cluster::new(1, &[])?;
    c.start(0)?;
    let core = Core::start(&settings(&c, 1))?;
    let first = core.request_trip(HERE, HERE, 10_000, None)?;
    core.pause()?;
    ensure!(core.is_paused());
    match core.request_trip(HERE, HERE, 1_000, None) {
        Err(LifeboatError::Paused) => {}
        other => bail!("expected Paused, got {other:?}"),
    }
    core.pause()?; // idempotent
    core.resume()?;
    ensure!(
        core.trip(first.session)?.is_some(),
        "the trip survived in the store"
    );
    let second = core.request_trip(HERE, HERE, 10_000, None)?;
    ensure!(second.session != first.session);
    ensure!(core.sessions()?.len() == 2);
    core.shutdown();
    match core.sessions() {
        Err(LifeboatError::Closed) => Ok(()),
        other => bail!("expected Closed after shutdown, got {other:?}"),
    }
}
