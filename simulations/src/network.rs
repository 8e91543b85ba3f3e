//! The devices' mobile link: `--loss`, `--delay-ms`, `--jitter-ms`, `--duplicate`,
//! `--reorder` (`lifeboat-chaos` impairment under QUIC), applied to every device endpoint
//! shard in both directions, seeded from the run seed; and its counters for the report.
//!
//! With every flag at its default the devices use plain endpoints (no wrapper at all).

use lifeboat_chaos::{ImpairHandle, ImpairStats, Impairment};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct NetworkOpts {
    /// Packet loss probability (0..=1) on every device's link, each direction.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Added one-way delay (ms) on every device's link, each direction.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Extra one-way delay, uniform in 0..=jitter (ms); reorders datagrams as it goes.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Probability (0..=1) that a datagram is delivered twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Probability (0..=1) that a datagram is held back `--reorder-gap-ms` longer, so that
    /// later ones overtake it.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// How much longer a reordered datagram is held back (ms).
    #[arg(long, default_value_t = 40)]
    pub reorder_gap_ms: u64,
}

impl NetworkOpts {
    /// The impairment these flags ask for (validated), or `None` for a perfect link.
    pub fn impairment(&self) -> anyhow::Result<Option<Impairment>> {
        let imp = Impairment::none()
            .with_loss(self.loss)
            .with_duplicate(self.duplicate)
            .with_reorder(self.reorder, Duration::from_millis(self.reorder_gap_ms))
            .with_delay(
                Duration::from_millis(self.delay_ms),
                Duration::from_millis(self.jitter_ms),
            );
        imp.validate()?;
        Ok((!imp.is_none()).then_some(imp))
    }

    /// The flags as typed, to replay a run.
    pub fn args(&self) -> String {
        let mut s = String::new();
        if self.loss > 0.0 {
            s.push_str(&format!(" --loss {}", self.loss));
        }
        if self.delay_ms > 0 {
            s.push_str(&format!(" --delay-ms {}", self.delay_ms));
        }
        if self.jitter_ms > 0 {
            s.push_str(&format!(" --jitter-ms {}", self.jitter_ms));
        }
        if self.duplicate > 0.0 {
            s.push_str(&format!(" --duplicate {}", self.duplicate));
        }
        if self.reorder > 0.0 {
            s.push_str(&format!(
                " --reorder {} --reorder-gap-ms {}",
                self.reorder, self.reorder_gap_ms
            ));
        }
        s
    }
}

/// What the link did during a run (JSON field names are part of the report's contract).
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetworkReport {
    pub loss: f64,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    pub duplicate: f64,
    pub reorder: f64,
    pub reorder_gap_ms: u64,
    /// Datagrams that entered the impairment layer, both directions.
    pub datagrams: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
    /// Dropped because a delay queue was full (bounded per direction and endpoint).
    pub overflowed: u64,
    /// Lost to a socket error or an oversized datagram.
    pub errors: u64,
}

/// The impaired link of a run: builds the device endpoint shards and keeps their handles.
#[derive(Clone, Debug)]
pub struct Link {
    opts: NetworkOpts,
    impairment: Impairment,
    seed: u64,
    handles: Arc<Mutex<Vec<ImpairHandle>>>,
}

impl Link {
    /// `None` when the flags ask for a perfect link.
    pub fn new(opts: &NetworkOpts, seed: u64) -> anyhow::Result<Option<Link>> {
        Ok(opts.impairment()?.map(|impairment| Link {
            opts: opts.clone(),
            impairment,
            seed,
            handles: Arc::new(Mutex::new(Vec::new())),
        }))
    }

    /// A link that is wrapped even when every flag is at its default, so its paths can be
    /// cut (the `partition` scenario).
    pub fn cuttable(opts: &NetworkOpts, seed: u64) -> anyhow::Result<Link> {
        Ok(Link {
            opts: opts.clone(),
            impairment: opts.impairment()?.unwrap_or_else(Impairment::none),
            seed,
            handles: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// An impaired client endpoint for device shard `shard` (its RNG seeded from the run
    /// seed and the shard), on loopback when the datacenters are, with the handle that
    /// cuts its paths.
    pub fn endpoint(
        &self,
        datacenters: &[SocketAddr],
        shard: usize,
    ) -> anyhow::Result<(quinn::Endpoint, ImpairHandle)> {
        let ip: IpAddr = match datacenters.first() {
            Some(SocketAddr::V6(a)) if a.ip().is_loopback() => Ipv6Addr::LOCALHOST.into(),
            Some(SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
            Some(SocketAddr::V4(a)) if !a.ip().is_loopback() => Ipv4Addr::UNSPECIFIED.into(),
            _ => Ipv4Addr::LOCALHOST.into(),
        };
        let seed = self
            .seed
            .wrapping_add((shard as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (endpoint, handle) =
            lifeboat_chaos::client_endpoint(SocketAddr::new(ip, 0), self.impairment, seed)?;
        self.handles
            .lock()
            .map_err(|_| anyhow::anyhow!("link handles lock poisoned"))?
            .push(handle.clone());
        Ok((endpoint, handle))
    }

    /// The flags and every shard's counters added up.
    pub fn report(&self) -> NetworkReport {
        let stats: Vec<ImpairStats> = self
            .handles
            .lock()
            .map(|h| h.iter().map(|h| h.stats()).collect())
            .unwrap_or_default();
        let t = ImpairStats::sum(&stats).total();
        NetworkReport {
            loss: self.opts.loss,
            delay_ms: self.opts.delay_ms,
            jitter_ms: self.opts.jitter_ms,
            duplicate: self.opts.duplicate,
            reorder: self.opts.reorder,
            reorder_gap_ms: self.opts.reorder_gap_ms,
            datagrams: t.offered,
            dropped: t.dropped,
            duplicated: t.duplicated,
            delayed: t.delayed,
            reordered: t.reordered,
            overflowed: t.overflowed,
            errors: t.errors,
        }
    }
}

/// The terminal table's row for the link.
pub fn table_row(n: &NetworkReport) -> (String, String, &'static str) {
    let pct = |k: u64| 100.0 * k as f64 / n.datagrams.max(1) as f64;
    (
        "device link (each way)".into(),
        format!(
            "loss {} delay {}+{} ms dup {} reorder {}: {} datagrams, {} dropped ({:.1}%), {} duplicated, {} reordered, {} delayed, {} overflowed",
            n.loss,
            n.delay_ms,
            n.jitter_ms,
            n.duplicate,
            n.reorder,
            n.datagrams,
            n.dropped,
            pct(n.dropped),
            n.duplicated,
            n.reordered,
            n.delayed,
            n.overflowed
        ),
        "",
    )
}
