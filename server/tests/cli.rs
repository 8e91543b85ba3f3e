//! The `lifeboat-server` command line, run as a user would. (Building this test also makes
//! `cargo test --workspace` rebuild the binary that the end-to-end tests start.)

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lifeboat-server"))
}

#[test]
fn init_creates_a_region_and_credentials_verify() {
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    let out = bin()
        .args(["init", "--region"])
        .arg(&region)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["keyring", "ca.pem", "server.pem", "server.key"] {
        assert!(region.join(f).exists(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(region.join("keyring"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keyring readable by others: {mode:o}");
    }
    let out = bin()
        .args(["credential", "--device", "42", "--region"])
        .arg(&region)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().len(), 64);
    let keyring = lifeboat_common::keyring::Keyring::load(&region.join("keyring")).unwrap();
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&token.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(keyring.verify_device(lifeboat_common::DeviceId(42), &bytes));
    assert!(!keyring.verify_device(lifeboat_common::DeviceId(43), &bytes));
}

#[test]
fn keys_rotate_and_refuse_to_retire_the_active_key() {
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    assert!(bin()
        .args(["init", "--region"])
        .arg(&region)
        .status()
        .unwrap()
        .success());
    let out = bin()
        .args(["keys", "--region"])
        .arg(&region)
        .arg("rotate")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("key 2 (active)"));
    let out = bin()
        .args(["keys", "--region"])
        .arg(&region)
        .args(["retire", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "retiring the active key must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("active"));
}

#[test]
fn missing_region_without_create_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-create-region",
            "--region",
        ])
        .arg(dir.path().join("nope"))
        .arg("--data-dir")
        .arg(dir.path().join("dc"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyring"));
}

/// Issue 14 (config): a real server started from a TOML file, with the environment and a
/// flag on top. The settings it runs with are the merged ones (its status file, written
/// where the file says, reports the listening address given by the flag), its log lines are
/// JSON as the environment asked, and `--print-config` shows the same merge.
#[test]
fn serve_runs_from_a_config_file_with_environment_and_flags_on_top() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("status.json");
    let config = dir.path().join("dc7.toml");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &config,
        format!(
            "dc = 7\nlisten = \"127.0.0.1:1\"\ndata_dir = {:?}\nregion = {:?}\nstats_file = {:?}\nmax_sessions = 123\n",
            dir.path().join("data"),
            dir.path().join("region"),
            stats
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let printed = bin()
        .args(["serve", "--print-config", "--config"])
        .arg(&config)
        .args(["--listen", &listen])
        .env("LIFEBOAT_SERVE_LOG_FORMAT", "json")
        .env("LIFEBOAT_SERVE_MAX_SESSIONS", "456")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(text.contains("dc = 7"), "from the file:\n{text}");
    assert!(
        text.contains(&format!("listen = \"{listen}\"")),
        "the flag wins:\n{text}"
    );
    assert!(
        text.contains("max_sessions = 456"),
        "the environment beats the file:\n{text}"
    );
    assert!(text.contains("log_format = \"json\""), "{text}");

    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &listen])
        .env("LIFEBOAT_SERVE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("dc7 listening on"), "{line}");
    assert!(line.contains(&listen), "{line}");
    let start = std::time::Instant::now();
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&stats) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                break v;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no status file"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status["dc"], 7);
    assert_eq!(status["listen"], listen.as_str());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let logs: Vec<&str> = stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!logs.is_empty(), "no JSON log lines:\n{stderr}");
    for l in &logs {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

/// An unknown key in the file, or a bad value in the environment, stops the server before it
/// starts, with the key and where it came from.
#[test]
fn serve_refuses_an_unknown_setting_naming_it_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dc.toml");
    std::fs::write(&config, "max_sesions = 10\n").unwrap();
    let out = bin()
        .args(["serve", "--print-config", "--config"])
        .arg(&config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`max_sesions`") && err.contains("dc.toml"),
        "{err}"
    );
    let out = bin()
        .args(["serve", "--print-config"])
        .env("LIFEBOAT_SERVE_DURABILITY", "sometimes")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`durability`") && err.contains("environment"),
        "{err}"
    );
}
