//! Capture: the changelog and the triggers that fill it, installed and removed in one short
//! write transaction that waits politely for the app's lock.
//!
//! The changelog holds keys, never values: one row per changed row (two when an UPDATE changes
//! the key), with the commit time from `julianday('now')`. Trigger SQL runs inside the *app's*
//! SQLite library, which may be years older than ours, so it uses nothing newer than 3.8 and
//! nothing that can fail on a value (keys are copied as they are, whatever their class).

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::quote_ident;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Follow, SourceTable, TableKind};
use crate::sql;

pub use crate::model::BASE_KEY_COLUMNS;
/// The changelog table.
pub const CHANGES: &str = "_sqlite2pg_changes";
/// Table ids and install identity.
pub const TABLES: &str = "_sqlite2pg_tables";
/// Install identity and format.
pub const META: &str = "_sqlite2pg_meta";
/// The name prefix of every trigger sqlite2pg creates in the SQLite file.
pub const TRIGGER_PREFIX: &str = "_sqlite2pg_";

/// What `install` left in the file.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Random id of this install; a changelog made by another install cannot continue a stream.
    pub install_id: String,
    /// Tables captured, with their changelog ids.
    pub tables: Vec<(i64, String)>,
    /// Tables this install found rebuilt or redefined, and asked the stream to re-synchronize.
    pub reshaped: Vec<String>,
    /// The format of the objects in the file.
    pub format: i64,
}

fn ctx(what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::from_sqlite(format!("cannot {what}"), e)
}

/// The columns whose values identify a row in the changelog (`None` for tables followed by
/// row images, see [`SourceTable::follow`]).
pub fn key_columns(t: &SourceTable) -> Option<Vec<String>> {
    match t.follow() {
        Follow::ByKey(idx) => Some(idx.iter().map(|i| t.columns[*i].name.clone()).collect()),
        Follow::ByImage => None,
    }
}

/// The install identity, if capture is installed.
pub fn installed(conn: &Connection) -> Result<Option<Installed>> {
    let format = format_of(conn)?;
    if format == 0 {
        return Ok(None);
    }
    let install_id: String = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'install_id'"),
            [],
            |r| r.get(0),
        )
        .map_err(ctx("read the capture install id"))?;
    let mut stmt = conn
        .prepare(&format!("SELECT id, name FROM {TABLES} ORDER BY id"))
        .map_err(ctx("read captured tables"))?;
    let tables = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|r| r.collect())
        .map_err(ctx("read captured tables"))?;
    Ok(Some(Installed {
        install_id,
        tables,
        reshaped: Vec::new(),
        format,
    }))
}

/// Whether one of sqlite2pg's tables is in the file.
fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)))
        .map_err(ctx("read the SQLite schema"))?;
    Ok(n > 0)
}

/// The format of sqlite2pg's objects in the file (0: none installed), refusing one this build
/// does not know: a newer sqlite2pg made it, and reading it as ours would misread it.
pub fn format_of(conn: &Connection) -> Result<i64> {
    if !table_exists(conn, META)? {
        return Ok(0);
    }
    let raw: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'format'"),
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(ctx("read the capture format"))?;
    match raw.as_deref().map(str::parse::<i64>) {
        Some(Ok(n)) if (1..=sql::SQLITE_FORMAT).contains(&n) => Ok(n),
        other => Err(Error::new(
            ErrorKind::State,
            format!(
                "the SQLite file holds sqlite2pg objects of format {}, which this sqlite2pg {} (format {}) does not know: a newer sqlite2pg installed them. Use that version (or a newer one); this one would misread them",
                match other {
                    Some(Ok(n)) => n.to_string(),
                    _ => format!("{raw:?}"),
                },
                env!("CARGO_PKG_VERSION"),
                sql::SQLITE_FORMAT
            ),
        )),
    }
}

/// How many key columns (`k1..kN`) the changelog has: four, or as many as its widest key.
pub fn key_slots(conn: &Connection) -> Result<usize> {
    let n: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM pragma_table_info('{CHANGES}') WHERE name GLOB 'k[0-9]*'"
            ),
            [],
            |r| r.get(0),
        )
        .map_err(ctx("read the changelog's columns"))?;
    Ok(n as usize)
}

/// `k1, k2, ..., kN`.
pub fn key_slot_list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The format steps (`sql/sqlite/NNNN_*.sql`) a file at format `from` still lacks.
fn pending_steps(from: i64) -> impl Iterator<Item = &'static (i64, &'static str)> {
    sql::SQLITE_STEPS.iter().filter(move |(n, _)| *n > from)
}

/// Brings the file's sqlite2pg objects to this build's format, inside the caller's write
/// transaction: a kill mid-upgrade leaves the file at the format it had.
fn upgrade(tx: &Connection) -> Result<()> {
    let from = format_of(tx)?;
    for (n, step) in pending_steps(from) {
        tx.execute_batch(step)
            .map_err(ctx("run a format step of the changelog"))?;
        tx.execute(
            &format!("INSERT OR REPLACE INTO {META} (key, value) VALUES ('format', ?1)"),
            [n.to_string()],
        )
        .map_err(ctx("record the changelog format"))?;
        if from > 0 {
            tracing::info!(
                from,
                to = n,
                "upgraded sqlite2pg's objects in the SQLite file"
            );
        }
    }
    Ok(())
}

