//! Encoding and decoding the frames of the hot path: a device's `Submit` of a location op,
//! and the datacenter's `OpResult` carrying the new sealed digest and clear view (a `Push`
//! to the partner has the same body).
//!
//! Run: `cargo bench -p lifeboat-common --bench wire`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lifeboat_common::codec::{decode_exact, encode_frame, MAX_FRAME_BYTES};
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::typical_trip;
use lifeboat_common::wire::{ClientMsg, ServerMsg};
use lifeboat_common::Trip;
use std::hint::black_box;

fn frames(c: &mut Criterion) {
    let keyring = Keyring::generate();
    let sample = typical_trip();
    let digest = match sample.seal(&keyring) {
        Ok(d) => d,
        Err(e) => panic!("sealing the sample: {e}"),
    };
    let (submit, result) = sample.hot_path(digest);
    let submit_frame = encode_frame(&submit).unwrap_or_default();
    let result_frame = encode_frame(&result).unwrap_or_default();
    assert!(!submit_frame.is_empty() && !result_frame.is_empty());
    println!(
        "frame sizes: Submit(Location) {} bytes, OpResult(Applied, update) {} bytes",
        submit_frame.len(),
        result_frame.len()
    );
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_submit", |b| {
        b.iter(|| black_box(encode_frame(&submit)))
    });
    g.bench_function("decode_submit", |b| {
        b.iter(|| {
            black_box(decode_exact::<ClientMsg<Trip>>(
                &submit_frame[4..],
                MAX_FRAME_BYTES,
            ))
        })
    });
    g.bench_function("encode_op_result", |b| {
        b.iter(|| black_box(encode_frame(&result)))
    });
    g.bench_function("decode_op_result", |b| {
        b.iter(|| {
            black_box(decode_exact::<ServerMsg<Trip>>(
                &result_frame[4..],
                MAX_FRAME_BYTES,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
