//! The faults of a run: what happens to which host or link, and when.
//!
//! A plan is a list of [`Scheduled`] actions in simulated time. [`random_plan`] draws one from
//! the seed alone (a pure function: the same seed gives the same plan). Each episode is one
//! [`FaultKind`]; its first action carries the kind (so a run can count what it injected)
//! and its last one undoes it, inside the window:
//!
//! - datacenter crashes (disk kept or lost) restarted up to 20 s later, and bounces;
//! - device<->datacenter partitions both ways up to 15 s, and long ones (10.5-20 s: longer
//!   than the servers' default restore grace of 10 s, so both sides of a split act);
//! - false failovers: a one-way cut (either direction) of one device from a datacenter that
//!   stays up, 4-10 s: longer than the edge client's idle timeout (3 s, keep-alive 500 ms;
//!   with only the device's direction cut the datacenter's side times out first and the
//!   device's 3 s later), so the device fails over to a live datacenter;
//! - lost replies: the datacenter-to-device direction only, 0.5-4 s: shorter cuts delay
//!   replies (QUIC retransmits them), those past the idle timeout end the connection with
//!   replies in flight, so the device resubmits them elsewhere;
//! - a frozen datacenter: every link of it held (turmoil `hold`: nothing is delivered, both
//!   ways, while its software runs on), 2-12 s, then thawed (`release`: what was held arrives
//!   at once). No restart, so no restore barrier at thaw;
//! - staggered returns: every device cut from one datacenter (mostly the preferred one) for
//!   5-12 s, then let back one by one, up to 8 s apart, so the participants of a trip come
//!   home at different times;
//! - device app restarts on the same store; 5-30 % loss on a device's links; latency up to
//!   100-500 ms on every link (reordering).
//!
//! Overlapping episodes compose: the network keeps, per link, the cuts and freezes in force
//! and applies the strongest (`crate::sim`), so undoing one episode never undoes another.
//! [`heal_all`] undoes everything before the settle phase, so the end state can be checked.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// Which direction of a device<->datacenter link a cut drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cut {
    /// Both directions.
    Both,
    /// Only datacenter to device (the device's requests arrive, the replies are lost).
    Replies,
    /// Only device to datacenter.
    Requests,
}

/// One thing done to the simulated world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Kill a datacenter (its software stops; `lose_disk`: its data directory is deleted).
    CrashDc { dc: usize, lose_disk: bool },
    /// Start a crashed datacenter again, on whatever its disk holds.
    RestartDc { dc: usize },
    /// Kill and restart at once (disk kept or lost).
    BounceDc { dc: usize, lose_disk: bool },
    /// Cut the link between a device and a datacenter (in force until the matching
    /// [`Action::Repair`]).
    Partition { device: usize, dc: usize, cut: Cut },
    /// Undo one [`Action::Partition`] with the same arguments.
    Repair { device: usize, dc: usize, cut: Cut },
    /// Hold every message to and from a datacenter (it runs on, hearing and saying nothing).
    FreezeDc { dc: usize },
    /// Undo one [`Action::FreezeDc`]: the held messages are delivered at once.
    ThawDc { dc: usize },
    /// Restart a device's app on the same store.
    RestartDevice { device: usize },
    /// Drop this share of messages on every link of a device.
    Loss { device: usize, rate_pct: u8 },
    /// Messages on every link take up to this long (reordering them).
    Latency { max_ms: u64 },
    /// Every cut repaired, every datacenter thawed, no loss (the start of the settle phase).
    HealNetwork,
}

