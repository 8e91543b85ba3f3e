//! One device in a process of its own, for the end-to-end chaos tests: a real edge client
//! with its own sled store, driven over stdin, reporting on stdout (one JSON object a line;
//! the protocol is `lifeboat_tests::device_process::{Command, Report}`).
//!
//! ```text
//! lifeboat-chaos-device --device N --region DIR --store DIR --dc ADDR [--dc ADDR ..]
//!     [--available] [--idle-ms MS] [--keepalive-ms MS]
//! ```
//!
//! Each report is written and flushed only after what it reports happened, so a test that
//! SIGKILLs this process knows a lower bound of what the device did. The process exits when
//! its stdin closes (after shutting the client down) or when it is killed.
//!
//! Residual race: the client's events are subscribed right after `EdgeClient::start`
//! returns, with no await in between; an op replayed from the store could only be resolved
//! unreported if this thread were descheduled for several network round trips there.

#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use lifeboat_common::edge::EdgeEvent;
use lifeboat_common::DeviceId;
use lifeboat_edge::{ClientEvent, EdgeClient, EdgeConfig, StoreLocation};
use lifeboat_tests::device_process::{Command, Decided, Held, Report};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Commands buffered between the stdin reader and the client.
const COMMAND_QUEUE: usize = 256;

struct Args {
    device: u64,
    region: PathBuf,
    store: PathBuf,
    dcs: Vec<SocketAddr>,
    available: bool,
    idle_ms: u64,
    keepalive_ms: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        device: 0,
        region: PathBuf::new(),
        store: PathBuf::new(),
        dcs: Vec::new(),
        available: false,
        idle_ms: 3_000,
        keepalive_ms: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--available" {
            a.available = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => a.device = value.parse().context("--device")?,
            "--region" => a.region = value.into(),
            "--store" => a.store = value.into(),
            "--dc" => a.dcs.push(value.parse().context("--dc")?),
            "--idle-ms" => a.idle_ms = value.parse().context("--idle-ms")?,
            "--keepalive-ms" => a.keepalive_ms = value.parse().context("--keepalive-ms")?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.device == 0 || a.dcs.is_empty() {
        bail!("--device and at least one --dc are required");
    }
    Ok(a)
}

static OUT: Mutex<()> = Mutex::new(());

/// One report, written and flushed before returning.
fn report(r: &Report) {
    let Ok(line) = serde_json::to_string(r) else {
        return;
    };
    let _guard = OUT.lock();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    tracing_subscriber_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

/// The edge client logs through `tracing`; stderr goes to the device's log file.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .ok();
}

async fn run(a: Args) -> anyhow::Result<()> {
    let keyring = lifeboat_common::keyring::Keyring::load(
        &lifeboat_server::region::Region::keyring_path(&a.region),
    )?;
    let ca = std::fs::read(lifeboat_server::region::Region::ca_path(&a.region))?;
    let device = DeviceId(a.device);
    let mut cfg = EdgeConfig::new(
        device,
        keyring.device_token(device),
        a.dcs.clone(),
        ca,
        StoreLocation::Path(a.store.clone()),
    );
    cfg.available = a.available;
    cfg.idle_timeout = Duration::from_millis(a.idle_ms);
    cfg.keep_alive = Duration::from_millis(a.keepalive_ms);
    cfg.connect_timeout = Duration::from_millis(1_500);
    let client = EdgeClient::start(cfg).await?;
    let mut events = client.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await.map(|t| t.event) {
                Ok(ClientEvent::OpResolved { op, result }) => report(&Report::Resolved {
                    op,
                    ok: result.is_ok(),
                    version: result.ok().map(|c| c.version),
                }),
                Ok(ClientEvent::Session(EdgeEvent::Conflict { session, .. })) => {
                    report(&Report::Conflict { session })
                }
                Ok(ClientEvent::StoreFailed(error)) => report(&Report::StoreFailed { error }),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("event receiver lagged by {n}");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    report(&Report::Ready {
        sessions: client.sessions().await?.len(),
    });
    // Connections are reported by polling, not from the events: a first connection made
    // before `subscribe` ran would otherwise go unreported.
    {
        let client = client.clone();
        tokio::spawn(async move {
            let mut reported = None;
            loop {
                let now = client.connected_dc();
                if now != reported {
                    if let Some(dc) = now {
                        report(&Report::Connected { dc });
                    }
                    reported = now;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    // Commands from stdin on a thread of their own (blocking reads); EOF ends the process.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Command>(COMMAND_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            match serde_json::from_str::<Command>(&line) {
                Ok(cmd) => {
                    if tx.blocking_send(cmd).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("bad command {line:?}: {e}"),
            }
        }
    });
    while let Some(cmd) = rx.recv().await {
        let client = client.clone();
        match cmd {
            Command::Submit { tag, session, op } => {
                // Queued in the order the commands came (as an app's one thread would), so
                // a session's seqs follow the test's order; the waits run concurrently.
                let queued = client.enqueue(session, op).await;
                tokio::spawn(async move {
                    match queued {
                        Ok((op, done)) => {
                            report(&Report::Queued { tag, op });
                            match done.await {
                                Ok(Ok(c)) => report(&Report::Committed {
                                    tag,
                                    op: c.op,
                                    version: c.version,
                                    duplicate: c.duplicate,
                                }),
                                Ok(Err(e)) => report(&Report::Failed {
                                    tag,
                                    error: e.to_string(),
                                }),
                                Err(_) => report(&Report::Failed {
                                    tag,
                                    error: "the client stopped".into(),
                                }),
                            }
                        }
                        Err(e) => report(&Report::Failed {
                            tag,
                            error: e.to_string(),
                        }),
                    }
                });
            }
            Command::Sessions { tag } => {
                let list = client
                    .sessions()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| Held {
                        session: s.session,
                        version: s.version,
                        phase: s.view.phase,
                        location_updates: s.view.location_updates,
                        last_position: s.view.last_position,
                        finished: s.finished,
                        committed: s.committed,
                    })
                    .collect();
                report(&Report::Sessions { tag, list });
            }
            Command::Outcomes { tag } => {
                let queued = client.queued_ops().await.unwrap_or_default();
                let decided = client
                    .outcomes()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| Decided {
                        op: o.id,
                        body: o.op,
                        ok: o.result.is_ok(),
                        error: o.result.err().map(|e| e.to_string()),
                    })
                    .collect();
                report(&Report::Outcomes {
                    tag,
                    queued,
                    decided,
                });
            }
            Command::Acknowledge { tag, ops } => {
                let count = client.acknowledge(ops).await.unwrap_or(0);
                report(&Report::Acknowledged { tag, count });
            }
        }
    }
    client.shutdown().await;
    Ok(())
}
