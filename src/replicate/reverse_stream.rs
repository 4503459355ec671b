//! The reverse stream: after the cutover, the app's writes on Postgres follow back into the
//! SQLite file, so that `fallback` loses none of them.
//!
//! Each batch reads the oldest committed changes and the rows they name in one REPEATABLE
//! READ snapshot, writes them into SQLite in one short transaction that also records the
//! position, then marks exactly those changes applied on Postgres. Applying a key means "make
//! SQLite's row what Postgres has now", so it is idempotent: a kill between the SQLite commit
//! and the mark only applies the same keys again. A change committed late with a lower
//! sequence number is still pending, so it is never skipped. Applied changes are pruned after
//! [`KEEP_APPLIED`].
//!
//! Values Postgres did not change keep SQLite's exact bytes (each is compared through the
//! forward conversion); changed ones are decoded in the column's own form and proved to
//! convert back to the same Postgres value, or the stream stops and says which.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::{Client, GenericClient, IsolationLevel, Transaction};

use super::follower::{Applied, Connected, Direction, Ended, Follower};
use crate::error::{Error, ErrorKind, Result};
use crate::form::ColumnForm;
use crate::model::{OwnedValue, display_key};
use crate::pg::scan::Raw;
use crate::pg::{convert, decode, qualified, quote_ident, reverse, state};
use crate::phase::Phase;
use crate::plan::{Plan, TablePlan};
use crate::shutdown::Shutdown;
use crate::sqlite::form;
use crate::sqlite::{capture, restore};

/// How long applied changes stay in the changelog: `fallback` verifies the keys applied since
/// its pre-fence verify began, inside its window.
pub const KEEP_APPLIED: Duration = Duration::from_secs(3600);

/// Knobs of the reverse stream.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the two databases are.
    pub db: super::Databases,
    /// How often to look for new changes when there were none.
    pub poll_interval: Duration,
    /// Most changes per batch (one SQLite transaction).
    pub batch_changes: usize,
    /// The daemon's reverse stream, or the fallback's drain, which waits out an unreachable
    /// Postgres as long as it takes (its fence lapses with its lease).
    pub until: super::Until,
    /// Run by a fleet's daemon: woken by it, holding a connection only while there is work.
    pub link: Option<super::FleetLink>,
}

/// How the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A stop was asked for.
    Shutdown,
    /// Nothing left to apply (with `Until::CaughtUp`).
    CaughtUp,
    /// The fallback is recorded: SQLite is the database again.
    FellBack,
}

/// One moved table as the reverse stream writes it.
pub struct Table<'a> {
    plan: &'a TablePlan,
    shape: restore::Shape<'a>,
    /// Plan column index of each written column.
    columns: Vec<usize>,
    forms: Vec<ColumnForm>,
}

impl<'a> Table<'a> {
    /// The written columns' key positions as plan column indexes.
    fn key_columns(&self) -> Vec<usize> {
        self.shape.key.iter().map(|k| self.columns[*k]).collect()
    }

    /// Whether changes name rows by key (else the whole table is re-read).
    pub fn has_key(&self) -> bool {
        !self.shape.key.is_empty()
    }

    /// The plan of the table.
    pub fn plan(&self) -> &TablePlan {
        self.plan
    }

    /// The learned form of each written column.
    pub fn forms(&self) -> &[ColumnForm] {
        &self.forms
    }

    /// The plan of written column `i`.
    pub fn column(&self, i: usize) -> &crate::plan::ColumnPlan {
        &self.plan.columns[self.columns[i]]
    }
}

/// The reverse capture of each planned table (for the cutover to install).
pub fn captured(plan: &Plan) -> Vec<reverse::Captured> {
    plan.tables
        .iter()
        .map(|t| reverse::Captured {
            table: t.target.clone(),
            key: capture::key_columns(&t.source).map(|cols| {
                cols.iter()
                    .filter_map(|c| t.columns.iter().find(|p| &p.source == c))
                    .map(|p| p.target.clone())
                    .collect()
            }),
        })
        .collect()
}

