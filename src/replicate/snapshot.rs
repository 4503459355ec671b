//! The snapshot: every table copied in key order, chunk by chunk. A reader thread encodes each
//! chunk (one short SQLite read transaction) while the previous one is written; each chunk is
//! one Postgres transaction holding the rows and the new position, so a killed run resumes at
//! its last committed chunk with nothing lost or doubled.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::progress::Progress;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Follow, OwnedValue, SqlValue, display_key};
use crate::pg::state::{self, Phase};
use crate::pg::{self, convert, copy, ddl, foreign_keys, qualified, quote_ident};
use crate::phase::Phase as RunPhase;
use crate::plan::{Plan, TablePlan, TableSpec};
use crate::sqlite::{self, reader};

/// Knobs of a snapshot run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub source: PathBuf,
    /// Target schema.
    pub schema: String,
    /// The tenant the progress is kept under ('' for a single file).
    pub tenant: String,
    /// Which rows of the target tables are this tenant's.
    pub rows: pg::Rows,
    /// Most rows per chunk.
    pub chunk_rows: usize,
    /// Longest a chunk's SQLite read transaction may stay open.
    pub chunk_time: Duration,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Source tables whose definition changed since capture last saw them (`Installed::reshaped`).
    pub reshaped: Vec<String>,
    /// Turns true on SIGTERM/SIGINT: the copy stops after the chunk in flight (each chunk is
    /// committed with its position, so the next run resumes there).
    pub stop: crate::shutdown::Shutdown,
    /// The target, to cancel a statement in flight when stopped.
    pub target: crate::conninfo::TargetUrl,
}

/// What a snapshot did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// (source table, rows now in the target for it).
    pub tables: Vec<(String, i64)>,
    /// Warnings raised on the way (indexes that could not be built).
    pub warnings: Vec<String>,
    /// Foreign keys waiting in the state schema for cutover.
    pub foreign_keys_kept: usize,
    /// Asked to stop before the copy was done (the next run resumes it).
    pub stopped: bool,
}

/// The DDL a snapshot would run, for `--dry-run`.
pub fn ddl_script(plan: &Plan, schema: &str) -> String {
    let mut out = String::new();
    for (t, spec) in plan.created() {
        out.push_str(&ddl::create_table(schema, &t.target, &spec.column_defs));
        out.push_str(";\n");
    }
    out.push_str("-- after the bulk load:\n");
    for (t, spec) in plan.created() {
        for s in post_load_statements(t, spec, schema) {
            out.push_str(&s);
            out.push_str(";\n");
        }
    }
    let fks: Vec<String> = plan
        .created()
        .flat_map(|(t, spec)| {
            spec.foreign_keys.iter().map(|fk| {
                format!(
                    "--   ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID;\n",
                    qualified(schema, &t.target),
                    pg::quote_ident(&fk.name),
                    ddl::foreign_key_clause(schema, fk)
                )
            })
        })
        .collect();
    if !fks.is_empty() {
        out.push_str(
            "-- foreign keys wait in sqlite2pg.foreign_key while streaming; cutover adds:\n",
        );
        out.extend(fks);
    }
    out
}

fn post_load_statements(t: &TablePlan, spec: &TableSpec, schema: &str) -> Vec<String> {
    let mut v = Vec::new();
    if !spec.primary_key.is_empty() {
        v.push(ddl::add_primary_key(schema, &t.target, &spec.primary_key));
    }
    for ix in &spec.indexes {
        v.push(ddl::create_index(schema, &t.target, ix));
    }
    for c in &spec.checks {
        if let Ok(pg) = &c.pg {
            v.push(ddl::add_check(schema, &t.target, &c.name, pg));
        }
    }
    v
}

struct Chunk {
    table: usize,
    rows: u64,
    last_key: Option<Vec<OwnedValue>>,
    finished: bool,
    data: BytesMut,
    /// For a table followed by row images: the changelog position and schema version its
    /// read saw (the stream's handoff, see `state::ImageHandoff`).
    mark: Option<(i64, i64)>,
}

fn pg_err(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| Error::from_pg(what, e)
}

/// Where one table's copy stands as a pass begins.
#[derive(Debug, Clone)]
struct TableCopy {
    /// What is left to copy.
    left: Left,
    /// Rows copied so far, for the progress line.
    done_rows: u64,
    /// Rows SQLite holds, for the progress line.
    total: u64,
}

/// What is left of one table's copy.
#[derive(Debug, Clone)]
enum Left {
    /// Nothing: it is copied.
    Nothing,
    /// The rows after this key (`None`: from the first row).
    After(Option<Vec<OwnedValue>>),
}

