//! `verify`: both sides compared row by row in key order (a merge join), every SQLite value
//! encoded exactly as apply encodes it and compared with Postgres' binary value, so memory does
//! not grow with table size. Differences found while the daemon streams are re-checked once it
//! has caught up, so a moving target is not reported as a difference.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::model::Collation;
use crate::model::{Follow, OwnedValue, PgType, display_key};
use crate::pg::lookup::{self, Lookup};
use crate::pg::scan::{self, Raw};
use crate::pg::{convert, copy, decode, qualified, quote_ident, reverse, state};
use crate::plan::{Plan, TablePlan};
use crate::replicate::Databases;
use crate::sqlite::changes::{self, RowReader};
use crate::sqlite::form;
use crate::sqlite::reader::{self, ScanQuery};
use crate::sqlite::{self, capture};
use crate::typemap::{self, Affinity};

const PAGE: usize = 5_000;
/// Differences kept (with their keys) for the re-check; beyond it they are only counted.
const KEEP: usize = 10_000;

/// Knobs of a verify run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the two databases are.
    pub db: crate::replicate::Databases,
    /// Examples printed per table.
    pub examples: usize,
    /// Only these source tables (all when empty).
    pub tables: Vec<String>,
    /// How long to wait for the daemon to catch up before re-checking differences.
    pub settle: Duration,
}

/// How a row differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// SQLite has the row, Postgres lacks it.
    MissingInPostgres,
    /// Postgres has the row, SQLite lacks it.
    ExtraInPostgres,
    /// Both have the row, with a column that differs.
    Differs,
}

impl DiffKind {
    /// In words, for the report.
    pub fn words(self) -> &'static str {
        match self {
            DiffKind::MissingInPostgres => "missing in postgres",
            DiffKind::ExtraInPostgres => "extra in postgres",
            DiffKind::Differs => "differs",
        }
    }
}

/// One difference, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The row's key.
    pub key: String,
    /// How it differs.
    pub kind: DiffKind,
    /// The differing column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// SQLite's value.
    pub sqlite: Option<String>,
    /// Postgres' value (as Postgres renders it).
    pub postgres: Option<String>,
}

/// One table's result.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    /// Source table.
    pub table: String,
    /// Rows read from SQLite.
    pub rows_compared: u64,
    /// Rows SQLite has and Postgres lacks.
    pub missing_in_postgres: u64,
    /// Rows Postgres has and SQLite lacks.
    pub extra_in_postgres: u64,
    /// Rows on both sides with a different value.
    pub differing: u64,
    /// The first few differences.
    pub examples: Vec<Example>,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per table.
    pub tables: Vec<TableResult>,
    /// Differences that went away once the daemon caught up.
    pub settled_by_recheck: u64,
    /// Rows that differ only because their latest change is still in the changelog, not applied
    /// (no daemon running): not differences, they are applied when the daemon runs.
    pub pending_not_applied: u64,
    /// No difference left.
    pub equal: bool,
    /// The stream position when verify started (everything up to it was compared).
    pub position: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum KeyVal {
    Num(f64, i64),
    Bytes(Vec<u8>),
}

fn key_cmp(a: &[KeyVal], b: &[KeyVal]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (KeyVal::Num(f, i), KeyVal::Num(g, j)) => f.total_cmp(g).then(i.cmp(j)),
            (KeyVal::Num(..), KeyVal::Bytes(_)) => Ordering::Less,
            (KeyVal::Bytes(_), KeyVal::Num(..)) => Ordering::Greater,
            (KeyVal::Bytes(p), KeyVal::Bytes(q)) => p.cmp(q),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn key_from_sqlite(v: &OwnedValue) -> KeyVal {
    match v {
        OwnedValue::Integer(i) => KeyVal::Num(*i as f64, *i),
        OwnedValue::Real(f) => KeyVal::Num(*f, *f as i64),
        OwnedValue::Text(b) | OwnedValue::Blob(b) => KeyVal::Bytes(b.clone()),
        OwnedValue::Null => KeyVal::Bytes(Vec::new()),
    }
}

fn key_from_pg(ty: &PgType, raw: &Raw, table: &str) -> Result<KeyVal> {
    let b = raw.0.as_deref().unwrap_or_default();
    let int = |n: usize| -> Result<i64> {
        let mut a = [0u8; 8];
        let bytes = b.get(..n).ok_or_else(|| {
            Error::new(
                ErrorKind::Target,
                format!("short key value in table {table}"),
            )
        })?;
        let neg = bytes.first().is_some_and(|x| x & 0x80 != 0);
        a[8 - n..].copy_from_slice(bytes);
        if neg {
            for x in a.iter_mut().take(8 - n) {
                *x = 0xff;
            }
        }
        Ok(i64::from_be_bytes(a))
    };
    Ok(match ty {
        PgType::Int2 => {
            let i = int(2)?;
            KeyVal::Num(i as f64, i)
        }
        PgType::Int4 => {
            let i = int(4)?;
            KeyVal::Num(i as f64, i)
        }
        PgType::Int8 => {
            let i = int(8)?;
            KeyVal::Num(i as f64, i)
        }
        PgType::Float8 => {
            let f = f64::from_bits(int(8)? as u64);
            KeyVal::Num(f, f as i64)
        }
        // A NUMERIC-affinity key: SQLite holds an integer or a REAL, and orders both as numbers.
        PgType::Numeric { .. } => {
            let text = crate::pg::decode::numeric_text(b).map_err(|e| {
                Error::new(
                    ErrorKind::Target,
                    format!(
                        "a numeric key in table {table} cannot be read: {}",
                        e.detail
                    ),
                )
            })?;
            let whole = match text.split_once('.') {
                Some((w, f)) if f.bytes().all(|c| c == b'0') => w,
                Some(_) => "",
                None => text.as_str(),
            };
            match whole.parse::<i64>() {
                Ok(i) => KeyVal::Num(i as f64, i),
                Err(_) => {
                    let f: f64 = text.parse().map_err(|_| {
                        Error::new(
                            ErrorKind::Target,
                            format!("a numeric key in table {table} is not a number: {text}"),
                        )
                    })?;
                    KeyVal::Num(f, f as i64)
                }
            }
        }
        PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } => KeyVal::Bytes(b.to_vec()),
        // `orders_alike` sends every other key to a lookup.
        other => {
            return Err(Error::new(
                ErrorKind::Target,
                format!(
                    "verify merged table {table} by a {} key, which Postgres does not order as SQLite",
                    other.sql()
                ),
            ));
        }
    })
}

