//! The `sqlite2pg` schema in Postgres: per-table snapshot progress, updated in the same
//! transaction as the rows it describes.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use crate::error::{Error, Result};
use crate::model::OwnedValue;

/// Where sqlite2pg keeps its state in the target database.
pub const STATE_SCHEMA: &str = "sqlite2pg";

/// A table's place in the snapshot lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Rows are being copied in chunks.
    Copying,
    /// Every row is copied; keys and indexes are not built yet.
    Copied,
    /// Keys and indexes are built (or the table existed with its own).
    Indexed,
    /// Foreign keys are in place and the identity is past the copied ids: ready to stream.
    Ready,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Copying => "copying",
            Phase::Copied => "copied",
            Phase::Indexed => "indexed",
            Phase::Ready => "ready",
        }
    }

    /// The phase a stored name means (`None`: a name this build does not know).
    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "copying" => Phase::Copying,
            "copied" => Phase::Copied,
            "indexed" => Phase::Indexed,
            "ready" => Phase::Ready,
            _ => return None,
        })
    }
}

/// One table's stored progress.
#[derive(Debug, Clone)]
pub struct TableState {
    /// Where it is.
    pub phase: Phase,
    /// Whether sqlite2pg created the target table.
    pub owned: bool,
    /// The key of the last copied row.
    pub last_key: Option<Vec<OwnedValue>>,
    /// Rows copied so far.
    pub rows_copied: i64,
}

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::from_pg(format!("cannot {what} in the {STATE_SCHEMA} schema"), e)
}

