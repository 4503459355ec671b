//! The Postgres side after the cutover: capture of the app's writes into a key-only
//! changelog (`sqlite2pg.reverse_change`), and the fallback fence. Both are triggers: they
//! need no superuser and no `wal_level` change, which managed Postgres often refuses, and
//! the capture is in place in the same transaction that records the cutover.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

use super::state::STATE_SCHEMA;
use super::{qualified, quote_ident};
use crate::error::{Error, ErrorKind, Result};

/// The channel the capture notifies when a change commits.
pub const CHANNEL: &str = "sqlite2pg_reverse";

/// What the app's writes to a moved table get once `fallback` fenced Postgres.
pub const FENCE_MESSAGE: &str = "this database has moved back to SQLite; see sqlite2pg status";

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::from_pg(format!("cannot {what}"), e)
}

/// A moved table as the reverse capture sees it.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The target table.
    pub table: String,
    /// Its key columns (target names); `None`: followed as a whole.
    pub key: Option<Vec<String>>,
}

async fn table_oid(client: &impl GenericClient, schema: &str, table: &str) -> Result<u32> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&qualified(schema, table)])
        .await
        .map_err(pg("find a moved table in Postgres"))?;
    row.get::<_, Option<u32>>(0).ok_or_else(|| {
        Error::new(
            ErrorKind::Schema,
            format!("table {table} is not in Postgres schema {schema}; was it dropped?"),
        )
    })
}

