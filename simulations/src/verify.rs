//! Verification: the devices' ledgers against the datacenters' actual stores.
//!
//! The stores are read after the surviving datacenters shut down cleanly, and every digest
//! is opened with the region keyring: this is what the datacenter would serve, not the
//! harness's bookkeeping. A ledger entry counts as committed only if the device's `submit`
//! returned a commit (the digest covering it was flushed on the device).

use crate::city::{DeviceLog, OpKind, Outcome};
use hdrhistogram::Histogram;
use lifeboat_common::{SessionId, TripPhase, VersionOrder, VersionVector};
use lifeboat_server::service::StoredSession;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The figures of one run (field names are part of the JSON report's contract).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub durability: String,
    pub devices: usize,
    pub duration_s: f64,
    pub kill_at_s: f64,
    pub trips_total: usize,
    pub trips_active_at_failure: usize,
    pub trips_restored: usize,
    pub trips_lost: usize,
    pub ops_committed: u64,
    pub ops_committed_lost: u64,
    pub ops_applied_twice: u64,
    pub ops_rejected: u64,
    pub ops_unresolved: u64,
    pub versions_regressed: usize,
    pub tombstones_resurrected: usize,
    pub unreplicated_at_failure: usize,
    pub devices_not_resynced: usize,
    /// Sessions for which two datacenters hold concurrent copies at the end (information:
    /// the loser is reconciled when a participant next reports in there).
    pub sessions_concurrent_at_end: usize,
    /// Conflicts the devices were told of (a device's copy and its datacenter's were
    /// concurrent); the chain rule keeps this at 0.
    pub conflicts: usize,
    /// Failovers away from a datacenter that was up (loss, cuts): the false failovers.
    pub false_failovers: usize,
    /// Waits for a session's anchor (a non-anchor's ops answered on a copy the anchor had
    /// not persisted yet, or a branch nobody confirmed), and how long they lasted.
    pub waits: usize,
    pub wait_ms_p50: u64,
    pub wait_ms_p99: u64,
    pub wait_ms_max: u64,
    pub stall_ms_p50: u64,
    pub stall_ms_p99: u64,
    pub stall_ms_max: u64,
    pub stalled_devices: usize,
    pub detect_ms_p50: u64,
    pub restore_sessions_per_s: f64,
    pub edge_bytes_per_op: f64,
    pub digest_bytes_p50: u64,
    pub digest_bytes_max: u64,
    /// The devices' impaired link and what it did (absent on a perfect link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkReport>,
    pub passed: bool,
    /// The first violations, each with its session, for a person to read.
    pub violations: Vec<String>,
    /// Stall of each stalled device (ms), for the chart.
    #[serde(skip)]
    pub stalls_ms: Vec<u64>,
}

#[derive(Default)]
struct SessionLedger {
    requested: bool,
    request_ms: u64,
    finished_ms: Option<u64>,
    locations: u32,
    locations_unresolved: u32,
    arrived: bool,
    started: bool,
    completed: bool,
    cancelled: bool,
    versions: Vec<VersionVector>,
}

