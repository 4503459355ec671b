//! Reads a range of the changelog and the current rows for its keys in one read transaction,
//! so what is applied is a state SQLite really had.

use std::collections::{BTreeMap, HashSet};

use rusqlite::Connection;

use super::capture::{self, CHANGES};
use super::quote_ident;
use super::reader::to_sql_value;
use crate::error::{Error, Result};
use crate::model::{OwnedValue, SqlValue};

/// How to read one captured table's changes.
#[derive(Debug, Clone)]
pub struct RowReader {
    table: String,
    key_len: usize,
    sql: String,
    images: bool,
}

impl RowReader {
    /// Reads `columns` of `table` by its `keys`.
    pub fn new(table: &str, keys: &[String], columns: &[&str]) -> RowReader {
        // The key columns come last, to be compared byte for byte: a NOCASE or RTRIM key finds
        // the row spelled otherwise too ('rust' finds 'Rust'), which is another key in Postgres.
        let cols: Vec<String> = columns
            .iter()
            .map(|c| quote_ident(c))
            .chain(keys.iter().map(|k| quote_ident(k)))
            .collect();
        let cond: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", quote_ident(k), i + 1))
            .collect();
        RowReader {
            table: table.to_string(),
            key_len: keys.len(),
            sql: format!(
                "SELECT {} FROM {} WHERE {}",
                cols.join(", "),
                quote_ident(table),
                cond.join(" AND ")
            ),
            images: false,
        }
    }

    /// Reads the row images of a table followed by row images (see `capture`): `positions`
    /// are the indexes, among the table's declared columns, of the columns copied.
    pub fn images(table: &str, id: i64, positions: &[usize]) -> RowReader {
        let cols: Vec<String> = positions.iter().map(|i| format!("c{}", i + 1)).collect();
        RowReader {
            table: table.to_string(),
            key_len: 0,
            sql: format!(
                "SELECT {} FROM {} WHERE seq = ?1",
                cols.join(", "),
                quote_ident(&super::capture::image_table(id))
            ),
            images: true,
        }
    }
}

/// One row that appeared in (+1) or left (-1) a table followed by row images.
#[derive(Debug)]
pub struct RowImage {
    /// The changelog row that recorded it.
    pub seq: i64,
    /// The row's rowid when it changed (for the snapshot handoff only).
    pub rowid: i64,
    /// +1 or -1.
    pub sign: i32,
    /// The row's values (columns in reader order).
    pub values: Vec<OwnedValue>,
}

/// What one changelog range says about one table.
#[derive(Debug, Default)]
pub struct TableChanges {
    /// Keys that still exist, with their current values (columns in reader order).
    pub present: Vec<(Vec<OwnedValue>, Vec<OwnedValue>)>,
    /// Keys that no longer exist.
    pub absent: Vec<Vec<OwnedValue>>,
    /// Row images, for a table followed by row images.
    pub images: Vec<RowImage>,
}

/// A changelog range and the state it leads to.
#[derive(Debug, Default)]
pub struct Batch {
    /// Highest sequence number in the range (0 when empty).
    pub last_seq: i64,
    /// Changelog rows in the range.
    pub changes: usize,
    /// Latest commit time in the range, as a julian day (0 when empty).
    pub max_at: f64,
    /// Per captured table id.
    pub tables: BTreeMap<i64, TableChanges>,
    /// The range reached the changelog's end as this read saw it: every key it names was read
    /// in its state as of one committed moment, with no later change left unread.
    pub at_end: bool,
    /// The range is one re-synchronization marker (`capture::resync_marker`) for this table
    /// id: changes to it may have bypassed the changelog, so all its rows must be compared.
    pub resync: Option<i64>,
}

fn ctx(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::from_sqlite(format!("cannot {what}"), e)
}

/// Reads up to `max_changes` changelog rows after `after`, and the current row of each key they
/// name, in one read transaction. The batch also ends once the rows read reach `max_bytes`: it
/// then ends at the last changelog row whose key was read (a key changed again later was read in
/// its newest state, and is read again by the range that holds that change). Tables without a
/// reader (not replicated) are skipped.
pub fn read_batch(
    conn: &Connection,
    after: i64,
    max_changes: usize,
    max_bytes: usize,
    readers: &BTreeMap<i64, RowReader>,
) -> Result<Batch> {
    super::in_read_transaction(conn, "the changelog", || {
        read_in_tx(conn, after, max_changes, max_bytes, readers)
    })
}

