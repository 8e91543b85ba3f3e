//! `lifeboat-sim`: the failover simulation harness.
//!
//! Starts two real datacenters (child processes) on loopback, a city of riders and drivers
//! as real edge clients over QUIC, runs trips through a scripted failure from the catalogue,
//! then verifies every device's ledger against the surviving datacenters' own stores.

#![forbid(unsafe_code)]

mod bench;
mod city;
mod cluster;
mod handshake_baseline;
mod ledger;
mod network;
mod report;
mod scenario;
mod svg;
mod verify;

use clap::{Parser, Subcommand, ValueEnum};
use lifeboat_common::datacenter::Durability;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lifeboat-sim",
    version,
    about = "Lifeboat failover simulation: a city of drivers and riders rides through a datacenter failure; the harness proves with numbers that nothing was lost."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios from the failure catalogue.
    #[command(flatten)]
    Scenario(ScenarioCmd),
    /// Throughput, latency and footprint of one datacenter beside a bare-QUIC baseline.
    Bench(bench::BenchOpts),
    #[command(name = "__bench-helper", hide = true)]
    BenchHelper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: run a datacenter (the `lifeboat-server` command line) in this process.
    #[command(name = "__datacenter", hide = true)]
    Datacenter {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ScenarioCmd {
    /// S1: the primary is SIGKILLed mid-traffic and its disk is lost; the backup restores
    /// every trip from the devices.
    Failover(Opts),
    /// S2: the primary dies (disk kept), traffic moves on at the backup, then the primary
    /// returns on its stale disk and the backup dies: nothing rolls back.
    Failback(Opts),
    /// S12: both datacenters die and restart with empty disks.
    DoubleFailure(Opts),
    /// S9: the datacenters die and return, alternately, several times (disks kept).
    Flapping(Opts),
    /// S6: the primary dies and 10% of riders reinstall the app (empty store) at the same
    /// time; their partner's copy restores the trip and the device re-syncs.
    Reinstall(Opts),
    /// S7: 10% of drivers are offline (a tunnel) through the whole failover and rejoin later.
    OfflineDevice(Opts),
    /// S13: both datacenters stay up; at `--kill-at` every rider loses dc1 and every driver
    /// dc2, for 15 s (longer than the old restore grace), while the trips go on. Only the
    /// anchors' side commits; the riders' ops wait, are told why, and commit after the heal.
    Partition(Opts),
    /// A planned failover: at `--kill-at` dc1 gets SIGTERM, moves its devices to dc2 in
    /// paced waves (the two phones of a trip together), then stops; reports the stall.
    Drain(Opts),
    /// Every scenario above, in turn.
    All(Opts),
}

#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// Number of trips (one rider each).
    #[arg(long, default_value_t = 1000)]
    trips: usize,
    /// Number of drivers (default: as many as trips).
    #[arg(long)]
    devices: Option<usize>,
    /// Seed for every random choice of the workload (printed; the same seed gives the same
    /// workload).
    #[arg(long)]
    seed: Option<u64>,
    /// When the first datacenter fault happens (seconds after the traffic starts).
    #[arg(long, default_value_t = 12.0)]
    kill_at: f64,
    /// Traffic duration in seconds (then the run drains and verifies).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// `async` or `edge-ack:K`.
    #[arg(long, default_value = "async")]
    durability: Durability,
    /// The devices' link: loss, delay, jitter, duplication, reordering.
    #[command(flatten)]
    network: network::NetworkOpts,
    /// Write the machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write report.md and SVG charts into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the run's working directory (stores, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// An idle device's QUIC idle timeout (ms; the edge client's default). Devices with an
    /// op in flight, in a session or offering themselves for dispatch detect a dead
    /// datacenter from that (`--detect-floor-ms`, `--session-probe-ms`).
    #[arg(long, default_value_t = 45_000)]
    idle_timeout_ms: u64,
    /// An idle device's QUIC keep-alive (ms; the edge client's default).
    #[arg(long, default_value_t = 15_000)]
    keep_alive_ms: u64,
    /// With an op in flight, give a silent datacenter up after this long (ms; or 8 RTTs if
    /// longer; the edge client's default).
    #[arg(long, default_value_t = 1_000)]
    detect_floor_ms: u64,
    /// In a session with nothing in flight, probe after this much silence (ms; the edge
    /// client's default).
    #[arg(long, default_value_t = 5_000)]
    session_probe_ms: u64,
    /// How many devices start (connect) per second: a whole city handshaking in the same
    /// instant is a storm no real fleet produces.
    #[arg(long, default_value_t = 2_000)]
    start_rate: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run the datacenters from this `lifeboat-server` binary instead of this executable's
    /// built-in copy of the server.
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench(opts) => bench::main(opts),
        Cmd::BenchHelper { args } => bench::helper(args),
        Cmd::Datacenter { args } => match lifeboat_server::cli::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("datacenter: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Scenario(s) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            let (names, opts): (Vec<scenario::Kind>, Opts) = match s {
                ScenarioCmd::Failover(o) => (vec![scenario::Kind::Failover], o),
                ScenarioCmd::Failback(o) => (vec![scenario::Kind::Failback], o),
                ScenarioCmd::DoubleFailure(o) => (vec![scenario::Kind::DoubleFailure], o),
                ScenarioCmd::Flapping(o) => (vec![scenario::Kind::Flapping], o),
                ScenarioCmd::Reinstall(o) => (vec![scenario::Kind::Reinstall], o),
                ScenarioCmd::OfflineDevice(o) => (vec![scenario::Kind::OfflineDevice], o),
                ScenarioCmd::Partition(o) => (vec![scenario::Kind::Partition], o),
                ScenarioCmd::Drain(o) => (vec![scenario::Kind::Drain], o),
                ScenarioCmd::All(o) => (scenario::Kind::value_variants().to_vec(), o),
            };
            match scenario::run_all(&names, &opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("lifeboat-sim: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
