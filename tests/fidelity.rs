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
    let (code, report) = check_json(&src.path, Some(&db));
    let warned: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "warning" && f["message"].as_str().unwrap().contains("64-bit"))
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    // SMALLINT into smallint is what the app declared; INTEGER into integer is a trap. One
    // finding names them all, with one migration.
    assert_eq!(warned.len(), 1, "{report:#}");
    assert!(
        warned[0].ends_with(": users.id (integer), users.telegram_id (integer)"),
        "{report:#}"
    );
    assert_eq!(code, Some(0), "warnings only: {report:#}");
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
fn foreign_keys_off(journal: &str, fix_before_cutover: bool, migration_made: bool) {
    let src = SqliteFile::new(&format!("PRAGMA journal_mode = {journal};{PARENT_CHILD}"));
    let db = TestDb::new();
    if migration_made {
        // The app's own Postgres schema, as its migrations made it: an immediate, cascading key.
        db.client()
            .batch_execute(
                "CREATE TABLE parent (id bigint PRIMARY KEY, name text);
                 CREATE TABLE child (id bigint PRIMARY KEY, note text,
                   parent_id bigint CONSTRAINT child_parent_id_fkey REFERENCES parent (id) ON DELETE CASCADE);",
            )
            .unwrap();
    }
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
    let (_, report) = check_json(&src.path, None);
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
    foreign_keys_off("wal", true, false);
}

#[test]
fn foreign_keys_off_are_followed_exactly_and_orphans_can_be_kept_rollback_journal_migration_made() {
    foreign_keys_off("delete", false, true);
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Pauses the daemon (SIGSTOP) between two of its reads: in rollback-journal mode a process
/// frozen inside a read transaction keeps its SHARED lock, and no writer could commit until it
/// resumes. A write that cannot commit within 200 ms means it was caught mid-read: it is let
/// go on a moment and paused again.
fn pause_idle(src: &std::path::Path, pid: u32) {
    for _ in 0..100 {
        signal(pid, "-STOP");
        let c = rusqlite::Connection::open(src).unwrap();
        c.busy_timeout(std::time::Duration::from_millis(200))
            .unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        if c.execute_batch(&format!(
            "BEGIN IMMEDIATE; PRAGMA user_version = {v}; COMMIT"
        ))
        .is_ok()
        {
            return;
        }
        let _ = c.execute_batch("ROLLBACK");
        signal(pid, "-CONT");
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    panic!("the daemon never paused outside a read");
}

/// Rows exchange UNIQUE values inside one SQLite transaction (through a temporary value), rotate
/// them in a cycle of three, move one from a deleted row to a new one, and REPLACE evicts a
/// holder. Table `paused` gets each write while the daemon is paused (so the whole transaction
/// lands in one drain: the hard case), table `live` the same writes with the daemon running.
#[test]
fn unique_swaps_moves_and_cycles_apply() {
    let table = |t: &str| {
        format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, slot INTEGER UNIQUE, note TEXT);
             INSERT INTO {t} VALUES (1, 'a@x', 1, 'one'), (2, 'b@x', 2, 'two'), (3, 'c@x', 3, 'three');"
        )
    };
    let src = SqliteFile::new(&format!(
        "PRAGMA journal_mode = WAL; {} {}",
        table("paused"),
        table("live")
    ));
    let writes = |t: &str| {
        [
            // Swap emails of 1 and 2 through a temporary value.
            format!(
                "BEGIN; UPDATE {t} SET email = 'tmp' WHERE id = 1; UPDATE {t} SET email = 'a@x' WHERE id = 2;
                 UPDATE {t} SET email = 'b@x' WHERE id = 1; COMMIT;"
            ),
            // Rotate slots: 1 -> 2 -> 3 -> 1.
            format!(
                "BEGIN; UPDATE {t} SET slot = -1 WHERE id = 1; UPDATE {t} SET slot = 1 WHERE id = 3;
                 UPDATE {t} SET slot = 3 WHERE id = 2; UPDATE {t} SET slot = 2 WHERE id = 1; COMMIT;"
            ),
            // A unique value moves from a deleted row to a new row.
            format!(
                "BEGIN; DELETE FROM {t} WHERE id = 3; INSERT INTO {t} VALUES (4, 'c@x', 1, 'four'); COMMIT;"
            ),
            // REPLACE evicts the holder of 'a@x'.
            format!("REPLACE INTO {t} VALUES (5, 'a@x', 7, 'five');"),
        ]
    };
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let mut c = db.client();
    for (paused, live) in writes("paused").iter().zip(writes("live").iter()) {
        pause_idle(&src.path, d.pid());
        sqlite3_shell(&src.path, paused);
        signal(d.pid(), "-CONT");
        d.wait_caught_up();
        sqlite3_shell(&src.path, live);
        d.wait_caught_up();
        assert_eq!(d.try_exit(), None, "the daemon stopped:\n{}", d.log_text());
        assert_table_equal(&src.path, &mut c, "paused", "id");
        assert_table_equal(&src.path, &mut c, "live", "id");
    }
    assert!(d.stop());
}