/// Runs (or resumes) the snapshot of every planned table.
pub async fn run(client: &mut Client, plan: &Plan, opts: &Options) -> Result<Summary> {
    crate::metrics::set_phase(RunPhase::Snapshot);
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .map_err(pg_err("cannot configure the Postgres session".into()))?;
    let mut summary = Summary::default();
    let source = sqlite::open_read_only_now(&opts.source, opts.busy_timeout)?;
    let missing: bool = client
        .query_one("SELECT to_regnamespace($1) IS NULL", &[&opts.schema])
        .await
        .map_err(pg_err("cannot look for the target schema".into()))?
        .get(0);
    if !opts.tenant.is_empty() && missing {
        // A fleet's layout is sqlite2pg's: each tenant's schema is made here (under Citus'
        // schema-based sharding, that makes it a distributed schema of its own). A single
        // file's schema is the app's, made by the app.
        let fail = || {
            format!(
                "cannot create schema {} for tenant {}",
                opts.schema, opts.tenant
            )
        };
        let tx = client.transaction().await.map_err(pg_err(fail()))?;
        // A shared schema is made by the first of the tenants that start at once (two
        // sessions' CREATE SCHEMA IF NOT EXISTS can collide); a tenant's own is its alone.
        if opts.rows != pg::Rows::All {
            lock_shared(&tx, &opts.schema, "").await?;
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            crate::model::quote_ident(&opts.schema)
        ))
        .await
        .map_err(pg_err(fail()))?;
        tx.commit().await.map_err(pg_err(fail()))?;
    }

    // Record a start for each table (creating owned tables in the same transaction), and find
    // where each one resumes.
    let mut copies: Vec<TableCopy> = Vec::new();
    // Shared tables are every tenant's: one tenant's migration is not followed there (the
    // plan names the difference, and this tenant waits until the tables agree).
    if opts.rows == pg::Rows::All {
        follow_shape(client, plan, &opts.tenant, &opts.schema, &opts.reshaped).await?;
    }
    // Before any row moves: a copy in key order can reference rows not copied yet, and while
    // streaming Postgres must accept every orphan SQLite holds. Before the tables' starts too:
    // a seeded table's TRUNCATE, a shared table's leftover rows of this tenant, go only
    // without the keys that point at them.
    take_keys_aside(client, plan, opts).await?;
    for t in &plan.tables {
        let total = sqlite::read_now(&source, opts.busy_timeout, |c| {
            sqlite::schema::count_rows(c, &t.source.name)
        })?;
        let (left, done_rows) = match state::load(client, &opts.tenant, &t.source.name).await? {
            None => {
                let tx = client.transaction().await.map_err(pg_err(format!(
                    "cannot start a transaction for table {}",
                    t.target
                )))?;
                if let Some(spec) = t.spec() {
                    create_table(&tx, opts, t, spec).await?;
                } else {
                    let q = qualified(&opts.schema, &t.target);
                    // Rows the app's migrations seeded (content types, permissions, a version
                    // row, defaults) give way to SQLite's: SQLite's foreign keys point at
                    // SQLite's ids. The migration state was compared when the plan was made (a
                    // skew stops the run before this), and `check` lists these tables.
                    let seeded: i64 = tx
                        .query_one(&format!("SELECT count(*) FROM {q}"), &[])
                        .await
                        .map_err(pg_err(format!("cannot read target table {}", t.target)))?
                        .get(0);
                    if seeded > 0 {
                        tracing::warn!(
                            table = %t.target,
                            rows = seeded,
                            "the target table held rows (seeded by the app's migrations?); they are replaced by SQLite's"
                        );
                        tx.batch_execute(&format!("TRUNCATE {q}"))
                            .await
                            .map_err(pg_err(format!("cannot empty target table {}", t.target)))?;
                    }
                }
                state::start(
                    &tx,
                    &opts.tenant,
                    &t.source.name,
                    &opts.schema,
                    &t.target,
                    t.spec().is_some(),
                    total as i64,
                )
                .await?;
                tx.commit().await.map_err(pg_err(format!(
                    "cannot commit the start of table {}",
                    t.target
                )))?;
                (Left::After(None), 0)
            }
            Some(st) if st.phase == Phase::Copying => {
                (Left::After(st.last_key), st.rows_copied as u64)
            }
            Some(st) => (Left::Nothing, st.rows_copied as u64),
        };
        copies.push(TableCopy {
            left,
            done_rows,
            total,
        });
    }
    drop(source);
    // In shared tables, the last streaming tenant's cutover puts the keys back when no other
    // tenant's tables are recorded (`state::not_cut_over_in`); this tenant's are recorded only
    // now, and a cutover that read just before may have put them back since the first pass.
    if opts.rows != pg::Rows::All {
        take_keys_aside(client, plan, opts).await?;
    }

    if !copy_tables(client, plan, opts, copies.clone()).await? {
        summary.stopped = true;
        return Ok(summary);
    }
    // A VACUUM while a table followed by row images was being copied renumbers the rowids its
    // chunks are cut by: its copy is torn, and is taken again (rare, and the only safe answer).
    loop {
        let mut torn = Vec::new();
        for (i, t) in plan.tables.iter().enumerate() {
            if t.source.follow() == Follow::ByImage
                && state::image_copy_torn(&*client, &opts.tenant, &t.source.name).await?
            {
                torn.push(i);
            }
        }
        if torn.is_empty() {
            break;
        }
        let mut again: Vec<TableCopy> = copies
            .iter()
            .map(|c| TableCopy {
                left: Left::Nothing,
                done_rows: 0,
                total: c.total,
            })
            .collect();
        for i in torn {
            let t = &plan.tables[i];
            tracing::warn!(table = %t.source.name, "the SQLite file changed shape (VACUUM?) while this table was copied; copying it again");
            let tx = client.transaction().await.map_err(pg_err(format!(
                "cannot start a transaction for table {}",
                t.target
            )))?;
            empty_table(&tx, opts, t).await.map_err(pg_err(format!(
                "cannot empty table {} to copy it again",
                t.target
            )))?;
            state::restart_copy(&tx, &opts.tenant, &t.source.name).await?;
            tx.commit().await.map_err(pg_err(format!(
                "cannot commit the restart of table {}",
                t.target
            )))?;
            again[i].left = Left::After(None);
        }
        if !copy_tables(client, plan, opts, again).await? {
            summary.stopped = true;
            return Ok(summary);
        }
    }
    // Keys and indexes of a big table take a while: a stop cancels the statement in flight,
    // its transaction rolls back, and the next run builds them again.
    let token = client.cancel_token();
    let stopped = {
        let finish = async {
            build_indexes(
                client,
                plan,
                &opts.tenant,
                &opts.rows,
                &opts.schema,
                &mut summary,
            )
            .await?;
            finish_tables(client, plan, &opts.tenant, &opts.schema, &opts.rows).await
        };
        tokio::pin!(finish);
        tokio::select! {
            r = &mut finish => { r?; false }
            _ = opts.stop.wait() => true,
        }
    };
    if stopped {
        pg::cancel(token, &opts.target).await;
        summary.stopped = true;
        return Ok(summary);
    }
    summary.foreign_keys_kept = foreign_keys::kept(&*client, &opts.schema).await?.len();
    for t in &plan.tables {
        let st = state::load(client, &opts.tenant, &t.source.name).await?;
        summary.tables.push((
            t.source.name.clone(),
            st.map(|s| s.rows_copied).unwrap_or(0),
        ));
    }
    Ok(summary)
}

