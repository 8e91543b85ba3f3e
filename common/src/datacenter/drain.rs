//! A planned failover (drain): the datacenter moves its connected devices to another one in
//! paced waves and then stops, within a bound. Pure: the driver hands in the time and tells
//! the devices each wave names (`ProtocolError::Draining`).
//!
//! Invariants:
//! - every device of the plan is named exactly once, in a wave no later than three quarters
//!   of the bound after the start (the last quarter is for the last devices to leave);
//! - the participants of a session that are connected here are named in the same wave
//!   ([`DatacenterCore::connected_groups`]), so they reach the next datacenter together and
//!   its restore finds both (nobody waits for a partner still at the drained site);
//! - a wave names at least `rate × wave` devices (the pace the next datacenter is sized
//!   for), more if the bound needs it; whole groups only.

use super::*;

/// How a drain is paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// Devices moved per second (the pace the next datacenter's handshakes are sized for).
    pub rate_per_s: u32,
    /// Time between two waves (ms).
    pub wave_ms: u64,
    /// The whole drain, from its start to the stop (ms).
    pub within_ms: u64,
}

/// The waves of one drain (see the module docs).
#[derive(Clone, Debug)]
pub struct DrainPlan {
    groups: VecDeque<Vec<DeviceId>>,
    per_wave: usize,
    wave_ms: u64,
    next_wave_ms: u64,
    deadline_ms: u64,
}

impl DrainPlan {
    /// The plan for moving `groups` (each named in one wave, in this order), starting at
    /// `now_ms`.
    pub fn new(cfg: DrainConfig, groups: Vec<Vec<DeviceId>>, now_ms: u64) -> Self {
        let wave_ms = cfg.wave_ms.max(1);
        let total: usize = groups.iter().map(Vec::len).sum();
        let waves = usize::try_from((cfg.within_ms.saturating_mul(3) / 4) / wave_ms)
            .unwrap_or(usize::MAX)
            .max(1);
        let by_rate = usize::try_from(u64::from(cfg.rate_per_s).saturating_mul(wave_ms) / 1_000)
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
            per_wave: by_rate.max(total.div_ceil(waves)),
            wave_ms,
            next_wave_ms: now_ms,
            deadline_ms: now_ms.saturating_add(cfg.within_ms),
        }
    }

    /// The devices whose wave is due at `now_ms` (every wave due by then, whole groups).
    pub fn due(&mut self, now_ms: u64) -> Vec<DeviceId> {
        let mut out = Vec::new();
        while !self.groups.is_empty() && now_ms >= self.next_wave_ms {
            let mut named = 0;
            while let Some(g) = self.groups.front() {
                if named > 0 && named + g.len() > self.per_wave {
                    break;
                }
                named += g.len();
                out.extend(self.groups.pop_front().into_iter().flatten());
            }
            self.next_wave_ms = self.next_wave_ms.saturating_add(self.wave_ms);
        }
        out
    }

    /// When the next wave is due; `None` once every device was named.
    pub fn poll_timeout(&self) -> Option<u64> {
        (!self.groups.is_empty()).then_some(self.next_wave_ms)
    }

    /// When the drain ends whatever is left (the stop).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// How long, from `now_ms`, a device told now must stay away (the drain's rest, and a
    /// wave more).
    pub fn back_after_ms(&self, now_ms: u64) -> u64 {
        self.deadline_ms
            .saturating_sub(now_ms)
            .saturating_add(self.wave_ms)
    }

    /// Devices per wave.
    pub fn per_wave(&self) -> usize {
        self.per_wave
    }
}

impl<A: Application> DatacenterCore<A> {
    /// The devices connected here, each with the connected participants of its active
    /// sessions (every device in exactly one group; sorted, so a run replays).
    pub fn connected_groups(&self) -> Vec<Vec<DeviceId>> {
        let mut devices: Vec<DeviceId> = self.connected.keys().copied().collect();
        devices.sort();
        let mut placed: HashSet<DeviceId> = HashSet::new();
        let mut groups = Vec::new();
        for d in devices {
            if !placed.insert(d) {
                continue;
            }
            let mut group = vec![d];
            for s in self.by_device.get(&d).into_iter().flatten() {
                let Some(entry) = self.sessions.get(s) else {
                    continue;
                };
                for p in entry.header.participants() {
                    if self.connected.contains_key(&p) && placed.insert(p) {
                        group.push(p);
                    }
                }
            }
            groups.push(group);
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<Vec<DeviceId>> {
        (0..n).map(|i| vec![DeviceId(i)]).collect()
    }

    #[test]
    fn waves_follow_the_rate_and_name_every_device_once() {
        let cfg = DrainConfig {
            rate_per_s: 100,
            wave_ms: 100,
            within_ms: 30_000,
        };
        let mut p = DrainPlan::new(cfg, ids(25), 1_000);
        assert_eq!(p.per_wave(), 10);
        assert_eq!(p.due(1_000).len(), 10);
        assert!(p.due(1_099).is_empty(), "the next wave is not due yet");
        assert_eq!(p.poll_timeout(), Some(1_100));
        assert_eq!(p.due(1_100).len(), 10);
        assert_eq!(p.due(1_200).len(), 5);
        assert_eq!(p.poll_timeout(), None);
        assert!(p.due(5_000).is_empty());
    }

    #[test]
    fn a_late_call_catches_up_on_every_wave_due() {
        let cfg = DrainConfig {
            rate_per_s: 100,
            wave_ms: 100,
            within_ms: 30_000,
        };
        let mut p = DrainPlan::new(cfg, ids(25), 0);
        assert_eq!(p.due(250).len(), 25);
    }

    #[test]
    fn a_drain_too_big_for_its_rate_takes_bigger_waves_to_end_within_its_bound() {
        let cfg = DrainConfig {
            rate_per_s: 10,
            wave_ms: 100,
            within_ms: 1_000,
        };
        let mut p = DrainPlan::new(cfg, ids(700), 0);
        // 7 waves fit in three quarters of the bound: 100 devices each.
        assert_eq!(p.per_wave(), 100);
        let mut named = 0;
        let mut t = 0;
        while p.poll_timeout().is_some() {
            named += p.due(t).len();
            t += 100;
        }
        assert_eq!(named, 700);
        assert!(t <= 750, "the last wave at {t} ms");
        assert_eq!(p.back_after_ms(400), 700);
    }

    #[test]
    fn a_group_is_never_split_across_waves() {
        let cfg = DrainConfig {
            rate_per_s: 30,
            wave_ms: 100,
            within_ms: 30_000,
        };
        // 3 per wave; groups of 2 go one per wave, a group of 5 whole in a wave of its own.
        let groups = vec![
            vec![DeviceId(1), DeviceId(2)],
            vec![DeviceId(3), DeviceId(4)],
            vec![
                DeviceId(5),
                DeviceId(6),
                DeviceId(7),
                DeviceId(8),
                DeviceId(9),
            ],
            vec![DeviceId(10)],
        ];
        let mut p = DrainPlan::new(cfg, groups, 0);
        assert_eq!(p.due(0), vec![DeviceId(1), DeviceId(2)]);
        assert_eq!(p.due(100), vec![DeviceId(3), DeviceId(4)]);
        assert_eq!(p.due(200).len(), 5);
        assert_eq!(p.due(300), vec![DeviceId(10)]);
    }
}
