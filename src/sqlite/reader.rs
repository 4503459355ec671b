//! Chunked reads in key order, each chunk in its own short read transaction.

use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use super::quote_ident;
use crate::error::{Error, Result};
use crate::model::{OwnedValue, ScanKey, SourceTable, SqlValue};

/// The SELECT statements that page through one table in key order.
#[derive(Debug, Clone)]
pub struct ScanQuery {
    table: String,
    first: String,
    next: String,
    key_len: usize,
}

impl ScanQuery {
    /// Builds the queries reading `columns` of `table`, keyed by its scan key.
    pub fn new(table: &SourceTable, columns: &[&str]) -> ScanQuery {
        let keys: Vec<String> = match table.scan_key() {
            ScanKey::Rowid => vec![table.rowid_name().to_string()],
            ScanKey::Columns(idx) => idx
                .iter()
                .map(|i| quote_ident(&table.columns[*i].name))
                .collect(),
        };
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let select = format!(
            "SELECT {}{}{} FROM {}",
            keys.join(", "),
            if cols.is_empty() { "" } else { ", " },
            cols.join(", "),
            quote_ident(&table.name)
        );
        let order = keys.join(", ");
        let n = keys.len();
        let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let after = if n == 1 {
            format!("{} > ?1", keys[0])
        } else {
            format!("({order}) > ({})", params.join(", "))
        };
        ScanQuery {
            table: table.name.clone(),
            first: format!("{select} ORDER BY {order} LIMIT ?1"),
            next: format!("{select} WHERE {after} ORDER BY {order} LIMIT ?{}", n + 1),
            key_len: n,
        }
    }

    /// Number of key values at the front of each row.
    pub fn key_len(&self) -> usize {
        self.key_len
    }
}

/// What one chunk read.
#[derive(Debug, Clone)]
pub struct ChunkRead {
    /// Rows handed to the callback.
    pub rows: u64,
    /// The key of the last row read, to resume after.
    pub last_key: Option<Vec<OwnedValue>>,
    /// No rows remain after this chunk.
    pub exhausted: bool,
    /// With `read_chunk_marked(.., true, ..)`: the changelog's newest position and the schema version, as
    /// the chunk's read transaction saw them.
    pub mark: Option<(i64, i64)>,
}

/// Converts rusqlite's borrowed value to ours.
pub fn to_sql_value(v: ValueRef<'_>) -> SqlValue<'_> {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(t),
        ValueRef::Blob(b) => SqlValue::Blob(b),
    }
}

/// Reads up to `max_rows` rows after `after` (or from the start) in one read transaction, ending
/// early once `max_time` has passed so the transaction stays short. `on_row` receives the key
/// values followed by the column values.
pub fn read_chunk(
    conn: &Connection,
    q: &ScanQuery,
    after: Option<&[OwnedValue]>,
    max_rows: usize,
    max_time: Duration,
    on_row: impl FnMut(&[SqlValue<'_>]) -> Result<()>,
) -> Result<ChunkRead> {
    read_chunk_marked(conn, q, after, max_rows, max_time, false, on_row)
}

/// `read_chunk`; with `marked`, also reads the changelog's newest position and the schema
/// version in the same read transaction: the snapshot's handoff to the stream (a change after
/// that position is not in the chunk).
pub fn read_chunk_marked(
    conn: &Connection,
    q: &ScanQuery,
    after: Option<&[OwnedValue]>,
    max_rows: usize,
    max_time: Duration,
    marked: bool,
    mut on_row: impl FnMut(&[SqlValue<'_>]) -> Result<()>,
) -> Result<ChunkRead> {
    let ctx = |e: rusqlite::Error| {
        Error::from_sqlite(format!("cannot read rows of table {}", q.table), e)
    };
    let what = format!("table {}", q.table);
    super::in_read_transaction(conn, &what, || {
        let sql = if after.is_some() { &q.next } else { &q.first };
        let mut stmt = conn.prepare_cached(sql).map_err(ctx)?;
        let limit = max_rows as i64;
        let mut params: Vec<Box<dyn ToSql + '_>> = Vec::new();
        if let Some(key) = after {
            for v in key {
                params.push(Box::new(v));
            }
        }
        params.push(Box::new(limit));
        let param_refs: Vec<&dyn ToSql> = params.iter().map(|p| p.as_ref()).collect();
        let mark = if marked {
            Some(
                conn.prepare_cached(&format!(
                    "SELECT (SELECT coalesce(max(seq), 0) FROM {}), (SELECT schema_version FROM pragma_schema_version)",
                    super::capture::CHANGES
                ))
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(ctx)?,
            )
        } else {
            None
        };
        let mut rows = stmt.query(param_refs.as_slice()).map_err(ctx)?;
        let started = Instant::now();
        let mut n: u64 = 0;
        let mut last_key = None;
        let mut cut_short = false;
        while let Some(row) = rows.next().map_err(ctx)? {
            let width = row.as_ref().column_count();
            let mut values: Vec<SqlValue<'_>> = Vec::with_capacity(width);
            for i in 0..width {
                values.push(to_sql_value(row.get_ref(i).map_err(ctx)?));
            }
            on_row(&values)?;
            n += 1;
            if n.is_multiple_of(64) && started.elapsed() >= max_time {
                last_key = Some(
                    values[..q.key_len]
                        .iter()
                        .map(SqlValue::to_owned_value)
                        .collect(),
                );
                cut_short = true;
                break;
            }
            last_key = Some(
                values[..q.key_len]
                    .iter()
                    .map(SqlValue::to_owned_value)
                    .collect(),
            );
        }
        Ok(ChunkRead {
            rows: n,
            last_key,
            exhausted: !cut_short && (n as usize) < max_rows,
            mark,
        })
    })
}
