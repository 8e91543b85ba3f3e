//! One direction of an impaired path, with no I/O and no clock: the seeded decision for each
//! datagram ([`Lane::decide`]) and the bounded queue of held-back copies ([`Lane::hold`],
//! [`Lane::pop_due`]). The socket ([`crate::ImpairedSocket`]) drives two of these.
//!
//! Determinism: `decide` draws exactly [`DRAWS_PER_DATAGRAM`] values from the lane's own RNG
//! for every datagram, whatever the outcome, so the same seed and the same sequence of
//! datagrams give the same decisions, and a partition (which overrides the outcome outside
//! the lane) does not shift the decisions of the datagrams after it. Held copies leave in
//! order of due time, ties in order of arrival.
//!
//! Bounded: at most `limit` copies held (the caller's `Impairment::queue_limit`).

use crate::config::Impairment;
use quinn::udp::EcnCodepoint;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Random values drawn per datagram: loss, duplicate, then (reorder, jitter) for each of the
/// two possible copies.
pub const DRAWS_PER_DATAGRAM: usize = 6;

/// One datagram, owned (held back, or duplicated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The other end: destination when sending, source when receiving.
    pub peer: SocketAddr,
    /// This end's address: the source IP when sending, the destination IP when receiving.
    pub local_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
    pub data: Box<[u8]>,
}

/// How long one copy is held back, and whether the hold includes the reorder gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFate {
    pub hold: Duration,
    pub reordered: bool,
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    pub dropped: bool,
    /// The original (unless dropped) and, if duplicated, a second copy.
    pub copies: [Option<CopyFate>; 2],
}

impl Fate {
    /// Unimpaired: one copy, now.
    pub const PASS: Fate = Fate {
        dropped: false,
        copies: [
            Some(CopyFate {
                hold: Duration::ZERO,
                reordered: false,
            }),
            None,
        ],
    };

    pub fn duplicated(&self) -> bool {
        self.copies[1].is_some()
    }
}

struct Held {
    due: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

pub struct Lane {
    rng: SmallRng,
    held: BinaryHeap<Reverse<Held>>,
    next_seq: u64,
}

/// A uniform value in [0, 1) from 53 random bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Lane {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Decide one datagram's fate under `cfg` (drawing exactly [`DRAWS_PER_DATAGRAM`] values).
    pub fn decide(&mut self, cfg: &Impairment) -> Fate {
        let mut r = [0u64; DRAWS_PER_DATAGRAM];
        for x in r.iter_mut() {
            *x = self.rng.next_u64();
        }
        let dropped = unit(r[0]) < cfg.loss;
        let duplicated = !dropped && unit(r[1]) < cfg.duplicate;
        // `validate` bounds delay + jitter + gap by a minute: the nanoseconds fit a u64.
        let jitter_ns = cfg.jitter.as_nanos() as u64;
        let copy = |reorder_draw: u64, jitter_draw: u64| {
            let reordered = unit(reorder_draw) < cfg.reorder;
            let mut hold = cfg.delay + Duration::from_nanos(jitter_draw % (jitter_ns + 1));
            if reordered {
                hold += cfg.reorder_gap;
            }
            CopyFate { hold, reordered }
        };
        Fate {
            dropped,
            copies: [
                (!dropped).then(|| copy(r[2], r[3])),
                duplicated.then(|| copy(r[4], r[5])),
            ],
        }
    }

    /// Hold a copy until `due`; gives it back if `limit` copies are held already.
    pub fn hold(&mut self, due: Instant, datagram: Datagram, limit: usize) -> Result<(), Datagram> {
        if self.held.len() >= limit {
            return Err(datagram);
        }
        self.next_seq += 1;
        self.held.push(Reverse(Held {
            due,
            seq: self.next_seq,
            datagram,
        }));
        Ok(())
    }

