//! Apps made with a framework, with the real framework from PyPI: its own migrations make the
//! Postgres schema, sqlite2pg recognises it, compares both sides' migrations, copies over the
//! rows those migrations seeded, and after the move the app's ORM gives the same answers on
//! Postgres as on SQLite, and again on SQLite after the fallback.

mod common;

use std::path::Path;

use common::*;

/// Runs `tests/app/SCRIPT COMMAND DB ARGS...`, the form both framework apps take.
fn framework_app(script: &str, db: &str, args: &[&str]) -> String {
    let mut all = vec![args[0], db];
    all.extend_from_slice(&args[1..]);
    python_app(script, &all)
}

fn django(db: &str, args: &[&str]) -> String {
    framework_app("django/app.py", db, args)
}

/// The JSON object an app prints last (its ORM's answers, a writer's tally).
fn last_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no JSON at the end of:\n{out}"))
}

/// An app writing beside the daemon in rounds (`write` runs one and gives its output), at most
/// four, until more than `more_than` transactions: the rounds' tallies added up (numbers
/// summed, lists joined). A count, not a rate: a busy machine writes slower, and the tests are
/// about refusals and locks, not speed.
fn write_until(write: impl Fn() -> String, more_than: i64) -> serde_json::Value {
    let mut total = serde_json::json!({});
    for _ in 0..4 {
        let summary = last_json(&write());
        for (k, v) in summary.as_object().into_iter().flatten() {
            match (v, &mut total[k]) {
                (serde_json::Value::Array(more), serde_json::Value::Array(all)) => {
                    all.extend(more.iter().cloned())
                }
                (serde_json::Value::Number(n), t) => {
                    *t = (t.as_i64().unwrap_or(0) + n.as_i64().unwrap_or(0)).into()
                }
                (v, t) => *t = v.clone(),
            }
        }
        if total["transactions"].as_i64().unwrap_or(0) > more_than {
            return total;
        }
    }
    panic!("more than {more_than} transactions not committed in four rounds: {total}");
}

/// Django writes through its ORM beside the daemon in rounds of `secs` seconds until more
/// than `more_than` transactions committed, none failing.
fn django_writes(sqlite: &str, secs: &str, more_than: i64) {
    let total = write_until(|| django(sqlite, &["write", secs]), more_than);
    assert_eq!(total["failed"], 0, "the app's writes failed: {total}");
}

/// The Django ORM's answers.
fn answers(db: &str) -> serde_json::Value {
    last_json(&django(db, &["answers"]))
}

/// The daemon sees the fallback's record and exits by itself.
fn wait_exit_after_fallback(d: &mut Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.try_exit().is_none() {
        assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn check(src: &Path, db: &TestDb) -> (Option<i32>, serde_json::Value) {
    check_json(src, Some(db))
}

fn finding<'a>(report: &'a serde_json::Value, needle: &str) -> Option<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["message"].as_str().unwrap_or_default().contains(needle))
}

