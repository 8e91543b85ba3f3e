//! Admission that queues instead of refusing (issue 13 #3): in a reconnect storm the
//! datacenter completes handshakes at its capacity (`max_handshakes` at once), and the
//! devices beyond it wait in a bounded queue for a slot instead of being refused and
//! retrying blind (each retry a fresh Initial and key share: more work for the same slot).
//!
//! Invariants: at most `capacity` connections wait at once (the rest are refused at once,
//! QUIC `CONNECTION_REFUSED`, counted as the `handshakes` limit); none waits longer than
//! `max_wait` (then it is refused, counted the same way), which is kept below the edge
//! client's connect timeout so that a waiting device is refused (busy: it backs off and
//! comes back to the same datacenter) rather than timing out (dead: it would move on);
//! quinn holds each waiting connection's early datagrams within `incoming_buffer_bytes`.
//! The QUIC refusal carries no retry delay: the device's jittered busy backoff
//! (100 ms to 2 s, `lifeboat_common::route`) is the "come back later".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes quinn buffers for one connection not yet accepted (its Initial and any
/// retransmits: a few kilobytes).
pub const INCOMING_BUFFER_BYTES: u64 = 16 * 1024;

/// The queue's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBounds {
    /// Most connections waiting for a handshake slot at once (0: refuse at once, as before).
    pub capacity: usize,
    /// Longest wait for a slot.
    pub max_wait: Duration,
}

/// Counts the connections waiting (shared by the accept loop and the waiting tasks).
#[derive(Debug)]
pub struct HandshakeQueue {
    bounds: QueueBounds,
    waiting: AtomicUsize,
}

/// A place in the queue; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Place {
    queue: Arc<HandshakeQueue>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HandshakeQueue {
    /// An empty queue with these bounds.
    pub fn new(bounds: QueueBounds) -> Arc<Self> {
        Arc::new(Self {
            bounds,
            waiting: AtomicUsize::new(0),
        })
    }

    /// The bounds.
    pub fn bounds(&self) -> QueueBounds {
        self.bounds
    }

    /// A place for one more connection, or `None` if the queue is full.
    pub fn join(self: &Arc<Self>) -> Option<Place> {
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.bounds.capacity).then_some(n + 1)
            })
            .is_ok();
        joined.then(|| Place {
            queue: self.clone(),
        })
    }

    /// Connections waiting now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> Arc<HandshakeQueue> {
        HandshakeQueue::new(QueueBounds {
            capacity,
            max_wait: Duration::from_millis(1_500),
        })
    }

    #[test]
    fn the_queue_holds_at_most_its_capacity_and_a_place_left_is_free_again() {
        let q = queue(2);
        let a = q.join().expect("room");
        let _b = q.join().expect("room");
        assert!(q.join().is_none(), "full: refused at once");
        assert_eq!(q.waiting(), 2);
        drop(a);
        assert_eq!(q.waiting(), 1);
        assert!(q.join().is_some(), "a place left is free again");
    }

    #[test]
    fn a_queue_of_zero_refuses_everyone_as_before() {
        assert!(queue(0).join().is_none());
    }
}