fn value_bytes(v: &OwnedValue) -> usize {
    match v {
        OwnedValue::Text(b) | OwnedValue::Blob(b) => b.len() + 8,
        _ => 8,
    }
}

fn read_in_tx(
    conn: &Connection,
    after: i64,
    max_changes: usize,
    max_bytes: usize,
    readers: &BTreeMap<i64, RowReader>,
) -> Result<Batch> {
    let mut batch = Batch::default();
    // Keys already read in this range (a key changed several times is read once).
    let mut seen: HashSet<(i64, Vec<u8>)> = HashSet::new();
    let mut bytes = 0usize;
    let mut cut_by_bytes = false;
    // Keys sit in k1..kN after seq, tbl and at: as many as the widest key read (images use
    // k1 = rowid and k2 = sign).
    let slots = readers
        .values()
        .map(|r| r.key_len)
        .max()
        .unwrap_or(0)
        .max(2);
    let mut log = conn
        .prepare_cached(&format!(
            "SELECT seq, tbl, at, {} FROM {CHANGES} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            capture::key_slot_list(slots)
        ))
        .map_err(ctx("read the changelog"))?;
    let mut rows = log
        .query(rusqlite::params![after, max_changes as i64])
        .map_err(ctx("read the changelog"))?;
    while let Some(r) = rows.next().map_err(ctx("read the changelog"))? {
        let seq: i64 = r.get(0).map_err(ctx("read the changelog"))?;
        let tbl: i64 = r.get(1).map_err(ctx("read the changelog"))?;
        let at: f64 = r.get(2).map_err(ctx("read the changelog"))?;
        if tbl < 0 && readers.contains_key(&-tbl) {
            // A marker is a range of its own: the rows before it are applied as read, the
            // table is re-synchronized, and the rows after it are read after that.
            if batch.changes == 0 {
                batch.last_seq = seq;
                batch.changes = 1;
                batch.max_at = at;
                batch.resync = Some(-tbl);
            }
            batch.at_end = false;
            return Ok(batch);
        }
        batch.last_seq = seq;
        batch.changes += 1;
        batch.max_at = batch.max_at.max(at);
        let Some(reader) = readers.get(&tbl) else {
            continue;
        };
        if reader.images {
            let rowid: Option<i64> = r.get(3).map_err(ctx("read the changelog"))?;
            let sign: Option<i32> = r.get(4).map_err(ctx("read the changelog"))?;
            let values = read_row_by_key(conn, reader, &[OwnedValue::Integer(seq)])?
                .ok_or_else(|| {
                    Error::new(
                        crate::error::ErrorKind::SourceUnreadable,
                        format!(
                            "the row image of change {seq} (table {}) is missing from the SQLite file; was it edited by hand? Start over with a fresh `sqlite2pg run`",
                            reader.table
                        ),
                    )
                })?;
            bytes += values.iter().map(value_bytes).sum::<usize>();
            batch.tables.entry(tbl).or_default().images.push(RowImage {
                seq,
                rowid: rowid.unwrap_or(0),
                sign: sign.unwrap_or(0),
                values,
            });
            if bytes >= max_bytes {
                cut_by_bytes = true;
                break;
            }
            continue;
        }
        let mut key = Vec::with_capacity(reader.key_len);
        for i in 0..reader.key_len {
            key.push(
                to_sql_value(r.get_ref(3 + i).map_err(ctx("read the changelog"))?).to_owned_value(),
            );
        }
        if key.iter().any(|v| matches!(v, OwnedValue::Null)) {
            return Err(Error::new(
                crate::error::ErrorKind::Schema,
                format!(
                    "table {} got a row whose primary key is NULL (SQLite allows that for a non-INTEGER key), so it cannot be followed by key. Give that row a key or delete it in SQLite, then run again; or --exclude the table, drop it in Postgres with its sqlite2pg.table_state row, and run again: a table whose key holds NULLs when `run` starts is followed by row images",
                    reader.table
                ),
            ));
        }
        let id = rmp_serde::to_vec(&key).map_err(|e| {
            Error::with_source(
                crate::error::ErrorKind::SourceUnreadable,
                "cannot encode a changelog key",
                e,
            )
        })?;
        if !seen.insert((tbl, id)) {
            continue;
        }
        let out = batch.tables.entry(tbl).or_default();
        match read_row_by_key(conn, reader, &key)? {
            Some(values) => {
                bytes += values.iter().map(value_bytes).sum::<usize>();
                out.present.push((key, values));
            }
            None => out.absent.push(key),
        }
        if bytes >= max_bytes {
            cut_by_bytes = true;
            break;
        }
    }
    batch.at_end = !cut_by_bytes && batch.changes < max_changes;
    Ok(batch)
}
/// The current row of one key (columns in reader order), or `None` when it does not exist.
pub fn read_row_by_key(
    conn: &Connection,
    reader: &RowReader,
    key: &[OwnedValue],
) -> Result<Option<Vec<OwnedValue>>> {
    let err = |e| Error::from_sqlite(format!("cannot read a row of table {}", reader.table), e);
    let mut stmt = conn.prepare_cached(&reader.sql).map_err(err)?;
    let params: Vec<&dyn rusqlite::ToSql> = key.iter().map(|k| k as &dyn rusqlite::ToSql).collect();
    let mut rows = stmt.query(params.as_slice()).map_err(err)?;
    let Some(row) = rows.next().map_err(err)? else {
        return Ok(None);
    };
    let n = row.as_ref().column_count();
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let v: SqlValue<'_> = to_sql_value(row.get_ref(i).map_err(err)?);
        values.push(v.to_owned_value());
    }
    if !reader.images {
        let found = values.split_off(n - reader.key_len);
        if found != key {
            return Ok(None);
        }
    }
    Ok(Some(values))
}

