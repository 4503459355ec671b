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

/// Runs a read of the source from async code, on the runtime's worker when SQLite answers at
/// once, which it nearly always does: the first try has no busy wait. Only when the app holds
/// a lock SQLite would wait for (its commit, in rollback-journal mode) is the read run again
/// with `patience` as the busy timeout, off the worker: a fleet's tenants are tasks, and one
/// tenant's wait must not hold up the others. `read` must be safe to run twice (a read is).
/// Handing the worker off at every read was a fifth of a fleet daemon's CPU a write.
pub fn read_now<T>(
    conn: &Connection,
    patience: Duration,
    read: impl Fn(&Connection) -> Result<T>,
) -> Result<T> {
    let timeout = |d: Duration| {
        conn.busy_timeout(d)
            .map_err(|e| Error::from_sqlite("cannot set the SQLite busy timeout", e))
    };
    timeout(Duration::ZERO)?;
    let first = read(conn);
    timeout(patience)?;
    match first {
        Err(e) if e.kind() == ErrorKind::SourceBusy => tokio::task::block_in_place(|| read(conn)),
        r => r,
    }
}

/// [`open_read_only`] from async code, the way [`read_now`] reads: on the runtime's worker
/// unless SQLite makes the first look wait.
pub fn open_read_only_now(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    match open_read_only(path, Duration::ZERO) {
        Ok(conn) => {
            conn.busy_timeout(busy_timeout)
                .map_err(|e| Error::from_sqlite("cannot set the SQLite busy timeout", e))?;
            Ok(conn)
        }
        Err(e) if e.kind() == ErrorKind::SourceBusy => {
            tokio::task::block_in_place(|| open_read_only(path, busy_timeout))
        }
        Err(e) => Err(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn count(conn: &Connection) -> Result<i64> {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .map_err(|e| Error::from_sqlite("cannot count", e))
    }

    /// The app's commit in rollback-journal mode holds readers off until it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_the_app_holds_off_waits_its_patience_once_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = Connection::open(&path).unwrap();
        app.execute_batch(
            "PRAGMA journal_mode = delete; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        let conn = open_read_only(&path, Duration::from_secs(10)).unwrap();
        app.execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);")
            .unwrap();

        let tries = Cell::new(0);
        let counted = |c: &Connection| {
            tries.set(tries.get() + 1);
            count(c)
        };
        let e = read_now(&conn, Duration::ZERO, counted).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourceBusy, "{e}");
        assert_eq!(tries.get(), 2, "tried at once, then with its patience");

        let commit = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            app.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        assert_eq!(read_now(&conn, Duration::from_secs(10), count).unwrap(), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "the read waited for the commit"
        );
        commit.join().unwrap();
        let kept: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 10_000, "the connection keeps its busy timeout");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_fails_otherwise_is_not_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE other (x)")
            .unwrap();
        let conn = open_read_only(&path, Duration::from_secs(1)).unwrap();
        let tries = Cell::new(0);
        let e = read_now(&conn, Duration::from_secs(1), |c| {
            tries.set(tries.get() + 1);
            count(c)
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourceUnreadable, "{e}");
        assert_eq!(tries.get(), 1);
    }
}
