//! What the checker finds: the kind of a breach, the breach with the shortest history that
//! shows it, the figures of one check, and the failure message of a run.

use crate::checker::history::Entry;
use lifeboat_common::SessionId;
use std::fmt;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// C1.
    CommittedOpLost,
    /// C2.
    AppliedTwice,
    /// C3.
    VersionRegressed,
    /// C3.
    TombstoneResurrected,
    /// Every active (and finished) session stays present.
    SessionMissing,
    /// The app was told "rejected" for an op the final copy applied.
    RefusedButApplied,
    /// After the settle phase the devices hold concurrent copies, or no copy anywhere
    /// dominates every device's copy: the session has no final copy.
    NotConverged,
}

impl Kind {
    pub fn contract(&self) -> &'static str {
        match self {
            Kind::CommittedOpLost => "C1",
            Kind::AppliedTwice => "C2",
            Kind::VersionRegressed | Kind::TombstoneResurrected => "C3",
            Kind::SessionMissing => "presence",
            Kind::RefusedButApplied => "C1/C2",
            Kind::NotConverged => "C1/C3",
        }
    }
}

/// One breach, with the shortest history that shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub kind: Kind,
    pub session: SessionId,
    pub detail: String,
    /// Only the events that establish the breach, in recorded order.
    pub history: Vec<Entry>,
    /// How many events of this session were recorded in all.
    pub session_events: usize,
    /// The final copy it was judged against (`holder version phase ...`), if any.
    pub final_copy: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {:?} in session {}: {}",
            self.kind.contract(),
            self.kind,
            self.session,
            self.detail
        )?;
        writeln!(
            f,
            "  history ({} of the session's {} events):",
            self.history.len(),
            self.session_events
        )?;
        for e in &self.history {
            writeln!(f, "    {e}")?;
        }
        match &self.final_copy {
            Some(c) => write!(f, "  final: {c}"),
            None => write!(f, "  final: none (no copy covers the devices' copies)"),
        }
    }
}

/// Figures of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sessions: usize,
    pub ops_committed: usize,
    pub ops_refused: usize,
    /// Sessions for which a conflict was surfaced to a device (counted, excused nothing).
    pub sessions_with_conflicts: usize,
    /// Sessions with a copy at a datacenter concurrent with the final copy (a branch no
    /// device follows; a violation only where a committed op lives on it alone).
    pub sessions_with_stale_branch: usize,
    /// Tentative copies a device persisted and later replaced by one that does not dominate
    /// them (allowed: nobody was told they are committed).
    pub tentative_replaced: usize,
    /// Committed ops whose outcome is older than the watermark window of the final copy
    /// (cannot be checked; expected 0 with the simulation's short trips).
    pub ops_outside_window: usize,
    pub violations: usize,
}

/// Violations printed in full per run (the rest are counted).
pub const MAX_REPORTED: usize = 8;

/// The failure message of a run: the seed, how to replay it, the violations.
pub fn report(seed: u64, replay: &str, violations: &[Violation]) -> String {
    let mut s = format!(
        "seed {seed}: {} contract violation(s)\nreplay: {replay}\n",
        violations.len()
    );
    s.push_str(&listing(violations, "replay the seed to see them all"));
    s
}

/// The first [`MAX_REPORTED`] violations in full, one after another, and how many more
/// there are (`more`: how to see them).
pub fn listing(violations: &[Violation], more: &str) -> String {
    let mut s = String::new();
    for v in violations.iter().take(MAX_REPORTED) {
        s.push_str(&v.to_string());
        s.push('\n');
    }
    if violations.len() > MAX_REPORTED {
        s.push_str(&format!(
            "... and {} more ({more})\n",
            violations.len() - MAX_REPORTED
        ));
    }
    s
}
