//! The core's state and the datacenter's own loop: [`Actor`] owns the [`DatacenterCore`],
//! the store and the connections' outboxes, and sits behind the core's lock
//! ([`CoreGate`]); each input is handled by the reader that read it, which writes to the
//! store first, then sends (the core's contract). [`serve`] runs the timers (core tick,
//! background store flush, drain waves, key changes), the status, the admin API and the
//! stop; the store's flush runs in the background from the tick (see [`crate::store`] for
//! why a crash before it loses nothing and issues no version twice).
//!
//! Invariants: a device has at most one connection here, and the core is told of a device's
//! connect and disconnect exactly when that connection is added or removed
//! ([`Actor::attach`], [`Actor::detach`]); a full output queue closes its connection (a slow
//! consumer), never grows; the timers take the same lock as the readers, in short turns,
//! and nothing in a turn waits (a finished flush is awaited outside the lock).

use super::gate::CoreGate;
use super::*;

use crate::crash::CrashPoint;
use crate::keyring_watch::KeyringWatch;
use crate::limits::LimitCounters;
use crate::store::DcStore;
use lifeboat_common::datacenter::{Connected, DcEvent};
use lifeboat_common::wire::{ClientMsg, OfferedCopy, OpOutcome, ProtocolError, ServerMsg};
use lifeboat_common::{DeviceId, Trip};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The longest a stop waits for its QUIC connections to drain.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) enum Input {
    Connect {
        conn_id: u64,
        device: DeviceId,
        available: bool,
        digests: Vec<OfferedCopy>,
        tx: Arc<super::outbox::Outbox>,
        conn: quinn::Connection,
    },
    Frame {
        device: DeviceId,
        msg: ClientMsg<Trip>,
        /// When the connection read it (the op latency runs from here).
        received: std::time::Instant,
    },
    Disconnect {
        conn_id: u64,
        device: DeviceId,
    },
}

/// A crash point that fired: the replies already written leave for `after`, then the
/// process aborts (see [`super::gate`]).
pub(super) struct PendingCrash {
    pub(super) name: &'static str,
    pub(super) after: Duration,
}

/// Where the status goes: the HTTP endpoints (if any listen) and the status file (if asked
/// for). Written outside the core's lock.
pub(super) struct StatusOut {
    pub(super) stats_file: Option<PathBuf>,
    /// The latest status for the HTTP endpoints (nobody may be listening).
    pub(super) status_tx: tokio::sync::watch::Sender<crate::http::Published>,
}

impl StatusOut {
    /// Whether anybody wants a status now.
    fn wanted(&self) -> bool {
        self.status_tx.receiver_count() > 0 || self.stats_file.is_some()
    }

    /// Publish one snapshot to both.
    fn publish(&self, status: Status) {
        if let Some(path) = &self.stats_file {
            let tmp = path.with_extension("tmp");
            let ok = serde_json::to_vec(&status)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = ok {
                tracing::warn!(error = %e, path = %path.display(), "could not write the status file");
            }
        }
        self.status_tx
            .send_replace(Some((std::time::Instant::now(), status)));
    }

    /// Take a snapshot under the lock (if anybody wants one) and publish it after.
    async fn refresh(&self, gate: &CoreGate) {
        if !self.wanted() {
            return;
        }
        let status = match gate.lock().await {
            Ok(actor) => actor.status(),
            Err(_) => return,
        };
        self.publish(status);
    }
}

