//! `lifeboat-sim bench`: throughput, latency and footprint of one real datacenter, beside a
//! bare-QUIC baseline measured in the same run.
//!
//! One run, in this order (every phase bounded in time):
//! 1. a real `lifeboat-server` process on loopback (this executable's built-in copy, or
//!    `--server-bin`);
//! 2. `--devices` real edge clients over QUIC (half riders, half drivers: one trip each),
//!    connected (server RSS per connection), then every rider requests a trip and dispatch
//!    assigns a driver;
//! 3. closed loop: every driver submits location ops back to back; committed ops/s is the
//!    maximum rate;
//! 4. open loop at 25%, 50% and 100% of that maximum: paced sends, latency p50/p99/p999 from
//!    each op's scheduled time to its commit; then one more at each `--open-loop-rates` rate
//!    (to compare two builds at the same offered load);
//! 5. mobile bytes per op: the clients' QUIC connection statistics (UDP bytes, handshakes and
//!    keep-alives included) over every committed location op;
//! 6. server memory per session (RSS delta over `--footprint-sessions` trips, created by
//!    `--footprint-devices` loader devices) and an edge client's resident memory (one client
//!    in its own process). The loader creates far more sessions per device than the
//!    production create limits allow, so the datacenter of the whole run is started with
//!    `--max-sessions-per-device` and `--session-creates-per-minute` raised to the creates
//!    per loader device (see [`footprint::LoaderPlan`]; the run says so). No other limit is
//!    changed, and no phase before the loader creates more than one session per device;
//! 7. the bare quinn baseline (see [`echo`]) with the same message sizes, pattern and number
//!    of connections, after the Lifeboat server has stopped; the ratio of the two closed-loop
//!    rates is the headline.
//!
//! Both the devices and the datacenter share this machine's cores, as do the echo client and
//! server, so each rate is that of the whole system on this machine; the CPU time per op of
//! each server process is reported too, which tells the server's own cost apart.

pub mod echo;
pub mod fleet;
pub mod footprint;
pub mod procfs;

use anyhow::Context;
use clap::Parser;
use lifeboat_common::codec::encode_frame;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::samples::typical_trip;
use lifeboat_common::wire::ServerMsg;
use lifeboat_common::Trip;
use lifeboat_server::process::{DcProcess, DcSpawn};
use lifeboat_testkit::region::TestRegion;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `lifeboat-sim bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchOpts {
    /// Device connections: half drivers submitting location ops, half riders receiving the
    /// pushes (one trip per pair). The bare-QUIC baseline uses as many connections.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Seconds of each measured phase (closed loop, each open-loop rate, baseline).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of warm-up before the closed-loop phases, not measured.
    #[arg(long, default_value_t = 2.0)]
    warm_up: f64,
    /// Seed of the workload (positions, session ids, pacing offsets).
    #[arg(long)]
    seed: Option<u64>,
    /// Sessions created for the server-memory-per-session figure.
    #[arg(long, default_value_t = 10_000)]
    footprint_sessions: usize,
    /// Loader devices creating those sessions (more if one would create over 500). The
    /// datacenter's per-device create limits are raised to the creates per loader device.
    #[arg(long, default_value_t = footprint::LOADER_DEVICES)]
    footprint_devices: usize,
    /// Extra open-loop phases at these offered rates (ops/s, comma-separated), after the
    /// 25/50/100% ones: to compare two builds at the same load.
    #[arg(long, value_delimiter = ',')]
    open_loop_rates: Vec<f64>,
    /// Write the machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the datacenter from this `lifeboat-server` binary instead of this executable's
    /// built-in copy.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the working directory (stores, logs).
    #[arg(long)]
    keep: bool,
}

/// The hidden helper processes of the benchmark.
#[derive(clap::Parser, Debug)]
#[command(name = "__bench-helper")]
enum Helper {
    /// The bare-QUIC echo server.
    Echo(echo::EchoServerArgs),
    /// One edge client in a process of its own, for its resident memory.
    EdgeProbe(footprint::EdgeProbeArgs),
}

/// `lifeboat-sim __bench-helper ...`
pub fn helper(args: Vec<String>) -> ExitCode {
    init_tracing();
    let parsed = Helper::try_parse_from(std::iter::once("__bench-helper".to_string()).chain(args));
    let r = match parsed {
        Ok(Helper::Echo(a)) => echo::serve(a),
        Ok(Helper::EdgeProbe(a)) => footprint::edge_probe(a),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench helper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lifeboat-sim bench ...`
