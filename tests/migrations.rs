//! The app's own Alembic migrations while sqlite2pg follows the file: batch mode rebuilds a
//! table (create a copy, drop, rename) under the capture triggers, and the app writes at once
//! on the same connection. Whether the daemon runs through the migration or is stopped for the
//! deploy, Postgres ends equal to SQLite row by row, in both journal modes, while the
//! SQLAlchemy app writes to the rest of the CRM the whole time.

mod common;

use common::*;

/// The target's columns of `table` with their types, in order.
fn pg_columns(db: &TestDb, table: &str) -> Vec<(String, String)> {
    db.client()
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&format!("public.\"{table}\"")],
        )
        .expect("read target columns")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Row versions (`xmin`) of a target table by key: a row the re-synchronization rewrote gets
/// a new one.
fn row_versions(db: &TestDb, table: &str) -> std::collections::HashMap<i64, String> {
    db.client()
        .query(
            &format!("SELECT id::bigint, xmin::text FROM \"{table}\""),
            &[],
        )
        .expect("read row versions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The rows of the table without a key, as a sorted multiset, on both sides.
fn assert_tags_equal(path: &std::path::Path, db: &TestDb) {
    let c = rusqlite::Connection::open(path).expect("open sqlite");
    let mut st = c
        .prepare("SELECT item_id, tag FROM tags ORDER BY 1, 2")
        .expect("read tags");
    let sqlite: Vec<(i64, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("read tags")
        .map(|r| r.expect("tag"))
        .collect();
    let pg: Vec<(i64, String)> = db
        .client()
        .query(
            "SELECT item_id::bigint, tag::text FROM tags ORDER BY 1, tag COLLATE \"C\"",
            &[],
        )
        .expect("read tags")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(sqlite.len(), pg.len(), "rows of the table without a key");
    assert_eq!(sqlite, pg, "the table without a key, as a multiset");
}

fn sqlite_columns(path: &std::path::Path, table: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(path).expect("open sqlite");
    let mut st = c
        .prepare(&format!("PRAGMA table_info(\"{table}\")"))
        .expect("table_info");
    st.query_map([], |r| r.get(1))
        .expect("table_info")
        .map(|r| r.expect("column"))
        .collect()
}

fn migrations_with_the_app_writing(journal: &str, running_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    let p = path.to_str().unwrap();
    app(&["seed", p, "300", journal]);
    app(&["migrate", p, "0001", "items"]);
    let db = TestDb::new();
    let writer = start_writer(&path, 60.0, 50.0);
    let mut d = Some(Daemon::start(&path, &db, &["--chunk-rows", "100"]));
    d.as_mut().unwrap().wait_caught_up();
    let steps = [
        ("0002", "items"),
        ("0003", "items"),
        ("0004", "items"),
        ("0005", "items"),
        ("0006", "goods"),
    ];
    for (i, (rev, table)) in steps.iter().enumerate() {
        // Alternate: the daemon runs through one migration, is stopped for the next deploy.
        let running = (i % 2 == 0) == running_first;
        if !running {
            assert!(d.take().unwrap().stop(), "the daemon should stop with 0");
        }
        let before = if *table == "items" {
            row_versions(&db, table)
        } else {
            Default::default()
        };
        app(&["migrate", p, rev, table]);
        if !running {
            d = Some(Daemon::start(&path, &db, &["--chunk-rows", "100"]));
        }
        wait_capture_current(&path, table, d.as_mut().unwrap());
        d.as_mut().unwrap().wait_caught_up();
        let mut c = db.client();
        assert_table_equal(&path, &mut c, table, "id");
        let pg: Vec<String> = pg_columns(&db, table).into_iter().map(|c| c.0).collect();
        assert_eq!(
            pg,
            sqlite_columns(&path, table),
            "{rev}: the target's columns follow SQLite's"
        );
        assert_tags_equal(&path, &db);
        // Only what differs is written: the row the app updated, the one it inserted (the
        // deleted one is gone); every other row keeps its version.
        if *table == "items" {
            let after = row_versions(&db, table);
            let rewritten = after
                .iter()
                .filter(|(k, v)| before.get(k).is_some_and(|b| b != *v))
                .count();
            let new = after.keys().filter(|k| !before.contains_key(k)).count();
            assert_eq!(
                (rewritten, new),
                (1, 1),
                "{rev}: rows rewritten, rows added"
            );
        }
        println!(
            "{journal}: {rev} applied with the daemon {}",
            if running { "running" } else { "stopped" }
        );
    }
    // The renamed table's old copy is not followed, and status says so.
    let st = status_json(&path, &db);
    assert_eq!(st["gone_from_sqlite"], serde_json::json!(["items"]), "{st}");
    // What each migration changed in the shape is in Postgres too.
    let cols = pg_columns(&db, "goods");
    assert!(
        cols.contains(&("name".into(), "character varying(50)".into())),
        "{cols:?}"
    );
    assert!(cols.iter().any(|c| c.0 == "note"), "{cols:?}");
    let default: Option<String> = scalar(
        &mut db.client(),
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'public.goods'::regclass AND a.attname = 'note'",
    );
    assert!(default.is_some_and(|d| d.contains("none")));
    let unique_on_name: i64 = scalar(
        &mut db.client(),
        "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = 'public.goods'::regclass AND i.indisunique AND NOT i.indisprimary AND a.attname = 'name'",
    );
    assert_eq!(unique_on_name, 1, "the unique constraint follows");
    let summary = finish_writer(writer);
    println!("{journal}: app writer during the migrations: {summary}");
    let mut d = d.unwrap();
    d.wait_caught_up();
    assert_app_equal(&path, &db);
    assert_table_equal(&path, &mut db.client(), "goods", "id");
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(d.stop());
}

#[test]
fn alembic_batch_migrations_in_wal_mode_lose_nothing() {
    migrations_with_the_app_writing("wal", true);
}

#[test]
fn alembic_batch_migrations_in_rollback_journal_mode_lose_nothing() {
    migrations_with_the_app_writing("delete", false);
}

#[test]
fn a_migration_made_target_waits_for_the_same_migration_on_postgres() {
    // The app's migrations made the target; SQLite's column is widened by a rebuild (as batch
    // mode does), and the app writes a value only the widened column holds.
    let src = SqliteFile::new(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL);
         INSERT INTO items VALUES (1, 'short'), (2, 'also short');",
    );
    let db = TestDb::new();
    db.client()
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name varchar(20) NOT NULL)")
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_with(&src.path, &db, &[], &["--metrics-addr", &addr]);
    d.wait_caught_up();
    sqlite3_shell(
        &src.path,
        "BEGIN; CREATE TABLE _alembic_tmp_items (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL);
         INSERT INTO _alembic_tmp_items SELECT id, name FROM items; DROP TABLE items;
         ALTER TABLE _alembic_tmp_items RENAME TO items; COMMIT;
         INSERT INTO items VALUES (3, 'a name of more than twenty characters');
         UPDATE items SET name = 'changed' WHERE id = 1;",
    );
    // The error names the source table, the row, the column and the value, never a temp table.
    let log = d.wait_for_log("cannot be applied");
    assert!(
        log.contains(
            "table items, row id=3, column name: value 'a name of more than twenty characters'"
        ),
        "{log}"
    );
    assert!(!log.contains("_s2p_"), "{log}");
    assert!(log.contains("waiting for a person"), "{log}");
    assert_eq!(d.try_exit(), None, "the daemon waits, it does not exit");
    let status = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "--target",
        &db.url,
        "status",
    ]);
    assert!(text(&status).contains("row id=3"), "{}", text(&status));
    // Alive while it waits: it holds the run lock, and status says so every time it looks.
    for _ in 0..8 {
        assert_eq!(
            status_json(&src.path, &db)["daemon_running"],
            true,
            "{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // /healthz and the metrics say the daemon waits for a person, and for what.
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("row id=3") && body.contains("column name"),
        "{body}"
    );
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("sqlite2pg_needs_operator{kind=\"conversion\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sqlite2pg_phase{phase=\"waiting\"} 1"),
        "{metrics}"
    );
    // The same migration on Postgres: the daemon goes on by itself.
    db.client()
        .batch_execute("ALTER TABLE items ALTER COLUMN name TYPE varchar(50)")
        .unwrap();
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut db.client(), "items", "id");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while http_get(&addr, "/healthz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz stayed unhealthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("sqlite2pg_needs_operator{kind=\"conversion\"} 0"),
        "{metrics}"
    );
    assert!(d.stop());
}
