//! The failover as the user feels it: from the first op that went unanswered (or the lost
//! datacenter's last sign of life) to the first op answered after the reconnect.
//!
//! Invariants: one failover is measured at a time (a second loss before the first ends
//! extends it); `detection_ms` is the part of the stall before the client gave the
//! connection up, so it is at most the stall; `detection_ms + connect_ms + first_answer_ms`
//! is at most the stall (the rest is the workload's gap before the silence began); a move home is not a failover (only
//! [`StallClock::lost`] starts one). A loss nobody waited on (no op in flight or queued, no
//! live session: an idle phone) is not a stall: it becomes one only if work is queued before
//! the reconnect, and then runs from that moment; one that stays idle ends unreported
//! ([`StallClock::unfelt`]).

use crate::ids::DatacenterId;

/// A failover that just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall<T> {
    /// The datacenter and address that took over.
    pub dc: DatacenterId,
    /// The address the new datacenter was reached at.
    pub addr: T,
    /// From the first op sent after the lost datacenter's last frame (or, with none, from
    /// its last sign of life) to the first answer after the reconnect.
    pub stalled_ms: u64,
    /// The part of it before the client gave the connection up.
    pub detection_ms: u64,
    /// From giving the connection up to the `Welcome` of the datacenter that took over
    /// (connect attempts, backoff, handshake and the connect upload).
    pub connect_ms: u64,
    /// From that `Welcome` to the first answer (the replayed op's restore wait and commit;
    /// 0 if nothing was waiting).
    pub first_answer_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Failover<T> {
    stall_from: u64,
    detection_ms: u64,
    /// When the connection was given up.
    lost_at: u64,
    /// Welcomed again (by whom, and when): the failover ends at the next answered op.
    reconnected: Option<(DatacenterId, T, u64)>,
    /// Whether anyone waits on it (see the module docs).
    felt: bool,
}

/// Measures failovers (see the module docs). Times are the driver's clock, ms.
#[derive(Clone, Debug)]
pub struct StallClock<T> {
    /// The first op sent since the last frame from the datacenter (unanswered so far).
    first_unanswered: Option<u64>,
    failover: Option<Failover<T>>,
}

impl<T> Default for StallClock<T> {
    fn default() -> Self {
        Self {
            first_unanswered: None,
            failover: None,
        }
    }
}

impl<T: Copy> StallClock<T> {
    /// An op (or a resend of one) went out.
    pub fn op_sent(&mut self, now_ms: u64) {
        self.first_unanswered.get_or_insert(now_ms);
    }

    /// A frame arrived from the datacenter: it was alive then.
    pub fn frame_received(&mut self) {
        self.first_unanswered = None;
    }

    /// The connection is gone (not a move home), noticed at `now_ms`. A datacenter that went
    /// silent (`idle_ms`: the idle timeout) last gave a sign of life that long before; one
    /// that closed the connection (`idle_ms` 0) was noticed at once. `someone_waits`: the
    /// device has an op in flight or queued, or takes part in a live session; without, the
    /// failover is not a stall unless work is queued before the reconnect
    /// ([`StallClock::work_queued`]).
    pub fn lost(&mut self, now_ms: u64, idle_ms: u64, someone_waits: bool) {
        let last_sign = now_ms.saturating_sub(idle_ms);
        if self.failover.is_none() {
            let felt = someone_waits || self.first_unanswered.is_some();
            let stall_from = self.first_unanswered.unwrap_or(last_sign).min(now_ms);
            // The part of the stall spent noticing: from its start (or the last sign of
            // life, if that came later) to giving up.
            let noticed_from = stall_from.max(last_sign);
            self.failover = Some(Failover {
                stall_from: if felt { stall_from } else { now_ms },
                detection_ms: if felt {
                    now_ms.saturating_sub(noticed_from)
                } else {
                    0
                },
                lost_at: now_ms,
                reconnected: None,
                felt,
            });
        }
        self.first_unanswered = None;
    }

    /// An op was queued (a create included) at `now_ms`: a failover nobody waited on
    /// becomes a stall from now (detection was over before anyone waited).
    pub fn work_queued(&mut self, now_ms: u64) {
        if let Some(f) = self.failover.as_mut().filter(|f| !f.felt) {
            f.felt = true;
            f.stall_from = now_ms;
            f.detection_ms = 0;
            // Connecting as the user felt it: from when they started waiting (or, if the
            // reconnect was already done, nothing).
            f.lost_at = now_ms;
        }
    }

