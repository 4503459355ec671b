//! The Grafana dashboard and the alert rules against real data: a real Prometheus server
//! scrapes a daemon streaming a writing app, and every panel's and every rule's expression is
//! evaluated through its HTTP API. An expression that returns nothing is a broken panel; each
//! must return what the daemon's state implies.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A Prometheus server scraping one target every second, with the repository's alert rules.
struct Prometheus {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sqlite2pg\n    static_configs:\n      - targets: [\"{target}\"]\n",
                root.join("deploy/sqlite2pg.rules.yml").display()
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus is missing: apt-get install prometheus (scripts/test installs it)");
        let p = Prometheus { child, addr, log };
        wait_until("Prometheus ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&p.addr).is_ok() && http_get(&p.addr, "/-/ready").0 == 200
        });
        p
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path);
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// The instant vector `expr` evaluates to now: (labels, value) per series.
    fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap();
                let v = match v {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap(),
                };
                (s["metric"].clone(), v)
            })
            .collect()
    }

    /// Waits until `expr` returns series that `ok` accepts.
    fn wait_for(&self, expr: &str, ok: impl Fn(&[(Value, f64)]) -> bool) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(expr);
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} never returned what was expected; last: {r:?}\nPrometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel of the dashboard: (title, expression).
fn panels() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/sqlite2pg.json")).unwrap(),
    )
    .unwrap();
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// The vector selectors inside a PromQL expression (metric name and label matchers).
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        rest = &rest[end..];
        if !(name.starts_with("sqlite2pg_") || name == "up") {
            continue;
        }
        let mut sel = name.to_string();
        if let Some(matchers) = rest.strip_prefix('{') {
            let close = matchers.find('}').unwrap();
            sel.push_str(&rest[..close + 2]);
            rest = &matchers[close + 1..];
        }
        out.push(sel);
    }
    out
}

fn one(r: &[(Value, f64)], what: &str) -> f64 {
    assert_eq!(r.len(), 1, "{what}: want one series, got {r:?}");
    r[0].1
}

fn all(r: &[(Value, f64)], what: &str, ok: impl Fn(f64) -> bool) {
    assert!(!r.is_empty(), "{what}: no series");
    assert!(r.iter().all(|(_, v)| ok(*v)), "{what}: {r:?}");
}

/// What each panel must show for a daemon streaming a writing app, caught up.
fn check_panel(title: &str, expr: &str, r: &[(Value, f64)]) {
    let what = format!("panel {title:?} ({expr})");
    match expr {
        "max by (phase) (sqlite2pg_phase) == 1" => {
            one(r, &what);
            assert_eq!(r[0].0["phase"], "streaming", "{what}: {r:?}");
        }
        "sqlite2pg_replication_lag_seconds" => {
            let v = one(r, &what);
            assert!((0.0..5.0).contains(&v), "{what}: lag {v} s while caught up");
        }
        "sqlite2pg_replication_lag_changes" | "sqlite2pg_changelog_pending_rows" => {
            let v = one(r, &what);
            assert!(
                (0.0..500.0).contains(&v),
                "{what}: {v} behind while caught up"
            );
        }
        "sqlite2pg_cutover_window_seconds" => {
            assert_eq!(one(r, &what), 0.0, "{what}: no cutover yet");
        }
        "sum by (table, operation) (rate(sqlite2pg_changes_applied_total[1m]))" => {
            assert!(
                r.iter()
                    .any(|(l, v)| l["operation"] == "upsert" && *v > 0.0),
                "{what}: nothing applied while the app writes: {r:?}"
            );
        }
        "sqlite2pg_snapshot_rows_copied / sqlite2pg_snapshot_source_rows" => {
            assert!(r.len() >= 5, "{what}: one series per table: {r:?}");
            all(r, &what, |v| v == 1.0);
        }
        // Before the quantiles: the fleet row has one.
        e if e.contains("sqlite2pg_fleet_") || e.contains("sqlite2pg_tenant_") => {
            single_daemon_fleet_row(e, r, &what);
        }
        e if e.starts_with("histogram_quantile(") => {
            let v = one(r, &what);
            assert!(v > 0.0 && v < 5.0, "{what}: batch latency {v} s");
        }
        "rate(sqlite2pg_apply_batch_changes_sum[5m]) / rate(sqlite2pg_apply_batch_changes_count[5m])" =>
        {
            assert!(one(r, &what) >= 1.0, "{what}: {r:?}");
        }
        "sum by (kind) (increase(sqlite2pg_errors_total[5m]))" => {
            assert!(
                r.len() >= 3,
                "{what}: a series per kind, zeros included: {r:?}"
            );
            all(r, &what, |v| v == 0.0);
        }
        "increase(sqlite2pg_postgres_reconnects_total[5m])" => {
            assert_eq!(one(r, &what), 0.0, "{what}");
        }
        "sqlite2pg_position" => {
            assert!(one(r, &what) > 0.0, "{what}: {r:?}");
        }
        "max by (kind) (sqlite2pg_needs_operator)" => {
            assert_eq!(r.len(), 3, "{what}: one series per kind: {r:?}");
            all(r, &what, |v| v == 0.0);
        }
        "sqlite2pg_fence_active" => {
            assert_eq!(one(r, &what), 0.0, "{what}");
        }
        "max by (direction) (sqlite2pg_replication_direction) == 1" => {
            one(r, &what);
            assert_eq!(r[0].0["direction"], "forward", "{what}: {r:?}");
        }
        "sqlite2pg_reverse_lag_seconds" | "sqlite2pg_reverse_lag_changes" => {
            assert_eq!(one(r, &what), 0.0, "{what}: no cutover yet");
        }
        other => panic!(
            "panel {title:?} has an expression this test has no expectation for: {other}; add one here"
        ),
    }
}