#[test]
fn a_django_app_moves_on_its_own_migrations_and_answers_the_same_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let sqlite = format!("sqlite:{}", path.display());
    django(&sqlite, &["migrate"]);
    django(&sqlite, &["seed", "200"]);
    // Django's migrate on Postgres makes its schema and seeds content types, permissions and
    // its migration rows.
    let db = TestDb::new();
    django(&db.url, &["migrate"]);

    let (code, report) = check(&path, &db);
    assert_eq!(code, Some(0), "{report:#}");
    let same = finding(
        &report,
        "the app is made with Django, and its migrations made the Postgres schema",
    )
    .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(same["severity"], "info");
    assert!(
        same["message"]
            .as_str()
            .unwrap()
            .contains("same 19 migration(s)"),
        "{same:#}"
    );
    // Each side keeps its own applied migrations; never copied, so not counted as seeded.
    assert!(
        finding(&report, "target table django_migrations already holds").is_none(),
        "{report:#}"
    );
    assert!(
        report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["table"] == "django_migrations"
                && s["reason"]
                    .as_str()
                    .unwrap()
                    .contains("each database keeps its own")),
        "{report:#}"
    );
    for seeded in ["django_content_type", "auth_permission"] {
        let f = finding(&report, &format!("target table {seeded} already holds"))
            .unwrap_or_else(|| panic!("{seeded} not listed: {report:#}"));
        assert!(
            f["message"]
                .as_str()
                .unwrap()
                .contains("`run` replaces them"),
            "{f:#}"
        );
    }
    assert!(
        finding(
            &report,
            "target table django_content_type already holds 9 row(s)"
        )
        .is_some_and(|f| f["message"].as_str().unwrap().contains("they agree")),
        "{report:#}"
    );
    // One finding for the 32-bit ids of Django's own schema, not one per column.
    let narrow: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["message"]
                .as_str()
                .unwrap()
                .contains("narrower than the 64-bit")
        })
        .collect();
    assert_eq!(narrow.len(), 1, "{report:#}");
    assert!(
        narrow[0]["message"]
            .as_str()
            .unwrap()
            .contains("auth_user.id (integer)")
    );
    // jsonb refuses invalid JSON itself: Django's JSON_VALID CHECKs are notes, not warnings.
    assert!(
        finding(&report, "JSON_VALID(\"data\")").is_some_and(|f| f["severity"] == "info"),
        "{report:#}"
    );

    // The move, live: the app writes through its ORM while the daemon copies and streams
    // (no --truncate: the seeded rows give way to SQLite's).
    let mut d = Daemon::start(&path, &db, &[]);
    django_writes(&sqlite, "6", 50);
    d.wait_caught_up();
    let before = answers(&sqlite);
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "cutover",
    ]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));

    // On Postgres, Django's ORM gives the answers it gave on SQLite.
    let on_pg = answers(&db.url);
    assert_eq!(
        on_pg, before,
        "SQLite answered {before:#}\nPostgres answered {on_pg:#}"
    );
    // The comparison means something: Berlin's 31 March (the DST day) has orders, some at 2 h.
    assert!(before["date_berlin"].as_i64().unwrap() > 0, "{before:#}");
    assert!(before["hour_berlin_2"].as_i64().unwrap() > 0, "{before:#}");

    // The app goes on on Postgres, then falls back: SQLite's ORM sees what it wrote there.
    django(&db.url, &["create", "4", "written-on-postgres"]);
    let after_pg = answers(&db.url);
    assert_eq!(after_pg["tagged"]["written-on-postgres"], 4, "{after_pg:#}");
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "fallback",
    ]);
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    let back = answers(&sqlite);
    assert_eq!(
        back, after_pg,
        "SQLite answered {back:#}\nPostgres answered {after_pg:#}"
    );
    wait_exit_after_fallback(&mut d);
}

/// Both sides must be at the same migrations: Postgres without a migration SQLite has is a
/// skew that check names (each side's list) and run refuses before anything is copied.
#[test]
fn a_django_migration_skew_is_named_and_stops_the_run_before_any_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let sqlite = format!("sqlite:{}", path.display());
    django(&sqlite, &["migrate"]);
    django(&sqlite, &["seed", "5"]);
    let db = TestDb::new();
    django(&db.url, &["migrate"]);
    django(&db.url, &["migrate", "sessions", "zero"]);
    let (code, report) = check(&path, &db);
    assert_eq!(code, Some(1), "{report:#}");
    let skew = finding(&report, "migrations differ between the two sides")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(skew["severity"], "error");
    assert!(
        skew["message"].as_str().unwrap().contains(
            "applied in SQLite only: [sessions.0001_initial]; applied on Postgres only: []"
        ),
        "{skew:#}"
    );
    assert!(
        skew["hint"]
            .as_str()
            .unwrap()
            .contains("python manage.py migrate"),
        "{skew:#}"
    );
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "run",
        "--snapshot-only",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("applied in SQLite only: [sessions.0001_initial]"),
        "{}",
        text(&out)
    );
    // Nothing was copied: Postgres still holds only what Django's migrate seeded.
    let customers: i64 = scalar(&mut db.client(), "SELECT count(*) FROM shop_customer");
    assert_eq!(customers, 0);
}

