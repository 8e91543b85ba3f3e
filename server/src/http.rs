//! The datacenter's HTTP endpoints, on their own (loopback by default) TCP address:
//!
//! - `GET /metrics`: the counters in the Prometheus text format ([`crate::metrics`]);
//! - `GET /healthz`: 200 while the process serves HTTP (alive);
//! - `GET /readyz`: 200 when the datacenter is ready, else 503 with the reasons: its actor
//!   published a status in the last [`STALE_AFTER`] (the store is open and loaded, the QUIC
//!   endpoint listening, the actor not stuck), the keyring's last reload did not fail, and no
//!   store write failed in the last [`STORE_ERROR_WINDOW`];
//! - `/admin/...`: the admin API, to the operator's token only ([`crate::admin`]).
//!
//! Invariants: at most [`MAX_CONNECTIONS`] HTTP connections at once (more are closed at
//! once); a request's head must arrive within 5 s and a connection lasts at most 10 s; the
//! endpoint only reads the latest status snapshot (written by the actor every 500 ms), never
//! the core, so a scrape cannot slow the datacenter down. It stops when the actor does.

use crate::admin::{AdminHandle, AdminRequest};
use crate::keyring_watch::KeyringWatch;
use crate::status::Status;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use lifeboat_common::SessionId;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A status older than this makes the datacenter not ready (the actor is stuck or gone).
pub const STALE_AFTER: Duration = Duration::from_secs(2);
/// A store write failure makes the datacenter not ready for this long.
pub const STORE_ERROR_WINDOW: Duration = Duration::from_secs(10);

/// What the actor publishes: its latest status, and when.
pub type Published = Option<(Instant, Status)>;

/// What the admin API needs beside the status (`None` in [`start`]: the API is off).
pub struct Admin {
    /// The token to admit, the actor's queue and the drain trigger.
    pub handle: AdminHandle,
    /// The keyring to reload on request.
    pub keys: Arc<KeyringWatch>,
    /// The configured limits, shown by `GET /admin/status`.
    pub limits: serde_json::Value,
}

struct State {
    status: watch::Receiver<Published>,
    admin: Option<Admin>,
    /// The store error count last seen, and when it last grew.
    store_errors: Mutex<(u64, Option<Instant>)>,
}

impl State {
    /// Why the datacenter is not ready (empty: ready).
    fn not_ready(&self, now: Instant) -> Vec<String> {
        let snap = self.status.borrow().clone();
        let Some((at, s)) = snap else {
            return vec!["no status yet (the datacenter is starting)".into()];
        };
        let mut why = Vec::new();
        if now.saturating_duration_since(at) > STALE_AFTER {
            why.push(format!(
                "the last status is {} ms old (the datacenter is stuck or stopping)",
                now.saturating_duration_since(at).as_millis()
            ));
        }
        if let Some(e) = &s.keyring.last_error {
            why.push(format!("the keyring's last reload failed: {e}"));
        }
        let mut seen = self.store_errors.lock().unwrap_or_else(|p| p.into_inner());
        if s.store_errors > seen.0 {
            *seen = (s.store_errors, Some(at));
        }
        if let Some(t) = seen.1 {
            if now.saturating_duration_since(t) < STORE_ERROR_WINDOW {
                why.push(format!(
                    "a store write failed {} ms ago ({} in all)",
                    now.saturating_duration_since(t).as_millis(),
                    seen.0
                ));
            }
        }
        why
    }
}

