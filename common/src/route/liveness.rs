//! Failure detection from the work in flight (C7): a device that waits for its datacenter
//! decides from the transport's own evidence whether it is still there, instead of waiting
//! for a fixed idle timeout.
//!
//! The driver samples two facts of its connection whenever [`Liveness::poll_timeout`] says
//! so: how many datagrams it has received so far, and the transport's smoothed RTT. Every
//! datagram is a sign of life (a reply, a push, or only the acknowledgement of something
//! the device sent). What the device waits for decides the rules ([`Waiting`]):
//! - [`Waiting::Nothing`] (no session, not offering itself for dispatch): no verdict, no
//!   probe. Such a device relies on its sparse keep-alive and the idle timeout, because
//!   nobody is stalled by its detection and its radio may sleep.
//! - [`Waiting::Answer`] (an op sent and unanswered): the evidence window starts at the
//!   later of the last datagram received and the moment the work became outstanding
//!   (silence before the device asked anything proves nothing). Silence of
//!   [`Liveness::limit_ms`] (the larger of the floor and a multiple of the RTT) in that
//!   window means the datacenter is gone: [`Verdict::Dead`]. Before that, every
//!   [`Liveness::probe_every_ms`] of silence the driver sends one ack-eliciting probe (a
//!   QUIC DATAGRAM the datacenter's stack acknowledges without the application), so a
//!   datacenter that is alive but slow to answer (a busy core, a session that waits) keeps
//!   giving evidence and is not given up by mistake.
//! - [`Waiting::Push`] (in a session, or offering itself for dispatch, nothing in flight):
//!   pushes are due from the datacenter. After [`LivenessConfig::push_probe_ms`] without
//!   any datagram the driver sends a probe, and from then on it is judged as an op in
//!   flight; any datagram ends that. So a device in a trip notices a dead datacenter within
//!   about `push_probe_ms` plus the limit, and costs nothing while pushes flow.
//!
//! A datacenter that takes no datagrams (the probe cannot be sent:
//! [`Liveness::probe_not_sent`]) leaves only the ops' own evidence: pushes due are then not
//! judged at all.
//!
//! Invariants: a verdict of death needs something awaited (an op, or a probe sent) and at
//! least `floor_ms` of silence since it was sent; the probe interval is positive and at
//! most a sixth of the limit, so (with a limit of at least 6 ms) five probes go out before
//! any verdict; nothing here reads a clock or does I/O.

/// Settings of the detector (times in ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// No verdict before this much silence, whatever the RTT.
    pub floor_ms: u64,
    /// Silence of this many smoothed RTTs (if longer than the floor) means dead.
    pub rtt_multiple: u32,
    /// With pushes due and nothing in flight, probe after this much silence.
    pub push_probe_ms: u64,
}

impl LivenessConfig {
    /// Probes per limit: the silence limit is split into this many probe intervals.
    pub const PROBES_PER_LIMIT: u64 = 6;
}

impl Default for LivenessConfig {
    /// A 1 s floor and 8 RTTs: on a 1 ms loopback a dead datacenter is given up after 1 s,
    /// on a 200 ms mobile path with loss after 1.6 s, with five probes in between; a device
    /// in a session whose pushes stopped probes after 5 s.
    fn default() -> Self {
        Self {
            floor_ms: 1_000,
            rtt_multiple: 8,
            push_probe_ms: 5_000,
        }
    }
}

/// What the device waits for from its datacenter (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing: idle.
    Nothing,
    /// Pushes: it takes part in a session or offers itself for dispatch.
    Push,
    /// An answer: an op went out and nothing arrived since.
    Answer,
}

/// What the driver should do after a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Alive,
    /// Send one ack-eliciting probe now.
    Probe,
    /// The datacenter is gone: give the connection up.
    Dead {
        /// The silence that decided it, ms (the detection part of the stall).
        silent_ms: u64,
    },
}

/// The detector of one connection (see the module docs).
#[derive(Clone, Debug)]
pub struct Liveness {
    cfg: LivenessConfig,
    rx_seen: u64,
    last_rx_ms: u64,
    /// Since when evidence is awaited (an op or a probe out), if anything is.
    since: Option<u64>,
    last_probe_ms: Option<u64>,
    rtt_ms: u64,
    waiting: Waiting,
    /// False once a probe could not be sent (a datacenter without datagram support).
    probes_work: bool,
}

