//! After the cutover the app writes on Postgres; the reverse stream follows it back into the
//! SQLite file (killed with -9 now and then), and `fallback` hands SQLite back to the app
//! without losing a write: both sides equal, every value the app reads back as it was, and no
//! app transaction failed outside the two windows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// A small seeded generator for kill moments (the seed is printed, so a failure replays).
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("kill-moment seed: {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn backup(from: &Path, to: &Path) {
    let out = std::process::Command::new("sqlite3")
        .arg(from)
        .arg(format!(".backup '{}'", to.display()))
        .output()
        .expect("run sqlite3");
    assert!(out.status.success(), "{}", text(&out));
}

/// Every row of every app table, each value as `typeof:quote(value)`, by table and key.
fn raw_rows(path: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = BTreeMap::new();
    for (table, key) in [
        ("user", "id"),
        ("projects", "id"),
        ("tasks", "id"),
        ("counters", "id"),
        ("memberships", "user_id || ',' || project_id"),
    ] {
        let cols: Vec<String> = c
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let values: Vec<String> = cols
            .iter()
            .map(|c| format!("typeof(\"{c}\") || ':' || quote(\"{c}\")"))
            .collect();
        let sql = format!(
            "SELECT {key}, {} FROM \"{table}\"",
            values.join(" || '|' || ")
        );
        let mut st = c.prepare(&sql).unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, rusqlite::types::Value>(0)?,
                    r.get::<_, String>(1)?,
                ))
            })
            .unwrap();
        for r in rows {
            let (k, v) = r.unwrap();
            let k = match k {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            };
            out.insert(
                (table.to_string(), k),
                v.split('|').map(str::to_string).collect(),
            );
        }
    }
    out
}

/// The shape of a value's text: digits as 9, so that `2025-01-01 09:30:00.000000` and
/// `2024-05-01 12:00:00.123456` look alike and `2025-01-01T09:30:00` does not.
fn shape(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect()
}

