//! Shadow restore: the datacenter checks, all the time, that a failover would lose nothing.
//!
//! Every `shadow_interval_ms` the core samples one active session that has a participant
//! connected here, going round the table: it asks each connected participant for the copy its
//! store holds ([`ServerMsg::Sample`]), then restores what comes back into a throwaway core,
//! exactly as a backup datacenter would take a connect upload, and checks that the session
//! would continue at the version this datacenter had when it asked (or a later one) with the
//! same header, state and dedup watermarks: nothing missing. Each copy is also restored on its
//! own, so a device that would not restore the session by itself is named
//! ([`CopyCheck::Behind`], [`CopyCheck::Missing`], [`CopyCheck::Silent`]).
//!
//! Invariants:
//! - Read only: a sample changes nothing in this core's sessions, chains, dispatch or
//!   counters other than the shadow ones; the throwaway core and its effects are dropped.
//! - Ordered: a device answers after persisting everything sent to it before the sample (one
//!   ordered stream, and the edge reads the copy back from its store after its flush), so a
//!   healthy device always holds at least the copy this datacenter had when it asked.
//! - Bounded (C6): at most [`MAX_SHADOW_PROBES`] samples outstanding, each answered within
//!   [`SHADOW_DEADLINE_MS`] or judged without the silent devices; an answer nobody asked for
//!   (or a second one) is ignored; the round-robin queue holds at most the session table.

use super::*;

use crate::app::Application;
use crate::digest::{DigestBody, SealedDigest};
use crate::ids::{DeviceId, SessionId};
use crate::version::VersionOrder;
use crate::wire::{OfferedCopy, ServerMsg};

/// Most samples waiting for their answers at once.
pub const MAX_SHADOW_PROBES: usize = 16;
/// How long a sample waits for its answers before it is judged without the silent ones (ms).
pub const SHADOW_DEADLINE_MS: u64 = 5_000;
/// Most sessions looked at per tick to find one with a participant connected.
const SHADOW_SCAN: usize = 64;

/// What one participant's copy showed in a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyCheck {
    /// Its copy alone restores the session at the sampled version or later; answered after
    /// `answer_ms` (the round trip, the device's flush included).
    Current {
        /// From the sample to the answer (ms).
        answer_ms: u64,
    },
    /// Its copy alone would not restore the session at the sampled version (older, another
    /// branch, or not opening): the device has been missing this datacenter's copy for at
    /// least `lag_ms` (since that copy was sealed).
    Behind {
        /// Now minus the seal time of the sampled copy (ms, second resolution).
        lag_ms: u64,
    },
    /// Its store holds nothing of the session.
    Missing,
    /// No answer within [`SHADOW_DEADLINE_MS`] (or it disconnected first).
    Silent,
}

/// The result of one sample ([`DcEvent::ShadowSampled`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowSample {
    /// The session sampled.
    pub session: SessionId,
    /// The copies that came back, together, restore the session at the sampled version or
    /// later with nothing missing.
    pub restorable: bool,
    /// Each participant asked, with what its copy showed.
    pub devices: Vec<(DeviceId, CopyCheck)>,
}

/// A participant's answer to a sample: when it came (unix ms) and the copy it held.
type Answer = (u64, Option<OfferedCopy>);

/// One sample waiting for its answers.
struct Probe<A: Application> {
    asked_at_ms: u64,
    /// This datacenter's copy when it asked, and its opened body.
    reference: SealedDigest,
    body: DigestBody<A::State>,
    /// Each participant asked, with its answer once it came (time, copy).
    answers: Vec<(DeviceId, Option<Answer>)>,
}

/// The shadow restore's state (see the module docs).
pub(super) struct Shadow<A: Application> {
    next_at_ms: u64,
    queue: VecDeque<SessionId>,
    probes: HashMap<SessionId, Probe<A>>,
}

impl<A: Application> Default for Shadow<A> {
    fn default() -> Self {
        Self {
            next_at_ms: 0,
            queue: VecDeque::new(),
            probes: HashMap::new(),
        }
    }
}

