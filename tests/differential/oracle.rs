//! The independent comparison: every app table of the SQLite file against the Postgres table
//! of the same name, as multisets of rows (so tables without keys and duplicated rows compare
//! too), every value brought to one canonical text by rules written here from the two
//! databases' documentation, not from sqlite2pg's code.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::Value;

use crate::common::norm_ts;

fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn float(f: f64) -> String {
    // -0.0 and 0.0 are one number to both databases' `=`.
    let f = if f == 0.0 { 0.0 } else { f };
    format!("f:{:016x}", f.to_bits())
}

fn hex(b: &[u8]) -> String {
    format!(
        "\\x{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn json(s: &str) -> String {
    serde_json::from_str::<serde_json::Value>(s)
        .map(|v| format!("j:{v}"))
        .unwrap_or_else(|_| format!("bad json:{s}"))
}

/// A date and time written with a UTC offset (`-05:00`) as SQLite's own date functions read
/// it: the instant in UTC, which may fall on another day. Any other text as it is.
fn utc(t: &str) -> String {
    thread_local! {
        static MEMORY: rusqlite::Connection =
            rusqlite::Connection::open_in_memory().expect("an in-memory SQLite");
    }
    MEMORY.with(|c| {
        c.query_row(
            "SELECT CASE WHEN ?1 GLOB '*[0-9][+-][0-9][0-9]:[0-9][0-9]' THEN strftime('%Y-%m-%d %H:%M:%f', ?1) END",
            [t],
            |r| r.get::<_, Option<String>>(0),
        )
        .expect("strftime")
        .unwrap_or_else(|| t.to_string())
    })
}

/// What Postgres should hold for SQLite's value `v` in a column of `pg_type`; `as_text` is
/// SQLite's own `CAST(v AS TEXT)`.
fn from_sqlite(v: &Value, as_text: Option<&str>, pg_type: &str) -> String {
    let text = || as_text.unwrap_or("").to_string();
    match (v, pg_type) {
        (Value::Null, _) => "NULL".into(),
        (Value::Integer(i), "boolean") => (if *i != 0 { "true" } else { "false" }).into(),
        (Value::Integer(i), "real" | "double precision" | "numeric") => float(*i as f64),
        (Value::Real(f), "real" | "double precision" | "numeric") => float(*f),
        (Value::Text(t), "real" | "double precision" | "numeric") => t
            .trim()
            .parse::<f64>()
            .map(float)
            .unwrap_or_else(|_| format!("text:{t}")),
        (Value::Integer(i), _) if pg_type.contains("int") => i.to_string(),
        (Value::Blob(b), "bytea") => hex(b),
        (Value::Text(t), "bytea") => hex(t.as_bytes()),
        (Value::Text(t), "json" | "jsonb") => json(t),
        (Value::Text(t), ty) if ty.starts_with("timestamp") => norm_ts(&utc(t)),
        (Value::Text(t), ty) if ty.starts_with("time") || ty == "date" => norm_ts(t),
        (Value::Blob(b), _) => format!("blob:{}", hex(b)),
        _ => text(),
    }
}

/// The same canonical text from Postgres' `::text` rendering.
fn from_pg(v: Option<&str>, pg_type: &str) -> String {
    let Some(t) = v else {
        return "NULL".into();
    };
    match pg_type {
        "real" | "double precision" | "numeric" => t
            .parse::<f64>()
            .map(float)
            .unwrap_or_else(|_| format!("text:{t}")),
        "json" | "jsonb" => json(t),
        ty if ty.starts_with("timestamp") || ty.starts_with("time") || ty == "date" => norm_ts(t),
        _ => t.to_string(),
    }
}

fn sqlite_tables(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sqlite2pg\\_%' ESCAPE '\\'
         ORDER BY name",
    )?;
    st.query_map([], |r| r.get(0))?.collect()
}