/// sqlite2pg making the schema of a Django app: types as Django's Postgres backend makes them
/// where the SQLite schema decides (uuid, jsonb, timestamptz, boolean), what it cannot decide
/// named beforehand (a decimal's scale), and the ORM's answers the same on Postgres except
/// that, which `--cast` then settles. The reverse stream gives back SQLite's own forms.
#[test]
fn sqlite2pg_makes_a_django_schema_as_djangos_postgres_backend_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let sqlite = format!("sqlite:{}", path.display());
    django(&sqlite, &["migrate"]);
    django(&sqlite, &["seed", "60"]);
    let db = TestDb::new();
    let (code, report) = check(&path, &db);
    assert_eq!(code, Some(0), "{report:#}");
    let ty = |table: &str, column: &str| -> String {
        let t = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["source"] == table)
            .unwrap_or_else(|| panic!("{table}: {report:#}"));
        let c = t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source"] == column)
            .unwrap_or_else(|| panic!("{table}.{column}: {report:#}"));
        c["target_type"].as_str().unwrap().to_string()
    };
    for (table, column, want) in [
        ("shop_customer", "id", "uuid"),
        ("shop_customer", "profile", "jsonb"),
        ("shop_customer", "joined_at", "timestamptz"),
        ("shop_customer", "active", "boolean"),
        ("shop_order", "customer_id", "uuid"),
        ("shop_order", "data", "jsonb"),
        ("shop_order", "total", "numeric"),
        ("auth_user", "date_joined", "timestamptz"),
    ] {
        assert_eq!(ty(table, column), want, "{table}.{column}");
    }
    let framework = finding(
        &report,
        "the app is made with Django (django_migrations in the SQLite file)",
    )
    .unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        framework["hint"]
            .as_str()
            .unwrap()
            .contains("python manage.py migrate")
    );
    let utc =
        finding(&report, "read as UTC into timestamptz").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        utc["message"]
            .as_str()
            .unwrap()
            .contains("shop_order.placed_at"),
        "{utc:#}"
    );
    let scale = finding(&report, "without the field's max_digits and decimal_places")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(scale["severity"], "warning");
    assert!(
        scale["message"]
            .as_str()
            .unwrap()
            .ends_with(": shop_order.total"),
        "{scale:#}"
    );

    // Moved as check said: the answers differ only in the scale check named.
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    let before = answers(&sqlite);
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "cutover",
    ]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    let mut on_pg = answers(&db.url);
    assert_eq!(before["fixed_total"], "524723.80");
    assert_eq!(
        on_pg["fixed_total"], "524723.8",
        "the difference check named"
    );
    let unscaled = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().parse::<f64>().unwrap().to_string())
            .collect()
    };
    assert_eq!(unscaled(&on_pg["totals"]), unscaled(&before["totals"]));
    for k in ["fixed_total", "totals"] {
        on_pg[k] = before[k].clone();
    }
    assert_eq!(
        on_pg, before,
        "SQLite answered {before:#}\nPostgres answered {on_pg:#}"
    );

    // Back to SQLite after writes on Postgres: the app's own forms (32 hex digits, naive UTC
    // text, JSON text), and the ORM on SQLite sees the rows.
    django(&db.url, &["create", "2", "written-on-postgres"]);
    let after_pg = answers(&db.url);
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "fallback",
    ]);
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    assert_eq!(
        answers(&sqlite)["tagged"]["written-on-postgres"],
        after_pg["tagged"]["written-on-postgres"]
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let (id, joined): (String, String) = c
        .query_row(
            "SELECT id, joined_at FROM shop_customer WHERE email = 'new-written-on-postgres@example.com'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    assert_eq!(joined, "2024-03-30 20:00:00");
    wait_exit_after_fallback(&mut d);

    // The scale given with --cast: the same answer as on SQLite.
    let db2 = TestDb::new();
    let path2 = dir.path().join("shop2.db");
    let sqlite2 = format!("sqlite:{}", path2.display());
    django(&sqlite2, &["migrate"]);
    django(&sqlite2, &["seed", "5"]);
    let out = sqlite2pg(&[
        "--source",
        path2.to_str().unwrap(),
        "--target",
        &db2.url,
        "--cast",
        "shop_order.total=numeric(12,2)",
        "run",
        "--snapshot-only",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(answers(&db2.url)["fixed_total"], "524723.80");
}

/// Rails cannot be installed here: a SQLite file made with ActiveRecord 7.1's SQLite adapter's
/// DDL and value conventions (varchar, datetime(6) as UTC text with microseconds, booleans as
/// 1/0, decimal(p,s), json), and a Postgres schema as its PostgreSQL adapter makes it.
const RAILS_SQLITE: &str = r#"
CREATE TABLE "schema_migrations" ("version" varchar NOT NULL PRIMARY KEY);
CREATE TABLE "ar_internal_metadata" ("key" varchar NOT NULL PRIMARY KEY, "value" varchar, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE TABLE "users" ("id" integer PRIMARY KEY AUTOINCREMENT NOT NULL, "email" varchar DEFAULT '' NOT NULL, "admin" boolean DEFAULT 0 NOT NULL, "balance" decimal(10,2), "settings" json, "created_at" datetime(6) NOT NULL, "updated_at" datetime(6) NOT NULL);
CREATE UNIQUE INDEX "index_users_on_email" ON "users" ("email");
INSERT INTO schema_migrations VALUES ('20240101000000'), ('20240215093000');
INSERT INTO ar_internal_metadata VALUES ('environment', 'production', '2024-01-01 10:00:00.123456', '2024-01-01 10:00:00.123456');
INSERT INTO users (email, admin, balance, settings, created_at, updated_at) VALUES
  ('a@example.com', 1, 10.5, '{"theme":"dark"}', '2024-01-01 10:00:00.123456', '2024-02-01 08:30:00.000001'),
  ('b@example.com', 0, NULL, NULL, '2024-01-02 11:00:00', '2024-01-02 11:00:00');
"#;

const RAILS_POSTGRES: &str = r#"
CREATE TABLE schema_migrations (version character varying NOT NULL PRIMARY KEY);
CREATE TABLE ar_internal_metadata (key character varying NOT NULL PRIMARY KEY, value character varying, created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
CREATE TABLE users (id bigserial PRIMARY KEY, email character varying DEFAULT '' NOT NULL, admin boolean DEFAULT false NOT NULL, balance numeric(10,2), settings json, created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
CREATE UNIQUE INDEX index_users_on_email ON users (email);
INSERT INTO ar_internal_metadata VALUES ('environment', 'production', now(), now());
"#;

/// Prisma cannot be installed here: a SQLite file made with Prisma Migrate's SQLite DDL and its
/// connector's conventions (DateTime as integer milliseconds, or CURRENT_TIMESTAMP's text from a
/// default; BOOLEAN 0/1; DECIMAL), and its migration table with a rolled-back attempt.
const PRISMA_SQLITE: &str = r#"
CREATE TABLE "_prisma_migrations" ("id" TEXT PRIMARY KEY NOT NULL, "checksum" TEXT NOT NULL, "finished_at" DATETIME, "migration_name" TEXT NOT NULL, "logs" TEXT, "rolled_back_at" DATETIME, "started_at" DATETIME NOT NULL DEFAULT current_timestamp, "applied_steps_count" INTEGER UNSIGNED NOT NULL DEFAULT 0);
CREATE TABLE "User" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "email" TEXT NOT NULL, "name" TEXT, "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, "admin" BOOLEAN NOT NULL DEFAULT false);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE TABLE "Post" ("id" TEXT NOT NULL PRIMARY KEY, "title" TEXT NOT NULL, "published" BOOLEAN NOT NULL DEFAULT false, "authorId" INTEGER NOT NULL, "updatedAt" DATETIME NOT NULL, CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User" ("id") ON DELETE RESTRICT ON UPDATE CASCADE);
INSERT INTO "_prisma_migrations" VALUES
  ('m1', 'c1', 1717243200000, '20240601000000_init', NULL, NULL, 1717243199000, 1),
  ('m2', 'c2', NULL, '20240610000000_add_posts', 'failed', 1718000000000, 1717999999000, 0),
  ('m3', 'c3', 1718000100000, '20240610000000_add_posts', NULL, NULL, 1718000099000, 1);
INSERT INTO "User" (email, name, createdAt, admin) VALUES ('a@example.com', 'A', 1717243200123, 1);
INSERT INTO "User" (email, name, admin) VALUES ('b@example.com', NULL, 0);
INSERT INTO "Post" VALUES ('p1', 'Hello', 1, 1, 1718000000456);
"#;

#[test]
fn rails_and_prisma_files_get_their_frameworks_advice_mapping_and_migration_comparison() {
    // Rails, no target: recognised, and the advice is Rails' own command.
    let rails = SqliteFile::new(RAILS_SQLITE);
    let (code, report) = check_json(&rails.path, None);
    assert_eq!(code, Some(0), "{report:#}");
    let advice = finding(&report, "the app is made with Rails (ActiveRecord)")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        advice["hint"]
            .as_str()
            .unwrap()
            .contains("bin/rails db:create db:migrate"),
        "{advice:#}"
    );
    let types = |report: &serde_json::Value, table: &str| -> Vec<String> {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["source"] == table)
            .unwrap_or_else(|| panic!("{table}: {report:#}"))["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}:{}",
                    c["source"].as_str().unwrap(),
                    c["target_type"].as_str().unwrap()
                )
            })
            .collect()
    };
    // As Rails' PostgreSQL adapter types them.
    assert_eq!(
        types(&report, "users"),
        [
            "id:bigint",
            "email:varchar",
            "admin:boolean",
            "balance:numeric(10,2)",
            "settings:json",
            "created_at:timestamp(6)",
            "updated_at:timestamp(6)"
        ]
    );
    // Its migrations made the Postgres schema, one migration behind: named, and run refuses.
    let db = TestDb::new();
    db.client().batch_execute(RAILS_POSTGRES).unwrap();
    db.client()
        .batch_execute("INSERT INTO schema_migrations VALUES ('20240101000000')")
        .unwrap();
    let (code, report) = check(&rails.path, &db);
    assert_eq!(code, Some(1), "{report:#}");
    let skew = finding(&report, "migrations differ").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        skew["message"]
            .as_str()
            .unwrap()
            .contains("applied in SQLite only: [20240215093000]; applied on Postgres only: []"),
        "{skew:#}"
    );
    db.client()
        .batch_execute("INSERT INTO schema_migrations VALUES ('20240215093000')")
        .unwrap();
    let (code, report) = check(&rails.path, &db);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        finding(&report, "both sides are at the same 2 migration(s)").is_some(),
        "{report:#}"
    );
    // ar_internal_metadata's row is seeded by Rails: listed, then replaced by SQLite's.
    assert!(
        finding(
            &report,
            "target table ar_internal_metadata already holds 1 row(s)"
        )
        .is_some(),
        "{report:#}"
    );
    let out = snapshot(&rails.path, &db, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let r = pg_rows(
        &mut db.client(),
        "SELECT email, admin::text, balance::text, settings::text, created_at::text FROM users ORDER BY id",
    );
    assert_eq!(
        r[0],
        [
            Some("a@example.com".to_string()),
            Some("true".into()),
            Some("10.50".into()),
            Some("{\"theme\":\"dark\"}".into()),
            Some("2024-01-01 10:00:00.123456".into())
        ]
    );

    // Prisma: DateTime integers are milliseconds; a rolled-back attempt is not an applied one.
    let prisma = SqliteFile::new(PRISMA_SQLITE);
    let (code, report) = check_json(&prisma.path, None);
    assert_eq!(code, Some(0), "{report:#}");
    let advice =
        finding(&report, "the app is made with Prisma").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        advice["hint"]
            .as_str()
            .unwrap()
            .contains("npx prisma migrate deploy"),
        "{advice:#}"
    );
    assert!(types(&report, "User").contains(&"createdAt:timestamp(3)".to_string()));
    let db = TestDb::new();
    let out = snapshot(&prisma.path, &db, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let r = pg_rows(
        &mut db.client(),
        "SELECT \"createdAt\"::text, admin::text FROM \"User\" ORDER BY id",
    );
    assert_eq!(
        r[0],
        [
            Some("2024-06-01 12:00:00.123".to_string()),
            Some("true".into())
        ]
    );
    let defaulted = r[1][0].clone().unwrap();
    assert!(
        defaulted.len() == 19 && defaulted.starts_with("20"),
        "{defaulted}"
    );
    let db = TestDb::new();
    db.client()
        .batch_execute(
            r#"CREATE TABLE "_prisma_migrations" (id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz, migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0);
               INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name) VALUES ('x1', 'c1', now(), '20240601000000_init');"#,
        )
        .unwrap();
    let (code, report) = check(&prisma.path, &db);
    assert_eq!(code, Some(1), "{report:#}");
    let skew = finding(&report, "migrations differ").unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        skew["message"].as_str().unwrap().contains(
            "applied in SQLite only: [20240610000000_add_posts]; applied on Postgres only: []"
        ),
        "{skew:#}"
    );
}

