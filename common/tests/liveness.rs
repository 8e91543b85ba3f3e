//! Deterministic tests of failure detection from the work in flight
//! (`lifeboat_common::route::Liveness`): a small simulated path (delay, loss, a datacenter
//! that dies or only answers slowly) is driven by the detector's own deadlines, as the edge
//! client's driver does, with no sockets and no clock. Seeds are printed on failure.

use lifeboat_common::route::{Liveness, LivenessConfig, Verdict, Waiting};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CFG: LivenessConfig = LivenessConfig {
    floor_ms: 1_000,
    rtt_multiple: 8,
    push_probe_ms: 5_000,
};
use Waiting::{Answer, Nothing, Push};

/// A simulated path to a datacenter, from the device's side.
struct Path {
    rtt_ms: u64,
    /// Chance that a probe or its acknowledgement is lost.
    loss: f64,
    /// The datacenter dies at this time (it answers nothing sent after it).
    dies_at: Option<u64>,
    /// Datagrams the device will receive, by arrival time.
    arrivals: Vec<u64>,
    /// The datacenter pushes something this often (while alive), ms.
    push_every: Option<u64>,
    /// Pushes are scheduled up to here.
    pushed_until: u64,
    received: u64,
    rng: SmallRng,
}

impl Path {
    fn new(rtt_ms: u64, loss: f64, dies_at: Option<u64>, seed: u64) -> Self {
        Self {
            rtt_ms,
            loss,
            dies_at,
            arrivals: Vec::new(),
            push_every: None,
            pushed_until: 0,
            received: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The device sends something ack-eliciting at `now`.
    fn send(&mut self, now: u64) {
        let alive = self.dies_at.is_none_or(|d| now + self.rtt_ms / 2 < d);
        if alive && !self.rng.random_bool(self.loss) {
            self.arrivals.push(now + self.rtt_ms);
        }
    }

    /// Datagrams received by `now`.
    fn rx(&mut self, now: u64) -> u64 {
        if let Some(every) = self.push_every {
            // Pushes at every multiple of `every` while the datacenter lives.
            while self.pushed_until + every <= now + every {
                self.pushed_until += every;
                let t = self.pushed_until;
                if self.dies_at.is_none_or(|d| t < d) {
                    self.arrivals.push(t);
                }
            }
        }
        let (arrived, later): (Vec<u64>, Vec<u64>) = self.arrivals.iter().partition(|&&t| t <= now);
        self.received += arrived.len() as u64;
        self.arrivals = later;
        self.received
    }
}

/// Drive the detector the way the driver does from `start` until `end`: sample at each
/// deadline (and whenever a datagram arrives, at most every 1 ms), send a probe when told.
/// Returns (the verdict time and silence, if it gave up) and the probes sent.
fn drive(
    live: &mut Liveness,
    path: &mut Path,
    start: u64,
    end: u64,
    waiting: impl Fn(u64) -> Waiting,
) -> (Option<(u64, u64)>, u32) {
    let mut probes = 0;
    let mut now = start;
    while now <= end {
        let rx = path.rx(now);
        match live.observe(now, rx, path.rtt_ms, waiting(now)) {
            Verdict::Dead { silent_ms } => return (Some((now, silent_ms)), probes),
            Verdict::Probe => {
                probes += 1;
                path.send(now);
            }
            Verdict::Alive => {}
        }
        let next_arrival = path.arrivals.iter().min().copied();
        let next = [live.poll_timeout(), next_arrival, Some(now + 50)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end + 1);
        now = next.max(now + 1);
    }
    (None, probes)
}

#[test]
fn an_idle_connection_is_never_given_up_however_long_it_is_silent() {
    let mut live = Liveness::new(CFG, 0, 0);
    let mut path = Path::new(1, 0.0, Some(10), 1);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 600_000, |_| Nothing);
    assert_eq!(
        verdict, None,
        "no work outstanding: idle timeout's job, not ours"
    );
    assert_eq!(
        probes, 0,
        "an idle device sends nothing: its radio may sleep"
    );
    assert_eq!(live.poll_timeout(), None);
}

#[test]
fn a_dead_datacenter_is_given_up_one_floor_after_the_op_was_sent_with_probes_before() {
    let mut live = Liveness::new(CFG, 0, 0);
    // Idle for 20 s, the datacenter dies at 20 s, an op goes out at 25 s.
    let mut path = Path::new(1, 0.0, Some(20_000), 2);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 60_000, |t| {
        if t >= 25_000 {
            Answer
        } else {
            Nothing
        }
    });
    let (at, silent) = verdict.expect("a dead datacenter with an op waiting is given up");
    assert!(
        (26_000..=26_010).contains(&at),
        "given up one floor after the op was sent (silence before it proves nothing): {at}"
    );
    assert!(
        (CFG.floor_ms..=CFG.floor_ms + 10).contains(&silent),
        "{silent}"
    );
    assert!(probes >= 5, "probes before the verdict: {probes}");
}

