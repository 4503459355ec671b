//! Live replication: every way SQLite can change a row reaches Postgres; uninstall leaves the
//! file as the app made it.

mod common;

use common::*;

/// Starts a daemon on `schema`, applies `writes` through the sqlite3 shell once it streams,
/// and checks every table listed in `tables` (name, key) row by row.
fn replicate(schema: &str, writes: &[&str], tables: &[(&str, &str)]) -> (SqliteFile, TestDb) {
    let src = SqliteFile::new(schema);
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    for w in writes {
        sqlite3_shell(&src.path, w);
    }
    d.wait_caught_up();
    let mut c = db.client();
    for (t, k) in tables {
        assert_table_equal(&src.path, &mut c, t, k);
    }
    assert!(d.stop(), "the daemon should exit 0 on SIGTERM");
    (src, db)
}

const CLIENTS: &str = "PRAGMA journal_mode = WAL;
    CREATE TABLE clients (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT, visits INTEGER DEFAULT 0);
    INSERT INTO clients (email, name) VALUES ('a@x', 'A'), ('b@x', 'B'), ('c@x', 'C');";

#[test]
fn captures_insert_update_delete() {
    replicate(
        CLIENTS,
        &[
            "INSERT INTO clients (email, name) VALUES ('d@x', 'D ''quoted'' ✓')",
            "UPDATE clients SET visits = visits + 1, name = 'A2' WHERE id = 1",
            "DELETE FROM clients WHERE id = 2",
        ],
        &[("clients", "id")],
    );
}

#[test]
fn captures_a_primary_key_change() {
    let (_src, db) = replicate(
        CLIENTS,
        &["UPDATE clients SET id = 100 WHERE id = 3"],
        &[("clients", "id")],
    );
    let ids: Vec<i64> = db
        .client()
        .query("SELECT id FROM clients ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2, 100]);
}

#[test]
fn captures_rows_a_replace_evicts_on_a_unique_column() {
    // INSERT OR REPLACE deletes the row holding 'a@x' without firing its DELETE trigger.
    replicate(
        CLIENTS,
        &[
            "INSERT OR REPLACE INTO clients (id, email, name) VALUES (10, 'a@x', 'new A')",
            "REPLACE INTO clients (id, email, name) VALUES (2, 'c@x', 'B takes c')",
            "UPDATE OR REPLACE clients SET email = 'b@x' WHERE id = 10",
        ],
        &[("clients", "id")],
    );
}

#[test]
fn captures_upserts() {
    replicate(
        CLIENTS,
        &[
            "INSERT INTO clients (email, name) VALUES ('a@x', 'dup') ON CONFLICT (email) DO UPDATE SET visits = visits + 5",
            "INSERT INTO clients (email, name) VALUES ('z@x', 'Z') ON CONFLICT (email) DO NOTHING",
        ],
        &[("clients", "id")],
    );
}

#[test]
fn captures_cascades_and_set_null() {
    replicate(
        "CREATE TABLE projects (id INTEGER PRIMARY KEY, title TEXT);
         CREATE TABLE tasks (id INTEGER PRIMARY KEY, project_id INTEGER REFERENCES projects(id) ON DELETE CASCADE,
                             parent_id INTEGER REFERENCES tasks(id) ON DELETE SET NULL, title TEXT);
         INSERT INTO projects VALUES (1, 'p1'), (2, 'p2');
         INSERT INTO tasks VALUES (1, 1, NULL, 't1'), (2, 1, 1, 't2'), (3, 2, NULL, 't3'), (4, 2, 3, 't4');",
        &["PRAGMA foreign_keys = ON; DELETE FROM projects WHERE id = 1; DELETE FROM tasks WHERE id = 3;"],
        &[("projects", "id"), ("tasks", "id")],
    );
}

#[test]
fn captures_without_rowid_tables_with_composite_text_keys() {
    replicate(
        "CREATE TABLE kv (ns TEXT, k TEXT, v BLOB, PRIMARY KEY (ns, k)) WITHOUT ROWID;
         INSERT INTO kv VALUES ('a', 'x', x'01'), ('a', 'y', x'02'), ('b', 'x', NULL);",
        &[
            "UPDATE kv SET v = x'ff' WHERE ns = 'a' AND k = 'x'",
            "UPDATE kv SET k = 'z' WHERE ns = 'a' AND k = 'y'",
            "DELETE FROM kv WHERE ns = 'b'",
            "INSERT INTO kv VALUES ('c', 'é 😀', x'')",
        ],
        &[("kv", "ns")],
    );
}

#[test]
fn captures_a_key_changed_only_in_case_or_trailing_spaces() {
    // Under NOCASE and RTRIM the old and new key compare equal in SQLite, but they are other
    // keys on Postgres: the old row must leave (issue 15's first find).
    let (_src, db) = replicate(
        "CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, n INTEGER) WITHOUT ROWID;
         CREATE TABLE codes (code TEXT COLLATE RTRIM PRIMARY KEY, n INTEGER);
         INSERT INTO tags VALUES ('Rust', 1), ('Go', 2);
         INSERT INTO codes VALUES ('A1', 1);",
        &[
            "UPDATE tags SET name = 'rust' WHERE name = 'Rust'",
            "UPDATE codes SET code = 'A1  ' WHERE code = 'A1'",
        ],
        &[("tags", "name"), ("codes", "code")],
    );
    let names: Vec<String> = db
        .client()
        .query("SELECT name FROM tags ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Go", "rust"]);
}