fn key_to_owned(k: &KeyVal) -> OwnedValue {
    match k {
        KeyVal::Num(f, i) if (*i as f64) == *f => OwnedValue::Integer(*i),
        KeyVal::Num(f, _) => OwnedValue::Real(*f),
        KeyVal::Bytes(b) if std::str::from_utf8(b).is_ok() => OwnedValue::Text(b.clone()),
        KeyVal::Bytes(b) => OwnedValue::Blob(b.clone()),
    }
}

/// A SQLite row: its key, and each column encoded as apply would (Err: cannot be converted).
struct SourceRow {
    key: Vec<KeyVal>,
    /// The key as SQLite holds it (to re-read the row, and to name it).
    sqlite_key: Vec<OwnedValue>,
    values: Vec<std::result::Result<Option<Vec<u8>>, String>>,
}

/// One value encoded as apply encodes it (without the length prefix), or why it cannot be.
fn encode_value(
    v: &OwnedValue,
    conv: &convert::ColumnConv,
    scratch: &mut BytesMut,
) -> std::result::Result<Option<Vec<u8>>, String> {
    scratch.clear();
    match convert::encode(v.as_ref(), conv, scratch) {
        Ok(()) if matches!(v, OwnedValue::Null) => Ok(None),
        Ok(()) => Ok(Some(scratch[4..].to_vec())),
        Err(e) => Err(e.detail),
    }
}

fn encode_row(
    t: &TablePlan,
    values: &[OwnedValue],
    scratch: &mut BytesMut,
) -> Vec<std::result::Result<Option<Vec<u8>>, String>> {
    t.columns
        .iter()
        .zip(values)
        .map(|(c, v)| encode_value(v, &c.conv, scratch))
        .collect()
}

/// A SQLite key encoded for a [`Lookup`]; a value that cannot be converted is NULL, which
/// finds no row (Postgres cannot hold it).
fn encode_key(
    t: &TablePlan,
    keys: &[usize],
    key: &[OwnedValue],
    scratch: &mut BytesMut,
) -> Vec<Option<Vec<u8>>> {
    keys.iter()
        .zip(key)
        .map(|(p, v)| encode_value(v, &t.columns[*p].conv, scratch).unwrap_or(None))
        .collect()
}

/// A lookup of the table's rows by key: every copied column, or one as text.
fn lookup(t: &TablePlan, db: &Databases, keys: &[usize], text_of: Option<usize>) -> Lookup {
    let schema = db.schema.as_str();
    let key_cols: Vec<(&str, &PgType)> = keys
        .iter()
        .map(|p| (t.columns[*p].target.as_str(), &t.columns[*p].conv.ty))
        .collect();
    match text_of {
        Some(i) => Lookup::new(
            schema,
            &t.target,
            &key_cols,
            std::slice::from_ref(&t.columns[i].target),
            true,
            &db.rows,
        ),
        None => Lookup::new(
            schema,
            &t.target,
            &key_cols,
            &t.target_columns(),
            false,
            &db.rows,
        ),
    }
}