/// Builds each table's shape and learns each column's form from the SQLite file.
pub fn tables<'a>(plan: &'a Plan, conn: &rusqlite::Connection) -> Result<Vec<Table<'a>>> {
    crate::sqlite::in_read_transaction(conn, "the column forms", || {
        plan.tables
            .iter()
            .map(|t| {
                let columns: Vec<usize> = t
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| {
                        !t.source
                            .columns
                            .iter()
                            .any(|s| s.name == c.source && s.generated)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let names: Vec<String> = columns
                    .iter()
                    .map(|i| t.columns[*i].source.clone())
                    .collect();
                let key = capture::key_columns(&t.source)
                    .unwrap_or_default()
                    .iter()
                    .map(|k| {
                        names.iter().position(|n| n == k).ok_or_else(|| {
                            Error::new(
                                ErrorKind::Schema,
                                format!(
                                    "key column {}.{k} is not copied to Postgres",
                                    t.source.name
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let typed: Vec<(&str, &crate::model::PgType)> = columns
                    .iter()
                    .map(|i| (t.columns[*i].source.as_str(), &t.columns[*i].conv.ty))
                    .collect();
                let forms = form::learn(conn, &t.source.name, &typed)?;
                Ok(Table {
                    plan: t,
                    shape: restore::Shape::new(&t.source, names, key),
                    columns,
                    forms,
                })
            })
            .collect()
    })
}

/// The keys `changes` name in one table, as SQLite holds them (for a verify by key).
pub async fn sqlite_keys(
    client: &impl GenericClient,
    schema: &str,
    t: &Table<'_>,
    keys: &[Vec<String>],
) -> Result<Vec<Vec<OwnedValue>>> {
    Ok(read_keys(client, schema, t, keys)
        .await?
        .into_iter()
        .map(|f| f.key)
        .collect())
}

/// What Postgres has for one changed key.
#[derive(Clone)]
struct Fetched {
    /// The key as SQLite holds it.
    key: Vec<OwnedValue>,
    /// The row's written columns, if the row exists.
    row: Option<Vec<Raw>>,
}

/// What one batch read from Postgres for one table.
enum Read {
    Keys(Vec<Fetched>),
    Whole(Vec<Vec<Raw>>),
}

fn conversion(t: &Table<'_>, key: &str, column: usize, e: convert::ConvError) -> Error {
    Error::new(
        ErrorKind::Conversion,
        format!(
            "table {}, row {key}, column {}: {} cannot come back to SQLite identically ({}). The reverse stream waits (position kept) and goes on once the value is changed on Postgres; `sqlite2pg check --reverse` lists every such value",
            t.plan.source.name,
            t.shape.columns[column],
            t.plan.columns[t.columns[column]].target,
            e.detail
        ),
    )
}

/// The rows Postgres has for `keys` (its JSON text per key column), with each key as SQLite
/// holds it.
async fn read_keys(
    tx: &impl GenericClient,
    schema: &str,
    t: &Table<'_>,
    keys: &[Vec<String>],
) -> Result<Vec<Fetched>> {
    let key_cols = t.key_columns();
    let n = key_cols.len();
    let cast = |i: usize| t.plan.columns[key_cols[i]].conv.ty.sql();
    let typed: Vec<String> = (0..n).map(|i| format!("u.k{i}::{}", cast(i))).collect();
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|i| format!("t.{}", quote_ident(&t.plan.columns[*i].target)))
        .collect();
    let join: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "t.{} = u.k{i}::{}",
                quote_ident(&t.plan.columns[key_cols[i]].target),
                cast(i)
            )
        })
        .collect();
    let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let sql = format!(
        "SELECT {}, t.ctid IS NOT NULL, {} FROM unnest({}) AS u({}) LEFT JOIN {} t ON {}",
        typed.join(", "),
        cols.join(", "),
        arrays.join(", "),
        names.join(", "),
        qualified(schema, &t.plan.target),
        join.join(" AND ")
    );
    let params: Vec<Vec<String>> = (0..n)
        .map(|i| {
            keys.iter()
                .map(|k| k.get(i).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|p| p as _).collect();
    let rows = tx.query(sql.as_str(), &refs).await.map_err(|e| {
        Error::from_pg(
            format!("cannot read changed rows of table {}", t.plan.target),
            e,
        )
    })?;
    let mut scratch = BytesMut::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut key = Vec::with_capacity(n);
        for (i, pos) in t.shape.key.iter().enumerate() {
            let raw: Raw = r.get(i);
            let Some(bytes) = raw.0 else {
                key.push(OwnedValue::Null);
                continue;
            };
            let conv = &t.plan.columns[key_cols[i]].conv;
            key.push(
                decode::decode_exact(&bytes, conv, &t.forms[*pos], &mut scratch)
                    .map_err(|e| conversion(t, "(key)", *pos, e))?,
            );
        }
        let exists: bool = r.get(n);
        let row = exists.then(|| (0..t.columns.len()).map(|i| r.get(n + 1 + i)).collect());
        out.push(Fetched { key, row });
    }
    Ok(out)
}

async fn read_whole(tx: &Transaction<'_>, schema: &str, t: &Table<'_>) -> Result<Vec<Vec<Raw>>> {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|i| quote_ident(&t.plan.columns[*i].target))
        .collect();
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM {}",
                cols.join(", "),
                qualified(schema, &t.plan.target)
            ),
            &[],
        )
        .await
        .map_err(|e| Error::from_pg(format!("cannot read table {}", t.plan.target), e))?;
    Ok(rows
        .iter()
        .map(|r| (0..cols.len()).map(|i| r.get(i)).collect())
        .collect())
}