/// What an earlier sqlite2pg installed, and what it missed: after a first run, the capture
/// trigger whose name holds `kind` is rewritten with `from` replaced by `to`, then `missed`
/// is written through the sqlite3 shell. The next run must notice (its log says `why`) and
/// re-synchronize `table`.
fn earlier_build_is_replaced(
    schema: &str,
    kind: &str,
    (from, to): (&str, &str),
    missed: &str,
    (table, key): (&str, &str),
    why: &str,
) {
    let src = SqliteFile::new(schema);
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert!(d.stop());
    let conn = src.conn();
    let (name, sql): (String, String) = conn
        .query_row(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?1",
            [format!("%{kind}%")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the capture trigger");
    assert!(sql.contains(from), "{sql}");
    conn.execute_batch(&format!(
        "DROP TRIGGER \"{name}\"; {}",
        sql.replace(from, to)
    ))
    .unwrap();
    drop(conn);
    sqlite3_shell(&src.path, missed);
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), table, key);
    assert!(d.log_text().contains(why), "{}", d.log_text());
    assert!(d.stop());
}

#[test]
fn capture_triggers_of_an_earlier_build_are_replaced_on_a_nocase_key() {
    // The old and new key compared under NOCASE: only the new spelling reached the changelog.
    earlier_build_is_replaced(
        "CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, n INTEGER) WITHOUT ROWID;
         INSERT INTO tags VALUES ('Rust', 1), ('Go', 2);",
        "ak",
        (" COLLATE BINARY", ""),
        "UPDATE tags SET name = 'rust' WHERE name = 'Rust'",
        ("tags", "name"),
        "compare a NOCASE or RTRIM key under its collation",
    );
}

