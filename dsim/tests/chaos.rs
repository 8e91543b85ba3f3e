use lifeboat_dsim::sim::{run, SimConfig};

#[test]
fn one_seed_smoke() {
    let seed: u64 = std::env::var("LIFEBOAT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut cfg = SimConfig::ci(seed);
    if let Ok(e) = std::env::var("EPISODES") { cfg.episodes = e.parse().unwrap(); }
    let out = run(&cfg).expect("run");
    println!("seed {} wall {} ms events {} hash {} unresolved {}", out.seed, out.wall_ms, out.history.len(), out.trace_hash, out.ops_unresolved);
    println!("summary {:?}", out.summary);
    for f in &out.faults { println!("fault {f}"); }
    if std::env::var("SHOW").is_ok() { for e in out.history.entries() { println!("{e}"); } }
    for v in &out.violations { println!("{v}"); }
}

#[test]
fn twice_diff() {
    let seed: u64 = std::env::var("LIFEBOAT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cfg = SimConfig::ci(seed);
    let a = run(&cfg).expect("run");
    let b = run(&cfg).expect("run");
    println!("hash a {} b {}", a.trace_hash, b.trace_hash);
    let ea = a.history.entries(); let eb = b.history.entries();
    for i in 0..ea.len().min(eb.len()) {
        if ea[i] != eb[i] {
            for j in i.saturating_sub(5)..(i+5).min(ea.len()).min(eb.len()) { println!("A {:?}\nB {:?}", ea[j], eb[j]); }
            break;
        }
    }
    println!("len {} {}", ea.len(), eb.len());
}