/// The values SQLite should hold for a Postgres row: SQLite's own bytes where Postgres has
/// the same value, decoded (and proved exact) where it changed.
/// A row of SQLite whose date or time key names the same instant as `key` in another text
/// form (`T` for a space, other fraction digits, `Z`, an offset): the column's learned form
/// gives every key one spelling, but a column written by several hands holds several.
/// Candidates are written on the key's day or the day before or after (an offset of up to 14
/// hours, all SQLite reads, moves an instant by less than a day); the one whose key converts
/// to the same Postgres value is the row.
fn same_instant(
    tx: &rusqlite::Transaction<'_>,
    t: &Table<'_>,
    key: &[OwnedValue],
    scratch: &mut BytesMut,
) -> Result<Option<restore::Existing>> {
    let convs: Vec<&convert::ColumnConv> = t
        .key_columns()
        .iter()
        .map(|c| &t.plan.columns[*c].conv)
        .collect();
    let temporal = |c: &convert::ColumnConv| {
        matches!(
            c.ty,
            crate::model::PgType::Date
                | crate::model::PgType::Timestamp { .. }
                | crate::model::PgType::Timestamptz { .. }
        )
    };
    let mut any = false;
    let near: Vec<restore::Near> = key
        .iter()
        .zip(&convs)
        .map(|(v, c)| match v {
            OwnedValue::Text(b) if temporal(c) && b.len() >= 10 && b.is_ascii() => {
                any = true;
                let day = String::from_utf8_lossy(&b[..10]).into_owned();
                let (first, last) = days_around(&day).unwrap_or((day.clone(), day));
                restore::Near::Between { first, last }
            }
            other => restore::Near::Equal(other.clone()),
        })
        .collect();
    if !any {
        return Ok(None);
    }
    let mut encoded = |v: &OwnedValue, c: &convert::ColumnConv| -> Option<Vec<u8>> {
        scratch.clear();
        convert::encode(v.as_ref(), c, scratch).ok()?;
        Some(scratch.to_vec())
    };
    let wanted: Vec<Option<Vec<u8>>> = key.iter().zip(&convs).map(|(v, c)| encoded(v, c)).collect();
    for candidate in restore::read_near(tx, &t.shape, &near)? {
        let same = t
            .shape
            .key
            .iter()
            .zip(&convs)
            .zip(&wanted)
            .all(|((i, c), w)| w.is_some() && encoded(&candidate.values[*i], c) == *w);
        if same {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// The `YYYY-MM-DD` of the days before and after `day`, itself `YYYY-MM-DD`; none when it is
/// not a date, or its neighbours are not dates of four-digit years.
fn days_around(day: &str) -> Option<(String, String)> {
    let pg_days = crate::datetime::parse(day).ok()?.days?;
    let n = i64::from(pg_days) + crate::datetime::UNIX_TO_PG_DAYS;
    let text = |days: i64| {
        let (y, m, d) = crate::datetime::civil_from_days(days);
        (0..=9999)
            .contains(&y)
            .then(|| format!("{y:04}-{m:02}-{d:02}"))
    };
    Some((text(n - 1)?, text(n + 1)?))
}

fn merge(
    t: &Table<'_>,
    key: &[OwnedValue],
    existing: Option<&[OwnedValue]>,
    row: &[Raw],
    scratch: &mut BytesMut,
) -> Result<Vec<OwnedValue>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, raw) in row.iter().enumerate() {
        let conv = &t.plan.columns[t.columns[i]].conv;
        let old = existing.map(|e| &e[i]);
        let keep = old.filter(|old| {
            scratch.clear();
            match convert::encode(old.as_ref(), conv, scratch) {
                Ok(()) if matches!(old, OwnedValue::Null) => {
                    convert::same(&conv.ty, None, raw.0.as_deref())
                }
                Ok(()) => convert::same(&conv.ty, Some(&scratch[4..]), raw.0.as_deref()),
                Err(_) => false,
            }
        });
        out.push(match (keep, &raw.0) {
            (Some(old), _) => old.clone(),
            (None, None) => OwnedValue::Null,
            (None, Some(bytes)) => decode::decode_exact(bytes, conv, &t.forms[i], scratch)
                .map_err(|e| conversion(t, &display_key(&t.plan.key_names, key), i, e))?,
        });
    }
    Ok(out)
}

/// Writes one batch into SQLite, position included; returns rows written and deleted per
/// table.
fn write_batch(
    conn: &mut rusqlite::Connection,
    tables: &[Table<'_>],
    reads: &[(usize, Read)],
    seq: i64,
    changes: i64,
) -> Result<Vec<(String, u64, u64)>> {
    let tx = restore::begin(conn)?;
    let mut scratch = BytesMut::new();
    let mut counts = Vec::new();
    for (ti, read) in reads {
        let t = &tables[*ti];
        let (mut written, mut deleted) = (0, 0);
        let triggers = restore::lift_triggers(&tx, &t.plan.source.name)?;
        match read {
            Read::Whole(rows) => {
                restore::delete_all(&tx, &t.shape)?;
                for row in rows {
                    let values = merge(t, &[], None, row, &mut scratch)?;
                    restore::insert(&tx, &t.shape, None, &values)?;
                    written += 1;
                }
            }
            Read::Keys(fetched) => {
                let mut ops = Vec::new();
                for f in fetched {
                    let mut f = std::borrow::Cow::Borrowed(f);
                    // Under a NOCASE key, `Rust` finds the row `rust`: another row, as far as
                    // Postgres is concerned (its own change comes in this batch too).
                    let mut existing = restore::read(&tx, &t.shape, &f.key)?
                        .filter(|e| t.shape.same_key(&e.values, &f.key));
                    if existing.is_none()
                        && let Some(found) = same_instant(&tx, t, &f.key, &mut scratch)?
                    {
                        // The row is there under another spelling of its date key: that
                        // row is the one Postgres changed.
                        f.to_mut().key = t
                            .shape
                            .key
                            .iter()
                            .map(|i| found.values[*i].clone())
                            .collect();
                        existing = Some(found);
                    }
                    let new = match &f.row {
                        Some(row) => Some(merge(
                            t,
                            &f.key,
                            existing.as_ref().map(|e| e.values.as_slice()),
                            row,
                            &mut scratch,
                        )?),
                        None => None,
                    };
                    if existing.as_ref().map(|e| &e.values) != new.as_ref() {
                        ops.push((f, existing, new));
                    }
                }
                written += ops.iter().filter(|o| o.2.is_some()).count() as u64;
                deleted += ops.iter().filter(|o| o.2.is_none()).count() as u64;
                // Changed columns in place, deletes first (a key that changed only in case
                // under a NOCASE key is a delete and an insert). If SQLite refuses (two rows
                // swapped a unique value in one Postgres transaction), all deletes first,
                // then all inserts; the savepoint that allows the second try costs a copy of
                // every page written, so only tables with such a constraint pay it.
                let in_place = || {
                    let order = |o: &&(
                        std::borrow::Cow<'_, Fetched>,
                        Option<restore::Existing>,
                        Option<Vec<OwnedValue>>,
                    )| match (&o.1, &o.2) {
                        (Some(_), None) => 0,
                        (Some(_), Some(_)) => 1,
                        _ => 2,
                    };
                    let mut sorted: Vec<_> = ops.iter().collect();
                    sorted.sort_by_key(order);
                    for (f, existing, new) in sorted {
                        match (existing, new) {
                            (None, Some(values)) => restore::insert(&tx, &t.shape, None, values)?,
                            (Some(_), None) => restore::delete(&tx, &t.shape, &f.key)?,
                            (Some(old), Some(values)) => {
                                let changed: Vec<usize> = (0..values.len())
                                    .filter(|i| old.values[*i] != values[*i])
                                    .collect();
                                restore::update(&tx, &t.shape, &f.key, &changed, values)?
                            }
                            (None, None) => {}
                        }
                    }
                    Ok(())
                };
                let in_place = if t.shape.may_conflict() {
                    restore::attempt(&tx, in_place)
                } else {
                    in_place()
                };
                if let Err(e) = in_place {
                    if e.kind() != ErrorKind::Schema || !t.shape.may_conflict() {
                        return Err(e);
                    }
                    for (f, existing, _) in &ops {
                        if existing.is_some() {
                            restore::delete(&tx, &t.shape, &f.key)?;
                        }
                    }
                    for (_, existing, new) in ops {
                        if let Some(values) = new {
                            restore::insert(
                                &tx,
                                &t.shape,
                                existing.and_then(|e| e.rowid),
                                &values,
                            )?;
                        }
                    }
                }
            }
        }
        restore::restore_triggers(&tx, &triggers)?;
        counts.push((t.plan.source.name.clone(), written, deleted));
    }
    restore::set_position(&tx, seq, changes)?;
    tx.commit()
        .map_err(|e| Error::from_sqlite("cannot commit a reverse batch to SQLite", e))?;
    Ok(counts)
}

/// One batch read from Postgres, to write into SQLite.
struct Batch {
    /// Sequence numbers of its changes.
    seqs: Vec<i64>,
    /// The newest of them.
    newest: i64,
    reads: Vec<(usize, Read)>,
}

/// What carries over between batches: the next batch, read while this one was written, and
/// the changes written to SQLite but not yet marked applied on Postgres.
#[derive(Default)]
struct Carry {
    next: Option<Batch>,
    unmarked: Vec<i64>,
}

/// Reads the oldest pending changes (but those in `skip`, written and not yet marked) and
/// the rows they name, in one snapshot.
async fn read_batch(
    client: &mut Client,
    tables: &[Table<'_>],
    opts: &Options,
    skip: &[i64],
) -> Result<Option<Batch>> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| Error::from_pg("cannot start reading the reverse changelog", e))?;
    let changes = reverse::pending(&tx, &opts.db.tenant, opts.batch_changes as i64, skip).await?;
    if changes.is_empty() {
        tx.commit()
            .await
            .map_err(|e| Error::from_pg("cannot end a read of the reverse changelog", e))?;
        return Ok(None);
    }
    // Distinct keys per table; a whole-table change covers its keys.
    let mut by_table: BTreeMap<usize, (bool, Vec<Vec<String>>)> = BTreeMap::new();
    for c in &changes {
        let Some(ti) = tables.iter().position(|t| t.plan.target == c.table) else {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "Postgres recorded a change to table {}, which this sqlite2pg does not move back (renamed, or excluded since the cutover?): restore the table list the cutover used",
                    c.table
                ),
            ));
        };
        let entry = by_table.entry(ti).or_default();
        match &c.key {
            Some(k) if tables[ti].has_key() => entry.1.push(k.clone()),
            _ => entry.0 = true,
        }
    }
    let mut reads = Vec::new();
    for (ti, (whole, mut keys)) in by_table {
        let t = &tables[ti];
        if whole {
            reads.push((ti, Read::Whole(read_whole(&tx, &opts.db.schema, t).await?)));
        } else {
            keys.sort();
            keys.dedup();
            reads.push((
                ti,
                Read::Keys(read_keys(&tx, &opts.db.schema, t, &keys).await?),
            ));
        }
    }
    tx.commit()
        .await
        .map_err(|e| Error::from_pg("cannot end a read of the reverse changelog", e))?;
    Ok(Some(Batch {
        newest: changes.iter().map(|c| c.seq).max().unwrap_or(0),
        seqs: changes.iter().map(|c| c.seq).collect(),
        reads,
    }))
}