/// The datacenter's own loop beside the readers: the timers (core tick, store flush, drain
/// waves, key changes), the status, the admin API and the stop. Each step is a short turn
/// under the core's lock ([`CoreGate`]); the readers hand their inputs in directly.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    cfg: ServerConfig,
    endpoints: Vec<quinn::Endpoint>,
    gate: Arc<CoreGate>,
    out: StatusOut,
    mut shutdown_rx: oneshot::Receiver<Stop>,
    mut admin_rx: mpsc::Receiver<crate::admin::AdminRequest>,
    keyring: Arc<KeyringWatch>,
    counters: Arc<DriverCounters>,
    limit_hits: Arc<LimitCounters>,
) {
    let accept = spawn_accept(
        endpoints.clone(),
        cfg.clone(),
        gate.clone(),
        keyring.clone(),
        counters,
        limit_hits,
    );
    let keyring_poll = cfg.keyring_poll.map(|every| keyring.spawn_poll(every));
    let mut keyring_seen = keyring.generation();

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_every = tokio::time::interval(Duration::from_millis(500));
    status_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            how = &mut shutdown_rx, if !stopping => {
                stopping = true;
                let to = match how {
                    Ok(Stop::Drain { to }) => to.or(cfg.drain_to),
                    Ok(Stop::Now) | Err(_) => break,
                };
                let Ok(mut actor) = gate.lock().await else { break };
                let now = gate.now_ms();
                if !actor.start_drain(&cfg.drain, to, now) {
                    break;
                }
            }
            _ = tick.tick() => {
                let (now, finished, crash) = {
                    let Ok(mut actor) = gate.lock().await else { break };
                    let now = gate.now_ms();
                    if let Some(k) = keyring.changed_since(&mut keyring_seen) {
                        actor.new_keyring(&k);
                    }
                    // The core's own timer: only when it has timed work due.
                    if actor.core.poll_timeout().is_some_and(|due| now >= due) {
                        actor.core.handle_tick(now);
                    }
                    actor.drain_wave(now);
                    let crash = actor.flush_effects();
                    (now, actor.take_finished_flush(), crash)
                };
                if let Some(crash) = crash {
                    crash.fire().await;
                }
                let took = match finished {
                    Some(done) => Some(
                        done.await
                            .map_err(|e| crate::store::StoreError::Flush(e.to_string()))
                            .and_then(|r| r),
                    ),
                    None => None,
                };
                let Ok(mut actor) = gate.lock().await else { break };
                if let Some(took) = took {
                    actor.flush_finished(took);
                }
                actor.start_flush_if_due();
                if actor.drain_over(now) {
                    break;
                }
            }
            _ = status_every.tick() => out.refresh(&gate).await,
            Some(req) = admin_rx.recv() => {
                let Ok(mut actor) = gate.lock().await else { break };
                actor.admin(req);
            }
            _ = gate.drain_over.notified() => {
                let Ok(mut actor) = gate.lock().await else { break };
                if actor.drain_over(gate.now_ms()) {
                    break;
                }
            }
        }
    }
    tracing::info!(dc = %cfg.dc, "shutting down");
    for a in &accept {
        a.abort();
    }
    if let Some(p) = keyring_poll {
        p.abort();
    }
    shut_down(&gate, &endpoints, &out).await;
}

/// How long a stop waits for its `ShuttingDown` notices to reach the devices before it
/// closes the endpoint.
const SHUTDOWN_NOTICE_WAIT: Duration = Duration::from_secs(1);

/// Stop: every device is told (`ShuttingDown`), the endpoint closes, the store is flushed
/// and the last status written; the readers' inputs are refused from here on.
async fn shut_down(gate: &CoreGate, endpoints: &[quinn::Endpoint], out: &StatusOut) {
    let mut told = Vec::new();
    let flushing = match gate.lock().await {
        Ok(mut actor) => {
            actor.stopped = true;
            for (_, (_, tx, conn)) in actor.conns.drain() {
                let _ = tx.try_send(ServerMsg::Error {
                    error: ProtocolError::ShuttingDown,
                });
                told.push(conn);
            }
            actor.flushing.take()
        }
        Err(_) => {
            tracing::error!("the core panicked: stopping without a final store flush");
            None
        }
    };
    // The endpoint's close drops what a connection has not yet had acknowledged: give the
    // `ShuttingDown` a bounded moment to get through (each device closes on reading it).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_NOTICE_WAIT;
    while told.iter().any(|c| c.close_reason().is_none()) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"shutdown");
    }
    if let Some(flushing) = flushing {
        let _ = flushing.await;
    }
    if let Ok(actor) = gate.lock().await {
        // Everything flushed, then the marker: the next run keeps this version slot.
        if let Err(e) = actor.store.mark_stopped_cleanly() {
            tracing::error!(error = %e, "store flush at shutdown failed");
        }
        let status = actor.status();
        drop(actor);
        out.publish(status);
    }
    // The close frames went out with `close`; this only waits for their retransmits.
    // A connection to a device that vanished would otherwise be held for the whole
    // idle timeout (60 s): a stop is bounded instead.
    let idle = async {
        for endpoint in endpoints {
            endpoint.wait_idle().await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_DRAIN, idle).await.is_err() {
        tracing::info!("stopping with connections still draining");
    }
}