fn percentile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// The history of one session as its devices saw it (for a violation message only): each
/// device's ops with their outcome and version, its disconnects, reconnects and conflicts.
fn history(logs: &[DeviceLog], session: SessionId) -> String {
    logs.iter()
        .filter(|log| log.ops.iter().any(|o| o.session == session))
        .map(|log| {
            let ops: Vec<String> = log
                .ops
                .iter()
                .filter(|o| o.session == session)
                .map(|o| {
                    let out = match &o.outcome {
                        Outcome::Committed { version, duplicate } => {
                            format!("ok{} {version}", if *duplicate { " dup" } else { "" })
                        }
                        Outcome::Rejected(r) => format!("rejected: {r}"),
                        Outcome::Unresolved => "unresolved".to_string(),
                    };
                    format!("{:?}@{}..{} {out}", o.kind, o.submitted_ms, o.resolved_ms)
                })
                .collect();
            let conflicts: Vec<u64> = log
                .conflicts
                .iter()
                .filter(|(_, s)| *s == session)
                .map(|(t, _)| *t)
                .collect();
            format!(
                "\n      device {}: holds it at end: {}; disconnects {:?}; reconnects (ms, dc) {:?}; conflicts at {:?}; ops [{}]",
                log.device,
                log.held_at_end.iter().any(|(s, _)| *s == session),
                log.disconnects_ms,
                log.failovers_ms,
                conflicts,
                ops.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("")
}

/// The copy the region would serve: one that covers every other copy if there is one (a
/// datacenter that kept a superseded branch reconciles it when a device next reports in),
/// else the one that covers the most committed versions.
fn best_copy<'a>(
    copies: &'a [StoredSession],
    committed: &[VersionVector],
) -> Option<&'a StoredSession> {
    copies
        .iter()
        .find(|c| copies.iter().all(|o| c.0.version.covers(&o.0.version)))
        .or_else(|| {
            copies
                .iter()
                .max_by_key(|c| committed.iter().filter(|v| c.0.version.covers(v)).count())
        })
}

pub struct VerifyInput<'a> {
    pub logs: &'a [DeviceLog],
    /// Every datacenter's copy of each session.
    pub stored: &'a HashMap<SessionId, Vec<StoredSession>>,
    /// First datacenter kill, in ms since the start.
    pub kill_ms: Option<u64>,
    /// Sessions the killed datacenter dispatched (from its own log).
    pub dispatched_by_killed: &'a [SessionId],
}