/// Creates the state schema, or brings an older one to this build's format: each missing
/// step of `sql/postgres/` in its own transaction, with the format it reaches, under a lock
/// that keeps two processes from running the same step. A kill mid-upgrade leaves the last
/// completed format; the next run goes on from there. A format newer than this build's is
/// refused, never misread.
pub async fn ensure(client: &Client) -> Result<()> {
    let found = format_version(client).await?;
    for (n, step) in crate::sql::PG_STEPS {
        // Formats only move forward: a step the state had already needs no transaction (a
        // fleet's tenants, each ensuring the state at every plan, queued on the step lock).
        if found >= *n {
            continue;
        }
        // A step first takes every state table, in name order (the order in which readers
        // such as `status` meet `stream` and `table_state`). A reader taking them in another
        // order can still deadlock with it: Postgres cancels one of the two, and the step,
        // rolled back whole, is run again.
        let deadline = Instant::now() + STEP_LOCK_WAIT;
        while let Err(e) = ensure_step(client, *n, step, found).await {
            let busy = e.code().is_some_and(|c| {
                *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED
            });
            if !busy || Instant::now() >= deadline {
                return Err(Error::from_pg(
                    format!("cannot upgrade the state format in the {STATE_SCHEMA} schema"),
                    e,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    FORMAT_CURRENT.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// How long a format step tries again to take the state tables from readers.
const STEP_LOCK_WAIT: Duration = Duration::from_secs(30);

/// One step of [`ensure`] in its own transaction, rolled back on any error.
async fn ensure_step(
    client: &Client,
    n: i32,
    step: &str,
    found: i32,
) -> std::result::Result<(), tokio_postgres::Error> {
    // Under Citus' schema-based sharding, a new schema would become a distributed one, placed
    // on a worker: sqlite2pg's state stays on the coordinator (docs/citus.md). On plain
    // PostgreSQL the setting is a placeholder.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL citus.enable_schema_based_sharding = off; SELECT pg_advisory_xact_lock(hashtext('{STATE_SCHEMA}'), 2)"
        ))
        .await?;
    let result = async {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{STATE_SCHEMA}.meta")],
            )
            .await?
            .get(0);
        let current: i32 = if exists {
            client
                .query_one(
                    &format!("SELECT format_version FROM {STATE_SCHEMA}.meta"),
                    &[],
                )
                .await?
                .get(0)
        } else {
            0
        };
        if current >= n {
            return Ok(());
        }
        let tables: Vec<String> = client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
                &[&STATE_SCHEMA],
            )
            .await?
            .iter()
            .map(|r| {
                format!(
                    "{}.{}",
                    crate::model::quote_ident(STATE_SCHEMA),
                    crate::model::quote_ident(r.get(0))
                )
            })
            .collect();
        if !tables.is_empty() {
            client
                .batch_execute(&format!(
                    "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                    tables.join(", ")
                ))
                .await?;
        }
        client.batch_execute(step).await?;
        client
            .execute(
                &format!("UPDATE {STATE_SCHEMA}.meta SET format_version = $1"),
                &[&n],
            )
            .await?;
        if found > 0 {
            tracing::info!(from = current, to = n, "upgraded the {STATE_SCHEMA} schema");
        }
        Ok(())
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await;
    result.and(ended)
}

/// The format of the `sqlite2pg` schema (0: none), refusing one newer than this build's.
pub async fn format_version(client: &impl GenericClient) -> Result<i32> {
    if !state_table_exists(client, "meta").await? {
        return Ok(0);
    }
    let version: i32 = client
        .query_one(
            &format!("SELECT format_version FROM {STATE_SCHEMA}.meta"),
            &[],
        )
        .await
        .map_err(pg("read the state format"))?
        .get(0);
    if version > crate::sql::PG_FORMAT {
        return Err(Error::new(
            crate::error::ErrorKind::State,
            format!(
                "the {STATE_SCHEMA} schema in Postgres has format {version}, newer than this sqlite2pg {} knows ({}): a newer sqlite2pg wrote it. Use that version (or a newer one); this one would misread it",
                env!("CARGO_PKG_VERSION"),
                crate::sql::PG_FORMAT
            ),
        ));
    }
    Ok(version)
}

/// Whether one of sqlite2pg's state tables exists (commands that only read state must not
/// create the schema).
pub async fn state_table_exists(client: &impl GenericClient, table: &str) -> Result<bool> {
    // Made current by this process: every state table exists (a fleet daemon's hand-off read
    // state three times; each look was a round trip).
    if FORMAT_CURRENT.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(true);
    }
    let name = format!("{STATE_SCHEMA}.{table}");
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(pg("look for the state tables"))?;
    Ok(row.get(0))
}

/// The condition picking `tenant`'s rows of the state table aliased `alias` (the tenant is
/// parameter `$n`). On any format for the reads a look at an older state makes (`status`
/// does not upgrade it): before format 5, every row is the unnamed tenant's. Once this
/// process has made the state current ([`ensure`]), by the `tenant` column and its index:
/// the any-format form reads every tenant's row (0.5 ms a call at 200 tenants, once the most
/// expensive statement of a fleet daemon's session hand-off).
pub fn of_tenant(alias: &str, n: usize) -> String {
    if FORMAT_CURRENT.load(std::sync::atomic::Ordering::Relaxed) {
        return format!("{alias}.tenant = ${n}");
    }
    format!("coalesce(to_jsonb({alias}) ->> 'tenant', '') = ${n}")
}

/// Whether this process made (or found) the state in the current format: formats only move
/// forward, so it stays so until this process drops the schema ([`schema_dropped`]).
static FORMAT_CURRENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process dropped the state schema: its tables are to be looked for again.
pub fn schema_dropped() {
    FORMAT_CURRENT.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Target tables sqlite2pg created itself (by an earlier, possibly killed, run). In the
/// shared-tables layout (`rows` names a tenant column), those it created in `schema` for any
/// tenant: they are every tenant's.
pub async fn owned_tables(
    client: &Client,
    tenant: &str,
    rows: &super::Rows,
    schema: &str,
) -> Result<Vec<String>> {
    if !state_table_exists(client, "table_state").await? {
        return Ok(Vec::new());
    }
    let (sql, key) = match rows {
        super::Rows::All => (
            format!(
                "SELECT target_table FROM {STATE_SCHEMA}.table_state WHERE tenant = $1 AND owned"
            ),
            tenant,
        ),
        super::Rows::Tenant { .. } => (
            format!(
                "SELECT DISTINCT target_table FROM {STATE_SCHEMA}.table_state WHERE target_schema = $1 AND owned"
            ),
            schema,
        ),
    };
    let rows = client
        .query(&sql, &[&key])
        .await
        .map_err(pg("read owned tables"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// The setting holding the `--cast`s a migration was started with.
pub const CASTS: &str = "casts";

/// A setting the migration was started with (`None`: not recorded, or a state older than
/// format 4).
pub async fn setting<T: serde::de::DeserializeOwned>(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
) -> Result<Option<T>> {
    if !state_table_exists(client, "setting").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT value::text FROM {STATE_SCHEMA}.setting WHERE tenant = $1 AND name = $2"
            ),
            &[&tenant, &name],
        )
        .await
        .map_err(pg("read the migration's settings"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.get(0);
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::with_source(
            crate::error::ErrorKind::State,
            format!("the setting {name} in {STATE_SCHEMA}.setting is not what this sqlite2pg wrote ({text}); restore it, or start over with `sqlite2pg uninstall`"),
            e,
        )
    })
}

/// Records a setting once: the first value stays (a later command is held to it).
pub async fn record_setting<T: serde::Serialize>(
    client: &impl GenericClient,
    tenant: &str,
    name: &str,
    value: &T,
) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| {
        Error::with_source(
            crate::error::ErrorKind::State,
            format!("cannot write the setting {name}"),
            e,
        )
    })?;
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.setting (tenant, name, value) VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (tenant, name) DO NOTHING"
            ),
            &[&tenant, &name, &text],
        )
        .await
        .map_err(pg("record the migration's settings"))?;
    Ok(())
}