/// Installs the capture triggers on `tables`: each row the app changes on Postgres from now
/// on leaves its key (and its old key when an UPDATE moves it) in the changelog. The cutover
/// installs them before its fence (they ignore sqlite2pg's own sessions) and checks them in
/// the transaction that records it, so no write on Postgres escapes them.
pub async fn install_capture(
    client: &impl GenericClient,
    tenant: &str,
    schema: &str,
    tables: &[Captured],
) -> Result<()> {
    let tenant = crate::sql::literal(tenant);
    for t in tables {
        let table = qualified(schema, &t.table);
        let mut statements = vec![crate::sql::reverse("uncapture", &[("table", &table)])];
        match &t.key {
            Some(cols) => {
                let oid = table_oid(client, schema, &t.table).await?;
                let function = format!(
                    "{}.{}",
                    quote_ident(STATE_SCHEMA),
                    quote_ident(&format!("reverse_capture_{oid}"))
                );
                let list = |f: &dyn Fn(&str) -> String| {
                    cols.iter()
                        .map(|c| f(&quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                statements.push(crate::sql::reverse(
                    "capture_function",
                    &[
                        ("function", &function),
                        ("table", &table),
                        (
                            "new_key",
                            &list(&|c| format!("to_jsonb(NEW.{c}) #>> '{{}}'")),
                        ),
                        (
                            "old_key",
                            &list(&|c| format!("to_jsonb(OLD.{c}) #>> '{{}}'")),
                        ),
                        ("old_row", &list(&|c| format!("OLD.{c}"))),
                        ("new_row", &list(&|c| format!("NEW.{c}"))),
                    ],
                ));
                statements.push(crate::sql::reverse(
                    "capture_rows",
                    &[
                        ("function", &function),
                        ("table", &table),
                        ("tenant", &tenant),
                    ],
                ));
            }
            None => statements.push(crate::sql::reverse(
                "capture_statements",
                &[("table", &table), ("tenant", &tenant)],
            )),
        }
        for name in ["capture_truncate", "capture_notify"] {
            statements.push(crate::sql::reverse(
                name,
                &[("table", &table), ("tenant", &tenant)],
            ));
        }
        for s in statements {
            client.batch_execute(&s).await.map_err(|e| {
                Error::from_pg(
                    format!("cannot install the reverse capture on table {}", t.table),
                    e,
                )
            })?;
        }
    }
    Ok(())
}

/// The tables in `tables` whose capture is not (wholly) in place.
pub async fn missing_capture(
    client: &impl GenericClient,
    schema: &str,
    tables: &[Captured],
) -> Result<Vec<Captured>> {
    let names: Vec<String> = tables.iter().map(|t| qualified(schema, &t.table)).collect();
    let rows = client
        .query(
            "SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS u(name, n)
             WHERE (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(u.name)
                    AND tgname IN ('sqlite2pg_reverse', 'sqlite2pg_reverse_truncate', 'sqlite2pg_reverse_notify')) < 3",
            &[&names],
        )
        .await
        .map_err(pg("look for the reverse capture"))?;
    Ok(rows
        .iter()
        .filter_map(|r| tables.get(usize::try_from(r.get::<_, i64>(0)).ok()? - 1))
        .cloned()
        .collect())
}

/// The app's tables in `schema` (partitions and extensions' tables left out).
async fn schema_tables(client: &impl GenericClient, schema: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(pg("list the tables on Postgres"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records, with the cutover, the tables Postgres has besides the moved ones.
pub async fn record_pg_only(
    client: &impl GenericClient,
    schema: &str,
    moved: &[String],
) -> Result<()> {
    let others: Vec<String> = schema_tables(client, schema)
        .await?
        .into_iter()
        .filter(|t| !moved.contains(t))
        .collect();
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.pg_only_table (target_schema, name)
                 SELECT $1, n FROM unnest($2::text[]) AS n ON CONFLICT DO NOTHING"
            ),
            &[&schema, &others],
        )
        .await
        .map_err(pg("record the tables Postgres has besides the moved ones"))?;
    Ok(())
}

/// Tables in `schema` made since the cutover (neither moved nor there at the cutover), each
/// with whether it holds rows.
pub async fn tables_since_cutover(
    client: &impl GenericClient,
    schema: &str,
    moved: &[String],
) -> Result<Vec<(String, bool)>> {
    let known: Vec<String> = client
        .query(
            &format!("SELECT name FROM {STATE_SCHEMA}.pg_only_table WHERE target_schema = $1"),
            &[&schema],
        )
        .await
        .map_err(pg("read the tables Postgres had at the cutover"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for name in schema_tables(client, schema).await? {
        if moved.contains(&name) || known.contains(&name) {
            continue;
        }
        let has_rows: bool = client
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(schema, &name)),
                &[],
            )
            .await
            .map_err(|e| Error::from_pg(format!("cannot read table {name} on Postgres"), e))?
            .get(0);
        out.push((name, has_rows));
    }
    Ok(out)
}

/// One change the app made on Postgres.
#[derive(Debug, Clone)]
pub struct Change {
    /// Changelog sequence number.
    pub seq: i64,
    /// The target table.
    pub table: String,
    /// The row's key as JSON text per column; `None`: the whole table.
    pub key: Option<Vec<String>>,
}

/// The oldest committed changes not yet applied, at most `limit`, but those in `skip`.
pub async fn pending(
    client: &impl GenericClient,
    tenant: &str,
    limit: i64,
    skip: &[i64],
) -> Result<Vec<Change>> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, target_table, key FROM {STATE_SCHEMA}.reverse_change
                 WHERE tenant = $3 AND applied_at IS NULL AND NOT (seq = ANY($2)) ORDER BY seq LIMIT $1"
            ),
            &[&limit, &skip, &tenant],
        )
        .await
        .map_err(pg("read the reverse changelog"))?;
    Ok(rows.iter().map(change).collect())
}

fn change(r: &tokio_postgres::Row) -> Change {
    Change {
        seq: r.get(0),
        table: r.get(1),
        key: r.get::<_, Option<Vec<String>>>(2),
    }
}

/// Marks changes applied once SQLite holds them.
pub async fn applied(client: &impl GenericClient, seqs: &[i64]) -> Result<u64> {
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.reverse_change SET applied_at = clock_timestamp() WHERE seq = ANY($1)"
            ),
            &[&seqs],
        )
        .await
        .map_err(pg("mark reverse changes applied"))
}

