//! The datacenter core's two hot steps, without I/O:
//! - apply: `handle_submit` of a driver's location op on an assigned trip, then
//!   `poll_effects` (dedup check, application, version bump, reseal, reply and push built),
//!   in a core holding 1,000 live trips;
//! - restore: `handle_connect` of a device uploading the digest of a trip the core does not
//!   hold (authenticate and open, participant check, insert, persist entry, `Welcome`), 1,000
//!   devices into an empty core per iteration; criterion's rate is restored sessions/s on one
//!   core.
//!
//! Run: `cargo bench -p lifeboat-common --bench datacenter`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lifeboat_common::datacenter::{DatacenterCore, DcConfig};
use lifeboat_common::digest::SealedDigest;
use lifeboat_common::ids::ReplicaId;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::wire::OfferedCopy;
use lifeboat_common::{DatacenterId, DeviceId, GeoPoint, SessionId, Trip, TripOp};
use std::hint::black_box;

const TRIPS: u64 = 1_000;
const NOW_MS: u64 = 1_795_507_200_000;

fn rider(i: u64) -> DeviceId {
    DeviceId(1 + i)
}

fn driver(i: u64) -> DeviceId {
    DeviceId(1_000_000 + i)
}

fn session(i: u64) -> SessionId {
    SessionId(0x5151_0000_0000_0001 + 2 * i)
}

fn at(i: u64) -> GeoPoint {
    GeoPoint {
        lat_e6: 52_500_000 + (i % 1_000) as i32,
        lon_e6: 13_400_000,
    }
}

/// A core holding `TRIPS` assigned trips, both participants connected.
fn busy_core(keyring: &Keyring, replica: u32) -> DatacenterCore<Trip> {
    let mut core = DatacenterCore::new(
        DcConfig::new(DatacenterId(1), ReplicaId(replica)),
        keyring.clone(),
    );
    for i in 0..TRIPS {
        core.handle_connect(NOW_MS, driver(i), true, Vec::new());
        core.handle_connect(NOW_MS, rider(i), false, Vec::new());
        let request = TripOp::Request {
            pickup: at(i),
            dropoff: at(i + 1),
        };
        core.handle_submit(NOW_MS, rider(i), session(i), 1, request);
    }
    let _ = core.poll_effects();
    core
}

fn apply(c: &mut Criterion) {
    let keyring = Keyring::generate();
    let mut core = busy_core(&keyring, 7);
    assert_eq!(core.stats().dispatched, TRIPS, "every trip got a driver");
    let mut seq = 0u64;
    let mut g = c.benchmark_group("datacenter_core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("apply_location_op", |b| {
        b.iter(|| {
            // Round-robin over the trips; each driver's seqs go 1, 2, 3, ...
            let i = seq % TRIPS;
            let driver_seq = seq / TRIPS + 1;
            seq += 1;
            core.handle_submit(
                NOW_MS,
                driver(i),
                session(i),
                driver_seq,
                TripOp::Location { at: at(seq) },
            );
            black_box(core.poll_effects())
        })
    });
    g.finish();
}

fn restore(c: &mut Criterion) {
    let keyring = Keyring::generate();
    let mut source = busy_core(&keyring, 7);
    // One location op per trip so the digests carry both watermarks.
    for i in 0..TRIPS {
        source.handle_submit(
            NOW_MS,
            driver(i),
            session(i),
            1,
            TripOp::Location { at: at(i) },
        );
    }
    let digests: Vec<(DeviceId, SealedDigest)> = source
        .poll_effects()
        .persist
        .into_iter()
        .map(|(s, d)| (rider((s.0 - session(0).0) / 2), d))
        .collect();
    assert_eq!(digests.len() as u64, TRIPS);
    let mut g = c.benchmark_group("datacenter_core");
    g.throughput(Throughput::Elements(TRIPS));
    g.bench_function("restore_1000_sessions", |b| {
        b.iter_batched(
            || {
                let core = DatacenterCore::<Trip>::new(
                    DcConfig::new(DatacenterId(2), ReplicaId(9)),
                    keyring.clone(),
                );
                (core, digests.clone())
            },
            |(mut core, digests)| {
                for (device, digest) in digests {
                    core.handle_connect(
                        NOW_MS,
                        device,
                        false,
                        vec![OfferedCopy {
                            digest,
                            committed: true,
                            known_committed: Default::default(),
                            known_committed_driver: None,
                        }],
                    );
                }
                let fx = core.poll_effects();
                assert_eq!(fx.persist.len() as u64, TRIPS);
                black_box(fx)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, apply, restore);
criterion_main!(benches);
