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
use crate::model::{ScanKey, SourceTable, TableKind};

pub use crate::model::MAX_KEY_COLUMNS;
/// The changelog table.
pub const CHANGES: &str = "_sqlite2pg_changes";
/// Table ids and install identity.
pub const TABLES: &str = "_sqlite2pg_tables";
/// Install identity and format.
pub const META: &str = "_sqlite2pg_meta";
const TRIGGER_PREFIX: &str = "_sqlite2pg_";

/// What `install` left in the file.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Random id of this install; a changelog made by another install cannot continue a stream.
    pub install_id: String,
    /// Tables captured, with their changelog ids.
    pub tables: Vec<(i64, String)>,
    /// Tables this install found rebuilt or redefined, and asked the stream to re-synchronize.
    pub reshaped: Vec<String>,
}

fn ctx(what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::from_sqlite(format!("cannot {what}"), e)
}

/// The columns whose values identify a row in the changelog (`None` for tables followed by
/// row images, see [`SourceTable::follows_row_images`]).
pub fn key_columns(t: &SourceTable) -> Option<Vec<String>> {
    if t.follows_row_images() {
        return None;
    }
    match t.scan_key() {
        ScanKey::Columns(idx) if idx.len() <= MAX_KEY_COLUMNS => {
            Some(idx.iter().map(|i| t.columns[*i].name.clone()).collect())
        }
        _ => None,
    }
}

/// The install identity, if capture is installed.
pub fn installed(conn: &Connection) -> Result<Option<Installed>> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [META],
            |r| r.get::<_, i64>(0),
        )
        .map_err(ctx("read the SQLite schema"))?
        > 0;
    if !exists {
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
    }))
}

