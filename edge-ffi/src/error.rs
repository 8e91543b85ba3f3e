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
    #[error("invalid argument: {detail}")]
    InvalidArgument { detail: String },
    #[error("configuration: {detail}")]
    Config { detail: String },
    #[error("device store: {detail}")]
    Store { detail: String },
    #[error("the client is paused; resume it first")]
    Paused,
    #[error("the client has stopped")]
    Closed,
    /// `op_seq` is the queued op's sequence number (0: not known to be queued).
    #[error("no answer within {timeout_ms} ms (op {session}/{op_seq} stays queued; its outcome arrives as an event)")]
    Timeout {
        session: u64,
        op_seq: u64,
        timeout_ms: u64,
    },
    #[error(
        "cancelled (op {session}/{op_seq} stays queued if it was; its outcome arrives as an event)"
    )]
    Cancelled { session: u64, op_seq: u64 },
    /// The op was not applied and never will be. `op_seq` 0: it was never queued (nothing
    /// was recorded: a local limit, an unknown trip); otherwise op `session`/`op_seq` was
    /// queued and then failed for good (its outcome is also readable with `op_status`).
    #[error("refused (op {session}/{op_seq}): {detail}")]
    Rejected {
        session: u64,
        op_seq: u64,
        detail: String,
    },
    #[error("runtime: {detail}")]
    Runtime { detail: String },
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