/// The first column where SQLite's encoded row and Postgres' row differ (or cannot convert).
fn first_difference(
    t: &TablePlan,
    encoded: &[std::result::Result<Option<Vec<u8>>, String>],
    pg_row: &[Raw],
) -> Option<usize> {
    t.columns
        .iter()
        .enumerate()
        .position(|(i, c)| match &encoded[i] {
            Ok(v) => !convert::same(&c.conv.ty, v.as_deref(), pg_row[i].0.as_deref()),
            Err(_) => true,
        })
}

struct Diff {
    key: Vec<OwnedValue>,
    kind: DiffKind,
    column: Option<usize>,
}

#[derive(Default)]
struct Counts {
    rows: u64,
    missing: u64,
    extra: u64,
    differing: u64,
    kept: Vec<Diff>,
}

impl Counts {
    fn add(&mut self, d: Diff) {
        self.count(d.kind, true);
        if self.kept.len() < KEEP {
            self.kept.push(d);
        }
    }

    /// One more (or, `up` false, one fewer) difference of this kind.
    fn count(&mut self, kind: DiffKind, up: bool) {
        let n = match kind {
            DiffKind::MissingInPostgres => &mut self.missing,
            DiffKind::ExtraInPostgres => &mut self.extra,
            DiffKind::Differs => &mut self.differing,
        };
        if up {
            *n += 1;
        } else {
            *n -= 1;
        }
    }
}

fn key_positions(t: &TablePlan) -> Result<Vec<usize>> {
    let keys = capture::key_columns(&t.source).ok_or_else(|| {
        Error::new(
            ErrorKind::Schema,
            format!("table {} has no usable key for verify", t.source.name),
        )
    })?;
    keys.iter()
        .map(|k| t.columns.iter().position(|c| &c.source == k))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Schema,
                format!("table {}: a key column is not copied", t.source.name),
            )
        })
}

/// Reads a table from SQLite in key order on its own thread (key and encoded values per row),
/// so that SQLite and Postgres are read at the same time.
/// Rows of SQLite in key order, and whether the table ends with them.
struct SourcePage {
    rows: Vec<SourceRow>,
    last: bool,
}

