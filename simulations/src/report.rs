//! Presenting a run: the terminal table, the JSON report, and `report.md` with SVG charts.

use crate::svg::{bar_chart, line_chart, Series};
use crate::verify::Report;
use serde::Serialize;
use std::path::Path;

/// One sample of the run, every 250 ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub ops_per_s: f64,
    pub trips_active: i64,
    /// Devices connected to each datacenter.
    pub devices: Vec<usize>,
    /// Active sessions each datacenter holds (its own status file).
    pub sessions: Vec<usize>,
}

/// Kill/restart moments, for the charts.
#[derive(Clone, Debug, Serialize)]
pub struct Mark {
    pub t_s: f64,
    pub label: String,
}

/// A stall split (detect / connect / answer), ms.
fn split(parts: &[u64; 3]) -> String {
    format!("{} / {} / {} ms", parts[0], parts[1], parts[2])
}

pub fn table(r: &Report) -> String {
    let ok = |b: bool| if b { "ok" } else { "FAIL" };
    let rows: Vec<(String, String, &str)> = vec![
        (
            "scenario".into(),
            format!("{} (seed {}, {})", r.scenario, r.seed, r.durability),
            "",
        ),
        (
            "devices / trips".into(),
            if r.devices_not_started > 0 {
                format!(
                    "{} / {} ({} riders never started: the run ended first)",
                    r.devices, r.trips_total, r.devices_not_started
                )
            } else {
                format!("{} / {}", r.devices, r.trips_total)
            },
            "",
        ),
        (
            "trips active at failure".into(),
            r.trips_active_at_failure.to_string(),
            "",
        ),
        (
            "trips restored".into(),
            r.trips_restored.to_string(),
            ok(r.trips_restored == r.trips_active_at_failure),
        ),
        (
            "trips lost".into(),
            r.trips_lost.to_string(),
            ok(r.trips_lost == 0),
        ),
        ("ops committed".into(), r.ops_committed.to_string(), ""),
        (
            "committed ops lost".into(),
            r.ops_committed_lost.to_string(),
            ok(r.ops_committed_lost == 0),
        ),
        (
            "ops applied twice".into(),
            r.ops_applied_twice.to_string(),
            ok(r.ops_applied_twice == 0),
        ),
        (
            "versions regressed".into(),
            r.versions_regressed.to_string(),
            ok(r.versions_regressed == 0),
        ),
        (
            "tombstones resurrected".into(),
            r.tombstones_resurrected.to_string(),
            ok(r.tombstones_resurrected == 0),
        ),
        (
            "ops refused but applied".into(),
            r.ops_refused_but_applied.to_string(),
            ok(r.ops_refused_but_applied == 0),
        ),
        (
            "sessions not converged".into(),
            r.sessions_not_converged.to_string(),
            ok(r.sessions_not_converged == 0),
        ),
        (
            "ops unanswered".into(),
            r.ops_unresolved.to_string(),
            ok(r.ops_unresolved == 0),
        ),
        (
            "reinstalled devices not re-synced".into(),
            r.devices_not_resynced.to_string(),
            ok(r.devices_not_resynced == 0),
        ),
        (
            "conflicts told to devices".into(),
            r.conflicts.to_string(),
            ok(r.conflicts == 0),
        ),
        (
            "sessions with concurrent copies at the end".into(),
            r.sessions_concurrent_at_end.to_string(),
            "",
        ),
        (
            "false failovers (datacenter was up)".into(),
            r.false_failovers.to_string(),
            "",
        ),
        (
            "devices moved by a drain (told where to go)".into(),
            format!(
                "{} ({} were on dc1 at the fault)",
                r.devices_drained, r.devices_on_dc1_at_fault
            ),
            "",
        ),
        (
            "waits for the anchor p50 / p99 / max".into(),
            format!(
                "{} / {} / {} ms ({} waits)",
                r.wait_ms_p50, r.wait_ms_p99, r.wait_ms_max, r.waits
            ),
            "",
        ),
        (
            "unreplicated at failure (dispatch)".into(),
            r.unreplicated_at_failure.to_string(),
            "",
        ),
        (
            "failure detection p50".into(),
            format!("{} ms", r.detect_ms_p50),
            "",
        ),
        (
            "stall felt by the devices p50 / p99".into(),
            format!(
                "{} / {} ms ({} devices; {} idle reconnects, nobody waiting)",
                r.felt_stall_ms_p50, r.felt_stall_ms_p99, r.felt_devices, r.idle_reconnects
            ),
            "",
        ),
        (
            "stall split p50: detect / connect / answer".into(),
            split(&r.split_ms_p50),
            "",
        ),
        (
            "stall split p99: detect / connect / answer".into(),
            split(&r.split_ms_p99),
            "",
        ),
        (
            "  p99 drivers / riders".into(),
            format!(
                "{}; {}",
                split(&r.split_ms_p99_drivers),
                split(&r.split_ms_p99_riders)
            ),
            "",
        ),
        (
            "app stall p50 / p99 / max".into(),
            format!(
                "{} / {} / {} ms ({} devices)",
                r.stall_ms_p50, r.stall_ms_p99, r.stall_ms_max, r.stalled_devices
            ),
            "",
        ),
        (
            "restore rate at the backup".into(),
            format!("{:.0} sessions/s", r.restore_sessions_per_s),
            "",
        ),
        (
            "mobile bytes per op (QUIC incl.)".into(),
            format!(
                "{:.0} ({:.0} in handshakes; {:.1} MTU probes per device)",
                r.edge_bytes_per_op, r.edge_handshake_bytes_per_op, r.edge_mtu_probes_per_device
            ),
            "",
        ),
        (
            "failovers over a standby path (standbys opened)".into(),
            format!(
                "{} ({} opened; {} at the backup before the fault, {})",
                r.failovers_over_standby,
                r.standby_opened,
                r.standby_at_backup_before_fault,
                r.backup_rss_per_standby_bytes
                    .map_or("memory not measured".into(), |b| format!("{b:.0} bytes RSS each"))
            ),
            "",
        ),
        (
            "handshakes at the backup full / resumed".into(),
            format!(
                "{} / {}",
                r.backup_handshakes_full, r.backup_handshakes_resumed
            ),
            "",
        ),
        (
            "backup CPU per device reconnected".into(),
            match (r.backup_cpu_us_per_device, r.bare_setup_cpu_us_full, r.bare_setup_cpu_us_resumed) {
                (Some(b), Some(f), Some(res)) => format!(
                    "{b:.0} us over {:.1} s incl. {} ops served (bare quinn set-up here: full {f:.0} us, resumed {res:.0} us; {:.2}x resumed)",
                    r.backup_cpu_window_s,
                    r.backup_cpu_window_ops,
                    b / res.max(f64::MIN_POSITIVE)
                ),
                (Some(b), _, _) => format!("{b:.0} us (no bare baseline)"),
                _ => "not measured".into(),
            },
            match r.backup_cpu_ratio_to_resumed {
                Some(x) if x <= 2.0 => "target 2x: met",
                Some(_) => "target 2x: missed",
                None => "",
            },
        ),
        (
            "shadow restore before the fault: restorable".into(),
            match r.shadow_restorable_before_fault {
                Some(f) => format!(
                    "{:.2}% of {} samples ({} copies behind, {} silent)",
                    f * 100.0,
                    r.shadow_samples_before_fault,
                    r.shadow_copies_behind_before_fault,
                    r.shadow_copies_silent_before_fault
                ),
                None => "no sample".into(),
            },
            // Information, not the verdict: the checker judges C1 from the stores.
            if r.shadow_restorable_before_fault == Some(1.0) {
                "ok"
            } else {
                "below 100%"
            },
        ),
        (
            "shadow restore: lag p99, answer p50 / p99".into(),
            format!(
                "{} ms, {} / {} ms",
                r.shadow_lag_ms_p99, r.shadow_answer_ms_p50, r.shadow_answer_ms_p99
            ),
            "",
        ),
        (
            "sealed digest p50 / max".into(),
            format!("{} / {} bytes", r.digest_bytes_p50, r.digest_bytes_max),
            "",
        ),
    ];
    let mut rows = rows;
    if let Some(n) = &r.network {
        rows.insert(2, crate::network::table_row(n));
    }
    let mut s = String::new();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    for (k, v, c) in rows {
        s.push_str(&format!("  {k:<w$}  {v:<40} {c}\n"));
    }
    s.push_str(&format!(
        "  {:<w$}  {}\n",
        "RESULT",
        if r.passed { "PASSED" } else { "FAILED" }
    ));
    for v in &r.violations {
        s.push_str(&format!("    violation: {v}\n"));
    }
    s
}

