//! The app's own triggers after the cutover: what SQLite's did, Postgres' PL/pgSQL ports do.
//! The same statements run on a twin SQLite file (the app as it was) and on Postgres after the
//! cutover, and every table ends equal, row by row; a trigger that cannot be ported is named.

mod common;

use common::*;

const SCHEMA: &str = r#"
    CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL DEFAULT 0,
      updated_at DATETIME, version INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE audit (id INTEGER PRIMARY KEY, item INTEGER, what TEXT, qty INTEGER);
    CREATE TABLE totals (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, qty INTEGER NOT NULL);
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    -- As Sakila's SQLite port writes them: the row found by rowid, on a NUMERIC primary key.
    CREATE TABLE tags (tag_id numeric NOT NULL, name VARCHAR(20) NOT NULL,
      last_update TIMESTAMP, PRIMARY KEY (tag_id));
    CREATE TRIGGER tags_trigger_au AFTER UPDATE ON tags
     BEGIN
      UPDATE tags SET last_update = DATETIME('NOW')  WHERE rowid = new.rowid;
     END;
    INSERT INTO totals VALUES (1, 0, 0);
    -- Writes its own row: the nested UPDATE would fire it again on Postgres, not on SQLite.
    CREATE TRIGGER items_version AFTER UPDATE ON items BEGIN
      UPDATE items SET version = version + 1 WHERE id = NEW.id; END;
    CREATE TRIGGER items_touch AFTER UPDATE OF qty ON items BEGIN
      UPDATE items SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = NEW.id; END;
    CREATE TRIGGER items_log AFTER INSERT ON items FOR EACH ROW BEGIN
      INSERT INTO audit (item, what, qty) VALUES (NEW.id, 'added ' || NEW.name, NEW.qty);
      UPDATE totals SET n = n + 1, qty = qty + NEW.qty WHERE id = 1;
    END;
    CREATE TRIGGER items_gone AFTER DELETE ON items BEGIN
      INSERT INTO audit (item, what, qty) VALUES (OLD.id, 'removed', OLD.qty);
      UPDATE totals SET n = n - 1, qty = qty - OLD.qty WHERE id = 1;
    END;
    CREATE TRIGGER items_qty AFTER UPDATE OF qty ON items WHEN NEW.qty <> OLD.qty BEGIN
      UPDATE totals SET qty = qty + NEW.qty - OLD.qty WHERE id = 1; END;
    CREATE TRIGGER items_guard BEFORE UPDATE ON items WHEN NEW.qty < 0 BEGIN
      SELECT RAISE(ABORT, 'qty must not go below zero'); END;
    CREATE TRIGGER items_skip BEFORE INSERT ON items BEGIN
      SELECT CASE WHEN NEW.name = 'ignored' THEN RAISE(IGNORE) END; END;
    CREATE TRIGGER notes_fail AFTER INSERT ON notes BEGIN SELECT RAISE(FAIL, 'no notes'); END;
"#;

/// Written while SQLite is the database: its triggers run there, and the stream carries
/// their effects (Postgres must not make them a second time).
const BEFORE: &[&str] = &[
    "INSERT INTO items (id, name, qty) VALUES (1, 'pen', 5), (2, 'ink', 2)",
    "INSERT INTO tags VALUES (1, 'red', NULL), (2.5, 'blue', NULL), (3, 'green', NULL)",
    "UPDATE items SET qty = qty + 1 WHERE id = 1",
];

/// Written on the twin SQLite file and on Postgres after the cutover, as the app would.
const AFTER: &[&str] = &[
    "INSERT INTO items (id, name, qty) VALUES (10, 'cap', 3)",
    "INSERT INTO items (id, name, qty) VALUES (11, 'nib', 7), (12, 'ignored', 1), (13, 'clip', 0)",
    "UPDATE items SET qty = qty + 1",
    "UPDATE items SET name = upper(name) WHERE id = 11",
    "UPDATE items SET qty = qty - 10 WHERE id = 10",
    "DELETE FROM items WHERE qty < 3",
    "UPDATE items SET qty = 4 WHERE id = 11",
    "UPDATE tags SET name = upper(name) WHERE tag_id > 2",
];

