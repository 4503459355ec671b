//! Whether another process is inside a transaction on the SQLite file right now, read from the
//! locks SQLite takes (POSIX advisory locks on the file's lock bytes) as the kernel lists them
//! in `/proc/locks`.
//!
//! Why: a transaction that reads and then writes under a deferred `BEGIN` (Django's default)
//! cannot wait for another writer: SQLite refuses its write at once ("database is locked") when
//! another connection wrote since its read began, whatever the busy timeout. The daemon's own
//! writes to the file (pruning the changelog) must therefore come when the app is not inside a
//! transaction. The file is never opened for this: closing any descriptor of a SQLite file
//! drops every POSIX lock the process holds on it, the daemon's own connections' included.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::{Error, Result};

/// How sqlite2pg takes the write lock on a file, chosen by its journal mode.
#[derive(Debug, Clone, Copy)]
pub struct WriteLock {
    /// The file is in WAL mode.
    pub wal: bool,
    /// The connection's busy timeout, to restore after a write that did not wait.
    pub waited: Duration,
}

impl WriteLock {
    /// Reads the journal mode and the busy timeout of `conn`.
    pub fn of(conn: &Connection) -> rusqlite::Result<WriteLock> {
        let wal = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?
            .eq_ignore_ascii_case("wal");
        let waited: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
        Ok(WriteLock {
            wal,
            waited: Duration::from_millis(u64::try_from(waited).unwrap_or(0)),
        })
    }

    /// The BEGIN that lets an app transaction beginning meanwhile wait instead of being
    /// refused: EXCLUSIVE in rollback-journal mode (it waits for its SHARED lock, its busy
    /// timeout applies; under RESERVED it could read and then be refused its write). In WAL
    /// mode readers are never blocked, so IMMEDIATE.
    pub fn begin(self) -> &'static str {
        if self.wal {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN EXCLUSIVE"
        }
    }
}

