//! Crash points for tests: exact crash moments a SIGKILL cannot hit reliably.
//!
//! Off unless the environment variable `LIFEBOAT_CRASH_POINT` is set to one of
//! - `after-apply-before-reply:N`: the Nth op applied is persisted, then the process aborts
//!   before any reply or push leaves (S3);
//! - `after-reply-before-persist:N`: the Nth op's reply is sent but its digest is never
//!   written, then the process aborts (S4).

/// Where to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    AfterApplyBeforeReply(u64),
    AfterReplyBeforePersist(u64),
}

impl CrashPoint {
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("LIFEBOAT_CRASH_POINT").ok()?;
        let (name, n) = v.split_once(':')?;
        let n: u64 = n.parse().ok()?;
        match name {
            "after-apply-before-reply" => Some(Self::AfterApplyBeforeReply(n)),
            "after-reply-before-persist" => Some(Self::AfterReplyBeforePersist(n)),
            _ => None,
        }
    }

    pub fn nth(&self) -> u64 {
        match self {
            Self::AfterApplyBeforeReply(n) | Self::AfterReplyBeforePersist(n) => *n,
        }
    }
}