/// The stream's stored position.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// The capture install this position belongs to.
    pub install_id: String,
    /// Highest changelog sequence number applied.
    pub position: i64,
    /// Commit time (julian day) of the newest applied change.
    pub source_at: Option<f64>,
    /// Changelog rows applied since the stream started.
    pub changes_applied: i64,
    /// The last error the daemon stopped on, if any.
    pub last_error: Option<String>,
}

/// The stream position, if the stream has been set up.
pub async fn stream_load(client: &impl GenericClient, tenant: &str) -> Result<Option<StreamState>> {
    if !state_table_exists(client, "stream").await? {
        return Ok(None);
    }
    let row = client
        .query_typed_opt(
            &format!("SELECT install_id, position, source_at, changes_applied, last_error FROM {STATE_SCHEMA}.stream s WHERE {}", of_tenant("s", 1)),
            &[(&tenant, Type::TEXT)],
        )
        .await
        .map_err(pg("read the stream position"))?;
    Ok(row.map(|r| StreamState {
        install_id: r.get(0),
        position: r.get(1),
        source_at: r.get(2),
        changes_applied: r.get(3),
        last_error: r.get(4),
    }))
}

/// Records where the stream starts (the changelog's newest row when the snapshot began); does
/// nothing when a position is already stored.
pub async fn stream_init(
    client: &impl GenericClient,
    tenant: &str,
    install_id: &str,
    position: i64,
) -> Result<()> {
    client
        .execute(
            &format!("INSERT INTO {STATE_SCHEMA}.stream (tenant, install_id, position) VALUES ($1, $2, $3) ON CONFLICT (tenant) DO NOTHING"),
            &[&tenant, &install_id, &position],
        )
        .await
        .map_err(pg("record the stream start"))?;
    Ok(())
}

