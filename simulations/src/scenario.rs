//! Scenario scripts: which datacenter faults happen when, which devices misbehave, and the
//! run loop around them (start, traffic, drain, verify, report).

use crate::city::{driver_task, rider_task, City, CityConfig, DeviceFault, DeviceLog, Shared};
use crate::cluster::{dispatched_sessions, harness_cluster};
use crate::report::{table, write_report, Mark, Sample};
use crate::verify::{verify, Report, VerifyInput};
use crate::Opts;
use anyhow::{bail, Context};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use lifeboat_testkit::cluster::Cluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Failover,
    Failback,
    DoubleFailure,
    Flapping,
    Reinstall,
    OfflineDevice,
    /// A planned failover: dc1 is drained (SIGTERM) and moves its devices to dc2 in paced
    /// waves before it stops.
    Drain,
    /// S13: both datacenters stay up; the riders lose dc1 and the drivers dc2 for longer
    /// than the old restore grace, and every trip's partners act on two sites.
    Partition,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Failback => "failback",
            Kind::DoubleFailure => "double-failure",
            Kind::Flapping => "flapping",
            Kind::Reinstall => "reinstall",
            Kind::OfflineDevice => "offline-device",
            Kind::Partition => "partition",
            Kind::Drain => "drain",
        }
    }
}