impl Action {
    /// The action in words, naming device `i` as `device(i)`.
    pub fn describe(&self, device: &dyn Fn(usize) -> String) -> String {
        let disk = |lose: bool| if lose { " (disk lost)" } else { "" };
        let cut = |c: Cut| match c {
            Cut::Both => "",
            Cut::Replies => " (dc to device only)",
            Cut::Requests => " (device to dc only)",
        };
        match self {
            Action::CrashDc { dc, lose_disk } => format!("crash dc{}{}", dc + 1, disk(*lose_disk)),
            Action::RestartDc { dc } => format!("restart dc{}", dc + 1),
            Action::BounceDc { dc, lose_disk } => {
                format!("bounce dc{}{}", dc + 1, disk(*lose_disk))
            }
            Action::Partition {
                device: d,
                dc,
                cut: c,
            } => {
                format!("partition {} from dc{}{}", device(*d), dc + 1, cut(*c))
            }
            Action::Repair {
                device: d,
                dc,
                cut: c,
            } => {
                format!("repair {} - dc{}{}", device(*d), dc + 1, cut(*c))
            }
            Action::FreezeDc { dc } => format!("freeze dc{}", dc + 1),
            Action::ThawDc { dc } => format!("thaw dc{}", dc + 1),
            Action::RestartDevice { device: d } => format!("restart {}", device(*d)),
            Action::Loss {
                device: d,
                rate_pct,
            } => format!("{rate_pct}% loss on {}", device(*d)),
            Action::Latency { max_ms } => format!("latency up to {max_ms} ms"),
            Action::HealNetwork => "heal the network".to_string(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|i| format!("device #{i}")))
    }
}

