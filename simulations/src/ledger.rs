//! The devices' logs as the testkit checker's input: a thin translation, no judgement.
//!
//! Every op a device's app submitted becomes `Submit` (when it was asked), `Accepted` (once
//! the client queued it under its id), then `Committed` or `Refused` (when it was
//! answered); an op never answered stays accepted (it may still be applied once). Every
//! device's ops are recorded, so the checker judges every watermark. The devices' held
//! copies are not read (the checker then judges the datacenters' copies only).
//!
//! Invariant: each device's events keep their order (a device submits one op at a time);
//! the history is in time order across devices.

use crate::city::{DeviceLog, Outcome};
use lifeboat_common::{DatacenterId, DeviceId};
use lifeboat_server::service::StoredSession;
use lifeboat_testkit::checker::{Event, FinalState, History};
use std::collections::BTreeMap;

/// The history the checker judges, from every device's log.
pub fn history(logs: &[DeviceLog]) -> History {
    let mut timed: Vec<(u64, DeviceId, Event)> = Vec::new();
    for log in logs {
        let device = DeviceId(log.device);
        for o in &log.ops {
            let (session, kind) = (o.session, o.kind);
            timed.push((o.submitted_ms, device, Event::Submit { session, kind }));
            let Some(op) = o.op else {
                continue;
            };
            timed.push((o.submitted_ms, device, Event::Accepted { op, kind }));
            let answer = match (&o.outcome, &o.refusal) {
                (Outcome::Committed { version, duplicate }, _) => Event::Committed {
                    op,
                    version: version.clone(),
                    duplicate: *duplicate,
                },
                (_, Some(reason)) => Event::Refused {
                    op,
                    reason: reason.clone(),
                },
                _ => continue,
            };
            timed.push((o.resolved_ms, device, answer));
        }
    }
    // Stable: a device's events at the same millisecond keep their order.
    timed.sort_by_key(|(at, _, _)| *at);
    let mut h = History::new();
    for (at, device, event) in timed {
        h.record(at, device, event);
    }
    h
}

/// The final state the checker judges against: every surviving datacenter's store.
pub fn final_state(stored: &BTreeMap<DatacenterId, Vec<StoredSession>>) -> FinalState {
    let mut finals = FinalState::new();
    for (dc, sessions) in stored {
        finals.add_store(*dc, sessions.clone());
    }
    finals
}