pub fn verify(report: &mut Report, input: VerifyInput<'_>) {
    let kill = input.kill_ms.unwrap_or(u64::MAX);
    let mut ledgers: HashMap<SessionId, SessionLedger> = HashMap::new();
    let mut violations = Vec::new();
    for log in input.logs {
        for op in &log.ops {
            let l = ledgers.entry(op.session).or_default();
            match &op.outcome {
                Outcome::Committed { version, .. } => {
                    report.ops_committed += 1;
                    l.versions.push(version.clone());
                    match op.kind {
                        OpKind::Request => {
                            l.requested = true;
                            l.request_ms = op.resolved_ms;
                        }
                        OpKind::Arrived => l.arrived = true,
                        OpKind::Start => l.started = true,
                        OpKind::Location => l.locations += 1,
                        OpKind::Complete => {
                            l.completed = true;
                            l.finished_ms = Some(op.resolved_ms);
                        }
                        OpKind::Cancel => {
                            l.cancelled = true;
                            l.finished_ms = Some(op.resolved_ms);
                        }
                    }
                }
                Outcome::Rejected(_) => report.ops_rejected += 1,
                Outcome::Unresolved => {
                    report.ops_unresolved += 1;
                    if op.kind == OpKind::Location {
                        l.locations_unresolved += 1;
                    }
                }
            }
        }
    }
    let add = |v: &mut Vec<String>, s: String| {
        if v.len() < 20 {
            v.push(s);
        }
    };
    for (id, l) in &ledgers {
        if !l.requested {
            continue;
        }
        report.trips_total += 1;
        let active_at_failure = l.request_ms < kill && l.finished_ms.is_none_or(|f| f >= kill);
        if active_at_failure {
            report.trips_active_at_failure += 1;
        }
        let copies = input.stored.get(id).map(Vec::as_slice).unwrap_or_default();
        if copies.iter().any(|a| {
            copies
                .iter()
                .any(|b| a.0.version.compare(&b.0.version) == VersionOrder::Concurrent)
        }) {
            report.sessions_concurrent_at_end += 1;
        }
        let Some((header, body)) = best_copy(copies, &l.versions) else {
            report.trips_lost += 1;
            add(
                &mut violations,
                format!(
                    "{id}: trip lost (not in any surviving store); requested at {} ms, finished {:?}, kill at {kill} ms, {} locations committed; history:{}",
                    l.request_ms, l.finished_ms, l.locations, history(input.logs, *id)
                ),
            );
            continue;
        };
        if active_at_failure {
            report.trips_restored += 1;
        }
        let violations_before = violations.len();
        let st = &body.state;
        let applied = st.location_updates;
        if applied < l.locations {
            report.ops_committed_lost += u64::from(l.locations - applied);
            add(
                &mut violations,
                format!(
                    "{id}: {} location ops committed, {applied} in the store",
                    l.locations
                ),
            );
        }
        if applied > l.locations + l.locations_unresolved {
            report.ops_applied_twice += u64::from(applied - l.locations - l.locations_unresolved);
            add(
                &mut violations,
                format!(
                    "{id}: {} location ops committed, {applied} applied",
                    l.locations
                ),
            );
        }
        let phase_lost = (l.arrived
            && matches!(st.phase, TripPhase::Requested | TripPhase::Assigned))
            || (l.started && !matches!(st.phase, TripPhase::OnTrip | TripPhase::Completed))
            || (l.completed && st.phase != TripPhase::Completed)
            || (l.cancelled && st.phase != TripPhase::Cancelled);
        if phase_lost {
            report.ops_committed_lost += 1;
            add(
                &mut violations,
                format!(
                    "{id}: store phase {:?} misses a committed transition",
                    st.phase
                ),
            );
        }
        if l.versions.iter().any(|v| !header.version.covers(v)) {
            report.versions_regressed += 1;
            add(
                &mut violations,
                format!(
                    "{id}: store version {} older than a committed one",
                    header.version
                ),
            );
        }
        if (l.completed || l.cancelled) && !header.tombstone {
            report.tombstones_resurrected += 1;
            add(
                &mut violations,
                format!("{id}: finished trip is live again"),
            );
        }
        if violations.len() > violations_before && violations.len() < 20 {
            violations.push(format!(
                "{id}: stored version {}; history:{}",
                header.version,
                history(input.logs, *id)
            ));
        }
    }

    // Server-side changes (dispatch) the killed datacenter made that no device held at the
    // kill: lost by design under async durability (S5).
    let seen_before_kill: HashSet<SessionId> = input
        .logs
        .iter()
        .flat_map(|l| l.assigned_seen.iter())
        .filter(|(_, t)| *t < kill)
        .map(|(s, _)| *s)
        .collect();
    report.unreplicated_at_failure = input
        .dispatched_by_killed
        .iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|s| !seen_before_kill.contains(s))
        .count();

    // Re-sync of reinstalled devices: each holds again every trip it requested that is still
    // active. (Finished trips are not sent back to a device that lost them: the partner's
    // tombstone already guards them, and the datacenter re-syncs active sessions only.)
    for log in input.logs.iter().filter(|l| l.reinstalled) {
        let held: HashSet<SessionId> = log.held_at_end.iter().map(|(s, _)| *s).collect();
        for op in &log.ops {
            let finished_before = ledgers
                .get(&op.session)
                .is_some_and(|l| l.finished_ms.is_some());
            if op.kind == OpKind::Request
                && matches!(op.outcome, Outcome::Committed { .. })
                && !finished_before
                && !held.contains(&op.session)
            {
                report.devices_not_resynced += 1;
                add(
                    &mut violations,
                    format!("device {} did not re-sync {}", log.device, op.session),
                );
            }
        }
    }

    // Stall: devices with work in flight at the kill, from the kill to their first commit
    // after it. Detection: devices connected to the killed datacenter, from the kill to
    // noticing.
    let mut stall = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    let mut detect = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    if kill != u64::MAX {
        for log in input.logs {
            let had_work = log.ops.iter().any(|o| {
                let sess = ledgers.get(&o.session);
                let active = sess.is_some_and(|l| l.finished_ms.is_none_or(|f| f >= kill));
                active && o.submitted_ms < kill + 1_000 && o.resolved_ms >= kill
            });
            if had_work && !log.offline {
                let first = log
                    .ops
                    .iter()
                    .filter(|o| {
                        o.resolved_ms >= kill && matches!(o.outcome, Outcome::Committed { .. })
                    })
                    .map(|o| o.resolved_ms)
                    .min();
                if let Some(t) = first {
                    let _ = stall.record(t - kill);
                    report.stalls_ms.push(t - kill);
                }
            }
            if let Some(d) = log.disconnects_ms.iter().find(|t| **t >= kill) {
                let _ = detect.record(d - kill);
            }
        }
    }
    let mut waits = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    for log in input.logs {
        report.conflicts += log.conflicts.len();
        report.false_failovers += log.false_failovers as usize;
        for w in &log.waits_ms {
            let _ = waits.record(*w);
        }
    }
    report.waits = waits.len() as usize;
    report.wait_ms_p50 = percentile(&waits, 0.5);
    report.wait_ms_p99 = percentile(&waits, 0.99);
    report.wait_ms_max = waits.max();
    report.stalled_devices = stall.len() as usize;
    report.stall_ms_p50 = percentile(&stall, 0.5);
    report.stall_ms_p99 = percentile(&stall, 0.99);
    report.stall_ms_max = stall.max();
    report.detect_ms_p50 = percentile(&detect, 0.5);

    let reconnects: Vec<u64> = input
        .logs
        .iter()
        .filter_map(|l| {
            l.failovers_ms
                .iter()
                .find(|(t, _)| *t >= kill)
                .map(|(t, _)| *t)
        })
        .collect();
    if let (Some(first), Some(last)) = (reconnects.iter().min(), reconnects.iter().max()) {
        let window_s = ((last - first).max(1)) as f64 / 1000.0;
        report.restore_sessions_per_s = report.trips_restored as f64 / window_s;
    }

    let bytes: u64 = input.logs.iter().map(|l| l.bytes_up + l.bytes_down).sum();
    report.edge_bytes_per_op = if report.ops_committed > 0 {
        bytes as f64 / report.ops_committed as f64
    } else {
        0.0
    };
    let mut sizes = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    for log in input.logs {
        for (_, b) in &log.held_at_end {
            let _ = sizes.record(*b as u64);
        }
    }
    report.digest_bytes_p50 = percentile(&sizes, 0.5);
    report.digest_bytes_max = sizes.max();

    report.passed = report.trips_lost == 0
        && report.ops_committed_lost == 0
        && report.ops_applied_twice == 0
        && report.versions_regressed == 0
        && report.tombstones_resurrected == 0
        && report.devices_not_resynced == 0
        && report.ops_unresolved == 0
        && report.conflicts == 0
        && report.trips_restored == report.trips_active_at_failure
        && report.trips_total > 0
        && (kill == u64::MAX || report.trips_active_at_failure > 0);
    if kill != u64::MAX && report.trips_active_at_failure == 0 {
        add(
            &mut violations,
            "no trip was active at the failure: the run tested nothing (the city never got going)"
                .to_string(),
        );
    }
    if report.ops_unresolved > 0 {
        add(
            &mut violations,
            format!("{} ops never answered", report.ops_unresolved),
        );
        let mut shown = std::collections::BTreeSet::new();
        for log in input.logs {
            for o in log.ops.iter().filter(|o| o.outcome == Outcome::Unresolved) {
                if shown.len() < 5 && shown.insert(o.session) {
                    add(
                        &mut violations,
                        format!(
                            "{:?} by device {} on {} never answered:{}",
                            o.kind,
                            log.device,
                            o.session,
                            history(input.logs, o.session)
                        ),
                    );
                }
            }
        }
    }
    if report.conflicts > 0 {
        add(
            &mut violations,
            format!(
                "{} conflicts told to devices (a device's copy beside its datacenter's)",
                report.conflicts
            ),
        );
    }
    report.violations = violations;
}