#[test]
fn a_slow_datacenter_that_acknowledges_probes_is_never_given_up() {
    // The application answers nothing for a minute (a restore barrier), but the transport
    // acknowledges every probe.
    let mut live = Liveness::new(CFG, 0, 0);
    let mut path = Path::new(5, 0.0, None, 3);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 60_000, |_| Answer);
    assert_eq!(verdict, None, "alive and acknowledging: never given up");
    assert!(probes > 10, "probes keep the evidence coming: {probes}");
}

#[test]
fn a_long_round_trip_path_gets_a_limit_of_eight_round_trips() {
    let mut live = Liveness::new(CFG, 0, 0);
    let mut path = Path::new(300, 0.0, Some(1), 4);
    let (verdict, _) = drive(&mut live, &mut path, 10, 60_000, |_| Answer);
    let (_, silent) = verdict.expect("given up");
    assert!(
        (2_400..=2_460).contains(&silent),
        "8 x 300 ms, not the 1 s floor: {silent}"
    );
    assert_eq!(live.limit_ms(), 2_400);
}

#[test]
fn a_datagram_received_restarts_the_silence_window() {
    let mut live = Liveness::new(CFG, 0, 0);
    assert_eq!(live.observe(0, 0, 1, Answer), Verdict::Alive);
    // 900 ms of silence, then a datagram: the window starts again.
    assert_eq!(live.observe(900, 1, 1, Answer), Verdict::Alive);
    assert_eq!(live.poll_timeout(), Some(900 + 1_000 / 6));
    assert!(matches!(live.observe(1_850, 1, 1, Answer), Verdict::Probe));
    assert_eq!(
        live.observe(1_900, 1, 1, Answer),
        Verdict::Dead { silent_ms: 1_000 }
    );
}

#[test]
fn work_answered_and_then_new_work_starts_a_fresh_window() {
    let mut live = Liveness::new(CFG, 0, 0);
    assert_eq!(live.observe(0, 0, 1, Answer), Verdict::Alive);
    assert_eq!(live.observe(500, 0, 1, Nothing), Verdict::Alive);
    assert_eq!(live.poll_timeout(), None);
    // New work at 5 s: silence since 0 does not count.
    assert_eq!(live.observe(5_000, 0, 1, Answer), Verdict::Alive);
    assert_eq!(live.observe(5_999, 0, 1, Answer), Verdict::Probe);
    assert_eq!(
        live.observe(6_000, 0, 1, Answer),
        Verdict::Dead { silent_ms: 1_000 }
    );
}

#[test]
fn a_device_in_a_session_whose_pushes_stop_probes_and_gives_up_one_floor_after_the_probe() {
    let mut live = Liveness::new(CFG, 0, 0);
    // Pushes every second until the datacenter dies at 30.5 s.
    let mut path = Path::new(1, 0.0, Some(30_500), 5);
    path.push_every = Some(1_000);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 120_000, |_| Push);
    let (at, silent) = verdict.expect("a session whose datacenter died is given up");
    // Last push at 30 s, first probe 5 s later, given up one floor after it.
    assert!((36_000..=36_010).contains(&at), "given up at {at}");
    assert!((1_000..=1_010).contains(&silent), "{silent}");
    assert!(probes >= 5, "{probes}");
}

