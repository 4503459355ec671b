//! Every translated SQLite function and operator, evaluated by SQLite and by Postgres over the
//! same table of inputs: the results are equal row by row, value and storage class.

mod common;

use common::*;
use sqlite2pg::expr::{self, Column, Kind, Scope};
use sqlite2pg::model::Collation;
use sqlite2pg::model::PgType;

/// One result, as both sides can give it.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Int(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

/// One input row: id, integer, real, text (in three collations), blob.
type Input = (
    i64,
    Option<i64>,
    Option<f64>,
    Option<&'static str>,
    Option<&'static [u8]>,
);

fn inputs() -> Vec<Input> {
    vec![
        (1, Some(0), Some(0.0), Some(""), Some(b"")),
        (2, Some(1), Some(0.1), Some("a"), Some(b"\x00\x01")),
        (3, Some(-7), Some(-2.5), Some("Abc"), Some(b"abc")),
        (4, Some(2147483647), Some(1e300), Some("  padded  "), None),
        (
            5,
            Some(-2147483648),
            Some(3.0),
            Some("ÉCOLE école"),
            Some(b"\xff"),
        ),
        (6, None, None, None, None),
        (
            7,
            Some(42),
            Some(0.30000000000000004),
            Some("100%_done\\x"),
            Some(b"a"),
        ),
        (
            8,
            Some(9007199254740993),
            Some(-0.5),
            Some("tab\there"),
            Some(b"B"),
        ),
        (9, Some(3), Some(2.0), Some("MiXeD cAsE"), Some(b"zz")),
        (10, Some(-1), Some(123.456), Some("b"), Some(b"\x00")),
        (11, Some(10), Some(10.0), Some("ß and ǅ"), Some(b"a\x00b")),
        (12, Some(5), Some(-0.0), Some("trailing   "), Some(b"A")),
        (13, Some(-9), Some(-1e300), Some("%"), Some(b"")),
        (14, Some(42), Some(42.0), Some("42"), Some(b"42")),
    ]
}

fn scope() -> Scope {
    let col = Column::new;
    Scope::table(
        "t",
        vec![
            col("i", "INTEGER", PgType::Int8, Collation::Binary),
            col("r", "REAL", PgType::Float8, Collation::Binary),
            col("s", "TEXT", PgType::Text, Collation::Binary),
            col("n", "TEXT", PgType::Text, Collation::Nocase),
            col("w", "TEXT", PgType::Text, Collation::Rtrim),
            col("b", "BLOB", PgType::Bytea, Collation::Binary),
        ],
    )
}

/// Expressions over the inputs; every one must translate.
const EXPRESSIONS: &[&str] = &[
    // comparisons, with NULLs and collations
    "i = 3",
    "i <> 3",
    "i < 0",
    "i >= -7",
    "r > 0.1",
    "r <= 2",
    "i > 0.5",
    "i = 1.0",
    "s = 'a'",
    "s < 'b'",
    "s >= 'ab'",
    "s > 'É'",
    "n = 'abc'",
    "n < 'b'",
    "s = 'abc' COLLATE NOCASE",
    "n = 'ABC' COLLATE BINARY",
    "w = 'trailing'",
    "w < 'b'",
    "b = x'616263'",
    "b < x'61'",
    // a literal compared with a column takes the column's affinity
    "s = 42",
    "42 = s",
    "s < 5",
    "s = -1",
    "i = '42'",
    "i > '7'",
    "'42' = i",
    "r = '42'",
    "n = 42",
    "i IS NULL",
    "i IS NOT NULL",
    "i IS 3",
    "i IS NOT 3",
    "s IS NULL",
    "i BETWEEN 0 AND 10",
    "s NOT BETWEEN 'a' AND 'b'",
    "i IN (1, 3, NULL)",
    "i NOT IN (1, 3)",
    "s IN ('a', 'b')",
    "n IN ('ABC', 'B')",
    // logic with NULLs
    "i > 0 AND r > 0",
    "i > 0 OR r > 0",
    "NOT (i > 0)",
    "NOT i",
    "i AND r",
    "(i > 0) + 1",
    // arithmetic
    "i + 1",
    "i - 2147483647",
    "i * 3",
    "i * 1000",
    "-i",
    "i + r",
    "r * 2",
    "r - 0.5",
    "i / 2",
    "i / -3",
    "i % 3",
    "i % -3",
    "r / 4",
    "i / 2.0",
    "1 + 2 * 3",
    "2147483647 + 1",
    // text
    "s || 'x'",
    "s || i",
    "'n=' || i || ';'",
    "length(s)",
    "length(i)",
    "length(b)",
    "lower(s)",
    "upper(s)",
    "trim(s)",
    "ltrim(s)",
    "rtrim(s)",
    "trim(s, 'a ')",
    "ltrim(s, 'A')",
    "rtrim(s, 'e ')",
    "substr(s, 2)",
    "substr(s, 1, 3)",
    "substr(s, 3, 0)",
    "substr(s, 20, 2)",
    "substr(b, 2, 1)",
    "substring(s, 2, 2)",
    "instr(s, 'a')",
    "instr(s, '')",
    "replace(s, 'a', 'X')",
    "replace(s, '', 'X')",
    "s LIKE 'a%'",
    "s LIKE '%C%'",
    "s LIKE '_b_'",
    "s NOT LIKE '%e%'",
    "s LIKE '%!%%' ESCAPE '!'",
    "s LIKE '%\\x'",
    "s LIKE 'école'",
    "s GLOB 'A*'",
    "s GLOB '*%*'",
    "s GLOB '?b?'",
    "s GLOB '*\\x'",
    // functions
    "abs(i)",
    "abs(r)",
    "typeof(i)",
    "typeof(r)",
    "typeof(s)",
    "typeof(b)",
    "typeof(NULL)",
    "typeof(i > 1)",
    "coalesce(i, 0)",
    "ifnull(s, 'none')",
    "coalesce(NULL, r, 1.5)",
    "nullif(i, 3)",
    "nullif(s, 'a')",
    "iif(i > 2, 'big', 'small')",
    "iif(i, r, 0.5)",
    "CASE WHEN i > 5 THEN 'a' WHEN i > 0 THEN 'b' ELSE 'c' END",
    "CASE i WHEN 3 THEN 'three' WHEN 42 THEN 'answer' END",
    "CASE n WHEN 'ABC' THEN 1 ELSE 0 END",
    "CAST(r AS INTEGER)",
    "CAST(i AS REAL)",
    "CAST(i AS TEXT)",
    "CAST(s AS TEXT)",
    "TRUE",
    "FALSE + 1",
];

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> V {
    use rusqlite::types::ValueRef as R;
    match v {
        R::Null => V::Null,
        R::Integer(i) => V::Int(i),
        R::Real(f) => V::Real(f.to_bits()),
        R::Text(t) => V::Text(String::from_utf8_lossy(t).into_owned()),
        R::Blob(b) => V::Blob(b.to_vec()),
    }
}