const TRANSFERS: &str = r#"
import random, sqlite3, sys
path, n, accounts, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = sqlite3.connect(path, timeout=10, isolation_level=None)
r = random.Random(seed)
for _ in range(n):
    a, b = r.sample(range(1, accounts + 1), 2)
    x = r.randint(1, 100)
    c.execute("BEGIN IMMEDIATE")
    c.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (x, a))
    c.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (x, b))
    c.execute("COMMIT")
"#;

fn transfers(src: &std::path::Path, n: u32, accounts: u32, seed: u32) -> std::process::Child {
    std::process::Command::new("python3")
        .args(["-c", TRANSFERS])
        .arg(src)
        .args([n.to_string(), accounts.to_string(), seed.to_string()])
        .spawn()
        .expect("start the transfer writer (python3)")
}

/// A bank moves amounts between two of 50,000 accounts per transaction. A backlog of 40,000
/// changes builds up while the daemon is paused, then drains in chunks of 2,000 while the app
/// keeps writing and a reader sums every balance on Postgres without pause: every sum it sees
/// must be the bank's total, across a kill -9 mid-backlog too.
fn invariant_holds_while_a_backlog_drains(journal: &str, kill_midway: bool) {
    const ACCOUNTS: u32 = 50_000;
    let src = SqliteFile::new(&format!(
        "PRAGMA journal_mode = {journal};
         CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ACCOUNTS})
         INSERT INTO accounts SELECT i, 1000 FROM s;"
    ));
    let total = i64::from(ACCOUNTS) * 1000;
    let db = TestDb::new();
    let flags = ["--batch-changes", "2000"];
    let mut d = Daemon::start_with(&src.path, &db, &[], &flags);
    d.wait_caught_up();
    pause_idle(&src.path, d.pid());
    let backlog = transfers(&src.path, 20_000, ACCOUNTS, 1).wait().unwrap();
    assert!(backlog.success());
    // The reader: sums on Postgres, as fast as it can, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = db.url.clone();
    let stop_reader = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let (mut reads, mut bad) = (0u64, Vec::new());
        while !stop_reader.load(std::sync::atomic::Ordering::SeqCst) {
            let sum: i64 = c
                .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
                .unwrap()
                .get(0);
            reads += 1;
            if sum != total {
                bad.push(sum);
            }
        }
        (reads, bad)
    });
    let live = transfers(&src.path, 3_000, ACCOUNTS, 2);
    signal(d.pid(), "-CONT");
    if kill_midway {
        std::thread::sleep(std::time::Duration::from_millis(300));
        d.kill9();
        d = Daemon::start_with(&src.path, &db, &[], &flags);
    }
    assert!(live.wait_with_output().unwrap().status.success());
    d.wait_caught_up();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, bad) = reader.join().unwrap();
    println!(
        "{reads} reads of the total on Postgres, {} wrong",
        bad.len()
    );
    assert!(reads >= 20, "the reader barely read: {reads}");
    assert!(
        bad.is_empty(),
        "{} of {reads} reads saw a total SQLite never had, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    let mut c = db.client();
    assert_table_equal(&src.path, &mut c, "accounts", "id");
    assert!(d.stop());
}

#[test]
fn a_banks_total_never_changes_on_postgres_while_a_backlog_drains_wal() {
    invariant_holds_while_a_backlog_drains("wal", false);
}

#[test]
fn a_banks_total_never_changes_on_postgres_across_a_kill_9_mid_backlog_rollback_journal() {
    invariant_holds_while_a_backlog_drains("delete", true);
}

