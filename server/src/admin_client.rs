//! The `lifeboat-server admin` side of the admin API: one HTTP/1.1 request over loopback
//! TCP with the operator's token, bounded in time and size.
//!
//! Invariants: connecting, writing and reading each give up after [`TIMEOUT`]; at most
//! [`MAX_RESPONSE_BYTES`] of a response are read; a non-2xx answer is an error that carries
//! the status and the datacenter's own words.

use crate::admin::AdminToken;
use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Time allowed to connect, to write the request and to read the answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an answer read.
pub const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// `method path` at `addr` with the token; the body of a 2xx answer.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &AdminToken,
) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to the datacenter's HTTP address {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        token.secret()
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the answer has no HTTP status line")?;
    anyhow::ensure!(
        (200..300).contains(&status),
        "{method} {path}: HTTP {status}: {}",
        body.trim()
    );
    Ok(body.to_string())
}
