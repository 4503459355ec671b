//! Upgrading sqlite2pg in the middle of a migration. Each state format has a fixture in
//! `tests/fixtures/format-N` (made by `scripts/make-fixture` with that release): the app's
//! SQLite file and a dump of the target, taken after the release's daemon streamed for a
//! while and was stopped with changes still pending. This release must upgrade both sides in
//! place (no new snapshot), apply what is pending, and stream on to equal.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn fixture(format: u32, db: &TestDb) -> (tempfile::TempDir, PathBuf) {
    fixture_named(&format!("format-{format}"), db)
}

/// The fixture in `tests/fixtures/NAME` restored: its target into `db`, its SQLite file in a
/// temporary directory.
fn fixture_named(name: &str, db: &TestDb) -> (tempfile::TempDir, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}"));
    let out = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &db.url, "-f"])
        .arg(dir.join("target.sql"))
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "restore the fixture's dump: {}",
        text(&out)
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("app.db");
    std::fs::copy(dir.join("app.db"), &path).expect("copy the fixture's SQLite file");
    (tmp, path)
}

fn rows_copied(db: &TestDb) -> i64 {
    scalar(
        &mut db.client(),
        "SELECT sum(rows_copied)::bigint FROM sqlite2pg.table_state",
    )
}

/// Streams on from the fixture and checks both sides are equal after more writes.
fn upgrade_and_stream_on(format: u32, kills: usize) {
    let db = TestDb::new();
    let (_tmp, path) = fixture(format, &db);
    let copied = rows_copied(&db);
    let before = status_json(&path, &db);
    // The formats the fixture's release wrote, as its --version said them (0.1.0 wrote 1 on
    // both sides and did not say).
    let made_by = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/format-{format}/made-by.txt")),
    )
    .unwrap();
    let said = format!(
        "state format: SQLite {}, PostgreSQL {}",
        before["sqlite_format"], before["postgres_format"]
    );
    assert!(
        made_by.contains(&said) || (format == 1 && before["sqlite_format"] == 1),
        "{made_by} vs {before}"
    );
    assert_eq!(before["postgres_format"], format);
    assert!(before["lag_changes"].as_i64().unwrap_or(0) > 0, "{before}");
    // kill -9 the new release at random early moments: upgrade steps are transactions.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("kill -9 seed: {seed}");
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let d = Daemon::start(&path, &db, &[]);
        std::thread::sleep(std::time::Duration::from_millis(20 + seed % 300));
        d.kill9();
    }
    let mut d = Daemon::start(&path, &db, &[]);
    wait_capture_current(&path, "clients", &mut d);
    d.wait_caught_up();
    sqlite3_shell(
        &path,
        "UPDATE clients SET visits = visits + 100 WHERE id % 10 = 0; DELETE FROM tags WHERE project_id = 9;
         INSERT INTO clients (email, name) VALUES ('after-upgrade@example.org', 'new');",
    );
    d.wait_caught_up();
    let after = status_json(&path, &db);
    // Both sides at the formats this build writes.
    assert_eq!(after["sqlite_format"], after["formats_written"][0]);
    assert_eq!(after["postgres_format"], after["formats_written"][1]);
    assert_eq!(after["postgres_format"], 5);
    // Upgraded in place: nothing was copied again.
    assert_eq!(rows_copied(&db), copied, "the snapshot was not taken again");
    let mut c = db.client();
    assert_table_equal(&path, &mut c, "clients", "id");
    assert_table_equal(&path, &mut c, "projects", "id");
    let out = sqlite2pg_on(&path, &db, &["verify"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    // Foreign keys follow this release's rule: kept aside, none enforced while streaming.
    let enforced: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
    );
    assert_eq!(enforced, 0);
    let kept: i64 = scalar(&mut c, "SELECT count(*) FROM sqlite2pg.foreign_key");
    assert_eq!(kept, 2);
    let old_tables: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'sqlite2pg' AND tablename IN ('deferred_constraint', 'saved_constraint')",
    );
    assert_eq!(old_tables, 0);
    assert!(d.stop());
}

