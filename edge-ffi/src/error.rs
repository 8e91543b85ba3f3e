//! The one error type of the embedding API, and its C status codes.
//!
//! Each variant says whether anything changed: `Timeout` and `Cancelled` can leave an op
//! behind, durably queued on the device (its outcome arrives later as an event and stays
//! readable with `op_status`); `Rejected` with a non-zero `op_seq` names an op that was
//! queued and then failed for good (never applied); every other error means the call changed
//! nothing. The C status codes are defined (and
//! documented for C) in `c_api` (`status_of`).

/// Why a call failed.
///
/// The text fields are called `detail`, not `message`: in the generated Kotlin every
/// variant is a subclass of `kotlin.Exception`, and a field named `message` clashes with
/// `Throwable.message`, so the Kotlin does not compile (uniffi-rs issue 1434). The
/// `kotlin_swift_bindings` test compiles the Kotlin and catches such a clash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum LifeboatError {
    /// An argument is out of range or malformed (bad address, non-UTF-8 string, zero or too
    /// long timeout, invalid point, unknown action). Nothing changed.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What was wrong with which argument.
        detail: String,
    },
    /// The settings are unusable (no or too many datacenters, unreadable CA file, malformed
    /// credential, timings out of range). Nothing changed; no client was started.
    #[error("configuration: {detail}")]
    Config {
        /// Which setting, and why.
        detail: String,
    },
    /// The device store could not be opened or written. A running client stops rather than
    /// report as committed anything that is not on disk.
    #[error("device store: {detail}")]
    Store {
        /// The store's own error.
        detail: String,
    },
    /// The client is paused (app in the background); call `resume` first. Nothing changed.
    #[error("the client is paused; resume it first")]
    Paused,
    /// The client has stopped for good (shut down, freed, or stopped after a store failure).
    #[error("the client has stopped")]
    Closed,
    /// The wait ended after `timeout_ms` without a commit. The op, if it was queued, stays
    /// queued and is committed exactly once later; its outcome arrives as an event.
    #[error("no answer within {timeout_ms} ms (op {session}/{op_seq} stays queued; its outcome arrives as an event)")]
    Timeout {
        /// The trip the op belongs to.
        session: u64,
        /// The op's sequence number within the trip (0: not known to be queued).
        op_seq: u64,
        /// The wait the caller asked for, in ms.
        timeout_ms: u64,
    },
    /// The wait was ended by a cancel token (`CancelToken`). As for `Timeout`, an op that was
    /// queued stays queued; a token cancelled before the call queues nothing (`op_seq` 0).
    #[error(
        "cancelled (op {session}/{op_seq} stays queued if it was; its outcome arrives as an event)"
    )]
    Cancelled {
        /// The trip the op belongs to.
        session: u64,
        /// The op's sequence number within the trip (0: not known to be queued).
        op_seq: u64,
    },
    /// The op was not applied and never will be. `op_seq` 0: it was never queued (nothing
    /// was recorded: a local limit, an unknown trip); otherwise op `session`/`op_seq` was
    /// queued and then failed for good (its outcome is also readable with `op_status`).
    #[error("refused (op {session}/{op_seq}): {detail}")]
    Rejected {
        /// The trip the op belongs to (0, like `op_seq`, when the op was never queued).
        session: u64,
        /// The op's sequence number within the trip (0: never queued).
        op_seq: u64,
        /// Why it was refused (a local limit, an invalid transition, a wrong role, ...).
        detail: String,
    },
    /// The runtime, a socket or an internal wait failed (e.g. binding a new UDP socket, the
    /// client not answering a quick query within 5 s).
    #[error("runtime: {detail}")]
    Runtime {
        /// The underlying error.
        detail: String,
    },
}

impl LifeboatError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        LifeboatError::InvalidArgument {
            detail: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        LifeboatError::Config {
            detail: message.into(),
        }
    }
}

impl From<lifeboat_edge::EdgeError> for LifeboatError {
    fn from(e: lifeboat_edge::EdgeError) -> Self {
        use lifeboat_edge::EdgeError as E;
        match e {
            E::NoDatacenters | E::Tls(_) => LifeboatError::config(e.to_string()),
            E::Store(s) => LifeboatError::Store {
                detail: s.to_string(),
            },
            E::Io(io) => LifeboatError::Runtime {
                detail: io.to_string(),
            },
            E::Refused(s) => LifeboatError::Rejected {
                session: 0,
                op_seq: 0,
                detail: s.to_string(),
            },
            E::Failed { op, error } => LifeboatError::Rejected {
                session: op.session.0,
                op_seq: op.seq,
                detail: error.to_string(),
            },
            E::Closed => LifeboatError::Closed,
            E::Runtime(m) => LifeboatError::Runtime { detail: m },
        }
    }
}