/// The fleet row's panel of waits for a pooled session.
const SESSION_WAIT_P99: &str =
    "histogram_quantile(0.99, sum by (le) (rate(sqlite2pg_fleet_session_wait_seconds_bucket[5m])))";

/// A single-file daemon is no fleet: its fleet row is zeros and empty panels.
fn single_daemon_fleet_row(expr: &str, r: &[(Value, f64)], what: &str) {
    match expr {
        "sqlite2pg_fleet_tenants" => {
            assert_eq!(r.len(), 3, "{what}: running, paused, failed: {r:?}");
            all(r, what, |v| v == 0.0);
        }
        "sqlite2pg_fleet_connections" => {
            assert_eq!(r.len(), 3, "{what}: in use, idle, waiting: {r:?}");
            all(r, what, |v| v == 0.0);
        }
        // No session was waited for: no quantile (NaN), or no rate yet.
        SESSION_WAIT_P99 => {
            assert!(
                r.len() <= 1 && r.iter().all(|(_, v)| v.is_nan()),
                "{what}: {r:?}"
            );
        }
        _ => assert!(
            r.is_empty(),
            "{what}: no tenant in a single-file daemon: {r:?}"
        ),
    }
}

/// What each panel must show after the cutover, the daemon following Postgres back, caught
/// up.
fn check_panel_reverse(title: &str, expr: &str, r: &[(Value, f64)]) {
    let what = format!("panel {title:?} ({expr}) after the cutover");
    match expr {
        "max by (phase) (sqlite2pg_phase) == 1" => {
            one(r, &what);
            assert_eq!(r[0].0["phase"], "reverse_streaming", "{what}: {r:?}");
        }
        "max by (direction) (sqlite2pg_replication_direction) == 1" => {
            one(r, &what);
            assert_eq!(r[0].0["direction"], "reverse", "{what}: {r:?}");
        }
        "sqlite2pg_reverse_lag_seconds" => {
            let v = one(r, &what);
            assert!((0.0..5.0).contains(&v), "{what}: lag {v} s while caught up");
        }
        "sqlite2pg_reverse_lag_changes" => {
            assert_eq!(one(r, &what), 0.0, "{what}: behind while caught up");
        }
        "sqlite2pg_cutover_window_seconds" => {
            let v = one(r, &what);
            assert!(v > 0.0 && v < 5.0, "{what}: window {v} s");
        }
        // SQLite stays fenced for good: the app writes on Postgres now.
        "sqlite2pg_fence_active" => {
            assert_eq!(one(r, &what), 1.0, "{what}");
        }
        "sqlite2pg_replication_lag_seconds" => {
            let v = one(r, &what);
            assert!(
                (0.0..5.0).contains(&v),
                "{what}: the forward lag must not grow once the forward stream is done: {v} s"
            );
        }
        "max by (kind) (sqlite2pg_needs_operator)" => {
            assert_eq!(r.len(), 3, "{what}: one series per kind: {r:?}");
            all(r, &what, |v| v == 0.0);
        }
        "increase(sqlite2pg_postgres_reconnects_total[5m])" => {
            assert_eq!(one(r, &what), 0.0, "{what}");
        }
        e if e.contains("sqlite2pg_fleet_") || e.contains("sqlite2pg_tenant_") => {
            single_daemon_fleet_row(e, r, &what);
        }
        // The forward stream's own panels keep its last values: present, not checked again.
        _ => assert!(!r.is_empty(), "{what}: no series"),
    }
}