fn tracker(db: &str, args: &[&str]) -> String {
    framework_app("tracker/app.py", db, args)
}

fn tracker_answers(db: &str) -> serde_json::Value {
    last_json(&tracker(db, &["answers"]))
}

/// An Alembic app shaped like MLflow's tracking store: the primary key of its main table holds
/// a BOOLEAN (verify and cutover could not order it), and its migration writes a default row
/// on Postgres too. Moved live on its own migrations, both ways, through SQLAlchemy.
#[test]
fn an_alembic_app_with_a_boolean_in_its_key_and_a_seeded_row_moves_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tracking.db");
    let sqlite = format!("sqlite:{}", path.display());
    tracker(&sqlite, &["upgrade"]);
    tracker(&sqlite, &["log", "3000"]);
    let db = TestDb::new();
    tracker(&db.url, &["upgrade"]);
    let (code, report) = check(&path, &db);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        finding(
            &report,
            "the app is made with Alembic (SQLAlchemy), and its migrations made the Postgres schema"
        )
        .is_some(),
        "{report:#}"
    );
    assert!(
        finding(&report, "target table experiments already holds 1 row(s)").is_some_and(|f| {
            f["message"]
                .as_str()
                .unwrap()
                .contains("1 missing on Postgres")
        }),
        "{report:#}"
    );
    let mut d = Daemon::start(&path, &db, &[]);
    let written = tracker(&sqlite, &["write", "5"]);
    let summary = last_json(&written);
    assert_eq!(summary["failed"], 0, "{summary}");
    d.wait_caught_up();
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "verify",
    ]);
    assert!(out.status.success(), "verify:\n{}", text(&out));
    let before = tracker_answers(&sqlite);
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "cutover",
    ]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    assert_eq!(tracker_answers(&db.url), before);
    // The app goes on on Postgres (its sequences past SQLite's ids), then falls back.
    tracker(&db.url, &["write", "2"]);
    let after_pg = tracker_answers(&db.url);
    let out = sqlite2pg(&[
        "--source",
        path.to_str().unwrap(),
        "--target",
        &db.url,
        "fallback",
    ]);
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    assert_eq!(tracker_answers(&sqlite), after_pg);
    wait_exit_after_fallback(&mut d);
}

