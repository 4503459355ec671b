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