pub(super) struct Actor {
    pub(super) core: Core,
    pub(super) store: DcStore,
    pub(super) conns: HashMap<DeviceId, (u64, Arc<super::outbox::Outbox>, quinn::Connection)>,
    pub(super) crash: Option<CrashPoint>,
    pub(super) applied_seen: u64,
    pub(super) counters: Arc<DriverCounters>,
    pub(super) listen: SocketAddr,
    pub(super) limit_hits: Arc<LimitCounters>,
    pub(super) keys: Arc<KeyringWatch>,
    /// When each op of the input being handled was read (cleared as it is answered).
    pub(super) ops_in_batch: Vec<std::time::Instant>,
    /// Op latency: frame read (any wait for the core's lock included) to reply queued, after
    /// the store write.
    pub(super) op_latency: crate::latency::Histogram,
    /// Store background flush time (see [`Actor::take_finished_flush`]).
    pub(super) flush_latency: crate::latency::Histogram,
    /// Something was written since the last background flush started.
    pub(super) unflushed: bool,
    /// The background flush in flight, if any.
    pub(super) flushing:
        Option<tokio::task::JoinHandle<Result<std::time::Duration, crate::store::StoreError>>>,
    /// Store faults for tests (`crash-points` builds only) and the batches written so far.
    pub(super) store_fault: Option<crate::crash::StoreFault>,
    pub(super) batches_written: u64,
    /// The shadow restore's recent samples and the devices named behind.
    pub(super) shadow: crate::shadow::ShadowWatch,
    /// A drain in progress (a planned failover), see [`super::drain`].
    pub(super) draining: Option<super::drain::Draining>,
    /// The stop began: inputs are refused (see [`super::gate`]).
    pub(super) stopped: bool,
    /// A crash point fired: nothing more is handled before the abort.
    pub(super) crashing: bool,
}

impl Actor {
    /// The ops of the input just handled are answered (their replies are queued): record
    /// each one's latency, from the frame read to now.
    pub(super) fn ops_answered(&mut self) {
        let now = std::time::Instant::now();
        for received in self.ops_in_batch.drain(..) {
            self.op_latency
                .record(now.saturating_duration_since(received));
        }
    }

    /// An operator's question (the admin API); answered at once from the core.
    fn admin(&mut self, req: crate::admin::AdminRequest) {
        match req {
            crate::admin::AdminRequest::Session(id, reply) => {
                let info = self
                    .core
                    .session(id)
                    .map(|(h, _)| crate::admin::SessionInfo {
                        session: id.0,
                        version: h.version.to_string(),
                        rider: h.rider.0,
                        driver: h.driver.map(|d| d.0),
                        finished: h.tombstone,
                        committed: self.core.is_confirmed(id),
                        key_id: self.core.sealed(id).map(|d| d.key_id),
                    });
                let _ = reply.send(info);
            }
        }
    }

    /// A new keyring took effect: a revoked device loses its open connection too.
    fn new_keyring(&mut self, k: &lifeboat_common::keyring::Keyring) {
        for d in k.revoked() {
            if let Some(conn) = self.detach(d, None) {
                conn.close(
                    1u32.into(),
                    ProtocolError::BadCredential.to_string().as_bytes(),
                );
            }
        }
        self.core.set_keyring(k.clone());
    }

