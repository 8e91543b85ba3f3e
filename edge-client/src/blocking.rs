//! A client for apps that do not run tokio: it owns a small runtime (one worker thread).

use crate::client::{EdgeClient, EdgeError, SessionSnapshot, TimedEvent};
use crate::config::EdgeConfig;
use lifeboat_common::edge::Commit;
use lifeboat_common::op_outcome::{OpOutcomeRecord, OpStatus};
use lifeboat_common::{GeoPoint, OpId, SessionId, Trip, TripOp};
use tokio::sync::broadcast;

/// Blocking facade over [`EdgeClient`]; every call returns a `Result`, none panics.
pub struct BlockingEdgeClient {
    rt: tokio::runtime::Runtime,
    inner: EdgeClient,
}

impl BlockingEdgeClient {
    /// Build a one-worker runtime and start [`EdgeClient`] on it (see [`EdgeClient::start`]).
    pub fn start(cfg: EdgeConfig) -> Result<Self, EdgeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lifeboat-edge")
            .enable_all()
            .build()
            .map_err(|e| EdgeError::Runtime(e.to_string()))?;
        let inner = rt.block_on(EdgeClient::start(cfg))?;
        Ok(Self { rt, inner })
    }

    /// Submit an op and block until it is committed or fails (see [`EdgeClient::submit`]).
    pub fn submit(&self, session: SessionId, op: TripOp) -> Result<Commit, EdgeError> {
        self.rt.block_on(self.inner.submit(session, op))
    }

    /// Rider: request a trip and block until it is committed (see
    /// [`EdgeClient::request_trip`]).
    pub fn request_trip(
        &self,
        pickup: GeoPoint,
        dropoff: GeoPoint,
    ) -> Result<(SessionId, Commit), EdgeError> {
        self.rt.block_on(self.inner.request_trip(pickup, dropoff))
    }

    /// Driver: offer (or withdraw) this device for dispatch.
    pub fn set_available(&self, available: bool) -> Result<(), EdgeError> {
        self.rt.block_on(self.inner.set_available(available))
    }

    /// The sessions this device holds.
    pub fn sessions(&self) -> Result<Vec<SessionSnapshot>, EdgeError> {
        self.rt.block_on(self.inner.sessions())
    }

    /// Queue an op; its id at once, the outcome later (event, `op_status`, `outcomes`).
    pub fn enqueue(&self, session: SessionId, op: TripOp) -> Result<OpId, EdgeError> {
        self.rt
            .block_on(self.inner.enqueue(session, op))
            .map(|(id, _)| id)
    }

    /// Where op `id` stands: queued, decided (and not acknowledged yet), or unknown.
    pub fn op_status(&self, id: OpId) -> Result<OpStatus<Trip>, EdgeError> {
        self.rt.block_on(self.inner.op_status(id))
    }

    /// The ops queued on this device and not decided yet (also those from before a restart).
    pub fn queued_ops(&self) -> Result<Vec<(OpId, TripOp)>, EdgeError> {
        self.rt.block_on(self.inner.queued_ops())
    }

    /// Decided outcomes the app has not acknowledged, oldest first.
    pub fn outcomes(&self) -> Result<Vec<OpOutcomeRecord<Trip>>, EdgeError> {
        self.rt.block_on(self.inner.outcomes())
    }

    /// The app has handled these outcomes: forget them. Returns how many were held.
    pub fn acknowledge(&self, ids: Vec<OpId>) -> Result<usize, EdgeError> {
        self.rt.block_on(self.inner.acknowledge(ids))
    }

    /// Events; poll with `try_recv` or `blocking_recv`.
    pub fn subscribe(&self) -> broadcast::Receiver<TimedEvent> {
        self.inner.subscribe()
    }

    /// Stop the client and its runtime; the store stays as it is on disk.
    pub fn shutdown(self) {
        self.rt.block_on(self.inner.shutdown());
    }
}