fn spawn_source(
    t: &TablePlan,
    source: &std::path::Path,
    busy: Duration,
) -> (
    tokio::sync::mpsc::Receiver<Result<SourcePage>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let t = t.clone();
    let source = source.to_path_buf();
    let handle = std::thread::spawn(move || {
        let run = || -> Result<()> {
            let conn = sqlite::open_read_only(&source, busy)?;
            let q = ScanQuery::new(&t.source, &t.source_columns());
            let klen = q.key_len();
            let mut after: Option<Vec<OwnedValue>> = None;
            let mut scratch = BytesMut::new();
            loop {
                let mut rows = Vec::with_capacity(PAGE);
                let read = reader::read_chunk(
                    &conn,
                    &q,
                    after.as_deref(),
                    PAGE,
                    Duration::from_millis(100),
                    |row| {
                        let sqlite_key: Vec<OwnedValue> =
                            row[..klen].iter().map(|v| v.to_owned_value()).collect();
                        let key = sqlite_key.iter().map(key_from_sqlite).collect();
                        let values: Vec<OwnedValue> =
                            row[klen..].iter().map(|v| v.to_owned_value()).collect();
                        rows.push(SourceRow {
                            key,
                            sqlite_key,
                            values: encode_row(&t, &values, &mut scratch),
                        });
                        Ok(())
                    },
                )?;
                after = read.last_key.or(after);
                // A chunk also ends at its time limit (short read transactions): only the
                // reader knows whether the table is done, never the page's length.
                let last = read.exhausted;
                if tx.blocking_send(Ok(SourcePage { rows, last })).is_err() || last {
                    return Ok(());
                }
            }
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    (rx, handle)
}

/// Whether Postgres orders every value the key columns can hold as SQLite orders it, so both
/// sides can be merged in key order: integers, reals and numerics of a numeric affinity, and
/// text of TEXT affinity compared byte by byte. Any other key (boolean, date, uuid, enum, blob,
/// a NOCASE or RTRIM text, a column whose values may be of several storage classes) is
/// compared by lookup.
fn orders_alike(t: &TablePlan, keys: &[usize]) -> bool {
    keys.iter().all(|p| {
        let c = &t.columns[*p];
        let affinity = typemap::affinity(&c.decl_type);
        c.collation == Collation::Binary
            && match &c.conv.ty {
                ty if ty.is_integer() => affinity == Affinity::Integer,
                PgType::Float8 | PgType::Numeric { .. } => matches!(
                    affinity,
                    Affinity::Integer | Affinity::Real | Affinity::Numeric
                ),
                PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. } => {
                    affinity == Affinity::Text
                }
                _ => false,
            }
    })
}

/// The temporary table a lookup comparison fills with every SQLite key, to find the rows only
/// Postgres has.
const SEEN_KEYS: &str = "sqlite2pg_verify_keys";

/// A table whose key Postgres does not order as SQLite does: SQLite is read in its key order,
/// a page at a time, and each page's rows are looked up in Postgres by key; the keys read are
/// copied into a temporary table, and the rows of Postgres that none of them finds are extra.
async fn compare_by_lookup(
    client: &mut Client,
    t: &TablePlan,
    keys: &[usize],
    opts: &Options,
) -> Result<Counts> {
    let schema = opts.db.schema.as_str();
    let by_key = lookup(t, &opts.db, keys, None);
    let aliases: Vec<String> = (1..=keys.len()).map(|j| format!("a{j}")).collect();
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::from_pg("cannot start a verify transaction", e))?;
    let columns: Vec<String> = keys
        .iter()
        .zip(&aliases)
        .map(|(p, a)| format!("{a} {}", t.columns[*p].conv.ty.sql()))
        .collect();
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {SEEN_KEYS} ({}) ON COMMIT DROP",
        columns.join(", ")
    ))
    .await
    .map_err(|e| Error::from_pg("cannot make the verify's temporary table", e))?;
    let (mut source_rx, reader_thread) = spawn_source(t, &opts.db.source, opts.db.busy_timeout);
    let mut counts = Counts::default();
    while let Some(page) = source_rx.recv().await {
        let page = page?;
        let encoded: Vec<Vec<Option<Vec<u8>>>> = page
            .rows
            .iter()
            .map(|r| {
                keys.iter()
                    .map(|p| r.values[*p].clone().unwrap_or(None))
                    .collect()
            })
            .collect();
        let found = by_key.rows(&tx, &encoded).await?;
        let mut buf = copy::begin_buffer(64 * encoded.len());
        for k in &encoded {
            copy::begin_row(&mut buf, k.len());
            for v in k {
                copy::put_field(&mut buf, v.as_deref());
            }
        }
        copy::copy_in(&tx, None, SEEN_KEYS, &aliases, buf).await?;
        for (s, pg) in page.rows.into_iter().zip(found) {
            counts.rows += 1;
            match pg {
                None => counts.add(Diff {
                    key: s.sqlite_key,
                    kind: DiffKind::MissingInPostgres,
                    column: None,
                }),
                Some(row) => {
                    if let Some(i) = first_difference(t, &s.values, &row) {
                        counts.add(Diff {
                            key: s.sqlite_key,
                            kind: DiffKind::Differs,
                            column: Some(i),
                        });
                    }
                }
            }
        }
    }
    if reader_thread.join().is_err() {
        return Err(Error::new(
            ErrorKind::SourceUnreadable,
            format!("the SQLite reader of table {} panicked", t.source.name),
        ));
    }
    let key_targets: Vec<String> = keys
        .iter()
        .map(|p| format!("t.{}", quote_ident(&t.columns[*p].target)))
        .collect();
    let unseen: Vec<String> = keys
        .iter()
        .zip(&aliases)
        .map(|(p, a)| {
            lookup::key_equal(
                &t.columns[*p].target,
                &t.columns[*p].conv.ty,
                &format!("k.{a}"),
            )
        })
        .collect();
    let rows = &opts.db.rows;
    let only_postgres = format!(
        "FROM {} t WHERE NOT EXISTS (SELECT FROM {SEEN_KEYS} k WHERE {}){}",
        qualified(schema, &t.target),
        unseen.join(" AND "),
        rows.and("t", 1)
    );
    let extras_err = |e| {
        Error::from_pg(
            format!("cannot find rows only Postgres has in table {}", t.target),
            e,
        )
    };
    let extra_count: i64 = tx
        .query_one(&format!("SELECT count(*) {only_postgres}"), &rows.params())
        .await
        .map_err(extras_err)?
        .get(0);
    let extra = tx
        .query(
            &format!(
                "SELECT {} {only_postgres} LIMIT {KEEP}",
                key_targets.join(", ")
            ),
            &rows.params(),
        )
        .await
        .map_err(extras_err)?;
    // Those past the kept ones are counted only, as in a merge.
    counts.extra += (extra_count as u64).saturating_sub(extra.len() as u64);
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot end a verify transaction", e))?;
    if !extra.is_empty() {
        // Named as SQLite would hold them, in the forms its values have, to be re-read there.
        let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
        let typed: Vec<(&str, &PgType)> = keys
            .iter()
            .map(|p| (t.columns[*p].source.as_str(), &t.columns[*p].conv.ty))
            .collect();
        let forms = tokio::task::block_in_place(|| form::learn(&conn, &t.source.name, &typed))?;
        for r in extra {
            let key = keys
                .iter()
                .enumerate()
                .map(|(j, p)| match r.get::<_, Raw>(j).0 {
                    Some(b) => decode::decode(&b, &t.columns[*p].conv, &forms[j])
                        .unwrap_or(OwnedValue::Blob(b)),
                    None => OwnedValue::Null,
                })
                .collect();
            counts.add(Diff {
                key,
                kind: DiffKind::ExtraInPostgres,
                column: None,
            });
        }
    }
    Ok(counts)
}

