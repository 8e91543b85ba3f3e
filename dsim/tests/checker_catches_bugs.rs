//! The checker can fail: a datacenter with a deliberate bug (lifeboat-common's
//! `fault-injection` feature, on only in this crate's tests) must be caught, with the seed,
//! the session and a short history; the same scenario without the bug must pass.

use lifeboat_common::fault::{inject, Fault};
use lifeboat_dsim::faults::{Action, Cut, Scheduled};
use lifeboat_dsim::sim::{run_plan, RunOutcome, SimConfig};
use lifeboat_testkit::checker::Kind;
use std::collections::BTreeSet;

/// One datacenter (so a device that reconnects comes back to the one that applied its ops),
/// two trip pairs, no random faults: only the scripted ones.
fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        pairs: 2,
        datacenters: 1,
        workload_ms: 30_000,
        settle_ms: 15_000,
        episodes: 0,
        ..SimConfig::ci(seed)
    }
}

/// Cut `devices`' links to the datacenter (`Cut::Replies`: only the replies) for `cut_ms`,
/// every `every_ms` from 4 s on.
fn cuts(devices: &[usize], cut: Cut, cut_ms: u64, every_ms: u64) -> Vec<Scheduled> {
    let mut plan = Vec::new();
    for (k, at) in (4_000..26_000).step_by(every_ms as usize).enumerate() {
        let device = devices[k % devices.len()];
        plan.push(Scheduled::at(at, Action::Partition { device, dc: 0, cut }));
        plan.push(Scheduled::at(
            at + cut_ms,
            Action::Repair { device, dc: 0, cut },
        ));
    }
    plan
}

fn run(seed: u64, plan: &[Scheduled], fault: Option<Fault>) -> RunOutcome {
    let _guard = fault.map(inject);
    run_plan(&config(seed), plan.to_vec()).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"))
}

/// How to replay one of these scenarios.
fn replay(seed: u64) -> String {
    format!(
        "cargo test -p lifeboat-dsim --test checker_catches_bugs (scripted scenario, seed {seed})"
    )
}

/// Run seeds until the buggy datacenter is caught (bounded); every control run must pass.
fn caught(fault: Fault, plan: &[Scheduled], expect: &[Kind]) {
    for seed in 1..=8 {
        let control = run(seed, plan, None);
        assert!(
            control.passed(),
            "seed {seed}: the scenario fails even without the bug:\n{}",
            lifeboat_testkit::checker::report(seed, &replay(seed), &control.violations)
        );
        let buggy = run(seed, plan, Some(fault));
        let kinds: BTreeSet<Kind> = buggy.violations.iter().map(|v| v.kind).collect();
        if expect.iter().any(|k| kinds.contains(k)) {
            let v = buggy
                .violations
                .iter()
                .find(|v| expect.contains(&v.kind))
                .expect("just found");
            // What a person gets: the seed, the session, the short history.
            let msg = lifeboat_testkit::checker::report(seed, &replay(seed), &buggy.violations);
            println!("{fault:?} caught on seed {seed} ({kinds:?}):\n{msg}");
            assert!(msg.contains(&format!("seed {seed}")));
            assert!(msg.contains(&v.session.to_string()));
            assert!(!v.history.is_empty(), "a violation without its history");
            assert!(
                v.history.len() < v.session_events,
                "the history is not trimmed: {} of {}",
                v.history.len(),
                v.session_events
            );
            assert!(v
                .history
                .iter()
                .all(|e| e.event.session() == Some(v.session)));
            return;
        }
    }
    panic!("{fault:?} was never caught in 8 seeds");
}

#[test]
fn a_datacenter_that_forgets_its_dedup_state_is_caught() {
    // Every device loses the datacenter's replies for 4 s at a time: ops it applied go
    // unanswered, and the client resubmits them when it reconnects unless a copy that
    // covers them reached it first (a rider's op waiting for its anchor is the usual case).
    let plan = cuts(&[0, 1, 2, 3], Cut::Replies, 4_000, 5_000);
    caught(
        Fault::ForgetDedup,
        &plan,
        &[Kind::AppliedTwice, Kind::CommittedOpLost],
    );
}

#[test]
fn a_datacenter_that_accepts_an_older_digest_is_caught() {
    // Riders (even devices) are cut off for 6 s at a time while their drivers go on: when
    // they come back they upload a copy older than the datacenter's.
    let plan = cuts(&[0, 2], Cut::Both, 6_000, 7_000);
    caught(
        Fault::AcceptOlderDigest,
        &plan,
        &[Kind::CommittedOpLost, Kind::VersionRegressed],
    );
}

/// Run the CI configuration's random fault plans (two datacenters: crashes, partitions,
/// false failovers, frozen datacenters) until the buggy build is caught (bounded); the same
/// seed without the bug must pass.
fn caught_in_random_runs(fault: Fault, expect: &[Kind]) {
    for seed in 1..=60 {
        let cfg = SimConfig::ci(seed);
        let control =
            lifeboat_dsim::sim::run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        assert!(
            control.passed(),
            "seed {seed}: fails even without the bug:\n{}",
            lifeboat_testkit::checker::report(seed, &replay(seed), &control.violations)
        );
        let buggy = {
            let _guard = inject(fault);
            lifeboat_dsim::sim::run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"))
        };
        let kinds: BTreeSet<Kind> = buggy.violations.iter().map(|v| v.kind).collect();
        if expect.iter().any(|k| kinds.contains(k)) {
            println!("{fault:?} caught on seed {seed} ({kinds:?})");
            return;
        }
    }
    panic!("{fault:?} was never caught in 60 seeds");
}

#[test]
fn a_datacenter_that_reports_a_commit_the_chain_holder_did_not_persist_is_caught() {
    caught_in_random_runs(
        Fault::CommitWithoutChainHolder,
        &[
            Kind::CommittedOpLost,
            Kind::VersionRegressed,
            Kind::TombstoneResurrected,
            Kind::NotConverged,
        ],
    );
}

#[test]
fn an_edge_that_reports_an_op_its_chain_holder_did_not_persist_is_caught() {
    caught_in_random_runs(
        Fault::ReportOnReply,
        &[
            Kind::CommittedOpLost,
            Kind::VersionRegressed,
            Kind::TombstoneResurrected,
            Kind::NotConverged,
        ],
    );
}