#[test]
fn the_app_writes_on_postgres_then_falls_back_to_sqlite_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    let p = path.to_str().unwrap();
    app(&["seed", p, "300", "wal"]);
    let db = TestDb::new();
    app(&["alembic", &db.url]);
    let master_before = sqlite_master(&path);
    // The bot reads its database URL from a file before every transaction; the cutover's and
    // the fallback's --exec switch it.
    let url_file = dir.path().join("db_url");
    let to_sqlite = dir.path().join("url.sqlite");
    let to_pg = dir.path().join("url.pg");
    std::fs::write(&to_sqlite, format!("sqlite:///{p}")).unwrap();
    std::fs::write(&to_pg, &db.url).unwrap();
    std::fs::copy(&to_sqlite, &url_file).unwrap();
    let writer = std::process::Command::new(app_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app/app.py"))
        .args(["write-switch", url_file.to_str().unwrap(), "40", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let cut_copy = dir.path().join("at-cutover.db");
    let out = sqlite2pg(&[
        "--source",
        p,
        "--target",
        &db.url,
        "cutover",
        "--exec",
        &format!("cp '{}' '{}'", to_pg.display(), url_file.display()),
    ]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    // SQLite is fenced: this copy is SQLite as the cutover left it.
    backup(&path, &cut_copy);
    d.wait_for_log("following Postgres back into SQLite");
    // The app writes on Postgres; the reverse daemon is killed with -9 three times.
    let mut rng = Rng::from_clock();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(3000)));
        d.kill9();
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        d = Daemon::start(&path, &db, &[]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let snap = dir.path().join("at-fallback.db");
    let out = sqlite2pg(&[
        "--source",
        p,
        "--target",
        &db.url,
        "fallback",
        "--exec",
        &format!(
            "sqlite3 '{}' \".backup '{}'\" && cp '{}' '{}'",
            path.display(),
            snap.display(),
            to_sqlite.display(),
            url_file.display()
        ),
    ]);
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    assert!(
        text(&out).contains("fell back: writes were unavailable for"),
        "{}",
        text(&out)
    );
    let exec_done = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The daemon sees the record and exits by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.try_exit().is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after the fallback:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.try_exit(), Some(Some(0)), "{}", d.log_text());
    let summary = writer_summary(writer);
    println!("app writer: {summary}");

    // Both sides equal at the fallback, through the app's ORM and row by row.
    app(&["compare", snap.to_str().unwrap(), &db.url]);
    let mut c = db.client();
    for (t, k) in [
        ("user", "id"),
        ("projects", "id"),
        ("tasks", "id"),
        ("counters", "id"),
    ] {
        assert_table_equal(&snap, &mut c, t, k);
    }
    // The app wrote on Postgres: inserts with ids from its sequences, updates, cascades.
    let changed: Vec<(String, Vec<String>)> = c
        .query(
            "SELECT target_table, key FROM sqlite2pg.reverse_change",
            &[],
        )
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    assert!(
        changed.len() > 100,
        "only {} changes on Postgres",
        changed.len()
    );
    let changed_keys: BTreeSet<(String, String)> = changed
        .iter()
        .map(|(t, k)| (t.clone(), k.join(",")))
        .collect();
    // Rows Postgres did not change keep SQLite's exact bytes; changed ones keep each column's
    // storage class and date text form.
    let before = raw_rows(&cut_copy);
    let after = raw_rows(&snap);
    let mut untouched = 0;
    let mut forms: BTreeMap<(String, usize), BTreeSet<String>> = BTreeMap::new();
    for ((table, key), values) in &before {
        for (i, v) in values.iter().enumerate() {
            forms
                .entry((table.clone(), i))
                .or_default()
                .insert(match v.split_once(':') {
                    Some(("text", t)) => format!("text:{}", shape(t)),
                    Some((class, _)) => class.to_string(),
                    None => v.clone(),
                });
        }
        if changed_keys.contains(&(table.clone(), key.clone())) {
            continue;
        }
        assert_eq!(
            after.get(&(table.clone(), key.clone())),
            Some(values),
            "{table} {key}: a row Postgres never changed came back different"
        );
        untouched += 1;
    }
    assert!(untouched > 500, "{untouched}");
    let mut checked = 0;
    for ((table, key), values) in &after {
        if !changed_keys.contains(&(table.clone(), key.clone())) {
            continue;
        }
        for (i, v) in values.iter().enumerate() {
            let seen = &forms[&(table.clone(), i)];
            let (class, body) = v.split_once(':').unwrap_or((v.as_str(), ""));
            // The due date's text keeps its shape; every column keeps its storage class.
            let form = if (table.as_str(), i) == ("tasks", 6) && class == "text" {
                format!("text:{}", shape(body))
            } else {
                class.to_string()
            };
            let known = seen.contains(&form)
                || seen
                    .iter()
                    .any(|f| f.split(':').next() == Some(form.as_str()));
            assert!(
                class == "null" || known,
                "{table} {key} column {i}: {v} has a form SQLite never had there ({seen:?})"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    // No app transaction failed outside the two windows, and those that failed were fenced.
    let mut window = |sql: &str| -> (f64, f64) {
        let r = c.query_one(sql, &[]).unwrap();
        (r.get(0), r.get(1))
    };
    let cut = window(
        "SELECT extract(epoch FROM fenced_at)::float8, extract(epoch FROM done_at)::float8 FROM sqlite2pg.cutover",
    );
    let back = window(
        "SELECT extract(epoch FROM fenced_at)::float8, extract(epoch FROM done_at)::float8 FROM sqlite2pg.fallback",
    );
    for t in summary["failure_times"].as_array().unwrap() {
        let t = t.as_f64().unwrap();
        let inside =
            (t >= cut.0 - 0.01 && t <= cut.1 + 1.0) || (t >= back.0 - 0.01 && t <= exec_done + 0.5);
        assert!(
            inside,
            "an app transaction failed at {t:.3}, outside the windows {cut:?} and {back:?}: {summary}"
        );
    }
    for m in summary["failure_samples"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        assert!(
            m.contains("moved to PostgreSQL") || m.contains("moved back to SQLite"),
            "{summary}"
        );
    }
    // Postgres refuses the app now; status says where things stand.
    let out = std::process::Command::new(app_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app/app.py"))
        .args(["pg-insert", &db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("moved back to SQLite"),
        "{}",
        text(&out)
    );
    let st = status_json(&path, &db);
    assert_eq!(st["phase"], "fell_back", "{st:#}");
    // uninstall: nothing of sqlite2pg is left on either side.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sqlite_master(&path), master_before);
    let left: i64 = scalar(
        &mut c,
        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlite2pg') + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sqlite2pg%')",
    );
    assert_eq!(left, 0);
    app(&["pg-insert", &db.url]);
}