/// Django's `atomic()` begins with a deferred `BEGIN` and reads before it writes: SQLite refuses
/// such a write at once when another connection wrote since the read began, busy timeout or
/// not. The daemon's own writes (pruning the changelog) wait for moments the app is outside a
/// transaction, so the app is never refused because of sqlite2pg, in either journal mode.
fn django_is_never_refused_while_the_daemon_prunes(journal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let sqlite = format!("sqlite:{}", path.display());
    django(&sqlite, &["migrate"]);
    // Enough customers that each transaction's random pick reads for a while.
    django(&sqlite, &["seed", "12000"]);
    rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(&format!("PRAGMA journal_mode = {journal}"), [], |_| Ok(()))
        .unwrap();
    let db = TestDb::new();
    django(&db.url, &["migrate"]);
    let mut d = Daemon::start(&path, &db, &[]);
    d.wait_caught_up();
    django_writes(&sqlite, "15", 200);
    d.wait_caught_up();
    // Pruning waited for the app's quiet moments; once the app rests, the changelog goes.
    let reader = rusqlite::Connection::open(&path).unwrap();
    wait_until(
        "the changelog pruned once the app rests",
        std::time::Duration::from_secs(60),
        || {
            reader
                .query_row("SELECT count(*) FROM _sqlite2pg_changes", [], |r| {
                    r.get::<_, i64>(0)
                })
                .is_ok_and(|left| left <= 1)
        },
    );
    assert!(d.stop());
}

