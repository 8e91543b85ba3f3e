//! Checks of the contract against what the datacenters hold at the end of a test.
//!
//! - [`check_against_store`]: every trip a driver's device was told about is in the store,
//!   with exactly the location ops committed on the device (fewer: a committed op was lost,
//!   C1; more: one was applied twice, C2), at a version that covers every committed version
//!   (C3), and tombstoned if it was completed.
//! - [`newest_copies`]: when devices may have ended on either datacenter, the newest copy of
//!   each session across the stores.
//! - [`VersionWatch`]: samples every device's held sessions while a test runs and records
//!   any session whose version went backwards on a device (C3 at the edge: a datacenter that
//!   comes back, thawed or restarted, must never hand a device an older copy as current).

use crate::device_process::Report;
use crate::trips::TripLedger;
use anyhow::{bail, ensure, Context};
use lifeboat_common::edge::EdgeEvent;
use lifeboat_common::{OpId, SessionId, TripOp, TripPhase, VersionVector};
use lifeboat_edge::{ClientEvent, EdgeClient};
use lifeboat_server::service::StoredSession;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every trip in the ledger is in the store, exactly as committed, never older.
pub fn check_against_store(ledgers: &[TripLedger], stored: &[StoredSession]) -> anyhow::Result<()> {
    let by_id: HashMap<SessionId, &StoredSession> =
        stored.iter().map(|s| (s.0.session, s)).collect();
    for l in ledgers {
        let (header, body) = by_id
            .get(&l.session)
            .with_context(|| format!("trip {} lost: not in the surviving store", l.session))?;
        let applied = body.state.location_updates;
        ensure!(
            applied >= l.locations_committed
                && applied <= l.locations_committed + l.locations_unresolved,
            "trip {}: {} location ops committed on the device ({} more unresolved), {} applied \
             at the datacenter",
            l.session,
            l.locations_committed,
            l.locations_unresolved,
            applied
        );
        ensure!(
            header.version.covers(&l.last_version),
            "trip {}: datacenter version {} is older than committed {}",
            l.session,
            header.version,
            l.last_version
        );
        if l.completed {
            ensure!(
                header.tombstone,
                "trip {} completed but not tombstoned",
                l.session
            );
            ensure!(body.state.phase == TripPhase::Completed);
            ensure!(body.state.fare_cents.is_some());
        }
    }
    Ok(())
}

/// The newest copy of each session among several datacenters' stores: a copy is replaced
/// by one that covers it. Of two concurrent copies (a branch no device reported back to
/// yet), the tombstone wins, then the one with more changes: that is the copy the devices
/// continued with.
pub fn newest_copies(stored: impl IntoIterator<Item = StoredSession>) -> Vec<StoredSession> {
    let mut newest: HashMap<SessionId, StoredSession> = HashMap::new();
    for s in stored {
        let replace = match newest.get(&s.0.session) {
            None => true,
            Some(old) if old.0.version.covers(&s.0.version) => false,
            Some(old) if s.0.version.covers(&old.0.version) => true,
            Some(old) => {
                (s.0.tombstone, s.0.version.total()) > (old.0.tombstone, old.0.version.total())
            }
        };
        if replace {
            newest.insert(s.0.session, s);
        }
    }
    newest.into_values().collect()
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
                                if !s.version.covers(old) && regressions.len() < MAX_REPORTED {
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
    pub async fn finish(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            l.abort();
        }
        let timeline = self.timeline();
        let regressions = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("the version watch did not stop")??;
        let rounds = self.samples.load(Ordering::Relaxed);
        if !regressions.is_empty() {
            bail!(
                "versions went backwards on devices (C3):\n  {}\ntimeline:\n  {timeline}",
                regressions.join("\n  ")
            );
        }
        ensure!(rounds > 0, "the version watch never sampled");
        Ok(rounds)
    }
}

/// One life of a device process: what the test asked (op by tag) and what it reported.
pub struct Life {
    pub asked: HashMap<u64, TripOp>,
    pub reports: Vec<Report>,
}

