//! verify: equal after replication even while the app writes; every kind of difference found,
//! with key, column and both values; exit codes; --tables; --json.

mod common;

use common::*;

fn verify(src: &std::path::Path, db: &TestDb, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec![
        "--source",
        src.to_str().unwrap(),
        "--target",
        &db.url,
        "verify",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = sqlite2pg(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify output:\n{}", text(&out)));
    (out.status.code(), report)
}

#[test]
fn verify_is_equal_while_the_app_writes_and_the_daemon_streams() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "500", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let writer = start_writer(&path, 6.0, 100.0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A moving target: differences in flight are re-checked once the daemon catches up.
    let (code, report) = verify(&path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["equal"], true);
    let tasks = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "tasks")
        .unwrap();
    // The seed has 1000 tasks; the writer adds some and deletes projects with their tasks, so
    // the count drifts either way while verify reads: any count near the seed's means the whole
    // table was compared (a fixed `>= 1000` failed whenever deletes outran inserts).
    let compared = tasks["rows_compared"].as_u64().unwrap();
    assert!((900..=1400).contains(&compared), "{report:#}");
    finish_writer(writer);
    assert!(d.stop());
}

#[test]
fn verify_reports_every_kind_of_difference() {
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount NUMERIC(10,2), doc JSONB, at DATETIME);
         CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
         INSERT INTO t SELECT i, 'n' || i, i * 1.5, '{\"b\": 1, \"a\": [' || i || ']}', '2024-01-01 10:00:00' FROM s;
         INSERT INTO kv VALUES ('Zeta', '1'), ('alpha', '2'), ('é', '3'), ('B', '4');
         CREATE TABLE nk (id NUMERIC NOT NULL PRIMARY KEY, v TEXT);
         INSERT INTO nk VALUES (10, 'a'), (2.5, 'b'), (-3, 'c'), (1000, 'd'), (2, 'e');",
    );
    let db = TestDb::new();
    snapshot(&src.path, &db, &[]);
    // Equal right after the snapshot (numeric 1.5 vs 1.50 and jsonb's key order are not differences).
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    // A change in SQLite that no daemon has applied yet is pending, not a difference.
    sqlite3_shell(
        &src.path,
        "UPDATE t SET name = 'changed in SQLite' WHERE id = 100",
    );
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["pending_not_applied"], 1);
    let mut c = db.client();
    c.batch_execute(
        "UPDATE t SET name = 'tampered' WHERE id = 10;
         UPDATE t SET amount = amount + 0.01 WHERE id = 20;
         UPDATE t SET at = at + interval '1 microsecond' WHERE id = 30;
         DELETE FROM t WHERE id = 2999;
         INSERT INTO t (id, name) VALUES (5000, 'ghost');
         UPDATE kv SET v = 'x' WHERE k = 'é';
         UPDATE nk SET v = 'x' WHERE id = 2.5;",
    )
    .unwrap();
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["equal"], false);
    let t = &report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "t")
        .unwrap();
    assert_eq!(t["rows_compared"], 3000);
    assert_eq!(t["differing"], 3);
    assert_eq!(t["missing_in_postgres"], 1);
    assert_eq!(t["extra_in_postgres"], 1);
    let ex = t["examples"].as_array().unwrap();
    let name = ex.iter().find(|e| e["key"] == "id=10").unwrap();
    assert_eq!(name["column"], "name");
    assert_eq!(name["sqlite"], "'n10'");
    assert_eq!(name["postgres"], "tampered");
    assert!(
        ex.iter()
            .any(|e| e["key"] == "id=2999" && e["kind"] == "missing_in_postgres")
    );
    assert!(
        ex.iter()
            .any(|e| e["key"] == "id=5000" && e["kind"] == "extra_in_postgres")
    );
    assert!(
        ex.iter()
            .any(|e| e["key"] == "id=30" && e["column"] == "at")
    );
    // Text keys in SQLite's byte order on both sides; --tables limits the run.
    let (code, report) = verify(&src.path, &db, &["--tables", "kv"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["tables"].as_array().unwrap().len(), 1);
    assert_eq!(report["tables"][0]["rows_compared"], 4);
    assert_eq!(report["tables"][0]["differing"], 1);
    assert_eq!(report["tables"][0]["missing_in_postgres"], 0);
    assert_eq!(report["tables"][0]["examples"][0]["key"], "k='é'");
    // A NUMERIC key (Sakila's `actor_id numeric`): integers and REALs in numeric order.
    let (code, report) = verify(&src.path, &db, &["--tables", "nk"]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["tables"][0]["rows_compared"], 5, "{report:#}");
    assert_eq!(report["tables"][0]["differing"], 1, "{report:#}");
    assert_eq!(report["tables"][0]["missing_in_postgres"], 0, "{report:#}");
    assert_eq!(report["tables"][0]["examples"][0]["key"], "id=2.5");
    let human = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "--target",
        &db.url,
        "verify",
    ]);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        text(&human).contains("id=10 column name: SQLite 'n10' | Postgres tampered"),
        "{}",
        text(&human)
    );
}