/// Moves the position forward (same transaction as the applied rows). It never moves back: a
/// batch at or below the stored position means two daemons, and is refused.
///
/// The refusal is the server's own error (a division by the count of rows moved), not a
/// count read afterwards: a drain sends its `COMMIT` before this is answered
/// ([`super::pipeline`]), and only an error keeps that `COMMIT` from applying the batch.
pub async fn stream_advance(
    client: &impl GenericClient,
    tenant: &str,
    position: i64,
    source_at: f64,
    changes: i64,
) -> Result<()> {
    // Typed, like the other statements of a drain's every commit: one round trip.
    let moved = client
        .execute_typed(
            &format!(
                "WITH moved AS (UPDATE {STATE_SCHEMA}.stream SET position = $1, source_at = $2, applied_at = now(),
                 changes_applied = changes_applied + $3, last_error = NULL WHERE tenant = $4 AND position < $1 RETURNING 1)
                 SELECT 1 / count(*) FROM moved"
            ),
            &[
                (&position, Type::INT8),
                (&source_at, Type::FLOAT8),
                (&changes, Type::INT8),
                (&tenant, Type::TEXT),
            ],
        )
        .await;
    match moved {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => Err(Error::new(
            crate::error::ErrorKind::Schema,
            format!(
                "the stored stream position is already at or past {position}: is another sqlite2pg daemon running on this target?"
            ),
        )),
        Err(e) => Err(pg("record the stream position")(e)),
    }
}

/// Records that every table was verified equal up to `position`: cutover then only re-verifies
/// the keys changed after it, and the daemon keeps those in the changelog.
pub async fn set_verified(client: &impl GenericClient, tenant: &str, position: i64) -> Result<()> {
    client
        .execute(
            &format!("UPDATE {STATE_SCHEMA}.stream SET verified_position = $1 WHERE tenant = $2"),
            &[&position, &tenant],
        )
        .await
        .map_err(pg("record the verified position"))?;
    Ok(())
}

/// The position of the last full, equal verify.
pub async fn verified_position(client: &impl GenericClient, tenant: &str) -> Result<Option<i64>> {
    let row = client
        .query_opt(
            &format!("SELECT verified_position FROM {STATE_SCHEMA}.stream WHERE tenant = $1"),
            &[&tenant],
        )
        .await
        .map_err(pg("read the verified position"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// SQL rendering a timestamptz column as RFC 3339 in UTC, for records `status` shows.
pub fn rfc3339(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

/// A completed cutover.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cutover {
    /// When SQLite writes were fenced (RFC 3339).
    pub fenced_at: String,
    /// When the cutover completed.
    pub done_at: String,
    /// The write-unavailable window, fence to done.
    pub window_ms: f64,
    /// Rows verified inside the window.
    pub rows_verified: i64,
    /// The changelog position Postgres holds.
    pub position: i64,
}

/// The tenants with tables in `schema` that are not cut over: in a fleet's shared tables,
/// those still streaming into them (a tenant paused or waiting for a person counts).
pub async fn not_cut_over_in(client: &impl GenericClient, schema: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT s.tenant FROM {STATE_SCHEMA}.table_state s WHERE s.target_schema = $1
                 AND NOT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.cutover c WHERE c.tenant = s.tenant) ORDER BY 1"
            ),
            &[&schema],
        )
        .await
        .map_err(pg("read which tenants still stream into the schema"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The cutover record, if the migration is cut over.
pub async fn cutover_load(client: &impl GenericClient, tenant: &str) -> Result<Option<Cutover>> {
    if !state_table_exists(client, "cutover").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT {}, {}, window_ms, rows_verified, position FROM {STATE_SCHEMA}.cutover c WHERE {}",
                rfc3339("fenced_at"),
                rfc3339("done_at"),
                of_tenant("c", 1)
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the cutover record"))?;
    Ok(row.map(|r| Cutover {
        fenced_at: r.get(0),
        done_at: r.get(1),
        window_ms: r.get(2),
        rows_verified: r.get(3),
        position: r.get(4),
    }))
}

/// Records the cutover (fenced_at/done_at as seconds since the Unix epoch).
pub async fn cutover_record(
    client: &impl GenericClient,
    tenant: &str,
    fenced_at: f64,
    done_at: f64,
    rows_verified: i64,
    position: i64,
) -> Result<()> {
    let window_ms = (done_at - fenced_at) * 1000.0;
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.cutover (tenant, fenced_at, done_at, window_ms, rows_verified, position)
                 VALUES ($6, to_timestamp($1), to_timestamp($2), $3, $4, $5)"
            ),
            &[&fenced_at, &done_at, &window_ms, &rows_verified, &position, &tenant],
        )
        .await
        .map_err(pg("record the cutover"))?;
    Ok(())
}

/// Records the error the daemon stopped on, for `status`.
pub async fn stream_error(client: &impl GenericClient, tenant: &str, message: &str) -> Result<()> {
    client
        .execute(
            // A daemon waiting for a person says it again at every retry: only a new text
            // writes the row.
            &format!(
                "UPDATE {STATE_SCHEMA}.stream SET last_error = $1 WHERE tenant = $2 AND last_error IS DISTINCT FROM $1"
            ),
            &[&message, &tenant],
        )
        .await
        .map_err(pg("record the last error"))?;
    Ok(())
}

/// Which of a tenant's daemon locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// Held while the daemon works on the tenant: two runs never follow one tenant.
    Run,
    /// Held while the daemon is up, working or waiting for a person.
    Presence,
}