    /// A device's connect upload arrived on connection `conn_id`: it replaces any earlier
    /// connection of the device (told so), and the core takes the upload.
    pub(super) fn attach(
        &mut self,
        now: u64,
        conn_id: u64,
        tx: Arc<super::outbox::Outbox>,
        conn: quinn::Connection,
        c: Connected,
    ) {
        if let Some((_, old, _)) = self.conns.insert(c.device, (conn_id, tx, conn)) {
            let _ = old.try_send(ServerMsg::Error {
                error: ProtocolError::Replaced,
            });
        }
        self.core
            .handle_connect(now, c.device, c.available, c.digests);
    }

    /// The device's connection is gone (only connection `conn_id` if given: a replaced
    /// connection that ends later changes nothing): the core is told, and the connection is
    /// returned for the caller to close if it wants.
    pub(super) fn detach(
        &mut self,
        device: DeviceId,
        conn_id: Option<u64>,
    ) -> Option<quinn::Connection> {
        let current = self.conns.get(&device)?;
        if conn_id.is_some_and(|id| id != current.0) {
            return None;
        }
        let (_, _, conn) = self.conns.remove(&device)?;
        self.core.handle_disconnect(device);
        Some(conn)
    }

    pub(super) fn handle(&mut self, now: u64, input: Input) {
        match input {
            Input::Connect {
                conn_id,
                device,
                available,
                digests,
                tx,
                conn,
            } => {
                if self.draining.is_some() {
                    self.refuse_while_draining(device, &tx, conn, now);
                    return;
                }
                self.attach(
                    now,
                    conn_id,
                    tx,
                    conn,
                    Connected {
                        device,
                        available,
                        digests,
                    },
                );
            }
            Input::Frame {
                device,
                msg,
                received,
            } => {
                if self.draining.as_ref().is_some_and(|d| d.told(device)) {
                    // Told to go: its ops are for the next datacenter.
                    return;
                }
                if matches!(msg, ClientMsg::Submit { .. } | ClientMsg::Resubmit { .. }) {
                    self.ops_in_batch.push(received);
                }
                // The connection task lets no Hello/Upload through after the connect upload.
                if let Err(e) = self.core.handle_message(now, device, msg) {
                    tracing::debug!(%device, error = %e, "message refused by the core");
                }
            }
            Input::Disconnect { conn_id, device } => {
                self.detach(device, Some(conn_id));
            }
        }
    }