/// Writes one batch into SQLite while, on Postgres, the previous one is marked applied and
/// the next one is read: the two databases work at the same time. `Ok(0)` when nothing was
/// pending (everything written is marked applied by then).
async fn one_batch(
    client: &mut Client,
    conn: &mut rusqlite::Connection,
    tables: &[Table<'_>],
    opts: &Options,
    carry: &mut Carry,
) -> Result<usize> {
    let started = Instant::now();
    let unmarked = std::mem::take(&mut carry.unmarked);
    let batch = match carry.next.take() {
        Some(b) => b,
        None => match read_batch(client, tables, opts, &unmarked).await? {
            Some(b) => b,
            None => {
                if !unmarked.is_empty() {
                    reverse::applied(&*client, &unmarked).await?;
                }
                return Ok(0);
            }
        },
    };
    let handle = tokio::runtime::Handle::current();
    let (written, next) = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let t0 = Instant::now();
                let r = write_batch(
                    conn,
                    tables,
                    &batch.reads,
                    batch.newest,
                    batch.seqs.len() as i64,
                );
                (r, t0.elapsed())
            });
            let t0 = Instant::now();
            let next = handle.block_on(async {
                if !unmarked.is_empty() {
                    reverse::applied(&*client, &unmarked).await?;
                }
                read_batch(client, tables, opts, &batch.seqs).await
            });
            let pg = t0.elapsed();
            let written = writer.join().map(|(r, sqlite)| {
                tracing::debug!(
                    changes = batch.seqs.len(),
                    sqlite_ms = sqlite.as_secs_f64() * 1000.0,
                    postgres_ms = pg.as_secs_f64() * 1000.0,
                    "reverse batch"
                );
                r
            });
            (written, next)
        })
    });
    let per_table = written.map_err(|_| {
        Error::new(
            ErrorKind::SourceUnreadable,
            "the SQLite writer thread panicked",
        )
    })??;
    let n = batch.seqs.len();
    carry.unmarked = batch.seqs;
    carry.next = next?;
    crate::metrics::batch_applied(
        &per_table,
        n as u64,
        started.elapsed().as_secs_f64(),
        batch.newest,
    );
    Ok(n)
}

