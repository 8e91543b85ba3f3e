//! Latency histograms for `/metrics` (Prometheus histograms: cumulative buckets in seconds,
//! a sum and a count) and the status snapshot.
//!
//! Invariants: fixed buckets ([`BUCKETS_S`]), so memory is constant whatever is recorded;
//! `counts[i]` holds the observations at most `BUCKETS_S[i]` and above the bucket before it
//! (the renderer accumulates them); anything above the last bucket counts only in `+Inf`
//! (that is, in `count`).

use serde::Serialize;
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 0.5 ms to 2.5 s.
pub const BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), one per [`BUCKETS_S`] entry.
    pub counts: [u64; 12],
    /// Sum of every observation, in microseconds.
    pub sum_us: u64,
    /// Every observation, including those above the last bucket.
    pub count: u64,
}

impl Histogram {
    /// Record one observation.
    pub fn record(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            self.counts[i] += 1;
        }
        self.sum_us = self.sum_us.saturating_add(d.as_micros() as u64);
        self.count += 1;
    }

    /// The cumulative count at each bucket bound (what Prometheus calls `le`).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        BUCKETS_S.iter().zip(self.counts).map(move |(b, n)| {
            acc += n;
            (*b, acc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_accumulate() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(300)); // <= 0.5 ms
        h.record(Duration::from_millis(3)); // <= 5 ms
        h.record(Duration::from_millis(5)); // a bound is inclusive
        h.record(Duration::from_secs(9)); // above every bucket
        let cum: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(cum[0], (0.0005, 1));
        assert_eq!(cum[2], (0.002, 1));
        assert_eq!(cum[3], (0.005, 3));
        assert_eq!(cum[11], (2.5, 3), "the 9 s one is only in +Inf");
        assert_eq!(h.count, 4);
        assert_eq!(h.sum_us, 300 + 3_000 + 5_000 + 9_000_000);
    }
}