    /// Whether the failover being measured is one nobody waits on (an idle device's
    /// reconnect, which ends unreported).
    pub fn unfelt(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| !f.felt)
    }

    /// Welcomed by `dc` at `addr`: the failover ends now if no op waits, else at the next
    /// answer; one nobody waited on ends now, unreported.
    pub fn welcomed(
        &mut self,
        dc: DatacenterId,
        addr: T,
        ops_waiting: bool,
        now_ms: u64,
    ) -> Option<Stall<T>> {
        if self.unfelt() {
            self.failover = None;
            return None;
        }
        if let Some(f) = self.failover.as_mut() {
            f.reconnected = Some((dc, addr, now_ms));
        }
        if ops_waiting {
            None
        } else {
            self.answered(now_ms)
        }
    }

    /// An op was answered at `now_ms`: a failover whose reconnect is done ends.
    pub fn answered(&mut self, now_ms: u64) -> Option<Stall<T>> {
        let f = self.failover.take_if(|f| f.reconnected.is_some())?;
        let (dc, addr, welcomed_at) = f.reconnected?;
        Some(Stall {
            dc,
            addr,
            stalled_ms: now_ms.saturating_sub(f.stall_from),
            detection_ms: f.detection_ms,
            connect_ms: welcomed_at.saturating_sub(f.lost_at),
            first_answer_ms: now_ms.saturating_sub(welcomed_at),
        })
    }

    /// Whether an op went out since the datacenter's last frame (work in flight, unanswered:
    /// what the liveness watch judges by).
    pub fn awaiting_answer(&self) -> bool {
        self.first_unanswered.is_some()
    }

    /// Whether a failover is being measured.
    pub fn in_failover(&self) -> bool {
        self.failover.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DC2: DatacenterId = DatacenterId(2);

    #[test]
    fn a_silent_datacenter_stalls_from_the_first_unanswered_op_to_the_first_answer() {
        let mut c = StallClock::default();
        c.op_sent(10_000);
        c.op_sent(10_400); // a second op: the stall still runs from the first
        c.lost(13_000, 3_000, true); // the idle timeout gave up at 13 s
        assert_eq!(
            c.welcomed(DC2, 'b', true, 13_500),
            None,
            "an op still waits"
        );
        let s = c.answered(13_700).expect("the first answer ends it");
        assert_eq!((s.dc, s.addr), (DC2, 'b'));
        assert_eq!(s.stalled_ms, 3_700);
        assert_eq!(s.detection_ms, 3_000);
        assert_eq!(
            (s.connect_ms, s.first_answer_ms),
            (500, 200),
            "given up at 13 s, welcomed at 13.5 s, answered at 13.7 s"
        );
        assert_eq!(c.answered(14_000), None, "measured once");
    }

    #[test]
    fn a_device_in_a_live_session_with_nothing_in_flight_stalls_from_the_last_sign_of_life_and_ends_at_the_welcome(
    ) {
        let mut c = StallClock::default();
        c.lost(20_000, 3_000, true);
        let s = c.welcomed(DC2, 1u8, false, 20_600).expect("nothing waits");
        assert_eq!((s.stalled_ms, s.detection_ms), (3_600, 3_000));
    }

    #[test]
    fn a_closed_connection_is_noticed_at_once_and_an_answer_before_the_reconnect_ends_nothing() {
        let mut c = StallClock::default();
        c.op_sent(5_000);
        c.lost(5_200, 0, false);
        assert_eq!(c.answered(5_300), None, "not reconnected yet");
        assert!(c.in_failover());
        let s = c
            .welcomed(DC2, 0u8, false, 5_400)
            .expect("ends at the welcome");
        // Noticed at once: none of the stall was detection.
        assert_eq!((s.stalled_ms, s.detection_ms), (400, 0));
    }

    #[test]
    fn a_second_loss_during_a_failover_extends_the_first() {
        let mut c = StallClock::default();
        c.lost(1_000, 500, true);
        c.op_sent(1_200);
        c.lost(2_000, 500, true);
        let s = c.welcomed(DC2, 0u8, false, 2_500).expect("ends");
        assert_eq!(
            s.stalled_ms, 2_000,
            "from the first loss's last sign of life"
        );
        assert_eq!(s.detection_ms, 500);
        assert_eq!(
            (s.connect_ms, s.first_answer_ms),
            (1_500, 0),
            "connecting from the first loss to the welcome that ended it"
        );
    }

    #[test]
    fn an_idle_device_that_reconnects_before_anyone_waits_reports_no_stall() {
        let mut c = StallClock::default();
        c.lost(20_000, 3_000, false);
        assert!(c.unfelt());
        assert_eq!(c.welcomed(DC2, 0u8, false, 29_000), None, "nobody waited");
        assert!(!c.in_failover(), "it ended");
        assert_eq!(c.answered(29_500), None);
    }

    #[test]
    fn an_idle_device_given_work_during_its_reconnect_stalls_from_the_work() {
        let mut c = StallClock::default();
        c.lost(20_000, 3_000, false);
        c.work_queued(24_000);
        assert!(!c.unfelt());
        c.work_queued(24_100); // a second op: the stall still runs from the first
        assert_eq!(c.welcomed(DC2, 0u8, true, 24_300), None, "the op waits");
        let s = c.answered(24_400).expect("the answer ends it");
        assert_eq!(
            (
                s.stalled_ms,
                s.detection_ms,
                s.connect_ms,
                s.first_answer_ms
            ),
            (400, 0, 300, 100)
        );
    }

    #[test]
    fn an_op_in_flight_at_the_loss_makes_it_felt_whatever_the_caller_says() {
        let mut c = StallClock::default();
        c.op_sent(9_000);
        c.lost(10_000, 0, false);
        assert!(!c.unfelt());
        let s = c.welcomed(DC2, 0u8, false, 10_200).expect("ends");
        assert_eq!(s.stalled_ms, 1_200);
    }
}