/// The kinds of fault episode a plan draws (what the suite counts per 1,000 seeds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A datacenter killed, its disk kept, restarted later.
    DcCrash,
    /// A datacenter killed and its disk lost, restarted later on an empty one.
    DcCrashDiskLost,
    /// A datacenter killed and restarted at once (disk kept or lost).
    DcBounce,
    /// One device cut from one datacenter both ways, up to 15 s.
    Partition,
    /// One device cut from one datacenter both ways for longer than the old restore grace.
    LongPartition,
    /// A one-way cut of one device from a live datacenter, past the idle timeout.
    FalseFailover,
    /// The datacenter-to-device direction dropped briefly.
    LostReplies,
    /// A datacenter held (not crashed), then thawed.
    FrozenDc,
    /// Every device cut from one datacenter, then let back at different times.
    StaggeredReturn,
    /// A device's app restarted on its store.
    DeviceRestart,
    /// Message loss on a device's links.
    Loss,
    /// Long, reordering latency on every link.
    Latency,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::DcCrash,
        FaultKind::DcCrashDiskLost,
        FaultKind::DcBounce,
        FaultKind::Partition,
        FaultKind::LongPartition,
        FaultKind::FalseFailover,
        FaultKind::LostReplies,
        FaultKind::FrozenDc,
        FaultKind::StaggeredReturn,
        FaultKind::DeviceRestart,
        FaultKind::Loss,
        FaultKind::Latency,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::DcCrash => "dc crash",
            FaultKind::DcCrashDiskLost => "dc crash, disk lost",
            FaultKind::DcBounce => "dc bounce",
            FaultKind::Partition => "partition",
            FaultKind::LongPartition => "long partition (> 10 s)",
            FaultKind::FalseFailover => "false failover (one-way cut)",
            FaultKind::LostReplies => "lost replies",
            FaultKind::FrozenDc => "frozen dc",
            FaultKind::StaggeredReturn => "staggered return",
            FaultKind::DeviceRestart => "device restart",
            FaultKind::Loss => "loss",
            FaultKind::Latency => "latency",
        }
    }

    pub fn index(&self) -> usize {
        Self::ALL.iter().position(|k| k == self).unwrap_or(0)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An action at a simulated time (ms since the start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub at_ms: u64,
    pub action: Action,
    /// Set on the first action of an episode: the kind of fault it starts.
    pub starts: Option<FaultKind>,
}

impl Scheduled {
    /// An action that starts no episode (a repair, or a scripted step).
    pub fn at(at_ms: u64, action: Action) -> Self {
        Self {
            at_ms,
            action,
            starts: None,
        }
    }
}

/// Bounds of a random plan.
#[derive(Clone, Debug)]
pub struct PlanShape {
    pub datacenters: usize,
    pub devices: usize,
    /// Faults start after this (the first trips get going).
    pub start_ms: u64,
    /// Every fault is undone by this time.
    pub end_ms: u64,
    /// Fault episodes drawn (each a fault and, later, its repair).
    pub episodes: usize,
    /// Normal maximum message latency.
    pub base_latency_ms: u64,
}

/// Shares of the episode kinds, in percent (they sum to 100).
const WEIGHTS: [(FaultKind, u32); 12] = [
    (FaultKind::DcCrash, 9),
    (FaultKind::DcCrashDiskLost, 6),
    (FaultKind::DcBounce, 6),
    (FaultKind::Partition, 8),
    (FaultKind::LongPartition, 10),
    (FaultKind::FalseFailover, 14),
    (FaultKind::LostReplies, 12),
    (FaultKind::FrozenDc, 10),
    (FaultKind::StaggeredReturn, 8),
    (FaultKind::DeviceRestart, 8),
    (FaultKind::Loss, 5),
    (FaultKind::Latency, 4),
];

/// The servers' default restore grace (10 s): long partitions must outlast it.
pub const OLD_RESTORE_GRACE_MS: u64 = 10_000;
/// The devices' idle timeout in this simulation (3 s, keep-alive [`EDGE_KEEP_ALIVE_MS`]):
/// false failovers must outlast it. Shorter than the edge client's defaults (45 s and 15 s)
/// so that the idle devices of a 60-second window notice every episode too; the devices
/// with work in flight detect from that work (1 s), as with the defaults.
pub const EDGE_IDLE_TIMEOUT_MS: u64 = 3_000;
/// The devices' keep-alive in this simulation (see [`EDGE_IDLE_TIMEOUT_MS`]).
pub const EDGE_KEEP_ALIVE_MS: u64 = 500;

/// Draw a plan from `seed`. Episodes may overlap (two datacenters down at once, a partition
/// during a crash, ...); each one is undone within the window.
pub fn random_plan(seed: u64, shape: &PlanShape) -> Vec<Scheduled> {
    let mut plan: Vec<Scheduled> = random_episodes(seed, shape).into_iter().flatten().collect();
    plan.sort_by_key(|s| s.at_ms);
    plan
}

/// The episodes of [`random_plan`], each with its own actions (in drawing order).
pub fn random_episodes(seed: u64, shape: &PlanShape) -> Vec<Vec<Scheduled>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED_FA17_0000_0002);
    let mut all = Vec::new();
    let end = shape.end_ms;
    let window = end.saturating_sub(shape.start_ms).max(1);
    for _ in 0..shape.episodes {
        let mut plan = Vec::new();
        let mut pick = rng.random_range(0..100u32);
        let kind = WEIGHTS
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or(FaultKind::Latency, |(k, _)| *k);
        let dc = rng.random_range(0..shape.datacenters);
        // Devices are at the first datacenter unless something moved them: most cuts aim
        // there.
        let home = if rng.random_bool(0.75) { 0 } else { dc };
        let device = rng.random_range(0..shape.devices);
        // An episode of `lo..=hi` ms that fits in the window (a start drawn so it ends by
        // `end`; shorter only if the window itself is).
        let span = |rng: &mut SmallRng, lo: u64, hi: u64| {
            let len = rng.random_range(lo..=hi).min(window);
            let at = shape.start_ms + rng.random_range(0..=window - len);
            (at, at + len)
        };
        let start = |at_ms, action| Scheduled {
            at_ms,
            action,
            starts: Some(kind),
        };
        match kind {
            FaultKind::DcCrash | FaultKind::DcCrashDiskLost => {
                let (at, back) = span(&mut rng, 1, 20_000);
                let lose_disk = kind == FaultKind::DcCrashDiskLost;
                plan.push(start(at, Action::CrashDc { dc, lose_disk }));
                plan.push(Scheduled::at(back, Action::RestartDc { dc }));
            }
            FaultKind::DcBounce => {
                let (at, _) = span(&mut rng, 0, 0);
                let lose_disk = rng.random_bool(0.3);
                plan.push(start(at, Action::BounceDc { dc, lose_disk }));
            }
            FaultKind::Partition | FaultKind::LongPartition => {
                let (lo, hi) = if kind == FaultKind::Partition {
                    (1, 15_000)
                } else {
                    (OLD_RESTORE_GRACE_MS + 500, 20_000)
                };
                let (at, back) = span(&mut rng, lo, hi);
                let cut = Cut::Both;
                plan.push(start(at, Action::Partition { device, dc, cut }));
                plan.push(Scheduled::at(back, Action::Repair { device, dc, cut }));
            }
            FaultKind::FalseFailover | FaultKind::LostReplies => {
                let (cut, lo, hi) = if kind == FaultKind::FalseFailover {
                    let cut = if rng.random_bool(0.5) {
                        Cut::Replies
                    } else {
                        Cut::Requests
                    };
                    (cut, EDGE_IDLE_TIMEOUT_MS + 1_000, 10_000)
                } else {
                    (Cut::Replies, 500, 4_000)
                };
                let (at, back) = span(&mut rng, lo, hi);
                let dc = home;
                plan.push(start(at, Action::Partition { device, dc, cut }));
                plan.push(Scheduled::at(back, Action::Repair { device, dc, cut }));
            }
            FaultKind::FrozenDc => {
                let (at, back) = span(&mut rng, 2_000, 12_000);
                plan.push(start(at, Action::FreezeDc { dc }));
                plan.push(Scheduled::at(back, Action::ThawDc { dc }));
            }
            FaultKind::StaggeredReturn => {
                // Room for the cut and the latest return.
                let cut_ms = rng.random_range(5_000..=12_000);
                let (at, _) = span(&mut rng, cut_ms + 8_000, cut_ms + 8_000);
                let dc = home;
                let cut = Cut::Both;
                for d in 0..shape.devices {
                    let action = Action::Partition { device: d, dc, cut };
                    plan.push(if d == 0 {
                        start(at, action)
                    } else {
                        Scheduled::at(at, action)
                    });
                    let back = (at + cut_ms + rng.random_range(0..=8_000)).min(end);
                    plan.push(Scheduled::at(back, Action::Repair { device: d, dc, cut }));
                }
            }
            FaultKind::DeviceRestart => {
                let (at, _) = span(&mut rng, 0, 0);
                plan.push(start(at, Action::RestartDevice { device }));
            }
            FaultKind::Loss => {
                let (at, back) = span(&mut rng, 1, 10_000);
                let rate_pct = rng.random_range(5..=30);
                plan.push(start(at, Action::Loss { device, rate_pct }));
                plan.push(Scheduled::at(
                    back,
                    Action::Loss {
                        device,
                        rate_pct: 0,
                    },
                ));
            }
            FaultKind::Latency => {
                let (at, back) = span(&mut rng, 1, 10_000);
                let max_ms = rng.random_range(100..=500);
                plan.push(start(at, Action::Latency { max_ms }));
                plan.push(Scheduled::at(
                    back,
                    Action::Latency {
                        max_ms: shape.base_latency_ms,
                    },
                ));
            }
        }
        all.push(plan);
    }
    all
}

