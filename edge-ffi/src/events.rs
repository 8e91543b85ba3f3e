//! Events for the app, in a bounded queue that the app polls.
//!
//! Why polling and not callbacks: a callback would run on the client's runtime thread and
//! call into foreign code (Swift, Kotlin, Python, C) that may block, re-enter the library,
//! take its own locks or unwind; each of those can stall or deadlock the client, and the
//! rules differ per language. A poll call runs on the app's own thread, at the app's pace,
//! with nothing foreign ever running inside the library.
//!
//! Invariants: the queue holds at most `capacity` events; when it is full the oldest event is
//! dropped and counted, and the next poll returns one `EventsDropped` event with the count
//! before the remaining events. Events are hints: the state itself is always available from
//! `sessions()`, and every op's outcome from `op_status()`/`outcomes()` until the app
//! acknowledges it, so an app that lost events (or was killed) loses nothing but
//! notifications. Every event carries the time it happened (`at_ms`), not the time it was
//! polled.

use crate::types::{CommitInfo, Phase};
use lifeboat_common::edge::{EdgeEvent, WaitReason};
use lifeboat_common::Trip;
use lifeboat_edge::{ClientEvent, TimedEvent};
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum EventKind {
    /// Connected to datacenter `dc` at `addr`.
    Connected,
    /// A connection attempt to `addr` failed (`message`).
    ConnectFailed,
    /// The connection to `addr` was lost (`message`).
    Disconnected,
    /// The client lost its datacenter (`addr`) and is looking for another.
    FailoverStarted,
    /// The failover is over as the user felt it: the first op answered at `dc` (`addr`)
    /// after the reconnect. `stalled_ms` runs from the first op the lost datacenter left
    /// unanswered (or its last frame) to then; `detection_ms` is the part spent noticing
    /// that the datacenter was gone.
    FailoverFinished,
    /// A new copy of trip `session` arrived (`phase`, `version`).
    SessionUpdated,
    /// The datacenter confirmed that `version` of `session` is committed (its anchor
    /// persisted it: a dispatch, the other participant's op).
    ServerChangeCommitted,
    /// This device's copy of `session` and the datacenter's differed (S13); `message` says
    /// which one the device kept. Never a lost op: only copies nobody confirmed give way.
    Conflict,
    /// The datacenter refused a digest this device uploaded (`message`).
    UploadRefused,
    /// Op `session`/`op_seq` was committed (also ops whose wait timed out or was cancelled,
    /// and ops queued before an app restart).
    OpCommitted,
    /// Op `session`/`op_seq` was refused (`message`).
    OpRejected,
    /// The device store failed; the client stopped (`message`).
    StoreFailed,
    /// `count` events were dropped because the app did not poll fast enough.
    EventsDropped,
    /// A more preferred datacenter (`addr`) answered again and the client moved there from
    /// `message` (no failover: the new connection was up before the old one closed).
    Moved,
    /// Ops of `session` wait for its anchor to persist them; `message` says why.
    Waiting,
    /// This device is no longer a participant of `session`; its queued ops were refused.
    Removed,
}

/// One event. Fields that do not apply to the kind are 0 / empty / None.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Event {
    /// What happened; says which of the fields below are set.
    pub kind: EventKind,
    /// When it happened (unix ms, the device's clock).
    pub at_ms: u64,
    /// The trip concerned (trip and op events).
    pub session: u64,
    /// The op's sequence number within `session` (`OpCommitted`, `OpRejected`).
    pub op_seq: u64,
    /// The datacenter's id (`Connected`, `FailoverFinished`).
    pub dc: u16,
    /// A datacenter's address, `ip:port` (connection and failover events, `Moved`).
    pub addr: String,
    /// `FailoverFinished`: the stall the user felt, in ms (see [`EventKind::FailoverFinished`]).
    pub stalled_ms: u64,
    /// `FailoverFinished`: the part of `stalled_ms` spent noticing the datacenter was gone.
    pub detection_ms: u64,
    /// `SessionUpdated`: the trip's phase in the new copy.
    pub phase: Option<Phase>,
    /// The version vector, as text (for logs): the new copy's (`SessionUpdated`), the
    /// committed one (`ServerChangeCommitted`, `OpCommitted`), the datacenter's (`Conflict`).
    pub version: String,
    /// Sum of the counters of `version`.
    pub version_total: u64,
    /// `EventsDropped`: how many events were dropped since the last such event.
    pub count: u64,
    /// A human-readable reason or detail (see each [`EventKind`]).
    pub message: String,
}

