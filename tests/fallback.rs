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
        // Written aside and renamed: the bot reads the file before every transaction, and
        // must never read it half written.
        &format!(
            "cp '{}' '{}.new' && mv '{}.new' '{}'",
            to_pg.display(),
            url_file.display(),
            url_file.display(),
            url_file.display()
        ),
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
    let out = sqlite2pg_logging(
        &[
            "--source",
            p,
            "--target",
            &db.url,
            "fallback",
            "--exec",
            &format!(
                "sqlite3 '{}' \".backup '{}'\" && cp '{}' '{}.new' && mv '{}.new' '{}'",
                path.display(),
                snap.display(),
                to_sqlite.display(),
                url_file.display(),
                url_file.display(),
                url_file.display()
            ),
        ],
        "info",
    );
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    assert_one_window(&out, &path, &db, "fallback");
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
    assert_app_equal(&snap, &db);
    let mut c = db.client();
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

/// A fallback killed at random moments gives the app its Postgres writes back within the
/// lease (or is recorded, and a rerun completes it); the completed fallback leaves SQLite with
/// every Postgres write, in the forms SQLite had, the app's own trigger in place and quiet
/// while sqlite2pg wrote, and AUTOINCREMENT past every id Postgres handed out.
#[test]
fn a_killed_fallback_gives_postgres_back_and_a_rerun_completes_with_exact_values() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL,
           at DATETIME, flag BOOLEAN, price NUMERIC, data BLOB, n INTEGER);
         CREATE TABLE log (msg TEXT, n INTEGER);
         CREATE TABLE \"we\"\"ird\" (\"k ey\" TEXT PRIMARY KEY, v REAL) WITHOUT ROWID;
         CREATE TRIGGER notes_touch AFTER UPDATE OF body ON notes
           BEGIN UPDATE notes SET n = coalesce(n, 0) + 1 WHERE id = NEW.id; END;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200)
         INSERT INTO notes (body, at, flag, price, data)
           SELECT 'note ' || i || ' ✓', strftime('%Y-%m-%dT%H:%M:%fZ', 1700000000 + i * 61.5, 'unixepoch'),
                  CASE i % 2 WHEN 0 THEN 'yes' ELSE 'no' END, i * 1.25, randomblob(4) FROM s;
         INSERT INTO log VALUES ('a', 1), ('a', 1), ('b', NULL);
         INSERT INTO \"we\"\"ird\" VALUES ('x', 0.5), ('y''s', -1e300);",
    );
    let path = src.path.clone();
    let p = path.to_str().unwrap();
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    let before = sqlite_values(&path);
    let mut c = db.client();
    // The app on Postgres: ids from the identity (the highest then deleted), microseconds,
    // booleans, rows of a table without a key, a key with a quote and a space.
    c.batch_execute(
        "INSERT INTO notes (body, at, flag, price) SELECT 'pg ' || i, timestamp '2026-12-02 10:00:00.123456' + i * interval '1 minute', i % 2 = 0, i / 8.0 FROM generate_series(1, 50) i;
         DELETE FROM notes WHERE id = (SELECT max(id) FROM notes);
         UPDATE notes SET body = body || ' edited', flag = NOT flag WHERE id % 10 = 0 AND id <= 200;
         DELETE FROM notes WHERE id BETWEEN 101 AND 105;
         INSERT INTO log VALUES ('c', 3);
         DELETE FROM log WHERE msg = 'b';
         UPDATE \"we\"\"ird\" SET v = 2.5 WHERE \"k ey\" = 'x';
         INSERT INTO \"we\"\"ird\" VALUES ('new key', NULL);",
    )
    .unwrap();
    // A number with more digits than SQLite's REAL keeps: `check --reverse` lists it, and
    // the reverse stream stops on it (loudly, waiting) until it is changed on Postgres.
    c.execute(
        "UPDATE notes SET price = 0.1000000000000000000001 WHERE id = 20",
        &[],
    )
    .unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "check", "--reverse"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("ERROR   notes.price (1 values)"),
        "{}",
        text(&out)
    );
    d.wait_for_log("cannot come back to SQLite identically");
    c.execute("UPDATE notes SET price = 0.5 WHERE id = 20", &[])
        .unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "check", "--reverse"]);
    assert!(out.status.success(), "{}", text(&out));
    // The example follows the form SQLite holds now: milliseconds as the app wrote them, or
    // microseconds once the reverse stream has brought back rows Postgres wrote with them
    // (whether it did before stopping on the price above is a matter of batch timing).
    let t = text(&out);
    assert!(
        t.contains("dates come back as SQLite holds them, like 2024-05-01T09:30:00.000Z")
            || t.contains("dates come back as SQLite holds them, like 2024-05-01T09:30:00.000000Z"),
        "{t}"
    );
    // --dry-run says what would happen and changes nothing.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2. fence Postgres writes on 3 tables"),
        "{}",
        text(&out)
    );
    assert_eq!(
        scalar::<i64>(&mut c, "SELECT count(*) FROM sqlite2pg.pg_fence"),
        0
    );
    // A column a migration added on Postgres alone: the fallback refuses to lose it.
    c.batch_execute("ALTER TABLE notes ADD COLUMN tag text DEFAULT 'x'")
        .unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("has columns SQLite lacks (tag)"),
        "{}",
        text(&out)
    );
    c.batch_execute("ALTER TABLE notes DROP COLUMN tag")
        .unwrap();
    // So does a table a migration created on Postgres alone, once the app wrote to it.
    c.batch_execute("CREATE TABLE invoices (id int PRIMARY KEY); INSERT INTO invoices VALUES (1)")
        .unwrap();
    for dry in [true, false] {
        let mut args = vec!["--source", p, "--target", &db.url, "fallback"];
        if dry {
            args.push("--dry-run");
        }
        let out = sqlite2pg(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("Postgres has tables made since the cutover, with rows (invoices)"),
            "{}",
            text(&out)
        );
    }
    c.batch_execute("DROP TABLE invoices").unwrap();
    let highest: i64 = scalar(
        &mut c,
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('notes', 'id'))",
    );
    // Kill fallbacks until one is recorded (or eight were killed), then let one finish.
    let mut rng = Rng::from_clock();
    let mut recorded = false;
    for round in 0..8 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
            .args([
                "--source", p, "--target", &db.url, "fallback", "--lease", "1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 0 {
            // Inside the window: once the fence is seen, a few milliseconds on.
            let mut watch = db.client();
            let t0 = Instant::now();
            while scalar::<i64>(
                &mut watch,
                "SELECT count(*) FROM sqlite2pg.pg_fence WHERE until > clock_timestamp()",
            ) == 0
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.below(25)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        }
        let _ = child.kill();
        let _ = child.wait();
        recorded = scalar::<i64>(&mut c, "SELECT count(*) FROM sqlite2pg.fallback") > 0;
        if recorded {
            println!("round {round}: the killed fallback had recorded itself");
            break;
        }
        // Not recorded: the app writes to Postgres again within the lease (1 s), or at
        // once after `--abort`.
        if round % 3 == 2 {
            let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback", "--abort"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let t0 = Instant::now();
        loop {
            match c.execute("UPDATE log SET n = n WHERE msg = 'a'", &[]) {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        e.to_string().contains("moved back to SQLite")
                            || format!("{e:?}").contains("moved back to SQLite"),
                        "{e:?}"
                    );
                    assert!(
                        t0.elapsed() < Duration::from_secs(4),
                        "Postgres stayed fenced after a killed fallback: {e:?}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        println!(
            "round {round}: Postgres writable again after {:?}",
            t0.elapsed()
        );
    }
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback"]);
    assert!(
        out.status.success(),
        "fallback (recorded before: {recorded}):\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("fell back: writes were unavailable for"),
        "{}",
        text(&out)
    );
    d.kill9();
    // Equal, table by table.
    for (t, k) in [("notes", "id"), ("log", "msg"), ("we\"ird", "k ey")] {
        assert_table_equal(&path, &mut c, t, k);
    }
    // Forms: untouched rows byte for byte; changed ones in the column's own forms.
    let after = sqlite_values(&path);
    for (key, row) in &before {
        let id: i64 = key.parse().unwrap_or(0);
        if id % 10 != 0 && !(101..=105).contains(&id) && id <= 200 {
            assert_eq!(
                after.get(key),
                Some(row),
                "notes {key} was never changed on Postgres"
            );
        }
    }
    let new_row = after
        .values()
        .find(|r| r[1].starts_with("text:'pg 1'"))
        .expect("a row written on Postgres");
    assert_eq!(
        new_row[2], "text:'2026-12-02T10:01:00.123456Z'",
        "{new_row:?}"
    );
    assert!(new_row[3] == "text:'no'", "{new_row:?}");
    assert_eq!(new_row[4].split(':').next(), Some("real"), "{new_row:?}");
    let edited = &after["10"];
    assert!(
        edited[1].ends_with(" edited'") && edited[3] == "text:'no'",
        "{edited:?}"
    );
    // The edit on Postgres ran the app's trigger there (ported at the cutover); sqlite2pg's
    // write of it to SQLite did not run it a second time; the trigger is back for the app.
    assert_eq!(edited[6], "integer:1", "{edited:?}");
    sqlite3_shell(
        &path,
        "UPDATE notes SET body = 'by the app' WHERE id = 10; INSERT INTO notes (body) VALUES ('after fallback')",
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (n, id): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT n FROM notes WHERE id = 10), (SELECT max(id) FROM notes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(n, 2, "the app's trigger fires again");
    assert!(
        id > highest,
        "the app's new id {id} reuses one Postgres handed out (up to {highest})"
    );
    // `run` after the fallback says what to do instead of starting over.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("fell back to SQLite"), "{}", text(&out));
}

/// Every notes row as `typeof:quote(value)` per column, by id.
fn sqlite_values(path: &Path) -> BTreeMap<String, Vec<String>> {
    let c = rusqlite::Connection::open(path).unwrap();
    let cols = ["id", "body", "at", "flag", "price", "data", "n"];
    let sql = format!(
        "SELECT id, {} FROM notes",
        cols.iter()
            .map(|c| format!("typeof({c}) || ':' || quote({c})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut st = c.prepare(&sql).unwrap();
    st.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let vals: Vec<String> = (1..=cols.len())
            .map(|i| {
                r.get::<_, String>(i)
                    .map(|v| if v == "null:NULL" { "null".into() } else { v })
            })
            .collect::<rusqlite::Result<_>>()?;
        Ok((id.to_string(), vals))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

/// An app transaction on Postgres that writes one moved table, then another, while the
/// fallback raises its fence: neither it nor the fallback meets a deadlock (the fence takes
/// every table at once, without waiting while it holds one).
#[test]
fn the_fence_never_deadlocks_with_an_app_transaction_writing_two_tables() {
    let src = SqliteFile::new(
        "CREATE TABLE a (id INTEGER PRIMARY KEY, n INTEGER);
         CREATE TABLE b (id INTEGER PRIMARY KEY, n INTEGER);
         INSERT INTO a VALUES (1, 0); INSERT INTO b VALUES (1, 0);",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    // The fence takes the tables in plan order (a, then b); the app takes b, then a.
    let mut c = db.client();
    let mut tx = c.transaction().unwrap();
    tx.execute("UPDATE b SET n = n + 1", &[]).unwrap();
    // Held past --lock-wait, the fallback gives up, fences nothing, and names the holder.
    let out = sqlite2pg(&[
        "--source",
        p,
        "--target",
        &db.url,
        "fallback",
        "--lock-wait",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("others kept them locked for 500 ms (client backend")
            && text(&out).contains("UPDATE b SET n = n + 1"),
        "{}",
        text(&out)
    );
    assert!(
        db.client().execute("UPDATE a SET n = n", &[]).is_ok(),
        "the failed fallback left a fence"
    );
    let fallback = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args([
            "--source",
            p,
            "--target",
            &db.url,
            "fallback",
            "--lock-wait",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The fallback's work before the fence takes well under this.
    std::thread::sleep(Duration::from_secs(2));
    let committed = tx
        .execute("UPDATE a SET n = n + 1", &[])
        .and_then(|_| tx.commit());
    let out = fallback.wait_with_output().unwrap();
    assert!(
        committed.is_ok(),
        "the app's transaction failed: {committed:?}\nfallback:\n{}",
        text(&out)
    );
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    // The app's writes made it back to SQLite.
    let n: i64 = src
        .conn()
        .query_row("SELECT (SELECT n FROM a) + (SELECT n FROM b)", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 2);
}
