//! Metrics: the series exist and move while the app writes; /healthz; promtool accepts the
//! scrape; the dashboard and alert rules use only exported names; no password anywhere.

mod common;

use common::*;

fn promtool() -> &'static str {
    let ok = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "promtool is missing: apt-get install prometheus (scripts/test installs it)"
    );
    "promtool"
}

#[test]
fn metrics_exist_and_move_while_the_app_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_with(&path, &db, &[], &["--metrics-addr", &addr]);
    d.wait_caught_up();
    let (code, first) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let writer = start_writer(&path, 4.0, 100.0);
    finish_writer(writer);
    d.wait_caught_up();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, second) = http_get(&addr, "/metrics");
    // The series exist and move.
    assert_eq!(
        metric_value(&second, "sqlite2pg_phase{phase=\"streaming\"}"),
        Some(1.0),
        "{second}"
    );
    assert_eq!(
        metric_value(&second, "sqlite2pg_snapshot_rows_copied{table=\"tasks\"}"),
        Some(600.0)
    );
    assert_eq!(
        metric_value(&second, "sqlite2pg_snapshot_source_rows{table=\"tasks\"}"),
        Some(600.0)
    );
    let applied = |s: &str| {
        metric_value(
            s,
            "sqlite2pg_changes_applied_total{operation=\"upsert\",table=\"counters\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(
        applied(&second) > applied(&first),
        "applied changes should grow:\n{second}"
    );
    assert!(
        metric_value(&second, "sqlite2pg_position").unwrap()
            > metric_value(&first, "sqlite2pg_position").unwrap_or(0.0)
    );
    assert!(metric_value(&second, "sqlite2pg_replication_lag_seconds").is_some());
    assert!(metric_value(&second, "sqlite2pg_replication_lag_changes").is_some());
    assert!(metric_value(&second, "sqlite2pg_apply_batch_duration_seconds_count").unwrap() > 0.0);
    assert_eq!(
        metric_value(
            &second,
            &format!(
                "sqlite2pg_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    // promtool accepts the exposition.
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(second.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}",
        text(&out)
    );
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    // Every metric name the dashboard and the alert rules use is one the daemon exports.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard =
        std::fs::read_to_string(root.join("grafana/dashboards/sqlite2pg.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("deploy/sqlite2pg.rules.yml")).unwrap();
    let mut used = Vec::new();
    for text in [&dashboard, &rules] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("sqlite2pg_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.push(name);
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            sqlite2pg::metrics::ALL.contains(&base),
            "{name} is used but not defined in src/metrics.rs"
        );
        // Per-tenant series exist only in a fleet's daemon: tests/dashboard.rs scrapes one.
        if base.starts_with("sqlite2pg_tenant_") {
            continue;
        }
        assert!(
            second.contains(&format!("\n{name}")) || second.contains(&format!("# TYPE {base} ")),
            "{name} is not in a real scrape"
        );
    }
    // No secret anywhere: the target URL carries the password.
    let status = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "status",
    ]);
    for (what, t) in [
        ("metrics", second.clone()),
        ("daemon log", d.log_text()),
        ("status", text(&status)),
    ] {
        assert!(!t.contains(PASSWORD), "the password leaked into the {what}");
    }
    assert!(d.stop());
}
