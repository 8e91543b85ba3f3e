//! The chaos suite: many seeds of the deterministic simulation, each checked by the history
//! checker. `LIFEBOAT_SEED=<seed>` replays one seed exactly (add `LIFEBOAT_TRACE=1` for its
//! whole history); `LIFEBOAT_SOAK=1` runs thousands. See docs/CHAOS.md.

use lifeboat_dsim::sim::SimConfig;
use lifeboat_dsim::suite::{self, Selection, Totals};
use std::time::Instant;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[test]
fn seeded_faults_never_break_the_contract() {
    let selection = match Selection::from_env() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    if let Selection::Replay(seed) = selection {
        replay(seed);
        return;
    }
    let seeds = selection.seeds();
    let started = Instant::now();
    let results = suite::run_seeds(&seeds, threads(), SimConfig::ci);
    let totals = Totals::of(&results, started);
    println!(
        "chaos suite ({selection:?}, {} threads): {totals}",
        threads()
    );
    let failures: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.failure())
        .collect();
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke the contract (each is printed above with its replay command)",
        failures.len(),
        seeds.len()
    );
    // The suite must exercise something: faults and committed work on every seed.
    assert!(
        results.iter().all(|r| !r.faults.is_empty()),
        "a seed ran without a fault"
    );
    assert!(
        results.iter().all(|r| r.summary.ops_committed > 0),
        "a seed committed nothing"
    );
}

/// One seed, with everything a person needs to follow it.
fn replay(seed: u64) {
    let (result, outcome) = suite::run_seed(&SimConfig::ci(seed));
    println!("seed {seed}: trace hash {}", result.trace_hash);
    for f in &result.faults {
        println!("  fault at {f}");
    }
    if let Some(out) = &outcome {
        println!(
            "  {:?}, {} ops unanswered at the end",
            out.summary, out.ops_unresolved
        );
        println!(
            "  fault episodes {:?}; {} failovers, {} of them away from a datacenter that was up",
            out.fault_counts, out.failovers, out.false_failovers
        );
        if std::env::var("LIFEBOAT_TRACE").is_ok_and(|v| v != "0") {
            for e in out.history.entries() {
                let session = e.event.session().map(|s| s.to_string()).unwrap_or_default();
                println!("  {e}  {session}");
            }
        }
    }
    assert!(result.passed(), "{}", result.failure());
}