impl Lock {
    /// The text hashed into a named tenant's lock class.
    fn class(self) -> &'static str {
        match self {
            Lock::Run => "sqlite2pg run",
            Lock::Presence => "sqlite2pg presence",
        }
    }
}

/// The advisory lock key `(class, id)` of a tenant's lock, the class as the text Postgres
/// hashes. The tenant of no name has the keys of sqlite2pg before fleets (under
/// `hashtext('sqlite2pg')`: 1 the run lock, 2 the state format's upgrade, 3 presence); a
/// named tenant has its registered number. `None`: a tenant never registered.
async fn lock_key(
    client: &impl GenericClient,
    tenant: &str,
    lock: Lock,
) -> Result<Option<(&'static str, i32)>> {
    if tenant.is_empty() {
        return Ok(Some(match lock {
            Lock::Run => ("sqlite2pg", 1),
            Lock::Presence => ("sqlite2pg", 3),
        }));
    }
    if !state_table_exists(client, "tenant").await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!("SELECT lock_id FROM {STATE_SCHEMA}.tenant WHERE name = $1"),
            &[&tenant],
        )
        .await
        .map_err(pg("read a tenant's lock number"))?;
    Ok(row.map(|r| (lock.class(), r.get(0))))
}

/// Records that a tenant's migration has begun (once), giving it its lock number.
pub async fn register(client: &impl GenericClient, tenant: &str) -> Result<()> {
    client
        .execute(
            &format!("INSERT INTO {STATE_SCHEMA}.tenant (name) VALUES ($1) ON CONFLICT DO NOTHING"),
            &[&tenant],
        )
        .await
        .map_err(pg("register the tenant"))?;
    Ok(())
}

