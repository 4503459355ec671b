//! `check` reports every value that would not survive, with table, key, column and value; `run`
//! stops on the same values with the same facts; bad input gets a clear error and no secrets.

mod common;

use common::*;

fn bad_fixture() -> SqliteFile {
    SqliteFile::new(
        r#"
        PRAGMA foreign_keys = OFF;
        CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT, email TEXT UNIQUE);
        CREATE TABLE leads (
          id INTEGER PRIMARY KEY, client_id INTEGER REFERENCES clients(id), qty INTEGER, created_at DATETIME,
          seen_at DATETIME, note TEXT, score REAL, small SMALLINT, code VARCHAR(3), extra JSONB);
        INSERT INTO clients VALUES (1, 'a', 'x@example.com'), (2, 'b', 'X@example.com');
        INSERT INTO leads VALUES (1, 1, 5, '2024-01-01 10:00:00', 1700000000000, 'ok', 1.5, 1, 'abc', '{}');
        INSERT INTO leads VALUES (2, 99, 'many', '', NULL, 'nul' || char(0) || 'byte', 9e999, 70000, 'abcd', '{"a": "\u0000"}');
        INSERT INTO leads VALUES (3, 1, 1, 'abc', NULL, CAST(x'c328' AS TEXT), NULL, NULL, NULL, 'not json');
        INSERT INTO leads VALUES (4, 2, 2, '2023-02-30 00:00:00', NULL, NULL, NULL, NULL, NULL, NULL);
        CREATE TABLE nokey (a TEXT, b TEXT);
        CREATE VIRTUAL TABLE docs USING fts5(body);
        INSERT INTO docs VALUES ('hello');
        "#,
    )
}

#[test]
fn check_reports_every_value_that_would_not_survive() {
    let src = bad_fixture();
    let out = sqlite2pg(&["--source", src.path.to_str().unwrap(), "check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check must fail:\n{}",
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let problems = report["problems"].as_array().unwrap();
    let find = |col: &str, kind: &str| {
        problems
            .iter()
            .find(|p| p["table"] == "leads" && p["column"] == col && p["kind"] == kind)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} problem on leads.{col} in {}",
                    serde_json::to_string_pretty(&report).unwrap()
                )
            })
    };
    let p = find("qty", "type_mismatch");
    assert_eq!(p["examples"][0]["key"], "id=2");
    assert_eq!(p["examples"][0]["value"], "'many'");
    assert_eq!(find("created_at", "bad_date")["count"], 3); // '', 'abc', February 30
    assert!(
        find("seen_at", "numeric_date")["examples"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("epoch_ms")
    );
    assert_eq!(find("note", "nul_byte")["examples"][0]["key"], "id=2");
    assert_eq!(find("note", "invalid_utf8")["examples"][0]["key"], "id=3");
    assert_eq!(find("score", "non_finite")["severity"], "warning");
    find("small", "out_of_range");
    find("code", "too_long");
    assert_eq!(find("extra", "bad_json")["count"], 2);
    // An orphaned foreign key (SQLite does not enforce them unless the app turns them on).
    let orphan = problems
        .iter()
        .find(|p| p["table"] == "leads" && p["column"] == "client_id")
        .expect("orphan reported");
    assert!(
        orphan["examples"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("orphaned")
    );
    let findings = report["findings"].as_array().unwrap();
    // A table without a primary key moves and is followed by row images: a note, not an error.
    assert!(findings.iter().any(|f| f["table"] == "nokey"
        && f["severity"] == "info"
        && f["message"].as_str().unwrap().contains("whole-row images")));
    assert!(
        findings
            .iter()
            .any(|f| f["table"] == "docs" && f["message"].as_str().unwrap().contains("fts5"))
    );
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["table"].as_str().unwrap())
        .collect();
    assert!(
        skipped.contains(&"docs")
            && skipped.contains(&"docs_data")
            && skipped.contains(&"docs_content"),
        "{skipped:?}"
    );
    // The human report names the same facts.
    let human = sqlite2pg(&["--source", src.path.to_str().unwrap(), "check"]);
    assert_eq!(human.status.code(), Some(1));
    let h = text(&human);
    assert!(
        h.contains("leads.qty") && h.contains("id=2") && h.contains("'many'") && h.contains("fix:"),
        "{h}"
    );
}

