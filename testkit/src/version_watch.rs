//! C3 at the edge while a test runs: [`VersionWatch`] samples every device's held sessions
//! and records any session whose version went backwards (or sideways) on a device (a
//! datacenter that comes back, thawed or restarted, must never hand a device an older copy
//! as current). It also keeps a timeline of the devices' connection events and conflicts
//! for failure messages. It judges with the checker's own order ([`dominates`]).
//!
//! Invariants: the timeline and the regressions kept are bounded; stopping is bounded.

use crate::checker::dominates;
use lifeboat_common::edge::EdgeEvent;
use lifeboat_common::{SessionId, VersionVector};
use lifeboat_edge::{ClientEvent, EdgeClient};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a watch failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionWatchError {
    #[error("versions went backwards on devices (C3):\n  {regressions}\ntimeline:\n  {timeline}")]
    Regressed {
        regressions: String,
        timeline: String,
    },
    #[error("the version watch never sampled")]
    NeverSampled,
    #[error("the version watch did not stop")]
    Stuck,
    #[error("the version watch failed: {0}")]
    Failed(String),
}

/// Most regressions kept for the report (the first ones are the interesting ones).
const MAX_REPORTED: usize = 32;

/// Most timeline entries kept.
const MAX_TIMELINE: usize = 600;

/// Watches devices' held versions in the background (see the module docs), and keeps a
/// timeline of their connection events and conflicts for failure messages.
pub struct VersionWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
    timeline: Arc<std::sync::Mutex<Vec<String>>>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

/// One line of the timeline, if the event is worth one.
fn timeline_entry(e: &ClientEvent) -> Option<String> {
    Some(match e {
        ClientEvent::Connected { dc, .. } => format!("connected to dc{}", dc.0),
        ClientEvent::Disconnected { reason, .. } => format!("disconnected: {reason}"),
        ClientEvent::Moved { from, to } => format!("moved {from} -> {to}"),
        ClientEvent::FailoverFinished { dc, stalled_ms, .. } => {
            format!("failover to dc{} after {stalled_ms} ms", dc.0)
        }
        ClientEvent::Session(EdgeEvent::Conflict {
            session,
            ours,
            theirs,
            ..
        }) => format!("CONFLICT {session}: held {ours}, datacenter {theirs}"),
        ClientEvent::Session(EdgeEvent::OpRejected { op, reason }) => {
            format!("op #{} on {} rejected: {reason}", op.seq, op.session)
        }
        ClientEvent::Session(EdgeEvent::UploadRefused { session, reason }) => {
            format!("upload of {session} refused: {reason:?}")
        }
        ClientEvent::StoreFailed(e) => format!("STORE FAILED: {e}"),
        _ => return None,
    })
}

impl VersionWatch {
    /// Sample every client's sessions every `every` until [`VersionWatch::finish`].
    pub fn start(clients: Vec<EdgeClient>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t0 = std::time::Instant::now();
        let listeners = clients
            .iter()
            .map(|c| {
                let mut events = c.subscribe();
                let (device, timeline) = (c.device(), timeline.clone());
                tokio::spawn(async move {
                    loop {
                        let line = match events.recv().await {
                            Ok(e) => timeline_entry(&e.event),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                Some(format!("({n} events missed)"))
                            }
                            Err(_) => return,
                        };
                        if let (Some(line), Ok(mut t)) = (line, timeline.lock()) {
                            if t.len() < MAX_TIMELINE {
                                t.push(format!(
                                    "{:>6} ms {device}: {line}",
                                    t0.elapsed().as_millis()
                                ));
                            }
                        }
                    }
                })
            })
            .collect();
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                let start = t0;
                let mut last: HashMap<(u64, SessionId), (VersionVector, String)> = HashMap::new();
                let mut regressions = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for c in &clients {
                        // A stopped client has nothing more to show.
                        let Ok(list) = c.sessions().await else {
                            continue;
                        };
                        let at = c.connected_dc().map_or("none".into(), |d| d.0.to_string());
                        for s in list {
                            let key = (c.device().0, s.session);
                            let now = format!(
                                "{} ({:?}{}, on dc {at}, {} ms)",
                                s.version,
                                s.view.phase,
                                if s.finished { ", finished" } else { "" },
                                start.elapsed().as_millis()
                            );
                            if let Some((old, was)) = last.get(&key) {
                                if !dominates(&s.version, old) && regressions.len() < MAX_REPORTED {
                                    regressions.push(format!(
                                        "device {} session {}: held {was}, then {now}",
                                        c.device(),
                                        s.session,
                                    ));
                                }
                            }
                            last.insert(key, (s.version, now));
                        }
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(every).await;
                }
                regressions
            })
        };
        Self {
            stop,
            samples,
            task,
            timeline,
            listeners,
        }
    }

    /// The devices' connection events and conflicts so far, one a line.
    pub fn timeline(&self) -> String {
        self.timeline
            .lock()
            .map(|t| t.join("\n  "))
            .unwrap_or_default()
    }

    /// Stop watching; fails with every regression seen. Returns the number of rounds.
    pub async fn finish(self) -> Result<u64, VersionWatchError> {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            l.abort();
        }
        let timeline = self.timeline();
        let regressions = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .map_err(|_| VersionWatchError::Stuck)?
            .map_err(|e| VersionWatchError::Failed(e.to_string()))?;
        let rounds = self.samples.load(Ordering::Relaxed);
        if !regressions.is_empty() {
            return Err(VersionWatchError::Regressed {
                regressions: regressions.join("\n  "),
                timeline,
            });
        }
        if rounds == 0 {
            return Err(VersionWatchError::NeverSampled);
        }
        Ok(rounds)
    }
}
