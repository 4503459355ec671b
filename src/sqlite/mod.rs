//! The SQLite side: opening the file politely, reading its schema and its rows.

pub mod audit;
pub mod capture;
pub mod changes;
pub mod form;
pub mod locks;
pub mod reader;
pub mod restore;
pub mod schema;
pub mod semantics;
pub mod watch;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, ErrorKind, Result};

pub use crate::model::quote_ident;

fn open(
    path: &Path,
    busy_timeout: Duration,
    flags: OpenFlags,
    purpose: &str,
) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::new(
            ErrorKind::SourceUnreadable,
            format!(
                "SQLite file {} does not exist; check --source",
                path.display()
            ),
        ));
    }
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        Error::from_sqlite(
            format!("cannot open SQLite file {} {purpose}", path.display()),
            e,
        )
    })?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| Error::from_sqlite("cannot set the SQLite busy timeout", e))?;
    Ok(conn)
}

/// Opens the source for writing sqlite2pg's own objects (never the app's rows).
pub fn open_read_write(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    open(
        path,
        busy_timeout,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        "for writing",
    )
}

/// Runs `f` inside one deferred read transaction, ended whether or not `f` succeeded (a read
/// transaction has nothing to keep). Every read sqlite2pg makes of the app's rows goes through
/// here, so each one sees a single committed state and holds its lock only this long.
pub fn in_read_transaction<T>(
    conn: &Connection,
    what: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    // Cached, as the follower's other reads at each wake-up: parsing them again was a fifth
    // of a fleet daemon's CPU.
    conn.prepare_cached("BEGIN DEFERRED")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| Error::from_sqlite(format!("cannot start a read of {what}"), e))?;
    let result = f();
    let end = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map_err(|e| Error::from_sqlite(format!("cannot end a read of {what}"), e));
    let value = result?;
    end?;
    Ok(value)
}

/// Opens the source read-only with a busy timeout, and proves it is a SQLite database.
pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = open(
        path,
        busy_timeout,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
        "for reading",
    )?;
    let probe = |conn: &Connection| {
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
    };
    let mut first = probe(&conn);
    if first
        .as_ref()
        .is_err_and(crate::error::is_readonly_rollback)
    {
        // A hot journal: a read-write connection's first read rolls it back (as the app's
        // own next open would; if a writer does hold it, that read just waits or is busy).
        if let Ok(rw) = open_read_write(path, busy_timeout) {
            let _ = probe(&rw);
        }
        first = probe(&conn);
    }
    first.map_err(|e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let what = if busy {
            format!(
                "{} is locked by a writer for longer than the busy timeout ({} ms)",
                path.display(),
                busy_timeout.as_millis()
            )
        } else {
            format!(
                "{} is not a readable SQLite database (corrupt or encrypted?)",
                path.display()
            )
        };
        Error::from_sqlite(what, e)
    })?;
    Ok(conn)
}