/// A driver's [`TripLedger`] for `session` from every life of its device process: an op
/// counts as committed if any life reported it committed (`Committed`, or `Resolved` for
/// an op replayed from the store after a restart). An op resolved without a `Queued` report
/// can only be one that was in flight when a life was killed (queued on disk, not yet
/// reported): at most one per kill, and its kind is `in_flight_kind`.
pub fn ledger_from_lives(
    session: SessionId,
    lives: &[Life],
    in_flight_kind: &TripOp,
) -> anyhow::Result<TripLedger> {
    let mut kind: HashMap<OpId, TripOp> = HashMap::new();
    let mut committed: HashMap<OpId, VersionVector> = HashMap::new();
    for life in lives {
        for r in &life.reports {
            match r {
                Report::Queued { tag, op } | Report::Committed { tag, op, .. } => {
                    if let Some(k) = life.asked.get(tag) {
                        kind.insert(*op, k.clone());
                    }
                }
                _ => {}
            }
            match r {
                Report::Committed { op, version, .. } => {
                    committed.insert(*op, version.clone());
                }
                Report::Resolved {
                    op,
                    ok: true,
                    version: Some(version),
                } => {
                    committed.insert(*op, version.clone());
                }
                Report::Resolved { op, ok: false, .. } if op.session == session => {
                    bail!("op {op:?} was refused")
                }
                Report::Failed { tag, error } => bail!("op tag {tag} failed: {error}"),
                _ => {}
            }
        }
    }
    let kills = lives.len().saturating_sub(1);
    let mut ledger = TripLedger::new(session);
    let mut unreported = 0;
    let mut newest_seq = 0;
    for (op, version) in committed.iter().filter(|(op, _)| op.session == session) {
        let k = match kind.get(op) {
            Some(k) => k,
            None => {
                unreported += 1;
                in_flight_kind
            }
        };
        match k {
            TripOp::Location { .. } => ledger.locations_committed += 1,
            TripOp::Complete => ledger.completed = true,
            _ => {}
        }
        if op.seq > newest_seq {
            newest_seq = op.seq;
            ledger.last_version = version.clone();
        }
    }
    ensure!(
        unreported <= kills,
        "{unreported} ops committed that no life reported queued, with {kills} kills"
    );
    // Queued in a life that was killed, and no later life heard the outcome (a replay that
    // resolves before the new process subscribes to its events): maybe applied, once.
    ledger.locations_unresolved = kind
        .iter()
        .filter(|(op, k)| {
            op.session == session
                && !committed.contains_key(op)
                && matches!(k, TripOp::Location { .. })
        })
        .count() as u32;
    Ok(ledger)
}

/// A compact account of every life of a device process, for a failure message.
pub fn summarize(lives: &[Life]) -> String {
    let mut out = String::new();
    for (i, life) in lives.iter().enumerate() {
        let mut tags: Vec<_> = life.asked.iter().collect();
        tags.sort_by_key(|(t, _)| **t);
        let asked: Vec<String> = tags
            .iter()
            .map(|(t, op)| format!("{t}:{}", op.name()))
            .collect();
        let reports: Vec<String> = life
            .reports
            .iter()
            .filter_map(|r| match r {
                Report::Queued { tag, op } => Some(format!("q{tag}=#{}", op.seq)),
                Report::Committed {
                    tag, op, duplicate, ..
                } => Some(format!(
                    "c{tag}=#{}{}",
                    op.seq,
                    if *duplicate { "(dup)" } else { "" }
                )),
                Report::Resolved { op, ok, .. } => {
                    Some(format!("r#{}{}", op.seq, if *ok { "" } else { "!" }))
                }
                Report::Failed { tag, .. } => Some(format!("f{tag}")),
                _ => None,
            })
            .collect();
        out.push_str(&format!(
            "\n  life {i}: asked [{}]; reported [{}]",
            asked.join(" "),
            reports.join(" ")
        ));
    }
    out
}