/// Deletes changes applied longer than `keep` ago, at most `limit`; how many went.
pub async fn prune(
    client: &impl GenericClient,
    tenant: &str,
    keep: Duration,
    limit: i64,
) -> Result<u64> {
    client
        .execute(
            &format!(
                "DELETE FROM {STATE_SCHEMA}.reverse_change WHERE seq IN (SELECT seq FROM {STATE_SCHEMA}.reverse_change
                 WHERE tenant = $3 AND applied_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2)"
            ),
            &[&keep.as_secs_f64(), &limit, &tenant],
        )
        .await
        .map_err(pg("prune the reverse changelog"))
}

/// Changes applied at or after `since` (Postgres' clock, Unix seconds) or not applied yet:
/// the keys that may have changed since a verify that started then.
pub async fn changed_since(
    client: &impl GenericClient,
    tenant: &str,
    since: f64,
) -> Result<Vec<Change>> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, target_table, key FROM {STATE_SCHEMA}.reverse_change
                 WHERE tenant = $2 AND (applied_at IS NULL OR applied_at >= to_timestamp($1)) ORDER BY seq"
            ),
            &[&since, &tenant],
        )
        .await
        .map_err(pg("read the reverse changelog"))?;
    Ok(rows.iter().map(change).collect())
}

/// Postgres' clock (Unix seconds), the one `applied_at` is written with.
pub async fn clock(client: &impl GenericClient) -> Result<f64> {
    let row = client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await
        .map_err(pg("read the Postgres clock"))?;
    Ok(row.get(0))
}

/// The changes not yet in SQLite, and the age in seconds of the oldest.
pub async fn backlog(client: &impl GenericClient, tenant: &str) -> Result<(i64, Option<f64>)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at))::float8 FROM {STATE_SCHEMA}.reverse_change r WHERE applied_at IS NULL AND {}",
                super::state::of_tenant("r", 1)
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the reverse changelog"))?;
    Ok((row.get(0), row.get(1)))
}

/// The newest change recorded so far (0: none).
pub async fn newest(client: &impl GenericClient, tenant: &str) -> Result<i64> {
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(seq), 0) FROM {STATE_SCHEMA}.reverse_change WHERE tenant = $1"
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the reverse changelog"))?;
    Ok(row.get(0))
}

/// Whether every change up to `seq` is applied.
pub async fn applied_through(client: &impl GenericClient, tenant: &str, seq: i64) -> Result<bool> {
    let row = client
        .query_one(
            &format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.reverse_change WHERE tenant = $2 AND applied_at IS NULL AND seq <= $1)"
            ),
            &[&seq, &tenant],
        )
        .await
        .map_err(pg("read the reverse changelog"))?;
    Ok(row.get(0))
}

/// Whether the reverse capture is installed on a table of `schema` (a cutover of 0.3.0 or
/// later made it; the state tables alone, which an upgrade creates, are not enough).
pub async fn capture_installed(client: &impl GenericClient, schema: &str) -> Result<bool> {
    if !super::state::state_table_exists(client, "reverse_change").await? {
        return Ok(false);
    }
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE t.tgname = 'sqlite2pg_reverse_truncate' AND n.nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(pg("look for the reverse capture"))?;
    Ok(row.get(0))
}

/// The fallback fence as it stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fence {
    /// Who raised it.
    pub holder: String,
    /// The lease end (RFC 3339).
    pub until: String,
    /// The fallback is recorded: the fence never ends by itself.
    pub permanent: bool,
    /// Whether it refuses the app's writes right now.
    pub active: bool,
}

/// The fallback fence, if one was raised.
pub async fn fence_state(client: &impl GenericClient, tenant: &str) -> Result<Option<Fence>> {
    if !super::state::state_table_exists(client, "pg_fence").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT holder, {}, permanent, permanent OR until > clock_timestamp()
                 FROM {STATE_SCHEMA}.pg_fence f WHERE {}",
                super::state::rfc3339("until"),
                super::state::of_tenant("f", 1)
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the fallback fence"))?;
    Ok(row.map(|r| Fence {
        holder: r.get(0),
        until: r.get(1),
        permanent: r.get(2),
        active: r.get(3),
    }))
}