#[test]
fn sigterm_stops_verify_at_once_with_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    gen_crm(&path, 1_000);
    let db = TestDb::new();
    let p = path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "run", "--snapshot-only"]);
    assert!(out.status.success(), "{}", text(&out));
    // A writer's lock on one table holds verify inside Postgres, where only a stop can end it.
    let mut blocker = db.client();
    let mut lock = blocker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE public.tasks IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args(["--source", p, "--target", &db.url, "verify"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let mut watcher = db.client();
    wait_until(
        "verify waiting on the locked table",
        std::time::Duration::from_secs(30),
        || sqlite2pg_sessions_waiting_on_a_lock(&mut watcher) > 0,
    );
    let (status, took) = sigterm(&mut child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", text(&out));
    assert!(
        took < std::time::Duration::from_secs(2),
        "stopped after {took:?}"
    );
    assert!(text(&out).contains("no verdict"), "{}", text(&out));
    lock.rollback().unwrap();
    // Nothing was recorded as verified by the stopped run; a whole one still passes.
    let verified: i64 = scalar(
        &mut watcher,
        "SELECT count(*) FROM sqlite2pg.stream WHERE verified_position IS NOT NULL",
    );
    assert_eq!(verified, 0);
    let (code, report) = verify(&path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
}

/// The SQLite side is read in pages that also end at a time limit (short read transactions):
/// a page cut short by time is not the end of the table. Wide rows make every page slow.
#[test]
fn pages_cut_short_by_time_are_not_the_end_of_the_table() {
    let src = SqliteFile::new(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000)
         INSERT INTO notes SELECT i, printf('%d ', i) || hex(randomblob(2000)) FROM n;",
    );
    let db = TestDb::new();
    let out = snapshot(&src.path, &db, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["tables"][0]["rows_compared"], 12000, "{report:#}");
}

/// Keys of every type SQLite allows, in the orders where SQLite and Postgres disagree (a
/// boolean in a composite key, as MLflow's `metrics`; dates in two text layouts; NOCASE text;
/// blobs; uuids; a column of several storage classes): verified, differences found by key,
/// and the tables cut over.
#[test]
fn keys_of_every_type_are_verified_and_cut_over() {
    let src = SqliteFile::new(
        "CREATE TABLE metrics (key VARCHAR(250) NOT NULL, value FLOAT NOT NULL, timestamp BIGINT NOT NULL,
             run_uuid VARCHAR(32) NOT NULL, step BIGINT NOT NULL, is_nan BOOLEAN NOT NULL,
             PRIMARY KEY (key, timestamp, step, run_uuid, value, is_nan));
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 600)
         INSERT INTO metrics SELECT 'loss', i * 0.5, 1700000000 + i / 3, 'r' || (i % 4), i % 7, i % 2 FROM s;
         CREATE TABLE days (day DATE PRIMARY KEY, v TEXT);
         INSERT INTO days VALUES ('2024-03-01', 'a'), ('2024-02-29', 'b'), ('2023-12-31', 'c');
         CREATE TABLE stamps (at DATETIME PRIMARY KEY, v TEXT);
         INSERT INTO stamps VALUES ('2024-01-01 10:00:00', 'a'), ('2024-01-01T09:00:00', 'b'),
             ('2024-01-01 09:30:00.250', 'c'), ('2023-06-01T00:00:00', 'd');
         CREATE TABLE times (t TIME PRIMARY KEY, v TEXT);
         INSERT INTO times VALUES ('10:00:00', 'a'), ('09:00', 'b'), ('23:59:59.5', 'c');
         CREATE TABLE tokens (id UUID PRIMARY KEY, v TEXT);
         INSERT INTO tokens VALUES ('f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f', 'a'),
             ('0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9', 'b'), ('7fffffff-0000-4000-8000-000000000000', 'c');
         CREATE TABLE people (name TEXT COLLATE NOCASE PRIMARY KEY, v TEXT);
         INSERT INTO people VALUES ('bob', 'a'), ('Alice', 'b'), ('carol', 'c'), ('Dave', 'd'), ('_x', 'e');
         CREATE TABLE padded (name TEXT COLLATE RTRIM PRIMARY KEY, v TEXT);
         INSERT INTO padded VALUES ('a', '1'), ('a!', '2'), ('b', '3');
         CREATE TABLE blobs (k BLOB PRIMARY KEY, v TEXT);
         INSERT INTO blobs VALUES (x'ff', 'a'), (x'00', 'b'), (x'0001', 'c'), (x'', 'd');
         CREATE TABLE reals (k REAL PRIMARY KEY, v TEXT);
         INSERT INTO reals VALUES (-0.5, 'a'), (2, 'b'), (1e300, 'c'), (0.1, 'd');
         CREATE TABLE flags (name TEXT NOT NULL, enabled BOOLEAN NOT NULL, v TEXT,
             PRIMARY KEY (enabled, name)) WITHOUT ROWID;
         INSERT INTO flags VALUES ('x', 1, 'a'), ('x', 0, 'b'), ('y', 1, 'c');",
    );
    let db = TestDb::new();
    let p = src.path.to_str().unwrap();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    let compared = |report: &serde_json::Value, table: &str| -> serde_json::Value {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("no {table} in {report:#}"))
            .clone()
    };
    assert_eq!(compared(&report, "metrics")["rows_compared"], 600);
    assert_eq!(compared(&report, "stamps")["rows_compared"], 4);
    // Postgres tampered behind the daemon's back: each kind of difference is found by its key.
    d.stop();
    db.client()
        .batch_execute(
            "DELETE FROM metrics WHERE is_nan AND step = 3 AND run_uuid = 'r1' AND value = 8.5;
             INSERT INTO metrics VALUES ('loss', 9.5, 1, 'zz', 0, true);
             UPDATE stamps SET v = 'changed' WHERE at = '2024-01-01 09:00:00';
             DELETE FROM days WHERE day = '2024-02-29';
             INSERT INTO tokens VALUES ('00000000-0000-4000-8000-000000000001', 'ghost');
             UPDATE people SET v = 'changed' WHERE name = 'Dave';
             UPDATE blobs SET v = 'changed' WHERE k = '\\x0001';
             UPDATE flags SET v = 'changed' WHERE NOT enabled;",
        )
        .unwrap();
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    let m = compared(&report, "metrics");
    assert_eq!(
        (
            &m["missing_in_postgres"],
            &m["extra_in_postgres"],
            &m["differing"]
        ),
        (&1.into(), &1.into(), &0.into()),
        "{m:#}"
    );
    let keys: Vec<String> = m["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap(),
                e["key"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        keys.contains(&"missing_in_postgres (key='loss', timestamp=1700000005, step=3, run_uuid='r1', value=8.5, is_nan=1)".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k == "extra_in_postgres (key='loss', timestamp=1, step=0, run_uuid='zz', value=9.5, is_nan=1)"),
        "{keys:?}"
    );
    let s = compared(&report, "stamps");
    assert_eq!(s["differing"], 1, "{s:#}");
    assert_eq!(s["examples"][0]["key"], "at='2024-01-01T09:00:00'");
    assert_eq!(s["examples"][0]["postgres"], "changed");
    assert_eq!(compared(&report, "days")["missing_in_postgres"], 1);
    assert_eq!(compared(&report, "tokens")["extra_in_postgres"], 1);
    assert_eq!(compared(&report, "people")["differing"], 1);
    assert_eq!(
        compared(&report, "people")["examples"][0]["key"],
        "name='Dave'"
    );
    assert_eq!(compared(&report, "blobs")["differing"], 1);
    assert_eq!(compared(&report, "flags")["differing"], 1);
    for t in ["times", "padded", "reals"] {
        let r = compared(&report, t);
        assert_eq!(
            (
                &r["missing_in_postgres"],
                &r["extra_in_postgres"],
                &r["differing"]
            ),
            (&0.into(), &0.into(), &0.into()),
            "{r:#}"
        );
    }
    // Put right, then cut over: cutover verifies what changed by key too.
    db.client()
        .batch_execute(
            "INSERT INTO metrics VALUES ('loss', 8.5, 1700000005, 'r1', 3, true);
             DELETE FROM metrics WHERE run_uuid = 'zz';
             UPDATE stamps SET v = 'b' WHERE at = '2024-01-01 09:00:00';
             INSERT INTO days VALUES ('2024-02-29', 'b');
             DELETE FROM tokens WHERE v = 'ghost';
             UPDATE people SET v = 'd' WHERE name = 'Dave';
             UPDATE blobs SET v = 'c' WHERE k = '\\x0001';
             UPDATE flags SET v = 'b' WHERE NOT enabled;",
        )
        .unwrap();
    sqlite3_shell(
        &src.path,
        "UPDATE people SET v = 'moved' WHERE name = 'ALICE'; UPDATE metrics SET step = 99 WHERE is_nan = 0 AND step = 0 AND run_uuid = 'r2';",
    );
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(d.stop());
}