/// Runs `write` in one write transaction on `conn` at a moment no other process is inside a
/// transaction on the file, so that an app transaction that read first is never refused on
/// account of it:
/// - it begins only when the kernel shows no other process inside a transaction, without
///   waiting for the lock (a refusal is a retry a moment later), with [`WriteLock::begin`];
/// - in WAL mode, where readers are never blocked, it is rolled back and retried when an app
///   transaction began while it ran.
///
/// After `patience` of an app inside a transaction at every look, it takes the lock as any
/// writer does (waiting with the connection's busy timeout): that app may be refused once.
pub fn write_when_quiet<T>(
    conn: &Connection,
    what: &str,
    patience: Duration,
    mut write: impl FnMut(&Connection) -> Result<T>,
) -> Result<T> {
    let err = |e| Error::from_sqlite(format!("cannot {what}"), e);
    let path = conn
        .path()
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let lock = WriteLock::of(conn).map_err(err)?;
    let busy = || app_in_transaction(&path, lock.wal) == Some(true);
    let started = Instant::now();
    loop {
        let forced = started.elapsed() >= patience;
        if forced {
            tracing::warn!(
                "the app was inside a transaction at every look for {patience:?}; sqlite2pg's write ({what}) waits for the lock as any writer does, and one app transaction may be refused"
            );
        } else if busy() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        conn.busy_timeout(if forced { lock.waited } else { Duration::ZERO })
            .map_err(err)?;
        let result = (|| {
            match conn.execute_batch(lock.begin()) {
                Ok(()) => {}
                Err(e) if !forced && is_busy(&e) => return Ok(None),
                Err(e) => return Err(err(e)),
            }
            let value = match write(conn) {
                Ok(v) => v,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            };
            if lock.wal && !forced && busy() {
                // Nothing the app read has changed.
                conn.execute_batch("ROLLBACK").map_err(err)?;
                return Ok(None);
            }
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(err(e));
            }
            Ok(Some(value))
        })();
        conn.busy_timeout(lock.waited).map_err(err)?;
        match result? {
            Some(value) => return Ok(value),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// In rollback-journal mode: the database file's PENDING byte, RESERVED byte and SHARED range,
/// which a connection locks for exactly as long as it is inside a transaction.
const FILE_LOCK_BYTES: (u64, u64) = (0x4000_0000, 0x4000_0000 + 512);

/// In WAL mode every open connection keeps a SHARED lock on the database file, so a
/// transaction shows in the `-shm` file instead: the write lock (byte 120) and the read marks
/// (123-127) are held for a transaction's length; byte 128 is held by any open connection.
const SHM_LOCK_BYTES: (u64, u64) = (120, 128);

/// `Some(true)` when a process other than this one is inside a transaction on the SQLite file
/// (`wal`: the file is in WAL mode); `None` where the kernel's lock list cannot be read.
pub fn app_in_transaction(path: &Path, wal: bool) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (file, bytes) = if wal {
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        (std::path::PathBuf::from(shm), SHM_LOCK_BYTES)
    } else {
        (path.to_path_buf(), FILE_LOCK_BYTES)
    };
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(held_by_others(&locks, inode, std::process::id(), bytes))
}

/// Whether `locks` (in `/proc/locks` form) lists a lock on `bytes` (from, to exclusive) of
/// `inode` that another process than `own_pid` holds or waits for.
fn held_by_others(locks: &str, inode: u64, own_pid: u32, bytes: (u64, u64)) -> bool {
    locks.lines().any(|line| {
        // `1: POSIX  ADVISORY  READ 19174 fe:00:10013138 1073741826 1073742335`, a waiter
        // with `->` after the number; `EOF` for a lock to the end of the file.
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        let [_, _, _, _, pid, file, start, end] = fields.as_slice() else {
            return false;
        };
        let on_file = file.rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(inode);
        let other = pid.parse::<u32>() != Ok(own_pid);
        let start = start.parse::<u64>().unwrap_or(0);
        let end = if *end == "EOF" {
            u64::MAX
        } else {
            end.parse::<u64>().unwrap_or(u64::MAX)
        };
        on_file && other && start < bytes.1 && end >= bytes.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "1: POSIX  ADVISORY  READ 19174 fe:00:10013138 1073741826 1073742335
2: FLOCK  ADVISORY  WRITE 880 00:1a:77 0 EOF
3: POSIX  ADVISORY  WRITE 42 fe:00:555 1073741825 1073741825
3: -> POSIX  ADVISORY  WRITE 43 fe:00:555 1073741824 1073741824
4: POSIX  ADVISORY  READ 50 fe:00:999 0 100
5: POSIX  ADVISORY  READ 77 fe:00:31 128 128
";

    #[test]
    fn a_lock_of_another_process_on_the_lock_bytes_counts() {
        let file = FILE_LOCK_BYTES;
        assert!(held_by_others(LOCKS, 10013138, 1, file));
        assert!(
            !held_by_others(LOCKS, 10013138, 19174, file),
            "our own lock"
        );
        assert!(
            held_by_others(LOCKS, 555, 42, file),
            "a waiter of another process"
        );
        assert!(
            !held_by_others(LOCKS, 999, 1, file),
            "not on the lock bytes"
        );
        assert!(!held_by_others(LOCKS, 12345, 1, file), "another file");
        assert!(
            !held_by_others(LOCKS, 31, 1, SHM_LOCK_BYTES),
            "an open WAL connection only"
        );
        let reading = format!("{LOCKS}6: POSIX  ADVISORY  READ 78 fe:00:31 123 123\n");
        assert!(
            held_by_others(&reading, 31, 1, SHM_LOCK_BYTES),
            "a WAL read mark"
        );
    }

    /// The sqlite3 shell, another process, opens the file and holds a read transaction: seen
    /// for its length only, in both journal modes (in WAL mode its open connection alone is
    /// not a transaction); this process's own transaction is never the app's.
    fn seen_from_another_process(wal: bool) {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let conn = rusqlite::Connection::open(&path).expect("open");
        let mode = if wal { "wal" } else { "delete" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = {mode}; CREATE TABLE t (x); INSERT INTO t VALUES (1);"
        ))
        .expect("write");
        conn.execute_batch("BEGIN; SELECT * FROM t;").expect("read");
        assert_eq!(app_in_transaction(&path, wal), Some(false), "our own");
        conn.execute_batch("COMMIT").expect("commit");
        let mut shell = std::process::Command::new("sqlite3")
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the sqlite3 shell (apt-get install sqlite3)");
        let stdin = shell.stdin.as_mut().expect("stdin");
        let wait_for = |want: bool, what: &str| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while app_in_transaction(&path, wal) != Some(want) {
                assert!(std::time::Instant::now() < deadline, "{mode}: {what}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        writeln!(stdin, "SELECT * FROM t;").expect("send");
        stdin.flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            app_in_transaction(&path, wal),
            Some(false),
            "{mode}: open, idle"
        );
        writeln!(stdin, "BEGIN; SELECT * FROM t;").expect("send");
        stdin.flush().expect("flush");
        wait_for(true, "the shell's read transaction was not seen");
        writeln!(stdin, "COMMIT;").expect("send");
        stdin.flush().expect("flush");
        wait_for(false, "the shell's transaction ended but was still seen");
        writeln!(stdin, ".quit").expect("send");
        shell.wait().expect("shell");
    }

    #[test]
    fn a_read_transaction_of_another_process_is_seen_in_rollback_journal_mode() {
        seen_from_another_process(false);
    }

    #[test]
    fn a_read_transaction_of_another_process_is_seen_in_wal_mode() {
        seen_from_another_process(true);
    }
}
