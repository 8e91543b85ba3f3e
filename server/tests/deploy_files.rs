//! Issue 14 (packaging and dashboards): the files under `deploy/` name only what the real
//! server has. A live `lifeboat-server`, started from `deploy/lifeboat.toml` on loopback, is
//! scraped over HTTP, and:
//!
//! - every metric in every expression of `deploy/prometheus/alerts.yml` and of the Grafana
//!   dashboard `deploy/grafana/lifeboat.json` is one the server exports (or Prometheus's own
//!   `up`), and every `limit="..."` matcher names a limit it reports;
//! - every alert has a section of its name in `docs/OPERATIONS.md` (its runbook);
//! - `deploy/lifeboat.toml` holds exactly the settings `serve --print-config` prints;
//! - the systemd unit's `ExecStart`, and the container file's environment, are accepted by the
//!   server, the container's metrics are reachable from outside it, and its HEALTHCHECK command
//!   passes against the live server and fails against a closed port;
//! - the sysctl drop-in allows the UDP buffer the server asks for by default.
//!
//! A misspelt metric fails the test with the name (checked here on a copy of the alert rules).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Series that Prometheus itself adds for every scrape target, not the server.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-server"));
    // Only what a test gives: a LIFEBOAT_SERVE_* of the caller's environment would change
    // the settings under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("LIFEBOAT_SERVE_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_BACKTRACE", "0");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `serve --print-config` with these arguments and environment, parsed.