impl Event {
    fn new(kind: EventKind) -> Self {
        Event {
            kind,
            at_ms: 0,
            session: 0,
            op_seq: 0,
            dc: 0,
            addr: String::new(),
            stalled_ms: 0,
            detection_ms: 0,
            phase: None,
            version: String::new(),
            version_total: 0,
            count: 0,
            message: String::new(),
        }
    }

    /// The app's view of a client event, stamped with its time; `None` for events another
    /// one already covers.
    pub fn from_timed(e: TimedEvent) -> Option<Event> {
        let at_ms = e.at_ms;
        Self::from_client(e.event).map(|ev| Event { at_ms, ..ev })
    }

    /// The app's view of a client event; `None` for events another one already covers.
    pub fn from_client(e: ClientEvent) -> Option<Event> {
        Some(match e {
            ClientEvent::Connected { dc, addr } => Event {
                dc: dc.0,
                addr: addr.to_string(),
                ..Event::new(EventKind::Connected)
            },
            ClientEvent::ConnectFailed { addr, reason } => Event {
                addr: addr.to_string(),
                message: reason,
                ..Event::new(EventKind::ConnectFailed)
            },
            ClientEvent::Disconnected { addr, reason } => Event {
                addr: addr.to_string(),
                message: reason,
                ..Event::new(EventKind::Disconnected)
            },
            ClientEvent::Moved { from, to } => Event {
                addr: to.to_string(),
                message: from.to_string(),
                ..Event::new(EventKind::Moved)
            },
            ClientEvent::FailoverStarted { from } => Event {
                addr: from.to_string(),
                ..Event::new(EventKind::FailoverStarted)
            },
            ClientEvent::FailoverFinished {
                dc,
                addr,
                stalled_ms,
                detection_ms,
                ..
            } => Event {
                dc: dc.0,
                addr: addr.to_string(),
                stalled_ms,
                detection_ms,
                ..Event::new(EventKind::FailoverFinished)
            },
            ClientEvent::Session(s) => return Self::from_session(s),
            ClientEvent::OpResolved { op, result } => match result {
                Ok(c) => {
                    let c = CommitInfo::from(&c);
                    Event {
                        session: c.session,
                        op_seq: c.op_seq,
                        version: c.version,
                        version_total: c.version_total,
                        ..Event::new(EventKind::OpCommitted)
                    }
                }
                Err(e) => Event {
                    session: op.session.0,
                    op_seq: op.seq,
                    message: e.to_string(),
                    ..Event::new(EventKind::OpRejected)
                },
            },
            ClientEvent::StoreFailed(m) => Event {
                message: m,
                ..Event::new(EventKind::StoreFailed)
            },
        })
    }