fn sqlite_columns(conn: &rusqlite::Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    // table_xinfo: generated columns too (hidden 2 and 3).
    let mut st = conn.prepare(&format!("PRAGMA table_xinfo({})", qi(table)))?;
    st.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(6)?)))?
        .filter_map(|c| match c {
            Ok((name, hidden)) if hidden != 1 => Some(Ok(name)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// The column of a fleet's shared tables that names each row's tenant (the default).
pub const TENANT_COLUMN: &str = "tenant_id";

/// Every difference between the two sides, each in a line; empty when they are equal.
/// `schema` is where the app's tables are on Postgres; `tenant`, in a fleet's shared tables,
/// the value of `TENANT_COLUMN` in this app's rows (the others' rows are not its own).
pub fn differences(sqlite: &Path, pg_url: &str, schema: &str, tenant: Option<&str>) -> Vec<String> {
    // Read-write, though it only reads: in rollback-journal mode a read-only connection now
    // and then takes the daemon's starting transaction for a hot journal and refuses to read
    // (SQLITE_READONLY_ROLLBACK), which would be the oracle's failure, not sqlite2pg's.
    let conn = match rusqlite::Connection::open(sqlite) {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot open the SQLite file: {e}")],
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
    let mut pg = match postgres::Client::connect(pg_url, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot connect to Postgres: {e}")],
    };
    let _ = pg.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3");
    // One SQLite read transaction for all tables: one source state.
    if let Err(e) = conn.execute_batch("BEGIN") {
        return vec![format!("cannot begin a SQLite read: {e}")];
    }
    let tables = match sqlite_tables(&conn) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot list SQLite tables: {e}")],
    };
    let mut out = Vec::new();
    for table in tables {
        if let Err(e) = compare_table(&conn, &mut pg, schema, tenant, &table, &mut out) {
            out.push(format!("{table}: cannot compare: {e}"));
        }
    }
    let _ = conn.execute_batch("COMMIT");
    out
}

fn compare_table(
    conn: &rusqlite::Connection,
    pg: &mut postgres::Client,
    schema: &str,
    tenant: Option<&str>,
    table: &str,
    out: &mut Vec<String>,
) -> Result<(), String> {
    let cols = sqlite_columns(conn, table).map_err(|e| e.to_string())?;
    let pg_types: BTreeMap<String, String> = pg
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = $2",
            &[&schema, &table],
        )
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if pg_types.is_empty() {
        out.push(format!("{table}: no such table on Postgres"));
        return Ok(());
    }
    let mut types = Vec::new();
    for c in &cols {
        match pg_types.get(c) {
            Some(t) => types.push(t.clone()),
            None => {
                out.push(format!("{table}.{c}: no such column on Postgres"));
                return Ok(());
            }
        }
    }
    let select: Vec<String> = cols
        .iter()
        .map(|c| format!("{q}, CAST({q} AS TEXT)", q = qi(c)))
        .collect();
    let mut st = conn
        .prepare(&format!("SELECT {} FROM {}", select.join(", "), qi(table)))
        .map_err(|e| e.to_string())?;
    let mut left: Vec<Vec<String>> = st
        .query_map([], |r| {
            (0..cols.len())
                .map(|i| {
                    let v: Value = r.get(2 * i)?;
                    let t: Option<String> = match &v {
                        Value::Blob(_) => None,
                        _ => r.get(2 * i + 1)?,
                    };
                    Ok(from_sqlite(&v, t.as_deref(), &types[i]))
                })
                .collect()
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    let pg_select: Vec<String> = cols.iter().map(|c| format!("{}::text", qi(c))).collect();
    let from = format!(
        "SELECT {} FROM {}.{}",
        pg_select.join(", "),
        qi(schema),
        qi(table)
    );
    let rows = match tenant {
        None => pg.query(&from, &[]),
        Some(t) => pg.query(&format!("{from} WHERE {} = $1", qi(TENANT_COLUMN)), &[&t]),
    }
    .map_err(|e| e.to_string())?;
    let mut right: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..cols.len())
                .map(|i| from_pg(r.get::<_, Option<&str>>(i), &types[i]))
                .collect()
        })
        .collect();
    left.sort();
    right.sort();
    if left == right {
        return Ok(());
    }
    let only = |a: &[Vec<String>], b: &[Vec<String>]| -> Vec<Vec<String>> {
        // Multiset difference of two sorted lists.
        let (mut i, mut j, mut d) = (0, 0, Vec::new());
        while i < a.len() {
            if j < b.len() && a[i] == b[j] {
                i += 1;
                j += 1;
            } else if j < b.len() && b[j] < a[i] {
                j += 1;
            } else {
                d.push(a[i].clone());
                i += 1;
            }
        }
        d
    };
    let (l, r) = (only(&left, &right), only(&right, &left));
    out.push(format!(
        "{table} ({}): {} rows in SQLite, {} in Postgres; only in SQLite: {:?}; only in Postgres: {:?}",
        cols.join(", "),
        left.len(),
        right.len(),
        &l[..l.len().min(3)],
        &r[..r.len().min(3)]
    ));
    Ok(())
}

#[test]
fn canonical_forms_meet_for_equal_values_and_not_for_others() {
    assert_eq!(
        from_sqlite(&Value::Real(1e300), Some("1.0e+300"), "double precision"),
        from_pg(Some("1e+300"), "double precision")
    );
    assert_eq!(
        from_sqlite(&Value::Integer(1), Some("1"), "boolean"),
        from_pg(Some("true"), "boolean")
    );
    assert_eq!(
        from_sqlite(&Value::Blob(vec![0xde, 0xad]), None, "bytea"),
        from_pg(Some("\\xdead"), "bytea")
    );
    assert_eq!(
        from_sqlite(
            &Value::Text("2024-01-31 12:34:56.500".into()),
            None,
            "timestamp without time zone"
        ),
        from_pg(Some("2024-01-31 12:34:56.5"), "timestamp without time zone")
    );
    assert_eq!(
        from_sqlite(&Value::Text("{\"b\":1,\"a\":2}".into()), None, "jsonb"),
        from_pg(Some("{\"a\": 2, \"b\": 1}"), "jsonb")
    );
    assert_ne!(
        from_sqlite(&Value::Text("Rust".into()), Some("Rust"), "text"),
        from_pg(Some("rust"), "text")
    );
    assert_ne!(
        from_sqlite(&Value::Text("a ".into()), Some("a "), "character varying"),
        from_pg(Some("a"), "character varying")
    );
    assert_ne!(
        from_sqlite(&Value::Real(0.1), Some("0.1"), "double precision"),
        from_pg(Some("0.10000000000000002"), "double precision")
    );
    assert_ne!(
        from_sqlite(&Value::Null, None, "text"),
        from_pg(Some(""), "text")
    );
}
