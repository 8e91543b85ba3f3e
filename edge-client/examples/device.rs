//! A device on the command line: a rider who requests a trip, or a driver who drives the
//! trips dispatch gives it. Prints every event as one short line with its time, so a person
//! can watch a failover happen; after a restart it first prints the outcomes of ops the
//! previous run did not get to handle (and acknowledges them).
//!
//! ```text
//! cargo run -p lifeboat-edge --example device -- --device 1000 driver
//! cargo run -p lifeboat-edge --example device -- --device 1 rider
//! ```

use clap::{Parser, Subcommand};
use lifeboat_common::{DeviceId, GeoPoint, TripOp, TripPhase};
use lifeboat_edge::{ClientEvent, EdgeClient, EdgeConfig, StoreLocation};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// This device's id.
    #[arg(long)]
    device: u64,
    /// Datacenters in order of preference.
    #[arg(long = "dc", default_values = ["127.0.0.1:4433", "127.0.0.1:4434"])]
    datacenters: Vec<SocketAddr>,
    /// Region directory (for the CA and, for this demo, to derive the device credential).
    #[arg(long, default_value = "lifeboat-region")]
    region: PathBuf,
    /// Device store directory (default: device-<id>).
    #[arg(long)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Request one trip and follow it to the end.
    Rider,
    /// Offer yourself for dispatch and drive every trip you get.
    Driver {
        /// Location updates per trip.
        #[arg(long, default_value_t = 30)]
        steps: u32,
    },
}

const HERE: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // A real app ships its credential; the demo derives it from the region keyring.
    let keyring = lifeboat_common::keyring::Keyring::load(&a.region.join("keyring"))?;
    let device = DeviceId(a.device);
    let mut cfg = EdgeConfig::new(
        device,
        keyring.device_token(device),
        a.datacenters.clone(),
        std::fs::read(a.region.join("ca.pem"))?,
        StoreLocation::Path(
            a.store
                .unwrap_or_else(|| format!("device-{}", a.device).into()),
        ),
    );
    cfg.available = matches!(a.role, Role::Driver { .. });
    let client = EdgeClient::start(cfg).await?;
    let mut events = client.subscribe();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            // Op outcomes are printed by the code that submitted them.
            if !matches!(e.event, ClientEvent::OpResolved { .. }) {
                println!("{e}");
            }
        }
    });
    // Outcomes decided before this start that the last run did not handle (it was killed).
    let earlier = client.outcomes().await?;
    for o in &earlier {
        println!("from before the restart: {o}");
    }
    for (id, op) in client.queued_ops().await? {
        println!("still queued from before the restart: op {id} ({op:?})");
    }
    client
        .acknowledge(earlier.iter().map(|o| o.id).collect())
        .await?;
    match a.role {
        Role::Rider => {
            let dropoff = GeoPoint {
                lat_e6: HERE.lat_e6 + 10_000,
                lon_e6: HERE.lon_e6,
            };
            let (trip, c) = client.request_trip(HERE, dropoff).await?;
            client.acknowledge(vec![c.op]).await?;
            println!("requested trip {trip} (version {})", c.version);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = client.sessions().await?;
                if let Some(s) = s.iter().find(|s| s.session == trip) {
                    let driver = s.driver.map(|d| d.to_string()).unwrap_or("none yet".into());
                    println!(
                        "trip {trip}: {:?}, driver {driver}, {} m so far",
                        s.view.phase, s.view.distance_m
                    );
                    if s.finished {
                        println!("fare: {:?} cents", s.view.fare_cents);
                        break;
                    }
                }
            }
        }
        Role::Driver { steps } => loop {
            let s = client.sessions().await?;
            let Some(trip) = s
                .into_iter()
                .find(|s| !s.finished && s.role == Some(lifeboat_common::Role::Driver))
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let id = trip.session;
            // After a restart: what is done (the trip's committed view) or still queued (it
            // goes out by itself) is never sent again.
            let queued: Vec<TripOp> = client
                .queued_ops()
                .await?
                .into_iter()
                .filter(|(op, _)| op.session == id)
                .map(|(_, op)| op)
                .collect();
            let has = |want: &TripOp| queued.iter().any(|q| q == want);
            println!("driving trip {id} ({:?})", trip.view.phase);
            let mut todo = Vec::new();
            if trip.view.phase == TripPhase::Assigned && !has(&TripOp::Arrived) {
                todo.push(TripOp::Arrived);
            }
            if matches!(
                trip.view.phase,
                TripPhase::Assigned | TripPhase::DriverArrived
            ) && !has(&TripOp::StartTrip)
            {
                todo.push(TripOp::StartTrip);
            }
            for op in todo {
                let c = client.submit(id, op).await?;
                client.acknowledge(vec![c.op]).await?;
            }
            let sent = trip.view.location_updates
                + queued
                    .iter()
                    .filter(|q| matches!(q, TripOp::Location { .. }))
                    .count() as u32;
            for k in sent + 1..=steps {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let at = GeoPoint {
                    lat_e6: HERE.lat_e6 + k as i32 * 300,
                    lon_e6: HERE.lon_e6,
                };
                let c = client.submit(id, TripOp::Location { at }).await?;
                client.acknowledge(vec![c.op]).await?;
                println!(
                    "location {k}/{steps}: op {} committed at {}",
                    c.op, c.version
                );
            }
            if !has(&TripOp::Complete) {
                let c = client.submit(id, TripOp::Complete).await?;
                client.acknowledge(vec![c.op]).await?;
                println!("trip {id} completed at {}", c.version);
            }
        },
    }
    client.shutdown().await;
    Ok(())
}
