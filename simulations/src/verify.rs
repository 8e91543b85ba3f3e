//! Verification: the devices' ledgers against the datacenters' actual stores.
//!
//! The stores are read after the surviving datacenters shut down cleanly, and every digest
//! is opened with the region keyring: this is what the datacenter would serve, not the
//! harness's bookkeeping. A ledger entry counts as committed only if the device's `submit`
//! returned a commit (the digest covering it was flushed on the device).
//!
//! The contract (C1-C3, presence, convergence) is judged by the testkit's one independent
//! checker: [`crate::ledger`] translates the devices' logs into its history and the stores
//! into its final state, and the report's contract figures count its findings by kind.
//! What is the harness's own: which trips were active at the failure and restored, the
//! re-sync of reinstalled devices, unanswered ops, conflicts, stalls and sizes.

use crate::city::{DeviceLog, OpKind, Outcome};
use crate::ledger;
use hdrhistogram::Histogram;
use lifeboat_common::{DatacenterId, SessionId};
use lifeboat_server::service::StoredSession;
use lifeboat_testkit::checker::{self, Kind, Violation};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The figures of one run (field names are part of the JSON report's contract).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub durability: String,
    pub devices: usize,
    /// Riders that never started because the run ended first (a city bigger than the
    /// machine starts within the run): they hold nothing, so nothing of theirs is judged.
    pub devices_not_started: usize,
    pub duration_s: f64,
    pub kill_at_s: f64,
    pub trips_total: usize,
    pub trips_active_at_failure: usize,
    pub trips_restored: usize,
    /// Sessions a device committed to or held that no surviving store has (the checker's
    /// `SessionMissing`).
    pub trips_lost: usize,
    pub ops_committed: u64,
    /// C1 findings of the checker: an op reported committed that the final copy has not
    /// applied (one per op), or trip fields that miss committed ops.
    pub ops_committed_lost: u64,
    /// C2 findings: a copy applied more location reports than submitted, or a watermark ran
    /// past the ops its device submitted.
    pub ops_applied_twice: u64,
    pub ops_rejected: u64,
    pub ops_unresolved: u64,
    /// C3 findings: a committed version gone back or sideways (on a device, in a store, or
    /// in the final copy), or one version issued with two contents.
    pub versions_regressed: usize,
    /// C3 findings: a session a device was told is finished is live again.
    pub tombstones_resurrected: usize,
    /// Ops reported rejected that the final copy applied.
    pub ops_refused_but_applied: usize,
    /// Sessions whose devices' copies have no final copy covering them all.
    pub sessions_not_converged: usize,
    pub unreplicated_at_failure: usize,
    pub devices_not_resynced: usize,
    /// Sessions for which a datacenter holds a copy concurrent with the final one at the
    /// end (information: the loser is reconciled when a participant next reports in there).
    pub sessions_concurrent_at_end: usize,
    /// Conflicts the devices were told of (a device's copy and its datacenter's were
    /// concurrent); the chain rule keeps this at 0.
    pub conflicts: usize,
    /// Failovers away from a datacenter that was up (loss, cuts): the false failovers.
    pub false_failovers: usize,
    /// Devices a drained datacenter told where to go (a planned failover), by their own
    /// count.
    pub devices_drained: usize,
    /// Devices connected to dc1 (the one the first fault hits) at that fault, from their own
    /// connect and disconnect events: the devices a drain of dc1 must tell.
    pub devices_on_dc1_at_fault: usize,
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
    /// The devices' own split of their failover (`FailoverFinished`): detection, connect
    /// (to the backup's `Welcome`), first answer (restore wait and commit), p50 and p99.
    pub split_ms_p50: [u64; 3],
    pub split_ms_p99: [u64; 3],
    /// The same p99 split, drivers' failovers only and riders' only.
    pub split_ms_p99_drivers: [u64; 3],
    pub split_ms_p99_riders: [u64; 3],
    /// The whole stall as the devices felt it (`FailoverFinished`: from the first op left
    /// unanswered, or the lost datacenter's last sign of life, to the first answer after the
    /// reconnect), p50 and p99. Unlike the app stall it leaves out the workload's own gap
    /// before a device's next op, and in a drain it starts when the device was told.
    pub felt_stall_ms_p50: u64,
    pub felt_stall_ms_p99: u64,
    /// Devices whose first failover after the kill was felt (in the two figures above).
    pub felt_devices: usize,
    pub restore_sessions_per_s: f64,
    pub edge_bytes_per_op: f64,
    /// Of `edge_bytes_per_op`: the handshakes (bytes each connection had sent and received
    /// when its handshake completed; refused attempts are not in either figure).
    pub edge_handshake_bytes_per_op: f64,
    /// QUIC path MTU probes the devices sent, per device.
    pub edge_mtu_probes_per_device: f64,
    /// Standby connections the devices opened, and failovers that went over one (no
    /// handshake at the failover).
    pub standby_opened: u64,
    pub failovers_over_standby: u64,
    /// Reconnects of devices nobody waited on (no live session, nothing queued): not in the
    /// felt stall.
    pub idle_reconnects: u64,
    /// Standby connections at the backup at the last sample before the first fault, and
    /// the backup's RSS growth from its first sample to then, per standby (it serves
    /// nothing else before the fault).
    pub standby_at_backup_before_fault: usize,
    pub backup_rss_per_standby_bytes: Option<f64>,
    /// Handshakes at the datacenter that survived the run (the backup), from its last
    /// status: full ones and ones that resumed a TLS session with a region ticket.
    pub backup_handshakes_full: u64,
    pub backup_handshakes_resumed: u64,
    /// The backup's CPU time (user + system, from `/proc`) from the first fault until every
    /// device was connected again, per device then connected to it; it includes the ops it
    /// served meanwhile (`None`: not every device came back within the run, or no fault).
    pub backup_cpu_us_per_device: Option<f64>,
    /// That window: its length (s) and the ops committed in it (all at the backup), so the
    /// share of the figure that is serving rather than restoring can be judged.
    pub backup_cpu_window_s: f64,
    pub backup_cpu_window_ops: u64,
    /// A bare quinn connection set-up (handshake and one round trip) measured after the run
    /// on this machine, full and resumed: the server's CPU time each, µs (see
    /// `handshake_baseline`; `None`: not measured).
    pub bare_setup_cpu_us_full: Option<f64>,
    pub bare_setup_cpu_us_resumed: Option<f64>,
    /// `backup_cpu_us_per_device` over `bare_setup_cpu_us_resumed` (issue 13's target: at
    /// most 2).
    pub backup_cpu_ratio_to_resumed: Option<f64>,
    pub digest_bytes_p50: u64,
    pub digest_bytes_max: u64,
    /// The primary's shadow restore up to its last status before the first fault: samples
    /// judged, the fraction the devices' copies restored with nothing missing (`None`: no
    /// sample), copies behind or missing, devices that did not answer in time, and the
    /// recent replication lag p99 and sample-to-answer time (the device's flush and a round
    /// trip) p50 and p99.
    pub shadow_samples_before_fault: u64,
    pub shadow_restorable_before_fault: Option<f64>,
    pub shadow_copies_behind_before_fault: u64,
    pub shadow_copies_silent_before_fault: u64,
    pub shadow_lag_ms_p99: u64,
    pub shadow_answer_ms_p50: u64,
    pub shadow_answer_ms_p99: u64,
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

/// What the harness itself needs of a session (the contract is the checker's).
#[derive(Default)]
struct SessionLedger {
    requested: bool,
    request_ms: u64,
    finished_ms: Option<u64>,
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
                        // Whether the client queued it tells a lost answer from a client
                        // that never took the op.
                        Outcome::Unresolved => match o.op {
                            Some(id) => format!(
                                "unresolved (queued as seq {}; in the client: {})",
                                id.seq,
                                o.stuck.as_deref().unwrap_or("?")
                            ),
                            None => "unresolved (never queued: the client did not take it)"
                                .to_string(),
                        },
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

pub struct VerifyInput<'a> {
    pub logs: &'a [DeviceLog],
    /// Every surviving datacenter's store.
    pub stored: &'a BTreeMap<DatacenterId, Vec<StoredSession>>,
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
                Outcome::Committed { .. } => {
                    report.ops_committed += 1;
                    match op.kind {
                        OpKind::Request => {
                            l.requested = true;
                            l.request_ms = op.resolved_ms;
                        }
                        OpKind::Complete | OpKind::Cancel => l.finished_ms = Some(op.resolved_ms),
                        _ => {}
                    }
                }
                Outcome::Rejected(_) => report.ops_rejected += 1,
                Outcome::Unresolved => report.ops_unresolved += 1,
            }
        }
    }
    let add = |v: &mut Vec<String>, s: String| {
        if v.len() < 20 {
            v.push(s);
        }
    };
    let found = judge(report, &input);
    let missing: HashSet<SessionId> = found
        .iter()
        .filter(|v| v.kind == Kind::SessionMissing)
        .map(|v| v.session)
        .collect();
    for (id, l) in &ledgers {
        if !l.requested {
            continue;
        }
        report.trips_total += 1;
        let active_at_failure = l.request_ms < kill && l.finished_ms.is_none_or(|f| f >= kill);
        if active_at_failure {
            report.trips_active_at_failure += 1;
            if !missing.contains(id) {
                report.trips_restored += 1;
            }
        }
    }
    for v in found.iter().take(checker::MAX_REPORTED) {
        add(
            &mut violations,
            format!("{v}\n  devices:{}", history(input.logs, v.session)),
        );
    }
    if found.len() > checker::MAX_REPORTED {
        add(
            &mut violations,
            format!(
                "... and {} more contract violations",
                found.len() - checker::MAX_REPORTED
            ),
        );
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
    let split_histograms = || -> [Histogram<u64>; 3] {
        std::array::from_fn(|_| {
            Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"))
        })
    };
    let mut splits_by_role = [split_histograms(), split_histograms()];
    let mut felt = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    for log in input.logs {
        if let Some((_, ms)) = input
            .kill_ms
            .and_then(|kill| log.failover_felt.iter().find(|(t, _)| *t >= kill))
        {
            let _ = felt.record(*ms);
        }
        // Each device's first failover ended after the kill: its stall, split.
        if let Some((_, parts)) = input
            .kill_ms
            .and_then(|kill| log.failover_splits.iter().find(|(t, _)| *t >= kill))
        {
            let by_role = &mut splits_by_role[usize::from(!log.driver)];
            for (h, v) in by_role.iter_mut().zip(parts) {
                let _ = h.record(*v);
            }
        }
        report.conflicts += log.conflicts.len();
        report.false_failovers += log.false_failovers as usize;
        report.devices_drained += usize::from(log.drained > 0);
        if let Some(kill) = input.kill_ms {
            let last_connect = log.failovers_ms.iter().rfind(|(t, _)| *t <= kill);
            if let Some((at, dc)) = last_connect {
                let left = log.disconnects_ms.iter().any(|t| *t >= *at && *t <= kill);
                report.devices_on_dc1_at_fault += usize::from(*dc == 1 && !left);
            }
        }
        for w in &log.waits_ms {
            let _ = waits.record(*w);
        }
    }
    // Both roles together.
    let mut splits = split_histograms();
    for (all, (d, r)) in splits
        .iter_mut()
        .zip(splits_by_role[0].iter().zip(&splits_by_role[1]))
    {
        let _ = all.add(d);
        let _ = all.add(r);
    }
    report.split_ms_p50 = std::array::from_fn(|i| percentile(&splits[i], 0.5));
    report.split_ms_p99 = std::array::from_fn(|i| percentile(&splits[i], 0.99));
    report.split_ms_p99_drivers = std::array::from_fn(|i| percentile(&splits_by_role[0][i], 0.99));
    report.split_ms_p99_riders = std::array::from_fn(|i| percentile(&splits_by_role[1][i], 0.99));
    report.felt_stall_ms_p50 = percentile(&felt, 0.5);
    report.felt_stall_ms_p99 = percentile(&felt, 0.99);
    report.felt_devices = felt.len() as usize;
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
    let handshake_bytes: u64 = input.logs.iter().map(|l| l.handshake_bytes).sum();
    let per_op = |b: u64| {
        if report.ops_committed > 0 {
            b as f64 / report.ops_committed as f64
        } else {
            0.0
        }
    };
    report.edge_bytes_per_op = per_op(bytes);
    report.edge_handshake_bytes_per_op = per_op(handshake_bytes);
    let probes: u64 = input.logs.iter().map(|l| l.mtu_probes).sum();
    report.edge_mtu_probes_per_device = probes as f64 / input.logs.len().max(1) as f64;
    report.standby_opened = input.logs.iter().map(|l| l.standby_opened).sum();
    report.failovers_over_standby = input.logs.iter().map(|l| l.standby_used).sum();
    report.idle_reconnects = input.logs.iter().map(|l| l.idle_reconnects).sum();
    let mut sizes = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
    for log in input.logs {
        for (_, b) in &log.held_at_end {
            let _ = sizes.record(*b as u64);
        }
    }
    report.digest_bytes_p50 = percentile(&sizes, 0.5);
    report.digest_bytes_max = sizes.max();

    report.passed = found.is_empty()
        && report.trips_lost == 0
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

/// The contract, judged by the testkit's checker: the devices' histories against every
/// surviving store. Fills the report's contract figures from the findings, by kind.
fn judge(report: &mut Report, input: &VerifyInput<'_>) -> Vec<Violation> {
    let history = ledger::history(input.logs);
    let finals = ledger::final_state(input.stored);
    let (found, summary) = checker::check(&history, &finals);
    let count = |k: Kind| found.iter().filter(|v| v.kind == k).count();
    report.trips_lost = count(Kind::SessionMissing);
    report.ops_committed_lost = count(Kind::CommittedOpLost) as u64;
    report.ops_applied_twice = count(Kind::AppliedTwice) as u64;
    report.versions_regressed = count(Kind::VersionRegressed);
    report.tombstones_resurrected = count(Kind::TombstoneResurrected);
    report.ops_refused_but_applied = count(Kind::RefusedButApplied);
    report.sessions_not_converged = count(Kind::NotConverged);
    report.sessions_concurrent_at_end = summary.sessions_with_stale_branch;
    found
}
