//! Whole-table questions `check` asks of the source: NULL keys, duplicate keys, orphans.

use rusqlite::Connection;

use super::quote_ident;
use super::reader::to_sql_value;
use crate::error::{Error, Result};
use crate::model::OwnedValue;

fn ctx(table: &str, what: &str) -> impl Fn(rusqlite::Error) -> Error {
    let msg = format!("cannot {what} of table {table}");
    move |e| Error::from_sqlite(msg.clone(), e)
}

/// Rowids of up to `limit` rows with a NULL in any of `columns` (rowid tables only).
pub fn null_key_rowids(
    conn: &Connection,
    table: &str,
    columns: &[&str],
    limit: usize,
) -> Result<Vec<i64>> {
    let err = ctx(table, "look for NULL keys");
    let cond: Vec<String> = columns
        .iter()
        .map(|c| format!("{} IS NULL", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT rowid FROM {} WHERE {} LIMIT {limit}",
        quote_ident(table),
        cond.join(" OR ")
    );
    let mut stmt = conn.prepare(&sql).map_err(&err)?;
    let ids = stmt
        .query_map([], |r| r.get(0))
        .and_then(|r| r.collect())
        .map_err(&err)?;
    Ok(ids)
}

/// Up to `limit` value groups that more than one row shares on `columns`, with their row
/// counts. Columns flagged `as_text` are compared by their text form, as a text target would.
pub fn duplicate_groups(
    conn: &Connection,
    table: &str,
    columns: &[(&str, bool)],
    limit: usize,
) -> Result<Vec<(Vec<OwnedValue>, i64)>> {
    let err = ctx(table, "look for duplicate keys");
    let exprs: Vec<String> = columns
        .iter()
        .map(|(c, as_text)| {
            if *as_text {
                format!("CAST({} AS TEXT)", quote_ident(c))
            } else {
                quote_ident(c)
            }
        })
        .collect();
    let not_null: Vec<String> = columns
        .iter()
        .map(|(c, _)| format!("{} IS NOT NULL", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {e}, count(*) FROM {t} WHERE {nn} GROUP BY {e} HAVING count(*) > 1 LIMIT {limit}",
        e = exprs.join(", "),
        t = quote_ident(table),
        nn = not_null.join(" AND ")
    );
    let mut stmt = conn.prepare(&sql).map_err(&err)?;
    let n = columns.len();
    let groups = stmt
        .query_map([], |r| {
            let vals = (0..n)
                .map(|i| r.get_ref(i).map(|v| to_sql_value(v).to_owned_value()))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((vals, r.get::<_, i64>(n)?))
        })
        .and_then(|r| r.collect())
        .map_err(&err)?;
    Ok(groups)
}

/// Like [`duplicate_groups`], for a target that compares values SQL cannot group by here
/// (jsonb: key order and spacing aside): each row's key is made comparable by `canon`
/// (`None`: a value that does not convert, reported elsewhere), in one pass over the table.
pub fn duplicate_groups_by(
    conn: &Connection,
    table: &str,
    columns: &[&str],
    canon: &dyn Fn(usize, crate::model::SqlValue<'_>) -> Option<Vec<u8>>,
    limit: usize,
) -> Result<Vec<(Vec<OwnedValue>, i64)>> {
    let err = ctx(table, "look for duplicate keys");
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let not_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        cols.join(", "),
        quote_ident(table),
        not_null.join(" AND ")
    );
    let mut stmt = conn.prepare(&sql).map_err(&err)?;
    let mut rows = stmt.query([]).map_err(&err)?;
    // canonical key -> (the first row's values, rows)
    let mut seen: std::collections::HashMap<Vec<Vec<u8>>, (Vec<OwnedValue>, i64)> =
        std::collections::HashMap::new();
    'rows: while let Some(r) = rows.next().map_err(&err)? {
        let mut key = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let v = to_sql_value(r.get_ref(i).map_err(&err)?);
            let Some(k) = canon(i, v) else {
                continue 'rows;
            };
            key.push(k);
        }
        match seen.get_mut(&key) {
            Some(group) => group.1 += 1,
            None => {
                let values = (0..columns.len())
                    .map(|i| r.get_ref(i).map(|v| to_sql_value(v).to_owned_value()))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(&err)?;
                seen.insert(key, (values, 1));
            }
        }
    }
    let mut groups: Vec<(Vec<OwnedValue>, i64)> =
        seen.into_values().filter(|(_, n)| *n > 1).collect();
    groups.truncate(limit);
    Ok(groups)
}

/// Rows whose foreign key finds no parent row: (rowid, SQLite's foreign key id), as
/// `PRAGMA foreign_key_check` reports them (rowid is `None` for WITHOUT ROWID tables).
pub fn foreign_key_violations(conn: &Connection, table: &str) -> Result<Vec<(Option<i64>, i64)>> {
    let err = ctx(table, "check foreign keys");
    let sql = format!("PRAGMA foreign_key_check({})", quote_ident(table));
    let mut stmt = conn.prepare(&sql).map_err(&err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(1)?, r.get(3)?)))
        .and_then(|r| r.collect())
        .map_err(&err)?;
    Ok(rows)
}

/// The values of `columns` in the row with this rowid.
pub fn row_values(
    conn: &Connection,
    table: &str,
    rowid: i64,
    columns: &[String],
) -> Result<Vec<OwnedValue>> {
    let err = ctx(table, "read a row");
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE rowid = ?1",
        cols.join(", "),
        quote_ident(table)
    );
    conn.query_row(&sql, [rowid], |r| {
        (0..cols.len())
            .map(|i| r.get_ref(i).map(|v| to_sql_value(v).to_owned_value()))
            .collect()
    })
    .map_err(err)
}