/// Tables sqlite2pg created follow the app's schema changes in SQLite: columns added (with the
/// same default, so existing rows read the same on both sides) or dropped, types changed
/// (widened, or changed with Postgres' cast; the re-synchronization that every definition
/// change asks for then rewrites each value through sqlite2pg's own conversion), NOT NULL
/// dropped, and for `reshaped` tables (whose definition changed) defaults, NOT NULL added and
/// indexes. Each table in one transaction. A change Postgres cannot make (rows that break a
/// narrowed type) stops with the table and column; one that is only stricter than SQLite
/// needs (a NOT NULL or index that stale rows break) is left for the next pass.
async fn follow_shape(
    client: &mut Client,
    plan: &Plan,
    tenant: &str,
    schema: &str,
    reshaped: &[String],
) -> Result<()> {
    let existing = crate::pg::catalog::read_tables(client, schema).await?;
    for (t, spec) in plan.created() {
        let Some(tt) = existing.get(&t.target) else {
            continue;
        };
        if state::load(client, tenant, &t.source.name).await?.is_none() {
            continue;
        }
        let q = qualified(schema, &t.target);
        let key: Vec<&String> = spec.primary_key.iter().collect();
        let mut must: Vec<(String, String)> = Vec::new();
        for tc in &tt.columns {
            if !spec.column_defs.iter().any(|c| c.name == tc.name) {
                must.push((
                    format!("ALTER TABLE {q} DROP COLUMN {}", quote_ident(&tc.name)),
                    format!("drop column {} (gone from SQLite)", tc.name),
                ));
            }
        }
        let mut stricter: Vec<(String, String)> = Vec::new();
        let full = reshaped.contains(&t.source.name);
        for c in &spec.column_defs {
            let col = quote_ident(&c.name);
            let Some(tc) = tt.columns.iter().find(|tc| tc.name == c.name) else {
                must.push((
                    ddl::add_column(schema, &t.target, c),
                    format!("add column {}", c.name),
                ));
                continue;
            };
            if let Some(g) = &c.generated {
                // Computed by Postgres now; an earlier build made it a plain column that
                // the copy no longer writes: it is made again, generated (it moves last).
                if !tc.generated {
                    must.push((
                        format!(
                            "ALTER TABLE {q} DROP COLUMN {col}, ADD COLUMN {col} {} GENERATED ALWAYS AS ({g}) STORED",
                            c.ty.sql()
                        ),
                        format!("make column {} a generated column", c.name),
                    ));
                }
                continue;
            }
            // Key and identity columns too: 0.1.0 made INTEGER keys 32-bit.
            if tc.ty != c.ty {
                must.push((
                    format!(
                        "ALTER TABLE {q} ALTER COLUMN {col} TYPE {ty} USING {col}::{ty}",
                        ty = c.ty.sql()
                    ),
                    format!(
                        "change column {} from {} to {}",
                        c.name,
                        tc.ty.sql(),
                        c.ty.sql()
                    ),
                ));
            }
            if c.identity || key.contains(&&c.name) {
                continue;
            }
            if tc.not_null && !c.not_null {
                must.push((
                    format!("ALTER TABLE {q} ALTER COLUMN {col} DROP NOT NULL"),
                    format!("drop NOT NULL on column {}", c.name),
                ));
            }
            if !full {
                continue;
            }
            must.push((
                match &c.default {
                    Some(d) => format!("ALTER TABLE {q} ALTER COLUMN {col} SET DEFAULT {d}"),
                    None => format!("ALTER TABLE {q} ALTER COLUMN {col} DROP DEFAULT"),
                },
                format!("set the default of column {}", c.name),
            ));
            if c.not_null && !tc.not_null {
                stricter.push((
                    format!("ALTER TABLE {q} ALTER COLUMN {col} SET NOT NULL"),
                    format!("set NOT NULL on column {}", c.name),
                ));
            }
        }
        if full {
            index_changes(client, schema, t, spec, &mut must, &mut stricter).await?;
            check_changes(client, schema, t, spec, &mut must, &mut stricter).await?;
        }
        if must.is_empty() && stricter.is_empty() {
            continue;
        }
        let tx = client.transaction().await.map_err(pg_err(format!(
            "cannot start a transaction for table {}",
            t.target
        )))?;
        for (sql, what) in &must {
            tx.batch_execute(sql).await.map_err(|e| {
                Error::new(
                    ErrorKind::Schema,
                    format!(
                        "table {}: the app changed its definition in SQLite, and Postgres cannot follow: {what}: {}. Make the change in Postgres by hand (ALTER TABLE {q} ...), then sqlite2pg goes on at its next run",
                        t.source.name,
                        db_message(&e)
                    ),
                )
            })?;
            tracing::info!(table = %t.source.name, change = %what, "followed the app's schema change");
        }
        for (sql, what) in &stricter {
            tx.batch_execute("SAVEPOINT stricter")
                .await
                .map_err(pg_err("cannot set a savepoint".into()))?;
            match tx.batch_execute(sql).await {
                Ok(()) => {
                    tracing::info!(table = %t.source.name, change = %what, "followed the app's schema change")
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT stricter")
                        .await
                        .map_err(pg_err("cannot roll back to a savepoint".into()))?;
                    tracing::warn!(table = %t.source.name, change = %what, reason = %db_message(&e), "not followed yet: rows in Postgres break it until the table is re-synchronized; tried again at the next schema change or run");
                }
            }
        }
        tx.commit().await.map_err(pg_err(format!(
            "cannot commit the schema change of table {}",
            t.target
        )))?;
    }
    Ok(())
}

