//! A seed is a complete description of a run: running it again, in this process or in a new
//! one, gives the same history event for event and the same trace hash.

use lifeboat_dsim::faults::{self, FaultKind};
use lifeboat_dsim::sim::{run, SimConfig};
use std::collections::BTreeSet;
use std::process::Command;

const CHILD: &str = "LIFEBOAT_REPLAY_CHILD";
const TEST: &str = "a_seed_replays_exactly_in_this_process_and_in_a_fresh_one";

/// The replay's shape: the CI shape with enough episodes that one plan can hold every kind.
fn config(seed: u64) -> SimConfig {
    SimConfig {
        episodes: 24,
        ..SimConfig::ci(seed)
    }
}

/// The first seed whose fault plan has every kind of fault (so the replay covers them all).
fn seed_with_every_fault() -> u64 {
    (1..10_000)
        .find(|seed| {
            let kinds: BTreeSet<FaultKind> =
                faults::episodes(&faults::random_plan(*seed, &config(*seed).shape()))
                    .into_iter()
                    .map(|(_, k)| k)
                    .collect();
            kinds.len() == FaultKind::ALL.len()
        })
        .unwrap_or(1)
}

#[test]
fn a_seed_replays_exactly_in_this_process_and_in_a_fresh_one() {
    if let Ok(seed) = std::env::var(CHILD) {
        // The fresh process: run the seed and say what came out.
        let seed: u64 = seed.parse().unwrap_or_default();
        match run(&config(seed)) {
            Ok(out) => println!("TRACE_HASH {} EVENTS {}", out.trace_hash, out.history.len()),
            Err(e) => println!("RUN_FAILED {e:#}"),
        }
        return;
    }
    let seed = seed_with_every_fault();
    let cfg = config(seed);
    let first = run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    let again = run(&cfg).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    assert!(
        first.history.len() > 200,
        "seed {seed}: the run did too little"
    );
    assert!(first.faults.len() >= 6, "seed {seed}: {:?}", first.faults);
    if let Some(i) = (0..first.history.len())
        .find(|i| first.history.entries().get(*i) != again.history.entries().get(*i))
    {
        panic!(
            "seed {seed}: the replay diverged at event {i}:\n  first: {:?}\n  again: {:?}",
            first.history.entries().get(i),
            again.history.entries().get(i)
        );
    }
    assert_eq!(first.history, again.history, "seed {seed}");
    assert_eq!(first.trace_hash, again.trace_hash, "seed {seed}");
    println!(
        "seed {seed}: {} events, {} faults, trace hash {} on both runs",
        first.history.len(),
        first.faults.len(),
        first.trace_hash
    );

    // A new process (new OS randomness, new hash keys, new temp dirs): the same trace.
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, seed.to_string())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let child = stdout
        .lines()
        .find_map(|l| l.split_once("TRACE_HASH ").map(|(_, rest)| rest))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the fresh process printed no trace hash:\n{stdout}"));
    assert_eq!(
        child, first.trace_hash,
        "seed {seed}: a fresh process produced a different run"
    );

    // And the hash does see the run: another seed, another trace.
    let other = run(&config(seed + 1)).unwrap_or_else(|e| panic!("seed {}: {e:#}", seed + 1));
    assert_ne!(other.trace_hash, first.trace_hash);
}