/// Write `report.md`, `timeline.svg` and `stall.svg` into `dir`.
pub fn write_report(
    dir: &Path,
    reports: &[(Report, Vec<Sample>, Vec<Mark>)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::from("# Lifeboat failover simulation\n\n");
    for (r, samples, marks) in reports {
        let name = &r.scenario;
        let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
        let mut series = Vec::new();
        let n = samples.first().map(|s| s.sessions.len()).unwrap_or(0);
        for dc in 0..n {
            series.push(Series {
                name: if dc == 0 {
                    "sessions at dc1"
                } else {
                    "sessions at dc2"
                },
                color: colors[dc % colors.len()],
                points: samples
                    .iter()
                    .map(|s| (s.t_s, s.sessions[dc] as f64))
                    .collect(),
            });
        }
        series.push(Series {
            name: "trips active",
            color: "#999999",
            points: samples
                .iter()
                .map(|s| (s.t_s, s.trips_active as f64))
                .collect(),
        });
        let markers: Vec<(f64, String)> = marks.iter().map(|m| (m.t_s, m.label.clone())).collect();
        let sessions_svg = line_chart(
            &format!("{name}: active sessions held per datacenter"),
            "time (s)",
            "sessions",
            &series,
            &markers,
        );
        let ops_svg = line_chart(
            &format!("{name}: committed ops per second"),
            "time (s)",
            "ops/s",
            &[Series {
                name: "ops/s",
                color: "#2ca02c",
                points: samples.iter().map(|s| (s.t_s, s.ops_per_s)).collect(),
            }],
            &markers,
        );
        let mut buckets = [0f64; 12];
        for s in &r.stalls_ms {
            let b = ((*s / 500) as usize).min(buckets.len() - 1);
            buckets[b] += 1.0;
        }
        let bars: Vec<(String, f64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let label = if i == buckets.len() - 1 {
                    format!("≥{}s", i as f64 * 0.5)
                } else {
                    format!("{:.1}s", i as f64 * 0.5)
                };
                (label, *v)
            })
            .collect();
        let stall_svg = bar_chart(
            &format!("{name}: app stall per device (kill to first commit after it)"),
            "stall",
            "devices",
            &bars,
        );
        std::fs::write(dir.join(format!("{name}-sessions.svg")), sessions_svg)?;
        std::fs::write(dir.join(format!("{name}-ops.svg")), ops_svg)?;
        std::fs::write(dir.join(format!("{name}-stall.svg")), stall_svg)?;
        md.push_str(&format!(
            "## {name}\n\n```text\n{}```\n\n![sessions]({name}-sessions.svg)\n\n![ops]({name}-ops.svg)\n\n![stall]({name}-stall.svg)\n\n",
            table(r)
        ));
    }
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}
