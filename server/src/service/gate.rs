//! The way into the core: every input (a connect upload, a frame, a disconnect) is handled
//! on the task that read it, under one lock around the [`Actor`], and its effects (store
//! write, then answers and pushes) leave before the lock is let go.
//!
//! Before this, a reader handed each frame to a core actor task through a channel, which
//! cost a task wake (often a thread wake-up) per op before the core saw it; the lock costs
//! nothing when it is free and a short wait when another reader holds it.
//!
//! Invariants:
//! - the lock is fair (tokio's mutex: first come, first served), so a device that floods
//!   ops gets one turn per round of waiters and cannot starve the others; a waiter yields
//!   its thread (the QUIC drivers keep running) instead of blocking it;
//! - nothing waits while holding the lock (no `.await` inside a turn: every turn in this
//!   crate is a plain block that ends before the next `.await`), so a waiter waits at most
//!   one input's handling per reader ahead of it;
//! - the time an input is handled at is read under the lock, so the core's `now` never goes
//!   back from one input to the next (a reader may wait for the lock);
//! - inputs of one connection reach the core in the order its reader read them (the reader
//!   is their only caller and waits for each), and each is answered before the next frame
//!   is read: the per-connection in-flight bound is never reached by ops the core answers
//!   at once;
//! - waiting for the lock is the backpressure: nothing queues in front of the core;
//! - once the stop began ([`Actor::stopped`]) every input is refused ([`CoreGone`]), and
//!   once a crash point fired nothing more is handled (the process is about to abort);
//! - a panic inside a turn poisons the gate: from then on the core counts as stopped
//!   ([`CoreGone`]), never as state half changed.

use super::actor::{Actor, Input, PendingCrash};
use lifeboat_common::clock::Clock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Mutex, MutexGuard};

/// The core stopped (shutting down, or it panicked): the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("datacenter core stopped")]
pub(super) struct CoreGone;

/// See the module docs.
pub(super) struct CoreGate {
    actor: Mutex<Actor>,
    /// A turn panicked (see [`Turn`]'s `Drop`).
    poisoned: AtomicBool,
    clock: Clock,
    /// Wakes the serve loop when an input ended a drain.
    pub(super) drain_over: tokio::sync::Notify,
}

impl CoreGate {
    pub(super) fn new(actor: Actor, clock: Clock) -> Self {
        Self {
            actor: Mutex::new(actor),
            poisoned: AtomicBool::new(false),
            clock,
            drain_over: tokio::sync::Notify::new(),
        }
    }

    /// The actor, for one short turn: do not `.await` while holding it.
    pub(super) async fn lock(&self) -> Result<Turn<'_>, CoreGone> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(CoreGone);
        }
        let guard = self.actor.lock().await;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(CoreGone);
        }
        Ok(Turn {
            guard,
            poisoned: &self.poisoned,
        })
    }

    /// The datacenter's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Handle one input now: the core takes it, the store is written, the answers and pushes
    /// leave. Refused once the stop began.
    pub(super) async fn input(&self, input: Input) -> Result<(), CoreGone> {
        let crash = {
            let mut actor = self.lock().await?;
            // Read under the lock, so the core sees time in the order it takes inputs.
            let now = self.now_ms();
            if actor.stopped {
                return Err(CoreGone);
            }
            if actor.crashing {
                return Ok(());
            }
            actor.handle(now, input);
            let crash = actor.flush_effects();
            actor.ops_answered();
            if actor.drain_over(now) {
                self.drain_over.notify_one();
            }
            crash
        };
        if let Some(crash) = crash {
            crash.fire().await;
        }
        Ok(())
    }
}

/// One turn with the actor; a panic during it poisons the gate.
pub(super) struct Turn<'a> {
    guard: MutexGuard<'a, Actor>,
    poisoned: &'a AtomicBool,
}

impl std::ops::Deref for Turn<'_> {
    type Target = Actor;
    fn deref(&self) -> &Actor {
        &self.guard
    }
}

impl std::ops::DerefMut for Turn<'_> {
    fn deref_mut(&mut self) -> &mut Actor {
        &mut self.guard
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}

impl PendingCrash {
    /// Let the replies already written leave, then abort (a test's crash point).
    pub(super) async fn fire(self) {
        tokio::time::sleep(self.after).await;
        eprintln!("CRASH POINT {} reached: aborting", self.name);
        std::process::abort();
    }
}
