//! Deterministic tests of the edge's route policy (`lifeboat_common::route`): which
//! datacenter a device tries, how long it waits, when it probes home, with no sockets and no
//! clock. The last test runs two partners of a session through a failover and the primary's
//! return on a simulated network and checks they converge on the primary (S13). Seeds are
//! printed on failure.

use lifeboat_common::route::{
    Next, Planner, ProbeBoard, RouteConfig, RouteMemory, MAX_DRAIN_HOLD_MS,
};

const CFG: RouteConfig = RouteConfig {
    backoff_min_ms: 100,
    backoff_max_ms: 2_000,
    home_probe_ms: Some(2_000),
    probe_max_ms: 4_000,
    remember_failure_ms: 600_000,
};

const DCS: [char; 3] = ['a', 'b', 'c'];

fn planner(memory: RouteMemory<char>, seed: u64) -> Planner<char> {
    Planner::new(CFG, DCS.to_vec(), memory, seed, 1_000_000)
}

/// The connect attempts of one full round, failing each (a region where nothing answers),
/// and the wait the planner asks for after it.
fn fail_round_then_wait(
    p: &mut Planner<char>,
    board: &mut ProbeBoard<char>,
    now: u64,
) -> (Vec<usize>, u64) {
    let mut tried = Vec::new();
    loop {
        match p.next(board, now) {
            Next::Connect(i) => {
                tried.push(i);
                p.connect_failed(i, board, now);
                assert!(
                    tried.len() <= DCS.len(),
                    "a round tries each datacenter once"
                );
            }
            Next::Wait(w) => return (tried, w),
        }
    }
}

fn fail_round(p: &mut Planner<char>, board: &mut ProbeBoard<char>, now: u64) -> Vec<usize> {
    fail_round_then_wait(p, board, now).0
}

#[test]
fn a_restarted_device_tries_where_it_last_was_first_and_what_failed_recently_last() {
    let memory = RouteMemory {
        last_reached: Some('b'),
        failed: vec![('a', 1_000_000 - 60_000)],
    };
    let mut p = planner(memory, 1);
    let mut board = ProbeBoard::default();
    assert_eq!(fail_round(&mut p, &mut board, 1_000_000), vec![1, 2, 0]);
    // A failure older than the memory window does not count.
    let old = RouteMemory {
        last_reached: None,
        failed: vec![('a', 1_000_000 - 700_000)],
    };
    let mut p = planner(old, 1);
    assert_eq!(fail_round(&mut p, &mut board, 1_000_000), vec![0, 1, 2]);
}

#[test]
fn a_full_round_of_failures_waits_a_jittered_backoff_that_doubles_to_its_bound_and_resets() {
    for seed in 0..50 {
        let mut p = planner(RouteMemory::default(), seed);
        let mut board = ProbeBoard::default();
        let mut now = 1_000_000;
        let mut base = CFG.backoff_min_ms;
        for round in 0..8 {
            let (tried, w) = fail_round_then_wait(&mut p, &mut board, now);
            assert_eq!(tried.len(), DCS.len(), "seed {seed} round {round}");
            assert!(
                (base..=base + base / 2).contains(&w),
                "seed {seed} round {round}: waited {w} ms on a backoff of {base}"
            );
            now += w;
            base = (base * 2).min(CFG.backoff_max_ms);
        }
        assert_eq!(p.backoff_ms(), CFG.backoff_max_ms, "seed {seed}");
        // A welcome resets it.
        let Next::Connect(i) = p.next(&board, now) else {
            panic!("seed {seed}: a new round after the wait");
        };
        p.welcomed(i, now);
        assert_eq!(p.connection_ended(true), None);
        assert_eq!(p.backoff_ms(), CFG.backoff_min_ms, "seed {seed}");
    }
}

#[test]
fn a_lost_datacenter_and_one_that_recently_failed_go_to_the_back_in_preference_order() {
    let mut p = planner(RouteMemory::default(), 3);
    let mut board = ProbeBoard::default();
    let now = 1_000_000;
    assert_eq!(p.next(&board, now), Next::Connect(0));
    p.welcomed(0, now);
    assert_eq!(p.connection_ended(true), None);
    p.lost(0, &mut board, now);
    assert_eq!(
        p.memory().last_reached,
        None,
        "the lost one is no longer where it was"
    );
    assert_eq!(fail_round(&mut p, &mut board, now + 10), vec![1, 2, 0]);
    // Another client sharing the board saw 'b' fail just now: it goes to the back too.
    let mut q = planner(RouteMemory::default(), 4);
    q.lost(2, &mut board, now + 20);
    board.record('b', false, now + 20);
    assert_eq!(fail_round(&mut q, &mut board, now + 30), vec![0, 1, 2]);
    let mut fresh = ProbeBoard::default();
    fresh.record('b', false, now + 20);
    q.lost(0, &mut fresh, now + 30);
    assert_eq!(fail_round(&mut q, &mut fresh, now + 40), vec![2, 0, 1]);
}