/// The names `sql` lists for table `t` (`$1` the schema, `$2` the table).
async fn names_on_table(
    client: &Client,
    sql: &str,
    schema: &str,
    t: &TablePlan,
    what: &str,
) -> Result<Vec<String>> {
    Ok(client
        .query(sql, &[&schema, &t.target])
        .await
        .map_err(pg_err(format!(
            "cannot read the {what} of table {}",
            t.target
        )))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Indexes of a created table that the app added or dropped in SQLite (the primary key and
/// sqlite2pg's own are left alone): drops are certain, creations only stricter.
async fn index_changes(
    client: &Client,
    schema: &str,
    t: &TablePlan,
    spec: &TableSpec,
    must: &mut Vec<(String, String)>,
    stricter: &mut Vec<(String, String)>,
) -> Result<()> {
    let have = names_on_table(
        client,
        "SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND NOT i.indisprimary",
        schema,
        t,
        "indexes",
    )
    .await?;
    let want: Vec<(String, String, String)> = spec
        .indexes
        .iter()
        .map(|ix| {
            (
                ix.name.clone(),
                ddl::create_index(schema, &t.target, ix),
                format!("create index {}", ix.name),
            )
        })
        .collect();
    let drop = |name: &str| {
        (
            format!("DROP INDEX {}", qualified(schema, name)),
            format!("drop index {name} (gone from SQLite)"),
        )
    };
    reconcile(&have, &want, drop, must, stricter);
    Ok(())
}

/// CHECK constraints of a created table that the app added or dropped in SQLite (a table
/// recreated by Alembic's batch mode): drops are certain, additions only stricter.
async fn check_changes(
    client: &Client,
    schema: &str,
    t: &TablePlan,
    spec: &TableSpec,
    must: &mut Vec<(String, String)>,
    stricter: &mut Vec<(String, String)>,
) -> Result<()> {
    let have = names_on_table(
        client,
        "SELECT k.conname::text FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND k.contype = 'c'",
        schema,
        t,
        "CHECK constraints",
    )
    .await?;
    let q = qualified(schema, &t.target);
    let want: Vec<(String, String, String)> = spec
        .checks
        .iter()
        .filter_map(|c| {
            let pg = c.pg.as_ref().ok()?;
            Some((
                c.name.clone(),
                ddl::add_check(schema, &t.target, &c.name, pg),
                format!("add CHECK ({}) as {}", c.source, c.name),
            ))
        })
        .collect();
    let drop = |name: &str| {
        (
            format!("ALTER TABLE {q} DROP CONSTRAINT {}", quote_ident(name)),
            format!("drop CHECK constraint {name} (gone from SQLite)"),
        )
    };
    reconcile(&have, &want, drop, must, stricter);
    Ok(())
}

/// Named objects of a created table brought to what SQLite declares now: `want` holds (name,
/// the SQL that adds it, what to log). One gone from SQLite is dropped (certain); a new one is
/// added (only stricter: it may refuse rows).
fn reconcile(
    have: &[String],
    want: &[(String, String, String)],
    drop: impl Fn(&str) -> (String, String),
    must: &mut Vec<(String, String)>,
    stricter: &mut Vec<(String, String)>,
) {
    for name in have
        .iter()
        .filter(|n| !want.iter().any(|(w, _, _)| w == *n))
    {
        must.push(drop(name));
    }
    for (_, sql, label) in want.iter().filter(|(n, _, _)| !have.contains(n)) {
        stricter.push((sql.clone(), label.clone()));
    }
}

/// Copies what is left of each table (`copies`, in plan order); `Ok(false)` when asked to
/// stop first (every committed chunk stays, with its position).
async fn copy_tables(
    client: &mut Client,
    plan: &Plan,
    opts: &Options,
    copies: Vec<TableCopy>,
) -> Result<bool> {
    if copies.iter().all(|c| matches!(c.left, Left::Nothing)) {
        return Ok(true);
    }
    let resume: Vec<Left> = copies.iter().map(|c| c.left.clone()).collect();
    let (tx_chunks, mut rx_chunks) = mpsc::channel::<Result<Chunk>>(2);
    let tables = plan.tables.clone();
    let reader_opts = opts.clone();
    // Off the runtime's workers: its reads may wait for the app's commits.
    let reader = tokio::task::spawn_blocking(move || {
        let result = read_all(&tables, &reader_opts, resume, &tx_chunks);
        if let Err(e) = result {
            // The writer may already be gone; nothing else to tell then.
            let _ = tx_chunks.blocking_send(Err(e));
        }
    });
    let mut progress = Progress::new();
    let mut started: Vec<Option<Instant>> = vec![None; plan.tables.len()];
    let mut copied: Vec<u64> = copies.iter().map(|c| c.done_rows).collect();
    let result = async {
        loop {
            let chunk = tokio::select! {
                biased;
                _ = opts.stop.wait() => return Ok(false),
                c = rx_chunks.recv() => match c {
                    Some(c) => c?,
                    None => return Ok(true),
                },
            };
            let t = &plan.tables[chunk.table];
            if started[chunk.table].is_none() {
                started[chunk.table] = Some(Instant::now());
                let c = &copies[chunk.table];
                progress.start(&t.source.name, c.done_rows, c.total);
            }
            let tx = client.transaction().await.map_err(pg_err(format!(
                "cannot start a transaction for table {}",
                t.target
            )))?;
            if chunk.rows > 0 {
                let mut columns = t.target_columns();
                if let Some(c) = opts.rows.column() {
                    columns.insert(0, c.to_string());
                }
                copy::copy_in(&tx, Some(&opts.schema), &t.target, &columns, chunk.data).await?;
            }
            state::advance(
                &tx,
                &opts.tenant,
                &t.source.name,
                chunk.last_key.as_deref(),
                chunk.rows as i64,
                chunk.finished,
            )
            .await?;
            if let Some((seq, version)) = chunk.mark {
                let upto = match (&chunk.last_key, chunk.finished) {
                    (Some(k), false) => match k.first() {
                        Some(OwnedValue::Integer(r)) => Some(*r),
                        _ => None,
                    },
                    _ => None,
                };
                state::image_chunk(&tx, &opts.tenant, &t.source.name, upto, seq, version).await?;
            }
            tx.commit().await.map_err(pg_err(format!(
                "cannot commit a chunk of table {}",
                t.target
            )))?;
            progress.advance(&t.source.name, chunk.rows);
            copied[chunk.table] += chunk.rows;
            if chunk.finished {
                let elapsed = started[chunk.table]
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                progress.finish(&t.source.name, copied[chunk.table], elapsed);
            }
        }
    }
    .await;
    drop(rx_chunks);
    if reader.await.is_err() {
        return Err(Error::new(
            ErrorKind::SourceUnreadable,
            "the SQLite reader thread panicked; re-run to resume",
        ));
    }
    result
}

fn read_all(
    tables: &[TablePlan],
    opts: &Options,
    resume: Vec<Left>,
    out: &mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let conn = sqlite::open_read_only(&opts.source, opts.busy_timeout)?;
    for (i, (t, start)) in tables.iter().zip(resume).enumerate() {
        let Left::After(mut after) = start else {
            continue;
        };
        let q = reader::ScanQuery::new(&t.source, &t.source_columns());
        let klen = q.key_len();
        // In the shared-tables layout every row leads with its tenant.
        let tenant = match &opts.rows {
            pg::Rows::All => None,
            pg::Rows::Tenant { tenant, .. } => Some(tenant.as_bytes()),
        };
        let ncols = t.columns.len() + usize::from(tenant.is_some());
        loop {
            let mut data = copy::begin_buffer(1 << 20);
            let read = reader::read_chunk_marked(
                &conn,
                &q,
                after.as_deref(),
                opts.chunk_rows,
                opts.chunk_time,
                t.source.follow() == Follow::ByImage,
                |row| {
                    copy::begin_row(&mut data, ncols);
                    if tenant.is_some() {
                        copy::put_field(&mut data, tenant);
                    }
                    for (c, v) in t.columns.iter().zip(&row[klen..]) {
                        convert::encode(*v, &c.conv, &mut data)
                            .map_err(|e| conversion_error(t, &row[..klen], &c.source, *v, e))?;
                    }
                    Ok(())
                },
            )?;
            if read.last_key.is_some() {
                after = read.last_key.clone();
            }
            let chunk = Chunk {
                table: i,
                rows: read.rows,
                last_key: read.last_key,
                finished: read.exhausted,
                data,
                mark: read.mark,
            };
            if out.blocking_send(Ok(chunk)).is_err() {
                return Ok(());
            }
            if read.exhausted {
                break;
            }
        }
    }
    Ok(())
}

fn conversion_error(
    t: &TablePlan,
    key: &[SqlValue<'_>],
    column: &str,
    value: SqlValue<'_>,
    e: convert::ConvError,
) -> Error {
    let key: Vec<OwnedValue> = key.iter().map(SqlValue::to_owned_value).collect();
    Error::new(
        ErrorKind::Conversion,
        format!(
            "table {}, row {}, column {}: value {} cannot be copied: {}. Rows before it are committed; fix it and re-run to resume",
            t.source.name,
            display_key(&t.key_names, &key),
            column,
            value.display(),
            e.detail
        ),
    )
}

/// What a shared table already has of what `build_indexes` adds.
#[derive(Default)]
struct Made {
    primary_key: bool,
    checks: Vec<String>,
}

/// Takes the shared table's lock for this transaction, then reads what it has.
async fn made_on(tx: &tokio_postgres::Transaction<'_>, schema: &str, table: &str) -> Result<Made> {
    lock_shared(tx, schema, table).await?;
    let rows = tx
        .query(
            "SELECT contype::text, conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype IN ('p', 'c')",
            &[&qualified(schema, table)],
        )
        .await
        .map_err(pg_err(format!("cannot read the constraints of table {table}")))?;
    Ok(Made {
        primary_key: rows.iter().any(|r| r.get::<_, String>(0) == "p"),
        checks: rows
            .iter()
            .filter(|r| r.get::<_, String>(0) == "c")
            .map(|r| r.get(1))
            .collect(),
    })
}

/// Keeps the foreign keys of the plan's tables aside until cutover (see
/// [`foreign_keys::take_over`]).
async fn take_keys_aside(client: &mut Client, plan: &Plan, opts: &Options) -> Result<()> {
    let targets: Vec<String> = plan.targets();
    let derived: Vec<(String, ddl::ForeignKeyDef)> = plan
        .created()
        .flat_map(|(t, spec)| {
            spec.foreign_keys
                .iter()
                .map(|fk| (t.target.clone(), fk.clone()))
        })
        .collect();
    let created: Vec<String> = plan.created().map(|(t, _)| t.target.clone()).collect();
    let dropped =
        foreign_keys::take_over(client, &opts.schema, &targets, &created, &derived).await?;
    if dropped > 0 {
        tracing::info!(
            dropped,
            "foreign keys of the target tables are kept in sqlite2pg.foreign_key until cutover: SQLite does not enforce them, so Postgres must not either"
        );
    }
    Ok(())
}

/// Serializes the tenants that make or change one shared table, until the transaction ends.
async fn lock_shared(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sqlite2pg shared table ' || $1, 0))",
        &[&qualified(schema, table)],
    )
    .await
    .map_err(pg_err(format!("cannot lock shared table {table}")))?;
    Ok(())
}

/// Creates a table sqlite2pg makes; in the shared-tables layout, only when no other tenant
/// made it yet, and this tenant's rows left by an uninstalled earlier run go.
async fn create_table(
    tx: &tokio_postgres::Transaction<'_>,
    opts: &Options,
    t: &TablePlan,
    spec: &TableSpec,
) -> Result<()> {
    let q = qualified(&opts.schema, &t.target);
    if opts.rows != pg::Rows::All {
        lock_shared(tx, &opts.schema, &t.target).await?;
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&q])
            .await
            .map_err(pg_err(format!("cannot look for table {q}")))?
            .get(0);
        if exists {
            return empty_table(tx, opts, t).await.map_err(pg_err(format!(
                "cannot empty this tenant's rows of table {q}"
            )));
        }
    }
    tx.batch_execute(&ddl::create_table(
        &opts.schema,
        &t.target,
        &spec.column_defs,
    ))
    .await
    .map_err(pg_err(format!("cannot create table {q}")))
}

/// Deletes this tenant's rows of a target table: all of them, or its own in a shared one.
async fn empty_table(
    tx: &tokio_postgres::Transaction<'_>,
    opts: &Options,
    t: &TablePlan,
) -> std::result::Result<(), tokio_postgres::Error> {
    let q = qualified(&opts.schema, &t.target);
    match &opts.rows {
        pg::Rows::All => tx.batch_execute(&format!("TRUNCATE {q}")).await,
        rows => tx
            .execute(
                &format!("DELETE FROM {q}{}", rows.filter(1)),
                &rows.params(),
            )
            .await
            .map(|_| ()),
    }
}

async fn build_indexes(
    client: &mut Client,
    plan: &Plan,
    tenant: &str,
    rows: &pg::Rows,
    schema: &str,
    summary: &mut Summary,
) -> Result<()> {
    // The copy's row counts wait in this session (up to a second) before they reach the
    // server's statistics. Reaching them after the ANALYZE below, they would count as changes
    // since it, and autovacuum would analyze the tables again while the stream applies: the
    // pass the ANALYZE is there to spare. (The function is PostgreSQL 15's; an older server,
    // which `check` warns of, gets that second pass.)
    if *rows == pg::Rows::All && pg::server_version(client).await?.0 >= 150_000 {
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .map_err(pg_err("cannot report the copy's statistics".into()))?;
    }
    for t in &plan.tables {
        let Some(st) = state::load(client, tenant, &t.source.name).await? else {
            continue;
        };
        if st.phase != Phase::Copied {
            continue;
        }
        let started = Instant::now();
        let tx = client.transaction().await.map_err(pg_err(format!(
            "cannot start a transaction for table {}",
            t.target
        )))?;
        if let Some(spec) = t.spec() {
            // Shared tables get their keys from the first tenant to finish its copy: the
            // others (one at a time, under the table's lock) add only what is missing.
            let made = match rows {
                pg::Rows::All => Made::default(),
                pg::Rows::Tenant { .. } => made_on(&tx, schema, &t.target).await?,
            };
            if !spec.primary_key.is_empty() && !made.primary_key {
                tx.batch_execute(&ddl::add_primary_key(schema, &t.target, &spec.primary_key))
                    .await
                    .map_err(pg_err(format!("cannot add the primary key of table {} (duplicate or NULL keys? run `sqlite2pg check`)", t.target)))?;
            }
            for ix in &spec.indexes {
                let sql = ddl::create_index(schema, &t.target, ix);
                tx.batch_execute("SAVEPOINT ix")
                    .await
                    .map_err(pg_err("cannot set a savepoint".into()))?;
                match tx.batch_execute(&sql).await {
                    Ok(()) => {}
                    // An index on an expression Postgres refuses (a function it does not
                    // hold immutable) is named, as one that does not translate is.
                    Err(e) if !ix.unique || ix.where_clause.is_some() || ix.on_expressions() => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT ix")
                            .await
                            .map_err(pg_err("cannot roll back to a savepoint".into()))?;
                        let w = format!(
                            "index {} on {} was not created: {}; create it by hand",
                            ix.name,
                            t.target,
                            db_message(&e)
                        );
                        tracing::warn!("{w}");
                        summary.warnings.push(w);
                    }
                    Err(e) => {
                        return Err(Error::from_pg(
                            format!(
                                "cannot build unique index {} on table {} (duplicates? run `sqlite2pg check`)",
                                ix.name, t.target
                            ),
                            e,
                        ));
                    }
                }
            }
            for c in spec
                .checks
                .iter()
                .filter(|c| !made.checks.contains(&c.name))
            {
                let Ok(pg) = &c.pg else { continue };
                tx.batch_execute(&ddl::add_check(schema, &t.target, &c.name, pg))
                    .await
                    .map_err(pg_err(format!(
                        "cannot add CHECK ({}) to table {} as {} (rows SQLite holds break it? run `sqlite2pg check`, which names them)",
                        c.source, t.target, c.name
                    )))?;
            }
        }
        // Statistics for the app's first queries on Postgres, made with the copy and not
        // left to autovacuum's first pass over the new tables: that pass comes while the
        // stream applies (for a fleet, thousands of tables at once: seconds of Postgres CPU,
        // and every tenant's lag behind it). A shared table holds every tenant's rows, and
        // autovacuum keeps its statistics as they arrive.
        if *rows == pg::Rows::All {
            tx.batch_execute(&format!("ANALYZE {}", qualified(schema, &t.target)))
                .await
                .map_err(pg_err(format!("cannot analyze table {}", t.target)))?;
        }
        state::set_phase(&tx, tenant, &t.source.name, Phase::Indexed).await?;
        tx.commit().await.map_err(pg_err(format!(
            "cannot commit the indexes of table {}",
            t.target
        )))?;
        if t.spec().is_some() {
            tracing::info!(table = %t.target, secs = started.elapsed().as_secs_f64(), "keys and indexes built");
        }
    }
    Ok(())
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

async fn finish_tables(
    client: &mut Client,
    plan: &Plan,
    tenant: &str,
    schema: &str,
    rows: &pg::Rows,
) -> Result<()> {
    for t in &plan.tables {
        let Some(st) = state::load(client, tenant, &t.source.name).await? else {
            continue;
        };
        if st.phase != Phase::Indexed {
            continue;
        }
        let tx = client.transaction().await.map_err(pg_err(format!(
            "cannot start a transaction for table {}",
            t.target
        )))?;
        crate::pg::sequences::move_past_max(&tx, schema, std::slice::from_ref(&t.target), rows)
            .await?;
        state::set_phase(&tx, tenant, &t.source.name, Phase::Ready).await?;
        tx.commit().await.map_err(pg_err(format!(
            "cannot commit the sequences of table {}",
            t.target
        )))?;
    }
    Ok(())
}
