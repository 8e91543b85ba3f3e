//! Many seeds: which to run (from the environment), on how many threads, and the report.
//!
//! - `LIFEBOAT_SEED=<seed>`: that seed only (a replay), with its faults and trace hash
//!   printed, and the whole history too with `LIFEBOAT_TRACE=1`;
//! - `LIFEBOAT_SOAK=1`: [`SOAK_SEEDS`] seeds (or `LIFEBOAT_SOAK_SEEDS`), from
//!   `LIFEBOAT_SEED_BASE` (default: the CI range's end, so a soak explores new seeds);
//! - otherwise the CI range: [`CI_SEEDS`] seeds from [`CI_SEED_BASE`].
//!
//! Each seed runs on its own thread (a turmoil simulation is single-threaded), with as many
//! worker threads as the machine has cores. A seed that fails prints its violations, each
//! with its session and shortest history, and the command that replays it.

use crate::faults::FaultKind;
use crate::sim::{self, SimConfig};
use lifeboat_testkit::checker::{self, Summary, Violation};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seeds in a CI run.
pub const CI_SEEDS: u64 = 300;
/// The first seed of the CI range (fixed: a CI run is reproducible as a whole).
pub const CI_SEED_BASE: u64 = 1;
/// Seeds in a soak run.
pub const SOAK_SEEDS: u64 = 5_000;

/// The command that replays `seed` of the chaos suite.
pub fn replay_command(seed: u64) -> String {
    format!("LIFEBOAT_SEED={seed} cargo test -p lifeboat-dsim --test chaos -- --nocapture")
}

/// Which seeds to run, from the environment (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Replay(u64),
    Range { first: u64, count: u64, soak: bool },
}

impl Selection {
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let num = |name: &str, v: String| {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("{name}={v:?} is not a number: {e}"))
        };
        if let Some(v) = var("LIFEBOAT_SEED") {
            return Ok(Selection::Replay(num("LIFEBOAT_SEED", v)?));
        }
        let soak = var("LIFEBOAT_SOAK").is_some_and(|v| v != "0");
        let count = match var("LIFEBOAT_SOAK_SEEDS") {
            Some(v) if soak => num("LIFEBOAT_SOAK_SEEDS", v)?,
            _ if soak => SOAK_SEEDS,
            _ => CI_SEEDS,
        };
        let first = match var("LIFEBOAT_SEED_BASE") {
            Some(v) => num("LIFEBOAT_SEED_BASE", v)?,
            None if soak => CI_SEED_BASE + CI_SEEDS,
            None => CI_SEED_BASE,
        };
        Ok(Selection::Range { first, count, soak })
    }

    pub fn seeds(&self) -> Vec<u64> {
        match self {
            Selection::Replay(s) => vec![*s],
            Selection::Range { first, count, .. } => {
                (*first..first.saturating_add(*count)).collect()
            }
        }
    }
}

/// What is kept of one seed's run.
#[derive(Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub summary: Summary,
    pub faults: Vec<String>,
    pub trace_hash: String,
    pub ops_unresolved: usize,
    pub fault_counts: BTreeMap<FaultKind, usize>,
    pub failovers: usize,
    pub false_failovers: usize,
    pub wall_ms: u64,
    /// The run itself failed (a harness error, never a pass).
    pub error: Option<String>,
}

impl SeedResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.violations.is_empty()
    }

    /// The failure message: the seed, the replay command, the violations or the error.
    pub fn failure(&self) -> String {
        match &self.error {
            Some(e) => format!(
                "seed {}: the run failed: {e}\nreplay: {}\n",
                self.seed,
                replay_command(self.seed)
            ),
            None => {
                let mut s =
                    checker::report(self.seed, &replay_command(self.seed), &self.violations);
                s.push_str("faults:\n");
                for f in &self.faults {
                    s.push_str("  ");
                    s.push_str(f);
                    s.push('\n');
                }
                s
            }
        }
    }
}

/// Run one seed and keep its result (the history is dropped unless `keep` says otherwise).
pub fn run_seed(cfg: &SimConfig) -> (SeedResult, Option<sim::RunOutcome>) {
    match sim::run(cfg) {
        Ok(out) => (
            SeedResult {
                seed: out.seed,
                violations: out.violations.clone(),
                summary: out.summary.clone(),
                faults: out.faults.clone(),
                trace_hash: out.trace_hash.clone(),
                ops_unresolved: out.ops_unresolved,
                fault_counts: out.fault_counts.clone(),
                failovers: out.failovers,
                false_failovers: out.false_failovers,
                wall_ms: out.wall_ms,
                error: None,
            },
            Some(out),
        ),
        Err(e) => (
            SeedResult {
                seed: cfg.seed,
                violations: Vec::new(),
                summary: Summary::default(),
                faults: Vec::new(),
                trace_hash: String::new(),
                ops_unresolved: 0,
                fault_counts: BTreeMap::new(),
                failovers: 0,
                false_failovers: 0,
                wall_ms: 0,
                error: Some(format!("{e:#}")),
            },
            None,
        ),
    }
}

