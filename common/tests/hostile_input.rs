//! Property tests and a stable-Rust fuzz loop for the entry points a hostile peer reaches:
//! frame decoding, digest opening and the datacenter core's message handling (the async
//! frame reader's properties are in `lifeboat-frame-io`).
//!
//! - The proptests run in CI with a modest number of cases (fast).
//! - `LIFEBOAT_FUZZ_CASES=N` raises the number of proptest cases of every property.
//! - `LIFEBOAT_FUZZ_ITERS=N` runs the random-bytes loop for N iterations per target (default
//!   2,000 in CI), with `LIFEBOAT_FUZZ_SEED` to replay a run; the seed is printed. For
//!   example: `LIFEBOAT_FUZZ_ITERS=2000000 cargo test --release -p lifeboat-common --test
//!   hostile_input -- --nocapture random_bytes_loop`.
//! - `fuzz/` holds cargo-fuzz targets (nightly) that call the same functions.

use lifeboat_common::codec::{decode_exact, encode, encode_frame, MAX_FRAME_BYTES};
use lifeboat_common::digest::SealedDigest;
use lifeboat_common::wire::{ClientMsg, OfferedCopy};
use lifeboat_common::{DeviceId, GeoPoint, SessionId, Trip, TripOp, VersionVector};
use lifeboat_testkit::fuzz_targets::{self, core_script, digest_bytes, fixed_keyring, frame_bytes};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn cases(default: u32) -> u32 {
    std::env::var("LIFEBOAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // No persistence file: CI runs from a fresh clone; failures print the input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_point() -> impl Strategy<Value = GeoPoint> {
    (any::<i32>(), any::<i32>()).prop_map(|(lat_e6, lon_e6)| GeoPoint { lat_e6, lon_e6 })
}

fn arb_op() -> impl Strategy<Value = TripOp> {
    prop_oneof![
        (arb_point(), arb_point())
            .prop_map(|(pickup, dropoff)| TripOp::Request { pickup, dropoff }),
        Just(TripOp::Arrived),
        Just(TripOp::StartTrip),
        arb_point().prop_map(|at| TripOp::Location { at }),
        Just(TripOp::Complete),
        Just(TripOp::Cancel),
    ]
}

fn arb_client_msg() -> impl Strategy<Value = ClientMsg<Trip>> {
    let keyring = fixed_keyring();
    let digest = fuzz_targets::genuine_digest(&keyring);
    prop_oneof![
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<bool>(),
            0..4usize,
            any::<bool>()
        )
            .prop_map(move |(d, token, available, n, more)| ClientMsg::Hello {
                device: DeviceId(d),
                token,
                available,
                digests: vec![
                    OfferedCopy {
                        digest: digest.clone(),
                        committed: more,
                        known_committed: Default::default(),
                        known_committed_driver: None,
                    };
                    n
                ],
                more,
            }),
        (any::<u64>(), any::<u64>(), arb_op()).prop_map(|(s, seq, op)| ClientMsg::Submit {
            session: SessionId(s),
            seq,
            op
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(s, certified)| ClientMsg::Ack {
            session: SessionId(s),
            version: VersionVector::new(),
            certified,
        }),
        any::<bool>().prop_map(|available| ClientMsg::SetAvailable { available }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_decode_to_a_message_or_a_typed_error(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        frame_bytes(&data);
    }

    #[test]
    fn valid_frames_round_trip_and_every_cut_of_one_is_refused(msg in arb_client_msg(), cut in any::<prop::sample::Index>()) {
        let frame = encode_frame(&msg).unwrap();
        let back: ClientMsg<Trip> = decode_exact(&frame[4..], MAX_FRAME_BYTES).unwrap();
        prop_assert_eq!(&back, &msg);
        // Any strict prefix of the body is refused, never misread as another message.
        let body = &frame[4..];
        let at = cut.index(body.len());
        prop_assert!(decode_exact::<ClientMsg<Trip>>(&body[..at], MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn flipped_bytes_of_a_valid_frame_never_panic(msg in arb_client_msg(), flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..8)) {
        let mut body = encode(&msg).unwrap();
        for (i, x) in flips {
            let at = i.index(body.len());
            body[at] ^= x;
        }
        frame_bytes(&body);
    }

    #[test]
    fn digest_from_any_bytes_never_opens_and_a_changed_genuine_one_never_opens(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        digest_bytes(&data);
    }

    #[test]
    fn any_field_change_of_a_sealed_digest_is_refused(field in 0u8..6, x in 1u8..) {
        let keyring = fixed_keyring();
        let mut d = fuzz_targets::genuine_digest(&keyring);
        match field {
            0 => {
                let at = usize::from(x) % d.ciphertext.len();
                d.ciphertext[at] ^= x;
            }
            1 => d.nonce[usize::from(x) % 24] ^= x,
            2 => d.header.session = SessionId(d.header.session.0 ^ u64::from(x)),
            3 => d.header.rider = DeviceId(d.header.rider.0 ^ u64::from(x)),
            4 => d.header.tombstone = !d.header.tombstone,
            _ => d.key_id ^= u32::from(x),
        }
        prop_assert!(d.open::<lifeboat_common::TripState>(&keyring).is_err());
    }

    #[test]
    fn datacenter_core_keeps_the_contract_under_any_device_script(script in proptest::collection::vec(any::<u8>(), 0..1_500)) {
        let _ = core_script(&script);
    }
}

/// Replay one core script (`LIFEBOAT_FUZZ_REPLAY=1,2,3`, with `LIFEBOAT_FUZZ_TRACE=1` to
/// print every step): how a failure found by the loop or by cargo-fuzz is debugged.
#[test]
fn replay_core_script() {
    let Ok(list) = std::env::var("LIFEBOAT_FUZZ_REPLAY") else {
        return;
    };
    let script: Vec<u8> = list
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let stats = core_script(&script);
    println!("replayed {} bytes: {stats:?}", script.len());
}

/// The long-running stable fuzz loop (see the module docs): random and mutated inputs for
/// every target. Prints how many executions ran and the seed.
#[test]
fn random_bytes_loop() {
    let iters: u64 = std::env::var("LIFEBOAT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("LIFEBOAT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("random_bytes_loop: {iters} iterations per target, LIFEBOAT_FUZZ_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    // Seeds for mutation: valid frames and a genuine digest.
    let keyring = fixed_keyring();
    let digest = fuzz_targets::genuine_digest(&keyring);
    let corpus: Vec<Vec<u8>> = vec![
        encode(&ClientMsg::<Trip>::Hello {
            device: DeviceId(1),
            token: keyring.device_token(DeviceId(1)),
            available: true,
            digests: vec![OfferedCopy {
                digest: digest.clone(),
                committed: true,
                known_committed: Default::default(),
                known_committed_driver: None,
            }],
            more: false,
        })
        .unwrap(),
        encode(&ClientMsg::<Trip>::Submit {
            session: SessionId(1),
            seq: 1,
            op: TripOp::Location {
                at: GeoPoint {
                    lat_e6: 1,
                    lon_e6: 2,
                },
            },
        })
        .unwrap(),
        encode::<SealedDigest>(&digest).unwrap(),
    ];
    let start = std::time::Instant::now();
    let mut reached = lifeboat_common::datacenter::DcStats::default();
    let mut input = Vec::new();
    for i in 0..iters {
        input.clear();
        if i % 2 == 0 {
            let len = rng.random_range(0..512);
            input.extend((0..len).map(|_| rng.random::<u8>()));
        } else {
            input.extend_from_slice(&corpus[rng.random_range(0..corpus.len())]);
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..input.len());
                input[at] ^= rng.random_range(1..=255u8);
            }
        }
        let run = std::panic::catch_unwind(|| {
            frame_bytes(&input);
            digest_bytes(&input);
        });
        if run.is_err() {
            panic!("seed {seed} iteration {i}: input {input:?}");
        }
        // Core scripts are slower: a shorter random script on every iteration.
        let script: Vec<u8> = (0..rng.random_range(0..2_000))
            .map(|_| rng.random())
            .collect();
        match std::panic::catch_unwind(|| core_script(&script)) {
            Ok(stats) => fuzz_targets::add_stats(&mut reached, &stats),
            Err(_) => panic!("seed {seed} iteration {i}: core script {script:?}"),
        }
    }
    println!(
        "random_bytes_loop: {} executions ({iters} x 3 targets) in {:.1} s, no failure",
        iters * 3,
        start.elapsed().as_secs_f64()
    );
    println!("random_bytes_loop: core scripts reached {reached:?}");
}