/// When the fence took hold.
#[derive(Debug, Clone, Copy)]
pub struct Fenced {
    /// The moment every moved table was locked: the app's writes wait from here, so the
    /// write-unavailable window starts here.
    pub window: crate::window::Window,
    /// How long the locks took, retried while others held them (the app wrote meanwhile).
    pub waited: Duration,
}

/// Raises the fallback fence on `tables` for `lease`, in one transaction. It first locks
/// every table at once against writers, without waiting (`NOWAIT`), and retries until it gets
/// them all (for at most `lock_wait`): waiting for one table while holding another could
/// deadlock with an app transaction that writes them in the other order. Holding them all
/// means no write transaction is open on them, so every write made before the fence is
/// committed (and captured) or gone, and the app's next write waits for the fence, then meets
/// it. Between tries nothing is held, so the app writes on; an autovacuum of a moved table
/// (which never yields to `NOWAIT`) only delays the fence.
pub async fn fence(
    client: &mut Client,
    tenant: &str,
    schema: &str,
    tables: &[String],
    holder: &str,
    lease: Duration,
    lock_wait: Duration,
) -> Result<Fenced> {
    let names: Vec<String> = tables.iter().map(|t| qualified(schema, t)).collect();
    let lock = format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE NOWAIT",
        names.join(", ")
    );
    let first = std::time::Instant::now();
    let deadline = first + lock_wait;
    let tx = loop {
        let tx = client
            .transaction()
            .await
            .map_err(pg("start the fallback fence transaction"))?;
        match tx.batch_execute(&lock).await {
            Ok(()) => break tx,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                drop(tx);
                if std::time::Instant::now() >= deadline {
                    let who = lock_holders(&*client, &names).await.unwrap_or_default();
                    return Err(Error::from_pg(
                        format!(
                            "cannot fence the moved tables on Postgres: others kept them locked for {} ms ({}); nothing was fenced, retry (or raise --lock-wait)",
                            lock_wait.as_millis(),
                            if who.is_empty() {
                                "app write transactions, or autovacuum".to_string()
                            } else {
                                who.join("; ")
                            }
                        ),
                        e,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => {
                return Err(Error::from_pg(
                    "cannot lock the moved tables on Postgres",
                    e,
                ));
            }
        }
    };
    let fenced = Fenced {
        window: crate::window::Window::open(),
        waited: first.elapsed(),
    };
    tx.execute(
        &format!(
            "INSERT INTO {STATE_SCHEMA}.pg_fence (tenant, holder, since, until, permanent)
             VALUES ($3, $1, clock_timestamp(), clock_timestamp() + make_interval(secs => $2), false)
             ON CONFLICT (tenant) DO UPDATE SET holder = EXCLUDED.holder, since = EXCLUDED.since,
               until = EXCLUDED.until, permanent = false"
        ),
        &[&holder, &lease.as_secs_f64(), &tenant],
    )
    .await
    .map_err(pg("record the fallback fence lease"))?;
    let tenant = crate::sql::literal(tenant);
    for (t, q) in tables.iter().zip(&names) {
        for name in ["unfence", "fence"] {
            tx.batch_execute(&crate::sql::reverse(
                name,
                &[("table", q), ("tenant", &tenant)],
            ))
            .await
            .map_err(|e| Error::from_pg(format!("cannot fence table {t} on Postgres"), e))?;
        }
    }
    tx.commit().await.map_err(pg("commit the fallback fence"))?;
    Ok(fenced)
}

/// Who holds a lock that keeps writers off `tables` (sessions of other roles show no query).
async fn lock_holders(client: &impl GenericClient, tables: &[String]) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT a.backend_type || ' ' || a.pid || ': ' || left(coalesce(a.query, ''), 80)
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.granted AND l.pid <> pg_backend_pid() AND l.mode <> 'AccessShareLock'
               AND l.relation IN (SELECT to_regclass(n) FROM unnest($1::text[]) AS n)",
            &[&tables],
        )
        .await
        .map_err(pg("list who holds the moved tables"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Extends `holder`'s lease. `Ok(false)`: lost (ran out, or lifted), so the app may have
/// written to Postgres since and the fallback must not go on.
pub async fn renew(
    client: &impl GenericClient,
    tenant: &str,
    holder: &str,
    lease: Duration,
) -> Result<bool> {
    let n = client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.pg_fence SET until = clock_timestamp() + make_interval(secs => $2)
                 WHERE tenant = $3 AND holder = $1 AND NOT permanent AND until > clock_timestamp()"
            ),
            &[&holder, &lease.as_secs_f64(), &tenant],
        )
        .await
        .map_err(pg("renew the fallback fence lease"))?;
    Ok(n == 1)
}

/// Makes `holder`'s fence permanent if its lease still holds (`Ok(false)`: it does not).
pub async fn make_permanent(
    client: &impl GenericClient,
    tenant: &str,
    holder: &str,
) -> Result<bool> {
    let n = client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.pg_fence SET permanent = true
                 WHERE tenant = $2 AND holder = $1 AND until > clock_timestamp()"
            ),
            &[&holder, &tenant],
        )
        .await
        .map_err(pg("make the fallback fence permanent"))?;
    Ok(n == 1)
}