#[test]
fn a_drained_datacenter_sends_its_device_where_it_says_at_once_and_is_held_off_until_its_drain_ends(
) {
    let mut p = planner(RouteMemory::default(), 5);
    let mut board = ProbeBoard::default();
    let now = 1_000_000;
    assert_eq!(p.next(&board, now), Next::Connect(0));
    p.welcomed(0, now);
    assert_eq!(p.connection_ended(true), None, "welcomed: no backoff");
    p.drained(0, Some('c'), 5_000, &mut board, now + 10);
    assert_eq!(
        p.next(&board, now + 10),
        Next::Connect(2),
        "told to go to 'c'"
    );
    p.connect_failed(2, &mut board, now + 20);
    assert_eq!(
        p.next(&board, now + 20),
        Next::Connect(1),
        "then the rest in order, the drained one last"
    );
    assert!(
        board.recently_failed('a', now + 4_999, 1),
        "no probe goes back while the drain may run"
    );
    assert!(!board.recently_failed('a', now + 5_010, 1));
    // A datacenter cannot keep its devices away for ever.
    p.drained(0, None, u64::MAX, &mut board, now);
    assert!(board.recently_failed('a', now + MAX_DRAIN_HOLD_MS - 1, 1));
    assert!(!board.recently_failed('a', now + MAX_DRAIN_HOLD_MS, 1));

    // An address the device does not know is ignored: its own next datacenter.
    let mut q = planner(RouteMemory::default(), 6);
    let mut board = ProbeBoard::default();
    q.drained(0, Some('z'), 5_000, &mut board, now);
    assert_eq!(q.next(&board, now), Next::Connect(1));
    // Drained before the datacenter welcomed it: no backoff either.
    let mut r = planner(RouteMemory::default(), 7);
    let mut board = ProbeBoard::default();
    assert_eq!(r.next(&board, now), Next::Connect(0));
    r.drained(0, None, 5_000, &mut board, now);
    assert_eq!(r.next(&board, now), Next::Connect(1));
}

#[test]
fn a_busy_datacenter_is_tried_again_after_a_jittered_backoff_instead_of_the_next() {
    for seed in 0..50 {
        let mut p = planner(RouteMemory::default(), seed);
        let board = ProbeBoard::default();
        let now = 1_000_000;
        assert_eq!(p.next(&board, now), Next::Connect(0));
        let mut base = CFG.backoff_min_ms;
        for attempt in 0..6 {
            let w = p.busy(0);
            assert!(
                (base..=2 * base).contains(&w),
                "seed {seed} attempt {attempt}: waited {w} ms on a backoff of {base}"
            );
            assert_eq!(p.next(&board, now + w), Next::Connect(0), "seed {seed}");
            base = (base * 2).min(CFG.backoff_max_ms);
        }
    }
}

#[test]
fn a_connection_refused_before_welcome_is_backed_off_like_a_failed_connect() {
    let mut p = planner(RouteMemory::default(), 5);
    assert_eq!(p.connection_ended(false), Some(100));
    assert_eq!(p.connection_ended(false), Some(200));
    assert_eq!(p.connection_ended(true), None);
    assert_eq!(p.connection_ended(false), Some(100));
}

#[test]
fn probes_run_only_away_from_the_first_and_back_off_to_their_bound() {
    for seed in 0..50 {
        let mut p = planner(RouteMemory::default(), seed);
        assert!(!p.probes_from(0));
        assert!(p.probes_from(2));
        assert_eq!(p.probe_targets(2), vec![(0, 'a'), (1, 'b')]);
        let mut every = CFG.home_probe_ms.unwrap_or(CFG.probe_max_ms);
        let w = p.first_probe_wait();
        assert!(
            (every / 2..=every + every / 2).contains(&w),
            "seed {seed}: {w}"
        );
        for _ in 0..4 {
            every = (every * 2).min(CFG.probe_max_ms);
            let w = p.probe_found_none();
            assert!(
                (every / 2..=every + every / 2).contains(&w),
                "seed {seed}: {w}"
            );
        }
        // A new connection starts from the configured interval again.
        let w = p.first_probe_wait();
        assert!((1_000..=3_000).contains(&w), "seed {seed}: {w}");
    }
    let stay = RouteConfig {
        home_probe_ms: None,
        ..CFG
    };
    let p = Planner::new(stay, DCS.to_vec(), RouteMemory::default(), 0, 0);
    assert!(!p.probes_from(2), "home_probe None: stay");
}

#[test]
fn the_same_seed_replays_the_same_waits() {
    let run = |seed| {
        let mut p = planner(RouteMemory::default(), seed);
        let mut board = ProbeBoard::default();
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(fail_round_then_wait(&mut p, &mut board, 1_000_000).1);
            waits.push(p.busy(0));
            waits.push(p.first_probe_wait());
        }
        waits
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43), "the jitter depends on the seed");
}

