//! The faults of a run: what happens to which host or link, and when.
//!
//! A plan is a list of [`Scheduled`] actions in simulated time. [`random_plan`] draws one from
//! the seed: datacenter crashes (disk kept or lost) and bounces, device<->datacenter
//! partitions (both ways or one way), device app restarts on the same store, and episodes of
//! packet loss and long, reordering latency. Every fault is undone before the settle phase
//! ([`heal_all`]), so that the end state can be checked.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// One thing done to the simulated world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Kill a datacenter (its software stops; `lose_disk`: its data directory is deleted).
    CrashDc {
        dc: usize,
        lose_disk: bool,
    },
    /// Start a crashed datacenter again, on whatever its disk holds.
    RestartDc {
        dc: usize,
    },
    /// Kill and restart at once (disk kept or lost).
    BounceDc {
        dc: usize,
        lose_disk: bool,
    },
    /// Cut the link between a device and a datacenter (`oneway`: only datacenter to device).
    Partition {
        device: usize,
        dc: usize,
        oneway: bool,
    },
    Repair {
        device: usize,
        dc: usize,
    },
    /// Restart a device's app on the same store.
    RestartDevice {
        device: usize,
    },
    /// Drop this share of messages on every link of a device.
    Loss {
        device: usize,
        rate_pct: u8,
    },
    /// Messages on every link take up to this long (reordering them).
    Latency {
        max_ms: u64,
    },
}

impl Action {
    /// The action in words, naming device `i` as `device(i)`.
    pub fn describe(&self, device: &dyn Fn(usize) -> String) -> String {
        let disk = |lose: bool| if lose { " (disk lost)" } else { "" };
        match self {
            Action::CrashDc { dc, lose_disk } => format!("crash dc{}{}", dc + 1, disk(*lose_disk)),
            Action::RestartDc { dc } => format!("restart dc{}", dc + 1),
            Action::BounceDc { dc, lose_disk } => {
                format!("bounce dc{}{}", dc + 1, disk(*lose_disk))
            }
            Action::Partition {
                device: d,
                dc,
                oneway,
            } => format!(
                "partition {} from dc{}{}",
                device(*d),
                dc + 1,
                if *oneway { " (dc to device only)" } else { "" }
            ),
            Action::Repair { device: d, dc } => format!("repair {} - dc{}", device(*d), dc + 1),
            Action::RestartDevice { device: d } => format!("restart {}", device(*d)),
            Action::Loss {
                device: d,
                rate_pct,
            } => format!("{rate_pct}% loss on {}", device(*d)),
            Action::Latency { max_ms } => format!("latency up to {max_ms} ms"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&|i| format!("device #{i}")))
    }
}

/// An action at a simulated time (ms since the start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub at_ms: u64,
    pub action: Action,
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

/// Draw a plan from `seed`. Episodes may overlap (two datacenters down at once, a partition
/// during a crash, ...); each one is undone within the window.
pub fn random_plan(seed: u64, shape: &PlanShape) -> Vec<Scheduled> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5EED_FA17_0000_0001);
    let mut plan = Vec::new();
    let window = shape.end_ms.saturating_sub(shape.start_ms).max(1);
    for _ in 0..shape.episodes {
        let at = shape.start_ms + rng.random_range(0..window);
        let room = shape.end_ms.saturating_sub(at).max(1);
        let lasting = |rng: &mut SmallRng, max: u64| at + rng.random_range(1..=max.min(room));
        let dc = rng.random_range(0..shape.datacenters);
        let device = rng.random_range(0..shape.devices);
        match rng.random_range(0..100) {
            0..=24 => {
                let lose_disk = rng.random_bool(0.4);
                plan.push(Scheduled {
                    at_ms: at,
                    action: Action::CrashDc { dc, lose_disk },
                });
                plan.push(Scheduled {
                    at_ms: lasting(&mut rng, 20_000),
                    action: Action::RestartDc { dc },
                });
            }
            25..=34 => plan.push(Scheduled {
                at_ms: at,
                action: Action::BounceDc {
                    dc,
                    lose_disk: rng.random_bool(0.3),
                },
            }),
            35..=59 => {
                plan.push(Scheduled {
                    at_ms: at,
                    action: Action::Partition {
                        device,
                        dc,
                        oneway: rng.random_bool(0.3),
                    },
                });
                plan.push(Scheduled {
                    at_ms: lasting(&mut rng, 15_000),
                    action: Action::Repair { device, dc },
                });
            }
            60..=74 => plan.push(Scheduled {
                at_ms: at,
                action: Action::RestartDevice { device },
            }),
            75..=89 => {
                plan.push(Scheduled {
                    at_ms: at,
                    action: Action::Loss {
                        device,
                        rate_pct: rng.random_range(5..=30),
                    },
                });
                plan.push(Scheduled {
                    at_ms: lasting(&mut rng, 10_000),
                    action: Action::Loss {
                        device,
                        rate_pct: 0,
                    },
                });
            }
            _ => {
                plan.push(Scheduled {
                    at_ms: at,
                    action: Action::Latency {
                        max_ms: rng.random_range(100..=500),
                    },
                });
                plan.push(Scheduled {
                    at_ms: lasting(&mut rng, 10_000),
                    action: Action::Latency {
                        max_ms: shape.base_latency_ms,
                    },
                });
            }
        }
    }
    plan.sort_by_key(|s| s.at_ms);
    plan
}

/// Undo everything at `at_ms`: every datacenter running, every link whole, no loss, normal
/// latency. (Restarting a datacenter that runs is a no-op for the world.)
pub fn heal_all(at_ms: u64, shape: &PlanShape) -> Vec<Scheduled> {
    let mut plan = Vec::new();
    for dc in 0..shape.datacenters {
        plan.push(Scheduled {
            at_ms,
            action: Action::RestartDc { dc },
        });
        for device in 0..shape.devices {
            plan.push(Scheduled {
                at_ms,
                action: Action::Repair { device, dc },
            });
        }
    }
    for device in 0..shape.devices {
        plan.push(Scheduled {
            at_ms,
            action: Action::Loss {
                device,
                rate_pct: 0,
            },
        });
    }
    plan.push(Scheduled {
        at_ms,
        action: Action::Latency {
            max_ms: shape.base_latency_ms,
        },
    });
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn every_crash_and_partition_is_undone_inside_the_window() {
        for seed in 0..200 {
            let plan = random_plan(seed, &shape());
            for (i, s) in plan.iter().enumerate() {
                let undone = |f: &dyn Fn(&Action) -> bool| plan[i..].iter().any(|x| f(&x.action));
                match s.action {
                    Action::CrashDc { dc, .. } => {
                        assert!(undone(&|a| *a == Action::RestartDc { dc }), "seed {seed}")
                    }
                    Action::Partition { device, dc, .. } => {
                        assert!(
                            undone(&|a| *a == Action::Repair { device, dc }),
                            "seed {seed}"
                        )
                    }
                    _ => {}
                }
            }
        }
    }
}