#[test]
fn casts_fix_what_check_reported() {
    let src = SqliteFile::new(
        "CREATE TABLE ev (id INTEGER PRIMARY KEY, at_ms INTEGER, at DATETIME, n INTEGER);
         INSERT INTO ev VALUES (1, 1700000000123, 1700000000123, 5000000000);",
    );
    let p = src.path.to_str().unwrap();
    assert_eq!(sqlite2pg(&["--source", p, "check"]).status.code(), Some(1));
    let casts = [
        "--cast",
        "ev.at=epoch_ms",
        "--cast",
        "ev.at_ms=timestamptz:epoch_ms",
        "--cast",
        "ev.n=bigint",
    ];
    let mut args = vec!["--source", p];
    args.extend_from_slice(&casts);
    args.push("check");
    let out = sqlite2pg(&args);
    assert!(out.status.success(), "{}", text(&out));
    let db = TestDb::new();
    snapshot(&src.path, &db, &casts);
    let mut c = db.client();
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let r = pg_rows(&mut c, "SELECT at::text, at_ms::text, n::text FROM ev");
    assert_eq!(
        r[0],
        vec![
            Some("2023-11-14 22:13:20.123".into()),
            Some("2023-11-14 22:13:20.123+00".into()),
            Some("5000000000".into())
        ]
    );
}

/// pgloader's own test file: `DEFAULT '"0"'` on an INTEGER column stores the text `"0"`,
/// which Postgres refused in the CREATE TABLE after a clean check. The default is named by
/// check and left out; SQLite's numeric-looking text defaults still become numbers.
#[test]
fn a_default_no_target_column_can_hold_is_named_and_the_run_completes() {
    let src = SqliteFile::new(
        "CREATE TABLE typenames (id INTEGER PRIMARY KEY AUTOINCREMENT, is_public INTEGER DEFAULT '\"0\"',
             name TEXT NOCASE, n INTEGER DEFAULT '7', r REAL DEFAULT ' 1.5', b BOOLEAN DEFAULT 'f');
         INSERT INTO typenames (name, is_public) VALUES ('a', 1), ('b', 0);",
    );
    let (code, report) = check_json(&src.path, None);
    assert_eq!(code, Some(0), "{report:#}");
    let named = report["findings"].as_array().unwrap().iter().any(|f| {
        f["column"] == "is_public"
            && f["message"]
                == "default '\"0\"' is not created: SQLite stores it as the TEXT '\"0\"', which a bigint column cannot hold (text in a bigint column)"
    });
    assert!(named, "{report:#}");
    let db = TestDb::new();
    let out = snapshot(&src.path, &db, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut c = db.client();
    c.batch_execute("INSERT INTO typenames (name) VALUES ('c')")
        .unwrap();
    let r = pg_rows(
        &mut c,
        "SELECT is_public::text, n::text, r::text, b::text FROM typenames WHERE name = 'c'",
    );
    assert_eq!(
        r[0],
        vec![
            None,
            Some("7".into()),
            Some("1.5".into()),
            Some("false".into())
        ]
    );
}

#[test]
fn run_stops_on_a_bad_value_naming_table_row_column_and_resumes_after_the_fix() {
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO t SELECT i, i FROM n;
         UPDATE t SET qty = 'lots' WHERE id = 4321;",
    );
    let db = TestDb::new();
    let p = src.path.to_str().unwrap();
    let out = sqlite2pg(&[
        "--source",
        p,
        "--target",
        &db.url,
        "--chunk-rows",
        "1000",
        "run",
        "--snapshot-only",
    ]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("table t, row id=4321, column qty") && msg.contains("'lots'"),
        "{msg}"
    );
    let mut c = db.client();
    let copied: i64 = scalar(&mut c, "SELECT count(*) FROM t");
    assert_eq!(copied, 4000, "the chunks before the bad row are committed");
    src.conn()
        .execute("UPDATE t SET qty = 4321 WHERE id = 4321", [])
        .unwrap();
    snapshot(&src.path, &db, &["--chunk-rows", "1000"]);
    assert_table_equal(&src.path, &mut c, "t", "id");
}