const PORTED: &[(&str, &str)] = &[
    ("items", "items_version"),
    ("items", "items_touch"),
    ("items", "items_log"),
    ("items", "items_gone"),
    ("items", "items_qty"),
    ("items", "items_guard"),
    ("items", "items_skip"),
    ("tags", "tags_trigger_au"),
];

#[test]
fn the_apps_triggers_do_on_postgres_what_they_did_on_sqlite() {
    let src = SqliteFile::new(SCHEMA);
    let twin = SqliteFile::new(SCHEMA);
    let p = src.path.to_str().unwrap();
    let report = text(&sqlite2pg(&["--source", p, "check"]));
    for (table, t) in PORTED {
        let needle = format!("note: {table}: the app's trigger {t} is ported to PL/pgSQL");
        assert!(report.contains(&needle), "missing {needle:?}:\n{report}");
    }
    let refused = "WARNING: notes: the app's trigger notes_fail is not created on Postgres: statement 1: RAISE(FAIL) keeps the rows the statement already changed";
    assert!(report.contains(refused), "missing {refused:?}:\n{report}");

    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    for sql in BEFORE {
        src.conn().execute_batch(sql).unwrap();
        twin.conn().execute_batch(sql).unwrap();
    }
    d.wait_caught_up();
    let mut c = db.client();
    let names: Vec<String> = PORTED.iter().map(|(_, t)| format!("'{t}'")).collect();
    let count_sql = format!(
        "SELECT count(*) FROM pg_trigger WHERE tgname IN ({})",
        names.join(", ")
    );
    assert_eq!(
        scalar::<i64>(&mut c, &count_sql),
        0,
        "no app trigger on Postgres before the cutover"
    );
    for t in ["items", "audit", "totals"] {
        assert_table_equal(&src.path, &mut c, t, "id");
    }
    assert_table_equal(&src.path, &mut c, "tags", "tag_id");

    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("notes_fail") && log.contains("RAISE(FAIL)"),
        "the cutover names the trigger it does not port:\n{log}"
    );
    assert!(d.stop());
    assert_eq!(scalar::<i64>(&mut c, &count_sql), PORTED.len() as i64);

    for sql in AFTER {
        let on_sqlite = twin.conn().execute_batch(sql).map_err(|e| e.to_string());
        let on_pg = c.batch_execute(sql).map_err(|e| {
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "23000", "{sql}: {db:?}");
            db.message().to_string()
        });
        assert_eq!(on_pg, on_sqlite, "{sql}");
    }
    // The times differ by when each side ran; that both were set is compared, then not them.
    let touched = "SELECT count(*) FROM items WHERE updated_at IS NOT NULL";
    let on_sqlite: i64 = twin.conn().query_row(touched, [], |r| r.get(0)).unwrap();
    assert!(on_sqlite >= 2);
    assert_eq!(scalar::<i64>(&mut c, touched), on_sqlite);
    let clear = "UPDATE items SET updated_at = NULL";
    twin.conn().execute_batch(clear).unwrap();
    c.batch_execute(clear).unwrap();
    for t in ["items", "audit", "totals"] {
        assert_table_equal(&twin.path, &mut c, t, "id");
    }
    let stamped = "SELECT count(*) FROM tags WHERE last_update IS NOT NULL";
    let on_sqlite: i64 = twin.conn().query_row(stamped, [], |r| r.get(0)).unwrap();
    assert_eq!(on_sqlite, 2, "rows found by rowid were stamped");
    assert_eq!(scalar::<i64>(&mut c, stamped), on_sqlite);
    let names = "SELECT string_agg(name, ',' ORDER BY tag_id) FROM tags";
    let on_sqlite: String = twin
        .conn()
        .query_row(
            &names.replace(
                "string_agg(name, ',' ORDER BY tag_id)",
                "group_concat(name, ',')",
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(scalar::<String>(&mut c, names), on_sqlite);
    let version: i64 = scalar(&mut c, "SELECT version FROM items WHERE id = 11");
    assert_eq!(
        version, 6,
        "nested updates fire other triggers, never the running one"
    );
}