/// Run scenarios in turn; true if all passed.
pub fn run_all(kinds: &[Kind], opts: &Opts) -> anyhow::Result<bool> {
    opts.network.impairment()?;
    if opts.kill_at >= opts.duration {
        bail!(
            "--kill-at ({}) must be before the end of --duration ({})",
            opts.kill_at,
            opts.duration
        );
    }
    let seed = opts
        .seed
        .unwrap_or_else(|| rand::rng().random::<u32>() as u64);
    let mut all_passed = true;
    let mut reports = Vec::new();
    for kind in kinds {
        eprintln!(
            "== {} with {} trips, seed {seed} (replay: lifeboat-sim {} --seed {seed} --trips {}{})",
            kind.name(),
            opts.trips,
            kind.name(),
            opts.trips,
            opts.network.args()
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let result = rt.block_on(run_one(*kind, opts, seed))?;
        rt.shutdown_timeout(Duration::from_secs(5));
        println!("{}", table(&result.0));
        all_passed &= result.0.passed;
        reports.push(result);
    }
    if let Some(path) = &opts.json {
        let value = if reports.len() == 1 {
            serde_json::to_value(&reports[0].0)?
        } else {
            serde_json::to_value(reports.iter().map(|r| &r.0).collect::<Vec<_>>())?
        };
        std::fs::write(path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(dir) = &opts.report {
        write_report(dir, &reports)?;
        eprintln!("report: {}", dir.join("report.md").display());
    }
    Ok(all_passed)
}

async fn run_one(
    kind: Kind,
    opts: &Opts,
    seed: u64,
) -> anyhow::Result<(Report, Vec<Sample>, Vec<Mark>)> {
    let work = tempfile::Builder::new().prefix("lifeboat-sim-").tempdir()?;
    let dir = work.path().to_path_buf();
    let mut cluster = harness_cluster(&dir, 2, opts.durability, opts.server_bin.as_deref())?;
    cluster.start(0)?;
    cluster.start(1)?;
    let drivers = opts.devices.unwrap_or(opts.trips).max(1);
    let cfg = CityConfig {
        trips: opts.trips,
        drivers,
        seed,
        request_window: Duration::from_secs_f64(opts.duration * 0.6),
        // Phones report about once a second in a small city; in a big one the aggregate rate
        // is held near 1,000 location ops/s (one report every `trips` ms), so a 2-core
        // machine runs the devices, both datacenters and the harness at once.
        location_interval: Duration::from_millis((opts.trips as u64).max(1_000)),
        locations_per_trip: (10, 30),
        cancel_probability: 0.08,
        keep_alive: Duration::from_millis(opts.keep_alive_ms),
        idle_timeout: Duration::from_millis(opts.idle_timeout_ms),
        detect_floor: Duration::from_millis(opts.detect_floor_ms),
        session_probe: Duration::from_millis(opts.session_probe_ms),
        shards: 8,
        devices_per_socket: 256,
        op_timeout: Duration::from_secs(60),
        link: match kind {
            Kind::Partition => Some(crate::network::Link::cuttable(&opts.network, seed)?),
            _ => crate::network::Link::new(&opts.network, seed)?,
        },
    };
    let city = Arc::new(City::build(
        &cfg,
        &dir,
        cluster.addrs(),
        &cluster.keyring,
        &cluster.ca_pem,
    )?);
    let kill_ms = (opts.kill_at * 1000.0) as u64;
    let end_ms = (opts.duration * 1000.0) as u64;
    // The partition's waiting ops commit only once the riders are home with their anchors
    // (the drivers): the traffic goes on long enough after the heal for that.
    let end_ms = match kind {
        Kind::Partition => end_ms.max(kill_ms + SPLIT_MS + AFTER_HEAL_MS),
        _ => end_ms,
    };

    // Device faults planned by the scenario (chosen by the seed).
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xFA17);
    let mut driver_faults = vec![DeviceFault::None; city.drivers.len()];
    let mut rider_faults = vec![DeviceFault::None; city.riders.len()];
    match kind {
        Kind::Reinstall => {
            for f in rider_faults.iter_mut() {
                if rng.random_bool(0.10) {
                    *f = DeviceFault::Reinstall { at_ms: kill_ms };
                }
            }
        }
        Kind::OfflineDevice => {
            for f in driver_faults.iter_mut() {
                if rng.random_bool(0.10) {
                    *f = DeviceFault::Offline {
                        from_ms: kill_ms.saturating_sub(2_000),
                        to_ms: kill_ms + (end_ms - kill_ms) / 2,
                    };
                }
            }
        }
        _ => {}
    }

    let shared = Shared::new();
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(end_ms / 1000)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>15} [{bar:30}] {pos:>3}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(kind.name());
    bar.set_message("connecting drivers");

    let mut tasks = Vec::new();
    for (i, (d, f)) in city.drivers.iter().zip(driver_faults).enumerate() {
        pace_start(i, opts.start_rate, &city, i).await;
        tasks.push((
            d.id,
            tokio::spawn(driver_task(d.clone(), cfg.clone(), shared.clone(), f)),
        ));
    }
    // Let drivers connect before riders request (bounded wait).
    let t0 = Instant::now();
    while city.connected_per_dc(2).iter().sum::<usize>() < city.drivers.len()
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One clock for everyone; traffic time starts now.
    let traffic_start_ms = shared.now_ms();
    let kill_ms = traffic_start_ms + kill_ms;
    let end_ms = traffic_start_ms + end_ms;
    // The fault script runs on its own thread: it blocks on process signals. It starts
    // before the riders so that the kill comes on time even while a big city still starts.
    let cluster = Arc::new(Mutex::new(cluster));
    let marks = Arc::new(Mutex::new(Vec::<Mark>::new()));
    let split = Split {
        riders: city.rider_links.clone(),
        drivers: city.driver_links.clone(),
        dcs: cluster
            .lock()
            .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?
            .addrs(),
    };
    let script = {
        let cluster = cluster.clone();
        let shared = shared.clone();
        let marks = marks.clone();
        tokio::task::spawn_blocking(move || {
            fault_script(kind, &cluster, &shared, &marks, &split, kill_ms, end_ms)
        })
    };

    // Riders start on their own task, so that sampling covers a big city's start too.
    let riders = {
        let (city, cfg, shared) = (city.clone(), cfg.clone(), shared.clone());
        let start_rate = opts.start_rate;
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for (i, (r, f)) in city.riders.iter().zip(rider_faults).enumerate() {
                pace_start(i, start_rate, &city, city.drivers.len() + i).await;
                // A city too big to start within the run: the riders not started by its
                // end never start (the report counts trips that were requested).
                if shared.stopped() {
                    break;
                }
                let f = match f {
                    DeviceFault::Reinstall { .. } => DeviceFault::Reinstall { at_ms: kill_ms },
                    other => other,
                };
                tasks.push((
                    r.id,
                    tokio::spawn(rider_task(r.clone(), i, cfg.clone(), shared.clone(), f)),
                ));
            }
            tasks
        })
    };

    // Sample the run until the end of traffic.
    let mut samples = Vec::new();
    let mut primary_before_fault: Option<crate::cluster::DcStatus> = None;
    // The backup's CPU time at the first fault (pid, µs) and when every device was
    // connected again (µs, devices on the backup).
    let mut backup_cpu_at_fault: Option<(u32, u64, u64, u64)> = None;
    let mut backup_cpu_reconnected: Option<(u64, usize, u64, u64)> = None;
    // The backup's RSS at the first sample (before any device), and its standby connections
    // and RSS at the last sample before the first fault: what the standbys cost it.
    let mut backup_rss_start: Option<u64> = None;
    let mut backup_standby_before_fault: Option<(usize, u64)> = None;
    let mut last_ops = 0u64;
    let mut last_t = shared.now_ms();
    // After the traffic window, keep sampling until every device is connected again to a
    // datacenter that runs (a device still failing over when the run stops would be judged
    // on a half-done failover; an idle one notices a dead datacenter only at its idle
    // timeout), for at most SETTLE_MAX or the idle timeout and a margin, if longer.
    let devices_total = city.drivers.len() + city.riders.len();
    let settle_max = SETTLE_MAX.max(Duration::from_millis(opts.idle_timeout_ms) + SETTLE_MARGIN);
    let settle_until = end_ms + settle_max.as_millis() as u64;
    let connected_live = || -> usize {
        let per_dc = city.connected_per_dc(2);
        per_dc
            .iter()
            .zip(&shared.dc_up)
            .filter(|(_, up)| up.load(Ordering::Relaxed))
            .map(|(n, _)| n)
            .sum()
    };
    while shared.now_ms() < end_ms
        || (shared.now_ms() < settle_until && connected_live() < devices_total)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = shared.now_ms();
        let ops = shared.ops_committed.load(Ordering::Relaxed);
        let dt = (now - last_t).max(1) as f64 / 1000.0;
        let devices = city.connected_per_dc(2);
        let sessions: Vec<usize> = {
            let c = cluster
                .lock()
                .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
            let status: Vec<Option<crate::cluster::DcStatus>> =
                (0..2).map(|i| crate::cluster::status(&c, i)).collect();
            // The primary's shadow restore, as last seen before the first fault.
            if shared.kill_ms.load(Ordering::Relaxed) == u64::MAX {
                if let Some(s) = &status[0] {
                    primary_before_fault = Some(s.clone());
                }
                let rss = c.dcs[1]
                    .as_ref()
                    .and_then(|p| crate::bench::procfs::rss_bytes(p.pid().as_raw() as u32).ok());
                if let Some(rss) = rss {
                    backup_rss_start.get_or_insert(rss);
                    if let Some(s) = &status[1] {
                        backup_standby_before_fault = Some((s.standby_connections, rss));
                    }
                }
            } else if backup_cpu_at_fault.is_none() {
                backup_cpu_at_fault = c.dcs[1].as_ref().and_then(|p| {
                    let pid = p.pid().as_raw() as u32;
                    crate::bench::procfs::cpu_us(pid)
                        .ok()
                        .map(|cpu| (pid, cpu, ops, now))
                });
            } else if backup_cpu_reconnected.is_none() && connected_live() >= devices_total {
                if let Some((pid, _, _, _)) = backup_cpu_at_fault {
                    let same = c.dcs[1]
                        .as_ref()
                        .is_some_and(|p| p.pid().as_raw() as u32 == pid);
                    backup_cpu_reconnected = same
                        .then(|| crate::bench::procfs::cpu_us(pid).ok())
                        .flatten()
                        .map(|cpu| (cpu, devices[1], ops, now));
                }
            }
            status
                .iter()
                .map(|s| s.as_ref().map_or(0, |s| s.active_sessions))
                .collect()
        };
        let sample = Sample {
            t_s: (now.saturating_sub(traffic_start_ms)) as f64 / 1000.0,
            ops_per_s: (ops - last_ops) as f64 / dt,
            trips_active: shared.trips_active.load(Ordering::Relaxed),
            devices: devices.clone(),
            sessions,
        };
        bar.set_position(sample.t_s as u64);
        bar.set_message(format!(
            "trips active {:>5}  ops/s {:>6.0}  devices dc1 {:>5} dc2 {:>5}",
            sample.trips_active, sample.ops_per_s, devices[0], devices[1]
        ));
        samples.push(sample);
        last_ops = ops;
        last_t = now;
    }
    shared.stop.store(true, Ordering::Relaxed);
    bar.set_message("draining and verifying");
    script.await.context("fault script")??;
    tasks.extend(riders.await.context("rider start-up task")?);
    // Riders the run ended before (a city bigger than this machine starts in the run) hold
    // nothing: reported, not judged.
    let devices_not_started = devices_total.saturating_sub(tasks.len());
    let mut logs: Vec<DeviceLog> = Vec::new();
    let mut unfinished = Vec::new();
    for (id, t) in tasks {
        match tokio::time::timeout(Duration::from_secs(90), t).await {
            Ok(Ok(log)) => logs.push(log),
            _ => unfinished.push(id.0),
        }
    }
    bar.finish_and_clear();

    let mut cluster = Arc::try_unwrap(cluster)
        .map_err(|_| anyhow::anyhow!("cluster still shared"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
    let dispatched = dispatched_sessions(&cluster, 0);
    let backup = crate::cluster::status(&cluster, 1);
    let stored = cluster.stop_all_and_read()?;
    let first_kill = shared.kill_ms.load(Ordering::Relaxed);
    let mut report = Report {
        scenario: kind.name().to_string(),
        seed,
        durability: opts.durability.to_string(),
        devices: city.drivers.len() + city.riders.len(),
        devices_not_started,
        duration_s: (end_ms - traffic_start_ms) as f64 / 1000.0,
        kill_at_s: opts.kill_at,
        network: cfg.link.as_ref().map(|l| l.report()),
        backup_handshakes_full: backup
            .as_ref()
            .map_or(0, |s| s.handshakes.saturating_sub(s.handshakes_resumed)),
        backup_handshakes_resumed: backup.as_ref().map_or(0, |s| s.handshakes_resumed),
        ..Default::default()
    };
    if let (Some(start), Some((n, rss))) = (backup_rss_start, backup_standby_before_fault) {
        report.standby_at_backup_before_fault = n;
        report.backup_rss_per_standby_bytes =
            (n > 0).then(|| rss.saturating_sub(start) as f64 / n as f64);
    }
    if let (
        Some((_, at_fault, ops_at_fault, t_fault)),
        Some((at_end, on_backup, ops_at_end, t_end)),
    ) = (backup_cpu_at_fault, backup_cpu_reconnected)
    {
        report.backup_cpu_window_ops = ops_at_end.saturating_sub(ops_at_fault);
        report.backup_cpu_window_s = t_end.saturating_sub(t_fault) as f64 / 1000.0;
        if on_backup > 0 {
            report.backup_cpu_us_per_device =
                Some(at_end.saturating_sub(at_fault) as f64 / on_backup as f64);
        }
    }
    if report.backup_cpu_us_per_device.is_some() {
        eprintln!("   measuring a bare quinn set-up (full and resumed) for comparison");
        let exe = std::env::current_exe().context("locating the sim executable")?;
        match crate::handshake_baseline::measure(
            &exe,
            &dir,
            &cluster.region_dir,
            &cluster.ca_pem,
            BASELINE_SETUPS,
        )
        .await
        {
            Ok(b) if b.resumed_offered as usize == b.count => {
                report.bare_setup_cpu_us_full = Some(b.full_cpu_us);
                report.bare_setup_cpu_us_resumed = Some(b.resumed_cpu_us);
                report.backup_cpu_ratio_to_resumed = report
                    .backup_cpu_us_per_device
                    .map(|x| x / b.resumed_cpu_us.max(f64::MIN_POSITIVE));
            }
            Ok(b) => eprintln!(
                "bare baseline: only {} of {} resumed set-ups offered a ticket: not reported",
                b.resumed_offered, b.count
            ),
            Err(e) => eprintln!("bare baseline failed: {e:#}"),
        }
    }
    if let Some(p) = &primary_before_fault {
        report.shadow_samples_before_fault = p.core.shadow_samples;
        report.shadow_restorable_before_fault = (p.core.shadow_samples > 0)
            .then(|| p.core.shadow_restorable as f64 / p.core.shadow_samples as f64);
        report.shadow_copies_behind_before_fault = p.core.shadow_copies_behind;
        report.shadow_copies_silent_before_fault = p.core.shadow_copies_silent;
        report.shadow_lag_ms_p99 = p.shadow.lag_ms_p99;
        report.shadow_answer_ms_p50 = p.shadow.answer_ms_p50;
        report.shadow_answer_ms_p99 = p.shadow.answer_ms_p99;
    }
    verify(
        &mut report,
        VerifyInput {
            logs: &logs,
            stored: &stored,
            kill_ms: (first_kill != u64::MAX).then_some(first_kill),
            dispatched_by_killed: &dispatched,
        },
    );
    if !unfinished.is_empty() {
        report.passed = false;
        report.violations.push(format!(
            "{} device tasks did not finish: devices {:?}",
            unfinished.len(),
            &unfinished[..unfinished.len().min(10)]
        ));
    }
    if opts.keep {
        let kept = work.keep();
        eprintln!("kept the run directory: {}", kept.display());
    }
    let marks = marks.lock().map(|m| m.clone()).unwrap_or_default();
    let marks = marks
        .into_iter()
        .map(|m| Mark {
            t_s: m.t_s - traffic_start_ms as f64 / 1000.0,
            label: m.label,
        })
        .collect();
    Ok((report, samples, marks))
}

/// Devices start at most `per_s` a second (`--start-rate`): a whole city handshaking at once
/// is a connection storm no real fleet produces (phones come online over minutes).
async fn pace_start(i: usize, per_s: usize, city: &City, started: usize) {
    const BATCH: usize = 100;
    if i > 0 && i.is_multiple_of(BATCH) {
        tokio::time::sleep(Duration::from_millis((1_000 * BATCH / per_s.max(1)) as u64)).await;
        // Closed loop: at most MAX_CONNECTING devices handshaking at once, so the start-up
        // runs at what the machine can do instead of piling up handshakes that time out.
        let t0 = Instant::now();
        while started.saturating_sub(city.connected_per_dc(2).iter().sum()) > MAX_CONNECTING
            && t0.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Bare quinn set-ups of each kind (full, resumed) for the CPU baseline.
const BASELINE_SETUPS: usize = 400;

/// Most devices started and not yet connected while the city starts (see [`pace_start`]).
const MAX_CONNECTING: usize = 500;

/// Longest wait after the traffic window for every device to be connected again (at least
/// the devices' idle timeout plus [`SETTLE_MARGIN`]).
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// Time for an idle device to reconnect after its idle timeout fired.
const SETTLE_MARGIN: Duration = Duration::from_secs(15);

fn sleep_until(shared: &Shared, at_ms: u64) {
    let now = shared.now_ms();
    if at_ms > now {
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// The paths the `partition` scenario cuts: every rider's to dc1, every driver's to dc2.
struct Split {
    riders: Vec<lifeboat_chaos::ImpairHandle>,
    drivers: Vec<lifeboat_chaos::ImpairHandle>,
    dcs: Vec<std::net::SocketAddr>,
}

impl Split {
    fn cut(&self, on: bool) -> anyhow::Result<()> {
        let (Some(dc1), Some(dc2)) = (self.dcs.first(), self.dcs.get(1)) else {
            bail!("the partition scenario needs two datacenters");
        };
        for (handles, dc) in [(&self.riders, *dc1), (&self.drivers, *dc2)] {
            for h in handles {
                if on {
                    h.partition().cut(dc)?;
                } else {
                    h.partition().repair(dc);
                }
            }
        }
        Ok(())
    }
}

/// How long the `partition` scenario keeps the sites apart: longer than the restore grace
/// (10 s) a datacenter used to wait before taking a trip over on its own.
const SPLIT_MS: u64 = 15_000;

/// Traffic time the `partition` scenario keeps after the heal (the riders probe their way
/// home, backing off to 4 s, and the waiting ops commit there).
const AFTER_HEAL_MS: u64 = 12_000;

/// Datacenter faults of each scenario, at their times.
fn fault_script(
    kind: Kind,
    cluster: &Mutex<Cluster>,
    shared: &Shared,
    marks: &Mutex<Vec<Mark>>,
    split: &Split,
    kill_ms: u64,
    end_ms: u64,
) -> anyhow::Result<()> {
    let act = |label: &str, f: &dyn Fn(&mut Cluster) -> anyhow::Result<()>| -> anyhow::Result<()> {
        let mut c = cluster
            .lock()
            .map_err(|_| anyhow::anyhow!("cluster lock poisoned"))?;
        // The fault starts with the signal (devices may notice within a millisecond, from
        // the kernel's answer to their next packet), not once the action (a disk wipe
        // included) returns: a disconnect meanwhile is the fault's, not a false failover.
        let t = shared.now_ms();
        shared.in_fault_action.store(true, Ordering::Relaxed);
        if (label.starts_with("kill") || label.starts_with("split") || label.starts_with("drain"))
            && shared.kill_ms.load(Ordering::Relaxed) == u64::MAX
        {
            shared.kill_ms.store(t, Ordering::Relaxed);
        }
        let done = f(&mut c);
        for (i, up) in shared.dc_up.iter().enumerate() {
            up.store(c.is_up(i), Ordering::Relaxed);
        }
        shared.in_fault_action.store(false, Ordering::Relaxed);
        done?;
        if let Ok(mut m) = marks.lock() {
            m.push(Mark {
                t_s: t as f64 / 1000.0,
                label: label.to_string(),
            });
        }
        Ok(())
    };
    sleep_until(shared, kill_ms);
    match kind {
        Kind::Partition => {
            act("split: riders lose dc1, drivers dc2", &|_| split.cut(true))?;
            sleep_until(shared, (kill_ms + SPLIT_MS).min(end_ms));
            act("heal the split", &|_| split.cut(false))?;
        }
        Kind::Failover | Kind::Reinstall | Kind::OfflineDevice => {
            act("kill dc1 (disk lost)", &|c| Ok(c.kill(0, true)?))?;
        }
        Kind::Drain => {
            act("drain dc1 (SIGTERM: paced waves, then stop)", &|c| {
                Ok(c.terminate(0)?)
            })?;
        }
        Kind::Failback => {
            act("kill dc1", &|c| Ok(c.kill(0, false)?))?;
            let span = end_ms - kill_ms;
            sleep_until(shared, kill_ms + span * 2 / 5);
            act("restart dc1 (old disk)", &|c| Ok(c.start(0)?))?;
            sleep_until(shared, kill_ms + span / 2);
            act("kill dc2 (disk lost)", &|c| Ok(c.kill(1, true)?))?;
        }
        Kind::DoubleFailure => {
            act("kill dc1+dc2 (disks lost)", &|c| {
                c.kill(0, true)?;
                Ok(c.kill(1, true)?)
            })?;
            std::thread::sleep(Duration::from_secs(1));
            act("restart both empty", &|c| {
                c.start(0)?;
                Ok(c.start(1)?)
            })?;
        }
        Kind::Flapping => {
            // dc1 dies; later dc2 dies while dc1 is back on its old disk; and again.
            let step = (end_ms - kill_ms) / 6;
            for round in 0..2u64 {
                let base = kill_ms + round * 3 * step;
                sleep_until(shared, base);
                act("kill dc1", &|c| Ok(c.kill(0, false)?))?;
                sleep_until(shared, base + step);
                act("restart dc1", &|c| Ok(c.start(0)?))?;
                sleep_until(shared, base + step + step / 2);
                act("kill dc2", &|c| Ok(c.kill(1, false)?))?;
                sleep_until(shared, base + 2 * step + step / 2);
                act("restart dc2", &|c| Ok(c.start(1)?))?;
            }
        }
    }
    Ok(())
}
