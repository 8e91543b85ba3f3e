//! The shadow restore's figures (the core samples and judges, see
//! `lifeboat_common::datacenter::ShadowSample`): the recent window behind the gauges of
//! `/metrics` and the status file, and the devices whose copies were behind, by name.
//!
//! Invariants: the window holds the last [`WINDOW`] samples; at most [`MAX_NAMED_DEVICES`]
//! devices are named (once full, a device not yet named counts only in `unnamed_behind`), so
//! memory and the `/metrics` page stay bounded whatever the devices do.

use lifeboat_common::datacenter::{CopyCheck, ShadowSample};
use lifeboat_common::DeviceId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// Samples in the recent window.
pub const WINDOW: usize = 256;
/// Most devices named in `behind_by_device`.
pub const MAX_NAMED_DEVICES: usize = 64;

/// The recent samples and the named devices.
#[derive(Default)]
pub(crate) struct ShadowWatch {
    recent: VecDeque<ShadowSample>,
    behind_by_device: BTreeMap<u64, u64>,
    unnamed_behind: u64,
}

/// The shadow restore as the status and `/metrics` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// How often a session is sampled (ms); 0: the shadow restore is off.
    pub interval_ms: u64,
    /// Samples in the recent window (at most [`WINDOW`]).
    pub recent_samples: usize,
    /// Of the recent samples, the fraction whose copies restored the session at the sampled
    /// version with nothing missing (`None` before the first sample).
    pub restorable_ratio: Option<f64>,
    /// Replication lag of the recent sampled copies (ms): 0 for a copy that restores the
    /// session, else how long the device has been missing the datacenter's copy (since that
    /// copy was sealed; second resolution). Copies not held or not answered are left out.
    pub lag_ms_p50: u64,
    /// See `lag_ms_p50`.
    pub lag_ms_p99: u64,
    /// Edge persistence time of the recent current copies (ms): from the sample to the
    /// answer, the device's flush and one round trip included.
    pub answer_ms_p50: u64,
    /// See `answer_ms_p50`.
    pub answer_ms_p99: u64,
    /// Devices whose copy was behind, missing or silent in a recent sample.
    pub lagging_devices: usize,
    /// Samples since start in which each device's copy was behind or missing, by device id
    /// (the first [`MAX_NAMED_DEVICES`] devices so named).
    pub behind_by_device: BTreeMap<u64, u64>,
    /// Behind or missing copies of devices past the naming limit.
    pub unnamed_behind: u64,
}

fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

impl ShadowWatch {
    /// Take one judged sample.
    pub(crate) fn record(&mut self, sample: ShadowSample) {
        for (device, check) in &sample.devices {
            if matches!(check, CopyCheck::Behind { .. } | CopyCheck::Missing) {
                let named = self.behind_by_device.len() < MAX_NAMED_DEVICES
                    || self.behind_by_device.contains_key(&device.0);
                if named {
                    *self.behind_by_device.entry(device.0).or_insert(0) += 1;
                } else {
                    self.unnamed_behind += 1;
                }
                tracing::warn!(
                    session = sample.session.0,
                    device = device.0,
                    check = ?check,
                    restorable = sample.restorable,
                    "shadow restore: a device's copy would not restore its session"
                );
            }
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(sample);
    }

    /// The figures now.
    pub(crate) fn status(&self, interval_ms: u64) -> ShadowStatus {
        let n = self.recent.len();
        let restorable = self.recent.iter().filter(|s| s.restorable).count();
        let mut lags = Vec::new();
        let mut answers = Vec::new();
        let mut lagging: HashSet<DeviceId> = HashSet::new();
        for (device, check) in self.recent.iter().flat_map(|s| s.devices.iter()) {
            match check {
                CopyCheck::Current { answer_ms } => {
                    lags.push(0);
                    answers.push(*answer_ms);
                }
                CopyCheck::Behind { lag_ms } => {
                    lags.push(*lag_ms);
                    lagging.insert(*device);
                }
                CopyCheck::Missing | CopyCheck::Silent => {
                    lagging.insert(*device);
                }
            }
        }
        ShadowStatus {
            interval_ms,
            recent_samples: n,
            restorable_ratio: (n > 0).then(|| restorable as f64 / n as f64),
            lag_ms_p50: percentile(lags.clone(), 0.5),
            lag_ms_p99: percentile(lags, 0.99),
            answer_ms_p50: percentile(answers.clone(), 0.5),
            answer_ms_p99: percentile(answers, 0.99),
            lagging_devices: lagging.len(),
            behind_by_device: self.behind_by_device.clone(),
            unnamed_behind: self.unnamed_behind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::SessionId;

    fn sample(session: u64, checks: &[(u64, CopyCheck)]) -> ShadowSample {
        ShadowSample {
            session: SessionId(session),
            restorable: checks
                .iter()
                .any(|(_, c)| matches!(c, CopyCheck::Current { .. })),
            devices: checks
                .iter()
                .map(|(d, c)| (DeviceId(*d), c.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_device_behind_is_named_and_lowers_the_restorable_ratio() {
        let mut w = ShadowWatch::default();
        w.record(sample(1, &[(1, CopyCheck::Current { answer_ms: 4 })]));
        w.record(sample(2, &[(7, CopyCheck::Missing)]));
        w.record(sample(3, &[(7, CopyCheck::Behind { lag_ms: 3_000 })]));
        w.record(sample(4, &[(2, CopyCheck::Current { answer_ms: 8 })]));
        let s = w.status(1_000);
        assert_eq!(s.recent_samples, 4);
        assert_eq!(s.restorable_ratio, Some(0.5));
        assert_eq!(s.behind_by_device, BTreeMap::from([(7, 2)]));
        assert_eq!(s.lagging_devices, 1);
        assert_eq!(s.lag_ms_p99, 3_000);
        assert_eq!(s.answer_ms_p99, 8);
    }

    #[test]
    fn the_window_and_the_named_devices_stay_bounded() {
        let mut w = ShadowWatch::default();
        for i in 0..(WINDOW + MAX_NAMED_DEVICES) as u64 {
            w.record(sample(i, &[(i, CopyCheck::Missing)]));
        }
        let s = w.status(1_000);
        assert_eq!(s.recent_samples, WINDOW);
        assert_eq!(s.behind_by_device.len(), MAX_NAMED_DEVICES);
        assert_eq!(s.unnamed_behind, WINDOW as u64);
        assert_eq!(s.restorable_ratio, Some(0.0));
    }
}