    /// The next held copy due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.held.peek()?.0.due > now {
            return None;
        }
        self.held.pop().map(|h| h.0.datagram)
    }

    /// When the next held copy comes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.0.due)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(n: u8) -> Datagram {
        Datagram {
            peer: SocketAddr::from(([127, 0, 0, 1], 9)),
            local_ip: None,
            ecn: None,
            data: vec![n].into_boxed_slice(),
        }
    }

    fn harsh() -> Impairment {
        Impairment::none()
            .with_loss(0.3)
            .with_duplicate(0.2)
            .with_reorder(0.25, Duration::from_millis(40))
            .with_delay(Duration::from_millis(100), Duration::from_millis(400))
    }

    #[test]
    fn same_seed_gives_the_same_decisions_and_another_seed_does_not() {
        let cfg = harsh();
        let run = |seed| {
            let mut lane = Lane::new(seed);
            (0..2_000).map(|_| lane.decide(&cfg)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn every_outcome_draws_the_same_amount_so_later_decisions_do_not_shift() {
        // Loss 1.0 and 0.0 consume the RNG identically: the lane that saw a different config
        // for the first 100 datagrams decides the next ones exactly like the other.
        let cfg = harsh();
        let mut a = Lane::new(42);
        let mut b = Lane::new(42);
        for _ in 0..100 {
            a.decide(&Impairment::none().with_loss(1.0));
            b.decide(&cfg);
        }
        for _ in 0..1_000 {
            assert_eq!(a.decide(&cfg), b.decide(&cfg));
        }
    }

    #[test]
    fn decisions_respect_the_configured_bounds_and_rates() {
        let cfg = harsh();
        let mut lane = Lane::new(3);
        let n = 20_000;
        let (mut dropped, mut dup, mut reordered, mut copies) = (0, 0, 0, 0);
        for _ in 0..n {
            let f = lane.decide(&cfg);
            dropped += f.dropped as u32;
            dup += f.duplicated() as u32;
            for c in f.copies.iter().flatten() {
                copies += 1;
                reordered += c.reordered as u32;
                let max = cfg.delay
                    + cfg.jitter
                    + if c.reordered {
                        cfg.reorder_gap
                    } else {
                        Duration::ZERO
                    };
                assert!(c.hold >= cfg.delay && c.hold <= max, "hold {:?}", c.hold);
            }
            assert!(!(f.dropped && f.copies.iter().any(Option::is_some)));
        }
        let rate = |k: u32, of: u32| k as f64 / of as f64;
        // Wide margins: with n = 20,000 the standard error is below 0.004.
        assert!(
            (rate(dropped, n) - 0.3).abs() < 0.03,
            "loss {}",
            rate(dropped, n)
        );
        assert!((rate(dup, n - dropped) - 0.2).abs() < 0.03);
        assert!((rate(reordered, copies) - 0.25).abs() < 0.03);
    }

    #[test]
    fn held_copies_leave_in_due_order_ties_in_arrival_order_and_the_bound_holds() {
        let t0 = Instant::now();
        let mut lane = Lane::new(0);
        let ms = Duration::from_millis;
        lane.hold(t0 + ms(30), dgram(1), 3).unwrap();
        lane.hold(t0 + ms(10), dgram(2), 3).unwrap();
        lane.hold(t0 + ms(10), dgram(3), 3).unwrap();
        assert_eq!(lane.hold(t0, dgram(4), 3), Err(dgram(4)));
        assert_eq!(lane.len(), 3);
        assert_eq!(lane.next_due(), Some(t0 + ms(10)));
        assert_eq!(lane.pop_due(t0 + ms(5)), None);
        assert_eq!(lane.pop_due(t0 + ms(10)), Some(dgram(2)));
        assert_eq!(lane.pop_due(t0 + ms(10)), Some(dgram(3)));
        assert_eq!(lane.pop_due(t0 + ms(29)), None);
        assert_eq!(lane.pop_due(t0 + ms(31)), Some(dgram(1)));
        assert_eq!(lane.next_due(), None);
    }
}