/// The once-a-second look: the lag and SQLite's fence for metrics, old applied changes
/// pruned; whether the fallback is recorded.
async fn look(client: &Client, tenant: &str, conn: &mut rusqlite::Connection) -> Result<bool> {
    // The fence is permanent now; the forward stream's last reading was a lease (best
    // effort: a busy file skips it).
    if let Ok(f) = tokio::task::block_in_place(|| capture::fence_state(conn)) {
        capture::report_fence(f.as_ref());
    }
    let (pending, age) = reverse::backlog(client, tenant).await?;
    crate::metrics::reverse_lag(pending, age.unwrap_or(0.0).max(0.0));
    if reverse::fallback_load(client, tenant).await?.is_some() {
        return Ok(true);
    }
    reverse::prune(client, tenant, KEEP_APPLIED, 10_000).await?;
    Ok(false)
}

/// A connection that hears the capture's notifications (`None` while Postgres is away).
async fn listen(opts: &Options) -> Option<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let (client, rx) = crate::pg::connect_listening(&opts.db.target).await.ok()?;
    client
        .batch_execute(&format!("LISTEN {}", reverse::CHANNEL))
        .await
        .ok()?;
    Some((client, rx))
}

/// The reverse direction: Postgres' changelog into SQLite.
struct Reverse<'a> {
    opts: &'a Options,
    tables: Vec<Table<'a>>,
    /// Writes SQLite.
    conn: rusqlite::Connection,
    client: Option<crate::pg::pool::Session>,
    /// The connection that hears the capture's notifications (`None` while Postgres is away,
    /// and in a fleet's daemon, which hears them for every tenant).
    wake: Option<(Client, tokio::sync::mpsc::UnboundedReceiver<String>)>,
    carry: Carry,
    last_look: Instant,
    /// Connected since the last batch: look before applying anything.
    fresh: bool,
    /// A fleet's tenant: a change of its was announced since it last asked (it has nothing
    /// to read in SQLite that would tell, so without it, it stays without a connection).
    announced: bool,
}