/// The tenants whose migration has begun, by name.
pub async fn registered(client: &impl GenericClient) -> Result<Vec<String>> {
    if !state_table_exists(client, "tenant").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!("SELECT name FROM {STATE_SCHEMA}.tenant ORDER BY name"),
            &[],
        )
        .await
        .map_err(pg("list the tenants"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Whether a sqlite2pg daemon is up for `tenant` right now: it holds the tenant's run lock,
/// or its presence lock while it waits for a person.
pub async fn daemon_running(client: &impl GenericClient, tenant: &str) -> Result<bool> {
    for lock in [Lock::Run, Lock::Presence] {
        let Some((class, id)) = lock_key(client, tenant, lock).await? else {
            return Ok(false);
        };
        // pg_locks shows the two int4 keys as oids (unsigned).
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND objid::bigint = ($2::int)::bigint & 4294967295
                   AND classid::bigint - CASE WHEN classid::bigint > 2147483647 THEN 4294967296 ELSE 0 END = hashtext($1))",
                &[&class, &id],
            )
            .await
            .map_err(pg("look for a running daemon"))?;
        if row.get(0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Takes one of a tenant's locks without waiting; a tenant's first lock registers it.
async fn try_advisory(client: &Client, tenant: &str, lock: Lock) -> Result<bool> {
    // A named tenant's number and its lock in one statement: a fleet's tenant takes its run
    // lock at every hand-off of a session. No row: not registered yet.
    if !tenant.is_empty() && state_table_exists(client, "tenant").await? {
        let row = client
            .query_typed_opt(
                &format!(
                    "SELECT pg_try_advisory_lock(hashtext($2), lock_id) FROM {STATE_SCHEMA}.tenant WHERE name = $1"
                ),
                &[(&tenant, Type::TEXT), (&lock.class(), Type::TEXT)],
            )
            .await
            .map_err(pg("take a daemon lock"))?;
        if let Some(r) = row {
            return Ok(r.get(0));
        }
    }
    let key = match lock_key(client, tenant, lock).await? {
        Some(key) => key,
        None => {
            ensure(client).await?;
            register(client, tenant).await?;
            lock_key(client, tenant, lock).await?.ok_or_else(|| {
                Error::new(
                    crate::error::ErrorKind::State,
                    format!("tenant {tenant} has no lock number in {STATE_SCHEMA}.tenant right after it was registered: is another process removing sqlite2pg's state?"),
                )
            })?
        }
    };
    let (class, id) = key;
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext($1), $2)",
            &[&class, &id],
        )
        .await
        .map_err(pg("take a daemon lock"))?;
    Ok(row.get(0))
}

/// Takes the presence lock: a daemon that is up but holds no run lock (it waits for a
/// person between passes) still shows in [`daemon_running`].
pub async fn take_presence(client: &Client, tenant: &str) -> Result<bool> {
    try_advisory(client, tenant, Lock::Presence).await
}

/// Lets go of a tenant's presence lock (a fleet's daemon is done with the tenant).
pub async fn release_presence(client: &Client, tenant: &str) -> Result<()> {
    if let Some((class, id)) = lock_key(client, tenant, Lock::Presence).await? {
        client
            .query_one(
                "SELECT pg_advisory_unlock(hashtext($1), $2)",
                &[&class, &id],
            )
            .await
            .map_err(pg("let go of a presence lock"))?;
    }
    Ok(())
}

/// Takes the run lock, waiting up to `patience` for a session that holds it to end: one this
/// daemon just let go of ends a moment after its client is dropped. `false`: held still.
pub async fn lock_within(client: &Client, tenant: &str, patience: Duration) -> Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        if try_lock(client, tenant).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the session-level advisory lock that keeps two runs off the same tenant.
pub async fn try_lock(client: &Client, tenant: &str) -> Result<bool> {
    try_advisory(client, tenant, Lock::Run).await
}

/// Lets go of every daemon lock the session holds (best effort: a session that is gone holds
/// none).
pub async fn let_go(client: &Client) {
    let _ = client.execute("SELECT pg_advisory_unlock_all()", &[]).await;
}

/// Deletes every state row of `tenant` (its tables in `schema`); how many other tenants
/// still have a migration here.
pub async fn forget(client: &impl GenericClient, tenant: &str, schema: &str) -> Result<i64> {
    for table in [
        "table_state",
        "image_chunk",
        "setting",
        "stream",
        "cutover",
        "fallback",
        "pg_fence",
        "reverse_change",
        "tenant",
    ] {
        let column = if table == "tenant" { "name" } else { "tenant" };
        client
            .execute(
                &format!("DELETE FROM {STATE_SCHEMA}.{table} WHERE {column} = $1"),
                &[&tenant],
            )
            .await
            .map_err(pg("forget a tenant's state"))?;
    }
    // What is kept per schema goes with the schema's last tenant: a fleet's shared tables
    // keep their foreign keys for the tenants still there.
    for table in ["foreign_key", "pg_only_table"] {
        client
            .execute(
                &format!(
                    "DELETE FROM {STATE_SCHEMA}.{table} WHERE target_schema = $1 AND NOT EXISTS (SELECT 1 FROM {STATE_SCHEMA}.table_state WHERE target_schema = $1)"
                ),
                &[&schema],
            )
            .await
            .map_err(pg("forget a tenant's state"))?;
    }
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {STATE_SCHEMA}.tenant) + (SELECT count(*) FROM {STATE_SCHEMA}.stream)"
            ),
            &[],
        )
        .await
        .map_err(pg("count the other tenants"))?;
    Ok(row.get(0))
}