#[test]
fn django_is_never_refused_while_the_daemon_prunes_in_rollback_journal_mode() {
    django_is_never_refused_while_the_daemon_prunes("delete");
}

#[test]
fn django_is_never_refused_while_the_daemon_prunes_in_wal_mode() {
    django_is_never_refused_while_the_daemon_prunes("wal");
}

fn flows(db: &str, args: &[&str]) -> String {
    framework_app("flows/app.py", db, args)
}

fn flows_answers(db: &str) -> serde_json::Value {
    last_json(&flows(db, &["answers"]))
}

/// The answers that differ, each with both values (the whole objects are long).
fn assert_same_answers(got: &serde_json::Value, want: &serde_json::Value, when: &str) {
    let keys = want.as_object().unwrap().keys();
    let differ: Vec<String> = keys
        .filter(|k| got[k.as_str()] != want[k.as_str()])
        .map(|k| {
            let (g, w) = (&got[k.as_str()], &want[k.as_str()]);
            match (g.as_array(), w.as_array()) {
                (Some(g), Some(w)) => {
                    let first = g.iter().zip(w).find(|(a, b)| a != b);
                    format!(
                        "{k}: {} vs {} items, first differing: {first:?}",
                        g.len(),
                        w.len()
                    )
                }
                _ => format!("{k}: {g} vs {w}"),
            }
        })
        .collect();
    assert!(differ.is_empty(), "{when}: {differ:#?}");
}

