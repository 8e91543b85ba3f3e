//! The admin API, against a real `lifeboat-server` process on loopback: it refuses calls
//! without the operator's token, answers the token (status with the configured limits, a
//! session a real edge client created, a keyring reload), and a drain stops the datacenter
//! cleanly, as SIGTERM does. The calls go over real HTTP, raw and through
//! `lifeboat-server admin`.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{bin, http, request_trip, start};

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
    let (mut child, quic, http_addr) = start(dir.path(), Some(&token_file));

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
    let (session, version) = request_trip(dir.path(), quic, 5);
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