impl<A: Application> Shadow<A> {
    /// When the shadow restore next has something to do (unix ms), if it is on.
    pub(super) fn poll_timeout(&self, interval_ms: u64) -> Option<u64> {
        let deadline = self
            .probes
            .values()
            .map(|p| p.asked_at_ms.saturating_add(SHADOW_DEADLINE_MS))
            .min();
        let next = (interval_ms > 0).then_some(self.next_at_ms);
        match (deadline, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<A: Application> DatacenterCore<A> {
    /// Samples waiting for their answers.
    pub fn shadow_probes(&self) -> usize {
        self.shadow.probes.len()
    }

    /// Judge the samples past their deadline, then start the next one when it is due.
    pub(super) fn shadow_tick(&mut self, now_ms: u64) {
        let late: Vec<SessionId> = self
            .shadow
            .probes
            .iter()
            .filter(|(_, p)| p.asked_at_ms.saturating_add(SHADOW_DEADLINE_MS) <= now_ms)
            .map(|(s, _)| *s)
            .collect();
        for session in late {
            self.judge_probe(now_ms, session);
        }
        let every = self.cfg.shadow_interval_ms;
        if every == 0 || now_ms < self.shadow.next_at_ms {
            return;
        }
        self.shadow.next_at_ms = now_ms.saturating_add(every);
        if self.shadow.probes.len() >= MAX_SHADOW_PROBES {
            return;
        }
        let Some((session, asked)) = self.next_to_sample() else {
            return;
        };
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        for d in &asked {
            self.effects.send.push((*d, ServerMsg::Sample { session }));
        }
        let probe = Probe {
            asked_at_ms: now_ms,
            reference: entry.sealed.clone(),
            body: entry.body.clone(),
            answers: asked.into_iter().map(|d| (d, None)).collect(),
        };
        self.shadow.probes.insert(session, probe);
    }

    /// The next active session round the table with a participant connected here, and the
    /// participants to ask.
    fn next_to_sample(&mut self) -> Option<(SessionId, Vec<DeviceId>)> {
        for _ in 0..SHADOW_SCAN {
            if self.shadow.queue.is_empty() {
                self.shadow.queue = self.active_ids_in_order();
            }
            let session = self.shadow.queue.pop_front()?;
            if self.shadow.probes.contains_key(&session) {
                continue;
            }
            let Some(entry) = self.sessions.get(&session).filter(|e| !e.header.tombstone) else {
                continue;
            };
            let asked: Vec<DeviceId> = entry
                .header
                .participants()
                .filter(|d| self.connected.contains_key(d))
                .collect();
            if !asked.is_empty() {
                return Some((session, asked));
            }
        }
        None
    }

    /// A device's answer to a sample: kept if it was asked and had not answered; the sample
    /// is judged once every participant asked has answered.
    pub(super) fn handle_sampled(
        &mut self,
        now_ms: u64,
        device: DeviceId,
        session: SessionId,
        copy: Option<OfferedCopy>,
    ) {
        let Some(probe) = self.shadow.probes.get_mut(&session) else {
            return;
        };
        let Some(slot) = probe
            .answers
            .iter_mut()
            .find(|(d, a)| *d == device && a.is_none())
        else {
            return;
        };
        slot.1 = Some((now_ms, copy));
        if probe.answers.iter().all(|(_, a)| a.is_some()) {
            self.judge_probe(now_ms, session);
        }
    }

    /// A device disconnected: its outstanding samples are judged without it.
    pub(super) fn shadow_disconnect(&mut self, now_ms: u64, device: DeviceId) {
        let waiting: Vec<SessionId> = self
            .shadow
            .probes
            .iter()
            .filter(|(_, p)| p.answers.iter().any(|(d, a)| *d == device && a.is_none()))
            .map(|(s, _)| *s)
            .collect();
        for session in waiting {
            self.judge_probe(now_ms, session);
        }
    }

    fn judge_probe(&mut self, now_ms: u64, session: SessionId) {
        let Some(probe) = self.shadow.probes.remove(&session) else {
            return;
        };
        let mut devices = Vec::with_capacity(probe.answers.len());
        let mut copies = Vec::new();
        for (device, answer) in &probe.answers {
            let check = match answer {
                None => CopyCheck::Silent,
                Some((_, None)) => CopyCheck::Missing,
                Some((at_ms, Some(copy))) => {
                    let one = [(*device, copy.clone())];
                    copies.push((*device, copy.clone()));
                    if self.restores(&probe, &one) {
                        CopyCheck::Current {
                            answer_ms: at_ms.saturating_sub(probe.asked_at_ms),
                        }
                    } else {
                        CopyCheck::Behind {
                            lag_ms: now_ms.saturating_sub(probe.reference.sealed_at_ms()),
                        }
                    }
                }
            };
            devices.push((*device, check));
        }
        let restorable = self.restores(&probe, &copies);
        self.stats.shadow_samples += 1;
        if restorable {
            self.stats.shadow_restorable += 1;
        }
        for (_, check) in &devices {
            match check {
                CopyCheck::Behind { .. } | CopyCheck::Missing => {
                    self.stats.shadow_copies_behind += 1
                }
                CopyCheck::Silent => self.stats.shadow_copies_silent += 1,
                CopyCheck::Current { .. } => {}
            }
        }
        self.effects
            .events
            .push(DcEvent::ShadowSampled(ShadowSample {
                session,
                restorable,
                devices,
            }));
    }

    /// Whether `copies`, uploaded to an empty datacenter of the region, restore the sampled
    /// session at the sampled version or later with nothing missing.
    fn restores(&self, probe: &Probe<A>, copies: &[(DeviceId, OfferedCopy)]) -> bool {
        if copies.is_empty() {
            return false;
        }
        let mut cfg = self.cfg.clone();
        cfg.shadow_interval_ms = 0;
        cfg.max_sessions = 1;
        let mut backup = DatacenterCore::<A>::new(cfg, self.keyring.clone());
        backup.now_ms = self.now_ms;
        for (device, copy) in copies {
            backup.judge_upload(*device, copy.digest.clone(), copy.committed);
        }
        let reference = &probe.reference.header;
        let Some(restored) = backup.sessions.get(&reference.session) else {
            return false;
        };
        match restored.header.version.compare(&reference.version) {
            VersionOrder::Newer => true,
            VersionOrder::Equal => restored.header == *reference && restored.body == probe.body,
            VersionOrder::Older | VersionOrder::Concurrent => false,
        }
    }
}
