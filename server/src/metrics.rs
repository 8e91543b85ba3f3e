//! The datacenter's counters in the Prometheus text format (version 0.0.4), rendered from
//! the same [`Status`] snapshot the status file is written from: one source of counters,
//! two views.
//!
//! Names: `lifeboat_<name>` for the driver's own figures, `lifeboat_core_<field>_total` for
//! every counter of the replication core ([`lifeboat_common::datacenter::DcStats`], all of
//! them, so a new one shows up without a change here), `lifeboat_limit_hits_total{limit}` for
//! the limits of SECURITY.md. Every series carries `dc="<id>"`.
//!
//! Invariants: label values are escaped (`\`, `"`, newline); the output is bounded by the
//! number of counters, limits and key ids (all bounded).

use crate::status::Status;
use std::fmt::Write;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
    dc: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// `dc="<id>"` and `labels`, escaped, as inside `{...}`.
    fn labels(&self, labels: &[(&str, &str)]) -> String {
        let mut l = format!("dc=\"{}\"", self.dc);
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", escape(v));
        }
        l
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let l = self.labels(labels);
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, h: &crate::latency::Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &le.to_string())], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        let _ = writeln!(
            self.text,
            "{name}_sum{{dc=\"{}\"}} {}",
            self.dc,
            h.sum_us as f64 / 1e6
        );
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l = self.labels(labels);
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A gauge or counter read from the snapshot.
type Figure = (&'static str, &'static str, &'static str, fn(&Status) -> u64);

/// The driver's own figures: name, kind, help, value.
const DRIVER_FIGURES: [Figure; 15] = [
    (
        "lifeboat_sessions",
        "gauge",
        "Sessions held, active and tombstoned.",
        |s| s.sessions as u64,
    ),
    (
        "lifeboat_active_sessions",
        "gauge",
        "Sessions held and not finished.",
        |s| s.active_sessions as u64,
    ),
    (
        "lifeboat_tombstones",
        "gauge",
        "Tombstones held (finished sessions, kept tombstone_ttl_ms).",
        |s| s.tombstones as u64,
    ),
    (
        "lifeboat_connections",
        "gauge",
        "Devices connected now.",
        |s| s.connections as u64,
    ),
    (
        "lifeboat_standby_connections",
        "gauge",
        "Connections handshaken that have not said Hello yet (devices' standby paths).",
        |s| s.standby_connections as u64,
    ),
    (
        "lifeboat_refused_connections_total",
        "counter",
        "Connections refused (limits, bad credentials, handshake failures).",
        |s| s.refused_connections,
    ),
    (
        "lifeboat_bad_credentials_total",
        "counter",
        "Connections with a credential that did not verify.",
        |s| s.bad_credentials,
    ),
    (
        "lifeboat_bad_frames_total",
        "counter",
        "Frames that did not decode (the connection was closed).",
        |s| s.bad_frames,
    ),
    (
        "lifeboat_slow_consumers_total",
        "counter",
        "Connections closed because their queue filled up.",
        |s| s.slow_consumers,
    ),
    (
        "lifeboat_store_errors_total",
        "counter",
        "Failed writes or flushes of the datacenter's store.",
        |s| s.store_errors,
    ),
    (
        "lifeboat_handshakes_total",
        "counter",
        "QUIC handshakes completed, full or resumed.",
        |s| s.handshakes,
    ),
    (
        "lifeboat_drained_devices_total",
        "counter",
        "Devices told by a drain (a planned failover) to move to another datacenter.",
        |s| s.drained_devices,
    ),
    (
        "lifeboat_handshakes_resumed_total",
        "counter",
        "Handshakes that resumed a TLS session with a region ticket (no certificate signature).",
        |s| s.handshakes_resumed,
    ),
    (
        "lifeboat_tls_tickets_issued_total",
        "counter",
        "TLS session tickets issued to devices (they open at every datacenter of the region).",
        |s| s.tickets_issued,
    ),
    (
        "lifeboat_tls_tickets_refused_total",
        "counter",
        "Tickets offered that did not open (another region, a retired key): full handshakes.",
        |s| s.tickets_refused,
    ),
];

/// The keyring's figures: name, kind, help, value.
const KEYRING_FIGURES: [Figure; 3] = [
    (
        "lifeboat_keyring_active_key",
        "gauge",
        "Id of the key new digests are sealed with.",
        |s| u64::from(s.keyring.active_key),
    ),
    (
        "lifeboat_keyring_reloads_total",
        "counter",
        "Keyring reloads that took effect.",
        |s| s.keyring.reloads,
    ),
    (
        "lifeboat_keyring_reload_errors_total",
        "counter",
        "Keyring reloads that failed (the previous keyring stays in use).",
        |s| s.keyring.reload_errors,
    ),
];

/// The snapshot as Prometheus text.
pub fn render(s: &Status, ready: bool) -> String {
    let mut o = Out {
        text: String::new(),
        dc: s.dc.to_string(),
    };
    o.one(
        "lifeboat_ready",
        "gauge",
        "1 when the datacenter is ready (see /readyz).",
        u64::from(ready),
    );
    for (name, kind, help, value) in DRIVER_FIGURES {
        o.one(name, kind, help, value(s));
    }
    render_core(&mut o, s);
    o.family(
        "lifeboat_limit_hits_total",
        "counter",
        "How often each limit of SECURITY.md was hit.",
    );
    for (limit, n) in &s.limits {
        o.sample("lifeboat_limit_hits_total", &[("limit", limit)], *n);
    }
    for (name, kind, help, value) in KEYRING_FIGURES {
        o.one(name, kind, help, value(s));
    }
    o.family(
        "lifeboat_active_sessions_by_key",
        "gauge",
        "Active sessions by the key their digest is sealed with (retire a key at 0 everywhere).",
    );
    for (key, n) in &s.keyring.active_sessions_by_key {
        o.sample(
            "lifeboat_active_sessions_by_key",
            &[("key", &key.to_string())],
            *n,
        );
    }
    o.histogram(
        "lifeboat_op_latency_seconds",
        "Op latency at the datacenter: frame read to reply queued, after the batch's persist and flush.",
        &s.op_latency,
    );
    o.histogram(
        "lifeboat_store_flush_seconds",
        "Store persist-and-flush time per batch of changes.",
        &s.store_flush_latency,
    );
    render_shadow(&mut o, s);
    o.text
}

/// The shadow restore's gauges (its counters are the core's `shadow_*`).
fn render_shadow(o: &mut Out, s: &Status) {
    let sh = &s.shadow;
    if let Some(ratio) = sh.restorable_ratio {
        o.family(
            "lifeboat_shadow_restorable_ratio",
            "gauge",
            "Of the recent shadow-restore samples, the fraction the devices' copies restore at the sampled version with nothing missing.",
        );
        o.float("lifeboat_shadow_restorable_ratio", &[], ratio);
    }
    o.one(
        "lifeboat_shadow_recent_samples",
        "gauge",
        "Shadow-restore samples in the recent window.",
        sh.recent_samples as u64,
    );
    o.family(
        "lifeboat_shadow_replication_lag_ms",
        "gauge",
        "Replication lag of the recent sampled copies (ms; 0 when the copy restores the session), by quantile.",
    );
    o.sample(
        "lifeboat_shadow_replication_lag_ms",
        &[("quantile", "0.5")],
        sh.lag_ms_p50,
    );
    o.sample(
        "lifeboat_shadow_replication_lag_ms",
        &[("quantile", "0.99")],
        sh.lag_ms_p99,
    );
    o.family(
        "lifeboat_shadow_answer_ms",
        "gauge",
        "Sample to answer of the recent current copies (ms; the device's flush and a round trip), by quantile.",
    );
    o.sample(
        "lifeboat_shadow_answer_ms",
        &[("quantile", "0.5")],
        sh.answer_ms_p50,
    );
    o.sample(
        "lifeboat_shadow_answer_ms",
        &[("quantile", "0.99")],
        sh.answer_ms_p99,
    );
    o.one(
        "lifeboat_shadow_lagging_devices",
        "gauge",
        "Devices whose copy was behind, missing or silent in a recent sample.",
        sh.lagging_devices as u64,
    );
    o.family(
        "lifeboat_shadow_device_behind_total",
        "counter",
        "Samples in which this device's copy would not restore its session (the first 64 devices so named; the rest under device=\"other\").",
    );
    for (device, n) in &sh.behind_by_device {
        o.sample(
            "lifeboat_shadow_device_behind_total",
            &[("device", &device.to_string())],
            *n,
        );
    }
    if sh.unnamed_behind > 0 {
        o.sample(
            "lifeboat_shadow_device_behind_total",
            &[("device", "other")],
            sh.unnamed_behind,
        );
    }
}

/// Every counter of the core, by its field name (all are monotonic counts).
fn render_core(o: &mut Out, s: &Status) {
    if let Ok(serde_json::Value::Object(core)) = serde_json::to_value(&s.core) {
        for (field, v) in core {
            if let Some(n) = v.as_u64() {
                let name = format!("lifeboat_core_{field}_total");
                o.one(
                    &name,
                    "counter",
                    &format!("Replication core: {}.", field.replace('_', " ")),
                    n,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