fn random_id() -> String {
    // Not a secret: just distinct per install. Time and pid are enough.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// How long an install waits for a moment the app is outside a transaction.
const INSTALL_PATIENCE: Duration = Duration::from_secs(60);

/// Installs (or completes) capture for `tables` in one write transaction, taken when the app
/// is outside a transaction. Idempotent: tables already captured keep their id, and triggers
/// already in place word for word are left alone.
pub fn install(conn: &Connection, tables: &[&SourceTable]) -> Result<Installed> {
    for t in tables {
        if t.kind != TableKind::Plain {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "table {} cannot be captured: it is not an ordinary table; --exclude it",
                    t.name
                ),
            ));
        }
    }
    // Most starts find capture as an earlier install left it. A read-only pass of the same
    // steps tells (SQLite refuses the first write one of them would make), and then nothing
    // takes the write lock. Otherwise the write waits for a moment the app is outside a
    // transaction: an app transaction that read first must not be refused its write.
    let reshaped = match read_only_pass(conn, tables) {
        Ok(reshaped) => reshaped,
        Err(e) if refused_as_a_write(&e) => {
            super::locks::write_when_quiet(conn, "install capture", INSTALL_PATIENCE, |tx| {
                install_steps(tx, tables)
            })?
        }
        Err(e) => return Err(e),
    };
    let mut done = installed(conn)?.ok_or_else(|| {
        Error::new(
            ErrorKind::SourceUnreadable,
            "capture vanished right after install",
        )
    })?;
    done.reshaped = reshaped;
    Ok(done)
}

/// `install_steps` with SQLite refusing every write: `Ok` when capture is as they would leave it.
fn read_only_pass(conn: &Connection, tables: &[&SourceTable]) -> Result<Vec<String>> {
    conn.pragma_update(None, "query_only", true)
        .map_err(ctx("look at the capture read-only"))?;
    let result = super::in_read_transaction(conn, "the capture", || install_steps(conn, tables));
    conn.pragma_update(None, "query_only", false)
        .map_err(ctx("end the read-only look at the capture"))?;
    result
}

/// Whether `e` is SQLite refusing a write under `query_only`.
fn refused_as_a_write(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code)
        == Some(rusqlite::ErrorCode::ReadOnly)
}

