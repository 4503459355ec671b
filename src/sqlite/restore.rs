//! The reverse stream's writes into the SQLite file: the only writes sqlite2pg makes to the
//! app's rows. They pass the cutover fence the only way SQLite allows: each write transaction
//! drops the triggers of the tables it touches (the fence, the capture, the app's own) and
//! creates them again, from their exact text, before it commits. SQLite's DDL is
//! transactional, so no other connection ever sees a table unfenced; and the app's triggers
//! do not fire twice for what Postgres already did.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params_from_iter};

use super::quote_ident;
use crate::error::{Error, Result};
use crate::model::{OwnedValue, SourceTable};

/// Where the reverse stream stands, kept in the SQLite file.
const POSITION: &str = "_sqlite2pg_reverse";

fn ctx(what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::from_sqlite(format!("cannot {what}"), e)
}

/// Opens the file for the reverse stream: foreign keys off on this connection (Postgres
/// already cascaded, and each cascaded row comes as its own change), and the position table.
pub fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = super::open_read_write(path, busy_timeout)?;
    // A large cache and an in-memory sub-journal: a batch rewrites thousands of rows across
    // the table, and spilling pages mid-transaction writes them twice.
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;
         CREATE TABLE IF NOT EXISTS {POSITION} (
           id INTEGER PRIMARY KEY CHECK (id = 1),
           seq INTEGER NOT NULL,
           changes INTEGER NOT NULL,
           applied_at REAL NOT NULL)"
    ))
    .map_err(ctx("prepare the SQLite file for the reverse stream"))?;
    // One UPDATE per set of changed columns per table: room for many.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// The reverse stream's position: the newest Postgres change applied and how many in all.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Position {
    /// Newest changelog sequence number applied.
    pub seq: i64,
    /// Changes applied since the cutover.
    pub changes: i64,
    /// When the last batch committed (Unix seconds).
    pub applied_at: f64,
}

/// The stored position (zero before the first batch, or without a reverse stream).
pub fn position(conn: &Connection) -> Result<Position> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [POSITION],
            |r| r.get(0),
        )
        .map_err(ctx("look for the reverse stream's position"))?;
    if !exists {
        return Ok(Position::default());
    }
    Ok(conn
        .query_row(
            &format!(
                "SELECT seq, changes, (applied_at - 2440587.5) * 86400.0 FROM {POSITION} WHERE id = 1"
            ),
            [],
            |r| {
                Ok(Position {
                    seq: r.get(0)?,
                    changes: r.get(1)?,
                    applied_at: r.get(2)?,
                })
            },
        )
        .optional()
        .map_err(ctx("read the reverse stream's position"))?
        .unwrap_or_default())
}

/// Starts a write transaction (waiting for readers in rollback-journal mode, as any writer).
pub fn begin(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx(
            "start a write transaction in SQLite (held by a reader?)",
        ))
}

/// The triggers on `table`, dropped for this transaction; give them to [`restore_triggers`]
/// before committing.
pub fn lift_triggers(tx: &Transaction<'_>, table: &str) -> Result<Vec<(String, String)>> {
    let found: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE AND sql IS NOT NULL ORDER BY rowid",
            )
            .map_err(ctx("list a table's triggers"))?;
        stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(ctx("list a table's triggers"))?
    };
    for (name, _) in &found {
        tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(name)))
            .map_err(|e| Error::from_sqlite(format!("cannot lift trigger {name} on {table}"), e))?;
    }
    Ok(found)
}

/// Creates the lifted triggers again, in their order, from their exact text.
pub fn restore_triggers(tx: &Transaction<'_>, triggers: &[(String, String)]) -> Result<()> {
    for (name, sql) in triggers {
        tx.execute_batch(sql)
            .map_err(|e| Error::from_sqlite(format!("cannot restore trigger {name}"), e))?;
    }
    Ok(())
}

/// How one table is written.
pub struct Shape<'a> {
    /// The table.
    pub table: &'a SourceTable,
    /// Columns written, in the order values are given (generated columns are left out).
    pub columns: Vec<String>,
    /// Positions in `columns` of the key columns.
    pub key: Vec<usize>,
    /// The statements, made once: a batch runs them thousands of times.
    read_sql: String,
    delete_sql: String,
    insert_sql: String,
    insert_rowid_sql: String,
    /// The UPDATE for each set of changed columns met so far.
    update_sql: Mutex<HashMap<Vec<usize>, Arc<str>>>,
}