async fn compare_table(client: &mut Client, t: &TablePlan, opts: &Options) -> Result<Counts> {
    let schema = opts.db.schema.as_str();
    let keys = key_positions(t)?;
    if !orders_alike(t, &keys) {
        return compare_by_lookup(client, t, &keys, opts).await;
    }
    let order: Vec<String> = keys
        .iter()
        .map(|p| scan::order_term(&t.columns[*p].target, &t.columns[*p].conv.ty))
        .collect();
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::from_pg("cannot start a verify transaction", e))?;
    let portal = scan::open(
        &tx,
        schema,
        &opts.db.rows,
        &t.target,
        &t.target_columns(),
        &order,
    )
    .await?;
    let (mut source_rx, reader_thread) = spawn_source(t, &opts.db.source, opts.db.busy_timeout);
    let mut counts = Counts::default();
    let mut src: VecDeque<SourceRow> = VecDeque::new();
    let mut dst: VecDeque<Vec<Raw>> = VecDeque::new();
    let (mut src_done, mut dst_done) = (false, false);
    loop {
        if src.is_empty() && !src_done {
            match source_rx.recv().await {
                Some(page) => {
                    let page = page?;
                    src_done = page.last;
                    src.extend(page.rows);
                }
                None => src_done = true,
            }
        }
        if dst.is_empty() && !dst_done {
            let page = scan::page(&tx, &portal, &t.target, PAGE as i32).await?;
            dst_done = page.len() < PAGE;
            dst.extend(page);
        }
        let pg_key = |row: &Vec<Raw>| -> Result<Vec<KeyVal>> {
            keys.iter()
                .map(|p| key_from_pg(&t.columns[*p].conv.ty, &row[*p], &t.target))
                .collect()
        };
        // Which side is behind: SQLite only (missing in Postgres), Postgres only (extra), or both.
        let step = match (src.front(), dst.front()) {
            (None, None) if src_done && dst_done => break,
            (None, None) => continue,
            (Some(_), None) if !dst_done => continue,
            (None, Some(_)) if !src_done => continue,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(s), Some(d)) => key_cmp(&s.key, &pg_key(d)?),
        };
        match step {
            Ordering::Less => {
                let key = src.pop_front().map(|s| s.sqlite_key).unwrap_or_default();
                counts.rows += 1;
                counts.add(Diff {
                    key,
                    kind: DiffKind::MissingInPostgres,
                    column: None,
                });
            }
            Ordering::Greater => {
                let key = match dst.pop_front() {
                    Some(d) => pg_key(&d)?,
                    None => continue,
                };
                counts.add(Diff {
                    key: key.iter().map(key_to_owned).collect(),
                    kind: DiffKind::ExtraInPostgres,
                    column: None,
                });
            }
            Ordering::Equal => {
                let (Some(s), Some(d)) = (src.pop_front(), dst.pop_front()) else {
                    break;
                };
                counts.rows += 1;
                if let Some(i) = first_difference(t, &s.values, &d) {
                    counts.add(Diff {
                        key: s.sqlite_key,
                        kind: DiffKind::Differs,
                        column: Some(i),
                    });
                }
            }
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot end a verify transaction", e))?;
    // The reader stops at its next send once the channel is gone.
    drop(source_rx);
    if reader_thread.join().is_err() {
        return Err(Error::new(
            ErrorKind::SourceUnreadable,
            format!("the SQLite reader of table {} panicked", t.source.name),
        ));
    }
    Ok(counts)
}

/// A value in a form that is equal exactly when `same` says so (numeric without its display
/// scale, jsonb as parsed JSON), fed to a row's fingerprint.
fn canonical(ty: &PgType, v: &Option<Vec<u8>>, h: &mut impl Hasher) {
    match v {
        None => 0u8.hash(h),
        Some(b) => {
            1u8.hash(h);
            convert::comparable(ty, b).hash(h);
        }
    }
}