/// Run `seeds` on `threads` worker threads; results in seed order.
pub fn run_seeds(
    seeds: &[u64],
    threads: usize,
    config: impl Fn(u64) -> SimConfig + Sync,
) -> Vec<SeedResult> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else {
                    return;
                };
                let (r, _) = run_seed(&config(seed));
                if let Ok(mut all) = results.lock() {
                    all.push(r);
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|e| e.into_inner());
    all.sort_by_key(|r| r.seed);
    all
}

/// Figures of a batch of seeds.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub seeds: usize,
    pub failed: usize,
    pub ops_committed: usize,
    pub ops_refused: usize,
    pub ops_unresolved: usize,
    pub faults: usize,
    pub sessions: usize,
    pub sessions_with_conflicts: usize,
    pub tentative_replaced: usize,
    pub sessions_with_stale_branch: usize,
    /// Fault episodes that took effect, by kind.
    pub fault_counts: BTreeMap<FaultKind, usize>,
    pub failovers: usize,
    /// Failovers away from a datacenter that was up.
    pub false_failovers: usize,
    /// Seeds that failed, by the kinds of violation they showed.
    pub failed_by_kind: BTreeMap<checker::Kind, usize>,
    pub wall_ms: u64,
}

impl Totals {
    pub fn of(results: &[SeedResult], started: Instant) -> Self {
        let mut t = Totals {
            seeds: results.len(),
            wall_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        for r in results {
            t.failed += usize::from(!r.passed());
            t.ops_committed += r.summary.ops_committed;
            t.ops_refused += r.summary.ops_refused;
            t.ops_unresolved += r.ops_unresolved;
            t.faults += r.faults.len();
            t.sessions += r.summary.sessions;
            t.sessions_with_conflicts += r.summary.sessions_with_conflicts;
            t.tentative_replaced += r.summary.tentative_replaced;
            for (k, n) in &r.fault_counts {
                *t.fault_counts.entry(*k).or_default() += n;
            }
            t.failovers += r.failovers;
            t.false_failovers += r.false_failovers;
            let kinds: std::collections::BTreeSet<checker::Kind> =
                r.violations.iter().map(|v| v.kind).collect();
            for k in kinds {
                *t.failed_by_kind.entry(k).or_default() += 1;
            }
            t.sessions_with_stale_branch += r.summary.sessions_with_stale_branch;
        }
        t
    }

    pub fn seeds_per_s(&self) -> f64 {
        self.seeds as f64 / (self.wall_ms.max(1) as f64 / 1000.0)
    }

    /// `n` per 1,000 seeds of this batch.
    pub fn per_1000(&self, n: usize) -> f64 {
        n as f64 * 1000.0 / self.seeds.max(1) as f64
    }

    /// How often each fault kind took effect, per 1,000 seeds, and the failovers.
    pub fn fault_frequencies(&self) -> String {
        let kinds: Vec<String> = FaultKind::ALL
            .iter()
            .map(|k| {
                let n = self.fault_counts.get(k).copied().unwrap_or(0);
                format!("{k} {:.0}", self.per_1000(n))
            })
            .collect();
        format!(
            "faults per 1,000 seeds: {}; failovers {:.0}, of them false (away from a datacenter that was up) {:.0}",
            kinds.join(", "),
            self.per_1000(self.failovers),
            self.per_1000(self.false_failovers)
        )
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seeds in {:.1} s ({:.1} seeds/s), {} failed; {} sessions, {} ops committed, {} refused, {} unanswered at the end; {} faults injected; {} sessions with a surfaced conflict (none excused), {} with a stale branch at a datacenter; {} tentative copies replaced",
            self.seeds,
            self.wall_ms as f64 / 1000.0,
            self.seeds_per_s(),
            self.failed,
            self.sessions,
            self.ops_committed,
            self.ops_refused,
            self.ops_unresolved,
            self.faults,
            self.sessions_with_conflicts,
            self.sessions_with_stale_branch,
            self.tentative_replaced
        )?;
        if !self.failed_by_kind.is_empty() {
            let by: Vec<String> = self
                .failed_by_kind
                .iter()
                .map(|(k, n)| format!("{k:?} {n}"))
                .collect();
            write!(f, "; failed seeds by violation kind: {}", by.join(", "))?;
        }
        write!(f, "\n{}", self.fault_frequencies())
    }
}