#[test]
fn bad_input_gets_a_clear_error_and_never_the_password() {
    let src = SqliteFile::new("CREATE TABLE t (id INTEGER PRIMARY KEY);");
    let p = src.path.to_str().unwrap();
    // Missing file.
    let out = sqlite2pg(&["--source", "/nonexistent/app.db", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    // Not a database.
    let junk = src.dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let out = sqlite2pg(&["--source", junk.to_str().unwrap(), "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("not a readable SQLite database"),
        "{}",
        text(&out)
    );
    // Wrong password, and unreachable server: the password never appears.
    let db = TestDb::new();
    let wrong = db.url.replace(PASSWORD, "hunter2-wrong");
    for target in [
        wrong.clone(),
        "postgres://app:hunter2-wrong@127.0.0.1:1/db".to_string(),
        "host=127.0.0.1 port=1 user=app password=hunter2-wrong dbname=x".to_string(),
    ] {
        let out = sqlite2pg(&["--source", p, "--target", &target, "run", "--snapshot-only"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let t = text(&out);
        assert!(!t.contains("hunter2"), "password leaked: {t}");
        assert!(
            t.contains("cannot connect to Postgres") && t.contains("next step ("),
            "{t}"
        );
    }
    // Missing table in --include.
    let out = sqlite2pg(&["--source", p, "--include", "nope", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--include names table nope"),
        "{}",
        text(&out)
    );
}

#[test]
fn orphans_are_attributed_to_the_right_foreign_key_and_duplicates_to_the_target_key() {
    let src = SqliteFile::new(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE a (id INTEGER PRIMARY KEY);
         CREATE TABLE b (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a(id), b_id INTEGER REFERENCES b(id), tag TEXT);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);
         INSERT INTO child VALUES (1, 1, 1, 'x'), (2, 1, 7, 'x'), (3, 1, 8, 'y');",
    );
    // The target (made by migrations) has a unique key on tag that SQLite never had.
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, a_id int REFERENCES a(id), b_id int REFERENCES b(id), tag text UNIQUE);",
        )
        .unwrap();
    let (code, report) = check_json(&src.path, Some(&db));
    assert_eq!(code, Some(1), "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    let orphans: Vec<&serde_json::Value> =
        problems.iter().filter(|p| p["kind"] == "orphan").collect();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0]["column"], "b_id");
    assert_eq!(orphans[0]["count"], 2);
    assert_eq!(orphans[0]["examples"][0]["value"], "7");
    let dup = problems
        .iter()
        .find(|p| p["kind"] == "duplicate_key")
        .expect("duplicate reported");
    assert_eq!(dup["column"], "tag");
    assert_eq!(dup["examples"][0]["key"], "tag='x'");
    assert_eq!(dup["examples"][0]["value"], "2 rows");
}

#[test]
fn config_check_validates_without_touching_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    // The target host does not exist: config check must not try to connect.
    std::fs::write(
        &good,
        "source = \"/srv/bot/app.db\"\ntarget = \"postgres://app:hunter2@nowhere.invalid:5432/crm\"\nchunk_rows = 5000\nmetrics_addr = \"0.0.0.0:9187\"\nlog_format = \"json\"\n[cast]\n\"leads.created_at\" = \"timestamptz:epoch_ms\"\n",
    )
    .unwrap();
    let out = sqlite2pg(&["--config", good.to_str().unwrap(), "config", "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("config: valid")
            && t.contains("chunk_rows = 5000")
            && t.contains("batch_changes = 10000   # default 10000"),
        "{t}"
    );
    assert!(
        t.contains("postgres://app:***@nowhere.invalid") && !t.contains("hunter2"),
        "{t}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "source = \"/x.db\"\nmetrics_addr = \"nope\"\nbatch_changes = 0\n[cast]\n\"t.c\" = \"money\"\n").unwrap();
    let out = sqlite2pg(&["--config", bad.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for want in [
        "metrics_addr 'nope'",
        "batch_changes must be at least 1",
        "cannot write the type 'money'",
    ] {
        assert!(t.contains(want), "{want} missing from:\n{t}");
    }
    // Every other command refuses the same configuration up front.
    let out = sqlite2pg(&["--config", bad.to_str().unwrap(), "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("the configuration is not valid"),
        "{}",
        text(&out)
    );
}

/// What SQLite does for the app beyond holding values (issue 12): each is named by `check`,
/// with what to do, and the cutover names the app's triggers and views again.
#[test]
fn check_names_what_postgres_will_not_do_for_the_app() {
    let src = SqliteFile::new(
        r#"
        CREATE TABLE "Order Details" (
          id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty > 0), price REAL,
          discount REAL NOT NULL DEFAULT 0, note TEXT CHECK (printf('%d', qty) <> note),
          made TEXT DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
          CHECK (discount >= 0 AND discount <= 1));
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL COLLATE NOCASE UNIQUE,
          name TEXT, updated_at TEXT);
        CREATE TABLE tags (name TEXT PRIMARY KEY COLLATE NOCASE, n INTEGER) WITHOUT ROWID;
        CREATE TABLE plain (id INTEGER PRIMARY KEY, code TEXT);
        CREATE UNIQUE INDEX plain_code ON plain (code COLLATE NOCASE);
        CREATE VIEW big_orders AS SELECT * FROM "Order Details" WHERE qty > 10;
        CREATE TRIGGER users_touch AFTER UPDATE ON users
          BEGIN UPDATE users SET updated_at = datetime('now') WHERE id = NEW.id; END;
        CREATE TRIGGER users_stamp AFTER INSERT ON users
          BEGIN UPDATE users SET updated_at = datetime('now', 'localtime') WHERE id = NEW.id; END;
        INSERT INTO users VALUES (1, 'A@x.org', 'a', NULL);
        INSERT INTO tags VALUES ('Rust', 1);
        INSERT INTO plain VALUES (1, 'Ab');
        INSERT INTO "Order Details" (id, qty, price, discount) VALUES (1, 2, 9.5, 0.25);
        "#,
    );
    let p = src.path.to_str().unwrap();
    let out = sqlite2pg(&["--source", p, "check"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for needle in [
        "note: Order Details.qty: CHECK (qty > 0) becomes CHECK (\"qty\" > 0) on Postgres, as Order Details_qty_check",
        "note: Order Details: CHECK (discount >= 0 AND discount <= 1) becomes CHECK (\"discount\" >= 0 AND \"discount\" <= 1) on Postgres",
        "WARNING: Order Details.note: CHECK (printf('%d', qty) <> note) is not created on Postgres: printf('%d', qty): printf()'s conversions",
        "note: users.email: unique under COLLATE NOCASE in SQLite: Postgres gets a unique index on the ASCII-lower-cased value",
        "WARNING: users.email: declared COLLATE NOCASE",
        "note: tags.name: unique under COLLATE NOCASE in SQLite",
        "note: plain.code: unique under COLLATE NOCASE in SQLite",
        "note: big_orders: view is created on Postgres by `cutover`, before its fence (unless one of that name is there already): CREATE VIEW \"public\".\"big_orders\" (\"id\", \"qty\", \"price\", \"discount\", \"note\", \"made\") AS SELECT",
        "note: users: the app's trigger users_touch is ported to PL/pgSQL and created by `cutover`, in the transaction that records it",
        "WARNING: users: the app's trigger users_stamp is not created on Postgres: statement 1: SET updated_at: ",
        "fix: port it to a PL/pgSQL trigger by hand: CREATE TRIGGER users_stamp",
        "WARNING: tags.name: declared COLLATE NOCASE",
        "but Postgres will not do 4 thing(s) SQLite does for the app",
        "7 CHECK constraint(s), unique collation(s), view(s) and trigger(s) are carried to Postgres",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    assert!(
        !t.contains("default (strftime"),
        "the %f default translates:\n{t}"
    );
    // The JSON report carries the same findings.
    let out = sqlite2pg(&["--source", p, "check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["behaviours"], 4, "{report:#}");
    assert_eq!(report["behaviours_kept"], 7, "{report:#}");

    // The cutover names the trigger it does not port again, and creates the view.
    let db = TestDb::new();
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    for needle in ["the app's trigger is not ported to Postgres", "users_stamp"] {
        assert!(
            text(&out).contains(needle),
            "missing {needle:?}:\n{}",
            text(&out)
        );
    }
    assert!(d.stop());

    // On Postgres the app now meets what SQLite did: refused rows, and the default's text.
    let mut c = db.client();
    for (sql, refused_by) in [
        (
            r#"INSERT INTO "Order Details" (id, qty) VALUES (2, 0)"#,
            "Order Details_qty_check",
        ),
        (
            r#"INSERT INTO "Order Details" (id, qty, discount) VALUES (3, 1, 1.5)"#,
            "Order Details_check",
        ),
        (
            "INSERT INTO users VALUES (2, 'a@X.ORG', 'b', NULL)",
            "users_email_key",
        ),
        ("INSERT INTO tags VALUES ('rUST', 2)", "tags_name_fold_key"),
        ("INSERT INTO plain VALUES (2, 'aB')", "plain_code"),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains(refused_by), "{sql}: {msg}");
    }
    // Values SQLite holds side by side still go in: NOCASE folds ASCII letters only.
    c.batch_execute(
        "INSERT INTO users VALUES (3, 'É@x.org', 'c', NULL), (4, 'é@x.org', 'd', NULL)",
    )
    .expect("non-ASCII letters differ under NOCASE");
    c.batch_execute(r#"INSERT INTO "Order Details" (id, qty) VALUES (5, 3)"#)
        .expect("a row the CHECKs accept");
    let made: String = scalar(&mut c, r#"SELECT made FROM "Order Details" WHERE id = 5"#);
    let big: i64 = scalar(&mut c, "SELECT count(*) FROM big_orders");
    // The ported trigger stamps the row the app changes, in SQLite's text form.
    c.batch_execute("UPDATE users SET name = 'z' WHERE id = 1")
        .expect("the ported trigger runs");
    let stamp: String = scalar(&mut c, "SELECT updated_at FROM users WHERE id = 1");
    assert!(
        stamp.len() == 19 && stamp.as_bytes()[10] == b' ' && stamp.starts_with("20"),
        "{stamp}"
    );
    assert_eq!(big, 0);
    let shape = made.len() == 23
        && made.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        });
    assert!(shape, "strftime('%Y-%m-%d %H:%M:%f') form, got {made:?}");
}

#[test]
fn check_names_rows_that_break_a_check() {
    // SQLite skips CHECKs on a connection that turned ignore_check_constraints on.
    let src = SqliteFile::new(
        r#"
        PRAGMA ignore_check_constraints = ON;
        CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty >= 0));
        INSERT INTO items VALUES (1, 5), (2, -1), (3, NULL), (4, -7);
        "#,
    );
    let (code, report) = check_json(&src.path, None);
    assert_eq!(code, Some(1), "{report:#}");
    let problems = report["problems"].as_array().expect("problems");
    let p = problems
        .iter()
        .find(|p| p["kind"] == "breaks_check")
        .unwrap_or_else(|| panic!("no breaks_check problem: {report:#}"));
    assert_eq!(p["count"], 2, "{p:#}");
    let keys: Vec<&str> = p["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["id=2", "id=4"], "{p:#}");
}

/// Tables the app's migrations made on Postgres get nothing from sqlite2pg: `check` reads what
/// the migration declared and names only what it lacks of what SQLite does, with the SQL to add.
#[test]
fn check_names_what_the_apps_migration_lacks_of_what_sqlite_does() {
    let src = SqliteFile::new(
        r#"
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL COLLATE NOCASE UNIQUE,
          qty INTEGER CHECK (qty >= 0), code TEXT COLLATE NOCASE UNIQUE,
          note TEXT CHECK (length(note) < 100), updated_at TEXT);
        CREATE TRIGGER accounts_touch AFTER UPDATE ON accounts
          BEGIN UPDATE accounts SET updated_at = datetime('now') WHERE id = NEW.id; END;
        CREATE TRIGGER accounts_keep BEFORE DELETE ON accounts WHEN OLD.qty > 0
          BEGIN SELECT RAISE(ABORT, 'accounts with stock stay'); END;
        CREATE VIEW stocked AS SELECT id, qty FROM accounts WHERE qty > 10;
        INSERT INTO accounts VALUES (1, 'a@x.org', 1, 'A', NULL, NULL);
        "#,
    );
    let db = TestDb::new();
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL,
           qty bigint CONSTRAINT qty_positive CHECK (qty >= 0), code text, note text,
           updated_at text);
         CREATE UNIQUE INDEX accounts_email_lower ON accounts (lower(email));
         CREATE UNIQUE INDEX accounts_code ON accounts (code);
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN NEW.updated_at := now()::text; RETURN NEW; END $$;
         CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW
           EXECUTE FUNCTION touch();",
    )
    .unwrap();
    let p = src.path.to_str().unwrap();
    let t = text(&sqlite2pg(&["--source", p, "--target", &db.url, "check"]));
    for needle in [
        "note: accounts.qty: CHECK (qty >= 0): the app's migration declares CHECK ((qty >= 0)) (qty_positive) on the same column(s) on Postgres",
        "WARNING: accounts.note: CHECK (length(note) < 100): the Postgres table is the app's own (its migrations made it; sqlite2pg adds nothing to it), and it has no CHECK on column(s) note",
        "fix: add it in a migration: ALTER TABLE \"accounts\" ADD CHECK (",
        "note: accounts.email: unique under COLLATE NOCASE in SQLite; the app's migration has accounts_email_lower",
        "WARNING: accounts.code: unique under COLLATE NOCASE in SQLite; the Postgres table is the app's own",
        "fix: add in a migration: CREATE UNIQUE INDEX ON \"accounts\" (translate(\"code\", 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'))",
        "note: accounts: the app's trigger accounts_touch: the app's migration made a trigger of that name on Postgres",
        "WARNING: accounts: the app's trigger accounts_keep is not created on Postgres: the Postgres table is the app's own",
        "fix: add it in a migration: CREATE FUNCTION \"public\".\"accounts_keep\"()",
        "WARNING: stocked: view is not created on Postgres: it reads accounts, a table the app's migrations made on Postgres, and sqlite2pg adds nothing there; add the view in a migration: CREATE VIEW \"public\".\"stocked\"",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    // Every server this runs on (scripts/test: 15, 16 and 18) is a tested one.
    assert!(!t.contains("sqlite2pg is tested on"), "{t}");
    // Nothing is added to the app's schema by the cutover either.
    let mut d = Daemon::start(&src.path, &db, &[]);
    d.wait_caught_up();
    let out = sqlite2pg(&["--source", p, "--target", &db.url, "cutover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.stop());
    let added: i64 = scalar(
        &mut c,
        "SELECT (SELECT count(*) FROM pg_views WHERE viewname = 'stocked')
              + (SELECT count(*) FROM pg_trigger WHERE tgname = 'accounts_keep')
              + (SELECT count(*) FROM pg_constraint WHERE conrelid = 'accounts'::regclass
                   AND contype = 'c' AND conname <> 'qty_positive')",
    );
    assert_eq!(added, 0, "sqlite2pg added to the app's schema");
}

/// The app's migration made `timestamp(0)` (Laravel's `timestamp()`) and `timestamp(3)`
/// (Prisma's DateTime) columns, and SQLite holds finer fractions: Postgres would round them, so
/// `check` names each row, and `run` stops on the first one in the same words; whole seconds
/// and milliseconds move as they are.
#[test]
fn a_target_timestamp_with_fewer_fraction_digits_is_named_and_refused_in_the_same_words() {
    let src = SqliteFile::new(
        "CREATE TABLE visits (id INTEGER PRIMARY KEY, at DATETIME, seen DATETIME);
         INSERT INTO visits VALUES (1, '2024-03-01 10:00:00', '2024-03-01 10:00:00.125');
         INSERT INTO visits VALUES (2, '2024-03-01 10:00:00.5', '2024-03-01 10:00:00.1255');",
    );
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE TABLE visits (id bigint PRIMARY KEY, at timestamp(0), seen timestamp(3));",
        )
        .unwrap();
    let (code, report) = check_json(&src.path, Some(&db));
    assert_eq!(code, Some(1), "{report:#}");
    let problems: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "precision")
        .collect();
    let at = problems
        .iter()
        .find(|p| p["column"] == "at")
        .expect("at named");
    assert_eq!(at["count"], 1, "{at:#}");
    assert_eq!(at["examples"][0]["key"], "id=2");
    let detail = at["examples"][0]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("timestamp(0) keeps 0 fractional digits"),
        "{detail}"
    );
    let seen = problems
        .iter()
        .find(|p| p["column"] == "seen")
        .expect("seen named");
    assert_eq!(seen["count"], 1, "{seen:#}");
    assert_eq!(seen["examples"][0]["key"], "id=2");
    let out = sqlite2pg(&[
        "--source",
        src.path.to_str().unwrap(),
        "--target",
        &db.url,
        "run",
        "--snapshot-only",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("row id=2") && msg.contains(&detail), "{msg}");
    // Rounded in SQLite, as the hint says: the move completes with the values as they are.
    src.conn()
        .execute_batch(
            "UPDATE visits SET at = '2024-03-01 10:00:01', seen = '2024-03-01 10:00:00.126' WHERE id = 2;",
        )
        .unwrap();
    let (code, report) = check_json(&src.path, Some(&db));
    assert_eq!(code, Some(0), "{report:#}");
    snapshot(&src.path, &db, &[]);
    let mut c = db.client();
    let rows = pg_rows(
        &mut c,
        "SELECT id::text, at::text, seen::text FROM visits ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            ["1", "2024-03-01 10:00:00", "2024-03-01 10:00:00.125"].map(|s| Some(s.to_string())),
            ["2", "2024-03-01 10:00:01", "2024-03-01 10:00:00.126"].map(|s| Some(s.to_string())),
        ]
    );
}

/// A DATETIME value with a UTC offset moves as its UTC instant; but once the app writes such a
/// text on Postgres into a `timestamp` column, Postgres drops the offset and keeps the local
/// time. `check` warns and names the `--cast` to timestamptz, which keeps the instant of both.
#[test]
fn a_datetime_with_a_utc_offset_is_named_and_timestamptz_keeps_the_apps_later_writes() {
    let src = SqliteFile::new(
        "CREATE TABLE calls (id INTEGER PRIMARY KEY, at DATETIME);
         INSERT INTO calls VALUES (1, '2024-01-31 23:30:00-05:00'), (2, '2024-02-01 04:30:00'), (3, '2024-02-01 04:30:00+00:00');",
    );
    let p = src.path.to_str().unwrap();
    let (code, report) = check_json(&src.path, None);
    assert_eq!(code, Some(0), "a warning, not an error: {report:#}");
    let offsets: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "utc_offset")
        .collect();
    assert_eq!(offsets.len(), 1, "{report:#}");
    assert_eq!(
        offsets[0]["count"], 1,
        "only the row with an offset other than zero"
    );
    assert_eq!(offsets[0]["examples"][0]["key"], "id=1");
    assert!(
        offsets[0]["hint"].as_str().unwrap().contains("timestamptz"),
        "{report:#}"
    );
    let cast = sqlite2pg(&[
        "--source",
        p,
        "--cast",
        "calls.at=timestamptz",
        "check",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&cast.stdout).unwrap();
    assert!(
        !report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "utc_offset"),
        "{report:#}"
    );
    let db = TestDb::new();
    snapshot(&src.path, &db, &["--cast", "calls.at=timestamptz"]);
    let mut c = db.client();
    // The app's own write after the cutover, in the form it always wrote: the same instant.
    c.batch_execute(
        "SET TimeZone = 'UTC'; INSERT INTO calls VALUES (4, '2024-01-31 23:30:00-05:00')",
    )
    .unwrap();
    let same: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM calls WHERE at = '2024-02-01 04:30:00+00'",
    );
    assert_eq!(same, 4);
}

/// SQLAlchemy's schema made by sqlite2pg: `Uuid` as uuid, a JSON column under a unique index
/// as jsonb (json has no btree operator class, so the index could not be built), `Interval`'s
/// `DEFAULT '0'` named with the cast that makes it an interval, `DEFAULT ''` on an integer
/// named; rows equal as JSON but not as text are named by check, and once they are fixed a
/// clean check means the run completes.
#[test]
fn sqlalchemys_json_index_and_interval_default_are_settled_before_the_run() {
    let src = SqliteFile::new(
        r#"
        CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
        INSERT INTO alembic_version VALUES ('27d8f4e1a6c9');
        CREATE TABLE bucket (id CHAR(32) NOT NULL PRIMARY KEY, k JSON NOT NULL, n INTEGER DEFAULT '',
          total_run_time DATETIME DEFAULT '0' NOT NULL);
        CREATE UNIQUE INDEX ux_bucket_k ON bucket (k);
        INSERT INTO bucket VALUES ('0a1b2c3d4e5f40718293a4b5c6d7e8f9', '{"flow": "a", "n": 1}', 1, '1970-01-01 00:00:05.000000'),
          ('f0e1d2c3b4a5469788796a5b4c3d2e1f', '{"flow": "b", "n": 1}', 2, '1969-12-31 23:59:00.000000'),
          ('00000000000040008000000000000001', '{"n": 1, "flow": "a"}', 3, '1970-01-02 00:00:00.000000');
        "#,
    );
    let (code, report) = check_json(&src.path, None);
    assert_eq!(code, Some(1), "{report:#}");
    let column = |name: &str| {
        report["tables"][1]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(column("id")["target_type"], "uuid");
    assert_eq!(column("k")["target_type"], "jsonb");
    let problem = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "duplicate_key")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(problem.to_string().contains("equal as JSON"), "{problem:#}");
    let finding = |column: &str| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["column"] == column && f["message"].as_str().unwrap().contains("is not created")
            })
            .cloned()
            .unwrap_or_else(|| panic!("{column}: {report:#}"))
    };
    assert!(
        finding("total_run_time")["hint"]
            .as_str()
            .unwrap()
            .contains("--cast bucket.total_run_time=interval"),
        "{report:#}"
    );
    finding("n");
    // The app's fix: one spelling per value. Then clean, and the run completes.
    src.conn()
        .execute_batch(r#"UPDATE bucket SET k = '{"flow": "c", "n": 1}' WHERE n = 3"#)
        .unwrap();
    let cast = ["--cast", "bucket.total_run_time=interval"];
    let out = sqlite2pg(
        &[
            &["--source", src.path.to_str().unwrap()][..],
            &cast,
            &["check"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let db = TestDb::new();
    snapshot(&src.path, &db, &cast);
    let mut c = db.client();
    let rows = pg_rows(
        &mut c,
        "SELECT id::text, k->>'flow', extract(epoch FROM total_run_time)::text FROM bucket ORDER BY n",
    );
    assert_eq!(
        rows[1],
        vec![
            Some("f0e1d2c3-b4a5-4697-8879-6a5b4c3d2e1f".into()),
            Some("b".into()),
            Some("-60.000000".into())
        ]
    );
    // The default is a zero length, as the app's own Postgres migration makes it.
    c.batch_execute(r#"INSERT INTO bucket (id, k) VALUES (gen_random_uuid(), '{"x": 1}')"#)
        .unwrap();
    let zero: String = scalar(
        &mut c,
        "SELECT total_run_time::text FROM bucket WHERE k ? 'x'",
    );
    assert_eq!(zero, "00:00:00");
    let out = sqlite2pg_on(&src.path, &db, &["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the row Postgres alone has: {}",
        text(&out)
    );
}

/// On the app's own schema, an interval column is filled from SQLAlchemy's date-time counted
/// from 1970; a value that is not one is named with its table, row and column, as any value
/// that would not survive.
#[test]
fn an_interval_that_sqlalchemy_could_not_read_is_named_with_its_row() {
    let src = SqliteFile::new(
        "CREATE TABLE flow_run (id INTEGER PRIMARY KEY, total_run_time DATETIME NOT NULL);
         INSERT INTO flow_run VALUES (1, '1970-01-01 00:00:05.123000'), (2, 'soon'), (3, 0);",
    );
    let db = TestDb::new();
    db.client()
        .batch_execute(
            "CREATE TABLE flow_run (id bigint PRIMARY KEY, total_run_time interval NOT NULL)",
        )
        .unwrap();
    let (code, report) = check_json(&src.path, Some(&db));
    assert_eq!(code, Some(1), "{report:#}");
    let examples: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["column"] == "total_run_time")
        .flat_map(|p| p["examples"].as_array().unwrap().clone())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(examples.len(), 2, "{report:#}");
    assert!(
        examples.iter().any(|e| e.contains("id=2")
            && e.contains("SQLAlchemy's Interval stores a date-time counted from 1970-01-01")),
        "{examples:#?}"
    );
    assert!(
        examples
            .iter()
            .any(|e| e.contains("id=3") && e.contains("interval:epoch_s")),
        "{examples:#?}"
    );
}