#[test]
fn a_migration_started_by_0_1_0_is_upgraded_in_place_and_streams_on_to_equal() {
    upgrade_and_stream_on(1, 0);
}

#[test]
fn an_upgrade_killed_at_random_moments_finishes_and_streams_on_to_equal() {
    upgrade_and_stream_on(1, 6);
}

#[test]
fn a_migration_started_by_0_2_0_is_upgraded_in_place_and_streams_on_to_equal() {
    upgrade_and_stream_on(2, 2);
}

#[test]
fn a_migration_started_by_0_3_0_is_upgraded_in_place_and_streams_on_to_equal() {
    upgrade_and_stream_on(3, 1);
}

#[test]
fn a_migration_started_by_0_4_0_is_upgraded_in_place_and_streams_on_to_equal() {
    upgrade_and_stream_on(4, 1);
}

#[test]
fn the_current_format_fixture_streams_on_to_equal() {
    upgrade_and_stream_on(5, 1);
}

fn sqlite_count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// A migration 0.4.0 cut over, with the app's writes on Postgres still pending: the capture
/// and fence triggers that cutover installed name no tenant. This release upgrades the state
/// under them (format 5: every state row names its tenant), follows the pending writes and
/// new ones back through the old triggers, and falls back with nothing lost.
#[test]
fn a_migration_cut_over_by_0_4_0_is_followed_back_and_falls_back_after_the_upgrade() {
    let db = TestDb::new();
    let (_tmp, path) = fixture_named("format-4-cutover", &db);
    let before = status_json(&path, &db);
    assert_eq!(before["postgres_format"], 4, "{before}");
    assert_eq!(before["phase"], "cut_over", "{before}");
    assert!(
        before["reverse_lag_changes"].as_i64().unwrap_or(0) > 0,
        "{before}"
    );
    let pending = "SELECT count(*) FROM clients WHERE email = 'pending-on-postgres@example.org'";
    assert_eq!(sqlite_count(&path, pending), 0);
    let d = Daemon::start(&path, &db, &[]);
    wait_until(
        "the writes pending on Postgres to reach SQLite",
        std::time::Duration::from_secs(30),
        || sqlite_count(&path, pending) == 1,
    );
    // The app writes on, through the triggers the older cutover installed.
    db.client()
        .batch_execute(
            "INSERT INTO clients (email, name) VALUES ('after-upgrade@example.org', 'new');
             UPDATE projects SET title = 'retitled on postgres' WHERE id = 10;
             DELETE FROM tags WHERE project_id = 11;",
        )
        .unwrap();
    wait_until(
        "the app's writes after the upgrade to reach SQLite",
        std::time::Duration::from_secs(30),
        || {
            sqlite_count(
                &path,
                "SELECT count(*) FROM clients WHERE email = 'after-upgrade@example.org'",
            ) == 1
                && sqlite_count(
                    &path,
                    "SELECT count(*) FROM projects WHERE title = 'retitled on postgres'",
                ) == 1
        },
    );
    let mut c = db.client();
    let tenants = pg_rows(
        &mut c,
        "SELECT DISTINCT tenant FROM sqlite2pg.reverse_change",
    );
    assert_eq!(tenants, [[Some(String::new())]]);
    let p = path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "fallback"]);
    assert!(out.status.success(), "fallback: {}", text(&out));
    assert!(d.stop(), "the daemon ends once fallen back");
    let after = status_json(&path, &db);
    assert_eq!(after["postgres_format"], 5, "{after}");
    assert_eq!(after["phase"], "fell_back", "{after}");
    assert_table_equal(&path, &mut c, "clients", "id");
    assert_table_equal(&path, &mut c, "projects", "id");
    assert_eq!(
        sqlite_count(
            &path,
            "SELECT count(*) FROM tags WHERE project_id IN (9, 11)"
        ),
        0
    );
    // The fence the fallback raised on Postgres holds for this tenant's tables.
    assert!(
        c.batch_execute("INSERT INTO clients (email) VALUES ('too late@example.org')")
            .is_err()
    );
}

