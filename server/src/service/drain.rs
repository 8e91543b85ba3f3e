//! The actor's side of a planned failover (drain; the waves are planned by
//! [`DrainPlan`]): tell each wave's devices where to go, tell any device that connects
//! meanwhile at once, process nothing more from a device once it was told, and say when the
//! drain is over (every device told and gone, or the bound reached).
//!
//! Invariants: a told device is detached from the core at once (its ops go to the next
//! datacenter, never half here); nothing a device uploads while the datacenter drains is
//! restored here; the drain is over only once every told device's connection has closed
//! (the device left, or its writer gave up after the order), never while an order may still
//! be in flight (the stop closes the endpoint, which would drop an order not yet
//! acknowledged, and the device would have to find out by itself); and it ends by its
//! deadline whatever the devices do.

use super::*;

use lifeboat_common::datacenter::{DrainConfig, DrainPlan};
use lifeboat_common::wire::ProtocolError;
use lifeboat_common::DeviceId;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

/// How a datacenter stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A planned failover: move the devices away in paced waves (to `to`, or the
    /// configured `drain_to`, or each device's next datacenter), then stop; at once if the
    /// configured drain bound is 0.
    Drain {
        /// Where to move the devices (`None`: the configured target, else each one's next).
        to: Option<SocketAddr>,
    },
    /// Stop now: every device is told the datacenter is shutting down, all at once.
    Now,
}

/// A drain in progress.
pub(super) struct Draining {
    plan: DrainPlan,
    to: Option<SocketAddr>,
    told: HashSet<DeviceId>,
    /// The connections of the told devices, until each has closed.
    leaving: Vec<quinn::Connection>,
    /// The end was logged.
    ended: bool,
}

impl Draining {
    /// Whether `device` was told to go (nothing more of it is processed here).
    pub(super) fn told(&self, device: DeviceId) -> bool {
        self.told.contains(&device)
    }

    /// The message telling a device, at `now_ms`, where to go.
    pub(super) fn order(&self, now_ms: u64) -> Msg {
        ServerMsg::Error {
            error: ProtocolError::Draining {
                to: self.to,
                back_after_ms: self.plan.back_after_ms(now_ms),
            },
        }
    }
}

impl Actor {
    /// Start a drain at `now_ms` (the first wave goes at once). False if there is nothing to
    /// drain (no device connected, or draining is off): stop now.
    pub(super) fn start_drain(
        &mut self,
        cfg: &DrainConfig,
        to: Option<SocketAddr>,
        now_ms: u64,
    ) -> bool {
        if cfg.within_ms == 0 || self.conns.is_empty() {
            return false;
        }
        let plan = DrainPlan::new(*cfg, self.core.connected_groups(), now_ms);
        tracing::warn!(
            devices = self.conns.len(),
            per_wave = plan.per_wave(),
            wave_ms = cfg.wave_ms,
            within_ms = cfg.within_ms,
            to = %to.map_or_else(|| "each device's next datacenter".to_string(), |a| a.to_string()),
            "draining: moving every device to the next datacenter in paced waves"
        );
        self.draining = Some(Draining {
            plan,
            to,
            told: HashSet::new(),
            leaving: Vec::new(),
            ended: false,
        });
        self.drain_wave(now_ms);
        true
    }

    /// Tell the devices of every wave due at `now_ms`, and forget the told connections that
    /// have closed (once per tick, not on every input: each look takes the connection's lock).
    pub(super) fn drain_wave(&mut self, now_ms: u64) {
        let Some(d) = self.draining.as_mut() else {
            return;
        };
        d.leaving.retain(|c| c.close_reason().is_none());
        let due = d.plan.due(now_ms);
        if due.is_empty() {
            return;
        }
        let order = d.order(now_ms);
        d.told.extend(due.iter().copied());
        let (mut sent, mut gone) = (0usize, 0usize);
        for device in &due {
            let device = *device;
            if let Some((_, tx, _)) = self.conns.get(&device) {
                match tx.try_send(order.clone()) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        tracing::warn!(%device, error = %e, "drain: the order could not be queued");
                    }
                }
                self.counters.drained.fetch_add(1, Ordering::Relaxed);
                // The core forgets the connection; nothing more the device sends is
                // processed here (see `Actor::handle`). The connection is watched until
                // it closes, so the stop cannot drop the order.
                if let Some(conn) = self.detach(device, None) {
                    if let Some(d) = self.draining.as_mut() {
                        d.leaving.push(conn);
                    }
                }
            } else {
                gone += 1;
            }
        }
        tracing::info!(
            told = sent,
            already_gone = gone,
            "drain wave: devices told where to go"
        );
        tracing::debug!(devices = ?due, "drain wave");
    }

    /// A device connected while the datacenter drains: told where to go before any
    /// `Welcome`, its upload left alone.
    pub(super) fn refuse_while_draining(
        &mut self,
        device: DeviceId,
        tx: &Arc<super::outbox::Outbox>,
        conn: quinn::Connection,
        now_ms: u64,
    ) {
        if let Some(d) = self.draining.as_mut() {
            d.told.insert(device);
            let _ = tx.try_send(d.order(now_ms));
            d.leaving.push(conn);
            self.counters.drained.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the drain is over at `now_ms`: every wave told and every device gone (no
    /// connection attached, every told one closed as of the last tick), or the bound
    /// reached.
    pub(super) fn drain_over(&mut self, now_ms: u64) -> bool {
        let attached = self.conns.len();
        self.draining.as_mut().is_some_and(|d| {
            let all_gone = d.plan.poll_timeout().is_none() && attached == 0 && d.leaving.is_empty();
            let over = all_gone || now_ms >= d.plan.deadline_ms();
            if over && !d.ended {
                d.ended = true;
                if all_gone {
                    tracing::info!(
                        told = d.told.len(),
                        "drain over: every device told and gone"
                    );
                } else {
                    tracing::warn!(
                        told = d.told.len(),
                        still_attached = attached,
                        told_not_gone = d.leaving.len(),
                        "drain bound reached: stopping with devices still connected"
                    );
                }
            }
            over
        })
    }
}
