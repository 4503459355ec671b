//! Fidelity under real apps' habits (issue 8): 64-bit ids, foreign keys left off, UNIQUE swaps,
//! and readers of Postgres never seeing a state SQLite never had.

mod common;

use common::*;

#[test]
fn ids_past_32_bits_and_the_largest_rowid_snapshot_and_stream() {
    let src = SqliteFile::new(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, telegram_id INTEGER NOT NULL, age INT, name TEXT);
         INSERT INTO users VALUES (1, 5000000000, 30, 'a'), (9223372036854775807, 7, NULL, 'max');",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    sqlite3_shell(
        &src.path,
        "INSERT INTO users VALUES (3000000000, 9007199254740993, 4294967296, 'telegram')",
    );
    d.wait_caught_up();
    let mut c = db.client();
    assert_table_equal(&src.path, &mut c, "users", "id");
    let types = pg_rows(
        &mut c,
        "SELECT data_type::text FROM information_schema.columns WHERE table_name = 'users' AND data_type <> 'text' ORDER BY ordinal_position",
    );
    assert_eq!(types, vec![vec![Some("bigint".to_string())]; 3]);
    // The identity hands out ids after the largest copied one, without overflowing on it.
    let last: i64 = scalar(
        &mut c,
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('users', 'id'))",
    );
    assert_eq!(last, i64::MAX);
    assert!(d.stop());
}

#[test]
fn check_warns_when_an_existing_32_bit_column_is_fed_by_sqlite_integers() {
    let src = SqliteFile::new(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, telegram_id INTEGER, n SMALLINT);
         INSERT INTO users VALUES (1, 5, 1);",
    );
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE TABLE users (id serial PRIMARY KEY, telegram_id integer, n smallint)",
        )
        .unwrap();
    let out = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "--target",
        &db.url,
        "check",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    let warned: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "warning" && f["message"].as_str().unwrap().contains("64-bit"))
        .map(|f| f["column"].as_str().unwrap())
        .collect();
    // SMALLINT into smallint is what the app declared; INTEGER into integer is a trap.
    assert_eq!(warned, ["id", "telegram_id"], "{report:#}");
    assert_eq!(out.status.code(), Some(0), "warnings only: {}", text(&out));
}

const PARENT_CHILD: &str = "
    CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE, note TEXT);
    INSERT INTO parent VALUES (1, 'one'), (2, 'two');
    INSERT INTO child VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 2, 'c');";

fn cutover(src: &std::path::Path, db: &TestDb, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--source",
        src.to_str().unwrap(),
        "--target",
        &db.url,
        "cutover",
    ];
    args.extend_from_slice(extra);
    sqlite2pg(&args)
}

/// The app leaves foreign keys off (the sqlite3 shell, as Python's sqlite3 and SQLAlchemy do):
/// a deleted parent keeps its children in SQLite and an orphan goes in. Postgres must hold
/// exactly that while streaming; cutover refuses the orphans, or keeps them when told.
fn foreign_keys_off(journal: &str, fix_before_cutover: bool) {
    let src = SqliteFile::new(&format!("PRAGMA journal_mode = {journal};{PARENT_CHILD}"));
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    sqlite3_shell(&src.path, "DELETE FROM parent WHERE id = 1");
    sqlite3_shell(&src.path, "INSERT INTO child VALUES (4, 99, 'orphan')");
    d.wait_caught_up();
    assert_eq!(d.try_exit(), None, "the daemon stopped:\n{}", d.log_text());
    let mut c = db.client();
    assert_table_equal(&src.path, &mut c, "parent", "id");
    assert_table_equal(&src.path, &mut c, "child", "id");
    let p = src.path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify"]);
    assert!(out.status.success(), "verify:\n{}", text(&out));
    let enforced: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f'",
    );
    assert_eq!(enforced, 0, "no foreign key is enforced while streaming");
    // status and check name the orphans: table, key, column, the missing parent.
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(st["foreign_keys_kept"], 1, "{st:#}");
    assert_eq!(st["orphans"][0]["count"], 3, "{st:#}");
    let examples = st["orphans"][0]["examples"].to_string();
    assert!(
        examples.contains("child: id='4' has parent_id='99', which no row of parent has"),
        "{examples}"
    );
    let out = sqlite2pg(&["--source", p, "check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    let orphan = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "orphan")
        .expect("check reports the orphans")
        .clone();
    assert_eq!(orphan["count"], 3, "{orphan:#}");
    assert_eq!(orphan["severity"], "warning");
    assert!(
        orphan["examples"].to_string().contains("id=4"),
        "{orphan:#}"
    );
    // Cutover refuses before fencing anything, listing the keys.
    let out = cutover(&src.path, &db, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("3 rows break") && text(&out).contains("parent_id='99'"),
        "{}",
        text(&out)
    );
    sqlite3_shell(&src.path, "INSERT INTO parent VALUES (3, 'still writable')");
    let delete_cascades = if fix_before_cutover {
        sqlite3_shell(
            &src.path,
            "DELETE FROM child WHERE parent_id NOT IN (SELECT id FROM parent)",
        );
        let out = cutover(&src.path, &db, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("validated"), "{}", text(&out));
        true
    } else {
        let out = cutover(&src.path, &db, &["--orphans", "keep"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("stays NOT VALID"), "{}", text(&out));
        false
    };
    let (validated, action): (bool, String) = {
        let r = c
            .query_one(
                "SELECT convalidated, confdeltype::text FROM pg_constraint WHERE contype = 'f' AND conname = 'child_parent_id_fkey'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(validated, fix_before_cutover);
    assert_eq!(action, "c", "ON DELETE CASCADE is back");
    if delete_cascades {
        // Postgres' rules now: the app's delete cascades there.
        c.batch_execute("DELETE FROM parent WHERE id = 2").unwrap();
        let n: i64 = scalar(&mut c, "SELECT count(*) FROM child WHERE parent_id = 2");
        assert_eq!(n, 0);
    } else {
        // New rows are checked even though the old orphans stay.
        assert!(
            c.batch_execute("INSERT INTO child VALUES (50, 77, 'new orphan')")
                .is_err()
        );
    }
}

#[test]
fn foreign_keys_off_are_followed_exactly_and_cutover_validates_once_fixed_wal() {
    foreign_keys_off("wal", true);
}

#[test]
fn foreign_keys_off_are_followed_exactly_and_orphans_can_be_kept_rollback_journal() {
    foreign_keys_off("delete", false);
}