#[test]
fn a_state_newer_than_this_release_is_refused_on_either_side() {
    let db = TestDb::new();
    let (_tmp, path) = fixture(2, &db);
    let p = path.to_str().unwrap();
    let run = || sqlite2pg(&["--source", p, "--target", &db.url, "run", "--snapshot-only"]);
    sqlite3_shell(
        &path,
        "UPDATE _sqlite2pg_meta SET value = '99' WHERE key = 'format'",
    );
    let out = run();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("format 99") && text(&out).contains("newer sqlite2pg"),
        "{}",
        text(&out)
    );
    sqlite3_shell(
        &path,
        "UPDATE _sqlite2pg_meta SET value = '2' WHERE key = 'format'",
    );
    db.client()
        .batch_execute("UPDATE sqlite2pg.meta SET format_version = 99")
        .unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("format 99") && text(&out).contains("newer sqlite2pg"),
        "{}",
        text(&out)
    );
    let status = sqlite2pg(&["--source", p, "--target", &db.url, "status"]);
    assert!(!status.status.success(), "{}", text(&status));
}

#[test]
fn install_dry_run_prints_the_script_and_changes_nothing() {
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, e TEXT UNIQUE); CREATE TABLE log (at TEXT, msg TEXT);",
    );
    let before = sqlite_master(&src.path);
    let out = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "install",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(sqlite_master(&src.path), before, "dry run changed the file");
    for needle in [
        "CREATE TABLE IF NOT EXISTS _sqlite2pg_changes",
        "AFTER INSERT ON \"t\" BEGIN INSERT INTO _sqlite2pg_changes",
        "BEFORE INSERT ON \"t\" BEGIN",
        "CREATE TABLE IF NOT EXISTS \"_sqlite2pg_img_",
        "AFTER DELETE ON \"log\" BEGIN",
        "'format', '2'",
    ] {
        assert!(script.contains(needle), "missing {needle}:\n{script}");
    }
    // The script is what install does: run through the sqlite3 shell, it captures the same.
    let copy = src.path.with_extension("copy.db");
    std::fs::copy(&src.path, &copy).unwrap();
    // (After a newline: the shell would take a leading "--" for an option.)
    sqlite3_shell(&copy, &format!("\n{script}"));
    let out = sqlite2pg(&["--source", src.path.to_str().unwrap(), "install"]);
    assert!(out.status.success(), "{}", text(&out));
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|o| !o.contains("install_id") && !o.starts_with("table:_sqlite2pg_meta"))
            .collect()
    };
    assert_eq!(strip(sqlite_master(&copy)), strip(sqlite_master(&src.path)));
}

/// A reader holding one state table while it waits for another (a transaction, or one
/// statement, reading two) can deadlock with a format step altering both: Postgres cancels
/// one, and the step must then be run again, not fail the run. Seen once in CI, against this
/// harness' own reading query (the step was the victim, and the daemon exited).
#[test]
fn the_state_format_is_made_while_readers_read_it() {
    for round in 0..8 {
        let db = TestDb::new();
        let src = SqliteFile::new(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (url, stop) = (db.url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                // One transaction reading the stream, then the snapshot progress, a moment
                // apart: the window in which a step altering both meets it.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c.batch_execute(
                        "BEGIN; SELECT 1 FROM sqlite2pg.stream LIMIT 1; SELECT pg_sleep(0.05);
                         SELECT 1 FROM sqlite2pg.table_state LIMIT 1; COMMIT",
                    );
                    let _ = c.batch_execute("ROLLBACK");
                }
            })
        };
        let p = src.path.to_str().unwrap();
        let out = sqlite2pg(&["--source", p, "--target", &db.url, "run", "--snapshot-only"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        assert!(out.status.success(), "round {round}: {}", text(&out));
    }
}