/// A table followed by row images has no key to merge on: both sides are compared as
/// multisets of row fingerprints (memory grows with the number of distinct rows; the report
/// names a missing row by its SQLite rowid).
async fn compare_images(client: &mut Client, t: &TablePlan, opts: &Options) -> Result<Counts> {
    let mut counts = Counts::default();
    // fingerprint -> (SQLite rows minus Postgres rows, a rowid holding it in SQLite)
    let mut seen: HashMap<u64, (i64, Option<OwnedValue>)> = HashMap::new();
    let fingerprint = |values: &mut dyn Iterator<Item = (&PgType, &Option<Vec<u8>>)>| {
        let mut h = std::hash::DefaultHasher::new();
        for (ty, v) in values {
            canonical(ty, v, &mut h);
        }
        h.finish()
    };
    let (mut source_rx, reader_thread) = spawn_source(t, &opts.db.source, opts.db.busy_timeout);
    while let Some(page) = source_rx.recv().await {
        for r in page?.rows {
            counts.rows += 1;
            // A value that cannot be converted can match nothing in Postgres.
            let encoded: Vec<Option<Vec<u8>>> = r
                .values
                .into_iter()
                .map(|v| v.unwrap_or_else(|e| Some(format!("\0unconvertible {e}").into_bytes())))
                .collect();
            let f = fingerprint(&mut t.columns.iter().map(|c| &c.conv.ty).zip(&encoded));
            let e = seen.entry(f).or_insert((0, None));
            e.0 += 1;
            if e.1.is_none() {
                e.1 = r.sqlite_key.first().cloned();
            }
        }
    }
    if reader_thread.join().is_err() {
        return Err(Error::new(
            ErrorKind::SourceUnreadable,
            format!("the SQLite reader of table {} panicked", t.source.name),
        ));
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::from_pg("cannot start a verify transaction", e))?;
    let portal = scan::open(
        &tx,
        &opts.db.schema,
        &opts.db.rows,
        &t.target,
        &t.target_columns(),
        &["ctid".into()],
    )
    .await?;
    loop {
        let page = scan::page(&tx, &portal, &t.target, PAGE as i32).await?;
        for row in &page {
            let values: Vec<Option<Vec<u8>>> = row.iter().map(|r| r.0.clone()).collect();
            let f = fingerprint(&mut t.columns.iter().map(|c| &c.conv.ty).zip(&values));
            seen.entry(f).or_insert((0, None)).0 -= 1;
        }
        if page.len() < PAGE {
            break;
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot end a verify transaction", e))?;
    for (n, rowid) in seen.into_values() {
        for _ in 0..n.unsigned_abs() {
            counts.add(Diff {
                key: if n > 0 {
                    rowid.clone().into_iter().collect()
                } else {
                    Vec::new()
                },
                kind: if n > 0 {
                    DiffKind::MissingInPostgres
                } else {
                    DiffKind::ExtraInPostgres
                },
                column: None,
            });
        }
    }
    Ok(counts)
}

/// Reads one row by key on both sides and says whether they now agree.
async fn recheck(
    client: &Client,
    conn: &rusqlite::Connection,
    t: &TablePlan,
    db: &Databases,
    key: &[OwnedValue],
) -> Result<Option<Diff>> {
    let keys = key_positions(t)?;
    let key_names: Vec<String> = keys.iter().map(|p| t.columns[*p].source.clone()).collect();
    let reader = RowReader::new(&t.source.name, &key_names, &t.source_columns());
    let sqlite_row = tokio::task::block_in_place(|| changes::read_row_by_key(conn, &reader, key))?;
    let mut scratch = BytesMut::new();
    let encoded = encode_key(t, &keys, key, &mut scratch);
    let pg_values = lookup(t, db, &keys, None)
        .rows(client, &[encoded])
        .await?
        .pop()
        .flatten();
    Ok(match (sqlite_row, pg_values) {
        (None, None) => None,
        (Some(_), None) => Some(Diff {
            key: key.to_vec(),
            kind: DiffKind::MissingInPostgres,
            column: None,
        }),
        (None, Some(_)) => Some(Diff {
            key: key.to_vec(),
            kind: DiffKind::ExtraInPostgres,
            column: None,
        }),
        (Some(s), Some(p)) => {
            let enc = encode_row(t, &s, &mut scratch);
            first_difference(t, &enc, &p).map(|i| Diff {
                key: key.to_vec(),
                kind: DiffKind::Differs,
                column: Some(i),
            })
        }
    })
}

async fn example(
    client: &Client,
    conn: &rusqlite::Connection,
    t: &TablePlan,
    db: &Databases,
    d: &Diff,
) -> Result<Example> {
    if t.source.follow() == Follow::ByImage {
        return Ok(Example {
            key: match d.key.first() {
                Some(rowid) => format!("rowid={}", rowid.as_ref().display()),
                None => "a row only Postgres has".into(),
            },
            kind: d.kind,
            column: None,
            sqlite: None,
            postgres: None,
        });
    }
    let keys = key_positions(t)?;
    let mut ex = Example {
        key: display_key(&t.key_names, &d.key),
        kind: d.kind,
        column: d.column.map(|i| t.columns[i].source.clone()),
        sqlite: None,
        postgres: None,
    };
    if let Some(i) = d.column {
        let key_names: Vec<String> = keys.iter().map(|p| t.columns[*p].source.clone()).collect();
        let reader = RowReader::new(&t.source.name, &key_names, &t.source_columns());
        if let Some(row) =
            tokio::task::block_in_place(|| changes::read_row_by_key(conn, &reader, &d.key))?
        {
            ex.sqlite = Some(row[i].as_ref().display());
        }
        let mut scratch = BytesMut::new();
        let encoded = encode_key(t, &keys, &d.key, &mut scratch);
        if let Some(row) = lookup(t, db, &keys, Some(i))
            .rows(client, &[encoded])
            .await?
            .pop()
            .flatten()
        {
            ex.postgres = Some(match row.first().and_then(|r| r.0.as_deref()) {
                Some(text) => String::from_utf8_lossy(text).into_owned(),
                None => "NULL".into(),
            });
        }
    }
    Ok(ex)
}

/// Compares a table followed by row images in full; `Some(what)` when it differs.
pub async fn check_images(
    client: &mut Client,
    t: &TablePlan,
    opts: &Options,
) -> Result<Option<String>> {
    let c = compare_images(client, t, opts).await?;
    Ok((c.missing + c.extra > 0).then(|| {
        format!(
            "{} rows missing in Postgres and {} extra",
            c.missing, c.extra
        )
    }))
}

/// Compares the rows of many keys on both sides in bulk (a join against the keys, by the key
/// columns' own types so the index is used); `Some((key, what))` for the first that differs.
pub async fn check_keys(
    client: &Client,
    conn: &rusqlite::Connection,
    t: &TablePlan,
    db: &Databases,
    keys: &[Vec<OwnedValue>],
) -> Result<Option<(String, String)>> {
    let kp = key_positions(t)?;
    let key_names: Vec<String> = kp.iter().map(|p| t.columns[*p].source.clone()).collect();
    let reader = RowReader::new(&t.source.name, &key_names, &t.source_columns());
    let by_key = lookup(t, db, &kp, None);
    let mut scratch = BytesMut::new();
    for chunk in keys.chunks(5_000) {
        let encoded: Vec<Vec<Option<Vec<u8>>>> = chunk
            .iter()
            .map(|k| encode_key(t, &kp, k, &mut scratch))
            .collect();
        let rows = by_key.rows(client, &encoded).await?;
        for (key, pg) in chunk.iter().zip(rows) {
            let sqlite_row =
                tokio::task::block_in_place(|| changes::read_row_by_key(conn, &reader, key))?;
            let what = match (sqlite_row, pg) {
                (None, None) => None,
                (Some(_), None) => Some("missing in Postgres".to_string()),
                (None, Some(_)) => Some("extra in Postgres".to_string()),
                (Some(srow), Some(prow)) => {
                    let enc = encode_row(t, &srow, &mut scratch);
                    first_difference(t, &enc, &prow)
                        .map(|i| format!("different in column {}", t.columns[i].source))
                }
            };
            if let Some(w) = what {
                return Ok(Some((display_key(&t.key_names, key), w)));
            }
        }
    }
    Ok(None)
}

/// Waits until the stream has applied everything SQLite has recorded so far (if a daemon runs).
async fn settle(
    client: &Client,
    db: &crate::replicate::Databases,
    conn: &rusqlite::Connection,
    wait: Duration,
) -> Result<()> {
    let tenant = db.tenant.as_str();
    // Without a daemon nothing moves: pending changes are told apart by key afterwards.
    if !state::daemon_running(client, tenant).await? {
        return Ok(());
    }
    // After the cutover the daemon follows Postgres back: wait for what it has now.
    if state::cutover_load(client, tenant).await?.is_some()
        && reverse::capture_installed(client, &db.schema).await?
    {
        let newest = reverse::newest(client, tenant).await?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !reverse::applied_through(client, tenant, newest).await?
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return Ok(());
    }
    let Some(st) = state::stream_load(client, tenant).await? else {
        return Ok(());
    };
    let (newest, _, _) = tokio::task::block_in_place(|| changes::pending(conn, st.position))?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match state::stream_load(client, tenant).await? {
            Some(s) if s.position >= newest => return Ok(()),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(())
}

/// Runs [`run`] and, when every table was compared and found equal, records the position it
/// compared up to: a cutover then verifies only the keys changed since.
pub async fn run_and_record(client: &mut Client, plan: &Plan, opts: &Options) -> Result<Report> {
    let report = run(client, plan, opts).await?;
    if let (true, true, Some(position)) = (opts.tables.is_empty(), report.equal, report.position) {
        state::set_verified(&*client, &opts.db.tenant, position).await?;
    }
    Ok(report)
}

/// Compares the planned tables (or `opts.tables`) on both sides.
pub async fn run(client: &mut Client, plan: &Plan, opts: &Options) -> Result<Report> {
    let conn = sqlite::open_read_only(&opts.db.source, opts.db.busy_timeout)?;
    let position = state::stream_load(client, &opts.db.tenant)
        .await
        .ok()
        .flatten()
        .map(|s| s.position);
    let tables: Vec<&TablePlan> = plan
        .tables
        .iter()
        .filter(|t| opts.tables.is_empty() || opts.tables.contains(&t.source.name))
        .collect();
    for name in &opts.tables {
        if !plan.tables.iter().any(|t| &t.source.name == name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("--tables names {name}, which is not a replicated table"),
            ));
        }
    }
    let mut found = Vec::new();
    for t in &tables {
        let counts = match t.source.follow() {
            Follow::ByKey(_) => compare_table(client, t, opts).await?,
            Follow::ByImage => compare_images(client, t, opts).await?,
        };
        found.push(counts);
    }
    // Moving target: differences may be changes in flight. Let the daemon catch up, re-check.
    // A re-check reads SQLite, then Postgres: a row the app changes between the two reads (and
    // the daemon applies at once) looks different once more, so differences left are settled
    // and re-checked again, up to three rounds. A real difference stays through all of them.
    let mut settled = 0;
    for round in 0..3 {
        if found.iter().all(|c| c.kept.is_empty()) {
            break;
        }
        settle(client, &opts.db, &conn, opts.settle).await?;
        for (t, counts) in tables.iter().zip(found.iter_mut()) {
            if t.source.follow() == Follow::ByImage {
                // No key to re-read by: the whole table once more (once: it is all of it).
                if round == 0 && !counts.kept.is_empty() {
                    let before = counts.missing + counts.extra;
                    *counts = compare_images(client, t, opts).await?;
                    settled += before.saturating_sub(counts.missing + counts.extra);
                }
                continue;
            }
            let kept = std::mem::take(&mut counts.kept);
            for d in kept {
                let now = recheck(client, &conn, t, &opts.db, &d.key).await?;
                counts.count(d.kind, false);
                match now {
                    Some(n) => {
                        counts.count(n.kind, true);
                        counts.kept.push(n);
                    }
                    None => settled += 1,
                }
            }
        }
    }
    // Compare up to a consistent position: a row whose latest change is still in the changelog
    // is pending, not different.
    let mut pending = 0;
    if let (Some(installed), Some(st)) = (
        capture::installed(&conn)?,
        state::stream_load(client, &opts.db.tenant).await?,
    ) {
        for (t, counts) in tables.iter().zip(found.iter_mut()) {
            let Some((tbl, _)) = installed.tables.iter().find(|(_, n)| n == &t.source.name) else {
                continue;
            };
            if t.source.follow() == Follow::ByImage {
                // Rows are not told apart by key: with changes of the table still in the
                // changelog, its differences are those changes.
                let waiting = tokio::task::block_in_place(|| {
                    changes::table_pending(&conn, *tbl, st.position)
                })?;
                if waiting && !counts.kept.is_empty() {
                    pending += counts.missing + counts.extra;
                    (counts.missing, counts.extra) = (0, 0);
                    counts.kept.clear();
                }
                continue;
            }
            let kept = std::mem::take(&mut counts.kept);
            for d in kept {
                if tokio::task::block_in_place(|| {
                    changes::key_pending(&conn, *tbl, &d.key, st.position)
                })? {
                    pending += 1;
                    counts.count(d.kind, false);
                } else {
                    counts.kept.push(d);
                }
            }
        }
    }
    let mut results = Vec::new();
    for (t, counts) in tables.iter().zip(&found) {
        let mut examples = Vec::new();
        for d in counts.kept.iter().take(opts.examples) {
            examples.push(example(client, &conn, t, &opts.db, d).await?);
        }
        results.push(TableResult {
            table: t.source.name.clone(),
            rows_compared: counts.rows,
            missing_in_postgres: counts.missing,
            extra_in_postgres: counts.extra,
            differing: counts.differing,
            examples,
        });
    }
    let equal = results
        .iter()
        .all(|r| r.missing_in_postgres == 0 && r.extra_in_postgres == 0 && r.differing == 0);
    Ok(Report {
        tables: results,
        settled_by_recheck: settled,
        pending_not_applied: pending,
        equal,
        position,
    })
}

/// Prints the report for a person.
pub fn print_human(r: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for t in &r.tables {
        writeln!(
            out,
            "table {}: {} rows compared, {} missing in Postgres, {} extra in Postgres, {} differing",
            t.table, t.rows_compared, t.missing_in_postgres, t.extra_in_postgres, t.differing
        )?;
        for e in &t.examples {
            match &e.column {
                Some(c) => writeln!(
                    out,
                    "  {} column {}: SQLite {} | Postgres {}",
                    e.key,
                    c,
                    e.sqlite.as_deref().unwrap_or("(gone)"),
                    e.postgres.as_deref().unwrap_or("(gone)")
                )?,
                None => writeln!(out, "  {} {}", e.key, e.kind.words())?,
            }
        }
    }
    if r.pending_not_applied > 0 {
        writeln!(
            out,
            "{} row(s) have changes not applied yet (no daemon running); they are not counted as differences",
            r.pending_not_applied
        )?;
    }
    if r.settled_by_recheck > 0 {
        writeln!(
            out,
            "{} difference(s) were changes in flight and matched once the daemon caught up",
            r.settled_by_recheck
        )?;
    }
    writeln!(
        out,
        "verify: {}",
        if r.equal { "equal" } else { "NOT equal" }
    )
}
