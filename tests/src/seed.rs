//! Seeds for randomised tests: `LIFEBOAT_SEED=<n>` replays one run; otherwise each run
//! draws a fresh seed. The seed is printed when the test starts (shown by cargo when the
//! test fails) and attached, with the replay command, to the test's error.

/// This run's seed for `test`: `LIFEBOAT_SEED` if set, else a fresh one. Printed.
pub fn seed_for(test: &str) -> u64 {
    let seed = std::env::var("LIFEBOAT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay: {})", replay(seed, test));
    seed
}

fn replay(seed: u64, test: &str) -> String {
    format!("LIFEBOAT_SEED={seed} cargo test -p lifeboat-tests --test chaos_process {test}")
}

/// Attach the seed and the replay command to a failure.
pub fn with_seed<T>(seed: u64, test: &str, r: anyhow::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| e.context(format!("seed {seed}; replay: {}", replay(seed, test))))
}
