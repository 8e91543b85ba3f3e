//! The one city every workload drives in: its centre, and random points in a box around it.
//!
//! Invariant: [`point_near`] draws exactly two values from the generator (latitude, then
//! longitude), so a seeded workload's choices do not depend on where it is called from.

use lifeboat_common::GeoPoint;
use rand::Rng;

/// The centre of the city (Berlin), where the end-to-end tests' trips start.
pub const CITY_CENTER: GeoPoint = GeoPoint {
    lat_e6: 52_520_000,
    lon_e6: 13_405_000,
};

/// A point less than `lat_e6` / `lon_e6` millionths of a degree from the centre.
pub fn point_near(rng: &mut impl Rng, lat_e6: i32, lon_e6: i32) -> GeoPoint {
    GeoPoint {
        lat_e6: CITY_CENTER.lat_e6 + rng.random_range(-lat_e6..lat_e6),
        lon_e6: CITY_CENTER.lon_e6 + rng.random_range(-lon_e6..lon_e6),
    }
}
