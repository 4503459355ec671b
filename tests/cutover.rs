//! The user's day in one test, and cutover's bad inputs.

mod common;

use common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON:\n{}", text(out)))
}

#[test]
fn the_users_day_check_run_cutover_verify_fall_back() {
    // The bot's SQLite file, written through SQLAlchemy; the Postgres schema from Alembic
    // autogenerate on the same models.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    let p = path.to_str().unwrap();
    app(&["seed", p, "400", "wal"]);
    let db = TestDb::new();
    app(&["alembic", &db.url]);
    let master_before = sqlite_master(&path);
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "check"]);
    assert!(out.status.success(), "check:\n{}", text(&out));
    // The app writes for 30 s while the daemon snapshots and streams.
    let writer = start_writer(&path, 30.0, 100.0);
    let mut d = Daemon::start(&path, &db, &[]);
    std::thread::sleep(std::time::Duration::from_secs(20));
    let st = json(&sqlite2pg(&[
        "--source", p, "--target", &db.url, "status", "--json",
    ]));
    assert_eq!(st["phase"], "streaming", "{st:#}");
    assert_eq!(st["daemon_running"], true);
    // The dry run numbers the steps the run takes, and changes nothing.
    let dry = |expect: Option<i32>| {
        let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover", "--dry-run"]);
        assert_eq!(out.status.code(), expect, "{}", text(&out));
        text(&out)
    };
    let steps = dry(Some(0));
    for step in [
        "1. wait until lag <= 2.0 s",
        "2. fence SQLite writes on",
        "3. drain the changelog to Postgres",
        "6. add the 5 foreign keys kept aside while streaming, NOT VALID; record the cutover",
        "7. after writes resume: validate the foreign keys",
    ] {
        assert!(steps.contains(step), "{step:?} missing:\n{steps}");
    }
    // (Had it fenced SQLite, the writer's first failure would come before the cutover's
    // fence: asserted below.)
    // Cut over while the app is still writing.
    let out = sqlite2pg_logging(&["--source", p, "--target", &db.url, "cutover"], "info");
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    assert_one_window(&out, &path, &db, "cutover");
    // The dry run refuses what the run would refuse.
    assert!(dry(Some(2)).contains("already cut over"));
    let summary = writer_summary(writer);
    let st = json(&sqlite2pg(&[
        "--source", p, "--target", &db.url, "status", "--json",
    ]));
    assert_eq!(st["phase"], "cut_over");
    let window = st["cutover"]["window_ms"].as_f64().unwrap();
    println!("write-unavailable window: {window:.1} ms; app writer: {summary}");
    assert!(window > 0.0);
    // No app transaction failed before the fence; after it, only with the fence message.
    if let Some(first) = summary["first_failure_unix"].as_f64() {
        let fenced: f64 = scalar(
            &mut db.client(),
            "SELECT extract(epoch FROM fenced_at)::float8 FROM sqlite2pg.cutover",
        );
        assert!(
            first >= fenced - 0.01,
            "a transaction failed {:.3} s before the fence: {summary}",
            fenced - first
        );
        for m in summary["failure_samples"].as_array().unwrap() {
            assert!(
                m.as_str().unwrap().contains("moved to PostgreSQL"),
                "{summary}"
            );
        }
    }
    // The daemon goes on: it follows Postgres back into SQLite.
    d.wait_for_log("following Postgres back into SQLite");
    assert!(d.try_exit().is_none(), "{}", d.log_text());
    let st = json(&sqlite2pg(&[
        "--source", p, "--target", &db.url, "status", "--json",
    ]));
    assert_eq!(st["direction"], "reverse", "{st:#}");
    // Equal, by verify and independently through SQLAlchemy.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify"]);
    assert!(out.status.success(), "verify:\n{}", text(&out));
    assert_app_equal(&path, &db);
    // The foreign keys Alembic made are back, and validated after writes resumed.
    assert_eq!(validated_foreign_keys(&mut db.client()), 5);
    assert_eq!(
        scalar::<i64>(
            &mut db.client(),
            "SELECT count(*) FROM sqlite2pg.foreign_key"
        ),
        0
    );
    // The app on Postgres inserts without giving ids: sequences were moved.
    let inserted = app(&["pg-insert", &db.url]);
    assert!(inserted.contains("project"), "{inserted}");
    // SQLite refuses writes with the fence message. Like the app, the shell waits for the
    // write lock: the daemon's reverse stream may be writing the insert above back.
    let out = std::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(&path)
        .arg("INSERT INTO counters (id, hits) VALUES (99, 0)")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this database has moved to PostgreSQL; see sqlite2pg status"),
        "{}",
        text(&out)
    );
    // Give up on SQLite the blunt way: uninstall leaves no object of ours on either side,
    // and the file is writable again.
    assert!(d.stop(), "the daemon should stop cleanly on SIGTERM");
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "uninstall"]);
    assert!(out.status.success());
    assert!(text(&out).contains("NOT in this file"), "{}", text(&out));
    let master_after = sqlite_master(&path);
    assert_eq!(master_after, master_before);
    sqlite3_shell(&path, "INSERT INTO counters (id, hits) VALUES (99, 0)");
    assert_eq!(
        scalar::<i64>(
            &mut db.client(),
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlite2pg'"
        ),
        0
    );
}

