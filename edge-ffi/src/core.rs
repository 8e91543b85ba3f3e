//! The FFI core: one embedded edge client with its own runtime, behind blocking calls.
//!
//! Threading model: a [`Core`] is `Send + Sync`; any app thread may call any method, also
//! concurrently. Each blocking call runs its work on the core's runtime (one worker thread,
//! named `lifeboat-edge`) and parks the calling thread until the work is done, its timeout
//! passes, or its [`CancelToken`] is cancelled. Nothing foreign ever runs on the runtime.
//! Calls must not be made from inside the core's own runtime (there is no way to get there
//! from the app: no callbacks).
//!
//! Life cycle: `start` -> (`pause` -> `resume`)* -> `shutdown` (or drop). `pause` stops the
//! client (closes the connection, releases the store) and keeps the runtime, the UDP socket,
//! the queued events and the store on disk; `resume` starts a client over the same store,
//! which uploads its digests and replays its outbox on connect, as after an app restart.
//! `rebind` moves the client to a new UDP socket (network change); QUIC connection migration
//! keeps the connection.
//!
//! Invariants: every wait is bounded (`timeout_ms` of the call, or the internal bounds
//! below); the state lock is never held across a wait; ops accepted before a timeout,
//! cancel or pause stay queued on the device and are committed exactly once later.

use crate::cancel::CancelToken;
use crate::error::LifeboatError;
use crate::events::{Event, EventQueue};
use crate::settings::Settings;
use crate::types::{CommitInfo, OpInfo, Point, Stats, TripAction, TripView};
use lifeboat_common::{DeviceId, OpId, SessionId, TripOp};
use lifeboat_edge::{EdgeClient, EdgeConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// Longest wait a caller may ask for (24 hours).
pub const MAX_WAIT_MS: u64 = 24 * 3600 * 1000;
/// How long `pause`/`shutdown` wait for the client to stop.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How long `resume` retries opening the store while the stopped client releases it.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

struct State {
    client: Option<EdgeClient>,
    forwarder: Option<JoinHandle<()>>,
    paused: bool,
    closed: bool,
}

/// One embedded edge client (see the module docs).
pub struct Core {
    rt: Option<tokio::runtime::Runtime>,
    cfg: EdgeConfig,
    endpoint: quinn::Endpoint,
    events: Arc<EventQueue>,
    state: Mutex<State>,
    /// Serialises pause, resume and shutdown.
    lifecycle: Mutex<()>,
}

fn wait_ms(timeout_ms: u64) -> Result<Duration, LifeboatError> {
    if timeout_ms == 0 || timeout_ms > MAX_WAIT_MS {
        return Err(LifeboatError::invalid(format!(
            "timeout must be 1..={MAX_WAIT_MS} ms, got {timeout_ms}"
        )));
    }
    Ok(Duration::from_millis(timeout_ms))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning means a panic elsewhere while holding the lock; every update under these
    // locks is a plain field assignment, so the data is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forward the client's events into the app's queue until the client stops.
fn spawn_forwarder(
    rt: &tokio::runtime::Runtime,
    client: &EdgeClient,
    events: Arc<EventQueue>,
) -> JoinHandle<()> {
    let mut rx = client.subscribe();
    rt.spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(ev) = Event::from_timed(e) {
                        events.push(ev);
                    }
                }
                Err(RecvError::Lagged(n)) => events.note_dropped(n),
                Err(RecvError::Closed) => break,
            }
        }
    })
}

