//! The accept loop: admission of new connections before any crypto is done.
//!
//! Invariants: a connection over `max_connections` or over its source address's share is
//! refused at once (QUIC `CONNECTION_REFUSED`, counted by limit); one over the handshakes in
//! progress waits in the bounded handshake queue ([`super::handshake_queue`]) and is
//! refused only when the queue is full or its wait runs out; a source address at its share
//! must first answer a retry, so a spoofed address cannot take a victim's slots.

use super::*;

use super::handshake_queue::{HandshakeQueue, Place, QueueBounds};
use crate::keyring_watch::KeyringWatch;
use crate::limits::{AddressLimiter, LimitCounters};
use lifeboat_common::limits::LimitKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The per-address limit at accept time: a slot, or the connection refused (or asked to
/// prove its address with a QUIC retry when the address is busy).
pub(super) fn admit_address(
    incoming: quinn::Incoming,
    per_addr: &Arc<AddressLimiter>,
    limit_hits: &LimitCounters,
    counters: &DriverCounters,
) -> Option<(quinn::Incoming, crate::limits::AddressSlot)> {
    let addr = incoming.remote_address();
    if per_addr.is_busy(addr) && !incoming.remote_address_validated() {
        // A spoofed source cannot answer a retry, so it cannot hold a victim's slots.
        if let Err(e) = incoming.retry() {
            e.into_incoming().refuse();
        }
        return None;
    }
    match per_addr.try_acquire(addr) {
        Some(slot) => Some((incoming, slot)),
        None => {
            counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            limit_hits.hit(LimitKind::ConnectionsPerAddress);
            incoming.refuse();
            None
        }
    }
}

/// A connection's turn to handshake: a slot now, or a place in the queue.
enum Turn {
    Now(tokio::sync::OwnedSemaphorePermit),
    Queued(Place),
}

impl Turn {
    /// The handshake slot, once there is one (`None`: the wait ran out).
    async fn taken(
        self,
        slots: Arc<tokio::sync::Semaphore>,
        wait: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self {
            Turn::Now(permit) => Some(permit),
            Turn::Queued(place) => {
                let permit = tokio::time::timeout(wait, slots.acquire_owned()).await;
                drop(place);
                permit.ok()?.ok()
            }
        }
    }
}

/// Accept connections on every endpoint until it closes, each admitted one in a task of its
/// own; the endpoints share the admission bounds (connections, per address, handshakes in
/// progress and the queue), so several endpoints admit no more than one would.
pub(super) fn spawn_accept(
    endpoints: Vec<quinn::Endpoint>,
    cfg: ServerConfig,
    core: Arc<super::gate::CoreGate>,
    keyring: Arc<KeyringWatch>,
    counters: Arc<DriverCounters>,
    limit_hits: Arc<LimitCounters>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next_conn = Arc::new(AtomicU64::new(1));
    let per_addr = AddressLimiter::new(&cfg.limits);
    let queue = HandshakeQueue::new(QueueBounds {
        capacity: cfg.handshake_queue,
        max_wait: cfg.handshake_queue_wait,
    });
    let handshakes = Arc::new(tokio::sync::Semaphore::new(if cfg.max_handshakes == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        cfg.max_handshakes
    }));
    let _ = counters
        .handshakes_per_endpoint
        .set((0..endpoints.len()).map(|_| AtomicU64::new(0)).collect());
    let mut loops = Vec::with_capacity(endpoints.len());
    for (index, endpoint) in endpoints.into_iter().enumerate() {
        let (next_conn, per_addr, queue, handshakes) = (
            next_conn.clone(),
            per_addr.clone(),
            queue.clone(),
            handshakes.clone(),
        );
        let (cfg, core, keyring, counters, limit_hits) = (
            cfg.clone(),
            core.clone(),
            keyring.clone(),
            counters.clone(),
            limit_hits.clone(),
        );
        loops.push(tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                if counters.connections.load(Ordering::Relaxed) >= cfg.max_connections {
                    counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                    limit_hits.hit(LimitKind::Connections);
                    incoming.refuse();
                    continue;
                }
                let Some(slot) = admit_address(incoming, &per_addr, &limit_hits, &counters) else {
                    continue;
                };
                let (incoming, slot) = slot;
                let turn = match handshakes.clone().try_acquire_owned() {
                    Ok(permit) => Turn::Now(permit),
                    Err(_) => match queue.join() {
                        Some(place) => Turn::Queued(place),
                        None => {
                            counters.refused_connections.fetch_add(1, Ordering::Relaxed);
                            limit_hits.hit(LimitKind::Handshakes);
                            incoming.refuse();
                            continue;
                        }
                    },
                };
                let handshakes = handshakes.clone();
                let wait = queue.bounds().max_wait;
                let conn_id = next_conn.fetch_add(1, Ordering::Relaxed);
                let ctx = ConnCtx {
                    conn_id,
                    endpoint: index,
                    core: core.clone(),
                    keyring: keyring.clone(),
                    counters: counters.clone(),
                    handshake: cfg.handshake_timeout,
                    standby: cfg.standby_timeout,
                    max_upload_frames: cfg.max_upload_frames,
                    conn_queue: cfg.conn_queue,
                    frames: cfg.limits.frame_limits(),
                    limits: cfg.limits.clone(),
                    limit_hits: limit_hits.clone(),
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let Some(handshake) = turn.taken(handshakes, wait).await else {
                        ctx.counters
                            .refused_connections
                            .fetch_add(1, Ordering::Relaxed);
                        ctx.limit_hits.hit(LimitKind::Handshakes);
                        incoming.refuse();
                        return;
                    };
                    ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = handle_conn(incoming, handshake, &ctx).await {
                        tracing::debug!(conn = ctx.conn_id, error = %e, "connection ended");
                    }
                    ctx.counters.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }));
    }
    loops
}
