//! What an impaired path does to each datagram: [`Impairment`], checked by
//! [`Impairment::validate`] before a socket uses it.
//!
//! Invariants (enforced by `validate`, so a socket never runs with a config that fails them):
//! every probability is a finite number in `0..=1`; `delay + jitter + reorder_gap` is at most
//! [`MAX_DELAY`]; the queue bound is in `1..=`[`MAX_QUEUE_LIMIT`].

use std::time::Duration;

/// Longest a datagram may be held back (base delay + jitter + reorder gap).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest allowed bound of a direction's queue of held-back datagrams.
pub const MAX_QUEUE_LIMIT: usize = 1_000_000;
/// Default bound of a direction's queue of held-back datagrams.
pub const DEFAULT_QUEUE_LIMIT: usize = 4_096;
/// Default extra hold of a reordered datagram.
pub const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(40);

/// Which directions the random impairments (loss, delay, duplication, reordering) apply to.
/// A partition ([`crate::Partition`]) always cuts both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Directions {
    /// Outgoing and incoming datagrams (each independently).
    #[default]
    Both,
    /// Only datagrams this socket sends.
    SendOnly,
    /// Only datagrams this socket receives.
    ReceiveOnly,
}

impl Directions {
    pub fn send(self) -> bool {
        matches!(self, Directions::Both | Directions::SendOnly)
    }

    pub fn receive(self) -> bool {
        matches!(self, Directions::Both | Directions::ReceiveOnly)
    }
}

/// The impairment of one path, applied to every datagram independently (per direction, so
/// with `loss = 0.3` on both directions a round trip survives with probability 0.49).
///
/// - `loss`: probability that a datagram is dropped.
/// - `duplicate`: probability that a (surviving) datagram is delivered twice; the copy gets
///   its own delay draw, so it may arrive well after the original.
/// - `delay` + uniform `0..=jitter`: one-way delay of each copy. Jitter alone already
///   reorders datagrams (as netem does).
/// - `reorder`: probability that a copy is held back `reorder_gap` longer than its delay, so
///   datagrams sent after it overtake it.
/// - `queue_limit`: bound on held-back datagrams per direction; beyond it a datagram is
///   dropped and counted as `overflowed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub reorder_gap: Duration,
    pub queue_limit: usize,
    pub directions: Directions,
}

impl Default for Impairment {
    /// A perfect path: nothing dropped, delayed, duplicated or reordered.
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder_gap: DEFAULT_REORDER_GAP,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            directions: Directions::Both,
        }
    }
}

/// A rejected [`Impairment`]. Nothing was changed when one of these is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be a probability in 0..=1, got {value}")]
    Probability { field: &'static str, value: f64 },
    #[error(
        "delay + jitter + reorder_gap is {total_ms} ms, more than the {max_ms} ms a datagram \
         may be held"
    )]
    DelayTooLong { total_ms: u128, max_ms: u128 },
    #[error("queue_limit must be in 1..={max}, got {value}")]
    QueueLimit { value: usize, max: usize },
}

impl Impairment {
    /// A perfect path (same as `Default`).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn with_loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    pub fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    pub fn with_reorder(mut self, p: f64, gap: Duration) -> Self {
        self.reorder = p;
        self.reorder_gap = gap;
        self
    }

    pub fn with_delay(mut self, delay: Duration, jitter: Duration) -> Self {
        self.delay = delay;
        self.jitter = jitter;
        self
    }

    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    pub fn with_directions(mut self, d: Directions) -> Self {
        self.directions = d;
        self
    }

    /// Whether this config changes anything at all (a pass-through socket skips the RNG).
    pub fn is_none(&self) -> bool {
        self.loss == 0.0
            && self.duplicate == 0.0
            && self.reorder == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
    }

    /// Check every invariant listed in the module docs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !value.is_finite() || !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Probability { field, value });
            }
        }
        let total = self
            .delay
            .checked_add(self.jitter)
            .and_then(|d| d.checked_add(self.reorder_gap));
        match total {
            Some(t) if t <= MAX_DELAY => {}
            _ => {
                return Err(ConfigError::DelayTooLong {
                    total_ms: self
                        .delay
                        .as_millis()
                        .saturating_add(self.jitter.as_millis())
                        .saturating_add(self.reorder_gap.as_millis()),
                    max_ms: MAX_DELAY.as_millis(),
                })
            }
        }
        if self.queue_limit == 0 || self.queue_limit > MAX_QUEUE_LIMIT {
            return Err(ConfigError::QueueLimit {
                value: self.queue_limit,
                max: MAX_QUEUE_LIMIT,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_outside_zero_to_one_or_not_finite_are_rejected() {
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let e = Impairment::none().with_loss(bad).validate().unwrap_err();
            assert!(matches!(e, ConfigError::Probability { field: "loss", .. }));
            let e = Impairment::none()
                .with_duplicate(bad)
                .validate()
                .unwrap_err();
            assert!(matches!(
                e,
                ConfigError::Probability {
                    field: "duplicate",
                    ..
                }
            ));
            let e = Impairment::none()
                .with_reorder(bad, DEFAULT_REORDER_GAP)
                .validate()
                .unwrap_err();
            assert!(matches!(
                e,
                ConfigError::Probability {
                    field: "reorder",
                    ..
                }
            ));
        }
        for ok in [0.0, 0.5, 1.0] {
            assert_eq!(Impairment::none().with_loss(ok).validate(), Ok(()));
        }
    }

    #[test]
    fn delay_bound_and_queue_bound_are_enforced() {
        let long = Impairment::none().with_delay(MAX_DELAY, Duration::from_millis(1));
        assert!(matches!(
            long.validate(),
            Err(ConfigError::DelayTooLong { .. })
        ));
        let overflowing = Impairment::none().with_delay(Duration::MAX, Duration::MAX);
        assert!(matches!(
            overflowing.validate(),
            Err(ConfigError::DelayTooLong { .. })
        ));
        assert!(matches!(
            Impairment::none().with_queue_limit(0).validate(),
            Err(ConfigError::QueueLimit { value: 0, .. })
        ));
        assert!(matches!(
            Impairment::none()
                .with_queue_limit(MAX_QUEUE_LIMIT + 1)
                .validate(),
            Err(ConfigError::QueueLimit { .. })
        ));
        let fine = Impairment::none()
            .with_delay(Duration::from_millis(200), Duration::from_millis(300))
            .with_queue_limit(10);
        assert_eq!(fine.validate(), Ok(()));
        assert!(!fine.is_none());
        assert!(Impairment::none().is_none());
    }
}