/// A `--cast` given to `run` is kept with the migration: `verify`, `cutover`, the reverse
/// stream and `fallback` read the rows the same way without being told again, and a command
/// given another cast is refused, naming both.
#[test]
fn a_cast_given_to_run_is_remembered_by_every_later_command() {
    let src = SqliteFile::new(
        "CREATE TABLE flows (id INTEGER PRIMARY KEY, tags TEXT, at INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO flows SELECT i, CASE WHEN i % 3 = 0 THEN '[]' ELSE '{\"k\": [' || i || ', 2]}' END, 1700000000 + i FROM s;",
    );
    let db = TestDb::new();
    let casts = [
        "--cast",
        "flows.tags=jsonb",
        "--cast",
        "flows.at=timestamptz:epoch_s",
    ];
    let mut d = Daemon::start(&src.path, &db, &casts);
    d.wait_caught_up();
    let mut c = db.client();
    let ty: String = scalar(
        &mut c,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.flows'::regclass AND attname = 'tags'",
    );
    assert_eq!(ty, "jsonb");
    src.conn()
        .execute_batch("UPDATE flows SET tags = '[1]' WHERE id = 7; INSERT INTO flows VALUES (301, '{}', 1700000999);")
        .unwrap();
    d.wait_caught_up();
    // Told nothing, verify reads jsonb and epoch seconds as run wrote them.
    let (code, report) = verify(&src.path, &db, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["equal"], true, "{report:#}");
    // The same casts again are fine; another one is refused with both named.
    let (code, _) = verify(&src.path, &db, &casts);
    assert_eq!(code, Some(0));
    let out = sqlite2pg_on(&src.path, &db, &["--cast", "flows.tags=json", "verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--cast flows.tags=jsonb --cast flows.at=timestamptz:epoch_s")
            && said.contains("this command was given --cast flows.tags=json"),
        "{said}"
    );
    let out = sqlite2pg_on(&src.path, &db, &["cutover"]);
    assert!(out.status.success(), "cutover: {}", text(&out));
    // The reverse stream writes jsonb and timestamptz back as the app stored them.
    c.batch_execute(
        "UPDATE flows SET tags = '{\"back\": true}', at = '2024-05-01 10:00:00+00' WHERE id = 8",
    )
    .unwrap();
    let out = sqlite2pg_on(&src.path, &db, &["fallback"]);
    assert!(out.status.success(), "fallback: {}", text(&out));
    let (tags, at): (String, i64) = src
        .conn()
        .query_row("SELECT tags, at FROM flows WHERE id = 8", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((tags.as_str(), at), ("{\"back\": true}", 1714557600));
    let _ = d.try_exit();
}