fn sqlite_side(conn: &rusqlite::Connection, e: &str) -> Result<Vec<V>, String> {
    let mut stmt = conn
        .prepare(&format!("SELECT {e} FROM t ORDER BY id"))
        .map_err(|x| x.to_string())?;
    let rows = stmt
        .query_map([], |r| Ok(sqlite_value(r.get_ref(0)?)))
        .map_err(|x| x.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|x| x.to_string())
}

/// Evaluates `pg` on Postgres, `from` the inputs (or nothing), as the storage class's type.
fn pg_side(c: &mut postgres::Client, pg: &str, kind: Kind, from: &str) -> Result<Vec<V>, String> {
    let ty = match kind {
        Kind::Int => "int8",
        // A boolean casts to integer only, then widens.
        Kind::Cond => "int::int8",
        Kind::Real => "float8",
        Kind::Text | Kind::Null => "text",
        Kind::Blob => "bytea",
        Kind::Numeric | Kind::Opaque => return Err(format!("no {kind:?} column in the inputs")),
    };
    let sql = format!("SELECT ({pg})::{ty} {from}");
    let rows = c.query(sql.as_str(), &[]).map_err(|x| {
        let why = x.as_db_error().map(|d| d.message().to_string());
        format!("{sql}: {}", why.unwrap_or_else(|| x.to_string()))
    })?;
    Ok(rows
        .iter()
        .map(|r| match kind {
            Kind::Int | Kind::Cond => r.get::<_, Option<i64>>(0).map_or(V::Null, V::Int),
            Kind::Real => r
                .get::<_, Option<f64>>(0)
                .map_or(V::Null, |f| V::Real(f.to_bits())),
            Kind::Blob => r.get::<_, Option<Vec<u8>>>(0).map_or(V::Null, V::Blob),
            _ => r.get::<_, Option<String>>(0).map_or(V::Null, V::Text),
        })
        .collect())
}

fn setup() -> (SqliteFile, TestDb, postgres::Client) {
    let src = SqliteFile::new(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, n TEXT COLLATE NOCASE,
           w TEXT COLLATE RTRIM, b BLOB);",
    );
    let db = TestDb::new();
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, i int8, r float8, s text, n text, w text, b bytea)",
    )
    .expect("create the inputs on Postgres");
    let conn = src.conn();
    for (id, i, r, s, b) in inputs() {
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?5)",
            rusqlite::params![id, i, r, s, b],
        )
        .expect("insert an input into SQLite");
    }
    // Postgres gets what SQLite holds (SQLite keeps -0.0 as 0.0, for one).
    let mut stmt = conn.prepare("SELECT id, i, r, s, b FROM t").unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<f64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, i, r, s, b) = row.unwrap();
        c.execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4, $4, $4, $5)",
            &[&id, &i, &r, &s, &b],
        )
        .expect("insert an input into Postgres");
    }
    drop(stmt);
    (src, db, c)
}