/// Issue 15 (found by the differential tester, seed 7011): with `recursive_triggers` on, SQLite
/// fires the DELETE trigger for a row a REPLACE evicts, and the eviction was recorded a second
/// time: Postgres, applying row images as a multiset, lost an identical row.
#[test]
fn a_replace_with_recursive_triggers_on_a_table_without_key_is_recorded_once() {
    let src = SqliteFile::new(
        "CREATE TABLE leads (email TEXT, n INTEGER);
         CREATE UNIQUE INDEX leads_email ON leads (email COLLATE NOCASE);
         INSERT INTO leads VALUES ('ann@x', 1), ('bob@x', 2);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let app = src.conn();
    app.execute_batch(
        "PRAGMA recursive_triggers = ON;
         REPLACE INTO leads VALUES ('ann@x', 1);
         INSERT OR REPLACE INTO leads VALUES ('BOB@x', 3);
         UPDATE OR REPLACE leads SET email = 'ann@x' WHERE email = 'BOB@x';",
    )
    .unwrap();
    d.wait_caught_up();
    let mut c = db.client();
    let pg = pg_rows(&mut c, "SELECT email, n::text FROM leads ORDER BY email, n");
    assert_eq!(
        pg,
        vec![vec![Some("ann@x".to_string()), Some("3".to_string())]]
    );
    assert!(d.stop());
}

#[test]
fn capture_triggers_of_an_earlier_build_are_replaced_for_recursive_triggers() {
    let src = SqliteFile::new(
        "CREATE TABLE leads (email TEXT, n INTEGER);
         CREATE UNIQUE INDEX leads_email ON leads (email);
         INSERT INTO leads VALUES ('ann@x', 1), ('bob@x', 2);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert!(d.stop());
    // What an earlier sqlite2pg installed: a DELETE trigger that leaves the noted holders.
    let conn = src.conn();
    let (name, sql): (String, String) = conn
        .query_row(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%AFTER DELETE ON%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the delete trigger");
    let start = sql.find("DELETE FROM").expect("the new line");
    let end = start + sql[start..].find(';').expect("its end") + 1;
    conn.execute_batch(&format!(
        "DROP TRIGGER \"{name}\"; {}{}",
        &sql[..start],
        &sql[end..]
    ))
    .unwrap();
    conn.execute_batch("PRAGMA recursive_triggers = ON; REPLACE INTO leads VALUES ('ann@x', 5);")
        .unwrap();
    drop(conn);
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let mut c = db.client();
    let pg = pg_rows(&mut c, "SELECT email, n::text FROM leads ORDER BY email");
    assert_eq!(
        pg,
        vec![
            vec![Some("ann@x".to_string()), Some("5".to_string())],
            vec![Some("bob@x".to_string()), Some("2".to_string())]
        ]
    );
    assert!(
        d.log_text().contains("recursive_triggers"),
        "{}",
        d.log_text()
    );
    assert!(d.stop());
}

#[test]
fn capture_triggers_of_an_earlier_build_are_replaced_on_a_partial_unique_index() {
    // Holders looked up only when `h` itself changes: row 2 enters the index and evicts row 1,
    // which that trigger never recorded.
    earlier_build_is_replaced(
        "CREATE TABLE handles (id INTEGER PRIMARY KEY, h TEXT, live INTEGER);
         CREATE UNIQUE INDEX handles_live ON handles (h COLLATE NOCASE) WHERE live = 1;
         INSERT INTO handles VALUES (1, 'Ann', 1), (2, 'ann', 0);",
        "bu",
        ("BEFORE UPDATE ON", "BEFORE UPDATE OF \"h\" ON"),
        "UPDATE OR REPLACE handles SET live = 1 WHERE id = 2",
        ("handles", "id"),
        "into a partial UNIQUE index",
    );
}

/// id, total, label, shown.
type Line = (i64, Option<f64>, Option<String>, Option<String>);

#[test]
fn generated_columns_are_computed_by_postgres_and_never_written() {
    let (src, db) = replicate(
        "CREATE TABLE lines (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL,
           total REAL GENERATED ALWAYS AS (qty * price) STORED,
           label TEXT AS (upper(name) || ':' || qty),
           shown TEXT AS (printf('%.2f', price)));
         INSERT INTO lines (name, qty, price) VALUES ('tea', 2, 1.25), ('Café', 3, 0.1), (NULL, NULL, 2.5);",
        &[
            "INSERT INTO lines (name, qty, price) VALUES ('jam', 7, 0.3), ('gone', 1, 1.0)",
            "UPDATE lines SET qty = qty + 1, name = 'mint' WHERE id = 1",
            "DELETE FROM lines WHERE id = 5",
        ],
        &[("lines", "id")],
    );
    let mut c = db.client();
    let generated: Vec<(String, bool)> = c
        .query(
            "SELECT column_name::text, is_generated = 'ALWAYS' FROM information_schema.columns
             WHERE table_name = 'lines' AND column_name IN ('total', 'label', 'shown') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // printf() does not translate: that column holds SQLite's values instead.
    assert_eq!(
        generated,
        [
            ("label".into(), true),
            ("shown".into(), false),
            ("total".into(), true)
        ]
    );
    let compare = |c: &mut postgres::Client| {
        let conn = src.conn();
        let mut st = conn
            .prepare("SELECT id, total, label, shown FROM lines ORDER BY id")
            .unwrap();
        let want: Vec<Line> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let got: Vec<Line> = c
            .query("SELECT id, total, label, shown FROM lines ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(got, want);
    };
    compare(&mut c);
    // A row written on Postgres (as the app does after the cutover) gets them computed.
    c.batch_execute(
        "INSERT INTO lines (id, name, qty, price, shown) VALUES (10, 'oat', 4, 0.7, '0.70')",
    )
    .unwrap();
    let total: f64 = scalar(&mut c, "SELECT total FROM lines WHERE id = 10");
    assert_eq!(total, 4.0 * 0.7);
    let label: String = scalar(&mut c, "SELECT label FROM lines WHERE id = 10");
    assert_eq!(label, "OAT:4");
}

#[test]
fn captures_delete_of_a_whole_table_and_writes_from_several_connections() {
    let (src, db) = replicate(CLIENTS, &["DELETE FROM clients"], &[("clients", "id")]);
    let n: i64 = scalar(&mut db.client(), "SELECT count(*) FROM clients");
    assert_eq!(n, 0);
    // The app's own connection (Python's sqlite3, another library build) is captured too.
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let py = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO clients (email, name) VALUES ('py@x', 'from python')\"); c.commit()"])
        .arg(&src.path)
        .status()
        .unwrap();
    assert!(py.success());
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), "clients", "id");
}