    /// The effects of what the core just took: the store write first, then the sends. A
    /// crash point that fires here is returned for the caller to carry out outside the lock.
    pub(super) fn flush_effects(&mut self) -> Option<PendingCrash> {
        let fx = self.core.poll_effects();
        if fx.is_empty() {
            return None;
        }
        let applied_in_batch = fx
            .send
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m,
                    ServerMsg::OpResult {
                        outcome: OpOutcome::Applied,
                        ..
                    }
                )
            })
            .count() as u64;
        let crash_now = self.crash.filter(|c| {
            applied_in_batch > 0
                && self.applied_seen < c.nth()
                && self.applied_seen + applied_in_batch >= c.nth()
        });
        self.applied_seen += applied_in_batch;
        match crash_now {
            Some(CrashPoint::AfterApplyBeforeReply(_)) => {
                let _ = self.store.persist(&fx.persist);
                let _ = self.store.flush();
                eprintln!("CRASH POINT after-apply-before-reply reached: aborting");
                std::process::abort();
            }
            Some(CrashPoint::AfterReplyBeforePersist(_)) => {
                self.send_all(fx.send);
                self.crashing = true;
                return Some(PendingCrash {
                    name: "after-reply-before-persist",
                    after: Duration::from_millis(300),
                });
            }
            None => {}
        }
        if !fx.persist.is_empty() || !fx.forget.is_empty() {
            // One write for the whole batch; the flush follows in the background (see
            // `crate::store`: a crash before it costs the version slot, never a version
            // issued twice). Expired tombstones go after the restore floor that covers them.
            let floor_ms = self.core.restore_floor_ms();
            self.batches_written += 1;
            let injected = self
                .store_fault
                .filter(|f| f.fails(self.batches_written))
                .map(|_| crate::store::StoreError::Flush("injected (LIFEBOAT_STORE_FAULT)".into()));
            let r = injected.map_or_else(
                || {
                    self.store
                        .persist(&fx.persist)
                        .and_then(|()| self.store.forget(&fx.forget, floor_ms))
                },
                Err,
            );
            self.unflushed = true;
            if let Err(e) = r {
                // The devices still hold every digest; keep serving, but say it loudly.
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store write failed");
            }
        }
        self.send_all(fx.send);
        for e in fx.events {
            match e {
                // One line per server-side change, so that a harness can tell, after a kill,
                // which dispatches never reached a device (S5).
                DcEvent::Dispatched { session, driver } => tracing::debug!(
                    target: "lifeboat::dispatch",
                    session = session.0,
                    driver = driver.0,
                    "dispatched"
                ),
                DcEvent::ShadowSampled(sample) => self.shadow.record(sample),
                other => tracing::debug!(event = ?other, "core event"),
            }
        }
        None
    }

    /// The store's background flush, from the tick (at most one runs at a time): the one in
    /// flight, if it is done, for the caller to await outside the lock (it returns at once)
    /// and hand to [`Actor::flush_finished`].
    pub(super) fn take_finished_flush(
        &mut self,
    ) -> Option<tokio::task::JoinHandle<Result<std::time::Duration, crate::store::StoreError>>>
    {
        if self.flushing.as_ref().is_some_and(|f| f.is_finished()) {
            return self.flushing.take();
        }
        None
    }

    /// A background flush ended: its time, or its error (counted and logged).
    pub(super) fn flush_finished(
        &mut self,
        r: Result<std::time::Duration, crate::store::StoreError>,
    ) {
        match r {
            Ok(took) => self.flush_latency.record(took),
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store flush failed");
            }
        }
    }

    /// Start the next background flush if anything was written since the last one started
    /// and none is in flight.
    pub(super) fn start_flush_if_due(&mut self) {
        if self.flushing.is_none() && self.unflushed {
            self.unflushed = false;
            self.flushing = Some(self.store.start_flush());
        }
    }

    pub(super) fn send_all(&mut self, sends: Vec<(DeviceId, Msg)>) {
        for (device, msg) in sends {
            let Some((_, tx, _)) = self.conns.get(&device) else {
                continue;
            };
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(super::outbox::OutboxError::Full) => {
                    self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%device, "slow consumer: output queue full, closing its connection");
                    if let Some(conn) = self.detach(device, None) {
                        conn.close(2u32.into(), b"slow consumer");
                    }
                }
                Err(super::outbox::OutboxError::Closed) => {
                    self.detach(device, None);
                }
            }
        }
    }

    pub(super) fn status(&self) -> Status {
        let c = &self.counters;
        Status {
            dc: self.core.config().dc.0,
            listen: self.listen.to_string(),
            sessions: self.core.session_count(),
            active_sessions: self.core.active_session_count(),
            tombstones: self.core.tombstone_count(),
            restore_floor_ms: self.core.restore_floor_ms(),
            connections: self.conns.len(),
            standby_connections: c.standby.load(Ordering::Relaxed),
            refused_connections: c.refused_connections.load(Ordering::Relaxed),
            bad_credentials: c.bad_credentials.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
            handshakes: c.handshakes.load(Ordering::Relaxed),
            handshakes_resumed: c.tickets.resumed.load(Ordering::Relaxed),
            handshakes_per_endpoint: c
                .handshakes_per_endpoint
                .get()
                .map(|v| v.iter().map(|n| n.load(Ordering::Relaxed)).collect())
                .unwrap_or_default(),
            tickets_issued: c.tickets.issued.load(Ordering::Relaxed),
            tickets_refused: c.tickets.refused.load(Ordering::Relaxed),
            drained_devices: c.drained.load(Ordering::Relaxed),
            core: self.core.stats().clone(),
            limits: self.limit_hits.snapshot(self.core.stats()),
            keyring: self.keys.status(self.core.active_sessions_by_key()),
            op_latency: self.op_latency.clone(),
            store_flush_latency: self.flush_latency.clone(),
            shadow: self.shadow.status(self.core.config().shadow_interval_ms),
        }
    }
}
