//! Sealing and opening a trip digest (XChaCha20-Poly1305 plus the bincode of header and
//! body), for the typical and the long trip of `lifeboat_common::samples`.
//!
//! Run: `cargo bench -p lifeboat-common --bench digest`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lifeboat_common::digest::DigestBody;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::{long_trip, typical_trip};
use lifeboat_common::TripState;
use std::hint::black_box;

fn digest(c: &mut Criterion) {
    let keyring = Keyring::generate();
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Elements(1));
    for (name, sample) in [("typical", typical_trip()), ("long", long_trip())] {
        let sealed = match sample.seal(&keyring) {
            Ok(s) => s,
            Err(e) => panic!("sealing the {name} sample: {e}"),
        };
        g.bench_function(format!("seal_{name}_trip"), |b| {
            b.iter(|| black_box(sample.seal(&keyring)))
        });
        g.bench_function(format!("open_{name}_trip"), |b| {
            b.iter(|| black_box(sealed.open::<TripState>(&keyring).map(|d: DigestBody<_>| d)))
        });
    }
    g.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