/// Every step of an install; each writes only what is not already so, so that a pass that
/// would change nothing makes no write at all. Returns the tables to re-synchronize.
fn install_steps(tx: &Connection, tables: &[&SourceTable]) -> Result<Vec<String>> {
    upgrade(tx)?;
    let widest = tables
        .iter()
        .filter_map(|t| key_columns(t).map(|k| k.len()))
        .max()
        .unwrap_or(0);
    for n in key_slots(tx)? + 1..=widest {
        tx.execute_batch(&format!("ALTER TABLE {CHANGES} ADD COLUMN k{n}"))
            .map_err(ctx("widen the changelog for a wide primary key"))?;
    }
    let has_id: bool = tx
        .query_row(
            &format!("SELECT count(*) > 0 FROM {META} WHERE key = 'install_id'"),
            [],
            |r| r.get(0),
        )
        .map_err(ctx("read the install id"))?;
    if !has_id {
        tx.execute(
            &format!("INSERT INTO {META} (key, value) VALUES ('install_id', ?1)"),
            [random_id()],
        )
        .map_err(ctx("record the install id"))?;
    }
    drop_strays(tx)?;
    let mut reshaped = Vec::new();
    for t in tables {
        let known: Option<i64> = tx
            .query_row(
                &format!("SELECT id FROM {TABLES} WHERE name = ?1"),
                [&t.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(ctx("read a captured table id"))?;
        let id = match known {
            Some(id) => id,
            None => {
                tx.execute(
                    &format!("INSERT INTO {TABLES} (name) VALUES (?1)"),
                    [&t.name],
                )
                .map_err(ctx("register a captured table"))?;
                tx.last_insert_rowid()
            }
        };
        // Written before the triggers come back, in the same transaction: whatever the app
        // wrote while capture was missing is covered by the re-synchronization the marker asks
        // for, and everything after it is in the changelog.
        if let Some(why) = known
            .map(|id| capture_gap(tx, t, id))
            .transpose()?
            .flatten()
        {
            tx.execute(
                &format!("INSERT INTO {CHANGES} (tbl, at) VALUES (?1, julianday('now'))"),
                [resync_marker(id)],
            )
            .map_err(ctx("record a re-synchronization"))?;
            reshaped.push(t.name.clone());
            tracing::warn!(table = %t.name, reason = why, "changes to this table may have gone uncaptured; it will be re-synchronized");
        }
        if recorded_definition(tx, id)?.as_deref() != Some(t.sql.as_str()) {
            tx.execute(
                &format!("INSERT OR REPLACE INTO {META} (key, value) VALUES (?1, ?2)"),
                rusqlite::params![definition_key(id), t.sql],
            )
            .map_err(ctx("record a captured table's definition"))?;
        }
        let triggers = match t.follow() {
            Follow::ByKey(_) => trigger_sql(t, id),
            Follow::ByImage => {
                ensure_image_tables(tx, t, id)?;
                image_trigger_sql(t, id)
            }
        };
        for sql in triggers {
            if unchanged_trigger(tx, &sql)? {
                continue;
            }
            tx.execute_batch(&sql).map_err(|e| {
                Error::from_sqlite(
                    format!("cannot create a capture trigger on table {}", t.name),
                    e,
                )
            })?;
        }
    }
    Ok(reshaped)
}

/// Whether the trigger `script` (re)creates is in the file already, word for word. Such a
/// trigger is left alone: dropping and creating it again would change the schema version
/// for nothing, and a snapshot of a table followed by row images reads a changed version as
/// a VACUUM between its chunks, and copies the table again (every restart did).
fn unchanged_trigger(tx: &Connection, script: &str) -> Result<bool> {
    let Some(at) = script.find("CREATE TRIGGER ") else {
        return Ok(false);
    };
    let create = script[at..].trim_end().trim_end_matches(';');
    // One trigger a script: more than one is not compared.
    if create[1..].contains("CREATE TRIGGER ") {
        return Ok(false);
    }
    let n: i64 = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql = ?1",
            [create],
            |r| r.get(0),
        )
        .map_err(ctx("read the capture triggers"))?;
    Ok(n == 1)
}

/// The definition of captured table `id` as its install recorded it.
fn recorded_definition(conn: &Connection, id: i64) -> Result<Option<String>> {
    conn.query_row(
        &format!("SELECT value FROM {META} WHERE key = ?1"),
        [definition_key(id)],
        |r| r.get(0),
    )
    .optional()
    .map_err(ctx("read a captured table's definition"))
}

/// The changelog row that asks the stream to re-synchronize table `id`: `tbl` holds `-id`
/// (table ids are positive), and no key.
pub fn resync_marker(id: i64) -> i64 {
    -id
}

fn definition_key(id: i64) -> String {
    format!("definition:{id}")
}

/// The names of the AFTER triggers that capture table `id`: with them all in place on the
/// table, no change to it can bypass the changelog.
fn capture_trigger_names(id: i64) -> [String; 3] {
    ["ai", "ad", "au"].map(|k| format!("{TRIGGER_PREFIX}{k}_{id}"))
}

/// Why changes to the captured table `t` (changelog id `id`) may have missed the changelog
/// since capture was installed on it, if they may have: its triggers are gone (a migration
/// rebuilt the table: create a copy, drop, rename, as Alembic's batch mode does), or its
/// definition changed (a column added, dropped, renamed or retyped) while the rows were not
/// followed under the new shape.
fn capture_gap(conn: &Connection, t: &SourceTable, id: i64) -> Result<Option<&'static str>> {
    let [ai, ad, au] = capture_trigger_names(id);
    let present: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 AND name IN (?2, ?3, ?4)",
            rusqlite::params![t.name, ai, ad, au],
            |r| r.get(0),
        )
        .map_err(ctx("look for the capture triggers"))?;
    if present < 3 {
        return Ok(Some(
            "its capture triggers were gone (the table was dropped or rebuilt, e.g. by a migration)",
        ));
    }
    let trigger_sql = |kind: &str| {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
            [format!("{TRIGGER_PREFIX}{kind}_{id}")],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(ctx("read a capture trigger"))
    };
    let by_image = t.follow() == Follow::ByImage;
    if t.key_collations.iter().any(|c| c != "BINARY") && !by_image {
        if trigger_sql("ak")?.is_some_and(|sql| !sql.contains("COLLATE BINARY")) {
            return Ok(Some(
                "its capture triggers, made by an earlier sqlite2pg, compare a NOCASE or RTRIM key under its collation and miss a key changed only in case or trailing spaces",
            ));
        }
        // Every eviction match names its collation since the REPLACE of a folded key is
        // captured; a trigger without one is older.
        if !trigger_sql("bi")?.is_some_and(|sql| sql.contains("COLLATE")) {
            return Ok(Some(
                "its capture triggers, made by an earlier sqlite2pg, miss the row a REPLACE evicts when the new key equals it only under NOCASE or RTRIM",
            ));
        }
    }
    if every_update_may_evict(t) && trigger_sql("bu")?.is_some_and(|sql| sql.contains("UPDATE OF"))
    {
        return Ok(Some(
            "its capture triggers, made by an earlier sqlite2pg, miss the row an UPDATE OR REPLACE evicts when it brings a row into a partial UNIQUE index",
        ));
    }
    if by_image
        && !unique_column_sets(t).is_empty()
        && !trigger_sql("ad")?.is_some_and(|sql| sql.contains("DELETE FROM"))
    {
        return Ok(Some(
            "its capture triggers, made by an earlier sqlite2pg, record twice a row a REPLACE evicts when the app sets recursive_triggers",
        ));
    }
    let on_terms = t
        .indexes
        .iter()
        .any(|ix| ix.unique && ix.columns.iter().any(Option::is_none));
    if on_terms && !trigger_sql("bi")?.is_some_and(|sql| sql.contains(" IN (SELECT ")) {
        return Ok(Some(
            "its capture triggers, made by an earlier sqlite2pg, miss the row a REPLACE evicts through a UNIQUE index on expressions",
        ));
    }
    Ok(match recorded_definition(conn, id)? {
        None => Some("it was captured by an earlier sqlite2pg that did not record its definition"),
        Some(sql) if sql != t.sql => Some("its definition changed"),
        Some(_) => None,
    })
}