/// Lifts the fallback fence: the app writes to Postgres again.
pub async fn unfence(
    client: &mut Client,
    tenant: &str,
    schema: &str,
    tables: &[String],
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("start lifting the fallback fence"))?;
    for t in tables {
        tx.batch_execute(&crate::sql::reverse(
            "unfence",
            &[("table", &qualified(schema, t))],
        ))
        .await
        .map_err(|e| Error::from_pg(format!("cannot lift the fence on table {t}"), e))?;
    }
    tx.execute(
        &format!("DELETE FROM {STATE_SCHEMA}.pg_fence WHERE tenant = $1"),
        &[&tenant],
    )
    .await
    .map_err(pg("drop the fallback fence lease"))?;
    tx.commit().await.map_err(pg("commit lifting the fence"))
}

/// A completed fallback.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fallback {
    /// When Postgres writes were fenced (RFC 3339).
    pub fenced_at: String,
    /// When the app could write to SQLite again.
    pub done_at: String,
    /// The write-unavailable window.
    pub window_ms: f64,
    /// Rows verified inside the window.
    pub rows_verified: i64,
    /// AUTOINCREMENT counters moved in SQLite.
    pub sequences_moved: i32,
}

/// Records the fallback (times in Unix seconds).
pub async fn fallback_record(
    client: &impl GenericClient,
    tenant: &str,
    fenced_at: f64,
    done_at: f64,
    rows_verified: i64,
    sequences_moved: i32,
) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.fallback (tenant, fenced_at, done_at, window_ms, rows_verified, sequences_moved)
                 VALUES ($6, to_timestamp($1), to_timestamp($2), $3, $4, $5)"
            ),
            &[
                &fenced_at,
                &done_at,
                &((done_at - fenced_at) * 1000.0),
                &rows_verified,
                &sequences_moved,
                &tenant,
            ],
        )
        .await
        .map_err(pg("record the fallback"))?;
    // At commit: the tenant's reverse stream in a fleet's daemon, which holds no connection
    // while idle, hears that it is over.
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &tenant])
        .await
        .map_err(pg("announce the fallback"))?;
    Ok(())
}

/// Sets the end of the window once SQLite is handed back (Unix seconds).
pub async fn fallback_done(
    client: &impl GenericClient,
    tenant: &str,
    fenced_at: f64,
    done_at: f64,
) -> Result<()> {
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.fallback SET done_at = to_timestamp($1), window_ms = $2 WHERE tenant = $3"
            ),
            &[&done_at, &((done_at - fenced_at) * 1000.0), &tenant],
        )
        .await
        .map_err(pg("record the end of the fallback window"))?;
    Ok(())
}