/// Ids of tables whose re-synchronization marker (`capture::resync_marker`) is after `after`.
pub fn pending_resyncs(conn: &Connection, after: i64) -> Result<Vec<i64>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT DISTINCT -tbl FROM {CHANGES} WHERE seq > ?1 AND tbl < 0 ORDER BY 1"
        ))
        .map_err(ctx("read the changelog"))?;
    stmt.query_map([after], |r| r.get(0))
        .and_then(|r| r.collect())
        .map_err(ctx("read the changelog"))
}

/// Whether the changelog holds a change to this key after `after` (not applied yet).
pub fn key_pending(conn: &Connection, tbl: i64, key: &[OwnedValue], after: i64) -> Result<bool> {
    let cond: Vec<String> = (0..key.len())
        .map(|i| format!("k{} IS ?{}", i + 1, i + 3))
        .collect();
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {CHANGES} WHERE seq > ?1 AND tbl = ?2 AND {})",
        cond.join(" AND ")
    );
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&after, &tbl];
    params.extend(key.iter().map(|k| k as &dyn rusqlite::ToSql));
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row(params.as_slice(), |r| r.get(0)))
        .map_err(ctx("look for a pending change"))
}

/// Whether the changelog holds a change to table `tbl` after `after` (not applied yet).
pub fn table_pending(conn: &Connection, tbl: i64, after: i64) -> Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM {CHANGES} WHERE seq > ?1 AND tbl = ?2)"
    ))
    .and_then(|mut s| s.query_row([after, tbl], |r| r.get(0)))
    .map_err(ctx("look for a pending change"))
}

/// The newest sequence number in the changelog (0 when it is empty), and the count of rows
/// after `after` with the commit time of the oldest of them.
pub fn pending(conn: &Connection, after: i64) -> Result<(i64, i64, Option<f64>)> {
    conn.prepare_cached(&format!(
        "SELECT (SELECT coalesce(max(seq), 0) FROM {CHANGES}), count(*), min(at) FROM {CHANGES} WHERE seq > ?1"
    ))
    .and_then(|mut s| s.query_row([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
    .map_err(ctx("read the changelog position"))
}