fn encode_key(key: &[OwnedValue]) -> Result<Vec<u8>> {
    rmp_serde::to_vec(key).map_err(|e| {
        Error::with_source(
            crate::error::ErrorKind::Target,
            "cannot encode a snapshot position",
            e,
        )
    })
}

/// The stored state of a source table, if its snapshot has started.
pub async fn load(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
) -> Result<Option<TableState>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT phase, owned, last_key, rows_copied FROM {STATE_SCHEMA}.table_state WHERE tenant = $1 AND source_table = $2"
            ),
            &[&tenant, &source_table],
        )
        .await
        .map_err(pg("read table progress"))?;
    let Some(row) = row else { return Ok(None) };
    let phase: String = row.get(0);
    let phase = Phase::parse(&phase).ok_or_else(|| {
        Error::new(
            crate::error::ErrorKind::Schema,
            format!("unknown phase '{phase}' stored for table {source_table}"),
        )
    })?;
    let last_key: Option<Vec<u8>> = row.get(2);
    let last_key = match last_key {
        Some(bytes) => Some(rmp_serde::from_slice(&bytes).map_err(|e| {
            Error::with_source(
                crate::error::ErrorKind::Schema,
                format!("the stored snapshot position of table {source_table} is unreadable"),
                e,
            )
        })?),
        None => None,
    };
    Ok(Some(TableState {
        phase,
        owned: row.get(1),
        last_key,
        rows_copied: row.get(3),
    }))
}

/// Records that a table's snapshot starts.
pub async fn start(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
    target_schema: &str,
    target_table: &str,
    owned: bool,
    rows_total: i64,
) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {STATE_SCHEMA}.table_state (tenant, source_table, target_schema, target_table, owned, phase, rows_total)
                 VALUES ($6, $1, $2, $3, $4, 'copying', $5)"
            ),
            &[&source_table, &target_schema, &target_table, &owned, &rows_total, &tenant],
        )
        .await
        .map_err(pg("record the start of a table"))?;
    Ok(())
}

/// Advances a table's copy position (same transaction as the chunk's rows).
pub async fn advance(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
    last_key: Option<&[OwnedValue]>,
    rows: i64,
    finished: bool,
) -> Result<()> {
    let key = last_key.map(encode_key).transpose()?;
    let phase = if finished {
        Phase::Copied
    } else {
        Phase::Copying
    };
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.table_state
                 SET last_key = COALESCE($2, last_key), rows_copied = rows_copied + $3, phase = $4, updated_at = now()
                 WHERE tenant = $5 AND source_table = $1"
            ),
            &[&source_table, &key, &rows, &phase.as_str(), &tenant],
        )
        .await
        .map_err(pg("record copy progress"))?;
    Ok(())
}