#[test]
fn every_translated_expression_gives_sqlites_result_on_postgres() {
    let (src, _db, mut c) = setup();
    let conn = src.conn();
    let scope = scope();
    let mut failures = Vec::new();
    for e in EXPRESSIONS {
        let parsed = expr::parse(e).unwrap_or_else(|why| panic!("{e}: {why}"));
        let t = match expr::translate(&parsed, &scope) {
            Ok(t) => t,
            Err(why) => {
                failures.push(format!("{e}: not translated: {why}"));
                continue;
            }
        };
        let want = sqlite_side(&conn, e).unwrap_or_else(|why| panic!("SQLite: {e}: {why}"));
        let got = match pg_side(&mut c, &t.sql, t.kind, "FROM t ORDER BY id") {
            Ok(v) => v,
            Err(why) => {
                failures.push(format!("{e} -> {}: Postgres failed: {why}", t.sql));
                continue;
            }
        };
        // The storage class the translator claims is the one SQLite gives.
        for (row, v) in want.iter().enumerate() {
            let class_ok = matches!(
                (t.kind, v),
                (_, V::Null)
                    | (Kind::Int | Kind::Cond, V::Int(_))
                    | (Kind::Real, V::Real(_))
                    | (Kind::Text, V::Text(_))
                    | (Kind::Blob, V::Blob(_))
            );
            if !class_ok {
                failures.push(format!(
                    "{e}: row {}: SQLite gives {v:?}, the translation claims {:?}",
                    row + 1,
                    t.kind
                ));
            }
        }
        if want != got {
            let rows: Vec<String> = want
                .iter()
                .zip(&got)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("row {}: SQLite {a:?}, Postgres {b:?}", i + 1))
                .collect();
            failures.push(format!("{e} -> {}:\n    {}", t.sql, rows.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions differ:\n{}",
        failures.len(),
        EXPRESSIONS.len(),
        failures.join("\n")
    );
}

#[test]
fn date_functions_of_now_give_sqlites_text_forms() {
    let (src, _db, mut c) = setup();
    let conn = src.conn();
    let empty = Scope::default();
    // Postgres' clock for the session in UTC, as SQLite's 'now' is.
    c.batch_execute("SET TimeZone = 'America/New_York'")
        .expect("set a zone");
    let one = |conn: &rusqlite::Connection, c: &mut postgres::Client, e: &str| {
        let t = expr::translate(&expr::parse(e).expect(e), &empty)
            .unwrap_or_else(|why| panic!("{e}: {why}"));
        let want = conn
            .query_row(&format!("SELECT {e}"), [], |r| {
                Ok(sqlite_value(r.get_ref(0)?))
            })
            .expect(e);
        let got = pg_side(c, &t.sql, t.kind, "");
        (want, got.unwrap_or_else(|why| panic!("{e}: {why}")), t.sql)
    };
    // Calendar values that change only at midnight UTC: equal unless the two reads straddle it.
    for e in [
        "date('now')",
        "date('now', 'start of month')",
        "date('now', 'start of year', '+40 days')",
        "strftime('%Y/%m/%d %j %w %%', 'now', 'start of day')",
        "datetime('now', 'start of day', '+36 hours', '-5 minutes', '+1.5 seconds')",
        "strftime('%Y-%m-%dT%H:%M:%f', 'now', 'start of day', '+90 seconds')",
    ] {
        let mut last = None;
        for _ in 0..2 {
            let (want, got, sql) = one(&conn, &mut c, e);
            if vec![want.clone()] == got {
                last = None;
                break;
            }
            last = Some(format!("{e} -> {sql}: SQLite {want:?}, Postgres {got:?}"));
        }
        assert!(last.is_none(), "{}", last.unwrap_or_default());
    }
    // Clock readings: the same layout, a few seconds apart at most.
    for e in [
        "datetime('now')",
        "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        "time('now')",
        "CURRENT_TIMESTAMP",
    ] {
        let (want, got, sql) = one(&conn, &mut c, e);
        let (V::Text(a), [V::Text(b)]) = (&want, got.as_slice()) else {
            panic!("{e} -> {sql}: SQLite {want:?}, Postgres {got:?}");
        };
        let layout = |s: &str| {
            s.chars()
                .map(|ch| if ch.is_ascii_digit() { '9' } else { ch })
                .collect::<String>()
        };
        assert_eq!(layout(a), layout(b), "{e} -> {sql}");
    }
    let (want, got, sql) = one(&conn, &mut c, "julianday('now')");
    let (V::Real(a), [V::Real(b)]) = (&want, got.as_slice()) else {
        panic!("julianday -> {sql}: SQLite {want:?}, Postgres {got:?}");
    };
    let seconds = (f64::from_bits(*a) - f64::from_bits(*b)).abs() * 86400.0;
    assert!(seconds < 30.0, "julianday('now') {seconds} s apart: {sql}");
}

/// Date functions over date columns: SQLite reads the column's text, Postgres the value the
/// move made of it; the results are equal, down to SQLite's millisecond rounding (a fraction
/// over .999 stays in its second; `.0005` is rounded through a double).
#[test]
fn date_functions_of_date_columns_give_sqlites_results() {
    let src = SqliteFile::new(
        "CREATE TABLE d (id INTEGER PRIMARY KEY, at DATETIME, tz DATETIME, day DATE);
         INSERT INTO d VALUES
           (1, '2024-03-01 10:00:00', '2024-03-01T10:00:00Z', '2024-02-29'),
           (2, '2024-03-01T10:00:00', '2024-03-01 12:00:00+02:00', '2000-01-01'),
           (3, '2024-03-01 10:00:00.123', '2024-03-01T23:30:00-05:00', '1999-12-31'),
           (4, '2024-03-01 10:00:00.9996', '2024-12-31T23:59:59.9999Z', NULL),
           (5, '2024-03-01 10:00:10.0005', '2024-01-01T00:00:00.0005+00:00', '2024-03-31'),
           (6, '2024-02-29', '2024-02-29T00:00:00Z', '2024-01-31'),
           (7, '2023-12-31 23:59:59.999', NULL, '2023-12-31'),
           (8, '2024-03-01 10:00:00.123456', '2024-03-01T10:00:00.5+01:00', '2024-06-15'),
           (9, NULL, '1970-01-01T00:00:00Z', '1970-01-01'),
           (10, '1999-12-31 23:59:59.9995', '2024-03-10T02:30:00-08:00', '2024-02-28');",
    );
    let db = TestDb::new();
    let out = snapshot(&src.path, &db, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut c = db.client();
    let ty = |c: &mut postgres::Client, col: &str| -> PgType {
        let t: String = scalar(
            c,
            &format!(
                "SELECT data_type::text FROM information_schema.columns WHERE table_name = 'd' AND column_name = '{col}'"
            ),
        );
        match t.as_str() {
            "timestamp without time zone" => PgType::Timestamp { precision: None },
            "timestamp with time zone" => PgType::Timestamptz { precision: None },
            "date" => PgType::Date,
            other => panic!("{col} is {other}"),
        }
    };
    let scope = Scope::table(
        "d",
        vec![
            Column::new("at", "DATETIME", ty(&mut c, "at"), Collation::Binary),
            Column::new("tz", "DATETIME", ty(&mut c, "tz"), Collation::Binary),
            Column::new("day", "DATE", ty(&mut c, "day"), Collation::Binary),
        ],
    );
    // The session's zone must not matter.
    c.batch_execute("SET TimeZone = 'Asia/Kolkata'").unwrap();
    let conn = src.conn();
    let mut failures = Vec::new();
    for e in [
        "date(at)",
        "datetime(at)",
        "time(at)",
        "strftime('%Y-%m-%d %H:%M:%f', at)",
        "strftime('%Y-%m', at)",
        "julianday(at)",
        "date(at, 'start of month')",
        "datetime(at, '+1 day', '-30 minutes')",
        "date(at) = '2024-03-01'",
        "datetime(tz)",
        "strftime('%H:%M:%f', tz)",
        "julianday(tz)",
        "date(tz, 'start of year')",
        "date(day)",
        "datetime(day, '+12 hours')",
        "strftime('%Y/%j', day)",
    ] {
        let t = expr::translate(&expr::parse(e).unwrap(), &scope)
            .unwrap_or_else(|why| panic!("{e}: {why}"));
        let mut stmt = conn
            .prepare(&format!("SELECT {e} FROM d ORDER BY id"))
            .unwrap();
        let want: Vec<V> = stmt
            .query_map([], |r| Ok(sqlite_value(r.get_ref(0)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        match pg_side(&mut c, &t.sql, t.kind, "FROM d ORDER BY id") {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "{e} -> {}:\n  SQLite   {want:?}\n  Postgres {got:?}",
                t.sql
            )),
            Err(why) => failures.push(format!("{e}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A text column has no such guarantee: SQLite's parser is not Postgres'.
    let text_scope = Scope::table(
        "d",
        vec![Column::new("s", "TEXT", PgType::Text, Collation::Binary)],
    );
    let why = expr::translate(&expr::parse("date(s)").unwrap(), &text_scope).unwrap_err();
    assert!(why.contains("own date parser"), "{why}");
}