/// Two partners on a simulated network: datacenter 'a' dies, both fail over, 'a' comes
/// back; the probes must bring both back to 'a' within a bounded time.
#[test]
fn two_partners_converge_on_the_primary_after_it_comes_back() {
    for seed in 0..30u64 {
        let mut board = ProbeBoard::default();
        let mut devices: Vec<Device> = (0..2)
            .map(|d| Device::new(planner(RouteMemory::default(), seed * 2 + d)))
            .collect();
        let mut up = [true, true, true];
        let mut now = 1_000_000u64;
        let end = now + 120_000;
        while now < end {
            if now == 1_010_000 {
                up[0] = false;
                for d in &mut devices {
                    d.lose_if_on(0, &mut board, now);
                }
            }
            if now == 1_030_000 {
                up[0] = true;
            }
            for d in &mut devices {
                d.step(&up, &mut board, now);
            }
            now += 50;
        }
        let at: Vec<Option<usize>> = devices.iter().map(|d| d.on).collect();
        assert_eq!(
            at,
            vec![Some(0), Some(0)],
            "seed {seed}: both partners end on the primary"
        );
        assert!(
            devices.iter().all(|d| d.moves >= 1),
            "seed {seed}: each moved home once 'a' was back"
        );
    }
}

/// A device as the driver runs the policy: connect, wait, probe, move.
struct Device {
    p: Planner<char>,
    on: Option<usize>,
    busy_until: u64,
    probe_at: Option<u64>,
    moves: u32,
}

impl Device {
    fn new(p: Planner<char>) -> Self {
        Self {
            p,
            on: None,
            busy_until: 0,
            probe_at: None,
            moves: 0,
        }
    }

    fn lose_if_on(&mut self, dc: usize, board: &mut ProbeBoard<char>, now: u64) {
        if self.on == Some(dc) {
            self.on = None;
            self.p.lost(dc, board, now);
        }
    }

    fn connected(&mut self, idx: usize, now: u64) {
        self.on = Some(idx);
        self.p.welcomed(idx, now);
        self.p.connection_ended(true);
        self.probe_at = self
            .p
            .probes_from(idx)
            .then(|| now + self.p.first_probe_wait());
    }

    fn step(&mut self, up: &[bool], board: &mut ProbeBoard<char>, now: u64) {
        if now < self.busy_until {
            return;
        }
        match self.on {
            None => match self.p.next(board, now) {
                Next::Wait(w) => self.busy_until = now + w,
                Next::Connect(i) if up[i] => self.connected(i, now),
                Next::Connect(i) => self.p.connect_failed(i, board, now),
            },
            Some(idx) => {
                let Some(at) = self.probe_at else { return };
                if now < at {
                    return;
                }
                let window = self.p.probe_window_ms();
                let found = self.p.probe_targets(idx).into_iter().find(|(_, a)| {
                    if board.recently_failed(*a, now, window) {
                        return false;
                    }
                    let answered = up[DCS.iter().position(|d| d == a).unwrap_or(0)];
                    board.record(*a, answered, now);
                    answered
                });
                match found {
                    Some((to, _)) => {
                        self.p.moved(idx, board, now);
                        self.moves += 1;
                        self.connected(to, now);
                    }
                    None => self.probe_at = Some(now + self.p.probe_found_none()),
                }
            }
        }
    }
}

/// The standby path (issue 13 item 1): the datacenter a standby connection should reach is
/// the one the device would connect to first if it lost its datacenter now, and after the
/// loss the planner's next connect is exactly that one, so the standby is the ready path.
#[test]
fn the_standby_target_is_where_the_device_goes_first_after_losing_its_datacenter() {
    for seed in 0..20u64 {
        let mut p = planner(RouteMemory::default(), seed);
        let mut board = ProbeBoard::default();
        let now = 1_000_000;
        // On the primary, the standby goes to the next in preference order.
        assert_eq!(p.failover_target(0, &board, now), Some(1), "seed {seed}");
        // On the second, it goes home (the first), not to the third.
        assert_eq!(p.failover_target(1, &board, now), Some(0), "seed {seed}");
        // A datacenter that just failed a probe goes to the back, so the standby skips it.
        board.record('b', false, now);
        assert_eq!(p.failover_target(0, &board, now), Some(2), "seed {seed}");
        // After a loss, the next connect is the standby's datacenter, and peek says so
        // without taking it.
        let target = p.failover_target(0, &board, now);
        p.lost(0, &mut board, now);
        assert_eq!(p.peek_next(), target, "seed {seed}");
        assert_eq!(p.peek_next(), target, "seed {seed}: peek took the entry");
        match p.next(&board, now) {
            Next::Connect(i) => assert_eq!(Some(i), target, "seed {seed}"),
            Next::Wait(w) => panic!("seed {seed}: a wait of {w} ms instead of the standby"),
        }
    }
    // A list of one has no standby target.
    let mut only = Planner::new(CFG, vec!['a'], RouteMemory::default(), 1, 1_000_000);
    let board = ProbeBoard::default();
    assert_eq!(only.failover_target(0, &board, 1_000_000), None);
    // After a full failed round the planner waits: nothing to peek.
    let mut board = ProbeBoard::default();
    fail_round(&mut only, &mut board, 1_000_000);
    assert_eq!(only.peek_next(), None);
}