pub fn main(opts: BenchOpts) -> ExitCode {
    init_tracing();
    match run(&opts) {
        Ok(report) => {
            println!("{}", table(&report));
            if let Some(path) = &opts.json {
                let written = serde_json::to_vec_pretty(&report)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| std::fs::write(path, b).map_err(Into::into));
                if let Err(e) = written {
                    eprintln!("lifeboat-sim bench: writing {}: {e:#}", path.display());
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lifeboat-sim bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// The whole report (also the `--json` file).
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub seed: u64,
    pub devices: usize,
    pub trips: usize,
    pub duration_s: f64,
    pub cores: usize,
    pub load_avg_1m_start: f64,
    pub load_avg_1m_end: f64,
    pub sizes: echo::Sizes,
    pub server_rss_bytes_idle: u64,
    pub server_bytes_per_connection: f64,
    pub closed_loop: fleet::PhaseResult,
    pub open_loop: Vec<fleet::PhaseResult>,
    /// UDP bytes (QUIC included) of drivers and riders over every committed location op.
    pub mobile_bytes_per_op: f64,
    pub driver_bytes_per_op: f64,
    pub location_ops_committed: u64,
    pub server: footprint::ServerFootprint,
    pub edge: footprint::EdgeFootprint,
    pub digests: footprint::DigestSizes,
    pub echo: echo::EchoResult,
    /// Lifeboat's closed-loop rate over the bare echo's: the headline.
    pub ratio_lifeboat_to_echo: f64,
    pub server_cpu_ratio_lifeboat_to_echo: f64,
}

/// Frame sizes of a location op's `Submit`, its `OpResult` and the partner's `Push`.
fn message_sizes(keyring: &Keyring) -> anyhow::Result<echo::Sizes> {
    let sample = typical_trip();
    let digest = sample.seal(keyring)?;
    let (submit, result) = sample.hot_path(digest);
    let push: ServerMsg<Trip> = match &result {
        ServerMsg::OpResult {
            update: Some(update),
            ..
        } => ServerMsg::Push {
            update: update.clone(),
        },
        _ => anyhow::bail!("the sample's OpResult carries no update"),
    };
    Ok(echo::Sizes {
        request_bytes: encode_frame(&submit)?.len(),
        reply_bytes: encode_frame(&result)?.len(),
        push_bytes: encode_frame(&push)?.len(),
    })
}

fn spawn_spec(
    program: (PathBuf, Vec<String>),
    work: &Path,
    region: &Path,
    dc: u16,
    extra: Vec<String>,
) -> anyhow::Result<DcSpawn> {
    let mut spec = DcSpawn::on_loopback(program.0, dc, work, region)?;
    spec.prefix_args = program.1;
    spec.extra_args = extra;
    spec.env = vec![("RUST_LOG".into(), "warn".into())];
    Ok(spec)
}

fn run(opts: &BenchOpts) -> anyhow::Result<BenchReport> {
    if opts.devices < 2 {
        anyhow::bail!("--devices must be at least 2 (a rider and a driver)");
    }
    if !(opts.duration > 0.0 && opts.duration <= 600.0) {
        anyhow::bail!("--duration must be in (0, 600] seconds");
    }
    let seed = opts
        .seed
        .unwrap_or_else(|| rand::rng().random::<u32>() as u64);
    let trips = opts.devices / 2;
    let loader = footprint::LoaderPlan::new(opts.footprint_sessions, opts.footprint_devices)?;
    let duration = Duration::from_secs_f64(opts.duration);
    let warm_up = Duration::from_secs_f64(opts.warm_up.clamp(0.0, 60.0));
    let load_start = procfs::load_avg_1m();
    eprintln!(
        "== bench: {} devices ({trips} trips), {} s per phase, seed {seed}, load {load_start:.2} \
         (replay: lifeboat-sim bench --devices {} --duration {} --seed {seed})",
        2 * trips,
        opts.duration,
        2 * trips,
        opts.duration
    );
    let work = tempfile::Builder::new()
        .prefix("lifeboat-bench-")
        .tempdir()?;
    let TestRegion {
        dir: region_dir,
        keyring,
        ca_pem,
    } = TestRegion::init(&work.path().join("region")).context("creating the region")?;
    let sizes = message_sizes(&keyring)?;
    let digests = footprint::digest_sizes(&keyring)?;
    let exe = std::env::current_exe().context("locating the sim executable")?;
    let server_program = crate::cluster::launch(opts.server_bin.as_deref()).program()?;
    // The server's default idle timeout (60 s): above the devices' 15 s keep-alive.
    let mut server_args = Vec::new();
    server_args.extend(loader.server_args());
    let spec = spawn_spec(server_program, work.path(), &region_dir, 1, server_args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let server = DcProcess::spawn(spec).context("starting the datacenter")?;
    let pid = server.pid().as_raw() as u32;
    let addr = server.addr;
    std::thread::sleep(Duration::from_millis(500));
    let server_rss_idle = procfs::rss_bytes(pid)?;
    eprintln!(
        "   datacenter up on {addr} with {} (raised from the production defaults: the \
         footprint loader creates up to {} sessions per device); other limits at their defaults",
        loader.server_args().join(" "),
        loader.creates_per_device
    );
    eprintln!("   starting {} devices", 2 * trips);
    let fleet = rt.block_on(fleet::Fleet::start(
        trips,
        work.path(),
        addr,
        &keyring,
        &ca_pem,
        seed,
        pid,
    ))?;
    let server_bytes_per_connection =
        fleet.rss_after_connect.saturating_sub(server_rss_idle) as f64 / (2 * trips) as f64;

    eprintln!(
        "   closed loop ({} s warm-up, {} s)",
        opts.warm_up, opts.duration
    );
    let closed = rt.block_on(fleet.closed_loop(warm_up, duration, pid, seed))?;
    eprintln!(
        "   max {:.0} ops/s, p99 {} us",
        closed.ops_per_s, closed.latency_us_p99
    );
    let mut open = Vec::new();
    if closed.ops_per_s > 0.0 {
        let fractions =
            [0.25, 0.5, 1.0].map(|f| (closed.ops_per_s * f, format!("{:.0}%", f * 100.0)));
        let fixed = opts
            .open_loop_rates
            .iter()
            .filter(|r| r.is_finite() && **r > 0.0)
            .map(|r| (*r, "fixed rate".to_string()));
        for (rate, what) in fractions.into_iter().chain(fixed) {
            eprintln!("   open loop at {what} ({rate:.0} ops/s)");
            let r = rt.block_on(fleet.open_loop(rate, duration, pid, seed ^ 0x0BE7))?;
            eprintln!(
                "     p50 {} us, p99 {} us",
                r.latency_us_p50, r.latency_us_p99
            );
            open.push(r);
        }
    }
    let endpoints = fleet.endpoints.clone();
    let client_cfg = fleet.client_cfg.clone();
    // Drivers commit nothing but location ops (the riders made the requests).
    let location_ops: u64 = fleet
        .trips
        .iter()
        .map(|t| t.driver.stats().ops_committed)
        .sum();
    let (driver_bytes, rider_bytes) = rt.block_on(fleet.shutdown())?;

    eprintln!(
        "   server memory over {} sessions ({} loader devices, up to {} creates each)",
        loader.sessions, loader.devices, loader.creates_per_device
    );
    let server_fp = rt.block_on(footprint::server_per_session(
        addr,
        &endpoints[0],
        &client_cfg,
        &keyring,
        pid,
        loader,
    ))?;
    eprintln!("   edge client probe");
    let edge = footprint::run_edge_probe(addr, &region_dir, &work.path().join("probe-store"))?;
    server.terminate().context("stopping the datacenter")?;

    eprintln!("   bare quinn echo ({} connections)", 2 * trips);
    let echo_spec = spawn_spec(
        (exe, vec!["__bench-helper".to_string(), "echo".to_string()]),
        work.path(),
        &region_dir,
        2,
        vec![
            "--reply-bytes".into(),
            sizes.reply_bytes.to_string(),
            "--push-bytes".into(),
            sizes.push_bytes.to_string(),
            "--idle-timeout-ms".into(),
            "30000".into(),
        ],
    )?;
    // Same TLS and endpoints as the devices, but a lenient idle timeout: the baseline is not
    // about failure detection, and on a busy shared machine a 3 s timeout can drop an idle
    // connection before its pair starts.
    let echo_cfg =
        lifeboat_edge::client_config(&ca_pem, Duration::from_secs(1), Duration::from_secs(30))?;
    let echo_server = DcProcess::spawn(echo_spec).context("starting the echo server")?;
    let echo_pid = echo_server.pid().as_raw() as u32;
    let echo = rt.block_on(echo::run_closed_loop(
        echo_server.addr,
        &endpoints,
        &echo_cfg,
        trips,
        sizes,
        warm_up,
        duration,
        echo_pid,
    ))?;
    echo_server
        .terminate()
        .context("stopping the echo server")?;
    rt.shutdown_timeout(Duration::from_secs(5));
    if opts.keep {
        let kept = work.keep();
        eprintln!("   kept {}", kept.display());
    }
    Ok(BenchReport {
        seed,
        devices: 2 * trips,
        trips,
        duration_s: opts.duration,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg_1m_start: load_start,
        load_avg_1m_end: procfs::load_avg_1m(),
        sizes,
        server_rss_bytes_idle: server_rss_idle,
        server_bytes_per_connection,
        ratio_lifeboat_to_echo: closed.ops_per_s / echo.ops_per_s.max(f64::MIN_POSITIVE),
        server_cpu_ratio_lifeboat_to_echo: closed.server_cpu_us_per_op
            / echo.server_cpu_us_per_op.max(f64::MIN_POSITIVE),
        closed_loop: closed,
        open_loop: open,
        mobile_bytes_per_op: (driver_bytes + rider_bytes) as f64 / location_ops.max(1) as f64,
        driver_bytes_per_op: driver_bytes as f64 / location_ops.max(1) as f64,
        location_ops_committed: location_ops,
        server: server_fp,
        edge,
        digests,
        echo,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The human-readable summary, with each target from the mission brief.
pub fn table(r: &BenchReport) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String, t: &str| {
        out.push_str(&format!("{k:<44}{v:<34} {t}\n"));
    };
    row(
        "devices / trips / phase",
        format!("{} / {} / {} s", r.devices, r.trips, r.duration_s),
        "",
    );
    row(
        "machine cores, load 1m start / end",
        format!(
            "{}, {:.2} / {:.2}",
            r.cores, r.load_avg_1m_start, r.load_avg_1m_end
        ),
        "",
    );
    row(
        "frames Submit / OpResult / Push",
        format!(
            "{} / {} / {} bytes",
            r.sizes.request_bytes, r.sizes.reply_bytes, r.sizes.push_bytes
        ),
        "",
    );
    let c = &r.closed_loop;
    row(
        "Lifeboat max committed ops/s (closed)",
        format!("{:.0}", c.ops_per_s),
        &format!("target 50000: {}", verdict(c.ops_per_s >= 50_000.0)),
    );
    row(
        "  closed-loop latency p50/p99/p999",
        format!(
            "{} / {} / {} us",
            c.latency_us_p50, c.latency_us_p99, c.latency_us_p999
        ),
        "",
    );
    row(
        "  server / harness CPU per op",
        format!(
            "{:.1} / {:.1} us",
            c.server_cpu_us_per_op, c.harness_cpu_us_per_op
        ),
        "",
    );
    let labels = ["25%", "50%", "100%"]
        .into_iter()
        .chain(std::iter::repeat("fixed"));
    for (p, f) in r.open_loop.iter().zip(labels) {
        let target = if f == "50%" {
            format!("target p99 < 5 ms: {}", verdict(p.latency_us_p99 < 5_000))
        } else {
            String::new()
        };
        row(
            &format!("open loop {f} ({:.0} ops/s offered)", p.target_ops_per_s),
            format!(
                "{:.0}/s p50/p99/p999 {}/{}/{} us",
                p.ops_per_s, p.latency_us_p50, p.latency_us_p99, p.latency_us_p999
            ),
            &target,
        );
    }
    let e = &r.echo;
    row(
        "bare quinn echo ops/s (closed)",
        format!("{:.0}", e.ops_per_s),
        "",
    );
    row(
        "  echo latency p50/p99/p999",
        format!(
            "{} / {} / {} us",
            e.latency_us_p50, e.latency_us_p99, e.latency_us_p999
        ),
        "",
    );
    row(
        "  echo server CPU per op",
        format!("{:.1} us", e.server_cpu_us_per_op),
        "",
    );
    row(
        "RATIO Lifeboat / bare echo (rate)",
        format!("{:.3}", r.ratio_lifeboat_to_echo),
        "",
    );
    row(
        "  server CPU per op, Lifeboat / echo",
        format!("{:.2}", r.server_cpu_ratio_lifeboat_to_echo),
        "",
    );
    row(
        "mobile bytes per op (both devices, QUIC)",
        format!(
            "{:.0} (driver {:.0}, echo {:.0})",
            r.mobile_bytes_per_op, r.driver_bytes_per_op, e.udp_bytes_per_op
        ),
        "",
    );
    row(
        "server memory per session",
        format!(
            "{:.0} bytes over {}",
            r.server.server_bytes_per_session, r.server.sessions_created
        ),
        &format!(
            "target 4096: {}",
            verdict(r.server.server_bytes_per_session <= 4096.0)
        ),
    );
    let l = &r.server.loader;
    row(
        "  footprint loader (raised create limits)",
        format!(
            "{} devices, --max-sessions-per-device {} --session-creates-per-minute {}",
            l.devices, l.max_sessions_per_device, l.session_creates_per_minute
        ),
        "",
    );
    row(
        "server memory per connected device",
        format!("{:.0} bytes", r.server_bytes_per_connection),
        "",
    );
    row(
        "edge client resident (process total)",
        format!(
            "{:.2} MiB ({:.2} MiB)",
            r.edge.edge_client_rss_bytes as f64 / 1048576.0,
            r.edge.process_rss_bytes_after as f64 / 1048576.0
        ),
        &format!(
            "target 8 MiB: {}",
            verdict(r.edge.edge_client_rss_bytes <= 8 * 1024 * 1024)
        ),
    );
    row(
        "edge store on disk",
        format!("{} bytes", r.edge.store_bytes_on_disk),
        "",
    );
    let d = &r.digests;
    row(
        "sealed digest typical / long",
        format!("{} / {} bytes", d.digest_bytes_typical, d.digest_bytes_long),
        &format!(
            "target 512: {}",
            verdict(d.digest_bytes_long <= 512 && d.digest_bytes_typical <= 512)
        ),
    );
    row(
        "sealing overhead typical / long",
        format!(
            "{} / {} bytes",
            d.sealing_overhead_bytes_typical, d.sealing_overhead_bytes_long
        ),
        &format!(
            "target 48: {}",
            verdict(d.sealing_overhead_bytes_long <= 48 && d.sealing_overhead_bytes_typical <= 48)
        ),
    );
    out
}
