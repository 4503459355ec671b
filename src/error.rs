//! Typed errors with a retry policy and an operator hint per kind.

use std::fmt;

/// What went wrong, at the granularity an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The SQLite file is missing, corrupt, or not a database.
    SourceUnreadable,
    /// The SQLite file is locked by a writer for longer than the busy timeout.
    SourceBusy,
    /// Postgres cannot be reached (network, server down, restart in progress).
    TargetUnreachable,
    /// Postgres refused the credentials or the rights are missing.
    TargetAuth,
    /// A value cannot be represented in its target column.
    Conversion,
    /// The schemas on both sides do not fit together.
    Schema,
    /// The configuration or command line is wrong.
    Config,
    /// Anything Postgres rejected that is none of the above.
    Target,
    /// The migration is not in a state where this command can run.
    State,
}

/// What the daemon should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Transient: retry after a capped backoff.
    RetryLater,
    /// Needs a person to change something first.
    NeedsOperator,
}

impl ErrorKind {
    /// The retry policy of this kind of error.
    pub fn retry_policy(self) -> RetryPolicy {
        match self {
            ErrorKind::SourceBusy | ErrorKind::TargetUnreachable => RetryPolicy::RetryLater,
            _ => RetryPolicy::NeedsOperator,
        }
    }

    /// One sentence telling the operator what to do next.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::SourceUnreadable => {
                "check the --source path and that the file is a SQLite database (sqlite3 FILE 'PRAGMA integrity_check')"
            }
            ErrorKind::SourceBusy => {
                "another process held the SQLite write lock too long; retry, or raise --busy-timeout-ms (a long-running app transaction or an open sqlite3 shell is the usual cause)"
            }
            ErrorKind::TargetUnreachable => {
                "check that Postgres is running and reachable at the --target host and port; a re-run resumes where this one stopped"
            }
            ErrorKind::TargetAuth => {
                "check the user and password in --target and that the user may create tables in the target schema"
            }
            ErrorKind::Conversion => {
                "fix the value in SQLite, or choose a conversion with --cast TABLE.COLUMN=TYPE; `sqlite2pg check` lists every such value"
            }
            ErrorKind::Schema => {
                "run `sqlite2pg check` for the full mapping and adjust the target schema or the --include/--exclude lists"
            }
            ErrorKind::Config => "see `sqlite2pg --help` and the README's configuration section",
            ErrorKind::Target => {
                "see the Postgres message above; a re-run resumes where this one stopped"
            }
            ErrorKind::State => "the message above says what to do first; nothing was changed",
        }
    }

    /// A short lowercase name used in logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::SourceUnreadable => "source_unreadable",
            ErrorKind::SourceBusy => "source_busy",
            ErrorKind::TargetUnreachable => "target_unreachable",
            ErrorKind::TargetAuth => "target_auth",
            ErrorKind::Conversion => "conversion",
            ErrorKind::Schema => "schema",
            ErrorKind::Config => "config",
            ErrorKind::Target => "target",
            ErrorKind::State => "state",
        }
    }
}

/// The crate's error: a kind, a message naming what failed and where, and the cause.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    /// An error without an underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by another error.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Classifies a Postgres client error by its SQLSTATE or connection state.
    pub fn from_pg(message: impl Into<String>, err: tokio_postgres::Error) -> Self {
        let kind = pg_error_kind(&err);
        Error::with_source(kind, message, err)
    }

    /// Whether Postgres itself answered that it is restarting, shutting down or recovering:
    /// the address is right, and the outage is one to wait out.
    pub fn server_restarting(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            if let Some(code) = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|p| p.code())
            {
                return restarting(code);
            }
            cause = e.source();
        }
        false
    }

    /// Classifies a SQLite error (busy, corrupt, other).
    pub fn from_sqlite(message: impl Into<String>, err: rusqlite::Error) -> Self {
        let kind = match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                ErrorKind::SourceBusy
            }
            // A read-only connection that finds a rollback journal nobody seems to hold: in
            // rollback-journal mode a writer starting a transaction in another process looks
            // like that for an instant (a reader gets this now and then while the app writes),
            // and a writer that crashed leaves one until the next read-write open rolls it back.
            _ if is_readonly_rollback(&err) => ErrorKind::SourceBusy,
            _ => ErrorKind::SourceUnreadable,
        };
        Error::with_source(kind, message, err)
    }
}

/// SQLITE_READONLY_ROLLBACK: a hot journal seen by a read-only connection.
pub fn is_readonly_rollback(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK)
}

/// Postgres' own answer that it is shutting down, crashed or not yet accepting connections.
fn restarting(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
}

fn pg_error_kind(err: &tokio_postgres::Error) -> ErrorKind {
    use tokio_postgres::error::SqlState;
    match err.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            ErrorKind::TargetAuth
        }
        Some(code)
            if restarting(code)
                || *code == SqlState::CONNECTION_FAILURE
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            ErrorKind::TargetUnreachable
        }
        Some(_) => ErrorKind::Target,
        None if err.is_closed() => ErrorKind::TargetUnreachable,
        // No SQLSTATE: an I/O or protocol failure on the connection itself.
        None => ErrorKind::TargetUnreachable,
    }
}

/// An error and every cause under it, joined with ": " (what an operator needs to see; our
/// own `Display` shows only the top message).
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(extended: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(extended), None)
    }

    #[test]
    fn a_hot_journal_seen_read_only_is_waited_out_not_a_broken_file() {
        let e = Error::from_sqlite(
            "read",
            sqlite_error(rusqlite::ffi::SQLITE_READONLY_ROLLBACK),
        );
        assert_eq!(e.kind(), ErrorKind::SourceBusy);
        assert_eq!(e.kind().retry_policy(), RetryPolicy::RetryLater);
        let e = Error::from_sqlite("read", sqlite_error(rusqlite::ffi::SQLITE_BUSY));
        assert_eq!(e.kind(), ErrorKind::SourceBusy);
        // Other read-only refusals and corruption still stop with what to check.
        let e = Error::from_sqlite("read", sqlite_error(rusqlite::ffi::SQLITE_READONLY));
        assert_eq!(e.kind(), ErrorKind::SourceUnreadable);
        let e = Error::from_sqlite("read", sqlite_error(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!(e.kind(), ErrorKind::SourceUnreadable);
    }
}
