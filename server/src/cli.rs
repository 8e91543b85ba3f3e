//! The `lifeboat-server` command line, as a library function so that other programs (the
//! simulation harness) can run the very same datacenter in a child process of their own.

use crate::region::Region;
use crate::settings::{LogFormat, ServeSettings};
use crate::{Server, Stop};
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use lifeboat_common::keyring::Keyring;
use lifeboat_common::DeviceId;
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
    /// Ask a running datacenter (its admin API, on its HTTP address; see docs/OPERATIONS.md).
    Admin(AdminArgs),
    /// Manage the sealing keys of a region (S14: rotate without downtime).
    Keys {
        #[arg(long, default_value = "lifeboat-region")]
        region: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The datacenter's HTTP address (its metrics_listen).
    #[arg(long, default_value = "127.0.0.1:5433")]
    addr: SocketAddr,
    /// The file with the admin token (the datacenter's admin_token_file).
    #[arg(long)]
    token_file: PathBuf,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Write a new random admin token to --token-file (mode 0600; never overwrites).
    Token,
    /// Counters, limit hits, keyring and the configured limits (JSON).
    Status,
    /// One session's header as the datacenter holds it (JSON).
    Session { id: u64 },
    /// Re-read the keyring file now (as SIGHUP does).
    ReloadKeyring,
    /// A planned failover, as SIGTERM does: move every device to the next datacenter in
    /// paced waves (the participants of a session together), then flush and stop.
    Drain {
        /// Move the devices there (one of the region's datacenters, as the devices list it);
        /// default: the configured `drain_to`, else each device's next datacenter.
        #[arg(long)]
        to: Option<SocketAddr>,
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

/// The flags of `serve`. Every setting is optional here: its default, shown by `--help`,
/// comes from [`ServeSettings::default`], and a flag given on the command line overrides
/// the config file and the environment (see [`crate::settings`]).
#[derive(clap::Args, serde::Serialize)]
struct ServeArgs {
    /// A TOML file with any of the settings below (keys as the flags, with `_` for `-`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the merged settings (defaults < --config < LIFEBOAT_SERVE_* < flags) as TOML
    /// and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Datacenter id: each datacenter of a region needs its own (1, 2, ...).
    #[arg(long)]
    dc: Option<u16>,
    /// UDP address to listen on (QUIC). Port 0 picks a free port; the chosen address is printed.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of this datacenter's sled store.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Region directory (keyring, CA, certificate), shared by the region's datacenters.
    /// Created on first run if missing.
    #[arg(long)]
    region: Option<PathBuf>,
    /// Refuse to start if the region directory is missing instead of creating it (the
    /// setting `create_region = false`).
    #[arg(long)]
    #[serde(skip)]
    no_create_region: bool,
    /// When a server-side change (dispatch) counts as committed: `async` (default: the
    /// business path never waits) or `edge-ack:K` (once K participants persisted it).
    #[arg(long)]
    durability: Option<String>,
    /// Close connections idle for this long (ms; default 60000, above the edge's 15 s
    /// keep-alive).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Time allowed for the QUIC handshake and the connect upload (ms).
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// How long a connection may wait after its handshake before it says `Hello`: a
    /// device's standby connection, its ready path for a failover (ms; default 600000).
    #[arg(long)]
    standby_timeout_ms: Option<u64>,
    /// sled page cache (bytes).
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Most QUIC handshakes in progress at once (0: no bound). More wait in the handshake
    /// queue, so that in a reconnect storm the datacenter completes handshakes at its
    /// capacity instead of starting all of them and finishing none before the devices give
    /// up.
    #[arg(long)]
    max_handshakes: Option<usize>,
    /// Most connections waiting for a handshake slot (default 8192; 0: refuse at once).
    #[arg(long)]
    handshake_queue: Option<usize>,
    /// Longest wait for a handshake slot before a refusal (ms; default 1500, below the
    /// devices' 2 s connect timeout).
    #[arg(long)]
    handshake_queue_wait_ms: Option<u64>,
    /// UDP receive/send buffer to ask the kernel for (bytes; 0: system default). Thousands
    /// of devices reconnecting at once overflow the default buffer; the kernel caps the
    /// request at net.core.rmem_max / wmem_max (a warning says so).
    #[arg(long)]
    udp_buffer_bytes: Option<usize>,
    /// QUIC endpoints serving the listen port (default 1; at most 64). More than one shares
    /// the port between as many UDP sockets (SO_REUSEPORT), so that handshakes and packets
    /// spread over several cores; a device whose address changes mid-connection may then
    /// have to reconnect (see BENCHMARKS.md).
    #[arg(long)]
    endpoints: Option<usize>,
    /// Most simultaneous device connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most sessions (active and tombstoned) held.
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Messages queued per connection before it counts as a slow consumer and is closed.
    #[arg(long)]
    conn_queue: Option<usize>,
    /// Most upload frames after `Hello` (each up to 64 digests) in one connect upload.
    #[arg(long)]
    max_upload_frames: Option<usize>,
    /// Largest frame accepted from a device (bytes, at most 65536).
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// A frame whose first byte arrived must be complete within this (ms): slow senders are
    /// cut off.
    #[arg(long)]
    frame_timeout_ms: Option<u64>,
    /// Most simultaneous connections from one IP address (0: unlimited). Loopback is exempt
    /// unless --limit-loopback.
    #[arg(long)]
    max_conns_per_addr: Option<usize>,
    /// Apply --max-conns-per-addr to loopback addresses too.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    limit_loopback: Option<bool>,
    /// Most ops submitted and not yet answered on one connection; more get a retryable
    /// rejection.
    #[arg(long)]
    max_inflight_ops: Option<usize>,
    /// A device in this many active sessions may not create another.
    #[arg(long)]
    max_sessions_per_device: Option<usize>,
    /// Session creates per device per minute, also the burst (0: unlimited).
    #[arg(long)]
    session_creates_per_minute: Option<u32>,
    /// The shadow restore samples one session this often: it asks the session's devices for
    /// the copies their stores hold and checks they would restore it (ms; 0: off).
    #[arg(long)]
    shadow_interval_ms: Option<u64>,
    /// Keep a finished session's tombstone this long; a copy of a session not held that is
    /// older is not restored (ms; 0: keep tombstones for ever). Idle sessions are resealed
    /// every quarter of it so their devices' copies stay restorable.
    #[arg(long)]
    tombstone_ttl_ms: Option<u64>,
    /// Most tombstones kept (0: no bound); beyond, the oldest go early (never before half
    /// the TTL).
    #[arg(long)]
    max_tombstones: Option<usize>,
    /// Check the keyring file for changes this often (ms; 0: only on SIGHUP). A rotated or
    /// retired key takes effect without a restart.
    #[arg(long)]
    keyring_poll_ms: Option<u64>,
    /// Write a JSON status snapshot to this file every 500 ms.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// What to do when the store in --data-dir cannot be opened or read (corrupt):
    /// `move-aside` (default) renames it to `<data-dir>.corrupt-<unix-ms>`, logs an error and
    /// starts empty, the sessions come back from the devices; `refuse` exits with an error
    /// and leaves it untouched. A store locked by another running process, or one this
    /// process may not open, is never moved aside.
    #[arg(long)]
    unreadable_store: Option<String>,
    /// Log lines on stderr: `text` or `json` (one object a line, with the span and event
    /// fields: session, device, ...).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Where to serve /metrics, /healthz and /readyz over HTTP: `auto` (127.0.0.1, the QUIC
    /// port + 1000), `off`, or an address (keep it on loopback or a private network).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A file holding the operator's bearer token for the admin API on the HTTP address
    /// (`lifeboat-server admin token --out FILE` makes one); none: the admin API is off.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// On SIGTERM or `admin drain`, move the devices to another datacenter within this
    /// bound before stopping (ms; 0: stop at once).
    #[arg(long)]
    drain_within_ms: Option<u64>,
    /// Devices a drain moves per second (waves every 100 ms; more if the bound needs it).
    #[arg(long)]
    drain_rate: Option<u32>,
    /// Where a drain moves the devices (an address from the devices' datacenter list);
    /// default: each device's next datacenter.
    #[arg(long)]
    drain_to: Option<SocketAddr>,
}

impl ServeArgs {
    /// The flags given on the command line, as a settings table (keys as in the file).
    fn given(&self) -> anyhow::Result<toml::Table> {
        let mut t = toml::Table::try_from(self).context("reading the flags")?;
        if self.no_create_region {
            t.insert("create_region".into(), toml::Value::Boolean(false));
        }
        Ok(t)
    }
}

/// `serve --help` shows the defaults of [`ServeSettings::default`] (the one place they live).
fn with_defaults_in_help(cmd: clap::Command) -> clap::Command {
    let Ok(defaults) = toml::Table::try_from(ServeSettings::default()) else {
        return cmd;
    };
    cmd.mut_subcommand("serve", |mut sub| {
        for (key, value) in defaults {
            let shown = match &value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if sub.get_arguments().any(|a| a.get_id() == key.as_str()) {
                sub = sub.mut_arg(key.as_str(), |a| {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    a.help(format!("{help} [default: {shown}]"))
                });
            }
        }
        sub
    })
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
    let matches = with_defaults_in_help(Cli::command()).get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches)?;
    let settings = match &cli.cmd {
        Cmd::Serve(a) => Some(ServeSettings::load(
            a.config.as_deref(),
            std::env::vars(),
            a.given()?,
        )?),
        _ => None,
    };
    init_logging(settings.as_ref().map_or(LogFormat::Text, |s| s.log_format));
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
        Cmd::Admin(a) => admin_cmd(a),
        Cmd::Serve(a) => {
            let settings = settings.context("serve settings")?;
            if a.print_config {
                print!("{}", settings.to_toml()?);
                return Ok(());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(serve(settings))
        }
    }
}

fn admin_cmd(a: AdminArgs) -> anyhow::Result<()> {
    use crate::admin::AdminToken;
    let (method, path) = match a.action {
        AdminAction::Token => {
            AdminToken::create(&a.token_file)?;
            println!(
                "admin token written to {} (mode 0600); give it to serve as admin_token_file",
                a.token_file.display()
            );
            return Ok(());
        }
        AdminAction::Status => ("GET", "/admin/status".to_string()),
        AdminAction::Session { id } => ("GET", format!("/admin/session/{id}")),
        AdminAction::ReloadKeyring => ("POST", "/admin/keyring/reload".to_string()),
        AdminAction::Drain { to: None } => ("POST", "/admin/drain".to_string()),
        AdminAction::Drain { to: Some(a) } => ("POST", format!("/admin/drain?to={a}")),
    };
    let token = AdminToken::load(&a.token_file)?;
    print!(
        "{}",
        crate::admin_client::call(a.addr, method, &path, &token)?
    );
    Ok(())
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`), as text or JSON.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    // Before the ready line: a supervisor that stops the server as soon as it said it is
    // ready gets a clean stop, not the default action of the signal.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let cfg = settings.server_config();
    let server = Server::start(cfg.clone()).await?;
    announce(&server, &cfg);
    // SIGTERM and Ctrl-C drain too (a planned failover), within the configured bound.
    let how = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Stop::Drain { to: None },
            _ = term.recv() => break Stop::Drain { to: None },
            to = server.drain_requested() => break Stop::Drain { to },
            _ = hup.recv() => {
                // SIGHUP: reload the keyring now (key rotation without restart).
                let keys = server.keys.clone();
                let _ = tokio::task::spawn_blocking(move || keys.check_and_log(true)).await;
            }
        }
    };
    server.stop(how).await;
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "lifeboat-server dc{} stopped cleanly",
            cfg.dc.0
        );
    }
    Ok(())
}

/// Say what the start did (a region created, a store moved aside) and print the ready lines
/// tests, the harness and supervisors wait for.
fn announce(server: &Server, cfg: &crate::ServerConfig) {
    let region_dir = &cfg.region_dir;
    let data_dir = &cfg.data_dir;
    if server.region_created {
        eprintln!(
            "created region {} (keyring, CA {}); devices trust the CA",
            region_dir.display(),
            Region::ca_path(region_dir).display()
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
    let mut ready = format!(
        "lifeboat-server dc{} listening on {} (store {}, {} sessions loaded, durability {})\n",
        cfg.dc.0,
        server.local_addr,
        data_dir.display(),
        server.loaded_sessions,
        cfg.durability
    );
    if let Some(m) = server.metrics_addr {
        ready.push_str(&format!(
            "lifeboat-server dc{} serves http://{m}/metrics, /healthz and /readyz\n",
            cfg.dc.0
        ));
    }
    // A closed stdout (a supervisor that read the ready line and went away) must not stop
    // the datacenter: `println!` would panic on the broken pipe.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = out.write_all(ready.as_bytes()).and_then(|()| out.flush());
    }
}
