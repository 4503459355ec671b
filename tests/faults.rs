//! Faults around the daemon and cutover. This binary has the test cluster to itself, because it
//! restarts it, and runs its tests one at a time.

mod common;

use common::*;

/// The tests here restart the shared cluster: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn postgres_restarting_mid_stream_loses_nothing() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bot.db");
    app(&["seed", path.to_str().unwrap(), "300", "wal"]);
    let db = TestDb::new();
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let writer = start_writer(&path, 8.0, 100.0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    restart_cluster(std::time::Duration::from_secs(3));
    let summary = finish_writer(writer);
    println!("app writer across the restart: {summary}");
    d.wait_caught_up();
    assert_app_equal(&path, &db);
    let log = d.log_text();
    assert!(
        log.contains("resuming"),
        "the daemon should say it reconnected:\n{log}"
    );
    // The connection that applies took the run lock again: status sees the daemon, and a
    // cutover lets it drain instead of draining beside it.
    let p = path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(st["daemon_running"], true, "{st}");
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover: {}", text(&out));
    d.wait_for_log("cut over: Postgres is the database now");
    assert_app_equal(&path, &db);
    assert!(d.stop());
}

#[test]
fn postgres_going_away_while_a_migration_is_followed_loses_nothing() {
    // Found by the differential tester: after the app's migration the daemon plans again and
    // re-synchronizes the rebuilt table; Postgres restarting meanwhile ended the daemon.
    let _one_at_a_time = serial();
    let src = SqliteFile::new(
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300000)
         INSERT INTO clients SELECT i, 'client ' || i FROM s;",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    // Alembic's batch mode: copy, drop, rename; then the app writes on.
    sqlite3_shell(
        &src.path,
        "CREATE TABLE _alembic_tmp_clients (id INTEGER PRIMARY KEY, name TEXT, email TEXT);
         INSERT INTO _alembic_tmp_clients (id, name) SELECT id, name FROM clients;
         DROP TABLE clients;
         ALTER TABLE _alembic_tmp_clients RENAME TO clients;
         INSERT INTO clients VALUES (300001, 'c', 'c@x.org');",
    );
    d.wait_for_log("it will be re-synchronized");
    restart_cluster(std::time::Duration::from_secs(2));
    assert_eq!(d.try_exit(), None, "the daemon ended:\n{}", d.log_text());
    let mut c = db.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while scalar::<i64>(
        &mut c,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'clients' AND column_name = 'email'",
    ) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new column never reached Postgres:\n{}",
            d.log_text()
        );
        assert_eq!(d.try_exit(), None, "the daemon ended:\n{}", d.log_text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    d.wait_caught_up();
    assert_table_equal(&src.path, &mut c, "clients", "id");
    assert!(d.stop());
}

#[test]
fn postgres_going_away_during_cutover_leaves_the_app_writable_on_sqlite() {
    let _one_at_a_time = serial();
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40000) INSERT INTO t SELECT i, 0 FROM s;",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    snapshot(&src.path, &db, &[]);
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    // 40k changes no daemon applied: cutover drains them itself, inside the window.
    sqlite3_shell(&src.path, "UPDATE t SET n = n + 1");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite2pg"))
        .args(["--source", p, "--target", &db.url, "cutover"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    restart_cluster(std::time::Duration::from_secs(2));
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    println!("cutover output:\n{t}");
    // Whatever step it reached, it fails with a clear message and the app can write to SQLite.
    assert_ne!(
        out.status.code(),
        Some(0),
        "cutover should fail when Postgres goes away:\n{t}"
    );
    assert!(t.contains("error ["), "{t}");
    sqlite3_shell(&src.path, "UPDATE t SET n = 100 WHERE id = 1");
    // Postgres is back: the daemon catches up, and a retried cutover succeeds.
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);

    assert!(out.status.success(), "{}", text(&out));
    let n: i64 = scalar(&mut db.client(), "SELECT n FROM t WHERE id = 1");
    assert_eq!(n, 100);
}

#[test]
fn healthz_answers_503_while_postgres_is_unreachable() {
    let _one_at_a_time = serial();
    let src = SqliteFile::new("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);");
    let db = TestDb::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut d = Daemon::start_with(&src.path, &db, &[], &["--metrics-addr", &addr]);
    d.wait_caught_up();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    // Postgres goes away for 4 s; a change makes the daemon notice.
    let addr2 = addr.clone();
    let watcher = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            let (code, body) = http_get(&addr2, "/healthz");
            if code == 503 {
                return Some(body);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let src_path = src.path.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        sqlite3_shell(&src_path, "INSERT INTO t VALUES (1, 'during the outage')");
    });
    restart_cluster(std::time::Duration::from_secs(4));
    writer.join().unwrap();
    let seen = watcher
        .join()
        .unwrap()
        .expect("/healthz never answered 503 while Postgres was down");
    assert!(seen.contains("Postgres is unreachable"), "{seen}");
    d.wait_caught_up();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while http_get(&addr, "/healthz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz did not recover after Postgres came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_table_equal(&src.path, &mut db.client(), "t", "id");
    assert!(d.stop());
}