impl Liveness {
    /// A detector for a connection that is up at `now_ms` with `rx_datagrams` received.
    pub fn new(cfg: LivenessConfig, now_ms: u64, rx_datagrams: u64) -> Self {
        Self {
            cfg,
            rx_seen: rx_datagrams,
            last_rx_ms: now_ms,
            since: None,
            last_probe_ms: None,
            rtt_ms: 0,
            waiting: Waiting::Nothing,
            probes_work: true,
        }
    }

    /// The silence that means dead at the last sampled RTT, ms.
    pub fn limit_ms(&self) -> u64 {
        let by_rtt = self.rtt_ms.saturating_mul(u64::from(self.cfg.rtt_multiple));
        by_rtt.max(self.cfg.floor_ms).max(1)
    }

    /// The silence after which a probe goes out while evidence is awaited, ms (positive,
    /// at most a sixth of the limit).
    pub fn probe_every_ms(&self) -> u64 {
        (self.limit_ms() / LivenessConfig::PROBES_PER_LIMIT).max(1)
    }

    /// The probe asked for could not be sent (the datacenter takes no datagrams). From then
    /// on a device waiting for pushes is treated as idle (its silence proves nothing: it
    /// cannot ask), and one waiting for an answer is judged by the work's own evidence.
    pub fn probe_not_sent(&mut self) {
        self.probes_work = false;
        if self.waiting == Waiting::Push {
            self.since = None;
        }
    }

    /// One sample of the connection at `now_ms`: datagrams received so far, the smoothed
    /// RTT, and what the device waits for.
    pub fn observe(
        &mut self,
        now_ms: u64,
        rx_datagrams: u64,
        rtt_ms: u64,
        waiting: Waiting,
    ) -> Verdict {
        self.rtt_ms = rtt_ms;
        let waiting = match waiting {
            Waiting::Push if !self.probes_work => Waiting::Nothing,
            w => w,
        };
        self.waiting = waiting;
        let fresh = rx_datagrams != self.rx_seen;
        if fresh {
            self.rx_seen = rx_datagrams;
            self.last_rx_ms = now_ms;
            self.last_probe_ms = None;
        }
        let since = match waiting {
            Waiting::Nothing => {
                self.since = None;
                self.last_probe_ms = None;
                return Verdict::Alive;
            }
            Waiting::Answer => *self.since.get_or_insert(now_ms),
            Waiting::Push => {
                if fresh {
                    self.since = None;
                }
                match self.since {
                    Some(since) => since,
                    None if now_ms.saturating_sub(self.last_rx_ms) >= self.cfg.push_probe_ms => {
                        // Pushes stopped: ask, and judge the answer as an op's.
                        self.since = Some(now_ms);
                        self.last_probe_ms = Some(now_ms);
                        return Verdict::Probe;
                    }
                    None => return Verdict::Alive,
                }
            }
        };
        let evidence_from = since.max(self.last_rx_ms);
        let silent_ms = now_ms.saturating_sub(evidence_from);
        if silent_ms >= self.limit_ms() {
            return Verdict::Dead { silent_ms };
        }
        let quiet_from = self.quiet_from(evidence_from);
        if now_ms.saturating_sub(quiet_from) >= self.probe_every_ms() {
            self.last_probe_ms = Some(now_ms);
            return Verdict::Probe;
        }
        Verdict::Alive
    }

    /// When the next sample is due (ms, the driver's clock), or `None` while the device
    /// waits for nothing (the driver samples again when that changes).
    pub fn poll_timeout(&self) -> Option<u64> {
        let since = match (self.waiting, self.since) {
            (Waiting::Nothing, _) => return None,
            (Waiting::Push, None) => {
                return Some(self.last_rx_ms.saturating_add(self.cfg.push_probe_ms))
            }
            (Waiting::Answer, None) => return Some(self.last_rx_ms),
            (_, Some(since)) => since,
        };
        let evidence_from = since.max(self.last_rx_ms);
        let probe_at = self
            .quiet_from(evidence_from)
            .saturating_add(self.probe_every_ms());
        let dead_at = evidence_from.saturating_add(self.limit_ms());
        Some(probe_at.min(dead_at))
    }

    fn quiet_from(&self, evidence_from: u64) -> u64 {
        self.last_probe_ms
            .unwrap_or(evidence_from)
            .max(evidence_from)
    }
}