/// Removes the reverse capture from one table (the fallback is being recorded).
pub async fn uncapture(client: &impl GenericClient, schema: &str, table: &str) -> Result<()> {
    client
        .batch_execute(&crate::sql::reverse(
            "uncapture",
            &[("table", &qualified(schema, table))],
        ))
        .await
        .map_err(|e| Error::from_pg(format!("cannot remove the reverse capture from {table}"), e))
}

/// The fallback record, if the migration fell back.
pub async fn fallback_load(client: &impl GenericClient, tenant: &str) -> Result<Option<Fallback>> {
    if !super::state::state_table_exists(client, "fallback").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT {}, {}, window_ms, rows_verified, sequences_moved FROM {STATE_SCHEMA}.fallback f WHERE {}",
                super::state::rfc3339("fenced_at"),
                super::state::rfc3339("done_at"),
                super::state::of_tenant("f", 1)
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the fallback record"))?;
    Ok(row.map(|r| Fallback {
        fenced_at: r.get(0),
        done_at: r.get(1),
        window_ms: r.get(2),
        rows_verified: r.get(3),
        sequences_moved: r.get(4),
    }))
}

/// The largest id each identity/serial column of `table` handed out (its sequence's
/// `last_value`), by column; none for a sequence never used.
pub async fn sequence_values(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT a.attname::text, pg_get_serial_sequence($1, a.attname) FROM pg_attribute a
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
               AND pg_get_serial_sequence($1, a.attname) IS NOT NULL",
            &[&qualified(schema, table)],
        )
        .await
        .map_err(pg("find the sequences of a moved table"))?;
    let mut out = Vec::new();
    for r in rows {
        let (col, seq): (String, String) = (r.get(0), r.get(1));
        // NULL until the sequence hands out a value.
        let v = client
            .query_one("SELECT pg_sequence_last_value($1::text::regclass)", &[&seq])
            .await
            .map_err(pg("read a sequence of a moved table"))?;
        if let Some(last) = v.get::<_, Option<i64>>(0) {
            out.push((col, last));
        }
    }
    Ok(out)
}

/// Removes what sqlite2pg put into Postgres for `tenant`: its triggers and capture
/// functions on `tables` and its state, then the whole `sqlite2pg` schema once no other
/// tenant has a migration in it. The tables and their rows stay.
pub async fn uninstall(
    client: &mut Client,
    tenant: &str,
    schema: &str,
    tables: &[String],
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("start removing sqlite2pg's objects from Postgres"))?;
    for t in tables {
        let q = qualified(schema, t);
        let oid: Option<u32> = tx
            .query_one("SELECT to_regclass($1)::oid", &[&q])
            .await
            .map_err(pg("look up a moved table"))?
            .get(0);
        let Some(oid) = oid else { continue };
        for name in ["unfence", "uncapture"] {
            tx.batch_execute(&crate::sql::reverse(name, &[("table", &q)]))
                .await
                .map_err(|e| {
                    Error::from_pg(format!("cannot drop sqlite2pg's triggers on {t}"), e)
                })?;
        }
        tx.batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {}.{}()",
            quote_ident(STATE_SCHEMA),
            quote_ident(&format!("reverse_capture_{oid}"))
        ))
        .await
        .map_err(|e| Error::from_pg(format!("cannot drop sqlite2pg's capture of {t}"), e))?;
    }
    let others = super::state::forget(&tx, tenant, schema).await?;
    if others == 0 {
        tx.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(STATE_SCHEMA)
        ))
        .await
        .map_err(pg("drop the sqlite2pg schema"))?;
    }
    tx.commit()
        .await
        .map_err(pg("commit removing sqlite2pg's objects"))?;
    if others == 0 {
        super::state::schema_dropped();
    }
    Ok(())
}