/// Why the reverse stream ends by itself: the fallback is recorded.
struct FellBack;

impl Direction for Reverse<'_> {
    type End = FellBack;

    async fn connect(&mut self) -> Result<Connected> {
        let client = crate::pg::pool::session(&self.opts.db.target).await?;
        // The forward stream's session, just closed by this same daemon, may hold the lock a
        // moment longer; a one-shot drain (a fallback's) asks once.
        let patience = match self.opts.until {
            super::Until::CaughtUp { .. } => Duration::ZERO,
            super::Until::Stopped => Duration::from_secs(5),
        };
        if !state::lock_within(&client, &self.opts.db.tenant, patience).await? {
            crate::pg::pool::give_back(client, &self.opts.db.target).await;
            return Ok(Connected::LockHeld);
        }
        self.client = Some(client);
        self.fresh = true;
        Ok(Connected::Ready)
    }

    fn disconnect(&mut self) {
        self.client = None;
        // Written but unmarked changes stay pending: applied again, to the same rows.
        self.carry = Carry::default();
    }

    async fn release(&mut self) {
        self.carry = Carry::default();
        if let Some(client) = self.client.take() {
            crate::pg::pool::give_back(client, &self.opts.db.target).await;
        }
    }

    async fn apply(&mut self, _stop: &Shutdown) -> Result<Applied<FellBack>> {
        let Some(client) = self.client.as_mut() else {
            return Err(Error::new(
                ErrorKind::State,
                "the reverse stream applied while not connected",
            ));
        };
        // Once a second, even while busy, and first on every connection: the lag, pruning,
        // and whether the fallback is recorded. A fallback may have been recorded while this
        // stream waited for the run lock (its own drain held it): its capture is gone then,
        // and that is the fallback, not a cutover made without capture.
        if self.fresh || self.last_look.elapsed() >= Duration::from_secs(1) {
            self.last_look = Instant::now();
            if look(client, &self.opts.db.tenant, &mut self.conn).await? {
                crate::metrics::set_phase(Phase::FellBack);
                return Ok(Applied::End(FellBack));
            }
            if std::mem::take(&mut self.fresh)
                && !reverse::capture_installed(&**client, &self.opts.db.schema).await?
            {
                // A fallback commits its record with the end of capture: one that committed
                // between the look above and this read is seen by a look after it (found by
                // the differential tester's fleet mode: a daemon restarted during a fallback).
                if look(client, &self.opts.db.tenant, &mut self.conn).await? {
                    crate::metrics::set_phase(Phase::FellBack);
                    return Ok(Applied::End(FellBack));
                }
                return Err(Error::new(
                    ErrorKind::State,
                    "the cutover installed no capture on Postgres (it was one way: [fleet] one_way = true when it ran; or an sqlite2pg older than 0.3.0 made it): writes made there since cannot be followed back",
                ));
            }
        }
        let applied = one_batch(
            client,
            &mut self.conn,
            &self.tables,
            self.opts,
            &mut self.carry,
        )
        .await;
        if applied.is_err() {
            self.carry = Carry::default();
        }
        Ok(match applied? {
            0 => Applied::Nothing,
            _ => Applied::Batch,
        })
    }

    async fn idle(&mut self) -> Result<Option<FellBack>> {
        Ok(None)
    }

    async fn changed(&mut self) {
        if let Some(link) = &self.opts.link {
            link.pg_changed.notified().await;
            self.announced = true;
            return;
        }
        // Woken by the commit of a change of this tenant's; without a listening connection
        // (gone with Postgres), listen again and let the poll interval wake the stream
        // meanwhile.
        match &mut self.wake {
            Some((_, rx)) => {
                while let Some(tenant) = rx.recv().await {
                    if tenant == self.opts.db.tenant {
                        return;
                    }
                }
                self.wake = None;
            }
            None => self.wake = listen(self.opts).await,
        }
        std::future::pending::<()>().await;
    }

    fn worth_connecting(&mut self) -> bool {
        // Postgres announces each commit of the tenant's (and its fallback, and a listener
        // that connects again announces everyone): nothing else is worth a connection.
        std::mem::take(&mut self.announced)
    }
}