#[test]
fn every_panel_and_alert_rule_returns_what_the_daemon_state_implies_on_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_with(&path, &db, &[], &["--metrics-addr", &metrics]);
    let prom = Prometheus::start(dir.path(), &metrics);
    d.wait_caught_up();
    let writer = start_writer(&path, 15.0, 50.0);
    // Scrapes while the app writes, enough for every rate() window to hold several.
    prom.wait_for("up{job=\"sqlite2pg\"}", |r| r.len() == 1 && r[0].1 == 1.0);
    std::thread::sleep(Duration::from_secs(8));
    prom.wait_for("sqlite2pg_replication_lag_seconds < 5", |r| r.len() == 1);

    let panels = panels();
    assert!(
        panels.len() >= 10,
        "the dashboard lost its panels: {panels:?}"
    );
    for (title, expr) in &panels {
        let r = prom.query(expr);
        check_panel(title, expr, &r);
    }

    // Every alert rule loaded, evaluates without error, and none fires for a healthy daemon.
    let rules_file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sqlite2pg.rules.yml"),
    )
    .unwrap();
    let declared = rules_file.matches("- alert:").count();
    let data = prom.wait_for_rules(declared);
    let rules: Vec<Value> = data["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(rules.len(), declared, "{data}");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        let query = rule["query"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "rule {name}: {rule}");
        assert_eq!(
            rule["state"], "inactive",
            "rule {name} fires for a healthy daemon: {rule}"
        );
        assert!(
            prom.query(query).is_empty(),
            "rule {name} matches a healthy daemon"
        );
        // Each series the rule reads exists: a misspelt name or label would never fire.
        for sel in selectors(query) {
            assert!(
                !prom.query(&sel).is_empty(),
                "rule {name}: {sel} returns nothing from a real scrape"
            );
        }
    }
    let rule = |name: &str| {
        rules
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("rule {name} is gone"))["query"]
            .as_str()
            .unwrap()
            .to_string()
    };
    finish_writer(writer);

    // A value Postgres rejects: the daemon waits for a person, and the panels and the rule
    // say so; fixed in SQLite, it goes on by itself.
    db.client()
        .batch_execute(
            "ALTER TABLE counters ADD CONSTRAINT hits_below_a_million CHECK (hits < 1000000) NOT VALID",
        )
        .unwrap();
    sqlite3_shell(&path, "UPDATE counters SET hits = 5000000 WHERE id = 1");
    let r = prom.wait_for(&rule("Sqlite2pgNeedsOperator"), |r| r.len() == 1);
    assert_eq!(r[0].1, 1.0, "{r:?}");
    let phase = prom.query("max by (phase) (sqlite2pg_phase) == 1");
    assert_eq!(phase.len(), 1, "{phase:?}");
    assert_eq!(phase[0].0["phase"], "waiting", "{phase:?}");
    sqlite3_shell(&path, "UPDATE counters SET hits = 1 WHERE id = 1");
    prom.wait_for("max by (kind) (sqlite2pg_needs_operator)", |r| {
        r.len() == 3 && r.iter().all(|(_, v)| *v == 0.0)
    });

    // After the cutover the same daemon follows Postgres back: the panels show the reverse
    // direction and its lag, and no rule fires for a healthy reverse stream.
    let p = path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover: {}", text(&out));
    d.wait_for_log("following Postgres back into SQLite");
    db.client()
        .batch_execute("UPDATE counters SET hits = hits + 1")
        .unwrap();
    prom.wait_for(
        "max by (direction) (sqlite2pg_replication_direction) == 1",
        |r| r.len() == 1 && r[0].0["direction"] == "reverse",
    );
    prom.wait_for("sqlite2pg_reverse_lag_changes", |r| {
        r.len() == 1 && r[0].1 == 0.0
    });
    // Rates over windows that began before the cutover settle first.
    std::thread::sleep(Duration::from_secs(3));
    for (title, expr) in &panels {
        let r = prom.query(expr);
        check_panel_reverse(title, expr, &r);
    }
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        if name == "Sqlite2pgErrors" {
            // The CHECK above counted one error in the last 10 minutes.
            continue;
        }
        let query = rule["query"].as_str().unwrap();
        assert!(
            prom.query(query).is_empty(),
            "rule {name} matches a healthy reverse stream: {:?}",
            prom.query(query)
        );
    }

    // The daemon gone: the rule that pages for it matches.
    d.kill9();
    prom.wait_for(&rule("Sqlite2pgDaemonDown"), |r| !r.is_empty());
}