#[test]
fn cutover_refuses_what_it_cannot_do_and_leaves_the_app_writable() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60000) INSERT INTO t SELECT i, 0 FROM s;",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    let cutover = |extra: &[&str]| {
        let mut args = vec!["--source", p, "--target", &db.url, "cutover"];
        args.extend_from_slice(extra);
        sqlite2pg(&args)
    };
    // Before anything ran.
    let out = cutover(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("capture is not installed"),
        "{}",
        text(&out)
    );
    // The daemon stopped far behind: 60k changes nobody applied.
    snapshot(&src.path, &db, &[]);
    sqlite3_shell(&src.path, "UPDATE t SET n = n + 1");
    let out = cutover(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no daemon is running and Postgres is 60000 changes behind"),
        "{}",
        text(&out)
    );
    sqlite3_shell(&src.path, "UPDATE t SET n = n + 1 WHERE id = 1");
    // Caught up by the daemon, stopped, then cut over by itself (it drains the rest).
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert!(d.stop());
    sqlite3_shell(&src.path, "UPDATE t SET n = 7 WHERE id = 2");
    let marker = src.dir.path().join("hook-ran");
    let hook = format!("echo restarting the bot > {}", marker.display());
    let out = cutover(&["--full-verify", "--exec", &hook]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--exec hook exited 0"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "restarting the bot"
    );
    let n: i64 = scalar(&mut db.client(), "SELECT n FROM t WHERE id = 2");
    assert_eq!(n, 7);
    // Twice in a row.
    let out = cutover(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("already cut over"), "{}", text(&out));
    // After uninstall: SQLite is writable again, and cutover says why it will not run.
    assert!(sqlite2pg(&["--source", p, "uninstall"]).status.success());
    sqlite3_shell(&src.path, "UPDATE t SET n = 8 WHERE id = 2");
    let out = cutover(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn cutover_backs_out_when_the_final_verify_finds_a_difference() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000) INSERT INTO t SELECT i, 0, 'x' FROM s;",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    assert!(
        sqlite2pg(&["--source", p, "--target", &db.url, "verify"])
            .status
            .success()
    );
    // 1000 keys change after the full verify; one of them is tampered with in Postgres.
    sqlite3_shell(&src.path, "UPDATE t SET n = n + 1 WHERE id % 3 = 0");
    d.wait_caught_up();
    db.client()
        .batch_execute("UPDATE t SET s = 'tampered' WHERE id = 1500")
        .unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("table t, id=1500 is different in column s; nothing was switched"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("the fence is lifted"), "{}", text(&out));
    // The app keeps writing to SQLite, and the daemon keeps streaming.
    sqlite3_shell(&src.path, "UPDATE t SET n = 42 WHERE id = 1");
    d.wait_caught_up();
    let n: i64 = scalar(&mut db.client(), "SELECT n FROM t WHERE id = 1");
    assert_eq!(n, 42);
    // The capture on Postgres went in before the fence and stays for the next try: it left
    // out the daemon's writes (made before and after the failed cutover), and records any
    // other session's.
    let mut c = db.client();
    let recorded = |c: &mut postgres::Client| -> i64 {
        scalar(c, "SELECT count(*) FROM sqlite2pg.reverse_change")
    };
    assert_eq!(recorded(&mut c), 0);
    c.batch_execute("UPDATE t SET s = 'by hand' WHERE id = 7")
        .unwrap();
    assert_eq!(recorded(&mut c), 1);
    assert!(d.stop());
    // `uninstall` takes it off the app's tables; Postgres keeps its copy and state.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("removed the reverse capture"),
        "{}",
        text(&out)
    );
    let left: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sqlite2pg%'",
    );
    assert_eq!(left, 0);
    let copied: i64 = scalar(&mut c, "SELECT count(*) FROM t");
    assert_eq!(copied, 3000);
}