impl Core {
    /// Validate the settings, open the store and start connecting (returns at once; watch
    /// for a `Connected` event or call [`Core::wait_connected`]).
    pub fn start(settings: &Settings) -> Result<Core, LifeboatError> {
        let mut cfg = settings.to_edge_config()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("lifeboat-edge")
            .enable_all()
            .build()
            .map_err(|e| LifeboatError::Runtime {
                detail: e.to_string(),
            })?;
        let endpoint = {
            let _inside = rt.enter();
            lifeboat_edge::client_endpoint(&cfg.datacenters)?
        };
        cfg.endpoint = Some(endpoint.clone());
        cfg.client_config = Some(Arc::new(lifeboat_edge::client_config(
            &cfg.ca_pem,
            cfg.keep_alive,
            cfg.idle_timeout,
        )?));
        let events = Arc::new(EventQueue::new(settings.event_queue as usize));
        let client = rt.block_on(EdgeClient::start(cfg.clone()))?;
        let forwarder = spawn_forwarder(&rt, &client, events.clone());
        Ok(Core {
            rt: Some(rt),
            cfg,
            endpoint,
            events,
            state: Mutex::new(State {
                client: Some(client),
                forwarder: Some(forwarder),
                paused: false,
                closed: false,
            }),
            lifecycle: Mutex::new(()),
        })
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime, LifeboatError> {
        self.rt.as_ref().ok_or(LifeboatError::Closed)
    }

    /// The running client, or why there is none.
    fn client(&self) -> Result<EdgeClient, LifeboatError> {
        let s = lock(&self.state);
        if s.closed {
            return Err(LifeboatError::Closed);
        }
        if s.paused {
            return Err(LifeboatError::Paused);
        }
        s.client.clone().ok_or(LifeboatError::Closed)
    }

    /// Queue `op` durably, then wait for its commit, bounded by `timeout_ms` and `cancel`.
    fn submit_op(
        &self,
        session: SessionId,
        op: TripOp,
        timeout_ms: u64,
        cancel: Option<&CancelToken>,
    ) -> Result<CommitInfo, LifeboatError> {
        let fut = self.submit_future(session, op, timeout_ms, cancel)?;
        self.rt()?.block_on(fut)
    }

    /// The work of a submit as a future for the core's runtime.
    fn submit_future(
        &self,
        session: SessionId,
        op: TripOp,
        timeout_ms: u64,
        cancel: Option<&CancelToken>,
    ) -> Result<
        impl std::future::Future<Output = Result<CommitInfo, LifeboatError>> + Send + 'static,
        LifeboatError,
    > {
        let timeout = wait_ms(timeout_ms)?;
        let cancelled_already = cancel.is_some_and(|c| c.is_cancelled());
        let cancelled = cancel.map(|c| c.cancelled());
        let client = self.client()?;
        let s = session.0;
        Ok(async move {
            if cancelled_already {
                return Err(LifeboatError::Cancelled {
                    session: s,
                    op_seq: 0,
                });
            }
            let seq = Arc::new(AtomicU64::new(0));
            let seen = seq.clone();
            let work = async move {
                let (id, done) = client.enqueue(session, op).await?;
                seen.store(id.seq, Ordering::SeqCst);
                let result = done.await.map_err(|_| LifeboatError::Closed)?;
                match result {
                    Ok(c) => Ok(CommitInfo::from(&c)),
                    Err(e) => Err(LifeboatError::Rejected {
                        session: id.session.0,
                        op_seq: id.seq,
                        detail: e.to_string(),
                    }),
                }
            };
            let cancel_wait = async move {
                match cancelled {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = work => r,
                _ = tokio::time::sleep(timeout) => Err(LifeboatError::Timeout {
                    session: s,
                    op_seq: seq.load(Ordering::SeqCst),
                    timeout_ms,
                }),
                _ = cancel_wait => Err(LifeboatError::Cancelled {
                    session: s,
                    op_seq: seq.load(Ordering::SeqCst),
                }),
            }
        })
    }

    /// Rider: request a trip (a new session with a fresh random id) and wait for its commit.
    pub fn request_trip(
        &self,
        pickup: Point,
        dropoff: Point,
        timeout_ms: u64,
        cancel: Option<&CancelToken>,
    ) -> Result<CommitInfo, LifeboatError> {
        let op = TripOp::Request {
            pickup: pickup.to_geo()?,
            dropoff: dropoff.to_geo()?,
        };
        self.submit_op(fresh_session(), op, timeout_ms, cancel)
    }

    /// An op on an existing trip; waits for its commit.
    pub fn submit(
        &self,
        session: u64,
        action: TripAction,
        timeout_ms: u64,
        cancel: Option<&CancelToken>,
    ) -> Result<CommitInfo, LifeboatError> {
        self.submit_op(SessionId(session), action.to_op()?, timeout_ms, cancel)
    }

    /// [`Core::submit`] as a task on the core's runtime: the returned handle can be awaited
    /// from any executor (UniFFI's async calls do so).
    pub fn spawn_submit(
        &self,
        session: u64,
        action: TripAction,
        timeout_ms: u64,
        cancel: Option<&CancelToken>,
    ) -> Result<JoinHandle<Result<CommitInfo, LifeboatError>>, LifeboatError> {
        let fut = self.submit_future(SessionId(session), action.to_op()?, timeout_ms, cancel)?;
        Ok(self.rt()?.spawn(fut))
    }

    /// Run a quick call to the client (bounded by [`STOP_WAIT`]).
    fn ask<T, F>(&self, f: impl FnOnce(EdgeClient) -> F) -> Result<T, LifeboatError>
    where
        F: std::future::Future<Output = Result<T, lifeboat_edge::EdgeError>>,
    {
        let client = self.client()?;
        self.rt()?.block_on(async {
            tokio::time::timeout(STOP_WAIT, f(client))
                .await
                .map_err(|_| LifeboatError::Runtime {
                    detail: "the client did not answer within 5 s".into(),
                })?
                .map_err(LifeboatError::from)
        })
    }

    fn op_id(&self, session: u64, op_seq: u64) -> OpId {
        OpId {
            session: SessionId(session),
            device: self.device(),
            seq: op_seq,
        }
    }

    fn device(&self) -> DeviceId {
        self.cfg.device
    }

    /// Queue an op and return at once with its id (state `Queued`): the op is on the
    /// device's disk. Its outcome arrives as an event and stays readable with
    /// [`Core::op_status`] until acknowledged.
    pub fn enqueue(&self, session: u64, action: TripAction) -> Result<OpInfo, LifeboatError> {
        let op = action.to_op()?;
        let sent = op.clone();
        let (id, _) = self.ask(|c| async move { c.enqueue(SessionId(session), sent).await })?;
        Ok(OpInfo::queued(id, &op))
    }

    /// Rider: queue a trip request (a new trip id) and return at once with the op's id.
    pub fn enqueue_request(&self, pickup: Point, dropoff: Point) -> Result<OpInfo, LifeboatError> {
        let op = TripOp::Request {
            pickup: pickup.to_geo()?,
            dropoff: dropoff.to_geo()?,
        };
        let sent = op.clone();
        let (id, _) = self.ask(|c| async move { c.enqueue(fresh_session(), sent).await })?;
        Ok(OpInfo::queued(id, &op))
    }

    /// Where op `session`/`op_seq` of this device stands.
    pub fn op_status(&self, session: u64, op_seq: u64) -> Result<OpInfo, LifeboatError> {
        let id = self.op_id(session, op_seq);
        let s = self.ask(|c| async move { c.op_status(id).await })?;
        Ok(OpInfo::from_status(id, &s))
    }

    /// The ops queued on the device and not decided yet (also those queued before a kill).
    pub fn queued_ops(&self) -> Result<Vec<OpInfo>, LifeboatError> {
        let list = self.ask(|c| async move { c.queued_ops().await })?;
        Ok(list
            .iter()
            .map(|(id, op)| OpInfo::queued(*id, op))
            .collect())
    }

    /// Decided outcomes not acknowledged yet, oldest first.
    pub fn outcomes(&self) -> Result<Vec<OpInfo>, LifeboatError> {
        let list = self.ask(|c| async move { c.outcomes().await })?;
        Ok(list.iter().map(OpInfo::decided).collect())
    }

    /// The app has handled op `session`/`op_seq`'s outcome: forget it. Returns whether an
    /// unacknowledged outcome was held.
    pub fn acknowledge(&self, session: u64, op_seq: u64) -> Result<bool, LifeboatError> {
        let id = self.op_id(session, op_seq);
        let n = self.ask(|c| async move { c.acknowledge(vec![id]).await })?;
        Ok(n > 0)
    }

    /// Driver: offer (or withdraw) this device for dispatch. Kept across pause/resume.
    pub fn set_available(&self, available: bool) -> Result<(), LifeboatError> {
        let client = self.client()?;
        self.rt()?.block_on(client.set_available(available))?;
        Ok(())
    }

    /// Every trip the device holds (active and finished).
    pub fn sessions(&self) -> Result<Vec<TripView>, LifeboatError> {
        let client = self.client()?;
        let list = self.rt()?.block_on(async {
            tokio::time::timeout(STOP_WAIT, client.sessions())
                .await
                .map_err(|_| LifeboatError::Runtime {
                    detail: "the client did not answer within 5 s".into(),
                })?
                .map_err(LifeboatError::from)
        })?;
        Ok(list.iter().map(TripView::from).collect())
    }

    /// One trip, if the device holds it.
    pub fn trip(&self, session: u64) -> Result<Option<TripView>, LifeboatError> {
        Ok(self.sessions()?.into_iter().find(|t| t.session == session))
    }

    /// The next event, waiting at most `timeout_ms` (0: do not wait). Works while paused.
    pub fn poll_event(&self, timeout_ms: u64) -> Result<Option<Event>, LifeboatError> {
        if timeout_ms > MAX_WAIT_MS {
            return Err(LifeboatError::invalid(format!(
                "timeout must be at most {MAX_WAIT_MS} ms"
            )));
        }
        Ok(self.events.poll(Duration::from_millis(timeout_ms)))
    }

    /// The datacenter serving the client now, if connected.
    pub fn connected_dc(&self) -> Option<u16> {
        self.client()
            .ok()
            .and_then(|c| c.connected_dc())
            .map(|d| d.0)
    }

    /// Wait (at most `timeout_ms`) until connected; the datacenter, or `None` on timeout.
    pub fn wait_connected(&self, timeout_ms: u64) -> Result<Option<u16>, LifeboatError> {
        let timeout = wait_ms(timeout_ms)?;
        let client = self.client()?;
        let dc = self.rt()?.block_on(client.wait_connected(timeout));
        Ok(dc.map(|d| d.0))
    }

    /// App goes to the background: stop the client (the connection closes, the store is
    /// released and stays on disk). Idempotent. Calls other than `poll_event`, `resume`,
    /// `rebind`, `stats` and `shutdown` return `Paused` until `resume`.
    pub fn pause(&self) -> Result<(), LifeboatError> {
        let _one = lock(&self.lifecycle);
        let (client, forwarder) = {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(LifeboatError::Closed);
            }
            if s.paused {
                return Ok(());
            }
            s.paused = true;
            (s.client.take(), s.forwarder.take())
        };
        self.stop(client, forwarder)
    }

    /// App back in the foreground: start the client again over the same store. It uploads
    /// its digests and replays queued ops on connect. Idempotent.
    pub fn resume(&self) -> Result<(), LifeboatError> {
        let _one = lock(&self.lifecycle);
        {
            let s = lock(&self.state);
            if s.closed {
                return Err(LifeboatError::Closed);
            }
            if !s.paused {
                return Ok(());
            }
        }
        let rt = self.rt()?;
        // The stopped client's store closes when its task ends, just after `pause` returned
        // at the latest; retry the open (bounded) in case it is still closing.
        let start = Instant::now();
        let client = loop {
            match rt.block_on(EdgeClient::start(self.cfg.clone())) {
                Ok(c) => break c,
                Err(lifeboat_edge::EdgeError::Store(e)) if start.elapsed() < REOPEN_WAIT => {
                    tracing::debug!(error = %e, "store still held by the paused client; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let forwarder = spawn_forwarder(rt, &client, self.events.clone());
        let mut s = lock(&self.state);
        s.client = Some(client);
        s.forwarder = Some(forwarder);
        s.paused = false;
        Ok(())
    }

    /// Whether the client is paused (between [`Core::pause`] and [`Core::resume`]).
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Network change: move the client to a new UDP socket (a new local port, and the new
    /// network's address). QUIC connection migration keeps the connection: no reconnect, no
    /// upload. Returns the new local address.
    pub fn rebind(&self) -> Result<String, LifeboatError> {
        let rt = self.rt()?;
        let _inside = rt.enter();
        let bind: SocketAddr = match self.endpoint.local_addr() {
            Ok(SocketAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            _ => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        };
        let socket = std::net::UdpSocket::bind(bind).map_err(|e| LifeboatError::Runtime {
            detail: format!("binding a new UDP socket: {e}"),
        })?;
        self.endpoint
            .rebind(socket)
            .map_err(|e| LifeboatError::Runtime {
                detail: format!("rebinding the QUIC endpoint: {e}"),
            })?;
        self.local_addr()
    }

    fn local_addr(&self) -> Result<String, LifeboatError> {
        self.endpoint
            .local_addr()
            .map(|a| a.to_string())
            .map_err(|e| LifeboatError::Runtime {
                detail: e.to_string(),
            })
    }

    /// Counters (zero while paused, except `events_dropped` and `local_addr`).
    pub fn stats(&self) -> Stats {
        let c = lock(&self.state).client.clone();
        let s = c.as_ref().map(|c| c.stats()).unwrap_or_default();
        Stats {
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            connects: s.connects,
            ops_committed: s.ops_committed,
            connected_dc: c.and_then(|c| c.connected_dc()).map(|d| d.0),
            events_dropped: self.events.dropped_total(),
            local_addr: self.local_addr().unwrap_or_default(),
        }
    }

    /// Stop for good (the store stays on disk). Idempotent; later calls return `Closed`.
    pub fn shutdown(&self) {
        let _one = lock(&self.lifecycle);
        let (client, forwarder) = {
            let mut s = lock(&self.state);
            if s.closed {
                return;
            }
            s.closed = true;
            (s.client.take(), s.forwarder.take())
        };
        let _ = self.stop(client, forwarder);
    }

    /// Shut a client down and wait (bounded) until its events are forwarded and its task,
    /// and with it the store, is gone.
    fn stop(
        &self,
        client: Option<EdgeClient>,
        forwarder: Option<JoinHandle<()>>,
    ) -> Result<(), LifeboatError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from inside a runtime (a drop on an async thread): cannot block here.
            if let Some(f) = forwarder {
                f.abort();
            }
            return Ok(());
        }
        let rt = self.rt()?;
        rt.block_on(async move {
            if let Some(c) = client {
                let _ = tokio::time::timeout(STOP_WAIT, c.shutdown()).await;
            }
            // The forwarder ends when the client's event channel closes, which happens when
            // the client's task (which owns the store) has ended.
            if let Some(f) = forwarder {
                let abort = f.abort_handle();
                if tokio::time::timeout(STOP_WAIT, f).await.is_err() {
                    abort.abort();
                }
            }
        });
        Ok(())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// A fresh random session id (odd, like the edge client's own).
fn fresh_session() -> SessionId {
    SessionId(rand::random::<u64>() | 1)
}