#[test]
fn triggers_never_fail_the_apps_write_and_a_bad_value_stops_the_daemon_until_fixed() {
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB, r REAL, i BIGINT, v TEXT);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    // Every write succeeds, whatever the value (the shell asserts it).
    sqlite3_shell(
        &src.path,
        "INSERT INTO t VALUES (1, x'00ff00', 1e308, -9223372036854775808, '😀'), (2, x'', -0.0, 0, ''), (5, NULL, NULL, NULL, NULL)",
    );
    d.wait_caught_up();
    sqlite3_shell(
        &src.path,
        "INSERT INTO t (id, v) VALUES (4, 'nul' || char(0) || 'x')",
    );
    // A NUL byte cannot go into Postgres text: the daemon stops and says where.
    d.wait_for_log("cannot be applied");
    let log = d.log_text();
    assert!(
        log.contains("table t, row id=4, column v") && log.contains("NUL"),
        "{log}"
    );
    d.kill9();
    let err: Option<String> = scalar(&mut db.client(), "SELECT last_error FROM sqlite2pg.stream");
    assert!(err.is_some_and(|e| e.contains("id=4")));
    // Fixed in SQLite, the daemon resumes from the kept position.
    sqlite3_shell(&src.path, "UPDATE t SET v = 'nul x' WHERE id = 4");
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), "t", "id");
    assert!(d.stop());
}