/// Every row of a table on both sides as sorted text (for tables without a key to order by).
fn assert_same_rows(src: &std::path::Path, c: &mut postgres::Client, table: &str, cols: &[&str]) {
    let sqlite_cols: Vec<String> = cols
        .iter()
        .map(|c| format!("CAST(\"{c}\" AS TEXT)"))
        .collect();
    let conn = rusqlite::Connection::open(src).unwrap();
    let mut st = conn
        .prepare(&format!(
            "SELECT {} FROM \"{table}\"",
            sqlite_cols.join(", ")
        ))
        .unwrap();
    let mut sqlite: Vec<Vec<Option<String>>> = st
        .query_map([], |r| (0..cols.len()).map(|i| r.get(i)).collect())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let pg_cols: Vec<String> = cols.iter().map(|c| format!("\"{c}\"::text")).collect();
    let mut pg = pg_rows(
        c,
        &format!("SELECT {} FROM \"{table}\"", pg_cols.join(", ")),
    );
    sqlite.sort();
    pg.sort();
    if sqlite != pg {
        // Multiset difference, briefly: a table of 40,000 rows does not fit in a message.
        let mut only_sqlite = Vec::new();
        let mut only_pg = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < sqlite.len() || j < pg.len() {
            let (a, b) = (sqlite.get(i), pg.get(j));
            if a.is_some() && a == b {
                i += 1;
                j += 1;
            } else if b.is_none() || (a.is_some() && a < b) {
                only_sqlite.push(sqlite[i].clone());
                i += 1;
            } else {
                only_pg.push(pg[j].clone());
                j += 1;
            }
        }
        panic!(
            "table {table} differs: {} rows only in SQLite (e.g. {:?}), {} only in Postgres (e.g. {:?})",
            only_sqlite.len(),
            &only_sqlite[..only_sqlite.len().min(3)],
            only_pg.len(),
            &only_pg[..only_pg.len().min(3)]
        );
    }
}

const KEYLESS: &str = "
    CREATE TABLE log (at TEXT, level TEXT, msg TEXT);
    CREATE TABLE tags_posts (post_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, UNIQUE (post_id, tag_id));
    CREATE TABLE legacy (code TEXT PRIMARY KEY, name TEXT);
    CREATE TABLE wide (a INT, b INT, c INT, d INT, e INT, v TEXT, PRIMARY KEY (a, b, c, d, e));
    CREATE TABLE wide_wr (a INT, b TEXT, c INT, d INT, e INT, f TEXT, v TEXT, PRIMARY KEY (a, b, c, d, e, f)) WITHOUT ROWID;
    INSERT INTO wide_wr VALUES (1, 'b', 3, 4, 5, 'f', 'x'), (1, 'b', 3, 4, 5, 'g', 'y');
    INSERT INTO log VALUES ('t1', 'info', 'same'), ('t1', 'info', 'same'), ('t1', 'info', 'same'), ('t2', 'warn', NULL);
    INSERT INTO legacy VALUES (NULL, 'no key'), ('a', 'A');
    INSERT INTO wide VALUES (1, 2, 3, 4, 5, 'x');";