/// Captured tables whose capture is no longer what `install` left: triggers gone or moved, or a
/// definition that changed since. The stream re-plans (and `install` re-synchronizes them) when
/// this is not empty. Only tables `followed(id)` are looked at (`tables` is the schema as it is now).
pub fn drift(
    conn: &Connection,
    installed: &Installed,
    tables: &[SourceTable],
    followed: impl Fn(i64) -> bool,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (id, name) in installed.tables.iter().filter(|(id, _)| followed(*id)) {
        let Some(t) = tables.iter().find(|t| &t.name == name) else {
            continue;
        };
        if capture_gap(conn, t, *id)?.is_some() {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// Drops our triggers that sit on a table other than the one their id was registered for:
/// `ALTER TABLE ... RENAME` takes triggers along, so after a rename (or the rebuild of a table
/// under a scratch name) they would record another table's changes under the old id.
fn drop_strays(tx: &Connection) -> Result<()> {
    let registered: std::collections::HashMap<i64, String> = {
        let mut stmt = tx
            .prepare(&format!("SELECT id, name FROM {TABLES}"))
            .map_err(ctx("read captured tables"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(ctx("read captured tables"))?
    };
    let ours: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_sqlite2pg\\_%' ESCAPE '\\'")
            .map_err(ctx("list the capture triggers"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(ctx("list the capture triggers"))?
    };
    for (trigger, on) in ours {
        let id = trigger
            .rsplit('_')
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        let stray = match id.and_then(|id| registered.get(&id)) {
            Some(name) => name != &on,
            None => false,
        };
        if stray {
            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&trigger)))
                .map_err(ctx("drop a capture trigger left on a renamed table"))?;
        }
    }
    Ok(())
}

/// Every statement `install` would run on this file for `tables`, as a script a DBA can read
/// before anything touches a production file: the format steps it lacks, then per table its
/// scratch tables and triggers (with the changelog id the table has or would get).
pub fn install_script(conn: &Connection, tables: &[&SourceTable]) -> Result<String> {
    let from = format_of(conn)?;
    let mut out = vec![format!(
        "-- sqlite2pg {} would run this in one write transaction on the SQLite file\n-- (its objects: format {from} now, {} after).\nBEGIN IMMEDIATE;",
        env!("CARGO_PKG_VERSION"),
        sql::SQLITE_FORMAT
    )];
    for (n, step) in pending_steps(from) {
        out.push(step.trim().to_string());
        out.push(format!(
            "INSERT OR REPLACE INTO {META} (key, value) VALUES ('format', '{n}');"
        ));
    }
    let registered: std::collections::HashMap<String, i64> = if from > 0 {
        installed(conn)?
            .map(|i| i.tables.into_iter().map(|(id, n)| (n, id)).collect())
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let mut next = registered.values().max().copied().unwrap_or(0) + 1;
    for t in tables {
        let id = match registered.get(&t.name) {
            Some(id) => *id,
            None => {
                next += 1;
                next - 1
            }
        };
        out.push(format!("\n-- table {}: changelog id {id}", t.name));
        let triggers = match t.follow() {
            Follow::ByKey(_) => trigger_sql(t, id),
            Follow::ByImage => {
                let cols = image_columns(t.columns.len()).join(", ");
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {} (seq INTEGER PRIMARY KEY, {cols});",
                    quote_ident(&image_table(id))
                ));
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {} (rid INTEGER, {cols});",
                    quote_ident(&evict_table(id))
                ));
                image_trigger_sql(t, id)
            }
        };
        out.extend(triggers);
    }
    out.push("COMMIT;".into());
    Ok(out.join("\n") + "\n")
}

/// Where the row images of a table followed by row images go: one row per changelog row,
/// with the same `seq`, and typeless columns `c1..cN` that keep each value's storage class.
pub fn image_table(id: i64) -> String {
    format!("{TRIGGER_PREFIX}img_{id}")
}

/// Scratch space for rows a REPLACE may evict (see `image_trigger_sql`).
fn evict_table(id: i64) -> String {
    format!("{TRIGGER_PREFIX}ev_{id}")
}

fn image_columns(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("c{i}")).collect()
}