impl<'a> Shape<'a> {
    /// The shape of `table` written through `columns`, rows found by the columns at `key`.
    pub fn new(table: &'a SourceTable, columns: Vec<String>, key: Vec<usize>) -> Shape<'a> {
        let name = quote_ident(&table.name);
        let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let condition = key_condition(&cols, &key);
        let rowid = table.rowid_name();
        let marks = |n: usize| {
            (1..=n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let keeps_rowid = !table.without_rowid && table.rowid_alias.is_none();
        Shape {
            read_sql: format!(
                "SELECT {}{} FROM {name} WHERE {condition}",
                if keeps_rowid {
                    format!("{rowid}, ")
                } else {
                    String::new()
                },
                cols.join(", ")
            ),
            delete_sql: format!("DELETE FROM {name} WHERE {condition}"),
            insert_sql: format!(
                "INSERT INTO {name} ({}) VALUES ({})",
                cols.join(", "),
                marks(cols.len())
            ),
            insert_rowid_sql: format!(
                "INSERT INTO {name} ({rowid}, {}) VALUES ({})",
                cols.join(", "),
                marks(cols.len() + 1)
            ),
            update_sql: Mutex::new(HashMap::new()),
            table,
            columns,
            key,
        }
    }

    /// Whether writing rows in place can conflict with itself midway: a unique constraint
    /// besides the key lets one Postgres transaction swap two rows' values, which SQLite
    /// checks row by row. Only then is an in-place write worth a savepoint to undo.
    pub fn may_conflict(&self) -> bool {
        self.table
            .indexes
            .iter()
            .any(|i| i.unique && i.origin != "pk")
    }

    /// Whether a row found by `key` holds that very key: text keys equal under the column's
    /// collation (NOCASE, RTRIM) may be spelled otherwise.
    pub fn same_key(&self, values: &[OwnedValue], key: &[OwnedValue]) -> bool {
        self.key
            .iter()
            .zip(key)
            .all(|(i, k)| match (&values[*i], k) {
                (OwnedValue::Text(a), OwnedValue::Text(b)) => a == b,
                _ => true,
            })
    }

    /// `UPDATE … SET` of `columns`, made once per set of columns.
    fn update_sql(&self, columns: &[usize]) -> Arc<str> {
        let mut made = self
            .update_sql
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sql) = made.get(columns) {
            return Arc::clone(sql);
        }
        let set: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, c)| {
                format!(
                    "{} = ?{}",
                    quote_ident(&self.columns[*c]),
                    n + 1 + self.key.len()
                )
            })
            .collect();
        let quoted: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let sql: Arc<str> = format!(
            "UPDATE {} SET {} WHERE {}",
            quote_ident(&self.table.name),
            set.join(", "),
            key_condition(&quoted, &self.key)
        )
        .into();
        made.insert(columns.to_vec(), Arc::clone(&sql));
        sql
    }

    /// A rowid table whose key is not the rowid: the rowid is kept when a row is rewritten.
    fn keeps_rowid(&self) -> bool {
        !self.table.without_rowid && self.table.rowid_alias.is_none()
    }
}