    fn from_session(e: EdgeEvent<Trip>) -> Option<Event> {
        Some(match e {
            EdgeEvent::SessionUpdated {
                session,
                version,
                view,
                ..
            } => Event {
                session: session.0,
                phase: Some(view.phase.into()),
                version: version.to_string(),
                version_total: version.total(),
                ..Event::new(EventKind::SessionUpdated)
            },
            EdgeEvent::ServerChangeCommitted { session, version } => Event {
                session: session.0,
                version: version.to_string(),
                version_total: version.total(),
                ..Event::new(EventKind::ServerChangeCommitted)
            },
            EdgeEvent::Conflict {
                session,
                ours,
                theirs,
                ..
            } => Event {
                session: session.0,
                version: theirs.to_string(),
                version_total: theirs.total(),
                message: format!("this device held {ours}, the datacenter holds {theirs}"),
                ..Event::new(EventKind::Conflict)
            },
            EdgeEvent::UploadRefused { session, reason } => Event {
                session: session.0,
                message: reason.to_string(),
                ..Event::new(EventKind::UploadRefused)
            },
            EdgeEvent::Waiting { session, reason } => Event {
                session: session.0,
                message: match reason {
                    WaitReason::ChainHolderAway => {
                        "answered; waits for the session's anchor to persist it".into()
                    }
                    WaitReason::BranchNotConfirmed => {
                        "the datacenter holds a branch the anchor has not confirmed".into()
                    }
                },
                ..Event::new(EventKind::Waiting)
            },
            EdgeEvent::Removed { session } => Event {
                session: session.0,
                ..Event::new(EventKind::Removed)
            },
            // The same rejection also arrives as `OpResolved`, which covers every op.
            EdgeEvent::OpRejected { .. } => return None,
        })
    }
}

struct Inner {
    queue: VecDeque<Event>,
    dropped: u64,
    dropped_total: u64,
}

/// The bounded queue between the client's runtime and the app's polling thread(s).
pub struct EventQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
    capacity: usize,
}

impl EventQueue {
    /// An empty queue holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                dropped: 0,
                dropped_total: 0,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it; the queue
        // itself is still consistent (every update is a single push or pop).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event, dropping (and counting) the oldest if the queue is full; wakes one
    /// waiting poll. Never blocks beyond the queue's lock.
    pub fn push(&self, e: Event) {
        let mut g = self.lock();
        if g.queue.len() >= self.capacity {
            g.queue.pop_front();
            g.dropped += 1;
            g.dropped_total += 1;
        }
        g.queue.push_back(e);
        drop(g);
        self.ready.notify_one();
    }

    /// Count events lost before they reached the queue.
    pub fn note_dropped(&self, n: u64) {
        let mut g = self.lock();
        g.dropped += n;
        g.dropped_total += n;
        drop(g);
        self.ready.notify_one();
    }

    /// The next event, waiting at most `timeout` for one.
    pub fn poll(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.dropped > 0 {
                let count = std::mem::take(&mut g.dropped);
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                return Some(Event {
                    count,
                    at_ms,
                    ..Event::new(EventKind::EventsDropped)
                });
            }
            if let Some(e) = g.queue.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = match self.ready.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Events dropped since the queue was created (never reset).
    pub fn dropped_total(&self) -> u64 {
        self.lock().dropped_total
    }

    /// Events waiting in the queue now (the pending `EventsDropped` notice not counted).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no event is waiting (a pending `EventsDropped` notice not counted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: u64) -> Event {
        Event {
            count: n,
            ..Event::new(EventKind::Connected)
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_how_many() {
        let q = EventQueue::new(3);
        for n in 1..=5 {
            q.push(numbered(n));
        }
        assert_eq!(q.len(), 3);
        let first = q.poll(Duration::ZERO).expect("event");
        assert_eq!(first.kind, EventKind::EventsDropped);
        assert_eq!(first.count, 2);
        let rest: Vec<u64> = std::iter::from_fn(|| q.poll(Duration::ZERO))
            .map(|e| e.count)
            .collect();
        assert_eq!(rest, vec![3, 4, 5], "the newest events survive, in order");
        assert_eq!(q.dropped_total(), 2);
    }

    #[test]
    fn poll_waits_at_most_its_timeout_and_wakes_on_a_push() {
        let q = std::sync::Arc::new(EventQueue::new(4));
        let start = Instant::now();
        assert!(q.poll(Duration::from_millis(30)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(30));
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q2.push(numbered(9));
        });
        let e = q.poll(Duration::from_secs(10)).expect("woken by the push");
        assert_eq!(e.count, 9);
        t.join().expect("pusher");
    }
}