/// Creates the image (and eviction) tables, or widens them when the app added columns.
fn ensure_image_tables(tx: &Connection, t: &SourceTable, id: i64) -> Result<()> {
    for (table, lead) in [
        (image_table(id), "seq INTEGER PRIMARY KEY"),
        (evict_table(id), "rid INTEGER"),
    ] {
        let q = quote_ident(&table);
        if !table_exists(tx, &table)? {
            tx.execute_batch(&format!("CREATE TABLE {q} ({lead})"))
                .map_err(ctx("create a row image table"))?;
        }
        let have: usize = tx
            .query_row(
                &format!(
                    "SELECT count(*) - 1 FROM pragma_table_info({})",
                    sql_string(&table)
                ),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(ctx("read a row image table"))?
            .max(0) as usize;
        for c in image_columns(t.columns.len()).iter().skip(have) {
            tx.execute_batch(&format!("ALTER TABLE {q} ADD COLUMN {c}"))
                .map_err(ctx("widen a row image table"))?;
        }
    }
    Ok(())
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Triggers of a table followed by row images (like Postgres' REPLICA IDENTITY FULL): every
/// change appends changelog rows `(tbl, k1 = rowid, k2 = +1 | -1)` and, under the same `seq`,
/// the image of the row that appeared (+1) or went (-1). Applying a range of them is multiset
/// arithmetic on whole rows, so duplicates stay duplicated and a `VACUUM` that renumbers
/// rowids changes nothing. A REPLACE evicts rows for a UNIQUE conflict without firing their
/// DELETE trigger: BEFORE triggers note the rows holding the new unique values, and the AFTER
/// trigger records those that are gone (templates in `sql/sqlite/capture.sql`).
fn image_trigger_sql(t: &SourceTable, id: i64) -> Vec<String> {
    let table = quote_ident(&t.name);
    let rowid = t.rowid_name();
    let images = quote_ident(&image_table(id));
    let evicted = quote_ident(&evict_table(id));
    let id_s = id.to_string();
    let image_columns = image_columns(t.columns.len()).join(", ");
    let vals = |alias: &str| {
        t.columns
            .iter()
            .map(|c| format!("{alias}.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let common = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![
            ("table", table.clone()),
            ("id", id_s.clone()),
            ("rowid", rowid.to_string()),
            ("images", images.clone()),
            ("evicted", evicted.clone()),
            ("image_columns", image_columns.clone()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let render = |name: &str, vars: Vec<(&'static str, String)>| {
        let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sql::capture(name, &refs)
    };
    let image = |alias: &str, sign: i8| {
        render(
            "image",
            common(&[
                ("alias", alias.to_string()),
                ("sign", sign.to_string()),
                ("values", vals(alias)),
            ]),
        )
    };
    let uniques = unique_column_sets(t);
    let (evictions, deleted) = if uniques.is_empty() {
        (String::new(), String::new())
    } else {
        let evicted_values = image_table_columns(t.columns.len(), "e");
        (
            render(
                "image_evicted",
                common(&[("evicted_values", evicted_values)]),
            ),
            render("image_deleted", common(&[])),
        )
    };
    let trigger = |kind: &str, event: &str, body: String| {
        render(
            "trigger",
            common(&[
                ("trigger", trigger_name(kind, id)),
                ("event", event.to_string()),
                ("body", body),
            ]),
        )
    };
    let drop = |kind: &str| render("drop", vec![("trigger", trigger_name(kind, id))]);
    let mut out = vec![
        trigger(
            "ai",
            "AFTER INSERT",
            format!("{evictions} {}", image("NEW", 1)),
        ),
        trigger(
            "ad",
            "AFTER DELETE",
            format!("{deleted} {}", image("OLD", -1)),
        ),
        trigger(
            "au",
            "AFTER UPDATE",
            format!("{evictions} {} {}", image("OLD", -1), image("NEW", 1)),
        ),
        drop("ak"),
    ];
    if uniques.is_empty() {
        out.push(drop("bi"));
        out.push(drop("bu"));
        return out;
    }
    let any: Vec<String> = uniques
        .iter()
        .map(|set| format!("({})", set.matches("x", "NEW")))
        .collect();
    let holders = |extra: String| {
        render(
            "image_holders",
            common(&[
                ("x_values", vals("x")),
                ("match", any.join(" OR ")),
                ("extra", extra),
            ]),
        )
    };
    out.push(trigger("bi", "BEFORE INSERT", holders(String::new())));
    out.push(trigger(
        "bu",
        "BEFORE UPDATE",
        holders(format!(" AND x.{rowid} <> OLD.{rowid}")),
    ));
    out
}

/// `e.c1, e.c2, ...`: the image columns of `n` columns under an alias.
fn image_table_columns(n: usize, alias: &str) -> String {
    image_columns(n)
        .iter()
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One way a REPLACE can find another row to evict: the columns of a UNIQUE index (or of a
/// primary key that folds case or trailing spaces) and the collation each compares under, or
/// the terms of a UNIQUE index on expressions.
enum UniqueSet {
    Columns {
        columns: Vec<String>,
        collations: Vec<String>,
    },
    /// The index's terms as SQL text (`lower(email)`, `a COLLATE NOCASE`) and every column of
    /// the table, to evaluate the terms over the new row.
    Terms {
        terms: Vec<String>,
        table_columns: Vec<String>,
    },
}

impl UniqueSet {
    /// `{a}."c" = {b}."c" COLLATE NOCASE AND ...`: equal as the index compares them. The
    /// index's collation is spelled out, for it may differ from the column's. Terms are
    /// compared as a row value: `(lower(email)) IN (SELECT lower(email) FROM (SELECT
    /// {b}."email" AS "email", ...))`, where the outer names are the candidate row's (the
    /// query's only table, alias `{a}`) and the inner ones the new row's.
    fn matches(&self, a: &str, b: &str) -> String {
        match self {
            UniqueSet::Columns {
                columns,
                collations,
            } => columns
                .iter()
                .zip(collations)
                .map(|(c, coll)| format!("{a}.{q} = {b}.{q} COLLATE {coll}", q = quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" AND "),
            UniqueSet::Terms {
                terms,
                table_columns,
            } => {
                let new_row = table_columns
                    .iter()
                    .map(|c| format!("{b}.{q} AS {q}", q = quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let terms = terms.join(", ");
                format!("({terms}) IN (SELECT {terms} FROM (SELECT {new_row}))")
            }
        }
    }

    fn columns(&self) -> &[String] {
        match self {
            UniqueSet::Columns { columns, .. } => columns,
            UniqueSet::Terms { table_columns, .. } => table_columns,
        }
    }
}

/// Every UNIQUE index, partial ones too (a holder noted but not evicted is re-read as present,
/// which is harmless), those on expressions by their terms, and the primary key of a keyed
/// table when it compares under NOCASE or RTRIM: a REPLACE of `'rust'` evicts the row keyed
/// `'Rust'`, which is another key to the changelog.
fn unique_column_sets(t: &SourceTable) -> Vec<UniqueSet> {
    let mut sets: Vec<UniqueSet> = Vec::new();
    for ix in t.indexes.iter().filter(|ix| ix.unique) {
        if ix.columns.iter().all(Option::is_some) {
            sets.push(UniqueSet::Columns {
                columns: ix.columns.iter().flatten().cloned().collect(),
                collations: ix.collations.clone(),
            });
            continue;
        }
        match ix.sql.as_deref().and_then(super::schema::index_terms) {
            Some(terms) if terms.len() == ix.columns.len() => sets.push(UniqueSet::Terms {
                terms,
                table_columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            }),
            // SQLite accepted the statement, so its terms read; this is only a guard.
            _ => {
                tracing::error!(table = %t.name, index = %ix.name, "cannot read the terms of this UNIQUE index: a REPLACE that evicts a row through it is not captured; report this with the index's CREATE statement")
            }
        }
    }
    let folding_key = t.key_collations.iter().any(|c| c != "BINARY");
    if folding_key && t.follow() != Follow::ByImage && t.rowid_alias.is_none() {
        sets.push(UniqueSet::Columns {
            columns: t
                .primary_key
                .iter()
                .map(|i| t.columns[*i].name.clone())
                .collect(),
            collations: t.key_collations.clone(),
        });
    }
    sets
}

/// A UNIQUE index a row can enter without a change to its key columns: a partial one (its
/// WHERE turns true) or one on expressions (whatever columns they read).
fn every_update_may_evict(t: &SourceTable) -> bool {
    t.indexes.iter().any(|ix| {
        ix.unique && (ix.where_clause.is_some() || ix.columns.iter().any(Option::is_none))
    })
}

fn trigger_name(kind: &str, id: i64) -> String {
    quote_ident(&format!("{TRIGGER_PREFIX}{kind}_{id}"))
}

/// The triggers of one table: AFTER INSERT/UPDATE/DELETE record keys; BEFORE INSERT/UPDATE
/// record the keys of rows a REPLACE is about to delete for a UNIQUE conflict (SQLite fires no
/// DELETE trigger for those unless the app enabled recursive_triggers). Templates in
/// `sql/sqlite/capture.sql`.
fn trigger_sql(t: &SourceTable, id: i64) -> Vec<String> {
    let keys = key_columns(t).unwrap_or_default();
    let list = |items: Vec<String>, sep: &str| items.join(sep);
    let row = |alias: &str| {
        list(
            keys.iter()
                .map(|k| format!("{alias}.{}", quote_ident(k)))
                .collect(),
            ", ",
        )
    };
    // Binary: an index may compare under another collation than the column's, and a holder
    // looked up for nothing is harmless.
    let changed = |cols: &[&String]| {
        list(
            cols.iter()
                .map(|k| format!("OLD.{q} IS NOT NEW.{q} COLLATE BINARY", q = quote_ident(k)))
                .collect(),
            " OR ",
        )
    };
    // A key changed only in case (NOCASE) or trailing spaces (RTRIM) is another key on
    // Postgres: the key's own collation must not hide the change.
    let key_changed = list(
        keys.iter()
            .map(|k| format!("OLD.{q} IS NOT NEW.{q} COLLATE BINARY", q = quote_ident(k)))
            .collect(),
        " OR ",
    );
    let base: Vec<(&'static str, String)> = vec![
        ("table", quote_ident(&t.name)),
        ("id", id.to_string()),
        (
            "slots",
            list((1..=keys.len()).map(|i| format!("k{i}")).collect(), ", "),
        ),
        ("new_key", row("NEW")),
        ("old_key", row("OLD")),
        (
            "key_columns",
            list(keys.iter().map(|k| quote_ident(k)).collect(), ", "),
        ),
        ("key_changed", key_changed),
        ("t_key", row("t")),
    ];
    let render = |name: &str, extra: &[(&'static str, String)]| {
        let refs: Vec<(&str, &str)> = base
            .iter()
            .chain(extra)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        sql::capture(name, &refs)
    };
    let mut out: Vec<String> = [
        ("key_insert", "ai"),
        ("key_delete", "ad"),
        ("key_update", "au"),
        ("key_moved", "ak"),
    ]
    .iter()
    .map(|(name, kind)| render(name, &[("trigger", trigger_name(kind, id))]))
    .collect();
    let uniques = unique_column_sets(t);
    let unique_cols: Vec<&String> = {
        let mut v: Vec<&String> = uniques.iter().flat_map(|u| u.columns()).collect();
        v.sort();
        v.dedup();
        v
    };
    // An UPDATE only evicts rows when it sets a unique column to a new value, or, for a
    // partial index, when it changes whatever column its WHERE reads and so brings the row
    // into the index: those tables look for holders on every UPDATE.
    let (update_event, update_when) = if every_update_may_evict(t) {
        ("UPDATE".to_string(), String::new())
    } else {
        (
            format!(
                "UPDATE OF {}",
                list(unique_cols.iter().map(|c| quote_ident(c)).collect(), ", ")
            ),
            format!(" WHEN {}", changed(&unique_cols)),
        )
    };
    for (kind, event, when) in [
        ("bi", "INSERT".to_string(), String::new()),
        ("bu", update_event, update_when),
    ] {
        let trigger = trigger_name(kind, id);
        if uniques.is_empty() {
            out.push(render("drop", &[("trigger", trigger)]));
            continue;
        }
        let holders: Vec<String> = uniques
            .iter()
            .map(|set| render("key_holder", &[("match", set.matches("t", "NEW"))]))
            .collect();
        out.push(render(
            "key_evicts",
            &[
                ("trigger", trigger),
                ("event", event),
                ("when", when),
                ("holders", holders.join(" ")),
            ],
        ));
    }
    out
}

/// What the app's writes get once the fence is up.
pub const FENCE_MESSAGE: &str = "this database has moved to PostgreSQL; see sqlite2pg status";

/// The fence table (a lease, see `sql/sqlite/0002_resync_and_fence_lease.sql`).
const FENCE: &str = "_sqlite2pg_fence";

/// The fence as it stands in the file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fence {
    /// Who raised it (process and host of the cutover).
    pub holder: String,
    /// When it was raised (Unix seconds).
    pub since_unix: f64,
    /// When the lease ends unless renewed (Unix seconds).
    pub until_unix: f64,
    /// The cutover is recorded: the fence never ends by itself.
    pub permanent: bool,
    /// Whether it blocks the app's writes right now.
    pub active: bool,
}

fn lease_days(lease: Duration) -> f64 {
    lease.as_secs_f64() / 86_400.0
}

/// Raises the fence for `lease`: BEFORE INSERT/UPDATE/DELETE triggers on every captured table
/// abort the app's writes with `FENCE_MESSAGE` while the lease holds. One immediate
/// transaction: either every table is fenced or none. The holder must renew it
/// ([`renew_fence`]) or the app gets its writes back when it runs out.
pub fn fence(
    conn: &mut Connection,
    tables: &[(i64, String)],
    holder: &str,
    lease: Duration,
) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx(
            "start the fence transaction (the app holds the write lock; retry)",
        ))?;
    upgrade(&tx)?;
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO {FENCE} (id, holder, since, until, permanent) VALUES (1, ?1, julianday('now'), julianday('now') + ?2, 0)"
        ),
        rusqlite::params![holder, lease_days(lease)],
    )
    .map_err(ctx("record the fence lease"))?;
    for (id, name) in tables {
        for (kind, event) in [("fi", "INSERT"), ("fu", "UPDATE"), ("fd", "DELETE")] {
            let sql = sql::fence(&[
                ("trigger", &trigger_name(kind, *id)),
                ("event", event),
                ("table", &quote_ident(name)),
                ("message", FENCE_MESSAGE),
            ]);
            tx.execute_batch(&sql)
                .map_err(|e| Error::from_sqlite(format!("cannot fence table {name}"), e))?;
        }
    }
    tx.commit().map_err(ctx("commit the fence"))
}

/// Extends `holder`'s lease by `lease` from now. `Ok(false)`: the lease is lost (it ran out,
/// was lifted by `cutover --abort`, or another cutover took it), so the app may have written
/// since: the holder must not go on.
pub fn renew_fence(conn: &Connection, holder: &str, lease: Duration) -> Result<bool> {
    let n = conn
        .execute(
            &format!(
                "UPDATE {FENCE} SET until = julianday('now') + ?2 WHERE id = 1 AND holder = ?1 AND permanent = 0 AND until > julianday('now')"
            ),
            rusqlite::params![holder, lease_days(lease)],
        )
        .map_err(ctx("renew the fence lease"))?;
    Ok(n == 1)
}

/// Makes `holder`'s fence permanent, if its lease still holds (so it never lapsed: a lapsed
/// lease cannot be renewed). `Ok(false)`: it does not, and the cutover must not be recorded.
pub fn make_fence_permanent(conn: &Connection, holder: &str) -> Result<bool> {
    let n = conn
        .execute(
            &format!(
                "UPDATE {FENCE} SET permanent = 1 WHERE id = 1 AND holder = ?1 AND until > julianday('now')"
            ),
            [holder],
        )
        .map_err(ctx("make the fence permanent"))?;
    Ok(n == 1)
}

/// Tells the metrics what the fence is (`None`: never raised).
pub fn report_fence(f: Option<&Fence>) {
    let expiry = match f {
        Some(f) if f.permanent => f64::INFINITY,
        Some(f) if f.active => f.until_unix,
        _ => 0.0,
    };
    crate::metrics::fence(f.is_some_and(|f| f.active), expiry);
}

/// The fence, if one was raised (active or lapsed).
pub fn fence_state(conn: &Connection) -> Result<Option<Fence>> {
    if !table_exists(conn, FENCE)? {
        return Ok(None);
    }
    conn.prepare_cached(&format!(
        "SELECT holder, (since - 2440587.5) * 86400.0, (until - 2440587.5) * 86400.0, permanent,
                permanent = 1 OR until > julianday('now')
         FROM {FENCE} WHERE id = 1"
    ))
    .and_then(|mut s| {
        s.query_row([], |r| {
            Ok(Fence {
                holder: r.get(0)?,
                since_unix: r.get(1)?,
                until_unix: r.get(2)?,
                permanent: r.get::<_, i64>(3)? == 1,
                active: r.get::<_, i64>(4)? == 1,
            })
        })
        .optional()
    })
    .map_err(ctx("read the fence"))
}

/// Lifts the fence (the app can write to SQLite again). Returns whether one was up.
pub fn unfence(conn: &mut Connection) -> Result<bool> {
    let was = fence_state(conn)?.is_some_and(|f| f.active);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx("start the unfence transaction"))?;
    let names: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND (name LIKE '\\_sqlite2pg\\_fi\\_%' ESCAPE '\\' OR name LIKE '\\_sqlite2pg\\_fu\\_%' ESCAPE '\\' OR name LIKE '\\_sqlite2pg\\_fd\\_%' ESCAPE '\\')")
            .map_err(ctx("list the fence"))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|r| r.collect())
            .map_err(ctx("list the fence"))?
    };
    for n in &names {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(n)))
            .map_err(ctx("drop the fence"))?;
    }
    if format_of(&tx)? >= 2 {
        tx.execute_batch(&format!("DELETE FROM {FENCE}"))
            .map_err(ctx("drop the fence lease"))?;
    }
    tx.commit().map_err(ctx("commit the unfence"))?;
    Ok(was)
}

/// Whether the fence blocks the app's writes right now.
pub fn fenced(conn: &Connection) -> Result<bool> {
    Ok(fence_state(conn)?.is_some_and(|f| f.active))
}

/// Removes every object sqlite2pg created (changelog, triggers, fence), and only those.
/// Returns how many objects were dropped.
pub fn uninstall(conn: &mut Connection) -> Result<usize> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx(
            "start the uninstall transaction (the app holds the write lock; retry)",
        ))?;
    let objects: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT type, name FROM sqlite_master WHERE (type = 'trigger' OR type = 'table') AND name LIKE '\\_sqlite2pg\\_%' ESCAPE '\\'")
            .map_err(ctx("list our objects"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(ctx("list our objects"))?
    };
    for (kind, name) in &objects {
        let sql = if kind == "trigger" {
            format!("DROP TRIGGER IF EXISTS {}", quote_ident(name))
        } else {
            format!("DROP TABLE IF EXISTS {}", quote_ident(name))
        };
        tx.execute_batch(&sql)
            .map_err(ctx("drop one of our objects"))?;
    }
    tx.commit().map_err(ctx("commit the uninstall"))?;
    Ok(objects.len())
}

/// How a prune went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Changelog rows deleted.
    pub rows: usize,
    /// Nothing is left to prune up to the position asked for.
    pub done: bool,
    /// It stopped because the app was inside a transaction (see [`prune`]).
    pub yielded: bool,
}

/// Deletes applied changelog rows (`seq <= upto`) and their row images, always keeping the
/// newest row so that sequence numbers never restart, in short write transactions of at most
/// `batch` rows each, until `budget` is spent.
///
/// Unless `force`, it yields to the app (`sqlite::locks`): each transaction takes the write
/// lock without waiting (`BEGIN IMMEDIATE`, busy timeout 0), and is rolled back when another
/// process is inside a transaction at its start or just before its commit. A transaction of
/// the app's that read before our commit and writes after it would be refused by SQLite at
/// once, busy timeout or not (a deferred `BEGIN`, Django's default, does that).
pub fn prune(
    conn: &Connection,
    source: &std::path::Path,
    upto: i64,
    batch: usize,
    budget: Duration,
    force: bool,
) -> Result<Pruned> {
    let started = std::time::Instant::now();
    let images: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_sqlite2pg\\_img\\_%' ESCAPE '\\'")
            .map_err(ctx("list the row image tables"))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|r| r.collect())
            .map_err(ctx("list the row image tables"))?
    };
    // Row images go with their changelog rows (the newest one's image stays with it).
    let statements: Vec<String> = std::iter::once(CHANGES.to_string())
        .chain(images.iter().map(|i| quote_ident(i)))
        .map(|q| {
            format!(
                "DELETE FROM {q} WHERE seq IN (SELECT seq FROM {q} WHERE seq <= ?1 \
                 AND seq < (SELECT max(seq) FROM {CHANGES}) ORDER BY seq LIMIT ?2)"
            )
        })
        .collect();
    let lock = super::locks::WriteLock::of(conn).map_err(ctx("read the journal mode"))?;
    let app_busy = || !force && super::locks::app_in_transaction(source, lock.wal) == Some(true);
    if !force {
        conn.busy_timeout(Duration::ZERO)
            .map_err(ctx("set the busy timeout"))?;
    }
    let mut out = Pruned {
        rows: 0,
        done: false,
        yielded: false,
    };
    let result = (|| -> Result<()> {
        loop {
            if app_busy() || conn.execute_batch(lock.begin()).is_err() {
                out.yielded = true;
                return Ok(());
            }
            let mut full = false;
            for (n, sql) in statements.iter().enumerate() {
                let deleted = conn
                    .execute(sql, rusqlite::params![upto, batch as i64])
                    .map_err(ctx("prune the changelog"));
                match deleted {
                    Ok(d) => {
                        if n == 0 {
                            out.rows += d;
                        }
                        full |= d >= batch;
                    }
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        return Err(e);
                    }
                }
            }
            if app_busy() || conn.execute_batch("COMMIT").is_err() {
                let _ = conn.execute_batch("ROLLBACK");
                out.yielded = true;
                return Ok(());
            }
            if !full {
                out.done = true;
                return Ok(());
            }
            if started.elapsed() >= budget {
                return Ok(());
            }
            // Let the app's writers in between our short transactions.
            std::thread::sleep(Duration::from_millis(1));
        }
    })();
    conn.busy_timeout(lock.waited)
        .map_err(ctx("restore the busy timeout"))?;
    result.map(|()| out)
}