fn keyless(journal: &str) {
    let src = SqliteFile::new(&format!("PRAGMA journal_mode = {journal};{KEYLESS}"));
    let p = src.path.to_str().unwrap();
    let (code, report) = check_json(&src.path, None);
    assert_eq!(code, Some(0), "check: {report:#}");
    let followed: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["severity"] == "info" && f["message"].as_str().unwrap().contains("whole-row images")
        })
        .map(|f| f["table"].as_str().unwrap())
        .collect();
    assert_eq!(followed, ["legacy", "log", "tags_posts"], "{report:#}");
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    for w in [
        // Duplicates stay duplicated, one copy at a time.
        "INSERT INTO log VALUES ('t1', 'info', 'same')",
        "DELETE FROM log WHERE rowid = (SELECT min(rowid) FROM log WHERE msg = 'same')",
        "UPDATE log SET level = 'error' WHERE rowid = (SELECT max(rowid) FROM log WHERE msg = 'same')",
        // A join table with a UNIQUE constraint: ignored, replaced, and evicting updates.
        "INSERT INTO tags_posts VALUES (1, 1), (1, 2), (2, 1)",
        "INSERT OR IGNORE INTO tags_posts VALUES (1, 1)",
        "INSERT OR REPLACE INTO tags_posts VALUES (1, 2)",
        "UPDATE OR REPLACE tags_posts SET tag_id = 1 WHERE post_id = 1 AND tag_id = 2",
        "UPDATE tags_posts SET post_id = 3 WHERE post_id = 2",
        // NULLs in a declared key, and a key wider than the changelog's.
        "INSERT INTO legacy VALUES (NULL, 'another null')",
        "UPDATE legacy SET name = 'A2' WHERE code = 'a'",
        "INSERT INTO wide VALUES (1, 2, 3, 4, 6, 'y'); UPDATE wide SET v = 'z' WHERE e = 5",
        // Keys of five and six columns are followed by key: the changelog widens for them.
        "UPDATE wide SET e = 7 WHERE e = 6; INSERT INTO wide_wr VALUES (2, 'b', 3, 4, 5, 'f', 'new')",
        "UPDATE wide_wr SET f = 'h' WHERE f = 'g'; DELETE FROM wide_wr WHERE v = 'x'",
        // VACUUM renumbers the rowids of tables without INTEGER PRIMARY KEY.
        "DELETE FROM log WHERE level = 'warn'; VACUUM;",
        "DELETE FROM log WHERE level = 'error'; INSERT INTO log VALUES ('t3', NULL, 'after vacuum')",
    ] {
        sqlite3_shell(&src.path, w);
    }
    d.wait_caught_up();
    assert_eq!(d.try_exit(), None, "the daemon stopped:\n{}", d.log_text());
    let mut c = db.client();
    assert_same_rows(&src.path, &mut c, "log", &["at", "level", "msg"]);
    assert_same_rows(&src.path, &mut c, "tags_posts", &["post_id", "tag_id"]);
    assert_same_rows(&src.path, &mut c, "legacy", &["code", "name"]);
    assert_same_rows(&src.path, &mut c, "wide", &["a", "b", "c", "d", "e", "v"]);
    assert_same_rows(
        &src.path,
        &mut c,
        "wide_wr",
        &["a", "b", "c", "d", "e", "f", "v"],
    );
    let same: i64 = scalar(&mut c, "SELECT count(*) FROM log WHERE msg = 'same'");
    assert_eq!(same, 2);
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify", "--json"]);
    assert!(out.status.success(), "verify:\n{}", text(&out));
    // verify notices a row that differs.
    c.batch_execute("INSERT INTO log VALUES ('ghost', 'info', 'only in postgres')")
        .unwrap();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "verify:\n{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "log")
        .unwrap()
        .clone();
    assert_eq!(log["extra_in_postgres"], 1, "{report:#}");
    c.batch_execute("DELETE FROM log WHERE at = 'ghost'")
        .unwrap();
    assert!(d.stop());
}

#[test]
fn tables_without_a_usable_primary_key_are_followed_wal() {
    keyless("wal");
}

#[test]
fn tables_without_a_usable_primary_key_are_followed_rollback_journal() {
    keyless("delete");
}

const LOG_WRITER: &str = r#"
import random, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
r = random.Random(int(sys.argv[2]))
top = c.execute("SELECT max(rowid) FROM log").fetchone()[0]
pick = "(SELECT rowid FROM log WHERE rowid >= ? ORDER BY rowid LIMIT 1)"
for i in range(int(sys.argv[3])):
    time.sleep(0.0005)
    op, at = r.random(), r.randint(1, top)
    if op < 0.4:
        c.execute("INSERT INTO log VALUES (?, 'info', ?)", (f"t{r.randint(0, 3)}", "dup" if r.random() < 0.5 else f"m{i}"))
    elif op < 0.7:
        c.execute(f"DELETE FROM log WHERE rowid = {pick}", (at,))
    else:
        c.execute(f"UPDATE log SET level = 'warn' WHERE rowid = {pick}", (at,))
"#;

/// The snapshot of a table without a key is taken in small chunks while the app inserts,
/// deletes and updates duplicates: each change is applied exactly once, whether its row was
/// in a chunk already copied or not; and a kill -9 mid-snapshot changes nothing.
#[test]
fn a_table_without_a_key_hands_over_from_snapshot_to_stream_exactly() {
    let src = SqliteFile::new(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE log (at TEXT, level TEXT, msg TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200000)
         INSERT INTO log SELECT 't' || (i % 4), 'info', CASE WHEN i % 3 = 0 THEN 'dup' ELSE 'm' || i END FROM s;",
    );
    let db = TestDb::new();
    let writer = std::process::Command::new("python3")
        .args(["-c", LOG_WRITER])
        .arg(&src.path)
        .args(["7", "6000"])
        .spawn()
        .unwrap();
    let d = Daemon::start(&src.path, &db, &["--chunk-rows", "300"]);
    d.wait_for_log("copying table");
    std::thread::sleep(std::time::Duration::from_millis(150));
    d.kill9();
    let mut d = Daemon::start(&src.path, &db, &["--chunk-rows", "300"]);
    assert!(writer.wait_with_output().unwrap().status.success());
    d.wait_caught_up();
    let mut c = db.client();
    assert_same_rows(&src.path, &mut c, "log", &["at", "level", "msg"]);
    // The restart resumes the copy: its capture install changes nothing in the schema, so
    // the chunks already copied are not taken for a torn copy (as after a VACUUM).
    let log = d.log_text();
    assert!(!log.contains("copying it again"), "{log}");
    assert!(d.stop());
}