impl Prometheus {
    /// The rules API once the group holds `n` rules that have been evaluated.
    fn wait_for_rules(&self, n: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let data = self.api("/api/v1/rules");
            let evaluated = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| {
                    r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
                })
                .count();
            if evaluated >= n {
                return data;
            }
            assert!(Instant::now() < deadline, "rules never evaluated: {data}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn selectors_are_found_with_their_label_matchers() {
    assert_eq!(
        selectors("up{job=\"sqlite2pg\"} == 0 or absent(sqlite2pg_build_info)"),
        ["up{job=\"sqlite2pg\"}", "sqlite2pg_build_info"]
    );
    assert_eq!(
        selectors(
            "sqlite2pg_phase{phase=\"snapshot\"} == 1 and sum(delta(sqlite2pg_snapshot_rows_copied[10m])) == 0"
        ),
        [
            "sqlite2pg_phase{phase=\"snapshot\"}",
            "sqlite2pg_snapshot_rows_copied"
        ]
    );
    assert_eq!(
        selectors("increase(sqlite2pg_errors_total[10m]) > 0"),
        ["sqlite2pg_errors_total"]
    );
}

/// Every alert rule has `promtool test rules` cases (deploy/sqlite2pg.rules.test.yml, run by
/// scripts/test): at least one where it fires and one where it stays quiet.
#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/sqlite2pg.rules.yml")).unwrap();
    let cases = std::fs::read_to_string(root.join("deploy/sqlite2pg.rules.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let quiet = cases
            .lines()
            .any(|l| l.contains(&format!("alertname: {name},")) && l.contains("exp_alerts: []"));
        let fires =
            cases.lines().collect::<Vec<_>>().windows(2).any(|w| {
                w[0].trim() == format!("alertname: {name}") && w[1].trim() == "exp_alerts:"
            });
        assert!(
            quiet && fires,
            "alert {name}: quiet case {quiet}, firing case {fires}"
        );
    }
}

/// The fleet row of the dashboard for a fleet's daemon: each panel on a real Prometheus,
/// while every tenant streams, then while one tenant waits for a person and the others go on.
#[test]
fn the_fleet_row_shows_a_fleet_daemon_and_the_tenant_that_waits_on_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    let names = ["t1", "t2", "t3", "t4"];
    for n in names {
        rusqlite::Connection::open(tenants.join(format!("{n}.db")))
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode = wal;
                 CREATE TABLE counters (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL);
                 INSERT INTO counters VALUES (1, 0), (2, 0);",
            )
            .unwrap();
    }
    let db = TestDb::new();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(
        &cfg,
        format!(
            "target = {:?}\n\n[fleet]\nfiles = {:?}\n",
            db.url,
            format!("{}/*.db", tenants.display())
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_fleet(
        &cfg,
        &db,
        &["--metrics-addr", &metrics, "--max-connections", "4"],
    );
    let prom = Prometheus::start(dir.path(), &metrics);
    for n in names {
        let path = tenants.join(format!("{n}.db"));
        wait_until(
            &format!("tenant {n} to catch up"),
            Duration::from_secs(60),
            || caught_up(&path, &db.url, n),
        );
    }
    prom.wait_for("sum by (phase) (sqlite2pg_tenant_phase)", |r| {
        r.len() == 1 && r[0].0["phase"] == "streaming" && r[0].1 == 4.0
    });
    let fleet: Vec<(String, String)> = panels()
        .into_iter()
        .filter(|(title, _)| title.starts_with("Fleet: "))
        .collect();
    assert_eq!(fleet.len(), 6, "the fleet row lost panels: {fleet:?}");
    for (title, expr) in &fleet {
        let r = if expr.contains("rate(") {
            // A rate needs two scrapes.
            prom.wait_for(expr, |r| r.len() == 1)
        } else {
            prom.query(expr)
        };
        let what = format!("panel {title:?} ({expr})");
        match expr.as_str() {
            "sqlite2pg_fleet_tenants" => {
                for (state, n) in [("running", 4.0), ("paused", 0.0), ("failed", 0.0)] {
                    assert!(
                        r.iter().any(|(l, v)| l["state"] == state && *v == n),
                        "{what}: {state} should be {n}: {r:?}"
                    );
                }
            }
            "sqlite2pg_fleet_connections" => {
                let used = r.iter().find(|(l, _)| l["state"] == "in_use");
                assert!(
                    used.is_some_and(|(_, v)| *v >= 1.0 && *v <= 4.0),
                    "{what}: {r:?}"
                );
            }
            "sum by (phase) (sqlite2pg_tenant_phase)" => {}
            "topk(5, sqlite2pg_tenant_lag_seconds)" => {
                assert_eq!(r.len(), 4, "{what}: one series per tenant: {r:?}");
                all(&r, &what, |v| (0.0..5.0).contains(&v));
            }
            "sqlite2pg_tenant_needs_operator == 1" => {
                assert!(r.is_empty(), "{what}: nobody waits: {r:?}");
            }
            // Four tenants on two sessions: a wait of up to a few seconds, or none (NaN).
            SESSION_WAIT_P99 => {
                all(&r, &what, |v| v.is_nan() || (0.0..=10.0).contains(&v));
            }
            other => panic!("{title:?}: no expectation for {other}; add one here"),
        }
    }
    // A value Postgres refuses in t2: t2 waits for a person, the others stream on.
    db.client()
        .batch_execute(
            "ALTER TABLE tenant_t2.counters ADD CONSTRAINT below_a_million CHECK (hits < 1000000) NOT VALID",
        )
        .unwrap();
    sqlite3_shell(
        &tenants.join("t2.db"),
        "UPDATE counters SET hits = 5000000 WHERE id = 1",
    );
    let waiting = prom.wait_for("sqlite2pg_tenant_needs_operator == 1", |r| r.len() == 1);
    assert_eq!(waiting[0].0["tenant"], "t2", "{waiting:?}");
    // What the single-file scrape cannot show (tests/metrics.rs leaves it to this test).
    let (_, scrape) = http_get(&metrics, "/metrics");
    for name in [
        sqlite2pg::metrics::TENANT_PHASE,
        sqlite2pg::metrics::TENANT_LAG_SECONDS,
        sqlite2pg::metrics::TENANT_NEEDS_OPERATOR,
    ] {
        assert!(
            scrape.contains(&format!("\n{name}{{")),
            "{name} is not in the fleet's scrape"
        );
    }
    sqlite3_shell(&tenants.join("t3.db"), "UPDATE counters SET hits = 7");
    let t3 = tenants.join("t3.db");
    wait_until("t3 to go on beside t2", Duration::from_secs(30), || {
        caught_up(&t3, &db.url, "t3")
    });
    sqlite3_shell(
        &tenants.join("t2.db"),
        "UPDATE counters SET hits = 1 WHERE id = 1",
    );
    prom.wait_for("sqlite2pg_tenant_needs_operator == 1", |r| r.is_empty());
    assert!(d.stop());
}