/// A server that accepts the connection and never answers (hung, stopped, a proxy with
/// nothing behind it): a command gives up within the URL's connect_timeout and says so,
/// instead of waiting forever.
#[test]
fn a_postgres_that_never_answers_fails_a_command_within_its_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.db");
    gen_crm(&path, 100);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!(
        "postgres://app:pw-Hidden-8@127.0.0.1:{}/crm?sslmode=disable&connect_timeout=2",
        silent.local_addr().unwrap().port()
    );
    let t0 = std::time::Instant::now();
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &target,
        "status",
    ]);
    let took = t0.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        (std::time::Duration::from_secs(2)..std::time::Duration::from_secs(8)).contains(&took),
        "gave up after {took:?}"
    );
    assert!(
        text(&out).contains("no answer within 2 s"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("pw-Hidden-8"), "{}", text(&out));
    drop(silent);
}

/// Waits until the reverse stream has applied every change Postgres recorded, reconnecting
/// as needed (the cluster may be restarting).
fn wait_reverse_drained(db: &TestDb, d: &Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let pending = postgres::Client::connect(&db.url, postgres::NoTls)
            .ok()
            .and_then(|mut c| {
                c.query_one(
                    "SELECT count(*) FROM sqlite2pg.reverse_change WHERE applied_at IS NULL",
                    &[],
                )
                .ok()
            })
            .map(|r| r.get::<_, i64>(0));
        if pending == Some(0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reverse stream did not drain ({pending:?} pending):\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// After the cutover, Postgres restarts while the reverse stream applies a backlog: it
/// reconnects and loses nothing. A key changed only in case on Postgres comes back as one
/// row under SQLite's NOCASE key; a second spelling SQLite cannot hold stops the stream
/// loudly until it is fixed on Postgres. The fallback then completes.
#[test]
fn postgres_restarting_during_the_reverse_stream_loses_nothing() {
    let _one_at_a_time = serial();
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, uses INTEGER,
           note TEXT CHECK (round(length(note)) < 5)) WITHOUT ROWID;
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60000)
         INSERT INTO t SELECT i, 0 FROM s;
         INSERT INTO tags (name, uses) VALUES ('Rust', 1), ('Go', 2);",
    );
    let p = src.path.to_str().unwrap();
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "cutover: {}", text(&out));
    d.wait_for_log("following Postgres back into SQLite");
    // A backlog of 60k changes; Postgres restarts while the stream applies it.
    db.client()
        .batch_execute(
            "UPDATE t SET n = n + 1;
             UPDATE tags SET name = 'rust', uses = 3 WHERE name = 'Rust';",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    restart_cluster(std::time::Duration::from_secs(2));
    db.client()
        .batch_execute("UPDATE t SET n = n + 1 WHERE id % 2 = 0")
        .unwrap();
    wait_reverse_drained(&db, &d);
    // Said by the follower both streams share, after the reverse stream began.
    let log = d.log_text();
    let reverse = &log[log.find("following Postgres back into SQLite").unwrap()..];
    assert!(
        reverse.contains("Postgres is unreachable")
            && reverse.contains("Postgres is reachable again"),
        "the reverse stream should say it lost Postgres, then that it resumed:\n{log}"
    );
    assert_eq!(
        sqlite_rows(
            &src.path,
            "SELECT n || ':' || count(*) FROM t GROUP BY n ORDER BY n"
        ),
        ["1:30000", "2:30000"]
    );
    assert_eq!(
        sqlite_rows(
            &src.path,
            "SELECT quote(name) || quote(uses) FROM tags ORDER BY name"
        ),
        ["'Go'2", "'rust'3"]
    );
    // The NOCASE key is unique by its folded value on Postgres too: a second spelling is
    // refused there, as SQLite would refuse it.
    let mut c = db.client();
    let e = c
        .batch_execute("INSERT INTO tags VALUES ('RUST', 9)")
        .expect_err("a second spelling of a NOCASE key");
    assert!(format!("{e:?}").contains("tags_name_fold_key"), "{e:?}");
    // A CHECK that does not translate is not on Postgres: SQLite refuses the row, and the
    // stream waits until it is fixed there.
    c.batch_execute("INSERT INTO tags (name, uses, note) VALUES ('Zig', 9, 'too long')")
        .unwrap();
    d.wait_for_log("SQLite refuses a row from Postgres in table tags");
    c.batch_execute("DELETE FROM tags WHERE name = 'Zig'; UPDATE t SET n = 7 WHERE id = 1")
        .unwrap();
    wait_reverse_drained(&db, &d);
    assert_eq!(
        sqlite_rows(&src.path, "SELECT quote(n) FROM t WHERE id = 1"),
        ["7"]
    );
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback"]);
    assert!(out.status.success(), "fallback: {}", text(&out));
    assert_table_equal(&src.path, &mut c, "t", "id");
    assert_table_equal(&src.path, &mut c, "tags", "name");
    assert!(d.stop());
}
