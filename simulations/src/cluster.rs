//! The simulated region: the testkit's cluster fixture with the harness's settings, and what
//! the harness reads of its datacenters while a run goes (status files, dispatch logs).
//!
//! The datacenters are real `lifeboat-server` processes: this very executable re-run with
//! the hidden `__datacenter` subcommand, which runs the `lifeboat_server::cli` code (so the
//! datacenters are always the same build as the harness), or a `lifeboat-server` binary
//! given with `--server-bin`. Either way each datacenter is a separate process with its own
//! sled store, killed with real signals.

use lifeboat_common::datacenter::Durability;
use lifeboat_common::SessionId;
use lifeboat_testkit::cluster::{Cluster, ClusterError, ClusterOptions, Launch};
use std::path::Path;

/// How the harness launches a datacenter: `--server-bin`, or this executable.
pub fn launch(server_bin: Option<&Path>) -> Launch {
    match server_bin {
        Some(p) => Launch::Binary(p.to_path_buf()),
        None => Launch::CurrentExe(vec!["__datacenter".into(), "lifeboat-server".into()]),
    }
}

/// How often the harness's datacenters run a shadow-restore sample (ms): ten a second, so a
/// default run judges a few hundred sessions before its kill (the server's default is one a
/// second).
pub const SHADOW_INTERVAL_MS: u64 = 100;

/// `n` datacenters in `dir` with the given durability, the server's default idle timeout
/// (60 s: above the devices' 15 s keep-alive), a shadow-restore sample every
/// [`SHADOW_INTERVAL_MS`] and a status file each (`dc<N>.status.json`).
pub fn harness_cluster(
    dir: &Path,
    n: u16,
    durability: Durability,
    server_bin: Option<&Path>,
) -> Result<Cluster, ClusterError> {
    let mut opts = ClusterOptions::new(n, launch(server_bin));
    opts.dir = Some(dir.to_path_buf());
    opts.log_filter = "warn,lifeboat::dispatch=debug".into();
    opts.extra_args = vec![
        "--durability".into(),
        durability.to_string(),
        "--shadow-interval-ms".into(),
        SHADOW_INTERVAL_MS.to_string(),
    ];
    let mut cluster = Cluster::with(opts)?;
    for (i, spec) in cluster.specs.iter_mut().enumerate() {
        let status = dir.join(format!("dc{}.status.json", i + 1));
        spec.extra_args
            .extend(["--stats-file".to_string(), status.display().to_string()]);
    }
    Ok(cluster)
}

/// Status snapshot a datacenter writes (the fields the harness reads).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct DcStatus {
    pub active_sessions: usize,
    /// QUIC handshakes completed there (full or resumed), and how many resumed.
    #[serde(default)]
    pub handshakes: u64,
    #[serde(default)]
    pub handshakes_resumed: u64,
    /// Connections handshaken that have not said `Hello` (devices' standby paths).
    #[serde(default)]
    pub standby_connections: usize,
    /// The core's counters (the harness reads the shadow restore's).
    #[serde(default)]
    pub core: lifeboat_common::datacenter::DcStats,
    /// The shadow restore's recent figures.
    #[serde(default)]
    pub shadow: lifeboat_server::shadow::ShadowStatus,
}

/// Datacenter `i`'s last status snapshot, if it runs and has written one.
pub fn status(cluster: &Cluster, i: usize) -> Option<DcStatus> {
    if !cluster.is_up(i) {
        return None;
    }
    let path = cluster.path().join(format!("dc{}.status.json", i + 1));
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Sessions the datacenter's log says it dispatched (server-side changes).
pub fn dispatched_sessions(cluster: &Cluster, i: usize) -> Vec<SessionId> {
    cluster
        .log(i)
        .lines()
        .filter(|l| l.contains("lifeboat::dispatch"))
        .filter_map(|l| {
            let rest = l.split("session=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok().map(SessionId)
        })
        .collect()
}