fn text(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

async fn route(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path().starts_with("/admin/") {
        return admin(state, req).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
    }
    let now = Instant::now();
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let why = state.not_ready(now);
            if why.is_empty() {
                text(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                let body = format!("not ready:\n{}\n", why.join("\n"));
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        "/metrics" => {
            let ready = state.not_ready(now).is_empty();
            let snap = state.status.borrow().clone();
            match snap {
                Some((_, s)) => text(
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::render(&s, ready),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "no status yet\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// The admin API (see [`crate::admin`]): 404 when it is off, 401 without the token.
async fn admin(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let Some(a) = &state.admin else {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "the admin API is off (no admin_token_file)\n".into(),
        );
    };
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !a.handle.token.admits(auth) {
        tracing::warn!(
            path = req.uri().path(),
            "admin call refused: no valid token"
        );
        let mut r = text(StatusCode::UNAUTHORIZED, PLAIN, "unauthorized\n".into());
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/admin/status") => {
            let snap = state.status.borrow().clone();
            let body = serde_json::json!({
                "status": snap.map(|(_, s)| s),
                "limits": a.limits,
            });
            json(StatusCode::OK, &body)
        }
        (&Method::GET, p) if p.starts_with("/admin/session/") => {
            let Ok(id) = p["/admin/session/".len()..].parse::<u64>() else {
                return text(
                    StatusCode::BAD_REQUEST,
                    PLAIN,
                    "session id: a number\n".into(),
                );
            };
            session(a, SessionId(id)).await
        }
        (&Method::POST, "/admin/keyring/reload") => {
            let keys = a.keys.clone();
            let _ = tokio::task::spawn_blocking(move || keys.check_and_log(true)).await;
            let status = a.keys.status(Default::default());
            match &status.last_error {
                None => json(StatusCode::OK, &status),
                Some(_) => json(StatusCode::UNPROCESSABLE_ENTITY, &status),
            }
        }
        (&Method::POST, "/admin/drain") => {
            let to = match drain_target(req.uri().query()) {
                Ok(to) => to,
                Err(msg) => return text(StatusCode::BAD_REQUEST, PLAIN, msg),
            };
            let target =
                to.map_or_else(|| "each device's next datacenter".into(), |a| a.to_string());
            tracing::warn!(to = %target, "admin: drain requested");
            a.handle.drain.request(to);
            text(
                StatusCode::ACCEPTED,
                PLAIN,
                format!("draining: devices move to {target} in paced waves, then the datacenter stops\n"),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "try GET /admin/status, GET /admin/session/<id>, POST /admin/keyring/reload or \
             POST /admin/drain\n"
                .into(),
        ),
    }
}

/// The drain target of `POST /admin/drain?to=ADDR` (no query: none); a typed refusal of
/// anything else.
fn drain_target(query: Option<&str>) -> Result<Option<SocketAddr>, String> {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    match q.strip_prefix("to=") {
        Some(addr) => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("drain: `to` must be a socket address (ip:port), not `{addr}`\n")),
        None => Err(format!(
            "drain: the only parameter is `to=ip:port`, not `{q}`\n"
        )),
    }
}

/// Ask the actor for one session, within a deadline (the actor is never waited on long).
async fn session(a: &Admin, id: SessionId) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if a.handle
        .actor
        .try_send(AdminRequest::Session(id, tx))
        .is_err()
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the datacenter is busy\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), rx).await {
        Ok(Ok(Some(info))) => json(StatusCode::OK, &info),
        Ok(Ok(None)) => text(StatusCode::NOT_FOUND, PLAIN, format!("no session {id}\n")),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "no answer from the datacenter\n".into(),
        ),
    }
}

fn json(code: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(body) {
        Ok(b) => text(code, JSON, b + "\n"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
    }
}

/// Bind `addr` and serve the endpoints until the actor's status channel closes. Returns the
/// address bound.
pub async fn start(
    addr: SocketAddr,
    status: watch::Receiver<Published>,
    admin: Option<Admin>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = Arc::new(State {
        status,
        admin,
        store_errors: Mutex::new((0, None)),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut closed = state.status.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                r = closed.changed() => {
                    if r.is_err() {
                        return; // the actor is gone
                    }
                    continue;
                }
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // too many at once: dropped (closed)
            };
            let state = state.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(route(&state, &req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .keep_alive(false)
                    .serve_connection(io, svc);
                let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}
