//! Representative trip digests, for the benchmarks and the size figures in `BENCHMARKS.md`.
//!
//! Two shapes, both built with the real types and sealed with the real code:
//! - [`typical_trip`]: a trip on its way, as a datacenter that never failed over holds it:
//!   one version slot, both participants' watermarks, about 25 location updates, epoch-ms
//!   timestamps (what the server really stores, and the widest varints of the state);
//! - [`long_trip`]: the largest live trip the model produces in practice: three hours on
//!   trip, one location report a second (10,800 of them), after three failovers (four
//!   version slots), with watermarks past ten thousand ops.
//!
//! The trip state is fixed-size apart from varint widths, and the dedup watermark is 16 bytes
//! a device whatever the trip length (see [`crate::dedup`]), so the long trip is only a few
//! bytes larger than the typical one: the digest does not grow with the trip.

use crate::codec::{encode, CodecError};
use crate::dedup::DedupEntry;
use crate::digest::{DigestBody, DigestHeader, SealError, SealedDigest};
use crate::ids::{DeviceId, ReplicaId, Role, SessionId};
use crate::keyring::Keyring;
use crate::trip::{fare_cents, GeoPoint, TripPhase, TripState};
use crate::trip::{Trip, TripOp};
use crate::version::VersionVector;
use crate::wire::{ClientMsg, OpOutcome, ServerMsg, SessionUpdate};

/// A trip's digest before sealing.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleTrip {
    /// The clear header the digest would carry.
    pub header: DigestHeader,
    /// The state and watermarks to seal.
    pub body: DigestBody<TripState>,
}

/// 2026-11-24 08:00 UTC in ms since the epoch: timestamps the size of real ones.
pub const SAMPLE_EPOCH_MS: u64 = 1_795_507_200_000;

const PICKUP: GeoPoint = GeoPoint {
    lat_e6: 52_520_008,
    lon_e6: 13_404_954,
};
const DROPOFF: GeoPoint = GeoPoint {
    lat_e6: 52_507_461,
    lon_e6: 13_390_411,
};

fn watermark(device: DeviceId, last_seq: u64) -> DedupEntry {
    let mut d = DedupEntry::new(device);
    for _ in 0..last_seq {
        d.record(true);
    }
    d
}

