//! What a trip its driver completed must look like in a datacenter's store: a tombstone
//! (C3: it can never come back to life), in the `Completed` phase, with its fare. The
//! history checker sees the tombstone and the phase through the committed ops; the fare is
//! only here.

use lifeboat_common::{SessionId, TripPhase};
use lifeboat_server::service::StoredSession;

/// How a stored completed trip falls short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TripEndError {
    #[error("trip {0} completed but not tombstoned")]
    NotTombstoned(SessionId),
    #[error("trip {session} completed, but the store has it {phase:?}")]
    NotCompleted {
        session: SessionId,
        phase: TripPhase,
    },
    #[error("trip {0} completed without a fare")]
    NoFare(SessionId),
}

/// Check a stored copy of a trip its driver was told is completed.
pub fn check_completed(copy: &StoredSession) -> Result<(), TripEndError> {
    let (header, body) = copy;
    if !header.tombstone {
        return Err(TripEndError::NotTombstoned(header.session));
    }
    if body.state.phase != TripPhase::Completed {
        return Err(TripEndError::NotCompleted {
            session: header.session,
            phase: body.state.phase,
        });
    }
    if body.state.fare_cents.is_none() {
        return Err(TripEndError::NoFare(header.session));
    }
    Ok(())
}