/// `"k1" = ?1 AND "k2" = ?2`.
fn key_condition(quoted: &[String], key: &[usize]) -> String {
    key.iter()
        .enumerate()
        .map(|(n, i)| format!("{} = ?{}", quoted[*i], n + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A row as SQLite has it: its rowid (rowid tables whose key is not the rowid) and values.
pub struct Existing {
    /// The rowid to keep.
    pub rowid: Option<i64>,
    /// Values of `Shape::columns`.
    pub values: Vec<OwnedValue>,
}

/// A value bound as it is, bytes and class unchanged (text is bound as the bytes it has).
struct Bind<'a>(&'a OwnedValue);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self.0 {
            OwnedValue::Null => ValueRef::Null,
            OwnedValue::Integer(i) => ValueRef::Integer(*i),
            OwnedValue::Real(f) => ValueRef::Real(*f),
            OwnedValue::Text(t) => ValueRef::Text(t),
            OwnedValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value_ref(v: &OwnedValue) -> Bind<'_> {
    Bind(v)
}

/// A write SQLite refused: a constraint it has and Postgres lacks (UNIQUE, CHECK, NOT NULL)
/// needs a person; anything else is the file's.
fn write_error(shape: &Shape<'_>, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
        return Error::with_source(
            crate::error::ErrorKind::Schema,
            format!(
                "SQLite refuses a row from Postgres in table {}: a constraint SQLite has and Postgres lacks (a UNIQUE with COLLATE NOCASE, a CHECK); the reverse stream waits. Fix the row on Postgres",
                shape.table.name
            ),
            e,
        );
    }
    Error::from_sqlite(format!("cannot write table {}", shape.table.name), e)
}

/// The row with this key, if SQLite has one.
pub fn read(
    tx: &Transaction<'_>,
    shape: &Shape<'_>,
    key: &[OwnedValue],
) -> Result<Option<Existing>> {
    let mut stmt = tx
        .prepare_cached(&shape.read_sql)
        .map_err(|e| Error::from_sqlite(format!("cannot read table {}", shape.table.name), e))?;
    let skip = usize::from(shape.keeps_rowid());
    let n = shape.columns.len();
    stmt.query_row(params_from_iter(key.iter().map(value_ref)), |r| {
        existing(r, skip, n)
    })
    .optional()
    .map_err(|e| Error::from_sqlite(format!("cannot read table {}", shape.table.name), e))
}

/// A row as read by `read_sql`: its rowid first when the table keeps one (`skip` 1), then
/// its `n` columns.
fn existing(r: &rusqlite::Row<'_>, skip: usize, n: usize) -> rusqlite::Result<Existing> {
    Ok(Existing {
        rowid: if skip == 1 { Some(r.get(0)?) } else { None },
        values: (0..n)
            .map(|i| {
                r.get_ref(i + skip)
                    .map(|v| super::reader::to_sql_value(v).to_owned_value())
            })
            .collect::<rusqlite::Result<_>>()?,
    })
}

/// A key column's condition for [`read_near`]: equal to a value, or a text between two
/// prefixes (dates' `YYYY-MM-DD`, however the rest of the text is written).
pub enum Near {
    /// `= value`.
    Equal(OwnedValue),
    /// Text from `first` up to `last || '~'` (the key's index serves).
    Between {
        /// The lowest prefix.
        first: String,
        /// The highest prefix.
        last: String,
    },
}

/// The rows whose key columns meet `near` (one per key column, in key order): where a date
/// key's text may be written in several forms, the candidates for one instant.
pub fn read_near(tx: &Transaction<'_>, shape: &Shape<'_>, near: &[Near]) -> Result<Vec<Existing>> {
    let quoted: Vec<String> = shape.columns.iter().map(|c| quote_ident(c)).collect();
    let mut params: Vec<OwnedValue> = Vec::new();
    let conds: Vec<String> = shape
        .key
        .iter()
        .zip(near)
        .map(|(i, n)| match n {
            Near::Equal(v) => {
                params.push(v.clone());
                format!("{} = ?{}", quoted[*i], params.len())
            }
            Near::Between { first, last } => {
                params.push(OwnedValue::Text(first.clone().into_bytes()));
                params.push(OwnedValue::Text(last.clone().into_bytes()));
                let at = params.len();
                format!("{q} >= ?{} AND {q} < ?{at} || '~'", at - 1, q = quoted[*i])
            }
        })
        .collect();
    let skip = usize::from(shape.keeps_rowid());
    let sql = format!(
        "SELECT {}{} FROM {} WHERE {}",
        if skip == 1 {
            format!("{}, ", shape.table.rowid_name())
        } else {
            String::new()
        },
        quoted.join(", "),
        quote_ident(&shape.table.name),
        conds.join(" AND ")
    );
    let err = |e| Error::from_sqlite(format!("cannot read table {}", shape.table.name), e);
    let mut stmt = tx.prepare_cached(&sql).map_err(err)?;
    let n = shape.columns.len();
    let rows = stmt
        .query_map(params_from_iter(params.iter().map(value_ref)), |r| {
            existing(r, skip, n)
        })
        .map_err(err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
}

/// Deletes the row with this key.
pub fn delete(tx: &Transaction<'_>, shape: &Shape<'_>, key: &[OwnedValue]) -> Result<()> {
    tx.prepare_cached(&shape.delete_sql)
        .and_then(|mut s| s.execute(params_from_iter(key.iter().map(value_ref))))
        .map_err(|e| {
            Error::from_sqlite(format!("cannot delete from table {}", shape.table.name), e)
        })?;
    Ok(())
}

/// Deletes every row (a whole-table change).
pub fn delete_all(tx: &Transaction<'_>, shape: &Shape<'_>) -> Result<()> {
    tx.execute_batch(&format!("DELETE FROM {}", quote_ident(&shape.table.name)))
        .map_err(|e| Error::from_sqlite(format!("cannot empty table {}", shape.table.name), e))
}

/// Inserts a row, with its old rowid when it had one.
pub fn insert(
    tx: &Transaction<'_>,
    shape: &Shape<'_>,
    rowid: Option<i64>,
    values: &[OwnedValue],
) -> Result<()> {
    let rowid = rowid.map(OwnedValue::Integer);
    let mut vals: Vec<Bind<'_>> = Vec::with_capacity(values.len() + 1);
    vals.extend(rowid.iter().map(value_ref));
    vals.extend(values.iter().map(value_ref));
    let sql = if rowid.is_some() {
        &shape.insert_rowid_sql
    } else {
        &shape.insert_sql
    };
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute(params_from_iter(vals)))
        .map_err(|e| write_error(shape, e))?;
    Ok(())
}

/// Sets `columns` (positions in `Shape::columns`) of the row with this key to `values`
/// (all of the row's values, in `Shape::columns` order).
pub fn update(
    tx: &Transaction<'_>,
    shape: &Shape<'_>,
    key: &[OwnedValue],
    columns: &[usize],
    values: &[OwnedValue],
) -> Result<()> {
    let sql = shape.update_sql(columns);
    let binds = key
        .iter()
        .map(value_ref)
        .chain(columns.iter().map(|c| value_ref(&values[*c])));
    tx.prepare_cached(&sql)
        .and_then(|mut s| s.execute(params_from_iter(binds)))
        .map_err(|e| write_error(shape, e))?;
    Ok(())
}

/// Runs `f` inside a savepoint: undone if it fails, so the caller can try another way.
pub fn attempt<T>(tx: &Transaction<'_>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    tx.execute_batch("SAVEPOINT sqlite2pg_attempt")
        .map_err(ctx("start a savepoint"))?;
    match f() {
        Ok(v) => {
            tx.execute_batch("RELEASE sqlite2pg_attempt")
                .map_err(ctx("release a savepoint"))?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO sqlite2pg_attempt; RELEASE sqlite2pg_attempt")
                .map_err(ctx("roll back to a savepoint"))?;
            Err(e)
        }
    }
}

/// Records the position, in the transaction that applied up to it.
pub fn set_position(tx: &Transaction<'_>, seq: i64, changes: i64) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT INTO {POSITION} (id, seq, changes, applied_at) VALUES (1, ?1, ?2, julianday('now'))
             ON CONFLICT (id) DO UPDATE SET seq = max(seq, excluded.seq), changes = changes + excluded.changes, applied_at = excluded.applied_at"
        ),
        rusqlite::params![seq, changes],
    )
    .map_err(ctx("record the reverse stream's position"))?;
    Ok(())
}

/// Moves `table`'s AUTOINCREMENT counter to at least `at_least`; whether it moved.
pub fn move_autoincrement(conn: &Connection, table: &str, at_least: i64) -> Result<bool> {
    let current: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()
        .map_err(ctx("read sqlite_sequence"))?;
    if current.is_some_and(|c| c >= at_least) {
        return Ok(false);
    }
    let sql = if current.is_some() {
        "UPDATE sqlite_sequence SET seq = ?2 WHERE name = ?1"
    } else {
        "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)"
    };
    conn.execute(sql, rusqlite::params![table, at_least])
        .map_err(ctx("move an AUTOINCREMENT counter"))?;
    Ok(true)
}