/// The kinds of the episodes a plan starts, with their times.
pub fn episodes(plan: &[Scheduled]) -> Vec<(u64, FaultKind)> {
    plan.iter()
        .filter_map(|s| s.starts.map(|k| (s.at_ms, k)))
        .collect()
}

/// Undo everything at `at_ms`: every datacenter running, every link whole and thawed, no
/// loss, normal latency. (Restarting a datacenter that runs is a no-op for the world.)
pub fn heal_all(at_ms: u64, shape: &PlanShape) -> Vec<Scheduled> {
    let mut plan: Vec<Scheduled> = (0..shape.datacenters)
        .map(|dc| Scheduled::at(at_ms, Action::RestartDc { dc }))
        .collect();
    plan.push(Scheduled::at(at_ms, Action::HealNetwork));
    plan.push(Scheduled::at(
        at_ms,
        Action::Latency {
            max_ms: shape.base_latency_ms,
        },
    ));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn shape() -> PlanShape {
        PlanShape {
            datacenters: 2,
            devices: 6,
            start_ms: 3_000,
            end_ms: 40_000,
            episodes: 8,
            base_latency_ms: 30,
        }
    }

    #[test]
    fn a_plan_is_a_function_of_its_seed_and_stays_inside_its_window() {
        let a = random_plan(7, &shape());
        assert_eq!(a, random_plan(7, &shape()));
        assert_ne!(a, random_plan(8, &shape()));
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(a.iter().all(|s| (3_000..=40_000).contains(&s.at_ms)));
        assert_eq!(episodes(&a).len(), 8);
    }

    #[test]
    fn every_fault_is_undone_inside_the_window() {
        for seed in 0..500 {
            let plan = random_plan(seed, &shape());
            for (i, s) in plan.iter().enumerate() {
                let undone = |f: &dyn Fn(&Action) -> bool| plan[i..].iter().any(|x| f(&x.action));
                match s.action {
                    Action::CrashDc { dc, .. } => {
                        assert!(undone(&|a| *a == Action::RestartDc { dc }), "seed {seed}")
                    }
                    Action::Partition { device, dc, cut } => assert!(
                        undone(&|a| *a == Action::Repair { device, dc, cut }),
                        "seed {seed}"
                    ),
                    Action::FreezeDc { dc } => {
                        assert!(undone(&|a| *a == Action::ThawDc { dc }), "seed {seed}")
                    }
                    _ => {}
                }
            }
        }
    }

    /// The durations each split-producing kind promises, over many seeds.
    #[test]
    fn the_split_faults_last_as_long_as_they_must() {
        let mut seen: BTreeMap<FaultKind, usize> = BTreeMap::new();
        for seed in 0..1_000 {
            for ep in random_episodes(seed, &shape()) {
                let kind = ep[0].starts.expect("an episode starts with its kind");
                assert!(ep[1..].iter().all(|s| s.starts.is_none()), "seed {seed}");
                *seen.entry(kind).or_default() += 1;
                let lasts = |ep: &[Scheduled]| ep[ep.len() - 1].at_ms - ep[0].at_ms;
                match kind {
                    FaultKind::LongPartition => {
                        assert!(lasts(&ep) > OLD_RESTORE_GRACE_MS, "seed {seed}: {ep:?}");
                        assert!(matches!(
                            ep[0].action,
                            Action::Partition { cut: Cut::Both, .. }
                        ));
                    }
                    FaultKind::FalseFailover => {
                        assert!(lasts(&ep) > EDGE_IDLE_TIMEOUT_MS, "seed {seed}: {ep:?}");
                        assert!(matches!(
                            ep[0].action,
                            Action::Partition {
                                cut: Cut::Replies | Cut::Requests,
                                ..
                            }
                        ));
                    }
                    FaultKind::LostReplies => {
                        assert!(lasts(&ep) <= 4_000, "seed {seed}: {ep:?}");
                        assert!(matches!(
                            ep[0].action,
                            Action::Partition {
                                cut: Cut::Replies,
                                ..
                            }
                        ));
                    }
                    FaultKind::FrozenDc => {
                        assert!(matches!(ep[0].action, Action::FreezeDc { .. }));
                        assert!(matches!(ep[1].action, Action::ThawDc { .. }));
                        assert!(lasts(&ep) >= 2_000, "seed {seed}: {ep:?}");
                    }
                    FaultKind::StaggeredReturn => {
                        // Every device cut from one datacenter, back at different times.
                        let cuts = ep
                            .iter()
                            .filter(|s| matches!(s.action, Action::Partition { .. }))
                            .count();
                        assert_eq!(cuts, shape().devices, "seed {seed}");
                        let backs: BTreeSet<u64> = ep
                            .iter()
                            .filter(|s| matches!(s.action, Action::Repair { .. }))
                            .map(|s| s.at_ms)
                            .collect();
                        assert!(backs.len() > 1, "seed {seed}: {ep:?}");
                    }
                    _ => {}
                }
                assert!(ep.iter().all(|s| s.at_ms <= shape().end_ms), "seed {seed}");
            }
        }
        for k in FaultKind::ALL {
            assert!(seen.get(&k).copied().unwrap_or(0) > 0, "{k:?} never drawn");
        }
    }

    #[test]
    fn the_weights_sum_to_a_hundred_and_name_every_kind() {
        assert_eq!(WEIGHTS.iter().map(|(_, w)| w).sum::<u32>(), 100);
        for k in FaultKind::ALL {
            assert!(WEIGHTS.iter().any(|(x, _)| *x == k), "{k:?}");
        }
    }
}
