//! Crash points for tests: exact crash moments a SIGKILL cannot hit reliably.
//!
//! Compiled in only with the cargo feature `crash-points` (the end-to-end tests turn it on;
//! a production build has none: there, a set `LIFEBOAT_CRASH_POINT` is ignored and logged).
//! With the feature, off unless the environment variable `LIFEBOAT_CRASH_POINT` is set to
//! one of
//! - `after-apply-before-reply:N`: the Nth op applied is persisted, then the process aborts
//!   before any reply or push leaves (S3);
//! - `after-reply-before-persist:N`: the Nth op's reply is sent but its digest is never
//!   written, then the process aborts (S4).

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
