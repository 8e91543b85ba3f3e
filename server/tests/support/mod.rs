//! What the server's end-to-end tests share: the binary, a raw HTTP request, a datacenter
//! started on loopback, and a real edge client that creates a trip.
#![allow(dead_code)] // each test file uses a part

use lifeboat_common::keyring::Keyring;
use lifeboat_common::{DeviceId, GeoPoint, SessionId, VersionVector};
use lifeboat_edge::store::StoreLocation;
use lifeboat_edge::{EdgeClient, EdgeConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lifeboat-server"))
}

/// One HTTP/1.1 request; the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
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
pub fn start(dir: &Path, token: Option<&Path>) -> (Child, SocketAddr, SocketAddr) {
    start_with(dir, token, &[])
}

/// [`start`] with extra `serve` flags.
pub fn start_with(
    dir: &Path,
    token: Option<&Path>,
    extra: &[&str],
) -> (Child, SocketAddr, SocketAddr) {
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
        .args(["--max-sessions", "321"])
        .args(
            token
                .map(|t| ["--admin-token-file".as_ref(), t.as_os_str()])
                .into_iter()
                .flatten(),
        )
        .args(extra)
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

/// A real edge client (device `device`, with its own sled store under `dir`) connects to
/// `quic` and requests a trip; the trip and the version it was committed at.
pub fn request_trip(dir: &Path, quic: SocketAddr, device: u64) -> (SessionId, VersionVector) {
    let keyring = Keyring::load(&dir.join("region").join("keyring")).unwrap();
    let ca = std::fs::read(dir.join("region").join("ca.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = DeviceId(device);
        let cfg = EdgeConfig::new(
            d,
            keyring.device_token(d),
            vec![quic],
            ca,
            StoreLocation::Path(dir.join(format!("device-{device}"))),
        );
        let client = EdgeClient::start(cfg).await.unwrap();
        let here = GeoPoint {
            lat_e6: 52_520_000,
            lon_e6: 13_405_000,
        };
        let (s, commit) = client.request_trip(here, here).await.unwrap();
        client.shutdown().await;
        (s, commit.version)
    })
}