/// The app writing for `seconds` at a time (reads, then writes, inside one deferred BEGIN)
/// until more than 20 transactions: their tally added up.
fn flows_write(db: &str, seconds: &str) -> serde_json::Value {
    write_until(|| flows(db, &["write", seconds]), 20)
}

/// An Alembic app with SQLAlchemy's portable types (Uuid as CHAR(32), Interval as a DATETIME
/// counted from 1970, JSON under a unique index, an Enum that is native on Postgres only,
/// aware datetimes kept naive in SQLite) and one version tree per database, moved live on its
/// own Postgres schema while it reads then writes inside deferred transactions: its ORM
/// answers the same on Postgres, writes there, and after the fallback SQLite's ORM sees those
/// writes. Each side keeps its own alembic_version. sqlite2pg's writes to the file cost the
/// app no `database is locked`, as without sqlite2pg.
#[test]
fn an_alembic_app_with_portable_types_and_a_tree_per_database_moves_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orion.db");
    let sqlite = format!("sqlite:{}", path.display());
    flows(&sqlite, &["upgrade"]);
    flows(&sqlite, &["seed", "400"]);
    let db = TestDb::new();
    flows(&db.url, &["upgrade"]);
    let heads = |db: &str| last_json(&flows(db, &["heads"]));
    assert_eq!(heads(&sqlite), serde_json::json!(["27d8f4e1a6c9"]));
    assert_eq!(heads(&db.url), serde_json::json!(["91e2b8f3d6a4"]));

    // The trees differ by design: named, with the flag that accepts it.
    let (code, report) = check(&path, &db);
    assert_eq!(code, Some(1), "{report:#}");
    let skew = finding(&report, "migrations differ between the two sides").unwrap();
    assert!(
        skew["message"]
            .as_str()
            .unwrap()
            .contains("SQLite is at [27d8f4e1a6c9]; Postgres is at [91e2b8f3d6a4]")
            && skew["hint"]
                .as_str()
                .unwrap()
                .contains("--equivalent-migration 27d8f4e1a6c9=91e2b8f3d6a4"),
        "{skew:#}"
    );
    let same = ["--equivalent-migration", "27d8f4e1a6c9=91e2b8f3d6a4"];
    let p = path.to_str().unwrap();
    let out = sqlite2pg(
        &[
            &["--source", p, "--target", &db.url][..],
            &same,
            &["check", "--json"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The columns get the app's own types, and the assumption about naive times is said.
    for (table, column, ty) in [
        ("flow_run", "total_run_time", "interval"),
        ("flow_run", "id", "uuid"),
        ("flow_run", "parameters", "jsonb"),
        ("automation_bucket", "bucketing_key", "jsonb"),
        ("flow_run", "start_time", "timestamptz"),
    ] {
        let t = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["source"] == table)
            .unwrap();
        let c = t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source"] == column)
            .unwrap();
        assert_eq!(c["target_type"], ty, "{c:#}");
    }
    assert!(
        finding(&report, "read as UTC into the app's timestamptz columns").is_some(),
        "{report:#}"
    );
    assert!(
        finding(&report, "holds only those words").is_some(),
        "{report:#}"
    );

    // Without sqlite2pg, the app is never refused.
    assert_eq!(flows_write(&sqlite, "3")["failed"], 0);

    let mut d = Daemon::start(&path, &db, &same);
    // Longer than the daemon's 30 s between prunes, so one falls inside the app's writes.
    let summary = flows_write(&sqlite, "40");
    // Nor with it: installing capture, copying, streaming and pruning cost it nothing.
    assert_eq!(
        (summary["failed"].clone(), summary["locked"].clone()),
        (0.into(), 0.into()),
        "{summary}"
    );
    let (kept, made): (i64, i64) = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*), max(seq) FROM _sqlite2pg_changes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        kept < made,
        "no prune while the app wrote: {kept} of {made} changes kept"
    );
    d.wait_caught_up();
    let out = sqlite2pg_on(&path, &db, &["verify"]);
    assert!(out.status.success(), "verify:\n{}", text(&out));
    let before = flows_answers(&sqlite);
    let out = sqlite2pg_on(&path, &db, &["cutover"]);
    assert!(out.status.success(), "cutover:\n{}", text(&out));
    assert_same_answers(
        &flows_answers(&db.url),
        &before,
        "on Postgres after the cutover",
    );
    assert_eq!(heads(&db.url), serde_json::json!(["91e2b8f3d6a4"]));

    // The app goes on on Postgres, then falls back; SQLite's ORM sees what it wrote there.
    assert_eq!(flows_write(&db.url, "3")["failed"], 0);
    let after_pg = flows_answers(&db.url);
    assert_ne!(after_pg, before);
    let out = sqlite2pg_on(&path, &db, &["fallback"]);
    assert!(out.status.success(), "fallback:\n{}", text(&out));
    assert_same_answers(
        &flows_answers(&sqlite),
        &after_pg,
        "on SQLite after the fallback",
    );
    assert_eq!(heads(&sqlite), serde_json::json!(["27d8f4e1a6c9"]));
    wait_exit_after_fallback(&mut d);
    // And it goes on writing on SQLite: JSON written back from Postgres in the app's own text
    // form, so its lookups by JSON text still find the rows.
    let pg_keys: i64 = scalar(
        &mut db.client(),
        "SELECT count(*) FROM automation_bucket WHERE bucketing_key::text LIKE '{\"n\"%'",
    );
    assert!(pg_keys > 0, "the writes on Postgres made no bucket");
    for _ in 0..3 {
        assert_eq!(flows_write(&sqlite, "2")["failed"], 0);
    }
    assert_eq!(flows_answers(&sqlite)["duplicate_buckets"], 0);
}