fn random_id() -> String {
    // Not a secret: just distinct per install. Time and pid are enough.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// Installs (or completes) capture for `tables` in one write transaction. Idempotent: tables
/// already captured keep their id and triggers are recreated.
pub fn install(conn: &mut Connection, tables: &[&SourceTable]) -> Result<Installed> {
    for t in tables {
        if t.kind != TableKind::Plain || (key_columns(t).is_none() && !t.follows_row_images()) {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "table {} cannot be captured: a WITHOUT ROWID table needs a primary key of at most {MAX_KEY_COLUMNS} columns; --exclude the table",
                    t.name
                ),
            ));
        }
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx(
            "start the install transaction (the app holds the write lock; retry)",
        ))?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {TABLES} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS {CHANGES} (seq INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, k1, k2, k3, k4, at REAL NOT NULL);"
    ))
    .map_err(ctx("create the changelog"))?;
    tx.execute(
        &format!("INSERT OR IGNORE INTO {META} (key, value) VALUES ('install_id', ?1)"),
        [random_id()],
    )
    .map_err(ctx("record the install id"))?;
    tx.execute(
        &format!("INSERT OR IGNORE INTO {META} (key, value) VALUES ('format', '1')"),
        [],
    )
    .map_err(ctx("record the changelog format"))?;
    drop_strays(&tx)?;
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
            .map(|id| capture_gap(&tx, t, id))
            .transpose()?
            .flatten()
        {
            reshaped.push(t.name.clone());
            tracing::warn!(table = %t.name, reason = why, "changes to this table may have gone uncaptured; it will be re-synchronized");
            tx.execute(
                &format!("INSERT INTO {CHANGES} (tbl, at) VALUES (?1, julianday('now'))"),
                [resync_marker(id)],
            )
            .map_err(ctx("record a re-synchronization"))?;
        }
        tx.execute(
            &format!("INSERT OR REPLACE INTO {META} (key, value) VALUES (?1, ?2)"),
            rusqlite::params![definition_key(id), t.sql],
        )
        .map_err(ctx("record a captured table's definition"))?;
        if t.follows_row_images() {
            ensure_image_tables(&tx, t, id)?;
        }
        let triggers = if t.follows_row_images() {
            image_trigger_sql(t, id)
        } else {
            trigger_sql(t, id)
        };
        for sql in triggers {
            tx.execute_batch(&sql).map_err(|e| {
                Error::from_sqlite(
                    format!("cannot create a capture trigger on table {}", t.name),
                    e,
                )
            })?;
        }
    }
    tx.commit().map_err(ctx("commit the install"))?;
    let mut done = installed(conn)?.ok_or_else(|| {
        Error::new(
            ErrorKind::SourceUnreadable,
            "capture vanished right after install",
        )
    })?;
    done.reshaped = reshaped;
    Ok(done)
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
    let recorded: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = ?1"),
            [definition_key(id)],
            |r| r.get(0),
        )
        .optional()
        .map_err(ctx("read a captured table's definition"))?;
    Ok(match recorded {
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
fn drop_strays(tx: &rusqlite::Transaction<'_>) -> Result<()> {
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
fn ensure_image_tables(tx: &rusqlite::Transaction<'_>, t: &SourceTable, id: i64) -> Result<()> {
    for (table, lead) in [
        (image_table(id), "seq INTEGER PRIMARY KEY"),
        (evict_table(id), "rid INTEGER"),
    ] {
        let q = quote_ident(&table);
        tx.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {q} ({lead})"))
            .map_err(ctx("create a row image table"))?;
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
/// trigger records those that are gone (an INSERT OR IGNORE that skipped leaves them in place,
/// and the next BEFORE trigger clears them).
fn image_trigger_sql(t: &SourceTable, id: i64) -> Vec<String> {
    let table = quote_ident(&t.name);
    let rowid = t.rowid_name();
    let img = quote_ident(&image_table(id));
    let ev = quote_ident(&evict_table(id));
    let img_cols = image_columns(t.columns.len()).join(", ");
    let vals = |alias: &str| {
        t.columns
            .iter()
            .map(|c| format!("{alias}.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let image = |alias: &str, sign: i8| {
        format!(
            "INSERT INTO {CHANGES} (tbl, k1, k2, at) VALUES ({id}, {alias}.{rowid}, {sign}, julianday('now')); \
             INSERT INTO {img} (seq, {img_cols}) VALUES ((SELECT max(seq) FROM {CHANGES}), {});",
            vals(alias)
        )
    };
    let uniques = unique_column_sets(t);
    let evictions = if uniques.is_empty() {
        String::new()
    } else {
        let e_cols = image_columns(t.columns.len())
            .iter()
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {CHANGES} (tbl, k1, k2, at) SELECT {id}, e.rid, -1, julianday('now') FROM {ev} e \
               WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{rowid} = e.rid) ORDER BY e.rid; \
             INSERT INTO {img} (seq, {img_cols}) SELECT c.seq, {e_cols} FROM {ev} e JOIN {CHANGES} c \
               ON c.tbl = {id} AND c.k1 = e.rid AND c.k2 = -1 AND c.seq > coalesce((SELECT max(seq) FROM {img}), 0); \
             DELETE FROM {ev};"
        )
    };
    let trigger = |kind: &str, event: &str, body: String| {
        let n = trigger_name(kind, id);
        format!(
            "DROP TRIGGER IF EXISTS {n}; CREATE TRIGGER {n} {event} ON {table} BEGIN {body} END;"
        )
    };
    let mut out = vec![
        trigger(
            "ai",
            "AFTER INSERT",
            format!("{evictions} {}", image("NEW", 1)),
        ),
        trigger("ad", "AFTER DELETE", image("OLD", -1)),
        trigger(
            "au",
            "AFTER UPDATE",
            format!("{evictions} {} {}", image("OLD", -1), image("NEW", 1)),
        ),
        format!("DROP TRIGGER IF EXISTS {};", trigger_name("ak", id)),
    ];
    if uniques.is_empty() {
        out.push(format!(
            "DROP TRIGGER IF EXISTS {};",
            trigger_name("bi", id)
        ));
        out.push(format!(
            "DROP TRIGGER IF EXISTS {};",
            trigger_name("bu", id)
        ));
        return out;
    }
    let holders = |extra: &str| {
        let any: Vec<String> = uniques
            .iter()
            .map(|cols| {
                let all: Vec<String> = cols
                    .iter()
                    .map(|c| format!("x.{q} = NEW.{q}", q = quote_ident(c)))
                    .collect();
                format!("({})", all.join(" AND "))
            })
            .collect();
        format!(
            "DELETE FROM {ev}; INSERT INTO {ev} (rid, {img_cols}) SELECT x.{rowid}, {} FROM {table} x WHERE ({}){extra};",
            vals("x"),
            any.join(" OR ")
        )
    };
    out.push(trigger("bi", "BEFORE INSERT", holders("")));
    // Every UPDATE clears the scratch first: a candidate left by a skipped INSERT OR IGNORE
    // must never reach the AFTER UPDATE trigger.
    out.push(trigger(
        "bu",
        "BEFORE UPDATE",
        holders(&format!(" AND x.{rowid} <> OLD.{rowid}")),
    ));
    out
}

/// Column sets of full (non-partial, column-only) UNIQUE indexes.
fn unique_column_sets(t: &SourceTable) -> Vec<Vec<String>> {
    t.indexes
        .iter()
        .filter(|ix| {
            ix.unique && ix.where_clause.is_none() && ix.columns.iter().all(Option::is_some)
        })
        .map(|ix| ix.columns.iter().flatten().cloned().collect())
        .collect()
}

fn trigger_name(kind: &str, id: i64) -> String {
    quote_ident(&format!("{TRIGGER_PREFIX}{kind}_{id}"))
}

/// The triggers of one table: AFTER INSERT/UPDATE/DELETE record keys; BEFORE INSERT/UPDATE
/// record the keys of rows a REPLACE is about to delete for a UNIQUE conflict (SQLite fires no
/// DELETE trigger for those unless the app enabled recursive_triggers).
fn trigger_sql(t: &SourceTable, id: i64) -> Vec<String> {
    let keys = key_columns(t).unwrap_or_default();
    let table = quote_ident(&t.name);
    let slots: Vec<String> = (1..=keys.len()).map(|i| format!("k{i}")).collect();
    let slot_list = slots.join(", ");
    let row = |alias: &str| {
        keys.iter()
            .map(|k| format!("{alias}.{}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let insert = |values: &str| {
        format!(
            "INSERT INTO {CHANGES} (tbl, {slot_list}, at) VALUES ({id}, {values}, julianday('now'));"
        )
    };
    let changed_key: Vec<String> = keys
        .iter()
        .map(|k| format!("OLD.{q} IS NOT NEW.{q}", q = quote_ident(k)))
        .collect();
    let mut out = vec![
        format!(
            "DROP TRIGGER IF EXISTS {}; CREATE TRIGGER {} AFTER INSERT ON {table} BEGIN {} END;",
            trigger_name("ai", id),
            trigger_name("ai", id),
            insert(&row("NEW"))
        ),
        format!(
            "DROP TRIGGER IF EXISTS {}; CREATE TRIGGER {} AFTER DELETE ON {table} BEGIN {} END;",
            trigger_name("ad", id),
            trigger_name("ad", id),
            insert(&row("OLD"))
        ),
        format!(
            "DROP TRIGGER IF EXISTS {n}; CREATE TRIGGER {n} AFTER UPDATE ON {table} BEGIN {} END;",
            insert(&row("NEW")),
            n = trigger_name("au", id)
        ),
        // Only an UPDATE that sets a key column can move a row to another key; its old key is
        // recorded by a trigger that ordinary updates never fire.
        format!(
            "DROP TRIGGER IF EXISTS {n}; CREATE TRIGGER {n} AFTER UPDATE OF {} ON {table} WHEN {} BEGIN {} END;",
            keys.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", "),
            changed_key.join(" OR "),
            insert(&row("OLD")),
            n = trigger_name("ak", id),
        ),
    ];
    let uniques = unique_column_sets(t);
    let unique_cols: Vec<&String> = {
        let mut v: Vec<&String> = uniques.iter().flatten().collect();
        v.sort();
        v.dedup();
        v
    };
    // An UPDATE only evicts rows when it sets a unique column to a new value.
    let update_of = unique_cols
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let update_when = unique_cols
        .iter()
        .map(|c| format!("OLD.{q} IS NOT NEW.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" OR ");
    for (kind, event) in [
        ("bi", "INSERT".to_string()),
        ("bu", format!("UPDATE OF {update_of}")),
    ] {
        let n = trigger_name(kind, id);
        if uniques.is_empty() {
            out.push(format!("DROP TRIGGER IF EXISTS {n};"));
            continue;
        }
        let body: Vec<String> = uniques
            .iter()
            .map(|cols| {
                let cond: Vec<String> = cols.iter().map(|c| format!("t.{q} = NEW.{q}", q = quote_ident(c))).collect();
                format!(
                    "INSERT INTO {CHANGES} (tbl, {slot_list}, at) SELECT {id}, {}, julianday('now') FROM {table} AS t WHERE {};",
                    row("t"),
                    cond.join(" AND ")
                )
            })
            .collect();
        let when = if kind == "bu" {
            format!(" WHEN {update_when}")
        } else {
            String::new()
        };
        out.push(format!("DROP TRIGGER IF EXISTS {n}; CREATE TRIGGER {n} BEFORE {event} ON {table}{when} BEGIN {} END;", body.join(" ")));
    }
    out
}

/// What the app's writes get once the fence is up.
pub const FENCE_MESSAGE: &str = "this database has moved to PostgreSQL; see sqlite2pg status";

/// Raises the fence: BEFORE INSERT/UPDATE/DELETE triggers on every captured table abort the
/// write with `FENCE_MESSAGE`. One immediate transaction: either every table is fenced or none.
pub fn fence(conn: &mut Connection, tables: &[(i64, String)]) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(ctx(
            "start the fence transaction (the app holds the write lock; retry)",
        ))?;
    for (id, name) in tables {
        for (kind, event) in [("fi", "INSERT"), ("fu", "UPDATE"), ("fd", "DELETE")] {
            let n = trigger_name(kind, *id);
            let sql = format!(
                "DROP TRIGGER IF EXISTS {n}; CREATE TRIGGER {n} BEFORE {event} ON {} BEGIN SELECT RAISE(ABORT, '{FENCE_MESSAGE}'); END;",
                quote_ident(name)
            );
            tx.execute_batch(&sql)
                .map_err(|e| Error::from_sqlite(format!("cannot fence table {name}"), e))?;
        }
    }
    tx.commit().map_err(ctx("commit the fence"))
}

/// Lifts the fence (the app can write to SQLite again). Returns whether one was up.
pub fn unfence(conn: &mut Connection) -> Result<bool> {
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
    tx.commit().map_err(ctx("commit the unfence"))?;
    Ok(!names.is_empty())
}

/// Whether the fence is up.
pub fn fenced(conn: &Connection) -> Result<bool> {
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_sqlite2pg\\_fi\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .map_err(ctx("look for the fence"))?;
    Ok(n > 0)
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

/// Deletes applied changelog rows (`seq <= upto`) and their row images in short write
/// transactions of at most `batch` rows, always keeping the newest row so that sequence numbers
/// never restart, and stops once `budget` is spent so that a large prune never holds up the
/// next apply. Returns the rows deleted and whether nothing is left to prune.
pub fn prune(
    conn: &Connection,
    upto: i64,
    batch: usize,
    budget: Duration,
) -> Result<(usize, bool)> {
    let started = std::time::Instant::now();
    let sql = format!(
        "DELETE FROM {CHANGES} WHERE seq IN (SELECT seq FROM {CHANGES} WHERE seq <= ?1 \
         AND seq < (SELECT max(seq) FROM {CHANGES}) ORDER BY seq LIMIT ?2)"
    );
    let mut total = 0;
    loop {
        let n = conn
            .execute(&sql, rusqlite::params![upto, batch as i64])
            .map_err(ctx("prune the changelog"))?;
        total += n;
        if n < batch {
            break;
        }
        if started.elapsed() >= budget {
            return Ok((total, false));
        }
        // Let the app's writers in between our short transactions.
        std::thread::sleep(Duration::from_millis(1));
    }
    // Row images go with their changelog rows (the newest one's image stays with it).
    let images: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_sqlite2pg\\_img\\_%' ESCAPE '\\'")
            .map_err(ctx("list the row image tables"))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|r| r.collect())
            .map_err(ctx("list the row image tables"))?
    };
    for img in images {
        let sql = format!(
            "DELETE FROM {q} WHERE seq IN (SELECT seq FROM {q} WHERE seq <= ?1 \
             AND seq < (SELECT max(seq) FROM {CHANGES}) ORDER BY seq LIMIT ?2)",
            q = quote_ident(&img)
        );
        while conn
            .execute(&sql, rusqlite::params![upto, batch as i64])
            .map_err(ctx("prune the row images"))?
            >= batch
        {
            if started.elapsed() >= budget {
                return Ok((total, false));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((total, true))
}
