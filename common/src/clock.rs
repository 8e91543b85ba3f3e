//! Where the drivers read wall-clock time.
//!
//! The replication cores never read a clock: they are handed `now_ms`. Their drivers (the
//! server's actor, the edge client's store) take it from a [`Clock`], which is the system
//! clock unless a deterministic simulation supplies its own (simulated) one, so that grace
//! periods, rate limits and tombstone ages follow simulated time there.
//!
//! Invariant: [`Clock::default`] is the system clock; a custom clock is only ever installed
//! by code that builds a configuration in-process (no flag, file or message selects one).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now", in milliseconds since the Unix epoch.
#[derive(Clone, Default)]
pub struct Clock {
    custom: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `now_ms` (milliseconds since the Unix epoch) from `f`.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            custom: Some(Arc::new(f)),
        }
    }

    /// Milliseconds since the Unix epoch (0 if the system clock is before it).
    pub fn now_ms(&self) -> u64 {
        match &self.custom {
            Some(f) => f(),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// The same instant as a [`SystemTime`].
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.custom {
            Some(_) => f.write_str("Clock(custom)"),
            None => f.write_str("Clock(system)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_clock_is_the_system_clock_and_a_custom_one_is_used_as_given() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let now = Clock::default().now_ms();
        assert!(now >= before && now < before + 60_000);
        let fixed = Clock::from_fn(|| 1_234);
        assert_eq!(fixed.now_ms(), 1_234);
        assert_eq!(fixed.now(), UNIX_EPOCH + Duration::from_millis(1_234));
        assert_eq!(format!("{fixed:?}"), "Clock(custom)");
    }
}
