//! The datacenter store (sled) on the hot path: persisting one sealed trip digest, without
//! and with the flush (`fsync`) that precedes the batch's replies, and a group commit of 64
//! digests with one flush (what the server does when ops arrive together).
//!
//! Run: `cargo bench -p lifeboat-server --bench store`. The flush figures depend on the disk.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::typical_trip;
use lifeboat_common::SessionId;
use lifeboat_server::store::DcStore;
use std::hint::black_box;

fn store(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    };
    let opened = match DcStore::open(&dir.path().join("dc"), 64 * 1024 * 1024) {
        Ok(o) => o,
        Err(e) => panic!("opening the store: {e}"),
    };
    let store = opened.store;
    let keyring = Keyring::generate();
    let digest = match typical_trip().seal(&keyring) {
        Ok(d) => d,
        Err(e) => panic!("sealing the sample: {e}"),
    };
    let mut n = 0u64;
    let mut next = move || {
        n += 1;
        (SessionId(n % 10_000), digest.clone())
    };
    let mut g = c.benchmark_group("dc_store");
    g.throughput(Throughput::Elements(1));
    g.bench_function("persist_1_no_flush", |b| {
        b.iter(|| black_box(store.persist(&[next()])))
    });
    g.bench_function("persist_1_flush", |b| {
        b.iter(|| black_box(store.persist(&[next()]).and_then(|()| store.flush())))
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("persist_64_flush", |b| {
        b.iter(|| {
            let batch: Vec<_> = (0..64).map(|_| next()).collect();
            black_box(store.persist(&batch).and_then(|()| store.flush()))
        })
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