/// Issue 15 (found by the differential tester, seed 8003): a migration rebuilt a child table
/// without its foreign key column while the daemon ran; the key stayed in sqlite2pg's store and
/// the cutover failed on the missing column. A key dropped while the column stays must not come
/// back on Postgres either: SQLite no longer enforces it.
#[test]
fn foreign_keys_a_migration_took_away_are_not_added_at_cutover() {
    let src = SqliteFile::new(
        "CREATE TABLE parents (id INTEGER PRIMARY KEY);
         CREATE TABLE kids (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parents(id), n INTEGER);
         CREATE TABLE pets (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parents(id) ON DELETE CASCADE);
         INSERT INTO parents VALUES (1);
         INSERT INTO kids VALUES (1, 1, 0);
         INSERT INTO pets VALUES (1, 1);",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    // Alembic's batch mode: copy, drop, rename; kids loses the column, pets the constraint.
    src.conn()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             BEGIN;
             CREATE TABLE _alembic_tmp_kids (id INTEGER PRIMARY KEY, n INTEGER);
             INSERT INTO _alembic_tmp_kids (id, n) SELECT id, n FROM kids;
             DROP TABLE kids;
             ALTER TABLE _alembic_tmp_kids RENAME TO kids;
             CREATE TABLE _alembic_tmp_pets (id INTEGER PRIMARY KEY, parent INTEGER);
             INSERT INTO _alembic_tmp_pets SELECT id, parent FROM pets;
             DROP TABLE pets;
             ALTER TABLE _alembic_tmp_pets RENAME TO pets;
             COMMIT;
             INSERT INTO pets VALUES (2, 99);",
        )
        .unwrap();
    wait_capture_current(&src.path, "pets", &mut d);
    d.wait_caught_up();
    let p = src.path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    let mut c = db.client();
    let fks = pg_rows(
        &mut c,
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
    );
    assert_eq!(fks, Vec::<Vec<Option<String>>>::new());
    // As in SQLite, a pet may name a parent that does not exist.
    c.batch_execute("INSERT INTO pets VALUES (3, 98)").unwrap();
    drop(d);
}

/// A daemon that runs but cannot apply (a session on Postgres holds a lock its writes wait
/// for) is not an unreachable Postgres: cutover says the daemon did not apply in time, points
/// at `status`, and leaves the app writing to SQLite.
#[test]
fn a_daemon_that_cannot_apply_in_time_is_named_as_such_and_nothing_is_switched() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER);
         INSERT INTO t VALUES (1, 1);",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    // Reads go on; the daemon's writes wait.
    let mut blocker = db.client();
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN SHARE MODE")
        .unwrap();
    src.conn()
        .execute("INSERT INTO t VALUES (2, 2)", [])
        .unwrap();
    let out = sqlite2pg(&[
        "--source",
        p,
        "--target",
        &db.url,
        "cutover",
        "--wait",
        "2",
        "--max-lag",
        "600",
    ]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("the daemon did not apply the last changes within 2 s"),
        "{msg}"
    );
    assert!(msg.contains("sqlite2pg status"), "{msg}");
    assert!(
        !msg.contains("reachable"),
        "the hint blames the network:\n{msg}"
    );
    blocker.batch_execute("ROLLBACK").unwrap();
    src.conn()
        .execute("INSERT INTO t VALUES (3, 3)", [])
        .expect("the app still writes to SQLite");
    d.wait_caught_up();
    assert!(d.stop());
}
