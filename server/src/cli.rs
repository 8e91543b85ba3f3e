//! The `lifeboat-server` command line, as a library function so that other programs (the
//! simulation harness) can run the very same datacenter in a child process of their own.

use crate::region::Region;
use crate::store::UnreadableStore;
use crate::{Server, ServerConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeboat_common::datacenter::Durability;
use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DatacenterId, DeviceId};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lifeboat-server",
    version,
    about = "A Lifeboat datacenter: holds active sessions and seals a digest of every change to the session's edge devices.",
    long_about = "A Lifeboat datacenter. Devices connect over QUIC, upload the sealed digests they hold \
                  (restoring any session this datacenter lacks), submit ops, and receive a new sealed \
                  digest on every change. Run two with the same --region directory and different \
                  --dc ids to get a primary and a backup."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a datacenter.
    Serve(Box<ServeArgs>),
    /// Create a region directory (keyring, CA, server certificate) and print its paths.
    Init {
        /// Region directory to create.
        #[arg(long, default_value = "lifeboat-region")]
        region: PathBuf,
    },
    /// Print the credential (hex) a device needs to connect to this region.
    Credential {
        #[arg(long, default_value = "lifeboat-region")]
        region: PathBuf,
        /// Device id (a number).
        #[arg(long)]
        device: u64,
    },
    /// Manage the sealing keys of a region (S14: rotate without downtime).
    Keys {
        #[arg(long, default_value = "lifeboat-region")]
        region: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Write a fresh keyring (mode 0600) into the region directory; refuses to overwrite one.
    Generate,
    /// List key ids and which one is active.
    List,
    /// Add a new key and make it active; older keys still open digests. With several
    /// datacenters use `add`, copy the keyring everywhere, then `activate` (see SECURITY.md).
    Rotate,
    /// Add a new key that opens digests but does not seal yet (phase 1 of a rotation).
    Add,
    /// Make a key the one new seals use (phase 2 of a rotation).
    Activate { id: u32 },
    /// Remove an old key: digests sealed with it can no longer be opened.
    Retire { id: u32 },
    /// Withdraw a device's credential (a stolen phone); running datacenters refuse it and
    /// close its connection on their next keyring check.
    Revoke {
        #[arg(long)]
        device: u64,
    },
    /// Give a revoked device its credential back.
    Unrevoke {
        #[arg(long)]
        device: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Datacenter id: each datacenter of a region needs its own (1, 2, ...).
    #[arg(long, default_value_t = 1)]
    dc: u16,
    /// UDP address to listen on (QUIC). Port 0 picks a free port; the chosen address is printed.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Directory of this datacenter's sled store.
    #[arg(long, default_value = "lifeboat-dc1")]
    data_dir: PathBuf,
    /// Region directory (keyring, CA, certificate), shared by the region's datacenters.
    /// Created on first run if missing.
    #[arg(long, default_value = "lifeboat-region")]
    region: PathBuf,
    /// Refuse to start if the region directory is missing instead of creating it.
    #[arg(long)]
    no_create_region: bool,
    /// When a server-side change (dispatch) counts as committed: `async` (default: the
    /// business path never waits) or `edge-ack:K` (once K participants persisted it).
    #[arg(long, default_value = "async")]
    durability: Durability,
    /// Close connections idle for this long (ms).
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
    /// Time allowed for the QUIC handshake and the connect upload (ms).
    #[arg(long, default_value_t = 5_000)]
    handshake_timeout_ms: u64,
    /// sled page cache (bytes).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    cache_bytes: u64,
    /// Most QUIC handshakes in progress at once (0: no bound). More are refused at once, so
    /// that in a reconnect storm the datacenter completes handshakes at its capacity instead
    /// of starting all of them and finishing none before the devices give up.
    #[arg(long, default_value_t = 256)]
    max_handshakes: usize,
    /// UDP receive/send buffer to ask the kernel for (bytes; 0: system default). Thousands
    /// of devices reconnecting at once overflow the default buffer; the kernel caps the
    /// request at net.core.rmem_max / wmem_max (a warning says so).
    #[arg(long, default_value_t = 4 << 20)]
    udp_buffer_bytes: usize,
    /// Most simultaneous device connections.
    #[arg(long, default_value_t = 50_000)]
    max_connections: usize,
    /// Most sessions (active and tombstoned) held.
    #[arg(long, default_value_t = 1_000_000)]
    max_sessions: usize,
    /// Messages queued per connection before it counts as a slow consumer and is closed.
    #[arg(long, default_value_t = 1024)]
    conn_queue: usize,
    /// Most upload frames after `Hello` (each up to 64 digests) in one connect upload.
    #[arg(long, default_value_t = 16)]
    max_upload_frames: usize,
    /// Largest frame accepted from a device (bytes, at most 65536).
    #[arg(long, default_value_t = 65_536)]
    max_frame_bytes: usize,
    /// A frame whose first byte arrived must be complete within this (ms): slow senders are
    /// cut off.
    #[arg(long, default_value_t = 5_000)]
    frame_timeout_ms: u64,
    /// Most simultaneous connections from one IP address (0: unlimited). Loopback is exempt
    /// unless --limit-loopback.
    #[arg(long, default_value_t = 1_024)]
    max_conns_per_addr: usize,
    /// Apply --max-conns-per-addr to loopback addresses too.
    #[arg(long)]
    limit_loopback: bool,
    /// Most ops submitted and not yet answered on one connection; more get a retryable
    /// rejection.
    #[arg(long, default_value_t = 1_024)]
    max_inflight_ops: usize,
    /// A device in this many active sessions may not create another.
    #[arg(long, default_value_t = 16)]
    max_sessions_per_device: usize,
    /// Session creates per device per minute, also the burst (0: unlimited).
    #[arg(long, default_value_t = 10)]
    session_creates_per_minute: u32,
    /// Check the keyring file for changes this often (ms; 0: only on SIGHUP). A rotated or
    /// retired key takes effect without a restart.
    #[arg(long, default_value_t = 1_000)]
    keyring_poll_ms: u64,
    /// Write a JSON status snapshot to this file every 500 ms.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// What to do when the store in --data-dir cannot be opened or read (corrupt):
    /// `move-aside` (default) renames it to `<data-dir>.corrupt-<unix-ms>`, logs an error and
    /// starts empty, the sessions come back from the devices; `refuse` exits with an error
    /// and leaves it untouched. A store locked by another running process, or one this
    /// process may not open, is never moved aside.
    #[arg(long, default_value = "move-aside")]
    unreadable_store: UnreadableStore,
}

fn keyring_cmd(region: PathBuf, action: KeysAction) -> anyhow::Result<()> {
    let path = Region::keyring_path(&region);
    if let KeysAction::Generate = action {
        anyhow::ensure!(
            !path.exists(),
            "{} exists already; use `keys rotate` to add a key",
            path.display()
        );
        std::fs::create_dir_all(&region)
            .with_context(|| format!("creating {}", region.display()))?;
        Keyring::generate().save(&path)?;
        println!("wrote a new keyring to {}", path.display());
    }
    let mut k = Keyring::load(&path)?;
    match action {
        KeysAction::List | KeysAction::Generate => {}
        KeysAction::Rotate => {
            let id = k.rotate();
            k.save(&path)?;
            println!(
                "new active key {id}; running datacenters pick it up within --keyring-poll-ms \
                 (or at once on SIGHUP); copy the keyring to every datacenter of the region"
            );
        }
        KeysAction::Add => {
            let id = k.add();
            k.save(&path)?;
            println!("added key {id} (open-only); copy the keyring to every datacenter, then `keys activate {id}`");
        }
        KeysAction::Activate { id } => {
            k.activate(id)?;
            k.save(&path)?;
            println!("key {id} is active");
        }
        KeysAction::Retire { id } => {
            k.retire(id)?;
            k.save(&path)?;
            println!("retired key {id}");
        }
        KeysAction::Revoke { device } => {
            k.revoke(DeviceId(device));
            k.save(&path)?;
            println!("revoked device {device}");
        }
        KeysAction::Unrevoke { device } => {
            k.unrevoke(DeviceId(device));
            k.save(&path)?;
            println!("device {device} may connect again");
        }
    }
    for d in k.revoked() {
        println!("revoked device {}", d.0);
    }
    for id in k.key_ids() {
        let active = if id == k.active_key_id() {
            " (active)"
        } else {
            ""
        };
        println!("key {id}{active}");
    }
    Ok(())
}

/// Run the command line with these arguments (the first is the program name).
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .ok();
    match cli.cmd {
        Cmd::Init { region } => {
            Region::init(&region)
                .with_context(|| format!("creating region {}", region.display()))?;
            println!("region created in {}", region.display());
            println!("  keyring     {}", Region::keyring_path(&region).display());
            println!("  devices trust {}", Region::ca_path(&region).display());
            Ok(())
        }
        Cmd::Credential { region, device } => {
            let k = Keyring::load(&Region::keyring_path(&region))?;
            let token = k.device_token(DeviceId(device));
            println!(
                "{}",
                token.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            Ok(())
        }
        Cmd::Keys { region, action } => keyring_cmd(region, action),
        Cmd::Serve(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(serve(*a))
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = ServerConfig::new(DatacenterId(a.dc), a.listen, a.data_dir, a.region);
    cfg.create_region = !a.no_create_region;
    cfg.durability = a.durability;
    cfg.idle_timeout_ms = a.idle_timeout_ms;
    cfg.handshake_timeout_ms = a.handshake_timeout_ms;
    cfg.cache_bytes = a.cache_bytes;
    cfg.udp_buffer_bytes = a.udp_buffer_bytes;
    cfg.max_handshakes = a.max_handshakes;
    cfg.max_connections = a.max_connections;
    cfg.max_sessions = a.max_sessions;
    cfg.conn_queue = a.conn_queue;
    cfg.stats_file = a.stats_file;
    cfg.max_upload_frames = a.max_upload_frames;
    cfg.limits.max_frame_bytes = a.max_frame_bytes;
    cfg.limits.frame_timeout_ms = a.frame_timeout_ms;
    cfg.limits.max_conns_per_addr = a.max_conns_per_addr;
    cfg.limits.limit_loopback = a.limit_loopback;
    cfg.limits.max_inflight_ops = a.max_inflight_ops;
    cfg.max_sessions_per_device = a.max_sessions_per_device;
    cfg.session_creates_per_minute = a.session_creates_per_minute;
    cfg.keyring_poll_ms = a.keyring_poll_ms;
    cfg.unreadable_store = a.unreadable_store;
    anyhow::ensure!(
        (1..=lifeboat_common::wire::MAX_FRAME_BYTES).contains(&a.max_frame_bytes),
        "--max-frame-bytes must be between 1 and {}",
        lifeboat_common::wire::MAX_FRAME_BYTES
    );
    let region_dir = cfg.region_dir.clone();
    let data_dir = cfg.data_dir.clone();
    let server = Server::start(cfg.clone()).await?;
    if server.region_created {
        eprintln!(
            "created region {} (keyring, CA {}); devices trust the CA",
            region_dir.display(),
            Region::ca_path(&region_dir).display()
        );
    }
    if let Some(aside) = &server.moved_aside {
        eprintln!(
            "WARNING: the store in {} was unreadable; moved to {} and started empty \
             (sessions come back from the devices)",
            data_dir.display(),
            aside.display()
        );
    }
    // Tests and the harness wait for this exact line.
    println!(
        "lifeboat-server dc{} listening on {} (store {}, {} sessions loaded, durability {})",
        cfg.dc.0,
        server.local_addr,
        data_dir.display(),
        server.loaded_sessions,
        cfg.durability
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                // SIGHUP: reload the keyring now (key rotation without restart).
                let keys = server.keys.clone();
                let _ = tokio::task::spawn_blocking(move || keys.check_and_log(true)).await;
            }
        }
    }
    server.shutdown().await;
    eprintln!("lifeboat-server dc{} stopped cleanly", cfg.dc.0);
    Ok(())
}