fn version(slots: &[(u32, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (replica, count) in slots {
        for _ in 0..*count {
            // At most 16 slots and counts far from u64::MAX: cannot fail.
            let _ = v.bump(ReplicaId(*replica));
        }
    }
    v
}

/// A trip on its way at a datacenter that never failed over (see the module docs).
pub fn typical_trip() -> SampleTrip {
    let rider = DeviceId(4_711);
    let driver = DeviceId(1_004_711);
    let updates = 25u32;
    SampleTrip {
        header: DigestHeader {
            session: SessionId(0x9f3c_21d4_7a10_5e4b),
            version: version(&[(0x5a17_c0de, 30)]),
            rider,
            driver: Some(driver),
            tombstone: false,
        },
        body: DigestBody {
            state: TripState {
                phase: TripPhase::OnTrip,
                pickup: PICKUP,
                dropoff: DROPOFF,
                requested_ms: SAMPLE_EPOCH_MS,
                last_position: Some(GeoPoint {
                    lat_e6: 52_514_200,
                    lon_e6: 13_398_100,
                }),
                started_ms: SAMPLE_EPOCH_MS + 240_000,
                duration_ms: 25_000,
                distance_m: 1_180,
                location_updates: updates,
                fare_cents: None,
                cancelled_by: None,
            },
            dedup: vec![
                watermark(rider, 1),
                watermark(driver, 2 + u64::from(updates)),
            ],
        },
    }
}

/// Three hours on trip, a location a second, after three failovers (see the module docs).
pub fn long_trip() -> SampleTrip {
    let rider = DeviceId(4_294_967_311);
    let driver = DeviceId(8_589_934_609);
    let updates = 3 * 3_600u32;
    let driver_ops = 2 + u64::from(updates);
    SampleTrip {
        header: DigestHeader {
            session: SessionId(u64::MAX - 12_345),
            version: version(&[
                (0x1000_0001, 4_000),
                (0x7000_0002, 3_000),
                (0xa000_0003, 2_000),
                (0xf000_0004, driver_ops + 2 - 9_000),
            ]),
            rider,
            driver: Some(driver),
            tombstone: false,
        },
        body: DigestBody {
            state: TripState {
                phase: TripPhase::OnTrip,
                pickup: PICKUP,
                dropoff: GeoPoint {
                    lat_e6: -33_868_820,
                    lon_e6: 151_209_296,
                },
                requested_ms: SAMPLE_EPOCH_MS,
                last_position: Some(GeoPoint {
                    lat_e6: -33_868_000,
                    lon_e6: 151_209_000,
                }),
                started_ms: SAMPLE_EPOCH_MS + 300_000,
                duration_ms: u64::from(updates) * 1_000,
                distance_m: 180_000,
                location_updates: updates,
                fare_cents: Some(fare_cents(180_000, u64::from(updates) * 1_000)),
                cancelled_by: Some(Role::Rider),
            },
            dedup: vec![watermark(rider, 2), watermark(driver, driver_ops)],
        },
    }
}

/// The seal time of the samples: 2026-12-02, so the seal time costs what it costs today.
pub const SAMPLE_SEALED_AT_MS: u64 = 1_796_000_000_000;

impl SampleTrip {
    /// Seal under the keyring's active key, stamped [`SAMPLE_SEALED_AT_MS`].
    pub fn seal(&self, keyring: &Keyring) -> Result<SealedDigest, SealError> {
        SealedDigest::seal(
            keyring,
            self.header.clone(),
            &self.body,
            SAMPLE_SEALED_AT_MS,
        )
    }

    /// The hot path's messages for this trip: the driver's `Submit` of a location op, and
    /// the datacenter's `OpResult` answering it with the new digest (a partner's `Push`
    /// carries the same update).
    pub fn hot_path(&self, digest: SealedDigest) -> (ClientMsg<Trip>, ServerMsg<Trip>) {
        const SEQ: u64 = 27;
        let submit = ClientMsg::Submit {
            session: self.header.session,
            seq: SEQ,
            op: TripOp::Location {
                at: GeoPoint {
                    lat_e6: 52_514_300,
                    lon_e6: 13_398_050,
                },
            },
        };
        let result = ServerMsg::OpResult {
            session: self.header.session,
            seq: SEQ,
            outcome: OpOutcome::Applied,
            update: Some(SessionUpdate {
                digest,
                view: self.body.state.clone(),
                your_last_seq: SEQ,
                your_applied_bits: u64::MAX,
                committed: true,
                ack: false,
            }),
        };
        (submit, result)
    }

    /// Encoded header plus encoded body: what a digest would be without sealing.
    pub fn plain_bytes(&self) -> Result<usize, CodecError> {
        Ok(encode(&self.header)?.len() + encode(&self.body)?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_seal_open_and_stay_within_the_digest_targets() {
        let k = Keyring::generate();
        for sample in [typical_trip(), long_trip()] {
            let sealed = sample.seal(&k).unwrap();
            let opened: DigestBody<TripState> = sealed.open(&k).unwrap();
            assert_eq!(opened, sample.body);
            let size = sealed.encoded_len();
            let overhead = size - sample.plain_bytes().unwrap();
            assert!(size <= 512, "sealed digest of {size} bytes");
            assert!(overhead <= 48, "sealing overhead of {overhead} bytes");
        }
    }

    #[test]
    fn long_trip_is_larger_than_the_typical_one() {
        let k = Keyring::generate();
        let typical = typical_trip().seal(&k).unwrap().encoded_len();
        let long = long_trip().seal(&k).unwrap().encoded_len();
        assert!(long > typical, "long {long} vs typical {typical}");
    }
}
