//! Crash points and store faults for tests: exact crash moments a SIGKILL cannot hit
//! reliably, and a store that fails its writes for a while (a full or failing disk).
//!
//! Compiled in only with the cargo feature `crash-points` (the end-to-end tests turn it on;
//! a production build has none: there, a set `LIFEBOAT_CRASH_POINT` or
//! `LIFEBOAT_STORE_FAULT` is ignored and logged).
//!
//! `LIFEBOAT_STORE_FAULT=fail:N:K`: the Nth to the (N+K-1)th batch writes of the store fail
//! (nothing of them is written), as a disk that filled up and was cleared again.
//! With the feature, off unless the environment variable `LIFEBOAT_CRASH_POINT` is set to
//! one of
//! - `after-apply-before-reply:N`: the Nth op applied is persisted, then the process aborts
//!   before any reply or push leaves (S3);
//! - `after-reply-before-persist:N`: the Nth op's reply is sent but its digest is never
//!   written, then the process aborts (S4).

/// Store writes that fail (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreFault {
    /// The first failing batch (1-based).
    pub first: u64,
    /// How many fail.
    pub count: u64,
}

impl StoreFault {
    /// The fault `LIFEBOAT_STORE_FAULT` names, if the feature is compiled in.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("LIFEBOAT_STORE_FAULT").ok()?;
        if !cfg!(feature = "crash-points") {
            tracing::error!(
                value = %v,
                "LIFEBOAT_STORE_FAULT is set but this build has no faults (feature \
                 crash-points): ignored"
            );
            return None;
        }
        let mut parts = v.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("fail"), Some(n), Some(k), None) => Some(Self {
                first: n.parse().ok()?,
                count: k.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Whether batch `n` (1-based) fails.
    pub fn fails(&self, n: u64) -> bool {
        n >= self.first && n < self.first.saturating_add(self.count)
    }
}

/// Where to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Abort after the Nth applied op is persisted, before any reply leaves.
    AfterApplyBeforeReply(u64),
    /// Abort after the Nth applied op's reply is sent, before its digest is written.
    AfterReplyBeforePersist(u64),
}

impl CrashPoint {
    /// The crash point `LIFEBOAT_CRASH_POINT` names, if the feature is compiled in.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("LIFEBOAT_CRASH_POINT").ok()?;
        if !cfg!(feature = "crash-points") {
            tracing::error!(
                value = %v,
                "LIFEBOAT_CRASH_POINT is set but this build has no crash points (feature \
                 crash-points): ignored"
            );
            return None;
        }
        let (name, n) = v.split_once(':')?;
        let n: u64 = n.parse().ok()?;
        match name {
            "after-apply-before-reply" => Some(Self::AfterApplyBeforeReply(n)),
            "after-reply-before-persist" => Some(Self::AfterReplyBeforePersist(n)),
            _ => None,
        }
    }

    /// Which applied op (1-based) triggers it.
    pub fn nth(&self) -> u64 {
        match self {
            Self::AfterApplyBeforeReply(n) | Self::AfterReplyBeforePersist(n) => *n,
        }
    }
}
