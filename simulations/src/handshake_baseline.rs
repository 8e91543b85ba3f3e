//! A bare quinn connection set-up, full and resumed, measured in the same run as a failover,
//! so that the backup's CPU time per restored device can be read beside it on a noisy
//! machine (issue 13: at most 2x a bare resumed handshake).
//!
//! The server is the bench's echo helper (`__bench-helper echo`): its own process, so its CPU
//! time is read apart from `/proc`; the region's certificate, TLS 1.3, quinn's defaults, no
//! core, no store. One set-up is a QUIC handshake and one round trip on the one stream (the
//! echo's 8-byte hello and its 1-byte answer), which also gives the server's session tickets
//! time to arrive before the client closes.
//!
//! - Full: a client with resumption off.
//! - Resumed: each of [`CONCURRENCY`] clients keeps its own ticket store, as a phone does,
//!   and resumes the session of its previous set-up. A store that counts the tickets it hands
//!   out says how many set-ups offered one ([`Baseline::resumed_offered`]): the figure is
//!   only a resumed one if that is all of them.
//!
//! Bounds: `count` set-ups of each kind, at most [`CONCURRENCY`] at once, each within
//! [`SETUP_TIMEOUT`].

use anyhow::Context;
use lifeboat_server::process::{DcProcess, DcSpawn};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set-ups at once.
pub const CONCURRENCY: usize = 16;
/// Bound on one set-up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The baseline's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baseline {
    /// Set-ups of each kind.
    pub count: usize,
    /// The echo server's CPU time (user + system) per full set-up, µs.
    pub full_cpu_us: f64,
    /// The same per resumed set-up, µs.
    pub resumed_cpu_us: f64,
    /// Resumed set-ups that offered a ticket (all of them, for the figure to count).
    pub resumed_offered: u64,
}

/// A ticket store that counts the tickets it hands out.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    taken: Arc<AtomicU64>,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(name);
        if t.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        t
    }
}

/// A quinn client configuration for the region CA, with its own ticket store (`Some`) or
/// with resumption off.
fn client(ca_pem: &[u8], store: Option<Arc<CountingStore>>) -> anyhow::Result<quinn::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("region CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.resumption = match store {
        Some(s) => Resumption::store(s),
        None => Resumption::disabled(),
    };
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// One set-up: handshake, the echo's hello and answer, close.
async fn set_up(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    tokio::time::timeout(SETUP_TIMEOUT, async {
        let conn = endpoint
            .connect_with(cfg.clone(), addr, "localhost")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        // Pair 0, role driver: the echo answers one byte and then reads requests.
        send.write_all(&[0u8; 8]).await?;
        let mut ack = [0u8; 1];
        recv.read_exact(&mut ack).await?;
        conn.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("set-up timed out")?
}

/// `count` set-ups by [`CONCURRENCY`] clients (each with its own configuration), and the
/// server's CPU time per set-up.
async fn batch(
    endpoint: &quinn::Endpoint,
    cfgs: &[quinn::ClientConfig],
    addr: SocketAddr,
    count: usize,
    server_pid: u32,
) -> anyhow::Result<f64> {
    let before = crate::bench::procfs::cpu_us(server_pid)?;
    let mut tasks = Vec::new();
    for (w, cfg) in cfgs.iter().enumerate() {
        let (endpoint, cfg) = (endpoint.clone(), cfg.clone());
        let n = count / cfgs.len() + usize::from(w < count % cfgs.len());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                set_up(&endpoint, &cfg, addr).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("set-up task")??;
    }
    let after = crate::bench::procfs::cpu_us(server_pid)?;
    Ok(after.saturating_sub(before) as f64 / count.max(1) as f64)
}

/// Run the baseline: start the echo helper of `exe` in `work` with the region at `region`,
/// `count` full set-ups, then `count` resumed ones, stop it.
pub async fn measure(
    exe: &Path,
    work: &Path,
    region: &Path,
    ca_pem: &[u8],
    count: usize,
) -> anyhow::Result<Baseline> {
    let mut spec = DcSpawn::on_loopback(exe.to_path_buf(), 9, work, region)?;
    spec.prefix_args = vec!["__bench-helper".to_string(), "echo".to_string()];
    spec.extra_args = vec![
        "--reply-bytes".into(),
        "64".into(),
        "--push-bytes".into(),
        "64".into(),
    ];
    spec.env = vec![("RUST_LOG".into(), "warn".into())];
    let server = DcProcess::spawn(spec).context("starting the echo server")?;
    let pid = server.pid().as_raw() as u32;
    let addr = server.addr;
    let result = async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let full_cfgs = (0..CONCURRENCY)
            .map(|_| client(ca_pem, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let offered = Arc::new(AtomicU64::new(0));
        let resumed_cfgs = (0..CONCURRENCY)
            .map(|_| {
                client(
                    ca_pem,
                    Some(Arc::new(CountingStore {
                        inner: ClientSessionMemoryCache::new(4),
                        taken: offered.clone(),
                    })),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Warm-up: each resuming client gets its first tickets (and the server its caches).
        batch(&endpoint, &resumed_cfgs, addr, CONCURRENCY, pid).await?;
        let full_cpu_us = batch(&endpoint, &full_cfgs, addr, count, pid).await?;
        let offered_before = offered.load(Ordering::Relaxed);
        let resumed_cpu_us = batch(&endpoint, &resumed_cfgs, addr, count, pid).await?;
        endpoint.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(Baseline {
            count,
            full_cpu_us,
            resumed_cpu_us,
            resumed_offered: offered.load(Ordering::Relaxed) - offered_before,
        })
    }
    .await;
    server.terminate().context("stopping the echo server")?;
    result
}