/// Follows Postgres back into SQLite until a stop, the fallback, or (with
/// `Until::CaughtUp`) an empty changelog. Reconnects by itself while Postgres is away.
pub async fn run(plan: &Plan, opts: &Options, shutdown: Shutdown) -> Result<End> {
    let conn =
        tokio::task::block_in_place(|| restore::open(&opts.db.source, opts.db.busy_timeout))?;
    let tables = tokio::task::block_in_place(|| tables(plan, &conn))?;
    crate::metrics::set_phase(Phase::ReverseStreaming);
    crate::metrics::reverse_started();
    tracing::info!(
        tables = tables.len(),
        "following Postgres back into SQLite (the reverse stream)"
    );
    let mut reverse = Reverse {
        opts,
        tables,
        conn,
        client: None,
        wake: match opts.link {
            Some(_) => None,
            None => listen(opts).await,
        },
        carry: Carry::default(),
        last_look: Instant::now() - Duration::from_secs(10),
        fresh: false,
        announced: false,
    };
    let mut follower =
        Follower::new(opts.until, opts.poll_interval, shutdown).releasing(opts.link.is_some());
    Ok(match follower.run(&mut reverse).await? {
        Ended::Stopped => End::Shutdown,
        Ended::CaughtUp => End::CaughtUp,
        Ended::By(FellBack) => End::FellBack,
    })
}
