//! Dispatch: matching waiting sessions with available drivers (the server-side change).
//!
//! Invariants: a session is dispatched only while its rider is connected here; a driver is
//! offered to one session at a time and never to one it was removed from; the pool and the
//! waiting queue are validated lazily when popped and compacted so they stay bounded.

use super::*;

use crate::app::Application;
use crate::ids::DeviceId;
use crate::wire::UploadRefusal;
use std::collections::HashSet;

impl<A: Application> DatacenterCore<A> {
    /// Drop withdrawn drivers from the pool queue once they dominate it (C6: a driver
    /// toggling availability must not grow the queue).
    pub(super) fn compact_pool(&mut self) {
        if self.pool.len() > 2 * self.in_pool.len() + 64 {
            let mut seen = HashSet::new();
            let in_pool = &self.in_pool;
            self.pool.retain(|d| in_pool.contains(d) && seen.insert(*d));
        }
    }

    /// A driver offers itself for dispatch, or withdraws.
    pub fn handle_set_available(&mut self, now_ms: u64, device: DeviceId, available: bool) {
        self.clock(now_ms);
        if let Some(c) = self.connected.get_mut(&device) {
            c.available = available;
        }
        if available {
            self.offer_driver(device);
            self.dispatch(now_ms);
        } else {
            self.in_pool.remove(&device);
            self.compact_pool();
        }
    }

    pub(super) fn offer_driver(&mut self, device: DeviceId) {
        if self.in_pool.insert(device) {
            self.pool.push_back(device);
        }
    }

    pub(super) fn is_busy(&self, device: DeviceId) -> bool {
        self.by_device.get(&device).is_some_and(|list| {
            list.iter().any(|s| {
                self.sessions
                    .get(s)
                    .is_some_and(|e| e.header.driver == Some(device))
            })
        })
    }

    /// Assign available drivers to sessions that need one (the server-side change).
    pub(super) fn dispatch(&mut self, now_ms: u64) {
        let mut deferred = Vec::new();
        while let Some(session) = self.waiting.pop_front() {
            let Some(entry) = self.sessions.get(&session) else {
                continue;
            };
            if entry.header.tombstone
                || entry.header.driver.is_some()
                || !A::needs_assignee(&entry.body.state)
            {
                continue;
            }
            if !self.connected.contains_key(&entry.header.rider) {
                // The rider is not here: it may have taken the trip to another datacenter,
                // and it must persist the hand-over anyway. Wait until it reports in here
                // again (`handle_connect` dispatches).
                deferred.push(session);
                continue;
            }
            let removed = entry.removed.clone();
            let Some(driver) = self.next_driver(entry.header.rider, &removed) else {
                self.waiting.push_front(session);
                break;
            };
            // The hand-over waits for the rider (the chain holder until it persisted it).
            let result = self.change(session, true, |h, b| {
                if A::assign(&mut b.state, now_ms).is_ok() {
                    h.driver = Some(driver);
                }
            });
            if let Err(e) = result {
                // Sealing failed: leave the driver in the pool, drop the session from the queue.
                self.effects.events.push(DcEvent::UploadRefused {
                    session,
                    from: driver,
                    reason: UploadRefusal::Malformed(format!("dispatch failed: {e}")),
                });
                self.offer_driver(driver);
                continue;
            }
            self.index_participant(driver, session);
            if let Some(entry) = self.sessions.get_mut(&session) {
                if let Durability::EdgeAck(_) = self.cfg.durability {
                    entry.pending = Some(Pending {
                        version: entry.header.version.clone(),
                        acks: Vec::new(),
                    });
                }
            }
            self.stats.dispatched += 1;
            self.effects
                .events
                .push(DcEvent::Dispatched { session, driver });
            if self.cfg.durability == Durability::Async {
                self.stats.server_changes_committed += 1;
            }
            self.push_to_participants(session, None);
        }
        self.waiting.extend(deferred);
    }

    /// The next available driver, other than the rider and the providers removed from this
    /// session (a provider assigned to it again would reuse the op ids of its earlier
    /// branch: its seqs restart when it drops the session).
    pub(super) fn next_driver(
        &mut self,
        rider: DeviceId,
        removed: &[DeviceId],
    ) -> Option<DeviceId> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(d) = self.pool.pop_front() {
            if !self.in_pool.contains(&d) {
                continue;
            }
            if removed.contains(&d) {
                skipped.push(d);
                continue;
            }
            let ok = d != rider
                && self.connected.get(&d).is_some_and(|c| c.available)
                && !self.is_busy(d);
            if ok {
                self.in_pool.remove(&d);
                found = Some(d);
                break;
            }
            if self.connected.get(&d).is_some_and(|c| c.available) && d != rider {
                // Busy now; keep it offered for when its trip ends.
                skipped.push(d);
            } else {
                self.in_pool.remove(&d);
            }
        }
        for d in skipped.into_iter().rev() {
            self.pool.push_front(d);
        }
        found
    }
}
