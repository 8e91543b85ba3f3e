//! The admin API, against a real `lifeboat-server` process on loopback: it refuses calls
//! without the operator's token, answers the token (status with the configured limits, a
//! session a real edge client created, a keyring reload), and a drain stops the datacenter
//! cleanly, as SIGTERM does. The calls go over real HTTP, raw and through
//! `lifeboat-server admin`.

use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DeviceId, GeoPoint};
use lifeboat_edge::store::StoreLocation;
use lifeboat_edge::{EdgeClient, EdgeConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lifeboat-server"))
}

/// One HTTP/1.1 request; the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// A datacenter started with an admin token; its QUIC and HTTP addresses.
fn start(dir: &Path, token: &Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = bin()
        .args([
            "serve",
            "--dc",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
        ])
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--region")
        .arg(dir.join("region"))
        .arg("--admin-token-file")
        .arg(token)
        .args(["--max-sessions", "321"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for l in &mut lines {
        out.read_line(l).unwrap();
    }
    let word_after = |line: &str, key: &str| -> String {
        let rest = line.split(key).nth(1).unwrap_or_else(|| panic!("{line}"));
        rest.split_whitespace().next().unwrap().to_string()
    };
    let quic: SocketAddr = word_after(&lines[0], "listening on ").parse().unwrap();
    let http_addr = word_after(&lines[1], "http://");
    let http_addr: SocketAddr = http_addr.trim_end_matches("/metrics,").parse().unwrap();
    (child, quic, http_addr)
}

fn admin_cli(http_addr: SocketAddr, token: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .args(["admin", "--addr", &http_addr.to_string(), "--token-file"])
        .arg(token)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_admin_api_answers_only_the_operators_token_and_a_drain_stops_the_datacenter() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let made = admin_cli("127.0.0.1:9".parse().unwrap(), &token_file, &["token"]);
    assert!(made.status.success(), "{made:?}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (mut child, quic, http_addr) = start(dir.path(), &token_file);

    // Refused: no token, another scheme, a wrong token; and nothing is answered.
    for auth in [
        None,
        Some(token.trim().to_string()),
        Some("Bearer nope".into()),
    ] {
        for (method, path) in [
            ("GET", "/admin/status"),
            ("GET", "/admin/session/1"),
            ("POST", "/admin/keyring/reload"),
            ("POST", "/admin/drain"),
        ] {
            let (code, body) = http(http_addr, method, path, auth.as_deref());
            assert_eq!(code, 401, "{method} {path} with {auth:?}: {body}");
            assert!(!body.contains("\"dc\""), "{body}");
        }
    }
    // The refused drain did not stop it.
    assert_eq!(http(http_addr, "GET", "/healthz", None).0, 200);

    // The token: status with the configured limits.
    let start_wait = Instant::now();
    let status = loop {
        let (code, body) = http(http_addr, "GET", "/admin/status", Some(&bearer));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !v["status"].is_null() {
            break v;
        }
        assert!(start_wait.elapsed() < Duration::from_secs(10), "no status");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["status"]["dc"], 1);
    assert_eq!(status["limits"]["max_sessions"], 321);

    // A real device creates a trip; the admin API shows its header.
    let keyring = Keyring::load(&dir.path().join("region").join("keyring")).unwrap();
    let ca = std::fs::read(dir.path().join("region").join("ca.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (session, version) = rt.block_on(async {
        let d = DeviceId(5);
        let cfg = EdgeConfig::new(
            d,
            keyring.device_token(d),
            vec![quic],
            ca,
            StoreLocation::Path(dir.path().join("rider")),
        );
        let client = EdgeClient::start(cfg).await.unwrap();
        let here = GeoPoint {
            lat_e6: 52_520_000,
            lon_e6: 13_405_000,
        };
        let (s, commit) = client.request_trip(here, here).await.unwrap();
        client.shutdown().await;
        (s, commit.version)
    });
    let out = admin_cli(http_addr, &token_file, &["session", &session.0.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["session"], session.0);
    assert_eq!(info["rider"], 5);
    assert_eq!(info["version"], version.to_string());
    assert_eq!(info["finished"], false);
    let (code, _) = http(http_addr, "GET", "/admin/session/77", Some(&bearer));
    assert_eq!(code, 404, "an unknown session");

    // Keyring reload, through the CLI.
    let out = admin_cli(http_addr, &token_file, &["reload-keyring"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("active_key"));

    // Drain: accepted, and the datacenter stops cleanly by itself.
    let out = admin_cli(http_addr, &token_file, &["drain"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the datacenter did not stop after a drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
}

#[test]
fn a_token_file_others_can_read_stops_the_server_before_it_starts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "t".repeat(64)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--region")
        .arg(dir.path().join("region"))
        .arg("--admin-token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by others"), "{stderr}");
}
