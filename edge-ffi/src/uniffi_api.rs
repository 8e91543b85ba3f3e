//! UniFFI wrapper: the [`Core`] as an object for Kotlin, Swift and Python.
//!
//! Blocking methods park the calling (foreign) thread, as in C. `submit_async` is the one
//! async method: its work runs on the client's own runtime and the foreign language awaits
//! it (Python `await`, Kotlin `suspend`, Swift `async`); cancel it explicitly with a
//! [`CancelToken`] (dropping the foreign future ends only the wait).
//!
//! Invariants: every method forwards to the [`Core`], so the core's hold unchanged
//! (bounded waits, ops queued before a timeout or cancel committed exactly once); UniFFI
//! catches a panic in a call and raises it as an internal error, never unwinding into the
//! foreign language.

use crate::cancel::CancelToken;
use crate::core::Core;
use crate::error::LifeboatError;
use crate::events::Event;
use crate::settings::Settings;
use crate::types::{CommitInfo, OpInfo, Point, Stats, TripAction, TripView};
use std::sync::Arc;

/// An embedded edge client (see [`Core`]).
#[derive(uniffi::Object)]
pub struct EmbeddedClient {
    core: Core,
}

#[uniffi::export]
impl EmbeddedClient {
    /// Validate the settings, open the store and start connecting.
    #[uniffi::constructor]
    pub fn new(settings: Settings) -> Result<Arc<Self>, LifeboatError> {
        Ok(Arc::new(Self {
            core: Core::start(&settings)?,
        }))
    }

    /// Rider: request a trip; waits at most `timeout_ms` for the commit.
    pub fn request_trip(
        &self,
        pickup: Point,
        dropoff: Point,
        timeout_ms: u64,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<CommitInfo, LifeboatError> {
        self.core
            .request_trip(pickup, dropoff, timeout_ms, cancel.as_deref())
    }

    /// An op on an existing trip; waits at most `timeout_ms` for the commit.
    pub fn submit(
        &self,
        session: u64,
        action: TripAction,
        timeout_ms: u64,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<CommitInfo, LifeboatError> {
        self.core
            .submit(session, action, timeout_ms, cancel.as_deref())
    }

    /// [`EmbeddedClient::submit`] for async code; runs on the client's own runtime.
    pub async fn submit_async(
        &self,
        session: u64,
        action: TripAction,
        timeout_ms: u64,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<CommitInfo, LifeboatError> {
        let task = self
            .core
            .spawn_submit(session, action, timeout_ms, cancel.as_deref())?;
        task.await.map_err(|e| LifeboatError::Runtime {
            detail: format!("submit task: {e}"),
        })?
    }

    /// Queue an op and return at once with its id (state `Queued`); the outcome arrives as
    /// an event and stays readable with `op_status` until `acknowledge`.
    pub fn enqueue(&self, session: u64, action: TripAction) -> Result<OpInfo, LifeboatError> {
        self.core.enqueue(session, action)
    }

    /// Rider: queue a trip request and return at once with its id (`session` is the trip).
    pub fn enqueue_request(&self, pickup: Point, dropoff: Point) -> Result<OpInfo, LifeboatError> {
        self.core.enqueue_request(pickup, dropoff)
    }

    /// Where an op of this device stands: queued, committed, failed, or unknown.
    pub fn op_status(&self, session: u64, op_seq: u64) -> Result<OpInfo, LifeboatError> {
        self.core.op_status(session, op_seq)
    }

    /// Ops queued on the device and not decided yet (also those queued before a kill).
    pub fn queued_ops(&self) -> Result<Vec<OpInfo>, LifeboatError> {
        self.core.queued_ops()
    }

    /// Outcomes not acknowledged yet, oldest first: after a restart, what the app may not
    /// have handled.
    pub fn outcomes(&self) -> Result<Vec<OpInfo>, LifeboatError> {
        self.core.outcomes()
    }

    /// The app has handled this op's outcome; returns whether one was held.
    pub fn acknowledge(&self, session: u64, op_seq: u64) -> Result<bool, LifeboatError> {
        self.core.acknowledge(session, op_seq)
    }

    /// Driver: offer (or withdraw) this device for dispatch. Kept across pause/resume.
    pub fn set_available(&self, available: bool) -> Result<(), LifeboatError> {
        self.core.set_available(available)
    }

    /// Every trip the device holds, active and finished (tombstones).
    pub fn sessions(&self) -> Result<Vec<TripView>, LifeboatError> {
        self.core.sessions()
    }

    /// Trip `session`, or `None` if the device does not hold it.
    pub fn trip(&self, session: u64) -> Result<Option<TripView>, LifeboatError> {
        self.core.trip(session)
    }

    /// The next event, waiting at most `timeout_ms` (0: do not wait).
    pub fn poll_event(&self, timeout_ms: u64) -> Result<Option<Event>, LifeboatError> {
        self.core.poll_event(timeout_ms)
    }

    /// The id of the datacenter serving the client now; `None` while not connected or paused.
    pub fn connected_dc(&self) -> Option<u16> {
        self.core.connected_dc()
    }

    /// Wait at most `timeout_ms` (1 ms to 24 h) until connected: the datacenter's id, or
    /// `None` if the timeout passed first.
    pub fn wait_connected(&self, timeout_ms: u64) -> Result<Option<u16>, LifeboatError> {
        self.core.wait_connected(timeout_ms)
    }

    /// App backgrounded: stop the client, keep the store.
    pub fn pause(&self) -> Result<(), LifeboatError> {
        self.core.pause()
    }

    /// App foregrounded: start again over the same store.
    pub fn resume(&self) -> Result<(), LifeboatError> {
        self.core.resume()
    }

    /// Whether the client is paused (between `pause` and `resume`).
    pub fn is_paused(&self) -> bool {
        self.core.is_paused()
    }

    /// Network change: new UDP socket, same QUIC connection. Returns the new local address.
    pub fn rebind(&self) -> Result<String, LifeboatError> {
        self.core.rebind()
    }

    /// The client's counters (zero while paused, except `events_dropped` and `local_addr`).
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Stop for good (also done when the object is freed).
    pub fn shutdown(&self) {
        self.core.shutdown()
    }
}

/// This library's version.
#[uniffi::export]
pub fn library_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