/// Moves a table to a later phase.
pub async fn set_phase(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
    phase: Phase,
) -> Result<()> {
    client
        .execute(
            &format!("UPDATE {STATE_SCHEMA}.table_state SET phase = $2, updated_at = now() WHERE tenant = $3 AND source_table = $1"),
            &[&source_table, &phase.as_str(), &tenant],
        )
        .await
        .map_err(pg("record a phase change"))?;
    Ok(())
}

/// Where the snapshot of each table followed by row images stood: per chunk, the largest
/// rowid it covered (`None`: every rowid after the previous chunk) and the changelog position
/// its read saw. A row image at or below the position of the chunk covering its rowid is
/// already in the copy, and must not be applied again.
#[derive(Debug, Clone, Default)]
pub struct ImageHandoff {
    chunks: std::collections::HashMap<String, Vec<(Option<i64>, i64)>>,
}

impl ImageHandoff {
    /// Replaces a table's chunks (a re-synchronization read it again).
    pub fn replace(&mut self, table: &str, chunks: Vec<(Option<i64>, i64)>) {
        self.chunks.insert(table.to_string(), chunks);
    }

    /// Whether the change `seq` to the row at `rowid` of `table` is already in its snapshot.
    pub fn already_copied(&self, table: &str, seq: i64, rowid: i64) -> bool {
        let Some(chunks) = self.chunks.get(table) else {
            return false;
        };
        chunks
            .iter()
            .find(|(upto, _)| upto.is_none_or(|u| rowid <= u))
            .is_some_and(|(_, at)| seq <= *at)
    }
}

/// The snapshot handoff of every table followed by row images.
pub async fn image_handoff(client: &impl GenericClient, tenant: &str) -> Result<ImageHandoff> {
    let rows = client
        .query(
            &format!(
                "SELECT source_table, upto_rowid, seq FROM {STATE_SCHEMA}.image_chunk WHERE tenant = $1 ORDER BY source_table, upto_rowid NULLS LAST"
            ),
            &[&tenant],
        )
        .await
        .map_err(pg("read the snapshot handoff of row-image tables"))?;
    let mut out = ImageHandoff::default();
    for r in rows {
        out.chunks
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// Records one snapshot chunk of a table followed by row images (same transaction as its rows).
pub async fn image_chunk(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
    upto_rowid: Option<i64>,
    seq: i64,
    schema_version: i64,
) -> Result<()> {
    client
        .execute(
            &format!("INSERT INTO {STATE_SCHEMA}.image_chunk (source_table, upto_rowid, seq, schema_version, tenant) VALUES ($1, $2, $3, $4, $5)"),
            &[&source_table, &upto_rowid, &seq, &schema_version, &tenant],
        )
        .await
        .map_err(pg("record a snapshot chunk"))?;
    Ok(())
}

/// Whether a table followed by row images was copied across a schema change (a `VACUUM`
/// renumbers rowids and moves the schema version): its chunks then do not fit together.
pub async fn image_copy_torn(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
) -> Result<bool> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(DISTINCT schema_version) > 1 FROM {STATE_SCHEMA}.image_chunk WHERE tenant = $1 AND source_table = $2"
            ),
            &[&tenant, &source_table],
        )
        .await
        .map_err(pg("read the snapshot chunks of a table"))?;
    Ok(row.get(0))
}

/// Forgets a table's snapshot so that the next pass copies it again from the start.
pub async fn restart_copy(
    client: &impl GenericClient,
    tenant: &str,
    source_table: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "DELETE FROM {STATE_SCHEMA}.image_chunk WHERE tenant = $1 AND source_table = $2"
            ),
            &[&tenant, &source_table],
        )
        .await
        .map_err(pg("forget the chunks of a table"))?;
    client
        .execute(
            &format!(
                "UPDATE {STATE_SCHEMA}.table_state SET phase = 'copying', last_key = NULL, rows_copied = 0, updated_at = now() WHERE tenant = $1 AND source_table = $2"
            ),
            &[&tenant, &source_table],
        )
        .await
        .map_err(pg("restart the copy of a table"))?;
    Ok(())
}