/// A VACUUM in the middle of the snapshot of a table without a key renumbers the rowids its
/// chunks are cut by: the torn copy is noticed and taken again, and both sides end equal.
#[test]
fn a_vacuum_during_the_snapshot_of_a_table_without_a_key_recopies_it() {
    let src = SqliteFile::new(
        "CREATE TABLE log (at TEXT, msg TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60000)
         INSERT INTO log SELECT 't' || i, CASE WHEN i % 2 = 0 THEN 'dup' ELSE 'm' || i END FROM s;
         DELETE FROM log WHERE rowid % 3 = 0;",
    );
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &["--chunk-rows", "50"]);
    d.wait_for_log("copying table");
    // Between two of its short chunks, as the app's maintenance job would.
    sqlite3_shell(&src.path, "VACUUM");
    d.wait_caught_up();
    let mut c = db.client();
    assert_same_rows(&src.path, &mut c, "log", &["at", "msg"]);
    let log = d.wait_for_log("copying it again");
    assert!(log.contains("VACUUM"), "{log}");
    assert!(d.stop());
}

/// An app transaction that reads first (a deferred BEGIN, Django's `atomic()`) cannot wait
/// for another writer: SQLite refuses its write at once. sqlite2pg's install runs at every
/// daemon start: finding capture in place it takes no write lock at all (each took one, and
/// refused 216 of 968 such transactions in rollback-journal mode, 408 of 1,346 in WAL).
fn installs_never_refuse_an_app_transaction_that_read_first(journal: &str) {
    let src = SqliteFile::new(&format!(
        "PRAGMA journal_mode = {journal};
         CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
         INSERT INTO counters SELECT i, 0 FROM s;"
    ));
    let p = src.path.to_str().unwrap();
    // The first install writes (changelog, triggers); in WAL mode an app transaction that
    // reads then writes within its few milliseconds can be refused (README, Known limits).
    // Every start after it finds capture in place, and must not write at all.
    let out = sqlite2pg(&["--source", p, "install"]);
    assert!(out.status.success(), "{}", text(&out));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = {
        let (path, stop, committed) = (src.path.clone(), stop.clone(), committed.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            let (mut done, mut refused) = (0u32, Vec::new());
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = (|| -> rusqlite::Result<()> {
                    conn.execute_batch("BEGIN DEFERRED")?;
                    let n: i64 = conn.query_row(
                        "SELECT n FROM counters WHERE id = ?1",
                        [i % 50 + 1],
                        |r| r.get(0),
                    )?;
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    conn.execute(
                        "UPDATE counters SET n = ?1 WHERE id = ?2",
                        [n + 1, i % 50 + 1],
                    )?;
                    conn.execute_batch("COMMIT")
                })();
                match r {
                    Ok(()) => {
                        done += 1;
                        committed.store(done, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        refused.push(e.to_string());
                    }
                }
                // A busy app, with the moments between requests every app has.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (done, refused)
        })
    };
    // Until enough of both met (at least 4 s): a count, not a rate, so that a slow machine
    // takes longer instead of failing.
    let t0 = std::time::Instant::now();
    let mut installs = 0;
    while t0.elapsed() < std::time::Duration::from_secs(4)
        || installs <= 10
        || committed.load(std::sync::atomic::Ordering::Relaxed) <= 300
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "{} app transactions and {installs} installs in 120 s",
            committed.load(std::sync::atomic::Ordering::Relaxed)
        );
        let out = sqlite2pg(&["--source", p, "install"]);
        assert!(out.status.success(), "{}", text(&out));
        installs += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, refused) = app.join().unwrap();
    assert!(
        refused.is_empty(),
        "{journal}: {} of {} refused: {:?}",
        refused.len(),
        done as usize + refused.len(),
        &refused[..refused.len().min(3)]
    );
}

#[test]
fn installs_never_refuse_an_app_transaction_that_read_first_rollback_journal() {
    installs_never_refuse_an_app_transaction_that_read_first("delete");
}

#[test]
fn installs_never_refuse_an_app_transaction_that_read_first_wal() {
    installs_never_refuse_an_app_transaction_that_read_first("wal");
}