#[test]
fn a_device_in_a_session_whose_pushes_flow_sends_no_probe() {
    let mut live = Liveness::new(CFG, 0, 0);
    let mut path = Path::new(1, 0.0, None, 6);
    path.push_every = Some(1_000);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 120_000, |_| Push);
    assert_eq!(verdict, None);
    assert_eq!(
        probes, 0,
        "pushes are the evidence: nothing extra on the radio"
    );
}

#[test]
fn a_quiet_session_costs_one_probe_and_its_acknowledgement_per_push_interval() {
    let mut live = Liveness::new(CFG, 0, 0);
    let mut path = Path::new(1, 0.0, None, 7);
    let (verdict, probes) = drive(&mut live, &mut path, 0, 60_000, |_| Push);
    assert_eq!(verdict, None, "the acknowledgements keep it alive");
    assert!(
        (11..=12).contains(&probes),
        "one probe per 5 s of silence in a minute: {probes}"
    );
}

/// With 10% loss each way on a 200 ms path, a datacenter that is alive (but answers the
/// application only after a long wait) is rarely given up by mistake; the figure is the
/// false-failover rate the harness then counts for real (`false_failovers`).
#[test]
fn a_lossy_but_alive_path_is_rarely_given_up_by_mistake() {
    let seed = std::env::var("LIFEBOAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202u64);
    let waits = 2_000;
    let mut mistakes = 0;
    for i in 0..waits {
        let mut live = Liveness::new(CFG, 0, 0);
        // 19% round-trip loss: 10% each way.
        let mut path = Path::new(200, 0.19, None, seed + i);
        let (verdict, _) = drive(&mut live, &mut path, 0, 10_000, |_| Answer);
        mistakes += u32::from(verdict.is_some());
    }
    assert!(
        mistakes <= waits as u32 / 200,
        "seed {seed}: {mistakes} of {waits} ten-second waits on a lossy live path were given up"
    );
}

proptest! {
    /// Whatever the samples, a verdict of death needs work outstanding and at least the
    /// floor of silence since that work started and since the last datagram.
    #[test]
    fn death_needs_outstanding_work_and_a_floor_of_silence(
        steps in prop::collection::vec((1u64..700, any::<bool>(), any::<bool>(), 0u64..400), 1..80),
    ) {
        let mut live = Liveness::new(CFG, 0, 0);
        let (mut now, mut rx) = (0u64, 0u64);
        let (mut since, mut last_rx): (Option<u64>, u64) = (None, 0);
        for (dt, got, outstanding, rtt) in steps {
            now += dt;
            if got {
                rx += 1;
                last_rx = now;
            }
            if outstanding {
                since.get_or_insert(now);
            } else {
                since = None;
            }
            let waiting = if outstanding { Answer } else { Nothing };
            if let Verdict::Dead { silent_ms } = live.observe(now, rx, rtt, waiting) {
                let from = since.expect("dead only with work outstanding").max(last_rx);
                prop_assert_eq!(silent_ms, now - from);
                prop_assert!(silent_ms >= CFG.floor_ms.max(rtt * 8));
            }
        }
    }
}

#[test]
fn a_datacenter_without_datagrams_is_not_judged_by_pushes_it_cannot_be_asked_about() {
    let mut live = Liveness::new(CFG, 0, 0);
    assert_eq!(live.observe(5_000, 0, 1, Push), Verdict::Probe);
    live.probe_not_sent();
    assert_eq!(live.observe(60_000, 0, 1, Push), Verdict::Alive);
    assert_eq!(live.poll_timeout(), None, "nothing to judge by: idle");
    // An op in flight is still judged by its own evidence.
    assert_eq!(live.observe(61_000, 0, 1, Answer), Verdict::Alive);
    assert!(matches!(
        live.observe(62_000, 0, 1, Answer),
        Verdict::Dead { silent_ms: 1_000 }
    ));
}