fn print_config(args: &[&str], env: &[(String, String)]) -> toml::Table {
    let out = bin()
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve {args:?} --print-config (env {env:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .unwrap_or_else(|e| panic!("--print-config printed no TOML: {e}"))
}

/// A live server; SIGKILLed (and reaped) when dropped, so a failing test leaves none behind.
struct Live {
    child: Child,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a server from `deploy/lifeboat.toml`, with the paths and addresses that are the
/// datacenter's own moved to a temporary directory and loopback by flags (the region must
/// exist: the file says `create_region = false`).
fn start_from_deploy_config() -> Live {
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    let out = bin()
        .args(["init", "--region"])
        .arg(&region)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.path().join("server.log");
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(repo().join("deploy/lifeboat.toml"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--region")
        .arg(&region)
        .arg("--data-dir")
        .arg(dir.path().join("store"))
        .arg("--stats-file")
        .arg(dir.path().join("status.json"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut metrics = None;
    for _ in 0..2 {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            _ => break,
        };
        if let Some(rest) = line.split("serves http://").nth(1) {
            metrics = rest.split("/metrics").next().and_then(|a| a.parse().ok());
        }
    }
    let Some(metrics) = metrics else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the server did not print its metrics address; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Live {
        child,
        metrics,
        log,
        _dir: dir,
    }
}

/// One HTTP/1.1 GET: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

/// What `/metrics` exports: every family it declares (`# TYPE`; a family may have no sample
/// yet, e.g. sessions by key on an empty datacenter), and the values of each label.
struct Exported {
    families: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn scrape(live: &Live) -> Exported {
    let start = Instant::now();
    let text = loop {
        // 503 until the first status snapshot (within 500 ms of the start).
        match get(live.metrics, "/metrics") {
            Ok((200, body)) => break body,
            other => assert!(
                start.elapsed() < Duration::from_secs(15),
                "no /metrics from {}: {other:?}; log:\n{}",
                live.metrics,
                std::fs::read_to_string(&live.log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut families = BTreeSet::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let Some(name) = words.next() {
                families.insert(name.to_string());
                // A histogram's samples are its name with these suffixes (what queries name).
                if words.next() == Some("histogram") {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        families.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                families.contains(name),
                "sample before its # TYPE line: {line}"
            );
            if let Some((_, l)) = line.split_once('{') {
                let l = l.split('}').next().unwrap_or_default();
                for pair in l.split(',') {
                    if let Some((k, v)) = pair.split_once('=') {
                        let v = v.trim_matches('"').to_string();
                        labels.entry(k.to_string()).or_default().insert(v);
                    }
                }
            }
        }
    }
    assert!(
        families.contains("lifeboat_ready"),
        "not a Lifeboat page:\n{text}"
    );
    Exported { families, labels }
}

// --- PromQL: the metric names of an expression ---------------------------------------------

/// Aggregation operators: never metrics, whether or not `(` follows at once (`sum by (dc) (..)`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// `text` without its quoted strings and the contents of `{..}` (label matchers) and
/// `[..]` (ranges), which name no metric.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    let mut depth = (0usize, 0usize); // {} and []
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // Skip to the closing quote (backslash escapes one character).
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' => depth.0 += 1,
            '}' => depth.0 = depth.0.saturating_sub(1),
            '[' => depth.1 += 1,
            ']' => depth.1 = depth.1.saturating_sub(1),
            _ if depth.0 > 0 || depth.1 > 0 => {}
            _ => out.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            out.push(' ');
        }
    }
    out
}

/// The metric names `expr` reads (PromQL, or Grafana's `label_values(metric, label)`).
fn metric_names(expr: &str) -> Vec<String> {
    let s = strip(expr);
    let b = s.as_bytes();
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'$' {
            // A Grafana variable ($dc, $__rate_interval).
            i += 1;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // A number or a duration (5m, 1e3).
            while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if ident_start(c) {
            let from = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &s[from..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == b'(';
            if LABEL_LISTS.contains(&word) {
                if call {
                    // Skip the label names.
                    while j < b.len() && b[j] != b')' {
                        j += 1;
                    }
                    i = j;
                }
            } else if word == "label_values" && call {
                // Grafana: label_values(metric, label) or label_values(label).
                let args = s[j + 1..].split(')').next().unwrap_or_default();
                let parts: Vec<&str> = args.split(',').map(str::trim).collect();
                if parts.len() == 2 {
                    names.push(parts[0].to_string());
                }
                i = j + 1 + args.len();
            } else if !call && !AGGREGATIONS.contains(&word) && !KEYWORDS.contains(&word) {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The values `expr` matches the label `label` with (`label="v"` or `label!="v"`).
fn label_values_matched(expr: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for op in ["=\"", "!=\""] {
        let pat = format!("{label}{op}");
        for (at, _) in expr.match_indices(&pat) {
            // Not the tail of a longer label name (`my_limit="x"`).
            let before = expr[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &expr[at + pat.len()..];
            if let Some(v) = rest.split('"').next() {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// What is wrong with the expressions (`where`, expr) against what the server exports: one
/// line per unknown metric or limit, naming it.
fn check_exprs(exprs: &[(String, String)], exported: &Exported) -> Vec<String> {
    let limits = exported.labels.get("limit").cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    for (place, expr) in exprs {
        let names = metric_names(expr);
        if names.is_empty() {
            wrong.push(format!("{place}: no metric found in `{expr}`"));
        }
        for n in names {
            if !exported.families.contains(&n) && !PROMETHEUS_OWN.contains(&n.as_str()) {
                wrong.push(format!(
                    "{place}: `{n}` is not a metric lifeboat-server exports (in `{expr}`)"
                ));
            }
        }
        for v in label_values_matched(expr, "limit") {
            if !limits.contains(&v) {
                wrong.push(format!(
                    "{place}: limit=\"{v}\" is not a limit the server reports (it has {limits:?})"
                ));
            }
        }
    }
    wrong
}

// --- The files ----------------------------------------------------------------------------

/// Every alert of a Prometheus rule file: (name, expr). Panics on a malformed file.
fn alert_rules(yaml: &str) -> Vec<(String, String)> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(yaml).unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    let doc = docs.first().expect("alerts.yml is empty");
    let groups = doc["groups"]
        .as_vec()
        .expect("alerts.yml: no `groups` list");
    let mut rules = Vec::new();
    for g in groups {
        let name = g["name"].as_str().expect("a group without a name");
        for r in g["rules"].as_vec().expect("a group without `rules`") {
            let alert = r["alert"].as_str().unwrap_or_else(|| {
                panic!(
                    "group {name}: a rule without `alert` (recording rules are not expected here)"
                )
            });
            let expr = match &r["expr"] {
                Yaml::String(s) => s.clone(),
                other => panic!("{alert}: `expr` is not a string: {other:?}"),
            };
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{alert}: no severity label"
            );
            rules.push((alert.to_string(), expr));
        }
    }
    assert!(!rules.is_empty(), "alerts.yml has no alert");
    rules
}

/// Every query of a Grafana dashboard: the `expr` of every panel target (rows' nested panels
/// included) and the query of every templating variable of type `query`.
fn dashboard_queries(json: &str) -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("lifeboat.json: {e}"));
    fn panels(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            if p["type"] != "row" {
                let targets = p["targets"].as_array().map_or(&[][..], |t| &t[..]);
                assert!(!targets.is_empty(), "panel `{title}` has no query");
                for t in targets {
                    let expr = t["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel `{title}`: a target without `expr`"));
                    out.push((format!("panel `{title}`"), expr.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default();
            out.push((format!("variable `{}`", v["name"]), q.to_string()));
        }
    }
    assert!(out.len() > 10, "the dashboard has few queries: {out:?}");
    out
}

/// The lines of a Dockerfile-style file with their `\` continuations joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

#[test]
fn the_promql_reader_finds_metrics_and_skips_functions_labels_and_variables() {
    let got = metric_names(
        r#"sum by (dc, limit) (rate(lifeboat_limit_hits_total{limit!="idle_timeout", dc=~"$dc"}[$__rate_interval])) > 0
           unless on (dc, key) count_values by (dc) ("key", lifeboat_keyring_active_key) or up == 0 offset 5m"#,
    );
    assert_eq!(
        got,
        [
            "lifeboat_limit_hits_total",
            "lifeboat_keyring_active_key",
            "up"
        ]
    );
    assert_eq!(
        metric_names("label_values(lifeboat_ready, dc)"),
        ["lifeboat_ready"]
    );
    assert_eq!(
        label_values_matched(
            r#"x{limit="sessions", my_limit="no", limit!="idle_timeout"}"#,
            "limit"
        ),
        ["sessions", "idle_timeout"]
    );
}

/// Issue 14: the alert rules, the dashboard, the config file, the unit, the container file
/// and the sysctl drop-in against a live server started from the config file.
#[test]
fn deploy_files_name_only_what_the_live_server_has() {
    let live = start_from_deploy_config();
    let exported = scrape(&live);

    // Alert rules: real metrics, and a runbook section for each alert.
    let rules = alert_rules(&read("deploy/prometheus/alerts.yml"));
    let ops = read("docs/OPERATIONS.md");
    let headings: BTreeSet<&str> = ops
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect();
    let mut wrong = check_exprs(&rules, &exported);
    for (alert, _) in &rules {
        if !headings.contains(alert.as_str()) {
            wrong.push(format!(
                "alert {alert}: no section `{alert}` in docs/OPERATIONS.md (its runbook)"
            ));
        }
    }
    // The dashboard.
    let queries = dashboard_queries(&read("deploy/grafana/lifeboat.json"));
    wrong.extend(check_exprs(&queries, &exported));
    assert!(
        wrong.is_empty(),
        "deploy files name what the server does not have:\n{}\nexported: {:?}",
        wrong.join("\n"),
        exported.families
    );

    // The check can fail: a misspelt metric in a copy of the rules is named.
    let typo: Vec<(String, String)> = rules
        .iter()
        .map(|(a, e)| {
            (
                a.clone(),
                e.replace("lifeboat_store_errors_total", "lifeboat_store_error_total"),
            )
        })
        .collect();
    let caught = check_exprs(&typo, &exported).join("\n");
    assert!(
        caught.contains("`lifeboat_store_error_total` is not a metric"),
        "a misspelt metric was not caught: {caught:?}"
    );

    // The container's HEALTHCHECK command, against the live server and a closed port.
    let container = read("deploy/Containerfile");
    let steps = instructions(&container);
    let health = steps
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("no HEALTHCHECK in deploy/Containerfile");
    let argv: Vec<String> = serde_json::from_str(
        health
            .split_once(" CMD ")
            .expect("HEALTHCHECK ... CMD [..]")
            .1
            .trim(),
    )
    .expect("the HEALTHCHECK command is an exec-form JSON array");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound, then dropped: nothing listens there
    let run_health = |port: u16| {
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.replace("/127.0.0.1/5433", &format!("/127.0.0.1/{port}")))
            .collect();
        Command::new(&argv[0])
            .args(&argv[1..])
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(
        argv.iter().any(|a| a.contains("/127.0.0.1/5433")),
        "the HEALTHCHECK does not probe 127.0.0.1:5433: {argv:?}"
    );
    assert!(
        run_health(live.metrics.port()).success(),
        "the HEALTHCHECK command fails against a live server: {argv:?}"
    );
    assert!(
        !run_health(closed).success(),
        "the HEALTHCHECK command passes with nothing listening"
    );
    drop(live);

    // The container's environment is a valid configuration, with metrics reachable from
    // outside the container, on the ports it exposes.
    let mut env = Vec::new();
    for step in steps.iter().filter(|l| l.starts_with("ENV ")) {
        for pair in step["ENV ".len()..].split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {pair}: use KEY=VALUE"));
            env.push((k.to_string(), v.to_string()));
        }
    }
    assert!(
        env.iter()
            .any(|(k, _)| k == "LIFEBOAT_SERVE_METRICS_LISTEN"),
        "the container does not set metrics_listen (auto is its own loopback)"
    );
    let c = print_config(&[], &env);
    let metrics: SocketAddr = c["metrics_listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("container metrics_listen {:?}", c["metrics_listen"]));
    assert!(
        metrics.ip().is_unspecified(),
        "container metrics on {metrics}: unreachable from outside the container"
    );
    let listen: SocketAddr = c["listen"].as_str().unwrap().parse().unwrap();
    let expose = steps
        .iter()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("no EXPOSE");
    for port in [
        format!("{}/udp", listen.port()),
        format!("{}/tcp", metrics.port()),
    ] {
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "{expose}: {port} not exposed"
        );
    }
    assert_eq!(c["create_region"].as_bool(), Some(false), "{c:?}");

    // deploy/lifeboat.toml is exactly the settings the server prints for it: every key is a
    // real one (the server refuses others) and none is missing (a new setting fails here).
    let file = repo().join("deploy/lifeboat.toml");
    let file_arg = file.to_str().unwrap();
    let printed = print_config(&["--config", file_arg], &[]);
    let written: toml::Table = read("deploy/lifeboat.toml").parse().unwrap();
    let differ: Vec<String> = printed
        .keys()
        .chain(written.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| printed.get(*k) != written.get(*k))
        .map(|k| {
            format!(
                "{k}: printed {:?}, file {:?}",
                printed.get(k),
                written.get(k)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "deploy/lifeboat.toml differs from `serve --config deploy/lifeboat.toml --print-config`:\n{}",
        differ.join("\n")
    );

    // The systemd unit starts `serve` with arguments the server accepts.
    let unit = read("deploy/systemd/lifeboat-server.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("no ExecStart");
    let mut args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args.first(), Some(&"serve"), "{exec}");
    args.remove(0);
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("ExecStart without --config")
        + 1;
    args[at] = file_arg; // the unit's file is deploy/lifeboat.toml, installed
    print_config(&args, &[]);
    assert!(
        !unit.lines().any(|l| l.trim() == "Type=notify"),
        "Type=notify: the server does not call sd_notify"
    );

    // The sysctl drop-in allows at least the UDP buffer the server asks for by default.
    let asked = print_config(&[], &[])["udp_buffer_bytes"]
        .as_integer()
        .expect("udp_buffer_bytes");
    let sysctl = read("deploy/systemd/99-lifeboat.conf");
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        let v: i64 = sysctl
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_start_matches('=').trim().parse().ok())
            .unwrap_or_else(|| panic!("99-lifeboat.conf sets no {key}"));
        assert!(v >= asked, "{key} = {v} < udp_buffer_bytes {asked}");
    }
}

/// With `promtool` installed (Debian's `prometheus` package), the rules must pass its syntax
/// check and the unit tests of `deploy/prometheus/alerts_test.yml`. Without it: skipped,
/// said, unless `LIFEBOAT_REQUIRE_PROMTOOL=1` (CI installs it and sets that), which fails.
#[test]
fn alert_rules_pass_promtool_when_it_is_installed() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        let required = std::env::var("LIFEBOAT_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "LIFEBOAT_REQUIRE_PROMTOOL=1 but promtool is not installed (apt-get install prometheus)"
        );
        println!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    };
    assert!(out.status.success());
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