#[test]
fn uninstall_returns_sqlite_master_to_exactly_what_it_was() {
    let src = SqliteFile::new(CLIENTS);
    let before = sqlite_master(&src.path);
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    sqlite3_shell(&src.path, "INSERT INTO clients (email) VALUES ('during@x')");
    d.wait_caught_up();
    assert!(d.stop());
    assert_ne!(sqlite_master(&src.path), before, "run installs capture");
    for _ in 0..2 {
        let out = sqlite2pg(&["--source", src.path.to_str().unwrap(), "uninstall"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(sqlite_master(&src.path), before);
    // The app keeps working, and its rows are untouched.
    sqlite3_shell(
        &src.path,
        "INSERT INTO clients (email) VALUES ('after@x'); UPDATE clients SET visits = 9 WHERE id = 1;",
    );
    let n: i64 = src
        .conn()
        .query_row("SELECT count(*) FROM clients", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
}

#[test]
fn status_reports_phase_position_and_lag_with_or_without_the_daemon() {
    let src = SqliteFile::new(CLIENTS);
    let db = TestDb::new();
    let p = src.path.to_str().unwrap();
    let status = |db: &TestDb| -> serde_json::Value {
        let out = sqlite2pg(&["--source", p, "--target", &db.url, "status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(status(&db)["phase"], "not_started");
    snapshot(&src.path, &db, &[]);
    sqlite3_shell(
        &src.path,
        "UPDATE clients SET visits = visits + 1; INSERT INTO clients (email) VALUES ('n@x');",
    );
    let s = status(&db);
    assert_eq!(s["phase"], "streaming");
    assert_eq!(s["daemon_running"], false);
    assert_eq!(s["lag_changes"], 4);
    assert!(s["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["tables"][0]["rows_copied"], 3);
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let s = status(&db);
    assert_eq!(s["daemon_running"], true);
    assert_eq!(s["lag_changes"], 0);
    assert_eq!(s["changes_applied"], 4);
    let human = sqlite2pg(&["--source", p, "--target", &db.url, "status"]);
    assert!(
        text(&human).contains("lag:        0 changes"),
        "{}",
        text(&human)
    );
    assert!(!text(&human).contains(PASSWORD));
    assert!(d.stop());
}

#[test]
fn schema_changes_while_running_are_followed_or_wait_for_the_targets_migration() {
    // Tables sqlite2pg created: a new column and a new table are picked up.
    let src = SqliteFile::new(CLIENTS);
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    sqlite3_shell(
        &src.path,
        "ALTER TABLE clients ADD COLUMN tier TEXT NOT NULL DEFAULT 'free'",
    );
    sqlite3_shell(
        &src.path,
        "UPDATE clients SET tier = 'gold' WHERE id = 1; INSERT INTO clients (email, tier) VALUES ('t@x', 'silver');",
    );
    sqlite3_shell(
        &src.path,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients(id), body TEXT); INSERT INTO notes VALUES (1, 1, 'hello');",
    );
    sqlite3_shell(
        &src.path,
        "INSERT INTO notes VALUES (2, 2, 'after capture'); UPDATE clients SET visits = 7 WHERE id = 2;",
    );
    d.wait_caught_up();
    let mut c = db.client();
    assert_table_equal(&src.path, &mut c, "clients", "id");
    assert_table_equal(&src.path, &mut c, "notes", "id");
    // A renamed column is followed too: the old one dropped, the new one added, and the table
    // re-synchronized (every value of the renamed column comes back).
    sqlite3_shell(
        &src.path,
        "ALTER TABLE notes RENAME COLUMN body TO text_body; UPDATE notes SET text_body = 'renamed' WHERE id = 2;",
    );
    wait_capture_current(&src.path, "notes", &mut d);
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut c, "notes", "id");
    let hello: String = scalar(&mut c, "SELECT text_body FROM notes WHERE id = 1");
    assert_eq!(hello, "hello");
    assert!(
        d.log_text().contains("re-synchronizing"),
        "{}",
        d.log_text()
    );
    drop(d);

    // A table the app's migrations made in Postgres: a column it lacks stops the daemon.
    let src = SqliteFile::new(CLIENTS);
    let db = TestDb::new();
    db.client()
        .batch_execute("CREATE TABLE clients (id int PRIMARY KEY, email text UNIQUE, name text, visits int DEFAULT 0)")
        .unwrap();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    sqlite3_shell(
        &src.path,
        "ALTER TABLE clients ADD COLUMN tier TEXT; UPDATE clients SET tier = 'gold' WHERE id = 1;",
    );
    d.wait_for_log("has no column tier");
    assert!(
        d.log_text().contains("add the column to the target"),
        "{}",
        d.log_text()
    );
    // The daemon waits for the app's migration on Postgres, then goes on by itself.
    assert_eq!(d.try_exit(), None, "the daemon should wait, not exit");
    sqlite3_shell(
        &src.path,
        "UPDATE clients SET tier = 'silver' WHERE id = 2;",
    );
    db.client()
        .batch_execute("ALTER TABLE clients ADD COLUMN tier text")
        .unwrap();
    wait_capture_current(&src.path, "clients", &mut d);
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), "clients", "id");
    assert!(d.stop());
}

#[test]
fn batches_of_large_rows_stay_bounded_in_memory() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL; CREATE TABLE files (id INTEGER PRIMARY KEY, body BLOB);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    // 150 rows of 1 MiB, written in one transaction: one changelog range of 150 MiB of rows.
    sqlite3_shell(
        &src.path,
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 150) INSERT INTO files SELECT i, randomblob(1048576) FROM s",
    );
    d.wait_caught_up();
    let peak_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap();
    println!(
        "daemon peak RSS after 150 MiB of rows: {} MiB",
        peak_kb / 1024
    );
    assert!(
        peak_kb < 200 * 1024,
        "batches are bounded to 32 MiB of rows; peak was {} MiB",
        peak_kb / 1024
    );
    // Byte for byte, row by row (bytea read as bytes, not as 300 MB of hex text).
    let pg: Vec<(i64, Vec<u8>)> = db
        .client()
        .query("SELECT id, body FROM files ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let conn = src.conn();
    let mut st = conn
        .prepare("SELECT id, body FROM files ORDER BY id")
        .unwrap();
    let sqlite: Vec<(i64, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(pg.len(), 150);
    assert!(pg.iter().all(|(_, b)| b.len() == 1_048_576));
    assert!(pg == sqlite, "blobs differ between SQLite and Postgres");
    assert!(d.stop());
}

#[test]
fn a_unique_value_moving_between_rows_within_one_batch_is_replayed_in_order() {
    let src = SqliteFile::new(CLIENTS);
    let db = TestDb::new();
    snapshot(&src.path, &db, &[]);
    // With no daemon running, all of this lands in one batch. Row 2 appears first in the
    // changelog, but takes 'a@x' only after row 1 gave it up.
    sqlite3_shell(
        &src.path,
        "UPDATE clients SET name = 'B first' WHERE id = 2;
         UPDATE clients SET email = 'released@x' WHERE id = 1;
         UPDATE clients SET email = 'a@x' WHERE id = 2;",
    );
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), "clients", "id");
    assert!(d.stop());
}

#[test]
fn a_batch_behind_the_stored_position_is_refused_and_none_of_its_rows_land() {
    let src = SqliteFile::new(CLIENTS);
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    // Caught up is seen once the snapshot is done; the stream reads its position when it
    // connects just after. Moved before that read, the position is simply where it starts.
    d.wait_for_log("streaming position=");
    // Another writer of the state (a second daemon, a person) moved the position past what
    // this daemon's next batch reaches. The batch's rows, the position and the COMMIT go to
    // Postgres together: the refusal must still keep every row of it out.
    db.client()
        .batch_execute("UPDATE sqlite2pg.stream SET position = 1000000000")
        .unwrap();
    sqlite3_shell(
        &src.path,
        "INSERT INTO clients (email, name) VALUES ('late@x', 'Late'); UPDATE clients SET name = 'A2' WHERE id = 1",
    );
    d.wait_for_log("already at or past");
    d.kill9();
    let mut c = db.client();
    let late: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM clients WHERE email = 'late@x'",
    );
    let renamed: i64 = scalar(&mut c, "SELECT count(*) FROM clients WHERE name = 'A2'");
    assert_eq!((late, renamed), (0, 0), "rows of a refused batch landed");
    let position: i64 = scalar(&mut c, "SELECT position FROM sqlite2pg.stream");
    assert_eq!(position, 1_000_000_000);
}

#[test]
fn the_staging_tables_stay_small_over_many_drains_of_any_size() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let app = rusqlite::Connection::open(&src.path).unwrap();
    // One drain each: a row, then twenty (a few kilobytes). Nothing vacuums a temp table,
    // so rows deleted from it leave pages only the same page's next rows reuse.
    for i in 0..240 {
        let rows = if i % 3 == 0 { 20 } else { 1 };
        let tx = app.unchecked_transaction().unwrap();
        for _ in 0..rows {
            tx.execute(
                "INSERT INTO notes (body) VALUES (printf('%.120c', 'x'))",
                [],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        d.wait_caught_up();
    }
    let largest: i64 = scalar(
        &mut db.client(),
        "SELECT coalesce(max(pg_relation_size(c.oid)), 0) FROM pg_class c
          JOIN pg_namespace s ON s.oid = c.relnamespace
         WHERE s.nspname LIKE 'pg\\_temp\\_%' AND c.relname LIKE '\\_s2p\\_%'",
    );
    assert!(
        largest <= 4 * 8192,
        "a staging table grew to {largest} bytes over 240 drains"
    );
    assert_table_equal(&src.path, &mut db.client(), "notes", "id");
    assert!(d.stop());
}
